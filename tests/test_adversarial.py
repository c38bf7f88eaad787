"""The pieces of the security work tried together, the way a hostile target, upstream or client
would: secrets learned at run time meeting the texts that quote upstream answers, bodies meeting
their Content-Type. 127.0.0.1 plays the API, 127.0.0.2 the foreign host."""

from __future__ import annotations

import base64
import html
import textwrap
from pathlib import Path
from typing import Any

from aiohttp import web
from conftest import UpstreamFactory
from hypothesis import given
from hypothesis import strategies as st
from metrics_util import parse, value
from test_redirects import exporter_for, probe, recording_server, redirect

from jsonexporter.spec import load_text
from jsonexporter.urls import UnusableURL, checked_url

TOKEN = "tok-FILE-" + "0123456789abcdefghijklmnopqrstu"  # 40 characters, read from a file at run time


def _token_module(tmp_path: Path, allow: str = r"'http://127\.0\.0\.1:\d+'") -> str:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    return rf"""
        modules:
          default:
            targets: {{allow: [{allow}]}}
            http_client_config: {{bearer_token_file: {token_file}}}
            metrics: [{{name: x, help: x, value: v}}]
        """


def _no_part_of_the_token(text: str) -> None:
    for i in range(0, len(TOKEN) - 8, 4):  # no 8 characters in a row of it, wherever a text was cut
        assert TOKEN[i:i + 8] not in text, (TOKEN[i:i + 8], text)


async def test_a_learned_secret_cut_where_a_trace_shortens_a_document_shows_no_part_of_it(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path,
) -> None:
    # the document as the trace writes it: the cut at 300 characters falls 20 characters into the token
    prefix = '{"pad": "", "echo": "Bearer '
    up = await upstream({"/": {"pad": "p" * (300 - 20 - len(prefix)), "echo": f"Bearer {TOKEN}", "v": 1}})
    client = await exporter_for(aiohttp_client, _token_module(tmp_path))
    status, text = await probe(client, target=up.url, debug="true")
    assert status == 200 and "(first 300 of" in text and "probe_success 1" in text
    _no_part_of_the_token(text)


async def test_a_learned_secret_cut_where_an_invalid_json_error_quotes_the_body_shows_no_part_of_it(
    aiohttp_client: Any, upstream: UpstreamFactory, tmp_path: Path,
) -> None:
    async def echo(request: web.Request) -> web.Response:  # not JSON: the error quotes its first 64 bytes
        return web.Response(text="E" * 44 + request.headers["Authorization"].removeprefix("Bearer "))

    up = await upstream({"/": echo})
    client = await exporter_for(aiohttp_client, _token_module(tmp_path))
    status, text = await probe(client, target=up.url, debug="true")
    assert status == 200 and "-> invalid_json" in text and "body starts with" in text
    _no_part_of_the_token(text)
    page = await (await client.get("/probes/1")).text()
    assert "body starts with" in html.unescape(page)
    _no_part_of_the_token(html.unescape(page))


def test_a_mapping_body_with_placeholders_under_a_form_content_type_is_refused() -> None:
    # sent as JSON text under a form type, {user: 'x&role=admin'} would reach a form parser as a role field
    spec, problems = load_text(textwrap.dedent("""
        modules:
          default:
            parameters: {user: {}}
            endpoints:
              main: {method: POST, headers: {Content-Type: application/x-www-form-urlencoded}, body: {user: '{user}', role: viewer}}
            metrics: [{name: x, help: x, endpoint: main, value: v}]
        """), "spec.yml")
    assert spec is None
    [problem] = [p for p in problems if p.severity == "error"]
    assert "spec.yml:6:94:" in str(problem) and "a mapping body is sent as JSON" in str(problem)
    assert "not application/x-www-form-urlencoded" in str(problem)


async def test_a_redirect_that_echoes_the_bearer_token_to_another_origin_does_not_forward_it(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
) -> None:
    def echo_token(request: web.Request) -> web.Response:  # the API sends us on with our own token in the query
        token = request.headers["Authorization"].removeprefix("Bearer ")
        return web.Response(status=302, headers={"Location": f"//127.0.0.2:{foreign.port}/landing?x={token}&page=2"})

    foreign, seen_foreign = await recording_server(aiohttp_server, "127.0.0.2", {"/landing": {"v": 2}})
    home, _ = await recording_server(aiohttp_server, "127.0.0.1", {"/": echo_token})
    client = await exporter_for(aiohttp_client, _token_module(tmp_path, r"'http://127\.0\.0\.1:\d+', '127\.0\.0\.2:\d+'"))
    status, text = await probe(client, target=f"http://127.0.0.1:{home.port}", debug="true")
    assert status == 200 and "probe_success 1" in text
    [(_, path, _, _)] = seen_foreign.requests
    assert path == "/landing?page=2"
    assert TOKEN not in seen_foreign.text()


async def test_the_credentials_of_a_target_quoted_back_by_its_upstream_show_nowhere(aiohttp_client: Any, aiohttp_server: Any) -> None:
    home, _ = await recording_server(aiohttp_server, "127.0.0.1", {
        "/whole": lambda r: web.Response(text=f"no {r.headers['Authorization']} here"),  # not JSON: the error quotes it
        "/cut": lambda r: web.Response(text="x" * 50 + r.headers["Authorization"]),  # quoted up to its 64th byte
    })
    client = await exporter_for(aiohttp_client, r"""
        modules:
          default:
            targets: {allow: ['(\w+:[\w-]+@)?127\.0\.0\.1:\d+']}
            endpoints: {whole: {url: 'http://{target}/whole'}, cut: {url: 'http://{target}/cut'}}
            metrics: [{name: x, help: x, endpoint: whole, value: v}]
        """)
    basic = base64.b64encode(b"u:pw-SECRET-9").decode()
    _, text = await probe(client, target=f"u:pw-SECRET-9@127.0.0.1:{home.port}", debug="true")
    page = html.unescape(await (await client.get("/probes/1")).text())
    assert text.count("-> invalid_json") == 2 and page.count("invalid_json") == 2
    for shown in (text, page):
        assert "pw-SECRET" not in shown and basic[:8] not in shown, shown


async def test_a_url_password_in_an_answer_cut_where_the_trace_shortens_it_shows_no_part_of_it(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    # nothing the exporter knows: the pattern rules hide a URL's userinfo, which a cut before its `@` hid from them
    prefix = '{"pad": "", "repo": "https://deploy:'
    up = await upstream({"/": {"pad": "p" * (300 - 12 - len(prefix)), "repo": "https://deploy:gh-pass-w0rd-SECRET-7@git.example/x", "v": 1}})
    client = await exporter_for(aiohttp_client, "modules: {default: {metrics: [{name: x, help: x, value: v}]}}")
    status, text = await probe(client, target=up.url, debug="true")
    assert status == 200 and "(first 300 of" in text and "probe_success 1" in text
    assert "https://<redacted>… (first 300 of" in text and "gh-pass" not in text


# `([a-z0-9]+[.-]?)+` and `([a-zA-Z0-9]+\s?)+` split a run of letters every possible way before giving up:
# with Python's re, 40 letters and a character the pattern refuses take longer than the age of the server
HOSTILE = "a" * 40 + "!"
_BACKTRACKING_MODULE = r"""
    modules:
      default:
        targets: {allow: ['http://127\.0\.0\.1:\d+', 'https?://([a-z0-9]+[.-]?)+\.example\.com(:\d+)?']}
        parameters:
          name: {pattern: '([a-zA-Z0-9]+\s?)+', default: x}
        endpoints:
          main: {url: '{target}/start', params: {name: '{name}'}}
        metrics: [{name: x, help: x, value: v}]
    """


async def test_patterns_that_backtrack_answer_hostile_targets_parameters_and_locations(aiohttp_client: Any, aiohttp_server: Any) -> None:
    home, seen = await recording_server(aiohttp_server, "127.0.0.1", {"/start": redirect("http://" + "a" * 40 + "/")})
    client = await exporter_for(aiohttp_client, _BACKTRACKING_MODULE)
    status, text = await probe(client, target="https://" + HOSTILE)
    assert status == 403 and "not allowed" in text
    status, text = await probe(client, target=f"http://127.0.0.1:{home.port}", name=HOSTILE)
    assert status == 400 and "parameter 'name' does not match" in text
    assert seen.requests == []
    # an upstream's Location is matched against the same patterns (all its spellings: the host alone too)
    status, text = await probe(client, target=f"http://127.0.0.1:{home.port}", name="two words", debug="true")
    assert status == 200 and "targets.allow does not allow" in text and "probe_success 0" in text
    assert [path for _, path, _, _ in seen.requests] == ["/start?name=two+words"]
    assert (await client.get("/-/healthy")).status == 200


def test_parameter_and_allowlist_patterns_match_the_whole_value_as_before() -> None:
    spec, problems = load_text(textwrap.dedent(_BACKTRACKING_MODULE), "spec.yml")
    assert spec is not None, problems
    module = spec.modules["default"]
    assert module.target_allowed("https://a-b.c9.example.com:8443") and module.target_allowed("http://127.0.0.1:80")
    assert not module.target_allowed("https://" + HOSTILE) and not module.target_allowed("http://127.0.0.1:80/x")
    pattern = module.parameters["name"].pattern
    assert pattern is not None and pattern.fullmatch("two words") and not pattern.fullmatch(HOSTILE)


async def test_labels_show_neither_a_targets_userinfo_nor_a_secret_named_parameter(aiohttp_client: Any, aiohttp_server: Any) -> None:
    home, seen = await recording_server(aiohttp_server, "127.0.0.1", {"/": {"v": 1}})
    client = await exporter_for(aiohttp_client, r"""
        modules:
          default:
            targets: {allow: ['http://([^@/]+@)?127\.0\.0\.1:\d+']}
            parameters:
              api_key: {default: DefaultApiKeySecret1}
              region: {default: eu}
            labels: {source: '{target}'}
            endpoints:
              main: {url: '{target}/', params: {api_key: '{api_key}'}}
            metrics:
              - {name: x, help: x, value: v, labels: {t: $target, p: $params.to_string(@)}}
        """)
    status, text = await probe(client, target=f"http://bob:TargetPassw0rd@127.0.0.1:{home.port}", session_token="CallerTokenValue1")
    assert status == 200, text
    shown = f"http://<redacted>@127.0.0.1:{home.port}"
    assert value(parse(text), "x", source=shown, t=shown, p='{"region":"eu"}') == 1
    for secret in ("TargetPassw0rd", "DefaultApiKeySecret1", "CallerTokenValue1"):
        assert secret not in text
    [(_, path, _, _)] = seen.requests
    assert path == "/?api_key=DefaultApiKeySecret1"  # the requests still get them


def test_secret_named_parameters_cannot_be_label_values() -> None:
    _, problems = load_text(textwrap.dedent("""
        modules:
          default:
            parameters:
              api_key: {default: DefaultApiKeySecret1}
            labels: {k: '{api_key}'}
            endpoints:
              main: {url: 'http://127.0.0.1:1/', params: {api_key: '{api_key}'}}
            metrics:
              - {name: x, help: x, value: v, labels: {p: $params.api_key}}
        """), "spec.yml")
    assert [(p.line, p.column, p.message.split(":")[0]) for p in problems] == [
        (6, 17, "label 'k' takes {api_key}, a parameter whose name says it is secret"),
        (10, 50, "'$params.api_key' reads a parameter whose name says it is secret")]
    assert not any("DefaultApiKeySecret1" in p.message for p in problems)


JFROG_KEY, PASS_VALUE = "AKCp8jFrogInlineKey", "PassInlineValue"


async def test_credential_headers_of_any_name_are_hidden_in_traces(aiohttp_client: Any, aiohttp_server: Any) -> None:
    def echo(request: web.Request) -> web.Response:  # an API quoting the request back, as error pages do
        return web.json_response({"v": 1, "seen": dict(request.headers)})

    home, seen = await recording_server(aiohttp_server, "127.0.0.1", {"/echo": echo})
    client = await exporter_for(aiohttp_client, f"""
        modules:
          default:
            endpoints:
              e:
                url: http://127.0.0.1:{home.port}/echo
                headers: {{X-JFrog-Art-Api: {JFROG_KEY}, X-Api-Pass: {PASS_VALUE}, X-GitHub-Api-Version: "2022-11-28", X-Tenant: acme}}
            metrics: [{{name: x, help: x, value: v}}]
        """)
    status, text = await probe(client, debug="true")
    assert status == 200 and "probe_success 1" in text
    [(_, _, headers, _)] = seen.requests
    assert headers["X-JFrog-Art-Api"] == JFROG_KEY and headers["X-Api-Pass"] == PASS_VALUE  # sent as written
    assert JFROG_KEY not in text and PASS_VALUE not in text
    assert "2022-11-28" in text and "acme" in text  # a version selector and a short value are no credentials


def test_credential_headers_of_any_name_to_the_target_need_an_allowlist() -> None:
    def problems(headers: str) -> list[str]:
        text = f"modules:\n  default:\n    endpoints: {{e: {{url: '{{target}}/echo', headers: {headers}}}}}\n    metrics: [{{name: x, help: x, value: a}}]\n"
        return [p.message for p in load_text(text, "spec.yml")[1]]

    [message] = problems(f"{{X-JFrog-Art-Api: {JFROG_KEY}, Accept: application/vnd.github+json}}")
    assert message.startswith("endpoint e sends credentials (header X-JFrog-Art-Api) to the host of the target")
    assert problems('{Accept: application/json, X-GitHub-Api-Version: "2022-11-28", X-Tenant: acme, X-Region: "{module}"}') == []
    assert problems("{Host: internal.example.com, Origin: 'https://grafana.example.com'}") == []  # virtual hosts, CORS


# the target as the URL, its next page in a field or in its Link header
URL_MODULES = r"""
    modules:
      default:
        endpoints: {main: {url: '{target}'}}
        metrics: [{name: x, help: x, value: v}]
      field:
        endpoints: {main: {url: '{target}', pagination: {items: items, next: {field: next}}}}
        metrics: [{name: x, help: x, each: items, value: v}]
      link:
        endpoints: {main: {url: '{target}/link', pagination: {items: '@', next: {link_header: next}}}}
        metrics: [{name: x, help: x, each: '@', value: v}]
    """


async def test_an_invalid_idna_host_from_a_target_a_page_or_a_redirect_fails_only_its_probe_or_endpoint(
    aiohttp_client: Any, upstream: UpstreamFactory,
) -> None:
    bad = "http://xn--zz/"  # a punycode label that decodes to nothing: yarl finds out when the host is first read
    async def link(request: web.Request) -> web.Response:
        return web.json_response([{"v": 1}], headers={"Link": f'<{bad}>; rel="next"'})

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": bad})

    up = await upstream({"/field": {"items": [{"v": 1}], "next": bad}, "/link": link, "/moved": moved})
    client = await exporter_for(aiohttp_client, URL_MODULES)
    status, text = await probe(client, target=bad)
    assert status == 400 and "invalid target" in text and "is not a valid name" in text and "Traceback" not in text, text
    for module, path, outcome in (("field", "/field", "invalid_page"), ("link", "", "invalid_page"), ("default", "/moved", "redirect_refused")):
        status, text = await probe(client, module=module, target=up.url + path, debug="true")
        assert status == 200 and f"-> {outcome}" in text and "not a valid name" in text and "Traceback" not in text, (module, text)
    metrics = parse(await (await client.get("/metrics")).text())
    assert value(metrics, "jsonexporter_probes_total", module="default", result="invalid") == 1
    assert value(metrics, "jsonexporter_probes_total", module="link", result="failure") == 1
    assert "redirect_refused" in await (await client.get("/probes/3")).text()  # recorded with its outcome (the 400 is not a probe)


async def test_an_unusable_url_from_a_target_a_page_a_link_or_a_redirect_says_why_without_its_userinfo(
    aiohttp_client: Any, upstream: UpstreamFactory,
) -> None:
    bad = "http://user:pw-IN-URL@127.0.0.1:99999/"
    folded = "http://user:pw-IN\uff0fURL@127.0.0.1/"  # a fullwidth solidus: `/` under NFKC, which yarl's message quotes with the userinfo
    async def link(request: web.Request) -> web.Response:
        return web.json_response([{"v": 1}], headers={"Link": f'<http://127.0.0.1/ok>; rel="prev", <{bad}>; rel="next"'})

    async def indexerror(request: web.Request) -> web.Response:
        return web.json_response([{"v": 1}], headers={"Link": '<http://user:pw-IN-URL@[:]@/>; rel="next"'})

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": bad})

    up = await upstream({"/field": {"items": [{"v": 1}], "next": bad}, "/folded": {"items": [{"v": 1}], "next": folded},
                         "/link": link, "/moved": moved})
    odd = await upstream({"/link": indexerror})
    client = await exporter_for(aiohttp_client, URL_MODULES)
    port = "its port '99999' is not a number from 0 to 65535"
    status, text = await probe(client, target=bad)
    assert status == 400 and f"invalid target 'http://<redacted>@127.0.0.1:99999/': {port}" in text and "pw-IN" not in text, text
    status, text = await probe(client, target="http://user:pw-IN-URL@[:]@/")  # yarl's parser fails with an IndexError
    assert status == 400 and "invalid target" in text and "pw-IN" not in text, text
    status, text = await probe(client, target=folded)
    assert status == 400 and "invalid target" in text and ": its host or userinfo has a character that NFKC normalization turns into" in text
    assert "pw-IN" not in text
    for module, target, said in (("field", f"{up.url}/field", f"the next URL next is not usable: {port}"),
                                 ("field", f"{up.url}/folded", "the next URL next is not usable: its host or userinfo has a character that NFKC"),
                                 ("link", up.url, f"its Link header holds an unusable URL: {port}"),
                                 ("link", odd.url, "its Link header holds an unusable URL: yarl cannot read it (IndexError)"),
                                 ("default", f"{up.url}/moved", f"its Location header is not a usable URL: {port}")):
        status, text = await probe(client, module=module, target=target, debug="true")
        assert status == 200 and said in text and "pw-IN" not in text and "Traceback" not in text, (module, target, text)


_URL_PIECES = st.text(st.sampled_from("a1.-:[]%\\@\uff0f\uff1a\u2100xn-\x80"), max_size=12)


@given(_URL_PIECES, _URL_PIECES, _URL_PIECES)
def test_the_reason_a_url_is_unusable_never_quotes_its_userinfo(password: str, host: str, port: str) -> None:
    """Whatever yarl finds wrong with a URL from outside (a port, an IDNA host, brackets, NFKC, a
    backslash), the reason quotes the host or the port at most: never the password."""
    secret = f"SECRET{password}"
    try:
        checked_url(f"http://user:{secret}@{host}:{port}/x")
    except UnusableURL as exc:
        assert "SECRET" not in str(exc)


async def test_a_host_with_an_empty_or_too_long_label_is_refused_with_its_reason_not_taken_for_invalid_json(
    aiohttp_client: Any, upstream: UpstreamFactory,
) -> None:
    """yarl takes `a..b` and a label of 64 letters; the resolver cannot encode them, and aiohttp let its
    UnicodeError through, reported as invalid_json: the URL check finds them first, with the reason."""
    long_label = "a" * 64 + ".test"
    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": f"http://{long_label}/"})

    up = await upstream({"/moved": moved})
    client = await exporter_for(aiohttp_client, URL_MODULES)
    status, text = await probe(client, target="http://a..b/")
    assert status == 400 and "invalid target 'http://a..b/': its host 'a..b' is not a valid name (it has no DNS form: label empty or too long)" in text
    status, text = await probe(client, target=f"{up.url}/moved", debug="true")
    assert status == 200 and "-> redirect_refused" in text and f"its Location header is not a usable URL: its host '{long_label}' is not a valid name" in text
