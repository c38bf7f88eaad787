"""Compiled rules applied to parsed JSON documents, producing metric families.

Knows nothing of HTTP: it gets the documents of a module's endpoints and returns series,
extraction errors and duplicates counted per metric. A failing rule never drops the others.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import operator
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from itertools import repeat
from typing import Any

import orjson

from jsonexporter.exposition import EXACT_LIMIT, Family, Labels, escape_label_value, escaped, format_bound, format_value, labels_text, needs_escape, sample_line
from jsonexporter.labeltext import label_text
from jsonexporter.names import text_name
from jsonexporter.numbers import parse_number
from jsonexporter.secrets import Redactor
from jsonexporter.slices import SLICE_SECONDS, Steps, run, run_sliced
from jsonexporter.spec import objects
from jsonexporter.spec.expressions import Expression, Search
from jsonexporter.spec.functions import FunctionError, bounded_column
from jsonexporter.spec.model import Level, Metric, Module, Output
from jsonexporter.spec.problems import fault
from jsonexporter.trace import MAX_MESSAGE, Trace, cut, shorten

MAX_MESSAGES = 20  # error messages kept per probe for the log and the trace (of MAX_MESSAGE characters each)
_DEFAULT_HELP = "Extracted by jsonexporter."
_CHUNK = 512  # most elements per step of a rule on the fast path: about 0.5 ms for bench/'s items
# A chunk of the fast path is cut by time too (`_chunks`): each is sized from the time the last one took,
# aiming at a slice (slices.SLICE_SECONDS). A rule whose expressions the interpreter walks the element's lists
# for (`Expression.iterates`: an element may take milliseconds) starts each probe at _FIRST_CHUNK elements; the
# others at _CHUNK (fields and calls by columns: at most about linear in the chunk's data, at C or the library's pace)
_CHUNK_SECONDS = SLICE_SECONDS
_FIRST_CHUNK = 4
_STEP_SECONDS = 0.0005  # of a rule on the general path: it yields after the element (or level searched) that passes it
_SHOWN = 3  # elements of a rule whose values and labels a trace shows


class ExtractionError(Exception):
    pass


class BodySizeLimitExceeded(Exception):
    """The series would take more of the answer than the probe's limit: the probe fails rather than answer some."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the series would take more than {limit} bytes of the answer (body_size_limit)")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Bounds:
    """What bounds the text the answers put in a probe's series: label values from answers of at most
    `label_value_length_limit` characters (a longer one is an error of its series, as Prometheus's scrape
    option of that name), the series' text within `body_size_limit` bytes of UTF-8 (more fail the probe, as a
    scrape over Prometheus's body_size_limit fails), each 0 for no limit; `redactor`, when it knows
    values, hides those an answer echoes in a label value (a token, a login ticket)."""

    label_value_length_limit: int = 0
    body_size_limit: int = 0
    redactor: Redactor | None = None


class SeriesLimitExceeded(Exception):
    """The rules gave more series than the probe's limit: the probe fails rather than answer some."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the rules gave more than {limit} series (series_limit)")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class ProbeContext:
    module: str
    target: str
    params: Mapping[str, str]


@dataclass(slots=True)
class Extraction:
    families: dict[str, Family] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # by metric name
    duplicates: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    # samples that families' keys do not count, for series_limit (which counts samples, as Prometheus's
    # sample_limit does): a histogram's or summary's beyond its first, and those a rule holds back for
    # its duplicates policy
    uncounted: int = 0
    bounds: Bounds = field(default_factory=Bounds)
    written: int = 0  # bytes of the families' parts measured so far (body_size_limit: `_part_size`), the first `measured` of each
    measured: dict[str, int] = field(default_factory=dict)
    # the metrics whose rule failed for a fault of ours (`_rule_failed`), each with what it was (problems.fault): they
    # give no series in this probe; the server logs each once
    faults: dict[str, str] = field(default_factory=dict)

    def series(self, metric: str) -> int:
        """How many series the metric has: duplicates and skipped ones are not counted."""
        family = self.families.get(metric)
        return 0 if family is None else len(family.keys)

    def error(self, metric: str, message: str) -> None:
        self.errors[metric] = self.errors.get(metric, 0) + 1
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(cut(f"metric {metric}: {message}", MAX_MESSAGE))


_MS_LIMIT = 2.0**63  # Prometheus stores a timestamp as int64 milliseconds


def to_number(raw: Any, value_map: Mapping[str, float]) -> float | None:
    """A JSON value as a sample value; None for null. Raises ExtractionError when it is not a number."""
    kind = type(raw)
    if kind is float or kind is int:
        return float(raw)
    if raw is None:
        return None
    if kind is bool:
        key = "true" if raw else "false"
        return value_map.get(key, 1.0 if raw else 0.0)
    if kind is str:
        mapped = value_map.get(raw)
        if mapped is not None:
            return mapped
        try:
            return parse_number(raw)
        except ValueError as exc:
            hint = f" and not in value_map ({', '.join(value_map)})" if value_map else "; map it with value_map"
            raise ExtractionError(f"{exc}{hint}") from None
    raise ExtractionError(f"expected a number, got {'a list' if kind is list else 'an object'}")


def sample_value(raw: Any, metric: Metric, expr: Expression) -> float:
    """The rule's sample value for what `expr` gave: mapped by value_map, then scaled; `default`,
    not scaled, for null. Raises ExtractionError."""
    value = to_number(raw, metric.value_map)
    if value is None:
        if metric.default is None:
            raise ExtractionError(f"value {expr.source!r} is null or missing")
        value = metric.default
    elif metric.scale != 1.0:
        value *= metric.scale
    if metric.type == "counter" and not value >= 0:
        raise ExtractionError(_NOT_A_COUNT.format(format_value(value)))
    return value


_NOT_A_COUNT = "counter value {} is negative or NaN: OpenMetrics parsers reject the whole answer"


def to_timestamp(raw: Any, scale: float) -> float | None:
    """A JSON value as a sample timestamp in seconds: a number (or a number in a string) of seconds
    times `scale`, or an RFC 3339 string. Raises ExtractionError, also for one Prometheus cannot store."""
    if raw is None:
        return None
    if type(raw) in (int, float):
        seconds = float(raw) * scale
    elif type(raw) is str:
        try:
            try:
                seconds = parse_number(raw) * scale
            except ValueError:
                seconds = datetime.fromisoformat(raw).timestamp()
        except ValueError:
            raise ExtractionError(f"timestamp {shorten(raw, 60)} is neither a number nor RFC 3339") from None
    else:
        raise ExtractionError(f"timestamp {shorten(raw, 60)} is not a number")
    if not math.isfinite(seconds):
        raise ExtractionError(f"timestamp {shorten(raw, 60)} is not finite")
    if seconds < 0:  # a "never" sentinel, mostly; Prometheus would drop it as out of bounds, prometheus_client misreads it
        raise ExtractionError(f"timestamp {shorten(raw, 60)} is before 1970")
    if seconds * 1000 >= _MS_LIMIT:
        raise ExtractionError(f"timestamp {shorten(raw, 60)} is beyond what Prometheus stores (int64 milliseconds, about 292 million years)")
    return seconds


def _state_text(raw: Any) -> str | None:
    if raw is None:
        return None
    return label_text(raw)


def _search(expr: Expression, element: Any, ctx: dict[str, Any] | None) -> Any:
    return expr.search(ctx if expr.on_context else element)


_Search = Callable[[Expression, Any, "dict[str, Any] | None"], Any]


def _searching_once_per_probe() -> _Search:
    """`_search`, where a `$` expression that reads only what every element shares (`Expression.per_probe`:
    `$root.…`, a whole document searched for each element) is evaluated once for all of a rule's elements:
    what it gave, or its failure raised again for each element."""
    fixed: dict[int, tuple[Any, Exception | None]] = {}

    def search(expr: Expression, element: Any, ctx: dict[str, Any] | None) -> Any:
        if ctx is None or not expr.per_probe:
            return expr.search(ctx if expr.on_context else element)
        found = fixed.get(id(expr))
        if found is None:
            try:
                found = (expr.search(ctx), None)
            except Exception as exc:
                found = (None, exc)
            fixed[id(expr)] = found
        if found[1] is not None:
            raise found[1].with_traceback(None)
        return found[0]

    return search


def _elements(metric: Metric, doc: Any, base: dict[str, Any] | None, trace: Trace | None,
              search: _Search = _search) -> Iterator[tuple[Any, dict[str, Any] | None]]:
    """Every element of the (nested) iteration, with its context when the rule uses `$`."""
    if not metric.each:
        yield doc, base
        return
    last = len(metric.each) - 1
    traced: set[int] = set()

    def walk(depth: int, element: Any, parent: dict[str, Any] | None) -> Iterator[tuple[Any, dict[str, Any] | None]]:
        level = metric.each[depth]
        collection = search(level.path, element, parent)
        yield _SEARCHED, None
        if trace is not None and depth not in traced:
            traced.add(depth)
            _trace_level(trace, metric, depth, collection)
        if type(collection) is list:
            entries: Any = ((None, i, item) for i, item in enumerate(collection))
        elif type(collection) is dict:
            entries = ((key, i, item) for i, (key, item) in enumerate(collection.items()))
        elif collection is None:
            _nothing_to_iterate(level)
            return
        else:
            raise ExtractionError(f"each {level.path.source!r} gave {shorten(collection, 40)}, not a list or object")
        for key, index, item in entries:
            ctx = None
            if parent is not None:
                view = {"key": key, "index": index, "item": item}
                ctx = {**parent, **view, "parent": parent}
                if level.alias is not None:
                    ctx[level.alias] = view
            if depth == last:
                yield item, ctx
            else:
                yield from walk(depth + 1, item, ctx)

    yield from walk(0, doc, base)


_SEARCHED = object()  # what `_elements` gives after it searched a level's path (a step: `$root` paths search the whole document)


def _trace_level(trace: Trace, metric: Metric, depth: int, collection: Any) -> None:
    """What an iteration level gave (for the first element of the level above), once per probe:
    rules iterating the same paths of the same endpoint's document refer to the first of them."""
    source = metric.each[depth].path.source
    key = (metric.endpoint, tuple(level.path.source for level in metric.each[:depth + 1]))
    first = trace.shown.get(key)
    if first is None:
        trace.shown[key] = metric.name
    trace.add(f"  each[{depth}] {source!r} -> {shorten(collection) if first is None else f'as shown for metric {first}'}")


def _sample_name(metric: Metric, output_name: str) -> str:
    return text_name(output_name, metric.type)


def _family(result: Extraction, metric: Metric, output: Output) -> Family:
    return _family_named(result.families, output.name, metric.type, output.help or metric.help or _DEFAULT_HELP)


def _family_named(families: dict[str, Family], name: str, mtype: str, help_text: str) -> Family:
    """The family of this name in the extraction, made at its first series."""
    family = families.get(name)
    if family is None:
        family = families[name] = Family(name, mtype, help_text)
    return family


def _new_series(result: Extraction, name: str, family: Family, key: str) -> bool:
    """Whether the family has no series with this label text yet (now it has); a duplicate is counted."""
    if key in family.keys:
        result.duplicates[name] = result.duplicates.get(name, 0) + 1
        return False
    if family.shared_keys:
        family.keys, family.shared_keys = set(family.keys), False
    family.keys.add(key)
    return True


def _take_keys(family: Family, distinct: set[str]) -> None:
    """`family.keys |= distinct` of a chunk's label texts, none of them the family's yet: the chunk's own set while the
    family has no other (a family of one chunk, most are: no copy of its texts' hashes, 2.7 µs per 200), copied before
    anything is added to it (a kept chunk's set is the next probe's too)."""
    if not family.keys:
        family.keys, family.shared_keys = distinct, True
    elif family.shared_keys:
        family.keys, family.shared_keys = family.keys | distinct, False
    else:
        family.keys |= distinct


def _add(result: Extraction, name: str, family: Family, sample_name: str, labels: Labels, value: float, ts: float | None) -> None:
    """One series into its family, unless the family has one with the same labels."""
    key = labels_text(labels)
    if _new_series(result, name, family, key):
        family.parts.append(sample_line(sample_name, key, value) if ts is None else (sample_name, labels, value, ts))


_Samples = list[tuple[str, Labels, float]]  # sample name, sorted labels, value
_Series = tuple[str, _Samples]  # a series (a histogram's or summary's: all its samples) by its label text
_Held = tuple[_Samples, float | None]  # a series and its timestamp


def _append(result: Extraction, family: Family, samples: _Samples, ts: float | None) -> None:
    result.uncounted += len(samples) - 1
    for sample_name, labels, value in samples:
        family.parts.append(sample_line(sample_name, labels_text(labels), value) if ts is None else (sample_name, labels, value, ts))


def _put(result: Extraction, name: str, family: Family, series: _Series, ts: float | None, metric: Metric, held: dict[str, _Held] | None) -> None:
    """A series into its family (`held` None: duplicates `first`), or into what the rule holds back
    for `last` (it replaces one with the same labels, in that one's place) and `sum` (it adds to it).
    Only series merged across rules count as duplicates: those of one rule are what its policy asks for."""
    key, samples = series
    if held is None:
        if _new_series(result, name, family, key):
            _append(result, family, samples, ts)
        return
    before = held.get(key)
    if before is not None and metric.duplicates == "sum":  # one sample: the loader allows `sum` only for single values
        (sample_name, labels, value), = samples
        held[key] = ([(sample_name, labels, before[0][0][2] + value)], ts if ts is not None else before[1])
        return
    result.uncounted += len(samples) - (0 if before is None else len(before[0]))
    held[key] = (samples, ts)


def _apply(metric: Metric, doc: Any, probe: ProbeContext, static: Labels, result: Extraction, trace: Trace | None, memo: _Memo) -> Steps[None]:
    plan = _cached_plan(memo, metric, static) if trace is None else None
    if plan is None:
        yield from _apply_general(metric, doc, probe, static, result, trace)
    elif metric.distribution is not None:
        yield from _apply_fast_histogram(metric, plan, doc, result, memo)
    else:
        yield from _apply_fast(metric, plan, doc, result, memo)


def _apply_general(metric: Metric, doc: Any, probe: ProbeContext, static: Labels, result: Extraction, trace: Trace | None) -> Steps[None]:
    """Every rule, traced or not: the reference the fast path is tested against."""
    base = None
    if metric.uses_context:
        base = {"key": None, "index": None, "item": doc, "parent": None, "root": doc,
                "target": probe.target, "module": probe.module, "params": dict(probe.params)}
    families = [(output, _family(result, metric, output), _sample_name(metric, output.name)) for output in metric.outputs]
    label_exprs = metric.labels
    is_info, is_stateset = metric.type == "info", metric.type == "stateset"
    # duplicates `last` and `sum`: the rule's series wait in `held` for its last element
    held: list[dict[str, _Held]] | None = None if metric.duplicates == "first" else [{} for _ in families]
    traced = 0
    clock = time.perf_counter
    due = clock() + _STEP_SECONDS
    search = _searching_once_per_probe() if base is not None else _search
    try:
        for element, ctx in _elements(metric, doc, base, trace, search):
            # steps by time, not by so many elements: an element's expressions may take long (a `$root` one searches the
            # whole document each time), and slices.py can cut only between steps; a step also checks the probe's limits
            if clock() >= due:
                yield
                due = clock() + _STEP_SECONDS
            if element is _SEARCHED:
                continue
            show = trace is not None and traced < _SHOWN
            traced += 1
            try:
                pairs = _bounded_pairs([(name, label_text(search(expr, element, ctx))) for name, expr in label_exprs], result.bounds)
            except Exception as exc:  # a label failing drops this element's series only
                for output, *_ in families:
                    result.error(output.name, f"labels: {_reason(exc)}")
                continue
            pairs.extend(static)
            ts = None
            if metric.timestamp is not None:
                try:
                    ts = to_timestamp(search(metric.timestamp, element, ctx), metric.timestamp_scale)
                except Exception as exc:  # the message says "timestamp …"; the labels say which series
                    for output, *_ in families:
                        result.error(output.name, f"{_reason(exc)} (labels {dict(pairs)})")
                    continue
            for index, (output, family, sample_name) in enumerate(families):
                samples: list[tuple[Labels, float]]
                try:
                    if metric.distribution is not None:
                        series = _distribution_series(metric, sample_name, element, ctx, pairs, search)
                        if show and trace is not None:
                            trace.add(f"    {output.name}: {len(series[1])} sample(s); labels {dict(pairs)}")
                        _put(result, output.name, family, series, ts, metric, None if held is None else held[index])
                        continue
                    if is_info:
                        if show and trace is not None:
                            trace.add(f"    {output.name}: info; labels {dict(pairs)}")
                        samples = [(tuple(sorted(pairs)), 1.0)]
                    else:
                        assert output.value is not None
                        raw = search(output.value, element, ctx)
                        if show and trace is not None:
                            trace.add(f"    {output.name}: value {output.value.source!r} -> {shorten(raw)}; labels {dict(pairs)}")
                        samples = _states(metric, pairs, raw) if is_stateset else [(tuple(sorted(pairs)), sample_value(raw, metric, output.value))]
                except _UnknownState as exc:  # still a complete set of states, all 0
                    result.error(output.name, f"{exc} (labels {dict(pairs)})")
                    samples = exc.samples
                except Exception as exc:
                    result.error(output.name, f"{_reason(exc)} (labels {dict(pairs)})")
                    continue
                if held is not None:
                    for labels, value in samples:
                        _put(result, output.name, family, (labels_text(labels), [(sample_name, labels, value)]), ts, metric, held[index])
                    continue
                for labels, value in samples:
                    _add(result, output.name, family, sample_name, labels, value, ts)
    except Exception as exc:  # the iteration itself failed: this rule gives no (more) series
        for output, *_ in families:
            result.error(output.name, _reason(exc))
    for (output, family, _), kept in zip(families, held, strict=True) if held is not None else ():
        for key, (samples_, ts_) in kept.items():
            result.uncounted -= len(samples_)
            if _new_series(result, output.name, family, key):
                _append(result, family, samples_, ts_)
    if trace is not None:
        trace.add(f"  rule {metric.name}: {f'first {_SHOWN} of {traced} elements shown' if traced > _SHOWN else f'{traced} element(s)'}")


# The fast path takes a rule's elements by chunks, and a chunk by columns: the label texts of its
# elements, then per value the texts of the numbers, each column with one comprehension or map over
# the chunk, and its sample lines at once. A chunk where some element needs more (a label or value
# failing, an answer that is not a number, a duplicate) goes element by element, with the same
# results and messages in the same order as the general path.


@dataclass(frozen=True, slots=True)
class _FastPlan:
    """A rule as the fast path runs it. An element's label text is `template % values`, the
    module's labels already in the template; plain field expressions become dict lookups."""

    names: tuple[str, ...]  # the rule's labels in its order, then the module's
    static_texts: tuple[str, ...]  # the module's label values
    label_searches: tuple[Search, ...]  # the rule's label expressions, in its order
    label_exprs: tuple[Expression, ...]
    label_fields: tuple[str | None, ...]  # for each, its field name when it is one plain field
    # for each, the one field whose value makes its text (its plain field, or what a pure call reads); all known: `_known_chunk`
    label_inputs: tuple[str | None, ...]
    template: str  # `{a="%s",b="x"}`: `%s` for the rule's labels in `slots` order ("" without labels)
    slots: tuple[int, ...]  # the rule's labels (indexes into `names`) in the order of their names
    key: tuple[tuple[str, str], ...]  # rules of an iteration with the same key give an element the same text
    between: tuple[str, ...]  # the template's text before, between and after the rule's labels' values (`_joined_texts`)
    first_chunk: int  # elements of the rule's first chunk in a probe (_FIRST_CHUNK)
    # what the rule's probes all ask the same: the keys of its iteration (`_iteration_key`) and of its label texts
    # (by probe in _Memo.labels, across probes in _KnownTexts), and its outputs as `_Output` has them but their family
    iteration: tuple[str, tuple[tuple[str, bool], ...]]
    labels_key: tuple[Any, ...]
    known_key: tuple[Any, ...]
    outputs: tuple[_PlannedOutput, ...]


@dataclass(slots=True)
class _Chunk:
    texts: list[str]  # the label text of each element
    distinct: set[str]
    unique: bool  # no two elements of the chunk with the same labels
    columns: list[list[str]]  # the escaped label values, in the plan's `slots` order (a histogram's `le` goes between them)
    longest: list[int] | None = None  # the length of each column's longest value, once measured (`_bounded_chunk`)
    # kept across probes (`_KnownTexts`): the token of the texts that keep it, the characters of its texts, and the
    # pieces of each sample name's lines (`_kept_lines`, in UTF-8) with the bytes they hold, counted in its line_bytes
    kept: object = None
    size: int = 0
    lines: dict[str, list[bytes]] | None = None
    line_bytes: int = 0


@dataclass(slots=True)
class _Memo:
    """What the rules of one extraction share, when they iterate the same elements of the same
    endpoint's document: the elements, where their chunks end (`_chunks`), and the label texts that
    rules with the same labels give them, by chunk: its first element, its end and its texts (None
    for a chunk that went element by element)."""

    elements: dict[tuple[str, tuple[tuple[str, bool], ...]], tuple[list[Any], Exception | None]] = field(default_factory=dict)
    ends: dict[tuple[str, tuple[tuple[str, bool], ...]], list[int]] = field(default_factory=dict)
    labels: dict[tuple[Any, ...], dict[int, tuple[int, _Chunk | None]]] = field(default_factory=dict)
    # the module's rules' plans (`_cached_plan`), kept in Module.fast_plans under _FastPlan: they outlive the extraction, and
    # are bounded apart from what else a module keeps there (_KnownTexts, Bounds, _SelfPlan...), which their eviction leaves
    plans: dict[Any, Any] = field(default_factory=dict)
    bounds: Bounds = field(default_factory=Bounds)
    known: _KnownTexts = field(default_factory=lambda: _KnownTexts())  # the module's too (in its fast_plans)
    fields: dict[tuple[Any, ...], _Fields] = field(default_factory=dict)  # by iteration and chunk (its first element and end)
    shared: dict[Any, frozenset[str]] = field(default_factory=dict)  # the module's (`_shared_fields`)


@dataclass(slots=True)
class _Fields:
    """The columns of the fields of a chunk of an iteration's elements. A projection's objects (spec/objects.py)
    give all their fields' columns at once, at the first asked (the rules read them all: the projection holds
    only what they read), kept for all the rules. Of dicts, the fields that several rules read (`shared`) are
    read once for all of them: a column of a fresh answer's dicts costs about 29 µs per 512 elements; the others
    are not kept: memory let go at once is memory used again while in the CPU's cache (keeping all of bench/spec.yml's
    columns, none read twice, made its extraction 7 % slower then)."""

    elements: list[Any]
    shared: frozenset[str]
    columns: dict[str, list[Any]] = field(default_factory=dict)
    tried: bool = False  # whether the columns of all the fields at once were tried (`objects.columns`)

    def field(self, name: str) -> list[Any]:
        """The column of one plain field; TypeError or AttributeError when an element is not an object (`_column`)."""
        column = self.columns.get(name)
        if column is None:
            if not self.tried:
                self.tried = True
                found = objects.columns(self.elements)
                if found is not None:
                    self.columns = found
                    column = found.get(name)
                    if column is not None:
                        return column
            column = objects.column(name, self.elements)
            if name in self.shared:
                self.columns[name] = column
        return column

    def values(self, expr: Expression, plain: str | None) -> list[Any]:
        """What `_column(expr, plain, elements)` gives: a pure call on one field from that field's column."""
        if plain is not None:
            return self.field(plain)
        if expr.by_input is not None and expr.single_input is not None:
            found = expr.by_input(self.field(expr.single_input))
            if found is not None:
                return found
        return _column(expr, plain, self.elements)


_KNOWN_ELEMENTS = 1 << 15  # elements whose label texts a module keeps across probes, at most (`_KnownTexts`)
_KNOWN_CHARACTERS = 1 << 21  # characters of those texts and of the label values they were made of, at most
# bytes of the kept chunks' lines but their numbers (`_kept_lines`: in UTF-8), at most: a budget of their own, so that lines
# never push out the label texts (bench/features.yml's 60,007 lines would fill the texts' and empty it at every probe)
_KNOWN_LINE_BYTES = 1 << 21


@dataclass(slots=True)
class _KnownTexts:
    """The label texts of the chunks of a module's last answers, by the label values they were made of,
    kept across probes: real answers give the same label values in the same order probe after probe,
    and a chunk whose values equal the last ones' has the texts it had (`_known_chunk`). Bounded in
    elements and characters; full, it starts again from empty (the current answers fill it again)."""

    chunks: dict[tuple[Any, ...], dict[int, tuple[list[list[Any]], _Chunk]]] = field(default_factory=dict)
    elements: int = 0
    characters: int = 0
    line_bytes: int = 0  # bytes of the chunks' kept lines (`_kept_lines`), within _KNOWN_LINE_BYTES
    token: object = field(default_factory=object)  # what the chunks kept hold (`_Chunk.kept`), a new one when it starts again


_MAX_PLANS = 1024  # per module (its own dict): module labels made of the target or parameters make a plan per target


def _cached_plan(memo: _Memo, metric: Metric, static: Labels) -> _FastPlan | None:
    """`_fast_plan`, made once per rule and module labels (8 µs a rule: 24 of the 340 µs that bench/spec.yml's
    extraction of its 56 KB answer took). The entry holds the rule itself, so that its id stays its own."""
    key = (id(metric), static)
    entry = memo.plans.get(key)
    if entry is not None and entry[0] is metric:
        plan: _FastPlan | None = entry[1]
        return plan
    if len(memo.plans) >= _MAX_PLANS:
        memo.plans.clear()
    plan = _fast_plan(metric, static)
    memo.plans[key] = (metric, plan)
    return plan


def _fast_plan(metric: Metric, static: Labels) -> _FastPlan | None:
    """The plan when the rule needs none of what only the general path does: the probe context
    (`$`), timestamps, stateset expansion, summaries, a histogram's `duplicates: last`; None otherwise."""
    if metric.type in ("stateset", "summary") or metric.timestamp is not None or metric.uses_context:
        return None
    if metric.distribution is not None and metric.duplicates != "first":
        return None
    rule_names = [name for name, _ in metric.labels]
    names = (*rule_names, *(name for name, _ in static))
    if len(set(names)) != len(names) or (metric.distribution is not None and "le" in names):
        return None  # the general path's sort also orders by value then
    static_texts = tuple(value for _, value in static)
    pieces, between = _template(names, len(rule_names), static_texts)
    exprs = [expr for _, expr in metric.labels]
    key = tuple((name, expr.source) for name, expr in metric.labels)
    iteration = _iteration_key(metric)
    outputs = tuple((output.name, output.value, None if output.value is None else _plain_field(output.value), _sample_name(metric, output.name),
                     output.help or metric.help or _DEFAULT_HELP) for output in metric.outputs)
    return _FastPlan(
        names=names,
        static_texts=static_texts,
        label_searches=tuple(e.search for e in exprs),
        label_exprs=tuple(exprs),
        label_fields=tuple(e.fields[0] if e.fields is not None and len(e.fields) == 1 else None for e in exprs),
        label_inputs=tuple(e.fields[0] if e.fields is not None and len(e.fields) == 1 else e.single_input for e in exprs),
        template="{" + ",".join(pieces) + "}" if pieces else "",
        slots=tuple(sorted(range(len(rule_names)), key=rule_names.__getitem__)),
        key=key,
        between=tuple(between),
        first_chunk=_FIRST_CHUNK if any(e.iterates for e in _element_expressions(metric)) else _CHUNK,
        iteration=iteration,
        labels_key=(*iteration, key),
        known_key=(*iteration, key, tuple(between)),
        outputs=outputs,
    )


def _element_expressions(metric: Metric) -> Iterator[Expression]:
    """The expressions of a rule evaluated for each element (not its levels' paths)."""
    levels = {id(level.path) for level in metric.each}
    return (expr for expr in metric.expressions() if id(expr) not in levels)


def _template(names: tuple[str, ...], rule_labels: int, static_texts: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The pairs of a plan's template (`name="%s"` for the rule's first `rule_labels` names, the
    static text for the others), sorted by name, and the text before, between and after the values."""
    pieces: list[str] = []  # the template's pairs
    between = [""]  # the text between the values of the rule's labels
    for i in sorted(range(len(names)), key=names.__getitem__):
        comma = "," if pieces else "{"
        if i < rule_labels:
            pieces.append(f'{names[i]}="%s"')
            between[-1] += f'{comma}{names[i]}="'
            between.append('"')
        else:
            text = escaped(static_texts[i - rule_labels])
            pieces.append(f'{names[i]}="{text.replace("%", "%%")}"')
            between[-1] += f'{comma}{names[i]}="{text}"'
    between[-1] += "}" if pieces else ""
    return pieces, between


def _plain_elements(levels: tuple[Level, ...], doc: Any) -> tuple[list[Any], Exception | None]:
    """The elements of a (nested) iteration, without the context that only `$` needs; with the
    failure that ended it early, if any (the elements before it still count)."""
    if not levels:
        return [doc], None
    if len(levels) == 1:  # the common case
        try:
            collection = _items(levels[0], doc)
        except Exception as exc:
            return [], exc
        return collection if type(collection) is list else list(collection), None
    elements: list[Any] = []

    def walk(depth: int, element: Any) -> None:
        for item in _items(levels[depth], element):
            if depth == len(levels) - 1:
                elements.append(item)
            else:
                walk(depth + 1, item)

    try:
        walk(0, doc)
    except Exception as exc:
        return elements, exc
    return elements, None


def _items(level: Level, element: Any) -> Iterable[Any]:
    """What one level iterates."""
    collection = level.path.search(element)
    if type(collection) is list:
        return collection
    if type(collection) is dict:
        return collection.values()
    if collection is None:
        _nothing_to_iterate(level)
        return ()
    raise ExtractionError(f"each {level.path.source!r} gave {shorten(collection, 40)}, not a list or object")


def _nothing_to_iterate(level: Level) -> None:
    """A level that gave null: a missing field, allowed only where the spec says so. Most often the
    path is wrong (`node` for `nodes`), and the rule would give no series without a word."""
    if not level.optional:
        raise ExtractionError(f"each {level.path.source!r} gave null (no such field?): "
                              "write the level as {path: ..., optional: true} if it may be absent")


_Output = tuple[str, Expression | None, str | None, str, Family]  # name, value, its plain field, sample name, family
_PlannedOutput = tuple[str, Expression | None, str | None, str, str]  # name, value, its plain field, sample name, help
# a column's number texts: one per element, or orjson's bytes of them, with a comma between two (`_written_texts`), not
# split and decoded unless a line is written as text (`_texts`): the kept lines take the bytes as they are (`_kept_lines`)
_Numbers = list[str] | bytes
_NO_EXPRESSION = Expression("", lambda data: None, on_context=False)  # for `_column` of a plain field, which needs none


def _apply_fast(metric: Metric, plan: _FastPlan, doc: Any, result: Extraction, memo: _Memo) -> Steps[None]:
    """What `_apply_general` does for the rules `_fast_plan` accepts, with the same output."""
    outputs = _outputs(plan, metric.type, result.families)
    # duplicates `last` and `sum`: the rule's series wait for its last element, by label text (as `_put`):
    # `last` keeps the text of the value, `sum` the value
    held: list[dict[str, Any]] | None = None if metric.duplicates == "first" else [{} for _ in outputs]
    for part, chunk, fields in _chunks(metric, plan, doc, memo):
        if part is None or fields is None:
            yield
            continue
        before = 0 if held is None else sum(map(len, held))
        if chunk is not None and held is not None and metric.duplicates == "sum":
            values = _value_numbers(metric, outputs, fields)
            if values is not None:
                _hold_sums(held, chunk.texts, values)
            else:
                _one_by_one(metric, plan, outputs, part, result, held)
            result.uncounted += sum(map(len, held)) - before  # as `_put` counts what a rule holds back
            continue
        columns = None if chunk is None else _value_columns(metric, outputs, fields)
        if chunk is None or columns is None:
            _one_by_one(metric, plan, outputs, part, result, held)
            if held is not None:
                result.uncounted += sum(map(len, held)) - before
            continue
        if held is not None:
            for kept, numbers in zip(held, columns, strict=True):
                kept.update(zip(chunk.texts, _texts(numbers), strict=True))  # `last`: a later element replaces an earlier one in its place
            result.uncounted += sum(map(len, held)) - before
            continue
        texts, distinct = chunk.texts, chunk.distinct
        for (name, _, _, sample_name, family), numbers in zip(outputs, columns, strict=True):
            if chunk.unique and family.keys.isdisjoint(distinct):
                _take_keys(family, distinct)
                family.parts.append(_kept_lines(memo.known, chunk, sample_name, numbers) or _lines(sample_name, texts, _texts(numbers)))
                continue
            for text, number in zip(texts, _texts(numbers), strict=True):
                if _new_series(result, name, family, text):
                    family.parts.append(f"{sample_name}{text} {number}\n")
    _iteration_failed(plan, outputs, result, memo)
    for (name, _, _, sample_name, family), kept in zip(outputs, held, strict=True) if held is not None else ():
        result.uncounted -= len(kept)
        for key, value in kept.items():
            if _new_series(result, name, family, key):
                family.parts.append(f"{sample_name}{key} {value if type(value) is str else format_value(value)}\n")


def _outputs(plan: _FastPlan, mtype: str, families: dict[str, Family]) -> list[_Output]:
    """The plan's outputs with their families (`_family`)."""
    return [(name, value, plain, sample_name, _family_named(families, name, mtype, help_text))
            for name, value, plain, sample_name, help_text in plan.outputs]


def _chunks(metric: Metric, plan: _FastPlan, doc: Any, memo: _Memo) -> Iterator[tuple[list[Any] | None, _Chunk | None, _Fields | None]]:
    """The rule's elements by chunks, with their label texts (None: the chunk goes element by
    element) and their fields' columns; (None, None, None) between two chunks, where the rule yields its turn.
    Chunks are cut by the time the rule's last one took (`_next_chunk_size`); the first rule of an
    iteration to reach an element cuts where its chunk ends, the others end theirs there too (or before,
    when theirs take longer), so that rules share the fields and label texts of the same chunks."""
    iteration = plan.iteration
    elements, _ = _iteration(metric, iteration, doc, memo)
    made = memo.labels.setdefault(plan.labels_key, {})
    ends = memo.ends.setdefault(iteration, [])
    # a chunk's time by the wall clock (67 ns a reading), then, after one that took too long, by the thread's CPU
    # clock (its work, not the time the machine's other work took meanwhile), a system call of 0.6-4 µs
    clock, precise = time.perf_counter, False
    size, start, count = plan.first_chunk, 0, len(elements)
    covering: tuple[int, int, _Chunk | None] = (0, 0, None)  # label texts made for a chunk that holds this one
    while start < count:
        if start:
            yield None, None, None
        began = clock()
        at = bisect.bisect_right(ends, start)
        if at < len(ends):
            end = min(start + size, ends[at])
        else:
            end = min(start + size, count)
            ends.append(end)
        fields = memo.fields.get((*iteration, start, end))
        if fields is None:
            fields = memo.fields[(*iteration, start, end)] = _Fields(elements[start:end], memo.shared.get(iteration, frozenset()))
        entry = made.get(start)
        if entry is not None and entry[0] >= end:
            covering = (start, *entry)
        first, last, whole = covering
        if first <= start and end <= last:
            chunk = whole if (first, last) == (start, end) else _chunk_part(whole, start - first, end - first)
        else:
            chunk = _bounded_chunk(_known_chunk(plan, fields, memo.known, start), memo.bounds)
            made[start] = end, chunk
        yield fields.elements, chunk, fields
        seconds = clock() - began
        if seconds > 2 * _CHUNK_SECONDS and not precise:
            clock, precise = time.thread_time, True  # the next chunk tells whether this one's elements take long
        else:
            size = _next_chunk_size(size, end - start, seconds)
        start = end


def _chunk_part(chunk: _Chunk | None, start: int, end: int) -> _Chunk | None:
    """The label texts of some of a chunk's elements, for a rule whose chunks end before those of the rule that made them."""
    if chunk is None:
        return None
    texts = chunk.texts[start:end]
    distinct = set(texts)
    return _Chunk(texts, distinct, len(distinct) == len(texts), [column[start:end] for column in chunk.columns])


def _next_chunk_size(size: int, elements: int, seconds: float) -> int:
    """The size of a rule's next chunk after `elements` took `seconds`: a power of two (the same cuts
    probe after probe, where the label texts kept across probes are found), smaller after one that took
    more than twice _CHUNK_SECONDS, larger (four times at most) after one that took less than half of it."""
    fitted = elements * _CHUNK_SECONDS / seconds if seconds > 0 else _CHUNK
    if seconds > 2 * _CHUNK_SECONDS:
        return 1 << max(0, int(fitted).bit_length() - 1)
    if fitted >= 2 * size:
        return min(_CHUNK, 4 * size, 1 << (int(fitted).bit_length() - 1))
    return size


# Bounds of label values (Bounds): checked by columns on the fast path, where a chunk with a value too long or
# a known secret in one goes element by element, and there, as on the general path, per element.


def _bounded_chunk(chunk: _Chunk | None, bounds: Bounds) -> _Chunk | None:
    """The chunk, unless one of its label values is beyond the bounds (None: element by element, where
    `_bounded_texts` says which): its escaped values measured (an escaped one is no shorter), joined once
    for the secrets (the Redactor knows their escaped forms)."""
    limit, redactor = bounds.label_value_length_limit, bounds.redactor
    if chunk is None or not chunk.columns or (not limit and redactor is None):
        return chunk
    longest = chunk.longest
    if longest is None:  # measured once: a chunk kept across probes (`_known_chunk`) is measured at its first
        longest = chunk.longest = [max(map(len, column)) for column in chunk.columns]
    if limit and max(longest) > limit:
        return None
    if redactor is not None:  # columns whose values are all shorter than every known value cannot hold one
        shortest = redactor.shortest()
        columns = [column for column, n in zip(chunk.columns, longest, strict=True) if n >= shortest]
        if columns and redactor.finds("\n".join(map("\n".join, columns))):
            return None
    return chunk


def _bounded_texts(names: tuple[str, ...], texts: list[str], bounds: Bounds) -> list[str]:
    """The label values of one element within the bounds: one too long raises ExtractionError (its
    series are skipped and counted); a known secret in one is hidden (its series may become a duplicate)."""
    limit = bounds.label_value_length_limit
    if limit:
        for name, text in zip(names, texts, strict=False):
            if len(text) > limit:
                raise ExtractionError(f"label {name} is {len(text)} characters long, beyond the label_value_length_limit of {limit}")
    redactor = bounds.redactor
    if redactor is None:
        return texts
    shortest = redactor.shortest()
    return [redactor.hide_known(text) if len(text) >= shortest else text for text in texts]


def _bounded_pairs(pairs: list[tuple[str, str]], bounds: Bounds) -> list[tuple[str, str]]:
    if not bounds.label_value_length_limit and bounds.redactor is None:
        return pairs
    names = tuple(name for name, _ in pairs)
    return list(zip(names, _bounded_texts(names, [text for _, text in pairs], bounds), strict=True))


def _known_chunk(plan: _FastPlan, fields: _Fields, known: _KnownTexts, start: int) -> _Chunk | None:
    """`_label_texts`, or the chunk the same label values gave at an earlier probe: the values of
    fields and what pure calls read, compared to those kept at C speed (bench/features.yml's 4 labels
    by calls, 512 elements of a fresh answer: 145 µs instead of 320, mostly the dict lookups). Only values that are all texts are kept: a text equals
    only the same text (1 == 1.0 == True, whose label texts differ)."""
    elements = fields.elements
    if not plan.slots or None in plan.label_inputs:  # (no labels: each text is the template's)
        return _label_texts(plan, elements)
    try:
        inputs = [fields.field(name) for name in map(plan.label_inputs.__getitem__, plan.slots) if name is not None]
    except Exception:  # an element that is not an object
        return _label_texts(plan, elements)
    entry = known.chunks.get(plan.known_key, {}).get(start)
    if entry is not None and entry[0] == inputs:
        return entry[1]
    chunk = _label_texts(plan, elements, inputs)
    if chunk is not None:
        _keep(known, (*plan.known_key, start), inputs, chunk)
    return chunk


def _keep(known: _KnownTexts, key: tuple[Any, ...], inputs: list[list[Any]], chunk: _Chunk) -> None:
    try:
        size = sum(map(len, chunk.texts))
        characters = sum(len("".join(column)) for column in inputs) + size  # TypeError unless all texts
    except TypeError:
        return
    by_index = known.chunks.setdefault(key[:-1], {})
    before = by_index.pop(key[-1], None)
    if before is not None:
        known.elements -= len(before[1].texts)
        known.characters -= sum(len("".join(column)) for column in before[0]) + sum(map(len, before[1].texts))
        known.line_bytes -= before[1].line_bytes
    if known.elements + len(chunk.texts) > _KNOWN_ELEMENTS or known.characters + characters > _KNOWN_CHARACTERS:
        known.chunks.clear()
        known.elements = known.characters = known.line_bytes = 0
        known.token = object()  # the chunks kept before add no lines to what is counted now
        by_index = known.chunks.setdefault(key[:-1], {})
    by_index[key[-1]] = (inputs, chunk)
    chunk.kept, chunk.size = known.token, size
    known.elements += len(chunk.texts)
    known.characters += characters


def _shared_fields(metrics: Iterable[Metric]) -> dict[Any, frozenset[str]]:
    """By iteration, the fields of its elements that the rules read more than once (the labels of rules
    with the same labels read once): the columns `_Fields` keeps."""
    reads: dict[tuple[Any, str], int] = {}
    labels: set[tuple[Any, ...]] = set()
    for metric in metrics:
        iteration = _iteration_key(metric)
        names: list[str | None] = []
        if (iteration, tuple((name, expr.source) for name, expr in metric.labels)) not in labels:
            labels.add((iteration, tuple((name, expr.source) for name, expr in metric.labels)))
            names.extend(_input_field(expr) for _, expr in metric.labels)
        exprs = [output.value for output in metric.outputs if output.value is not None]
        d = metric.distribution
        if d is not None:
            exprs.extend(expr for expr in (d.points, d.count, d.sum) if expr is not None)
            names.extend(d.points.entry_fields or ())
        names.extend(map(_input_field, exprs))
        for name in names:
            if name is not None:
                reads[iteration, name] = reads.get((iteration, name), 0) + 1
    shared: dict[Any, set[str]] = {}
    for (iteration, name), count in reads.items():
        if count > 1:
            shared.setdefault(iteration, set()).add(name)
    return {iteration: frozenset(names) for iteration, names in shared.items()}


def _input_field(expr: Expression) -> str | None:
    """The one plain field whose value makes the expression's (`_Fields.values`)."""
    return expr.fields[0] if expr.fields is not None and len(expr.fields) == 1 else expr.single_input


def _iteration_key(metric: Metric) -> tuple[str, tuple[tuple[str, bool], ...]]:
    return metric.endpoint, tuple((level.path.source, level.optional) for level in metric.each)


def _iteration(metric: Metric, iteration: tuple[str, tuple[tuple[str, bool], ...]], doc: Any, memo: _Memo) -> tuple[list[Any], Exception | None]:
    return memo.elements.get(iteration) or memo.elements.setdefault(iteration, _plain_elements(metric.each, doc))


def _iteration_failed(plan: _FastPlan, outputs: list[_Output], result: Extraction, memo: _Memo) -> None:
    """The iteration itself failed: the rule gives no more series, and says why."""
    failure = memo.elements[plan.iteration][1]
    if failure is not None:
        for name, *_ in outputs:
            result.error(name, _reason(failure))


def _value_numbers(metric: Metric, outputs: list[_Output], fields: _Fields) -> list[list[float]] | None:
    """For each output, the sample value of each element (`sample_value`); None when one needs the element loop."""
    columns = []
    for _, expr, plain, *_ in outputs:
        assert expr is not None
        try:
            raws = fields.values(expr, plain)
            if set(map(type, raws)) <= _NUMBERS:
                scale = metric.scale
                values = list(map(float, raws)) if scale == 1.0 else [float(raw) * scale for raw in raws]
                if metric.type == "counter" and not all(map((0.0).__le__, values)):
                    return None  # a negative or NaN count is an error of its series
            else:
                values = [sample_value(raw, metric, expr) for raw in raws]
        except Exception:
            return None
        columns.append(values)
    return columns


def _hold_sums(held: list[dict[str, Any]], texts: list[str], columns: list[list[float]]) -> None:
    """`duplicates: sum`: each value added to what the rule holds for its labels, in the order of the elements (as `_put` adds).
    A loop by element: masks by label text added up by functools.reduce took three times as long (512 elements of 6 texts)."""
    for kept, values in zip(held, columns, strict=True):
        get = kept.get
        for text, value in zip(texts, values, strict=True):
            before = get(text)
            kept[text] = value if before is None else before + value


# Histograms by columns: the buckets of a chunk's elements, when they are objects with the same keys
# (their `layout`, checked once), become a column of counts per bucket, checked at column speed (whole,
# cumulative or summed, the +Inf bucket and the count agreeing); a chunk where one element is not so
# goes element by element through `_distribution_series`, with the general path's messages.


@dataclass(frozen=True, slots=True)
class _Layout:
    """The bucket keys of a histogram's answers, checked once: their order by bound, and the text
    around the values of a series (`_series_function`): each sample's name and labels, `le` among them."""

    keys: tuple[Any, ...]  # in the order of their bounds
    infinite: bool  # the last is +Inf; else the count makes it
    negative: bool  # a bound below 0: a sum is an error then
    pieces: tuple[str, ...]


def _layout(keys: tuple[Any, ...], metric: Metric, plan: _FastPlan, sample_name: str) -> _Layout | None:
    """The layout of buckets with these keys; None when they are not bounds, one of them twice: the
    element loop reports that."""
    try:
        bounds = [_number(key, "bucket bound") for key in keys]
    except ExtractionError:
        return None
    if any(map(math.isnan, bounds)) or len(set(bounds)) != len(bounds):
        return None
    order = sorted(range(len(keys)), key=bounds.__getitem__)
    ordered = [bounds[i] for i in order]
    infinite = bool(ordered) and ordered[-1] == math.inf
    rule_labels = len(plan.names) - len(plan.static_texts)
    samples = []  # per sample: its name, the text around the label values
    for bound in ordered if infinite else [*ordered, math.inf]:
        _, between = _template((*plan.names, "le"), rule_labels, (*plan.static_texts, format_bound(_scaled(bound, metric.scale))))
        samples.append((f"{sample_name}_bucket", between))
    samples.append((f"{sample_name}_count", list(plan.between)))
    assert metric.distribution is not None
    if metric.distribution.sum is not None:
        samples.append((f"{sample_name}_sum", list(plan.between)))
    pieces = []
    for j, (name, between) in enumerate(samples):
        pieces.extend([f"{chr(10) if j else ''}{name}{between[0]}", *between[1:-1], f"{between[-1]} "] if len(between) > 1
                      else [f"{chr(10) if j else ''}{name}{between[0]} "])
    pieces.append("\n")
    return _Layout(tuple(keys[i] for i in order), infinite, bool(ordered) and ordered[0] < 0, tuple(pieces))


@functools.cache
def _series_function(k: int, m: int) -> Callable[..., str]:
    """The text of a series of m samples with k label values: `lambda v0, x0, x1, q0_0, q0_1, q1_0, q1_1, z:
    f"{q0_0}{v0}{q0_1}{x0}{q1_0}{v0}{q1_1}{x1}{z}"` for k = 1, m = 2 (an f-string function, for all of a
    histogram's samples at once: the q pieces are each sample's name and labels, the x its value)."""
    values = [f"v{i}" for i in range(k)]
    samples = [f"x{j}" for j in range(m)]
    pieces = [f"q{j}_{i}" for j in range(m) for i in range(k + 1)]
    body = "".join("".join(f"{{q{j}_{i}}}{{v{i}}}" for i in range(k)) + f"{{q{j}_{k}}}{{x{j}}}" for j in range(m)) + "{z}"
    function: Callable[..., str] = eval(f"lambda {', '.join([*values, *samples, *pieces, 'z'])}: f'{body}'")
    return function


def _apply_fast_histogram(metric: Metric, plan: _FastPlan, doc: Any, result: Extraction, memo: _Memo) -> Steps[None]:
    """What `_apply_general` does for a histogram `_fast_plan` accepts (`duplicates: first`), with the same output."""
    outputs = _outputs(plan, metric.type, result.families)
    ((name, _, _, sample_name, family),) = outputs
    layouts: dict[tuple[Any, ...], _Layout | None] = {}
    for part, chunk, fields in _chunks(metric, plan, doc, memo):
        if part is None or fields is None:
            yield
            continue
        found = None if chunk is None else _histogram_texts(metric, plan, layouts, sample_name, fields, chunk)
        if chunk is None or found is None:
            _histograms_one_by_one(metric, plan, name, sample_name, family, part, result)
            continue
        values, pieces = found
        samples = len(values)
        if chunk.unique and family.keys.isdisjoint(chunk.distinct):
            _take_keys(family, chunk.distinct)
            result.uncounted += (samples - 1) * len(part)
            family.parts.append(_joined_series(chunk.columns, values, pieces))
            continue
        function = _series_function(len(chunk.columns), samples)
        texts = map(function, *chunk.columns, *values, *map(repeat, pieces))
        for key, series in zip(chunk.texts, texts, strict=True):
            if _new_series(result, name, family, key):
                result.uncounted += samples - 1
                family.parts.append(series)
    _iteration_failed(plan, outputs, result, memo)


def _plain_field(expr: Expression) -> str | None:
    return expr.fields[0] if expr.fields is not None and len(expr.fields) == 1 else None


def _bucket_columns(metric: Metric, plan: _FastPlan, layouts: dict[tuple[Any, ...], _Layout | None], sample_name: str,
                    fields: _Fields) -> tuple[_Layout, list[list[Any]]] | None:
    """The layout of the elements' buckets and their counts, a column per bucket in the order of
    the bounds; None unless every element's buckets are an object with the same keys."""
    d = metric.distribution
    assert d is not None
    entries, elements = d.points.entries, fields.elements
    if entries is not None and _all_objects(elements):  # `{"0.1": fast, "+Inf": all}`: its keys, whatever the values
        keys = tuple(key for key, _ in entries)
        layout = layouts[keys] if keys in layouts else layouts.setdefault(keys, _layout(keys, metric, plan, sample_name))
        if layout is None:
            return None
        by_key = dict(entries)
        plain = dict(zip(keys, d.points.entry_fields or (None,) * len(keys), strict=True))
        columns = [by_key[key](elements) if (name := plain[key]) is None else fields.field(name) for key in layout.keys]
        return None if any(column is None for column in columns) else (layout, [c for c in columns if c is not None])
    raws = fields.values(d.points, _plain_field(d.points))
    if not raws or set(map(type, raws)) != _DICT:
        return None
    keys = tuple(raws[0])
    if not all(map(raws[0].keys().__eq__, map(dict.keys, raws))):
        return None
    layout = layouts[keys] if keys in layouts else layouts.setdefault(keys, _layout(keys, metric, plan, sample_name))
    return None if layout is None else (layout, [[raw[key] for raw in raws] for key in layout.keys])


def _histogram_texts(metric: Metric, plan: _FastPlan, layouts: dict[tuple[Any, ...], _Layout | None], sample_name: str,
                     fields: _Fields, chunk: _Chunk) -> tuple[list[list[str]], tuple[str, ...]] | None:
    """The value texts of each sample of the elements' series, a column per sample, and the text
    around them (`_Layout.pieces`); None when one element needs the element loop (its buckets, count
    or sum are not the common case)."""
    d = metric.distribution
    assert d is not None
    try:
        found = _bucket_columns(metric, plan, layouts, sample_name, fields)
        if found is None:
            return None
        layout, counts = found
        if layout.negative and d.sum is not None:
            return None
        written = list(map(_counts_written, counts))  # each column's text, for its sample texts unless made anew below
        if None in written:
            return None  # fractions, text, negative counts: the element loop says which
        for i in range(1, len(counts)):
            if d.cumulative:
                if not all(map(operator.le, counts[i - 1], counts[i])):
                    return None
            else:
                counts[i] = list(map(operator.add, counts[i - 1], counts[i]))
                written[i] = None
        count = None if d.count is None else fields.values(d.count, _plain_field(d.count))
        if count is not None and set(map(type, count)) == _NONE:
            count = None  # a histogram without its count has it in the +Inf bucket
        if count is not None and (set(map(type, count)) != _INT or min(count) < 0):
            return None
        if layout.infinite:
            if count is not None and count != counts[-1]:
                return None
        elif count is None or (counts and not all(map(operator.le, counts[-1], count))):
            return None
        else:
            counts.append(count)
            written.append(None)
        if max(counts[-1]) >= EXACT_LIMIT:
            return None  # where the general path's float sums may round
        values = [(text if text is not None else orjson.dumps(column))[1:-1].decode().split(",") for column, text in zip(counts, written, strict=True)]
        values.append(values[-1])  # the count is the last bucket's: the same texts
        if d.sum is not None:
            total = fields.values(d.sum, _plain_field(d.sum))
            scaled = _written_sums(total, metric.scale)
            if scaled is None:  # not all written as non-negative numbers in positional form: the values themselves say
                if not set(map(type, total)) <= _NUMBERS:
                    return None
                sums = list(map(float, total))
                if not all(map((0.0).__le__, sums)):
                    return None
                scaled = _scaled_all(sums, metric.scale)
            if not all(map(math.isfinite, scaled)):
                return None  # the element loop says which (`_check_finite`)
            values.append(_float_texts(scaled))
    except Exception:  # an element that is not an object, an expression failing
        return None
    return values, layout.pieces


_COUNT_BYTES = b"0123456789,"  # orjson's text of a list of non-negative integers, beside its brackets
_SUM_BYTES = b"0123456789,."  # of non-negative numbers in positional form (no sign, no exponent, no NaN or infinity as null)
_EXACT_FLOAT = 2**53  # integers below are floats exactly: float(n)'s shortest digits are n's


def _counts_written(column: list[Any]) -> bytes | None:
    """orjson's text of a column of bucket counts when it tells they are non-negative integers (an integer is
    written with digits alone; a bool, null, fraction, text or negative one with more), instead of a set of the
    values' types and their least (512: about a third of the time, and the text is the sample texts' too); None
    otherwise, and for integers beyond 64 bits (which EXACT_LIMIT refuses anyway)."""
    try:
        text = orjson.dumps(column)
    except orjson.JSONEncodeError:
        return None
    return text if text.translate(None, _COUNT_BYTES) == b"[]" else None


def _written_sums(total: list[Any], scale: float) -> list[float] | None:
    """The histogram sums of `total` as floats, scaled (`_scaled_all` of `float()` of each), when orjson's text of them
    tells they are all non-negative numbers in positional form, integers among them below 2**53: the scaled floats read
    back from that text with the exponent added (`_scaled_all`'s way, without converting and writing them first), or
    made of the floats for a scale that is not a power of ten; None otherwise (the caller checks the values)."""
    try:
        text = orjson.dumps(total)
    except orjson.JSONEncodeError:
        return None
    if not total or text.translate(None, _SUM_BYTES) != b"[]" or max(total) >= _EXACT_FLOAT:
        return None
    if scale == 1.0:
        return list(map(float, total))
    exponent = _ten_to(scale)
    if exponent is None or not -20 <= exponent <= 20:
        return _scaled_all(list(map(float, total)), scale)
    end = f"e{exponent}]".encode()  # as `_scaled_all` writes it: an integer's digits are its float's (below 2**53)
    scaled: list[float] = orjson.loads(text[:-1].replace(b",", end[:-1] + b",") + end)
    return scaled


def _joined_series(columns: list[list[str]], values: list[list[str]], pieces: tuple[str, ...]) -> str:
    """What `_series_function(k, m)` writes for each element, joined: its pieces laid out by slice
    assignments and joined once (the way of `_joined_texts`), instead of a call per element."""
    n, k = len(values[0]), len(columns)
    stride = len(values) * (2 * k + 2) + 1
    slots: list[str] = [""] * (stride * n)
    at = 0
    around = iter(pieces)
    for column in values:
        for label in (*columns, column):
            slots[at::stride] = [next(around)] * n
            slots[at + 1::stride] = label
            at += 2
    slots[at::stride] = [next(around)] * n
    return "".join(slots)


def _histograms_one_by_one(metric: Metric, plan: _FastPlan, name: str, sample_name: str, family: Family, elements: list[Any],
                           result: Extraction) -> None:
    """Histogram series element by element, as the general path makes them."""
    for element in elements:
        try:
            texts = _bounded_texts(plan.names, [label_text(search(element)) for search in plan.label_searches], result.bounds)
        except Exception as exc:  # a label failing drops this element's series only
            result.error(name, f"labels: {_reason(exc)}")
            continue
        pairs = list(zip(plan.names, (*texts, *plan.static_texts), strict=True))
        try:
            series = _distribution_series(metric, sample_name, element, None, pairs)
        except Exception as exc:
            result.error(name, f"{_reason(exc)} (labels {dict(pairs)})")
            continue
        _put(result, name, family, series, None, metric, None)


def _label_texts(plan: _FastPlan, elements: list[Any], inputs: list[list[Any]] | None = None) -> _Chunk | None:
    """The label text of each element; None when an expression fails for one of them. `inputs`: the
    columns of the fields of `label_inputs`, in `slots` order, when known."""
    if not plan.slots:
        texts = [plan.template % ()] * len(elements)
        return _Chunk(texts, set(texts[:1]), len(elements) <= 1, [])
    columns = []
    for slot, i in enumerate(plan.slots):
        try:
            raws = None if inputs is None else _from_input(plan.label_exprs[i], plan.label_fields[i], inputs[slot])
            if raws is None:
                raws = _column(plan.label_exprs[i], plan.label_fields[i], elements)
            try:
                column, joined = raws, "".join(raws)  # a TypeError unless all are texts: half the time of a set of their types
            except TypeError:
                column = list(map(label_text, raws))
                joined = "".join(column)
        except Exception:  # an element that is not an object, an expression failing
            return None
        if needs_escape(joined):
            column = list(map(escape_label_value, column))
        columns.append(column)
    texts = _joined_texts(plan.between, columns)
    distinct = set(texts)
    return _Chunk(texts, distinct, len(distinct) == len(texts), columns)


def _from_input(expr: Expression, plain: str | None, inputs: list[Any]) -> list[Any] | None:
    """What `_column` gives for a plain field or a pure call on one field, from that field's column; None when a call fails."""
    if plain is not None:
        return inputs
    return None if expr.by_input is None else expr.by_input(inputs)


def _joined_texts(between: tuple[str, ...], columns: list[list[str]]) -> list[str]:
    """`between[0] + v0 + between[1] + v1 + … + between[k]` for each element: the pieces of all the
    elements laid out by slice assignments, joined once and split at the line breaks put after each
    (an escaped label value has none), instead of an f-string function called per element (200
    texts of 4 labels: 23 µs against 30)."""
    n, k = len(columns[0]), len(columns)
    stride = 2 * k + 1
    pieces: list[str] = [""] * (stride * n)
    for j, column in enumerate(columns):
        pieces[2 * j::stride] = [between[j]] * n
        pieces[2 * j + 1::stride] = column
    pieces[2 * k::stride] = [between[k] + "\n"] * n
    return "".join(pieces)[:-1].split("\n")


def _lines(sample_name: str, texts: list[str], numbers: list[str]) -> str:
    """`f"{sample_name}{text} {number}\\n"` for each element, joined: one join of the pieces laid out by
    slice assignments (200 lines: 6 µs against 14 for a comprehension of f-strings). The first name is a
    piece too: `sample_name + "".join(…)` would copy all the lines a second time."""
    n = len(texts)
    pieces: list[str] = [" "] * (4 * n + 1)
    pieces[0::4] = ["\n" + sample_name] * (n + 1)
    pieces[0] = sample_name
    pieces[1::4] = texts
    pieces[3::4] = numbers
    pieces[-1] = "\n"
    return "".join(pieces)


def _kept_lines(known: _KnownTexts, chunk: _Chunk, sample_name: str, numbers: _Numbers) -> bytes | None:
    """What `_lines` gives, in UTF-8, for a chunk kept across probes: the pieces of its lines but the numbers
    (`name{labels} `, with the line break before it) are kept with it in UTF-8, by sample name, so that its lines
    are one slice assignment of the numbers' bytes and one join of 2n+1 pieces (200 lines: 2.7 µs against 7.5), never
    encoded again (exposition._chunks writes them as they are). None when the chunk is not kept, or its lines
    would take the lines kept beyond _KNOWN_LINE_BYTES."""
    pieces = None if chunk.lines is None else chunk.lines.get(sample_name)
    if pieces is None:
        characters = chunk.size + len(chunk.texts) * (len(sample_name) + 2)  # each text, with the name before it and a space and a line break
        if chunk.kept is not known.token or not chunk.texts or known.line_bytes + characters > _KNOWN_LINE_BYTES:
            return None
        try:
            prefixes = [f"\n{sample_name}{text} ".encode() for text in chunk.texts]
        except UnicodeEncodeError:  # a lone surrogate (escaped label values have none): the text's way, whose encoding replaces it
            return None
        size = sum(map(len, prefixes))  # bytes: more than its characters when a text is not ASCII
        if known.line_bytes + size > _KNOWN_LINE_BYTES:
            return None
        known.line_bytes += size
        chunk.line_bytes += size
        prefixes[0] = prefixes[0][1:]
        prefixes.append(b"\n")
        pieces = [b""] * len(prefixes) * 2
        pieces[0::2] = prefixes
        pieces.pop()
        if chunk.lines is None:
            chunk.lines = {}
        chunk.lines[sample_name] = pieces
    pieces = pieces.copy()
    # number texts have no comma (format_value writes digits, a point, an exponent, NaN, +Inf, -Inf)
    pieces[1::2] = numbers.split(b",") if isinstance(numbers, bytes) else ",".join(numbers).encode().split(b",")
    return b"".join(pieces)


def _texts(numbers: _Numbers) -> list[str]:
    """A column's number texts as texts, one per element."""
    return numbers.decode().split(",") if isinstance(numbers, bytes) else numbers


def _value_columns(metric: Metric, outputs: list[_Output], fields: _Fields) -> list[_Numbers] | None:
    """For each output, the number text of each element; None when one needs the element loop."""
    if metric.type == "info":
        return [b",".join([b"1"] * len(fields.elements))] * len(outputs)
    columns: list[_Numbers] = []
    for _, expr, plain, *_ in outputs:
        assert expr is not None
        try:
            raws = fields.values(expr, plain)
        except Exception:
            return None
        numbers = _number_texts(raws, metric, expr)
        if numbers is None:
            return None
        columns.append(numbers)
    return columns


def _column(expr: Expression, plain: str | None, elements: list[Any]) -> list[Any]:
    """What `search` gives for each element; lookups at C speed for a plain field, of dicts or of a
    projection's objects (then TypeError or AttributeError when an element is not an object: the caller
    goes element by element). map of dict.get: 15 µs per 512 elements against 19 for a comprehension of e.get."""
    if plain is not None:
        return objects.column(plain, elements)
    if expr.columns is None:
        return list(map(expr.search, elements))
    at_once = expr.columns(elements)  # calls by columns (bench/README.md)
    # else the direct calls row by row, counted as a column of them (spec/functions.bounded_column): past the bound, the caller
    # goes element by element
    return at_once if at_once is not None else bounded_column(expr.search, [elements], f"expression {expr.source!r}")


def _all_objects(elements: list[Any]) -> bool:
    """Whether every element is an object: a dict, or a projection's object (spec/objects.py), all of one kind."""
    kinds = set(map(type, elements))
    return kinds == _DICT or (len(kinds) == 1 and issubclass(next(iter(kinds)), objects.Fields))


_STR, _INT, _FLOAT, _BOOL, _NUMBERS, _DICT, _NONE = {str}, {int}, {float}, {bool}, {int, float}, {dict}, {type(None)}


def _number_texts(raws: list[Any], metric: Metric, expr: Expression) -> _Numbers | None:
    """The sample values of answers as text; None when one of them is not a number."""
    written = _written_texts(raws, metric, expr)
    if written is not None:
        return written
    kinds = set(map(type, raws))
    scale = metric.scale
    try:
        if kinds <= _NUMBERS:
            exact = kinds == _INT and scale > 0  # no NaN, and the sign is the integer's: min() says it at C speed
            low = min(raws) if exact else None
            if metric.type == "counter" and not (low >= 0 if low is not None else all(raw * scale >= 0 for raw in raws)):
                return None  # a negative or NaN count is an error of its series: element by element
            if low is not None and scale == 1.0 and low > -EXACT_LIMIT and max(raws) < EXACT_LIMIT:
                return orjson.dumps(raws)[1:-1]  # str() of each
            floats = (raws if kinds == _FLOAT else list(map(float, raws))) if scale == 1.0 else [float(raw * scale) for raw in raws]
            return _float_bytes(floats) or list(map(format_value, floats))
        if kinds == _BOOL:  # orjson's `true,false,…` with the texts put in (number texts have neither word): a third of a comprehension's time
            true_text, false_text = (format_value(sample_value(raw, metric, expr)).encode() for raw in (True, False))
            return orjson.dumps(raws)[1:-1].replace(b"false", false_text).replace(b"true", true_text)
        return [format_value(sample_value(raw, metric, expr)) for raw in raws]
    except Exception:  # not a number, null without a default, too large for a float
        return None


_NUMBER_BYTES = b"0123456789,.-"  # all that orjson writes of a list of numbers in positional form (beside its brackets)
_BOOL_BYTES = b"truefals,"  # of a list of booleans: no other JSON value is written with these letters alone
_EXACT = 10**15  # EXACT_LIMIT as an integer: compared with integers at C speed, without making each a float


def _written_texts(raws: list[Any], metric: Metric, expr: Expression) -> bytes | None:
    """What `_number_texts` gives, for the columns orjson's text of them says are all integers, all fractions or
    all booleans: the kinds told by the bytes written (what `_histogram_texts` and `_float_texts` write anyway) instead
    of a set of the values' types and a scan for the least (200 values: about 3 us against 20). An integer is
    written with digits and a sign alone, a float always with a point or an exponent, NaN and infinities as
    null, a text quoted; None for any other column, and for ones that need more than a look at the text (a
    scale, a negative count, values too large or small to be written as they are): `_number_texts` goes on."""
    if not raws or metric.scale != 1.0:  # scaled values are floats made one by one: orjson's text of the answer's tells nothing
        return None
    try:
        written = orjson.dumps(raws)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, a value that is no JSON
        return None
    if written.translate(None, _NUMBER_BYTES) == b"[]":  # numbers, none in exponent form, none NaN or infinite
        # bytes.find, not `in`: `b"-" in written` first tries b"-" as an integer, a TypeError made and dropped each
        # time (about 1.9 kIr, callgrind: 19 kIr of bench/'s probe, any size)
        if metric.type == "counter" and written.find(b"-") >= 0:
            return None  # a negative count (an error of its series): element by element
        points = written.count(b".")
        if points == 0:  # integers (bools are written as words): exact below EXACT_LIMIT, as str() writes them
            if max(raws) >= _EXACT or (written.find(b"-") >= 0 and min(raws) <= -_EXACT):
                return None
        # else fractions, each with its point (an integer among them is none): orjson's shortest digits are repr's where
        # neither writes an exponent, format_value's below 1e6; not integral (`2.0`: format_value writes `2`) and not below
        # 1e-4, where orjson's form is positional and repr's not (a "0.0000" inside a larger number, as 10.00001, is left
        # to _number_texts too)
        elif (points != len(raws) or written.find(b".0,") >= 0 or written.endswith(b".0]") or written.find(b"0.0000") >= 0
              or max(raws) >= 1e6):
            return None
        return written[1:-1]
    if written.translate(None, _BOOL_BYTES) == b"[]":  # booleans: orjson's `true,false,…` with the texts put in
        try:
            true_text, false_text = (format_value(sample_value(raw, metric, expr)).encode() for raw in (True, False))
        except Exception:  # a negative count: an error of its series
            return None
        return written[1:-1].replace(b"false", false_text).replace(b"true", true_text)
    return None


def _float_texts(values: list[float]) -> list[str]:
    """`format_value` of each value (`_float_bytes`, or one by one)."""
    written = _float_bytes(values)
    return written.decode().split(",") if written is not None else list(map(format_value, values))


def _float_bytes(values: list[float]) -> bytes | None:
    """`format_value` of each value, a comma between two, when that is repr (none integral, all finite and
    below 1e6), written by orjson at once where its shortest digits are repr's, positional from 1e-4 to
    1e16; what orjson writes tells the integral (`2.0`) and the NaN or infinite (`null`) ones apart
    (200 values in about 0.6 of the time that checking them on the numbers took, and a fifth of repr one by one's).
    None otherwise."""
    if values:
        low = min(values)
        if max(values) < 1e6 and (low >= 1e-4 or (low > -1e16 and min(map(abs, values)) >= 1e-4)):  # NaN may hide from both: null below
            written = orjson.dumps(values)
            if b"e" not in written and b"n" not in written and b".0," not in written and not written.endswith(b".0]"):
                return written[1:-1]
    return None


def _one_by_one(metric: Metric, plan: _FastPlan, outputs: list[_Output], elements: list[Any], result: Extraction,
                held: list[dict[str, Any]] | None = None) -> None:
    """The fast path for elements that need more than columns: an element whose labels fail loses
    its series, a value that fails loses its series, each reported; with `held`, the series wait
    for the rule's last element (`duplicates: last` keeps the value's text, `sum` adds the value)."""
    is_info = metric.type == "info"
    template, slots = plan.template, plan.slots
    for element in elements:
        try:
            texts = _bounded_texts(plan.names, [label_text(search(element)) for search in plan.label_searches], result.bounds)
        except Exception as exc:  # a label failing drops this element's series only
            for name, *_ in outputs:
                result.error(name, f"labels: {_reason(exc)}")
            continue
        key = template % tuple(escaped(texts[i]) for i in slots)
        for index, (name, expr, _, sample_name, family) in enumerate(outputs):
            if is_info:
                number = 1.0
            else:
                assert expr is not None
                try:
                    number = sample_value(expr.search(element), metric, expr)
                except Exception as exc:
                    shown = dict(zip(plan.names, (*texts, *plan.static_texts), strict=True))  # in the rule's order
                    result.error(name, f"{_reason(exc)} (labels {shown})")
                    continue
            if held is not None:
                kept = held[index]
                before = kept.get(key)
                if metric.duplicates == "sum":
                    kept[key] = number if before is None else before + number
                else:
                    kept[key] = format_value(number)
                continue
            if _new_series(result, name, family, key):
                family.parts.append(sample_line(sample_name, key, number))


def _reason(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        # an answer nested about as deep as the parser takes (orjson's 1,024 levels): json.dumps (a label, to_string)
        # and JMESPath recurse once a level, and Python's stack ends first
        return f"a value nested too deeply to be written as text (a call per level, past Python's recursion limit of {sys.getrecursionlimit()})"
    return str(exc) if isinstance(exc, ExtractionError | FunctionError) else f"{type(exc).__name__}: {exc}"


def _states(metric: Metric, pairs: list[tuple[str, str]], raw: Any) -> list[tuple[Labels, float]]:
    current = _state_text(raw)
    if current is None:
        raise ExtractionError("state is null or missing")
    samples = [(tuple(sorted([*pairs, (metric.name, state)])), 1.0 if state == current else 0.0) for state in metric.states]
    if current not in metric.states:
        raise _UnknownState(current, samples)
    return samples


class _UnknownState(ExtractionError):
    def __init__(self, state: str, samples: list[tuple[Labels, float]]) -> None:
        super().__init__(f"state {state!r} is not in states")
        self.samples = samples


# -- histograms and summaries: what the answer gives, checked, in the form Prometheus's parsers accept
# (buckets cumulative, sorted by bound, ending with +Inf, the count equal to it; quantiles between 0 and 1)


def _distribution_series(metric: Metric, sample_name: str, element: Any, ctx: dict[str, Any] | None, pairs: list[tuple[str, str]],
                         search: _Search = _search) -> _Series:
    """All the samples of one histogram or summary series. Raises ExtractionError."""
    d = metric.distribution
    assert d is not None
    labels = tuple(sorted(pairs))
    raw_count = None if d.count is None else search(d.count, element, ctx)
    # a histogram without its count has it in the +Inf bucket; a summary says it or has none
    count = None if d.count is None or (raw_count is None and metric.type == "histogram") else _observed(raw_count, "count", d.count)
    raw = search(d.points, element, ctx)
    samples: _Samples = []
    scale = metric.scale  # of the observations (bounds, quantile values, sum), never of counts
    if metric.type == "histogram":  # the buckets first: what a missing distribution is reported as
        buckets = histogram_buckets(raw, d.cumulative, count, d.points.source)
        samples.extend((f"{sample_name}_bucket", _with(labels, "le", _scaled(bound, scale)), n) for bound, n in buckets)
        count = buckets[-1][1]
    else:
        samples.extend((sample_name, _with(labels, "quantile", q), _scaled(v, scale)) for q, v in summary_quantiles(raw, d.points.source))
    total = None if d.sum is None else _scaled(_observed(search(d.sum, element, ctx), "sum", d.sum), scale)
    if total is not None and metric.type == "histogram" and buckets[0][0] < 0:
        raise ExtractionError(f"bucket le={format_bound(buckets[0][0])} is negative: OpenMetrics allows no _sum then")
    if count is not None:
        samples.append((f"{sample_name}_count", labels, count))
    if total is not None:
        samples.append((f"{sample_name}_sum", labels, total))
    _check_finite(samples, sample_name)
    return labels_text(labels), samples


def _check_finite(samples: _Samples, sample_name: str) -> None:
    """Every count and the sum of a distribution finite: counts added up (`cumulative: false`) or a sum
    scaled beyond the largest float (1.8e308) are +Inf, which counts no observations (OpenMetrics parsers
    reject it as a count) and sums none. Raises ExtractionError."""
    for name, labels, value in samples:
        if name != sample_name and not math.isfinite(value):  # a summary's quantiles are values, not counts or sums
            what = f"bucket le={dict(labels)['le']}" if name.endswith("_bucket") else name.rpartition("_")[2]
            raise ExtractionError(f"{what} is {format_value(value)}: counts and sums must be finite "
                                  "(the answer's add up, or scale, beyond the largest float)")


def _scaled(value: float, scale: float) -> float:
    """`value * scale` in decimal, so that a bound in milliseconds becomes the `le` a user wrote (700 ms: 0.7, not 0.7000000000000001)."""
    if scale == 1.0 or not math.isfinite(value):
        return value
    return float(Decimal(repr(value)) * Decimal(repr(scale)))


def _scaled_all(values: list[float], scale: float) -> list[float]:
    """`_scaled` of each value. For a scale that is a power of ten (0.001), the decimal product is the
    value's shortest digits with the exponent moved: float() of that text rounds it as float(Decimal) does."""
    if scale == 1.0:
        return values
    exponent = _ten_to(scale)
    if exponent is None:
        return [_scaled(value, scale) for value in values]
    suffix = f"e{exponent}"
    written = orjson.dumps(values)  # repr's digits, as `_float_texts` has them, but in one call
    if values and b"e" not in written and b"n" not in written:  # no exponent form, no inf or nan (null)
        if -20 <= exponent <= 20:  # 1e-4 to 1e16 scaled: no overflow, nothing subnormal
            # read back as the JSON parser reads every answer's numbers (float()'s rounding): a fifth of float()'s time
            end = suffix.encode() + b"]"
            scaled: list[float] = orjson.loads(written[:-1].replace(b",", end[:-1] + b",") + end)
            return scaled
        return list(map(float, written[1:-1].decode().replace(",", suffix + ",").__add__(suffix).split(",")))
    return [_scaled(value, scale) if "e" in text or "n" in text else float(text + suffix)  # exponent form, inf, nan: as `_scaled`
            for value, text in zip(values, map(float.__repr__, values), strict=True)]


@functools.cache
def _ten_to(scale: float) -> int | None:
    """n when `scale` is written 10**n (repr: 0.001, 1e-05, 1000.0), else None."""
    sign, digits, exponent = Decimal(repr(scale)).normalize().as_tuple()
    return exponent if sign == 0 and digits == (1,) and isinstance(exponent, int) else None


def _with(labels: Labels, name: str, bound: float) -> Labels:
    return tuple(sorted([*labels, (name, format_bound(bound))]))


def _observed(raw: Any, what: str, expr: Expression) -> float:
    """A sum or count as a number; null, text that is no number, a negative or NaN one, a count that is
    not a whole number raise ExtractionError."""
    if raw is None:
        raise ExtractionError(f"{what} {expr.source!r} is null or missing")
    value = _number(raw, what)
    if what == "count" and not _is_count(value):
        raise ExtractionError(f"count {format_value(value)} is not a whole number of observations (OpenMetrics parsers reject it)")
    if not value >= 0:
        raise ExtractionError(f"{what} {format_value(value)} is negative or NaN: OpenMetrics parsers reject it")
    return value


def _is_count(value: float) -> bool:
    return value >= 0 and value.is_integer()


def _number(raw: Any, what: str) -> float:
    if type(raw) in (int, float):
        return float(raw)
    if type(raw) is str:
        try:
            return parse_number(raw)
        except ValueError as exc:
            raise ExtractionError(f"{what}: {exc}") from None
    raise ExtractionError(f"{what} {shorten(raw, 40)} is not a number")


def _bucket_pairs(raw: Any, source: str) -> list[tuple[Any, Any]]:
    """(bound, count) as the answer gives them: an object, a list of {le, count} or of [le, count]."""
    if type(raw) is dict:
        return list(raw.items())
    if type(raw) is not list:
        raise ExtractionError(f"buckets {source!r} gave {shorten(raw, 40)}, not an object or a list" if raw is not None
                              else f"buckets {source!r} is null or missing")
    pairs = []
    for item in raw:
        if type(item) is dict and "le" in item and "count" in item:
            pairs.append((item["le"], item["count"]))
        elif type(item) is list and len(item) == 2:
            pairs.append((item[0], item[1]))
        else:
            raise ExtractionError(f"bucket {shorten(item, 40)} is neither {{le, count}} nor [le, count]")
    return pairs


def histogram_buckets(raw: Any, cumulative: bool, count: float | None, source: str) -> list[tuple[float, float]]:
    """(bound, cumulative count) sorted by bound, ending with +Inf (from `count` when the answer has no
    +Inf bucket). Raises ExtractionError for buckets that decrease, a count below them, a bound twice."""
    buckets = sorted((_number(le, "bucket bound"), _number(n, "bucket count")) for le, n in _bucket_pairs(raw, source))
    total = 0.0
    for i, (bound, n) in enumerate(buckets):
        where = f"bucket le={format_bound(bound)}"
        if math.isnan(bound):
            raise ExtractionError("bucket bound NaN")
        if i and bound == buckets[i - 1][0]:
            raise ExtractionError(f"{where} is given twice")
        if not _is_count(n):
            raise ExtractionError(f"{where} has the count {format_value(n)}, not a whole number of observations (OpenMetrics parsers reject it)")
        if cumulative:
            if n < total:
                raise ExtractionError(f"cumulative buckets decrease: {where} has {format_value(n)}, below {format_value(total)} "
                                      "(`cumulative: false` if the answer counts each bucket on its own)")
            total = n
        else:
            total += n
            buckets[i] = (bound, total)
    if not buckets or buckets[-1][0] != math.inf:
        if count is None:
            raise ExtractionError(f"buckets {source!r} have no +Inf bucket, and the rule no `count` to make it from")
        if count < total:
            raise ExtractionError(f"count {format_value(count)} is below the largest bucket ({format_value(total)})")
        buckets.append((math.inf, count))
    elif count is not None and count != total:
        raise ExtractionError(f"count {format_value(count)} differs from the +Inf bucket ({format_value(total)})")
    return buckets


_PERCENTILE = re.compile(r"[pP]([0-9]+(?:\.[0-9]+)?)")


def _quantile(key: str) -> float:
    """`0.99`, or `p99` (the first two digits are the percent, the others its decimals: p999 = 0.999; p100 = 1; p99.9 as written)."""
    match = _PERCENTILE.fullmatch(key)
    if match is None:
        q = _number(key, "quantile")
    else:
        digits = match[1]
        percent = digits if "." in digits or len(digits) <= 2 or digits == "100" else f"{digits[:2]}.{digits[2:]}"
        q = float(Decimal(percent) / 100)
    if not 0 <= q <= 1:
        raise ExtractionError(f"quantile {shorten(key, 40)} is not between 0 and 1")
    return q


def summary_quantiles(raw: Any, source: str) -> list[tuple[float, float]]:
    """(quantile, value) sorted by quantile. Raises ExtractionError."""
    if type(raw) is not dict:
        raise ExtractionError(f"quantiles {source!r} gave {shorten(raw, 40)}, not an object" if raw is not None
                              else f"quantiles {source!r} is null or missing")
    points = sorted((_quantile(str(key)), _number(value, f"quantile {shorten(str(key), 20)}")) for key, value in raw.items())
    for i, (q, value) in enumerate(points):
        if i and q == points[i - 1][0]:
            raise ExtractionError(f"quantile {format_bound(q)} is given twice")
        if value < 0:
            raise ExtractionError(f"quantile {format_bound(q)} has the negative value {format_value(value)}: OpenMetrics parsers reject it")
    return points


def extract(module: Module, documents: Mapping[str, Any], probe: ProbeContext, static: Labels = (), trace: Trace | None = None,
            series_limit: int = 0, bounds: Bounds = Bounds(), deadline: float | None = None) -> Extraction:
    """Apply every rule of `module` to the documents of the endpoints that answered; raise
    SeriesLimitExceeded when they give more than `series_limit` series (0: no limit),
    BodySizeLimitExceeded when their text passes `bounds.body_size_limit`, DeadlinePassed when
    `deadline` (a time.monotonic()) passes first."""
    return run(_extract_steps(module, documents, probe, static, trace, series_limit, bounds), deadline)


async def extract_async(module: Module, documents: Mapping[str, Any], probe: ProbeContext, static: Labels = (), trace: Trace | None = None,
                        deadline: float | None = None, series_limit: int = 0, bounds: Bounds = Bounds()) -> Extraction:
    """`extract` on the event loop, in slices: a big document does not delay the other requests.
    Raises DeadlinePassed (slices.py) when `deadline` passes first, SeriesLimitExceeded when the
    rules give more than `series_limit` series (0: no limit)."""
    return await run_sliced(_extract_steps(module, documents, probe, static, trace, series_limit, bounds), deadline=deadline)


def _series(result: Extraction) -> int:
    return sum(len(family.keys) for family in result.families.values()) + result.uncounted


def _extract_steps(module: Module, documents: Mapping[str, Any], probe: ProbeContext, static: Labels, trace: Trace | None,
                   series_limit: int = 0, bounds: Bounds = Bounds()) -> Steps[Extraction]:
    names = module.fast_plans.get(_output_names)  # keyed by the function, as `_KnownTexts`
    if names is None:
        names = module.fast_plans[_output_names] = _output_names(module.metrics)
    result = Extraction(errors=names.copy(), duplicates=names.copy(), bounds=bounds)  # every output counted, 0 unless it errs
    known = module.fast_plans.get(_KnownTexts)  # keyed by the class: no rule's plan has that key
    if known is None:
        known = module.fast_plans[_KnownTexts] = _KnownTexts()
    shared = module.fast_plans.get(_shared_fields)  # keyed by the function, as `_KnownTexts`
    if shared is None:
        shared = module.fast_plans[_shared_fields] = _shared_fields(module.metrics)
    plans = module.fast_plans.get(_FastPlan)  # keyed by the class, as `_KnownTexts`: emptied when full (`_cached_plan`), alone
    if plans is None:
        plans = module.fast_plans[_FastPlan] = {}
    memo = _Memo(plans=plans, known=known, shared=shared, bounds=bounds)
    for metric in module.metrics:
        if metric.endpoint not in documents:
            continue  # its endpoint failed; that is reported per endpoint, not per metric
        if trace is not None:
            trace.add(f"metric {metric.name} (endpoint {metric.endpoint}):")
        uncounted = result.uncounted
        try:
            # counted at every step, so that the series kept before failing stay about a step's worth
            for _ in _apply(metric, documents[metric.endpoint], probe, static, result, trace, memo):
                if series_limit and _series(result) > series_limit:
                    raise SeriesLimitExceeded(series_limit)
                _check_size(result)
                yield
        except (SeriesLimitExceeded, BodySizeLimitExceeded):
            raise
        except Exception as exc:  # a fault of ours in this rule (never DeadlinePassed or a cancellation: BaseExceptions)
            _rule_failed(metric, exc, result, trace)
            result.uncounted = uncounted  # what it held back goes with it
    if series_limit and _series(result) > series_limit:
        raise SeriesLimitExceeded(series_limit)
    _check_size(result)
    failed = result.faults
    result.families = {k: f for k, f in result.families.items() if f.parts and k not in failed}
    return result


def _rule_failed(metric: Metric, exc: Exception, result: Extraction, trace: Trace | None) -> None:
    """A rule that raised what extraction does not expect (a fault of ours): each of its metrics fails alone, with
    no series in this probe (those of other rules into it too: never a part of one), an extraction error said
    by the exception's kind and our line (problems.fault), never its text, which can quote an answer's value."""
    said = f"internal_error: {fault(exc)}"
    for output in metric.outputs:
        result.faults.setdefault(output.name, said)
        result.error(output.name, said)
    if trace is not None:
        trace.add(f"  rule {metric.name}: {said}")


def _output_names(metrics: Iterable[Metric]) -> dict[str, int]:
    """Every output's name, in the rules' order, with 0: the errors and duplicates of an extraction before it begins."""
    return dict.fromkeys((output.name for metric in metrics for output in metric.outputs), 0)


def _check_size(result: Extraction) -> None:
    """BodySizeLimitExceeded when the families' text passes the limit: what they added since the last
    check is measured (a fast-path part holds a chunk's lines, a general-path one a series)."""
    limit = result.bounds.body_size_limit
    if not limit:
        return
    for name, family in result.families.items():
        parts, done = family.parts, result.measured.get(name, 0)
        if len(parts) > done:
            result.written += sum(map(_part_size, itertools.islice(parts, done, None)))
            result.measured[name] = len(parts)
    if result.written > limit:
        raise BodySizeLimitExceeded(limit)


def _part_size(part: Any) -> int:
    """About the bytes of a part in the answer: the same whether its lines are kept in UTF-8 (`_kept_lines`) or written as
    text (isascii() reads a flag the text keeps: only a text that is not ASCII is measured in UTF-8)."""
    if type(part) is bytes or (type(part) is str and part.isascii()):
        return len(part)
    if type(part) is str:
        return len(part.encode("utf-8", "replace"))
    sample_name, labels, _, _ = part  # a sample left to the writer (with a timestamp): about its line
    return len(sample_name) + sum(len(name) + len(value) + 4 for name, value in labels) + 48
