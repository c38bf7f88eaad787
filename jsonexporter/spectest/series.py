"""Series written as PromQL series selectors (`name{a="b"}`), as `promtool test rules` writes its
expected samples: parsed into a name and a label set, and written back the same way."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_SPACE = " \t\r\n"
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}


@dataclass(frozen=True, slots=True)
class Series:
    """One series: its sample name (`x_total`, `x_bucket`) and its labels, as the exposition writes them."""

    name: str
    labels: frozenset[tuple[str, str]]

    def __str__(self) -> str:
        return format_series(self.name, dict(sorted(self.labels)))


class SeriesSyntaxError(ValueError):
    """`offset`: the character of the text where it goes wrong."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset


def format_series(name: str, labels: Mapping[str, str]) -> str:
    """`name{a="b",c="d"}` with the exposition's escapes (which PromQL reads back), `name` without labels."""
    if not labels:
        return name
    pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{name}{{{pairs}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def parse_series(text: str) -> Series:
    """`name`, `name{a="b", ...}` or `{__name__="name", a="b"}`: equality matchers only, since an expected
    sample is one series, not a selection. Raise SeriesSyntaxError at the offending character."""
    i = _skip(text, 0)
    name = ""
    found = _NAME.match(text, i)
    if found:
        name, i = found.group(), found.end()
    labels: dict[str, str] = {}
    i = _skip(text, i)
    if i < len(text) and text[i] == "{":
        i = _matchers(text, i + 1, labels)
        i = _skip(text, i)
    if i < len(text):
        raise SeriesSyntaxError(i, f"unexpected {text[i]!r}: expected a series such as name{{label=\"value\"}}")
    if "__name__" in labels:
        if name:
            raise SeriesSyntaxError(0, "the metric name is given twice: before the braces and as __name__")
        name = labels.pop("__name__")
        if not _NAME.fullmatch(name):
            raise SeriesSyntaxError(0, f"invalid metric name {name!r}")
    if not name:
        raise SeriesSyntaxError(0, "a series needs a metric name: name{label=\"value\"}")
    return Series(name, frozenset(labels.items()))


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _SPACE:
        i += 1
    return i


def _matchers(text: str, i: int, labels: dict[str, str]) -> int:
    """Read `a="b", ...}` from `i` into `labels`; the offset just past the closing brace."""
    while True:
        i = _skip(text, i)
        if i < len(text) and text[i] == "}":
            return i + 1
        found = _LABEL.match(text, i)
        if not found:
            raise SeriesSyntaxError(i, "expected a label name or }" if i < len(text) else "missing } at the end")
        label, start = found.group(), i
        i = _skip(text, found.end())
        if text.startswith(("!=", "=~", "!~"), i):
            raise SeriesSyntaxError(i, f"label {label}: only = is allowed: an expected sample is one series, not a selection")
        if not text.startswith("=", i):
            raise SeriesSyntaxError(i, f"label {label}: expected = and a quoted value")
        i = _skip(text, i + 1)
        value, i = _string(text, i)
        if label in labels:
            raise SeriesSyntaxError(start, f"label {label} is given twice")
        labels[label] = value
        i = _skip(text, i)
        if i < len(text) and text[i] == ",":
            i += 1
        elif not (i < len(text) and text[i] == "}"):
            raise SeriesSyntaxError(i, "expected , or }" if i < len(text) else "missing } at the end")


def _string(text: str, i: int) -> tuple[str, int]:
    """A PromQL string at `i`: "..." or '...' with Go's escapes, or `...` raw."""
    quote = text[i : i + 1]
    if quote not in ('"', "'", "`"):
        raise SeriesSyntaxError(i, 'expected a quoted label value ("...")')
    out: list[str] = []
    j = i + 1
    while j < len(text):
        ch = text[j]
        if ch == quote:
            return "".join(out), j + 1
        if ch == "\\" and quote != "`":
            code = text[j + 1 : j + 2]
            if code in _HEX_DIGITS:
                digits = text[j + 2 : j + 2 + _HEX_DIGITS[code]]
                if len(digits) != _HEX_DIGITS[code] or not all(c in "0123456789abcdefABCDEF" for c in digits):
                    raise SeriesSyntaxError(j, f"invalid escape \\{code}{digits}")
                if int(digits, 16) > 0x10FFFF:
                    raise SeriesSyntaxError(j, f"invalid escape \\{code}{digits}: beyond Unicode")
                out.append(chr(int(digits, 16)))
                j += 2 + len(digits)
                continue
            if code not in _ESCAPES:
                raise SeriesSyntaxError(j, f"invalid escape \\{code}" if code else "unterminated string")
            out.append(_ESCAPES[code])
            j += 2
            continue
        if ch == "\n" and quote != "`":
            break
        out.append(ch)
        j += 1
    raise SeriesSyntaxError(i, "unterminated string")
