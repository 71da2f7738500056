"""Envoy bootstraps for a set of listeners on loopback.

`render_bootstrap()` builds the bootstrap dict: each listener optionally
fronted by the network ext_proc filter that talks to Lightcell over a Unix
socket, with the listener policy in
`Listener.metadata.filter_metadata["lightcell"]`. The filter receives the
dynamic metadata Lightcell returns (`metadata_options`); a listener can also
write a file access log. Everything binds 127.0.0.1 only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from extproc.tcp_protocol import METADATA_NAMESPACE

__all__ = [
    "EXT_PROC_TYPE",
    "LISTENER_METADATA_KEY",
    "POLICY_NAMESPACE",
    "RUNTIME_FLAGS",
    "SIDECAR_CLUSTER",
    "ListenerSpec",
    "lightcell_cluster",
    "render_bootstrap",
    "static_cluster",
    "write_config",
]

POLICY_NAMESPACE = "lightcell"
LISTENER_METADATA_KEY = "x-lightcell-listener"
SIDECAR_CLUSTER = "lightcell"
EXT_PROC_TYPE = "type.googleapis.com/envoy.extensions.filters.network.ext_proc.v3.NetworkExternalProcessor"
RUNTIME_FLAGS = {
    # Envoy holds a half-closed connection while an ext_proc reply is pending
    # only with this flag (its own integration tests turn it on).
    "envoy.reloadable_features.connection_close_through_filter_manager": True,
}


@dataclass(frozen=True)
class ListenerSpec:
    """One Envoy listener in front of an upstream on loopback.

    `policy` is the Lightcell listener policy (plugin, config, tier, ...); None
    means plain tcp_proxy with no ext_proc filter (a baseline). `lightcell_name`
    is what the filter tells Lightcell in `x-lightcell-listener` (default: the
    listener's own name; a test points it at a listener Lightcell doesn't know).
    `receive_metadata` lists Lightcell's namespace in the filter's
    `metadata_options.receiving_namespaces.untyped`, without which Envoy drops
    the dynamic metadata a plugin sets. `access_log` is (file path, format
    string) of an `envoy.access_loggers.file` log on the listener, one line per
    connection when it closes.
    """

    name: str
    upstream_port: int
    policy: Mapping[str, Any] | None = None
    port: int = 0
    lightcell_name: str | None = None
    message_timeout: str = "5s"
    failure_mode_allow: bool = False
    receive_metadata: bool = True
    access_log: tuple[Path, str] | None = None


def _listener(spec: ListenerSpec) -> dict[str, Any]:
    filters: list[dict[str, Any]] = []
    if spec.policy is not None:
        ext_proc: dict[str, Any] = {
            "@type": EXT_PROC_TYPE,
            "stat_prefix": spec.name,
            "failure_mode_allow": spec.failure_mode_allow,
            "message_timeout": spec.message_timeout,
            "processing_mode": {"process_read": "STREAMED", "process_write": "STREAMED"},
            "grpc_service": {
                "envoy_grpc": {"cluster_name": SIDECAR_CLUSTER},
                "initial_metadata": [
                    {"key": LISTENER_METADATA_KEY, "value": spec.lightcell_name or spec.name}
                ],
            },
        }
        if spec.receive_metadata:
            ext_proc["metadata_options"] = {"receiving_namespaces": {"untyped": [METADATA_NAMESPACE]}}
        filters.append({"name": "envoy.filters.network.ext_proc", "typed_config": ext_proc})
    filters.append(
        {
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": spec.name,
                "cluster": f"upstream_{spec.upstream_port}",
            },
        }
    )
    listener: dict[str, Any] = {
        "name": spec.name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": spec.port}},
        "filter_chains": [{"filters": filters}],
    }
    if spec.policy is not None:
        listener["metadata"] = {"filter_metadata": {POLICY_NAMESPACE: dict(spec.policy)}}
    if spec.access_log is not None:
        log_path, log_format = spec.access_log
        listener["access_log"] = [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": str(log_path),
                    "log_format": {"text_format_source": {"inline_string": log_format}},
                },
            }
        ]
    return listener


def static_cluster(name: str, address: dict[str, Any], http2: bool = False) -> dict[str, Any]:
    """A STATIC cluster of one endpoint; `http2` for a gRPC one (Lightcell)."""
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
    if http2:
        # gRPC needs HTTP/2. Generous circuit breakers: every downstream
        # connection holds one stream to Lightcell.
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
        cluster["circuit_breakers"] = {
            "thresholds": [
                {"max_connections": 100_000, "max_pending_requests": 100_000, "max_requests": 100_000}
            ]
        }
    return cluster


def lightcell_cluster(socket_paths: Sequence[str | Path]) -> dict[str, Any]:
    """Envoy's `lightcell` cluster with one endpoint per Unix socket (`lightcell serve --workers N`).

    Each endpoint gets its own HTTP/2 connection, and Envoy spreads the
    ext_proc streams (one per downstream connection) round-robin over them.
    """
    if not socket_paths:
        raise ValueError("lightcell_cluster needs at least one socket path")
    cluster = static_cluster(SIDECAR_CLUSTER, {"pipe": {"path": str(socket_paths[0])}}, http2=True)
    cluster["lb_policy"] = "ROUND_ROBIN"
    cluster["load_assignment"]["endpoints"] = [
        {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(p)}}}} for p in socket_paths]}
    ]
    return cluster


def render_bootstrap(
    listeners: Sequence[ListenerSpec], socket_path: str | Path | Sequence[str | Path]
) -> dict[str, Any]:
    """An Envoy bootstrap dict: the listeners, Lightcell's cluster, one cluster per upstream port.

    `socket_path` is Lightcell's socket, or a list of them (one per worker of
    `lightcell serve --workers N`): see `lightcell_cluster`. The admin
    endpoint is on 127.0.0.1 port 0; `EnvoyProcess` reads the real port back
    through `--admin-address-path`.
    """
    sockets = [socket_path] if isinstance(socket_path, str | Path) else list(socket_path)
    upstream_ports = sorted({spec.upstream_port for spec in listeners})
    clusters = [
        static_cluster(SIDECAR_CLUSTER, {"pipe": {"path": str(sockets[0])}}, http2=True)
        if len(sockets) == 1
        else lightcell_cluster(sockets),
        *(
            static_cluster(
                f"upstream_{port}", {"socket_address": {"address": "127.0.0.1", "port_value": port}}
            )
            for port in upstream_ports
        ),
    ]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "layered_runtime": {"layers": [{"name": "static", "static_layer": dict(RUNTIME_FLAGS)}]},
        "static_resources": {"listeners": [_listener(spec) for spec in listeners], "clusters": clusters},
    }


def write_config(config: Mapping[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path
