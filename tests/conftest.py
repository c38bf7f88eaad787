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
from prometheus_util import SESSION

from jsonexporter.server import make_app
from jsonexporter.spec import Spec, load_text

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BoundedClient(TestClient[Any, Any]):
    """The client `aiohttp_client` makes: each request ends within prometheus_util.SESSION, as the tests' own
    sessions do; one that hangs fails the test in 2 minutes, not aiohttp's 5."""

    def __init__(self, server: Any, **kwargs: Any) -> None:
        super().__init__(server, **{"timeout": SESSION, **kwargs})


@pytest.fixture
def aiohttp_client_cls() -> type[TestClient[Any, Any]]:
    return BoundedClient


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


@dataclass
class Held:
    """An upstream handler that holds every request until `release` is set, then answers `answer`;
    `arrived` is set once `count` requests are held: `await upstream({"/": held})`."""

    answer: Any
    count: int = 1
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0
    hold: float = 20.0  # seconds a request is held at most: longer than every bounded wait of the test before `release`

    async def __call__(self, request: web.Request) -> web.Response:
        self.held += 1
        if self.held == self.count:
            self.arrived.set()
        await wait_for(self.release, self.hold)
        return web.json_response(self.answer)


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


@dataclass
class ForwardProxy:
    """A real HTTP forward proxy on 127.0.0.1: absolute-form requests and CONNECT tunnels."""

    port: int
    requests: list[str] = field(default_factory=list)  # request lines seen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def forward_proxy() -> Any:
    proxy = ForwardProxy(0)
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        proxy.requests.append(request_line)
        method, target, version = request_line.split(" ")
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            from urllib.parse import urlsplit

            parts = urlsplit(target)
            assert parts.hostname in ("127.0.0.1", "localhost"), "the test proxy only forwards to 127.0.0.1"
            up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            headers = [h for h in header_lines if h and not h.lower().startswith("proxy-")]
            up_writer.write(f"{method} {path} {version}\r\n".encode("latin-1") + "\r\n".join([*headers, "", ""]).encode("latin-1"))
        for a, b in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(_pipe(a, b))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    yield proxy
    server.close()
    for task in list(tasks):
        task.cancel()


async def raw_server(answer: bytes) -> tuple[asyncio.AbstractServer, str]:
    """A real server on 127.0.0.1 that answers every request with the bytes `answer` (an HTTP head aiohttp's own
    servers would not write), and its URL; close it when done."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def malformed_upstream() -> Any:
    """The URL of a real server on 127.0.0.1 that answers every request with an invalid HTTP head
    (a Content-Length that is not a number): the client's parser error quotes the request's URL."""
    server, url = await raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n{}")
    yield url
    server.close()
    await server.wait_closed()
