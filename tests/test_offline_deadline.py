"""`probe --input` and `jsonexporter test` evaluate saved answers within the module's timeout, as a live
probe does: a rule that would run for hours fails the probe at its deadline, saying so."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

# 400 × 400 × 400 combinations: hours of extraction without a deadline, on any machine
SPEC = """
modules:
  default:
    timeout: 1s
    metrics:
      - {name: x, help: h, each: ['$root.items', '$root.items', '$root.items'], value: '`1`', labels: {a: '@'}}
"""
BOUND = 300  # seconds: the command's own bound, far above the 1 s deadline plus a loaded machine's start-up


def _files(tmp_path: Path) -> tuple[Path, Path]:
    spec, answer = tmp_path / "spec.yml", tmp_path / "answer.json"
    spec.write_text(textwrap.dedent(SPEC))
    answer.write_text(json.dumps({"items": list(range(400))}))
    return spec, answer


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jsonexporter", *map(str, args)], capture_output=True, text=True, timeout=BOUND, check=False)


def test_probe_input_fails_at_the_modules_timeout_saying_so(tmp_path: Path) -> None:
    spec, answer = _files(tmp_path)
    done = _run("probe", "--config.file", spec, "--input", answer)
    assert done.returncode == 1, done.stderr
    assert "probe failed: the deadline of 1.000s passed before the series were extracted" in done.stderr
    families = {f.name: f for f in text_string_to_metric_families(done.stdout)}
    assert "x" not in families  # none of the series extracted before the deadline: never a partial set
    assert [s.value for s in families["probe_success"].samples] == [0]


def test_probe_input_with_debug_ends_its_trace_with_the_deadline(tmp_path: Path) -> None:
    spec, answer = _files(tmp_path)
    done = _run("probe", "--config.file", spec, "--input", answer, "--debug")
    assert "saved answers (no requests), deadline 1.000s" in done.stderr
    assert "probe failed: the deadline of 1.000s passed before the series were extracted" in done.stderr


def test_a_spec_test_fails_its_probe_at_the_modules_timeout_as_a_live_probe(tmp_path: Path) -> None:
    _files(tmp_path)
    file = tmp_path / "t.test.yml"
    file.write_text(textwrap.dedent("""
        spec: spec.yml
        tests:
          - name: too many combinations for the deadline
            answers:
              default: {file: answer.json}
            exp_samples:
              - {labels: probe_failed_due_to_deadline, value: 1}
              - {labels: probe_success, value: 0}
          - name: the same, expecting a series
            answers:
              default: {file: answer.json}
            exp_samples:
              - {labels: 'x{a="0"}', value: 1}
        """).lstrip())
    done = _run("test", file)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{file}: 1 of 2 test(s) passed" in done.stdout, done.stdout
    assert "tests[1]: note: the deadline of 1.000s passed before the series were extracted" in done.stdout


# Four strings of a million 'a' and 'b' (repro 18): RE2 out of its DFA states on both patterns, 10 s of extraction with a
# 1 s timeout before a regex call was bounded, the probe answered as if in time
REGEX_SPEC = r"""
modules:
  default:
    timeout: 1s
    metrics:
      - {name: m, help: h, each: items, value: "regex_match(k, '[ab]*a[ab]{24}c')", labels: {i: i}}
      - {name: n, help: h, each: items, value: "length(regex_replace(k, '([ab]*a[ab]{24})+', 'x'))", labels: {i: i}}
"""


def test_probe_input_answers_regex_calls_on_long_strings_as_errors_of_their_series(tmp_path: Path) -> None:
    spec, answer = tmp_path / "spec.yml", tmp_path / "answer.json"
    spec.write_text(textwrap.dedent(REGEX_SPEC))
    rng = random.Random(1)
    answer.write_text(json.dumps({"items": [{"i": i, "k": "".join(rng.choices("ab", k=1_000_000))} for i in range(4)]}))
    done = _run("probe", "--config.file", spec, "--input", answer)
    assert done.returncode == 0, done.stderr
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(done.stdout) for s in f.samples}
    assert samples[("probe_success", ())] == 1  # in time: a deadline passed would fail it
    assert samples[("probe_extraction_errors", (("metric", "m"),))] == 4 and samples[("probe_extraction_errors", (("metric", "n"),))] == 4
