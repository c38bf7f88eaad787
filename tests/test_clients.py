"""The run-time client configurations (upstream/client.py): the values they reveal stay held, and
their TLS files are read off the event loop, bounded in time and size."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
import threading
from pathlib import Path
from typing import Any

import trustme
from aiohttp import web
from conftest import UpstreamFactory, make_spec
from metrics_util import parse, value

from jsonexporter.secrets import REDACTED, Redactor
from jsonexporter.server import make_app
from jsonexporter.spec.model import Secret
from jsonexporter.spec.sources import MAX_SECRET_BYTES
from jsonexporter.upstream.client import Clients
from jsonexporter.upstream.files import MAX_TLS_FILE_BYTES


async def test_two_inline_secrets_revealed_by_one_clients_stay_held_both() -> None:
    redactor = Redactor()
    clients = Clients(redactor)
    assert await clients.reveal(Secret(value="alpha-password-0001"), "password_file") == "alpha-password-0001"
    assert await clients.reveal(Secret(value="beta-password-0002"), "password_file") == "beta-password-0002"
    redactor.budget = 1
    for n in range(100):  # other run-time values, beyond the budget: only the values not in use may go
        redactor.learn(f"other-value-{n:04d}")
    assert redactor("alpha-password-0001 beta-password-0002") == f"{REDACTED} {REDACTED}"


LOCAL = r"targets: {allow: ['https?://(127\.0\.0\.1|localhost):\d+(/.*)?']}"


async def exporter_for(aiohttp_client: Any, **modules: str) -> Any:
    """The exporter with a module per keyword: its name, and its keys (a line each) besides the allowlist, the endpoint `data` and the metric `v`."""
    text = "modules:\n" + "".join(
        f"  {name}:\n    {LOCAL}\n" + "".join(f"    {line}\n" for line in keys.splitlines())
        + "    endpoints: {data: {url: '{target}/data'}}\n    metrics: [{name: v, help: x, endpoint: data, value: v}]\n"
        for name, keys in modules.items())
    return await aiohttp_client(make_app(make_spec(text)))


async def probe(client: Any, target: str, **params: str) -> tuple[int, str]:
    response = await client.get("/probe", params={"target": target, **params})
    return response.status, await response.text()


async def test_a_tls_file_nobody_writes_fails_its_probe_within_the_timeout_and_other_probes_answer(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path,
) -> None:
    fifo = tmp_path / "ca.pem"
    os.mkfifo(fifo)  # opening it for reading waits for a writer, as a read from a hung NFS mount waits for the server
    up = await upstream({"/data": {"v": 1}})
    client = await exporter_for(aiohttp_client, piped=f"timeout: 20s\nhttp_client_config: {{tls_config: {{ca_file: {fifo}}}}}", plain="")

    def release() -> None:  # a writer comes and goes: the reads blocked on the FIFO end
        with contextlib.suppress(OSError):  # no reader left
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    done = threading.Event()

    def watchdog() -> None:  # read on the loop, the FIFO would block it (and this test) for good
        if not done.wait(60):
            while not done.wait(0.1):
                release()

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        stuck = [asyncio.create_task(probe(client, up.url, module="piped", debug="true")) for _ in range(2)]
        for _ in range(3):  # while those wait for the file, the loop serves the others
            _, text = await asyncio.wait_for(probe(client, up.url, module="plain"), 20)
            assert value(parse(text), "probe_success") == 1
            healthy = await asyncio.wait_for(client.get("/-/healthy"), 20)
            assert healthy.status == 200
        for status, text in [await asyncio.wait_for(t, 30) for t in stuck]:
            assert status == 200
            assert "endpoint data: GET" in text and "-> config_error, status 0, 0 bytes" in text
            assert f"error: tls_config: cannot read ca_file '{fifo}': no answer within 2s" in text
        assert up.hits.get("/data") == 3  # the plain probes only
    finally:
        done.set()
        release()


async def test_a_tls_file_larger_than_the_bound_fails_its_probe_naming_the_file_not_its_content(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path,
) -> None:
    big = tmp_path / "client.key"
    big.write_bytes(b"KEYCONTENT" * (MAX_TLS_FILE_BYTES // 10 + 1))
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    up = await upstream({"/data": {"v": 1}})
    tls = f"{{ca_file: {tmp_path / 'ca.pem'}, cert_file: {tmp_path / 'ca.pem'}, key_file: {big}}}"
    client = await exporter_for(aiohttp_client, big=f"http_client_config: {{tls_config: {tls}}}")
    status, text = await probe(client, up.url, module="big", debug="true")
    assert status == 200 and value(parse(text.partition("metrics:\n")[2]), "probe_success") == 0
    assert f"error: tls_config: cannot read key_file '{big}': larger than {MAX_TLS_FILE_BYTES} bytes" in text
    assert "KEYCONTENT" not in text and up.hits.get("/data") is None


async def _tls_upstream(aiohttp_server: Any, ca: trustme.CA) -> Any:
    """A real HTTPS upstream on 127.0.0.1 answering /data with {"v": 1}, its certificate signed by `ca`."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    app = web.Application()

    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"v": 1})

    app.router.add_get("/data", handle)
    return await aiohttp_server(app, ssl=server_context)


async def test_a_tls_context_is_made_once_and_kept_while_its_files_change(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
) -> None:
    ca = trustme.CA()
    server = await _tls_upstream(aiohttp_server, ca)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client = await exporter_for(aiohttp_client, tls=f"http_client_config: {{tls_config: {{ca_file: {ca_file}}}}}")
    target = f"https://127.0.0.1:{server.port}"
    assert value(parse((await probe(client, target, module="tls"))[1]), "v") == 1
    ca_file.unlink()  # read once per loaded spec: the context made at the first probe serves the next ones
    assert value(parse((await probe(client, target, module="tls"))[1]), "v") == 1


async def test_a_ca_bundle_larger_than_a_secret_is_a_usable_ca_file(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path) -> None:
    """A system CA bundle (Debian's is 220 KB) is a CA file, not a wrong path: the TLS files' bound is
    not the secret files' 64 KiB."""
    ca = trustme.CA()
    server = await _tls_upstream(aiohttp_server, ca)
    others = b"".join(trustme.CA().cert_pem.bytes() for _ in range(3))
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_bytes(others * (300_000 // len(others) + 1) + ca.cert_pem.bytes())  # the one that signs the server's last
    assert bundle.stat().st_size > MAX_SECRET_BYTES
    client = await exporter_for(aiohttp_client, tls=f"http_client_config: {{tls_config: {{ca_file: {bundle}}}}}")
    status, text = await probe(client, f"https://127.0.0.1:{server.port}", module="tls")
    assert status == 200 and value(parse(text), "v") == 1, text


async def test_a_probe_whose_deadline_comes_while_a_tls_file_is_read_says_so(aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path) -> None:
    fifo = tmp_path / "client.pem"
    os.mkfifo(fifo)
    up = await upstream({"/data": {"v": 1}})
    client = await exporter_for(aiohttp_client, piped=f"timeout: 1s\nhttp_client_config: {{tls_config: {{cert_file: {fifo}, key_file: {fifo}}}}}")
    try:
        _, text = await asyncio.wait_for(probe(client, up.url, module="piped", debug="true"), 30)
        assert re.search(r"-> timeout, .*\n  error: no tls_config files within \d\.\d{3}s", text), text
    finally:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
