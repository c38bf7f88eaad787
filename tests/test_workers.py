"""`serve --web.workers 2` as a real process tree: the port shared, /metrics the same totals
whichever worker answers, reloads reaching every worker, a killed worker replaced, a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from conftest import Held, UpstreamFactory, wait_for
from metrics_util import Series, parse, value
from prometheus_util import free_port, jsonexporter, listening, poll, socket_inodes, tcp_sockets, wait_healthy
from test_cli import SPEC  # the one-module spec of the single-process tests
from test_promtool import needs_promtool, promtool_check

OTHER = SPEC + "  other:\n    metrics:\n      - {name: other_n, help: n, value: n}\n"
DEADLINE = 20.0  # seconds for any condition polled below
Served = tuple[subprocess.Popen[str], str]


def _start(spec_file: Path, *flags: str) -> subprocess.Popen[str]:
    # a session of its own: teardown kills the whole tree, workers too, whatever the test left; the
    # metrics directory in the test's own temporary directory, where a killed supervisor leaves it
    return subprocess.Popen(jsonexporter("--config.file", str(spec_file), "--log.format", "json", *flags),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "TMPDIR": str(spec_file.parent)})


@contextlib.contextmanager
def _serving(tmp_path: Path, spec: str, *flags: str) -> Iterator[Served]:
    spec_file = tmp_path / "spec.yml"
    spec_file.write_text(spec)
    port = free_port()
    proc = _start(spec_file, "--web.listen-address", f"127.0.0.1:{port}", "--web.workers", "2", *flags)
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):  # the whole group, also workers whose supervisor is gone
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with _serving(tmp_path, SPEC) as served:
        yield served


# Probes held through a whole stop sequence, each of whose steps is bounded by DEADLINE: their deadline
# (the module's timeout, 10 s by default), the workers' --web.shutdown-timeout (15 s) and the upstream's
# hold outlast the steps together, so that on a loaded machine none expires before the test releases them.
PATIENT = 8 * DEADLINE


@pytest.fixture
def served_patiently(tmp_path: Path) -> Iterator[Served]:
    spec = SPEC.replace("  default:\n", f"  default:\n    timeout: {PATIENT:.0f}s\n")
    with _serving(tmp_path, spec, "--web.shutdown-timeout", f"{PATIENT:.0f}") as served:
        yield served


async def _fresh(base: str, path: str, params: dict[str, str] | None = None, method: str = "GET", seconds: float = DEADLINE) -> tuple[int, str]:
    """One request on a new connection, which the kernel gives to either worker; bounded to `seconds`."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), timeout=aiohttp.ClientTimeout(total=seconds)) as session, \
            session.request(method, f"{base}{path}", params=params) as response:
        return response.status, await response.text()


async def _metrics(base: str) -> Series:
    status, text = await _fresh(base, "/metrics")
    assert status == 200
    return parse(text)


def _workers(proc: subprocess.Popen[str]) -> set[int]:
    with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
        return {int(pid) for pid in f.read().split()}


async def _poll(condition: str, check: Callable[[], object]) -> None:
    await poll(condition, check, DEADLINE)


def _spec_hashes(pages: dict[int, str]) -> set[str]:
    return {match.group(1) for page in pages.values() for match in re.finditer(r"sha256 ([0-9a-f]{12})", page)}


async def _pages_of_both_workers(base: str) -> dict[int, str]:
    """The landing page of each worker, asked on fresh connections until both answered (bounded in
    time, not in attempts: until a worker that is starting listens, every connection goes to the other)."""
    pages: dict[int, str] = {}
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        status, text = await _fresh(base, "/")
        match = re.search(r"Worker (\d) of 2", text)
        assert status == 200 and match, text[:300]
        pages[int(match.group(1))] = text
        if len(pages) == 2:
            return pages
    raise AssertionError(f"one worker never answered on fresh connections within {DEADLINE:.0f} s")


async def test_workers_share_the_port_and_metrics_count_every_probe_whichever_worker_answers(upstream: UpstreamFactory, served: Served) -> None:
    up = await upstream({"/stats": {"queues": {"orders": {"waiting": 12}}}})
    proc, base = served
    await wait_healthy(base, proc)
    await _pages_of_both_workers(base)  # both listening before the probes
    for _ in range(30):
        status, text = await _fresh(base, "/probe", {"target": up.url})
        assert status == 200 and value(parse(text), "jobs_waiting", queue="orders") == 12
    pages = await _pages_of_both_workers(base)
    answered = {worker: page.count(">details</a>") for worker, page in pages.items()}
    assert sum(answered.values()) == 30 and min(answered.values()) > 0, answered  # each keeps its own recent probes
    for _ in range(4):  # each /metrics from either worker: the totals of both
        s = await _metrics(base)
        assert value(s, "jsonexporter_probes_total", module="default", result="success") == 30
        assert value(s, "jsonexporter_probe_duration_seconds_count", module="default") == 30
        assert value(s, "jsonexporter_upstream_requests_total", module="default", endpoint="stats", outcome="success") == 30
        assert value(s, "jsonexporter_workers") == 2
        assert value(s, "jsonexporter_probes_in_flight") == 0
        assert value(s, "jsonexporter_config_last_reload_successful") == 1
        assert value(s, "process_resident_memory_bytes") > 0 and value(s, "process_open_fds") > 0


@needs_promtool
async def test_workers_metrics_pass_promtool(upstream: UpstreamFactory, served: Served) -> None:
    up = await upstream({"/stats": {"queues": {"orders": {"waiting": 1}}}})
    proc, base = served
    await wait_healthy(base, proc)
    assert (await _fresh(base, "/probe", {"target": up.url}))[0] == 200
    status, text = await _fresh(base, "/metrics")
    result = promtool_check(text)
    assert status == 200 and result.returncode == 0, result.stdout + result.stderr


async def test_a_reload_reaches_every_worker_and_a_killed_worker_is_replaced_keeping_the_counts(
    upstream: UpstreamFactory, served: Served, tmp_path: Path
) -> None:
    up = await upstream({"/other": {"n": 9}})
    proc, base = served
    await wait_healthy(base, proc)
    started = _spec_hashes(await _pages_of_both_workers(base))
    (tmp_path / "spec.yml").write_text(OTHER)
    before = time.time()
    status, text = await _fresh(base, "/-/reload", method="POST")
    assert status == 200, text

    async def every_worker_reloaded() -> bool:  # the oldest load time of the live workers
        return value(await _metrics(base), "jsonexporter_config_last_reload_success_timestamp_seconds") >= before

    await _poll("the other worker reloaded", every_worker_reloaded)
    for _ in range(20):
        status, text = await _fresh(base, "/probe", {"module": "other", "target": f"{up.url}/other"})
        assert status == 200 and value(parse(text), "other_n") == 9

    killed = next(iter(_workers(proc)))
    os.kill(killed, signal.SIGKILL)
    await _poll("the killed worker replaced", lambda: killed not in _workers(proc) and len(_workers(proc)) == 2)

    async def supervisor_counts_two() -> bool:  # its pids file, written after the fork that /proc shows at once
        return value(await _metrics(base), "jsonexporter_workers") == 2

    await _poll("the replacement recorded", supervisor_counts_two)
    s = await _metrics(base)
    assert value(s, "jsonexporter_probes_total", module="other", result="success") == 20  # the dead worker's share too
    assert value(s, "jsonexporter_workers") == 2
    reloaded = _spec_hashes(await _pages_of_both_workers(base))
    assert len(reloaded) == 1 and reloaded != started  # the replaced worker serves the reloaded spec too

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == 0
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in stderr
    assert re.search(rf'"msg": "worker exited", "worker": \d, "pid": {killed}, "code": -9', stderr), stderr
    directory = re.search(r'"metrics_directory": "([^"]+)"', stderr)
    assert directory and not os.path.exists(directory.group(1))


def _holding(workers: set[int], port: int) -> set[int]:
    """The workers with a connection open to `port` (the held upstream's): a probe in flight there."""
    to_port = {inode for _, remote, _, inode in tcp_sockets() if remote == port}
    return {pid for pid in workers if socket_inodes(pid) & to_port}


async def _log_until(proc: subprocess.Popen[str], wanted: set[str]) -> str:
    """stderr read as it comes until each of `wanted` is in a line (bounded); what was read."""
    assert proc.stderr
    stderr, read = proc.stderr, []

    def until() -> None:
        missing = set(wanted)
        while missing:
            line = stderr.readline()
            assert line, f"exited without logging {missing}: {''.join(read)}"
            read.append(line)
            missing = {text for text in missing if text not in line}

    await asyncio.wait_for(asyncio.to_thread(until), DEADLINE)
    return "".join(read)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stop_signal_to_the_whole_group_lets_in_flight_probes_finish(upstream: UpstreamFactory, served_patiently: Served,
                                                                            stop: signal.Signals) -> None:
    """systemd signals every process of the unit, a terminal's Ctrl-C the whole group: each worker
    gets the signal, then the supervisor's SIGTERM, and must still finish its probes. The workers are
    signalled first and the supervisor once they are stopping: a SIGTERM that comes while another is
    still pending is merged into it by the kernel, so a group SIGTERM at once may reach a busy worker
    once only, and nothing would show that a second one leaves its probes alone."""
    held = Held({"queues": {"orders": {"waiting": 4}}}, count=4, hold=PATIENT)
    up = await upstream({"/stats": held})
    proc, base = served_patiently
    await wait_healthy(base, proc)
    await _pages_of_both_workers(base)
    workers = _workers(proc)
    probes = [asyncio.create_task(_fresh(base, "/probe", {"target": up.url}, seconds=PATIENT)) for _ in range(4)]
    await wait_for(held.arrived, DEADLINE)
    for _ in range(60):  # each worker with a probe in flight: 2**-63 that all 64 go to one
        if _holding(workers, up.server.port) == workers:
            break
        probes.append(asyncio.create_task(_fresh(base, "/probe", {"target": up.url}, seconds=PATIENT)))
        await _poll("the probe held", lambda: held.held == len(probes))
    assert _holding(workers, up.server.port) == workers, f"{len(probes)} probes, all at one worker"
    for pid in workers:
        os.kill(pid, stop)
    port = int(base.rsplit(":", 1)[1])
    await _poll("both workers stopped listening: they are stopping", lambda: not listening(workers, port))
    proc.send_signal(stop)  # passed on as SIGTERM to workers that have taken their first signal
    stderr = await _log_until(proc, {f'"msg": "already stopping", "worker": {n}, "signal": "SIGTERM"' for n in (1, 2)})
    assert not any(probe.done() for probe in probes)
    held.release.set()
    for status, text in await asyncio.gather(*probes):
        assert status == 200 and value(parse(text), "jobs_waiting", queue="orders") == 4
    assert await asyncio.to_thread(proc.wait, 30) == 0
    stderr += proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in stderr and "worker failed" not in stderr, stderr


def test_workers_need_a_fixed_port(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yml"
    spec_file.write_text(SPEC)
    for flags in (["--web.listen-address", "127.0.0.1:0", "--web.workers", "2"], ["--web.listen-address", f"127.0.0.1:{free_port()}", "--web.workers", "0"]):
        result = subprocess.run(jsonexporter("--config.file", str(spec_file), *flags), capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "--web.workers must be 1 or more" in result.stderr, result.stderr


def test_workers_that_cannot_listen_stop_the_supervisor(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yml"
    spec_file.write_text(SPEC)
    with socket.socket() as taken:  # listening without SO_REUSEPORT: the workers cannot join it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _start(spec_file, "--web.listen-address", f"127.0.0.1:{port}", "--web.workers", "2")
        try:
            code = proc.wait(30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert code == 1, f"exit code {code}:\n{stderr}"  # the whole log: a rare failure under load says what happened
    assert '"msg": "cannot listen"' in stderr and '"reason": "a worker cannot start"' in stderr and "Traceback" not in stderr, stderr


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


async def test_no_worker_outlives_a_killed_supervisor(served: Served) -> None:
    proc, base = served
    await wait_healthy(base, proc)
    workers = _workers(proc)
    assert len(workers) == 2
    proc.kill()  # SIGKILL: the supervisor cannot pass anything on
    await _poll("the workers ended", lambda: not any(_alive(pid) for pid in workers))
