"""memfd-backed guest memory mapped through libc.

Python's mmap module dups the fd and refuses to unmap while a buffer is
exported; mapping with libc through ctypes and viewing the address with a
memoryview avoids both (kvm-here.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from vmm.kvm.errors import KvmError

__all__ = ["GuestMemory", "libc"]

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
libc.memmove.restype = ctypes.c_void_p
libc.memmove.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
libc.memset.restype = ctypes.c_void_p
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

PROT_READ, PROT_WRITE = 1, 2
MAP_SHARED = 1
MAP_FAILED = ctypes.c_void_p(-1).value
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
PAGE = 4096


def mmap_fd(fd: int, size: int, prot: int = PROT_READ | PROT_WRITE) -> int:
    addr = libc.mmap(None, size, prot, MAP_SHARED, fd, 0)
    if addr is None or addr == MAP_FAILED:
        raise KvmError("mmap", ctypes.get_errno())
    return int(addr)


def munmap(addr: int, size: int) -> None:
    if libc.munmap(addr, size) != 0:
        raise KvmError("munmap", ctypes.get_errno())


class GuestMemory:
    """A memfd of `size` bytes, mapped shared; owns both. Closes once."""

    def __init__(self, size: int, name: str = "lightcell-guest") -> None:
        if size <= 0 or size % PAGE:
            raise ValueError(f"guest memory size {size} is not a positive page multiple")
        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            self.addr = mmap_fd(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise
        self.view = memoryview((ctypes.c_char * size).from_address(self.addr)).cast("B")
        self._closed = False

    def data_ranges(self, start: int, end: int) -> list[tuple[int, int]]:
        """Allocated (ever touched) [lo, hi) page ranges of the memfd within [start, end).

        A shmem page is allocated on first touch, read or write, by the host or
        through KVM; holes read as zero. SEEK_DATA/SEEK_HOLE list them cheaply.
        """
        out: list[tuple[int, int]] = []
        pos = start
        while pos < end:
            try:
                lo = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            if lo >= end:
                break
            hi = min(os.lseek(self.fd, lo, os.SEEK_HOLE), end)
            out.append((lo, hi))
            pos = hi
        return out

    def punch(self, offset: int, length: int) -> None:
        """Free pages: they read as zero again and cost a fault on next touch."""
        if libc.fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
            raise KvmError("fallocate(PUNCH_HOLE)", ctypes.get_errno())

    def zero(self, offset: int, length: int) -> None:
        """Zero in place: the pages stay mapped (no fault on next touch)."""
        self._check(offset, length)
        libc.memset(self.addr + offset, 0, length)

    def copy_in(self, offset: int, src_addr: int, length: int) -> None:
        self._check(offset, length)
        libc.memmove(self.addr + offset, src_addr, length)

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"range {offset:#x}+{length:#x} outside guest memory of {self.size:#x}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.view.release()
        munmap(self.addr, self.size)
        os.close(self.fd)

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
