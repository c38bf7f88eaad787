"""The function library of expressions: every function on good input, on each kind of bad input
(an extraction error of that series, with the function's name and the value), and on null."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import jmespath
import pytest
from conftest import SpecWriter, make_spec
from hypothesis import given, settings
from hypothesis import strategies as st
from metrics_util import samples

from jsonexporter.extract import Extraction, ProbeContext, extract
from jsonexporter.spec.expressions import MEMO_CHARACTERS, MEMO_ENTRIES, CallMemo, compile_expression
from jsonexporter.spec.functions import MAX_BUILT_CHARACTERS, MAX_BUILT_ENTRIES, MAX_REGEX_SECONDS, MAX_REGEX_WORK, OPTIONS, FunctionError, compile_regex
from jsonexporter.trace import Trace

PROBE = ProbeContext("default", "http://t", {})
NOON = 1796032800  # 2026-11-30T10:00:00Z

GOOD: list[tuple[str, Any, Any]] = [  # expression, the document's `v` (or the document), result
    # strings (JMESPath Community Edition, JEP-14)
    ("lower(v)", "MiXeD Été", "mixed été"),
    ("upper(v)", "MiXeD", "MIXED"),
    ("trim(v)", " \t a b \n", "a b"),
    ("trim(v, '')", "  a  ", "a"),
    ("trim(v, 'gsu ')", "   subject string   ", "bject strin"),
    ("split(v, ',')", "a,b,,c", ["a", "b", "", "c"]),
    ("split(v, '/')", "/", ["", ""]),
    ("split(v, '')", "abc", ["a", "b", "c"]),
    ("split(v, '|-|', `1`)", "average|-|min|-|max", ["average", "min|-|max"]),
    ("split(v, ',', `0`)", "a,b", ["a,b"]),
    ("split(v, ',')[1]", "eu,west", "west"),
    ("replace(v, 'aa', '-')", "aabaaabaaaab", "-b-ab--b"),
    ("replace(v, 'aa', '-', `2`)", "aabaaabaaaab", "-b-abaaaab"),
    ("replace(v, 'aa', '-', `0`)", "aabaaabaaaab", "aabaaabaaaab"),
    # regular expressions (RE2)
    ("regex_match(v, '^v\\d+')", "v12", True),
    ("regex_match(v, '^v\\d+')", "version 12", False),
    ("regex_match(v, '(?i)^running$')", "RUNNING", True),
    ("regex_extract(v, 'v(\\d+)\\.(\\d+)')", "app v1.22.3", "1"),
    ("regex_extract(v, '\\d+\\.\\d+')", "app v1.22.3", "1.22"),
    ("regex_extract(v, 'v(\\d+)\\.(\\d+)', `2`)", "app v1.22.3", "22"),
    ("regex_extract(v, 'v(\\d+)\\.(\\d+)', `0`)", "app v1.22.3", "v1.22"),
    ("regex_extract(v, 'v(?P<minor>\\d+)\\.(?P<patch>\\d+)', 'patch')", "app v1.22", "22"),
    ("regex_extract(v, 'x(\\d+)')", "app v1", None),
    ("regex_extract(v, '(a)|b')", "b", None),
    ("regex_replace(v, '(\\d+)', '<\\1>')", "a1b22", "a<1>b<22>"),
    ("regex_replace(v, '(?P<n>\\d+)', '[\\g<n>]')", "a1", "a[1]"),
    ("regex_replace(v, '\\s+', ' ')", "a  \t b", "a b"),
    ("regex_replace(v, 'é', 'e')", "café", "cafe"),
    ("replace(v, 'a', 'bb', `3`)", "a" * 400_000, "bbbbbb" + "a" * 399_997),  # growth within the bound, counted as limited
    ("regex_replace(v, '(a+)', '\\1\\1')", "a" * 30_000, "a" * 60_000),  # the bound is counted, not guessed
    # times
    ("parse_time(v)", "2026-11-30T10:00:00Z", NOON),
    ("parse_time(v)", "2026-11-30T11:30:00+01:30", NOON),
    ("parse_time(v)", "2026-11-30T10:00:00", NOON),  # no offset: UTC
    ("parse_time(v)", "2026-11-30 10:00:00.5", NOON + 0.5),
    ("parse_time(v)", "2026-11-30t10:00:00.25z", NOON + 0.25),
    ("parse_time(v)", "2026-11-30T10:00:00.123456789Z", NOON + 0.123456),  # nanoseconds: microseconds kept
    ("parse_time(v)", "2026-11-30", NOON - 10 * 3600),
    ("parse_time(v)", "20261130T100000Z", NOON),
    ("parse_time(v, '%d/%m/%Y %H:%M')", "30/11/2026 10:00", NOON),
    ("parse_time(v, '%a, %d %b %Y %H:%M:%S %z')", "Mon, 30 Nov 2026 12:00:00 +0200", NOON),
    # durations
    ("parse_duration(v)", "1h2m3.5s", 3723.5),
    ("parse_duration(v)", "250ms", 0.25),
    ("parse_duration(v)", "-1.5h", -5400),
    ("parse_duration(v)", "+3s", 3),
    ("parse_duration(v)", "1m1s1ms1us1µs1μs1ns", 61.001003001),
    ("parse_duration(v)", ".5s", 0.5),
    ("parse_duration(v)", "P1DT2H", 93600),
    ("parse_duration(v)", "PT0.5S", 0.5),
    ("parse_duration(v)", "PT1,5M", 90),
    ("parse_duration(v)", "P2W", 1209600),
    ("parse_duration(v)", "-PT1M", -60),
    ("parse_duration(v)", "1.02:03:04.5", 93784.5),
    ("parse_duration(v)", "02:03:04", 7384),
    ("parse_duration(v)", "100:00:00", 360000),
    ("parse_duration(v)", "12.5", 12.5),
    ("parse_duration(v)", "0", 0),
    ("parse_duration(v)", 42, 42),
    # sizes
    ("parse_bytes(v)", "10MB", 10_000_000),
    ("parse_bytes(v)", "1.5 GiB", 1_610_612_736),
    ("parse_bytes(v)", "512K", 512_000),
    ("parse_bytes(v)", "512k", 512_000),
    ("parse_bytes(v)", "512Ki", 524_288),
    ("parse_bytes(v)", "512KiB", 524_288),
    ("parse_bytes(v)", "1.1kB", 1100),
    ("parse_bytes(v)", "2 TB", 2 * 10**12),
    ("parse_bytes(v)", "1 EiB", 2**60),
    ("parse_bytes(v)", "1e3", 1000),
    ("parse_bytes(v)", " 2048 ", 2048),
    ("parse_bytes(v)", "7 bytes", 7),
    ("parse_bytes(v)", "0.5B", 0.5),
    ("parse_bytes(v)", 2048, 2048),
    # arithmetic
    ("add(v.a, v.b)", {"a": 1, "b": 2}, 3),
    ("subtract(v.a, v.b)", {"a": 1, "b": 2.5}, -1.5),
    ("multiply(v.a, v.b)", {"a": 1.5, "b": 4}, 6),
    ("divide(v.a, v.b)", {"a": 1, "b": 4}, 0.25),
    ("divide(parse_duration(v), `60`)", "1h30m", 90),
    ("multiply(parse_bytes(v), `8`)", "1KiB", 8192),
    ("add(sum(`[1, 2]`), max(v))", [3, 4], 7),  # built-ins with typed array literals
    ("join(', ', sort(v))", ["b", "a"], "a, b"),
]


@pytest.mark.parametrize(("source", "value", "expected"), GOOD, ids=[f"{s} <- {v!r}" for s, v, _ in GOOD])
def test_function_gives_its_result(source: str, value: Any, expected: Any) -> None:
    result = compile_expression(source).search({"v": value})
    assert result == pytest.approx(expected) if isinstance(expected, float) else result == expected
    assert type(result) is type(expected) or {type(result), type(expected)} <= {int, float}


BAD: list[tuple[str, Any, str]] = [  # expression, the document's `v`, the message
    ("lower(v)", 5, "function lower: cannot use 5: expected a string, got number"),
    ("upper(v)", [1], "function upper: cannot use [1]: expected a string, got array"),
    ("trim(v)", {"a": 1}, 'function trim: cannot use {"a": 1}: expected a string, got object'),
    ("split(v, ',')", True, "function split: cannot use true: expected a string, got boolean"),
    ("split(v.s, ',', v.n)", {"s": "a,b", "n": -1}, "function split: cannot use -1: the count must be a whole number, 0 or more"),
    ("replace(v.s, 'a', 'b', v.n)", {"s": "a", "n": 1.5}, "function replace: cannot use 1.5: the count must be a whole number, 0 or more"),
    ("replace(v, 'a', 'b')", 1, "function replace: cannot use 1: expected a string, got number"),
    ("regex_match(v, 'a')", 1.5, "function regex_match: cannot use 1.5: expected a string, got number"),
    ("regex_extract(v.s, '(a)', v.g)", {"s": "a", "g": 5}, "function regex_extract: cannot use 5: the pattern has groups 0 to 1"),
    ("regex_extract(v.s, '(a)', v.g)", {"s": "a", "g": "nope"}, "function regex_extract: cannot use \"nope\": the pattern has no group named 'nope'"),
    ("regex_extract(v.s, '(a)', v.g)", {"s": "a", "g": True}, "function regex_extract: cannot use true: expected a number or a string, got boolean"),
    ("regex_replace(v.s, 'a', v.r)", {"s": "a", "r": "\\3"}, "function regex_replace: cannot use \"\\\\3\": bad replacement"),
    ("regex_replace(v, 'a', 'b')", ["a"], "function regex_replace: cannot use [\"a\"]: expected a string, got array"),
    # a hostile answer cannot make a result many times its size
    ("replace(v, '', 'xx')", "a" * 40_000, "the result would be more than 65536 characters longer than the string"),
    ("replace(v, 'a', 'aaaaaaaaaaa')", "a" * 7_000, "the result would be more than 65536 characters longer than the string"),
    # (4,096 matches of 16 bytes each: well within the time its matches may take, MAX_REGEX_SECONDS, 30,000 of 2 were not)
    ("regex_replace(v, '', 'xxxxxxxxxxxxxxxx')", "a" * 5_000, "the result would be more than 65536 bytes longer than the string"),
    ("regex_replace(v, '(a+)', '\\1\\1\\1')", "a" * 40_000, "the result would be more than 65536 bytes longer than the string"),
    ("parse_time(v)", "yesterday", "function parse_time: cannot use \"yesterday\": not an RFC 3339 / ISO 8601 time"),
    ("parse_time(v)", "2026-13-01T00:00:00Z", "not an RFC 3339 / ISO 8601 time"),
    ("parse_time(v)", NOON, f"function parse_time: cannot use {NOON}: expected a string, got number"),
    ("parse_time(v, '%d/%m/%Y')", "2026-11-30", "function parse_time: cannot use \"2026-11-30\": does not match the format '%d/%m/%Y'"),
    ("parse_time(v)", "2" * 300, "longer than 256 characters"),
    ("parse_duration(v)", "1x", "function parse_duration: cannot use \"1x\": not a duration"),
    ("parse_duration(v)", "1h 2m", "not a duration"),
    ("parse_duration(v)", "", "not a duration"),
    ("parse_duration(v)", "h", "not a duration"),
    ("parse_duration(v)", "P", "not a duration"),
    ("parse_duration(v)", "PT", "not a duration"),
    ("parse_duration(v)", "P1DT", "not a duration"),
    ("parse_duration(v)", "1:60:00", "not a duration"),
    ("parse_duration(v)", "P1Y", "years and months have no fixed length in seconds"),
    ("parse_duration(v)", "P1M", "years and months have no fixed length in seconds"),
    ("parse_duration(v)", "1e400", "too large"),
    ("parse_duration(v)", False, "function parse_duration: cannot use false: expected a string or a number, got boolean"),
    ("parse_bytes(v)", "12 parsecs", "function parse_bytes: cannot use \"12 parsecs\": unknown unit 'parsecs'"),
    ("parse_bytes(v)", "MB", "function parse_bytes: cannot use \"MB\": not a size"),
    ("parse_bytes(v)", "1,5 MB", "not a size"),
    ("parse_bytes(v)", "1e999999999", "too large"),
    ("parse_bytes(v)", "1" * 300, "longer than 256 characters"),
    ("parse_bytes(v)", {"size": 1}, "expected a string or a number, got object"),
    ("add(v, `1`)", "1", "function add: cannot use \"1\": expected a number, got string"),
    ("subtract(`1`, v)", True, "function subtract: cannot use true: expected a number, got boolean"),
    ("multiply(v, `10`)", 1e308, "function multiply: cannot use 1e+308: the result is not a finite number"),
    ("divide(`1`, v)", 0, "function divide: cannot use 0: division by zero"),
    ("divide(`1`, v)", 0.0, "function divide: cannot use 0.0: division by zero"),
    ("length(v)", 5, "function length: cannot use 5: expected a string or an array or an object, got number"),  # built-ins too
    ("sum(v)", ["1"], "function sum: cannot use \"1\": expected an array of numbers, got string"),  # the element that is not
    ("lower(v)", ["x" * 100] * 10, "function lower: cannot use [\"xxxxxxxx"),
]


@pytest.mark.parametrize(("source", "value", "message"), BAD, ids=[f"{s} <- {v!r}"[:80] for s, v, _ in BAD])
def test_function_refuses_a_value_it_cannot_use(source: str, value: Any, message: str) -> None:
    expression = compile_expression(source)
    with pytest.raises(FunctionError) as caught:
        expression.search({"v": value})
    assert message in str(caught.value)
    assert len(str(caught.value)) < 250  # the value is shortened


NULL_IN = [
    "lower(v)", "upper(v)", "trim(v)", "trim(v, 'x')", "split(v, ',')", "replace(v, 'a', 'b')",
    "regex_match(v, 'a')", "regex_extract(v, 'a')", "regex_extract(v, '(a)', `1`)", "regex_replace(v, 'a', 'b')",
    "parse_time(v)", "parse_time(v, '%Y')", "parse_duration(v)", "parse_bytes(v)",
    "add(v, `1`)", "add(`1`, v)", "subtract(v, `1`)", "subtract(`1`, v)", "multiply(v, `2`)", "multiply(`2`, v)",
    "divide(v, `0`)", "divide(`1`, v)", "lower(upper(v))",
]


@pytest.mark.parametrize("source", NULL_IN)
def test_null_in_gives_null_out(source: str) -> None:
    expression = compile_expression(source)
    assert expression.search({"v": None}) is None
    assert expression.search({}) is None


# -- in rules: one failing element loses its series only, on both paths ------------------------

SIZES = """
    modules:
      default:
        metrics:
          - name: volume_size_bytes
            help: h
            each: volumes
            labels: {name: name, state: lower(state)}
            value: parse_bytes(size)
"""


def _both_paths(spec_text: str, document: Any) -> list[Extraction]:
    module = make_spec(spec_text).modules["default"]
    return [extract(module, {"default": document}, PROBE), extract(module, {"default": document}, PROBE, trace=Trace())]


def test_a_value_a_function_cannot_use_drops_only_that_series() -> None:
    document = {"volumes": [
        {"name": "a", "state": "Ready", "size": "1.5 GiB"},
        {"name": "b", "state": "READY", "size": "lots"},
        {"name": "c", "state": 7, "size": "1KiB"},
        {"name": "d", "state": "failed", "size": 512},
    ]}
    for result in _both_paths(SIZES, document):
        assert samples(result.families["volume_size_bytes"]) == [
            ("volume_size_bytes", {"name": "a", "state": "ready"}, 1_610_612_736),
            ("volume_size_bytes", {"name": "d", "state": "failed"}, 512),
        ]
        assert result.errors["volume_size_bytes"] == 2
        assert result.messages == [
            "metric volume_size_bytes: function parse_bytes: cannot use \"lots\": not a size (10MB, 1.5 GiB, 512Ki or a number of bytes)"
            " (labels {'name': 'b', 'state': 'ready'})",
            "metric volume_size_bytes: labels: function lower: cannot use 7: expected a string, got number",
        ]


def test_a_null_from_a_function_takes_the_rules_default() -> None:
    spec = SIZES + "            default: -1\n"
    for result in _both_paths(spec, {"volumes": [{"name": "a", "state": "ok"}]}):
        assert samples(result.families["volume_size_bytes"]) == [("volume_size_bytes", {"name": "a", "state": "ok"}, -1)]
        assert result.errors["volume_size_bytes"] == 0


def test_regex_match_is_a_boolean_value_and_division_by_zero_an_error_of_that_series() -> None:
    spec = """
        modules:
          default:
            metrics:
              - name: job_running
                help: h
                each: jobs
                labels: {job: name}
                value: regex_match(state, '(?i)^run')
              - name: job_done_ratio
                help: h
                each: jobs
                labels: {job: name}
                value: divide(done, total)
    """
    document = {"jobs": [{"name": "a", "state": "Running", "done": 1, "total": 4}, {"name": "b", "state": "idle", "done": 0, "total": 0}]}
    for result in _both_paths(spec, document):
        assert samples(result.families["job_running"]) == [("job_running", {"job": "a"}, 1), ("job_running", {"job": "b"}, 0)]
        assert samples(result.families["job_done_ratio"]) == [("job_done_ratio", {"job": "a"}, 0.25)]
        assert result.messages == ["metric job_done_ratio: function divide: cannot use 0: division by zero (labels {'job': 'b'})"]


def test_catastrophic_pattern_on_a_long_hostile_answer_finishes(write_spec: SpecWriter, tmp_path: Path) -> None:
    """`(a+)+$` backtracks exponentially in Python's `re` on `aaaa…b`; RE2 answers in linear time."""
    spec = write_spec("""
        modules:
          default:
            metrics:
              - name: hostile_match
                help: h
                value: regex_match(text, '(a+)+$')
              - name: hostile_length
                help: h
                value: length(regex_extract(text, '(a+)+b', `0`))
    """)
    answer = tmp_path / "answer.json"
    answer.write_text(json.dumps({"text": "a" * 50_000 + "b"}))
    probe = subprocess.run(
        [sys.executable, "-m", "jsonexporter", "probe", "--config.file", str(spec), "--module", "default",
         "--input", f"default={answer}", "--target", "http://example.invalid"],
        capture_output=True, text=True, timeout=120, check=False)  # a bound for a busy machine; Python's re would not finish
    assert probe.returncode == 0, probe.stderr
    assert "hostile_match 0\n" in probe.stdout
    assert "hostile_length 50001\n" in probe.stdout


# -- what one regex call may cost ------------------------------------------------------------

# RE2 out of its DFA states (a counted repetition on 'a' and '1'), 10 ns per byte and instruction here: a pattern's string
# is bounded by MAX_REGEX_WORK over the size of its program (372 instructions: 11,275 bytes), in bytes of UTF-8
WINDOW = "(?i)a.{0,40}timeout"
REGEX_CALLS = [f"regex_match(v, '{WINDOW}')", f"regex_extract(v, '{WINDOW}', `0`)", f"length(regex_replace(v, '{WINDOW}', 'x'))",
               f"v[?regex_match(@, '{WINDOW}')]"]  # the last by jmespath's interpreter


@pytest.mark.parametrize("character", ["a", "é", "😀"])
@pytest.mark.parametrize("source", REGEX_CALLS)
def test_a_regex_function_reads_as_much_as_its_pattern_may_and_a_longer_string_is_an_error_of_its_series(source: str, character: str) -> None:
    most = MAX_REGEX_WORK // compile_regex(WINDOW).size
    fits = character * (most // len(character.encode()))
    expression = compile_expression(source)
    as_list = source.startswith("v[")
    expression.search({"v": [fits] if as_list else fits})
    longer = fits + character
    with pytest.raises(FunctionError) as caught:
        expression.search({"v": [longer] if as_list else longer})
    assert f"{len(longer.encode()):,} bytes (UTF-8), more than the {most:,} this pattern may read in one call (its RE2 program has 372" in str(caught.value)


def test_regex_replace_whose_matches_take_too_long_is_an_error_of_that_series() -> None:
    # each match of 'a.*z|a' reads on to the end of the string for a z: O(n²), minutes for 200,000 a's (within what
    # its 16 instructions may read in one call)
    with pytest.raises(FunctionError) as caught:
        compile_expression("regex_replace(v, 'a.*z|a', 'b')").search({"v": "a" * 200_000})
    assert "function regex_replace: cannot use \"aaaa" in str(caught.value)
    assert f"its matches took more than {MAX_REGEX_SECONDS} s" in str(caught.value)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["", "x*", "b*", "é", "[^a]", "\\d+", "(a|é)+", "😀|"]), st.sampled_from(["-", "", "[\\g<0>]"]),
       st.text(alphabet="aé😀b1x", max_size=12))
def test_regex_replace_replaces_as_pythons_re_between_characters_never_within_one(pattern: str, replacement: str, text: str) -> None:
    """An empty match is replaced between two characters: RE2 goes on a byte after it, once within a character (its
    UTF-8 cut apart: 'bad replacement: utf-8 codec can't decode')."""
    assert compile_expression(f"regex_replace(v, '{pattern}', '{replacement}')").search({"v": text}) == re.sub(pattern, replacement, text)


# -- direct calls (expressions.py `_direct_search`) against jmespath's interpreter ---------------

CALLS = ["lower(a)", "upper(a.b)", "trim(@)", "split(a, ',')", "replace(a, 'x', 'y')", "regex_match(a, '^[ab]')",
         "regex_extract(a, '(\\d+)')", "regex_replace(a, '(\\d)', '<\\1>')", "parse_bytes(a)", "parse_duration(b)",
         "parse_time(a)", "add(a, b)", "subtract(a, b)", "divide(a, b)", "multiply(a, `2`)", "multiply(parse_bytes(a), `8`)", "length(a)",
         "not_null(a, b, `1`)",
         "to_string(a)", "lower(to_string(a.b))", "join(',', a)", "contains(a, 'x')", "{x: a, y: upper(b)}", "{x: a.b, x: b}",
         '{"0.5": a, "+Inf": parse_bytes(b)}']
_json = st.recursive(st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=False, allow_infinity=False)
                     | st.sampled_from(["a", "B1", "x,y", " 12 ", "1.5 GiB", "1h2m", "2026-11-30T10:00:00Z", "", "é9"]),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2),
                     max_leaves=6)


def _outcome(search: Any, document: Any) -> Any:
    try:
        return ("value", search(document))
    except Exception as exc:
        return ("error", type(exc).__name__, str(exc))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(CALLS), _json)
def test_direct_calls_give_what_the_jmespath_interpreter_gives(source: str, document: Any) -> None:
    direct = compile_expression(source)
    interpreted = jmespath.compile(source)
    assert _outcome(direct.search, document) == _outcome(lambda d: interpreted.search(d, options=OPTIONS), document)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([*CALLS, "upper(trim(a))", "regex_replace(a, '^B', 'x')", "replace(a, 'x', b)"]), st.lists(_json, max_size=6),
       st.lists(_json, max_size=6))
def test_calls_by_columns_give_what_calls_one_by_one_give_answer_after_answer(source: str, rows: list[Any], later: list[Any]) -> None:
    """`columns` (each call once per column, results kept across probes by their input) against
    `search` per row, for two answers in turn and the first again: None means row by row, which
    raises for the row that fails."""
    expression = compile_expression(source)
    assert expression.columns is not None
    same_input = [{"a": "x", "b": "1"}, {"a": "x", "b": "2"}, {"a": " B1 ", "b": "y"}, {"a": " B1 ", "b": "z"}]  # one input alike, another not
    for answer in (rows, later, rows, [*rows, *later], same_input):
        at_once = expression.columns(answer)
        one_by_one = [_outcome(expression.search, row) for row in answer]
        if at_once is None:
            assert any(outcome[0] == "error" for outcome in one_by_one) or source in ("join(',', a)", "contains(a, 'x')", "length(a)",
                                                                                      "not_null(a, b, `1`)", "to_string(a)", "lower(to_string(a.b))")
        else:
            assert [("value", value) for value in at_once] == one_by_one


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["parse_bytes(a)", "to_number(a)"]),
       st.lists(st.none() | st.integers(-(2**70), 2**70) | st.floats() | st.sampled_from([0, 1, -0.0, 1e10]), max_size=8))
def test_sizes_and_numbers_of_a_column_of_numbers_are_the_numbers_with_their_types(source: str, values: list[Any]) -> None:
    """By columns, a number (or null) is its own size and number, as one call gives it: an integer
    stays an integer (written exactly), a float a float."""
    expression = compile_expression(source)
    assert expression.columns is not None
    rows = [{"a": value} for value in values]
    at_once = expression.columns(rows)
    assert at_once is not None
    assert [(type(v), repr(v)) for v in at_once] == [(type(v), repr(v)) for v in map(expression.search, rows)]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["add(a, b)", "subtract(a, b)", "multiply(a, b)", "divide(a, b)", "divide(a, `1000`)", "multiply(a, `1e300`)"]),
       st.lists(st.tuples(*[st.none() | st.integers(-(2**1100), 2**1100) | st.floats(allow_nan=False, allow_infinity=False)
                            | st.sampled_from([0, -0.0, 1, 1e308, -1e308, 2**1024])] * 2), max_size=6))
def test_arithmetic_by_columns_gives_each_rows_number_with_its_type_or_goes_row_by_row(source: str, pairs: list[tuple[Any, Any]]) -> None:
    """Arithmetic by columns is the operator on the columns: an integer result stays an integer (however large),
    a float a float; a null, a division by zero, a result beyond a float or an integer too large to divide goes
    row by row (None), which gives the row's null or raises its error."""
    expression = compile_expression(source)
    assert expression.columns is not None
    rows = [{"a": a, "b": b} for a, b in pairs]
    at_once = expression.columns(rows)
    one_by_one = [_outcome(expression.search, row) for row in rows]
    if at_once is None:
        assert any(outcome[0] == "error" or outcome[1] is None for outcome in one_by_one)
    else:
        assert [("value", type(v), repr(v)) for v in at_once] == [(o[0], type(o[1]), repr(o[1])) for o in one_by_one]


def test_a_call_memo_keeps_at_most_its_entries_and_characters() -> None:
    memo = CallMemo()
    memo.keep({f"k{i}": f"v{i}" for i in range(MEMO_ENTRIES + 10)})
    assert 0 < len(memo.results) <= MEMO_ENTRIES
    memo = CallMemo()
    memo.keep({str(i) * 500: "x" * 500 for i in range(10_000)})
    assert 0 < memo.characters <= MEMO_CHARACTERS and len(memo.results) * 1000 <= MEMO_CHARACTERS
    memo.keep({"long": "y" * 2000, "list": ["a"]})  # too long to keep, and not a value to share
    assert "long" not in memo.results and "list" not in memo.results


@pytest.mark.parametrize(("text", "expected"), [
    ("12", 12), ("-3", -3), ("1e3", 1000.0), ("+.5", 0.5), ("Inf", float("inf")), ("99999999999999999999", 99999999999999999999),
    ("1_000", None), ("\u0661\u0662", None), ("\uff11\uff12", None), (" 12", None), ("0x1p3", None), ("1e400", None),
    ("1" * 310, None), ("-" + "9" * 5000, None)])  # integers no float holds, like 1e400 (Python's int() refuses 5,000 digits)
def test_to_number_reads_strings_as_prometheus_reads_numbers(text: str, expected: Any) -> None:
    """jmespath's own to_number takes what Python's int() and float() take: `1_000`, `١٢`, spaces."""
    result = compile_expression("to_number(v)").search({"v": text})
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("source", ["parse_duration(v)", "parse_bytes(v)"])
@pytest.mark.parametrize("text", ["\u0661\u0662", "\uff11\uff12", "\u0661\u0662s", "\u0661\u0662 MB", "1:\u0660\u0660:00"])
def test_durations_and_sizes_take_only_ascii_digits(source: str, text: str) -> None:
    with pytest.raises(FunctionError, match="not a"):
        compile_expression(source).search({"v": text})


# -- what one evaluation may build (spec/evaluation.py, MAX_BUILT_ENTRIES and MAX_BUILT_CHARACTERS)

BUILDING = """
modules:
  default:
    metrics:
      - {name: built, help: b, each: items, labels: {id: id}, value: "VALUE"}
"""
_PARTS = MAX_BUILT_ENTRIES + 1  # characters of a text that `split(s, '')` would make too many parts of
BUILT_TOO_MUCH = [  # the value of a rule, the element's fields, where the message says it was stopped
    ("length(split(s, ''))", {"s": "x" * _PARTS}, "function split: cannot use \"xxx"),
    ("length([sort(split(s, '')), sort(split(s, ''))])", {"s": "ab" * (_PARTS // 3)}, "at sort()"),  # the repro's: each alone would do
    ("length([names, names, names, names, names][])", {"names": ["n"] * (_PARTS // 4)}, "at a flatten []"),
    ("length(join(s, split(s, ',')))", {"s": "a," * 3000}, "function join: cannot use"),  # 18 million characters, never made
    ("length([to_string(names), to_string(names)][0])", {"names": ["nnnn"] * (MAX_BUILT_CHARACTERS // 10)}, "at to_string()"),
    # a direct call (no interpreter): its text result held to the bound by the call itself
    ("length(replace(s, 'a', 'bb', `65536`))", {"s": "a" * (MAX_BUILT_CHARACTERS - 100)}, "function replace: cannot use"),
    # more calls than are direct: the bounded interpreter counts the text each makes
    ("length(values({a: lower(s), b: lower(s), c: lower(s), d: lower(s), e: lower(s)}))", {"s": "X" * (MAX_BUILT_CHARACTERS // 4)},
     "characters of text"),
]


@pytest.mark.parametrize(("source", "fields", "where"), BUILT_TOO_MUCH, ids=[case[2] for case in BUILT_TOO_MUCH])
def test_an_evaluation_building_more_than_its_bound_fails_its_series_saying_where(source: str, fields: dict[str, Any], where: str) -> None:
    spec = BUILDING.replace("VALUE", source.replace('"', '\\"'))
    document = {"items": [{"id": "big", **fields}, {"id": "small", "s": "a,b", "names": ["n"]}]}
    for result in _both_paths(spec, document):
        assert [labels["id"] for _, labels, _ in samples(result.families["built"])] == ["small"]  # the other series are there
        assert result.errors["built"] == 1
        (message,) = result.messages
        assert message.startswith("metric built: ") and message.endswith("(labels {'id': 'big'})")
        assert where in message
        assert "1,048,576" in message or f"{MAX_BUILT_CHARACTERS:,}" in message  # the bound, as docs/spec.md gives it


def test_a_call_by_columns_builds_no_more_text_than_one_evaluation_may_and_its_series_are_still_answered() -> None:
    """`replace` may grow each row by MAX_GROWTH: 512 rows at once were 32 Mi characters, none counted. The column is
    counted as one evaluation is; past the bound its rows go one by one, each an evaluation of its own."""
    grown = "x" * 2047  # 32 matches of '' in a 31-character text: 65,504 characters more, within MAX_GROWTH
    module = make_spec(BUILDING.replace("VALUE", f"length(replace(s, '', '{grown}'))")).modules["default"]
    document = {"items": [{"id": str(i), "s": "a" * 31} for i in range(512)]}
    tracemalloc.start()
    try:
        result = extract(module, {"default": document}, PROBE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [value for _, _, value in samples(result.families["built"])] == [31 + 32 * 2047] * 512 and result.errors["built"] == 0
    assert peak < 2 * MAX_BUILT_CHARACTERS + (1 << 22), peak  # one bound and a slice beyond it, not the column's 32 Mi


def test_a_list_of_the_answer_sorted_filtered_and_projected_is_within_the_bound() -> None:
    items = [{"n": i, "s": "up" if i % 2 else "down"} for i in range(150_000)]
    expression = compile_expression("[length(items[?s=='up']), max_by(items, &n).n, sort_by(items, &n)[-1].n, length(items[*].n)]")
    assert expression.search({"items": items}) == [75_000, 149_999, 149_999, 150_000]
