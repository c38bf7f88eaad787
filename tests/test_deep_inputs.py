"""Inputs nested deeper than Python's stack (expressions, their literals, YAML): located problems of the
spec, never a RecursionError; and a reload that fails, however loading fails, keeps the old spec and
keeps reloading."""

from __future__ import annotations

import asyncio
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import SpecWriter, UpstreamFactory, make_spec
from metrics_util import parse, value
from test_upstream_http import LOCAL, exporter_for, probe

from jsonexporter.cli import main
from jsonexporter.server import STATE, Options, load_anew, make_app
from jsonexporter.spec import load_spec
from jsonexporter.spec.expressions import ExpressionError, compile_expression

# each kind of nesting jmespath's parser or interpreter recurses on, n levels of it
NESTINGS: dict[str, Callable[[int], str]] = {
    "parentheses": lambda n: "(" * n + "a" + ")" * n,
    "pipes": lambda n: "|".join(["a"] * n),
    "calls": lambda n: "abs(" * n + "a" + ")" * n,
    "fields": lambda n: ".".join(["a"] * n),
    "indexes": lambda n: "a" + "[0]" * n,
    "negations": lambda n: "!" * n + "a",
    "ors": lambda n: "||".join(["a"] * n),
    "lists": lambda n: "[" * n + "a" + "]" * n,
    "hashes": lambda n: "{a: " * n + "a" + "}" * n,
    "flattens": lambda n: "a" + "[]" * n,
    "filters": lambda n: "a" + "[?b == `1`]" * n,
    "projections": lambda n: "a" + "[*].b" * n,
    "a_literal": lambda n: "`" + "[" * n + "1" + "]" * n + "`",
}


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check", str(path)])
    out, err = capsys.readouterr()
    return code, out + err


@pytest.mark.parametrize("nesting", NESTINGS, ids=list(NESTINGS))
def test_an_expression_nested_a_thousand_deep_is_a_located_problem_never_a_traceback(
        nesting: str, write_spec: SpecWriter, capsys: pytest.CaptureFixture[str]) -> None:
    source = NESTINGS[nesting](1000)
    path = write_spec(f"modules:\n  m:\n    metrics:\n      - name: x\n        help: h\n        value: '{source}'\n")
    code, out = _check(path, capsys)
    assert code == 1, out
    assert "Traceback" not in out and "RecursionError" not in out
    (line,) = [line for line in out.splitlines() if "nested too deeply" in line]
    assert re.match(rf"{re.escape(str(path))}:6:\d+: modules\.m\.metrics\[0\]\.value: invalid JMESPath: (expression|literal) nested too deeply", line), line
    assert len(line) < 600, "the expression is quoted cut short"


def test_an_expression_too_long_to_parse_is_a_located_problem(write_spec: SpecWriter, capsys: pytest.CaptureFixture[str]) -> None:
    source = " || ".join(f"(a{i} && b)" for i in range(2000))  # shallow, 26 KB
    path = write_spec(f"modules:\n  m:\n    metrics:\n      - name: x\n        help: h\n        value: '{source}'\n")
    code, out = _check(path, capsys)
    assert code == 1 and "Traceback" not in out
    assert f"{path}:6:" in out and "modules.m.metrics[0].value: invalid JMESPath: expression too long (" in out


@pytest.mark.parametrize("source", ["a[{n}]", "a[0:{n}]", "a[::{n}]"], ids=["index", "slice", "step"])
def test_a_number_beyond_the_interpreters_integer_conversion_is_a_located_problem(
        source: str, write_spec: SpecWriter, capsys: pytest.CaptureFixture[str]) -> None:
    digits = "9" * (sys.get_int_max_str_digits() + 1)
    path = write_spec(f"modules:\n  m:\n    metrics:\n      - name: x\n        help: h\n        value: '{source.format(n=digits)}'\n")
    code, out = _check(path, capsys)
    assert code == 1, out
    assert "Traceback" not in out and "cannot be loaded" not in out
    assert f"{path}:6:" in out and "modules.m.metrics[0].value: invalid JMESPath:" in out


def _deepest_accepted(nesting: Callable[[int], str]) -> str:
    for n in range(1, 1000):
        try:
            compile_expression(nesting(n + 1))
        except ExpressionError:
            return nesting(n)
    raise AssertionError("no bound on this nesting below 1,000 levels")


def _on_a_deep_stack(frames: int, work: Callable[[], Any]) -> Any:
    return _on_a_deep_stack(frames - 1, work) if frames else work()


@pytest.mark.parametrize("nesting", NESTINGS, ids=list(NESTINGS))
def test_the_deepest_expression_accepted_compiles_and_evaluates_with_most_of_the_stack_used(nesting: str) -> None:
    source = _deepest_accepted(NESTINGS[nesting])
    document = {"a": {"a": 1, "b": 1}}
    used = sys.getrecursionlimit() * 6 // 10  # a probe evaluates well above this depth (aiohttp, probe, extract)

    def compile_and_search() -> None:
        try:
            compile_expression(source).search(document)
        except RecursionError:
            raise
        except Exception:  # a type error of the expression: it ran, which is what is checked
            pass

    _on_a_deep_stack(used, compile_and_search)


GOOD = """
modules:
  default:
    metrics:
      - {name: first, help: h, value: '`1`'}
"""


async def test_a_reload_of_a_too_deep_spec_fails_where_it_is_and_auto_reload_loads_the_next_good_one(aiohttp_client: Any, tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.yml"
    spec_path.write_text(textwrap.dedent(GOOD))
    client = await aiohttp_client(make_app(make_spec(GOOD, str(spec_path)), Options(auto_reload_interval=0.05), spec_file=str(spec_path)))
    state = client.app[STATE]
    deep = "(" * 5000 + "a" + ")" * 5000
    spec_path.write_text(f"modules:\n  default:\n    metrics:\n      - {{name: x, help: h, value: '{deep}'}}\n")
    response = await client.post("/-/reload")
    text = await response.text()
    assert response.status == 500 and "previous spec is still served" in text
    assert f"{spec_path}:4:" in text and "modules.default.metrics[0].value: invalid JMESPath: expression nested too deeply" in text
    metrics = parse(await (await client.get("/metrics")).text())
    assert value(metrics, "jsonexporter_config_last_reload_successful") == 0
    spec_path.write_text(textwrap.dedent(GOOD).replace("first", "second"))
    for _ in range(400):  # bounded: 20 s at most
        if "second" in {m.name for m in state.spec.modules["default"].metrics}:
            break
        await asyncio.sleep(0.05)  # polling a condition the background task changes
    assert "second" in {m.name for m in state.spec.modules["default"].metrics}


def _raising(exc: BaseException) -> Callable[[str], object]:
    def load(file: str) -> object:
        raise exc
    return load


@pytest.mark.parametrize("exc", [RecursionError("maximum recursion depth exceeded"), MemoryError(), ValueError("a bug of ours")],
                         ids=["RecursionError", "MemoryError", "ValueError"])
def test_a_load_that_raises_anything_is_a_file_that_did_not_load_with_its_reason(exc: Exception) -> None:
    loaded, reason = load_anew(_raising(exc), "spec.yml")
    assert loaded is None
    assert reason.startswith(f"spec.yml: cannot be loaded: {type(exc).__name__} at jsonexporter/server.py:")
    assert not str(exc) or str(exc) not in reason  # its text can quote a value of the file: tests/test_unexpected_failures.py


def test_a_good_spec_loads_anew_with_no_reason(tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.yml"
    spec_path.write_text(textwrap.dedent(GOOD))
    loaded, reason = load_anew(load_spec, str(spec_path))
    assert loaded is not None and reason == ""


async def test_an_oauth2_token_answer_nested_deeper_than_the_stack_fails_its_probe_saying_why(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    async def token(request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 100_000 + b"]" * 100_000, content_type="application/json")

    up = await upstream({"/token": token, "/api": {"v": 1}})
    client = await exporter_for(aiohttp_client, f"""
        modules:
          default:
            {LOCAL}
            http_client_config:
              oauth2: {{client_id: e, client_secret: shhh, token_url: '{up.url}/token'}}
            endpoints: {{api: {{url: '{{target}}/api'}}}}
            metrics: [{{name: g, help: x, endpoint: api, value: v}}]
        """)
    status, text = await probe(client, up.url, debug="true")
    assert status == 200, text
    assert "oauth2: the token endpoint's answer has no access_token" in text
    assert "probe_success 0" in text


@pytest.mark.parametrize("label", ["a", "to_string(a)"], ids=["label", "to_string"])
async def test_a_label_nested_past_the_stack_skips_its_series_saying_how_deep_a_value_can_be(aiohttp_client: Any, upstream: UpstreamFactory,
                                                                                           label: str) -> None:
    # 1,000 levels: within what the parser takes (orjson's 1,024), past what json.dumps can write on Python's stack
    async def deep(request: web.Request) -> web.Response:
        return web.Response(body=b'{"a": ' + b"[" * 1000 + b"]" * 1000 + b"}", content_type="application/json")

    up = await upstream({"/": deep})
    client = await exporter_for(aiohttp_client, f"""
        modules:
          default:
            {LOCAL}
            endpoints: {{main: {{url: '{{target}}/'}}}}
            metrics:
              - {{name: deep, help: x, value: '`1`', labels: {{l: '{label}'}}}}
              - {{name: shallow, help: x, value: '`2`'}}
        """)
    status, text = await probe(client, up.url, debug="true")
    assert status == 200, text
    assert ("metric deep: labels: a value nested too deeply to be written as text (a call per level, past Python's recursion limit of "
            f"{sys.getrecursionlimit()})") in text
    assert "RecursionError" not in text
    assert "\nshallow 2\n" in text and 'probe_extraction_errors{metric="deep"} 1' in text
