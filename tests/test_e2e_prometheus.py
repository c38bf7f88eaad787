"""A real Prometheus scraping a real `jsonexporter serve` with the README's multi-target relabeling.

Targets: a JSON app started here, Prometheus's own JSON API through examples/prometheus-status.yml
(an API nobody here wrote), and an address where nothing listens. The test reads the result back
from Prometheus's query and targets APIs, as a user would."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import yaml
from conftest import UpstreamFactory
from prometheus_util import ROOT, SESSION, Processes, PrometheusAPI, eventually, free_port, prometheus_binary, readme_relabel_configs, with_exporter_address

SHOP = {
    "version": "1.4.2",
    "queues": {"orders": {"depth": 12, "processed": 1655371}, "mail": {"depth": 0, "processed": 7}},
    "latency": {"buckets": {"0.1": 6, "0.5": 9, "1": 10}, "count": 10, "sum": 2.1, "percentiles": {"p50": 0.08, "p99": 0.9}},
}
SHOP_MODULE = {
    "endpoints": {"stats": {"url": "{target}/api/stats"}},
    "metrics": [
        {"name": "shop_queue_depth", "help": "Messages waiting", "each": "queues", "value": "depth", "labels": {"queue": "$key"}},
        {"name": "shop_messages_processed_total", "help": "Messages processed", "type": "counter", "each": "queues", "value": "processed",
         "labels": {"queue": "$key"}},
        {"name": "shop_build_info", "help": "Version of the shop", "type": "info", "labels": {"version": "version"}},
        {"name": "shop_request_duration_seconds", "help": "Time to answer", "type": "histogram", "buckets": "latency.buckets",
         "sum": "latency.sum", "count": "latency.count"},
        {"name": "shop_rpc_duration_seconds", "help": "Time to answer", "type": "summary", "quantiles": "latency.percentiles"},
    ],
}


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    prometheus_binary()  # skip or fail before anything starts
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def spec_with_shop_module(tmp_path: Path) -> Path:
    """examples/prometheus-status.yml as it is (module `prometheus`) plus a module `shop` for the local app."""
    spec = yaml.safe_load((ROOT / "examples" / "prometheus-status.yml").read_text(encoding="utf-8"))
    spec["modules"]["shop"] = SHOP_MODULE
    path = tmp_path / "spec.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def probe_job(name: str, module: str, targets: list[str], exporter: str) -> dict[str, Any]:
    return {
        "job_name": name,
        "metrics_path": "/probe",
        "params": {"module": [module]},
        "static_configs": [{"targets": targets}],
        "relabel_configs": with_exporter_address(readme_relabel_configs(), exporter),
    }


def by_instance(results: list[dict[str, Any]]) -> dict[str, float]:
    return {r["metric"]["instance"]: r["value"] for r in results}


async def test_prometheus_scrapes_local_app_its_own_api_and_a_dead_target_through_the_exporter(
    upstream: UpstreamFactory, processes: Processes, tmp_path: Path
) -> None:
    shop = (await upstream({"/api/stats": SHOP})).url
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    exporter = processes.exporter("jsonexporter", spec_with_shop_module(tmp_path))
    prometheus_port = free_port()
    prometheus = f"http://127.0.0.1:{prometheus_port}"
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            probe_job("shop", "shop", [shop, dead], exporter),
            probe_job("prometheus-api", "prometheus", [prometheus], exporter),
            {"job_name": "jsonexporter", "static_configs": [{"targets": [exporter]}]},
        ],
    }
    processes.prometheus("prometheus", config, prometheus_port)

    async with aiohttp.ClientSession(timeout=SESSION) as session:
        api = PrometheusAPI(session, prometheus)
        expected_success = {shop: 1.0, dead: 0.0, prometheus: 1.0}
        await eventually(lambda: api.query("probe_success"), lambda r: by_instance(r) == expected_success,
                         "probe_success of the three targets", processes)

        # the exporter answered every scrape, the dead target included: its failure is probe_success 0, not up 0
        up = await api.query('up{job=~"shop|prometheus-api"}')
        assert by_instance(up) == {shop: 1.0, dead: 1.0, prometheus: 1.0}
        dead_endpoint = await api.query(f'probe_endpoint_success{{instance="{dead}"}}')
        assert [(r["metric"]["endpoint"], r["value"]) for r in dead_endpoint] == [("stats", 0.0)]

        depth = await api.query("shop_queue_depth")
        assert {r["metric"]["queue"]: r["value"] for r in depth} == {"orders": 12.0, "mail": 0.0}
        assert all(r["metric"] == {"__name__": "shop_queue_depth", "job": "shop", "instance": shop, "queue": r["metric"]["queue"]} for r in depth)
        processed = await api.query("shop_messages_processed_total")
        assert {r["metric"]["queue"]: r["value"] for r in processed} == {"orders": 1655371.0, "mail": 7.0}
        info = await api.query("shop_build_info")
        assert [(r["metric"]["version"], r["value"]) for r in info] == [("1.4.2", 1.0)]
        # a histogram and a summary Prometheus ingests as such: histogram_quantile over the buckets (the median
        # in the first bucket, 0.1 * 5/6), the +Inf bucket made from the count, the quantiles of the summary
        median = await api.query(f'histogram_quantile(0.5, shop_request_duration_seconds_bucket{{instance="{shop}"}})')
        assert [round(r["value"], 6) for r in median] == [round(0.1 * 5 / 6, 6)]
        inf = await api.query(f'shop_request_duration_seconds_bucket{{instance="{shop}", le="+Inf"}}')
        assert [r["value"] for r in inf] == [10.0]
        p99 = await api.query(f'shop_rpc_duration_seconds{{instance="{shop}", quantile="0.99"}}')
        assert [r["value"] for r in p99] == [0.9]

        # Prometheus's build information, read through its JSON API, matches what the API says directly
        build = await api.get("/api/v1/status/buildinfo")
        expected_build_info = {
            "__name__": "prometheus_api_build_info", "job": "prometheus-api", "instance": prometheus, "prometheus": prometheus,
            "version": build["version"], "revision": build["revision"], "branch": build["branch"], "goversion": build["goVersion"],
        }
        await eventually(lambda: api.query("prometheus_api_build_info"), lambda r: r == [{"metric": expected_build_info, "value": 1.0}],
                         "prometheus_api_build_info with the labels of /api/v1/status/buildinfo", processes)
        head_series = await eventually(lambda: api.query("prometheus_api_tsdb_head_series"), lambda r: len(r) == 1 and r[0]["value"] > 0,
                                       "prometheus_api_tsdb_head_series > 0", processes)
        assert head_series[0]["metric"]["instance"] == prometheus

        # every scrape was accepted: the content type negotiated and the exposition parsed without error
        targets = await eventually(api.active_targets, lambda ts: len(ts) == 4 and all(t["health"] != "unknown" for t in ts),
                                   "four targets scraped at least once", processes)
        assert [(t["labels"]["job"], t["health"], t["lastError"]) for t in targets if t["health"] != "up" or t["lastError"]] == []
        # the relabeling sent each probe to the exporter with the target as a query parameter
        probes = {t["labels"]["instance"]: urlsplit(t["scrapeUrl"]) for t in targets if t["labels"]["job"] != "jsonexporter"}
        assert {instance: (url.netloc, url.path, parse_qs(url.query)) for instance, url in probes.items()} == {
            shop: (exporter, "/probe", {"module": ["shop"], "target": [shop]}),
            dead: (exporter, "/probe", {"module": ["shop"], "target": [dead]}),
            prometheus: (exporter, "/probe", {"module": ["prometheus"], "target": [prometheus]}),
        }

        own = await eventually(lambda: api.query('jsonexporter_probes_total{module="shop"}'),
                               lambda r: {x["metric"]["result"] for x in r} >= {"success", "failure"},
                               "the exporter's own metrics count successful and failed shop probes", processes)
        assert all(r["metric"]["job"] == "jsonexporter" and r["value"] >= 1 for r in own if r["metric"]["result"] in ("success", "failure"))
