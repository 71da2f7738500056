"""deploy/kubernetes/: valid against the Kubernetes schema (kubernetes-validate, offline, strict),
consistent with itself and with Lightcell, and its probes work against a real `lightcell serve`.

No cluster is needed: every manifest is checked against the API schema of the oldest Kubernetes
it needs (1.29, native sidecars) and the newest the package ships; the Envoy config both variants
mount is accepted by Lightcell's parser and by the real Envoy (`--mode validate`); the Pod's
socket sharing lines up (Lightcell's --socket/--workers = Envoy's `lightcell` endpoints = the
probes' sockets); and the probe commands, run verbatim, pass against `lightcell serve --workers 2`
and fail when a worker's socket does not answer.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from devtools import k8s_configmaps
from extproc.config import load_config
from extproc.harness import lightcell_command
from extproc.workers import worker_socket

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(p for p in DEPLOY.glob("*/*.yaml"))
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
KVM = "devices.kubevirt.io/kvm"
APP = "/app/"  # where the Dockerfile puts the repository


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _find(kind: str, name: str) -> dict[str, Any]:
    found = [d for p in MANIFESTS for d in _docs(p) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def _pod(kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = _find(kind, name)["spec"]["template"]["spec"]
    return spec


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    every = [*pod.get("initContainers", []), *pod["containers"]]
    return next(c for c in every if c["name"] == name)


def _flag(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_matches_the_kubernetes_schema(path: Path, version: str) -> None:
    docs = _docs(path)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_can_fail() -> None:
    """Strict validation refuses a misspelt field and a wrong type (so the test above can fail)."""
    deployment = copy.deepcopy(_find("Deployment", "envoy-lightcell"))
    deployment["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)
    deployment = copy.deepcopy(_find("Deployment", "envoy-lightcell"))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


def test_config_maps_are_written_from_envoy_yaml() -> None:
    for path, namespace in k8s_configmaps.TARGETS.items():
        stale = f"{path} is stale: run python -m devtools.k8s_configmaps"
        assert path.read_text() == k8s_configmaps.render(namespace), stale
        assert yaml.safe_load(path.read_text())["data"]["envoy.yaml"] == k8s_configmaps.SOURCE.read_text()


def _local_config(tmp_path: Path, built_plugins: dict[str, Path], tier: str | None = None) -> Path:
    """envoy.yaml with the image's /app/plugins/examples/build paths pointing at this checkout's."""
    text = k8s_configmaps.SOURCE.read_text()
    build = next(iter(built_plugins.values())).parent
    text = text.replace(f"{APP}plugins/examples/build/", f"{build}/")
    assert f"plugin: {APP}" not in text
    if tier is not None:
        text = text.replace("tier: auto", f"tier: {tier}")
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    return path


def test_lightcell_accepts_the_envoy_config(tmp_path: Path, built_plugins: dict[str, Path]) -> None:
    config = load_config(_local_config(tmp_path, built_plugins))
    assert set(config.listeners) == {"rewrite"} and set(config.http_listeners) == {"redact"}
    for policy in [*config.listeners.values(), *config.http_listeners.values()]:
        assert Path(policy.spec.plugin_path).name in {"rewrite.wasm", "redact.wasm"}
    assert (ROOT / "Dockerfile").read_text().count("WORKDIR /app") == 2  # the image's /app is the repo


@pytest.mark.envoy
def test_envoy_accepts_the_envoy_config(envoy_bin: Path) -> None:
    result = subprocess.run([str(envoy_bin), "--mode", "validate", "-c", str(k8s_configmaps.SOURCE)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _endpoints() -> list[str]:
    config = yaml.safe_load(k8s_configmaps.SOURCE.read_text())
    cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "lightcell")
    assert cluster["health_checks"][0]["grpc_health_check"] == {}
    return [e["endpoint"]["address"]["pipe"]["path"]
            for group in cluster["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]


VARIANTS = [("Deployment", "envoy-lightcell", "Deployment", "envoy-lightcell"),
            ("DaemonSet", "lightcell", "Deployment", "envoy")]


@pytest.mark.parametrize(("lc_kind", "lc_name", "envoy_kind", "envoy_name"), VARIANTS)
def test_socket_sharing_lines_up(lc_kind: str, lc_name: str, envoy_kind: str, envoy_name: str) -> None:
    """Lightcell's worker sockets are Envoy's endpoints and the probes' sockets, in a directory
    both containers mount from the same volume (an emptyDir in one Pod, the node's directory)."""
    lc_pod, envoy_pod = _pod(lc_kind, lc_name), _pod(envoy_kind, envoy_name)
    lightcell, envoy = _container(lc_pod, "lightcell"), _container(envoy_pod, "envoy")
    args = lightcell["args"]
    socket = Path(_flag(args, "--socket"))
    workers = [str(worker_socket(socket, i)) for i in range(int(_flag(args, "--workers")))]
    assert _endpoints() == workers
    assert _flag(args, "--envoy-config") == "/etc/envoy/envoy.yaml" == f"{_flag(envoy['args'], '-c')}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert lightcell[probe]["exec"]["command"][3:] == workers, probe

    def volume(pod: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any]:
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == path)
        found: dict[str, Any] = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        return found

    shared = [volume(lc_pod, lightcell, str(socket.parent)), volume(envoy_pod, envoy, str(socket.parent))]
    if lc_kind == "Deployment":  # one Pod: the same volume
        assert (lc_kind, lc_name) == (envoy_kind, envoy_name)
        assert shared[0] == shared[1] and "emptyDir" in shared[0]
        assert lightcell.get("restartPolicy") == "Always" and lightcell in lc_pod["initContainers"]
    else:
        assert shared[0]["hostPath"]["path"] == shared[1]["hostPath"]["path"] == str(socket.parent)
        assert lc_pod["nodeSelector"] == envoy_pod["nodeSelector"]  # Envoy only where Lightcell runs
    config_maps = [volume(lc_pod, lightcell, "/etc/envoy"), volume(envoy_pod, envoy, "/etc/envoy")]
    assert config_maps[0]["configMap"] == config_maps[1]["configMap"] == {"name": k8s_configmaps.NAME}


@pytest.mark.parametrize(("kind", "name"), [("Deployment", "envoy-lightcell"), ("DaemonSet", "lightcell")])
def test_lightcell_gets_kvm_limits_and_no_privilege(kind: str, name: str) -> None:
    pod = _pod(kind, name)
    lightcell = _container(pod, "lightcell")
    resources = lightcell["resources"]
    assert resources["requests"][KVM] == resources["limits"][KVM] == "1"  # extended: requests = limits
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    context = {**pod.get("securityContext", {}), **lightcell["securityContext"]}
    assert context["runAsNonRoot"] is True and context["runAsUser"] != 0
    assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {"drop": ["ALL"]}
    assert not context.get("privileged") and context["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in lightcell["env"]}
    mounts = {m["mountPath"] for m in lightcell["volumeMounts"]}
    assert {env["HOME"], env["XDG_CACHE_HOME"]} <= mounts  # writable: the root filesystem is not
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        assert "limits" in c["resources"] and "requests" in c["resources"], c["name"]


def test_every_pod_runs_unprivileged() -> None:
    for path in MANIFESTS:
        for doc in _docs(path):
            if doc["kind"] not in ("Deployment", "DaemonSet"):
                continue
            pod = doc["spec"]["template"]["spec"]
            assert pod["automountServiceAccountToken"] is False
            for c in [*pod.get("initContainers", []), *pod["containers"]]:
                context = c["securityContext"]
                assert context["allowPrivilegeEscalation"] is False and not context.get("privileged")
                if context.get("runAsUser") == 0:  # only the DaemonSet's chown of its host directory
                    assert context["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}


# --- the probes, run verbatim against a real server ------------------------------------------


@pytest.fixture(scope="module")
def serving(built_plugins: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """`lightcell serve` with the Pod's arguments (paths moved under a temporary directory;
    the wasmtime tier, which needs no compile: the probes check serving, not tiers)."""
    work = tmp_path_factory.mktemp("k8s")
    args = list(_container(_pod("Deployment", "envoy-lightcell"), "lightcell")["args"])
    args[args.index("--envoy-config") + 1] = str(_local_config(work, built_plugins, tier="wasmtime"))
    socket = work / "run" / Path(_flag(args, "--socket")).name
    socket.parent.mkdir(mode=0o700)
    args[args.index("--socket") + 1] = str(socket)
    sockets = [str(worker_socket(socket, i)) for i in range(int(_flag(args, "--workers")))]
    env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
    command = [*lightcell_command(), *args]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while not all(Path(s).exists() for s in sockets):
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            assert time.monotonic() < deadline, "lightcell serve did not create its sockets"
            time.sleep(0.1)
        yield sockets
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _probe(probe: str, sockets: list[str]) -> subprocess.CompletedProcess[str]:
    command = _container(_pod("Deployment", "envoy-lightcell"), "lightcell")[probe]["exec"]["command"]
    assert command[0] == "python"
    run = [sys.executable, *command[1:3], *sockets]  # this Python: the image's has grpc too
    return subprocess.run(run, capture_output=True, text=True, timeout=60)


def test_probes_pass_against_serve_and_fail_without_a_worker(serving: list[str], tmp_path: Path) -> None:
    pod = _pod("Deployment", "envoy-lightcell")
    lightcell = _container(pod, "lightcell")
    assert lightcell["startupProbe"]["exec"] == lightcell["readinessProbe"]["exec"]  # one check: SERVING
    deadline = time.monotonic() + 60  # the sockets exist a moment before the health service says SERVING
    while (ready := _probe("readinessProbe", serving)).returncode != 0:
        assert time.monotonic() < deadline, ready.stderr
        time.sleep(0.2)
    assert _probe("livenessProbe", serving).returncode == 0
    for probe in ("readinessProbe", "livenessProbe"):
        result = _probe(probe, [*serving, str(tmp_path / "missing.sock")])
        assert result.returncode != 0 and "UNAVAILABLE" in result.stderr, (probe, result.stderr)
