"""YAML loading that keeps the line and column of every node.

The document is composed with PyYAML's safe machinery and turned into plain JSON-like data
while the position of each value (and of each mapping key) is recorded by its path. Merge keys
(`<<`) follow PyYAML's constructor; a tag is never constructed: one the loader does not know is a
problem at its place, and the node is read as if it had no tag, so that the rest is still checked.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from jsonexporter.secrets import Redactor
from jsonexporter.spec.problems import Path, Problem
from jsonexporter.spec.yamlsyntax import syntax_error, without_source

MAX_NODES = 200_000  # aliases can multiply a small file; a spec never needs this many nodes
MAX_DEPTH = 64
_TOO_LARGE = f"document too large or too deep (over {MAX_NODES} nodes or {MAX_DEPTH} levels)"
_SPACE = " \t\r\n\x85\u2028\u2029"
_ESCAPE_DIGITS = {"x": 2, "u": 4, "U": 8}
_YAML_TAG = "tag:yaml.org,2002:"
_MERGE = _YAML_TAG + "merge"
# the tags whose values JSON has (dates and binary are kept as their text); `!!value` is a plain `=`
_SCALAR_TAGS = frozenset(_YAML_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp", "binary", "value"))
_COLLECTION_TAGS: dict[type[Node], str] = {MappingNode: _YAML_TAG + "map", SequenceNode: _YAML_TAG + "seq"}


@dataclass(frozen=True, slots=True)
class _Scalar:
    """A string scalar as written: enough to find a character of its value in the source."""

    style: str | None
    raw: str  # the source text of the node, quotes and block header included
    value: str
    line: int
    column: int

    def position(self, offset: int) -> tuple[int, int] | None:
        """The (line, column) in the source of the value's character at `offset`."""
        index = self._raw_index(min(offset, len(self.value.rstrip(_SPACE))))
        if index is None:
            return None
        line, column = self.line, self.column
        for i, ch in enumerate(self.raw[:index]):
            if ch in "\n\x85\u2028\u2029" or (ch == "\r" and self.raw[i + 1 : i + 2] != "\n"):
                line, column = line + 1, 1
            else:
                column += 1
        return line, column

    def _raw_index(self, offset: int) -> int | None:
        # walk the value and the source together: quotes, block headers, indentation,
        # escapes and folded line breaks are what separate one from the other
        raw = self.raw
        i = 1 if self.style in ("'", '"') else raw.find("\n") + 1 if self.style in ("|", ">") else 0
        found = 0
        for k, ch in enumerate(self.value[: offset + 1]):
            if ch not in _SPACE:
                while i < len(raw) and raw[i] in _SPACE:
                    i += 1
            while self.style == '"' and raw[i : i + 1] == "\\" and raw[i + 1 : i + 2] in ("\n", "\r"):  # an escaped line break
                i += 2
                while i < len(raw) and raw[i] in _SPACE:
                    i += 1
            if self.style == '"' and raw[i : i + 1] == "\\":
                found = i
                i += 2 + _ESCAPE_DIGITS.get(raw[i + 1 : i + 2], 0)
            elif self.style == "'" and raw[i : i + 2] == "''":
                found, i = i, i + 2
            elif ch in _SPACE:
                found = next((j for j in range(i, len(raw)) if raw[j] in _SPACE), i)
                i = found + 1
            else:
                found = raw.find(ch, i)
                if found < 0:
                    return None
                i = found + 1
            if k == offset:
                return found
        return i  # just past the last character: where an incomplete expression ends


@dataclass
class Marks:
    """Positions (1-based line, column) by YAML path, for values and for mapping keys."""

    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)
    scalars: dict[Path, _Scalar] = field(default_factory=dict)
    # the keys written without a value (`{S3cret}`, `? S3cret`), YAML's reading of a value pasted in braces, a
    # credential as likely as a name: no problem quotes one (`concealed`); but the keys the reader knows
    bare_keys: set[Path] = field(default_factory=set)

    def of_value(self, path: Path) -> tuple[int, int]:
        """The position of the value at `path`, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            found = self.values.get(path[:end])
            if found is not None:
                return found
        return (1, 1)

    def of_key(self, path: Path) -> tuple[int, int]:
        return self.keys.get(path) or self.of_value(path)

    def concealed(self, problems: list[Problem], file: str) -> list[Problem]:
        """The problems, those of `file` (whose marks these are) as they may be shown: a key written without a
        value is a value, hidden from their messages as the Redactor hides a secret, and their paths stop
        before it; such a key is only located (a problem keeps its line:col)."""
        if not self.bare_keys:
            return problems
        redact = Redactor(str(path[-1]) for path in self.bare_keys)
        return [dataclasses.replace(p, path=self._shown_path(p.path), message=redact(p.message)) if p.file == file else p for p in problems]

    def _shown_path(self, path: Path) -> Path:
        return next((path[:end - 1] for end in range(1, len(path) + 1) if path[:end] in self.bare_keys), path)

    def inside(self, path: Path, offset: int) -> tuple[int, int]:
        """The position of the character at `offset` in the string value at `path`."""
        scalar = self.scalars.get(path)
        found = scalar.position(offset) if scalar is not None else None
        return found or self.of_value(path)


# why a key written without a value is not quoted
BARE_KEY = "not shown: a key written without a value may be a value in braces (`{S3cret}` is a key to YAML)"
_SURROGATE = re.compile("[\ud800-\udfff]")
_COMMENT = re.compile(r"#[^\n\r\x85\u2028\u2029]*")


class _Builder:
    def __init__(self, file: str, text: str, known_keys: Collection[str] = ()) -> None:
        self.file = file
        self.text = text
        self.known_keys = known_keys
        self.marks = Marks()
        self.problems: list[Problem] = []
        self._reported: set[tuple[int, str]] = set()
        self.nodes = 0
        self._constructor = SafeConstructor()
        self._resolver = yaml.resolver.Resolver()

    def problem(self, node: Node, path: Path, message: str, at: tuple[int, int] | None = None) -> None:
        """A problem at the node, or at `at` (line, column) inside it."""
        mark = node.start_mark
        if (mark.index, message) in self._reported:
            return  # a node of an anchor, read again for each alias or merge of it: one problem where it is written
        self._reported.add((mark.index, message))
        line, column = at or (mark.line + 1, mark.column + 1)
        self.problems.append(Problem(self.file, line, column, path, message))

    def build(self, node: Node, path: Path, depth: int = 0) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES or depth > MAX_DEPTH:
            raise _TooLarge(node, path)
        self.marks.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, MappingNode):
            self._known_tag(node, path)
            return self._mapping(node, path, depth)
        if isinstance(node, SequenceNode):
            self._known_tag(node, path)
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        value = self._scalar(node, path)
        if isinstance(value, str) and not value.isascii() and _SURROGATE.search(value):
            value = self._without_surrogates(node, path, value)
        if isinstance(value, str):
            start, end = node.start_mark, node.end_mark
            raw = self.text[start.index : end.index]
            self.marks.scalars[path] = _Scalar(node.style, raw, value, start.line + 1, start.column + 1)
        if isinstance(value, (bytes, bytearray)) or not isinstance(value, (str, int, float, bool, type(None))):
            # dates, binary and other YAML-only types have no JSON equivalent: keep their text
            return node.value
        return value

    def _without_surrogates(self, node: ScalarNode, path: Path, value: str) -> str:
        """A pair of surrogates written as two escapes (`\\ud83d\\ude00`, as JSON spells it) is the one character
        it spells; a lone one is no character, cannot be written as UTF-8 (in an answer, a request, a log
        line) and is a problem."""
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")
        if _SURROGATE.search(value) is not None:
            # at its escape, not naming it: the YAML layer quotes no source text (yamlsyntax)
            start = node.start_mark
            raw = self.text[start.index : node.end_mark.index]
            index = _lone_escape(raw)
            at = None if index is None else _line_col(raw, index, (start.line + 1, start.column + 1))
            self.problem(node, path, "a lone surrogate escape (half of a pair, or an escape of none): it is no character "
                                     "and cannot be written as UTF-8; write the character itself, or both escapes of its pair", at)
        return value

    def _known_tag(self, node: Node, path: Path) -> bool:
        """False, with a problem at the tag, when the loader does not know the node's tag."""
        known = node.tag in _SCALAR_TAGS if isinstance(node, ScalarNode) else node.tag == _COLLECTION_TAGS.get(type(node))
        if not known:
            # the tag is not named: a password written without quotes that starts with `!` is all tag (yamlsyntax)
            self.problem(node, path, "unknown tag (not shown: it may be a value that starts with `!`, written without quotes): "
                                     "nothing is made from tags; remove it, or put the value in quotes "
                                     "(the value is checked as if the tag were not there, and the file is refused)")
        return known

    def _scalar(self, node: ScalarNode, path: Path) -> Any:
        if not self._known_tag(node, path):
            plain = node.style is None
            tag: str = self._resolver.resolve(ScalarNode, node.value, (True, False)) if plain else _YAML_TAG + "str"  # type: ignore[no-untyped-call]
            node = ScalarNode(tag, node.value, node.start_mark, node.end_mark, node.style)
        # YAML 1.2 booleans only: a bare on/off/yes/no is the string it looks like (value_map keys, states)
        if node.tag == "tag:yaml.org,2002:bool" and node.style is None and node.value.lower() not in ("true", "false"):
            return node.value
        if node.tag == _YAML_TAG + "value":
            return node.value
        try:
            return self._constructor.construct_object(node)
        except (yaml.constructor.ConstructorError, ValueError, LookupError, AttributeError, TypeError):
            # an explicit tag the text does not fit (`!!int abc`): PyYAML's constructors raise anything
            self.problem(node, path, f"the value (not shown) is not a valid !!{node.tag.removeprefix(_YAML_TAG)}")
            return node.value

    def _mapping(self, node: MappingNode, path: Path, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, key_node, value_node in self._pairs(node, path, depth):
            child = (*path, key)
            at = self.marks.keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            result[key] = self.build(value_node, child, depth + 1)
            if self._bare(key_node, value_node):
                self.marks.values[child] = at  # its value's problems at the key: the value is not written
                if key not in self.known_keys:
                    self.marks.bare_keys.add(child)
        return result

    def _bare(self, key_node: Node, value_node: Node) -> bool:
        """Whether the key is written without a value: no `:` between it and the empty value YAML gives it
        (comments aside)."""
        if not (isinstance(value_node, ScalarNode) and value_node.value == "" and value_node.style is None
                and value_node.start_mark.index == value_node.end_mark.index):
            return False
        between = self.text[key_node.end_mark.index : value_node.start_mark.index]
        return ":" not in _COMMENT.sub("", between)

    def _pairs(self, node: MappingNode, path: Path, depth: int) -> list[tuple[str, Node, Node]]:
        """The keys of a mapping with their nodes, its merge keys (`<<`) expanded as PyYAML's
        constructor does: a key written in the mapping wins over a merged one, and of the mappings
        merged (`<<: [*a, *b]`) the first that has a key gives it. A merged key keeps the nodes
        where it was written, in the anchor, and so its position. A key written twice is a problem."""
        if depth > MAX_DEPTH:
            raise _TooLarge(node, path)
        written: dict[str, tuple[Node, Node]] = {}
        sources: list[MappingNode] = []
        merge: Node | None = None
        for key_node, value_node in node.value:
            self.nodes += 1
            if self.nodes > MAX_NODES:
                raise _TooLarge(key_node, path)
            if key_node.tag == _MERGE and merge is None:
                merge = key_node
                sources = self._merged(value_node, path)
                continue
            if not isinstance(key_node, ScalarNode):
                self.problem(key_node, path, "mapping keys must be plain scalars")
                continue
            key = "<<" if key_node.tag == _MERGE else _key_text(self._scalar(key_node, path))
            first = merge if key == "<<" else written[key][0] if key in written else None
            if first is not None:
                line, col = first.start_mark.line + 1, first.start_mark.column + 1
                hint = ": merge several mappings with one `<<: [*a, *b]`" if key == "<<" else ""
                if key not in self.known_keys and self._bare(key_node, value_node):
                    self.problem(key_node, path, f"duplicate key ({BARE_KEY}) (first written at {line}:{col})")
                else:
                    self.problem(key_node, (*path, key), f"duplicate key {key!r} (first written at {line}:{col}){hint}")
                continue
            written[key] = (key_node, value_node)
        merged: dict[str, tuple[Node, Node]] = {}
        for source in sources:
            for key, key_node, value_node in self._pairs(source, path, depth + 1):
                merged.setdefault(key, (key_node, value_node))
        ordered = {**merged, **{k: v for k, v in written.items() if k not in merged}}
        return [(k, *(written.get(k) or v)) for k, v in ordered.items()]

    def _merged(self, value: Node, path: Path) -> list[MappingNode]:
        """The mappings a `<<` merges: one mapping, or a list of them."""
        items = value.value if isinstance(value, SequenceNode) else [value]
        mappings = [item for item in items if isinstance(item, MappingNode)]
        if len(mappings) < len(items):
            wrong = next(item for item in items if not isinstance(item, MappingNode))
            self.problem(wrong, (*path, "<<"), "`<<` merges a mapping or a list of mappings (`<<: *base` or `<<: [*a, *b]`)")
        return mappings


def _line_col(text: str, index: int, start: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """The (line, column) of `text[index]`, `text` starting at `start`."""
    newlines = text.count("\n", 0, index)
    if newlines == 0:
        return start[0], start[1] + index
    return start[0] + newlines, index - (text.rfind("\n", 0, index) + 1) + 1


_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|.)", re.DOTALL)


def _lone_escape(raw: str) -> int | None:
    """Where in a double-quoted scalar's source (`raw`) its first escape of a lone surrogate starts:
    a low half, or a high half that the next escape, right after it, does not complete."""
    high: int | None = None  # where a high half's escape starts, while its low half may follow
    end = -1
    for match in _ESCAPE.finditer(raw):
        digits = match[1] or match[2]
        code = int(digits, 16) if digits else -1
        if high is not None:
            if 0xDC00 <= code <= 0xDFFF and match.start() == end:
                high, end = None, match.end()
                continue
            return high
        if 0xDC00 <= code <= 0xDFFF:
            return match.start()
        high = match.start() if 0xD800 <= code <= 0xDBFF else None
        end = match.end()
    return high


def _unacceptable(character: int | bytes) -> str:
    """What kind of character YAML does not accept, not which: it may be one of a credential pasted as it is."""
    code = character if isinstance(character, int) else -1
    kind = ("a surrogate" if 0xD800 <= code <= 0xDFFF else "a noncharacter" if code in (0xFFFE, 0xFFFF)
            else "a control character other than tab, line feed and carriage return" if code >= 0 else "not UTF-8")
    return f"unacceptable character ({kind}): write it as an escape in a double-quoted string (\\x.., \\u....)"


def _key_text(key: object) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    return str(key)


class _TooLarge(Exception):
    def __init__(self, node: Node, path: Path) -> None:
        self.node = node
        self.path = path


class _TooDeep(Exception):
    def __init__(self, mark: yaml.Mark) -> None:
        self.mark = mark


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's composer recurses once or twice per level of nesting: a document deeper than MAX_DEPTH
    is refused where its first too deep node starts, before the stack runs out."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH + 1:  # the root is depth 0 in _Builder.build
                raise _TooDeep(self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def load_yaml(text: str, file: str, known_keys: Collection[str] = (), document: str = "the spec") -> tuple[Any, Marks, list[Problem]]:
    """Parse `text`; return the data, the marks and the problems (syntax errors included). `known_keys`: the
    keys of the reader's schema, shown even when written without a value (a word of ours is no credential);
    `document`: what the reader reads, as a problem names it (`the spec is empty`)."""
    builder = _Builder(file, text, known_keys)
    try:
        node = yaml.compose(text, Loader=_BoundedLoader)
    except _TooDeep as exc:
        return None, builder.marks, [Problem(file, exc.mark.line + 1, exc.mark.column + 1, (), _TOO_LARGE)]
    except yaml.MarkedYAMLError as exc:
        line, col, message = syntax_error(exc, text)
        return None, builder.marks, [Problem(file, line, col, (), f"invalid YAML: {message}")]
    except yaml.reader.ReaderError as exc:
        line, col = _line_col(text, exc.position)
        return None, builder.marks, [Problem(file, line, col, (), f"invalid YAML: {_unacceptable(exc.character)}")]
    except yaml.YAMLError as exc:
        return None, builder.marks, [Problem(file, 1, 1, (), "invalid YAML: " + without_source(" ".join(str(exc).split())))]
    except RecursionError:
        return None, builder.marks, [Problem(file, 1, 1, (), f"document too deep (over {MAX_DEPTH} levels)")]
    if node is None:
        return None, builder.marks, [Problem(file, 1, 1, (), f"{document} is empty")]
    try:
        data = builder.build(node, ())
    except _TooLarge as exc:
        builder.problem(exc.node, exc.path, _TOO_LARGE)
        return None, builder.marks, builder.problems
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, builder.marks, [Problem(file, line, col, (), f"invalid YAML: {without_source(exc.problem or '')}")]
    return data, builder.marks, builder.problems
