"""Serve guest host calls (guest/include/lc_guest.h `enum lc_hostfn`) from
HostCapabilities. Transport-free: the micro-VM monitor and the host-native
test harness both call `HostcallServer.serve` with the bytes the guest
supplied, write the result back their own way, and call `end_of_hook` after
every request (open, data, close) so partial stdout/stderr lines are logged
at the same points as in the wasmtime tier.

LC_HOST_LOG with a0 = LOG_STREAM | fd carries raw WASI fd_write bytes for
stdout (1) / stderr (2): they need the log grant and become one log line per
newline (INFO for stdout, WARN for stderr; invalid UTF-8 replaced), as the
wasmtime tier's LineBuffer does.

Every failure is a status, never an exception: DENIED for an ungranted
capability (the guest ends the event with LC_STATUS_DENIED), MISUSE for
arguments the host refuses (not UTF-8, unknown function, a full kv store;
the guest ends the event with LC_STATUS_ABI).
"""

from __future__ import annotations

import contextlib
import enum
import logging
from dataclasses import dataclass

from vmm.capabilities import CapabilityDenied, CapabilityMisuse, HostCapabilities
from vmm.contract import LogLevel

__all__ = ["LOG_STREAM", "HostFn", "HostcallResult", "HostcallServer", "HostcallStatus"]

LOG_STREAM = 1 << 32
"""Flag in LC_HOST_LOG's a0: WASI stdout/stderr bytes (guest/runtime/lc_rt.h)."""
MAX_PENDING_LINE = 4096

LOG = logging.getLogger("lightcell.microvm.hostcall")


class HostFn(enum.IntEnum):
    """Mirrors `enum lc_hostfn`."""

    LOG = 1
    WALL_NOW = 2
    MONOTONIC_NOW = 3
    RANDOM_U64 = 4
    RANDOM_BYTES = 5
    KV_GET = 6
    KV_SET = 7
    KV_DELETE = 8
    KV_INCREMENT = 9
    METADATA_SET = 10
    EGRESS_SEND = 11


class HostcallStatus(enum.IntEnum):
    """Mirrors `enum lc_hostcall_status`."""

    OK = 0
    DENIED = 1
    MISUSE = 2


@dataclass(frozen=True, slots=True)
class HostcallResult:
    status: HostcallStatus
    value: int = 0  # u64
    payload: bytes = b""


_U64 = (1 << 64) - 1


def _text(raw: bytes) -> str:
    return raw.decode("utf-8")  # UnicodeDecodeError -> MISUSE, as the canonical ABI traps


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


class _Lines:
    """stdout/stderr bytes -> log lines (partial lines wait for the hook's end)."""

    def __init__(self, host: HostCapabilities, level: LogLevel) -> None:
        self._host, self._level, self._pending = host, level, bytearray()

    def write(self, data: bytes) -> None:
        self._pending += data
        *lines, rest = self._pending.split(b"\n")
        for line in lines:
            self._host.log(self._level, bytes(line).decode("utf-8", errors="replace"))
        self._pending = bytearray(rest)
        if len(self._pending) >= MAX_PENDING_LINE:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            line, self._pending = bytes(self._pending), bytearray()
            self._host.log(self._level, line.decode("utf-8", errors="replace"))


class HostcallServer:
    """One sandbox's host-call endpoint (holds its partial output lines)."""

    def __init__(self, host: HostCapabilities) -> None:
        self.host = host
        self._streams: dict[int, _Lines] = {}

    def serve(self, fn: int, a0: int, blob0: bytes, blob1: bytes, max_payload: int) -> HostcallResult:
        """Run host function `fn`; a payload longer than max_payload is MISUSE."""
        try:
            if fn == HostFn.LOG and a0 & LOG_STREAM:
                self._stream(a0 & 0xFF, blob0)
                return HostcallResult(HostcallStatus.OK)
            value, payload = _dispatch(self.host, HostFn(fn), a0, blob0, blob1)
        except CapabilityDenied:
            return HostcallResult(HostcallStatus.DENIED)
        except (CapabilityMisuse, UnicodeDecodeError, ValueError, OverflowError) as e:
            LOG.info("host call %s refused: %s", fn, e)
            return HostcallResult(HostcallStatus.MISUSE)
        if len(payload) > max_payload:
            return HostcallResult(HostcallStatus.MISUSE)
        return HostcallResult(HostcallStatus.OK, value & _U64, payload)

    def _stream(self, fd: int, data: bytes) -> None:
        if fd not in (1, 2):
            raise ValueError(f"output stream {fd}")
        self.host.check("log")
        lines = self._streams.get(fd)
        if lines is None:
            level = LogLevel.INFO if fd == 1 else LogLevel.WARN
            lines = self._streams[fd] = _Lines(self.host, level)
        lines.write(data)

    def end_of_hook(self) -> None:
        """Log partial output lines (the grant was checked when written)."""
        for lines in self._streams.values():
            with contextlib.suppress(Exception):
                lines.flush()


def _dispatch(host: HostCapabilities, fn: HostFn, a0: int, b0: bytes, b1: bytes) -> tuple[int, bytes]:
    if fn is HostFn.LOG:
        if a0 > max(LogLevel):
            raise ValueError(f"log level {a0}")
        host.log(a0, _text(b0))
        return 0, b""
    if fn is HostFn.WALL_NOW:
        return host.wall_now(), b""
    if fn is HostFn.MONOTONIC_NOW:
        return host.monotonic_now(), b""
    if fn is HostFn.RANDOM_U64:
        return host.random_u64(), b""
    if fn is HostFn.RANDOM_BYTES:
        if a0 > 1 << 20:
            raise CapabilityMisuse("random_get larger than 1 MiB per call")
        return 0, host.random_bytes(a0)
    if fn is HostFn.KV_GET:
        got = host.kv_get(_text(b0))
        return (0, b"") if got is None else (1, got)
    if fn is HostFn.KV_SET:
        host.kv_set(_text(b0), bytes(b1))
        return 0, b""
    if fn is HostFn.KV_DELETE:
        host.kv_delete(_text(b0))
        return 0, b""
    if fn is HostFn.KV_INCREMENT:
        return host.kv_increment(_text(b0), _signed(a0)), b""
    if fn is HostFn.METADATA_SET:
        host.metadata_set(_text(b0), _text(b1))
        return 0, b""
    if fn is HostFn.EGRESS_SEND:
        err = host.send_datagram(_text(b0), a0 & 0xFFFF, bytes(b1))
        return (0 if err is None else 1 + int(err)), b""
    raise ValueError(f"unknown host function {fn}")
