"""Every fast path against the general path it replaces: same output for the same spec and payload.

- extraction: `extract` takes the fast path for rules without `$`, timestamps, statesets, summaries or
  a histogram's `duplicates: last` (histograms, `duplicates: last` and `sum`, function calls by columns
  with their results kept across probes included), and the general path when traced; both must give the
  same families, errors, duplicates, messages, also across the fast path's chunks of elements (columns
  at once, or one by one) and after other answers (what calls keep across probes);
- the writer: values formatted as the reference formatter (and the whole output against
  prometheus_client through tests/test_exposition.py);
- the sliced forms (`extract_async`, `encode_async`) against the plain ones, and their turns;
- JSON parsing with orjson against the json module.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import re
import tracemalloc
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import make_spec
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from metrics_util import parse, samples, value
from prometheus_client.utils import floatToGoString

from jsonexporter import extract as extract_module
from jsonexporter.exposition import Family, encode, encode_async, format_value, render_openmetrics, render_text
from jsonexporter.extract import (
    _KNOWN_CHARACTERS,
    _KNOWN_ELEMENTS,
    _KNOWN_LINE_BYTES,
    _MAX_PLANS,
    BodySizeLimitExceeded,
    Bounds,
    Extraction,
    ProbeContext,
    _fast_plan,
    _FastPlan,
    _float_texts,
    _KnownTexts,
    _scaled,
    _scaled_all,
    _shared_fields,
    extract,
    extract_async,
)
from jsonexporter.probe import _SelfPlan, module_labels, self_families
from jsonexporter.slices import EXTRACT, PARSE, RENDER, turn
from jsonexporter.spec import objects
from jsonexporter.spec.model import Module
from jsonexporter.spec.objects import Fields, attribute
from jsonexporter.spec.projection import FULL, STRUCT_FIELDS
from jsonexporter.trace import Trace
from jsonexporter.upstream.cache import parsed_size
from jsonexporter.upstream.fetch import ORJSON_MAX_BYTES, _parse_json

PROBE = ProbeContext("default", "http://t", {"region": "eu"})
VALUES = {"target": "http://t", "module": "default"}

scalars = (st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False)
           | st.sampled_from(["a", "b", "UP", "1.5", ' 2 ', 'q"uote', "back\\slash", "new\nline", "cr\r\nlf\rx", "é", "",
                              "\ud800x", "\udbff\udc00", "\\ud800x"])  # lone surrogates (the json module lets them through), an escape's text
           # numbers in strings as Prometheus reads them, and what only Python's float() would read
           | st.sampled_from(["-3", ".5e1", "Inf", "-infinity", "NaN", "1e400", "1_000", "\u0661\u0662", "\uff11\uff12", "+nan", "0x1p3"]))
_BUCKET_KEYS = ["0.1", "1", "+Inf"]
_BAD_NUMBERS = st.sampled_from([-1, 2.5, "3", "x", None, True, 10**16, 1e300, float("nan")])


def _histogram_items(clean: bool) -> st.SearchStrategy[dict[str, Any]]:
    """Elements with a histogram's buckets (`b`, or `x` and `y` for a multi-select hash), sum `s` and count
    `c`: all of the common case (the columns at once) when `clean` (counts that do not decrease, `c` the
    +Inf one), else some that are not."""
    ids = st.sampled_from(["a", "b", "c", "d"])
    if clean:
        # 0.07 * 0.001 is not 7e-05; integers about 2**53, where a float's digits stop being the integer's; 17 digits
        sums = st.integers(0, 9) | st.sampled_from([0.07, 0.13, 2.01, 700, 0.25, 1e-07, 2**53 - 1, 2**53 + 1, 0.1 + 0.2, 123456.78901234567, 1e16])
        return st.tuples(ids, st.lists(st.integers(0, 4), min_size=3, max_size=3).map(sorted), sums).map(
            lambda t: {"id": t[0], "b": dict(zip(_BUCKET_KEYS, t[1], strict=True)), "x": t[1][1], "y": t[1][2], "c": t[1][2], "s": t[2]})
    count = st.integers(0, 4) | _BAD_NUMBERS
    buckets = (st.fixed_dictionaries({key: count for key in _BUCKET_KEYS})
               | st.dictionaries(st.sampled_from(["0.1", "1", "1.0", "+Inf", "-1", "x", "NaN"]), count, max_size=3)
               | st.none() | st.lists(st.tuples(st.sampled_from([0.5, "+Inf"]), count).map(list), max_size=2))
    return st.fixed_dictionaries({"id": ids, "b": buckets, "x": count, "y": count, "s": st.floats() | _BAD_NUMBERS,
                                  "c": st.integers(0, 12) | _BAD_NUMBERS})


json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "b", "1x"]), inner, max_size=2),
                           max_leaves=6)
# field names that are not Python identifiers, or name Python attributes (a projection's objects hold them: spec/objects.py)
ODD_NAMES = ["class", "1x", "a-b", "__init__", "get", "a.b", "é", "j_a"]
items = st.dictionaries(st.sampled_from(["id", "a", "v", "w", "tags", "sub", *ODD_NAMES]), json_values, max_size=6)
elements = st.one_of(items, items, items, scalars)  # mostly objects, sometimes not
documents = st.fixed_dictionaries({
    "items": st.lists(elements, max_size=8),
    "byname": st.dictionaries(st.sampled_from(["x", "y", "z"]), items, max_size=3),
    "v": json_values,
    "buckets": st.one_of(st.dictionaries(st.sampled_from(["0.1", "1", "+Inf", "x"]), st.integers(0, 12) | st.sampled_from(["3", None]), max_size=3),
                         st.lists(st.tuples(st.sampled_from([0.5, 2, "+Inf"]), st.integers(0, 12)).map(list), max_size=3)),
    # only numbers: the fast path's columns at once, negative and NaN counts among them
    "counts": st.lists(st.fixed_dictionaries({"id": st.sampled_from(["a", "b", "c", "d"]), "v": st.integers(-3, 3) | st.floats(),
                                              "w": st.integers(-3, 3)}), max_size=6),
    "hists": st.booleans().flatmap(lambda clean: st.lists(_histogram_items(clean), max_size=6)),
})

LABEL_EXPRESSIONS = ["id", "a", "a.b", "tags[0]", "'const'", "length(tags)", "sub", "v", "lower(a)", "regex_extract(id, '(\\d+)')",
                     "{k: id, w: w}", "regex_replace(id, '^a', 'x-')", "upper(trim(id))", "lower(to_string(v))", "parse_bytes(a)",
                     "class", '"a-b"', '"a.b"', "sub.\"1x\"", "lower(\"é\")"]
VALUE_EXPRESSIONS = ["v", "w", "a.b", "@", "length(tags)", "v || w", "sub.a", "parse_bytes(v)", "divide(v, w)", "regex_match(a, '^[ab]')",
                     "parse_duration(a)", "to_number(id)", '"1x"', "__init__", "get", "j_a", "sub.b || \"a-b\""]
HISTOGRAM_BUCKETS = ["b", "sub", '{"0.5": x, "+Inf": y}', '{"1": x, "2": y}', '{"5": x, "5.0": y}', '{"+Inf": c}']
EACHES = [None, "items", "byname", ["items", "tags"], "items[?v]", "items[*].{id: id, v: w, a: a}", "byname.*", "counts",
          "item", [{"path": "item", "optional": True}], ["items", {"path": "tags", "optional": True}], [{"path": "byname", "optional": True}, "sub"]]


@st.composite
def modules(draw: Any) -> dict[str, Any]:
    """A module whose rules take the fast path, with sometimes a general one (`$index`) among them;
    two rules may feed one family (same type and label names), for duplicates across rules."""
    metrics = []
    shapes: list[tuple[str, str, list[str]]] = []  # name, type, label names
    for i in range(draw(st.integers(1, 4))):
        mtype = draw(st.sampled_from(["gauge", "counter", "untyped", "info"]))
        names = draw(st.lists(st.sampled_from(["id", "zz", "b", "a", "m"]), unique=True, max_size=3))
        if shapes and draw(st.booleans()):
            name, mtype, names = shapes[0]  # another rule for the family of the first
        else:
            name = f"m{i}_info" if mtype == "info" else f"m{i}"
            shapes.append((name, mtype, names))
        labels = {n: draw(st.sampled_from(LABEL_EXPRESSIONS)) for n in names}
        if names and draw(st.integers(0, 5)) == 0:
            labels[names[0]] = "$index"  # the general path, in the same module
        rule: dict[str, Any] = {"name": name, "help": "h", "type": mtype, "labels": labels}
        each = draw(st.sampled_from([*EACHES, "counts", "counts"]))  # "counts" more often: the columns at once
        if each is not None:
            rule["each"] = each
        if mtype != "info":
            if draw(st.booleans()):
                rule["value"] = draw(st.sampled_from(VALUE_EXPRESSIONS))
            else:
                rule["values"] = {"x": draw(st.sampled_from(VALUE_EXPRESSIONS)), "y": draw(st.sampled_from(VALUE_EXPRESSIONS))}
            if draw(st.booleans()):
                rule["value_map"] = {"UP": 1, "true": 5, "a": -2.5}
            if draw(st.booleans()):
                rule["default"] = -1
            if draw(st.booleans()):
                rule["scale"] = draw(st.sampled_from([0.001, 0.5, 3]))
        if draw(st.booleans()):  # its own series merged or not
            rule["duplicates"] = draw(st.sampled_from(["first", "last"] if mtype == "info" else ["first", "last", "sum"]))
        metrics.append(rule)
    if draw(st.integers(0, 3)) == 0:  # a histogram over other elements, the general path's only (`$root`, `last`)
        metrics.append({"name": "h_seconds", "help": "h", "type": "histogram", "each": draw(st.sampled_from([None, "byname", "items"])) or "@",
                        "labels": {"id": "id"}, "buckets": draw(st.sampled_from(["buckets", "$root.buckets", "sub"])),
                        "sum": draw(st.sampled_from(["v", "`1.5`"])), "count": draw(st.sampled_from(["w", "`9`"])),
                        "cumulative": draw(st.booleans()), "duplicates": draw(st.sampled_from(["first", "last"]))})
    histograms: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 2))):  # histograms by columns; the second may feed the first's family
        rule = {"name": f"hh{len(histograms)}_seconds", "help": "h", "type": "histogram", "each": "hists",
                "labels": draw(st.sampled_from([{}, {"id": "id"}, {"id": "id", "zz": "lower(id)"}])),
                "buckets": draw(st.sampled_from(HISTOGRAM_BUCKETS)), "sum": draw(st.sampled_from(["s", "`1.5`"])), "cumulative": draw(st.booleans())}
        if histograms and draw(st.booleans()):
            rule.update(name=histograms[0]["name"], labels=histograms[0]["labels"])  # duplicates across rules
        for key, choices in (("count", [None, None, "c", "`9`"]), ("scale", [None, 0.001, 0.1, 0.3, 1000])):
            if (choice := draw(st.sampled_from(choices))) is not None:
                rule[key] = choice
        histograms.append(rule)
    metrics.extend(histograms)
    module: dict[str, Any] = {"metrics": metrics}
    if draw(st.booleans()):
        # no lone surrogate: the spec refuses one (yamlload), its answers' texts are written escaped (scalars above)
        module["labels"] = {"c": "c-{target}", "zone": draw(st.sampled_from(["z", '50%', 'q"%s\\back\nline']))}
    return module


def _both_paths(module: Module, document: Any, before: Any = None) -> tuple[Extraction, Extraction]:
    """The fast and the general path's extraction of `document`; the fast path after extracting
    `before` first, when given (what function calls keep across probes)."""
    static = module_labels(module, VALUES)
    if before is not None:
        extract(module, {"default": before}, PROBE, static)
    fast = extract(module, {"default": document}, PROBE, static)
    general = extract(module, {"default": document}, PROBE, static, trace=Trace())  # a trace takes the general path
    return fast, general


def _assert_same(fast: Extraction, general: Extraction) -> None:
    assert {k: (render_text([f]), f.keys) for k, f in fast.families.items()} == {k: (render_text([f]), f.keys) for k, f in general.families.items()}
    assert [(f.name, f.type, f.help) for f in fast.families.values()] == [(f.name, f.type, f.help) for f in general.families.values()]
    assert (fast.errors, fast.duplicates, fast.messages) == (general.errors, general.duplicates, general.messages)
    assert fast.uncounted == general.uncounted  # what series_limit counts beside the families' series
    families_fast, families_general = list(fast.families.values()), list(general.families.values())
    assert render_text(families_fast) == render_text(families_general)
    assert render_openmetrics(families_fast) == render_openmetrics(families_general)
    render_openmetrics(families_fast).encode("utf-8")  # strict: no lone surrogate written


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modules(), documents)
def test_fast_extraction_gives_what_the_general_path_gives(module_spec: dict[str, Any], document: Any) -> None:
    spec = make_spec(json.dumps({"modules": {"default": module_spec}}))
    _assert_same(*_both_paths(spec.modules["default"], document))


@st.composite
def merging_modules(draw: Any) -> dict[str, Any]:
    """Rules whose series merge: `duplicates: last` or `sum` over elements with repeated labels (the
    columns at once, or one by one where a value fails), histograms by columns, and rules feeding
    one family."""
    metrics: list[dict[str, Any]] = []
    for i in range(draw(st.integers(1, 3))):
        mtype = draw(st.sampled_from(["gauge", "counter"]))
        rule: dict[str, Any] = {"name": "d" if i and draw(st.booleans()) else f"d{i}", "help": "h", "type": mtype, "each": "counts",
                                "labels": {"id": draw(st.sampled_from(["id", "'const'", "upper(id)", "regex_replace(id, '^[ab]', 'x')"]))},
                                "value": draw(st.sampled_from(["v", "w", "to_number(id)"])),
                                "duplicates": draw(st.sampled_from(["first", "last", "sum"]))}
        if metrics and rule["name"] == "d":  # another rule for the family of the first
            rule["type"] = metrics[0]["type"]
            metrics[0]["name"] = "d"
        if draw(st.booleans()):
            rule["scale"] = draw(st.sampled_from([0.001, 0.1, 3]))
        metrics.append(rule)
    metrics.extend(draw(modules())["metrics"][-2:])
    return {"metrics": metrics}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(merging_modules(), documents)
def test_merged_series_by_columns_give_what_the_general_path_gives(module_spec: dict[str, Any], document: Any) -> None:
    spec = make_spec(json.dumps({"modules": {"default": module_spec}}))
    _assert_same(*_both_paths(spec.modules["default"], document))
    objects_only = {**document, "items": [e if isinstance(e, dict) else None for e in document["items"]]}
    if not _beyond_64_bits_in_a_value(objects_only, 0, dict):  # and parsed for the rules into objects
        _assert_objects_read_as_dicts(module_spec, objects_only)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.integers(0, 5), min_size=3, max_size=3).map(sorted), min_size=1, max_size=6),
       st.integers(0, 5), st.integers(0, 2), st.sampled_from([-1, 2.5, 2.0, True, None, "3", 10**16, 2**64, -0.0, 0, 4]),
       st.booleans(), st.sampled_from([None, 0.001]))
def test_bucket_counts_by_columns_are_told_apart_as_the_element_loop_tells_them(counts: list[list[int]], at: int, bucket: int,
                                                                                odd: Any, cumulative: bool, scale: float | None) -> None:
    """Histograms whose buckets are objects of the same keys, one count of one element replaced by a value that is not
    a count (negative, a fraction, a bool, null, text, beyond EXACT_LIMIT or 64 bits) or is one: the columns at once
    give what the element loop gives, its error where it has one."""
    items = [{"id": f"i{i}", "b": dict(zip(_BUCKET_KEYS, row, strict=True)), "s": 0.25} for i, row in enumerate(counts)]
    items[at % len(items)]["b"][_BUCKET_KEYS[bucket]] = odd
    rule: dict[str, Any] = {"name": "h_seconds", "help": "h", "type": "histogram", "each": "hists", "labels": {"id": "id"},
                            "buckets": "b", "sum": "s", "cumulative": cumulative}
    if scale is not None:
        rule["scale"] = scale
    spec = make_spec(json.dumps({"modules": {"default": {"metrics": [rule]}}}))
    _assert_same(*_both_paths(spec.modules["default"], {"hists": items}))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(-3, 2**60) | st.floats(allow_nan=False)
                | st.sampled_from([-0.0, 0.0, 2**53 - 1, 2**53, 5e-324, 1e16, 0.1 + 0.2,
                                   5258986265376043509, 7404550121351207166]),  # scaled from their digits, not their floats': another float
                min_size=1, max_size=8),
       st.sampled_from([1.0, 0.001, 0.1, 1000, 0.3, 1e-25, 1e25, 1e-20, 1e20]))
def test_sums_read_from_their_text_are_the_floats_scaled_of_each(total: list[Any], scale: float) -> None:
    """A histogram's sums scaled from orjson's text of the answer's values (`_written_sums`) are what `_scaled_all` makes
    of `float()` of each, to the bit, whenever it takes them: non-negative numbers in positional form, integers below
    2**53; it leaves every other column to the values' own checks (None)."""
    found = extract_module._written_sums(total, scale)
    if found is None:
        return
    assert all(type(v) in (int, float) and v >= 0 and not (type(v) is float and math.copysign(1, v) < 0) for v in total)
    expected = extract_module._scaled_all(list(map(float, total)), scale)
    assert [(type(v), repr(v)) for v in found] == [(type(v), repr(v)) for v in expected]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from([0.1, 0.2, 0.3, 1e16, -1e16, 1.0, -0.0, 0.0, 3, 2**53 + 1, 1e308])),
                min_size=1, max_size=40), st.integers(1, 20))
def test_a_sum_of_few_label_sets_adds_in_the_order_of_the_elements_as_the_general_path(pairs: list[tuple[str, float]], more: int) -> None:
    """`duplicates: sum` by columns against the general path's `before + value` element by element: floats whose
    sum depends on the order (1e16 + 1.0 - 1e16), the sign of zero, integers beyond a float's 53 bits, an overflow
    to +Inf; few label texts and more."""
    items = [{"id": label, "v": v} for label, v in pairs] + [{"id": f"x{i % more}", "v": 0.1} for i in range(more * 2)]
    spec = make_spec(json.dumps({"modules": {"default": {"metrics": [
        {"name": "s", "help": "h", "each": "items", "labels": {"id": "id"}, "value": "v", "duplicates": "sum"},
        {"name": "t", "help": "h", "each": "items", "labels": {"id": "id"}, "values": {"one": "v", "two": "`2`"}, "duplicates": "sum"}]}}}))
    fast, general = _both_paths(spec.modules["default"], {"items": items})
    _assert_same(fast, general)
    assert fast.families["s"].keys  # the fast path answered: the comparison is of the two


# Columns of one kind, as orjson's text of them tells the kinds (extract._written_texts): values at the edges of
# what it writes as format_value does (integral fractions, below 1e-4 where orjson's form is positional and repr's
# not, "0.0000" inside a larger one, 1e6 and beyond; integers about EXACT_LIMIT, beyond int64 and beyond 64 bits),
# sometimes one of another kind among them
_COLUMN_KINDS = [
    st.sampled_from([0.5, 12.25, 10.00001, 0.00005, 0.0001, 0.5e-4, -0.5, 2.0, -0.0, 999999.5, 1000000.5, -1234567.5, 0.1 + 0.2, 1e-7, 2.5e16]),
    st.sampled_from([0, 7, -3, 10**15 - 1, 10**15, -(10**15 - 1), -(10**15), 2**63, 2**64, 12345678901]),
    st.booleans(),
]
_ODD_ONES = st.sampled_from([1, -(10**17), 1.5, True, None, "2", float("nan"), float("inf"), [1], {"a": 1}])


@st.composite
def number_columns(draw: Any) -> tuple[dict[str, Any], Any]:
    """A rule reading numbers by columns, and a document of elements whose values are of one kind, or nearly."""
    kind = draw(st.sampled_from(_COLUMN_KINDS))
    values = draw(st.lists(kind, min_size=1, max_size=8))
    if draw(st.integers(0, 3)) == 0:
        values.insert(draw(st.integers(0, len(values))), draw(_ODD_ONES))
    rule: dict[str, Any] = {"name": "n", "help": "h", "type": draw(st.sampled_from(["gauge", "counter", "untyped"])), "each": "items",
                            "labels": {"id": "id"}, "values": {"v": "v", "w": "w"}}
    for key, choices in (("scale", [0.001, 3]), ("value_map", [{"true": 5, "false": -1}]), ("default", [-1])):
        if draw(st.integers(0, 3)) == 0:
            rule[key] = draw(st.sampled_from(choices))
    document = {"items": [{"id": f"i{i}", "v": v, "w": values[-1 - i]} for i, v in enumerate(values)]}
    return {"metrics": [rule]}, document


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(number_columns())
def test_number_columns_told_by_their_text_give_what_the_general_path_gives(case: tuple[dict[str, Any], Any]) -> None:
    module_spec, document = case
    spec = make_spec(json.dumps({"modules": {"default": module_spec}}))
    _assert_same(*_both_paths(spec.modules["default"], document))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modules(), documents, documents)
def test_fast_extraction_after_other_answers_gives_what_the_general_path_gives(module_spec: dict[str, Any], before: Any, document: Any) -> None:
    """Function calls keep their results across probes: an answer after another one (with the same
    label values, or others) gives what the general path gives it."""
    spec = make_spec(json.dumps({"modules": {"default": module_spec}}))
    module = spec.modules["default"]
    _assert_same(*_both_paths(module, document, before))
    _assert_same(*_both_paths(module, document, document))


def _many(document: Any, count: int, period: int, renamed: int = 0) -> Any:
    """`document` with `count` elements in its lists, mostly of distinct ids (repeated every `period`);
    with `renamed`, every renamed-th element from the 600th on gets other labels."""
    many = {}
    for field, default in (("items", {"id": "x", "v": 1}), ("hists", {"id": "x", "b": {"+Inf": 1}, "s": 1, "c": 1})):
        base = document[field] or [default]
        elements = []
        for i in range(count):
            element = base[i % len(base)]
            if type(element) is dict and i % period:  # a new id: mostly distinct labels, repeated every `period`
                element = {**element, "id": f"{element.get('id')}-{i // period}"}
            if type(element) is dict and renamed and i >= 600 and i % renamed == 0:
                element = {**element, "id": f"renamed-{i % 3}", "a": f"A{i % 2}"}
            elements.append(element)
        many[field] = elements
    return {**document, **many}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(modules(), documents, st.integers(900, 2600), st.integers(1, 50))
def test_fast_extraction_across_chunks_gives_what_the_general_path_gives(module_spec: dict[str, Any], document: Any, count: int, period: int) -> None:
    """Thousands of elements: several chunks, some clean (columns at once), some not (a failing
    or missing value, a duplicate), with duplicates across chunks."""
    spec = make_spec(json.dumps({"modules": {"default": module_spec}}))
    many = _many(document, count, period)
    _assert_same(*_both_paths(spec.modules["default"], many))
    objects_only = {**many, "items": [e if isinstance(e, dict) else None for e in many["items"]]}
    if not _beyond_64_bits_in_a_value(objects_only, 0, dict):  # and parsed for the rules into objects, by chunks too
        _assert_objects_read_as_dicts(module_spec, objects_only)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(modules(), documents, st.integers(900, 2600), st.integers(1, 50), st.integers(1, 700), st.booleans())
def test_fast_extraction_across_chunks_after_an_answer_gives_what_the_general_path_gives(
        module_spec: dict[str, Any], document: Any, count: int, period: int, renamed: int, longer: bool) -> None:
    """The label texts of the chunks of an answer are kept for the next one: the same answer again,
    one with some labels changed (in some chunks, not in others), or with more elements, gives what
    the general path gives it."""
    spec = make_spec(json.dumps({"modules": {"default": module_spec}}))
    module = spec.modules["default"]
    before = _many(document, count, period)
    _assert_same(*_both_paths(module, before, before))
    after = _many(document, count + 700 * longer, period, renamed)
    _assert_same(*_both_paths(module, after, before))
    before, after = ({**answer, "items": [e if isinstance(e, dict) else None for e in answer["items"]]} for answer in (before, after))
    if not any(_beyond_64_bits_in_a_value(answer, 0, dict) for answer in (before, after)):  # and parsed for the rules into objects
        _assert_objects_read_as_dicts(module_spec, after, before=before)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(modules(), documents, st.integers(900, 2600), st.integers(1, 50), st.integers(1, 700), st.sampled_from([0.0, 1e-6, 2e-5, 1e-4]),
       st.dictionaries(st.sampled_from(["id", "zz", "b"]), st.sampled_from([e for e in LABEL_EXPRESSIONS if "(" not in e]), max_size=2))
def test_fast_extraction_in_chunks_cut_by_time_gives_what_the_general_path_gives(
        module_spec: dict[str, Any], document: Any, count: int, period: int, renamed: int, seconds: float, labels: dict[str, str]) -> None:
    """Chunks sized by the time the last one took (each rule its own, ending where the first rule of the
    iteration cut or before): with a budget of none (one element a chunk) or of microseconds (chunks
    of every size, not the same from one probe to the next), the same output, and after another answer
    (the label texts kept across probes by their chunk's first element). Among the rules, two with the same
    labels: the second, whose value the interpreter walks a list for, starts each probe with a few elements
    (_FIRST_CHUNK), in the chunks the first cut, and takes its label texts from the first's."""
    pair = [{"name": "leader", "help": "h", "each": "items", "labels": labels, "value": "`1`"},
            {"name": "follower", "help": "h", "each": "items", "labels": labels, "value": "length(tags[*] || `[]`)"}]
    spec = make_spec(json.dumps({"modules": {"default": {**module_spec, "metrics": [*module_spec["metrics"], *pair]}}}))
    module = spec.modules["default"]
    before, after = (_objects_only(_many(document, count, period, changed)) for changed in (0, renamed))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(extract_module, "_CHUNK_SECONDS", seconds)
        _assert_same(*_both_paths(module, before))
        _assert_same(*_both_paths(module, after, before))


def _objects_only(document: Any) -> Any:
    """The document with every element of `items` an object: the label texts of each chunk by columns."""
    return {**document, "items": [e if isinstance(e, dict) else {"id": "x"} for e in document["items"]]}


def test_bench_spec_takes_the_fast_path_with_the_same_output() -> None:
    module = make_spec((Path(__file__).parent.parent / "bench" / "spec.yml").read_text()).modules["default"]
    assert all(_fast_plan(metric, ()) is not None for metric in module.metrics)
    document = {"count": 3, "items": [
        {"id": f"svc-{i}", "region": "eu", "status": "ok", "version": "1.0", "healthy": i != 1, "requests_total": 10**9 + i,
         "errors_total": i, "latency_ms": 0.5 * i, "cpu_ratio": 0.25, "memory_bytes": 9_999_999_999} for i in range(3)]}
    fast, general = _both_paths(module, document)
    _assert_same(fast, general)
    assert len(samples(fast.families["bench_item_requests_total"])) == 3


def _labelled_by_target() -> Module:
    return make_spec("""
        modules:
          default:
            labels: {instance: "{target}"}
            metrics:
              - {name: a, help: h, each: items, value: v, labels: {id: id}}
        """).modules["default"]


def test_module_labels_of_each_probe_reach_its_series_through_the_kept_plans() -> None:
    """A rule's plan is kept with its module between probes (Module.fast_plans), for each set of module labels."""
    module = _labelled_by_target()
    for target in ("http://one", "http://two", "http://one"):
        result = extract(module, {"default": {"items": [{"id": "x", "v": 1}]}}, PROBE, module_labels(module, {"target": target, "module": "default"}))
        assert samples(result.families["a"]) == [("a", {"id": "x", "instance": target}, 1.0)]


def test_the_plans_kept_for_module_labels_made_of_targets_are_bounded() -> None:
    module = _labelled_by_target()
    for i in range(_MAX_PLANS + 10):
        extract(module, {"default": {"items": [{"id": "x", "v": 1}]}}, PROBE, module_labels(module, {"target": f"http://t{i}", "module": "default"}))
        assert 0 < len(module.fast_plans[_FastPlan]) <= _MAX_PLANS
    assert len(module.fast_plans) < 10  # the rules' plans in one entry, beside what else the module keeps


def test_what_a_module_keeps_across_probes_survives_when_its_rules_plans_are_evicted() -> None:
    """The plans of module labels made of targets fill up and are evicted: the label texts kept across probes, the
    fields the rules share and the probe's own metrics' plans stay (they were emptied with the plans)."""
    module = _labelled_by_target()
    document = {"default": {"items": [{"id": "x", "v": 1}]}}
    extract(module, document, PROBE)
    self_families(module, Extraction(), [], True, None)
    kept = {key: module.fast_plans[key] for key in (_KnownTexts, _shared_fields, _SelfPlan)}
    for i in range(_MAX_PLANS + 10):
        result = extract(module, document, PROBE, module_labels(module, {"target": f"http://t{i}", "module": "default"}))
        assert samples(result.families["a"]) == [("a", {"id": "x", "instance": f"http://t{i}"}, 1.0)]
    assert all(module.fast_plans[key] is state for key, state in kept.items())
    assert module.fast_plans[_KnownTexts].chunks


@pytest.mark.parametrize(("elements", "length"), [(_KNOWN_ELEMENTS // 3, 1), (600, _KNOWN_CHARACTERS // 3000)])
def test_the_label_texts_kept_across_probes_are_bounded(elements: int, length: int) -> None:
    """Answers of four targets (each its own texts, by its module label), each beyond a third of the
    elements or characters a module keeps: each is still extracted right, one's texts replacing the others'."""
    module = _labelled_by_target()
    for target in ("http://one", "http://two", "http://three", "http://four", "http://one"):
        items = [{"id": f"{target}-{i}".ljust(length, "x"), "v": i} for i in range(elements)]
        result = extract(module, {"default": {"items": items}}, PROBE, module_labels(module, {"target": target, "module": "default"}))
        assert [labels["id"] for _, labels, _ in samples(result.families["a"])] == [item["id"] for item in items]
        known = module.fast_plans[_KnownTexts]
        assert known.elements <= _KNOWN_ELEMENTS and known.characters <= _KNOWN_CHARACTERS and known.line_bytes <= _KNOWN_LINE_BYTES
        assert known.chunks
        kept = [entry for by_start in known.chunks.values() for entry in by_start.values()]
        assert known.elements == sum(len(chunk.texts) for _, chunk in kept)
        assert known.characters == sum(len("".join(column)) for inputs, _ in kept for column in inputs) + sum(sum(map(len, chunk.texts)) for _, chunk in kept)
        assert known.line_bytes == sum(len(b"".join(piece for pieces in (chunk.lines or {}).values() for piece in pieces)) for _, chunk in kept)
        assert any(chunk.lines for _, chunk in kept)


@pytest.mark.parametrize("label", ["id", "join('-', [id, id])", None], ids=["lines kept in UTF-8", "lines written as text", "general path"])
def test_the_body_size_limit_counts_the_bytes_of_series_that_are_not_ascii_at_every_probe(label: str | None) -> None:
    """Label values of two-byte characters: a limit between the characters and the bytes of the series fails the
    probe, the first one as the next ones, whether the lines are kept in UTF-8 across probes or written as text."""
    module = make_spec(json.dumps({"modules": {"default": {"metrics": [
        {"name": "x", "help": "h", "each": "items", "value": "v", "labels": {"id": label or "id"}}]}}})).modules["default"]
    document = {"items": [{"id": f"é{i}" * 10, "v": i} for i in range(300)]}
    trace = Trace() if label is None else None  # a trace takes the general path
    lines = [line + "\n" for line in render_text(list(extract(module, {"default": document}, PROBE, trace=trace).families.values())).splitlines()
             if not line.startswith("#")]
    characters, size = sum(map(len, lines)), len("".join(lines).encode())
    assert size >= characters + 3000  # a byte more for each é
    for _ in range(3):
        with pytest.raises(BodySizeLimitExceeded):
            extract(module, {"default": document}, PROBE, trace=trace, bounds=Bounds(body_size_limit=(characters + size) // 2))
        extract(module, {"default": document}, PROBE, trace=trace, bounds=Bounds(body_size_limit=size))


def test_the_lines_kept_across_probes_never_push_out_the_label_texts() -> None:
    """Lines kept with their chunks (beyond their own budget) and two sets of labels: the second probe of the same answer
    finds every chunk's label texts kept (bench/features.yml's lines emptied them at every probe: 60 % slower)."""
    name = "a_metric_with_a_long_name_" + "x" * 40
    module = make_spec(f"""
        modules:
          default:
            metrics:
              - {{name: {name}, help: h, each: items, labels: {{id: id}}, values: {{one: v, two: v, three: v}}}}
              - {{name: b, help: h, each: items, labels: {{id: id, r: r}}, value: v}}
        """).modules["default"]
    document = {"items": [{"id": f"item-{i}", "r": "eu", "v": i} for i in range(15_000)]}
    extract(module, {"default": document}, PROBE)
    known = module.fast_plans[_KnownTexts]

    def kept() -> dict[tuple[Any, int], tuple[list[list[Any]], int]]:
        return {(key, start): (inputs, id(chunk)) for key, by_start in known.chunks.items() for start, (inputs, chunk) in by_start.items()}

    before = kept()
    assert known.line_bytes > _KNOWN_LINE_BYTES / 2  # lines kept, as many as their budget allows
    extract(module, {"default": document}, PROBE)
    after = kept()
    # chunks are cut by time: on a busy machine the second probe may cut other chunks than the first, which are made
    # anew; every chunk of the same elements (the same label values at the same start: the first of each rule at least)
    # is the one kept by the first probe
    same = [place for place in before if place in after and after[place][0] == before[place][0]]
    assert len(before) > 2 and len(same) >= 2
    assert [after[place][1] for place in same] == [before[place][1] for place in same]


def test_rules_sharing_labels_give_an_element_the_same_label_text() -> None:
    module = make_spec("""
        modules:
          default:
            metrics:
              - {name: a, help: h, each: items, value: v, labels: {z: id, b: name}}
              - {name: b, help: h, each: items, value: w, labels: {z: id, b: name}}
        """).modules["default"]
    result = extract(module, {"default": {"items": [{"id": 1, "name": "x", "v": 1, "w": 2}]}}, PROBE)
    assert samples(result.families["a"]) == [("a", {"b": "x", "z": "1"}, 1.0)]
    assert samples(result.families["b"]) == [("b", {"b": "x", "z": "1"}, 2.0)]
    assert render_text(list(result.families.values())).count('{b="x",z="1"}') == 2


def test_objects_made_by_an_each_expression_get_their_own_labels() -> None:
    """Rules over different iterations share no labels, though a projection's objects may look
    alike (and, made and freed by an earlier rule, even get the same ids)."""
    module = make_spec("""
        modules:
          default:
            metrics:
              - {name: a, help: h, each: 'items[*].{id: id}', value: '`1`', labels: {id: id}}
              - {name: b, help: h, each: 'items[*].{id: name}', value: '`1`', labels: {id: id}}
        """).modules["default"]
    document = {"items": [{"id": "i1", "name": "n1"}, {"id": "i2", "name": "n2"}]}
    result = extract(module, {"default": document}, PROBE)
    assert [labels["id"] for _, labels, _ in samples(result.families["b"])] == ["n1", "n2"]
    _assert_same(*_both_paths(module, document))


def test_rules_with_the_same_path_one_optional_share_no_iteration() -> None:
    """A missing level is an error of the rule that does not declare it optional, in both paths,
    though both rules iterate the same path of the same document."""
    module = make_spec("""
        modules:
          default:
            metrics:
              - {name: a, help: h, each: [{path: nodes, optional: true}], value: v}
              - {name: b, help: h, each: nodes, value: v}
              - {name: c, help: h, each: [{path: nodes, optional: true}], value: v}
        """).modules["default"]
    fast, general = _both_paths(module, {"node": [{"v": 1}]})
    _assert_same(fast, general)
    assert fast.errors == {"a": 0, "b": 1, "c": 0} and fast.families == {}
    assert fast.messages == ["metric b: each 'nodes' gave null (no such field?): write the level as {path: ..., optional: true} if it may be absent"]


def test_a_family_fed_by_a_fast_and_a_general_rule_counts_duplicates_across_them() -> None:
    module = make_spec("""
        modules:
          default:
            metrics:
              - {name: x, help: h, each: byname, value: v, labels: {id: $key}}
              - {name: x, help: h, each: items, value: v, labels: {id: id}}
        """).modules["default"]
    document = {"byname": {"a": {"v": 1}}, "items": [{"id": "a", "v": 2}, {"id": "b", "v": 3}, {"id": "b", "v": 4}]}
    fast, general = _both_paths(module, document)
    _assert_same(fast, general)
    assert fast.duplicates["x"] == 2 and [value for *_, value in samples(fast.families["x"])] == [1.0, 3.0]


def test_scale_multiplies_extracted_numbers_but_not_the_default_in_both_paths() -> None:
    module = make_spec("""
        modules:
          default:
            metrics:
              - {name: x_seconds, help: h, each: items, value: ms, labels: {id: id}, scale: 0.001, default: -1, value_map: {UP: 1000}}
        """).modules["default"]
    document = {"items": [{"id": "a", "ms": 1500}, {"id": "b", "ms": None}, {"id": "c", "ms": "UP"}, {"id": "d", "ms": True}]}
    fast, general = _both_paths(module, document)
    _assert_same(fast, general)
    assert [value for *_, value in samples(fast.families["x_seconds"])] == [1.5, -1.0, 1.0, 0.001]


def test_values_are_written_as_prometheus_client_writes_them_but_integers_exactly() -> None:
    """By the writer, and by extraction's columns (floats, integers, both, and beyond 1e15; fractions only,
    written at once, with one below 1e-4 or above 1e6 among them)."""
    values = [0.0, -0.0, 1.0, -3.0, 2.5, 1e-5, 123456.789, 1234567.5, 1e15, 1e15 - 1, -1e15 + 1, 1e16, 1e300, -2.5e-300,
              math.inf, -math.inf, math.nan, 9_999_999_999.0]
    def reference(v: float) -> str:
        return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else floatToGoString(float(v))

    expected = [reference(v) for v in values]
    family = Family("x", "gauge", "h", [("x", (("i", str(i)),), v, None) for i, v in enumerate(values)])
    assert [line.split(" ")[1] for line in render_text([family]).splitlines()[2:]] == expected
    module = make_spec("modules: {default: {metrics: [{name: x, help: h, each: items, value: v, labels: {i: i}}]}}").modules["default"]
    integers = [0, -3, 10**15 - 1, 10**15, -(10**16), 9_999_999_999]
    fractions = [0.0001, 0.00012, 2.5, 123456.789, 999999.5, -12345678.5, -1e15 - 0.5, 0.1, 1 / 3, -2.5e-3]
    for column in (values, integers, [*integers, 2.5], fractions, [*fractions, 5e-05], [*fractions, -5e-05], [*fractions, 1e6 + 0.5]):
        result = extract(module, {"default": {"items": [{"i": str(i), "v": v} for i, v in enumerate(column)]}}, PROBE)
        written = [line.split(" ")[1] for line in render_text(list(result.families.values())).splitlines()[2:]]
        assert written == [reference(v) for v in column]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats() | st.floats(-1e6, 1e6).map(lambda v: round(v, 3)) | st.integers(-(10**6), 10**6).map(float), min_size=1, max_size=8))
def test_a_column_of_floats_is_written_as_each_one_alone(values: list[float]) -> None:
    """Written at once by orjson where that is each one's text: integral, NaN and infinite values, exponent forms among them."""
    assert _float_texts(values) == [format_value(v) for v in values]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats() | st.floats(-1e6, 1e6).map(lambda v: round(v, 3)) | st.integers(-(10**6), 10**6).map(float), min_size=1, max_size=8),
       st.sampled_from([0.001, 0.1, 10.0, 1000.0, 1e-05, 1e-21, 1e21, 1e-300, 1e300]))
def test_a_column_scaled_by_a_power_of_ten_is_each_value_scaled_alone(values: list[float], scale: float) -> None:
    """At once (read back by the JSON parser) as `_scaled` makes each value: the decimal product, rounded once."""
    assert [repr(v) for v in _scaled_all(values, scale)] == [repr(_scaled(v, scale)) for v in values]


def test_a_column_of_booleans_is_written_with_their_values() -> None:
    module = make_spec("modules: {default: {metrics: [{name: x, help: h, each: items, value: v, labels: {i: i}, value_map: {'true': 5}}]}}").modules["default"]
    result = extract(module, {"default": {"items": [{"i": "a", "v": True}, {"i": "b", "v": False}, {"i": "c", "v": True}]}}, PROBE)
    assert [(s[1]["i"], s[2]) for s in samples(result.families["x"])] == [("a", 5.0), ("b", 0.0), ("c", 5.0)]


def test_sliced_extraction_and_rendering_give_the_plain_results() -> None:
    module = make_spec("""
        modules:
          default:
            metrics:
              - {name: x, help: h, each: items, value: v, labels: {id: id}}
              - {name: y, help: h, each: items, value: '$index', labels: {id: id}}
        """).modules["default"]
    document = {"items": [{"id": f"i{i}", "v": i / 3} for i in range(3000)]}  # several steps and chunks

    async def sliced() -> tuple[Extraction, tuple[bytes, dict[str, str]], tuple[bytes, dict[str, str]]]:
        result = await extract_async(module, {"default": document}, PROBE)
        families = list(result.families.values())
        return result, await encode_async(families, "application/openmetrics-text", ""), await encode_async(families, "", "gzip")

    result, openmetrics, compressed = asyncio.run(sliced())
    plain = extract(module, {"default": document}, PROBE)
    _assert_same(result, plain)
    families = list(plain.families.values())
    assert openmetrics == encode(families, "application/openmetrics-text", "")
    assert gzip.decompress(compressed[0]) == render_text(families).encode() and compressed[1]["Content-Encoding"] == "gzip"


def test_turns_go_by_priority_then_arrival_and_survive_cancelled_waiters() -> None:
    async def scenario() -> list[str]:
        order: list[str] = []
        hold = asyncio.Event()

        async def take(name: str, priority: int) -> None:
            async with turn(priority):
                order.append(name)
                if name == "first":
                    await hold.wait()

        first = asyncio.create_task(take("first", EXTRACT))
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(take(name, priority)) for name, priority in
                   [("parse", PARSE), ("extract-1", EXTRACT), ("cancelled", RENDER), ("render", RENDER), ("extract-2", EXTRACT)]]
        await asyncio.sleep(0)
        waiting[2].cancel()
        hold.set()
        await asyncio.gather(first, *waiting, return_exceptions=True)
        return order

    assert asyncio.run(scenario()) == ["first", "render", "extract-1", "extract-2", "parse"]


def test_a_waiter_cancelled_as_it_is_handed_the_turn_passes_it_on() -> None:
    async def scenario() -> list[str]:
        order: list[str] = []
        entered = asyncio.Event()

        async def take(name: str) -> None:
            async with turn(EXTRACT):
                order.append(name)
                entered.set()

        async with turn(EXTRACT):
            handed, after = asyncio.create_task(take("handed")), asyncio.create_task(take("after"))
            await asyncio.sleep(0)
        handed.cancel()  # its future is already done: the turn is its own, and must be passed on
        await asyncio.gather(handed, after, return_exceptions=True)
        return order

    assert asyncio.run(scenario()) == ["after"]


@pytest.mark.parametrize("body", [
    b'{"a": [1, 2.5, -0.0, "\\u00e9", true, null, {"b": 18446744073709551615}], "a": 3}',
    b'  [1e-320, 1.7976931348623157e308, "x\\ny"]  ',
    b'NaN', b'[Infinity, -Infinity]', b'"\\ud800"', b'\xef\xbb\xbf{"bom": 1}', '{"utf16": 1}'.encode("utf-16"),
])
def test_parsing_gives_what_the_json_module_gives(body: bytes) -> None:
    parsed, expected = _parse_json(body), json.loads(body)
    assert json.dumps(parsed) == json.dumps(expected)  # NaN-proof comparison, types included (1 vs 1.0)


@pytest.mark.parametrize("body", [b"", b"{", b'{"a": tru}', b"[1,]", b"\xff", b"[" * 5000 + b"]" * 5000])
def test_invalid_json_is_reported_with_the_json_module_messages(body: bytes) -> None:
    try:
        json.loads(body)
    except RecursionError:
        expected = "JSON nested too deeply"
    except UnicodeDecodeError as exc:
        expected = f"body is not UTF-8 text: {exc.reason}"
    except json.JSONDecodeError as exc:
        expected = f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    with pytest.raises(ValueError) as raised:
        _parse_json(body)
    assert str(raised.value).startswith(expected)


def test_integers_beyond_64_bits_are_read_as_floats_in_answers_up_to_the_orjson_limit() -> None:
    """The one difference orjson makes: such integers (label values only; sample values are
    floats anyway) lose their exact digits, as with every float64 JSON reader. Larger answers
    are parsed by the json module, which needs less memory."""
    assert _parse_json(b"[18446744073709551615, 18446744073709551616]") == [18446744073709551615, 1.8446744073709552e19]
    padding = b" " * ORJSON_MAX_BYTES
    assert _parse_json(b"[18446744073709551616]" + padding) == [18446744073709551616]


def test_answers_below_and_above_the_orjson_limit_give_the_json_module_documents() -> None:
    body = json.dumps({"items": [{"id": f"i{i}", "v": i / 7, "ok": i % 2 == 0, "n": None, "big": 2**63 + i} for i in range(20_000)]}).encode()
    for padded in (body, body + b" " * ORJSON_MAX_BYTES):
        assert _parse_json(padded) == json.loads(body)


def _beyond_64_bits_in_a_value(node: Any, depth: int, parent: type, iterated: bool = True) -> bool:
    """An integer beyond orjson's 64 bits anywhere but in a field of the root or of an element of the lists and
    map the rules iterate (`items`, `hists`, `byname`): in a value a rule reads whole, which the projection keeps
    exact and orjson makes a float (spec/projection.py)."""
    if isinstance(node, dict):
        if depth == 0:
            return any(_beyond_64_bits_in_a_value(v, 1, dict, k in ("items", "hists", "byname")) for k, v in node.items())
        return any(_beyond_64_bits_in_a_value(v, depth + 1, dict, iterated) for v in node.values())
    if isinstance(node, list):
        return any(_beyond_64_bits_in_a_value(v, depth + 1, list, iterated) for v in node)
    return type(node) is int and not -(2**63) <= node < 2**64 and (parent is list or depth == 2 or depth > 3 or not iterated)


def _has_objects(node: Any) -> bool:
    """Whether a parsed answer holds a projection's objects (spec/objects.py), not only dicts."""
    if isinstance(node, Fields):
        return True
    return any(map(_has_objects, node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()))


def _projected(module: Module, document: Any) -> tuple[Any, Any]:
    """The answer parsed whole, and as the module's rules read it (spec/projection.py)."""
    body = json.dumps(document).encode()
    return _parse_json(body), _parse_json(body, module.projections.get("default"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modules(), documents)
def test_an_answer_parsed_for_the_rules_gives_what_the_whole_answer_gives(module_spec: dict[str, Any], document: Any) -> None:
    assume(not _beyond_64_bits_in_a_value(document, 0, dict))
    module = make_spec(json.dumps({"modules": {"default": module_spec}})).modules["default"]
    whole, projected = _projected(module, document)
    event("parsed whole" if "default" not in module.projections or projected == whole else "projected into objects" if _has_objects(projected)
          else "projected into dicts")
    static = module_labels(module, VALUES)
    for trace in (None, Trace()):  # the fast path, and the general one
        _assert_same(extract(module, {"default": projected}, PROBE, static, trace=trace), extract(module, {"default": whole}, PROBE, static, trace=trace))


def _reading_named_fields(module_spec: dict[str, Any]) -> dict[str, Any]:
    """The module with what makes its answer parsed whole replaced by what a projection reads (named
    fields): no `$`, `@`, filter or `*` in an iteration, no element read whole."""
    each_instead = {"items[?v]": "items", "items[*].{id: id, v: w, a: a}": "items", "byname.*": "byname", "@": "items"}
    metrics = []
    for rule in module_spec["metrics"]:
        rule = {**rule, "labels": {k: "id" if v == "$index" else v for k, v in rule.get("labels", {}).items()}}
        if isinstance(rule.get("each"), str):
            rule["each"] = each_instead.get(rule["each"], rule["each"])
        for key in ("value", "buckets"):
            if key in rule:
                rule[key] = {"@": "w", "$root.buckets": "sub"}.get(rule[key], rule[key])
        if "values" in rule:
            rule["values"] = {k: "w" if v == "@" else v for k, v in rule["values"].items()}
        metrics.append(rule)
    return {**module_spec, "metrics": metrics}


objects_documents = documents.map(lambda d: {**d, "items": [e if isinstance(e, dict) else None for e in d["items"]]})  # objects or null


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modules(), objects_documents)
def test_an_answer_parsed_into_objects_gives_what_the_whole_answer_gives(module_spec: dict[str, Any], document: Any) -> None:
    """The rules read a projection's objects (Structs, spec/objects.py) as they read the dicts of the whole
    answer, on the fast path and the general one (jmespath's interpreter): missing, null, nested, odd names."""
    assume(not _beyond_64_bits_in_a_value(document, 0, dict))
    _assert_objects_read_as_dicts(module_spec, document, (None, Trace()))


def _assert_objects_read_as_dicts(module_spec: dict[str, Any], document: Any, traces: tuple[Trace | None, ...] = (None,), before: Any = None) -> None:
    """The module's rules reduced to named-field reads (`_reading_named_fields`) give for the answer parsed
    into a projection's objects what they give for the whole answer (each trace: the general path); after
    the answer `before` parsed so, when given (what the fast path keeps across probes)."""
    module = make_spec(json.dumps({"modules": {"default": _reading_named_fields(module_spec)}})).modules["default"]
    whole, projected = _projected(module, document)
    event("projected into objects" if _has_objects(projected) else "not projected")
    static = module_labels(module, VALUES)
    if before is not None:
        extract(module, {"default": _projected(module, before)[1]}, PROBE, static)
    for trace in traces:
        _assert_same(extract(module, {"default": projected}, PROBE, static, trace=trace), extract(module, {"default": whole}, PROBE, static, trace=trace))

def test_bench_spec_parses_only_the_fields_its_rules_read() -> None:
    module = make_spec((Path(__file__).parent.parent / "bench" / "spec.yml").read_text()).modules["default"]
    item = {"id": "svc-1", "name": "n", "region": "eu", "status": "ok", "healthy": True, "requests_total": 10**9, "errors_total": 2,
            "latency_ms": 0.5, "cpu_ratio": 0.25, "memory_bytes": 9_999_999_999, "version": "1.0", "tags": ["a", "b"]}
    whole, projected = _projected(module, {"generated_at": "2024-05-01T10:00:00Z", "count": 1, "items": [item]})
    assert isinstance(projected.get("items")[0], Fields)  # Structs, not dicts
    assert msgspec.to_builtins(projected) == {"count": 1, "items": [{k: v for k, v in item.items() if k not in ("name", "tags")}]}
    _assert_same(extract(module, {"default": projected}, PROBE), extract(module, {"default": whole}, PROBE))


@pytest.mark.parametrize("rule", [
    {"name": "m", "help": "h", "each": "items", "labels": {"i": "$index"}, "value": "v"},  # `$`: the context
    {"name": "m", "help": "h", "each": "items", "labels": {"k": "join(',', keys(@))"}, "value": "v"},  # the element as a whole
    {"name": "m", "help": "h", "each": "items[?v > `1`]", "value": "v"},  # a filter over the collection
])
def test_rules_reading_more_than_named_fields_parse_the_whole_answer(rule: dict[str, Any]) -> None:
    module = make_spec(json.dumps({"modules": {"default": {"metrics": [rule]}}})).modules["default"]
    assert "default" not in module.projections


def test_fields_read_by_calls_and_multi_selects_are_kept() -> None:
    rule = {"name": "m", "help": "h", "each": "items", "labels": {"o": "{k: id, w: sub.w}", "u": "upper(name)"}, "value": "divide(v, `2`)"}
    module = make_spec(json.dumps({"modules": {"default": {"metrics": [rule]}}})).modules["default"]
    whole, projected = _projected(module, {"items": [{"id": "a", "sub": {"w": 1, "x": 2}, "name": "n", "v": 3, "other": 4}]})
    assert msgspec.to_builtins(projected) == {"items": [{"id": "a", "sub": {"w": 1}, "name": "n", "v": 3}]}
    _assert_same(extract(module, {"default": projected}, PROBE), extract(module, {"default": whole}, PROBE))


@pytest.mark.parametrize("value", ["(a | b).c", "(a || x).c", "a[0].c", "a.b | c", "(a.b).c", "a.b.c", "length(a.b).c"])
def test_a_field_read_of_what_is_not_a_field_of_the_current_node_reads_that_whole(value: str) -> None:
    # `(a | b).c` reads c of a.b, not of a: only a chain of fields names the path it reads
    document = {"a": {"b": {"c": 5}, "c": 1}, "items": [{"v": 1}]}
    rules = [{"name": "x", "help": "h", "value": f"not_null({value}, `-1`)"}, {"name": "it", "help": "h", "each": "items", "value": "v"}]
    module = make_spec(json.dumps({"modules": {"default": {"metrics": rules}}})).modules["default"]
    document["a"] = {"b": {"c": 5}, "c": 1} if value != "a[0].c" else [{"c": 7}]
    whole, projected = _projected(module, document)
    _assert_same(extract(module, {"default": projected}, PROBE), extract(module, {"default": whole}, PROBE))


def test_an_endpoint_no_rule_reads_is_parsed_whole() -> None:
    module = make_spec(json.dumps({"modules": {"default": {
        "endpoints": {"read": {"url": "{target}"}, "unread": {"url": "{target}/other"}},
        "metrics": [{"name": "m", "help": "h", "endpoint": "read", "value": "v"}]}}})).modules["default"]
    assert set(module.projections) == {"read"}


_ITEMS_V = {"metrics": [{"name": "m", "help": "h", "each": "items", "value": "v"}]}


@pytest.mark.parametrize("body", [
    b'{"items": [{"v": 1, "x": 2}, 3]}',  # an element that is not an object
    b'{"items": [{"v": 18446744073709551616, "x": 2}]}',  # beyond 64 bits: orjson's float
    b'{"items": [{"v": NaN, "x": 2}]}', b'\xef\xbb\xbf{"items": [{"v": 1, "x": 2}]}',  # what only the json module reads
    b'{"items": [{"v": 1, "x": "\xff"}]}',  # not UTF-8, in a field no rule reads: the json module's error
])
def test_an_answer_the_projection_does_not_fit_is_parsed_whole(body: bytes) -> None:
    projection = make_spec(json.dumps({"modules": {"default": _ITEMS_V}})).modules["default"].projections["default"]
    try:
        expected = _parse_json(body)
    except ValueError as exc:
        with pytest.raises(ValueError, match=re.escape(str(exc))):
            _parse_json(body, projection)
        return
    assert json.dumps(_parse_json(body, projection)) == json.dumps(expected)  # "x" kept: parsed whole


def test_the_values_of_an_object_are_projected_as_elements() -> None:
    projection = make_spec(json.dumps({"modules": {"default": _ITEMS_V}})).modules["default"].projections["default"]
    projected = _parse_json(b'{"items": {"a": {"v": 1, "x": 2}, "b": {"v": 2}}, "y": 3}', projection)
    assert msgspec.to_builtins(projected) == {"items": {"a": {"v": 1}, "b": {"v": 2}}}


def test_fields_of_any_name_are_read_from_objects_as_from_the_whole_answer() -> None:
    """Field names that are keywords, not identifiers or attributes of Python objects, missing or null
    fields, nested objects, a map iterated, calls by columns and jmespath's interpreter (`||`)."""
    rule = {"name": "m", "help": "h", "each": "items", "labels": {"c": "class", "d": '"a-b"', "e": '"é"', "n": 'sub."a-b"', "l": 'lower("a-b")'},
            "values": {"x": '"1x"', "i": "__init__", "g": "get", "p": '"a.b"', "o": '"1x" || get'}, "default": -1}
    by_name = {"name": "k", "help": "h", "each": "byname", "labels": {"c": "class"}, "value": "sub.v"}
    module = make_spec(json.dumps({"modules": {"default": {"metrics": [rule, by_name]}}})).modules["default"]
    full = {"class": "c1", "1x": 1, "a-b": "X", "__init__": 2, "get": 3, "a.b": 4, "é": "e", "sub": {"a-b": 5, "q": 0}, "other": 2**70}
    document = {"items": [full, {"class": None, "get": 7}, None, {"1x": None, "sub": None, "a-b": "Y"}],
                "byname": {"x": {"class": "a", "sub": {"v": 1}}, "y": {"sub": {}}, "z": {"class": "b", "sub": {"v": None, "w": 1}}}}
    whole, projected = _projected(module, document)
    assert isinstance(projected.get("items")[0], Fields) and isinstance(projected.get("byname")["x"], Fields)
    assert msgspec.to_builtins(projected)["items"][1] == {"class": None, "1x": None, "a-b": None, "__init__": None, "get": 7, "a.b": None, "é": None,
                                                          "sub": None}  # missing fields read as null
    for trace in (None, Trace()):
        fast, general = extract(module, {"default": projected}, PROBE, trace=trace), extract(module, {"default": whole}, PROBE, trace=trace)
        _assert_same(fast, general)
    series = parse(render_text(list(fast.families.values())))
    assert value(series, "m_o", c="c1", d="X", e="e", n="5", l="x") == 1 and value(series, "m_p", c="c1", d="X", e="e", n="5", l="x") == 4
    assert sorted(v for (name, _), v in series.items() if name == "m_o") == [-1, 1, 7] and value(series, "k", c="a") == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(items | st.none(), max_size=6))
def test_the_columns_of_all_of_an_objects_fields_at_once_are_those_of_each_field(elements: list[Any]) -> None:
    """`objects.columns` (every field of a chunk's objects at once, as the fast path reads them) gives each
    field's column as `objects.column` reads it; nothing when an element is not an object (null)."""
    assume(not _beyond_64_bits_in_a_value({"items": elements}, 0, dict))
    names = ["id", "a", "v", "w", "tags", "sub", *ODD_NAMES]
    rule = {"name": "m", "help": "h", "each": "items", "values": {f"f{i}": f'"{name}"' for i, name in enumerate(names)}}
    module = make_spec(json.dumps({"modules": {"default": {"metrics": [rule]}}})).modules["default"]
    whole, projected = _projected(module, {"items": elements})
    rows = projected.get("items")
    found = objects.columns(rows)
    event("objects" if found is not None else "dicts or null among them")
    if not rows or not isinstance(rows[0], Fields) or None in rows:  # (an answer the projection does not fit is parsed into dicts)
        assert found is None
        return
    assert found == {name: objects.column(name, rows) for name in names}
    assert found == {name: [element.get(name) for element in whole["items"]] for name in names}  # as the whole answer's dicts


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=8), st.text(max_size=8))
def test_field_names_hold_distinct_attributes_no_other_json_value_has(name: str, other: str) -> None:
    assert (attribute(name) == attribute(other)) == (name == other)
    assert attribute(name).isidentifier() and "." not in attribute(name)  # operator.attrgetter reads `a.b` as a path
    for other_value in ({}, [], "", 0, 0.5, True, None, Fields()):
        assert not hasattr(other_value, attribute(name))


@pytest.mark.parametrize("fields", [STRUCT_FIELDS, 40])
@pytest.mark.parametrize("element", [b"{}", b'{"f0": 1}', b"null"])
def test_the_parsed_size_estimate_is_never_under_what_a_projection_takes(fields: int, element: bytes) -> None:
    """The response cache counts an answer by `parsed_size` (upstream/cache.py): a projection's objects
    hold a slot per field read, present or not, which must stay under what an object counts for."""
    rule = {"name": "m", "help": "h", "each": "items", "values": {f"f{i}": f"f{i}" for i in range(fields)}}
    projection = make_spec(json.dumps({"modules": {"default": {"metrics": [rule]}}})).modules["default"].projections["default"]
    body = b'{"items": [' + b",".join([element] * 2000) + b"]}"
    tracemalloc.start()
    try:
        document = _parse_json(body, projection)
        taken, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert document is not FULL and len(document.get("items")) == 2000 and parsed_size(body) >= taken
