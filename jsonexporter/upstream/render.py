"""Requests rendered from a module's endpoints: templates filled in, parameters quoted for where they
go (a host, a path, a JSON or form body), the URL a target or parameter makes held to the module's allowlist."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from yarl import URL

from jsonexporter.secrets import Redactor, is_secret_name, redact_patterns
from jsonexporter.spec.expressions import Template
from jsonexporter.spec.functions import Pattern
from jsonexporter.spec.model import Endpoint, JsonBody, Module
from jsonexporter.spec.projection import Projection
from jsonexporter.upstream.client import basic_credentials
from jsonexporter.upstream.hops import BASE_HEADERS, Hop, url_allowed
from jsonexporter.urls import UnusableURL, checked_url


class InvalidRequest(Exception):
    """The probe's target or parameters make an unusable request (HTTP 400 for the scraper)."""


class TargetNotAllowed(InvalidRequest):
    """The target, or a host taken from a parameter, is outside the module's allowlist (HTTP 403 for the scraper)."""


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    endpoint: Endpoint
    method: str
    url: URL
    headers: Mapping[str, str]
    body: bytes | None
    allow: tuple[Pattern, ...] = ()  # the module's targets.allow, for redirects
    projection: Projection | None = None  # what the module's rules read of the answer (spec/projection.py)
    # the values of `secrets`, a login's and the probe's credentials in it (probe_secrets), whatever their placeholders' names:
    # hops.next_hop holds them back from other origins
    secrets: frozenset[str] = field(default=frozenset(), repr=False)
    # its first hop when http_client_config adds nothing to it (fetch._first_hop), made at its first request: a memo set once in
    # this frozen request (object.__setattr__), so that a request kept across probes (upstream._rendered) makes it once (23 kIr -> 1)
    first_hop: Hop | None = field(default=None, init=False, compare=False, repr=False)


# Traces and messages write URLs as they are: they leave the process through the one Redactor (the
# server's middleware, the log formatter, the commands), which looks for every known value first and
# applies the pattern rules after. The pattern rules applied here, before it, would hide part of a
# value (`user:pw@` in a login ticket) and leave the rest for the Redactor to miss.


def redact_target(target: str, parent: Redactor | None = None) -> str:
    """A target as it may be shown, with or without a scheme (`user:pw@host:8080` too): its credentials hidden whole
    by target_redactor, whatever they hold (a passphrase's spaces, which end a userinfo for the pattern rules), then
    the pattern rules (and the values of `parent`, the process's Redactor, when given). The one way every place
    shows a target: the log, the recent probes, the trace, `$target` and a module label's `{target}`."""
    redactor = target_redactor(target, parent) or parent
    return redactor(target) if redactor is not None else redact_patterns(target)


def _userinfo(target: str) -> str | None:
    """The userinfo of a target, as written: what comes before the last `@` of its authority (after `scheme://`,
    if any, up to the first `/`, `?` or `#`, as yarl reads it); None without one."""
    authority = target.partition("://")[2] if "://" in target else target
    for end in "/?#":
        authority = authority.partition(end)[0]
    userinfo, at, _ = authority.rpartition("@")
    return userinfo if at and userinfo else None


def target_redactor(target: str, parent: Redactor | None = None) -> Redactor | None:
    """What hides the credentials a target carries (`user:pw@host:8080`) in the texts of its probe: the
    userinfo and its password (as written and percent-decoded, whatever characters they hold) and the Basic credentials
    _first_hop makes of it, which an upstream may quote back. Read from the text, not parsed as a URL: a
    target yarl refuses still shows. Kept per probe, never learned: callers could otherwise push the spec's
    secrets out of the Redactor. `parent`: the process's Redactor, whose values it looks for first (see Redactor)."""
    if "@" not in target:  # no userinfo without one: most targets
        return None
    userinfo = _userinfo(target)
    if userinfo is None:
        return None
    user, colon, password = userinfo.partition(":")
    secret = password if colon else user  # `token@host`: the user is the credential
    basic = basic_credentials(urllib.parse.unquote(user), urllib.parse.unquote(password))
    # the whole userinfo too: where it shows whole (the target itself) it is hidden whole, the user with it
    return Redactor({basic, *(v for text in (userinfo, secret) for v in (text, urllib.parse.unquote(text)))}, parent=parent)


def probe_secrets(values: Mapping[str, str], module: Module | None = None) -> list[str]:
    """The values of a probe's secret-named parameters (`api_key=…` on /probe) and of the parameters `module` sends
    as credentials (`Authorization: Bearer {k}`): what its texts hide (probe_redactor) and its requests carry to no
    other origin (UpstreamRequest.secrets, hops.next_hop)."""
    placed = module.credential_parameters if module is not None else frozenset()
    return [value for name, value in values.items() if name not in ("target", "module") and (is_secret_name(name) or name in placed) and value]


_PROBE_NAMES = frozenset({"target", "module"})


def probe_redactor(values: Mapping[str, str], parent: Redactor | None = None, module: Module | None = None) -> Redactor | None:
    """What hides a probe's own secrets in the texts of that probe (its trace, errors, record and log
    lines): the target's credentials (target_redactor) and the values of its secret-named parameters
    (`api_key=…` on /probe) and of the parameters `module` sends as credentials (`Authorization: Bearer {k}`),
    which an upstream may echo where no pattern rule sees them. Kept per probe, never learned: the one
    Redactor of the process does not grow with its callers."""
    if values.keys() <= _PROBE_NAMES:  # no parameter: only the target may hold a credential (most probes)
        return target_redactor(values.get("target", ""), parent)
    secret = probe_secrets(values, module)
    caller = target_redactor(values.get("target", ""), parent)
    if not secret:
        return caller
    if caller is None:
        return Redactor(secret, parent=parent)
    caller.know(secret)
    return caller


def _render_json(value: object, values: Mapping[str, str]) -> object:
    if isinstance(value, Template):
        return value.render(values)
    if isinstance(value, dict):
        return {k: _render_json(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_json(v, values) for v in value]
    return value


def _quote_path_value(value: str) -> str:
    """Percent-encode a parameter for a URL path; `/` is kept but `.` and `..` segments are refused,
    so a parameter cannot climb out of the path the spec wrote (and take its credentials along)."""
    if any(segment in (".", "..") for segment in value.replace("\\", "/").split("/")):
        raise InvalidRequest(f"parameter value {value[:100]!r} contains a . or .. path segment")
    return urllib.parse.quote(value, safe="/")


def _url_values(url: Template, values: Mapping[str, str]) -> Mapping[str, str]:
    """The values for the URL template: a target ending in `/` loses that slash when every
    `{target}` of the template is followed by one, so `{target}/api` never gives `//api`."""
    target = values.get("target", "")
    if not target.endswith("/"):
        return values
    parts = url.parts
    after = [parts[i + 1][0] if i + 1 < len(parts) else "" for i, (_, name) in enumerate(parts) if name == "target"]
    if not after or not all(text.startswith("/") for text in after):
        return values
    return {**values, "target": target[:-1]}


_NOT_IN_HOST = re.compile(r"[/?#@\\\s]")
_NOT_IN_ORIGIN = re.compile(r"[/?#\\\s]")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


class _TargetRefused(Exception):
    """Why a target cannot go where the URL template puts it."""


def _dot_segment(segment: str) -> bool:
    # %2E is `.` (RFC 3986 6.2.2.2): yarl resolves both forms, so neither can be encoded away
    return urllib.parse.unquote(segment) in (".", "..")


def _quote_target(url: Template, i: int, value: str) -> str:
    """The target as part i of the URL template: the whole URL (`{target}` alone: the target's own, as in
    json_exporter and blackbox_exporter, without dot segments that would move it off the path targets.allow
    matched), an origin (`{target}/api`, `https://{target}:8443/`: `[scheme://][user:pw@]host[:port]`,
    nothing that starts a path, a query or a fragment), else one value of the path or query, encoded whole."""
    if len(url.parts) == 1:
        try:
            checked_url(value)  # first: its reason quotes no userinfo, where urlsplit's NFKC message quotes it
            path = urllib.parse.urlsplit(value).path
        except ValueError as exc:  # UnusableURL among them
            raise _TargetRefused(str(exc) if isinstance(exc, UnusableURL) else "it is not a URL") from None
        if any(_dot_segment(s) for s in path.replace("\\", "/").split("/")):
            raise _TargetRefused("its path has a . or .. segment (the request would go elsewhere than the URL written)")
        return value
    if i in url.origin_parts:
        authority = value
        if i == 0 and not url.parts[0][0]:
            authority = _SCHEME.sub("", value, count=1).removesuffix("/")
        if _NOT_IN_ORIGIN.search(authority) or "%" in authority.rpartition("@")[2]:
            raise _TargetRefused(f"the URL {url.source!r} takes it as an origin, [scheme://]host[:port]: "
                                 f"it must not add a path, a query or a fragment (/, ?, #, \\, % or spaces)")
        return value
    if _dot_segment(value):
        raise _TargetRefused(f"the URL {url.source!r} takes it as one path segment: . and .. (also as %2e) are not values")
    return urllib.parse.quote(value, safe="")


def _render_url(endpoint: Endpoint, values: Mapping[str, str]) -> str:
    """The URL template filled in: `{target}` where the template puts it (_quote_target), a parameter in
    the scheme, host or port checked to be part of a host name or address, a parameter in the path
    percent-encoded."""
    in_origin = endpoint.url.origin_parts

    def quote(i: int, value: str) -> str:
        name = endpoint.url.parts[i][1]
        if name == "target":
            try:
                return _quote_target(endpoint.url, i, value)
            except _TargetRefused as exc:
                raise InvalidRequest(f"module {values.get('module', '')}, endpoint {endpoint.name}: "
                                     f"invalid target {redact_target(value)[:100]!r}: {exc}") from None
        if i in in_origin:
            if _NOT_IN_HOST.search(value):
                raise InvalidRequest(f"endpoint {endpoint.name}: parameter {name!r} is used in the URL's host: "
                                     f"its value must not contain /, ?, #, @, \\ or spaces")
            return value
        return _quote_path_value(value)

    return endpoint.url.render(_url_values(endpoint.url, values), quote)


def _body_quote(escape: str | None) -> Callable[[int, str], str] | None:
    if escape == "json":
        return lambda _, value: json.dumps(value)[1:-1]  # string contents: quotes and backslashes escaped
    if escape == "form":
        return lambda _, value: urllib.parse.quote_plus(value, safe="")
    return None


# what a routing header's host cannot hold beyond a URL's host: the lists and parameters proxies split on
_NOT_IN_ROUTED_HOST = re.compile(r"[/?#@\\\s,;\"]")
# RFC 7239: Forwarded = 1#forwarded-element, an element `pair *( ";" pair )`, a pair `token "=" ( token / quoted-string )`
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_FORWARDED_PAIR = re.compile(r"[ \t]*(?:(" + _TOKEN + r")=(" + _TOKEN + r'|"(?:[^"\\]|\\.)*"))?[ \t]*([;,]|$)')


def forwarded_hosts(value: str) -> list[str]:
    """The `host=` values of a Forwarded header (RFC 7239), unquoted, in order; ValueError when it is not one:
    a value the proxy would read otherwise than this could hide a host from the check."""
    hosts: list[str] = []
    at = 0
    while at < len(value):
        pair = _FORWARDED_PAIR.match(value, at)
        if pair is None or pair.end() == at:
            raise ValueError
        name, quoted = pair[1], pair[2]
        text = re.sub(r"\\(.)", r"\1", quoted[1:-1]) if quoted.startswith('"') else quoted
        if quoted.startswith('"') and any(c in text for c in ';,="'):
            raise ValueError  # `for="x;host=evil"`: a proxy reading pairs by pattern finds a host in it
        if name is not None and name.lower() == "host":
            hosts.append(text)
        at = pair.end()
    return hosts


def _check_routed_host(endpoint: Endpoint, name: str, value: str, url: URL, allow: tuple[Pattern, ...]) -> None:
    """A routing header's value (`Host: '{target}'`: Endpoint.routing_headers) picks the host the request is
    for, as the URL's host does: it must be a `host[:port]` (in Forwarded, each of its `host=`), and with
    `allow` the URL it names (the request's with that host) must match it, as the URL of a target does."""
    try:
        hosts = forwarded_hosts(value) if name.lower() == "forwarded" else [value]
        named = []
        for host in hosts:
            if not host or _NOT_IN_ROUTED_HOST.search(host):
                raise ValueError
            named.append((host, checked_url(f"{url.scheme}://{host}{url.raw_path_qs}")))
    except ValueError:  # UnusableURL among them
        what = "not a Forwarded value whose hosts are each a host[:port]" if name.lower() == "forwarded" else "not a host[:port]"
        raise InvalidRequest(f"endpoint {endpoint.name}: its {name} header {redact_target(value)[:100]!r}, taken from the target or a "
                             f"parameter, is {what}") from None
    for host, host_url in named:
        if allow and not url_allowed(host_url, allow):
            raise TargetNotAllowed(f"endpoint {endpoint.name}: the host {redact_target(host)[:100]!r} of its {name} header, taken from the target or a "
                                   "parameter, is not allowed by targets.allow")


def render_request(endpoint: Endpoint, values: Mapping[str, str], allow: tuple[Pattern, ...] = (),
                   projection: Projection | None = None, secrets: frozenset[str] = frozenset()) -> UpstreamRequest:
    """Fill in the endpoint's templates; raise InvalidRequest when the URL is not http(s), TargetNotAllowed
    when its host comes from the target or a parameter and the URL is outside `allow` (the module's
    targets.allow, matched against the URL's spellings as a redirect's: hops.url_forms)."""
    try:
        url = checked_url(_render_url(endpoint, values))
    except UnusableURL as exc:
        raise InvalidRequest(f"endpoint {endpoint.name}: invalid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidRequest(f"endpoint {endpoint.name}: the URL must be http:// or https:// with a host, got {str(url)!r}")
    if allow and endpoint.url.origin_parts and not url_allowed(url, allow):
        # the URL as sent, not the target as written: `http://allowed:80@other/` is a request to `other`
        raise TargetNotAllowed(f"endpoint {endpoint.name}: the host {url.host!r}, taken from the target or a parameter, is not allowed by targets.allow")
    if endpoint.params:
        url = url.update_query([(k, t.render(values)) for k, t in endpoint.params])
    headers = dict(BASE_HEADERS)
    for name, template in endpoint.headers:  # their values are checked with the Authorization's in _first_hop
        headers[name] = template.render(values)
    for name, _ in endpoint.routing_headers:
        _check_routed_host(endpoint, name, headers[name], url, allow)
    body: bytes | None = None
    if isinstance(endpoint.body, Template):
        body = endpoint.body.render(values, _body_quote(endpoint.body_escape)).encode()
        if endpoint.body_escape == "json" and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
    elif isinstance(endpoint.body, JsonBody):
        body = json.dumps(_render_json(endpoint.body.value, values)).encode()
        headers.setdefault("Content-Type", "application/json")
    return UpstreamRequest(endpoint, endpoint.method, url, headers, body, allow, projection, secrets)


def render_requests(module: Module, values: Mapping[str, str]) -> list[UpstreamRequest]:
    secrets = frozenset(probe_secrets(values, module))
    return [render_request(endpoint, values, module.target_allow, module.projections.get(name), secrets) for name, endpoint in module.endpoints.items()]
