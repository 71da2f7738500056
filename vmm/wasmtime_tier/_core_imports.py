"""Host functions for core plugins: the contract's imports and the WASI p1 subset.

Each is defined through one wrapper (_host_call) that checks the import's
grant from vmm.contract.IMPORT_CAPABILITY first, once (so an ungranted call
is DENIED whatever its arguments); the function then validates every guest
address through GuestMemory and calls HostCapabilities, whose methods do not
check again. Any failure is recorded on the call context and re-raised,
which traps the plugin (see _context.py); classification reads the record.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import wasmtime

from vmm.contract import (
    IMPORT_MODULE,
    LIST_AREA_SIZE,
    OPTION_LIST_AREA_SIZE,
    RESULT_ENUM_AREA_SIZE,
    WASI_P1_MODULE,
    LogLevel,
    import_capability,
)
from vmm.http_abi import lower_attributes
from vmm.wasm_module import CONTRACT_IMPORTS, WASI_P1_SIGS, FuncSig
from vmm.wasmtime_tier._context import CallContext, current
from vmm.wasmtime_tier._faults import AbiViolation, ProcExit
from vmm.wasmtime_tier._memory import GuestMemory, u32

__all__ = ["define_imports"]

_VALTYPES = {"i32": wasmtime.ValType.i32, "i64": wasmtime.ValType.i64}

# WASI preview1 errno values.
_ESUCCESS, _EBADF, _EINVAL = 0, 8, 28
_IOV_MAX = 1024
# Bytes one fd_write takes (a short write, as WASI allows; wasi-libc loops).
# Without a cap one call could hand the host its whole memory (16 MiB of
# newlines: 16M lines split and logged in host code the epoch cannot stop).
_MAX_WRITE = 64 * 1024

HostFn = Callable[..., Any]


def _signed64(value: int) -> int:
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def _host_call(capability: str | None, fn: Callable[..., Any]) -> HostFn:
    """The import's one grant check, then `fn`; our own refusals are recorded
    on the call context before they trap the guest."""

    @functools.wraps(fn)
    def wrapper(caller: wasmtime.Caller, *args: int) -> Any:
        ctx = current()
        try:
            if capability is not None:
                ctx.host.check(capability)  # first: DENIED whatever the arguments
            return fn(ctx, caller, *args)
        except Exception as e:  # whatever it is, the call's own record (see _faults.py)
            ctx.record(e)
            raise

    return wrapper


def _mem(ctx: CallContext, caller: wasmtime.Caller) -> GuestMemory:
    assert ctx.memory is not None
    return GuestMemory(ctx.memory, caller)


# --- lightcell:filter/* --------------------------------------------------------


def _log(ctx: CallContext, caller: wasmtime.Caller, level: int, ptr: int, length: int) -> None:
    if not 0 <= level <= max(LogLevel):
        raise AbiViolation(f"log level {level} out of range")
    ctx.host.log(level, _mem(ctx, caller).read_str(ptr, length, "log message"))


def _wall_now(ctx: CallContext, caller: wasmtime.Caller) -> int:
    return _signed64(ctx.host.wall_now())


def _monotonic_now(ctx: CallContext, caller: wasmtime.Caller) -> int:
    return _signed64(ctx.host.monotonic_now())


def _get_u64(ctx: CallContext, caller: wasmtime.Caller) -> int:
    return _signed64(ctx.host.random_u64())


def _kv_get(ctx: CallContext, caller: wasmtime.Caller, kptr: int, klen: int, retptr: int) -> None:
    mem = _mem(ctx, caller)
    key = mem.read_str(kptr, klen, "kv key")
    mem.span(retptr, OPTION_LIST_AREA_SIZE, 4, "kv.get return area")
    value = ctx.host.kv_get(key)
    if value is None:
        mem.write_u8(retptr, 0)
        return
    # The list belongs to the guest: allocate it with the guest's allocator
    # (this re-enters the plugin), then re-read the memory, which may have moved.
    assert ctx.realloc is not None
    ptr = ctx.realloc(caller, 0, 0, 1, len(value)) or 0
    mem = _mem(ctx, caller)
    mem.write(ptr, value, "kv.get value (from cabi_realloc)")
    ret = u32(retptr)
    mem.write_u8(ret, 1)
    mem.write_u32(ret + 4, u32(ptr))
    mem.write_u32(ret + 8, len(value))


def _kv_set(ctx: CallContext, caller: wasmtime.Caller, kptr: int, klen: int, vptr: int, vlen: int) -> None:
    mem = _mem(ctx, caller)
    ctx.host.kv_set(mem.read_str(kptr, klen, "kv key"), mem.read(vptr, vlen, "kv value"))


def _kv_delete(ctx: CallContext, caller: wasmtime.Caller, kptr: int, klen: int) -> None:
    ctx.host.kv_delete(_mem(ctx, caller).read_str(kptr, klen, "kv key"))


def _kv_increment(ctx: CallContext, caller: wasmtime.Caller, kptr: int, klen: int, delta: int) -> int:
    return ctx.host.kv_increment(_mem(ctx, caller).read_str(kptr, klen, "kv key"), delta)


def _metadata_set(
    ctx: CallContext, caller: wasmtime.Caller, kptr: int, klen: int, vptr: int, vlen: int
) -> None:
    mem = _mem(ctx, caller)
    ctx.host.metadata_set(
        mem.read_str(kptr, klen, "metadata key"), mem.read_str(vptr, vlen, "metadata value")
    )


def _send_datagram(
    ctx: CallContext,
    caller: wasmtime.Caller,
    hptr: int,
    hlen: int,
    port: int,
    pptr: int,
    plen: int,
    retptr: int,
) -> None:
    mem = _mem(ctx, caller)
    host = mem.read_str(hptr, hlen, "egress host")
    if not 0 <= port <= 0xFFFF:
        raise AbiViolation(f"egress port {port} is not a u16")
    payload = mem.read(pptr, plen, "egress payload")
    mem.span(retptr, RESULT_ENUM_AREA_SIZE, 1, "send-datagram return area")
    err = ctx.host.send_datagram(host, port, payload)
    ret = u32(retptr)
    mem.write_u8(ret, 0 if err is None else 1)
    mem.write_u8(ret + 1, 0 if err is None else int(err))


def _connection_attributes(ctx: CallContext, caller: wasmtime.Caller, retptr: int) -> None:
    """list<attribute> into guest memory as an http-filter hook argument is laid out
    (plugins/wit/README.md), then (array, count) into the 8-byte return area."""
    _mem(ctx, caller).span(retptr, LIST_AREA_SIZE, 4, "connection.attributes return area")

    def alloc(align: int, size: int) -> int:
        assert ctx.realloc is not None
        ptr = u32(ctx.realloc(caller, 0, 0, align, size) or 0)
        if ptr % align:
            raise AbiViolation(f"cabi_realloc returned {ptr:#x}, not aligned to {align}")
        return ptr

    def write(ptr: int, data: bytes) -> None:  # memory may have grown: a fresh view each time
        _mem(ctx, caller).write(ptr, data, "connection attribute (from cabi_realloc)")

    array, count = lower_attributes(ctx.host.connection_attributes(), alloc, write)
    mem = _mem(ctx, caller)
    mem.write_u32(retptr, array, "connection.attributes return area")
    mem.write_u32(u32(retptr) + 4, count, "connection.attributes return area")


_CONTRACT: dict[tuple[str, str], Callable[..., Any]] = {
    (IMPORT_MODULE["log"], "log"): _log,
    (IMPORT_MODULE["clock"], "wall-now"): _wall_now,
    (IMPORT_MODULE["clock"], "monotonic-now"): _monotonic_now,
    (IMPORT_MODULE["random"], "get-u64"): _get_u64,
    (IMPORT_MODULE["kv"], "get"): _kv_get,
    (IMPORT_MODULE["kv"], "set"): _kv_set,
    (IMPORT_MODULE["kv"], "delete"): _kv_delete,
    (IMPORT_MODULE["kv"], "increment"): _kv_increment,
    (IMPORT_MODULE["metadata"], "set"): _metadata_set,
    (IMPORT_MODULE["egress"], "send-datagram"): _send_datagram,
    (IMPORT_MODULE["connection"], "attributes"): _connection_attributes,
}
assert set(_CONTRACT) == set(CONTRACT_IMPORTS)


# --- wasi_snapshot_preview1 (the subset in vmm.contract.IMPORT_CAPABILITY) -------


def _fd_write(
    ctx: CallContext, caller: wasmtime.Caller, fd: int, iovs: int, iovs_len: int, nwritten: int
) -> int:
    if fd not in (1, 2):
        return _EBADF  # no files, no sockets: only stdout/stderr exist
    count = u32(iovs_len)
    if count > _IOV_MAX:
        return _EINVAL
    mem = _mem(ctx, caller)
    base = u32(iovs)
    mem.span(base, 8 * count, 1, "iovec array")  # checked whole, so base + 8*i cannot wrap
    parts: list[bytes] = []
    room = _MAX_WRITE
    for i in range(count):
        ptr = mem.read_u32(base + 8 * i, "iovec ptr", 1)
        length = mem.read_u32(base + 8 * i + 4, "iovec len", 1)
        mem.span(ptr, length, 1, "iovec buffer")  # the whole buffer must be valid
        parts.append(mem.read(ptr, min(length, room), "iovec buffer"))
        room -= len(parts[-1])
        if room == 0:
            break
    data = b"".join(parts)
    mem.write_u32(nwritten, len(data), "fd_write nwritten", 1)
    ctx.output(fd).write(data)
    return _ESUCCESS


def _clock_time_get(
    ctx: CallContext, caller: wasmtime.Caller, clock_id: int, precision: int, out: int
) -> int:
    if clock_id == 0:
        now = ctx.host.wall_now()
    elif clock_id in (1, 2, 3):  # monotonic; process/thread CPU time approximated by it
        now = ctx.host.monotonic_now()
    else:
        return _EINVAL
    _mem(ctx, caller).write_u64(out, now, "clock_time_get result", 1)
    return _ESUCCESS


def _clock_res_get(ctx: CallContext, caller: wasmtime.Caller, clock_id: int, out: int) -> int:
    if not 0 <= clock_id <= 3:
        return _EINVAL
    _mem(ctx, caller).write_u64(out, 1000, "clock_res_get result", 1)
    return _ESUCCESS


def _random_get(ctx: CallContext, caller: wasmtime.Caller, buf: int, length: int) -> int:
    mem = _mem(ctx, caller)
    mem.span(buf, length, 1, "random_get buffer")
    mem.write(buf, ctx.host.random_bytes(u32(length)), "random_get buffer")
    return _ESUCCESS


def _sizes_zero(ctx: CallContext, caller: wasmtime.Caller, count_out: int, size_out: int) -> int:
    mem = _mem(ctx, caller)
    mem.write_u32(count_out, 0, "count", 1)
    mem.write_u32(size_out, 0, "size", 1)
    return _ESUCCESS


def _nothing(ctx: CallContext, caller: wasmtime.Caller, a: int, b: int) -> int:
    return _ESUCCESS  # zero args, zero environment variables: nothing to write


def _proc_exit(ctx: CallContext, caller: wasmtime.Caller, code: int) -> None:
    raise ProcExit(code)


_WASI: dict[str, Callable[..., Any]] = {
    "fd_write": _fd_write,
    "clock_time_get": _clock_time_get,
    "clock_res_get": _clock_res_get,
    "random_get": _random_get,
    "args_sizes_get": _sizes_zero,
    "args_get": _nothing,
    "environ_sizes_get": _sizes_zero,
    "environ_get": _nothing,
    "proc_exit": _proc_exit,
}
assert set(_WASI) == set(WASI_P1_SIGS)


def _functype(sig: FuncSig) -> wasmtime.FuncType:
    return wasmtime.FuncType([_VALTYPES[t]() for t in sig.params], [_VALTYPES[t]() for t in sig.results])


def define_imports(linker: wasmtime.Linker) -> None:
    """Define every contract and WASI p1 host function in `linker`."""
    for (module, name), fn in _CONTRACT.items():
        wrapped = _host_call(import_capability(module, name), fn)
        linker.define_func(module, name, _functype(CONTRACT_IMPORTS[(module, name)]), wrapped, True)
    for name, fn in _WASI.items():
        wrapped = _host_call(import_capability(WASI_P1_MODULE, name), fn)
        linker.define_func(WASI_P1_MODULE, name, _functype(WASI_P1_SIGS[name]), wrapped, True)
