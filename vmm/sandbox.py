"""The tier-agnostic sandbox interface.

A *plugin* (SandboxFactory) is loaded once per listener; each connection gets a
fresh *sandbox* from it, with no memory, globals or tables of any earlier
connection. Every tier (wasmtime, micro-VM) implements both protocols.
"""

from __future__ import annotations

import enum
from typing import Protocol

from vmm.capabilities import HostCapabilities
from vmm.contract import DataEvent, Verdict


class FaultKind(enum.Enum):
    TRAP = "trap"  # the plugin trapped (unreachable, out-of-bounds, ...)
    BUDGET = "budget"  # the per-event CPU budget ran out
    MEMORY = "memory"  # the memory cap was hit
    DENIED = "denied"  # the plugin called an ungranted capability
    ABI = "abi"  # the plugin broke the contract (bad pointer, bad verdict)
    INTERNAL = "internal"  # the sandbox itself failed (VM error, ...)


class PluginFault(Exception):
    """A plugin failed on one connection. Only that connection is affected."""

    def __init__(self, kind: FaultKind, message: str) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind
        self.message = message


class PluginLoadError(Exception):
    """A plugin cannot be loaded (missing file, bad wasm, wrong contract)."""


class Sandbox(Protocol):
    """One connection's isolated plugin instance.

    Every tier's sandbox is a vmm.runner.Runner over that tier's synchronous
    instance; this protocol is what the session relies on.
    """

    @property
    def identity(self) -> str:
        """Unique per sandbox; never reused (tests prove isolation with it)."""
        ...

    async def open(self, listener: str, config: str) -> None:
        """Run the plugin's on-open hook. Raises PluginFault.

        The hook may be deferred to run with the next call (the runner does, to
        save a thread hop or VM entry); an on-open fault then surfaces from
        that next on_data or close, which callers treat the same way.
        """
        ...

    async def on_data(self, event: DataEvent) -> Verdict:
        """Run the plugin's on-data hook. Raises PluginFault."""
        ...

    async def close(self) -> PluginFault | None:
        """Run on-close if the sandbox is healthy, then release it. Never raises:
        returns the fault on-close (or a deferred on-open) raised, if any."""
        ...


class SandboxFactory(Protocol):
    """A plugin loaded in one tier, ready to hand out fresh sandboxes."""

    @property
    def tier(self) -> str: ...

    @property
    def imports(self) -> frozenset[str]:
        """Capabilities the plugin imports (to report against the grants)."""
        ...

    async def new_sandbox(self, host: HostCapabilities) -> Sandbox: ...

    async def aclose(self) -> None: ...
