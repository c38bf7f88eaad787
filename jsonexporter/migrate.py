"""`jsonexporter migrate`: a json_exporter configuration translated into a spec.

Every key of json_exporter's configuration (modules, metrics, requests) becomes what gives the same
series here; its Kubernetes JSONPath becomes JMESPath (jsonexporter/jsonpath.py). What means something
else here is listed in a comment at the head of the spec; what cannot be translated is reported at its
`file:line:col` and left out, and the rest is still written. The spec written is then checked with the
loader `check` uses, so that what it refuses is reported at the json_exporter key it came from.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml

from jsonexporter.jsonpath import GO_FALSE, GO_TRUE, Place, Untranslatable, grouped, translate
from jsonexporter.secrets import spec_secrets
from jsonexporter.spec import load_text, read_spec_text
from jsonexporter.spec.load import redacted
from jsonexporter.spec.problems import Path, Problem, Severity, format_path
from jsonexporter.spec.schema import key_named, schema_text, spec_keys
from jsonexporter.spec.yamlload import Marks, load_yaml

EXIT_OK, EXIT_UNTRANSLATED, EXIT_USAGE = 0, 1, 2

_MODULE_KEYS = frozenset({"headers", "metrics", "http_client_config", "body", "valid_status_codes"})
_METRIC_KEYS = frozenset({"name", "path", "help", "type", "valuetype", "labels", "values", "epochtimestamp", "valueconverter", "allow_missing_key",
                          "engine"})
_VALUE_TYPES = ("gauge", "counter", "untyped")  # json_exporter's valuetype, the same names here
_PARAMETER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# `{{ .name | first }}`, `{{ first .name }}`, `{{ index .name 0 }}`: a query parameter's first value
_GO_PARAMETER = re.compile(r"\{\{(-?)\s*(?:\.(\w+)\s*\|\s*first|first\s+\.(\w+)|index\s+\.(\w+)\s+0)\s*(-?)\}\}")
_GO_ACTION = re.compile(r"\{\{.*?\}\}", re.DOTALL)
_RESERVED_PARAMETERS = ("target", "module")  # placeholders of their own in templates
_GO_LITERAL = re.compile(r'"(?:\\.|[^"\\])*"|`[^`]*`|\'(?:\\.|[^\'\\])*\'')
_GO_WORD = re.compile(r"[.$]?[A-Za-z_][\w.]*")


@dataclass
class _Metric:
    """One rule of the spec, with the source path of each of its keys (relative paths)."""

    data: dict[str, Any]
    source: Path
    origin: dict[Path, Path] = field(default_factory=dict)


@dataclass
class _Module:
    """One module of the spec: its keys but the metrics, its rules, and the source path of each key."""

    name: str
    data: dict[str, Any]
    source: Path
    metrics: list[_Metric] = field(default_factory=list)
    origin: dict[Path, Path] = field(default_factory=dict)


@dataclass
class Migration:
    """The spec's data, the changes in meaning for its header, and what was not translated."""

    modules: list[_Module]
    changes: list[str]
    problems: list[Problem]

    def data(self) -> dict[str, Any]:
        modules: dict[str, Any] = {}
        for module in self.modules:
            modules[module.name] = {**module.data, "metrics": [m.data for m in module.metrics]}
        return {"modules": modules}

    def origin(self) -> dict[Path, Path]:
        """Source path of every spec path that has one."""
        found: dict[Path, Path] = {}
        for module in self.modules:
            base: Path = ("modules", module.name)
            found[base] = module.source
            found.update({(*base, *k): v for k, v in module.origin.items()})
            for i, metric in enumerate(module.metrics):
                found[(*base, "metrics", i)] = metric.source
                found.update({(*base, "metrics", i, *k): v for k, v in metric.origin.items()})
        return found


def _go_action_kind(action: str) -> str:
    """A Go template action said by its commands' first words (`{{ .pw | default … }}`), never its literals
    or arguments: a string in it may be a password (`default "…"`), and nothing redacts it."""
    body = _GO_LITERAL.sub(" … ", action[2:-2].strip("-").strip())
    body = re.split(r"[\"'`]", body, maxsplit=1)[0]  # an unterminated literal: nothing of it
    commands = []
    for command in body.split("|"):
        words = command.split()
        first = words[0] if words and _GO_WORD.fullmatch(words[0]) else "…"
        commands.append(f"{first} …" if len(words) > 1 else first)
    return "`{{ " + " | ".join(commands) + " }}`"


@dataclass
class _Translator:
    """Translates the parts of one configuration, collecting each problem at its position and each change in meaning."""

    file: str
    marks: Marks
    problems: list[Problem] = field(default_factory=list)
    changes: dict[str, list[str]] = field(default_factory=dict)  # change -> where it applies

    def error(self, path: Path, message: str, offset: int | None = None, at_key: bool = False) -> None:
        self._add(path, message, "error", offset, at_key)

    def warning(self, path: Path, message: str, at_key: bool = False) -> None:
        self._add(path, message, "warning", None, at_key)

    def _add(self, path: Path, message: str, severity: Severity, offset: int | None, at_key: bool) -> None:
        if offset is not None:
            line, col = self.marks.inside(path, offset)
        else:
            line, col = self.marks.of_key(path) if at_key else self.marks.of_value(path)
        self.problems.append(Problem(self.file, line, col, path, message, severity))

    def key_problem(self, path: Path, message: str, severity: Severity = "warning", at_credentials: bool = False) -> None:
        """A problem about the key at `path`, at the key, `message` naming it where it says `{key}`: quoted, or not
        shown when it is written without a value or in a place of credentials (`at_credentials`; schema.key_named)."""
        shown, named = key_named(path, self.marks, at_credentials)
        line, col = self.marks.of_key(path)
        self.problems.append(Problem(self.file, line, col, shown, message.replace("{key}", named, 1), severity))

    def change(self, text: str, where: Path | None = None) -> None:
        places = self.changes.setdefault(text, [])
        if where is not None:
            line, col = self.marks.of_value(where)
            places.append(f"{format_path(where)} ({self.file}:{line}:{col})")

    def expression(self, path: Path, source: object, place: Place, left_out: str) -> str | None:
        """The JMESPath of the JSONPath at `path`; None (reported, saying what is `left_out`) when there is none."""
        text = _scalar_text(source)
        if text is None:
            self.error(path, f"not translated: expected a JSONPath string, got {type(source).__name__}; {left_out}")
            return None
        try:
            translation = translate(text, place)
        except Untranslatable as exc:
            # the path is located, not quoted: a filter's literal (`[?(@.key=="…")]`) may be a value of the answer's
            self.error(path, f"not translated: {exc.message}; {left_out}", offset=exc.offset if isinstance(source, str) else None)
            return None
        if translation.picks_first:
            self.change("where the path matches several elements, json_exporter gave no sample (a value) or their texts joined "
                        "by spaces (a label); the translation takes the first match (`| [0]`)", path)
        return translation.expression if translation.expression is not None else "@"

    # modules ------------------------------------------------------------------------------------

    def module(self, name: str, raw: Any, path: Path) -> _Module | None:
        if not isinstance(raw, dict):
            self.error(path, "not translated: a module must be a mapping; left out")
            return None
        module = _Module(name, {}, path)
        for key in sorted(set(raw) - _MODULE_KEYS):
            self.key_problem((*path, key), f"json_exporter ignores the key {{key}} (it reads {', '.join(sorted(_MODULE_KEYS))}): left out")
        endpoint: dict[str, Any] = {}
        origin: dict[Path, Path] = {}
        if isinstance(raw.get("headers"), dict):
            headers = {str(k): _template_text(_scalar_text(v) or "") for k, v in raw["headers"].items()}
            if headers:
                endpoint["headers"] = headers
                origin.update({("endpoints", "default", "headers", k): (*path, "headers", k) for k in headers})
        elif "headers" in raw and raw["headers"] is not None:
            self.error((*path, "headers"), "not translated: headers must be a mapping of header names to values; left out")
        body = raw.get("body")
        if body is not None:
            self.body(path, body, endpoint, module, origin)
        codes = raw.get("valid_status_codes")
        if isinstance(codes, list) and codes:
            endpoint["valid_status_codes"] = codes
            origin.update(_origins(("endpoints", "default", "valid_status_codes"), (*path, "valid_status_codes"), codes))
        elif codes not in (None, []):
            self.error((*path, "valid_status_codes"), "not translated: valid_status_codes must be a list of status codes; left out")
        client = raw.get("http_client_config")
        if isinstance(client, dict) and isinstance(client.get("http_headers"), dict):
            extra = self.http_headers((*path, "http_client_config", "http_headers"), client["http_headers"])
            endpoint["headers"] = {**endpoint.get("headers", {}), **extra}
            origin.update({("endpoints", "default", "headers", k): (*path, "http_client_config", "http_headers", k) for k in extra})
            client = {k: v for k, v in client.items() if k != "http_headers"}
        if endpoint:
            module.data["endpoints"] = {"default": {"url": "{target}", **endpoint}}
        if isinstance(client, dict):
            kept = self.client_config((*path, "http_client_config"), client, _client_schema())
            if kept:
                module.data["http_client_config"] = kept
                origin.update(_origins(("http_client_config",), (*path, "http_client_config"), kept))
        else:
            self.change("redirects are followed, each hop checked against `targets.allow` (json_exporter follows none without an "
                        "`http_client_config`; add `http_client_config: {follow_redirects: false}` to keep that)", path)
        module.origin = origin
        metrics = raw.get("metrics")
        if not isinstance(metrics, list) or not metrics:
            self.error((*path, "metrics"), "not translated: a module needs a list of metrics; the module is left out")
            return None
        for i, m in enumerate(metrics):
            module.metrics.extend(self.metric((*path, "metrics", i), m))
        return module

    def body(self, path: Path, body: Any, endpoint: dict[str, Any], module: _Module, origin: dict[Path, Path]) -> None:
        bp = (*path, "body")
        if not isinstance(body, dict):
            self.error(bp, "not translated: body must be a mapping with `content` (and `templatize`); left out")
            return
        for key in sorted(set(body) - {"content", "templatize"}):
            self.key_problem((*bp, key), "json_exporter ignores the key {key} of a body: left out", at_credentials=True)
        content = _scalar_text(body.get("content")) or ""
        if not content:
            return  # json_exporter sends a GET without a body
        endpoint["method"] = "POST"
        origin[("endpoints", "default", "body")] = (*bp, "content")
        if not _yaml11_true(body.get("templatize")):
            endpoint["body"] = _template_text(content)
            return
        parameters: dict[str, Any] = {}
        endpoint["body"] = self.go_template((*bp, "content"), content, parameters)
        if parameters:
            module.data["parameters"] = parameters
            self.change("a query parameter the body uses is required: a probe without it gets HTTP 400 (json_exporter rendered "
                        "`<no value>`); give it a `default` under `parameters` to accept such probes", path)

    def go_template(self, path: Path, content: str, parameters: dict[str, Any]) -> str:
        """A templated body whose actions read query parameters (`{{ .name | first }}`) as placeholders."""
        out, last = [], 0
        for action in _GO_ACTION.finditer(content):
            literal = content[last : action.start()]
            match = _GO_PARAMETER.fullmatch(action.group())
            if match is None:
                out.append(_template_text(literal + action.group()))
                self.error(path, f"not translated: the Go template action {_go_action_kind(action.group())}: only a query parameter's value "
                                 "(`{{ .name | first }}`) has a translation; it is sent as written", offset=action.start())
                last = action.end()
                continue
            trim_left, name, trim_right = match.group(1), next(g for g in match.groups()[1:4] if g), match.group(5)
            out.append(_template_text(literal.rstrip() if trim_left else literal))
            out.append("{" + name + "}")
            if name not in _RESERVED_PARAMETERS:
                if name == "debug" or not _PARAMETER.fullmatch(name):
                    self.error(path, f"not translated: the query parameter {name!r} cannot be a spec parameter", offset=action.start())
                parameters[name] = {}
            last = action.end()
            if trim_right:
                rest = content[last:]
                last += len(rest) - len(rest.lstrip())
        out.append(_template_text(content[last:]))
        return "".join(out)

    def http_headers(self, path: Path, raw: dict[str, Any]) -> dict[str, str]:
        """Prometheus's `http_headers` (`{Name: {values: [...], secrets: [...], files: [...]}}`): one value each here."""
        headers: dict[str, str] = {}
        for name, spec in raw.items():
            hp = (*path, name)
            lists = {key: spec[key] for key in ("values", "secrets", "files") if spec.get(key) is not None} if isinstance(spec, dict) else {}
            wrong = next((key for key, value in lists.items() if not isinstance(value, list)), None)
            if wrong is not None:
                self.error((*hp, wrong), f"not translated: `{wrong}` must be a list of strings, not {type(lists[wrong]).__name__}; "
                                         "the header is left out")
                continue
            given = [v for key in ("values", "secrets") for v in lists.get(key, [])]
            if not isinstance(spec, dict) or lists.get("files") or len(given) != 1 or not isinstance(given[0], str):
                self.error(hp, "not translated: only a header with one value (`values` or `secrets`) has a translation, not files or "
                               "several values; left out", at_key=True)
                continue
            headers[str(name)] = _template_text(given[0])
        return headers

    def client_config(self, path: Path, raw: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
        """The keys of an http_client_config the spec knows (they are Prometheus's names); the others reported."""
        properties = schema.get("properties", {})
        kept: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in properties:
                self.key_problem((*path, key), f"not translated: the http_client_config key {{key}} has no equivalent here "
                                               f"(known: {', '.join(sorted(properties))}); left out", "error", at_credentials=True)
                continue
            sub = _resolve(properties[key])
            if isinstance(value, dict) and "properties" in sub:
                kept[key] = self.client_config((*path, key), value, sub)
            elif value is not None:
                kept[key] = value
        return kept

    # metrics ------------------------------------------------------------------------------------

    def metric(self, path: Path, raw: Any) -> list[_Metric]:
        if not isinstance(raw, dict):
            self.error(path, "not translated: a metric must be a mapping; left out")
            return []
        for key in sorted(set(raw) - _METRIC_KEYS):
            if key == "epochTimestamp":
                self.epoch_camel_case(path, raw)
            else:
                self.key_problem((*path, key), f"json_exporter ignores the key {{key}} (keys are lower case: "
                                               f"{', '.join(sorted(_METRIC_KEYS))}): left out")
        name = _scalar_text(raw.get("name"))
        if not name:
            self.error(path, "not translated: a metric without a name; left out")
            return []
        if raw.get("engine", "jsonpath") != "jsonpath":
            self.error((*path, "engine"), f"not translated: only JSONPath is translated, not engine {raw['engine']!r}; the metric is left out")
            return []
        scrape = raw.get("type", "value") or "value"
        if scrape not in ("value", "object"):
            hint = f"; `valuetype: {scrape}` is the metric type" if scrape in _VALUE_TYPES else ""
            self.error((*path, "type"), f"not translated: type {scrape!r}: json_exporter takes value or object here and answers every "
                                        f"probe of the module with an empty body{hint}; the metric is left out")
            return []
        rule: dict[str, Any] = {"name": name, "help": _scalar_text(raw.get("help")) or name}
        origin: dict[Path, Path] = {("name",): (*path, "name")}
        valuetype = raw.get("valuetype")
        if valuetype is None:
            rule["type"] = "untyped"
        elif valuetype in _VALUE_TYPES:
            rule["type"] = valuetype
        else:
            rule["type"] = "untyped"
            self.change(f"valuetype {valuetype!r}, which json_exporter wrote as untyped, is written as untyped", (*path, "valuetype"))
        if rule["type"] == "counter":
            self.change("counter samples are named NAME_total, as Prometheus's conventions and OpenMetrics want "
                        "(json_exporter wrote NAME): update queries and alerts", (*path, "valuetype"))
        missing_ok = _yaml11_true(raw.get("allow_missing_key"))
        values: dict[str, tuple[str, Path]] = {}  # suffix (or "" for `value`) -> (JSONPath text, path)
        if scrape == "value":
            if "values" in raw:
                self.warning((*path, "values"), "json_exporter ignores `values` of a type: value metric: left out", at_key=True)
            values[""] = (_scalar_text(raw.get("path")) or "", (*path, "path"))
        else:
            each = self.expression((*path, "path"), raw.get("path", ""), "each", "the metric is left out")
            if each is None:
                return []
            if each != "@":
                rule["each"] = [{"path": each, "optional": True}] if missing_ok else each
                origin[("each",)] = (*path, "path")
            entries = raw.get("values")
            if not isinstance(entries, dict) or not entries:
                self.warning(path, "json_exporter makes no metric of a type: object rule without `values`: left out")
                return []
            values = {str(k): (_scalar_text(v) or "", (*path, "values", k)) for k, v in entries.items()}
        if missing_ok:
            self.change("allow_missing_key: a missing value is still counted in probe_extraction_errors (json_exporter only "
                        "left out its log line)", (*path, "allow_missing_key"))
        labels = self.labels(path, raw.get("labels"), origin)
        if labels:
            rule["labels"] = labels
        if "epochtimestamp" in raw:
            timestamp = self.expression((*path, "epochtimestamp"), raw["epochtimestamp"], "value", "the timestamp is left out")
            if timestamp is not None:
                rule["timestamp"], rule["timestamp_unit"] = timestamp, "milliseconds"
                origin[("timestamp",)] = (*path, "epochtimestamp")
        return self.outputs(path, rule, origin, values, scrape, raw.get("valueconverter"))

    def epoch_camel_case(self, path: Path, raw: dict[str, Any]) -> None:
        """json_exporter's README spells it `epochTimestamp`, and json_exporter reads only `epochtimestamp`."""
        where = (*path, "epochTimestamp")
        suggestion = ""
        text = _scalar_text(raw["epochTimestamp"])
        if text is not None:
            with contextlib.suppress(Untranslatable):
                suggestion = f" (`timestamp: {translate(text, 'value').expression}` with `timestamp_unit: milliseconds`)"
        self.warning(where, "json_exporter ignores `epochTimestamp` (it reads only `epochtimestamp`), so its samples had no "
                            f"timestamp: left out; add a timestamp to the rule to use it{suggestion}", at_key=True)

    def labels(self, path: Path, raw: Any, origin: dict[Path, Path]) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.error((*path, "labels"), "not translated: labels must be a mapping of label names to JSONPath; left out")
            return {}
        labels: dict[str, str] = {}
        for label, source in raw.items():
            lp = (*path, "labels", label)
            expression = self.expression(lp, source if isinstance(source, str) else _scalar_text(source) or "", "label", "the label is left out")
            if expression is None:
                continue
            if expression.startswith("'$") or expression.startswith("'@"):
                self.warning(lp, "the label's text has no braces, so json_exporter (since 0.3) gives the text itself as the label: kept; "
                                 "a JSONPath needs braces (`{.field}`)")
            labels[str(label)] = expression
            origin[("labels", str(label))] = lp
        return labels

    def outputs(self, path: Path, rule: dict[str, Any], origin: dict[Path, Path], values: dict[str, tuple[str, Path]], scrape: str,
                converters: Any) -> list[_Metric]:
        """The rule's `value` or `values`, one rule per value converter: value_map belongs to a rule."""
        by_converter = self.converters(path, converters, {text for text, _ in values.values()})
        groups: dict[str, list[tuple[str, str, Path]]] = {}
        for suffix, (text, vp) in values.items():
            left_out = "the value is left out" if suffix else "the metric is left out"
            if not text and scrape == "value":
                self.error(vp, f"not translated: an empty path never gives a value; {left_out}")
                continue
            expression = self.expression(vp, text, "value", left_out)
            if expression is None:
                continue
            if text in by_converter:
                expression = f"type({grouped(expression)}) == 'string' && lower({expression}) || {grouped(expression)}"
            groups.setdefault(text if text in by_converter else "", []).append((suffix, expression, vp))
        metrics = []
        for key, entries in groups.items():
            data = dict(rule)
            rule_origin = dict(origin)
            if entries[0][0] == "":
                _, expression, vp = entries[0]
                data = _insert_after(data, "each" if "each" in data else "type", "value", expression)
                rule_origin[("value",)] = vp
            else:
                data = _insert_after(data, "each" if "each" in data else "type", "values", {s: e for s, e, _ in entries})
                rule_origin.update({("values", s): vp for s, _, vp in entries})
            if key:
                data["value_map"] = by_converter[key]
                rule_origin[("value_map",)] = (*path, "valueconverter", key)
            metrics.append(_Metric(data, path, rule_origin))
        return metrics

    def converters(self, path: Path, raw: Any, used: set[str]) -> dict[str, dict[str, float | int]]:
        """valueconverter: per value path, strings (matched in any case) to numbers."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.error((*path, "valueconverter"), "not translated: valueconverter must map value paths to mappings of strings to numbers; left out")
            return {}
        found: dict[str, dict[str, float | int]] = {}
        for key, mapping in raw.items():
            cp = (*path, "valueconverter", key)
            if key not in used:
                self.key_problem(cp, "no value of this metric has the path {key}, so json_exporter never used this converter: left out")
                continue
            if not isinstance(mapping, dict):
                self.error(cp, "not translated: a converter maps strings to numbers; left out")
                continue
            table: dict[str, float | int] = {}
            for text, number in mapping.items():
                converted = _go_number(number)
                if converted is None:
                    self.error((*cp, text), "not translated: not a number: json_exporter dropped such samples")
                    continue
                table[str(text).lower()] = int(converted) if converted.is_integer() else converted
            if table:
                found[str(key)] = table
        return found


def _origins(at: Path, source: Path, value: Any) -> dict[Path, Path]:
    """The source path of `at` and of every key and item within `value`, copied there as written: what `check`
    refuses deep inside it (a proxy_url of http_client_config, a status code of a list) is reported where it is written."""
    found: dict[Path, Path] = {at: source}
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        found.update(_origins((*at, key), (*source, key), child))
    return found


def _yaml11_true(raw: Any) -> bool:
    """True as json_exporter's YAML 1.1 reads a boolean: `yes` and `on` too, which are strings in a spec."""
    return raw is True or (isinstance(raw, str) and raw.lower() in ("yes", "y", "on", "true"))


def _insert_after(data: dict[str, Any], after: str, key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        out[k] = v
        if k == after:
            out[key] = value
    out.setdefault(key, value)
    return out


def _go_number(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, (int, float)):
        try:
            return float(raw)
        except OverflowError:  # an integer beyond a float64: Go's ParseFloat refuses it too
            return None
    text = _scalar_text(raw)
    if text in GO_TRUE:
        return 1.0
    if text in GO_FALSE:
        return 0.0
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _scalar_text(raw: Any) -> str | None:
    """A YAML scalar as the text json_exporter's string fields read it."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, (str, int, float)):
        return str(raw)
    return None


def _template_text(text: str) -> str:
    """Literal text as a spec template: its braces doubled."""
    return text.replace("{", "{{").replace("}", "}}")


def _client_schema() -> dict[str, Any]:
    definitions: dict[str, Any] = json.loads(schema_text())["definitions"]
    return _resolve(definitions["httpClientConfig"], definitions)


def _resolve(node: dict[str, Any], definitions: dict[str, Any] | None = None) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    definitions = definitions if definitions is not None else json.loads(schema_text())["definitions"]
    resolved: dict[str, Any] = definitions[ref.rsplit("/", 1)[-1]]
    return resolved


_ALWAYS = (
    "a duplicate series (same name and labels) no longer fails the whole probe with HTTP 500: the first is kept, "
    "each other one counted in probe_duplicate_series{metric=...}",
    "a value that cannot be read (missing, null, not a number) skips its series and is counted in probe_extraction_errors; "
    "strings are read as numbers only (json_exporter also read Go booleans such as \"true\" and \"T\": add a value_map for those)",
    "a label that is JSON null is empty (json_exporter wrote \"null\"); a label that cannot be read is empty in both",
    "every answer also carries the probe's own metrics (probe_success, probe_series, probe_extraction_errors, ...)",
)


def migrate_text(text: str, file: str) -> tuple[Migration | None, list[Problem]]:
    """Translate a json_exporter configuration; None (with the problems) when it is not one."""
    data, marks, problems = load_yaml(text, file, spec_keys() | _MODULE_KEYS | _METRIC_KEYS, "the json_exporter configuration")
    if problems:  # a document that is `null` has none: it is refused below, as any other without `modules`
        return None, problems
    t = _Translator(file, marks)
    if isinstance(data, dict) and "modules" not in data and "metrics" in data:
        t.change("the configuration has no `modules` (json_exporter before 0.5): it became the module `default`")
        raw_modules: Any = {"default": data}
        paths: dict[str, Path] = {"default": ()}
    else:
        raw_modules = data.get("modules") if isinstance(data, dict) else None
        paths = {name: ("modules", name) for name in raw_modules} if isinstance(raw_modules, dict) else {}
    if not isinstance(raw_modules, dict) or not raw_modules:
        return None, [Problem(file, 1, 1, (), "not a json_exporter configuration: it has no `modules` mapping")]
    for name, raw in raw_modules.items():
        if isinstance(raw, dict) and "endpoints" in raw:  # json_exporter's modules have none: a spec of ours
            line, col = marks.of_key((*paths[name], "endpoints"))
            return None, [Problem(file, line, col, (*paths[name], "endpoints"),
                                  "not a json_exporter configuration: this is already a jsonexporter spec "
                                  "(its modules have `endpoints`); check it with `jsonexporter check`")]
    if isinstance(data, dict):
        for key in sorted(set(data) - {"modules"}) if paths.get("default") != () else ():
            t.key_problem((key,), "json_exporter ignores the key {key}: left out")
    modules = []
    for name, raw in raw_modules.items():
        module = t.module(str(name), raw, paths[name])
        if module is not None and not module.metrics:
            t.error(module.source, "not translated: none of the module's metrics could be translated; the module is left out", at_key=True)
        elif module is not None:
            modules.append(module)
    for text_ in _ALWAYS:
        t.change(text_)
    migration = Migration(modules, [], t.problems)
    if modules:
        _checked(migration, t, file)
    else:
        t.error((), _NOTHING_TRANSLATED)
    # json_exporter's configuration has the shape of a spec where credentials are: its problems quote none
    migration.problems = redacted(sorted(set(marks.concealed(migration.problems, file)), key=lambda p: (p.line, p.column, p.message)), spec_secrets(data))
    migration.changes = [_change_line(text_, where) for text_, where in t.changes.items()]
    return migration, migration.problems


def _change_line(text: str, where: list[str]) -> str:
    return f"{text}: {'; '.join(where)}" if where else text


_CREDENTIALS = "declare `targets: {allow: [...]}`"
_NOTHING_TRANSLATED = "nothing could be translated: the spec written has no modules, which `check` refuses"


def _checked(migration: Migration, t: _Translator, file: str) -> None:
    """Run `check` on the spec; report what it refuses at the json_exporter key it came from, and
    leave that out, until the spec passes. Credentials sent to the target's host get an allowlist
    that admits any target, as json_exporter did, with a warning."""
    for _ in range(50):  # each round leaves out at least one rule, key or module
        if not migration.modules:  # all left out: said as when none translated, not as check's "modules: must not be empty"
            t.error((), _NOTHING_TRANSLATED)
            return
        _, problems = load_text(render(migration), f"{file} (translated)")
        errors = [p for p in problems if p.severity == "error"]
        if not errors:
            return
        origin = migration.origin()
        for problem in errors:
            module = next((m for m in migration.modules if problem.path[1:2] == (m.name,)), None)
            source = _source_of(problem.path, origin)
            if module is not None and _CREDENTIALS in problem.message and "targets" not in module.data:
                module.data = {"targets": {"allow": [".*"]}, **module.data}
                t.warning(module.source, "json_exporter sent this module's credentials to whatever host the probe's target names: the "
                                         "translation allows any target (`targets: {allow: ['.*']}`) to keep that; narrow it to your hosts",
                          at_key=True)
                continue
            t.error(source, f"not translated: the spec refuses the translation: {_in_source(problem.message, origin, t)}; left out")
        if not _leave_out(migration, [p.path for p in errors if _CREDENTIALS not in p.message]):
            return


_SPEC_PATH = re.compile(r"modules\.(\w+)\.metrics\[(\d+)\]")
_SPEC_PLACE = re.compile(r" \([^()]* \(translated\):\d+:\d+\)")


def _in_source(message: str, origin: dict[Path, Path], t: _Translator) -> str:
    """A check message that names other places of the spec, with the json_exporter places they came from."""

    def place(match: re.Match[str]) -> str:
        source = origin.get(("modules", match.group(1), "metrics", int(match.group(2))))
        if source is None:
            return match.group()
        line, col = t.marks.of_value(source)
        return f"{format_path(source)} ({t.file}:{line}:{col})"

    return _SPEC_PATH.sub(place, _SPEC_PLACE.sub("", message))


def _source_of(path: Path, origin: dict[Path, Path]) -> Path:
    for end in range(len(path), 0, -1):
        if path[:end] in origin:
            return origin[path[:end]]
    return ()


def _leave_out(migration: Migration, paths: list[Path]) -> bool:
    """Remove the rule (or the module key) each path is in; True when something was removed."""
    removed = False
    doomed_metrics: set[tuple[str, int]] = set()
    for path in paths:
        module = next((m for m in migration.modules if path[1:2] == (m.name,)), None)
        if module is None:
            continue
        if path[2:3] == ("metrics",) and len(path) > 3 and isinstance(path[3], int):
            doomed_metrics.add((module.name, path[3]))
        elif len(path) > 2 and path[2] in module.data:
            _remove(module.data, path[2:])
            removed = True
        else:
            migration.modules.remove(module)
            removed = True
    for module in migration.modules:
        kept = [m for i, m in enumerate(module.metrics) if (module.name, i) not in doomed_metrics]
        removed = removed or len(kept) != len(module.metrics)
        module.metrics = kept
    migration.modules = [m for m in migration.modules if m.metrics]
    return removed


def _remove(data: dict[str, Any], path: Path) -> None:
    """Remove the deepest mapping key of `path` that exists (a header, the body, an http_client_config key)."""
    node: Any = data
    parents: list[tuple[dict[str, Any], str]] = []
    gone = False
    for part in path:
        if not isinstance(node, dict) or part not in node:
            gone = isinstance(node, dict)
            break
        parents.append((node, str(part)))
        node = node[part]
    cap = 4 if path[:1] == ("endpoints",) else 2
    if gone and len(parents) < min(len(path), cap):  # removed already (two problems of one key): its parent stays
        return
    depth = min(len(parents), cap)
    parent, key = parents[depth - 1]
    del parent[key]


def render(migration: Migration, source: str = "") -> str:
    """The spec's YAML, headed by the comment that lists the changes in meaning and what was not translated."""
    lines = [f"# Translated from the json_exporter configuration {source or 'given'} by `jsonexporter migrate`."]
    if migration.changes:
        lines.append("# What means something else here than in json_exporter:")
        lines.extend(_comment(f"- {c}") for c in migration.changes)
    problems = [p for p in migration.problems if p.severity == "error"]
    if problems:
        lines.append("# NOT TRANSLATED (left out; translate these by hand):")
        lines.extend(_comment(f"- {p}") for p in problems)
    ignored = [p for p in migration.problems if p.severity == "warning"]
    if ignored:
        lines.append("# Left out or adapted, with the reason:")
        lines.extend(_comment(f"- {p}") for p in ignored)
    body = yaml.dump(migration.data(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1_000_000, default_flow_style=False)
    return "\n".join(lines) + "\n" + body


class _Dumper(yaml.SafeDumper):
    """Writes a JMESPath raw string literal (`'beta'`) in double quotes rather than doubling its quotes,
    and every value in place: rules split by valueconverter share their labels, which is no reason for anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _string(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = '"' if text[:1] == "'" and "\\" not in text and '"' not in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _string)


def _comment(text: str) -> str:
    return "# " + " ".join(text.split())


def run(file: str, output: str | None) -> int:
    """The command: translate `file`, write the spec to `output` (stdout without one), report on stderr."""
    try:
        text = read_spec_text(file)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"{file}: cannot read: {reason}", file=sys.stderr)
        return EXIT_USAGE
    migration, problems = migrate_text(text, file)
    for problem in problems:
        print(problem, file=sys.stderr)
    if migration is None:
        return EXIT_USAGE
    spec = render(migration, file)
    if output is None:
        sys.stdout.write(spec)
    else:
        try:
            with open(output, "w", encoding="utf-8") as fh:
                fh.write(spec)
        except OSError as exc:
            print(f"{output}: cannot write: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
    untranslated = sum(p.severity == "error" for p in problems)
    if untranslated:
        print(f"{file}: {untranslated} construct(s) not translated; the rest is written", file=sys.stderr)
    return EXIT_UNTRANSLATED if untranslated else EXIT_OK
