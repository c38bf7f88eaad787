"""What the rules of a module read of each endpoint's answer, as a decoder that builds only that.

A rule made of plain field paths (and calls of them: `lower(a.b)`, `divide(x, `1000`)`) reads a few
fields of each element; the others need not become Python objects at all. From the rules of an
endpoint this builds types (only the fields read, each kept whole) and a msgspec decoder for them: an
object read by name parses into a Struct of those fields (spec/objects.py, which says how every reader
reads it as a dict; a TypedDict's dict beyond STRUCT_FIELDS), the rest into the same lists, dicts and
values as the whole parse. For bench/'s 2.1 MB answer that is 3.9 ms against orjson's 6.9 (TypedDicts:
5.7), 1.1 ms against 3.2 to free it, and 3.6 MB of objects against 9.7 (bench/parse.py, bench/README.md).

Where the rules read more than named fields of the elements (`@`, `$`, a filter on the collection,
`keys(@)`), there is no projection: the whole answer is parsed as before. An answer the types do not
fit (an element that is not an object, a number beyond a float, NaN, a BOM, text that is not strict
UTF-8) is parsed whole too, so that the rules see exactly what the full parse gives them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypedDict, Union

import jmespath
import msgspec

from jsonexporter.spec.expressions import Expression, field_chain
from jsonexporter.spec.model import Metric
from jsonexporter.spec.objects import Fields, attribute

# node types whose value comes from their first child's only: what is read is what that one reads
_NAVIGATING = frozenset({"subexpression", "index_expression", "projection", "value_projection", "filter_projection", "flatten", "pipe"})
# node types whose children are each evaluated on the current node
_COMBINING = frozenset({"function_expression", "or_expression", "and_expression", "not_expression", "comparator",
                        "multi_select_list", "multi_select_dict", "key_val_pair"})


# A value read whole. An integer beyond 64 bits fails it, so that the answer is parsed whole, where
# orjson reads it as a float (as _parse_json does up to 4 MiB). Nested in a list or object read whole it
# stays exact (msgspec takes no bounds there): the one difference from the whole parse, seen only in the
# label text of such a list (`[18446744073709551616]`, not `[1.8446744073709552e+19]`), as the json
# module gives it beyond 4 MiB.
_LEAF = Union[Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)], float, str, bool, None, list[Any], dict[str, Any]]  # noqa: UP007


# An object of more fields than this is a TypedDict, not a Struct (spec/objects.py): a Struct holds a slot
# for every field read, present or not, and the response cache counts an object in the answer as 200
# bytes (cache.parsed_size): 16 slots and the header take 144, a dict of them more (tests/test_fastpaths.py).
STRUCT_FIELDS = 16


class _Whole(Exception):
    """An expression reads the current node as a whole (or in a way not followed here)."""


def _reads(ast: dict[str, Any]) -> list[list[str]]:
    """The field paths an expression reads of the current node, each needed whole. Raises _Whole."""
    kind = ast["type"]
    if kind == "field":
        return [[ast["value"]]]
    if kind in ("literal", "expref"):  # an expref is applied to the elements of an argument, read whole
        return []
    if kind == "subexpression":
        chain = field_chain(ast)
        if chain is not None:  # a field chain: `a.b` needs only b of a
            return [chain]
        # what follows reads the left side's value, which is not a field of the current node (`(a | b).c`
        # reads c of a.b, `a[0].c` c of an element): the left side is read whole
        return _reads(ast["children"][0])
    if kind in _NAVIGATING:
        return _reads(ast["children"][0])
    if kind in _COMBINING:
        return [path for child in ast["children"] if isinstance(child, dict) for path in _reads(child)]
    raise _Whole


def _paths(expr: Expression) -> list[list[str]]:
    if expr.on_context:  # `$root`, `$parent`: anywhere in the answer
        raise _Whole
    if expr.fields is not None:
        return [list(expr.fields)]
    return _reads(jmespath.compile(expr.source).parsed)


@dataclass
class _Node:
    """What is read of one JSON value: named fields of it, or its elements (those of a list, the
    values of an object) when `each` iterates it, or all of it."""

    fields: dict[str, _Node] = field(default_factory=dict)
    elements: _Node | None = None
    whole: bool = False

    def child(self, name: str) -> _Node:
        node = self.fields.get(name)
        if node is None:
            node = self.fields[name] = _Node()
        return node

    def read(self, paths: Iterable[list[str]]) -> None:
        for path in paths:
            node = self
            for name in path:
                node = node.child(name)
            node.whole = True


def _shape(metrics: Iterable[Metric]) -> _Node | None:
    """What the metrics read of their endpoint's answer; None when that is all of it, or when the
    elements of an iteration are read whole (msgspec parses a whole value slower than orjson)."""
    root = _Node()
    try:
        for metric in metrics:
            node = root
            for level in metric.each:
                if level.path.fields is None:  # `each: items[?v]`: the elements are read by a filter
                    raise _Whole
                for name in level.path.fields:
                    node = node.child(name)
                if node.elements is None:
                    node.elements = _Node()
                node = node.elements
            exprs = [e for e in metric.expressions() if all(e is not lv.path for lv in metric.each)]
            node.read(path for e in exprs for path in _paths(e))
    except (_Whole, ValueError):  # ValueError: an expression jmespath cannot compile
        return None
    return root if not _reads_whole_elements(root) else None


def _reads_whole_elements(node: _Node) -> bool:
    if node.whole:
        return False  # a leaf: its subtree is kept whole
    if node.elements is not None and (node.elements.whole or node.fields):
        return True
    children = [*node.fields.values(), *([node.elements] if node.elements is not None else [])]
    return any(_reads_whole_elements(child) for child in children)


def _type(node: _Node, names: list[int]) -> Any:
    """The msgspec type of a node (None allowed wherever the rules allow null: a missing field)."""
    if node.whole:
        return _LEAF
    if node.elements is not None:
        element = _type(node.elements, names)
        return Union[list[element], dict[str, element], None]  # type: ignore[valid-type]  # noqa: UP007 (built at run time)
    names[0] += 1
    name = f"Projection{names[0]}"
    fields = {key: _type(child, names) for key, child in node.fields.items()}
    if len(fields) > STRUCT_FIELDS:
        return Union[TypedDict(name, fields, total=False), None]  # type: ignore[operator]  # noqa: UP007
    struct = msgspec.defstruct(name, [(attribute(key), kind, None) for key, kind in fields.items()],
                               bases=(Fields,), rename={attribute(key): key for key in fields}, gc=False)
    return Union[struct, None]  # noqa: UP007


@dataclass(frozen=True, slots=True)
class Projection:
    """A decoder of the fields an endpoint's rules read; `key` tells projections apart (response cache)."""

    key: str
    decoder: msgspec.json.Decoder[Any] = field(repr=False, compare=False)

    def decode(self, body: bytes) -> Any:
        """The answer with only the fields read; FULL when it must be parsed whole instead."""
        if not body.isascii():
            try:
                body.decode("utf-8")  # strict: what msgspec leaves unchecked in the fields it skips
            except UnicodeDecodeError:
                return FULL
        try:
            return self.decoder.decode(body)
        except (msgspec.DecodeError, RecursionError):  # a ValidationError is a DecodeError
            return FULL


FULL: Any = object()  # Projection.decode: parse this answer whole


def projections(metrics: Iterable[Metric], endpoints: Iterable[str]) -> dict[str, Projection]:
    """The projection of each endpoint whose rules read only named fields of their elements. An endpoint
    no rule reads has none: what reads its answer is not a rule (a login's token, a next page's link), and
    whatever reads an answer besides the rules must add what it reads to the shape, or parse it whole."""
    metrics = list(metrics)
    found = {}
    for endpoint in endpoints:
        readers = [m for m in metrics if m.endpoint == endpoint]
        shape = _shape(readers) if readers else None
        if shape is not None:
            found[endpoint] = Projection(_describe(shape), msgspec.json.Decoder(_type(shape, [0])))
    return found


def _describe(node: _Node) -> str:
    if node.whole:
        return "*"
    inner = ",".join(f"{name!r}:{_describe(child)}" for name, child in sorted(node.fields.items()))
    return f"[{_describe(node.elements)}]" if node.elements is not None else f"{{{inner}}}"
