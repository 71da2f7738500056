"""Linking the WASI imports that add_wasip2 does not provide (wasi:http, and
any other wasi: interface) to stubs that deny when called.

componentize-js output imports wasi:http/types and wasi:http/outgoing-handler
even when the plugin never uses them; wasmtime-py's add_wasi_http would give
the plugin a real HTTP client, so those interfaces are never linked to
anything real. Each of their functions becomes a denial (logged and counted
under the interface's name, which no policy grants; then a trap), so such a
component instantiates and fails only if it actually calls one.

Why not Linker.define_unknown_imports_as_traps: it looks imports up by exact
name, so an import of wasi:io/poll@0.2.9 served by add_wasip2 under another
0.2 version counts as unknown and gets a trap stub that wins over the real one.

Resources: a stubbed interface's own resource types are defined as fresh host
resources (never created: every constructor denies). Resources it `use`s
from an interface imported before it (wasi:http/types uses wasi:io/streams'
input-stream) are left undefined, as wasmtime allows for such aliases; a
definition would have to be the very type add_wasip2 defined.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import wasmtime
from wasmtime.component import Component, Linker, ResourceType
from wasmtime.component._types import ComponentInstanceType, FuncType

from vmm.capabilities import CapabilityDenied
from vmm.wasmtime_tier._context import CallContext
from vmm.wasmtime_tier._engine import engine

__all__ = ["WASIP2_LINKED", "UnlinkedImports"]

_WASIP2 = {
    "io": "error poll streams",
    "clocks": "wall-clock monotonic-clock",
    "random": "random insecure insecure-seed",
    "filesystem": "types preopens",
    "sockets": "network instance-network tcp tcp-create-socket udp udp-create-socket ip-name-lookup",
    "cli": "environment exit stdin stdout stderr terminal-input terminal-output terminal-stdin "
    "terminal-stdout terminal-stderr",
}
WASIP2_LINKED = frozenset(f"wasi:{pkg}/{i}" for pkg, names in _WASIP2.items() for i in names.split())
"""WASI 0.2 interfaces (names without version) that Linker.add_wasip2 defines;
the ones the listener's grants decide are shadowed again by _component._WasiGate."""

HostCall = Callable[[str | None, Callable[..., Any]], Callable[..., Any]]


def _deny(interface: str) -> Callable[..., Any]:
    def denied(ctx: CallContext, *args: Any) -> Any:
        ctx.host.check(interface)  # logs and counts the refusal (no policy grants it)
        raise CapabilityDenied(interface)

    return denied


def _no_dtor(store: wasmtime.StoreContext, rep: int) -> None:  # pragma: no cover - none is ever made
    pass


class UnlinkedImports:
    """A component's wasi: imports outside WASIP2_LINKED, read once per program."""

    def __init__(self, component: Component) -> None:
        eng = engine()
        self.instances: list[tuple[str, list[str], list[str]]] = []
        """(import name, its functions, its own resources) per stubbed interface."""
        seen: list[ResourceType] = []
        for name, item in component.type.imports(eng).items():
            ty = item.ty
            if not isinstance(ty, ComponentInstanceType):
                continue
            funcs, resources = [], []
            for export, it in ty.exports(eng).items():
                if isinstance(it.ty, FuncType):
                    funcs.append(export)
                elif isinstance(it.ty, ResourceType):
                    if not any(it.ty == r for r in seen):
                        resources.append(export)
                    seen.append(it.ty)
            if name.startswith("wasi:") and name.split("@")[0] not in WASIP2_LINKED:
                self.instances.append((name, funcs, resources))

    def define(self, linker: Linker, host_call: HostCall) -> None:
        """Define every stub; `host_call` wraps each function as the contract's are."""
        fresh = 0
        with linker.root() as root:
            for name, funcs, resources in self.instances:
                interface = name.split("@")[0]
                with root.add_instance(name) as inst:
                    for resource in resources:
                        inst.add_resource(resource, ResourceType.host(fresh), _no_dtor)
                        fresh += 1
                    for func in funcs:
                        inst.add_func(func, host_call(None, _deny(interface)))
