"""`lightcell compile`: what it accepts, what it refuses (and says why), the
on-disk cache, the guest image it links with the boot half."""

from __future__ import annotations

from pathlib import Path

import pytest
from aot_support import Compiler

from vmm.microvm import compile as aot
from vmm.microvm.image import load_image
from vmm.sandbox import PluginLoadError


@pytest.fixture(scope="session")
def compiler(tmp_path_factory: pytest.TempPathFactory) -> Compiler:
    return Compiler(tmp_path_factory.mktemp("aot-compile"))


def test_component_and_core_module_give_the_same_plugin(compiler: Compiler, tmp_path: Path) -> None:
    component = compiler.example("rewrite")
    core = compiler.example("rewrite", core=True)
    assert component.read_bytes()[4:8] != core.read_bytes()[4:8]  # really a component
    a = aot.compile_plugin(component, target="native", root=tmp_path)
    b = aot.compile_plugin(core, target="native", root=tmp_path)
    assert not a.cached and not b.cached
    assert a.contract.info.exports == b.contract.info.exports
    assert a.contract.post_returns == frozenset({"on-data"})
    assert aot.compile_plugin(component, target="native", root=tmp_path).cached


def test_cache_hit_is_fast_and_key_changes_with_content(compiler: Compiler, tmp_path: Path) -> None:
    first = aot.compile_plugin(compiler.example("probe"), target="native", root=tmp_path)
    again = aot.compile_plugin(compiler.example("probe"), target="native", root=tmp_path)
    assert again.cached and again.image == first.image
    other = aot.compile_plugin(compiler.example("faulty"), target="native", root=tmp_path)
    assert other.image != first.image
    assert first.contract.capabilities == frozenset(
        {"log", "clock", "random", "kv", "metadata", "egress", "connection"}
    )
    print(f"compile probe: {first.seconds:.2f} s cold, {again.seconds * 1000:.1f} ms cached")


FOREIGN_COMPONENT = (Path(__file__).resolve().parent / "components" / "two_modules.wat").read_text().replace(
    "lightcell:filter/kv@0.1.0", "example:other/kv@1.0.0")
"""A whole component (two core modules) importing what no tier implements."""


def test_component_the_guest_cannot_link_is_refused_naming_the_wasmtime_tier(
    compiler: Compiler, tmp_path: Path
) -> None:
    # componentize-py components compile whole (tests/test_component_*.py); one
    # importing an interface the guest lacks is refused, naming the import.
    with pytest.raises(aot.CompileError) as err:
        aot.compile_plugin(compiler.wasm_of_wat("foreign", FOREIGN_COMPONENT), target="native", root=tmp_path)
    assert "wasmtime tier" in str(err.value) and "example:other/kv@1.0.0::increment" in str(err.value)
    assert isinstance(err.value, PluginLoadError)


def test_import_outside_the_contract_is_refused_by_name(compiler: Compiler, tmp_path: Path) -> None:
    with pytest.raises(aot.CompileError, match=r"wasi_snapshot_preview1::fd_read"):
        aot.compile_plugin(compiler.wasm_of_wat("bad_wasi_import"), target="native", root=tmp_path)


def test_wrong_exports_are_refused(compiler: Compiler, tmp_path: Path) -> None:
    with pytest.raises(aot.CompileError, match=r"on-close|on-data"):
        aot.compile_plugin(compiler.wasm_of_wat("bad_exports"), target="native", root=tmp_path)


WRONG_SIGNATURE = """
(module
  (import "lightcell:filter/kv@0.1.0" "increment" (func (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096))
  (func (export "on-open") (param i32 i32 i32 i32))
  (func (export "on-data") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
  (func (export "on-close"))
)
"""

EXCEPTIONS = """
(module
  (tag $t)
  (memory (export "memory") 1)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096))
  (func (export "on-open") (param i32 i32 i32 i32) (throw $t))
  (func (export "on-data") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
  (func (export "on-close"))
)
"""


def test_import_with_wrong_signature_is_refused(compiler: Compiler, tmp_path: Path) -> None:
    with pytest.raises(aot.CompileError, match=r"kv@0.1.0::increment: signature"):
        aot.compile_plugin(compiler.wasm_of_wat("wrong_sig", WRONG_SIGNATURE), target="native", root=tmp_path)


def test_unsupported_feature_is_refused_by_wasm2c(compiler: Compiler, tmp_path: Path) -> None:
    wasm = compiler.wasm_of_wat("exceptions", EXCEPTIONS)  # the runtime has no exception support
    with pytest.raises(aot.CompileError, match="wasm2c"):
        aot.compile_plugin(wasm, target="native", root=tmp_path)


def test_not_wasm_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "x.wasm"
    bad.write_bytes(b"hello")
    with pytest.raises(aot.CompileError, match="not a usable WebAssembly binary"):
        aot.compile_plugin(bad, target="native", root=tmp_path)


def test_guest_image_links_with_the_boot_half(compiler: Compiler, tmp_path: Path) -> None:
    result = aot.compile_plugin(compiler.example("rewrite"), target="guest", root=tmp_path)
    image = load_image(result.image)  # checks the header, ABI version and the layout
    assert any(s.executable for s in image.segments)
    print(f"compile rewrite for the guest: {result.seconds:.2f} s")


def test_cli(compiler: Compiler, tmp_path: Path, capsys: pytest.CaptureFixture[str],
             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTCELL_AOT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "rewrite.elf"
    assert aot.main([str(compiler.example("rewrite")), "-o", str(out)]) == 0
    assert out.exists() and "capabilities: none" in capsys.readouterr().out
    assert aot.main([str(compiler.wasm_of_wat("foreign", FOREIGN_COMPONENT))]) == 1
    assert "wasmtime tier" in capsys.readouterr().err


def test_a_cache_others_can_write_is_refused(compiler: Compiler, tmp_path: Path) -> None:
    # An image is code the micro-VM runs: never taken from a directory others can write.
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(PluginLoadError, match="not a directory private to this user"):
        aot.compile_plugin(compiler.example("rewrite"), target="native", root=shared)


def test_a_cached_image_others_could_have_written_is_rebuilt(compiler: Compiler, tmp_path: Path) -> None:
    first = aot.compile_plugin(compiler.example("rewrite"), target="native", root=tmp_path)
    first.image.chmod(0o666)  # as if another user had been able to replace it
    again = aot.compile_plugin(compiler.example("rewrite"), target="native", root=tmp_path)
    assert not again.cached and again.image == first.image
    assert again.image.stat().st_mode & 0o022 == 0


def test_source_digest_sees_every_guest_source_wherever_the_checkout_is(tmp_path: Path) -> None:
    """The image cache key covers guest sources by path and content, and a
    `build` directory *above* the sources (a checkout under ~/build/...) must
    not hide them; only build outputs inside a source tree are skipped."""
    root = tmp_path / "build" / "guest" / "runtime"
    (root / "libc").mkdir(parents=True)
    (root / "wasm_rt.c").write_text("int cap;\n")
    (root / "libc" / "string.h").write_text("/* h */\n")
    base = aot._tree_digest([root])
    (root / "wasm_rt.c").write_text("int cap = 1;\n")
    changed = aot._tree_digest([root])
    assert changed != base
    (root / "libc" / "string.h").rename(root / "string.h")  # same name and bytes, moved
    assert aot._tree_digest([root]) != changed
    (root / "build").mkdir()
    (root / "build" / "wasm_rt.o").write_bytes(b"\x7fELF")
    moved = aot._tree_digest([root])
    (root / "build" / "wasm_rt.o").write_bytes(b"\x7fELF again")
    assert aot._tree_digest([root]) == moved
