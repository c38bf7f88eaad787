"""`jsonexporter migrate`: json_exporter's JSONPath and configuration keys give the same series here."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jmespath
import pytest
import yaml
from aiohttp import web
from conftest import ExporterFactory, UpstreamFactory
from hypothesis import given, settings
from hypothesis import strategies as st
from metrics_util import Series, parse, value
from prometheus_util import jsonexporter

from jsonexporter.exposition import render_text
from jsonexporter.jsonpath import Untranslatable, translate
from jsonexporter.migrate import migrate_text, render
from jsonexporter.probe import run_offline
from jsonexporter.spec import load_text
from jsonexporter.spec.expressions import compile_expression

DOC = {
    "counter": 1234,
    "location": "mars",
    "a": {"b": 1, "temp-bed": 60, "list": [10, 20, 30]},
    "em:0": {"power": 5},
    "values": [
        {"id": "id-A", "count": 1, "state": "ACTIVE", "n": 1},
        {"id": "id-B", "count": 2, "state": "INACTIVE", "n": 2, "tags": [{"k": "x"}, {"k": "y"}]},
        {"id": "id-C", "count": 3, "state": "ACTIVE", "n": 3, "tags": [{"k": "z"}]},
    ],
}


@pytest.mark.parametrize(("jsonpath", "place", "expected"), [
    ("{.a.b}", "value", 1),
    ("{.}", "value", DOC),
    ("{ $.a.b }", "value", 1),
    ("{@.a.b}", "value", 1),
    ("{.a.temp-bed}", "value", 60),
    ("{.em:0.power}", "value", 5),
    ("{['em:0'].power}", "value", 5),
    ("{.a.list[0]}", "value", 10),
    ("{.a.list[-1]}", "value", 30),
    ("{$}", "value", DOC),
    ("{@}", "value", DOC),
    ("1", "value", 1),
    ("true", "value", 1),
    ('{.values[?(@.state == "INACTIVE")].count}', "value", 2),
    ("beta", "label", "beta"),
    ("it's", "label", "it's"),
    ("planet-{.location}", "label", "planet-mars"),
    ("planet-{.nowhere}", "label", ""),  # json_exporter: "" when an expression of the template fails
    ('{.location}{"/"}{.a.b}', "label", "mars/1"),
    ("{.values[*]}", "each", DOC["values"]),
    ('{.values[?(@.state == "ACTIVE")]}', "each", [DOC["values"][0], DOC["values"][2]]),
    ("{.values[?(@.n > 1)]}", "each", DOC["values"][1:]),
    ("{.values[?(@.tags)]}", "each", DOC["values"][1:]),
    ("{.values[*].tags[*].k}", "each", ["x", "y", "z"]),  # flat, as JSONPath lists them
    ("{.values[0:2]}", "each", DOC["values"][0:2]),
    ("{.a}", "each", [DOC["a"]]),  # one result: one element
    ("{.nowhere}", "each", []),
])
def test_jsonpath_translation_selects_what_json_exporter_selects(jsonpath: str, place: Any, expected: Any) -> None:
    translation = translate(jsonpath, place)
    assert translation.expression is not None
    assert jmespath.search(translation.expression, DOC) == expected


def test_jsonpath_of_the_whole_document_or_an_object_s_values_iterates_without_an_expression_of_its_own() -> None:
    assert translate("{ $ }", "each").expression is None  # no `each`: the document is the element
    assert translate("{.a.*}", "each").expression == "a"  # `each` iterates an object's values itself
    assert translate("{[*]}", "each").expression == "[*]"


@pytest.mark.parametrize(("jsonpath", "place", "reason", "offset"), [
    ("{..x}", "value", "recursive descent", 1),
    ("{range .items[*]}{.x}{end}", "label", "`{range}`", 1),
    ("{.a[0,1]}", "value", "unions", 3),
    ("{.a[?(@.k == $.x)]}", "each", "document root", 13),
    ("x{.a}", "value", "text around", 1),
    ("hello", "value", "not a number", 0),
    ("n-{.a}", "each", "one {…} expression", 0),
    ("{.a", "value", "without its }", 0),
])
def test_untranslatable_jsonpath_says_why_and_where(jsonpath: str, place: Any, reason: str, offset: int) -> None:
    with pytest.raises(Untranslatable) as caught:
        translate(jsonpath, place)
    assert reason in caught.value.message
    assert caught.value.offset == offset


_PIECES = st.sampled_from(["{", "}", ".", "..", "$", "@", "[", "]", "*", "?(", ")", "==", "<", " ", "'", '"', "a", "b-c", "0", "-1", ":",
                            ",", "range", "end", "x"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=14).map("".join), st.sampled_from(["value", "label", "each"]))
def test_any_jsonpath_translates_to_an_expression_the_spec_compiles_or_says_why_not(jsonpath: str, place: Any) -> None:
    try:
        translation = translate(jsonpath, place)
    except Untranslatable as exc:
        assert exc.message and 0 <= exc.offset <= len(jsonpath)
        return
    if translation.expression is not None:
        compile_expression(translation.expression)


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.sampled_from(["", "x", "{.a}", "{.a[*]}", "p-{.b}", "{..a}", "1", "yes", "{"]))
_METRIC = st.fixed_dictionaries({"name": st.sampled_from(["m", "n", "m_total", "m_count", "bad-name", "probe_x", "x_info"]),
                                  "path": st.sampled_from(["{.a}", "{.a[*]}", "{$}", "{.b.*}", "1"])}, optional={
    "help": _SCALARS, "type": st.one_of(_SCALARS, st.sampled_from(["value", "object", "gauge"])),
    "valuetype": st.one_of(_SCALARS, st.sampled_from(["gauge", "counter", "untyped"])),
    "labels": st.one_of(_SCALARS, st.dictionaries(st.sampled_from(["id", "le", "__x", "job", "bad-label"]), _SCALARS, max_size=3)),
    "values": st.one_of(_SCALARS, st.dictionaries(st.sampled_from(["a", "count", "total", "b"]), _SCALARS, max_size=3)),
    "epochtimestamp": _SCALARS, "epochTimestamp": _SCALARS, "allow_missing_key": _SCALARS,
    "valueconverter": st.one_of(_SCALARS, st.dictionaries(_SCALARS.map(str), st.one_of(_SCALARS, st.dictionaries(st.sampled_from(["A", "b"]), _SCALARS)),
                                                          max_size=2)),
})
_MODULE = st.fixed_dictionaries({"metrics": st.lists(_METRIC, min_size=1, max_size=4)}, optional={
    "headers": st.one_of(_SCALARS, st.dictionaries(st.sampled_from(["Authorization", "X-A", "bad name"]), _SCALARS, max_size=2)),
    "body": st.one_of(_SCALARS, st.fixed_dictionaries({}, optional={"content": st.sampled_from(["", "{}", '{"a": "{{ .a | first }}"}', "{{ now }}", "x"]),
                                                                    "templatize": _SCALARS})),
    "valid_status_codes": st.one_of(_SCALARS, st.lists(st.one_of(st.integers(0, 700), _SCALARS), max_size=2)),
    "http_client_config": st.one_of(_SCALARS, st.fixed_dictionaries({}, optional={
        "basic_auth": st.one_of(_SCALARS, st.fixed_dictionaries({}, optional={"username": _SCALARS, "password": _SCALARS})),
        "tls_config": st.one_of(_SCALARS, st.fixed_dictionaries({}, optional={"insecure_skip_verify": _SCALARS, "ca_ref": _SCALARS})),
        "follow_redirects": _SCALARS, "http_headers": st.one_of(_SCALARS, st.dictionaries(st.sampled_from(["X-B"]), _SCALARS))})),
})


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["default", "b", "bad-name"]), _MODULE, min_size=1, max_size=3))
def test_any_configuration_migrates_without_a_traceback_to_a_spec_check_accepts(modules: dict[str, Any]) -> None:
    text = yaml.safe_dump({"modules": modules})
    migration, problems = migrate_text(text, "je.yml")
    if migration is None:
        assert problems
        return
    spec, errors = load_text(render(migration, "je.yml"), "spec.yml")
    assert (spec is not None) == bool(migration.modules), errors


# every key json_exporter reads (modules, requests, http_client_config, metrics of both types), with values of the right type
_RICH: dict[str, Any] = {"modules": {
    "default": {
        "headers": {"X-A": "a"},
        "body": {"content": '{"q": "{{ .q | first }}"}', "templatize": True},
        "valid_status_codes": [200, 203],
        "http_client_config": {
            "basic_auth": {"username": "monitor", "password": "pw"},
            "tls_config": {"insecure_skip_verify": False, "server_name": "api.example"},
            "proxy_url": "http://127.0.0.1:3128",
            "follow_redirects": False,
            "http_headers": {"X-Token": {"values": ["t"]}, "X-Secret": {"secrets": ["s"]}, "X-File": {"files": ["/etc/x"]}},
        },
        "metrics": [
            {"name": "up", "path": "{.up}", "help": "Up.", "valuetype": "gauge", "labels": {"env": "{.env}", "fixed": "prod"},
             "epochtimestamp": "{.ts}", "allow_missing_key": True},
            {"name": "items", "type": "object", "path": "{.items[*]}", "valuetype": "counter", "labels": {"id": "{.id}"},
             "values": {"count": "{.count}", "state": "{.state}"}, "valueconverter": {"{.state}": {"ACTIVE": 1, "inactive": 0}}},
        ],
    },
    "other": {
        "http_client_config": {"bearer_token": "tok", "oauth2": {"client_id": "c", "client_secret": "s", "token_url": "http://127.0.0.1/t",
                                                                 "scopes": ["a"]}},
        "metrics": [{"name": "n", "path": "{.n}", "engine": "jsonpath", "epochTimestamp": "{.ts}"}],
    },
}}
_OTHER_TYPES: list[Any] = [5, [1, "x"], {"k": 1}, None, "str", 10**400]  # the last beyond a float


def _places(node: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every value in `node`, itself included."""
    yield at
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _places(child, (*at, key))


def _replaced(node: Any, at: tuple[Any, ...], value: Any) -> Any:
    if not at:
        return value
    copied = dict(node) if isinstance(node, dict) else list(node)
    copied[at[0]] = _replaced(node[at[0]], at[1:], value)
    return copied


@pytest.mark.parametrize("wrong", _OTHER_TYPES, ids=["int", "list", "mapping", "null", "string", "huge_int"])
def test_any_value_of_a_configuration_replaced_by_another_type_is_a_located_problem_or_a_translation(wrong: Any) -> None:
    """Every place of a configuration with every key json_exporter reads (72, the root included) gets a value
    of another type, one place at a time: all of them, so every run tries the same (~2.5 s of CPU each type)."""
    for at in _places(_RICH):
        text = yaml.safe_dump(_replaced(_RICH, at, wrong), sort_keys=False)
        migration, problems = migrate_text(text, "je.yml")  # no exception
        assert all(p.file == "je.yml" and p.line >= 1 and p.column >= 1 for p in problems), at
        if migration is None:
            assert problems, at
            continue
        spec, errors = load_text(render(migration, "je.yml"), "spec.yml")
        assert (spec is not None) == bool(migration.modules), (at, errors)


def _migrated(config: str) -> tuple[str, list[str]]:
    """The spec text and the problems (as printed) of a json_exporter configuration."""
    migration, problems = migrate_text(textwrap.dedent(config), "je.yml")
    assert migration is not None, problems
    return render(migration, "je.yml"), [str(p) for p in problems]


def _probe(spec_text: str, document: Any, module: str = "default", query: dict[str, str] | None = None) -> Series:
    spec, problems = load_text(spec_text, "spec.yml")
    assert spec is not None, problems
    result = run_offline(spec.modules[module], {"default": document}, "offline", query or {})
    return parse(render_text(result.families))


def test_value_and_object_metrics_give_json_exporter_s_series() -> None:
    spec, problems = _migrated("""
        modules:
          default:
            metrics:
            - name: example_global_value
              path: '{ .counter }'
              valuetype: gauge
              labels: {environment: beta, location: 'planet-{.location}'}
            - name: example_value
              type: object
              path: '{.values[?(@.state == "ACTIVE")]}'
              valuetype: counter
              labels: {id: '{.id}'}
              values: {active: 1, count: '{.count}'}
    """)
    assert problems == []
    s = _probe(spec, DOC)
    assert value(s, "example_global_value", environment="beta", location="planet-mars") == 1234
    assert value(s, "example_value_count_total", id="id-C") == 3  # counter samples gain _total
    assert value(s, "example_value_active_total", id="id-A") == 1
    assert ("example_value_count_total", frozenset({("id", "id-B")})) not in s


def test_the_spec_opens_with_each_change_in_meaning() -> None:
    spec, _ = _migrated("""
        modules:
          default:
            metrics:
            - {name: jobs, path: '{.jobs}', valuetype: counter}
            - {name: first, path: '{.items[?(@.up == "yes")].n}'}
    """)
    header = spec[: spec.index("modules:")]
    assert all(line.startswith("#") for line in header.splitlines())
    assert "counter samples are named NAME_total" in header and "je.yml:4:" in header
    assert "a duplicate series (same name and labels) no longer fails the whole probe" in header
    assert "the translation takes the first match" in header
    assert "redirects are followed" in header  # json_exporter follows none without an http_client_config


def test_valueconverter_maps_strings_in_any_case_for_its_own_value_only() -> None:
    spec, problems = _migrated("""
        modules:
          default:
            metrics:
            - name: svc
              type: object
              path: '{.services[*]}'
              labels: {service: '{.name}'}
              values: {state: '{.state}', health: '{.health}'}
              valueconverter:
                '{.state}': {active: 1, DOWN: 0}
    """)
    assert problems == []
    s = _probe(spec, {"services": [{"name": "a", "state": "ACTIVE", "health": "active"}, {"name": "b", "state": "down", "health": 0.5}]})
    assert value(s, "svc_state", service="a") == 1
    assert value(s, "svc_state", service="b") == 0
    assert value(s, "svc_health", service="b") == 0.5
    assert ("svc_health", frozenset({("service", "a")})) not in s  # "active" is no number for a value without the converter
    assert value(s, "probe_extraction_errors", metric="svc_health") == 1


def test_a_converter_number_beyond_a_float_is_a_located_problem_and_the_others_are_kept() -> None:
    huge = "9" * 400
    spec, problems = _migrated(f"""
        modules:
          default:
            metrics:
            - name: svc
              type: object
              path: '{{.services[*]}}'
              values: {{state: '{{.state}}'}}
              valueconverter:
                '{{.state}}': {{active: 1, down: {huge}}}
    """)
    assert problems == ["je.yml:10:39: modules.default.metrics[0].valueconverter['{.state}'].down: not translated: not a number: "
                        "json_exporter dropped such samples"]
    s = _probe(spec, {"services": [{"state": "ACTIVE"}]})
    assert value(s, "svc_state") == 1


def test_epochtimestamp_gives_millisecond_timestamps_and_its_camel_case_spelling_is_left_out_as_json_exporter_ignores_it() -> None:
    spec, problems = _migrated("""
        modules:
          default:
            metrics:
            - {name: read, path: '{.v}', epochtimestamp: '{.ts}'}
            - {name: ignored, path: '{.v}', epochTimestamp: '{.ts}'}
    """)
    assert len(problems) == 1 and problems[0].startswith("je.yml:6:37: modules.default.metrics[1].epochTimestamp: warning: json_exporter ignores")
    loaded, _ = load_text(spec, "spec.yml")
    assert loaded is not None
    read, ignored = loaded.modules["default"].metrics
    assert read.timestamp is not None and read.timestamp.source == "ts" and read.timestamp_scale == 0.001
    assert ignored.timestamp is None


@pytest.mark.parametrize("spelling", ["true", "yes"])  # json_exporter reads YAML 1.1, where yes is true
def test_allow_missing_key_makes_a_missing_object_path_nothing_to_iterate(spelling: str) -> None:
    config = """
        modules:
          default:
            metrics:
            - {name: item, type: object, path: '{.items[*]}', values: {n: '{.n}'}ALLOW}
    """
    tolerant, _ = _migrated(config.replace("ALLOW", f", allow_missing_key: {spelling}"))
    strict, _ = _migrated(config.replace("ALLOW", ""))
    assert value(_probe(tolerant, {}), "probe_extraction_errors", metric="item_n") == 0
    assert value(_probe(strict, {}), "probe_extraction_errors", metric="item_n") == 1


async def test_headers_templated_body_and_status_codes_reach_the_upstream(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    seen: list[tuple[str, str, str]] = []

    async def stats(request: web.Request) -> web.Response:
        seen.append((request.method, request.headers.get("X-Dummy", ""), await request.text()))
        return web.json_response({"count": 7}, status=202)

    up = await upstream({"/stats": stats})
    spec, problems = _migrated("""
        modules:
          default:
            headers: {X-Dummy: 'my-{test}-header'}
            valid_status_codes: [202]
            body:
              content: '{"user": "{{ .user | first }}", "literal": "{{ `{x}` }}"}'
              templatize: true
            metrics:
            - {name: count, path: '{.count}'}
    """)
    # a header of any name but the harmless ones, with a literal value of 8 characters or more, may be a credential
    assert len(problems) == 2 and "je.yml:3:3: modules.default: warning: json_exporter sent this module's credentials" in problems[0]
    assert "je.yml:7:61: modules.default.body.content: not translated: the Go template action" in problems[1]
    client = await exporter(spec)
    response = await client.get("/probe", params={"target": f"{up.url}/stats", "user": 'a"b'})
    assert response.status == 200
    assert value(parse(await response.text()), "count") == 7
    method, header, body = seen[0]
    assert (method, header) == ("POST", "my-{test}-header")
    assert body == '{"user": "a\\"b", "literal": "{{ `{x}` }}"}'  # the value JSON-escaped; the untranslated action as written


def test_http_headers_of_the_client_config_become_request_headers() -> None:
    spec, problems = _migrated("""
        modules:
          default:
            headers: {X-A: a}
            http_client_config:
              http_headers:
                X-B: {values: [b]}
                X-C: {secrets: ['{c}']}
                X-File: {files: [/etc/x]}
              follow_redirects: false
            metrics:
            - {name: up, path: '{.up}'}
    """)
    assert problems == ["je.yml:9:9: modules.default.http_client_config.http_headers['X-File']: not translated: only a header with one value "
                        "(`values` or `secrets`) has a translation, not files or several values; left out"]
    loaded, _ = load_text(spec, "spec.yml")
    assert loaded is not None
    endpoint = loaded.modules["default"].endpoints["default"]
    assert {k: t.render({}) for k, t in endpoint.headers} == {"X-A": "a", "X-B": "b", "X-C": "{c}"}
    assert endpoint.client.follow_redirects is False


@pytest.mark.parametrize(("header", "key", "column", "kind"), [
    ("{values: 5}", "values", 27, "int"), ("{secrets: {a: 1}}", "secrets", 28, "dict"), ("{files: /etc/x}", "files", 26, "str"),
])
def test_http_headers_values_secrets_or_files_not_a_list_are_a_located_problem(header: str, key: str, column: int, kind: str) -> None:
    spec, problems = _migrated(f"""
        modules:
          default:
            http_client_config:
              http_headers:
                X-Token: {header}
                X-B: {{values: [b]}}
            metrics:
            - {{name: up, path: '{{.up}}'}}
    """)
    assert problems == [f"je.yml:6:{column}: modules.default.http_client_config.http_headers['X-Token'].{key}: not translated: `{key}` must be "
                        f"a list of strings, not {kind}; the header is left out"]
    loaded, _ = load_text(spec, "spec.yml")
    assert loaded is not None
    assert [k for k, _ in loaded.modules["default"].endpoints["default"].headers] == ["X-B"]


def test_credentials_sent_to_the_target_get_an_allowlist_of_any_target_with_a_warning() -> None:
    spec, problems = _migrated("""
        modules:
          default:
            http_client_config:
              basic_auth: {username: u, password: p}
            metrics:
            - {name: up, path: '{.up}'}
    """)
    assert problems == ["je.yml:3:3: modules.default: warning: json_exporter sent this module's credentials to whatever host the probe's target "
                        "names: the translation allows any target (`targets: {allow: ['.*']}`) to keep that; narrow it to your hosts"]
    loaded, _ = load_text(spec, "spec.yml")
    assert loaded is not None
    assert loaded.modules["default"].target_allowed("http://anywhere.example")


def test_what_check_refuses_is_reported_at_the_json_exporter_metric_and_left_out() -> None:
    spec, problems = _migrated("""
        modules:
          default:
            metrics:
            - {name: dup, path: '{.a}'}
            - {name: dup, path: '{.b}', labels: {x: '{.x}'}}
            - {name: other, path: '{.c}'}
    """)
    assert problems == ["je.yml:6:7: modules.default.metrics[1]: not translated: the spec refuses the translation: metric 'dup' is also "
                        "produced by modules.default.metrics[0] (je.yml:5:7) with labels [], here ['x']; left out"]
    loaded, errors = load_text(spec, "spec.yml")
    assert loaded is not None, errors
    assert [m.name for m in loaded.modules["default"].metrics] == ["dup", "other"]


def test_what_check_refuses_inside_a_key_copied_as_written_is_reported_where_it_is_written() -> None:
    spec, problems = _migrated("""
        modules:
          default:
            valid_status_codes: [200, 99]
            http_client_config:
              basic_auth: {username: monitor, password: pw}
              tls_config: {insecure_skip_verify: false, min_version: TLS19}
              proxy_url: "http://[::1"
            metrics:
            - {name: up, path: '{.up}'}
    """)
    refused = [p for p in problems if "warning" not in p]
    assert refused == [
        "je.yml:4:31: modules.default.valid_status_codes[1]: not translated: the spec refuses the translation: 99 is less than the minimum "
        "of 100; left out",
        "je.yml:7:62: modules.default.http_client_config.tls_config.min_version: not translated: the spec refuses the translation: \"TLS19\" "
        "is not one of TLS10, TLS11, TLS12, TLS13 (did you mean 'TLS13'?); left out",
        "je.yml:8:18: modules.default.http_client_config.proxy_url: not translated: the spec refuses the translation: proxy_url is not a "
        "usable URL: its host '[::1' is not a valid IP address in brackets; left out",
    ]
    loaded, errors = load_text(spec, "spec.yml")
    assert loaded is not None, errors
    endpoint = loaded.modules["default"].endpoints["default"]
    assert endpoint.valid_status_codes is None  # the list refused is left out, and only what was refused
    assert endpoint.client.basic_auth is not None and endpoint.client.tls is None and endpoint.client.proxy_url is None


def test_a_configuration_whose_every_rule_check_refuses_says_nothing_could_be_translated() -> None:
    migration, problems = migrate_text("modules:\n  default:\n    metrics: [{name: a, path: '{.a}', labels: {bad-name: '{.a}'}}]\n", "je.yml")
    assert migration is not None and migration.modules == []
    assert [str(p) for p in problems] == [
        "je.yml:1:1: <root>: nothing could be translated: the spec written has no modules, which `check` refuses",
        "je.yml:3:58: modules.default.metrics[0].labels['bad-name']: not translated: the spec refuses the translation: invalid label name "
        "'bad-name': must match ^[A-Za-z_][A-Za-z0-9_]*$; left out",
    ]


def test_a_module_none_of_whose_metrics_translate_is_left_out_and_the_others_are_kept() -> None:
    spec, problems = _migrated("""
        modules:
          cel:
            metrics:
            - {name: up, engine: cel, path: '.up'}
          legacy:
            metrics:
            - {name: up, path: '$.up'}
          good:
            metrics:
            - {name: up, path: '{.up}'}
    """)
    assert problems == [
        "je.yml:3:3: modules.cel: not translated: none of the module's metrics could be translated; the module is left out",
        "je.yml:5:26: modules.cel.metrics[0].engine: not translated: only JSONPath is translated, not engine 'cel'; the metric is left out",
        "je.yml:6:3: modules.legacy: not translated: none of the module's metrics could be translated; the module is left out",
        "je.yml:8:25: modules.legacy.metrics[0].path: not translated: the value has no braces, so json_exporter reads the text itself, "
        "which is not a number: it never gave a sample; a JSONPath needs braces since json_exporter 0.3 (`{.field}`); "
        "the metric is left out",
    ]
    loaded, _ = load_text(spec, "spec.yml")
    assert loaded is not None and list(loaded.modules) == ["good"]


BAD = """\
modules:
  default:
    timeout: 5s
    http_client_config:
      tls_config: {ca_ref: x}
    metrics:
    - {name: deep, path: '{..x}'}
    - {name: typed, type: gauge, path: '{.a}'}
    - name: kept
      type: object
      path: '{.items[*]}'
      labels: {id: '{.id}', bad: '{range .x}{end}'}
      values: {n: '{.n}'}
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(jsonexporter("migrate", *args), capture_output=True, text=True, timeout=60)


def test_migrate_exits_1_listing_each_untranslated_construct_at_its_place_and_writes_the_rest(tmp_path: Path) -> None:
    config, out = tmp_path / "je.yml", tmp_path / "spec.yml"
    config.write_text(BAD)
    result = _run(str(config), "-o", str(out))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert f"{config}:3:5: modules.default.timeout: warning: json_exporter ignores the key 'timeout'" in lines[0]
    # a key where credentials are written is not quoted: it may be one (schema.key_named)
    assert lines[1].startswith(f"{config}:5:20: modules.default.http_client_config.tls_config: not translated: the http_client_config key (not shown")
    assert lines[2].startswith(f"{config}:7:28: modules.default.metrics[0].path: not translated: recursive descent")
    assert lines[3].startswith(f"{config}:8:27: modules.default.metrics[1].type: not translated: type 'gauge'")
    assert lines[4].startswith(f"{config}:12:36: modules.default.metrics[2].labels.bad: not translated: `{{range}}`")
    assert lines[5] == f"{config}: 4 construct(s) not translated; the rest is written"
    text = out.read_text()
    assert "# NOT TRANSLATED" in text and "recursive descent" in text.split("modules:")[0]
    check = subprocess.run(jsonexporter("check", str(out)), capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout
    loaded, _ = load_text(text, str(out))
    assert loaded is not None
    (kept,) = loaded.modules["default"].metrics
    assert kept.name == "kept" and [n for n, _ in kept.labels] == ["id"]


def test_migrate_exits_0_when_everything_translated_and_writes_the_spec_to_stdout(tmp_path: Path) -> None:
    config = tmp_path / "je.yml"
    config.write_text("modules:\n  default:\n    metrics:\n    - {name: up, path: '{.up}', help: Whether it is up}\n")
    result = _run(str(config))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    spec, problems = load_text(result.stdout, "stdout")
    assert spec is not None, problems


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read"),
    ("modules: [\n", "invalid YAML"),
    ("metrics_path: /probe\n", "not a json_exporter configuration"),
    ("null\n", "je.yml:1:1: <root>: not a json_exporter configuration: it has no `modules` mapping"),
    ("", "je.yml:1:1: <root>: the json_exporter configuration is empty\n"),  # in migrate's terms, not the spec's
    ("# nothing yet\n", "je.yml:1:1: <root>: the json_exporter configuration is empty\n"),
    ("modules:\n  default:\n    endpoints: {e: {url: '{target}'}}\n    metrics: []\n",
     "je.yml:3:5: modules.default.endpoints: not a json_exporter configuration: this is already a jsonexporter spec"),
])
def test_migrate_exits_2_on_a_file_it_cannot_read_as_a_configuration(tmp_path: Path, content: str | None, message: str) -> None:
    config = tmp_path / "je.yml"
    if content is not None:
        config.write_text(content)
    result = _run(str(config))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_migrate_exits_2_on_a_usage_error() -> None:
    result = _run()
    assert result.returncode == 2
    assert "JSON_EXPORTER_CONFIG" in result.stderr and "Traceback" not in result.stderr


def test_the_example_of_docs_migrating_md_is_what_migrate_writes() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", (Path(__file__).resolve().parents[1] / "docs" / "migrating.md").read_text(), re.DOTALL)
    config, written = blocks[0], blocks[1]
    migration, problems = migrate_text(config, "json_exporter.yml")
    assert migration is not None and all(p.severity == "warning" for p in problems)
    spec = render(migration, "json_exporter.yml")
    assert spec[spec.index("modules:"):] == written[written.index("modules:"):]


@pytest.mark.parametrize(("metric", "body", "said"), [
    ("{name: up, path: '{.up}'}", '{"pw": "{{ .pw | default "SECRET" }}"}', "the Go template action `{{ .pw | default … }}`"),
    ("{name: up, path: '{.up}'}", "{{- printf `SECRET` | html -}}", "the Go template action `{{ printf … | html }}`"),
    ("{name: up, path: '{.up}'}", '{{ call .f "SECRET|x" 12 }}', "the Go template action `{{ call … }}`"),
    ("{name: up, path: '{.up}'}", '{{ default "SECRET }}', "the Go template action `{{ default }}`"),  # unterminated
    ("{name: up, path: '{.items[?(@.key==SECRET)].v}'}", None, "unexpected text in a filter (a string without quotes?)"),
    ("{name: up, path: 'SECRET'}", None, "the value has no braces"),
    ("{name: up, path: '{.up}', labels: {env: $.SECRET}}", None, "the label's text has no braces"),
    ("{name: up, type: object, path: '{.s[*]}', values: {state: '{.state}'}, valueconverter: {'{.state}': {down: SECRET}}}", None,
     "not translated: not a number"),
])
def test_migrate_names_what_it_cannot_translate_without_quoting_its_literals(tmp_path: Path, metric: str, body: str | None, said: str) -> None:
    # a value nothing marks as a credential (a Go template's default, a filter's literal): no redaction would hide it
    config, out = tmp_path / "je.yml", tmp_path / "spec.yml"
    secret = "Sup3rS3cretPw"
    templated = f"\n    body: {{content: {json.dumps(body)}, templatize: true}}" if body is not None else ""
    config.write_text(f"modules:\n  default:\n    metrics: [{metric.replace('SECRET', secret)}]{templated.replace('SECRET', secret)}\n")
    result = _run(str(config), "-o", str(out))
    assert said in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and secret not in result.stderr
    if out.exists():
        assert secret not in out.read_text().partition("\nmodules:")[0]


def test_what_migrate_reports_never_quotes_a_credential_of_the_configuration(tmp_path: Path) -> None:
    config, out = tmp_path / "je.yml", tmp_path / "spec.yml"
    config.write_text(textwrap.dedent("""\
        modules:
          default:
            headers: {X-API-Key: hunter2PASSWORD}
            body: {content: '{"x": "{{ print "hunter2PASSWORD" }}"}', templatize: true}
            metrics: [{name: up, path: '{.up}', help: x}]
    """))
    result = _run(str(config), "-o", str(out))
    assert result.returncode == 1 and "the Go template action `{{ print … }}`" in result.stderr
    assert "hunter2PASSWORD" not in result.stderr
    assert "hunter2PASSWORD" not in out.read_text().partition("\nmodules:")[0]  # nor the header's list; the spec itself sends it
