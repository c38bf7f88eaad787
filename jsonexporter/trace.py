"""The plain-text trace of one probe, written when /probe is called with debug=true."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from jsonexporter.secrets import CUT

MAX_SHOWN = 300  # characters of an intermediate result shown in a trace line
MAX_LINES = 5_000


def _shown(value: Any) -> Any:
    """What json.dumps cannot write: an object of an answer parsed for its rules as its fields' JSON
    (spec/objects.py; a scheduled answer is parsed so for a traced probe too), anything else as text."""
    return msgspec.to_builtins(value) if isinstance(value, msgspec.Struct) else str(value)


def shorten(value: Any, limit: int = MAX_SHOWN) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=_shown)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}{CUT} (first {limit} of {len(text)} chars)"


class Trace:
    """Collects lines; bounded so a huge payload cannot make a huge trace."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.dropped = 0
        self.shown: dict[object, str] = {}  # what is traced once per probe (an iteration's result), by key: the rule that showed it

    def add(self, line: str) -> None:
        if len(self.lines) < MAX_LINES:
            self.lines.append(line)
        else:
            self.dropped += 1

    def text(self) -> str:
        tail = [f"... {self.dropped} more trace lines dropped"] if self.dropped else []
        return "\n".join(self.lines + tail) + "\n"
