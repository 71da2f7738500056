"""A scriptable in-memory Sandbox/SandboxFactory for the extproc tests (session, service).

The fake implements the vmm.sandbox protocols exactly; `behave(event, host)`
decides each chunk (return a Verdict or raise PluginFault / anything else).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from extproc.listener import FailureMode, Listener, ListenerPolicy, TierChoice
from vmm.capabilities import HostCapabilities
from vmm.contract import DataEvent, Verdict
from vmm.kvstore import KvStore
from vmm.policy import Grants, SandboxSpec, Tier
from vmm.sandbox import FaultKind, PluginFault

Behaviour = Callable[[DataEvent, HostCapabilities], Awaitable[Verdict]]

_ids = itertools.count(1)


async def passing(event: DataEvent, host: HostCapabilities) -> Verdict:
    return Verdict.pass_()


async def upper(event: DataEvent, host: HostCapabilities) -> Verdict:
    return Verdict.replace(event.data.upper())


def fault_on(marker: bytes, kind: FaultKind = FaultKind.TRAP) -> Behaviour:
    """Upper-case chunks; fault on any chunk that contains `marker`."""

    async def behave(event: DataEvent, host: HostCapabilities) -> Verdict:
        if marker in event.data:
            raise PluginFault(kind, f"chunk contained {marker!r}")
        return Verdict.replace(event.data.upper())

    return behave


@dataclass
class FakeSandbox:
    host: HostCapabilities
    behave: Behaviour
    open_fault: PluginFault | None = None
    identity: str = field(default_factory=lambda: f"fake-{next(_ids)}")
    opened: tuple[str, str] | None = None
    events: list[DataEvent] = field(default_factory=list)
    close_calls: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def open(self, listener: str, config: str) -> None:
        self.opened = (listener, config)
        if self.open_fault is not None:
            raise self.open_fault

    async def on_data(self, event: DataEvent) -> Verdict:
        assert self.close_calls == 0, "on_data after close"
        self.events.append(event)
        verdict = await self.behave(event, self.host)
        return verdict.with_metadata(self.host.take_metadata())  # as every tier does

    async def close(self) -> PluginFault | None:
        self.close_calls += 1
        self.closed.set()
        return None


@dataclass
class FakeFactory:
    behave: Behaviour = passing
    open_fault: PluginFault | None = None
    new_fault: PluginFault | None = None
    imports: frozenset[str] = frozenset()
    sandboxes: list[FakeSandbox] = field(default_factory=list)
    closed: bool = False

    @property
    def tier(self) -> str:
        return "fake"

    async def new_sandbox(self, host: HostCapabilities) -> FakeSandbox:
        if self.new_fault is not None:
            raise self.new_fault
        sandbox = FakeSandbox(host, self.behave, self.open_fault)
        self.sandboxes.append(sandbox)
        return sandbox

    async def aclose(self) -> None:
        self.closed = True


def fake_listener(
    name: str = "l1",
    factory: FakeFactory | None = None,
    *,
    failure_mode: FailureMode = FailureMode.CLOSE,
    grants: frozenset[str] = frozenset(),
    config: str = "cfg",
) -> Listener:
    spec = SandboxSpec(name, f"/plugins/{name}-plugin.wasm", Grants(grants), plugin_config=config)
    policy = ListenerPolicy(name, spec, Tier.WASMTIME, failure_mode)
    tier = TierChoice(Tier.WASMTIME, "a test fake", Tier.WASMTIME)
    return Listener(policy, factory or FakeFactory(), KvStore(100, 1024), tier)
