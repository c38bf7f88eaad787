"""Long computations in slices, so that one big answer does not hold the event loop.

Extraction and rendering are written as generators that yield between small steps. `run` goes
through all the steps at once. `run_sliced` does too, but lets the event loop serve whatever is
waiting (other probes, /-/healthy) each time a slice of `SLICE_SECONDS` has been used.

The computations of an event loop take turns, one at a time: rendering before extraction
before parsing, so that a probe that has begun goes on to its answer and lets go of its
document and series, instead of keeping them while the others parse and extract (waiting
answers are kept as bytes, a few times smaller than parsed). Interleaving them all would keep
every probe's document and series in memory at once, and make each turn of the loop as long
as all of their slices together.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
import weakref
from collections.abc import AsyncIterator, Generator, Iterable
from typing import TypeVar

T = TypeVar("T")
Steps = Generator[None, None, T]

SLICE_SECONDS = 0.005  # longest the event loop is held by one computation
RENDER, EXTRACT, PARSE = 0, 1, 2  # priorities of the turns: lower first, so that a probe goes on to the end


class _Turns:
    """A lock whose waiters are served by priority, then in order of arrival."""

    def __init__(self) -> None:
        self._busy = False
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @contextlib.asynccontextmanager
    async def turn(self, priority: int) -> AsyncIterator[None]:
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        if not self._busy:
            self._busy = True
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrivals), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # handed the turn as it was cancelled: pass it on
            raise

    def _release(self) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():  # not cancelled meanwhile
                future.set_result(None)
                return  # handed over: still busy
        self._busy = False


_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Turns] = weakref.WeakKeyDictionary()


def turn(priority: int) -> contextlib.AbstractAsyncContextManager[None]:
    """The turn of this event loop's computations (`async with turn(RENDER): ...`)."""
    loop = asyncio.get_running_loop()
    turns = _turns.get(loop)
    if turns is None:
        turns = _turns[loop] = _Turns()
    return turns.turn(priority)


def run(steps: Steps[T]) -> T:
    try:
        while True:
            next(steps)
    except StopIteration as done:
        result: T = done.value
        return result


async def run_sliced(steps: Steps[T], priority: int = EXTRACT, slice_seconds: float = SLICE_SECONDS) -> T:
    """`run` in a turn, pausing every `slice_seconds`."""
    clock = time.perf_counter
    async with turn(priority):
        until = clock() + slice_seconds
        try:
            while True:
                next(steps)
                if clock() >= until:
                    await asyncio.sleep(0)  # one turn of the event loop for the others
                    until = clock() + slice_seconds
        except StopIteration as done:
            result: T = done.value
            return result


async def sliced(items: Iterable[T], slice_seconds: float = SLICE_SECONDS) -> AsyncIterator[T]:
    """The items of a generator that computes them, pausing every `slice_seconds`; the caller
    holds the turn."""
    clock = time.perf_counter
    until = clock() + slice_seconds
    for item in items:
        yield item
        if clock() >= until:
            await asyncio.sleep(0)
            until = clock() + slice_seconds
