"""The exporter's own side of its connections: the open-files limit raised at start, as every Go
program does, and client connections bounded, the oldest idle ones closed first, so that a crowd of
idle clients cannot take the file descriptors that /-/healthy and probes need."""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from jsonexporter.logs import kv

log = logging.getLogger("jsonexporter")

# descriptors kept for everything but client connections: the interpreter, the listening sockets,
# the files read at a reload, the log, DNS; upstream connections are counted apart
RESERVED_FILES = 128
MIN_CLIENT_CONNECTIONS = 16
PENDING_FOR = 60.0  # seconds: asyncio's TLS handshake timeout, after which a connection is listed or gone
WARN_INTERVAL = 60.0  # seconds between warnings about closed connections
KEEPALIVE_TIMEOUT = 75.0  # seconds an idle client connection stays open (aiohttp's default, stated)
_NR_OPEN = "/proc/sys/fs/nr_open"  # Linux: the most a hard limit of "unlimited" lets a process open

@dataclass(frozen=True, slots=True)
class OpenFiles:
    started: int  # the soft limit the process was started with
    soft: int
    hard: int


def raise_open_files_limit() -> OpenFiles:
    """Raise the soft limit on open files to the hard one (systemd's default soft limit, 1024, is
    lower than 1,100 idle connections); a hard limit of unlimited counts as the kernel's nr_open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _nr_open()
    if soft == resource.RLIM_INFINITY or soft >= target:
        return OpenFiles(soft, soft, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:  # e.g. macOS, whose kernel caps it lower than it says
        log.warning("cannot raise the open files limit", extra=kv(soft=soft, hard=hard, err=str(exc)))
        return OpenFiles(soft, soft, hard)
    return OpenFiles(soft, target, hard)


def _nr_open() -> int:
    try:
        with open(_NR_OPEN, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def client_connection_limit(open_files: int, upstream_connections: int) -> int:
    """What the open-files limit leaves for client connections once upstream connections and the
    rest have theirs."""
    if open_files == resource.RLIM_INFINITY:
        open_files = _nr_open()
    return max(open_files - upstream_connections - RESERVED_FILES, MIN_CLIENT_CONNECTIONS)


class ClientConnections:
    """At most `limit` client connections open (0: no bound). A new connection beyond closes the
    oldest that are idle (no request in progress), a tenth of the limit more than needed, so that
    the count is taken once in that many new connections, not at each."""

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self.busy: set[web.RequestHandler] = set()  # connections with a request in progress (marked by the app's middleware)
        self.opened = 0  # an upper bound of the connections open: closes are counted when counted again
        self.pending: dict[web.RequestHandler, float] = {}  # made, perhaps not listed by the server yet: when
        self.closed = 0  # since the last warning
        self.warned = -WARN_INTERVAL
        self.listening: list[asyncio.Server] = []  # the loop's servers (_BoundedLoop), for stop_accepting

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """An event loop whose servers keep to the limit, for `web.run_app(loop=...)`."""
        return _BoundedLoop(self)

    def protocol_factory(self, server: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.BaseProtocol]:
        if self.limit <= 0 or not isinstance(server, web.Server):
            return server
        http = server

        def connection() -> asyncio.BaseProtocol:
            self.opened += 1
            if self.opened > self.limit:
                self._make_room(http)
            handler = http()
            self.pending[handler] = time.monotonic()
            if len(self.pending) > min(self.limit, 4096):  # many new ones, over the limit or not: forget those listed by now
                self._still_pending(set(http.connections))
            return handler

        return connection

    def stop_accepting(self) -> None:
        """Take no more connections from the listening sockets: the first step of a graceful stop.
        An accept that the loop had queued behind the stop signal's handler ran after it, and the
        connection's set-up (a task of its own) after the server had closed: it failed unseen
        (asyncio.Server._attach) and left the accepted socket open in a reference cycle, its request
        unread, its client waiting until the process exited (the probes in flight done, up to the
        shutdown timeout). With the readers removed, that accept does not run (the kernel resets its
        connection as the listening socket closes), and those accepted before are set up ahead of the
        stop, which the caller schedules after this."""
        loop = asyncio.get_running_loop()
        for server in self.listening:
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())

    def _make_room(self, server: web.Server) -> None:
        # the oldest first; those closed already stay listed until the loop has told them, and those
        # accepted in the same turn of the loop are not listed yet
        listed = server.connections
        live = [handler for handler in listed if handler.transport is not None]
        pending = self._still_pending(set(listed))
        excess = len(live) + pending + 1 - self.limit
        closed = 0
        if excess > 0:
            excess += self.limit // 10
            for handler in live:
                if closed >= excess:
                    break
                if handler not in self.busy:
                    handler.force_close()
                    closed += 1
            self.closed += closed
            now = time.monotonic()
            if now >= self.warned + WARN_INTERVAL:
                log.warning("too many client connections, closed the oldest idle ones", extra=kv(limit=self.limit, closed=self.closed))
                self.warned, self.closed = now, 0
        self.opened = len(live) - closed + pending + 1

    def _still_pending(self, listed: set[web.RequestHandler]) -> int:
        """How many connections are accepted but not listed by the server yet (it lists them once
        the loop has told them, after the TLS handshake with TLS), and forget the others."""
        since = time.monotonic() - PENDING_FOR
        self.pending = {handler: made for handler, made in self.pending.items()
                        if made > since and handler not in listed and handler.transport is None}
        return len(self.pending)


class _BoundedLoop(asyncio.SelectorEventLoop):
    def __init__(self, connections: ClientConnections) -> None:
        super().__init__()
        self.connections = connections

    async def create_server(self, protocol_factory: Callable[[], asyncio.BaseProtocol], *args: Any, **kwargs: Any) -> asyncio.Server:
        server = await super().create_server(self.connections.protocol_factory(protocol_factory), *args, **kwargs)
        self.connections.listening.append(server)
        return server
