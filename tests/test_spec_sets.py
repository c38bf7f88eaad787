"""A spec in several files: `--config.file` (and `check`) given a directory or a glob, the modules of
its files forming one spec; reloads that add, change, remove or break one of its files."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import UpstreamFactory
from metrics_util import parse, value
from prometheus_util import free_port, jsonexporter, wait_healthy
from test_workers import _fresh, _pages_of_both_workers, _poll

from jsonexporter.cli import main
from jsonexporter.server import STATE, Options, make_app
from jsonexporter.spec import load_spec


def module(name: str, metric: str | None = None) -> str:
    return f"modules:\n  {name}:\n    metrics:\n      - {{name: {metric or name + '_value'}, help: v, value: v}}\n"


@pytest.fixture
def conf_d(tmp_path: Path) -> Path:
    """A directory of three spec files, modules a, b and c, and what is not a spec beside them."""
    directory = tmp_path / "conf.d"
    directory.mkdir()
    for name in ("a", "b"):
        (directory / f"{name}.yml").write_text(module(name))
    (directory / "c.yaml").write_text(module("c"))
    (directory / "README.md").write_text(module("readme"))
    (directory / ".hidden.yml").write_text(module("hidden"))
    (directory / "old").mkdir()
    (directory / "old" / "d.yml").write_text(module("d"))
    return directory


def run_check(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main(["check", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_directory_is_one_spec_of_its_yml_and_yaml_files_only(conf_d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_check(capsys, "--strict", conf_d) == (0, f"{conf_d}: valid: 3 module(s), 3 metric rule(s), 0 warning(s), in 3 file(s)\n", "")
    spec = load_spec(str(conf_d))
    assert list(spec.modules) == ["a", "b", "c"]  # by file name; hidden files, other names and subdirectories left out
    assert dict(spec.origins) == {"a": str(conf_d / "a.yml"), "b": str(conf_d / "b.yml"), "c": str(conf_d / "c.yaml")}


def test_a_glob_is_one_spec_of_the_files_it_matches(conf_d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_check(capsys, conf_d / "*.yml")
    assert code == 0 and out == f"{conf_d}/*.yml: valid: 2 module(s), 2 metric rule(s), 0 warning(s), in 2 file(s)\n"
    assert list(load_spec(str(conf_d / "[bc].*")).modules) == ["b", "c"]


def test_a_glob_matching_nothing_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pattern = tmp_path / "*.yml"
    assert run_check(capsys, pattern) == (2, "", f"{pattern}: no spec: the glob matches no file\n")
    assert main(["probe", "--config.file", str(pattern), "--input", "x.json"]) == 1
    assert capsys.readouterr().err == f"{pattern}: no spec: the glob matches no file\n"


def test_a_module_defined_in_two_files_is_an_error_at_both_places(conf_d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (conf_d / "b.yml").write_text("# b\n" + module("b") + "  a:\n    metrics: [{name: again, help: h, value: v}]\n")
    code, out, _ = run_check(capsys, conf_d)
    assert code == 1
    a, b = conf_d / "a.yml", conf_d / "b.yml"
    assert out.splitlines() == [
        f"{a}:2:3: modules.a: module 'a' is defined twice: also in {b}:6:3",
        f"{b}:6:3: modules.a: module 'a' is defined twice: also in {a}:2:3",
    ]


@pytest.mark.parametrize("second", ["modules: {Hunter2Secret, b: {metrics: [{name: b, help: h, value: v}]}}\n",
                                    "modules:\n  Hunter2Secret:\n    metrics: [{name: b, help: h, value: v}]\n"], ids=["bare_in_both", "bare_in_one"])
def test_a_module_name_written_without_a_value_is_never_quoted_by_the_problems_of_two_files(
        conf_d: Path, capsys: pytest.CaptureFixture[str], second: str) -> None:
    """A key written without a value may be a value pasted in braces: "defined twice" conceals it as each file's own
    problems do, at both places, also where the other file writes it as a name."""
    (conf_d / "a.yml").write_text("modules: {a: {metrics: [{name: a, help: h, value: v}]}, Hunter2Secret}\n")
    (conf_d / "b.yml").write_text(second)
    code, out, _ = run_check(capsys, conf_d)
    twice = [line for line in out.splitlines() if "is defined twice" in line]
    assert code == 1 and len(twice) == 2 and {line.split(":")[0] for line in twice} == {str(conf_d / "a.yml"), str(conf_d / "b.yml")}, out
    assert all(": modules: module '<redacted>' is defined twice: also in " in line for line in twice), out
    assert "Hunter2" not in out


def test_every_file_of_a_set_is_checked_and_reported_at_once(conf_d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (conf_d / "a.yml").write_text(module("a").replace("value: v", "value: 'v['"))
    (conf_d / "c.yaml").write_text(module("c").replace("help: v", "hlep: v"))
    code, out, _ = run_check(capsys, conf_d)
    assert code == 1
    assert [line.split(": ")[0] for line in out.splitlines()] == [f"{conf_d / 'a.yml'}:4:44", f"{conf_d / 'c.yaml'}:4:25"], out


def test_an_unreadable_file_of_a_set_is_named(conf_d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (conf_d / "b.yml").write_bytes(b"\xff\xfe garbage")
    code, out, err = run_check(capsys, conf_d)
    assert (code, out) == (2, "")
    assert err.startswith(f"{conf_d / 'b.yml'}: cannot read: 'utf-8' codec can't decode"), err


@pytest.mark.parametrize("source", ["", "[bc].*"], ids=["directory", "glob"])
def test_probe_runs_a_module_of_any_file_of_the_set(conf_d: Path, capsys: pytest.CaptureFixture[str], source: str) -> None:
    answer = conf_d.parent / "answer.json"
    answer.write_text(json.dumps({"v": 7}))
    config = str(conf_d / source) if source else str(conf_d)
    assert main(["probe", "--config.file", config, "--module", "c", "--input", str(answer), "--target", "http://example.invalid"]) == 0
    assert value(parse(capsys.readouterr().out), "c_value") == 7


# -- serving a set: where each module comes from, reloads ---------------------------------------------

async def start(aiohttp_client: Any, source: Path, **options: Any) -> Any:
    return await aiohttp_client(make_app(load_spec(str(source)), Options(**options), spec_file=str(source)))


async def modules_by_file(client: Any) -> dict[str, float]:
    metrics = parse(await (await client.get("/metrics")).text())
    return {dict(labels)["file"]: v for (name, labels), v in metrics.items() if name == "jsonexporter_config_modules"}


async def test_the_metrics_and_the_landing_page_say_which_file_each_module_comes_from(aiohttp_client: Any, conf_d: Path) -> None:
    (conf_d / "b.yml").write_text(module("b") + "  b2:\n    metrics: [{name: x, help: h, value: v}]\n")
    client = await start(aiohttp_client, conf_d)
    assert await modules_by_file(client) == {str(conf_d / "a.yml"): 1, str(conf_d / "b.yml"): 2, str(conf_d / "c.yaml"): 1}
    page = await (await client.get("/")).text()
    assert f"Spec <code>{conf_d}</code> (3 files, sha256 " in page
    for name, file in (("a", "a.yml"), ("b", "b.yml"), ("b2", "b.yml"), ("c", "c.yaml")):
        assert f"<tr><td>{name}</td><td><code>{conf_d / file}</code></td>" in page


@pytest.mark.parametrize("source", ["", "*.y*ml"], ids=["directory", "glob"])
async def test_a_reload_takes_a_file_added_and_drops_a_file_removed(aiohttp_client: Any, conf_d: Path, upstream: UpstreamFactory, source: str) -> None:
    up = await upstream({"/": {"v": 1}})
    client = await start(aiohttp_client, conf_d / source if source else conf_d)
    (conf_d / "b.yml").unlink()
    (conf_d / "e.yml").write_text(module("e"))
    response = await client.post("/-/reload")
    assert response.status == 200 and await response.text() == "reloaded\n"
    assert value(parse(await (await client.get(f"/probe?module=e&target={up.url}/")).text()), "e_value") == 1
    gone = await client.get(f"/probe?module=b&target={up.url}/")
    assert gone.status == 400 and "known modules: a, c, e" in await gone.text()
    assert await modules_by_file(client) == {str(conf_d / "a.yml"): 1, str(conf_d / "c.yaml"): 1, str(conf_d / "e.yml"): 1}


async def test_one_broken_file_of_three_keeps_the_previous_set_serving(aiohttp_client: Any, conf_d: Path, upstream: UpstreamFactory) -> None:
    up = await upstream({"/": {"v": 1}})
    client = await start(aiohttp_client, conf_d)
    (conf_d / "a.yml").write_text(module("a", "a_renamed"))  # a valid change, which must not be taken alone
    (conf_d / "b.yml").write_text(module("b").replace("value: v", "value: 'v['"))
    response = await client.post("/-/reload")
    text = await response.text()
    assert response.status == 500 and "the previous spec is still served" in text
    assert f"{conf_d / 'b.yml'}:4:44: modules.b.metrics[0].value: invalid JMESPath" in text
    for name in ("a", "b", "c"):
        assert value(parse(await (await client.get(f"/probe?module={name}&target={up.url}/")).text()), f"{name}_value") == 1
    metrics = parse(await (await client.get("/metrics")).text())
    assert value(metrics, "jsonexporter_config_last_reload_successful") == 0


async def test_auto_reload_notices_a_file_added_to_the_directory(aiohttp_client: Any, conf_d: Path) -> None:
    client = await start(aiohttp_client, conf_d, auto_reload_interval=0.05)
    state = client.app[STATE]
    (conf_d / "e.yml").write_text(module("e"))
    for _ in range(400):  # bounded: 20 s at most
        if "e" in state.spec.modules:
            break
        await asyncio.sleep(0.05)  # polling a condition the background task changes
    assert list(state.spec.modules) == ["a", "b", "c", "e"]


@pytest.fixture
def workers_on(conf_d: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    proc = subprocess.Popen(jsonexporter("--config.file", str(conf_d), "--web.listen-address", f"127.0.0.1:{port}", "--web.workers", "2",
                                         "--log.format", "json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "TMPDIR": str(conf_d.parent)})
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


async def test_sighup_to_the_workers_supervisor_rereads_the_directory(workers_on: tuple[subprocess.Popen[str], str], conf_d: Path) -> None:
    proc, base = workers_on
    await wait_healthy(base, proc)
    (conf_d / "a.yml").unlink()
    (conf_d / "e.yml").write_text(textwrap.dedent(module("e")))
    proc.send_signal(signal.SIGHUP)

    async def both_serve_the_new_set() -> bool:
        pages = await _pages_of_both_workers(base)
        return all(f"<code>{conf_d / 'e.yml'}</code>" in p and f"<code>{conf_d / 'a.yml'}</code>" not in p for p in pages.values())

    await _poll("both workers serve the re-read directory", both_serve_the_new_set)
    status, text = await _fresh(base, "/probe", {"module": "a", "target": "http://127.0.0.1:1/"})
    assert status == 400 and "known modules: b, c, e" in text
    status, text = await _fresh(base, "/metrics")
    by_file = {dict(labels)["file"]: v for (name, labels), v in parse(text).items() if name == "jsonexporter_config_modules"}
    assert by_file == {str(conf_d / "a.yml"): 0, str(conf_d / "b.yml"): 1, str(conf_d / "c.yaml"): 1, str(conf_d / "e.yml"): 1}


def test_a_configmap_mount_is_read_through_its_links_and_read_again_after_an_update(tmp_path: Path) -> None:
    """kubelet's layout: the files are links into `..data`, itself a link to a hidden timestamped
    directory, swapped whole on an update; the links of new keys come after."""
    mount = tmp_path / "jsonexporter"
    (mount / "..2026_12_01_1").mkdir(parents=True)
    (mount / "..2026_12_01_1" / "a.yml").write_text(module("a"))
    (mount / "..data").symlink_to("..2026_12_01_1")
    (mount / "a.yml").symlink_to("..data/a.yml")
    assert list(load_spec(str(mount)).modules) == ["a"]
    (mount / "..2026_12_01_2").mkdir()
    (mount / "..2026_12_01_2" / "a.yml").write_text(module("a", "a_renamed"))
    (mount / "..2026_12_01_2" / "b.yml").write_text(module("b"))
    (mount / "..data_tmp").symlink_to("..2026_12_01_2")
    os.replace(mount / "..data_tmp", mount / "..data")
    (mount / "b.yml").symlink_to("..data/b.yml")
    spec = load_spec(str(mount))
    assert list(spec.modules) == ["a", "b"] and spec.modules["a"].metrics[0].name == "a_renamed"


def test_a_link_to_nothing_in_the_directory_is_named(conf_d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (conf_d / "e.yml").symlink_to("gone.yml")
    assert run_check(capsys, conf_d) == (2, "", f"{conf_d / 'e.yml'}: cannot read: No such file or directory\n")


def test_an_unreadable_directory_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any directory")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0)
    try:
        assert run_check(capsys, locked) == (2, "", f"{locked}: cannot read: Permission denied\n")
    finally:
        locked.chmod(0o755)
