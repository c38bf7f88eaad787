"""Documents for the tests that a loader agrees with its JSON Schema: shaped by a strategy, then broken."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

from hypothesis import strategies as st


def containers(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, doc
    children = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, child in children:
        yield from containers(child, (*path, key))


def broken_documents(documents: st.SearchStrategy[Any], extra_keys: Sequence[str], junk: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Documents of `documents`: mostly right, then a few random breakages (one of `extra_keys` added,
    a value replaced by `junk`)."""

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        doc = copy.deepcopy(draw(documents))
        for _ in range(draw(st.integers(0, 2))):
            path, node = draw(st.sampled_from(list(containers(doc))))
            if isinstance(node, dict) and draw(st.booleans()):
                node[draw(st.sampled_from(list(extra_keys)))] = draw(junk)
            elif path:
                parent: Any = doc
                for key in path[:-1]:
                    parent = parent[key]
                parent[path[-1]] = draw(junk)
        return doc

    return build()
