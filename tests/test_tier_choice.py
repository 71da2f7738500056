"""What `tier: auto` picks, and why, for the plugins a user meets (built from source)."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc import plugins
from extproc.plugins import AUTO_MICROVM_MAX_CODE_BYTES
from plugins import build as plugin_build
from vmm.policy import Limits, SandboxSpec, Tier
from vmm.wasm_module import largest_code_section

pytestmark = [pytest.mark.kvm]


def _spec(path: Path) -> SandboxSpec:
    return SandboxSpec(listener="l", plugin_path=str(path), limits=Limits(memory_bytes=64 << 20))


def test_largest_code_section_reads_core_modules_and_nested_components() -> None:
    core = plugin_build.build_core("redact").read_bytes()
    component = plugin_build.build("redact").read_bytes()
    assert 0 < largest_code_section(core) == largest_code_section(component) < 64 << 10
    counter = plugin_build.build("counter").read_bytes()  # componentize-py: components nest components
    assert largest_code_section(counter) > 1 << 20


def test_auto_compiles_a_c_plugin_for_the_micro_vm() -> None:
    choice = plugins.choose_tier(_spec(plugin_build.build("redact")), Tier.AUTO)
    assert choice.tier is Tier.MICROVM


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _section(sid: int, body: bytes) -> bytes:
    return bytes([sid]) + _leb(len(body)) + body


def test_auto_keeps_a_plugin_with_too_much_code_in_wasmtime(tmp_path: Path) -> None:
    """A core module with more code than AUTO_MICROVM_MAX_CODE_BYTES (one function of nops):
    its compile for the micro-VM would take far longer than tier auto may start by surprise."""
    body = b"\x00" + b"\x01" * AUTO_MICROVM_MAX_CODE_BYTES + b"\x0b"  # no locals, nops, end
    module = (b"\0asm\1\0\0\0" + _section(1, b"\x01\x60\x00\x00") + _section(3, b"\x01\x00")
              + _section(10, b"\x01" + _leb(len(body)) + body))
    big = tmp_path / "big.wasm"
    big.write_bytes(module)
    assert largest_code_section(module) > AUTO_MICROVM_MAX_CODE_BYTES
    choice = plugins.choose_tier(_spec(big), Tier.AUTO)
    assert choice.tier is Tier.WASMTIME
    assert "MiB of code" in choice.reason and "tier: microvm" in choice.reason


def test_auto_runs_spidermonkey_in_the_micro_vm() -> None:
    """componentize-js puts SpiderMonkey (9 MiB of code) in one core module: compiled in cached
    pieces without debug info it fits the rule (tests/test_js_microvm.py runs it there)."""
    jsonpatch = plugin_build.build("jsonpatch")
    assert 8 << 20 < largest_code_section(jsonpatch.read_bytes()) <= AUTO_MICROVM_MAX_CODE_BYTES
    choice = plugins.choose_tier(_spec(jsonpatch), Tier.AUTO)
    assert choice.tier is Tier.MICROVM, choice.reason


def test_auto_runs_python_components_of_both_worlds_in_the_micro_vm() -> None:
    """componentize-py components compile whole for the micro-VM, tcp-filter and http-filter
    alike (the http ones' wanted-phases runs at load as in wasmtime: vmm/microvm/http_tier.py)."""
    for name in ("counter", "guard", "blockpath"):
        choice = plugins.choose_tier(_spec(plugin_build.build(name)), Tier.AUTO)
        assert choice.tier is Tier.MICROVM, (name, choice.reason)
