"""Redirects are new requests, and hosts from parameters are hosts from the caller: what a request
may carry is decided hop by hop. 127.0.0.1 plays the API, 127.0.0.2 the foreign host."""

from __future__ import annotations

import base64
import ssl
import textwrap
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from conftest import ForwardProxy, UpstreamFactory, make_spec
from metrics_util import parse, value
from yarl import URL

from jsonexporter.secrets import Redactor
from jsonexporter.server import make_app
from jsonexporter.upstream.hops import Hop, Refusal, next_hop

SECRETS = ("hdr-SECRET-1", "tok-SECRET-2", "pw-SECRET-3", "q-SECRET-4")


@dataclass
class Seen:
    """What a server received: (method, path with query, headers, body) per request."""

    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)

    def text(self) -> str:
        return repr(self.requests)


async def recording_server(aiohttp_server: Any, host: str, answers: dict[str, Any], scheme_ssl: ssl.SSLContext | None = None) -> tuple[Any, Seen]:
    """A real server on `host`; each path answers a JSON value or calls `answer(request)`; everything received is recorded."""
    seen = Seen()

    def route(answer: Any) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            seen.requests.append((request.method, request.path_qs, dict(request.headers), await request.read()))
            if callable(answer):
                result: web.StreamResponse = answer(request)
                return result
            return web.json_response(answer)

        return handle

    app = web.Application()
    for path, answer in answers.items():
        app.router.add_route("*", path, route(answer))
    server = await aiohttp_server(app, host=host, ssl=scheme_ssl)
    return server, seen


def redirect(location: str, status: int = 302) -> Any:
    def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": location.replace("QUERY", request.query_string)})

    return answer


async def exporter_for(aiohttp_client: Any, text: str) -> Any:
    return await aiohttp_client(make_app(make_spec(textwrap.dedent(text))))


async def probe(client: Any, **params: str) -> tuple[int, str]:
    response = await client.get("/probe", params=params)
    return response.status, await response.text()


def secret_module(name: str, allow: str, url: str = "http://{target}/start", method: str = "POST") -> str:
    """A module that adds every kind of secret: Authorization, a secret-named header, a secret query parameter, a body."""
    return f"""
          {name}:
            targets: {{allow: [{allow}]}}
            http_client_config: {{bearer_token: {SECRETS[1]}}}
            endpoints:
              main:
                url: '{url}'
                method: {method}
                headers: {{X-API-Key: {SECRETS[0]}, X-Tenant: acme}}
                params: {{api_key: {SECRETS[3]}}}
                body: {{user: exporter, password: {SECRETS[2]}}}
            metrics: [{{name: x, help: x, endpoint: main, value: v}}]
    """


HOME = r"'127\.0\.0\.1:\d+'"
HOME_AND_FOREIGN = r"'127\.0\.0\.1:\d+', '127\.0\.0\.2:\d+'"


async def test_a_redirect_to_a_host_outside_the_allowlist_is_refused_before_any_request(aiohttp_client: Any, aiohttp_server: Any) -> None:
    foreign, stolen = await recording_server(aiohttp_server, "127.0.0.2", {"/{tail:.*}": {"v": 666, "foreign": "answer-FOREIGN"}})
    home, _ = await recording_server(aiohttp_server, "127.0.0.1", {"/start": redirect(f"http://127.0.0.2:{foreign.port}/steal?QUERY")})
    client = await exporter_for(aiohttp_client, "modules:" + secret_module("default", HOME))
    status, text = await probe(client, target=f"127.0.0.1:{home.port}", debug="true")
    assert status == 200
    assert stolen.requests == []  # nothing reached the foreign host: not the secrets, not even a request
    assert "-> redirect_refused, status 302" in text and "probe_success 0" in text
    assert f"redirect 1 (302 to http://127.0.0.2:{foreign.port}) refused" in text  # its path and query, which hold a secret, not shown
    assert "targets.allow does not allow" in text
    assert "answer-FOREIGN" not in text and "Traceback" not in text
    for secret in SECRETS:
        assert secret not in text


async def test_a_redirect_to_another_origin_carries_nothing_the_spec_adds(aiohttp_client: Any, aiohttp_server: Any) -> None:
    foreign, seen_foreign = await recording_server(aiohttp_server, "127.0.0.2", {"/landing": {"v": 2}})
    # the API moves us within its origin first (everything goes along), then to another host, echoing the query
    home, seen_home = await recording_server(aiohttp_server, "127.0.0.1", {
        "/start": redirect("/moved?QUERY", 307),
        "/moved": redirect(f"http://127.0.0.2:{foreign.port}/landing?QUERY&page=2", 302),
    })
    client = await exporter_for(aiohttp_client, "modules:" + secret_module("default", HOME_AND_FOREIGN))
    status, text = await probe(client, target=f"127.0.0.1:{home.port}", debug="true")
    assert status == 200 and value(parse(_exposition(text)), "x") == 2
    (m1, _, _, body1), (m2, _, headers2, body2) = seen_home.requests
    assert (m1, m2) == ("POST", "POST") and body1 == body2 and SECRETS[2].encode() in body2  # a 307 within the origin keeps method and body
    assert headers2["X-API-Key"] == SECRETS[0] and headers2["Authorization"] == f"Bearer {SECRETS[1]}"
    [(method, path, headers, body)] = seen_foreign.requests
    assert (method, path, body) == ("GET", "/landing?page=2", b"")  # 302: a GET without body; our secret query value stayed home
    assert {k.lower() for k in headers} & {"authorization", "x-api-key", "x-tenant", "cookie", "content-type"} == set()
    assert f"redirect 1: 307 -> POST http://127.0.0.1:{home.port}/moved?api_key=" in text
    assert f"redirect 2: 302 -> GET http://127.0.0.2:{foreign.port}/landing?page=2 (another origin" in text
    assert "redirects followed: 2" in text
    assert not any(secret in seen_foreign.text() for secret in SECRETS)


def _exposition(text: str) -> str:
    """The metrics of a debug=true answer, which come after its trace."""
    return text.split("\nmetrics:\n", 1)[1]


async def test_a_307_that_would_resend_the_body_to_another_origin_is_refused(aiohttp_client: Any, aiohttp_server: Any) -> None:
    foreign, seen_foreign = await recording_server(aiohttp_server, "127.0.0.2", {"/{tail:.*}": {"v": 3}})
    home, _ = await recording_server(aiohttp_server, "127.0.0.1", {"/start": redirect(f"http://127.0.0.2:{foreign.port}/again", 307)})
    client = await exporter_for(aiohttp_client, "modules:" + secret_module("default", HOME_AND_FOREIGN))
    _, text = await probe(client, target=f"127.0.0.1:{home.port}", debug="true")
    assert seen_foreign.requests == []
    assert "-> redirect_refused" in text and "a 307 would send the request body to another origin" in text


@pytest.fixture
def tls_pair(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server_context, ca_file


async def test_https_to_http_is_refused_while_the_request_carries_secrets(
    aiohttp_client: Any, aiohttp_server: Any, tls_pair: tuple[ssl.SSLContext, Path],
) -> None:
    server_context, ca_file = tls_pair
    plain, seen_plain = await recording_server(aiohttp_server, "127.0.0.2", {"/{tail:.*}": {"v": 4}})
    home, _ = await recording_server(aiohttp_server, "127.0.0.1", {"/start": redirect(f"http://127.0.0.2:{plain.port}/clear")}, server_context)
    allow = r"'https://127\.0\.0\.1:\d+', '127\.0\.0\.2:\d+'"
    client = await exporter_for(aiohttp_client, f"""
        modules:
          secret:
            targets: {{allow: [{allow}]}}
            http_client_config: {{tls_config: {{ca_file: {ca_file}}}}}
            endpoints: {{main: {{url: '{{target}}/start', headers: {{X-API-Key: {SECRETS[0]}}}}}}}
            metrics: [{{name: x, help: x, endpoint: main, value: v}}]
          public:
            targets: {{allow: [{allow}]}}
            http_client_config: {{tls_config: {{ca_file: {ca_file}}}}}
            endpoints: {{main: {{url: '{{target}}/start'}}}}
            metrics: [{{name: x, help: x, endpoint: main, value: v}}]
        """)
    target = f"https://127.0.0.1:{home.port}"
    _, text = await probe(client, target=target, module="secret", debug="true")
    assert seen_plain.requests == []
    assert "-> redirect_refused" in text and "it leaves https for http, and the request carries secrets (header X-API-Key)" in text
    _, text = await probe(client, target=target, module="public")
    assert value(parse(text), "x") == 4 and len(seen_plain.requests) == 1  # nothing secret: the downgrade is followed


async def test_the_client_certificate_stays_with_the_origin_of_the_request(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path) -> None:
    ca = trustme.CA()
    server_cert, client_cert = ca.issue_cert("127.0.0.1", "127.0.0.2"), ca.issue_cert("monitor-client")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(server_context)
    ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_OPTIONAL  # each server says whether a certificate was presented
    for name, blob in (("ca.pem", ca.cert_pem), ("client.pem", client_cert.cert_chain_pems[0]), ("client.key", client_cert.private_key_pem)):
        blob.write_to_path(str(tmp_path / name))
    presented: list[tuple[str, bool]] = []

    def noting(answer: Any) -> Any:
        def handle(request: web.Request) -> web.Response:
            presented.append((f"{request.host.split(':')[0]}{request.path}", bool(request.transport and request.transport.get_extra_info("peercert"))))
            result: web.Response = answer(request) if callable(answer) else web.json_response(answer)
            return result

        return handle

    foreign, _ = await recording_server(aiohttp_server, "127.0.0.2", {"/landing": noting({"v": 2})}, server_context)
    home, _ = await recording_server(aiohttp_server, "127.0.0.1", {
        "/start": noting(redirect("/moved", 307)),
        "/moved": noting(redirect(f"https://127.0.0.2:{foreign.port}/landing")),
    }, server_context)
    client = await exporter_for(aiohttp_client, rf"""
        modules:
          default:
            targets: {{allow: ['https://127\.0\.0\.[12]:\d+']}}
            http_client_config:
              tls_config: {{ca_file: {tmp_path}/ca.pem, cert_file: {tmp_path}/client.pem, key_file: {tmp_path}/client.key}}
            endpoints: {{main: {{url: '{{target}}/start'}}}}
            metrics: [{{name: x, help: x, endpoint: main, value: v}}]
        """)
    for _ in range(2):  # the second time over pooled connections: one made without the certificate stays without it
        status, text = await probe(client, target=f"https://127.0.0.1:{home.port}")
        assert status == 200 and value(parse(text), "x") == 2, text
    assert presented == [("127.0.0.1/start", True), ("127.0.0.1/moved", True), ("127.0.0.2/landing", False)] * 2


async def test_redirects_stop_after_ten_hops(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    up = await upstream({"/loop": loop})
    client = await exporter_for(aiohttp_client, "modules: {default: {metrics: [{name: x, help: x, value: v}]}}")
    _, text = await probe(client, target=f"{up.url}/loop", debug="true")
    assert up.hits == {"/loop": 11}  # the request and ten redirects
    assert "-> redirect_refused, status 302" in text and "more than 10 redirects" in text and "redirects followed: 10" in text


async def test_each_redirect_hop_goes_through_the_proxy(aiohttp_client: Any, upstream: UpstreamFactory, forward_proxy: ForwardProxy) -> None:
    paths: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        paths.append(request.raw_path)
        raise web.HTTPFound("/new")

    async def new(request: web.Request) -> web.Response:
        paths.append(request.raw_path)
        return web.json_response({"v": 5})

    up = await upstream({"/old": moved, "/new": new})
    client = await exporter_for(aiohttp_client, f"""
        modules:
          default:
            http_client_config: {{proxy_url: '{forward_proxy.url}'}}
            metrics: [{{name: x, help: x, value: v}}]
        """)
    _, text = await probe(client, target=f"{up.url}/old")
    assert value(parse(text), "x") == 5
    # the test proxy logs (and rewrites to /path) the first request of each connection; later ones on it arrive
    # in absolute form: either way, each of the two hops went through it
    assert forward_proxy.requests[0] == f"GET {up.url}/old HTTP/1.1" and len(paths) == 2
    assert len(forward_proxy.requests) + sum(p.startswith("http://") for p in paths) == 2


# -- hosts taken from parameters ---------------------------------------------------------------


async def test_a_host_taken_from_a_parameter_must_be_allowed_and_a_host(aiohttp_client: Any, aiohttp_server: Any) -> None:
    foreign, stolen = await recording_server(aiohttp_server, "127.0.0.2", {"/stats": {"v": 7}})
    home, seen_home = await recording_server(aiohttp_server, "127.0.0.1", {"/stats": {"v": 6}})
    client = await exporter_for(aiohttp_client, rf"""
        modules:
          tokened:
            targets: {{allow: [{HOME}]}}
            parameters: {{node: {{}}, port: {{}}}}
            http_client_config: {{bearer_token: {SECRETS[1]}}}
            endpoints: {{main: {{url: 'http://{{node}}:{{port}}/stats'}}}}
            metrics: [{{name: x, help: x, endpoint: main, value: v}}]
          open:
            parameters: {{node: {{}}}}
            endpoints: {{main: {{url: 'http://{{node}}:{home.port}/stats'}}}}
            metrics: [{{name: x, help: x, endpoint: main, value: v}}]
        """)
    status, text = await probe(client, module="tokened", node="127.0.0.1", port=str(home.port))
    assert status == 200 and value(parse(text), "x") == 6  # no target needed: the allowlist checks the host the parameters make
    assert seen_home.requests[0][2]["Authorization"] == f"Bearer {SECRETS[1]}"
    status, text = await probe(client, module="tokened", node="127.0.0.2", port=str(foreign.port))
    assert status == 403 and "taken from the target or a parameter, is not allowed by targets.allow" in text
    for node in ("127.0.0.2/", "127.0.0.2?", "127.0.0.2#", "x@127.0.0.2", "127.0.0.2\\", "127.0.0.2 "):
        status, text = await probe(client, module="open", node=node)
        assert status == 400 and "parameter 'node' is used in the URL's host" in text, node
    assert stolen.requests == []
    status, text = await probe(client, module="open", node="127.0.0.1")
    assert status == 200 and value(parse(text), "x") == 6


# -- string bodies ------------------------------------------------------------------------------


async def test_the_allowlist_holds_the_url_a_target_makes_not_the_target_as_written(aiohttp_client: Any, aiohttp_server: Any) -> None:
    foreign, stolen = await recording_server(aiohttp_server, "127.0.0.2", {"/{tail:.*}": {"v": 666}})
    home, seen_home = await recording_server(aiohttp_server, "127.0.0.1", {"/{tail:.*}": {"v": 6}})
    # a prefix pattern, and one whose `.+` stands for a host's first labels: both match tricky targets as written
    client = await exporter_for(aiohttp_client, rf"""
        modules:
          prefix:
            targets: {{allow: ['http://127\.0\.0\.1:{home.port}.*']}}
            http_client_config: {{bearer_token: {SECRETS[1]}}}
            endpoints: {{main: {{url: '{{target}}/echo'}}}}
            metrics: [{{name: x, help: x, endpoint: main, value: v}}]
          labels:
            targets: {{allow: ['http://.+\.0\.0\.1:\d+']}}
            http_client_config: {{bearer_token: {SECRETS[1]}}}
            endpoints: {{main: {{url: '{{target}}/echo'}}}}
            metrics: [{{name: x, help: x, endpoint: main, value: v}}]
          slash:
            targets: {{allow: ['http://127\.0\.0\.1:\d+/']}}
            endpoints: {{main: {{url: '{{target}}/echo'}}}}
            metrics: [{{name: x, help: x, endpoint: main, value: v}}]
        """)
    there = f"127.0.0.2:{foreign.port}"
    for module, target in [("prefix", f"http://127.0.0.1:{home.port}@{there}"), ("prefix", f"http://127.0.0.1:{home.port}:pw@{there}/x"),
                           ("labels", f"http://{there}#.0.0.1:1"), ("labels", f"http://{there}?.0.0.1:1"), ("labels", f"http://{there}/.0.0.1:1")]:
        status, text = await probe(client, module=module, target=target)
        # 403 from the allowlist, or 400 when the target would add a path, a query or a fragment (render._quote_target)
        assert (status, "is not allowed by targets.allow" in text) == (403, True) or (status, "invalid target" in text) == (400, True), \
            (module, target, text)
    assert stolen.requests == []  # the foreign host was never asked, so it never saw the token
    for module, target in [("prefix", f"http://127.0.0.1:{home.port}"), ("prefix", f"http://127.0.0.1:{home.port}/"),
                           ("labels", f"http://127.0.0.1:{home.port}"), ("slash", f"http://127.0.0.1:{home.port}/")]:
        status, text = await probe(client, module=module, target=target)
        assert status == 200 and value(parse(text), "x") == 6, (module, target, text)
    assert [path for _, path, _, _ in seen_home.requests] == ["/echo", "/echo", "/echo", "/echo"]


async def test_a_parameter_cannot_change_the_structure_of_a_string_body(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    received: list[tuple[str | None, bytes]] = []

    async def record(request: web.Request) -> web.Response:
        received.append((request.headers.get("Content-Type"), await request.read()))
        return web.json_response({"v": 1})

    up = await upstream({"/": record})
    client = await exporter_for(aiohttp_client, r"""
        modules:
          json:
            parameters: {user: {}}
            endpoints:
              main: {url: '{target}/', method: POST, body: '{{"role": "viewer", "user": "{user}", "note": "a\\{user}"}}'}
            metrics: [{name: x, help: x, endpoint: main, value: v}]
          form:
            parameters: {user: {}}
            endpoints:
              main:
                url: '{target}/'
                method: POST
                headers: {Content-Type: application/x-www-form-urlencoded}
                body: 'user={user}&role=viewer'
            metrics: [{name: x, help: x, endpoint: main, value: v}]
        """)
    import json
    from urllib.parse import parse_qs

    hostile = 'x", "role": "admin", "x": "\\'
    _, text = await probe(client, module="json", target=up.url, user=hostile)
    assert value(parse(text), "x") == 1
    content_type, body = received[-1]
    assert content_type == "application/json"
    assert json.loads(body) == {"role": "viewer", "user": hostile, "note": "a\\" + hostile}
    _, text = await probe(client, module="form", target=up.url, user="x&role=admin")
    assert value(parse(text), "x") == 1
    assert parse_qs(received[-1][1].decode()) == {"user": ["x&role=admin"], "role": ["viewer"]}


# -- requests that cannot be built ----------------------------------------------------------------


@pytest.mark.parametrize("content", ["tok-SECRET\nX-Injected: 1", "tok-\x01SECRET"])
async def test_a_credentials_file_that_cannot_be_a_header_is_a_config_error(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path, content: str,
) -> None:
    creds = tmp_path / "creds"
    creds.write_text(content + "\n")
    up = await upstream({"/": {"v": 1}})
    client = await exporter_for(aiohttp_client, rf"""
        modules:
          default:
            targets: {{allow: ['http://127\.0\.0\.1:\d+']}}
            http_client_config: {{authorization: {{credentials_file: {creds}}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """)
    _, text = await probe(client, target=up.url, debug="true")
    assert "-> config_error" in text and "probe_success 0" in text
    assert f"header Authorization (from credentials_file '{creds}') contains a line break or another control character" in text
    assert "SECRET" not in text and up.hits == {}


async def test_secrets_and_login_values_go_to_no_other_origin_whatever_their_parameters_are_named(
        aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path) -> None:
    """A module secret in `?pw=`, a login value in `?sid=` and in a path: names that say nothing, values
    that are secret all the same. A redirect to another (allowed) origin echoing them loses them from its
    query, and one that puts them where a query cannot be cleaned (the path) is refused."""
    password, sid = "hunter2-PASSWORD-xyz", "SIDVALUE-abcdef123456"
    (tmp_path / "pw").write_text(password)
    foreign, stolen = await recording_server(aiohttp_server, "127.0.0.2", {"/{tail:.*}": {"v": 666}})
    home, _ = await recording_server(aiohttp_server, "127.0.0.1", {
        "/login": {"sid": sid},
        "/query": redirect(f"http://127.0.0.2:{foreign.port}/landing?QUERY&page=2"),
        "/path": lambda request: web.Response(status=302, headers={"Location": f"http://127.0.0.2:{foreign.port}/s/{request.query['sid']}"}),
    })
    client = await exporter_for(aiohttp_client, f"""
        modules:
          default:
            targets: {{allow: ['127\\.0\\.0\\.[12]:\\d+']}}
            secrets: {{password: {{file: {tmp_path / 'pw'}}}}}
            login:
              url: 'http://127.0.0.1:{home.port}/login'
              method: POST
              body: {{user: exporter, password: '{{password}}'}}
              values: {{sid: sid}}
            endpoints:
              query: {{url: 'http://127.0.0.1:{home.port}/query?sid={{sid}}&pw={{password}}'}}
              path: {{url: 'http://127.0.0.1:{home.port}/path?sid={{sid}}'}}
            metrics: [{{name: x, help: x, endpoint: query, value: v}}]
    """)
    status, text = await probe(client, debug="true")
    assert status == 200
    assert [path for _, path, _, _ in stolen.requests] == ["/landing?page=2"]  # the query's secrets stayed home
    assert "endpoint path:" in text and "-> redirect_refused, status 302" in text
    assert "holds a secret value of the request" in text
    assert password not in text and sid not in text


async def test_a_credential_header_of_any_name_echoed_by_a_redirect_goes_to_no_other_origin(aiohttp_client: Any, aiohttp_server: Any) -> None:
    """`X-JFrog-Art-Api` says nothing secret by its name; its value is a credential all the same
    (secrets.is_credential_header), so a redirect to another origin echoing it loses it from its query."""
    key = "AKCp8jQ-ART-API-KEY-1234567890"
    foreign, stolen = await recording_server(aiohttp_server, "127.0.0.2", {"/{tail:.*}": {"v": 1}})
    home, _ = await recording_server(aiohttp_server, "127.0.0.1", {
        "/api": lambda request: web.Response(status=302, headers={
            "Location": f"http://127.0.0.2:{foreign.port}/landing?k={request.headers['X-JFrog-Art-Api']}&page=2"}),
    })
    client = await exporter_for(aiohttp_client, f"""
        modules:
          default:
            targets: {{allow: ['127\\.0\\.0\\.[12]:\\d+']}}
            endpoints:
              api: {{url: 'http://127.0.0.1:{home.port}/api', headers: {{X-JFrog-Art-Api: '{key}'}}}}
            metrics: [{{name: x, help: x, value: v}}]
    """)
    status, text = await probe(client, debug="true")
    assert status == 200 and "x 1" in text
    assert [path for _, path, _, _ in stolen.requests] == ["/landing?page=2"]
    assert key not in text


def _sso(foreign_port: int, times: int = 1) -> Any:
    """An SSO-style redirect to the foreign host that quotes the request's URL `times` times over (`?return_to=`)."""
    def answer(request: web.Request) -> web.Response:
        quoted = str(request.url)
        for _ in range(times):
            quoted = urllib.parse.quote(quoted, safe="")
        return web.Response(status=302, headers={"Location": f"http://127.0.0.2:{foreign_port}/sso?return_to={quoted}"})

    return answer


def _echo(foreign_port: int, header: str) -> Any:
    """A redirect to the foreign host with the value of the request's `header` (its credentials, without a scheme) in the path."""
    def answer(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": f"http://127.0.0.2:{foreign_port}/sso/{request.headers.get(header, '').split()[-1]}"})

    return answer


async def test_a_redirect_quoting_any_credential_of_the_request_is_refused_however_often_it_is_percent_encoded(
        aiohttp_client: Any, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials the API writes into the Location of a redirect to another origin: a literal `api_key` of the query
    quoted in `?return_to=`, a literal `X-Api-Key` and a probe parameter sent as `Bearer {tok}` echoed in the path, a
    `secrets:` value with `+ = /` quoted twice and three times, a target's password. Each hop is refused (the foreign
    host gets nothing), and the message quotes the foreign origin alone."""
    special = "Env/Secret+Key=99"
    monkeypatch.setenv("RS10_KEY", special)
    foreign, stolen = await recording_server(aiohttp_server, "127.0.0.2", {"/{tail:.*}": {"v": 666}})
    home, _ = await recording_server(aiohttp_server, "127.0.0.1", {
        "/once": _sso(foreign.port), "/twice": _sso(foreign.port, 2), "/thrice": _sso(foreign.port, 3),
        "/key": _echo(foreign.port, "X-Api-Key"), "/auth": _echo(foreign.port, "Authorization"),
        "/pw": lambda request: web.Response(status=302, headers={"Location": f"http://127.0.0.2:{foreign.port}/sso/"
                                                                 + base64.b64decode(request.headers["Authorization"].split()[1]).decode()}),
    })
    client = await exporter_for(aiohttp_client, f"""
        modules:
          query_key:
            endpoints: {{e: {{url: 'http://127.0.0.1:{home.port}/once', params: {{api_key: LiteralApiKey12345}}}}}}
            metrics: [{{name: x, help: x, value: v}}]
          header_key:
            endpoints: {{e: {{url: 'http://127.0.0.1:{home.port}/key', headers: {{X-Api-Key: LiteralHeaderKey678}}}}}}
            metrics: [{{name: x, help: x, value: v}}]
          param_token:
            parameters: {{tok: {{}}}}
            endpoints: {{e: {{url: 'http://127.0.0.1:{home.port}/auth', headers: {{Authorization: 'Bearer {{tok}}'}}}}}}
            metrics: [{{name: x, help: x, value: v}}]
          secret_twice:
            secrets: {{k: {{env: RS10_KEY}}}}
            endpoints: {{e: {{url: 'http://127.0.0.1:{home.port}/twice', params: {{q: '{{k}}'}}}}}}
            metrics: [{{name: x, help: x, value: v}}]
          secret_thrice:
            secrets: {{k: {{env: RS10_KEY}}}}
            endpoints: {{e: {{url: 'http://127.0.0.1:{home.port}/thrice', params: {{q: '{{k}}'}}}}}}
            metrics: [{{name: x, help: x, value: v}}]
          target_password:
            endpoints: {{e: {{url: '{{target}}/pw'}}}}
            metrics: [{{name: x, help: x, value: v}}]
    """)
    probes = {"query_key": {}, "header_key": {}, "param_token": {"tok": "ProbeParamTok4242"}, "secret_twice": {}, "secret_thrice": {},
              "target_password": {"target": f"http://monitor:Target-Pass-5150@127.0.0.1:{home.port}"}}
    for module, params in probes.items():
        status, text = await probe(client, module=module, debug="true", **params)
        assert status == 200 and "probe_success 0" in text, module
        assert f"redirect 1 (302 to http://127.0.0.2:{foreign.port}) refused: its URL holds a secret value of the request" in text, module
        for secret in ("LiteralApiKey12345", "LiteralHeaderKey678", "ProbeParamTok4242", "Secret", "Target-Pass-5150"):
            assert secret not in text, (module, secret)
    assert stolen.requests == []


async def test_a_redirect_to_another_origin_without_the_request_s_credentials_in_its_url_is_followed(
        aiohttp_client: Any, aiohttp_server: Any) -> None:
    """The check looks for the request's credentials, not for anything encoded: an SSO redirect quoting a URL without them,
    from a request that sends credentials, is followed (without them)."""
    foreign, seen = await recording_server(aiohttp_server, "127.0.0.2", {"/{tail:.*}": {"v": 7}})
    home, _ = await recording_server(aiohttp_server, "127.0.0.1", {"/twice": _sso(foreign.port, 2)})
    client = await exporter_for(aiohttp_client, f"""
        modules:
          default:
            endpoints: {{e: {{url: 'http://127.0.0.1:{home.port}/twice?page=2', headers: {{X-Api-Key: LiteralHeaderKey678}}}}}}
            metrics: [{{name: x, help: x, value: v}}]
    """)
    status, text = await probe(client)
    assert status == 200 and value(parse(text), "x") == 7
    [(_, path, headers, _)] = seen.requests
    assert path.startswith("/sso?return_to=http") and "LiteralHeaderKey678" not in repr(headers)


async def test_a_redirect_holding_a_credential_in_another_case_is_refused_as_one_holding_it_as_sent(
        aiohttp_client: Any, aiohttp_server: Any) -> None:
    """A server may fold a path's case: `/sso/XK9TOKEN…` holds the key as well as `/sso/Xk9Token…` (a case-sensitive
    look missed it and the hop was followed). Refused, nothing sent, nothing of the key shown in any case."""
    key = "Xk9TokenValue77abc"
    foreign, stolen = await recording_server(aiohttp_server, "127.0.0.2", {"/{tail:.*}": {"v": 1}})
    home, _ = await recording_server(aiohttp_server, "127.0.0.1", {"/path": lambda request: web.Response(status=302, headers={
        "Location": f"http://127.0.0.2:{foreign.port}/sso/{request.headers['X-Api-Key'].upper()}"})})
    client = await exporter_for(aiohttp_client, f"""
        modules:
          default:
            endpoints:
              api: {{url: 'http://127.0.0.1:{home.port}/path', headers: {{X-Api-Key: '{key}'}}}}
            metrics: [{{name: x, help: x, value: v}}]
    """)
    status, text = await probe(client, debug="true")
    assert status == 200, text
    assert "redirect_refused" in text, text
    assert key.lower() not in text.lower()
    assert stolen.requests == []


def test_a_redirect_to_a_host_named_after_a_credential_is_refused_without_showing_its_url() -> None:
    """A URL's host is lowercased as it is parsed: `http://Xk9Token….localhost/` is requested, and asked of the DNS,
    as `xk9token….localhost`. It was followed (the key went to the DNS, and its connection error quoted the
    lowercased key); now refused, and its origin is not quoted either: it holds the key. Decided by next_hop alone
    (followed, the hop would ask the DNS for that name: no test may)."""
    key = "Xk9TokenValue77abc"
    hop = Hop("GET", URL("http://127.0.0.1:8080/host"), {"X-Api-Key": key}, None)
    decision = next_hop(hop, 302, f"http://{key}.localhost:8081/landing", hop.url, ())
    assert isinstance(decision, Refusal) and decision.hidden and decision.url is None
    assert key.lower() not in decision.reason.lower()
    assert isinstance(next_hop(hop, 302, "http://127.0.0.2:8081/landing", hop.url, ()), Hop)  # a hop without it is followed


def test_a_credential_lowercased_as_a_host_is_in_a_message_is_hidden() -> None:
    """What an error says of a host named after a secret (a DNS or connection error): the secret in small letters.
    Only a value that could be a host name is looked for so (a JWT, with `_`, or a key of 254 characters is not)."""
    key = "Xk9TokenValue77abc"
    redact = Redactor([key])
    text = f"Cannot connect to host {key.lower()}.localhost:8081"
    assert key.lower() not in redact(text).lower(), redact(text)
    jwt_like, long_key = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.Abc_dEf", "K" * 254
    spared = Redactor([jwt_like, long_key])
    assert spared(f"{jwt_like.lower()} {long_key.lower()}") == f"{jwt_like.lower()} {long_key.lower()}"


def test_a_refusal_says_what_of_the_url_it_does_not_show_and_why() -> None:
    """A refused hop whose URL holds a credential quotes its origin alone and says that its path and query hold a
    secret, or quotes nothing of it when its host holds one, and says so of the whole URL; a hop refused for
    holding a credential says that reason once. Decided by next_hop alone (no request is made)."""
    key = "Xk9TokenValue77abc"
    hop = Hop("GET", URL("https://127.0.0.1:8443/start"), {"Authorization": f"Bearer {key}"}, None)
    in_path = next_hop(hop, 302, f"http://127.0.0.2:8081/p/{key}", hop.url, ())
    assert isinstance(in_path, Refusal) and not in_path.hidden and in_path.url == URL("http://127.0.0.2:8081")
    assert in_path.reason.startswith("it leaves https for http, and the request carries secrets")
    assert in_path.reason.endswith("; its path and query, which hold a secret value of the request, are not shown")
    in_host = next_hop(hop, 302, f"http://{key}.localhost:8081/p", hop.url, ())
    assert isinstance(in_host, Refusal) and in_host.hidden and in_host.url is None
    assert in_host.reason.endswith("; its URL, which holds a secret value of the request, is not shown")
    plain = Hop("GET", URL("http://127.0.0.1:8080/start"), {"X-Api-Key": key}, None)
    holding = next_hop(plain, 302, f"http://127.0.0.2:8081/p?x={key}x", plain.url, ())
    assert isinstance(holding, Refusal) and holding.url == URL("http://127.0.0.2:8081")
    assert holding.reason == ("its URL holds a secret value of the request (a credential it sends), which another origin must not get; "
                              "its path and query are not shown")
    for refusal in (in_path, in_host, holding):
        assert key.lower() not in refusal.reason.lower()
