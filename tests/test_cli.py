"""The `lightcell` command: check's report, serve as a real subprocess, delegated subcommands."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc import cli
from extproc.harness import lightcell_command, tiers_in_log, wait_for_unix_socket

EXT_PROC = "type.googleapis.com/envoy.extensions.filters.network.ext_proc.v3.NetworkExternalProcessor"


def _listener(
    name: str, policy: dict[str, Any], failure_mode_allow: bool = False, skip_write: bool = False
) -> dict[str, Any]:
    mode = {"process_read": "STREAMED", "process_write": "SKIP" if skip_write else "STREAMED"}
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "metadata": {"filter_metadata": {"lightcell": policy}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.ext_proc",
                        "typed_config": {
                            "@type": EXT_PROC,
                            "stat_prefix": name,
                            "failure_mode_allow": failure_mode_allow,
                            "processing_mode": mode,
                            "grpc_service": {
                                "envoy_grpc": {"cluster_name": "lightcell"},
                                "initial_metadata": [{"key": "x-lightcell-listener", "value": name}],
                            },
                        },
                    }
                ]
            }
        ],
    }


@pytest.fixture
def good_config(tmp_path: Path, built_plugins: dict[str, Path]) -> Path:
    listeners = [
        _listener(
            "probe_kv",
            {"plugin": str(built_plugins["probe"]), "config": "call=kv", "grants": ["kv", "log"]},
            skip_write=True,
        ),
        _listener(
            "upper",
            {"plugin": str(built_plugins["rewrite"]), "tier": "wasmtime", "failure_mode": "allow"},
        ),
    ]
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump({"static_resources": {"listeners": listeners}}))
    return path


def test_check_reports_each_listener(
    good_config: Path, built_plugins: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check", "--envoy-config", str(good_config)]) == 0
    out = capsys.readouterr().out
    assert f"{good_config}: OK, 2 listener(s)" in out
    probe, upper = out.split("\nlistener probe_kv\n")[1].split("\nlistener upper\n")
    # probe imports every capability; it is granted kv and log only.
    assert str(built_plugins["probe"]) in probe
    assert "tier          auto -> microvm (/dev/kvm works" in probe
    assert "config        'call=kv'" in probe
    assert "kv (needs grant kv)" in probe and "egress (needs grant egress)" in probe
    assert "grants        kv, log" in probe
    missing = next(line for line in probe.splitlines() if line.strip().startswith("missing"))
    assert "clock, connection, egress, metadata, random" in missing
    assert "denied at runtime" in missing and "allowed" in missing
    # rewrite imports nothing: nothing missing; the explicit tier is shown as is.
    assert "tier          wasmtime" in upper
    assert "imports       none" in upper
    assert "missing       none" in upper
    assert "failure_mode  allow" in upper
    # probe_kv's ext_proc filter skips the write direction: those bytes are not filtered.
    assert "warning:" in out and "process_write is SKIP" in out and "not filtered" in out


def test_check_reports_the_tier_chosen_once_at_load(
    good_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """check prints the very choice the plugin was loaded with (one choice per listener,
    as serve makes it), never a second, possibly different, one."""
    from extproc import plugins
    from extproc.listener import TierChoice
    from vmm.policy import SandboxSpec, Tier

    real = plugins.choose_tier
    calls: list[str] = []

    def counted(spec: SandboxSpec, requested: Tier, background_compile: bool = False) -> TierChoice:
        calls.append(spec.listener)
        choice = real(spec, requested, background_compile)
        return TierChoice(choice.tier, f"choice #{len(calls)}", choice.requested)

    monkeypatch.setattr(plugins, "choose_tier", counted)
    assert cli.main(["check", "--envoy-config", str(good_config)]) == 0
    out = capsys.readouterr().out
    assert sorted(calls) == ["probe_kv", "upper"]
    probe, upper = out.split("\nlistener probe_kv\n")[1].split("\nlistener upper\n")
    assert f"(choice #{calls.index('probe_kv') + 1})" in probe
    assert f"(choice #{calls.index('upper') + 1})" in upper


@pytest.mark.parametrize("receiving", [False, True])
def test_check_warns_when_granted_metadata_would_be_dropped_by_envoy(
    tmp_path: Path, built_plugins: dict[str, Path], capsys: pytest.CaptureFixture[str], receiving: bool
) -> None:
    policy = {"plugin": str(built_plugins["probe"]), "config": "call=metadata", "grants": ["metadata"]}
    listener = _listener("tagged", policy | {"tier": "wasmtime"})
    if receiving:
        typed_config = listener["filter_chains"][0]["filters"][0]["typed_config"]
        typed_config["metadata_options"] = {"receiving_namespaces": {"untyped": ["lightcell"]}}
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump({"static_resources": {"listeners": [listener]}}))
    assert cli.main(["check", "--envoy-config", str(path)]) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    if receiving:
        assert warnings == []
        return
    (warning,) = warnings
    assert str(path) in warning and "'tagged'" in warning
    assert "filter_chains[0].filters[0]" in warning
    assert "metadata_options.receiving_namespaces.untyped does not include 'lightcell'" in warning


def test_failure_mode_allow_on_a_fail_closed_listener_is_an_error(
    tmp_path: Path, built_plugins: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "envoy.yaml"
    listener = _listener("edge", {"plugin": str(built_plugins["rewrite"])}, failure_mode_allow=True)
    path.write_text(yaml.safe_dump({"static_resources": {"listeners": [listener]}}))
    for command in ("check", "serve"):
        assert cli.main([command, "--envoy-config", str(path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("lightcell: error: ") and "'edge'" in err and "failure_mode_allow" in err


def test_check_bad_config_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    listener = _listener("edge", {"plugin": "missing.wasm"})
    path.write_text(yaml.safe_dump({"static_resources": {"listeners": [listener]}}))
    assert cli.main(["check", "--envoy-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lightcell: error: ")
    assert str(path) in err and "'edge'" in err and "plugin" in err and "missing.wasm" in err


def test_serve_subprocess_health_and_sigterm(good_config: Path, tmp_path: Path) -> None:
    socket_path = tmp_path / "lc.sock"
    argv = [*lightcell_command(), "serve", "--envoy-config", str(good_config), "--socket", str(socket_path)]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert asyncio.run(wait_for_unix_socket(socket_path, 60.0, lambda: proc.poll() is None)), (
            log.read_text()
        )

        async def health() -> int:
            async with grpc.aio.insecure_channel(f"unix:{socket_path}") as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=30)
                return int(reply.status)

        assert asyncio.run(health()) == health_pb2.HealthCheckResponse.SERVING
        # serve logs the tier it chose for each listener (the demo prints these).
        assert tiers_in_log(log.read_text()) == {"probe_kv": "microvm", "upper": "wasmtime"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not socket_path.exists()
    text = log.read_text()
    assert "serving 2 listener(s)" in text and "shutting down" in text
    # The ungranted imports are named once at start-up.
    assert "probe_kv" in text and "without a grant" in text


def test_serve_bad_config_exits_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"static_resources": {"listeners": [_listener("edge", {"grants": ["x"]})]}})
    )
    result = subprocess.run(
        [*lightcell_command(), "serve", "--envoy-config", str(path), "--socket", str(tmp_path / "s.sock")],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 1
    assert "lightcell: error:" in result.stderr and "'edge'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "s.sock").exists()


def test_demo_is_delegated_with_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(list(argv))
        return 3

    fake = types.ModuleType("extproc.demo")
    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "extproc.demo", fake)
    assert cli.main(["demo", "--once"]) == 3
    assert seen == [["--once"]]


def test_compile_without_an_implementation_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "vmm.microvm.compile", types.ModuleType("vmm.microvm.compile"))
    assert cli.main(["compile", "plugin.wasm"]) == 1
    assert "lightcell compile` is not available yet" in capsys.readouterr().err


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("serve", "check", "demo", "compile"):
        assert command in out


# --------------------------------------------------------------------------- HTTP policies

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
HTTP_EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"


def _http_listener(name: str, policy: dict[str, Any], route_policy: dict[str, Any]) -> dict[str, Any]:
    select = {
        "envoy.filters.http.ext_proc": {
            "@type": PER_ROUTE,
            "overrides": {"grpc_initial_metadata": [{"key": "x-lightcell-route", "value": "api"}]},
        }
    }
    routes = [
        {
            "name": "api",
            "match": {"prefix": "/api/"},
            "route": {"cluster": "up"},
            "metadata": {"filter_metadata": {"lightcell": route_policy}},
            "typed_per_filter_config": select,
        },
        {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": "up"}},
    ]
    ext_proc = {
        "@type": HTTP_EXT_PROC,
        # redact wants the bodies: Envoy must send them (else check refuses the policy).
        "processing_mode": {
            "request_header_mode": "SKIP",
            "response_header_mode": "SKIP",
            "request_body_mode": "STREAMED",
            "response_body_mode": "STREAMED",
        },
        "grpc_service": {
            "envoy_grpc": {"cluster_name": "lightcell"},
            "initial_metadata": [{"key": "x-lightcell-listener", "value": name}],
        },
    }
    hcm = {
        "@type": HCM,
        "stat_prefix": name,
        "http_filters": [{"name": "envoy.filters.http.ext_proc", "typed_config": ext_proc}],
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "metadata": {"filter_metadata": {"lightcell": policy}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def _http_config(tmp_path: Path, built_plugins: dict[str, Path], with_tcp: bool) -> Path:
    web = _http_listener(
        "web",
        {"plugin": str(built_plugins["redact"]), "config": "pattern=secret", "grants": ["log"]},
        {
            "plugin": str(built_plugins["redact"]),
            "config": "pattern=token",
            "tier": "wasmtime",
            "failure_mode": "reset",
            "grants": ["egress", "kv"],
            "egress_allow": ["127.0.0.1:9125"],
        },
    )
    listeners = [web]
    if with_tcp:
        listeners.append(_listener("upper", {"plugin": str(built_plugins["rewrite"]), "tier": "wasmtime"}))
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump({"static_resources": {"listeners": listeners}}))
    return path


def test_check_loads_and_lists_http_listeners_and_route_policies(
    tmp_path: Path,
    built_plugins: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from extproc import plugins
    from extproc.listener import ListenerPolicy, TierChoice
    from vmm.policy import SandboxSpec, Tier

    real, real_http = plugins.choose_tier, plugins.choose_http_tier
    loaded: list[str] = []

    def counted(spec: SandboxSpec, requested: Tier, background_compile: bool = False) -> TierChoice:
        loaded.append(spec.listener)
        return real(spec, requested, background_compile)

    def counted_http(policy: ListenerPolicy, background_compile: bool = False) -> TierChoice:
        loaded.append(policy.name)
        return real_http(policy, background_compile)

    monkeypatch.setattr(plugins, "choose_tier", counted)
    monkeypatch.setattr(plugins, "choose_http_tier", counted_http)
    path = _http_config(tmp_path, built_plugins, with_tcp=True)
    assert cli.main(["check", "--envoy-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert sorted(loaded) == ["upper", "web", "web/api"]  # every plugin is loaded, as serve would
    assert f"{path}: OK, 1 TCP listener(s), 1 HTTP listener(s) and 1 route policy(ies)\n" in out
    assert "not served" not in out
    assert "\nlistener upper\n" in out and "tier          wasmtime" in out
    web = out.split("\nhttp listener web\n")[1]
    web, api = web.split("\nroute web/api\n")
    assert "  from          listener 'web' metadata.filter_metadata.lightcell" in web
    assert f"  plugin        {built_plugins['redact']}" in web
    assert "  config        'pattern=secret'" in web
    assert "  tier          auto -> microvm (/dev/kvm works" in web  # a C plugin, as for TCP
    assert "  failure_mode  close" in web and "  grants        log" in web
    assert "  imports       none" in web and "  unused        log: granted but never imported" in web
    assert "  route policies web/api; every other route runs this one" in web
    assert "  from          route 'api' filter_chains[0].filters[0]" in api
    assert "routes[0].metadata.filter_metadata.lightcell" in api
    assert f"  plugin        {built_plugins['redact']}" in api and "  config        'pattern=token'" in api
    assert "  tier          wasmtime (asked for by the policy)" in api
    assert "  failure_mode  reset" in api and "  grants        egress, kv" in api
    assert "  egress_allow  127.0.0.1:9125" in api
    selected = "routes[0].typed_per_filter_config[envoy.filters.http.ext_proc]"
    assert "  selected by   filter_chains[0].filters[0]" in api and selected in api
    # The HTTP filter skips request headers: a warning naming the listener and the field.
    (warning,) = [line for line in out.splitlines() if line.startswith("warning:")]
    assert "'web'" in warning and "processing_mode.request_header_mode is SKIP" in warning


@pytest.mark.kvm
def test_check_loads_an_http_policy_in_the_microvm_tier(
    tmp_path: Path, built_plugins: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _http_config(tmp_path, built_plugins, with_tcp=False)
    path.write_text(path.read_text().replace("tier: wasmtime", "tier: microvm"))
    assert cli.main(["check", "--envoy-config", str(path)]) == 0
    api = capsys.readouterr().out.split("\nroute web/api\n")[1]
    assert "  tier          microvm (asked for by the policy)" in api


def test_serve_serves_a_config_with_http_listeners_only(
    tmp_path: Path,
    built_plugins: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from extproc import server
    from extproc.config import LightcellConfig

    served: list[tuple[list[str], list[str], list[str]]] = []

    async def fake_serve(config: LightcellConfig, **_: Any) -> None:
        served.append((list(config.listeners), list(config.http_listeners), list(config.routes)))

    monkeypatch.setattr(server, "serve", fake_serve)
    for with_tcp, tcp in ((False, []), (True, ["upper"])):
        path = _http_config(tmp_path, built_plugins, with_tcp=with_tcp)
        argv = ["serve", "--envoy-config", str(path), "--socket", str(tmp_path / "s.sock")]
        assert cli.main([*argv, "--worker"]) == 0  # a worker serves in this process (the supervisor's child)
        assert served.pop() == (tcp, ["web"], ["web/api"])
    assert not [r for r in caplog.records if r.name == "lightcell.cli"]  # no "not served" warning
