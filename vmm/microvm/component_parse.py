"""Read a component's instantiation graph from its binary (top level only).

What the micro-VM glue needs is the component's *core* wiring: its core
modules, the core instances in order (instantiate a module with named
argument instances, or a bag of exports), the core functions, memories,
tables and globals those name (module exports, `canon lower` of an imported
function, `canon resource.drop/new/rep`), and the `canon lift`s behind the
component's exported functions. Component-level types are only counted
(their index space matters for resource aliases), each defined one kept as
a DefinedType that component_types.py reads when the glue needs it (a
resource the component defines); nested components and
component instances are counted and otherwise ignored: the glue runs only
the exports the contract names, and refuses anything it cannot resolve.

The binary format is the component model's (Binary.md); parsing it here
keeps the glue independent of any tool's text output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "CanonOpts",
    "Component",
    "ComponentFormatError",
    "CoreRef",
    "DefinedType",
    "parse_component",
]

_PREAMBLE = b"\x00asm\x0d\x00\x01\x00"

# core sorts
FUNC, TABLE, MEMORY, GLOBAL = 0x00, 0x01, 0x02, 0x03
CORE_TYPE, CORE_MODULE, CORE_INSTANCE = 0x10, 0x11, 0x12
CORE_SORTS = {FUNC: "func", TABLE: "table", MEMORY: "memory", GLOBAL: "global"}


class ComponentFormatError(ValueError):
    """The component uses a construct the micro-VM glue does not handle."""


@dataclass(frozen=True, slots=True)
class CanonOpts:
    memory: int | None = None  # core memory index
    realloc: int | None = None  # core func index
    post_return: int | None = None  # core func index
    encoding: str = "utf8"


@dataclass(frozen=True, slots=True)
class CoreRef:
    """What one core index-space entry is.

    kind: "export" (args: core instance, name), "lower" (component func,
    opts), "resource.drop"/"resource.new"/"resource.rep" (component type)."""

    kind: str
    target: int
    name: str = ""
    opts: CanonOpts = CanonOpts()


@dataclass(frozen=True, slots=True)
class DefinedType:
    """A type the component's own type section defines: entry `ordinal` of
    `section` (the section's bytes after its size), read only when needed."""

    section: bytes
    ordinal: int


@dataclass(slots=True)
class Component:
    modules: list[bytes] = field(default_factory=list)
    # core instance: ("instantiate", module index, {arg name: core instance})
    #             or ("bag", None, {export name: (core sort, index)})
    core_instances: list[tuple[str, int | None, dict[str, object]]] = field(default_factory=list)
    core: dict[int, list[CoreRef]] = field(default_factory=lambda: {s: [] for s in CORE_SORTS})
    # component funcs: ("import", name, "") | ("alias", instance, name)
    #                  | ("lift", core func, opts) | ("export", func, "")
    funcs: list[tuple[str, object, object]] = field(default_factory=list)
    # component instances: import name, or None (defined/exported here)
    instances: list[str | None] = field(default_factory=list)
    # component types: (instance import name, export name) for aliases of an
    # imported instance's type export, a DefinedType for the type section's
    # own (and exports of them), else None
    types: list[tuple[str, str] | DefinedType | None] = field(default_factory=list)
    exports: dict[str, int] = field(default_factory=dict)  # func exports: name -> func
    imports: list[str] = field(default_factory=list)
    producers: dict[str, list[str]] = field(default_factory=dict)
    """The top-level producers section: field (language, processed-by, ...) -> names."""

    def lifted(self, func: int) -> tuple[int, CanonOpts]:
        """The core func and options of the `canon lift` behind component func `func`."""
        seen = 0
        while seen < 64:
            kind, a, b = self.funcs[func]
            if kind == "lift":
                assert isinstance(a, int) and isinstance(b, CanonOpts)
                return a, b
            if kind != "export":
                raise ComponentFormatError(f"exported function {func} is not a lifted core function")
            assert isinstance(a, int)
            func = a
            seen += 1
        raise ComponentFormatError("export chain too long")

    def imported_func(self, func: int) -> tuple[str, str]:
        """(instance import name, function name) of an imported component func
        (a root-level import gives ("", name))."""
        kind, a, b = self.funcs[func]
        if kind == "import":
            assert isinstance(a, str)
            return "", a
        if kind == "alias":
            assert isinstance(a, int) and isinstance(b, str)
            inst = self.instances[a]
            if inst is None:
                raise ComponentFormatError(f"lowered function {b!r} is not from an imported instance")
            return inst, b
        raise ComponentFormatError(f"canon lower of component function {func} ({kind}) is not an import")


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def done(self) -> bool:
        return self.pos >= self.end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise ComponentFormatError("truncated component")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u32(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 28:
                raise ComponentFormatError("LEB128 too long")
        if result >= 1 << 32:
            raise ComponentFormatError("LEB128 out of range")
        return result

    def raw(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise ComponentFormatError("truncated component")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def name(self) -> str:
        try:
            return self.raw(self.u32()).decode()
        except UnicodeDecodeError as e:
            raise ComponentFormatError("name is not UTF-8") from e

    def extern_name(self) -> str:
        tag = self.byte()
        if tag == 0x00:
            return self.name()
        if tag == 0x01:  # name with a version suffix
            n = self.name()
            self.name()
            return n
        raise ComponentFormatError(f"unknown extern name tag {tag:#x}")


def _opts(r: _Reader) -> CanonOpts:
    memory = realloc = post = None
    encoding = "utf8"
    for _ in range(r.u32()):
        tag = r.byte()
        if tag in (0x00, 0x01, 0x02):
            encoding = ("utf8", "utf16", "latin1+utf16")[tag]
        elif tag == 0x03:
            memory = r.u32()
        elif tag == 0x04:
            realloc = r.u32()
        elif tag == 0x05:
            post = r.u32()
        else:
            raise ComponentFormatError(f"canonical option {tag:#x} (async) is not supported")
    return CanonOpts(memory, realloc, post, encoding)


def _sort(r: _Reader) -> tuple[int, int | None]:
    """(component sort, core sort or None)."""
    s = r.byte()
    return (s, r.byte()) if s == 0x00 else (s, None)


class _Builder:
    def __init__(self, c: Component) -> None:
        self.c = c
        self.components = 0

    def add(self, sort: int, core: int | None, entry: object) -> None:
        """Append to the index space of (sort, core sort)."""
        c = self.c
        if sort == 0x00:
            if core in CORE_SORTS:
                assert isinstance(entry, CoreRef)
                c.core[core].append(entry)
            elif core == CORE_MODULE:
                assert isinstance(entry, bytes)
                c.modules.append(entry)
            elif core == CORE_INSTANCE:
                c.core_instances.append(entry)  # type: ignore[arg-type]
            elif core == CORE_TYPE:
                pass
            else:
                raise ComponentFormatError(f"unknown core sort {core!r}")
        elif sort == 0x01:
            c.funcs.append(entry)  # type: ignore[arg-type]
        elif sort == 0x03:
            c.types.append(entry)  # type: ignore[arg-type]
        elif sort == 0x04:
            self.components += 1
        elif sort == 0x05:
            c.instances.append(entry)  # type: ignore[arg-type]
        else:
            raise ComponentFormatError(f"component sort {sort:#x} (values) is not supported")

    def copy(self, sort: int, core: int | None, index: int) -> object:
        """The entry at `index` of a sort (for outer aliases and exports)."""
        c = self.c
        space: Sequence[object]
        if sort == 0x00:
            if core == CORE_TYPE:
                return None
            if core == CORE_MODULE:
                space = c.modules
            elif core == CORE_INSTANCE:
                space = c.core_instances
            else:
                space = c.core.get(core if core is not None else -1, [])
        else:
            if sort == 0x04:
                return None
            spaces: dict[int, Sequence[object]] = {0x01: c.funcs, 0x03: c.types, 0x05: c.instances}
            space = spaces.get(sort, [])
        if index >= len(space):
            raise ComponentFormatError(f"index {index} out of range for sort {sort:#x}/{core}")
        return space[index]


def _section(b: _Builder, sid: int, r: _Reader) -> None:
    c = b.c
    if sid == 1:
        b.add(0x00, CORE_MODULE, r.raw(r.end - r.pos))
        return
    if sid in (3, 4, 7):  # core types, nested components, types: counted
        if sid == 4:
            b.add(0x04, None, None)
            r.pos = r.end
            return
        section = r.data[r.pos:r.end] if sid == 7 else b""  # its count first
        n = r.u32()
        for i in range(n):
            b.add(0x03 if sid == 7 else 0x00, None if sid == 7 else CORE_TYPE,
                  DefinedType(section, i) if sid == 7 else None)
        r.pos = r.end
        return
    if sid == 5:
        for _ in range(r.u32()):
            b.add(0x05, None, None)
        r.pos = r.end
        return
    if sid == 2:
        for _ in range(r.u32()):
            tag = r.byte()
            if tag == 0x00:
                module = r.u32()
                args: dict[str, object] = {}
                for _ in range(r.u32()):
                    name = r.name()
                    if r.byte() != 0x12:
                        raise ComponentFormatError("core instantiate argument is not an instance")
                    args[name] = r.u32()
                b.add(0x00, CORE_INSTANCE, ("instantiate", module, args))
            elif tag == 0x01:
                exports: dict[str, object] = {}
                for _ in range(r.u32()):
                    name = r.name()
                    exports[name] = (r.byte(), r.u32())
                b.add(0x00, CORE_INSTANCE, ("bag", None, exports))
            else:
                raise ComponentFormatError(f"unknown core instance form {tag:#x}")
        return
    if sid == 6:
        for _ in range(r.u32()):
            sort, core = _sort(r)
            tag = r.byte()
            if tag == 0x00:  # export of a component instance
                inst, name = r.u32(), r.name()
                if sort == 0x01:
                    b.add(sort, core, ("alias", inst, name))
                elif sort == 0x03:
                    imp = c.instances[inst] if inst < len(c.instances) else None
                    b.add(sort, core, (imp, name) if imp is not None else None)
                else:
                    b.add(sort, core, None)
            elif tag == 0x01:  # export of a core instance
                inst, name = r.u32(), r.name()
                if sort != 0x00 or core not in CORE_SORTS:
                    raise ComponentFormatError("core export alias of an unsupported sort")
                b.add(sort, core, CoreRef("export", inst, name))
            elif tag == 0x02:  # outer
                count, index = r.u32(), r.u32()
                if count != 0:
                    raise ComponentFormatError("outer alias beyond the component")
                b.add(sort, core, b.copy(sort, core, index))
            else:
                raise ComponentFormatError(f"unknown alias target {tag:#x}")
        return
    if sid == 8:
        for _ in range(r.u32()):
            tag = r.byte()
            if tag == 0x00:
                if r.byte() != 0x00:
                    raise ComponentFormatError("bad canon lift")
                func = r.u32()
                opts = _opts(r)
                r.u32()  # the lifted type
                b.add(0x01, None, ("lift", func, opts))
            elif tag == 0x01:
                if r.byte() != 0x00:
                    raise ComponentFormatError("bad canon lower")
                func = r.u32()
                b.add(0x00, FUNC, CoreRef("lower", func, opts=_opts(r)))
            elif tag in (0x02, 0x03, 0x04, 0x07):
                builtin = {0x02: "resource.new", 0x03: "resource.drop", 0x04: "resource.rep",
                           0x07: "resource.drop"}[tag]
                b.add(0x00, FUNC, CoreRef(builtin, r.u32()))
            else:
                raise ComponentFormatError(f"canon built-in {tag:#x} (async/threads) is not supported")
        return
    if sid == 10:
        for _ in range(r.u32()):
            name = r.extern_name()
            c.imports.append(name)
            kind = r.byte()
            if kind == 0x00:
                r.byte()
                r.u32()
                raise ComponentFormatError("a component importing a core module cannot run")
            if kind == 0x03:
                if r.byte() == 0x00:
                    r.u32()
                b.add(0x03, None, None)
            elif kind in (0x01, 0x04, 0x05):
                r.u32()
                b.add(kind, None, ("import", name, "") if kind == 0x01 else (name if kind == 0x05 else None))
            else:
                raise ComponentFormatError(f"import {name!r} of kind {kind:#x} is not supported")
        return
    if sid == 11:
        for _ in range(r.u32()):
            name = r.extern_name()
            sort, core = _sort(r)
            index = r.u32()
            if r.byte() == 0x01:  # an explicit type ascription
                kind = r.byte()
                if kind == 0x03:
                    if r.byte() == 0x00:
                        r.u32()
                elif kind == 0x00:
                    r.byte()
                    r.u32()
                else:
                    r.u32()
            if sort == 0x01:
                c.exports[name] = index
                b.add(sort, core, ("export", index, ""))
            elif sort == 0x05:
                b.add(sort, core, None)
            else:
                b.add(sort, core, b.copy(sort, core, index) if sort != 0x04 else None)
        return
    if sid == 0:
        if r.name() == "producers":
            for _ in range(r.u32()):
                key = r.name()
                names = c.producers.setdefault(key, [])
                for _ in range(r.u32()):
                    names.append(r.name())
                    r.name()  # its version
        r.pos = r.end
        return
    raise ComponentFormatError(f"component section {sid} (start/values) is not supported")


def parse_component(data: bytes) -> Component:
    """The top-level graph of a component binary (ComponentFormatError if it
    is not one, or uses what the glue cannot run)."""
    if data[:8] != _PREAMBLE:
        raise ComponentFormatError("not a component (bad preamble)")
    comp = Component()
    b = _Builder(comp)
    r = _Reader(data, 8)
    while not r.done():
        sid = r.byte()
        size = r.u32()
        if size > r.end - r.pos:
            raise ComponentFormatError("section runs past the end")
        sr = _Reader(data, r.pos, r.pos + size)
        _section(b, sid, sr)
        if sr.pos != sr.end:
            raise ComponentFormatError(f"section {sid} has {sr.end - sr.pos} trailing bytes")
        r.pos += size
    return comp
