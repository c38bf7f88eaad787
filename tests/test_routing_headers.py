"""The headers a reverse proxy or an ingress routes by (Host, X-Forwarded-Host, X-Original-Host, Forwarded's
host=): one that the caller's target or parameter fills in picks the host that gets the module's
credentials, so `check` holds them to targets.allow and each probe checks the host they name."""

from __future__ import annotations

from typing import Any

import pytest
from metrics_util import parse, value
from test_credential_places import _spec
from test_redirects import SECRETS, exporter_for, probe, recording_server

from jsonexporter.spec import load_text

ROUTED = [
    ("X-Forwarded-Host", "'{target}'"),
    ("x-original-host", "'{target}'"),
    ("Forwarded", "'host={target}'"),
    ("Forwarded", "'for=192.0.2.1;proto=https;host=\"{target}\"'"),
    ("Forwarded", "'for={target}'"),  # the caller's value can add `;host=...`
]


@pytest.mark.parametrize(("header", "template"), ROUTED, ids=["x_forwarded_host", "x_original_host", "forwarded_host", "forwarded_quoted_host",
                                                             "forwarded_for"])
def test_check_counts_a_forwarded_host_the_caller_picks_as_a_host_the_caller_picks(header: str, template: str) -> None:
    module = f"http_client_config: {{bearer_token: ROUTEDBEARER1}}\nendpoints: {{e: {{url: 'http://ingress.internal/x', headers: {{{header}: {template}}}}}}}"
    spec, problems = load_text(_spec(module), "spec.yml")
    assert spec is None
    [problem] = problems
    assert problem.severity == "error" and "sends credentials (http_client_config)" in problem.message, problem
    assert f"through its {header} header: a reverse proxy or an ingress routes by it" in problem.message
    spec, problems = load_text(_spec(module, allow=True), "spec.yml")
    assert spec is not None and problems == [], problems


def test_check_leaves_a_forwarded_proto_from_the_caller_alone() -> None:
    """X-Forwarded-Proto names the scheme the client used, no host: no proxy routes by it."""
    module = ("http_client_config: {bearer_token: ROUTEDBEARER1}\nparameters: {p: {}}\n"
              "endpoints: {e: {url: 'http://ingress.internal/x', headers: {X-Forwarded-Proto: '{p}'}}}")
    spec, problems = load_text(_spec(module), "spec.yml")
    assert spec is not None and problems == [], problems


@pytest.mark.parametrize(("header", "template"), [
    ("Host", "'{vhost}'"),
    ("X-Forwarded-Host", "'{vhost}'"),
    ("X-Original-Host", "'{vhost}'"),
    ("Forwarded", "'for=192.0.2.1;host={vhost};proto=http'"),
    ("Forwarded", "'for={vhost}'"),
], ids=["host", "x_forwarded_host", "x_original_host", "forwarded_host", "forwarded_for"])
async def test_a_forwarded_host_from_the_caller_must_be_allowed_before_any_request(aiohttp_client: Any, aiohttp_server: Any, header: str,
                                                                                 template: str) -> None:
    """127.0.0.1 plays an ingress that routes by the header; 127.0.0.2 the host the caller would send the token to."""
    ingress, seen = await recording_server(aiohttp_server, "127.0.0.1", {"/stats": {"v": 6}})
    foreign, stolen = await recording_server(aiohttp_server, "127.0.0.2", {"/{tail:.*}": {"v": 666}})
    client = await exporter_for(aiohttp_client, rf"""
        modules:
          tokened:
            targets: {{allow: ['api\.apps\.internal']}}
            parameters: {{vhost: {{}}}}
            http_client_config: {{bearer_token: {SECRETS[1]}}}
            endpoints: {{main: {{url: 'http://127.0.0.1:{ingress.port}/stats', headers: {{{header}: {template}}}}}}}
            metrics: [{{name: x, help: x, endpoint: main, value: v}}]
        """)
    if header != "Forwarded" or "host=" in template:
        status, text = await probe(client, module="tokened", vhost="api.apps.internal")
        assert status == 200 and value(parse(text), "x") == 6, text
        [(_, _, headers, _)] = seen.requests
        assert headers["Authorization"] == f"Bearer {SECRETS[1]}" and "api.apps.internal" in headers[header]
    foreign_host = f"127.0.0.2:{foreign.port}"
    # in Forwarded, also a host hidden in a quoted value, which a proxy reading `host=` by pattern would find
    quoted = [f'"x;host={foreign_host}"', f'"x,host={foreign_host}"', f'"x" ;host="{foreign_host}"']
    tries = [foreign_host, f'x;host="{foreign_host}"', "x, host=127.0.0.2", *quoted] if header == "Forwarded" else [foreign_host]
    for vhost in tries:
        status, text = await probe(client, module="tokened", vhost=vhost)
        assert status in (400, 403) and f"its {header} header" in text, (vhost, text)
        if status == 403:
            assert "taken from the target or a parameter, is not allowed by targets.allow" in text
    for vhost in ("api.apps.internal/", "x@api.apps.internal", "api.apps.internal?", "api.apps.internal x", "", "api.apps.internal, 127.0.0.2",
                  "api.apps.internal;x"):
        status, text = await probe(client, module="tokened", vhost=vhost)
        assert status == 400 and f"its {header} header" in text and "host[:port]" in text, (vhost, text)
    assert len(seen.requests) <= 1 and stolen.requests == []
