"""Requests no probe waits for (detached.py): a shared fetch or login left going by probes that gave up, a
revalidation, a login's renewal. They are bounded by `--web.max-concurrent-probes`, as probes are: probes with
a short scrape timeout, one after the other, each leaving a request to another target behind, left that many
going, each holding a connection and, once read, its body."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
import time
from typing import Any

from aiohttp import web
from conftest import make_spec, wait_for

from jsonexporter.server import STATE, Options, make_app
from jsonexporter.upstream.cache import Answer, ResponseCache
from jsonexporter.upstream.detached import Detached
from jsonexporter.upstream.sessions import LoginStore, Session

LOCAL = r"targets: {allow: ['https?://(127\.0\.0\.1|localhost):\d+(/.*)?']}"


async def test_fetches_left_by_probes_that_gave_up_are_no_more_than_the_probes_limit(aiohttp_client: Any, aiohttp_server: Any) -> None:
    """Twelve probes of a cached endpoint, one at a time, each with 0.1 s of budget and another target: the upstream
    holds every request. Two (the limit) go on for the next probes; the others are cancelled, their connections closed."""
    limit, probes = 2, 12
    release = asyncio.Event()
    arrived = [asyncio.Event() for _ in range(probes)]
    open_requests: set[int] = set()

    async def hold(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        open_requests.add(n)
        arrived[n].set()
        try:
            for _ in range(6000):  # bounded: until released, or the exporter closed the connection
                if release.is_set() or request.transport is None or request.transport.is_closing():
                    break
                await asyncio.sleep(0.01)
        finally:
            open_requests.discard(n)
        return web.json_response({"v": n})

    app = web.Application()
    app.router.add_get("/t/{n}", hold)
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    spec = make_spec(textwrap.dedent(f"""
        modules:
          default:
            {LOCAL}
            timeout: 60s
            endpoints: {{main: {{url: '{{target}}', cache_ttl: 1h}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """))
    client = await aiohttp_client(make_app(spec, Options(max_concurrent_probes=limit)))
    state = client.app[STATE]
    try:
        for n in range(probes):
            response = await client.get("/probe", params={"target": f"{url}/t/{n}"},
                                        headers={"X-Prometheus-Scrape-Timeout-Seconds": "0.6"})  # 0.1 s of budget
            await wait_for(arrived[n], 30)
            assert response.status == 200 and "probe_success 0" in await response.text()
        assert state.in_flight == 0
        assert len(state.upstream.detached) <= limit and len(state.upstream.cache._inflight) <= limit
        deadline = time.monotonic() + 30
        while len(open_requests) > limit and time.monotonic() < deadline:  # bounded: the upstream sees the connections close
            await asyncio.sleep(0.01)
        assert len(open_requests) <= limit, f"{sorted(open_requests)} still requested with no probe waiting (limit {limit})"
        assert sorted(open_requests) == [0, 1]  # the first ones left go on: the probes' next scrape finds their answer
    finally:
        release.set()
    for n in (0, 5, 11):  # the fetches cancelled are started again by the next probe of their target
        text = await (await client.get("/probe", params={"target": f"{url}/t/{n}"})).text()
        assert "probe_success 1" in text and f"\nx {n}\n" in text, text


async def test_a_revalidation_waits_while_the_requests_no_probe_waits_for_are_at_the_bound() -> None:
    """A stale answer within stale_while_revalidate is served at once; its revalidation starts only while the
    bound has room (else the lookup says "deferred", not "revalidate"), and the next lookup after room is made starts it."""
    detached = Detached(limit=1)
    cache = ResponseCache(detached=detached)
    answer = Answer({"v": 1}, 200, 10)
    release = asyncio.Event()
    revalidations: list[str] = []

    async def fetch() -> tuple[Answer | None, Any]:
        return answer, None

    async def held() -> tuple[Answer | None, Any]:
        await wait_for(release, 30)
        return answer, None

    async def revalidate() -> tuple[Answer | None, Any]:
        revalidations.append("started")
        return answer, None

    assert (await cache.get("a", 0.0, None, fetch, 5)).result == "miss"  # cached; stale at once (ttl 0)
    with_room = await cache.get("other", 60, None, held, 0)  # a fetch whose caller gave up at once: detached
    assert with_room.answer is None and len(detached) == 1
    stale = await cache.get("a", 0.0, None, fetch, 5, revalidate_for=60, revalidate=revalidate)
    assert stale.result == "deferred" and stale.answer is answer and revalidations == []  # no room: none started, and it says so
    release.set()
    for _ in range(3000):  # bounded: the detached fetch ends
        if not len(detached):
            break
        await asyncio.sleep(0.01)
    assert (await cache.get("a", 0.0, None, fetch, 5, revalidate_for=60, revalidate=revalidate)).result == "revalidate"
    for _ in range(3000):
        if revalidations:
            break
        await asyncio.sleep(0.01)
    assert revalidations == ["started"]


async def test_a_login_left_beyond_the_bound_is_cancelled_and_the_next_caller_logs_in_again() -> None:
    """Logins whose callers all gave up: the first goes on (the bound's room), the second is cancelled and forgotten,
    so that the next caller of its key starts a login of its own (never joining the cancelled one), which the
    cancelled one's end does not drop."""
    store = LoginStore(detached=Detached(limit=1))
    release = asyncio.Event()
    made: list[str] = []

    tasks: list[asyncio.Task[Any]] = []

    def login(key: str) -> Any:
        async def make(waited: bool) -> Session:
            made.append(key)
            tasks.append(asyncio.current_task())  # type: ignore[arg-type]
            await wait_for(release, 30)
            now = time.monotonic()
            return Session({"t": key}, now, now + 3600, now + 7200)
        return make

    for key in ("a", "b"):
        with contextlib.suppress(TimeoutError):
            await store.get(key, login(key), 0.0)
    assert made == ["a", "b"] and set(store._inflight) == {"a"}  # b's was cancelled and let go
    again = asyncio.create_task(store.get("b", login("b"), 30))
    for _ in range(3000):  # bounded: the new login of b has begun
        if made.count("b") == 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.wait({tasks[1]}, timeout=30)  # the cancelled login has ended (the store's callback on it ran first)
    assert tasks[1].cancelled() and "b" in store._inflight  # the new login of b is still the one in flight
    release.set()
    obtained = await asyncio.wait_for(again, 30)
    assert obtained.how == "made" and obtained.session.values == {"t": "b"}


async def test_a_session_due_for_renewal_is_reused_without_saying_renewing_while_the_bound_is_full() -> None:
    """A session due for renewal but valid is used at once; with the bound full no renewal starts and the store says
    "reused" (the trace's "renewed in the background" would be untrue); once room is made, the next probe renews it."""
    store = LoginStore(detached=Detached(limit=1))
    release = asyncio.Event()
    renewals: list[bool] = []

    async def held(waited: bool) -> Session:
        await wait_for(release, 30)
        now = time.monotonic()
        return Session({"t": "other"}, now, now + 60, now + 120)

    async def due(waited: bool) -> Session:
        renewals.append(waited)
        now = time.monotonic()
        return Session({"t": "k"}, now, now, now + 120)  # due for renewal at once, valid for 2 minutes

    assert (await store.get("k", due, 5)).how == "made"
    with contextlib.suppress(TimeoutError):
        await store.get("other", held, 0)  # left going: the bound is full
    assert (await store.get("k", due, 5)).how == "reused" and renewals == [True]
    release.set()
    await asyncio.wait_for(store._inflight["other"], 30)
    assert (await store.get("k", due, 5)).how == "renewing"
    for _ in range(3000):  # bounded: the renewal in the background has run
        if len(renewals) == 2:
            break
        await asyncio.sleep(0.01)
    assert renewals == [True, False]
