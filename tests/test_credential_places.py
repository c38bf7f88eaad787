"""Where a spec sends credentials: one definition (secrets.request_credentials) behind what `check`
refuses to send to a host the probe's caller picks and what redaction hides of the spec."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import pytest

from jsonexporter.secrets import Redactor
from jsonexporter.spec import load_text
from jsonexporter.spec.problems import format_path


@dataclass(frozen=True)
class Sent:
    id: str
    module: str  # the module's YAML, under `modules: {m: …}`
    path: str  # where check reports it
    what: str  # what the message names
    at: str  # the text at the reported line:col
    secret: str  # the spec's credential, hidden once the module has an allowlist


SENT = [
    Sent("literal_query_value", "endpoints: {e: {url: '{target}/x?api_key=LITERALQUERYKEY1'}}",
         "modules.m.endpoints.e.url", "query parameter api_key", "api_key=", "LITERALQUERYKEY1"),
    Sent("query_value_from_a_parameter_default", "parameters: {k: {default: PARAMQUERYKEY1}}\nendpoints: {e: {url: '{target}/x?page=1&token={k}'}}",
         "modules.m.endpoints.e.url", "query parameter token", "token=", "PARAMQUERYKEY1"),
    Sent("literal_userinfo", "endpoints: {e: {url: 'http://admin:LITERALBASICPW1@{target}/x'}}",
         "modules.m.endpoints.e.url", "the URL's userinfo", "admin:", "LITERALBASICPW1"),
    Sent("userinfo_from_a_parameter_default", "parameters: {pw: {default: PARAMBASICPW1}}\nendpoints: {e: {url: 'http://admin:{pw}@{target}/x'}}",
         "modules.m.endpoints.e.url", "the URL's userinfo", "admin:", "PARAMBASICPW1"),
    Sent("json_body_key", "endpoints: {e: {url: '{target}/x', method: POST, body: {username: monitor, password: LITERALBODYPW1}}}",
         "modules.m.endpoints.e.body.password", "body key password", "LITERALBODYPW1", "LITERALBODYPW1"),
    Sent("nested_json_body_key", "endpoints: {e: {url: '{target}/x', method: POST, body: {auth: [{user: u, secret: NESTEDBODYPW1}]}}}",
         "modules.m.endpoints.e.body.auth[0].secret", "body key secret", "NESTEDBODYPW1", "NESTEDBODYPW1"),
    Sent("form_body_key", "endpoints: {e: {url: '{target}/x', method: POST, headers: {Content-Type: application/x-www-form-urlencoded}, "
                          "body: 'user=u&password=LITERALFORMPW1'}}",
         "modules.m.endpoints.e.body", "body key password", "password=", "LITERALFORMPW1"),
    Sent("json_string_body_key_from_a_parameter_default", "parameters: {pw: {default: PARAMFORMPW1}}\n"
         "endpoints: {e: {url: '{target}/x', method: POST, headers: {Content-Type: application/json}, body: '{{\"user\": \"u\", \"password\": \"{pw}\"}}'}}",
         "modules.m.endpoints.e.body", "body key password", "password", "PARAMFORMPW1"),
    Sent("login_body_key", "login: {url: '{target}/x', method: POST, body: {username: monitor, password: LOGINLITERALPW1}, values: {t: token}}\n"
                           "endpoints: {e: {url: 'http://127.0.0.1:9/x', headers: {X-T: '{t}'}}}",
         "modules.m.login.body.password", "body key password", "LOGINLITERALPW1", "LOGINLITERALPW1"),
    Sent("parameter_default_in_an_unnamed_header", "parameters: {art: {default: AKCpARTIFACTORYKEY1}}\n"
                                                   "endpoints: {e: {url: '{target}/api', headers: {X-JFrog-Art-Api: '{art}'}}}",
         "modules.m.endpoints.e.headers['X-JFrog-Art-Api']", "header X-JFrog-Art-Api", "'{art}'", "AKCpARTIFACTORYKEY1"),
    Sent("parameter_default_in_authorization", "parameters: {k: {default: PARAMBEARER1}}\n"
                                               "endpoints: {e: {url: '{target}/api', headers: {Authorization: 'Bearer {k}'}}}",
         "modules.m.endpoints.e.headers.Authorization", "header Authorization", "'Bearer", "PARAMBEARER1"),
    Sent("secret_named_parameter_default_in_the_path", "parameters: {api_token: {default: PARAMPATHTOKEN1}}\n"
                                                       "endpoints: {e: {url: '{target}/x/{api_token}'}}",
         "modules.m.endpoints.e.url", "{api_token}", "'{target}", "PARAMPATHTOKEN1"),
]


def _spec(module: str, allow: bool = False) -> str:
    lines = [*(["targets: {allow: ['http://127\\.0\\.0\\.1:\\d+']}"] if allow else []), *module.splitlines(), "metrics: [{name: x, help: x, value: v}]"]
    return "modules:\n  m:\n" + textwrap.indent("\n".join(lines), "    ") + "\n"


@pytest.mark.parametrize("case", SENT, ids=[c.id for c in SENT])
def test_check_refuses_every_place_that_sends_the_specs_credentials_to_the_callers_host(case: Sent) -> None:
    text = _spec(case.module)
    spec, problems = load_text(text, "spec.yml")
    assert spec is None
    [problem] = problems
    assert problem.severity == "error" and format_path(problem.path) == case.path, problem
    assert f"sends credentials ({case.what}) to " in problem.message and "declare `targets: {allow: [...]}` in the module" in problem.message
    assert text.splitlines()[problem.line - 1][problem.column - 1:].startswith(case.at), (problem, text)
    assert case.secret not in str(problem)


@pytest.mark.parametrize("case", SENT, ids=[c.id for c in SENT])
def test_what_check_refuses_to_send_to_the_callers_host_redaction_hides(case: Sent) -> None:
    spec, problems = load_text(_spec(case.module, allow=True), "spec.yml")
    assert spec is not None, problems
    other = case.secret[::-1]  # not a secret: the Redactor hides the spec's secrets, not whatever looks like one
    shown = Redactor(spec.secrets)(f"the upstream echoed {case.secret} and {other}")
    assert case.secret not in shown and other in shown


@pytest.mark.parametrize("module", [
    "endpoints: {e: {url: '{target}/x?page=2&per_page=100'}}",
    "parameters: {tenant: {default: acme}}\nendpoints: {e: {url: '{target}/x/{tenant}', headers: {X-Tenant: '{tenant}'}}}",
    "endpoints: {e: {url: '{target}/x', method: POST, body: {username: monitor, query: 'up == 1'}}}",
    "endpoints: {e: {url: '{target}/x', method: POST, headers: {Content-Type: application/x-www-form-urlencoded}, body: 'user=u&page=2'}}",
    "parameters: {k: {}}\nendpoints: {e: {url: '{target}/x/{k}', headers: {Accept: application/json, X-Region: '{k}'}}}",
    "endpoints: {e: {url: '{target}/x#access_token=FRAGMENT1'}}",  # a fragment is never sent (its pairs are only redacted)
], ids=["query", "parameter_default_in_path_and_short_header", "json_body", "form_body", "caller_value_in_an_unnamed_header", "fragment"])
def test_check_leaves_modules_that_send_no_credential_to_the_callers_host_alone(module: str) -> None:
    spec, problems = load_text(_spec(module), "spec.yml")
    assert problems == [] and spec is not None


def test_an_endpoint_named_login_is_named_as_an_endpoint_and_the_login_as_the_login() -> None:
    _, problems = load_text(_spec("login: {url: '{target}/session', method: POST, body: {password: LOGINPW12345}, values: {t: token}}\n"
                                  "endpoints: {login: {url: '{target}/x', headers: {X-T: '{t}'}}}"), "spec.yml")
    assert [p.message.partition(" to ")[0] for p in problems] == ["the login sends credentials (body key password)",
                                                                   "endpoint login sends credentials ({t})"]


@pytest.mark.parametrize("module", [
    "http_client_config: {bearer_token: HOSTHDRBEARER1}\nendpoints: {e: {url: 'http://ingress.internal/x', headers: {Host: '{target}'}}}",
    "parameters: {tenant: {}}\nendpoints: {e: {url: 'http://ingress.internal/x', headers: {host: '{tenant}.apps.internal', X-Api-Key: HOSTHDRKEY12}}}",
    "login: {url: 'http://ingress.internal/session', headers: {Host: '{target}'}, method: POST, body: {password: HOSTHDRLOGIN1}, values: {t: token}}\n"
    "endpoints: {e: {url: 'http://ingress.internal/x', headers: {X-T: '{t}'}}}",
], ids=["target_with_client_credentials", "parameter_with_a_credential_header", "login"])
def test_check_counts_a_host_header_the_caller_picks_as_a_host_the_caller_picks(module: str) -> None:
    """Behind an ingress or a reverse proxy at the URL's fixed address, the Host header picks the backend
    that gets the request and its credentials: a placeholder there is one in the URL's host."""
    spec, problems = load_text(_spec(module), "spec.yml")
    assert spec is None and problems
    for problem in problems:
        assert problem.severity == "error" and "sends credentials" in problem.message and " host header" in problem.message.lower(), problem
        assert "declare `targets: {allow: [...]}` in the module" in problem.message
    spec, problems = load_text(_spec(module, allow=True), "spec.yml")
    assert spec is not None and problems == [], problems


def test_check_refuses_a_parameter_sent_as_a_credential_in_a_module_label_or_read_by_params() -> None:
    """A caller's credential (`tok`, sent as `Authorization: 'Bearer {tok}'`) would be a label value of every series:
    a module label taking it and `$params.tok` are errors located where they are written, as for a secret-named one."""
    text = textwrap.dedent("""\
        modules:
          m:
            parameters: {tok: {}, region: {default: eu}}
            labels: {who: '{tok}', r: '{region}'}
            endpoints: {e: {url: 'http://api.example/x', headers: {Authorization: 'Bearer {tok}', X-Region: '{region}'}}}
            metrics: [{name: m, help: h, value: v, labels: {p: '$params.tok', q: '$params.region'}}]
        """)
    spec, problems = load_text(text, "spec.yml")
    assert spec is None
    found = {(format_path(p.path), p.line) for p in problems if p.severity == "error"}
    assert found == {("modules.m.labels.who", 4), ("modules.m.metrics[0].labels.p", 6)}, problems
    assert all("a parameter the module sends as a credential" in p.message for p in problems if p.severity == "error")
