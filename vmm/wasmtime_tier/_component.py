"""Component path: plugins that are real components (componentize-py: many
core modules linked together, WASI 0.2), run through wasmtime.component.

The contract's imports are defined once per linker with func_new-style
callbacks that find the running sandbox's HostCapabilities through the call
context, each through one wrapper (_host_call) that checks the import's grant
from vmm.contract once, before its arguments are used. WASI 0.2 comes from
add_wasip2 with an empty WasiConfig per store (no preopens, no env, no args;
stdout/stderr become log lines only when `log` is granted: the grant is
checked when the store is configured, not per write).

WASI 0.2 is deny-by-default like the contract (see _WasiGate): the
component's own wasi:clocks/* and wasi:random/* imports are shadowed with
functions that deny (log, count, trap) unless the listener grants `clock` /
`random` (granted, they are served through the host: _component_wasi.py),
and wasi:sockets' socket constructors and `instance-network` are shadowed
with functions that always deny, so no OS socket is ever created.
One exception, needed by every componentize-py plugin: see STARTUP_RANDOM_BYTES.
Other wasi: interfaces (wasi:http, imported by componentize-js output) link
to stubs that deny when called (_component_stubs.py).

The data hooks' list<u8> (on-data here, bodies in _http_component.py) go
through _component_bytes.py's fast conversion; the other arguments through
wasmtime-py's generic one. ComponentInstanceBase is what both worlds share.
"""

from __future__ import annotations

import contextlib
import threading
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import wasmtime
from wasmtime.component import Component, Instance, Linker, Record
from wasmtime.component._types import ComponentInstanceType, FuncType

from vmm.capabilities import CapabilityDenied, HostCapabilities
from vmm.contract import (
    CAPABILITY_OF_MODULE,
    EXPORT_ON_CLOSE,
    EXPORT_ON_DATA,
    EXPORT_ON_OPEN,
    IMPORT_MODULE,
    NEVER_GRANTED,
    WASI_P2_CAPABILITY,
    WIT_PACKAGE,
    DataEvent,
    Direction,
    LogLevel,
    Verdict,
    VerdictKind,
    import_capability,
)
from vmm.policy import Grants, Limits
from vmm.sandbox import FaultKind, PluginFault
from vmm.wasmtime_tier import _budget, _context
from vmm.wasmtime_tier._budget import CallBudget
from vmm.wasmtime_tier._component_bytes import call, call_on_data, post_return
from vmm.wasmtime_tier._component_stubs import UnlinkedImports
from vmm.wasmtime_tier._component_wasi import GRANTED_WASI
from vmm.wasmtime_tier._context import CallContext, LineBuffer
from vmm.wasmtime_tier._engine import deadline_ticks, engine
from vmm.wasmtime_tier._faults import AbiViolation, classify_failure
from vmm.wasmtime_tier._runner import InlineGate, WasmtimeInstance, WasmtimeInstanceBase, new_identity

__all__ = [
    "STARTUP_RANDOM_BYTES", "ComponentInstanceBase", "ComponentProgram", "ComponentSandbox",
    "component_capabilities",
]

T = TypeVar("T")
_PACKAGE, _VERSION = WIT_PACKAGE.split("@")
_TYPE_INTERFACES = frozenset(f"{_PACKAGE}/{name}@{_VERSION}" for name in ("types", "http-types"))
"""Interfaces of types only: importing one needs no grant."""
_DIRECTIONS = {Direction.READ: "read", Direction.WRITE: "write"}
_VERDICT_TAGS = {
    "pass": VerdictKind.PASS,
    "replace": VerdictKind.REPLACE,
    "close": VerdictKind.CLOSE,
    "reset": VerdictKind.RESET,
}
_SEND_ERRORS = {0: "denied", 1: "too-large", 2: "unreachable"}


def component_capabilities(component: Component) -> tuple[frozenset[str], list[str]]:
    """(capabilities imported, imports outside the contract and WASI 0.2)."""
    caps: set[str] = set()
    foreign: list[str] = []
    for name in component.type.imports(engine()):
        if name in CAPABILITY_OF_MODULE:
            caps.add(CAPABILITY_OF_MODULE[name])
        elif name not in _TYPE_INTERFACES and not name.startswith("wasi:"):
            foreign.append(name)
    return frozenset(caps), foreign


def _host_call(capability: str | None, fn: Callable[..., Any]) -> Callable[..., Any]:
    """The function's one grant check, then `fn`; our own refusals are
    recorded on the call context before they trap the guest."""

    def wrapper(store: wasmtime.StoreContext, *args: Any) -> Any:
        ctx = _context.current()
        try:
            if capability is not None:
                ctx.host.check(capability)
            return fn(ctx, *args)
        except Exception as e:  # whatever it is, the call's own record (see _faults.py)
            ctx.record(e)
            raise

    return wrapper


def _log(ctx: CallContext, level: str, message: str) -> None:
    try:
        lvl = LogLevel[level.upper()]
    except KeyError as e:
        raise AbiViolation(f"log level {level!r}") from e
    ctx.host.log(lvl, message)


def _send(ctx: CallContext, host: str, port: int, payload: bytes) -> str | None:
    err = ctx.host.send_datagram(host, port, payload)
    return None if err is None else _SEND_ERRORS[int(err)]


def _attributes(ctx: CallContext) -> list[Record]:
    records = []
    for name, value in ctx.host.connection_attributes():
        record = Record()  # wasmtime-py lowers a record from the attributes its fields name
        setattr(record, "name", name)  # noqa: B010
        setattr(record, "value", value)  # noqa: B010
        records.append(record)
    return records


_FUNCS: dict[str, dict[str, Callable[..., Any]]] = {
    IMPORT_MODULE["log"]: {"log": _log},
    IMPORT_MODULE["clock"]: {
        "wall-now": lambda ctx: ctx.host.wall_now(),
        "monotonic-now": lambda ctx: ctx.host.monotonic_now(),
    },
    IMPORT_MODULE["random"]: {"get-u64": lambda ctx: ctx.host.random_u64()},
    IMPORT_MODULE["kv"]: {
        "get": lambda ctx, key: ctx.host.kv_get(key),
        "set": lambda ctx, key, value: ctx.host.kv_set(key, bytes(value)),
        "delete": lambda ctx, key: ctx.host.kv_delete(key),
        "increment": lambda ctx, key, delta: ctx.host.kv_increment(key, delta),
    },
    IMPORT_MODULE["metadata"]: {"set": lambda ctx, key, value: ctx.host.metadata_set(key, value)},
    IMPORT_MODULE["egress"]: {"send-datagram": _send},
    IMPORT_MODULE["connection"]: {"attributes": _attributes},
}


STARTUP_RANDOM_BYTES = 624 * 4
"""Bytes of wasi:random an ungranted component may read during on-open, and
what it gets: zeros, not randomness. componentize-py's runtime reseeds
CPython's `random` module on the first export call of every instance (the
Mersenne Twister state, 624 32-bit words, read as ten get-random-bytes calls
of at most 256 bytes); refusing it would make every Python plugin without the
`random` grant fault on open. Zeros give the plugin a fixed, predictable
`random` module, i.e. no randomness; any read past this, or after on-open, is
denied like every other ungranted call."""

# Interfaces shadowed over add_wasip2's: vmm.contract.WASI_P2_CAPABILITY.


@dataclass
class ComponentCallContext(CallContext):
    startup_random: int = 0
    """Zero bytes still allowed to an ungranted wasi:random read (on-open only)."""


def _denied(capability: str) -> Callable[..., Any]:
    """A WASI function the listener did not grant: _host_call's check logs,
    counts and raises before this runs (shadowed only when not granted)."""

    def denied(ctx: CallContext, *args: Any) -> Any:
        raise CapabilityDenied(capability)  # pragma: no cover - the check raised

    return denied


def _random_bytes_ungranted(ctx: CallContext, n: int) -> bytes:
    """Defined with no grant check in its wrapper: it is the check, made
    once, only when the call is refused (the zeros need no grant)."""
    left = ctx.startup_random if isinstance(ctx, ComponentCallContext) else 0
    if 0 <= n <= left:
        assert isinstance(ctx, ComponentCallContext)
        ctx.startup_random = left - n
        return bytes(n)  # zeros: see STARTUP_RANDOM_BYTES
    ctx.host.check("random")  # raises: not granted
    raise CapabilityDenied("random")  # pragma: no cover - check raised


class _WasiGate:
    """Which of the component's WASI imports to shadow, and with what.

    The shadowing instance takes the component's exact import name (version
    included), which wasmtime's linker prefers over add_wasip2's
    semver-compatible one; with allow_shadowing the definitions replace the
    whole instance for that name, so only interfaces whose resource types
    are defined elsewhere (`use`d) are shadowed. Without a socket or a
    `network` handle, no other wasi:sockets function can do anything.
    """

    def __init__(self, component: Component) -> None:
        eng = engine()
        self.functions: dict[str, tuple[str, list[str]]] = {}
        for name, item in component.type.imports(eng).items():
            capability = WASI_P2_CAPABILITY.get(name.split("@")[0])
            if capability is None:
                continue
            ty = item.ty
            if isinstance(ty, ComponentInstanceType):
                funcs = [f for f, it in ty.exports(eng).items() if isinstance(it.ty, FuncType)]
                self.functions[name] = (capability, funcs)

    def define(self, linker: Linker, grants: frozenset[str]) -> None:
        with linker.root() as root:
            for name, (capability, funcs) in self.functions.items():
                if capability != NEVER_GRANTED and capability in grants:
                    served = GRANTED_WASI.get(name.split("@")[0], {})
                    if funcs and set(funcs) <= served.keys():  # through the host (_component_wasi.py)
                        with root.add_instance(name) as inst:
                            for func in funcs:
                                inst.add_func(func, _host_call(capability, served[func]))
                    continue  # else wasmtime's own implementation serves it
                with root.add_instance(name) as inst:
                    for func in funcs:
                        if name.startswith("wasi:random/random@") and func == "get-random-bytes":
                            inst.add_func(func, _host_call(None, _random_bytes_ungranted))
                        else:
                            inst.add_func(func, _host_call(capability, _denied(capability)))


class ComponentProgram:
    def __init__(self, component: Component) -> None:
        self.component = component
        self._gate = _WasiGate(component)
        self._unlinked = UnlinkedImports(component)
        self._linkers: dict[frozenset[str], Linker] = {}
        self._lock = threading.Lock()

    def _linker(self, grants: frozenset[str]) -> Linker:
        key = grants & {"clock", "random"}
        with self._lock:
            linker = self._linkers.get(key)
            if linker is None:
                linker = Linker(engine())
                linker.allow_shadowing = True
                linker.add_wasip2()
                with linker.root() as root:
                    for iface, funcs in _FUNCS.items():
                        with root.add_instance(iface) as inst:
                            for name, fn in funcs.items():
                                inst.add_func(name, _host_call(import_capability(iface, name), fn))
                self._gate.define(linker, key)
                self._unlinked.define(linker, _host_call)
                self._linkers[key] = linker
            return linker

    def new_sandbox(self, host: HostCapabilities, limits: Limits, gate: InlineGate) -> ComponentSandbox:
        return ComponentSandbox(self, host, limits, gate)

    def instantiate(self, store: wasmtime.Store, grants: Grants | None = None) -> Instance:
        """Instantiate with the WASI 0.2 of `grants` (none if not given)."""
        capabilities = grants.capabilities if grants is not None else frozenset()
        return self._linker(capabilities).instantiate(store, self.component)


class ComponentInstanceBase(WasmtimeInstanceBase):
    """One component instance of either world: its Store (limits, WASI config),
    calls into it with the budget set and failures classified, on-open (with
    STARTUP_RANDOM_BYTES), on-close. Subclasses bind their world's hooks."""

    def __init__(
        self,
        program: ComponentProgram,
        host: HostCapabilities,
        limits: Limits,
        gate: InlineGate,
        kind: str = "component",
    ) -> None:
        super().__init__(new_identity(kind), host, gate)
        self._program = program
        self._limits = limits
        self._ticks = deadline_ticks(limits.event_cpu_ms)
        self._budget_s = limits.event_cpu_ms / 1000
        self._ctx = ComponentCallContext(host)
        self._store: wasmtime.Store | None = None
        self._outputs: list[LineBuffer] = []

    def _wasi_config(self) -> wasmtime.WasiConfig:
        cfg = wasmtime.WasiConfig()  # no argv, env, preopens; stdio closed
        host = self._ctx.host
        if host.grants.allows("log"):
            for fd, setter in ((1, "stdout_custom"), (2, "stderr_custom")):
                buf = LineBuffer(host, LogLevel.INFO if fd == 1 else LogLevel.WARN)
                self._outputs.append(buf)
                setattr(cfg, setter, buf.write)
        return cfg

    def _instantiate_sync(self) -> None:
        store = wasmtime.Store(engine())
        _budget.install(store)  # event_cpu_ms is the plugin's own CPU time (see _budget.py)
        # wasmtime caps each memory separately; componentize-py needs one.
        store.set_limits(memory_size=self._limits.memory_bytes, table_elements=1 << 20, memories=1)
        store.set_wasi(self._wasi_config())
        self._store = store
        grants = self._ctx.host.grants
        instance = self._guest_call("instantiate", lambda: self._program.instantiate(store, grants))

        def func(name: str) -> Any:
            f = instance.get_func(store, name)
            if f is None:
                raise PluginFault(FaultKind.INTERNAL, f"component has no export {name!r}")
            return f

        self._on_open = func(EXPORT_ON_OPEN)
        self._on_close = func(EXPORT_ON_CLOSE)
        self._bind_exports(func)

    @abstractmethod
    def _bind_exports(self, func: Callable[[str], Any]) -> None:
        """Look up the world's own hooks (`func(name)`: the export)."""

    def _live_store(self) -> wasmtime.Store:
        assert self._store is not None
        return self._store

    def _guest_call(self, hook: str, call: Callable[[], T]) -> T:
        store = self._live_store()
        store.set_epoch_deadline(self._ticks)
        _context.enter(self._ctx)
        self._ctx.budget = CallBudget(self._budget_s)
        try:
            return call()
        except PluginFault:
            raise
        except Exception as e:
            # Component memories are internal; only the limiter knows their
            # size, so memory faults are recognised by the trap alone here.
            raise classify_failure(hook, e, self._ctx, None, self._limits.memory_bytes) from e
        finally:
            _context.leave()
            for buf in self._outputs:
                with contextlib.suppress(Exception):
                    buf.flush()

    def _call(self, hook: str, f: Any, *args: Any) -> None:
        store = self._live_store()

        def run() -> None:
            call(f, store, *args)  # its own error, see _fastcall.py
            post_return(f, store)

        self._guest_call(hook, run)

    def _with_startup_random(self, call: Callable[[], T]) -> T:
        """Run the instance's first export call (see STARTUP_RANDOM_BYTES)."""
        self._ctx.startup_random = STARTUP_RANDOM_BYTES
        try:
            return call()
        finally:
            self._ctx.startup_random = 0

    def open(self, listener: str, config: str) -> None:
        """Not timed for the InlineGate: no instance is made ahead on this path, so
        on-open always comes in the entry that creates the instance, which never runs
        inline (runs_inline); and componentize-py's first export call also sets up
        its runtime (several ms), which would shut the gate for every Python plugin."""
        if self._instantiated:  # an entry that may run inline: timed as usual
            super().open(listener, config)
            return
        self._ensure_instance()
        self._open_sync(listener, config)

    def _open_sync(self, listener: str, config: str) -> None:
        self._with_startup_random(lambda: self._call("on-open", self._on_open, listener, config))

    def _close_sync(self) -> None:
        self._call("on-close", self._on_close)

    def _release_sync(self) -> None:
        self._store = None


class ComponentSandbox(ComponentInstanceBase, WasmtimeInstance):
    """One TCP connection's tcp-filter component instance."""

    def _bind_exports(self, func: Callable[[str], Any]) -> None:
        self._on_data = func(EXPORT_ON_DATA)

    def _data_sync(self, event: DataEvent) -> Verdict:
        store = self._live_store()
        on_data = self._on_data

        def run() -> tuple[str, bytes | None]:
            # list<u8> through the fast converter (see _component_bytes.py).
            result = call_on_data(
                on_data, store, _DIRECTIONS[event.direction], bytes(event.data), event.end_of_stream
            )
            post_return(on_data, store)
            return result

        case, payload = self._guest_call("on-data", run)
        kind = _VERDICT_TAGS.get(case)
        if kind is None:
            raise PluginFault(FaultKind.ABI, f"on-data: unexpected verdict {case!r}")
        if kind is VerdictKind.REPLACE:
            return Verdict.replace(payload or b"")
        return Verdict.pass_() if kind is VerdictKind.PASS else Verdict(kind)
