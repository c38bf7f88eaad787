"""Compiled expressions: JMESPath (with fast paths for plain field chains), `$` context
expressions, and the string templates of URLs, headers, params, bodies and module labels."""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.functions
from jmespath.parser import ParsedResult

from jsonexporter.secrets import redact_patterns

Search = Callable[[Any], Any]

# names a `$` expression can start with; level names given with `as` are added per metric
CONTEXT_NAMES = frozenset({"key", "index", "item", "parent", "root", "target", "module", "params"})
_KNOWN_FUNCTIONS = frozenset(jmespath.functions.Functions.FUNCTION_TABLE)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ExpressionError(Exception):
    """An invalid expression; `position` is the offset of the problem in the source text."""

    def __init__(self, message: str, position: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


@dataclass(frozen=True, slots=True)
class Expression:
    source: str
    search: Search
    on_context: bool  # a `$` expression: evaluated on the probe context, not the element
    context_names: frozenset[str] = frozenset()
    fields: tuple[str, ...] | None = None  # `a.b.c` as ("a", "b", "c") when that is all it is

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def _field_chain(ast: dict[str, Any]) -> list[str] | None:
    """The field names of `a.b.c` when that is all the expression is, else None."""
    if ast["type"] == "field":
        return [ast["value"]]
    if ast["type"] == "subexpression" and len(ast["children"]) == 2:
        left = _field_chain(ast["children"][0])
        right = ast["children"][1]
        if left is not None and right["type"] == "field":
            return [*left, right["value"]]
    return None


def _fast_search(fields: list[str]) -> Search:
    """Direct dict access with JMESPath's semantics: a field of a non-object is null."""
    if len(fields) == 1:
        (only,) = fields

        def search_one(data: Any) -> Any:
            return data.get(only) if type(data) is dict else None

        return search_one

    def search_chain(data: Any) -> Any:
        for name in fields:
            if type(data) is not dict:
                return None
            data = data.get(name)
        return data

    return search_chain


def _current_node(data: Any) -> Any:
    return data


def _functions_used(ast: dict[str, Any]) -> list[str]:
    found: list[str] = []
    stack = [ast]
    while stack:
        node = stack.pop()
        if node.get("type") == "function_expression":
            found.append(node["value"])
        stack.extend(child for child in node.get("children", ()) if isinstance(child, dict))
    return found


def _leftmost_field(ast: dict[str, Any]) -> str | None:
    node = ast
    while node["type"] != "field":
        children = [c for c in node.get("children", ()) if isinstance(c, dict)]
        if not children or node["type"] not in ("subexpression", "index_expression", "projection", "value_projection", "filter_projection", "flatten"):
            return None
        node = children[0]
    return str(node["value"])


def _parse(source: str) -> ParsedResult:
    try:
        parsed = jmespath.compile(source)
    except jmespath.exceptions.LexerError as exc:
        message = getattr(exc, "message", None) or exc.msg
        raise ExpressionError(f"invalid JMESPath: {message.lower()} at position {exc.lexer_position}", exc.lexer_position) from None
    except jmespath.exceptions.IncompleteExpressionError as exc:
        raise ExpressionError(f"invalid JMESPath: incomplete expression at position {exc.lex_position}", exc.lex_position) from None
    except jmespath.exceptions.ParseError as exc:
        eof = str(exc.token_type).lower() == "eof"
        message = "unexpected end of expression" if eof else f"unexpected token {exc.token_value!r}"
        raise ExpressionError(f"invalid JMESPath: {message} at position {exc.lex_position}", exc.lex_position) from None
    for name in _functions_used(parsed.parsed):
        if name not in _KNOWN_FUNCTIONS:
            raise ExpressionError(f"invalid JMESPath: unknown function {name}()", max(source.find(name + "("), 0))
    return parsed


def compile_expression(source: str, level_names: frozenset[str] = frozenset()) -> Expression:
    """Compile `source` once; `$...` expressions may start with a context or level name."""
    on_context = source.startswith("$")
    text = source[1:] if on_context else source
    if not text.strip():
        raise ExpressionError("empty expression", 0)
    offset = 1 if on_context else 0
    try:
        parsed = _parse(text)
    except ExpressionError as exc:
        raise ExpressionError(exc.message, exc.position + offset) from None
    names: frozenset[str] = frozenset()
    if on_context:
        first = _leftmost_field(parsed.parsed)
        allowed = CONTEXT_NAMES | level_names
        if first is None or first not in allowed:
            known = ", ".join("$" + n for n in sorted(allowed))
            raise ExpressionError(f"unknown context name {('$' + first) if first else source!r}: use one of {known}", 0)
        names = frozenset({first})
    chain = None
    if text.strip() == "@":
        search: Search = _current_node
    else:
        chain = _field_chain(parsed.parsed)
        search = _fast_search(chain) if chain is not None else parsed.search
    return Expression(source, search, on_context, names, None if chain is None else tuple(chain))


# -- templates --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Template:
    """`{name}` placeholders with `{{`/`}}` escapes; nothing else is evaluated."""

    source: str
    parts: tuple[tuple[str, str | None], ...]  # (literal text, placeholder name or None)

    def __repr__(self) -> str:
        return f"Template({redact_patterns(self.source)!r})"

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(name for _, name in self.parts if name is not None)

    def render(self, values: Mapping[str, str], quote: Callable[[str], str] | None = None) -> str:
        out: list[str] = []
        for literal, name in self.parts:
            out.append(literal)
            if name is not None:
                value = values[name]
                out.append(quote(value) if quote is not None and name != "target" else value)
        return "".join(out)


def _brace_problem(source: str) -> tuple[int, str] | None:
    """Where a lone brace is, so that the error can point at it."""
    i = 0
    while i < len(source):
        if source.startswith(("{{", "}}"), i):
            i += 2
        elif source[i] == "}":
            return i, "single '}' (write }} for a literal brace)"
        elif source[i] == "{":
            end = source.find("}", i)
            if end < 0:
                return i, "unclosed '{' (write {{ for a literal brace)"
            i = end + 1
        else:
            i += 1
    return None


def compile_template(source: str, names: frozenset[str]) -> Template:
    """Parse `source`; every placeholder must be one of `names`."""
    parts: list[tuple[str, str | None]] = []
    try:
        parsed = list(string.Formatter().parse(source))
    except ValueError as exc:
        position, problem = _brace_problem(source) or (0, str(exc))
        raise ExpressionError(f"invalid template: {problem}", position) from None
    position = 0
    for literal, field, spec, conversion in parsed:
        position += len(literal) + literal.count("{") + literal.count("}")  # each came from {{ or }}
        if field is None:
            parts.append((literal, None))
            continue
        if spec or conversion or not _IDENTIFIER.fullmatch(field):
            shown = f"{{{field}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
            raise ExpressionError(f"invalid placeholder {shown}: only {{name}} is allowed (write {{{{ and }}}} for literal braces)", position)
        if field not in names:
            known = ", ".join("{" + n + "}" for n in sorted(names))
            raise ExpressionError(f"unknown placeholder {{{field}}}: known are {known}; declare probe parameters under the module's `parameters`", position)
        parts.append((literal, field))
        position += len(field) + 2
    return Template(source, tuple(parts))
