"""Reading plugin binaries: component or core module, and the core contract.

Shared by both tiers (the wasmtime tier runs the core module directly; the
KVM tier compiles it ahead of time). Pure parsing, no wasm runtime needed:

- `classify(data)`       core module, component or neither (by the preamble)
- `core_modules(data)`   the core modules a component embeds (top level)
- `unwrap_core(data)`    the one core module implementing the contract, if the
                         component is a thin wrapper around it (C plugins)
- `parse_core(data)`     a core module's imports, exports and memory limits
- `check_contract(core)` the tcp-filter contract's core view, or ContractError saying why
- `check_http_contract(core)` the same for the http-filter world
- `check_world_contract(core)` whichever world the module implements (both: refused)

A component built by `wasm-tools component new` from one core module also
holds small `wit-component:shim`/`fixups` modules (indirect lowering of imports
that need `cabi_realloc`); they carry no state of their own, so running the
main module with the host implementing the same imports is equivalent.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vmm.contract import (
    CAPABILITY_OF_MODULE,
    EXPORT_INITIALIZE,
    EXPORT_MEMORY,
    EXPORT_ON_CLOSE,
    EXPORT_ON_DATA,
    EXPORT_ON_OPEN,
    EXPORT_ON_REQUEST_HEADERS,
    EXPORT_POST_PREFIX,
    EXPORT_REALLOC,
    EXPORT_WANTED_PHASES,
    HTTP_HOOKS,
    HTTP_PHASES_ALL,
    HTTP_WORLD,
    IMPORT_CAPABILITY,
    IMPORT_MODULE,
    TCP_WORLD,
    WASI_P1_MODULE,
    HttpPhase,
)

__all__ = [
    "WASI_P1_MODULE",
    "BinaryKind",
    "ContractError",
    "CoreContract",
    "CoreHttpContract",
    "CoreModuleInfo",
    "Export",
    "FuncSig",
    "Import",
    "WasmFormatError",
    "check_contract",
    "check_http_contract",
    "check_world_contract",
    "classify",
    "core_modules",
    "largest_code_section",
    "parse_core",
    "unwrap_core",
]

_MAGIC = b"\0asm"
_CORE_VERSION = b"\x01\x00\x00\x00"
_COMPONENT_VERSION = b"\x0d\x00\x01\x00"  # version 0xd, layer 1

# Component-binary section ids that matter here.
_COMPONENT_SECTION_CORE_MODULE = 1
_COMPONENT_SECTION_COMPONENT = 4

# Core section ids.
_SEC_TYPE, _SEC_IMPORT, _SEC_FUNCTION, _SEC_MEMORY, _SEC_EXPORT = 1, 2, 3, 5, 7
_SEC_CODE = 10

_VALTYPES = {
    0x7F: "i32",
    0x7E: "i64",
    0x7D: "f32",
    0x7C: "f64",
    0x7B: "v128",
    0x70: "funcref",
    0x6F: "externref",
}
_EXTERN_KINDS = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}

WASM_PAGE = 65536


class WasmFormatError(ValueError):
    """The bytes are not a well-formed module or component."""


class ContractError(ValueError):
    """A well-formed core module that does not implement the plugin contract."""


class BinaryKind(enum.Enum):
    CORE = "core"
    COMPONENT = "component"


@dataclass(frozen=True, slots=True)
class FuncSig:
    params: tuple[str, ...]
    results: tuple[str, ...]

    def __str__(self) -> str:
        return f"({' '.join(self.params)}) -> ({' '.join(self.results)})"


@dataclass(frozen=True, slots=True)
class Import:
    module: str
    name: str
    kind: str  # func | table | memory | global | tag
    sig: FuncSig | None  # for functions


@dataclass(frozen=True, slots=True)
class Export:
    name: str
    kind: str
    sig: FuncSig | None  # for functions


@dataclass(frozen=True, slots=True)
class CoreModuleInfo:
    imports: tuple[Import, ...]
    exports: tuple[Export, ...]
    memory_min_pages: int | None
    """Minimum pages of the module's own (first, defined) memory."""
    memory_count: int = 0
    """Memories the module defines (imported ones are refused by the contract)."""

    def export(self, name: str) -> Export | None:
        for e in self.exports:
            if e.name == name:
                return e
        return None


# --- byte reader -------------------------------------------------------------


class ByteReader:
    """Bounds-checked reads over a wasm binary (LEB128, names, limits, sections)."""

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise WasmFormatError("unexpected end of binary")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def leb_u(self, max_bits: int = 32) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
            if shift >= max_bits + 7:
                raise WasmFormatError("LEB128 integer too long")
        if result >= 1 << max_bits:
            raise WasmFormatError("LEB128 integer out of range")
        return result

    def bytes_(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise WasmFormatError("unexpected end of binary")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def name(self) -> str:
        raw = self.bytes_(self.leb_u())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise WasmFormatError("name is not UTF-8") from e

    def valtype(self) -> str:
        b = self.byte()
        if b in _VALTYPES:
            return _VALTYPES[b]
        if b in (0x63, 0x64):  # (ref null? heaptype): typed function references
            self._heaptype()
            return "ref"
        raise WasmFormatError(f"unknown value type 0x{b:02x}")

    def _heaptype(self) -> None:
        b = self.data[self.pos] if self.pos < self.end else -1
        if 0x69 <= b <= 0x74:  # abstract heap types
            self.pos += 1
        else:
            self.leb_u(33)

    def limits(self) -> tuple[int, int | None]:
        flags = self.byte()
        if flags & ~0x0F:
            raise WasmFormatError(f"bad limits flags 0x{flags:02x}")
        wide = 64 if flags & 0x04 else 32
        minimum = self.leb_u(wide)
        maximum = self.leb_u(wide) if flags & 0x01 else None
        if flags & 0x08:  # custom page size
            self.leb_u()
        return minimum, maximum

    def sections(self) -> list[tuple[int, int, int]]:
        """(id, start, end) of every section from the current position."""
        out = []
        while self.pos < self.end:
            sid = self.byte()
            size = self.leb_u()
            start = self.pos
            if size > self.end - start:
                raise WasmFormatError(f"section {sid} runs past the end")
            out.append((sid, start, start + size))
            self.pos = start + size
        return out


# --- classification and unwrapping -------------------------------------------


def classify(data: bytes) -> BinaryKind:
    if len(data) < 8 or data[:4] != _MAGIC:
        raise WasmFormatError("not a WebAssembly binary (bad magic)")
    version = data[4:8]
    if version == _CORE_VERSION:
        return BinaryKind.CORE
    if version == _COMPONENT_VERSION:
        return BinaryKind.COMPONENT
    raise WasmFormatError(f"unknown WebAssembly version/layer {version.hex()}")


def core_modules(component: bytes) -> list[bytes]:
    """The core modules embedded at the top level of a component, in order.

    Raises WasmFormatError if the component nests components (then it is not
    a thin wrapper and only the component runtime can run it).
    """
    if classify(component) is not BinaryKind.COMPONENT:
        raise WasmFormatError("not a component")
    modules = []
    for sid, start, end in ByteReader(component, 8).sections():
        if sid == _COMPONENT_SECTION_CORE_MODULE:
            modules.append(component[start:end])
        elif sid == _COMPONENT_SECTION_COMPONENT:
            raise WasmFormatError("component nests components")
    return modules


def largest_code_section(data: bytes) -> int:
    """Bytes of the largest code section among the binary's core modules (the
    module itself, or a component's top-level ones): what the micro-VM's
    ahead-of-time compile grows with."""
    core = classify(data) is BinaryKind.CORE
    largest = 0
    for sid, start, end in ByteReader(data, 8).sections():
        if core and sid == _SEC_CODE:
            largest = max(largest, end - start)
        elif not core and sid in (_COMPONENT_SECTION_CORE_MODULE, _COMPONENT_SECTION_COMPONENT):
            largest = max(largest, largest_code_section(data[start:end]))  # nested: componentize-py's
    return largest


def unwrap_core(data: bytes, wasip2: bool = False) -> bytes | None:
    """The core module that implements the contract on its own, or None.

    A core module is returned as is. For a component: the one embedded module
    exporting on-data (tcp-filter) or on-request-headers (http-filter),
    provided every other module defines no memory (the wit-component shims)
    and the main module imports only contract or WASI p1 functions (so the
    host can stand in for the component glue). Anything
    else (componentize-py's many linked modules) returns None: run it as a
    component. `wasip2`: the main module may also import WASI 0.2 functions
    (the micro-VM guest implements them; the wasmtime tier's core path does not).
    """
    if classify(data) is BinaryKind.CORE:
        return data
    try:
        modules = core_modules(data)
    except WasmFormatError:
        return None
    infos = [(m, parse_core(m)) for m in modules]
    mains = [
        (m, i)
        for m, i in infos
        if i.export(EXPORT_ON_DATA) is not None or i.export(EXPORT_ON_REQUEST_HEADERS) is not None
    ]
    if len(mains) != 1:
        return None
    main, info = mains[0]
    for m, other in infos:
        if m is not main and other.memory_min_pages is not None:
            return None
    for imp in info.imports:
        known = imp.module == WASI_P1_MODULE or imp.module in CAPABILITY_OF_MODULE
        if not known and not (wasip2 and _wasip2(imp.module)):
            return None
    return main


def _wasip2(module: str) -> bool:
    """A WASI 0.2 import module (the micro-VM guest implements them: wasip2*.c)."""
    from vmm.microvm.wasip2_gen import unversioned

    return unversioned(module) is not None


# --- core module parsing ------------------------------------------------------


def parse_core(data: bytes) -> CoreModuleInfo:
    if classify(data) is not BinaryKind.CORE:
        raise WasmFormatError("not a core module")
    types: list[FuncSig | None] = []
    imports: list[Import] = []
    func_types: list[FuncSig | None] = []  # every function index: imported first
    exports: list[Export] = []
    memory_min: int | None = None
    memory_count = 0
    for sid, start, end in ByteReader(data, 8).sections():
        r = ByteReader(data, start, end)
        if sid == _SEC_TYPE:
            types = _parse_types(r)
        elif sid == _SEC_IMPORT:
            for _ in range(r.leb_u()):
                module, name = r.name(), r.name()
                kind = r.byte()
                sig: FuncSig | None = None
                if kind == 0:
                    sig = _type_at(types, r.leb_u())
                    func_types.append(sig)
                elif kind == 1:
                    r.valtype()
                    r.limits()
                elif kind == 2:
                    r.limits()
                elif kind == 3:
                    r.valtype()
                    r.byte()
                elif kind == 4:
                    r.byte()
                    r.leb_u()
                else:
                    raise WasmFormatError(f"unknown import kind {kind}")
                imports.append(Import(module, name, _EXTERN_KINDS[kind], sig))
        elif sid == _SEC_FUNCTION:
            for _ in range(r.leb_u()):
                func_types.append(_type_at(types, r.leb_u()))
        elif sid == _SEC_MEMORY:
            memory_count = r.leb_u()
            if memory_count:
                memory_min = r.limits()[0]
        elif sid == _SEC_EXPORT:
            for _ in range(r.leb_u()):
                name = r.name()
                kind = r.byte()
                index = r.leb_u()
                if kind not in _EXTERN_KINDS:
                    raise WasmFormatError(f"unknown export kind {kind}")
                fsig = None
                if kind == 0:
                    if index >= len(func_types):
                        raise WasmFormatError(f"export {name!r} names missing function {index}")
                    fsig = func_types[index]
                exports.append(Export(name, _EXTERN_KINDS[kind], fsig))
    return CoreModuleInfo(tuple(imports), tuple(exports), memory_min, memory_count)


def _type_at(types: list[FuncSig | None], index: int) -> FuncSig | None:
    if index >= len(types):
        raise WasmFormatError(f"type index {index} out of range")
    return types[index]


def _parse_types(r: ByteReader) -> list[FuncSig | None]:
    out: list[FuncSig | None] = []
    for _ in range(r.leb_u()):
        form = r.byte()
        if form == 0x60:
            params = tuple(r.valtype() for _ in range(r.leb_u()))
            results = tuple(r.valtype() for _ in range(r.leb_u()))
            out.append(FuncSig(params, results))
        else:
            # GC proposal types (rec groups, structs, arrays): no plugin needs
            # them; the runtime validates them, the contract check refuses them.
            raise WasmFormatError(f"unsupported type form 0x{form:02x}")
    return out


# --- the contract ------------------------------------------------------------

_I32, _I64 = "i32", "i64"


def _sig(params: str, results: str = "") -> FuncSig:
    return FuncSig(tuple(params.split()), tuple(results.split()))


REQUIRED_EXPORTS: dict[str, FuncSig] = {
    EXPORT_REALLOC: _sig("i32 i32 i32 i32", "i32"),
    EXPORT_ON_OPEN: _sig("i32 i32 i32 i32"),
    EXPORT_ON_DATA: _sig("i32 i32 i32 i32", "i32"),
    EXPORT_ON_CLOSE: _sig(""),
}
OPTIONAL_EXPORTS: dict[str, FuncSig] = {
    EXPORT_INITIALIZE: _sig(""),
    EXPORT_POST_PREFIX + EXPORT_ON_DATA: _sig("i32"),
    EXPORT_POST_PREFIX + EXPORT_ON_OPEN: _sig(""),
    EXPORT_POST_PREFIX + EXPORT_ON_CLOSE: _sig(""),
}

CONTRACT_IMPORTS: dict[tuple[str, str], FuncSig] = {
    (IMPORT_MODULE["log"], "log"): _sig("i32 i32 i32"),
    (IMPORT_MODULE["clock"], "wall-now"): _sig("", "i64"),
    (IMPORT_MODULE["clock"], "monotonic-now"): _sig("", "i64"),
    (IMPORT_MODULE["random"], "get-u64"): _sig("", "i64"),
    (IMPORT_MODULE["kv"], "get"): _sig("i32 i32 i32"),
    (IMPORT_MODULE["kv"], "set"): _sig("i32 i32 i32 i32"),
    (IMPORT_MODULE["kv"], "delete"): _sig("i32 i32"),
    (IMPORT_MODULE["kv"], "increment"): _sig("i32 i32 i64", "i64"),
    (IMPORT_MODULE["metadata"], "set"): _sig("i32 i32 i32 i32"),
    (IMPORT_MODULE["egress"], "send-datagram"): _sig("i32 i32 i32 i32 i32 i32"),
    (IMPORT_MODULE["connection"], "attributes"): _sig("i32"),  # retptr (tcp-filter only)
}
"""Every host function a core plugin may import, with its core signature."""

WASI_P1_SIGS: dict[str, FuncSig] = {
    "fd_write": _sig("i32 i32 i32 i32", "i32"),
    "clock_time_get": _sig("i32 i64 i32", "i32"),
    "clock_res_get": _sig("i32 i32", "i32"),
    "random_get": _sig("i32 i32", "i32"),
    "args_sizes_get": _sig("i32 i32", "i32"),
    "args_get": _sig("i32 i32", "i32"),
    "environ_sizes_get": _sig("i32 i32", "i32"),
    "environ_get": _sig("i32 i32", "i32"),
    "proc_exit": _sig("i32"),
}
assert set(CONTRACT_IMPORTS) | {(WASI_P1_MODULE, n) for n in WASI_P1_SIGS} == set(IMPORT_CAPABILITY)


@dataclass(frozen=True, slots=True)
class CoreContract:
    """A core module checked against the contract."""

    info: CoreModuleInfo
    capabilities: frozenset[str]
    """Capability (grant) names the module imports, WASI included."""
    has_initialize: bool
    post_returns: frozenset[str]
    """Hooks with a cabi_post_ export, e.g. {"on-data"}."""
    world: str = TCP_WORLD


def _check_imports_and_memory(info: CoreModuleInfo, problems: list[str]) -> frozenset[str]:
    """What both worlds require of imports and memory; returns the capabilities imported."""
    capabilities: set[str] = set()
    for imp in info.imports:
        where = f"import {imp.module}::{imp.name}"
        if imp.kind != "func":
            problems.append(f"{where}: only functions may be imported, not a {imp.kind}")
            continue
        if imp.module == WASI_P1_MODULE:
            want = WASI_P1_SIGS.get(imp.name)
            if want is None:
                problems.append(f"{where}: WASI function not available to plugins")
                continue
        elif _wasip2(imp.module):  # WASI 0.2: its grants are checked per call, as in the component path
            from vmm.microvm.wasip2_gen import core_signature

            sig = core_signature(imp.module, imp.name)
            if sig is None:
                problems.append(f"{where}: not a WASI 0.2 function")
            elif imp.sig != FuncSig(*sig):
                problems.append(f"{where}: signature {imp.sig}, WASI 0.2 says {FuncSig(*sig)}")
            continue
        else:
            want = CONTRACT_IMPORTS.get((imp.module, imp.name))
            if want is None:
                problems.append(f"{where}: not part of the contract")
                continue
        grant = IMPORT_CAPABILITY[(imp.module, imp.name)]
        if grant is not None:
            capabilities.add(grant)
        if imp.sig != want:
            problems.append(f"{where}: signature {imp.sig}, contract says {want}")
    if info.memory_count > 1:
        # The memory cap applies per memory; one memory makes it a total.
        problems.append(f"defines {info.memory_count} memories; a plugin may have one")
    memory = info.export(EXPORT_MEMORY)
    if memory is None or memory.kind != "memory":
        problems.append(f"missing export {EXPORT_MEMORY!r} (memory)")
    return frozenset(capabilities)


def _check_exports(
    info: CoreModuleInfo, required: dict[str, FuncSig], optional: dict[str, FuncSig], problems: list[str]
) -> None:
    for name, want in required.items():
        e = info.export(name)
        if e is None or e.kind != "func":
            problems.append(f"missing export {name!r} (function {want})")
        elif e.sig != want:
            problems.append(f"export {name!r}: signature {e.sig}, contract says {want}")
    for name, want in optional.items():
        e = info.export(name)
        if e is not None and (e.kind != "func" or e.sig != want):
            problems.append(f"export {name!r}: signature {e.sig}, contract says {want}")


def _both_worlds(info: CoreModuleInfo) -> str | None:
    """The refusal message for a module exporting hooks of both worlds, else None."""
    http = [name for name in (EXPORT_WANTED_PHASES, *HTTP_HOOKS.values()) if info.export(name) is not None]
    if info.export(EXPORT_ON_DATA) is None or not http:
        return None
    return (
        f"exports hooks of both worlds ({TCP_WORLD}: {EXPORT_ON_DATA!r}; {HTTP_WORLD}: "
        f"{', '.join(repr(n) for n in http)}); a plugin implements exactly one world"
    )


def _check_world(info: CoreModuleInfo, world: str, problems: list[str]) -> frozenset[str]:
    """What both worlds check alike: imports and memory, one world only, the world's
    exports. Appends to `problems`; returns the capabilities imported."""
    capabilities = _check_imports_and_memory(info, problems)
    both = _both_worlds(info)
    if both is not None:
        problems.append(both)
    tcp = world == TCP_WORLD
    required, optional = (
        (REQUIRED_EXPORTS, OPTIONAL_EXPORTS) if tcp else (HTTP_REQUIRED_EXPORTS, HTTP_OPTIONAL_EXPORTS)
    )
    _check_exports(info, required, optional, problems)
    hooks = (EXPORT_ON_DATA, EXPORT_ON_REQUEST_HEADERS)
    own, other = hooks if tcp else hooks[::-1]
    if info.export(own) is None and info.export(other) is not None:
        problems.append(f"this module implements the {HTTP_WORLD if tcp else TCP_WORLD} world, not {world}")
    if not tcp and "connection" in capabilities:  # a request's attributes are hook arguments
        problems.append(f"import {IMPORT_MODULE['connection']}::attributes: tcp-filter only, not in {world}")
    return capabilities


def check_contract(core: bytes) -> CoreContract:
    """Check a core module's imports and exports against the tcp-filter contract."""
    info = parse_core(core)
    problems: list[str] = []
    capabilities = _check_world(info, TCP_WORLD, problems)
    if problems:
        raise ContractError("; ".join(problems))
    posts = frozenset(
        hook
        for hook in (EXPORT_ON_OPEN, EXPORT_ON_DATA, EXPORT_ON_CLOSE)
        if info.export(EXPORT_POST_PREFIX + hook) is not None
    )
    return CoreContract(
        info=info,
        capabilities=capabilities,
        has_initialize=info.export(EXPORT_INITIALIZE) is not None,
        post_returns=posts,
    )


# --- the http-filter world ------------------------------------------------------

_DECISION_HOOK_SIGS: dict[str, FuncSig] = {
    HTTP_HOOKS[HttpPhase.REQUEST_HEADERS]: _sig("i32 i32 i32 i32 i32", "i32"),
    HTTP_HOOKS[HttpPhase.REQUEST_BODY]: _sig("i32 i32 i32", "i32"),
    HTTP_HOOKS[HttpPhase.REQUEST_TRAILERS]: _sig("i32 i32", "i32"),
    HTTP_HOOKS[HttpPhase.RESPONSE_HEADERS]: _sig("i32 i32 i32 i32 i32", "i32"),
    HTTP_HOOKS[HttpPhase.RESPONSE_BODY]: _sig("i32 i32 i32", "i32"),
    HTTP_HOOKS[HttpPhase.RESPONSE_TRAILERS]: _sig("i32 i32", "i32"),
}

HTTP_REQUIRED_EXPORTS: dict[str, FuncSig] = {
    EXPORT_REALLOC: _sig("i32 i32 i32 i32", "i32"),
    EXPORT_WANTED_PHASES: _sig("", "i32"),
    EXPORT_ON_OPEN: _sig("i32 i32 i32 i32"),
    **_DECISION_HOOK_SIGS,
    EXPORT_ON_CLOSE: _sig(""),
}
"""The http-filter world's core exports (plugins/wit/README.md), besides `memory`."""

HTTP_OPTIONAL_EXPORTS: dict[str, FuncSig] = {
    EXPORT_INITIALIZE: _sig(""),
    EXPORT_POST_PREFIX + EXPORT_WANTED_PHASES: _sig("i32"),
    EXPORT_POST_PREFIX + EXPORT_ON_OPEN: _sig(""),
    EXPORT_POST_PREFIX + EXPORT_ON_CLOSE: _sig(""),
    **{EXPORT_POST_PREFIX + hook: _sig("i32") for hook in _DECISION_HOOK_SIGS},
}


@dataclass(frozen=True, slots=True)
class CoreHttpContract:
    """A core module checked against the http-filter world."""

    info: CoreModuleInfo
    capabilities: frozenset[str]
    """Capability (grant) names the module imports, WASI included."""
    has_initialize: bool
    post_returns: frozenset[str]
    """Hooks with a cabi_post_ export, e.g. {"on-request-body"}."""
    phases: HttpPhase | None
    """What `wanted-phases` returns, read from its code when the body is a
    constant (`i32.const N`, as the C SDK compiles it); None: the host must
    call it once at load time (README: "Phases")."""
    world: str = HTTP_WORLD


def check_http_contract(core: bytes) -> CoreHttpContract:
    """Check a core module's imports and exports against the http-filter world."""
    info = parse_core(core)
    problems: list[str] = []
    capabilities = _check_world(info, HTTP_WORLD, problems)
    phases: HttpPhase | None = None
    if not problems:
        constant = constant_i32_export(core, EXPORT_WANTED_PHASES)
        if constant is not None:
            if constant & ~int(HTTP_PHASES_ALL):
                problems.append(
                    f"export {EXPORT_WANTED_PHASES!r} returns 0x{constant & 0xFFFFFFFF:x}, "
                    f"which has bits outside the phases flags (0x{int(HTTP_PHASES_ALL):x})"
                )
            else:
                phases = HttpPhase(constant)
    if problems:
        raise ContractError("; ".join(problems))
    posts = frozenset(
        hook
        for hook in (EXPORT_WANTED_PHASES, EXPORT_ON_OPEN, *HTTP_HOOKS.values(), EXPORT_ON_CLOSE)
        if info.export(EXPORT_POST_PREFIX + hook) is not None
    )
    return CoreHttpContract(
        info=info,
        capabilities=capabilities,
        has_initialize=info.export(EXPORT_INITIALIZE) is not None,
        post_returns=posts,
        phases=phases,
    )


def check_world_contract(core: bytes) -> CoreContract | CoreHttpContract:
    """Check a core module against the world it implements: http-filter if it
    exports any http-filter hook (or `wanted-phases`), tcp-filter otherwise.
    A module exporting hooks of both worlds is refused (ContractError)."""
    info = parse_core(core)
    both = _both_worlds(info)
    if both is not None:
        raise ContractError(both)
    if any(info.export(name) is not None for name in (EXPORT_WANTED_PHASES, *HTTP_HOOKS.values())):
        return check_http_contract(core)
    return check_contract(core)


def constant_i32_export(core: bytes, name: str) -> int | None:
    """N if the exported function `name` (defined, not imported) has no
    locals and its body is exactly `i32.const N`; else None. Read from the
    code section without running anything."""
    imported_funcs = 0
    index: int | None = None
    code: tuple[int, int] | None = None
    for sid, start, end in ByteReader(core, 8).sections():
        r = ByteReader(core, start, end)
        if sid == _SEC_IMPORT:
            for _ in range(r.leb_u()):
                r.name()
                r.name()
                kind = r.byte()
                if kind == 0:
                    imported_funcs += 1
                    r.leb_u()
                elif kind == 1:
                    r.valtype()
                    r.limits()
                elif kind == 2:
                    r.limits()
                elif kind == 3:
                    r.valtype()
                    r.byte()
                else:
                    r.byte()
                    r.leb_u()
        elif sid == _SEC_EXPORT:
            for _ in range(r.leb_u()):
                ename, kind, idx = r.name(), r.byte(), r.leb_u()
                if ename == name and kind == 0:
                    index = idx
        elif sid == _SEC_CODE:
            code = (start, end)
    if index is None or code is None or index < imported_funcs:
        return None
    r = ByteReader(core, *code)
    count = r.leb_u()
    local = index - imported_funcs
    if local >= count:
        return None
    for _ in range(local):
        size = r.leb_u()
        r.bytes_(size)
    body = r.bytes_(r.leb_u())
    # locals vector length 0, i32.const (0x41) signed LEB128, end (0x0b)
    if len(body) < 4 or body[0] != 0 or body[1] != 0x41 or body[-1] != 0x0B:
        return None
    value, shift, pos = 0, 0, 2
    while pos < len(body) - 1:
        b = body[pos]
        value |= (b & 0x7F) << shift
        shift += 7
        pos += 1
        if not b & 0x80:
            break
    else:
        return None
    if pos != len(body) - 1 or shift > 35:
        return None
    if b & 0x40:
        value -= 1 << shift
    return value
