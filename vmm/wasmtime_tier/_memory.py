"""The one bounds-checked accessor for a sandbox's linear memory.

Every guest-supplied address goes through `GuestMemory.span`: guest values
arrive as (possibly negative) Python ints from i32 slots, are taken modulo
2**32, and `ptr + len` is checked against the current memory size with
Python's unbounded ints, so a wrapping ptr+len cannot pass. The base address
is re-read per accessor because memory.grow may move the memory.
"""

from __future__ import annotations

import ctypes
import struct

import wasmtime
from wasmtime._store import Storelike

from vmm.wasmtime_tier._faults import AbiViolation

__all__ = ["GuestMemory", "u32"]

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def u32(value: int) -> int:
    """A wasm i32 as the unsigned offset/length the canonical ABI means."""
    return value & 0xFFFFFFFF


class GuestMemory:
    __slots__ = ("_base", "_size")

    def __init__(self, memory: wasmtime.Memory, store: Storelike) -> None:
        self._size = memory.data_len(store)
        self._base = ctypes.addressof(memory.data_ptr(store).contents) if self._size else 0

    @property
    def size(self) -> int:
        return self._size

    def view(self) -> memoryview:
        """The whole linear memory as a zero-copy byte view, for readers that
        bounds-check against its length (vmm.http_abi.lift_decision). Valid only
        until plugin code runs again (memory.grow may move the memory): never
        keep it."""
        if not self._size:
            return memoryview(b"")
        return memoryview((ctypes.c_ubyte * self._size).from_address(self._base)).cast("B")

    def span(self, ptr: int, length: int, align: int = 1, what: str = "buffer") -> int:
        """Validated host address of guest [ptr, ptr+length)."""
        p, n = u32(ptr), u32(length)
        if p + n > self._size:
            raise AbiViolation(f"{what} [{p:#x}, +{n:#x}) outside linear memory of {self._size:#x} bytes")
        if p % align:
            raise AbiViolation(f"{what} at {p:#x} not aligned to {align}")
        return self._base + p

    def read(self, ptr: int, length: int, what: str = "buffer") -> bytes:
        addr = self.span(ptr, length, 1, what)
        return ctypes.string_at(addr, u32(length)) if length else b""

    def read_str(self, ptr: int, length: int, what: str = "string") -> str:
        try:
            return self.read(ptr, length, what).decode("utf-8")
        except UnicodeDecodeError as e:
            raise AbiViolation(f"{what} is not valid UTF-8") from e

    def write(self, ptr: int, data: bytes, what: str = "buffer") -> None:
        addr = self.span(ptr, len(data), 1, what)
        if data:
            ctypes.memmove(addr, data, len(data))

    def read_u8(self, ptr: int, what: str = "byte") -> int:
        return ctypes.c_uint8.from_address(self.span(ptr, 1, 1, what)).value

    def read_u32(self, ptr: int, what: str = "u32", align: int = 4) -> int:
        return int(_U32.unpack(ctypes.string_at(self.span(ptr, 4, align, what), 4))[0])

    def write_u8(self, ptr: int, value: int, what: str = "byte") -> None:
        ctypes.c_uint8.from_address(self.span(ptr, 1, 1, what)).value = value & 0xFF

    # `align`: the canonical ABI requires natural alignment; WASI preview1
    # callers pass align=1 (its ABI does not promise aligned out-pointers).
    def write_u32(self, ptr: int, value: int, what: str = "u32", align: int = 4) -> None:
        ctypes.memmove(self.span(ptr, 4, align, what), _U32.pack(value & 0xFFFFFFFF), 4)

    def write_u64(self, ptr: int, value: int, what: str = "u64", align: int = 8) -> None:
        ctypes.memmove(self.span(ptr, 8, align, what), _U64.pack(value & 0xFFFFFFFFFFFFFFFF), 8)
