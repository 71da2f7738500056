"""The per-event budget in the wasmtime tier: CPU time of the thread that runs
the hook, with a wall-clock cap, the same meaning as in the micro-VM tier
(vmm/microvm/watchdog.py).

The engine's epoch ticks on wall time (_engine.py). Each hook call starts with
its deadline at its budget in ticks; when the deadline comes, wasmtime calls
`_on_deadline` on the thread running the plugin. If that thread has CPU time
left in the budget and the wall cap (WALL_FACTOR x the budget, at least
MIN_WALL_S) is not reached, the deadline moves on by what is left: a call
starved of a core or of the GIL is not killed for it. Otherwise the call
traps and its context records BudgetExceeded, which classification reads.

wasmtime-py exposes no deadline callback, so this uses the C API it binds
(`wasmtime_store_epoch_deadline_callback`) directly; the callback is a ctypes
function, which takes the GIL only when a deadline comes (a few times per
long call), never on the per-event path.
"""

from __future__ import annotations

import ctypes
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


class CallBudget:
    """One hook call's budget, started on the thread that runs it."""

    __slots__ = ("budget", "clock", "cpu_start", "wall_limit")

    def __init__(self, budget_s: float) -> None:
        self.budget = budget_s
        self.clock = time.pthread_getcpuclockid(threading.get_ident())
        self.cpu_start = time.clock_gettime(self.clock)
        self.wall_limit = time.monotonic() + max(budget_s * WALL_FACTOR, MIN_WALL_S)

    def ticks_left(self) -> int:
        """Ticks to wait before looking again, or 0 when the budget is spent."""
        cpu_left = self.budget - (time.clock_gettime(self.clock) - self.cpu_start)
        wall_left = self.wall_limit - time.monotonic()
        if cpu_left <= 0 or wall_left <= 0:
            return 0
        return max(1, math.ceil(min(cpu_left, wall_left) / TICK_SECONDS))


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
        call.record(BudgetExceeded(f"CPU budget of {budget.budget * 1000:.0f} ms exhausted"))
        return _trap(b"lightcell: budget exhausted")
    except BaseException:  # a trap is the safe answer to anything unexpected
        return _trap(b"lightcell: budget check failed")


@_FinalizerFn  # type: ignore[untyped-decorator]
def _no_finalizer(_data: Any) -> None:
    return None


def install(store: wasmtime.Store) -> None:
    """Make `store`'s epoch deadlines ask the running call's CallBudget."""
    ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), _on_deadline, None, _no_finalizer)
