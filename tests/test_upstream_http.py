"""Upstream HTTP for real APIs: authentication, TLS, proxies, bodies, redirects, compression,
caching and coalescing, each against real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import ssl
import textwrap
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from conftest import ForwardProxy, Held, UpstreamFactory, make_spec, wait_for
from metrics_util import parse, value

from jsonexporter import logs
from jsonexporter.secrets import Redactor
from jsonexporter.server import STATE, Options, make_app
from jsonexporter.upstream import fetch

LOCAL = r"targets: {allow: ['https?://(127\.0\.0\.1|localhost):\d+(/.*)?']}"


async def exporter_for(aiohttp_client: Any, text: str) -> Any:
    return await aiohttp_client(make_app(make_spec(textwrap.dedent(text))))


async def probe(client: Any, target: str, **params: str) -> tuple[int, str]:
    response = await client.get("/probe", params={"target": target, **params})
    return response.status, await response.text()


def needs_auth(expected: str, answer: Any = None) -> Any:
    async def handle(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response(answer if answer is not None else {"v": 1})

    return handle


# -- authentication --------------------------------------------------------------------------


async def test_basic_auth_inline_and_from_a_file_read_at_each_request(aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    up = await upstream({"/": needs_auth("Basic " + base64.b64encode(b"alice:s3cret").decode())})
    client = await exporter_for(aiohttp_client, f"""
        modules:
          inline:
            {LOCAL}
            http_client_config: {{basic_auth: {{username: alice, password: s3cret}}}}
            metrics: [{{name: x, help: x, value: v}}]
          from_file:
            {LOCAL}
            http_client_config: {{basic_auth: {{username: alice, password_file: {password}}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """)
    for module in ("inline", "from_file"):
        _, text = await probe(client, f"{up.url}/", module=module)
        assert value(parse(text), "probe_success") == 1, module
    password.write_text("rotated")  # a rotated secret takes effect without a reload
    _, text = await probe(client, f"{up.url}/", module="from_file")
    s = parse(text)
    assert value(s, "probe_success") == 0 and value(s, "probe_endpoint_http_status_code", endpoint="default") == 401


@pytest.mark.parametrize("block", [
    "{authorization: {credentials: tok-123}}",
    "{authorization: {type: Bearer, credentials_file: CREDS}}",
    "{bearer_token: tok-123}",
    "{bearer_token_file: CREDS}",
])
async def test_bearer_credentials_in_every_prometheus_spelling(aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path, block: str) -> None:
    creds = tmp_path / "creds"
    creds.write_text("tok-123\n")
    up = await upstream({"/": needs_auth("Bearer tok-123")})
    client = await exporter_for(aiohttp_client, f"""
        modules:
          default:
            {LOCAL}
            http_client_config: {block.replace("CREDS", str(creds))}
            metrics: [{{name: x, help: x, value: v}}]
        """)
    _, text = await probe(client, f"{up.url}/")
    assert value(parse(text), "x") == 1


async def test_a_missing_secret_file_fails_the_endpoint_and_names_the_file(aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path) -> None:
    up = await upstream({"/": {"v": 1}})
    client = await exporter_for(aiohttp_client, f"""
        modules:
          default:
            {LOCAL}
            http_client_config: {{bearer_token_file: {tmp_path}/absent}}
            metrics: [{{name: x, help: x, value: v}}]
        """)
    _, text = await probe(client, f"{up.url}/", debug="true")
    assert "config_error" in text and f"{tmp_path}/absent" in text and "No such file" in text
    assert up.hits == {}


async def test_oauth2_token_is_fetched_once_for_concurrent_probes_and_refreshed_before_expiry(
    aiohttp_client: Any, upstream: UpstreamFactory,
) -> None:
    issued: list[str] = []
    forms: list[dict[str, str]] = []
    lifetime = {"expires_in": 3600.0}

    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        forms.append({**form, "auth": request.headers.get("Authorization", "")})
        await asyncio.sleep(0)  # let the other probes pile up behind the single refresh
        issued.append(f"token-{len(issued) + 1}")
        return web.json_response({"access_token": issued[-1], "token_type": "Bearer", **lifetime})

    async def api(request: web.Request) -> web.Response:
        got = request.headers.get("Authorization", "")
        if not issued or got != f"Bearer {issued[-1]}":
            return web.json_response({}, status=401)
        return web.json_response({"v": len(issued)})

    up = await upstream({"/token": token, "/api": api})
    client = await exporter_for(aiohttp_client, f"""
        modules:
          default:
            {LOCAL}
            http_client_config:
              oauth2:
                client_id: exporter
                client_secret: shhh
                token_url: '{up.url}/token'
                scopes: [read, metrics]
                endpoint_params: {{audience: api}}
            endpoints: {{api: {{url: '{{target}}/api'}}}}
            metrics: [{{name: token_generation, help: x, endpoint: api, value: v}}]
        """)
    results = await asyncio.gather(*(probe(client, up.url) for _ in range(10)))
    assert [value(parse(text), "token_generation") for _, text in results] == [1] * 10
    assert len(forms) == 1
    assert forms[0]["grant_type"] == "client_credentials" and forms[0]["scope"] == "read metrics" and forms[0]["audience"] == "api"
    assert forms[0]["auth"] == "Basic " + base64.b64encode(b"exporter:shhh").decode()
    # a token about to expire is replaced before it is used again
    lifetime["expires_in"] = 0.05
    source = next(iter(client.app[STATE].upstream.clients._tokens.values()))
    source.refresh_at = 0  # the cached token is due: as if its hour had passed
    await probe(client, up.url)
    for _ in range(200):  # bounded: the 50 ms token expires, the next probe refreshes it
        _, text = await probe(client, up.url)
        if len(issued) == 3:
            break
        await asyncio.sleep(0.01)
    assert len(issued) == 3 and value(parse(text), "token_generation") == 3


async def _oauth2_exporter(aiohttp_client: Any, url: str, endpoint: str = "") -> Any:
    """An exporter whose module reads `v` of `{target}/api` with a token of `url`/token (client_id c, secret s);
    `endpoint`: more keys of the endpoint."""
    return await exporter_for(aiohttp_client, f"""
        modules:
          default:
            {LOCAL}
            http_client_config: {{oauth2: {{client_id: c, client_secret: s, token_url: '{url}/token'}}}}
            endpoints: {{api: {{url: '{{target}}/api'{endpoint}}}}}
            metrics: [{{name: token_generation, help: x, endpoint: api, value: v}}]
        """)


def _revocable_tokens(issued: list[str], valid: set[str]) -> dict[str, Any]:
    """A token endpoint issuing token-1, token-2, ... without expires_in (kept until refused) and an /api whose `v` is
    the generation of the token it was sent, 401 for a token not in `valid` (the test revokes by emptying it)."""
    async def token(request: web.Request) -> web.Response:
        issued.append(f"token-{len(issued) + 1}")
        valid.add(issued[-1])
        return web.json_response({"access_token": issued[-1], "token_type": "Bearer"})

    async def api(request: web.Request) -> web.Response:
        got = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return web.json_response({"v": int(got.rpartition("-")[2])}) if got in valid else web.json_response({}, status=401)

    return {"/token": token, "/api": api}


async def test_an_oauth2_token_an_upstream_refuses_with_401_is_replaced_and_the_request_sent_once_more(
    aiohttp_client: Any, upstream: UpstreamFactory,
) -> None:
    issued: list[str] = []
    valid: set[str] = set()
    up = await upstream(_revocable_tokens(issued, valid))
    client = await _oauth2_exporter(aiohttp_client, up.url)
    _, text = await probe(client, up.url)
    assert value(parse(text), "token_generation") == 1
    valid.clear()  # the token endpoint revoked its tokens (a restart): the one held has no expiry to renew it by
    _, text = await probe(client, up.url, debug="true")
    assert "endpoint api: its oauth2 token refused (HTTP 401): a new one fetched, the request sent once more" in text
    assert "-> success, status 200" in text and "\ntoken_generation 2\n" in text and "\nprobe_success 1\n" in text
    assert issued == ["token-1", "token-2"] and up.hits["/api"] == 3


async def test_a_scheduled_endpoint_whose_oauth2_token_is_refused_gets_a_new_one_in_its_background_request(
    aiohttp_client: Any, upstream: UpstreamFactory,
) -> None:
    issued: list[str] = []
    valid: set[str] = set()
    up = await upstream(_revocable_tokens(issued, valid))
    client = await _oauth2_exporter(aiohttp_client, up.url, ", refresh_interval: 1s")
    _, text = await probe(client, up.url)
    assert value(parse(text), "token_generation") == 1
    valid.clear()
    for _ in range(1000):  # bounded: the schedule's next request (1 s on) is refused, and sent again with a new token
        _, text = await probe(client, up.url)
        if value(parse(text), "token_generation") == 2:
            break
        await asyncio.sleep(0.01)  # the polling period of a bounded wait, not a synchronisation
    assert value(parse(text), "token_generation") == 2 and issued == ["token-1", "token-2"]
    assert up.hits["/api"] == 3  # the first answer, the refused one, the one sent again: no probe sent its own


async def test_a_refused_oauth2_token_whose_replacement_cannot_be_fetched_leaves_the_401_and_the_trace_says_why(
    aiohttp_client: Any, upstream: UpstreamFactory,
) -> None:
    issued: list[str] = []

    async def token(request: web.Request) -> web.Response:
        issued.append(f"token-{len(issued) + 1}")
        return web.json_response({"access_token": issued[-1]}) if len(issued) == 1 else web.json_response({}, status=503)

    up = await upstream({"/token": token, "/api": needs_auth("Bearer never-this")})
    client = await _oauth2_exporter(aiohttp_client, up.url)
    _, text = await probe(client, up.url, debug="true")
    assert ("endpoint api: its oauth2 token refused (HTTP 401): no new one (oauth2: token endpoint answered HTTP 503): "
            "the 401 stands") in text
    assert "\nprobe_success 0\n" in text and len(issued) == 2 and up.hits["/api"] == 1


async def test_an_upstream_refusing_every_oauth2_token_gets_no_token_request_per_probe(
    aiohttp_client: Any, upstream: UpstreamFactory,
) -> None:
    issued: list[str] = []

    async def token(request: web.Request) -> web.Response:
        issued.append(f"token-{len(issued) + 1}")
        return web.json_response({"access_token": issued[-1], "expires_in": 3600})

    up = await upstream({"/token": token, "/api": needs_auth("Bearer never-this")})
    client = await _oauth2_exporter(aiohttp_client, up.url)
    for _ in range(4):
        _, text = await probe(client, up.url)
        assert "probe_success 0" in text and 'probe_endpoint_http_status_code{endpoint="api"} 401' in text
    # the first 401 dropped token-1 and the request went again with token-2; token-2 is kept (TOKEN_REFUSED_INTERVAL)
    assert issued == ["token-1", "token-2"] and up.hits["/api"] == 5
    _, text = await probe(client, up.url, debug="true")
    assert "endpoint api: its oauth2 token refused (HTTP 401): kept, as one was dropped less than 30s ago: the 401 stands" in text


@pytest.mark.parametrize(("expires_in", "usable"), [
    ("1" + "0" * 400, False),  # beyond a float
    ("1e400", False), ("NaN", False), ("-Infinity", False), ("-5", False), ("true", False), ('"soon"', False), ("{}", False),
    ('"3599"', True),  # as some token endpoints write it
    ("0", True), ("null", True),  # no expiry said
])
async def test_an_oauth2_token_without_a_usable_expires_in_fails_its_endpoint_as_a_config_error(
    aiohttp_client: Any, upstream: UpstreamFactory, expires_in: str, usable: bool,
) -> None:
    async def token(request: web.Request) -> web.Response:
        return web.Response(text=f'{{"access_token": "tok-QQQQ", "expires_in": {expires_in}}}', content_type="application/json")

    up = await upstream({"/token": token, "/api": needs_auth("Bearer tok-QQQQ")})
    client = await exporter_for(aiohttp_client, f"""
        modules:
          default:
            {LOCAL}
            http_client_config: {{oauth2: {{client_id: c, client_secret: cs-CCCC, token_url: '{up.url}/token'}}}}
            endpoints: {{api: {{url: '{{target}}/api'}}}}
            metrics: [{{name: x, help: x, endpoint: api, value: v}}]
        """)
    status, text = await probe(client, up.url, debug="true")
    assert status == 200
    if usable:
        assert "probe_success 1" in text
    else:
        assert "-> config_error" in text and "oauth2: the token endpoint's answer has no usable expires_in" in text
        assert "probe_success 0" in text and up.hits.get("/api", 0) == 0


async def test_an_unexpected_failure_of_one_endpoint_fails_that_endpoint_without_quoting_it(
    aiohttp_client: Any, upstream: UpstreamFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    # a fault of ours stands for any: the token answer's JSON reader (stdlib's, read by client.py only: answers are
    # parsed by orjson) raising what nothing expects, its text quoting a value
    def faulty(*args: Any, **kwargs: Any) -> Any:
        raise LookupError("quoting sec-RRRR")

    monkeypatch.setattr(json, "loads", faulty)
    up = await upstream({"/token": {"access_token": "tok-QQQQ"}, "/api": {"v": 1}})
    client = await exporter_for(aiohttp_client, f"""
        modules:
          two:
            {LOCAL}
            endpoints:
              plain: {{url: '{{target}}/api'}}
              authed: {{url: '{{target}}/api', http_client_config: {{oauth2: {{client_id: c, client_secret: s, token_url: '{up.url}/token'}}}}}}
            metrics: [{{name: x, help: x, endpoint: plain, value: v}}]
          one:
            {LOCAL}
            http_client_config: {{oauth2: {{client_id: c, client_secret: s, token_url: '{up.url}/token'}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """)
    caplog.set_level(logging.DEBUG)
    status, text = await probe(client, up.url, module="two")
    s = parse(text)
    assert status == 200 and value(s, "probe_success") == 0 and value(s, "x") == 1
    assert value(s, "probe_endpoint_success", endpoint="plain") == 1 and value(s, "probe_endpoint_success", endpoint="authed") == 0
    for module in ("two", "one"):
        status, text = await probe(client, up.url, module=module, debug="true")
        assert status == 200 and "probe_success 0" in text
        assert re.search(r"-> internal_error: LookupError at jsonexporter/upstream/client\.py:\d+ \(a fault of jsonexporter's own", text), text
    shown = text + "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert "LookupError at jsonexporter/upstream/client.py" in shown and "sec-RRRR" not in shown


async def test_a_reload_keeps_the_token_of_an_unchanged_oauth2_configuration_and_a_changed_one_gets_a_new_one(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path,
) -> None:
    forms: list[str] = []

    async def token(request: web.Request) -> web.Response:
        forms.append(str((await request.post()).get("audience")))
        return web.json_response({"access_token": f"tok-{len(forms)}", "expires_in": 3600})

    async def api(request: web.Request) -> web.Response:
        return web.json_response({"v": int(request.headers.get("Authorization", "Bearer tok-0").rpartition("-")[2])})

    up = await upstream({"/token": token, "/api": api})
    spec = f"""
        modules:
          default:
            {LOCAL}
            http_client_config: {{oauth2: {{client_id: c, client_secret: s, token_url: '{up.url}/token', endpoint_params: {{audience: A}}}}}}
            endpoints: {{api: {{url: '{{target}}/api'}}}}
            metrics: [{{name: token, help: the token's number, endpoint: api, value: v}}]
        """
    client = await reloadable(aiohttp_client, tmp_path / "spec.yml", spec)
    answers = await asyncio.gather(*(client.post("/-/reload") for _ in range(20)))  # before any token: nothing to keep yet
    assert [r.status for r in answers] == [200] * 20
    for _ in range(3):
        _, text = await probe(client, up.url)
        assert value(parse(text), "token") == 1
        assert await reload(client) == "reloaded (unchanged)"
    (tmp_path / "spec.yml").write_text(textwrap.dedent(spec.rstrip(" ") + "          other: {metrics: [{name: y, help: y, value: v}]}\n"))
    assert await reload(client) == "reloaded"  # the spec changed, not this configuration
    _, text = await probe(client, up.url)
    assert value(parse(text), "token") == 1 and forms == ["A"]
    (tmp_path / "spec.yml").write_text(textwrap.dedent(spec.replace("audience: A", "audience: B")))
    assert await reload(client) == "reloaded"
    _, text = await probe(client, up.url)
    assert value(parse(text), "token") == 2 and forms == ["A", "B"]


async def test_a_reload_keeps_the_token_while_its_secret_file_holds_the_same_secret_and_a_rotated_one_gets_a_new_token(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path,
) -> None:
    """A client_secret_file's configuration is its path: a rotated file left it as it was, so a reload kept the token
    fetched with the old secret until it was due. After a reload the file is read before the token's next use: the
    same secret keeps it (no token request), a rotated one gets a token of its own at once, as Prometheus drops its
    token source when the secret changes."""
    secrets: list[str] = []

    async def token(request: web.Request) -> web.Response:
        secrets.append(base64.b64decode(request.headers["Authorization"].removeprefix("Basic ")).decode().partition(":")[2])
        return web.json_response({"access_token": f"tok-{len(secrets)}", "expires_in": 3600})

    async def api(request: web.Request) -> web.Response:
        return web.json_response({"v": int(request.headers.get("Authorization", "Bearer tok-0").rpartition("-")[2])})

    up = await upstream({"/token": token, "/api": api})
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("first-secret\n")
    spec = f"""
        modules:
          default:
            {LOCAL}
            http_client_config: {{oauth2: {{client_id: c, client_secret_file: '{secret_file}', token_url: '{up.url}/token'}}}}
            endpoints: {{api: {{url: '{{target}}/api'}}}}
            metrics: [{{name: token, help: the token's number, endpoint: api, value: v}}]
        """
    client = await reloadable(aiohttp_client, tmp_path / "spec.yml", spec)
    _, text = await probe(client, up.url)
    assert value(parse(text), "token") == 1
    assert await reload(client) == "reloaded (unchanged)"
    _, text = await probe(client, up.url)
    assert value(parse(text), "token") == 1 and secrets == ["first-secret"]  # the same secret: the same token
    secret_file.write_text("second-secret\n")
    _, text = await probe(client, up.url)
    assert value(parse(text), "token") == 1  # no reload yet: the token goes on until it is due
    assert await reload(client) == "reloaded (unchanged)"
    _, text = await probe(client, up.url)
    assert value(parse(text), "token") == 2 and secrets == ["first-secret", "second-secret"]
    _, text = await probe(client, up.url)
    assert value(parse(text), "token") == 2 and len(secrets) == 2  # read once after the reload, not at every use


# -- TLS -------------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost", "api.internal.test")
    client = ca.issue_cert("exporter@example.test")
    files = {"ca": tmp_path / "ca.pem", "client_cert": tmp_path / "client.pem", "client_key": tmp_path / "client.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    return {"ca": ca, "server": server, "files": files}


async def tls_upstream(aiohttp_server: Any, pki: dict[str, Any], require_client_cert: bool = False) -> Any:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki["server"].configure_cert(context)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        pki["ca"].configure_trust(context)

    async def handle(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        return web.json_response({"v": 1, "client_cert": bool(peer)})

    app = web.Application()
    app.router.add_get("/", handle)
    return await aiohttp_server(app, ssl=context)


async def test_tls_with_a_private_ca_server_name_and_client_certificate(aiohttp_client: Any, aiohttp_server: Any, pki: dict[str, Any]) -> None:
    server = await tls_upstream(aiohttp_server, pki, require_client_cert=True)
    f = pki["files"]
    client = await exporter_for(aiohttp_client, f"""
        modules:
          mtls:
            {LOCAL}
            http_client_config:
              tls_config: {{ca_file: {f['ca']}, cert_file: {f['client_cert']}, key_file: {f['client_key']}, server_name: api.internal.test}}
            metrics: [{{name: client_cert_seen, help: x, value: client_cert}}]
          no_client_cert:
            {LOCAL}
            http_client_config: {{tls_config: {{ca_file: {f['ca']}}}}}
            metrics: [{{name: x, help: x, value: v}}]
          system_trust:
            {LOCAL}
            metrics: [{{name: x, help: x, value: v}}]
        """)
    target = f"https://127.0.0.1:{server.port}/"
    _, text = await probe(client, target, module="mtls")
    assert value(parse(text), "client_cert_seen") == 1
    for module in ("no_client_cert", "system_trust"):
        _, text = await probe(client, target, module=module, debug="true")
        assert "probe_success 0" in text and "connection_error" in text, module


async def reloadable(aiohttp_client: Any, path: Path, text: str) -> Any:
    path.write_text(textwrap.dedent(text))
    return await aiohttp_client(make_app(make_spec(path.read_text(), str(path)), Options(), spec_file=str(path)))


async def reload(client: Any) -> str:
    response = await client.post("/-/reload")
    assert response.status == 200, await response.text()
    return str(await response.text()).strip()


def _rotating_spec(url: str, secret: str, token_path: str) -> str:
    return textwrap.dedent(f"""
        modules:
          default:
            {LOCAL}
            timeout: 60s
            login: {{url: '{{target}}/login', method: POST, values: {{t: token}}}}
            endpoints:
              main:
                url: '{{target}}/data'
                headers: {{X-Session: '{{t}}'}}
                http_client_config: {{oauth2: {{client_id: c, client_secret: {secret}, token_url: '{url}{token_path}'}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """)


async def test_a_probe_begun_before_a_reload_sends_no_token_request_with_the_configuration_the_reload_replaced(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
) -> None:
    """A probe of the old spec that reaches its endpoint after the reload (it waited for its login) asked the new
    Clients for the token of its own configuration: the old client secret went to the old token_url after the
    reload that rotated it, and a TokenSource of it stayed. Now its endpoint fails, saying why."""
    login_arrived, release_login = asyncio.Event(), asyncio.Event()
    reloaded = False
    after_reload: list[str] = []  # the Basic credentials of each token request made after the reload

    async def login(request: web.Request) -> web.Response:
        login_arrived.set()
        await wait_for(release_login, 30)
        return web.json_response({"token": "session-1"})

    def token(path: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            if reloaded:
                creds = base64.b64decode(request.headers["Authorization"].removeprefix("Basic ")).decode()
                after_reload.append(f"{path} {creds}")
            return web.json_response({"access_token": f"tok-{path.strip('/')}", "expires_in": 3600})
        return handle

    async def data(request: web.Request) -> web.Response:
        return web.json_response({"v": 1})

    app = web.Application()
    app.router.add_post("/login", login)
    app.router.add_post("/old-token", token("/old-token"))
    app.router.add_post("/new-token", token("/new-token"))
    app.router.add_get("/data", data)
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    file = tmp_path / "spec.yml"
    file.write_text(_rotating_spec(url, "old-secret", "/old-token"))
    client = await aiohttp_client(make_app(make_spec(file.read_text()), spec_file=str(file)))
    state = client.app[STATE]

    probe = asyncio.create_task(client.get("/probe", params={"target": url}))
    await wait_for(login_arrived, 30)  # the probe of the old spec waits for its login
    file.write_text(_rotating_spec(url, "new-secret", "/new-token"))  # the secret rotated, the token endpoint moved
    response = await client.post("/-/reload")
    assert response.status == 200, await response.text()
    reloaded = True
    release_login.set()
    text = await (await asyncio.wait_for(probe, 30)).text()
    assert "probe_success 0" in text
    old = [config for config in state.upstream.clients._tokens if config.client_secret.value == "old-secret"]
    assert after_reload == [] and old == [], (f"after the reload: token requests {after_reload}; "
                                              f"TokenSources of the old configuration in the new Clients: {len(old)}")


async def test_a_reload_reads_the_ca_file_again_and_keeps_the_pooled_connections_while_its_bytes_are_the_same(
    aiohttp_client: Any, aiohttp_server: Any, pki: dict[str, Any], tmp_path: Path,
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki["server"].configure_cert(context)

    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"port": request.transport.get_extra_info("peername")[1] if request.transport else 0})

    app = web.Application()
    app.router.add_get("/", handle)
    server = await aiohttp_server(app, ssl=context)
    ca = pki["files"]["ca"]
    client = await reloadable(aiohttp_client, tmp_path / "spec.yml", f"""
        modules:
          default:
            {LOCAL}
            http_client_config: {{tls_config: {{ca_file: {ca}}}}}
            metrics: [{{name: port, help: the exporter's side of the connection, value: port}}]
        """)
    target = f"https://127.0.0.1:{server.port}/"

    async def port() -> float:
        _, text = await probe(client, target)
        return value(parse(text), "port")

    first = await port()
    assert await port() == first  # pooled
    assert await reload(client) == "reloaded (unchanged)"
    assert await port() == first  # the same CA bytes: the same TLS context, its pool
    ca.write_bytes(ca.read_bytes() + b"\n")  # the same CA, other bytes: a context made again from them
    assert await reload(client) == "reloaded (unchanged)"
    assert await port() != first


async def test_insecure_skip_verify_accepts_an_unknown_ca(aiohttp_client: Any, aiohttp_server: Any, pki: dict[str, Any]) -> None:
    server = await tls_upstream(aiohttp_server, pki)
    client = await exporter_for(aiohttp_client, """
        modules:
          default:
            http_client_config: {tls_config: {insecure_skip_verify: true}}
            metrics: [{name: x, help: x, value: v}]
        """)
    _, text = await probe(client, f"https://127.0.0.1:{server.port}/")
    assert value(parse(text), "x") == 1


# -- proxies, redirects, bodies, compression -------------------------------------------------------


async def test_requests_go_through_the_proxy_unless_no_proxy_matches(aiohttp_client: Any, upstream: UpstreamFactory, forward_proxy: ForwardProxy) -> None:
    up = await upstream({"/": {"v": 1}})
    client = await exporter_for(aiohttp_client, f"""
        modules:
          proxied:
            http_client_config: {{proxy_url: '{forward_proxy.url}'}}
            metrics: [{{name: x, help: x, value: v}}]
          bypass:
            http_client_config: {{proxy_url: '{forward_proxy.url}', no_proxy: 'example.com,127.0.0.0/8'}}
            metrics: [{{name: x, help: x, value: v}}]
        """)
    _, text = await probe(client, f"{up.url}/", module="bypass")
    assert value(parse(text), "x") == 1 and forward_proxy.requests == []
    _, text = await probe(client, f"{up.url}/", module="proxied")
    assert value(parse(text), "x") == 1
    assert forward_proxy.requests == [f"GET {up.url}/ HTTP/1.1"]


async def test_a_request_aiohttp_cannot_make_is_a_config_error_not_invalid_json(aiohttp_client: Any, upstream: UpstreamFactory,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy from the environment (check cannot see it) whose host has an empty label makes aiohttp let a
    UnicodeError (a ValueError) through from the resolver's encoding, before anything is sent; one with a
    port out of range makes aiohttp's reading of it raise a ValueError: no answer was invalid JSON."""
    for name in ("http_proxy", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    up = await upstream({"/": {"v": 1}})
    client = await exporter_for(aiohttp_client, """
        modules:
          default:
            http_client_config: {proxy_from_environment: true}
            metrics: [{name: x, help: x, value: v}]
        """)
    for n, (proxy, error) in enumerate((("http://a..b:3128", "UnicodeError: encoding with 'idna' codec failed (UnicodeError: label empty or too long)"),
                                        ("http://127.0.0.1:99999", "ValueError: Port out of range 0-65535")), 1):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        status, text = await probe(client, f"{up.url}/", debug="true")
        assert status == 200 and "config_error" in text and f"the request cannot be made: {error}" in text, text
        status, text = await probe(client, f"{up.url}/")
        assert status == 200 and value(parse(text), "probe_success") == 0
        metrics = parse(await (await client.get("/metrics")).text())
        assert value(metrics, "jsonexporter_upstream_requests_total", module="default", endpoint="default", outcome="config_error") == 2 * n


async def test_redirects_are_followed_unless_disabled(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/new")

    up = await upstream({"/old": moved, "/new": {"v": 2}})
    client = await exporter_for(aiohttp_client, """
        modules:
          follow:
            metrics: [{name: x, help: x, value: v}]
          stay:
            http_client_config: {follow_redirects: false}
            metrics: [{name: x, help: x, value: v}]
        """)
    _, text = await probe(client, f"{up.url}/old", module="follow")
    assert value(parse(text), "x") == 2
    _, text = await probe(client, f"{up.url}/old", module="stay")
    assert value(parse(text), "probe_endpoint_http_status_code", endpoint="default") == 302
    assert value(parse(text), "probe_success") == 0


async def test_templated_json_body_and_gzip_answer(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    received: list[Any] = []

    async def search(request: web.Request) -> web.Response:
        received.append((request.method, request.headers.get("Content-Type"), await request.json()))
        response = web.json_response({"hits": {"total": 42}})
        response.enable_compression(web.ContentCoding.gzip)
        return response

    up = await upstream({"/search": search})
    client = await exporter_for(aiohttp_client, """
        modules:
          default:
            parameters: {index: {pattern: '[a-z-]+'}}
            endpoints:
              search:
                url: '{target}/search'
                method: POST
                body: {query: {term: {index: '{index}'}}, size: 0, tags: ['{module}', literal]}
            metrics: [{name: search_hits, help: x, value: hits.total}]
        """)
    _, text = await probe(client, up.url, index="logs-app")
    assert value(parse(text), "search_hits") == 42
    assert received == [("POST", "application/json", {"query": {"term": {"index": "logs-app"}}, "size": 0, "tags": ["default", "literal"]})]


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_compressed_answer_is_bounded_by_its_decompressed_size_not_inflated_whole(
        aiohttp_client: Any, upstream: UpstreamFactory, coding: str) -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31 if coding == "gzip" else 15)
    zeros = b"0" * (1 << 20)
    bomb = b"".join(compressor.compress(zeros) for _ in range(256)) + compressor.flush()  # 256 MiB of zeros in 255 KB

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Encoding": coding, "Content-Type": "application/json"})

    up = await upstream({"/bomb": answer})
    client = await exporter_for(aiohttp_client, """
        modules:
          default:
            endpoints: {default: {url: '{target}/bomb', max_response_bytes: 1048576}}
            metrics: [{name: x, help: x, value: v}]
        """)
    tracemalloc.start()
    try:
        _, text = await probe(client, up.url, debug="true")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "-> too_large" in text and "error: response is larger than max_response_bytes 1048576" in text and "probe_success 0" in text
    assert fetch.inflate_with_isal()  # aiohttp decompressed with ISA-L here (a dependency)
    assert peak < 32 << 20  # the answer was not inflated beyond the bound: 256 MiB whole


# -- cache and coalescing --------------------------------------------------------------------------


async def test_cache_hits_within_the_ttl_and_concurrent_probes_share_one_request(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await wait_for(release, 20)
        return web.json_response({"v": 7})

    up = await upstream({"/": slow})
    client = await exporter_for(aiohttp_client, """
        modules:
          default:
            endpoints: {main: {url: '{target}', cache_ttl: 1h}}
            metrics: [{name: x, help: x, value: v}]
        """)
    state = client.app[STATE]
    probes = [asyncio.create_task(probe(client, f"{up.url}/")) for _ in range(8)]
    for _ in range(400):  # bounded: until all 8 probes wait on the one upstream request
        if state.in_flight == 8:
            break
        await asyncio.sleep(0.01)
    assert state.in_flight == 8
    release.set()
    answers = await asyncio.gather(*probes)
    assert [value(parse(text), "x") for _, text in answers] == [7] * 8
    assert up.hits == {"/": 1}
    _, text = await probe(client, f"{up.url}/")
    s = parse(text)
    assert value(s, "x") == 7 and up.hits == {"/": 1}  # a hit, not a request
    assert value(s, "probe_endpoint_cache_age_seconds", endpoint="main") > 0
    metrics = parse(await (await client.get("/metrics")).text())
    assert value(metrics, "jsonexporter_cache_requests_total", module="default", endpoint="main", result="miss") == 1
    assert value(metrics, "jsonexporter_cache_requests_total", module="default", endpoint="main", result="coalesced") == 7
    assert value(metrics, "jsonexporter_cache_requests_total", module="default", endpoint="main", result="hit") == 1
    assert value(metrics, "jsonexporter_upstream_requests_total", module="default", endpoint="main", outcome="success") == 1


@pytest.mark.parametrize("shared", ["cached_endpoint", "login", "oauth2_token"])
async def test_a_short_scrape_timeout_that_starts_a_shared_request_fails_only_its_own_probe(
    aiohttp_client: Any, upstream: UpstreamFactory, shared: str,
) -> None:
    """The one request that coalesced probes share (a cached endpoint's fetch, a login, an OAuth2 token) runs within its own
    budget: a caller with a short scrape timeout that starts it fails alone, the probes that joined it get
    the answer it brings. The held request is released only once the short probe has given up."""
    held = Held({"v": 7, "token": "tok-shared-1", "access_token": "tok-shared-2"})
    up = await upstream({"/held": held, "/data": {"v": 7}})
    module = {"cached_endpoint": "endpoints: {main: {url: '{target}/held', cache_ttl: 1h}}",
              "login": "login: {url: '{target}/held', method: POST, values: {t: token}}\n"
                       "            endpoints: {main: {url: '{target}/data', headers: {X-Session: '{t}'}}}",
              "oauth2_token": f"http_client_config: {{oauth2: {{client_id: c, client_secret: s, token_url: '{up.url}/held'}}}}\n"
                              "            endpoints: {main: {url: '{target}/data'}}"}[shared]
    client = await exporter_for(aiohttp_client, f"""
        modules:
          default:
            {LOCAL}
            timeout: 60s
            {module}
            metrics: [{{name: x, help: x, value: v}}]
        """)
    state = client.app[STATE]

    async def scrape(timeout: str) -> str:
        response = await client.get("/probe", params={"target": up.url}, headers={"X-Prometheus-Scrape-Timeout-Seconds": timeout})
        return await response.text()

    short = asyncio.create_task(scrape("2.5"))  # 2s of budget, the offset of 0.5s kept
    await wait_for(held.arrived, 30)
    normal = asyncio.create_task(scrape("60"))
    for _ in range(3000):  # bounded: until the normal probe waits on the request the short one started
        if state.in_flight == 2 or short.done():  # done first: the normal probe joins the request still held all the same
            break
        await asyncio.sleep(0.01)
    assert value(parse(await asyncio.wait_for(short, 30)), "probe_success") == 0
    held.release.set()
    s = parse(await asyncio.wait_for(normal, 30))
    assert value(s, "probe_success") == 1 and value(s, "x") == 7
    assert held.held == 1  # one request, shared


async def test_different_credentials_never_share_a_cached_answer(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"v": 1 if request.headers.get("Authorization") == "Bearer one" else 2})

    up = await upstream({"/": whoami})
    client = await exporter_for(aiohttp_client, f"""
        modules:
          one:
            {LOCAL}
            http_client_config: {{bearer_token: one}}
            endpoints: {{main: {{url: '{{target}}', cache_ttl: 1h}}}}
            metrics: [{{name: x, help: x, value: v}}]
          two:
            {LOCAL}
            http_client_config: {{bearer_token: two}}
            endpoints: {{main: {{url: '{{target}}', cache_ttl: 1h}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """)
    assert value(parse((await probe(client, f"{up.url}/", module="one"))[1]), "x") == 1
    assert value(parse((await probe(client, f"{up.url}/", module="two"))[1]), "x") == 2
    assert up.hits == {"/": 2}


async def test_modules_reading_other_fields_of_one_cached_answer_each_get_theirs(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    """Each module's rules parse only the fields they read (spec/projection.py): an answer parsed for
    one module's rules lacks the other's fields, so it is not shared with it."""
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"items": [{"a": 1, "b": 2}]})

    up = await upstream({"/": answer})
    client = await exporter_for(aiohttp_client, f"""
        modules:
          one:
            {LOCAL}
            endpoints: {{main: {{url: '{{target}}', cache_ttl: 1h}}}}
            metrics: [{{name: x, help: x, each: items, value: a}}]
          two:
            {LOCAL}
            endpoints: {{main: {{url: '{{target}}', cache_ttl: 1h}}}}
            metrics: [{{name: x, help: x, each: items, value: b}}]
        """)
    assert value(parse((await probe(client, f"{up.url}/", module="one"))[1]), "x") == 1
    assert value(parse((await probe(client, f"{up.url}/", module="two"))[1]), "x") == 2
    assert up.hits == {"/": 2}


@pytest.mark.parametrize(("lenient", "strict", "outcome"), [
    ("valid_status_codes: [200, 404]", "valid_status_codes: [200]", "invalid_status, status 404"),
    ("max_response_bytes: 1000", "max_response_bytes: 10", "too_large"),
    ("http_client_config: {follow_redirects: true}", "http_client_config: {follow_redirects: false}", "invalid_status, status 302"),
])
async def test_a_cached_answer_is_shared_only_by_endpoints_that_would_accept_it(
    aiohttp_client: Any, upstream: UpstreamFactory, lenient: str, strict: str, outcome: str,
) -> None:
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/answer")

    async def not_found(request: web.Request) -> web.Response:
        return web.json_response({"v": 1, "padding": "x" * 20}, status=404 if "valid_status" in lenient else 200)

    up = await upstream({"/": moved, "/answer": not_found})
    url = f"{up.url}/" if "redirects" in lenient else f"{up.url}/answer"
    client = await exporter_for(aiohttp_client, f"""
        modules:
          lenient:
            endpoints: {{main: {{url: '{{target}}', cache_ttl: 1h, {lenient}}}}}
            metrics: [{{name: x, help: x, endpoint: main, value: v}}]
          strict:
            endpoints: {{main: {{url: '{{target}}', cache_ttl: 1h, {strict}}}}}
            metrics: [{{name: x, help: x, endpoint: main, value: v}}]
        """)
    _, text = await probe(client, url, module="lenient", debug="true")
    assert "cache miss" in text and "probe_success 1" in text
    assert ("-> GET" in text and "redirects followed: 1" in text) == ("redirects" in lenient)  # a miss shows its redirects
    _, text = await probe(client, url, module="strict", debug="true")
    assert f"-> {outcome}" in text and "probe_success 0" in text
    _, text = await probe(client, url, module="lenient", debug="true")
    assert "cache hit" in text and "probe_success 1" in text  # each keeps its own entry


async def test_stale_if_error_serves_the_last_good_answer_and_says_so(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    healthy = {"yes": True}

    async def flaky(request: web.Request) -> web.Response:
        if healthy["yes"]:
            return web.json_response({"v": 5})
        return web.json_response({}, status=503)

    up = await upstream({"/": flaky})
    client = await exporter_for(aiohttp_client, """
        modules:
          default:
            endpoints: {main: {url: '{target}', cache_ttl: 1ms, stale_if_error: 1h}}
            metrics: [{name: x, help: x, value: v}]
        """)
    assert value(parse((await probe(client, f"{up.url}/"))[1]), "x") == 5
    healthy["yes"] = False
    for _ in range(200):  # bounded: until the 1 ms entry is no longer fresh and the upstream is asked again
        _, text = await probe(client, f"{up.url}/")
        if up.hits["/"] >= 2:
            break
    s = parse(text)
    assert value(s, "x") == 5
    assert value(s, "probe_endpoint_stale", endpoint="main") == 1
    assert value(s, "probe_endpoint_success", endpoint="main") == 0
    assert value(s, "probe_endpoint_http_status_code", endpoint="main") == 503
    assert value(s, "probe_success") == 1


# -- secrets ---------------------------------------------------------------------------------------------


async def test_secrets_never_reach_logs_traces_errors_or_pages(
    aiohttp_client: Any, upstream: UpstreamFactory, malformed_upstream: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    # every kind of secret a spec, a file, a token endpoint or a target can hold ...
    secrets = ["pw-AAAA", "tok-BBBB", "cs-CCCC", "file-DDDD", "hdr-EEEE", "qk-GGGG", "hdr-{HHHH}", "qu-IIII", "url-JJJJ", "ses-KKKK",
               "body-LLLL", "hp-MMMM", "dflt-NNNN", "file-OOOO", "hdr-PPPP"]
    (tmp_path / "pw").write_text("file-DDDD")
    (tmp_path / "token").write_text("file-OOOO\n")

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "tok-BBBB", "expires_in": 3600})

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.path_qs)

    async def echo(request: web.Request) -> web.Response:  # an API that quotes the credentials it was sent
        return web.json_response({"auth": request.headers.get("Authorization"), "key": request.headers.get("X-Key"), "v": 1})

    up = await upstream({"/token": token, "/": needs_auth("nobody"), "/loop": loop, "/echo": echo})  # every API call fails: errors get logged
    spec = f"""
        modules:
          basic:
            {LOCAL}
            http_client_config: {{basic_auth: {{username: u, password: pw-AAAA}}}}
            endpoints: {{main: {{url: '{{target}}', headers: {{X-Api-Key: hdr-EEEE}}}}}}
            metrics: [{{name: x, help: x, value: v}}]
          oauth:
            {LOCAL}
            http_client_config: {{oauth2: {{client_id: c, client_secret: cs-CCCC, token_url: '{up.url}/token'}}}}
            metrics: [{{name: x, help: x, value: v}}]
          filed:
            {LOCAL}
            http_client_config: {{basic_auth: {{username: u, password_file: {tmp_path}/pw}}}}
            metrics: [{{name: x, help: x, value: v}}]
          looping:
            {LOCAL}
            endpoints: {{main: {{url: '{{target}}/loop', params: {{api_key: qk-GGGG}}, headers: {{X-Api-Key: 'hdr-{{{{HHHH}}}}'}}}}}}
            metrics: [{{name: x, help: x, value: v}}]
          malformed:
            {LOCAL}
            parameters: {{api_key: {{default: dflt-NNNN}}}}
            endpoints: {{main: {{url: '{{target}}/x?api_key=qu-IIII&token={{api_key}}'}}}}
            metrics: [{{name: x, help: x, value: v}}]
          written:
            endpoints: {{main: {{url: '{up.url.replace("http://", "http://uu:url-JJJJ@")}/?session=ses-KKKK'}}}}
            metrics: [{{name: x, help: x, value: v}}]
          posting:
            {LOCAL}
            endpoints: {{main: {{url: '{{target}}', method: POST, body: {{user: u, password: body-LLLL}}}}}}
            metrics: [{{name: x, help: x, value: v}}]
          hostport:
            endpoints: {{main: {{url: 'http://{{target}}/'}}}}
            metrics: [{{name: x, help: x, value: v}}]
          echoing:
            {LOCAL}
            http_client_config: {{bearer_token_file: {tmp_path}/token}}
            endpoints: {{main: {{url: '{{target}}/echo', headers: {{X-Key: hdr-PPPP}}}}}}
            metrics: [{{name: x, help: x, value: v}}]
          open:
            metrics: [{{name: x, help: x, value: v}}]
        """
    client = await exporter_for(aiohttp_client, spec)
    caplog.set_level(logging.DEBUG)
    seen = []
    probes = [(m, f"{up.url}/") for m in ("basic", "oauth", "filed", "posting", "written")]
    probes += [("looping", up.url), ("echoing", up.url), ("malformed", malformed_upstream), ("hostport", up.url.replace("http://", "someone:hp-MMMM@"))]
    userinfo_target = up.url.replace("http://", "http://someone:pw-AAAA@") + "/?token=tok-BBBB"
    probes += [("basic", userinfo_target), ("open", userinfo_target)]  # refused by the allowlist; fetched (and refused upstream)
    for module, target in probes:
        for debug in ("true", "false"):
            seen.append((await probe(client, target, module=module, debug=debug))[1])
    # every probe reached its upstream (a loop: 11 requests each; the first oauth probe's 401 sent it once more with a new token)
    assert up.hits["/"] == 15 and up.hits["/loop"] == 22
    # ... and every edge where text leaves the process: traces, pages, logs, error bodies, reprs
    seen.append(await (await client.get("/")).text())
    seen.append(await (await client.get("/metrics")).text())
    for n in range(1, len(client.app[STATE].recent) + 1):
        seen.append(await (await client.get(f"/probes/{n}")).text())
    ours = [r for r in caplog.records if r.name != "aiohttp.access"]  # the test server's access log is the harness's: `serve` runs without one
    logs.redact_with(client.app[STATE].redactor)  # what `serve` does
    try:
        seen += [formatter.format(r) for r in ours for formatter in (logs.LogfmtFormatter(), logs.JsonFormatter())]
    finally:
        logs.redact_with(Redactor())
    seen.append(repr(client.app[STATE].spec))
    everything = "\n".join(seen)
    assert "endpoint main: GET" in everything and "<redacted>" in everything  # the traces were there
    assert '"auth": "Bearer <redacted>", "key": "<redacted>", "v": 1' in everything  # with the answer that quoted the credentials
    assert "redirect 10: 302" in everything and "ClientResponseError" in everything  # so were the redirects and the client's errors quoting URLs
    shown = re.sub(r'href="[^"]*"', "", everything)  # a link's query is percent-encoded as it must be
    assert "%3Credacted%3E" not in shown and "api_key=<redacted>" in shown and "<redacted>@127.0.0.1" in shown
    for secret in secrets:
        assert secret not in everything, secret


async def test_https_goes_through_the_proxy_with_connect(aiohttp_client: Any, aiohttp_server: Any, pki: dict[str, Any], forward_proxy: ForwardProxy) -> None:
    server = await tls_upstream(aiohttp_server, pki)
    client = await exporter_for(aiohttp_client, f"""
        modules:
          default:
            http_client_config: {{proxy_url: '{forward_proxy.url}', tls_config: {{ca_file: {pki['files']['ca']}}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """)
    _, text = await probe(client, f"https://127.0.0.1:{server.port}/")
    assert value(parse(text), "x") == 1
    assert forward_proxy.requests == [f"CONNECT 127.0.0.1:{server.port} HTTP/1.1"]


async def test_valid_status_codes_and_the_endpoint_timeout(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    release = asyncio.Event()

    async def accepted(request: web.Request) -> web.Response:
        return web.json_response({"v": 3}, status=202)

    async def hang(request: web.Request) -> web.Response:
        await wait_for(release, 20)
        return web.json_response({"v": 4})

    up = await upstream({"/accepted": accepted, "/hang": hang})
    client = await exporter_for(aiohttp_client, """
        modules:
          default:
            timeout: 60s
            endpoints:
              only_200: {url: '{target}/accepted', valid_status_codes: [200]}
              any_2xx: {url: '{target}/accepted'}
              slow: {url: '{target}/hang', timeout: 200ms}
            metrics:
              - {name: a, help: x, endpoint: only_200, value: v}
              - {name: b, help: x, endpoint: any_2xx, value: v}
              - {name: c, help: x, endpoint: slow, value: v}
        """)
    try:
        _, text = await asyncio.wait_for(probe(client, up.url, debug="true"), 20)  # the 200 ms endpoint timeout ends the probe, not 60 s
    finally:
        release.set()
    assert "endpoint only_200" in text and "invalid_status, status 202" in text
    assert "b 3\n" in text and "a 3" not in text
    assert "-> timeout" in text and "probe_success 0" in text


async def test_the_response_cache_counts_answers_by_their_parsed_size_not_their_bodies(upstream: UpstreamFactory) -> None:
    from jsonexporter.upstream import fetch_module
    from jsonexporter.upstream.cache import ResponseCache, parsed_size
    from jsonexporter.upstream.fetch import Upstream as Fetching
    from jsonexporter.upstream.fetch import new_session

    dense = b"[" + b",".join([b"[[]]"] * 4000) + b"]"  # 20 kB, the densest JSON: 25 to 30 times that parsed

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=dense, content_type="application/json")

    up = await upstream({"/{n}": answer})
    module = make_spec(r"""
        modules:
          default:
            targets: {allow: ['http://127\.0\.0\.1:\d+/\d+']}
            endpoints: {main: {url: '{target}', cache_ttl: 1h}}
            metrics: [{name: x, help: x, value: length(@)}]
        """).modules["default"]
    bound = 3 * parsed_size(dense)  # 8 bodies are 160 kB together, far under it; parsed, 3 of them fill it
    fetching = Fetching(new_session(), cache=ResponseCache(max_bytes=bound))
    try:
        async def fetch(n: int) -> str | None:
            deadline = asyncio.get_running_loop().time() + 20
            [result] = await fetch_module(fetching, module, {"target": f"{up.url}/{n}", "module": "default"}, deadline)
            assert result.ok, result.error
            return result.cache

        assert [await fetch(n) for n in range(8)] == ["miss"] * 8
        assert len(fetching.cache) == 3 and fetching.cache.bytes <= bound
        assert [await fetch(n) for n in (7, 6, 5, 0)] == ["hit", "hit", "hit", "miss"]  # the oldest made room
    finally:
        await fetching.close()


def test_the_response_cache_is_bounded_in_entries_and_bytes() -> None:
    from jsonexporter.upstream.cache import Answer, ResponseCache

    async def run() -> None:
        cache = ResponseCache(max_entries=3, max_bytes=1000)

        async def fetch(size: int) -> tuple[Answer | None, Any]:
            return Answer({"size": size}, 200, size, size=size), None  # counted as `size` parsed bytes

        for i in range(5):
            await cache.get(f"k{i}", 60, None, lambda i=i: fetch(100 + i), 5)  # type: ignore[misc]
        assert len(cache) == 3 and cache.bytes == 102 + 103 + 104  # the oldest two went first
        await cache.get("big", 60, None, lambda: fetch(900), 5)
        assert cache.bytes <= 1000 and len(cache) == 1  # bytes bound: everything older made room
        await cache.get("huge", 60, None, lambda: fetch(5000), 5)
        assert cache.bytes == 900  # an answer over the whole bound is not kept
        hit = await cache.get("big", 60, None, lambda: fetch(1), 5)
        assert hit.result == "hit" and hit.answer is not None and hit.answer.document == {"size": 900}

    asyncio.run(run())


@pytest.mark.parametrize("text", ["x" * 999 + "😀", "é" * 500, "\\ud83d\\ude00" + "y" * 999, "plain ascii " * 80])
def test_the_parsed_size_estimate_is_never_under_what_the_parse_takes(text: str) -> None:
    """A character beyond U+FFFF makes CPython keep its string at 4 bytes per character: such bodies
    took twice what they were counted for."""
    import tracemalloc

    import orjson

    from jsonexporter.upstream.cache import parsed_size

    body = ("[" + ",".join(f'"{text}"' for _ in range(1000)) + "]").encode()
    tracemalloc.start()
    try:
        document = orjson.loads(body)
        taken, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(document) == 1000 and parsed_size(body) >= taken
