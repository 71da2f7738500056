"""guest/runtime/wasip2.h is what vmm/microvm/wasip2_gen.py generates from the
vendored WIT, and its flat signatures are the ones real components import:
every WASI 0.2 import of every core module inside componentize-py's counter
(nested components included) has exactly the declared core signature."""

from __future__ import annotations

from pathlib import Path

from vmm.microvm import wasip2_gen
from vmm.wasm_module import ByteReader, parse_core


def _all_modules(component: bytes) -> list[bytes]:
    out = []
    for sid, start, end in ByteReader(component, 8).sections():
        if sid == 1:  # core module
            out.append(component[start:end])
        elif sid == 4:  # nested component
            out += _all_modules(component[start:end])
    return out


def test_the_header_is_generated_and_fresh() -> None:
    assert wasip2_gen.main(["--check"]) == 0


def test_names_follow_the_legacy_core_names() -> None:
    name = wasip2_gen.c_name("wasi:io/streams", "[method]output-stream.blocking-write-and-flush")
    assert name == "lc_wasip2_io_streams_method_output_stream_blocking_write_and_flush"
    assert wasip2_gen.unversioned("wasi:io/streams@0.2.9") == "wasi:io/streams"
    assert wasip2_gen.unversioned("lightcell:filter/log@0.1.0") is None
    assert wasip2_gen.core_signature("wasi:io/poll@0.2.3", "poll") == (("i32", "i32", "i32"), ())


def test_componentize_py_imports_match_the_declarations(built_plugins: dict[str, Path]) -> None:
    checked = 0
    for module in _all_modules(built_plugins["counter"].read_bytes()):
        for imp in parse_core(module).imports:
            if wasip2_gen.unversioned(imp.module) is None:
                continue
            want = wasip2_gen.core_signature(imp.module, imp.name)
            assert imp.sig is not None and want == (imp.sig.params, imp.sig.results), (imp.module, imp.name)
            checked += 1
    assert checked > 100  # componentize-py imports most of WASI 0.2


def test_every_abi_detail_has_words() -> None:
    """vmm/microvm/abi.ABI_DETAILS words every LC_STATUS_ABI detail the guest can report."""
    import re

    from vmm.microvm.abi import ABI_DETAILS

    runtime = Path(wasip2_gen.ROOT) / "guest" / "runtime"
    enum = re.findall(r"LC_ABI_\w+ = (\d+)", (runtime / "lc_rt.h").read_text())
    defines = re.findall(r"#define LC_ABI_\w+ (\d+)u", (runtime / "wasip2_rt.h").read_text())
    assert {int(v) for v in enum + defines} == set(ABI_DETAILS)


def test_the_guest_allows_the_wasmtime_tiers_start_up_random() -> None:
    import re

    from vmm.wasmtime_tier._component import STARTUP_RANDOM_BYTES

    source = (Path(wasip2_gen.ROOT) / "guest" / "runtime" / "wasip2.c").read_text()
    m = re.search(r"#define LC_WASIP2_STARTUP_RANDOM_BYTES \((\d+)u \* (\d+)u\)", source)
    assert m is not None
    assert int(m.group(1)) * int(m.group(2)) == STARTUP_RANDOM_BYTES
