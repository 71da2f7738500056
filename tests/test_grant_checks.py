"""One table of imports and capabilities (vmm.contract.IMPORT_CAPABILITY), one
grant check per host call, in every tier's dispatch point.

Each host call is made with a HostCapabilities that counts its check() calls:
exactly one per call that needs a grant (granted or not), none for the inert
WASI functions. The wasmtime core host functions are reached through a module
that re-exports every import it takes, so the functions run exactly as a
plugin's calls would (same linker, same wrappers, same call context).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import wasmtime
from _host_fakes import Sent

from vmm.capabilities import CapabilityDenied, HostCapabilities
from vmm.contract import IMPORT_CAPABILITY, IMPORT_MODULE, WASI_P1_MODULE, import_capability
from vmm.kvstore import KvStore
from vmm.microvm import hostcalls
from vmm.microvm.abi import HostcallStatus, HostFn
from vmm.policy import CAPABILITIES, Grants, Limits
from vmm.wasm_module import CONTRACT_IMPORTS, WASI_P1_SIGS, check_contract
from vmm.wasmtime_tier import _component, _context
from vmm.wasmtime_tier._context import CallContext
from vmm.wasmtime_tier._core_imports import define_imports
from vmm.wasmtime_tier._engine import engine
from vmm.wasmtime_tier._faults import ProcExit

ALL = frozenset(CAPABILITIES)


@dataclass
class CountingHost(HostCapabilities):
    checks: list[str] | None = None

    def check(self, capability: str) -> None:
        assert self.checks is not None
        self.checks.append(capability)
        super().check(capability)


def counting_host(grants: frozenset[str]) -> CountingHost:
    limits = Limits()
    return CountingHost(
        "l", "p", Grants(grants), limits, KvStore(limits.kv_max_keys, limits.kv_max_value_bytes),
        Sent(), checks=[],
    )


# --- the table --------------------------------------------------------------------


def test_the_table_covers_every_import_of_every_tier() -> None:
    core = set(CONTRACT_IMPORTS) | {(WASI_P1_MODULE, name) for name in WASI_P1_SIGS}
    assert core == set(IMPORT_CAPABILITY)
    for (module, _name), capability in IMPORT_CAPABILITY.items():
        if module != WASI_P1_MODULE:
            assert IMPORT_MODULE[capability or ""] == module  # a contract import needs its module's grant
    for fn in HostFn:
        if fn in hostcalls.IMPORT:
            assert hostcalls.IMPORT[fn] in IMPORT_CAPABILITY
        else:  # WASI 0.2's own host calls (vmm/microvm/wasip2_host.py)
            assert fn >= HostFn.GRANTED


def _reexporting_module(imports: list[tuple[str, str]]) -> str:
    """A core module importing `imports` and exporting each as f<i>, plus its memory."""
    lines = ["(module"]
    for i, (module, name) in enumerate(imports):
        sig = CONTRACT_IMPORTS.get((module, name)) or WASI_P1_SIGS[name]
        params = " ".join(sig.params)
        results = " ".join(sig.results)
        ptxt = f" (param {params})" if params else ""
        rtxt = f" (result {results})" if results else ""
        lines.append(f'  (import "{module}" "{name}" (func $f{i}{ptxt}{rtxt}))')
    lines.append('  (memory (export "memory") 1)')
    for i in range(len(imports)):
        lines.append(f'  (export "f{i}" (func $f{i}))')
    lines.append(")")
    return "\n".join(lines)


def test_check_contract_reports_the_tables_capabilities() -> None:
    imports = sorted(IMPORT_CAPABILITY)
    for imp in imports:
        wat = _reexporting_module([imp])
        # check_contract wants the contract's exports: add them.
        wat = wat[: -1] + (
            '  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) i32.const 0)\n'
            '  (func (export "on-open") (param i32 i32 i32 i32))\n'
            '  (func (export "on-data") (param i32 i32 i32 i32) (result i32) i32.const 0)\n'
            '  (func (export "on-close"))\n)'
        )
        contract = check_contract(wasmtime.wat2wasm(wat))
        want = import_capability(*imp)
        assert contract.capabilities == (frozenset() if want is None else frozenset({want})), imp


# --- micro-VM: hostcalls.dispatch ---------------------------------------------------

_ARGS: dict[HostFn, tuple[int, bytes, bytes]] = {
    HostFn.LOG: (2, b"hello", b""),
    HostFn.WALL_NOW: (0, b"", b""),
    HostFn.MONOTONIC_NOW: (0, b"", b""),
    HostFn.RANDOM_U64: (0, b"", b""),
    HostFn.RANDOM_BYTES: (16, b"", b""),
    HostFn.KV_GET: (0, b"k", b""),
    HostFn.KV_SET: (0, b"k", b"v"),
    HostFn.KV_DELETE: (0, b"k", b""),
    HostFn.KV_INCREMENT: (1, b"n", b""),
    HostFn.METADATA_SET: (0, b"k", b"v"),
    HostFn.EGRESS_SEND: (9, b"127.0.0.1", b"x"),
    HostFn.CONNECTION_ATTRIBUTES: (0, b"", b""),
    HostFn.GRANTED: (0, b"", b""),
    HostFn.ARGUMENTS: (0, b"", b""),
    HostFn.UDP_BIND: (0, b"\x7f\x00\x00\x01\x1f\x90", b""),
    HostFn.UDP_RECV: (0, b"", b""),
    HostFn.UDP_SEND: (0, b"\x7f\x00\x00\x01\x1f\x90", b"x"),
    HostFn.POLL: (0, b"", b""),
}


@pytest.mark.parametrize("granted", [True, False])
@pytest.mark.parametrize("fn", list(HostFn))
def test_each_micro_vm_host_call_checks_its_grant_once(fn: HostFn, granted: bool) -> None:
    host = counting_host(ALL if granted else frozenset())
    result = hostcalls.dispatch(host, fn, *_ARGS[fn])
    capability = hostcalls.host_fn_capability(fn)
    if fn in hostcalls.IMPORT:
        assert capability == import_capability(*hostcalls.IMPORT[fn])
    assert host.checks == ([] if capability is None else [capability])
    assert result.status is (HostcallStatus.OK if granted or capability is None else HostcallStatus.DENIED)


@pytest.mark.parametrize("granted", [True, False])
def test_the_guest_fd_write_grant_check_is_one_check_and_logs_nothing(
    granted: bool, caplog: pytest.LogCaptureFixture
) -> None:
    host = counting_host(ALL if granted else frozenset())
    result = hostcalls.dispatch(host, HostFn.LOG, hostcalls.LOG_GRANT_CHECK, b"ignored", b"")
    assert host.checks == ["log"]
    assert result.status is (HostcallStatus.OK if granted else HostcallStatus.DENIED)
    assert not [r for r in caplog.records if r.name == "lightcell.plugin"]


# --- wasmtime tier, core modules: the linker's host functions ---------------------

_CORE_ARGS: dict[tuple[str, str], tuple[int, ...]] = {
    (IMPORT_MODULE["log"], "log"): (2, 0, 0),
    (IMPORT_MODULE["kv"], "get"): (0, 0, 64),
    (IMPORT_MODULE["kv"], "set"): (0, 1, 0, 1),
    (IMPORT_MODULE["kv"], "delete"): (0, 1),
    (IMPORT_MODULE["kv"], "increment"): (0, 1, 1),
    (IMPORT_MODULE["metadata"], "set"): (0, 1, 0, 1),
    (IMPORT_MODULE["egress"], "send-datagram"): (0, 1, 9, 0, 1, 64),
    (IMPORT_MODULE["connection"], "attributes"): (64,),
    (WASI_P1_MODULE, "fd_write"): (1, 16, 1, 64),  # one iovec at 16: "a\nb\nc\n" at 32
    (WASI_P1_MODULE, "clock_time_get"): (0, 0, 64),
    (WASI_P1_MODULE, "clock_res_get"): (1, 64),
    (WASI_P1_MODULE, "random_get"): (64, 8),
    (WASI_P1_MODULE, "args_sizes_get"): (64, 68),
    (WASI_P1_MODULE, "args_get"): (64, 68),
    (WASI_P1_MODULE, "environ_sizes_get"): (64, 68),
    (WASI_P1_MODULE, "environ_get"): (64, 68),
    (WASI_P1_MODULE, "proc_exit"): (0,),
}


class _CoreImports:
    def __init__(self) -> None:
        self.imports = sorted(IMPORT_CAPABILITY)
        module = wasmtime.Module(engine(), wasmtime.wat2wasm(_reexporting_module(self.imports)))
        linker = wasmtime.Linker(engine())
        define_imports(linker)
        self.store = wasmtime.Store(engine())
        instance = linker.instantiate(self.store, module)
        exports = instance.exports(self.store)
        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self.memory = memory
        memory.write(self.store, (32).to_bytes(4, "little") + (6).to_bytes(4, "little"), 16)
        memory.write(self.store, b"a\nb\nc\n", 32)
        self.funcs = {imp: exports[f"f{i}"] for i, imp in enumerate(self.imports)}

    def call(self, host: HostCapabilities, imp: tuple[str, str]) -> Any:
        ctx = CallContext(host, memory=self.memory)
        _context.enter(ctx)
        try:
            func = self.funcs[imp]
            assert isinstance(func, wasmtime.Func)
            return func(self.store, *_CORE_ARGS.get(imp, ()))
        except Exception:
            return ctx.error
        finally:
            _context.leave()
            ctx.flush_outputs()


@pytest.fixture(scope="module")
def core_imports() -> _CoreImports:
    return _CoreImports()


@pytest.mark.parametrize("granted", [True, False])
@pytest.mark.parametrize("imp", sorted(IMPORT_CAPABILITY), ids=lambda imp: f"{imp[0]}.{imp[1]}")
def test_each_wasmtime_core_host_function_checks_its_grant_once(
    core_imports: _CoreImports, imp: tuple[str, str], granted: bool
) -> None:
    host = counting_host(ALL if granted else frozenset())
    outcome = core_imports.call(host, imp)
    capability = import_capability(*imp)
    assert host.checks == ([] if capability is None else [capability])
    if capability is not None and not granted:
        assert isinstance(outcome, CapabilityDenied)
    elif imp == (WASI_P1_MODULE, "proc_exit"):
        assert isinstance(outcome, ProcExit)
    else:
        assert not isinstance(outcome, BaseException), outcome


# --- wasmtime tier, components: the contract's host functions ---------------------

_COMPONENT_ARGS: dict[str, tuple[Any, ...]] = {
    "log": ("info", "hello"),
    "get": ("k",),
    "set": ("k", "v"),
    "delete": ("k",),
    "increment": ("k", 1),
    "send-datagram": ("127.0.0.1", 9, b"x"),
}


@pytest.mark.parametrize("granted", [True, False])
@pytest.mark.parametrize(
    "imp", sorted(k for k in IMPORT_CAPABILITY if k[0] != WASI_P1_MODULE), ids=lambda imp: imp[1]
)
def test_each_component_host_function_checks_its_grant_once(imp: tuple[str, str], granted: bool) -> None:
    module, name = imp
    fn = _component._FUNCS[module][name]
    args = _COMPONENT_ARGS.get(name, ())
    if module == IMPORT_MODULE["kv"] and name == "set":
        args = ("k", b"v")
    host = counting_host(ALL if granted else frozenset())
    ctx = CallContext(host)
    _context.enter(ctx)
    try:
        if granted:
            _component._host_call(import_capability(*imp), fn)(None, *args)
        else:
            with pytest.raises(CapabilityDenied):
                _component._host_call(import_capability(*imp), fn)(None, *args)
    finally:
        _context.leave()
    assert host.checks == [import_capability(*imp)]
