"""Per-event deadlines: a watchdog thread interrupts a vCPU that overruns.

The budget is CPU time of the thread running the guest (guest time is
accounted to it: the event loop's thread for an inline slice, then the vCPU
thread), not wall time: under load a vCPU thread can wait for the GIL or a core for
longer than the budget without the guest running at all, and an innocent
plugin must not fail for that. A deadline that comes due with budget left is
pushed back by what is left; a wall-clock cap (WALL_FACTOR x the budget,
at least MIN_WALL_S) still ends a call that never gets to run.

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
    __slots__ = ("budget", "clock", "cpu_start", "expire", "vm", "wall_limit")

    def __init__(self, vm: MicroVm, budget: float, preempt: bool) -> None:
        self.vm = vm
        self.budget = budget
        # arm() runs on the thread that runs the guest, so this is its CPU clock.
        self.clock = time.pthread_getcpuclockid(threading.get_ident())
        self.cpu_start = time.clock_gettime(self.clock)
        wall = budget * WALL_FACTOR if preempt else max(budget * WALL_FACTOR, MIN_WALL_S)
        self.wall_limit = time.monotonic() + wall
        self.expire = vm.preempt if preempt else vm.interrupt

    def budget_left(self) -> float:
        return self.budget - (time.clock_gettime(self.clock) - self.cpu_start)


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
        """Arm a deadline of `seconds` of CPU time; call on the thread that runs the guest.

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
        with self._lock:
            self._armed.pop(token, None)

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
                    heapq.heappop(self._heap)  # disarmed in time
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
                del self._armed[token]
                self.fired += 1
                armed.expire()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=5)
