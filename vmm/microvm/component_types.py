"""The resource types a component defines itself (Binary.md `resourcetype`).

component_parse.py keeps each entry of a component's type sections unread
(DefinedType); the glue asks here, only for a type that a `canon
resource.new/rep/drop` names, whether it is a resource and which core
function is its destructor. Reaching entry N means skipping the entries
before it in its section, so the value types and function types are read
too; anything else before it (component or instance types) is refused, as
is a resource whose representation is not i32.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmm.microvm.component_parse import ComponentFormatError, DefinedType, _Reader

__all__ = ["Resource", "defined_resource"]

_PRIMITIVES = frozenset(range(0x73, 0x80)) | {0x64}  # bool .. string, error-context
_RESOURCE, _RESOURCE_ASYNC, _FUNC = 0x3F, 0x3E, 0x40


@dataclass(frozen=True, slots=True)
class Resource:
    """A resource the component defines: (rep i32), destructor a core func index or None."""

    dtor: int | None


def _option(r: _Reader) -> bool:
    tag = r.byte()
    if tag not in (0x00, 0x01):
        raise ComponentFormatError(f"bad option tag {tag:#x}")
    return tag == 0x01


def _valtype(r: _Reader) -> None:
    if r.pos < r.end and r.data[r.pos] in _PRIMITIVES:
        r.pos += 1
    else:
        r.u32()  # a type index


def _labelled(r: _Reader) -> None:
    for _ in range(r.u32()):
        r.name()
        _valtype(r)


def _skip(r: _Reader) -> None:
    """Past one type entry."""
    tag = r.byte()
    if tag in _PRIMITIVES:
        return
    if tag == _RESOURCE:
        r.byte()  # the representation
        if _option(r):
            r.u32()  # the destructor
        return
    if tag == 0x72:  # record
        _labelled(r)
    elif tag == 0x71:  # variant: cases (label, optional type, 0x00)
        for _ in range(r.u32()):
            r.name()
            if _option(r):
                _valtype(r)
            if r.byte() != 0x00:
                raise ComponentFormatError("a variant case refines another")
    elif tag in (0x70, 0x6B):  # list, option
        _valtype(r)
    elif tag == 0x67:  # fixed-size list
        _valtype(r)
        r.u32()
    elif tag == 0x6F:  # tuple
        for _ in range(r.u32()):
            _valtype(r)
    elif tag in (0x6E, 0x6D):  # flags, enum
        for _ in range(r.u32()):
            r.name()
    elif tag == 0x6A:  # result
        for _ in range(2):
            if _option(r):
                _valtype(r)
    elif tag in (0x69, 0x68):  # own, borrow
        r.u32()
    elif tag in (0x66, 0x65):  # stream, future
        if _option(r):
            _valtype(r)
    elif tag == _FUNC:
        _labelled(r)
        results = r.byte()
        if results == 0x00:
            _valtype(r)
        elif results != 0x01 or r.byte() != 0x00:
            raise ComponentFormatError("a function type with named results")
    else:
        raise ComponentFormatError(f"type {tag:#x} before a resource type is not read here")


def defined_resource(entry: DefinedType) -> Resource | None:
    """The resource `entry` defines, None if it defines another type."""
    r = _Reader(entry.section)
    count = r.u32()
    if entry.ordinal >= count:
        raise ComponentFormatError(f"type entry {entry.ordinal} of {count}")
    for _ in range(entry.ordinal):
        _skip(r)
    tag = r.byte()
    if tag == _RESOURCE_ASYNC:
        raise ComponentFormatError("an async resource (a destructor callback) is not supported")
    if tag != _RESOURCE:
        return None
    if r.byte() != 0x7F:
        raise ComponentFormatError("a resource whose representation is not i32")
    return Resource(r.u32() if _option(r) else None)
