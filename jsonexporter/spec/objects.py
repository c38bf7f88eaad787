"""The objects of an answer parsed for its rules (spec/projection.py), and how they are read.

A projection decodes each object whose named fields the rules read into a msgspec Struct holding just
those fields: smaller and faster to build and free than a dict of them. Every reader of a field reads
such an object as it reads a dict: `get(name)` (jmespath's interpreter asks no more of an object),
the fast searches (spec/expressions.py) and the columns (`column`, `columns`). A field the answer lacks reads as
null, as a null one does: no reader of a named field tells them apart, and the objects meet no other
reader (a rule that reads more of an object, `@` or `keys(@)`, has its answer parsed whole).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from itertools import repeat
from typing import Any

import msgspec
from msgspec.structs import astuple


def attribute(name: str) -> str:
    """The attribute holding the JSON field `name`: `j_` and the name when that is an ASCII identifier,
    else `jx_` and its UTF-8 in hex (`a-b`, `1x`, `a.b`, `é`). No attribute of a dict, list, text or
    number starts so: read from any other JSON value, it is missing."""
    if name.isascii() and name.isidentifier():
        return f"j_{name}"
    return f"jx_{name.encode('utf-8', 'surrogatepass').hex()}"


@functools.lru_cache(maxsize=4096)  # by the field names of the specs loaded: a few per rule
def getter(name: str) -> Callable[[Any], Any]:
    """The field `name` of a projection's object, at C speed; AttributeError from any other value."""
    return operator.attrgetter(attribute(name))


class Fields(msgspec.Struct, gc=False):
    """The base of a projection's objects. No cycle can go through one (a parsed answer has none):
    the garbage collector need not track them (gc=False, 16 bytes and a collection's walk less each)."""

    def get(self, name: str, default: Any = None) -> Any:
        """The field as `dict.get` gives it: null when the answer lacks it (or has it null)."""
        return getattr(self, attribute(name), default)


def columns(rows: list[Any]) -> dict[str, list[Any]] | None:
    """Every field of rows that are all a projection's objects, as a column by the field's name: each object's
    fields as a tuple (msgspec's astuple, in C), then turned into columns (200 objects of 10 fields: 24 µs, against
    54 for a `column` of each); None when the rows are dicts, or one of them is not an object (null, a number).
    A projection's objects of one list are all of one type (its node's, spec/projection.py)."""
    if not rows or type(rows[0]) is dict or not isinstance(rows[0], Fields):
        return None
    try:
        by_row = list(map(astuple, rows))
    except TypeError:  # an element that is not an object
        return None
    return dict(zip(type(rows[0]).__struct_encode_fields__, map(list, zip(*by_row, strict=True)), strict=True))


def column(name: str, rows: list[Any]) -> list[Any]:
    """`row.get(name)` of each row, at C speed, rows being dicts or a projection's objects (as the first
    row is); TypeError or AttributeError when one is neither (null, a number): the caller reads row by row."""
    if rows and type(rows[0]) is not dict and isinstance(rows[0], Fields):
        return list(map(getter(name), rows))
    return list(map(dict.get, rows, repeat(name)))
