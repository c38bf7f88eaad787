"""`serve --web.workers N`: N worker processes answering on one port, under a supervisor.

Each worker is the whole exporter (server.py's app) in its own process, so that every core parses
and extracts. The supervisor is the process that was started: it listens on the address, forks the
workers, and hands each connection it accepts to one of them, the one with the fewest connections
open (ties in turn), over a Unix socket pair made before the fork (its descriptor passed with
SCM_RIGHTS; listen.HandoffServer in the worker serves it). The
kernel's own spreading (SO_REUSEPORT, a hash of each connection's addresses) split the few long-lived
connections of a Prometheus or of a benchmark 5/3 or 6/2: one worker saturated while another idled.
Else the supervisor does nothing but:

- SIGHUP is passed on to every worker; a worker reloaded by POST /-/reload sends SIGHUP to the
  supervisor, which passes it on to the others.
- SIGTERM and SIGINT: the supervisor stops listening, passes them on, the workers finish their
  probes (`--web.shutdown-timeout`), and the metrics directory is removed. A worker stops once: a
  second signal (Ctrl-C reaches the whole process group, systemd signals every process of the unit)
  does not cut its probes short. A worker that stops takes no more connections: the others get them.
- A worker that dies is replaced (the connections it had are gone; the new one gets the next ones),
  unless one could not start (WORKER_CANNOT_START) or workers died more than CRASH_LIMIT times
  within CRASH_WINDOW seconds: then all stop and the supervisor exits with 1.

The supervisor's main thread waits for signals (sigwaitinfo, every signal blocked); a thread of its
own accepts (Balancer), its selector woken by the listening sockets only.

The workers' self-metrics go through prometheus_client's multiprocess mode, in a directory of the
supervisor's (see selfmetrics.py), so that /metrics gives the same totals whichever worker answers.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import selectors
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import multiprocess

from jsonexporter.logs import kv

log = logging.getLogger("jsonexporter")

WORKER_CANNOT_START = 3  # a worker's exit code that stops them all
CRASH_LIMIT, CRASH_WINDOW = 5, 60.0
WARN_INTERVAL = 60.0  # seconds between warnings about connections that no worker took
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
    """Runs `start(index, directory, channel)` in `count` forked workers, each handed the connections
    that come on `listeners` over its channel; its return value is the worker's exit code."""

    def __init__(self, count: int, start: Callable[[int, str, socket.socket], int], reload: Callable[[], None], shutdown_timeout: float,
                 listeners: Sequence[socket.socket]) -> None:
        self.count = count
        self.balancer = Balancer(listeners)
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
            self.balancer.start()  # its thread, started with every signal blocked, leaves them to sigwaitinfo
            log.info("workers started", extra=kv(workers=self.count, supervisor=os.getpid(), metrics_directory=self.directory))
            while self.workers:
                self._handle(self._wait(), unblocked)
        finally:
            self.balancer.stop()
            shutil.rmtree(self.directory, ignore_errors=True)
            while signal.sigtimedwait(_SIGNALS, 0) is not None:
                pass  # signals that came while stopping: taken here, not by their default action on unblocking
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        log.info("workers stopped", extra=kv(code=self.code))
        return self.code

    def _spawn(self, index: int, unblocked: Iterable[int]) -> None:
        supervisor = os.getpid()
        ours, theirs = socket.socketpair()
        with self.balancer.forking():
            pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's code
            code = 1
            try:
                ours.close()
                self.balancer.forget()
                _end_with(supervisor)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until its server takes it: the spec it starts with is the newest
                signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
                code = self.start(index, self.directory, theirs)
            except BaseException as exc:  # a worker's last word, without a traceback
                log.error("worker failed", extra=kv(worker=index, err=f"{type(exc).__name__}: {exc}"))
            finally:
                logging.shutdown()
                os._exit(code)
        theirs.close()
        self.balancer.add(index, ours)
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
        self.balancer.remove(index)  # the connections sent to it and not taken yet close with its channel
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
        self.balancer.stop()  # no new connections: those the listening sockets hold are reset as they close
        self.deadline = time.monotonic() + self.shutdown_timeout + KILL_AFTER
        for pid in self.workers:
            os.kill(pid, signal.SIGTERM)


class _Channel:
    """The supervisor's end of a worker's socket pair, and the connections handed to it that are open."""

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.handed: dict[int, socket.socket] = {}  # by descriptor: the supervisor's own, that tells when the connection ends
        self.accepting = True  # until a send fails: the worker is stopping (listen.HandoffServer.stop_accepting) or gone
        self.ready = False  # once the worker serves (listen.HandoffServer says so, a byte)

    def is_ready(self) -> bool:
        if not self.ready:
            try:
                self.ready = bool(self.sock.recv(16, socket.MSG_DONTWAIT))
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.accepting = False
        return self.ready

    def hand(self, conn: socket.socket) -> bool:
        """Whether the worker was sent `conn`: False when its channel is full (its loop held up) or it stops."""
        try:
            socket.send_fds(self.sock, [b"\0"], [conn.fileno()], socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:  # EPIPE: it takes no more
            self.accepting = False
            return False
        self.handed[conn.fileno()] = conn
        return True

    def close(self) -> None:
        """The worker has ended: its channel closed, and the connections it had (held open here too)."""
        self.sock.close()
        for conn in self.handed.values():
            conn.close()
        self.handed.clear()


class Balancer:
    """The supervisor's accepting thread: each connection to the worker with the fewest open, ties
    taken in turn, so that 8 connections make 4 and 4 whenever they came, and a replaced worker gets
    the next ones once it serves (before, only when no worker does: at start). Nothing blocks it: a
    worker whose channel is full or that stops is passed over, and a connection that no worker takes
    is closed.

    The supervisor keeps each connection it handed open, in an epoll set for its end: the kernel says
    so (EPOLLRDHUP, EPOLLHUP) as the client's FIN arrives or as the worker shuts it down (listen._Handed),
    taken before each accept, where a worker's own word would come only when its loop, busy with a probe,
    got to it: a client that closes its connections and opens new ones at once (a benchmark run after
    another, a reconnecting scraper) found the count of the busier worker still high, and split 5/3."""

    def __init__(self, listeners: Sequence[socket.socket]) -> None:
        self.listeners = list(listeners)
        for sock in self.listeners:
            sock.setblocking(False)
        self.channels: dict[int, _Channel] = {}  # by worker index
        self.ends = select.epoll()  # the connections handed, to see them end
        self.handed: dict[int, _Channel] = {}  # by the descriptor of a connection handed: the worker it went to
        self.last = 0  # the index of the worker handed the last connection
        # held while a connection accepted is open here, and around each fork: no worker inherits one
        self.lock = threading.Lock()
        self.wake, self.woken = socket.socketpair()
        self.selector = selectors.DefaultSelector()
        self.thread: threading.Thread | None = None
        self.refused = 0  # since the last warning
        self.warned = -WARN_INTERVAL

    def start(self) -> None:
        for sock in self.listeners:
            self.selector.register(sock, selectors.EVENT_READ)
        self.selector.register(self.woken, selectors.EVENT_READ)
        self.selector.register(self.ends.fileno(), selectors.EVENT_READ)  # readable as a connection handed ends
        self.thread = threading.Thread(target=self._run, name="accept", daemon=True)
        self.thread.start()

    def add(self, index: int, sock: socket.socket) -> None:
        with self.lock:
            self.channels[index] = _Channel(index, sock)

    def remove(self, index: int) -> None:
        with self.lock:
            channel = self.channels.pop(index, None)
            if channel is not None:
                for fd in channel.handed:
                    self.ends.unregister(fd)
                    del self.handed[fd]
                channel.close()

    @contextlib.contextmanager
    def forking(self) -> Iterator[None]:
        with self.lock:
            yield

    def forget(self) -> None:
        """In a new worker: close the supervisor's sockets it inherited (listening, the other workers'
        channels and connections), so that they close when the supervisor's do. The lock is not taken:
        the thread that might hold it was not forked."""
        for sock in [*self.listeners, self.wake, self.woken]:
            sock.close()
        for channel in self.channels.values():
            channel.close()
        self.selector.close()
        self.ends.close()

    def stop(self) -> None:
        """Accept no more; the listening sockets closed (the kernel resets the connections they queued)."""
        if self.thread is not None:
            self.wake.send(b"\0")
            self.thread.join(KILL_AFTER)  # it is never blocked but in its selector, which this wakes
            self.thread = None
        for sock in self.listeners:
            sock.close()

    def _run(self) -> None:
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.woken:
                    return
                if key.fd == self.ends.fileno():  # let go of those ended at once, not at the next accept
                    with self.lock:
                        self._take_ends()
                    continue
                assert isinstance(key.fileobj, socket.socket)
                if not self._accept(key.fileobj):
                    self._pause()

    def _accept(self, listener: socket.socket) -> bool:
        """The connections queued on `listener`, each handed to a worker; False when accept fails for lack of descriptors or memory."""
        for _ in range(64):  # then the other listening sockets get their turn
            with self.lock:
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    return True
                except ConnectionAbortedError:
                    continue
                except OSError as exc:
                    log.warning("cannot accept client connections, retrying each second", extra=kv(err=exc.strerror or str(exc)))
                    return False
                if not self._hand(conn):
                    conn.close()
        return True

    def _hand(self, conn: socket.socket) -> bool:
        self._take_ends()
        after = max(self.channels, default=0) + 1
        channels = [channel for channel in self.channels.values() if channel.accepting]
        ready = [channel for channel in channels if channel.is_ready()]  # a worker starting would hold them until it serves
        channels = sorted(ready or channels, key=lambda channel: (len(channel.handed), (channel.index - self.last - 1) % after))
        for channel in channels:
            if channel.hand(conn):
                self.last = channel.index
                self.handed[conn.fileno()] = channel
                self.ends.register(conn.fileno(), select.EPOLLRDHUP)  # EPOLLHUP and EPOLLERR come unasked
                return True
        self.refused += 1  # closed: every worker stopping, or held up with a full channel
        now = time.monotonic()
        if now >= self.warned + WARN_INTERVAL:
            log.warning("no worker takes connections, closed them", extra=kv(refused=self.refused))
            self.warned, self.refused = now, 0
        return False

    def _take_ends(self) -> None:
        """Forget the connections handed that have ended (or half: the client's side, which is done asking)."""
        while True:
            ended = self.ends.poll(0, 256)
            for fd, _ in ended:
                self.ends.unregister(fd)
                self.handed.pop(fd).handed.pop(fd).close()
            if len(ended) < 256:
                return

    def _pause(self) -> None:
        """A second before accepting again (woken early by stop): the listening socket stays readable meanwhile."""
        self.woken.settimeout(1.0)
        with contextlib.suppress(TimeoutError):
            self.woken.recv(1, socket.MSG_PEEK)
        self.woken.setblocking(False)


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
