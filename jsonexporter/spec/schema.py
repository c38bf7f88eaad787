"""The JSON Schema of the spec, and its errors turned into located problems."""

from __future__ import annotations

import difflib
import functools
import json
import re
from importlib import resources
from typing import Any, cast

import jsonschema

from jsonexporter.secrets import is_secret_name
from jsonexporter.spec.problems import Path, Problem
from jsonexporter.spec.yamlload import Marks


@functools.cache
def schema_text() -> str:
    return resources.files("jsonexporter.spec").joinpath("jsonexporter.schema.json").read_text(encoding="utf-8")


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(schema_text())
    return jsonschema.Draft202012Validator(schema)


def _allowed_keys(schema: dict[str, Any]) -> list[str]:
    return sorted(schema.get("properties", {}))


def _unknown_key_problems(error: jsonschema.ValidationError, file: str, marks: Marks) -> list[Problem]:
    instance = cast(dict[str, Any], error.instance)
    schema = cast(dict[str, Any], error.schema)
    allowed = _allowed_keys(schema)
    patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
    problems = []
    for key in instance:
        if key in allowed or any(p.search(key) for p in patterns):
            continue
        path: Path = (*error.absolute_path, key)
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(allowed)})"
        line, col = marks.of_key(path)
        problems.append(Problem(file, line, col, path, f"unknown key {key!r}{hint}"))
    return problems


def _shows_secret(path: Path) -> bool:
    keys = [k for k in path if isinstance(k, str)]
    return bool(keys) and is_secret_name(keys[-1]) and not keys[-1].endswith("_file")


def _message(error: jsonschema.ValidationError) -> str:
    v = error.validator
    inst = error.instance
    expected_value: Any = error.validator_value
    shown = json.dumps(inst)[:80] if not isinstance(inst, (dict, list)) else type(inst).__name__
    if _shows_secret(tuple(error.absolute_path)):
        shown = "a value (not shown: it is a secret)"
    if v == "type":
        expected = expected_value if isinstance(expected_value, str) else " or ".join(expected_value)
        names = {"object": "a mapping", "array": "a list", "string": "a string", "number": "a number", "integer": "an integer", "boolean": "true or false"}
        wanted = " or ".join(names.get(t, t) for t in expected.split(" or "))
        return f"expected {wanted}, got {shown}"
    if v == "enum":
        return f"{shown} is not one of {', '.join(map(str, expected_value))}"
    if v == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        return f"missing required key {missing[0]!r}" if missing else error.message
    if v == "pattern":
        return f"{shown} does not match {error.validator_value}"
    if v == "minProperties" or v == "minItems":
        return "must not be empty"
    if v == "minLength":
        return "must not be empty"
    if v == "exclusiveMinimum":
        return f"must be greater than {error.validator_value}"
    return error.message


_KEY_KINDS = {"modules": "module name", "labels": "label name", "parameters": "parameter name", "endpoints": "endpoint name", "values": "value suffix"}


def schema_problems(data: Any, file: str, marks: Marks, validator: jsonschema.Draft202012Validator | None = None) -> list[Problem]:
    """Every violation of the spec's schema (or `validator`'s) by `data`, each at the position of its node."""
    problems: list[Problem] = []
    for error in (validator or _validator()).iter_errors(data):
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            problems.extend(_unknown_key_problems(error, file, marks))
            continue
        path: Path = tuple(error.absolute_path)
        if "propertyNames" in error.absolute_schema_path and isinstance(error.instance, str):
            # the error is about one key of the mapping at `path`, which is the instance
            kind = _KEY_KINDS.get(str(path[-1]) if path else "", "name")
            key_path: Path = (*path, error.instance)
            line, col = marks.of_key(key_path)
            problems.append(Problem(file, line, col, key_path, f"invalid {kind} {error.instance!r}: must match {error.validator_value}"))
            continue
        line, col = marks.of_value(path)
        problems.append(Problem(file, line, col, path, _message(error)))
    return sorted(set(problems), key=lambda p: (p.line, p.column, p.message))
