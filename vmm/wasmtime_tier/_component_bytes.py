"""Fast list<u8> for the component path's on-data call (and nothing else).

wasmtime-py converts a list<u8> one element at a time through Python
(ListType.convert_to_c / convert_from_c): ~2 ms for 1 KiB, ~120 ms for
64 KiB. The C API represents that list as an array of
wasmtime_component_val_t, each a one-byte kind tag plus a union; for u8
elements only two bytes of each differ. So the array is built, and read
back, with two strided slice copies over a bytearray instead of a Python
loop per byte.

Why this is safe: the layout comes from wasmtime-py's own ctypes structures
(sizeof and field offsets, not hard-coded numbers); every element is fully
written (kind U8, payload byte, the rest zero) before wasmtime sees the
array; the result is read only after checking its kinds (variant; payload a
list whose elements are all U8) and is freed with wasmtime_component_val_delete
exactly once. wasmtime still type-checks the arguments against the
function's signature inside wasmtime_component_func_call, so a plugin whose
on-data has another signature gets an error, not a misread. A failed call
raises its own WasmtimeError, never wasmtime-py's process-global host
exception (see _fastcall.py); `call` and `post_return` do the same for the
other hooks, with wasmtime-py's generic value conversion. A payload over
MAX_OUTPUT_BYTES is refused (AbiViolation) by its length, before any of it is
read (wasmtime itself has lifted it already, within the component's memory cap).
"""

from __future__ import annotations

import ctypes
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime._store import Storelike
from wasmtime.component import Func

from vmm.contract import MAX_OUTPUT_BYTES, output_too_large
from vmm.wasmtime_tier._fastcall import raise_failure
from vmm.wasmtime_tier._faults import AbiViolation

__all__ = ["call", "call_on_data", "post_return"]

_VAL = ffi.wasmtime_component_val_t
_SIZE = ctypes.sizeof(_VAL)
_PAYLOAD = _VAL.of.offset  # the union; its u8 member sits at offset 0
_KIND_U8 = ffi.WASMTIME_COMPONENT_U8.value
_KIND_LIST = ffi.WASMTIME_COMPONENT_LIST.value
_KIND_VARIANT = ffi.WASMTIME_COMPONENT_VARIANT.value
assert _VAL.kind.offset == 0 and _VAL.kind.size == 1  # the kind tag: one byte at offset 0


def _lower_bytes(data: bytes, out: _VAL) -> None:
    n = len(data)
    raw = ffi.wasmtime_component_vallist_t()
    ffi.wasmtime_component_vallist_new_uninit(ctypes.byref(raw), n)
    if n:
        image = bytearray(_SIZE * n)
        image[0::_SIZE] = bytes((_KIND_U8,)) * n
        image[_PAYLOAD::_SIZE] = data
        ctypes.memmove(raw.data, (ctypes.c_char * len(image)).from_buffer(image), len(image))
    out.kind = ffi.WASMTIME_COMPONENT_LIST
    out.of.list = raw


def _lift_bytes(val: _VAL) -> bytes:
    if val.kind != _KIND_LIST:
        raise wasmtime.WasmtimeError("verdict payload is not a list")
    n = val.of.list.size
    if n > MAX_OUTPUT_BYTES:  # before reading _SIZE * n bytes of values
        raise AbiViolation(output_too_large(n))
    if not n:
        return b""
    image = ctypes.string_at(val.of.list.data, _SIZE * n)
    if image[0::_SIZE] != bytes((_KIND_U8,)) * n:
        raise wasmtime.WasmtimeError("verdict payload is not a list<u8>")
    return image[_PAYLOAD::_SIZE]


def call_on_data(
    func: Func, store: Storelike, direction: str, data: bytes, eos: bool
) -> tuple[str, bytes | None]:
    """Call on-data(direction, list<u8>, bool) -> verdict; returns (case, payload)."""
    params = (_VAL * 3)()
    lowered = 0
    result = _VAL()
    try:
        params[0].kind = ffi.WASMTIME_COMPONENT_ENUM
        params[0].of.enumeration = ffi.str_to_capi(direction)
        lowered = 1
        _lower_bytes(data, params[1])
        lowered = 2
        params[2].kind = ffi.WASMTIME_COMPONENT_BOOL
        params[2].of.boolean = eos
        lowered = 3
        error = ffi.wasmtime_component_func_call(
            ctypes.byref(func._func), store._context(), params, 3, ctypes.byref(result), 1
        )
        if error:
            raise_failure(error)
        try:
            if result.kind != _KIND_VARIANT:
                raise wasmtime.WasmtimeError("on-data did not return a variant")
            case = ffi.to_str(result.of.variant.discriminant)
            payload = result.of.variant.val
            return case, (_lift_bytes(payload.contents) if payload else None)
        finally:
            ffi.wasmtime_component_val_delete(ctypes.byref(result))
    finally:
        for i in range(lowered):
            ffi.wasmtime_component_val_delete(ctypes.byref(params[i]))


def call(func: Func, store: Storelike, *params: Any) -> None:
    """func(store, *params) for a function returning nothing (on-open, on-close),
    converting the arguments as wasmtime-py's Func.__call__ does and failing
    with this call's own error."""
    fty = func.type(store)
    if fty.result is not None or len(params) != len(fty.params):
        raise wasmtime.WasmtimeError(f"{len(params)} arguments and no result: not {fty}")
    args = (_VAL * len(params))()
    lowered = 0
    try:
        for (_name, ty), value in zip(fty.params, params, strict=True):
            ty.convert_to_c(store, value, ctypes.pointer(args[lowered]))
            lowered += 1
        error = ffi.wasmtime_component_func_call(
            ctypes.byref(func._func), store._context(), args, lowered, None, 0
        )
        if error:
            raise_failure(error)
    finally:
        for i in range(lowered):
            ffi.wasmtime_component_val_delete(ctypes.byref(args[i]))


def post_return(func: Func, store: Storelike) -> None:
    """func.post_return(store), failing with this call's own error."""
    error = ffi.wasmtime_component_func_post_return(ctypes.byref(func._func), store._context())
    if error:
        raise_failure(error)
