"""Fast list<u8> for the component path's data calls (on-data here; HTTP
bodies and header values through _component_http_vals.py).

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
read. wasmtime itself has lifted it already, bounded by its per-call "hostcall
fuel" (HOSTCALL_FUEL_EXHAUSTED, also an AbiViolation): so on the component
path a result (a verdict's or a decision's bytes, all lists together) is
refused at about 3 MiB, below MAX_OUTPUT_BYTES; aliased lists in a decision
cannot make the host copy more than that either.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime._store import Storelike
from wasmtime.component import Func

from vmm.contract import MAX_OUTPUT_BYTES, output_too_large
from vmm.wasmtime_tier._fastcall import raise_failure
from vmm.wasmtime_tier._faults import AbiViolation

__all__ = [
    "BYTE_VEC_NEW", "OF", "VALLIST_NEW_UNINIT", "VEC_DATA", "Lower", "c_function", "call", "call_lowered",
    "call_on_data", "lift_bytes", "lower_bool", "lower_bytes", "lower_bytes_at", "lower_enum", "pointer_at",
    "post_return", "set_kind",
]

_VAL = ffi.wasmtime_component_val_t
_SIZE = ctypes.sizeof(_VAL)
_PAYLOAD = _VAL.of.offset  # the union; its u8 member sits at offset 0
_KIND_U8 = ffi.WASMTIME_COMPONENT_U8.value
_KIND_LIST = ffi.WASMTIME_COMPONENT_LIST.value
_KIND_VARIANT = ffi.WASMTIME_COMPONENT_VARIANT.value
assert _VAL.kind.offset == 0 and _VAL.kind.size == 1  # the kind tag: one byte at offset 0


Lower = Callable[[_VAL], None]
"""Fills one argument's value (a zeroed value: a valid `false` until then)."""
R = TypeVar("R")


def c_function(name: str, *argtypes: Any) -> Any:
    """A fresh ctypes handle on a wasmtime C function with our own argument types
    (addresses as integers, bytes passed without a copy); wasmtime-py's handle,
    and its argument types, stay as they are."""
    fn = ffi.dll[name]
    fn.argtypes = list(argtypes)
    fn.restype = None
    return fn


BYTE_VEC_NEW = c_function("wasm_byte_vec_new", ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
VALLIST_NEW_UNINIT = c_function("wasmtime_component_vallist_new_uninit", ctypes.c_void_p, ctypes.c_size_t)
OF = _PAYLOAD  # a value's payload (the union), from its start


def _offset(struct: Any, field: str) -> int:
    return int(getattr(struct, field).offset)


VEC_DATA = _offset(ffi.wasmtime_component_vallist_t, "data")
"""Where a list's data pointer sits; the same in a byte vector and a record (asserted)."""
assert VEC_DATA == _offset(ffi.wasm_byte_vec_t, "data") == _offset(ffi.wasmtime_component_valrecord_t, "data")


def pointer_at(addr: int) -> int:
    """The pointer stored at `addr` (host memory wasmtime just wrote)."""
    return ctypes.c_void_p.from_address(addr).value or 0


def set_kind(addr: int, kind: int) -> None:
    ctypes.c_uint8.from_address(addr).value = kind


def lower_bytes_at(addr: int, data: bytes) -> None:
    """Make the (zeroed) value at `addr` a list<u8> of `data`: two strided copies.
    The kind is set last, so until then the value is still a valid `false`."""
    n = len(data)
    VALLIST_NEW_UNINIT(addr + OF, n)
    if n:
        image = bytearray(_SIZE * n)
        image[0::_SIZE] = bytes((_KIND_U8,)) * n
        image[_PAYLOAD::_SIZE] = data
        source = (ctypes.c_char * len(image)).from_buffer(image)
        ctypes.memmove(pointer_at(addr + OF + VEC_DATA), source, len(image))
    set_kind(addr, _KIND_LIST)


def lower_bytes(data: bytes) -> Lower:
    """A list<u8> argument."""
    return lambda out: lower_bytes_at(ctypes.addressof(out), data)


def lower_bool(value: bool) -> Lower:
    def lower(out: _VAL) -> None:
        out.kind = ffi.WASMTIME_COMPONENT_BOOL
        out.of.boolean = value

    return lower


def lower_enum(case: str) -> Lower:
    def lower(out: _VAL) -> None:
        out.of.enumeration = ffi.str_to_capi(case)
        out.kind = ffi.WASMTIME_COMPONENT_ENUM

    return lower


def lift_bytes(val: _VAL, what: str = "payload") -> bytes:
    """A list<u8> value's bytes; over MAX_OUTPUT_BYTES is refused (AbiViolation)
    before any is read."""
    if val.kind != _KIND_LIST:
        raise AbiViolation(f"{what} is not a list")
    n = val.of.list.size
    if n > MAX_OUTPUT_BYTES:  # before reading _SIZE * n bytes of values
        raise AbiViolation(output_too_large(n))
    if not n:
        return b""
    image = ctypes.string_at(val.of.list.data, _SIZE * n)
    if image[0::_SIZE] != bytes((_KIND_U8,)) * n:
        raise AbiViolation(f"{what} is not a list<u8>")
    return image[_PAYLOAD::_SIZE]


def call_lowered(func: Func, store: Storelike, lowers: Sequence[Lower], lift: Callable[[_VAL], R]) -> R:
    """Call `func` with arguments built by `lowers`, its result read by `lift`
    (before the result is freed). wasmtime type-checks the arguments; every
    value is freed exactly once, whatever fails."""
    n = len(lowers)
    params = (_VAL * n)()  # zeroed: each a valid bool until lowered
    result = _VAL()
    try:
        for i, lower in enumerate(lowers):
            lower(params[i])
        error = ffi.wasmtime_component_func_call(
            ctypes.byref(func._func), store._context(), params, n, ctypes.byref(result), 1
        )
        if error:
            _raise_call_failure(error)
        try:
            return lift(result)
        finally:
            ffi.wasmtime_component_val_delete(ctypes.byref(result))
    finally:
        for i in range(n):
            ffi.wasmtime_component_val_delete(ctypes.byref(params[i]))


HOSTCALL_FUEL_EXHAUSTED = "fuel allocated for hostcalls has been exhausted"
"""wasmtime's own bound on the values one call copies between host and guest
(about 3 MiB of list<u8> in and out together, as generic values). Our
arguments stay far below it, so hitting it means the plugin's result was too large."""


def _raise_call_failure(error: Any) -> NoReturn:
    try:
        raise_failure(error)
    except wasmtime.WasmtimeError as e:
        if HOSTCALL_FUEL_EXHAUSTED in str(e):
            raise AbiViolation(f"the result is larger than wasmtime copies in one call ({e})") from e
        raise


def _lift_verdict(result: _VAL) -> tuple[str, bytes | None]:
    if result.kind != _KIND_VARIANT:
        raise wasmtime.WasmtimeError("on-data did not return a variant")
    case = ffi.to_str(result.of.variant.discriminant)
    payload = result.of.variant.val
    return case, (lift_bytes(payload.contents, "verdict payload") if payload else None)


def call_on_data(
    func: Func, store: Storelike, direction: str, data: bytes, eos: bool
) -> tuple[str, bytes | None]:
    """Call on-data(direction, list<u8>, bool) -> verdict; returns (case, payload)."""
    args = [lower_enum(direction), lower_bytes(data), lower_bool(eos)]
    return call_lowered(func, store, args, _lift_verdict)


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
