"""Endpoints with `refresh_interval`: each request fetched in the background on its schedule, so that
a probe uses the latest answer and never waits for the API, but for a request's very first answer.

A schedule is one request: its endpoint and the probe's values, rendered afresh at each refresh by
the caller's fetch (the path every probe's request takes). Modules without a target get theirs at load
(`pin`); a request of a module with a target joins at its first probe and leaves after IDLE_INTERVALS
intervals without one (never sooner than `min_idle`); at most `max_requests` of those run at once. The
answers kept are bounded by their parsed size (Answer.weight, as the cache's): beyond `max_bytes`, the
answers of the schedules probed least recently go first, and their next probe waits for a request as a
first one does."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jsonexporter.keyed import keyed_digest
from jsonexporter.logs import kv
from jsonexporter.spec.model import DEFAULT_REFRESH_MAX_BYTES, DEFAULT_REFRESH_MAX_REQUESTS, DEFAULT_REFRESH_MIN_IDLE, Endpoint, Module
from jsonexporter.spec.problems import fault
from jsonexporter.upstream.cache import Answer, Lookup

if TYPE_CHECKING:
    from jsonexporter.upstream.fetch import EndpointResult

log = logging.getLogger("jsonexporter")

# Without a probe for this many intervals, a request leaves its schedule: a scraper that stopped, or a
# target asked once. Three: a scrape that comes late, or one lost, does not stop it.
IDLE_INTERVALS = 3


@dataclass(frozen=True, slots=True)
class Job:
    """What a background request is made of: rendered again each time from the endpoint and the probe's
    values (target, module, parameters), never kept rendered."""

    module: Module
    endpoint: Endpoint
    values: Mapping[str, str] = field(repr=False)  # a parameter may be a credential
    whole: bool = False  # the answer parsed whole (a traced probe's), not projected for the rules (spec/projection.py)

    @property
    def budget(self) -> float:
        """Seconds a background request, or one shared by the probes that wait for it (the cache's one fetch
        of a key), may take: the endpoint's timeout, else its module's. Never the time left to the probe
        that happens to start it: one with a short scrape timeout would fail every probe coalesced onto it;
        each of them waits within its own deadline."""
        return self.endpoint.timeout if self.endpoint.timeout is not None else self.module.timeout


def login_scope(job: Job) -> str:
    """The probe's values that the module's login request reads (not its secrets'), as a keyed hash (keyed.py):
    a login whose own request carries a per-user parameter (`?user=`) the endpoint's lacks gives each
    user a session of their own, so the endpoint's answers differ by user though its request, rendered
    with the login's values by their names (fetch.render_job), does not. Empty without a login."""
    login = job.module.login
    if login is None:
        return ""
    names = sorted(login.request.placeholders - set(job.module.secret_names))
    read = "\0".join(f"{name}\0{job.values.get(name, '')}" for name in names)
    return keyed_digest(read)


JobFetch = Callable[[Job], Coroutine[Any, Any, tuple[Answer | None, Any]]]


class Events:
    """What the schedules and the background requests report (the server's self-metrics); here: nothing."""

    def fetched(self, job: Job, result: EndpointResult) -> None:
        """A background request ended (a schedule's, or a stale answer's revalidation)."""

    def unscheduled(self, job: Job) -> None:
        """A probe fetched the endpoint itself: every scheduled place was taken."""

    def scheduled(self, count: int) -> None:
        """The number of scheduled requests changed."""

    def evicted(self, job: Job) -> None:
        """A schedule's answer was let go: the answers kept were over --refresh.max-bytes."""

    def logged_in(self, module: str, result: str) -> None:
        """A login request of `module` ended: success, its request's outcome, or invalid_answer (no usable values)."""

    def sessions(self, by_module: Mapping[str, int]) -> None:
        """The login sessions kept changed: their number by module, every module that has one."""


@dataclass(eq=False)
class Schedule:
    key: Hashable
    job: Job
    pinned: bool  # started at load, for a module without a target: never leaves for want of probes
    answer: Answer | None = None  # the latest good answer
    stored: float = 0.0  # monotonic, when it came
    failure: Any = None  # what the latest refresh gave when it failed; None after a success
    last_probe: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    attempt: asyncio.Task[Answer | None] | None = None  # the request in flight, giving its good answer
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class Schedules:
    def __init__(self, fetch: JobFetch, max_requests: int = DEFAULT_REFRESH_MAX_REQUESTS, min_idle: float = DEFAULT_REFRESH_MIN_IDLE,
                 events: Events | None = None, max_bytes: int = DEFAULT_REFRESH_MAX_BYTES) -> None:
        self.fetch = fetch
        self.max_requests = max_requests
        self.min_idle = min_idle
        self.events = events or Events()
        self.max_bytes = max_bytes
        self.bytes = 0  # the weight of the answers the schedules keep
        self._schedules: dict[Hashable, Schedule] = {}

    def __len__(self) -> int:
        return len(self._schedules)

    def __iter__(self) -> Iterator[Schedule]:
        return iter(list(self._schedules.values()))

    def get_schedule(self, key: Hashable) -> Schedule | None:
        return self._schedules.get(key)

    async def get(self, key: Hashable, job: Job, wait: float) -> Lookup | None:
        """The latest answer of `key`'s schedule, joined now if need be; only a request that never had a good
        answer waits for one (at most `wait` seconds). None: no place left, the caller fetches itself."""
        s = self._schedules.get(key)
        if s is None:
            if sum(not s.pinned for s in self._schedules.values()) >= self.max_requests:
                self.events.unscheduled(job)
                return None
            s = self._start(key, job, pinned=False)
        s.last_probe = time.monotonic()
        result = "scheduled"
        if s.answer is None:
            result = "first"
            try:
                fetched = await asyncio.wait_for(asyncio.shield(self._attempt(s)), max(wait, 0.0))
            except TimeoutError:
                return Lookup(None, 0.0, result, None)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                return Lookup(None, 0.0, result, None)  # a reload stopped the schedule meanwhile: this probe did not end
            if s.answer is None and fetched is not None:  # good, but not kept: alone larger than max_bytes
                return Lookup(fetched, 0.0, result)
        if s.answer is None:
            return Lookup(None, 0.0, result, s.failure)
        age = time.monotonic() - s.stored
        if s.failure is None:
            return Lookup(s.answer, age, result)
        stale_for = s.job.endpoint.stale_if_error
        if stale_for is not None and age < stale_for:  # not "stale": that one says the probe itself asked the upstream
            return Lookup(s.answer, age, "scheduled_stale", s.failure)
        return Lookup(None, age, result, s.failure)

    def pin(self, key: Hashable, job: Job) -> None:
        """A schedule from load on, whether probed or not (a module without a target)."""
        s = self._schedules.get(key)
        if s is None:
            self._start(key, job, pinned=True)
        else:
            s.job, s.pinned = job, True

    def keep(self, kept: Mapping[Hashable, tuple[Job, bool]]) -> None:
        """After a reload: the schedules of `kept` go on with their new job and pinned state, every other one stops."""
        for key, s in list(self._schedules.items()):
            if key in kept:
                s.job, s.pinned = kept[key]
            else:
                self._stop(s)

    async def close(self) -> None:
        """Stop every schedule and its request in flight, and wait until they have ended."""
        schedules = list(self._schedules.values())
        for s in schedules:
            self._stop(s)
        await asyncio.gather(*(t for s in schedules for t in (s.task, s.attempt) if t is not None), return_exceptions=True)

    def idle_after(self, job: Job) -> float:
        interval = job.endpoint.refresh_interval or 0.0
        return max(IDLE_INTERVALS * interval, self.min_idle)

    def _start(self, key: Hashable, job: Job, pinned: bool) -> Schedule:
        s = Schedule(key, job, pinned)
        self._schedules[key] = s
        s.task = asyncio.create_task(self._run(s))
        self.events.scheduled(len(self._schedules))
        return s

    def _stop(self, s: Schedule) -> None:
        for task in (s.task, s.attempt):
            if task is not None:
                task.cancel()
        self._forget(s)

    def _forget(self, s: Schedule) -> None:
        if self._schedules.get(s.key) is s:
            del self._schedules[s.key]
            if s.answer is not None:
                self.bytes -= s.answer.weight
            self.events.scheduled(len(self._schedules))
        s.ended.set()

    async def _run(self, s: Schedule) -> None:
        try:
            while True:
                started = time.monotonic()
                await self._attempt(s)
                if not s.pinned and time.monotonic() - s.last_probe >= self.idle_after(s.job):
                    return
                interval = s.job.endpoint.refresh_interval or 0.0  # from the job of now: a reload may have changed it
                await asyncio.sleep(max(interval - (time.monotonic() - started), 0.0))  # the schedule's period itself
        finally:
            self._forget(s)

    def _attempt(self, s: Schedule) -> asyncio.Task[Answer | None]:
        """The request in flight, or a new one: a probe waiting for a first answer and the schedule share it."""
        attempt = s.attempt
        if attempt is None or attempt.done():
            s.attempt = attempt = asyncio.create_task(self._refresh(s))
            # a finished task holds its result: the answer, which _keep may let go (max_bytes) or never keep
            # (alone beyond it). Those that awaited it have it; the schedule forgets the task, so that the
            # answer's memory goes when its count does, not at the next refresh (an interval later)
            attempt.add_done_callback(lambda t: setattr(s, "attempt", None) if s.attempt is t else None)
        return attempt

    async def _refresh(self, s: Schedule) -> Answer | None:
        job = s.job
        try:
            answer, failure = await self.fetch(job)
        except Exception as exc:  # a schedule outlives whatever one request does
            log.error("scheduled request failed unexpectedly", extra=kv(module=job.module.name, endpoint=job.endpoint.name, err=fault(exc)))
            answer, failure = None, None
        if answer is not None:
            self._keep(s, answer)
            s.stored, s.failure = time.monotonic(), None
        else:
            s.failure = failure
        return answer

    def _keep(self, s: Schedule, answer: Answer) -> None:
        """`answer` as the latest of `s`, counted by its parsed size; beyond max_bytes, the answers of the
        schedules probed least recently go, `s`'s own too when it is that one (a stopped schedule counts none)."""
        counted = self._schedules.get(s.key) is s
        if counted and s.answer is not None:
            self.bytes -= s.answer.weight
        s.answer = answer
        if not counted:
            return
        self.bytes += answer.weight
        kept = sorted((k for k in self._schedules.values() if k.answer is not None), key=lambda k: k.last_probe)
        for oldest in kept:
            if self.bytes <= self.max_bytes:
                break
            assert oldest.answer is not None
            self.bytes -= oldest.answer.weight
            oldest.answer = None
            self.events.evicted(oldest.job)
