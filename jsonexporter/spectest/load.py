"""Test files: read with the spec loader's machinery (marks, schema, did-you-mean), checked against the
spec they test, and compiled into frozen cases whose every part knows where it was written."""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import jsonschema

from jsonexporter.probe import resolve_values
from jsonexporter.spec import Spec, SpecFileError, load_texts, read_spec_files
from jsonexporter.spec.model import Module
from jsonexporter.spec.problems import Path, Problem
from jsonexporter.spec.schema import check_schema, schema_keys, suggestion
from jsonexporter.spec.sources import read_bounded_bytes
from jsonexporter.spec.yamlload import Marks, load_yaml
from jsonexporter.spectest.series import Series, SeriesSyntaxError, parse_series
from jsonexporter.upstream import InvalidRequest

SCHEMA_FILE = "jsonexporter-test.schema.json"
DEFAULT_MODULE = "default"
OFFLINE_TARGET = "offline"  # the target of `probe --input` without --target
ERRORS = ("timeout", "connection_error")  # answers that never came: the outcome a live probe gives them
BODIES = ("json", "file", "body")


@functools.cache
def schema_text() -> str:
    return resources.files("jsonexporter.spectest").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_text()))


@dataclass(frozen=True, slots=True)
class Mark:
    """Where something was written in a test file, to locate what is said about it."""

    file: str
    line: int
    column: int
    path: Path

    def says(self, message: str) -> Problem:
        return Problem(self.file, self.line, self.column, self.path, message)


@dataclass(frozen=True, slots=True)
class Answer:
    """One endpoint's answer: a body with its status, parsed at run time as a live answer is, or no
    answer at all (`error`)."""

    status: int = 200
    body: bytes = b""
    error: str | None = None  # one of ERRORS
    too_large: bool = False  # a file larger than the endpoint's max_response_bytes, left unread as a live probe leaves it


@dataclass(frozen=True, slots=True)
class Expected:
    series: Series
    value: float
    at: Mark  # of its labels
    value_at: Mark


@dataclass(frozen=True, slots=True)
class Case:
    """One test: a probe of `module` on `answers`, and what it must give."""

    name: str
    at: Mark
    module: Module
    target: str
    params: Mapping[str, str]
    answers: Mapping[str, Answer]
    answer_at: Mapping[str, Mark]
    expected: tuple[Expected, ...]
    exact: bool
    exact_at: Mark


@dataclass(frozen=True, slots=True)
class Suite:
    """A test file, compiled."""

    file: str
    spec: Spec
    cases: tuple[Case, ...]


@dataclass
class Loaded:
    suite: Suite | None
    problems: list[Problem] = field(default_factory=list)
    unreadable: bool = False  # a file it names (the spec, an answer) could not be read


SpecCache = dict[str, tuple[Spec | None, list[Problem], str | None]]  # path -> spec, problems, why it is unreadable


def load_spec_cached(path: str, cache: SpecCache) -> tuple[Spec | None, list[Problem], str | None]:
    if path not in cache:
        try:  # a file, a directory or a glob, as --config.file takes
            spec, problems = load_texts(read_spec_files(path), path)
            cache[path] = spec, problems, None
        except SpecFileError as exc:
            cache[path] = None, [], str(exc)
    return cache[path]


def relative_to(file: str, path: str) -> str:
    """`path` as written in the test file `file`: relative to the file's directory."""
    return os.path.normpath(os.path.join(os.path.dirname(file), path))


class _Checker:
    def __init__(self, file: str, marks: Marks, loaded: Loaded) -> None:
        self.file = file
        self.marks = marks
        self.loaded = loaded

    def at(self, path: Path, key: bool = False) -> Mark:
        line, column = self.marks.of_key(path) if key else self.marks.of_value(path)
        return Mark(self.file, line, column, path)

    def add(self, path: Path, message: str, key: bool = False) -> None:
        self.loaded.problems.append(self.at(path, key).says(message))

    def inside(self, path: Path, offset: int, message: str) -> None:
        line, column = self.marks.inside(path, offset)
        self.loaded.problems.append(Problem(self.file, line, column, path, message))


def _choices(word: str, names: list[str], kind: str) -> str:
    close = suggestion(word, names)
    return f" (did you mean {close!r}?)" if close else f" (the {kind} has {', '.join(sorted(names)) or 'none'})"


def load_suite(text: str, file: str, specs: SpecCache | None = None) -> Loaded:
    """Compile a test file; `suite` is None when any error was found, and `problems` holds them all."""
    loaded = Loaded(None)
    data, marks, problems = load_yaml(text, file, schema_keys(_validator().schema), "the test file")
    loaded.problems += problems
    if data is None:
        return loaded
    loaded.problems += [_worded(p) for p in check_schema(data, file, marks, _validator(), typo_hides_missing=False).problems]
    if not isinstance(data, dict):
        return loaded
    c = _Checker(file, marks, loaded)
    spec = _spec(c, data.get("spec"), {} if specs is None else specs)
    cases: list[Case] = []
    if spec is not None and isinstance(data.get("tests"), list):
        for i, raw in enumerate(data["tests"]):
            if isinstance(raw, dict):
                case = _case(c, ("tests", i), raw, spec)
                if case is not None:
                    cases.append(case)
    loaded.problems = sorted(set(marks.concealed(loaded.problems, file)), key=lambda p: (p.file != file, p.file, p.line, p.column, p.message))
    if spec is not None and not any(p.severity == "error" for p in loaded.problems):
        loaded.suite = Suite(file, spec, tuple(cases))
    return loaded


def _worded(problem: Problem) -> Problem:
    """The schema's problem, said for a reader where the schema's words are a regular expression."""
    if problem.path[-1:] == ("value",) and " does not match " in problem.message:
        shown = problem.message.partition(" does not match ")[0]
        return dataclasses.replace(problem, message=f"{shown} is not a number: write a number, or NaN, +Inf or -Inf")
    return problem


def _spec(c: _Checker, raw: object, specs: SpecCache) -> Spec | None:
    if not isinstance(raw, str) or not raw:
        return None
    path = relative_to(c.file, raw)
    spec, problems, unreadable = load_spec_cached(path, specs)
    if unreadable is not None:
        c.add(("spec",), f"cannot use the spec: {unreadable}")  # the message names the file
        c.loaded.unreadable = True
    elif spec is None:
        errors = [p for p in problems if p.severity == "error"]
        c.loaded.problems += errors
        c.add(("spec",), f"the spec {path} is invalid: {len(errors)} error(s), listed with its name")
    return spec


def _read_answer(status: int, path: str, limit: int) -> Answer:
    """The answer in the file at `path`, read as a spec file is (bounded in time: a FIFO nobody writes is
    unreadable, OSError) and never beyond the `limit` the endpoint takes."""
    try:
        return Answer(status, read_bounded_bytes(path, limit))
    except OSError as exc:
        if exc.errno != errno.EFBIG:
            raise
        return Answer(status, too_large=True)


def _case(c: _Checker, path: Path, raw: dict[str, Any], spec: Spec) -> Case | None:
    errors = len(c.loaded.problems)
    module_name = raw.get("module", DEFAULT_MODULE)
    module = spec.modules.get(module_name) if isinstance(module_name, str) else None
    if module is None and isinstance(module_name, str):
        c.add((*path, "module") if "module" in raw else path, f"unknown module {module_name!r}{_choices(module_name, list(spec.modules), 'spec')}")
    target = raw.get("target", OFFLINE_TARGET)
    params = _params(raw.get("params"))
    if module is not None and isinstance(target, str) and params is not None:
        try:
            resolve_values(module, target, params, offline=True)
        except InvalidRequest as exc:
            c.add((*path, "params") if "params" in raw else path, str(exc))
    answers, answer_at = _answers(c, (*path, "answers"), raw.get("answers"), module)
    expected = _samples(c, (*path, "exp_samples"), raw.get("exp_samples"))
    name, exact = raw.get("name"), raw.get("exact", False)
    if len(c.loaded.problems) > errors or module is None or not isinstance(name, str) or not isinstance(target, str) or params is None:
        return None
    if answers is None or expected is None or not isinstance(exact, bool):
        return None
    return Case(name, c.at(path), module, target, params, answers, answer_at, expected, exact, c.at((*path, "exact"), key=True))


def _params(raw: object) -> dict[str, str] | None:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in raw.values()):
        return None
    return {k: v if isinstance(v, str) else str(v) for k, v in raw.items()}


def _answers(c: _Checker, path: Path, raw: object, module: Module | None) -> tuple[dict[str, Answer] | None, dict[str, Mark]]:
    """The answers by endpoint; their endpoints are checked against `module` when it is known."""
    if not isinstance(raw, dict):
        return None, {}
    answers: dict[str, Answer] = {}
    marks: dict[str, Mark] = {}
    endpoints = list(module.endpoints) if module is not None else []
    meant: set[str] = set()  # endpoints written with a typo: not reported missing too
    for name, value in raw.items():
        if module is not None and name not in module.endpoints:
            close = suggestion(name, endpoints)
            meant.add(close or "")
            c.add((*path, name), f"module {module.name} has no endpoint {name!r}{_choices(name, endpoints, 'module')}", key=True)
            continue
        marks[name] = c.at((*path, name), key=True)
        if isinstance(value, dict):
            limit = module.endpoints[name].max_response_bytes if module is not None else 0
            answer = _answer(c, (*path, name), value, limit)
            if answer is not None:
                answers[name] = answer
    missing = [name for name in endpoints if name not in raw and name not in meant]
    if module is not None and missing:
        c.add(path, f"no answer for endpoint(s) {', '.join(missing)}: a test gives one for each endpoint of module {module.name}")
    complete = module is not None and len(answers) == len(raw) == len(endpoints)
    return (answers if complete else None), marks


def _answer(c: _Checker, path: Path, raw: dict[str, Any], limit: int) -> Answer | None:
    bodies = [key for key in BODIES if key in raw]
    if len(bodies) > 1:
        c.add((*path, bodies[1]), f"{' and '.join(bodies)} are alternatives: an answer has one body", key=True)
        return None
    error = raw.get("error")
    if error is not None:
        others = [key for key in raw if key != "error"]
        if others:
            c.add((*path, others[0]), f"an answer with error: {error} never came: it has no {others[0]}", key=True)
            return None
        return Answer(error=error) if error in ERRORS else None
    status = raw.get("status", 200)
    if not isinstance(status, int) or isinstance(status, bool):
        return None
    if "json" in raw:
        try:  # NaN and Infinity as Python's json module writes and reads them, as our parser does
            return Answer(status, json.dumps(raw["json"], ensure_ascii=False, allow_nan=True).encode())
        except (TypeError, ValueError):
            return None
    if isinstance(raw.get("body"), str):
        return Answer(status, raw["body"].encode())
    file = raw.get("file")
    if isinstance(file, str) and file:
        where = relative_to(c.file, file)
        try:
            return _read_answer(status, where, limit)
        except OSError as exc:
            c.add((*path, "file"), f"cannot read {where}: {exc.strerror or exc}")
            c.loaded.unreadable = True
            return None
    return Answer(status) if not bodies else None


def _samples(c: _Checker, path: Path, raw: object) -> tuple[Expected, ...] | None:
    if not isinstance(raw, list):
        return None
    expected: list[Expected] = []
    seen: dict[Series, int] = {}
    ok = True
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("labels"), str):
            ok = False
            continue
        where: Path = (*path, i, "labels")
        try:
            series = parse_series(item["labels"])
        except SeriesSyntaxError as exc:
            c.inside(where, exc.offset, f"invalid series: {exc}")
            ok = False
            continue
        if series in seen:
            c.add(where, f"{series} is expected already, at exp_samples[{seen[series]}]")
            ok = False
            continue
        seen[series] = i
        value = _value(c, (*path, i, "value"), item.get("value"))
        if value is None:
            ok = False
            continue
        expected.append(Expected(series, value, c.at(where), c.at((*path, i, "value"))))
    return tuple(expected) if ok else None


def _value(c: _Checker, path: Path, raw: object) -> float | None:
    """A number, or a string the schema accepted (NaN, +Inf, 1e+06); an integer beyond a float is a problem at `path`
    (no float64 is it; an infinite value is written as one)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        try:
            return float(raw)
        except OverflowError:
            c.add(path, "an integer beyond a float64 (1.8e308): write +Inf or -Inf for an infinite value")
            return None
    if isinstance(raw, str):
        try:
            return float(raw)
        except ValueError:
            return None
    return None
