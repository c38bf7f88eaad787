"""The listening side against hostile or broken clients, as real `jsonexporter serve` processes on
127.0.0.1: what partial requests may hold in memory across connections, and what malformed requests
may write to the log."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest
from aiohttp import web
from conftest import make_spec
from prometheus_util import free_port, listening, poll, wait_healthy
from test_cli import SPEC  # the one-module spec of the single-process tests
from test_connections import Serve, _healthy_on, _log_lines, exporter_process  # noqa: F401 (the `serve` fixture)

from jsonexporter.listen import UNBEGUN_BYTES, UnbegunBytes
from jsonexporter.server import STATE, make_app

BOUND = 20.0  # seconds any wait below gets before the test fails
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_SCRAPES = web.AppKey("scrapes", asyncio.Task[None])


async def _connect(base: str) -> Connection:
    host, port = base.removeprefix("http://").split(":")
    return await asyncio.wait_for(asyncio.open_connection(host, int(port)), BOUND)


async def _closed(reader: asyncio.StreamReader) -> None:
    """Returns once the server has closed the connection (EOF or reset); never for one left open."""
    try:
        while await reader.read(1 << 16):
            pass
    except ConnectionError:
        pass


# a request head that never ends, as large as aiohttp lets one be (127 lines of 8,000 bytes): about 1 MB
_HEADER_LINES = 127
_PARTIAL_HEAD = b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-Pad-%03d: " % i + b"a" * 8000 + b"\r\n" for i in range(_HEADER_LINES - 1))


async def test_partial_request_heads_across_connections_take_a_bounded_number_of_bytes_and_idle_scrapers_keep_theirs(serve: Serve) -> None:
    """Before: each connection could hold a request head of up to 1 MB that never ended (2 MB of the
    exporter's memory) until its keep-alive timeout (75 s), and the connections were bounded only by
    --web.max-connections (by default thousands, or a million with Docker's open files limit): 2,000
    such connections took the exporter from 67 MB to 4.0 GB in 16 s. Now what all connections have
    received that no request has begun with is bounded (UNBEGUN_BYTES); beyond, the connections
    holding the most are closed, and an idle scraper's connection, holding nothing, stays."""
    proc, base = serve()
    await wait_healthy(base, proc)
    scraper = await _connect(base)
    assert await _healthy_on(scraper)
    hogs: list[Connection] = []
    count = 3 * UNBEGUN_BYTES // len(_PARTIAL_HEAD) + 1  # three times the bound
    for _ in range(count):
        reader, writer = await _connect(base)
        hogs.append((reader, writer))
        try:
            writer.write(_PARTIAL_HEAD)
            await asyncio.wait_for(writer.drain(), BOUND)
        except ConnectionError:
            pass  # closed by the server already
    most_kept = UNBEGUN_BYTES // len(_PARTIAL_HEAD) + 2  # within the bound, and one read beyond it
    closes = [asyncio.ensure_future(_closed(reader)) for reader, _ in hogs]
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BOUND
        while sum(task.done() for task in closes) < count - most_kept and loop.time() < deadline:
            await asyncio.wait([task for task in closes if not task.done()], timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED)
        assert sum(task.done() for task in closes) >= count - most_kept, f"{count} connections with partial heads of {len(_PARTIAL_HEAD)} bytes, all kept"
        assert await _healthy_on(scraper), "the idle scraper's connection was closed"
        assert await _healthy_on(await _connect(base))
    finally:
        for task in closes:
            task.cancel()
        for _, writer in [*hogs, scraper]:
            writer.close()
    lines = _log_lines(proc)
    assert any(line["msg"] == "client connections held too many bytes of requests not begun, closed those holding the most" for line in lines)


async def test_malformed_requests_are_logged_once_a_minute_as_a_warning_not_each_as_an_error(serve: Serve) -> None:
    """Before: aiohttp logged each request it could not parse at level error with the client's bytes:
    one client sending malformed requests wrote 2,187 error lines (394 KB) a second. Now one warning
    a minute with the count, whatever the client sends; the client still gets its 400."""
    proc, base = serve()
    await wait_healthy(base, proc)
    malformed = [b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                 b"GET /probe?target=" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n"]
    for request in malformed * 10:
        reader, writer = await _connect(base)
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), BOUND)
        writer.close()
        assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400"), answer[:100]
    assert await _healthy_on(await _connect(base))
    lines = _log_lines(proc)
    errors = [line for line in lines if line["level"] == "error"]
    assert errors == []
    said = [line for line in lines if line["msg"] == "requests that could not be parsed, answered 400"]
    assert len(said) == 1 and said[0]["level"] == "warning", said


def test_a_scrapers_keep_alive_connection_holds_no_unbegun_bytes_between_its_requests() -> None:
    """The exporter's loop as `serve` runs it (cli.py), in this process: each request's head stops
    counting as it begins, so a scraper that keeps its connection for days is never the one closed
    for holding the most; aiohttp's client and Prometheus's way of writing a request (Go's net/http),
    each for many requests on one connection."""
    app = make_app(make_spec(SPEC))
    connections = app[STATE].connections
    port = free_port()
    held: list[tuple[str, int, int]] = []

    async def scrape(app: web.Application) -> None:
        async def scrapes() -> None:
            await poll("the exporter listening", lambda: listening({os.getpid()}, port), BOUND)
            async with aiohttp.ClientSession() as session:
                for path, status in [("/-/healthy", 200), ("/nosuch", 404), ("/-/reload", 405)] * 70:
                    async with session.get(f"http://127.0.0.1:{port}{path}", headers={"Accept-Encoding": "gzip"}) as response:
                        assert response.status == status
                        await response.read()
            held.append(("aiohttp", connections.unbegun.total, len(connections.unbegun.held)))
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            request = (b"GET /probe?module=nosuch&target=http%3A%2F%2F127.0.0.1%3A1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"
                       b"User-Agent: Prometheus/3.0.0\r\nAccept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.1\r\n"
                       b"Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n")
            for _ in range(200):
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
                assert head.startswith(b"HTTP/1.1 400"), head  # an unknown module, answered at once
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
                await asyncio.wait_for(reader.readexactly(length), BOUND)
            held.append(("go", connections.unbegun.total, len(connections.unbegun.held)))
            writer.close()
            raise web.GracefulExit

        app[_SCRAPES] = asyncio.create_task(scrapes())

    app.on_startup.append(scrape)
    try:
        web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=False, shutdown_timeout=5.0, access_log=None,
                    loop=connections.new_event_loop())
    finally:
        asyncio.set_event_loop(None)
    assert held == [("aiohttp", 0, 0), ("go", 0, 0)]


def test_an_aiohttp_whose_server_lacks_the_private_attributes_gets_its_own_handlers_uncounted_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Server:  # a later aiohttp's web.Server without `_loop` and `_kwargs`: its handlers as it makes them
        def __call__(self) -> str:
            return "aiohttp's own handler"

    unbegun = UnbegunBytes()
    with caplog.at_level("WARNING", logger="jsonexporter"):
        handlers = [unbegun.handler(Server()) for _ in range(3)]  # type: ignore[arg-type]
    assert handlers == ["aiohttp's own handler"] * 3
    assert [r.getMessage() for r in caplog.records].count(
        "this aiohttp's connection handler cannot be counted: bytes of requests not begun are not bounded") == 1
