"""The wasmtime tier's per-event budget charges the plugin's own CPU time.

The same false fault as in the micro-VM tier (tests/test_kvm_budget.py): the
budget charged every CPU second of the thread running the hook, and a
garbage-collector pass on that thread (36-80 ms of CPU under load) failed a
trivial hook as "CPU budget exhausted". Here collector passes that burn more
CPU than the budget are forced into every hook call, on the thread running
it, inside its host calls (the host collects there, as an allocation may
start a pass anywhere in host code), either by a gc callback or by
finalizers that run inside the pass: no honest call may fail, and a plugin
that loops is still stopped by its own CPU time.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from _host_fakes import Sent

import vmm.wasmtime_tier as wt
from plugins import build as plugin_build
from vmm.capabilities import HostCapabilities
from vmm.contract import DataEvent, Direction, VerdictKind
from vmm.kvstore import KvStore
from vmm.policy import Grants, Limits, SandboxSpec
from vmm.sandbox import FaultKind, PluginFault, Sandbox
from vmm.wasmtime_tier import _context
from vmm.wasmtime_tier._budget import CallBudget

BUDGET_MS = 10
"""Honest calls of the faulty plugin in mode=ok use well under 1 ms."""
PAUSE_S = 0.008
PAUSES_PER_CALL = 3
"""Collector pauses forced into each call: 24 ms of the thread's CPU, over the budget."""
MAX_CALLS = 48
"""Calls a test makes at most while waiting for 8 paused past their budget."""


def burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class GcPauses:
    """Counts out pauses: up to PAUSES_PER_CALL for each hook call running on
    the current thread (its CallBudget names the call)."""

    def __init__(self) -> None:
        self.taken: dict[CallBudget, int] = {}
        self.active = True

    def take(self) -> bool:
        ctx = _context.current_or_none()
        budget = ctx.budget if ctx is not None else None
        if budget is None or self.taken.get(budget, 0) >= PAUSES_PER_CALL:
            return False
        self.taken[budget] = self.taken.get(budget, 0) + 1
        return True

    def over_budget(self) -> int:
        """Calls whose pauses took more CPU than the budget."""
        return sum(n * PAUSE_S > BUDGET_MS / 1000 for n in self.taken.values())


class PauseInCallback:
    """A gc callback that burns PAUSE_S at a pass's start inside a call (a full
    pass over a big heap). Appended after the tier's own callbacks, as any
    callback a library adds would be."""

    def __init__(self, pauses: GcPauses) -> None:
        self.pauses = pauses

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and self.pauses.take():
            burn(PAUSE_S)


class SlowFinalizer:
    """Cyclic garbage whose finalizer burns PAUSE_S when a pass reclaims it
    inside a call; reclaimed outside one, it leaves another behind, so every
    call meets one in the collection proper (no callback involved)."""

    def __init__(self, pauses: GcPauses) -> None:
        self.pauses = pauses
        self.cycle = self

    def __del__(self) -> None:
        if self.pauses.take():
            burn(PAUSE_S)
        if self.pauses.active:
            SlowFinalizer(self.pauses)  # the next pass reclaims it (and so on)


@contextlib.contextmanager
def forced_pauses(how: str) -> Iterator[GcPauses]:
    """Collector passes that pause as `how` says, on the thread inside a call.
    The epoch ticker keeps ticking through them (a short switch interval hands
    it the GIL), as it does when a pass runs Python code or the GIL is
    contended: the call's epoch deadline comes, and the budget is asked."""
    pauses = GcPauses()
    hook = PauseInCallback(pauses)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    if how == "callback":
        gc.callbacks.append(hook)
    else:
        for _ in range(PAUSES_PER_CALL):
            SlowFinalizer(pauses)
    try:
        yield pauses
    finally:
        sys.setswitchinterval(interval)
        if how == "callback":
            gc.callbacks.remove(hook)
        pauses.active = False  # finalizers left burn nothing (no call is in flight) nor re-arm
        gc.collect()


class CollectingHost(HostCapabilities):
    """Collects (generation 0, as an allocation would) in each host call the
    plugins here make: PAUSES_PER_CALL times in log, once in each kv call
    (the probe makes three)."""

    def log(self, level: int, message: str) -> None:
        for _ in range(PAUSES_PER_CALL):
            gc.collect(0)
        super().log(level, message)

    def kv_get(self, key: str) -> bytes | None:
        gc.collect(0)
        return super().kv_get(key)

    def kv_set(self, key: str, value: bytes) -> None:
        gc.collect(0)
        super().kv_set(key, value)

    def kv_increment(self, key: str, delta: int) -> int:
        gc.collect(0)
        return super().kv_increment(key, delta)


KV_LOOP_WAT = """
(module
  (import "lightcell:filter/kv@0.1.0" "increment" (func $kv_inc (param i32 i32 i64) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "spin")
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
  (func (export "on-open") (param i32 i32 i32 i32))
  (func (export "on-data") (param i32 i32 i32 i32) (result i32)
    (loop $l (drop (call $kv_inc (i32.const 0) (i32.const 4) (i64.const 1))) (br $l))
    (i32.const 32))
  (func (export "on-close")))
"""
"""on-data spins on kv.increment: every turn a host call, hence a collection."""


@pytest.fixture
async def load(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Loaded]]]:
    opened: list[wt.WasmtimeFactory] = []

    async def _load(path: Path, grants: frozenset[str] = frozenset()) -> Loaded:
        spec = SandboxSpec("budget-listener", str(path), Grants(grants), Limits(event_cpu_ms=BUDGET_MS))
        factory = await wt.load(spec, tmp_path)
        opened.append(factory)
        return Loaded(factory, spec)

    yield _load
    for f in opened:
        await f.aclose()


class Loaded:
    def __init__(self, factory: wt.WasmtimeFactory, spec: SandboxSpec) -> None:
        self.factory, self.spec = factory, spec
        self.kv = KvStore(spec.limits.kv_max_keys, spec.limits.kv_max_value_bytes)

    async def sandbox(self, config: str) -> Sandbox:
        spec = self.spec
        host = CollectingHost(spec.listener, "plugin", spec.grants, spec.limits, self.kv, Sent())
        sb = await self.factory.new_sandbox(host)
        await sb.open(spec.listener, config)
        return sb


LoadFn = Callable[..., Awaitable[Loaded]]


def ev(data: bytes) -> DataEvent:
    return DataEvent(Direction.READ, data, False)


HOW = ["callback", "finalizer"]
CALLS = [("kv", "call=kv", b"kv="), ("log", "call=log", b"log=ok")]


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize(("grant", "config", "answer"), CALLS)
async def test_collector_pauses_are_not_charged_to_honest_calls(
    load: LoadFn, how: str, grant: str, config: str, answer: bytes
) -> None:
    """Calls of a plugin making host calls (kv: three, log: one) get 24 ms of collector
    passes under a 10 ms budget: none fails. (Charging the thread's whole CPU clock failed
    all 8, in all four variants.) Calls go on until 8 were paused past their budget: on a
    loaded machine a pass may find another thread's under way and not pause this call."""
    p = await load(plugin_build.build("probe"), frozenset({grant}))
    outcomes: list[str] = []
    sb = await p.sandbox(config)
    with forced_pauses(how) as pauses:
        for i in range(MAX_CALLS):
            if pauses.over_budget() >= 8:
                break
            try:
                verdict = await sb.on_data(ev(b"event %d" % i))
                ok = verdict.kind is VerdictKind.REPLACE and verdict.data.startswith(answer)
                outcomes.append("ok" if ok else f"bad {verdict}")
            except PluginFault as e:
                outcomes.append(f"{e.kind.name}: {e.message}")
                sb = await p.sandbox(config)  # poisoned: count each call on its own
        over = pauses.over_budget()
    await sb.close()
    assert over >= 8, list(pauses.taken.values())  # the pauses did land in the calls
    failed = len(outcomes) - outcomes.count("ok")
    assert failed == 0, f"{failed} of {len(outcomes)} failed: {set(outcomes)}"


@pytest.mark.parametrize("how", HOW)
async def test_a_plugin_looping_on_host_calls_still_ends_on_its_own_cpu(
    load: LoadFn, tmp_path: Path, how: str
) -> None:
    """The same pauses, in a plugin that spins on a host call, do not hide
    the loop: it ends as a BUDGET fault, and what ended it was its CPU time
    reaching the budget, not the wall-clock cap."""
    path = tmp_path / "kv_loop.wasm"
    path.write_bytes(wasmtime.wat2wasm(KV_LOOP_WAT))
    p = await load(path, frozenset({"kv"}))
    sb = await p.sandbox("")
    with forced_pauses(how) as pauses:
        with pytest.raises(PluginFault) as fault:
            await sb.on_data(ev(b"spin"))
        over = pauses.over_budget()
    assert fault.value.kind is FaultKind.BUDGET
    assert f"CPU budget of {BUDGET_MS} ms exhausted" in fault.value.message
    assert over >= 1  # (a warm instance made meanwhile may have had pauses too)
    await sb.close()


async def test_a_pure_wasm_loop_still_ends_on_its_own_cpu(load: LoadFn) -> None:
    p = await load(plugin_build.build("faulty"))
    sb = await p.sandbox("mode=loop")
    with pytest.raises(PluginFault) as fault:
        await sb.on_data(ev(b"spin"))
    assert fault.value.kind is FaultKind.BUDGET
    assert f"CPU budget of {BUDGET_MS} ms exhausted" in fault.value.message
    await sb.close()


def test_call_budget_charges_cpu_outside_collector_passes() -> None:
    """A pass's CPU (its callbacks' included) is not charged; the same CPU
    burnt outside a pass is."""
    budget = CallBudget(0.05)

    def slow_pass(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            burn(0.06)

    gc.callbacks.append(slow_pass)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(slow_pass)
    assert budget.ticks_left() > 0
    burn(0.06)
    assert budget.ticks_left() == 0
    assert budget.why() == "CPU budget of 50 ms exhausted"
