"""Upstream HTTP: rendered requests fetched concurrently over a shared keep-alive session, each
bounded in time and bytes, redirects followed through hops.next_hop, answers parsed as JSON once."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Hashable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace as SignalTrace
from multidict import CIMultiDictProxy
from yarl import URL

from jsonexporter.keyed import keyed_hash
from jsonexporter.logs import kv
from jsonexporter.numbers import OUT_OF_RANGE_AS_TEXT
from jsonexporter.secrets import CUT, REDACTED, is_credential_header
from jsonexporter.slices import PARSE, turn, turn_free
from jsonexporter.spec.model import DEFAULT_REFRESH_MAX_BYTES, HEADER_VALUE_CONTROL, HTTPClientConfig
from jsonexporter.spec.problems import fault
from jsonexporter.spec.projection import FULL, Projection
from jsonexporter.trace import MAX_MESSAGE, Trace, cut, shorten
from jsonexporter.upstream.cache import Answer, Lookup, ResponseCache, parsed_size
from jsonexporter.upstream.client import TOKEN_REFUSED_INTERVAL, ClientConfigError, Clients, RequestOptions, awaited, basic_credentials, tls_key
from jsonexporter.upstream.detached import Detached
from jsonexporter.upstream.hops import MAX_REDIRECTS, REDIRECT_STATUSES, Hop, Refusal, next_hop, origin
from jsonexporter.upstream.pagination import Page, fetch_pages
from jsonexporter.upstream.refresh import Events, Job, Schedules, login_scope
from jsonexporter.upstream.render import InvalidRequest, UpstreamRequest, probe_redactor, probe_secrets, redact_target, render_request
from jsonexporter.upstream.sessions import LoginStore

log = logging.getLogger("jsonexporter")


@dataclass(slots=True)
class EndpointResult:
    endpoint: str
    # success, timeout, pool_timeout, connection_error, invalid_status, too_large, invalid_json, config_error, redirect_refused, cancelled,
    # internal_error (a fault of ours: fetch_all);
    # with pagination also invalid_page, too_many_pages, pagination_refused
    outcome: str
    status: int = 0
    bytes: int = 0
    duration: float = 0.0
    document: Any = None
    error: str | None = None
    cache: str | None = None  # with cache_ttl: miss, hit, coalesced, stale, revalidate or deferred; with refresh_interval: first, scheduled or scheduled_stale
    cache_age: float | None = None
    stale: bool = False  # the upstream failed; `document` is an older good answer (stale_if_error)
    redirects: list[str] = field(default_factory=list)  # each redirect followed, for the trace
    response_headers: CIMultiDictProxy[str] | None = field(default=None, repr=False)  # of the last answer: a login's values may be there
    # pagination: the pages requested (None: the endpoint has no pagination), and each page for the trace
    pages: int | None = None
    page_lines: list[str] = field(default_factory=list)
    parsed_size: int | None = None  # with cache_ttl: what `document` takes in memory (cache.parsed_size)

    @property
    def ok(self) -> bool:
        return self.outcome == "success"

    @property
    def usable(self) -> bool:
        """A document to extract from: a good answer now, or a stale one."""
        return self.ok or self.stale


# orjson parses 1.5 to 4 times faster (2.1 MB of bench/ items: 13 ms against 21), but needs more
# memory meanwhile: 7.7 times the body's size at its peak for those items (the json module 5.5),
# 9 times and more for bodies of small numbers. Parses take turns (slices.py), so that is one body
# at a time; beyond 4 MiB the json module parses, so that a 16 MiB answer does not cost 150 MB.
ORJSON_MAX_BYTES = 4 << 20


def _cannot_be_made(exc: ValueError) -> str:
    return f"the request cannot be made: {type(exc).__name__}: {exc}"


class InvalidJSON(ValueError):
    """An answer that is not JSON (_parse_json): its own class, so that the ValueErrors aiohttp lets through
    for a request it cannot make (a proxy host the resolver cannot encode) are not taken for one."""


def _parse_json(body: bytes, projection: Projection | None = None, quote_answer: bool = True) -> Any:
    """The answer parsed: with `projection`, only what the rules read, when that applies to it. An
    invalid one's error quotes its start when `quote_answer` (not a login's: its token would be there,
    unknown to the Redactor yet). Raises InvalidJSON."""
    if projection is not None:
        document = projection.decode(body)
        if document is not FULL:
            return document
    hooks: dict[str, Any] = {}
    if len(body) <= ORJSON_MAX_BYTES:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            # perhaps valid for the json module (NaN, Infinity, UTF-16/32, a BOM, lone surrogates, numbers beyond a float): it decides, with its messages
            hooks = OUT_OF_RANGE_AS_TEXT
    try:
        try:
            return json.loads(body, **hooks)
        except ValueError as exc:
            if isinstance(exc, json.JSONDecodeError) or hooks:
                raise
            return json.loads(body, **OUT_OF_RANGE_AS_TEXT)  # an integer of more digits than Python converts
    except RecursionError:
        raise InvalidJSON("JSON nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise InvalidJSON(f"body is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        quoted = f"; body starts with {_quoted_start(body)}" if quote_answer else ""
        raise InvalidJSON(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}{quoted}") from None


def _quoted_start(body: bytes, limit: int = 64) -> str:
    """The first `limit` bytes, quoted; a cut is marked (secrets.CUT), so that a secret cut in two is still hidden."""
    shown = repr(body[:limit])
    return shown if len(body) <= limit else f"{shown[:-1]}{CUT}{shown[-1]}"


async def _read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    declared = response.content_length
    if declared is not None and declared > limit:
        raise _TooLarge(f"response of {declared} bytes is larger than max_response_bytes {limit}")
    # the chunks joined once (one chunk: itself), not grown in a bytearray and copied out of it: each byte copied once
    # at most instead of two or three times (bench/'s 56 KB answer: about 110 kIr of copies a probe, callgrind)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise _TooLarge(f"response is larger than max_response_bytes {limit}")
    return b"".join(chunks)


class _TooLarge(Exception):
    pass


def inflate_with_isal() -> bool:
    """Whether aiohttp decompresses gzip and deflate answers with ISA-L (the isal package, aiohttp 3.12 and later):
    bench/'s 56 KB answer in 36 µs against zlib's 98, the 2.1 MB one in 2.5 ms against 5.2. The bound on the
    decompressed size is the same (`_read_body` counts what comes out)."""
    try:
        from aiohttp.compression_utils import set_zlib_backend
        from isal import isal_zlib
    except ImportError:  # an older aiohttp, or no isal for this platform: zlib's
        return False
    set_zlib_backend(isal_zlib)
    return True


def new_session(limit: int = 256, limit_per_host: int = 32) -> aiohttp.ClientSession:
    """The shared keep-alive session; no cookie jar, so nothing carries over between probes. No timeouts of
    aiohttp's own: every request is bounded by its caller's (_request, the OAuth2 token's), and aiohttp's
    default (5 minutes in all) would set and cancel two more timers per request."""
    inflate_with_isal()
    connector = _Connector(limit=limit, limit_per_host=limit_per_host, ttl_dns_cache=60, keepalive_timeout=30)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False, raise_for_status=False,
                                 timeout=aiohttp.ClientTimeout())


@dataclass(slots=True)
class _PoolWait:
    """Whether a request is waiting for a pooled connection (the connector's limits all taken)."""

    waiting: bool = False


_POOL_WAIT: ContextVar[_PoolWait | None] = ContextVar("jsonexporter_pool_wait", default=None)  # the request being sent (_request)


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector, telling the request being sent (_POOL_WAIT) when it waits for a pooled connection, by
    aiohttp's own signals sent to that request's connection alone: a TraceConfig of the session would have every
    request send all of its signals (request start, headers, chunks, end: about 10 us a request) for these two."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pool_trace = _pool_wait_trace()
        self._pool_trace.freeze()

    async def connect(self, req: ClientRequest, traces: list[SignalTrace], timeout: aiohttp.ClientTimeout) -> Connection:
        pool = _POOL_WAIT.get()
        # only a request that finds the limits all taken can wait: the others go without the signals (a probe's
        # request through a free pool: 3-4 us). Nothing is awaited between this look and aiohttp's own
        if pool is not None and self._available_connections(req.connection_key) <= 0:
            # the session is what aiohttp gives the receivers first: these do not use it
            traces = [*traces, SignalTrace(None, self._pool_trace, self._pool_trace.trace_config_ctx(trace_request_ctx=pool))]  # type: ignore[arg-type]
        return await super().connect(req, traces, timeout)


def _pool_wait_trace() -> aiohttp.TraceConfig:
    # aiohttp's own signals for the wait in the connector's queue: a deadline that passes while a
    # request waits there is the exporter's limit, not the upstream's silence
    async def queued(session: aiohttp.ClientSession, context: Any, params: object) -> None:
        if isinstance(context.trace_request_ctx, _PoolWait):
            context.trace_request_ctx.waiting = True

    async def dequeued(session: aiohttp.ClientSession, context: Any, params: object) -> None:
        if isinstance(context.trace_request_ctx, _PoolWait):
            context.trace_request_ctx.waiting = False

    config = aiohttp.TraceConfig()
    config.on_connection_queued_start.append(queued)
    config.on_connection_queued_end.append(dequeued)
    return config


def _pool_timeout(up: Upstream, budget: float) -> str:
    connector = up.session.connector
    limits = f"{connector.limit_per_host} per host, {connector.limit} in all" if connector is not None else "the limits"
    return f"no free pooled connection within {budget:.3f}s: all connections of the pool ({limits}) were busy; the upstream was not asked"


@dataclass
class Upstream:
    """What requests go through: the shared keep-alive session, the run-time client configurations
    of the loaded spec (replaced by a reload), the response cache and the login sessions; with `schedules`
    (the server's), endpoints with refresh_interval are fetched on their schedules, else each probe fetches them."""

    session: aiohttp.ClientSession
    clients: Clients = field(default_factory=Clients)
    cache: ResponseCache = field(default_factory=ResponseCache)
    logins: LoginStore = field(default_factory=LoginStore)
    schedules: Schedules | None = None
    events: Events = field(default_factory=Events)
    detached: Detached = field(default_factory=Detached)  # one bound of the requests no probe waits for, the cache's and the logins'

    def __post_init__(self) -> None:
        self.logins.changed = self.events.sessions
        self.cache.detached = self.logins.detached = self.detached

    def schedule(self, max_requests: int, min_idle: float, max_bytes: int = DEFAULT_REFRESH_MAX_BYTES) -> Schedules:
        """Fetch endpoints with refresh_interval on schedules from now on."""
        self.schedules = Schedules(lambda job: _background(self, job), max_requests, min_idle, self.events, max_bytes)
        return self.schedules

    async def close(self) -> None:
        """Stop every background request, then the session."""
        if self.schedules is not None:
            await self.schedules.close()
        await self.cache.close()
        await self.logins.close()
        await self.session.close()


def _cache_key(request: UpstreamRequest, options: RequestOptions) -> str:
    """The request, and everything that decides whether its answer is good: endpoints share an answer
    only when their own validation (status codes, size limit, redirect policy, allowlist) would accept it."""
    endpoint = request.endpoint
    codes = "2xx" if endpoint.valid_status_codes is None else ",".join(map(str, sorted(endpoint.valid_status_codes)))
    parts = [request.method, str(request.url), options.identity(), str(options.proxy), tls_key(options.ssl), str(options.server_hostname),
             codes, str(endpoint.max_response_bytes), str(options.allow_redirects), *(p.pattern for p in request.allow), parsed_as(request)]
    if endpoint.pagination is not None:  # a combined document is another answer than its first page
        parts.append(repr(endpoint.pagination))
    digest = keyed_hash("\0".join(parts).encode())  # the headers' and the body's credentials: keyed.py
    digest.update(request.body or b"")
    for name, value in sorted(request.headers.items()):
        digest.update(f"\0{name}\0{value}".encode())
    return digest.hexdigest()


def _first_hop(request: UpstreamRequest, options: RequestOptions) -> Hop:
    """The request as first sent, with the Authorization of http_client_config (or the URL's userinfo);
    raise ClientConfigError, naming the header and never its value, when a header cannot be sent. Made once per request
    when the options add nothing to it (no Authorization, proxy headers or server name): UpstreamRequest.first_hop."""
    plain = options.authorization is None and options.proxy_headers is None and options.server_hostname is None
    if plain and request.first_hop is not None:
        return request.first_hop
    hop = _new_first_hop(request, options)
    if plain:
        object.__setattr__(request, "first_hop", hop)  # the request's own: it holds what the hop is made of
    return hop


def _new_first_hop(request: UpstreamRequest, options: RequestOptions) -> Hop:
    headers = dict(request.headers)
    url = request.url
    userinfo = url.user is not None or url.password is not None
    if options.authorization is not None:
        headers["Authorization"] = options.authorization
    elif userinfo:  # sent as Basic auth, as aiohttp and Go do; the URL keeps none
        headers["Authorization"] = "Basic " + basic_credentials(url.user or "", url.password or "")
    for name, value in [*headers.items(), *(options.proxy_headers or {}).items()]:
        if HEADER_VALUE_CONTROL.search(value):
            source = f" (from {options.authorization_source})" if name == "Authorization" and options.authorization_source else ""
            raise ClientConfigError(f"header {name}{source} contains a line break or another control character")
    return Hop(request.method, url.with_user(None) if userinfo else url, headers, request.body, options.server_hostname, request.secrets)


def _parsed(result: EndpointResult, body: bytes, request: UpstreamRequest, quote_answer: bool) -> None:
    endpoint = request.endpoint
    result.document = _parse_json(body, request.projection, quote_answer)
    if endpoint.cache_ttl is not None or endpoint.refresh_interval is not None:  # kept: counted by its parsed size
        result.parsed_size = parsed_size(body)


async def _exchange(up: Upstream, request: UpstreamRequest, options: RequestOptions, hop: Hop, result: EndpointResult,
                    page: Page | None = None, quote_answer: bool = True) -> None:
    """Send `hop`, and the requests its redirects make (each through `next_hop`); read the last answer into `result`,
    or for a `page` of a paginated endpoint, as that Page says; `quote_answer` whether result.error may quote the answer
    (_parse_json). The caller's _POOL_WAIT says whether a request is waiting for a pooled connection."""
    endpoint = request.endpoint
    while True:
        proxy, proxy_headers = up.clients.proxy(endpoint.client, hop.url)
        async with up.session.request(
            hop.method, hop.url, headers=hop.headers, data=hop.body, ssl=options.ssl if hop.client_identity else options.anonymous_ssl,
            server_hostname=hop.server_hostname,
            proxy=proxy, proxy_headers=proxy_headers, allow_redirects=False,
        ) as response:
            result.status, result.response_headers = response.status, response.headers
            location = response.headers.get("Location")
            if location is None or not options.allow_redirects or response.status not in REDIRECT_STATUSES:
                if not endpoint.status_ok(response.status):
                    result.outcome = "invalid_status"
                    result.error = f"HTTP status {response.status} {response.reason or ''}".rstrip()
                    return
                if page is not None:
                    page.answered(response)
                body = await _read_body(response, endpoint.max_response_bytes if page is None else page.max_bytes)
                result.bytes = len(body)
                if page is not None:
                    page.body = body
                    if not page.parse:
                        return
                if turn_free():  # the parse awaits nothing: nobody else computes before it ends
                    _parsed(result, body, request, quote_answer)
                    return
                async with turn(PARSE):  # see slices.py: waiting answers stay bytes, smaller than parsed
                    _parsed(result, body, request, quote_answer)
                return
        n = len(result.redirects) + 1
        if n > MAX_REDIRECTS:
            result.outcome, result.error = "redirect_refused", f"more than {MAX_REDIRECTS} redirects"
            return
        decision = next_hop(hop, response.status, location, request.url, request.allow)
        if isinstance(decision, Refusal):
            where = (str(decision.url) if decision.url is not None else "a URL not shown" if decision.hidden
                     else "an unusable Location")
            result.outcome, result.error = "redirect_refused", f"redirect {n} ({response.status} to {where}) refused: {decision.reason}"
            return
        crossed = " (another origin: only User-Agent and Accept go with it)" if origin(decision.url) != origin(hop.url) else ""
        result.redirects.append(f"redirect {n}: {response.status} -> {decision.method} {decision.url}{crossed}")
        hop = decision


async def _request(up: Upstream, request: UpstreamRequest, options: RequestOptions, budget: float,
                   page: Page | None = None, quote_answer: bool = True) -> tuple[Answer | None, EndpointResult]:
    """One upstream request and its redirects, bounded by `budget` seconds; the answer when it is good
    (`page` and `quote_answer` as for _exchange)."""
    result = await _sent(up, request, options, budget, page, quote_answer)
    if not result.ok:
        return None, result
    return Answer(result.document, result.status, result.bytes, size=result.parsed_size), result


async def _sent(up: Upstream, request: UpstreamRequest, options: RequestOptions, budget: float,
                page: Page | None = None, quote_answer: bool = True) -> EndpointResult:
    """_request's outcome alone, without its Answer: what a probe's endpoint without a cache or pagination needs
    (a frozen Answer made and dropped at each probe: 10 kIr of bench/'s 10-item probe, callgrind)."""
    result = EndpointResult(request.endpoint.name, "success")
    start = time.monotonic()
    pool = _PoolWait()
    waiting = _POOL_WAIT.set(pool)
    try:
        hop = _first_hop(request, options)
        async with asyncio.timeout(max(budget, 0.0)):
            await _exchange(up, request, options, hop, result, page, quote_answer)
    except ClientConfigError as exc:
        result.outcome, result.error = "config_error", str(exc)
    except TimeoutError:
        if pool.waiting:
            result.outcome, result.error = "pool_timeout", _pool_timeout(up, budget)
        else:
            result.outcome, result.error = "timeout", f"no complete answer within {budget:.3f}s"
    except _TooLarge as exc:
        result.outcome, result.error = "too_large", str(exc)
    except aiohttp.ClientError as exc:  # before ValueError: certificate errors are both
        result.outcome, result.error = "connection_error", f"{type(exc).__name__}: {exc}"
    except InvalidJSON as exc:
        result.outcome, result.error = "invalid_json", str(exc)
    except ValueError as exc:  # aiohttp refusing, before sending, a request it cannot make: a proxy URL, a TLS setting
        result.outcome, result.error = "config_error", _cannot_be_made(exc)
    except OSError as exc:
        result.outcome, result.error = "connection_error", f"{type(exc).__name__}: {exc.strerror or exc}"
    finally:
        _POOL_WAIT.reset(waiting)
    result.duration = time.monotonic() - start
    if not result.ok:
        result.document = None
    return result


def parsed_as(request: UpstreamRequest) -> str:
    """What the answer's document is: parsed whole, or projected for which rules (spec/projection.py). Part of
    every key an answer is kept under: a document parsed for other rules lacks fields, a trace shows the whole."""
    return request.projection.key if request.projection is not None else "whole"


def schedule_key(request: UpstreamRequest, job: Job) -> Hashable:
    """What makes a schedule the same one: its module, endpoint and interval, the rendered request and what its
    document is (parsed_as), the probe's values its login reads (refresh.login_scope: whose session renders it) and
    what decides whether an answer is good (the client config compared whole: a changed secret is a new schedule)."""
    endpoint = request.endpoint
    return (job.module.name, endpoint.name, endpoint.refresh_interval, request.method, str(request.url), tuple(sorted(request.headers.items())),
            request.body, parsed_as(request), endpoint.client, endpoint.valid_status_codes, endpoint.max_response_bytes,
            tuple(p.pattern for p in request.allow), login_scope(job))


def render_job(job: Job) -> UpstreamRequest:
    """The request of a background job, rendered afresh from the endpoint and the probe's values as a probe's is
    (fetch_module). The values login.py adds when it sends one (secrets, a login's) stand in by their names:
    the schedule of a request outlives a rotated secret and a renewed login, and never keeps their values."""
    module = job.module
    values = {**job.values, **{name: name for name in module.secret_names}}
    return render_request(job.endpoint, values, module.target_allow, None if job.whole else module.projections.get(job.endpoint.name),
                          frozenset(probe_secrets(job.values, module)))


async def _background(up: Upstream, job: Job) -> tuple[Answer | None, EndpointResult]:
    """A schedule's request: rendered afresh, sent through fetch_one as a probe's (the client config, the
    redirect and host rules), bounded by the job's budget; reported and, when it fails, logged."""
    deadline = asyncio.get_running_loop().time() + job.budget
    try:
        if job.module.secrets or job.module.login is not None:
            from jsonexporter.upstream.login import fetch_logged_in  # it sends its requests through this module

            (result,) = await fetch_logged_in(up, job.module, job.values, deadline, endpoints=[job.endpoint], whole=job.whole)
        else:
            result = await fetch_one(up, render_job(job), deadline)
    except InvalidRequest as exc:  # a reload changed what the values may be
        result = EndpointResult(job.endpoint.name, "config_error", error=str(exc))
    return _background_done(up, job, result), result


def _background_done(up: Upstream, job: Job, result: EndpointResult) -> Answer | None:
    up.events.fetched(job, result)
    if not result.ok:
        caller = probe_redactor(job.values, up.clients.redactor, job.module)
        # cut as a probe's errors are (server._record), then redacted: an upstream's reason phrase is up to 8 KB
        err = cut(result.error, MAX_MESSAGE) if result.error is not None else None
        err = caller(err) if caller is not None and err is not None else err
        log.warning("background request failed, keeping the previous answer", extra=kv(
            module=job.module.name, endpoint=job.endpoint.name, target=redact_target(job.values.get("target", "")), outcome=result.outcome, err=err))
        return None
    return Answer(result.document, result.status, result.bytes, result.pages, result.parsed_size)


async def fetch_one(up: Upstream, request: UpstreamRequest, deadline: float, trace: Trace | None = None, job: Job | None = None) -> EndpointResult:
    """One endpoint, bounded by its timeout and the probe's deadline (a loop.time()), through the
    cache when the endpoint has `cache_ttl`, from its schedule when it has `refresh_interval` and `job`
    (the probe's: what its background requests are made of, and what bounds a request it shares with
    other probes, Job.budget) is given."""
    if trace is not None:  # the trace shows the whole answer: its cache entry and its schedule are their own
        request = dataclasses.replace(request, projection=None) if request.projection is not None else request
        job = dataclasses.replace(job, whole=True) if job is not None else None
    endpoint = request.endpoint
    loop = asyncio.get_running_loop()
    start = loop.time()
    budget = deadline - start
    if endpoint.timeout is not None:
        budget = min(budget, endpoint.timeout)
    options: RequestOptions | None = None
    try:
        options = up.clients.ready_options(endpoint.client, request.url)
        if options is None:
            async with asyncio.timeout(max(budget, 0.0)):  # an OAuth2 token request counts against the deadline
                options = await up.clients.options(endpoint.client, request.url, up.session)
    except (ClientConfigError, ValueError, TimeoutError) as exc:
        outcome, error = _unmade(exc, endpoint.client, budget)
        result = EndpointResult(endpoint.name, outcome, error=error)

    async def sent_as(options: RequestOptions) -> EndpointResult:
        remaining = budget - (loop.time() - start)
        result: EndpointResult
        lookup: Lookup | None = None
        if job is not None and endpoint.refresh_interval is not None and up.schedules is not None:
            scheduled = request if not (job.module.secrets or job.module.login) else render_job(job)  # without their values
            lookup = await up.schedules.get(schedule_key(scheduled, job), job, remaining)
        if lookup is not None:
            result = _from_cache(endpoint.name, lookup, remaining)
        elif endpoint.cache_ttl is None and endpoint.pagination is None:
            result = await _sent(up, request, options, remaining)
        elif endpoint.cache_ttl is None:
            _, result = await _answer(up, request, options, remaining)
        else:
            sent: list[EndpointResult] = []  # the request this probe made itself (a miss), for its redirects in the trace

            shared = job.budget if job is not None else remaining  # see Job.budget: never the starter's `remaining`

            async def fetch(options: RequestOptions = options) -> tuple[Answer | None, EndpointResult]:
                answer, fetched = await _answer(up, request, options, shared)
                sent.append(fetched)
                return answer, fetched

            async def revalidate(options: RequestOptions = options) -> tuple[Answer | None, EndpointResult]:
                assert job is not None
                until = loop.time() + job.budget
                _, fetched = await _answer(up, request, options, job.budget)
                if job.module.login is not None:
                    from jsonexporter.upstream.login import renewed_if_refused  # it sends its requests through this module

                    retried = await renewed_if_refused(up, job, request, fetched, until)
                    if retried is not fetched:  # sent again with the renewed login's values, and cached under that request's key
                        up.cache.discard(_cache_key(request, options))  # the refused values' answer: no probe renders them any more
                        _background_done(up, job, retried)
                        return None, retried
                return _background_done(up, job, fetched), fetched

            lookup = await up.cache.get(_cache_key(request, options), endpoint.cache_ttl, endpoint.stale_if_error, fetch, remaining,
                                        endpoint.stale_while_revalidate, revalidate if job is not None else None)
            result = _from_cache(endpoint.name, lookup, remaining)
            if sent:
                result.redirects, result.page_lines = sent[0].redirects, sent[0].page_lines
        return result

    if options is not None:
        result = await sent_as(options)
        # a scheduled endpoint's answer is its schedule's: its background request renews the token and retries itself
        scheduled = job is not None and endpoint.refresh_interval is not None and up.schedules is not None
        if result.status == 401 and endpoint.client.oauth2 is not None and options.authorization is not None and not scheduled:
            renewed = await _token_renewed(up, request, options, budget - (loop.time() - start), trace)
            if renewed is not None:  # the token refused: sent once more with a new one
                if endpoint.cache_ttl is not None:  # the refused token's answer is the new one's, as old: stale_if_error still serves it
                    up.cache.carry(_cache_key(request, options), _cache_key(request, renewed))
                options, result = renewed, await sent_as(renewed)
    result.duration = loop.time() - start
    if trace is not None:
        _trace_request(trace, request, options, result)
    return result


async def _answer(up: Upstream, request: UpstreamRequest, options: RequestOptions, budget: float) -> tuple[Answer | None, EndpointResult]:
    """The endpoint's answer: one request, or with `pagination` its sequence of pages (pagination.py), each one a _request."""
    if request.endpoint.pagination is None:
        return await _request(up, request, options, budget)

    # parsed whole (spec/projection.py): what finds the next page and where the pages' elements go is not
    # read by a rule, and a projection of the rules' reads would leave it out
    request = dataclasses.replace(request, projection=None)

    async def send(paged: UpstreamRequest, budget: float, page: Page) -> tuple[Answer | None, EndpointResult]:
        return await _request(up, paged, options, budget, page)

    return await fetch_pages(send, _parse_json, request, budget)


def _unmade(exc: ClientConfigError | ValueError | TimeoutError, client: HTTPClientConfig, budget: float) -> tuple[str, str]:
    """The outcome and error of a request whose options (Clients.options) could not be made within `budget`."""
    if isinstance(exc, ClientConfigError):
        return "config_error", str(exc)
    if isinstance(exc, TimeoutError):
        return "timeout", f"no {awaited(client)} within {budget:.3f}s"
    return "config_error", _cannot_be_made(exc)  # aiohttp reading a proxy from the environment (HTTP_PROXY) that is no URL


async def _token_renewed(up: Upstream, request: UpstreamRequest, options: RequestOptions, budget: float,
                         trace: Trace | None) -> RequestOptions | None:
    """The options of a request whose OAuth2 token an upstream refused (HTTP 401) with the token that replaces it,
    fetched within `budget` (client.TokenSource.refused says whether to); None: the 401 stands."""
    config = request.endpoint.client
    assert config.oauth2 is not None and options.authorization is not None
    said = f"endpoint {request.endpoint.name}: its oauth2 token refused (HTTP 401)"
    try:
        if not up.clients.token_source(config.oauth2).refused(options.authorization):
            if trace is not None:
                trace.add(f"{said}: kept, as one was dropped less than {TOKEN_REFUSED_INTERVAL:g}s ago: the 401 stands")
            return None
        async with asyncio.timeout(max(budget, 0.0)):
            renewed = await up.clients.options(config, request.url, up.session)
    except (ClientConfigError, ValueError, TimeoutError) as exc:  # no new token: the probe's answer is the 401 (the next probe asks again)
        reason = _unmade(exc, config, budget)[1]
    else:
        if trace is not None:
            trace.add(f"{said}: a new one fetched, the request sent once more")
        return renewed
    if trace is not None:
        trace.add(f"{said}: no new one ({reason}): the 401 stands")
    return None


def _from_cache(name: str, lookup: Lookup, waited: float) -> EndpointResult:
    # a copy: the failure is shared by the probes that waited for it, and a schedule keeps it
    fetched = dataclasses.replace(lookup.failure) if isinstance(lookup.failure, EndpointResult) else None
    if lookup.answer is None:
        if fetched is not None:
            fetched.cache = lookup.result
            return fetched
        return EndpointResult(name, "timeout", error=f"no complete answer within {waited:.3f}s", cache=lookup.result)
    answer = lookup.answer
    result = EndpointResult(name, "success", answer.status, answer.bytes, document=answer.document, cache=lookup.result, cache_age=lookup.age,
                            pages=answer.pages)
    if lookup.result in ("stale", "scheduled_stale") and fetched is not None:
        result.outcome, result.error, result.status, result.stale = fetched.outcome, fetched.error, fetched.status, True
    return result


def _trace_request(trace: Trace, request: UpstreamRequest, options: RequestOptions | None, result: EndpointResult) -> None:
    endpoint = request.endpoint
    headers = dict(request.headers)
    if options is not None and options.authorization is not None:
        headers["Authorization"] = options.authorization
    shown = {k: (REDACTED if is_credential_header(k, v) else v) for k, v in headers.items()}  # as hops.carried_secrets decides
    trace.add(f"endpoint {endpoint.name}: {request.method} {request.url}")
    trace.add(f"  request headers: {shown}")
    if options is not None and options.proxy:
        trace.add(f"  via proxy {URL(options.proxy)}")
    if request.body is not None:
        trace.add(f"  request body: {len(request.body)} bytes")
    for line in [*result.redirects, *result.page_lines]:
        trace.add(f"  {line}")
    cached = f", cache {result.cache} (age {result.cache_age or 0.0:.1f}s)" if result.cache else ""
    followed = f", redirects followed: {len(result.redirects)}" if result.redirects else ""
    trace.add(f"  -> {result.outcome}, status {result.status}, {result.bytes} bytes, {result.duration:.3f}s{followed}{cached}")
    if result.error:  # an upstream's text (a reason phrase, up to aiohttp's 8 KB lines): cut as records are, redacted as the trace leaves
        trace.add(f"  error: {cut(result.error, MAX_MESSAGE)}")
    if result.document is not None:
        parsed = " (the fields the rules read)" if request.projection is not None else ""  # spec/projection.py
        trace.add(f"  document{' (stale)' if result.stale else ''}{parsed}: {shorten(result.document)}")


async def fetch_all(up: Upstream, requests: list[UpstreamRequest], deadline: float, trace: Trace | None = None,
                    jobs: Sequence[Job | None] | None = None) -> list[EndpointResult]:
    """Every request at once; cancelling the caller (a scraper that went away) cancels them all
    (a cached endpoint's shared request goes on for the other probes waiting for it). `jobs`, one per
    request: what its background requests are made of."""
    each = jobs if jobs is not None else [None] * len(requests)
    if len(requests) == 1:
        try:
            return [await fetch_one(up, requests[0], deadline, trace, each[0])]
        except Exception as exc:
            return [_internal_error(requests[0], exc, trace)]
    traces = [Trace() if trace is not None else None for _ in requests]
    results = await asyncio.gather(*(fetch_one(up, r, deadline, t, j) for r, t, j in zip(requests, traces, each, strict=True)),
                                   return_exceptions=True)
    if trace is not None:
        for t in traces:
            assert t is not None
            for line in t.lines:
                trace.add(line)
    return [r if isinstance(r, EndpointResult) else _internal_error(q, r, trace) for q, r in zip(requests, results, strict=True)]


def _internal_error(request: UpstreamRequest, exc: BaseException, trace: Trace | None) -> EndpointResult:
    """The failure of an endpoint whose fetch raised what fetch_one does not expect (a fault of ours): that
    endpoint fails, said by the exception's kind and our line (problems.fault), the others and the probe go on."""
    if not isinstance(exc, Exception):  # cancelled (the probe's scraper went away) or exiting: not a failure of the endpoint
        raise exc
    log.error("fetching an endpoint failed unexpectedly", extra=kv(endpoint=request.endpoint.name, err=fault(exc)))
    result = EndpointResult(request.endpoint.name, "internal_error", error=fault(exc))
    if trace is not None:
        trace.add(f"endpoint {request.endpoint.name}: {request.method} {request.url}")
        trace.add(f"  -> internal_error: {result.error}")
    return result
