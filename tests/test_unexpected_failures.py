"""Inputs whose loading raises what the loader does not expect (a fault of the exporter's own): each command
says so in one line naming the file and exits 1, never a traceback; a reload says the same, without the
exception's text, which can quote a value of the file (a secret)."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from jsonexporter.cli import EXIT_INVALID
from jsonexporter.server import STATE, Options, load_anew, make_app, reload_spec
from jsonexporter.spec import load_spec

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
