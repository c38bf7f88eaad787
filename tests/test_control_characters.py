"""What an upstream sends that a terminal would act on: a reason phrase with ESC[2K ESC[1G (erase the line, back to its
start), a vertical tab or a form feed (a line's end to Python's splitlines and some log tools). It reached logfmt log
lines and the debug trace raw: a forged `level=error msg=…` line shown in place of the real one (the twelfth
red-team review). Both now write every control character as its escape (trace.printable)."""

from __future__ import annotations

import logging
import textwrap
from typing import Any

import pytest
from conftest import make_spec, raw_server

from jsonexporter import logs
from jsonexporter.secrets import Redactor
from jsonexporter.server import make_app
from jsonexporter.trace import Trace, printable

FORGED = b"HTTP/1.1 503 busy\x1b[2K\x1b[1Glevel=error msg=\"forged line\"\x0b\x0c\x7f"


async def test_an_upstream_reason_phrase_with_terminal_escapes_is_escaped_in_logfmt_and_the_trace(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    server, url = await raw_server(FORGED + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    try:
        client = await aiohttp_client(make_app(make_spec(textwrap.dedent(rf"""
            modules:
              default:
                endpoints: {{main: {{url: '{url}/'}}}}
                metrics: [{{name: x, help: x, value: v}}]
            """))))
        caplog.set_level(logging.WARNING)
        traced = await (await client.get("/probe", params={"debug": "true"})).text()
    finally:
        server.close()
    logged = "\n".join(logs.LogfmtFormatter().format(record) for record in caplog.records)
    assert "invalid_status" in traced and "HTTP status 503 busy" in logged
    for text in (logged, traced):
        assert not any(c in text for c in "\x1b\x0b\x0c\x7f"), repr(text)
        assert "busy\\x1b[2K\\x1b[1Glevel=error" in text  # shown, as its escapes
    assert len(logged.splitlines()) == len(caplog.records)  # one line a record, whatever splitlines counts as a line's end


def test_a_logfmt_value_escapes_every_control_character_and_stays_bare_when_it_needs_no_quotes() -> None:
    assert logs._logfmt_value("plain") == "plain"
    assert logs._logfmt_value("a\u2028b") == '"a\\u2028b"'
    assert logs._logfmt_value('x "y"\tz\nw\r\x00\x9b') == '"x \\"y\\"\\tz\\nw\\r\\x00\\x9b"'
    assert printable("line one\nline two\ttab") == "line one\nline two\ttab"  # a trace's own line breaks and tabs stay


def test_a_secret_with_a_carriage_return_is_hidden_in_a_trace_line_that_escapes_it() -> None:
    secret = "s3cr3t\rtoken-value"
    trace = Trace()
    trace.add(f"label value {secret} read")
    text = Redactor([secret])(trace.text())
    assert "\r" not in text and "s3cr3t" not in text and "token-value" not in text, text
    assert printable("a\rb\x1b\u2028") == "a\\rb\\x1b\\u2028"  # as repr writes them: one of the Redactor's forms
