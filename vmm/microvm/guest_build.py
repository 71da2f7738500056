"""Build the micro-guest: compile guest/boot and link it with a runtime into an image.

The toolchain is `python -m ziglang cc` (from PyPI, so it works wherever the
project installs); gcc is the fallback. An image is a static ELF executable
laid out by guest/boot/guest.ld; vmm.microvm.image loads its PT_LOAD segments.
Outputs are cached by a hash of sources, flags and toolchain.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "BOOT_DIR", "CFLAGS", "GUEST_DIR", "INCLUDE_DIR", "BuildError", "boot_objects",
    "build_test_image", "compile_c", "link_image", "toolchain",
]

GUEST_DIR = Path(__file__).resolve().parents[2] / "guest"
BOOT_DIR = GUEST_DIR / "boot"
INCLUDE_DIR = GUEST_DIR / "include"
LINKER_SCRIPT = BOOT_DIR / "guest.ld"
DEFAULT_BUILD_DIR = GUEST_DIR / "build"

CFLAGS = (
    "-std=c11", "-Wall", "-Wextra", "-Werror", "-O2",
    "-ffreestanding", "-nostdlib", "-fno-pie", "-fno-pic", "-mno-red-zone",
    "-fno-stack-protector", "-fcf-protection=none", "-msse4.1", "-mno-avx",
    "-fno-asynchronous-unwind-tables", "-fno-exceptions",
)
"""Flags for every guest object. SSE is fine in ring 3; AVX needs XSAVE, which is off."""


class BuildError(Exception):
    pass


@functools.cache
def toolchain() -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(name, cc command, ld command): zig if it works, else gcc."""
    zig_cc = (sys.executable, "-m", "ziglang", "cc", "-target", "x86_64-freestanding-none")
    try:
        version = subprocess.run([sys.executable, "-m", "ziglang", "version"], check=True,
                                 capture_output=True, text=True, timeout=60).stdout.strip()
        return (f"zig-{version}", zig_cc, (sys.executable, "-m", "ziglang", "ld.lld"))
    except (OSError, subprocess.SubprocessError):
        gcc = shutil.which("gcc")
        if gcc is None:
            raise BuildError("no C toolchain: neither `python -m ziglang` nor gcc works") from None
        inc = subprocess.run([gcc, "-print-file-name=include"], capture_output=True, text=True,
                             check=True).stdout.strip()
        return ("gcc", (gcc, "-nostdinc", "-isystem", inc), (gcc, "-nostdlib", "-static", "-no-pie"))


def _run(cmd: Sequence[str]) -> None:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:20]


def _headers_digest() -> str:
    return _digest(*(p.read_bytes() for p in sorted(INCLUDE_DIR.glob("*.h"))))


def compile_c(sources: Sequence[Path], out_dir: Path | None = None,
              extra_flags: Sequence[str] = (), include_dirs: Sequence[Path] = ()) -> list[Path]:
    """Compile guest C/assembly sources to objects (cached by content)."""
    out_dir = out_dir or DEFAULT_BUILD_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    name, cc, _ = toolchain()
    flags = [*CFLAGS, f"-I{INCLUDE_DIR}", *(f"-I{d}" for d in include_dirs), *extra_flags]
    objects = []
    for src in sources:
        key = _digest(name, " ".join(flags), src.read_bytes(), _headers_digest())
        obj = out_dir / f"{src.stem}-{key}.o"
        if not obj.exists():
            tmp = obj.with_suffix(".tmp.o")
            _run([*cc, *flags, "-c", str(src), "-o", str(tmp)])
            tmp.replace(obj)
        objects.append(obj)
    return objects


def boot_objects(out_dir: Path | None = None) -> list[Path]:
    """The boot half: entry + exception stubs, dispatch loop, memory functions."""
    return compile_c([BOOT_DIR / "entry.S", BOOT_DIR / "boot.c", BOOT_DIR / "mem.c"], out_dir)


def link_image(extra_objects: Sequence[Path], out: Path) -> Path:
    """Link the boot objects with a runtime's objects into an image at `out`."""
    _, _, ld = toolchain()
    objs = [*boot_objects(), *extra_objects]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    _run([*ld, "-T", str(LINKER_SCRIPT), "--gc-sections", "-o", str(tmp),
          *(str(o) for o in objs)] if "ld.lld" in " ".join(ld) else
         [*ld, "-T", str(LINKER_SCRIPT), "-Wl,--gc-sections", "-o", str(tmp), *(str(o) for o in objs)])
    tmp.replace(out)
    return out


def build_test_image(out_dir: Path | None = None) -> Path:
    """Boot + the C test runtime (guest/boot/testing): uppercases, host calls, misdeeds."""
    out_dir = out_dir or DEFAULT_BUILD_DIR
    objs = compile_c([BOOT_DIR / "testing" / "test_runtime.c"], out_dir)
    key = _digest(*(o.name for o in [*boot_objects(out_dir), *objs]), LINKER_SCRIPT.read_bytes())
    out = out_dir / f"test-guest-{key}.elf"
    if not out.exists():
        link_image(objs, out)
    return out
