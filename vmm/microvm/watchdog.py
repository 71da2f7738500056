"""Per-event deadlines: a watchdog thread interrupts a vCPU that overruns.

The budget is the guest's own CPU time (MicroVm.guest_cpu: its thread's CPU
clock inside KVM_RUN, plus its host calls), whichever thread ran it (the
event loop's for an inline slice, then the vCPU thread). Not wall time: under
load a vCPU thread can wait for the GIL or a core for longer than the budget
without the guest running at all. Not the thread's whole CPU time either: a
garbage-collector pass on that thread (36-80 ms measured under load) is not
the guest's. An innocent plugin must not fail for either. A deadline that
comes due with budget left is pushed back by what is left; a wall-clock cap
(WALL_FACTOR x the budget, at least MIN_WALL_S) still ends a call that never
gets to run.

Interrupting = set `immediate_exit` and send a signal to the guest's thread, so
KVM_RUN returns EINTR whether the guest is running or just about to enter
(MicroVm.interrupt). The call then fails with DEADLINE and the VM is
poisoned; the pool restores it before any reuse. A late firing (the call
finished as the deadline passed) also poisons: the event overran anyway.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from vmm.microvm.vm import FaultReason, MicroVm, VmFault, install_interrupt_handler

T = TypeVar("T")

WALL_FACTOR = 20
MIN_WALL_S = 2.0


class _Armed:
    __slots__ = ("budget", "cpu_start", "epoch", "fired", "preempt", "vm", "wall_limit")

    def __init__(self, vm: MicroVm, budget: float, preempt: bool) -> None:
        self.vm = vm
        self.budget = budget
        self.preempt = preempt
        self.fired = False
        self.epoch = vm.open_epoch()
        self.cpu_start = vm.guest_cpu()
        wall = budget * WALL_FACTOR if preempt else max(budget * WALL_FACTOR, MIN_WALL_S)
        self.wall_limit = time.monotonic() + wall

    def budget_left(self) -> float:
        return self.budget - (self.vm.guest_cpu() - self.cpu_start)

    def expire(self) -> None:
        self.fired = True
        if self.preempt:
            self.vm.preempt(self.epoch)
        else:
            self.vm.interrupt(self.epoch)


class Watchdog:
    def __init__(self) -> None:
        install_interrupt_handler()
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, _Armed] = {}
        self._tokens = itertools.count()
        self._closed = False
        self.fired = 0
        self._thread = threading.Thread(target=self._loop, name="lightcell-watchdog", daemon=True)
        self._thread.start()

    def arm(self, vm: MicroVm, seconds: float, preempt: bool = False) -> int:
        """Arm a deadline of `seconds` of the guest's CPU time (MicroVm.guest_cpu).

        At the deadline the call fails (MicroVm.interrupt: DEADLINE, the VM is
        poisoned) or, with `preempt`, pauses (MicroVm.preempt: the call raises
        Preempted and may be resumed elsewhere).
        """
        token = next(self._tokens)
        armed = _Armed(vm, seconds, preempt)
        with self._lock:
            self._armed[token] = armed
            deadline = time.monotonic() + seconds
            # Wake the watchdog only if this deadline comes first: a wake-up
            # per event would cost a thread switch on the hot path.
            if not self._heap or deadline < self._heap[0][0]:
                self._lock.notify()
            heapq.heappush(self._heap, (deadline, token))
        return token

    def disarm(self, token: int) -> None:
        """End the arm: once this returns no kick of it can come (a kick runs under
        the same lock, and its epoch closes here)."""
        with self._lock:
            armed = self._armed.pop(token, None)
            if armed is not None:
                armed.vm.close_epoch(armed.epoch)

    def run(self, vm: MicroVm, seconds: float, fn: Callable[[], T]) -> T:
        """Run `fn` (one call on `vm`, on its vCPU thread) under a deadline."""
        token = self.arm(vm, seconds)
        try:
            result = fn()
        finally:
            self.disarm(token)
        if vm.deadline_hit:  # fired as the guest answered: the event overran all the same
            vm.poisoned = VmFault(FaultReason.DEADLINE, f"event took over {seconds * 1000:.0f} ms")
            raise vm.poisoned
        return result

    def _loop(self) -> None:
        with self._lock:
            while not self._closed:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)  # disarmed in time (a fired arm is never pushed back)
                if not self._heap:
                    self._lock.wait()
                    continue
                deadline, token = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._lock.wait(delay)
                    continue
                heapq.heappop(self._heap)
                armed = self._armed[token]
                left = armed.budget_left()
                now = time.monotonic()
                if left > 0 and now < armed.wall_limit:
                    # Starved, not overrunning: wait for the rest of the budget.
                    heapq.heappush(self._heap, (min(now + left, armed.wall_limit), token))
                    continue
                self.fired += 1
                armed.expire()  # the arm stays until disarm() closes its epoch

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=5)
