"""Connections, as real `jsonexporter serve` processes on 127.0.0.1: to the exporter (the open-files
limit raised at start, idle clients bounded) and to upstreams (the per-host pool limit a flag, a
probe that waited for a pooled connection told from an upstream that did not answer)."""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from conftest import Held, UpstreamFactory, wait_for
from metrics_util import parse, value
from prometheus_util import free_port, jsonexporter, wait_healthy
from test_cli import SPEC  # the one-module spec of the single-process tests

BOUND = 20.0  # seconds any wait below gets before the test fails
Serve = Callable[..., tuple[subprocess.Popen[str], str]]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """`serve(*flags, nofile=(soft, hard))`: the exporter as a process, stopped at teardown."""
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


# -- to upstreams -----------------------------------------------------------------------------


async def test_a_probe_that_gets_no_pooled_connection_is_a_pool_timeout_not_an_upstream_timeout(upstream: UpstreamFactory, serve: Serve) -> None:
    held = Held({"queues": {"orders": {"waiting": 3}}}, count=2)
    up = await upstream({"/stats": held})
    proc, base = serve("--upstream.max-connections-per-host", "2")
    await wait_healthy(base, proc)
    async with aiohttp.ClientSession() as session:

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
