"""Found by the thirteenth red-team review: a passphrase-protected key file made OpenSSL ask for its passphrase on the
exporter's terminal (a start that never ended, a thread left reading the terminal, a prompt in the log); an OAuth2
token answer was read by one read of the stream, so an answer that came in more than one piece was cut and refused;
an inline `ca:` that is not ASCII was a fault of the exporter's own. Real servers on 127.0.0.1 throughout."""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import select
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from jsonexporter.server import make_app
from jsonexporter.spec import SpecError, load_text
from jsonexporter.upstream.client import MAX_TOKEN_BYTES
from jsonexporter.webconfig import load_web_config

ROOT = Path(__file__).resolve().parent.parent
BOUND = 20.0  # seconds any wait of these tests takes at most


def _spec(text: str) -> Any:
    spec, problems = load_text(textwrap.dedent(text), "spec.yml")
    assert spec is not None, "\n".join(map(str, problems))
    return spec


@pytest.fixture
def encrypted_key(tmp_path: Path) -> dict[str, Path]:
    """A certificate and its key, the key encrypted with a passphrase (PKCS#8, as `openssl pkey -aes256` writes it)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    key = load_pem_private_key(cert.private_key_pem.bytes(), None)
    paths = {"cert": tmp_path / "cert.pem", "key": tmp_path / "encrypted.key", "ca": tmp_path / "ca.pem"}
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.BestAvailableEncryption(b"the-passphrase")))
    return paths


# -- a passphrase-protected key is refused, never asked for -------------------------------------------------------


def _run_on_a_terminal(args: list[str], bound: float = BOUND) -> tuple[int | None, str]:
    """`args` run with a pseudo-terminal as its controlling terminal (as an operator starts it), its output read within
    `bound` seconds; a process still running then is killed (returncode None)."""
    leader, follower = os.openpty()

    def controlling_terminal() -> None:  # after setsid (start_new_session): the terminal becomes the session's
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, start_new_session=True,
                            preexec_fn=controlling_terminal, env=env, cwd=ROOT)
    os.close(follower)
    out = b""
    end = time.monotonic() + bound
    try:
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([leader], [], [], left)
            if not ready:
                break
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every writer of the terminal has closed it
                break
            if not chunk:
                break
            out += chunk
        try:
            code: int | None = proc.wait(timeout=max(end - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            code = None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=BOUND)
        os.close(leader)
    return code, out.decode("utf-8", "replace")


def test_a_passphrase_protected_web_config_key_fails_the_start_and_no_passphrase_is_asked_on_the_terminal(
        tmp_path: Path, encrypted_key: dict[str, Path]) -> None:
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"tls_server_config:\n  cert_file: {encrypted_key['cert']}\n  key_file: {encrypted_key['key']}\n")
    spec = tmp_path / "spec.yml"
    spec.write_text("modules:\n  default:\n    endpoints: {e: {url: 'http://127.0.0.1:1/'}}\n    metrics: [{name: x, help: x, value: a}]\n")
    code, out = _run_on_a_terminal([sys.executable, "-m", "jsonexporter", "--config.file", str(spec), "--web.config.file", str(web_file),
                                    "--web.listen-address", "127.0.0.1:0"], bound=10.0)
    assert "pass phrase" not in out.lower(), out  # OpenSSL's prompt, which waited for a passphrase typed on the terminal
    assert code is not None and code != 0, out  # the start ends, failing
    assert f"{web_file}:3:13: tls_server_config.key_file: cannot load the certificate files: the key is encrypted" in out, out


def test_a_passphrase_protected_web_config_key_is_refused_at_load_naming_the_key_file(tmp_path: Path, encrypted_key: dict[str, Path],
                                                                                     capfd: pytest.CaptureFixture[str]) -> None:
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"tls_server_config:\n  cert_file: {encrypted_key['cert']}\n  key_file: {encrypted_key['key']}\n")
    with pytest.raises(SpecError) as caught:
        load_web_config(str(web_file))
    [problem] = [str(p) for p in caught.value.problems]
    assert problem.startswith(f"{web_file}:3:13: tls_server_config.key_file: cannot load the certificate files: the key is encrypted"), problem
    assert "pass phrase" not in capfd.readouterr().err.lower()


async def test_a_passphrase_protected_tls_config_key_fails_its_endpoint_at_once_saying_so(
        aiohttp_client: Any, encrypted_key: dict[str, Path], capfd: pytest.CaptureFixture[str]) -> None:
    client = await aiohttp_client(make_app(_spec(f"""
        modules:
          default:
            endpoints:
              e:
                url: 'https://127.0.0.1:1/api'
                http_client_config:
                  tls_config: {{cert_file: '{encrypted_key["cert"]}', key_file: '{encrypted_key["key"]}'}}
            metrics:
              - {{name: x, help: x, value: a}}
        """)))
    began = time.monotonic()
    response = await client.get("/probe", params={"debug": "true"})
    text = await response.text()
    assert "-> config_error" in text and "error: tls_config: cannot load certificates: the key is encrypted" in text, text
    assert time.monotonic() - began < 1.5, text  # not the 2 s of a file that never answers: OpenSSL asked, and nobody typed
    assert "pass phrase" not in capfd.readouterr().err.lower()


# -- an OAuth2 token answer is read whole, within its bound -----------------------------------------------------------


async def _oauth2_probe(aiohttp_client: Any, aiohttp_server: Any, token: Any) -> str:
    async def api(request: web.Request) -> web.Response:
        return web.json_response({"a": 1 if request.headers.get("Authorization") == "Bearer tok-ABCDEFGH" else 0})

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_get("/api", api)
    up = await aiohttp_server(app, host="127.0.0.1")
    client = await aiohttp_client(make_app(_spec(f"""
        modules:
          default:
            http_client_config:
              oauth2: {{client_id: id, client_secret: client-s3cret-XYZ, token_url: 'http://127.0.0.1:{up.port}/token'}}
            endpoints:
              e: {{url: 'http://127.0.0.1:{up.port}/api'}}
            metrics:
              - {{name: a, help: a, value: a}}
        """)))
    async with asyncio.timeout(BOUND):
        response = await client.get("/probe", params={"debug": "true"})
        return await response.text()


async def test_an_oauth2_token_answer_in_more_than_one_piece_is_read_whole(aiohttp_client: Any, aiohttp_server: Any) -> None:
    # about 600 KB, within MAX_TOKEN_BYTES (1 MiB): more than aiohttp buffers before the client reads (its stream's high-water mark),
    # so it always comes in pieces; one read of the stream gave its first one, and "the token endpoint's answer has no access_token"
    padding = "x" * 600_000
    assert len(padding) < MAX_TOKEN_BYTES

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "tok-ABCDEFGH", "token_type": "bearer", "expires_in": 3600, "padding": padding})

    text = await _oauth2_probe(aiohttp_client, aiohttp_server, token)
    assert "probe_success 1" in text and "\na 1" in text, text[:3000]


async def test_an_oauth2_token_answer_larger_than_its_bound_is_refused_saying_so(aiohttp_client: Any, aiohttp_server: Any) -> None:
    async def token(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})  # chunked: no Content-Length to refuse it by
        await response.prepare(request)
        await response.write(json.dumps({"access_token": "tok-ABCDEFGH", "expires_in": 3600, "padding": ""}).encode()[:-2])
        for _ in range(MAX_TOKEN_BYTES // 65536 + 1):
            await response.write(b"x" * 65536)
        await response.write(b'"}')
        await response.write_eof()
        return response

    text = await _oauth2_probe(aiohttp_client, aiohttp_server, token)
    assert f"oauth2: the token endpoint's answer is larger than {MAX_TOKEN_BYTES} bytes" in text, text[:3000]


# -- an inline CA that is not ASCII -------------------------------------------------------------------------------------


async def test_an_inline_ca_that_is_not_ascii_fails_its_endpoint_as_a_config_error_not_as_a_fault(aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_app(_spec("""
        modules:
          default:
            endpoints:
              e:
                url: 'https://127.0.0.1:1/api'
                http_client_config:
                  tls_config: {ca: "-----BEGIN CERTIFICATE-----\\nS\u00e9cretCAtext\\n-----END CERTIFICATE-----\\n"}
            metrics:
              - {name: x, help: x, value: a}
        """)))
    text = await (await client.get("/probe", params={"debug": "true"})).text()
    assert "-> config_error" in text and "error: tls_config: cannot load certificates:" in text, text
    assert "internal_error" not in text and "S\u00e9cretCAtext" not in text, text


# -- a background request's failure is logged cut, as a probe's is ------------------------------------------------------


async def test_a_background_request_failure_is_logged_cut_to_the_length_of_a_probe_failure(aiohttp_client: Any, aiohttp_server: Any) -> None:
    from jsonexporter import logs
    from jsonexporter.trace import MAX_MESSAGE

    reason = "R" * 8000  # a reason phrase of aiohttp's longest status line (8190 bytes)

    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=500, reason=reason)

    app = web.Application()
    app.router.add_get("/", failing)
    up = await aiohttp_server(app, host="127.0.0.1")
    logged: list[str] = []
    seen = asyncio.Event()

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("background request failed"):
                logged.append(logs.LogfmtFormatter().format(record))
                seen.set()

    handler = Catch()
    logging.getLogger("jsonexporter").addHandler(handler)
    try:
        await aiohttp_client(make_app(_spec(f"""
            modules:
              default:
                endpoints: {{main: {{url: 'http://127.0.0.1:{up.port}/', refresh_interval: 1h}}}}
                metrics: [{{name: x, help: x, value: v}}]
            """)))
        await asyncio.wait_for(seen.wait(), BOUND)  # the schedule's first request, made at start
    finally:
        logging.getLogger("jsonexporter").removeHandler(handler)
    [line] = logged[:1]
    err = line.partition(" err=")[2]
    assert "outcome=invalid_status" in line and err.startswith('"HTTP status 500 RRR'), line[:300]
    assert len(err) < MAX_MESSAGE + 100, len(err)  # as the "endpoint failed" line of a probe says it (server._record)
