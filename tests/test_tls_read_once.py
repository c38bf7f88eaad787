"""TLS files are read once, within their bounds, and OpenSSL is given the bytes read: never the path
again, where another file (larger, or one that never answers) could be by then. A FIFO that gives its
content once (a secret injector's, a process substitution) tells: a second read of its path would wait
for a writer that never comes."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
import trustme
from metrics_util import parse, value
from test_clients import _tls_upstream, exporter_for, probe

from jsonexporter.webconfig import load_web_config


def _fed_once(path: Path, content: bytes) -> threading.Thread:
    """A FIFO at `path` whose one writer gives `content` to the first reader, then leaves."""
    os.mkfifo(path)

    def write() -> None:
        with open(path, "wb") as fh:  # waits for the reader
            fh.write(content)

    thread = threading.Thread(target=write, name=f"fifo {path.name}", daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("with_certificate", [False, True], ids=["ca_alone", "ca_and_client_certificate"])
async def test_an_upstreams_tls_files_are_given_to_openssl_as_read(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
                                                                   with_certificate: bool) -> None:
    ca = trustme.CA()
    server = await _tls_upstream(aiohttp_server, ca)
    files = {"ca_file": ca.cert_pem.bytes()}
    if with_certificate:  # the context without it (for other origins) is made of the same bytes: the CA read once
        cert = ca.issue_cert("monitor@example.com")
        files |= {"cert_file": cert.cert_chain_pems[0].bytes(), "key_file": cert.private_key_pem.bytes()}
    writers = [_fed_once(tmp_path / key, content) for key, content in files.items()]
    tls = ", ".join(f"{key}: {tmp_path / key}" for key in files)
    client = await exporter_for(aiohttp_client, tls=f"http_client_config: {{tls_config: {{{tls}}}}}")
    status, text = await probe(client, f"https://127.0.0.1:{server.port}", module="tls")
    assert status == 200 and value(parse(text), "v") == 1, text
    assert not any(w.is_alive() for w in writers)


def test_the_web_configs_tls_files_are_given_to_openssl_as_read(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    files = {"cert_file": cert.cert_chain_pems[0].bytes(), "key_file": cert.private_key_pem.bytes(), "client_ca_file": ca.cert_pem.bytes()}
    writers = [_fed_once(tmp_path / key, content) for key, content in files.items()]
    web_file = tmp_path / "web.yml"
    web_file.write_text("tls_server_config:\n" + "".join(f"  {key}: {tmp_path / key}\n" for key in files)
                        + "  client_auth_type: VerifyClientCertIfGiven\n")
    loaded: list[Any] = []
    # in a thread of its own: without the bytes, OpenSSL's second open of a FIFO would wait for ever
    loader = threading.Thread(target=lambda: loaded.append(load_web_config(str(web_file))), daemon=True)
    loader.start()
    loader.join(60)
    assert loaded and loaded[0].tls is not None
    assert not any(w.is_alive() for w in writers)
