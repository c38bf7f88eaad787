"""The developer's side of the repository: `.ci/run` runs what CI runs, and generated files stay out
of the repository."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

# `python3 -m venv DIR` makes DIR/bin/python, which records its environment's CI and its arguments.
FAKE_PYTHON3 = """#!/bin/sh
[ "$1 $2" = "-m venv" ] || exit 3
mkdir -p "$3/bin"
printf '#!/bin/sh\\necho "CI=${CI:-unset} $*" >> "%s"\\n' "$CALLS" > "$3/bin/python"
chmod +x "$3/bin/python"
"""


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def git(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("git") is None:
        pytest.skip("needs git")
    result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if result.returncode == 128:
        pytest.skip(f"not a git checkout: {result.stderr.strip()}")
    return result


def test_ci_run_on_a_developer_machine_runs_the_suite_as_ci_does(tmp_path: Path) -> None:
    """The real script, with python3 and promtool replaced by recorders, and no CI in the caller's
    environment: the test command it runs sees CI=true, which turns on the slow tests."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "python3", FAKE_PYTHON3)
    executable(bin_dir / "promtool", "#!/bin/sh\nexit 0\n")
    calls = tmp_path / "calls"
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls)}
    result = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    pytest_runs = [line for line in calls.read_text().splitlines() if " -m pytest" in line]
    assert pytest_runs == ["CI=true -m pytest -q -p no:cacheprovider"]
    test_runs = [line for line in calls.read_text().splitlines() if " -m jsonexporter test" in line]
    assert test_runs == ["CI=true -m jsonexporter test examples/tests/*.test.yml"]  # the cookbook's goldens, after the suite


def test_ci_run_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"The test command that `.ci/run` runs after installing is\n`([^`]+)`", readme)
    assert found, "README.md no longer states the test command"
    last = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip() and not line.startswith("#")][-1]
    assert last == found.group(1)


def test_coverage_data_is_not_in_the_repository_and_is_ignored() -> None:
    assert git("ls-files", "--", ".coverage", ".coverage.*").stdout == ""
    assert git("check-ignore", "-q", ".coverage").returncode == 0
    assert git("check-ignore", "-q", ".coverage.host.1234.XyZ").returncode == 0


def test_every_package_is_installed() -> None:
    """pyproject.toml lists the packages by name: a new one (upstream/, spectest/) left out would be
    missing from a `pip install .`, while the editable install of the suite still finds it."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "jsonexporter").rglob("__init__.py")}
    assert listed == found


async def test_the_in_process_client_of_every_test_gives_up_within_the_suites_session_timeout(aiohttp_client: Any) -> None:
    from aiohttp import web
    from prometheus_util import SESSION

    client = await aiohttp_client(web.Application())
    assert client.session.timeout.total == SESSION.total < 300  # aiohttp's default: 5 minutes for a hung request
