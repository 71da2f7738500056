"""Lightcell's configuration: the Envoy bootstrap YAML that Envoy itself runs.

The whole file is parsed and validated as an Envoy `Bootstrap` with
envoy-data-plane (so a typo Envoy would reject is caught here too). Every
static listener with `metadata.filter_metadata["lightcell"]` becomes a
ListenerPolicy; its network ext_proc filter must name the listener to
Lightcell with `grpc_service.initial_metadata` key `x-lightcell-listener`.

HTTP (issue 8; served by extproc/http_service.py): a listener whose
`envoy.filters.network.http_connection_manager` has an
`envoy.filters.http.ext_proc` HTTP filter gets its policy the same way (the
filter names the listener with the same `x-lightcell-listener` entry) and goes
to `LightcellConfig.http_listeners`, never to `listeners`, which stays the TCP
listeners (`lightcell serve` loads both). A route of that HTTP connection
manager's inline `route_config` may carry its own policy in its
`metadata.filter_metadata.lightcell`. Its name is "<listener>/<route>", where
<route> is the route's `name` (or, for an unnamed route, the value it sends);
the route must select it with a `typed_per_filter_config` entry under the
ext_proc filter's name holding an `ExtProcPerRoute` whose
`overrides.grpc_initial_metadata` has `{key: x-lightcell-route, value: <route>}`.
Envoy 1.40 adds that to the filter's initial metadata (checked live), so a stream of that route
arrives naming both the listener and the route. Any other route (or virtual
host) may select an existing route policy of the same listener by sending its
<route> name too; every other route runs the listener's policy. Route
policies go to `LightcellConfig.routes`, keyed "<listener>/<route>". Routes
from RDS are not read.

Every problem raises ConfigError with a message that names the file, the
listener and the field, so that `lightcell serve` never starts half-configured.
Only static listeners are read (no LDS).
"""

from __future__ import annotations

import dataclasses
import importlib
import ipaddress
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from extproc.http_policy import (
    DEFAULT_CLOSE_STATUS,
    DEFAULT_MAX_HEADER_BYTES,
    FilterMode,
    HttpOptions,
    parse_mode,
)
from extproc.listener import FailureMode, ListenerPolicy, Protocol
from extproc.tcp_protocol import METADATA_NAMESPACE
from vmm.capabilities import MAX_EGRESS_HOST_BYTES
from vmm.egress import MAX_PENDING
from vmm.microvm.layout import MAX_MEMORY_BYTES
from vmm.policy import CAPABILITIES, EgressLimits, EgressTarget, Grants, Limits, SandboxSpec, Tier

__all__ = [
    "EXT_PROC_PER_ROUTE_TYPE",
    "EXT_PROC_TYPE",
    "HTTP_CONNECTION_MANAGER_TYPE",
    "HTTP_EXT_PROC_TYPE",
    "LISTENER_METADATA_KEY",
    "POLICY_NAMESPACE",
    "ROUTE_METADATA_KEY",
    "ConfigError",
    "LightcellConfig",
    "load_config",
    "route_key",
]

LOG = logging.getLogger("lightcell.config")

POLICY_NAMESPACE = "lightcell"
LISTENER_METADATA_KEY = "x-lightcell-listener"
ROUTE_METADATA_KEY = "x-lightcell-route"
EXT_PROC_TYPE = "type.googleapis.com/envoy.extensions.filters.network.ext_proc.v3.NetworkExternalProcessor"
HTTP_CONNECTION_MANAGER_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
HTTP_EXT_PROC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
EXT_PROC_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
_FILTER_CONFIG_TYPE = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
_TYPE_URL_PREFIX = "type.googleapis.com/"

_POLICY_KEYS = frozenset(
    {"plugin", "config", "tier", "failure_mode", "grants", "egress_allow", "egress_limits", "limits"}
)
_HTTP_POLICY_KEYS = frozenset({"close_status", "max_header_bytes"})
_HTTP_BOUNDS = {"close_status": (200, 599), "max_header_bytes": (1024, 8 * 1024 * 1024)}
_E = TypeVar("_E", Tier, FailureMode)
_LIMIT_BOUNDS = {"memory_mb": (1, 4096), "event_cpu_ms": (1, 60_000)}
_EGRESS_LIMIT_BOUNDS = {
    "datagrams_per_second": (1, 100_000),
    # At least one datagram of the largest size a second, or such a datagram could never go.
    "bytes_per_second": (Limits().max_datagram_bytes, 1 << 30),
    "max_queued": (1, MAX_PENDING),
}


class ConfigError(Exception):
    """The configuration cannot be served. The message names file, listener and field."""


@dataclass(frozen=True)
class LightcellConfig:
    path: Path
    listeners: Mapping[str, ListenerPolicy]
    """The TCP listeners' policies, by listener name: what `lightcell serve` loads."""
    warnings: Sequence[str] = field(default_factory=tuple)
    http_listeners: Mapping[str, ListenerPolicy] = field(default_factory=dict)
    """The HTTP listeners' policies (protocol http), by listener name (extproc.plugins.load_http_all)."""
    routes: Mapping[str, ListenerPolicy] = field(default_factory=dict)
    """Route policies of the HTTP listeners (protocol http), by "<listener>/<route>" (route_key)."""
    route_selections: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """For each route policy: where (inside its listener) each ExtProcPerRoute selecting it is."""


def route_key(listener: str, route: str) -> str:
    """The name of a route policy: "<listener>/<route>"."""
    return f"{listener}/{route}"


def load_config(path: str | Path) -> LightcellConfig:
    """Read, validate and extract every listener policy from an Envoy bootstrap file."""
    path = Path(path)
    doc = _read_yaml(path)
    listeners = _listeners(path, doc)
    policies: dict[str, ListenerPolicy] = {}
    http_policies: dict[str, ListenerPolicy] = {}
    routes = _Routes()
    notes: list[str] = []
    for listener in listeners:
        name = listener.get("name")
        if not isinstance(name, str) or not name:
            continue  # Envoy names unnamed listeners itself; they cannot carry a policy we can route to
        ctx = _Context(path, name)
        raw = _policy_of(listener)
        filters = list(_ext_proc_filters(listener))
        hcms = _http_connection_managers(listener)
        http_ext_procs = [e for hcm in hcms for e in hcm.ext_procs]
        if raw is None:
            for where, config in [*filters, *((e.where, e.config) for e in http_ext_procs)]:
                named = _named_listener(config)
                if named is not None:
                    notes.append(
                        f"{path}: listener {name!r}: {where}: sends {LISTENER_METADATA_KEY}={named!r} "
                        f"but the listener has no filter_metadata.{POLICY_NAMESPACE} policy"
                    )
            _refuse_route_policies(
                ctx, hcms, f"the listener has no metadata.filter_metadata.{POLICY_NAMESPACE} policy: "
                "give it one (it filters the listener's other routes)",
            )  # fmt: skip
            continue
        if name in policies or name in http_policies:
            raise ctx.error("name", "two listeners carry the same name")
        if filters and http_ext_procs:
            raise ctx.error(
                "filter_chains",
                f"has both an envoy.filters.network.ext_proc filter ({filters[0][0]}) and an "
                f"envoy.filters.http.ext_proc filter ({http_ext_procs[0].where}): one lightcell policy "
                "cannot serve both; put them on two listeners",
            )
        if hcms and not filters:
            if "/" in name:
                # Route policies are named "<listener>/<route>": a listener named like one
                # would share its policy map key (and its plugin and grants).
                raise ctx.error("name", "an HTTP listener with a lightcell policy needs a name without '/'")
            source = f"listener {name!r} metadata.filter_metadata.{POLICY_NAMESPACE}"
            policy = _parse_policy(ctx, raw, Protocol.HTTP, source)
            notes.extend(_check_http_filters(ctx, policy, hcms))
            notes.extend(_route_policies(ctx, policy, hcms, routes))
            filter_modes = [_filter_mode(e.config, None) for hcm in hcms for e in hcm.ext_procs]
            http_policies[name] = _with_modes(policy, [*filter_modes, *routes.modes.get(name, [])])
            continue
        policy = _parse_policy(ctx, raw)
        notes.extend(_check_filters(ctx, policy, filters))
        _refuse_route_policies(
            ctx, hcms, "the listener is served through envoy.filters.network.ext_proc, not an HTTP ext_proc "
            "filter: a route policy would never run",
        )  # fmt: skip
        policies[name] = policy
    # After the policies, so that a policy mistake is reported with its listener and field.
    _validate_bootstrap(path, doc)
    if not policies and not http_policies:
        raise ConfigError(
            f"{path}: no listener carries a metadata.filter_metadata.{POLICY_NAMESPACE} policy: "
            "nothing to serve"
        )
    for note in notes:
        LOG.warning("%s", note)
    return LightcellConfig(
        path,
        policies,
        tuple(notes),
        http_listeners=http_policies,
        routes=routes.policies,
        route_selections={key: tuple(found) for key, found in routes.selections.items()},
    )


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


_NEWER_THAN_DATA_PLANE: dict[str, tuple[str, ...]] = {
    EXT_PROC_TYPE: ("connection_attributes", "connectionAttributes"),
}
"""typed_config fields (list of strings) Envoy 1.40 knows and envoy-data-plane 2.2.0 lacks:
checked here and left out of the copy the library validates."""


def _without_newer_fields(path: Path, node: Any) -> Any:
    """A copy of `node` without _NEWER_THAN_DATA_PLANE's fields (ConfigError: not a list of strings)."""
    if isinstance(node, list):
        return [_without_newer_fields(path, item) for item in node]
    if not isinstance(node, dict):
        return node
    newer = _NEWER_THAN_DATA_PLANE.get(str(node.get("@type")), ())
    for name in newer:
        value = node.get(name)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ConfigError(f"{path}: {node['@type']}.{name}: expected a list of strings")
    return {k: _without_newer_fields(path, v) for k, v in node.items() if k not in newer}


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
        Bootstrap.from_dict(_without_newer_fields(path, doc))
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


def _network_filters(
    listener: dict[str, Any], type_url: str, default_name: str
) -> list[tuple[str, dict[str, Any]]]:
    """(where, typed_config) of every network filter of a listener with this `@type`."""
    chains: list[tuple[str, Any]] = [
        (f"filter_chains[{i}]", chain) for i, chain in enumerate(listener.get("filter_chains") or [])
    ]
    if isinstance(listener.get("default_filter_chain"), dict):
        chains.append(("default_filter_chain", listener["default_filter_chain"]))
    found = []
    for where, chain in chains:
        for j, flt in enumerate(chain.get("filters") or [] if isinstance(chain, dict) else []):
            config = flt.get("typed_config") if isinstance(flt, dict) else None
            if isinstance(config, dict) and config.get("@type") == type_url:
                found.append((f"{where}.filters[{j}] ({flt.get('name', default_name)})", config))
    return found


def _ext_proc_filters(listener: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, typed_config) of every network ext_proc filter of a listener."""
    return _network_filters(listener, EXT_PROC_TYPE, "ext_proc")


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
        _check_names_listener(ctx, where, config)
        _check_fail_open(ctx, f"{where}.failure_mode_allow", config.get("failure_mode_allow"), policy)
        notes.extend(_skipped_directions(ctx, where, config))
        if "metadata" in policy.spec.grants.capabilities:
            notes.extend(_unreceived_metadata(ctx, where, config))
        if "connection" in policy.spec.grants.capabilities:
            notes.extend(_no_connection_attributes(ctx, where, config))
    return notes


def _check_names_listener(ctx: _Context, where: str, config: dict[str, Any]) -> None:
    """An ext_proc filter (network or HTTP) must send the listener's own name."""
    named = _named_listener(config)
    if named is None:
        raise ctx.error(
            f"{where}.grpc_service.initial_metadata",
            f"no {LISTENER_METADATA_KEY} entry; add {{key: {LISTENER_METADATA_KEY}, value: {ctx.listener}}}",
        )
    if named != ctx.listener:
        raise ctx.error(
            f"{where}.grpc_service.initial_metadata",
            f"{LISTENER_METADATA_KEY} is {named!r}, expected the listener's own name {ctx.listener!r}",
        )


def _check_fail_open(
    ctx: _Context, where: str, failure_mode_allow: Any, policy: ListenerPolicy, owner: str = "listener"
) -> None:
    if failure_mode_allow is True and policy.failure_mode is not FailureMode.ALLOW:
        # The policy fails closed; Envoy's own fail-open would undo that whenever
        # Lightcell is unreachable or a stream ends badly.
        raise ctx.error(
            where,
            f"is true while the {owner}'s failure_mode is {policy.failure_mode.value}: if "
            "Lightcell is unreachable Envoy would pass traffic unfiltered; set it to false "
            f"(or failure_mode: allow if fail-open is really wanted)",
        )


# Envoy's network ext_proc ProcessingMode.DataSendMode: STREAMED = 0, SKIP = 1.
_SKIP = ("SKIP", 1)
_DIRECTIONS = {"process_read": "read (client to upstream)", "process_write": "write (upstream to client)"}


def _skipped_directions(ctx: _Context, where: str, config: dict[str, Any]) -> list[str]:
    """A warning for each direction the filter's processing_mode sends past the plugin."""
    mode = config.get("processing_mode")
    if not isinstance(mode, dict):
        return []
    return [
        f"{ctx.prefix}{where}.processing_mode.{key} is SKIP: {text} bytes are not filtered by the plugin"
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
        f"{ctx.prefix}{where}.metadata_options.receiving_namespaces.untyped "
        f"does not include {METADATA_NAMESPACE!r}: the {ctx.owner} grants metadata, but Envoy drops "
        f"what the plugin sets; add metadata_options: {{receiving_namespaces: {{untyped: "
        f"[{METADATA_NAMESPACE}]}}}} to the filter"
    ]


def _no_connection_attributes(ctx: _Context, where: str, config: dict[str, Any]) -> list[str]:
    """A warning if the `connection` grant can only ever give the plugin an empty list."""
    if _get(config, "connection_attributes", "connectionAttributes"):
        return []
    return [
        f"{ctx.prefix}{where}.connection_attributes is empty: the {ctx.owner} grants connection, "
        "but Envoy sends no attributes, so connection.attributes() is always empty; list them, "
        "e.g. connection_attributes: [source.address, destination.address]"
    ]


def _get(node: Any, name: str, json_name: str) -> Any:
    """A field of a YAML mapping under its proto name or its JSON (camelCase) name; Envoy takes both."""
    if not isinstance(node, dict):
        return None
    return node.get(name, node.get(json_name))


# --------------------------------------------------------------------------- HTTP listeners and routes


@dataclass(frozen=True)
class _HttpExtProc:
    where: str
    name: str
    """The HTTP filter's name: the key of its typed_per_filter_config entries."""
    config: dict[str, Any]


@dataclass(frozen=True)
class _Hcm:
    where: str
    config: dict[str, Any]
    ext_procs: list[_HttpExtProc]


def _http_connection_managers(listener: dict[str, Any]) -> list[_Hcm]:
    """Every HTTP connection manager of a listener, with its HTTP ext_proc filters."""
    found = []
    for where, config in _network_filters(listener, HTTP_CONNECTION_MANAGER_TYPE, "http_connection_manager"):
        ext_procs = []
        for k, flt in enumerate(_get(config, "http_filters", "httpFilters") or []):
            typed = _get(flt, "typed_config", "typedConfig")
            if isinstance(typed, dict) and typed.get("@type") == HTTP_EXT_PROC_TYPE:
                name = str(flt.get("name", ""))
                ext_procs.append(_HttpExtProc(f"{where}.http_filters[{k}] ({name})", name, typed))
        found.append(_Hcm(where, config, ext_procs))
    return found


def _check_http_filters(ctx: _Context, policy: ListenerPolicy, hcms: list[_Hcm]) -> list[str]:
    ext_procs = [e for hcm in hcms for e in hcm.ext_procs]
    if not ext_procs:
        raise ctx.error(
            f"{hcms[0].where}.http_filters",
            "has a lightcell policy but no envoy.filters.http.ext_proc filter: the plugin would never run",
        )
    notes = []
    for ext in ext_procs:
        _check_names_listener(ctx, ext.where, ext.config)
        fail_open = _get(ext.config, "failure_mode_allow", "failureModeAllow")
        _check_fail_open(ctx, f"{ext.where}.failure_mode_allow", fail_open, policy)
        if _get(ext.config, "observability_mode", "observabilityMode") is True and (
            policy.failure_mode is not FailureMode.ALLOW
        ):
            # Envoy waits for no reply in observability mode: nothing the plugin decides,
            # and no failure mode but allow, can take effect.
            raise ctx.error(
                f"{ext.where}.observability_mode",
                f"is true while the listener's failure_mode is {policy.failure_mode.value}: Envoy "
                "would not wait for the plugin, so nothing would be filtered; set it to false "
                "(or failure_mode: allow for a plugin that only observes)",
            )
        mode = _get(ext.config, "processing_mode", "processingMode")
        notes.extend(_http_modes(ctx, f"{ext.where}.processing_mode", mode, on_filter=True))
        if "metadata" in policy.spec.grants.capabilities:
            notes.extend(_unreceived_metadata(ctx, ext.where, ext.config))
    return notes


# Envoy's HTTP ext_proc ProcessingMode: HeaderSendMode DEFAULT = 0, SEND = 1, SKIP = 2;
# BodySendMode NONE = 0, STREAMED = 1, BUFFERED = 2, BUFFERED_PARTIAL = 3, FULL_DUPLEX_STREAMED = 4.
_HEADER_SKIP = ("SKIP", 2)
_HEADER_SEND = ("SEND", 1)
_FULL_DUPLEX = ("FULL_DUPLEX_STREAMED", 4)


def _http_modes(ctx: _Context, where: str, mode: Any, *, on_filter: bool) -> list[str]:
    """Warnings for an HTTP processing_mode; on the filter itself, an error for what Envoy refuses."""
    if not isinstance(mode, dict):
        return []
    notes = []
    if _get(mode, "request_header_mode", "requestHeaderMode") in _HEADER_SKIP:
        notes.append(
            f"{ctx.prefix}{where}.request_header_mode is SKIP: the plugin never sees the request headers"
        )
    for direction in ("request", "response"):
        body = _get(mode, f"{direction}_body_mode", f"{direction}BodyMode")
        trailer = _get(mode, f"{direction}_trailer_mode", f"{direction}TrailerMode")
        if body not in _FULL_DUPLEX or trailer in _HEADER_SEND:
            continue
        shown = trailer if trailer is not None else "DEFAULT"
        needs = (
            f"is {shown}, but {direction}_body_mode FULL_DUPLEX_STREAMED needs {direction}_trailer_mode SEND"
        )
        if on_filter:  # Envoy 1.40 refuses to load such a filter
            raise ctx.error(f"{where}.{direction}_trailer_mode", f"{needs} (Envoy refuses the filter)")
        notes.append(
            f"{ctx.prefix}{where}.{direction}_trailer_mode {needs} "
            "(Envoy accepts it on a route, but refuses the same on the filter itself)"
        )
    return notes


def _filter_mode(config: dict[str, Any], override: Any) -> tuple[FilterMode | None, bool]:
    """The processing mode of a stream through one HTTP ext_proc filter (a route's override
    replaces the filter's whole processing_mode), and whether Envoy would apply a mode_override."""
    mode = parse_mode(override if override is not None else _get(config, "processing_mode", "processingMode"))
    allowed = _get(config, "allowed_override_modes", "allowedOverrideModes")
    ok = (
        _get(config, "allow_mode_override", "allowModeOverride") is True
        and _get(config, "send_body_without_waiting_for_header_response",
                 "sendBodyWithoutWaitingForHeaderResponse") is not True
        and not allowed  # Lightcell does not pick among an allow-list: it sends no override then
    )  # fmt: skip
    return mode, ok


def _with_modes(policy: ListenerPolicy, modes: Sequence[tuple[FilterMode | None, bool]]) -> ListenerPolicy:
    known = tuple(dict.fromkeys(m for m, _ in modes if m is not None))
    ok = bool(modes) and all(allowed for _, allowed in modes)
    return dataclasses.replace(policy, http=dataclasses.replace(policy.http, modes=known, mode_override=ok))


@dataclass
class _Routes:
    """The route policies of every HTTP listener, filled listener by listener."""

    policies: dict[str, ListenerPolicy] = field(default_factory=dict)
    selections: dict[str, list[str]] = field(default_factory=dict)
    modes: dict[str, list[tuple[FilterMode | None, bool]]] = field(default_factory=dict)
    """Per policy name: the processing modes its streams may arrive under (_filter_mode)."""


@dataclass(frozen=True)
class _Selection:
    """One ExtProcPerRoute of an HTTP ext_proc filter, on a route, a virtual host or the route_config."""

    where: str
    route: str | None
    """The route's label, for messages (None for a virtual host or the route_config)."""
    ext: _HttpExtProc
    per_route: dict[str, Any]

    @property
    def overrides(self) -> dict[str, Any]:
        found = self.per_route.get("overrides")
        return found if isinstance(found, dict) else {}

    @property
    def route_name(self) -> str | None:
        """The x-lightcell-route value this override sends, if any."""
        entries = _get(self.overrides, "grpc_initial_metadata", "grpcInitialMetadata")
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and str(entry.get("key", "")).lower() == ROUTE_METADATA_KEY:
                value = entry.get("value")
                return value if isinstance(value, str) else str(value)
        return None

    def _overrides(self, name: str, json_name: str) -> bool:
        return _get(self.overrides, name, json_name) is not None

    @property
    def metadata_where(self) -> str:
        """Where the metadata_options in force are: the override's, else the filter's."""
        overridden = self._overrides("metadata_options", "metadataOptions")
        return f"{self.where}.overrides" if overridden else self.ext.where

    def metadata_config(self) -> dict[str, Any]:
        return self.overrides if self._overrides("metadata_options", "metadataOptions") else self.ext.config

    def failure_mode_allow(self) -> tuple[str, Any]:
        """(where, value) of the failure_mode_allow in force: the override's, else the filter's."""
        if self._overrides("failure_mode_allow", "failureModeAllow"):
            where, config = f"{self.where}.overrides", self.overrides
        else:
            where, config = self.ext.where, self.ext.config
        return f"{where}.failure_mode_allow", _get(config, "failure_mode_allow", "failureModeAllow")


def _route_nodes(hcm: _Hcm) -> list[tuple[str, dict[str, Any], bool]]:
    """(where, node, is_route) of the inline route_config, its virtual hosts and their routes."""
    config = _get(hcm.config, "route_config", "routeConfig")
    if not isinstance(config, dict):
        return []  # RDS (or nothing): route policies are read from static route configs only
    base = f"{hcm.where}.route_config"
    found: list[tuple[str, dict[str, Any], bool]] = [(base, config, False)]
    for i, vhost in enumerate(_get(config, "virtual_hosts", "virtualHosts") or []):
        if not isinstance(vhost, dict):
            continue
        found.append((f"{base}.virtual_hosts[{i}]", vhost, False))
        for j, route in enumerate(vhost.get("routes") or []):
            if isinstance(route, dict):
                found.append((f"{base}.virtual_hosts[{i}].routes[{j}]", route, True))
    return found


def _selections(hcm: _Hcm, where: str, node: dict[str, Any], route: str | None) -> list[_Selection]:
    """The ExtProcPerRoute entries of a node for the HCM's HTTP ext_proc filters."""
    per_filter = _get(node, "typed_per_filter_config", "typedPerFilterConfig")
    if not isinstance(per_filter, dict):
        return []
    found = []
    for ext in hcm.ext_procs:
        entry = per_filter.get(ext.name)
        if isinstance(entry, dict) and entry.get("@type") == _FILTER_CONFIG_TYPE:
            entry = entry.get("config")
        if isinstance(entry, dict) and entry.get("@type") == EXT_PROC_PER_ROUTE_TYPE:
            found.append(_Selection(f"{where}.typed_per_filter_config[{ext.name}]", route, ext, entry))
    return found


def _refuse_route_policies(ctx: _Context, hcms: list[_Hcm], why: str) -> None:
    for hcm in hcms:
        for where, node, is_route in _route_nodes(hcm):
            if is_route and _policy_of(node) is not None:
                raise ctx.error(
                    f"{where}.metadata.filter_metadata.{POLICY_NAMESPACE}", f"a route policy, but {why}"
                )


def _route_policies(ctx: _Context, listener: ListenerPolicy, hcms: list[_Hcm], routes: _Routes) -> list[str]:
    """Parse and check the route policies of one HTTP listener into `routes`; the warnings."""
    own: dict[str, tuple[ListenerPolicy, str]] = {}  # route label -> (policy, where)
    pending: list[_Selection] = []
    for hcm in hcms:
        for where, node, is_route in _route_nodes(hcm):
            name = node.get("name") if is_route else None
            label = name if isinstance(name, str) and name else None
            selections = _selections(hcm, where, node, label)
            raw = _policy_of(node) if is_route else None
            if raw is None:
                pending.extend(selections)
                continue
            sent = [s.route_name for s in selections if s.route_name is not None]
            label = label or (sent[0] if sent else None)
            if label is None:
                raise ctx.error(
                    f"{where}.name",
                    f"the route carries a lightcell policy but has no name: name it; its policy is then "
                    f"'{ctx.listener}/<name>', selected with {ROUTE_METADATA_KEY}: <name>",
                )
            rctx = _Context(ctx.path, ctx.listener, label, f"{where}.")
            if "/" in label:
                raise rctx.error(
                    f"{where}.name", f"{label!r}: a route with a policy needs a name without '/'"
                )
            if label in own:
                raise rctx.error(
                    f"{where}.name", f"two routes carry a policy named {label!r} (the other: {own[label][1]})"
                )
            source = f"route {label!r} {where}.metadata.filter_metadata.{POLICY_NAMESPACE}"
            policy = _parse_policy(rctx, raw, Protocol.HTTP, source)
            filter_names = ", ".join(repr(e.name) for e in hcm.ext_procs)
            if not selections:
                raise rctx.error(
                    f"{where}.typed_per_filter_config",
                    f"the route carries a lightcell policy but no ExtProcPerRoute under the ext_proc "
                    f"filter's name ({filter_names}) selects it; add one whose "
                    f"overrides.grpc_initial_metadata has {{key: {ROUTE_METADATA_KEY}, value: {label}}}",
                )
            for selection in selections:
                if selection.per_route.get("disabled") is True:
                    raise rctx.error(
                        f"{selection.where}.disabled", "is true: the route's policy would never run"
                    )
                if selection.route_name is None:
                    raise rctx.error(
                        f"{selection.where}.overrides.grpc_initial_metadata",
                        f"no {ROUTE_METADATA_KEY} entry; add {{key: {ROUTE_METADATA_KEY}, value: {label}}} "
                        "to select the route's policy",
                    )
                if selection.route_name != label:
                    raise rctx.error(
                        f"{selection.where}.overrides.grpc_initial_metadata",
                        f"{ROUTE_METADATA_KEY} is {selection.route_name!r}, expected the route's own name "
                        f"{label!r}: a route with its own policy selects that one",
                    )
            own[label] = (policy, where)
            pending.extend(selections)
    notes: list[str] = []
    for selection in pending:
        sctx = _Context(ctx.path, ctx.listener, selection.route)
        value = selection.route_name
        if value is None:
            policy, owner = listener, "listener"
        elif value in own:
            policy, owner = own[value][0], "route policy"
            routes.selections.setdefault(route_key(ctx.listener, value), []).append(selection.where)
        else:
            known = ", ".join(sorted(own)) or "none"
            raise sctx.error(
                f"{selection.where}.overrides.grpc_initial_metadata",
                f"{ROUTE_METADATA_KEY} is {value!r}, but no route of listener {ctx.listener!r} carries a "
                f"policy by that name (route policies: {known})",
            )
        if selection.per_route.get("disabled") is True:
            continue
        fail_where, fail_open = selection.failure_mode_allow()
        _check_fail_open(sctx, fail_where, fail_open, policy, owner)
        mode = _get(selection.overrides, "processing_mode", "processingMode")
        notes.extend(_http_modes(sctx, f"{selection.where}.overrides.processing_mode", mode, on_filter=False))
        routes.modes.setdefault(policy.name, []).append(_filter_mode(selection.ext.config, mode))
        if value is not None and "metadata" in policy.spec.grants.capabilities:
            pctx = _Context(ctx.path, ctx.listener, value)
            notes.extend(_unreceived_metadata(pctx, selection.metadata_where, selection.metadata_config()))
    for label, (policy, _) in own.items():
        key = route_key(ctx.listener, label)
        routes.policies[key] = _with_modes(policy, routes.modes.get(key, []))
    return list(dict.fromkeys(notes))  # routes sharing a policy and a filter share its warnings


# --------------------------------------------------------------------------- the listener policy


@dataclass(frozen=True)
class _Context:
    path: Path
    listener: str
    route: str | None = None
    """Set for a route policy (and messages about one route)."""
    base: str = ""
    """Where the policy's node is inside the listener ("" for the listener itself; "....routes[1].")."""

    @property
    def name(self) -> str:
        """The policy's name: the listener's, or "<listener>/<route>"."""
        return self.listener if self.route is None else route_key(self.listener, self.route)

    @property
    def owner(self) -> str:
        return "listener" if self.route is None else "route policy"

    @property
    def prefix(self) -> str:
        route = "" if self.route is None else f"route {self.route!r}: "
        return f"{self.path}: listener {self.listener!r}: {route}"

    def error(self, where: str, message: str) -> ConfigError:
        """An error at `where`, a path inside the listener."""
        return ConfigError(f"{self.prefix}{where}: {message}")

    @property
    def policy_where(self) -> str:
        return f"{self.base}metadata.filter_metadata.{POLICY_NAMESPACE}"

    def policy_error(self, fld: str, message: str) -> ConfigError:
        """An error at `fld` of the listener's (or route's) lightcell policy."""
        return self.error(f"{self.policy_where}.{fld}", message)


def _parse_policy(
    ctx: _Context, raw: Any, protocol: Protocol = Protocol.TCP, source: str = ""
) -> ListenerPolicy:
    if not isinstance(raw, dict):
        raise ctx.error(ctx.policy_where, "expected a mapping")
    known_keys = _POLICY_KEYS | (_HTTP_POLICY_KEYS if protocol is Protocol.HTTP else frozenset())
    unknown = sorted(set(raw) - known_keys)
    http_only = sorted(set(unknown) & _HTTP_POLICY_KEYS)
    if http_only:
        raise ctx.policy_error(
            http_only[0], "only an HTTP policy (an envoy.filters.http.ext_proc listener or route) takes it"
        )
    if unknown:
        raise ctx.error(
            ctx.policy_where,
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
    limits = dataclasses.replace(limits, egress=_egress_limits(ctx, raw.get("egress_limits"), capabilities))
    if tier is Tier.MICROVM and limits.memory_bytes > MAX_MEMORY_BYTES:
        raise ctx.policy_error(
            "limits.memory_mb",
            f"{limits.memory_bytes >> 20} is over the micro-VM tier's limit of {MAX_MEMORY_BYTES >> 20} "
            "(tier: microvm); lower it, or use tier: auto or wasmtime",
        )
    spec = SandboxSpec(
        listener=ctx.name,
        plugin_path=str(plugin),
        grants=Grants(capabilities, egress),
        limits=limits,
        plugin_config=config,
    )
    if protocol is Protocol.TCP:
        return ListenerPolicy(ctx.name, spec, tier, failure_mode)
    http = HttpOptions(
        close_status=_bounded(ctx, raw, "close_status", DEFAULT_CLOSE_STATUS),
        max_header_bytes=_bounded(ctx, raw, "max_header_bytes", DEFAULT_MAX_HEADER_BYTES),
    )
    return ListenerPolicy(ctx.name, spec, tier, failure_mode, protocol, source, http)


def _bounded(ctx: _Context, raw: dict[str, Any], key: str, default: int) -> int:
    """An HTTP policy's whole-number key within _HTTP_BOUNDS."""
    value = raw.get(key, default)
    low, high = _HTTP_BOUNDS[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ctx.policy_error(key, f"expected a whole number from {low} to {high}, got {value!r}")
    return value


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
        if not isinstance(item, str) or item not in CAPABILITIES:  # a list item: unhashable
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
                f"(an IP address or host name of at most {MAX_EGRESS_HOST_BYTES} bytes, port 1-65535; "
                "IPv6 as [addr]:port)",
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
    if len(host.encode("utf-8", "surrogatepass")) > MAX_EGRESS_HOST_BYTES:
        return None  # no DNS name is longer
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


def _egress_limits(ctx: _Context, value: Any, capabilities: frozenset[str]) -> EgressLimits:
    """`egress_limits`: per connection (HTTP: per request); each key optional (EgressLimits)."""
    if value is None:
        return EgressLimits()
    if not isinstance(value, dict):
        raise ctx.policy_error("egress_limits", f"expected a mapping, got {value!r}")
    if "egress" not in capabilities:
        raise ctx.policy_error("egress_limits", "set, but grants does not include egress")
    unknown = sorted(set(value) - set(_EGRESS_LIMIT_BOUNDS))
    if unknown:
        known = ", ".join(sorted(_EGRESS_LIMIT_BOUNDS))
        raise ctx.policy_error("egress_limits", f"unknown key {unknown[0]!r} (known: {known})")
    checked: dict[str, int] = {}
    for key, (low, high) in _EGRESS_LIMIT_BOUNDS.items():
        item = value.get(key)
        if item is None and key not in value:
            continue
        if isinstance(item, bool) or not isinstance(item, int) or not low <= item <= high:
            raise ctx.policy_error(
                f"egress_limits.{key}", f"expected a whole number from {low} to {high}, got {item!r}"
            )
        checked[key] = item
    return EgressLimits(**checked)
