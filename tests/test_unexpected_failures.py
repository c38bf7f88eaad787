"""Inputs whose loading raises what the loader does not expect (a fault of the exporter's own): each command
says so in one line naming the file and exits 1, never a traceback; a reload says the same, without the
exception's text, which can quote a value of the file (a secret)."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_util import free_port, jsonexporter

from jsonexporter.server import Options, load_anew, make_app
from jsonexporter.spec import load_spec

# Real inputs the loaders do not anticipate (left as they are, so that these tests have a real trigger):
# a duration of 400 digits overflows the float of its seconds (spec/load.py parse_duration), an index of
# 5,000 digits is beyond the interpreter's integer conversion (jsonpath.py).
OVERFLOWING_SPEC = f"""
modules:
  default:
    timeout: {"9" * 400}s
    endpoints:
      default: {{url: 'http://127.0.0.1:1/'}}
    metrics:
      - {{name: x, help: h, value: a}}
"""
UNCONVERTIBLE_JSON_EXPORTER = f"""
modules:
  default:
    metrics:
    - name: x
      path: '{{.a[{"9" * 5000}]}}'
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
    path.write_text(OVERFLOWING_SPEC)
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(jsonexporter(*args), capture_output=True, text=True, timeout=120)


def test_check_of_a_spec_that_fails_unexpectedly_says_so_in_one_line_and_checks_the_next_file(overflowing: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(OVERFLOWING_SPEC.replace("9" * 400, "10"))
    result = _run("check", str(overflowing), str(good))
    _one_clear_line(result, overflowing)
    assert "OverflowError at jsonexporter/spec/load.py:" in result.stderr
    assert f"{good}: valid: 1 module(s)" in result.stdout


@pytest.mark.parametrize("command", [["serve", "--web.listen-address", "127.0.0.1:{port}"], ["probe", "--input", "{answer}"]], ids=["serve", "probe"])
def test_serve_and_probe_of_a_spec_that_fails_unexpectedly_say_so_in_one_line(overflowing: Path, tmp_path: Path, command: list[str]) -> None:
    answer = tmp_path / "answer.json"
    answer.write_text("{}")
    args = [a.format(port=free_port(), answer=answer) for a in command]
    _one_clear_line(_run(args[0], "--config.file", str(overflowing), *args[1:]), overflowing)


def test_test_of_a_spec_that_fails_unexpectedly_names_the_test_file_and_runs_the_others(overflowing: Path, tmp_path: Path) -> None:
    failing, passing = tmp_path / "failing.test.yml", tmp_path / "passing.test.yml"
    failing.write_text("spec: spec.yml\ntests:\n  - name: t\n    answers: {default: {json: {a: 1}}}\n    exp_samples: [{labels: x, value: 1}]\n")
    (tmp_path / "good.yml").write_text(OVERFLOWING_SPEC.replace("9" * 400, "10"))
    passing.write_text(failing.read_text().replace("spec.yml", "good.yml"))
    result = _run("test", str(failing), str(passing))
    _one_clear_line(result, failing)
    assert f"{passing}: 1 test(s) passed" in result.stdout, result.stdout


def test_migrate_of_a_configuration_that_fails_unexpectedly_says_so_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(UNCONVERTIBLE_JSON_EXPORTER)
    result = _run("migrate", str(config))
    _one_clear_line(result, config)
    assert "ValueError at jsonexporter/jsonpath.py:" in result.stderr
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


async def test_a_reload_that_fails_unexpectedly_answers_and_logs_one_line_without_the_exceptions_text(
        aiohttp_client: Any, overflowing: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = OVERFLOWING_SPEC.replace("9" * 400, "10")
    overflowing_text = overflowing.read_text()
    overflowing.write_text(good)
    client = await aiohttp_client(make_app(load_spec(str(overflowing)), Options(), spec_file=str(overflowing)))
    overflowing.write_text(overflowing_text)
    with caplog.at_level(logging.ERROR, logger="jsonexporter"):
        response = await client.post("/-/reload")
        text = await response.text()
    assert response.status == 500 and "previous spec is still served" in text
    expected = f"{overflowing}: cannot be loaded: OverflowError at jsonexporter/spec/load.py:"
    assert expected in text
    logged = [r for r in caplog.records if r.getMessage().startswith("reload failed")]
    assert logged and all(expected in str(r.fields["err"]) for r in logged)
    for said in (text, *(str(r.fields["err"]) for r in logged)):
        assert "int too large to convert to float" not in said  # the exception's own text, never quoted
