"""What `check`, `/-/reload`, the log and `migrate` quote of a value they refuse: never one that may be a credential.
A problem names its place (file:line:col and the YAML path) and the rule; it quoted the refused value unless its key's
name said secret, so a header line written for the headers' mapping (`headers: "Authorization: Bearer …"`), a
`params: "api_key=…"`, a proxy_connect_header line or a file of `KEY=value` lines given for the spec were printed
whole (the eleventh red-team review). And `migrate` keeps what two problems of one key do not refuse."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import make_spec

from jsonexporter.cli import main
from jsonexporter.migrate import migrate_text, render
from jsonexporter.server import Options, make_app

SECRET = "S3cretTokValueA"

BAD_HEADERS = textwrap.dedent(f"""\
    modules:
      m:
        endpoints:
          e:
            url: "http://127.0.0.1:9/x"
            headers: "Authorization: Bearer {SECRET}"
        metrics:
        - name: x
          help: x
          value: a
    """)


def test_check_does_not_quote_a_header_line_written_for_the_headers_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "s.yml"
    spec.write_text(BAD_HEADERS)
    code = main(["check", str(spec)])
    out, err = capsys.readouterr()
    assert code == 1 and "modules.m.endpoints.e.headers: expected a mapping" in out
    assert SECRET not in out + err


async def test_reload_answer_does_not_quote_it(tmp_path: Path, aiohttp_client: Any) -> None:
    spec = tmp_path / "s.yml"
    spec.write_text(BAD_HEADERS.replace(f'headers: "Authorization: Bearer {SECRET}"', "headers: {Accept: x}"))
    client = await aiohttp_client(make_app(make_spec(spec.read_text(), str(spec)), Options(), spec_file=str(spec)))
    spec.write_text(BAD_HEADERS)
    response = await client.post("/-/reload")
    text = await response.text()
    assert response.status == 500 and "headers: expected a mapping" in text
    assert SECRET not in text


def test_migrate_does_not_quote_a_proxy_connect_header_line() -> None:
    config = textwrap.dedent(f"""\
        modules:
          default:
            http_client_config:
              proxy_connect_header: "Proxy-Authorization: Basic {SECRET}"
            metrics:
            - name: x
              path: '{{.a}}'
        """)
    migration, problems = migrate_text(config, "c.yml")
    assert migration is not None
    assert any("proxy_connect_header: not translated" in str(p) for p in problems)
    assert SECRET not in "\n".join(map(str, problems)) + render(migration, "c.yml")


def test_migrate_keeps_what_two_problems_of_one_key_do_not_refuse() -> None:
    config = textwrap.dedent("""\
        modules:
          default:
            http_client_config:
              proxy_url: "http://proxy.example:3128/"
              follow_redirects: false
              basic_auth: {username: u, password: {nested: x}}
              authorization: {type: Bearer, credentials: 12345}
            metrics:
            - name: x
              path: '{.a}'
        """)
    migration, _ = migrate_text(config, "c.yml")
    assert migration is not None
    client = migration.data()["modules"]["default"].get("http_client_config", {})
    assert client.get("proxy_url") == "http://proxy.example:3128/" and client.get("follow_redirects") is False


def test_check_names_the_kind_of_a_whole_file_that_is_no_mapping_not_its_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An env file or a PEM key given for the spec: its first characters were quoted."""
    spec = tmp_path / "s.yml"
    spec.write_text(f"API_KEY={SECRET} DB_PASSWORD=hunter2\n")
    code = main(["check", str(spec)])
    out, err = capsys.readouterr()
    assert code == 1 and "1:1: <root>: expected a mapping, got a text (not shown: the whole file's)" in out
    assert SECRET not in out + err and "hunter2" not in out + err


def test_an_invalid_header_name_is_located_not_quoted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A header line written as a name, with a value after it: `Authorization: Bearer …: x` is a key `Authorization:
    Bearer …` (YAML reads up to the last ': '), an invalid header name that was quoted, in the message and in its path."""
    spec = tmp_path / "s.yml"
    spec.write_text(BAD_HEADERS.replace(f'headers: "Authorization: Bearer {SECRET}"', f'headers: {{"Authorization: Bearer {SECRET}": x}}'))
    code = main(["check", str(spec)])
    out, err = capsys.readouterr()
    assert code == 1 and ":6:19: modules.m.endpoints.e.headers: invalid header name (not shown:" in out, out
    assert SECRET not in out + err


def test_what_is_no_secret_is_still_quoted_in_a_place_of_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """null, true or false, and a mistyped word of a list of words, keep being quoted there: they help and hide nothing."""
    spec = tmp_path / "s.yml"
    spec.write_text(BAD_HEADERS.replace(f'headers: "Authorization: Bearer {SECRET}"',
                                        "headers: {Accept: null}\n        http_client_config: {tls_config: {min_version: TLS19}}"))
    code = main(["check", str(spec)])
    out, _ = capsys.readouterr()
    assert code == 1 and "headers.Accept: expected a string, got null" in out and '"TLS19" is not one of' in out, out
