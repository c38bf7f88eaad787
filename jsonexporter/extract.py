"""Compiled rules applied to parsed JSON documents, producing metric families.

Knows nothing of HTTP: it gets the documents of a module's endpoints and returns series,
extraction errors and duplicates counted per metric. A failing rule never drops the others.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jsonexporter.exposition import Family, Labels, Sample
from jsonexporter.labeltext import label_text
from jsonexporter.slices import Steps, run, run_sliced
from jsonexporter.spec.expressions import Expression, Search
from jsonexporter.spec.model import Level, Metric, Module
from jsonexporter.trace import Trace, shorten

MAX_MESSAGES = 20  # error messages kept per probe for the log and the trace
_DEFAULT_HELP = "Extracted by jsonexporter."
_STEP = 256  # elements between two steps of a rule (see slices.py)


class ExtractionError(Exception):
    pass


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

    def error(self, metric: str, message: str) -> None:
        self.errors[metric] = self.errors.get(metric, 0) + 1
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(f"metric {metric}: {message}")


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
            return float(raw.strip())
        except ValueError:
            hint = f" and not in value_map ({', '.join(value_map)})" if value_map else "; map it with value_map"
            raise ExtractionError(f"{shorten(raw, 60)} is not a number{hint}") from None
    raise ExtractionError(f"expected a number, got {'a list' if kind is list else 'an object'}")


def to_timestamp(raw: Any, scale: float) -> float | None:
    if raw is None:
        return None
    if type(raw) in (int, float):
        seconds = float(raw) * scale
    elif type(raw) is str:
        try:
            seconds = datetime.fromisoformat(raw).timestamp()
        except ValueError:
            raise ExtractionError(f"timestamp {shorten(raw, 60)} is neither a number nor RFC 3339") from None
    else:
        raise ExtractionError(f"timestamp {shorten(raw, 60)} is not a number")
    if not math.isfinite(seconds):
        raise ExtractionError("timestamp is not finite")
    return seconds


def _state_text(raw: Any) -> str | None:
    if raw is None:
        return None
    return label_text(raw)


def _search(expr: Expression, element: Any, ctx: dict[str, Any] | None) -> Any:
    return expr.search(ctx if expr.on_context else element)


def _elements(metric: Metric, doc: Any, base: dict[str, Any] | None, trace: Trace | None) -> Iterator[tuple[Any, dict[str, Any] | None]]:
    """Every element of the (nested) iteration, with its context when the rule uses `$`."""
    if not metric.each:
        yield doc, base
        return
    last = len(metric.each) - 1
    traced: set[int] = set()

    def walk(depth: int, element: Any, parent: dict[str, Any] | None) -> Iterator[tuple[Any, dict[str, Any] | None]]:
        level = metric.each[depth]
        collection = _search(level.path, element, parent)
        if trace is not None and depth not in traced:
            traced.add(depth)
            trace.add(f"  each[{depth}] {level.path.source!r} -> {shorten(collection)}")
        if type(collection) is list:
            entries: Any = ((None, i, item) for i, item in enumerate(collection))
        elif type(collection) is dict:
            entries = ((key, i, item) for i, (key, item) in enumerate(collection.items()))
        elif collection is None:
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


def _sample_name(metric: Metric, output_name: str) -> str:
    if metric.type == "counter" and not output_name.endswith("_total"):
        return output_name + "_total"
    return output_name


def _apply(metric: Metric, doc: Any, probe: ProbeContext, static: Labels, result: Extraction, trace: Trace | None, memo: _LabelMemo) -> Steps[None]:
    plan = _fast_plan(metric, static) if trace is None else None
    if plan is not None:
        yield from _apply_fast(metric, plan, doc, result, memo)
    else:
        yield from _apply_general(metric, doc, probe, static, result, trace)


def _apply_general(metric: Metric, doc: Any, probe: ProbeContext, static: Labels, result: Extraction, trace: Trace | None) -> Steps[None]:
    """Every rule, traced or not: the reference the fast path is tested against."""
    base = None
    if metric.uses_context:
        base = {"key": None, "index": None, "item": doc, "parent": None, "root": doc,
                "target": probe.target, "module": probe.module, "params": dict(probe.params)}
    families = []
    for output in metric.outputs:
        family = result.families.get(output.name)
        if family is None:
            family = result.families[output.name] = Family(output.name, metric.type, output.help or metric.help or _DEFAULT_HELP)
        families.append((output, family, _sample_name(metric, output.name), set(_seen(family))))
    label_exprs = metric.labels
    is_info, is_stateset = metric.type == "info", metric.type == "stateset"
    scale = metric.scale
    traced = 0
    try:
        for element, ctx in _elements(metric, doc, base, trace):
            show = trace is not None and traced < 3
            traced += 1
            if traced % _STEP == 0:
                yield
            try:
                pairs = [(name, label_text(_search(expr, element, ctx))) for name, expr in label_exprs]
                ts = None
                if metric.timestamp is not None:
                    ts = to_timestamp(_search(metric.timestamp, element, ctx), metric.timestamp_scale)
            except Exception as exc:  # a label failing drops this element's series only
                for output, *_ in families:
                    result.error(output.name, f"labels: {_reason(exc)}")
                continue
            pairs.extend(static)
            for output, family, sample_name, seen in families:
                try:
                    if is_info:
                        samples = [(sample_name, tuple(sorted(pairs)), 1.0, ts)]
                    else:
                        assert output.value is not None
                        raw = _search(output.value, element, ctx)
                        if show and trace is not None:
                            trace.add(f"    {output.name}: value {output.value.source!r} -> {shorten(raw)}; labels {dict(pairs)}")
                        if is_stateset:
                            samples = _states(metric, sample_name, pairs, raw, ts)
                        else:
                            value = to_number(raw, metric.value_map)
                            if value is None:
                                if metric.default is None:
                                    raise ExtractionError(f"value {output.value.source!r} is null or missing")
                                value = metric.default  # not scaled
                            elif scale != 1.0:
                                value *= scale
                            samples = [(sample_name, tuple(sorted(pairs)), value, ts)]
                except _UnknownState as exc:  # still a complete set of states, all 0
                    result.error(output.name, f"{exc} (labels {dict(pairs)})")
                    samples = exc.samples
                except Exception as exc:
                    result.error(output.name, f"{_reason(exc)} (labels {dict(pairs)})")
                    continue
                for sample in samples:
                    key = (sample[0], sample[1])
                    if key in seen:
                        result.duplicates[output.name] = result.duplicates.get(output.name, 0) + 1
                        continue
                    seen.add(key)
                    family.samples.append(sample)
    except Exception as exc:  # the iteration itself failed: this rule gives no (more) series
        for output, *_ in families:
            result.error(output.name, _reason(exc))
    if trace is not None:
        trace.add(f"  rule {metric.name}: {traced} element(s)")


@dataclass(frozen=True, slots=True)
class _FastPlan:
    """A rule as the fast path runs it. Label names are sorted once per rule instead of once per
    sample; plain field expressions become dict lookups."""

    names: tuple[str, ...]  # the rule's labels in its order, then the module's
    static_texts: list[str]  # the module's label values
    label_searches: tuple[Search, ...]  # the rule's label expressions, in its order
    label_fields: tuple[str, ...] | None  # their field names, when each is one plain field
    sorted_names: tuple[str, ...]
    sort: Callable[[list[str]], tuple[str, ...]]  # label values in `names` order -> in `sorted_names` order
    label_key: tuple[tuple[str, str], ...]  # rules with the same key give an element the same labels


@dataclass(slots=True)
class _LabelMemo:
    """The labels that elements got from earlier rules of a probe, by label key and id(element).
    The collections the elements came from are kept, so that no id is reused meanwhile."""

    labels: dict[tuple[tuple[str, str], ...], dict[int, Labels]] = field(default_factory=dict)
    keep: list[Any] = field(default_factory=list)


def _fast_plan(metric: Metric, static: Labels) -> _FastPlan | None:
    """The plan when the rule needs none of what only the general path does: the probe context
    (`$`), timestamps, stateset expansion; None otherwise."""
    if metric.type == "stateset" or metric.timestamp is not None or metric.uses_context:
        return None
    names = tuple(name for name, _ in metric.labels) + tuple(name for name, _ in static)
    if len(set(names)) != len(names):
        return None  # the general path's sort also orders by value then
    order = sorted(range(len(names)), key=names.__getitem__)
    identity = order == list(range(len(order)))  # a non-identity order has two names or more
    sort: Callable[[list[str]], tuple[str, ...]] = tuple if identity else operator.itemgetter(*order)
    label_exprs = [expr for _, expr in metric.labels]
    fields = [e.fields[0] if e.fields is not None and len(e.fields) == 1 else None for e in label_exprs]
    return _FastPlan(
        names=names,
        static_texts=[value for _, value in static],
        label_searches=tuple(e.search for e in label_exprs),
        label_fields=tuple(f for f in fields if f is not None) if None not in fields else None,
        sorted_names=tuple(names[i] for i in order),
        sort=sort,
        label_key=tuple((name, expr.source) for name, expr in metric.labels),
    )


def _plain_elements(levels: tuple[Level, ...], doc: Any, keep: list[Any]) -> Iterator[Any]:
    """The elements of a (nested) iteration, without the context that only `$` needs."""
    if not levels:
        yield doc
    elif len(levels) == 1:
        yield from _items(levels[0], doc, keep)
    else:
        for item in _items(levels[0], doc, keep):
            yield from _plain_elements(levels[1:], item, keep)


def _items(level: Level, element: Any, keep: list[Any]) -> Iterable[Any]:
    """What one level iterates; the collection is appended to `keep`."""
    collection = level.path.search(element)
    keep.append(collection)
    if type(collection) is list:
        return collection
    if type(collection) is dict:
        return collection.values()
    if collection is None:
        return ()
    raise ExtractionError(f"each {level.path.source!r} gave {shorten(collection, 40)}, not a list or object")


def _apply_fast(metric: Metric, plan: _FastPlan, doc: Any, result: Extraction, memo: _LabelMemo) -> Steps[None]:
    """What `_apply_general` does for the rules `_fast_plan` accepts, with the same output.
    `memo` holds the labels that earlier rules with the same labels gave each element: specs
    often have one rule per value over the same elements, and sharing one labels tuple also
    lets the writer render its text once."""
    outputs = []
    for output in metric.outputs:
        family = result.families.get(output.name)
        if family is None:
            family = result.families[output.name] = Family(output.name, metric.type, output.help or metric.help or _DEFAULT_HELP)
        sample_name = _sample_name(metric, output.name)
        seen = {s[1] for s in family.samples if s[0] == sample_name}  # within a family the sample name is the rule's
        value = output.value
        field = value.fields[0] if value is not None and value.fields is not None and len(value.fields) == 1 else None
        outputs.append((output.name, value, field, sample_name, seen, family.samples.append))
    is_info = metric.type == "info"
    value_map, default, scale = metric.value_map, metric.default, metric.scale
    scaled = scale != 1.0
    names, static_texts, sorted_names, sort = plan.names, plan.static_texts, plan.sorted_names, plan.sort
    label_searches, label_fields = plan.label_searches, plan.label_fields
    no_labels = [None] * len(label_searches)
    known_labels = memo.labels.setdefault(plan.label_key, {})
    memo.keep.append(doc)
    countdown = _STEP
    try:
        one_level = len(metric.each) == 1  # the common case, without a generator in between
        elements = _items(metric.each[0], doc, memo.keep) if one_level else _plain_elements(metric.each, doc, memo.keep)
        for element in elements:
            countdown -= 1
            if not countdown:
                countdown = _STEP
                yield
            labels = known_labels.get(id(element))
            if labels is None:
                try:
                    if label_fields is None:
                        raws = [search(element) for search in label_searches]
                    else:
                        raws = list(map(element.get, label_fields)) if type(element) is dict else no_labels
                    texts = [raw if type(raw) is str else label_text(raw) for raw in raws]
                except Exception as exc:  # a label failing drops this element's series only
                    for name, *_ in outputs:
                        result.error(name, f"labels: {_reason(exc)}")
                    continue
                if static_texts:
                    texts += static_texts
                labels = known_labels[id(element)] = tuple(zip(sorted_names, sort(texts), strict=True))
            for name, expr, field, sample_name, seen, append in outputs:
                if is_info:
                    number = 1.0
                else:
                    try:
                        raw: Any
                        if field is not None:
                            raw = element.get(field) if type(element) is dict else None
                        else:
                            assert expr is not None
                            raw = expr.search(element)
                        kind = type(raw)
                        if kind is float or kind is int:
                            number = raw * scale if scaled else float(raw)
                        else:
                            converted = to_number(raw, value_map)
                            if converted is not None:
                                number = converted * scale if scaled else converted
                            elif default is not None:
                                number = default  # not scaled
                            else:
                                assert expr is not None
                                raise ExtractionError(f"value {expr.source!r} is null or missing")
                    except Exception as exc:
                        shown = dict(labels)
                        result.error(name, f"{_reason(exc)} (labels { {n: shown[n] for n in names} })")  # in the rule's order
                        continue
                count = len(seen)
                seen.add(labels)
                if len(seen) == count:
                    result.duplicates[name] = result.duplicates.get(name, 0) + 1
                    continue
                append((sample_name, labels, number, None))
    except Exception as exc:  # the iteration itself failed: this rule gives no (more) series
        for name, *_ in outputs:
            result.error(name, _reason(exc))


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, ExtractionError) else f"{type(exc).__name__}: {exc}"


def _seen(family: Family) -> Iterator[tuple[str, Labels]]:
    return ((s[0], s[1]) for s in family.samples)


def _states(metric: Metric, name: str, pairs: list[tuple[str, str]], raw: Any, ts: float | None) -> list[Sample]:
    current = _state_text(raw)
    if current is None:
        raise ExtractionError("state is null or missing")
    samples = [(name, tuple(sorted([*pairs, (metric.name, state)])), 1.0 if state == current else 0.0, ts) for state in metric.states]
    if current not in metric.states:
        raise _UnknownState(current, samples)
    return samples


class _UnknownState(ExtractionError):
    def __init__(self, state: str, samples: list[Sample]) -> None:
        super().__init__(f"state {state!r} is not in states")
        self.samples = samples


def extract(module: Module, documents: Mapping[str, Any], probe: ProbeContext, static: Labels = (), trace: Trace | None = None) -> Extraction:
    """Apply every rule of `module` to the documents of the endpoints that answered."""
    return run(_extract_steps(module, documents, probe, static, trace))


async def extract_async(module: Module, documents: Mapping[str, Any], probe: ProbeContext, static: Labels = (), trace: Trace | None = None) -> Extraction:
    """`extract` on the event loop, in slices: a big document does not delay the other requests."""
    return await run_sliced(_extract_steps(module, documents, probe, static, trace))


def _extract_steps(module: Module, documents: Mapping[str, Any], probe: ProbeContext, static: Labels, trace: Trace | None) -> Steps[Extraction]:
    result = Extraction()
    memo = _LabelMemo()
    for metric in module.metrics:
        for output in metric.outputs:
            result.errors.setdefault(output.name, 0)
            result.duplicates.setdefault(output.name, 0)
        if metric.endpoint not in documents:
            continue  # its endpoint failed; that is reported per endpoint, not per metric
        if trace is not None:
            trace.add(f"metric {metric.name} (endpoint {metric.endpoint}):")
        yield from _apply(metric, documents[metric.endpoint], probe, static, result, trace, memo)
    result.families = {k: f for k, f in result.families.items() if f.samples}
    return result
