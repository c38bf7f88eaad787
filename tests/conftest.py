"""Shared fixtures: small factories for specs, real upstream servers and a running exporter."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from jsonexporter.server import make_app
from jsonexporter.spec import Spec, load_text

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_spec(text: str, file: str = "spec.yml") -> Spec:
    """Compile a spec from YAML text; fail the test with the problems if it is invalid."""
    spec, problems = load_text(textwrap.dedent(text), file)
    assert spec is not None, "\n".join(map(str, problems))
    return spec


@dataclass
class Upstream:
    server: TestServer
    hits: dict[str, int] = field(default_factory=dict)
    requests: list[web.Request] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


UpstreamFactory = Callable[[dict[str, Any]], Awaitable[Upstream]]


@pytest.fixture
def upstream(aiohttp_server: Any) -> UpstreamFactory:
    """`await upstream({"/path": json_value_or_handler, ...})`: a real HTTP server on 127.0.0.1."""

    async def start(routes: dict[str, Any]) -> Upstream:
        app = web.Application()
        holder: list[Upstream] = []

        def route(path: str, answer: Any) -> Handler:
            async def handle(request: web.Request) -> web.StreamResponse:
                up = holder[0]
                up.hits[path] = up.hits.get(path, 0) + 1
                up.requests.append(request)
                if callable(answer):
                    result: web.StreamResponse = await answer(request)
                    return result
                return web.json_response(answer)

            return handle

        for path, answer in routes.items():
            app.router.add_route("*", path, route(path, answer))
        server = await aiohttp_server(app)
        holder.append(Upstream(server))
        return holder[0]

    return start


ExporterFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
def exporter(aiohttp_client: Any) -> ExporterFactory:
    """`await exporter(spec_text)`: the real app on a real socket, with a client for it."""

    async def start(text: str) -> TestClient[web.Request, web.Application]:
        client: TestClient[web.Request, web.Application] = await aiohttp_client(make_app(make_spec(text)))
        return client

    return start


async def wait_for(event: asyncio.Event, seconds: float = 5.0) -> None:
    """A bounded wait: synchronisation through events, never through sleeps."""
    await asyncio.wait_for(event.wait(), seconds)


SpecWriter = Callable[..., Path]


@pytest.fixture
def write_spec(tmp_path: Path) -> SpecWriter:
    """`write_spec(yaml_text, name="spec.yml")`: the dedented text in a file under tmp_path."""

    def write(text: str | bytes, name: str = "spec.yml") -> Path:
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(textwrap.dedent(text).removeprefix("\n"), encoding="utf-8")
        return path

    return write
