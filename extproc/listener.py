"""A listener's Lightcell policy (parsed from the Envoy config) and its loaded plugin."""

from __future__ import annotations

import enum
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Protocol as _Protocol

from extproc.http_policy import HttpOptions
from vmm.capabilities import DatagramSender, HostCapabilities
from vmm.contract import HttpPhase
from vmm.kvstore import KvStore
from vmm.metrics import Metrics
from vmm.policy import SandboxSpec, Tier
from vmm.sandbox import PluginFault, SandboxFactory

if TYPE_CHECKING:
    from vmm.runner import HttpRunner

__all__ = [
    "FailureMode",
    "HttpListener",
    "HttpSandboxFactory",
    "Listener",
    "ListenerPolicy",
    "Protocol",
    "TierChoice",
]

LOG = logging.getLogger("lightcell.session")  # plugin faults are the sessions' to report


class FailureMode(enum.Enum):
    """What a connection gets when its plugin faults."""

    CLOSE = "close"  # CLOSE (FIN), and never another byte forwarded
    RESET = "reset"  # CLOSE_RST (RST), likewise
    ALLOW = "allow"  # drop the plugin, pass the rest of the connection through unchanged


class Protocol(enum.Enum):
    """Which Envoy ext_proc filter a policy is served through."""

    TCP = "tcp"  # envoy.filters.network.ext_proc: one stream per connection
    HTTP = "http"  # envoy.filters.http.ext_proc: one stream per request


@dataclass(frozen=True, slots=True)
class ListenerPolicy:
    """One Envoy listener's (or HTTP route's) `filter_metadata["lightcell"]`, validated.

    A route policy's name is "<listener>/<route>" (see extproc.config).
    """

    name: str
    spec: SandboxSpec
    tier: Tier = Tier.AUTO
    failure_mode: FailureMode = FailureMode.CLOSE
    protocol: Protocol = Protocol.TCP
    source: str = ""
    """Where in the Envoy file the policy is (set for HTTP policies; `check` prints it)."""
    http: HttpOptions = field(default_factory=HttpOptions)
    """HTTP policies: their own HTTP keys and the Envoy filter modes that serve them."""

    @property
    def plugin(self) -> str:
        """Short plugin name for logs and metrics: the file name without .wasm."""
        return _short_name(self.spec.plugin_path)


@functools.lru_cache(maxsize=256)
def _short_name(plugin_path: str) -> str:
    """Cached: every new sandbox asks (for its host's labels)."""
    return Path(plugin_path).name.removesuffix(".wasm")


@dataclass(frozen=True, slots=True)
class TierChoice:
    """The concrete tier a listener's plugin runs in, and why (made once, at load)."""

    tier: Tier
    reason: str
    requested: Tier = Tier.AUTO
    awaiting_compile: bool = False
    """Served in wasmtime only until the supervisor has compiled it for the micro-VM."""

    @property
    def one_wall(self) -> bool:
        return self.tier is Tier.WASMTIME

    @property
    def fell_back(self) -> bool:
        """`tier: auto` resolved to the one-wall tier."""
        return self.one_wall and self.requested is Tier.AUTO

    def describe(self) -> str:
        """"microvm (why)" or "auto -> wasmtime (why)", as `check` and the start-up log print it."""
        moved = self.requested is not self.tier
        name = f"{self.requested.value} -> {self.tier.value}" if moved else self.tier.value
        return f"{name} ({self.reason})"


class _Served:
    """What a policy ready to serve answers, whatever its protocol."""

    __slots__ = ()
    policy: ListenerPolicy
    kv: KvStore
    tier: TierChoice

    def host_for(self, egress: DatagramSender | None, metrics: Metrics) -> HostCapabilities:
        """The capabilities of one new sandbox (connection or request) under this policy."""
        spec = self.policy.spec
        return HostCapabilities(
            listener=self.policy.name, plugin=self.policy.plugin, grants=spec.grants,
            limits=spec.limits, kv=self.kv, egress=egress, metrics=metrics,
        )  # fmt: skip

    def report_fault(
        self, fault: PluginFault, consequence: str, sandbox: str, metrics: Metrics, protocol: str | None
    ) -> None:
        """The one place a plugin fault is logged and counted (the sessions call it)."""
        policy = self.policy
        labels = {} if protocol is None else {"protocol": protocol}
        LOG.warning(
            "plugin fault %slistener=%s plugin=%s sandbox=%s fault=%s failure_mode=%s: %s",
            "" if protocol is None else f"protocol={protocol} ", policy.name, policy.plugin, sandbox,
            fault.kind.value, consequence, fault.message,
            extra={"listener": policy.name, "plugin": policy.plugin, "tier": self.tier.tier.value,
                   "sandbox": sandbox, "fault": fault.kind.value, "protocol": protocol or "tcp"},
        )  # fmt: skip
        metrics.inc(
            "plugin_faults_total", 1,
            listener=policy.name, plugin=policy.plugin, fault=fault.kind.value, **labels,
        )  # fmt: skip

    @property
    def one_wall_reason(self) -> str | None:
        """Why `tier: auto` fell back to wasmtime (only the wasm wall is up), if it did."""
        return self.tier.reason if self.tier.fell_back else None

    @property
    def name(self) -> str:
        return self.policy.name


@dataclass(frozen=True, slots=True)
class Listener(_Served):
    """A listener ready to serve: its policy, its loaded plugin and the plugin's kv store.

    The kv store is shared by every connection of this plugin on this listener.
    """

    policy: ListenerPolicy
    factory: SandboxFactory
    kv: KvStore
    tier: TierChoice
    """The tier the plugin was loaded in, chosen once by extproc.plugins.choose_tier."""


class HttpSandboxFactory(_Protocol):
    """An http-filter plugin loaded in one tier (vmm.wasmtime_tier.HttpFactory): one fresh
    sandbox per HTTP request."""

    @property
    def tier(self) -> str: ...

    @property
    def imports(self) -> frozenset[str]: ...

    @property
    def phases(self) -> HttpPhase:
        """The plugin's `wanted-phases`, read once at load."""
        ...

    async def new_sandbox(self, host: HostCapabilities) -> HttpRunner: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class HttpListener(_Served):
    """An HTTP listener's (or route's) policy ready to serve: its loaded http-filter plugin and
    the plugin's kv store (shared by every request under this policy)."""

    policy: ListenerPolicy
    factory: HttpSandboxFactory
    kv: KvStore
    tier: TierChoice
