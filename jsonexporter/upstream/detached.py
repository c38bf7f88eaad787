"""Requests of nobody's: bounded.

A request that probes share (a cached endpoint's fetch, a login) goes on when every probe waiting for it gave
up, so that the next probe finds its answer (tests/test_upstream_http.py: a short scrape timeout fails only its
own probe); a revalidation (`stale_while_revalidate`) or a login's renewal is started with no probe waiting at
all. `--web.max-concurrent-probes` bounds probes, not these: probes with a short scrape timeout, one after the
other, each leaving a fetch of another target behind, would leave as many requests going, each holding a
connection and, once read, up to `max_response_bytes`, however few probes ran at once.

`Detached` counts them: at most `limit` at once (the server's `--web.max-concurrent-probes`). Beyond it, a shared
request whose last waiter gave up is cancelled (its store forgets it at once, so that no probe joins it: the
next one starts it again), and one in the background is not started (the stale answer, or the session due for
renewal, serves, and the next probe tries again). What such a request itself waits for is waited for, so not
counted: a cached fetch left going that waits for its module's login keeps that login going too (at most one
login each, a small answer)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_LIMIT = 256  # the default of --web.max-concurrent-probes


class Detached:
    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._waiters: dict[asyncio.Task[Any], int] = {}
        self._alone: set[asyncio.Task[Any]] = set()  # shared requests in flight that no caller waits for

    def __len__(self) -> int:
        return len(self._alone)

    def room(self) -> bool:
        """Whether a request may be started in the background (`background`)."""
        return len(self._alone) < self.limit

    def background(self, task: asyncio.Task[Any], forget: Callable[[], object]) -> None:
        """`task` was started with no caller waiting for it, after `room()`; `forget` drops it from its store."""
        self._left(task, forget)

    async def wait(self, task: asyncio.Task[T], timeout: float, forget: Callable[[], object]) -> T:
        """`task`'s result, waited for at most `timeout` seconds (TimeoutError), the task going on for the others
        when this caller gives up: counted as detached when it was the last one waiting, or cancelled and
        forgotten (`forget`: its store lets go of it) when `limit` of them are going already."""
        self._waiters[task] = self._waiters.get(task, 0) + 1
        self._alone.discard(task)
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(timeout, 0.0))
        finally:
            waiting = self._waiters.pop(task) - 1
            if waiting:
                self._waiters[task] = waiting
            elif not task.done():
                self._left(task, forget)

    def _left(self, task: asyncio.Task[Any], forget: Callable[[], object]) -> None:
        if len(self._alone) >= self.limit:
            forget()
            task.cancel()
            return
        self._alone.add(task)
        task.add_done_callback(self._alone.discard)
