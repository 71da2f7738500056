"""One HTTP request's http-filter plugin in a micro-VM (vmm.runner.HttpInstance).

Per hook, one VM entry (LC_OP_HTTP, guest/runtime/http.c): the host sends
the headers and attributes in a flat encoding (or the body bytes); the guest
lowers them into the plugin's memory with one cabi_realloc per block, as the
canonical ABI does, calls the hook, and answers with the return-area pointer
and where the plugin's linear memory lies. The host then reads the decision
straight out of the VM's memory with the one hardened lifter the wasmtime
tier uses too (vmm.http_abi.lift_decision), over a view of exactly that
memory, after checking that the guest-reported range lies wholly inside the
heap and within the memory cap: the guest runs the plugin and is never
trusted. The vCPU is stopped while the host reads (one vCPU, driven by this
thread), so the memory cannot change under the lifter. The hook's
cabi_post_* runs at the start of the next entry (the guest defers it), so
it runs before any other export, as the canonical ABI requires.

Faults are worded as the wasmtime tier words them (`<hook>: ...`), so a
session reports the same thing whichever tier ran the plugin.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from vmm.contract import (
    EXPORT_ON_CLOSE,
    EXPORT_ON_OPEN,
    HTTP_HOOKS,
    MAX_EVENT_BYTES,
    DecisionKind,
    HttpPhase,
)
from vmm.http_abi import Header, HttpDecision, lift_decision
from vmm.http_hooks import PhaseHooks
from vmm.microvm import abi
from vmm.microvm.instance import MicroVmInstanceBase, fault_kind, fault_words
from vmm.microvm.layout import GuestRangeError, checked_range
from vmm.microvm.vm import FaultReason, MicroVm, Response, VmFault
from vmm.sandbox import FaultKind, PluginFault
from vmm.wasm_module import WASM_PAGE

__all__ = ["MicroVmHttpInstance", "encode_pairs", "http_fault", "phase_index", "wasm_memory"]

CONTINUE = HttpDecision(DecisionKind.CONTINUE)
_BODY_PHASES = HttpPhase.REQUEST_BODY | HttpPhase.RESPONSE_BODY
_HEADER_PHASES = HttpPhase.REQUEST_HEADERS | HttpPhase.RESPONSE_HEADERS
_OP_HOOK = {abi.Op.OPEN: EXPORT_ON_OPEN, abi.Op.CLOSE: EXPORT_ON_CLOSE, abi.Op.PHASES: "wanted-phases"}
_PAIR = struct.Struct("<II")
_COUNT = struct.Struct("<I")

def phase_index(phase: HttpPhase) -> int:
    """The phase's bit index: LC_OP_HTTP's arg0."""
    return int(phase).bit_length() - 1


def encode_pairs(pairs: Sequence[tuple[bytes, bytes]]) -> bytes:
    """One lc_http list (guest/include/lc_guest.h): count, then per entry the
    two lengths and the bytes."""
    parts = [_COUNT.pack(len(pairs))]
    for name, value in pairs:
        parts += [_PAIR.pack(len(name), len(value)), name, value]
    return b"".join(parts)


def http_fault(fault: VmFault, hook: str, cap: int, budget_s: float) -> PluginFault:
    """A VmFault in `hook` (`cap`: the memory cap; `budget_s`: the event's CPU
    budget), as the wasmtime tier would report it."""
    return PluginFault(fault_kind(fault), f"{hook}: {fault_words(fault, cap, budget_s)}")


def wasm_memory(vm: MicroVm, payload: bytes) -> tuple[memoryview, int]:
    """(a view of the plugin's linear memory, the return-area pointer) from
    LC_OP_HTTP's answer, every value checked: the range must lie wholly in
    the heap, be whole wasm pages and no larger than the memory cap.
    GuestRangeError otherwise."""
    if len(payload) != abi.HTTP_RESULT.size:
        raise GuestRangeError(f"an http result of {len(payload)} bytes, not {abi.HTTP_RESULT.size}")
    base, size, retptr, _ = abi.HTTP_RESULT.unpack(payload)
    layout = vm.template.layout
    if base < abi.LC_HEAP_BASE:
        raise GuestRangeError(f"wasm memory at {base:#x} is below the heap ({abi.LC_HEAP_BASE:#x})")
    if size > layout.memory_cap or size % WASM_PAGE:
        raise GuestRangeError(f"wasm memory of {size:#x} bytes: not whole pages within the cap "
                              f"of {layout.memory_cap:#x}")
    start, end = checked_range(abi.LC_HEAP_BASE - abi.LC_RW_BASE, layout.heap_size,
                               base - abi.LC_HEAP_BASE, size)
    return vm.mem.view[start:end], retptr


class MicroVmHttpInstance(PhaseHooks, MicroVmInstanceBase):
    """vmm.runner.HttpInstance over a leased VM (see the module docstring)."""

    _hook = EXPORT_ON_OPEN
    _phases = HttpPhase(0)

    def bind_phases(self, phases: HttpPhase) -> MicroVmHttpInstance:
        self._phases = phases
        return self

    def wanted_phases(self) -> HttpPhase:
        return self._phases

    # --- one hook ----------------------------------------------------------------
    def _headers(self, phase: HttpPhase, headers: Sequence[Header], attributes: Sequence[tuple[str, str]],
                 eos: bool) -> HttpDecision:
        attrs = encode_pairs([(n.encode(), v.encode()) for n, v in attributes])
        return self._decide(phase, eos, _headers(headers) + attrs)

    def _trailers(self, phase: HttpPhase, trailers: Sequence[Header]) -> HttpDecision:
        return self._decide(phase, False, _headers(trailers))

    def _body(self, phase: HttpPhase, body: bytes, eos: bool) -> HttpDecision:
        if len(body) > MAX_EVENT_BYTES:  # the caller splits, as for the wasmtime tier
            raise ValueError(f"a body hook gets at most {MAX_EVENT_BYTES} bytes, not {len(body)}")
        return self._decide(phase, eos, bytes(body))

    def _decide(self, phase: HttpPhase, eos: bool, payload: bytes) -> HttpDecision:
        if not self._phases & phase:
            return CONTINUE  # never asked for: no plugin code runs
        hook = self._hook = HTTP_HOOKS[phase]  # names an LC_OP_HTTP fault (_fault), also after an Offload
        return self._call(abi.Op.HTTP, phase_index(phase), int(eos), payload,
                          lambda r: self._lift(hook, phase, r))

    def _lift(self, hook: str, phase: HttpPhase, r: Response) -> HttpDecision:
        """The decision, read from the VM's memory while the guest is stopped."""
        vm = self._lease.vm
        try:
            view, retptr = wasm_memory(vm, r.payload)
        except GuestRangeError as e:
            vm.poisoned = VmFault(FaultReason.BAD_LENGTH, f"http result: {e}")
            raise PluginFault(FaultKind.ABI, f"{hook}: the guest's answer is out of bounds: {e}") from None
        try:
            decision = lift_decision(view, retptr)
        except PluginFault as e:
            vm.poisoned = VmFault(FaultReason.BAD_RESPONSE, e.message)  # its post-return never runs
            raise PluginFault(e.kind, f"{hook}: {e.message}") from None
        finally:
            view.release()
        if decision.kind is DecisionKind.MODIFY and decision.body is not None and not phase & _BODY_PHASES:
            vm.poisoned = VmFault(FaultReason.BAD_RESPONSE, "a body replacement from a headers hook")
            raise PluginFault(FaultKind.ABI, f"{hook}: a body replacement from a headers or trailers hook")
        return decision.with_metadata(self._host.take_metadata())

    def _hook_of(self, op: abi.Op) -> str:
        return self._hook if op is abi.Op.HTTP else _OP_HOOK.get(op, op.name.lower())

    def _fault(self, fault: VmFault, op: abi.Op) -> PluginFault:
        return http_fault(fault, self._hook_of(op), self._lease.vm.template.layout.memory_cap, self._budget_s)


def _headers(headers: Sequence[Header]) -> bytes:
    return encode_pairs([(h.name.encode(), h.value) for h in headers])
