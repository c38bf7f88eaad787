"""Module `secrets` and `login` against a real Proxmox-like API on 127.0.0.1: tickets with a CSRF token
that the API stops accepting (401) once they expire, a login made once and shared, renewed when due
and when refused, secrets read at each use and never shown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import SpecWriter, UpstreamFactory, make_spec, wait_for
from metrics_util import parse, value

from jsonexporter import logs
from jsonexporter.cli import main
from jsonexporter.secrets import Redactor
from jsonexporter.server import STATE, make_app
from jsonexporter.spec import load_text
from jsonexporter.upstream.sessions import LoginStore, Session

LOCAL = r"targets: {allow: ['http://127\.0\.0\.1:\d+']}"
PASSWORD = "pve-pass-SECRET1"


@dataclass
class Pve:
    """The API: POST /access/ticket gives a ticket and its CSRF token for the right password; /nodes
    answers 401 to a ticket it no longer accepts (`expire`), or to every ticket with `refuse`."""

    password: str = PASSWORD
    lifetime: float = 7200.0  # what the login's answer says, as `expires`
    logins: int = 0
    tickets: dict[str, str] = field(default_factory=dict)  # accepted ticket -> its CSRF token
    refuse: bool = False
    gate: asyncio.Event | None = None  # set: login answers wait for it
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def ticket(self, request: web.Request) -> web.Response:
        self.logins += 1
        n = self.logins
        self.arrived.set()
        if self.gate is not None:
            await wait_for(self.gate, 20)
        body = await request.json()
        if body.get("username") != "monitor" or body.get("password") != self.password:
            return web.json_response({"data": None}, status=401)
        ticket, csrf = f"PVE:monitor:TICKET{n:04d}SECRET", f"CSRF{n:04d}SECRET"
        self.tickets[ticket] = csrf
        return web.json_response({"data": {"ticket": ticket, "CSRFPreventionToken": csrf}, "expires": self.lifetime})

    async def nodes(self, request: web.Request) -> web.Response:
        ticket = request.cookies.get("PVEAuthCookie", "")
        if self.refuse or ticket not in self.tickets or request.headers.get("CSRFPreventionToken") != self.tickets[ticket]:
            return web.json_response({"data": None}, status=401)
        return web.json_response({"data": [{"node": "pve1", "login": int(ticket[-10:-6])}]})

    def expire(self) -> None:
        self.tickets.clear()


def pve_module(password_file: Path, expires_in: str = "2h", name: str = "pve", endpoints: str = "") -> str:
    return f"""
          {name}:
            {LOCAL}
            secrets:
              password: {{file: {password_file}}}
            login:
              url: '{{target}}/access/ticket'
              method: POST
              body: {{username: monitor, password: '{{password}}'}}
              values:
                ticket: data.ticket
                csrf: data.CSRFPreventionToken
              expires_in: {expires_in}
            endpoints:
              nodes:
                url: '{{target}}/nodes'
                headers: {{Cookie: 'PVEAuthCookie={{ticket}}', CSRFPreventionToken: '{{csrf}}'}}
{textwrap.indent(textwrap.dedent(endpoints), " " * 14)}
            metrics:
              - {{name: pve_login_generation, help: Which login the answer was made with., endpoint: nodes, value: 'data[0].login'}}
    """


async def pve_exporter(aiohttp_client: Any, tmp_path: Path, *modules: str) -> Any:
    (tmp_path / "password").write_text(PASSWORD + "\n")
    return await aiohttp_client(make_app(make_spec("modules:\n" + "\n".join(textwrap.indent(textwrap.dedent(m), "  ") for m in modules))))


async def probe(client: Any, target: str, **params: str) -> tuple[int, str]:
    response = await client.get("/probe", params={"target": target, "module": "pve", **params})
    return response.status, await response.text()


async def start_pve(upstream: UpstreamFactory, pve: Pve, **routes: Any) -> Any:
    return await upstream({"/access/ticket": pve.ticket, "/nodes": pve.nodes, **routes})


def generation(text: str) -> float:
    return value(parse(text.partition("metrics:\n")[2] or text), "pve_login_generation")  # a debug answer: the trace, then the metrics


async def test_the_login_is_made_once_and_its_values_reused(aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path) -> None:
    pve = Pve()
    up = await start_pve(upstream, pve)
    client = await pve_exporter(aiohttp_client, tmp_path, pve_module(tmp_path / "password"))
    answers = [await probe(client, up.url) for _ in range(3)]
    assert [generation(text) for _, text in answers] == [1, 1, 1]
    assert pve.logins == 1 and up.hits["/nodes"] == 3
    _, trace = await probe(client, up.url, debug="true")
    assert "login: reused, made" in trace and "values ticket, csrf (not shown)" in trace and pve.logins == 1


async def test_a_login_due_for_renewal_is_made_again(aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path) -> None:
    # the answer says its ticket lasts a microsecond (`expires_in: expires`): due again at the next probe
    pve = Pve(lifetime=1e-6)
    up = await start_pve(upstream, pve)
    client = await pve_exporter(aiohttp_client, tmp_path, pve_module(tmp_path / "password", expires_in="expires"))
    assert generation((await probe(client, up.url))[1]) == 1
    assert generation((await probe(client, up.url))[1]) == 2
    assert pve.logins == 2 and up.hits["/nodes"] == 2


async def test_refused_values_renew_the_login_and_the_endpoint_is_retried_once(aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path) -> None:
    pve = Pve()
    up = await start_pve(upstream, pve)
    client = await pve_exporter(aiohttp_client, tmp_path, pve_module(tmp_path / "password"))
    assert generation((await probe(client, up.url))[1]) == 1
    pve.expire()  # the API forgets its tickets: the next request with one gets a 401
    _, text = await probe(client, up.url, debug="true")
    assert generation(text) == 2 and value(parse(text.partition("metrics:\n")[2]), "probe_success") == 1
    assert "login: its values refused by nodes (HTTP 401): made again, and those endpoints retried once" in text
    assert pve.logins == 2 and up.hits["/nodes"] == 3
    pve.refuse = True  # refused with fresh values too: one retry only
    _, text = await probe(client, up.url)
    s = parse(text)
    assert value(s, "probe_success") == 0 and value(s, "probe_endpoint_http_status_code", endpoint="nodes") == 401
    assert pve.logins == 3 and up.hits["/nodes"] == 5


async def test_concurrent_probes_cause_one_login(aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path) -> None:
    pve = Pve(gate=asyncio.Event())
    up = await start_pve(upstream, pve)
    client = await pve_exporter(aiohttp_client, tmp_path, pve_module(tmp_path / "password"))
    state = client.app[STATE]
    probes = [asyncio.create_task(probe(client, up.url)) for _ in range(8)]
    await wait_for(pve.arrived, 20)
    for _ in range(2000):  # bounded: until all 8 probes are in, each waiting for the held login
        if state.in_flight == 8:
            break
        await asyncio.sleep(0.01)
    assert state.in_flight == 8 and pve.logins == 1
    assert pve.gate is not None
    pve.gate.set()
    answers = await asyncio.gather(*probes)
    assert [generation(text) for _, text in answers] == [1] * 8
    assert pve.logins == 1 and up.hits["/nodes"] == 8


async def test_a_failed_login_fails_every_endpoint_of_its_module_only(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    pve = Pve(password="another")
    up = await start_pve(upstream, pve, **{"/version": {"version": "8.2"}})
    other = """
      plain:
        endpoints: {version: {url: '{target}/version'}}
        metrics: [{name: pve_up, help: x, value: '`1`'}]
    """
    client = await pve_exporter(aiohttp_client, tmp_path, pve_module(tmp_path / "password", endpoints="version: {url: '{target}/version'}"), other)
    caplog.set_level(logging.WARNING)
    _, text = await probe(client, up.url)
    s = parse(text)
    assert value(s, "probe_success") == 0 and value(s, "probe_endpoint_success", endpoint="version") == 0
    assert up.hits.get("/nodes") is None and up.hits.get("/version") is None  # nothing is asked without the login
    metrics = parse(await (await client.get("/metrics")).text())
    for endpoint in ("nodes", "version"):
        assert value(metrics, "jsonexporter_upstream_requests_total", module="pve", endpoint=endpoint, outcome="login_failed") == 1
    logged = [r.getMessage() + str(r.__dict__) for r in caplog.records if r.name != "aiohttp.access"]
    assert any("login: invalid_status: HTTP status 401" in line for line in logged)
    _, text = await probe(client, up.url, module="plain")
    assert value(parse(text), "probe_success") == 1 and value(parse(text), "pve_up") == 1


async def test_a_rotated_secret_file_takes_effect_at_its_next_use(aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path) -> None:
    pve = Pve()
    keys: list[str | None] = []

    async def keyed(request: web.Request) -> web.Response:
        keys.append(request.headers.get("X-Api-Key"))
        return web.json_response({"v": 1})

    up = await start_pve(upstream, pve, **{"/keyed": keyed})
    (tmp_path / "key").write_text("key-SECRET-1\n")
    direct = f"""
      direct:
        {LOCAL}
        secrets: {{key: {{file: {tmp_path}/key}}}}
        endpoints: {{main: {{url: '{{target}}/keyed', headers: {{X-Api-Key: '{{key}}'}}}}}}
        metrics: [{{name: v, help: x, value: v}}]
    """
    client = await pve_exporter(aiohttp_client, tmp_path, pve_module(tmp_path / "password"), direct)
    await probe(client, up.url, module="direct")
    (tmp_path / "key").write_text("key-SECRET-2\n")
    await probe(client, up.url, module="direct")
    assert keys == ["key-SECRET-1", "key-SECRET-2"]
    assert generation((await probe(client, up.url))[1]) == 1
    (tmp_path / "password").write_text("pve-pass-SECRET2")
    pve.password = "pve-pass-SECRET2"
    pve.expire()
    assert generation((await probe(client, up.url))[1]) == 2  # logged in with the new password


async def test_an_unreadable_secret_is_a_config_error_of_the_endpoints_that_need_it(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JSONEXPORTER_TEST_UNSET", raising=False)
    pve = Pve()
    up = await start_pve(upstream, pve, **{"/keyed": {"v": 1}})
    direct = f"""
      direct:
        {LOCAL}
        secrets: {{key: {{file: {tmp_path}/absent}}, token: {{env: JSONEXPORTER_TEST_UNSET}}}}
        endpoints:
          keyed: {{url: '{{target}}/keyed', headers: {{X-Api-Key: '{{key}}'}}}}
          tokened: {{url: '{{target}}/keyed', headers: {{X-Token: '{{token}}'}}}}
          open: {{url: '{{target}}/keyed'}}
        metrics: [{{name: v, help: x, endpoint: open, value: v}}]
    """
    client = await pve_exporter(aiohttp_client, tmp_path, pve_module(tmp_path / "absent", name="pve"), direct)
    _, text = await probe(client, up.url, module="direct", debug="true")
    assert f"endpoint keyed: not requested: config_error: secret 'key': cannot read file '{tmp_path}/absent': No such file or directory" in text
    assert "endpoint tokened: not requested: config_error: secret 'token': environment variable JSONEXPORTER_TEST_UNSET is not set" in text
    _, text = await probe(client, up.url, module="direct")
    s = parse(text)
    assert value(s, "v") == 1 and value(s, "probe_endpoint_success", endpoint="keyed") == 0 and up.hits["/keyed"] == 2
    _, text = await probe(client, up.url)  # the login needs the unreadable password: no endpoint can be asked
    assert value(parse(text), "probe_endpoint_success", endpoint="nodes") == 0 and pve.logins == 0
    metrics = parse(await (await client.get("/metrics")).text())
    assert value(metrics, "jsonexporter_upstream_requests_total", module="pve", endpoint="nodes", outcome="config_error") == 1


async def test_a_login_request_aiohttp_cannot_make_fails_the_login_not_the_probe(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiohttp reading an HTTP_PROXY with a port out of range raises a ValueError: the login fails, saying so."""
    for name in ("http_proxy", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:99999")
    pve = Pve()
    up = await start_pve(upstream, pve)
    module = pve_module(tmp_path / "password").replace("secrets:", "http_client_config: {proxy_from_environment: true}\n            secrets:", 1)
    client = await pve_exporter(aiohttp_client, tmp_path, module)
    status, text = await probe(client, up.url, debug="true")
    assert status == 200 and "login_failed" in text and "login: the request cannot be made: ValueError: Port out of range 0-65535" in text, text
    assert pve.logins == 0


async def test_cookie_and_header_values_of_a_login_answer_without_json(aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path) -> None:
    # qBittorrent: a form login answered `Ok.` with a session cookie; here also a token in a header
    async def login(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("password") != "qb&pass SECRET":
            return web.Response(text="Fails.", status=403)
        response = web.Response(text="Ok.", headers={"X-Auth-Token": "tok-SECRET-7"})
        response.set_cookie("other", "x")
        response.set_cookie("SID", "sid-SECRET-7", httponly=True)
        return response

    async def info(request: web.Request) -> web.Response:
        ok = request.cookies.get("SID") == "sid-SECRET-7" and request.headers.get("X-Token") == "tok-SECRET-7"
        return web.json_response({"torrents": 3}) if ok else web.json_response({}, status=403)

    up = await upstream({"/api/v2/auth/login": login, "/api/v2/info": info})
    (tmp_path / "qb").write_text("qb&pass SECRET")
    client = await pve_exporter(aiohttp_client, tmp_path, f"""
      pve:
        {LOCAL}
        secrets: {{password: {{file: {tmp_path}/qb}}}}
        login:
          url: '{{target}}/api/v2/auth/login'
          method: POST
          headers: {{Content-Type: application/x-www-form-urlencoded}}
          body: 'username=admin&password={{password}}'
          values: {{sid: {{cookie: SID}}, token: {{header: X-Auth-Token}}}}
        endpoints:
          info: {{url: '{{target}}/api/v2/info', headers: {{Cookie: 'SID={{sid}}', X-Token: '{{token}}'}}}}
        metrics: [{{name: qbittorrent_torrents, help: x, value: torrents}}]
    """)
    _, text = await probe(client, up.url)
    assert value(parse(text), "qbittorrent_torrents") == 3
    await probe(client, up.url)
    assert up.hits == {"/api/v2/auth/login": 1, "/api/v2/info": 2}


async def test_secrets_and_login_values_never_reach_traces_logs_pages_or_errors(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    pve = Pve()

    async def quoting(request: web.Request) -> web.Response:  # an API quoting what it was sent in a broken answer
        return web.Response(text=f"no JSON {request.headers.get('X-Ticket')} {request.headers.get('CSRFPreventionToken')}")

    async def quoting_login(request: web.Request) -> web.Response:
        return web.Response(text=f"bad password {(await request.json())['password']}")

    up = await start_pve(upstream, pve, **{"/quoting": quoting})
    bad = await upstream({"/access/ticket": quoting_login})
    client = await pve_exporter(aiohttp_client, tmp_path, pve_module(
        tmp_path / "password", endpoints="quoting: {url: '{target}/quoting', headers: {X-Ticket: '{ticket}', CSRFPreventionToken: '{csrf}'}}"))
    caplog.set_level(logging.DEBUG)
    seen = [(await probe(client, target, debug=debug))[1] for target in (up.url, bad.url) for debug in ("true", "false")]
    seen.append(await (await client.get("/")).text())
    for n in range(1, len(client.app[STATE].recent) + 1):
        seen.append(await (await client.get(f"/probes/{n}")).text())
    logs.redact_with(client.app[STATE].redactor)  # what `serve` does
    try:
        seen += [logs.LogfmtFormatter().format(r) for r in caplog.records if r.name != "aiohttp.access"]
    finally:
        logs.redact_with(Redactor())
    everything = "\n".join(seen)
    assert "login: made for this probe" in everything and "endpoint quoting" in everything and "no JSON <redacted> <redacted>" in everything
    # the failed login's error says why, without quoting the answer (where a token would be)
    assert "login: invalid_json: invalid JSON: Expecting value at line 1 column 1" in everything and "bad password" not in everything
    for secret in (PASSWORD, "TICKET0001SECRET", "CSRF0001SECRET"):
        assert secret not in everything, secret


def test_check_locates_bad_login_specs_and_never_shows_their_secrets(write_spec: SpecWriter, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec("""
        modules:
          pve:
            parameters: {node: {default: pve1}}
            secrets:
              password: {env: PVE_PASSWORD}
              target: {env: X}
            login:
              url: '{target}/access/ticket'
              method: POST
              headers: {X-Api-Key: 'key-SECRET-9 {'}
              body: {username: monitor, password: '{password}'}
              values:
                ticket: data.ticket
                node: data.node
                here: $target
              expires_in: 'to_number(['
            endpoints:
              nodes:
                url: '{target}/nodes'
                headers: {Cookie: 'PVEAuthCookie={tiket}'}
            metrics: [{name: x, help: x, value: v}]
          open:
            secrets: {password: {env: PVE_PASSWORD}}
            login: {url: '{target}/login', body: {password: '{password}'}, values: {t: token}}
            endpoints:
              a: {url: '{target}/a', headers: {X-A: '{t}'}}
            metrics: [{name: x, help: x, value: v}]
        """)
    assert main(["check", str(spec)]) == 1
    out = capsys.readouterr().out
    problems = {line.split(": ", 2)[1]: line.split(": ", 1)[0].removeprefix(f"{spec}:") for line in out.splitlines() if line.startswith(str(spec))}
    assert problems == {
        "modules.pve.secrets.target": "6:7",
        "modules.pve.login.headers['X-Api-Key']": "10:42",
        "modules.pve.login.values.node": "14:9",
        "modules.pve.login.values.here": "15:15",
        "modules.pve.login.expires_in": "16:31",
        "modules.pve.endpoints.nodes.headers.Cookie": "20:42",
        "modules.open.login.body.password": "24:53",
        "modules.open.endpoints.a.headers['X-A']": "26:45",
    }, out
    assert "unknown placeholder {tiket}: known are" in out and "{ticket}" in out
    assert "the login sends credentials (body key password) to the host of the target" in out
    assert "endpoint a sends credentials ({t}) to the host of the target" in out
    assert "key-SECRET-9" not in out


def test_login_values_and_secrets_are_placeholders_of_the_endpoints_only() -> None:
    spec, problems = load_text(textwrap.dedent(f"""
        modules:
          pve:
            {LOCAL}
            secrets: {{password: {{env: P}}, unused: {{env: U}}}}
            labels: {{who: '{{ticket}}'}}
            login: {{url: '{{target}}/login', body: {{password: '{{password}}'}}, values: {{ticket: ticket, spare: spare}}}}
            endpoints: {{a: {{url: '{{target}}/a', headers: {{X-Ticket: '{{ticket}}'}}}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """), "spec.yml")
    assert spec is None
    shown = [(p.severity, re.sub(r"^spec\.yml:\d+:\d+: ", "", str(p))) for p in problems]
    assert any(s == "error" and m.startswith("modules.pve.labels.who: unknown placeholder {ticket}") for s, m in shown), shown
    assert ("warning", "modules.pve.secrets.unused: warning: {unused} is used by no request of the module") in shown, shown
    assert ("warning", "modules.pve.login.values.spare: warning: {spare} is used by no request of the module") in shown, shown


async def test_the_cookbook_login_spec_gives_its_golden_series_through_a_real_login(
    aiohttp_client: Any, upstream: UpstreamFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the golden answers of examples/proxmox.yml are the endpoints' (`--input` makes no login): here
    # the same answers come from an API that wants the login's ticket, and the series must be the golden ones
    root = Path(__file__).resolve().parent.parent / "examples"
    golden = root / "golden" / "proxmox"
    monkeypatch.setenv("PVE_PASSWORD", "pve-pass-SECRET3")
    tickets: list[str] = []

    async def ticket(request: web.Request) -> web.Response:
        form = await request.post()
        if (form.get("username"), form.get("password")) != ("monitor@pve", "pve-pass-SECRET3"):
            return web.json_response({"data": None}, status=401)
        tickets.append(f"PVE:monitor@pve:{len(tickets):08X}::SECRET")
        return web.json_response({"data": {"ticket": tickets[-1], "CSRFPreventionToken": "x", "username": "monitor@pve"}})

    def saved(name: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            if not tickets or request.cookies.get("PVEAuthCookie") != tickets[-1]:
                return web.json_response({"data": None}, status=401)
            return web.Response(body=(golden / f"pve.{name}.json").read_bytes(), content_type="application/json")

        return handle

    up = await upstream({"/api2/json/access/ticket": ticket, "/api2/json/nodes": saved("nodes"), "/api2/json/version": saved("version")})
    text = (root / "proxmox.yml").read_text().replace(r"allow: ['https://pve[0-9]+\.internal:8006']", r"allow: ['http://127\.0\.0\.1:\d+']")
    client = await aiohttp_client(make_app(make_spec(text)))
    status, answer = await probe(client, up.url)

    def series(exposition: str) -> list[str]:
        return [line for line in exposition.splitlines() if line and not line.startswith(("#", "probe_"))]

    assert status == 200 and len(tickets) == 1
    assert series(answer) == series((golden / "pve.prom").read_text())
    assert value(parse(answer), "probe_success") == 1


async def test_values_due_for_renewal_serve_probes_while_one_renewal_runs_in_the_background() -> None:
    store = LoginStore()
    release = asyncio.Event()
    made: list[bool] = []

    async def login(waited: bool) -> Session:
        made.append(waited)
        if len(made) > 1:
            await wait_for(release, 20)
        now = time.monotonic()
        return Session({"t": f"v{len(made)}"}, now, now - 1 if len(made) == 1 else now + 3600, now + 3600)  # the first: due at once, valid for an hour

    first = await store.get("k", login, 5)
    second = await store.get("k", login, 5)  # not kept waiting by the renewal it starts
    for _ in range(500):  # bounded: until the renewal task runs (and is held)
        if len(made) == 2:
            break
        await asyncio.sleep(0.01)
    third = await store.get("k", login, 5)
    assert (first.how, second.how, third.how) == ("made", "renewing", "renewing") and third.session is first.session
    assert made == [True, False]  # one renewal, that nobody waits for
    release.set()
    for _ in range(500):  # bounded: until the renewal is stored
        got = await store.get("k", login, 5)
        if got.session.values["t"] == "v2":
            break
        await asyncio.sleep(0.01)
    assert got.session.values == {"t": "v2"} and got.how == "reused" and made == [True, False]


async def test_the_session_store_is_bounded_least_recently_used_first_out() -> None:
    store = LoginStore(max_sessions=2)
    made: list[str] = []

    def login_as(key: str) -> Any:
        async def login(waited: bool) -> Session:
            made.append(key)
            return Session({}, time.monotonic(), math.inf, math.inf)

        return login

    for key in ("a", "b", "a", "c", "a", "b"):
        await store.get(key, login_as(key), 5)
    assert made == ["a", "b", "c", "b"] and len(store) == 2  # b went when c came: a was used since


def test_where_login_values_are_is_no_secret_to_hide(write_spec: SpecWriter, capsys: pytest.CaptureFixture[str]) -> None:
    # `token: data.token` names where a token is: `check` shows it as written (it would hide a secret-named key's value)
    spec = write_spec(f"""
        modules:
          pve:
            {LOCAL}
            login: {{url: '{{target}}/login', values: {{token: 'data.token[[', session: {{cookie: SESSIONID}}}}}}
            endpoints: {{a: {{url: '{{target}}/a', headers: {{X-A: '{{token}}', X-B: '{{session}}'}}}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """)
    assert main(["check", str(spec)]) == 1
    out = capsys.readouterr().out
    assert "in 'data.token[['" in out and "<redacted>" not in out, out


async def test_the_login_request_keeps_the_limits_of_an_endpoint_request(aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path) -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await wait_for(release, 20)
        return web.json_response({"ticket": "t"})

    async def away(request: web.Request) -> web.Response:  # a 307 keeps the POST and its body: not to another origin
        raise web.HTTPTemporaryRedirect(f"http://localhost:{request.url.port}/big")

    up = await upstream({"/hang": hang, "/away": away, "/big": {"ticket": "t" * 1000}, "/nodes": {"v": 1}})

    def module(name: str, login: str) -> str:
        return f"""
          {name}:
            {LOCAL}
            timeout: 1s
            secrets: {{password: {{file: {tmp_path}/password}}}}
            login: {{method: POST, body: {{password: '{{password}}'}}, values: {{ticket: ticket}}, {login}}}
            endpoints: {{nodes: {{url: '{{target}}/nodes', headers: {{X-Ticket: '{{ticket}}'}}}}}}
            metrics: [{{name: v, help: x, value: v}}]
        """

    client = await pve_exporter(aiohttp_client, tmp_path, module("slow", "url: '{target}/hang'"), module("big", "url: '{target}/big', max_response_bytes: 100"),
                                module("away", "url: '{target}/away'"))
    errors = {}
    for name in ("slow", "big", "away"):
        _, text = await probe(client, up.url, module=name, debug="true")
        errors[name] = next(line for line in text.splitlines() if line.startswith("endpoint nodes: not requested:"))
    release.set()
    assert errors["slow"].startswith("endpoint nodes: not requested: login_failed: login: ") and "within" in errors["slow"]
    assert errors["big"] == "endpoint nodes: not requested: login_failed: login: too_large: response of 1014 bytes is larger than max_response_bytes 100"
    assert errors["away"].startswith("endpoint nodes: not requested: login_failed: login: redirect_refused: redirect 1 (307 to http://localhost:")
    assert "/nodes" not in up.hits


async def test_a_login_answer_without_its_values_fails_the_login_saying_which(aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path) -> None:
    up = await upstream({"/login": {"data": {"ticket": {"nested": 1}}, "expires": "soon"}, "/nodes": {"v": 1}})

    def module(name: str, values: str, expires_in: str = "1h") -> str:
        return f"""
          {name}:
            {LOCAL}
            login: {{url: '{{target}}/login', values: {values}, expires_in: {expires_in}}}
            endpoints: {{nodes: {{url: '{{target}}/nodes', headers: {{X-Ticket: '{{ticket}}'}}}}}}
            metrics: [{{name: v, help: x, value: v}}]
        """

    client = await pve_exporter(aiohttp_client, tmp_path, module("missing", "{ticket: data.tiket}"), module("object", "{ticket: data.ticket}"),
                                module("header", "{ticket: {header: X-Auth-Token}}"), module("lifetime", "{ticket: expires}", "'to_number(expires)'"))
    errors = {}
    for name in ("missing", "object", "header", "lifetime"):
        _, text = await probe(client, up.url, module=name, debug="true")
        errors[name] = next(line for line in text.splitlines() if line.startswith("endpoint nodes: not requested:")).partition("login_failed: ")[2]
    assert errors == {
        "missing": "login value 'ticket': 'data.tiket' of the login's answer is missing",
        "object": "login value 'ticket': 'data.ticket' of the login's answer is an object, not a string or number",
        "header": "login value 'ticket': the login's answer's header X-Auth-Token is missing",
        "lifetime": "login: expires_in 'to_number(expires)' gives no number of seconds greater than 0 on the login's answer",
    }
    assert "/nodes" not in up.hits


async def test_scheduled_requests_log_in_and_renew_a_refused_login_without_a_probe(aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path) -> None:
    pve = Pve()
    answered: list[int] = []
    events = {n: asyncio.Event() for n in range(1, 10)}

    async def nodes(request: web.Request) -> web.Response:
        response = await pve.nodes(request)
        answered.append(response.status)
        if len(answered) in events:
            events[len(answered)].set()
        return response

    up = await upstream({"/access/ticket": pve.ticket, "/nodes": nodes})
    spec = pve_module(tmp_path / "password").replace("url: '{target}/nodes'\n", "url: '{target}/nodes'\n                refresh_interval: 1s\n")
    client = await pve_exporter(aiohttp_client, tmp_path, spec)
    assert generation((await probe(client, up.url))[1]) == 1  # joins its schedule, waiting for the first answer
    await wait_for(events[2], 30)  # then a scheduled request, with the shared login's ticket
    assert answered[:2] == [200, 200] and pve.logins == 1
    pve.expire()
    n = len(answered)
    await wait_for(events[n + 2], 30)  # refused (401), logged in again, retried at once
    assert answered[n:n + 2] == [401, 200] and pve.logins == 2
    assert generation((await probe(client, up.url))[1]) == 2


async def test_a_revalidation_refused_logs_in_again_and_the_cache_gets_the_fresh_answer(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path,
) -> None:
    pve = Pve()
    answered: list[int] = []
    retried = asyncio.Event()

    async def nodes(request: web.Request) -> web.Response:
        response = await pve.nodes(request)
        answered.append(response.status)
        if answered[-2:] == [401, 200]:
            retried.set()
        return response

    up = await upstream({"/access/ticket": pve.ticket, "/nodes": nodes})
    spec = pve_module(tmp_path / "password").replace(
        "url: '{target}/nodes'\n", "url: '{target}/nodes'\n                cache_ttl: 1ms\n                stale_while_revalidate: 1h\n")
    client = await pve_exporter(aiohttp_client, tmp_path, spec)
    assert generation((await probe(client, up.url))[1]) == 1
    pve.expire()  # the session's ticket is refused from now on, long before its `expires`
    for _ in range(400):  # bounded: until a probe finds the 1 ms answer stale and starts its revalidation
        assert (await probe(client, up.url))[0] == 200
        if len(answered) > 1:
            break
        await asyncio.sleep(0.01)  # the polling period of a bounded wait, not a synchronisation
    await wait_for(retried, 30)  # the revalidation: refused, logged in again, sent again with the new ticket
    assert answered[:3] == [200, 401, 200] and pve.logins == 2
    for _ in range(400):  # bounded: until the retried answer is stored
        status, text = await probe(client, up.url)
        if generation(text) == 2:
            break
        await asyncio.sleep(0.01)
    assert status == 200 and generation(text) == 2 and pve.logins == 2  # the probes use the renewed session and its cached answer
    assert 401 not in answered[2:]
    assert len(client.app[STATE].upstream.cache) == 1  # under the renewed request's key alone: the refused one's is gone


async def test_logins_are_counted_by_module_and_result_and_their_sessions_by_module(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path,
) -> None:
    pve, other, wrong = Pve(), Pve(), Pve(password="another-password")
    ups = [await start_pve(upstream, p) for p in (pve, other, wrong)]
    client = await pve_exporter(aiohttp_client, tmp_path, pve_module(tmp_path / "password"))
    statuses = [(await probe(client, up.url))[0] for up in ups]
    pve.expire()
    statuses.append((await probe(client, ups[0].url))[0])  # refused, logged in again: still one session for that target
    assert statuses == [200] * 4
    metrics = parse(await (await client.get("/metrics")).text())  # prometheus_client's parser
    assert value(metrics, "jsonexporter_login_requests_total", module="pve", result="success") == 3
    assert value(metrics, "jsonexporter_login_requests_total", module="pve", result="invalid_status") == 1
    assert value(metrics, "jsonexporter_login_sessions", module="pve") == 2
    labels = {tuple(sorted(name for name, _ in labelled)) for series, labelled in metrics if series.startswith("jsonexporter_login_")}
    assert labels == {("module", "result"), ("module",)}  # never a target


async def test_a_targetless_schedule_reads_its_secret_at_each_request(aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path) -> None:
    keys: list[str | None] = []
    second = asyncio.Event()

    async def keyed(request: web.Request) -> web.Response:
        keys.append(request.headers.get("X-Api-Key"))
        if len(keys) >= 2:
            second.set()
        return web.json_response({"v": 1})

    up = await upstream({"/keyed": keyed})
    (tmp_path / "key").write_text("key-SECRET-1")
    client = await pve_exporter(aiohttp_client, tmp_path, f"""
      energy:
        secrets: {{key: {{file: {tmp_path}/key}}}}
        endpoints: {{main: {{url: '{up.url}/keyed', headers: {{X-Api-Key: '{{key}}'}}, refresh_interval: 1s}}}}
        metrics: [{{name: v, help: x, value: v}}]
    """)
    await wait_for(second, 30)  # scheduled at load: no probe
    assert keys[:2] == ["key-SECRET-1", "key-SECRET-1"]
    (tmp_path / "key").write_text("key-SECRET-2")
    third = len(keys) + 1
    for _ in range(3000):  # bounded: until the next scheduled request
        if len(keys) >= third:
            break
        await asyncio.sleep(0.01)
    assert keys[third - 1] == "key-SECRET-2"
    response = await client.get("/probe", params={"module": "energy"})
    assert value(parse(await response.text()), "v") == 1


async def test_a_traced_probe_of_a_scheduled_endpoint_with_secrets_shows_the_whole_answer(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path,
) -> None:
    """A module with secrets renders its schedules' requests through the login path (fetch_logged_in): a
    traced probe's schedule parses the whole answer there too, the probes' one the fields the rules read."""
    up = await upstream({"/keyed": {"v": 1, "other": 2}})
    (tmp_path / "key").write_text("key-SECRET-1")
    client = await pve_exporter(aiohttp_client, tmp_path, f"""
      energy:
        secrets: {{key: {{file: {tmp_path}/key}}}}
        endpoints: {{main: {{url: '{up.url}/keyed', headers: {{X-Api-Key: '{{key}}'}}, refresh_interval: 1h}}}}
        metrics: [{{name: v, help: x, value: v}}]
    """)
    assert value(parse(await (await client.get("/probe", params={"module": "energy"})).text()), "v") == 1  # its schedule's first answer
    response = await client.get("/probe", params={"module": "energy", "debug": "true"})
    text = await response.text()
    (document,) = [line for line in text.splitlines() if line.startswith("  document")]
    assert json.loads(document.partition(": ")[2]) == {"v": 1, "other": 2} and "key-SECRET-1" not in text
    whole = sorted("other" in str(s.answer.document) for s in client.app[STATE].upstream.schedules if s.answer is not None)
    assert whole == [False, True]  # the probes' schedule keeps the fields the rules read


async def test_a_login_answer_that_is_not_json_is_not_quoted_where_its_token_would_be(aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path) -> None:
    token = "SIDVALUE-abcdef123456"

    async def broken(request: web.Request) -> web.Response:
        return web.Response(text='{"sid": "' + token + '", oops', content_type="application/json")

    up = await upstream({"/login": broken, "/nodes": {"v": 1}})
    client = await pve_exporter(aiohttp_client, tmp_path, f"""
          default:
            {LOCAL}
            login: {{url: '{{target}}/login', values: {{sid: sid}}}}
            endpoints: {{nodes: {{url: '{{target}}/nodes', headers: {{X-Session: '{{sid}}'}}}}}}
            metrics: [{{name: v, help: x, value: v}}]
    """)
    _, text = await probe(client, up.url, module="default", debug="true")
    page = await (await client.get("/")).text()
    assert "login_failed: login: invalid_json: invalid JSON:" in text
    assert token not in text and token not in page


def test_a_secret_shows_hidden_in_the_bytes_an_answer_is_quoted_as() -> None:
    from jsonexporter.upstream.fetch import _parse_json
    redact = Redactor()
    redact.learn("pässwort-SECRET1")
    with pytest.raises(ValueError) as raised:
        _parse_json('{"error": "wrong password pässwort-SECRET1" oops'.encode())
    assert "p\\xc3\\xa4sswort" in str(raised.value) and "sswort-SECRET1" not in redact(str(raised.value))


async def test_a_recorded_probe_stays_redacted_when_its_secret_is_pushed_out_of_the_learned_ones(
        aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path) -> None:
    async def quoting(request: web.Request) -> web.Response:  # not JSON, quoting the secret header back
        return web.Response(text=f"denied {request.headers['X-Key']}", content_type="application/json")

    up = await upstream({"/data": quoting})
    (tmp_path / "key").write_text("KEYVALUE-0123456789")
    client = await aiohttp_client(make_app(make_spec(f"""
        modules:
          default:
            {LOCAL}
            secrets: {{key: {{file: {tmp_path / 'key'}}}}}
            endpoints: {{data: {{url: '{{target}}/data', headers: {{X-Key: '{{key}}'}}}}}}
            metrics: [{{name: v, help: x, value: v}}]
    """)))
    await client.get("/probe", params={"target": up.url})
    redactor = client.server.app[STATE].redactor
    for n in range(2000):  # other run-time secrets, as many logins would bring: the first is forgotten
        redactor.learn(f"other-secret-{n:06d}")
    page = await (await client.get("/probes/1")).text()
    assert "invalid_json" in page and "KEYVALUE-0123456789" not in page


async def test_the_values_of_a_live_login_session_stay_hidden_however_many_other_values_are_learned(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path,
) -> None:
    from jsonexporter.secrets import REDACTED

    pve = Pve()
    up = await start_pve(upstream, pve)
    client = await pve_exporter(aiohttp_client, tmp_path, pve_module(tmp_path / "password"))
    assert generation((await probe(client, up.url))[1]) == 1
    redact = client.app[STATE].redactor
    redact.budget = 10_000
    for i in range(2048):  # the values of other sessions and tokens: far beyond the budget (and the 1,024 values once kept)
        redact.learn(f"other-session-value-{i:04d}")
    assert redact("ticket PVE:monitor:TICKET0001SECRET, csrf CSRF0001SECRET") == f"ticket {REDACTED}, csrf {REDACTED}"
    assert redact("other-session-value-0000") == "other-session-value-0000"  # not in use: forgotten


async def test_a_login_whose_values_the_redactor_has_no_room_to_hold_fails_and_sends_none_of_them(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path,
) -> None:
    """The values of live sessions are never forgotten, and bounded (secrets.HELD_BUDGET): a session beyond
    the bound is not used, its probe fails with login_failed, the sessions in use go on; with room again, it is."""
    pve = Pve()
    up = await start_pve(upstream, pve)
    client = await pve_exporter(aiohttp_client, tmp_path, pve_module(tmp_path / "password"),
                                pve_module(tmp_path / "password", name="other"))
    assert generation((await probe(client, up.url))[1]) == 1
    redact = client.app[STATE].redactor
    redact.held_budget = redact.held_chars  # room for no more
    _, text = await probe(client, up.url, module="other", debug="true")
    assert pve.logins == 2 and up.hits["/nodes"] == 1  # logged in, and its ticket sent nowhere
    assert "login_failed" in text and "its values are not used" in text and "HELD_BUDGET" in text
    assert "TICKET0002SECRET" not in text and value(parse(text.partition("metrics:\n")[2]), "probe_success") == 0
    assert generation((await probe(client, up.url))[1]) == 1  # the session in use goes on
    redact.held_budget = 10 * redact.held_chars
    assert generation((await probe(client, up.url, module="other"))[1]) == 2 and pve.logins == 2  # its session, now held


async def test_a_secret_file_nobody_writes_fails_its_probe_within_the_timeout_and_other_probes_answer(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path,
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading waits for a writer, as a read from a hung NFS mount waits for the server
    up = await upstream({"/keyed": {"v": 1}})
    client = await pve_exporter(aiohttp_client, tmp_path, f"""
      piped:
        {LOCAL}
        timeout: 20s
        secrets: {{key: {{file: {fifo}}}}}
        endpoints: {{keyed: {{url: '{{target}}/keyed', headers: {{X-Api-Key: '{{key}}'}}}}}}
        metrics: [{{name: v, help: x, endpoint: keyed, value: v}}]
    """, f"""
      filed:
        {LOCAL}
        http_client_config: {{bearer_token_file: {fifo}}}
        endpoints: {{keyed: {{url: '{{target}}/keyed'}}}}
        metrics: [{{name: v, help: x, endpoint: keyed, value: v}}]
    """, f"""
      plain:
        {LOCAL}
        endpoints: {{keyed: {{url: '{{target}}/keyed'}}}}
        metrics: [{{name: v, help: x, endpoint: keyed, value: v}}]
    """)
    try:
        stuck = [asyncio.create_task(probe(client, up.url, module=m, debug="true")) for m in ("piped", "piped", "filed")]
        for _ in range(3):  # while those wait for the file, the loop serves the others
            _, text = await asyncio.wait_for(probe(client, up.url, module="plain"), 20)
            assert value(parse(text), "probe_success") == 1
        (piped, piped_text), (piped_again, _), (filed, filed_text) = [await asyncio.wait_for(t, 30) for t in stuck]
        assert piped == piped_again == filed == 200
        assert f"endpoint keyed: not requested: config_error: secret 'key': cannot read file '{fifo}': no answer within 2s" in piped_text
        assert "-> config_error, status 0, 0 bytes" in filed_text
        assert f"error: cannot read credentials_file '{fifo}': no answer within 2s" in filed_text
        assert up.hits.get("/keyed") == 3  # the plain probes only
    finally:  # let the reads blocked on the FIFO end: a writer comes and goes
        with contextlib.suppress(OSError):  # no reader left
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


async def test_a_secret_file_larger_than_the_bound_is_unreadable(tmp_path: Path) -> None:
    from jsonexporter.spec.sources import MAX_SECRET_BYTES
    from jsonexporter.upstream.files import SecretFiles

    (tmp_path / "big").write_bytes(b"x" * (MAX_SECRET_BYTES + 1))
    (tmp_path / "ok").write_bytes(b"x" * (MAX_SECRET_BYTES - 1) + b"\n")
    files = SecretFiles()
    with pytest.raises(OSError, match=f"larger than {MAX_SECRET_BYTES} bytes"):
        await files.read(str(tmp_path / "big"))
    assert await files.read(str(tmp_path / "ok")) == "x" * (MAX_SECRET_BYTES - 1)


def test_a_secret_read_from_its_declaration_is_bounded_as_files_read_at_run_time_are(tmp_path: Path) -> None:
    """Secret.read / ModuleSecret.read: a FIFO nobody writes is unreadable within 2 s, a file above the bound too
    (the one bound of secret files, as SecretFiles.read's)."""
    from jsonexporter.spec.sources import MAX_SECRET_BYTES

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "big").write_bytes(b"x" * (MAX_SECRET_BYTES + 1))
    (tmp_path / "ok").write_bytes(b"token\n")
    script = textwrap.dedent("""
        import sys
        from jsonexporter.spec.model import ModuleSecret, Secret
        for file in sys.argv[1:]:
            try:
                print(repr(ModuleSecret("key", file=file).read()), repr(Secret(file=file).read()))
            except OSError as exc:
                print(exc.strerror)
        """)
    # a process of its own: a read that never ends fails the test at the timeout, and no thread of it stays here
    result = subprocess.run([sys.executable, "-c", script, *(str(tmp_path / n) for n in ("fifo", "big", "ok"))],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == ["no answer within 2s (a FIFO or device nobody writes, or a hung mount?)",
                                          f"larger than {MAX_SECRET_BYTES} bytes", "'token' 'token'"]


async def test_users_whose_login_alone_carries_their_name_share_no_session_schedule_or_cached_answer(
    aiohttp_client: Any, upstream: UpstreamFactory,
) -> None:
    users = {"alice": 1, "bob": 2}

    async def log_in(request: web.Request) -> web.Response:
        return web.json_response({"token": f"TOKEN-{request.query['user']}-SECRET"})

    async def data(request: web.Request) -> web.Response:  # whose data: the token's, not a parameter of this request
        return web.json_response({"user": users[request.headers["X-Token"].split("-")[1]]})

    up = await upstream({"/login": log_in, "/scheduled": data, "/cached": data, "/plain": data})
    client = await aiohttp_client(make_app(make_spec(f"""
        modules:
          per_user:
            {LOCAL}
            parameters: {{user: {{pattern: '[a-z]+'}}}}
            login:
              url: '{{target}}/login?user={{user}}'
              values: {{token: token}}
            endpoints:
              scheduled: {{url: '{{target}}/scheduled', headers: {{X-Token: '{{token}}'}}, refresh_interval: 1h}}
              cached: {{url: '{{target}}/cached', headers: {{X-Token: '{{token}}'}}, cache_ttl: 1h}}
              plain: {{url: '{{target}}/plain', headers: {{X-Token: '{{token}}'}}}}
            metrics:
              - {{name: scheduled_user, help: x, endpoint: scheduled, value: user}}
              - {{name: cached_user, help: x, endpoint: cached, value: user}}
              - {{name: plain_user, help: x, endpoint: plain, value: user}}
    """)))
    for _ in range(2):
        for user, n in users.items():
            response = await client.get("/probe", params={"target": up.url, "module": "per_user", "user": user})
            metrics = parse(await response.text())
            assert [value(metrics, f"{e}_user") for e in ("scheduled", "cached", "plain")] == [n, n, n], user
    assert up.hits["/login"] == 2  # one session per user, reused
    assert up.hits["/scheduled"] == 2 and up.hits["/cached"] == 2  # one schedule, one cached answer per user
