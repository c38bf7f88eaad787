"""`jsonexporter check` through the real CLI: located problems, exit codes, warnings, the schema."""

from __future__ import annotations

import contextlib
import json
import os
import re
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import SpecWriter
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from schema_util import broken_documents
from yarl import URL

from jsonexporter.cli import main
from jsonexporter.spec import load_text, read_spec_text
from jsonexporter.spec.functions import compile_regex
from jsonexporter.spec.hostpatterns import every_host, wildcard_in_host
from jsonexporter.spec.problems import format_path
from jsonexporter.upstream.hops import url_allowed

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "jsonexporter.schema.json"
SCHEMA: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def check(capsys: pytest.CaptureFixture[str]) -> Run:
    """`check(*args)`: run `jsonexporter check ARGS` in-process; return (exit code, stdout, stderr)."""

    def run(*args: str | Path) -> tuple[int, str, str]:
        code = main(["check", *map(str, args)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def error_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if ": warning: " not in line and not re.search(r": valid: \d+ module", line)]


def warning_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if ": warning: " in line]


# -- invalid specs: one row per problem, with its exact place ------------------------------------------

@dataclass(frozen=True)
class Invalid:
    id: str
    text: str
    # every error the file must produce: ("LINE:COL", "yaml.path", "part of the message"; SPEC for the file's path)
    errors: tuple[tuple[str, str, str], ...]


def invalid(id: str, text: str, *errors: tuple[str, str, str]) -> Invalid:
    return Invalid(id, text, errors)


INVALID = [
    # -- YAML itself
    invalid("yaml_colon_in_a_plain_value", """
        modules:
          m:
            metrics:
              - name: a
                help: h: x
                value: x
        """, ("5:16", "<root>", "invalid YAML: a ': ' inside an unquoted value: put the value in quotes")),
    invalid("yaml_key_indented_less_than_its_mapping", """
        modules:
          m:
            metrics:
              - name: a
               value: x
        """, ("5:8", "<root>", "invalid YAML: bad indentation: this line starts at column 8, between the columns 7 and 9 of the lines above")),
    invalid("yaml_key_indented_deeper_than_its_mapping", """
        modules:
          m:
            timeout: 5s
              metrics: []
        """, ("4:7", "<root>", "invalid YAML: bad indentation: this line starts at column 7, deeper than the lines above (column 5)")),
    invalid("yaml_key_lined_up_with_the_dash", """
        modules:
          m:
            metrics:
              - name: a
              value: x
        """, ("5:7", "<root>", "invalid YAML: bad indentation: this line lines up with the '- ' of line 4, not with the keys of that entry")),
    invalid("yaml_list_entry_among_keys", """
        modules:
          m:
            metrics:
              - name: a
                - help: h
        """, ("5:9", "<root>", "invalid YAML: a list entry among the keys of the mapping of line 4")),
    invalid("yaml_key_without_colon_is_reported_on_its_line", """
        modules:
          m:
            timeout 5s
            metrics: []
        """, ("3:5", "<root>", "invalid YAML: a key without ':' (write `key: value`)")),
    invalid("yaml_tab_in_indentation", "modules:\n  m:\n  \tmetrics: []\n",
            ("3:3", "<root>", "invalid YAML: a tab in the indentation: YAML indents with spaces only")),
    invalid("yaml_unclosed_quote_in_a_flow_mapping", """
        modules:
          m:
            metrics:
              - {name: a, help: h, value: "x}
        """, ("4:35", "<root>", 'invalid YAML: unclosed quote: this " has no closing " (a " inside the string is written \\")')),
    invalid("yaml_unclosed_quote_is_reported_at_the_opening_quote", """
        modules:
          m:
            metrics:
              - name: a
                help: 'the help
                value: x
        """, ("5:15", "<root>", "invalid YAML: unclosed quote: this ' has no closing '")),
    invalid("yaml_unclosed_brace", """
        modules:
          m:
            metrics:
              - {name: a, help: h
              - {name: b, help: h}
        """, ("4:9", "<root>", "invalid YAML: this '{' is not closed: '}' expected before line 5")),
    invalid("yaml_unknown_escape_in_double_quotes", r"""
        modules:
          m:
            parameters:
              id: {pattern: "\d+"}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:22", "<root>", r"invalid YAML: unknown escape in a double-quoted string (a backslash before a character that YAML "
                           r"gives no meaning): write \\ for a backslash, or use single quotes")),
    invalid("yaml_backtick_starts_a_plain_value", """
        modules:
          m:
            metrics:
              - {name: a, help: h, value: `1`}
        """, ("4:35", "<root>", "invalid YAML: a value cannot start with this character (YAML reserves `@` and `` ` ``")),
    invalid("yaml_duplicate_key", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: x
                value: y
        """, ("7:9", "modules.m.metrics[0].value", "duplicate key 'value'")),
    invalid("yaml_undefined_alias", """
        modules:
          m:
            metrics: *rules
        """, ("3:14", "<root>", "invalid YAML: an alias (`*name`) of no anchor (`&name`) written above it")),
    invalid("empty_file", "", ("1:1", "<root>", "the spec is empty")),
    invalid("only_a_comment", "# nothing yet\n", ("1:1", "<root>", "the spec is empty")),
    invalid("top_level_list", """
        - modules
        """, ("1:1", "<root>", "expected a mapping, got list")),
    # -- unknown keys, at every level, with a hint
    invalid("unknown_top_level_key_suggests_close_name", """
        modules:
          m:
            metrics:
              - {name: a, help: h, value: x}
        modulez: {}
        """, ("5:1", "modulez", "unknown key 'modulez' (did you mean 'modules'?)")),
    invalid("unknown_top_level_key_lists_allowed_keys", """
        modules:
          m:
            metrics:
              - {name: a, help: h, value: x}
        scrape_interval: 10s
        """, ("5:1", "scrape_interval", "unknown key 'scrape_interval' (allowed: modules, or a key matching ^x-)")),
    invalid("unknown_module_key", """
        modules:
          m:
            endpoint: {url: "{target}"}
            metrics:
              - {name: a, help: h, value: x}
        """, ("3:5", "modules.m.endpoint", "unknown key 'endpoint' (did you mean 'endpoints'?)")),
    invalid("unknown_endpoint_key", """
        modules:
          m:
            endpoints:
              api:
                url: "{target}/api"
                header: {Accept: application/json}
            metrics:
              - {name: a, help: h, value: x}
        """, ("6:9", "modules.m.endpoints.api.header", "unknown key 'header' (did you mean 'headers'?)")),
    invalid("unknown_metric_key", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: x
                lables: {id: id}
        """, ("7:9", "modules.m.metrics[0].lables", "unknown key 'lables' (did you mean 'labels'?)")),
    invalid("unknown_level_key", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                each:
                  - pth: items
                value: x
        """, ("7:13", "modules.m.metrics[0].each[0].pth", "unknown key 'pth' (did you mean 'path'?)")),
    invalid("level_optional_not_a_boolean", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                each:
                  - {path: items, optional: "yes"}
                value: x
        """, ("7:37", "modules.m.metrics[0].each[0].optional", 'expected true or false, got "yes"')),
    invalid("unknown_parameter_key", """
        modules:
          m:
            parameters:
              region: {defualt: eu}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:16", "modules.m.parameters.region.defualt", "unknown key 'defualt' (did you mean 'default'?)")),
    # -- wrong types and shapes
    invalid("metrics_as_mapping", """
        modules:
          m:
            metrics:
              name: a
              value: x
        """, ("4:7", "modules.m.metrics", "expected a list, got dict")),
    invalid("help_as_number", """
        modules:
          m:
            metrics:
              - name: a
                help: 42
                value: x
        """, ("5:15", "modules.m.metrics[0].help", "expected a string, got 42")),
    invalid("status_codes_as_string", """
        modules:
          m:
            endpoints:
              api: {url: "{target}", valid_status_codes: "200"}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:50", "modules.m.endpoints.api.valid_status_codes", 'expected a list, got "200"')),
    invalid("unknown_method", """
        modules:
          m:
            endpoints:
              api: {url: "{target}", method: FETCH}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:38", "modules.m.endpoints.api.method", '"FETCH" is not one of GET, POST')),
    invalid("unknown_metric_type", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                type: gaugehistogram
                value: x
        """, ("6:15", "modules.m.metrics[0].type", '"gaugehistogram" is not one of gauge, counter')),
    # -- one mistake, one problem: nothing reported that only follows from it
    invalid("type_typo_is_one_error_with_a_suggestion", """
        modules:
          m:
            metrics:
              - name: build_info
                help: h
                type: information
                labels: {version: version}
        """, ("6:15", "modules.m.metrics[0].type",
              '"information" is not one of gauge, counter, untyped, info, stateset, histogram, summary (did you mean \'info\'?)')),
    invalid("enum_typo_suggests_the_value_and_hides_its_consequences", """
        modules:
          m:
            metrics:
              - name: phase
                help: h
                type: statset
                value: phase
                states: [up, down]
        """, ("6:15", "modules.m.metrics[0].type", "(did you mean 'stateset'?)")),
    invalid("enum_in_other_case_suggests_the_value", """
        modules:
          m:
            endpoints:
              api: {url: "{target}", method: get}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:38", "modules.m.endpoints.api.method", "(did you mean 'GET'?)")),
    invalid("value_key_typo_is_one_error", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                valeu: x
        """, ("6:9", "modules.m.metrics[0].valeu", "unknown key 'valeu' (did you mean 'value'?)")),
    invalid("required_key_typo_is_one_error", """
        modules:
          m:
            metrics:
              - nmae: a
                help: h
                value: x
        """, ("4:9", "modules.m.metrics[0].nmae", "unknown key 'nmae' (did you mean 'name'?)")),
    invalid("states_key_typo_is_one_error", """
        modules:
          m:
            metrics:
              - {name: phase, help: h, type: stateset, value: phase, staets: [up, down]}
        """, ("4:62", "modules.m.metrics[0].staets", "unknown key 'staets' (did you mean 'states'?)")),
    invalid("timestamp_key_typo_is_one_error", """
        modules:
          m:
            metrics:
              - {name: a, help: h, value: x, timestmap: ts, timestamp_unit: milliseconds}
        """, ("4:38", "modules.m.metrics[0].timestmap", "unknown key 'timestmap' (did you mean 'timestamp'?)")),
    invalid("endpoint_key_typo_is_one_error", """
        modules:
          m:
            endpoints: {a: {}, b: {}}
            metrics:
              - {name: x, help: h, value: x, endpiont: a}
        """, ("5:38", "modules.m.metrics[0].endpiont", "unknown key 'endpiont' (did you mean 'endpoint'?)")),
    invalid("invalid_states_are_not_also_missing", """
        modules:
          m:
            metrics:
              - {name: phase, help: h, type: stateset, value: phase, states: []}
        """, ("4:70", "modules.m.metrics[0].states", "must not be empty")),
    # -- every problem of a rule: a broken expression hides none of the others
    invalid("broken_value_expression_does_not_hide_a_type_clash", """
        modules:
          m:
            metrics:
              - {name: jobs, help: h, value: "x["}
              - {name: jobs, help: h, type: counter, value: x}
        """, ("4:41", "modules.m.metrics[0].value", "invalid JMESPath"),
             ("5:16", "modules.m.metrics[1].name", "metric 'jobs' is also produced by modules.m.metrics[0] with type gauge, here counter")),
    invalid("broken_label_expression_does_not_hide_a_label_clash", """
        modules:
          m:
            metrics:
              - {name: jobs, help: h, value: x, labels: {id: "id["}}
              - {name: jobs, help: h, value: y}
        """, ("4:58", "modules.m.metrics[0].labels.id", "invalid JMESPath"),
             ("5:9", "modules.m.metrics[1].labels", "metric 'jobs' is also produced by modules.m.metrics[0] with labels ['id'], here []")),
    invalid("metric_without_name", """
        modules:
          m:
            metrics:
              - help: h
                value: x
        """, ("4:9", "modules.m.metrics[0]", "missing required key 'name'")),
    invalid("modules_empty", """
        modules: {}
        """, ("1:10", "modules", "must not be empty")),
    invalid("modules_null", """
        modules:
        """, ("1:9", "modules", "expected a mapping, got null")),
    invalid("module_without_metrics", """
        modules:
          m:
            timeout: 5s
        """, ("3:5", "modules.m", "missing required key 'metrics'")),
    invalid("invalid_module_name", """
        modules:
          my module:
            metrics:
              - {name: a, help: h, value: x}
        """, ("2:3", "modules['my module']", "invalid module name 'my module': must match")),
    # -- names
    invalid("metric_name_starting_with_digit", """
        modules:
          m:
            metrics:
              - name: 1st_metric
                help: h
                value: x
        """, ("4:15", "modules.m.metrics[0].name", '"1st_metric" does not match')),
    invalid("metric_name_with_dash", """
        modules:
          m:
            metrics:
              - name: "http-requests"
                help: h
                value: x
        """, ("4:15", "modules.m.metrics[0].name", '"http-requests" does not match')),
    invalid("label_name_with_dash", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: x
                labels:
                  pod-name: pod
        """, ("8:11", "modules.m.metrics[0].labels['pod-name']", "invalid label name 'pod-name': must match")),
    invalid("label_name_starting_with_double_underscore", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: x
                labels:
                  __name__: pod
        """, ("8:11", "modules.m.metrics[0].labels.__name__", "label names starting with __ are reserved")),
    invalid("module_label_name_starting_with_double_underscore", """
        modules:
          m:
            labels: {__scheme: https}
            metrics:
              - {name: a, help: h, value: x}
        """, ("3:14", "modules.m.labels.__scheme", "label names starting with __ are reserved")),
    invalid("values_suffix_with_dash", """
        modules:
          m:
            metrics:
              - name: node
                help: h
                values: {is-up: up}
        """, ("6:18", "modules.m.metrics[0].values['is-up']", "invalid value suffix 'is-up'")),
    invalid("reserved_probe_prefix", """
        modules:
          m:
            metrics:
              - name: probe_custom
                help: h
                value: x
        """, ("4:15", "modules.m.metrics[0].name", "metric names starting with 'probe_' are reserved")),
    invalid("info_metric_without_info_suffix", """
        modules:
          m:
            metrics:
              - name: build
                help: h
                type: info
                labels: {version: version}
        """, ("4:15", "modules.m.metrics[0].name", "info metric 'build' must end with _info")),
    # -- JMESPath: the column points into the expression
    invalid("jmespath_in_plain_value", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: stats..count
        """, ("6:22", "modules.m.metrics[0].value", "invalid JMESPath: unexpected token '.' at position 6")),
    invalid("jmespath_in_double_quoted_value", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: "stats..count"
        """, ("6:23", "modules.m.metrics[0].value", "invalid JMESPath: unexpected token '.' at position 6")),
    invalid("jmespath_in_double_quoted_value_with_escapes", r"""
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: "\"my-field\"..x"
        """, ("6:30", "modules.m.metrics[0].value", "unexpected token '.' at position 11")),
    invalid("jmespath_in_single_quoted_value_with_doubled_quotes", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: 'stats[?name == ''db''].x..y'
        """, ("6:42", "modules.m.metrics[0].value", "unexpected token '.' at position 23")),
    invalid("jmespath_in_folded_block_value", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: >-
                  items[?ready]
                  | length(@) ..
        """, ("8:24", "modules.m.metrics[0].value", "invalid JMESPath: unexpected token '.' at position 27")),
    invalid("jmespath_incomplete_points_at_its_end", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: "items[0"
        """, ("6:24", "modules.m.metrics[0].value", "invalid JMESPath: incomplete expression at position 7")),
    invalid("jmespath_in_label", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: x
                labels: {pod: "metadata..name"}
        """, ("7:33", "modules.m.metrics[0].labels.pod", "unexpected token '.' at position 9")),
    invalid("jmespath_in_each_string", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                each: "items[?ready"
                value: x
        """, ("6:28", "modules.m.metrics[0].each", "incomplete expression at position 12")),
    invalid("jmespath_in_each_level_path", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                each:
                  - path: nodes
                    as: node
                  - path: disks[*]..size
                value: x
        """, ("9:28", "modules.m.metrics[0].each[1].path", "unexpected token '.' at position 9")),
    invalid("jmespath_in_values_entry", """
        modules:
          m:
            metrics:
              - name: node
                help: h
                values:
                  ready: ready
                  up: "a b"
        """, ("8:18", "modules.m.metrics[0].values.up", "unexpected token 'b' at position 2")),
    invalid("jmespath_in_timestamp", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: x
                timestamp: "updated_at |"
        """, ("7:33", "modules.m.metrics[0].timestamp", "incomplete expression at position 12")),
    invalid("jmespath_unknown_function", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: "sum(items[*].n) | nope(@)"
        """, ("6:35", "modules.m.metrics[0].value", "unknown function nope()")),
    invalid("unknown_function_gets_did_you_mean", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: "parse_duraton(uptime)"
        """, ("6:17", "modules.m.metrics[0].value", "unknown function parse_duraton() (did you mean parse_duration()?)")),
    invalid("function_with_too_many_arguments", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: "sum(items[*].n) | lower(@, 'x')"
        """, ("6:35", "modules.m.metrics[0].value", "invalid JMESPath: lower() takes 1 argument, got 2")),
    invalid("function_with_too_few_arguments", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: x
                labels: {zone: "split(zone)"}
        """, ("7:25", "modules.m.metrics[0].labels.zone", "invalid JMESPath: split() takes 2 to 3 arguments, got 1")),
    invalid("function_literal_of_the_wrong_type", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: "divide(bytes, '1024')"
        """, ("6:31", "modules.m.metrics[0].value", "invalid JMESPath: divide() argument 2 must be a number, got string \"1024\"")),
    invalid("function_literal_of_the_wrong_type_in_a_filter", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                each: "items[?regex_match(name, `3`)].x"
                value: x
        """, ("6:41", "modules.m.metrics[0].each", "regex_match() argument 2 must be a string, got number 3")),
    invalid("regex_pattern_not_a_literal", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: regex_match(name, pattern)
        """, ("6:34", "modules.m.metrics[0].value", "regex_match() pattern must be a literal string")),
    invalid("regex_invalid_at_its_place", r"""
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: x
                labels:
                  major: regex_extract(version, 'v(\d+') || 'none'
        """, ("8:41", "modules.m.metrics[0].labels.major", r"invalid regex 'v(\\d+': missing ): v(\d+")),
    invalid("regex_invalid_in_a_folded_block", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: >-
                  length(items[?regex_match(name, '^web')])
                  || regex_match(x, 'a{2,1}')
        """, ("8:29", "modules.m.metrics[0].value", "invalid regex 'a{2,1}': invalid repetition size: {2,1}")),
    invalid("regex_with_a_backreference_is_not_re2", r"""
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: regex_match(name, '(a)\1')
        """, ("6:34", "modules.m.metrics[0].value", r"invalid regex '(a)\\1': invalid escape sequence: \1 (RE2 has no backreferences or lookaround)")),
    invalid("regex_too_large_for_a_function", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: regex_match(name, 'a.{0,500}b')
        """, ("6:34", "modules.m.metrics[0].value", "regex_match() pattern is too large: its RE2 program has 4,506 instructions, more than 4,096")),
    invalid("regex_extract_group_the_pattern_does_not_have", r"""
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: x
                labels: {minor: 'regex_extract(v, ''(?P<major>\d+)'', ''minor'')'}
        """, ("7:63", "modules.m.metrics[0].labels.minor", "regex_extract() group \"minor\": the pattern has no group named 'minor'")),
    invalid("regex_replace_refers_to_a_missing_group", r"""
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: x
                labels:
                  v: regex_replace(v, '(\d+)', '<\2>')
        """, ("8:40", "modules.m.metrics[0].labels.v", "refers to group 2; the pattern has 1")),
    invalid("parse_time_format_with_a_bad_directive", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: parse_time(started, '%Y-%Q')
        """, ("6:36", "modules.m.metrics[0].value", "parse_time() format: 'Q' is a bad directive in format '%Y-%Q'")),
    invalid("unknown_context_name", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: $foo.bar
        """, ("6:16", "modules.m.metrics[0].value", "unknown context name '$foo': use one of $index, $item, $key")),
    invalid("context_name_inside_a_function_call", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                each: states
                labels: {state: lower($key)}
                value: '@'
        """, ("7:31", "modules.m.metrics[0].labels.state",
              "invalid JMESPath: `$key` inside an expression: a `$` context name can only start one; "
              "give it to a function with `.` and `@`: `$key.lower(@)`")),
    invalid("empty_expression", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: ""
        """, ("6:16", "modules.m.metrics[0].value", "must not be empty")),
    # -- levels
    invalid("level_name_reserved", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                each: [{path: items, as: root}]
                value: x
        """, ("6:34", "modules.m.metrics[0].each[0].as", "level name 'root' is reserved for the context")),
    invalid("level_name_reused", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                each: [{path: racks, as: r}, {path: hosts, as: r}]
                value: x
        """, ("6:56", "modules.m.metrics[0].each[1].as", "level name 'r' is already used by an outer level")),
    invalid("level_name_not_a_string", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                each: [{path: items, as: [x]}]
                value: x
        """, ("6:34", "modules.m.metrics[0].each[0].as", "expected a string, got list")),
    # -- endpoints of metrics
    invalid("metric_names_missing_endpoint", """
        modules:
          m:
            endpoints:
              api: {url: "{target}/api"}
            metrics:
              - name: a
                help: h
                endpoint: apii
                value: x
        """, ("8:19", "modules.m.metrics[0].endpoint", "unknown endpoint 'apii': the module has api")),
    invalid("broken_endpoints_do_not_blame_the_metrics", """
        modules:
          m:
            endpoints: {}
            metrics:
              - {name: a, help: h, endpoint: api, value: x}
        """, ("3:16", "modules.m.endpoints", "must not be empty")),
    invalid("metric_names_no_endpoint_among_several", """
        modules:
          m:
            endpoints:
              api: {url: "{target}/api"}
              health: {url: "{target}/health"}
            metrics:
              - name: a
                help: h
                value: x
        """, ("7:9", "modules.m.metrics[0]", "metric 'a' must name its endpoint: the module has several (api, health)")),
    # -- value and values
    invalid("value_and_values", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: x
                values: {up: up}
        """, ("7:17", "modules.m.metrics[0].values", "use either `value` or `values`, not both")),
    invalid("neither_value_nor_values", """
        modules:
          m:
            metrics:
              - name: a
                help: h
        """, ("4:9", "modules.m.metrics[0]", "metric 'a' needs `value` (or `values`)")),
    # -- families fed by several rules
    invalid("same_name_different_types", """
        modules:
          m:
            metrics:
              - {name: jobs, help: h, value: a}
              - {name: jobs, help: h, value: b, type: untyped}
        """, ("5:16", "modules.m.metrics[1].name", "metric 'jobs' is also produced by modules.m.metrics[0] with type gauge, here untyped")),
    invalid("same_name_different_labels", """
        modules:
          m:
            metrics:
              - {name: jobs, help: h, value: a, labels: {queue: q}}
              - {name: jobs, help: h, value: b, labels: {queue: q, host: h}}
        """, ("5:49", "modules.m.metrics[1].labels", "with labels ['queue'], here ['host', 'queue']")),
    invalid("same_name_different_labels_through_values_suffix", """
        modules:
          m:
            metrics:
              - {name: node, help: h, values: {up: up, ready: ready}, labels: {id: id}}
              - {name: node_up, help: h, value: up}
        """, ("5:9", "modules.m.metrics[1].labels", "metric 'node_up' is also produced by modules.m.metrics[0] with labels ['id'], here []")),
    # -- names that meet after the naming rules: both places, each naming the other
    invalid("counter_sample_name_is_a_gauge", """
        modules:
          m:
            metrics:
              - {name: req, help: h, type: counter, value: a}
              - {name: req_total, help: h, value: b}
        """,
        ("4:16", "modules.m.metrics[0].name", "counter 'req' and gauge 'req_total' of modules.m.metrics[1] (SPEC:5:16) both take the name req_total"),
        ("5:16", "modules.m.metrics[1].name", "gauge 'req_total' and counter 'req' of modules.m.metrics[0] (SPEC:4:16) both take the name req_total")),
    invalid("info_family_name_is_another_metric", """
        modules:
          m:
            metrics:
              - {name: node_role_info, help: h, type: info, labels: {role: r}}
              - {name: node_role, help: h, type: untyped, value: b}
        """,
        ("4:16", "modules.m.metrics[0].name", "(OpenMetrics names the family of info 'node_role_info' node_role)"),
        ("5:16", "modules.m.metrics[1].name", "untyped 'node_role' and info 'node_role_info' of modules.m.metrics[0] (SPEC:4:16) both take")),
    invalid("values_suffix_gives_a_counter_sample_name", """
        modules:
          m:
            metrics:
              - {name: jobs, help: h, type: counter, values: {done: d, failed: f}}
              - {name: jobs_done_total, help: h, value: b}
        """,
        ("4:55", "modules.m.metrics[0].values.done", "counter 'jobs_done' and gauge 'jobs_done_total' of modules.m.metrics[1] (SPEC:5:16)"),
        ("5:16", "modules.m.metrics[1].name", "gauge 'jobs_done_total' and counter 'jobs_done' of modules.m.metrics[0] (SPEC:4:55)")),
    invalid("two_values_of_one_rule_give_one_counter", """
        modules:
          m:
            metrics:
              - {name: jobs, help: h, type: counter, values: {done: d, done_total: f}}
        """,
        ("4:55", "modules.m.metrics[0].values.done", "counter 'jobs_done' and counter 'jobs_done_total' of modules.m.metrics[0] (SPEC:4:64)"),
        ("4:64", "modules.m.metrics[0].values.done_total", "both take the name jobs_done_total (the samples of counter 'jobs_done' are named")),
    invalid("counter_with_and_without_total", """
        modules:
          m:
            metrics:
              - {name: req_total, help: h, type: counter, value: a}
              - {name: req, help: h, type: counter, value: b}
        """,
        ("4:16", "modules.m.metrics[0].name", "both take the name req_total"),
        ("5:16", "modules.m.metrics[1].name", "both take the name req_total")),
    invalid("counter_created_name_is_a_gauge", """
        modules:
          m:
            metrics:
              - {name: req_created, help: h, value: a}
              - {name: req_total, help: h, type: counter, value: b}
        """,
        ("4:16", "modules.m.metrics[0].name", "(OpenMetrics reserves req_created for the samples of counter 'req_total')"),
        ("5:16", "modules.m.metrics[1].name", "counter 'req_total' and gauge 'req_created'")),
    invalid("values_suffix_gives_a_probe_metric", """
        modules:
          m:
            metrics:
              - {name: probe, help: h, type: counter, values: {success: ok}}
        """, ("4:56", "modules.m.metrics[0].values.success",
              "counter 'probe_success' takes the name probe_success, which the probe's own metric probe_success has")),
    invalid("rule_named_like_a_probe_metric", """
        modules:
          m:
            metrics:
              - {name: probe_success, help: h, value: ok}
        """, ("4:16", "modules.m.metrics[0].name", "metric names starting with 'probe_' are reserved for the probe's own metrics")),
    invalid("help_with_a_carriage_return_or_another_control_character", r"""
        modules:
          m:
            metrics:
              - {name: a, help: "carriage\rreturn", value: x}
              - {name: b, help: "tab\tand\nline feed are fine", values: {c: {value: x, help: "nul\0"}}}
        """, ("4:34", "modules.m.metrics[0].help", r"help contains the control character '\r': only tab and line breaks (\n) are written"),
             ("5:90", "modules.m.metrics[1].values.c.help", r"help contains the control character '\x00'")),
    # -- parameters
    invalid("parameter_pattern_invalid_regex", """
        modules:
          m:
            parameters:
              region: {pattern: "[a-z+"}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:26", "modules.m.parameters.region.pattern", "invalid regex '[a-z+': missing ]: [a-z+")),
    # parameter patterns and targets.allow are RE2, like the functions' patterns: linear time on values from outside
    invalid("parameter_pattern_with_a_backreference", r"""
        modules:
          m:
            parameters:
              word: {pattern: '(\w+)-\1'}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:30", "modules.m.parameters.word.pattern",
              r"invalid regex '(\\w+)-\\1': invalid escape sequence: \1 (RE2 has no backreferences or lookaround)")),
    invalid("allowlist_pattern_with_a_lookahead", r"""
        modules:
          m:
            targets: {allow: ['https://(?!internal)[a-z]+\.example\.com']}
            metrics:
              - {name: a, help: h, value: x}
        """, ("3:32", "modules.m.targets.allow[0]", "invalid perl operator: (?! (RE2 has no backreferences or lookaround)")),
    invalid("parameter_default_not_matching_pattern", """
        modules:
          m:
            parameters:
              region: {pattern: "[a-z]+", default: EU}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:44", "modules.m.parameters.region.default", "default 'EU' does not match the pattern '[a-z]+'")),
    invalid("parameter_name_target_reserved", """
        modules:
          m:
            parameters:
              target: {default: x}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:7", "modules.m.parameters.target", "parameter name 'target' is reserved by /probe")),
    invalid("parameter_name_debug_reserved", """
        modules:
          m:
            parameters:
              debug: {}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:7", "modules.m.parameters.debug", "parameter name 'debug' is reserved by /probe")),
    # -- templates
    invalid("unknown_placeholder_in_url", """
        modules:
          m:
            endpoints:
              api: {url: "{target}/api/{regoin}"}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:32", "modules.m.endpoints.api.url", "unknown placeholder {regoin}: known are {module}, {target}")),
    invalid("unknown_placeholder_after_escaped_braces", """
        modules:
          m:
            endpoints:
              api: {url: "{target}/{{literal}}/{regoin}"}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:40", "modules.m.endpoints.api.url", "unknown placeholder {regoin}")),
    invalid("unknown_placeholder_in_header", """
        modules:
          m:
            endpoints:
              api:
                url: "{target}"
                headers:
                  Authorization: "Bearer {token}"
            metrics:
              - {name: a, help: h, value: x}
        """, ("7:34", "modules.m.endpoints.api.headers.Authorization", "unknown placeholder {token}")),
    invalid("unknown_placeholder_in_params", """
        modules:
          m:
            endpoints:
              api:
                params: {q: "{query}"}
            metrics:
              - {name: a, help: h, value: x}
        """, ("5:22", "modules.m.endpoints.api.params.q", "unknown placeholder {query}")),
    invalid("unknown_placeholder_in_string_body", """
        modules:
          m:
            endpoints:
              api:
                method: POST
                body: '{{"host": "{host}"}}'
            metrics:
              - {name: a, help: h, value: x}
        """, ("6:27", "modules.m.endpoints.api.body", "unknown placeholder {host}")),
    invalid("string_body_with_single_braces", """
        modules:
          m:
            endpoints:
              api:
                method: POST
                body: '{"host": "{target}"}'
            metrics:
              - {name: a, help: h, value: x}
        """, ("6:16", "modules.m.endpoints.api.body", 'invalid placeholder {"host": "{target}"}: only {name} is allowed (write {{ and }} for literal braces)')),
    invalid("unknown_placeholder_in_json_body", """
        modules:
          m:
            endpoints:
              api:
                method: POST
                body:
                  query: "{q}"
            metrics:
              - {name: a, help: h, value: x}
        """, ("7:19", "modules.m.endpoints.api.body.query", "unknown placeholder {q}")),
    invalid("unknown_placeholder_in_module_label", """
        modules:
          m:
            labels: {env: "{environment}"}
            metrics:
              - {name: a, help: h, value: x}
        """, ("3:20", "modules.m.labels.env", "unknown placeholder {environment}")),
    invalid("dotted_placeholder", """
        modules:
          m:
            endpoints:
              api: {url: "{target}/{a.b}"}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:28", "modules.m.endpoints.api.url", "invalid placeholder {a.b}: only {name} is allowed")),
    invalid("lone_closing_brace", """
        modules:
          m:
            endpoints:
              api: {url: "{target}/x}"}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:29", "modules.m.endpoints.api.url", "invalid template: single '}' (write }} for a literal brace)")),
    invalid("placeholder_with_a_line_break_is_reported_on_one_line", r"""
        modules:
          m:
            endpoints:
              api: {url: "{\ntarget}/api"}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:19", "modules.m.endpoints.api.url", "invalid placeholder {\\ntarget}: only {name} is allowed")),
    invalid("parameter_with_error_is_still_a_known_placeholder", """
        modules:
          m:
            parameters:
              region: {pattern: "[a-z+"}
            endpoints:
              api: {url: "{target}/{region}"}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:26", "modules.m.parameters.region.pattern", "invalid regex")),
    # -- hosts from parameters, string bodies, header values
    invalid("credentials_to_a_host_and_port_from_a_parameter", """
        modules:
          m:
            parameters: {node: {}}
            http_client_config: {bearer_token: t}
            endpoints:
              api: {url: "http://{node}:8080/stats"}
            metrics:
              - {name: a, help: h, endpoint: api, value: x}
        """, ("4:25", "modules.m.http_client_config", "endpoint api sends credentials (http_client_config) to a host taken from {node}: declare `targets")),
    invalid("credentials_to_a_subdomain_from_a_parameter", """
        modules:
          m:
            parameters: {tenant: {}}
            endpoints:
              api: {url: "http://{tenant}.api.example.internal/", headers: {Authorization: Bearer t}}
            metrics:
              - {name: a, help: h, endpoint: api, value: x}
        """, ("5:84", "modules.m.endpoints.api.headers.Authorization", "endpoint api sends credentials (header Authorization) to a host taken from {tenant}")),
    invalid("json_body_placeholder_outside_a_string", """
        modules:
          m:
            parameters: {size: {}}
            endpoints:
              api: {method: POST, body: '{{"size": {size}}}'}
            metrics:
              - {name: a, help: h, value: x}
        """, ("5:44", "modules.m.endpoints.api.body", "placeholder {size} must be inside a JSON string")),
    invalid("json_body_placeholder_after_a_backslash", """
        modules:
          m:
            endpoints:
              api: {method: POST, body: '{{"q": "\\{target}"}}'}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:43", "modules.m.endpoints.api.body", "placeholder {target} must be inside a JSON string")),
    invalid("json_content_type_body_that_is_not_json", """
        modules:
          m:
            endpoints:
              api: {method: POST, headers: {Content-Type: application/json}, body: 'q="{target}"'}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:76", "modules.m.endpoints.api.body", "the body is sent as JSON but is not JSON")),
    invalid("string_body_with_placeholders_and_no_known_escaping", """
        modules:
          m:
            endpoints:
              api: {method: POST, headers: {Content-Type: text/plain}, body: 'host {target}'}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:70", "modules.m.endpoints.api.body", "a string body with placeholders needs a Content-Type whose escaping the exporter knows")),
    invalid("header_value_with_a_control_character", """
        modules:
          m:
            endpoints:
              api: {headers: {X-Token: "a\\nb"}}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:32", "modules.m.endpoints.api.headers['X-Token']", "header X-Token contains a line break or another control character")),
    # -- types and their keys
    invalid("stateset_without_states", """
        modules:
          m:
            metrics:
              - name: phase
                help: h
                type: stateset
                value: phase
        """, ("4:9", "modules.m.metrics[0]", "stateset metric 'phase' needs `states`")),
    invalid("stateset_whose_name_cannot_be_a_label_name", """
        modules:
          m:
            metrics:
              - {name: 'app:phase', help: h, type: stateset, value: phase, states: [up]}
              - {name: __phase, help: h, type: stateset, value: phase, states: [up]}
        """, ("4:16", "modules.m.metrics[0].name", "stateset metric 'app:phase': its name is also its state label's, and a label name cannot contain ':'"),
             ("5:16", "modules.m.metrics[1].name",
              "stateset metric '__phase': its name is also its state label's, and label names starting with __ are reserved")),
    invalid("states_on_a_gauge", """
        modules:
          m:
            metrics:
              - name: phase
                help: h
                value: phase
                states: [up, down]
        """, ("7:17", "modules.m.metrics[0].states", "`states` is only for type stateset")),
    invalid("info_with_timestamp", """
        modules:
          m:
            metrics:
              - name: build_info
                help: h
                type: info
                timestamp: built_at
        """, ("7:9", "modules.m.metrics[0].timestamp", "info metrics take no `timestamp`")),
    invalid("timestamp_unit_without_timestamp", """
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: x
                timestamp_unit: milliseconds
        """, ("7:25", "modules.m.metrics[0].timestamp_unit", "timestamp_unit without timestamp")),
    invalid("metric_label_collides_with_module_label", """
        modules:
          m:
            labels: {instance: "{target}"}
            metrics:
              - name: a
                help: h
                value: x
                labels: {instance: host}
        """, ("8:18", "modules.m.metrics[0].labels.instance", "label 'instance' is already set by the module's labels")),
    # -- duplicates and distributions
    invalid("duplicates_sum_on_an_info_metric", """
        modules:
          m:
            metrics:
              - name: build_info
                help: h
                type: info
                labels: {version: v}
                duplicates: sum
        """, ("8:21", "modules.m.metrics[0].duplicates", "`duplicates: sum` adds up values, which info metrics do not have (use first or last)")),
    invalid("duplicates_unknown_policy", """
        modules:
          m:
            metrics:
              - {name: a, help: h, value: x, duplicates: max}
        """, ("4:50", "modules.m.metrics[0].duplicates", "\"max\" is not one of first, last, sum")),
    invalid("histogram_without_buckets_and_sum", """
        modules:
          m:
            metrics:
              - name: latency_seconds
                help: h
                type: histogram
                count: n
        """, ("4:9", "modules.m.metrics[0]", "histogram metric 'latency_seconds' needs `buckets` and `sum`")),
    invalid("buckets_key_typo_is_one_error", """
        modules:
          m:
            metrics:
              - {name: latency_seconds, help: h, type: histogram, bukets: b, sum: s}
        """, ("4:59", "modules.m.metrics[0].bukets", "unknown key 'bukets' (did you mean 'buckets'?)")),
    invalid("histogram_type_typo_hides_the_keys_of_histograms", """
        modules:
          m:
            metrics:
              - {name: latency_seconds, help: h, type: histogramm, buckets: b, sum: s}
        """, ("4:48", "modules.m.metrics[0].type", "(did you mean 'histogram'?)")),
    invalid("summary_without_quantiles", """
        modules:
          m:
            metrics:
              - {name: rpc_seconds, help: h, type: summary, sum: s}
        """, ("4:9", "modules.m.metrics[0]", "summary metric 'rpc_seconds' needs `quantiles`")),
    invalid("histogram_with_a_value", """
        modules:
          m:
            metrics:
              - name: latency_seconds
                help: h
                type: histogram
                buckets: b
                sum: s
                value: v
                scale: 0
        """, ("9:9", "modules.m.metrics[0].value", "a histogram takes `buckets`, `sum` and `count`, not `value`"),
             ("10:16", "modules.m.metrics[0].scale", "the `scale` of a histogram must be greater than 0")),
    invalid("buckets_on_a_summary_and_quantiles_on_a_gauge", """
        modules:
          m:
            metrics:
              - {name: rpc_seconds, help: h, type: summary, quantiles: q, buckets: b, cumulative: false}
              - {name: depth, help: h, value: d, quantiles: q}
        """, ("4:67", "modules.m.metrics[0].buckets", "`buckets` is only for type histogram, not summary"),
             ("4:79", "modules.m.metrics[0].cumulative", "`cumulative` is only for type histogram, not summary"),
             ("5:42", "modules.m.metrics[1].quantiles", "`quantiles` is only for type summary, not gauge")),
    invalid("histogram_label_le_and_summary_label_quantile", """
        modules:
          m:
            metrics:
              - {name: a_seconds, help: h, type: histogram, buckets: b, sum: s, labels: {le: x}}
              - {name: b_seconds, help: h, type: summary, quantiles: q, labels: {quantile: x}}
        """, ("4:82", "modules.m.metrics[0].labels.le", "label 'le' is the histogram's own label of its buckets"),
             ("5:74", "modules.m.metrics[1].labels.quantile", "label 'quantile' is the summary's own label of its quantiles")),
    # a module's labels go on every series of its rules: the same names are taken, reported at the module's label
    invalid("module_labels_le_quantile_and_a_statesets_name", """
        modules:
          m:
            labels: {le: "'x'", quantile: "'y'", state: "'z'", zone: "'eu'"}
            metrics:
              - {name: a_seconds, help: h, type: histogram, buckets: b, sum: s}
              - {name: b_seconds, help: h, type: summary, quantiles: q}
              - {name: state, help: h, type: stateset, states: [up, down], value: s}
              - {name: c, help: h, value: c}
        """, ("3:14", "modules.m.labels.le",
              "module label 'le' is the histogram's own label of its buckets, for a_seconds (modules.m.metrics[0])"),
             ("3:25", "modules.m.labels.quantile",
              "module label 'quantile' is the summary's own label of its quantiles, for b_seconds (modules.m.metrics[1])"),
             ("3:42", "modules.m.labels.state", "module label 'state' is the stateset's own state label, for state (modules.m.metrics[2])")),
    invalid("histogram_bucket_expression_invalid", """
        modules:
          m:
            metrics:
              - {name: a_seconds, help: h, type: histogram, buckets: 'latency..b', sum: s}
        """, ("4:71", "modules.m.metrics[0].buckets", "invalid JMESPath: unexpected token '.' at position 8")),
    invalid("histogram_clashes_with_a_gauge_named_like_its_buckets", """
        modules:
          m:
            metrics:
              - {name: latency_seconds, help: h, type: histogram, buckets: b, sum: s}
              - {name: latency_seconds_bucket, help: h, value: x}
        """, ("4:16", "modules.m.metrics[0].name", "both take the name latency_seconds_bucket"),
             ("5:16", "modules.m.metrics[1].name", "both take the name latency_seconds_bucket")),
    # -- durations
    invalid("zero_duration_string", """
        modules:
          m:
            timeout: 0s
            metrics:
              - {name: a, help: h, value: x}
        """, ("3:14", "modules.m.timeout", "duration '0s' must be greater than zero")),
    invalid("zero_duration_number", """
        modules:
          m:
            endpoints:
              api: {timeout: 0}
            metrics:
              - {name: a, help: h, value: x}
        """, ("4:22", "modules.m.endpoints.api.timeout", "must be greater than 0")),
    invalid("not_a_number_duration", """
        modules:
          m:
            timeout: .nan
            metrics:
              - {name: a, help: h, value: x}
        """, ("3:14", "modules.m.timeout", "duration nan must be a finite number of seconds")),
    invalid("integer_too_large_for_a_float", f"""
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: x
                default: {"9" * 400}
        """, ("7:18", "modules.m.metrics[0].default", "number too large")),
    invalid("invalid_duration_string", """
        modules:
          m:
            timeout: 1.5s
            metrics:
              - {name: a, help: h, value: x}
        """, ("3:14", "modules.m.timeout", '"1.5s" does not match')),
]


@pytest.mark.parametrize("case", INVALID, ids=[c.id for c in INVALID])
def test_invalid_spec_is_reported_at_its_place(case: Invalid, write_spec: SpecWriter, check: Run) -> None:
    path = write_spec(case.text)
    code, out, err = check(path)
    assert code == 1, out
    assert err == ""
    errors = error_lines(out)
    assert len(errors) == len(case.errors), out
    for location, yaml_path, message in case.errors:
        prefix = f"{path}:{location}: {yaml_path}: "
        found = [line for line in errors if line.startswith(prefix)]
        assert found, f"no problem starting with {prefix!r} in:\n{out}"
        assert message.replace("SPEC", str(path)) in found[0].removeprefix(prefix), out
    assert not re.search(r": valid: \d+ module", out)


def test_unknown_key_is_reported_with_suggestion(write_spec: SpecWriter, check: Run) -> None:
    path = write_spec("""
        modules:
          m:
            metrics:
              - {name: a, help: h, value: x, lables: {}}
        """)
    code, out, _ = check(path)
    assert code == 1
    assert out == f"{path}:4:38: modules.m.metrics[0].lables: unknown key 'lables' (did you mean 'labels'?)\n"


def test_help_key_typo_is_one_error_and_no_missing_help_warning(write_spec: SpecWriter, check: Run) -> None:
    path = write_spec("""
        modules:
          m:
            metrics:
              - {name: a, hlep: h, value: x}
        """)
    code, out, _ = check(path)
    assert code == 1
    assert out == f"{path}:4:19: modules.m.metrics[0].hlep: unknown key 'hlep' (did you mean 'help'?)\n"


def test_invalid_jmespath_in_a_literal_block_points_at_the_line_of_the_expression(write_spec: SpecWriter, check: Run) -> None:
    path = write_spec("""
        modules:
          m:
            metrics:
              - name: a
                help: h
                value: |
                  items[?ready]
                    | [*].count ..
        """)
    code, out, _ = check(path)
    assert code == 1
    [line] = error_lines(out)
    assert line.startswith(f"{path}:8:26: modules.m.metrics[0].value: invalid JMESPath: unexpected token '.'"), line


def test_all_problems_of_a_file_are_reported_in_one_run(write_spec: SpecWriter, check: Run) -> None:
    path = write_spec("""
        modules:
          web:
            timeout: 0s
            metrics:
              - name: 1bad
                help: h
                value: x
              - name: ok
                help: h
                value: "a..b"
          db:
            endpoints:
              api: {url: "{target}/{nope}"}
            metrics:
              - name: db_up
                help: h
                value: up
                lables: {}
              - name: probe_db
                help: h
                value: up
        """)
    code, out, _ = check(path)
    assert code == 1
    errors = error_lines(out)
    assert [line.split(": ")[0].removeprefix(f"{path}:") for line in errors] == ["3:14", "5:15", "10:19", "13:28", "18:9", "19:15"], out
    assert [line.split(": ")[1] for line in errors] == [
        "modules.web.timeout",
        "modules.web.metrics[0].name",
        "modules.web.metrics[1].value",
        "modules.db.endpoints.api.url",
        "modules.db.metrics[0].lables",
        "modules.db.metrics[1].name",
    ]


def test_problems_of_several_files_are_all_reported(write_spec: SpecWriter, check: Run) -> None:
    bad = write_spec("modules: {}\n", "bad.yml")
    good = write_spec("modules: {m: {metrics: [{name: a, help: h, value: x}]}}\n", "good.yml")
    code, out, _ = check(bad, good)
    assert code == 1
    assert out.splitlines() == [f"{bad}:1:10: modules: must not be empty", f"{good}: valid: 1 module(s), 1 metric rule(s), 0 warning(s)"]


# -- warnings ---------------------------------------------------------------------------------------

WARNINGS = [
    ("counter_without_total", "{name: requests, type: counter, help: h, value: n}", "4:16", "modules.m.metrics[0].name",
     "counter 'requests' should end with _total"),
    ("missing_help", "{name: jobs, value: n}", "4:16", "modules.m.metrics[0].name", "metric 'jobs' has no help"),
    ("unit_milliseconds", "{name: latency_ms, help: h, value: n}", "4:16", "modules.m.metrics[0].name",
     "metric name 'latency_ms': `promtool check metrics` fails on it (metric names should not contain abbreviated units): "
     "_ms: use the base unit: _seconds, converted with `scale: 0.001`"),
    ("label_job", "{name: jobs, help: h, value: n, labels: {job: name}}", "4:50", "modules.m.metrics[0].labels.job",
     "label 'job' is set by Prometheus on every scraped series: it renames this one exported_job, unless the scrape config sets honor_labels: true"),
    ("label_instance", "{name: jobs, help: h, value: n, labels: {instance: host}}", "4:50", "modules.m.metrics[0].labels.instance",
     "label 'instance' is set by Prometheus on every scraped series: it renames this one exported_instance, "
     "unless the scrape config sets honor_labels: true"),
    ("unit_missing", "{name: request_duration, help: h, value: n}", "4:16", "modules.m.metrics[0].name",
     "metric name 'request_duration': add a unit suffix, e.g. _seconds"),
    ("unit_in_values_suffix", "{name: disk, help: h, values: {used_percent: u}}", "4:40", "modules.m.metrics[0].values.used_percent",
     "metric name 'disk_used_percent': use a ratio from 0 to 1 with the suffix _ratio"),
]


@pytest.mark.parametrize(("rule", "location", "yaml_path", "message"), [w[1:] for w in WARNINGS], ids=[w[0] for w in WARNINGS])
def test_warning_is_printed_and_exits_zero_unless_strict(rule: str, location: str, yaml_path: str, message: str,
                                                         write_spec: SpecWriter, check: Run) -> None:
    path = write_spec(f"""
        modules:
          m:
            metrics:
              - {rule}
        """)
    code, out, _ = check(path)
    assert code == 0, out
    assert out.splitlines() == [f"{path}:{location}: {yaml_path}: warning: {message}", f"{path}: valid: 1 module(s), 1 metric rule(s), 1 warning(s)"]

    code, out, _ = check("--strict", path)
    assert code == 1, out
    assert warning_lines(out) == [f"{path}:{location}: {yaml_path}: warning: {message}"]
    assert not re.search(r": valid: \d+ module", out)


def test_module_labels_named_like_target_labels_are_warned_about(write_spec: SpecWriter, check: Run) -> None:
    path = write_spec("""
        modules:
          m:
            labels: {instance: "{target}", job: api, zone: eu}
            metrics:
              - {name: a, help: h, value: x}
        """)
    code, out, _ = check(path)
    assert code == 0, out
    assert [line.split(": warning: ")[0] for line in warning_lines(out)] == [f"{path}:3:14: modules.m.labels.instance", f"{path}:3:36: modules.m.labels.job"]
    assert "it renames this one exported_job, unless the scrape config sets honor_labels: true" in out


def test_clean_spec_exits_zero_even_when_strict(write_spec: SpecWriter, check: Run) -> None:
    path = write_spec("""
        modules:
          m:
            metrics:
              - {name: requests_total, type: counter, help: Requests served, value: n}
        """)
    for args in ((path,), ("--strict", path)):
        code, out, _ = check(*args)
        assert code == 0
        assert out == f"{path}: valid: 1 module(s), 1 metric rule(s), 0 warning(s)\n"


# -- unreadable files, usage, hostile input ----------------------------------------------------------

def test_missing_file_exits_2(tmp_path: Path, check: Run) -> None:
    missing = tmp_path / "nope.yml"
    code, out, err = check(missing)
    assert code == 2
    assert out == ""
    assert err == f"{missing}: cannot read: No such file or directory\n"


def test_a_fifo_nobody_writes_is_unreadable_and_its_stuck_reads_share_one_thread(tmp_path: Path, check: Run) -> None:
    fifo = tmp_path / "spec.yml"
    os.mkfifo(fifo)
    code, out, err = check(fifo)
    assert (code, out) == (2, "")
    assert err == f"{fifo}: cannot read: no answer within 2s (a FIFO or device nobody writes, or a hung mount?)\n"
    for _ in range(3):  # as auto-reload would, every few seconds
        with pytest.raises(OSError, match="no answer within"):
            read_spec_text(str(fifo), timeout=0.05)
    waiting = [t for t in threading.enumerate() if t.name == f"config-file {fifo}"]
    assert len(waiting) == 1 and waiting[0].daemon
    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a writer that writes nothing: the reader sees the end
    waiting[0].join(30)
    assert not waiting[0].is_alive()


@pytest.mark.parametrize(("first", "second"), [(100, 10), (10, 100)])
def test_a_read_in_flight_is_shared_only_by_callers_asking_the_same_limit(tmp_path: Path, first: int, second: int) -> None:
    from jsonexporter.spec.sources import read_bounded_bytes

    fifo = tmp_path / "secret"
    os.mkfifo(fifo)
    got: dict[int, bytes | OSError] = {}

    def read(limit: int) -> None:
        try:
            got[limit] = read_bounded_bytes(str(fifo), limit, timeout=60)
        except OSError as exc:
            got[limit] = exc

    callers = [threading.Thread(target=read, args=(first,))]
    callers[0].start()
    pause = threading.Event()  # never set: a bounded wait between polls
    for _ in range(600):  # until the first caller's read waits for a writer
        if any(t.name == f"config-file {fifo}" for t in threading.enumerate()):
            break
        pause.wait(0.05)
    callers.append(threading.Thread(target=read, args=(second,)))
    callers[1].start()
    for _ in range(100):  # the second caller's own read; none when it shares the first's, which waits for the writer
        if len([t for t in threading.enumerate() if t.name == f"config-file {fifo}"]) == 2:
            break
        pause.wait(0.05)
    readers = [t for t in threading.enumerate() if t.name == f"config-file {fifo}"]
    with open(fifo, "wb") as writer:
        writer.write(b"x" * 50)  # within the larger limit, beyond the smaller
    for _ in range(1200):  # a reader that opened the FIFO after that writer closed it: the end of a writer of nothing
        if not any(caller.is_alive() for caller in callers):
            break
        with contextlib.suppress(OSError):  # ENXIO: no reader has it open yet
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pause.wait(0.05)
    assert not any(t.is_alive() for t in callers + readers)
    small, large = got[10], got[100]
    # each caller within its own limit: the small one never has more than it asked for, the large one is never refused
    assert (isinstance(small, OSError) and small.strerror == "larger than 10 bytes") or (isinstance(small, bytes) and len(small) <= 10), small
    assert isinstance(large, bytes), large


def test_lone_surrogates_in_spec_literals_are_refused_where_they_are_written_and_a_pair_is_its_character() -> None:
    text = textwrap.dedent("""\
        modules:
          m:
            labels: {site: "x\\udc00"}
            metrics:
              - {name: a, help: "h\\ud800", value: v}
              - {name: b, help: "\\ud83d\\ude00 ok", value: v, labels: {k: "`\\"\\udfff\\"`"}}
        """)
    spec, problems = load_text(text, "spec.yml")
    assert spec is None
    assert [(p.line, p.column, format_path(p.path), p.message.partition(" (")[0]) for p in problems] == [
        (3, 22, "modules.m.labels.site", "a lone surrogate escape"),  # at the escape's backslash, not naming it
        (5, 27, "modules.m.metrics[0].help", "a lone surrogate escape"),
        (6, 70, "modules.m.metrics[1].labels.k", "a lone surrogate escape"),
    ]
    spec, problems = load_text("modules:\n  m:\n    metrics: [{name: b, help: \"\\ud83d\\ude00 ok\", value: v}]\n", "spec.yml")
    assert spec is not None and problems == [] and spec.modules["m"].metrics[0].help == "\U0001f600 ok"


def test_a_directory_without_spec_files_exits_2_saying_so(tmp_path: Path, check: Run) -> None:
    (tmp_path / "notes.txt").write_text("modules: {}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.yml").write_text("modules: {}\n")  # not read: subdirectories are not
    code, out, err = check(tmp_path)
    assert code == 2
    assert out == ""
    assert err == f"{tmp_path}: no spec in this directory: it holds no *.yml or *.yaml file (subdirectories are not read)\n"


def test_unreadable_file_wins_over_an_invalid_one(tmp_path: Path, write_spec: SpecWriter, check: Run) -> None:
    code, out, _ = check(write_spec("modules: {}\n"), tmp_path / "nope.yml")
    assert code == 2
    assert ": modules: must not be empty" in out


def test_check_without_files_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["check"])
    assert exited.value.code == 2
    assert "the following arguments are required: FILE" in capsys.readouterr().err


def _laughs() -> str:
    lines = ['l0: &l0 ["ha", "ha", "ha", "ha", "ha", "ha", "ha", "ha", "ha"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


NASTY: list[tuple[str, bytes, int, str]] = [
    ("binary_garbage", bytes(range(256)) * 4, 2, "cannot read: 'utf-8' codec can't decode"),
    ("control_characters", b"modules:\n  m: {metrics: [{name: a\x01b}]}\n", 1, "2:25: <root>: invalid YAML: unacceptable character (a control character other"),
    ("top_level_list", b"- modules\n- metrics\n", 1, "1:1: <root>: expected a mapping, got list"),
    ("top_level_scalar", b"just text\n", 1, "1:1: <root>: expected a mapping, got a text (not shown: the whole file's)"),
    ("billion_laughs", _laughs().encode(), 1, "document too large or too deep"),
    ("nested_flow_lists_200", b"[" * 200 + b"]" * 200 + b"\n", 1, "document too large or too deep"),
    ("nested_block_lists_200", b"".join(b"  " * i + b"-\n" for i in range(200)), 1, "document too large or too deep"),
    ("nested_flow_mappings_5000", b"{a: " * 5000 + b"}" * 5000 + b"\n", 1, "1:258: <root>: document too large or too deep"),  # where level 65 starts
    ("key_is_a_list", b"? [a]\n: b\nmodules: {m: {metrics: [{name: a, help: h, value: x}]}}\n", 1, "1:3: <root>: mapping keys must be plain scalars"),
    ("unknown_tag", b"modules: !!python/name:os.system x\n", 1, "1:10: modules: unknown tag (not shown: it may be a value "
     "that starts with `!`, written without quotes): nothing is made from tags"),
    ("explicit_tag_the_value_does_not_fit", b"modules: {m: {timeout: !!int abc, metrics: [{name: a, help: h, value: x}]}}\n", 1,
     "1:24: modules.m.timeout: the value (not shown) is not a valid !!int"),
]


@pytest.mark.parametrize(("content", "expected_code", "expected"), [n[1:] for n in NASTY], ids=[n[0] for n in NASTY])
def test_hostile_input_gives_a_message_never_a_traceback(content: bytes, expected_code: int, expected: str,
                                                         write_spec: SpecWriter, check: Run) -> None:
    path = write_spec(content)
    code, out, err = check(path)
    assert code == expected_code, out + err
    assert "Traceback" not in out + err
    assert expected in out + err
    for line in (out + err).splitlines():
        assert line.startswith(f"{path}:"), line


BROKEN_YAML_BASE = """\
modules:
  m:
    parameters:
      region: {default: eu, pattern: '[a-z]+'}
    endpoints:
      api: {url: "{target}/api", headers: {Accept: application/json}}
    metrics:
      - name: jobs_waiting
        help: "Jobs waiting"
        each: [{path: queues, as: q}, items]
        value: waiting
        labels:
          queue: $q.key
      - {name: up, help: h, value: '`1`'}
"""


# how PyYAML's parser talks, not a user
PARSER_WORDS = re.compile(r"while (parsing|scanning)|'<[a-z ]+>'|not allowed here|could not find expected")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(["delete", "\t", " ", "  ", "'", '"', ":", "- ", "{", "]", "\n"])),
                min_size=1, max_size=3))
def test_broken_yaml_gives_located_problems_never_a_traceback(edits: list[tuple[int, str]]) -> None:
    text = BROKEN_YAML_BASE
    for position, edit in edits:
        at = position % (len(text) + 1)
        text = text[:at] + text[at + 1 :] if edit == "delete" else text[:at] + edit + text[at:]
    _, problems = load_text(text, "f.yml")
    for p in problems:
        assert 1 <= p.line <= text.count("\n") + 1 and p.column >= 1, p
        assert re.fullmatch(r"f\.yml:\d+:\d+: \S.*", str(p)) and "\n" not in str(p), p
        assert not PARSER_WORDS.search(p.message), f"{p} for:\n{text}"


# credential places of a spec, each with `{}` where the credential is written as it is, without quotes (a module
# secret's value is a {file}/{env} mapping: there a pasted password is the mistake, and two of them share an anchor)
CREDENTIAL_PLACES = [
    "    http_client_config:\n      basic_auth:\n        username: u\n        password: {}\n",
    "    http_client_config: {{basic_auth: {{username: u, password: {}}}}}\n",
    "    http_client_config:\n      oauth2:\n        client_id: c\n        client_secret: {}\n        token_url: 'http://127.0.0.1:9/'\n",
    "    endpoints:\n      api:\n        url: 'http://127.0.0.1:9/'\n        headers:\n          Authorization: {}\n",
    "    secrets:\n      a: {}\n      b: {}\n",
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CREDENTIAL_PLACES), st.sampled_from(["!", "!!", "*", "&", "!<", "&a ", "*a", "!a!", "@", "%"]),
       st.text("abcXYZ019-_", min_size=6, max_size=12), st.sampled_from(["", " x", "!", "§", "<", "!x", ":", "}", "]", "%zz", "'"]))
def test_a_credential_that_yaml_reads_as_a_token_is_never_quoted_in_a_problem(place: str, start: str, name: str, end: str) -> None:
    """A password written without quotes that starts with an indicator is a tag, an alias or an anchor to YAML,
    never a value the Redactor learns: no problem of the file shows it, whichever token PyYAML stops at."""
    secret = f"Zq{name}"
    text = "modules:\n  m:\n    targets: {allow: ['http://127.0.0.1:9']}\n" + place.format(*[f"{start}{secret}{end}"] * 2) + \
        "    metrics: [{name: x, help: x, value: v}]\n"
    _, problems = load_text(text, "f.yml")
    for p in problems:
        assert secret not in str(p), f"{p} for:\n{text}"


# -- the schema ---------------------------------------------------------------------------------------

DRAFT7_KEYWORDS = frozenset({
    "$schema", "$id", "$ref", "$comment", "title", "description", "default", "examples", "readOnly", "writeOnly",
    "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "format", "contentMediaType", "contentEncoding",
    "items", "additionalItems", "maxItems", "minItems", "uniqueItems", "contains",
    "maxProperties", "minProperties", "required", "properties", "patternProperties", "additionalProperties",
    "dependencies", "propertyNames", "if", "then", "else", "allOf", "anyOf", "oneOf", "not", "definitions",
})
_NAMED_SCHEMAS = ("properties", "patternProperties", "definitions", "$defs", "dependencies")
_ONE_SCHEMA = ("additionalProperties", "additionalItems", "propertyNames", "contains", "not", "if", "then", "else", "items")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "items", "prefixItems")


def subschemas(schema: Any) -> Iterator[dict[str, Any]]:
    """Every schema object in `schema`, itself included (values of enum, required... are not schemas)."""
    if not isinstance(schema, dict):
        return
    yield schema
    for keyword, value in schema.items():
        if keyword in _NAMED_SCHEMAS and isinstance(value, dict):
            for sub in value.values():
                yield from subschemas(sub)
        elif keyword in _ONE_SCHEMA and isinstance(value, dict):
            yield from subschemas(value)
        elif keyword in _SCHEMA_LISTS and isinstance(value, list):
            for sub in value:
                yield from subschemas(sub)


def test_schema_is_valid_for_draft_2020_12_and_draft_7() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_schema_uses_only_draft_7_keywords() -> None:
    used = {keyword for schema in subschemas(SCHEMA) for keyword in schema}
    assert used - DRAFT7_KEYWORDS == set()
    assert {"properties", "additionalProperties", "definitions", "$ref", "propertyNames"} <= used  # the walk went deep


def test_schema_walk_finds_keywords_beyond_draft_7() -> None:
    newer = {"type": "object", "$defs": {"a": {"prefixItems": [{"unevaluatedProperties": False}]}}}
    assert {k for s in subschemas(newer) for k in s} - DRAFT7_KEYWORDS == {"$defs", "prefixItems", "unevaluatedProperties"}


def test_every_property_has_a_description() -> None:
    missing = [
        name
        for schema in subschemas(SCHEMA)
        for name, sub in schema.get("properties", {}).items()
        if not (isinstance(sub, dict) and sub.get("description", "").strip())
    ]
    assert missing == []
    assert sum(len(s.get("properties", {})) for s in subschemas(SCHEMA)) > 20


def test_schema_command_prints_the_schema_file_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == SCHEMA_FILE.read_text(encoding="utf-8")


def test_packaged_schema_is_the_schema_file() -> None:
    packaged = resources.files("jsonexporter.spec").joinpath("jsonexporter.schema.json").read_text(encoding="utf-8")
    assert packaged == SCHEMA_FILE.read_text(encoding="utf-8")


# -- schema and loader agree --------------------------------------------------------------------------

# messages only the schema layer produces; semantic checks never word a problem like this
SCHEMA_MESSAGES = re.compile(
    r"^(unknown key |expected |missing required key |must not be empty$|must be greater than -?\d|invalid (module name|label name|parameter name|"
    r"endpoint name|value suffix|name) )|( does not match \^| is not one of | is (less|greater) than (or equal to )?the (minimum|maximum) "
    r"| has non-unique elements)"
)

# shaped to pass the schema (semantic mistakes included); `spec_documents` then breaks some of them
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)


def mostly(good: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(good, good, good, good, good, good, other)


EXPRESSIONS = mostly(
    st.sampled_from(["a", "a.b", "items[*].v", "@", "$key", "$root.x", "$params.p", "length(@)", "to_number(v)"]),
    st.one_of(st.sampled_from(["nope(a)", "$lvl.key", "$nope"]), st.text(alphabet="ab$.[]()|&*?@'\"`= {}:,!<>", min_size=1, max_size=10)),
)
TEMPLATES = mostly(st.sampled_from(["{target}", "{target}/x?m={module}", "https://x/{p}", "{{x}}"]), st.text(alphabet="ab{}/:?=.", max_size=10))
DURATIONS = mostly(st.one_of(st.sampled_from(["10s", "1m30s", "500ms", "1h"]), st.integers(1, 30), st.floats(0.001, 30)), st.sampled_from(["0s", "0ms"]))
JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 700), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)

LEVELS = st.one_of(EXPRESSIONS, st.fixed_dictionaries({}, optional={"path": EXPRESSIONS, "as": st.sampled_from(["lvl", "root", "n"]),
                                                                    "optional": st.booleans()}))
METRICS = st.fixed_dictionaries(
    {"name": mostly(NAMES, st.sampled_from(["probe_x", "a_info", "x_total", "latency_ms"])), "value": EXPRESSIONS},
    optional={
        "help": st.text(max_size=5),
        "type": mostly(st.sampled_from(["gauge", "counter", "untyped"]), st.sampled_from(["info", "stateset", "histogram", "summary"])),
        "endpoint": mostly(st.sampled_from(["default", "a", "b"]), st.just("zz")),
        "each": st.one_of(EXPRESSIONS, st.lists(LEVELS, min_size=1, max_size=2)),
        "values": st.dictionaries(st.sampled_from(["up", "total", "size_mb"]), EXPRESSIONS, min_size=1, max_size=2),
        "labels": st.dictionaries(mostly(st.sampled_from(["id", "pod"]), st.sampled_from(["__x", "instance"])), EXPRESSIONS, max_size=2),
        "value_map": st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        "default": st.floats(allow_nan=False, allow_infinity=False),
        "timestamp": EXPRESSIONS,
        "timestamp_unit": st.sampled_from(["seconds", "milliseconds"]),
        "states": st.lists(st.one_of(st.text(max_size=3), st.integers()), min_size=1, max_size=3, unique=True),
        "duplicates": st.sampled_from(["first", "last", "sum"]),
        "buckets": EXPRESSIONS,
        "cumulative": st.booleans(),
        "quantiles": EXPRESSIONS,
        "sum": EXPRESSIONS,
        "count": EXPRESSIONS,
    },
)
ENDPOINTS = st.fixed_dictionaries({}, optional={
    "url": TEMPLATES,
    "method": st.sampled_from(["GET", "POST"]),
    "headers": st.dictionaries(mostly(st.sampled_from(["Accept", "X-Key"]), st.just("bad header")), TEMPLATES, max_size=2),
    "params": st.dictionaries(NAMES, TEMPLATES, max_size=2),
    "body": st.one_of(TEMPLATES, st.dictionaries(NAMES, st.one_of(TEMPLATES, st.integers(), st.lists(TEMPLATES, max_size=2)), max_size=2)),
    "timeout": DURATIONS,
    "valid_status_codes": st.lists(st.integers(100, 599), min_size=1, max_size=2),
    "max_response_bytes": st.integers(1, 10),
    "pagination": st.fixed_dictionaries({
        "items": mostly(st.sampled_from(["@", "values", "data.values"]), st.sampled_from(["values[0]", "$root.x", "a |"])),
        "next": st.dictionaries(st.sampled_from(["link_header", "field", "cursor", "param", "page_param", "start"]),
                                st.one_of(EXPRESSIONS, st.integers(0, 3)), min_size=1, max_size=3),
    }, optional={"max_pages": st.integers(0, 1001)}),
})
MODULES = st.fixed_dictionaries(
    {"metrics": st.lists(METRICS, min_size=1, max_size=3)},
    optional={
        "timeout": DURATIONS,
        "labels": st.dictionaries(mostly(st.just("instance"), st.just("__x")), TEMPLATES, max_size=2),
        "parameters": st.dictionaries(
            mostly(st.sampled_from(["p", "q"]), st.sampled_from(["target", "debug"])),
            st.fixed_dictionaries({}, optional={
                "default": st.text(alphabet="abC1", max_size=3),
                "pattern": mostly(st.just(".*"), st.sampled_from(["[a-z]+", "[a-"])),
            }),
            max_size=2,
        ),
        "endpoints": st.dictionaries(st.sampled_from(["default", "a", "b"]), ENDPOINTS, min_size=1, max_size=2),
    },
)
DOCUMENTS = st.fixed_dictionaries({"modules": st.dictionaries(NAMES, MODULES, min_size=1, max_size=2)},
                                   optional={"x-fragments": JUNK})  # extension fields: ignored by both


def spec_documents() -> st.SearchStrategy[Any]:
    """Spec-shaped documents: mostly right, then a few random breakages (extra keys, wrong types)."""
    return broken_documents(DOCUMENTS, ["extra", "lables", "valeu", "path", "name"], JUNK)


@pytest.mark.filterwarnings("ignore:deprecated string literal syntax:PendingDeprecationWarning")  # jmespath, on `foo` literals
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_documents())
def test_loader_agrees_with_the_schema(doc: Any) -> None:
    text = yaml.safe_dump(doc, sort_keys=False)
    assert yaml.safe_load(text) == doc  # the loader sees what the schema sees
    schema_errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc))

    spec, problems = load_text(text, "f.yml")  # never raises
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        assert re.fullmatch(r"f\.yml:\d+:\d+: \S.*", str(p)) and "\n" not in str(p)

    event(f"schema {'rejects' if schema_errors else 'accepts'}, loader {'rejects' if errors else 'accepts'}")
    if schema_errors:
        assert spec is None
        for e in schema_errors:
            where = tuple(e.absolute_path)
            assert any(p.path[: len(where)] == where for p in errors), f"{e.message} at {where} not reported: {problems}"
    else:
        assert [p for p in errors if SCHEMA_MESSAGES.search(p.message)] == []
        assert (spec is None) == bool(errors)


def test_credentials_sent_to_a_host_from_the_target_need_an_allowlist(write_spec: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_spec("""
        modules:
          github:
            endpoints:
              repo: {url: '{target}/repos', headers: {Authorization: 'Bearer x'}}
            metrics: [{name: x, help: x, value: v}]
          fixed_host:
            endpoints:
              repo: {url: 'https://api.example.com/{target}', headers: {Authorization: 'Bearer x'}}
            metrics: [{name: x, help: x, value: v}]
          allowed:
            targets: {allow: ['https://api\\.example\\.com']}
            endpoints:
              repo: {url: '{target}/repos', params: {api_key: k}}
            metrics: [{name: x, help: x, value: v}]
        """)
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    errors = [line for line in out if "credentials" in line]
    assert errors == [f"{path}:4:62: modules.github.endpoints.repo.headers.Authorization: endpoint repo sends credentials (header Authorization) "
                      "to the host of the target: declare `targets: {allow: [...]}` in the module so they can only be sent to the hosts you mean"]


def test_the_credentials_error_names_only_the_placeholders_that_pick_the_host(write_spec: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A placeholder in a URL's userinfo picks no host (the host follows the URL's last @): the error names the
    target, or the parameters in the scheme, host or port, and a fixed host with a caller's userinfo is no error."""
    path = write_spec("""
        modules:
          target:
            parameters: {user: {}, pw: {}}
            endpoints:
              api: {url: 'http://{user}:{pw}@{target}/stats'}
            metrics: [{name: x, help: x, value: v}]
          node:
            parameters: {user: {}, pw: {}, node: {}}
            endpoints:
              api: {url: 'http://{user}:{pw}@{node}:8080/stats'}
            metrics: [{name: x, help: x, value: v}]
          fixed_host:
            parameters: {user: {}, pw: {}}
            endpoints:
              api: {url: 'https://{user}:{pw}@api.example.com/stats', headers: {Authorization: 'Bearer x'}}
            metrics: [{name: x, help: x, value: v}]
        """)
    assert main(["check", str(path)]) == 1
    errors = [line for line in capsys.readouterr().out.splitlines() if "credentials" in line]
    assert errors == [
        f"{path}:5:26: modules.target.endpoints.api.url: endpoint api sends credentials (the URL's userinfo) to the host of the target: "
        "declare `targets: {allow: [...]}` in the module so they can only be sent to the hosts you mean",
        f"{path}:10:26: modules.node.endpoints.api.url: endpoint api sends credentials (the URL's userinfo) to a host taken from {{node}}: "
        "declare `targets: {allow: [...]}` in the module so they can only be sent to the hosts you mean",
    ]


def test_allowlist_patterns_must_compile(write_spec: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_spec("""
        modules:
          default:
            targets: {allow: ['http://(a']}
            metrics: [{name: x, help: x, value: v}]
        """)
    assert main(["check", str(path)]) == 1
    expected = f"{path}:3:24: modules.default.targets.allow[0]: invalid regex 'http://(a': missing ): http://(a"
    assert expected in capsys.readouterr().out


def test_yaml_1_1_words_stay_strings(write_spec: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_spec("""
        modules:
          default:
            metrics:
              - {name: switch_on, help: s, value: state, value_map: {on: 1, off: 0, yes: 1, no: 0}}
              - {name: mode, help: m, type: stateset, value: m, states: [on, off]}
        """)
    assert main(["check", "--strict", str(path)]) == 0
    from jsonexporter.spec import load_spec

    metrics = load_spec(str(path)).modules["default"].metrics
    assert dict(metrics[0].value_map) == {"on": 1.0, "off": 0.0, "yes": 1.0, "no": 0.0}
    assert metrics[1].states == ("on", "off")


@pytest.mark.parametrize(("metric", "warning"), [
    ("{name: queue_size_total, help: h, value: v}", "metric name 'queue_size_total': `promtool check metrics` fails on it "
     "(non-counter metrics should not have \"_total\" suffix): make it a counter, or drop the suffix"),
    ("{name: requests_gauge, help: h, value: v}", "(metric name should not include type 'gauge'): drop the type from the name"),
    ("{name: 'node:cpu_ratio', help: h, value: v}", "metric name 'node:cpu_ratio': `promtool check metrics` fails on it "
     "(metric names should not contain ':'): colons are for the names of recording rules"),
    ("{name: fooBar, help: h, value: v}", "(metric names should be written in 'snake_case' not 'camelCase'): write it in snake_case"),
    ("{name: cache_kilobytes, help: h, value: v}", "metric name 'cache_kilobytes': `promtool check metrics` fails on it "
     "(use base unit \"bytes\" instead of \"kilobytes\"): use the base unit: _bytes, converted with `scale: 1000`"),
    ("{name: uptime_minutes, help: h, value: v}", "(use base unit \"seconds\" instead of \"minutes\"): use the base unit: _seconds, "
     "converted with `scale: 60`"),
    ("{name: wait_sec, type: counter, help: h, value: v}", "metric name 'wait_sec_total': `promtool check metrics` fails on it "
     "(metric names should not contain abbreviated units): _sec: use the base unit: _seconds"),
    ("{name: x, help: h, value: v, labels: {httpCode: c}}", "label 'httpCode': `promtool check metrics` fails on it "
     "(label names should be written in 'snake_case' not 'camelCase'): write it in snake_case"),
    ("{name: appState, help: h, type: stateset, value: v, states: [a]}", "the state label 'appState' of the stateset: "
     "`promtool check metrics` fails on it (label names should be written in 'snake_case' not 'camelCase')"),
    ("{name: x, help: h, value: v, labels: {quantile: q}}", "label 'quantile' is for histograms and summaries"),
    ("{name: x, help: h, value: v}\n    labels: {le: \"'1'\"}", "module label 'le' is for histograms and summaries; Prometheus tools "
     "treat it specially: `promtool check metrics` fails on it (non-histogram metrics should not have \"le\" label), for x (modules.default.metrics[0])"),
])
def test_promtool_lints_are_warnings(write_spec: Any, capsys: pytest.CaptureFixture[str], metric: str, warning: str) -> None:
    path = write_spec(f"modules:\n  default:\n    metrics:\n      - {metric}\n")
    assert main(["check", str(path)]) == 0
    assert warning in capsys.readouterr().out
    assert main(["check", "--strict", str(path)]) == 1


def test_http_client_config_problems_are_located(write_spec: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write_spec(f"""
        modules:
          default:
            targets: {{allow: ['https://api\\\\.example\\\\.com']}}
            http_client_config:
              basic_auth: {{username: u, password: p, password_file: {tmp_path}/pw}}
              bearer_token: t
              tls_config: {{ca_file: {tmp_path}/ca.pem, cert_file: {tmp_path}/c.pem}}
              proxy_url: socks5://proxy:1080
            endpoints:
              main: {{url: '{{target}}', stale_if_error: 5m}}
            metrics: [{{name: x, help: x, value: v}}]
        """)
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    expected = [
        f"{path}:5:46: modules.default.http_client_config.basic_auth.password_file: use either password or password_file, not both",
        f"{path}:6:7: modules.default.http_client_config.bearer_token: use one authentication method, not basic_auth and bearer_token",
        f"{path}:7:19: modules.default.http_client_config.tls_config: cert_file and key_file go together",
        f"{path}:7:29: modules.default.http_client_config.tls_config.ca_file: warning: file '{tmp_path}/ca.pem' does not exist (yet)",
        f"{path}:8:18: modules.default.http_client_config.proxy_url: proxy_url must be an http:// or https:// URL",
        f"{path}:10:31: modules.default.endpoints.main.stale_if_error: stale_if_error needs cache_ttl",
    ]
    for line in expected:
        assert line in out, (line, out)


def test_a_proxy_url_aiohttp_or_the_resolver_cannot_use_is_an_error_at_its_place(write_spec: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_spec("""
        modules:
          port:
            http_client_config: {proxy_url: 'http://u:pw-SECRET@127.0.0.1:99999'}
            metrics: [{name: x, help: x, value: v}]
          label:
            http_client_config: {proxy_url: 'http://a..b:3128'}
            metrics: [{name: x, help: x, value: v}]
        """)
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert (f"{path}:3:37: modules.port.http_client_config.proxy_url: proxy_url is not a usable URL: "
            "its port '99999' is not a number from 0 to 65535") in out, out
    assert (f"{path}:6:37: modules.label.http_client_config.proxy_url: proxy_url is not a usable URL: its host 'a..b' is not a valid name "
            "(it has no DNS form: label empty or too long)") in out, out
    assert "pw-SECRET" not in out


def test_check_never_prints_inline_secrets(write_spec: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_spec("""
        modules:
          default:
            http_client_config:
              basic_auth: {username: u, password: 123456789}
              oauth2: {client_id: c, client_secret: [s3cr3t-value], token_url: 'ftp://x'}
            metrics: [{name: x, help: x, value: v}]
        """)
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "basic_auth.password: expected a string" in out and "not shown: it is a secret" in out
    assert "123456789" not in out and "s3cr3t-value" not in out


def test_a_wildcard_in_an_allowlists_host_is_a_warning_at_its_place(write_spec: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_spec(r"""
        modules:
          default:
            targets: {allow: ['https://.+\.example\.com', 'https://[a-z0-9-]+\.example\.com', 'https?://.*', 'https://api\.example\.com.*',
                              'https://api\.example\.com(:443)?.*']}
            metrics: [{name: x, help: x, value: v}]
        """)
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}:3:32: modules.default.targets.allow[0]: warning: this wildcard in the host matches '/', '?', '#', '@' or '.' too" in out
    assert f"{path}:3:128: modules.default.targets.allow[3]: warning: this wildcard in the host" in out  # api.example.com.evil.test
    assert f"{path}:4:56: modules.default.targets.allow[4]: warning: this wildcard in the host" in out  # the optional port left out
    assert f"{path}:3:97: modules.default.targets.allow[2]: warning: this pattern lets every host through ('https://evil.test/' too)" in out
    assert "allow[1]" not in out  # the host's characters
    assert main(["check", "--strict", str(path)]) == 1


# (pattern, where the warning points or None, a URL to another host that the pattern lets through, or one it holds back)
HOST_PATTERNS = [
    (r"https://api\.example\.com(:443)?.*", 32, "https://api.example.com.evil.test"),  # the optional port left out
    (r"https://api\.example\.com(?::443)?.*", 34, "https://api.example.com.evil.test"),
    (r"https://api\.example\.com(:\d+)?.*", 32, "https://api.example.com.evil.test"),
    (r"https://api\.example\.com(:443){0,1}.*", 36, "https://api.example.com.evil.test"),
    (r"https://api\.example\.com(:443|)/?.*", 34, "https://api.example.com.evil.test/"),
    (r"https://api\.example\.com/?.*", 27, "https://api.example.com.evil.test/"),  # an optional path slash
    (r"https://api\.example\.com\.?.*", 28, "https://api.example.com.evil.test"),
    (r"https://api\.example\.com[a-z.]*", 25, "https://api.example.com.evil.test"),
    (r"https://a\.example\.com|https://api\.example\.com.*", 49, "https://api.example.com.evil.test"),  # the second alternative
    (r"https://\S+\.example\.com", 8, "https://evil.test/x.example.com"),
    (r"https://(.*\.)?example\.com", 9, "https://evil.test/x.example.com"),
    (r"https://[^@]+\.example\.com", 8, "https://evil.test/x.example.com"),
    (r"(?i)https://API\.example\.com.*", 29, "https://api.example.com.evil.test"),
    (r"https://\Qapi.example.com\E.*", 27, "https://api.example.com.evil.test"),
    (r"https://api\.example\.com(:[0-9]+)?/.*", None, "https://api.example.com.evil.test/"),  # the port or the path ends the host
    (r"https://api\.example\.com(:443)?(/.*)?", None, "https://api.example.com.evil.test/x"),
    (r"https://api\.example\.com:443.*", None, "https://api.example.com:443@evil.test/"),  # userinfo: the spellings have none
    (r"https://[^/]+\.example\.com/.*", None, "https://evil.test?.example.com/"),  # the spelling has a / before the query
    (r"https://([^@/]+@)?pve[0-9]+\.internal:8006", None, "https://evil.test?@pve1.internal:8006"),
    (r"https://[a-z0-9.-]+\.example\.com(/.*)?", None, "https://evil.test/.example.com/"),
    (r".*\.example\.com", 0, "https://evil.test/x.example.com"),  # no scheme: a whole URL with the host in its path
    (r".*\.example\.com/.*", 0, "https://evil.test/.example.com/"),
]

# (pattern, where the warning points or None, a target written without a scheme, the URL that `https://{target}/v1` makes of it)
SCHEMELESS_HOST_PATTERNS = [
    (r"api\.example\.com.*", 17, "api.example.com.evil.test", "https://api.example.com.evil.test/v1"),
    (r"https://a\.example\.com|api\.example\.com.*", 41, "api.example.com.evil.test", "https://api.example.com.evil.test/v1"),
    (r"pve[0-9]+\.internal.*", 19, "pve1.internal.evil.test:8006", "https://pve1.internal.evil.test:8006/v1"),
    (r"api\.example\.com", None, "api.example.com.evil.test", "https://api.example.com.evil.test/v1"),
    (r"pve[0-9]+\.internal(:8006)?", None, "pve1.internal.evil.test:8006", "https://pve1.internal.evil.test:8006/v1"),
    (r"https://api\.example\.com|api\.example\.com:8443", None, "api.example.com.evil.test:8443", "https://api.example.com.evil.test:8443/v1"),
]

# (pattern, where its host starts, a URL to another host that it lets through): every host, each its own warning
EVERY_HOST_PATTERNS = [
    (r"https?://.*", 9, "https://evil.test/"),
    (r"https://.*", 8, "https://evil.test/"),
    (r".*", 0, "https://evil.test/"),
    (r"https://.*(:[0-9]+)?/.*", 8, "https://evil.test:8443/"),
    (r"https://.*:443.*", 8, "https://evil.test:443/"),
    (r"https://.*(:443)?(/.*)?", 8, "https://evil.test/x"),
    (r"[a-z.]+:8006", 0, "https://evil.test:8006/"),
]


@pytest.mark.parametrize(("pattern", "offset", "url"), HOST_PATTERNS)
def test_an_allowlist_host_that_may_go_on_or_start_early_is_a_warning_at_its_wildcard(pattern: str, offset: int | None, url: str | None) -> None:
    """The warning says what the probe's allowlist check does: each URL above, to another host, passes it
    exactly when the pattern is warned about (the target as written and a spelling of its URL match)."""
    assert wildcard_in_host(pattern) == offset and every_host(pattern) is None
    if url is not None:
        compiled = compile_regex(pattern)
        assert (compiled.fullmatch(url) and url_allowed(URL(url), [compiled])) == (offset is not None)
        assert URL(url).host == "evil.test" or URL(url).host.endswith(".evil.test")


@pytest.mark.parametrize(("pattern", "offset", "target", "url"), SCHEMELESS_HOST_PATTERNS)
def test_an_allowlist_alternative_without_a_scheme_is_asked_as_the_spellings_host_port_and_host(
    pattern: str, offset: int | None, target: str, url: str,
) -> None:
    """Such an alternative matches the spellings `host:port` and `host` of a URL (hops.url_forms): its host is
    asked with more host after it, as a scheme's is."""
    assert wildcard_in_host(pattern) == offset and every_host(pattern) is None
    compiled = compile_regex(pattern)
    assert (compiled.fullmatch(target) is not None and url_allowed(URL(url), [compiled])) == (offset is not None)
    assert URL(url).host.endswith(".evil.test")


@pytest.mark.parametrize(("pattern", "offset", "url"), EVERY_HOST_PATTERNS)
def test_an_allowlist_pattern_that_lets_every_host_through_is_a_warning_of_its_own(pattern: str, offset: int, url: str) -> None:
    compiled = compile_regex(pattern)
    assert every_host(pattern) == offset and wildcard_in_host(pattern) is None
    assert url_allowed(URL(url), [compiled]) and URL(url).host == "evil.test"
