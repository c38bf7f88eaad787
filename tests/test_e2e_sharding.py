"""Hashmod sharding with real servers: two Prometheus servers run examples/kubernetes/scrape-config-sharded.yml
(only the targets, shard number and exporter address replaced), each with its own `jsonexporter serve`.
Every target must be scraped by exactly one of them, the one Prometheus's hashmod assigns it to."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_util import ROOT, SESSION, Processes, PrometheusAPI, eventually, hashmod, prometheus_binary

SHARDED = ROOT / "examples" / "kubernetes" / "scrape-config-sharded.yml"
TARGETS_PER_SHARD = 4
SPEC = """
modules:
  default:
    metrics:
      - {name: shard_test_target_number, help: Number of the target, value: number}
"""


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    prometheus_binary()
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def relabel_rule(job: dict[str, Any], **match: Any) -> dict[str, Any]:
    rules = [r for r in job["relabel_configs"] if all(r.get(k) == v for k, v in match.items())]
    assert len(rules) == 1, f"expected one relabel rule with {match} in {SHARDED}"
    rule: dict[str, Any] = rules[0]
    return rule


def shard_config(example: dict[str, Any], shard: int, targets: list[str], exporter: str) -> dict[str, Any]:
    """The example configuration for server `shard`, probing `targets` through `exporter`."""
    config = copy.deepcopy(example)
    config["global"] |= {"scrape_interval": "1s", "scrape_timeout": "1s", "external_labels": {"shard": str(shard)}}
    job = config["scrape_configs"][0]
    job["static_configs"] = [{"targets": targets}]
    relabel_rule(job, action="keep", source_labels=["__tmp_hash"])["regex"] = str(shard)
    relabel_rule(job, target_label="__address__")["replacement"] = exporter
    return config


def has_instances(instances: set[str], results: list[dict[str, Any]]) -> bool:
    return {r["metric"]["instance"] for r in results} == instances


def balanced_targets(base: str, shards: int) -> list[list[str]]:
    """TARGETS_PER_SHARD distinct URLs of the upstream for each shard, as hashmod will assign them."""
    by_shard: list[list[str]] = [[] for _ in range(shards)]
    n = 0
    while min(map(len, by_shard)) < TARGETS_PER_SHARD:
        url = f"{base}/t/{n}"
        if len(by_shard[hashmod(url, shards)]) < TARGETS_PER_SHARD:
            by_shard[hashmod(url, shards)].append(url)
        n += 1
    return by_shard


async def test_hashmod_shards_scrape_every_target_exactly_once_each_through_its_own_exporter(
    aiohttp_server: Any, processes: Processes, tmp_path: Path
) -> None:
    async def target(request: web.Request) -> web.Response:
        return web.json_response({"number": int(request.match_info["n"])})

    app = web.Application()
    app.router.add_get("/t/{n}", target)
    upstream = await aiohttp_server(app)
    base = str(upstream.make_url("")).rstrip("/")

    example = yaml.safe_load(SHARDED.read_text(encoding="utf-8"))
    shards = relabel_rule(example["scrape_configs"][0], action="hashmod")["modulus"]
    expected = balanced_targets(base, shards)
    everything = sorted(url for urls in expected for url in urls)
    spec = tmp_path / "spec.yml"
    spec.write_text(SPEC)
    exporters = [processes.exporter(f"jsonexporter-{shard}", spec) for shard in range(shards)]
    servers = [processes.prometheus(f"prometheus-{shard}", shard_config(example, shard, everything, exporters[shard])) for shard in range(shards)]

    async with aiohttp.ClientSession(timeout=SESSION) as session:
        apis = [PrometheusAPI(session, server) for server in servers]
        scraped: list[dict[str, float]] = []
        for shard, api in enumerate(apis):
            results = await eventually(partial(api.query, "probe_success"), partial(has_instances, set(expected[shard])),
                                       f"prometheus-{shard} scrapes exactly its hashmod share", processes)
            scraped.append({r["metric"]["instance"]: r["value"] for r in results})

        instances = [set(s) for s in scraped]
        assert set.union(*instances) == set(everything)
        assert set.intersection(*instances) == set()
        assert all(value == 1.0 for s in scraped for value in s.values())

        for shard, api in enumerate(apis):
            targets = await api.active_targets()
            assert len(targets) == TARGETS_PER_SHARD
            assert all(t["scrapeUrl"].startswith(f"http://{exporters[shard]}/probe?") for t in targets), "a shard used another exporter"
            numbers = await eventually(partial(api.query, "shard_test_target_number"), partial(has_instances, set(expected[shard])),
                                       f"prometheus-{shard} has the metrics of its targets", processes)
            assert {r["metric"]["instance"]: r["value"] for r in numbers} == {url: float(url.rpartition("/")[2]) for url in expected[shard]}
