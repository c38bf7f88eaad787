"""`duplicates: first | last | sum`: what a rule makes of its own series with the same labels, and that
duplicates across rules still keep the first rule's series and are counted."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import ExporterFactory, UpstreamFactory, make_spec
from metrics_util import parse, value
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from jsonexporter.exposition import render_openmetrics, render_text
from jsonexporter.extract import Extraction, ProbeContext, extract
from jsonexporter.trace import Trace

PROBE = ProbeContext("default", "http://t", {})
ITEMS = {"items": [{"state": "open", "v": 1}, {"state": "done", "v": 2}, {"state": "open", "v": 4}, {"state": "open", "v": 8}]}


def _extract(rules: str, document: Any, traced: bool = False) -> Extraction:
    module = make_spec(f"modules:\n  default:\n    metrics:\n{rules}").modules["default"]
    return extract(module, {"default": document}, PROBE, trace=Trace() if traced else None)


def _series(result: Extraction) -> list[str]:
    return [line for line in render_text(result.families.values()).splitlines() if not line.startswith("#")]


@pytest.mark.parametrize("traced", [False, True])  # the fast path declines these rules: both give the general path's output
@pytest.mark.parametrize(("policy", "expected", "dropped"), [
    (None, ['v{state="open"} 1', 'v{state="done"} 2'], 2),
    ("first", ['v{state="open"} 1', 'v{state="done"} 2'], 2),
    ("last", ['v{state="open"} 8', 'v{state="done"} 2'], 0),
    ("sum", ['v{state="open"} 13', 'v{state="done"} 2'], 0),
])
def test_each_policy_keeps_the_first_the_last_or_the_sum_in_the_place_of_the_first(
        policy: str | None, expected: list[str], dropped: int, traced: bool) -> None:
    extra = f", duplicates: {policy}" if policy else ""
    result = _extract(f"      - {{name: v, help: h, each: items, labels: {{state: state}}, value: v{extra}}}\n", ITEMS, traced)
    assert _series(result) == expected
    assert result.duplicates == {"v": dropped}
    assert result.errors == {"v": 0}


def test_sum_of_ones_counts_items_per_state_in_one_rule() -> None:
    result = _extract("      - {name: items, help: h, each: items, labels: {state: state}, value: '`1`', duplicates: sum}\n", ITEMS)
    assert _series(result) == ['items{state="open"} 3', 'items{state="done"} 1']


def test_an_element_whose_value_fails_is_left_out_of_the_sum_and_counted() -> None:
    document = {"items": [{"state": "open", "v": 1}, {"state": "open", "v": "n/a"}, {"state": "open", "v": 5}]}
    result = _extract("      - {name: v, help: h, each: items, labels: {state: state}, value: v, duplicates: sum}\n", document)
    assert _series(result) == ['v{state="open"} 6']
    assert result.errors == {"v": 1}


def test_duplicates_across_rules_keep_the_first_rules_series_and_are_counted() -> None:
    result = _extract("""\
      - {name: v, help: h, each: items, labels: {state: state}, value: v, duplicates: sum}
      - {name: v, help: h, each: items, labels: {state: state}, value: v, duplicates: last}
      - {name: v, help: h, each: items, labels: {state: state}, value: v}
""", ITEMS)
    assert _series(result) == ['v{state="open"} 13', 'v{state="done"} 2']
    # the second rule merges its own series first (not counted), then both its series are dropped; the
    # third rule's four series are all dropped
    assert result.duplicates == {"v": 2 + 4}


def test_a_sum_counter_and_last_stateset_are_valid_in_both_formats() -> None:
    result = _extract("""\
      - {name: done_total, help: h, type: counter, each: items, labels: {state: state}, value: v, duplicates: sum}
      - {name: phase, help: h, type: stateset, each: items, value: state, states: [open, done], duplicates: last}
""", {"items": ITEMS["items"][:2]})
    text = render_text(result.families.values())
    assert 'done_total_total' not in text and 'done_total{state="open"} 1\n' in text
    assert 'phase{phase="open"} 0\nphase{phase="done"} 1\n' in text  # the last element's state
    assert {f.name for f in parse_openmetrics(render_openmetrics(list(result.families.values())))} == {"done", "phase"}


async def test_probe_answers_counts_per_state_and_reports_no_duplicates(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/": ITEMS})
    client = await exporter("""
        modules:
          default:
            metrics:
              - {name: items, help: Items per state., each: items, labels: {state: state}, value: '`1`', duplicates: sum}
        """)
    series = parse(await (await client.get(f"/probe?target={up.url}/")).text())
    assert value(series, "items", state="open") == 3 and value(series, "items", state="done") == 1
    assert value(series, "probe_duplicate_series", metric="items") == 0



@pytest.mark.parametrize("policy", ["first", "last"])  # the second rule's series by its own chunk, or one by one (`last`)
def test_a_family_given_a_chunks_kept_label_texts_never_changes_them_for_the_next_probe(policy: str) -> None:
    """The first chunk's set of label texts becomes its family's keys as it is (kept across probes with the chunk):
    a series another rule adds to that family must go to a copy, or the next probe would take it for a duplicate."""
    module = make_spec(f"""modules:
  default:
    metrics:
      - {{name: v, help: h, each: items, labels: {{id: id}}, value: v}}
      - {{name: v, help: h, labels: {{id: extra}}, value: total, duplicates: {policy}}}
""").modules["default"]
    document = {"total": 9, "extra": "z", "items": [{"id": "a", "v": 1}, {"id": "b", "v": 2}]}
    for _ in range(3):  # the same label values each time: the kept chunk, its texts and their set, at every probe after the first
        result = extract(module, {"default": document}, PROBE)
        assert _series(result) == ['v{id="a"} 1', 'v{id="b"} 2', 'v{id="z"} 9'] and not any(result.duplicates.values())
