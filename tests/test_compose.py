"""The deployment files are well formed: docker-compose.yml, Dockerfile, the Envoy configs.

No Docker daemon is needed: the compose file is parsed and cross-checked
against the repository, and every Envoy config is validated by the real Envoy
(`--mode validate`).
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SOCKET_DIR = "/run/lightcell"
APP_DIR = "/app"  # where the Dockerfile puts the repository
CONFIGS = ["compose.yaml", "demo.yaml", "http.yaml"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def _envoy_config(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def _pipe_paths(config: dict[str, Any]) -> list[str]:
    return [
        ep["endpoint"]["address"]["pipe"]["path"]
        for c in config["static_resources"]["clusters"]
        for group in c["load_assignment"]["endpoints"]
        for ep in group["lb_endpoints"]
        if "pipe" in ep["endpoint"]["address"]
    ]


def test_services_volumes_devices(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"envoy", "lightcell", "echo", "http_echo"} <= set(services)
    assert services["envoy"]["image"] == "envoyproxy/envoy:v1.40-latest"
    assert services["lightcell"]["build"]["dockerfile"] == "Dockerfile"
    assert "/dev/kvm:/dev/kvm" in services["lightcell"]["devices"]
    # Envoy and Lightcell share the socket's directory through one named volume.
    assert "lightcell-socket" in compose["volumes"]
    for name in ("envoy", "lightcell"):
        assert f"lightcell-socket:{SOCKET_DIR}" in services[name]["volumes"], name


def test_echo_service_runs_an_installed_module(compose: dict[str, Any]) -> None:
    """The echo upstream is `python -m MODULE echo` from the installed package, not a test file."""
    entry = compose["services"]["echo"]["entrypoint"]
    assert entry[:2] == ["python", "-m"] and entry[3] == "echo"
    module = entry[2]
    assert module.split(".")[0] in ("extproc", "vmm"), module  # pyproject's installed packages
    assert importlib.util.find_spec(f"{module}.__main__") is not None, module


def test_http_echo_service_runs_an_installed_module(compose: dict[str, Any]) -> None:
    entry = compose["services"]["http_echo"]["entrypoint"]
    assert entry[:2] == ["python", "-m"]
    module = entry[2]
    assert module.split(".")[0] in ("extproc", "vmm"), module
    assert importlib.util.find_spec(module) is not None, module


def test_upstream_clusters_name_compose_services_and_their_ports(compose: dict[str, Any]) -> None:
    """Every DNS cluster of compose.yaml is a compose service listening on the cluster's port."""
    config = _envoy_config(ROOT / "envoy-config" / "compose.yaml")
    services = compose["services"]
    dns = [c for c in config["static_resources"]["clusters"] if c["type"] == "STRICT_DNS"]
    assert {c["name"] for c in dns} == {"echo", "http_echo"}
    for cluster in dns:
        (group,) = cluster["load_assignment"]["endpoints"]
        (endpoint,) = group["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        entry = services[address["address"]]["entrypoint"]
        assert int(_flag(entry, "--port")) == address["port_value"], cluster["name"]
        assert _flag(entry, "--host") == "0.0.0.0", cluster["name"]  # reachable from Envoy's container


def test_socket_path_agrees_everywhere(compose: dict[str, Any]) -> None:
    command = compose["services"]["lightcell"]["command"]
    socket_path = _flag(command, "--socket")
    assert socket_path.startswith(SOCKET_DIR + "/")
    config_in_image = _flag(command, "--envoy-config")
    assert config_in_image.startswith(APP_DIR + "/")
    config = _envoy_config(ROOT / config_in_image.removeprefix(APP_DIR + "/"))
    assert _pipe_paths(config) == [socket_path]


def test_envoy_mounts_the_same_config_lightcell_reads(compose: dict[str, Any]) -> None:
    mounts = [v for v in compose["services"]["envoy"]["volumes"] if v.endswith("/etc/envoy/envoy.yaml:ro")]
    assert len(mounts) == 1
    host_path = ROOT / mounts[0].split(":")[0]
    lightcell_path = _flag(compose["services"]["lightcell"]["command"], "--envoy-config")
    assert host_path.resolve() == (ROOT / lightcell_path.removeprefix(APP_DIR + "/")).resolve()
    assert _flag(compose["services"]["envoy"]["command"], "-c") == "/etc/envoy/envoy.yaml"


def test_published_ports_are_listeners(compose: dict[str, Any]) -> None:
    config = _envoy_config(ROOT / "envoy-config" / "compose.yaml")
    listener_ports = {
        lst["address"]["socket_address"]["port_value"] for lst in config["static_resources"]["listeners"]
    }
    published = {int(p.rsplit(":", 1)[1]) for p in compose["services"]["envoy"]["ports"]}
    assert published and published <= listener_ports
    assert all(p.startswith("127.0.0.1:") for p in compose["services"]["envoy"]["ports"])  # loopback only


@pytest.mark.parametrize("name", ["compose.yaml", "demo.yaml"])
def test_an_http_listener_is_published_next_to_the_tcp_ones(compose: dict[str, Any], name: str) -> None:
    """compose and the demo both show HTTP: a listener with an HTTP connection manager whose
    ext_proc filter names it to Lightcell, with a policy of its own."""
    config = _envoy_config(ROOT / "envoy-config" / name)
    http = [
        lst for lst in config["static_resources"]["listeners"]
        if lst["filter_chains"][0]["filters"][0]["name"] == "envoy.filters.network.http_connection_manager"
    ]  # fmt: skip
    assert [lst["name"] for lst in http] == ["redact"]
    (lst,) = http
    assert _policy(lst)["plugin"].endswith("redact.wasm")
    manager = lst["filter_chains"][0]["filters"][0]["typed_config"]
    ext_proc = manager["http_filters"][0]["typed_config"]
    names_it = [{"key": "x-lightcell-listener", "value": "redact"}]
    assert ext_proc["grpc_service"]["initial_metadata"] == names_it
    assert ext_proc["failure_mode_allow"] is False
    if name == "compose.yaml":
        port = lst["address"]["socket_address"]["port_value"]
        assert f"127.0.0.1:{port}:{port}" in compose["services"]["envoy"]["ports"]


def _stages(text: str) -> list[list[str]]:
    """The Dockerfile's build stages, each as its instruction lines (continuations joined)."""
    stages: list[list[str]] = []
    for line in text.replace("\\\n", " ").splitlines():
        if line.startswith("FROM "):
            stages.append([])
        if line.strip() and not line.startswith("#") and stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_references_exist() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources = shlex.split(line)[1:-1]
            for src in sources:
                assert (ROOT / src).exists(), src
    assert "plugins/build.py" in text and (ROOT / "plugins" / "build.py").is_file()
    assert "lightcell" in text
    assert (ROOT / "pyproject.toml").is_file()


def test_the_production_image_has_no_dev_extra() -> None:
    """Test and lint tools may build the plugins, but the final stage installs only the runtime."""
    final = _stages(DOCKERFILE.read_text())[-1]
    installs = [line for line in final if "pip install" in line]
    assert installs and all("[dev]" not in line for line in installs), installs
    assert any(line.startswith("ENTRYPOINT") and "lightcell" in line for line in final)


def _policy(node: dict[str, Any]) -> Any:
    return node.get("metadata", {}).get("filter_metadata", {}).get("lightcell")


def _http_routes(listeners: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every route of the listeners' HTTP connection managers (route policies live there)."""
    return [
        route
        for lst in listeners
        for chain in lst["filter_chains"]
        for flt in chain["filters"]
        for vhost in flt["typed_config"].get("route_config", {}).get("virtual_hosts", [])
        for route in vhost.get("routes", [])
    ]


@pytest.mark.parametrize("name", CONFIGS)
def test_plugin_paths_are_built_examples(name: str) -> None:
    """Policies point at files plugins/build.py produces (paths relative to the config)."""
    from plugins import build as plugin_build

    config = _envoy_config(ROOT / "envoy-config" / name)
    out = plugin_build.DEFAULT_OUT.resolve()
    listeners = config["static_resources"]["listeners"]
    policies = [_policy(lst) for lst in listeners if _policy(lst)]
    assert policies
    policies += [_policy(route) for route in _http_routes(listeners) if _policy(route)]
    for policy in policies:
        path = (ROOT / "envoy-config" / policy["plugin"]).resolve()
        assert path.parent == out, policy["plugin"]
        assert path.stem in plugin_build.PLUGINS, policy["plugin"]


@pytest.mark.envoy
@pytest.mark.parametrize("name", CONFIGS)
def test_envoy_accepts_config(envoy_bin: Path, name: str) -> None:
    result = subprocess.run(
        [str(envoy_bin), "--mode", "validate", "-c", str(ROOT / "envoy-config" / name)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


@pytest.mark.envoy
@pytest.mark.parametrize("name", CONFIGS)
def test_lightcell_check_accepts_config(built_plugins: dict[str, Path], name: str) -> None:
    """Lightcell itself loads every plugin these configs name (relative paths work from the repo too)."""
    from extproc.harness import lightcell_command

    result = subprocess.run(
        [*lightcell_command(), "check", "--envoy-config", str(ROOT / "envoy-config" / name)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
