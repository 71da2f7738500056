"""Generate bind.c: the only C that names a plugin's wasm2c symbols.

wasm2c (run with `-n plugin`) turns each import into a declaration
`RET w2c_<module>_<name>(struct w2c_<module>*, ARGS...)` with a mangled name,
and each export into `RET w2c_plugin_<name>(w2c_plugin*, ARGS...)`. Rather
than re-implement the mangling, the generated header is read back: every
declaration follows a comment `/* import: 'MODULE' 'NAME' */` or
`/* export: 'NAME' */`. bind.c includes the header, so the compiler checks
each forwarding function against wasm2c's own declaration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vmm.contract import (
    EXPORT_INITIALIZE,
    EXPORT_MEMORY,
    EXPORT_ON_CLOSE,
    EXPORT_ON_DATA,
    EXPORT_ON_OPEN,
    EXPORT_POST_PREFIX,
    EXPORT_REALLOC,
    EXPORT_WANTED_PHASES,
    HTTP_HOOKS,
    HTTP_WORLD,
    IMPORT_MODULE,
    TCP_WORLD,
    WASI_P1_FUNCTIONS,
    WASI_P1_MODULE,
)

__all__ = [
    "IMPL_OF_IMPORT",
    "MODULE_NAME",
    "BindError",
    "CDecl",
    "contract_bindings",
    "generate_bind",
    "instantiate_params",
    "parse_header",
]

MODULE_NAME = "plugin"
"""The wasm2c module name (`wasm2c -n plugin`): symbols are w2c_plugin_*."""

IMPL_OF_IMPORT: dict[tuple[str, str], str] = {
    (IMPORT_MODULE["log"], "log"): "lc_imp_log_log",
    (IMPORT_MODULE["clock"], "wall-now"): "lc_imp_clock_wall_now",
    (IMPORT_MODULE["clock"], "monotonic-now"): "lc_imp_clock_monotonic_now",
    (IMPORT_MODULE["random"], "get-u64"): "lc_imp_random_get_u64",
    (IMPORT_MODULE["kv"], "get"): "lc_imp_kv_get",
    (IMPORT_MODULE["kv"], "set"): "lc_imp_kv_set",
    (IMPORT_MODULE["kv"], "delete"): "lc_imp_kv_delete",
    (IMPORT_MODULE["kv"], "increment"): "lc_imp_kv_increment",
    (IMPORT_MODULE["metadata"], "set"): "lc_imp_metadata_set",
    (IMPORT_MODULE["egress"], "send-datagram"): "lc_imp_egress_send_datagram",
    (IMPORT_MODULE["connection"], "attributes"): "lc_imp_connection_attributes",
    **{(WASI_P1_MODULE, name): f"lc_wasi_{name}" for name in WASI_P1_FUNCTIONS},
}
"""(import module, name) -> the runtime function implementing it (lc_imports.h)."""


# --- WASI 0.2 imports (guest/runtime/wasip2*.c; vmm/microvm/wasip2_gen.py) ----
def _wasip2_forward(key: tuple[str, str], decl: CDecl, instance_type: str) -> str | None:
    """The forwarder of a `wasi:*@0.2.N` import to its lc_wasip2_* function, with
    the plugin's own memory and cabi_realloc as the lowering context; None if
    the import is not WASI 0.2. The core signature must be the generated one."""
    from vmm.microvm import wasip2_gen

    module = wasip2_gen.unversioned(key[0])
    func = wasip2_gen.declared().get((module, key[1])) if module is not None else None
    if module is None or func is None:
        return None
    want = tuple(_WASM2C_TYPE[t] for t, _ in func.params)
    ret = "void" if func.result == "void" else _WASM2C_TYPE[func.result]
    if decl.params != want or decl.ret != ret:
        raise BindError(f"import {key[0]}::{key[1]}: signature {decl.params} -> {decl.ret}, "
                        f"WASI 0.2 says {want} -> {ret}")
    impl = wasip2_gen.c_name(module, key[1])
    context = "lc_wasip2_plugin_canon()" + (", " if want else "")
    return _forward(decl, impl, instance_type).replace(f"{impl}(", f"{impl}({context}", 1)


_WASM2C_TYPE = {"uint32_t": "u32", "uint64_t": "u64", "float": "f32", "double": "f64"}


class BindError(ValueError):
    """wasm2c's header does not have the shape bind.c expects."""


@dataclass(frozen=True, slots=True)
class CDecl:
    ret: str
    name: str
    params: tuple[str, ...]  # after the instance pointer


_COMMENT = re.compile(r"^/\* (import|export): (.*) \*/$")
_DECL = re.compile(r"^(?P<ret>[\w ]+?\**)\s*(?P<name>w2c_\w+)\((?P<params>[^)]*)\);$")
_FIELD = re.compile(r"^(?P<type>[\w ]+?)\s*\*(?P<name>w2c_\w+);$")
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'")


def _unescape(text: str) -> str:
    """wasm2c writes non-printable/special name bytes in comments as \\XX."""
    raw = bytearray()
    i = 0
    data = text.encode()
    while i < len(data):
        hex2 = data[i + 1 : i + 3]
        if data[i] == 0x5C and len(hex2) == 2 and re.fullmatch(rb"[0-9a-fA-F]{2}", hex2):
            raw.append(int(data[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(data[i])
            i += 1
    return raw.decode("utf-8", errors="replace")


def parse_header(header: str, module_name: str = MODULE_NAME
                 ) -> tuple[dict[tuple[str, str], CDecl], dict[str, CDecl], int]:
    """(imports by (module, name), exports by name, instantiate's import-instance count)."""
    imports: dict[tuple[str, str], CDecl] = {}
    exports: dict[str, CDecl] = {}
    lines = header.splitlines()
    for i, line in enumerate(lines[:-1]):
        m = _COMMENT.match(line.strip())
        if not m:
            continue
        names = [_unescape(q) for q in _QUOTED.findall(m.group(2))]
        following = lines[i + 1].strip()
        field = _FIELD.match(following)
        if field and m.group(1) == "import" and len(names) == 2:
            # an imported memory/table/global: a field of the instance struct,
            # filled by `extern T* <field>(struct w2c_<module>*)`
            imports[(names[0], names[1])] = CDecl(field.group("type").strip() + "*", field.group("name"), ())
            continue
        d = _DECL.match(following)
        if not d:
            raise BindError(f"unexpected declaration after {line.strip()!r}: {lines[i + 1]!r}")
        params = [p.strip() for p in d.group("params").split(",") if p.strip()]
        decl = CDecl(d.group("ret").strip(), d.group("name"), tuple(params[1:]))
        if m.group(1) == "import" and len(names) == 2:
            imports[(names[0], names[1])] = decl
        elif m.group(1) == "export" and len(names) == 1:
            exports[names[0]] = decl
        else:
            raise BindError(f"cannot read {line.strip()!r}")
    params = instantiate_params(header, module_name)
    return imports, exports, len(params) - 1


def instantiate_params(header: str, module_name: str = MODULE_NAME) -> list[str]:
    """The parameter types of wasm2c_<module_name>_instantiate (the instance
    first, then one `struct w2c_<import module>*` per import module, in order)."""
    inst = re.search(r"^void wasm2c_" + re.escape(module_name) + r"_instantiate\((?P<params>[^)]*)\);$",
                     header, re.M)
    if not inst:
        raise BindError(f"no wasm2c_{module_name}_instantiate declaration")
    return [p.strip() for p in inst.group("params").split(",") if p.strip()]


def _forward(decl: CDecl, impl: str, instance_type: str) -> str:
    args = ", ".join(f"{t} a{i}" for i, t in enumerate(decl.params))
    names = ", ".join(f"a{i}" for i in range(len(decl.params)))
    sig = f"{decl.ret} {decl.name}({instance_type}* self{', ' + args if args else ''})"
    call = f"{impl}({names})"
    body = f"(void)self;\n    {'return ' if decl.ret != 'void' else ''}{call};"
    return f"{sig} {{\n    {body}\n}}\n"


def _instance_type(header: str, decl: CDecl) -> str:
    m = re.search(re.escape(decl.name) + r"\((struct \w+)\*", header)
    if not m:
        raise BindError(f"cannot find the instance type of {decl.name}")
    return m.group(1)


_BAD_REQUEST = "    lc_fail(LC_STATUS_ABI, LC_ABI_BAD_REQUEST); /* the other world's op: a host bug */\n"


def _post_call(exports: dict[str, CDecl], present: frozenset[str], hook: str, args: str,
               self_expr: str = "&g_plugin") -> str:
    """The call of `hook`'s cabi_post_ export (a statement), or "" if not exported."""
    post = EXPORT_POST_PREFIX + hook
    if post not in present:
        return ""
    if post not in exports:
        raise BindError(f"export {post!r} missing from the wasm2c header")
    return f"    {exports[post].name}({self_expr}{args});\n"


def _http_bindings(exports: dict[str, CDecl], present: frozenset[str],
                   self_expr: str = "&g_plugin") -> list[str]:
    """lc_bind_wanted_phases, lc_bind_http_hook, lc_bind_post_http_hook (lc_rt.h)."""
    for name in (EXPORT_WANTED_PHASES, *HTTP_HOOKS.values()):
        if name not in exports:
            raise BindError(f"export {name!r} missing from the wasm2c header")
    out = [
        "uint32_t lc_bind_wanted_phases(void) {\n"
        f"    uint32_t flags = {exports[EXPORT_WANTED_PHASES].name}({self_expr});\n"
        + _post_call(exports, present, EXPORT_WANTED_PHASES, ", flags", self_expr)
        + "    return flags;\n}\n"
    ]
    hooks, posts = [], []
    for index, (_, hook) in enumerate(sorted((int(p), h) for p, h in HTTP_HOOKS.items())):
        decl = exports[hook]
        args = ", ".join("abcde"[: len(decl.params)])
        hooks.append(f"    case {index}:\n        return {decl.name}({self_expr}, {args});\n")
        post = _post_call(exports, present, hook, ", r", self_expr)
        if post:
            posts.append(f"    case {index}:\n    {post}        return 1;\n")
    out.append(
        "uint32_t lc_bind_http_hook(uint32_t phase, uint32_t a, uint32_t b, uint32_t c, uint32_t d,"
        " uint32_t e) {\n    (void)a; (void)b; (void)c; (void)d; (void)e;\n    switch (phase) {\n"
        + "".join(hooks) + "    default:\n        lc_fail(LC_STATUS_ABI, LC_ABI_BAD_REQUEST);\n    }\n}\n"
    )
    out.append(
        "int lc_bind_post_http_hook(uint32_t phase, uint32_t r) {\n    (void)r;\n    switch (phase) {\n"
        + "".join(posts) + "    default:\n        return 0;\n    }\n}\n"
    )
    return out


def _http_stubs() -> list[str]:
    return [
        "uint32_t lc_bind_wanted_phases(void) {\n" + _BAD_REQUEST + "}\n",
        "uint32_t lc_bind_http_hook(uint32_t phase, uint32_t a, uint32_t b, uint32_t c, uint32_t d,"
        " uint32_t e) {\n    (void)phase; (void)a; (void)b; (void)c; (void)d; (void)e;\n"
        + _BAD_REQUEST + "}\n",
        "int lc_bind_post_http_hook(uint32_t phase, uint32_t r) {\n    (void)phase; (void)r;\n"
        "    return 0;\n}\n",
    ]


def generate_bind(header: str, header_name: str, exports_present: frozenset[str],
                  world: str = TCP_WORLD) -> str:
    """C source binding the runtime (lc_rt.h, lc_imports.h) to one plugin of `world`.

    Every image defines every lc_bind_* function; those of the other world
    fail the event (LC_ABI_BAD_REQUEST): only a broken host asks for them."""
    if world not in (TCP_WORLD, HTTP_WORLD):
        raise BindError(f"unknown world {world!r}")
    imports, exports, n_instances = parse_header(header)
    out = [
        "/* Generated by vmm/microvm/bind.py: do not edit. */",
        f'#include "{header_name}"',
        '#include "lc_imports.h"',
        '#include "lc_rt.h"',
        '#include "wasip2_rt.h"',
        "",
        f"static w2c_{MODULE_NAME} g_plugin;",
        "",
    ]
    for key, decl in sorted(imports.items()):
        impl = IMPL_OF_IMPORT.get(key)
        wasip2 = _wasip2_forward(key, decl, _instance_type(header, decl)) if impl is None else None
        if wasip2 is not None:
            out.append(wasip2)
            continue
        if impl is None:
            raise BindError(f"import {key[0]}::{key[1]} has no implementation")
        out.append(_forward(decl, impl, _instance_type(header, decl)))

    null_instances = ", ".join(["0"] * n_instances)
    out.append(
        "void lc_bind_instantiate(void) {\n"
        f"    wasm2c_{MODULE_NAME}_instantiate(&g_plugin{', ' + null_instances if null_instances else ''});\n"
        "}\n"
    )
    out += contract_bindings(exports, exports_present, world, "&g_plugin")
    return "\n".join(out)


def contract_bindings(exports: dict[str, CDecl], exports_present: frozenset[str], world: str,
                      self_expr: str) -> list[str]:
    """lc_bind_memory .. lc_bind_post_on_data (lc_rt.h) over the C functions
    `exports` names by contract export name, each called with `self_expr` first."""

    def export(name: str) -> CDecl:
        if name not in exports:
            raise BindError(f"export {name!r} missing from the wasm2c header")
        return exports[name]

    out: list[str] = []
    memory = export(EXPORT_MEMORY).name
    out.append(f"wasm_rt_memory_t *lc_bind_memory(void) {{\n    return {memory}({self_expr});\n}}\n")
    out.append(
        "uint32_t lc_bind_realloc(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {\n"
        f"    return {export(EXPORT_REALLOC).name}({self_expr}, a, b, c, d);\n}}\n"
    )
    out.append(
        "void lc_bind_on_open(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {\n"
        f"    {export(EXPORT_ON_OPEN).name}({self_expr}, a, b, c, d);\n"
        + (
            f"    {export(EXPORT_POST_PREFIX + EXPORT_ON_OPEN).name}({self_expr});\n"
            if EXPORT_POST_PREFIX + EXPORT_ON_OPEN in exports_present
            else ""
        )
        + "}\n"
    )
    if world == TCP_WORLD:
        out.append(
            "uint32_t lc_bind_on_data(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {\n"
            f"    return {export(EXPORT_ON_DATA).name}({self_expr}, a, b, c, d);\n}}\n"
        )
        out += _http_stubs()
    else:
        out.append(
            "uint32_t lc_bind_on_data(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {\n"
            "    (void)a; (void)b; (void)c; (void)d;\n" + _BAD_REQUEST + "}\n"
        )
        out += _http_bindings(exports, exports_present, self_expr)
    out.append(
        "void lc_bind_on_close(void) {\n"
        f"    {export(EXPORT_ON_CLOSE).name}({self_expr});\n"
        + (
            f"    {export(EXPORT_POST_PREFIX + EXPORT_ON_CLOSE).name}({self_expr});\n"
            if EXPORT_POST_PREFIX + EXPORT_ON_CLOSE in exports_present
            else ""
        )
        + "}\n"
    )
    if EXPORT_INITIALIZE in exports_present:
        init = export(EXPORT_INITIALIZE).name
        out.append(f"int lc_bind_initialize(void) {{\n    {init}({self_expr});\n    return 1;\n}}\n")
    else:
        out.append("int lc_bind_initialize(void) {\n    return 0;\n}\n")
    post = EXPORT_POST_PREFIX + EXPORT_ON_DATA
    if post in exports_present:
        name = export(post).name
        out.append(f"int lc_bind_post_on_data(uint32_t r) {{\n    {name}({self_expr}, r);\n"
                   "    return 1;\n}\n")
    else:
        out.append("int lc_bind_post_on_data(uint32_t r) {\n    (void)r;\n    return 0;\n}\n")
    return out
