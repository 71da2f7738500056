"""Seeded fuzzing of the micro-VM host-call decoder and dispatcher (no KVM needed).

hypothesis is not a dependency, so fixed seeds drive random.Random.
The decoder under test is the real MicroVm._hostcall (vmm/microvm/vm.py) run on
buffers of exactly the sizes the VM maps (OUT = LC_OUT_SIZE, IN = LC_IN_SIZE):
a record the guest wrote into OUT -> vmm.microvm.hostcalls.dispatch -> the
answer in IN. Invariants for every random record:
- it either answers (status OK, DENIED or MISUSE in IN) or raises VmFault
  (BAD_LENGTH / BAD_HOSTCALL: the VM is poisoned); nothing else escapes;
- the blobs handed to the capabilities are exactly the record's two ranges
  inside OUT (never bytes from outside the buffer, never a wrapped range);
- an ungranted capability is DENIED whatever its arguments;
- egress reaches allow-listed targets only; kv and metadata stay in bounds.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from _host_fakes import Sent

import vmm.microvm.vm as vm_module
from vmm.capabilities import HostCapabilities
from vmm.kvstore import KvStore
from vmm.metrics import Metrics
from vmm.microvm import abi
from vmm.microvm.hostcalls import MAX_RANDOM_BYTES, HostcallResult, UnknownHostFn, dispatch
from vmm.microvm.vm import FaultReason, MicroVm, VmFault
from vmm.policy import CAPABILITIES, EgressTarget, Grants, Limits

SEEDS = (7, 11, 0xBAD, 0x5EED)
STEPS = 1500
ROOM = abi.LC_OUT_SIZE - abi.HOSTCALL.size
ALLOWED = EgressTarget("127.0.0.1", 9125)
_U32, _U64 = 1 << 32, 1 << 64
CAP_OF_FN = {
    abi.HostFn.LOG: "log",
    abi.HostFn.WALL_NOW: "clock",
    abi.HostFn.MONOTONIC_NOW: "clock",
    abi.HostFn.RANDOM_U64: "random",
    abi.HostFn.RANDOM_BYTES: "random",
    abi.HostFn.KV_GET: "kv",
    abi.HostFn.KV_SET: "kv",
    abi.HostFn.KV_DELETE: "kv",
    abi.HostFn.KV_INCREMENT: "kv",
    abi.HostFn.METADATA_SET: "metadata",
    abi.HostFn.EGRESS_SEND: "egress",
    abi.HostFn.CONNECTION_ATTRIBUTES: "connection",
    # WASI 0.2 (vmm/microvm/wasip2_host.py); None: needs no grant
    abi.HostFn.GRANTED: None,
    abi.HostFn.ARGUMENTS: None,
    abi.HostFn.UDP_BIND: "egress",
    abi.HostFn.UDP_RECV: "egress",
    abi.HostFn.UDP_SEND: "egress",
    abi.HostFn.POLL: None,
}


class Decoder:
    """A MicroVm reduced to what _hostcall touches: its IN and OUT buffers."""

    def __init__(self) -> None:
        self.vm: Any = object.__new__(MicroVm)
        self.out = bytearray(abi.LC_OUT_SIZE)
        self.inb = bytearray(abi.LC_IN_SIZE)
        self.vm.out_buf = memoryview(self.out)
        self.vm.in_buf = memoryview(self.inb)

    def call(self, host: HostCapabilities | None) -> None:
        MicroVm._hostcall(self.vm, host)

    def answer(self) -> tuple[int, int, int, bytes]:
        status, length, value = abi.HOSTCALL_RESULT.unpack_from(self.inb, 0)
        body = bytes(self.inb[abi.HOSTCALL_RESULT.size : abi.HOSTCALL_RESULT.size + length])
        return status, length, value, body


def _host(rng: random.Random, kv: KvStore, sent: Sent) -> HostCapabilities:
    grants = frozenset(c for c in CAPABILITIES if rng.random() < 0.7)
    attributes = tuple((f"a{i}", "v" * rng.randrange(64)) for i in range(rng.randrange(4)))
    return HostCapabilities(
        "fuzz", "guest", Grants(grants, frozenset({ALLOWED})), Limits(), kv, sent, Metrics(),
        attributes=attributes,
    )


def _length(rng: random.Random) -> int:
    return rng.choice([
        0, 1, 8, 9, 64, 4096, ROOM, ROOM - 1, ROOM + 1, abi.LC_OUT_SIZE, _U32 - 1, _U32 - 16,
        0x80000000, rng.randrange(256), rng.randrange(_U32),
    ])  # fmt: skip


def _record(rng: random.Random, out: bytearray) -> tuple[int, int, int, int]:
    """Write one random host-call record into OUT; returns (fn, len0, len1, a0)."""
    fn = rng.choice([*map(int, abi.HostFn), 0, max(abi.HostFn) + 1, 0xFFFFFFFF, rng.randrange(_U32)])
    len0, len1 = _length(rng), _length(rng)
    a0 = rng.choice([0, 1, 2, 4, 5, 9125, 65535, 65536, MAX_RANDOM_BYTES, MAX_RANDOM_BYTES + 1,
                     1 << 63, _U64 - 1, rng.randrange(_U64)])  # fmt: skip
    abi.HOSTCALL.pack_into(out, 0, fn, len0, len1, rng.randrange(_U32), a0)
    # Blob bytes: text the capabilities accept, or garbage (bad UTF-8 included).
    base = abi.HOSTCALL.size
    usable = min(len0 + len1, ROOM, 4096)
    garbage = bytes(rng.randrange(256) for _ in range(16))
    text = rng.choice([b"127.0.0.1", b"localhost", b"key", b"\xff\xfe", garbage])
    fill = (text * (usable // max(1, len(text)) + 1))[:usable]
    out[base : base + usable] = fill
    if fn == abi.HostFn.EGRESS_SEND and rng.random() < 0.5:
        # Aim at the allow list (or next to it) so the allow-list check itself is fuzzed.
        out[base : base + 9] = b"127.0.0.1"
        struct.pack_into("<IIIIQ", out, 0, fn, 9, rng.choice([0, 10, 1400, 1401]), 0,
                         rng.choice([9125, 9126, 9125 + (1 << 16)]))  # fmt: skip
    fn, len0, len1, _, a0 = abi.HOSTCALL.unpack_from(out, 0)
    return fn, len0, len1, a0


@pytest.fixture
def seen_blobs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, bytes, bytes]]]:
    """Every dispatch the decoder makes, recorded (the real dispatch still runs)."""
    seen: list[tuple[int, bytes, bytes]] = []

    def recording(host: HostCapabilities | None, fn: int, a0: int, b0: bytes, b1: bytes) -> HostcallResult:
        seen.append((fn, b0, b1))
        return dispatch(host, fn, a0, b0, b1)

    monkeypatch.setattr(vm_module, "dispatch", recording)
    yield seen


@pytest.mark.parametrize("seed", SEEDS)
def test_decoder_fuzz(seed: int, seen_blobs: list[tuple[int, bytes, bytes]]) -> None:
    rng = random.Random(seed)
    dec = Decoder()
    kv, sent = KvStore(20, 256), Sent()
    outcomes: dict[str, int] = {}
    for step in range(STEPS):
        fn, len0, len1, a0 = _record(rng, dec.out)
        host = None if rng.random() < 0.05 else _host(rng, kv, sent)
        where = f"seed={seed} step={step} fn={fn} len0={len0:#x} len1={len1:#x} a0={a0:#x}"
        before = len(seen_blobs)
        try:
            dec.call(host)
        except VmFault as e:
            assert e.reason in (FaultReason.BAD_LENGTH, FaultReason.BAD_HOSTCALL), where
            if e.reason is FaultReason.BAD_HOSTCALL:
                assert fn not in set(map(int, abi.HostFn)), where
            else:
                assert len0 > ROOM or len1 > ROOM - min(len0, ROOM), where
            outcomes[e.reason.name] = outcomes.get(e.reason.name, 0) + 1
            continue
        # Answered: the ranges were inside OUT and handed over exactly.
        assert len0 + len1 <= ROOM, f"{where}: accepted an out-of-buffer range"
        assert len(seen_blobs) == before + 1
        _, b0, b1 = seen_blobs[-1]
        start = abi.HOSTCALL.size
        assert b0 == bytes(dec.out[start : start + len0]), where
        assert b1 == bytes(dec.out[start + len0 : start + len0 + len1]), where
        status, length, value, body = dec.answer()
        assert status in set(map(int, abi.HostcallStatus)), where
        assert 0 <= value < _U64 and length == len(body), where
        cap = CAP_OF_FN[abi.HostFn(fn)]
        granted = host is not None and (cap is None or host.grants.allows(cap))
        if not granted:
            assert status == abi.HostcallStatus.DENIED and length == 0, where
        if fn == abi.HostFn.RANDOM_BYTES and status == abi.HostcallStatus.OK:
            assert length == a0 <= MAX_RANDOM_BYTES, where
        outcomes[abi.HostcallStatus(status).name] = outcomes.get(abi.HostcallStatus(status).name, 0) + 1
    assert all(target == ALLOWED for target, _ in sent.datagrams)
    assert all(len(p) <= Limits().max_datagram_bytes for _, p in sent.datagrams)
    assert len(kv._data) <= 20
    # Every kind of outcome was reached, so the checks above were exercised.
    assert {"OK", "DENIED", "MISUSE", "BAD_LENGTH", "BAD_HOSTCALL"} <= set(outcomes), outcomes


@pytest.mark.parametrize("seed", SEEDS)
def test_dispatch_fuzz_never_raises_but_unknown_fn(seed: int) -> None:
    """dispatch() alone, with arbitrary blobs: an answer, or UnknownHostFn for a bad number."""
    rng = random.Random(seed)
    kv, sent = KvStore(20, 256), Sent()
    known = set(map(int, abi.HostFn))
    for step in range(STEPS):
        fn = rng.choice([*known, 0, 99, rng.randrange(_U32)])
        a0 = rng.choice([0, 3, 7, 9125, 65536, MAX_RANDOM_BYTES + 1, _U64 - 1, rng.randrange(_U64)])
        garbage = bytes(rng.randrange(256) for _ in range(40))
        blobs = [rng.choice([b"", b"127.0.0.1", b"k" * 5000, b"\xc3\x28", garbage]) for _ in range(2)]
        host = _host(rng, kv, sent)
        if fn not in known:
            with pytest.raises(UnknownHostFn):
                dispatch(host, fn, a0, blobs[0], blobs[1])
            continue
        result = dispatch(host, fn, a0, blobs[0], blobs[1])
        assert result.status in set(abi.HostcallStatus), f"seed={seed} step={step}"
        assert len(result.payload) <= max(MAX_RANDOM_BYTES, 256)
    assert all(target == ALLOWED for target, _ in sent.datagrams)


def test_metadata_and_kv_floods_are_misuse() -> None:
    metrics = Metrics()
    kv = KvStore(10, 64)
    host = HostCapabilities(
        "fuzz", "guest", Grants(frozenset({"kv", "metadata"})), Limits(), kv, None, metrics
    )
    answers = [dispatch(host, abi.HostFn.METADATA_SET, 0, f"k{i}".encode(), b"v").status for i in range(100)]
    assert answers.count(abi.HostcallStatus.OK) == 64
    assert set(answers[64:]) == {abi.HostcallStatus.MISUSE}
    kv_answers = [dispatch(host, abi.HostFn.KV_SET, 0, f"k{i}".encode(), b"v").status for i in range(30)]
    assert kv_answers.count(abi.HostcallStatus.OK) == 10
    huge_key = dispatch(host, abi.HostFn.KV_INCREMENT, 1, b"k" * 5000, b"")
    assert huge_key.status == abi.HostcallStatus.MISUSE
    assert dispatch(host, abi.HostFn.KV_SET, 0, b"k0", b"x" * 65).status == abi.HostcallStatus.MISUSE
