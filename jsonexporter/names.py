"""The names a metric family takes in the exposition, in the text format 0.0.4 and in OpenMetrics 1.0.0.

One declaration per type: the writer names families and samples from it, and `check` refuses two
families of a module that would take one name (Prometheus's parsers reject the whole answer then:
promtool's "second HELP line", prometheus_client's "Clashing name"). A new type declares its suffixes
here and nothing else changes.
"""

from __future__ import annotations

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
