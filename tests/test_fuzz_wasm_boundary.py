"""Property fuzzing of the wasmtime tier's host-call boundary with a hostile plugin.

hypothesis drives it through st.randoms(): each example is a run of STEPS commands
drawn from a hypothesis-controlled Random (so a failure shrinks and replays), and
the seeds the earlier seeded fuzzer ran are kept as explicit examples. A real
wasm plugin (HOSTILE_WAT, compiled with wasmtime.wat2wasm) passes raw,
fuzzer-chosen pointers and lengths to every host function and forges its
return areas; an oracle that knows the plugin's memory size says which
outcomes are allowed. Invariants:
- every event ends in a Verdict or a PluginFault of kind ABI or TRAP
  (everything is granted: never DENIED, never INTERNAL, never any other exception);
- a range outside linear memory (u32 overflow included) is always an ABI fault;
- a fault poisons the sandbox: its next call is refused;
- a replace verdict never carries more or other bytes than the range asked for;
- egress only ever reaches allow-listed targets.

The hostile plugin (also used by tests/test_adversarial.py):
A hostile core plugin (WAT) for the adversarial and fuzz tests.

Each on-data chunk is a command: u8 op, then six little-endian u32 arguments
a..f (25 bytes), then an optional payload. Shorter chunks pass. The plugin
hands the raw arguments to the host exactly as given, so a test (or a fuzzer)
controls every pointer and length that crosses the host-call boundary.

    1 log(a, b, c)                  2 kv.get(a, b, retptr c)
    3 kv.set(a, b, c, d)            4 kv.delete(a, b)
    5 kv.increment(a, b, delta c)   6 metadata.set(a, b, c, d)
    7 egress.send-datagram(a, b, port c, d, e, retptr f)
    8 fd_write(a, b, c, d) -> errno stored at 600
    9 random_get(a, b)             10 return retptr a (forged return area)
   11 return area at 512 = {tag a, ptr b, len c} (forged verdict; with tag 1 it
      reads any guest memory back, which the tests use to inspect the plugin)
   12 cabi_realloc returns a from now on (0: honest again)
   13 copy the payload to address a
   14 a times: log(b, c, d)                    (log flood)
   15 a times: metadata.set(key3(i) @ b, 3, c, d)  (metadata flood)
   16 a times: kv.set(key3(i) @ b, 3, c, d)        (kv key flood)
key3(i) writes three ASCII letters naming i at the address given.
Memory: 4 pages (MEMORY_BYTES), never grown; the allocator wraps around.
"""

from __future__ import annotations

import random
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import _fuzz_settings
import pytest
import wasmtime
from _host_fakes import Sent
from hypothesis import example, given
from hypothesis import strategies as st

import vmm.wasmtime_tier as wt
from vmm.capabilities import HostCapabilities
from vmm.contract import DataEvent, Direction, Verdict, VerdictKind
from vmm.kvstore import KvStore
from vmm.policy import EgressTarget, Grants, Limits, SandboxSpec
from vmm.sandbox import FaultKind, PluginFault, Sandbox

MEMORY_BYTES = 4 * 65536
VERDICT_AREA = 512
ERRNO_AT = 600
HEAP_START = 8192

HOSTILE_WAT = r"""
(module
  (import "lightcell:filter/log@0.1.0" "log" (func $log (param i32 i32 i32)))
  (import "lightcell:filter/kv@0.1.0" "get" (func $kv_get (param i32 i32 i32)))
  (import "lightcell:filter/kv@0.1.0" "set" (func $kv_set (param i32 i32 i32 i32)))
  (import "lightcell:filter/kv@0.1.0" "delete" (func $kv_del (param i32 i32)))
  (import "lightcell:filter/kv@0.1.0" "increment" (func $kv_inc (param i32 i32 i64) (result i64)))
  (import "lightcell:filter/metadata@0.1.0" "set" (func $md_set (param i32 i32 i32 i32)))
  (import "lightcell:filter/egress@0.1.0" "send-datagram"
    (func $send (param i32 i32 i32 i32 i32 i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (memory (export "memory") 4)
  (global $heap (mut i32) (i32.const 8192))
  (global $evil (mut i32) (i32.const 0))

  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (if (global.get $evil) (then (return (global.get $evil))))
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (if (i32.gt_u (i32.add (local.get $p) (local.get 3)) (i32.const 262144))
      (then (local.set $p (i32.const 8192))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (local.get $p))

  (func $key3 (param $at i32) (param $i i32)
    (i32.store8 (local.get $at) (i32.add (i32.const 65) (i32.rem_u (local.get $i) (i32.const 26))))
    (i32.store8 (i32.add (local.get $at) (i32.const 1))
      (i32.add (i32.const 65) (i32.rem_u (i32.div_u (local.get $i) (i32.const 26)) (i32.const 26))))
    (i32.store8 (i32.add (local.get $at) (i32.const 2))
      (i32.add (i32.const 65) (i32.rem_u (i32.div_u (local.get $i) (i32.const 676)) (i32.const 26)))))

  (func (export "on-open") (param i32 i32 i32 i32))
  (func (export "on-close"))

  (func (export "on-data") (param $dir i32) (param $ptr i32) (param $len i32) (param $eos i32)
      (result i32)
    (local $op i32) (local $a i32) (local $b i32) (local $c i32) (local $d i32) (local $e i32)
    (local $f i32) (local $i i32)
    (i32.store8 (i32.const 512) (i32.const 0))
    (if (i32.lt_u (local.get $len) (i32.const 25)) (then (return (i32.const 512))))
    (local.set $op (i32.load8_u (local.get $ptr)))
    (local.set $a (i32.load (i32.add (local.get $ptr) (i32.const 1))))
    (local.set $b (i32.load (i32.add (local.get $ptr) (i32.const 5))))
    (local.set $c (i32.load (i32.add (local.get $ptr) (i32.const 9))))
    (local.set $d (i32.load (i32.add (local.get $ptr) (i32.const 13))))
    (local.set $e (i32.load (i32.add (local.get $ptr) (i32.const 17))))
    (local.set $f (i32.load (i32.add (local.get $ptr) (i32.const 21))))
    (if (i32.eq (local.get $op) (i32.const 1))
      (then (call $log (local.get $a) (local.get $b) (local.get $c))))
    (if (i32.eq (local.get $op) (i32.const 2))
      (then (call $kv_get (local.get $a) (local.get $b) (local.get $c))))
    (if (i32.eq (local.get $op) (i32.const 3))
      (then (call $kv_set (local.get $a) (local.get $b) (local.get $c) (local.get $d))))
    (if (i32.eq (local.get $op) (i32.const 4))
      (then (call $kv_del (local.get $a) (local.get $b))))
    (if (i32.eq (local.get $op) (i32.const 5))
      (then (drop (call $kv_inc (local.get $a) (local.get $b) (i64.extend_i32_s (local.get $c))))))
    (if (i32.eq (local.get $op) (i32.const 6))
      (then (call $md_set (local.get $a) (local.get $b) (local.get $c) (local.get $d))))
    (if (i32.eq (local.get $op) (i32.const 7))
      (then (call $send (local.get $a) (local.get $b) (local.get $c) (local.get $d) (local.get $e)
                        (local.get $f))))
    (if (i32.eq (local.get $op) (i32.const 8))
      (then (i32.store (i32.const 600)
              (call $fd_write (local.get $a) (local.get $b) (local.get $c) (local.get $d)))))
    (if (i32.eq (local.get $op) (i32.const 9))
      (then (drop (call $random_get (local.get $a) (local.get $b)))))
    (if (i32.eq (local.get $op) (i32.const 10)) (then (return (local.get $a))))
    (if (i32.eq (local.get $op) (i32.const 11))
      (then
        (i32.store8 (i32.const 512) (local.get $a))
        (i32.store (i32.const 516) (local.get $b))
        (i32.store (i32.const 520) (local.get $c))
        (return (i32.const 512))))
    (if (i32.eq (local.get $op) (i32.const 12)) (then (global.set $evil (local.get $a))))
    (if (i32.eq (local.get $op) (i32.const 13))
      (then (memory.copy (local.get $a) (i32.add (local.get $ptr) (i32.const 25))
                         (i32.sub (local.get $len) (i32.const 25)))))
    (if (i32.eq (local.get $op) (i32.const 14))
      (then
        (local.set $i (i32.const 0))
        (block $out (loop $again
          (br_if $out (i32.ge_u (local.get $i) (local.get $a)))
          (call $log (local.get $b) (local.get $c) (local.get $d))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $again)))))
    (if (i32.eq (local.get $op) (i32.const 15))
      (then
        (local.set $i (i32.const 0))
        (block $out (loop $again
          (br_if $out (i32.ge_u (local.get $i) (local.get $a)))
          (call $key3 (local.get $b) (local.get $i))
          (call $md_set (local.get $b) (i32.const 3) (local.get $c) (local.get $d))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $again)))))
    (if (i32.eq (local.get $op) (i32.const 16))
      (then
        (local.set $i (i32.const 0))
        (block $out (loop $again
          (br_if $out (i32.ge_u (local.get $i) (local.get $a)))
          (call $key3 (local.get $b) (local.get $i))
          (call $kv_set (local.get $b) (i32.const 3) (local.get $c) (local.get $d))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $again)))))
    (i32.const 512))
)
"""


def command(op: int, *args: int, payload: bytes = b"") -> bytes:
    """One on-data chunk for the hostile plugin (missing arguments are 0)."""
    values = [a & 0xFFFFFFFF for a in args] + [0] * (6 - len(args))
    return struct.pack("<B6I", op, *values) + payload


def read_memory(ptr: int, length: int) -> bytes:
    """The command that makes the plugin answer with its own memory [ptr, ptr+length)."""
    return command(11, 1, ptr, length)


def hostile_wasm(directory: Path) -> Path:
    path = directory / "hostile.wasm"
    if not path.exists():
        path.write_bytes(wasmtime.wat2wasm(HOSTILE_WAT))
    return path


# ----------------------------------------------------------------------------- the fuzzer

ALLOWED = EgressTarget("127.0.0.1", 9125)
HOST_AT, KEY_AT = 1024, 1100  # where each new sandbox's setup puts "127.0.0.1" and "k"
SEEDS = (1, 2, 3, 0xC0FFEE)
"""The seeded fuzzer's seeds, kept as explicit examples of STEPS commands each."""
STEPS = 800
DRAWN_STEPS = 40
"""Commands per hypothesis-drawn example: short runs keep its choice sequence small enough
to shrink (tests/_fuzz_settings.py sets how many examples)."""
_U32 = 1 << 32


def fits(ptr: int, length: int) -> bool:
    return (ptr % _U32) + (length % _U32) <= MEMORY_BYTES


def signed(v: int) -> int:
    return v - _U32 if v >= 1 << 31 else v


def pick_ptr(rng: random.Random) -> int:
    return rng.choice([
        0, 1, 511, VERDICT_AREA, HOST_AT, KEY_AT, 4096, MEMORY_BYTES - 12, MEMORY_BYTES - 1,
        MEMORY_BYTES, MEMORY_BYTES + 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFF,
        rng.randrange(MEMORY_BYTES), rng.randrange(_U32),
    ])  # fmt: skip


def pick_len(rng: random.Random) -> int:
    return rng.choice([
        0, 1, 3, 4, 9, 12, 64, 4096, 65536, 65537, MEMORY_BYTES, MEMORY_BYTES + 1, 0x7FFFFFFF,
        0xFFFFFFFF, _U32 - 1024, rng.randrange(64), rng.randrange(_U32),
    ])  # fmt: skip


def pick_command(rng: random.Random) -> tuple[int, list[int]]:
    op = rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11, 12, 13, 0, 99])
    args = [pick_ptr(rng), pick_len(rng), pick_ptr(rng), pick_len(rng), pick_ptr(rng), pick_len(rng)]
    if op == 1:
        args[0] = rng.choice([0, 2, 4, 5, 0xFFFFFFFF, rng.randrange(_U32)])  # log level
    elif op == 7:
        args[0], args[1] = rng.choice([(HOST_AT, 9), (args[0], args[1])])
        args[2] = rng.choice([9125, 9, 0, 65535, 65536, 0xFFFFFFFF])  # port
    elif op == 8:
        args[0] = rng.choice([1, 2, 0, 3, 0xFFFFFFFF])  # fd
        args[2] = rng.choice([0, 1, 2, 1024, 1025, args[2]])  # iovs_len
    elif op == 11:
        args[0] = rng.choice([0, 1, 1, 2, 3, 4, 255])  # verdict tag
    elif op == 12:
        args[0] = rng.choice([0, 0, 4096, MEMORY_BYTES - 8, MEMORY_BYTES, 0xFFFFFFF0])
    elif op == 13:
        args[0] = rng.choice([2048, MEMORY_BYTES - 4, 0xFFFFFFFF])
    return op, args


def must_be_abi(op: int, a: list[int], chunk_len: int, evil: int) -> bool:
    """Whether the oracle *requires* an ABI fault for this event."""
    if evil and not fits(evil, chunk_len):
        return True  # the input itself is lowered through the forged cabi_realloc
    if op == 1:
        return not 0 <= signed(a[0]) <= 4 or not fits(a[1], a[2])
    if op in (2, 4, 5):
        return not fits(a[0], a[1]) or (op == 2 and (not fits(a[2], 12) or a[2] % 4 != 0))
    if op in (3, 6):
        return not fits(a[0], a[1]) or not fits(a[2], a[3])
    if op == 7:
        return not fits(a[0], a[1])  # the host string is read first
    if op == 9:
        return not fits(a[0], a[1])
    if op == 10:
        return not fits(a[0], 12) or a[0] % 4 != 0
    if op == 11:
        tag = a[0] & 0xFF
        return tag > 3 or (tag == 1 and not fits(a[1], a[2]))
    return False


def may_be_abi(op: int, a: list[int]) -> bool:
    if op == 11:
        return False
    if op == 8:
        return a[0] in (1, 2)  # other fds are EBADF before any pointer is looked at
    # 9 (random_get) and the return areas of 2 and 7 may overwrite the plugin's
    # own verdict area at 512 with garbage: a bad tag is then the right answer.
    return op in (1, 2, 3, 4, 5, 6, 7, 9, 10)


@pytest.fixture(scope="module")
async def hostile(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[wt.WasmtimeFactory]:
    work = tmp_path_factory.mktemp("fuzz-wasm")
    spec = SandboxSpec(
        "fuzz",
        str(hostile_wasm(work)),
        Grants(frozenset({"log", "clock", "random", "kv", "metadata", "egress"}), frozenset({ALLOWED})),
        Limits(event_cpu_ms=5000),  # a slow shared machine must not turn into BUDGET faults
    )
    factory = await wt.load(spec, work / "cache")
    yield factory
    await factory.aclose()


async def _fresh(factory: wt.WasmtimeFactory, kv: KvStore, sent: Sent) -> Sandbox:
    host = HostCapabilities("fuzz", "hostile", factory.spec.grants, factory.spec.limits, kv, sent)
    sb = await factory.new_sandbox(host)
    await sb.open("fuzz", "")
    for at, text in ((HOST_AT, b"127.0.0.1"), (KEY_AT, b"k")):
        await sb.on_data(DataEvent(Direction.READ, command(13, at, payload=text), False))
    return sb


def seeded(test: Any) -> Any:
    """A fuzz test under hypothesis: the old seeds (STEPS commands), then drawn Randoms."""
    for seed in SEEDS:
        test = example(rng=random.Random(seed), steps=STEPS)(test)
    return given(rng=st.randoms(use_true_random=False), steps=st.just(DRAWN_STEPS))(test)


@_fuzz_settings.examples(25)
@seeded
async def test_hostcall_boundary_fuzz(hostile: wt.WasmtimeFactory, rng: random.Random, steps: int) -> None:
    kv, sent = KvStore(50, 4096), Sent()
    sb = await _fresh(hostile, kv, sent)
    evil = 0
    faults: dict[FaultKind, int] = {}
    for step in range(steps):
        op, args = pick_command(rng)
        chunk = command(op, *args)
        where = f"step={step} op={op} args={[hex(a) for a in args]} evil={evil:#x}"
        try:
            verdict: Verdict | None = await sb.on_data(DataEvent(Direction.READ, chunk, False))
            fault = None
        except PluginFault as e:
            verdict, fault = None, e
        if fault is not None:
            faults[fault.kind] = faults.get(fault.kind, 0) + 1
            assert fault.kind in (FaultKind.ABI, FaultKind.TRAP), f"{where}: {fault}"
            if fault.kind is FaultKind.TRAP:
                assert op == 13 or evil, f"{where}: unexpected trap {fault}"
            else:
                assert must_be_abi(op, args, len(chunk), evil) or may_be_abi(op, args) or evil, (
                    f"{where}: ABI fault the oracle does not allow: {fault}"
                )
            with pytest.raises(PluginFault, match="poisoned"):
                await sb.on_data(DataEvent(Direction.READ, b"after the fault", False))
            await sb.close()
            sb, evil = await _fresh(hostile, kv, sent), 0
            continue
        assert verdict is not None
        assert not must_be_abi(op, args, len(chunk), evil), f"{where}: accepted, got {verdict}"
        if op == 11:
            tag = args[0] & 0xFF
            assert verdict.kind is VerdictKind(tag), where
            if tag == 1:
                assert len(verdict.data) == args[2], where
        elif op not in (2, 7, 8, 9, 10):  # those may write their results over the verdict area
            # metadata.set (6, 15) attaches what it set; the chunk itself passes.
            assert (verdict.kind, verdict.data) == (VerdictKind.PASS, b""), where
        if op == 12:
            evil = args[0]
    await sb.close()
    assert all(target == ALLOWED for target, _ in sent.datagrams)
    if steps == STEPS:  # a long seeded run did reach the checks
        assert faults.get(FaultKind.ABI, 0) > STEPS // 10
    assert len(kv._data) <= 50


async def test_replace_verdict_reads_exactly_the_range(hostile: wt.WasmtimeFactory) -> None:
    """The forged-verdict read primitive returns the bytes asked for, no more."""
    kv, sent = KvStore(50, 4096), Sent()
    sb = await _fresh(hostile, kv, sent)
    secret = bytes(range(256))
    await sb.on_data(DataEvent(Direction.READ, command(13, MEMORY_BYTES - 256, payload=secret), False))
    got = await sb.on_data(DataEvent(Direction.READ, read_memory(MEMORY_BYTES - 256, 256), False))
    assert got == Verdict.replace(secret)
    # One byte more crosses the end of memory: refused, and nothing leaks.
    with pytest.raises(PluginFault) as info:
        await sb.on_data(DataEvent(Direction.READ, read_memory(MEMORY_BYTES - 256, 257), False))
    assert info.value.kind is FaultKind.ABI
    await sb.close()
