"""A hostile plugin against the guest's WASI 0.2 (guest/runtime/wasip2*.c) in real micro-VMs.

The plugin (generated WAT) imports every function wasip2.h declares and, per
chunk, calls the one the chunk selects with the chunk's bytes as its flat
arguments: random handles (small numbers hit live ones), pointers in and out
of its memory, huge lengths, bad enum values. Every event must end as the
contract allows (a verdict, or a fault the plugin earned: ABI, DENIED, TRAP,
BUDGET, MEMORY), never as an internal error, and the next connection must
start clean (a fresh VM restored from the snapshot).
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
import wasmtime

from vmm.capabilities import HostCapabilities
from vmm.contract import DataEvent, Direction
from vmm.kvstore import KvStore
from vmm.metrics import Metrics
from vmm.microvm import tier as microvm_tier
from vmm.microvm.wasip2_gen import WasiFunc, declared
from vmm.policy import CAPABILITIES, EgressTarget, Grants, Limits, SandboxSpec
from vmm.sandbox import FaultKind, PluginFault

pytestmark = pytest.mark.kvm

SEEDS = (1, 2, 3)
CONNECTIONS = 80
EVENTS = 25
ARG_SLOTS = 16
LIMITS = Limits(memory_bytes=1 << 20, event_cpu_ms=100)
ALLOWED = EgressTarget("127.0.0.1", 9)  # discard
EARNED = {FaultKind.ABI, FaultKind.DENIED, FaultKind.TRAP, FaultKind.BUDGET, FaultKind.MEMORY}
_WASM = {"uint32_t": "i32", "uint64_t": "i64", "float": "f32", "double": "f64"}


def _functions() -> list[WasiFunc]:
    return [declared()[key] for key in sorted(declared())]


def _wat(funcs: list[WasiFunc]) -> str:
    lines = ["(module"]
    for i, f in enumerate(funcs):
        params = " ".join(_WASM[t] for t, _ in f.params)
        result = f" (result {_WASM[f.result]})" if f.result != "void" else ""
        ptxt = f" (param {params})" if params else ""
        lines.append(f'  (import "{f.module}@0.2.9" "{f.name}" (func $f{i}{ptxt}{result}))')
    lines += [
        '  (memory (export "memory") 2)',
        "  (global $bump (mut i32) (i32.const 65536))",
        # cabi_realloc: a bump allocator in the second page, trapping when full
        '  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (local $at i32)',
        "    (local.set $at (i32.and (i32.add (global.get $bump) (i32.sub (local.get 2) (i32.const 1)))",
        "                            (i32.sub (i32.const 0) (local.get 2))))",
        "    (if (i32.gt_u (i32.add (local.get $at) (local.get 3)) (i32.const 131072)) (then unreachable))",
        "    (global.set $bump (i32.add (local.get $at) (local.get 3)))",
        "    (local.get $at))",
        '  (func (export "on-open") (param i32 i32 i32 i32))',
        '  (func (export "on-close"))',
        '  (func (export "on-data") (param $dir i32) (param $p i32) (param $len i32) (param $eos i32)'
        " (result i32)",
        "    (global.set $bump (i32.const 65536))",
        "    (if (i32.lt_u (local.get $len) (i32.const 136)) (then (return (i32.const 1024))))",
    ]
    # block nesting for br_table: the innermost block is case 0
    lines += ["    " + "(block " * len(funcs) + "(block"]
    targets = " ".join(str(i) for i in range(len(funcs)))
    selector = f"(i32.rem_u (i32.load (local.get $p)) (i32.const {len(funcs)}))"
    lines.append(f"      (br_table {targets} {selector}))")
    for i, f in enumerate(funcs):
        args = []
        for k, (t, _) in enumerate(f.params):
            args.append(f"({_WASM[t]}.load offset={8 + 8 * k} (local.get $p))")
        call = f"(call $f{i} {' '.join(args)})"
        if f.result != "void":
            call = f"(drop {call})"
        lines.append(f"    {call} (return (i32.const 1024)))")
    lines += ["    (i32.const 1024))", ")"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz-wasip2") / "hostile.wasm"
    path.write_bytes(wasmtime.wat2wasm(_wat(_functions())))
    return path


_PLAUSIBLE = (0, 1, 2, 3, 4, 5, 16, 64, 2048, 4096, 8192)  # small handles and lengths, aligned pointers
_HOSTILE = (6, 255, 1024 + 2, 65535, 65536, 70000, 131068, 0xFFFFFFFF, 0xFFFFFFF0)


def _chunk(rng: random.Random, funcs: list[WasiFunc]) -> bytes:
    slots = []
    for _ in range(ARG_SLOTS):
        r = rng.random()
        if r < 0.9:
            v = rng.choice(_PLAUSIBLE)
        else:
            v = rng.choice(_HOSTILE) if r < 0.95 else rng.randrange(1 << rng.choice((8, 17, 32, 64)))
        slots.append(v & 0xFFFFFFFFFFFFFFFF)
    # Functions taking no handle make the handles (1, 2, ...) the others then use: pick them often.
    makers = [i for i, f in enumerate(funcs) if not f.name.startswith(("[method]", "[resource-drop]"))]
    pick = rng.choice(makers) if rng.random() < 0.4 else rng.randrange(len(funcs))
    return struct.pack("<II", pick, 0) + b"".join(struct.pack("<Q", v) for v in slots)


@pytest.mark.parametrize("seed", SEEDS)
async def test_hostile_wasip2_calls_end_as_the_contract_allows(plugin: Path, seed: int) -> None:
    rng = random.Random(seed)
    funcs = _functions()
    spec = SandboxSpec("fuzz", str(plugin), Grants(CAPABILITIES, frozenset({ALLOWED})), LIMITS, "")
    factory = await microvm_tier.load(spec, pool_size=1)
    seen: dict[str, int] = {}
    try:
        for conn in range(CONNECTIONS):
            grants = CAPABILITIES if conn % 2 == 0 else frozenset()
            host = HostCapabilities("fuzz", "hostile", Grants(grants, frozenset({ALLOWED})), LIMITS,
                                    KvStore(10, 1024), None, Metrics())
            sandbox = await factory.new_sandbox(host)
            try:
                await sandbox.open("fuzz", "")
                for _ in range(EVENTS):
                    verdict = await sandbox.on_data(DataEvent(Direction.READ, _chunk(rng, funcs), False))
                    seen[verdict.kind.name] = seen.get(verdict.kind.name, 0) + 1
            except PluginFault as fault:
                assert fault.kind in EARNED, f"seed={seed} conn={conn}: {fault}"
                seen[fault.kind.name] = seen.get(fault.kind.name, 0) + 1
            finally:
                await sandbox.close()
    finally:
        await factory.aclose()
    # the fuzzer reached both sides: calls that returned, and refusals
    assert seen.get("PASS", 0) > 0 and seen.get("ABI", 0) > 0, seen
