"""`serve --web.workers N`: N worker processes answering on one port, under a supervisor.

Each worker is the whole exporter (server.py's app) in its own process, listening on the same
address with SO_REUSEPORT, so that the kernel spreads connections over them and every core parses
and extracts. The supervisor is the process that was started; it forks the workers and does
nothing else:

- SIGHUP is passed on to every worker; a worker reloaded by POST /-/reload sends SIGHUP to the
  supervisor, which passes it on to the others.
- SIGTERM and SIGINT are passed on, the workers finish their probes (`--web.shutdown-timeout`),
  and the metrics directory is removed. A worker stops once: a second signal (Ctrl-C reaches the
  whole process group, systemd signals every process of the unit) does not cut its probes short.
- A worker that dies is replaced, unless one could not start (WORKER_CANNOT_START: its address
  taken) or workers died more than CRASH_LIMIT times within CRASH_WINDOW seconds: then all stop
  and the supervisor exits with 1.

The workers' self-metrics go through prometheus_client's multiprocess mode, in a directory of the
supervisor's (see selfmetrics.py), so that /metrics gives the same totals whichever worker answers.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import multiprocess

from jsonexporter.logs import kv

log = logging.getLogger("jsonexporter")

WORKER_CANNOT_START = 3  # a worker's exit code that stops them all
CRASH_LIMIT, CRASH_WINDOW = 5, 60.0
KILL_AFTER = 5.0  # seconds after the shutdown timeout before workers still running are killed
PIDS_FILE = "pids"  # in the metrics directory: the supervisor's pid, then the workers'
CPU_FILE = "cpu"  # in the metrics directory: CPU seconds of the workers that have ended
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_SIGNALS = {signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT}


def read_pids(directory: str) -> list[int]:
    """The supervisor's pid, then its live workers'; [] when the file is missing."""
    try:
        with open(os.path.join(directory, PIDS_FILE), encoding="ascii") as f:
            return [int(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


def read_ended_cpu(directory: str) -> float:
    """CPU seconds of the workers that have ended, so that the tree's total never goes down."""
    try:
        with open(os.path.join(directory, CPU_FILE), encoding="ascii") as f:
            return float(f.read())
    except (OSError, ValueError):
        return 0.0


def _write(directory: str, name: str, text: str) -> None:
    path = os.path.join(directory, name)
    with open(path + ".new", "w", encoding="ascii") as f:
        f.write(text)
    os.replace(path + ".new", path)  # readers see the old file or the new one, whole


class Supervisor:
    """Runs `start(index, directory)` in `count` forked workers; its return value is the worker's
    exit code."""

    def __init__(self, count: int, start: Callable[[int, str], int], reload: Callable[[], None], shutdown_timeout: float) -> None:
        self.count = count
        self.start = start
        self.reload = reload
        self.shutdown_timeout = shutdown_timeout
        self.directory = ""
        self.workers: dict[int, int] = {}  # pid -> worker index (1..count)
        self.exits: deque[float] = deque()  # when workers died, within CRASH_WINDOW
        self.deadline: float | None = None  # set when stopping: then no worker is replaced
        self.ended_cpu = 0.0
        self.code = 0

    def run(self) -> int:
        self.directory = tempfile.mkdtemp(prefix="jsonexporter-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.directory  # inherited by the workers
        unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # taken by sigwaitinfo below
        try:
            for index in range(1, self.count + 1):
                self._spawn(index, unblocked)
            log.info("workers started", extra=kv(workers=self.count, supervisor=os.getpid(), metrics_directory=self.directory))
            while self.workers:
                self._handle(self._wait(), unblocked)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
            while signal.sigtimedwait(_SIGNALS, 0) is not None:
                pass  # signals that came while stopping: taken here, not by their default action on unblocking
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        log.info("workers stopped", extra=kv(code=self.code))
        return self.code

    def _spawn(self, index: int, unblocked: Iterable[int]) -> None:
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's code
            code = 1
            try:
                _end_with(supervisor)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until its server takes it: the spec it starts with is the newest
                signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
                code = self.start(index, self.directory)
            except BaseException as exc:  # a worker's last word, without a traceback
                log.error("worker failed", extra=kv(worker=index, err=f"{type(exc).__name__}: {exc}"))
            finally:
                logging.shutdown()
                os._exit(code)
        self.workers[pid] = index
        self._write_pids()

    def _write_pids(self) -> None:
        _write(self.directory, PIDS_FILE, "".join(f"{pid}\n" for pid in [os.getpid(), *self.workers]))

    def _wait(self) -> signal.struct_siginfo | None:
        if self.deadline is None:
            return signal.sigwaitinfo(_SIGNALS)
        return signal.sigtimedwait(_SIGNALS, max(self.deadline - time.monotonic(), 0.0))

    def _handle(self, info: signal.struct_siginfo | None, unblocked: Iterable[int]) -> None:
        if info is None:  # stopping, and the workers had their time
            log.error("workers still running after the shutdown timeout, killing them", extra=kv(workers=len(self.workers)))
            for pid in self.workers:
                os.kill(pid, signal.SIGKILL)
            self.deadline = time.monotonic() + KILL_AFTER
            self.code = 1
            return
        signo = info.si_signo
        if signo == signal.SIGCHLD:
            for pid, status, cpu in _reaped():
                self._exited(pid, status, cpu, unblocked)
        elif signo == signal.SIGHUP:
            if self.deadline is None:
                self.reload()
                for pid in self.workers:
                    if pid != info.si_pid:  # a worker reloaded by /-/reload already has
                        os.kill(pid, signal.SIGHUP)
        else:
            self._stop(f"signal {signal.Signals(signo).name}")

    def _exited(self, pid: int, status: int, cpu: float, unblocked: Iterable[int]) -> None:
        index = self.workers.pop(pid, None)
        if index is None:
            return
        multiprocess.mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]  # its live gauges go; its counters stay in the totals
        self.ended_cpu += cpu
        _write(self.directory, CPU_FILE, repr(self.ended_cpu))
        self._write_pids()
        if self.deadline is not None:
            return
        code = os.waitstatus_to_exitcode(status)
        log.error("worker exited", extra=kv(worker=index, pid=pid, code=code))
        now = time.monotonic()
        self.exits.append(now)
        while self.exits[0] < now - CRASH_WINDOW:
            self.exits.popleft()
        if code == WORKER_CANNOT_START or len(self.exits) > CRASH_LIMIT:
            self.code = 1
            self._stop("a worker cannot start" if code == WORKER_CANNOT_START else f"workers died more than {CRASH_LIMIT} times in {CRASH_WINDOW:.0f}s")
        else:
            self._spawn(index, unblocked)

    def _stop(self, reason: str) -> None:
        if self.deadline is not None:
            return
        log.info("stopping workers", extra=kv(reason=reason, workers=len(self.workers)))
        self.deadline = time.monotonic() + self.shutdown_timeout + KILL_AFTER
        for pid in self.workers:
            os.kill(pid, signal.SIGTERM)


def _reaped() -> Iterator[tuple[int, int, float]]:
    """The workers that have ended: pid, wait status, CPU seconds."""
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status, usage.ru_utime + usage.ru_stime


def _end_with(supervisor: int) -> None:
    """SIGTERM for this worker when the supervisor dies, even by SIGKILL: no worker outlives it."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the supervisor's SIGTERM still stops the workers
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)  # the process's own symbols: libc's
    if os.getppid() != supervisor:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def supervisor_notifier() -> Callable[[], None]:
    """For a worker: what asks its supervisor to reload the other workers (after POST /-/reload)."""
    supervisor = os.getppid()

    def notify() -> None:
        if os.getppid() == supervisor:  # never another process that took over its children
            os.kill(supervisor, signal.SIGHUP)

    return notify
