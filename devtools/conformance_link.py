"""Linking of spec-test modules, as the spec's instantiation defines it.

The runner is the linker of a spec script (a Lightcell plugin imports only
its host): a module is linked against the `spectest` host module and the
instances registered before it. `link_error` says why a module cannot be
linked ("unknown import", "incompatible import type"), with the types read
from the binaries (devtools/wasm_binary.py), or None.
"""

from __future__ import annotations

from devtools.wasm_binary import FUNC, GLOBAL, MEMORY, TABLE, TAG, Import, Limits, ModuleInfo

__all__ = ["SPECTEST", "link_error"]

SPECTEST: dict[str, tuple[int, object]] = {
    "print": (FUNC, ((), ())),
    "print_i32": (FUNC, (("i32",), ())),
    "print_i64": (FUNC, (("i64",), ())),
    "print_f32": (FUNC, (("f32",), ())),
    "print_f64": (FUNC, (("f64",), ())),
    "print_i32_f32": (FUNC, (("i32", "f32"), ())),
    "print_f64_f64": (FUNC, (("f64", "f64"), ())),
    "global_i32": (GLOBAL, ("i32", False)),
    "global_i64": (GLOBAL, ("i64", False)),
    "global_f32": (GLOBAL, ("f32", False)),
    "global_f64": (GLOBAL, ("f64", False)),
    "table": (TABLE, ("funcref", Limits(10, 20))),
    "table64": (TABLE, ("funcref", Limits(10, 20, is64=True))),
    "memory": (MEMORY, Limits(1, 2)),
}
"""The host module as the reference interpreter defines it (devtools/conformance.c)."""


def _limits_match(have: Limits, want: Limits) -> bool:
    if (have.is64, have.shared, have.page_log2) != (want.is64, want.shared, want.page_log2):
        return False
    if have.min < want.min:
        return False
    return want.max is None or (have.max is not None and have.max <= want.max)


def _matches(imp: Import, kind: int, have: object) -> bool:
    if kind != imp.kind:
        return False
    if kind in (FUNC, TAG):
        return have is not None and have == imp.func_type
    if kind == GLOBAL:
        return have == (imp.val_type, imp.mutable)
    if kind == MEMORY:
        return isinstance(have, Limits) and imp.limits is not None and _limits_match(have, imp.limits)
    if kind == TABLE:
        if not isinstance(have, tuple) or imp.limits is None:
            return False
        ref, lim = have
        return bool(ref == imp.ref_type and _limits_match(lim, imp.limits))
    return False


def link_error(info: ModuleInfo, registry: dict[str, ModuleInfo]) -> str | None:
    """Why `info` cannot be linked against spectest and `registry` (registered name -> exporter)."""
    for imp in info.imports:
        if imp.module == "spectest" and "spectest" not in registry:
            entry = SPECTEST.get(imp.name)
            if entry is None:
                return f"unknown import {imp.module}::{imp.name}"
            kind, have = entry
        elif imp.module in registry:
            exporter = registry[imp.module]
            export = next((e for e in exporter.exports if e.name == imp.name), None)
            if export is None:
                return f"unknown import {imp.module}::{imp.name}"
            kind, have = export.kind, exporter.export_type(export)
        else:
            return f"unknown import {imp.module}::{imp.name}"
        if not _matches(imp, kind, have):
            return f"incompatible import type {imp.module}::{imp.name}"
    return None
