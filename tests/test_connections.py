"""Connections, as real `jsonexporter serve` processes on 127.0.0.1: to the exporter (the open-files
limit raised at start, idle clients and TLS handshakes bounded) and to upstreams (the per-host pool limit a flag, a
probe that waited for a pooled connection told from an upstream that did not answer); and, in process,
what a stop does with a connection that comes as it starts."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import signal
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from conftest import Held, UpstreamFactory, make_spec, wait_for
from metrics_util import parse, value
from prometheus_util import SESSION, free_port, jsonexporter, listening, poll, wait_healthy
from test_cli import SPEC  # the one-module spec of the single-process tests

from jsonexporter.listen import MAX_DEFAULT_CLIENT_CONNECTIONS, ClientConnections, client_connection_limit
from jsonexporter.server import STATE, make_app, stop_once_on_signals

BOUND = 20.0  # seconds any wait below gets before the test fails
Serve = Callable[..., tuple[subprocess.Popen[str], str]]


@pytest.fixture(name="serve")
def exporter_process(tmp_path: Path) -> Iterator[Serve]:
    """`serve(*flags, nofile=(soft, hard))`: the exporter as a process logging JSON lines, stopped at teardown
    (tests/test_listening.py's too)."""
    spec_file = tmp_path / "spec.yml"
    spec_file.write_text(SPEC)
    procs: list[subprocess.Popen[str]] = []

    def start(*flags: str, nofile: tuple[int, int] | None = None) -> tuple[subprocess.Popen[str], str]:
        def limit() -> None:  # in the child, before the exporter starts: what systemd or a container gives it
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        port = free_port()
        proc = subprocess.Popen(jsonexporter("--config.file", str(spec_file), "--web.listen-address", f"127.0.0.1:{port}", "--log.format", "json", *flags),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit)
        procs.append(proc)
        return proc, f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _log_lines(proc: subprocess.Popen[str]) -> list[dict[str, object]]:
    proc.terminate()
    _, stderr = proc.communicate(timeout=BOUND)
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


# -- to the exporter --------------------------------------------------------------------------


async def _idle_connections(base: str, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """`count` client connections, in batches that the exporter has accepted before the next: more
    than its listen backlog (128) waiting in the kernel would be accepted out of their order."""
    host, port = base.removeprefix("http://").split(":")
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    while len(connections) < count:
        connections += [await asyncio.wait_for(asyncio.open_connection(host, int(port)), BOUND) for _ in range(min(64, count - len(connections)))]
        assert await _healthy_on(connections[-1]), f"connection {len(connections)} not answered"  # so every one before is accepted
    return connections


async def _healthy_on(connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bool:
    """Whether /-/healthy answers 200 on this connection (False: the server had closed it)."""
    reader, writer = connection
    try:
        writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        await asyncio.wait_for(reader.readexactly(length), BOUND)  # the whole answer: the connection can be asked again
    except (ConnectionError, asyncio.IncompleteReadError):
        return False
    return head.startswith(b"HTTP/1.1 200")


def _close(connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in connections:
        writer.close()


async def test_the_open_files_limit_is_raised_to_the_hard_limit_so_idle_clients_stay_connected(serve: Serve) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if hard < 1024:
        pytest.skip(f"needs a hard open files limit of 1024 or more, this one is {hard}")
    proc, base = serve(nofile=(256, hard))  # more idle clients below than the soft limit it starts with
    await wait_healthy(base, proc)
    idle = await _idle_connections(base, 300)
    try:
        assert await _healthy_on((await _idle_connections(base, 1))[0])
        answered = [await _healthy_on(connection) for connection in idle]
        assert all(answered), f"{answered.count(False)} of 300 idle connections were closed"
    finally:
        _close(idle)
    [started] = [line for line in _log_lines(proc) if line["msg"] == "open files"]
    assert started["limit"] == hard and started["started_with"] == 256 and started["hard_limit"] == hard, started
    assert started["max_connections"] == hard - 256 - 128  # what the upstream connections and the rest leave


def test_the_default_connection_limit_is_what_the_open_files_leave_and_at_most_16384_whatever_their_limit() -> None:
    assert client_connection_limit(4096, 256) == 4096 - 256 - 128
    assert client_connection_limit(200, 256) == 16  # the least, when the limit leaves nothing
    # Docker's open files limit: a million idle clients at about 7 KB each would be 7 GB
    assert client_connection_limit(1_048_576, 256) == MAX_DEFAULT_CLIENT_CONNECTIONS == 16384


async def test_beyond_the_connection_limit_the_oldest_idle_clients_are_closed_and_health_checks_answer(serve: Serve) -> None:
    proc, base = serve(nofile=(512, 512))  # a hard limit too low for the clients below: 128 connections (512 - 256 - 128)
    await wait_healthy(base, proc)
    idle = await _idle_connections(base, 600)
    try:
        assert await _healthy_on((await _idle_connections(base, 1))[0])
        for reader, _ in idle[: 600 - 128]:  # closed by the exporter: the read ends at once
            assert await asyncio.wait_for(reader.read(), BOUND) == b""
        assert await _healthy_on(idle[-1])  # the newest stay
    finally:
        _close(idle)
    assert any(line["msg"] == "too many client connections, closed the oldest idle ones" for line in _log_lines(proc))


@pytest.fixture
def tls_web_config(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A web config serving TLS (a trustme certificate for 127.0.0.1), and a client context trusting it."""
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"tls_server_config:\n  cert_file: {tmp_path / 'server.pem'}\n  key_file: {tmp_path / 'server.pem'}\n")
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return web_file, client


async def _healthy_over_tls(port: int, client: ssl.SSLContext) -> bool:
    """Whether /-/healthy answers 200 on a new TLS connection (the handshake included), within BOUND."""
    try:
        async with asyncio.timeout(BOUND):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="127.0.0.1")
            try:
                writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                return (await reader.read()).startswith(b"HTTP/1.1 200")
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False


async def test_under_tls_connections_that_never_start_their_handshake_are_bounded_and_health_checks_answer(
    serve: Serve, tls_web_config: tuple[Path, ssl.SSLContext],
) -> None:
    """Silent TCP connections (no ClientHello) to a TLS server were in their handshake for 60 s,
    counted but never closed to make room: 450 of them took every descriptor of a 400 limit and
    /-/healthy failed. They are closed, the oldest first, as new connections come beyond the limit."""
    web_file, client = tls_web_config
    limit = 50
    proc, base = serve("--web.config.file", str(web_file), "--web.max-connections", str(limit), nofile=(400, 400))
    port = int(base.rsplit(":", 1)[1])
    await poll("serving https", lambda: proc.poll() is not None or listening({proc.pid}, port), BOUND)
    assert await _healthy_over_tls(port, client)
    silent: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        while len(silent) < 450:
            silent += [await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), BOUND) for _ in range(50)]
            # answered on a connection after them: every one before is accepted (the kernel queues them in order)
            assert await _healthy_over_tls(port, client), f"/-/healthy not answered after {len(silent)} silent connections"
        descriptors = len(os.listdir(f"/proc/{proc.pid}/fd"))
        assert descriptors <= limit + 32, f"{descriptors} descriptors open with --web.max-connections {limit}"
        for reader, _ in silent[:300]:  # the oldest, closed by the exporter: the read ends at once
            assert await asyncio.wait_for(reader.read(), BOUND) == b""
    finally:
        _close(silent)
    lines = _log_lines(proc)
    assert not [line for line in lines if "Too many open files" in str(line)]
    assert any(line["msg"] == "too many client connections, closed the oldest idle ones" for line in lines)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_a_connection_beyond_the_limit_is_refused_when_every_connection_has_a_request_in_progress(
    upstream: UpstreamFactory, serve: Serve, tls_web_config: tuple[Path, ssl.SSLContext], tls: bool,
) -> None:
    held = Held({"queues": {"orders": {"waiting": 3}}}, count=4)
    up = await upstream({"/stats": held})
    web_file, client = tls_web_config
    proc, base = serve("--web.max-connections", "4", *(["--web.config.file", str(web_file)] if tls else []))
    port = int(base.rsplit(":", 1)[1])

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        tls_args: dict[str, Any] = {"ssl": client, "server_hostname": "127.0.0.1"} if tls else {}
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, **tls_args), BOUND)

    async def answered() -> bool:
        try:
            connection = await connect()
        except OSError:  # with TLS: closed before the handshake
            return False
        try:
            return await _healthy_on(connection)
        finally:
            _close([connection])

    await poll("serving", answered, BOUND)
    probes = []
    for _ in range(4):
        reader, writer = await connect()
        writer.write(f"GET /probe?target={up.url} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        probes.append((reader, writer))
    try:
        await wait_for(held.arrived, BOUND)  # as many connections with a request in progress as the limit
        assert not await answered()  # none to close for it: closed at once
        held.release.set()
        for reader, _ in probes:  # the probes in progress were not cut
            assert (await asyncio.wait_for(reader.read(), BOUND)).startswith(b"HTTP/1.1 200")
        assert await answered()
    finally:
        _close(probes)
    assert any(line["msg"] == "too many client connections, closed the oldest idle ones" and "refused" in line for line in _log_lines(proc))


async def test_accepts_that_fail_for_lack_of_descriptors_are_logged_once_not_each_time(serve: Serve) -> None:
    """A --web.max-connections above what the open files limit allows: asyncio logged an error for each
    accept() that failed with EMFILE, a hundred per readable event of the listening socket, thousands a second."""
    proc, base = serve("--web.max-connections", "1000", nofile=(200, 200))
    await wait_healthy(base, proc)
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    reader.start()
    host, port = base.removeprefix("http://").split(":")
    idle = [await asyncio.wait_for(asyncio.open_connection(host, int(port)), BOUND) for _ in range(250)]  # 200 descriptors, the rest queued
    try:
        await poll("an accept that failed", lambda: any("out of system resource" in line or "cannot accept" in line for line in lines), BOUND)
    finally:
        _close(idle)
        proc.terminate()
        proc.wait(BOUND)
        reader.join(BOUND)
    assert not [line for line in lines if "out of system resource" in line]
    [warning] = [json.loads(line) for line in lines if "cannot accept" in line]
    assert warning["msg"] == "cannot accept client connections, retrying each second" and warning["err"] == "Too many open files", warning


def test_a_tls_handshake_that_does_not_end_within_its_time_is_closed(tls_web_config: tuple[Path, ssl.SSLContext], tmp_path: Path) -> None:
    """asyncio gives a handshake 60 s unless told otherwise; the exporter's loop tells every TLS server it makes
    (here 0.5 s instead of HANDSHAKE_TIMEOUT's 10)."""
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(tmp_path / "server.pem")
    connections = ClientConnections(50, handshake_timeout=0.5)
    loop = connections.new_event_loop()

    async def silent_connection_is_closed() -> bytes:
        app = web.Application()
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_side)
        await site.start()
        try:
            [(_, port)] = runner.addresses
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                return await asyncio.wait_for(reader.read(), BOUND)
            finally:
                writer.close()
        finally:
            await runner.cleanup()

    try:
        assert loop.run_until_complete(silent_connection_is_closed()) == b""
    finally:
        loop.close()


# -- to upstreams -----------------------------------------------------------------------------


async def test_a_probe_that_gets_no_pooled_connection_is_a_pool_timeout_not_an_upstream_timeout(upstream: UpstreamFactory, serve: Serve) -> None:
    held = Held({"queues": {"orders": {"waiting": 3}}}, count=2)
    up = await upstream({"/stats": held})
    proc, base = serve("--upstream.max-connections-per-host", "2")
    await wait_healthy(base, proc)
    async with aiohttp.ClientSession(timeout=SESSION) as session:

        async def probe(headers: dict[str, str] | None = None) -> str:
            async with session.get(f"{base}/probe", params={"target": up.url, "debug": "true"}, headers=headers) as response:
                assert response.status == 200
                return await response.text()

        holding = [asyncio.create_task(probe()) for _ in range(2)]
        await wait_for(held.arrived, BOUND)  # both of the host's two connections are taken
        # a scrape timeout of 1.5 s (1 s after the offset): this probe waits for a connection meanwhile
        waited = await asyncio.wait_for(probe({"X-Prometheus-Scrape-Timeout-Seconds": "1.5"}), BOUND)
        held.release.set()
        answered = await asyncio.wait_for(asyncio.gather(*holding), BOUND)
        async with session.get(f"{base}/metrics") as response:
            metrics = parse(await response.text())
    assert "-> pool_timeout" in waited and "no free pooled connection within 1.000s" in waited and "2 per host" in waited, waited
    assert "the upstream was not asked" in waited and "probe_success 0" in waited
    assert all("probe_success 1" in text for text in answered)
    assert held.held == 2  # the third probe never reached the upstream
    assert value(metrics, "jsonexporter_upstream_requests_total", module="default", endpoint="stats", outcome="pool_timeout") == 1
    assert value(metrics, "jsonexporter_upstream_requests_total", module="default", endpoint="stats", outcome="success") == 2


def test_connection_limits_must_be_positive(serve: Serve) -> None:
    proc, _ = serve("--upstream.max-connections-per-host", "0")
    assert proc.wait(BOUND) == 2
    assert proc.stderr is not None and "--upstream.max-connections-per-host must be 1 or more" in proc.stderr.read()


def test_a_connection_that_comes_as_a_stop_signal_is_handled_is_closed_not_left_open() -> None:
    """The exporter's loop as `serve` runs it (cli.py), in this process. Its connection comes in the
    turn of the loop after the signal was read: the loop's accept is queued behind the signal's handler.
    asyncio set such a connection up in a task of its own after the server had closed, which failed
    unseen and left the socket open, its request unread: the client waited until the process exited
    (the probes in flight done, up to the shutdown timeout)."""
    app = make_app(make_spec(SPEC))
    stop_once_on_signals(app, 5.0)
    port = free_port()
    client = socket.socket()
    tasks: list[asyncio.Task[None]] = []

    async def race(app: web.Application) -> None:
        loop = asyncio.get_running_loop()

        def connect() -> None:  # before the loop reads its listening socket again, after it read the signal
            client.connect(("127.0.0.1", port))
            client.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: exporter\r\n\r\n")

        async def when_listening() -> None:
            await poll("the exporter listening", lambda: listening({os.getpid()}, port), BOUND)
            os.kill(os.getpid(), signal.SIGTERM)  # its handler runs at once: the loop reads it in its next turn
            loop.call_soon(connect)  # which runs this first

        tasks.append(asyncio.create_task(when_listening()))

    app.on_startup.append(race)
    gc.disable()  # as rare as in the exporter (cli.py's thresholds): a socket left in a reference cycle stays open
    try:
        web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=False, shutdown_timeout=5.0, access_log=None,
                    loop=app[STATE].connections.new_event_loop())
        client.settimeout(BOUND)
        try:
            answer = client.recv(65536)
        except ConnectionResetError:  # refused once in the listening socket's queue, closed with it
            answer = b""
        assert answer == b"" or answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        gc.enable()
        client.close()
        asyncio.set_event_loop(None)


def test_no_signal_reaches_the_loop_once_the_stop_has_cleaned_up() -> None:
    """The loop closes its self-pipe before it removes its signal handlers; a signal that reached the
    pipe in between printed a BrokenPipeError traceback (a worker that cannot listen, whose supervisor
    stops the others as it ends). After the exporter's cleanup, the last step before the loop closes,
    no signal is written to the pipe any more."""
    app = make_app(make_spec(SPEC))
    stop_once_on_signals(app, 5.0)
    wakeup: list[int] = []

    async def stop(app: web.Application) -> None:
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)

    async def last(app: web.Application) -> None:  # after the exporter's cleanup
        wakeup.append(signal.set_wakeup_fd(-1))  # the file signals were written to until now

    app.on_startup.append(stop)
    app.on_cleanup.append(last)
    try:
        web.run_app(app, host="127.0.0.1", port=free_port(), print=None, handle_signals=False, shutdown_timeout=5.0, access_log=None,
                    loop=app[STATE].connections.new_event_loop())
    finally:
        asyncio.set_event_loop(None)
    assert wakeup == [-1]
