"""The guest's wasm runtime (guest/runtime) and contract glue, run through the
host-native harness: real plugins built from source, compiled by wasm2c and
zig exactly as for the micro-VM, with native_shim.c standing in for boot/."""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from _host_fakes import Sent
from aot_support import ALL_GRANTS, Compiler, host

from devtools.native import NativeInstance, Op, Status
from vmm.kvstore import KvStore
from vmm.microvm.abi import HostFn
from vmm.microvm.hostcalls import LOG_GRANT_CHECK
from vmm.policy import EgressTarget

READ, WRITE = 0, 1
PASS, REPLACE, CLOSE, RESET = 0, 1, 2, 3
TRAP_UNREACHABLE, TRAP_OOB, TRAP_EXHAUSTION = 1, 2, 7
ABI_BAD_POINTER, ABI_BAD_VERDICT, ABI_BAD_REQUEST, ABI_TOO_LARGE = 1, 2, 3, 4
ABI_NO_LEAVE, ABI_UNALIGNED = 7, 8


@pytest.fixture(scope="session")
def compiler(tmp_path_factory: pytest.TempPathFactory) -> Compiler:
    return Compiler(tmp_path_factory.mktemp("aot"))


@pytest.fixture(scope="session")
def lib(compiler: Compiler) -> Callable[[str], Path]:
    """name -> native library; names are example plugins or WAT fixtures ("wat:multi")."""

    def get(name: str) -> Path:
        wasm = compiler.wasm_of_wat(name[4:]) if name.startswith("wat:") else compiler.example(name)
        return compiler.native(wasm).image

    return get


def started(lib: Path, config: str, grants: frozenset[str] = ALL_GRANTS, **kw: object) -> NativeInstance:
    inst = NativeInstance(lib, host(grants, **kw))  # type: ignore[arg-type]
    assert inst.init_result.status == Status.OK
    assert inst.open("test-listener", config).status == Status.OK
    return inst


# --- real plugins ---------------------------------------------------------------


def test_rewrite_transforms_and_verdicts(lib: Callable[[str], Path]) -> None:
    inst = started(lib("rewrite"), "read=upper,write=rot13")
    assert inst.data(READ, b"hello world") == (Status.OK, REPLACE, b"HELLO WORLD")
    assert inst.data(WRITE, b"hello") == (Status.OK, REPLACE, b"uryyb")
    assert inst.data(READ, b"", eos=True).detail == PASS
    assert inst.data(READ, b"x !close y").detail == CLOSE
    assert inst.data(READ, b"x !reset y").detail == RESET
    assert inst.close().status == Status.OK


def test_rewrite_number_state_is_per_instance(lib: Callable[[str], Path]) -> None:
    first = started(lib("rewrite"), "read=number")
    assert first.data(READ, b"a").data == b"1:a"
    assert first.data(READ, b"b").data == b"2:b"
    second = started(lib("rewrite"), "read=number")
    assert second.data(READ, b"c").data == b"1:c"


def test_large_chunk_round_trip(lib: Callable[[str], Path]) -> None:
    inst = started(lib("rewrite"), "read=rot13")
    chunk = bytes(range(256)) * 256  # 64 KiB
    res = inst.data(READ, chunk)
    assert res.status == Status.OK and len(res.data) == len(chunk)
    assert inst.data(READ, res.data).data == chunk  # rot13 twice is the identity


def test_replace_larger_than_out_buffer_is_abi(lib: Callable[[str], Path]) -> None:
    inst = NativeInstance(lib("rewrite"), host(), out_cap=1024)
    inst.open("l", "read=upper")
    assert inst.data(READ, b"a" * 1008) == (Status.OK, REPLACE, b"A" * 1008)
    assert inst.data(READ, b"a" * 1009) == (Status.ABI, ABI_TOO_LARGE, b"")


@pytest.mark.parametrize(
    ("call", "expected"),
    [("log", b"log=ok\n"), ("metadata", b"metadata=ok\n"), ("kv", b"kv=1\n"), ("none", b"none=ok\n")],
)
def test_probe_granted(lib: Callable[[str], Path], call: str, expected: bytes) -> None:
    inst = started(lib("probe"), f"call={call}")
    assert inst.data(READ, b"x") == (Status.OK, REPLACE, expected)


def test_probe_clock_and_random(lib: Callable[[str], Path]) -> None:
    inst = started(lib("probe"), "call=clock")
    out = inst.data(READ, b"x").data
    assert out.startswith(b"clock=") and int(out[6:-1]) > 1_600_000_000 * 10**9
    inst = started(lib("probe"), "call=random")
    a, b = inst.data(READ, b"x").data, inst.data(READ, b"x").data
    assert a.startswith(b"random=") and a != b


def test_probe_kv_is_shared_between_instances(lib: Callable[[str], Path]) -> None:
    kv = KvStore(100, 1024)
    for n in (1, 2, 3):
        inst = started(lib("probe"), "call=kv", kv=kv)
        assert inst.data(READ, b"x").data == f"kv={n}\n".encode()
    assert kv.get("probe-last") == b"3"


def test_probe_egress(lib: Callable[[str], Path]) -> None:
    sent = Sent()
    target = EgressTarget("127.0.0.1", 9125)
    inst = started(lib("probe"), "call=egress", egress=frozenset({target}), sent=sent)
    assert inst.data(READ, b"ping").data == b"egress=ok\n"
    assert sent.datagrams == [(target, b"ping")]
    inst = started(lib("probe"), "call=egress:10.0.0.1:53", egress=frozenset({target}), sent=sent)
    assert inst.data(READ, b"ping").data == b"egress=err0\n"  # denied: not in the allow list


@pytest.mark.parametrize("call", ["log", "clock", "random", "kv", "metadata", "egress"])
def test_probe_ungranted_is_denied(lib: Callable[[str], Path], call: str) -> None:
    inst = started(lib("probe"), f"call={call}", grants=ALL_GRANTS - {call})
    res = inst.data(READ, b"x")
    assert res.status == Status.DENIED and res.data == b""


def test_faulty_trap(lib: Callable[[str], Path]) -> None:
    inst = started(lib("faulty"), "mode=trap;after=2")
    assert inst.data(READ, b"x") == (Status.OK, PASS, b"")
    assert inst.data(READ, b"x") == (Status.TRAP, TRAP_UNREACHABLE, b"")


def test_faulty_grow_hits_the_memory_cap(lib: Callable[[str], Path]) -> None:
    inst = NativeInstance(lib("faulty"), host(), heap_bytes=4 << 20)
    assert inst.open("l", "mode=grow").status == Status.OK
    res = inst.data(READ, b"x")
    assert res.status == Status.MEMORY


def test_initial_memory_larger_than_heap_fails_init(lib: Callable[[str], Path]) -> None:
    inst = NativeInstance(lib("rewrite"), host(), heap_bytes=64 << 10)
    assert inst.init_result.status == Status.MEMORY


def test_warmup_touches_linear_memory(lib: Callable[[str], Path]) -> None:
    inst = started(lib("rewrite"), "")
    res = inst.request(Op.WARMUP)
    assert res.status == Status.OK and res.detail >= 16  # at least one wasm page of 4 KiB pages
    assert inst.data(READ, b"still works").data == b"STILL WORKS"


# --- WAT fixtures: contract violations real plugins never commit ------------------


@pytest.mark.parametrize(
    ("mode", "status", "detail"),
    [
        ("b", Status.ABI, ABI_BAD_POINTER),  # return area out of bounds
        ("o", Status.ABI, ABI_BAD_POINTER),  # replace pointer past the end
        ("O", Status.ABI, ABI_BAD_POINTER),  # replace length wraps around
        ("v", Status.ABI, ABI_BAD_VERDICT),  # verdict tag 9
        ("t", Status.TRAP, TRAP_UNREACHABLE),
        ("g", Status.MEMORY, TRAP_UNREACHABLE),  # grows until refused, then traps
    ],
)
def test_multi_faults(lib: Callable[[str], Path], mode: str, status: int, detail: int) -> None:
    inst = NativeInstance(lib("wat:multi"), host(), heap_bytes=2 << 20)
    inst.open("l", mode)
    assert inst.data(READ, b"x") == (status, detail, b"")


def test_multi_kv_get_allocates_in_guest(lib: Callable[[str], Path]) -> None:
    kv = KvStore(10, 1 << 16)
    kv.set("key", b"value-bytes")
    inst = started(lib("wat:multi"), "Gkey", kv=kv)
    assert inst.data(READ, b"x").data == b"value-bytes"
    inst = started(lib("wat:multi"), "Gmissing", kv=kv)
    assert inst.data(READ, b"x").data == b"none"


def test_multi_close_reset_and_state(lib: Callable[[str], Path]) -> None:
    assert started(lib("wat:multi"), "C").data(READ, b"x").detail == CLOSE
    assert started(lib("wat:multi"), "R").data(READ, b"x").detail == RESET
    inst = started(lib("wat:multi"), "n")
    assert [inst.data(READ, b"q").data for _ in range(3)] == [b"1:q", b"2:q", b"3:q"]


def test_wasi_fd_write_becomes_log_lines(
    lib: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    inst = started(lib("wat:wasi"), "")
    with caplog.at_level(logging.INFO, logger="lightcell.plugin"):
        assert inst.data(READ, b"line one\nline ").detail == PASS
        assert inst.data(READ, b"two\n").detail == PASS
    lines = [r.getMessage() for r in caplog.records if r.name == "lightcell.plugin"]
    # A partial line is logged at the end of the hook, as in the wasmtime tier.
    assert [m.split("] ", 1)[1] for m in lines] == ["line one", "line ", "two"]


def test_wasi_fd_write_needs_log_grant(lib: Callable[[str], Path]) -> None:
    inst = started(lib("wat:wasi"), "", grants=frozenset())
    assert inst.data(READ, b"x").status == Status.DENIED


def test_wasi_proc_exit_clock_random(lib: Callable[[str], Path]) -> None:
    assert started(lib("wat:wasi"), "x").data(READ, b"a") == (Status.EXIT, 3, b"")
    inst = started(lib("wat:wasi"), "c", grants=frozenset({"log", "clock"}))
    assert inst.data(READ, b"a").status == Status.OK
    # fd_write asks for the `log` grant first (a LOG call that logs nothing), the line follows
    calls = [(c[0], c[1]) for c in inst.hostcalls]
    assert calls == [(HostFn.WALL_NOW, 0), (HostFn.LOG, LOG_GRANT_CHECK), (HostFn.LOG, 2)]
    inst = started(lib("wat:wasi"), "r", grants=frozenset({"log"}))
    assert inst.data(READ, b"a").status == Status.DENIED  # random not granted


def test_wasi_log_plugin(lib: Callable[[str], Path], caplog: pytest.LogCaptureFixture) -> None:
    inst = started(lib("wasi-log"), "")
    with caplog.at_level(logging.INFO, logger="lightcell.plugin"):
        assert inst.data(READ, b"hello").status == Status.OK
    assert any(r.name == "lightcell.plugin" for r in caplog.records)


# --- requests from the host are checked too ---------------------------------------


def test_request_lengths_are_checked(lib: Callable[[str], Path]) -> None:
    inst = started(lib("rewrite"), "")
    hdr = struct.pack("<IIII", Op.DATA, 0, 0, 100)
    assert inst.raw_request(hdr, in_cap=16 + 99) == (Status.ABI, ABI_BAD_REQUEST, b"")
    assert inst.raw_request(struct.pack("<IIII", Op.DATA, 0, 0, 0xFFFFFFFF)).status == Status.ABI
    assert inst.raw_request(struct.pack("<IIII", 99, 0, 0, 0)).status == Status.ABI
    assert inst.raw_request(struct.pack("<IIII", Op.DATA, 2, 0, 0)).status == Status.ABI
    assert inst.raw_request(struct.pack("<IIII", Op.OPEN, 5, 5, 4)).status == Status.ABI
    assert inst.raw_request(struct.pack("<IIII", Op.OPEN, 0xFFFFFFFF, 1, 0)).status == Status.ABI
    assert inst.data(READ, b"ok").data == b"OK"  # the instance still works


def test_host_misuse_is_abi(lib: Callable[[str], Path]) -> None:
    assert started(lib("wat:multi"), "Ské").data(READ, b"v").status == Status.OK
    inst = NativeInstance(lib("wat:multi"), host())
    inst.request(Op.OPEN, 0, 3, b"S\xff\xfe")  # kv.set(key: not UTF-8, chunk)
    assert inst.data(READ, b"v").status == Status.ABI


IMPORT_FROM_REALLOC = """
(module
  (import "lightcell:filter/log@0.1.0" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (call $log (i32.const 2) (i32.const 0) (i32.const 0))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get 3)))
    (local.get $p))
  (func (export "on-open") (param i32 i32 i32 i32))
  (func (export "on-data") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
  (func (export "on-close"))
)
"""

UNALIGNED_AND_DEEP = """
(module
  (import "lightcell:filter/kv@0.1.0" "get" (func $get (param i32 i32 i32)))
  (memory (export "memory") 1)
  (global $mode (mut i32) (i32.const 0))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096))
  (func (export "on-open") (param i32 i32 i32 i32) (global.set $mode (local.get 3)))
  (func $rec (param i32) (result i32) (i32.add (call $rec (local.get 0)) (i32.const 1)))
  (func (export "on-data") (param i32 i32 i32 i32) (result i32)
    (if (i32.eq (global.get $mode) (i32.const 1)) (then (return (i32.const 1026))))
    (if (i32.eq (global.get $mode) (i32.const 2))
      (then (call $get (i32.const 0) (i32.const 1) (i32.const 1030))))
    (if (i32.eq (global.get $mode) (i32.const 3)) (then (drop (call $rec (i32.const 0)))))
    (if (i32.eq (global.get $mode) (i32.const 4)) (then (drop (i32.load (i32.const 65534)))))
    (i32.const 1024))
  (func (export "on-close"))
)
"""


def test_import_from_realloc_is_refused(compiler: Compiler) -> None:
    image = compiler.native(compiler.wasm_of_wat("from_realloc", IMPORT_FROM_REALLOC)).image
    inst = NativeInstance(image, host())
    assert inst.open("l", "") == (Status.ABI, ABI_NO_LEAVE, b"")
    assert inst.hostcalls == []


@pytest.mark.parametrize(
    ("config", "status", "detail"),
    [
        ("x", Status.ABI, ABI_UNALIGNED),  # config length 1: return area at 1026
        ("xx", Status.ABI, ABI_UNALIGNED),  # kv.get return area at 1030
        ("xxx", Status.TRAP, TRAP_EXHAUSTION),  # unbounded recursion
        ("xxxx", Status.TRAP, TRAP_OOB),  # i32.load past the end of memory
    ],
)
def test_alignment_depth_and_bounds(compiler: Compiler, config: str, status: int, detail: int) -> None:
    image = compiler.native(compiler.wasm_of_wat("unaligned", UNALIGNED_AND_DEEP)).image
    inst = NativeInstance(image, host())
    assert inst.open("l", config).status == Status.OK
    assert inst.data(READ, b"x") == (status, detail, b"")
    assert inst.data(READ, b"x") == (status, detail, b"")  # and again: state was reset
