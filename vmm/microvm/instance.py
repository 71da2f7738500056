"""One connection's plugin in a micro-VM, driven synchronously (vmm.runner.Instance).

Hooks start on the calling thread (the event loop's: `inline`) under a short
CPU slice (INLINE_SLICE_S). A call that needs longer is preempted by the
watchdog (the guest pauses mid-call, intact) and raises Offload: the runner
resumes it on the VM's pinned vCPU thread, where the rest of the event's
budget applies, while the loop serves other connections. Every hook has the
listener's `event_cpu_ms` of the guest's CPU time (MicroVm.guest_cpu, on
whichever thread ran it), with a wall-clock cap (watchdog.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from vmm.capabilities import CapabilityDenied, HostCapabilities
from vmm.contract import (
    EXPORT_ON_CLOSE,
    EXPORT_ON_DATA,
    EXPORT_ON_OPEN,
    DataEvent,
    Verdict,
    VerdictKind,
    import_capability,
    output_too_large,
)
from vmm.kvm import KvmError
from vmm.microvm import abi
from vmm.microvm.hostcalls import IMPORT
from vmm.microvm.pool import PooledVm, VmPool
from vmm.microvm.vm import FaultReason, Preempted, Response, VmFault
from vmm.microvm.watchdog import Watchdog
from vmm.runner import Offload
from vmm.sandbox import FaultKind, PluginFault

__all__ = [
    "INLINE_SLICE_S", "MicroVmInstance", "MicroVmInstanceBase", "fault_kind", "fault_message", "fault_words",
]

T = TypeVar("T")
R = TypeVar("R")

INLINE_SLICE_S = 0.001
"""CPU time a hook may run on the event loop's thread before it moves to the
VM's vCPU thread. A 1 KiB event takes ~50 us, a 256 KiB one a few hundred: the
common case never moves. The loop is held longer only by a host call already
running when the slice ends (it finishes first), by a budget no larger than
the slice (the call then ends there, as a fault), or by a late watchdog."""

_STATUS_KIND = {
    abi.Status.TRAP: FaultKind.TRAP,
    abi.Status.MEMORY: FaultKind.MEMORY,
    abi.Status.DENIED: FaultKind.DENIED,
    abi.Status.ABI: FaultKind.ABI,
    abi.Status.EXIT: FaultKind.TRAP,  # proc_exit ends the connection, as in the wasmtime tier
}
_REASON_KIND = {
    FaultReason.DEADLINE: FaultKind.BUDGET,
    FaultReason.EXCEPTION: FaultKind.TRAP,
    FaultReason.BAD_PORT: FaultKind.ABI,
    FaultReason.BAD_LENGTH: FaultKind.ABI,
    FaultReason.BAD_RESPONSE: FaultKind.ABI,
    FaultReason.BAD_HOSTCALL: FaultKind.ABI,
    FaultReason.DEAD: FaultKind.INTERNAL,
    FaultReason.POISONED: FaultKind.INTERNAL,
}
ABI_TOO_LARGE = 4
"""guest/runtime/lc_rt.h LC_ABI_TOO_LARGE: a replacement over MAX_OUTPUT_BYTES."""


def fault_kind(fault: VmFault) -> FaultKind:
    if fault.reason is FaultReason.GUEST_STATUS and fault.status is not None:
        return _STATUS_KIND.get(abi.Status(fault.status), FaultKind.INTERNAL)
    return _REASON_KIND.get(fault.reason, FaultKind.INTERNAL)


# wasmtime's words for the traps the guest reports (wasmtime.TrapCode, lower case).
_TRAP_WORDS: dict[int, str] = {
    abi.Trap.UNREACHABLE: "unreachable",
    abi.Trap.OOB: "memory out of bounds",
    abi.Trap.INT_OVERFLOW: "integer overflow",
    abi.Trap.DIV_BY_ZERO: "integer division by zero",
    abi.Trap.INVALID_CONVERSION: "bad conversion to integer",
    abi.Trap.CALL_INDIRECT: "bad signature",
    abi.Trap.EXHAUSTION: "stack overflow",
}
# The wasmtime tier's words where it has its own (guest/runtime/lc_rt.h enum lc_abi_detail);
# abi.ABI_DETAILS for the rest.
_ABI_WORDS = {
    **abi.ABI_DETAILS,
    1: "a pointer outside the plugin's memory",
    3: "the host's request was malformed",
    6: "the host refused the arguments of a host call",
    8: "cabi_realloc returned a pointer not aligned as the ABI requires",
}
_OP_HOOK = {abi.Op.OPEN: EXPORT_ON_OPEN, abi.Op.DATA: EXPORT_ON_DATA, abi.Op.CLOSE: EXPORT_ON_CLOSE}


def fault_words(fault: VmFault, cap: int, budget_s: float) -> str:
    """What went wrong, worded as the wasmtime tier words it (`cap`: the memory cap;
    `budget_s`: the event's CPU budget), so a log reads the same whichever tier ran."""
    if fault.reason is FaultReason.DEADLINE:
        return f"CPU budget of {budget_s * 1000:.0f} ms exhausted"
    if fault.reason is not FaultReason.GUEST_STATUS or fault.status is None:
        return fault.message
    status = abi.Status(fault.status)
    if status is abi.Status.TRAP:
        return f"wasm trap: {_TRAP_WORDS.get(fault.detail, 'other')}"
    if status is abi.Status.MEMORY:
        return f"memory cap of {cap} bytes hit"
    if status is abi.Status.EXIT:
        return f"plugin called proc_exit({fault.detail})"
    if status is abi.Status.DENIED and fault.detail in IMPORT:
        capability = import_capability(*IMPORT[fault.detail])
        return str(CapabilityDenied(capability or "?"))
    if status is abi.Status.ABI and fault.detail in _ABI_WORDS:
        return _ABI_WORDS[fault.detail]
    return fault.message


def fault_message(fault: VmFault, op: abi.Op, cap: int, budget_s: float) -> str:
    """A tcp-filter hook's fault, `<hook>: <what>`, as the wasmtime tier words it."""
    hook = _OP_HOOK.get(op, op.name.lower())
    if (op is abi.Op.DATA and fault.reason is FaultReason.GUEST_STATUS
            and fault.status == abi.Status.ABI and fault.detail == ABI_TOO_LARGE):
        return f"{hook}: {output_too_large()}"
    return f"{hook}: {fault_words(fault, cap, budget_s)}"


def _nothing(_: Response) -> None:
    return None


def _verdict(r: Response) -> Verdict:
    kind = VerdictKind(r.detail)  # the VM checked it is 0..3
    if kind is VerdictKind.REPLACE:
        return Verdict.replace(r.payload)
    return Verdict.pass_() if kind is VerdictKind.PASS else Verdict(kind)


class MicroVmInstanceBase:
    """A leased, restored VM for one sandbox of either world (see the module
    docstring): on-open, on-close, release and the one way hooks are called."""

    def runs_inline(self, size: int) -> bool:
        return True  # any call can be preempted and moved (see the module docstring)

    def __init__(self, pool: VmPool, lease: PooledVm, host: HostCapabilities, watchdog: Watchdog,
                 budget_s: float) -> None:
        self._pool = pool
        self._lease = lease
        self._host = host
        self._dog = watchdog
        self._budget_s = budget_s
        self._identity = f"microvm:{lease.vm.identity}"

    @property
    def identity(self) -> str:
        return self._identity

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        return self._lease.thread.submit(fn)

    def open(self, listener: str, config: str) -> None:
        pool = self._pool
        if pool.opened_with == (listener, config):
            return  # on-open already ran, in the snapshot this VM was restored from (pool.py)
        if pool.opened_with is not None and pool.base is not None:
            pool.base.restore(self._lease.vm)  # other arguments: from the booted state instead
        lb, cb = listener.encode(), config.encode()
        self._call(abi.Op.OPEN, len(lb), len(cb), lb + cb, _nothing)

    def close(self) -> None:
        self._call(abi.Op.CLOSE, 0, 0, b"", _nothing)

    def release(self) -> Future[None] | None:
        # Queued on the VM's thread behind any call still running there (which
        # the watchdog bounds); the restore that follows wipes this connection
        # before any reuse. Nothing to wait for here.
        self._pool.give_back(self._lease)
        return None

    # --- one hook: inline slice, then the vCPU thread ---------------------------
    def _call(self, op: abi.Op, arg0: int, arg1: int, payload: bytes, lift: Callable[[Response], R]) -> R:
        """One hook; `lift` turns its response into the hook's result (also after an Offload)."""
        vm, dog = self._lease.vm, self._dog
        budget = self._budget_s
        if threading.get_ident() == self._lease.thread.ident:
            # Already on the VM's vCPU thread (the rest of an offloaded entry):
            # nowhere to move to, so the whole budget applies.
            return lift(self._checked(op, lambda: self._dog.run(
                vm, budget, lambda: vm.call(op, arg0, arg1, payload, host=self._host))))
        slice_s = min(INLINE_SLICE_S, budget)
        # A budget no larger than the slice ends the call at the slice (a fault);
        # otherwise the slice only pauses it.
        preempt = budget > slice_s
        cpu = vm.guest_cpu()  # not the loop thread's time: its GC passes are not the guest's
        token = dog.arm(vm, slice_s, preempt=preempt)
        try:
            return lift(self._checked(op, lambda: vm.call(op, arg0, arg1, payload, host=self._host)))
        except Preempted:
            left = max(budget - (vm.guest_cpu() - cpu), 0.0)
            raise Offload(lambda: lift(self._resume(op, left))) from None
        finally:
            dog.disarm(token)
            vm.clear_preempt()  # one that fired after the guest answered changes nothing
            self._check_deadline(op, token_hit=not preempt)

    def _resume(self, op: abi.Op, left_s: float) -> Response:
        """On the vCPU thread: the rest of a preempted call, with the rest of its budget."""
        vm = self._lease.vm
        return self._checked(op, lambda: self._dog.run(vm, left_s, lambda: vm.resume(self._host)))

    def _check_deadline(self, op: abi.Op, token_hit: bool) -> None:
        vm = self._lease.vm
        if token_hit and vm.deadline_hit and vm.poisoned is None:
            # Fired as the guest answered: the event overran all the same.
            vm.poisoned = VmFault(FaultReason.DEADLINE, f"event took over {self._budget_s * 1000:.0f} ms")
            raise self._fault(vm.poisoned, op)

    def _fault(self, fault: VmFault, op: abi.Op) -> PluginFault:
        """The PluginFault a VmFault in `op` is reported as."""
        cap = self._lease.vm.template.layout.memory_cap
        return PluginFault(fault_kind(fault), fault_message(fault, op, cap, self._budget_s))

    def _checked(self, op: abi.Op, call: Callable[[], Response]) -> Response:
        try:
            return call()
        except VmFault as e:
            raise self._fault(e, op) from None
        except ValueError as e:  # refused before the guest ran (oversized payload)
            raise PluginFault(FaultKind.INTERNAL, str(e)) from None
        except KvmError as e:
            raise PluginFault(FaultKind.INTERNAL, str(e)) from None


class MicroVmInstance(MicroVmInstanceBase):
    """vmm.runner.Instance: a tcp-filter connection's plugin in a leased VM."""

    def on_data(self, event: DataEvent) -> Verdict:
        host = self._host

        def lift(r: Response) -> Verdict:  # with what the plugin set during the hook(s)
            return _verdict(r).with_metadata(host.take_metadata())

        return self._call(abi.Op.DATA, int(event.direction), int(event.end_of_stream), event.data, lift)
