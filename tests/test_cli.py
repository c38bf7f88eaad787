"""The `serve` and `probe` commands as real processes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import aiohttp
import pytest
from aiohttp import web
from conftest import Held, UpstreamFactory, wait_for
from metrics_util import parse, value
from prometheus_util import REQUEST, SESSION, free_port, jsonexporter, listening, poll, wait_healthy

SPEC = """
modules:
  default:
    endpoints:
      stats: {url: '{target}/stats'}
    metrics:
      - {name: jobs_waiting, help: Jobs waiting, each: queues, value: waiting, labels: {queue: $key}}
"""


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yml"
    path.write_text(SPEC)
    return path


@pytest.fixture
def served(spec_file: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    proc = subprocess.Popen(
        jsonexporter("--config.file", str(spec_file), "--web.listen-address", f"127.0.0.1:{port}", "--log.format", "json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def test_serve_answers_probes_and_stops_cleanly_on_sigterm(upstream: UpstreamFactory, served: tuple[subprocess.Popen[str], str]) -> None:
    up = await upstream({"/stats": {"queues": {"orders": {"waiting": 12}}}})
    proc, base = served
    await wait_healthy(base, proc)
    async with aiohttp.ClientSession(timeout=SESSION) as session, session.get(f"{base}/probe", params={"target": up.url}) as response:
        assert response.status == 200
        s = parse(await response.text())
    assert value(s, "jobs_waiting", queue="orders") == 12
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    stderr = proc.stderr.read() if proc.stderr else ""
    assert '"msg": "starting jsonexporter"' in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("fifo", ["spec", "web_config"])
async def test_a_config_file_that_never_answers_fails_the_reload_and_never_holds_the_shutdown(
    upstream: UpstreamFactory, tmp_path: Path, fifo: str,
) -> None:
    up = await upstream({"/stats": {"queues": {"orders": {"waiting": 12}}}})
    spec, web = tmp_path / "spec.yml", tmp_path / "web.yml"
    spec.write_text(SPEC)
    web.write_text("")
    port = free_port()
    proc = subprocess.Popen(jsonexporter("--config.file", str(spec), "--web.config.file", str(web), "--web.listen-address", f"127.0.0.1:{port}"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_healthy(base, proc)
        path = spec if fifo == "spec" else web
        path.unlink()
        os.mkfifo(path)  # opened for reading, it waits for a writer that never comes
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            async with session.post(f"{base}/-/reload") as response:
                assert response.status == 500
                assert f"{path}: cannot read: no answer within 2s" in await response.text()
            async with session.get(f"{base}/probe", params={"target": up.url}) as response:  # the previous spec is still served
                assert response.status == 200 and value(parse(await response.text()), "jobs_waiting", queue="orders") == 12
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0  # the thread still waiting for the FIFO does not hold the process
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_serve_refuses_an_invalid_spec_with_located_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("modules:\n  default:\n    metrics:\n      - {name: x, value: 'a['}\n")
    result = subprocess.run(jsonexporter("serve", "--config.file", str(bad), "--web.listen-address", f"127.0.0.1:{free_port()}"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"{bad}:4:29: modules.default.metrics[0].value: invalid JMESPath" in result.stderr
    assert "Traceback" not in result.stderr


def test_probe_command_evaluates_a_saved_answer_offline(tmp_path: Path, spec_file: Path) -> None:
    answer = tmp_path / "stats.json"
    answer.write_text('{"queues": {"orders": {"waiting": 3}, "mail": {"waiting": "x"}}}')
    result = subprocess.run(jsonexporter("probe", "--config.file", str(spec_file), "--input", f"stats={answer}"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    s = parse(result.stdout)
    assert value(s, "jobs_waiting", queue="orders") == 3
    assert value(s, "probe_extraction_errors", metric="jobs_waiting") == 1
    assert "probe_duration_seconds" not in result.stdout  # nothing was timed offline


async def test_probe_command_fetches_the_target(upstream: UpstreamFactory, spec_file: Path) -> None:
    up = await upstream({"/stats": {"queues": {"orders": {"waiting": 5}}}})
    proc = await asyncio.create_subprocess_exec(*jsonexporter("probe", "--config.file", str(spec_file), "--target", up.url, "--debug"),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    assert "endpoint stats: GET" in stderr.decode()  # the trace
    assert value(parse(stdout.decode()), "jobs_waiting", queue="orders") == 5


def test_probe_debug_writes_the_trace_to_stderr_and_keeps_stdout_an_exposition(tmp_path: Path, spec_file: Path) -> None:
    answer = tmp_path / "stats.json"
    answer.write_text('{"queues": {"orders": {"waiting": 3}, "mail": {"waiting": "x"}}}')
    result = subprocess.run(jsonexporter("probe", "--config.file", str(spec_file), "--input", str(answer), "--debug"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "metric jobs_waiting (endpoint stats):" in result.stderr and "document: {" in result.stderr
    assert "error: metric jobs_waiting: " in result.stderr and "error:" not in result.stdout
    assert value(parse(result.stdout), "jobs_waiting", queue="orders") == 3  # prometheus_client's parser reads all of it
    promtool = shutil.which("promtool")
    if promtool is not None or os.environ.get("CI"):
        assert promtool is not None, "promtool is required in CI (.ci/run installs Debian's prometheus package)"
        checked = subprocess.run([promtool, "check", "metrics"], input=result.stdout, capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_probe_debug_of_an_answer_nested_too_deep_to_write_is_no_traceback(tmp_path: Path, spec_file: Path) -> None:
    answer = tmp_path / "stats.json"
    answer.write_text('{"queues": {}, "deep": ' + "[" * 990 + "]" * 990 + "}")
    result = subprocess.run(jsonexporter("probe", "--config.file", str(spec_file), "--input", str(answer), "--debug"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and '"deep": [[[' in result.stderr


def test_probe_command_rejects_unknown_module_and_bad_input(tmp_path: Path, spec_file: Path) -> None:
    result = subprocess.run(jsonexporter("probe", "--config.file", str(spec_file), "--module", "nope", "--input", "x.json"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown module 'nope'" in result.stderr
    garbage = tmp_path / "g.json"
    garbage.write_bytes(b"\xff\xfe{not json")
    result = subprocess.run(jsonexporter("probe", "--config.file", str(spec_file), "--input", str(garbage)), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and str(garbage) in result.stderr and "Traceback" not in result.stderr


def test_schema_command_prints_the_schema() -> None:
    result = subprocess.run(jsonexporter("schema"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    root = Path(__file__).resolve().parent.parent
    assert result.stdout == (root / "schemas" / "jsonexporter.schema.json").read_text()


def test_version_flag() -> None:
    result = subprocess.run(jsonexporter("--version"), capture_output=True, text=True, timeout=60, env={**os.environ})
    assert result.returncode == 0 and result.stdout.startswith("jsonexporter ")


def test_top_level_help_shows_the_serve_flags_that_work_without_the_command() -> None:
    flag = re.compile(r"(?<![\w-])--[a-z][\w.-]*")
    top = subprocess.run(jsonexporter("--help"), capture_output=True, text=True, timeout=60)
    serve = subprocess.run(jsonexporter("serve", "--help"), capture_output=True, text=True, timeout=60)
    assert top.returncode == 0 and serve.returncode == 0
    serve_flags = set(flag.findall(serve.stdout)) - {"--help"}
    assert {"--config.file", "--web.listen-address", "--web.workers"} <= serve_flags
    assert serve_flags <= set(flag.findall(top.stdout)), top.stdout


async def test_sighup_reloads_the_spec_of_a_running_server(upstream: UpstreamFactory, served: tuple[subprocess.Popen[str], str], spec_file: Path) -> None:
    up = await upstream({"/stats": {"queues": {"orders": {"waiting": 1}}}, "/other": {"n": 9}})
    proc, base = served
    await wait_healthy(base, proc)
    spec_file.write_text(SPEC + "  other:\n    metrics:\n      - {name: other_n, help: n, value: n}\n")
    proc.send_signal(signal.SIGHUP)

    async def reloaded() -> bool:
        async with aiohttp.ClientSession(timeout=REQUEST) as session, \
                session.get(f"{base}/probe", params={"module": "other", "target": f"{up.url}/other"}) as response:
            if response.status != 200:
                return False
            assert value(parse(await response.text()), "other_n") == 9
            return True

    await poll("SIGHUP reloaded the spec", reloaded)


async def test_sigterm_lets_in_flight_probes_finish(upstream: UpstreamFactory, served: tuple[subprocess.Popen[str], str]) -> None:
    held = Held({"queues": {"orders": {"waiting": 4}}})
    up = await upstream({"/stats": held})
    proc, base = served
    await wait_healthy(base, proc)
    async with aiohttp.ClientSession(timeout=SESSION) as session:
        probe = asyncio.create_task(session.get(f"{base}/probe", params={"target": up.url}))
        await wait_for(held.arrived)
        proc.send_signal(signal.SIGTERM)
        port = int(base.rsplit(":", 1)[1])
        await poll("the server stopped listening after SIGTERM", lambda: not listening({proc.pid}, port))  # the first step of a stop
        assert not probe.done()  # the in-flight probe is still waiting for its upstream
        held.release.set()
        response = await asyncio.wait_for(probe, 20)
        assert response.status == 200
        assert value(parse(await response.text()), "jobs_waiting", queue="orders") == 4
    assert await asyncio.to_thread(proc.wait, 20) == 0


def lines_until(stream: IO[str], text: str) -> list[str]:
    """The lines read up to the first that contains `text` (all of them at the end of the stream)."""
    lines = []
    for line in stream:
        lines.append(line)
        if text in line:
            break
    return lines


async def test_shutdown_is_logged_once_with_its_reason_and_a_second_signal_waits_for_the_probes(
    upstream: UpstreamFactory, served: tuple[subprocess.Popen[str], str]
) -> None:
    held = Held({"queues": {"orders": {"waiting": 4}}})
    up = await upstream({"/stats": held})
    proc, base = served
    assert proc.stderr is not None
    await wait_healthy(base, proc)
    async with aiohttp.ClientSession(timeout=SESSION) as session:
        probe = asyncio.create_task(session.get(f"{base}/probe", params={"target": up.url}))
        await wait_for(held.arrived)
        proc.send_signal(signal.SIGTERM)
        before = await asyncio.wait_for(asyncio.to_thread(lines_until, proc.stderr, '"shutting down"'), 20)
        proc.send_signal(signal.SIGINT)  # Ctrl-C while stopping
        during = await asyncio.wait_for(asyncio.to_thread(lines_until, proc.stderr, '"already stopping"'), 20)
        assert not probe.done()
        held.release.set()
        response = await asyncio.wait_for(probe, 20)
        assert response.status == 200 and value(parse(await response.text()), "jobs_waiting", queue="orders") == 4
    assert await asyncio.to_thread(proc.wait, 20) == 0
    logged = [json.loads(line) for line in before + during + proc.stderr.readlines()]
    stops = [(e["reason"], e["in_flight"], e["timeout"]) for e in logged if e["msg"] == "shutting down"]
    assert stops == [("SIGTERM", 1, 15.0)]
    assert [e["signal"] for e in logged if e["msg"] == "already stopping"] == ["SIGINT"]


async def test_probe_command_hides_the_targets_credentials_as_a_live_probe_does(upstream: UpstreamFactory, spec_file: Path) -> None:
    async def echo(request: web.Request) -> web.Response:  # an upstream quoting the credentials back, where no pattern rule sees them
        return web.Response(text=f"denied {request.headers.get('Authorization')} for TargetPw-4321 not json")

    up = await upstream({"/stats": echo})
    target = up.url.replace("http://", "http://bob:TargetPw-4321@")
    proc = await asyncio.create_subprocess_exec(*jsonexporter("probe", "--config.file", str(spec_file), "--target", target, "--debug"),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    basic = base64.b64encode(b"bob:TargetPw-4321").decode()
    assert proc.returncode == 1 and "invalid_json" in stderr.decode() and "body starts with" in stderr.decode()
    assert "TargetPw" not in stderr.decode() + stdout.decode() and basic[:8] not in stderr.decode(), stderr.decode()
