"""`jsonexporter test` through the real CLI: passing and failing tests, each failure located with its
diff, answers that fail as live ones do, invalid test files located, exit codes, no traceback."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from aiohttp import web
from conftest import ExporterFactory, UpstreamFactory
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from prometheus_util import jsonexporter
from schema_util import broken_documents

from jsonexporter.cli import main
from jsonexporter.spec import load_text
from jsonexporter.spectest import load_suite
from jsonexporter.spectest.run import probe_case, run_suite
from jsonexporter.spectest.series import Series, SeriesSyntaxError, format_series, parse_series

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "schemas" / "jsonexporter-test.schema.json"
SCHEMA = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))

SPEC = """
modules:
  default:
    endpoints:
      stats: {url: '{target}/stats'}
      health: {url: '{target}/health', valid_status_codes: [200, 503], max_response_bytes: 64}
    labels: {instance: '{target}'}
    metrics:
      - name: queue_depth
        help: Items in the queue.
        endpoint: stats
        each: queues
        value: depth
        labels: {queue: $key}
      - name: queue_healthy
        help: Whether the queue server says it is healthy.
        endpoint: health
        value: healthy
  repo:
    parameters:
      repo: {pattern: '[a-z]+/[a-z]+'}
    endpoints:
      default: {url: 'https://api.example.invalid/repos/{repo}'}
    metrics:
      - name: repo_stars
        help: Stars.
        value: stars
        labels: {repo: $params.repo}
"""

STATS = {"queues": {"orders": {"depth": 42}, "billing": {"depth": 3}, "empty": {}}}


def write(tmp_path: Path, tests: str, spec: str = SPEC, name: str = "t.test.yml") -> Path:
    """A spec.yml and a test file beside it; stats.json holds STATS."""
    (tmp_path / "spec.yml").write_text(textwrap.dedent(spec))
    (tmp_path / "stats.json").write_text(json.dumps(STATS))
    file = tmp_path / name
    file.write_text(textwrap.dedent(tests).lstrip("\n"))
    return file


def run(capsys: pytest.CaptureFixture[str], *files: Path) -> tuple[int, str, str]:
    code = main(["test", *map(str, files)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


PASSING = """
spec: spec.yml
tests:
  - name: two queues and a healthy server
    target: http://queue.example
    answers:
      stats: {file: stats.json}
      health: {json: {healthy: 1}}
    exp_samples:
      - labels: 'queue_depth{instance="http://queue.example", queue="orders"}'
        value: 42
      - labels: 'probe_extraction_errors{metric="queue_depth"}'
        value: 1
      - labels: probe_success
        value: 1
"""


def test_passing_tests_exit_0_and_say_how_many_passed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, PASSING)
    code, out, err = run(capsys, file)
    assert (code, err) == (0, "")
    assert out == f"{file}: 1 test(s) passed\n"


def test_a_different_value_is_located_at_the_expected_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, PASSING.replace("value: 42", "value: 41"))
    code, out, _ = run(capsys, file)
    assert code == 1
    assert f"{file}:3:5: tests[0]: test 'two queues and a healthy server' failed\n" in out
    assert (f'  {file}:10:16: tests[0].exp_samples[0].value: different value: queue_depth{{instance="http://queue.example",queue="orders"}} '
            "expected 41, got 42\n") in out
    assert out.endswith(f"{file}: 0 of 1 test(s) passed\n")


def test_a_missing_series_is_located_at_its_labels_with_the_closest_series(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, PASSING.replace('queue="orders"', 'queue="order"').replace("probe_success", "probe_sucess"))
    code, out, _ = run(capsys, file)
    assert code == 1
    assert (f'  {file}:9:17: tests[0].exp_samples[0].labels: missing series queue_depth{{instance="http://queue.example",queue="order"}} 42; '
            'closest: queue_depth{instance="http://queue.example",queue="orders"} 42\n') in out
    assert f"  {file}:13:17: tests[0].exp_samples[2].labels: missing series probe_sucess 1; no series named probe_sucess (did you mean probe_success?)\n" in out


def test_exact_reports_unlisted_series_of_the_specs_metrics_and_of_listed_probe_families_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, PASSING + "    exact: true\n")
    code, out, _ = run(capsys, file)
    assert code == 1
    unexpected = sorted(line.strip() for line in out.splitlines() if "unexpected series" in line)
    assert unexpected == sorted(f"{file}:15:5: tests[0].exact: unexpected series {s} (exact: true)" for s in [
        'queue_depth{instance="http://queue.example",queue="billing"} 3',
        'queue_healthy{instance="http://queue.example"} 1',
        'probe_extraction_errors{metric="queue_healthy"} 0',
    ])  # probe_series, probe_endpoint_* ... have no series listed: not checked


def test_without_exact_unlisted_series_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(capsys, write(tmp_path, PASSING + "    exact: false\n"))
    assert code == 0


def test_exact_with_every_series_listed_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    listed = PASSING + """\
      - labels: 'queue_depth{instance="http://queue.example", queue="billing"}'
        value: 3
      - labels: 'queue_healthy{instance="http://queue.example"}'
        value: 1
      - labels: 'probe_extraction_errors{metric="queue_healthy"}'
        value: 0
    exact: true
"""
    code, out, _ = run(capsys, write(tmp_path, listed))
    assert code == 0, out


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples}


async def _text(request: web.Request, body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="application/json")


@pytest.mark.parametrize(("health", "answer"), [
    ((json.dumps({"error": "down"}), 500), "{status: 500, json: {error: down}}"),
    (("", 503), "{status: 503}"),  # accepted by valid_status_codes: an empty body, not JSON
    (("not json", 200), "{body: 'not json'}"),
    ((json.dumps({"healthy": 1, "padding": "x" * 64}), 200), "{json: {healthy: 1, padding: '" + "x" * 64 + "'}}"),
    ((json.dumps({"healthy": 0}), 503), "{status: 503, json: {healthy: 0}}"),
], ids=["invalid_status", "empty_body", "invalid_json", "too_large", "accepted_status"])
async def test_an_answer_gives_the_series_of_a_live_probe_of_that_answer(tmp_path: Path, upstream: UpstreamFactory, exporter: ExporterFactory,
                                                                         health: tuple[str, int], answer: str) -> None:
    """The outcomes `jsonexporter test` gives answers mirror fetch's exchange: this keeps them equal."""
    up = await upstream({"/stats": STATS, "/health": lambda request: _text(request, *health)})
    client = await exporter(SPEC)
    live = _samples(await (await client.get(f"/probe?module=default&target={up.url}")).text())
    file = write(tmp_path, f"""
        spec: spec.yml
        tests:
          - name: live and offline
            target: '{up.url}'
            answers:
              stats: {{file: stats.json}}
              health: {answer}
            exp_samples: []
        """)
    loaded = load_suite(file.read_text(), str(file))
    assert loaded.suite is not None, loaded.problems
    samples, _, _, _ = probe_case(loaded.suite.cases[0])
    offline = {(s.series.name, s.series.labels): s.value for s in samples}
    timings = ("probe_duration_seconds", "probe_endpoint_duration_seconds")
    assert {k: v for k, v in offline.items() if k[0] not in timings} == {k: v for k, v in live.items() if k[0] not in timings}
    assert set(offline) == set(live) - {("probe_duration_seconds", frozenset())}  # offline, a probe has no duration
    assert offline[("probe_endpoint_http_status_code", frozenset({("endpoint", "health")}))] == health[1]


async def test_a_probe_over_its_series_limit_fails_as_a_live_one(tmp_path: Path, upstream: UpstreamFactory, exporter: ExporterFactory,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    spec = SPEC.replace("  default:\n", "  default:\n    series_limit: 1\n", 1)
    up = await upstream({"/stats": STATS, "/health": {"healthy": 1}})
    client = await exporter(spec)
    live = _samples(await (await client.get(f"/probe?module=default&target={up.url}")).text())
    file = write(tmp_path, f"""
        spec: spec.yml
        tests:
          - name: two queues, one allowed
            target: '{up.url}'
            answers:
              stats: {{file: stats.json}}
              health: {{json: {{healthy: 1}}}}
            exp_samples:
              - {{labels: probe_failed_due_to_series_limit, value: 1}}
              - {{labels: probe_success, value: 0}}
            exact: true
        """, spec=spec)
    code, out, _ = run(capsys, file)
    assert code == 0, out
    assert live[("probe_failed_due_to_series_limit", frozenset())] == 1
    assert not any(name.startswith("queue_") for name, _ in live)
    loaded = load_suite(file.read_text(), str(file))
    assert loaded.suite is not None
    samples, _, _, notes = probe_case(loaded.suite.cases[0])
    timings = ("probe_duration_seconds", "probe_endpoint_duration_seconds")
    assert {(s.series.name, s.series.labels): s.value for s in samples if s.series.name not in timings} == {
        k: v for k, v in live.items() if k[0] not in timings}
    assert notes == ["the rules gave more than 1 series (series_limit of module default); no series are answered"]


async def test_a_test_sends_nothing_to_its_target(tmp_path: Path, upstream: UpstreamFactory, capsys: pytest.CaptureFixture[str]) -> None:
    up = await upstream({"/stats": STATS, "/health": {"healthy": 1}})
    file = write(tmp_path, PASSING.replace("http://queue.example", up.url))
    code, out, _ = run(capsys, file)
    assert code == 0, out
    assert up.hits == {}


@pytest.mark.parametrize(("answer", "note"), [
    ("{status: 404}", "endpoint health: invalid_status: HTTP status 404 Not Found"),
    ("{status: 503}", "endpoint health: invalid_json: invalid JSON: Expecting value at line 1 column 1"),  # 503 is valid for it: its body is read
    ("{status: 503, json: {healthy: 0}}", None),
    ("{error: timeout}", "endpoint health: timeout: no complete answer (the test's answer: nothing was sent)"),
    ("{error: connection_error}", "endpoint health: connection_error: no connection (the test's answer: nothing was sent)"),
    ("{body: 'not json'}", "endpoint health: invalid_json: invalid JSON: Expecting value at line 1 column 1"),
    ("{json: {healthy: 0, padding: '" + "x" * 64 + "'}}", "endpoint health: too_large: response is larger than max_response_bytes 64"),
    ("{file: health-65.json}", "endpoint health: too_large: response is larger than max_response_bytes 64"),
    ("{file: health-5M.json}", "endpoint health: too_large: response is larger than max_response_bytes 64"),
    ("{file: health-64.json}", None),  # at the bound: read and parsed
])
def test_answers_fail_the_endpoint_as_live_answers_do(tmp_path: Path, capsys: pytest.CaptureFixture[str], answer: str, note: str | None) -> None:
    for size in (64, 65, 5 * 1024 * 1024):
        body = '{"healthy": 0, "padding": "' + "x" * (size - 30) + '"}'
        (tmp_path / f"health-{size if size < 1024 else '5M'}.json").write_text(body.ljust(size))
    file = write(tmp_path, f"""
        spec: spec.yml
        tests:
          - name: health answer
            answers:
              stats: {{file: stats.json}}
              health: {answer}
            exp_samples:
              - labels: 'queue_healthy{{instance="offline"}}'
                value: 0
              - labels: 'probe_success'
                value: 0
        """)
    code, out, _ = run(capsys, file)
    if note is None:
        assert code == 1 and "probe_success expected 0, got 1" in out and "queue_healthy" not in out, out
        return
    assert code == 1
    assert f"\n  {file}:6:7: tests[0].answers.health: note: {note}" in out
    assert "missing series queue_healthy" in out and "probe_success expected" not in out


def test_a_lone_surrogate_of_an_answer_prints_as_its_json_escape(tmp_path: Path) -> None:
    file = write(tmp_path, """
        spec: spec.yml
        tests:
          - name: health answer
            answers:
              stats: {file: stats.json}
              health: {body: '{"healthy": "\\ud800x"}'}
            exp_samples:
              - labels: 'queue_healthy{instance="offline"}'
                value: 0
        """)
    done = subprocess.run([sys.executable, "-m", "jsonexporter", "test", str(file)], capture_output=True, timeout=120, check=False)
    out = done.stdout.decode("utf-8")  # strict: valid UTF-8
    assert done.returncode == 1 and 'note: metric queue_healthy: "\\ud800x" is not a number' in out and "?x" not in out, out


def test_params_and_target_reach_the_series(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, """
        spec: spec.yml
        tests:
          - name: stars
            module: repo
            params: {repo: prometheus/prometheus}
            answers:
              default: {json: {stars: 5.5e4}}
            exp_samples:
              - labels: 'repo_stars{repo="prometheus/prometheus"}'
                value: 55000
        """)
    assert run(capsys, file)[0] == 0


def test_nan_and_infinities_are_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, """
        spec: spec.yml
        tests:
          - name: not numbers
            answers:
              stats: {body: '{"queues": {"a": {"depth": NaN}, "b": {"depth": Infinity}, "c": {"depth": 1e6}}}'}
              health: {json: {healthy: -.inf}}
            exp_samples:
              - {labels: 'queue_depth{instance="offline", queue="a"}', value: NaN}
              - {labels: 'queue_depth{instance="offline", queue="b"}', value: +Inf}
              - {labels: 'queue_depth{instance="offline", queue="c"}', value: 1e+06}
              - {labels: 'queue_healthy{instance="offline"}', value: -.inf}
        """)
    code, out, _ = run(capsys, file)
    assert code == 0, out


def test_an_integer_value_is_exact_to_the_largest_float_and_beyond_it_a_located_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = 2**1023  # finite as a float (the largest ones are up to 1.8e308)
    tests = f"""
        spec: spec.yml
        tests:
          - name: big numbers
            answers:
              stats: {{body: '{{"queues": {{"a": {{"depth": {big}}}}}}}'}}
              health: {{json: {{healthy: 1}}}}
            exp_samples:
              - {{labels: 'queue_depth{{instance="offline", queue="a"}}', value: {big}}}
        """
    code, out, _ = run(capsys, write(tmp_path, tests))
    assert code == 0, out
    file = write(tmp_path, tests.replace(f"value: {big}", "value: -1" + "0" * 400))
    code, out, err = run(capsys, file)
    assert code == 1 and "Traceback" not in out + err and "fault" not in out + err
    assert f"{file}:8:71: tests[0].exp_samples[0].value: an integer beyond a float64 (1.8e308): write +Inf or -Inf" in out + err


INVALID = """
spec: spec.yml
tests:
  - name: typos
    modul: default
    answers:
      stat: {file: stats.json}
    exp_samples:
      - labels: 'queue_depth{queue=~"orders"}'
        value: 42
      - label: 'x'
        value: 1
      - labels: 'queue_depth{queue="a"'
        value: abc
    exact: yes
  - name: wrong module
    module: defualt
    answers: {stats: {json: {}, file: stats.json}}
    exp_samples: []
  - name: an error has no status
    answers: {stats: {error: timeout, status: 500}, health: {status: 200}}
    exp_samples:
      - {labels: 'a{b="c"}', value: 1}
      - {labels: 'a{ b = "c" }', value: 2}
  - name: a parameter that does not match
    module: repo
    params: {repo: NOPE}
    answers: {default: {status: 200}}
    exp_samples: []
"""


def test_an_invalid_test_file_gets_every_problem_located_and_no_test_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, INVALID)
    code, out, err = run(capsys, file)
    assert (code, err) == (1, "")
    assert out.splitlines() == [f"{file}:{line}" for line in [
        "4:5: tests[0].modul: unknown key 'modul' (did you mean 'module'?)",
        "6:7: tests[0].answers.stat: module default has no endpoint 'stat' (did you mean 'stats'?)",
        "6:7: tests[0].answers: no answer for endpoint(s) health: a test gives one for each endpoint of module default",
        "8:35: tests[0].exp_samples[0].labels: invalid series: label queue: only = is allowed: an expected sample is one series, not a selection",
        "10:9: tests[0].exp_samples[1]: missing required key 'labels'",
        "10:9: tests[0].exp_samples[1].label: unknown key 'label' (did you mean 'labels'?)",
        "12:39: tests[0].exp_samples[2].labels: invalid series: missing } at the end",
        '13:16: tests[0].exp_samples[2].value: "abc" is not a number: write a number, or NaN, +Inf or -Inf',
        '14:12: tests[0].exact: expected true or false, got "yes"',
        "16:13: tests[1].module: unknown module 'defualt' (did you mean 'default'?)",
        "17:33: tests[1].answers.stats.file: json and file are alternatives: an answer has one body",
        "20:39: tests[2].answers.stats.status: an answer with error: timeout never came: it has no status",
        "23:18: tests[2].exp_samples[1].labels: a{b=\"c\"} is expected already, at exp_samples[0]",
        "26:13: tests[3].params: parameter 'repo' does not match '[a-z]+/[a-z]+'",
    ]]


def test_a_typo_of_a_required_key_says_both_the_unknown_key_and_the_missing_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, PASSING.replace("  - name: two queues", "  - nme: two queues"))
    code, out, err = run(capsys, file)
    assert (code, err) == (1, "")
    assert out.splitlines() == [f"{file}:3:5: tests[0]: missing required key 'name'",
                                f"{file}:3:5: tests[0].nme: unknown key 'nme' (did you mean 'name'?)"]


def test_top_level_x_keys_hold_the_anchors_of_a_test_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, """
        spec: spec.yml
        x-answers: &answers
          stats: {file: stats.json}
          health: {json: {healthy: 1}}
        x-notes: anything, ignored
        tests:
          - name: healthy
            answers: *answers
            exp_samples: [{labels: probe_success, value: 1}]
          - name: the same answers, another target
            target: http://other.example
            answers: *answers
            exp_samples: [{labels: 'queue_healthy{instance="http://other.example"}', value: 1}]
        """)
    code, out, err = run(capsys, file)
    assert (code, out, err) == (0, f"{file}: 2 test(s) passed\n", "")
    assert list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(yaml.safe_load(file.read_text()))) == []


def test_an_unreadable_test_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    passing = write(tmp_path, PASSING)
    code, out, err = run(capsys, tmp_path / "absent.test.yml", passing)
    assert code == 2
    assert err == f"{tmp_path / 'absent.test.yml'}: cannot read: No such file or directory\n"
    assert out == f"{passing}: 1 test(s) passed\n"  # the other files still run


def test_an_unreadable_spec_or_answer_is_located_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, PASSING.replace("stats.json", "absent.json"))
    code, out, _ = run(capsys, file)
    assert code == 2
    assert out == f"{file}:6:21: tests[0].answers.stats.file: cannot read {tmp_path / 'absent.json'}: No such file or directory\n"
    file = write(tmp_path, PASSING.replace("spec: spec.yml", "spec: absent.yml"))
    code, out, _ = run(capsys, file)
    assert code == 2
    assert out == f"{file}:1:7: spec: cannot use the spec: {tmp_path / 'absent.yml'}: cannot read: No such file or directory\n"


def test_an_answer_file_nobody_writes_is_located_as_unreadable_within_2s(tmp_path: Path) -> None:
    file = write(tmp_path, PASSING.replace("stats.json", "fifo"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading waits for a writer, as a read from a hung NFS mount waits for the server
    # a process of its own: a read that never ends fails the test at the timeout, and no thread of it stays here
    result = subprocess.run([sys.executable, "-m", "jsonexporter", "test", str(file)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (2, "")
    assert result.stdout == (f"{file}:6:21: tests[0].answers.stats.file: cannot read {fifo}: "
                             "no answer within 2s (a FIFO or device nobody writes, or a hung mount?)\n")


def test_a_spec_given_as_a_directory_is_its_files_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, PASSING)
    specs = tmp_path / "specs"
    specs.mkdir()
    (tmp_path / "spec.yml").rename(specs / "queue.yml")
    (specs / "other.yaml").write_text("modules:\n  other:\n    endpoints: {e: {url: 'http://127.0.0.1:1/'}}\n"
                                      "    metrics: [{name: other_up, help: Up., endpoint: e, value: up}]\n")
    file = tmp_path / "t.test.yml"
    file.write_text(file.read_text().replace("spec: spec.yml", "spec: specs"))
    assert run(capsys, file)[:2] == (0, f"{file}: 1 test(s) passed\n")
    (specs / "other.yaml").unlink()
    (specs / "queue.yml").unlink()
    code, out, _ = run(capsys, file)
    assert code == 2 and "spec: cannot use the spec: " in out and "no spec in this directory" in out


def test_an_invalid_spec_gets_its_errors_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, PASSING, spec=SPEC.replace("value: depth", "valeu: depth"))
    code, out, _ = run(capsys, file)
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"{file}:1:7: spec: the spec {tmp_path / 'spec.yml'} is invalid: 1 error(s), listed with its name"
    assert lines[1].startswith(f"{tmp_path / 'spec.yml'}:") and "unknown key 'valeu' (did you mean 'value'?)" in lines[1]
    assert len(lines) == 2


def test_invalid_yaml_is_located(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, "spec: spec.yml\ntests: [\n")
    code, out, _ = run(capsys, file)
    assert code == 1
    assert re.fullmatch(rf"{re.escape(str(file))}:\d+:\d+: <root>: invalid YAML: .+\n", out), out


def test_an_empty_test_file_says_so_in_its_own_terms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, "# tests to come\n")
    code, out, _ = run(capsys, file)
    assert (code, out) == (1, f"{file}:1:1: <root>: the test file is empty\n")


def test_the_worst_exit_code_of_several_files_wins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    passing = write(tmp_path, PASSING, name="a.test.yml")
    failing = write(tmp_path, PASSING.replace("value: 42", "value: 1"), name="b.test.yml")
    assert run(capsys, passing, failing)[0] == 1
    assert run(capsys, failing, passing)[0] == 1
    assert run(capsys, passing, passing)[0] == 0


def test_the_specs_secrets_never_show_in_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = SPEC.replace("stats: {url: '{target}/stats'}", "stats: {url: 'https://queue.example/stats', headers: {Authorization: 'Bearer hunter2hunter2'}}")
    file = write(tmp_path, PASSING.replace("{file: stats.json}", "{body: 'Bearer hunter2hunter2'}"), spec=spec)
    code, out, _ = run(capsys, file)
    assert code == 1 and "invalid_json" in out
    assert "hunter2" not in out


def test_the_targets_credentials_never_show_in_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    basic = base64.b64encode(b"bob:TargetPw-4321").decode()
    tests = PASSING.replace("target: http://queue.example", "target: http://bob:TargetPw-4321@queue.example")
    file = write(tmp_path, tests.replace("{file: stats.json}", f"{{body: 'TargetPw-4321 {basic} not json'}}"))
    code, out, _ = run(capsys, file)
    assert code == 1 and "invalid_json" in out and "body starts with" in out
    assert "TargetPw" not in out and basic[:8] not in out, out


@pytest.mark.parametrize("text", [
    INVALID, "tests: 3\n", "- a\n", "", "spec: 3\ntests: [{}]\n", "spec: spec.yml\ntests: [{name: x, answers: [], exp_samples: {}}]\n",
    "spec: spec.yml\ntests: [{name: x, answers: {stats: 1, health: {file: 3}}, exp_samples: [1, {labels: 2, value: true}]}]\n",
    "spec: spec.yml\ntests: [{name: x, answers: {stats: {file: /}, health: {status: 99}}, exp_samples: [{labels: '{__name__=\"a\"}', value: 1e999}]}]\n",
])
def test_bad_input_never_gives_a_traceback(tmp_path: Path, text: str) -> None:
    file = write(tmp_path, text)
    result = subprocess.run([sys.executable, "-m", "jsonexporter", "test", str(file)], capture_output=True, text=True, timeout=60)
    assert result.returncode in (1, 2), result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2 or result.stderr == "", result.stderr
    assert all(line.startswith(str(tmp_path)) for line in result.stdout.splitlines()), result.stdout


# -- series ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "series"), [
    ("up", Series("up", frozenset())),
    ("up{}", Series("up", frozenset())),
    (' x_total { a = "1" , b="2", } ', Series("x_total", frozenset({("a", "1"), ("b", "2")}))),
    ('{__name__="ns:x", a="b"}', Series("ns:x", frozenset({("a", "b")}))),
    (r'x{a="q\"b\\c\nd\x41\u00e9"}', Series("x", frozenset({("a", 'q"b\\c\ndAé')}))),
    ("x{a='single', b=`raw\\n`}", Series("x", frozenset({("a", "single"), ("b", "raw\\n")}))),
])
def test_series_are_read_as_promql_writes_them(text: str, series: Series) -> None:
    assert parse_series(text) == series


@pytest.mark.parametrize(("text", "offset", "message"), [
    ("", 0, "a series needs a metric name"),
    ('{a="b"}', 0, "a series needs a metric name"),
    ("x{a!=\"b\"}", 3, "only = is allowed"),
    ('x{a="b" c="d"}', 8, "expected , or }"),
    ('x{a="b"', 7, "missing } at the end"),
    ('x{a="b}', 4, "unterminated string"),
    ("x{a=b}", 4, "expected a quoted label value"),
    (r'x{a="\q"}', 5, "invalid escape \\q"),
    (r'x{a="\U00110000"}', 5, "beyond Unicode"),
    ('x{a="1",a="2"}', 8, "label a is given twice"),
    ('x{__name__="y"}', 0, "the metric name is given twice"),
    ('{__name__="a-b"}', 0, "invalid metric name"),
    ("x y", 2, "unexpected 'y'"),
])
def test_a_series_that_is_not_one_says_where(text: str, offset: int, message: str) -> None:
    with pytest.raises(SeriesSyntaxError) as caught:
        parse_series(text)
    assert caught.value.offset == offset and message in str(caught.value)


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=8))
def test_a_written_series_reads_back(value: str) -> None:
    assert parse_series(format_series("x", {"a": value, "b": "1"})) == Series("x", frozenset({("a", value), ("b", "1")}))


# -- the schema, and the loader that agrees with it --------------------------------------------------------

def _subschemas(schema: Any) -> Iterator[dict[str, Any]]:
    if isinstance(schema, dict):
        yield schema
        for key, value in schema.items():
            if key in ("properties", "definitions"):
                for sub in value.values():
                    yield from _subschemas(sub)
            elif key in ("items", "additionalProperties"):
                yield from _subschemas(value)


def test_the_test_schema_is_valid_and_describes_every_property() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    properties = {name: sub for schema in _subschemas(SCHEMA) for name, sub in schema.get("properties", {}).items()}
    assert {"spec", "tests", "answers", "exp_samples", "exact", "json", "file", "error", "labels", "value"} <= set(properties)
    assert [name for name, sub in properties.items() if not sub.get("description", "").strip()] == []


def test_the_packaged_test_schema_is_the_schema_file() -> None:
    packaged = resources.files("jsonexporter.spectest").joinpath("jsonexporter-test.schema.json").read_text(encoding="utf-8")
    assert packaged == SCHEMA_FILE.read_text(encoding="utf-8")


def test_the_cookbooks_test_files_follow_the_schema() -> None:
    files = sorted((ROOT / "examples" / "tests").glob("*.test.yml"))
    assert files
    for file in files:
        jsonschema.validate(yaml.safe_load(file.read_text()), SCHEMA)


NAMES = st.sampled_from(["default", "repo", "stats", "health", "nope"])
ANSWERS = st.fixed_dictionaries({}, optional={
    "json": st.one_of(st.none(), st.integers(), st.dictionaries(st.sampled_from(["healthy", "queues"]), st.integers(), max_size=2)),
    "file": st.sampled_from(["stats.json", "absent.json"]),
    "body": st.sampled_from(["{}", "nope"]),
    "status": st.sampled_from([200, 404, 503]),
    "error": st.sampled_from(["timeout", "connection_error"]),
})
SAMPLES = st.fixed_dictionaries({
    "labels": st.sampled_from(["probe_success", 'queue_depth{queue="orders"}', "x{", 'a{b!="c"}']),
    "value": st.one_of(st.integers(-2, 2), st.sampled_from(["NaN", "+Inf", "1e+06", "abc"])),
})
TESTS = st.fixed_dictionaries(
    {"name": st.text(min_size=1, max_size=4), "answers": st.dictionaries(NAMES, ANSWERS, min_size=1, max_size=2),
     "exp_samples": st.lists(SAMPLES, max_size=3)},
    optional={"module": NAMES, "target": st.sampled_from(["http://x", ""]), "params": st.dictionaries(st.just("repo"), st.sampled_from(["a/b", "X"])),
              "exact": st.booleans()},
)
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 700), st.text(max_size=4), st.lists(st.integers(), max_size=2))
DOCUMENTS = st.fixed_dictionaries({"spec": st.just("spec.yml"), "tests": st.lists(TESTS, min_size=1, max_size=2)})


def suite_documents() -> st.SearchStrategy[Any]:
    """Test-file-shaped documents: mostly right, then a few breakages (extra keys, wrong types)."""
    return broken_documents(DOCUMENTS, ["extra", "modul", "exp_sample", "label", "status"], JUNK)


# messages only the schema layer produces
SCHEMA_MESSAGES = re.compile(
    r"^(unknown key |expected |missing required key |must not be empty$)|( is not one of | is not a number: | is (less|greater) than )"
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(suite_documents())
def test_the_loader_agrees_with_the_schema(tmp_path: Path, doc: Any) -> None:
    write(tmp_path, "")
    text = yaml.safe_dump(doc, sort_keys=False)
    assert yaml.safe_load(text) == doc
    schema_errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc))
    loaded = load_suite(text, str(tmp_path / "t.test.yml"))  # never raises
    errors = [p for p in loaded.problems if p.severity == "error"]
    event(f"schema {'rejects' if schema_errors else 'accepts'}, loader {'rejects' if errors else 'accepts'}")
    if schema_errors:
        assert loaded.suite is None
        for e in schema_errors:
            where = tuple(e.absolute_path)
            assert any(p.path[: len(where)] == where for p in errors), f"{e.message} at {where} not reported: {loaded.problems}"
    else:
        assert [p for p in errors if SCHEMA_MESSAGES.search(p.message)] == []
        assert (loaded.suite is None) == bool(errors)


def test_the_spec_of_these_tests_is_valid() -> None:
    spec, problems = load_text(textwrap.dedent(SPEC), "spec.yml")
    assert spec is not None, problems


def test_the_example_of_the_docs_passes(capsys: pytest.CaptureFixture[str]) -> None:
    docs = ROOT / "docs" / "testing.md"
    text = docs.read_text()
    example = text[text.index("```yaml\n") + 8 :]
    loaded = load_suite(example[: example.index("```")], str(docs))  # its paths are relative to docs/
    assert loaded.suite is not None, loaded.problems
    assert run_suite(loaded.suite, sys.stdout)
    assert capsys.readouterr().out == f"{docs}: 1 test(s) passed\n"


def test_the_example_of_the_readme_passes_on_its_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    spec = next(b for b in blocks if b.lstrip("#").lstrip().startswith("yaml-language-server: $schema=../schemas/jsonexporter.schema.json") and "modules:" in b)
    tests = next(b for b in blocks if "exp_samples:" in b)
    (tmp_path / "queue-stats.yml").write_text(spec)
    (tmp_path / "t.test.yml").write_text(tests)
    code, out, _ = run(capsys, tmp_path / "t.test.yml")
    assert code == 0, out


async def test_a_secret_named_parameter_is_hidden_as_a_live_probe_hides_it(tmp_path: Path, upstream: UpstreamFactory, exporter: ExporterFactory,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    spec = """
        modules:
          keyed:
            targets: {allow: ['http://(127\\.0\\.0\\.1|api\\.example):\\d+']}
            parameters: {api_key: {pattern: '[A-Za-z0-9-]+'}}
            endpoints: {data: {url: '{target}/data', headers: {X-Api-Key: '{api_key}'}}}
            metrics: [{name: v, help: x, value: v}]
        """

    async def echo(request: web.Request) -> web.Response:  # an upstream quoting the key back, where no pattern rule sees it
        return web.Response(text=f"denied {request.headers['X-Api-Key']} not json")

    up = await upstream({"/data": echo})
    client = await exporter(textwrap.dedent(spec))
    live = await (await client.get("/probe", params={"module": "keyed", "target": up.url, "api_key": "Key-5544332211", "debug": "true"})).text()
    assert "invalid_json" in live and "body starts with" in live and "Key-5544332211" not in live
    file = write(tmp_path, """
        spec: spec.yml
        tests:
          - name: the key echoed
            module: keyed
            target: 'http://api.example:80'
            params: {api_key: Key-5544332211}
            answers:
              data: {body: 'denied Key-5544332211 not json'}
            exp_samples: [{labels: probe_success, value: 1}]
        """, spec=spec)
    code, out, _ = run(capsys, file)
    assert code == 1 and "invalid_json" in out and "body starts with" in out
    assert "Key-5544332211" not in out, out


ECHO_SPEC = """
    modules:
      default:
        targets: {allow: ['http://(127\\.0\\.0\\.1|api\\.example):\\d+']}
        endpoints: {e: {url: '{target}/x', headers: {X-Api-Key: Sup3rS3cretHeaderVal}}}
        metrics: [{name: m, help: h, each: items, value: v, labels: {k: k}}]
    """


async def test_a_spec_secret_echoed_in_a_label_is_hidden_offline_as_a_live_probe_hides_it(
        tmp_path: Path, upstream: UpstreamFactory, exporter: ExporterFactory, capsys: pytest.CaptureFixture[str]) -> None:
    """`probe --input` and `jsonexporter test` build the answer's Redactor as a live probe does (probe.answer_redactor):
    the spec's literal X-Api-Key echoed by the answer is `<redacted>` in all three."""
    answer = {"items": [{"k": "Sup3rS3cretHeaderVal", "v": 1}]}
    up = await upstream({"/x": answer})
    client = await exporter(textwrap.dedent(ECHO_SPEC))
    live = await (await client.get("/probe", params={"target": up.url})).text()
    assert 'm{k="<redacted>"} 1' in live
    (tmp_path / "spec.yml").write_text(textwrap.dedent(ECHO_SPEC))
    (tmp_path / "in.json").write_text(json.dumps(answer))
    offline = subprocess.run(jsonexporter("probe", "--config.file", str(tmp_path / "spec.yml"), "--input", f"e={tmp_path / 'in.json'}"),
                             capture_output=True, text=True, timeout=60)
    assert offline.returncode == 0 and 'm{k="<redacted>"} 1' in offline.stdout and "Sup3r" not in offline.stdout + offline.stderr
    file = write(tmp_path, """
        spec: spec.yml
        tests:
          - name: the key echoed
            target: 'http://api.example:80'
            answers: {e: {file: in.json}}
            exp_samples: [{labels: 'm{k="<redacted>"}', value: 1}]
        """, spec=ECHO_SPEC)
    (tmp_path / "in.json").write_text(json.dumps(answer))
    code, out, _ = run(capsys, file)
    assert code == 0 and "1 test(s) passed" in out, out
