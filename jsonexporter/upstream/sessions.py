"""Login sessions: the values a module's login gave, kept per login request (module, target, secrets)
until they are due for renewal. However many probes need a new login at once, one login is made and
they all wait for it. Bounded in sessions; the least recently used go first."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonexporter.upstream.detached import Detached

# One session per (module, target, secrets): an exporter probing a fleet of appliances keeps one per
# appliance. Each holds at most 8 values (the schema's bound), which the Redactor holds while the
# session lives (login.prepare): never forgotten while in use, whatever its learned budget; a session whose
# values would take those in use beyond secrets.HELD_BUDGET is not used (its probes fail with login_failed).
MAX_SESSIONS = 256


@dataclass(frozen=True, slots=True, weakref_slot=True)  # the Redactor keeps its values while it lives
class Session:
    """What one login gave; times are time.monotonic()."""

    values: Mapping[str, str] = field(repr=False)
    made: float
    renew_at: float
    expires_at: float


class LoginFailed(Exception):
    """The login gave no usable values; the message names what failed, never a value."""


@dataclass(frozen=True, slots=True)
class Obtained:
    session: Session
    how: str  # made (by this caller), coalesced (made for a concurrent one), reused, renewing (reused, a renewal under way)


# makes a login; its argument says whether a caller waits for it (False: a renewal in the background)
Login = Callable[[bool], Coroutine[Any, Any, Session]]


class LoginStore:
    def __init__(self, max_sessions: int = MAX_SESSIONS, detached: Detached | None = None) -> None:
        self.max_sessions = max_sessions
        self.detached = detached if detached is not None else Detached()  # the logins no probe waits for (detached.py)
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[Session]] = {}
        self._modules: dict[str, str] = {}  # key -> the module whose session it is, for `changed`
        # called with the number of sessions by module whenever it changes (the self-metrics)
        self.changed: Callable[[Mapping[str, int]], None] = lambda by_module: None

    def __len__(self) -> int:
        return len(self._sessions)

    async def get(self, key: str, login: Login, wait: float, rejected: Session | None = None, module: str = "") -> Obtained:
        """The session of `key`, logging in when there is none or it is due for renewal, or when it is
        `rejected` (an endpoint answered 401 or 403 with it). A session due for renewal but not expired is
        returned at once and renewed in the background (a failed renewal keeps it, and the next probe tries
        again), unless `detached` has no room. Otherwise waits at most `wait` seconds (TimeoutError); a shared
        login goes on for the others, within `detached`'s bound.
        `module` is the module whose session `key` is."""
        self._modules[key] = module
        current = self._sessions.get(key)
        if current is not None and current is rejected:
            del self._sessions[key]
            self._report()
            current = None
        now = time.monotonic()
        if current is not None and now < current.renew_at:
            self._sessions.move_to_end(key)
            return Obtained(current, "reused")
        if current is not None and now < current.expires_at:  # due, still valid: renewed while probes go on using it
            self._sessions.move_to_end(key)
            if key not in self._inflight:
                if not self.detached.room():  # no renewal now: the next probe tries again
                    return Obtained(current, "reused")
                self.detached.background(self._start(key, login, False), self._forget(key))
            return Obtained(current, "renewing")
        task = self._inflight.get(key)
        how = "coalesced"
        if task is None:
            how = "made"
            task = self._start(key, login, True)
        return Obtained(await self.detached.wait(task, wait, self._forget(key)), how)

    async def close(self) -> None:
        """Cancel the logins in flight (the app stops): none outlives the session it uses."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, key: str, login: Login, waited: bool) -> asyncio.Task[Session]:
        task = asyncio.create_task(login(waited))
        self._inflight[key] = task
        task.add_done_callback(lambda t, key=key: self._settle(key, t))  # type: ignore[misc]
        return task

    def _forget(self, key: str) -> Callable[[], object]:
        """Let go of the login of `key` in flight (`detached` cancels it): the next caller starts another."""
        return lambda: self._inflight.pop(key, None)

    def _settle(self, key: str, task: asyncio.Task[Session]) -> None:
        if self._inflight.get(key) is task:  # not the one started after this one was let go
            del self._inflight[key]
        if not task.cancelled() and task.exception() is None:  # retrieved: every waiter may have given up
            self._sessions.pop(key, None)
            self._sessions[key] = task.result()
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        for gone in self._modules.keys() - self._sessions.keys() - self._inflight.keys():
            del self._modules[gone]  # bounded as the sessions are
        self._report()

    def _report(self) -> None:
        self.changed(Counter(self._modules[key] for key in self._sessions))
