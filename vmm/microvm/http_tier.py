"""The micro-VM tier for the http-filter world: one fresh VM per HTTP request.

    factory = await vmm.microvm.tier.load_http(spec)  # compile, boot, phases, snapshot, pool
    sandbox = await factory.new_sandbox(host)         # a restored VM from the pool, in an HttpRunner
    await sandbox.open(listener, config); await sandbox.request_headers(...); await sandbox.close()

Load, once per plugin: the module is compiled for the http-filter world; the
first VM boots; `wanted-phases` is read from the code when it is a constant
(check_http_contract; the C SDK), else called once in that booted VM with
no grants (LC_OP_PHASES, as the wasmtime tier calls it), which is then
restored to its booted state (VmPool probe), so nothing it did reaches a
request. on-open then runs once
for the snapshot (pool.opened_with), as for tcp-filter, and a rehearsal of
one request's wanted hooks maps the pages a first request touches. Each
request leases a VM restored from that snapshot; releasing it restores it
off the hot path, so no state crosses requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from vmm.capabilities import HostCapabilities
from vmm.contract import EXPORT_WANTED_PHASES, HTTP_PHASES_ALL, HTTP_WORLD, HttpPhase
from vmm.kvstore import KvStore
from vmm.metrics import Metrics
from vmm.microvm import abi
from vmm.microvm.http_instance import MicroVmHttpInstance, encode_pairs, http_fault, phase_index
from vmm.microvm.pool import PooledVm, VmPool
from vmm.microvm.tier import _Shared, compile_template, deadline_runner
from vmm.microvm.vm import MicroVm, VmFault
from vmm.microvm.wasip2_host import ahead_host
from vmm.policy import Grants, SandboxSpec
from vmm.runner import HttpRunner
from vmm.sandbox import FaultKind, PluginFault, PluginLoadError
from vmm.wasm_module import CoreHttpContract

__all__ = ["MicroVmHttpFactory", "load_http_sync", "rehearse_http"]

Run = Callable[[MicroVm, Callable[[], object]], object]


class MicroVmHttpFactory:
    """A loaded http-filter plugin: every sandbox is a VM of the warm pool."""

    def __init__(self, spec: SandboxSpec, shared: _Shared, pool: VmPool, contract: CoreHttpContract,
                 phases: HttpPhase) -> None:
        self.spec = spec
        self.shared = shared
        self.pool = pool
        self._imports = contract.capabilities
        self._phases = phases
        self._closed = False

    @property
    def tier(self) -> str:
        return "microvm"

    @property
    def path(self) -> str:
        return "core"

    @property
    def imports(self) -> frozenset[str]:
        return self._imports

    @property
    def phases(self) -> HttpPhase:
        """What the plugin's `wanted-phases` says (read once, at load)."""
        return self._phases

    def _instance(self, lease: PooledVm, host: HostCapabilities) -> MicroVmHttpInstance:
        budget = self.spec.limits.event_cpu_ms / 1000
        instance = MicroVmHttpInstance(self.pool, lease, host, self.shared.watchdog, budget)
        return instance.bind_phases(self._phases)

    def new_instance(self, host: HostCapabilities) -> MicroVmHttpInstance:
        """A synchronous instance (vmm.runner.HttpInstance) for one request; may
        block while a VM is made when the pool is empty."""
        if self._closed:
            raise RuntimeError("factory is closed")
        return self._instance(self.pool.take(), host)

    async def new_sandbox(self, host: HostCapabilities) -> HttpRunner:
        if self._closed:
            raise RuntimeError("factory is closed")
        lease = self.pool.try_take()
        if lease is None:  # pool empty: make one on a vCPU thread without blocking the loop
            lease = await asyncio.to_thread(self.pool.take)
        return HttpRunner(self._instance(lease, host), "microvm")

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self.pool.close)
            self.pool.template.close()


def _phases_probe(spec: SandboxSpec, run: Run, found: list[HttpPhase]) -> Callable[[MicroVm], None]:
    """Calls wanted-phases in the booted VM and checks its bits. The call gets a
    host with no grants (the wasmtime tier's read_phases: its own metrics, a
    one-key kv), not None: WASI start-up code (componentize-py asks for the
    arguments, whether stdout is granted, and reseeds `random` from the
    STARTUP_RANDOM_BYTES zeros) must get the answers any ungranted plugin gets."""
    plugin = Path(spec.plugin_path).name.removesuffix(".wasm")

    def probe(vm: MicroVm) -> None:
        host = HostCapabilities(spec.listener, plugin, Grants(), spec.limits, KvStore(1, 1),
                                metrics=Metrics())
        try:
            response = run(vm, lambda: vm.call(abi.Op.PHASES, host=host))
        except VmFault as e:
            limits = spec.limits
            fault = http_fault(e, EXPORT_WANTED_PHASES, limits.memory_bytes, limits.event_cpu_ms / 1000)
            message = f"{spec.plugin_path}: {EXPORT_WANTED_PHASES} failed at load: {fault}"
            raise PluginLoadError(message) from e
        flags = getattr(response, "detail", 0)
        if flags & ~int(HTTP_PHASES_ALL):
            fault = PluginFault(
                FaultKind.ABI,
                f"{EXPORT_WANTED_PHASES} returned 0x{flags:x}, which has bits outside the phases flags "
                f"(0x{int(HTTP_PHASES_ALL):x})",
            )
            raise PluginLoadError(f"{spec.plugin_path}: {EXPORT_WANTED_PHASES} failed at load: {fault}")
        found.append(HttpPhase(flags))

    return probe


def rehearse_http(listener: str, config: str, phases: Callable[[], HttpPhase], run: Run,
                  opened: Callable[[], bool], chunk: int = 1024) -> Callable[[MicroVm], None]:
    """The HTTP counterpart of snapshot.rehearse: warm-up, on-open (unless in
    the snapshot), one small request through every wanted hook, on-close, with
    no capabilities, each step under the budget; the first failure ends it
    (the VM is restored afterwards either way)."""
    lb, cb = listener.encode(), config.encode()
    headers = encode_pairs([(b":path", b"/"), (b"host", b"warm-up")])
    attributes = encode_pairs([(b"request.path", b"/")])

    def warm(vm: MicroVm) -> None:
        wanted = phases()
        steps: list[tuple[abi.Op, int, int, bytes]] = [(abi.Op.WARMUP, 0, 0, b"")]
        if not opened():
            steps.append((abi.Op.OPEN, len(lb), len(cb), lb + cb))
        for phase in HttpPhase:
            if not wanted & phase:
                continue
            if phase & (HttpPhase.REQUEST_HEADERS | HttpPhase.RESPONSE_HEADERS):
                payload = headers + attributes
            elif phase & (HttpPhase.REQUEST_BODY | HttpPhase.RESPONSE_BODY):
                payload = b"w" * chunk
            else:
                payload = encode_pairs([])
            steps.append((abi.Op.HTTP, phase_index(phase), 0, payload))
        steps.append((abi.Op.CLOSE, 0, 0, b""))
        for op, a0, a1, payload in steps:
            try:
                run(vm, lambda op=op, a0=a0, a1=a1, p=payload: vm.call(op, a0, a1, p))  # type: ignore[misc]
            except VmFault:
                return

    return warm


def load_http_sync(spec: SandboxSpec, shared: _Shared, pool_size: int) -> MicroVmHttpFactory:
    compiled, template = compile_template(spec, HTTP_WORLD)
    contract = compiled.contract
    assert isinstance(contract, CoreHttpContract)
    run = deadline_runner(spec, shared)
    found: list[HttpPhase] = [] if contract.phases is None else [contract.phases]
    probe = _phases_probe(spec, run, found) if contract.phases is None else None

    def opened() -> bool:
        return pool.opened_with is not None

    warm = rehearse_http(spec.listener, spec.plugin_config, lambda: found[0] if found else HttpPhase(0),
                         run, opened)
    pool = VmPool(shared.system, template, shared.threads, target=pool_size, warm=warm,
                  open_ahead=(spec.listener, spec.plugin_config), run=run, probe=probe,
                  listener=spec.listener, open_host=ahead_host(spec))
    try:
        pool.start()
    except (VmFault, PluginLoadError) as e:
        pool.close()
        template.close()
        if isinstance(e, PluginLoadError):
            raise
        raise PluginLoadError(f"{spec.plugin_path}: the plugin failed to initialise: {e}") from e
    return MicroVmHttpFactory(spec, shared, pool, contract, found[0])

