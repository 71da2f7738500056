"""Loading a plugin file into a SandboxFactory of the wasmtime tier."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import wasmtime

from vmm.capabilities import HostCapabilities
from vmm.contract import HttpPhase
from vmm.policy import SandboxSpec
from vmm.runner import HttpRunner, Runner
from vmm.sandbox import PluginFault, PluginLoadError
from vmm.wasm_module import (
    WASM_PAGE,
    BinaryKind,
    ContractError,
    CoreModuleInfo,
    WasmFormatError,
    check_contract,
    check_http_contract,
    classify,
    unwrap_core,
)
from vmm.wasmtime_tier._cache import cache_dir, compile_component, compile_module
from vmm.wasmtime_tier._component import ComponentProgram, component_capabilities
from vmm.wasmtime_tier._core import CoreProgram, CoreSandbox
from vmm.wasmtime_tier._engine import deadline_ticks, engine, ticker
from vmm.wasmtime_tier._http_component import HttpComponentInstance, HttpComponentProgram, missing_exports
from vmm.wasmtime_tier._http_component import read_phases as read_component_phases
from vmm.wasmtime_tier._http_core import HttpCoreInstance, HttpCoreProgram, read_phases
from vmm.wasmtime_tier._runner import InlineGate
from vmm.wasmtime_tier._warm import WARM_INSTANCES, Unbound, WarmInstances

__all__ = [
    "LOAD_BUDGET_MS", "WARM_INSTANCES", "HttpFactory", "WasmtimeFactory", "load_http_sync", "load_sync",
]

LOG = logging.getLogger("lightcell.wasmtime")

LOAD_BUDGET_MS = 10_000
"""Time a component's start code may take at load (it is compiled already)."""


class WasmtimeFactory:
    """A loaded plugin; every new_sandbox() is a fresh Store and instance.

    On the core path the Store and instance (and the plugin's `_initialize`)
    are made ahead, WARM_INSTANCES at a time, on the worker pool; a connection
    takes one that has never run anything for anyone (it is bound to the
    connection's capabilities and used by that connection only), so its first
    event can run inline instead of paying ~0.4-0.8 ms of instantiation.
    """

    def __init__(
        self, spec: SandboxSpec, program: CoreProgram | ComponentProgram, imports: frozenset[str]
    ) -> None:
        self.spec = spec
        self._program = program
        self._imports = imports
        self._closed = False
        plugin = Path(spec.plugin_path).name.removesuffix(".wasm")
        self.inline_gate = InlineGate(spec.listener, plugin, spec.limits.event_cpu_ms)
        self.warm: WarmInstances[CoreSandbox] | None = None
        ticker.acquire()
        if isinstance(program, CoreProgram):
            self.warm = WarmInstances(
                spec.listener,
                lambda host: program.new_sandbox(host, spec.limits, self.inline_gate),
                Unbound.for_spec(spec, plugin),
            )

    @property
    def tier(self) -> str:
        return "wasmtime"

    @property
    def imports(self) -> frozenset[str]:
        return self._imports

    @property
    def path(self) -> str:
        """ "core" (canonical-ABI calls) or "component" (component API)."""
        return "core" if isinstance(self._program, CoreProgram) else "component"

    async def new_sandbox(self, host: HostCapabilities) -> Runner:
        if self._closed:
            raise RuntimeError("factory is closed")
        warm = self.warm.take(host) if self.warm is not None else None
        # None ready: the Store and instance are created by the sandbox's first
        # hook call, on a worker thread, under the CPU budget.
        instance = warm or self._program.new_sandbox(host, self.spec.limits, self.inline_gate)
        return Runner(instance, "wasmtime")

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self.warm is not None:
                await asyncio.to_thread(self.warm.stop)
            await asyncio.to_thread(ticker.release)


@contextlib.contextmanager
def _loading(path: Path) -> Iterator[None]:
    """Load-time errors as PluginLoadError, with the plugin's path."""
    try:
        yield
    except ContractError as e:
        raise PluginLoadError(f"{path}: does not implement the lightcell contract: {e}") from e
    except WasmFormatError as e:
        raise PluginLoadError(f"{path}: malformed wasm: {e}") from e
    except wasmtime.WasmtimeError as e:
        raise PluginLoadError(f"{path}: invalid plugin: {str(e).strip()}") from e


def _read(path: Path) -> tuple[bytes, BinaryKind, bytes | None]:
    """The file, its kind, and its core module (None: a general component)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PluginLoadError(f"{path}: cannot read plugin: {e.strerror or e}") from e
    try:
        return data, classify(data), unwrap_core(data)
    except WasmFormatError as e:
        raise PluginLoadError(f"{path}: malformed wasm: {e}") from e


def load_sync(spec: SandboxSpec, cache: Path | None = None) -> WasmtimeFactory:
    path = Path(spec.plugin_path)
    data, kind, core = _read(path)
    directory = cache_dir(cache)
    with _loading(path):
        if core is not None:
            return _load_core(spec, core, directory)
        assert kind is BinaryKind.COMPONENT
        return _load_component(spec, data, directory)


def _check_start_memory(spec: SandboxSpec, info: CoreModuleInfo) -> None:
    minimum = info.memory_min_pages
    if minimum is not None and minimum * WASM_PAGE > spec.limits.memory_bytes:
        raise PluginLoadError(
            f"{spec.plugin_path}: needs {minimum * WASM_PAGE} bytes of memory at start, "
            f"over the limit of {spec.limits.memory_bytes}"
        )


def _load_core(spec: SandboxSpec, core: bytes, directory: Path) -> WasmtimeFactory:
    contract = check_contract(core)
    _check_start_memory(spec, contract.info)
    module = compile_module(engine(), core, directory)
    return WasmtimeFactory(spec, CoreProgram(module, contract), contract.capabilities)


def _load_component(spec: SandboxSpec, data: bytes, directory: Path) -> WasmtimeFactory:
    component = compile_component(engine(), data, directory)
    imports, foreign = component_capabilities(component)
    if foreign:
        raise PluginLoadError(
            f"{spec.plugin_path}: imports outside the contract and WASI 0.2: {', '.join(foreign)}"
        )
    program = ComponentProgram(component)
    # Link once now so a missing import or export is a load error, not a
    # failure on the first connection.
    # Instantiating runs the plugin's start code: bounded like a connection
    # (memory cap, and a time budget with the epoch ticker running), so a
    # component that loops or allocates at start cannot hang or bloat start-up.
    store = wasmtime.Store(engine())
    store.set_limits(memory_size=spec.limits.memory_bytes, table_elements=1 << 20, memories=1)
    store.set_wasi(wasmtime.WasiConfig())
    store.set_epoch_deadline(deadline_ticks(LOAD_BUDGET_MS))
    ticker.acquire()
    try:
        instance = program.instantiate(store)
    except wasmtime.Trap as e:
        raise PluginLoadError(f"{spec.plugin_path}: component failed to start: {e}") from e
    finally:
        ticker.release()
    for name in ("on-open", "on-data", "on-close"):
        if instance.get_func(store, name) is None:
            raise PluginLoadError(f"{spec.plugin_path}: component has no export {name!r}")
    return WasmtimeFactory(spec, program, imports)


# --- the http-filter world ---------------------------------------------------------


class HttpFactory:
    """A loaded http-filter plugin (core or component path): every new_sandbox()
    (one per HTTP request) is a fresh Store and instance, created by its first
    wanted hook on a worker thread under the CPU budget; grants are checked by
    the same host functions as on the tcp-filter path."""

    def __init__(
        self, spec: SandboxSpec, program: HttpCoreProgram | HttpComponentProgram, imports: frozenset[str]
    ) -> None:
        self.spec = spec
        self._program = program
        self._imports = imports
        self._closed = False
        plugin = Path(spec.plugin_path).name.removesuffix(".wasm")
        self.inline_gate = InlineGate(spec.listener, plugin, spec.limits.event_cpu_ms)
        ticker.acquire()
        # Components are made per request: their Store's WASI setup and their
        # linker depend on the request's grants, which an instance made ahead lacks.
        self.warm: WarmInstances[HttpCoreInstance] | None = None
        if isinstance(program, HttpCoreProgram):
            self.warm = WarmInstances(
                spec.listener,
                lambda host: program.new_instance(host, spec.limits, self.inline_gate),
                Unbound.for_spec(spec, plugin),
            )

    @property
    def tier(self) -> str:
        return "wasmtime"

    @property
    def path(self) -> str:
        """ "core" (canonical-ABI calls) or "component" (component API)."""
        return "core" if isinstance(self._program, HttpCoreProgram) else "component"

    @property
    def imports(self) -> frozenset[str]:
        return self._imports

    @property
    def phases(self) -> HttpPhase:
        """What the plugin's `wanted-phases` says (read once, at load)."""
        return self._program.phases

    def new_instance(self, host: HostCapabilities) -> HttpCoreInstance | HttpComponentInstance:
        """A fresh synchronous instance (vmm.runner.HttpInstance) for one request:
        one made ahead if ready (never used before), else made by its first hook."""
        if self._closed:
            raise RuntimeError("factory is closed")
        warm = self.warm.take(host) if self.warm is not None else None
        return warm or self._program.new_instance(host, self.spec.limits, self.inline_gate)

    async def new_sandbox(self, host: HostCapabilities) -> HttpRunner:
        return HttpRunner(self.new_instance(host), "wasmtime")

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self.warm is not None:
                await asyncio.to_thread(self.warm.stop)
            await asyncio.to_thread(ticker.release)


def load_http_sync(spec: SandboxSpec, cache: Path | None = None) -> HttpFactory:
    """Load an http-filter plugin: a core module, a component wrapping one (core
    path), or any other component (componentize-py, componentize-js: component path).

    Core path: the phases come from check_http_contract when `wanted-phases` is
    a constant. Otherwise (and always for components) `wanted-phases` is called
    once, here, in a throwaway instance with no capabilities; a fault there, or
    bits outside the flags, is a load error."""
    path = Path(spec.plugin_path)
    data, kind, core = _read(path)
    directory = cache_dir(cache)
    with _loading(path):
        if core is None:
            assert kind is BinaryKind.COMPONENT
            return _load_http_component(spec, data, directory)
        contract = check_http_contract(core)
        _check_start_memory(spec, contract.info)
        module = compile_module(engine(), core, directory)
        program = HttpCoreProgram(module, contract, contract.phases or HttpPhase(0))
        if contract.phases is None:
            program.phases = _phases_at_load(path, lambda: read_phases(program, spec))
        return HttpFactory(spec, program, contract.capabilities)


def _phases_at_load(path: Path, read: Callable[[], HttpPhase]) -> HttpPhase:
    ticker.acquire()  # the call is budgeted like a hook: the epoch must tick
    try:
        return read()
    except PluginFault as e:
        raise PluginLoadError(f"{path}: wanted-phases failed at load: {e}") from e
    finally:
        ticker.release()


def _load_http_component(spec: SandboxSpec, data: bytes, directory: Path) -> HttpFactory:
    component = compile_component(engine(), data, directory)
    imports, foreign = component_capabilities(component)
    if foreign:
        raise PluginLoadError(
            f"{spec.plugin_path}: imports outside the contract and WASI 0.2: {', '.join(foreign)}"
        )
    missing = missing_exports(component)
    if missing:
        raise PluginLoadError(
            f"{spec.plugin_path}: not an http-filter component: no export {', '.join(map(repr, missing))}"
        )
    program = HttpComponentProgram(ComponentProgram(component), HttpPhase(0))
    # Instantiating runs start code: linking errors and start traps surface here, at load.
    program.phases = _phases_at_load(Path(spec.plugin_path), lambda: read_component_phases(program, spec))
    return HttpFactory(spec, program, imports)
