"""Compiled expressions: JMESPath (with fast paths for plain field chains), `$` context
expressions, and the string templates of URLs, headers, params, bodies and module labels."""

from __future__ import annotations

import dataclasses
import itertools
import re
import string
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.lexer
from jmespath.parser import ParsedResult

from jsonexporter.secrets import CUT, redact_patterns
from jsonexporter.spec import objects
from jsonexporter.spec.evaluation import bounded_search
from jsonexporter.spec.functions import LIBRARY, CallError, call_by_columns, check_call

Search = Callable[[Any], Any]
Columns = Callable[[list[Any]], "list[Any] | None"]  # what an expression gives for each element of a list, at once; None: one by one

# names a `$` expression can start with; level names given with `as` are added per metric
CONTEXT_NAMES = frozenset({"key", "index", "item", "parent", "root", "target", "module", "params"})
PROBE_NAMES = frozenset({"root", "target", "module", "params"})  # those that are the same for every element of a probe
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
    # a multi-select hash `{k: a, j: lower(b)}` of such: its keys and the columns of their values (a histogram's buckets)
    entries: tuple[tuple[str, Columns], ...] | None = None
    # the one field a call of pure functions reads (`regex_replace(id, '^a', 'b')`: "id"): its value alone makes the result,
    # and `by_input` gives the results for a column of its values (`columns` without reading the field)
    single_input: str | None = None
    by_input: Columns | None = None
    entry_fields: tuple[str | None, ...] | None = None  # of `entries`: the field name of each that is one plain field
    # the interpreter walks lists of the element for it (a projection, filter, flatten, slice or call it evaluates):
    # work per element that grows with the element at the interpreter's pace, milliseconds for a big one (extract._chunks)
    iterates: bool = False

    @property
    def per_probe(self) -> bool:
        """A `$` expression that reads only what a probe's elements share (`$root`, `$target`, `$module`,
        `$params`): the same for every element of a rule."""
        return self.on_context and self.context_names <= PROBE_NAMES

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def field_chain(ast: dict[str, Any]) -> list[str] | None:
    """The field names of `a.b.c` when that is all the expression is, else None."""
    if ast["type"] == "field":
        return [ast["value"]]
    if ast["type"] == "subexpression" and len(ast["children"]) == 2:
        left = field_chain(ast["children"][0])
        right = ast["children"][1]
        if left is not None and right["type"] == "field":
            return [*left, right["value"]]
    return None


def _fast_search(fields: list[str]) -> Search:
    """Direct dict access with JMESPath's semantics: a field of a non-object is null (an object: a dict,
    or a projection's, spec/objects.py)."""
    # a projection's object holds the field at its attribute, which no other JSON value has: null there
    if len(fields) == 1:
        (only,) = fields
        held = objects.attribute(only)

        def search_one(data: Any) -> Any:
            return data.get(only) if type(data) is dict else getattr(data, held, None)

        return search_one

    chain = [(name, objects.attribute(name)) for name in fields]

    def search_chain(data: Any) -> Any:
        for name, held in chain:
            data = data.get(name) if type(data) is dict else getattr(data, held, None)
        return data

    return search_chain


def _field_columns(chain: list[str]) -> Callable[[list[Any]], list[Any]]:
    """`_fast_search` of each row: for one field, dict lookups at C speed (map of dict.get: 15 µs per
    512 rows, against 60 for the search function), the search where a row is not an object."""
    search = _fast_search(chain)
    if len(chain) != 1:
        return lambda rows: list(map(search, rows))
    (only,) = chain

    def column(rows: list[Any]) -> list[Any]:
        try:
            return objects.column(only, rows)
        except (TypeError, AttributeError):  # a row that is not an object (its field is null)
            return list(map(search, rows))

    return column


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
    chain = field_chain(ast)
    if chain is not None:
        return _fast_search(chain)
    if kind == "multi_select_dict":
        return _hash_search(ast)
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


def _hash_search(ast: dict[str, Any]) -> Search | None:
    """`{a: x, b: lower(y)}` (of what `_direct_search` takes) as jmespath evaluates it: null for null."""
    keys = [pair["value"] for pair in ast["children"]]
    values = [_direct_search(pair["children"][0]) for pair in ast["children"]]
    searches = [v for v in values if v is not None]
    if len(searches) != len(values):
        return None

    def search_hash(data: Any) -> Any:
        if data is None:
            return None
        return dict(zip(keys, [search(data) for search in searches], strict=True))

    return search_hash


def _direct_columns(ast: dict[str, Any], given: list[str] | None = None) -> Columns | None:
    """For an expression `_direct_search` takes: its value for each element of a list, each call made
    once per argument column (`call_by_columns`); None for other expressions. With `given`, the input
    of an expression `_single_input` accepts: its value for each value of a column of that input's
    values (the field's column given instead of read)."""
    kind = ast["type"]
    if kind == "literal":
        constant = ast["value"]
        return lambda rows: [constant] * len(rows)
    if kind == "current":
        return lambda rows: rows
    chain = field_chain(ast)
    if chain is not None:
        return (lambda inputs: inputs) if chain == given else _field_columns(chain)
    if kind == "multi_select_dict":
        return _hash_columns(ast)
    if kind != "function_expression":
        return None
    found = [_direct_columns(child, given) for child in ast["children"]]
    arguments = [a for a in found if a is not None]
    if len(arguments) != len(found):
        return None
    name = ast["value"]

    def columns(rows: list[Any]) -> list[Any] | None:
        values = [argument(rows) for argument in arguments]
        return None if any(v is None for v in values) else call_by_columns(name, [v for v in values if v is not None])

    return columns


# Calls that take about the same time and memory whatever their arguments (a time, duration or size is at most
# MAX_INPUT characters; to_number scans its text once); the others walk or build as much as they are given
_CHEAP_FUNCTIONS = frozenset({"parse_time", "parse_duration", "parse_bytes", "to_number", "add", "subtract", "multiply", "divide",
                              "abs", "ceil", "floor", "length", "type", "not_null"})
# Direct calls (`_direct_search`) are neither timed nor counted as spec/evaluation.py's are: an expression of more
# calls that walk or build what they are given (`{a: lower(s), b: lower(s), …}` with hundreds of keys) is evaluated there
MAX_DIRECT_COSTLY = 4


def _costly_calls(ast: dict[str, Any]) -> int:
    return sum(1 for node in _calls(ast) if node["value"] not in _CHEAP_FUNCTIONS)


# Calls whose result depends on their arguments only, and is a string, number, boolean or null (not `split`'s list)
PURE_FUNCTIONS = frozenset({"lower", "upper", "trim", "replace", "regex_match", "regex_extract", "regex_replace", "parse_time",
                            "to_number", "parse_duration", "parse_bytes"})
MEMO_ENTRIES = 16384  # results an expression keeps across probes, at most (`CallMemo`)
MEMO_CHARACTERS = 1 << 20  # characters of their inputs and results, at most: about 4 MB per expression at worst
_MEMO_INPUT = 1024  # characters of an input worth keeping the result of
_MEMO_KEYS = frozenset({str, type(None)})  # inputs equal only to themselves (1 == 1.0 == True would mix results)
_RESULTS = (str, int, float, bool, type(None))  # immutable: one result may be shared by many elements
_MISSING = object()


class CallMemo:
    """The results of an expression of pure calls on one field, by the field's value, kept across probes:
    real APIs give the same label values scrape after scrape (ids, regions, versions). Bounded in entries
    and characters; full, it starts again from empty (the values of the current answers fill it again).
    It lives with the compiled spec: a reload drops it with the old rules."""

    __slots__ = ("characters", "results")

    def __init__(self) -> None:
        self.results: dict[str | None, Any] = {}
        self.characters = 0

    def keep(self, fresh: dict[str | None, Any]) -> None:
        for key, result in fresh.items():
            if type(result) not in _RESULTS:
                continue
            size = (0 if key is None else len(key)) + (len(result) if type(result) is str else 0)
            if size > _MEMO_INPUT:
                continue
            if len(self.results) >= MEMO_ENTRIES or self.characters + size > MEMO_CHARACTERS:
                self.results.clear()
                self.characters = 0
            self.results[key] = result
            self.characters += size


def _single_input(ast: dict[str, Any]) -> list[str] | None:
    """The field chain that is the only input of a call made of pure functions, literals and that
    field (`lower(trim(status))`, `regex_replace(id, '^a', 'b')`); None for any other expression."""
    if ast["type"] != "function_expression" or ast["value"] not in PURE_FUNCTIONS:
        return None
    inputs: list[list[str]] = []
    for child in ast["children"]:
        if child["type"] == "literal":
            continue
        chain = field_chain(child)
        found = chain if chain is not None else _single_input(child)
        if found is None:
            return None
        inputs.append(found)
    return inputs[0] if inputs and all(found == inputs[0] for found in inputs) else None


def _memoised(of_inputs: Columns, chain: list[str]) -> tuple[Columns, Columns]:
    """The columns of an expression `_single_input` accepts, from the rows and from its input's values
    (`of_inputs`'s), each distinct input computed once and its result kept in a `CallMemo` for the
    next chunks and probes."""
    memo = CallMemo()
    field = _field_columns(chain)

    def by_input(keys: list[Any]) -> list[Any] | None:
        try:  # every input known (the common case from the second probe on): one lookup each at C speed
            return list(map(memo.results.__getitem__, keys))
        except (KeyError, TypeError):  # the memo's keys are texts and null, which no other JSON value equals
            pass
        if not set(map(type, keys)) <= _MEMO_KEYS:
            return of_inputs(keys)
        known = list(map(memo.results.get, keys, itertools.repeat(_MISSING)))
        if _MISSING not in known:
            return known
        missing = list(dict.fromkeys(key for key, result in zip(keys, known, strict=True) if result is _MISSING))
        results = of_inputs(missing)
        if results is None:  # a row fails: the caller goes row by row, and says which
            return None
        fresh = dict(zip(missing, results, strict=True))
        memo.keep(fresh)
        return [fresh[key] if result is _MISSING else result for key, result in zip(keys, known, strict=True)]

    def memoised(rows: list[Any]) -> list[Any] | None:
        return by_input(field(rows))

    return memoised, by_input


def _hash_entries(ast: dict[str, Any]) -> dict[str, tuple[Columns, str | None]]:
    """The keys of a multi-select hash `_hash_columns` takes, each with the columns of its value and
    its field name when it is one plain field; a key given twice has its last value in its first place,
    as in the object jmespath makes."""
    entries = {}
    for pair in ast["children"]:
        found = _direct_columns(pair["children"][0])
        assert found is not None
        chain = field_chain(pair["children"][0])
        entries[pair["value"]] = (found, chain[0] if chain is not None and len(chain) == 1 else None)
    return entries


def _hash_columns(ast: dict[str, Any]) -> Columns | None:
    """`_hash_search` by columns: a histogram's `buckets: '{"0.1": fast, "+Inf": all}'`, for instance."""
    keys = [pair["value"] for pair in ast["children"]]
    found = [_direct_columns(pair["children"][0]) for pair in ast["children"]]
    arguments = [a for a in found if a is not None]
    if len(arguments) != len(found):
        return None

    def columns(rows: list[Any]) -> list[Any] | None:
        values = [argument(rows) for argument in arguments]
        if any(v is None for v in values):
            return None
        return [None if row is None else dict(zip(keys, row_values, strict=True))
                for row, row_values in zip(rows, zip(*values, strict=True), strict=True)]  # JMESPath has no `{}`: some keys

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


# Nodes of which the interpreter evaluates the first child on the current node and the others on what it gave
_LEFT_ON_NODE = frozenset({"subexpression", "index_expression", "projection", "value_projection", "filter_projection", "pipe"})
# Nodes of which it evaluates every child on the current node
_ALL_ON_NODE = frozenset({"or_expression", "and_expression", "not_expression", "comparator", "multi_select_list", "multi_select_dict",
                          "key_val_pair", "function_expression", "flatten"})
_READ_NOTHING = frozenset({"literal", "index", "slice", "expref"})  # an `&expr` is evaluated on what its function iterates


def context_reads(ast: dict[str, Any]) -> frozenset[str] | None:
    """The fields an expression reads of the node it is evaluated on (of a `$` expression: the context
    names it reads, wherever they are in it); None when it reads that node whole (`@`)."""
    kind = ast["type"]
    if kind == "field":
        return frozenset({ast["value"]})
    if kind in _READ_NOTHING:
        return frozenset()
    children = [child for child in ast.get("children", ()) if isinstance(child, dict)]
    if kind in _LEFT_ON_NODE:
        children = children[:1]
    elif kind not in _ALL_ON_NODE:
        return None
    found: set[str] = set()
    for child in children:
        names = context_reads(child)
        if names is None:
            return None
        found |= names
    return frozenset(found)


_ITERATING = frozenset({"projection", "value_projection", "filter_projection", "flatten", "slice", "function_expression"})


def _iterates(ast: dict[str, Any]) -> bool:
    """Whether the interpreter may walk lists of the data for the expression (`Expression.iterates`)."""
    if ast["type"] in _ITERATING:
        return True
    return any(_iterates(child) for child in ast.get("children", ()) if isinstance(child, dict))


def _leftmost_field(ast: dict[str, Any]) -> str | None:
    node = ast
    while node["type"] != "field":
        children = [c for c in node.get("children", ()) if isinstance(c, dict)]
        if not children or node["type"] not in ("subexpression", "index_expression", "projection", "value_projection", "filter_projection", "flatten"):
            return None
        node = children[0]
    return str(node["value"])


# jmespath parses and evaluates by recursion, about four Python frames per level of the expression's tree (and
# json.loads its literals): a bound far below the interpreter's limit, checked before either runs. No expression a
# rule needs comes near it (a filter with a few conditions is 10 levels).
MAX_EXPRESSION_DEPTH = 64
MAX_EXPRESSION_LENGTH = 16_384  # characters
_OPENING = frozenset({"lparen", "lbracket", "lbrace", "filter"})
_CLOSING = frozenset({"rparen", "rbracket", "rbrace"})
_CHAINING = frozenset({"dot", "pipe", "or", "and", "not", "expref", "star", "flatten", "lt", "lte", "gt", "gte", "eq", "ne"})


def quoted(source: str, limit: int = 200) -> str:
    """`source` quoted for a message, its first `limit` characters when longer (an expression too long to parse)."""
    return repr(source) if len(source) <= limit else f"{source[:limit]!r}{CUT} ({len(source)} characters)"


def _literal_depth(value: Any) -> int:
    """How deep a literal's value nests (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def check_nesting(text: str) -> None:
    """Refuse, at its place, an expression longer or deeper than the parser can take on any stack.

    The depth counted is an upper bound of its tree's: each bracket opens a level, and within one each operator
    (`.`, `|`, `||`, `!`, a comparison, a projection) adds one, as a chain of them nests in the tree; a comma
    starts the next sibling at the level's own depth again."""
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"invalid JMESPath: expression too long ({len(text)} characters, at most {MAX_EXPRESSION_LENGTH})",
                              MAX_EXPRESSION_LENGTH)
    levels = [0]  # per open bracket, and the whole expression: the depth of the tree within it so far
    depth = 0  # sum(levels)
    end = 0
    tokens = jmespath.lexer.Lexer().tokenize(text)
    while True:
        try:
            token = next(tokens)
        except StopIteration:
            return
        except RecursionError:  # json.loads of a literal nested deeper than the stack
            raise ExpressionError(f"invalid JMESPath: literal nested too deeply (at most {MAX_EXPRESSION_DEPTH} levels)",
                                  max(text.find("`", end), 0)) from None
        except jmespath.exceptions.JMESPathError:
            return  # the parser says what is wrong, and where
        except ValueError:  # the lexer's int() of a number beyond the interpreter's integer conversion (4,300 digits)
            raise ExpressionError(f"invalid JMESPath: a number of more than {sys.get_int_max_str_digits():,} digits", end) from None
        kind, end = token["type"], token["end"]
        extra = 0
        if kind in _OPENING:
            levels[-1] += 1
            levels.append(1)
            depth += 2
        elif kind in _CLOSING and len(levels) > 1:
            depth -= levels.pop()
        elif kind == "comma":
            depth -= levels[-1] - 1
            levels[-1] = 1
        elif kind in _CHAINING:
            levels[-1] += 1
            depth += 1
        elif kind == "literal":
            extra = _literal_depth(token["value"])
        if depth + extra > MAX_EXPRESSION_DEPTH:
            raise ExpressionError(f"invalid JMESPath: expression nested too deeply (over {MAX_EXPRESSION_DEPTH} levels of brackets, "
                                  "operators and literals): split it between rules, or simplify it", token["start"])


def _parse(source: str) -> ParsedResult:
    check_nesting(source)
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
        reads = context_reads(parsed.parsed)  # {first}, with any other name the expression reads of the context
        names = allowed if reads is None else reads
    chain = None
    columns: Columns | None = None
    single_field = None
    by_input: Columns | None = None
    entries: tuple[tuple[str, Columns], ...] | None = None
    entry_fields: tuple[str | None, ...] | None = None
    iterates = False
    if text.strip() == "@":
        search: Search = _current_node
    else:
        chain = field_chain(parsed.parsed)
        if chain is not None:
            search = _fast_search(chain)
        else:
            direct = (_direct_search(parsed.parsed) if parsed.parsed["type"] in ("function_expression", "multi_select_dict")
                      and _costly_calls(parsed.parsed) <= MAX_DIRECT_COSTLY else None)
            search = direct or bounded_search(parsed.parsed, text)
            iterates = direct is None and _iterates(parsed.parsed)
            columns = _direct_columns(parsed.parsed) if direct is not None else None
            single = _single_input(parsed.parsed)
            of_inputs = None if columns is None or single is None else _direct_columns(parsed.parsed, single)
            if of_inputs is not None and single is not None:
                columns, by_input = _memoised(of_inputs, single)
                single_field = single[0] if len(single) == 1 else None
            if columns is not None and parsed.parsed["type"] == "multi_select_dict":
                found = _hash_entries(parsed.parsed)
                entries = tuple((key, entry) for key, (entry, _) in found.items())
                entry_fields = tuple(name for _, name in found.values())
    return Expression(source, search, on_context, names, None if chain is None else tuple(chain), columns, entries, single_field,
                      by_input if single_field is not None else None, entry_fields, iterates)


# -- templates --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Template:
    """`{name}` placeholders with `{{`/`}}` escapes; nothing else is evaluated."""

    source: str
    parts: tuple[tuple[str, str | None], ...]  # (literal text, placeholder name or None)
    # the parts whose placeholder falls in the scheme or authority (userinfo, host, port) of the URL
    # this template makes: a value there picks where the request goes; found once, not per request
    origin_parts: frozenset[int] = dataclasses.field(init=False, repr=False, compare=False)
    # those of them that pick the host: not the userinfo's (a URL's host follows its last @, and the
    # renderer lets no value there add a / ? or #)
    host_parts: frozenset[int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin_parts", _url_origin_parts(self.parts))
        object.__setattr__(self, "host_parts", _url_origin_parts(self.parts, userinfo=False))

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

def _url_origin_parts(parts: tuple[tuple[str, str | None], ...], userinfo: bool = True) -> frozenset[int]:
    """The parts whose placeholder is in the scheme or authority; without `userinfo`, not those before the authority's last literal @."""
    skeleton, positions = "", []
    for i, (literal, name) in enumerate(parts):
        skeleton += literal
        if name is not None:
            positions.append((i, len(skeleton)))
            skeleton += "\0"
    scheme = re.match(r"[^/?#]*?://", skeleton)
    authority = scheme.end() if scheme else 0
    rest = skeleton[authority:]
    end = authority + (m.start() if (m := re.search(r"[/?#]", rest)) else len(rest))
    at = -1 if userinfo else skeleton.rfind("@", authority, end)
    return frozenset(i for i, position in positions if position < end and not authority <= position < at)


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
