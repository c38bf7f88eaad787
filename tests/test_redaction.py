"""Redaction at every edge, against the exporter as a real process: what its pages, traces, error
bodies, log lines and commands show of the secrets a spec, a target or a client error holds."""

from __future__ import annotations

import asyncio
import base64
import html
import logging
import signal
import subprocess
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import UpstreamFactory, make_spec
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_util import SESSION, free_port, jsonexporter, wait_healthy


@dataclass
class Served:
    """`jsonexporter serve` on 127.0.0.1, logging logfmt into a file."""

    proc: subprocess.Popen[str]
    base: str
    spec: Path
    log: Path

    async def get(self, path: str, **params: str) -> tuple[int, str]:
        async with aiohttp.ClientSession(timeout=SESSION) as session, session.get(self.base + path, params=params) as response:
            return response.status, await response.text()

    async def post(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession(timeout=SESSION) as session, session.post(self.base + path) as response:
            return response.status, await response.text()

    def stop(self) -> str:
        """Stop the process; its log."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(15) == 0
        return self.log.read_text()


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[[str], Awaitable[Served]]]:
    started: list[Served] = []

    async def start(spec_text: str) -> Served:
        spec, log = tmp_path / "spec.yml", tmp_path / "exporter.log"
        spec.write_text(textwrap.dedent(spec_text))
        port = free_port()
        with log.open("w") as err:
            proc = subprocess.Popen(jsonexporter("--config.file", str(spec), "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "debug"),
                                    stdout=subprocess.DEVNULL, stderr=err, text=True)
        served = Served(proc, f"http://127.0.0.1:{port}", spec, log)
        started.append(served)
        await wait_healthy(served.base, proc)
        return served

    yield start
    for served in started:
        if served.proc.poll() is None:
            served.proc.kill()
        served.proc.wait(10)


async def test_the_landing_page_shows_endpoint_urls_without_userinfo_or_secret_query_values(serve: Callable[[str], Awaitable[Served]]) -> None:
    exporter = await serve("""
        modules:
          default:
            endpoints:
              api: {url: 'http://apiuser:pa55-LANDING@127.0.0.1:9/v1?api_key=k3y-LANDING&page=1'}
            metrics: [{name: x, help: x, value: v}]
        """)
    _, page = await exporter.get("/")
    exporter.stop()
    assert "pa55-LANDING" not in page and "k3y-LANDING" not in page and "apiuser" not in page
    assert "GET http://&lt;redacted&gt;@127.0.0.1:9/v1?api_key=&lt;redacted&gt;&amp;page=1" in page  # shown as <redacted>, in HTML


async def test_client_errors_quoting_the_url_show_it_redacted_in_trace_records_and_log(
    serve: Callable[[str], Awaitable[Served]], upstream: UpstreamFactory, malformed_upstream: str,
) -> None:
    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.path_qs)

    up = await upstream({"/loop": loop})
    exporter = await serve(r"""
        modules:
          default:
            targets: {allow: ['http://127\.0\.0\.1:\d+']}
            endpoints:
              api: {url: '{target}/loop', params: {api_key: SECRET-QUERY-1}}
            metrics: [{name: x, help: x, value: v}]
        """)
    traces = [(await exporter.get("/probe", target=target, debug="true"))[1] for target in (up.url, malformed_upstream)]
    records = [(await exporter.get(f"/probes/{n}"))[1] for n in (1, 2)]
    log = exporter.stop()
    assert "redirect 10: 302 -> GET" in traces[0] and "ClientResponseError" in traces[1]  # the texts that quote the URL
    for shown in (*traces, *map(html.unescape, records), log):
        assert "SECRET-QUERY-1" not in shown and "%3Credacted%3E" not in shown
    for shown in (*traces, html.unescape(records[1]), log):
        assert "api_key=<redacted>" in shown
    assert log.count("endpoint failed") == 2


async def test_secret_values_with_braces_never_show_in_check_reload_or_log(serve: Callable[[str], Awaitable[Served]], tmp_path: Path) -> None:
    good = """
        modules:
          default:
            metrics: [{name: x, help: x, value: v}]
        """
    # each a secret that is not a valid template: the problem quotes the value it cannot parse
    broken = """
        modules:
          default:
            endpoints:
              api:
                url: 'http://127.0.0.1:9/'
                headers: {X-Api-Key: 'hdr{SECRET-1'}
                params: {token: 'SECRET-2}x'}
                body: {user: u, password: 'p{w}SECRET-3'}
            metrics: [{name: x, help: x, value: v}]
          raw:
            endpoints:
              api: {url: 'http://127.0.0.1:9/', method: POST, body: '{"user": "u", "password": "SECRET-4"}'}
            metrics: [{name: x, help: x, value: v}]
        """
    secrets = ("SECRET-1", "SECRET-2", "SECRET-3", "SECRET-4")
    exporter = await serve(good)
    exporter.spec.write_text(textwrap.dedent(broken))
    check = subprocess.run(jsonexporter("check", str(exporter.spec)), capture_output=True, text=True, timeout=60)
    status, reload_body = await exporter.post("/-/reload")
    log = exporter.stop()
    assert check.returncode == 1 and status == 500
    for shown in (check.stdout, reload_body, log):
        assert "headers['X-Api-Key']: invalid template" in shown and "params.token: invalid template" in shown
        assert "body.password: unknown placeholder" in shown and "modules.raw.endpoints.api.body: invalid placeholder" in shown
        assert "'<redacted>'" in shown
        for secret in secrets:
            assert secret not in shown, (secret, shown)


# A credential written without quotes that starts with `!`, `*` or `&` is a tag, an alias or an anchor to
# YAML: it is never a value, so the Redactor cannot learn it; the YAML layer's problems never quote the
# source (yamlsyntax.without_source). Each: the credential's place, as written, and what must not show.
_TOKENS_AT_SECRET_PLACES = [
    ("tag", "http_client_config:\n  basic_auth:\n    username: u\n    password: !S3cr3t-TAG-1", "S3cr3t-TAG-1"),
    ("tag in a flow mapping", "http_client_config: {basic_auth: {username: u, password: !S3cr3t-TAG-2}}", "S3cr3t-TAG-2"),
    ("alias", "endpoints:\n  api:\n    url: 'http://127.0.0.1:9/'\n    headers:\n      Authorization: *S3cr3t-ALIAS-3", "S3cr3t-ALIAS-3"),
    ("duplicate anchor", "secrets:\n  a: &S3cr3t-ANCHOR-4 x\n  b: &S3cr3t-ANCHOR-4 y", "S3cr3t-ANCHOR-4"),
    ("tag handle", "http_client_config:\n  oauth2:\n    client_id: c\n    client_secret: !HANDLE-5x!rest\n    token_url: 'http://127.0.0.1:9/'",
     "HANDLE-5x"),
    ("anchor of a bad character", "http_client_config:\n  bearer_token: &tok§en", "§"),
    ("escape in a quoted scalar", 'http_client_config:\n  bearer_token: "S3cr\\x§§t"', "§"),
    ("explicit tag the value does not fit", "http_client_config:\n  bearer_token: !!int S3cr3t-INT-6", "S3cr3t-INT-6"),
]


async def test_a_credential_that_yaml_reads_as_a_tag_alias_or_anchor_shows_nowhere(serve: Callable[[str], Awaitable[Served]]) -> None:
    exporter = await serve("""
        modules:
          default:
            metrics: [{name: x, help: x, value: v}]
        """)
    shown: list[tuple[str, str]] = []
    for kind, place, secret in _TOKENS_AT_SECRET_PLACES:
        line = 4 + max(i for i, text in enumerate(place.splitlines()) if secret in text)  # the (last) credential's, under `targets`
        indented = textwrap.indent(place, "    ")
        exporter.spec.write_text(f"modules:\n  default:\n    targets: {{allow: ['http://127.0.0.1:9']}}\n{indented}\n"
                                 "    metrics: [{name: x, help: x, value: v}]\n")
        check = subprocess.run(jsonexporter("check", str(exporter.spec)), capture_output=True, text=True, timeout=60)
        status, reload_body = await exporter.post("/-/reload")
        assert check.returncode == 1 and status == 500, (kind, check.stdout, reload_body)
        assert f"{exporter.spec}:{line}:" in check.stdout and f"{exporter.spec}:{line}:" in reload_body, (kind, check.stdout, reload_body)
        shown += [(kind, check.stdout + check.stderr), (kind, reload_body)]
    log = exporter.stop()
    assert log.count("reload failed") >= len(_TOKENS_AT_SECRET_PLACES)
    for kind, text in [*shown, ("log", log)]:
        for _, _, secret in _TOKENS_AT_SECRET_PLACES:
            assert secret not in text, (kind, secret, text)


async def test_a_credential_pasted_in_braces_shows_nowhere_and_is_located(serve: Callable[[str], Awaitable[Served]]) -> None:
    # `{S3cret}` is a key without a value to YAML: quoted as an unknown key, or in a path, it was shown whole
    exporter = await serve("""
        modules:
          default:
            metrics: [{name: x, help: x, value: v}]
        """)
    exporter.spec.write_text("modules:\n  default:\n    secrets: {a: {S3cret-BRACE-1}}\n"
                             "    http_client_config: {basic_auth: {username: u, password: x, S3cret-KEY-2: y}}\n"
                             "    endpoints: {e: {url: 'http://127.0.0.1:9/', headers: {Authorization: Bearer abc, S3cret-COMMA-3}}}\n"
                             "    metrics: [{name: x, help: x, value: v}]\n")
    check = subprocess.run(jsonexporter("check", str(exporter.spec)), capture_output=True, text=True, timeout=60)
    status, reload_body = await exporter.post("/-/reload")
    log = exporter.stop()
    assert check.returncode == 1 and status == 500 and "reload failed" in log
    for shown in (check.stdout, reload_body):
        assert f"{exporter.spec}:3:19: modules.default.secrets.a: unknown key (not shown: a key written without a value" in shown, shown
        assert f"{exporter.spec}:4:65: modules.default.http_client_config.basic_auth: unknown key (not shown: a key where credentials" in shown
        assert f"{exporter.spec}:5:86: modules.default.endpoints.e.headers: expected a string, got null" in shown
    for shown in (check.stdout + check.stderr, reload_body, log):
        for secret in ("S3cret-BRACE-1", "S3cret-KEY-2", "S3cret-COMMA-3"):
            assert secret not in shown, (secret, shown)


async def _refused_probe(serve: Callable[[str], Awaitable[Served]], upstream: UpstreamFactory, path: str, url: str,
                         target_of: Callable[[str], str]) -> tuple[Any, list[str]]:
    """One probe of `target_of(the upstream's URL)` by a module whose endpoint is `url`, refused (401) by the
    upstream at `path`: the upstream, and what its trace, the landing page, /probes/1 and the log show."""
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": "who are you"}, status=401)

    up = await upstream({path: refuse})
    exporter = await serve(f"""
        modules:
          default:
            endpoints: {{api: {{url: '{url}'}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """)
    _, trace = await exporter.get("/probe", target=target_of(up.url), debug="true")
    _, page = await exporter.get("/")
    _, record = await exporter.get("/probes/1")
    log = exporter.stop()
    assert up.hits[path] == 1 and "invalid_status" in log
    return up, [trace, html.unescape(page), html.unescape(record), log]


async def test_the_userinfo_of_a_host_port_target_is_redacted_everywhere(serve: Callable[[str], Awaitable[Served]], upstream: UpstreamFactory) -> None:
    up, shown = await _refused_probe(serve, upstream, "/api", "http://{target}/api",
                                     lambda url: url.replace("http://", "someone:pw-HOSTPORT@"))  # user:pw@127.0.0.1:port
    assert up.requests[0].headers["Authorization"].startswith("Basic ")  # the target's userinfo was used
    for text in shown:
        assert "pw-HOSTPORT" not in text and "someone" not in text
        assert f"<redacted>@127.0.0.1:{up.server.port}" in text


async def test_a_secret_named_pair_in_a_targets_fragment_is_redacted_everywhere(serve: Callable[[str], Awaitable[Served]],
                                                                               upstream: UpstreamFactory) -> None:
    _, shown = await _refused_probe(serve, upstream, "/cb", "{target}",
                                    lambda url: f"{url}/cb#access_token=FRAG-TOKEN-1&state=s1")  # as OAuth2's implicit flow writes it
    for text in shown:
        assert "FRAG-TOKEN-1" not in text, text
        assert "/cb#access_token=<redacted>&state=s1" in text, text


async def test_the_probe_command_prints_no_secret(upstream: UpstreamFactory, tmp_path: Path) -> None:
    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.path_qs)

    up = await upstream({"/loop": loop})
    (tmp_path / "token").write_text("FILE-TOKEN-1")
    spec = tmp_path / "spec.yml"
    spec.write_text(textwrap.dedent(fr"""
        modules:
          default:
            targets: {{allow: ['http://127\.0\.0\.1:\d+']}}
            http_client_config: {{bearer_token_file: {tmp_path}/token}}
            endpoints: {{api: {{url: '{{target}}/loop?session=SESSION-1'}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """))
    proc = await asyncio.create_subprocess_exec(*jsonexporter("probe", "--config.file", str(spec), "--target", up.url, "--debug"),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    printed = out.decode() + err.decode()
    assert proc.returncode == 1 and "more than 10 redirects" in printed and "session=<redacted>" in printed
    assert "SESSION-1" not in printed and "FILE-TOKEN-1" not in printed


@pytest.mark.parametrize(("text", "shown"), [
    ("http://user:pw@host:80/x?api_key=abc&b=2", "http://<redacted>@host:80/x?api_key=<redacted>&b=2"),
    ("http://u:p@ss@host/", "http://<redacted>@host/"),  # a password holding `@`
    ("target=user:pw@127.0.0.1:8080", "target=<redacted>@127.0.0.1:8080"),
    ("tok3n@127.0.0.1:8080/api", "<redacted>@127.0.0.1:8080/api"),
    ("url='http://h/?a=1&Session_ID=abc'", "url='http://h/?a=1&Session_ID=<redacted>'"),
    ('<a href="/probe?m=1&amp;api_key=zz&amp;t=x">', '<a href="/probe?m=1&amp;api_key=<redacted>&amp;t=x">'),
    # a fragment's pairs as the query's (OAuth2's implicit flow answers `#access_token=…`)
    ("http://h/cb#access_token=abc&state=s1", "http://h/cb#access_token=<redacted>&state=s1"),
    ("http://h/#state=s1&id_token=abc", "http://h/#state=s1&id_token=<redacted>"),
    ("http://h/#/dashboard?tab=2", "http://h/#/dashboard?tab=2"),
    ("http://h/?a=1#section-2", "http://h/?a=1#section-2"),
    ("# HELP x_token_total a help text", "# HELP x_token_total a help text"),
    # what only looks alike stays: e-mail addresses, scp-style remotes, label pairs, plain words
    ("mail ops@example.com at 12:30", "mail ops@example.com at 12:30"),
    ("git@github.com:org/repo", "git@github.com:org/repo"),
    ('x{token="abc",key="v"} 1', 'x{token="abc",key="v"} 1'),
    ("password=1 in a sentence", "password=1 in a sentence"),
])
def test_the_pattern_rules_hide_credentials_in_urls_and_nothing_else(text: str, shown: str) -> None:
    from jsonexporter.secrets import redact_patterns

    assert redact_patterns(text) == shown
    assert redact_patterns(shown) == shown  # applying twice changes nothing


def test_a_learned_secret_in_use_stays_hidden_however_many_newer_ones_are_learned() -> None:
    from jsonexporter.secrets import REDACTED, Redactor

    redact = Redactor(budget=100_000)
    redact.learn("file-token-in-constant-use")
    for i in range(600):  # the forms of each are 158 characters: 95,000 in all, within the budget
        redact.learn(f"rotated-oauth-token-{i:06d}")
    redact.learn("file-token-in-constant-use")  # read again at a request: the most recently used now
    for i in range(100):
        redact.learn(f"rotated-oauth-token-more-{i:06d}")
    assert redact("Authorization: file-token-in-constant-use") == f"Authorization: {REDACTED}"
    assert redact("rotated-oauth-token-000000") == "rotated-oauth-token-000000"  # the least recently used went
    assert redact.learned_chars <= 100_000


async def test_a_secret_named_probe_parameter_echoed_by_the_upstream_shows_nowhere(
    aiohttp_client: Any, upstream: UpstreamFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    from jsonexporter import logs
    from jsonexporter.secrets import Redactor
    from jsonexporter.server import STATE, make_app

    key = "param-SECRET-value-42"
    async def echo(request: web.Request) -> web.Response:  # not JSON: the error quotes it back
        return web.Response(text=f"denied for {request.headers['X-Api-Key']}")

    up = await upstream({"/": echo})
    client = await aiohttp_client(make_app(make_spec(textwrap.dedent(r"""
        modules:
          default:
            targets: {allow: ['http://127\.0\.0\.1:\d+']}
            parameters: {api_key: {}}
            endpoints: {main: {url: '{target}/', headers: {X-Api-Key: '{api_key}'}}}
            metrics: [{name: x, help: x, value: v}]
        """))))
    logs.redact_with(client.app[STATE].redactor)  # what `serve` does
    caplog.set_level(logging.WARNING)
    try:
        traced = await (await client.get("/probe", params={"target": up.url, "api_key": key, "debug": "true"})).text()
        await client.get("/probe", params={"target": up.url, "api_key": key})
        page = await (await client.get("/probes/2")).text()
        logged = "\n".join(logs.JsonFormatter().format(r) for r in caplog.records)
    finally:
        logs.redact_with(Redactor())
    assert "-> invalid_json" in traced and "invalid_json" in page and "invalid_json" in logged
    for shown in (traced, page, logged):
        assert key not in shown and "param-SECRET" not in shown, shown
    assert client.app[STATE].redactor(key) == key  # hidden per probe, not learned by the one Redactor of the process


SECRET_NAMES = ["pwd", "db_pwd", "pass", "X-Api-Pass", "userPass", "DB_PASS", "user.pass", "jwt", "id_jwt", "sig", "sigV4", "sas", "sas_token",
                "X-Amz-Signature", "X-Amz-Security-Token", "passphrase", "PHPSESSID", "x-csrf-token", "_xsrf", "api_key", "PRIVATE-TOKEN"]
PLAIN_NAMES = ["passenger", "PASSENGER_COUNT", "bypass", "bypass_cache", "compass", "passive", "passthrough", "signal", "Signal", "design",
               "assign", "sigma", "kansas", "massage", "userPassenger", "page", "per_page", "region"]


@pytest.mark.parametrize("name", SECRET_NAMES + PLAIN_NAMES)
def test_secret_words_name_secrets_as_words_and_leave_words_that_hold_them_alone(name: str) -> None:
    from jsonexporter.secrets import is_secret_name, redact_patterns

    secret = name in SECRET_NAMES
    assert is_secret_name(name) is secret
    shown = redact_patterns(f"https://h/x?a=1&{name}=VALUE1234&b=2")
    assert shown == (f"https://h/x?a=1&{name}=<redacted>&b=2" if secret else f"https://h/x?a=1&{name}=VALUE1234&b=2")


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="pasigPASIGenrx1_-.%+", min_size=1, max_size=12))
def test_the_query_pattern_hides_the_values_of_the_names_is_secret_name_calls_secret(name: str) -> None:
    from jsonexporter.secrets import is_secret_name, redact_patterns

    assert ("VALUE" not in redact_patterns(f"?{name}=VALUE")) is is_secret_name(name)


async def _echoed_trace(aiohttp_client: Any, upstream: UpstreamFactory, module: str, **params: str) -> str:
    """The debug trace of a probe of `module` against an upstream that answers the request headers it got."""
    from jsonexporter.server import make_app

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"v": 1, "headers": dict(request.headers)})

    up = await upstream({"/": echo})
    client = await aiohttp_client(make_app(make_spec(textwrap.dedent(module).replace("URL", up.url))))
    response = await client.get("/probe", params={"debug": "true", **params})
    text = await response.text()
    assert response.status == 200 and "probe_success 1" in text and "-> success" in text, text
    return text


async def test_a_parameter_default_sent_as_a_credential_shows_nowhere(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    default = "PARAMDEFAULTSECRET1"  # a parameter whose name says nothing: placed where a credential goes, its default is one
    traced = await _echoed_trace(aiohttp_client, upstream, f"""
        modules:
          default:
            parameters: {{k: {{default: {default}}}, art: {{default: AKCp-ARTIFACTORY-KEY1}}}}
            endpoints:
              a: {{url: 'URL/', headers: {{Authorization: 'Bearer {{k}}'}}}}
              b: {{url: 'URL/', headers: {{X-JFrog-Art-Api: '{{art}}'}}}}
            metrics: [{{name: x, help: x, value: v, endpoint: a}}]
        """)
    assert "Bearer <redacted>" in traced or "'Authorization': '<redacted>'" in traced
    assert default not in traced and "AKCp-ARTIFACTORY-KEY1" not in traced, traced


async def test_a_callers_value_sent_as_a_credential_shows_nowhere_in_its_own_trace(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    module = """
        modules:
          default:
            parameters: {k: {}, art: {}}
            endpoints:
              a: {url: 'URL/', headers: {Authorization: 'Bearer {k}', X-Other: '{k}', X-JFrog-Art-Api: '{art}'}}
            metrics: [{name: x, help: x, value: v}]
        """
    traced = await _echoed_trace(aiohttp_client, upstream, module, k="caller-TOKEN-value-1", art="caller-ART-value-1")
    assert "caller-TOKEN-value-1" not in traced, traced  # placed in Authorization: hidden wherever it shows, the echo too
    [headers] = [line for line in traced.splitlines() if "request headers:" in line]
    assert "'X-JFrog-Art-Api': '<redacted>'" in headers and "caller-ART-value-1" not in headers  # a credential header, as redirects judge


async def test_secrets_are_hidden_as_aiohttp_writes_them_in_paths_and_queries(serve: Callable[[str], Awaitable[Served]], upstream: UpstreamFactory,
                                                                               tmp_path: Path) -> None:
    """yarl keeps `!:@$=/` in a path and encodes `+` and `=` in a query: neither urllib spelling."""
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": "no"}, status=400)

    up = await upstream({"/x/{rest:.*}": refuse})
    (tmp_path / "pw").write_text("Pass#word!1")
    (tmp_path / "ticket").write_text("PVE:monitor@pve:6750AB12::Zm9v+YmFy/YmF6==")
    exporter = await serve(fr"""
        modules:
          default:
            targets: {{allow: ['http://127\.0\.0\.1:\d+']}}
            secrets:
              pw: {{file: {tmp_path}/pw}}
              ticket: {{file: {tmp_path}/ticket}}
            endpoints:
              e:
                url: '{{target}}/x/{{pw}}/{{ticket}}?s={{ticket}}'
                params: {{q: '{{pw}}', t: '{{ticket}}'}}
            metrics: [{{name: x, help: x, value: a}}]
        """)
    _, trace = await exporter.get("/probe", target=up.url, debug="true")
    _, record = await exporter.get("/probes/1")
    log = exporter.stop()
    assert up.requests and up.requests[0].query["q"] == "Pass#word!1"  # the secrets were sent
    for shown in (trace, html.unescape(record), log):
        assert "invalid_status" in shown
        for part in ("Pass", "word", "Zm9v", "YmF6", "6750AB12"):
            assert part not in shown, (part, shown)


async def test_a_secret_echoed_percent_encoded_twice_in_other_cases_base64_or_with_escaped_slashes_shows_nowhere(
        serve: Callable[[str], Awaitable[Served]], upstream: UpstreamFactory, tmp_path: Path) -> None:
    """An answer that is no JSON is quoted by the error of its endpoint (trace, /probes/ID, log): it echoes the secret
    in the forms other software writes it: quoted twice by a URL quoting a URL (`%252B`), with capital hex digits in
    JSON's `\\u00E4` and `\\xC3`, base64-encoded, JSON-escaped with `\\/` (PHP)."""
    secret = "Ünv/Secret+Key=99"
    forms = ["%25C3%259Cnv/Secret%252BKey%253D99", "%25c3%259cnv%252fSecret%252bKey%253d99", "\\u00DCnv\\/Secret+Key=99",
             "\\xC3\\x9Cnv/Secret+Key=99", base64.b64encode(secret.encode()).decode(), base64.urlsafe_b64encode(secret.encode()).decode()]

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=" ".join(forms))

    up = await upstream({"/": echo})
    (tmp_path / "k").write_text(secret)
    exporter = await serve(fr"""
        modules:
          default:
            targets: {{allow: ['http://127\.0\.0\.1:\d+']}}
            secrets: {{k: {{file: {tmp_path}/k}}}}
            endpoints: {{e: {{url: '{{target}}/', headers: {{X-Api-Key: '{{k}}'}}}}}}
            metrics: [{{name: x, help: x, value: v}}]
        """)
    _, trace = await exporter.get("/probe", target=up.url, debug="true")
    _, record = await exporter.get("/probes/1")
    log = exporter.stop()
    for shown in (trace, html.unescape(record), log):
        assert "invalid_json" in shown and "<redacted>" in shown
        for part in ("Secret", *(f[:12] for f in forms[4:])):
            assert part not in shown, (part, shown)


# what ends a word for the pattern rules (`\s`), inside a passphrase
PASSPHRASE_SPACES = [" ", "\u00a0", "\u0085", "\u2028", "\u3000"]  # C0 controls (\t, \x1f) make an invalid target


async def test_a_targets_password_with_spaces_is_hidden_whole_in_the_log_pages_trace_and_series(
        serve: Callable[[str], Awaitable[Served]], upstream: UpstreamFactory) -> None:
    """A passphrase `correct horse battery staple` in a target's userinfo, its words split by any space Unicode knows:
    the log line, /probes/ID, the recent probes of /, the trace and the series (a module label `{target}`, `$target`)
    show none of it (render.redact_target, the one way a target is shown: its password hidden whole first)."""
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": "who are you"}, status=401)

    up = await upstream({"/ok": {"items": [{"v": 1}]}, "/bad": refuse})
    exporter = await serve(fr"""
        modules:
          default:
            targets: {{allow: ['http://([^@/]+@)?127\.0\.0\.1:\d+/ok']}}
            labels: {{source: '{{target}}'}}
            endpoints: {{ok: {{url: '{{target}}'}}, bad: {{url: '{up.url}/bad'}}}}
            metrics: [{{name: m, help: h, endpoint: ok, each: items, value: v, labels: {{t: '$target'}}}}]
        """)
    shown = []
    for n, space in enumerate(PASSPHRASE_SPACES, 1):
        target = up.url.replace("http://", f"http://monitor:correct{space}horse{space}battery{space}staple@") + "/ok"
        _, metrics = await exporter.get("/probe", target=target)
        assert f'm{{source="http://<redacted>@127.0.0.1:{up.server.port}/ok",t="http://<redacted>@127.0.0.1:{up.server.port}/ok"}} 1' in metrics
        _, trace = await exporter.get("/probe", target=target, debug="true")
        _, record = await exporter.get(f"/probes/{2 * n}")
        shown += [metrics, trace, html.unescape(record)]
    _, page = await exporter.get("/")
    log = exporter.stop()
    assert "invalid_status" in log and up.requests[0].headers["Authorization"].startswith("Basic ")
    for text in [*shown, html.unescape(page), log]:
        for word in ("monitor", "correct", "horse", "battery", "staple"):
            assert word not in text, (word, text)


async def test_a_parameter_sent_as_a_credential_echoed_in_a_label_is_hidden_and_left_out_of_params(
        aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    """`tok` says nothing secret by its name, but the module sends it as `X-Api-Key: '{tok}'` (Module.credential_parameters):
    an answer echoing it gives `<redacted>` in the series (probe.answer_redactor, as the trace hides it), and `$params`
    does not hold it (`$params.to_string(@)` shows the other parameters)."""
    from jsonexporter.server import make_app

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"items": [{"k": request.headers["X-Api-Key"], "v": 1}]})

    up = await upstream({"/x": echo})
    client = await aiohttp_client(make_app(make_spec(textwrap.dedent(f"""
        modules:
          default:
            parameters: {{tok: {{}}, region: {{default: eu}}}}
            endpoints: {{e: {{url: '{up.url}/x', headers: {{X-Api-Key: '{{tok}}', X-Region: '{{region}}'}}}}}}
            metrics: [{{name: m, help: h, each: items, value: v, labels: {{k: k, q: '$params.to_string(@)'}}}}]
        """))))
    text = await (await client.get("/probe", params={"tok": "ProbeTokValue123"})).text()
    assert up.requests[0].headers["X-Api-Key"] == "ProbeTokValue123"
    assert 'm{k="<redacted>",q="{\\"region\\":\\"eu\\"}"} 1' in text, text
    traced = await (await client.get("/probe", params={"tok": "ProbeTokValue123", "debug": "true"})).text()
    assert "ProbeTokValue123" not in text + traced
