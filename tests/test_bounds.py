"""What bounds a probe once its answer has arrived: the deadline over extraction and writing, the
series limit, the default max_response_bytes, and the turns that keep one probe's work at a time."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest
from aiohttp import web
from conftest import ExporterFactory, UpstreamFactory, make_spec
from metrics_util import names, parse, value

from jsonexporter.exposition import Family, encode_async
from jsonexporter.server import Options, make_app
from jsonexporter.slices import EXTRACT, PARSE, RENDER, DeadlinePassed, Steps, run_sliced, turn
from jsonexporter.spec import load_text

# About 1.2 million elements that each fail their rule: parsed in a fraction of a second,
# extracted (general path, for $index) in many seconds, far longer than the deadline below.
EMPTY_OBJECTS = b"[" + b",".join([b"{}"] * 1_200_000) + b"]"
SLOW_SPEC = """
modules:
  default:
    timeout: 60s
    metrics:
      - name: item_value
        help: v
        each: '@'
        labels: {index: $index}
        value: v
"""


def _raw(body: bytes) -> Any:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return answer


async def _probe(client: Any, query: str, **headers: str) -> str:
    response = await asyncio.wait_for(client.get(f"/probe?{query}", headers=headers), 120)  # generous: the probe must come back
    assert response.status == 200
    text: str = await response.text()
    return text


async def test_deadline_passing_after_the_fetch_answers_at_once_with_the_reason(
    upstream: UpstreamFactory, exporter: ExporterFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    up = await upstream({"/": _raw(EMPTY_OBJECTS)})
    client = await exporter(SLOW_SPEC)
    caplog.set_level(logging.WARNING, "jsonexporter")
    # Prometheus's 2.5 s scrape timeout less the 0.5 s offset: the deadline is 2 s, the module's 60 s does not count
    s = parse(await _probe(client, f"target={up.url}/", **{"X-Prometheus-Scrape-Timeout-Seconds": "2.5"}))
    assert value(s, "probe_endpoint_success", endpoint="default") == 1  # the fetch ended in time ...
    assert value(s, "probe_success") == 0  # ... the extraction did not
    assert value(s, "probe_failed_due_to_deadline") == 1
    assert value(s, "probe_failed_due_to_series_limit") == 0
    assert "item_value" not in names(s)  # none of what was extracted before the deadline
    failures = [r for r in caplog.records if r.getMessage() == "probe failed"]
    assert [r.fields["limit"] for r in failures] == ["deadline"]  # type: ignore[attr-defined]
    assert "deadline of 2.000s passed" in failures[0].fields["err"]  # type: ignore[attr-defined]
    metrics = parse(await (await client.get("/metrics")).text())
    assert value(metrics, "jsonexporter_probe_limits_exceeded_total", module="default", limit="deadline") == 1

    trace = await _probe(client, f"target={up.url}/&debug=true", **{"X-Prometheus-Scrape-Timeout-Seconds": "2.5"})
    assert "probe failed: the deadline of 2.000s passed before the series were extracted" in trace
    assert "\nprobe_failed_due_to_deadline 1\n" in trace


def _items(count: int) -> dict[str, Any]:
    return {"items": [{"id": f"i{i}", "v": i} for i in range(count)]}


def _limited_spec(limit: str, labels: str) -> str:
    return f"""
        modules:
          default:
            {limit}
            metrics:
              - name: item_value
                help: v
                each: items
                labels: {labels}
                value: v
              - {{name: item_count, help: c, value: length(items)}}
        """


@pytest.mark.parametrize("labels", ["{id: id}", "{id: id, at: $index}"], ids=["fast path", "general path"])
async def test_more_series_than_the_limit_fail_the_probe_with_none_of_them(
    upstream: UpstreamFactory, exporter: ExporterFactory, caplog: pytest.LogCaptureFixture, labels: str,
) -> None:
    up = await upstream({"/at": _items(99), "/over": _items(100)})  # 99 items and the count: 100 series, the limit
    client = await exporter(_limited_spec("series_limit: 100", labels))
    caplog.set_level(logging.WARNING, "jsonexporter")

    at = parse(await _probe(client, f"target={up.url}/at"))
    assert value(at, "probe_success") == 1
    assert value(at, "probe_failed_due_to_series_limit") == 0
    assert len([key for key in at if key[0] == "item_value"]) == 99

    over = parse(await _probe(client, f"target={up.url}/over"))
    assert value(over, "probe_success") == 0
    assert value(over, "probe_failed_due_to_series_limit") == 1
    assert value(over, "probe_endpoint_success", endpoint="default") == 1
    assert not {"item_value", "item_count"} & names(over)  # never a partial set
    (failure,) = [r for r in caplog.records if r.getMessage() == "probe failed"]
    assert failure.fields["err"] == "the rules gave more than 100 series (series_limit of module default); no series are answered"  # type: ignore[attr-defined]

    trace = await _probe(client, f"target={up.url}/over&debug=true")
    assert "probe failed: the rules gave more than 100 series" in trace


async def test_series_limit_defaults_to_the_servers_and_a_module_may_lift_it(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    up = await upstream({"/": _items(60)})
    spec = make_spec("""
        modules:
          default:
            metrics:
              - {name: item_value, help: v, each: items, labels: {id: id}, value: v}
          unlimited:
            series_limit: 0
            metrics:
              - {name: item_value, help: v, each: items, labels: {id: id}, value: v}
        """)
    client = await aiohttp_client(make_app(spec, Options(series_limit=50)))
    default = parse(await _probe(client, f"module=default&target={up.url}/"))
    assert value(default, "probe_failed_due_to_series_limit") == 1
    unlimited = parse(await _probe(client, f"module=unlimited&target={up.url}/"))
    assert value(unlimited, "probe_success") == 1
    assert len([key for key in unlimited if key[0] == "item_value"]) == 60


async def test_answers_over_4_mib_fail_by_default(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    items = b"[" + b",".join([b"1"] * (2 << 20)) + b"]"  # 4 MiB and 1 byte: parsed, 13 times that
    up = await upstream({"/": _raw(items)})
    client = await exporter("""
        modules:
          default:
            metrics:
              - {name: item_count, help: c, value: length(@)}
        """)
    s = parse(await _probe(client, f"target={up.url}/"))
    assert value(s, "probe_endpoint_success", endpoint="default") == 0
    assert value(s, "probe_endpoint_response_bytes", endpoint="default") == 0
    assert "item_count" not in names(s)


async def test_a_probe_that_parsed_extracts_and_renders_before_the_next_parses() -> None:
    order: list[str] = []
    b_waits = asyncio.Event()

    async def first() -> None:
        async with turn(PARSE):
            order.append("a parses")
            await asyncio.wait_for(b_waits.wait(), 10)  # b is in line for the parse turn when a lets go of it
        async with turn(EXTRACT):
            order.append("a extracts")
        async with turn(RENDER):
            order.append("a renders")

    async def second() -> None:
        b_waits.set()
        async with turn(PARSE):
            order.append("b parses")

    await asyncio.wait_for(asyncio.gather(first(), second()), 10)
    assert order == ["a parses", "a extracts", "a renders", "b parses"]


async def test_writing_an_answer_gives_up_when_its_deadline_passes_waiting_for_its_turn() -> None:
    loop = asyncio.get_running_loop()
    family = Family("x", "gauge", "x", ["x 1\n"])
    async with turn(EXTRACT):  # another probe's work, longer than this one's deadline
        with pytest.raises(DeadlinePassed):
            await asyncio.wait_for(encode_async([family], "", "", deadline=loop.time() + 0.05), 10)
    body, _ = await asyncio.wait_for(encode_async([family], "", "", deadline=loop.time() + 60), 10)
    assert body.endswith(b"x 1\n")


@pytest.mark.parametrize("bad", ["-1", "'many'", "1.5"])
def test_series_limit_must_be_a_count(bad: str) -> None:
    spec, problems = load_text(f"modules:\n  default:\n    series_limit: {bad}\n    metrics: [{{name: x, help: x, value: a}}]\n", "spec.yml")
    assert spec is None
    assert [str(p).split(": ")[0:2] for p in problems] == [["spec.yml:3:19", "modules.default.series_limit"]]


async def test_a_health_check_that_arrives_during_a_slice_is_answered_before_the_next_slice(aiohttp_client: Any) -> None:
    """What keeps /-/healthy quick while big answers are extracted: between two slices, the event
    loop reads a request that arrived and runs its handler before the computation goes on."""
    client = await aiohttp_client(make_app(make_spec(SLOW_SPEC)))
    request = b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    sock = socket.create_connection(("127.0.0.1", client.server.port), timeout=10)

    def first_request() -> bytes:  # in a thread: the connection is accepted and kept alive
        sock.sendall(request)
        return sock.recv(65536)

    seen: list[bytes] = []

    def steps() -> Steps[None]:
        sock.sendall(request)
        yield  # the slice ends here (slice_seconds=0), with the request in the socket
        try:
            seen.append(sock.recv(65536, socket.MSG_DONTWAIT))
        except (BlockingIOError, TimeoutError):
            seen.append(b"")

    with sock:
        assert (await asyncio.to_thread(first_request)).startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(run_sliced(steps(), slice_seconds=0), 10)
    assert seen[0].startswith(b"HTTP/1.1 200") and seen[0].endswith(b"Healthy.\n")
