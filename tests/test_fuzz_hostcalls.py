"""Property-based fuzzing of the micro-VM host-call decoder and dispatcher (no KVM needed).

The oracle is devtools/fuzz_hostcalls.py (also the long run's, `python -m
devtools.fuzz hostcalls`): the real MicroVm._hostcall on buffers of the VM's
sizes, the real dispatch and capabilities, fakes only for egress and UDP. For
every record: an answer (OK, DENIED exactly when ungranted, MISUSE for the
values the host refuses) or VmFault BAD_LENGTH / BAD_HOSTCALL (the VM is
poisoned) exactly when the range or the number is bad; the blobs handed over are
the record's two ranges inside OUT; egress reaches the allow list only; the kv
store stays in bounds. The explicit examples are the boundaries the seeded
fuzzer this replaces was written around.
"""

from __future__ import annotations

from collections.abc import Iterator

import _fuzz_settings  # noqa: F401  # the hypothesis profile
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from devtools.fuzz_hostcalls import (
    ALLOWED,
    INTERESTING_A0,
    INTERESTING_LENGTHS,
    KNOWN_FNS,
    ROOM,
    TEXTS,
    Finding,
    HostcallHarness,
    Record,
    record_from_bytes,
)
from vmm.capabilities import HostCapabilities
from vmm.kvstore import KvStore
from vmm.metrics import Metrics
from vmm.microvm import abi
from vmm.microvm.hostcalls import MAX_RANDOM_BYTES, dispatch
from vmm.policy import Grants, Limits

_U32, _U64 = 1 << 32, 1 << 64
ALL = 0x7F
EGRESS = abi.HostFn.EGRESS_SEND


@pytest.fixture(scope="module")
def harness() -> Iterator[HostcallHarness]:
    with HostcallHarness().installed() as h:
        yield h


fns = st.one_of(st.sampled_from(sorted(KNOWN_FNS)), st.sampled_from([0, max(KNOWN_FNS) + 1, _U32 - 1]),
                st.integers(0, _U32 - 1))
lengths = st.one_of(st.integers(0, 64), st.sampled_from(INTERESTING_LENGTHS), st.integers(0, _U32 - 1))
a0s = st.one_of(st.sampled_from(INTERESTING_A0), st.integers(0, 70_000), st.integers(0, _U64 - 1))
blobs = st.one_of(st.binary(max_size=96), st.builds(lambda t, b: t + b, st.sampled_from(TEXTS),
                                                    st.binary(max_size=32)))
records = st.builds(Record, fn=fns, len0=lengths, len1=lengths, a0=a0s, blob=blobs,
                    grants=st.integers(-1, ALL), udp=st.booleans(), reserved=st.integers(0, _U32 - 1))

BOUNDARIES = [
    Record(abi.HostFn.LOG, ROOM, 0, 2, b"x", ALL),  # the whole room: accepted
    Record(abi.HostFn.LOG, ROOM, 1, 2, b"x", ALL),  # one past it: BAD_LENGTH
    Record(abi.HostFn.KV_SET, _U32 - 16, 32, 0, b"key", ALL),  # would wrap in C
    Record(abi.HostFn.KV_SET, 3, _U32 - 1, 0, b"key", ALL),
    Record(0, 0, 0, 0, b"", ALL),  # unknown numbers poison the VM
    Record(_U32 - 1, 0, 0, 0, b"", ALL),
    Record(EGRESS, 9, 1, 9125 + 65536, b"127.0.0.1k", ALL),  # port over u16: MISUSE
    Record(EGRESS, 9, 1401, 9125, b"127.0.0.1", ALL),  # datagram over the limit
    Record(EGRESS, 9, 1, 9126, b"127.0.0.1k", ALL),  # not in the allow list
    Record(EGRESS, 9, 1, 9125, b"127.0.0.1k", ALL & ~(1 << 5)),  # ungranted: DENIED
    Record(abi.HostFn.RANDOM_BYTES, 0, 0, MAX_RANDOM_BYTES + 1, b"", ALL),
    Record(abi.HostFn.RANDOM_BYTES, 0, 0, MAX_RANDOM_BYTES, b"", ALL),
    Record(abi.HostFn.KV_GET, 2, 0, 0, b"\xc3\x28", ALL),  # not UTF-8: MISUSE
    Record(abi.HostFn.KV_INCREMENT, 3, 0, _U64 - 1, b"key", ALL),  # -1 as a u64
    Record(abi.HostFn.METADATA_SET, 2, 2, 0, b"\xff\xfeok", ALL),
    Record(abi.HostFn.LOG, 3, 0, 255, b"abc", 0),  # the grant check of fd_write, ungranted
    Record(abi.HostFn.UDP_SEND, 6, 4, 0, b"\x7f\x00\x00\x01\x23\xa5data", ALL),  # unbound: egress rules
    Record(abi.HostFn.UDP_SEND, 5, 4, 1, b"\x7f\x00\x00\x01\x23data", ALL, udp=True),
    Record(abi.HostFn.UDP_BIND, 6, 0, 0, b"\x7f\x00\x00\x01\x23\xa5", ALL, udp=True),
    Record(abi.HostFn.UDP_RECV, 0, 0, 7, b"", ALL),  # no UDP service: MISUSE
    Record(abi.HostFn.UDP_RECV, 0, 0, 1, b"", ALL, udp=True),  # a datagram, more queued
    Record(abi.HostFn.POLL, 3, 0, 10**9, b"\x01\x00\x00", ALL, udp=True),
    Record(abi.HostFn.POLL, 4, 0, _U64 - 1, b"\x00\x00\x00\x00", ALL, udp=True),
    Record(abi.HostFn.GRANTED, 0, 0, 99, b"", 0),
    Record(abi.HostFn.CONNECTION_ATTRIBUTES, 0, 0, 0, b"", -1),  # outside a connection: DENIED
]


def _with_examples(test):  # type: ignore[no-untyped-def]
    for r in BOUNDARIES:
        test = example(r)(test)
    return test


@_with_examples
@given(records)
def test_hostcall_records(harness: HostcallHarness, record: Record) -> None:
    harness.run(record)


@given(st.binary(max_size=96))
def test_hostcall_raw_bytes(harness: HostcallHarness, data: bytes) -> None:
    """The long run's input decoding, so `python -m devtools.fuzz` findings replay here."""
    harness.run(record_from_bytes(data))


def test_boundaries_reach_every_outcome(harness: HostcallHarness) -> None:
    """The oracle is not vacuous: each outcome, and each refusal, is reached and checked."""
    outcomes = [harness.run(r) for r in BOUNDARIES]
    assert outcomes[:6] == ["OK", "BAD_LENGTH", "BAD_LENGTH", "BAD_LENGTH", "BAD_HOSTCALL", "BAD_HOSTCALL"]
    assert outcomes[6] == "MISUSE" and outcomes[9] == "DENIED" and outcomes[12] == "MISUSE"
    assert outcomes[-1] == "DENIED"
    assert harness.sent.datagrams[-1] == (ALLOWED, b"data")
    assert harness.udp.sent == []  # the one send on socket 1 had a 5-byte address: MISUSE
    harness.run(Record(0, ROOM, 0, 0, b"x", ALL))  # BAD_HOSTCALL after its blobs were recorded
    assert len(harness.seen) <= 1  # the harness keeps no blobs across records (the long run)


def test_oracle_catches_a_grant_bypass(harness: HostcallHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dispatch that skipped the grant check would be reported, not pass silently."""
    monkeypatch.setattr(HostCapabilities, "check", lambda self, capability: None)
    with pytest.raises(Finding, match="ungranted call got OK"):
        harness.run(Record(abi.HostFn.WALL_NOW, 0, 0, 0, b"", 0))


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
