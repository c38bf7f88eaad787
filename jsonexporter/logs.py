"""Logging in the formats Prometheus components use: logfmt (default) or JSON lines."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from jsonexporter.secrets import Redactor
from jsonexporter.trace import printable

_STATIC: dict[str, Any] = {}
# Logging is process-wide, so is the redactor of its lines: the running spec's (redact_with).
_REDACT: list[Redactor] = [Redactor()]


def static_fields(**fields: Any) -> None:
    """Fields of every line this process logs from now on (a worker's number)."""
    _STATIC.update(fields)


def redact_with(redactor: Redactor) -> None:
    """Redact every line from now on with `redactor` (it learns the secrets read at run time)."""
    _REDACT[0] = redactor


def kv(**fields: Any) -> dict[str, Any]:
    """Structured fields for a log call: `log.info("msg", extra=kv(module=m))`."""
    return {"fields": fields}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
    redact = _REDACT[0]
    out: dict[str, Any] = {"time": ts, "level": record.levelname.lower(), "msg": redact(record.getMessage()), **_STATIC}
    for key, value in (getattr(record, "fields", None) or {}).items():
        out[key] = value if value is None or isinstance(value, (bool, int, float)) else redact(str(value))
    if record.exc_info and record.exc_info[1] is not None:
        out["err"] = redact(f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}")
    return out


def _logfmt_value(value: Any) -> str:
    """A logfmt value: bare, or quoted with `\\`, `"`, line feeds, tabs and every other control character escaped
    (trace.printable): an upstream's reason phrase with ESC[2K or a vertical tab forges no line of its own."""
    text = str(value)
    if text and not any(c in text for c in ' ="\\\n\t') and printable(text) is text:
        return text
    return '"' + printable(text.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t"), line_feeds=True) + '"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


def setup(level: str = "info", fmt: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # one line per request is too much for an exporter scraped every few seconds
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
