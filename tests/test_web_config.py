"""The web config as real `jsonexporter serve` processes on 127.0.0.1: bcrypt checks bounded in cost
and in number, shutdown and reload unaffected by them, and a failed reload reported as a failure."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import trustme
from metrics_util import parse, value
from prometheus_util import SESSION, free_port, jsonexporter
from test_cli import SPEC  # the one-module spec of the single-process tests

from jsonexporter.spec import SpecError
from jsonexporter.upstream.files import MAX_TLS_FILE_BYTES
from jsonexporter.webconfig import CHECK_SLOTS, MAX_BCRYPT_COST, BasicAuth, load_web_config

BOUND = 30.0  # seconds any wait below gets before the test fails
Serve = Callable[..., tuple[subprocess.Popen[str], str]]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """`serve(web_file, *flags)`: the exporter as a process (a session of its own: teardown kills
    workers too), stopped at teardown."""
    spec_file = tmp_path / "spec.yml"
    spec_file.write_text(SPEC)
    procs: list[subprocess.Popen[str]] = []

    def start(web_file: Path, *flags: str, scheme: str = "http") -> tuple[subprocess.Popen[str], str]:
        port = free_port()
        proc = subprocess.Popen(jsonexporter("--config.file", str(spec_file), "--web.config.file", str(web_file), "--web.listen-address",
                                             f"127.0.0.1:{port}", "--log.format", "json", *flags),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                                env={**os.environ, "TMPDIR": str(tmp_path)})
        procs.append(proc)
        return proc, f"{scheme}://127.0.0.1:{port}"

    yield start
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _hash(password: str, cost: int) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


async def _until(condition: str, check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + BOUND
    while not await check():
        assert time.monotonic() < deadline, f"{condition}: not within {BOUND:.0f} s"
        await asyncio.sleep(0.05)  # polling interval of a bounded loop, not a synchronisation


# -- bcrypt ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cost", [MAX_BCRYPT_COST + 1, 31])
def test_bcrypt_costs_over_the_bound_are_refused_at_load_saying_why(tmp_path: Path, cost: int) -> None:
    web_file = tmp_path / "web.yml"
    # a hash is only text: one with a high cost is written, not computed
    web_file.write_text(f"basic_auth_users:\n  fine: {_hash('x', 4)}\n  costly: $2y${cost}${'.' * 53}\n")
    with pytest.raises(SpecError) as caught:
        load_web_config(str(web_file))
    [problem] = [str(p) for p in caught.value.problems]
    assert problem.startswith(f"{web_file}:3:11: basic_auth_users.costly: bcrypt cost {cost} is over {MAX_BCRYPT_COST}"), problem
    assert "each step doubles it" in problem and "htpasswd -nBC 10 costly" in problem
    assert ("34 hours" if cost == 31 else "2 s") in problem, problem


def test_the_highest_accepted_bcrypt_cost_loads(tmp_path: Path) -> None:
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"basic_auth_users:\n  slow: $2y${MAX_BCRYPT_COST}${'.' * 53}\n")
    assert "slow" in load_web_config(str(web_file)).users


@pytest.mark.parametrize(("costs", "checked"), [((12, 12), 12), ((12, 12, 10), 12), ((10, 10, 12), 10), ((10, 12), 12), ((4,), 4)])
async def test_an_unknown_users_password_is_checked_at_the_cost_of_most_users_hashes(tmp_path: Path, costs: tuple[int, ...], checked: int) -> None:
    """A fixed cost-10 hash was checked for unknown users: with users at cost 12 a 401 took 62 ms for an
    unknown user and 245-368 ms for one that exists, which told an outsider the user names."""
    web_file = tmp_path / "web.yml"
    web_file.write_text("basic_auth_users:\n" + "".join(f"  user{i}: $2y${cost:02d}${'.' * 53}\n" for i, cost in enumerate(costs)))
    config = load_web_config(str(web_file))
    auth = BasicAuth(lambda: config)
    dummy = auth.hash_to_check(config.users, "nobody")
    assert dummy.startswith(f"$2b${checked:02d}$".encode()) and len(dummy) == 60, dummy
    assert auth.hash_to_check(config.users, "user0") == config.users["user0"]
    assert await auth.check("Basic " + base64.b64encode(b"nobody:x").decode()) is False  # bcrypt takes it: a well-formed hash


async def test_password_checks_keep_their_slot_until_their_thread_ends_and_never_block_reload_or_stop(tmp_path: Path, serve: Serve) -> None:
    slow_hash = await asyncio.to_thread(_hash, "right", MAX_BCRYPT_COST)  # a legitimate, slow user: about 1 s a check
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"basic_auth_users:\n  alice: {_hash('alice', 4)}\n  bob: {_hash('bob', 4)}\n  slow: {slow_hash}\n")
    proc, base = serve(web_file)
    async with aiohttp.ClientSession(timeout=SESSION) as session:

        async def status(path: str, user: str, password: str, method: str = "GET") -> int:
            async with session.request(method, f"{base}{path}", headers=_basic(user, password)) as response:
                await response.read()
                return response.status

        async def alice_answers() -> bool:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                return await status("/-/healthy", "alice", "alice") == 200
            return False

        await _until("alice logged in", alice_answers)  # remembered from now on: no more checks for her

        held = await _fill_slots(lambda: status("/-/healthy", "slow", "wrong"))
        for task in held:  # the clients go away; their checks go on in their threads
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        assert await status("/metrics", "bob", "bob") == 503  # the slots are still taken
        assert await status("/-/reload", "alice", "alice", "POST") == 200  # the remembered user and the reload are not held up

        async def bob_in() -> bool:
            return await status("/metrics", "bob", "bob") == 200

        await _until("a slot free again once the slow checks ended", bob_in)
        flood = [asyncio.create_task(status("/-/healthy", "slow", "wrong")) for _ in range(2 * CHECK_SLOTS)]
        done, _ = await asyncio.wait(flood, timeout=BOUND, return_when=asyncio.FIRST_COMPLETED)
        assert done and all(task.result() == 503 for task in done)  # every slot busy with a slow check
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, BOUND) == 0
        await asyncio.gather(*flood, return_exceptions=True)


async def _fill_slots(slow_request: Callable[[], Awaitable[int]]) -> list[asyncio.Task[int]]:
    """With every slot free: twice as many slow checks as there are slots, each on a connection of
    its own; the requests in progress once as many have been refused (503 at once) as there are
    slots, which hold them."""
    flood = [asyncio.create_task(slow_request()) for _ in range(2 * CHECK_SLOTS)]
    refused = 0
    deadline = time.monotonic() + BOUND
    while refused < CHECK_SLOTS:
        done, _ = await asyncio.wait(flood, timeout=max(deadline - time.monotonic(), 0), return_when=asyncio.FIRST_COMPLETED)
        assert done, f"not {CHECK_SLOTS} requests refused with 503 within {BOUND:.0f} s while {CHECK_SLOTS} slow checks ran"
        for task in done:
            flood.remove(task)
            assert task.result() == 503  # a slow check takes about 1 s: these were refused at once
            refused += 1
    assert len(flood) == CHECK_SLOTS
    return flood


# -- a failed reload is a failure --------------------------------------------------------------


Get = Callable[..., Awaitable[tuple[int, str]]]


def _requests(proc: subprocess.Popen[str], base: str, trusting: ssl.SSLContext | None = None,
              headers: dict[str, str] | None = None) -> tuple[Get, Callable[[], Awaitable[bool]]]:
    """`get(path, method)` -> (status, text) of the exporter at `base`, and whether it answers /-/healthy (while running)."""

    async def get(path: str, method: str = "GET") -> tuple[int, str]:
        # a connection of its own each time: with workers, either may answer
        async with aiohttp.ClientSession(timeout=SESSION, connector=aiohttp.TCPConnector(force_close=True, ssl=trusting or True)) as session, \
                session.request(method, f"{base}{path}", headers=headers) as response:
            return response.status, await response.text()

    async def healthy() -> bool:
        assert proc.poll() is None
        with contextlib.suppress(aiohttp.ClientConnectionError):
            return (await get("/-/healthy"))[0] == 200
        return False

    return get, healthy


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Any]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    other = ca.issue_cert("127.0.0.1")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "server.pem", "key": tmp_path / "server.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    return {"paths": paths, "key": server.private_key_pem.bytes(), "other_key": other.private_key_pem.bytes(), "ca": ca}


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_failed_web_config_reload_is_reported_as_a_failure(tmp_path: Path, serve: Serve, tls_files: dict[str, Any], workers: str) -> None:
    p = tls_files["paths"]
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"tls_server_config:\n  cert_file: {p['cert']}\n  key_file: {p['key']}\n")
    proc, base = serve(web_file, "--web.workers", workers, scheme="https")
    get, healthy = _requests(proc, base, ssl.create_default_context(cafile=str(p["ca"])))

    async def reload_state(expected: float) -> bool:
        return value(parse((await get("/metrics"))[1]), "jsonexporter_config_last_reload_successful") == expected

    await _until("serving https", healthy)
    p["key"].write_bytes(tls_files["other_key"])  # a key that does not match the certificate
    status, text = await get("/-/reload", "POST")
    assert status == 500, text
    assert "reload failed, nothing changed" in text and f"{web_file}:2:14: tls_server_config.cert_file: cannot load the certificate files" in text, text
    assert "spec reloaded" not in text and "reloaded" not in text.replace("reload failed", "")
    assert await reload_state(0)
    assert (await get("/-/healthy"))[0] == 200  # still serving with the previous certificate

    p["key"].write_bytes(tls_files["key"])
    status, text = await get("/-/reload", "POST")
    assert status == 200 and text.startswith("reloaded"), text
    await _until("every worker reloaded", lambda: reload_state(1))


# -- a reload applies tls_server_config, or fails ------------------------------------------------

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _tls_server_kept_alive(tmp_path: Path, serve: Serve, tls_files: dict[str, Any]) -> tuple[Path, subprocess.Popen[str], str, Get, Connection]:
    """The exporter serving TLS (no client certificate asked): its web config, process, base URL, `get` for
    it, and a connection that has been answered once and is kept alive (idle)."""
    p = tls_files["paths"]
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"tls_server_config:\n  cert_file: {p['cert']}\n  key_file: {p['key']}\n")
    proc, base = serve(web_file, scheme="https")
    anonymous = ssl.create_default_context(cafile=str(p["ca"]))
    get, healthy = _requests(proc, base, anonymous)
    await _until("serving https", healthy)
    connection = await asyncio.open_connection("127.0.0.1", int(base.rsplit(":", 1)[1]), ssl=anonymous, server_hostname="127.0.0.1")
    assert await _healthy_kept_alive(connection)
    return web_file, proc, base, get, connection


async def _healthy_kept_alive(connection: Connection) -> bool:
    reader, writer = connection
    writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return (await asyncio.wait_for(reader.readuntil(b"Healthy.\n"), BOUND)).startswith(b"HTTP/1.1 200")


async def test_a_reload_that_requires_client_certificates_applies_to_new_connections_and_closes_idle_ones(
    tmp_path: Path, serve: Serve, tls_files: dict[str, Any],
) -> None:
    """The reload only loaded a new certificate into the running context: client auth, client CA and
    versions stayed as started, while the reload answered 200 and the metric said 1."""
    p = tls_files["paths"]
    web_file, proc, base, get, (reader, writer) = await _tls_server_kept_alive(tmp_path, serve, tls_files)  # idle at the reload
    try:
        web_file.write_text(f"tls_server_config:\n  cert_file: {p['cert']}\n  key_file: {p['key']}\n"
                            f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {p['ca']}\n")
        status, text = await get("/-/reload", "POST")
        assert status == 200 and text.startswith("reloaded"), text
        assert await asyncio.wait_for(reader.read(), BOUND) == b""  # the connection made without a certificate, closed
    finally:
        writer.close()
    with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
        await get("/-/healthy")  # a new connection without a client certificate
    with_certificate = ssl.create_default_context(cafile=str(p["ca"]))
    tls_files["ca"].issue_cert("prometheus@example.com").configure_cert(with_certificate)
    get_with, _ = _requests(proc, base, with_certificate)
    assert (await get_with("/-/healthy"))[0] == 200
    assert value(parse((await get_with("/metrics"))[1]), "jsonexporter_config_last_reload_successful") == 1


async def test_a_reload_with_the_same_tls_settings_keeps_the_connections_open(tmp_path: Path, serve: Serve, tls_files: dict[str, Any]) -> None:
    """A renewed certificate at the same paths serves new connections; those open stay (a reload is no reason to reconnect)."""
    p = tls_files["paths"]
    _, _, _, get, connection = await _tls_server_kept_alive(tmp_path, serve, tls_files)
    try:
        renewed = tls_files["ca"].issue_cert("127.0.0.1")
        renewed.cert_chain_pems[0].write_to_path(str(p["cert"]))
        renewed.private_key_pem.write_to_path(str(p["key"]))
        status, text = await get("/-/reload", "POST")
        assert (status, text.strip()) == (200, "reloaded"), text  # the files' bytes changed: not "(unchanged)"
        assert await _healthy_kept_alive(connection)
        status, text = await get("/-/reload", "POST")
        assert (status, text.strip()) == (200, "reloaded (unchanged)"), text
    finally:
        connection[1].close()


@pytest.mark.parametrize("turn", ["on", "off"])
async def test_a_reload_that_turns_tls_on_or_off_fails_saying_a_restart_is_needed(
    tmp_path: Path, serve: Serve, tls_files: dict[str, Any], turn: str,
) -> None:
    p = tls_files["paths"]
    tls = f"tls_server_config:\n  cert_file: {p['cert']}\n  key_file: {p['key']}\n"
    web_file = tmp_path / "web.yml"
    web_file.write_text(tls if turn == "off" else "")
    proc, base = serve(web_file, scheme="https" if turn == "off" else "http")
    get, healthy = _requests(proc, base, ssl.create_default_context(cafile=str(p["ca"])))
    await _until("serving", healthy)
    web_file.write_text(tls if turn == "on" else "")
    status, text = await get("/-/reload", "POST")
    assert status == 500, text
    assert f"{web_file}: tls_server_config: {'added' if turn == 'on' else 'removed'}, but a reload cannot turn TLS {turn}" in text, text
    assert "restart the exporter" in text
    assert value(parse((await get("/metrics"))[1]), "jsonexporter_config_last_reload_successful") == 0
    assert (await get("/-/healthy"))[0] == 200  # served as before


# -- the TLS files are read within bounds --------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_tls_file_that_never_answers_fails_the_reload_within_the_bound_and_the_old_certificate_serves(
    tmp_path: Path, serve: Serve, tls_files: dict[str, Any], workers: str,
) -> None:
    p = tls_files["paths"]
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"tls_server_config:\n  cert_file: {p['cert']}\n  key_file: {p['key']}\n")
    proc, base = serve(web_file, "--web.workers", workers, scheme="https")
    get, healthy = _requests(proc, base, ssl.create_default_context(cafile=str(p["ca"])))
    await _until("serving https", healthy)
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)  # nobody writes it: a read of it never ends
    web_file.write_text(f"tls_server_config:\n  cert_file: {p['cert']}\n  key_file: {fifo}\n")
    async with asyncio.timeout(BOUND):
        status, text = await get("/-/reload", "POST")
    assert status == 500 and f"{web_file}:3:13: tls_server_config.key_file: cannot load the certificate files: no answer within 2s" in text, text
    assert (await get("/-/healthy"))[0] == 200  # still serving with the previous certificate


def test_a_tls_file_larger_than_the_bound_is_refused_at_load_naming_its_key(tmp_path: Path, tls_files: dict[str, Any]) -> None:
    p = tls_files["paths"]
    big = tmp_path / "ca-bundle.pem"
    big.write_bytes(p["ca"].read_bytes() * (MAX_TLS_FILE_BYTES // len(p["ca"].read_bytes()) + 1))
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"tls_server_config:\n  cert_file: {p['cert']}\n  key_file: {p['key']}\n"
                        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {big}\n")
    with pytest.raises(SpecError) as caught:
        load_web_config(str(web_file))
    [problem] = [str(p) for p in caught.value.problems]
    assert problem == f"{web_file}:5:19: tls_server_config.client_ca_file: cannot load the certificate files: larger than {MAX_TLS_FILE_BYTES} bytes"


def test_a_tls_file_that_never_answers_fails_the_start_within_the_bound(tmp_path: Path, serve: Serve, tls_files: dict[str, Any]) -> None:
    fifo = tmp_path / "cert.fifo"
    os.mkfifo(fifo)
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"tls_server_config:\n  cert_file: {fifo}\n  key_file: {tls_files['paths']['key']}\n")
    proc, _ = serve(web_file)
    _, err = proc.communicate(timeout=BOUND)
    assert proc.returncode != 0 and f"{web_file}:2:14: tls_server_config.cert_file: cannot load the certificate files: no answer within 2s" in err, err


# -- no secret in what a web config's problems print --------------------------------------------

PASSWORD = "plaintextPasswordOops"  # a password written where its hash belongs
BAD_HASH = "$2y$10$NotAValidHashButSecretXYZabcdefghijklmnopqrstuvwxyz012"


async def test_web_config_problems_show_no_users_hash_or_password_at_start_reload_or_in_the_log(tmp_path: Path, serve: Serve) -> None:
    bad = f"basic_auth_users:\n  bob: {PASSWORD}\n  alice: {BAD_HASH}\n"
    web_file = tmp_path / "web.yml"
    web_file.write_text(bad)
    proc, _ = serve(web_file)
    out, err = proc.communicate(timeout=BOUND)
    assert proc.returncode != 0 and f"{web_file}:2:8: basic_auth_users.bob: a value (not shown: it is a secret)" in err, err
    assert "basic_auth_users.alice" in err

    web_file.write_text(f"basic_auth_users:\n  carol: {_hash('carol', 4)}\n")
    proc, base = serve(web_file)
    get, healthy = _requests(proc, base, headers=_basic("carol", "carol"))

    await _until("serving", healthy)
    web_file.write_text(bad)
    status, text = await get("/-/reload", "POST")
    assert status == 500 and "basic_auth_users.bob" in text, text
    proc.send_signal(signal.SIGTERM)
    _, log = proc.communicate(timeout=BOUND)
    assert "basic_auth_users.bob" in log, log
    for shown in (out + err, text, log):
        assert PASSWORD not in shown and "NotAValidHashButSecret" not in shown


def test_a_users_password_is_not_shown_where_another_key_quotes_it(tmp_path: Path) -> None:
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"basic_auth_users:\n  bob: {PASSWORD}\ntls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n  min_version: {PASSWORD}\n")
    with pytest.raises(SpecError) as caught:
        load_web_config(str(web_file))
    assert f"{web_file}:6:16: tls_server_config.min_version: " in str(caught.value)
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize("written", ["!S3cr3t-WEB-1", "*S3cr3t-WEB-1", "&S3cr3t-WEB-1§"])
def test_a_users_password_that_yaml_reads_as_a_tag_alias_or_anchor_is_not_shown(tmp_path: Path, written: str) -> None:
    """The web config is read by the spec's YAML loader: its problems never quote the source's tokens."""
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"basic_auth_users:\n  bob: {written}\n")
    with pytest.raises(SpecError) as caught:
        load_web_config(str(web_file))
    assert f"{web_file}:2:" in str(caught.value)
    assert "S3cr3t-WEB-1" not in str(caught.value) and "§" not in str(caught.value), str(caught.value)
