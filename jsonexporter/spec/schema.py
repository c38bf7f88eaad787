"""The JSON Schema of the spec, and its errors turned into located problems."""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import jsonschema

from jsonexporter.secrets import is_secret_name
from jsonexporter.spec.problems import Path, Problem
from jsonexporter.spec.yamlload import BARE_KEY, Marks


@functools.cache
def schema_text() -> str:
    return resources.files("jsonexporter.spec").joinpath("jsonexporter.schema.json").read_text(encoding="utf-8")


def schema_keys(schema: Any) -> frozenset[str]:
    """Every key a JSON schema names (under `properties`, in `required`): the words of its language."""
    if isinstance(schema, list):
        return frozenset().union(*map(schema_keys, schema))
    if not isinstance(schema, dict):
        return frozenset()
    named = set(schema.get("properties") or ()) | {k for k in schema.get("required") or () if isinstance(k, str)}
    return frozenset(named).union(*map(schema_keys, schema.values()))


@functools.cache
def spec_keys() -> frozenset[str]:
    """The keys of the spec's language (yamlload.load_yaml's `known_keys`)."""
    return schema_keys(json.loads(schema_text()))


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(schema_text())
    return jsonschema.Draft202012Validator(schema)


def _allowed_keys(schema: dict[str, Any]) -> list[str]:
    return sorted(schema.get("properties", {}))


def suggestion(word: str, choices: list[str]) -> str | None:
    """The choice `word` was probably meant to be: the same but for case, a close spelling
    (`valeu`, `statset`), or one starting the other (`information` for `info`)."""
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return lowered[word.lower()]
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1)
    if close:
        return lowered[close[0]]
    prefixed = [c for low, c in lowered.items() if min(len(low), len(word)) >= 3 and (word.lower().startswith(low) or low.startswith(word.lower()))]
    return prefixed[0] if len(prefixed) == 1 else None


@dataclass(frozen=True)
class SchemaReport:
    problems: list[Problem]
    meant: frozenset[Path]  # the keys written with a typo (`valeu` -> path of `value`): checks that need them should not blame their absence too


# The mappings, as the schema names them, whose keys may be a credential pasted by mistake: `basic_auth:
# {username: u, password: x, hunter2: y}`, a token split at a comma in `headers: {Authorization: abc, def}`.
CREDENTIAL_PLACES = frozenset({"secrets", "headers", "params", "body", "login", "http_client_config"})
_CREDENTIAL_PLACE = "not shown: a key where credentials are written may be one"


def key_named(key_path: Path, marks: Marks, at_credentials: bool) -> tuple[Path, str]:
    """How a problem names the key at `key_path`: by its path and its text quoted; or, when it is written
    without a value (yamlload.BARE_KEY) or in or below a place of credentials (`at_credentials`), by the
    path of its mapping and why it is not shown, the problem located at its line:col."""
    why = BARE_KEY if key_path in marks.bare_keys else _CREDENTIAL_PLACE if at_credentials else None
    return (key_path, repr(key_path[-1])) if why is None else (key_path[:-1], f"({why})")


def _at_credentials(error: jsonschema.ValidationError, places: frozenset[str]) -> bool:
    """Whether the error's instance is in or below one of `places`, keys of the schema on the way to it
    (never a name the user chose: those are under `additionalProperties`)."""
    schema_path = list(error.absolute_schema_path)
    return any(part == "properties" and schema_path[i + 1] in places for i, part in enumerate(schema_path[:-1]))


def _in_credential_place(schema: Any, path: Path, places: frozenset[str]) -> bool:
    """Whether the key at `path` of the data is in or below one of `places`, keys of the schema on the way to it
    (as `_at_credentials` says of an error): the schema followed along the path, by its properties, items,
    pattern and additional properties, its `#/definitions/…` references resolved."""
    node: Any = schema
    for part in path[:-1]:
        node = _resolved(schema, node)
        if not isinstance(node, dict):
            return False
        if isinstance(part, int):
            node = node.get("items")
            continue
        properties = node.get("properties") or {}
        if part in properties:
            if part in places:
                return True
            node = properties[part]
            continue
        patterns = [sub for pattern, sub in (node.get("patternProperties") or {}).items() if re.search(pattern, part)]
        node = patterns[0] if patterns else node.get("additionalProperties")
    return False


def _resolved(schema: Any, node: Any) -> Any:
    """The schema a `{"$ref": "#/definitions/name"}` refers to (followed until it is no reference), or `node` itself."""
    for _ in range(16):  # a reference to a reference, at most so many: the schemas here have none
        ref = node.get("$ref") if isinstance(node, dict) else None
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return node
        node = schema
        for step in ref[2:].split("/"):
            node = node.get(step) if isinstance(node, dict) else None
    return node


# why a key written without a value is refused where credentials are written
_BARE_CREDENTIAL = "where credentials are written, it is refused rather than sent as a key; write `KEY: null` for a null"


def _bare_credential_keys(schema: Any, file: str, marks: Marks, places: frozenset[str], errors: set[Path]) -> Iterator[Problem]:
    """A problem at each key written without a value (yamlload.Marks.bare_keys) in or below a place of credentials, unless
    the schema refused it already (a header's or parameter's value must be a string): a JSON `body` mapping takes any value."""
    for key_path in sorted(marks.bare_keys, key=marks.of_key):
        if key_path not in errors and _in_credential_place(schema, key_path, places):
            line, col = marks.of_key(key_path)
            yield Problem(file, line, col, key_path[:-1], f"a key has no value ({BARE_KEY}): {_BARE_CREDENTIAL}")


def _unknown_keys(error: jsonschema.ValidationError, file: str, marks: Marks, places: frozenset[str]) -> Iterator[tuple[Problem, Path | None]]:
    """Each unknown key's problem (its key named by `key_named`), with the path of the key it probably meant."""
    instance = cast(dict[str, Any], error.instance)
    schema = cast(dict[str, Any], error.schema)
    allowed = _allowed_keys(schema)
    patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
    for key in instance:
        if key in allowed or any(p.search(key) for p in patterns):
            continue
        path: Path = (*error.absolute_path, key)
        close = suggestion(key, allowed)
        matching = "".join(f", or a key matching {p.pattern}" for p in patterns)
        hint = f" (did you mean {close!r}?)" if close else f" (allowed: {', '.join(allowed)}{matching})"
        line, col = marks.of_key(path)
        shown, named = key_named(path, marks, _at_credentials(error, places))
        yield Problem(file, line, col, shown, f"unknown key {named}{hint}"), None if close is None else (*error.absolute_path, close)


# places whose values are credentials whatever their keys say: the web config's users (each a bcrypt
# hash, or a password pasted by mistake) and its TLS key (a PEM pasted for the file's name)
_SECRET_PLACES: tuple[Path, ...] = (("basic_auth_users",), ("tls_server_config", "key_file"))


def _shows_secret(path: Path) -> bool:
    if any(path[:len(place)] == place for place in _SECRET_PLACES):
        return True
    keys = [k for k in path if isinstance(k, str)]
    return bool(keys) and is_secret_name(keys[-1]) and not keys[-1].endswith("_file")


def _required_keys(error: jsonschema.ValidationError) -> list[str]:
    """The keys a `required` error says are missing."""
    return re.findall(r"'([^']+)' is a required property", error.message)


def _message(error: jsonschema.ValidationError, at_credentials: bool = False) -> str:
    """The problem the schema found, quoting the refused value unless it may be a secret: one under a secret's key,
    or any in or below a place of credentials (`at_credentials`: a header line written for the headers' mapping,
    `Authorization: Bearer …`, a number where a password's text goes) but null, true, false, a word of an enum close
    to one of its words (`TLS19`); nor the whole file's value (a file of `KEY=value` lines or a PEM key given for the spec)."""
    v = error.validator
    inst = error.instance
    expected_value: Any = error.validator_value
    shown = json.dumps(inst)[:80] if not isinstance(inst, (dict, list)) else type(inst).__name__
    a_word = v == "enum" and isinstance(inst, str) and suggestion(inst, [str(e) for e in expected_value]) is not None
    harmless = inst is None or isinstance(inst, (bool, dict, list)) or a_word  # null, true, false, a mapping's or list's kind
    secret = _shows_secret(tuple(error.absolute_path))
    if secret or (at_credentials and not harmless):
        shown = f"a value (not shown: {'it is a secret' if secret else 'a place where credentials are written'})"
    elif not error.absolute_path and not isinstance(inst, (dict, list)):
        shown = f"{_JSON_KINDS.get(type(inst), 'a value')} (not shown: the whole file's)"
    if v == "type":
        expected = expected_value if isinstance(expected_value, str) else " or ".join(expected_value)
        names = {"object": "a mapping", "array": "a list", "string": "a string", "number": "a number", "integer": "an integer", "boolean": "true or false"}
        wanted = " or ".join(names.get(t, t) for t in expected.split(" or "))
        return f"expected {wanted}, got {shown}"
    if v == "enum":
        close = suggestion(inst, [str(e) for e in expected_value]) if isinstance(inst, str) else None
        hint = f" (did you mean {close!r}?)" if close else ""
        return f"{shown} is not one of {', '.join(map(str, expected_value))}{hint}"
    if v == "required":
        missing = _required_keys(error)
        return f"missing required key {missing[0]!r}" if missing else error.message
    if v == "pattern":
        return f"{shown} does not match {error.validator_value}"
    if v == "minProperties" or v == "minItems":
        return "must not be empty"
    if v == "minLength":
        return "must not be empty"
    if v == "exclusiveMinimum":
        return f"must be greater than {error.validator_value}"
    if v == "minimum" or v == "maximum":
        return f"{shown} is {'less' if v == 'minimum' else 'greater'} than the {v} of {error.validator_value}"
    if v == "maxProperties":
        return f"has too many keys (at most {error.validator_value})"
    if v == "uniqueItems":
        return "the list has non-unique elements"
    # jsonschema's own message quotes the value, whatever it holds: only the rule is named
    return f"does not satisfy the schema's {v!r}"


_JSON_KINDS = {str: "a text", int: "a number", float: "a number", bool: "true or false", type(None): "nothing"}
_KEY_KINDS = {"modules": "module name", "labels": "label name", "parameters": "parameter name", "endpoints": "endpoint name", "values": "value suffix"}


def schema_problems(data: Any, file: str, marks: Marks, validator: jsonschema.Draft202012Validator | None = None,
                    credential_places: frozenset[str] = CREDENTIAL_PLACES) -> list[Problem]:
    """Every violation of the spec's schema (or `validator`'s) by `data`, each at the position of its node;
    no key in or below `credential_places` is quoted (key_named)."""
    return check_schema(data, file, marks, validator, credential_places=credential_places).problems


def check_schema(data: Any, file: str, marks: Marks, validator: jsonschema.Draft202012Validator | None = None,
                 typo_hides_missing: bool = True, credential_places: frozenset[str] = CREDENTIAL_PLACES) -> SchemaReport:
    """`schema_problems`, and the keys the typos among them meant. One typo gives one problem: a
    required key written with a typo (`nmae`) is not also reported missing, unless `typo_hides_missing`
    is false (test files, whose reader runs them: both problems, each at its place)."""
    problems: list[Problem] = []
    meant: set[Path] = set()
    errors = list((validator or _validator()).iter_errors(data))
    for error in errors:
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            for problem, key in _unknown_keys(error, file, marks, credential_places):
                problems.append(problem)
                if key is not None:
                    meant.add(key)
    for error in errors:
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            continue
        path: Path = tuple(error.absolute_path)
        if typo_hides_missing and error.validator == "required" and any((*path, key) in meant for key in _required_keys(error)):
            continue
        if "propertyNames" in error.absolute_schema_path and isinstance(error.instance, str):
            # the error is about one key of the mapping at `path`, which is the instance
            kind = _KEY_KINDS.get(str(path[-1]) if path else "", "name")
            key_path: Path = (*path, error.instance)
            line, col = marks.of_key(key_path)
            shown, named = key_named(key_path, marks, _at_credentials(error, credential_places))
            problems.append(Problem(file, line, col, shown, f"invalid {kind} {named}: must match {error.validator_value}"))
            continue
        line, col = marks.of_value(path)
        problems.append(Problem(file, line, col, path, _message(error, _at_credentials(error, credential_places))))
    # what the schema refused already: a value (a header's must be a string), an unknown key
    refused = {tuple(error.absolute_path) for error in errors}
    refused |= {(*error.absolute_path, key) for error in errors if error.validator == "additionalProperties" and isinstance(error.instance, dict)
                for key in error.instance}
    problems += _bare_credential_keys((validator or _validator()).schema, file, marks, credential_places, refused)
    return SchemaReport(sorted(set(problems), key=lambda p: (p.line, p.column, p.message)), frozenset(meant))
