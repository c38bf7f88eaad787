"""A module's `secrets` and `login` at run time: secrets read at each use, and the login request made
before the endpoints, its values shared by probes (sessions.py) until they are due for renewal.

`prepare(up, module, values, deadline)` is the step before any endpoint of a module is rendered, for
a probe (fetch_module) as for a background fetch: the probe's values with the secrets' and the login's
added, or why an endpoint cannot be requested. The login request is an Endpoint of the spec, rendered
by render.py and sent by fetch.py like the endpoints: same escaping, redirect policy, size limit and
deadline. Every value read or received is taught to the Redactor before anything can show it."""

from __future__ import annotations

import asyncio
import http.cookies
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDictProxy

from jsonexporter.keyed import keyed_digest
from jsonexporter.secrets import HoldRefused
from jsonexporter.spec.model import Endpoint, Login, LoginValue, Module
from jsonexporter.trace import Trace
from jsonexporter.upstream.client import ClientConfigError, RequestOptions, awaited, renewal_delay, seconds_of
from jsonexporter.upstream.fetch import EndpointResult, Upstream, _cache_key, _cannot_be_made, _request, fetch_all
from jsonexporter.upstream.files import SECRET_READ_TIMEOUT
from jsonexporter.upstream.refresh import Job
from jsonexporter.upstream.render import UpstreamRequest, probe_secrets, render_request
from jsonexporter.upstream.sessions import LoginFailed, Obtained, Session

# statuses that say the login's values are no longer accepted: the login is made again and the
# endpoint retried once
RENEW_STATUSES = frozenset({401, 403})
# a login value goes into headers: at most the largest cookie browsers keep (RFC 6265: 4096 bytes);
# each is held by the Redactor while its session lives, whatever its LEARNED_BUDGET, within its HELD_BUDGET (secrets.py)
MAX_VALUE_CHARS = 4096


@dataclass(frozen=True, slots=True)
class Prepared:
    """The values endpoints are rendered with, and what keeps some from being requested."""

    values: Mapping[str, str] = field(repr=False)
    session: Session | None = None  # the login's, when the module has one and it gave values
    failure: tuple[str, str] | None = None  # (outcome, error) of every endpoint: the login failed
    unreadable: Mapping[str, str] = field(default_factory=dict)  # secret name -> why it could not be read

    def failed(self, endpoint: Endpoint) -> EndpointResult | None:
        """The result of `endpoint` when it cannot be requested, else None."""
        if self.failure is not None:
            return EndpointResult(endpoint.name, self.failure[0], error=self.failure[1])
        missing = sorted(endpoint.placeholders & self.unreadable.keys())
        if missing:
            return EndpointResult(endpoint.name, "config_error", error=self.unreadable[missing[0]])
        return None


async def read_secrets(up: Upstream, module: Module, values: Mapping[str, str], deadline: float) -> tuple[dict[str, str], dict[str, str]]:
    """`values` with every readable secret of `module` added (each held by the Redactor), and why the
    others are not; files are read off the loop, each within SECRET_READ_TIMEOUT and the `deadline`."""
    filled, unreadable = dict(values), {}
    loop = asyncio.get_running_loop()
    for name, secret in module.secrets.items():
        try:
            if secret.file is None:
                value = secret.read()
            else:
                value = await up.clients.files.read(secret.file, min(SECRET_READ_TIMEOUT, deadline - loop.time()))
        except KeyError:
            unreadable[name] = f"secret {name!r}: {secret.source} is not set"
            continue
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            unreadable[name] = f"secret {name!r}: cannot read {secret.source}: {reason}"
            continue
        up.clients.redactor.hold(up.clients, f"secret {module.name}.{name}", [value])  # as last read: a rotated one replaces it
        filled[name] = value
    return filled, unreadable


def secret_values(module: Module, values: Mapping[str, str]) -> frozenset[str]:
    """The values of `module`'s secrets and login values among `values`, and the probe's credentials (probe_secrets):
    what its requests must not carry to another origin (hops.next_hop), whatever the names of the placeholders that put them there."""
    return frozenset(values[name] for name in module.secret_names if values.get(name)).union(probe_secrets(values, module))


async def prepare(up: Upstream, module: Module, values: Mapping[str, str], deadline: float, trace: Trace | None = None,
                  rejected: Session | None = None) -> Prepared:
    """The values for `module`'s endpoints by `deadline` (a loop.time()): the probe's, the secrets', the
    login's (made, or shared, or renewed when `rejected` is the session an endpoint refused). Raises
    InvalidRequest, as rendering an endpoint does, when the values make an unusable login request."""
    if not module.secrets and module.login is None:
        return Prepared(values)
    filled, unreadable = await read_secrets(up, module, values, deadline)
    login = module.login
    if login is None:
        return Prepared(filled, unreadable=unreadable)
    missing = sorted(login.request.placeholders & unreadable.keys())
    if missing:
        return _failed(trace, "config_error", f"login: {unreadable[missing[0]]}", filled, unreadable)
    # no projection: the login is read by its values, not by rules
    request = render_request(login.request, filled, module.target_allow, secrets=secret_values(module, filled))
    loop = asyncio.get_running_loop()
    start = loop.time()
    budget = deadline - start if login.request.timeout is None else min(deadline - start, login.request.timeout)
    try:
        async with asyncio.timeout(max(budget, 0.0)):  # an OAuth2 token for the login counts against the deadline
            options = await up.clients.options(login.request.client, request.url, up.session)
    except ClientConfigError as exc:
        return _failed(trace, "login_failed", f"login: {exc}", filled, unreadable)
    except ValueError as exc:  # aiohttp reading a proxy from the environment (HTTP_PROXY) that is no URL
        return _failed(trace, "login_failed", f"login: {_cannot_be_made(exc)}", filled, unreadable)
    except TimeoutError:
        return _failed(trace, "login_failed", f"login: no {awaited(login.request.client)} within {budget:.3f}s", filled, unreadable)
    remaining = budget - (loop.time() - start)
    shared = _login_budget(module)  # the one login every waiting probe shares: its own budget, never this probe's `remaining`
    try:
        got = await up.logins.get(_session_key(module, login, request, options),
                                  lambda waited: _log_in(up, module.name, login, request, options, shared, trace if waited else None), remaining,
                                  rejected, module.name)
    except LoginFailed as exc:
        return _failed(trace, "login_failed", str(exc), filled, unreadable)
    except TimeoutError:
        return _failed(trace, "login_failed", f"login: no answer within {remaining:.3f}s", filled, unreadable)
    try:  # kept while the session lives, within HELD_BUDGET: values the Redactor does not hold are never sent, nor shown
        up.clients.redactor.hold(got.session, "login", got.session.values.values(), bounded=True)
    except HoldRefused as exc:
        return _failed(trace, "login_failed", f"login: its values are not used: {exc} (secrets.HELD_BUDGET: the values of the "
                       "live login sessions; sessions that expire, are refused or are dropped as the least recently used make room)",
                       filled, unreadable)
    if trace is not None and got.how != "made":
        _trace_session(trace, got)
    return Prepared({**filled, **got.session.values}, got.session, unreadable=unreadable)


def _login_budget(module: Module) -> float:
    """Seconds the login request of `module` may take: its timeout, else the module's. A login is shared by
    the probes that need it at once and renewed in the background, so it is bounded by its own budget, never
    by the time left to the probe that happens to start it (each waits for it within its own deadline)."""
    assert module.login is not None
    return module.login.request.timeout if module.login.request.timeout is not None else module.timeout


def _failed(trace: Trace | None, outcome: str, error: str, values: dict[str, str], unreadable: dict[str, str]) -> Prepared:
    if trace is not None:
        trace.add(f"login: {outcome}: {error}")
    return Prepared(values, failure=(outcome, error), unreadable=unreadable)


def _session_key(module: Module, login: Login, request: UpstreamRequest, options: RequestOptions) -> str:
    """One session per module and login request as sent (target, parameters and secrets in it) and what
    its answer is read for: a rotated password or a reloaded login spec logs in anew."""
    parts = [module.name, _cache_key(request, options), repr(login.values), repr(login.expires_in)]
    return keyed_digest("\0".join(parts))


async def _log_in(up: Upstream, module: str, login: Login, request: UpstreamRequest, options: RequestOptions, budget: float,
                  trace: Trace | None) -> Session:
    """The login request of `module`, through fetch.py's request path, and the session its answer gives; its result reported (up.events)."""
    _, result = await _request(up, request, options, budget, quote_answer=False)
    if trace is not None:
        trace.add(f"login: {request.method} {request.url}" + (f", body of {len(request.body)} bytes" if request.body is not None else ""))
        for line in result.redirects:
            trace.add(f"  {line}")
        trace.add(f"  -> {result.outcome}, status {result.status}, {result.bytes} bytes, {result.duration:.3f}s")
    # an answer without JSON (qBittorrent's `Ok.`) is good when every value is a cookie or a header
    if not result.ok and not (result.outcome == "invalid_json" and not login.reads_body):
        up.events.logged_in(module, result.outcome)
        raise LoginFailed(f"login: {result.outcome}: {result.error}")
    headers = result.response_headers
    values = {}
    try:
        for source in login.values:
            values[source.name] = _value(source, result.document, headers)  # learned by the Redactor in prepare(), before any use
        lifetime = _lifetime(login, result.document)
    except LoginFailed:
        up.events.logged_in(module, "invalid_answer")
        raise
    up.events.logged_in(module, "success")
    now = time.monotonic()
    session = Session(values, now, now + renewal_delay(lifetime), now + lifetime)
    if trace is not None:
        _trace_session(trace, Obtained(session, "made"))
    return session


def _value(source: LoginValue, document: Any, headers: CIMultiDictProxy[str] | None) -> str:
    name = source.name
    found: object
    if source.path is not None:
        try:
            found = source.path.search(document)
        except Exception:  # a function given a value it cannot use: the answer is not what the spec expects
            raise LoginFailed(f"login value {name!r}: {source.path.source!r} could not be evaluated on the login's answer") from None
        where = f"{source.path.source!r} of the login's answer"
    elif source.cookie is not None:
        found, where = _cookie(headers, source.cookie), f"the login's answer's cookie {source.cookie}"
    else:
        assert source.header is not None
        found, where = headers.get(source.header) if headers is not None else None, f"the login's answer's header {source.header}"
    if isinstance(found, bool) or not isinstance(found, (str, int, float)) or found == "":
        kind = {dict: "an object", list: "an array", bool: "a boolean"}.get(type(found), f"a {type(found).__name__}")
        what = "missing" if found is None else "empty" if found == "" else f"{kind}, not a string or number"
        raise LoginFailed(f"login value {name!r}: {where} is {what}")
    text = str(found)
    if len(text) > MAX_VALUE_CHARS:
        raise LoginFailed(f"login value {name!r}: {where} is longer than {MAX_VALUE_CHARS} characters")
    return text


def _cookie(headers: CIMultiDictProxy[str] | None, name: str) -> str | None:
    """The value the answer's Set-Cookie headers give cookie `name` (the last one wins, as in a browser)."""
    found = None
    for header in (headers.getall("Set-Cookie", []) if headers is not None else []):
        jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
        try:
            jar.load(header)
        except http.cookies.CookieError:
            continue
        if name in jar:
            found = jar[name].value
    return found


def _lifetime(login: Login, document: Any) -> float:
    """Seconds the login's values last: `expires_in` as written, or read from the answer; without it, until refused."""
    if login.expires_in is None:
        return math.inf
    if isinstance(login.expires_in, float):
        return login.expires_in
    expression = login.expires_in
    try:
        seconds = seconds_of(expression.search(document))
    except Exception:  # a function failing
        seconds = None
    if seconds is None:
        raise LoginFailed(f"login: expires_in {expression.source!r} gives no number of seconds greater than 0 on the login's answer")
    return seconds


def _trace_session(trace: Trace, got: Obtained) -> None:
    session, now = got.session, time.monotonic()
    age = f"made {now - session.made:.1f}s ago"
    how = {"made": "made for this probe", "coalesced": "made for a concurrent probe", "reused": f"reused, {age}",
           "renewing": f"reused while it is renewed in the background, {age}"}[got.how]
    renew = "until an endpoint refuses them" if math.isinf(session.renew_at) else f"renewed in {max(session.renew_at - now, 0.0):.1f}s"
    trace.add(f"login: {how}; values {', '.join(session.values)} (not shown), {renew}")


async def fetch_prepared(up: Upstream, module: Module, endpoints: Sequence[Endpoint], prepared: Prepared, deadline: float,
                         trace: Trace | None = None, probe_values: Mapping[str, str] | None = None, whole: bool = False) -> list[EndpointResult]:
    """`endpoints` rendered with the prepared values and fetched, in their order; those that cannot be
    requested (the login failed, a secret they need is unreadable) get their failure without a request.
    With `probe_values` (a probe's, not a background request's), endpoints with refresh_interval join their schedules.
    `whole`: answers parsed whole, not for the rules (a traced probe's schedule: refresh.Job.whole)."""
    requests, failed, jobs = [], {}, []
    for endpoint in endpoints:
        failure = prepared.failed(endpoint)
        if failure is None:
            projection = None if whole else module.projections.get(endpoint.name)
            requests.append(render_request(endpoint, prepared.values, module.target_allow, projection, secret_values(module, prepared.values)))
            if probe_values is not None:
                jobs.append(Job(module, endpoint, probe_values))  # the values without the secrets': added again at each request
            continue
        failed[endpoint.name] = failure
        if trace is not None:
            trace.add(f"endpoint {endpoint.name}: not requested: {failure.outcome}: {failure.error}")
    fetched = iter(await fetch_all(up, requests, deadline, trace, jobs if probe_values is not None else None) if requests else [])
    return [failed.get(endpoint.name) or next(fetched) for endpoint in endpoints]


async def renewed_if_refused(up: Upstream, job: Job, sent: UpstreamRequest, result: EndpointResult, deadline: float) -> EndpointResult:
    """A revalidation of a stale answer (cache.py) as fetch_logged_in treats a probe's request: refused
    (401, 403) with the session it was rendered with, that session is renewed (unless a probe renewed
    it meanwhile) and the request rendered with the new values is sent once more, through the cache,
    under the key the next probes look for."""
    if result.status not in RENEW_STATUSES:
        return result
    prepared = await prepare(up, job.module, job.values, deadline)
    if prepared.session is not None and set(prepared.session.values.values()) <= sent.secrets:
        prepared = await prepare(up, job.module, job.values, deadline, rejected=prepared.session)
    (retried,) = await fetch_prepared(up, job.module, [job.endpoint], prepared, deadline)
    return retried


async def fetch_logged_in(up: Upstream, module: Module, values: Mapping[str, str], deadline: float, trace: Trace | None = None,
                          endpoints: Sequence[Endpoint] | None = None, whole: bool = False) -> list[EndpointResult]:
    """Every endpoint of `module` after its login, for a probe; or `endpoints`, for a background request
    (refresh.py; `whole` as for fetch_prepared). An endpoint answering 401 or 403 makes the login be renewed
    (once for all the probes that saw it refused) and is retried once, within the deadline."""
    prepared = await prepare(up, module, values, deadline, trace)
    probe_values = values if endpoints is None else None
    endpoints = list(module.endpoints.values()) if endpoints is None else list(endpoints)
    results = await fetch_prepared(up, module, endpoints, prepared, deadline, trace, probe_values, whole)
    refused = [endpoint for endpoint, r in zip(endpoints, results, strict=True) if r.status in RENEW_STATUSES]
    if prepared.session is None or not refused:
        return results
    if trace is not None:
        status = results[endpoints.index(refused[0])].status
        trace.add(f"login: its values refused by {', '.join(e.name for e in refused)} (HTTP {status}): made again, and those endpoints retried once")
    renewed = await prepare(up, module, values, deadline, trace, rejected=prepared.session)
    retried = {r.endpoint: r for r in await fetch_prepared(up, module, refused, renewed, deadline, trace, probe_values, whole)}
    return [retried.get(r.endpoint, r) for r in results]
