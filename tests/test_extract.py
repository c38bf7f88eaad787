"""Rules applied to parsed documents: conversions, fast paths and failure isolation."""

from __future__ import annotations

from typing import Any

import jmespath
import pytest
from conftest import make_spec
from hypothesis import given, settings
from hypothesis import strategies as st
from metrics_util import samples

from jsonexporter.exposition import Family, render_text
from jsonexporter.extract import ExtractionError, ProbeContext, extract, label_text, to_number
from jsonexporter.spec.expressions import compile_expression

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
    assert to_number(3, {}) == 3.0 and to_number(" 2.5 ", {}) == 2.5
    assert to_number(True, {}) == 1.0 and to_number(False, {}) == 0.0 and to_number(True, mapping) == 5.0
    assert to_number("UP", mapping) == 1.0
    assert to_number(None, mapping) is None
    with pytest.raises(ExtractionError, match="not a number"):
        to_number("DOWN", mapping)
    with pytest.raises(ExtractionError, match="list"):
        to_number([1], {})


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
