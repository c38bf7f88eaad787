"""Upstream client configurations at run time: TLS contexts, Authorization headers (files read
when used), OAuth 2.0 tokens (cached, refreshed before expiry, one refresh at a time) and proxies.

One `Clients` per loaded spec: a reload makes its successor (Clients.succeeded_by), so CA files, certificates
and secrets are read again; a TLS context whose files are unchanged, and an OAuth2 token of an unchanged
configuration, go on. Equal configurations share one TLS context, so aiohttp pools their connections together.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import hashlib
import ipaddress
import itertools
import json
import math
import ssl
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any
from urllib.parse import quote_plus

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from jsonexporter.keyed import keyed_digest
from jsonexporter.secrets import Redactor
from jsonexporter.spec.model import HTTPClientConfig, OAuth2, Secret, Spec, TLSClientConfig
from jsonexporter.spec.sources import read_bounded
from jsonexporter.upstream.files import MAX_TLS_FILE_BYTES, SecretFiles, as_read, no_passphrase

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1, "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
TOKEN_TIMEOUT = 10.0
TOKEN_REFUSED_INTERVAL = 30.0  # seconds: an upstream's 401 drops an OAuth2 token at most this often (TokenSource.refused)
MAX_TOKEN_BYTES = 1024 * 1024
_MAX_READY = 4096  # client configs whose ready_options are kept (those of the spec's endpoints: Clients is per spec)


class ClientConfigError(Exception):
    """A file, certificate or token the request needs cannot be had; the message holds no secret."""


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """What aiohttp needs beyond the URL: TLS, proxy, redirects, and the auth header."""

    ssl: ssl.SSLContext | bool
    server_hostname: str | None
    proxy: str | None
    proxy_headers: dict[str, str] | None
    allow_redirects: bool
    authorization: str | None
    authorization_source: str | None = None  # where the Authorization value comes from, for errors that cannot show it
    # the TLS of `ssl` without tls_config's client certificate, for hops to another origin (hops.Hop.client_identity)
    anonymous_ssl: SSLContext | bool = True  # (the field `ssl` hides the module here)

    def identity(self) -> str:
        """Who the request is made as, for cache keys: a keyed hash, never the credentials."""
        return keyed_digest(self.authorization or "")[:32]


_TLS_SERIALS: weakref.WeakKeyDictionary[SSLContext, int] = weakref.WeakKeyDictionary()
_NEXT_TLS_SERIAL = itertools.count(1)


def tls_key(context: SSLContext | bool) -> str:
    """Which TLS context a request is made with, for cache keys: a serial of its own, never given to another context.
    Not its id(): CPython gives a freed context's address to the next one made (a reload changing tls_config, then
    one of the old config's cached answers, fetched without the new CA or client certificate, served as the new one's)."""
    if isinstance(context, bool):
        return str(context)
    serial = _TLS_SERIALS.get(context)
    if serial is None:
        serial = _TLS_SERIALS[context] = next(_NEXT_TLS_SERIAL)
    return f"tls#{serial}"


async def _reveal(files: SecretFiles, secret: Secret, what: str) -> str:
    """The secret's value (its file read now, off the loop); a file that cannot be read fails the request."""
    if secret.file is None:
        return secret.value or ""
    try:
        return await files.read(secret.file)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ClientConfigError(f"cannot read {what} {secret.file!r}: {reason}") from None


def tls_context(config: TLSClientConfig, read: Mapping[str, bytes] | None = None) -> ssl.SSLContext:
    """The context of `config`, its files given to OpenSSL as `read` holds them (by path: what was read within
    the bounds, files.as_read), else read by OpenSSL: blocking I/O, run off the loop (Clients.context)."""
    read = read or {}
    try:
        with contextlib.ExitStack() as held:
            def given(path: str) -> str:
                return held.enter_context(as_read(read[path], path)) if path in read else path

            context = ssl.create_default_context(cafile=given(config.ca_file) if config.ca_file else None, cadata=config.ca)
            if config.cert_file and config.key_file:
                context.load_cert_chain(given(config.cert_file), given(config.key_file), password=no_passphrase)
    # TypeError: an inline `ca` that is not ASCII (ssl's message quotes none of it)
    except (OSError, ssl.SSLError, ValueError, TypeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ClientConfigError(f"tls_config: cannot load certificates: {reason}") from None
    if config.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.min_version:
        context.minimum_version = TLS_VERSIONS[config.min_version]
    if config.max_version:
        context.maximum_version = TLS_VERSIONS[config.max_version]
    return context


def _anonymous(config: TLSClientConfig) -> TLSClientConfig:
    """`config` without its client certificate."""
    return dataclasses.replace(config, cert_file=None, key_file=None) if config.cert_file or config.key_file else config


def _tls_contexts(config: TLSClientConfig, anonymous: TLSClientConfig, read: Mapping[str, bytes]) -> tuple[ssl.SSLContext, ssl.SSLContext | None]:
    """The context of `config` and, when it has a client certificate, that of `anonymous`, both of the bytes `read`."""
    return tls_context(config, read), tls_context(anonymous, read) if anonymous != config else None


def _digest(read: Mapping[str, bytes]) -> str:
    """What a context is made of, its files' bytes by path, as one digest: a context made of the same bytes is the same."""
    return hashlib.sha256(repr(sorted(read.items())).encode()).hexdigest()


def _tls_files(config: TLSClientConfig) -> list[tuple[str, str]]:
    """The files of `config`, by their keys."""
    files = (("ca_file", config.ca_file), ("cert_file", config.cert_file), ("key_file", config.key_file))
    return [(what, path) for what, path in files if path is not None]


def awaited(config: HTTPClientConfig) -> str:
    """What Clients.options may wait for with `config`, for the error of a deadline reached meanwhile."""
    secrets = [*(config.basic_auth or ()), *([config.authorization[1]] if config.authorization is not None else [])]
    waits = [what for what, present in (("OAuth2 token", config.oauth2 is not None), ("tls_config files", config.tls is not None),
                                        ("credentials file", any(s.file is not None for s in secrets))) if present]
    return " or ".join(waits) or "client configuration"


def _bypasses_proxy(host: str, no_proxy: tuple[str, ...]) -> bool:
    host = host.lower().strip("[]")
    for entry in no_proxy:
        entry = entry.lower()
        if entry == "*":
            return True
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                return True
            continue
        except ValueError:
            pass
        domain = entry.lstrip(".").split(":")[0]
        if host == domain or host.endswith("." + domain):
            return True
    return False


def seconds_of(value: object) -> float | None:
    """A lifetime read from an upstream's answer (an OAuth2 token's expires_in, a login's): a JSON number or
    a numeric string ("3599", as some token endpoints write it), finite and greater than 0; None for anything
    else (a bool, an integer beyond a float, NaN, infinity, 0 or less, other text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        seconds = float(value)
    except (ValueError, OverflowError):
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def renewal_delay(lifetime: float) -> float:
    """When to renew credentials that last `lifetime` seconds: a tenth of it before expiry, at most a
    minute, so that a probe in flight never sends expired ones."""
    return lifetime - min(60.0, lifetime / 10)


class TokenSource:
    """OAuth 2.0 client credentials: one token cached until shortly before it expires; however many
    probes need a new one at once, one request fetches it, within its own TOKEN_TIMEOUT: a probe that
    gives up (its deadline passed, its scraper went away) leaves it going for the others."""

    def __init__(self, config: OAuth2, clients: Clients) -> None:
        self.config = config
        self.clients = clients
        self.token: str | None = None
        self.refresh_at = 0.0
        self.fetching: asyncio.Task[str] | None = None
        self.fetches = 0
        self.secret_digest = ""  # of the client secret the token was fetched with (keyed.py)
        self.recheck = False  # the secret is read from a file and the spec was reloaded since: read it before the next use
        self.dropped_at = -TOKEN_REFUSED_INTERVAL  # when an upstream's 401 last made the token be dropped (`refused`)

    async def get(self, session: aiohttp.ClientSession) -> str:
        if self.token is not None and time.monotonic() < self.refresh_at:
            if not self.recheck:
                return self.token
            # after a reload, the token goes on only while the file holds the secret it was fetched with (a rotated
            # secret and a reload: a token of the new one, as Prometheus drops its token source when the secret changes)
            secret = await self.clients.reveal(self.config.client_secret, "client_secret_file")  # unreadable: fails, checked again
            self.recheck = False
            if keyed_digest(secret) == self.secret_digest and self.token is not None:
                return self.token
            self.token, self.refresh_at = None, 0.0
        if self.fetching is None or self.fetching.done():
            self.fetching = asyncio.create_task(self._refresh(session))
            self.fetching.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: every waiter may have given up
        return await asyncio.shield(self.fetching)

    def refused(self, authorization: str) -> bool:
        """An upstream answered 401 to `authorization`: whether the request may be sent once more with the token `get`
        gives now. The token, revoked or expired before its expires_in (or one without expires_in, never renewed
        otherwise), is dropped when it is still the one in use, unless a 401 dropped one less than
        TOKEN_REFUSED_INTERVAL seconds ago: an upstream that refuses every token of these credentials (a scope it
        does not grant) makes a token request that often, not one per probe. One already replaced: yes, with the new one."""
        if self.token is None or authorization != f"Bearer {self.token}":
            return True  # renewed (or being renewed) since it was used
        now = time.monotonic()
        if now < self.dropped_at + TOKEN_REFUSED_INTERVAL:
            return False
        self.token, self.refresh_at, self.dropped_at = None, 0.0, now
        return True

    async def _refresh(self, session: aiohttp.ClientSession) -> str:
        self.token, lifetime = await self._fetch(session)
        self.refresh_at = time.monotonic() + (renewal_delay(lifetime) if lifetime else float("inf"))
        return self.token

    async def _fetch(self, session: aiohttp.ClientSession) -> tuple[str, float]:
        c = self.config
        secret = await self.clients.reveal(c.client_secret, "client_secret_file")
        form = {"grant_type": "client_credentials", **dict(c.endpoint_params)}
        if c.scopes:
            form["scope"] = " ".join(c.scopes)
        basic = basic_credentials(_form_quote(c.client_id), _form_quote(secret))
        digest = keyed_digest(secret)
        context: ssl.SSLContext | bool = await self.clients.context(c.tls) if c.tls else True
        self.fetches += 1
        try:
            async with asyncio.timeout(TOKEN_TIMEOUT), session.post(
                c.token_url, data=form, headers={"Authorization": f"Basic {basic}", "Accept": "application/json"},
                ssl=context, proxy=c.proxy_url, allow_redirects=False,
            ) as response:
                if response.status != 200:
                    raise ClientConfigError(f"oauth2: token endpoint answered HTTP {response.status}")
                body = await _token_body(response)
        except TimeoutError:
            raise ClientConfigError(f"oauth2: no answer from the token endpoint within {TOKEN_TIMEOUT:g}s") from None
        except aiohttp.ClientError as exc:
            raise ClientConfigError(f"oauth2: token request failed: {type(exc).__name__}") from None
        try:
            answer: Any = json.loads(body)
            token = answer["access_token"]
            expires_in = answer.get("expires_in")
        except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: JSON nested deeper than the stack
            raise ClientConfigError("oauth2: the token endpoint's answer has no access_token") from None
        if not isinstance(token, str) or not token:
            raise ClientConfigError("oauth2: the token endpoint's answer has no access_token")
        # absent or 0: a token without an expiry (RFC 6749 5.1 makes expires_in optional; Go's oauth2 reads 0 so)
        no_expiry = expires_in is None or (type(expires_in) in (int, float) and expires_in == 0)
        lifetime = 0.0 if no_expiry else seconds_of(expires_in)
        if lifetime is None:
            raise ClientConfigError("oauth2: the token endpoint's answer has no usable expires_in")
        self.clients.redactor.hold(self, "access_token", [token])  # the previous one released
        self.secret_digest = digest
        return token, lifetime


async def _token_body(response: aiohttp.ClientResponse) -> bytes:
    """The token endpoint's answer whole, within MAX_TOKEN_BYTES (ClientConfigError beyond). Not one read of the stream:
    that gives what has come so far, the first piece of an answer sent in more than one (a TLS record, a chunk, a TCP
    segment of a slower network), refused as an answer without access_token."""
    too_large = ClientConfigError(f"oauth2: the token endpoint's answer is larger than {MAX_TOKEN_BYTES} bytes")
    if response.content_length is not None and response.content_length > MAX_TOKEN_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > MAX_TOKEN_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _client_configs(spec: Spec) -> Iterator[HTTPClientConfig]:
    for module in spec.modules.values():
        yield from (endpoint.client for endpoint in module.endpoints.values())
        if module.login is not None:
            yield module.login.request.client


def basic_credentials(user: str, password: str) -> str:
    """The credentials of an `Authorization: Basic` header (RFC 7617)."""
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _form_quote(value: str) -> str:
    # RFC 6749 2.3.1: client id and secret are form-encoded before basic auth
    return quote_plus(value)


class Clients:
    """Run-time state of every client configuration of one loaded spec. Every secret read at run time
    (files, tokens) is taught to `redactor`, the one that redacts what the process shows."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        self._contexts: dict[TLSClientConfig, ssl.SSLContext] = {}
        # each context by what it was made of, its config and its files' bytes; those of the spec before a reload
        # (succeeded_by), to be made again only when the files' bytes changed
        self._made: dict[tuple[TLSClientConfig, str], ssl.SSLContext] = {}
        self._made_before: dict[tuple[TLSClientConfig, str], ssl.SSLContext] = {}
        self._tokens: dict[OAuth2, TokenSource] = {}
        # the OAuth2 configurations of the spec these are the Clients of, once it is a reload's (succeeded_by): a probe
        # that began before the reload gets no token of one it removed (its client secret sent after it was rotated)
        self._oauth2: frozenset[OAuth2] | None = None
        self._ready: dict[int, tuple[HTTPClientConfig, RequestOptions]] = {}  # ready_options, by the config's id
        self.redactor = redactor if redactor is not None else Redactor()
        self.files = SecretFiles()

    async def reveal(self, secret: Secret, what: str) -> str:
        value = await _reveal(self.files, secret, what)
        # held under the secret itself: a rotated file replaces its last value, and two secrets (two
        # inline ones, whose file is None alike) never release each other's
        self.redactor.hold(self, (what, secret), [value])
        return value

    async def context(self, config: TLSClientConfig) -> ssl.SSLContext:
        """The TLS context of `config`, made at its first use and kept; its files are read off the loop
        (files.py), within SECRET_READ_TIMEOUT: a FIFO or a hung mount fails the requests that need it,
        as a file that cannot be read does (ClientConfigError naming the file, never its content)."""
        found = self._contexts.get(config)
        if found is None:
            found = self._contexts.setdefault(config, await self._tls_context(config))  # a concurrent caller's, when it came first
        return found

    async def _tls_context(self, config: TLSClientConfig) -> ssl.SSLContext:
        # OpenSSL reads a path whole and as long as it lasts: each file is first read within the bounds,
        # so that a FIFO, a hung mount or a wrong path (a log file, /dev/zero) is named as such, and OpenSSL gets those bytes.
        # With a client certificate, the context without it (anonymous_context) is made of the same bytes: the CA file
        # read once (a FIFO answers once)
        anonymous = _anonymous(config)
        read: dict[str, bytes] = {}
        for what, path in _tls_files(config):
            try:
                read[path] = await self.files.run(("tls_file", path), f"tls-file {path}", functools.partial(read_bounded, path, MAX_TLS_FILE_BYTES))
            except OSError as exc:
                raise ClientConfigError(f"tls_config: cannot read {what} {path!r}: {exc.strerror or type(exc).__name__}") from None
        made = (config, _digest(read))
        anonymous_made = (anonymous, _digest({path: read[path] for _, path in _tls_files(anonymous)}))
        before = self._made_before.get(made)
        before_anonymous = self._made_before.get(anonymous_made) if anonymous != config else None
        if before is not None and (anonymous == config or before_anonymous is not None):
            # the same files as before the reload: its pooled connections go on
            return self._keep(made, before, anonymous_made, before_anonymous)
        try:  # what was read, not the paths again (files.as_read)
            fresh = await self.files.run(("tls_config", config), "tls-context", functools.partial(_tls_contexts, config, anonymous, read))
        except OSError as exc:  # the wait only: tls_context turns its own errors into ClientConfigError
            files = ", ".join(f"{what} {path!r}" for what, path in _tls_files(config))
            raise ClientConfigError(f"tls_config: cannot load {files}: {exc.strerror or type(exc).__name__}") from None
        return self._keep(made, fresh[0], anonymous_made, fresh[1])

    def _keep(self, made: tuple[TLSClientConfig, str], context: ssl.SSLContext,
              anonymous_made: tuple[TLSClientConfig, str], anonymous: ssl.SSLContext | None) -> ssl.SSLContext:
        """`context`, and the one without the client certificate made of the same bytes (None: it has none), kept by
        what they were made of."""
        self._made[made] = context
        if anonymous is not None:
            self._made[anonymous_made] = anonymous
            self._contexts.setdefault(anonymous_made[0], anonymous)
        return context

    def succeeded_by(self, spec: Spec) -> Clients:
        """The Clients of a reloaded `spec`. Files are read afresh: a TLS
        context is made again at its first use, but is this one's (and aiohttp's pool of its connections goes on)
        when its config and its files' bytes are the same; the OAuth2 token of a configuration still in the spec
        goes on until it is due (no token request for a reload that leaves the configuration as it was)."""
        after = Clients(self.redactor)
        kept = set(_client_configs(spec))
        tokens = {c.oauth2 for c in kept if c.oauth2 is not None}
        after._oauth2 = frozenset(tokens)
        tls = {t for c in kept for t in (c.tls, c.oauth2.tls if c.oauth2 is not None else None) if t is not None}
        tls |= {_anonymous(t) for t in tls}  # anonymous_context's
        for config, source in self._tokens.items():
            if config in tokens:
                source.clients = after  # its next token request reads the secret file and the CA files afresh
                source.recheck = config.client_secret.file is not None  # and its next use, the secret file
                after._tokens[config] = source
        # one context a config: the one made here, else (not used since the last reload) the one this had before
        used = {config for config, _ in self._made}
        unused = {made: context for made, context in self._made_before.items() if made[0] not in used}
        after._made_before = {made: context for made, context in (unused | self._made).items() if made[0] in tls}
        return after

    async def anonymous_context(self, config: TLSClientConfig) -> ssl.SSLContext:
        """The context of `config` without its client certificate (the same one when it has none), shared as `context`'s are."""
        return await self.context(_anonymous(config))

    def token_source(self, config: OAuth2) -> TokenSource:
        found = self._tokens.get(config)
        if found is None:
            if self._oauth2 is not None and config not in self._oauth2:
                raise ClientConfigError("oauth2: the configuration of this probe was replaced by a reload while it ran")
            found = self._tokens[config] = TokenSource(config, self)
        return found

    async def options(self, config: HTTPClientConfig, url: URL, session: aiohttp.ClientSession) -> RequestOptions:
        """Everything a request with `config` needs; raises ClientConfigError (no secret in it)."""
        authorization = source = None
        if config.basic_auth is not None:
            user_secret, password_secret = config.basic_auth
            user = await _reveal(self.files, user_secret, "username_file")
            password = await self.reveal(password_secret, "password_file")
            credentials = basic_credentials(user, password)
            self.redactor.hold(self, f"basic_auth {id(config)}", [credentials])
            authorization, source = "Basic " + credentials, "basic_auth"
        elif config.authorization is not None:
            kind, creds = config.authorization
            value = await self.reveal(creds, "credentials_file")
            authorization = f"{kind} {value}"
            source = f"credentials_file {creds.file!r}" if creds.file else "authorization.credentials"
        elif config.oauth2 is not None:
            authorization = "Bearer " + await self.token_source(config.oauth2).get(session)
            source = "the oauth2 token endpoint's access_token"
        context: ssl.SSLContext | bool = await self.context(config.tls) if config.tls else True
        anonymous: ssl.SSLContext | bool = await self.anonymous_context(config.tls) if config.tls else True
        return self._options(config, url, context, anonymous, authorization, source)

    def ready_options(self, config: HTTPClientConfig, url: URL) -> RequestOptions | None:
        """`options` at once when `config` has nothing to read or fetch first (no basic_auth, authorization,
        oauth2 or tls_config): no coroutine and no timeout around it for most requests. None: call `options`."""
        if config.basic_auth is not None or config.authorization is not None or config.oauth2 is not None or config.tls is not None:
            return None
        if config.proxy_url or config.proxy_from_environment:  # no_proxy and the environment decide per URL
            return self._options(config, url, True, True, None, None)
        kept = self._ready.get(id(config))  # the same for every URL: made once per config (16 kIr a request -> 2)
        if kept is not None and kept[0] is config:
            return kept[1]
        options = self._options(config, url, True, True, None, None)
        if len(self._ready) >= _MAX_READY:
            self._ready.clear()
        self._ready[id(config)] = (config, options)  # the config kept with its options: its id stays its own
        return options

    def _options(self, config: HTTPClientConfig, url: URL, context: ssl.SSLContext | bool, anonymous: ssl.SSLContext | bool,
                 authorization: str | None, source: str | None) -> RequestOptions:
        proxy, proxy_headers = self.proxy(config, url)
        return RequestOptions(context, config.tls.server_name if config.tls else None, proxy, proxy_headers, config.follow_redirects, authorization, source,
                              anonymous)

    @staticmethod
    def proxy(config: HTTPClientConfig, url: URL) -> tuple[str | None, dict[str, str] | None]:
        """The proxy for a request to `url` (no_proxy decides per URL, so per redirect hop too) and its CONNECT headers."""
        if not config.proxy_url and not config.proxy_from_environment:
            return None, None
        headers = {name: ", ".join(v.value or "" for v in values) for name, values in config.proxy_connect_header} or None
        if config.proxy_url:
            if url.host and _bypasses_proxy(url.host, config.no_proxy):
                return None, None
            return config.proxy_url, headers
        if config.proxy_from_environment:
            try:
                proxy, _ = get_env_proxy_for_url(url)
            except LookupError:
                return None, None
            return str(proxy), headers
        return None, None
