"""The micro-VM tier: vmm.sandbox.SandboxFactory over the warm VM pool.

    factory = await vmm.microvm.tier.load(spec)       # compile (cached), boot, snapshot, pool
    sandbox = await factory.new_sandbox(host)         # a restored VM from the pool, in a Runner
    await sandbox.open(listener, config); await sandbox.on_data(event); await sandbox.close()
    factory = await vmm.microvm.tier.load_http(spec)  # http-filter: a VM per request (http_tier.py)

Hooks start on the event loop's thread and move to the VM's pinned vCPU
thread only when they outlive a short slice (instance.py, vmm/runner.py),
under the listener's per-event budget (watchdog.py). A sandbox's identity is
unique per VM incarnation (serial.restores), so a test can prove that no VM
is reused without a restore. Any fault poisons the VM for the rest of the
connection; close() hands it back and the pool restores it off the hot path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vmm.capabilities import HostCapabilities
from vmm.contract import TCP_WORLD
from vmm.kvm import System
from vmm.microvm.compile import CompiledPlugin, compile_plugin
from vmm.microvm.image import ImageError, load_image
from vmm.microvm.instance import MicroVmInstance, fault_kind, fault_message
from vmm.microvm.layout import Layout
from vmm.microvm.machine import LayoutError, Template, build_template
from vmm.microvm.pool import VmPool
from vmm.microvm.snapshot import rehearse
from vmm.microvm.vm import MicroVm, VmFault
from vmm.microvm.wasip2_host import ahead_host
from vmm.microvm.watchdog import Watchdog
from vmm.microvm.worker import ThreadSet
from vmm.policy import SandboxSpec
from vmm.runner import Runner
from vmm.sandbox import PluginLoadError
from vmm.wasm_module import WASM_PAGE

if TYPE_CHECKING:
    from vmm.microvm.http_tier import MicroVmHttpFactory

__all__ = [
    "MicroVmFactory", "compile_template", "deadline_runner", "fault_kind", "fault_message", "kvm_available",
    "load", "load_http",
]

LOG = logging.getLogger("lightcell.microvm")

POOL_ENV = "LIGHTCELL_MICROVM_POOL"
"""Warm (restored, pre-faulted) VMs kept ready per listener; README "Tuning"."""
THREADS_ENV = "LIGHTCELL_MICROVM_THREADS"
"""vCPU threads per process; each VM is pinned to one."""
_DEFAULT_COUNT = 4
_MAX_COUNT = 1024


def env_count(name: str) -> int:
    """A positive count from the environment (default 4), or PluginLoadError naming the variable."""
    text = os.environ.get(name)
    if text is None:
        return _DEFAULT_COUNT
    if not text.strip().isdigit() or not 1 <= int(text) <= _MAX_COUNT:
        raise PluginLoadError(f"${name}={text!r}: expected a whole number from 1 to {_MAX_COUNT}")
    return int(text)

def kvm_available() -> bool:
    try:
        with System():
            return True
    except OSError:
        return False


class _Shared:
    """Per-process KVM handle, vCPU threads and watchdog (created on first load)."""

    _lock = threading.Lock()
    _instance: _Shared | None = None

    def __init__(self) -> None:
        threads = env_count(THREADS_ENV)  # a bad value fails before anything is opened
        self.system = System()
        self.threads = ThreadSet(threads)
        self.watchdog = Watchdog()

    @classmethod
    def get(cls) -> _Shared:
        with cls._lock:
            if cls._instance is None:
                cls._instance = _Shared()
            return cls._instance


class MicroVmFactory:
    def __init__(self, spec: SandboxSpec, shared: _Shared, pool: VmPool, imports: frozenset[str]) -> None:
        self.spec = spec
        self.shared = shared
        self.pool = pool
        self._imports = imports
        self._closed = False

    @property
    def tier(self) -> str:
        return "microvm"

    @property
    def imports(self) -> frozenset[str]:
        return self._imports

    async def new_sandbox(self, host: HostCapabilities) -> Runner:
        if self._closed:
            raise RuntimeError("factory is closed")
        lease = self.pool.try_take()
        if lease is None:  # pool empty: make one on a vCPU thread without blocking the loop
            lease = await asyncio.to_thread(self.pool.take)
        budget = self.spec.limits.event_cpu_ms / 1000
        return Runner(MicroVmInstance(self.pool, lease, host, self.shared.watchdog, budget), "microvm")

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self.pool.close)
            self.pool.template.close()


def compile_template(spec: SandboxSpec, world: str) -> tuple[CompiledPlugin, Template]:
    """The plugin of `spec` compiled (cached) for `world`, and its VM template."""
    compiled = compile_plugin(Path(spec.plugin_path), world=world)  # CompileError is a PluginLoadError
    if not compiled.cached:
        LOG.info("listener %s: compiled %s in %.0f s", spec.listener, spec.plugin_path, compiled.seconds)
    minimum = compiled.contract.info.memory_min_pages
    if minimum is not None and minimum * WASM_PAGE > spec.limits.memory_bytes:
        # The guest refuses it too (LC_STATUS_MEMORY at init); this says why, as wasmtime's tier does.
        raise PluginLoadError(f"{spec.plugin_path}: needs {minimum * WASM_PAGE} bytes of memory at start, "
                              f"over the limit of {spec.limits.memory_bytes}")
    try:
        layout = Layout.for_memory_limit(spec.limits.memory_bytes)
        template = build_template(load_image(compiled.image), layout)
    except (ImageError, LayoutError, ValueError) as e:
        raise PluginLoadError(f"{spec.plugin_path}: {e}") from e
    return compiled, template


def deadline_runner(spec: SandboxSpec, shared: _Shared) -> Callable[[MicroVm, Callable[[], object]], object]:
    """Runs a call in a VM under the listener's per-event budget (the watchdog)."""
    seconds = spec.limits.event_cpu_ms / 1000

    def deadline(vm: MicroVm, fn: Callable[[], object]) -> object:
        return shared.watchdog.run(vm, seconds, fn)

    return deadline


def _load_sync(spec: SandboxSpec, shared: _Shared, pool_size: int) -> MicroVmFactory:
    compiled, template = compile_template(spec, TCP_WORLD)
    deadline = deadline_runner(spec, shared)

    def opened() -> bool:
        return pool.opened_with is not None

    pool = VmPool(shared.system, template, shared.threads, target=pool_size,
                  warm=rehearse(spec.listener, spec.plugin_config, deadline, opened=opened),
                  open_ahead=(spec.listener, spec.plugin_config), run=deadline, listener=spec.listener,
                  open_host=ahead_host(spec))
    try:
        pool.start()
    except VmFault as e:
        pool.close()
        template.close()
        raise PluginLoadError(f"{spec.plugin_path}: the plugin failed to initialise: {e}") from e
    return MicroVmFactory(spec, shared, pool, compiled.contract.capabilities)


async def load(spec: SandboxSpec, pool_size: int | None = None) -> MicroVmFactory:
    """Compile (cached), boot, snapshot and pool the plugin of `spec`.

    Must first be called from the main thread (the watchdog installs a signal
    handler). Raises PluginLoadError.
    """
    shared = _Shared.get()
    size = env_count(POOL_ENV) if pool_size is None else pool_size
    return await asyncio.to_thread(_load_sync, spec, shared, size)


async def load_http(spec: SandboxSpec, pool_size: int | None = None) -> MicroVmHttpFactory:
    """Compile (cached), boot, read wanted-phases, snapshot and pool the
    http-filter plugin of `spec` (vmm/microvm/http_tier.py). Raises PluginLoadError."""
    from vmm.microvm.http_tier import load_http_sync

    shared = _Shared.get()
    size = env_count(POOL_ENV) if pool_size is None else pool_size
    return await asyncio.to_thread(load_http_sync, spec, shared, size)
