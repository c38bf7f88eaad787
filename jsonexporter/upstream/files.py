"""Secret files read at each use (module `secrets`, `http_client_config` *_file credentials), off the
event loop and bounded in size and time: a FIFO nobody writes or a hung NFS mount fails the requests
that need it, never every probe.

Each read runs in a daemon thread of its own (a thread stuck in the kernel cannot be stopped, and a
pool's thread would hold the process at exit); concurrent reads of one path share one thread, so a
stuck path holds at most one thread, however many probes need it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import threading

# a secret is a password, a token or a certificate key: far less; more is a wrong path (a log file, /dev/zero)
MAX_SECRET_BYTES = 65536
# a local or mounted file answers in milliseconds; a slower one is treated as unreadable
SECRET_READ_TIMEOUT = 2.0


def _read(path: str) -> str:
    with open(path, "rb") as fh:
        data = fh.read(MAX_SECRET_BYTES + 1)
    if len(data) > MAX_SECRET_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_SECRET_BYTES} bytes")
    return data.decode("utf-8").rstrip("\r\n")


class SecretFiles:
    """The reads in flight, by path."""

    def __init__(self) -> None:
        self._reads: dict[str, asyncio.Future[str]] = {}

    async def read(self, path: str, timeout: float = SECRET_READ_TIMEOUT) -> str:
        """The file's text without its final newline, read now. Raises OSError (its strerror says why,
        `no answer within …` for a read slower than `timeout` seconds) or UnicodeDecodeError."""
        future = self._reads.get(path)
        if future is None:
            future = self._reads[path] = self._start(path)
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                return await asyncio.shield(future)
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, f"no answer within {timeout:g}s") from None

    def _start(self, path: str) -> asyncio.Future[str]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: every reader may have given up

        def settle(value: str | None, error: BaseException | None) -> None:
            if self._reads.get(path) is future:
                del self._reads[path]
            if not future.done():
                future.set_exception(error) if error is not None else future.set_result(value or "")

        def run() -> None:
            value, error = None, None
            try:
                value = _read(path)
            except (OSError, UnicodeDecodeError) as exc:
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, value, error)

        threading.Thread(target=run, name=f"secret-file {path}", daemon=True).start()
        return future
