"""The component glue (vmm/microvm/component_*.py) on small hand-made components:
the graph read from the binary, the generated C, and a two-module component
compiled for the host-native harness and run through the contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devtools.native import NativeInstance, Op, Status
from vmm.microvm.abi import HostcallStatus, HostFn
from vmm.microvm.compile import compile_plugin
from vmm.microvm.component_glue import GlueError, generate_glue, read_header, wasip2_name
from vmm.microvm.component_parse import ComponentFormatError, parse_component
from vmm.microvm.hostcalls import HostcallResult

HERE = Path(__file__).resolve().parent
TWO = HERE / "components" / "two_modules.wat"


def _wasm_tools(*args: str, stdin: bytes | None = None) -> bytes:
    exe = Path(sys.executable).with_name("wasm-tools")
    return subprocess.run([str(exe), *args], input=stdin, capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def two_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("glue") / "two.wasm"
    out.write_bytes(_wasm_tools("parse", str(TWO)))
    return out


def test_graph_of_two_modules(two_modules: Path) -> None:
    comp = parse_component(two_modules.read_bytes())
    assert len(comp.modules) == 2
    kinds = [k for k, _, _ in comp.core_instances]
    assert kinds == ["instantiate", "bag", "instantiate"]
    assert comp.core_instances[2][2] == {"lib": 0, "kv": 1}
    assert set(comp.exports) == {"on-open", "on-data", "on-close"}
    _, opts = comp.lifted(comp.exports["on-data"])
    assert opts.memory == 0 and opts.realloc is not None and opts.post_return is None
    lowers = [r for r in comp.core[0] if r.kind == "lower"]
    assert [comp.imported_func(r.target) for r in lowers] == [("lightcell:filter/kv@0.1.0", "increment")]
    assert comp.imports == ["lightcell:filter/kv@0.1.0"]


def test_not_a_component_and_truncated(two_modules: Path) -> None:
    with pytest.raises(ComponentFormatError):
        parse_component(b"\x00asm\x01\x00\x00\x00")
    data = two_modules.read_bytes()
    with pytest.raises(ComponentFormatError):
        parse_component(data[: len(data) // 2])


def test_wasi_names_follow_wasip2_h() -> None:
    assert wasip2_name("wasi:io/streams@0.2.9", "[method]output-stream.blocking-write-and-flush") == (
        "lc_wasip2_io_streams_method_output_stream_blocking_write_and_flush")
    assert wasip2_name("wasi:io/error@0.2.0", "[resource-drop]error") == (
        "lc_wasip2_io_error_resource_drop_error")
    assert wasip2_name("wasi:cli/stderr@0.2.9", "get-stderr") == "lc_wasip2_cli_stderr_get_stderr"
    assert wasip2_name("lightcell:filter/kv@0.1.0", "get") is None


def _serve_kv(value: int) -> tuple[list[tuple[int, bytes]], object]:
    calls: list[tuple[int, bytes]] = []

    def handler(fn: int, a0: int, b0: bytes, b1: bytes, cap: int) -> HostcallResult:
        calls.append((fn, b0))
        if fn == HostFn.KV_INCREMENT:
            return HostcallResult(HostcallStatus.OK, value)
        return HostcallResult(HostcallStatus.DENIED)

    return calls, handler


def test_two_modules_run_through_the_contract(two_modules: Path, tmp_path: Path) -> None:
    compiled = compile_plugin(two_modules, target="native", root=tmp_path / "cache")
    assert compiled.contract.capabilities == frozenset({"kv"})
    calls, handler = _serve_kv(7)
    inst = NativeInstance(compiled.image, handler)  # type: ignore[arg-type]
    assert inst.init_result.status == Status.OK
    assert inst.open("l", "c").status == Status.OK
    # kv.increment was lowered with $lib's memory: the key came from there
    assert calls == [(HostFn.KV_INCREMENT, b"conns")]
    res = inst.data(1, b"hello, world")
    assert (res.status, res.detail, res.data) == (Status.OK, 1, b"7:HELLO, WORLD")
    assert inst.close().status == Status.OK


def test_import_without_implementation_is_refused(two_modules: Path, tmp_path: Path) -> None:
    text = TWO.read_text().replace("lightcell:filter/kv@0.1.0", "example:other/kv@1.0.0")
    path = tmp_path / "other.wasm"
    path.write_bytes(_wasm_tools("parse", "-", stdin=text.encode()))
    comp = parse_component(path.read_bytes())
    with pytest.raises(GlueError, match=r"example:other/kv@1\.0\.0::increment has no implementation"):
        generate_glue(comp, {0: read_header(_header(tmp_path, comp.modules[0], 0), 0),
                             2 - 1: read_header(_header(tmp_path, comp.modules[1], 1), 1)}, "tcp-filter")


def _header(tmp: Path, module: bytes, index: int) -> str:
    from vmm.microvm import compile as aot
    from vmm.microvm.component_glue import module_c_name

    wasm = tmp / f"m{index}.wasm"
    wasm.write_bytes(module)
    _, h = aot.compile_core_c(wasm, tmp, module_c_name(index))
    return h.read_text()


def test_a_trap_in_a_second_module_is_a_trap(two_modules: Path, tmp_path: Path) -> None:
    text = TWO.read_text().replace(
        '(func (export "on-close"))', '(func (export "on-close") unreachable)')
    path = tmp_path / "trap.wasm"
    path.write_bytes(_wasm_tools("parse", "-", stdin=text.encode()))
    compiled = compile_plugin(path, target="native", root=tmp_path / "cache")
    _, handler = _serve_kv(1)
    inst = NativeInstance(compiled.image, handler)  # type: ignore[arg-type]
    assert inst.open("l", "").status == Status.OK
    assert inst.request(Op.CLOSE).status == Status.TRAP
