"""Golden tests of the cookbook in examples/.

Every examples/NAME.yml must pass `jsonexporter check --strict` and have a golden directory
examples/golden/NAME/ holding, for each module of the spec:

    MODULE.ENDPOINT.json   a saved answer of each endpoint of the module
    MODULE.params          optional: NAME=VALUE lines, passed as --param NAME=VALUE
    MODULE.prom            the expected stdout of
                           jsonexporter probe --config.file examples/NAME.yml --module MODULE
                               --input ENDPOINT=examples/golden/NAME/MODULE.ENDPOINT.json ...
                               --target http://example.invalid

The probe runs as a real subprocess and its output must equal MODULE.prom byte for byte, parse
with prometheus_client and pass `promtool check metrics` (skipped when promtool is missing,
except in CI).

To regenerate the .prom files after an intended change of the output, run

    JSONEXPORTER_UPDATE_GOLDEN=1 pytest tests/test_examples.py

then READ `git diff examples/golden`: every value and label must still be what the JSON says.

The same run rewrites examples/tests/NAME.test.yml, the goldens of NAME as a test file of
`jsonexporter test` (every sample of each MODULE.prom, exact: true); each must equal what the goldens
make, and pass `jsonexporter test`, which .ci/run also runs after the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jsonexporter.cli import main
from jsonexporter.exposition import format_value
from jsonexporter.spec import load_spec
from jsonexporter.spectest.series import format_series

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GOLDEN = EXAMPLES / "golden"
TARGET = "http://example.invalid"
MODELINE = "# yaml-language-server: $schema=../schemas/jsonexporter.schema.json"
UPDATE = os.environ.get("JSONEXPORTER_UPDATE_GOLDEN") == "1"
TESTS = EXAMPLES / "tests"
TEST_MODELINE = "# yaml-language-server: $schema=../../schemas/jsonexporter-test.schema.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None and not os.environ.get("CI"), reason="promtool not installed")

SPECS = sorted(EXAMPLES.glob("*.yml"))


def _golden_modules() -> list[tuple[str, str]]:
    """(example, module) for every module that has a saved answer or an expected output."""
    found: set[tuple[str, str]] = set()
    for spec in SPECS:
        directory = GOLDEN / spec.stem
        for file in directory.glob("*.prom"):
            found.add((spec.stem, file.stem))
        for file in directory.glob("*.json"):
            # endpoint names have no dot; module names may
            found.add((spec.stem, file.stem.rpartition(".")[0]))
    return sorted(found)


def _inputs(example: str, module: str) -> dict[str, Path]:
    """Endpoint name -> saved answer of `module`."""
    prefix = module + "."
    return {
        file.stem[len(prefix) :]: file
        for file in sorted((GOLDEN / example).glob("*.json"))
        if file.stem.startswith(prefix) and "." not in file.stem[len(prefix) :]
    }


def _params(example: str, module: str) -> list[str]:
    file = GOLDEN / example / f"{module}.params"
    if not file.exists():
        return []
    return [line.strip() for line in file.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _probe_command(example: str, module: str) -> list[str]:
    command = [sys.executable, "-m", "jsonexporter", "probe", "--config.file", f"examples/{example}.yml", "--module", module]
    for endpoint, file in _inputs(example, module).items():
        command += ["--input", f"{endpoint}={file.relative_to(ROOT)}"]
    for param in _params(example, module):
        command += ["--param", param]
    return [*command, "--target", TARGET]


def test_the_cookbook_is_found() -> None:
    names = {spec.stem for spec in SPECS}
    required = {"queue-stats", "energy-per-pod", "elasticsearch-health", "object-keys", "status-page", "prometheus-status", "github-repo"}
    assert required <= names, f"missing examples: {sorted(required - names)}"


def test_the_examples_directory_is_one_spec_that_passes_check_strict(capsys: pytest.CaptureFixture[str]) -> None:
    """`serve --config.file examples/` serves the whole cookbook: distinct module names, and nothing
    but specs directly in the directory (the Prometheus configuration lives in examples/prometheus/)."""
    code = main(["check", "--strict", str(EXAMPLES)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 warning(s)" in out, out
    assert set(load_spec(str(EXAMPLES)).modules) == {m for spec in SPECS for m in load_spec(str(spec)).modules}


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_example_passes_check_strict(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--strict", str(spec)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 warning(s)" in out, out
    assert spec.read_text().splitlines()[0] == MODELINE


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_example_has_goldens_for_every_module_and_endpoint(spec: Path) -> None:
    assert (GOLDEN / spec.stem).is_dir(), f"no golden directory examples/golden/{spec.stem}/"
    loaded = load_spec(str(spec))
    golden = {module for example, module in _golden_modules() if example == spec.stem}
    assert golden == set(loaded.modules), f"golden modules {sorted(golden)} != spec modules {sorted(loaded.modules)}"
    for name, module in loaded.modules.items():
        inputs = _inputs(spec.stem, name)
        assert set(inputs) == set(module.endpoints), f"module {name}: saved answers for {sorted(inputs)}, endpoints {sorted(module.endpoints)}"
        assert UPDATE or (GOLDEN / spec.stem / f"{name}.prom").exists(), f"no {name}.prom: run with JSONEXPORTER_UPDATE_GOLDEN=1"


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_example_is_in_the_readme(spec: Path) -> None:
    assert f"({spec.name})" in (EXAMPLES / "README.md").read_text(), f"examples/README.md does not link {spec.name}"


@cache
def _probe(example: str, module: str) -> subprocess.CompletedProcess[bytes]:
    """The real CLI in a subprocess, once per golden module."""
    return subprocess.run(_probe_command(example, module), cwd=ROOT, capture_output=True, timeout=60)


@pytest.mark.parametrize(("example", "module"), _golden_modules(), ids=lambda v: v)
def test_probe_output_matches_golden(example: str, module: str) -> None:
    result = _probe(example, module)
    assert result.returncode == 0, result.stderr.decode()
    expected_file = GOLDEN / example / f"{module}.prom"
    if UPDATE:
        expected_file.write_bytes(result.stdout)
    assert expected_file.exists(), f"no {expected_file.relative_to(ROOT)}: run with JSONEXPORTER_UPDATE_GOLDEN=1"
    command = " ".join(["jsonexporter", *_probe_command(example, module)[3:]])
    assert result.stdout.decode() == expected_file.read_bytes().decode(), f"`{command}` differs from {expected_file.relative_to(ROOT)}"
    assert result.stdout == expected_file.read_bytes()

    text = result.stdout.decode()
    families = list(text_string_to_metric_families(text))
    samples = sum(len(f.samples) for f in families)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert samples == len(lines)
    assert any(f.name == "probe_success" and f.samples[0].value == 1 for f in families)


@needs_promtool
@pytest.mark.parametrize(("example", "module"), _golden_modules(), ids=lambda v: v)
def test_probe_output_passes_promtool(example: str, module: str) -> None:
    assert PROMTOOL is not None, "promtool is required in CI (.ci/run installs Debian's prometheus package)"
    text = _probe(example, module).stdout.decode()
    assert text
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the goldens as test files of `jsonexporter test` --------------------------------------------------


def _yaml_string(text: str) -> str:
    """A YAML scalar that reads back as `text`: single-quoted, or JSON's double quotes for unprintable characters."""
    return "'" + text.replace("'", "''") + "'" if text.isprintable() else json.dumps(text)


def cookbook_test_file(example: str) -> str:
    """examples/tests/EXAMPLE.test.yml as the goldens make it: per module, its saved answers and every
    sample of MODULE.prom, exactly."""
    lines = [
        TEST_MODELINE,
        f"# Made from golden/{example}/ by tests/test_examples.py: JSONEXPORTER_UPDATE_GOLDEN=1 pytest tests/test_examples.py",
        "# rewrites it with the goldens. CI runs it: jsonexporter test examples/tests/*.test.yml",
        f"spec: ../{example}.yml",
        "tests:",
    ]
    for name, module in _golden_modules():
        if name != example:
            continue
        lines += [f"  - name: {_yaml_string(f'module {module} on the saved answers of golden/{example}/')}",
                  f"    module: {_yaml_string(module)}", f"    target: {TARGET}"]
        params = [param.partition("=") for param in _params(example, module)]
        if params:
            lines += ["    params:", *(f"      {key}: {_yaml_string(value)}" for key, _, value in params)]
        lines.append("    answers:")
        for endpoint, file in _inputs(example, module).items():
            lines.append(f"      {endpoint}: {{file: {_yaml_string(os.path.relpath(file, TESTS))}}}")
        lines += ["    exact: true", "    exp_samples:"]
        for family in text_string_to_metric_families((GOLDEN / example / f"{module}.prom").read_text()):
            for sample in family.samples:
                lines += [f"      - labels: {_yaml_string(format_series(sample.name, sample.labels))}", f"        value: {format_value(float(sample.value))}"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_example_test_file_holds_its_goldens(spec: Path) -> None:
    file = TESTS / f"{spec.stem}.test.yml"
    if UPDATE:  # after test_probe_output_matches_golden, which wrote the .prom files
        file.write_text(cookbook_test_file(spec.stem))
    assert file.exists(), f"no {file.relative_to(ROOT)}: run with JSONEXPORTER_UPDATE_GOLDEN=1"
    assert file.read_text() == cookbook_test_file(spec.stem), f"{file.relative_to(ROOT)} differs from the goldens: run with JSONEXPORTER_UPDATE_GOLDEN=1"


def test_example_test_files_pass_jsonexporter_test() -> None:
    """What CI runs after the suite (.ci/run), here too: the cookbook's goldens through `jsonexporter test`."""
    files = sorted(str(f.relative_to(ROOT)) for f in TESTS.glob("*.test.yml"))
    assert len(files) == len(SPECS)
    result = subprocess.run([sys.executable, "-m", "jsonexporter", "test", *files], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = [line for line in result.stdout.splitlines() if line.endswith(" test(s) passed")]
    assert len(passed) == len(files) and " of " not in result.stdout, result.stdout
