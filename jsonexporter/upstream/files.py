"""Files read when used (module `secrets`, `http_client_config` *_file credentials, tls_config's CA,
certificate and key files), off the event loop and bounded in size and time: a FIFO nobody writes or a
hung NFS mount fails the requests that need it, never every probe.

Each read runs in a daemon thread of its own (a thread stuck in the kernel cannot be stopped, and a
pool's thread would hold the process at exit); concurrent reads of one path share one thread, so a
stuck path holds at most one thread, however many probes need it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Any, TypeVar

from jsonexporter.spec.sources import MAX_SECRET_BYTES, read_bounded

# a TLS file may be a CA bundle: Debian's whole one is 220 KB, corporate ones with intermediates a few
# times that; 4 MiB still refuses a log file or /dev/zero
MAX_TLS_FILE_BYTES = 4 * 1024 * 1024
# a local or mounted file answers in milliseconds; a slower one is treated as unreadable
SECRET_READ_TIMEOUT = 2.0

T = TypeVar("T")


@contextlib.contextmanager
def as_read(data: bytes, path: str) -> Iterator[str]:
    """A path to exactly `data`, the bytes read of `path`, for what takes only paths (OpenSSL's load_cert_chain
    and load_verify_locations): an anonymous file in memory (Linux's memfd), never on disk, closed on leaving.
    OpenSSL reading `path` again would read whatever is there by then, past the bounds (a larger file swapped in,
    a FIFO that answers once). Where memfd is missing (not Linux, no /proc), `path` itself, as before."""
    if not hasattr(os, "memfd_create") or not os.path.isdir("/proc/self/fd"):
        yield path
        return
    fd = os.memfd_create("tls-file", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as fh:
            fh.write(data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


class EncryptedKey(ValueError):
    """A key file encrypted with a passphrase (a `-----BEGIN ENCRYPTED PRIVATE KEY-----`): jsonexporter takes no
    passphrase, as Prometheus's and exporter-toolkit's Go TLS take none."""


def no_passphrase() -> bytes:
    """The `password` of every ssl load_cert_chain: OpenSSL calls it only for an encrypted key, which is refused so.
    Without it OpenSSL asks for the passphrase itself, on the process's terminal (or its stdin and stderr): a start
    that never ended, a thread left reading the terminal, `Enter PEM pass phrase:` written into the log."""
    raise EncryptedKey("the key is encrypted with a passphrase, which jsonexporter does not take: give it the key decrypted "
                       "(openssl pkey -in KEY -out DECRYPTED_KEY), readable by the exporter alone")


def _read(path: str) -> str:
    return read_bounded(path, MAX_SECRET_BYTES).decode("utf-8").rstrip("\r\n")


class SecretFiles:
    """The reads in flight, by path (or by what `run` was given)."""

    def __init__(self) -> None:
        self._reads: dict[Hashable, asyncio.Future[Any]] = {}

    async def read(self, path: str, timeout: float = SECRET_READ_TIMEOUT) -> str:
        """The file's text without its final newline, read now. Raises OSError (its strerror says why,
        `no answer within …` for a read slower than `timeout` seconds) or UnicodeDecodeError."""
        return await self.run(path, f"secret-file {path}", lambda: _read(path), timeout)

    async def run(self, key: Hashable, name: str, work: Callable[[], T], timeout: float = SECRET_READ_TIMEOUT) -> T:
        """`work()` (blocking file I/O) in a thread named `name`, shared by the concurrent callers of `key`;
        raises what it raises, or OSError(ETIMEDOUT) when it takes longer than `timeout` seconds."""
        future = self._reads.get(key)
        if future is None:
            future = self._reads[key] = self._start(key, name, work)
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                result: T = await asyncio.shield(future)
                return result
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, f"no answer within {timeout:g}s") from None

    def _start(self, key: Hashable, name: str, work: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: every reader may have given up

        def settle(value: T | None, error: BaseException | None) -> None:
            if self._reads.get(key) is future:
                del self._reads[key]
            if not future.done():
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(value)  # type: ignore[arg-type]  # set only when work() returned it

        def run() -> None:
            value, error = None, None
            try:
                value = work()
            except Exception as exc:  # the caller's to judge; the thread only carries it over
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, value, error)

        threading.Thread(target=run, name=name, daemon=True).start()
        return future
