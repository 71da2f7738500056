"""Reading listener policies from the Envoy bootstrap: a good config, and every kind of bad one."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc import plugins
from extproc.config import ConfigError, load_config
from extproc.listener import FailureMode
from vmm.policy import EgressTarget, Tier

EXT_PROC = "type.googleapis.com/envoy.extensions.filters.network.ext_proc.v3.NetworkExternalProcessor"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def ext_proc_filter(listener_name: str | None, **extra: Any) -> dict[str, Any]:
    grpc_service: dict[str, Any] = {"envoy_grpc": {"cluster_name": "lightcell"}}
    if listener_name is not None:
        grpc_service["initial_metadata"] = [{"key": "x-lightcell-listener", "value": listener_name}]
    return {
        "name": "envoy.filters.network.ext_proc",
        "typed_config": {
            "@type": EXT_PROC,
            "stat_prefix": "lc",
            "failure_mode_allow": False,
            "processing_mode": {"process_read": "STREAMED", "process_write": "STREAMED"},
            "grpc_service": grpc_service,
            **extra,
        },
    }


def listener(
    name: str, policy: dict[str, Any] | None, filters: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    chain = filters if filters is not None else [ext_proc_filter(name)]
    out: dict[str, Any] = {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
        "filter_chains": [
            {
                "filters": [
                    *chain,
                    {
                        "name": "tcp",
                        "typed_config": {"@type": TCP_PROXY, "stat_prefix": "t", "cluster": "up"},
                    },
                ]
            }
        ],
    }
    if policy is not None:
        out["metadata"] = {"filter_metadata": {"lightcell": policy}}
    return out


def bootstrap(*listeners: dict[str, Any]) -> dict[str, Any]:
    return {
        "static_resources": {
            "listeners": list(listeners),
            "clusters": [
                {
                    "name": "up",
                    "type": "STATIC",
                    "load_assignment": {
                        "cluster_name": "up",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {"address": "127.0.0.1", "port_value": 9000}
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        }
    }


GOOD_POLICY: dict[str, Any] = {
    "plugin": "plugins/rewrite.wasm",
    "config": "read=upper,write=rot13",
    "tier": "auto",
    "failure_mode": "reset",
    "grants": ["log", "kv", "egress"],
    "egress_allow": ["127.0.0.1:9125", "[::1]:53", "stats.local:8125"],
    "limits": {"memory_mb": 32, "event_cpu_ms": 75},
}


@pytest.fixture
def confdir(tmp_path: Path, built_plugins: dict[str, Path]) -> Path:
    """A config directory with plugins/rewrite.wasm beside where the config goes."""
    (tmp_path / "plugins").mkdir()
    shutil.copy(built_plugins["rewrite"], tmp_path / "plugins" / "rewrite.wasm")
    (tmp_path / "plugins" / "not-a-plugin.wasm").write_bytes(b"\0asm\x01\0\0\0")  # valid, empty module
    return tmp_path


def write(directory: Path, doc: dict[str, Any] | str, name: str = "envoy.yaml") -> Path:
    path = directory / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def test_good_config(confdir: Path) -> None:
    defaults = {"plugin": "plugins/rewrite.wasm"}
    path = write(
        confdir,
        bootstrap(
            listener("edge", GOOD_POLICY), listener("plain", defaults), listener("no_policy", None, [])
        ),
    )
    config = load_config(path)
    assert list(config.listeners) == ["edge", "plain"]
    edge = config.listeners["edge"]
    assert edge.name == "edge" and edge.spec.listener == "edge"
    assert edge.spec.plugin_path == str((confdir / "plugins" / "rewrite.wasm").resolve())
    assert edge.plugin == "rewrite"
    assert edge.spec.plugin_config == "read=upper,write=rot13"
    assert edge.tier is Tier.AUTO
    assert edge.failure_mode is FailureMode.RESET
    assert edge.spec.grants.capabilities == frozenset({"log", "kv", "egress"})
    assert edge.spec.grants.egress_allow == frozenset(
        {EgressTarget("127.0.0.1", 9125), EgressTarget("::1", 53), EgressTarget("stats.local", 8125)}
    )
    assert edge.spec.limits.memory_bytes == 32 * 1024 * 1024
    assert edge.spec.limits.event_cpu_ms == 75
    # Defaults: no grants, fail closed, auto tier, empty config, default limits.
    plain = config.listeners["plain"]
    assert plain.spec.grants.capabilities == frozenset() and plain.spec.grants.egress_allow == frozenset()
    assert plain.failure_mode is FailureMode.CLOSE and plain.tier is Tier.AUTO
    assert plain.spec.plugin_config == ""
    assert plain.spec.limits.memory_bytes == 16 * 1024 * 1024
    assert config.warnings == ()


def test_the_demo_config_in_the_repo_is_valid(built_plugins: dict[str, Path]) -> None:
    config = load_config(Path(__file__).parent.parent / "envoy-config" / "demo.yaml")
    assert set(config.listeners) == {"rewrite", "counter", "fail_closed", "denied"}


def test_absolute_plugin_path(confdir: Path) -> None:
    policy = {"plugin": str(confdir / "plugins" / "rewrite.wasm")}
    sub = confdir / "elsewhere"
    sub.mkdir()
    config = load_config(write(sub, bootstrap(listener("edge", policy))))
    assert config.listeners["edge"].spec.plugin_path == str(confdir / "plugins" / "rewrite.wasm")


@pytest.mark.parametrize("mode", ["close", "reset", None])
def test_failure_mode_allow_in_envoy_while_policy_fails_closed_is_an_error(
    confdir: Path, mode: str | None
) -> None:
    policy = {"plugin": "plugins/rewrite.wasm"} | ({"failure_mode": mode} if mode else {})
    lst = listener("edge", policy, [ext_proc_filter("edge", failure_mode_allow=True)])
    path = write(confdir, bootstrap(lst))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "'edge'" in message
    assert "filters[0]" in message and ".failure_mode_allow" in message
    assert (mode or "close") in message
    # Consistent settings: no error, no warning.
    lst = listener(
        "edge",
        {"plugin": "plugins/rewrite.wasm", "failure_mode": "allow"},
        [ext_proc_filter("edge", failure_mode_allow=True)],
    )
    assert load_config(write(confdir, bootstrap(lst))).warnings == ()


@pytest.mark.parametrize(
    ("processing_mode", "skipped"),
    [
        ({"process_read": "SKIP", "process_write": "STREAMED"}, ["process_read"]),
        ({"process_read": "STREAMED", "process_write": "SKIP"}, ["process_write"]),
        ({"process_read": "SKIP", "process_write": "SKIP"}, ["process_read", "process_write"]),
        ({"process_write": "SKIP"}, ["process_write"]),
        ({}, []),
    ],
)
def test_a_skipped_direction_is_a_warning(
    confdir: Path, processing_mode: dict[str, str], skipped: list[str]
) -> None:
    lst = listener(
        "edge",
        {"plugin": "plugins/rewrite.wasm"},
        [ext_proc_filter("edge", processing_mode=processing_mode)],
    )
    path = write(confdir, bootstrap(lst))
    config = load_config(path)
    assert len(config.warnings) == len(skipped)
    for warning, key in zip(config.warnings, skipped, strict=True):
        assert str(path) in warning and "'edge'" in warning
        assert f"processing_mode.{key} is SKIP" in warning and "not filtered" in warning


METADATA_RECEIVED = {"receiving_namespaces": {"untyped": ["lightcell"]}}


@pytest.mark.parametrize(
    ("grants", "metadata_options", "warned"),
    [
        (["metadata"], None, True),
        (["metadata", "log"], {}, True),
        (["metadata"], {"forwarding_namespaces": {"untyped": ["lightcell"]}}, True),
        (["metadata"], {"receiving_namespaces": {"untyped": ["other"]}}, True),
        (["metadata"], {"receiving_namespaces": {"typed": ["lightcell"]}}, True),
        (["metadata"], METADATA_RECEIVED, False),
        (["metadata"], {"receiving_namespaces": {"untyped": ["other", "lightcell"]}}, False),
        (["metadata"], {"receivingNamespaces": {"untyped": ["lightcell"]}}, False),  # JSON name
        (["log"], None, False),  # no metadata grant: nothing to receive
    ],
)
def test_a_metadata_grant_without_receiving_namespace_is_a_warning(
    confdir: Path, grants: list[str], metadata_options: dict[str, Any] | None, warned: bool
) -> None:
    extra = {} if metadata_options is None else {"metadata_options": metadata_options}
    lst = listener(
        "edge", {"plugin": "plugins/rewrite.wasm", "grants": grants}, [ext_proc_filter("edge", **extra)]
    )
    path = write(confdir, bootstrap(lst))
    config = load_config(path)  # Envoy's own schema accepts the option (validated here too)
    if not warned:
        assert config.warnings == ()
        return
    (warning,) = config.warnings
    assert str(path) in warning and "'edge'" in warning
    assert "filter_chains[0].filters[0]" in warning
    assert "metadata_options.receiving_namespaces.untyped does not include 'lightcell'" in warning
    assert "grants metadata" in warning


Mutation = Callable[[dict[str, Any]], None]


def _policy(**changes: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        policy = doc["static_resources"]["listeners"][0]["metadata"]["filter_metadata"]["lightcell"]
        for key, value in changes.items():
            if value is None:
                policy.pop(key, None)
            else:
                policy[key] = value

    return mutate


def _ext_proc(**changes: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        typed = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        typed["grpc_service"].update(changes)

    return mutate


def _drop_ext_proc(doc: dict[str, Any]) -> None:
    doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"].pop(0)


def _envoy_typo(doc: dict[str, Any]) -> None:
    doc["static_resources"]["listeners"][0]["filter_chainz"] = []


def _unknown_type(doc: dict[str, Any]) -> None:
    typed = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][1]["typed_config"]
    typed["@type"] = "type.googleapis.com/envoy.extensions.filters.network.nope.v3.Nope"


def _no_policies(doc: dict[str, Any]) -> None:
    del doc["static_resources"]["listeners"][0]["metadata"]


BAD: dict[str, tuple[Mutation, list[str]]] = {
    "unknown_grant": (_policy(grants=["log", "teleport"]), ["'edge'", "grants[1]", "teleport", "known:"]),
    "grants_not_a_list": (_policy(grants="log"), ["'edge'", "lightcell.grants", "expected a list"]),
    "unknown_key": (_policy(plugn="x.wasm"), ["'edge'", "unknown key 'plugn'"]),
    "missing_plugin_key": (_policy(plugin=None), ["'edge'", "lightcell.plugin", "missing"]),
    "missing_plugin_file": (
        _policy(plugin="plugins/nope.wasm"),
        ["'edge'", "lightcell.plugin", "nope.wasm", "not found"],
    ),
    "bad_failure_mode": (
        _policy(failure_mode="maybe"),
        ["'edge'", "failure_mode", "'maybe'", "close | reset | allow"],
    ),
    "bad_tier": (_policy(tier="quantum"), ["'edge'", "lightcell.tier", "'quantum'"]),
    "config_not_a_string": (_policy(config=7), ["'edge'", "lightcell.config", "string"]),
    "egress_without_grant": (
        _policy(grants=["log"], egress_allow=["127.0.0.1:9125"]),
        ["'edge'", "egress_allow", "grants does not include egress"],
    ),
    "bad_egress_target": (
        _policy(grants=["egress"], egress_allow=["127.0.0.1"]),
        ["'edge'", "egress_allow[0]", "host:port"],
    ),
    "egress_port_out_of_range": (
        _policy(grants=["egress"], egress_allow=["127.0.0.1:70000"]),
        ["'edge'", "egress_allow[0]"],
    ),
    "unknown_limit": (_policy(limits={"memory_gb": 1}), ["'edge'", "lightcell.limits", "memory_gb"]),
    "bad_limit_value": (_policy(limits={"memory_mb": "lots"}), ["'edge'", "limits.memory_mb", "'lots'"]),
    "zero_limit": (_policy(limits={"event_cpu_ms": 0}), ["'edge'", "limits.event_cpu_ms"]),
    "policy_not_a_mapping": (
        lambda d: d["static_resources"]["listeners"][0]["metadata"]["filter_metadata"].update(lightcell="x"),
        ["'edge'", "filter_metadata.lightcell", "mapping"],
    ),
    "missing_listener_header": (
        _ext_proc(initial_metadata=[]),
        ["'edge'", "initial_metadata", "x-lightcell-listener"],
    ),
    "wrong_listener_header": (
        _ext_proc(initial_metadata=[{"key": "x-lightcell-listener", "value": "other"}]),
        ["'edge'", "initial_metadata", "'other'"],
    ),
    "no_ext_proc_filter": (_drop_ext_proc, ["'edge'", "ext_proc", "never run"]),
    "envoy_schema": (_envoy_typo, ["not a valid Envoy bootstrap", "filter_chainz"]),
    "unknown_type": (_unknown_type, ["@type", "envoy.extensions.filters.network.nope.v3.Nope"]),
    "no_policies": (_no_policies, ["no listener carries", "lightcell"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config(confdir: Path, case: str) -> None:
    mutate, words = BAD[case]
    doc = copy.deepcopy(bootstrap(listener("edge", dict(GOOD_POLICY))))
    mutate(doc)
    path = write(confdir, doc, "bad.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}:"), message  # every message names the file
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("static_resources: {listeners: [\n", ["invalid YAML"]),
        ("- just\n- a list\n", ["expected a mapping"]),
    ],
)
def test_not_a_bootstrap(confdir: Path, text: str, words: list[str]) -> None:
    path = write(confdir, text, "broken.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:")
    for word in words:
        assert word in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


async def test_plugin_not_implementing_the_contract_is_a_config_error(confdir: Path) -> None:
    doc = bootstrap(
        listener("good", {"plugin": "plugins/rewrite.wasm"}),
        listener("edge", {"plugin": "plugins/not-a-plugin.wasm"}),
    )
    config = load_config(write(confdir, doc))
    with pytest.raises(ConfigError) as info:
        await plugins.load_all(config)
    message = str(info.value)
    assert "'edge'" in message and "lightcell.plugin" in message and "not-a-plugin.wasm" in message
    assert "'good'" not in message


async def test_plugin_that_is_not_wasm_is_a_config_error(confdir: Path) -> None:
    (confdir / "plugins" / "text.wasm").write_text("hello")
    config = load_config(write(confdir, bootstrap(listener("edge", {"plugin": "plugins/text.wasm"}))))
    with pytest.raises(ConfigError, match=r"'edge'.*text\.wasm"):
        await plugins.load_all(config)


async def test_all_plugins_load_and_auto_resolves_to_microvm_where_kvm_works(confdir: Path) -> None:
    # This machine (and CI) has /dev/kvm: auto gives the C plugin two walls.
    config = load_config(write(confdir, bootstrap(listener("edge", dict(GOOD_POLICY)))))
    loaded = await plugins.load_all(config)
    try:
        assert loaded["edge"].factory.tier == "microvm"
        assert loaded["edge"].kv is not None
    finally:
        await plugins.close_all(loaded.values())


async def test_auto_falls_back_to_wasmtime_for_a_component_with_one_warning(
    confdir: Path, built_plugins: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    shutil.copy(built_plugins["counter"], confdir / "plugins" / "counter.wasm")
    counter = {"plugin": "plugins/counter.wasm", "tier": "auto", "grants": ["kv"]}
    doc = bootstrap(listener("edge", dict(GOOD_POLICY)), listener("py", counter))
    config = load_config(write(confdir, doc))
    loaded = await plugins.load_all(config)
    try:
        assert loaded["py"].factory.tier == "wasmtime" and loaded["py"].one_wall_reason
        assert loaded["edge"].factory.tier == "microvm" and loaded["edge"].one_wall_reason is None
        warnings = [r.getMessage() for r in caplog.records if "only one wall is up" in r.getMessage()]
        assert len(warnings) == 1 and "py:" in warnings[0] and "edge" not in warnings[0]
    finally:
        await plugins.close_all(loaded.values())


async def test_a_tier_without_load_is_a_clear_error(confdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand-in for a tier module that exists but has no load() yet.
    monkeypatch.setitem(plugins._TIER_MODULES, Tier.MICROVM, "vmm.metrics")
    policy = {"plugin": "plugins/rewrite.wasm", "tier": "microvm"}
    config = load_config(write(confdir, bootstrap(listener("edge", policy))))
    with pytest.raises(ConfigError) as info:
        await plugins.load_all(config)
    assert "'edge'" in str(info.value) and "tier 'microvm' is not available" in str(info.value)


def test_memory_over_the_micro_vm_limit_is_refused_for_tier_microvm(confdir: Path) -> None:
    from vmm.microvm.layout import MAX_MEMORY_BYTES

    over = (MAX_MEMORY_BYTES >> 20) + 1
    policy = {**GOOD_POLICY, "tier": "microvm", "limits": {"memory_mb": over}}
    with pytest.raises(ConfigError) as info:
        load_config(write(confdir, bootstrap(listener("edge", policy))))
    message = str(info.value)
    assert "'edge'" in message and "limits.memory_mb" in message
    assert f"{over} is over the micro-VM tier's limit of {MAX_MEMORY_BYTES >> 20}" in message
    # At the limit it is accepted.
    fits = {**GOOD_POLICY, "tier": "microvm", "limits": {"memory_mb": MAX_MEMORY_BYTES >> 20}}
    assert load_config(write(confdir, bootstrap(listener("edge", fits)))).listeners["edge"]


async def test_auto_with_memory_over_the_micro_vm_limit_falls_back_to_wasmtime(
    confdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from vmm.microvm.layout import MAX_MEMORY_BYTES

    policy = {**GOOD_POLICY, "tier": "auto", "limits": {"memory_mb": (MAX_MEMORY_BYTES >> 20) + 1}}
    config = load_config(write(confdir, bootstrap(listener("big", policy))))
    loaded = await plugins.load_all(config)
    try:
        big = loaded["big"]
        assert big.factory.tier == "wasmtime" and big.tier.tier is Tier.WASMTIME
        assert big.one_wall_reason is not None and "over the micro-VM's limit" in big.one_wall_reason
        warnings = [r.getMessage() for r in caplog.records if "only one wall is up" in r.getMessage()]
        assert len(warnings) == 1 and "big:" in warnings[0]
    finally:
        await plugins.close_all(loaded.values())
