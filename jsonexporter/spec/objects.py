"""The objects of an answer parsed for its rules (spec/projection.py), and how they are read.

A projection decodes each object whose named fields the rules read into a msgspec Struct holding just
those fields: smaller and faster to build and free than a dict of them. Every reader of a field reads
such an object as it reads a dict: `get(name)` (jmespath's interpreter asks no more of an object),
the fast searches (spec/expressions.py) and the columns (`column`). A field the answer lacks reads as
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


def column(name: str, rows: list[Any]) -> list[Any]:
    """`row.get(name)` of each row, at C speed, rows being dicts or a projection's objects (as the first
    row is); TypeError or AttributeError when one is neither (null, a number): the caller reads row by row."""
    if rows and type(rows[0]) is not dict and isinstance(rows[0], Fields):
        return list(map(getter(name), rows))
    return list(map(dict.get, rows, repeat(name)))
