"""A bounded fuzz of the /probe query surface against a running exporter process: whatever the
query, the server answers with a deliberate status, never a traceback, and keeps serving."""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_util import free_port

# every target outside 127.0.0.1 is refused before any request: the fuzz never leaves this machine
SPEC = r"""
modules:
  default:
    timeout: 2s
    targets: {allow: ['http://127\.0\.0\.1:\d+(/.*)?']}
    parameters: {region: {default: eu, pattern: '[a-z]{2}'}}
    endpoints:
      main: {url: '{target}', params: {region: '{region}'}}
    metrics:
      - {name: x, help: x, each: items, value: v, labels: {id: id, region: $params.region, extra: $params.extra}}
  other:
    metrics:
      - {name: y, help: y, value: v}
"""


@pytest.fixture(scope="module")
def exporter_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    spec = Path(tmp_path_factory.mktemp("fuzz")) / "spec.yml"
    spec.write_text(SPEC)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "jsonexporter", "--config.file", str(spec), "--web.listen-address", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:  # bounded wait for the listening socket
            try:
                if _get(port, "/-/healthy")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "exporter did not start"
            time.sleep(0.05)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=20)
        assert "Traceback" not in stderr


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


texts = st.text(max_size=40) | st.sampled_from(["", "default", "other", "true", "%", "%zz", "\x00", "é", "a" * 5000])
targets = texts | st.sampled_from([
    "http://127.0.0.1:1/", "http://127.0.0.1:1", "file:///etc/passwd", "gopher://127.0.0.1:70/", "http://[::1", "http://127.0.0.1:99999/",
    "http://127.0.0.1:1/../../x", "http://user:pw@127.0.0.1:1/", "HTTP://127.0.0.1:1/", "http://127.0.0.1:1\\@evil.test/", "//127.0.0.1:1/",
])
pairs = st.lists(st.tuples(st.sampled_from(["module", "target", "debug", "region", "extra", "", "x"]) | st.text(max_size=8), texts), max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pairs=pairs, target=st.none() | targets, raw_suffix=st.sampled_from(["", "&", "&&", "=", "&%", "&a=%zz", "&target", "&target=&target="]))
def test_probe_query_surface_never_breaks_the_server(exporter_url: tuple[str, int], pairs: list[tuple[str, str]], target: str | None, raw_suffix: str) -> None:
    _, port = exporter_url
    query = [(k, v) for k, v in pairs] + ([("target", target)] if target is not None else [])
    path = "/probe?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query) + raw_suffix
    status, body = _get(port, path)
    assert status in (200, 400, 403), (path, status, body[:200])
    assert "Traceback" not in body
    if status != 200:
        assert body.count("\n") <= 2, body[:300]  # a one-line reason


def test_server_still_healthy_after_the_fuzz(exporter_url: tuple[str, int]) -> None:
    assert _get(exporter_url[1], "/-/healthy")[0] == 200
