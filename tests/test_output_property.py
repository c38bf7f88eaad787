"""Every spec that `check` accepts gives answers that every parser accepts.

Hypothesis draws small specs (gauge, counter, untyped, info, stateset, histogram and summary rules, `values`
entries, `duplicates` policies, labels
with odd characters, module labels, value maps, scales, defaults, timestamps) and documents for them;
each probe runs offline, is rendered in both formats, read back by prometheus_client's text and
OpenMetrics parsers and checked by `promtool check metrics`. Half the specs draw their names from a few
stems so that names meet after the naming rules (`req` and `req_total`, `node_role_info` and `node_role`,
`probe` with `values: {success: …}`): `check` must refuse those, and only for that reason.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from jsonexporter.exposition import render_openmetrics, render_text
from jsonexporter.probe import run_offline
from jsonexporter.spec import load_text

PROMTOOL = shutil.which("promtool")
TYPES = ["gauge", "counter", "untyped", "info", "stateset", "histogram", "summary"]
# names that meet after the naming rules, drawn together
STEMS = ["req", "node_role", "jobs", "probe"]
SUFFIXES = ["", "", "_total", "_info", "_created", "_done_total", "_bucket", "_sum"]
CLASHING_VALUES = ["done", "done_total", "success", "info", "x"]
# the refusals a spec drawn from STEMS may get: names that meet, or the probe's prefix
REFUSALS = ("both take the name", "which the probe's own metric", "is also produced by", "reserved for the probe's own metrics")

ODD_TEXTS = ["plain", "", 'q"uote', "back\\slash", "new\nline", "tab\tin", "é ünï", "{}=,", "%s %d", "# EOF", "\u2028"]
NUMBER_STRINGS = ["12", "-1.5", "+.5", "1e3", "Inf", "-Infinity", "NaN", "1_000", "\u0661\u0662", "\uff11\uff12", "0x1p3", "1e400", " 2"]
# mostly good values, so that most families have series (a family without any is not written)
values = st.one_of(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6), st.integers(-10**6, 10**6),
                   st.integers(-(2**70), 2**70), st.floats(), st.sampled_from(NUMBER_STRINGS),
                   st.sampled_from(["UP", "DOWN", "neg", True, False, None, [1]]))
timestamps = st.one_of(st.none(), st.none(), st.integers(-10**10, 2 * 10**12), st.floats(-1e10, 1e10),
                       st.sampled_from([1.7e18, 9.3e15, -9.3e15, 9.2e15, 5.2e-06, math.nan, "2024-05-01T10:00:00Z", "1700000000", "NaN", "1_7"]))
elements = st.fixed_dictionaries({
    "id": st.sampled_from(["a", "b", "c"]),  # repeats: duplicate series
    "lab": st.sampled_from(ODD_TEXTS),
    "v": values,
    "w": values,
    "state": st.sampled_from(["up", "down", "1.5", "other", None]),
    "ts": timestamps,
    # a histogram's buckets and a summary's quantiles, mostly right, sometimes not
    "b": st.one_of(st.dictionaries(st.sampled_from(["0.1", "1", "2.5", "+Inf", "1e-3", "-1", "x"]), st.integers(0, 20) | st.sampled_from(["3", 1.5, -1, None]),
                                   max_size=4),
                   st.lists(st.tuples(st.sampled_from([0.25, 5, "+Inf", "inf"]), st.integers(0, 20)).map(list), max_size=3)),
    "q": st.dictionaries(st.sampled_from(["0.5", "p99", "p999", "p50", "1.5", "p100"]), st.integers(-1, 5) | st.floats(), max_size=3),
})
documents = st.fixed_dictionaries({"items": st.lists(elements, min_size=1, max_size=5), "v": values, "lab": st.sampled_from(ODD_TEXTS)})


@st.composite
def rules(draw: Any, index: int, clashing: bool) -> dict[str, Any]:
    mtype = draw(st.sampled_from(TYPES))
    name = draw(st.sampled_from(STEMS)) + draw(st.sampled_from(SUFFIXES)) if clashing else f"m{index}"
    if mtype == "info" and not name.endswith("_info"):
        name += "_info"
    rule: dict[str, Any] = {"name": name, "help": draw(st.sampled_from(ODD_TEXTS[:8])) or "h", "type": mtype}
    if draw(st.integers(0, 4)):
        rule["each"] = "items"
    names = draw(st.lists(st.sampled_from(["id", "lab", "zone", "_odd", "a1"]), unique=True, max_size=3))
    rule["labels"] = {n: draw(st.sampled_from(["id", "lab", "$index", "'const'", "v", "$root.lab"])) for n in names}
    if mtype == "stateset":
        rule.update(value="state", states=["up", "down", "1.5"])
    elif mtype == "histogram":
        rule.update(buckets="b", sum=draw(st.sampled_from(["v", "`2.5`"])), cumulative=draw(st.booleans()))
        if draw(st.booleans()):
            rule["count"] = draw(st.sampled_from(["w", "`20`"]))
    elif mtype == "summary":
        rule["quantiles"] = "q"
        rule.update({key: draw(st.sampled_from(["v", "w"])) for key in draw(st.lists(st.sampled_from(["sum", "count"]), unique=True))})
    elif mtype != "info":
        if draw(st.booleans()):
            rule["value"] = draw(st.sampled_from(["v", "w"]))
        else:
            keys = draw(st.lists(st.sampled_from(CLASHING_VALUES if clashing else ["x", "y"]), unique=True, min_size=1, max_size=2))
            rule["values"] = {k: draw(st.sampled_from(["v", "w"])) for k in keys}
        if draw(st.booleans()):
            rule["value_map"] = {"UP": 1, "DOWN": 0, "neg": -2.5}
        if draw(st.booleans()):
            rule["default"] = draw(st.sampled_from([0, -1]))
        if draw(st.booleans()):
            rule["scale"] = draw(st.sampled_from([0.001, -1, 1024]))
    if draw(st.integers(0, 2)) == 0:
        rule["duplicates"] = draw(st.sampled_from(["first", "last", "sum"] if mtype in ("gauge", "counter", "untyped") else ["first", "last"]))
    if mtype != "info" and draw(st.booleans()):
        rule["timestamp"] = "ts"
        if draw(st.booleans()):
            rule["timestamp_unit"] = "milliseconds"
    return rule


@st.composite
def cases(draw: Any) -> tuple[dict[str, Any], bool]:
    """A module, and whether its names may meet (without: every rule has its own stem, and check must accept it)."""
    clashing = draw(st.booleans())
    module: dict[str, Any] = {"metrics": [draw(rules(i, clashing)) for i in range(draw(st.integers(1, 4)))]}
    if draw(st.booleans()):
        module["labels"] = {"site": "s-{target}", "note": draw(st.sampled_from(ODD_TEXTS)).replace("{", "{{").replace("}", "}}")}
    return module, clashing


def _samples(families: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], tuple[str, float | None]]:
    """Every sample as (value text, timestamp in seconds) by name and labels, the same for both parsers."""
    return {(s.name, frozenset(s.labels.items())): (repr(float(s.value)), None if s.timestamp is None else float(s.timestamp))
            for f in families for s in f.samples}


def _promtool(text: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "promtool is required in CI (.ci/run installs Debian's prometheus package)"
    return subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


# one promtool run per example (about 20 ms): 150 examples take about 10 s, more on a busy machine
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases(), documents, st.sampled_from(["t", 'h"x\\y', "é%s"]))
def test_every_accepted_spec_gives_answers_every_parser_accepts(case: tuple[dict[str, Any], bool], document: Any, target: str) -> None:
    module_spec, clashing = case
    spec, problems = load_text(json.dumps({"modules": {"m": module_spec}}), "spec.yml")
    errors = [p for p in problems if p.severity == "error"]
    if spec is None:
        assert clashing and errors, "\n".join(map(str, problems))  # a spec of its own stems is always accepted
        assert all(any(r in p.message for r in REFUSALS) for p in errors), "\n".join(map(str, errors))
        event("refused: names meet")
        return
    event("accepted")
    result = run_offline(spec.modules["m"], {"default": document}, target, {})
    text, openmetrics = render_text(result.families), render_openmetrics(result.families)
    from_text, from_openmetrics = list(parse_text(text)), list(parse_openmetrics(openmetrics))
    assert len({f.name for f in from_text}) == len(from_text), text
    text_samples, openmetrics_samples = _samples(from_text), _samples(from_openmetrics)
    assert text_samples.keys() == openmetrics_samples.keys()
    for key, (value, ts) in text_samples.items():
        other_value, other_ts = openmetrics_samples[key]
        assert value == other_value, key
        assert (ts is None) == (other_ts is None) and (ts is None or other_ts is None or math.isclose(ts, other_ts, rel_tol=1e-12, abs_tol=0.002)), key
    if PROMTOOL is None and not os.environ.get("CI"):
        return  # promtool is not installed here (CI installs it): the parsers above still ran
    checked = _promtool(text)
    strict = not any(p.severity == "warning" for p in problems)
    # 3: lint problems only, which `check` warned about; 1: the answer did not parse
    assert checked.returncode == 0 or (not strict and checked.returncode == 3), f"{checked.stderr}\n{text}"
