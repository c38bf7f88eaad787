"""Answers reused for an endpoint's `cache_ttl`, and identical concurrent requests coalesced into
one upstream call; with `stale_while_revalidate`, an answer past its ttl served at once while one
background request refreshes it. Bounded in entries and in the bytes of the parsed answers (an estimate
from each body: parsed_size); least recently used entries go first."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from jsonexporter.upstream.detached import Detached

DEFAULT_MAX_ENTRIES = 1024
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# an answer of unknown parsed size counts as the densest JSON does parsed (`[[]],…`: docs/deployment.md#memory)
PARSED_PER_BYTE = 38


def parsed_size(body: bytes) -> int:
    """An estimate of what `body` takes in memory parsed, from its structure (each object, array, element,
    key and string its own Python object), never under it: the cache's bound is one of memory. Measured with
    tracemalloc against orjson and json parses of 1-2 MB bodies: 1.3 to 2.4 times the parsed size for objects,
    arrays, numbers and strings, 3.5 for `[{},…]`, 6.5 for one-digit numbers; tests/test_refresh.py holds it
    never under for random documents of every kind of string. A string costs CPython 40 bytes and a byte per
    character when it is ASCII, 56 and 1, 2 or 4 bytes per character otherwise (Latin-1, the BMP, beyond it): a
    body counts 24 bytes a string (a pair of quotes), 64 with a byte beyond ASCII or a `\\u` escape, and one
    that may hold a character beyond U+FFFF (a 4-byte UTF-8 sequence, or a `\\ud…` surrogate escape) 5 bytes
    per byte of it instead of 2 (an array of `"é"` took 1.41 times the estimate of two bytes a byte alone)."""
    wide = any(lead in body for lead in (b"\xf0", b"\xf1", b"\xf2", b"\xf3", b"\xf4", b"\\ud", b"\\uD"))
    per_string = 24 if body.isascii() and b"\\u" not in body else 64
    return ((5 if wide else 2) * len(body) + 200 * body.count(b"{") + 80 * body.count(b"[") + 48 * body.count(b",") + 96 * body.count(b":")
            + per_string * (body.count(b'"') // 2) + 64)


@dataclass(frozen=True, slots=True)
class Answer:
    """A good upstream answer: the parsed document, its status and size."""

    document: Any
    status: int
    bytes: int
    pages: int | None = None  # with pagination: the pages it was made of
    size: int | None = None  # what the document takes in memory (parsed_size); None: PARSED_PER_BYTE times `bytes`

    @property
    def weight(self) -> int:
        """What the answer counts for against the cache's bound: its parsed size, never its body's."""
        return self.size if self.size is not None else self.bytes * PARSED_PER_BYTE


@dataclass(slots=True)
class _Entry:
    answer: Answer
    stored: float  # monotonic


@dataclass(frozen=True, slots=True)
class Lookup:
    answer: Answer | None  # None: the upstream failed and nothing usable was cached
    age: float  # seconds since the answer was fetched (0: fetched for this probe)
    # miss, hit, coalesced, stale, revalidate (served stale while a background request refreshes it), deferred (served
    # stale with none refreshing it: the requests no probe waits for are at their bound, detached.py)
    result: str
    failure: Any = None  # what the fetch returned when it failed


Fetch = Callable[[], Coroutine[Any, Any, tuple[Answer | None, Any]]]


class ResponseCache:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES, detached: Detached | None = None) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.detached = detached if detached is not None else Detached()  # the fetches no probe waits for (detached.py)
        self.bytes = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[tuple[Answer | None, Any]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str, ttl: float, stale_for: float | None, fetch: Fetch, wait: float,
                  revalidate_for: float | None = None, revalidate: Fetch | None = None) -> Lookup:
        """A fresh cached answer, or the result of one fetch shared by every concurrent caller of
        `key`; with `stale_for`, a failed fetch falls back to an answer younger than that.
        Each caller waits at most `wait` seconds; the shared fetch goes on for the others, within `detached`'s bound.
        With `revalidate_for`, an answer older than `ttl` by less than that is returned at once,
        and `revalidate` (bounded by its caller) refreshes it in the background unless a fetch of `key` is in flight
        ("revalidate"), or `detached` has no room ("deferred")."""
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and now - entry.stored < ttl:
            self._entries.move_to_end(key)
            return Lookup(entry.answer, now - entry.stored, "hit")
        if entry is not None and revalidate_for is not None and revalidate is not None and now - entry.stored < ttl + revalidate_for:
            self._entries.move_to_end(key)
            if key not in self._inflight:
                if not self.detached.room():  # no revalidation: the next probe within the window tries again
                    return Lookup(entry.answer, now - entry.stored, "deferred")
                self.detached.background(self._start(key, revalidate), self._forget(key))
            return Lookup(entry.answer, now - entry.stored, "revalidate")
        task = self._inflight.get(key)
        result = "coalesced"
        if task is None:
            result = "miss"
            task = self._start(key, fetch)
        try:
            answer, failure = await self.detached.wait(task, wait, self._forget(key))
        except TimeoutError:
            answer, failure = None, TimeoutError()
        if answer is not None:
            return Lookup(answer, 0.0, result)
        entry = self._entries.get(key)
        if stale_for is not None and entry is not None and time.monotonic() - entry.stored < stale_for:
            return Lookup(entry.answer, time.monotonic() - entry.stored, "stale", failure)
        return Lookup(None, 0.0, result, failure)

    def discard(self, key: str) -> None:
        """Let go of the answer of `key`: its request is one no probe makes any more."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.answer.weight

    def carry(self, key: str, to: str) -> None:
        """The answer of `key` kept under `to` instead, as old as it is: the same request with other credentials (an OAuth2
        token refused and replaced, fetch.fetch_one), so that stale_if_error goes on serving it within its window."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        if to in self._entries:  # the new credentials have an answer of their own
            self.bytes -= entry.answer.weight
        else:
            self._entries[to] = entry

    def _start(self, key: str, fetch: Fetch) -> asyncio.Task[tuple[Answer | None, Any]]:
        """The one fetch of `key` in flight: held here, so that no caller's end cancels it (close() does)."""
        task = asyncio.create_task(fetch())
        self._inflight[key] = task
        task.add_done_callback(lambda t, key=key: self._settle(key, t))  # type: ignore[misc]
        return task

    async def close(self) -> None:
        """Cancel the fetches in flight (the app stops): none outlives the session it uses."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _forget(self, key: str) -> Callable[[], object]:
        """Let go of the fetch of `key` in flight (`detached` cancels it): the next caller starts another."""
        return lambda: self._inflight.pop(key, None)

    def _settle(self, key: str, task: asyncio.Task[tuple[Answer | None, Any]]) -> None:
        if self._inflight.get(key) is task:  # not the one started after this one was let go
            del self._inflight[key]
        if task.cancelled() or task.exception() is not None:
            return
        answer, _ = task.result()
        if answer is not None:
            self._store(key, answer)

    def _store(self, key: str, answer: Answer) -> None:
        """Keep `answer`, counted by its parsed size (Answer.weight; `bytes` is their sum), the least recently used going first."""
        if answer.weight > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.answer.weight
        self._entries[key] = _Entry(answer, time.monotonic())
        self.bytes += answer.weight
        while self._entries and (len(self._entries) > self.max_entries or self.bytes > self.max_bytes):
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.answer.weight
