"""Calling a core export without wasmtime-py's per-call type lookup.

wasmtime.Func.__call__ asks wasmtime for the function's type and converts
every argument through Val on each call: ~90 µs per call here, against ~4 µs
for the underlying wasmtime_func_call (measured by the tier's benchmark
script; a hook makes 3-4 such calls per event). The signatures were checked
against the contract at load time (vmm.wasm_module.check_contract), so
RawFunc fills the C argument array directly.

A failed call raises the trap or error wasmtime returned for *this* call,
never the Python exception wasmtime-py keeps in its process-global slot
(`wasmtime._func.LAST_EXCEPTION`, `wasmtime.component._enter.LAST_EXCEPTION`):
a host function on another thread may have put its own exception there
between this call's trap and its return, and wasmtime-py's own wrappers would
raise that one instead. Why a host function trapped this call is on the
call's own context (_context.CallContext.error, see _faults.py); the slot is
only emptied (forget_host_exception), so it keeps no sandbox's objects alive.
Every path that runs plugin code goes through here or _component_bytes.py
for that reason (`instantiate` too: a start function or _initialize may trap).
"""

from __future__ import annotations

import ctypes
from typing import Any, NoReturn

import wasmtime
import wasmtime._func
import wasmtime.component._enter
from wasmtime import _ffi as ffi
from wasmtime._store import Storelike

__all__ = ["RawFunc", "forget_host_exception", "instantiate", "raise_failure"]

_KIND = {"i32": ffi.WASMTIME_I32, "i64": ffi.WASMTIME_I64}


class RawFunc:
    __slots__ = ("_func", "_kinds", "_nresults", "_result_i64")

    def __init__(self, func: wasmtime.Func, params: tuple[str, ...], results: tuple[str, ...]) -> None:
        if any(t not in _KIND for t in params + results) or len(results) > 1:
            raise ValueError(
                f"RawFunc supports i32/i64 params and at most one result, not {params} -> {results}"
            )
        self._func = func
        self._kinds = tuple(_KIND[t] for t in params)
        self._nresults = len(results)
        self._result_i64 = bool(results) and results[0] == "i64"

    def __call__(self, store: Storelike, *args: int) -> int | None:
        n = len(self._kinds)
        if len(args) != n:
            raise TypeError(f"expected {n} arguments, got {len(args)}")
        params = (ffi.wasmtime_val_t * n)()
        for i, (kind, value) in enumerate(zip(self._kinds, args, strict=True)):
            params[i].kind = kind
            if kind == ffi.WASMTIME_I32:
                params[i].of.i32 = value
            else:
                params[i].of.i64 = value
        results = (ffi.wasmtime_val_t * self._nresults)()
        trap = ctypes.POINTER(ffi.wasm_trap_t)()
        error = ffi.wasmtime_func_call(
            store._context(),
            ctypes.byref(self._func._func),
            params,
            n,
            results,
            self._nresults,
            ctypes.byref(trap),
        )
        if error or trap:
            raise_failure(error, trap)
        if not self._nresults:
            return None
        return int(results[0].of.i64 if self._result_i64 else results[0].of.i32)


def forget_host_exception() -> None:
    """Empty wasmtime-py's global slots for a host function's exception.

    Never read here: whichever thread's exception is in them, the call that
    failed knows its own cause from its CallContext."""
    wasmtime._func.LAST_EXCEPTION = None
    wasmtime.component._enter.LAST_EXCEPTION = None


def raise_failure(error: Any, trap: Any = None) -> NoReturn:
    """Raise this call's own WasmtimeError (or Trap) from wasmtime's pointers."""
    forget_host_exception()
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    raise wasmtime.Trap._from_ptr(trap)


def instantiate(pre: wasmtime.InstancePre, store: Storelike) -> wasmtime.Instance:
    """pre.instantiate(store), failing with this call's own trap or error."""
    instance = ffi.wasmtime_instance_t()
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    error = ffi.wasmtime_instance_pre_instantiate(
        pre.ptr(), store._context(), ctypes.byref(instance), ctypes.byref(trap)
    )
    if error or trap:
        raise_failure(error, trap)
    return wasmtime.Instance._from_raw(instance)
