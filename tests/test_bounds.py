"""What bounds a probe once its answer has arrived: the deadline over extraction and writing, the
series limit, the default max_response_bytes, and the turns that keep one probe's work at a time."""

from __future__ import annotations

import asyncio
import gzip
import logging
import random
import socket
import string
import threading
import time
import tracemalloc
from typing import Any

import pytest
from aiohttp import web
from conftest import ExporterFactory, UpstreamFactory, make_spec
from metrics_util import names, parse, value

from jsonexporter.exposition import Family, encode, encode_async, encode_pieces, render_text
from jsonexporter.extract import ProbeContext, extract, extract_async
from jsonexporter.server import Options, make_app, write_pieces
from jsonexporter.slices import EXTRACT, PARSE, RENDER, DeadlinePassed, Steps, run, run_sliced, turn
from jsonexporter.spec import load_text
from jsonexporter.spec.expressions import compile_expression

# 10,000 elements, each searching the 5,000 of another list (through $parent: per element, never once per
# rule): a 60 KB answer, fetched and parsed in milliseconds even on a slow machine, whose extraction would
# take minutes (50 million filter steps; a search of the list took 36 ms here, 6 minutes in all), far longer
# than the deadline below on a machine a hundred times faster.
SLOW_DOCUMENT = b'{"few": [' + b",".join([b"{}"] * 10_000) + b'], "many": [' + b",".join([b'{"v": 1}'] * 5_000) + b"]}"
SLOW_SPEC = """
modules:
  default:
    timeout: 60s
    metrics:
      - name: item_value
        help: v
        each: few
        labels: {index: $index}
        value: '$parent.item.length(many[?v > `0`])'
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
    up = await upstream({"/": _raw(SLOW_DOCUMENT)})
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


# One element whose string is 3.9 MB of 'a' and '1' (repro 18): RE2 out of its DFA states for both patterns, 13 s of
# one step for these rules before their calls were bounded, the probe answered late as if in time, /-/healthy waited
LONG_STRING_SPEC = r"""
modules:
  default:
    metrics:
      - {name: norm, help: h, each: items, value: "length(regex_replace(k, '[a-z]+\\d{2,30}[a-z]', 'x'))", labels: {i: i}}
      - {name: err, help: h, each: items, value: "regex_match(k, '(?i)a.{0,40}timeout')", labels: {i: i}}
      - {name: short, help: h, each: items, value: "regex_match(s, '(?i)a.{0,40}timeout')", labels: {i: i}}
"""


async def test_regex_calls_on_a_long_answer_string_are_errors_of_their_series_and_the_probe_answers_in_time(
        upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/": {"items": [{"i": 0, "k": "".join(random.Random(1).choices("a1", k=3_900_000)), "s": "a timeout"}]}})
    client = await exporter(LONG_STRING_SPEC)
    probe = asyncio.ensure_future(client.get(f"/probe?target={up.url}/", headers={"X-Prometheus-Scrape-Timeout-Seconds": "2.5"}))
    while not probe.done():
        health = await asyncio.wait_for(client.get("/-/healthy"), 60)
        assert health.status == 200
    s = parse(await (await probe).text())
    assert value(s, "probe_success") == 1 and value(s, "probe_failed_due_to_deadline") == 0
    assert value(s, "probe_extraction_errors", metric="norm") == 1 and value(s, "probe_extraction_errors", metric="err") == 1
    assert value(s, "short", i="0") == 1  # the element's other series are there
    trace = await _probe(client, f"target={up.url}/&debug=true")
    assert "function regex_match: cannot use" in trace and "more than the 11,275 this pattern may read in one call" in trace


def test_a_long_regex_call_reads_the_deadline_after_it_as_the_interpreter_does() -> None:
    # a chunk of a rule's elements is called by columns, neither timed nor counted: 512 calls at their bound (0.1 s
    # each at worst) would hold the event loop for a minute, past the deadline
    made: list[int] = []
    expression = compile_expression("regex_match(v, '(?i)a.{0,40}timeout')")
    document = {"v": "".join(random.Random(1).choices("a1", k=11_000))}

    def steps() -> Steps[None]:
        for element in range(3):
            expression.search(document)
            made.append(element)
        return
        yield

    with pytest.raises(DeadlinePassed):
        run(steps(), deadline=time.monotonic())
    assert made == []  # the first call raised: the others were never made
    assert expression.search({"v": "a timeout"}) is True  # a short string reads no clock


# One rule without `each`, one direct call (neither timed nor counted within: spec/expressions.py): the extraction is one
# step, a sort of a million texts, tens of milliseconds at least, far past a deadline a millisecond away
ONE_STEP_SPEC = """
modules:
  default:
    metrics:
      - {name: letters, help: l, value: "length(sort(split(text, '')))"}
"""
ONE_STEP_DOCUMENT = {"text": "".join(random.Random(1).choices(string.ascii_letters, k=1_000_000))}


async def test_an_extraction_whose_last_step_ends_past_its_deadline_fails_as_when_it_passes_between_two() -> None:
    module = make_spec(ONE_STEP_SPEC).modules["default"]
    documents, context, loop = {"default": ONE_STEP_DOCUMENT}, ProbeContext("default", "", {}), asyncio.get_running_loop()
    with pytest.raises(DeadlinePassed):  # a live probe's (run_probe gives the extraction LATE_GRACE at least, then this)
        await asyncio.wait_for(extract_async(module, documents, context, deadline=loop.time() + 0.001), 120)
    with pytest.raises(DeadlinePassed):  # `probe --input` and `jsonexporter test` (slices.run)
        extract(module, documents, context, deadline=time.monotonic() + 0.001)
    in_time = await asyncio.wait_for(extract_async(module, documents, context, deadline=loop.time() + 600), 120)
    assert value(parse(render_text(list(in_time.families.values()))), "letters") == 1_000_000


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


OWNER = "o" * 200
BIG_ANSWER_SPEC = (f"modules:\n  default:\n    labels: {{owner: {OWNER}}}\n    metrics:\n"  # 20 series per element, of 230 bytes
                   + "".join(f"      - {{name: item_{n}, help: h, each: '@', labels: {{id: id}}, value: v}}\n" for n in range(20)))


def _read_answer(port: int, path: str) -> tuple[bytes, int, bytes]:
    """A scraper with a small receive buffer, as one across a network (the kernel takes little of an answer
    at once), that keeps none of it: the head, the size of the body and its end."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        sock.settimeout(120)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        received, size = b"", 0
        while chunk := sock.recv(1 << 16):
            received = received[-1024:] + chunk
            size += len(chunk)
    return received[:received.find(b"\r\n\r\n")] if size == len(received) else b"", size, received[-1024:]


async def test_an_answer_is_in_memory_about_once_while_it_is_written(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    """Its series are let go as they are written into pieces, and each piece once sent: joined, then copied
    by the transport for what the socket did not take at once, a whole body was there up to four times."""
    up = await upstream({"/": [{"id": f"{i:06d}", "v": i} for i in range(4_000)]})
    client = await exporter(BIG_ANSWER_SPEC)
    series = 80_000 * len(f'item_0{{id="000000",owner="{OWNER}"}} 1\n')  # about the size of the answer
    tracemalloc.start()
    try:
        _, size, end = await asyncio.to_thread(_read_answer, client.server.port, f"/probe?target={up.url}/")  # type: ignore[union-attr]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size > series and end.endswith(b"probe_success 1\n")
    assert peak < 1.5 * size


async def test_a_compressed_answer_is_compressed_as_it_is_written_never_whole_beside_its_text() -> None:
    families = [Family("x", "gauge", "h", [f'x{{id="{i}",name="n{i}"}} {i}\n' for i in range(100_000)])]
    text = render_text(families).encode()
    tracemalloc.start()
    try:
        pieces, headers = await encode_pieces(families, "", "gzip", let_go=True)  # the families let go as written
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert headers["Content-Encoding"] == "gzip" and gzip.decompress(b"".join(pieces)) == text
    # a piece of text at a time (exposition._PIECE) and the compressed answer: 1.6 MB for 3.4 of text (4.5 compressed at the end)
    assert peak < 0.75 * len(text)


async def _raw_answer(port: int, method: str, path: str, accept_encoding: str = "") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: {accept_encoding}\r\nConnection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 60)
    writer.close()
    return b"\r\n".join(line for line in answer.split(b"\r\n") if not line.startswith(b"Date: "))


async def test_an_answer_written_in_pieces_is_byte_identical_to_one_written_whole(aiohttp_server: Any) -> None:
    def families() -> list[Family]:  # several pieces (exposition._PIECE), a sample left to the writer, non-ASCII text
        return [Family("x", "gauge", "h", [f'x{{id="{i}",name="é{i}"}} {i}\n' for i in range(20_000)]),
                Family("y", "counter", "h", [("y_total", (("a", "b"),), 1.5, 1.0)])]

    body, headers = encode(families(), "", "")

    async def in_pieces(request: web.Request) -> web.StreamResponse:
        pieces, headers = await encode_pieces(families(), "", request.headers.get("Accept-Encoding", ""), let_go=True)
        assert len(pieces) > 1
        return await write_pieces(request, pieces, headers)

    async def whole(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/pieces", in_pieces)
    app.router.add_get("/whole", whole)
    server = await aiohttp_server(app)
    for method in ("GET", "HEAD"):
        expected = await _raw_answer(server.port, method, "/whole")
        assert await _raw_answer(server.port, method, "/pieces") == expected
        assert b"Content-Length: " + str(len(body)).encode() in expected and (method == "HEAD") != expected.endswith(body)
    head, _, compressed = (await _raw_answer(server.port, "GET", "/pieces", "gzip")).partition(b"\r\n\r\n")
    assert b"Content-Encoding: gzip" in head and gzip.decompress(compressed) == body


def _leave_after_the_head(port: int, path: str) -> bytes:
    """A scraper that goes away once its answer has begun (its scrape timeout passed): closed with the
    rest unread, the connection is reset."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        sock.settimeout(120)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        return sock.recv(1 << 10)


async def test_a_scraper_that_leaves_while_its_answer_is_written_is_no_error(
    upstream: UpstreamFactory, exporter: ExporterFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    up = await upstream({"/": [{"id": f"{i:06d}", "v": i} for i in range(4_000)]})
    client = await exporter(BIG_ANSWER_SPEC)
    caplog.set_level(logging.DEBUG)
    path = f"/probe?target={up.url}/"
    head = await asyncio.to_thread(_leave_after_the_head, client.server.port, path)  # type: ignore[union-attr]
    assert head.startswith(b"HTTP/1.1 200")
    # the reset is an event of the loop before the next probe's request arrives: that answer comes after
    # the one left behind has given up (its writer woken by the lost connection)
    text = await _probe(client, f"target={up.url}/")
    assert text.endswith("probe_success 1\n")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def _never_read(port: int, path: str, go: threading.Event) -> tuple[int, int]:
    """A scraper that asks and reads nothing until `go`: then all it can get. Its answer's Content-Length
    and how many bytes of the body came before the connection ended."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 12)
        sock.settimeout(120)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Prometheus-Scrape-Timeout-Seconds: 2\r\n\r\n".encode())
        assert go.wait(120)
        received = b""
        try:
            while chunk := sock.recv(1 << 16):
                received += chunk
        except ConnectionResetError:
            pass
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    return length, len(body)


async def test_an_answer_its_scraper_does_not_read_is_dropped_after_the_probes_timeout(
    upstream: UpstreamFactory, exporter: ExporterFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    up = await upstream({"/": [{"id": f"{i:06d}", "v": i} for i in range(4_000)]})  # an answer of 18 MB
    client = await exporter(BIG_ANSWER_SPEC)
    caplog.set_level(logging.INFO)
    go = threading.Event()
    scraper = asyncio.ensure_future(asyncio.to_thread(_never_read, client.server.port, f"/probe?target={up.url}/", go))  # type: ignore[union-attr]
    try:
        async with asyncio.timeout(120):  # the write gives up about 2 s after the probe
            while not any("did not read its answer in time" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.05)  # polling the log: bounded by the timeout above
    finally:
        go.set()
    length, received = await scraper
    assert received < length  # the connection ended before the answer: it was let go
    assert (await _probe(client, f"target={up.url}/")).endswith("probe_success 1\n")  # the server goes on


async def _loop_turns_during(work: Any) -> tuple[Any, int]:
    """What `work` gives, and how many turns the event loop gave the others meanwhile."""
    task = asyncio.ensure_future(work)
    turns = 0
    while not task.done():
        await asyncio.sleep(0)
        turns += 1
    return await task, turns


# Each element's value filters its own numbers: milliseconds per element, far more than a slice
# (slices.SLICE_SECONDS), for fewer elements than a chunk of the fast path holds (extract._CHUNK)
OWN_VALUES = "length(v[?to_number(to_string(@)) > `0`])"
ITEM_SPEC = f"""
modules:
  default:
    metrics:
      - {{name: positive, help: p, each: few, value: '$item.{OWN_VALUES}', labels: {{id: id}}}}
"""
OWN_SPEC = f"""
modules:
  default:
    metrics:
      - {{name: positive, help: p, each: few, value: '{OWN_VALUES}', labels: {{id: id}}}}
"""
# a quick rule first: the chunk it cuts (all 200 elements) is not the slow rule's step
AFTER_QUICK_SPEC = f"""
modules:
  default:
    metrics:
      - {{name: quick, help: q, each: few, value: n, labels: {{id: id}}}}
      - {{name: positive, help: p, each: few, value: '{OWN_VALUES}', labels: {{id: id}}}}
"""
FEW = {"few": [{"id": str(i), "n": i, "v": [i % 10 for i in range(200)]} for i in range(200)]}


@pytest.mark.parametrize("spec", [ITEM_SPEC, OWN_SPEC, AFTER_QUICK_SPEC], ids=["general path", "fast path", "fast path after a quick rule"])
async def test_a_rule_whose_elements_take_long_lets_the_event_loop_run_between_its_elements(spec: str) -> None:
    module = make_spec(spec).modules["default"]
    result, turns = await _loop_turns_during(extract_async(module, {"default": FEW}, ProbeContext("default", "", {})))
    assert [value(parse(render_text([f])), "positive", id="7") for f in result.families.values() if f.name == "positive"] == [180]
    assert len(result.families["positive"].keys) == len(FEW["few"])
    assert turns > 20  # a step per element or a few: one of a few hundred elements took all of them at once


async def test_a_probe_whose_one_chunk_of_elements_takes_seconds_ends_by_its_deadline_and_lets_health_checks_through(
        upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    # 512 elements (one chunk of the fast path, counted in elements) of 2,000 numbers each: tens of
    # milliseconds per element, many seconds for all, far beyond the deadline (the scrape timeout's 2.5 s
    # less the 0.5 s offset)
    up = await upstream({"/": {"few": [{"id": str(i), "v": [i % 10 for i in range(2_000)]} for i in range(512)]}})
    client = await exporter(OWN_SPEC.replace("default:\n", "default:\n    timeout: 60s\n", 1))
    probe = asyncio.ensure_future(client.get(f"/probe?target={up.url}/", headers={"X-Prometheus-Scrape-Timeout-Seconds": "2.5"}))
    health_checks = 0
    while not probe.done():
        # a step of the extraction takes a few elements' time at most: the health check waits for one, not for all
        health = await asyncio.wait_for(client.get("/-/healthy"), 5)
        assert health.status == 200
        health_checks += 1
    s = parse(await (await probe).text())  # the exporter gave up at its deadline, and did not first extract what nobody reads
    assert value(s, "probe_failed_due_to_deadline") == 1 and "positive" not in names(s)
    assert health_checks > 0


# One rule, no `each`: one evaluation of one expression, 400 filters of 20,000 elements each (8 million visits of
# jmespath's interpreter, seconds even on a fast machine) that build nothing: only the deadline can stop it
ONE_EVALUATION_SPEC = """
modules:
  default:
    timeout: 60s
    metrics:
      - {name: filtered, help: f, value: "length([FILTERS])"}
""".replace("FILTERS", ", ".join(["items[?v > `5`]"] * 400))


async def test_a_probe_whose_one_evaluation_takes_seconds_ends_by_its_deadline_and_lets_health_checks_through(
        upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/": {"items": [{"v": 1}] * 20_000}})
    client = await exporter(ONE_EVALUATION_SPEC)
    probe = asyncio.ensure_future(client.get(f"/probe?target={up.url}/", headers={"X-Prometheus-Scrape-Timeout-Seconds": "1.0"}))
    health_checks = 0
    while not probe.done():
        health = await asyncio.wait_for(client.get("/-/healthy"), 60)  # the evaluation holds the loop until the deadline, no longer
        assert health.status == 200
        health_checks += 1
    s = parse(await (await probe).text())
    assert value(s, "probe_failed_due_to_deadline") == 1 and value(s, "probe_success") == 0
    assert "filtered" not in names(s)
    assert health_checks > 0
    trace = await _probe(client, f"target={up.url}/&debug=true", **{"X-Prometheus-Scrape-Timeout-Seconds": "1.0"})
    assert "probe failed: the deadline of 0.500s passed before the series were extracted" in trace


LONG_LABEL_SPEC = """
modules:
  default:
    label_value_length_limit: 10
    metrics:
      - {name: item_value, help: v, each: items, value: v, labels: {id: id}}
      - {name: item_traced, help: v, each: items, value: v, labels: {id: id, m: $module}}
      - {name: item_info, help: i, type: info, each: items, labels: {id: id}}
"""


@pytest.mark.parametrize("debug", ["false", "true"])
async def test_a_label_value_beyond_the_length_limit_is_an_error_of_its_series_naming_the_label(
        upstream: UpstreamFactory, exporter: ExporterFactory, debug: str) -> None:
    items = [{"id": f"{i:06d}", "v": i} for i in range(600)] + [{"id": "x" * 11, "v": 1}]  # a chunk and more on the fast path
    up = await upstream({"/": {"items": items}})
    client = await exporter(LONG_LABEL_SPEC)
    text = await _probe(client, f"target={up.url}/&debug={debug}")
    if debug == "true":
        assert "metric item_value: labels: label id is 11 characters long, beyond the label_value_length_limit of 10" in text
        text = text[text.index("\nmetrics:\n") + 10:]
    s = parse(text)
    for metric in ("item_value", "item_traced", "item_info"):
        assert value(s, "probe_extraction_errors", metric=metric) == 1
        assert value(s, "probe_series", metric=metric) == 600
    assert "x" * 11 not in text and value(s, "probe_success") == 1


async def test_default_label_value_length_limit_keeps_a_document_wide_label_out_of_every_series(
        upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/": {"build": "b" * 5_000, "items": [{"v": i} for i in range(100)]}})
    client = await exporter("""
        modules:
          default:
            metrics: [{name: item_value, help: v, each: items, value: v, labels: {build: $root.build, i: $index}}]
        """)
    s = parse(await _probe(client, f"target={up.url}/"))
    assert value(s, "probe_extraction_errors", metric="item_value") == 100 and value(s, "probe_series", metric="item_value") == 0


@pytest.mark.parametrize("labels", ["{id: id}", "{id: id, m: $module}"], ids=["fast path", "general path"])
async def test_series_beyond_the_body_size_limit_fail_the_probe_with_none_of_them(
        upstream: UpstreamFactory, exporter: ExporterFactory, labels: str) -> None:
    up = await upstream({"/": {"items": [{"id": f"{i:06d}", "v": i} for i in range(2_000)]}})
    spec = f"""
        modules:
          within: &m
            body_size_limit: 1000000
            metrics: [{{name: item_value, help: v, each: items, value: v, labels: {labels}}}]
          beyond:
            <<: *m
            body_size_limit: 10000
        """
    client = await exporter(spec)
    within = parse(await _probe(client, f"module=within&target={up.url}/"))
    assert value(within, "probe_series", metric="item_value") == 2_000 and value(within, "probe_failed_due_to_body_size_limit") == 0
    beyond = parse(await _probe(client, f"module=beyond&target={up.url}/"))
    assert value(beyond, "probe_success") == 0 and value(beyond, "probe_failed_due_to_body_size_limit") == 1
    assert "item_value" not in names(beyond)
    page = await (await client.get("/probes/2")).text()
    assert "the series would take more than 10000 bytes (body_size_limit of module beyond)" in page
