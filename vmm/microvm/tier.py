"""The micro-VM tier: vmm.sandbox.SandboxFactory/Sandbox over the warm VM pool.

    factory = await vmm.microvm.tier.load(spec)       # compile (cached), boot, snapshot, pool
    sandbox = await factory.new_sandbox(host)         # a restored VM from the pool
    await sandbox.open(listener, config); await sandbox.on_data(event); await sandbox.close()

Every call runs on the VM's pinned vCPU thread under the listener's per-event
deadline (watchdog.py); the event loop only awaits. A sandbox's identity is
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
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar

from vmm.capabilities import HostCapabilities
from vmm.contract import DataEvent, Verdict, VerdictKind, output_too_large
from vmm.kvm import KvmError, System
from vmm.microvm import abi
from vmm.microvm.compile import compile_plugin
from vmm.microvm.image import ImageError, load_image
from vmm.microvm.layout import Layout
from vmm.microvm.machine import LayoutError, Template, build_template
from vmm.microvm.pool import PooledVm, VmPool
from vmm.microvm.snapshot import rehearse
from vmm.microvm.vm import FaultReason, MicroVm, Response, VmFault
from vmm.microvm.watchdog import Watchdog
from vmm.microvm.worker import ThreadSet
from vmm.policy import SandboxSpec
from vmm.sandbox import FaultKind, PluginFault, PluginLoadError
from vmm.wasm_module import WASM_PAGE

__all__ = ["MicroVmFactory", "MicroVmSandbox", "fault_kind", "fault_message", "kvm_available", "load"]

LOG = logging.getLogger("lightcell.microvm")
T = TypeVar("T")

DEFAULT_POOL_SIZE = int(os.environ.get("LIGHTCELL_MICROVM_POOL", "4"))
DEFAULT_THREADS = int(os.environ.get("LIGHTCELL_MICROVM_THREADS", "4"))

_STATUS_KIND = {
    abi.Status.TRAP: FaultKind.TRAP,
    abi.Status.MEMORY: FaultKind.MEMORY,
    abi.Status.DENIED: FaultKind.DENIED,
    abi.Status.ABI: FaultKind.ABI,
    abi.Status.EXIT: FaultKind.TRAP,  # proc_exit ends the connection, as in the wasmtime tier
}
_REASON_KIND = {
    FaultReason.DEADLINE: FaultKind.BUDGET,
    FaultReason.EXCEPTION: FaultKind.TRAP,
    FaultReason.BAD_PORT: FaultKind.ABI,
    FaultReason.BAD_LENGTH: FaultKind.ABI,
    FaultReason.BAD_RESPONSE: FaultKind.ABI,
    FaultReason.BAD_HOSTCALL: FaultKind.ABI,
    FaultReason.DEAD: FaultKind.INTERNAL,
    FaultReason.POISONED: FaultKind.INTERNAL,
}


ABI_TOO_LARGE = 4
"""guest/runtime/lc_rt.h LC_ABI_TOO_LARGE: a replacement over MAX_OUTPUT_BYTES."""


def fault_kind(fault: VmFault) -> FaultKind:
    if fault.reason is FaultReason.GUEST_STATUS and fault.status is not None:
        return _STATUS_KIND.get(abi.Status(fault.status), FaultKind.INTERNAL)
    return _REASON_KIND.get(fault.reason, FaultKind.INTERNAL)


def fault_message(fault: VmFault, op: abi.Op) -> str:
    """The fault's message, worded as the wasmtime tier words it where they meet."""
    if (op is abi.Op.DATA and fault.reason is FaultReason.GUEST_STATUS
            and fault.status == abi.Status.ABI and fault.detail == ABI_TOO_LARGE):
        return f"on-data: {output_too_large()}"
    return fault.message


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
        self.system = System()
        self.threads = ThreadSet(DEFAULT_THREADS)
        self.watchdog = Watchdog()

    @classmethod
    def get(cls) -> _Shared:
        with cls._lock:
            if cls._instance is None:
                cls._instance = _Shared()
            return cls._instance


async def _on_thread(fut: Future[T]) -> T:
    return await asyncio.wrap_future(fut)


class MicroVmSandbox:
    def __init__(self, factory: MicroVmFactory, lease: PooledVm, host: HostCapabilities) -> None:
        self._factory = factory
        self._lease = lease
        self._host = host
        self._identity = f"microvm:{lease.vm.identity}"
        self._fault: PluginFault | None = None
        self._closed = False
        self._opened = False
        self._pending: list[tuple[abi.Op, int, int, bytes]] = []

    @property
    def identity(self) -> str:
        return self._identity

    async def _call(self, op: abi.Op, arg0: int, arg1: int, payload: bytes) -> Response:
        """Run the deferred on-open (if any) and then this call, in one thread hop."""
        if self._closed:
            raise PluginFault(FaultKind.INTERNAL, "sandbox is closed")
        if self._fault is not None:
            raise self._fault
        steps = [*self._pending, (op, arg0, arg1, payload)]
        self._pending = []
        vm, host = self._lease.vm, self._host
        seconds = self._factory.spec.limits.event_cpu_ms / 1000
        dog = self._factory.shared.watchdog

        def run() -> Response:
            for step in steps:  # each hook has its own deadline
                r = dog.run(vm, seconds, lambda s=step: vm.call(*s, host=host))  # type: ignore[misc]
            return r

        try:
            return await _on_thread(self._lease.thread.submit(run))
        except VmFault as e:
            self._fault = PluginFault(fault_kind(e), fault_message(e, op))
        except ValueError as e:  # refused before the guest ran (oversized payload)
            self._fault = PluginFault(FaultKind.INTERNAL, str(e))
        except KvmError as e:
            self._fault = PluginFault(FaultKind.INTERNAL, str(e))
        LOG.info("plugin fault listener=%s vm=%s: %s", self._host.listener, self._identity, self._fault)
        raise self._fault

    async def open(self, listener: str, config: str) -> None:
        """Queue on-open; it runs in the same vCPU-thread hop as the next hook.

        A thread hop costs about as much as a VM exit here (70-115 us under
        load), and the session always follows open() with on_data() or
        close(), handling a PluginFault from either the same way. An on-open
        fault is therefore raised by that next call.
        """
        if self._opened:
            raise PluginFault(FaultKind.ABI, "open() called twice")
        self._opened = True
        lb, cb = listener.encode(), config.encode()
        self._pending.append((abi.Op.OPEN, len(lb), len(cb), lb + cb))

    async def on_data(self, event: DataEvent) -> Verdict:
        r = await self._call(abi.Op.DATA, int(event.direction), int(event.end_of_stream), event.data)
        kind = VerdictKind(r.detail)
        if kind is VerdictKind.REPLACE:
            return Verdict.replace(r.payload)
        return Verdict.pass_() if kind is VerdictKind.PASS else Verdict(kind)

    async def close(self) -> None:
        if self._closed:
            return
        try:
            if self._fault is None and self._opened:
                await self._call(abi.Op.CLOSE, 0, 0, b"")
        except (PluginFault, asyncio.CancelledError):
            pass  # on-close failing ends nothing more than this connection
        finally:
            self._closed = True
            self._factory.pool.give_back(self._lease)  # restore runs in the background


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

    async def new_sandbox(self, host: HostCapabilities) -> MicroVmSandbox:
        if self._closed:
            raise RuntimeError("factory is closed")
        lease = self.pool.try_take()
        if lease is None:  # pool empty: make one on a vCPU thread without blocking the loop
            lease = await asyncio.to_thread(self.pool.take)
        return MicroVmSandbox(self, lease, host)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self.pool.close)
            self.pool.template.close()


def _load_sync(spec: SandboxSpec, shared: _Shared, pool_size: int) -> MicroVmFactory:
    compiled = compile_plugin(Path(spec.plugin_path))  # CompileError is a PluginLoadError
    minimum = compiled.contract.info.memory_min_pages
    if minimum is not None and minimum * WASM_PAGE > spec.limits.memory_bytes:
        # The guest refuses it too (LC_STATUS_MEMORY at init); this says why, as wasmtime's tier does.
        raise PluginLoadError(f"{spec.plugin_path}: needs {minimum * WASM_PAGE} bytes of memory at start, "
                              f"over the limit of {spec.limits.memory_bytes}")
    try:
        template: Template = build_template(load_image(compiled.image),
                                            Layout.for_memory_limit(spec.limits.memory_bytes))
    except (ImageError, LayoutError, ValueError) as e:
        raise PluginLoadError(f"{spec.plugin_path}: {e}") from e
    seconds = spec.limits.event_cpu_ms / 1000

    def deadline(vm: MicroVm, fn: Callable[[], object]) -> object:
        return shared.watchdog.run(vm, seconds, fn)

    pool = VmPool(shared.system, template, shared.threads, target=pool_size,
                  warm=rehearse(spec.listener, spec.plugin_config, deadline))
    try:
        pool.start()
    except VmFault as e:
        pool.close()
        template.close()
        raise PluginLoadError(f"{spec.plugin_path}: the plugin failed to initialise: {e}") from e
    return MicroVmFactory(spec, shared, pool, compiled.contract.capabilities)


async def load(spec: SandboxSpec, pool_size: int = DEFAULT_POOL_SIZE) -> MicroVmFactory:
    """Compile (cached), boot, snapshot and pool the plugin of `spec`.

    Must first be called from the main thread (the watchdog installs a signal
    handler). Raises PluginLoadError.
    """
    shared = _Shared.get()
    return await asyncio.to_thread(_load_sync, spec, shared, pool_size)
