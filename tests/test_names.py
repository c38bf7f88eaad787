"""The names a family takes in the exposition (jsonexporter/names.py) against what the writer writes in
both formats, and `check` against them: what meets is refused, what does not meet is accepted."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import get_args

import pytest
from conftest import make_spec
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from jsonexporter.exposition import render_openmetrics, render_text
from jsonexporter.extract import Extraction
from jsonexporter.names import NAMING, PROBE_METRICS, exposition_names
from jsonexporter.probe import run_offline, self_families
from jsonexporter.spec.model import MetricType
from jsonexporter.upstream.fetch import EndpointResult

RULES = {
    "gauge": "{name: g, help: h, type: gauge, value: v, labels: {id: id}}",
    "untyped": "{name: u, help: h, type: untyped, value: v, labels: {id: id}}",
    "counter": "{name: c, help: h, type: counter, value: v, labels: {id: id}}",
    "info": "{name: i_info, help: h, type: info, labels: {id: id}}",
    "stateset": "{name: s, help: h, type: stateset, value: state, states: [up, down], labels: {id: id}}",
    "histogram": "{name: h, help: h, type: histogram, buckets: '[[`1`, v]]', sum: v, count: v, labels: {id: id}}",
    "summary": "{name: q, help: h, type: summary, quantiles: '{p50: v}', sum: v, count: v, labels: {id: id}}",
}
NAMES = {"gauge": "g", "untyped": "u", "counter": "c", "info": "i_info", "stateset": "s", "histogram": "h", "summary": "q"}


def written_names(text: str, openmetrics: bool) -> set[str]:
    """Every family and sample name in an exposition, as its parser and its HELP/TYPE lines give them."""
    families = list((parse_openmetrics if openmetrics else parse_text)(text))
    headers = set(re.findall(r"^# (?:HELP|TYPE) (\S+)", text, re.M))
    return headers | {f.name for f in families} | {s.name for f in families for s in f.samples}


def test_every_type_declares_its_names_and_has_a_rule_here() -> None:
    assert set(RULES) == set(NAMING) == set(get_args(MetricType))


@pytest.mark.parametrize("mtype", sorted(RULES))
def test_a_family_writes_only_names_it_takes(mtype: str) -> None:
    module = make_spec(f"modules:\n  m:\n    metrics:\n      - {RULES[mtype]}\n").modules["m"]
    document = {"v": 3, "id": "a", "state": "up"}
    result = run_offline(module, {"default": document}, "t", {})
    own = [f for f in result.families if not f.name.startswith("probe_")]
    assert len(own) == 1 and own[0].parts
    for text, openmetrics in ((render_text(own), False), (render_openmetrics(own), True)):
        assert written_names(text, openmetrics) <= exposition_names(NAMES[mtype], mtype), text


def test_the_probe_metrics_that_check_reserves_are_those_the_probe_writes() -> None:
    paginated = "    endpoints: {default: {pagination: {items: '@', next: {link_header: next}}}}\n"
    module = make_spec("modules:\n  m:\n" + paginated + "    metrics:\n      - {name: a, help: h, value: v}\n").modules["m"]
    endpoint = EndpointResult("default", "success", cache="hit", cache_age=1.0, pages=1)
    written = {f.name for f in self_families(module, Extraction(errors={"a": 0}), [endpoint], True, 0.5)}
    assert written == PROBE_METRICS


def test_names_that_meet_in_neither_format_are_accepted() -> None:
    """Look-alikes that take different names: a gauge beside its `_info`, a counter beside `_count` and
    `_sum` (no histogram yet), two rules feeding one counter, `values` entries of one stem."""
    spec = make_spec("""
        modules:
          m:
            metrics:
              - {name: node, help: h, value: v}
              - {name: node_info, help: h, value: v}
              - {name: req_total, help: h, type: counter, value: v}
              - {name: req_total, help: h, type: counter, value: w}
              - {name: req_count, help: h, value: v}
              - {name: req_sum, help: h, value: v}
              - {name: job, help: h, type: counter, values: {done: v, failed: w}}
              - {name: job_info, help: h, type: info, labels: {id: "'x'"}}
              - {name: probe, help: h, value: v}
        """)
    result = run_offline(spec.modules["m"], {"default": {"v": 1, "w": 2}}, "t", {})
    list(parse_openmetrics(render_openmetrics(result.families)))
    promtool = shutil.which("promtool")
    if promtool is not None:
        checked = subprocess.run([promtool, "check", "metrics"], input=render_text(result.families), capture_output=True, text=True, timeout=60)
        assert "error while linting" not in checked.stderr, checked.stderr
