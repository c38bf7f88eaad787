"""Where a spec comes from: one file, or the files of a directory or a glob, whose modules form one spec.

`--config.file` (serve, probe) and `check`'s arguments name a source. A directory stands for every
`*.yml` and `*.yaml` file directly in it (not in its subdirectories, not hidden ones), a glob for
the files it matches; both sorted by name. The files are read together and bounded together.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

MAX_SPEC_BYTES = 8 * 1024 * 1024  # of one file, and of all the files of a source together
MAX_SPEC_FILES = 1000
# of a secret file (a module's `secrets`, http_client_config's *_file, one read at a module's declaration): a password,
# a token or a certificate key is far less; more is a wrong path (a log file, /dev/zero)
MAX_SECRET_BYTES = 65536
# a spec file answers in milliseconds; a slower one (a FIFO nobody writes, a hung mount) is unreadable:
# a reload fails, keeping the spec it has, rather than never answering and holding the process at exit
SPEC_READ_TIMEOUT = 2.0
_SUFFIXES = (".yml", ".yaml")


class SpecFileError(Exception):
    """A source that gives no spec to check: a file that cannot be read, an empty directory, a glob
    matching nothing. Its text is the whole message, starting with the file or source."""


def read_spec_text(file: str, timeout: float = SPEC_READ_TIMEOUT) -> str:
    """Read a spec file (or the web config), refusing absurd sizes and reads slower than `timeout`
    seconds; OSError (`no answer within …`, `larger than …`) and UnicodeDecodeError propagate."""
    return read_bounded_bytes(file, MAX_SPEC_BYTES, timeout).decode("utf-8")


def read_bounded(file: str, limit: int) -> bytes:
    """The bytes of `file`, at most `limit` of them; OSError beyond (its strerror `larger than …`). Blocks: the
    one read of every file the exporter reads (specs, the web config, secret and TLS files), each in a thread
    of its own, here (read_bounded_bytes) or the upstream side's (upstream/files.py)."""
    with open(file, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", file)
    return data


def read_bounded_bytes(file: str, limit: int, timeout: float = SPEC_READ_TIMEOUT) -> bytes:
    """read_bounded within `timeout` seconds (as a spec file is); OSError beyond either (its strerror
    `larger than …`, `no answer within …`)."""
    return _bounded_read(file, limit, timeout)


@dataclass
class _Read:
    done: threading.Event = field(default_factory=threading.Event)
    data: bytes = b""
    error: OSError | None = None


# The reads of configuration files in flight, by path and limit. Process-wide as the threads are: a read stuck
# in the kernel (a FIFO nobody writes, a hung mount) cannot be stopped, and a reload every few seconds would
# otherwise leave one more stuck thread each time; the next reads of that path wait for it. Only those with
# the same limit: a read made with a larger one would give a caller more than it asked for, a smaller one
# refuse a file within its limit. The limits are the exporter's few constants (and `probe --input`'s).
_reads: dict[tuple[str, int], _Read] = {}
_reads_lock = threading.Lock()


def _bounded_read(file: str, limit: int, timeout: float) -> bytes:
    """read_bounded(file, limit) in a daemon thread of its own (one per path and limit at a time): a read that
    never ends holds neither the caller beyond `timeout` nor the process at exit."""
    with _reads_lock:
        read = _reads.get((file, limit))
        if read is None:
            read = _reads[file, limit] = _Read()
            threading.Thread(target=_read_into, args=(file, limit, read), name=f"config-file {file}", daemon=True).start()
    if not read.done.wait(timeout):
        raise OSError(errno.ETIMEDOUT, f"no answer within {timeout:g}s (a FIFO or device nobody writes, or a hung mount?)", file)
    if (error := read.error) is not None:  # a copy: other callers may raise the same one
        raise type(error)(error.errno, error.strerror, error.filename) if error.errno is not None else type(error)(*error.args)
    return read.data


def _read_into(file: str, limit: int, read: _Read) -> None:
    try:
        read.data = read_bounded(file, limit)
    except OSError as exc:
        read.error = exc
    finally:
        with _reads_lock:
            if _reads.get((file, limit)) is read:
                del _reads[file, limit]
        read.done.set()


def is_spec_set(source: str) -> bool:
    """True when `source` names several files (a directory or a glob), not one file."""
    return os.path.isdir(source) or (glob.has_magic(source) and not os.path.exists(source))


def spec_files(source: str) -> list[str]:
    """The files of `source`, sorted; SpecFileError when a directory or glob gives none."""
    if os.path.isdir(source):
        try:
            listed = os.listdir(source)
        except OSError as exc:
            raise SpecFileError(f"{source}: cannot read: {exc.strerror or exc}") from None
        # hidden names left out: editors' files, and the `..data` links of a Kubernetes ConfigMap mount
        names = sorted(n for n in listed if n.endswith(_SUFFIXES) and not n.startswith("."))
        # a link to nothing is kept: reading it says what is missing
        files = [f for n in names if not os.path.isdir(f := os.path.join(source, n))]
        if not files:
            raise SpecFileError(f"{source}: no spec in this directory: it holds no *.yml or *.yaml file (subdirectories are not read)")
    elif is_spec_set(source):
        files = sorted(f for f in glob.glob(source) if os.path.isfile(f))
        if not files:
            raise SpecFileError(f"{source}: no spec: the glob matches no file")
    else:
        return [source]
    if len(files) > MAX_SPEC_FILES:
        raise SpecFileError(f"{source}: {len(files)} files, more than the {MAX_SPEC_FILES} a spec may have")
    return files


def read_spec_files(source: str) -> list[tuple[str, str]]:
    """(file, text) of every file of `source`; SpecFileError, naming the file, when one cannot be read."""
    texts: list[tuple[str, str]] = []
    total = 0
    for file in spec_files(source):
        try:
            text = read_spec_text(file)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).removeprefix(f"{file}: ")
            raise SpecFileError(f"{file}: cannot read: {reason}") from None
        total += len(text.encode())
        if total > MAX_SPEC_BYTES:
            raise SpecFileError(f"{source}: its files are larger than {MAX_SPEC_BYTES} bytes together")
        texts.append((file, text))
    return texts


def spec_sha256(source: str, texts: Sequence[tuple[str, str]]) -> str:
    """The SHA-256 of one file's text; of a directory or glob, that of its `sha256sum` listing, so
    that a file added, removed, renamed or changed changes it."""
    if len(texts) == 1 and texts[0][0] == source:
        return hashlib.sha256(texts[0][1].encode()).hexdigest()
    listing = "".join(f"{hashlib.sha256(text.encode()).hexdigest()}  {file}\n" for file, text in texts)
    return hashlib.sha256(listing.encode()).hexdigest()
