"""Read a guest image: a static x86-64 ELF executable linked by guest/boot/guest.ld.

Checks the image header (magic, ABI version) and that every segment lies in
the part of the layout its permissions allow; the host refuses anything else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from vmm.microvm import abi
from vmm.microvm.layout import GuestAddr, page_up

PT_LOAD = 1
PF_X, PF_W, PF_R = 1, 2, 4
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")


class ImageError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Segment:
    vaddr: GuestAddr
    data: bytes  # file bytes; the rest up to memsz is zero
    memsz: int
    writable: bool
    executable: bool


@dataclass(frozen=True, slots=True)
class Image:
    path: Path
    entry: GuestAddr
    vectors: GuestAddr
    segments: tuple[Segment, ...]

    @property
    def ro_end(self) -> GuestAddr:
        return GuestAddr(page_up(max(s.vaddr + s.memsz for s in self.segments if not s.writable)))

    @property
    def data_end(self) -> GuestAddr:
        ends = [s.vaddr + s.memsz for s in self.segments if s.writable]
        return GuestAddr(page_up(max(ends)) if ends else abi.LC_DATA_BASE)


def load_image(path: Path) -> Image:
    raw = path.read_bytes()
    if len(raw) < _EHDR.size or raw[:4] != b"\x7fELF" or raw[4] != 2 or raw[5] != 1:
        raise ImageError(f"{path}: not a 64-bit little-endian ELF file")
    (_, e_type, e_machine, _, e_entry, e_phoff, _, _, _, e_phentsize, e_phnum, *_) = _EHDR.unpack_from(raw)
    if e_type != 2 or e_machine != 62 or e_phentsize != _PHDR.size:
        raise ImageError(f"{path}: not an x86-64 executable")
    segments = []
    for i in range(e_phnum):
        p_type, flags, off, vaddr, _, filesz, memsz, _ = _PHDR.unpack_from(raw, e_phoff + i * _PHDR.size)
        if p_type != PT_LOAD or memsz == 0:
            continue
        if filesz > memsz or off + filesz > len(raw) or vaddr % 4096:
            raise ImageError(f"{path}: malformed segment at {vaddr:#x}")
        writable, executable = bool(flags & PF_W), bool(flags & PF_X)
        if writable and executable:
            raise ImageError(f"{path}: segment at {vaddr:#x} is writable and executable")
        lo, hi = (abi.LC_DATA_BASE, abi.LC_DATA_LIMIT) if writable else (abi.LC_IMAGE_BASE, abi.LC_RO_LIMIT)
        if not (lo <= vaddr and vaddr + memsz <= hi):
            raise ImageError(f"{path}: segment {vaddr:#x}+{memsz:#x} outside [{lo:#x}, {hi:#x})")
        segments.append(Segment(GuestAddr(vaddr), raw[off:off + filesz], memsz, writable, executable))
    text = next((s for s in segments if s.vaddr == abi.LC_IMAGE_BASE and s.executable), None)
    if text is None or len(text.data) < abi.IMAGE_HEADER.size:
        raise ImageError(f"{path}: no image header at {abi.LC_IMAGE_BASE:#x}")
    magic, version, vectors = abi.IMAGE_HEADER.unpack_from(text.data)
    if magic != abi.LC_IMAGE_MAGIC:
        raise ImageError(f"{path}: bad image magic {magic:#x}")
    if version != abi.LC_ABI_VERSION:
        raise ImageError(f"{path}: guest ABI version {version}, this host speaks {abi.LC_ABI_VERSION}")
    if not (text.vaddr <= vectors and vectors + 32 * abi.LC_VECTOR_STUB_SIZE <= text.vaddr + text.memsz):
        raise ImageError(f"{path}: exception vectors {vectors:#x} outside .text")
    if not any(s.executable and s.vaddr <= e_entry < s.vaddr + s.memsz for s in segments):
        raise ImageError(f"{path}: entry {e_entry:#x} outside executable code")
    return Image(path, GuestAddr(e_entry), GuestAddr(vectors), tuple(segments))
