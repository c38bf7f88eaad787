"""Inputs whose loading raises what the loader does not expect (a fault of the exporter's own): each command
says so in one line naming the file and exits 1, never a traceback; a reload says the same, without the
exception's text, which can quote a value of the file (a secret)."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import make_spec
from metrics_util import Series, parse, value

from jsonexporter.cli import EXIT_INVALID
from jsonexporter.exposition import Family, Part, encode_pieces, render_text
from jsonexporter.extract import ProbeContext, extract_async
from jsonexporter.probe import ProbeResult, run_offline
from jsonexporter.server import STATE, Options, load_anew, make_app, reload_spec
from jsonexporter.spec import load_spec
from jsonexporter.spec.problems import fault
from jsonexporter.trace import Trace

# Every input we know of that the loaders refused unexpectedly is now a located problem (a duration or an index
# of thousands of digits were the last): the fault of our own these tests need is made by a small stack instead.
# The command runs in a process whose recursion limit is lowered step by step, from far above what it needs,
# until a run fails: loading the spec's deepest expression (60 negations, within the 64 levels accepted) is the deepest
# stack a command uses, so that run's failure is in the loader, which must report it as its own fault.
DEEP = "!" * 60 + "a"
DEEP_SPEC = f"""
modules:
  default:
    timeout: 10s
    endpoints:
      default: {{url: 'http://127.0.0.1:1/'}}
    metrics:
      - {{name: x, help: h, value: '{DEEP}'}}
"""
SHALLOW_SPEC = DEEP_SPEC.replace(DEEP, "a")
DEEP_JSON_EXPORTER = """
modules:
  default:
    metrics:
    - name: x
      path: '{.a%s}'
""" % ("[*].a" * 15)  # 15 projections: deeper in jmespath's parser than anything else migrate does
SMALL_STACK = """
import contextlib, io, sys
from jsonexporter.cli import main
for limit in range(600, 20, -1):
    out, err = io.StringIO(), io.StringIO()
    sys.setrecursionlimit(limit)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(sys.argv[1:])
    finally:
        sys.setrecursionlimit(1000)
    if code != {succeeds} or "cannot be loaded" in err.getvalue():
        break
print(out.getvalue(), end="")
print(err.getvalue(), end="", file=sys.stderr)
sys.exit(code)
"""


def _one_clear_line(result: subprocess.CompletedProcess[str], file: Path) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if "cannot be loaded" in line]
    assert lines == [f"{file}: cannot be loaded: {lines[0].split(': ', 2)[2]}"], result.stderr
    assert "(a fault of jsonexporter's own: please report it)" in lines[0]


@pytest.fixture
def overflowing(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yml"
    path.write_text(DEEP_SPEC)
    return path


def _run(*args: str, succeeds: int = 0) -> subprocess.CompletedProcess[str]:
    """The command with ever smaller stacks until it does not end as it does with enough (`succeeds`)."""
    command = [sys.executable, "-c", SMALL_STACK.format(succeeds=succeeds), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_check_of_a_spec_that_fails_unexpectedly_says_so_in_one_line_and_checks_the_next_file(overflowing: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(SHALLOW_SPEC)
    result = _run("check", str(overflowing), str(good))
    _one_clear_line(result, overflowing)
    assert "RecursionError at " in result.stderr
    assert f"{good}: valid: 1 module(s)" in result.stdout


@pytest.mark.parametrize("command", [["serve", "--web.listen-address", "127.0.0.1:{port}"], ["probe", "--input", "{answer}"]], ids=["serve", "probe"])
def test_serve_and_probe_of_a_spec_that_fails_unexpectedly_say_so_in_one_line(overflowing: Path, tmp_path: Path, command: list[str]) -> None:
    answer = tmp_path / "answer.json"
    answer.write_text("{}")
    with socket.socket() as taken:  # serve, its spec loaded, cannot listen there and ends: the next stack is tried
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        args = [a.format(port=taken.getsockname()[1], answer=answer) for a in command]
        result = _run(args[0], "--config.file", str(overflowing), *args[1:], succeeds=EXIT_INVALID if args[0] == "serve" else 0)
    _one_clear_line(result, overflowing)


def test_test_of_a_spec_that_fails_unexpectedly_names_the_test_file_and_runs_the_others(overflowing: Path, tmp_path: Path) -> None:
    failing, passing = tmp_path / "failing.test.yml", tmp_path / "passing.test.yml"
    failing.write_text("spec: spec.yml\ntests:\n  - name: t\n    answers: {default: {json: {a: 1}}}\n    exp_samples: [{labels: x, value: 1}]\n")
    (tmp_path / "good.yml").write_text(SHALLOW_SPEC)
    passing.write_text(failing.read_text().replace("spec.yml", "good.yml"))
    result = _run("test", str(failing), str(passing))
    _one_clear_line(result, failing)
    assert f"{passing}: 1 test(s) passed" in result.stdout, result.stdout


def test_migrate_of_a_configuration_that_fails_unexpectedly_says_so_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(DEEP_JSON_EXPORTER)
    result = _run("migrate", str(config))
    _one_clear_line(result, config)
    assert "RecursionError at " in result.stderr
    assert result.stdout == ""


def _raising(exc: BaseException) -> Callable[[str], object]:
    def load(file: str) -> object:
        raise exc
    return load


def test_a_failed_reload_never_quotes_the_exception_that_could_hold_a_secret() -> None:
    # load_anew takes any loader: one whose exception quotes a value of the file, as int() and float() do
    loaded, reason = load_anew(_raising(ValueError("invalid literal for int() with base 10: 'hunter2-s3cret'")), "spec.yml")
    assert loaded is None
    assert reason.startswith("spec.yml: cannot be loaded: ValueError at jsonexporter/server.py:")
    assert "hunter2" not in reason


def test_a_reload_that_fails_unexpectedly_says_and_logs_one_line_without_the_exceptions_text(
        overflowing: Path, caplog: pytest.LogCaptureFixture) -> None:
    overflowing.write_text(SHALLOW_SPEC)
    state = make_app(load_spec(str(overflowing)), Options(), spec_file=str(overflowing))[STATE]
    overflowing.write_text(DEEP_SPEC)
    outcome: list[tuple[bool, str] | None] = []

    def reload_with(limit: int) -> None:  # in a thread of its own: a shallow stack, the test's own is deeper than the limits tried
        sys.setrecursionlimit(limit)
        try:
            outcome.append(asyncio.run(reload_spec(state)))
        except RecursionError:  # outside the loader: a stack too small for asyncio itself
            outcome.append(None)
        finally:
            sys.setrecursionlimit(1000)

    with caplog.at_level(logging.ERROR, logger="jsonexporter"):
        for limit in range(600, 20, -1):
            thread = threading.Thread(target=reload_with, args=(limit,))
            thread.start()
            thread.join(120)
            assert not thread.is_alive()
            if outcome[-1] is None or not outcome[-1][0]:
                break
    assert outcome[-1] is not None, "the smallest stacks failed outside the loader first"
    reloaded, reason = outcome[-1]
    assert not reloaded
    assert reason.startswith(f"{overflowing}: cannot be loaded: RecursionError at "), reason
    assert "maximum recursion depth" not in reason  # the exception's own text, never quoted
    logged = [r for r in caplog.records if r.getMessage().startswith("reload failed")]
    assert logged and all(reason in str(r.fields["err"]) for r in logged)
    assert "maximum recursion depth" not in str(logged[-1].fields["err"])


@pytest.mark.parametrize("duration", ["9" * 400 + "s", "9" * 5000 + "ms"], ids=["beyond_a_float", "beyond_int_conversion"])
def test_a_duration_too_large_for_a_number_is_a_located_problem(duration: str, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yml"
    spec.write_text(SHALLOW_SPEC.replace("timeout: 10s", f"timeout: {duration}"))
    result = _run("check", str(spec), succeeds=-1)  # -1: the first run, with the whole stack, is the one looked at
    assert result.returncode == 1 and "Traceback" not in result.stderr and "cannot be loaded" not in result.stderr
    assert f"{spec}:4:14: modules.default.timeout: duration '{'9' * 40}'… is too large" in result.stdout + result.stderr


def test_a_json_exporter_index_of_thousands_of_digits_is_a_located_construct_not_translated(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(DEEP_JSON_EXPORTER.replace("[*].a" * 15, f"[{'9' * 5000}]"))
    result = _run("migrate", str(config), succeeds=-1)
    assert "Traceback" not in result.stderr and "cannot be loaded" not in result.stderr
    assert f"{config}:6:17: modules.default.metrics[0].path: not translated: an index of more than 18 digits" in result.stderr


# -- a fault of ours at probe time: extraction, writing, the probe's orchestration ----------------------------------
# No answer parsed from JSON makes our code raise what it does not expect (the inputs we knew of are errors of their
# series now). The faults these tests need come from real objects given through the public API where an answer's
# values or documents go (run_offline, as `probe --input` calls it; the writer's families): an object whose
# comparison raises, documents whose lookup raises, a sample whose label value is no text. Each raises, as a fault of
# ours would, an exception whose text quotes a value.

QUOTED = "quoting sec-RRRR"
TWO_RULES = """
modules:
  default:
    endpoints: {one: {url: 'http://127.0.0.1:9/'}, two: {url: 'http://127.0.0.1:9/'}}
    metrics:
      - {name: a, help: h, endpoint: one, each: items, labels: {id: id}, value: v}
      - {name: b, help: h, endpoint: one, each: items, value: v}
      - {name: c, help: h, endpoint: two, value: v}
"""
FAULT = r"internal_error: LookupError at jsonexporter/extract\.py:\d+ \(a fault of jsonexporter's own: please report it\)"


class _Unequal:
    """A value whose comparison raises: the fast path compares a chunk's label values with those kept across probes."""

    def __eq__(self, other: object) -> bool:
        raise LookupError(QUOTED)

    __hash__ = object.__hash__


class _FaultyDocuments(dict[str, Any]):
    """Endpoint documents of which one cannot be looked up."""

    def __getitem__(self, endpoint: str) -> Any:
        if endpoint == "two":
            raise LookupError(QUOTED)
        return super().__getitem__(endpoint)


def _offline(documents: Mapping[str, Any], debug: bool = False) -> tuple[ProbeResult, Series]:
    module = make_spec(TWO_RULES).modules["default"]
    result = run_offline(module, {"one": {"items": [{"id": "x", "v": 1}]}, "two": {"v": 3}}, "offline", {})  # keeps the chunk's label texts
    assert result.extraction.faults == {}
    result = run_offline(module, documents, "offline", {}, debug)
    return result, parse(render_text(result.families))


def test_a_fault_of_ours_in_one_rule_fails_that_metric_only_and_the_others_and_the_probes_own_metrics_are_answered() -> None:
    result, s = _offline({"one": {"items": [{"id": _Unequal(), "v": 1}]}, "two": {"v": 3}})
    assert value(s, "b") == 1 and value(s, "c") == 3 and value(s, "probe_success") == 1
    assert ("a", frozenset({("id", "x")})) not in s and not any(name == "a" for name, _ in s)
    assert value(s, "probe_extraction_errors", metric="a") == 1 and value(s, "probe_series", metric="a") == 0
    assert value(s, "probe_extraction_errors", metric="b") == 0 and value(s, "probe_series", metric="b") == 1
    assert re.fullmatch(FAULT, result.extraction.faults["a"]) and list(result.extraction.faults) == ["a"]
    (message,) = result.extraction.messages
    assert re.fullmatch("metric a: " + FAULT, message) and QUOTED not in message


@pytest.mark.parametrize("debug", [False, True], ids=["fast_path", "general_path"])
def test_a_fault_of_ours_reading_one_endpoints_document_fails_its_metrics_only_on_both_paths(debug: bool) -> None:
    result, s = _offline(_FaultyDocuments({"one": {"items": [{"id": "x", "v": 1}]}, "two": {"v": 3}}), debug)
    assert value(s, "a", id="x") == 1 and value(s, "b") == 1 and "c" not in {name for name, _ in s}
    assert value(s, "probe_extraction_errors", metric="c") == 1 and value(s, "probe_series", metric="c") == 0
    assert list(result.extraction.faults) == ["c"] and re.fullmatch(FAULT, result.extraction.faults["c"])
    if debug:
        assert result.trace is not None and re.search("  rule c: " + FAULT, result.trace.text())
        assert QUOTED not in result.trace.text()


class _UnaskableDocuments(dict[str, Any]):
    """Endpoint documents that cannot say which endpoints they have."""

    def __contains__(self, endpoint: object) -> bool:
        raise LookupError(QUOTED)


@pytest.mark.parametrize("debug", [False, True])
def test_a_fault_of_ours_outside_the_rules_fails_the_probe_with_its_own_metrics_never_the_command(debug: bool) -> None:
    module = make_spec(TWO_RULES).modules["default"]
    result = run_offline(module, _UnaskableDocuments({"one": {"items": []}}), "offline", {}, debug)
    assert parse(render_text(result.families)) == {("probe_success", frozenset()): 0.0}  # offline: no endpoint metrics
    assert not result.success and result.fault is not None
    assert re.fullmatch(r"internal_error: LookupError at jsonexporter/\w+\.py:\d+ \(a fault of jsonexporter's own: please report it\)", result.fault)
    if debug:
        assert result.trace is not None and f"probe failed: {result.fault}" in result.trace.text() and QUOTED not in result.trace.text()


async def test_a_family_that_cannot_be_written_is_left_out_and_the_others_are_written() -> None:
    good = Family("good", "gauge", "h", ["good 1\n"])
    bad = Family("bad", "gauge", "h", [("bad", (("id", 7),), 1.0, 5.0)])  # type: ignore[list-item]  # a label value that is no text
    after = Family("after", "gauge", "h", ["after 2\n"])
    faults: dict[str, Exception] = {}
    pieces, _ = await encode_pieces([good, bad, after], "", "", faults=faults)
    text = b"".join(pieces).decode()
    assert parse(text) == {("good", frozenset()): 1.0, ("after", frozenset()): 2.0} and "bad" not in text
    assert list(faults) == ["bad"]
    assert re.fullmatch(r"\w+ at jsonexporter/exposition\.py:\d+ \(a fault of jsonexporter's own: please report it\)", fault(faults["bad"]))
    with pytest.raises(TypeError):  # without `faults` (render_text for the tests' own parsing): raised, never a part left out quietly
        render_text([bad])


async def test_a_family_of_more_than_a_piece_that_cannot_be_written_fails_the_answer_not_a_part_of_it() -> None:
    lines: list[Part] = [f"big{{i=\"{i}\"}} 1\n" for i in range(40_000)]  # more than a piece (256 Ki characters) before it
    big = Family("big", "gauge", "h", [*lines, ("big", (("id", 7),), 1.0, 5.0)])  # type: ignore[list-item]
    faults: dict[str, Exception] = {}
    with pytest.raises(TypeError):
        await encode_pieces([big], "", "", faults=faults)
    assert faults == {}


async def test_a_cancelled_probe_is_cancelled_during_extraction_never_turned_into_a_fault() -> None:
    module = make_spec("""
        modules:
          default:
            metrics:
              - {name: x, help: h, each: ['$root.items', '$root.items', '$root.items'], value: '`1`', labels: {a: '@'}}
        """).modules["default"]
    trace = Trace()
    task = asyncio.create_task(extract_async(module, {"default": {"items": list(range(400))}}, ProbeContext("default", "t", {}), (), trace))
    for _ in range(10_000):  # turns of the event loop until the rule runs (its trace's first line)
        if any(line.startswith("  each[") for line in trace.lines):
            break
        await asyncio.sleep(0)
    assert any(line.startswith("  each[") for line in trace.lines)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "internal_error" not in trace.text()
