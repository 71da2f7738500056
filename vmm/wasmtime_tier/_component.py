"""Component path: plugins that are real components (componentize-py: many
core modules linked together, WASI 0.2), run through wasmtime.component.

The contract's imports are defined once per linker with func_new-style
callbacks that find the running sandbox's HostCapabilities through the call
context; WASI 0.2 comes from add_wasip2 with an empty WasiConfig per store
(no preopens, no env, no args; stdout/stderr become log lines only when
`log` is granted). list<u8> crosses the boundary through wasmtime-py's
generic value conversion (element by element): correct, and slow for large
chunks; the core path is the fast one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import wasmtime
from wasmtime.component import Component, Instance, Linker

from vmm.capabilities import CapabilityDenied, CapabilityMisuse, HostCapabilities
from vmm.contract import (
    CAPABILITY_OF_MODULE,
    EXPORT_ON_CLOSE,
    EXPORT_ON_DATA,
    EXPORT_ON_OPEN,
    IMPORT_MODULE,
    WIT_PACKAGE,
    DataEvent,
    Direction,
    LogLevel,
    Verdict,
    VerdictKind,
)
from vmm.policy import Limits
from vmm.sandbox import FaultKind, PluginFault
from vmm.wasmtime_tier import _context
from vmm.wasmtime_tier._component_bytes import call_on_data
from vmm.wasmtime_tier._context import CallContext, LineBuffer
from vmm.wasmtime_tier._engine import deadline_ticks, engine
from vmm.wasmtime_tier._faults import AbiViolation, classify_failure
from vmm.wasmtime_tier._runner import HookRunner, new_identity

__all__ = ["ComponentProgram", "ComponentSandbox", "component_capabilities"]

T = TypeVar("T")
_TYPES_INTERFACE = f"{WIT_PACKAGE.split('@')[0]}/types@{WIT_PACKAGE.split('@')[1]}"
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
        elif name != _TYPES_INTERFACE and not name.startswith("wasi:"):
            foreign.append(name)
    return frozenset(caps), foreign


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(store: wasmtime.StoreContext, *args: Any) -> Any:
        ctx = _context.current()
        try:
            return fn(ctx, *args)
        except (CapabilityDenied, CapabilityMisuse, AbiViolation) as e:
            ctx.error = e
            raise

    return wrapper


def _log(ctx: CallContext, level: str, message: str) -> None:
    ctx.host.check("log")
    try:
        lvl = LogLevel[level.upper()]
    except KeyError as e:
        raise AbiViolation(f"log level {level!r}") from e
    ctx.host.log(lvl, message)


def _send(ctx: CallContext, host: str, port: int, payload: bytes) -> str | None:
    err = ctx.host.send_datagram(host, port, payload)
    return None if err is None else _SEND_ERRORS[int(err)]


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
}


class ComponentProgram:
    def __init__(self, component: Component) -> None:
        self.component = component
        self._linker = Linker(engine())
        self._linker.add_wasip2()
        with self._linker.root() as root:
            for iface, funcs in _FUNCS.items():
                with root.add_instance(iface) as inst:
                    for name, fn in funcs.items():
                        inst.add_func(name, _guarded(fn))

    def new_sandbox(self, host: HostCapabilities, limits: Limits) -> ComponentSandbox:
        return ComponentSandbox(self, host, limits)

    def instantiate(self, store: wasmtime.Store) -> Instance:
        return self._linker.instantiate(store, self.component)


class ComponentSandbox(HookRunner):
    def __init__(self, program: ComponentProgram, host: HostCapabilities, limits: Limits) -> None:
        super().__init__(new_identity("component"), host.listener, host.plugin)
        self._program = program
        self._limits = limits
        self._ticks = deadline_ticks(limits.event_cpu_ms)
        self._ctx = CallContext(host)
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
        # wasmtime caps each memory separately; componentize-py needs one.
        store.set_limits(memory_size=self._limits.memory_bytes, table_elements=1 << 20, memories=1)
        store.set_wasi(self._wasi_config())
        self._store = store
        instance = self._guest_call("instantiate", lambda: self._program.instantiate(store))

        def func(name: str) -> Any:
            f = instance.get_func(store, name)
            if f is None:
                raise PluginFault(FaultKind.INTERNAL, f"component has no export {name!r}")
            return f

        self._on_open = func(EXPORT_ON_OPEN)
        self._on_data = func(EXPORT_ON_DATA)
        self._on_close = func(EXPORT_ON_CLOSE)

    def _guest_call(self, hook: str, call: Callable[[], T]) -> T:
        store = self._store
        assert store is not None
        store.set_epoch_deadline(self._ticks)
        _context.enter(self._ctx)
        try:
            return call()
        except PluginFault:
            raise
        except Exception as e:
            # Component memories are internal; only the limiter knows their
            # size, so memory faults are recognised by the trap alone here.
            raise classify_failure(hook, e, self._ctx.error, None, self._limits.memory_bytes) from e
        finally:
            _context.leave()
            for buf in self._outputs:
                with contextlib.suppress(Exception):
                    buf.flush()

    def _call(self, hook: str, f: Any, *args: Any) -> Any:
        def call() -> Any:
            result = f(self._store, *args)
            f.post_return(self._store)
            return result

        return self._guest_call(hook, call)

    def _open_sync(self, listener: str, config: str) -> None:
        self._call("on-open", self._on_open, listener, config)

    def _data_sync(self, event: DataEvent) -> Verdict:
        store = self._store
        assert store is not None
        on_data = self._on_data

        def call() -> tuple[str, bytes | None]:
            # list<u8> through the fast converter (see _component_bytes.py).
            result = call_on_data(
                on_data, store, _DIRECTIONS[event.direction], bytes(event.data), event.end_of_stream
            )
            on_data.post_return(store)
            return result

        case, payload = self._guest_call("on-data", call)
        kind = _VERDICT_TAGS.get(case)
        if kind is None:
            raise PluginFault(FaultKind.ABI, f"on-data: unexpected verdict {case!r}")
        if kind is VerdictKind.REPLACE:
            return Verdict.replace(payload or b"")
        return Verdict.pass_() if kind is VerdictKind.PASS else Verdict(kind)

    def _close_sync(self) -> None:
        self._call("on-close", self._on_close)

    def _release_sync(self) -> None:
        self._store = None
