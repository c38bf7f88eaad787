"""Seventeenth review: findings reproduced against the exporter's own loop on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiohttp import web
from conftest import UpstreamFactory, make_spec
from metrics_util import parse, value
from prometheus_util import free_port, listening, poll
from test_cli import SPEC  # the one-module spec of the single-process tests
from test_upstream_http import _oauth2_exporter, probe

from jsonexporter.server import STATE, make_app

BOUND = 20.0  # seconds any wait below gets before the test fails
_CLIENT = web.AppKey("client", asyncio.Task[None])


async def _response(reader: asyncio.StreamReader) -> bytes:
    """The status line of the next final response (a 100 Continue skipped), its body read."""
    while True:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
        if not head.startswith(b"HTTP/1.1 100"):
            break
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    await asyncio.wait_for(reader.readexactly(length), BOUND)
    return head.split(b"\r\n")[0]


def test_request_bodies_on_a_keep_alive_connection_do_not_add_up_as_unbegun_bytes() -> None:
    """A client sending bodies on one keep-alive connection (POST /-/reload from a script, with Content-Length or
    Expect: 100-continue): each body counted only until the next request begins. Before: every body stayed counted
    for the connection's life (10 bytes a request: 2,000 bytes after 200), so a long-lived client's count grew
    without end and made it the first closed when the bound was reached."""
    app = make_app(make_spec(SPEC))
    connections = app[STATE].connections
    port = free_port()
    held: list[tuple[str, int]] = []
    requests = {
        "content-length": b"PUT /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n0123456789",
        "expect": b"PUT /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n0123456789",
    }

    async def client(app: web.Application) -> None:
        async def requests_sent() -> None:
            try:
                await poll("the exporter listening", lambda: listening({os.getpid()}, port), BOUND)
                for name, request in requests.items():
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    for _ in range(200):
                        writer.write(request)
                        status = await _response(reader)
                        assert status.startswith(b"HTTP/1.1 405"), status
                    held.append((name, connections.unbegun.total))
                    writer.close()
                    await writer.wait_closed()
                    await poll("the connection gone", lambda: connections.unbegun.total == 0, BOUND)
            finally:
                raise web.GracefulExit

        app[_CLIENT] = asyncio.create_task(requests_sent())

    app.on_startup.append(client)
    try:
        web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=False, shutdown_timeout=5.0, access_log=None,
                    loop=connections.new_event_loop())
    finally:
        asyncio.set_event_loop(None)
    # at most the last request's body, held until the next request begins (or the connection closes)
    assert [name for name, _ in held] == list(requests) and all(total <= 10 for _, total in held), held


async def test_a_stale_if_error_answer_is_kept_when_the_token_sent_again_is_refused_too(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    """An endpoint with cache_ttl and stale_if_error whose upstream refuses every token for a while (its auth backend
    failing): the probe's answer is the stale one, as without OAuth2, not the new token's bare 401. Before: the 401
    dropped the token, the request went again with a new one (another cache key, no stale answer under it) and the
    probe failed from then on, though stale_if_error was there to serve the last good answer (before the retry, the
    refused token was kept and the stale answer served for the stale_if_error window)."""
    issued: list[str] = []
    valid: set[str] = set()
    refusing = False

    async def token(request: web.Request) -> web.Response:
        issued.append(f"token-{len(issued) + 1}")
        if not refusing:
            valid.add(issued[-1])
        return web.json_response({"access_token": issued[-1], "token_type": "Bearer"})

    async def api(request: web.Request) -> web.Response:
        got = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return web.json_response({"v": int(got.rpartition("-")[2])}) if got in valid else web.json_response({}, status=401)

    up = await upstream({"/token": token, "/api": api})
    client = await _oauth2_exporter(aiohttp_client, up.url, ", cache_ttl: 1ms, stale_if_error: 1h")
    _, text = await probe(client, up.url)
    assert value(parse(text), "token_generation") == 1
    valid.clear()
    refusing = True
    await asyncio.sleep(0.05)  # not a synchronisation: the 1 ms cache_ttl must have run out (the loop's clock only moves on)
    _, text = await probe(client, up.url)
    assert issued == ["token-1", "token-2"] and up.hits["/api"] == 3  # refused, sent once more with token-2, refused again
    assert value(parse(text), "token_generation") == 1 and "\nprobe_success 1\n" in text, text  # the stale answer
    await asyncio.sleep(0.05)  # likewise
    _, text = await probe(client, up.url)  # token-2, refused: its request's key has the stale answer too (no 401 within 30 s drops it)
    assert issued == ["token-1", "token-2"] and up.hits["/api"] == 4
    assert value(parse(text), "token_generation") == 1 and "\nprobe_success 1\n" in text, text
