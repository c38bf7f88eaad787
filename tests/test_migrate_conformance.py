"""json_exporter's own configurations, migrated and probed with the answers its tests serve, give the
series json_exporter answered (../shared/conformance/json_exporter/outputs), up to the documented
differences: counter samples gain `_total`, a duplicate series keeps the first instead of failing the
probe, and the probe's own `probe_*` metrics are added."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_util import jsonexporter

REPO = Path(__file__).resolve().parents[1]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
Families = dict[str, tuple[str, str]]  # family name -> (type, help)


def _shared() -> Path | None:
    """../shared beside the clone (as in CI), or beside the main checkout when this is a git worktree."""
    candidates = [REPO.parent / "shared"]
    try:
        common = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--path-format=absolute", "--git-common-dir"],
                                capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        candidates.append(Path(common).parent.parent / "shared")
    except (OSError, subprocess.SubprocessError):
        pass
    return next((c for c in candidates if (c / "conformance" / "json_exporter" / "outputs").is_dir()), None)


SHARED = _shared()
DATA = SHARED / "conformance" / "json_exporter" if SHARED else None
OUTPUTS = sorted((DATA / "outputs").iterdir()) if DATA else []
pytestmark = pytest.mark.skipif(DATA is None, reason="../shared/conformance/json_exporter is absent (CI puts it beside the clone)")


def _find(stem: str, folders: tuple[str, ...], suffix: str) -> Path:
    assert DATA is not None
    (found,) = [DATA / f / f"{stem}{suffix}" for f in folders if (DATA / f / f"{stem}{suffix}").is_file()]
    return found


@cache
def _migrated(config: str, directory: Path) -> Path:
    spec = directory / f"{config}.spec.yml"
    result = subprocess.run(jsonexporter("migrate", str(_find(config, ("examples", "test/config"), ".yml")), "-o", str(spec)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return spec


def _read(text: str) -> tuple[Samples, Families]:
    samples: Samples = {}
    families: Families = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("probe_"):
            continue
        families[family.name] = (family.type, family.documentation)
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, families


def _as_jsonexporter_names(samples: Samples, families: Families) -> Samples:
    """json_exporter's samples named as here: a counter's sample takes `_total`."""
    counters = {name for name, (kind, _) in families.items() if kind == "counter"}
    return {((f"{n}_total" if n in counters else n), labels): v for (n, labels), v in samples.items()}


def _probe(spec: Path, module: str, answer: Path) -> tuple[str, str]:
    result = subprocess.run(jsonexporter("probe", "--config.file", str(spec), "--module", module, "--input", f"default={answer}"),
                            capture_output=True, text=True, timeout=60)
    assert "Traceback" not in result.stderr
    return result.stdout, result.stderr


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("migrated")


_DUPLICATE = re.compile(r'collected metric "(\w+)" \{ ((?:label:\{name:"\w+" value:"[^"]*"\} )*)\w+:\{value:([^}]+)\}\} was collected before')
_LABEL = re.compile(r'label:\{name:"(\w+)" value:"([^"]*)"\}')


@pytest.mark.parametrize("output", OUTPUTS, ids=[p.name for p in OUTPUTS])
def test_migrated_configuration_gives_json_exporter_s_series(output: Path, specs: Path) -> None:
    config, module, answer = output.name.split(".")[:3]
    spec = _migrated(config, specs)
    ours, _ = _probe(spec, module, _find(answer, ("examples", "test/serve"), ".json"))
    got, got_families = _read(ours)
    if output.name.endswith(".http500"):
        # json_exporter failed the whole probe; here the first of each duplicate is kept and the others counted
        duplicates = _DUPLICATE.findall(output.read_text())
        assert duplicates
        counted = {name: sum(1 for n, _, _ in duplicates if n == name) for name, _, _ in duplicates}
        probe_metrics = {(s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(ours) for s in f.samples}
        for name, count in counted.items():
            assert probe_metrics[("probe_duplicate_series", frozenset({("metric", name)}))] == count
        for name, labels, _ in duplicates:
            assert (f"{name}_total", frozenset(_LABEL.findall(labels))) in got
        return
    expected, expected_families = _read(output.read_text())
    assert got == _as_jsonexporter_names(expected, expected_families)
    assert got_families == expected_families  # the same types and HELP: the translation writes json_exporter's default help
