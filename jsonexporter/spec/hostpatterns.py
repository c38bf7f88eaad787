r"""Whether a `targets.allow` pattern lets another host through where its author wrote one: `check`'s
warning at a wildcard in a pattern's host, and its warning at a pattern that lets every host through.

Decided by the pattern itself, not by reading its syntax for a port or a path: URLs it allows are made
from it (its witnesses: the first choices, and one per other alternative or one more repetition),
and the pattern is asked whether it also allows them with more host after theirs (`https://api\.example\.com(:443)?.*`
allows `https://api.example.com.evil.test`: the optional port may be left out) or another host before
theirs (`https://.+\.example\.com` allows `https://evil.test/.example.com`), spelled as the allowlist
check spells the URLs it matches (hops.url_forms: a `/` before the query, no userinfo, no fragment; and
`host:port`, `host`, so that a witness without a scheme, `api\.example\.com.*`'s or `.*\.example\.com`'s, is
asked with more host after it and a whole URL of another host before it). A pattern that allows a foreign
host outright (`https?://.*`, `https://.*(:443)?(/.*)?`, `.*/api/.*`) lets every host through: its warning is its own.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

from jsonexporter.spec.functions import Pattern, compile_regex

_FOREIGN = "evil.test"
_MAX_WITNESSES = 64  # per pattern: variants one choice at a time, so patterns of hundreds of choices still get some
_NEUTRAL = "[a-z0-9-]"  # what a wildcard is replaced with to find which one lets the host go on
_MAX_TRIED = 32  # wildcards replaced in turn (5 ms each for a pattern of 300): beyond, the warning points at the host
_PREFERRED = "a0-_~.:/" + "".join(map(chr, range(0x20, 0x7F))) + "".join(map(chr, range(0xA0, 0x300)))


class _Unsupported(Exception):
    """A pattern the witness maker does not read (it warns about nothing then)."""


@dataclass(frozen=True, slots=True)
class _Atom:
    """One character of the pattern: a literal, `.`, a class, an escape; `source[start:end]` in the pattern."""

    text: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Repeat:
    node: _Node
    low: int
    high: int | None


@dataclass(frozen=True, slots=True)
class _Branches:
    branches: tuple[tuple[_Node, ...], ...]


_Node = _Atom | _Repeat | _Branches


def wildcard_in_host(source: str) -> int | None:
    """Where in `source` the wildcard is that lets another host before or after the pattern's own (the
    first whose replacement by a host's character closes the gap; the host's start when none alone does);
    None when the pattern holds its hosts, lets every host through (every_host), or is not read."""
    if _lets_through(source) != _ANOTHER:
        return None
    try:
        atoms = [atom for atom in _atoms(_parse(source)) if _is_wildcard(atom)]
    except (_Unsupported, ValueError, RecursionError):  # RegexError is a ValueError
        return None
    for atom in atoms[:_MAX_TRIED]:
        if _lets_through(source[:atom.start] + _NEUTRAL + source[atom.end:]) != _ANOTHER:
            return atom.start
    return _host_start(source)


def every_host(source: str) -> int | None:
    """Where the host of `source` starts when the pattern lets every host through (a witness's host replaced
    by another one still matches: `https?://.*`, `https://.*:443.*`, `[a-z.]+:8006`); None otherwise."""
    return _host_start(source) if _lets_through(source) == _EVERY else None


def _host_start(source: str) -> int:
    start = source.find("://")
    return start + 3 if start >= 0 else 0


_ANOTHER, _EVERY = "another host", "every host"


def _lets_through(source: str) -> str | None:
    """_ANOTHER, _EVERY, or None: what the first witness that lets a foreign host through says."""
    try:
        pattern = _compiled(source)
        witnesses = _witnesses(_parse(source))
    except (_Unsupported, ValueError, RecursionError):  # RegexError is a ValueError
        return None
    for witness in itertools.islice(dict.fromkeys(witnesses), _MAX_WITNESSES):
        span = _host_span(witness)
        schemeless = "://" not in witness
        if (span is None and not schemeless) or not pattern.fullmatch(witness):
            continue
        if span is not None:
            start, end = span
            if pattern.fullmatch(witness[:start] + _FOREIGN + witness[end:]):
                return _EVERY
            if pattern.fullmatch(f"{witness[:end]}.{_FOREIGN}{witness[end:]}"):
                return _ANOTHER
        # another host before: a foreign URL whose path holds the witness's host; a witness without a scheme
        # holds no host a URL could be put before, only a whole URL's spelling can have one before it
        before = f"https://{_FOREIGN}/{witness}" if schemeless else f"{witness[:start]}{_FOREIGN}/{witness[start:]}"
        if pattern.fullmatch(before):
            return _ANOTHER
    return None


def _host_span(url: str) -> tuple[int, int] | None:
    """Where the host of `url` is, as a URL parser reads it: after `scheme://` and any userinfo, before the port, path,
    query, fragment; without a scheme, as the spellings `host:port` and `host` (hops.url_forms) have it, from the start."""
    scheme = url.find("://")
    start = scheme + 3 if scheme >= 0 else 0
    if scheme < 0 and any(c in url for c in "/?#@"):
        return None  # no spelling of a URL without a scheme has these: not a host
    end = next((i for i in range(start, len(url)) if url[i] in "/?#"), len(url))
    start = max(start, url.rfind("@", start, end) + 1)
    if url.startswith("[", start):
        close = url.find("]", start, end)
        return (start, close + 1) if close >= 0 else None
    port = url.find(":", start, end)
    return start, port if port >= 0 else end


# -- the witnesses: strings the pattern matches, made from its structure

def _witnesses(nodes: tuple[_Node, ...]) -> list[str]:
    """The sequence's witness of the first choices (the first alternative, the fewest repetitions) first,
    then variants each making one other choice."""
    options = [_node_witnesses(node) for node in nodes]
    shortest = [found[0] for found in options]
    found = ["".join(shortest)]
    for i, alternatives in enumerate(options):
        for other in alternatives[1:]:
            found.append("".join(shortest[:i]) + other + "".join(shortest[i + 1:]))
            if len(found) > _MAX_WITNESSES:
                return found
    return found


def _node_witnesses(node: _Node) -> list[str]:
    if isinstance(node, _Atom):
        return [_character(node.text)]
    if isinstance(node, _Branches):
        return [w for branch in node.branches for w in _witnesses(branch)][:_MAX_WITNESSES + 1]
    if node.high == 0:
        return [""]
    inner = _node_witnesses(node.node)
    once_more = [inner[0] * (node.low + 1)] if node.high is None or node.high > node.low else []
    others = [w * max(node.low, 1) for w in inner[1:]]
    return list(dict.fromkeys([inner[0] * node.low, *once_more, *others]))[:_MAX_WITNESSES + 1]


def _atoms(nodes: tuple[_Node, ...]) -> list[_Atom]:
    found: list[_Atom] = []
    for node in nodes:
        if isinstance(node, _Atom):
            found.append(node)
        elif isinstance(node, _Branches):
            found.extend(atom for branch in node.branches for atom in _atoms(branch))
        else:
            found.extend(_atoms((node.node,)))
    return found


def _is_wildcard(atom: _Atom) -> bool:
    """More than one character, among them a `.` or a `/`: what lets a host go on or end early."""
    if len(atom.text) == 1 and atom.text != ".":
        return False
    program = _compiled(atom.text)
    return program.fullmatch("a") and (program.fullmatch(".") or program.fullmatch("/"))


@functools.lru_cache(maxsize=256)
def _character(text: str) -> str:
    """A character the atom matches, a host's if it can."""
    if len(text) == 1 and text not in ".^$|()[]{}*+?\\":
        return text
    program = _compiled(text)
    for char in _PREFERRED:
        if program.fullmatch(char):
            return char
    raise _Unsupported(text)


@functools.lru_cache(maxsize=256)
def _compiled(source: str) -> Pattern:
    """compile_regex, without filling its cache (the spec's own patterns live there) with these."""
    pattern: Pattern = compile_regex.__wrapped__(source)
    return pattern


# -- RE2 syntax, as far as witnesses need it: alternatives, groups, repetitions, and characters

def _parse(source: str) -> tuple[_Node, ...]:
    nodes, end = _sequence(source, 0)
    if end != len(source):
        raise _Unsupported(source)
    return nodes


def _sequence(source: str, i: int) -> tuple[tuple[_Node, ...], int]:
    """The alternatives from `i` to the next `)` at this depth (or the end): one node, or the nodes of the only branch."""
    branches: list[tuple[_Node, ...]] = []
    nodes: list[_Node] = []
    while True:
        if i >= len(source) or source[i] == ")":
            branches.append(tuple(nodes))
            break
        if source[i] == "|":
            branches.append(tuple(nodes))
            nodes = []
            i += 1
            continue
        node, i = _item(source, i)
        if node is not None:
            node, i = _quantified(source, i, node)
            nodes.append(node)
        elif i < len(source) and source[i] in "*+?{":
            i = _quantifier_end(source, i)  # a zero-width item repeated is still zero-width
    if len(branches) == 1:
        return branches[0], i
    return (_Branches(tuple(branches)),), i


def _item(source: str, i: int) -> tuple[_Node | None, int]:
    """The item at `i` (None: zero-width, a flag group or an anchor) and where the next starts."""
    char = source[i]
    if char == "(":
        return _group(source, i)
    if char == "[":
        end = _class_end(source, i)
        return _Atom(source[i:end], i, end), end
    if char == "\\":
        return _escape(source, i)
    if char in "^$":
        return None, i + 1
    if char in "*+?":
        raise _Unsupported(source)
    return _Atom(char, i, i + 1), i + 1


def _group(source: str, i: int) -> tuple[_Node | None, int]:
    start = i + 1
    if source.startswith("?", start):
        if source.startswith(("?P<", "?<"), start):
            start = source.index(">", start) + 1
        else:
            j = start + 1
            while j < len(source) and source[j] in "imsU-":
                j += 1
            if source.startswith(")", j):
                return None, j + 1  # `(?i)`: flags for what follows
            if not source.startswith(":", j):
                raise _Unsupported(source)
            start = j + 1
    nodes, end = _sequence(source, start)
    if not source.startswith(")", end):
        raise _Unsupported(source)
    return _Branches((nodes,)), end + 1


def _class_end(source: str, i: int) -> int:
    j = i + 1
    if source.startswith("^", j):
        j += 1
    if source.startswith("]", j):
        j += 1
    while j < len(source) and source[j] != "]":
        if source[j] == "\\":
            j += 2
        elif source.startswith("[:", j) and (close := source.find(":]", j + 2)) >= 0:
            j = close + 2
        else:
            j += 1
    if j >= len(source):
        raise _Unsupported(source)
    return j + 1


def _escape(source: str, i: int) -> tuple[_Node | None, int]:
    if i + 1 >= len(source):
        raise _Unsupported(source)
    char = source[i + 1]
    if char in "AzbB":
        return None, i + 2
    if char == "Q":
        end = source.find("\\E", i + 2)
        literal = source[i + 2:] if end < 0 else source[i + 2:end]
        resume = len(source) if end < 0 else end + 2
        if not literal:
            return None, resume
        atoms = tuple(_Atom(_literal(c), i + 2 + k, i + 3 + k) for k, c in enumerate(literal))
        return _Branches((atoms,)), resume
    end = i + 2
    if char in "pPx" and source.startswith("{", end):
        end = source.index("}", end) + 1
    elif char == "x":
        end += 2
    elif char in "pP":
        end += 1
    elif char.isdigit():
        while end < len(source) and end < i + 4 and source[end].isdigit():
            end += 1
    return _Atom(source[i:end], i, end), end


def _literal(char: str) -> str:
    return f"\\{char}" if not char.isalnum() else char


def _quantified(source: str, i: int, node: _Node) -> tuple[_Node, int]:
    if i >= len(source) or source[i] not in "*+?{":
        return node, i
    char = source[i]
    if char == "{":
        close = source.find("}", i)
        low, comma, high = source[i + 1:close].partition(",") if close > 0 else ("", "", "")
        if not low.isdigit() or (high and not high.isdigit()):
            return node, i  # not a repetition: RE2 reads `{` as itself (the next item)
        bounds: tuple[int, int | None] = (int(low), (int(high) if high else None) if comma else int(low))
    else:
        bounds = {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
    end = _quantifier_end(source, i)
    return _Repeat(node, *bounds), end


def _quantifier_end(source: str, i: int) -> int:
    end = source.find("}", i) + 1 if source[i] == "{" else i + 1
    if end <= 0:
        raise _Unsupported(source)
    return end + 1 if source.startswith("?", end) else end
