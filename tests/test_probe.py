"""/probe against real upstream servers on 127.0.0.1: fetching, extraction and self-metrics."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from conftest import ExporterFactory, UpstreamFactory, make_spec, wait_for
from metrics_util import names, parse, value
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from jsonexporter.exposition import render_openmetrics, render_text
from jsonexporter.extract import Extraction
from jsonexporter.probe import self_families, self_written
from jsonexporter.upstream import EndpointResult

NODES = {
    "nodes": [
        {"id": "n1", "cpu": 0.25, "ready": True, "mem": 1655371, "state": "UP"},
        {"id": "n2", "cpu": "0.5", "ready": False, "mem": 10000000000, "state": "DOWN"},
        {"id": "n3", "ready": True, "mem": 3, "state": "UP"},
    ]
}

NODE_SPEC = """
modules:
  default:
    endpoints:
      stats: {url: '{target}/api/stats'}
    metrics:
      - name: node_cpu_ratio
        help: CPU use of a node
        each: nodes
        value: cpu
        labels: {id: id, environment: "'beta'"}
      - name: node
        help: Node facts
        each: nodes
        values: {ready: ready, memory_bytes: mem, up: state}
        value_map: {UP: 1, DOWN: 0}
        labels: {id: id}
"""


async def probe(client: Any, query: str, **headers: str) -> tuple[int, str]:
    response = await client.get(f"/probe?{query}", headers=headers)
    return response.status, await response.text()


async def test_probe_extracts_values_and_labels_from_upstream_json(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/api/stats": NODES})
    client = await exporter(NODE_SPEC)
    status, text = await probe(client, f"module=default&target={up.url}")
    assert status == 200
    s = parse(text)
    assert value(s, "node_cpu_ratio", id="n1", environment="beta") == 0.25
    assert value(s, "node_cpu_ratio", id="n2", environment="beta") == 0.5  # numeric string parsed
    assert value(s, "node_ready", id="n1") == 1 and value(s, "node_ready", id="n2") == 0
    assert value(s, "node_up", id="n2") == 0 and value(s, "node_up", id="n1") == 1
    assert value(s, "node_memory_bytes", id="n2") == 1e10
    assert value(s, "probe_success") == 1
    assert value(s, "probe_endpoint_http_status_code", endpoint="stats") == 200
    assert value(s, "probe_endpoint_response_bytes", endpoint="stats") > 0
    assert up.hits == {"/api/stats": 1}


async def test_integers_are_printed_exactly(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/api/stats": NODES})
    client = await exporter(NODE_SPEC)
    _, text = await probe(client, f"target={up.url}")
    assert 'node_memory_bytes{id="n1"} 1655371\n' in text
    assert 'node_memory_bytes{id="n2"} 10000000000\n' in text


async def test_missing_field_skips_only_that_series_and_is_counted(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/api/stats": NODES})
    client = await exporter(NODE_SPEC)
    _, text = await probe(client, f"target={up.url}")
    s = parse(text)
    assert ("node_cpu_ratio", frozenset({("id", "n3"), ("environment", "beta")})) not in s
    assert value(s, "node_memory_bytes", id="n3") == 3  # the other metrics of that element survive
    assert value(s, "probe_extraction_errors", metric="node_cpu_ratio") == 1
    assert value(s, "probe_extraction_errors", metric="node_ready") == 0
    assert value(s, "probe_success") == 1


async def test_an_each_path_that_finds_nothing_is_an_extraction_error_unless_optional(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    """`node` for `nodes` gives null: the rule is empty, and says so; an empty list stays fine."""
    up = await upstream({"/api/stats": {**NODES, "disks": []}})
    client = await exporter("""
        modules:
          default:
            endpoints:
              stats: {url: '{target}/api/stats'}
            metrics:
              - {name: node_ready, help: h, each: node, value: ready, labels: {id: id}}
              - {name: node_disk_ready, help: h, each: [{path: disks_of_nodes, optional: true}], value: ready}
              - {name: disk_ready, help: h, each: disks, value: ready}
              - {name: node_cpu_ratio, help: h, each: nodes, value: cpu, labels: {id: id}}
        """)
    _, text = await probe(client, f"target={up.url}")
    s = parse(text)
    assert value(s, "probe_extraction_errors", metric="node_ready") == 1
    assert value(s, "probe_series", metric="node_ready") == 0
    for optional_or_empty in ("node_disk_ready", "disk_ready"):
        assert value(s, "probe_extraction_errors", metric=optional_or_empty) == 0
        assert value(s, "probe_series", metric=optional_or_empty) == 0
    assert value(s, "probe_series", metric="node_cpu_ratio") == 2  # n3 has no cpu: skipped, not written
    assert value(s, "probe_success") == 1


async def test_series_count_is_zero_for_the_metrics_of_a_failed_endpoint(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/api/stats": NODES})
    client = await exporter(NODE_SPEC.replace("/api/stats", "/api/gone"))
    _, text = await probe(client, f"target={up.url}")
    s = parse(text)
    assert value(s, "probe_success") == 0
    assert value(s, "probe_series", metric="node_cpu_ratio") == 0 and value(s, "probe_series", metric="node_up") == 0


async def test_module_defaults_to_default_when_absent(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/api/stats": NODES})
    client = await exporter(NODE_SPEC)
    status, text = await probe(client, f"target={up.url}")
    assert status == 200 and "node_cpu_ratio" in names(parse(text))


async def test_endpoints_are_fetched_concurrently(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    # each endpoint answers only once the other one's request has arrived: sequential fetching would time out
    arrived = {"a": asyncio.Event(), "b": asyncio.Event()}

    def waits_for(mine: str, other: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            arrived[mine].set()
            await wait_for(arrived[other], 5)
            return web.json_response({"v": 1 if mine == "a" else 2})

        return handle

    up = await upstream({"/a": waits_for("a", "b"), "/b": waits_for("b", "a")})
    client = await exporter("""
        modules:
          default:
            timeout: 10s
            endpoints:
              a: {url: '{target}/a'}
              b: {url: '{target}/b'}
            metrics:
              - {name: a_value, help: a, endpoint: a, value: v}
              - {name: b_value, help: b, endpoint: b, value: v}
        """)
    _, text = await probe(client, f"target={up.url}")
    s = parse(text)
    assert value(s, "a_value") == 1 and value(s, "b_value") == 2 and value(s, "probe_success") == 1


async def test_scrape_timeout_header_sets_the_deadline(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await wait_for(release, 20)
        return web.json_response({})

    up = await upstream({"/slow": hang, "/fast": {"v": 7}})
    client = await exporter("""
        modules:
          default:
            timeout: 60s
            endpoints:
              slow: {url: '{target}/slow'}
              fast: {url: '{target}/fast'}
            metrics:
              - {name: fast_value, help: f, endpoint: fast, value: v}
        """)
    try:
        # a module timeout of 60s would outlast this bounded wait; the header's 1s (less 0.5s offset) must win
        status, text = await asyncio.wait_for(probe(client, f"target={up.url}", **{"X-Prometheus-Scrape-Timeout-Seconds": "1"}), 10)
    finally:
        release.set()
    s = parse(text)
    assert status == 200
    assert value(s, "probe_success") == 0
    assert value(s, "probe_endpoint_success", endpoint="slow") == 0
    assert value(s, "fast_value") == 7  # the endpoint that answered still gives its metrics


async def test_upstream_error_status_fails_probe_but_keeps_other_endpoints(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": "boom"}, status=500)

    up = await upstream({"/bad": broken, "/good": {"v": 3}})
    client = await exporter("""
        modules:
          default:
            endpoints:
              bad: {url: '{target}/bad'}
              good: {url: '{target}/good'}
            metrics:
              - {name: bad_value, help: b, endpoint: bad, value: v}
              - {name: good_value, help: g, endpoint: good, value: v}
        """)
    status, text = await probe(client, f"target={up.url}")
    s = parse(text)
    assert status == 200
    assert value(s, "probe_success") == 0
    assert value(s, "probe_endpoint_http_status_code", endpoint="bad") == 500
    assert value(s, "probe_endpoint_success", endpoint="bad") == 0
    assert value(s, "good_value") == 3
    assert "bad_value" not in names(s)


async def test_invalid_json_fails_the_endpoint(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    async def not_json(request: web.Request) -> web.Response:
        return web.Response(text="<html>oops</html>", content_type="text/html")

    up = await upstream({"/x": not_json})
    client = await exporter("modules: {default: {metrics: [{name: x, help: x, value: v}]}}")
    status, text = await probe(client, f"target={up.url}/x&debug=true")
    assert status == 200
    assert "invalid JSON" in text and "b'<html>oops</html>'" in text
    assert "probe_success 0" in text


async def test_a_json_number_beyond_a_float_fails_only_its_series_as_its_string_would(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    body = '{"inf": 1e400, "text": "1e400", "digits": 1' + "0" * 5000 + ', "ok": 2.5}'
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="application/json")

    up = await upstream({"/x": answer})
    client = await exporter("modules: {default: {metrics: [" + ", ".join(f"{{name: {n}, help: x, value: {n}}}" for n in ("inf", "text", "digits", "ok"))
                            + "]}}")
    status, text = await probe(client, f"target={up.url}/x&debug=true")
    assert status == 200
    s = parse(text.partition("metrics:\n")[2])
    assert value(s, "probe_success") == 1 and value(s, "ok") == 2.5
    assert {n: value(s, "probe_extraction_errors", metric=n) for n in ("inf", "text", "digits")} == {"inf": 1, "text": 1, "digits": 1}
    assert text.count('"1e400" is beyond the range of a 64-bit float') == 2  # the number as the string gives it
    assert "(first 60 of 5003 chars) is beyond the range of a 64-bit float" in text
    assert "set_int_max_str_digits" not in text and "+Inf" not in text


async def test_connection_refused_fails_the_probe(exporter: ExporterFactory, unused_tcp_port: int) -> None:
    client = await exporter("modules: {default: {metrics: [{name: x, help: x, value: v}]}}")
    status, text = await probe(client, f"target=http://127.0.0.1:{unused_tcp_port}/")
    s = parse(text)
    assert status == 200 and value(s, "probe_success") == 0
    assert value(s, "probe_endpoint_http_status_code", endpoint="default") == 0


async def test_duplicate_series_keep_the_first_and_are_counted(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/": {"items": [{"id": "a", "v": 1}, {"id": "a", "v": 2}, {"id": "b", "v": 3}]}})
    client = await exporter("modules: {default: {metrics: [{name: item_value, help: x, each: items, value: v, labels: {id: id}}]}}")
    status, text = await probe(client, f"target={up.url}/")
    s = parse(text)
    assert status == 200
    assert value(s, "item_value", id="a") == 1 and value(s, "item_value", id="b") == 3
    assert value(s, "probe_duplicate_series", metric="item_value") == 1


async def test_probe_metrics_follow_each_probe_of_a_module(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    # the probe's own metrics are written from a plan per shape of probe (probe._SelfPlan): duplicates in one
    # probe and not in the next, an endpoint failing then answering, the series limit reached: each answer says its own
    answers = [{"items": [{"id": "a", "v": 1}, {"id": "a", "v": 2}]}, None, {"items": [{"id": "a", "v": 1}]},
               {"items": [{"id": "b", "v": 1}, {"id": "c", "v": 2}, {"id": "d", "v": 3}]}, {"items": []}]
    served = iter(answers)

    async def answer(request: web.Request) -> web.Response:
        document = next(served)
        return web.json_response({"error": "down"}, status=503) if document is None else web.json_response(document)

    up = await upstream({"/items": answer, "/other": {"n": 7}})
    client = await exporter("""
        modules:
          default:
            series_limit: 3
            endpoints:
              items: {url: '{target}/items'}
              other: {url: '{target}/other'}
            metrics:
              - {name: item_value, help: x, endpoint: items, each: items, value: v, labels: {id: id}}
              - {name: other_n, help: y, endpoint: other, value: n}
        """)
    # probe_success, the items endpoint's success, item_value's series and duplicates (None: not written), the series limit reached
    expected = [(1, 1, 1, 1, 0), (0, 0, 0, 0, 0), (1, 1, 1, 0, 0), (0, 1, None, None, 1), (1, 1, 0, 0, 0)]
    for success, items_ok, series, duplicates, limited in expected:
        status, text = await probe(client, f"target={up.url}")
        s = parse(text)
        assert status == 200
        assert value(s, "probe_success") == success
        assert value(s, "probe_endpoint_success", endpoint="items") == items_ok
        assert value(s, "probe_endpoint_http_status_code", endpoint="items") == (200 if items_ok else 503)
        assert value(s, "probe_endpoint_success", endpoint="other") == 1
        written = {(name, dict(labels).get("metric")): v for (name, labels), v in s.items() if name.startswith("probe_") and "metric" in dict(labels)}
        assert written.get(("probe_series", "item_value")) == series
        assert written.get(("probe_duplicate_series", "item_value")) == duplicates
        assert written.get(("probe_series", "other_n")) == (None if limited else 1)
        assert value(s, "probe_failed_due_to_deadline") == 0 and value(s, "probe_failed_due_to_series_limit") == limited


async def test_nested_payload_with_parent_keys_gives_last_reading(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    payload = {"shop": {"web": {"prod": [{"name": "pod-a", "energy_consumed": [1.5, 3.25]}], "dev": [{"name": "pod-b", "energy_consumed": [7]}]}}}
    up = await upstream({"/energy": payload})
    client = await exporter("""
        modules:
          energy:
            metrics:
              - name: energy_consumed_total
                help: Energy consumed by a pod
                type: counter
                each: ['*', '*', {as: namespace}, '@']
                value: 'energy_consumed[-1]'
                labels: {namespace: $namespace.key, pod_name: name}
        """)
    _, text = await probe(client, f"module=energy&target={up.url}/energy")
    assert 'energy_consumed_total{namespace="prod",pod_name="pod-a"} 3.25\n' in text
    assert 'energy_consumed_total{namespace="dev",pod_name="pod-b"} 7\n' in text


async def test_object_entries_give_key_labels_and_parent_labels(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    payload = {"cluster": "c1", "queues": {"orders": {"depth": 4, "workers": {"w1": 2, "w2": 5}}, "mail": {"depth": 0, "workers": {}}}}
    up = await upstream({"/": payload})
    client = await exporter("""
        modules:
          default:
            labels: {source: '{target}'}
            metrics:
              - {name: queue_depth, help: d, each: queues, value: depth, labels: {queue: $key, cluster: $root.cluster}}
              - name: queue_worker_busy
                help: w
                each: [queues, workers]
                value: '@'
                labels: {queue: $parent.key, worker: $key, position: $index}
        """)
    _, text = await probe(client, f"target={up.url}/")
    s = parse(text)
    src = f"{up.url}/"
    assert value(s, "queue_depth", queue="orders", cluster="c1", source=src) == 4
    assert value(s, "queue_depth", queue="mail", cluster="c1", source=src) == 0
    assert value(s, "queue_worker_busy", queue="orders", worker="w2", position="1", source=src) == 5


async def test_probe_parameters_feed_templates_and_labels(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/repos/{owner}/{name}": {"stars": 42}})
    client = await exporter("""
        modules:
          repo:
            parameters:
              repo: {pattern: '[a-z]+/[a-z]+'}
              region: {default: eu}
            endpoints:
              main: {url: '{target}/repos/{repo}', headers: {X-Region: '{region}'}}
            metrics:
              - {name: repo_stars, help: s, value: stars, labels: {repo: $params.repo, region: $params.region}}
        """)
    status, text = await probe(client, f"module=repo&target={up.url}&repo=prom/client")
    assert status == 200
    assert value(parse(text), "repo_stars", repo="prom/client", region="eu") == 42
    assert up.requests[0].path == "/repos/prom/client"
    assert up.requests[0].headers["X-Region"] == "eu"
    status, text = await probe(client, f"module=repo&target={up.url}&repo=../../etc")
    assert status == 400 and "repo" in text


async def test_bad_probe_requests_get_400_with_a_reason(exporter: ExporterFactory) -> None:
    client = await exporter("modules: {default: {metrics: [{name: x, help: x, value: v}]}}")
    for query, reason in [
        ("module=nope&target=http://127.0.0.1:1", "unknown module 'nope'"),
        ("module=default", "missing target"),
        ("target=file:///etc/passwd", "http:// or https://"),
        ("target=gopher://127.0.0.1:70/", "http:// or https://"),
        ("target=" + "a" * 5000, "longer than"),
        ("target=http://%0a", "control characters"),
    ]:
        status, text = await probe(client, query)
        assert status == 400, query
        assert reason in text and text.count("\n") == 1, (query, text)


async def test_info_stateset_and_timestamps(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    payload = {"version": "2.1.0", "commit": "abc", "status": "yellow", "at": 1700000000123, "since": "2023-11-14T22:13:20Z"}
    up = await upstream({"/": payload})
    client = await exporter("""
        modules:
          default:
            metrics:
              - {name: app_build_info, help: b, type: info, labels: {version: version, commit: commit}}
              - {name: cluster_status, help: s, type: stateset, value: status, states: [green, yellow, red]}
              - {name: cluster_up, help: u, value: "status != 'red'", timestamp: at, timestamp_unit: milliseconds}
              - {name: cluster_since, help: c, value: '`1`', timestamp: since}
        """)
    _, text = await probe(client, f"target={up.url}/")
    s = parse(text)
    assert value(s, "app_build_info", version="2.1.0", commit="abc") == 1
    assert value(s, "cluster_status", cluster_status="yellow") == 1
    assert value(s, "cluster_status", cluster_status="green") == 0
    assert "cluster_up 1 1700000000123\n" in text
    assert "cluster_since 1 1700000000000\n" in text


async def test_openmetrics_is_negotiated_and_gzip_applied(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/api/stats": NODES})
    client = await exporter(NODE_SPEC)
    accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4"
    response = await client.get(f"/probe?target={up.url}", headers={"Accept": accept, "Accept-Encoding": "gzip"}, auto_decompress=False)
    assert response.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert response.headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(await response.read()).decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    assert families["node_cpu_ratio"].type == "gauge"
    plain = await client.get(f"/probe?target={up.url}")
    assert plain.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"


NEGOTIATIONS = [  # (Accept, Accept-Encoding, OpenMetrics?, gzip?)
    ("application/openmetrics-text;q=0", "gzip;q=0", False, False),
    ("application/openmetrics-text;version=1.0.0;q=0", "identity, gzip;q=0", False, False),
    ("text/plain;version=0.0.4;q=1, application/openmetrics-text;version=1.0.0;q=0.5", "gzip;q=0.5", False, True),
    ("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1", "gzip", True, True),  # Prometheus's
    ("application/openmetrics-text", "", True, False),
]


@pytest.mark.parametrize(("accept", "accept_encoding", "openmetrics", "gzipped"), NEGOTIATIONS)
@pytest.mark.parametrize(("path", "series"), [
    ("/probe?target={url}", ("node_cpu_ratio", {"id": "n1", "environment": "beta"}, 0.25)),
    ("/metrics", ("jsonexporter_config_last_reload_successful", {}, 1)),  # the exporter's own, by prometheus_client: negotiated alike
])
async def test_the_exposition_format_and_gzip_are_negotiated_by_q_values(
    upstream: UpstreamFactory, exporter: ExporterFactory, accept: str, accept_encoding: str, openmetrics: bool, gzipped: bool,
    path: str, series: tuple[str, dict[str, str], float],
) -> None:
    up = await upstream({"/api/stats": NODES})
    client = await exporter(NODE_SPEC)
    response = await client.get(path.format(url=up.url), headers={"Accept": accept, "Accept-Encoding": accept_encoding}, auto_decompress=False)
    assert response.status == 200
    body = await response.read()
    assert ("Content-Encoding" in response.headers) is gzipped
    text = (gzip.decompress(body) if gzipped else body).decode()
    name, labels, expected = series
    if openmetrics:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0") and text.endswith("# EOF\n")
        assert name in {f.name for f in parse_openmetrics(text)}
    else:
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8" and "# EOF" not in text
        assert value(parse(text), name, **labels) == expected


async def test_debug_trace_shows_requests_and_results_without_secrets(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/api/stats": NODES})
    client = await exporter("""
        modules:
          default:
            targets: {allow: ['http://127\\.0\\.0\\.1:\\d+']}
            endpoints:
              stats:
                url: '{target}/api/stats'
                headers: {Authorization: 'Bearer s3cr3t-token', X-Api-Key: hunter2}
                params: {access_token: qwerty, page: '1'}
            metrics:
              - {name: node_cpu_ratio, help: c, each: nodes, value: cpu, labels: {id: id}}
        """)
    status, text = await probe(client, f"target={up.url}&debug=true")
    assert status == 200
    assert "endpoint stats: GET" in text and "page=1" in text
    assert "each[0] 'nodes' ->" in text
    assert "node_cpu_ratio{id=\"n1\"} 0.25" in text
    for secret in ("s3cr3t-token", "hunter2", "qwerty"):
        assert secret not in text
    assert up.requests[0].headers["Authorization"] == "Bearer s3cr3t-token"  # the upstream still got it


async def test_debug_trace_shows_each_document_once_info_labels_and_what_it_shortened(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    nodes = [{"id": f"n{i}", "cpu": i / 10, "note": "x" * 100} for i in range(5)]
    up = await upstream({"/api/stats": {"version": "2.1", "nodes": nodes}})
    client = await exporter("""
        modules:
          default:
            endpoints: {stats: {url: '{target}/api/stats'}}
            metrics:
              - {name: node_cpu_ratio, help: c, each: nodes, value: cpu, labels: {id: id}}
              - {name: node_cpu_percent, help: c, each: nodes, value: cpu, scale: 100, labels: {id: id}}
              - {name: node_info, help: i, type: info, each: nodes, labels: {id: id}}
              - {name: api_info, help: i, type: info, labels: {version: version}}
        """)
    status, text = await probe(client, f"target={up.url}&debug=true")
    assert status == 200
    iterations = [line for line in text.splitlines() if line.startswith("  each[0] 'nodes' -> ")]
    assert len(iterations) == 3 and iterations[0].startswith("  each[0] 'nodes' -> [{")
    assert iterations[1:] == ["  each[0] 'nodes' -> as shown for metric node_cpu_ratio"] * 2
    assert text.count("  document: {") == 1  # the endpoint's answer, once
    assert f"(first 300 of {len(json.dumps(nodes))} chars)" in iterations[0]
    assert "  rule node_cpu_ratio: first 3 of 5 elements shown" in text
    assert "    node_info: info; labels {'id': 'n0'}" in text and "    node_info: info; labels {'id': 'n3'}" not in text
    assert "    api_info: info; labels {'version': '2.1'}" in text
    assert "  rule api_info: 1 element(s)\n" in text


async def test_scraper_disconnect_cancels_upstream_requests(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    arrived, cancelled = asyncio.Event(), asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        arrived.set()
        try:
            await asyncio.sleep(30)  # stands for an upstream that never answers; cancelled below
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return web.json_response({})

    up = await upstream({"/": hang})
    client = await exporter("modules: {default: {timeout: 60s, metrics: [{name: x, help: x, value: v}]}}")
    task = asyncio.create_task(client.get(f"/probe?target={up.url}/"))
    await wait_for(arrived)
    task.cancel()  # the scraper goes away: its connection closes
    await wait_for(cancelled)  # the upstream sees its request abandoned long before 60s


async def test_self_metrics_count_probes_by_module_and_result(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/api/stats": NODES})
    client = await exporter(NODE_SPEC)
    await probe(client, f"target={up.url}")
    await probe(client, "target=http://127.0.0.1:1")
    await probe(client, "module=nope&target=x")
    response = await client.get("/metrics")
    s = parse(await response.text())
    assert value(s, "jsonexporter_probes_total", module="default", result="success") == 1
    assert value(s, "jsonexporter_probes_total", module="default", result="failure") == 1
    assert value(s, "jsonexporter_probes_total", module="", result="invalid") == 1
    assert value(s, "jsonexporter_upstream_requests_total", module="default", endpoint="stats", outcome="success") == 1
    assert value(s, "jsonexporter_upstream_requests_total", module="default", endpoint="stats", outcome="connection_error") == 1
    assert value(s, "jsonexporter_probe_duration_seconds_count", module="default") == 2
    assert value(s, "jsonexporter_config_last_reload_successful") == 1
    assert value(s, "jsonexporter_probes_in_flight") == 0
    assert "process_resident_memory_bytes" in names(s)
    assert any(n == "jsonexporter_build_info" for n in names(s))


async def test_landing_page_lists_modules(exporter: ExporterFactory) -> None:
    client = await exporter("modules: {alpha: {metrics: [{name: x, help: x, value: v}]}, beta: {metrics: [{name: y, help: y, value: v}]}}")
    response = await client.get("/")
    text = await response.text()
    assert response.status == 200 and "alpha" in text and "beta" in text and '<form action="/probe"' in text
    assert (await client.get("/-/healthy")).status == 200


async def test_connections_to_the_upstream_are_reused_across_probes(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/api/stats": NODES})
    client = await exporter(NODE_SPEC)
    for _ in range(3):
        status, _ = await probe(client, f"target={up.url}")
        assert status == 200
    peers = {r.transport.get_extra_info("peername") for r in up.requests if r.transport is not None}
    assert len(up.requests) == 3 and len(peers) == 1  # one keep-alive connection, not one per probe


async def test_oversized_answer_fails_the_endpoint_without_reading_it_all(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(10_000):  # up to 640 MB unless the exporter hangs up first
                await response.write(b" " * 65536)
        except (ConnectionError, RuntimeError):
            pass
        return response

    up = await upstream({"/big": endless})
    client = await exporter("""
        modules:
          default:
            endpoints: {big: {url: '{target}/big', max_response_bytes: 100000}}
            metrics: [{name: x, help: x, value: v}]
        """)
    status, text = await probe(client, f"target={up.url}&debug=true")
    assert status == 200
    assert "too_large" in text and "larger than max_response_bytes 100000" in text
    assert "probe_success 0" in text


async def test_parameters_cannot_climb_out_of_the_url_path(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/api/{tail:.*}": {"v": 1}})
    client = await exporter("""
        modules:
          default:
            targets: {allow: ['http://127\\.0\\.0\\.1:\\d+']}
            parameters: {repo: {}}
            endpoints: {main: {url: '{target}/api/repos/{repo}/releases', headers: {Authorization: 'Bearer secret'}}}
            metrics: [{name: x, help: x, value: v}]
        """)
    for repo in ("../../user?x=1#", "a/../../admin", "..", "a/./b", "..\\\\admin"):
        status, text = await probe(client, f"target={up.url}&repo={quote(repo)}")
        assert status == 400 and "path segment" in text, repo
    status, _ = await probe(client, f"target={up.url}&repo={quote('owner/name?x=1')}")
    assert status == 200
    assert [r.raw_path for r in up.requests] == ["/api/repos/owner/name%3Fx=1/releases"]


async def test_target_cannot_move_the_request_off_where_the_url_puts_it(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/{tail:.*}": {"v": 1}})
    client = await exporter(f"""
        modules:
          origin:
            targets: {{allow: ['(http://)?127\\.0\\.0\\.1:\\d+.*']}}
            endpoints: {{stats: {{url: '{{target}}/api/stats', headers: {{Authorization: 'Bearer secret'}}}}}}
            metrics: [{{name: x, help: x, value: v}}]
          whole:
            targets: {{allow: ['http://127\\.0\\.0\\.1:\\d+/public/.*']}}
            metrics: [{{name: x, help: x, value: v}}]
          segment:
            endpoints: {{repo: {{url: '{up.url}/api/{{target}}/status'}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """)
    refused = {
        "origin": [f"{up.url}/../admin", f"{up.url}?x=1", f"{up.url}#f", f"{up.url}/%2e%2e/admin", f"{up.url}/base",
                   f"{up.url}\\admin", f"{up.url}%2e%2e", f"{up.url.removeprefix('http://')}/admin"],
        "whole": [f"{up.url}/public/../admin", f"{up.url}/public/%2e%2e/admin", f"{up.url}/public/.%2E/admin"],
        "segment": ["..", ".", "%2e%2e"],
    }
    for module, targets in refused.items():
        for target in targets:
            status, text = await probe(client, f"module={module}&target={quote(target, safe='')}")
            assert status == 400 and f"module {module}, endpoint " in text and "invalid target" in text, (target, text)
            assert "Traceback" not in text
    assert up.requests == []
    for module, target in (("origin", up.url + "/"), ("whole", f"{up.url}/public/x?y=1#f"),
                           ("segment", "a/../admin"), ("segment", "x?y=1#f"), ("segment", "%2e%2e%2fadmin")):
        status, text = await probe(client, f"module={module}&target={quote(target, safe='')}")
        assert status == 200, (target, text)
    assert [r.raw_path for r in up.requests] == [
        "/api/stats", "/public/x?y=1", "/api/a%2F..%2Fadmin/status", "/api/x%3Fy=1%23f/status", "/api/%252e%252e%252fadmin/status"]


async def test_target_with_a_trailing_slash_gives_no_double_slash_in_the_url(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/{tail:.*}": {"v": 1}})
    client = await exporter("""
        modules:
          default:
            endpoints:
              nested: {url: '{target}/api/stats'}
              whole: {url: '{target}'}
            metrics: [{name: x, help: x, value: v, endpoint: nested}]
        """)
    status, text = await probe(client, f"target={quote(up.url + '/', safe='')}")
    assert status == 200 and value(parse(text), "x") == 1
    assert sorted(r.raw_path for r in up.requests) == ["/", "/api/stats"]  # a target used whole keeps its slash
    assert value(parse(text), "probe_success") == 1


async def test_debug_trace_of_an_answer_nested_too_deep_to_write_shows_it_cut_at_a_depth(aiohttp_server: Any, exporter: ExporterFactory) -> None:
    depth = 990  # parses; json.dumps and repr in a request handler's stack run out of it
    body = '{"a": 1, "b": ' + "[" * depth + "]" * depth + "}"

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/deep", answer)
    server = await aiohttp_server(app, host="127.0.0.1")
    client = await exporter("""
        modules:
          default:
            endpoints: {deep: {url: '{target}/deep'}}
            metrics: [{name: a, help: a, value: a}]
        """)
    status, text = await probe(client, f"target=http://127.0.0.1:{server.port}&debug=true")
    assert status == 200, text
    assert '  document: {"a": 1, "b": [[[' in text and "[…]" in text  # shown down to trace.MAX_DEPTH levels
    assert "\na 1\n" in text


async def _exporter_echoing_into_labels(aiohttp_server: Any, exporter: ExporterFactory, items: Callable[[web.Request], list[dict[str, Any]]],
                                        client_config: str, labels: str) -> tuple[Any, str]:
    """An exporter whose module sends `client_config`'s credentials to an upstream answering `{"items": items(request)}`,
    each item's `v` a sample with `labels`; and the probe's target query."""
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"items": items(request)})

    app = web.Application()
    app.router.add_get("/echo", echo)
    server = await aiohttp_server(app, host="127.0.0.1")
    client = await exporter(f"""
        modules:
          default:
            targets: {{allow: ['http://127\\.0\\.0\\.1:\\d+']}}
            http_client_config: {client_config}
            endpoints: {{e: {{url: '{{target}}/echo'}}}}
            metrics: [{{name: item, help: i, each: items, value: v, labels: {labels}}}]
        """)
    return client, f"target=http://127.0.0.1:{server.port}"


@pytest.mark.parametrize("labels", ["{a: auth}", "{a: auth, m: $module}"], ids=["fast path", "general path"])
async def test_credentials_the_api_echoes_are_hidden_in_label_values(aiohttp_server: Any, exporter: ExporterFactory, labels: str) -> None:
    def items(request: web.Request) -> list[dict[str, Any]]:
        said = request.headers["Authorization"]
        return [{"auth": said, "v": 1}, {"auth": "Bearer <redacted>", "v": 2}, *({"auth": f"user{i}", "v": i} for i in range(600))]

    client, target = await _exporter_echoing_into_labels(aiohttp_server, exporter, items, "{bearer_token: S3CRET-TOKEN-123}", labels)
    for accept in ("text/plain", "application/openmetrics-text"):
        status, text = await probe(client, target, Accept=accept)
        assert status == 200 and "S3CRET" not in text
        s = parse(text) if accept == "text/plain" else {}
        if s:
            assert [v for (name, lb), v in s.items() if name == "item" and dict(lb)["a"] == "Bearer <redacted>"] == [1]
            assert value(s, "probe_duplicate_series", metric="item") == 1  # the one that had `<redacted>` already: as any duplicate
            assert value(s, "probe_series", metric="item") == 601


async def test_requests_are_kept_only_for_targets_without_credentials(upstream: UpstreamFactory) -> None:
    # fetch_module keeps the rendered requests of a target for the next probes (upstream._rendered): never
    # those of a target with userinfo or a query, where a credential may be
    from jsonexporter.probe import run_probe
    from jsonexporter.upstream import Upstream, new_session

    up = await upstream({"/api": {"v": 1}})
    spec = make_spec("modules: {default: {metrics: [{name: x, help: x, value: v}]}}")
    module = spec.modules["default"]
    plain, userinfo, query = f"{up.url}/api", up.url.replace("://", "://admin:s3cret-pw@") + "/api", f"{up.url}/api?token=s3cret-tk"
    upstream_side = Upstream(new_session())
    try:
        for target in (plain, userinfo, query, plain):
            result = await run_probe(upstream_side, module, target, {"target": target}, 5.0)
            assert result.success, result.endpoints
    finally:
        await upstream_side.close()
    kept = repr(module.fast_plans)
    assert plain in kept  # kept: the second probe of it rendered nothing
    assert "s3cret" not in kept and "admin" not in kept


def test_the_requests_of_a_bounded_number_of_targets_are_kept_the_first_kept_going_first() -> None:
    """A job probing more targets in turn than were kept found none of them (the kept ones were all dropped when
    full); now the first kept goes first, so that a rotation over up to _MAX_RENDERED targets renders each once,
    and the kept requests stay bounded. A long target is rendered for its probe alone."""
    from jsonexporter import upstream

    module = make_spec("modules: {default: {metrics: [{name: x, help: x, value: v}]}}").modules["default"]
    targets = [f"http://127.0.0.1:{19000 + i}/api" for i in range(upstream._MAX_RENDERED + 10)]
    for _ in range(2):
        for target in targets[:1000]:
            upstream._rendered(module, {"target": target, "module": "default"})
    kept = module.fast_plans[upstream._RENDERED]
    first = kept[targets[0]]
    upstream._rendered(module, {"target": targets[0], "module": "default"})
    assert kept[targets[0]] is first  # the second pass over 1,000 targets rendered none of them again
    for target in targets:
        upstream._rendered(module, {"target": target, "module": "default"})
    assert len(kept) == upstream._MAX_RENDERED and targets[-1] in kept and targets[0] not in kept
    long_target = "http://127.0.0.1:19000/" + "a" * upstream._MAX_KEPT_TARGET
    upstream._rendered(module, {"target": long_target, "module": "default"})
    assert long_target not in kept and len(kept) == upstream._MAX_RENDERED

    four = make_spec("modules: {default: {endpoints: {a: {}, b: {}, c: {}, d: {}}, metrics: [{name: x, help: x, value: v, endpoint: a}]}}")
    module = four.modules["default"]
    for target in targets:
        upstream._rendered(module, {"target": target, "module": "default"})
    kept = module.fast_plans[upstream._RENDERED]
    assert len(kept) == upstream._MAX_RENDERED // 4 and sum(map(len, kept.values())) == upstream._MAX_RENDERED  # requests, not targets


@pytest.mark.parametrize("secret", ["pw5Xy", 'S3CRET"TOK\tEN-123', "S3CRET\\TOK\rEN-123", "S3CRET-TOKEN-plain"])
@pytest.mark.parametrize("labels", ["{a: auth}", "{a: auth, m: $module}"], ids=["fast", "general"])
async def test_a_secret_with_quotes_tabs_or_carriage_returns_echoed_into_a_label_is_hidden_as_the_label_writes_it(
        aiohttp_server: Any, exporter: ExporterFactory, labels: str, secret: str) -> None:
    # the exposition escapes `\`, `"` and line breaks but writes a tab as it is: neither repr's nor JSON's form
    client, target = await _exporter_echoing_into_labels(
        aiohttp_server, exporter, lambda request: [{"auth": secret, "v": 1}, *({"auth": f"user{i}", "v": i} for i in range(5))],
        f"{{basic_auth: {{username: u, password: {json.dumps(secret)}}}}}", labels)
    status, text = await probe(client, target)
    assert status == 200
    assert "TOK" not in text and "pw5Xy" not in text, text
    assert 'item{a="<redacted>"' in text, text


_SHAPES_SPEC = """
modules:
  m:
    endpoints:
      plain: {url: "http://127.0.0.1:1/a"}
      cached: {url: "http://127.0.0.1:1/b", cache_ttl: 10s, stale_if_error: 1m}
      paged: {url: "http://127.0.0.1:1/c", pagination: {items: '@', next: {link_header: next}}}
    metrics:
      - {name: a, help: h, value: v, endpoint: plain}
      - {name: b, help: h, value: v, endpoint: cached}
"""


@pytest.mark.parametrize("shape", ["plain", "cached and stale", "paged", "failed", "duplicates and errors", "no metrics"])
def test_the_probe_metrics_written_beforehand_are_those_of_the_families_in_both_formats(shape: str) -> None:
    module = make_spec(_SHAPES_SPEC).modules["m"]
    endpoints = [EndpointResult("plain", "success", 200, 1234, 0.25)]
    extraction = Extraction(errors={"a": 0, "b": 0}, duplicates={})
    if shape == "cached and stale":
        endpoints.append(EndpointResult("cached", "invalid_status", 503, 99, 1e-7, cache="stale", cache_age=12.5, stale=True))
    elif shape == "paged":
        endpoints.append(EndpointResult("paged", "success", 200, 10, 3.0, pages=3))
    elif shape == "failed":
        endpoints = [EndpointResult("plain", "timeout", 0, 0, 30.0), EndpointResult("cached", "connection_error", cache="miss")]
    elif shape == "duplicates and errors":
        extraction = Extraction(errors={"a": 2, "b": 1}, duplicates={"b": 4, "a": 1})
    elif shape == "no metrics":
        extraction = Extraction()
    success = shape not in ("failed", "cached and stale")
    for render in (render_text, render_openmetrics):
        families = self_families(module, extraction, endpoints, success, 1655371.000123)
        assert render([self_written(module, extraction, endpoints, success, 1655371.000123)]) == render(families)
