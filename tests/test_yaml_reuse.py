"""YAML as people write it: merge keys that override, `x-` fragments for anchors, unknown tags
reported where they are while the rest of the file is still checked; through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import SpecWriter
from hypothesis import given
from hypothesis import strategies as st
from metrics_util import parse, value

from jsonexporter.cli import main
from jsonexporter.spec.yamlload import load_yaml


def check(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, list[str]]:
    code = main(["check", *map(str, args)])
    out = capsys.readouterr().out
    return code, [line for line in out.splitlines() if ": valid: " not in line]


def probe(capsys: pytest.CaptureFixture[str], spec: Path, answer: object, module: str = "m") -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    saved = spec.parent / "answer.json"
    saved.write_text(json.dumps(answer))
    code = main(["probe", "--config.file", str(spec), "--module", module, "--input", str(saved), "--target", "http://example.invalid"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return parse(out)


# -- merge keys -----------------------------------------------------------------------------------

def test_a_key_written_beside_a_merge_key_overrides_the_merged_one(write_spec: SpecWriter, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec("""
        modules:
          m:
            metrics:
              - &m {name: m1, help: Base help., value: a}
              - <<: *m
                name: m2
                value: b
        """)
    assert check(capsys, "--strict", spec) == (0, [])
    s = probe(capsys, spec, {"a": 1, "b": 2})
    assert value(s, "m1") == 1 and value(s, "m2") == 2


def test_of_the_mappings_merged_the_first_that_has_a_key_gives_it(write_spec: SpecWriter, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec("""
        x-site: &site {site: "'eu'", zone: "'a'"}
        x-team: &team {site: "'us'", team: "'ops'"}
        modules:
          m:
            metrics:
              - name: up
                help: Up.
                value: up
                labels: {<<: [*site, *team], zone: "'b'"}
        """)
    s = probe(capsys, spec, {"up": 1})
    assert value(s, "up", site="eu", team="ops", zone="b") == 1  # PyYAML's order: site from the first, zone written beside


def test_a_merged_key_is_reported_where_it_is_written_in_the_anchor(write_spec: SpecWriter, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec("""
        x-rule: &rule
          help: Broken.
          value: 'a['
        modules:
          m:
            metrics:
              - <<: *rule
                name: one
        """)
    code, lines = check(capsys, spec)
    assert code == 1
    assert lines == [f"{spec}:3:13: modules.m.metrics[0].value: invalid JMESPath: incomplete expression at position 2 in 'a['"]


def test_a_key_written_twice_in_one_mapping_stays_an_error_at_both_places(write_spec: SpecWriter, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec("""
        x-base: &base {help: h, value: v}
        modules:
          m:
            metrics:
              - <<: *base
                name: a
                help: mine
                name: b
        """)
    assert check(capsys, spec) == (1, [f"{spec}:8:9: modules.m.metrics[0].name: duplicate key 'name' (first written at 6:9)"])


def test_two_merge_keys_in_one_mapping_are_a_key_written_twice(write_spec: SpecWriter, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec("""
        x-a: &a {help: h}
        x-b: &b {value: v}
        modules:
          m:
            metrics:
              - {<<: *a, <<: *b, name: a}
        """)
    code, lines = check(capsys, spec)
    assert code == 1
    assert (f"{spec}:6:18: modules.m.metrics[0]['<<']: duplicate key '<<' (first written at 6:10): "
            "merge several mappings with one `<<: [*a, *b]`") in lines, lines


def test_a_merge_key_of_something_else_than_mappings_is_located(write_spec: SpecWriter, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec("""
        modules:
          m:
            metrics:
              - {<<: [{help: h}, oops], name: a, value: v}
        """)
    code, lines = check(capsys, spec)
    assert code == 1
    assert lines == [f"{spec}:4:26: modules.m.metrics[0]['<<']: `<<` merges a mapping or a list of mappings (`<<: *base` or `<<: [*a, *b]`)"]


KEYS = st.sampled_from(["a", "b", "c", "d", "e"])
FLAT = st.dictionaries(KEYS, st.integers(0, 9), max_size=4)


@given(FLAT, FLAT, FLAT, st.sampled_from(["*x", "[*x]", "[*x, *y]", "[*y, *x]"]), st.booleans())
def test_merge_keys_give_what_pyyaml_gives_in_its_order(x: dict[str, int], y: dict[str, int], written: dict[str, int], merge: str,
                                                       merge_first: bool) -> None:
    pairs = [f"{k}: {v}" for k, v in written.items()]
    pairs.insert(0 if merge_first else len(pairs), f"<<: {merge}")
    text = f"x: &x {json.dumps(x)}\ny: &y {json.dumps(y)}\nz: {{{', '.join(pairs)}}}\n"
    data, _, problems = load_yaml(text, "f.yml")
    assert problems == []
    expected = yaml.safe_load(text)
    assert data == expected and list(data["z"].items()) == list(expected["z"].items())


# -- x- fragments -----------------------------------------------------------------------------------

def test_top_level_x_keys_are_ignored_and_their_anchors_used_anywhere(write_spec: SpecWriter, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec("""
        x-labels: &labels {queue: $key}
        x-anything: {not: [a, spec], value: 'a['}
        modules:
          m:
            metrics:
              - {name: waiting, help: Waiting., each: '@', value: waiting, labels: *labels}
        """)
    assert check(capsys, "--strict", spec) == (0, [])
    s = probe(capsys, spec, {"orders": {"waiting": 3}})
    assert value(s, "waiting", queue="orders") == 3


def test_other_unknown_top_level_keys_stay_errors(write_spec: SpecWriter, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec("""
        x_labels: {a: b}
        modules:
          m: {metrics: [{name: a, help: h, value: v}]}
        """)
    assert check(capsys, spec) == (1, [f"{spec}:1:1: x_labels: unknown key 'x_labels' (allowed: modules, or a key matching ^x-)"])


# -- unknown tags -----------------------------------------------------------------------------------

def test_each_unknown_tag_is_reported_at_its_place_and_the_rest_is_still_checked(
    write_spec: SpecWriter, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    marker = tmp_path / "constructed"
    spec = write_spec(f"""
        x-apply: !!python/object/apply:os.system ["touch {marker}"]
        modules:
          m:
            endpoints:
              api: {{url: !unsafe '{{target}}/api'}}
            labels: !Ref {{team: ops}}
            metrics:
              - {{name: a, help: h, value: 'x['}}
              - {{name: b, help: h, value: !unsafe 'y['}}
        """)
    code, lines = check(capsys, spec)
    assert code == 1
    assert [line.split(": ")[0:2] for line in lines] == [
        [f"{spec}:1:10", "x-apply"],
        [f"{spec}:5:18", "modules.m.endpoints.api.url"],
        [f"{spec}:6:13", "modules.m.labels"],
        [f"{spec}:8:38", "modules.m.metrics[0].value"],  # an error that has nothing to do with the tags
        [f"{spec}:9:35", "modules.m.metrics[1].value"],  # the tag
        [f"{spec}:9:46", "modules.m.metrics[1].value"],  # its value, checked as if the tag were not there
    ], lines
    assert all("unknown tag (not shown" in lines[i] and "nothing is made from tags" in lines[i] for i in (0, 1, 2, 4)), lines
    assert "invalid JMESPath" in lines[3] and "invalid JMESPath" in lines[5]
    assert not marker.exists()


def test_a_value_under_an_unknown_tag_is_read_as_if_untagged_but_the_spec_is_refused(write_spec: SpecWriter, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec("""
        modules:
          m:
            timeout: !seconds 5
            metrics: [{name: a, help: h, value: v}]
        """)
    code, lines = check(capsys, spec)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith(f"{spec}:3:14: modules.m.timeout: unknown tag (not shown"), lines  # 5 is a valid timeout


def test_a_problem_in_an_anchor_used_several_times_is_reported_once_where_it_is_written(
    write_spec: SpecWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec("""
        x-base: &base {help: h, help: again, each: !unsafe '@'}
        modules:
          m:
            metrics:
              - {<<: *base, name: a, value: a}
              - {<<: *base, name: b, value: b}
              - {<<: *base, name: c, value: c}
        """)
    code, lines = check(capsys, spec)
    assert code == 1
    assert [line.split(": ")[0] for line in lines] == [f"{spec}:1:25", f"{spec}:1:44"], lines
