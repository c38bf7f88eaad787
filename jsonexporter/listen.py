"""The exporter's own side of its connections: the open-files limit raised at start, as every Go
program does, and client connections bounded whatever their state (in their TLS handshake, idle, or
with a request in progress), the oldest idle ones closed first and the rest refused, so that a crowd
of idle or silent clients cannot take the file descriptors that /-/healthy and probes need; what
they have sent that no request has begun with bounded across them, so that request heads that never
end cannot take its memory; and the requests aiohttp cannot parse logged once a minute, not each."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError

from jsonexporter.logs import kv

log = logging.getLogger("jsonexporter")

# descriptors kept for everything but client connections: the interpreter, the listening sockets,
# the files read at a reload, the log, DNS; upstream connections are counted apart
RESERVED_FILES = 128
MIN_CLIENT_CONNECTIONS = 16
# the most client connections by default, whatever the open files limit (Docker's is 1,048,576): an idle one costs
# about 7 KB, so a crowd of them is bounded at some 115 MB; Prometheus's own server takes 512 by default
MAX_DEFAULT_CLIENT_CONNECTIONS = 16384
# seconds a client gets to finish its TLS handshake (asyncio's default is 60 s): a scrape that has not
# finished its handshake by then has failed anyway (Prometheus's default scrape timeout is 10 s)
HANDSHAKE_TIMEOUT = 10.0
PENDING_FOR = HANDSHAKE_TIMEOUT  # a connection whose transport the loop did not show, not listed after this, is gone
WARN_INTERVAL = 60.0  # seconds between warnings about closed or refused connections, and about failed accepts
# what accept() fails with when the process or the system is out of descriptors or memory (asyncio
# logs each, a hundred times per readable event of the listening socket)
_ACCEPT_OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
KEEPALIVE_TIMEOUT = 75.0  # seconds an idle client connection stays open (aiohttp's default, stated)
# bytes that client connections have received, all together, and that no request of theirs has begun with:
# request heads still coming (aiohttp lets one have 128 lines of 8190 bytes, about 1 MB, and keeps it twice
# while parsing), pipelined requests waiting, bodies (no path reads one). A scraper's request is a few hundred
# bytes, begun as soon as it has come. Beyond, the connections holding the most are closed (UnbegunBytes).
UNBEGUN_BYTES = 16 << 20
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
    rest have theirs, at most MAX_DEFAULT_CLIENT_CONNECTIONS."""
    if open_files == resource.RLIM_INFINITY:
        open_files = _nr_open()
    return min(max(open_files - upstream_connections - RESERVED_FILES, MIN_CLIENT_CONNECTIONS), MAX_DEFAULT_CLIENT_CONNECTIONS)


class ClientConnections:
    """At most `limit` client connections open (0: no bound), whatever their state. A new connection
    beyond closes the oldest that are idle (listed by the server, no request in progress), then the
    oldest still in their TLS handshake, a tenth of the limit more than needed, so that the count is
    taken once in that many new connections, not at each; when none of those is left (every connection
    has a request in progress), the new connection is refused: closed at once."""

    def __init__(self, limit: int = 0, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.limit = limit
        self.handshake_timeout = handshake_timeout
        self.busy: set[web.RequestHandler] = set()  # connections with a request in progress (marked by the app's middleware)
        self.opened = 0  # an upper bound of the connections open: closes are counted when counted again
        # made, perhaps not listed by the server yet: when, and its transport (_BoundedLoop), by which it
        # can be closed before the server lists it (with TLS, after its handshake) and told from one closed since
        self.pending: dict[web.RequestHandler, tuple[float, asyncio.Transport | None]] = {}
        self.closed = 0  # since the last warning
        self.refused = 0  # since the last warning
        self.warning = _OnceAnInterval()  # of closed and refused connections
        self.accept_failures = 0  # since the last warning about them
        self.accept_warning = _OnceAnInterval()
        self.listening: list[asyncio.Server] = []  # the loop's servers (_BoundedLoop), for stop_accepting
        self.servers: list[web.Server] = []  # aiohttp's, which list the connections, for close_idle
        self.unbegun = UnbegunBytes()

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """An event loop whose servers keep to the limit, for `web.run_app(loop=...)`."""
        return _BoundedLoop(self)

    def protocol_factory(self, server: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.BaseProtocol]:
        if not isinstance(server, web.Server):
            return server
        self.servers.append(server)
        http = server

        def connection() -> asyncio.BaseProtocol:
            if self.limit <= 0:
                return self.unbegun.handler(http)
            self.opened += 1
            if self.opened > self.limit and not self._make_room(http):
                return _Refused()
            handler = self.unbegun.handler(http)
            self.pending[handler] = (time.monotonic(), None)
            if len(self.pending) > min(self.limit, 4096):  # many new ones, over the limit or not: forget those listed by now
                self._still_pending(set(http.connections))
            return handler

        return connection

    def begun(self, request: web.BaseRequest) -> None:
        """A request of a connection has begun (the app's middleware): the connection is busy, and the
        bytes of the request's head no longer count as unbegun."""
        protocol = request.protocol
        self.busy.add(protocol)
        if isinstance(protocol, _Handler):
            self.unbegun.begun(protocol, request)

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

    def close_idle(self, closes: Callable[[web.RequestHandler], bool]) -> None:
        """Close the connections without a request in progress for which `closes` is true."""
        for server in self.servers:
            for handler in server.connections:
                if handler.transport is not None and handler not in self.busy and closes(handler):
                    handler.force_close()

    def accepted(self, protocol: asyncio.BaseProtocol, transport: asyncio.Transport) -> None:
        """The transport made for `protocol` (a handler of ours, or a protocol of another's): with TLS, that of its handshake."""
        if isinstance(protocol, web.RequestHandler) and protocol in self.pending:
            self.pending[protocol] = (self.pending[protocol][0], transport)

    def accept_failed(self, context: dict[str, Any]) -> bool:
        """Whether `context` (of the loop's exception handler) is an accept() that failed for lack of
        descriptors or memory; those are counted and logged once a WARN_INTERVAL, not each time."""
        exc = context.get("exception")
        if "socket" not in context or not isinstance(exc, OSError) or exc.errno not in _ACCEPT_OUT_OF_RESOURCES:
            return False
        self.accept_failures += 1
        if self.accept_warning.due():
            log.warning("cannot accept client connections, retrying each second", extra=kv(
                err=exc.strerror or str(exc), failures=self.accept_failures, limit=self.limit,
                hint="raise the open files limit, or lower --web.max-connections below what it leaves"))
            self.accept_failures = 0
        return True

    def _make_room(self, server: web.Server) -> bool:
        """Close connections for a new one, the oldest first; False when none could be closed: the new one is refused."""
        # those closed already stay listed until the loop has told them, and those accepted in the same
        # turn of the loop are not listed yet
        listed = server.connections
        live = [handler for handler in listed if handler.transport is not None]
        self._still_pending(set(listed))
        count = len(live) + len(self.pending)
        excess = count + 1 - self.limit
        closed = 0
        if excess > 0:
            wanted = excess + self.limit // 10
            for handler in live:
                if closed >= wanted:
                    break
                if handler not in self.busy:
                    handler.force_close()
                    closed += 1
            for handler, (_, transport) in list(self.pending.items()):
                if closed >= wanted:
                    break
                if transport is not None:  # in its TLS handshake (or accepted in this turn): it has sent no request yet
                    # in the loop's next turn: one accepted in this turn is not set up yet (asyncio does in
                    # callbacks it queued: the handshake's start, the socket's reader), which would undo an abort before
                    asyncio.get_running_loop().call_soon(transport.abort)
                    del self.pending[handler]
                    closed += 1
        room = closed >= excess
        self.closed += closed
        self.refused += not room
        if (closed or not room) and self.warning.due():
            log.warning("too many client connections, closed the oldest idle ones", extra=kv(limit=self.limit, closed=self.closed, refused=self.refused))
            self.closed, self.refused = 0, 0
        self.opened = count - closed + room
        return room

    def _still_pending(self, listed: set[web.RequestHandler]) -> int:
        """How many connections are accepted but not listed by the server yet (it lists them once
        the loop has told them, after the TLS handshake with TLS), and forget the others: listed, or
        closed (listed and closed since, or a handshake that failed, timed out or was closed here)."""
        since = time.monotonic() - PENDING_FOR
        self.pending = {handler: (made, transport) for handler, (made, transport) in self.pending.items()
                        if handler not in listed and handler.transport is None
                        and (not transport.is_closing() if transport is not None else made > since)}
        return len(self.pending)


class UnbegunBytes:
    """What client connections have received that no request of theirs has begun with, all together at most
    `limit` bytes: beyond, the connections that hold the most are closed, idle or not, until they hold a
    quarter less than the limit (so that the count is sorted once in many reads, not at each). A scraper's
    connection holds nothing between its requests, and its request only until it begins."""

    def __init__(self, limit: int = UNBEGUN_BYTES) -> None:
        self.limit = limit
        self.total = 0
        self.held: dict[_Handler, int] = {}  # the connections that hold some, and how much
        self.closed = 0  # since the last warning
        self.warning = _OnceAnInterval()
        self.uncounted = False  # whether aiohttp's handler could not be made counting (`handler`)

    def handler(self, server: web.Server) -> web.RequestHandler:
        """A connection's handler that counts what it receives; as `server()` makes aiohttp's own. From aiohttp's
        private `_loop` and `_kwargs`: an aiohttp that has them no more gets its own handler, uncounted (said once),
        rather than no connection at all."""
        try:
            return _Handler(self, server, loop=server._loop, **server._kwargs)
        except (AttributeError, TypeError):
            if not self.uncounted:
                self.uncounted = True
                log.warning("this aiohttp's connection handler cannot be counted: bytes of requests not begun are not bounded")
            return server()

    def received(self, handler: _Handler, size: int) -> bool:
        """Whether `handler` may take the `size` bytes it has received (False: it was closed for them)."""
        self.held[handler] = self.held.get(handler, 0) + size
        self.total += size
        if self.total <= self.limit:
            return True
        self._shed()
        return handler.transport is not None

    def begun(self, handler: _Handler, request: web.BaseRequest) -> None:
        # the previous request's body is over by now (aiohttp begins a connection's requests one after another,
        # each once the one before has been read or discarded whole): its bytes no longer count either
        before, handler.payload = handler.payload, request.content
        held = self.held.get(handler)
        if held is None:
            return
        # the head as it came: request line, header lines, the empty line (a scraper writes them so; a
        # client that writes them otherwise is counted a little more or less, never below nothing)
        head = len(request.method) + len(request.raw_path) + 12 + sum(len(name) + len(value) + 4 for name, value in request.raw_headers) + 2
        if before is not None:
            head += before.total_bytes  # its data as read (a chunked body's framing is not: counted on, a few bytes each)
        self.forget(handler, min(head, held))

    def forget(self, handler: _Handler, size: int | None = None) -> None:
        """`size` bytes of `handler` no longer held (None: all of them, its connection is gone)."""
        held = self.held.pop(handler, 0)
        size = held if size is None else size
        self.total -= size
        if held > size:
            self.held[handler] = held - size

    def _shed(self) -> None:
        target = self.limit - self.limit // 4
        closed = 0
        for handler in sorted(self.held, key=self.held.__getitem__, reverse=True):
            if self.total <= target:
                break
            self.forget(handler)
            handler.force_close()
            closed += 1
        self.closed += closed
        if self.warning.due():
            log.warning("client connections held too many bytes of requests not begun, closed those holding the most",
                        extra=kv(limit=self.limit, closed=self.closed))
            self.closed = 0


class _Handler(web.RequestHandler):
    """aiohttp's handler of a client connection, counting what it receives (UnbegunBytes)."""

    __slots__ = ("payload", "unbegun")

    def __init__(self, unbegun: UnbegunBytes, server: web.Server, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self.unbegun = unbegun
        self.payload: StreamReader | None = None  # the body of the request begun last (UnbegunBytes.begun)

    def data_received(self, data: bytes) -> None:
        if self.unbegun.received(self, len(data)):
            super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.unbegun.forget(self)
        super().connection_lost(exc)


class ParseErrors(logging.Filter):
    """For aiohttp's server logger: a request it cannot parse (the client's fault, answered 400) is
    logged by aiohttp at level error, each with the client's bytes; here as one warning a WARN_INTERVAL,
    with the count since the last one. Every other line passes as it is."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0  # since the last warning
        self.warning = _OnceAnInterval()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or not isinstance(record.exc_info[1], HttpProcessingError):
            return True
        self.count += 1
        if not self.warning.due():
            return False
        client = record.args[0] if isinstance(record.args, tuple) and record.args else None
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        record.msg, record.args = "requests that could not be parsed, answered 400", ()
        record.fields = {"requests": self.count, "last_client": client}  # the error of the last one: err
        self.count = 0
        return True


class _OnceAnInterval:
    """Whether a warning of what was counted since the last one is due: at most once a WARN_INTERVAL."""

    __slots__ = ("said",)

    def __init__(self) -> None:
        self.said = -WARN_INTERVAL

    def due(self) -> bool:
        now = time.monotonic()
        if now < self.said + WARN_INTERVAL:
            return False
        self.said = now
        return True


class _Refused(asyncio.Protocol):
    """A connection beyond the limit when none could be closed: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.abort()


class _BoundedLoop(asyncio.SelectorEventLoop):
    def __init__(self, connections: ClientConnections) -> None:
        super().__init__()
        self.connections = connections

    async def create_server(self, protocol_factory: Callable[[], asyncio.BaseProtocol], *args: Any, **kwargs: Any) -> asyncio.Server:
        if kwargs.get("ssl") is not None and kwargs.get("ssl_handshake_timeout") is None:
            kwargs["ssl_handshake_timeout"] = self.connections.handshake_timeout
        server = await super().create_server(self.connections.protocol_factory(protocol_factory), *args, **kwargs)
        self.connections.listening.append(server)
        return server

    # asyncio's (private, 3.11 to 3.13) hooks between an accepted socket and its protocol, the one place
    # that holds both the handler and the transport that can close the connection before the loop has
    # told the handler (with TLS, after the handshake) and aiohttp lists it
    def _make_socket_transport(self, sock: Any, protocol: asyncio.BaseProtocol, waiter: Any = None, **kwargs: Any) -> Any:
        transport = super()._make_socket_transport(sock, protocol, waiter, **kwargs)  # type: ignore[misc]
        self.connections.accepted(protocol, transport)
        return transport

    def _make_ssl_transport(self, rawsock: Any, protocol: asyncio.BaseProtocol, sslcontext: Any, waiter: Any = None, **kwargs: Any) -> Any:
        if isinstance(protocol, _Refused):  # no handshake for it: closed at once
            return self._make_socket_transport(rawsock, protocol, waiter, extra=kwargs.get("extra"), server=kwargs.get("server"))
        transport = super()._make_ssl_transport(rawsock, protocol, sslcontext, waiter, **kwargs)  # type: ignore[misc]
        self.connections.accepted(protocol, transport)
        return transport

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        if not self.connections.accept_failed(context):
            super().call_exception_handler(context)
