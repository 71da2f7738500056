"""The import, export and type sections of a WebAssembly binary, read in Python.

The conformance runner links spec-test modules itself: it needs every import
(module, name, kind, type) and every export (name, kind, index) exactly as the
binary spells them (names may hold quotes, backslashes, any UTF-8), and the
types to refuse an import whose type does not match the export it names
(`assert_unlinkable`). Only these sections are decoded; anything this reader
does not understand raises BinaryError (the caller reports it as its own
limitation, never as a verdict on the module).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vmm.wasm_module import ByteReader, WasmFormatError

__all__ = ["BinaryError", "Export", "Import", "Limits", "ModuleInfo", "read_module"]

FUNC, TABLE, MEMORY, GLOBAL, TAG = 0, 1, 2, 3, 4
KIND_NAMES = {FUNC: "func", TABLE: "table", MEMORY: "memory", GLOBAL: "global", TAG: "tag"}


BinaryError = WasmFormatError
"""What this reader cannot read (the runtime reader's error: one type to catch)."""


@dataclass(frozen=True)
class Limits:
    min: int
    max: int | None
    is64: bool = False
    shared: bool = False
    page_log2: int = 16


FuncType = tuple[tuple[str, ...], tuple[str, ...]]


@dataclass(frozen=True)
class Import:
    module: str
    name: str
    kind: int
    func_type: FuncType | None = None  # FUNC and TAG
    ref_type: str = ""                 # TABLE
    limits: Limits | None = None       # TABLE, MEMORY
    val_type: str = ""                 # GLOBAL
    mutable: bool = False              # GLOBAL


@dataclass(frozen=True)
class Export:
    name: str
    kind: int
    index: int


@dataclass
class ModuleInfo:
    types: list[FuncType | None] = field(default_factory=list)  # None: a GC struct/array type
    imports: list[Import] = field(default_factory=list)
    exports: list[Export] = field(default_factory=list)
    funcs: list[int] = field(default_factory=list)   # type index of every function, imports first
    tables: list[tuple[str, Limits]] = field(default_factory=list)
    memories: list[Limits] = field(default_factory=list)
    globals: list[tuple[str, bool]] = field(default_factory=list)

    def export_type(self, e: Export) -> object:
        """What an importer must match: a function type, (reftype, limits), limits or (type, mut)."""
        try:
            if e.kind in (FUNC, TAG):
                return self.types[self.funcs[e.index]] if e.kind == FUNC else None
            if e.kind == TABLE:
                return self.tables[e.index]
            if e.kind == MEMORY:
                return self.memories[e.index]
            if e.kind == GLOBAL:
                return self.globals[e.index]
        except IndexError:
            raise BinaryError(f"export {e.name!r} names a missing {KIND_NAMES[e.kind]}") from None
        raise BinaryError(f"export kind {e.kind}")


_NUM = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128"}
_ABSTRACT = {0x70: "funcref", 0x6F: "externref", 0x6E: "anyref", 0x6D: "eqref", 0x6C: "i31ref",
             0x6B: "structref", 0x6A: "arrayref", 0x69: "exnref", 0x71: "nullref",
             0x72: "nullexternref", 0x73: "nullfuncref", 0x74: "nullexnref"}


class _Reader(ByteReader):
    """The runtime's byte reader (bounds, names) plus the signed LEB128 and the
    GC-era types only the spec tests need."""

    def uleb(self, bits: int = 64) -> int:
        return self._leb(bits + 7, signed=False)

    def sleb(self) -> int:
        return self._leb(70, signed=True)

    def _leb(self, max_shift: int, signed: bool) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
            if shift > max_shift:
                raise BinaryError("LEB128 too long")
        if signed and b & 0x40:
            result -= 1 << shift
        return result

    def val_type(self) -> str:
        b = self.byte()
        if b in _NUM:
            return _NUM[b]
        if b in _ABSTRACT:
            return _ABSTRACT[b]
        if b in (0x63, 0x64):  # (ref null ht) / (ref ht)
            ht = self.sleb()
            heap = _ABSTRACT.get(ht & 0x7F, "?") if ht < 0 else f"${ht}"
            return f"(ref {'null ' if b == 0x63 else ''}{heap})"
        raise BinaryError(f"value type {b:#x}")

    def full_limits(self) -> Limits:
        flags = self.byte()
        if flags & ~0x0F:
            raise BinaryError(f"limits flags {flags:#x}")
        lo = self.uleb()
        hi = self.uleb() if flags & 1 else None
        page = self.uleb(32) if flags & 8 else 16
        return Limits(lo, hi, bool(flags & 4), bool(flags & 2), page)

    def func_type(self) -> FuncType:
        params = tuple(self.val_type() for _ in range(self.uleb(32)))
        results = tuple(self.val_type() for _ in range(self.uleb(32)))
        return params, results

    def comp_type(self) -> FuncType | None:
        form = self.byte()
        if form == 0x60:
            return self.func_type()
        if form == 0x5F:  # struct: fields
            for _ in range(self.uleb(32)):
                self.storage_type()
            return None
        if form == 0x5E:  # array: one field
            self.storage_type()
            return None
        raise BinaryError(f"type form {form:#x}")

    def storage_type(self) -> None:
        if self.pos < self.end and self.data[self.pos] in (0x78, 0x77):  # i8, i16
            self.pos += 1
        else:
            self.val_type()
        self.byte()  # mutability

    def sub_type(self) -> FuncType | None:
        form = self.data[self.pos] if self.pos < self.end else -1
        if form in (0x50, 0x4F):  # sub / sub final: supertypes, then the type
            self.pos += 1
            for _ in range(self.uleb(32)):
                self.uleb(32)
        return self.comp_type()


def _import(r: _Reader, module: str, name: str, kind: int, info: ModuleInfo) -> Import:
    if kind == FUNC:
        t = r.uleb(32)
        info.funcs.append(t)
        return Import(module, name, kind, func_type=_type(info, t))
    if kind == TABLE:
        ref, lim = r.val_type(), r.full_limits()
        info.tables.append((ref, lim))
        return Import(module, name, kind, ref_type=ref, limits=lim)
    if kind == MEMORY:
        lim = r.full_limits()
        info.memories.append(lim)
        return Import(module, name, kind, limits=lim)
    if kind == GLOBAL:
        vt, mut = r.val_type(), r.byte() == 1
        info.globals.append((vt, mut))
        return Import(module, name, kind, val_type=vt, mutable=mut)
    if kind == TAG:
        r.byte()  # attribute: exception
        return Import(module, name, kind, func_type=_type(info, r.uleb(32)))
    raise BinaryError(f"import kind {kind:#x}")


def _type(info: ModuleInfo, index: int) -> FuncType | None:
    if index >= len(info.types):
        raise BinaryError(f"type index {index} out of range")
    return info.types[index]


def _import_section(r: _Reader, info: ModuleInfo) -> None:
    total = r.uleb(32)  # imports, not groups: a compact group holds several
    while len(info.imports) < total:
        module = r.name()
        name = r.name()
        kind = r.byte()
        if name == "" and kind in (0x7F, 0x7E):  # compact imports
            if kind == 0x7F:  # vec(name externtype)
                for _ in range(r.uleb(32)):
                    n = r.name()
                    info.imports.append(_import(r, module, n, r.byte(), info))
            else:  # one externtype for vec(name)
                proto = _import(r, module, "", r.byte(), info)
                for i in range(r.uleb(32)):
                    if i:  # _import counted the prototype once already
                        _count_again(proto, info)
                    info.imports.append(Import(**{**proto.__dict__, "name": r.name()}))
            continue
        info.imports.append(_import(r, module, name, kind, info))


def _count_again(proto: Import, info: ModuleInfo) -> None:
    if proto.kind == FUNC:
        info.funcs.append(info.funcs[-1])
    elif proto.kind == TABLE and proto.limits:
        info.tables.append((proto.ref_type, proto.limits))
    elif proto.kind == MEMORY and proto.limits:
        info.memories.append(proto.limits)
    elif proto.kind == GLOBAL:
        info.globals.append((proto.val_type, proto.mutable))


def _skip_const_expr(r: _Reader) -> None:
    """Only its end matters here: skip to the `end` opcode of a constant expression."""
    depth = 0
    while True:
        op = r.byte()
        if op == 0x0B:
            if depth == 0:
                return
            depth -= 1
        elif op in (0x41, 0x42):
            r.sleb()
        elif op == 0x43:
            r.pos += 4
        elif op == 0x44:
            r.pos += 8
        elif op in (0x23, 0xD2):  # global.get, ref.func
            r.uleb(32)
        elif op == 0xD0:  # ref.null ht
            r.sleb()
        elif op in (0x6A, 0x6B, 0x6C, 0x7C, 0x7D, 0x7E):  # extended-const arithmetic
            pass
        elif op == 0xFD:  # v128.const
            sub = r.uleb(32)
            if sub != 12:
                raise BinaryError(f"constant opcode 0xfd {sub}")
            r.pos += 16
        elif op == 0xFB:  # GC constant instructions: struct.new, array.new, ref.i31, ...
            sub = r.uleb(32)
            for _ in range({0: 1, 1: 1, 6: 2, 7: 2, 8: 2, 28: 0, 26: 0, 27: 0}.get(sub, 0)):
                r.uleb(32)
            if sub not in (0, 1, 6, 7, 8, 28, 26, 27):
                raise BinaryError(f"constant opcode 0xfb {sub}")
        else:
            raise BinaryError(f"constant opcode {op:#x}")


def read_module(data: bytes) -> ModuleInfo:
    """Decode types, imports, functions, tables, memories, globals and exports."""
    if data[:4] != b"\0asm" or len(data) < 8:
        raise BinaryError("not a wasm module")
    info = ModuleInfo()
    r = _Reader(data, 8)
    while r.pos < r.end:
        sid = r.byte()
        size = r.uleb(32)
        end = r.pos + size
        if end > len(data):
            raise BinaryError("section past the end")
        s = _Reader(data, r.pos, end)
        if sid == 1:
            for _ in range(s.uleb(32)):
                if s.pos < s.end and s.data[s.pos] == 0x4E:  # rec group
                    s.pos += 1
                    for _ in range(s.uleb(32)):
                        info.types.append(s.sub_type())
                else:
                    info.types.append(s.sub_type())
        elif sid == 2:
            _import_section(s, info)
        elif sid == 3:
            info.funcs += [s.uleb(32) for _ in range(s.uleb(32))]
        elif sid == 4:
            for _ in range(s.uleb(32)):
                if s.pos < s.end and s.data[s.pos] == 0x40:  # table with an initialiser expression
                    s.pos += 2
                    ref, lim = s.val_type(), s.full_limits()
                    _skip_const_expr(s)
                else:
                    ref, lim = s.val_type(), s.full_limits()
                info.tables.append((ref, lim))
        elif sid == 5:
            info.memories += [s.full_limits() for _ in range(s.uleb(32))]
        elif sid == 6:
            for _ in range(s.uleb(32)):
                vt, mut = s.val_type(), s.byte() == 1
                _skip_const_expr(s)
                info.globals.append((vt, mut))
        elif sid == 7:
            for _ in range(s.uleb(32)):
                name = s.name()
                info.exports.append(Export(name, s.byte(), s.uleb(32)))
        r.pos = end
    return info
