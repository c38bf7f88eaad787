"""The aiohttp app: /probe, /metrics, the landing page and the health endpoints."""

from __future__ import annotations

import asyncio
import html
import itertools
import logging
import signal
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote, urlencode

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import exposition as prom_exposition
from prometheus_client.openmetrics import exposition as prom_openmetrics

from jsonexporter import __version__
from jsonexporter.exposition import encode_pieces, gzip_pieces, negotiate, render_text, utf8
from jsonexporter.listen import ClientConnections
from jsonexporter.logs import kv
from jsonexporter.probe import ProbeResult, TargetNotAllowed, fail, failed_unexpectedly, run_probe
from jsonexporter.secrets import REDACTED, Redactor
from jsonexporter.selfmetrics import SelfMetrics
from jsonexporter.slices import DeadlinePassed
from jsonexporter.spec import SpecError, SpecFileError, load_spec, read_spec_files
from jsonexporter.spec.model import DEFAULT_REFRESH_MAX_BYTES, DEFAULT_REFRESH_MAX_REQUESTS, DEFAULT_REFRESH_MIN_IDLE, DEFAULT_SERIES_LIMIT, Spec
from jsonexporter.spec.problems import fault, unexpected_failure
from jsonexporter.spec.sources import spec_sha256
from jsonexporter.trace import MAX_MESSAGE, Trace, cut
from jsonexporter.upstream import EndpointResult, InvalidRequest, Upstream, new_session, probe_redactor, redact_target, reschedule
from jsonexporter.upstream.client import Clients
from jsonexporter.upstream.detached import Detached
from jsonexporter.upstream.refresh import Events, Job
from jsonexporter.webconfig import (
    BasicAuth,
    ServingContext,
    TLSFileError,
    WebConfig,
    headers_hook,
    load_web_config,
    serving_context,
    ssl_context,
    tls_reload_problem,
)

log = logging.getLogger("jsonexporter")

TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
WRITTEN_WHOLE_BYTES = 1 << 18  # an answer up to this size is sent in one write (one system call), its copies cost little
MIN_TIMEOUT = 0.1


@dataclass
class Options:
    timeout_offset: float = 0.5  # seconds kept from Prometheus's scrape timeout to write the answer
    connection_limit: int = 256
    connection_limit_per_host: int = 32
    max_client_connections: int = 0  # beyond, the oldest idle client connections are closed (listen.py); 0: no bound
    max_concurrent_probes: int = 256  # over it: HTTP 503 at once
    series_limit: int = DEFAULT_SERIES_LIMIT  # of modules without series_limit; 0: none
    recent_probes: int = 50  # kept for the landing page
    auto_reload_interval: float = 0.0  # seconds; 0: only SIGHUP and POST /-/reload
    worker: int = 0  # this process's number among `workers` worker processes (workers.py); 0: the only process
    workers: int = 1
    after_reload: Callable[[], None] | None = None  # called after POST /-/reload (workers: the others reload too)
    refresh_max_requests: int = DEFAULT_REFRESH_MAX_REQUESTS  # scheduled requests of modules with a target (refresh_interval), at once
    refresh_min_idle: float = DEFAULT_REFRESH_MIN_IDLE  # seconds without a probe before such a request may leave its schedule
    refresh_max_bytes: int = DEFAULT_REFRESH_MAX_BYTES  # of the answers the schedules keep, parsed (cache.parsed_size)


class ProbeRecord(NamedTuple):
    """One recent probe, for the landing page. A named tuple, not a frozen dataclass: one is made at every probe,
    and a frozen dataclass sets each of its fields through object.__setattr__ (2 us against 0.5)."""

    id: int
    time: float
    module: str
    target: str  # redacted when recorded: the "debug again" links percent-encode it, beyond the page's redaction
    success: bool
    duration: float
    errors: tuple[str, ...]
    endpoints: int = 0
    endpoint_failures: int = 0
    extraction_errors: int = 0
    duplicates: int = 0

    @property
    def outcome(self) -> str:
        """failure (probe_success 0), degraded (series skipped or dropped) or success."""
        if not self.success:
            return "failure"
        return "degraded" if self.extraction_errors or self.duplicates or self.endpoint_failures else "success"


Reloaded = tuple[bool, str]


@dataclass
class Reloads:
    """Reloads one at a time, coalesced: a reload asked while one runs waits for the next one, which starts when
    that one ends and answers every request asked meanwhile (each sees the files as they were after it asked:
    the one running may have read them before), so that a burst of requests costs two reloads and holds its
    connections that long, not one reload each in turn."""

    running: asyncio.Task[Reloaded] | None = None
    next: asyncio.Task[Reloaded] | None = None
    notified: asyncio.Task[Reloaded] | None = None  # the last reload the other workers were told of (handle_reload)

    def asked(self, reload: Callable[[], Coroutine[Any, Any, Reloaded]]) -> asyncio.Task[Reloaded]:
        """The reload that answers a request made now: the next one while one runs, else one started now."""
        if self.next is not None:  # it has not started: it reads the files after this request
            return self.next
        if self.running is None or self.running.done():
            self.running = _retrieved(asyncio.create_task(reload()))
            return self.running
        running = self.running

        async def after() -> Reloaded:
            await asyncio.wait([running])  # however it ended
            self.running, self.next = self.next, None
            return await reload()

        self.next = _retrieved(asyncio.create_task(after()))
        return self.next


def _retrieved(task: asyncio.Task[Reloaded]) -> asyncio.Task[Reloaded]:
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # every request that waited for it may have gone
    return task


@dataclass
class State:
    """What the app serves. `spec` is replaced whole by a reload, never changed in place: a probe
    keeps the module it started with."""

    spec: Spec
    options: Options
    metrics: SelfMetrics
    spec_file: str | None = None
    web: WebConfig = field(default_factory=WebConfig)
    tls: ServingContext | None = None
    upstream: Upstream | None = None
    connections: ClientConnections = field(default_factory=ClientConnections)
    in_flight: int = 0
    in_flight_gauge: bool = True  # whether the gauge is counted at each probe too (with workers); else it reads `in_flight`
    reloads: Reloads = field(default_factory=lambda: Reloads())
    recent: deque[ProbeRecord] = field(default_factory=deque)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    redactor: Redactor = field(default_factory=Redactor)  # knows every spec served since start, and what was read at run time


STATE = web.AppKey("state", State)
_T = TypeVar("_T")


class _ForPeople(web.Response):
    """A page or a plain-text message: redacted by the app's middleware (`_edge`) on its way out."""


def _edge(state: State, auth: BasicAuth) -> Middleware:
    """The app's one middleware, one coroutine a request instead of one per concern: the request's connection
    marked busy (listen.py closes only idle ones) and its head no longer counted as unbegun, the web config's basic auth (read at each request: a
    reload may add users), and the edge of every text meant for people (pages, traces, errors): one
    redaction, whatever the handler put in. Metrics answers are data and pass untouched."""

    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        protocol = request.protocol
        state.connections.begun(request)
        try:
            if state.web.users:
                refused = await auth.refusal(request.headers.get("Authorization"))
                if refused is not None:
                    return refused
            response = await handler(request)
            if state.tls is not None and _tls_outdated(state.tls, request.transport):
                response.force_close()  # made before a reload changed the TLS settings: its client connects again with them
            if isinstance(response, _ForPeople) and isinstance(response.body, bytes):
                mark = html.escape(REDACTED) if response.content_type == "text/html" else REDACTED
                response.body = state.redactor(response.body.decode("utf-8"), mark).encode("utf-8")
            return response
        finally:
            state.connections.busy.discard(protocol)

    return edge


def _tls_outdated(tls: ServingContext, transport: asyncio.BaseTransport | None) -> bool:
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    return ssl_object is not None and tls.outdated(ssl_object)


def _plain(status: int, text: str) -> web.Response:
    # utf8: a lone surrogate that the json module let through from an answer shows as its JSON escape
    return _ForPeople(status=status, body=utf8(text + "\n"), content_type="text/plain", charset="utf-8")


def _shown(value: str, limit: int = 100) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def probe_timeout(module_timeout: float, header: str | None, offset: float) -> float:
    """The smaller of the module's timeout and Prometheus's scrape timeout less the offset."""
    if header:
        try:
            scrape = float(header)
        except ValueError:
            return module_timeout
        if scrape > 0:
            return min(module_timeout, max(scrape - offset, MIN_TIMEOUT))
    return module_timeout


async def handle_probe(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    query: dict[str, str] = {}
    for key, value in request.query.items():
        query.setdefault(key, value)  # the first of repeated parameters wins
    name = query.get("module", "default")
    module = state.spec.modules.get(name)
    if module is None:
        state.metrics.probes.labels("", "invalid").inc()
        known = ", ".join(sorted(state.spec.modules))
        return _plain(400, f"unknown module {_shown(name)}; known modules: {known}")
    target = query.get("target", "")
    debug = query.get("debug", "").lower() in ("true", "1", "yes")
    timeout = probe_timeout(module.timeout, request.headers.get(TIMEOUT_HEADER), state.options.timeout_offset)
    if state.in_flight >= state.options.max_concurrent_probes:
        state.metrics.probes.labels(module.name, "rejected").inc()
        return _plain(503, f"too many concurrent probes (limit {state.options.max_concurrent_probes}); try again")
    assert state.upstream is not None
    caller = probe_redactor(query, state.redactor, module)  # this probe's own secrets: its target's credentials, its secret parameters
    state.in_flight += 1
    if state.in_flight_gauge:
        state.metrics.in_flight.inc()
    began = asyncio.get_running_loop().time()
    try:
        result = await run_probe(state.upstream, module, target, query, timeout, debug, state.options.series_limit)
    except TargetNotAllowed as exc:
        state.metrics.probes.labels(module.name, "forbidden").inc()
        return _plain(403, caller(str(exc)) if caller is not None else str(exc))
    except InvalidRequest as exc:
        state.metrics.probes.labels(module.name, "invalid").inc()
        return _plain(400, caller(str(exc)) if caller is not None else str(exc))
    except Exception as exc:  # run_probe's own fault before its query was resolved: the probe fails, not the request
        result = failed_unexpectedly(module, [], Trace() if debug else None, exc, asyncio.get_running_loop().time() - began, timed=True)
    finally:
        state.in_flight -= 1
        if state.in_flight_gauge:
            state.metrics.in_flight.dec()
    if debug:
        text = _debug_text(result)
        _record(state, module.name, target, result, caller)
        return _plain(200, caller(text) if caller is not None else text)
    accept, accept_encoding = request.headers.get("Accept", ""), request.headers.get("Accept-Encoding", "")
    unwritten: dict[str, Exception] = {}  # the families that could not be written, for a fault of ours: left out
    try:
        pieces, headers = await encode_pieces(result.families, accept, accept_encoding, result.deadline, let_go=True, faults=unwritten)
    except DeadlinePassed:
        elapsed = asyncio.get_running_loop().time() - (result.deadline - timeout)
        result = fail(result, module, "deadline", f"the deadline of {timeout:.3f}s passed while the answer was written", elapsed)
        pieces, headers = await encode_pieces(result.families, accept, accept_encoding)  # the probe's own metrics: a few lines
    except Exception as exc:  # a fault of ours in a family of more than a piece, or in the probe's own metrics
        elapsed = asyncio.get_running_loop().time() - began
        result = failed_unexpectedly(module, result.endpoints, result.trace, exc, elapsed, timed=True)
        pieces, headers = await encode_pieces(result.families, accept, accept_encoding)
    for name, raised in unwritten.items():  # said as an extraction's fault is: the metric's, logged once by _record
        result.extraction.faults.setdefault(name, f"internal_error: {fault(raised)} (writing the answer)")
    result.families, result.extraction.families = [], {}  # written: the series go before the answer is sent
    _record(state, module.name, target, result, caller)
    return await write_pieces(request, pieces, headers, within=timeout)  # as long again as the probe had


class _Answer(web.StreamResponse):
    """A streamed answer whose headers go out with its first piece: one write (one system call, one
    wake-up of the scraper) for a small answer instead of two, as web.Response does."""

    _send_headers_immediately = False


async def write_pieces(request: web.Request, pieces: list[bytes], headers: dict[str, str], within: float | None = None) -> web.StreamResponse:
    """An answer written piece by piece (a small one at once), each let go once written, with its Content-Length. A whole
    body would be in memory up to four times at once while sent (joined; joined again with the headers
    and copied twice by the Python 3.11 transport, for what the socket does not take at once), and
    until the scraper has read it."""
    response = _Answer(headers=headers)
    response.content_length = size = sum(map(len, pieces))
    if size <= WRITTEN_WHOLE_BYTES:
        pieces[:] = [b"".join(pieces)]
    try:
        if _fits(request.transport, size):  # nothing to wait for: no timer to set and cancel
            await _write(request, response, pieces)
        else:
            async with asyncio.timeout(within):  # a scraper that does not read must not hold the answer in memory
                await _write(request, response, pieces)
    except ConnectionError:  # the scraper went away: there is nobody to answer
        pass
    except TimeoutError:
        left = sum(map(len, pieces))
        pieces.clear()
        if request.transport is not None:
            request.transport.abort()  # close() would still send what the transport holds
        log.warning("the scraper did not read its answer in time: connection closed",
                    extra=kv(within=f"{within:.3f}s" if within is not None else None, unsent_bytes=left))
    return response


_HEADERS_ROOM = 1 << 14  # bytes: the status line and headers of an answer, the web config's included, fit in it


def _fits(transport: asyncio.BaseTransport | None, size: int) -> bool:
    """Whether the transport takes an answer of `size` bytes without pausing its writer (the buffer stays below its
    high-water mark): then writing it awaits nothing, and whether the scraper reads it or not, it cannot hold the handler."""
    if not isinstance(transport, asyncio.WriteTransport):
        return False
    return transport.get_write_buffer_size() + size + _HEADERS_ROOM < transport.get_write_buffer_limits()[1]


async def _write(request: web.Request, response: web.StreamResponse, pieces: list[bytes]) -> None:
    await response.prepare(request)
    if request.method != "HEAD":
        pieces.reverse()
        while pieces:
            await response.write(pieces.pop())


def _record(state: State, module: str, target: str, result: ProbeResult, caller: Redactor | None = None) -> None:
    """Count, log and keep the probe; `caller` hides the probe's own secrets (render.probe_redactor), and
    the process's too (its parent). Every text kept or logged is cut to MAX_MESSAGE characters, as extraction
    messages are where they are made (a text cut already stays as it is: trace.cut), then redacted (the Redactor
    hides a secret the cut splits)."""
    redacting = caller or state.redactor

    def redact(text: str) -> str:
        return redacting(cut(text, MAX_MESSAGE))

    m = state.metrics
    m.child(m.probes, module, "success" if result.success else "failure").inc()
    duration = result.duration
    m.child(m.probe_duration, module).observe(duration)
    endpoints, extraction = result.endpoints, result.extraction
    failed = [r for r in endpoints if not r.ok]
    # redacted now, while their values are known: a learned value may be pushed out before the page is asked for
    errors = [redact(f"endpoint {r.endpoint}: {r.outcome}: {r.error}") for r in failed]
    if extraction.messages:
        errors += map(redact, extraction.messages)
    shown = redact_target(target, state.redactor)
    faults = [(metric, redact(f"metric {metric}: {said}")) for metric, said in extraction.faults.items()]
    errors[len(failed):len(failed)] = [said for _, said in faults if said not in errors]  # an extraction's own message may say it already
    for metric, said in faults:  # once each, as an endpoint's internal_error is (upstream/fetch.py)
        log.error("extracting a metric failed unexpectedly", extra=kv(module=module, metric=metric, target=shown, err=said))
    if result.fault is not None:
        errors.insert(0, redact(f"probe failed: {result.fault}"))
        log.error("probe failed unexpectedly", extra=kv(module=module, target=shown, err=errors[0]))
    if result.failure is not None:
        errors.insert(0, redact(result.failure))
        m.limits_exceeded.labels(module, result.failed_due_to or "").inc()
        log.warning("probe failed", extra=kv(module=module, target=shown, limit=result.failed_due_to, err=errors[0]))
    state.recent.append(ProbeRecord(next(state.ids), time.time(), module, shown, result.success, duration, tuple(errors[:20]),
                                    len(endpoints), len(failed), sum(extraction.errors.values()), sum(extraction.duplicates.values())))
    for r in endpoints:
        if r.cache is not None:
            m.child(m.cache_requests, module, r.endpoint, r.cache).inc()
        if r.cache in (None, "miss", "stale"):  # a hit or a coalesced request sent nothing upstream
            m.child(m.upstream_requests, module, r.endpoint, r.outcome).inc()
    for r in failed:
        err = redact(r.error) if r.error is not None else None
        log.warning("endpoint failed", extra=kv(module=module, endpoint=r.endpoint, target=shown, outcome=r.outcome, err=err))
    for message in extraction.messages:
        log.debug("extraction error", extra=kv(module=module, target=shown, err=redact(message)))


def _debug_text(result: ProbeResult) -> str:
    assert result.trace is not None
    lines = [result.trace.text()]
    if result.extraction.messages:
        lines.append("errors:\n" + "\n".join(f"  {m}" for m in result.extraction.messages) + "\n")
    unwritten: dict[str, Exception] = {}
    metrics = render_text(result.families, unwritten)
    for name, raised in unwritten.items():  # as handle_probe says it
        said = result.extraction.faults.setdefault(name, f"internal_error: {fault(raised)} (writing the answer)")
        lines.append(f"metric {name} not written: {said}\n")
    lines.append("metrics:\n" + metrics)
    return "\n".join(lines)


async def handle_metrics(request: web.Request) -> web.Response:
    """The exporter's own metrics, by prometheus_client, in the format and encoding negotiated as for /probe
    (its choose_encoder reads no q-values: `application/openmetrics-text;q=0` got OpenMetrics)."""
    registry = request.app[STATE].metrics.exposition
    openmetrics, compress, headers = negotiate(request.headers.get("Accept", ""), request.headers.get("Accept-Encoding", ""))
    body = (prom_openmetrics.generate_latest if openmetrics else prom_exposition.generate_latest)(registry)
    return web.Response(body=b"".join(gzip_pieces([body])) if compress else body, headers=headers)


def load_anew(load: Callable[[str], _T], file: str) -> tuple[_T | None, str]:
    """A file read again and checked completely: what it holds, or None and what is wrong with it
    (a reload here and in the supervisor, cli.py)."""
    try:
        return load(file), ""
    except SpecError as exc:
        return None, "\n".join(str(p) for p in exc.problems if p.severity == "error")
    except SpecFileError as exc:
        return None, str(exc)
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{file}: cannot read: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
    except Exception as exc:  # whatever else loading raises: a file that did not load, never a reload that stops reloading
        return None, unexpected_failure(file, exc)


async def _web_config_anew(state: State) -> tuple[WebConfig | None, str]:
    """The web config read again (users, headers, TLS certificates, each file checked)."""
    if state.web.file is None:
        return state.web, ""
    return await asyncio.to_thread(load_anew, load_web_config, state.web.file)


async def reload_spec(state: State) -> Reloaded:
    """Load the spec and the web config again (coalesced with the reloads asked meanwhile: Reloads); replace
    them only when both are completely valid, so that a reload changes everything or nothing, and
    `..._last_reload_successful` says which. SIGHUP, auto-reload and POST /-/reload all come here."""
    return await asyncio.shield(_shared_reload(state))  # a request that goes away leaves it to the others


def _shared_reload(state: State) -> asyncio.Task[Reloaded]:
    return state.reloads.asked(lambda: _reload(state))


async def _reload(state: State) -> Reloaded:
    if state.spec_file is None:
        return False, "no spec file to reload"
    (web_config, web_reason), (spec, spec_reason) = await asyncio.gather(_web_config_anew(state), asyncio.to_thread(load_anew, load_spec, state.spec_file))
    reason = "\n".join(r for r in (spec_reason, web_reason) if r)
    if spec is not None and web_config is not None:
        reason = tls_reload_problem(state.web, web_config)  # what a restart must do is never reported as reloaded
        context = None
        if not reason and web_config.tls is not None and web_config is not state.web:
            try:  # every key of tls_server_config, for new connections
                context = await asyncio.to_thread(ssl_context, web_config.tls)
            except TLSFileError as exc:  # the files changed since they were checked
                reason = f"{web_config.file}: tls_server_config.{exc.key}: cannot load the certificate files: {exc.reason}"
        if not reason:
            changed = (spec.sha256 != state.spec.sha256 or web_config != state.web
                       or (context is not None and state.tls is not None and context.files_digest != state.tls.current.files_digest))
            if context is not None and (tls := state.tls) is not None:
                tls.replace(context, settings_changed=web_config.tls != state.web.tls)
                # the idle connections made with previous settings (e.g. without a client certificate now
                # required) are closed; those with a request in progress once it is answered (_edge)
                state.connections.close_idle(lambda handler: _tls_outdated(tls, handler.transport))
            state.redactor.know(spec.secrets)
            if state.upstream is not None:  # files read afresh; the tokens of unchanged OAuth2 configurations kept
                state.upstream.clients = state.upstream.clients.succeeded_by(spec)
            state.spec, state.web = spec, web_config
            if state.upstream is not None:
                reschedule(state.upstream, spec)
            state.metrics.spec_loaded(spec.sha256, _modules_by_file(spec))
            log.info("spec reloaded", extra=kv(config=state.spec_file, changed=changed, modules=len(spec.modules)))
            return True, "reloaded" if changed else "reloaded (unchanged)"
    state.metrics.config_success.set(0)
    for line in reason.splitlines():
        log.error("reload failed, keeping the previous spec and web config", extra=kv(err=line))
    return False, reason


def _modules_by_file(spec: Spec) -> dict[str, int]:
    return dict(sorted(Counter(spec.module_file(name) for name in spec.modules).items()))


async def handle_reload(request: web.Request) -> web.Response:
    state = request.app[STATE]
    reload = _shared_reload(state)
    ok, message = await asyncio.shield(reload)
    if state.options.after_reload is not None and state.reloads.notified is not reload:  # once for the requests it answered
        state.reloads.notified = reload
        state.options.after_reload()  # the other workers try too, whatever came of it here
    if ok:
        return _plain(200, message)
    return _plain(500, f"reload failed, nothing changed: the previous spec is still served, with the previous web config:\n{message}")


async def handle_healthy(request: web.Request) -> web.Response:
    return _plain(200, "Healthy.")


async def handle_ready(request: web.Request) -> web.Response:
    return _plain(200, "Ready.")


_STYLE = ("body{font-family:sans-serif;margin:1em 2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}"
          "tr.failure{background:#fbd5d5}tr.degraded{background:#fdf0c4}td.count{text-align:right}td.nonzero{font-weight:bold}")


def _page(title: str, body: str) -> web.Response:
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body>
{body}
</body></html>
"""
    return _ForPeople(body=utf8(page), content_type="text/html", charset="utf-8")  # an error of a recent probe may quote a lone surrogate


def _worker_note(options: Options) -> str:
    if options.workers <= 1:
        return ""
    return f" Worker {options.worker} of {options.workers}: the recent probes below are this worker's."


def _files_note(spec: Spec) -> str:
    files = set(spec.origins.values())
    return f"{len(files)} files, " if files - {spec.file} else ""


def _probe_link(module: str, target: str, debug: bool) -> str:
    query = {"module": module, "target": target} | ({"debug": "true"} if debug else {})
    return "/probe?" + html.escape(urlencode(query))


def _outcome_text(record: ProbeRecord) -> str:
    return record.outcome if record.outcome == "success" else f"<b>{record.outcome}</b>"


def _count_cell(count: int, suffix: str = "") -> str:
    return f'<td class="count{" nonzero" if count else ""}">{count}{suffix}</td>'


async def handle_index(request: web.Request) -> web.Response:
    state = request.app[STATE]
    spec = state.spec
    rows = []
    for module in spec.modules.values():
        endpoints = "<br>".join(f"{html.escape(e.name)}: <code>{html.escape(e.method)} {html.escape(e.url.source)}</code>" for e in module.endpoints.values())
        metrics = "<br>".join(sorted({f"{html.escape(o.name)} ({m.type})" for m in module.metrics for o in m.outputs}))
        rows.append(f"<tr><td>{html.escape(module.name)}</td><td><code>{html.escape(spec.module_file(module.name))}</code></td>"
                    f"<td>{endpoints}</td><td>{metrics}</td></tr>")
    options = "".join(f'<option value="{html.escape(m)}">{html.escape(m)}</option>' for m in spec.modules)
    recent = []
    for r in reversed(state.recent):
        when = time.strftime("%H:%M:%S", time.gmtime(r.time))
        recent.append(
            f"<tr class=\"{r.outcome}\"><td>{when}</td><td>{html.escape(r.module)}</td><td>{html.escape(r.target)}</td><td>{_outcome_text(r)}</td>"
            f"{_count_cell(r.endpoint_failures, f' of {r.endpoints}')}{_count_cell(r.extraction_errors)}{_count_cell(r.duplicates)}"
            f"<td>{r.duration:.3f}s</td><td><a href=\"/probes/{r.id}\">details</a> · "
            f"<a href=\"{_probe_link(r.module, r.target, True)}\">debug again</a></td></tr>"
        )
    body = f"""<h1>jsonexporter {html.escape(__version__)}</h1>
<p>Spec <code>{html.escape(spec.file)}</code> ({_files_note(spec)}sha256 {spec.sha256[:12]}).{_worker_note(state.options)}
<a href="/metrics">Exporter metrics</a> · <a href="/-/healthy">health</a> · <a href="/-/ready">readiness</a></p>
<h2>Probe</h2>
<form action="/probe" method="get">
<label>module <select name="module">{options}</select></label>
<label>target <input name="target" size="60" placeholder="http://host:port"></label>
<label><input type="checkbox" name="debug" value="true" checked> debug trace</label>
<input type="submit" value="Probe">
</form>
<p>Prometheus scrapes <code>/probe?module={quote(next(iter(spec.modules), "default"))}&amp;target=URL</code>.</p>
<h2>Modules</h2>
<table><tr><th>module</th><th>file</th><th>endpoints</th><th>metrics</th></tr>
{"".join(rows)}
</table>
<h2>Recent probes</h2>
<p>Degraded: <code>probe_success</code> 1, but series were skipped (extraction errors) or dropped (duplicates), or a stale answer
stood in for a failed endpoint.</p>
<table><tr><th>time (UTC)</th><th>module</th><th>target</th><th>result</th><th>endpoint failures</th><th>extraction errors</th>
<th>duplicate series</th><th>duration</th><th></th></tr>
{"".join(recent) or '<tr><td colspan="9">none yet</td></tr>'}
</table>"""
    return _page("jsonexporter", body)


async def handle_probe_record(request: web.Request) -> web.Response:
    state = request.app[STATE]
    wanted = request.match_info["id"]
    record = next((r for r in state.recent if str(r.id) == wanted), None)
    if record is None:
        if state.options.workers > 1:
            return _plain(404, f"no such recent probe in worker {state.options.worker} of {state.options.workers}: each keeps its own most recent ones")
        return _plain(404, "no such recent probe (only the most recent ones are kept)")
    errors = "".join(f"<li><code>{html.escape(e)}</code></li>" for e in record.errors) or "<li>none</li>"
    body = f"""<h1>Probe {record.id}</h1>
<p>Module <b>{html.escape(record.module)}</b>, target <code>{html.escape(record.target)}</code>,
{_outcome_text(record)} in {record.duration:.3f}s at {time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.time))} UTC:
{record.endpoint_failures} of {record.endpoints} endpoint(s) failed, {record.extraction_errors} extraction error(s),
{record.duplicates} duplicate series.</p>
<h2>Errors</h2><ul>{errors}</ul>
<p><a href="{_probe_link(record.module, record.target, True)}">Run it again with a debug trace</a> · <a href="/">back</a></p>"""
    return _page(f"probe {record.id}", body)


def make_app(
    spec: Spec,
    options: Options | None = None,
    metrics: SelfMetrics | None = None,
    spec_file: str | None = None,
    web_config: WebConfig | None = None,
) -> web.Application:
    """The app; with a web config, every path requires its basic auth users and gets its headers.
    TLS is the caller's (the site's) business: `app[STATE].tls` holds the context to serve with,
    and so is the bound on client connections: `app[STATE].connections.new_event_loop()` keeps to it."""
    options = options or Options()
    state = State(spec, options, metrics or SelfMetrics(), spec_file=spec_file, web=web_config or WebConfig(), redactor=Redactor(spec.secrets))
    state.metrics.spec_loaded(spec.sha256, _modules_by_file(spec))
    if state.web.tls is not None:
        state.tls = serving_context(state.web.tls)
    state.connections = ClientConnections(options.max_client_connections)
    state.recent = deque(maxlen=max(options.recent_probes, 0))  # the oldest let go as a probe is kept
    state.in_flight_gauge = not state.metrics.in_flight_from(lambda: state.in_flight)
    auth = BasicAuth(lambda: state.web)
    app = web.Application(middlewares=[_edge(state, auth)])
    app[STATE] = state
    app.on_response_prepare.append(headers_hook(lambda: state.web))

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        state.upstream = Upstream(new_session(options.connection_limit, options.connection_limit_per_host), Clients(state.redactor),
                                  events=_BackgroundMetrics(state.metrics), detached=Detached(max(options.max_concurrent_probes, 1)))
        state.upstream.schedule(options.refresh_max_requests, options.refresh_min_idle, options.refresh_max_bytes)
        reschedule(state.upstream, state.spec)  # modules without a target: their schedules start with the app
        yield
        await state.upstream.close()  # the background requests end with the app, before the session they use

    async def auto_reload_ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_auto_reload(state)) if options.auto_reload_interval > 0 and spec_file else None
        yield
        if task is not None:
            task.cancel()

    app.cleanup_ctx.append(session_ctx)
    app.cleanup_ctx.append(auto_reload_ctx)
    app.router.add_get("/probe", handle_probe)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/-/healthy", handle_healthy)
    app.router.add_get("/-/ready", handle_ready)
    app.router.add_post("/-/reload", handle_reload)
    app.router.add_put("/-/reload", handle_reload)
    app.router.add_get("/probes/{id}", handle_probe_record)
    app.router.add_get("/", handle_index)
    return app


class _BackgroundMetrics(Events):
    """Background requests and logins in the exporter's metrics: labelled by module (and endpoint), never by target."""

    def __init__(self, metrics: SelfMetrics) -> None:
        self.metrics = metrics

    def fetched(self, job: Job, result: EndpointResult) -> None:
        module, endpoint = job.module.name, job.endpoint.name
        self.metrics.upstream_requests.labels(module, endpoint, result.outcome).inc()
        if job.endpoint.refresh_interval is None:
            return
        if result.ok:
            self.metrics.refresh_success.labels(module, endpoint).set(time.time())
        else:
            self.metrics.refresh_failures.labels(module, endpoint).inc()

    def unscheduled(self, job: Job) -> None:
        self.metrics.refresh_unscheduled.labels(job.module.name, job.endpoint.name).inc()

    def scheduled(self, count: int) -> None:
        self.metrics.refresh_scheduled.set(count)

    def evicted(self, job: Job) -> None:
        self.metrics.refresh_evictions.labels(job.module.name, job.endpoint.name).inc()

    def logged_in(self, module: str, result: str) -> None:
        self.metrics.login_requests.labels(module, result).inc()

    def sessions(self, by_module: Mapping[str, int]) -> None:
        self.metrics.sessions_kept(by_module)


async def _auto_reload(state: State) -> None:
    """Reload when the content of the spec's files changes (or a file comes or goes), checked every
    `auto_reload_interval` seconds."""
    assert state.spec_file is not None
    seen: str | None = state.spec.sha256  # each new content is tried once, a broken one is not retried
    while True:
        await asyncio.sleep(state.options.auto_reload_interval)  # the polling period itself, not a synchronisation
        current, _ = await asyncio.to_thread(load_anew, _spec_files_sha256, state.spec_file)  # None: unreadable now
        if current != seen and current != state.spec.sha256:
            await reload_spec(state)
        seen = current


def _spec_files_sha256(source: str) -> str:
    return spec_sha256(source, read_spec_files(source))


def reload_on_sighup(app: web.Application) -> None:
    """SIGHUP reloads the spec and the web config, as with Prometheus."""
    tasks: set[asyncio.Task[tuple[bool, str]]] = set()

    async def install(app: web.Application) -> None:
        def on_hup() -> None:
            task = asyncio.create_task(reload_spec(app[STATE]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hup)

    app.on_startup.append(install)


def _graceful_exit() -> None:
    raise web.GracefulExit()


def stop_once_on_signals(app: web.Application, shutdown_timeout: float) -> None:
    """SIGTERM and SIGINT stop the server gracefully; for `web.run_app(handle_signals=False)`. Unlike
    aiohttp's own handlers, a second signal while stopping is ignored, so that it cannot cut the
    probes in flight short: a worker gets one from its supervisor and often one more from a
    terminal's Ctrl-C or from systemd, which signal the whole group. The shutdown is logged once,
    with its reason, when the server has stopped listening and gives the probes in flight
    `shutdown_timeout` seconds."""
    reason: list[str] = []  # the signal that stopped the server, once there is one

    def stop(name: str) -> None:
        if reason:
            log.info("already stopping", extra=kv(signal=name))
            return
        reason.append(name)
        app[STATE].connections.stop_accepting()
        asyncio.get_running_loop().call_soon(_graceful_exit)  # after the connections accepted already are set up

    async def install(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop, sig.name)

    async def announce(app: web.Application) -> None:
        state = app[STATE]
        log.info("shutting down", extra=kv(reason=reason[0] if reason else "exit", in_flight=state.in_flight, timeout=shutdown_timeout))

    async def unhook(app: web.Application) -> None:
        # The loop closes its self-pipe, then removes its signal handlers: a signal in between was
        # written to the closed pipe and Python printed a BrokenPipeError with a traceback (a worker
        # that cannot listen, signalled by its supervisor as it ends). The last step of a stop, after
        # which a signal is dropped, as a second one is while stopping.
        signal.set_wakeup_fd(-1)

    app.on_startup.append(install)
    app.on_shutdown.append(announce)
    app.on_cleanup.append(unhook)
