"""The per-event budget in the wasmtime tier: the plugin's own CPU time, with a
wall-clock cap, the same meaning as in the micro-VM tier (vmm/microvm/watchdog.py).

The plugin's CPU time is that of the thread running the hook, less the
garbage collector's passes on that thread (gc.callbacks, timed per thread):
a pass can start at any allocation, in our own lowering code or a host call,
and took 36-80 ms of CPU under load; charged to the plugin, one failed a
trivial hook as over its 50 ms budget. Host calls are charged in full, less
passes (payloads are capped, so honest ones take microseconds): a plugin
spinning on them pays for it. No per-call cap as in the micro-VM: a host call
here can run plugin code (kv.get lowers its value with the plugin's
cabi_realloc), which a cap would let a plugin pass off as host time.

The engine's epoch ticks on wall time (_engine.py). Each hook call starts with
its deadline at its budget in ticks; when the deadline comes, wasmtime calls
`_on_deadline` on the thread running the plugin. If that thread has CPU time
left in the budget and the wall cap (WALL_FACTOR x the budget, at least
MIN_WALL_S) is not reached, the deadline moves on by what is left: a call
starved of a core or of the GIL is not killed for it. Otherwise the call
traps and its context records BudgetExceeded, which classification reads.
A collector pass runs no wasm, so a looping plugin still reaches its budget
by its own CPU, or the wall cap if passes were all the thread did.

wasmtime-py exposes no deadline callback, so this uses the C API it binds
(`wasmtime_store_epoch_deadline_callback`) directly; the callback is a ctypes
function, which takes the GIL only when a deadline comes (a few times per
long call), never on the per-event path.
"""

from __future__ import annotations

import ctypes
import gc
import math
import threading
import time
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

from vmm.wasmtime_tier import _context
from vmm.wasmtime_tier._engine import TICK_SECONDS

__all__ = ["MIN_WALL_S", "WALL_FACTOR", "BudgetExceeded", "CallBudget", "install"]

WALL_FACTOR = 20
MIN_WALL_S = 2.0
_CONTINUE = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE


class BudgetExceeded(Exception):
    """The hook used its CPU budget (or ran into the wall-clock cap)."""


class _GcClock:
    """CPU time of the collector's passes on one thread (only ever grows: diff it)."""

    __slots__ = ("start", "total")

    def __init__(self) -> None:
        self.total = 0.0
        self.start = -1.0  # the thread's CPU clock at the running pass's start, or -1

    def now(self) -> float:
        """The total, a pass in progress included (read on its own thread)."""
        if self.start < 0:
            return self.total
        return self.total + max(time.thread_time() - self.start, 0.0)


_local = threading.local()


def _gc_clock() -> _GcClock:
    clock: _GcClock | None = getattr(_local, "gc", None)
    if clock is None:
        clock = _local.gc = _GcClock()
    return clock


def _gc_start(phase: str, _info: dict[str, int]) -> None:
    if phase == "start":
        _gc_clock().start = time.thread_time()


def _gc_stop(phase: str, _info: dict[str, int]) -> None:
    if phase == "stop":
        clock = _gc_clock()
        if clock.start >= 0:
            clock.total += max(time.thread_time() - clock.start, 0.0)
            clock.start = -1.0


# A pass runs the callbacks in list order at its start, then at its stop: first
# and last, so other callbacks' work (not the plugin's either) is inside.
gc.callbacks.insert(0, _gc_start)
gc.callbacks.append(_gc_stop)


class CallBudget:
    """One hook call's budget, started (and read) on the thread that runs it."""

    __slots__ = ("_gc", "budget", "cpu_start", "wall_limit")

    def __init__(self, budget_s: float) -> None:
        self.budget = budget_s
        self._gc = _gc_clock()
        self.cpu_start = self._own_cpu()
        self.wall_limit = time.monotonic() + max(budget_s * WALL_FACTOR, MIN_WALL_S)

    def _own_cpu(self) -> float:
        return time.thread_time() - self._gc.now()

    def used(self) -> float:
        """CPU charged to the call so far: its thread's, less collector passes."""
        return self._own_cpu() - self.cpu_start

    def ticks_left(self) -> int:
        """Ticks to wait before looking again, or 0 when the budget is spent."""
        cpu_left = self.budget - self.used()
        wall_left = self.wall_limit - time.monotonic()
        if cpu_left <= 0 or wall_left <= 0:
            return 0
        return max(1, math.ceil(min(cpu_left, wall_left) / TICK_SECONDS))

    def why(self) -> str:
        """Why ticks_left() said 0: the CPU budget, or else the wall-clock cap."""
        if self.used() >= self.budget:
            return f"CPU budget of {self.budget * 1000:.0f} ms exhausted"
        return f"wall-clock cap of the {self.budget * 1000:.0f} ms CPU budget reached"


_DeadlineFn = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
)
_FinalizerFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _trap(message: bytes) -> int:
    error = ffi.wasmtime_error_new(ctypes.create_string_buffer(message))
    return ctypes.cast(error, ctypes.c_void_p).value or 0


@_DeadlineFn  # type: ignore[untyped-decorator]
def _on_deadline(_store: Any, _data: Any, delta: Any, kind: Any) -> int:
    # Runs inside wasm, on the plugin's thread: never raise out of here.
    try:
        call = _context.current_or_none()
        budget = call.budget if call is not None else None
        if budget is None:
            return _trap(b"lightcell: budget exhausted")  # a call outside _guest_call: wall ticks only
        ticks = budget.ticks_left()
        if ticks > 0:
            delta[0] = ticks
            kind[0] = _CONTINUE
            return 0
        assert call is not None
        call.record(BudgetExceeded(budget.why()))
        return _trap(b"lightcell: budget exhausted")
    except BaseException:  # a trap is the safe answer to anything unexpected
        return _trap(b"lightcell: budget check failed")


@_FinalizerFn  # type: ignore[untyped-decorator]
def _no_finalizer(_data: Any) -> None:
    return None


def install(store: wasmtime.Store) -> None:
    """Make `store`'s epoch deadlines ask the running call's CallBudget."""
    ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), _on_deadline, None, _no_finalizer)
