"""Compiled expressions: JMESPath (with fast paths for plain field chains), `$` context
expressions, and the string templates of URLs, headers, params, bodies and module labels."""

from __future__ import annotations

import dataclasses
import functools
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.lexer
from jmespath.parser import ParsedResult

from jsonexporter.secrets import redact_patterns
from jsonexporter.spec.functions import LIBRARY, OPTIONS, CallError, call_by_columns, check_call

Search = Callable[[Any], Any]
Columns = Callable[[list[Any]], "list[Any] | None"]  # what an expression gives for each element of a list, at once; None: one by one

# names a `$` expression can start with; level names given with `as` are added per metric
CONTEXT_NAMES = frozenset({"key", "index", "item", "parent", "root", "target", "module", "params"})
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
    columns: Columns | None = None  # a call of our functions on fields and literals, by columns (`_direct_columns`)

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


def _direct_search(ast: dict[str, Any]) -> Search | None:
    """A call such as `lower(a.b)` or `divide(parse_bytes(size), `1024`)`, made only of calls, field
    chains, literals and `@`, as plain Python calls: what jmespath's interpreter does for it (visit
    the arguments, call the function), without the interpreter. None for anything else."""
    kind = ast["type"]
    if kind == "literal":
        constant = ast["value"]
        return lambda data: constant
    if kind == "current":
        return _current_node
    chain = _field_chain(ast)
    if chain is not None:
        return _fast_search(chain)
    if kind != "function_expression":
        return None
    arguments = [_direct_search(child) for child in ast["children"]]
    if any(argument is None for argument in arguments):
        return None
    name, call, searches = ast["value"], LIBRARY.call_function, [a for a in arguments if a is not None]
    if len(searches) == 1:
        (only,) = searches
        return lambda data: call(name, [only(data)])
    return lambda data: call(name, [search(data) for search in searches])


def _direct_columns(ast: dict[str, Any]) -> Columns | None:
    """For an expression `_direct_search` takes: its value for each element of a list, each call made
    once per argument column (`call_by_columns`); None for other expressions."""
    kind = ast["type"]
    if kind == "literal":
        constant = ast["value"]
        return lambda rows: [constant] * len(rows)
    if kind == "current":
        return lambda rows: rows
    chain = _field_chain(ast)
    if chain is not None:
        search = _fast_search(chain)
        return lambda rows: list(map(search, rows))
    if kind != "function_expression":
        return None
    found = [_direct_columns(child) for child in ast["children"]]
    arguments = [a for a in found if a is not None]
    if len(arguments) != len(found):
        return None
    name = ast["value"]

    def columns(rows: list[Any]) -> list[Any] | None:
        values = [argument(rows) for argument in arguments]
        return None if any(v is None for v in values) else call_by_columns(name, [v for v in values if v is not None])

    return columns


def _calls(ast: dict[str, Any]) -> list[dict[str, Any]]:
    """The function nodes of an expression in the order their names appear in its text."""
    found: list[dict[str, Any]] = []
    stack = [ast]
    while stack:
        node = stack.pop()
        if node.get("type") == "function_expression":
            found.append(node)
        children = [child for child in node.get("children", ()) if isinstance(child, dict)]
        if node.get("type") == "filter_projection" and len(children) == 3:  # written `left[?comparator].right`
            children = [children[0], children[2], children[1]]
        stack.extend(reversed(children))
    return found


def _call_positions(text: str) -> list[tuple[str, int, list[int]]]:
    """Each call in `text`: its name, where the name starts, and where each argument starts."""
    tokens = list(jmespath.lexer.Lexer().tokenize(text))
    calls: list[tuple[str, int, list[int]]] = []
    open_brackets: list[int | None] = []  # per open bracket: the call it belongs to, if any
    argument_of: int | None = None  # the call whose next argument starts at the next token
    for i, token in enumerate(tokens):
        kind = token["type"]
        if argument_of is not None and kind not in ("rparen", "eof"):
            calls[argument_of][2].append(token["start"])
        argument_of = None
        if kind == "lparen" and i and tokens[i - 1]["type"] == "unquoted_identifier":
            calls.append((tokens[i - 1]["value"], tokens[i - 1]["start"], []))
            open_brackets.append(len(calls) - 1)
            argument_of = len(calls) - 1
        elif kind in ("lparen", "lbracket", "filter", "lbrace"):
            open_brackets.append(None)
        elif kind in ("rparen", "rbracket", "rbrace") and open_brackets:
            open_brackets.pop()
        elif kind == "comma" and open_brackets and open_brackets[-1] is not None:
            argument_of = open_brackets[-1]
    return calls


def _check_calls(parsed: ParsedResult, text: str) -> None:
    """Every call's name, arity, literal arguments and patterns, at the place of the culprit."""
    calls = _calls(parsed.parsed)
    if not calls:
        return
    positions = _call_positions(text)
    if [name for name, _, _ in positions] != [node["value"] for node in calls]:
        positions = [(node["value"], max(text.find(node["value"] + "("), 0), []) for node in calls]  # not expected; the name at least
    for node, (_, start, arguments) in zip(calls, positions, strict=True):
        try:
            check_call(node["value"], [child for child in node["children"] if isinstance(child, dict)])
        except CallError as exc:
            at = arguments[exc.argument] if exc.argument is not None and exc.argument < len(arguments) else start
            raise ExpressionError(f"invalid JMESPath: {exc.message}", at) from None


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
        if exc.lexer_value == "$":  # JMESPath has no variables: our `$` is a prefix of a whole expression
            name = _IDENTIFIER.match(source, exc.lexer_position + 1)
            shown = "$" + name.group() if name else "$"
            raise ExpressionError(f"invalid JMESPath: `{shown}` inside an expression: a `$` context name can only start one; "
                                  f"give it to a function with `.` and `@`: `{shown}.lower(@)`", exc.lexer_position) from None
        message = getattr(exc, "message", None) or exc.msg
        raise ExpressionError(f"invalid JMESPath: {message.lower()} at position {exc.lexer_position}", exc.lexer_position) from None
    except jmespath.exceptions.IncompleteExpressionError as exc:
        raise ExpressionError(f"invalid JMESPath: incomplete expression at position {exc.lex_position}", exc.lex_position) from None
    except jmespath.exceptions.ParseError as exc:
        eof = str(exc.token_type).lower() == "eof"
        message = "unexpected end of expression" if eof else f"unexpected token {exc.token_value!r}"
        raise ExpressionError(f"invalid JMESPath: {message} at position {exc.lex_position}", exc.lex_position) from None
    _check_calls(parsed, source)
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
    columns: Columns | None = None
    if text.strip() == "@":
        search: Search = _current_node
    else:
        chain = _field_chain(parsed.parsed)
        if chain is not None:
            search = _fast_search(chain)
        else:
            direct = _direct_search(parsed.parsed) if parsed.parsed["type"] == "function_expression" else None
            search = direct or functools.partial(parsed.search, options=OPTIONS)
            columns = _direct_columns(parsed.parsed) if direct is not None else None
    return Expression(source, search, on_context, names, None if chain is None else tuple(chain), columns)


# -- templates --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Template:
    """`{name}` placeholders with `{{`/`}}` escapes; nothing else is evaluated."""

    source: str
    parts: tuple[tuple[str, str | None], ...]  # (literal text, placeholder name or None)
    # the parts whose placeholder falls in the scheme or authority (userinfo, host, port) of the URL
    # this template makes: a value there picks where the request goes; found once, not per request
    origin_parts: frozenset[int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin_parts", _url_origin_parts(self.parts))

    def __repr__(self) -> str:
        return f"Template({redact_patterns(self.source)!r})"

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(name for _, name in self.parts if name is not None)

    def render(self, values: Mapping[str, str], quote: Callable[[int, str], str] | None = None) -> str:
        """The text with the placeholders filled in; `quote(i, value)` encodes the value of part i."""
        out: list[str] = []
        for i, (literal, name) in enumerate(self.parts):
            out.append(literal)
            if name is not None:
                value = values[name]
                out.append(quote(i, value) if quote is not None else value)
        return "".join(out)

def _url_origin_parts(parts: tuple[tuple[str, str | None], ...]) -> frozenset[int]:
    skeleton, positions = "", []
    for i, (literal, name) in enumerate(parts):
        skeleton += literal
        if name is not None:
            positions.append((i, len(skeleton)))
            skeleton += "\0"
    scheme = re.match(r"[^/?#]*?://", skeleton)
    rest = skeleton[scheme.end() if scheme else 0:]
    end = len(skeleton) - len(rest) + (m.start() if (m := re.search(r"[/?#]", rest)) else len(rest))
    return frozenset(i for i, position in positions if position < end)


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
