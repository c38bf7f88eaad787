"""Series to Prometheus text format 0.0.4 and OpenMetrics 1.0.0.

A direct writer, byte-identical to prometheus_client's `generate_latest` for the same metric
families, with one deliberate difference: integral values are printed exactly (`1655371`,
not `1.655371e+06`). Label pairs must arrive sorted by name, as prometheus_client sorts them.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.utils import floatToGoString

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float, float | None]  # sample name, sorted labels, value, timestamp (s)

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_EXACT_LIMIT = 1e15  # below this every integral float is exact and shorter than Go's %g form


@dataclass(slots=True)
class Family:
    """One metric family as the user named it (`x_total` for counters, `x_info` for info)."""

    name: str
    type: str  # gauge, counter, untyped, info, stateset
    help: str
    samples: list[Sample] = field(default_factory=list)


def format_value(value: float) -> str:
    if value.is_integer() and -_EXACT_LIMIT < value < _EXACT_LIMIT:
        return str(int(value))
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


def _escape_label_value(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in labels) + "}"


def base_name(family: Family) -> str:
    """The OpenMetrics family name: without the `_total` / `_info` that samples carry."""
    if family.type == "counter" and family.name.endswith("_total"):
        return family.name[:-6]
    if family.type == "info" and family.name.endswith("_info"):
        return family.name[:-5]
    return family.name


def render_text(families: Iterable[Family]) -> str:
    out: list[str] = []
    append = out.append
    for family in families:
        base = base_name(family)
        mtype = family.type
        name = base
        if mtype == "counter":
            name = base + "_total"
        elif mtype == "info":
            name, mtype = base + "_info", "gauge"
        elif mtype == "stateset":
            mtype = "gauge"
        help_text = family.help.replace("\\", r"\\").replace("\n", r"\n")
        append(f"# HELP {name} {help_text}\n")
        append(f"# TYPE {name} {mtype}\n")
        for sample_name, labels, value, ts in family.samples:
            stamp = "" if ts is None else f" {int(ts * 1000):d}"
            append(f"{sample_name}{_labels(labels)} {format_value(value)}{stamp}\n")
    return "".join(out)


def render_openmetrics(families: Iterable[Family]) -> str:
    out: list[str] = []
    append = out.append
    for family in families:
        base = base_name(family)
        mtype = "unknown" if family.type == "untyped" else family.type
        help_text = family.help.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
        append(f"# HELP {base} {help_text}\n")
        append(f"# TYPE {base} {mtype}\n")
        for sample_name, labels, value, ts in family.samples:
            stamp = "" if ts is None else f" {ts}"
            append(f"{sample_name}{_labels(labels)} {format_value(value)}{stamp}\n")
    out.append("# EOF\n")
    return "".join(out)


def wants_openmetrics(accept: str) -> bool:
    """Accept negotiation as prometheus_client's `choose_encoder` does it."""
    for part in accept.split(","):
        media = part.split(";")[0].strip()
        if media == "application/openmetrics-text":
            params = {k.strip(): v.strip() for k, _, v in (p.partition("=") for p in part.split(";")[1:])}
            major = params.get("version", "1").split(".")[0]
            if not major.isdigit() or int(major) >= 1:
                return True
    return False


def encode(families: list[Family], accept: str, accept_encoding: str) -> tuple[bytes, dict[str, str]]:
    """Body and headers for a scrape with these Accept and Accept-Encoding headers."""
    if wants_openmetrics(accept):
        body, ctype = render_openmetrics(families).encode(), OPENMETRICS_CONTENT_TYPE
    else:
        body, ctype = render_text(families).encode(), TEXT_CONTENT_TYPE
    headers = {"Content-Type": ctype}
    if any(e.split(";")[0].strip().lower() == "gzip" for e in accept_encoding.split(",")):
        body = gzip.compress(body, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return body, headers
