"""The names a metric family takes in the exposition, in the text format 0.0.4 and in OpenMetrics 1.0.0.

One declaration per type: the writer names families and samples from it, and `check` refuses two
families of a module that would take one name (Prometheus's parsers reject the whole answer then:
promtool's "second HELP line", prometheus_client's "Clashing name"). A new type declares its suffixes
here and nothing else changes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Naming:
    """How a type names its family. `own`: the suffix its samples and its text-format family carry, which
    its OpenMetrics family name goes without (`x_total` / `x` for a counter); `samples`: the suffixes of
    the other sample names the type has in OpenMetrics, which its parsers reserve for it even when absent."""

    own: str = ""
    samples: tuple[str, ...] = ()


# As OpenMetrics 1.0.0 (and prometheus_client's parser of it) reserves them per type.
NAMING: Mapping[str, Naming] = MappingProxyType({
    "gauge": Naming(),
    "untyped": Naming(),
    "stateset": Naming(),
    "counter": Naming("_total", ("_created",)),
    "info": Naming("_info"),
    "histogram": Naming("", ("_bucket", "_count", "_sum", "_created")),
    "summary": Naming("", ("_count", "_sum", "_created")),
    # still to come: "gaugehistogram": Naming("", ("_bucket", "_gcount", "_gsum"))
})

# The probe's own metrics (probe.py writes them, all gauges): no family of a rule may take these names.
PROBE_METRICS = frozenset({
    "probe_success", "probe_duration_seconds", "probe_series", "probe_extraction_errors", "probe_duplicate_series",
    "probe_endpoint_success", "probe_endpoint_http_status_code", "probe_endpoint_response_bytes",
    "probe_endpoint_duration_seconds", "probe_endpoint_cache_age_seconds", "probe_endpoint_stale",
    "probe_failed_due_to_deadline", "probe_failed_due_to_series_limit", "probe_failed_due_to_body_size_limit",
    "probe_endpoint_pages",
})


def family_name(name: str, mtype: str) -> str:
    """The OpenMetrics family name of a metric as the spec names it (`x_total` -> `x` for a counter)."""
    return name.removesuffix(NAMING[mtype].own)


def text_name(name: str, mtype: str) -> str:
    """Its family name in the text format, which is also the name of its samples (`x` -> `x_total` for a counter)."""
    return family_name(name, mtype) + NAMING[mtype].own


def exposition_names(name: str, mtype: str) -> frozenset[str]:
    """Every name the family takes in either format: the family names and every sample name of its type."""
    base = family_name(name, mtype)
    naming = NAMING[mtype]
    return frozenset({base, base + naming.own, *(base + suffix for suffix in naming.samples)})


# What `promtool check metrics` lints in a family of the text format (it exits 3 when it finds one, and whoever
# runs it on an exporter's answer takes that answer for rejected): the same rules, so that a spec passing
# `check --strict` writes answers promtool accepts. Each problem is (what promtool says, how a spec avoids it).
BASE_UNITS = frozenset({"amperes", "bytes", "celsius", "grams", "joules", "kelvin", "meters", "metres", "seconds", "volts"})
# the units promtool knows that are not base units: the base unit instead, and what `scale` converts to it (None: none does)
NON_BASE_UNITS: Mapping[str, tuple[str, float | None]] = MappingProxyType({
    "minutes": ("seconds", 60), "hours": ("seconds", 3600), "days": ("seconds", 86400), "weeks": ("seconds", 604800),
    "kelvins": ("kelvin", 1), "fahrenheit": ("celsius", None), "rankine": ("celsius", None),
    "inches": ("meters", 0.0254), "yards": ("meters", 0.9144), "miles": ("meters", 1609.344),
    "bits": ("bytes", 0.125), "calories": ("joules", 4.184), "pounds": ("grams", 453.59237), "ounces": ("grams", 28.349523125),
})
UNIT_PREFIXES: Mapping[str, float] = MappingProxyType({
    "pico": 1e-12, "nano": 1e-9, "micro": 1e-6, "milli": 1e-3, "centi": 1e-2, "deci": 1e-1, "deca": 1e1, "hecto": 1e2,
    "kilo": 1e3, "kibi": 1024, "mega": 1e6, "mibi": 1024**2, "giga": 1e9, "gibi": 1024**3, "tera": 1e12, "tebi": 1024**4,
    "peta": 1e15, "pebi": 1024**5,
})
# abbreviated units (a word of the name after its first), with their base unit and scale where one is sure
UNIT_ABBREVIATIONS: Mapping[str, tuple[str, float | None]] = MappingProxyType({
    "s": ("seconds", 1), "sec": ("seconds", 1), "ms": ("seconds", 1e-3), "us": ("seconds", 1e-6), "ns": ("seconds", 1e-9),
    "b": ("bytes", None), "kb": ("bytes", None), "mb": ("bytes", None), "gb": ("bytes", None), "tb": ("bytes", None),
    "pb": ("bytes", None), "m": ("meters", None), "h": ("seconds", 3600), "d": ("seconds", 86400),
})
_TYPE_WORDS = ("counter", "gauge", "histogram", "summary", "gauge_histogram")
_CAMEL_CASE = re.compile(r"[a-z][A-Z]")


def _converted(base: str, scale: float | None) -> str:
    if scale is None:
        return f"use the base unit: _{base}, converted by `scale`"
    return f"use the base unit: _{base}" + ("" if scale == 1 else f", converted with `scale: {scale:g}`")


def _unit_of(word: str) -> tuple[str, str | None] | None:
    """A word of a name that is a unit promtool knows: (its base unit, how to write it so, None when it is one);
    None for a word that is no unit."""
    for prefix, factor in (("", 1.0), *UNIT_PREFIXES.items()):
        if not word.startswith(prefix):
            continue
        unit = word[len(prefix):]
        if unit in NON_BASE_UNITS:
            base, scale = NON_BASE_UNITS[unit]
            return base, _converted(base, None if scale is None else scale * factor)
        if unit in BASE_UNITS:
            return unit, _converted(unit, factor) if prefix else None
    return None


def lint(name: str, mtype: str) -> list[tuple[str, str]]:
    """promtool's lints of a family's name as the text format writes it: `name` its text name (`text_name`),
    `mtype` the type of its TYPE line (gauge for info and stateset). Each problem is (what promtool says of it,
    how to avoid it). Its labels' lints are `label_lint`'s."""
    problems: list[tuple[str, str]] = []
    lower = name.lower()
    # promtool judges one unit word of a name: the first (client_golang 1.20 and later) or any, at random (before,
    # Debian 12's promtool 2.42 among them): every word that is not a base unit may be the one
    for word in dict.fromkeys(name.split("_")):
        if (unit := _unit_of(word)) is not None and unit[1] is not None:
            problems.append((f'use base unit "{unit[0]}" instead of "{word}"', unit[1]))
    if mtype == "counter" and not name.endswith("_total"):
        problems.append(('counter metrics should have "_total" suffix', "end its name with _total"))
    if mtype not in ("counter", "untyped") and name.endswith("_total"):
        problems.append(('non-counter metrics should not have "_total" suffix', "make it a counter, or drop the suffix"))
    if mtype != "untyped":
        for suffix, owners in (("_bucket", ("histogram",)), ("_count", ("histogram", "summary")), ("_sum", ("histogram", "summary"))):
            if name.endswith(suffix) and mtype not in owners:
                problems.append((f'non-{" and non-".join(owners)} metrics should not have "{suffix}" suffix',
                                 f"{suffix} is for {' and '.join(owners)}s: rename it"))
    for typename in _TYPE_WORDS:
        if f"_{typename}_" in lower or lower.endswith(f"_{typename}"):
            problems.append((f"metric name should not include type {typename!r}", "drop the type from the name"))
    if ":" in name:
        problems.append(("metric names should not contain ':'", "colons are for the names of recording rules"))
    if _CAMEL_CASE.search(name):
        problems.append(("metric names should be written in 'snake_case' not 'camelCase'", "write it in snake_case"))
    # a word of the name after its first (promtool looks for `_ms_` and a final `_ms`)
    if (short := next((w for w in lower.split("_")[1:] if w in UNIT_ABBREVIATIONS), None)) is not None:
        hint = "use the base unit: _seconds (minutes) or _meters, converted by `scale`" if short == "m" else _converted(*UNIT_ABBREVIATIONS[short])
        problems.append(("metric names should not contain abbreviated units", f"_{short}: {hint}"))
    return problems


def label_lint(label: str, mtype: str | None) -> list[tuple[str, str]]:
    """promtool's lints of a label name of a family whose TYPE line says `mtype` (None: any type), as `lint`'s."""
    problems: list[tuple[str, str]] = []
    if mtype not in ("untyped", "histogram") and label == "le":
        problems.append(('non-histogram metrics should not have "le" label', "rename the label"))
    if mtype not in ("untyped", "summary") and label == "quantile":
        problems.append(('non-summary metrics should not have "quantile" label', "rename the label"))
    if _CAMEL_CASE.search(label):
        problems.append(("label names should be written in 'snake_case' not 'camelCase'", "write it in snake_case"))
    return problems
