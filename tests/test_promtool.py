"""Probe output accepted by Prometheus's own promtool (text format) and by prometheus_client's
strict OpenMetrics parser, for every metric type."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from conftest import ExporterFactory, UpstreamFactory
from metrics_util import parse, value
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None and not os.environ.get("CI"), reason="promtool not installed")

PAYLOAD = {
    "version": "1.2.3",
    "status": "degraded",
    "queues": {"orders": {"depth": 4, "processed": 1655371, "failed": 3, "latency": 0.25}, "mail": {"depth": 0, "processed": 10, "failed": 0}},
}
ALL_TYPES = """
modules:
  default:
    metrics:
      - {name: queue_depth, help: "Items waiting\\nin the queue", each: queues, value: depth, labels: {queue: $key}}
      - {name: queue_processed_total, help: Processed, type: counter, each: queues, value: processed, labels: {queue: $key}}
      - {name: queue_failed, help: Failed (suffix added), type: counter, each: queues, value: failed, labels: {queue: $key}}
      - {name: queue_latency_seconds, help: Latency, type: untyped, each: queues, value: latency, labels: {queue: $key}}
      - {name: app_build_info, help: Build, type: info, labels: {version: version}}
      - {name: app_status, help: Status, type: stateset, value: status, states: [ok, degraded, down]}
"""


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "promtool is required in CI (.ci/run installs Debian's prometheus package)"
    return subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


@needs_promtool
async def test_text_probe_output_passes_promtool(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/": PAYLOAD})
    client = await exporter(ALL_TYPES)
    text = await (await client.get(f"/probe?target={up.url}/")).text()
    assert "queue_failed_total{queue=\"orders\"} 3\n" in text and "app_status{app_status=\"degraded\"} 1\n" in text
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_openmetrics_probe_output_passes_the_strict_parser(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/": PAYLOAD})
    client = await exporter(ALL_TYPES)
    response = await client.get(f"/probe?target={up.url}/", headers={"Accept": "application/openmetrics-text;version=1.0.0"})
    families = {f.name: f for f in parse_openmetrics(await response.text())}
    assert families["queue_processed"].type == "counter"
    assert families["app_build"].type == "info"
    assert families["app_status"].type == "stateset"
    assert families["queue_latency_seconds"].type == "unknown"


@needs_promtool
async def test_carriage_returns_from_an_answer_are_line_breaks_that_every_parser_accepts(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    """prometheus_client's parsers (both formats) rejected a whole answer holding a raw CR in a label value."""
    up = await upstream({"/": {"items": [{"id": "a\rb", "v": 1}, {"id": "c\r\nd", "v": 2}, {"id": "e\nf", "v": 3}]}})
    client = await exporter("""
        modules:
          default:
            metrics:
              - {name: depth, help: h, each: items, value: v, labels: {id: id}}
              - {name: last_depth, help: h, each: items, value: v, duplicates: last, labels: {id: id}}
        """)
    text = await (await client.get(f"/probe?target={up.url}/")).text()
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr
    series = parse(text)
    for name in ("depth", "last_depth"):
        assert [value(series, name, id=i) for i in ("a\nb", "c\nd", "e\nf")] == [1, 2, 3]
    response = await client.get(f"/probe?target={up.url}/", headers={"Accept": "application/openmetrics-text;version=1.0.0"})
    families = {f.name: f for f in parse_openmetrics(await response.text())}
    assert [s.labels["id"] for s in families["depth"].samples] == ["a\nb", "c\nd", "e\nf"]


@needs_promtool
async def test_exporter_metrics_pass_promtool(exporter: ExporterFactory) -> None:
    client = await exporter(ALL_TYPES)
    await client.get("/probe?target=http://127.0.0.1:1")
    result = promtool_check(await (await client.get("/metrics")).text())
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
async def test_a_timestamp_beyond_int64_milliseconds_drops_only_its_series(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/": {"items": [{"id": "now", "v": 1, "ts": 1_700_000_000}, {"id": "far", "v": 2, "ts": 1.7e18}]}})
    client = await exporter("""
        modules:
          default:
            metrics:
              - {name: depth, help: h, each: items, value: v, timestamp: ts, labels: {id: id}}
        """)
    text = await (await client.get(f"/probe?target={up.url}/")).text()
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'depth{id="now"} 1 1700000000000\n' in text and 'id="far"' not in text
    assert 'probe_extraction_errors{metric="depth"} 1\n' in text
