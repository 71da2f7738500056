"""A listener's Lightcell policy (parsed from the Envoy config) and its loaded plugin."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from vmm.kvstore import KvStore
from vmm.policy import SandboxSpec, Tier
from vmm.sandbox import SandboxFactory

__all__ = ["FailureMode", "Listener", "ListenerPolicy"]


class FailureMode(enum.Enum):
    """What a connection gets when its plugin faults."""

    CLOSE = "close"  # CLOSE (FIN), and never another byte forwarded
    RESET = "reset"  # CLOSE_RST (RST), likewise
    ALLOW = "allow"  # drop the plugin, pass the rest of the connection through unchanged


@dataclass(frozen=True, slots=True)
class ListenerPolicy:
    """One Envoy listener's `filter_metadata["lightcell"]`, validated."""

    name: str
    spec: SandboxSpec
    tier: Tier = Tier.AUTO
    failure_mode: FailureMode = FailureMode.CLOSE

    @property
    def plugin(self) -> str:
        """Short plugin name for logs and metrics: the file name without .wasm."""
        name = Path(self.spec.plugin_path).name
        return name.removesuffix(".wasm")


@dataclass(frozen=True, slots=True)
class Listener:
    """A listener ready to serve: its policy, its loaded plugin and the plugin's kv store.

    The kv store is shared by every connection of this plugin on this listener.
    """

    policy: ListenerPolicy
    factory: SandboxFactory
    kv: KvStore
    one_wall_reason: str | None = None
    """Why `tier: auto` fell back to wasmtime (only the wasm wall is up), if it did."""

    @property
    def name(self) -> str:
        return self.policy.name
