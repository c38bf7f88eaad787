"""The function library of spec expressions: strings, regular expressions, times, durations, sizes
and arithmetic, registered with jmespath's own custom functions next to its built-in ones.

Calls are checked at load (`check_call`: name, arity, the types of literal arguments, regex
patterns, which must be literals and are compiled then); at probe time a value a function cannot
use raises `FunctionError`, which extraction reports as an error of that series.

Regular expressions run on RE2 (google-re2): matching takes time linear in the input whatever the
pattern, so a pattern like `(a+)+$` on a long hostile answer cannot hold the event loop. Python's
`re` backtracks (exponential on such input, and uninterruptible); a timeout (the `regex` module)
would still spend the timeout once per element. The other patterns of a spec, matched against values
from outside (parameter `pattern`s, `targets.allow` against the target and redirect Locations), are
compiled here too, by `compile_regex`: one syntax and one matching engine for every pattern of a spec.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import jmespath
import jmespath.exceptions
import jmespath.functions
import re2
from jmespath.functions import signature

from jsonexporter.numbers import INTEGER, parse_number
from jsonexporter.slices import DeadlinePassed, current_deadline
from jsonexporter.spec.schema import suggestion
from jsonexporter.trace import shorten

MAX_INPUT = 256  # characters of a time, duration or size string: longer is not one
# How much longer than its string the result of replace() or regex_replace() may be: answers are hostile,
# and `replace(s, '', new)` or a pattern matching everywhere would multiply a long string's size.
MAX_GROWTH = 65536
# What one call of a regex function may cost, as the bytes of its string times the instructions of its pattern's RE2
# program: RE2's linear time is that product. Most patterns run on RE2's DFA, at about a GB/s whatever their size, but a
# counted repetition (`\d{2,30}`, `.{0,40}`) may exhaust its states, and RE2 goes on at up to 25 ns a byte and instruction
# (bench/regex.py): 4 Mi of them take 0.1 s at worst, the event loop held meanwhile (a 3.9 MB string took 13 s). A pattern
# of 20 instructions reads 200 KiB, `(?i)a.{0,40}timeout` (372) 11 KiB; one larger than MAX_PATTERN_SIZE is refused at load.
MAX_REGEX_WORK = 1 << 22
MAX_PATTERN_SIZE = 4096  # instructions: a pattern may read 1 KiB at least (`\pL` alone is 1,206)
# regex_replace's time over its matches: each is a call of RE2, bounded as above, but a pattern may read far past
# each of its matches (`a.*z|a`: 40 KB of `a` took 6 s, O(n²)), or a long string have very many (4 to 12 µs each)
MAX_REGEX_SECONDS = 0.1
# A call of more work than this (1.6 ms at worst) reads the clock after it: past the deadline of the computation
# running, DeadlinePassed, as the interpreter raises it (spec/evaluation.py). A chunk of a rule's elements is called by
# columns, neither timed nor counted: 512 calls at their bound would hold the event loop for a minute.
_TIMED_WORK = 1 << 16
# What one evaluation of an expression may build, in all (spec/evaluation.py counts it; a function alone is held to it
# here too, for the direct calls of expressions.py): list and object entries, 8 bytes each and what they hold (a
# million: a list of the answer's items sorted, filtered or projected), and characters of text (twice the default
# max_response_bytes). `split(s, '')` of a 3 MB text would make 3 million entries, `join` of it with itself 9e12 characters.
MAX_BUILT_ENTRIES = 1 << 20
MAX_BUILT_CHARACTERS = 1 << 23
_FLOAT_MAX = sys.float_info.max
_SHOWN = 60  # characters of a value shown in an error message
REGEX_FUNCTIONS = frozenset({"regex_match", "regex_extract", "regex_replace"})
_STRING, _NUMBER, _NULL = "string", "number", "null"


class FunctionError(Exception):
    """A function given a value it cannot use: `function NAME: cannot use VALUE: reason`."""

    def __init__(self, function: str, value: Any, reason: str) -> None:
        super().__init__(f"function {function}: cannot use {shorten(value, _SHOWN)}: {reason}")


class BuildLimitExceeded(FunctionError):
    """An evaluation that would build more than MAX_BUILT_ENTRIES or MAX_BUILT_CHARACTERS: an error of its series."""

    def __init__(self, source: str, what: str, where: str) -> None:
        Exception.__init__(self, f"expression {shorten(source, _SHOWN)} would build {what} in one evaluation (at {where}; "
                                 "bounds of docs/spec.md#functions): iterate with `each` instead, or simplify it")


class ColumnLimitExceeded(Exception):
    """The results of a call by columns (a chunk's elements at once) would have more characters of text than one
    evaluation may build: the caller takes the elements one by one instead, each an evaluation of its own, held to it."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} by columns would build more than {MAX_BUILT_CHARACTERS:,} characters of text")


class CallError(Exception):
    """A call that cannot work, found at load; `argument` is the index of the culprit (None: the call)."""

    def __init__(self, message: str, argument: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.argument = argument


class _Unusable(Exception):
    def __init__(self, value: Any, reason: str) -> None:
        super().__init__(reason)
        self.value = value
        self.reason = reason


# -- regular expressions ----------------------------------------------------------------------

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # RE2 would print parse errors to stderr; they are reported instead


@dataclass(frozen=True, slots=True)
class Pattern:
    """An RE2 program over UTF-8 bytes (RE2's own encoding: its Python wrapper would map every
    offset back to characters, four times slower on short strings), with group names as text."""

    source: str
    program: Any
    groups: int
    groupindex: Mapping[str, int]
    size: int  # instructions of its RE2 programs, the forward or the reverse one, whichever is larger

    @property
    def pattern(self) -> str:
        """The source, under `re.Pattern`'s name: messages and cache keys quote it."""
        return self.source

    def _readable(self, text: str) -> bytes:
        """The text in UTF-8, unless it is longer than a function's call may read: _Unusable then."""
        most = MAX_REGEX_WORK // self.size
        data = text.encode("utf-8", "surrogatepass")
        if len(data) > most:
            raise _Unusable(text, f"{len(data):,} bytes (UTF-8), more than the {most:,} this pattern may read in one call (its RE2 "
                                  f"program has {self.size:,} instructions, a call at most {MAX_REGEX_WORK:,} bytes times instructions)")
        return data

    def search(self, text: str) -> Any:
        """The first match of a function's call; _Unusable for a text longer than it may read."""
        data = self._readable(text)
        match = self.program.search(data)
        if len(data) * self.size >= _TIMED_WORK:
            _in_time()
        return match

    def fullmatch(self, text: str) -> bool:
        return self.program.fullmatch(text.encode("utf-8", "surrogatepass")) is not None

    def sub(self, replacement: str, text: str) -> str:
        """Every match replaced, in one pass over the matches; _Unusable for a text longer than a call may read, when
        the result would grow by more than MAX_GROWTH bytes, or when the matches took more than MAX_REGEX_SECONDS."""
        data, template = self._readable(text), replacement.encode("utf-8", "surrogatepass")
        expand = _expander(template)
        clock = time.perf_counter
        until = clock() + MAX_REGEX_SECONDS
        pieces: list[bytes] = []
        done = growth = 0
        for match in self.program.finditer(data):
            start, end = match.span()
            if start == end and start < len(data) and 0x80 <= data[start] < 0xC0:
                continue  # an empty match within a character (the wrapper goes on a byte after one): its bytes stay together
            piece = expand(match)
            growth += len(piece) - (end - start)
            if growth > MAX_GROWTH:
                raise _Unusable(text, f"the result would be more than {MAX_GROWTH} bytes longer than the string")
            pieces += (data[done:start], piece)
            done = end
            if clock() > until:
                raise _Unusable(text, f"its matches took more than {MAX_REGEX_SECONDS} s (a pattern that reads far past each "
                                      "match, such as 'a.*z|a', on a long string; bounds of docs/spec.md#functions)")
        if len(data) * self.size >= _TIMED_WORK:
            _in_time()
        if not pieces:
            return text
        pieces.append(data[done:])
        return b"".join(pieces).decode("utf-8", "surrogatepass")


def _in_time() -> None:
    deadline = current_deadline()
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlinePassed


def _expander(template: bytes) -> Callable[[Any], bytes]:
    """What a match is replaced by: the template itself when it has no backslash (no group, no escape), else its expansion."""
    if b"\\" not in template:
        return lambda match: template
    return lambda match: match.expand(template)


class RegexError(ValueError):
    """A pattern RE2 refuses; `offset` is where in the source the culprit starts, when it can be told."""

    def __init__(self, message: str, offset: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


@functools.lru_cache(maxsize=1024)
def compile_regex(source: str) -> Pattern:
    """The RE2 program of a spec's pattern: the one compiler of every regex a spec writes. Raises RegexError."""
    try:
        program = re2.compile(source.encode("utf-8", "surrogatepass"), _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        hint = " (RE2 has no backreferences or lookaround)" if reason.startswith(("invalid perl operator", "invalid escape")) else ""
        # RE2 quotes the culprit after the colon (`invalid escape sequence: \1`)
        culprit = reason.partition(": ")[2]
        offset = source.find(culprit) if culprit else -1
        raise RegexError(f"invalid regex {source!r}: {reason}{hint}", offset if offset >= 0 else None) from None
    names = {name.decode("utf-8", "surrogatepass"): index for name, index in program.groupindex.items()}
    return Pattern(source, program, program.groups, names, max(program.programsize, program.reverseprogramsize, 1))


def compiled_pattern(source: str) -> Pattern:
    """The RE2 program of a function's pattern; compiled at load, so probes find it cached. Raises CallError."""
    try:
        return compile_regex(source)
    except RegexError as exc:
        raise CallError(exc.message, 1) from None


_GROUP_REFERENCE = re.compile(r"\\(?:(\d+)|g<([^>]*)>|(.?))", re.DOTALL)


def _check_replacement(pattern: Pattern, replacement: str) -> None:
    for match in _GROUP_REFERENCE.finditer(replacement):
        number, name, other = match.groups()
        if name is not None:
            known = name in pattern.groupindex or (name.isdigit() and int(name) <= pattern.groups)
            if not known:
                raise CallError(f"replacement {replacement!r} refers to group {name!r}, which the pattern does not have", 2)
        elif number is not None and int(number) > pattern.groups:
            raise CallError(f"replacement {replacement!r} refers to group {number}; the pattern has {pattern.groups}", 2)
        elif other == "":
            raise CallError(f"replacement {replacement!r} ends with a lone backslash (write \\\\ for one)", 2)


def _group(pattern: Pattern, group: Any) -> int:
    if type(group) is str:
        if group not in pattern.groupindex:
            raise _Unusable(group, f"the pattern has no group named {group!r}")
        return pattern.groupindex[group]
    if type(group) is float and group.is_integer():
        group = int(group)
    if type(group) is not int or not 0 <= group <= pattern.groups:
        raise _Unusable(group, f"the pattern has groups 0 to {pattern.groups}")
    return group


# -- times, durations, sizes ------------------------------------------------------------------

def _bounded(text: str) -> str:
    if len(text) > MAX_INPUT:
        raise _Unusable(text, f"longer than {MAX_INPUT} characters")
    return text.strip()


def _seconds(moment: datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def strptime_format_problem(fmt: str) -> str | None:
    """Why `fmt` is not a strptime format, or None."""
    try:
        datetime.strptime("", fmt)
    except ValueError as exc:
        return None if "does not match format" in str(exc) else str(exc)
    return None


_NUMBER_TEXT = r"(?:\d+(?:\.\d*)?|\.\d+)"  # compiled with re.ASCII: \d is 0-9 only, as in numbers.py
_PLAIN = re.compile(rf"[+-]?{_NUMBER_TEXT}(?:[eE][+-]?\d+)?", re.ASCII)
_GO_PART = re.compile(rf"({_NUMBER_TEXT})(ns|us|µs|μs|ms|s|m|h)", re.ASCII)
_GO_UNITS = {"ns": Decimal("1e-9"), "us": Decimal("1e-6"), "µs": Decimal("1e-6"), "μs": Decimal("1e-6"), "ms": Decimal("0.001"),
             "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_ISO_NUMBER = r"(\d+(?:[.,]\d+)?)"
_ISO = re.compile(rf"P(?:{_ISO_NUMBER}Y)?(?:{_ISO_NUMBER}M)?(?:{_ISO_NUMBER}W)?(?:{_ISO_NUMBER}D)?"
                  rf"(?:T(?:{_ISO_NUMBER}H)?(?:{_ISO_NUMBER}M)?(?:{_ISO_NUMBER}S)?)?", re.IGNORECASE | re.ASCII)
_ISO_UNITS = (None, None, Decimal(604800), Decimal(86400), Decimal(3600), Decimal(60), Decimal(1))
_CLOCK = re.compile(r"(?:(\d+)\.)?(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)", re.ASCII)


def _finite(value: Decimal | float, raw: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise _Unusable(raw, "too large")
    return number


def _decimal(text: str, raw: Any) -> Decimal:
    number = Decimal(text.replace(",", "."))
    if not -400 < number.adjusted() < 400:  # beyond any float: refused before arithmetic on it
        raise _Unusable(raw, "too large" if number.adjusted() > 0 else "too small")
    return number


def _duration(raw: Any) -> float:
    if type(raw) in (int, float):
        return _finite(raw, raw)
    text = _bounded(raw)
    sign, body = (-1, text[1:]) if text[:1] == "-" else (1, text[1:] if text[:1] == "+" else text)
    if _PLAIN.fullmatch(text):
        return _finite(_decimal(text, raw), raw)
    total = Decimal(0)
    if (iso := _ISO.fullmatch(body)) and body.upper() not in ("P", "PT") and not body.upper().endswith("T"):
        parts = iso.groups()
        if parts[0] is not None or parts[1] is not None:
            raise _Unusable(raw, "years and months have no fixed length in seconds")
        for part, unit in zip(parts[2:], _ISO_UNITS[2:], strict=True):
            if part is not None and unit is not None:
                total += _decimal(part, raw) * unit
    elif clock := _CLOCK.fullmatch(body):
        days, hours, minutes, seconds = clock.groups()
        total = (_decimal(days or "0", raw) * 86400 + _decimal(hours, raw) * 3600 + int(minutes) * 60 + _decimal(seconds, raw))
    else:
        position = 0
        while position < len(body):
            part = _GO_PART.match(body, position)
            if part is None:
                break
            total += _decimal(part.group(1), raw) * _GO_UNITS[part.group(2)]
            position = part.end()
        if not body or position < len(body):
            raise _Unusable(raw, "not a duration (1h2m3.5s, 250ms, P1DT2H, 1.02:03:04.5 or seconds)")
    return _finite(sign * total, raw)


_SIZE = re.compile(rf"([+-]?{_NUMBER_TEXT}(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)", re.ASCII)
_SI = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15, "e": 10**18}
_SIZE_UNITS = {
    **{"b": 1, "byte": 1, "bytes": 1},
    **{prefix + suffix: factor for prefix, factor in _SI.items() if prefix for suffix in ("", "b")},
    **{prefix + "i" + suffix: 1024 ** (i + 1) for i, prefix in enumerate("kmgtpe") for suffix in ("", "b")},
    "": 1,
}


def _bytes(raw: Any) -> int | float:
    if type(raw) in (int, float):
        return raw  # type: ignore[no-any-return]
    text = _bounded(raw)
    size = _SIZE.fullmatch(text)
    if size is None:
        raise _Unusable(raw, "not a size (10MB, 1.5 GiB, 512Ki or a number of bytes)")
    unit = _SIZE_UNITS.get(size.group(2).lower())
    if unit is None:
        raise _Unusable(raw, f"unknown unit {size.group(2)!r} (B, kB, MB, GB, TB, PB, EB, KiB, MiB, GiB, TiB, PiB, EiB)")
    total = _decimal(size.group(1), raw) * unit
    if total == total.to_integral_value() and abs(total) < 2**63:
        return int(total)
    return _finite(total, raw)


def _arithmetic(raw: Any, result: int | float) -> int | float:
    if type(result) is float and not math.isfinite(result):
        raise _Unusable(raw, "the result is not a finite number")
    return result


# -- the library ------------------------------------------------------------------------------

def _arg(*types: str, optional: bool = False) -> dict[str, Any]:
    return {"types": list(types), "optional": optional}


_F = TypeVar("_F", bound=Callable[..., Any])


def _takes(*arguments: dict[str, Any]) -> Callable[[_F], _F]:
    """jmespath's `signature`, typed."""
    decorate: Callable[[_F], _F] = signature(*arguments)
    return decorate


class Library(jmespath.functions.Functions):  # type: ignore[misc]
    """jmespath's built-in functions and ours. Ours may have `optional` arguments (an arity range,
    checked at load like the rest), and check the types of their arguments with precomputed sets:
    jmespath's own check would cost as much as the function."""

    def call_function(self, function_name: str, resolved_args: list[Any]) -> Any:
        ours = _CALLS.get(function_name)
        try:
            if ours is None:  # a built-in function: jmespath checks its arguments
                return _bounded_result(function_name, resolved_args, super().call_function)
            function, kinds, least = ours
            if not least <= len(resolved_args) <= len(kinds):  # load checked it: only for other callers
                raise jmespath.exceptions.ArityError(least, len(resolved_args), function_name)
            for i, (value, allowed) in enumerate(zip(resolved_args, kinds, strict=False)):
                if type(value) not in allowed:
                    expected = Library.FUNCTION_TABLE[function_name]["signature"][i]["types"]
                    raise _Unusable(value, f"expected {_type_names(expected)}, got {_json_type(value)}")
            result = function(self, *resolved_args)
            if type(result) is str and len(result) > MAX_BUILT_CHARACTERS and function_name in text_results:  # a direct call: no evaluation counts it
                raise _Unusable(resolved_args[0], f"the result would have {len(result):,} characters, more than the {MAX_BUILT_CHARACTERS:,} "
                                                  "an evaluation may build")
            return result
        except jmespath.exceptions.JMESPathTypeError as exc:
            raise FunctionError(function_name, exc.current_value, f"expected {_type_names(exc.expected_types)}, got {_json_type(exc.current_value)}") from None
        except _Unusable as exc:
            raise FunctionError(function_name, exc.value, exc.reason) from None

    # strings, as JMESPath Community Edition (JEP-14) defines them; null gives null
    @_takes(_arg(_STRING, _NULL))
    def _func_lower(self, s: str | None) -> str | None:
        return None if s is None else s.lower()

    @_takes(_arg(_STRING, _NULL))
    def _func_upper(self, s: str | None) -> str | None:
        return None if s is None else s.upper()

    @_takes(_arg(_STRING, _NULL), _arg(_STRING, optional=True))
    def _func_trim(self, s: str | None, chars: str = "") -> str | None:
        return None if s is None else s.strip(chars or None)

    @_takes(_arg(_STRING, _NULL), _arg(_STRING), _arg(_NUMBER, optional=True))
    def _func_split(self, s: str | None, sep: str, count: int | float | None = None) -> list[str] | None:
        if s is None:
            return None
        limit = -1 if count is None else _count(count)
        if limit == 0:
            return [s]
        parts = _parts(s, sep, limit)
        if parts > MAX_BUILT_ENTRIES:
            raise _Unusable(s, f"it would make {parts:,} parts, more than the {MAX_BUILT_ENTRIES:,} entries an evaluation may build")
        if sep == "":
            chars = list(s)
            return chars if limit < 0 or limit >= len(chars) else [*chars[:limit], s[limit:]]
        return s.split(sep, limit)

    @_takes(_arg(_STRING, _NULL), _arg(_STRING), _arg(_STRING), _arg(_NUMBER, optional=True))
    def _func_replace(self, s: str | None, old: str, new: str, count: int | float | None = None) -> str | None:
        if s is None:
            return None
        limit = -1 if count is None else _count(count)
        matches = s.count(old) if old else len(s) + 1
        if (min(matches, limit) if limit >= 0 else matches) * (len(new) - len(old)) > MAX_GROWTH:
            raise _Unusable(s, f"the result would be more than {MAX_GROWTH} characters longer than the string")
        return s.replace(old, new, limit)

    # regular expressions (RE2); patterns are literals, compiled at load
    @_takes(_arg(_STRING, _NULL), _arg(_STRING))
    def _func_regex_match(self, s: str | None, pattern: str) -> bool | None:
        return None if s is None else compiled_pattern(pattern).search(s) is not None

    @_takes(_arg(_STRING, _NULL), _arg(_STRING), _arg(_NUMBER, _STRING, optional=True))
    def _func_regex_extract(self, s: str | None, pattern: str, group: int | str | None = None) -> str | None:
        if s is None:
            return None
        program = compiled_pattern(pattern)
        wanted = (1 if program.groups else 0) if group is None else _group(program, group)
        match = program.search(s)
        found: bytes | None = None if match is None else match.group(wanted)
        return None if found is None else found.decode("utf-8", "surrogatepass")

    @_takes(_arg(_STRING, _NULL), _arg(_STRING), _arg(_STRING))
    def _func_regex_replace(self, s: str | None, pattern: str, replacement: str) -> str | None:
        if s is None:
            return None
        try:
            return compiled_pattern(pattern).sub(replacement, s)
        except (IndexError, ValueError) as exc:  # a replacement that is not a literal refers to no group
            raise _Unusable(replacement, f"bad replacement: {exc}") from None

    # times, durations, sizes
    @_takes(_arg(_STRING, _NULL), _arg(_STRING, optional=True))
    def _func_parse_time(self, s: str | None, fmt: str | None = None) -> float | None:
        if s is None:
            return None
        text = _bounded(s)
        try:
            if fmt is not None:
                return _seconds(datetime.strptime(text, fmt))
            if text[10:11] == "t":  # RFC 3339 allows lower case t and z; fromisoformat does not
                text = text[:10] + "T" + text[11:]
            return _seconds(datetime.fromisoformat(text[:-1] + "Z" if text[-1:] == "z" else text))
        except (ValueError, OverflowError, OSError):
            expected = f"does not match the format {fmt!r}" if fmt is not None else "not an RFC 3339 / ISO 8601 time"
            raise _Unusable(s, expected) from None

    # jmespath's own reads a string with Python's int() and float(), which take `1_000`, `١٢` and spaces
    @_takes(_arg(_STRING, _NUMBER, "boolean", _NULL, "array", "object"))
    def _func_to_number(self, arg: Any) -> int | float | None:
        if type(arg) is str:
            try:
                if INTEGER.fullmatch(arg):
                    number = int(arg)  # exact; past Python's digit limit a ValueError, as a number out of range
                    return number if abs(number) <= _FLOAT_MAX else None  # as parse_number refuses what no float holds
                return parse_number(arg)
            except ValueError:
                return None
        return arg if type(arg) in (int, float) else None

    @_takes(_arg(_STRING, _NUMBER, _NULL))
    def _func_parse_duration(self, s: str | float | None) -> float | None:
        return None if s is None else _duration(s)

    @_takes(_arg(_STRING, _NUMBER, _NULL))
    def _func_parse_bytes(self, s: str | float | None) -> int | float | None:
        return None if s is None else _bytes(s)

    # arithmetic: null in, null out
    @_takes(_arg(_NUMBER, _NULL), _arg(_NUMBER, _NULL))
    def _func_add(self, a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else _arithmetic(a, a + b)

    @_takes(_arg(_NUMBER, _NULL), _arg(_NUMBER, _NULL))
    def _func_subtract(self, a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else _arithmetic(a, a - b)

    @_takes(_arg(_NUMBER, _NULL), _arg(_NUMBER, _NULL))
    def _func_multiply(self, a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else _arithmetic(a, a * b)

    @_takes(_arg(_NUMBER, _NULL), _arg(_NUMBER, _NULL))
    def _func_divide(self, a: float | None, b: float | None) -> float | None:
        if a is None or b is None:
            return None
        if b == 0:
            raise _Unusable(b, "division by zero")
        return _arithmetic(a, a / b)


def _join_size(args: list[Any]) -> tuple[int, int] | None:
    separator, texts = [*args, None, None][:2]
    if type(separator) is not str or type(texts) is not list or not all(type(text) is str for text in texts):
        return None  # jmespath's type check says what is wrong
    return 0, sum(map(len, texts)) + len(separator) * max(len(texts) - 1, 0)


def _length_of(index: int, characters: bool = False) -> Callable[[list[Any]], tuple[int, int] | None]:
    """The size of a result as long as argument `index` (a list's entries, a text's characters)."""
    def size(args: list[Any]) -> tuple[int, int] | None:
        arg: Any = args[index] if index < len(args) else None
        if type(arg) is str:
            return (0, len(arg)) if characters else None
        return (len(arg), 0) if type(arg) in (list, dict) else None
    return size


def _parts(s: str, sep: str, limit: int) -> int:
    """How many parts `split` makes (`limit` -1: no limit)."""
    every = len(s) if sep == "" else s.count(sep) + 1
    return every if limit < 0 else min(every, limit + 1)


def _split_size(args: list[Any]) -> tuple[int, int] | None:
    s, sep = [*args, None, None][:2]
    if type(s) is not str or type(sep) is not str:
        return None
    limit = args[2] if len(args) > 2 and type(args[2]) in (int, float) and args[2] >= 0 else -1
    return _parts(s, sep, int(limit)), len(s)


def _merge_size(args: list[Any]) -> tuple[int, int] | None:
    return sum(len(arg) for arg in args if type(arg) is dict), 0


# The functions whose result's size their arguments tell before it is built: (entries, characters) at most
_BUILT_BEFORE: dict[str, Callable[[list[Any]], tuple[int, int] | None]] = {
    "split": _split_size, "join": _join_size, "merge": _merge_size, "to_array": lambda args: (1, 0),
    "sort": _length_of(0), "sort_by": _length_of(0), "keys": _length_of(0), "values": _length_of(0), "map": _length_of(1),
    "reverse": _length_of(0, characters=True),
}
# Those whose text result is measured once built: at most a few times their input (upper('ß') is 'SS'), and MAX_GROWTH
text_results = frozenset({"lower", "upper", "trim", "replace", "regex_replace", "regex_extract", "to_string"})


def built_before(name: str, args: list[Any]) -> tuple[int, int] | None:
    """What calling `name` on `args` would build, (entries, characters), when the arguments tell it; None otherwise."""
    size = _BUILT_BEFORE.get(name)
    return None if size is None else size(args)


def _bounded_result(name: str, args: list[Any], call: Callable[[str, list[Any]], Any]) -> Any:
    """A built-in function's call, refused when its result alone would pass a bound of one evaluation:
    `join` before it builds, `to_string` (its text cannot be told before) after."""
    if name == "join":
        call_size = _join_size(args)
        if call_size is not None and call_size[1] > MAX_BUILT_CHARACTERS:
            raise _Unusable(args[0], f"the result would have {call_size[1]:,} characters, more than the {MAX_BUILT_CHARACTERS:,} "
                                     "an evaluation may build")
    result = call(name, args)
    if name == "to_string" and type(result) is str and len(result) > MAX_BUILT_CHARACTERS:
        raise _Unusable(args[0], f"its text would have {len(result):,} characters, more than the {MAX_BUILT_CHARACTERS:,} "
                                 "an evaluation may build")
    return result


def _count(count: int | float) -> int:
    if count < 0 or not float(count).is_integer():
        raise _Unusable(count, "the count must be a whole number, 0 or more")
    return int(count)


def _type_names(types: Sequence[str]) -> str:
    names = [t.replace("-", " of ") + ("s" if "-" in t else "") for t in types if t != _NULL] or list(types)  # array-number: array of numbers
    return " or ".join(f"an {t}" if t[0] in "aeiou" else f"a {t}" for t in names)


_JSON_TYPES = {str: _STRING, int: _NUMBER, float: _NUMBER, bool: "boolean", type(None): _NULL, list: "array", dict: "object"}
_PYTHON_TYPES = {name: frozenset(kind for kind, json_name in _JSON_TYPES.items() if json_name == name) for name in set(_JSON_TYPES.values())}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), "object")


def _our_calls() -> dict[str, tuple[Callable[..., Any], tuple[frozenset[type], ...], int]]:
    """Our functions, with the Python types each argument accepts and the number of required ones."""
    calls = {}
    for name, entry in Library.FUNCTION_TABLE.items():
        if entry["function"].__qualname__.startswith(Library.__name__ + "."):
            sig = entry["signature"]
            kinds = tuple(frozenset().union(*(_PYTHON_TYPES[t] for t in arg["types"])) for arg in sig)
            calls[name] = (entry["function"], kinds, sum(1 for arg in sig if not arg.get("optional")))
    return calls


_CALLS = _our_calls()
LIBRARY = Library()


_NUMBERS_AS_THEY_ARE = frozenset({"parse_bytes", "to_number"})  # one argument: each gives a number (or null) as it is
_NUMBER_OR_NULL = frozenset({int, float, type(None)})
_ARITHMETIC = {"add": operator.add, "subtract": operator.sub, "multiply": operator.mul, "divide": operator.truediv}
_INTEGERS = frozenset({int})
_NULL_TYPE = type(None)


def call_by_columns(function_name: str, columns: list[list[Any]]) -> list[Any] | None:
    """`call_function` for each row of the argument columns at once, without its checks per call, when
    every value has a type the function takes; None otherwise, and when the function raises for a row:
    the caller goes row by row then, which reports it with its element."""
    ours = _CALLS.get(function_name)
    if ours is None:
        return None
    function, kinds, least = ours
    if not least <= len(columns) <= len(kinds):
        return None
    nulls, integers = False, True
    for column, allowed in zip(columns, kinds, strict=False):
        present = set(map(type, column))
        if not present <= allowed:
            return None
        nulls, integers = nulls or _NULL_TYPE in present, integers and present <= _INTEGERS
    if function_name in _NUMBERS_AS_THEY_ARE and present <= _NUMBER_OR_NULL:
        return list(columns[0])  # a number is its own size and number, null gives null: no call per row
    if function_name in _ARITHMETIC and not nulls:  # null in, null out: a call per row
        found = _arithmetic_column(_ARITHMETIC[function_name], columns[0], columns[1], integers and function_name != "divide")
        if found is not None:
            return found
    if function_name == "split" and sum(len(s) + 1 for s in columns[0] if s is not None) > MAX_BUILT_ENTRIES:
        return None  # the parts of a whole column might pass what one evaluation may build: row by row, each held to it
    try:
        if function_name in text_results:  # `replace` may grow each row by MAX_GROWTH: a column of them is counted
            return bounded_column(functools.partial(function, LIBRARY), columns, f"{function_name}()")
        return list(map(function, itertools.repeat(LIBRARY), *columns))
    except ColumnLimitExceeded:
        raise
    except Exception:
        return None


def _arithmetic_column(apply: Callable[[Any, Any], Any], a: list[Any], b: list[Any], integers: bool) -> list[Any] | None:
    """`add`, `subtract`, `multiply` or `divide` of two columns of numbers (no null), by the operator alone (512 rows:
    half to three quarters of the time of a call per row); None, for a call per row, where a division by zero or a result that is
    not a finite number is (the call's error). `integers`: the results are (of integers, not divided: exact, however
    large); else each is a float."""
    try:
        results = list(map(apply, a, b))
        if integers or all(map(math.isfinite, results)):
            return results
    except (ArithmeticError, ValueError):  # a division by zero, an integer too large for a float (a / b, isfinite)
        pass
    return None


COLUMN_SLICE = 64  # rows of a column built between two counts of its text (`bounded_column`)


def bounded_column(call: Callable[..., Any], columns: list[list[Any]], what: str) -> list[Any]:
    """`list(map(call, *columns))`, a slice of COLUMN_SLICE rows at a time, the characters of its text results counted
    as one evaluation counts them: ColumnLimitExceeded past MAX_BUILT_CHARACTERS, with a slice at most built beyond
    (512 rows of `replace` growing each by MAX_GROWTH were 32 Mi characters at once, none counted)."""
    rows = len(columns[0]) if columns else 0
    left = MAX_BUILT_CHARACTERS
    results: list[Any] = []
    for start in range(0, rows, COLUMN_SLICE):
        part = list(map(call, *(column[start:start + COLUMN_SLICE] for column in columns))) if rows > COLUMN_SLICE else list(map(call, *columns))
        try:
            left -= sum(map(len, part))  # texts, the common case, at C speed
        except TypeError:
            left -= sum(len(result) for result in part if type(result) is str)
        if left < 0:
            raise ColumnLimitExceeded(what)
        results += part
    return results
OPTIONS = jmespath.Options(custom_functions=LIBRARY)  # one for every search: the library is stateless
FUNCTION_NAMES = frozenset(Library.FUNCTION_TABLE)


def check_call(name: str, args: Sequence[dict[str, Any]]) -> None:
    """Raise CallError when the call `name(args)` (parsed nodes) cannot work, whatever the data."""
    entry = Library.FUNCTION_TABLE.get(name)
    if entry is None:
        close = suggestion(name, sorted(FUNCTION_NAMES))
        raise CallError(f"unknown function {name}()" + (f" (did you mean {close}()?)" if close else ""))
    sig: Sequence[dict[str, Any]] = entry["signature"]
    variadic = bool(sig) and bool(sig[-1].get("variadic"))
    least = sum(1 for a in sig if not a.get("optional"))
    most = None if variadic else len(sig)
    if len(args) < least or (most is not None and len(args) > most):
        wanted = f"at least {least}" if most is None else str(least) if least == most else f"{least} to {most}"
        raise CallError(f"{name}() takes {wanted} argument{'' if (most or least) == 1 else 's'}, got {len(args)}")
    for i, (arg, spec) in enumerate(zip(args, sig, strict=False)):
        if arg.get("type") == "literal" and spec["types"]:
            kind = _json_type(arg["value"])
            if kind not in {t.partition("-")[0] for t in spec["types"]}:  # `array-number`: jmespath checks the elements
                raise CallError(f"{name}() argument {i + 1} must be {_type_names(spec['types'])}, got {kind} {shorten(arg['value'], _SHOWN)}", i)
    if name in REGEX_FUNCTIONS:
        _check_regex_call(name, args)
    elif name == "parse_time" and len(args) == 2 and args[1].get("type") == "literal":
        problem = strptime_format_problem(args[1]["value"])
        if problem is not None:
            raise CallError(f"parse_time() format: {problem}", 1)


def _check_regex_call(name: str, args: Sequence[dict[str, Any]]) -> None:
    pattern_node = args[1]
    if pattern_node.get("type") != "literal":
        raise CallError(f"{name}() pattern must be a literal string, such as 'v(\\d+)'", 1)
    program = compiled_pattern(pattern_node["value"])
    if program.size > MAX_PATTERN_SIZE:
        raise CallError(f"{name}() pattern is too large: its RE2 program has {program.size:,} instructions, more than {MAX_PATTERN_SIZE:,} "
                        "(a counted repetition such as .{{0,1000}} repeats what it counts; bounds of docs/spec.md#functions)", 1)
    if len(args) == 3 and args[2].get("type") == "literal":
        if name == "regex_extract":
            try:
                _group(program, args[2]["value"])
            except _Unusable as exc:
                raise CallError(f"regex_extract() group {shorten(exc.value, _SHOWN)}: {exc.reason}", 2) from None
        else:
            _check_replacement(program, args[2]["value"])
