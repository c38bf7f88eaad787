"""Probe output accepted by Prometheus's own promtool (text format) and by prometheus_client's
strict OpenMetrics parser, for every metric type."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import ExporterFactory, UpstreamFactory
from metrics_util import parse, value
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from jsonexporter.cli import main

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None and not os.environ.get("CI"), reason="promtool not installed")

PAYLOAD = {
    "version": "1.2.3",
    "status": "degraded",
    "queues": {"orders": {"depth": 4, "processed": 1655371, "failed": 3, "latency": 0.25}, "mail": {"depth": 0, "processed": 10, "failed": 0}},
}
ALL_TYPES = """
modules:
  default:
    metrics:
      - {name: queue_depth, help: "Items waiting\\nin the queue", each: queues, value: depth, labels: {queue: $key}}
      - {name: queue_processed_total, help: Processed, type: counter, each: queues, value: processed, labels: {queue: $key}}
      - {name: queue_failed, help: Failed (suffix added), type: counter, each: queues, value: failed, labels: {queue: $key}}
      - {name: queue_latency_seconds, help: Latency, type: untyped, each: queues, value: latency, labels: {queue: $key}}
      - {name: app_build_info, help: Build, type: info, labels: {version: version}}
      - {name: app_status, help: Status, type: stateset, value: status, states: [ok, degraded, down]}
"""


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "promtool is required in CI (.ci/run installs Debian's prometheus package)"
    return subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


@needs_promtool
async def test_text_probe_output_passes_promtool(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/": PAYLOAD})
    client = await exporter(ALL_TYPES)
    text = await (await client.get(f"/probe?target={up.url}/")).text()
    assert "queue_failed_total{queue=\"orders\"} 3\n" in text and "app_status{app_status=\"degraded\"} 1\n" in text
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_openmetrics_probe_output_passes_the_strict_parser(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/": PAYLOAD})
    client = await exporter(ALL_TYPES)
    response = await client.get(f"/probe?target={up.url}/", headers={"Accept": "application/openmetrics-text;version=1.0.0"})
    families = {f.name: f for f in parse_openmetrics(await response.text())}
    assert families["queue_processed"].type == "counter"
    assert families["app_build"].type == "info"
    assert families["app_status"].type == "stateset"
    assert families["queue_latency_seconds"].type == "unknown"


@needs_promtool
async def test_carriage_returns_from_an_answer_are_line_breaks_that_every_parser_accepts(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    """prometheus_client's parsers (both formats) rejected a whole answer holding a raw CR in a label value."""
    up = await upstream({"/": {"items": [{"id": "a\rb", "v": 1}, {"id": "c\r\nd", "v": 2}, {"id": "e\nf", "v": 3}]}})
    client = await exporter("""
        modules:
          default:
            metrics:
              - {name: depth, help: h, each: items, value: v, labels: {id: id}}
              - {name: last_depth, help: h, each: items, value: v, duplicates: last, labels: {id: id}}
        """)
    text = await (await client.get(f"/probe?target={up.url}/")).text()
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr
    series = parse(text)
    for name in ("depth", "last_depth"):
        assert [value(series, name, id=i) for i in ("a\nb", "c\nd", "e\nf")] == [1, 2, 3]
    response = await client.get(f"/probe?target={up.url}/", headers={"Accept": "application/openmetrics-text;version=1.0.0"})
    families = {f.name: f for f in parse_openmetrics(await response.text())}
    assert [s.labels["id"] for s in families["depth"].samples] == ["a\nb", "c\nd", "e\nf"]


@needs_promtool
async def test_exporter_metrics_pass_promtool(exporter: ExporterFactory) -> None:
    client = await exporter(ALL_TYPES)
    await client.get("/probe?target=http://127.0.0.1:1")
    result = promtool_check(await (await client.get("/metrics")).text())
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
async def test_a_timestamp_beyond_int64_milliseconds_drops_only_its_series(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/": {"items": [{"id": "now", "v": 1, "ts": 1_700_000_000}, {"id": "far", "v": 2, "ts": 1.7e18}]}})
    client = await exporter("""
        modules:
          default:
            metrics:
              - {name: depth, help: h, each: items, value: v, timestamp: ts, labels: {id: id}}
        """)
    text = await (await client.get(f"/probe?target={up.url}/")).text()
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'depth{id="now"} 1 1700000000000\n' in text and 'id="far"' not in text
    assert 'probe_extraction_errors{metric="depth"} 1\n' in text


# -- promtool's lints, as `check` says them -----------------------------------------------------------

# words of metric names: units promtool knows (base, not base, prefixed), abbreviations it knows and a few it
# does not, type names, camelCase, suffixes with a meaning, and plain words
UNIT_WORDS = [
    "seconds", "bytes", "meters", "metres", "volts", "amperes", "joules", "grams", "celsius", "kelvin",
    "minutes", "hours", "days", "weeks", "kelvins", "fahrenheit", "inches", "miles", "bits", "calories", "pounds",
    "milliseconds", "microseconds", "kilobytes", "megabits", "gibibytes", "kilograms", "millivolts", "centimeters", "kilominutes",
]
NAME_WORDS = [
    *UNIT_WORDS,
    "s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "m", "h", "d", "msec", "kib", "min", "secs",
    "counter", "gauge", "histogram", "summary", "untyped", "Gauge",
    "fooBar", "httpRequests", "HTTP", "aB",
    "total", "count", "sum", "bucket", "info", "created", "ratio", "percent",
    "queue", "depth", "api", "x", "node", "cpu",
]
LABEL_NAMES = ["le", "quantile", "myLabel", "queue", "httpCode", "a_b", "Ab", "HTTP", "job"]
LINT_TYPES = ["gauge", "counter", "untyped", "info", "stateset", "histogram", "summary"]
LINT_ANSWER = {"n": 1, "s": "a", "h": {"b": {"1": 1, "+Inf": 2}, "s": 3}, "q": {"v": {"0.5": 1}, "s": 2, "c": 3}}
_LINT_WARNING = re.compile(r"^[^:]+:\d+:\d+: modules\.default\.metrics\[(\d+)\]\.\S+: warning: .*`promtool check metrics` fails on it \((.+?)\)(?::|$)")


def _lint_rule(rng: random.Random, index: int) -> tuple[str, dict[str, object]]:
    tag = f"r{index}"
    words = rng.sample(NAME_WORDS, rng.randint(1, 3))
    words.insert(rng.randint(0, len(words)), tag)  # first, between or last: promtool reads some words only after the first
    name = "_".join(words)
    mtype = rng.choice(LINT_TYPES)
    if rng.random() < 0.05 and mtype != "stateset":  # a stateset's name is a label's too: a colon is an error of check's
        name = name.replace("_", ":", 1)
    rule: dict[str, object] = {"name": name, "help": "h", "type": mtype}
    if mtype == "info":
        rule["name"] = name.removesuffix("_info") + "_info"
    elif mtype == "stateset":
        rule.update(value="s", states=["a", "b"])
    elif mtype == "histogram":
        rule.update(buckets="h.b", sum="h.s")
    elif mtype == "summary":
        rule.update(quantiles="q.v", sum="q.s", count="q.c")
    elif rng.random() < 0.2:
        rule["values"] = {rng.choice(["total", "count", "ms", "seconds", "fooBar", "sum"]): "n"}
    else:
        rule["value"] = "n"
    own = {"histogram": "le", "summary": "quantile"}.get(mtype)
    labels = [label for label in rng.sample(LABEL_NAMES, rng.randint(0, 2)) if label != own]
    if labels:
        rule["labels"] = {label: "'v'" for label in labels}
    return tag, rule


@needs_promtool
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_check_warns_of_exactly_the_lints_promtool_fails_the_answer_on(tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: int) -> None:
    """Many generated rules in one spec: for each, the promtool lints `check` warns of are those promtool finds in its
    families of a probe's answer, by reason, so that a spec passing `check --strict` gives answers promtool accepts."""
    rng = random.Random(seed)
    rules = [_lint_rule(rng, i) for i in range(250)]
    spec = tmp_path / "spec.yml"
    spec.write_text(yaml.safe_dump({"modules": {"default": {"metrics": [rule for _, rule in rules]}}}))
    answer = tmp_path / "answer.json"
    answer.write_text(json.dumps(LINT_ANSWER))

    assert main(["check", str(spec)]) == 0
    out, err = capsys.readouterr()
    said: dict[str, set[str]] = {tag: set() for tag, _ in rules}
    for line in (out + err).splitlines():
        if (match := _LINT_WARNING.match(line)) is not None:
            said[rules[int(match[1])][0]].add(match[2])

    assert main(["probe", "--config.file", str(spec), "--input", str(answer)]) == 0
    text = capsys.readouterr().out
    assert PROMTOOL is not None, "promtool is required in CI (.ci/run installs Debian's prometheus package)"
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode in (0, 3), result.stdout + result.stderr
    found: dict[str, set[str]] = {tag: set() for tag, _ in rules}
    tags = set(found)
    for line in (result.stdout + result.stderr).splitlines():
        family, _, reason = line.partition(" ")
        (tag,) = {word for word in re.split(r"[_:]", family) if word in tags}
        found[tag].add(reason)
    assert sum(map(len, found.values())) > 100  # the rules are far from clean
    differ = {}
    for tag, rule in rules:
        written = "_".join([str(rule["name"]), *dict(rule.get("values", {})).keys()])  # type: ignore[call-overload]
        if sum(word in UNIT_WORDS for word in re.split(r"[_:]", written)) > 1:
            # promtool judges one of the unit words, in Debian 12's promtool at random: check warns of every one
            units_said, units_found = ({r for r in reasons if r.startswith("use base unit")} for reasons in (said[tag], found[tag]))
            if units_found <= units_said:
                said[tag] -= units_said - units_found
        if said[tag] != found[tag]:
            differ[f"{tag}: {rule}"] = (said[tag], found[tag])
    assert differ == {}


@needs_promtool
def test_a_help_of_spaces_only_is_none_check_warns_and_the_answer_passes_promtool(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`# HELP x  ` is read as an empty help, which promtool rejects ("no help text", exit 3): a help of spaces and tabs
    is no help, `check` warns of it as of a missing one, and the default help is written in its place."""
    spec = tmp_path / "spec.yml"
    spec.write_text(textwrap.dedent("""\
        modules:
          default:
            metrics:
              - {name: spaces, help: "  ", value: v}
              - {name: tabs, help: " \\t\\t ", value: v}
              - {name: entries, values: {one: {value: v, help: " "}, two: {value: v, help: "\\t"}}}
              - {name: own, help: Own help, values: {a: {value: v, help: "   "}}}
        """))
    answer = tmp_path / "answer.json"
    answer.write_text('{"v": 1}')

    assert main(["check", "--strict", str(spec)]) == 1
    said = capsys.readouterr()
    warned = {m[1] for m in re.finditer(r"metric '(\w+)' has no help", said.out + said.err)}
    assert warned == {"spaces", "tabs", "entries"}, said

    assert main(["probe", "--config.file", str(spec), "--input", str(answer)]) == 0
    text = capsys.readouterr().out
    assert "# HELP spaces Extracted by jsonexporter.\n" in text and "# HELP own_a Own help\n" in text, text
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr
