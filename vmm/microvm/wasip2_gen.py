"""Generate guest/runtime/wasip2.h: the C declarations of the guest's WASI 0.2.

The world guest/runtime/wasip2-wit/world.wit (wasi:cli/imports) is read two
ways, both by wasm-tools: `component wit --json` gives each function's WIT
parameters and result; `component embed --dummy-names legacy` gives the core
module a component importing that world would have, i.e. each function's
canonical-ABI flattened core signature under its core import name. The
signature comes from the second (wasm-tools flattens, not us); the first
only names the flat parameters, and the two must agree on their count.

    python -m vmm.microvm.wasip2_gen            # rewrite the header
    python -m vmm.microvm.wasip2_gen --check    # exit 1 if it is stale
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "HEADER",
    "WIT_DIR",
    "WasiFunc",
    "c_name",
    "core_signature",
    "declared",
    "generate",
    "load_functions",
    "unversioned",
    "write_wit_dir",
]

ROOT = Path(__file__).resolve().parents[2]
WIT_DIR = ROOT / "guest" / "runtime" / "wasip2-wit"
HEADER = ROOT / "guest" / "runtime" / "wasip2.h"
WORLD = "imports"
PREFIX = "lc_wasip2_"

_C_TYPE = {"i32": "uint32_t", "i64": "uint64_t", "f32": "float", "f64": "double"}
_IMPORT = re.compile(
    r'\(import "([^"]+)" "([^"]+)" \(func \(;\d+;\) \(type \d+\)((?: \((?:param|result)[^)]*\))*)\)\)'
)
_VERSION = re.compile(r"@0\.2\.\d+$")


@dataclass(frozen=True, slots=True)
class WasiFunc:
    module: str  # interface without version, e.g. wasi:io/streams
    name: str  # core import name, e.g. [method]output-stream.write
    params: tuple[tuple[str, str], ...]  # (C type, C name), retptr included
    result: str  # C type or "void"


def unversioned(module: str) -> str | None:
    """`wasi:io/streams` for any `wasi:io/streams@0.2.N`; None if not WASI 0.2."""
    if not module.startswith("wasi:") or not _VERSION.search(module):
        return None
    return _VERSION.sub("", module)


def _ident(text: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_")


def c_name(module: str, name: str) -> str:
    """lc_wasip2_<package>_<interface>_<function>, e.g.
    lc_wasip2_io_streams_method_output_stream_write (module without version)."""
    package_iface = module.removeprefix("wasi:")
    return PREFIX + _ident(package_iface) + "_" + _ident(name)


def _wasm_tools(*args: str) -> str:
    exe = Path(sys.executable).with_name("wasm-tools")
    return subprocess.run([str(exe), *args], check=True, capture_output=True, text=True).stdout


class _Types:
    """Flat counts of WIT types (canonical ABI `flatten_type`, counting only)."""

    def __init__(self, resolve: dict[str, Any]) -> None:
        self._types = resolve["types"]

    def kind(self, ty: Any) -> tuple[str, Any]:
        while isinstance(ty, int):
            kind = self._types[ty]["kind"]
            if isinstance(kind, dict) and "type" in kind:
                ty = kind["type"]
                continue
            if isinstance(kind, str):
                return kind, None
            (key, value), = kind.items()
            return key, value
        return "prim", ty

    def flat(self, ty: Any) -> int:
        key, v = self.kind(ty)
        if key == "prim":
            return 2 if v == "string" else 1
        if key == "list":
            return 2
        if key in ("handle", "enum", "resource"):
            return 1
        if key == "flags":
            return max(1, (len(v["flags"]) + 31) // 32)
        if key == "record":
            return sum(self.flat(f["type"]) for f in v["fields"])
        if key == "tuple":
            return sum(self.flat(t) for t in v["types"])
        if key == "option":
            return 1 + self.flat(v)
        if key == "result":
            return 1 + max(self.flat(v[k]) if v.get(k) is not None else 0 for k in ("ok", "err"))
        if key == "variant":
            return 1 + max((self.flat(c["type"]) if c.get("type") is not None else 0) for c in v["cases"])
        raise ValueError(f"unknown WIT type kind {key!r}")

    def names(self, name: str, ty: Any) -> list[str]:
        n = self.flat(ty)
        base = _ident(name)
        if n == 1:
            return [base]
        key, v = self.kind(ty)
        if n == 2 and (key == "list" or (key == "prim" and v == "string")):
            return [f"{base}_ptr", f"{base}_len"]
        return [f"{base}_{i}" for i in range(n)]


def load_functions(wit_dir: Path = WIT_DIR) -> list[WasiFunc]:
    """Every function of the world, in import order, with its core signature."""
    resolve = json.loads(_wasm_tools("component", "wit", str(wit_dir), "--json"))
    types = _Types(resolve)
    package = next(i for i, p in enumerate(resolve["packages"]) if p["name"] == "lightcell:wasip2")
    world = resolve["worlds"][resolve["packages"][package]["worlds"][WORLD]]
    wit: dict[tuple[str, str], dict[str, Any]] = {}
    for item in world["imports"].values():
        iface = resolve["interfaces"][item["interface"]["id"]]
        pkg = resolve["packages"][iface["package"]]["name"]
        iface_name = f"{pkg.split('@')[0]}/{iface['name']}"
        for fname, wit_func in iface["functions"].items():
            wit[(iface_name, fname)] = wit_func
    with tempfile.TemporaryDirectory() as tmp:
        core = Path(tmp) / "dummy.wasm"
        _wasm_tools("component", "embed", str(wit_dir), "--world", WORLD, "--dummy-names", "legacy",
                    "-o", str(core))
        text = _wasm_tools("print", str(core))
    funcs: list[WasiFunc] = []
    for m in _IMPORT.finditer(text):
        found = unversioned(m.group(1))
        if found is None:
            raise ValueError(f"not a WASI 0.2 import: {m.group(1)}")
        module = found
        params = re.findall(r"\(param ([^)]*)\)", m.group(3))
        core_params = " ".join(params).split()
        results = " ".join(re.findall(r"\(result ([^)]*)\)", m.group(3))).split()
        if m.group(2).startswith("[resource-drop]"):  # not a WIT function: (own handle) -> ()
            func: dict[str, Any] = {"params": [{"name": "self", "type": "u32"}], "result": None}
        else:
            func = wit[(module, m.group(2))]
        names = [n for p in func["params"] for n in types.names(p["name"], p["type"])]
        if len(core_params) == len(names) + 1 and func["result"] is not None and not results:
            names.append("retptr")  # results through a return area
        if len(names) != len(core_params) or len(results) > 1:
            raise ValueError(f"{module} {m.group(2)}: WIT {names} vs core {core_params} -> {results}")
        funcs.append(WasiFunc(
            module, m.group(2),
            tuple((_C_TYPE[t], n) for t, n in zip(core_params, names, strict=True)),
            _C_TYPE[results[0]] if results else "void",
        ))
    return funcs


_PREAMBLE = """\
/* Generated by vmm/microvm/wasip2_gen.py from guest/runtime/wasip2-wit: do not edit.
 *
 * The guest's WASI 0.2 (wasi:cli/imports: cli, io, clocks, random,
 * filesystem, sockets) at the canonical-ABI level: one C function per
 * core import, named lc_wasip2_<package>_<interface>_<function> after the
 * import's legacy core name (`[method]output-stream.write` ->
 * method_output_stream_write), taking the lowering context then the
 * function's flattened core parameters (uint32_t for i32, uint64_t for i64),
 * a final `retptr` where the ABI returns through memory. Each declaration
 * follows a comment with its import (module without version, core name);
 * every 0.2.x release has the same signatures. Implemented in wasip2*.c.
 *
 * Resources are uint32_t handles into the guest's one handle table
 * (typed, checked on every use). Every pointer is checked against
 * cx->memory; lists and strings the guest returns are allocated with
 * cx->realloc (imports forbidden meanwhile, as the ABI requires).
 */
#ifndef LC_WASIP2_H
#define LC_WASIP2_H

#include <stdint.h>

#include "wasm-rt.h"

/* The core instance that lowers the call: its memory and cabi_realloc. */
struct lc_canon {
    wasm_rt_memory_t *memory;
    uint32_t (*realloc)(void *instance, uint32_t old_ptr, uint32_t old_size, uint32_t align,
                        uint32_t new_size);
    void *instance; /* passed to realloc as is */
};

/* Start of an event: forget the host's per-event grant answers. */
void lc_wasip2_event_begin(void);
/* End of a hook: log what stdout/stderr hold of an unfinished line. */
void lc_wasip2_flush_output(void);
/* Start of on-open (the instance's first export call): allow
 * LC_WASIP2_STARTUP_RANDOM_BYTES zero bytes of ungranted wasi:random. */
void lc_wasip2_startup_random(int allowed);

"""


_DECLARED = re.compile(r"/\* import: '([^']+)' '([^']+)' \*/\n(\w+) (\w+)\(([^)]*)\);")
_CORE_TYPE = {c: w for w, c in _C_TYPE.items()}


@functools.cache
def declared() -> dict[tuple[str, str], WasiFunc]:
    """The committed header's functions by (module without version, core name)."""
    out: dict[tuple[str, str], WasiFunc] = {}
    for module, name, ret, _c, params in _DECLARED.findall(HEADER.read_text()):
        typed = [p.strip().rsplit(" ", 1) for p in params.split(",")[1:]]  # after the lc_canon
        out[(module, name)] = WasiFunc(module, name, tuple((t, n) for t, n in typed), ret)
    return out


def core_signature(module: str, name: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(params, results) in wasm types of a WASI 0.2 import (any 0.2.x), or None."""
    base = unversioned(module)
    func = declared().get((base, name)) if base is not None else None
    if func is None:
        return None
    params = tuple(_CORE_TYPE[t] for t, _ in func.params)
    return params, (() if func.result == "void" else (_CORE_TYPE[func.result],))


def generate(funcs: list[WasiFunc]) -> str:
    out = [_PREAMBLE]
    module = ""
    for f in funcs:
        if f.module != module:
            out.append(f"/* ---- {f.module} ---- */\n")
            module = f.module
        params = ", ".join(["struct lc_canon *cx", *(f"{t} {n}" for t, n in f.params)])
        name = c_name(f.module, f.name)
        out.append(f"/* import: '{f.module}' '{f.name}' */\n{f.result} {name}({params});\n")
    out.append("\n#endif\n")
    return "".join(out)


WIT_VERSION = "0.2.12"
"""The version of the vendored WIT (guest/runtime/wasip2-wit/deps)."""


def write_wit_dir(out: Path, world_wit: str, version: str = "0.2.9") -> Path:
    """A WIT directory for building a component against WASI 0.2: `world_wit`
    (a package of its own) as out/world.wit, the vendored WASI packages
    relabelled `version` (0.2.9: what componentize-py 0.25 imports; the
    signatures are the same) and lightcell:filter (plugins/wit) in out/deps."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "world.wit").write_text(world_wit)
    for pkg in sorted((WIT_DIR / "deps").iterdir()):
        dest = out / "deps" / pkg.name
        dest.mkdir(parents=True, exist_ok=True)
        for wit in pkg.glob("*.wit"):
            (dest / wit.name).write_text(wit.read_text().replace(f"@{WIT_VERSION}", f"@{version}"))
    filt = out / "deps" / "lightcell-filter"
    filt.mkdir(parents=True, exist_ok=True)
    (filt / "lightcell.wit").write_text((ROOT / "plugins" / "wit" / "lightcell.wit").read_text())
    return out


def main(argv: list[str]) -> int:
    text = generate(load_functions())
    if "--check" in argv:
        if HEADER.read_text() != text:
            print(f"{HEADER} is stale: run python -m vmm.microvm.wasip2_gen", file=sys.stderr)
            return 1
        return 0
    HEADER.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
