"""What a listener grants its plugin and the limits it runs under.

Pure values: parsed from the Envoy config by extproc.config, consumed by the
tiers and by vmm.capabilities.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

CAPABILITIES = frozenset({"log", "clock", "random", "kv", "metadata", "egress", "connection"})


class Tier(enum.Enum):
    AUTO = "auto"  # microvm where /dev/kvm works, else wasmtime
    MICROVM = "microvm"
    WASMTIME = "wasmtime"


@dataclass(frozen=True, slots=True)
class EgressTarget:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Grants:
    """Capabilities a listener hands its plugin. Default: nothing."""

    capabilities: frozenset[str] = frozenset()
    egress_allow: frozenset[EgressTarget] = frozenset()

    def allows(self, capability: str) -> bool:
        return capability in self.capabilities


@dataclass(frozen=True, slots=True)
class EgressLimits:
    """Per connection (or HTTP request): how fast its plugin may send datagrams, and how many
    of them may wait in the process's one egress queue at once (its share of it)."""

    datagrams_per_second: int = 100
    bytes_per_second: int = 128 * 1024
    """Token buckets holding one second's worth: a connection may burst that much, then
    sends at this rate."""
    max_queued: int = 64
    """Of the shared queue's 1,024 places (vmm.egress.MAX_PENDING): one connection cannot
    fill it for the others."""


@dataclass(frozen=True, slots=True)
class Limits:
    memory_bytes: int = 16 * 1024 * 1024
    """Cap on the plugin's linear memory (and the micro-VM's wasm heap)."""
    event_cpu_ms: int = 50
    """Budget of one hook call (open, one chunk, close): CPU time spent running it
    (micro-VM: the guest's own, inside KVM_RUN plus its host calls; wasmtime: its
    thread's less garbage-collector passes), with a wall-clock cap of 20x (at least 2 s) in every tier
    (vmm/microvm/watchdog.py, vmm/wasmtime_tier/_budget.py)."""
    max_datagram_bytes: int = 1400
    egress: EgressLimits = field(default_factory=EgressLimits)
    kv_max_value_bytes: int = 64 * 1024
    kv_max_keys: int = 10_000


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """Everything a tier needs to load one listener's plugin."""

    listener: str
    plugin_path: str
    grants: Grants = field(default_factory=Grants)
    limits: Limits = field(default_factory=Limits)
    plugin_config: str = ""
