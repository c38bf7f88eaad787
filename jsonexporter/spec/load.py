"""The one loading pipeline used by `check`, by the server at start and by reload:
YAML with marks -> JSON Schema (every error) -> semantic checks -> the frozen model."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, cast

from jsonexporter.labeltext import label_text
from jsonexporter.names import PROBE_METRICS, exposition_names, family_name, label_lint, lint, text_name
from jsonexporter.secrets import Redactor, is_secret_name, request_credentials, secret_parameter_names, spec_secrets
from jsonexporter.spec.expressions import (
    CONTEXT_NAMES,
    Expression,
    ExpressionError,
    Template,
    compile_expression,
    compile_template,
    quoted,
)
from jsonexporter.spec.functions import Pattern, RegexError, compile_regex
from jsonexporter.spec.hostpatterns import every_host, wildcard_in_host
from jsonexporter.spec.model import (
    DEFAULT_BODY_SIZE_LIMIT,
    DEFAULT_ENDPOINT,
    DEFAULT_LABEL_VALUE_LENGTH_LIMIT,
    DEFAULT_MAX_PAGES,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT,
    HEADER_VALUE_CONTROL,
    Distribution,
    Duplicates,
    Endpoint,
    HTTPClientConfig,
    JsonBody,
    Level,
    Login,
    LoginValue,
    Method,
    Metric,
    MetricType,
    Module,
    ModuleSecret,
    NextStyle,
    OAuth2,
    Output,
    Pagination,
    Parameter,
    Secret,
    Spec,
    TLSClientConfig,
    json_templates,
)
from jsonexporter.spec.problems import Path, Problem, Severity, SpecError, format_path
from jsonexporter.spec.projection import projections
from jsonexporter.spec.schema import check_schema, key_named, schema_text, spec_keys
from jsonexporter.spec.sources import read_spec_files, spec_sha256
from jsonexporter.spec.yamlload import Marks, load_yaml
from jsonexporter.urls import UnusableURL, checked_url

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_JSON_TYPE = re.compile(r"application/(?:[\w.+-]*\+)?json\s*(?:;|$)", re.IGNORECASE)
_FORM_TYPE = re.compile(r"application/x-www-form-urlencoded\s*(?:;|$)", re.IGNORECASE)
_PLACEHOLDER_MARK = "\ue000"  # stands for a value while the JSON structure of a body is checked
# self-metrics of every probe answer live under this prefix
RESERVED_PREFIX = "probe_"
_UNIT_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"_(ms|msec|millis|milliseconds)(_total)?$"),
     "use the base unit: seconds (_seconds), converted with `scale: 0.001`"),
    (re.compile(r"_(kb|mb|gb|kib|mib|gib)(_total)?$"), "use the base unit: bytes (_bytes)"),
    (re.compile(r"_percent(age)?$"), "use a ratio from 0 to 1 with the suffix _ratio"),
    (re.compile(r"(latency|duration|elapsed|uptime|runtime)(?!.*_seconds)"), "add a unit suffix, e.g. _seconds"),
    (re.compile(r"(memory|heap|disk_size|file_size)(?!.*_bytes)"), "add a unit suffix, e.g. _bytes"),
)
# stands for an expression that did not compile (reported), in a rule that is only checked, never run
_UNUSABLE = compile_expression("@")


def parse_duration(value: str | float | int) -> float:
    """`10s`, `1m30s`, `500ms` or a number of seconds -> seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    match = _DURATION.fullmatch(value)
    if not match or not value:
        raise ValueError(f"invalid duration {value!r}")
    try:
        h, m, s, ms = (int(g) if g else 0 for g in match.groups())  # ValueError beyond 4,300 digits
        return float(h * 3600 + m * 60 + s) + ms / 1000  # OverflowError beyond a float
    except (ValueError, OverflowError):
        raise ValueError(f"duration {value[:40]!r}{'…' if len(value) > 40 else ''} is too large") from None


def _duration(c: _Checker, path: Path, raw: str | float) -> float | None:
    try:
        seconds = _number(c, path, raw) if isinstance(raw, (int, float)) else parse_duration(raw)
    except ValueError as exc:
        c.add(path, str(exc))
        return None
    if seconds is None:
        return None
    if not math.isfinite(seconds):
        c.add(path, f"duration {raw!r} must be a finite number of seconds")
        return None
    if seconds <= 0:
        c.add(path, f"duration {raw!r} must be greater than zero")
        return None
    return seconds


def _number(c: _Checker, path: Path, raw: float) -> float | None:
    """`raw` as a float; YAML integers can be too large for one."""
    try:
        return float(raw)
    except OverflowError:
        c.add(path, "number too large")
        return None


@dataclass
class _Checker:
    """Collects problems while compiling; every problem gets the position of its YAML node."""

    file: str
    marks: Marks
    problems: list[Problem] = field(default_factory=list)
    meant: frozenset[Path] = frozenset()  # keys written with a typo, by the path of the key meant

    def add(self, path: Path, message: str, severity: Severity = "error", at_key: bool = False, offset: int | None = None) -> None:
        """Report at the value of `path` (its key with `at_key`; its character `offset` when given)."""
        if offset is not None:
            line, col = self.marks.inside(path, offset)
        else:
            line, col = self.marks.of_key(path) if at_key else self.marks.of_value(path)
        self.problems.append(Problem(self.file, line, col, path, message, severity))

    def broken(self, path: Path) -> bool:
        """True when a schema error was found at or below `path` (already reported)."""
        n = len(path)
        return any(p.severity == "error" and p.path[:n] == path for p in self.problems)

    def declared(self, path: Path, raw: dict[str, Any]) -> set[str]:
        """The keys of `raw` (at `path`) with those written with a typo (`valeu` counts as `value`):
        a check that needs a key does not report it missing on top of the typo's own problem."""
        return set(raw) | {p[-1] for p in self.meant if p[:-1] == path and isinstance(p[-1], str)}

    def clean(self, path: Path, raw: dict[str, Any]) -> dict[str, Any]:
        """`raw` without the values that failed the schema themselves, so the rest can still be checked."""
        failed = {p.path for p in self.problems if p.severity == "error"}
        return {k: v for k, v in raw.items() if (*path, k) not in failed}

    def expression(self, path: Path, source: object, levels: frozenset[str] = frozenset()) -> Expression | None:
        if not isinstance(source, str) or self.broken(path):
            return None  # the schema reported it
        try:
            expression = compile_expression(source, levels)
        except ExpressionError as exc:
            self.add(path, f"{exc.message} in {quoted(source)}", offset=exc.position)
            return None
        if expression.on_context and expression.fields is not None and expression.fields[0] == "params" and len(expression.fields) > 1 \
                and is_secret_name(expression.fields[1]):
            self.add(path, f"{source!r} reads a parameter whose name says it is secret: $params never holds one (its value would "
                           "become a label or sample of the answer, stored by Prometheus); secret parameters go into requests only")
        return expression

    def regex(self, path: Path, source: object) -> Pattern | None:
        """A pattern matched against values from outside (a parameter, the target, a redirect's Location):
        RE2, whose matching time is linear in the value whatever the pattern (Python's `re` backtracks:
        `([a-z]+\\s?)+` against 30 letters and a `!` would hold the event loop for minutes)."""
        if not isinstance(source, str) or self.broken(path):
            return None  # the schema reported it
        try:
            return compile_regex(source)
        except RegexError as exc:
            self.add(path, exc.message, offset=exc.offset)
            return None

    def template(self, path: Path, source: object, names: frozenset[str]) -> Template | None:
        if not isinstance(source, str) or self.broken(path):
            return None  # the schema reported it
        try:
            return compile_template(source, names)
        except ExpressionError as exc:
            self.add(path, f"{exc.message} in {quoted(source)}", offset=exc.position)
            return None


def _items(mapping: Any) -> Iterator[tuple[str, Any]]:
    return iter(mapping.items()) if isinstance(mapping, dict) else iter(())


def _parameters(c: _Checker, path: Path, raw: Any) -> dict[str, Parameter]:
    params: dict[str, Parameter] = {}
    for name, decl in _items(raw):
        p = (*path, name)
        if name in ("target", "module", "debug"):
            c.add(p, f"parameter name {name!r} is reserved by /probe", at_key=True)
            continue
        if c.broken(p) or not isinstance(decl, dict):
            continue
        pattern = None
        if "pattern" in decl:
            pattern = c.regex((*p, "pattern"), decl["pattern"])
            if pattern is None:
                continue
        default = decl.get("default")
        if default is not None and pattern is not None and not pattern.fullmatch(default):
            c.add((*p, "default"), f"default {default!r} does not match the pattern {pattern.pattern!r}")
        params[name] = Parameter(name, default, pattern)
    return params


def _json_body(c: _Checker, path: Path, raw: Any, names: frozenset[str]) -> object:
    if isinstance(raw, str):
        return c.template(path, raw, names)
    if isinstance(raw, dict):
        return {k: _json_body(c, (*path, k), v, names) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_json_body(c, (*path, i), v, names) for i, v in enumerate(raw)]
    return raw


_AUTH_KEYS = ("basic_auth", "authorization", "bearer_token", "bearer_token_file", "oauth2")


def _secret(c: _Checker, path: Path, raw: dict[str, Any], key: str, file_key: str) -> Secret | None:
    """`key` inline or `file_key` (a file read at probe time): one of them, checked to exist now."""
    if key in raw and file_key in raw:
        c.add((*path, file_key), f"use either {key} or {file_key}, not both", at_key=True)
        return None
    if file_key in raw:
        _file_warning(c, (*path, file_key), raw[file_key])
        return Secret(file=raw[file_key])
    if key in raw:
        return Secret(value=str(raw[key]))
    return None


def _file_warning(c: _Checker, path: Path, file: object) -> None:
    if isinstance(file, str) and not os.path.isfile(file):
        c.add(path, f"file {file!r} does not exist (yet): requests that need it fail until it does", "warning")


def _tls_client(c: _Checker, path: Path, raw: dict[str, Any] | None) -> TLSClientConfig | None:
    if not isinstance(raw, dict):
        return None
    raw = c.clean(path, raw)
    for key in ("ca_file", "cert_file", "key_file"):
        if key in raw:
            _file_warning(c, (*path, key), raw[key])
    if ("cert_file" in raw) != ("key_file" in raw):
        c.add(path, "cert_file and key_file go together")
    if "ca" in raw and "ca_file" in raw:
        c.add((*path, "ca_file"), "use either ca or ca_file, not both", at_key=True)
    return TLSClientConfig(raw.get("ca_file"), raw.get("ca"), raw.get("cert_file"), raw.get("key_file"), raw.get("server_name"),
                           bool(raw.get("insecure_skip_verify", False)), raw.get("min_version"), raw.get("max_version"))


def _proxy_url(c: _Checker, path: Path, raw: object) -> str | None:
    if not isinstance(raw, str):
        return None
    if not re.match(r"^https?://[^/?#]+", raw):
        c.add(path, "proxy_url must be an http:// or https:// URL")
        return raw
    try:
        checked_url(raw)  # as aiohttp and the resolver will read it, at each request
    except UnusableURL as exc:
        c.add(path, f"proxy_url is not a usable URL: {exc}")
    return raw


def _client_config(c: _Checker, blocks: list[tuple[Path, dict[str, Any]]]) -> HTTPClientConfig:
    """The module's block, then the endpoint's: a key of the endpoint's replaces the module's."""
    merged: dict[str, tuple[Path, Any]] = {}
    for path, raw in blocks:
        block = c.clean(path, raw)
        if any(k in block for k in _AUTH_KEYS):  # authentication is replaced as a whole, not mixed
            merged = {k: v for k, v in merged.items() if k not in _AUTH_KEYS}
        for key, value in block.items():
            merged[key] = ((*path, key), value)
    auths = [k for k in _AUTH_KEYS if k in merged]
    if len({k.removesuffix("_file") for k in auths}) > 1:
        where = merged[auths[-1]][0]
        c.add(where, f"use one authentication method, not {' and '.join(auths)}", at_key=True)
    basic = authorization = oauth2 = None
    if "basic_auth" in merged:
        bp, b = merged["basic_auth"]
        b = c.clean(bp, b)
        user, password = _secret(c, bp, b, "username", "username_file"), _secret(c, bp, b, "password", "password_file")
        basic = (user or Secret(value=""), password or Secret(value=""))
    if "authorization" in merged:
        ap, a = merged["authorization"]
        a = c.clean(ap, a)
        creds = _secret(c, ap, a, "credentials", "credentials_file")
        if (a.get("type") or "Bearer").lower() == "basic":
            c.add((*ap, "type"), "authorization type Basic: use basic_auth instead")
        authorization = (a.get("type") or "Bearer", creds or Secret(value=""))
    if "bearer_token" in merged or "bearer_token_file" in merged:
        holder: dict[str, Any] = {k: merged[k][1] for k in ("bearer_token", "bearer_token_file") if k in merged}
        first = "bearer_token" if "bearer_token" in merged else "bearer_token_file"
        token = _secret(c, merged[first][0][:-1], holder, "bearer_token", "bearer_token_file")
        authorization = ("Bearer", token or Secret(value=""))
    if "oauth2" in merged:
        op, o = merged["oauth2"]
        o = c.clean(op, o)
        if "client_id" in o and "token_url" in o:
            if not re.match(r"^https?://", o["token_url"]):
                c.add((*op, "token_url"), "token_url must be an http:// or https:// URL")
            oauth2 = OAuth2(o["client_id"], _secret(c, op, o, "client_secret", "client_secret_file") or Secret(value=""), o["token_url"],
                            tuple(o.get("scopes", ())), tuple(sorted((o.get("endpoint_params") or {}).items())),
                            _tls_client(c, (*op, "tls_config"), o.get("tls_config")), _proxy_url(c, (*op, "proxy_url"), o.get("proxy_url")))
    tls = _tls_client(c, merged["tls_config"][0], merged["tls_config"][1]) if "tls_config" in merged else None
    proxy = _proxy_url(c, merged["proxy_url"][0], merged["proxy_url"][1]) if "proxy_url" in merged else None
    no_proxy = tuple(h.strip() for h in str(merged.get("no_proxy", ((), ""))[1]).split(",") if h.strip())
    hp, headers = merged.get("proxy_connect_header", ((), {}))
    connect = tuple((k, tuple(Secret(value=v) for v in vs)) for k, vs in sorted((headers or {}).items()) if not c.broken((*hp, k)))
    return HTTPClientConfig(basic, authorization, oauth2, tls, proxy, no_proxy, bool(merged.get("proxy_from_environment", ((), False))[1]),
                            connect, bool(merged.get("follow_redirects", ((), True))[1]))


def _endpoint(c: _Checker, path: Path, name: str, raw: dict[str, Any], names: frozenset[str],
              module_client: tuple[Path, dict[str, Any]] | None = None) -> Endpoint | None:
    url = c.template((*path, "url"), raw.get("url", "{target}"), names)
    headers: list[tuple[str, Template]] = []
    for key, value in _items(raw.get("headers")):
        valid = bool(_HEADER_NAME.match(key))
        if not valid and (*path, "headers", key) not in c.marks.bare_keys:  # no value: the schema says so
            # not quoted, nor in the path: a header line written as a name (`Authorization: Bearer …: x`) holds its
            # credential; located at it
            line, col = c.marks.of_key((*path, "headers", key))
            shown, named = key_named((*path, "headers", key), c.marks, at_credentials=True)
            c.problems.append(Problem(c.file, line, col, shown, f"invalid header name {named}"))
        t = c.template((*path, "headers", key), value, names)
        if t is not None:
            if HEADER_VALUE_CONTROL.search(value):
                c.add((*path, "headers", key) if valid else (*path, "headers"),
                      f"header {key if valid else '(its name not shown)'} contains a line break or another control character: it cannot be sent")
            headers.append((key, t))
    params = [(k, t) for k, v in _items(raw.get("params")) if (t := c.template((*path, "params", k), v, names)) is not None]
    body: Template | JsonBody | None = None
    body_escape = None
    if isinstance(raw.get("body"), str):
        body = c.template((*path, "body"), raw["body"], names)
        if body is not None:
            body_escape = _body_escape(c, (*path, "body"), body, headers)
    elif isinstance(raw.get("body"), dict):
        body = JsonBody(_json_body(c, (*path, "body"), raw["body"], names))
        _check_mapping_body_type(c, (*path, "body"), body, headers)
    timeout = _duration(c, (*path, "timeout"), raw["timeout"]) if "timeout" in raw else None
    if url is None or c.broken(path):
        return None
    blocks = [module_client] if module_client is not None else []
    if isinstance(raw.get("http_client_config"), dict):
        blocks.append(((*path, "http_client_config"), raw["http_client_config"]))
    client = _client_config(c, blocks)
    cache_ttl = _duration(c, (*path, "cache_ttl"), raw["cache_ttl"]) if "cache_ttl" in raw else None
    stale = _duration(c, (*path, "stale_if_error"), raw["stale_if_error"]) if "stale_if_error" in raw else None
    revalidate, interval = _background_keys(c, path, raw, cache_ttl)
    if stale is not None and cache_ttl is None and interval is None:
        c.add((*path, "stale_if_error"), "stale_if_error needs cache_ttl or refresh_interval: only kept answers can be served stale", at_key=True)
    codes = raw.get("valid_status_codes")
    return Endpoint(
        name=name,
        url=url,
        method=cast(Method, raw.get("method", "GET")),
        headers=tuple(headers),
        params=tuple(params),
        body=body,
        body_escape=body_escape,
        timeout=timeout,
        valid_status_codes=frozenset(codes) if codes else None,
        max_response_bytes=raw.get("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES),
        client=client,
        cache_ttl=cache_ttl,
        stale_if_error=stale,
        stale_while_revalidate=revalidate,
        refresh_interval=interval,
        pagination=_pagination(c, (*path, "pagination"), raw.get("pagination")),
    )


# A schedule faster than this is a load test, not monitoring: the API is asked once a second per request at most.
MIN_REFRESH_INTERVAL = 1.0


def _background_keys(c: _Checker, path: Path, raw: dict[str, Any], cache_ttl: float | None) -> tuple[float | None, float | None]:
    """`stale_while_revalidate` and `refresh_interval`, checked against `cache_ttl`."""
    revalidate = _duration(c, (*path, "stale_while_revalidate"), raw["stale_while_revalidate"]) if "stale_while_revalidate" in raw else None
    interval = _duration(c, (*path, "refresh_interval"), raw["refresh_interval"]) if "refresh_interval" in raw else None
    if "stale_while_revalidate" in raw and cache_ttl is None:
        c.add((*path, "stale_while_revalidate"), "stale_while_revalidate needs cache_ttl: it is the window after cache_ttl in which an answer "
              "is served while it is refreshed", at_key=True)
    if interval is not None and interval < MIN_REFRESH_INTERVAL:
        c.add((*path, "refresh_interval"), f"refresh_interval {raw['refresh_interval']!r} is shorter than the least, 1s")
    if "refresh_interval" in raw and cache_ttl is not None:
        c.add((*path, "refresh_interval"), "use either refresh_interval or cache_ttl, not both: refresh_interval keeps the latest answer "
              "itself, probes never wait for it", at_key=True)
    return revalidate, interval


_NEXT_STYLES: tuple[NextStyle, ...] = ("link_header", "field", "cursor", "page_param")
_NEXT_COMPANIONS = {"param": "cursor", "start": "page_param"}  # keys that go with one style only


def _pagination(c: _Checker, path: Path, raw: Any) -> Pagination | None:
    """`items` as `@` or a plain field path, and exactly one style of `next`."""
    if not isinstance(raw, dict) or c.broken(path):
        return None  # absent, or the schema reported it
    items = raw["items"]
    item_path: tuple[str, ...] | None = ()
    if items.strip() != "@":
        expression = c.expression((*path, "items"), items)
        item_path = None if expression is None or expression.on_context else expression.fields
        if expression is not None and item_path is None:
            c.add((*path, "items"), f"items must be @ (each page is the list) or a plain field path such as data.values, not {items!r}: "
                                    "the elements of every page are gathered at that place of the first page")
    next_path = (*path, "next")
    next_raw: dict[str, Any] = raw["next"]
    styles = [s for s in _NEXT_STYLES if s in c.declared(next_path, next_raw)]
    if not styles:
        c.add(next_path, f"next needs one of {', '.join(_NEXT_STYLES)}: how the next page is found")
        return None
    if len(styles) > 1:
        c.add((*next_path, styles[1]), f"next takes one style: {styles[0]} or {styles[1]}, not both", at_key=True)
        return None
    style = styles[0]
    for key, owner in _NEXT_COMPANIONS.items():
        if key in next_raw and owner != style:
            c.add((*next_path, key), f"{key} goes with {owner}, not {style}", at_key=True)
    if style == "cursor" and "param" not in c.declared(next_path, next_raw):
        c.add(next_path, "cursor needs param: the query parameter that sends the cursor back")
    expression = None
    if style in ("field", "cursor"):
        expression = c.expression((*next_path, style), next_raw[style])
        if expression is not None and expression.on_context:
            c.add((*next_path, style), f"{style} is evaluated on each page's document: the probe's $ names are not available there")
    if item_path is None or c.broken(path) or (style in ("field", "cursor") and expression is None):
        return None
    param = next_raw.get("param") if style == "cursor" else next_raw.get("page_param")
    return Pagination(items, item_path, style, rel=next_raw.get("link_header", "next"), next=expression, param=param,
                      start=next_raw.get("start", 1), max_pages=raw.get("max_pages", DEFAULT_MAX_PAGES))


def _content_type(headers: list[tuple[str, Template]]) -> Template | None:
    return next((t for k, t in headers if k.lower() == "content-type"), None)


def _body_escape(c: _Checker, path: Path, body: Template, headers: list[tuple[str, Template]]) -> Literal["json", "form"] | None:
    """How values go into a string body, by its Content-Type (or, without one, a body that starts like
    JSON): JSON-escaped into JSON strings, or form-encoded. Placeholders in any other body are refused,
    so that no value can change the body's structure."""
    content_type = _content_type(headers)
    media = None if content_type is None else content_type.source if not content_type.placeholders else "a template"
    skeleton = body.render(dict.fromkeys(body.placeholders, _PLACEHOLDER_MARK))
    if media is not None and _FORM_TYPE.match(media.strip()):
        return "form"
    if (media is None and skeleton.lstrip()[:1] in ("{", "[")) or (media is not None and _JSON_TYPE.match(media.strip())):
        _check_json_body(c, path, body, skeleton)
        return "json"
    if body.placeholders:
        c.add(path, f"a string body with placeholders needs a Content-Type whose escaping the exporter knows (application/json, "
                    f"application/*+json, application/x-www-form-urlencoded), not {media or 'none'}; or use a mapping body: "
                    "otherwise a value could change the body's structure")
    return None


def _check_mapping_body_type(c: _Checker, path: Path, body: JsonBody, headers: list[tuple[str, Template]]) -> None:
    """A mapping body is sent as JSON text; under another Content-Type the upstream would read that text
    by other rules (a form parser splits a value at its `&`), so a value could change the body's structure."""
    content_type = _content_type(headers)
    if content_type is None or not any(t.placeholders for t in json_templates(body.value)):
        return
    if content_type.placeholders or not _JSON_TYPE.match(content_type.source.strip()):
        media = "a template" if content_type.placeholders else content_type.source
        c.add(path, f"a mapping body is sent as JSON, so with placeholders its Content-Type must be JSON (application/json, "
                    f"application/*+json), not {media}: otherwise a value could change the body's structure; for a form, "
                    "write a string body with Content-Type application/x-www-form-urlencoded")


def _check_json_body(c: _Checker, path: Path, body: Template, skeleton: str) -> None:
    """Every placeholder of a JSON body inside a JSON string (not after a backslash), and the body JSON."""
    position = 0  # in the source, for the error's column
    in_string = escaped = False
    for literal, name in body.parts:
        for ch in literal:
            if escaped:
                escaped = False
            elif in_string and ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = not in_string
        position += len(literal) + literal.count("{") + literal.count("}")  # each came from {{ or }}
        if name is None:
            continue
        if not in_string or escaped:
            c.add(path, f"placeholder {{{name}}} must be inside a JSON string (\"{{{name}}}\"): values are inserted as escaped string contents",
                  offset=position)
            return
        position += len(name) + 2
    try:
        json.loads(skeleton)
    except ValueError as exc:
        c.add(path, f"the body is sent as JSON but is not JSON: {getattr(exc, 'msg', exc)}")


def _levels(c: _Checker, path: Path, raw: Any) -> tuple[tuple[Level, ...], frozenset[str]]:
    if raw is None:
        return (), frozenset()
    items = [raw] if isinstance(raw, str) else raw
    levels: list[Level] = []
    names: set[str] = set()
    for i, item in enumerate(items):
        p = path if isinstance(raw, str) else (*path, i)
        if not isinstance(item, (str, dict)):
            continue
        source, alias = (item, None) if isinstance(item, str) else (item.get("path", "@"), item.get("as"))
        if not isinstance(alias, str):
            alias = None  # the schema reported it
        expr_path = p if isinstance(item, str) else (*p, "path")
        # a level may use the names of the levels around it
        expr = c.expression(expr_path, source, frozenset(names))
        if alias is not None:
            if alias in CONTEXT_NAMES:
                c.add((*p, "as"), f"level name {alias!r} is reserved for the context ({', '.join(sorted(CONTEXT_NAMES))})")
            elif alias in names:
                c.add((*p, "as"), f"level name {alias!r} is already used by an outer level")
            names.add(alias)
        if expr is not None:
            levels.append(Level(expr, alias, isinstance(item, dict) and item.get("optional") is True))
    return tuple(levels), frozenset(names)


# labels Prometheus sets on every scraped series itself: it renames a scraped one exported_NAME
_TARGET_LABELS = ("job", "instance")


def _lint_label(c: _Checker, path: Path, label: str) -> None:
    if label in _TARGET_LABELS:
        c.add(path, f"label {label!r} is set by Prometheus on every scraped series: it renames this one exported_{label}, "
                    "unless the scrape config sets honor_labels: true", "warning", at_key=True)
    # promtool's lints of a label that hold for every type (le and quantile are _reserved_label's)
    for reason, hint in label_lint(label, "untyped"):
        c.add(path, f"label {label!r}: {_PROMTOOL_FAILS} ({reason}): {hint}", "warning", at_key=True)


# what a warning of promtool's lints says: whoever runs it on an answer takes the answer for rejected
_PROMTOOL_FAILS = "`promtool check metrics` fails on it"


def _lint_name(c: _Checker, path: Path, name: str, mtype: str, at_key: bool = False) -> None:
    """The lints of `promtool check metrics` on the family's name as the text format writes it (`names.lint`), so that
    a spec passing `check --strict` makes answers promtool accepts; and a few of our own on the name as written."""
    if mtype == "counter" and not name.endswith("_total"):
        c.add(path, f"counter {name!r} should end with _total", "warning", at_key=at_key)
    written = text_name(name, mtype)
    problems = lint(written, "gauge" if mtype in ("info", "stateset") else mtype)
    for reason, hint in problems:
        c.add(path, f"metric name {written!r}: {_PROMTOOL_FAILS} ({reason}): {hint}", "warning", at_key=at_key)
    if mtype == "stateset":  # its state label is named as the metric
        for reason, hint in label_lint(name, "gauge"):
            c.add(path, f"the state label {name!r} of the stateset: {_PROMTOOL_FAILS} ({reason}): {hint}", "warning", at_key=at_key)
    if any("unit" in reason for reason, _ in problems):
        return
    for pattern, hint in _UNIT_HINTS:
        if pattern.search(name):
            c.add(path, f"metric name {name!r}: {hint}", "warning", at_key=at_key)
            break


# what a help text cannot hold: control characters but tab and line feed (written `\n`); a CR, which
# prometheus_client's parsers take for the end of a line, is written as a line break but is most likely a mistake
_HELP_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _blank_help(text: object) -> bool:
    """Whether `text` is a help of spaces and tabs only: none (`# HELP x  ` is read as an empty help, which promtool
    rejects: "no help text"), so the default help is written instead."""
    return isinstance(text, str) and not text.strip(" \t")


def _given_help(text: object) -> str | None:
    """A help as the spec gives it, None when it gives none (not a string, or _blank_help)."""
    return text if isinstance(text, str) and not _blank_help(text) else None


def _help_text(c: _Checker, path: Path, text: object) -> None:
    if isinstance(text, str) and (control := _HELP_CONTROL.search(text)):
        c.add(path, f"help contains the control character {control.group()!r}: only tab and line breaks (\\n) are written", offset=control.start())


def _reserved_label(label: str, mtype: str | None, name: str) -> tuple[str, Severity] | None:
    """Why a label of a rule of type `mtype` (None: unknown) named `name` cannot be `label`, whether
    the rule or its module sets it: the exposition adds a label of that name itself."""
    if mtype == "stateset" and label == name:
        return f"label {label!r} is the stateset's own state label", "error"
    if (mtype, label) in (("histogram", "le"), ("summary", "quantile")):
        return f"label {label!r} is the {mtype}'s own label of its {'buckets' if label == 'le' else 'quantiles'}", "error"
    if label in ("le", "quantile"):
        fails = "".join(f": {_PROMTOOL_FAILS} ({reason})" for reason, _ in label_lint(label, mtype)[:1])
        return f"label {label!r} is for histograms and summaries; Prometheus tools treat it specially{fails}", "warning"
    return None


def _secret_parameters_in_labels(c: _Checker, path: Path, labels: list[tuple[str, Template]]) -> None:
    """A module label may not take a parameter whose name says secret (its default is a secret of the
    spec, a caller's value one of the scrape config): it would be a label value of every series."""
    for label, template in labels:
        for name in sorted(n for n in template.placeholders if is_secret_name(n)):
            c.add((*path, label), f"label {label!r} takes {{{name}}}, a parameter whose name says it is secret: label values are stored by "
                                  "Prometheus and shown to whoever can query it; secret parameters go into requests only")


def _credential_parameters_in_answer(c: _Checker, path: Path, labels: list[tuple[str, Template]], metrics: list[tuple[Path, Metric]],
                                     placed: frozenset[str]) -> None:
    """A parameter the module sends where a credential goes (`Authorization: 'Bearer {tok}'`) is a credential of the
    caller's, whatever its name: a module label may not take it, and `$params` never holds it (as a secret-named one)."""
    for label, template in labels:
        for name in sorted(n for n in template.placeholders & placed if not is_secret_name(n)):
            c.add((*path, "labels", label), f"label {label!r} takes {{{name}}}, a parameter the module sends as a credential: label values "
                                            "are stored by Prometheus and shown to whoever can query it; credentials go into requests only")
    for where, metric in metrics:
        at_label = {id(e): (*where, "labels", name) for name, e in metric.labels}
        for expression in metric.expressions():
            fields = expression.fields
            if expression.on_context and fields is not None and len(fields) > 1 and fields[0] == "params" and fields[1] in placed \
                    and not is_secret_name(fields[1]):
                c.add(at_label.get(id(expression), where), f"{expression.source!r} reads a parameter the module sends as a credential: $params "
                      "never holds one (its value would become a label or sample of the answer, stored by Prometheus); credentials go into requests only")


def _check_module_labels(c: _Checker, path: Path, labels: Iterable[str], metrics: list[tuple[Path, Metric]]) -> None:
    """The reserved names of `_reserved_label` among the module's `labels`, for each of its rules, at the module's label."""
    for label in labels:
        found: dict[tuple[str, Severity], list[str]] = {}
        for mp, metric in metrics:
            reserved = _reserved_label(label, metric.type, metric.name)
            if reserved is not None:
                found.setdefault(reserved, []).append(f"{metric.name} ({format_path(mp)})")
        for (message, severity), rules in found.items():
            if severity == "error" or not any(s == "error" for _, s in found):
                c.add((*path, "labels", label), f"module {message}, for {', '.join(rules)}", severity, at_key=True)


def _metric(c: _Checker, path: Path, raw: dict[str, Any], module_endpoints: list[str], module_labels: set[str]) -> Metric | None:
    declared = c.declared(path, raw)  # what was written (a typo as the key it meant), even when the schema rejected its value
    raw = c.clean(path, raw)
    if not isinstance(raw.get("name"), str):
        return None
    name: str = raw["name"]
    # a type the schema rejected (`statset`, or `tpye: info`) is unknown: no check that depends on it
    type_known = "type" in raw or "type" not in declared
    mtype = cast(MetricType, raw.get("type", "gauge"))
    if name.startswith(RESERVED_PREFIX):
        c.add((*path, "name"), f"metric names starting with {RESERVED_PREFIX!r} are reserved for the probe's own metrics")
    if type_known and mtype == "info" and not name.endswith("_info"):
        c.add((*path, "name"), f"info metric {name!r} must end with _info")
    entries = raw.get("values") if isinstance(raw.get("values"), dict) else {}
    _help_text(c, (*path, "help"), raw.get("help"))
    for suffix, entry in _items(entries):
        _help_text(c, (*path, "values", suffix, "help"), entry.get("help") if isinstance(entry, dict) else None)
    blank = _blank_help(raw.get("help"))  # a help that is not a string is the schema's error, not this warning
    if ("help" not in declared or blank) and not (
            entries and all(isinstance(v, dict) and "help" in v and not _blank_help(v["help"]) for v in entries.values())):
        c.add((*path, "help" if blank else "name"), f"metric {name!r} has no help" + (
            " (one of spaces and tabs only is none: the default help is written)" if blank else ""), "warning")
    endpoint = raw.get("endpoint")
    if endpoint is None:
        if len(module_endpoints) > 1 and "endpoint" not in declared:
            c.add(path, f"metric {name!r} must name its endpoint: the module has several ({', '.join(module_endpoints)})")
        endpoint = module_endpoints[0] if module_endpoints else DEFAULT_ENDPOINT
    elif module_endpoints and endpoint not in module_endpoints:
        c.add((*path, "endpoint"), f"unknown endpoint {endpoint!r}: the module has {', '.join(module_endpoints)}")
    levels, level_names = _levels(c, (*path, "each"), raw.get("each"))
    if type_known:
        _wrong_type_keys(c, path, declared, mtype)
    outputs: list[Output] = []
    has_value, has_values = "value" in declared, "values" in declared
    distribution = None
    if mtype in _DISTRIBUTION_KEYS:
        for key in ("value", "values", "value_map", "default"):
            if key in raw:  # not a typo's meaning (`valeu`), which has its own problem
                c.add((*path, key), f"a {mtype} takes {_DISTRIBUTION_KEYS[mtype]}, not `{key}`", at_key=True)
        distribution = _distribution(c, path, raw, declared, mtype, level_names)
        outputs.append(Output(name, None))
    elif has_value and has_values:
        c.add((*path, "values"), "use either `value` or `values`, not both")
    elif not type_known and not has_value and not has_values:
        pass  # an info metric needs neither
    elif mtype == "info":
        if has_values:
            c.add((*path, "values"), "info metrics take no `values`: their labels carry the data")
        outputs.append(Output(name, None))
    elif not has_value and not has_values:
        c.add(path, f"metric {name!r} needs `value` (or `values`)")
    elif has_value:
        outputs.append(Output(name, c.expression((*path, "value"), raw.get("value"), level_names) or _UNUSABLE))
    else:
        if type_known and mtype == "stateset":
            c.add((*path, "values"), "stateset metrics take one `value`: the current state")
        for suffix, entry in _items(raw.get("values")):
            entry_path: Path = (*path, "values", suffix)
            own_help = None
            if isinstance(entry, dict):
                entry_path, own_help, entry = (*entry_path, "value"), entry.get("help"), entry.get("value")
            e = c.expression(entry_path, entry, level_names)
            outputs.append(Output(f"{name}_{suffix}", e or _UNUSABLE, _given_help(own_help)))
            if e is not None and type_known:
                _lint_name(c, (*path, "values", suffix), f"{name}_{suffix}", mtype, at_key=True)
    if not has_values and type_known:
        _lint_name(c, (*path, "name"), name, mtype)

    labels: list[tuple[str, Expression]] = []
    for label, source in _items(raw.get("labels")):
        lp = (*path, "labels", label)
        if label.startswith("__"):
            c.add(lp, f"label names starting with __ are reserved: {label!r}", at_key=True)
        elif label in module_labels:
            c.add(lp, f"label {label!r} is already set by the module's labels", at_key=True)
        elif (reserved := _reserved_label(label, mtype if type_known else None, name)) is not None:
            c.add(lp, *reserved, at_key=True)
        else:
            _lint_label(c, lp, label)
        labels.append((label, c.expression(lp, source, level_names) or _UNUSABLE))
    states = tuple(label_text(s) for s in raw.get("states", ()))
    if type_known and mtype == "stateset" and ":" in name:
        # the text format and Prometheus refuse the whole answer on a label name with a colon
        c.add((*path, "name"), f"stateset metric {name!r}: its name is also its state label's, and a label name cannot contain ':'")
    elif type_known and mtype == "stateset" and name.startswith("__"):
        c.add((*path, "name"), f"stateset metric {name!r}: its name is also its state label's, and label names starting with __ are reserved")
    if type_known and mtype == "stateset" and "states" not in declared:
        c.add(path, f"stateset metric {name!r} needs `states`: every possible state")
    if states and type_known and mtype != "stateset":
        c.add((*path, "states"), "`states` is only for type stateset")
    timestamp = None
    if "timestamp" in raw:
        timestamp = c.expression((*path, "timestamp"), raw["timestamp"], level_names)
        if mtype == "info":
            # OpenMetrics parsers take all series of an info family for one group: one without a timestamp,
            # or another rule's, and they reject the whole answer
            c.add((*path, "timestamp"), "info metrics take no `timestamp`", at_key=True)
    elif "timestamp_unit" in raw and "timestamp" not in declared:
        c.add((*path, "timestamp_unit"), "timestamp_unit without timestamp")
    value_map = {k: f for k, v in _items(raw.get("value_map")) if isinstance(v, (int, float)) and (f := _number(c, (*path, "value_map", k), v)) is not None}
    default = _number(c, (*path, "default"), raw["default"]) if "default" in raw else None
    scale = _number(c, (*path, "scale"), raw["scale"]) if "scale" in raw else 1.0
    if "scale" in raw and mtype in ("info", "stateset"):
        c.add((*path, "scale"), f"`scale` is for numbers: a {mtype} metric has none")
    elif scale is not None and not scale > 0 and mtype in _DISTRIBUTION_KEYS:  # it scales bounds and sums: their order and sign must hold
        c.add((*path, "scale"), f"the `scale` of a {mtype} must be greater than 0")
    duplicates = cast(Duplicates, raw.get("duplicates", "first"))
    if duplicates == "sum" and mtype not in ("gauge", "counter", "untyped"):
        c.add((*path, "duplicates"), f"`duplicates: sum` adds up values, which {mtype} metrics do not have (use first or last)")
    if not type_known or "labels" in declared - set(raw):
        return None  # its family is unknown: nothing to compare the other rules with
    # returned even when broken, with _UNUSABLE for what did not compile, so that its family is
    # checked against the others (the module is not used when any of its rules is broken)
    return Metric(
        name=name,
        help=_given_help(raw.get("help")) or "",
        type=mtype,
        endpoint=endpoint,
        each=levels,
        outputs=tuple(outputs),
        labels=tuple(labels),
        value_map=MappingProxyType(value_map),
        default=default,
        timestamp=timestamp,
        timestamp_scale=0.001 if raw.get("timestamp_unit") == "milliseconds" else 1.0,
        states=states,
        scale=1.0 if scale is None else scale,
        duplicates=duplicates,
        distribution=distribution,
    )


# what each type of distribution takes instead of `value`; the keys no other type takes
_DISTRIBUTION_KEYS = {"histogram": "`buckets`, `sum` and `count`", "summary": "`quantiles`, `sum` and `count`"}
_ONLY_FOR = {"buckets": ("histogram",), "cumulative": ("histogram",), "quantiles": ("summary",),
             "sum": ("histogram", "summary"), "count": ("histogram", "summary")}


def _distribution(c: _Checker, path: Path, raw: dict[str, Any], declared: set[str], mtype: str, level_names: frozenset[str]) -> Distribution | None:
    """The expressions of a histogram (`buckets`, `sum`, `count`) or a summary (`quantiles`, `sum`, `count`)."""
    points_key = "buckets" if mtype == "histogram" else "quantiles"
    needed = (points_key, "sum") if mtype == "histogram" else (points_key,)
    missing = [f"`{key}`" for key in needed if key not in declared]  # a key with a typo has its own error
    if missing:
        c.add(path, f"{mtype} metric {raw['name']!r} needs {' and '.join(missing)}")
    points = c.expression((*path, points_key), raw.get(points_key), level_names)
    sum_, count = (c.expression((*path, key), raw[key], level_names) if key in raw else None for key in ("sum", "count"))
    if points is None:
        return None
    return Distribution(points, sum_, count, bool(raw.get("cumulative", True)))


def _wrong_type_keys(c: _Checker, path: Path, declared: set[str], mtype: str) -> None:
    for key in sorted(declared & _ONLY_FOR.keys()):
        if mtype not in _ONLY_FOR[key]:
            c.add((*path, key), f"`{key}` is only for type {' and '.join(_ONLY_FOR[key])}, not {mtype}", at_key=True)


@dataclass(frozen=True)
class _Family:
    type: str
    labels: frozenset[str]
    path: Path
    name: str = ""
    at: Path = ()  # where the name is written: the rule's `name`, or its `values` key; () for the probe's own metrics

    @property
    def at_key(self) -> bool:
        return len(self.at) > 1 and self.at[-2] == "values"


def _check_families(c: _Checker, module: str, metrics: list[tuple[Path, Metric]], static: set[str]) -> None:
    """Two rules may feed one metric only with the same type and label names; two metrics may not
    take one name in the exposition, nor a name of the probe's own metrics."""
    seen: dict[str, _Family] = {}
    takers: dict[str, list[_Family]] = {name: [_Family("gauge", frozenset(), (), name)] for name in PROBE_METRICS}
    for path, metric in metrics:
        label_names = frozenset(n for n, _ in metric.labels) | static
        for output in metric.outputs:
            at: Path = (*path, "name") if output.name == metric.name else (*path, "values", output.name[len(metric.name) + 1:])
            family = _Family(metric.type, label_names, path, output.name, at)
            first = seen.setdefault(output.name, family)
            if first is family:
                # a rule named probe_… has its error already; a clash with the probe's metrics would say it twice
                _check_names(c, family, takers, probe_metrics=not metric.name.startswith(RESERVED_PREFIX))
                continue
            where = f"modules.{module}.metrics[{first.path[-1]}]"
            if first.type != family.type:
                c.add((*path, "name"), f"metric {output.name!r} is also produced by {where} with type {first.type}, here {family.type}")
            elif first.labels != family.labels:
                c.add((*path, "labels"), f"metric {output.name!r} is also produced by {where} with labels {sorted(first.labels)}, here {sorted(family.labels)}")


def _check_names(c: _Checker, family: _Family, takers: dict[str, list[_Family]], probe_metrics: bool) -> None:
    """Report `family` and each family before it that takes one of its exposition names, at both places."""
    own = text_name(family.name, family.type)  # the name of both formats first: the one a user recognises
    clashes: dict[int, tuple[_Family, str]] = {}
    for name in sorted(exposition_names(family.name, family.type), key=lambda n: (n != own, n)):
        for other in takers.get(name, ()):
            if other.at or probe_metrics:
                clashes.setdefault(id(other), (other, name))
        takers.setdefault(name, []).append(family)
    for other, name in clashes.values():
        if not other.at:
            c.add(family.at, f"{family.type} {family.name!r} takes the name {name}{_reason(name, family)}, which the probe's own metric "
                             f"{other.name} has: {_REJECTED}; rename the metric", at_key=family.at_key)
            continue
        c.add(family.at, _clash(c, family, other, name), at_key=family.at_key)
        c.add(other.at, _clash(c, other, family, name), at_key=other.at_key)


_REJECTED = "Prometheus's parsers reject a whole answer that has a name twice"


def _clash(c: _Checker, family: _Family, other: _Family, name: str) -> str:
    line, col = c.marks.of_key(other.at) if other.at_key else c.marks.of_value(other.at)
    return (f"{family.type} {family.name!r} and {other.type} {other.name!r} of {format_path(other.path)} ({c.file}:{line}:{col}) "
            f"both take the name {name}{_reason(name, family, other)}: {_REJECTED}; rename one of them")


def _reason(name: str, *families: _Family) -> str:
    how = [h for f in families if (h := _naming(f, name))]
    return f" ({'; '.join(how)})" if how else ""


def _naming(family: _Family, name: str) -> str | None:
    """How `family` comes to take `name`, when that is not the name the spec gave it."""
    if name == family.name:
        return None
    if name == text_name(family.name, family.type):
        return f"the samples of {family.type} {family.name!r} are named {name}"
    if name == family_name(family.name, family.type):
        return f"OpenMetrics names the family of {family.type} {family.name!r} {name}"
    return f"OpenMetrics reserves {name} for the samples of {family.type} {family.name!r}"


def _module(c: _Checker, name: str, raw: dict[str, Any]) -> Module | None:
    path: Path = ("modules", name)
    declared = set(raw)
    raw = c.clean(path, raw)
    params = _parameters(c, (*path, "parameters"), raw.get("parameters"))
    # every declared parameter, even one with an error, so that templates using it are not blamed too
    names = frozenset({"target", "module", *(p for p, _ in _items(raw.get("parameters")))})
    secrets = _secrets(c, (*path, "secrets"), raw.get("secrets"), names)
    login_names = names | {n for n, _ in _items(raw.get("secrets"))}
    module_client = ((*path, "http_client_config"), raw["http_client_config"]) if isinstance(raw.get("http_client_config"), dict) else None
    raw_login = raw.get("login") if isinstance(raw.get("login"), dict) else None
    login = _login(c, (*path, "login"), raw_login, login_names, module_client) if raw_login is not None else None
    request_names = login_names | _login_value_names(c, (*path, "login", "values"), (raw_login or {}).get("values"), login_names)
    labels = [(k, t) for k, v in _items(raw.get("labels")) if (t := c.template((*path, "labels", k), v, names)) is not None]
    _secret_parameters_in_labels(c, (*path, "labels"), labels)
    module_labels = {k for k, _ in _items(raw.get("labels"))}
    for label in sorted(module_labels):
        if label.startswith("__"):
            c.add((*path, "labels", label), f"label names starting with __ are reserved: {label!r}", at_key=True)
        _lint_label(c, (*path, "labels", label), label)
    # endpoints that failed the schema as a whole leave no names to check metrics against
    raw_endpoints = raw.get("endpoints", {}) if "endpoints" in declared else {DEFAULT_ENDPOINT: {}}
    endpoints = {}
    if isinstance(raw.get("http_client_config"), dict):
        _client_config(c, [((*path, "http_client_config"), raw["http_client_config"])])  # its problems, even if every endpoint overrides it
    for ep_name, ep_raw in _items(raw_endpoints):
        ep_path = (*path, "endpoints", ep_name)
        if not isinstance(ep_raw, dict):
            continue
        if (ep := _endpoint(c, ep_path, ep_name, c.clean(ep_path, ep_raw), request_names, module_client)) is not None:
            endpoints[ep_name] = ep
    timeout = DEFAULT_TIMEOUT
    if "timeout" in raw:
        timeout = _duration(c, (*path, "timeout"), raw["timeout"]) or DEFAULT_TIMEOUT
    metrics: list[tuple[Path, Metric]] = []
    raw_metrics = raw.get("metrics")
    for i, m_raw in enumerate(raw_metrics if isinstance(raw_metrics, list) else ()):
        mp = (*path, "metrics", i)
        if not isinstance(m_raw, dict):
            continue
        metric = _metric(c, mp, m_raw, list(raw_endpoints), module_labels)
        if metric is not None:
            metrics.append((mp, metric))
    _check_families(c, name, metrics, module_labels)
    _check_module_labels(c, path, sorted(module_labels), metrics)
    allow = _target_patterns(c, (*path, "targets", "allow"), (raw.get("targets") or {}).get("allow"))
    defaults = {n: p.default for n, p in params.items() if p.default is not None}
    credential_names = (request_names - names) | secret_parameter_names(raw.get("parameters"))
    requests = [((*path, "endpoints", n), c.clean((*path, "endpoints", n), raw_endpoints[n]) if n in raw_endpoints else {}, ep)
                for n, ep in endpoints.items()] + ([((*path, "login"), raw_login or {}, login.request)] if login else [])
    placed = frozenset(n for _, raw_request, _ in requests for credential in request_credentials(raw_request, defaults, credential_names)
                       for n in credential.placeholders if n in params)
    _credential_parameters_in_answer(c, path, labels, metrics, placed)
    if not allow and "targets" not in declared:
        for where, offset, problem in _credentials_to_target_host(requests, defaults, credential_names, module_client):
            c.add(where, f"{problem}: declare `targets: {{allow: [...]}}` in the module so they can only be sent to the hosts you mean",
                  offset=offset)
    if (login is not None or "login" not in raw) and len(endpoints) == len(raw_endpoints):  # a broken request's placeholders are unknown
        _unused_login_names(c, path, [*endpoints.values(), *([login.request] if login else [])], secrets, request_names - login_names)
    if c.broken(path):
        return None
    uses_target = any("target" in t.placeholders for t in _templates([*endpoints.values(), *([login.request] if login else [])], labels)) or any(
        "target" in e.context_names for m in metrics for e in m[1].expressions())
    module_metrics = [m for _, m in metrics]
    return Module(
        name=name,
        endpoints=MappingProxyType(endpoints),
        metrics=tuple(module_metrics),
        timeout=timeout,
        labels=tuple(labels),
        parameters=MappingProxyType(params),
        target_allow=tuple(allow),
        needs_target=uses_target,
        series_limit=raw.get("series_limit"),
        label_value_length_limit=raw.get("label_value_length_limit", DEFAULT_LABEL_VALUE_LENGTH_LIMIT),
        body_size_limit=raw.get("body_size_limit", DEFAULT_BODY_SIZE_LIMIT),
        projections=MappingProxyType(projections(module_metrics, endpoints)),
        secrets=MappingProxyType(secrets),
        login=login,
        credential_parameters=placed,
    )


# -- secrets and login (issue 14) ------------------------------------------------------------------

_LOGIN_VALUE_KEYS = ("values", "expires_in")  # the login's own keys; the others are those of an endpoint's request


def _secrets(c: _Checker, path: Path, raw: Any, names: frozenset[str]) -> dict[str, ModuleSecret]:
    found: dict[str, ModuleSecret] = {}
    for name, decl in _items(raw):
        p = (*path, name)
        if name in names:
            c.add(p, f"secret {name!r} has the name of a {'parameter' if name not in ('target', 'module') else 'placeholder of every module'}", at_key=True)
            continue
        if c.broken(p) or not isinstance(decl, dict):
            continue
        if "file" in decl:
            _file_warning(c, (*p, "file"), decl["file"])
        found[name] = ModuleSecret(name, decl.get("file"), decl.get("env"))
    return found


def _login_value_names(c: _Checker, path: Path, raw: Any, names: frozenset[str]) -> frozenset[str]:
    """The placeholders a login gives its endpoints (a value named like a parameter or secret is reported)."""
    found = set()
    for name, _ in _items(raw):
        if name in names:
            c.add((*path, name), f"login value {name!r} has the name of a parameter, a secret or {{target}}/{{module}}", at_key=True)
        else:
            found.add(name)
    return frozenset(found)


def _login(c: _Checker, path: Path, raw: dict[str, Any], names: frozenset[str], module_client: tuple[Path, dict[str, Any]] | None) -> Login | None:
    """The login request (checked as an endpoint's), its values and their lifetime."""
    raw = c.clean(path, raw)
    request = _endpoint(c, path, "login", {k: v for k, v in raw.items() if k not in _LOGIN_VALUE_KEYS}, names, module_client)
    values: list[LoginValue] = []
    for name, source in _items(raw.get("values")):
        p = (*path, "values", name)
        if isinstance(source, dict):
            if isinstance(source.get("cookie"), str):
                values.append(LoginValue(name, cookie=source["cookie"]))
            elif isinstance(source.get("header"), str):
                values.append(LoginValue(name, header=source["header"]))
            continue
        expression = c.expression(p, source)
        if expression is not None and expression.on_context:
            c.add(p, "a login value is read from the login's answer: `$` context names are not available there")
        elif expression is not None:
            values.append(LoginValue(name, path=expression))
    expires_in: float | Expression | None = None
    if "expires_in" in raw:
        source = raw["expires_in"]
        if isinstance(source, (int, float)) or (isinstance(source, str) and _DURATION.fullmatch(source)):
            expires_in = _duration(c, (*path, "expires_in"), source)
        else:
            expires_in = c.expression((*path, "expires_in"), source)
            if expires_in is not None and expires_in.on_context:
                c.add((*path, "expires_in"), "expires_in is read from the login's answer: `$` context names are not available there")
    if request is None or c.broken(path):
        return None
    return Login(request, tuple(values), expires_in)


def _unused_login_names(c: _Checker, path: Path, requests: list[Endpoint], secrets: Iterable[str], values: Iterable[str]) -> None:
    used = {n for ep in requests for n in ep.placeholders}
    for where, names in ((("secrets",), secrets), (("login", "values"), values)):
        for name in sorted(set(names) - used):
            c.add((*path, *where, name), f"{{{name}}} is used by no request of the module", "warning", at_key=True)


def _target_patterns(c: _Checker, path: Path, raw: Any) -> list[Pattern]:
    patterns = []
    for i, source in enumerate(raw if isinstance(raw, list) else ()):
        if (pattern := c.regex((*path, i), source)) is not None:
            patterns.append(pattern)
            if (at := wildcard_in_host(pattern.pattern)) is not None:
                c.add((*path, i), "this wildcard in the host matches '/', '?', '#', '@' or '.' too: 'https://.+\\.example\\.com' lets "
                      "'https://evil.test?.example.com' through, 'https://api\\.example\\.com.*' 'https://api.example.com.evil.test'; "
                      "write the host's characters (e.g. [a-z0-9-]+) and end the host with a :port or / that is not optional "
                      "('(:443)?.*' lets the host go on)", "warning", offset=at)
            elif (at := every_host(pattern.pattern)) is not None:
                c.add((*path, i), "this pattern lets every host through ('https://evil.test/' too): the allowlist holds none back, so whatever "
                      "the module sends goes wherever the caller points; write the hosts you mean (e.g. 'https://[a-z0-9-]+\\.example\\.com')",
                      "warning", offset=at)
    return patterns


def _credentials_to_target_host(requests: Iterable[tuple[Path, dict[str, Any], Endpoint]], defaults: dict[str, str],
                                credential_names: frozenset[str], module_client: tuple[Path, dict[str, Any]] | None,
                                ) -> Iterator[tuple[Path, int | None, str]]:
    """Where a request (at its path, as written, compiled) would send credentials to a host the probe's
    caller picks, through the target or any other placeholder in the URL's scheme, host or port or in a
    routing header, Host, X-Forwarded-Host... (Endpoint.host_placeholders; one in the userinfo picks no host;
    SSRF with secrets): each place secrets.request_credentials finds in it, the one definition redaction
    learns from too, and its http_client_config; (path, offset in the string there, what)."""
    for path, raw, ep in requests:
        picked = sorted(ep.host_placeholders)
        if not picked:
            continue
        what = f"endpoint {ep.name}" if path[-2] == "endpoints" else "the login"
        whose = "the host of the target" if picked == ["target"] else "a host taken from " + ", ".join(f"{{{n}}}" for n in picked)
        if routing := [name for name, _ in ep.routing_headers]:
            whose += f" (through its {', '.join(routing)} header: a reverse proxy or an ingress routes by it)"
        for credential in request_credentials(raw, defaults, credential_names):
            yield (*path, *credential.path), credential.offset, f"{what} sends credentials ({credential.what}) to {whose}"
        if ep.client.sends_credentials:
            own = raw.get("http_client_config")
            where = (*path, "http_client_config") if isinstance(own, dict) and set(own) & {*_AUTH_KEYS, "tls_config"} else \
                module_client[0] if module_client is not None else path
            yield where, None, f"{what} sends credentials (http_client_config) to {whose}"


def _templates(endpoints: Iterable[Endpoint], labels: list[tuple[str, Template]]) -> Iterator[Template]:
    for ep in endpoints:
        yield from ep.templates()
    yield from (t for _, t in labels)


def load_text(text: str, file: str) -> tuple[Spec | None, list[Problem]]:
    """Compile a spec; return it (None when any error was found) and every problem."""
    return load_texts([(file, text)], file)


@dataclass
class _File:
    """One file of a spec, compiled: its modules, and where their names are written."""

    file: str
    modules: dict[str, Module]
    # what only one file of a set may define: its modules ("modules", NAME) and top-level settings (KEY,), at their keys
    defined: dict[Path, tuple[int, int]]
    problems: list[Problem]
    secrets: frozenset[str]
    bare_keys: frozenset[Path] = frozenset()  # its keys written without a value (Marks.bare_keys): a problem of another file quoting one conceals it too


def _load_file(file: str, text: str) -> _File:
    data, marks, problems = load_yaml(text, file, spec_keys())
    if data is None:
        return _File(file, {}, {}, problems, frozenset())
    report = check_schema(data, file, marks)
    # the YAML's own problems (an unknown tag, a key written twice) leave a value that is still
    # checked, as read: they are not among those that make the checks skip a value
    c = _Checker(file, marks, list(report.problems), report.meant)
    modules: dict[str, Module] = {}
    defined: dict[Path, tuple[int, int]] = {}
    if isinstance(data, dict) and isinstance(data.get("modules"), dict):
        for name, raw in data["modules"].items():
            defined["modules", name] = marks.of_key(("modules", name))
            if isinstance(raw, dict):
                module = _module(c, name, raw)
                if module is not None:
                    modules[name] = module
    if isinstance(data, dict):
        defined |= {(key,): marks.of_key((key,)) for key in data if key in _top_level_settings()}
    return _File(file, modules, defined, marks.concealed([*problems, *c.problems], file), spec_secrets(data), frozenset(marks.bare_keys))


@functools.cache
def _top_level_settings() -> frozenset[str]:
    """The top-level keys of the schema but `modules` (none yet): one file of a set sets each."""
    return frozenset(json.loads(schema_text())["properties"]) - {"modules"}


def _defined_twice(files: list[_File]) -> Iterator[Problem]:
    """A module name defined in two files of one spec, or a top-level setting set in two: a problem
    at each place, naming the other."""
    first: dict[Path, tuple[_File, tuple[int, int]]] = {}
    for f in files:
        for path, at in f.defined.items():
            if path not in first:
                first[path] = (f, at)
                continue
            other, (line, col) = first[path]
            where = other.file
            what = f"module {path[1]!r} is defined twice" if len(path) == 2 else f"{path[0]!r} is set in two files"
            # both problems quote the name: concealed as each file's own problems are (Marks.concealed) when either
            # file writes it without a value, which may be a value pasted in braces
            both = Marks(bare_keys={*f.bare_keys, *other.bare_keys})
            yield from both.concealed([Problem(f.file, at[0], at[1], path, f"{what}: also in {where}:{line}:{col}")], f.file)
            yield from both.concealed([Problem(where, line, col, path, f"{what}: also in {f.file}:{at[0]}:{at[1]}")], where)


def load_texts(texts: Sequence[tuple[str, str]], source: str) -> tuple[Spec | None, list[Problem]]:
    """Compile the files (file, text) of `source` into one spec: their modules together. Each file
    is a spec of its own (its anchors are its own); a module name may be defined in one file only.
    Return the spec (None when any error was found) and every problem, file by file."""
    files = [_load_file(file, text) for file, text in texts]
    twice = list(_defined_twice(files))
    secrets = frozenset().union(*(f.secrets for f in files))
    problems = [p for f in files for p in sorted({*f.problems, *(t for t in twice if t.file == f.file)},
                                                 key=lambda p: (p.line, p.column, p.severity, p.message))]
    ordered = redacted(problems, secrets)
    if any(p.severity == "error" for p in ordered):
        return None, ordered
    modules = {name: module for f in files for name, module in f.modules.items()}
    origins = {name: f.file for f in files for name in f.modules}
    return Spec(source, MappingProxyType(modules), spec_sha256(source, texts), secrets, MappingProxyType(origins)), ordered


def redacted(problems: list[Problem], secrets: frozenset[str]) -> list[Problem]:
    """Problems as they may be shown: a message quoting a value (a template with a stray brace in a
    secret header) never shows a secret of the spec, wherever the problem is printed or served."""
    redact = Redactor(secrets)
    return [dataclasses.replace(p, message=redact(p.message)) for p in problems]


def load_spec(source: str) -> Spec:
    """Load and compile the file, directory or glob `source` (sources.py); raise SpecError with
    every problem when it has errors, SpecFileError when it gives no file to read."""
    spec, problems = load_texts(read_spec_files(source), source)
    if spec is None:
        raise SpecError(problems)
    return spec
