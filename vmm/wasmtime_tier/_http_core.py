"""The http-filter world on the core path: one HTTP request's plugin in a fresh
Store, its hooks called at the canonical-ABI level (plugins/wit/README.md,
"Core-module view of http-filter").

Everything but the hooks is CoreInstanceBase's (_core.py), shared with the
tcp-filter path: the Store and its limits, the CPU budget, instantiation and
`_initialize`, the host functions and their one grant check per call, fault
classification from the call's own context, on-open and on-close. Per hook:
the arguments lowered into guest memory as the README says
(vmm.http_abi.lower_headers / lower_attributes; bodies as on-data's data),
the export called, its decision lifted by vmm.http_abi.lift_decision over a
zero-copy view of the memory (return-area and array alignment, bounds with
overflow, UTF-8 names, tags, status 200..=599, MAX_OUTPUT_BYTES per body
before a byte is copied), then `cabi_post_<hook>` if exported. A violation is
PluginFault(ABI). The decision carries the metadata the plugin set during the
hook (and a deferred on-open), as TCP verdicts do.

Phases: a hook of a phase the plugin does not want (`wanted_phases`) answers
continue without running plugin code (not even instantiation). The phases
are read at load time (_factory.load_http_sync): from the code when
`wanted-phases` is a constant (check_http_contract), else by calling it once
in a throwaway instance with no capabilities (`read_phases`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import wasmtime

from vmm.capabilities import HostCapabilities
from vmm.contract import (
    EXPORT_WANTED_PHASES,
    HTTP_HOOKS,
    HTTP_PHASES_ALL,
    MAX_EVENT_BYTES,
    DecisionKind,
    HttpPhase,
)
from vmm.http_abi import Header, HttpDecision, lift_decision, lower_attributes, lower_headers
from vmm.http_hooks import Attributes, PhaseHooks
from vmm.kvstore import KvStore
from vmm.metrics import Metrics
from vmm.policy import Grants, Limits, SandboxSpec
from vmm.sandbox import FaultKind, PluginFault
from vmm.wasm_module import CoreHttpContract
from vmm.wasmtime_tier._core import CoreInstanceBase, CoreProgramBase
from vmm.wasmtime_tier._fastcall import RawFunc
from vmm.wasmtime_tier._faults import AbiViolation
from vmm.wasmtime_tier._memory import u32
from vmm.wasmtime_tier._runner import InlineGate

__all__ = ["HttpCoreInstance", "HttpCoreProgram", "read_phases"]

CONTINUE = HttpDecision(DecisionKind.CONTINUE)
_BODY_PHASES = HttpPhase.REQUEST_BODY | HttpPhase.RESPONSE_BODY



class HttpCoreProgram(CoreProgramBase):
    """A compiled, linked http-filter core plugin and the phases it wants."""

    def __init__(self, module: wasmtime.Module, contract: CoreHttpContract, phases: HttpPhase) -> None:
        super().__init__(module, contract)
        self.phases = phases

    def new_instance(self, host: HostCapabilities, limits: Limits, gate: InlineGate) -> HttpCoreInstance:
        return HttpCoreInstance(self, host, limits, gate)


class HttpCoreInstance(PhaseHooks, CoreInstanceBase):
    """vmm.runner.HttpInstance: one HTTP request's plugin, driven synchronously
    (open, the six hooks, close raise PluginFault; release never raises)."""

    def __init__(
        self, program: HttpCoreProgram, host: HostCapabilities, limits: Limits, gate: InlineGate
    ) -> None:
        super().__init__(program, host, limits, gate, kind="http-core")
        self._phases = program.phases
        self._hooks: dict[str, RawFunc] = {}

    def _bind_exports(self, func: Callable[[str], RawFunc]) -> None:
        self._hooks = {hook: func(hook) for hook in HTTP_HOOKS.values()}
        self._wanted = func(EXPORT_WANTED_PHASES)

    def wanted_phases(self) -> HttpPhase:
        return self._phases


    def call_wanted_phases(self) -> int:
        """Run `wanted-phases` (load time only, see read_phases): its raw i32."""

        def call() -> int:
            flags = self._wanted(self._live_store())
            assert flags is not None
            self._post_return(EXPORT_WANTED_PHASES, flags)
            return u32(flags)

        self._ensure_instance()
        return self._guest_call(EXPORT_WANTED_PHASES, call)

    # --- lowering, calling, lifting -------------------------------------------------
    def _headers(
        self, phase: HttpPhase, headers: Sequence[Header], attributes: Attributes, eos: bool
    ) -> HttpDecision:
        size = sum(len(h.name) + len(h.value) for h in headers) + sum(len(n) + len(v) for n, v in attributes)

        def lower() -> tuple[int, ...]:
            hs = lower_headers(headers, self._alloc, self._write)
            attrs = lower_attributes(attributes, self._alloc, self._write)
            return (*hs, *attrs, int(eos))

        return self._decide(phase, size, lower)

    def _body(self, phase: HttpPhase, body: bytes, eos: bool) -> HttpDecision:
        if len(body) > MAX_EVENT_BYTES:  # the caller splits, as extproc/session.py does for TCP
            raise ValueError(f"a body hook gets at most {MAX_EVENT_BYTES} bytes, not {len(body)}")
        return self._decide(phase, len(body), lambda: (self._lower(body, "body"), len(body), int(eos)))

    def _trailers(self, phase: HttpPhase, trailers: Sequence[Header]) -> HttpDecision:
        size = sum(len(h.name) + len(h.value) for h in trailers)
        return self._decide(phase, size, lambda: lower_headers(trailers, self._alloc, self._write))

    def _decide(self, phase: HttpPhase, size: int, lower: Callable[[], tuple[int, ...]]) -> HttpDecision:
        if not self._phases & phase:
            return CONTINUE  # never asked for: no plugin code runs
        hook = HTTP_HOOKS[phase]

        def call() -> HttpDecision:  # after instantiation (_hook), which binds self._hooks
            args = lower()
            ret = self._hooks[hook](self._live_store(), *args)
            assert ret is not None
            decision = self._lift(hook, phase, ret)
            self._post_return(hook, ret)
            return decision

        decision = self._hook(size, lambda: self._guest_call(hook, call))
        return decision.with_metadata(self._host.take_metadata())

    def _lift(self, hook: str, phase: HttpPhase, ret: int) -> HttpDecision:
        """The decision at `ret`, copied out before any other export runs."""
        try:
            decision = lift_decision(self._mem().view(), u32(ret))
        except PluginFault as e:
            raise PluginFault(e.kind, f"{hook}: {e.message}") from None
        if decision.kind is DecisionKind.MODIFY and decision.body is not None and not phase & _BODY_PHASES:
            raise PluginFault(FaultKind.ABI, f"{hook}: a body replacement from a headers or trailers hook")
        return decision

    def _alloc(self, align: int, size: int) -> int:
        """cabi_realloc(0, 0, align, size) for a lowered argument (checked aligned)."""
        ptr = u32(self._realloc(self._live_store(), 0, 0, align, size) or 0)
        if ptr % align:
            raise AbiViolation(f"cabi_realloc returned {ptr:#x}, not aligned to {align}")
        return ptr

    def _write(self, ptr: int, data: bytes) -> None:
        self._mem().write(ptr, data, "hook argument (from cabi_realloc)")


def read_phases(program: HttpCoreProgram, spec: SandboxSpec) -> HttpPhase:
    """Call `wanted-phases` once, in a throwaway instance with no capabilities
    granted, under the listener's limits (the epoch ticker must be running).
    Raises PluginFault (a fault in it, or bits outside the phases flags)."""
    plugin = Path(spec.plugin_path).name.removesuffix(".wasm")
    host = HostCapabilities(spec.listener, plugin, Grants(), spec.limits, KvStore(1, 1), metrics=Metrics())
    gate = InlineGate(spec.listener, plugin, spec.limits.event_cpu_ms)
    instance = program.new_instance(host, spec.limits, gate)
    try:
        flags = instance.call_wanted_phases()
    finally:
        instance.release()
    if flags & ~int(HTTP_PHASES_ALL):
        raise PluginFault(
            FaultKind.ABI,
            f"{EXPORT_WANTED_PHASES} returned 0x{flags:x}, which has bits outside the phases flags "
            f"(0x{int(HTTP_PHASES_ALL):x})",
        )
    return HttpPhase(flags)
