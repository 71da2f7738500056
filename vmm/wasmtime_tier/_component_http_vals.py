"""The http-filter world's values on the component path, built and read as
wasmtime C values directly (no per-element conversion through Python).

Arguments: list<header> / list<attribute> (records of a string and a
list<u8> or string) are built element by element, every header value with
_component_bytes' strided copy. Every value is zeroed (a valid `false`)
before it is filled and owned by its parent as soon as it exists, so
freeing the top-level argument frees all of it, whatever failed midway.

Results: a decision is read with the same checks as the core path
(vmm.http_abi.lift_decision): at most MAX_DECISION_HEADERS entries per
header list and MAX_DECISION_HEADER_BYTES of names and values in all of a
decision's header lists (charged by each entry's lengths before it is
read), bodies over MAX_OUTPUT_BYTES refused by their length before a byte
is read, the immediate-response status in 200..=599; a body replacement
outside a body hook is refused by the caller. A value of an unexpected
shape (wasmtime type-checks the export's result, so only a bug could make
one) is an AbiViolation too. wasmtime has already lifted all of it out of
the component's memory by then (see THREAT_MODEL: the component path's
decisions are bounded by the component's memory cap only while lifting).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

from wasmtime import _ffi as ffi

from vmm.contract import IMMEDIATE_STATUS_MAX, IMMEDIATE_STATUS_MIN, DecisionKind, HttpPhase
from vmm.http_abi import MAX_DECISION_HEADER_BYTES, MAX_DECISION_HEADERS, Header, HeaderMutation, HttpDecision
from vmm.wasmtime_tier._component_bytes import (
    BYTE_VEC_NEW,
    OF,
    VALLIST_NEW_UNINIT,
    VEC_DATA,
    Lower,
    c_function,
    lift_bytes,
    lower_bytes_at,
    pointer_at,
    set_kind,
)
from vmm.wasmtime_tier._faults import AbiViolation

__all__ = ["lift_decision", "lift_phases", "lower_attributes", "lower_headers"]

_VAL = ffi.wasmtime_component_val_t
_SIZE = ctypes.sizeof(_VAL)
_ENTRY_SIZE = ctypes.sizeof(ffi.wasmtime_component_valrecord_entry)
_KIND = {
    name: getattr(ffi, f"WASMTIME_COMPONENT_{name}").value
    for name in ("LIST", "RECORD", "STRING", "OPTION", "VARIANT", "FLAGS", "U16")
}
_PHASE_NAMES = {p.name.lower().replace("_", "-"): p for p in HttpPhase if p.name is not None}
_CONTINUE = HttpDecision(DecisionKind.CONTINUE)


# --- lowering ---------------------------------------------------------------------


_RECORD_NEW_UNINIT = c_function("wasmtime_component_valrecord_new_uninit", ctypes.c_void_p, ctypes.c_size_t)
_ENTRY_NAME = ffi.wasmtime_component_valrecord_entry.name.offset
_ENTRY_VAL = ffi.wasmtime_component_valrecord_entry.val.offset


def _string_at(addr: int, text: bytes) -> None:
    BYTE_VEC_NEW(addr + OF, len(text), text)
    set_kind(addr, _KIND["STRING"])


def _field_at(entry: int, name: bytes) -> int:
    """Name the (zeroed) record entry at `entry`; returns the address of its value."""
    BYTE_VEC_NEW(entry + _ENTRY_NAME, len(name), name)
    return entry + _ENTRY_VAL


def _pairs(pairs: Sequence[tuple[bytes, bytes]], value_is_string: bool) -> Lower:
    """list<record { name: string, value: list<u8> or string }>, written in place
    with one C call per allocation (wasmtime's own, so wasmtime frees them)."""

    def lower(out: _VAL) -> None:
        n = len(pairs)
        addr = ctypes.addressof(out)
        VALLIST_NEW_UNINIT(addr + OF, n)
        items = pointer_at(addr + OF + VEC_DATA)
        if n:
            ctypes.memset(items, 0, _SIZE * n)  # every element a valid `false` until filled
        set_kind(addr, _KIND["LIST"])  # owned by `out` from here on
        for i, (name, value) in enumerate(pairs):
            element = items + _SIZE * i
            _RECORD_NEW_UNINIT(element + OF, 2)
            entries = pointer_at(element + OF + VEC_DATA)
            ctypes.memset(entries, 0, _ENTRY_SIZE * 2)
            set_kind(element, _KIND["RECORD"])  # owned by the list from here on
            _string_at(_field_at(entries, b"name"), name)
            value_at = _field_at(entries + _ENTRY_SIZE, b"value")
            if value_is_string:
                _string_at(value_at, value)
            else:
                lower_bytes_at(value_at, value)

    return lower


def lower_headers(headers: Sequence[Header]) -> Lower:
    return _pairs([(h.name.encode(), h.value) for h in headers], value_is_string=False)


def lower_attributes(attributes: Sequence[tuple[str, str]]) -> Lower:
    return _pairs([(n.encode(), v.encode()) for n, v in attributes], value_is_string=True)


# --- lifting ----------------------------------------------------------------------


def _raw(vec: ffi.wasm_byte_vec_t) -> bytes:
    return ctypes.string_at(vec.data, vec.size) if vec.size else b""  # an empty one may have no data


def _fields(val: _VAL, names: tuple[str, ...], what: str) -> list[_VAL]:
    if val.kind != _KIND["RECORD"] or val.of.record.size != len(names):
        raise AbiViolation(f"{what} is not a record of {', '.join(names)}")
    entries = val.of.record.data
    out = []
    for i, name in enumerate(names):
        if _raw(entries[i].name) != name.encode():
            raise AbiViolation(f"{what}: field {i} is not {name!r}")
        out.append(entries[i].val)
    return out


def _text(val: _VAL, what: str) -> str:
    if val.kind != _KIND["STRING"]:
        raise AbiViolation(f"{what} is not a string")
    try:
        return _raw(val.of.string).decode("utf-8")
    except UnicodeDecodeError:
        raise AbiViolation(f"{what} is not UTF-8") from None


def _list(val: _VAL, what: str) -> list[_VAL]:
    if val.kind != _KIND["LIST"]:
        raise AbiViolation(f"{what} is not a list")
    n = val.of.list.size
    if n > MAX_DECISION_HEADERS:
        raise AbiViolation(f"{what}: {n} entries, more than {MAX_DECISION_HEADERS}")
    return [val.of.list.data[i] for i in range(n)]


class _Budget:
    """MAX_DECISION_HEADER_BYTES over one decision's header lists."""

    def __init__(self) -> None:
        self.left = MAX_DECISION_HEADER_BYTES

    def charge(self, length: int, what: str) -> None:
        if length > self.left:
            raise AbiViolation(f"{what}: the decision's headers exceed {MAX_DECISION_HEADER_BYTES} bytes")
        self.left -= length

    def headers(self, val: _VAL, what: str) -> tuple[Header, ...]:
        out = []
        for i, item in enumerate(_list(val, what)):
            name, value = _fields(item, ("name", "value"), f"{what}[{i}]")
            if name.kind != _KIND["STRING"] or value.kind != _KIND["LIST"]:
                raise AbiViolation(f"{what}[{i}] is not a header")
            self.charge(name.of.string.size + value.of.list.size, f"{what}[{i}]")
            out.append(Header(_text(name, f"{what}[{i}] name"), lift_bytes(value, f"{what}[{i}] value")))
        return tuple(out)

    def strings(self, val: _VAL, what: str) -> tuple[str, ...]:
        out = []
        for i, item in enumerate(_list(val, what)):
            if item.kind != _KIND["STRING"]:
                raise AbiViolation(f"{what}[{i}] is not a string")
            self.charge(item.of.string.size, f"{what}[{i}]")
            out.append(_text(item, f"{what}[{i}]"))
        return tuple(out)


def lift_decision(result: _VAL) -> HttpDecision:
    """The decision a hook returned (the caller frees `result`)."""
    if result.kind != _KIND["VARIANT"]:
        raise AbiViolation("the hook did not return a decision")
    case = _raw(result.of.variant.discriminant)
    payload = result.of.variant.val
    budget = _Budget()
    if case == b"continue":
        return _CONTINUE
    if case == b"modify" and payload:
        headers, body = _fields(payload.contents, ("headers", "body"), "changes")
        set_, append, remove = _fields(headers, ("set", "append", "remove"), "header-mutation")
        mutation = HeaderMutation(
            set=budget.headers(set_, "set"),
            append=budget.headers(append, "append"),
            remove=budget.strings(remove, "remove"),
        )
        if body.kind != _KIND["OPTION"]:
            raise AbiViolation("changes.body is not an option")
        replacement = lift_bytes(body.of.option.contents, "body") if body.of.option else None
        return HttpDecision(DecisionKind.MODIFY, headers=mutation, body=replacement)
    if case == b"respond" and payload:
        status, headers, body = _fields(payload.contents, ("status", "headers", "body"), "immediate-response")
        if status.kind != _KIND["U16"]:
            raise AbiViolation("immediate-response.status is not a u16")
        code = int(status.of.u16)
        if not IMMEDIATE_STATUS_MIN <= code <= IMMEDIATE_STATUS_MAX:
            low, high = IMMEDIATE_STATUS_MIN, IMMEDIATE_STATUS_MAX
            raise AbiViolation(f"immediate response status {code} is outside {low}..{high}")
        return HttpDecision(
            DecisionKind.RESPOND,
            body=lift_bytes(body, "response body"),
            status=code,
            response_headers=budget.headers(headers, "response headers"),
        )
    raise AbiViolation(f"decision case {case!r} (continue, modify, respond)")


def lift_phases(result: _VAL) -> HttpPhase:
    """wanted-phases' flags."""
    if result.kind != _KIND["FLAGS"]:
        raise AbiViolation("wanted-phases did not return flags")
    phases = HttpPhase(0)
    for i in range(result.of.flags.size):
        name = _raw(result.of.flags.data[i]).decode("utf-8", "replace")
        phase = _PHASE_NAMES.get(name)
        if phase is None:
            raise AbiViolation(f"wanted-phases returned an unknown phase {name!r}")
        phases |= phase
    return phases
