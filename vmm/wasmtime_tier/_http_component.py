"""The http-filter world on the component path: plugins that are real
components (componentize-py, componentize-js), one fresh Store and instance
per HTTP request.

Everything but the hooks is ComponentInstanceBase's (_component.py), shared
with tcp-filter components: the linker (the contract's host functions with
their one grant check per call, WASI 0.2 gated by grant, unlinked wasi:
interfaces stubbed to deny), the Store and its limits, the CPU budget, fault
classification from the call's own context, on-open (with
STARTUP_RANDOM_BYTES) and on-close.

Per hook: the arguments built as wasmtime C values directly
(_component_http_vals.py: bodies and header values with the strided list<u8>
copy), the export called, its decision read with the core path's checks
(entry and byte bounds on header lists, MAX_OUTPUT_BYTES on bodies before a
byte is read, status 200..=599, no body replacement outside a body hook),
then post-return. A violation is PluginFault(ABI); the decision carries the
metadata the plugin set during the hook (and a deferred on-open).

Phases: `wanted-phases` is called once, at load (read_phases), in a
throwaway instance with no capabilities; a hook of a phase the plugin does
not want answers continue without running plugin code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wasmtime.component import Component

from vmm.capabilities import HostCapabilities
from vmm.contract import (
    EXPORT_ON_CLOSE,
    EXPORT_ON_OPEN,
    EXPORT_WANTED_PHASES,
    HTTP_HOOKS,
    MAX_EVENT_BYTES,
    DecisionKind,
    HttpPhase,
)
from vmm.http_abi import Header, HttpDecision
from vmm.http_hooks import Attributes, PhaseHooks
from vmm.kvstore import KvStore
from vmm.metrics import Metrics
from vmm.policy import Grants, Limits, SandboxSpec
from vmm.wasmtime_tier._component import ComponentInstanceBase, ComponentProgram
from vmm.wasmtime_tier._component_bytes import Lower, call_lowered, lower_bool, lower_bytes, post_return
from vmm.wasmtime_tier._component_http_vals import (
    lift_decision,
    lift_phases,
    lower_attributes,
    lower_headers,
)
from vmm.wasmtime_tier._engine import engine
from vmm.wasmtime_tier._faults import AbiViolation
from vmm.wasmtime_tier._runner import InlineGate

__all__ = ["HTTP_EXPORTS", "HttpComponentInstance", "HttpComponentProgram", "missing_exports", "read_phases"]

CONTINUE = HttpDecision(DecisionKind.CONTINUE)
_BODY_PHASES = HttpPhase.REQUEST_BODY | HttpPhase.RESPONSE_BODY
HTTP_EXPORTS = (EXPORT_WANTED_PHASES, EXPORT_ON_OPEN, *HTTP_HOOKS.values(), EXPORT_ON_CLOSE)



def missing_exports(component: Component) -> list[str]:
    """The http-filter world's exports the component lacks (read from its type)."""
    exports = component.type.exports(engine())
    return [name for name in HTTP_EXPORTS if name not in exports]


class HttpComponentProgram:
    """A compiled, linked http-filter component and the phases it wants."""

    def __init__(self, program: ComponentProgram, phases: HttpPhase) -> None:
        self.program = program
        self.phases = phases

    def new_instance(self, host: HostCapabilities, limits: Limits, gate: InlineGate) -> HttpComponentInstance:
        return HttpComponentInstance(self, host, limits, gate)


class HttpComponentInstance(PhaseHooks, ComponentInstanceBase):
    """vmm.runner.HttpInstance: one HTTP request's component, driven synchronously
    (open, the six hooks, close raise PluginFault; release never raises)."""

    def __init__(
        self, program: HttpComponentProgram, host: HostCapabilities, limits: Limits, gate: InlineGate
    ) -> None:
        super().__init__(program.program, host, limits, gate, kind="http-component")
        self._phases = program.phases
        self._hooks: dict[str, Any] = {}

    def _bind_exports(self, func: Callable[[str], Any]) -> None:
        self._hooks = {hook: func(hook) for hook in HTTP_HOOKS.values()}
        self._wanted = func(EXPORT_WANTED_PHASES)

    def wanted_phases(self) -> HttpPhase:
        return self._phases


    def call_wanted_phases(self) -> HttpPhase:
        """Run `wanted-phases` (load time only, see read_phases); it is this
        instance's first export call, so the startup random allowance applies."""
        self._ensure_instance()
        f = self._wanted

        def run() -> HttpPhase:
            store = self._live_store()
            phases = call_lowered(f, store, [], lift_phases)
            post_return(f, store)
            return phases

        return self._with_startup_random(lambda: self._guest_call(EXPORT_WANTED_PHASES, run))

    # --- lowering, calling, lifting -------------------------------------------------
    def _headers(
        self, phase: HttpPhase, headers: Sequence[Header], attributes: Attributes, eos: bool
    ) -> HttpDecision:
        size = sum(len(h.name) + len(h.value) for h in headers) + sum(len(n) + len(v) for n, v in attributes)
        return self._decide(
            phase, size, lambda: [lower_headers(headers), lower_attributes(attributes), lower_bool(eos)]
        )

    def _body(self, phase: HttpPhase, body: bytes, eos: bool) -> HttpDecision:
        if len(body) > MAX_EVENT_BYTES:  # the caller splits, as on the core path
            raise ValueError(f"a body hook gets at most {MAX_EVENT_BYTES} bytes, not {len(body)}")
        return self._decide(phase, len(body), lambda: [lower_bytes(bytes(body)), lower_bool(eos)])

    def _trailers(self, phase: HttpPhase, trailers: Sequence[Header]) -> HttpDecision:
        size = sum(len(h.name) + len(h.value) for h in trailers)
        return self._decide(phase, size, lambda: [lower_headers(trailers)])

    def _decide(self, phase: HttpPhase, size: int, lowers: Callable[[], list[Lower]]) -> HttpDecision:
        if not self._phases & phase:
            return CONTINUE  # never asked for: no plugin code runs
        hook = HTTP_HOOKS[phase]

        def run() -> HttpDecision:  # after instantiation (_hook), which binds self._hooks
            f, store = self._hooks[hook], self._live_store()
            decision = call_lowered(f, store, lowers(), lift_decision)
            post_return(f, store)
            body = decision.kind is DecisionKind.MODIFY and decision.body is not None
            if body and not phase & _BODY_PHASES:
                raise AbiViolation("a body replacement from a headers or trailers hook")
            return decision

        decision = self._hook(size, lambda: self._guest_call(hook, run))
        return decision.with_metadata(self._host.take_metadata())


def read_phases(program: HttpComponentProgram, spec: SandboxSpec) -> HttpPhase:
    """Call `wanted-phases` once, in a throwaway instance with no capabilities
    granted, under the listener's limits (the epoch ticker must be running).
    Raises PluginFault."""
    plugin = Path(spec.plugin_path).name.removesuffix(".wasm")
    host = HostCapabilities(spec.listener, plugin, Grants(), spec.limits, KvStore(1, 1), metrics=Metrics())
    gate = InlineGate(spec.listener, plugin, spec.limits.event_cpu_ms)
    instance = program.new_instance(host, spec.limits, gate)
    try:
        return instance.call_wanted_phases()
    finally:
        instance.release()
