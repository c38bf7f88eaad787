"""Real processes for end-to-end tests: Prometheus servers and `jsonexporter serve`, on free loopback
ports, their output in files, every one stopped at teardown; bounded polling (of Prometheus's API, of
any condition), and the kernel's view of who listens on a port."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import aiohttp
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 60.0  # seconds any end-to-end condition gets before the test fails
REQUEST = aiohttp.ClientTimeout(total=30)  # any one request of a poll: one that hangs fails as it, not after aiohttp's 5 minutes
# a test's own session: each request ends within this, however long the test holds it (a probe left in flight
# through a poll of DEADLINE, then a stop): one that hangs fails the test in 2 minutes, not aiohttp's 5
SESSION = aiohttp.ClientTimeout(total=2 * DEADLINE)
T = TypeVar("T")
TCP_LISTEN = 0x0A  # the state column of /proc/net/tcp


def free_port() -> int:
    """A loopback port that nothing listens on and that the kernel hands to no one else for a minute:
    left in TIME_WAIT by a connection whose side on that port closed first, it is skipped when another
    process binds port 0 or connects (source ports come from the same range), while a server binds it
    at once with SO_REUSEADDR (asyncio's and Go's default). A port only bound and closed was free for
    anyone at once: on a busy machine another process's connection took it before the exporter bound it
    ("address already in use")."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port: int = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            accepted, _ = listener.accept()
            accepted.close()  # first: the TIME_WAIT is on this side, the port's
        return port


async def poll(condition: str, check: Callable[[], object], seconds: float = DEADLINE) -> None:
    """Call `check` (awaiting what it returns when that is awaitable) until it holds, `seconds` in all: a
    check that hangs is cut at the deadline too, not only one that answers false."""
    bound = asyncio.timeout(seconds)
    try:
        async with bound:
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.05)  # polling interval of a bounded loop, not a synchronisation
    except TimeoutError:
        if bound.expired():
            raise AssertionError(f"{condition}: not within {seconds:.0f} s") from None
        raise


def tcp_sockets() -> list[tuple[int, int, int, str]]:
    """The network namespace's TCP sockets, IPv4 and IPv6: local port, remote port, state, inode."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for fields in (line.split() for line in list(f)[1:]):
                rows.append((int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16), int(fields[3], 16), fields[9]))
    return rows


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets the process has open (none once it has ended)."""
    inodes = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    return inodes


def listening(pids: set[int], port: int) -> set[int]:
    """Those of `pids` with a socket listening on `port`: the kernel's answer, where a connection made
    to find out may be queued at a socket that is closing, or refused by one and taken by another."""
    listeners = {inode for local, _, state, inode in tcp_sockets() if local == port and state == TCP_LISTEN}
    return {pid for pid in pids if socket_inodes(pid) & listeners}


def jsonexporter(*args: str) -> list[str]:
    return [sys.executable, "-m", "jsonexporter", *args]


async def wait_healthy(base: str, proc: subprocess.Popen[str]) -> None:
    """Poll /-/healthy until the process answers (bounded: DEADLINE in all, each request too); stops
    early if it died."""

    async def healthy() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "exited"
        try:
            async with aiohttp.ClientSession(timeout=REQUEST) as session, session.get(f"{base}/-/healthy") as response:
                return response.status == 200
        except (aiohttp.ClientConnectionError, TimeoutError):
            return False

    await poll("the exporter healthy", healthy)


def prometheus_binary() -> str:
    """The `prometheus` server; skipped where it is not installed, but a failure in CI (env CI set)."""
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("the prometheus binary is missing; .ci/run installs Debian's prometheus package")
        pytest.skip("needs the prometheus binary (apt-get install prometheus); in CI this fails instead")
    return path


def readme_prometheus_config() -> str:
    """The README's Prometheus configuration (under '## Prometheus configuration'), as written."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Prometheus configuration", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None, "README: no yaml block under '## Prometheus configuration'"
    return block.group(1)


def readme_relabel_configs() -> list[dict[str, Any]]:
    """The relabeling of the first job of the README's Prometheus configuration: the tests run the
    documented config, not a copy of it."""
    configs: list[dict[str, Any]] = yaml.safe_load(readme_prometheus_config())["scrape_configs"][0]["relabel_configs"]
    return configs


def with_exporter_address(relabel_configs: list[dict[str, Any]], address: str) -> list[dict[str, Any]]:
    """The same relabeling with the rule that sets `__address__` pointing at `address`."""
    rules = [dict(rule) for rule in relabel_configs]
    setters = [rule for rule in rules if rule.get("target_label") == "__address__"]
    assert len(setters) == 1, f"expected one rule setting __address__ in {relabel_configs}"
    setters[0]["replacement"] = address
    return rules


def hashmod(value: str, modulus: int) -> int:
    """Prometheus's `hashmod` relabel action: the last 8 bytes of the MD5 of the value, big-endian, mod modulus."""
    return int.from_bytes(hashlib.md5(value.encode()).digest()[8:], "big") % modulus


class Processes:
    """Processes started by one test. Each writes to `<name>.log` in the directory; `stop_all` ends them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.directory / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop_all)
        self._logs.append(log)
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.running[name] = proc
        return proc

    def exporter(self, name: str, spec: Path) -> str:
        """`jsonexporter serve` on a free port; returns its host:port."""
        address = f"127.0.0.1:{free_port()}"
        self.start(name, [sys.executable, "-m", "jsonexporter", "serve", "--config.file", str(spec), "--web.listen-address", address])
        return address

    def prometheus(self, name: str, config: dict[str, Any], port: int | None = None) -> str:
        """A Prometheus server with this configuration and its own storage, on `port` or a free one;
        returns its base URL."""
        directory = self.directory / name
        directory.mkdir()
        config_file = directory / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        port = port or free_port()
        self.start(name, [
            prometheus_binary(), f"--config.file={config_file}", f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=info",
        ])
        return f"http://127.0.0.1:{port}"

    def assert_running(self) -> None:
        for name, proc in self.running.items():
            assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{self.log(name)}"

    def log(self, name: str, tail: int = 4000) -> str:
        text = (self.directory / f"{name}.log").read_text(errors="replace")
        return text[-tail:]

    def logs(self) -> str:
        return "\n".join(f"--- {name}.log (end)\n{self.log(name, 1500)}" for name in self.running)

    def stop_all(self) -> None:
        for proc in self.running.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.running.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(15)
        for log in self._logs:
            log.close()


class PrometheusAPI:
    """The HTTP API of one Prometheus server."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def get(self, path: str, **params: str) -> Any:
        async with self.session.get(f"{self.base}{path}", params=params, timeout=aiohttp.ClientTimeout(total=10)) as response:
            body = await response.json()
            assert body["status"] == "success", body
            return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; each result as {"metric": labels, "value": float}."""
        data = await self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return [{"metric": r["metric"], "value": float(r["value"][1])} for r in data["result"]]

    async def active_targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = (await self.get("/api/v1/targets", state="active"))["activeTargets"]
        return targets


async def eventually(observe: Callable[[], Awaitable[T]], holds: Callable[[T], bool], what: str, processes: Processes) -> T:
    """Observe until `holds` is true of the observation, for at most DEADLINE seconds; then fail with the
    last observation and the processes' logs. Stops early when a process died."""
    deadline = time.monotonic() + DEADLINE
    last: object = "nothing observed"
    while True:
        processes.assert_running()
        try:
            observed = await observe()
        except (TimeoutError, aiohttp.ClientError) as exc:
            last = exc
        else:
            if holds(observed):
                return observed
            last = observed
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {DEADLINE:.0f} s; last observed: {last}\n{processes.logs()}")
        await asyncio.sleep(0.2)  # the polling period of a bounded wait, not a synchronisation
