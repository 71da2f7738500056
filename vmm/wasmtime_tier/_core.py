"""Core-module path: a plugin's core exports called at the canonical-ABI level.

Per connection (or HTTP request, _http_core.py): a fresh Store and Instance
from a pre-linked InstancePre (no memory, globals or tables survive it);
CoreProgramBase and CoreInstanceBase hold what both worlds share (linking,
the Store and its limits, the budget, calls into plugin code and their fault
classification, memory access, lowering, on-open, on-close). Per TCP event: cabi_realloc for
the input list, one memmove into linear memory, on-data, the verdict read
back from its return area (every pointer checked by GuestMemory; a
replacement over MAX_OUTPUT_BYTES refused before it is copied), then
cabi_post_on-data if exported.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import TypeVar

import wasmtime

from vmm.capabilities import HostCapabilities
from vmm.contract import (
    EXPORT_INITIALIZE,
    EXPORT_MEMORY,
    EXPORT_ON_CLOSE,
    EXPORT_ON_DATA,
    EXPORT_ON_OPEN,
    EXPORT_POST_PREFIX,
    EXPORT_REALLOC,
    MAX_OUTPUT_BYTES,
    VERDICT_AREA_ALIGN,
    VERDICT_AREA_SIZE,
    DataEvent,
    Verdict,
    VerdictKind,
    output_too_large,
)
from vmm.policy import Limits
from vmm.sandbox import PluginFault
from vmm.wasm_module import CoreContract, CoreHttpContract
from vmm.wasmtime_tier import _budget, _context
from vmm.wasmtime_tier._budget import CallBudget
from vmm.wasmtime_tier._context import CallContext
from vmm.wasmtime_tier._core_imports import define_imports
from vmm.wasmtime_tier._engine import deadline_ticks, engine
from vmm.wasmtime_tier._fastcall import RawFunc, instantiate
from vmm.wasmtime_tier._faults import AbiViolation, classify_failure
from vmm.wasmtime_tier._memory import GuestMemory, u32
from vmm.wasmtime_tier._runner import InlineGate, WasmtimeInstance, WasmtimeInstanceBase, new_identity

__all__ = ["CoreInstanceBase", "CoreProgram", "CoreProgramBase", "CoreSandbox"]

T = TypeVar("T")
TABLE_ELEMENTS = 1 << 20  # 8 MiB of host memory at most; C plugins use a handful
_VERDICTS = {int(k): k for k in VerdictKind}


class CoreProgramBase:
    """A compiled core plugin linked with the host functions (either world)."""

    def __init__(self, module: wasmtime.Module, contract: CoreContract | CoreHttpContract) -> None:
        linker = wasmtime.Linker(engine())
        define_imports(linker)
        self.contract = contract
        self._pre = linker.instantiate_pre(module)

    def instantiate(self, store: wasmtime.Store) -> wasmtime.Instance:
        return instantiate(self._pre, store)  # its own trap, see _fastcall.py


class CoreProgram(CoreProgramBase):
    """A compiled, linked tcp-filter core plugin: hands out fresh instances."""

    def __init__(self, module: wasmtime.Module, contract: CoreContract) -> None:
        super().__init__(module, contract)

    def new_sandbox(self, host: HostCapabilities, limits: Limits, gate: InlineGate) -> CoreSandbox:
        return CoreSandbox(self, host, limits, gate)


class CoreInstanceBase(WasmtimeInstanceBase):
    """One core instance of either world: its Store, exports and calls into it.
    Subclasses bind their world's hooks (`_bind_exports`) and call them through
    `_guest_call`."""

    def __init__(
        self,
        program: CoreProgramBase,
        host: HostCapabilities,
        limits: Limits,
        gate: InlineGate,
        kind: str = "core",
    ) -> None:
        super().__init__(new_identity(kind), host, gate)
        self._program = program
        self._limits = limits
        self._ticks = deadline_ticks(limits.event_cpu_ms)
        self._budget_s = limits.event_cpu_ms / 1000
        self._ctx = CallContext(host)
        self._store: wasmtime.Store | None = None
        self._memory: wasmtime.Memory | None = None

    def prepare(self) -> None:
        """Create the Store and instance ahead of a connection (the factory's warm
        instances); `bind` then hands it the connection's capabilities."""
        self._locked(self._ensure_instance)

    def bind(self, host: HostCapabilities) -> None:
        self._host = host
        self._ctx.host = host

    # Instantiation runs plugin code (_initialize), so it is a hook call too:
    # on a worker thread, under the budget (WasmtimeInstance runs it before on-open).
    def _instantiate_sync(self) -> None:
        store = wasmtime.Store(engine())
        _budget.install(store)  # event_cpu_ms is the plugin's own CPU time (see _budget.py)
        # wasmtime caps each memory separately: one memory (checked at load)
        # and one instance make memory_size the sandbox's total.
        store.set_limits(
            memory_size=self._limits.memory_bytes, table_elements=TABLE_ELEMENTS, instances=1, memories=1
        )
        self._store = store
        instance = self._guest_call("instantiate", lambda: self._program.instantiate(store))
        exports = instance.exports(store)

        info = self._program.contract.info

        def func(name: str) -> RawFunc:
            f, e = exports[name], info.export(name)
            assert isinstance(f, wasmtime.Func) and e is not None and e.sig is not None
            return RawFunc(f, e.sig.params, e.sig.results)

        memory = exports[EXPORT_MEMORY]
        assert isinstance(memory, wasmtime.Memory)
        self._memory = memory
        self._ctx.memory = memory
        self._realloc = func(EXPORT_REALLOC)
        self._ctx.realloc = self._realloc
        self._on_open = func(EXPORT_ON_OPEN)
        self._on_close = func(EXPORT_ON_CLOSE)
        self._bind_exports(func)
        posts = self._program.contract.post_returns
        self._post = {hook: func(EXPORT_POST_PREFIX + hook) for hook in posts}
        if self._program.contract.has_initialize:
            init = func(EXPORT_INITIALIZE)
            self._guest_call("_initialize", lambda: init(store))

    @abstractmethod
    def _bind_exports(self, func: Callable[[str], RawFunc]) -> None:
        """Look up the world's own hooks (`func(name)`: the export, checked at load)."""

    def _guest_call(self, hook: str, call: Callable[[], T]) -> T:
        """Run plugin code with the budget set and failures classified."""
        store = self._store
        assert store is not None
        store.set_epoch_deadline(self._ticks)
        before = self._memory.data_len(store) if self._memory is not None else 0
        _context.enter(self._ctx)
        self._ctx.budget = CallBudget(self._budget_s)
        try:
            return call()
        except PluginFault:
            raise
        except Exception as e:
            after = self._memory.data_len(store) if self._memory is not None else None
            sizes = None if after is None else (before, after)
            raise classify_failure(hook, e, self._ctx, sizes, self._limits.memory_bytes) from e
        finally:
            _context.leave()
            self._ctx.flush_outputs()

    def _live_store(self) -> wasmtime.Store:
        assert self._store is not None
        return self._store

    def _mem(self) -> GuestMemory:
        assert self._memory is not None and self._store is not None
        return GuestMemory(self._memory, self._store)

    def _lower(self, data: bytes, what: str) -> int:
        """Give `data` to the guest as a list it owns (canonical-ABI lowering)."""
        assert self._store is not None
        ptr = u32(self._realloc(self._live_store(), 0, 0, 1, len(data)) or 0)
        self._mem().write(ptr, data, f"{what} (from cabi_realloc)")
        return ptr

    def _post_return(self, hook: str, *args: int) -> None:
        post = self._post.get(hook)
        if post is not None:
            post(self._live_store(), *args)

    # --- hooks ------------------------------------------------------------------
    def _open_sync(self, listener: str, config: str) -> None:
        def call() -> None:
            lb, cb = listener.encode(), config.encode()
            lp = self._lower(lb, "listener")
            cp = self._lower(cb, "config")
            self._on_open(self._live_store(), lp, len(lb), cp, len(cb))
            self._post_return(EXPORT_ON_OPEN)

        self._guest_call("on-open", call)

    def _close_sync(self) -> None:
        def call() -> None:
            self._on_close(self._live_store())
            self._post_return(EXPORT_ON_CLOSE)

        self._guest_call("on-close", call)

    def _release_sync(self) -> None:
        self._ctx.memory = None
        self._ctx.realloc = None
        self._memory = None
        self._store = None
        self._post = {}


class CoreSandbox(CoreInstanceBase, WasmtimeInstance):
    """One TCP connection's tcp-filter core instance."""

    def __init__(
        self, program: CoreProgram, host: HostCapabilities, limits: Limits, gate: InlineGate
    ) -> None:
        super().__init__(program, host, limits, gate)

    def _bind_exports(self, func: Callable[[str], RawFunc]) -> None:
        self._on_data = func(EXPORT_ON_DATA)

    def _data_sync(self, event: DataEvent) -> Verdict:
        def call() -> Verdict:
            data = event.data
            ptr = self._lower(data, "input data")
            store = self._live_store()
            ret = self._on_data(store, int(event.direction), ptr, len(data), int(event.end_of_stream))
            assert ret is not None
            verdict = self._lift_verdict(ret)
            self._post_return(EXPORT_ON_DATA, ret)
            return verdict

        return self._guest_call("on-data", call)

    def _lift_verdict(self, ret: int) -> Verdict:
        mem = self._mem()
        mem.span(ret, VERDICT_AREA_SIZE, VERDICT_AREA_ALIGN, "verdict return area")
        area = u32(ret)  # span() proved area + 12 fits, so the offsets below cannot wrap
        tag = mem.read_u8(area)
        kind = _VERDICTS.get(tag)
        if kind is None:
            raise AbiViolation(f"verdict tag {tag} is not pass/replace/close/reset")
        if kind is not VerdictKind.REPLACE:
            return Verdict(kind)
        ptr, length = mem.read_u32(area + 4), mem.read_u32(area + 8)
        mem.span(ptr, length, 1, "replacement data")
        if length > MAX_OUTPUT_BYTES:  # checked before a byte is copied out
            raise AbiViolation(output_too_large(length))
        return Verdict(kind, mem.read(ptr, length, "replacement data"))
