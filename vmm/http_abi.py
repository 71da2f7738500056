"""The http-filter world's canonical-ABI data, in Python: lowering header and
attribute lists into a plugin's memory, and lifting a hook's decision from
its return area. A reference for the tiers, written from (and tested
against) plugins/wit/README.md, "Core-module view of http-filter".

Lifting checks what the README says a host must check, and raises
PluginFault(FaultKind.ABI) on a violation: return-area and array alignment,
bounds (with overflow) of every pointer against the memory size, UTF-8 of
names, the discriminants, the immediate-response status range and the
output cap (MAX_OUTPUT_BYTES over the body bytes, checked before copying).
What the host checks for Envoy's sake (CR/LF/NUL, pseudo- and hop-by-hop
headers) belongs to the HTTP adapter, not here.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from vmm.contract import (
    DECISION_AREA_ALIGN,
    DECISION_AREA_SIZE,
    DECISION_MODIFY_APPEND,
    DECISION_MODIFY_BODY,
    DECISION_MODIFY_BODY_TAG,
    DECISION_MODIFY_REMOVE,
    DECISION_MODIFY_SET,
    DECISION_RESPOND_BODY,
    DECISION_RESPOND_HEADERS,
    DECISION_RESPOND_STATUS,
    HEADER_ALIGN,
    HEADER_SIZE,
    IMMEDIATE_STATUS_MAX,
    IMMEDIATE_STATUS_MIN,
    MAX_OUTPUT_BYTES,
    STRING_SIZE,
    DecisionKind,
    output_too_large,
)
from vmm.sandbox import FaultKind, PluginFault

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Header:
    name: str
    value: bytes


@dataclass(frozen=True, slots=True)
class HeaderMutation:
    """Applied as if in the order remove, set, append."""

    set: tuple[Header, ...] = ()
    append: tuple[Header, ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.append or self.remove)


@dataclass(frozen=True, slots=True)
class HttpDecision:
    """What an http-filter hook decided."""

    kind: DecisionKind
    headers: HeaderMutation = field(default_factory=HeaderMutation)
    """MODIFY: the header changes."""
    body: bytes | None = None
    """MODIFY: the replacement body (None: unchanged); RESPOND: the response body."""
    status: int = 0
    """RESPOND only."""
    response_headers: tuple[Header, ...] = ()
    """RESPOND only."""
    metadata: Mapping[str, str] = field(default_factory=lambda: _NO_METADATA)
    """Dynamic metadata the plugin set during this hook (and a deferred
    on-open), attached by the tier as vmm.contract.Verdict's."""

    def with_metadata(self, metadata: Mapping[str, str]) -> HttpDecision:
        """This decision carrying `metadata` (itself when there is none)."""
        return dataclasses.replace(self, metadata=MappingProxyType(dict(metadata))) if metadata else self


_NO_METADATA: Mapping[str, str] = MappingProxyType({})  # shared, read-only


def _abi(message: str) -> PluginFault:
    return PluginFault(FaultKind.ABI, message)


MAX_DECISION_HEADERS = 1024
"""Most entries one header list (set, append, remove, an answer's headers) may have."""
MAX_DECISION_HEADER_BYTES = 256 * 1024
"""Most name and value bytes all of one decision's header lists may hold together.
Charged before each copy: every entry may point at the same large region, so
without it a small plugin could make the host copy its memory many times over.
(The session's own, smaller limit applies afterwards, to what Envoy will get.)"""


class _Mem:
    def __init__(self, memory: Buffer) -> None:
        self.view = memoryview(memory).cast("B")
        self.size = len(self.view)
        self.header_bytes_left = MAX_DECISION_HEADER_BYTES

    def charge(self, length: int, what: str) -> None:
        if length > self.header_bytes_left:
            raise _abi(f"{what}: the decision's headers exceed {MAX_DECISION_HEADER_BYTES} bytes")
        self.header_bytes_left -= length

    def span(self, ptr: int, length: int, what: str) -> tuple[int, int]:
        if ptr < 0 or length < 0 or ptr + length > self.size:
            raise _abi(f"{what} at {ptr:#x}+{length} is outside the plugin's memory ({self.size} bytes)")
        return ptr, ptr + length

    def u8(self, at: int) -> int:
        return self.view[at]

    def u16(self, at: int) -> int:
        return int(struct.unpack_from("<H", self.view, at)[0])

    def u32(self, at: int) -> int:
        return int(struct.unpack_from("<I", self.view, at)[0])

    def bytes_(self, ptr: int, length: int, what: str) -> bytes:
        start, end = self.span(ptr, length, what)
        return bytes(self.view[start:end])

    def string(self, ptr: int, length: int, what: str) -> str:
        raw = self.bytes_(ptr, length, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _abi(f"{what} is not UTF-8") from None

    def array(self, ptr: int, count: int, elem: int, what: str) -> int:
        if count > MAX_DECISION_HEADERS:
            raise _abi(f"{what}: {count} entries, more than {MAX_DECISION_HEADERS}")
        if ptr % HEADER_ALIGN:
            raise _abi(f"{what} array at {ptr:#x} is not aligned to {HEADER_ALIGN}")
        self.span(ptr, count * elem, what)
        return ptr

    def headers(self, ptr: int, count: int, what: str) -> tuple[Header, ...]:
        base = self.array(ptr, count, HEADER_SIZE, what)
        out = []
        for i in range(count):
            at = base + HEADER_SIZE * i
            name_len, value_len = self.u32(at + 4), self.u32(at + 12)
            self.charge(name_len + value_len, f"{what}[{i}]")
            name = self.string(self.u32(at), name_len, f"{what}[{i}] name")
            value = self.bytes_(self.u32(at + 8), value_len, f"{what}[{i}] value")
            out.append(Header(name, value))
        return tuple(out)

    def strings(self, ptr: int, count: int, what: str) -> tuple[str, ...]:
        base = self.array(ptr, count, STRING_SIZE, what)
        out = []
        for i in range(count):
            at = base + STRING_SIZE * i
            length = self.u32(at + 4)
            self.charge(length, f"{what}[{i}]")
            out.append(self.string(self.u32(at), length, f"{what}[{i}]"))
        return tuple(out)

    def body(self, ptr: int, length: int, what: str) -> bytes:
        if length > MAX_OUTPUT_BYTES:
            raise _abi(output_too_large(length))
        return self.bytes_(ptr, length, what)


def lift_decision(memory: Buffer, retptr: int) -> HttpDecision:
    """The decision a hook returned, read from its 40-byte return area at
    `retptr` in `memory` (the plugin's whole linear memory, or a view of it)."""
    m = _Mem(memory)
    if retptr % DECISION_AREA_ALIGN:
        raise _abi(f"decision return area at {retptr:#x} is not aligned to {DECISION_AREA_ALIGN}")
    m.span(retptr, DECISION_AREA_SIZE, "decision return area")
    tag = m.u8(retptr)
    if tag == DecisionKind.CONTINUE:
        return HttpDecision(DecisionKind.CONTINUE)
    if tag == DecisionKind.MODIFY:
        a = retptr
        mutation = HeaderMutation(
            set=m.headers(m.u32(a + DECISION_MODIFY_SET), m.u32(a + DECISION_MODIFY_SET + 4), "set"),
            append=m.headers(
                m.u32(a + DECISION_MODIFY_APPEND), m.u32(a + DECISION_MODIFY_APPEND + 4), "append"
            ),
            remove=m.strings(
                m.u32(a + DECISION_MODIFY_REMOVE), m.u32(a + DECISION_MODIFY_REMOVE + 4), "remove"
            ),
        )
        body_tag = m.u8(a + DECISION_MODIFY_BODY_TAG)
        if body_tag > 1:
            raise _abi(f"body option tag {body_tag} (0 none, 1 some)")
        body = None
        if body_tag == 1:
            body = m.body(m.u32(a + DECISION_MODIFY_BODY), m.u32(a + DECISION_MODIFY_BODY + 4), "body")
        return HttpDecision(DecisionKind.MODIFY, headers=mutation, body=body)
    if tag == DecisionKind.RESPOND:
        a = retptr
        status = m.u16(a + DECISION_RESPOND_STATUS)
        if not IMMEDIATE_STATUS_MIN <= status <= IMMEDIATE_STATUS_MAX:
            low, high = IMMEDIATE_STATUS_MIN, IMMEDIATE_STATUS_MAX
            raise _abi(f"immediate response status {status} is outside {low}..{high}")
        body = m.body(m.u32(a + DECISION_RESPOND_BODY), m.u32(a + DECISION_RESPOND_BODY + 4), "response body")
        headers = m.headers(
            m.u32(a + DECISION_RESPOND_HEADERS), m.u32(a + DECISION_RESPOND_HEADERS + 4), "response headers"
        )
        return HttpDecision(DecisionKind.RESPOND, body=body, status=status, response_headers=headers)
    raise _abi(f"decision tag {tag} (0 continue, 1 modify, 2 respond)")


Realloc = Callable[[int, int], int]
"""(align, size) -> pointer: the plugin's cabi_realloc(0, 0, align, size)."""
Write = Callable[[int, bytes], None]
"""(pointer, data): write into the plugin's memory."""


def lower_pairs(pairs: Sequence[tuple[bytes, bytes]], realloc: Realloc, write: Write) -> tuple[int, int]:
    """Place a list<header> (or list<attribute>: UTF-8 values) in the
    plugin's memory as the README says: the 16-byte-per-element array first
    (align 4), then each name and value (align 1), element by element.
    Returns the core arguments (array pointer, count)."""
    if not pairs:
        return 0, 0
    array = realloc(HEADER_ALIGN, HEADER_SIZE * len(pairs))
    entries = bytearray()
    for name, value in pairs:
        parts = []
        for data in (name, value):
            ptr = realloc(1, len(data)) if data else 0
            if data:
                write(ptr, data)
            parts += [ptr, len(data)]
        entries += struct.pack("<IIII", *parts)
    write(array, bytes(entries))
    return array, len(pairs)


def lower_headers(headers: Sequence[Header], realloc: Realloc, write: Write) -> tuple[int, int]:
    return lower_pairs([(h.name.encode(), h.value) for h in headers], realloc, write)


def lower_attributes(
    attributes: Sequence[tuple[str, str]], realloc: Realloc, write: Write
) -> tuple[int, int]:
    return lower_pairs([(n.encode(), v.encode()) for n, v in attributes], realloc, write)
