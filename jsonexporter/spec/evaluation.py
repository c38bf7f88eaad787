"""The JMESPath interpreter of spec expressions, bounded: the probe's deadline is honoured inside one
evaluation, and what one evaluation builds is bounded.

jmespath evaluates an expression by one call on the whole document: extraction's slices (slices.py)
can cut only between evaluations, and nothing in jmespath bounds what its functions and projections
build (`sort(split(s, ''))` makes a list entry per character, eight of them in a multi-select eight).
So each evaluation here
- counts its work, a unit per node visited (a projection's element, a filter's comparison, a key of
  `sort_by`) and per entry or character of a function's arguments (`sort`, `max` and their type checks
  walk them), and every `_TICKS` units reads the clock: past the deadline of the computation running
  (slices.current_deadline), it raises DeadlinePassed, which ends the probe as a deadline passed
  between slices does. Without a deadline (`check`, a login's expressions) nothing is read.
- keeps a budget of what it builds: list and object entries (projections, filters, flatten, slices,
  multi-selects, the results of `split`, `sort`, `sort_by`, `reverse`, `keys`, `values`, `map`,
  `merge`, `to_array`) and characters of text (`join`, `to_string`, `lower`, `replace`, ...), counted
  before the function builds when the arguments tell its size, after it otherwise (a text function's
  result is at most a few times its input, plus MAX_GROWTH). Past either, BuildLimitExceeded: an error
  of that series, which says so.
Plain fields and the direct calls of expressions.py never come here: they pay nothing for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from jmespath.visitor import TreeInterpreter

from jsonexporter.slices import DeadlinePassed, current_deadline
from jsonexporter.spec.functions import MAX_BUILT_CHARACTERS, MAX_BUILT_ENTRIES, OPTIONS, BuildLimitExceeded, built_before, text_results

Search = Callable[[Any], Any]

# Units of work between two readings of the clock: a visit is 0.2 to 1 us, an argument's entry a few ns to 100 ns
# (a type check): about 0.1 to 1 ms between readings, none for most evaluations (a label's `a.b[0]` is a few units)
_TICKS = 2048
_NO_DEADLINE = float("inf")  # the units left when nothing is read: `inf - n` stays above 0


class _Evaluation(TreeInterpreter):  # type: ignore[misc]
    """One evaluation of one expression: the interpreter of jmespath (`visit_*`), with the clock and the budget."""

    def __init__(self, source: str, deadline: float | None) -> None:  # TreeInterpreter's, without its per-call Options
        self._method_cache: dict[str, Any] = {}
        self._dict_cls = dict
        self._options = OPTIONS
        self._functions = OPTIONS.custom_functions
        self._source = source
        self._deadline = deadline
        self._ticks: float = _NO_DEADLINE if deadline is None else _TICKS
        self._entries = MAX_BUILT_ENTRIES
        self._characters = MAX_BUILT_CHARACTERS

    def visit(self, node: dict[str, Any], value: Any) -> Any:
        self._ticks -= 1
        if self._ticks <= 0:
            self._read_clock()
        return _VISITORS[node["type"]](self, node, value)

    def _read_clock(self) -> None:
        assert self._deadline is not None
        if time.monotonic() >= self._deadline:
            raise DeadlinePassed
        self._ticks = _TICKS

    def _built(self, entries: int, characters: int, what: str) -> None:
        self._entries -= entries
        self._characters -= characters
        if self._entries < 0:
            raise BuildLimitExceeded(self._source, f"more than {MAX_BUILT_ENTRIES:,} list and object entries", what)
        if self._characters < 0:
            raise BuildLimitExceeded(self._source, f"more than {MAX_BUILT_CHARACTERS:,} characters of text", what)

    def visit_function_expression(self, node: dict[str, Any], value: Any) -> Any:
        args = [self.visit(child, value) for child in node["children"]]
        self._ticks -= sum(len(arg) for arg in args if type(arg) in _SIZED)  # what the function, its type check, walk
        if self._ticks <= 0:
            self._read_clock()
        name = node["value"]
        size = built_before(name, args)
        if size is not None:
            self._built(*size, f"{name}()")
        result = self._functions.call_function(name, args)
        if name in text_results and type(result) is str:
            self._built(0, len(result), f"{name}()")
        return result

    def visit_projection(self, node: dict[str, Any], value: Any) -> Any:
        return self._collected(super().visit_projection(node, value), "a projection [*]")

    def visit_value_projection(self, node: dict[str, Any], value: Any) -> Any:
        return self._collected(super().visit_value_projection(node, value), "a projection *")

    def visit_filter_projection(self, node: dict[str, Any], value: Any) -> Any:
        return self._collected(super().visit_filter_projection(node, value), "a filter [?]")

    def visit_slice(self, node: dict[str, Any], value: Any) -> Any:
        return self._collected(super().visit_slice(node, value), "a slice [:]")

    def visit_multi_select_list(self, node: dict[str, Any], value: Any) -> Any:
        return self._collected(super().visit_multi_select_list(node, value), "a multi-select [ ]")

    def visit_multi_select_dict(self, node: dict[str, Any], value: Any) -> Any:
        return self._collected(super().visit_multi_select_dict(node, value), "a multi-select { }")

    def _collected(self, collected: Any, what: str) -> Any:
        """A list or object built (at most the length of what it was built from, counted at once after)."""
        if collected is not None:
            self._built(len(collected), 0, what)
        return collected

    def visit_flatten(self, node: dict[str, Any], value: Any) -> Any:
        """jmespath's, each list counted before it is added: `[a, a, a][]` would copy a list of the answer three times."""
        base = self.visit(node["children"][0], value)
        if type(base) is not list:
            return None
        merged: list[Any] = []
        for element in base:
            if type(element) is list:
                self._built(len(element), 0, "a flatten []")
                self._ticks -= len(element)
                merged.extend(element)
            else:
                self._built(1, 0, "a flatten []")
                merged.append(element)
        if self._ticks <= 0:
            self._read_clock()
        return merged


_SIZED = frozenset({list, str, dict})
# jmespath's visit methods, ours where we have them: one table for every evaluation (jmespath's Visitor fills one per
# interpreter, that is per search); an `&expr` (sort_by, max_by, map) is visited by the evaluation that made it
_VISITORS: dict[str, Callable[[_Evaluation, dict[str, Any], Any], Any]] = {
    name[len("visit_"):]: function for name, function in vars(TreeInterpreter).items() if name.startswith("visit_")
}
_VISITORS.update({name[len("visit_"):]: function for name, function in vars(_Evaluation).items() if name.startswith("visit_")})


def bounded_search(ast: dict[str, Any], source: str) -> Search:
    """The search of a parsed expression by `_Evaluation`: jmespath's `ParsedResult.search`, bounded."""

    def search(data: Any) -> Any:
        return _Evaluation(source, current_deadline()).visit(ast, data)

    return search
