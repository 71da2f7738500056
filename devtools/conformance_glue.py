"""C glue for the conformance runner: one spec-test module set in one image.

For module K (wasm2c -n mK) glue_K.c defines its instance, forwards each of
its imports (to the `spectest` host module of conformance.c, or to an
export of the module registered under that name), instantiates it and
invokes its exports with arguments and results passed as u64 slots (v128
takes two). conf_glue.c dispatches (module, export) to them. C names are read
back from wasm2c's headers, never re-derived (name mangling); wasm names come
from the binary (devtools/wasm_binary.py), never from the header comments,
which print them unescaped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from devtools.wasm_binary import FUNC, TAG, Export, ModuleInfo
from vmm.microvm import bind
from vmm.microvm.compile import CompileError

__all__ = ["Module", "dispatch_glue", "module_glue"]

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
class Module:
    index: int
    wasm: Path
    imports_from: dict[str, int]  # registered name -> module index, only the names it imports from
    info: ModuleInfo | None = None
    validate_only: bool = False  # `(module definition ...)`: translated, never built or instantiated
    ok: bool = False
    why: str = ""
    cause: str = ""  # why it is not ok: a conformance_result cause
    exports: dict[str, int] = field(default_factory=dict)


def _decls(header: str, kind: str) -> list[tuple[str, bind.CDecl | None]]:
    """[(comment text, declaration)] for each import/export comment, in order."""
    out: list[tuple[str, bind.CDecl | None]] = []
    lines = header.split("\n")  # not splitlines(): names may hold \x1c, \x85, U+2028 ...
    prefix = f"/* {kind}: "
    for i, line in enumerate(lines[:-1]):
        line = line.strip(" ")
        if not (line.startswith(prefix) and line.endswith(" */")):
            continue
        text = line[len(prefix):-3]
        nxt = lines[i + 1].strip()
        d = _DECL.match(nxt)
        f = _FIELD.match(nxt)
        decl = None
        if f and kind == "import":  # memory/table/global: a pointer field, filled by an accessor
            decl = bind.CDecl(f.group("type").strip() + "*", f.group("name"), ())
        elif d:
            params = [p.strip() for p in d.group("params").split(",") if p.strip()]
            decl = bind.CDecl(d.group("ret").strip(), d.group("name"), tuple(params[1:]))
        out.append((text, decl))
    return out


def export_decls(header: str, info: ModuleInfo) -> list[tuple[Export, bind.CDecl | None]]:
    """The binary's exports with their C declarations: wasm2c writes one export
    comment per export, in the export section's order (tags excepted)."""
    exports = [e for e in info.exports if e.kind != TAG]
    decls = _decls(header, "export")
    if len(decls) != len(exports):
        raise CompileError(f"{len(decls)} exports in the header, {len(exports)} in the binary")
    for e, (_, d) in zip(exports, decls, strict=True):
        if d is not None and (e.kind == FUNC) == d.ret.endswith("*"):
            raise CompileError(f"export {e.name!r}: header declaration {d.name} of another kind")
    return [(e, d) for e, (_, d) in zip(exports, decls, strict=True)]


def _import_names(text: str, info: ModuleInfo) -> tuple[str, str]:
    """(module, name) of an import comment: the binary's import it prints (unescaped)."""
    for imp in info.imports:
        if text == f"'{imp.module}' '{imp.name}'":
            return imp.module, imp.name
    raise CompileError(f"import comment {text!r} matches no import of the binary")


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


def module_glue(mod: Module, header: str, c_text: str, headers: dict[int, str],
                infos: dict[int, ModuleInfo]) -> str:
    """glue_K.c: module K's instance, import adapters, instantiate and invoke."""
    k = mod.index
    inc = [f'#include "m{k}.h"'] + [f'#include "m{j}.h"' for j in sorted(set(mod.imports_from.values()))]
    out = ["/* Generated by devtools/conformance.py */", *inc, '#include "lc_rt.h"', "",
           "#ifndef LC_CONF_PRELUDE", "#define LC_CONF_PRELUDE", _GLUE_PRELUDE,
           "static inline v128 lc_conf_v128(const u64 *p) { v128 v; __builtin_memcpy(&v, p, 16); return v; }"
           if "typedef simde_v128_t v128;" in header else "", "#endif",
           "extern wasm_rt_memory_t lc_spectest_memory;",
           "extern wasm_rt_funcref_table_t lc_spectest_table, lc_spectest_table64;",
           "extern u32 lc_spectest_global_i32; extern u64 lc_spectest_global_i64;",
           "extern f32 lc_spectest_global_f32; extern f64 lc_spectest_global_f64;",
           *(f"void {fn}();" for fn in _SPECTEST.values()),
           f"w2c_m{k} lc_conf_inst_{k};",
           *(f"extern w2c_m{j} lc_conf_inst_{j};" for j in sorted(set(mod.imports_from.values()))), ""]
    struct_of_module: dict[str, str] = {}
    assert mod.info is not None
    for text, decl in _decls(header, "import"):
        if decl is None:
            raise CompileError(f"cannot read import {text}")
        module, name = _import_names(text, mod.info)
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
            target = {e.name: d for e, d in export_decls(headers[j], infos[j])}.get(name)
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
    for e, (export, decl) in enumerate(export_decls(header, mod.info)):
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
        mod.exports[export.name] = e
        cases.append(f"  case {e}: {{ if (nargs != {nargs} || cap < {nres}) lc_fail(LC_STATUS_ABI, 3);\n"
                     f"    {' '.join(lines)}\n    return {nres}; }}")
    out.append(f"uint32_t lc_conf_invoke_{k}(uint32_t e, const u64 *args, uint32_t nargs, u64 *results,"
               " uint32_t cap) {\n  (void)args; (void)results;\n  switch (e) {\n" + "\n".join(cases)
               + "\n  }\n  lc_fail(LC_STATUS_ABI, 3);\n}")
    return "\n".join(out) + "\n"


def dispatch_glue(modules: Iterable[Module]) -> str:
    ok = [m.index for m in modules if m.ok]
    out = ["/* Generated by devtools/conformance.py */", '#include "lc_rt.h"']
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
