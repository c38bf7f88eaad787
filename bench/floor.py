"""The floor of the benchmark: the least a Python exporter of this kind must do per probe.

A minimal aiohttp app whose /probe fetches `target` over one pooled keep-alive session, reads
the body, parses it as JSON and answers a one-line text: no extraction, no exposition. It
parses with orjson when it is installed (as jsonexporter does), else with the json module.

    python bench/floor.py 127.0.0.1:17980
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

try:
    import orjson

    loads: Any = orjson.loads
    PARSER = "orjson"
except ImportError:
    loads = json.loads
    PARSER = "json"

SESSION = web.AppKey("session", aiohttp.ClientSession)


async def probe(request: web.Request) -> web.Response:
    async with request.app[SESSION].get(request.query["target"]) as response:
        document = loads(await response.read())
    return web.Response(text=f"floor_items {len(document.get('items', ()))}\n")


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="Healthy.\n")


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=256, limit_per_host=32, keepalive_timeout=30)
    app[SESSION] = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
    yield
    await app[SESSION].close()


def main(address: str) -> None:
    host, _, port = address.rpartition(":")
    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/probe", probe)
    app.router.add_get("/-/healthy", healthy)
    web.run_app(app, host=host, port=int(port), print=None, access_log=None)


if __name__ == "__main__":
    main(sys.argv[1])
