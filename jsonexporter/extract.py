"""Compiled rules applied to parsed JSON documents, producing metric families.

Knows nothing of HTTP: it gets the documents of a module's endpoints and returns series,
extraction errors and duplicates counted per metric. A failing rule never drops the others.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jsonexporter.exposition import Family, Labels, Sample
from jsonexporter.spec.expressions import Expression
from jsonexporter.spec.model import Metric, Module
from jsonexporter.trace import Trace, shorten

MAX_MESSAGES = 20  # error messages kept per probe for the log and the trace
_DEFAULT_HELP = "Extracted by jsonexporter."


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


def label_text(raw: Any) -> str:
    """A JSON value as a label value: integers exactly, booleans as true/false, null as empty."""
    if type(raw) is str:
        return raw
    if raw is None:
        return ""
    if raw is True or raw is False:
        return "true" if raw else "false"
    if type(raw) is int:
        return str(raw)
    if type(raw) is float:
        if raw.is_integer() and abs(raw) < 1e15:
            return str(int(raw))
        return repr(raw)
    return json.dumps(raw, separators=(",", ":"), ensure_ascii=False)


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


def _apply(metric: Metric, doc: Any, probe: ProbeContext, static: Labels, result: Extraction, trace: Trace | None) -> None:
    base = None
    if metric.uses_context:
        base = {"key": None, "index": None, "item": doc, "parent": None, "root": doc,
                "target": probe.target, "module": probe.module, "params": dict(probe.params)}
    families = []
    for output in metric.outputs:
        family = result.families.get(output.name)
        if family is None:
            family = result.families[output.name] = Family(output.name, metric.type, metric.help or _DEFAULT_HELP)
        families.append((output, family, _sample_name(metric, output.name), set(_seen(family))))
    label_exprs = metric.labels
    is_info, is_stateset = metric.type == "info", metric.type == "stateset"
    traced = 0
    try:
        for element, ctx in _elements(metric, doc, base, trace):
            show = trace is not None and traced < 3
            traced += 1
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
                                value = metric.default
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
    result = Extraction()
    for metric in module.metrics:
        for output in metric.outputs:
            result.errors.setdefault(output.name, 0)
            result.duplicates.setdefault(output.name, 0)
        if metric.endpoint not in documents:
            continue  # its endpoint failed; that is reported per endpoint, not per metric
        if trace is not None:
            trace.add(f"metric {metric.name} (endpoint {metric.endpoint}):")
        _apply(metric, documents[metric.endpoint], probe, static, result, trace)
    result.families = {k: f for k, f in result.families.items() if f.samples}
    return result
