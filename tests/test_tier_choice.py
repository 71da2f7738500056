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


def test_auto_keeps_a_plugin_with_too_much_code_in_wasmtime() -> None:
    """componentize-js puts SpiderMonkey (9 MiB of code) in one core module: compiling it for
    the micro-VM takes minutes and >10 GB, which tier auto must not start by surprise."""
    jsonpatch = plugin_build.build("jsonpatch")
    assert largest_code_section(jsonpatch.read_bytes()) > AUTO_MICROVM_MAX_CODE_BYTES
    choice = plugins.choose_tier(_spec(jsonpatch), Tier.AUTO)
    assert choice.tier is Tier.WASMTIME
    assert "MiB of code" in choice.reason and "tier: microvm" in choice.reason


def test_auto_runs_python_components_of_both_worlds_in_the_micro_vm() -> None:
    """componentize-py components compile whole for the micro-VM, tcp-filter and http-filter
    alike (the http ones' wanted-phases runs at load as in wasmtime: vmm/microvm/http_tier.py)."""
    for name in ("counter", "guard", "blockpath"):
        choice = plugins.choose_tier(_spec(plugin_build.build(name)), Tier.AUTO)
        assert choice.tier is Tier.MICROVM, (name, choice.reason)
