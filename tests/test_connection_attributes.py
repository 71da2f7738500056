"""The `connection` import on the wasmtime tier's component path (general components,
e.g. componentize-py): the C probe component run through wasmtime.component instead of
its unwrapped core module. The core path and the micro-VM are in test_differential.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime
from wasmtime.component import Component

from vmm.capabilities import CapabilityDenied, HostCapabilities
from vmm.kvstore import KvStore
from vmm.policy import Grants, Limits
from vmm.wasmtime_tier import _component, _context
from vmm.wasmtime_tier._context import CallContext
from vmm.wasmtime_tier._engine import engine

ATTRIBUTES = (("destination.address", "[::1]:443"), ("source.address", "10.0.0.7:5000"), ("x", "é€"))


def _probe_once(probe: Path, grants: frozenset[str]) -> tuple[str, bytes]:
    program = _component.ComponentProgram(Component.from_file(engine(), str(probe)))
    store = wasmtime.Store(engine())
    store.set_epoch_deadline(1 << 40)  # no ticker runs here
    store.set_wasi(wasmtime.WasiConfig())
    instance = program.instantiate(store, Grants(grants))
    host = HostCapabilities("l", "probe", Grants(grants), Limits(), KvStore(10, 100), attributes=ATTRIBUTES)
    ctx = CallContext(host)
    _context.enter(ctx)
    try:
        on_open, on_data = instance.get_func(store, "on-open"), instance.get_func(store, "on-data")
        assert on_open is not None and on_data is not None
        on_open(store, "l", "call=attributes")
        on_open.post_return(store)
        verdict = on_data(store, "read", b"chunk", False)
        result = verdict.tag, bytes(verdict.payload)
        on_data.post_return(store)
        return result
    except wasmtime.WasmtimeError:
        assert ctx.error is not None
        raise ctx.error from None
    finally:
        _context.leave()


def test_component_path_lists_the_attributes(built_plugins: dict[str, Path]) -> None:
    program = _component.ComponentProgram(Component.from_file(engine(), str(built_plugins["probe"])))
    assert "connection" in _component.component_capabilities(program.component)[0]
    expected = "attributes=3\n" + "".join(f"{n}={v}\n" for n, v in ATTRIBUTES)
    assert _probe_once(built_plugins["probe"], frozenset({"connection"})) == ("replace", expected.encode())


def test_component_path_denies_attributes_without_the_grant(built_plugins: dict[str, Path]) -> None:
    with pytest.raises(CapabilityDenied):
        _probe_once(built_plugins["probe"], frozenset())


@pytest.mark.parametrize("listed", [True, False])
def test_check_warns_when_the_grant_can_only_see_an_empty_list(
    built_plugins: dict[str, Path], tmp_path: Path, listed: bool
) -> None:
    from extproc.config import load_config
    from extproc.harness import ListenerSpec, render_bootstrap, write_config

    policy = {"plugin": str(built_plugins["probe"]), "config": "call=attributes", "grants": ["connection"]}
    bootstrap = render_bootstrap([ListenerSpec("edge", 9, policy)], tmp_path / "s.sock")
    if listed:
        ext_proc = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ext_proc["typed_config"]["connection_attributes"] = ["source.address"]
    config = load_config(write_config(bootstrap, tmp_path / "envoy.yaml"))
    warned = [w for w in config.warnings if "connection_attributes" in w]
    assert bool(warned) is not listed, config.warnings
    if warned:
        assert "'edge'" in warned[0] and "always empty" in warned[0]


def test_check_refuses_connection_attributes_that_are_not_a_list_of_strings(
    built_plugins: dict[str, Path], tmp_path: Path
) -> None:
    from extproc.config import ConfigError, load_config
    from extproc.harness import ListenerSpec, render_bootstrap, write_config

    bootstrap = render_bootstrap([ListenerSpec("edge", 9, {"plugin": str(built_plugins["probe"])})], tmp_path)
    ext_proc = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    ext_proc["typed_config"]["connection_attributes"] = "source.address"
    with pytest.raises(ConfigError, match="connection_attributes: expected a list of strings"):
        load_config(write_config(bootstrap, tmp_path / "envoy.yaml"))


def test_an_http_filter_module_may_not_import_connection() -> None:
    from vmm.wasm_module import ContractError, check_http_contract

    wat = """(module
      (import "lightcell:filter/connection@0.1.0" "attributes" (func (param i32)))
      (memory (export "memory") 1)
      (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) i32.const 0)
      (func (export "wanted-phases") (result i32) i32.const 1)
      (func (export "on-open") (param i32 i32 i32 i32))
      (func (export "on-request-headers") (param i32 i32 i32 i32 i32) (result i32) i32.const 0)
      (func (export "on-request-body") (param i32 i32 i32) (result i32) i32.const 0)
      (func (export "on-request-trailers") (param i32 i32) (result i32) i32.const 0)
      (func (export "on-response-headers") (param i32 i32 i32 i32 i32) (result i32) i32.const 0)
      (func (export "on-response-body") (param i32 i32 i32) (result i32) i32.const 0)
      (func (export "on-response-trailers") (param i32 i32) (result i32) i32.const 0)
      (func (export "on-close")))"""
    with pytest.raises(ContractError, match="tcp-filter only"):
        check_http_contract(wasmtime.wat2wasm(wat))
