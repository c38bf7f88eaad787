"""Long computations in slices, so that one big answer does not hold the event loop.

Extraction and rendering are written as generators that yield between small steps. `run` goes
through all the steps at once. `run_sliced` does too, but lets the event loop serve whatever is
waiting (other probes, /-/healthy) each time a slice of `SLICE_SECONDS` has been used: three
turns of the loop, enough for a request that arrived meanwhile to be answered.

The computations of an event loop take turns, one at a time: rendering before extraction
before parsing, so that a probe that has begun goes on to its answer and lets go of its
document and series, instead of keeping them while the others parse and extract (waiting
answers are kept as bytes, a few times smaller than parsed). Interleaving them all would keep
every probe's document and series in memory at once, and make each turn of the loop as long
as all of their slices together. A turn let go is handed on at the next turn of the loop, not at
once, so that the probe letting go can ask for its next turn first (it parsed: now it extracts),
and only one probe's document and series are alive at a time, whatever the number of probes.

A computation may have a deadline (a `loop.time()`): it raises DeadlinePassed when the deadline
passes while it waits for its turn, between two slices, or before its last step ends (a computation of one
step that took longer than its deadline, say one rule of one element, is late as any other), so that a probe
whose time is up answers at once instead of computing what nobody reads, and never answers late as if in time.
Within a step, work that may be long (one JMESPath evaluation: spec/evaluation.py) reads the deadline of
the computation running, `current_deadline()`, and raises DeadlinePassed itself: a BaseException, as
asyncio's CancelledError, so that no `except Exception` of the work (a series' error) takes it for its own.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import weakref
from collections.abc import Generator, Iterable
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")
Steps = Generator[None, None, T]

# Longest the event loop is held by one computation (the last step may overrun it: extract.py keeps
# steps around 1 ms). A request to /-/healthy waits for the rest of one slice (see _pause): with 5 ms
# slices and one loop turn between them, its p99 was 52-136 ms under 8 probes of bench/'s 2.1 MB
# answer on a busy 2-core machine, 18-21 ms with these (bench/README.md).
SLICE_SECONDS = 0.002
RENDER, EXTRACT, PARSE = 0, 1, 2  # priorities of the turns: lower first, so that a probe goes on to the end


class DeadlinePassed(BaseException):
    """The deadline of a computation passed before it ended."""


# The deadline (a time.monotonic(), asyncio's loop.time()) of the computation `run` or `run_sliced` runs in this
# context (a task, or the thread off any loop); None outside one. A context variable: a task's, not the loop's
_deadline: ContextVar[float | None] = ContextVar("deadline", default=None)
current_deadline = _deadline.get


class _Turns:
    """A lock whose waiters are served by priority, then in order of arrival."""

    def __init__(self) -> None:
        self._busy = False
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    def turn(self, priority: int, deadline: float | None = None) -> _Turn:
        return _Turn(self, priority, deadline)

    async def _wait(self, priority: int, deadline: float | None) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrivals), future))
        # the deadline fails the future itself: a timer, without an asyncio.timeout's cancelling of the task (3.7 -> about 1 us)
        timer = loop.call_at(deadline, _expire, future) if deadline is not None else None
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # handed the turn as it was cancelled: pass it on
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _release(self) -> None:
        if not self._waiting:
            self._busy = False
            return
        asyncio.get_running_loop().call_soon(self._hand_over)  # see the module docstring: still busy until then

    def _hand_over(self) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():  # not cancelled meanwhile
                future.set_result(None)
                return  # handed over: still busy
        self._busy = False


class _Turn:
    """`async with` a turn: a class, not a contextlib generator (a turn without waiting 6 µs -> 2; a probe takes 3)."""

    __slots__ = ("_deadline", "_priority", "_turns")

    def __init__(self, turns: _Turns, priority: int, deadline: float | None) -> None:
        self._turns, self._priority, self._deadline = turns, priority, deadline

    async def __aenter__(self) -> None:
        turns = self._turns
        if turns._busy:
            await turns._wait(self._priority, self._deadline)  # raising, it has not taken the turn: nothing to let go
        else:
            turns._busy = True

    async def __aexit__(self, *exc_info: object) -> None:
        self._turns._release()


_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Turns] = weakref.WeakKeyDictionary()
# the last loop asked for and its turns: a server has one loop, and WeakKeyDictionary.get is Python code that makes a
# weak reference at each call (3 turns a probe)
_last: tuple[weakref.ref[asyncio.AbstractEventLoop], _Turns] | None = None


def _loop_turns() -> _Turns:
    global _last
    loop = asyncio.get_running_loop()
    last = _last
    if last is not None and last[0]() is loop:
        return last[1]
    turns = _turns.get(loop)
    if turns is None:
        turns = _turns[loop] = _Turns()
    _last = (weakref.ref(loop), turns)
    return turns


def turn(priority: int, deadline: float | None = None) -> _Turn:
    """The turn of this event loop's computations (`async with turn(RENDER): ...`); DeadlinePassed
    when `deadline` (a loop.time()) passes before it comes."""
    return _loop_turns().turn(priority, deadline)


def turn_free() -> bool:
    """Whether this event loop's turn is free now: then a computation that awaits nothing may run without taking
    it, as nothing else can run before it ends (no turn, no `async with`: two coroutines fewer)."""
    return not _loop_turns()._busy


def _pause() -> asyncio.Future[None]:
    """Three turns of the event loop for the others: a request that arrived during the slice is read
    in the first, aiohttp's connection task wakes in the second and its handler runs in the third,
    before the computation goes on (after one turn, `sleep(0)`, the next slice would come first, and
    the handler would wait for two more)."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    loop.call_soon(loop.call_soon, loop.call_soon, _wake, future)
    return future


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():  # neither handed the turn nor cancelled meanwhile
        future.set_exception(DeadlinePassed())


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():  # not cancelled meanwhile
        future.set_result(None)


def _check(deadline: float | None) -> None:
    if deadline is not None and asyncio.get_running_loop().time() >= deadline:
        raise DeadlinePassed


def run(steps: Steps[T], deadline: float | None = None) -> T:
    """All the steps at once, off any event loop (`probe --input`, `jsonexporter test`); DeadlinePassed
    when `deadline`, a time.monotonic() (the clock of asyncio's loop.time()), passes before the end, as
    in `run_sliced`."""
    token = _deadline.set(deadline)
    try:
        if deadline is None:
            while True:
                next(steps)
        clock = time.perf_counter
        until = clock() + SLICE_SECONDS
        while True:
            next(steps)
            if clock() >= until:
                if time.monotonic() >= deadline:
                    raise DeadlinePassed
                until = clock() + SLICE_SECONDS
    except StopIteration as done:
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlinePassed from None  # the last step ended past it: as if it had passed between two
        result: T = done.value
        return result
    finally:
        _deadline.reset(token)


async def run_sliced(steps: Steps[T], priority: int = EXTRACT, slice_seconds: float = SLICE_SECONDS, deadline: float | None = None) -> T:
    """`run` in a turn, pausing every `slice_seconds`; DeadlinePassed when `deadline` (a
    loop.time()) passes before the end."""
    clock = time.perf_counter
    turns = _loop_turns()  # the turn taken as _Turn does, without its two coroutines (a probe's extraction takes one)
    if turns._busy:
        await turns._wait(priority, deadline)  # raising, it has not taken the turn: nothing to let go
    else:
        turns._busy = True
    try:
        until = clock() + slice_seconds
        token = _deadline.set(deadline)
        try:
            while True:
                next(steps)
                if clock() >= until:
                    _check(deadline)
                    await _pause()
                    _check(deadline)
                    until = clock() + slice_seconds
        except StopIteration as done:
            _check(deadline)  # the last step ended past it: as if it had passed between two (run's too)
            result: T = done.value
            return result
        finally:
            _deadline.reset(token)
    finally:
        turns._release()


async def collected(items: Iterable[T], slice_seconds: float = SLICE_SECONDS, deadline: float | None = None) -> list[T]:
    """The items of a generator that computes them, pausing every `slice_seconds`; the caller
    holds the turn. DeadlinePassed as in `run_sliced`. A coroutine, not an async generator: an
    answer written within its first slice (most are) costs one call, not one per item and the end."""
    clock = time.perf_counter
    until = clock() + slice_seconds
    out: list[T] = []
    for item in items:
        out.append(item)
        if clock() >= until:
            _check(deadline)
            await _pause()
            _check(deadline)
            until = clock() + slice_seconds
    return out
