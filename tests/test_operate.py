"""Operating the exporter: reload, the probe bound, recent probes, web config (TLS, basic auth,
headers) and hostile upstreams, against the running app on real sockets."""

from __future__ import annotations

import asyncio
import base64
import html
import json
import logging
import re
import ssl
import textwrap
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import trustme
from aiohttp import web
from conftest import Held, UpstreamFactory, make_spec, wait_for
from metrics_util import parse, value
from prometheus_client.parser import text_string_to_metric_families
from prometheus_util import SESSION, jsonexporter

from jsonexporter.extract import MAX_MESSAGE
from jsonexporter.server import STATE, Options, Reloads, make_app
from jsonexporter.trace import MAX_LINE, cut
from jsonexporter.webconfig import load_web_config

SPEC_A = """
modules:
  default:
    timeout: 30s
    metrics:
      - {name: version_a, help: a, value: v}
"""
SPEC_B = """
modules:
  default:
    metrics:
      - {name: version_b, help: b, value: v}
  extra:
    metrics:
      - {name: extra_value, help: e, value: v}
"""


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yml"
    path.write_text(textwrap.dedent(SPEC_A))
    return path


async def start(aiohttp_client: Any, spec_path: Path, **options: Any) -> Any:
    spec = make_spec(spec_path.read_text(), str(spec_path))
    return await aiohttp_client(make_app(spec, Options(**options), spec_file=str(spec_path)))


async def test_reload_replaces_the_spec_when_valid(aiohttp_client: Any, spec_path: Path, upstream: UpstreamFactory) -> None:
    up = await upstream({"/": {"v": 1}})
    client = await start(aiohttp_client, spec_path)
    spec_path.write_text(textwrap.dedent(SPEC_B))
    response = await client.post("/-/reload")
    assert response.status == 200 and "reloaded" in await response.text()
    s = parse(await (await client.get(f"/probe?module=extra&target={up.url}/")).text())
    assert value(s, "extra_value") == 1
    metrics = parse(await (await client.get("/metrics")).text())
    assert value(metrics, "jsonexporter_config_last_reload_successful") == 1
    assert value(metrics, "jsonexporter_config_modules", file=str(spec_path)) == 2


@pytest.mark.parametrize("damage", ["invalid", "deleted", "unreadable"])
async def test_a_broken_spec_keeps_the_old_one_serving(aiohttp_client: Any, spec_path: Path, upstream: UpstreamFactory, damage: str) -> None:
    up = await upstream({"/": {"v": 1}})
    client = await start(aiohttp_client, spec_path)
    if damage == "invalid":
        spec_path.write_text("modules:\n  default:\n    metrics:\n      - {name: x, help: x, value: 'a['}\n")
    elif damage == "deleted":
        spec_path.unlink()
    else:
        spec_path.write_bytes(b"\xff\xfe\x00garbage")
    response = await client.post("/-/reload")
    text = await response.text()
    assert response.status == 500 and "previous spec is still served" in text
    if damage == "invalid":
        assert f"{spec_path}:4:38: modules.default.metrics[0].value: invalid JMESPath" in text
    s = parse(await (await client.get(f"/probe?target={up.url}/")).text())
    assert value(s, "version_a") == 1
    metrics = parse(await (await client.get("/metrics")).text())
    assert value(metrics, "jsonexporter_config_last_reload_successful") == 0


async def test_reload_under_load_loses_no_probe(aiohttp_client: Any, spec_path: Path, upstream: UpstreamFactory) -> None:
    held = Held({"v": 1}, count=20)
    up = await upstream({"/": held})
    client = await start(aiohttp_client, spec_path)
    probes = [asyncio.create_task(client.get(f"/probe?target={up.url}/")) for _ in range(20)]
    await wait_for(held.arrived, 20)
    spec_path.write_text(textwrap.dedent(SPEC_B))
    assert (await client.post("/-/reload")).status == 200
    held.release.set()
    responses = await asyncio.gather(*probes)
    for response in responses:
        assert response.status == 200
        s = parse(await response.text())
        assert value(s, "version_a") == 1 and value(s, "probe_success") == 1  # finished on the spec it started with
    s = parse(await (await client.get(f"/probe?target={up.url}/")).text())
    assert value(s, "version_b") == 1


async def test_reloads_asked_while_one_runs_share_the_next_one_which_starts_after_them() -> None:
    started: list[int] = []
    began, done = [asyncio.Event() for _ in range(4)], [asyncio.Event() for _ in range(4)]

    async def reload() -> tuple[bool, str]:
        n = len(started)
        started.append(n)
        began[n].set()
        await wait_for(done[n], 20)
        return True, f"reload {n}"

    reloads = Reloads()
    first = reloads.asked(reload)
    await wait_for(began[0], 20)
    during = {reloads.asked(reload) for _ in range(50)}  # a burst while the first reads the files
    assert len(during) == 1 and first not in during
    (second,) = during
    done[0].set()
    assert await first == (True, "reload 0")
    await wait_for(began[1], 20)  # the next one starts after the first, once for the whole burst
    assert started == [0, 1]
    third = reloads.asked(reload)  # asked after the second started: it may have read the files before, so a third
    assert third is not second and reloads.asked(reload) is third
    done[1].set()
    done[2].set()
    assert await second == (True, "reload 1") and await third == (True, "reload 2") and started == [0, 1, 2]
    done[3].set()
    assert await reloads.asked(reload) == (True, "reload 3")  # none running: one starts at once


async def test_a_burst_of_reloads_is_answered_by_at_most_two_reloads_per_reload_running(
    aiohttp_client: Any, spec_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    client = await start(aiohttp_client, spec_path)
    caplog.set_level(logging.INFO)
    answers = await asyncio.gather(*(client.post("/-/reload") for _ in range(30)))
    assert [r.status for r in answers] == [200] * 30
    reloaded = [r for r in caplog.records if r.getMessage() == "spec reloaded"]
    assert 1 <= len(reloaded) < 30  # each request is answered by the reload running or the next one, shared


async def test_auto_reload_picks_up_a_changed_file(aiohttp_client: Any, spec_path: Path) -> None:
    client = await start(aiohttp_client, spec_path, auto_reload_interval=0.05)
    state = client.app[STATE]
    spec_path.write_text(textwrap.dedent(SPEC_B))
    for _ in range(400):  # bounded: 20 s at most
        if "extra" in state.spec.modules:
            break
        await asyncio.sleep(0.05)  # polling a condition the background task changes
    assert "extra" in state.spec.modules


async def test_probes_over_the_bound_get_503_at_once(aiohttp_client: Any, spec_path: Path, upstream: UpstreamFactory) -> None:
    held = Held({"v": 1}, count=2)
    up = await upstream({"/": held})
    client = await start(aiohttp_client, spec_path, max_concurrent_probes=2)
    held_probes = [asyncio.create_task(client.get(f"/probe?target={up.url}/")) for _ in range(2)]
    await wait_for(held.arrived)
    response = await client.get(f"/probe?target={up.url}/")
    assert response.status == 503 and "too many concurrent probes" in await response.text()
    held.release.set()
    assert [r.status for r in await asyncio.gather(*held_probes)] == [200, 200]
    metrics = parse(await (await client.get("/metrics")).text())
    assert value(metrics, "jsonexporter_probes_total", module="default", result="rejected") == 1


async def test_landing_page_lists_recent_probes_with_details(aiohttp_client: Any, spec_path: Path) -> None:
    client = await start(aiohttp_client, spec_path)
    await client.get("/probe?target=http://user:pw@127.0.0.1:1/?token=abc")
    page = await (await client.get("/")).text()
    assert "Recent probes" in page and "failure" in page and "<script" not in page
    assert "pw@" not in page and "abc" not in page
    details = await client.get("/probes/1")
    text = await details.text()
    assert details.status == 200 and "connection_error" in text
    assert (await client.get("/probes/999")).status == 404


class _Rows(HTMLParser):
    """The rows of the table after the heading `title`: (class of the row, texts of its cells)."""

    def __init__(self, title: str) -> None:
        super().__init__()
        self.title, self.heading, self.active = title, "", False
        self.rows: list[tuple[str, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "h2":
            self.heading, self.active = "", False
        elif tag == "tr" and self.active:
            self.rows.append((dict(attrs).get("class") or "", []))
        elif tag == "td" and self.active and self.rows:
            self.rows[-1][1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2" and self.heading == self.title:
            self.active = True
        elif tag == "table":
            self.active = False

    def handle_data(self, data: str) -> None:
        self.heading += data
        if self.active and self.rows and self.rows[-1][1]:
            self.rows[-1][1][-1] += data


def recent_probes(page: str) -> list[tuple[str, list[str]]]:
    parser = _Rows("Recent probes")
    parser.feed(page)
    return [(cls, cells) for cls, cells in parser.rows if cells]  # without the header row


async def test_recent_probes_show_their_problem_counts_and_failures_stand_out(aiohttp_client: Any, tmp_path: Path, upstream: UpstreamFactory) -> None:
    nodes = [{"id": "a", "v": 1}, {"id": "b", "v": "x"}, {"id": "c"}, {"id": "d", "v": None}, {"id": "e", "v": []}, {"id": "a", "v": 2}]
    up = await upstream({"/good": {"nodes": [{"id": "a", "v": 1}]}, "/bad": {"nodes": nodes}})
    spec_file = tmp_path / "spec.yml"
    spec_file.write_text(textwrap.dedent("""
        modules:
          default:
            endpoints: {main: {url: '{target}'}, other: {url: 'http://127.0.0.1:1/'}}
            metrics: [{name: node_value, help: v, each: nodes, value: v, labels: {id: id}, endpoint: main}]
          one:
            endpoints: {main: {url: '{target}'}}
            metrics: [{name: node_value, help: v, each: nodes, value: v, labels: {id: id}}]
        """))
    client = await start(aiohttp_client, spec_file)
    for query in (f"module=one&target={up.url}/good", f"module=one&target={up.url}/bad", f"module=default&target={up.url}/good"):
        assert (await client.get(f"/probe?{query}")).status == 200
    rows = recent_probes(await (await client.get("/")).text())
    # newest first: result, endpoint failures, extraction errors, duplicate series
    assert [(cls, cells[3:7]) for cls, cells in rows] == [
        ("failure", ["failure", "1 of 2", "0", "0"]),
        ("degraded", ["degraded", "0 of 1", "4", "1"]),  # probe_success 1, yet not a plain success
        ("success", ["success", "0 of 1", "0", "0"]),
    ]
    details = await (await client.get("/probes/2")).text()
    assert "degraded" in details and "4 extraction error(s)" in details and "1 duplicate series" in details


SECRET = "tok-SECRET-0123456789abcdef"
HEAD = 12  # characters of the secret before the cut


async def _echoing_the_token_cut(aiohttp_client: Any, upstream: UpstreamFactory, before: str) -> tuple[Any, int]:
    """An exporter whose endpoint answers 503 with a reason phrase that echoes its bearer token, so that a text
    starting with `before` and then the reason is cut at MAX_MESSAGE within the token; and that text's length."""
    async def long_reason(request: web.Request) -> web.Response:
        return web.Response(status=503, reason="r" * (MAX_MESSAGE - len(before) - HEAD) + SECRET + "r" * 6000)

    up = await upstream({"/": long_reason})
    client = await aiohttp_client(make_app(make_spec(f"""
        modules:
          default:
            http_client_config: {{bearer_token: {SECRET}}}
            endpoints: {{main: {{url: '{up.url}/'}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """)))
    return client, MAX_MESSAGE - HEAD + len(SECRET) + 6000


async def test_a_long_endpoint_error_is_recorded_cut_as_extraction_messages_are_and_a_secret_the_cut_splits_stays_hidden(
    aiohttp_client: Any, upstream: UpstreamFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    recorded = "endpoint main: invalid_status: HTTP status 503 "  # how _record writes an endpoint's error
    client, whole = await _echoing_the_token_cut(aiohttp_client, upstream, recorded)
    caplog.set_level("WARNING", logger="jsonexporter")
    assert value(parse(await (await client.get("/probe")).text()), "probe_success") == 0
    (error,) = client.app[STATE].recent[-1].errors
    assert error.startswith(recorded + "r" * 100) and error.endswith(f"(first {MAX_MESSAGE} of {whole} chars)") and len(error) < MAX_MESSAGE + 100
    (logged,) = [str(r.__dict__) for r in caplog.records if r.getMessage() == "endpoint failed"]
    assert len(logged) < 3 * MAX_MESSAGE
    page = html.unescape(await (await client.get("/probes/1")).text())
    for shown in (page, logged):
        assert SECRET[:5] not in shown


async def test_a_long_endpoint_error_is_traced_cut_as_records_are_and_a_secret_the_cut_splits_stays_hidden(
    aiohttp_client: Any, upstream: UpstreamFactory,
) -> None:
    traced = "HTTP status 503 "  # how the trace's error line starts for this answer
    client, whole = await _echoing_the_token_cut(aiohttp_client, upstream, traced)
    trace = await (await client.get("/probe", params={"debug": "true"})).text()
    [error] = [line for line in trace.splitlines() if line.startswith("  error: ")]
    assert error.startswith(f"  error: {traced}" + "r" * 100) and error.endswith(f"(first {MAX_MESSAGE} of {whole} chars)"), error[-200:]
    assert len(error) < MAX_MESSAGE + 100
    assert SECRET[:5] not in trace

async def test_a_long_endpoint_error_is_printed_by_the_probe_command_cut_as_records_are_and_a_secret_the_cut_splits_stays_hidden(
    upstream: UpstreamFactory, tmp_path: Path,
) -> None:
    printed = "endpoint main: invalid_status: HTTP status 503 "  # how the probe command writes an endpoint's error

    async def long_reason(request: web.Request) -> web.Response:
        return web.Response(status=503, reason="r" * (MAX_MESSAGE - len(printed) - HEAD) + SECRET + "r" * 6000)

    up = await upstream({"/": long_reason})
    spec = tmp_path / "spec.yml"
    spec.write_text(textwrap.dedent(f"""
        modules:
          default:
            http_client_config: {{bearer_token: {SECRET}}}
            endpoints: {{main: {{url: '{up.url}/'}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """))
    proc = await asyncio.create_subprocess_exec(*jsonexporter("probe", "--config.file", str(spec), "--target", "x"),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    [error] = [line for line in err.decode().splitlines() if line.startswith("endpoint main: ")]
    whole = MAX_MESSAGE - HEAD + len(SECRET) + 6000
    assert proc.returncode == 1 and error.startswith(printed + "r" * 100), err.decode()[-300:]
    assert error.endswith(f"(first {MAX_MESSAGE} of {whole} chars)") and len(error) < MAX_MESSAGE + 100, error[-200:]
    assert SECRET[:5] not in err.decode()


async def test_a_long_extraction_message_is_recorded_and_logged_cut_once(
    aiohttp_client: Any, upstream: UpstreamFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    # the message (its labels quoted) is cut where it is made and passes _record's cut: one note, saying its whole length
    up = await upstream({"/": {"items": [{"id": "L" * 3000, "v": "not a number"}]}})
    client = await aiohttp_client(make_app(make_spec(f"""
        modules:
          default:
            endpoints: {{main: {{url: '{up.url}/'}}}}
            metrics: [{{name: x, help: x, each: items, labels: {{id: id}}, value: v}}]
        """)))
    caplog.set_level("DEBUG", logger="jsonexporter")
    assert value(parse(await (await client.get("/probe")).text()), "probe_extraction_errors", metric="x") == 1
    (error,) = client.app[STATE].recent[-1].errors
    (logged,) = [r.fields["err"] for r in caplog.records if r.getMessage() == "extraction error"]
    for shown in (error, logged):
        assert shown.startswith("metric x: ") and shown.count("chars)") == 1, shown[-200:]
        assert re.search(rf"\(first {MAX_MESSAGE} of 30\d\d chars\)$", shown), shown[-200:]


def test_a_text_cut_already_is_cut_no_further() -> None:
    for text in ("x" * 999, "x" * 1000, "x" * 1001, "y" * 5000 + "… (first 1000 of 7 chars)"):
        once = cut(text, 1000)
        assert cut(once, 1000) == once and len(once) <= 1000 + 40
    assert cut("x" * 1000 + "… (first 1000 of 5000 chars)", 999).endswith("(first 999 of 1028 chars)")  # cut at another limit: cut again


# -- hostile upstreams ------------------------------------------------------------------


@pytest.mark.parametrize(("body", "reason"), [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"a": "\xff\xfe"}', "not UTF-8"),
    (b"", "invalid JSON"),
])
async def test_hostile_bodies_fail_only_their_endpoint(aiohttp_client: Any, spec_path: Path, upstream: UpstreamFactory, body: bytes, reason: str) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    up = await upstream({"/": answer})
    client = await start(aiohttp_client, spec_path)
    text = await (await client.get(f"/probe?target={up.url}/&debug=true")).text()
    assert reason in text and "probe_success 0" in text and "Traceback" not in text
    assert (await client.get("/-/healthy")).status == 200


async def test_upstream_hanging_after_headers_times_out(aiohttp_client: Any, spec_path: Path, upstream: UpstreamFactory) -> None:
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"v": ')
        await wait_for(release, 20)
        return response

    up = await upstream({"/": stall})
    client = await start(aiohttp_client, spec_path)
    try:
        response = await client.get(f"/probe?target={up.url}/", headers={"X-Prometheus-Scrape-Timeout-Seconds": "1"})
        s = parse(await response.text())
    finally:
        release.set()
    assert value(s, "probe_success") == 0
    metrics = parse(await (await client.get("/metrics")).text())
    assert value(metrics, "jsonexporter_upstream_requests_total", module="default", endpoint="default", outcome="timeout") == 1


async def test_the_in_flight_gauge_counts_the_probes_being_answered(aiohttp_client: Any, spec_path: Path, upstream: UpstreamFactory) -> None:
    held = Held({"v": 1}, count=2, hold=60.0)
    up = await upstream({"/": held})
    client = await start(aiohttp_client, spec_path)
    probes = [asyncio.create_task(client.get(f"/probe?target={up.url}/")) for _ in range(2)]
    try:
        await wait_for(held.arrived, 30)
        during = parse(await (await client.get("/metrics")).text())
    finally:
        held.release.set()
    for response in await asyncio.gather(*probes):
        assert response.status == 200
    after = parse(await (await client.get("/metrics")).text())
    assert value(during, "jsonexporter_probes_in_flight") == 2
    assert value(after, "jsonexporter_probes_in_flight") == 0


# -- web config: TLS, basic auth, headers --------------------------------------------------


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _hash(password: str) -> str:
    # Go's htpasswd-style prefix, as in node_exporter's documentation
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$")


async def test_basic_auth_users_guard_every_path(aiohttp_client: Any, spec_path: Path, tmp_path: Path) -> None:
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"basic_auth_users:\n  alice: {_hash('wonderland')}\nhttp_server_config:\n  headers:\n    X-Frame-Options: DENY\n")
    spec = make_spec(spec_path.read_text(), str(spec_path))
    client = await aiohttp_client(make_app(spec, spec_file=str(spec_path), web_config=load_web_config(str(web_file))))
    for path in ("/", "/metrics", "/probe?target=http://127.0.0.1:1", "/-/healthy"):
        response = await client.get(path)
        assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Basic")
    wrong = await client.get("/metrics", headers=_basic("alice", "nope"))
    assert wrong.status == 401
    for _ in range(2):  # the second time from the cache of successful checks
        ok = await client.get("/metrics", headers=_basic("alice", "wonderland"))
        assert ok.status == 200 and ok.headers["X-Frame-Options"] == "DENY"
    assert (await client.get("/metrics", headers=_basic("bob", "wonderland"))).status == 401


async def test_users_that_a_reload_adds_guard_every_path_from_then_on(aiohttp_client: Any, spec_path: Path, tmp_path: Path) -> None:
    web_file = tmp_path / "web.yml"
    web_file.write_text("http_server_config:\n  headers:\n    X-Frame-Options: DENY\n")
    spec = make_spec(spec_path.read_text(), str(spec_path))
    client = await aiohttp_client(make_app(spec, spec_file=str(spec_path), web_config=load_web_config(str(web_file))))
    assert (await client.get("/-/healthy")).status == 200
    web_file.write_text(f"basic_auth_users:\n  alice: {_hash('wonderland')}\n")
    assert (await client.post("/-/reload")).status == 200
    for path in ("/", "/metrics", "/probe?target=http://127.0.0.1:1", "/-/healthy", "/no-such-page"):
        response = await client.get(path)
        assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Basic"), path
    assert (await client.get("/-/healthy", headers=_basic("alice", "wonderland"))).status == 200
    assert (await client.get("/no-such-page", headers=_basic("alice", "wonderland"))).status == 404


def test_web_config_errors_are_located(tmp_path: Path) -> None:
    from jsonexporter.spec import SpecError

    web_file = tmp_path / "web.yml"
    web_file.write_text(
        "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n  client_auth_type: Bogus\nbasic_auth_users:\n  bob: plain\n"
    )
    with pytest.raises(SpecError) as caught:
        load_web_config(str(web_file))
    lines = [str(p) for p in caught.value.problems]
    assert any(line.startswith(f"{web_file}:4:21: tls_server_config.client_auth_type:") for line in lines), lines
    assert any(line.startswith(f"{web_file}:6:8: basic_auth_users.bob:") for line in lines), lines
    web_file.write_text("tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n")
    with pytest.raises(SpecError) as caught:
        load_web_config(str(web_file))
    assert str(caught.value.problems[0]).startswith(f"{web_file}:2:14: tls_server_config.cert_file: cannot load")


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Any]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("scraper@example.test")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "server.pem", "key": tmp_path / "server.key", "client": tmp_path / "client.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    return {"ca": ca, "paths": paths}


async def _serve_tls(spec_path: Path, web_file: Path) -> tuple[web.AppRunner, str]:
    spec = make_spec(spec_path.read_text(), str(spec_path))
    app = make_app(spec, web_config=load_web_config(str(web_file)))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=app[STATE].tls)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"https://127.0.0.1:{port}"


async def test_tls_server_config_serves_https_only(spec_path: Path, tmp_path: Path, tls_files: dict[str, Any]) -> None:
    p = tls_files["paths"]
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"tls_server_config:\n  cert_file: {p['cert']}\n  key_file: {p['key']}\n  min_version: TLS12\n")
    runner, base = await _serve_tls(spec_path, web_file)
    try:
        trusting = ssl.create_default_context(cafile=str(p["ca"]))
        async with aiohttp.ClientSession(timeout=SESSION) as session:
            async with session.get(f"{base}/-/healthy", ssl=trusting) as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with session.get(base.replace("https", "http") + "/-/healthy") as response:
                    await response.read()
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(f"{base}/-/healthy") as response:  # not trusting the test CA
                    await response.read()
    finally:
        await runner.cleanup()


async def test_client_certificates_are_required_when_configured(spec_path: Path, tmp_path: Path, tls_files: dict[str, Any]) -> None:
    p = tls_files["paths"]
    web_file = tmp_path / "web.yml"
    web_file.write_text(
        f"tls_server_config:\n  cert_file: {p['cert']}\n  key_file: {p['key']}\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {p['ca']}\n"
    )
    runner, base = await _serve_tls(spec_path, web_file)
    try:
        anonymous = ssl.create_default_context(cafile=str(p["ca"]))
        with_cert = ssl.create_default_context(cafile=str(p["ca"]))
        with_cert.load_cert_chain(str(p["client"]))
        async with aiohttp.ClientSession(timeout=SESSION) as session:
            async with session.get(f"{base}/-/healthy", ssl=with_cert) as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"{base}/-/healthy", ssl=anonymous) as response:
                    await response.read()
    finally:
        await runner.cleanup()


def test_debug_json_shapes_are_plain_json() -> None:
    # the deep-nesting case above relies on json raising RecursionError, not crashing the interpreter
    with pytest.raises(RecursionError):
        json.loads("[" * 100_000 + "]" * 100_000)


# -- target allowlists ----------------------------------------------------------------------


async def test_targets_outside_the_allowlist_get_403_without_any_request(aiohttp_client: Any, tmp_path: Path, upstream: UpstreamFactory) -> None:
    up = await upstream({"/": {"v": 1}})
    spec_path = tmp_path / "spec.yml"
    spec_path.write_text(textwrap.dedent(f"""
        modules:
          default:
            targets: {{allow: ['{up.url}/.*', 'https://api\\.example\\.com/.*']}}
            endpoints: {{main: {{url: '{{target}}', headers: {{Authorization: 'Bearer s3cret'}}}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """))
    client = await start(aiohttp_client, spec_path)
    for target in ("http://127.0.0.1:1/", f"{up.url}.evil.test/", "https://api.example.com.evil.test/", "file:///etc/passwd"):
        response = await client.get("/probe", params={"target": target})
        assert response.status == 403 and "not allowed" in await response.text(), target
    assert up.hits == {}
    s = parse(await (await client.get("/probe", params={"target": f"{up.url}/"})).text())
    assert value(s, "x") == 1
    metrics = parse(await (await client.get("/metrics")).text())
    assert value(metrics, "jsonexporter_probes_total", module="default", result="forbidden") == 4


async def test_a_module_that_needs_no_target_accepts_probes_without_one(aiohttp_client: Any, tmp_path: Path, upstream: UpstreamFactory) -> None:
    up = await upstream({"/": {"v": 5}})
    spec_path = tmp_path / "spec.yml"
    spec_path.write_text(f"modules:\n  default:\n    endpoints: {{fixed: {{url: '{up.url}/'}}}}\n    metrics: [{{name: x, help: x, value: v}}]\n")
    client = await start(aiohttp_client, spec_path)
    s = parse(await (await client.get("/probe")).text())
    assert value(s, "x") == 5


async def test_a_lone_surrogate_of_an_answer_shows_as_its_json_escape_in_the_trace_and_the_recent_probes_page(
    aiohttp_client: Any, tmp_path: Path, upstream: UpstreamFactory,
) -> None:
    async def odd(request: web.Request) -> web.Response:
        return web.Response(body=b'{"v": "\\ud800x"}', content_type="application/json")

    up = await upstream({"/": odd})
    spec_path = tmp_path / "spec.yml"
    spec_path.write_text("modules:\n  default:\n    metrics: [{name: x, help: x, value: v}]\n")
    client = await start(aiohttp_client, spec_path)
    response = await client.get("/probe", params={"target": f"{up.url}/", "debug": "true"})
    trace = (await response.read()).decode("utf-8")  # strict: valid UTF-8
    (document,) = [line for line in trace.splitlines() if line.startswith("  document")]
    assert document == '  document: {"v": "\\ud800x"}' and "?x" not in trace
    response = await client.get("/probes/1")
    page = (await response.read()).decode("utf-8")
    assert response.status == 200 and "&quot;\\ud800x&quot; is not a number" in page, page


async def test_lone_surrogates_in_answers_are_written_as_their_escapes_keeping_series_apart(aiohttp_client: Any, tmp_path: Path,
                                                                                            upstream: UpstreamFactory) -> None:
    """`"\\ud800x"` and `"\\ud801x"` (which the json module lets through) are two series in valid UTF-8, not
    one written twice as "?x" (promtool accepts that, Prometheus drops one); the text of an escape
    itself (`"\\\\ud800x"`) is the same series as the surrogate, a duplicate counted as any other."""
    async def odd(request: web.Request) -> web.Response:
        return web.Response(body=b'{"items": [{"id": "\\ud800x", "v": 1}, {"id": "\\ud801x", "v": 2}, {"id": "\\\\ud800x", "v": 3},'
                                 b' {"id": "ok", "v": 4}]}', content_type="application/json")

    up = await upstream({"/": odd})
    spec_path = tmp_path / "spec.yml"
    spec_path.write_text("modules:\n  default:\n    metrics: [{name: x, help: x, each: items, value: v, labels: {id: id}}]\n")
    client = await start(aiohttp_client, spec_path)
    for debug in ("true", "false"):
        response = await client.get("/probe", params={"target": f"{up.url}/", "debug": debug})
        text = (await response.read()).decode("utf-8")  # strict: valid UTF-8
        assert response.status == 200 and 'x{id="\\\\ud800x"} 1\n' in text and 'x{id="\\\\ud801x"} 2\n' in text and 'x{id="ok"} 4' in text
    written = [s for f in text_string_to_metric_families(text) if f.name == "x" for s in f.samples]
    assert [(s.labels["id"], s.value) for s in written] == [("\\ud800x", 1), ("\\ud801x", 2), ("ok", 4)]
    assert value(parse(text), "probe_duplicate_series", metric="x") == 1


async def test_every_trace_line_is_cut_to_its_bound_a_long_url_too(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    up = await upstream({"/": {"v": 1}})
    long_query = "q=" + "a" * 6000
    client = await aiohttp_client(make_app(make_spec(f"""
        modules:
          default:
            endpoints: {{main: {{url: '{up.url}/?{long_query}'}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """)))
    trace = await (await client.get("/probe", params={"debug": "true"})).text()
    [requested] = [line for line in trace.splitlines() if line.startswith("endpoint main: GET ")]
    assert requested.startswith(f"endpoint main: GET {up.url}/?q=aaaa") and f" (first {MAX_LINE} of " in requested, requested[-100:]
    assert all(len(line) < MAX_LINE + 100 for line in trace.splitlines())

