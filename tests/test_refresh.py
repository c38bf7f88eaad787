"""Background requests against real APIs on 127.0.0.1: stale_while_revalidate (one refresh per request,
outliving the probe that started it) and refresh_interval (schedules at load and at a first probe,
probes that never wait for the API, leaving, the bound on schedules, reload, self-metrics)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import subprocess
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from conftest import Held, UpstreamFactory, make_spec, wait_for
from metrics_util import parse, value
from prometheus_util import free_port, jsonexporter, wait_healthy

from jsonexporter import logs
from jsonexporter.cli import main
from jsonexporter.server import STATE, Options, make_app
from jsonexporter.upstream.refresh import Schedule

BOUND = 30.0  # seconds: generous, for a busy 2-core machine


async def start(aiohttp_client: Any, text: str, spec_file: str | None = None, **options: Any) -> Any:
    return await aiohttp_client(make_app(make_spec(textwrap.dedent(text)), Options(**options), spec_file=spec_file))


async def probe(client: Any, **params: str) -> dict[Any, float]:
    response = await client.get("/probe", params=params)
    assert response.status == 200, await response.text()
    return parse(await response.text())


def counting(answers: Callable[[int], Any], on: dict[int, asyncio.Event] | None = None) -> Callable[[web.Request], Any]:
    """An upstream handler answering `answers(n)` to its n-th request (from 1), setting the event of `on[n]` as it arrives;
    an answer that is an int is a status code."""
    seen = [0]

    async def handle(request: web.Request) -> web.StreamResponse:
        seen[0] += 1
        n = seen[0]
        if on is not None and n in on:
            on[n].set()
        answer = answers(n)
        if isinstance(answer, Held):
            return await answer(request)
        if isinstance(answer, int):
            return web.json_response({}, status=answer)
        if isinstance(answer, Redirect):
            return web.Response(status=302, headers={"Location": answer.location})
        return web.json_response(answer)

    return handle


@dataclass
class Redirect:
    location: str


def schedule_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if "Schedules." in repr(t.get_coro())]


# -- stale_while_revalidate -------------------------------------------------------------------------


async def test_stale_while_revalidate_serves_at_once_and_one_background_request_refreshes(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    held = Held({"v": 2})
    up = await upstream({"/": counting(lambda n: {"v": 1} if n == 1 else held)})
    client = await start(aiohttp_client, """
        modules:
          default:
            endpoints: {main: {url: '{target}', cache_ttl: 1ms, stale_while_revalidate: 1h}}
            metrics: [{name: x, help: x, value: v}]
        """)
    assert value(await probe(client, target=f"{up.url}/"), "x") == 1
    # the 1 ms answer is stale for all of these: each is served at once while the upstream holds the one refresh
    answers = await asyncio.wait_for(asyncio.gather(*(probe(client, target=f"{up.url}/") for _ in range(8))), BOUND)
    assert [value(s, "x") for s in answers] == [1] * 8
    assert all(value(s, "probe_endpoint_cache_age_seconds", endpoint="main") > 0 for s in answers)
    assert all(value(s, "probe_endpoint_stale", endpoint="main") == 0 and value(s, "probe_success") == 1 for s in answers)
    await wait_for(held.arrived, BOUND)
    assert up.hits == {"/": 2}  # one background request for eight probes, going on after they all ended
    held.release.set()
    for _ in range(400):  # bounded: until the background answer is stored (each probe a real round trip)
        s = await probe(client, target=f"{up.url}/")
        if value(s, "x") == 2:
            break
        await asyncio.sleep(0.01)  # the polling period of a bounded wait, not a synchronisation
    assert value(s, "x") == 2
    metrics = parse(await (await client.get("/metrics")).text())
    assert value(metrics, "jsonexporter_cache_requests_total", module="default", endpoint="main", result="revalidate") >= 8
    assert value(metrics, "jsonexporter_upstream_requests_total", module="default", endpoint="main", outcome="success") == 2


async def test_a_failed_revalidation_is_logged_redacted_and_keeps_the_old_answer(
    aiohttp_client: Any, upstream: UpstreamFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    failed = {2: asyncio.Event(), 3: asyncio.Event()}
    up = await upstream({"/": counting(lambda n: {"v": 1} if n == 1 else 503, failed)})
    client = await start(aiohttp_client, """
        modules:
          default:
            endpoints: {main: {url: '{target}', cache_ttl: 1ms, stale_while_revalidate: 1h}}
            metrics: [{name: x, help: x, value: v}]
        """)
    target = up.url.replace("http://", "http://alice:pw-SECRET@") + "/"
    caplog.set_level(logging.WARNING, logger="jsonexporter")
    assert value(await probe(client, target=target), "x") == 1
    assert value(await probe(client, target=target), "x") == 1  # stale: starts the refresh, which fails
    await wait_for(failed[2], BOUND)
    for _ in range(400):  # bounded: until the failed refresh is over and a probe starts the next
        s = await probe(client, target=target)
        assert value(s, "x") == 1 and value(s, "probe_success") == 1
        if failed[3].is_set():
            break
        await asyncio.sleep(0.01)  # the polling period of a bounded wait, not a synchronisation
    assert failed[3].is_set()
    lines = [logs.LogfmtFormatter().format(r) for r in caplog.records if r.getMessage().startswith("background request failed")]
    assert lines and "outcome=invalid_status" in lines[0] and "endpoint=main" in lines[0]
    assert not any("pw-SECRET" in line for line in lines)


# -- refresh_interval -------------------------------------------------------------------------------

SCHEDULED = """
    modules:
      default:
        endpoints: {main: {url: '{target}', refresh_interval: 1s}}
        metrics: [{name: x, help: x, value: v}]
    """


async def test_a_targetless_schedule_fetches_with_no_probe_at_all_and_stops_with_the_app(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    arrived = {2: asyncio.Event()}
    up = await upstream({"/energy": counting(lambda n: {"v": n}, arrived)})
    client = await start(aiohttp_client, f"""
        modules:
          energy:
            endpoints: {{main: {{url: '{up.url}/energy', refresh_interval: 1s}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """)
    await wait_for(arrived[2], BOUND)  # two scheduled requests, and not one probe
    s = await probe(client, module="energy")
    assert value(s, "x") >= 2 and value(s, "probe_success") == 1
    assert value(s, "probe_endpoint_cache_age_seconds", endpoint="main") >= 0
    metrics = parse(await (await client.get("/metrics")).text())
    assert value(metrics, "jsonexporter_refresh_last_success_timestamp_seconds", module="energy", endpoint="main") > 0
    assert value(metrics, "jsonexporter_refresh_scheduled_requests") == 1
    assert value(metrics, "jsonexporter_cache_requests_total", module="energy", endpoint="main", result="scheduled") == 1
    assert schedule_tasks()
    await client.close()
    assert schedule_tasks() == []


async def test_each_worker_of_serve_schedules_a_targetless_endpoint_at_start(upstream: UpstreamFactory, tmp_path: Path) -> None:
    peers: set[int] = set()
    two = asyncio.Event()

    async def energy(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername")[1] if request.transport is not None else 0)
        if len(peers) >= 2:  # each worker has its own keep-alive connection
            two.set()
        return web.json_response({"v": 1})

    up = await upstream({"/energy": energy})
    spec_file = tmp_path / "spec.yml"
    spec_file.write_text(textwrap.dedent(f"""
        modules:
          energy:
            endpoints: {{main: {{url: '{up.url}/energy', refresh_interval: 1s}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """))
    port = free_port()
    proc = subprocess.Popen(jsonexporter("--config.file", str(spec_file), "--web.listen-address", f"127.0.0.1:{port}", "--web.workers", "2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        await wait_healthy(f"http://127.0.0.1:{port}", proc)
        await wait_for(two, BOUND)  # two workers asked the API, and nobody probed
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(BOUND)


async def test_a_probe_never_waits_for_the_api_after_the_first_answer(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    held = Held({"v": 2})
    up = await upstream({"/": counting(lambda n: {"v": 1} if n == 1 else held)})
    client = await start(aiohttp_client, SCHEDULED)
    first = await probe(client, target=f"{up.url}/")  # joins the schedule and waits for the first answer
    assert value(first, "x") == 1 and value(first, "probe_endpoint_cache_age_seconds", endpoint="main") >= 0
    await wait_for(held.arrived, BOUND)  # the next scheduled request: the API holds it
    s = await asyncio.wait_for(probe(client, target=f"{up.url}/"), BOUND)
    assert value(s, "x") == 1 and value(s, "probe_success") == 1 and value(s, "probe_endpoint_success", endpoint="main") == 1
    assert up.hits == {"/": 2}
    held.release.set()


async def test_concurrent_first_probes_of_a_request_wait_for_one_scheduled_request(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    held = Held({"v": 1})
    up = await upstream({"/": held})
    client = await start(aiohttp_client, SCHEDULED)
    probes = [asyncio.create_task(probe(client, target=f"{up.url}/")) for _ in range(8)]
    await wait_for(held.arrived, BOUND)
    held.release.set()
    answers = await asyncio.wait_for(asyncio.gather(*probes), BOUND)
    assert [value(s, "x") for s in answers] == [1] * 8
    assert up.hits == {"/": 1}
    metrics = parse(await (await client.get("/metrics")).text())
    assert value(metrics, "jsonexporter_cache_requests_total", module="default", endpoint="main", result="first") == 8


async def test_a_scheduled_request_keeps_to_the_redirect_rules_of_a_probe(aiohttp_client: Any, aiohttp_server: Any) -> None:
    foreign_hits: list[str] = []

    async def foreign_answer(request: web.Request) -> web.Response:
        foreign_hits.append(request.path_qs)
        return web.json_response({"v": 666})

    foreign_app = web.Application()
    foreign_app.router.add_get("/{tail:.*}", foreign_answer)
    foreign = await aiohttp_server(foreign_app, host="127.0.0.2")
    third = {3: asyncio.Event()}
    home_app = web.Application()
    home_app.router.add_get("/", counting(lambda n: {"v": 1} if n == 1 else Redirect(f"http://127.0.0.2:{foreign.port}/steal"), third))
    home = await aiohttp_server(home_app, host="127.0.0.1")
    client = await start(aiohttp_client, r"""
        modules:
          default:
            targets: {allow: ['http://127\.0\.0\.1:\d+/']}
            http_client_config: {bearer_token: tok-SECRET}
            endpoints: {main: {url: '{target}', refresh_interval: 1s}}
            metrics: [{name: x, help: x, value: '@.v'}]  # read whole: the traced probe's schedule is the probes'
        """)
    target = f"http://127.0.0.1:{home.port}/"
    assert value(await probe(client, target=target), "x") == 1
    await wait_for(third[3], BOUND)  # the second, redirected, request is over
    response = await client.get("/probe", params={"target": target, "debug": "true"})
    text = await response.text()
    assert "redirect_refused" in text and "targets.allow does not allow" in text and "probe_success 0" in text
    assert "cache scheduled" in text  # the answer of the schedule, not a request of this probe
    assert foreign_hits == [] and "tok-SECRET" not in text


async def test_a_failed_refresh_serves_the_last_good_answer_within_stale_if_error_else_fails(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    kept, failing = {3: asyncio.Event()}, {3: asyncio.Event()}
    up = await upstream({"/kept": counting(lambda n: {"v": 1} if n == 1 else 503, kept), "/failing": counting(lambda n: {"v": 1} if n == 1 else 503, failing)})
    client = await start(aiohttp_client, """
        modules:
          kept:
            endpoints: {main: {url: '{target}/kept', refresh_interval: 1s, stale_if_error: 1h}}
            metrics: [{name: x, help: x, value: v}]
          failing:
            endpoints: {main: {url: '{target}/failing', refresh_interval: 1s}}
            metrics: [{name: x, help: x, value: v}]
        """)
    assert value(await probe(client, module="kept", target=up.url), "x") == 1
    assert value(await probe(client, module="failing", target=up.url), "x") == 1
    # a third request has arrived: the second, failed, has been kept as the latest refresh
    await wait_for(kept[3], BOUND)
    await wait_for(failing[3], BOUND)
    s = await probe(client, module="kept", target=up.url)
    assert value(s, "x") == 1 and value(s, "probe_success") == 1
    assert value(s, "probe_endpoint_stale", endpoint="main") == 1 and value(s, "probe_endpoint_http_status_code", endpoint="main") == 503
    s = await probe(client, module="failing", target=up.url)
    assert value(s, "probe_success") == 0 and value(s, "probe_endpoint_http_status_code", endpoint="main") == 503
    assert ("x", ()) not in s
    metrics = parse(await (await client.get("/metrics")).text())
    assert value(metrics, "jsonexporter_refresh_failures_total", module="kept", endpoint="main") >= 1
    assert value(metrics, "jsonexporter_cache_requests_total", module="kept", endpoint="main", result="scheduled_stale") == 1


async def test_a_target_not_probed_for_three_intervals_leaves_its_schedule(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    up = await upstream({"/": {"v": 1}})
    client = await start(aiohttp_client, SCHEDULED, refresh_min_idle=0.0)
    schedules = client.app[STATE].upstream.schedules
    assert value(await probe(client, target=f"{up.url}/"), "x") == 1
    (schedule,) = list(schedules)
    await wait_for(schedule.ended, BOUND)  # 3 intervals of 1 s without a probe
    assert len(schedules) == 0 and schedule_tasks() == []
    assert up.hits["/"] >= 3  # it was fetched on its schedule until it left
    metrics = parse(await (await client.get("/metrics")).text())
    assert value(metrics, "jsonexporter_refresh_scheduled_requests") == 0


async def test_scheduled_requests_are_bounded_and_a_probe_beyond_fetches_itself(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    up = await upstream({"/a": {"v": 1}, "/b": {"v": 2}})
    client = await start(aiohttp_client, SCHEDULED, refresh_max_requests=1)
    schedules = client.app[STATE].upstream.schedules
    assert value(await probe(client, target=f"{up.url}/a"), "x") == 1
    s = await probe(client, target=f"{up.url}/b")
    assert value(s, "x") == 2 and value(s, "probe_success") == 1
    assert ("probe_endpoint_cache_age_seconds", (("endpoint", "main"),)) not in s  # fetched by the probe, not scheduled
    assert len(schedules) == 1 and next(iter(schedules)).job.values["target"] == f"{up.url}/a"
    metrics = parse(await (await client.get("/metrics")).text())
    assert value(metrics, "jsonexporter_refresh_unscheduled_total", module="default", endpoint="main") == 1


RELOAD_SPEC = """
modules:
  kept:
    endpoints: {{main: {{url: '{url}/kept', refresh_interval: 1s}}}}
    metrics: [{{name: x, help: x, value: v}}]
  targets:
    endpoints: {{main: {{url: '{{target}}/t', refresh_interval: 1s}}}}
    metrics: [{{name: x, help: x, value: v}}]
  {changed}:
    endpoints: {{main: {{url: '{url}/changed', refresh_interval: {interval}}}}}
    metrics: [{{name: x, help: x, value: v}}]
"""


async def test_reload_keeps_the_schedules_of_unchanged_requests_and_stops_the_others(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path,
) -> None:
    up = await upstream({"/kept": {"v": 1}, "/t": {"v": 2}, "/changed": {"v": 3}})
    path = tmp_path / "spec.yml"
    path.write_text(RELOAD_SPEC.format(url=up.url, changed="changed", interval="1s"))
    client = await start(aiohttp_client, path.read_text(), spec_file=str(path))
    schedules = client.app[STATE].upstream.schedules
    assert value(await probe(client, module="targets", target=up.url), "x") == 2

    def by_module() -> dict[str, Schedule]:
        return {s.job.module.name: s for s in schedules}

    before = by_module()
    assert set(before) == {"kept", "targets", "changed"}
    path.write_text(RELOAD_SPEC.format(url=up.url, changed="changed", interval="2s"))
    assert (await client.post("/-/reload")).status == 200
    after = by_module()
    assert after["kept"] is before["kept"] and after["targets"] is before["targets"]
    assert after["changed"] is not before["changed"] and after["changed"].job.endpoint.refresh_interval == 2.0
    await wait_for(before["changed"].ended, BOUND)
    path.write_text(RELOAD_SPEC.format(url=up.url, changed="renamed", interval="2s"))
    assert (await client.post("/-/reload")).status == 200
    assert set(by_module()) == {"kept", "targets", "renamed"} and by_module()["kept"] is before["kept"]
    await wait_for(after["changed"].ended, BOUND)
    assert value(await probe(client, module="renamed"), "x") == 3


# -- check ------------------------------------------------------------------------------------------


def test_check_places_refresh_and_revalidation_mistakes_at_their_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spec.yml"
    path.write_text(textwrap.dedent("""\
        modules:
          default:
            endpoints:
              both: {url: '{target}', cache_ttl: 30s, refresh_interval: 1m}
              fast: {url: '{target}/f', refresh_interval: 500ms}
              alone: {url: '{target}/a', stale_while_revalidate: 5m}
            metrics: [{name: x, help: x, value: v, endpoint: both}]
        """))
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:4:47: modules.default.endpoints.both.refresh_interval: use either refresh_interval or cache_ttl, not both" in out
    assert f"{path}:5:51: modules.default.endpoints.fast.refresh_interval: refresh_interval '500ms' is shorter than the least, 1s" in out
    assert f"{path}:6:34: modules.default.endpoints.alone.stale_while_revalidate: stale_while_revalidate needs cache_ttl" in out


async def test_reload_stops_the_schedule_of_a_request_whose_values_the_new_spec_refuses(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path,
) -> None:
    up = await upstream({"/sites/{site}": {"v": 1}})
    spec = """
        modules:
          default:
            parameters: {{site: {{pattern: '{pattern}'}}}}
            endpoints: {{main: {{url: '{{target}}/sites/{{site}}', refresh_interval: 1s}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """
    path = tmp_path / "spec.yml"
    path.write_text(textwrap.dedent(spec.format(pattern="[a-z]+")))
    client = await start(aiohttp_client, path.read_text(), spec_file=str(path))
    assert value(await probe(client, target=up.url, site="paris"), "x") == 1
    (schedule,) = list(client.app[STATE].upstream.schedules)
    path.write_text(textwrap.dedent(spec.format(pattern="[0-9]+")))  # the same request, but `paris` is refused now
    assert (await client.post("/-/reload")).status == 200
    await wait_for(schedule.ended, BOUND)
    assert len(client.app[STATE].upstream.schedules) == 0


async def test_a_probe_waiting_for_a_first_answer_still_answers_when_a_reload_stops_its_schedule(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path,
) -> None:
    held = Held({"v": 1})
    up = await upstream({"/": held})
    path = tmp_path / "spec.yml"
    path.write_text(textwrap.dedent(SCHEDULED))
    client = await start(aiohttp_client, path.read_text(), spec_file=str(path))
    waiting = asyncio.create_task(client.get("/probe", params={"target": f"{up.url}/"}))
    await wait_for(held.arrived, BOUND)
    (schedule,) = list(client.app[STATE].upstream.schedules)
    path.write_text(textwrap.dedent(SCHEDULED.replace(", refresh_interval: 1s", "")))
    assert (await client.post("/-/reload")).status == 200
    await wait_for(schedule.ended, BOUND)
    response = await asyncio.wait_for(waiting, BOUND)
    assert response.status == 200 and value(parse(await response.text()), "probe_success") == 0
    held.release.set()


def padded(n: int) -> dict[str, Any]:
    return {"v": n, "pad": "x" * 4000}


async def test_scheduled_answers_are_bounded_by_their_parsed_size_the_least_recently_probed_going_first(
    aiohttp_client: Any, upstream: UpstreamFactory,
) -> None:
    from jsonexporter.upstream.cache import parsed_size

    size = parsed_size(json.dumps(padded(1)).encode())  # the body aiohttp's json_response sends
    up = await upstream({f"/{n}": padded(n) for n in (1, 2, 3)})
    client = await start(aiohttp_client, SCHEDULED.replace("refresh_interval: 1s", "refresh_interval: 1h"), refresh_max_bytes=2 * size + size // 2)
    for n in (1, 2, 3):  # the third answer leaves room for two: the first one's goes
        assert value(await probe(client, target=f"{up.url}/{n}"), "x") == n
    assert value(await probe(client, target=f"{up.url}/2"), "x") == 2  # kept: no request
    assert [up.hits[f"/{n}"] for n in (1, 2, 3)] == [1, 1, 1]
    assert value(await probe(client, target=f"{up.url}/1"), "x") == 1  # let go: fetched again, and the third one's goes
    assert value(await probe(client, target=f"{up.url}/2"), "x") == 2
    assert [up.hits[f"/{n}"] for n in (1, 2, 3)] == [2, 1, 1]
    assert value(await probe(client, target=f"{up.url}/3"), "x") == 3
    assert [up.hits[f"/{n}"] for n in (1, 2, 3)] == [2, 1, 2]
    assert client.app[STATE].upstream.schedules.bytes == 2 * size
    metrics = parse(await (await client.get("/metrics")).text())
    assert value(metrics, "jsonexporter_refresh_evictions_total", module="default", endpoint="main") == 3
    assert value(metrics, "jsonexporter_cache_requests_total", module="default", endpoint="main", result="first") == 5


async def test_a_scheduled_answer_larger_than_the_bound_answers_its_probe_and_is_not_kept(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    up = await upstream({"/": padded(1)})
    client = await start(aiohttp_client, SCHEDULED.replace("refresh_interval: 1s", "refresh_interval: 1h"), refresh_max_bytes=1000)
    for hits in (1, 2):
        s = await probe(client, target=f"{up.url}/")
        assert value(s, "x") == 1 and value(s, "probe_success") == 1 and up.hits["/"] == hits
    assert client.app[STATE].upstream.schedules.bytes == 0


def items(n: int) -> bytes:
    """An answer of 200 elements, as bytes: the upstream holds no parsed form of it."""
    return json.dumps({"items": [{"v": k, "id": f"answer-{n}-{k}"} for k in range(200)]}).encode()


def sending(body: bytes) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return handle


ITEMS = """
    modules:
      default:
        endpoints: {main: {url: '{target}', refresh_interval: 1h}}
        metrics: [{name: x, help: x, each: 'items[*]', value: v, labels: {id: id}}]
    """


def answers_in_memory() -> set[int]:
    """The answers of `items` that something in the process still holds (reachable by the collector), whatever form
    their parse took: dicts, or the structs of a projection (spec/projection.py)."""
    gc.collect()
    found = set()
    for o in gc.get_objects():
        if isinstance(o, list) and o and isinstance(o[0], (dict, msgspec.Struct)):
            first = o[0] if isinstance(o[0], dict) else msgspec.to_builtins(o[0])
            if isinstance(first, dict) and isinstance(first.get("id"), str) and first["id"].startswith("answer-"):
                found.add(int(first["id"].split("-")[1]))
    return found


async def test_a_scheduled_answer_let_go_by_max_bytes_is_no_longer_held_in_memory(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    from jsonexporter.upstream.cache import parsed_size

    size = parsed_size(items(1))
    up = await upstream({f"/{n}": sending(items(n)) for n in (1, 2, 3)})
    client = await start(aiohttp_client, ITEMS, refresh_max_bytes=size + size // 2)  # room for one answer
    for n in (1, 2, 3):
        s = await probe(client, target=f"{up.url}/{n}")
        assert value(s, "x", id=f"answer-{n}-7") == 7
    assert client.app[STATE].upstream.schedules.bytes == size
    assert answers_in_memory() == {3}  # the first two were let go: their memory too, not their count alone
    client.app[STATE].upstream.schedules.max_bytes = size // 2  # none fits: the probe's answer is used, and not kept (the third's goes)
    assert value(await probe(client, target=f"{up.url}/1"), "x", id="answer-1-7") == 7
    assert client.app[STATE].upstream.schedules.bytes == 0 and answers_in_memory() == set()


async def test_a_traced_probe_of_a_scheduled_endpoint_shows_the_whole_answer_from_a_schedule_of_its_own(
    aiohttp_client: Any, upstream: UpstreamFactory,
) -> None:
    """The probes' schedule keeps the answer parsed for the rules (spec/projection.py); a traced probe shows the
    whole answer, so it is served by a schedule of the whole document (schedule_key says what the document is),
    and the probes' schedule goes on with its own."""
    up = await upstream({"/": counting(lambda n: {"items": [{"id": "a", "v": 1, "other": 2}]})})
    client = await start(aiohttp_client, """
        modules:
          default:
            endpoints: {main: {url: '{target}', refresh_interval: 1h}}
            metrics: [{name: x, help: x, each: items, labels: {id: id}, value: v}]
        """)
    assert value(await probe(client, target=f"{up.url}/"), "x", id="a") == 1
    for hits in (2, 2):  # the second traced probe: from the whole document's schedule
        response = await client.get("/probe", params={"target": f"{up.url}/", "debug": "true"})
        text = await response.text()
        assert up.hits == {"/": hits} and "probe_success 1" in text
        (document,) = [line for line in text.splitlines() if line.startswith("  document")]
        assert json.loads(document.partition(": ")[2]) == {"items": [{"id": "a", "v": 1, "other": 2}]}
    assert "cache scheduled" in text
    assert value(await probe(client, target=f"{up.url}/"), "x", id="a") == 1 and up.hits == {"/": 2}
    assert len(client.app[STATE].upstream.schedules) == 2


async def test_reload_with_rules_reading_other_fields_starts_the_schedule_afresh(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path,
) -> None:
    """The same request, but its answer parsed for other rules: the kept document would lack what the new rules read."""
    up = await upstream({"/": {"v": 1, "w": 2}})
    spec = """
        modules:
          default:
            endpoints: {{main: {{url: '{{target}}', refresh_interval: 1h}}}}
            metrics: [{{name: x, help: x, value: {field}}}]
        """
    path = tmp_path / "spec.yml"
    path.write_text(textwrap.dedent(spec.format(field="v")))
    client = await start(aiohttp_client, path.read_text(), spec_file=str(path))
    assert value(await probe(client, target=f"{up.url}/"), "x") == 1
    path.write_text(textwrap.dedent(spec.format(field="w")))
    assert (await client.post("/-/reload")).status == 200
    assert value(await probe(client, target=f"{up.url}/"), "x") == 2 and up.hits["/"] == 2
