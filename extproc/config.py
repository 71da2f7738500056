"""Lightcell's configuration: the Envoy bootstrap YAML that Envoy itself runs.

The whole file is parsed and validated as an Envoy `Bootstrap` with
envoy-data-plane (so a typo Envoy would reject is caught here too). Every
static listener with `metadata.filter_metadata["lightcell"]` becomes a
ListenerPolicy; its network ext_proc filter must name the listener to
Lightcell with `grpc_service.initial_metadata` key `x-lightcell-listener`.

Every problem raises ConfigError with a message that names the file, the
listener and the field, so that `lightcell serve` never starts half-configured.
Only static listeners are read (no LDS).
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from extproc.listener import FailureMode, ListenerPolicy
from extproc.tcp_protocol import METADATA_NAMESPACE
from vmm.microvm.layout import MAX_MEMORY_BYTES
from vmm.policy import CAPABILITIES, EgressTarget, Grants, Limits, SandboxSpec, Tier

__all__ = [
    "EXT_PROC_TYPE",
    "LISTENER_METADATA_KEY",
    "POLICY_NAMESPACE",
    "ConfigError",
    "LightcellConfig",
    "load_config",
]

LOG = logging.getLogger("lightcell.config")

POLICY_NAMESPACE = "lightcell"
LISTENER_METADATA_KEY = "x-lightcell-listener"
EXT_PROC_TYPE = "type.googleapis.com/envoy.extensions.filters.network.ext_proc.v3.NetworkExternalProcessor"
_TYPE_URL_PREFIX = "type.googleapis.com/"

_POLICY_KEYS = frozenset({"plugin", "config", "tier", "failure_mode", "grants", "egress_allow", "limits"})
_E = TypeVar("_E", Tier, FailureMode)
_LIMIT_BOUNDS = {"memory_mb": (1, 4096), "event_cpu_ms": (1, 60_000)}


class ConfigError(Exception):
    """The configuration cannot be served. The message names file, listener and field."""


@dataclass(frozen=True)
class LightcellConfig:
    path: Path
    listeners: Mapping[str, ListenerPolicy]
    warnings: Sequence[str] = field(default_factory=tuple)


def load_config(path: str | Path) -> LightcellConfig:
    """Read, validate and extract every listener policy from an Envoy bootstrap file."""
    path = Path(path)
    doc = _read_yaml(path)
    listeners = _listeners(path, doc)
    policies: dict[str, ListenerPolicy] = {}
    notes: list[str] = []
    for listener in listeners:
        name = listener.get("name")
        if not isinstance(name, str) or not name:
            continue  # Envoy names unnamed listeners itself; they cannot carry a policy we can route to
        ctx = _Context(path, name)
        raw = _policy_of(listener)
        filters = list(_ext_proc_filters(listener))
        if raw is None:
            for where, config in filters:
                named = _named_listener(config)
                if named is not None:
                    notes.append(
                        f"{path}: listener {name!r}: {where}: sends {LISTENER_METADATA_KEY}={named!r} "
                        f"but the listener has no filter_metadata.{POLICY_NAMESPACE} policy"
                    )
            continue
        if name in policies:
            raise ctx.error("name", "two listeners carry the same name")
        policy = _parse_policy(ctx, raw)
        notes.extend(_check_filters(ctx, policy, filters))
        policies[name] = policy
    # After the policies, so that a policy mistake is reported with its listener and field.
    _validate_bootstrap(path, doc)
    if not policies:
        raise ConfigError(
            f"{path}: no listener carries a metadata.filter_metadata.{POLICY_NAMESPACE} policy: "
            "nothing to serve"
        )
    for note in notes:
        LOG.warning("%s", note)
    return LightcellConfig(path, policies, tuple(notes))


# --------------------------------------------------------------------------- the Envoy file


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from e
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: not an Envoy bootstrap (expected a mapping at the top level)")
    return doc


def _type_urls(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        url = node.get("@type")
        if isinstance(url, str):
            found.add(url)
        for value in node.values():
            found |= _type_urls(value)
    elif isinstance(node, list):
        for value in node:
            found |= _type_urls(value)
    return found


def _register_type(path: Path, url: str) -> None:
    """Import the envoy-data-plane module of one `@type`, so its Any can be unpacked."""
    full = url.removeprefix(_TYPE_URL_PREFIX)
    package, _, message = full.rpartition(".")
    module_name = f"envoy_data_plane.{package}"
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ConfigError(f"{path}: unknown typed_config @type {url!r}") from None
    if not hasattr(module, message):
        raise ConfigError(f"{path}: unknown typed_config @type {url!r}")


def _validate_bootstrap(path: Path, doc: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        # envoy-data-plane's generated models trip pydantic deprecation warnings on import.
        warnings.simplefilter("ignore", DeprecationWarning)
        from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap

    for url in sorted(_type_urls(doc)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            _register_type(path, url)
    try:
        Bootstrap.from_dict(doc)
    except Exception as e:  # the library raises KeyError/ValueError/TypeError and its own errors
        detail = e.args[0] if isinstance(e, KeyError) and e.args else str(e) or type(e).__name__
        raise ConfigError(f"{path}: not a valid Envoy bootstrap: {detail}") from e


def _listeners(path: Path, doc: dict[str, Any]) -> list[dict[str, Any]]:
    resources = doc.get("static_resources") or {}
    listeners = resources.get("listeners") or [] if isinstance(resources, dict) else []
    if not isinstance(listeners, list):
        raise ConfigError(f"{path}: static_resources.listeners: expected a list")
    return [item for item in listeners if isinstance(item, dict)]


def _policy_of(listener: dict[str, Any]) -> Any:
    metadata = listener.get("metadata") or {}
    filter_metadata = metadata.get("filter_metadata") or {} if isinstance(metadata, dict) else {}
    return filter_metadata.get(POLICY_NAMESPACE) if isinstance(filter_metadata, dict) else None


def _ext_proc_filters(listener: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, typed_config) of every network ext_proc filter of a listener."""
    chains: list[tuple[str, Any]] = [
        (f"filter_chains[{i}]", chain) for i, chain in enumerate(listener.get("filter_chains") or [])
    ]
    if isinstance(listener.get("default_filter_chain"), dict):
        chains.append(("default_filter_chain", listener["default_filter_chain"]))
    found = []
    for where, chain in chains:
        for j, flt in enumerate(chain.get("filters") or [] if isinstance(chain, dict) else []):
            config = flt.get("typed_config") if isinstance(flt, dict) else None
            if isinstance(config, dict) and config.get("@type") == EXT_PROC_TYPE:
                found.append((f"{where}.filters[{j}] ({flt.get('name', 'ext_proc')})", config))
    return found


def _named_listener(ext_proc: dict[str, Any]) -> str | None:
    grpc_service = ext_proc.get("grpc_service") or {}
    for entry in grpc_service.get("initial_metadata") or []:
        # gRPC metadata keys are case-insensitive (HTTP/2 lower-cases them).
        if isinstance(entry, dict) and str(entry.get("key", "")).lower() == LISTENER_METADATA_KEY:
            value = entry.get("value")
            return value if isinstance(value, str) else str(value)
    return None


def _check_filters(
    ctx: _Context, policy: ListenerPolicy, filters: list[tuple[str, dict[str, Any]]]
) -> list[str]:
    if not filters:
        raise ctx.error(
            "filter_chains",
            "has a lightcell policy but no envoy.filters.network.ext_proc filter: the plugin would never run",
        )
    notes = []
    for where, config in filters:
        named = _named_listener(config)
        if named is None:
            raise ctx.error(
                f"{where}.grpc_service.initial_metadata",
                f"no {LISTENER_METADATA_KEY} entry; "
                f"add {{key: {LISTENER_METADATA_KEY}, value: {ctx.listener}}}",
            )
        if named != ctx.listener:
            raise ctx.error(
                f"{where}.grpc_service.initial_metadata",
                f"{LISTENER_METADATA_KEY} is {named!r}, expected the listener's own name {ctx.listener!r}",
            )
        if config.get("failure_mode_allow") is True and policy.failure_mode is not FailureMode.ALLOW:
            # The listener fails closed; Envoy's own fail-open would undo that whenever
            # Lightcell is unreachable or a stream ends badly.
            raise ctx.error(
                f"{where}.failure_mode_allow",
                f"is true while the listener's failure_mode is {policy.failure_mode.value}: if "
                "Lightcell is unreachable Envoy would pass traffic unfiltered; set it to false "
                f"(or failure_mode: allow if fail-open is really wanted)",
            )
        notes.extend(_skipped_directions(ctx, where, config))
        if "metadata" in policy.spec.grants.capabilities:
            notes.extend(_unreceived_metadata(ctx, where, config))
    return notes


# Envoy's network ext_proc ProcessingMode.DataSendMode: STREAMED = 0, SKIP = 1.
_SKIP = ("SKIP", 1)
_DIRECTIONS = {"process_read": "read (client to upstream)", "process_write": "write (upstream to client)"}


def _skipped_directions(ctx: _Context, where: str, config: dict[str, Any]) -> list[str]:
    """A warning for each direction the filter's processing_mode sends past the plugin."""
    mode = config.get("processing_mode")
    if not isinstance(mode, dict):
        return []
    return [
        f"{ctx.path}: listener {ctx.listener!r}: {where}.processing_mode.{key} is SKIP: "
        f"{text} bytes are not filtered by the plugin"
        for key, text in _DIRECTIONS.items()
        if mode.get(key) in _SKIP
    ]


def _unreceived_metadata(ctx: _Context, where: str, config: dict[str, Any]) -> list[str]:
    """A warning if Envoy would drop the dynamic metadata a plugin sets under the `metadata` grant.

    Envoy 1.40 applies an ext_proc server's dynamic metadata only for the namespaces listed in
    the filter's metadata_options.receiving_namespaces.untyped; Lightcell writes one namespace.
    """
    options = _get(config, "metadata_options", "metadataOptions")
    receiving = _get(options, "receiving_namespaces", "receivingNamespaces")
    untyped = _get(receiving, "untyped", "untyped")
    if isinstance(untyped, list) and METADATA_NAMESPACE in untyped:
        return []
    return [
        f"{ctx.path}: listener {ctx.listener!r}: {where}.metadata_options.receiving_namespaces.untyped "
        f"does not include {METADATA_NAMESPACE!r}: the listener grants metadata, but Envoy drops "
        f"what the plugin sets; add metadata_options: {{receiving_namespaces: {{untyped: "
        f"[{METADATA_NAMESPACE}]}}}} to the filter"
    ]


def _get(node: Any, name: str, json_name: str) -> Any:
    """A field of a YAML mapping under its proto name or its JSON (camelCase) name; Envoy takes both."""
    if not isinstance(node, dict):
        return None
    return node.get(name, node.get(json_name))


# --------------------------------------------------------------------------- the listener policy


@dataclass(frozen=True)
class _Context:
    path: Path
    listener: str

    def error(self, where: str, message: str) -> ConfigError:
        """An error at `where`, a path inside the listener."""
        return ConfigError(f"{self.path}: listener {self.listener!r}: {where}: {message}")

    def policy_error(self, fld: str, message: str) -> ConfigError:
        """An error at `fld` of the listener's lightcell policy."""
        return self.error(f"metadata.filter_metadata.{POLICY_NAMESPACE}.{fld}", message)


def _parse_policy(ctx: _Context, raw: Any) -> ListenerPolicy:
    if not isinstance(raw, dict):
        raise ctx.error(f"metadata.filter_metadata.{POLICY_NAMESPACE}", "expected a mapping")
    unknown = sorted(set(raw) - _POLICY_KEYS)
    if unknown:
        raise ctx.error(
            f"metadata.filter_metadata.{POLICY_NAMESPACE}",
            f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_POLICY_KEYS))})",
        )
    plugin = _plugin_path(ctx, raw.get("plugin"))
    config = raw.get("config", "")
    if not isinstance(config, str):
        raise ctx.policy_error("config", f"expected a string, got {config!r}")
    tier = _enum(ctx, "tier", Tier, raw.get("tier", Tier.AUTO.value))
    failure_mode = _enum(ctx, "failure_mode", FailureMode, raw.get("failure_mode", FailureMode.CLOSE.value))
    capabilities = _grants(ctx, raw.get("grants", []))
    egress = _egress_allow(ctx, raw.get("egress_allow", []), capabilities)
    limits = _limits(ctx, raw.get("limits", {}))
    if tier is Tier.MICROVM and limits.memory_bytes > MAX_MEMORY_BYTES:
        raise ctx.policy_error(
            "limits.memory_mb",
            f"{limits.memory_bytes >> 20} is over the micro-VM tier's limit of {MAX_MEMORY_BYTES >> 20} "
            "(tier: microvm); lower it, or use tier: auto or wasmtime",
        )
    spec = SandboxSpec(
        listener=ctx.listener,
        plugin_path=str(plugin),
        grants=Grants(capabilities, egress),
        limits=limits,
        plugin_config=config,
    )
    return ListenerPolicy(ctx.listener, spec, tier, failure_mode)


def _plugin_path(ctx: _Context, value: Any) -> Path:
    if value is None:
        raise ctx.policy_error("plugin", "missing (the path of the plugin's .wasm file)")
    if not isinstance(value, str) or not value:
        raise ctx.policy_error("plugin", f"expected a file path, got {value!r}")
    path = (ctx.path.parent / value).resolve()  # relative to the config file; absolute stays
    if not path.is_file():
        raise ctx.policy_error("plugin", f"file not found: {value} (resolved to {path})")
    return path


def _enum(ctx: _Context, fld: str, kind: type[_E], value: Any) -> _E:
    try:
        return kind(value)
    except ValueError:
        choices = " | ".join(str(m.value) for m in kind)
        raise ctx.policy_error(fld, f"{value!r} is not one of {choices}") from None


def _grants(ctx: _Context, value: Any) -> frozenset[str]:
    if not isinstance(value, list):
        raise ctx.policy_error("grants", f"expected a list of capabilities, got {value!r}")
    for i, item in enumerate(value):
        if item not in CAPABILITIES:
            raise ctx.policy_error(
                f"grants[{i}]",
                f"unknown capability {item!r} (known: {', '.join(sorted(CAPABILITIES))})",
            )
    return frozenset(value)


def _egress_allow(ctx: _Context, value: Any, capabilities: frozenset[str]) -> frozenset[EgressTarget]:
    if not isinstance(value, list):
        raise ctx.policy_error("egress_allow", f'expected a list of "host:port", got {value!r}')
    if value and "egress" not in capabilities:
        raise ctx.policy_error("egress_allow", "set, but grants does not include egress")
    targets = set()
    for i, item in enumerate(value):
        target = _target(item)
        if target is None:
            raise ctx.policy_error(
                f"egress_allow[{i}]",
                f'{item!r} is not "host:port" '
                "(an IP address or host name, port 1-65535; IPv6 as [addr]:port)",
            )
        targets.add(target)
    return frozenset(targets)


def _target(item: Any) -> EgressTarget | None:
    if not isinstance(item, str):
        return None
    host, sep, port_text = item.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        return None
    port = int(port_text)
    if not 1 <= port <= 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    elif ":" in host or any(c.isspace() for c in host):
        return None
    return EgressTarget(host, port)


def _limits(ctx: _Context, value: Any) -> Limits:
    if not isinstance(value, dict):
        raise ctx.policy_error("limits", f"expected a mapping, got {value!r}")
    unknown = sorted(set(value) - set(_LIMIT_BOUNDS))
    if unknown:
        raise ctx.policy_error(
            "limits", f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_LIMIT_BOUNDS))})"
        )
    checked: dict[str, int] = {}
    for key, (low, high) in _LIMIT_BOUNDS.items():
        if key not in value:
            continue
        item = value[key]
        if isinstance(item, bool) or not isinstance(item, int) or not low <= item <= high:
            raise ctx.policy_error(
                f"limits.{key}", f"expected a whole number from {low} to {high}, got {item!r}"
            )
        checked[key] = item
    defaults = Limits()
    return Limits(
        memory_bytes=checked["memory_mb"] * 1024 * 1024 if "memory_mb" in checked else defaults.memory_bytes,
        event_cpu_ms=checked.get("event_cpu_ms", defaults.event_cpu_ms),
    )
