"""Redirects as new requests. `next_hop` is the one place that decides what a request may carry
to the URL a redirect names (the spec's headers, credentials, secret query values, the body), and
`url_allowed` whether a URL is inside a module's `targets.allow`. fetch.py follows redirects itself
and asks them at every hop."""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from yarl import URL

from jsonexporter import __version__
from jsonexporter.secrets import MIN_BARE_LENGTH, forms_of, is_credential_header, is_secret_name
from jsonexporter.spec.functions import Pattern
from jsonexporter.urls import UnusableURL, checked_url

USER_AGENT = f"jsonexporter/{__version__}"
# what the exporter sends of its own; a hop to another origin carries nothing else
BASE_HEADERS: Mapping[str, str] = {"User-Agent": USER_AGENT, "Accept": "application/json"}
MAX_REDIRECTS = 10  # Go's net/http and aiohttp stop at 10 too
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_BODY_HEADERS = frozenset({"content-type", "content-length", "content-encoding"})
# Percent-decodings of a redirect's URL looked at for the request's credentials: a URL quoting a URL quoting one
# (`?return_to=`) needs two; one that still changes after this many is refused, as what cannot be checked
MAX_DECODINGS = 8


@dataclass(frozen=True, slots=True)
class Hop:
    """One request as it is sent. Its URL never holds userinfo: that travels as Authorization."""

    method: str
    url: URL
    headers: Mapping[str, str]
    body: bytes | None
    server_hostname: str | None = None  # tls_config.server_name, for the host it was written for
    secrets: frozenset[str] = field(default=frozenset(), repr=False)  # secret values it was rendered with (UpstreamRequest.secrets)
    # whether it may present tls_config's client certificate: only within the origin of the first request
    client_identity: bool = True


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a redirect is not followed; `url` is where it pointed (None: no usable URL)."""

    url: URL | None
    reason: str
    hidden: bool = False  # its URL is not shown at all: even its origin holds a credential of the request


Origin = tuple[str, str, int | None]


def origin(url: URL) -> Origin:
    return url.scheme, (url.host or "").lower(), url.port


def url_forms(url: URL) -> list[str]:
    """The spellings of `url` an allowlist pattern may match: the URL, without its query, its origin
    (`https://h:8006`, and `https://h` for a default port, each also with a final `/`), `h:8006` and `h`."""
    host = url.host or ""
    host = f"[{host}]" if ":" in host else host
    plain = url.with_user(None).with_fragment(None)
    origins = [f"{url.scheme}://{host}:{url.port}", *([f"{url.scheme}://{host}"] if url.explicit_port is None else [])]
    # an origin pattern written as a target with its slash (`https://h/`) still allows `{target}/api`
    return [str(plain), str(plain.with_query(None)), *origins, *(f"{o}/" for o in origins), f"{host}:{url.port}", host]


def url_allowed(url: URL, patterns: Iterable[Pattern]) -> bool:
    forms = url_forms(url)
    return any(p.fullmatch(form) for p in patterns for form in forms)


def carried_secrets(hop: Hop) -> list[str]:
    """What of `hop` is secret: credential headers (secrets.is_credential_header: by name or value), secret query parameters."""
    found = [f"header {name}" for name, value in hop.headers.items() if is_credential_header(name, value) or _holds(value, hop.secrets)]
    return found + [f"query parameter {name}" for name in dict.fromkeys(hop.url.query)
                    if is_secret_name(name) or _holds(hop.url.query[name], hop.secrets)]


def _holds(text: str, secrets: frozenset[str]) -> bool:
    """Whether `text` holds one of `secrets`, as written or percent-encoded (a URL quoting it)."""
    if not secrets:
        return False
    forms = (text, urllib.parse.unquote_plus(text))
    return any(len(s) >= MIN_BARE_LENGTH and any(s in form for form in forms) for s in secrets)


def _secret_values(hop: Hop) -> set[str]:
    """The secret values `hop` carries: of secret-named query parameters and headers, and the credentials
    of a header such as `Authorization: Bearer …` without its scheme, as a redirect would quote them."""
    values = {v for k, v in hop.url.query.items() if (is_secret_name(k) or _holds(v, hop.secrets)) and v}
    for name, value in hop.headers.items():
        if value and is_credential_header(name, value):
            values.add(value)
            if len(credentials := value.partition(" ")[2].strip()) >= MIN_BARE_LENGTH:
                values.add(credentials)
    return values


def _credentials(hop: Hop) -> set[str]:
    """Every credential value `hop` sends (what its probe's Redactor hides of it): _secret_values, the values of
    `secrets`, a login's and the probe's parameters it was rendered with (Hop.secrets), and of Basic credentials
    (a target's userinfo, basic_auth) the password and `user:password` they encode."""
    values = _secret_values(hop) | hop.secrets
    for name, value in hop.headers.items():
        scheme, _, encoded = value.strip().partition(" ")
        if name.lower() == "authorization" and scheme.lower() == "basic":
            try:
                pair = base64.b64decode(encoded.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                continue
            values.update(v for v in (pair, pair.partition(":")[2]) if len(v) >= MIN_BARE_LENGTH)
    return values


def _decodings(text: str) -> list[str] | None:
    """`text` and what percent-decoding it again and again makes of it, until nothing changes; None when it
    still changes after MAX_DECODINGS (each decoding shortens it: a bounded URL is decoded in bounded time)."""
    found = [text]
    for _ in range(MAX_DECODINGS):
        decoded = urllib.parse.unquote(found[-1])
        if decoded == found[-1]:
            return found
        found.append(decoded)
    return None


def _holds_credential(url: URL, credentials: set[str]) -> bool:
    """Whether `url` holds one of `credentials`, in any form the Redactor looks for (secrets._forms: quoted,
    percent-encoded, base64…), as written or percent-decoded until nothing changes."""
    decodings = _decodings(str(url))
    if decodings is None:
        return True
    # in any case: a URL's host is lowercased as it is parsed (`http://Xk9Token.evil/` is requested, and looked up in
    # the DNS, as `xk9token.evil`), and a server may fold its path's case
    forms = {form.lower() for form in forms_of(credentials)}
    lowered = [text.lower() for text in decodings]
    return any(form in text for text in lowered for form in forms)


def _refused(url: URL, previous: Hop, reason: str) -> Refusal:
    """Why the hop to `url` is refused, quoting only its origin when it holds a credential of `previous`: in a
    form the Redactor of the message may not know (percent-encoded three times)."""
    credentials = _credentials(previous)
    if _holds_credential(url, credentials):
        return _without_secrets(url, credentials, reason, say_why=True)
    return Refusal(url, reason)


def _without_secrets(url: URL, credentials: set[str], reason: str, say_why: bool = False) -> Refusal:
    """A refusal of a URL holding one of `credentials`: quoting its origin alone, or nothing of it when the origin
    holds one too (`http://<key>.evil/`: a host named after the key). The reason goes on with what is not shown,
    and why when it does not say it (`say_why`)."""
    if _holds_credential(url.origin(), credentials):
        why = ", which holds a secret value of the request," if say_why else ""
        return Refusal(None, f"{reason}; its URL{why} is not shown", hidden=True)
    why = ", which hold a secret value of the request," if say_why else ""
    return Refusal(url.origin(), f"{reason}; its path and query{why} are not shown")


def next_hop(previous: Hop, status: int, location: str, first: URL, allow: tuple[Pattern, ...]) -> Hop | Refusal:
    """The request a `status` redirect to `location` makes of `previous`, or why it is refused.

    Prometheus's (Go's) semantics otherwise: 301/302/303 turn other methods than GET and HEAD into
    a GET without body; 307/308 keep method and body. The allowlist applies to hops that leave the
    origin of the `first` request (that one was allowed with the probe). A hop to another origin than
    `previous` carries nothing of the spec (headers, credentials, the TLS client certificate, body, secret query values), and
    is refused when it would have to re-send a body, or leave https for http while carrying secrets."""
    try:
        url = checked_url(location, previous.url)
    except UnusableURL as exc:
        return Refusal(None, f"its Location header is not a usable URL: {exc}")
    if url.scheme not in ("http", "https") or not url.host:
        return Refusal(url, "it is not an http:// or https:// URL with a host")
    url = url.with_user(None).with_fragment(None)  # a redirect never adds credentials
    if allow and origin(url) != origin(first) and not url_allowed(url, allow):
        return _refused(url, previous, "it leaves the origin of the request for a host that targets.allow does not allow")
    method, body, headers = previous.method, previous.body, dict(previous.headers)
    if status in (301, 302, 303):
        method = method if method in ("GET", "HEAD") else "GET"
        body = None
        headers = {k: v for k, v in headers.items() if k.lower() not in _BODY_HEADERS}
    server_hostname = previous.server_hostname
    if origin(url) != origin(previous.url):
        secrets = carried_secrets(previous)
        if previous.url.scheme == "https" and url.scheme == "http" and secrets:
            return _refused(url, previous, f"it leaves https for http, and the request carries secrets ({', '.join(secrets)})")
        if body is not None:
            return _refused(url, previous, f"a {status} would send the request body to another origin")
        hidden = _credentials(previous)
        if any(v in hidden for v in url.query.values()):
            url = url.with_query([(k, v) for k, v in url.query.items() if v not in hidden])
        if _holds_credential(url, hidden):  # its host and path as well as its query
            return _without_secrets(url, hidden, "its URL holds a secret value of the request (a credential it sends), which another "
                                                 "origin must not get")
        headers = dict(BASE_HEADERS)
        if url.host != previous.url.host:
            server_hostname = None
    # a client certificate is a credential of http_client_config like the Authorization: it stays with the origin
    client_identity = previous.client_identity and origin(url) == origin(previous.url)
    return Hop(method, url, headers, body, server_hostname, previous.secrets, client_identity)
