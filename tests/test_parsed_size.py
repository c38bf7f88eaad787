"""upstream/cache.parsed_size, the estimate of what an answer takes parsed that bounds the response cache and
--refresh.max-bytes, is never under what the parse takes (tracemalloc), whatever the document: strings of every
width CPython stores (ASCII, Latin-1, the BMP, beyond it), short and long, as text or `\\u` escapes, in arrays and
objects, parsed by orjson (answers up to 4 MiB) and the json module (beyond)."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jsonexporter.upstream.cache import parsed_size

# characters of each width: ASCII, Latin-1 beyond ASCII, the BMP beyond Latin-1, beyond the BMP
KINDS = {"ascii": "ab~", "latin-1": "éÿ\x80", "bmp": "āȁ€\uffef", "astral": "😀\U0010ffff"}
_texts = st.one_of(
    st.text(alphabet=st.sampled_from("".join(KINDS.values())), max_size=3),  # short: the objects' headers dominate
    st.text(alphabet=st.sampled_from("".join(KINDS.values())), min_size=200, max_size=400),  # long: the characters do
    *(st.text(alphabet=st.sampled_from(kind), min_size=1, max_size=2) for kind in KINDS.values()),
)
_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _texts,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(_texts, inner, max_size=6),
    max_leaves=40,
)
PARSERS: dict[str, Callable[[bytes], Any]] = {"orjson": orjson.loads, "json": json.loads}


def _taken(parse: Callable[[bytes], Any], body: bytes) -> int:
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        document = parse(body)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del document
    return after - before


@settings(max_examples=300, deadline=None)
@given(_documents, st.integers(min_value=1, max_value=300), st.booleans(), st.sampled_from(sorted(PARSERS)))
def test_the_parsed_size_of_a_random_document_is_never_under_what_its_parse_takes(document: Any, copies: int, escaped: bool,
                                                                                     parser: str) -> None:
    body = json.dumps([document] * copies, ensure_ascii=escaped).encode("utf-8", "surrogatepass")
    assert _taken(PARSERS[parser], body) <= parsed_size(body)


@pytest.mark.parametrize("parser", sorted(PARSERS))
@pytest.mark.parametrize("text", ["ab", "é", "ā", "€", "😀", "é" * 300, "ā" * 300, "a" * 300 + "ā", "a" * 300 + "😀"])
def test_the_parsed_size_of_many_strings_of_one_kind_is_never_under_what_their_parse_takes(text: str, parser: str) -> None:
    """An array of 1-character non-ASCII strings took 1.41 to 1.45 times the estimate (repro 13)."""
    for body in (json.dumps([text] * 100_000, ensure_ascii=False).encode(), json.dumps([{text: text}] * 50_000, ensure_ascii=False).encode()):
        assert _taken(PARSERS[parser], body) <= parsed_size(body), body[:40]
