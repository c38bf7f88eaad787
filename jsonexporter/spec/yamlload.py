"""YAML loading that keeps the line and column of every node.

The document is composed with PyYAML's safe machinery and turned into plain JSON-like data
while the position of each value (and of each mapping key) is recorded by its path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from jsonexporter.spec.problems import Path, Problem

MAX_NODES = 200_000  # aliases can multiply a small file; a spec never needs this many nodes
MAX_DEPTH = 64


@dataclass
class Marks:
    """Positions (1-based line, column) by YAML path, for values and for mapping keys."""

    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)
    quoted: set[Path] = field(default_factory=set)

    def of_value(self, path: Path) -> tuple[int, int]:
        """The position of the value at `path`, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            found = self.values.get(path[:end])
            if found is not None:
                return found
        return (1, 1)

    def of_key(self, path: Path) -> tuple[int, int]:
        return self.keys.get(path) or self.of_value(path)


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.marks = Marks()
        self.problems: list[Problem] = []
        self.nodes = 0
        self._constructor = SafeConstructor()

    def problem(self, node: Node, path: Path, message: str) -> None:
        mark = node.start_mark
        self.problems.append(Problem(self.file, mark.line + 1, mark.column + 1, path, message))

    def build(self, node: Node, path: Path, depth: int = 0) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES or depth > MAX_DEPTH:
            raise _TooLarge(node, path)
        self.marks.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        if node.style in ("'", '"'):
            self.marks.quoted.add(path)
        value = self._constructor.construct_object(node)
        if isinstance(value, (bytes, bytearray)) or not isinstance(value, (str, int, float, bool, type(None))):
            # dates, binary and other YAML-only types have no JSON equivalent: keep their text
            return node.value
        return value

    def _mapping(self, node: MappingNode, path: Path, depth: int) -> dict[str, Any]:
        # expands `<<` merge keys the way PyYAML's constructor does
        self._constructor.flatten_mapping(node)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.problem(key_node, path, "mapping keys must be plain scalars")
                continue
            key = _key_text(self._constructor.construct_object(key_node))
            child = (*path, key)
            if key in result:
                self.problem(key_node, child, f"duplicate key {key!r}")
                continue
            self.marks.keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            result[key] = self.build(value_node, child, depth + 1)
        return result


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


def load_yaml(text: str, file: str) -> tuple[Any, Marks, list[Problem]]:
    """Parse `text`; return the data, the marks and the problems (syntax errors included)."""
    builder = _Builder(file)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(filter(None, [exc.context, exc.problem])) or "invalid YAML"
        return None, builder.marks, [Problem(file, line, col, (), f"invalid YAML: {message}")]
    except yaml.YAMLError as exc:
        return None, builder.marks, [Problem(file, 1, 1, (), f"invalid YAML: {exc}")]
    if node is None:
        return None, builder.marks, [Problem(file, 1, 1, (), "the spec is empty")]
    try:
        data = builder.build(node, ())
    except _TooLarge as exc:
        builder.problem(exc.node, exc.path, f"document too large or too deep (over {MAX_NODES} nodes or {MAX_DEPTH} levels)")
        return None, builder.marks, builder.problems
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, builder.marks, [Problem(file, line, col, (), f"invalid YAML: {exc.problem}")]
    return data, builder.marks, builder.problems
