"""The host-call boundary as a fuzz target: one guest record in, every invariant checked.

The code under test is the real decoder, MicroVm._hostcall (vmm/microvm/vm.py),
on buffers of exactly the sizes the VM maps, and the real dispatch and
capabilities behind it; only the things outside the process are fakes (the
egress sender, the UDP service). `HostcallHarness.run(record)` raises
`Finding` (an AssertionError) when an invariant breaks and returns the outcome
name otherwise. Drivers: tests/test_fuzz_hostcalls.py (hypothesis, bounded) and
`python -m devtools.fuzz hostcalls` (the long run, random or atheris).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import vmm.microvm.vm as vm_module
from vmm.capabilities import HostCapabilities
from vmm.kvstore import KvStore
from vmm.metrics import Metrics
from vmm.microvm import abi, wasip2_host
from vmm.microvm.hostcalls import (
    MAX_RANDOM_BYTES,
    WITHOUT_CONNECTION,
    HostcallResult,
    dispatch,
    host_fn_capability,
)
from vmm.microvm.vm import FaultReason, MicroVm, VmFault
from vmm.microvm.wasip2_host import ErrorCode, UdpService
from vmm.policy import EgressTarget, Grants, Limits

ROOM = abi.LC_OUT_SIZE - abi.HOSTCALL.size
BASE = abi.HOSTCALL.size
ALLOWED = EgressTarget("127.0.0.1", 9125)
CAPABILITY_ORDER = ("log", "clock", "random", "kv", "metadata", "egress", "connection")
KNOWN_FNS = frozenset(map(int, abi.HostFn))
KV_KEYS, KV_VALUE_BYTES = 20, 256
_U32, _U64 = 1 << 32, 1 << 64
INTERESTING_LENGTHS = (0, 1, 4, 6, 8, 9, 64, 4096, ROOM - 1, ROOM, ROOM + 1, abi.LC_OUT_SIZE,
                       0x80000000, _U32 - 16, _U32 - 1)
INTERESTING_A0 = (0, 1, 2, 4, 5, 255, 9125, 65535, 65536, MAX_RANDOM_BYTES, MAX_RANDOM_BYTES + 1,
                  1 << 63, _U64 - 1)
TEXTS = (b"127.0.0.1", b"localhost", b"key", b"\xff\xfe", b"\xc3\x28", b"\x7f\x00\x00\x01\x23\xa5")
# UTF-8 text for kv/metadata/egress hosts; the 6 bytes are a WASI 0.2 address (127.0.0.1:9125).


_STATUSES = frozenset(map(int, abi.HostcallStatus))
_LIMITS = Limits()
_GRANTS = [Grants(frozenset(c for i, c in enumerate(CAPABILITY_ORDER) if bits >> i & 1), frozenset({ALLOWED}))
           for bits in range(1 << len(CAPABILITY_ORDER))]
"""Grants by bitmask over CAPABILITY_ORDER (made once: the long run makes millions of hosts)."""


class Finding(AssertionError):
    """An invariant of the host-call boundary broke."""


@dataclass(frozen=True, slots=True)
class Record:
    """One host call as a guest writes it into OUT, plus the connection it runs on."""

    fn: int
    len0: int
    len1: int
    a0: int
    blob: bytes
    """Written at OUT+BASE (only min(len0 + len1, len(blob)) bytes; the rest reads as zeros)."""
    grants: int
    """Bitmask over CAPABILITY_ORDER; -1: no connection (host None: boot, warm-up)."""
    udp: bool = False
    """Whether the host has a (fake) UDP service (`lightcell run`) or not (plugins)."""
    reserved: int = 0


class FakeUdp:
    """A UdpService: socket 1 bound on 127.0.0.1:9125 only; records what it is asked."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str, int, bytes]] = []

    def bind(self, ip: str, port: int) -> int | ErrorCode:
        return 1 if (ip, port) == (ALLOWED.host, ALLOWED.port) else ErrorCode.ACCESS_DENIED

    def recv(self, sock: int) -> tuple[str, int, bytes] | None:
        return (ALLOWED.host, ALLOWED.port, b"echo") if sock == 1 else None

    def pending(self, sock: int) -> bool:
        return sock == 1  # one more datagram always queued: the guest keeps reading

    def send(self, sock: int, ip: str, port: int, data: bytes) -> ErrorCode | None:
        if sock != 1 or (ip, port) != (ALLOWED.host, ALLOWED.port):
            return ErrorCode.ACCESS_DENIED
        self.sent.append((sock, ip, port, data))
        return None

    def wait(self, socks: list[int], timeout_s: float) -> bool:
        return 1 in socks


class _NoSleep:
    """wasip2_host's `time` while fuzzing: poll's sleep (up to MAX_WAIT_S) returns at once."""

    def sleep(self, seconds: float) -> None:
        _check(0 <= seconds <= wasip2_host.MAX_WAIT_S, f"poll slept {seconds} s")


class Sent:
    """The egress DatagramSender: records datagrams instead of sending them."""

    def __init__(self) -> None:
        self.datagrams: list[tuple[EgressTarget, bytes]] = []

    def send(self, target: EgressTarget, payload: bytes) -> bool:
        self.datagrams.append((target, payload))
        return True


def _utf8(blob: bytes) -> bool:
    try:
        blob.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class HostcallHarness:
    """A MicroVm reduced to what _hostcall touches (its IN and OUT buffers), reused per input."""

    def __init__(self) -> None:
        self.vm: Any = object.__new__(MicroVm)
        self.out = bytearray(abi.LC_OUT_SIZE)
        self.inb = bytearray(abi.LC_IN_SIZE)
        self.vm.out_buf = memoryview(self.out)
        self.vm.in_buf = memoryview(self.inb)
        self.kv = KvStore(KV_KEYS, KV_VALUE_BYTES)
        self.sent = Sent()
        self.udp = FakeUdp()
        _conforms: UdpService = self.udp  # mypy checks FakeUdp against the protocol it stands in for
        self.metrics = Metrics()
        self.seen: list[tuple[int, bytes, bytes]] = []
        self._dirty = 0  # bytes of OUT after BASE the last record wrote
        self._checked = 0  # datagrams _bounded has looked at

    @contextmanager
    def installed(self) -> Iterator[HostcallHarness]:
        """Route the decoder's dispatch through a recorder (the real dispatch still answers)."""

        def recording(host: HostCapabilities | None, fn: int, a0: int, b0: bytes, b1: bytes
                      ) -> HostcallResult:
            self.seen.append((fn, b0, b1))
            return dispatch(host, fn, a0, b0, b1)

        # setattr: module attributes swapped for the run, put back after it
        saved = [(m, name, getattr(m, name)) for m, name in ((vm_module, "dispatch"), (wasip2_host, "time"))]
        setattr(vm_module, "dispatch", recording)  # noqa: B010
        setattr(wasip2_host, "time", _NoSleep())  # noqa: B010  # poll's `lightcell run` sleep
        quiet = logging.root.manager.disable
        logging.disable(logging.CRITICAL)  # denials log a line each: not the point here
        try:
            yield self
        finally:
            for m, name, value in saved:
                setattr(m, name, value)
            logging.disable(quiet)

    def _host(self, r: Record) -> HostCapabilities | None:
        if r.grants < 0:
            return None
        host = HostCapabilities("fuzz", "guest", _GRANTS[r.grants & 0x7F], _LIMITS,
                                self.kv, self.sent, self.metrics,
                                attributes=(("a", "v" * (r.grants & 63)),))
        if r.udp:
            host.udp = self.udp  # type: ignore[attr-defined]  # wasip2_host reads it by getattr
        return host

    def _write(self, r: Record) -> None:
        abi.HOSTCALL.pack_into(self.out, 0, r.fn % _U32, r.len0 % _U32, r.len1 % _U32,
                               r.reserved % _U32, r.a0 % _U64)
        n = min(len(r.blob), r.len0 + r.len1, ROOM)
        self.out[BASE : BASE + max(n, self._dirty)] = r.blob[:n].ljust(max(n, self._dirty), b"\0")
        self._dirty = n

    def run(self, r: Record) -> str:
        """Decode and dispatch one record; check every invariant; the outcome's name."""
        try:
            return self._run(r)
        except Finding as e:
            raise Finding(f"{e} in {r!r:.300}") from e.__cause__

    def _run(self, r: Record) -> str:
        self._write(r)
        fn, len0, len1, _, a0 = abi.HOSTCALL.unpack_from(self.out, 0)
        host = self._host(r)
        # Cleared per record: an unknown function is recorded before dispatch refuses it, and
        # keeping its (up to 16 MiB) blobs is how a first long run grew to 20 GB.
        self.seen.clear()
        before = 0
        try:
            self.vm._hostcall(host)
        except VmFault as e:
            if e.reason is FaultReason.BAD_HOSTCALL:
                _check(fn not in KNOWN_FNS, "known function poisoned the VM")
            else:
                _check(e.reason is FaultReason.BAD_LENGTH, f"{e.reason}")
                _check(len0 + len1 > ROOM, "in-buffer range refused")
            self._bounded()
            return e.reason.name
        except Exception as e:  # anything else escaping is the finding
            raise Finding(f"{type(e).__name__}: {e}") from e
        _check(fn in KNOWN_FNS and len0 + len1 <= ROOM, "answered a bad record")
        _check(len(self.seen) == before + 1, f"dispatched {len(self.seen) - before} times")
        _, b0, b1 = self.seen.pop()
        _check(len(b0) == len0 and len(b1) == len1, "blob lengths not the record's")
        _check(self._same(BASE, b0) and self._same(BASE + len0, b1), "blob not the guest's range")
        status, length, value = abi.HOSTCALL_RESULT.unpack_from(self.inb, 0)
        _check(status in _STATUSES, f"status {status}")
        _check(length <= abi.LC_IN_SIZE - abi.HOSTCALL_RESULT.size and value < _U64, "answer out of range")
        self._expect(host, abi.HostFn(fn), abi.HostcallStatus(status), length, a0, b0, b1)
        self._bounded()
        return abi.HostcallStatus(status).name

    def _same(self, at: int, blob: bytes) -> bool:
        """blob == OUT[at:at+len(blob)]; for multi-MiB blobs their two ends (the rest is zeros
        that _write put there, and copying 16 MiB twice per input would halve the run)."""
        if len(blob) <= 1 << 16:
            return self.out[at : at + len(blob)] == blob
        end = at + len(blob)
        return self.out[at : at + 4096] == blob[:4096] and self.out[end - 4096 : end] == blob[-4096:]

    def _expect(self, host: HostCapabilities | None, fn: abi.HostFn, status: abi.HostcallStatus,
                length: int, a0: int, b0: bytes, b1: bytes) -> None:
        """Every refusal is the right one: DENIED exactly when ungranted, MISUSE for bad values.
        Outside a connection (no host) only WITHOUT_CONNECTION's calls are answered."""
        cap = host_fn_capability(fn)
        S = abi.HostcallStatus
        if host is None and fn in WITHOUT_CONNECTION:
            _check(status in (S.OK, S.MISUSE), f"{fn.name} without a connection got {status.name}")
            return
        granted = host is not None and (cap is None or host.grants.allows(cap))
        if not granted:
            _check(status is S.DENIED and length == 0, f"ungranted call got {status.name}")
            return
        _check(status is not S.DENIED, "granted call DENIED")
        text_keys = (abi.HostFn.KV_GET, abi.HostFn.KV_SET, abi.HostFn.KV_DELETE,
                     abi.HostFn.KV_INCREMENT, abi.HostFn.METADATA_SET, abi.HostFn.EGRESS_SEND)
        if fn in text_keys and not _utf8(b0):
            _check(status is S.MISUSE, f"non-UTF-8 key/host got {status.name}")
        if fn is abi.HostFn.RANDOM_BYTES:
            _check((status is S.MISUSE) == (a0 > MAX_RANDOM_BYTES), f"random_bytes {status.name}")
            _check(status is not S.OK or length == a0, f"random_bytes length {length}")
        if fn is abi.HostFn.EGRESS_SEND and a0 > 0xFFFF:
            _check(status is S.MISUSE, f"egress port {a0} got {status.name}")
        if fn in (abi.HostFn.WALL_NOW, abi.HostFn.MONOTONIC_NOW, abi.HostFn.RANDOM_U64,
                  abi.HostFn.CONNECTION_ATTRIBUTES):
            _check(status is S.OK, f"{fn.name} refused")
        if fn in (abi.HostFn.UDP_BIND, abi.HostFn.UDP_SEND) and len(b0) != 6:
            _check(status is S.MISUSE, f"{fn.name} address of {len(b0)} bytes")

    def _bounded(self) -> None:
        """Effects outside the call stay inside the grant and the limits."""
        fresh = self.sent.datagrams[self._checked :]
        if fresh:
            _check(all(t == ALLOWED for t, _ in fresh), "egress beyond the allow list")
            _check(all(len(p) <= _LIMITS.max_datagram_bytes for _, p in fresh), "datagram over the limit")
            if len(self.sent.datagrams) > 1000:
                self.sent.datagrams.clear()
            self._checked = len(self.sent.datagrams)
        _check(len(self.kv._data) <= KV_KEYS, "kv store over its key limit")
        if len(self.kv._data) == KV_KEYS:
            self.kv = KvStore(KV_KEYS, KV_VALUE_BYTES)  # a full store would hide kv_set's OK path
        if len(self.udp.sent) > 1000:
            self.udp.sent.clear()


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise Finding(message)


_PICK = struct.Struct("<BBBBBB")


def record_from_bytes(data: bytes) -> Record:
    """A Record from raw fuzzer bytes: 6 selector bytes, then raw values, then the blob.

    Each selector byte picks an interesting value (small numbers, the bounds)
    or the raw field that follows, so both random and coverage-guided engines
    reach every branch without having to guess 32-bit boundaries.
    """
    data = data.ljust(_PICK.size + 20, b"\0")
    s_fn, s_len0, s_len1, s_a0, s_grants, s_text = _PICK.unpack_from(data, 0)
    raw_fn, raw_len0, raw_len1, raw_a0 = struct.unpack_from("<IIIQ", data, _PICK.size)
    rest = data[_PICK.size + 20 :]
    fns = sorted(KNOWN_FNS)
    fn = fns[s_fn % len(fns)] if s_fn < 224 else (0, max(fns) + 1, raw_fn)[s_fn % 3]

    def length(sel: int, raw: int) -> int:
        if sel < 208:
            return sel % 48  # short blobs: the common, interesting case
        if sel < 240:
            return INTERESTING_LENGTHS[sel % len(INTERESTING_LENGTHS)]
        return raw

    a0 = INTERESTING_A0[s_a0 % len(INTERESTING_A0)] if s_a0 < 192 else (s_a0 - 192 if s_a0 < 240 else raw_a0)
    grants = -1 if s_grants >= 250 else s_grants & 0x7F
    text = TEXTS[s_text % len(TEXTS)] if s_text < 128 else b""
    return Record(fn, length(s_len0, raw_len0), length(s_len1, raw_len1), a0, text + rest, grants,
                  udp=bool(s_grants & 0x80))
