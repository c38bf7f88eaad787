"""The plain-text trace of one probe, written when /probe is called with debug=true."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import msgspec

from jsonexporter.secrets import CUT

MAX_SHOWN = 300  # characters of an intermediate result shown in a trace line
# Characters of one error message kept, whatever it quotes (labels, values, states of an answer, an upstream's
# reason phrase): the extraction's, the probe records' (server._record) and the trace's error lines; with
# extract.MAX_MESSAGES, what the server keeps of them for its 50 recent probes stays within 1 MB
MAX_MESSAGE = 1000
MAX_LINES = 5_000
MAX_LINE = MAX_MESSAGE + 200  # characters of any line: a prefix and a text cut to MAX_MESSAGE fit, a URL of 8 KB is cut
MAX_DEPTH = 64  # levels of a value shown when json.dumps cannot write it (too deep for the stack): deeper ones are `[…]`, `{…}`


def _shown(value: Any) -> Any:
    """What json.dumps cannot write: an object of an answer parsed for its rules as its fields' JSON
    (spec/objects.py; a scheduled answer is parsed so for a traced probe too), anything else as text."""
    return msgspec.to_builtins(value) if isinstance(value, msgspec.Struct) else str(value)


def shorten(value: Any, limit: int = MAX_SHOWN) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=_shown)
    except RecursionError:  # an answer nested about a thousand deep: repr would recurse as deep
        text = _shallow(value)
    except (TypeError, ValueError):
        text = repr(value)
    return cut(text, limit)


# characters that move a terminal's cursor, erase or break a line, or that tools read as a line's end: all of C0
# but the tab and the line feed (a trace's own line breaks), DEL, C1, and Unicode's line and paragraph separators
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_LINE_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # and the line feed


def printable(text: str, line_feeds: bool = False) -> str:
    """`text` with each control character written as repr writes it (`\\x1b`, `\\r`, `\\u2028`), `\\n` too with
    `line_feeds`: what an upstream sends (a reason phrase with ESC[2K, a vertical tab) is shown, never acted on by a
    terminal or read as a line of its own. repr's form, one of those the Redactor knows (secrets._forms): a trace is
    redacted after its lines are made printable, and a secret with a carriage return in it is found there so."""
    pattern = _LINE_CONTROL if line_feeds else _CONTROL
    if pattern.search(text) is None:
        return text
    return pattern.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]


def cut(text: str, limit: int) -> str:
    """`text` within `limit` characters, and how long it was (the Redactor hides a secret it cut: secrets.cut_short).
    A text cut so already is as it is: a message cut where it is made (Extraction.error) and again where it leaves
    (server._record) says once how long it was; what passes so is at most `limit` characters and the note."""
    if len(text) <= limit or _cut_at(text, limit):
        return text
    return f"{text[:limit]}{CUT} (first {limit} of {len(text)} chars)"


def _cut_at(text: str, limit: int) -> bool:
    """Whether `text` is what `cut(…, limit)` makes of a longer text: `limit` characters, then its note."""
    note = text[limit:]
    head = f"{CUT} (first {limit} of "
    return note.startswith(head) and note.endswith(" chars)") and note[len(head):-len(" chars)")].isdigit()


def _shallow(value: Any) -> str:
    """`value` as JSON, without recursion: containers deeper than MAX_DEPTH written `[…]` or `{…}`."""
    out: list[str] = []
    open_: list[tuple[Iterator[Any], str]] = []  # the containers being written: their entries, their closing bracket
    first = True  # the next entry is its container's first
    item: Any = value
    while True:
        if type(item) in (list, dict) and item and len(open_) >= MAX_DEPTH:
            out.append("[" + CUT + "]" if type(item) is list else "{" + CUT + "}")
        elif type(item) is list and item:
            out.append("[")
            open_.append((iter(item), "]"))
        elif type(item) is dict and item:
            out.append("{")
            open_.append((iter(item.items()), "}"))
        else:
            out.append(json.dumps(item, ensure_ascii=False, default=str))
        first = bool(open_) and out[-1] in ("[", "{")
        while open_:
            entries, closing = open_[-1]
            entry: Any = next(entries, _END)
            if entry is not _END:
                break
            open_.pop()
            out.append(closing)
        else:
            return "".join(out)
        if not first:
            out.append(", ")
        if closing == "}":
            key, entry = entry
            out.append(json.dumps(str(key), ensure_ascii=False) + ": ")
        item = entry


_END: Any = object()


class Trace:
    """Collects lines; bounded so a huge payload cannot make a huge trace."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.dropped = 0
        self.shown: dict[object, str] = {}  # what is traced once per probe (an iteration's result), by key: the rule that showed it

    def add(self, line: str) -> None:
        if len(self.lines) < MAX_LINES:
            self.lines.append(cut(printable(line), MAX_LINE))
        else:
            self.dropped += 1

    def text(self) -> str:
        tail = [f"... {self.dropped} more trace lines dropped"] if self.dropped else []
        return "\n".join(self.lines + tail) + "\n"
