"""One micro-VM: boot an image, run calls, serve host calls, poison on anything odd.

A MicroVm must be driven from one thread (its vCPU thread, see worker.py):
KVM_RUN from another thread costs 40-60 us on these machines. Any abnormal
exit (guest exception, unknown port, bad length, bad response, deadline, KVM
error) or any non-OK guest status poisons the VM; a poisoned VM refuses
calls until snapshot.restore() rewrites its memory and registers.

The budget charges guest_cpu(): CPU time of the thread inside KVM_RUN plus
host calls (vmm/kvm/cputime.py), never the monitor's own Python or a
garbage-collector pass that happens on its thread. The watchdog's kicks
(interrupt, preempt) name the arm they come from and are ignored once it
closed, so none can land on a later entry.
"""

from __future__ import annotations

import enum
import itertools
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from vmm.capabilities import HostCapabilities
from vmm.kvm import GuestMemory, Interrupted, IoIn, IoOut, KvmError, System, copy_struct
from vmm.microvm import abi
from vmm.microvm.hostcalls import UnknownHostFn, dispatch, host_fn_capability
from vmm.microvm.layout import GuestRangeError, checked_range
from vmm.microvm.machine import Template

INTERRUPT_SIGNAL = signal.SIGRTMIN + 2
"""Sent to a vCPU thread to make KVM_RUN return EINTR (the watchdog)."""

HOSTCALL_CHARGE_MAX_S = 0.001
"""A host call charges the guest its CPU time up to this much: honest ones take
microseconds (their payloads are capped), and a garbage-collector pass that
lands inside one is not the guest's doing."""


def install_interrupt_handler() -> None:
    """A no-op handler: the default action kills the process and SIG_IGN gives
    no EINTR. Python lets only the main thread install handlers."""
    current = signal.getsignal(INTERRUPT_SIGNAL)
    if callable(current):
        return
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("the micro-VM tier must first be set up from the main thread")
    signal.signal(INTERRUPT_SIGNAL, lambda _sig, _frame: None)


class FaultReason(enum.Enum):
    GUEST_STATUS = "guest reported a failure"
    EXCEPTION = "guest CPU exception"
    BAD_PORT = "unknown or misused port"
    BAD_LENGTH = "guest-supplied length or offset out of bounds"
    BAD_RESPONSE = "malformed response"
    BAD_HOSTCALL = "unknown host function"
    DEADLINE = "event deadline exceeded"
    DEAD = "guest shut down or KVM refused to run it"
    POISONED = "VM is poisoned"


class Preempted(Exception):  # not an error: a pause
    """The call's inline slice ran out (MicroVm.preempt). The guest is paused
    mid-call with its state intact and the VM is not poisoned: resume() the
    call, on any thread (the runner moves it to the VM's vCPU thread)."""


class VmFault(Exception):
    def __init__(self, reason: FaultReason, message: str, status: int | None = None,
                 detail: int = 0) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message
        self.status = status  # enum lc_status for GUEST_STATUS
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Response:
    detail: int
    payload: bytes


T = TypeVar("T")
_serials = itertools.count(1)
_EXCEPTION_NAMES = {0: "#DE", 1: "#DB", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
                    10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC",
                    18: "#MC", 19: "#XM"}


class MicroVm:
    """A KVM VM with one vCPU, the template's read-only slot and its own RW memfd."""

    def __init__(self, system: System, template: Template) -> None:
        self.template = template
        self.serial = next(_serials)
        self.incarnation = 0
        self.poisoned: VmFault | None = None
        self.thread_id: int | None = None
        self.deadline_hit = False
        self.preempt_hit = False
        self.call_in_flight: abi.Op | None = None
        """The call a Preempted left unfinished (resume() goes on with it)."""
        self._kick_lock = threading.Lock()  # a kick sets its flags under it (see _run_until)
        self._epochs = itertools.count(1)
        self._open_epochs: set[int] = set()
        layout = template.layout
        self.vm = system.create_vm()
        try:
            if system.msr_filter:  # guest RDMSR/WRMSR: #GP (on PVM ring 3 faults natively anyway)
                self.vm.deny_msrs()
            self.mem = GuestMemory(layout.rw_size, f"lightcell-vm-{self.serial}")
            self.vm.set_memory_region(0, 0, template.ro_size, template.ro.addr, readonly=True)
            self.vm.set_memory_region(1, abi.LC_RW_BASE, layout.rw_size, self.mem.addr)
            self.vcpu = self.vm.create_vcpu(0)
            self.vcpu.set_cpuid(system.guest_cpuid)  # the minimal table (vmm/kvm/cpuid.py)
        except BaseException:
            if hasattr(self, "vcpu"):
                self.vcpu.close()
            self.vm.close()
            if hasattr(self, "mem"):
                self.mem.close()
            raise
        in_off = abi.LC_IN_BASE - abi.LC_RW_BASE
        out_off = abi.LC_OUT_BASE - abi.LC_RW_BASE
        self.in_buf = self.mem.view[in_off:in_off + abi.LC_IN_SIZE]
        self.out_buf = self.mem.view[out_off:out_off + abi.LC_OUT_SIZE]
        self.exits = 0

    @property
    def identity(self) -> str:
        return f"microvm-{self.serial}.{self.incarnation}"

    # -- boot ---------------------------------------------------------------
    def boot(self) -> None:
        """Cold boot from the image: load .data, set up the CPU, run to READY."""
        t = self.template
        for off, data in t.rw_init:
            self.mem.view[off:off + len(data)] = data
        self.vcpu.set_sregs(t.configure_sregs(self.vcpu.get_sregs()))
        self.vcpu.set_fpu(t.initial_fpu())
        self.vcpu.set_regs(t.initial_regs())
        self._guarded(lambda: self._run_until(abi.LC_PORT_READY, None))
        self._read_response(abi.Op.OPEN)  # init's status

    # -- calls --------------------------------------------------------------
    def call(self, op: abi.Op, arg0: int = 0, arg1: int = 0, payload: bytes = b"",
             host: HostCapabilities | None = None) -> Response:
        """One request -> one response (plus one exit per host call)."""
        if self.poisoned is not None:
            raise VmFault(FaultReason.POISONED, str(self.poisoned))
        if len(payload) > abi.MAX_REQUEST_PAYLOAD:
            raise ValueError(f"payload of {len(payload)} bytes exceeds {abi.MAX_REQUEST_PAYLOAD}")
        if self.call_in_flight is not None:
            raise VmFault(FaultReason.POISONED, "a preempted call was never resumed")
        abi.REQUEST.pack_into(self.in_buf, 0, op, arg0, arg1, len(payload))
        self.in_buf[abi.REQUEST.size:abi.REQUEST.size + len(payload)] = payload
        self.call_in_flight = op
        return self._finish(op, host)

    def resume(self, host: HostCapabilities | None = None) -> Response:
        """Go on with the call that raised Preempted, to its response."""
        op = self.call_in_flight
        if op is None:
            raise VmFault(FaultReason.POISONED, "no preempted call to resume")
        return self._finish(op, host)

    def _finish(self, op: abi.Op, host: HostCapabilities | None) -> Response:
        # Preempted passes through _guarded without poisoning; anything else poisons.
        self._guarded(lambda: self._run_until(abi.LC_PORT_DONE, host))
        self.call_in_flight = None
        return self._guarded(lambda: self._read_response(op))

    def _guarded(self, fn: Callable[[], T]) -> T:
        """Run `fn`; any failure poisons the VM before it propagates."""
        try:
            return fn()
        except VmFault as e:
            self.poisoned = e
            raise
        except KvmError as e:
            self.poisoned = VmFault(FaultReason.DEAD, str(e))
            raise self.poisoned from e

    # -- the vCPU loop: every exit is handled here --------------------------
    def _run_until(self, port: int, host: HostCapabilities | None) -> None:
        self.thread_id = threading.get_ident()
        vcpu = self.vcpu
        while True:
            if self.deadline_hit:
                raise VmFault(FaultReason.DEADLINE, "interrupted by the watchdog")
            if self.preempt_hit:
                # preempt() set immediate_exit before this flag, so both are ours to clear.
                self.clear_preempt()
                raise Preempted()
            exit_ = vcpu.run()
            self.exits += 1
            if type(exit_) is IoOut and exit_.size == 4 and exit_.count == 1:
                if exit_.port == port:
                    if port == abi.LC_PORT_READY and exit_.value != abi.LC_ABI_VERSION:
                        raise VmFault(FaultReason.BAD_RESPONSE,
                                      f"guest speaks ABI {exit_.value}, host {abi.LC_ABI_VERSION}")
                    return
                if exit_.port == abi.LC_PORT_HOSTCALL and port == abi.LC_PORT_DONE:
                    started = time.thread_time()
                    self._hostcall(host)
                    vcpu.cpu.charge(min(time.thread_time() - started, HOSTCALL_CHARGE_MAX_S))
                    continue
            if type(exit_) is IoOut and exit_.port == abi.LC_PORT_FAULT:
                regs = vcpu.get_regs()
                name = _EXCEPTION_NAMES.get(regs.rax, f"vector {regs.rax}")
                raise VmFault(FaultReason.EXCEPTION,
                              f"{name} error={regs.rbx:#x} rip={regs.rcx:#x} cr2={regs.rsi:#x}",
                              detail=int(regs.rax))
            if type(exit_) is Interrupted:
                # A stray signal (a kick for another VM on this thread) or a kick (flags, top).
                if vcpu.immediate_exit and not (self.deadline_hit or self.preempt_hit):
                    self._settle_kick()
                continue
            if type(exit_) is IoOut:
                raise VmFault(FaultReason.BAD_PORT, f"out to port {exit_.port:#x} size {exit_.size}")
            if type(exit_) is IoIn:
                raise VmFault(FaultReason.BAD_PORT, f"in from port {exit_.port:#x}")
            raise VmFault(FaultReason.DEAD, f"unexpected exit {exit_}")

    def _hostcall(self, host: HostCapabilities | None) -> None:
        fn, len0, len1, _, a0 = abi.HOSTCALL.unpack_from(self.out_buf, 0)
        room = abi.LC_OUT_SIZE - abi.HOSTCALL.size
        try:
            s0, e0 = checked_range(abi.HOSTCALL.size, room, 0, len0)
            s1, e1 = checked_range(abi.HOSTCALL.size, room, len0, len1)
        except GuestRangeError as e:
            raise VmFault(FaultReason.BAD_LENGTH, f"host call {fn}: {e}") from None
        try:
            result = dispatch(host, fn, a0, bytes(self.out_buf[s0:e0]), bytes(self.out_buf[s1:e1]))
        except UnknownHostFn as e:
            raise VmFault(FaultReason.BAD_HOSTCALL, str(e)) from None
        n = len(result.payload)
        if n > abi.LC_IN_SIZE - abi.HOSTCALL_RESULT.size:
            raise VmFault(FaultReason.BAD_LENGTH, f"host call {fn} answer of {n} bytes")
        abi.HOSTCALL_RESULT.pack_into(self.in_buf, 0, result.status, n, result.value)
        self.in_buf[abi.HOSTCALL_RESULT.size:abi.HOSTCALL_RESULT.size + n] = result.payload

    def _read_response(self, op: abi.Op) -> Response:
        status, detail, _, length = abi.RESPONSE.unpack_from(self.out_buf, 0)
        if status not in abi.Status._value2member_map_:
            raise VmFault(FaultReason.BAD_RESPONSE, f"unknown status {status}")
        try:
            start, end = checked_range(abi.RESPONSE.size, abi.MAX_RESPONSE_PAYLOAD, 0, length)
        except GuestRangeError as e:
            raise VmFault(FaultReason.BAD_LENGTH, f"response: {e}") from None
        if status != abi.Status.OK:
            why = abi.ABI_DETAILS.get(detail, "") if status == abi.Status.ABI else ""
            if status == abi.Status.DENIED and detail in abi.HostFn._value2member_map_:
                fn = abi.HostFn(detail)
                capability = host_fn_capability(fn)
                # worded as the wasmtime tier words a denial (CapabilityDenied); a call that
                # needs no grant is denied only where there is no connection (boot, warm-up)
                why = (f"capability {capability!r} not granted" if capability is not None
                       else f"host call {fn.name.lower()} refused outside a connection")
            raise VmFault(FaultReason.GUEST_STATUS,
                          f"{abi.Status(status).name} detail={detail}{f' ({why})' if why else ''}",
                          status=status, detail=detail)
        if op == abi.Op.DATA and detail > 3:
            raise VmFault(FaultReason.BAD_RESPONSE, f"unknown verdict {detail}")
        return Response(detail, bytes(self.out_buf[start:end]))

    def flush_pending_exit(self) -> None:
        """Let KVM finish an exit we never answered (an `in`, a mid-call exit).

        KVM completes the last I/O exit at the start of the next KVM_RUN; on
        PVM, completing an unanswered `in` after the registers were reset sent
        the guest to rip 0. A KVM_RUN with immediate_exit completes it and
        returns EINTR without entering the guest.
        """
        self.vcpu.immediate_exit = True
        try:
            self.vcpu.run()
        finally:
            self.vcpu.immediate_exit = False

    def _settle_kick(self) -> None:
        """immediate_exit is set but no kick flag yet: a kick is half-way (its
        thread lost the GIL between the two). Wait for it on its lock instead of
        spinning through KVM_RUN, which would burn this thread's CPU."""
        with self._kick_lock:
            if not (self.deadline_hit or self.preempt_hit):
                self.vcpu.immediate_exit = False  # no kick left it: nothing to honour

    def guest_cpu(self) -> float:
        """Seconds of CPU charged to this VM's guest so far (never reset: diff it). Any thread."""
        return self.vcpu.cpu.used()

    # -- watchdog side (any thread) -----------------------------------------
    def open_epoch(self) -> int:
        """A number for one watchdog arm: its kicks are honoured until close_epoch."""
        with self._kick_lock:
            epoch = next(self._epochs)
            self._open_epochs.add(epoch)
            return epoch

    def close_epoch(self, epoch: int) -> None:
        with self._kick_lock:
            self._open_epochs.discard(epoch)

    def interrupt(self, epoch: int | None = None) -> None:
        """Stop the running guest: KVM_RUN returns EINTR and the call fails DEADLINE.
        With `epoch`, only while that arm is open (a late kick changes nothing)."""
        with self._kick_lock:
            if epoch is not None and epoch not in self._open_epochs:
                return
            self.deadline_hit = True
            self.vcpu.immediate_exit = True
            tid = self.thread_id
            if tid is not None:
                signal.pthread_kill(tid, INTERRUPT_SIGNAL)

    def preempt(self, epoch: int | None = None) -> None:
        """Pause the running guest at its next exit (or now): the call raises
        Preempted and can be resumed. immediate_exit goes first, so a vCPU
        thread that sees preempt_hit also sees immediate_exit set."""
        with self._kick_lock:
            if epoch is not None and epoch not in self._open_epochs:
                return
            self.vcpu.immediate_exit = True
            self.preempt_hit = True
            tid = self.thread_id
            if tid is not None:
                signal.pthread_kill(tid, INTERRUPT_SIGNAL)

    def clear_preempt(self) -> None:
        """Forget a preemption that came too late to matter (the call finished);
        call once the watchdog has disarmed, so that none can follow."""
        if self.preempt_hit:
            self.preempt_hit = False
            if not self.deadline_hit:
                self.vcpu.immediate_exit = False

    def close(self) -> None:
        self.in_buf.release()
        self.out_buf.release()
        self.vcpu.close()
        self.vm.close()
        self.mem.close()


__all__ = [
    "FaultReason", "MicroVm", "Preempted", "Response", "VmFault", "copy_struct", "install_interrupt_handler",
]
