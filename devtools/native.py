"""Host-native harness: run a plugin compiled with `target="native"` in this process.

The same runtime sources as the guest image, with guest/runtime/native_shim.c
standing in for guest/boot (heap, lc_fail, lc_hostcall). Test tooling: used by
the tests of the runtime and the ahead-of-time pipeline, and by the conformance
runner (devtools/conformance.py), so neither needs a VM. It is not a sandbox:
never run untrusted plugins with it.

Each instance loads its own copy of the library (dlopen of one path shares
globals), so instances are independent, like fresh micro-VMs.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from vmm.capabilities import HostCapabilities
from vmm.microvm.abi import HostcallStatus, Op, Status  # the records are the guest ABI's own
from vmm.microvm.hostcalls import HostcallResult, UnknownHostFn, dispatch

__all__ = ["HostHandler", "NativeInstance", "Op", "Response", "Status"]


HostHandler = Callable[[int, int, bytes, bytes, int], HostcallResult]
"""(fn, a0, blob0, blob1, max_payload) -> result."""

_REQ = struct.Struct("<IIII")
_RES = struct.Struct("<IIII")

_HOST_FN = ctypes.CFUNCTYPE(
    ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint32,
    ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint64), ctypes.c_void_p,
    ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32),
)


class Response(NamedTuple):
    status: int
    detail: int
    data: bytes = b""


def _serve(host: HostCapabilities) -> HostHandler:
    """The micro-VM tier's own host-call dispatch (vmm/microvm/hostcalls.py)."""

    def serve(fn: int, a0: int, b0: bytes, b1: bytes, cap: int) -> HostcallResult:
        try:
            result = dispatch(host, fn, a0, b0, b1)
        except UnknownHostFn:
            return HostcallResult(HostcallStatus.MISUSE)
        if len(result.payload) > cap:
            return HostcallResult(HostcallStatus.MISUSE)
        return result

    return serve


def _deny_all(fn: int, a0: int, b0: bytes, b1: bytes, cap: int) -> HostcallResult:
    return HostcallResult(HostcallStatus.DENIED)


class NativeInstance:
    """One plugin instance in this process (a stand-in for one micro-VM)."""

    def __init__(self, library: Path, host: HostCapabilities | HostHandler | None = None, *,
                 heap_bytes: int = 16 << 20, memory_cap: int | None = None,
                 in_cap: int = 128 << 10, out_cap: int = 128 << 10) -> None:
        """`heap_bytes`: the runtime's heap (wasm memories, tables, scratch);
        `memory_cap`: the most bytes any wasm memory may have, as the guest
        gets it at boot (default: the heap size, so only the heap bounds it)."""
        if memory_cap is None:
            memory_cap = heap_bytes
        if not 0 <= memory_cap < 2**64:
            raise ValueError(f"memory cap {memory_cap} is not a u64")
        if host is None:
            self._handler: HostHandler = _deny_all
        elif isinstance(host, HostCapabilities):
            self._handler = _serve(host)
        else:
            self._handler = host
        self.hostcalls: list[tuple[int, int, bytes, bytes]] = []
        self._error: BaseException | None = None
        fd, copy = tempfile.mkstemp(suffix=".so", prefix="lc-native-")
        os.close(fd)
        try:
            shutil.copyfile(library, copy)
            self._lib = ctypes.CDLL(copy, mode=os.RTLD_LOCAL | os.RTLD_NOW)
        finally:
            os.unlink(copy)
        self._heap = ctypes.create_string_buffer(heap_bytes)
        self._in = ctypes.create_string_buffer(in_cap)
        self._out = ctypes.create_string_buffer(out_cap)
        self._in_cap, self._out_cap = in_cap, out_cap
        self._callback = _HOST_FN(self._hostcall)
        lib = self._lib
        lib.lcn_setup.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, _HOST_FN]
        lib.lcn_setup.restype = None
        lib.lcn_init.argtypes = [ctypes.POINTER(ctypes.c_uint32)]
        lib.lcn_init.restype = ctypes.c_uint32
        lib.lcn_handle.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32]
        lib.lcn_handle.restype = ctypes.c_uint32
        lib.lcn_setup(ctypes.addressof(self._heap), heap_bytes, memory_cap, self._callback)
        detail = ctypes.c_uint32()
        status = lib.lcn_init(ctypes.byref(detail))
        self._reraise()
        self.init_result = Response(status, detail.value)

    # --- host calls (called from C: never raise through it) ----------------
    def _hostcall(self, fn: int, a0: int, b0: int | None, l0: int, b1: int | None, l1: int,
                  value: ctypes._Pointer[ctypes.c_uint64], resp: int | None, cap: int,
                  resp_len: ctypes._Pointer[ctypes.c_uint32]) -> int:
        try:
            blob0 = ctypes.string_at(b0, l0) if l0 and b0 else b""
            blob1 = ctypes.string_at(b1, l1) if l1 and b1 else b""
            self.hostcalls.append((fn, a0, blob0, blob1))
            result = self._handler(fn, a0, blob0, blob1, cap)
            value[0] = result.value
            if result.payload:
                if len(result.payload) > cap or not resp:
                    return int(HostcallStatus.MISUSE)
                ctypes.memmove(resp, result.payload, len(result.payload))
            resp_len[0] = len(result.payload)
            return int(result.status)
        except BaseException as e:  # re-raised after the C call returns
            self._error = e
            return int(HostcallStatus.MISUSE)

    def _reraise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    # --- requests ----------------------------------------------------------
    def request(self, op: int, arg0: int = 0, arg1: int = 0, payload: bytes = b"") -> Response:
        if _REQ.size + len(payload) > self._in_cap:
            raise ValueError("payload larger than the IN buffer")
        _REQ.pack_into(self._in, 0, op, arg0, arg1, len(payload))
        ctypes.memmove(ctypes.addressof(self._in) + _REQ.size, payload, len(payload))
        self._lib.lcn_handle(ctypes.addressof(self._in), self._in_cap,
                             ctypes.addressof(self._out), self._out_cap)
        self._reraise()
        status, detail, _, length = _RES.unpack_from(self._out, 0)
        data = b""
        if status == Status.OK and length:
            if length > self._out_cap - _RES.size:
                raise RuntimeError("runtime reported a length past the OUT buffer")
            data = ctypes.string_at(ctypes.addressof(self._out) + _RES.size, length)
        return Response(status, detail, data)

    def raw_request(self, header: bytes, in_cap: int | None = None) -> Response:
        """Send hand-made header bytes (tests of the runtime's request checks)."""
        ctypes.memmove(ctypes.addressof(self._in), header, len(header))
        self._lib.lcn_handle(ctypes.addressof(self._in), self._in_cap if in_cap is None else in_cap,
                             ctypes.addressof(self._out), self._out_cap)
        self._reraise()
        status, detail, _, _ = _RES.unpack_from(self._out, 0)
        return Response(status, detail)

    def open(self, listener: str, config: str) -> Response:
        lb, cb = listener.encode(), config.encode()
        return self.request(Op.OPEN, len(lb), len(cb), lb + cb)

    def data(self, direction: int, chunk: bytes, eos: bool = False) -> Response:
        return self.request(Op.DATA, direction, int(eos), chunk)

    def close(self) -> Response:
        return self.request(Op.CLOSE)
