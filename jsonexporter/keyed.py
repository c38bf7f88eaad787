"""Keyed hashes for the keys kept in memory of what may be a credential: a cached request with its token or
a login's values, a login session's request, a schedule's login scope, a web user's password. A key drawn
per process, drawn again in each forked worker: a key seen anywhere (a memory dump, a page) cannot be tried
against guessed values, and means nothing in another process (each --web.workers worker keeps its own
caches).

BLAKE2b in its keyed mode, a MAC by design (RFC 7693) as HMAC-SHA256 is, at a plain hash's cost: 0.7-1.0 us
for a cache key's 120 bytes against HMAC's 2.4-2.9 us (timeit, the same run), and a probe of a cached
endpoint computes two (fetch._cache_key, client.RequestOptions.identity)."""

from __future__ import annotations

import hashlib
import os

_KEY = os.urandom(32)


def _draw_again() -> None:
    global _KEY
    _KEY = os.urandom(32)


os.register_at_fork(after_in_child=_draw_again)  # each --web.workers worker its own key, as its own caches


def keyed_hash(data: bytes = b"") -> hashlib.blake2b:
    """A hash of `data` under this process's key; `update` it with more."""
    return hashlib.blake2b(data, key=_KEY, digest_size=32)


def keyed_digest(text: str) -> str:
    """The hex digest of `text` under this process's key."""
    return keyed_hash(text.encode()).hexdigest()
