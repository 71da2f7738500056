"""Calling a core export without wasmtime-py's per-call type lookup.

wasmtime.Func.__call__ asks wasmtime for the function's type and converts
every argument through Val on each call: ~90 µs per call here, against ~4 µs
for the underlying wasmtime_func_call (measured by the tier's benchmark
script; a hook makes 3-4 such calls per event). The signatures were checked
against the contract at load time (vmm.wasm_module.check_contract), so
RawFunc fills the C argument array directly. Errors and traps are raised
exactly as wasmtime-py does (including re-raising a host function's Python
exception), so nothing about isolation or classification changes.
"""

from __future__ import annotations

import ctypes

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime._func import maybe_raise_last_exn
from wasmtime._store import Storelike

__all__ = ["RawFunc"]

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
        if error:
            err = wasmtime.WasmtimeError._from_ptr(error)
            maybe_raise_last_exn()
            raise err
        if trap:
            trap_obj = wasmtime.Trap._from_ptr(trap)
            maybe_raise_last_exn()
            raise trap_obj
        if not self._nresults:
            return None
        return int(results[0].of.i64 if self._result_i64 else results[0].of.i32)
