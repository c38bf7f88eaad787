"""Upstream HTTP: requests rendered from a module's endpoints, fetched concurrently over a
shared keep-alive session, each bounded in time and bytes, answers parsed as JSON once."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from jsonexporter import __version__
from jsonexporter.secrets import REDACTED, is_secret_name
from jsonexporter.spec.expressions import Template
from jsonexporter.spec.model import Endpoint, JsonBody, Module
from jsonexporter.trace import Trace, shorten

USER_AGENT = f"jsonexporter/{__version__}"


class InvalidRequest(Exception):
    """The probe's target or parameters make an unusable request (HTTP 400 for the scraper)."""


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    endpoint: Endpoint
    method: str
    url: URL
    headers: Mapping[str, str]
    body: bytes | None


@dataclass(slots=True)
class EndpointResult:
    endpoint: str
    outcome: str  # success, timeout, connection_error, invalid_status, too_large, invalid_json, cancelled
    status: int = 0
    bytes: int = 0
    duration: float = 0.0
    document: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "success"


def redact_url(url: URL) -> str:
    """The URL without userinfo and with secret-looking query values hidden."""
    if url.user or url.password:
        url = url.with_user(None)
    if url.query and any(is_secret_name(k) for k in url.query):
        url = url.with_query([(k, REDACTED if is_secret_name(k) else v) for k, v in url.query.items()])
    return str(url)


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


def render_request(endpoint: Endpoint, values: Mapping[str, str]) -> UpstreamRequest:
    """Fill in the endpoint's templates; raise InvalidRequest when the URL is not http(s)."""
    raw_url = endpoint.url.render(values, quote=_quote_path_value)
    try:
        url = URL(raw_url)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"endpoint {endpoint.name}: invalid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidRequest(f"endpoint {endpoint.name}: the URL must be http:// or https:// with a host, got {redact_url(url)!r}")
    if endpoint.params:
        url = url.update_query([(k, t.render(values)) for k, t in endpoint.params])
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    for name, template in endpoint.headers:
        value = template.render(values)
        if "\r" in value or "\n" in value:
            raise InvalidRequest(f"endpoint {endpoint.name}: header {name} would contain a line break")
        headers[name] = value
    body: bytes | None = None
    if isinstance(endpoint.body, Template):
        body = endpoint.body.render(values).encode()
    elif isinstance(endpoint.body, JsonBody):
        body = json.dumps(_render_json(endpoint.body.value, values)).encode()
        headers.setdefault("Content-Type", "application/json")
    return UpstreamRequest(endpoint, endpoint.method, url, headers, body)


def render_requests(module: Module, values: Mapping[str, str]) -> list[UpstreamRequest]:
    return [render_request(endpoint, values) for endpoint in module.endpoints.values()]


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"body is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}; body starts with {body[:64]!r}") from None


async def _read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    declared = response.content_length
    if declared is not None and declared > limit:
        raise _TooLarge(f"response of {declared} bytes is larger than max_response_bytes {limit}")
    chunks = bytearray()
    async for chunk in response.content.iter_any():
        chunks += chunk
        if len(chunks) > limit:
            raise _TooLarge(f"response is larger than max_response_bytes {limit}")
    return bytes(chunks)


class _TooLarge(Exception):
    pass


def new_session(limit: int = 256, limit_per_host: int = 32) -> aiohttp.ClientSession:
    """The shared keep-alive session; no cookie jar, so nothing carries over between probes."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit_per_host, ttl_dns_cache=60, keepalive_timeout=30)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False, raise_for_status=False)


async def fetch_one(session: aiohttp.ClientSession, request: UpstreamRequest, deadline: float, trace: Trace | None = None) -> EndpointResult:
    """One request, bounded by its endpoint's timeout and the probe's deadline (a loop.time())."""
    endpoint = request.endpoint
    loop = asyncio.get_running_loop()
    start = loop.time()
    budget = deadline - start
    if endpoint.timeout is not None:
        budget = min(budget, endpoint.timeout)
    result = EndpointResult(endpoint.name, "success")
    try:
        async with asyncio.timeout(max(budget, 0.0)):
            async with session.request(request.method, request.url, headers=request.headers, data=request.body) as response:
                result.status = response.status
                if not endpoint.status_ok(response.status):
                    result.outcome = "invalid_status"
                    result.error = f"HTTP status {response.status} {response.reason or ''}".rstrip()
                else:
                    body = await _read_body(response, endpoint.max_response_bytes)
                    result.bytes = len(body)
                    result.document = _parse_json(body)
    except TimeoutError:
        result.outcome, result.error = "timeout", f"no complete answer within {budget:.3f}s"
    except _TooLarge as exc:
        result.outcome, result.error = "too_large", str(exc)
    except ValueError as exc:
        result.outcome, result.error = "invalid_json", str(exc)
    except aiohttp.ClientError as exc:
        result.outcome, result.error = "connection_error", f"{type(exc).__name__}: {exc}"
    except OSError as exc:
        result.outcome, result.error = "connection_error", f"{type(exc).__name__}: {exc.strerror or exc}"
    result.duration = loop.time() - start
    if not result.ok:
        result.document = None
    if trace is not None:
        shown = {k: (REDACTED if is_secret_name(k) else v) for k, v in request.headers.items()}
        trace.add(f"endpoint {endpoint.name}: {request.method} {redact_url(request.url)}")
        trace.add(f"  request headers: {shown}")
        if request.body is not None:
            trace.add(f"  request body: {len(request.body)} bytes")
        trace.add(f"  -> {result.outcome}, status {result.status}, {result.bytes} bytes, {result.duration:.3f}s")
        if result.error:
            trace.add(f"  error: {result.error}")
        elif result.document is not None:
            trace.add(f"  document: {shorten(result.document)}")
    return result


async def fetch_all(session: aiohttp.ClientSession, requests: list[UpstreamRequest], deadline: float, trace: Trace | None = None) -> list[EndpointResult]:
    """Every request at once; cancelling the caller (a scraper that went away) cancels them all."""
    if len(requests) == 1:
        return [await fetch_one(session, requests[0], deadline, trace)]
    traces = [Trace() if trace is not None else None for _ in requests]
    results = await asyncio.gather(*(fetch_one(session, r, deadline, t) for r, t in zip(requests, traces, strict=True)))
    if trace is not None:
        for t in traces:
            assert t is not None
            for line in t.lines:
                trace.add(line)
    return list(results)
