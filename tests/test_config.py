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
from extproc.http_policy import FilterMode
from extproc.http_protocol import BodyMode
from extproc.listener import FailureMode, Protocol
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
    "egress_host_over_a_dns_name": (
        _policy(grants=["egress"], egress_allow=["a" * 254 + ":9125"]),
        ["'edge'", "egress_allow[0]", "at most 253 bytes"],
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


async def test_auto_puts_a_componentize_py_component_in_the_micro_vm(
    confdir: Path, built_plugins: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    # A tcp-filter component compiles whole for the micro-VM (vmm/microvm/component_*.py):
    # two walls, no warning (the fallback's warning: the memory test below).
    shutil.copy(built_plugins["counter"], confdir / "plugins" / "counter.wasm")
    counter = {"plugin": "plugins/counter.wasm", "tier": "auto", "grants": ["kv"]}
    doc = bootstrap(listener("edge", dict(GOOD_POLICY)), listener("py", counter))
    config = load_config(write(confdir, doc))
    loaded = await plugins.load_all(config)
    try:
        assert loaded["py"].factory.tier == "microvm" and loaded["py"].one_wall_reason is None
        assert loaded["edge"].factory.tier == "microvm" and loaded["edge"].one_wall_reason is None
        assert not [r for r in caplog.records if "only one wall is up" in r.getMessage()]
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


# --------------------------------------------------------------------------- HTTP listeners and routes

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
HTTP_EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
EXT_PROC_NAME = "envoy.filters.http.ext_proc"
PER_ROUTE_AT = f"typed_per_filter_config[{EXT_PROC_NAME}]"


def http_ext_proc(listener_name: str | None, **extra: Any) -> dict[str, Any]:
    grpc_service: dict[str, Any] = {"envoy_grpc": {"cluster_name": "lightcell"}}
    if listener_name is not None:
        grpc_service["initial_metadata"] = [{"key": "x-lightcell-listener", "value": listener_name}]
    return {
        "name": EXT_PROC_NAME,
        "typed_config": {
            "@type": HTTP_EXT_PROC,
            "failure_mode_allow": False,
            "processing_mode": {"request_header_mode": "SEND", "request_body_mode": "STREAMED"},
            "grpc_service": grpc_service,
            **extra,
        },
    }


def per_route(route: str | None, **overrides: Any) -> dict[str, Any]:
    """typed_per_filter_config selecting route policy `route` (None: no x-lightcell-route)."""
    metadata = [] if route is None else [{"key": "x-lightcell-route", "value": route}]
    return {
        EXT_PROC_NAME: {"@type": PER_ROUTE, "overrides": {"grpc_initial_metadata": metadata, **overrides}}
    }


def http_route(
    name: str | None, prefix: str, policy: dict[str, Any] | None = None, select: str | None = None
) -> dict[str, Any]:
    route: dict[str, Any] = {"match": {"prefix": prefix}, "route": {"cluster": "up"}}
    if name is not None:
        route["name"] = name
    if policy is not None:
        route["metadata"] = {"filter_metadata": {"lightcell": policy}}
    if select is not None:
        route["typed_per_filter_config"] = per_route(select)
    return route


def http_listener(
    name: str,
    policy: dict[str, Any] | None,
    routes: list[dict[str, Any]],
    http_filters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    filters = http_filters if http_filters is not None else [http_ext_proc(name)]
    hcm = {
        "@type": HCM,
        "stat_prefix": name,
        "http_filters": [*filters, {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
        "route_config": {
            "name": name,
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        },
    }
    out: dict[str, Any] = {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10080}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }
    if policy is not None:
        out["metadata"] = {"filter_metadata": {"lightcell": policy}}
    return out


ROUTE_POLICY: dict[str, Any] = {
    "plugin": "plugins/counter.wasm",
    "config": "touch=clock",
    "tier": "wasmtime",
    "failure_mode": "reset",
    "grants": ["kv", "clock"],
    "limits": {"memory_mb": 64, "event_cpu_ms": 200},
}


def http_doc(**route_policy_changes: Any) -> dict[str, Any]:
    """Listener `web`: its own policy; route `api` with its own policy selected by the route;
    route `static` sharing api's policy; route `default` running the listener's."""
    route_policy = {**ROUTE_POLICY, **route_policy_changes}
    routes = [
        http_route("api", "/api/", route_policy, select="api"),
        http_route("static", "/static/", select="api"),
        http_route("default", "/"),
    ]
    return bootstrap(http_listener("web", {"plugin": "plugins/rewrite.wasm", "grants": ["log"]}, routes))


@pytest.fixture
def httpdir(confdir: Path, built_plugins: dict[str, Path]) -> Path:
    shutil.copy(built_plugins["counter"], confdir / "plugins" / "counter.wasm")
    return confdir


ROUTES_AT = "filter_chains[0].filters[0] (envoy.filters.network.http_connection_manager).route_config"


def test_good_http_config(httpdir: Path) -> None:
    doc = http_doc()
    doc["static_resources"]["listeners"].append(listener("edge", dict(GOOD_POLICY)))
    config = load_config(write(httpdir, doc))
    # TCP listeners alone stay in `listeners` (what serve loads); HTTP ones are apart.
    assert list(config.listeners) == ["edge"] and config.listeners["edge"].protocol is Protocol.TCP
    assert config.listeners["edge"].source == ""
    assert list(config.http_listeners) == ["web"]
    web = config.http_listeners["web"]
    assert web.protocol is Protocol.HTTP and web.name == "web" and web.spec.listener == "web"
    assert web.plugin == "rewrite" and web.spec.grants.capabilities == frozenset({"log"})
    assert web.failure_mode is FailureMode.CLOSE and web.tier is Tier.AUTO
    assert web.source == "listener 'web' metadata.filter_metadata.lightcell"
    # The route policy differs in plugin, config, grants, limits, failure mode and tier.
    assert list(config.routes) == ["web/api"]
    api = config.routes["web/api"]
    assert api.protocol is Protocol.HTTP and api.name == "web/api" and api.spec.listener == "web/api"
    assert api.spec.plugin_path == str((httpdir / "plugins" / "counter.wasm").resolve())
    assert api.spec.plugin_config == "touch=clock"
    assert api.spec.grants.capabilities == frozenset({"kv", "clock"})
    assert api.spec.limits.memory_bytes == 64 << 20 and api.spec.limits.event_cpu_ms == 200
    assert api.failure_mode is FailureMode.RESET and api.tier is Tier.WASMTIME
    assert (
        api.source == f"route 'api' {ROUTES_AT}.virtual_hosts[0].routes[0].metadata.filter_metadata.lightcell"
    )
    # Selected by its own route and shared by `static`.
    assert config.route_selections == {
        "web/api": (
            f"{ROUTES_AT}.virtual_hosts[0].routes[0].{PER_ROUTE_AT}",
            f"{ROUTES_AT}.virtual_hosts[0].routes[1].{PER_ROUTE_AT}",
        )
    }
    assert config.warnings == ()


def test_an_http_only_config_is_accepted(httpdir: Path) -> None:
    config = load_config(write(httpdir, http_doc()))
    assert config.listeners == {} and list(config.http_listeners) == ["web"]


def test_an_unnamed_route_is_named_by_the_value_it_sends(httpdir: Path) -> None:
    routes = [
        http_route(None, "/api/", dict(ROUTE_POLICY), select="v1"),
        http_route("v1b", "/b/", select="v1"),
    ]
    doc = bootstrap(http_listener("web", {"plugin": "plugins/rewrite.wasm"}, routes))
    config = load_config(write(httpdir, doc))
    assert list(config.routes) == ["web/v1"] and len(config.route_selections["web/v1"]) == 2


def test_the_per_route_config_may_be_wrapped_in_a_filter_config(httpdir: Path) -> None:
    doc = http_doc()
    route = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"
    ]["virtual_hosts"][0]["routes"][0]
    inner = route["typed_per_filter_config"][EXT_PROC_NAME]
    route["typed_per_filter_config"][EXT_PROC_NAME] = {
        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
        "config": inner,
    }
    assert list(load_config(write(httpdir, doc)).routes) == ["web/api"]


async def test_load_all_loads_the_tcp_listeners_only(httpdir: Path) -> None:
    doc = http_doc()
    doc["static_resources"]["listeners"].append(listener("edge", {"plugin": "plugins/rewrite.wasm"}))
    config = load_config(write(httpdir, doc))
    loaded = await plugins.load_all(config)
    try:
        assert set(loaded) == {"edge"}
    finally:
        await plugins.close_all(loaded.values())


def _hcm(doc: dict[str, Any]) -> dict[str, Any]:
    typed: dict[str, Any] = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    return typed


def _routes(doc: dict[str, Any]) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = _hcm(doc)["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def _http_ext_proc(**changes: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        _hcm(doc)["http_filters"][0]["typed_config"].update(changes)

    return mutate


def _route(index: int, **changes: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        route = _routes(doc)[index]
        for key, value in changes.items():
            if value is None:
                route.pop(key, None)
            else:
                route[key] = value

    return mutate


def _override(index: int, **changes: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        _routes(doc)[index]["typed_per_filter_config"][EXT_PROC_NAME]["overrides"].update(changes)

    return mutate


def _drop_http_ext_proc(doc: dict[str, Any]) -> None:
    _hcm(doc)["http_filters"].pop(0)


def _listener_policy(doc: dict[str, Any]) -> dict[str, Any]:
    policy: dict[str, Any] = doc["static_resources"]["listeners"][0]["metadata"]["filter_metadata"][
        "lightcell"
    ]
    return policy


def _drop_listener_policy(doc: dict[str, Any]) -> None:
    del doc["static_resources"]["listeners"][0]["metadata"]


def _add_network_ext_proc(doc: dict[str, Any]) -> None:
    doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"].insert(0, ext_proc_filter("web"))


def _vhost_selects(value: str) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        _hcm(doc)["route_config"]["virtual_hosts"][0]["typed_per_filter_config"] = per_route(value)

    return mutate


def _duplicate_route(doc: dict[str, Any]) -> None:
    _routes(doc).insert(1, copy.deepcopy(_routes(doc)[0]))


def _full_duplex(where: str) -> dict[str, Any]:
    return {"request_header_mode": "SEND", f"{where}_body_mode": "FULL_DUPLEX_STREAMED"}


def _rename_http_listener(doc: dict[str, Any], name: str) -> None:
    lst = doc["static_resources"]["listeners"][0]
    lst["name"] = name
    for flt in _hcm(doc)["http_filters"]:
        for entry in (flt.get("typed_config") or {}).get("grpc_service", {}).get("initial_metadata", []):
            entry["value"] = name


ROUTE0 = f"{ROUTES_AT}.virtual_hosts[0].routes[0]"
FILTER0 = "filter_chains[0].filters[0] (envoy.filters.network.http_connection_manager).http_filters[0]"

BAD_HTTP: dict[str, tuple[Mutation, list[str]]] = {
    "no_http_ext_proc": (
        _drop_http_ext_proc,
        ["'web'", "http_connection_manager).http_filters:", "no envoy.filters.http.ext_proc", "never run"],
    ),
    "missing_listener_header": (
        _http_ext_proc(grpc_service={"envoy_grpc": {"cluster_name": "lightcell"}}),
        ["'web'", f"{FILTER0} ({EXT_PROC_NAME}).grpc_service.initial_metadata", "no x-lightcell-listener"],
    ),
    "wrong_listener_header": (
        _http_ext_proc(
            grpc_service={
                "envoy_grpc": {"cluster_name": "lightcell"},
                "initial_metadata": [{"key": "x-lightcell-listener", "value": "other"}],
            }
        ),
        ["'web'", "initial_metadata", "'other'", "expected the listener's own name 'web'"],
    ),
    "fail_open_filter": (
        _http_ext_proc(failure_mode_allow=True),
        ["'web'", f"({EXT_PROC_NAME}).failure_mode_allow", "listener's failure_mode is close"],
    ),
    "observability_mode_on_a_fail_closed_listener": (
        _http_ext_proc(observability_mode=True),
        ["'web'", f"({EXT_PROC_NAME}).observability_mode", "failure_mode is close",
         "nothing would be filtered"],
    ),
    "listener_named_like_a_route_policy": (
        lambda d: _rename_http_listener(d, "web/api"),
        ["'web/api'", "name", "without '/'"],
    ),
    "fail_open_route_override": (
        _override(0, failure_mode_allow=True),
        ["'web'", "route 'api'", f"{ROUTE0}.{PER_ROUTE_AT}.overrides.failure_mode_allow", "route policy's"],
    ),
    "fail_open_on_a_route_running_the_listener_policy": (
        lambda d: _routes(d)[2].update(typed_per_filter_config=per_route(None, failure_mode_allow=True)),
        ["'web'", "route 'default'", "routes[2]", "failure_mode_allow", "listener's failure_mode is close"],
    ),
    "full_duplex_request_without_trailers": (
        _http_ext_proc(processing_mode=_full_duplex("request")),
        ["'web'", "processing_mode.request_trailer_mode", "is DEFAULT", "FULL_DUPLEX_STREAMED", "SEND"],
    ),
    "full_duplex_response_with_trailers_skipped": (
        _http_ext_proc(processing_mode={**_full_duplex("response"), "response_trailer_mode": "SKIP"}),
        ["'web'", "processing_mode.response_trailer_mode", "is SKIP"],
    ),
    "route_policy_without_override": (
        _route(0, typed_per_filter_config=None),
        [
            "'web'",
            "route 'api'",
            f"{ROUTE0}.typed_per_filter_config:",
            "no ExtProcPerRoute",
            "x-lightcell-route",
        ],
    ),
    "override_without_route_key": (
        _override(0, grpc_initial_metadata=[{"key": "x-other", "value": "api"}]),
        ["route 'api'", f"{PER_ROUTE_AT}.overrides.grpc_initial_metadata", "no x-lightcell-route entry"],
    ),
    "override_naming_another_policy": (
        _override(0, grpc_initial_metadata=[{"key": "x-lightcell-route", "value": "other"}]),
        ["route 'api'", "x-lightcell-route is 'other'", "expected the route's own name 'api'"],
    ),
    "override_naming_an_unknown_policy": (
        _override(1, grpc_initial_metadata=[{"key": "x-lightcell-route", "value": "nope"}]),
        [
            "'web'",
            "route 'static'",
            "routes[1]",
            "'nope'",
            "no route of listener 'web'",
            "route policies: api",
        ],
    ),
    "virtual_host_naming_an_unknown_policy": (
        _vhost_selects("nope"),
        ["'web'", f"{ROUTES_AT}.virtual_hosts[0].{PER_ROUTE_AT}", "'nope'"],
    ),
    "duplicate_route_policy": (
        _duplicate_route,
        ["'web'", "route 'api'", "routes[1].name", "two routes carry a policy named 'api'", "routes[0]"],
    ),
    "route_policy_disabled": (
        lambda d: _routes(d)[0]["typed_per_filter_config"][EXT_PROC_NAME].update(disabled=True),
        ["route 'api'", f"{PER_ROUTE_AT}.disabled", "never run"],
    ),
    "unnamed_route_without_override": (
        _route(0, name=None, typed_per_filter_config=None),
        ["'web'", f"{ROUTE0}.name", "no name"],
    ),
    "route_name_with_slash": (
        _route(0, name="a/b"),
        ["'web'", f"{ROUTE0}.name", "without '/'"],
    ),
    "bad_route_grant": (
        lambda d: _routes(d)[0]["metadata"]["filter_metadata"]["lightcell"].update(grants=["teleport"]),
        ["'web'", "route 'api'", f"{ROUTE0}.metadata.filter_metadata.lightcell.grants[0]", "teleport"],
    ),
    "missing_route_plugin": (
        lambda d: _routes(d)[0]["metadata"]["filter_metadata"]["lightcell"].update(plugin="nope.wasm"),
        ["route 'api'", f"{ROUTE0}.metadata.filter_metadata.lightcell.plugin", "not found"],
    ),
    "route_policy_not_a_mapping": (
        lambda d: _routes(d)[0]["metadata"]["filter_metadata"].update(lightcell=["x"]),
        ["route 'api'", f"{ROUTE0}.metadata.filter_metadata.lightcell:", "expected a mapping"],
    ),
    "route_policy_without_listener_policy": (
        _drop_listener_policy,
        ["'web'", f"{ROUTE0}.metadata.filter_metadata.lightcell", "the listener has no"],
    ),
    "second_http_ext_proc_naming_another_listener": (
        lambda d: _hcm(d)["http_filters"].insert(0, http_ext_proc("ghost") | {"name": "other"}),
        ["'web'", "http_filters[0] (other).grpc_service.initial_metadata", "'ghost'"],
    ),
    "network_and_http_ext_proc": (_add_network_ext_proc, ["'web'", "filter_chains", "both", "two listeners"]),
    "close_status_below_200": (
        lambda d: _listener_policy(d).update(close_status=199),
        ["'web'", "metadata.filter_metadata.lightcell.close_status", "from 200 to 599", "199"],
    ),
    "close_status_not_a_number": (
        lambda d: _listener_policy(d).update(close_status="503"),
        ["'web'", "lightcell.close_status", "whole number", "'503'"],
    ),
    "close_status_bool": (
        lambda d: _listener_policy(d).update(close_status=True),
        ["'web'", "lightcell.close_status", "whole number"],
    ),
    "route_close_status_over_599": (
        lambda d: _routes(d)[0]["metadata"]["filter_metadata"]["lightcell"].update(close_status=600),
        ["route 'api'", f"{ROUTE0}.metadata.filter_metadata.lightcell.close_status", "600"],
    ),
    "max_header_bytes_too_small": (
        lambda d: _listener_policy(d).update(max_header_bytes=10),
        ["'web'", "lightcell.max_header_bytes", "from 1024 to 8388608", "10"],
    ),
    "envoy_schema_in_a_route": (
        _override(0, grpc_service_typo=1),
        ["not a valid Envoy bootstrap", "grpc_service_typo"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_HTTP))
def test_bad_http_config(httpdir: Path, case: str) -> None:
    mutate, words = BAD_HTTP[case]
    doc = http_doc()
    mutate(doc)
    path = write(httpdir, doc, "bad.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}:"), message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_http_keys_on_a_tcp_listener_are_an_error(confdir: Path) -> None:
    path = write(confdir, bootstrap(listener("edge", {**GOOD_POLICY, "close_status": 503})), "bad.yaml")
    with pytest.raises(ConfigError, match="close_status: only an HTTP policy"):
        load_config(path)


def test_http_policy_keys_and_filter_modes(httpdir: Path) -> None:
    """close_status / max_header_bytes (defaults 500 / 60 KiB), every processing mode a policy's
    streams may arrive under (the filter's, or a route's override replacing it whole), and
    whether Envoy would apply a mode_override (allow_mode_override, no allow-list, bodies not
    sent without waiting)."""
    doc = http_doc(close_status=451, max_header_bytes=2048)
    _http_ext_proc(allow_mode_override=True)(doc)
    _override(0, processing_mode={"request_body_mode": "BUFFERED", "response_trailer_mode": "SEND"})(doc)
    config = load_config(write(httpdir, doc))
    web, api = config.http_listeners["web"].http, config.routes["web/api"].http
    assert (web.close_status, web.max_header_bytes) == (500, 60 * 1024)
    assert (api.close_status, api.max_header_bytes) == (451, 2048)
    filter_mode = FilterMode(request_body=BodyMode.STREAMED)
    assert web.modes == (filter_mode,) and web.mode_override
    # api: its own route's override, and `static`, which selects it without one.
    assert set(api.modes) == {FilterMode(request_body=BodyMode.BUFFERED, response_trailers=True), filter_mode}
    assert api.mode_override
    for blocker in (
        {"allowed_override_modes": [{"request_body_mode": "STREAMED"}]},
        {"send_body_without_waiting_for_header_response": True},
        {"allow_mode_override": False},
    ):
        doc = http_doc()
        _http_ext_proc(**{"allow_mode_override": True, **blocker})(doc)
        config = load_config(write(httpdir, doc))
        assert not config.http_listeners["web"].http.mode_override, blocker
        assert not config.routes["web/api"].http.mode_override, blocker


def test_a_route_policy_on_a_tcp_listener_is_an_error(httpdir: Path) -> None:
    doc = http_doc()
    _drop_http_ext_proc(doc)
    _add_network_ext_proc(doc)
    with pytest.raises(ConfigError) as info:
        load_config(write(httpdir, doc))
    message = str(info.value)
    assert "'web'" in message and "filters[1] (envoy.filters.network.http_connection_manager)" in message
    assert "routes[0].metadata.filter_metadata.lightcell" in message
    assert "envoy.filters.network.ext_proc" in message and "never run" in message


def test_a_fail_open_route_is_fine_when_its_policy_allows(httpdir: Path) -> None:
    doc = http_doc(failure_mode="allow")
    _override(0, failure_mode_allow=True)(doc)
    assert load_config(write(httpdir, doc)).routes["web/api"].failure_mode is FailureMode.ALLOW


METADATA_GRANT_NOTE = "metadata_options.receiving_namespaces.untyped does not include 'lightcell'"


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (
            _http_ext_proc(processing_mode={"request_header_mode": "SKIP"}),
            [
                "'web'",
                f"{FILTER0} ({EXT_PROC_NAME}).processing_mode.request_header_mode is SKIP",
                "never sees",
            ],
        ),
        (
            _override(0, processing_mode={"request_header_mode": "SKIP"}),
            ["route 'api'", f"{PER_ROUTE_AT}.overrides.processing_mode.request_header_mode is SKIP"],
        ),
        (
            _override(0, processing_mode=_full_duplex("response")),
            ["route 'api'", "overrides.processing_mode.response_trailer_mode is DEFAULT", "FULL_DUPLEX"],
        ),
        (
            lambda d: _routes(d)[0]["metadata"]["filter_metadata"]["lightcell"].update(grants=["metadata"]),
            [
                "'web'",
                "route 'api'",
                f"{FILTER0} ({EXT_PROC_NAME}).{METADATA_GRANT_NOTE}",
                "route policy grants",
            ],
        ),
        (
            lambda d: _listener_policy(d).update(grants=["metadata"]),
            ["'web'", f"{FILTER0} ({EXT_PROC_NAME}).{METADATA_GRANT_NOTE}", "the listener grants metadata"],
        ),
    ],
)
def test_http_warnings(httpdir: Path, mutate: Mutation, words: list[str]) -> None:
    """Each warning once (two routes selecting the same policy give one metadata warning)."""
    doc = http_doc()
    mutate(doc)
    path = write(httpdir, doc)
    (warning,) = load_config(path).warnings
    assert warning.startswith(f"{path}: listener 'web': ")
    for word in words:
        assert word in warning, f"{word!r} not in {warning!r}"


@pytest.mark.parametrize("where", ["filter", "override"])
def test_a_route_metadata_grant_with_receiving_namespace_has_no_warning(httpdir: Path, where: str) -> None:
    doc = http_doc(grants=["metadata"])
    if where == "filter":
        _http_ext_proc(metadata_options=METADATA_RECEIVED)(doc)
    else:
        _override(0, metadata_options=METADATA_RECEIVED)(doc)
        _override(1, metadata_options=METADATA_RECEIVED)(doc)
    assert load_config(write(httpdir, doc)).warnings == ()


def test_an_http_filter_naming_a_listener_without_policy_is_a_note(httpdir: Path) -> None:
    doc = http_doc()
    doc["static_resources"]["listeners"].append(http_listener("bare", None, [http_route("r", "/")]))
    path = write(httpdir, doc)
    (warning,) = load_config(path).warnings
    assert (
        "listener 'bare'" in warning
        and "x-lightcell-listener='bare'" in warning
        and "no filter_metadata" in warning
    )


def test_the_http_example_config_in_the_repo_is_valid(built_plugins: dict[str, Path]) -> None:
    config = load_config(Path(__file__).parent.parent / "envoy-config" / "http.yaml")
    assert config.listeners == {} and list(config.http_listeners) == ["web"]
    assert list(config.routes) == ["web/api"] and config.warnings == ()
    assert config.http_listeners["web"].plugin == "redact" and config.routes["web/api"].plugin == "redact"
