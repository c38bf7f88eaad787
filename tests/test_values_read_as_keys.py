"""A value that YAML reads as a key is never quoted: a credential pasted in braces (`secrets: {a: {S3cret}}`
is the key `S3cret` with no value to YAML), or a key of a place where credentials are written, is located
by its line:col in every problem of the spec, the web config and `migrate`, never shown (schema.key_named,
yamlload.Marks.bare_keys)."""

from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jsonexporter.migrate import migrate_text
from jsonexporter.spec import load_text
from jsonexporter.spec.problems import Problem, SpecError, format_path
from jsonexporter.webconfig import load_web_config

# what a pasted credential may hold and YAML still reads as one plain key in a flow mapping; framed so that
# it can be found in the output and nowhere by chance
SECRETS = st.builds(lambda middle: f"Q{middle}9", st.text(st.sampled_from("abcXYZ0123456789-_.~+/=@!$%^&*()<>;|\\"), min_size=6, max_size=24))

_URL = "url: 'http://127.0.0.1:9/'"
# a module's places where credentials are written, each with `<S>` where the credential is pasted: as a
# key without a value (`{S}`, and after a comma that split a token), or as a key of such a place
SPEC_PLACES = [
    "secrets: {a: {<S>}}",
    "secrets: {<S>}",
    "secrets: {a: {file: /run/token, <S>}}",
    f"endpoints: {{e: {{{_URL}, headers: {{<S>}}}}}}",
    f"endpoints: {{e: {{{_URL}, headers: {{Authorization: Bearer abc, <S>}}}}}}",
    f"endpoints: {{e: {{{_URL}, params: {{<S>}}}}}}",
    f"endpoints: {{e: {{{_URL}, http_client_config: {{basic_auth: {{<S>}}}}}}}}",
    "http_client_config: {basic_auth: {<S>}}",
    "http_client_config: {basic_auth: {username: u, password: x, <S>: y}}",
    "http_client_config: {oauth2: {<S>}}",
    f"http_client_config: {{oauth2: {{client_id: c, client_secret: s, token_{_URL}, endpoint_params: {{<S>}}}}}}",
    "http_client_config: {authorization: {<S>}}",
    "http_client_config: {authorization: {type: Bearer, <S>: y}}",
    "http_client_config: {<S>}",
    "http_client_config: {proxy_connect_header: {<S>}}",
    "http_client_config: {tls_config: {<S>}}",
    f"endpoints: {{e: {{{_URL}, method: POST, body: {{<S>}}}}}}",
    f"endpoints: {{e: {{{_URL}, method: POST, body: {{user: u, <S>}}}}}}",
    f"endpoints: {{e: {{{_URL}, method: POST, body: {{auth: {{kind: basic, <S>}}}}}}}}",
    f"endpoints: {{e: {{{_URL}, method: POST, body: {{keys: [1, {{<S>}}]}}}}}}",
    f"login: {{{_URL}, method: POST, body: {{username: u, <S>}}, values: {{t: {{header: X}}}}}}",
    f"login: {{{_URL}, headers: {{<S>}}, values: {{t: {{header: X}}}}}}",
    f"login: {{{_URL}, values: {{<S>}}}}",
    f"login: {{{_URL}, method: POST, body: {{username: u}}, values: {{t: {{header: X}}}}, <S>: y}}",
    "login: {<S>}",
    "parameters: {<S>}",
    "labels: {<S>}",
]
WEB_PLACES = [
    "basic_auth_users: {<S>}",
    "basic_auth_users: {alice: {<S>}}",
    "tls_server_config: {cert_file: a.pem, key_file: a.key, <S>}",
    "tls_server_config: {cert_file: a.pem, key_file: a.key, <S>: x}",
]
MIGRATE_PLACES = [
    "modules: {default: {http_client_config: {basic_auth: {username: u, <S>}}, metrics: [{name: x, path: '{.a}'}]}}",
    "modules: {default: {http_client_config: {<S>: x}, metrics: [{name: x, path: '{.a}'}]}}",
    "modules: {default: {body: {content: x, <S>}, metrics: [{name: x, path: '{.a}'}]}}",
    "modules: {default: {body: {content: x, <S>: y}, metrics: [{name: x, path: '{.a}'}]}}",
    "modules: {default: {metrics: [{name: x, path: '{.a}', <S>}]}}",
    "modules: {default: {metrics: [{name: x, path: '{.a}', valueconverter: {<S>}}]}}",
    "modules: {default: {<S>, metrics: [{name: x, path: '{.a}'}]}}",
]


def _pasted(place: str, secret: str) -> str:
    return place.replace("<S>", secret)


def _spec(place: str, secret: str) -> str:
    module = textwrap.indent(f"targets: {{allow: ['http://127.0.0.1:9']}}\n{_pasted(place, secret)}\nmetrics: [{{name: x, help: x, value: v}}]", "    ")
    return f"modules:\n  m:\n{module}\n"


def _located_unshown(problems: list[Problem], text: str, secret: str) -> None:
    """No problem shows the secret, and one is at its line:col (or at the brace before it: a mapping
    where a string should be)."""
    shown = "\n".join(map(str, problems))
    assert secret not in shown, shown
    assert all(secret not in format_path(p.path) for p in problems)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if secret in t)
    col = text.splitlines()[line - 1].index(secret) + 1
    assert any(p.line == line and p.column in (col - 1, col) for p in problems), (text, shown)


@pytest.mark.filterwarnings("ignore:deprecated string literal syntax:PendingDeprecationWarning")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SPEC_PLACES), SECRETS)
def test_a_credential_read_as_a_key_at_a_specs_credential_place_is_located_and_never_shown(place: str, secret: str) -> None:
    text = _spec(place, secret)
    spec, problems = load_text(text, "spec.yml")
    assert spec is None, text
    _located_unshown(problems, text, secret)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(WEB_PLACES), SECRETS)
def test_a_credential_read_as_a_key_in_a_web_config_is_located_and_never_shown(place: str, secret: str) -> None:
    text = _pasted(place, secret) + "\n"
    with tempfile.TemporaryDirectory() as scratch:
        file = Path(scratch, "web.yml")
        file.write_text(text)
        with pytest.raises(SpecError) as raised:
            load_web_config(str(file))
    assert secret not in str(raised.value)
    _located_unshown(raised.value.problems, text, secret)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MIGRATE_PLACES), SECRETS)
def test_a_credential_read_as_a_key_in_a_json_exporter_config_is_located_and_never_shown_by_migrate(place: str, secret: str) -> None:
    text = _pasted(place, secret) + "\n"
    migration, problems = migrate_text(text, "je.yml")
    assert migration is not None
    assert all(secret not in change for change in migration.changes)
    _located_unshown(problems, text, secret)


def test_a_key_written_with_its_value_is_quoted_and_one_written_without_is_hidden_in_every_message() -> None:
    _, problems = load_text("modules:\n  m:\n    timeuot: 5s\n    labels: {instance}\n    metrics: [{name: x, help: x, value: v}]\n", "spec.yml")
    assert [str(p) for p in problems] == [
        "spec.yml:3:5: modules.m.timeuot: unknown key 'timeuot' (did you mean 'timeout'?)",
        "spec.yml:4:14: modules.m.labels: expected a string, got null",  # at `instance`, written without a value
        "spec.yml:4:14: modules.m.labels: warning: label '<redacted>' is set by Prometheus on every scraped series: it renames this one "
        "exported_<redacted>, unless the scrape config sets honor_labels: true",
    ]


def test_a_key_of_the_schema_written_without_a_value_is_still_named() -> None:
    _, problems = load_text("modules:\n  m:\n    secrets: {a: {file}}\n    metrics: [{name: x, help: x, value: v}]\n", "spec.yml")
    assert [str(p) for p in problems] == ["spec.yml:3:19: modules.m.secrets.a.file: expected a string, got null"]


def test_a_key_written_without_a_value_in_a_body_is_refused_there_and_a_null_written_so_is_sent() -> None:
    """A JSON body takes any value: a key written without `:` loaded, and was sent, a value the Redactor never learned."""
    spec = "modules:\n  m:\n    endpoints: {e: {url: 'http://127.0.0.1:9/', method: POST, body: {user: u, %s}}}\n    metrics: [{name: x, help: x, value: v}]\n"
    _, problems = load_text(spec % "Qs3cret-Value9", "spec.yml")
    assert [str(p) for p in problems] == [
        "spec.yml:3:79: modules.m.endpoints.e.body: a key has no value (not shown: a key written without a value may be a value in braces "
        "(`{S3cret}` is a key to YAML)): where credentials are written, it is refused rather than sent as a key; write `KEY: null` for a null"]
    loaded, problems = load_text(spec % "flag: null", "spec.yml")
    assert loaded is not None and problems == []


def test_a_header_written_without_a_value_is_said_to_have_none_never_named() -> None:
    """`headers: {Accept application/json}` (a `:` forgotten): one problem, the value missing; the key's text was
    quoted as '<redacted>' in "invalid header name" too (test_check's broken YAML found it)."""
    _, problems = load_text("modules:\n  m:\n    endpoints: {e: {url: 'http://127.0.0.1:9/', headers: {Accept application/json}}}\n"
                            "    metrics: [{name: x, help: x, value: v}]\n", "spec.yml")
    assert [str(p) for p in problems] == ["spec.yml:3:59: modules.m.endpoints.e.headers: expected a string, got null"]

