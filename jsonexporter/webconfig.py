"""The exporter-toolkit web configuration (`--web.config.file`): TLS, basic auth with bcrypt
hashes and response headers, in the format node_exporter and Prometheus accept."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import re
import ssl
import threading
import weakref
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import jsonschema
from aiohttp import web

from jsonexporter.keyed import keyed_hash
from jsonexporter.logs import kv
from jsonexporter.spec.load import redacted
from jsonexporter.spec.problems import Problem, SpecError
from jsonexporter.spec.schema import schema_keys, schema_problems
from jsonexporter.spec.sources import read_bounded_bytes, read_spec_text
from jsonexporter.spec.yamlload import load_yaml
from jsonexporter.upstream.client import TLS_VERSIONS
from jsonexporter.upstream.files import MAX_TLS_FILE_BYTES, SECRET_READ_TIMEOUT, EncryptedKey, as_read, no_passphrase

log = logging.getLogger("jsonexporter")

CLIENT_AUTH_TYPES = ("NoClientCert", "RequestClientCert", "RequireAnyClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
# the headers exporter-toolkit lets a web config set
ALLOWED_HEADERS = ("Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options", "X-XSS-Protection", "Content-Security-Policy")
# accepted for compatibility with configs written for Go exporters; Python's ssl module has no equivalent
IGNORED_TLS_KEYS = ("cipher_suites", "curve_preferences", "prefer_server_cipher_suites", "client_allowed_sans")
# The highest bcrypt cost accepted. A check at cost 14 takes 0.94 s of one core (an AMD EPYC core,
# measured with the bcrypt package: cost 10 63 ms, 12 235 ms, 14 939 ms); each step doubles it, so
# Go's maximum, 31, takes about 34 hours, and anyone who knows a user name could start such checks.
MAX_BCRYPT_COST = 14
MAX_BCRYPT_CHECK_SECONDS = 0.94  # at MAX_BCRYPT_COST, as measured above
CHECK_SLOTS = 4  # password checks running at once; beyond, HTTP 503 at once
_BCRYPT_COST = re.compile(r"^\$2[abxy]?\$(\d\d)\$")

# where a web config's keys may be a credential pasted by mistake (schema.key_named): its users' and its TLS key's
_CREDENTIAL_PLACES = frozenset({"basic_auth_users", "tls_server_config"})

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "tls_server_config": {
            "type": "object",
            "additionalProperties": False,
            "required": ["cert_file", "key_file"],
            "properties": {
                "cert_file": {"type": "string", "minLength": 1},
                "key_file": {"type": "string", "minLength": 1},
                "client_auth_type": {"enum": list(CLIENT_AUTH_TYPES)},
                "client_ca_file": {"type": "string", "minLength": 1},
                "min_version": {"enum": list(TLS_VERSIONS)},
                "max_version": {"enum": list(TLS_VERSIONS)},
                "cipher_suites": {"type": "array", "items": {"type": "string"}},
                "curve_preferences": {"type": "array", "items": {"type": "string"}},
                "prefer_server_cipher_suites": {"type": "boolean"},
                "client_allowed_sans": {"type": "array", "items": {"type": "string"}},
            },
        },
        "http_server_config": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "http2": {"type": "boolean"},
                "headers": {"type": "object", "propertyNames": {"enum": list(ALLOWED_HEADERS)}, "additionalProperties": {"type": "string"}},
            },
        },
        "basic_auth_users": {
            "type": ["object", "null"],
            "additionalProperties": {"type": "string", "pattern": r"^\$2[abxy]?\$\d\d\$.{53}$"},
        },
    },
}


@dataclass(frozen=True, slots=True)
class TLSConfig:
    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    min_version: str = "TLS12"
    max_version: str | None = None


@dataclass(frozen=True, slots=True)
class WebConfig:
    file: str | None = None
    tls: TLSConfig | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    headers: Mapping[str, str] = field(default_factory=dict)


def load_web_config(file: str) -> WebConfig:
    """Load and check a web config; raise SpecError with located problems, OSError when unreadable.
    No problem shows a user's hash (or a password written instead of one), wherever it is printed."""
    text = read_spec_text(file)
    data, marks, problems = load_yaml(text, file, schema_keys(_SCHEMA)) if text.strip() else ({}, None, [])
    if data is None:
        raise SpecError(problems)
    try:
        return _web_config(file, data, marks, problems)
    except SpecError as exc:
        shown = exc.problems if marks is None else marks.concealed(exc.problems, file)
        raise SpecError(redacted(shown, _credentials(data))) from None


def _credentials(data: Any) -> frozenset[str]:
    users = data.get("basic_auth_users") if isinstance(data, dict) else None
    return frozenset(str(v) for v in users.values() if v is not None) if isinstance(users, dict) else frozenset()


def _web_config(file: str, data: Any, marks: Any, problems: list[Problem]) -> WebConfig:
    if marks is not None:
        problems += schema_problems(data, file, marks, jsonschema.Draft202012Validator(_SCHEMA), _CREDENTIAL_PLACES)
    if not any(p.severity == "error" for p in problems):
        problems += _tls_problems(data, file, marks)
    if any(p.severity == "error" for p in problems):
        raise SpecError(problems)
    tls_raw = data.get("tls_server_config")
    for key in IGNORED_TLS_KEYS:
        if tls_raw and key in tls_raw:
            log.warning("web config key accepted but ignored: Python's ssl module has no equivalent", extra=kv(file=file, key=f"tls_server_config.{key}"))
    tls = None
    if tls_raw:
        tls = TLSConfig(tls_raw["cert_file"], tls_raw["key_file"], tls_raw.get("client_auth_type", "NoClientCert"),
                        tls_raw.get("client_ca_file"), tls_raw.get("min_version", "TLS12"), tls_raw.get("max_version"))
        try:
            ssl_context(tls)  # the files are read now, so a bad certificate is reported at load time
        except TLSFileError as exc:
            assert marks is not None
            path = ("tls_server_config", exc.key)
            line, col = marks.of_value(path)
            raise SpecError([Problem(file, line, col, path, f"cannot load the certificate files: {exc.reason}")]) from None
    users = {u: h.encode() for u, h in (data.get("basic_auth_users") or {}).items()}
    if costly := _bcrypt_cost_problems(users, file, marks):
        raise SpecError(costly)
    headers = (data.get("http_server_config") or {}).get("headers") or {}
    return WebConfig(file, tls, MappingProxyType(users), MappingProxyType(dict(headers)))


def _bcrypt_cost_problems(users: Mapping[str, bytes], file: str, marks: Any) -> list[Problem]:
    problems = []
    for user, stored in users.items():
        match = _BCRYPT_COST.match(stored.decode())
        cost = int(match.group(1)) if match else 0
        if 4 <= cost <= MAX_BCRYPT_COST:
            continue
        path = ("basic_auth_users", user)
        line, col = marks.of_value(path)
        if cost < 4:
            message = f"bcrypt cost {cost} is not a bcrypt cost (4 to 31)"
        else:
            seconds = MAX_BCRYPT_CHECK_SECONDS * 2 ** (cost - MAX_BCRYPT_COST)
            message = (f"bcrypt cost {cost} is over {MAX_BCRYPT_COST}, the highest accepted: each check would take about {_duration(seconds)} "
                       f"of a CPU core (cost {MAX_BCRYPT_COST} takes {MAX_BCRYPT_CHECK_SECONDS} s, each step doubles it), which anyone who "
                       f"knows the user name could start; hash the password again with a lower cost, e.g. htpasswd -nBC 10 {user}")
        problems.append(Problem(file, line, col, path, message))
    return problems


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400.0), ("hours", 3600.0), ("minutes", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _tls_problems(data: dict[str, Any], file: str, marks: Any) -> list[Problem]:
    tls = data.get("tls_server_config")
    if not tls:
        return []
    auth = tls.get("client_auth_type", "NoClientCert")
    path = ("tls_server_config", "client_auth_type")
    line, col = marks.of_value(path)
    if auth in ("RequireAndVerifyClientCert", "VerifyClientCertIfGiven") and not tls.get("client_ca_file"):
        return [Problem(file, line, col, path, f"{auth} needs client_ca_file")]
    if auth in ("RequestClientCert", "RequireAnyClientCert"):
        message = f"{auth} (a client certificate not verified against a CA) is not supported: use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
        return [Problem(file, line, col, path, message)]
    return []


class TLSFileError(Exception):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: cannot load: {reason}")
        self.key = key
        self.reason = reason


class FilesContext(ssl.SSLContext):
    """A server context and a digest of the file bytes it was made of: a reload of the same web config whose
    files were replaced (a renewed certificate at the same paths) says it changed something."""

    files_digest: bytes = b""


def ssl_context(tls: TLSConfig) -> FilesContext:
    """The server's TLS context; raises TLSFileError naming the key whose file cannot be used."""
    context = FilesContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    if tls.max_version:
        context.maximum_version = TLS_VERSIONS[tls.max_version]
    digest = hashlib.sha256(load_cert_chain(context, tls))
    if tls.client_ca_file:
        ca = _read_within_bounds("client_ca_file", tls.client_ca_file)
        digest.update(b"\0" + ca)
        try:
            with as_read(ca, tls.client_ca_file) as ca_file:
                context.load_verify_locations(ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TLSFileError("client_ca_file", _reason(exc)) from None
    if tls.client_auth_type == "RequireAndVerifyClientCert":
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.client_auth_type == "VerifyClientCertIfGiven":
        context.verify_mode = ssl.CERT_OPTIONAL
    context.files_digest = digest.digest()
    return context


class ServingContext(ssl.SSLContext):
    """The context a TLS server listens with: each new connection's TLS is that of `current`, which a reload
    replaces with a context made afresh (certificate, key, client CA, client auth type, versions). A live
    SSLContext can take a new certificate and verify mode, but never forget a CA it was given: a new one
    for new connections is the one way to apply every key."""

    current: FilesContext
    admitted: weakref.WeakSet[ssl.SSLContext]  # contexts of the current settings, whose connections may stay open

    def replace(self, context: FilesContext, settings_changed: bool) -> None:
        """`context` for new connections; with other settings (not only files read again, as for a renewed
        certificate), the connections made before are outdated."""
        if settings_changed:
            self.admitted = weakref.WeakSet()
        self.admitted.add(context)
        self.current = context

    def outdated(self, connection: ssl.SSLObject) -> bool:
        return connection.context not in self.admitted

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | bytes | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        return self.current.wrap_bio(incoming, outgoing, server_side, server_hostname, session)  # asyncio's one use of a context


def serving_context(tls: TLSConfig) -> ServingContext:
    context = ServingContext(ssl.PROTOCOL_TLS_SERVER)
    context.admitted = weakref.WeakSet()
    context.replace(ssl_context(tls), True)
    return context


def tls_reload_problem(running: WebConfig, new: WebConfig) -> str:
    """Why a reload from `running` to `new` cannot be applied without a restart ("" when it can): TLS on or
    off, the listening socket's business."""
    if (running.tls is None) == (new.tls is None):
        return ""
    if new.tls is not None:
        return (f"{new.file}: tls_server_config: added, but a reload cannot turn TLS on for a server started without it: "
                f"restart the exporter to serve HTTPS")
    return (f"{new.file}: tls_server_config: removed, but a reload cannot turn TLS off for a server started with it: "
            f"restart the exporter to serve plain HTTP")


def load_cert_chain(context: ssl.SSLContext, tls: TLSConfig) -> bytes:
    """The certificate and key of `tls` into `context`, and the bytes they were read as (certificate, NUL, key);
    raises TLSFileError naming the key whose file cannot be used."""
    cert = _read_within_bounds("cert_file", tls.cert_file)
    key = _read_within_bounds("key_file", tls.key_file)
    try:
        with as_read(cert, tls.cert_file) as cert_file, as_read(key, tls.key_file) as key_file:
            context.load_cert_chain(cert_file, key_file, password=no_passphrase)
    except EncryptedKey as exc:
        raise TLSFileError("key_file", str(exc)) from None
    except (OSError, ssl.SSLError) as exc:
        raise TLSFileError("cert_file", _reason(exc)) from None
    return cert + b"\0" + key


def _read_within_bounds(key: str, path: str) -> bytes:
    # OpenSSL reads a path whole and as long as it lasts: each file is read within the bounds of the spec's
    # tls_config files (upstream/files.py), so that a FIFO nobody writes, a hung mount or a wrong path (a log
    # file, /dev/zero) fails the start or the reload, naming the key, and never holds it; OpenSSL gets the bytes
    try:
        return read_bounded_bytes(path, MAX_TLS_FILE_BYTES, SECRET_READ_TIMEOUT)
    except OSError as exc:
        raise TLSFileError(key, _reason(exc)) from None


def _reason(exc: OSError | ssl.SSLError) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes. bcrypt is slow on purpose (tens of ms):
    checks run in threads of their own, at most CHECK_SLOTS at once, and successes are remembered
    (keyed by a keyed hash of the user, password and stored hash, so a changed config forgets them)."""

    MAX_CACHED = 1024

    def __init__(self, holder: Callable[[], WebConfig], slots: int = CHECK_SLOTS) -> None:
        self.holder = holder
        self.cache: OrderedDict[bytes, None] = OrderedDict()
        self.dummy: tuple[Mapping[str, bytes] | None, bytes] = (None, b"")  # the users it was made for, and the hash
        self.slots = slots
        self.free = slots  # changed in the event loop's thread only

    async def check(self, header: str | None) -> bool | None:
        """Whether the header carries a known user and its password; None when every slot is busy."""
        users = self.holder().users
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, sep, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep:
            return False
        stored = users.get(user)
        key = keyed_hash(b"\0".join([user.encode(), password.encode(), stored or b""])).digest()
        if stored is not None and key in self.cache:  # only successes are remembered: a wrong password always costs a check
            self.cache.move_to_end(key)
            return True
        ok = await self._bcrypt(password.encode(), self.hash_to_check(users, user))
        if ok is None:
            return None
        ok = ok and stored is not None
        if ok:
            self.cache[key] = None
            while len(self.cache) > self.MAX_CACHED:
                self.cache.popitem(last=False)
        return ok

    def hash_to_check(self, users: Mapping[str, bytes], user: str) -> bytes:
        """The hash a password for `user` is checked against: the user's, or for an unknown user one of the
        bcrypt cost of most users' hashes, so that the time of a 401 does not tell which user names exist."""
        stored = users.get(user)
        if stored is not None:
            return stored
        if self.dummy[0] is not users:  # made once for each loaded web config
            self.dummy = (users, unknown_user_hash(users))
        return self.dummy[1]

    async def _bcrypt(self, password: bytes, stored: bytes) -> bool | None:
        """One check in a thread of its own, or None at once when none of the slots is free. The
        slot is given back by the thread as it ends, not by the request: a client that goes away
        does not make room for more checks than there are slots. The threads are daemons: a stop
        never waits for them, whatever checks clients started."""
        import bcrypt

        if self.free <= 0:
            return None
        self.free -= 1
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bool] = loop.create_future()

        def settle(ok: bool) -> None:
            self.free += 1
            if not answer.done():  # not cancelled meanwhile
                answer.set_result(ok)

        def run() -> None:
            ok = False
            try:
                ok = bool(bcrypt.checkpw(password, stored))
            except ValueError:
                pass
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed: nothing waits for the answer any more
                    loop.call_soon_threadsafe(settle, ok)

        try:
            threading.Thread(target=run, name="password-check", daemon=True).start()
        except RuntimeError:  # no thread to be had
            self.free += 1
            return None
        return await answer

    async def refusal(self, header: str | None) -> web.Response | None:
        """The answer to a request with this Authorization header when the web config has users: None when
        it may pass, 401 without a known user and its password, 503 when every check slot is busy."""
        ok = await self.check(header)
        if ok is None:
            return web.Response(status=503, text=f"Too many password checks in progress ({self.slots} at once); try again\n",
                                headers={"Retry-After": "1"})
        if not ok:
            return web.Response(status=401, text="Unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="jsonexporter"'})
        return None


def unknown_user_hash(users: Mapping[str, bytes]) -> bytes:
    """A well-formed bcrypt hash that no password matches, at the cost most of `users`' hashes have (of
    equal counts, the highest): checking it takes as long as checking those users' passwords. The most
    common cost rather than the highest: with one cost for all, as `htpasswd -nBC 10` makes them, every
    user is hidden; with mixed costs no single cost hides all of them, and this one hides the most."""
    costs = Counter(int(match.group(1)) for stored in users.values() if (match := _BCRYPT_COST.match(stored.decode())))
    cost = max(costs, key=lambda c: (costs[c], c)) if costs else 10
    return b"$2b$%02d$" % cost + b"." * 53  # checkpw works the hash's cost whatever its salt and digest


def headers_hook(holder: Callable[[], WebConfig]) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An `on_response_prepare` hook adding the web config's `http_server_config.headers`."""

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        for name, value in holder().headers.items():
            response.headers[name] = value

    return add_headers
