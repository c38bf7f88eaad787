"""The aiohttp app: /probe, /metrics, the landing page and the health endpoints."""

from __future__ import annotations

import html
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
from aiohttp import web
from prometheus_client import exposition as prom_exposition
from yarl import URL

from jsonexporter import __version__
from jsonexporter.exposition import encode, render_text
from jsonexporter.fetch import InvalidRequest, new_session, redact_url
from jsonexporter.logs import kv
from jsonexporter.probe import ProbeResult, run_probe
from jsonexporter.selfmetrics import SelfMetrics
from jsonexporter.spec.model import Spec

log = logging.getLogger("jsonexporter")

TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
MIN_TIMEOUT = 0.1


@dataclass
class Options:
    timeout_offset: float = 0.5  # seconds kept from Prometheus's scrape timeout to write the answer
    connection_limit: int = 256
    connection_limit_per_host: int = 32


@dataclass
class State:
    """What the app serves; `spec` is replaced whole, never changed in place."""

    spec: Spec
    options: Options
    metrics: SelfMetrics
    session: aiohttp.ClientSession | None = None


STATE = web.AppKey("state", State)


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", content_type="text/plain")


def _shown(value: str, limit: int = 100) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _safe_target(target: str) -> str:
    try:
        return redact_url(URL(target))
    except (ValueError, TypeError):
        return _shown(target)


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
    assert state.session is not None
    state.metrics.in_flight.inc()
    try:
        result = await run_probe(state.session, module, target, query, timeout, debug)
    except InvalidRequest as exc:
        state.metrics.probes.labels(module.name, "invalid").inc()
        return _plain(400, str(exc))
    finally:
        state.metrics.in_flight.dec()
    _record(state, module.name, target, result)
    if debug:
        return _plain(200, _debug_text(result))
    body, headers = encode(result.families, request.headers.get("Accept", ""), request.headers.get("Accept-Encoding", ""))
    return web.Response(body=body, headers=headers)


def _record(state: State, module: str, target: str, result: ProbeResult) -> None:
    m = state.metrics
    m.probes.labels(module, "success" if result.success else "failure").inc()
    duration = next((f.samples[0][2] for f in result.families if f.name == "probe_duration_seconds"), 0.0)
    m.probe_duration.labels(module).observe(duration)
    for r in result.endpoints:
        m.upstream_requests.labels(module, r.endpoint, r.outcome).inc()
        if not r.ok:
            log.warning("endpoint failed", extra=kv(module=module, endpoint=r.endpoint, target=_safe_target(target), outcome=r.outcome, err=r.error))
    for message in result.extraction.messages:
        log.debug("extraction error", extra=kv(module=module, target=_safe_target(target), err=message))


def _debug_text(result: ProbeResult) -> str:
    assert result.trace is not None
    lines = [result.trace.text()]
    if result.extraction.messages:
        lines.append("errors:\n" + "\n".join(f"  {m}" for m in result.extraction.messages) + "\n")
    lines.append("metrics:\n" + render_text(result.families))
    return "\n".join(lines)


async def handle_metrics(request: web.Request) -> web.Response:
    registry = request.app[STATE].metrics.registry
    encoder, content_type = prom_exposition.choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(registry), headers={"Content-Type": content_type})


async def handle_healthy(request: web.Request) -> web.Response:
    return _plain(200, "Healthy.")


async def handle_ready(request: web.Request) -> web.Response:
    return _plain(200, "Ready.")


async def handle_index(request: web.Request) -> web.Response:
    spec = request.app[STATE].spec
    rows = []
    for module in spec.modules.values():
        endpoints = ", ".join(html.escape(e) for e in module.endpoints)
        metrics = ", ".join(sorted({html.escape(o.name) for m in module.metrics for o in m.outputs}))
        rows.append(f"<tr><td>{html.escape(module.name)}</td><td>{endpoints}</td><td>{metrics}</td></tr>")
    options = "".join(f'<option value="{html.escape(m)}">{html.escape(m)}</option>' for m in spec.modules)
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>jsonexporter</title></head>
<body>
<h1>jsonexporter {html.escape(__version__)}</h1>
<p>Spec <code>{html.escape(spec.file)}</code> (sha256 {spec.sha256[:12]}). <a href="/metrics">Exporter metrics</a>, <a href="/-/healthy">health</a>.</p>
<h2>Modules</h2>
<table border="1" cellpadding="4"><tr><th>module</th><th>endpoints</th><th>metrics</th></tr>
{''.join(rows)}
</table>
<h2>Probe</h2>
<form action="/probe" method="get">
<label>module <select name="module">{options}</select></label>
<label>target <input name="target" size="60" placeholder="http://host:port"></label>
<label><input type="checkbox" name="debug" value="true" checked> debug</label>
<input type="submit" value="Probe">
</form>
<p>Example: <code>/probe?module={quote(next(iter(spec.modules), 'default'))}&amp;target=http://localhost:8080</code></p>
</body></html>
"""
    return web.Response(text=page, content_type="text/html")


def make_app(spec: Spec, options: Options | None = None, metrics: SelfMetrics | None = None) -> web.Application:
    options = options or Options()
    state = State(spec, options, metrics or SelfMetrics())
    state.metrics.spec_loaded(spec.sha256, len(spec.modules))
    app = web.Application()
    app[STATE] = state

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        state.session = new_session(options.connection_limit, options.connection_limit_per_host)
        yield
        await state.session.close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/probe", handle_probe)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/-/healthy", handle_healthy)
    app.router.add_get("/-/ready", handle_ready)
    app.router.add_get("/", handle_index)
    return app
