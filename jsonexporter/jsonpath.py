"""Kubernetes JSONPath, as json_exporter uses it, translated into JMESPath for `jsonexporter migrate`.

json_exporter evaluates a `path`, a label or a value with Kubernetes' JSONPath: text with `{…}`
expressions (`planet-{.location}`), printed as text. A value or label reads one result; a `type: object`
path iterates its results. The translation gives the JMESPath that yields the same thing in each of these
places, or says, with the offset in the source, why there is none.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

Place = Literal["value", "label", "each"]

_NAME = re.compile(r"[^\s.\[\]{}()'\",=!<>&|?*@$]+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INDEX = re.compile(r"\s*(-?\d+)?\s*(?::\s*(-?\d+)?\s*(?::\s*(-?\d+)?\s*)?)?\]")
_MAX_INDEX_DIGITS = 18  # an int64's: no array is longer, and int() of thousands of digits raises
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_OPERATORS = ("==", "!=", "<=", ">=", "<", ">")
# what Go's strconv.ParseBool accepts, which json_exporter tries when a value is not a number
GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


class Untranslatable(Exception):
    """A construct without a JMESPath equivalent; `offset` is where it starts in the JSONPath text."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Translation:
    """A JMESPath expression (None: `each` over the whole document, that is no iteration)."""

    expression: str | None
    picks_first: bool = False  # where json_exporter would read several results, this takes the first


@dataclass(frozen=True, slots=True)
class _Expr:
    """A `{…}` part translated: the JMESPath, whether it yields several results, and whether it
    ends by iterating an object's values (`.*`), which an `each` does by itself."""

    text: str
    projecting: bool
    object_values_of: str | None = None  # the expression whose values `.*` takes, when that is the last step


def translate(source: str, place: Place) -> Translation:
    """The JMESPath of `source` for a value, a label or a `type: object` path. Raises Untranslatable."""
    parts = _template(source)
    expressions = [p for p in parts if isinstance(p, _Expr)]
    if place == "each":
        if len(parts) != 1 or not expressions:
            raise Untranslatable("a type: object path must be one {…} expression: json_exporter iterates its JSON results")
        return _each(expressions[0])
    if not expressions:
        text = "".join(p for p in parts if isinstance(p, str))
        return Translation(_literal_value(text) if place == "value" else _string_literal(text))
    if len(parts) == 1:
        (only,) = expressions
        return Translation(_single(only), only.projecting)
    if place == "value":
        at = source.find("{") if isinstance(parts[0], str) else source.rfind("}") + 1
        raise Untranslatable("text around a {…} value never reads as a number: json_exporter drops every such sample", max(at, 0))
    return _joined(parts)


def _each(expr: _Expr) -> Translation:
    if expr.text == "@":
        return Translation(None)  # `{$}`: the document is the one element
    if expr.object_values_of is not None:
        return Translation(expr.object_values_of)  # an `each` on an object iterates its values
    if expr.projecting:
        return Translation(expr.text)
    # one result, which json_exporter's JSON output makes a list of one; a missing one makes none
    return Translation(f"[{expr.text}][?@ != null]")


def _single(expr: _Expr) -> str:
    return f"{expr.text} | [0]" if expr.projecting else expr.text


def _joined(parts: list[str | _Expr]) -> Translation:
    """A label of text and expressions: json_exporter gives "" when any expression fails."""
    guards, pieces = [], []
    for part in parts:
        if isinstance(part, str):
            pieces.append(_string_literal(part))
            continue
        value = _single(part)
        guards.append(f"{grouped(value)} != null")
        pieces.append(f"to_string({value})")
    expression = f"{' && '.join(guards)} && join('', [{', '.join(pieces)}]) || ''"
    return Translation(expression, any(isinstance(p, _Expr) and p.projecting for p in parts))


def grouped(expression: str) -> str:
    """`expression` in parentheses unless it is a plain path or literal, for use inside a larger expression."""
    return expression if re.fullmatch(r"[\w\"@:.\-\[\]`]+", expression) else f"({expression})"


def _string_literal(text: str) -> str:
    """`text` as a JMESPath string literal: a raw string, or a JSON one when a backslash would be read as an escape."""
    if "\\" in text:
        return "`" + json.dumps(text).replace("`", "\\`") + "`"
    return "'" + text.replace("'", "\\'") + "'"


def _literal_value(text: str) -> str:
    """A value written without braces: json_exporter reads the text itself as a number or a Go boolean."""
    stripped = text
    if stripped in GO_TRUE:
        return "`1`"
    if stripped in GO_FALSE:
        return "`0`"
    try:
        number = float(stripped)
    except ValueError:
        hint = "; a JSONPath needs braces since json_exporter 0.3 (`{.field}`)" if text[:1] in ("$", "@") else ""
        raise Untranslatable("the value has no braces, so json_exporter reads the text itself, which is not a number: "
                             f"it never gave a sample{hint}") from None
    if number != number or number in (float("inf"), float("-inf")):
        return f"to_number('{stripped.lower()}')"
    return "`" + (str(int(number)) if number.is_integer() and abs(number) < 2**53 else repr(number)) + "`"


def _template(source: str) -> list[str | _Expr]:
    """Text and `{…}` parts, in order; a quoted string inside braces (`{"-"}`) is text."""
    parts: list[str | _Expr] = []
    text, i = "", 0
    while i < len(source):
        ch = source[i]
        if ch == "}":
            raise Untranslatable("a } without its {", i)
        if ch != "{":
            text += ch
            i += 1
            continue
        end = _closing_brace(source, i)
        inner = source[i + 1 : end]
        stripped = inner.strip()
        start = i + 1 + (len(inner) - len(inner.lstrip()))
        if stripped[:1] in ("'", '"') and len(stripped) >= 2 and stripped[-1] == stripped[0]:
            text += stripped[1:-1]
        else:
            if text:
                parts.append(text)
                text = ""
            parts.append(_Parser(source, start, start + len(stripped)).expression())
        i = end + 1
    if text:
        parts.append(text)
    return parts


def _closing_brace(source: str, start: int) -> int:
    close = _outside_quotes(source, "}", start + 1)
    if close < 0:
        raise Untranslatable("a { without its }", start)
    nested = _outside_quotes(source[:close], "{", start + 1)
    if nested >= 0:
        raise Untranslatable("a { inside a {…} expression", nested)
    return close


class _Parser:
    """One `{…}` expression: `$` or `@`, then fields, indexes, wildcards and filters."""

    def __init__(self, source: str, start: int, end: int) -> None:
        self.source, self.i, self.end = source, start, end

    def fail(self, message: str, at: int | None = None) -> Untranslatable:
        return Untranslatable(message, self.i if at is None else at)

    def peek(self, n: int = 1) -> str:
        return self.source[self.i : min(self.i + n, self.end)]

    def expression(self) -> _Expr:
        word = _NAME.match(self.source, self.i, self.end)
        if word and word.group() in ("range", "end", "else", "if"):
            raise self.fail(f"`{{{word.group()}}}` blocks of Kubernetes JSONPath have no JMESPath equivalent")
        if self.peek() in ("$", "@"):
            self.i += 1
        out, projecting = "", False
        object_of: str | None = None  # what a final `.*` takes the values of, when nothing before it projects
        while self.i < self.end:
            object_of = None
            if self.peek(2) == "..":
                raise self.fail("recursive descent (`..`) has no JMESPath equivalent: write the path to the field")
            if self.peek(2) == ".*":
                self.i += 2
                object_of = None if projecting else out or "@"
                out, projecting = self._project(out, ".*" if out else "*", projecting)
            elif self.peek() == "." and self.i + 1 == self.end:
                self.i += 1  # `{.}`: the current element
            elif self.peek() == ".":
                self.i += 1
                out = self._join(out, self.name())
            elif self.peek() == "[":
                out, projecting = self.bracket(out, projecting)
            elif not out and _NAME.match(self.source, self.i, self.end):
                out = self.name()
            else:
                raise self.fail(f"unexpected {self.peek()!r} in a JSONPath expression")
        return _Expr(out or "@", projecting, object_of)

    def name(self) -> str:
        match = _NAME.match(self.source, self.i, self.end)
        if not match:
            raise self.fail("a field name is missing")
        self.i = match.end()
        return _field(match.group())

    @staticmethod
    def _join(out: str, step: str) -> str:
        if not out:
            return step
        return f"{out}{step}" if step.startswith("[") else f"{out}.{step}"

    @staticmethod
    def _project(out: str, step: str, projecting: bool) -> tuple[str, bool]:
        """Another projection inside a projection: JMESPath would nest the results, JSONPath lists them flat."""
        joined = f"{out}{step}"
        return (f"{joined} | []", True) if projecting else (joined, True)

    def bracket(self, out: str, projecting: bool) -> tuple[str, bool]:
        start = self.i
        self.i += 1
        rest = self.source[self.i : self.end]
        if rest.lstrip().startswith("*"):
            self.i += len(rest) - len(rest.lstrip()) + 1
            self.expect("]")
            return self._project(out, "[*]", projecting)
        if rest.lstrip().startswith("?"):
            self.i += len(rest) - len(rest.lstrip()) + 1
            condition = self.filter()
            self.expect("]")
            step = "[*]" if condition == "@" else f"[?{condition}]"
            return self._project(out, step, projecting)
        if rest.lstrip()[:1] in ("'", '"'):
            self.i += len(rest) - len(rest.lstrip())
            key = self.quoted()
            self.expect("]")
            return self._join(out, _field(key)), projecting
        index = _INDEX.match(self.source, self.i, self.end)
        if not index or (index.group(1) is None and ":" not in index.group()):
            raise self.fail("unions (`[a,b]`) and this subscript have no JMESPath equivalent here", start)
        self.i = index.end()
        if any(g is not None and len(g.lstrip("-")) > _MAX_INDEX_DIGITS for g in index.groups()):
            raise self.fail(f"an index of more than {_MAX_INDEX_DIGITS} digits", start)
        if ":" not in index.group():
            return f"{out}[{int(index.group(1))}]", projecting
        bounds = ":".join(g or "" for g in index.groups()).rstrip(":")
        if bounds.count(":") == 0:
            bounds += ":"
        return self._project(out, f"[{bounds}]", projecting)

    def expect(self, ch: str) -> None:
        while self.peek().isspace():
            self.i += 1
        if self.peek() != ch:
            raise self.fail(f"expected {ch!r}")
        self.i += 1

    def quoted(self) -> str:
        quote = self.peek()
        close = self.source.find(quote, self.i + 1, self.end)
        if close < 0:
            raise self.fail("an unclosed quote")
        text = self.source[self.i + 1 : close]
        self.i = close + 1
        return text

    def filter(self) -> str:
        """`(@.k == "v")` → `k == 'v'`; `(@.k)` → `k != null`; `(@)` → `@` (every element)."""
        self.expect("(")
        close = _outside_quotes(self.source[: self.end], ")", self.i)
        if close < 0:
            raise self.fail("a filter without its )")
        body_start, body = self.i, self.source[self.i : close]
        self.i = close + 1
        if "&&" in body or "||" in body:
            raise Untranslatable("filters combining conditions have no translation here: split the condition", body_start)
        for op in _OPERATORS:
            at = _outside_quotes(body, op)
            if at >= 0:
                left = self.operand(body[:at], body_start)
                right = self.operand(body[at + len(op) :], body_start + at + len(op))
                return f"{left} {op} {right}"
        operand = self.operand(body, body_start)
        return "@" if operand == "@" else f"{operand} != null"

    def operand(self, text: str, at: int) -> str:
        stripped = text.strip()
        at += len(text) - len(text.lstrip())
        if stripped[:1] in ("'", '"') and len(stripped) >= 2 and stripped[-1] == stripped[0]:
            return _string_literal(stripped[1:-1])
        if _NUMBER.fullmatch(stripped) or stripped in ("true", "false", "null"):
            return f"`{stripped}`"
        if stripped.startswith("$"):
            raise Untranslatable("a filter on the document root (`$` inside a filter) has no JMESPath equivalent", at)
        if not stripped.startswith("@"):
            raise Untranslatable("unexpected text in a filter (a string without quotes?): expected @.field, a quoted string or a number", at)
        inner = _Parser(self.source, at, at + len(stripped)).expression()
        if inner.projecting:
            raise Untranslatable("a wildcard or filter inside a filter has no translation here", at)
        return inner.text


def _outside_quotes(text: str, op: str, start: int = 0) -> int:
    """Where `op` first occurs in `text` from `start`, outside quoted strings; -1 when it does not."""
    quote = None
    for k in range(start, len(text)):
        ch = text[k]
        if quote:
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
        elif text.startswith(op, k):
            return k
    return -1


def _field(name: str) -> str:
    return name if _IDENTIFIER.fullmatch(name) else json.dumps(name)
