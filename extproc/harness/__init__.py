"""Run the real Envoy, Lightcell and a loopback upstream: for `lightcell demo`, tests and benchmarks.

One module per job:

- `bootstrap`: Envoy bootstraps for a set of listeners (`render_bootstrap`,
  `ListenerSpec`, `lightcell_cluster`, `static_cluster`, `write_config`);
- `envoy`: find and run the Envoy binary of this environment (`envoy_binary`,
  `EnvoyProcess`);
- `lightcell`: run `lightcell serve` and wait for its socket
  (`LightcellProcess`, `lightcell_command`, `wait_for_unix_socket`, `tiers_in_log`);
- `upstream`: an asyncio TCP server on loopback that echoes, records, or
  greets and closes first (`Upstream`; `python -m extproc.harness echo` runs
  the demo's echo upstream alone).

Child processes are always killed with this one (`_proc`). Everything binds
127.0.0.1 only, unless an upstream is given another host.
"""

from extproc.harness.bootstrap import (
    LISTENER_METADATA_KEY,
    POLICY_NAMESPACE,
    SIDECAR_CLUSTER,
    ListenerSpec,
    lightcell_cluster,
    render_bootstrap,
    static_cluster,
    write_config,
)
from extproc.harness.envoy import EnvoyError, EnvoyProcess, envoy_binary
from extproc.harness.lightcell import (
    LightcellError,
    LightcellProcess,
    lightcell_command,
    tiers_in_log,
    wait_for_unix_socket,
)
from extproc.harness.upstream import Upstream, UpstreamMode

__all__ = [
    "LISTENER_METADATA_KEY",
    "POLICY_NAMESPACE",
    "SIDECAR_CLUSTER",
    "EnvoyError",
    "EnvoyProcess",
    "LightcellError",
    "LightcellProcess",
    "ListenerSpec",
    "Upstream",
    "UpstreamMode",
    "envoy_binary",
    "lightcell_cluster",
    "lightcell_command",
    "render_bootstrap",
    "static_cluster",
    "tiers_in_log",
    "wait_for_unix_socket",
    "write_config",
]
