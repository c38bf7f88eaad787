"""README's quick start, walked through as a new user would: the files of a fresh clone, command 1
as README writes it (install, the sample API, the exporter), then README's curl, whose answer must be
what README says it prints. Commands and output are read from README, so the two cannot drift."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web
from conftest import UpstreamFactory
from metrics_util import parse, value
from prometheus_util import ROOT, free_port

from jsonexporter.server import make_app
from jsonexporter.spec import load_spec

slow = pytest.mark.skipif(
    not (os.environ.get("CI") or os.environ.get("JSONEXPORTER_SLOW_TESTS") == "1"),
    reason="installs the project into a new venv from PyPI (~20 s): runs in CI (CI set) or with JSONEXPORTER_SLOW_TESTS=1",
)
PORTS = ("7979", "8080")  # the exporter's and the sample API's in README; a free port each here
INSTALL_SECONDS = 600  # pip install into the new venv, from the package index, on a busy machine
_DURATION = re.compile(r"^(probe_(?:endpoint_)?duration_seconds(?:\{[^}]*\})?) \S+$", re.M)


def section(readme: str, title: str) -> str:
    return readme.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def commands(block: str) -> list[str]:
    """The commands of a shell block: its lines without comments, continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def quick_start() -> tuple[list[str], str, str]:
    """README's two commands, its curl and what README says the curl prints."""
    text = section((ROOT / "README.md").read_text(encoding="utf-8"), "Quick start")
    first, probe, *_ = blocks(text, "sh")
    (printed,) = blocks(text, "text")
    (curl,) = commands(probe)
    return commands(first), curl, printed


def without_durations(exposition: str) -> str:
    return _DURATION.sub(r"\1 <duration>", exposition)


def fresh_clone(destination: Path) -> None:
    """The files a clone has (those git tracks, symbolic links as links), as they are in this tree."""
    if shutil.which("git") is None:
        pytest.skip("needs git to know the files of a clone")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.decode(errors='replace').strip()}")
    for name in listed.stdout.decode().split("\0"):
        source = ROOT / name
        if name and (source.exists() or source.is_symlink()):
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name, follow_symlinks=False)


def http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read().decode()


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll until the exporter answers: bounded by the install time, stops early if command 1 ended."""
    deadline = time.monotonic() + INSTALL_SECONDS
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"command 1 ended with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}"
        try:
            if http_get(url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)  # polling interval of a bounded readiness loop, not a synchronisation
    raise AssertionError(f"the exporter did not answer within {INSTALL_SECONDS} s:\n{log.read_text(errors='replace')[-4000:]}")


@pytest.fixture
def session_of(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started in a session of their own; at the end their whole group is stopped."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)  # the exporter and the sample API in the background
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue


def test_quick_start_has_two_commands_and_a_curl_with_its_answer() -> None:
    (first, second), curl, printed = quick_start()
    assert "http.server" in first and "jsonexporter --config.file examples/queue-stats.yml" in first
    assert second == "bash .ci/run"
    assert curl.startswith("curl ") and "/probe?" in curl
    assert value(parse(printed), "probe_success") == 1


async def test_readme_shows_the_answer_the_sample_api_gives(upstream: UpstreamFactory, aiohttp_client: Any) -> None:
    """The quick start's answer without the install: the sample API's files served as they are, the
    example spec, the probe README's curl sends. It fails as soon as README's copy is out of date."""
    _, curl, printed = quick_start()
    sample = ROOT / "examples" / "sample-api"

    async def serve_file(request: web.Request) -> web.Response:
        return web.Response(body=(sample / request.match_info["path"]).read_bytes())

    up = await upstream({"/{path:.+}": serve_file})
    client = await aiohttp_client(make_app(load_spec(str(ROOT / "examples" / "queue-stats.yml"))))
    query = parse_qs(urlsplit(shlex.split(curl)[-1]).query)
    response = await client.get("/probe", params={"module": query["module"][0], "target": up.url})
    answer = await response.text()
    assert response.status == 200 and value(parse(answer), "probe_success") == 1
    assert without_durations(answer) == without_durations(printed), "README's quick start shows another answer than the one a user gets"


@slow
def test_readme_quick_start_from_a_fresh_clone_gives_the_answer_readme_shows(tmp_path: Path, session_of: list[subprocess.Popen[bytes]]) -> None:
    (first, _), curl, printed = quick_start()
    ports = {port: str(free_port()) for port in PORTS}  # README's ports may be taken on this machine

    def here(command: str) -> str:
        return re.sub(r"\b(" + "|".join(PORTS) + r")\b", lambda m: ports[m.group(1)], command)

    clone = tmp_path / "clone"
    fresh_clone(clone)
    log = tmp_path / "command-1.log"
    with log.open("wb") as out:
        session_of.append(subprocess.Popen(["bash", "-c", here(first)], cwd=clone, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True))
    wait_healthy(f"http://127.0.0.1:{ports['7979']}/-/healthy", session_of[0], log)

    argv = shlex.split(here(curl))
    if shutil.which("curl") is not None:
        fetched = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert fetched.returncode == 0, fetched.stderr
        answer = fetched.stdout
    else:  # the same GET without curl
        status, answer = http_get(argv[-1])
        assert status == 200
    s = parse(answer)  # prometheus_client's parser reads the whole answer
    assert value(s, "probe_success") == 1 and value(s, "queue_depth", queue_name="orders") == 42
    assert without_durations(answer) == without_durations(printed), "README's quick start shows another answer than the one a user gets"
