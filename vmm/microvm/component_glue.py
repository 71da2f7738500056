"""Generate glue.c: a whole component's core instances, wired, behind lc_bind_*.

Input: the component's graph (component_parse.py) and, per instantiated core
module, the header wasm2c wrote for it (`-n lcmod<N>`). Output: one C file
that the compiler checks against every header:

- one `w2c_lcmod<N>` per core instance, instantiated in the component's order
  (`lc_bind_instantiate`); each import-module argument is a
  `struct w2c_<module> { uint32_t from; }` naming the importing instance, so
  the import functions wasm2c declares once per (module, name) dispatch on
  the importer to what the component wired there: another instance's export
  (function, memory, table, global), a `canon lower`, or a resource built-in;
- `canon lower` of a lightcell:filter import: the existing implementation
  (imports.c) run with the lowering's memory and realloc made current
  (lc_canon_enter/leave); of a WASI 0.2 import: the wasip2.h function of the
  name lc_canon.h defines, given the lowering's `struct lc_canon`, or a stub
  that denies when the guest does not implement it; `resource.drop` of an
  imported WASI resource likewise; `resource.new/rep/drop` of a resource the
  component defines: the guest's handle table (component.c lc_res_*), each
  handle checked against its type, drop calling the resource's destructor;
- the contract's exports (`canon lift`) as bind.contract_bindings expects,
  with the lift's memory and realloc as the current context.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from vmm.contract import (
    EXPORT_MEMORY,
    EXPORT_ON_CLOSE,
    EXPORT_ON_DATA,
    EXPORT_ON_OPEN,
    EXPORT_POST_PREFIX,
    EXPORT_REALLOC,
    EXPORT_WANTED_PHASES,
    HTTP_HOOKS,
    HTTP_WORLD,
    TCP_WORLD,
)
from vmm.microvm import bind
from vmm.microvm.bind import BindError, CDecl
from vmm.microvm.component_parse import (
    FUNC,
    GLOBAL,
    MEMORY,
    TABLE,
    CanonOpts,
    Component,
    ComponentFormatError,
    CoreRef,
    DefinedType,
)
from vmm.microvm.component_types import defined_resource

__all__ = ["GlueError", "ModuleHeader", "generate_glue", "module_c_name", "wasip2_name", "world_exports"]

WASIP2_PREFIX = "lc_wasip2_"


class GlueError(BindError):
    """The component's wiring cannot be expressed (the message says why)."""


def module_c_name(index: int) -> str:
    """wasm2c's -n name for core module `index`: lcmod<N> (unlikely to equal a
    mangled import-module struct name)."""
    return f"lcmod{index}"


@dataclass(frozen=True, slots=True)
class ModuleHeader:
    imports: dict[tuple[str, str], CDecl]
    exports: dict[str, CDecl]
    params: list[str]  # instantiate's parameter types after the instance
    import_structs: dict[str, str]  # import module -> its `struct w2c_...` type


def read_header(header: str, index: int) -> ModuleHeader:
    name = module_c_name(index)
    imports, exports, _ = bind.parse_header(header, name)
    params = bind.instantiate_params(header, name)[1:]
    structs: dict[str, str] = {}
    for (module, _n), decl in imports.items():
        m = re.search(re.escape(decl.name) + r"\((struct \w+)\*", header)
        if not m:
            raise GlueError(f"cannot find the instance type of {decl.name}")
        structs[module] = m.group(1)
    return ModuleHeader(imports, exports, params, structs)


def wasip2_name(interface: str, func: str) -> str | None:
    """The C name (lc_canon.h) of a WASI 0.2 function, None if not WASI."""
    if not interface.startswith("wasi:"):
        return None
    iface = interface[len("wasi:"):].split("@", 1)[0]
    for tag, word in (("[method]", "method_"), ("[static]", "static_"), ("[constructor]", "constructor_"),
                      ("[resource-drop]", "resource_drop_")):
        if func.startswith(tag):
            func = word + func[len(tag):]
    return WASIP2_PREFIX + re.sub(r"[^0-9A-Za-z_]", "_", f"{iface}_{func}")


def world_exports(world: str) -> tuple[str, ...]:
    if world == TCP_WORLD:
        return (EXPORT_ON_OPEN, EXPORT_ON_DATA, EXPORT_ON_CLOSE)
    return (EXPORT_WANTED_PHASES, EXPORT_ON_OPEN, *HTTP_HOOKS.values(), EXPORT_ON_CLOSE)


_KIND_OF_RET = {"wasm_rt_memory_t*": MEMORY, "wasm_rt_funcref_table_t*": TABLE,
                "wasm_rt_externref_table_t*": TABLE}


def _kind(decl: CDecl) -> int:
    if decl.ret in _KIND_OF_RET:
        return _KIND_OF_RET[decl.ret]
    return GLOBAL if decl.ret.endswith("*") else FUNC


def _args(decl: CDecl) -> tuple[str, str]:
    """(parameter list, argument list) for decl's parameters after the instance."""
    params = ", ".join(f"{t} a{i}" for i, t in enumerate(decl.params)) or "void"
    return params, ", ".join(f"a{i}" for i in range(len(decl.params)))


class _Gen:
    def __init__(self, comp: Component, headers: Mapping[int, ModuleHeader], world: str,
                 wasip2: frozenset[str]) -> None:
        self.c = comp
        self.h = headers
        self.world = world
        self.wasip2 = wasip2
        self.defs: list[str] = []
        self.canon: dict[tuple[int | None, int | None], str] = {}  # (memory, realloc) -> ctx var
        self.canon_memory: dict[str, tuple[int, str]] = {}  # ctx var -> memory (instance, export)
        self.lowered: dict[int, str] = {}  # core func index -> generated C function
        self.resource_ids: dict[int, int] = {}  # defined resource type index -> its handle-table id

    # --- resolution -----------------------------------------------------
    def module_of(self, inst: int) -> int:
        kind, module, _ = self.c.core_instances[inst]
        if kind != "instantiate" or module is None:
            raise GlueError(f"core instance {inst} is not an instantiated module")
        return module

    def inst_export(self, inst: int, name: str, sort: int) -> tuple[str, int, object]:
        """("export", instance, CDecl) | ("ref", core func index, CoreRef)."""
        if inst >= len(self.c.core_instances):
            raise GlueError(f"core instance {inst} out of range")
        kind, _, items = self.c.core_instances[inst]
        if kind == "instantiate":
            decl = self.h[self.module_of(inst)].exports.get(name)
            if decl is None:
                raise GlueError(f"core instance {inst} has no export {name!r}")
            return "export", inst, decl
        entry = items.get(name)
        if not isinstance(entry, tuple) or entry[0] != sort:
            raise GlueError(f"core instance {inst} has no {sort}-export {name!r}")
        return self.core_ref(sort, entry[1])

    def core_ref(self, sort: int, index: int) -> tuple[str, int, object]:
        space = self.c.core[sort]
        if index >= len(space):
            raise GlueError(f"core index {index} out of range")
        ref = space[index]
        if ref.kind == "export":
            return self.inst_export(ref.target, ref.name, sort)
        return "ref", index, ref

    def call_export(self, inst: int, decl: CDecl, args: str) -> str:
        return f"{decl.name}(&g_i{inst}{', ' + args if args else ''})"

    # --- canonical-ABI contexts --------------------------------------------
    def context(self, opts: CanonOpts) -> str:
        key = (opts.memory, opts.realloc)
        if key in self.canon:
            return self.canon[key]
        var = f"g_canon{len(self.canon)}"
        realloc = "0"
        if opts.realloc is not None:
            kind, inst, decl = self.core_ref(FUNC, opts.realloc)
            if kind != "export" or not isinstance(decl, CDecl) or len(decl.params) != 4:
                raise GlueError("a canonical realloc that is not a module export of 4 parameters")
            realloc = f"{var}_realloc"
            self.defs.append(
                f"static uint32_t {realloc}(void *u, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {{\n"
                f"    (void)u;\n    return {self.call_export(inst, decl, 'a, b, c, d')};\n}}\n"
            )
        if opts.memory is not None:
            kind, inst, decl = self.core_ref(MEMORY, opts.memory)
            if kind != "export" or not isinstance(decl, CDecl):
                raise GlueError("a canonical memory that is not a module export")
            self.canon_memory[var] = (inst, self.call_export(inst, decl, ""))
        self.defs.append(f"static struct lc_canon {var} = {{0, {realloc}, 0}};\n")
        self.canon[key] = var
        return var

    # --- lowered imports ---------------------------------------------------
    def lowered_func(self, index: int, ref: CoreRef, decl: CDecl) -> str:
        """The C function (decl's core signature) behind core func `index`."""
        if index in self.lowered:
            return self.lowered[index]
        name = f"lc_lower{index}"
        params, args = _args(decl)
        ret = "" if decl.ret == "void" else "return "
        if ref.kind == "lower":
            iface, func = self.c.imported_func(ref.target)
            ctx = self.context(ref.opts)
            impl = bind.IMPL_OF_IMPORT.get((iface, func))
            if impl is not None:
                keep = "" if decl.ret == "void" else f"{decl.ret} r = "
                body = (f"    lc_canon_enter(&{ctx});\n    {keep}{impl}({args});\n    lc_canon_leave();\n"
                        + ("" if decl.ret == "void" else "    return r;\n"))
            else:
                c_name = wasip2_name(iface, func)
                if c_name is None:
                    raise GlueError(f"import {iface or '<root>'}::{func} has no implementation in the guest")
                body = self._wasi_call(c_name, ctx, args, ret)
        elif isinstance(entry := self._type(ref.target), DefinedType):
            body = self._own_resource(ref.kind, entry, ref.target, decl)
        elif ref.kind == "resource.drop":
            if entry is None:
                raise GlueError(f"resource.drop of type {ref.target}, which is no resource the guest knows")
            c_name = wasip2_name(entry[0], "[resource-drop]" + entry[1])
            if c_name is None:
                raise GlueError(f"resource {entry[0]}::{entry[1]} has no implementation in the guest")
            body = self._wasi_call(c_name, "g_canon_none", args, ret)
        else:
            raise GlueError(f"{ref.kind} of a resource the component imports")
        self.defs.append(f"static {decl.ret} {name}({params}) {{\n{body}}}\n")
        self.lowered[index] = name
        return name

    def _type(self, index: int) -> tuple[str, str] | DefinedType | None:
        return self.c.types[index] if index < len(self.c.types) else None

    def _own_resource(self, kind: str, entry: DefinedType, index: int, decl: CDecl) -> str:
        """resource.new/rep/drop of a resource the component defines: the guest's
        handle table (component.c lc_res_*), checked per type; drop runs the dtor."""
        try:
            resource = defined_resource(entry)
        except ComponentFormatError as e:
            raise GlueError(f"type {index}: {e}") from None
        if resource is None:
            raise GlueError(f"{kind} of type {index}, which is not a resource")
        if decl.params != ("u32",) or decl.ret != ("void" if kind == "resource.drop" else "u32"):
            raise GlueError(f"{kind} imported with the core type {decl.ret}({', '.join(decl.params)})")
        tid = self.resource_ids.setdefault(index, len(self.resource_ids))
        if kind == "resource.new":
            return f"    return lc_res_new({tid}u, a0);\n"
        if kind == "resource.rep":
            return f"    return lc_res_rep({tid}u, a0);\n"
        body = f"    uint32_t rep = lc_res_take({tid}u, a0);\n"
        if resource.dtor is None:
            return body + "    (void)rep;\n"
        kind_, inst, dtor = self.core_ref(FUNC, resource.dtor)
        if kind_ != "export" or not isinstance(dtor, CDecl) or (dtor.ret, dtor.params) != ("void", ("u32",)):
            raise GlueError(f"the destructor of resource type {index} is not a module export (i32) -> ()")
        return body + f"    {self.call_export(inst, dtor, 'rep')};\n"

    def _wasi_call(self, c_name: str, ctx: str, args: str, ret: str) -> str:
        if c_name in self.wasip2:
            return f"    {ret}{c_name}(&{ctx}{', ' + args if args else ''});\n"
        unused = "".join(f"(void){a}; " for a in args.split(", ") if a)
        return f"    {unused}lc_canon_unsupported(); /* {c_name}: not in wasip2.h */\n"

    # --- generation --------------------------------------------------------
    def generate(self) -> str:
        c = self.c
        lifts = self.lift_bindings()
        forwards: dict[str, tuple[CDecl, str, list[tuple[int, str]]]] = {}
        structs: dict[str, list[int]] = {}  # import struct type -> importing instances
        calls: list[tuple[int, str]] = []  # (instance, its instantiate call)
        for inst, (kind, module, args) in enumerate(c.core_instances):
            if kind != "instantiate":
                continue
            assert module is not None
            h = self.h[module]
            for (mod, name), decl in sorted(h.imports.items()):
                if mod not in args:
                    raise GlueError(f"core instance {inst}: no argument for import module {mod!r}")
                arg = args[mod]
                assert isinstance(arg, int)
                expr = self.target_expr(self.inst_export(arg, name, _kind(decl)), decl)
                prev = forwards.get(decl.name)
                if prev is not None and (prev[0].ret, prev[0].params) != (decl.ret, decl.params):
                    raise GlueError(f"import {mod}::{name} has different types in different modules")
                forwards.setdefault(decl.name, (decl, h.import_structs[mod], []))[2].append((inst, expr))
            import_args = []
            for p in h.params:
                struct = p.rstrip("*").strip()
                slots = structs.setdefault(struct, [])
                slots.append(inst)
                import_args.append(f"&{self.slots_var(struct)}[{len(slots) - 1}]")
            calls.append((inst, f"    wasm2c_{module_c_name(module)}_instantiate(&g_i{inst}"
                                f"{''.join(', ' + a for a in import_args)});\n"))
        instantiate = []
        for inst, call in calls:
            instantiate.append(call)
            # a lowering's memory is known once its owner exists (always an
            # earlier instance than any user of the lowering)
            instantiate += [f"    {var}.memory = {expr};\n" for var, (owner, expr) in
                            self.canon_memory.items() if owner == inst]
        out = ["/* Generated by vmm/microvm/component_glue.py: do not edit. */\n"]
        out += [f'#include "{module_c_name(m)}.h"\n' for m in sorted(self.h)]
        out += ['#include "lc_canon.h"\n', '#include "lc_imports.h"\n', '#include "lc_rt.h"\n']
        if self.wasip2:
            out.append('#include "wasip2.h"\n')
        for struct, importers in sorted(structs.items()):
            var = self.slots_var(struct)
            init = ", ".join(f"{{{i}u}}" for i in importers)
            out.append(f"{struct} {{\n    uint32_t from;\n}};\n"
                       f"static {struct} {var}[{len(importers)}] = {{{init}}};\n"
                       f"/* wasm2c calls an import with the struct it was instantiated with, or (from\n"
                       f" * a funcref table) with the address of the instance field holding it */\n"
                       f"static {struct} *{var}_of({struct} *s) {{\n"
                       f"    if (s >= {var} && s < {var} + {len(importers)}) {{\n        return s;\n    }}\n"
                       f"    {struct} *t = *({struct} **)(void *)s;\n"
                       f"    if (t >= {var} && t < {var} + {len(importers)}) {{\n        return t;\n    }}\n"
                       f"    lc_fail(LC_STATUS_ABI, LC_ABI_BAD_REQUEST);\n}}\n")
        out += [f"static w2c_{module_c_name(m)} g_i{i};\n" for i, (k, m, _) in enumerate(c.core_instances)
                if k == "instantiate" and m is not None]
        out.append("static __attribute__((unused)) struct lc_canon g_canon_none = {0, 0, 0};\n")
        out += self.defs
        out += [self.forward(n, *v) for n, v in sorted(forwards.items())]
        out.append("void lc_bind_instantiate(void) {\n" + "".join(instantiate)
                   + "    lc_canon_set_default(&g_canon_lift);\n}\n")
        out += lifts
        return "".join(out)

    @staticmethod
    def slots_var(struct: str) -> str:
        return "g_imps_" + struct.split()[-1]

    def target_expr(self, target: tuple[str, int, object], decl: CDecl) -> str:
        kind, index, what = target
        _, args = _args(decl)
        if kind == "export":
            assert isinstance(what, CDecl)
            if _kind(what) != _kind(decl):
                raise GlueError(f"{decl.name}: the wired export {what.name} is of another kind")
            return self.call_export(index, what, args)
        assert isinstance(what, CoreRef)
        if _kind(decl) != FUNC:
            raise GlueError(f"{decl.name}: a non-function import wired to a canon built-in")
        return f"{self.lowered_func(index, what, decl)}({args})"

    def forward(self, name: str, decl: CDecl, struct: str, cases: list[tuple[int, str]]) -> str:
        params, _ = _args(decl)
        params = f"{struct}* s" + ("" if params == "void" else ", " + params)
        lines = [f"{decl.ret} {name}({params}) {{\n    switch ({self.slots_var(struct)}_of(s)->from) {{\n"]
        for inst, expr in cases:
            if decl.ret == "void":
                lines.append(f"    case {inst}u:\n        {expr};\n        return;\n")
            else:
                lines.append(f"    case {inst}u:\n        return {expr};\n")
        lines.append("    default:\n        lc_fail(LC_STATUS_ABI, LC_ABI_BAD_REQUEST);\n    }\n}\n")
        return "".join(lines)

    def lift_bindings(self) -> list[str]:
        """The contract's exports as bind.contract_bindings expects them."""
        c = self.c
        names = world_exports(self.world)
        missing = [n for n in names if n not in c.exports]
        if missing:
            raise GlueError(f"the component does not export {', '.join(missing)} ({self.world})")
        wrappers: dict[str, CDecl] = {}
        present: set[str] = set()
        lift_ctx: set[str] = set()
        for export in names:
            core, opts = c.lifted(c.exports[export])
            if opts.memory is not None or opts.realloc is not None:
                lift_ctx.add(self.context(opts))
            for cname, func in ((export, core), (EXPORT_POST_PREFIX + export, opts.post_return)):
                if func is None:
                    continue
                kind, inst, decl = self.core_ref(FUNC, func)
                if kind != "export" or not isinstance(decl, CDecl):
                    raise GlueError(f"{cname} is not a core module export")
                wrapper = "lc_lift_" + re.sub(r"\W", "_", cname)
                params, args = _args(decl)
                params = "void *u" + ("" if params == "void" else ", " + params)
                call = self.call_export(inst, decl, args)
                if cname == EXPORT_ON_OPEN and self.wasip2:
                    # the instance's first call may read WASI random ungranted (zeros):
                    # as the wasmtime tier allows at start (wasip2.c)
                    body = (f"    lc_wasip2_startup_random(1);\n    {call};\n"
                            "    lc_wasip2_startup_random(0);\n")
                else:
                    body = f"    {'' if decl.ret == 'void' else 'return '}{call};\n"
                self.defs.append(f"static {decl.ret} {wrapper}({params}) {{\n    (void)u;\n{body}}}\n")
                wrappers[cname] = CDecl(decl.ret, wrapper, decl.params)
                present.add(cname)
        if len(lift_ctx) > 1:
            raise GlueError("the contract's exports lift with different memories or reallocs")
        ctx = lift_ctx.pop() if lift_ctx else "g_canon_none"
        self.defs.append(f"#define g_canon_lift {ctx}\n")
        self.defs.append(
            "static wasm_rt_memory_t *lc_lift_memory(void *u) {\n"
            "    (void)u;\n    return g_canon_lift.memory;\n}\n"
            "static uint32_t lc_lift_realloc(void *u, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {\n"
            "    (void)u;\n    return lc_canon_realloc_current(a, b, c, d);\n}\n"
        )
        wrappers[EXPORT_MEMORY] = CDecl("wasm_rt_memory_t*", "lc_lift_memory", ())
        wrappers[EXPORT_REALLOC] = CDecl("u32", "lc_lift_realloc", ("u32",) * 4)
        return bind.contract_bindings(wrappers, frozenset(present), self.world, "0")


def generate_glue(comp: Component, headers: Mapping[int, ModuleHeader], world: str,
                  wasip2: frozenset[str] = frozenset()) -> str:
    """glue.c for `comp` of `world`; `headers`: each instantiated core module's
    wasm2c header (read_header); `wasip2`: the lc_wasip2_* names wasip2.h declares."""
    if world not in (TCP_WORLD, HTTP_WORLD):
        raise GlueError(f"unknown world {world!r}")
    return _Gen(comp, headers, world, wasip2).generate()
