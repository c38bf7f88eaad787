"""Rules applied to parsed documents: conversions, fast paths and failure isolation."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import jmespath
import pytest
from conftest import make_spec
from hypothesis import given, settings
from hypothesis import strategies as st
from metrics_util import samples
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from jsonexporter.exposition import Family, render_openmetrics, render_text
from jsonexporter.extract import (
    MAX_MESSAGE,
    MAX_MESSAGES,
    ExtractionError,
    ProbeContext,
    extract,
    extract_async,
    label_text,
    sample_value,
    to_number,
    to_timestamp,
)
from jsonexporter.spec.expressions import compile_expression
from jsonexporter.trace import Trace

PROBE = ProbeContext("default", "http://t", {})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=False) | st.sampled_from(["a", "b", "1.5"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(json_values, st.sampled_from(["a", "a.b", "a.b.c", "b.a", "@", "c.c"]))
def test_fast_field_paths_agree_with_jmespath(document: Any, path: str) -> None:
    assert compile_expression(path).search(document) == jmespath.search(path, document)


def test_label_values_print_integers_exactly_and_booleans_as_words() -> None:
    assert [label_text(v) for v in (1655371, 1655371.0, 2.5, True, False, None, "x", [1, "a"])] == [
        "1655371", "1655371", "2.5", "true", "false", "", "x", '[1,"a"]']


def test_values_accept_numbers_booleans_numeric_strings_and_mapped_strings() -> None:
    mapping = {"UP": 1.0, "true": 5.0}
    assert to_number(3, {}) == 3.0 and to_number("2.5", {}) == 2.5
    assert to_number(True, {}) == 1.0 and to_number(False, {}) == 0.0 and to_number(True, mapping) == 5.0
    assert to_number("UP", mapping) == 1.0
    assert to_number(None, mapping) is None
    with pytest.raises(ExtractionError, match="not a number"):
        to_number("DOWN", mapping)
    with pytest.raises(ExtractionError, match="list"):
        to_number([1], {})


# Prometheus's number syntax (its parsers: Go's ParseFloat without hex floats and `_`); Python's float()
# takes many of NOT_NUMBERS too
PROMETHEUS_NUMBERS = {"12": 12.0, "-1.5": -1.5, "+.5": 0.5, "5.": 5.0, "007": 7.0, "1e3": 1000.0, "1E-3": 0.001, "-2.5e+2": -250.0,
                      "Inf": math.inf, "+inf": math.inf, "-Infinity": -math.inf, "iNfInItY": math.inf, "NaN": math.nan, "nan": math.nan}
NOT_NUMBERS = ["1_000", "\u0661\u0662", "\uff11\uff12", "1\u00b2", "0x1p3", "0x10", " 2", "2 ", "2\n", "\u20032", "", ".", "e5", "1e", "1e+",
               "+nan", "-NaN", "infin", "1,5", "1.5.1", "--1"]


@pytest.mark.parametrize("text", PROMETHEUS_NUMBERS)
def test_numbers_in_strings_are_read_as_prometheus_reads_them(text: str) -> None:
    number = to_number(text, {})
    assert number is not None
    assert (math.isnan(number) and math.isnan(PROMETHEUS_NUMBERS[text])) or number == PROMETHEUS_NUMBERS[text]


@pytest.mark.parametrize("text", NOT_NUMBERS)
def test_strings_that_prometheus_does_not_read_as_numbers_are_errors(text: str) -> None:
    with pytest.raises(ExtractionError, match="is not a number"):
        to_number(text, {})


@pytest.mark.parametrize("text", ["1e400", "-1e309", "1.7976931348623159e308"])
def test_numbers_beyond_a_64_bit_float_are_errors(text: str) -> None:
    with pytest.raises(ExtractionError, match="beyond the range of a 64-bit float"):
        to_number(text, {})


def test_only_the_series_with_a_number_prometheus_reads_is_written() -> None:
    spec = """
        modules:
          default:
            metrics:
              - {name: depth, help: h, each: items, value: v, labels: {id: id}}
        """
    document = {"items": [{"id": "plain", "v": "12"}, {"id": "underscore", "v": "1_000"}, {"id": "arabic", "v": "\u0661\u0662"},
                          {"id": "fullwidth", "v": "\uff11\uff12"}]}
    families, errors = _families(spec, document)
    assert samples(families["depth"]) == [("depth", {"id": "plain"}, 12.0)]
    assert errors == {"depth": 3}


@pytest.mark.parametrize("raw, scale, seconds", [
    (1_700_000_000, 1.0, 1.7e9), ("1700000000.5", 1.0, 1_700_000_000.5), (1.7e18, 0.001, 1.7e15), ("1.7e18", 0.001, 1.7e15),
    (0, 1.0, 0.0), (9.2e15, 1.0, 9.2e15), ("2024-05-01T10:00:00Z", 1.0, 1714557600.0)])
def test_timestamps_within_int64_milliseconds_are_kept(raw: Any, scale: float, seconds: float) -> None:
    assert to_timestamp(raw, scale) == seconds


@pytest.mark.parametrize("raw, scale", [(1.7e18, 1.0), ("1.7e18", 1.0), (9.3e15, 1.0), (2.0**63, 0.001), (1e300, 1.0)])
def test_timestamps_beyond_int64_milliseconds_are_errors(raw: Any, scale: float) -> None:
    with pytest.raises(ExtractionError, match="beyond what Prometheus stores"):
        to_timestamp(raw, scale)


@pytest.mark.parametrize("raw", [-1, -0.5, "-86400", -9.3e15, "1969-12-31T23:59:59Z"])
def test_timestamps_before_1970_are_errors(raw: Any) -> None:
    with pytest.raises(ExtractionError, match="before 1970"):
        to_timestamp(raw, 1.0)


@pytest.mark.parametrize("raw", [math.nan, math.inf, "NaN", "-Inf", "1_700000000", "\uff11\uff17\uff10\uff10"])
def test_timestamps_that_are_not_finite_numbers_are_errors(raw: Any) -> None:
    with pytest.raises(ExtractionError, match=r"not finite|neither a number"):
        to_timestamp(raw, 1.0)


def test_a_timestamp_prometheus_cannot_store_is_an_error_of_that_series_only() -> None:
    spec = """
        modules:
          default:
            metrics:
              - {name: depth, help: h, each: items, value: v, timestamp: ts, labels: {id: id}}
        """
    document = {"items": [{"id": "now", "v": 1, "ts": 1_700_000_000}, {"id": "far", "v": 2, "ts": 1.7e18}]}
    families, errors = _families(spec, document)
    assert render_text(list(families.values())).splitlines()[-1] == 'depth{id="now"} 1 1700000000000'
    assert errors == {"depth": 1}


def test_a_timestamp_error_names_the_timestamp_and_the_series_labels_not_a_label_failure() -> None:
    module = make_spec("""
        modules:
          default:
            metrics:
              - {name: depth, help: h, each: items, value: v, timestamp: ts, labels: {id: id}}
        """).modules["default"]
    result = extract(module, {"default": {"items": [{"id": "far", "v": 2, "ts": 1.7e18}]}}, PROBE)
    (message,) = result.messages
    assert message.startswith("metric depth: timestamp 1.7e+18 is beyond what Prometheus stores")
    assert message.endswith("(labels {'id': 'far'})")


@pytest.mark.parametrize("traced", [False, True], ids=["fast", "general"])
def test_a_negative_or_nan_counter_value_is_an_error_of_that_series(traced: bool) -> None:
    module = make_spec("""
        modules:
          default:
            metrics:
              - {name: jobs_total, help: h, type: counter, each: items, value: v, labels: {id: id}}
              - {name: done_total, help: h, type: counter, each: items, value: v, scale: -1, labels: {id: id}}
        """).modules["default"]
    # numbers only: the fast path writes such a column at once
    document = {"items": [{"id": "ok", "v": 3}, {"id": "negative", "v": -1}, {"id": "nan", "v": math.nan}, {"id": "zero", "v": 0}]}
    result = extract(module, {"default": document}, PROBE, trace=Trace() if traced else None)
    assert [s[1]["id"] for s in samples(result.families["jobs_total"])] == ["ok", "zero"]
    assert [s[1]["id"] for s in samples(result.families["done_total"])] == ["negative", "zero"]
    assert result.errors == {"jobs_total": 2, "done_total": 2}
    assert "counter value -1 is negative or NaN" in "\n".join(result.messages)
    assert to_number("NaN", {}) is not None
    with pytest.raises(ExtractionError, match="counter value NaN is negative or NaN"):
        sample_value("NaN", module.metrics[0], module.metrics[0].outputs[0].value)  # type: ignore[arg-type]
    list(parse_openmetrics(render_openmetrics(list(result.families.values()))))


def _families(spec_text: str, document: Any) -> tuple[dict[str, Family], dict[str, int]]:
    module = make_spec(spec_text).modules["default"]
    result = extract(module, {"default": document}, PROBE)
    return result.families, result.errors


def test_failing_rule_does_not_drop_the_others() -> None:
    families, errors = _families("""
        modules:
          default:
            metrics:
              - {name: broken, help: b, each: count, value: '@'}
              - {name: bad_function, help: b, value: 'length(count)'}
              - {name: good, help: g, value: count}
        """, {"count": 4})
    assert samples(families["good"]) == [("good", {}, 4.0)]
    assert "broken" not in families and "bad_function" not in families
    assert errors == {"broken": 1, "bad_function": 1, "good": 0}


def test_default_replaces_missing_values_without_counting_an_error() -> None:
    families, errors = _families("""
        modules:
          default:
            metrics:
              - {name: x, help: x, each: items, value: v, default: -1, labels: {id: id}}
        """, {"items": [{"id": "a"}, {"id": "b", "v": None}, {"id": "c", "v": 2}]})
    assert [value for *_, value in samples(families["x"])] == [-1.0, -1.0, 2.0]
    assert errors["x"] == 0


def test_unknown_state_gives_all_zero_and_an_error() -> None:
    families, errors = _families("""
        modules:
          default:
            metrics:
              - {name: health, help: h, type: stateset, value: status, states: [green, red]}
        """, {"status": "purple"})
    assert [(labels["health"], value) for _, labels, value in samples(families["health"])] == [("green", 0.0), ("red", 0.0)]
    assert errors["health"] == 1


@pytest.mark.parametrize("traced", [False, True])
def test_error_messages_are_bounded_whatever_they_quote(traced: bool) -> None:
    module = make_spec("""
        modules:
          default:
            metrics:
              - {name: health, help: h, type: stateset, each: items, value: status, states: [green], labels: {a: a, b: b}}
              - {name: v, help: v, each: items, value: v, labels: {a: a, b: b}}
        """).modules["default"]
    big = "x" * 100_000
    items = [{"status": big + str(i), "a": "y" * 900, "b": "z" * 900} for i in range(30)]
    result = extract(module, {"default": {"items": items}}, PROBE, trace=Trace() if traced else None)
    assert result.errors == {"health": 30, "v": 30}  # every error counted, MAX_MESSAGES kept
    assert len(result.messages) == MAX_MESSAGES
    assert all(len(m) <= MAX_MESSAGE + 40 for m in result.messages)
    assert result.messages[0].startswith("metric health: state 'xxx") and f"(first {MAX_MESSAGE} of " in result.messages[0]


def test_labels_and_series_are_sorted_and_module_labels_added() -> None:
    module = make_spec("""
        modules:
          default:
            labels: {zone: 'z-{target}'}
            metrics:
              - {name: x, help: x, value: v, labels: {b: "'2'", a: "'1'"}}
        """).modules["default"]
    from jsonexporter.probe import module_labels

    result = extract(module, {"default": {"v": 1}}, PROBE, module_labels(module, {"target": "t", "module": "default"}))
    assert render_text([result.families["x"]]).endswith('\nx{a="1",b="2",zone="z-t"} 1\n')


def test_counter_samples_get_total_suffix() -> None:
    families, _ = _families("modules: {default: {metrics: [{name: requests, help: r, type: counter, value: v}]}}", {"v": 9})
    assert samples(families["requests"])[0][0] == "requests_total"


def test_values_entries_carry_their_own_help() -> None:
    families, _ = _families("""
        modules:
          default:
            metrics:
              - name: node
                help: Node facts
                values: {up: {value: up, help: Whether the node is up}, load: load}
        """, {"up": True, "load": 0.5})
    assert families["node_up"].help == "Whether the node is up"
    assert families["node_load"].help == "Node facts"


def test_declared_states_are_compared_as_label_text() -> None:
    families, errors = _families("""
        modules:
          default:
            metrics:
              - {name: mode, help: m, type: stateset, value: m, states: [1.0, 2, true]}
        """, {"m": 1})
    assert [(labels["mode"], value) for _, labels, value in samples(families["mode"])] == [("1", 1.0), ("2", 0.0), ("true", 0.0)]
    assert errors["mode"] == 0


def test_lone_surrogates_in_info_labels_are_written_as_their_escapes() -> None:
    """Every text written of an answer's lone surrogates (an info label, an object label) is valid UTF-8; a
    spec's own lone surrogate (a help text, a state) is refused by check (yamlload, test_check)."""
    families, errors = _families(r"""
        modules:
          default:
            metrics:
              - {name: about_info, help: a, type: info, labels: {v: m, all: "@"}}
        """, {"m": "\ud800", "\udfffk": 1})
    text = render_openmetrics(list(families.values()))
    text.encode("utf-8")
    assert errors["about_info"] == 0
    assert [labels for _, labels, _ in samples(families["about_info"])] == [{"v": "\\ud800", "all": '{"m":"\\ud800","\\udfffk":1}'}]


ROOT_EXPRESSIONS = ["v", "a.b", "length(items)", "items[0].id", "lower(v)", "to_number(v)", "items[?v].v", "max(items[*].v)"]
root_documents = st.fixed_dictionaries({"v": json_values, "a": json_values,
                                        "items": st.lists(st.dictionaries(st.sampled_from(["id", "v"]), json_values), max_size=4)})


@settings(max_examples=300, deadline=None)
@given(root_documents, st.sampled_from(ROOT_EXPRESSIONS), st.sampled_from(ROOT_EXPRESSIONS), st.sampled_from(["items", ["items", "@"]]))
def test_an_expression_of_the_whole_document_gives_each_element_what_it_gives_read_for_that_element(
        document: Any, label: str, value: str, each: Any) -> None:
    """`$root.…` is searched once per rule (nothing of the element in it): what it gives, or how it fails, is what
    `$parent.root.…` (the same, read through the element's context) gives each element."""
    def extraction(context: str) -> tuple[str, dict[str, int], list[str]]:
        spec = make_spec(f"""
            modules:
              default:
                metrics:
                  - {{name: m, help: h, each: {each!r}, labels: {{l: '{context}.{label}', i: $index}}, value: '{context}.{value}'}}
            """)
        result = extract(spec.modules["default"], {"default": document}, PROBE)
        return render_text(list(result.families.values())), result.errors, [m.replace(context, "$") for m in result.messages]

    deep = "$parent.parent.root" if isinstance(each, list) else "$parent.root"
    assert extraction("$root") == extraction(deep)


async def test_a_value_of_the_whole_document_is_searched_once_per_rule_not_per_element() -> None:
    # a search of the whole document takes a fifth of a second, for each of 10,000 elements: more than half an
    # hour if searched per element, beyond the deadline on a machine many times faster than these
    document = {"few": [{"id": i} for i in range(10_000)], "many": [{"v": i % 200} for i in range(100_000)]}
    module = make_spec("""
        modules:
          default:
            metrics: [{name: bigger, help: b, each: few, value: '$root.length(many[?v > `100`])', labels: {id: id, i: $index}}]
        """).modules["default"]
    result = await extract_async(module, {"default": document}, PROBE, deadline=asyncio.get_running_loop().time() + 60)
    assert samples(result.families["bigger"])[:1] == [("bigger", {"id": "0", "i": "0"}, 49_500.0)]
    assert len(result.families["bigger"].keys) == 10_000


@pytest.mark.parametrize(("source", "once"), [
    ("$root.a", True), ("$root.length(items[?v])", True), ("$target", True), ("$module", True), ("$params.region", True),
    ("$item.a", False), ("$index", False), ("$key", False), ("$parent.root.a", False), ("$node.item", False), ("a", False),
])
def test_only_expressions_of_what_every_element_shares_are_searched_once_per_rule(source: str, once: bool) -> None:
    assert compile_expression(source, frozenset({"node"})).per_probe is once
