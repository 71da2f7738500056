"""The one async edge between the event loop and every tier.

A tier hands out *instances*: one connection's plugin, driven synchronously
(open, on-data, close raise PluginFault; release never raises), each bound to
the worker that must run it. `Runner` wraps a tcp-filter instance into the
async `vmm.sandbox.Sandbox` the session uses, `HttpRunner` an http-filter
instance (one per HTTP request) into its HTTP counterpart; both are thin
layers over `RunnerBase`, the only place that decides where and in what
order hooks run:

- on-open is folded into the first event (or close): one entry, one hop at most;
- a hook the instance lets run inline (`runs_inline`) starts on the
  event loop's own thread, with no hand-off at all, for a short CPU slice; a
  call that outlives the slice raises `Offload` and finishes on the instance's
  worker thread while the loop serves other connections (THREAT_MODEL.md,
  "Where a call runs");
- other instances (wasmtime: a call cannot be paused and moved) run on their
  worker, awaited;
- a fault or a cancellation poisons the sandbox: every later call raises the
  same fault, close skips on-close and only releases.

Faults are raised, never logged or counted here: the session that owns the
connection reports each one once, with the failure mode it applied.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, Protocol, TypeVar

from vmm.contract import HTTP_HOOKS, DataEvent, DecisionKind, HttpPhase, Verdict
from vmm.http_abi import Header, HttpDecision
from vmm.metrics import METRICS
from vmm.sandbox import FaultKind, PluginFault

__all__ = ["BaseInstance", "HttpInstance", "HttpRunner", "Instance", "Offload", "Runner", "RunnerBase"]

T = TypeVar("T")
InstanceT = TypeVar("InstanceT", bound="BaseInstance")
CONTINUE = HttpDecision(DecisionKind.CONTINUE)
Step = Callable[[], Any]


class Offload(Exception):  # control flow, not an error
    """Raised by an inline step that ran out of its slice: `resume` finishes it
    (on the instance's worker)."""

    def __init__(self, resume: Step) -> None:
        super().__init__("inline slice exhausted")
        self.resume = resume


class BaseInstance(Protocol):
    """One sandbox's plugin in one tier, driven synchronously: what every world's
    instance has (the world's hooks come on top, see Instance and HttpInstance)."""

    @property
    def identity(self) -> str:
        """Unique per instance; never reused."""
        ...

    def runs_inline(self, size: int) -> bool:
        """Whether a hook with `size` bytes of input may start on the event loop's
        thread (a preemptible one raises Offload when its slice runs out); if
        not, it runs on the worker."""
        ...

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` on the worker this instance is bound to."""
        ...

    def open(self, listener: str, config: str) -> None: ...

    def close(self) -> None: ...

    def release(self) -> Future[None] | None:
        """Give the resources back; never raises or blocks. Returns a future when
        that has to wait for a call still running (the runner awaits it)."""
        ...


class Instance(BaseInstance, Protocol):
    """One connection's tcp-filter plugin in one tier, driven synchronously."""

    def on_data(self, event: DataEvent) -> Verdict: ...


class HttpInstance(BaseInstance, Protocol):
    """One HTTP request's http-filter plugin in one tier, driven synchronously.
    A hook of a phase the plugin does not want answers continue without
    running plugin code."""

    def wanted_phases(self) -> HttpPhase: ...

    def request_headers(
        self, headers: Sequence[Header], attributes: Sequence[tuple[str, str]], end_of_stream: bool
    ) -> HttpDecision: ...

    def request_body(self, body: bytes, end_of_stream: bool) -> HttpDecision: ...

    def request_trailers(self, trailers: Sequence[Header]) -> HttpDecision: ...

    def response_headers(
        self, headers: Sequence[Header], attributes: Sequence[tuple[str, str]], end_of_stream: bool
    ) -> HttpDecision: ...

    def response_body(self, body: bytes, end_of_stream: bool) -> HttpDecision: ...

    def response_trailers(self, trailers: Sequence[Header]) -> HttpDecision: ...


def _run_steps(steps: Sequence[Step]) -> Any:
    """Run steps in order; an Offload carries the rest of them along."""
    result = None
    for i, step in enumerate(steps):
        try:
            result = step()
        except Offload as off:
            raise Offload(functools.partial(_finish, off.resume, steps[i + 1 :])) from None
    return result


def _finish(resume: Step, rest: Sequence[Step]) -> Any:
    """On the worker: the rest of an offloaded entry. A step that runs out of a
    slice here is already where it would move to, so it just goes on."""
    result = resume()
    for step in rest:
        try:
            result = step()
        except Offload as off:
            result = off.resume()
    return result


class RunnerBase(Generic[InstanceT]):
    """The async edge over one instance of any world (see the module docstring):
    open, close, and `call` for a world's hooks."""

    def __init__(self, instance: InstanceT, tier: str = "unknown") -> None:
        self._instance = instance
        self.tier = tier
        """The tier's name, a label of the hook latency histogram."""
        self._pending_open: tuple[str, str] | None = None
        self._opened = False
        self._fault: PluginFault | None = None
        self._busy = False
        self._closed = False
        self.offloads = 0
        """Calls that outlived their inline slice and finished on the worker."""

    @property
    def identity(self) -> str:
        return self._instance.identity

    @property
    def fault(self) -> PluginFault | None:
        """The fault that poisoned this sandbox, if any."""
        return self._fault

    async def open(self, listener: str, config: str) -> None:
        """Queue on-open: it runs in the same entry as the next hook, and a fault
        in it is raised by that hook (the session handles both alike)."""
        self._check_usable()
        if self._opened:
            raise PluginFault(FaultKind.ABI, "open() called twice")
        self._opened = True
        self._pending_open = (listener, config)

    async def call(self, hook: str, fn: Callable[[], T], size: int = 0) -> T:
        """Run one hook (`fn`, a call on the instance) in order, a deferred
        on-open first, in one entry; `size`: its input bytes (where it may run).
        A fault or a cancellation poisons the sandbox."""
        result: T = await self._run(hook, [*self._take_open(), fn], size)
        return result

    async def close(self) -> PluginFault | None:
        """Run on-close if the sandbox is healthy, then release it. Returns the
        fault on-close (or a deferred on-open) raised, if any; never raises it."""
        if self._closed:
            return None
        fault = None
        try:
            if self._fault is None and self._opened and not self._busy:
                try:
                    await self._run("on-close", [*self._take_open(), self._instance.close])
                except PluginFault as e:
                    fault = e
        finally:
            self._closed = True
            pending = self._instance.release()
        if pending is not None:  # a cancelled call still runs: close ends when it does
            await asyncio.wrap_future(pending)
        return fault

    # --- machinery ------------------------------------------------------------
    def _take_open(self) -> list[Step]:
        if self._pending_open is None:
            return []
        listener, config = self._pending_open
        self._pending_open = None
        instance = self._instance
        return [lambda: instance.open(listener, config)]

    def _check_usable(self) -> None:
        if self._fault is not None:
            message = f"sandbox poisoned by an earlier fault: {self._fault.message}"
            raise PluginFault(self._fault.kind, message)
        if self._closed:
            raise PluginFault(FaultKind.INTERNAL, "sandbox is closed")
        if self._busy:
            raise PluginFault(FaultKind.INTERNAL, "sandbox called while a call is running")

    async def _run(self, hook: str, steps: list[Step], size: int = 0) -> Any:
        self._check_usable()
        self._busy = True
        started = time.perf_counter()
        try:
            if self._instance.runs_inline(size):
                try:
                    return _run_steps(steps)
                except Offload as off:
                    self.offloads += 1
                    return await asyncio.wrap_future(self._instance.submit(off.resume))
            return await asyncio.wrap_future(self._instance.submit(lambda: _run_steps(steps)))
        except PluginFault as fault:
            self._fault = fault
            raise
        except Exception as e:  # the sandbox failed, not the plugin: still only this connection's
            self._fault = PluginFault(FaultKind.INTERNAL, f"{hook}: {type(e).__name__}: {e}")
            raise self._fault from e
        except asyncio.CancelledError:
            # The call may still be running on the worker: its state is unknown.
            self._fault = PluginFault(FaultKind.INTERNAL, f"{hook}: call cancelled")
            raise
        finally:
            self._busy = False
            METRICS.observe("hook_seconds", time.perf_counter() - started, hook=hook, tier=self.tier)


class Runner(RunnerBase[Instance]):
    """The async Sandbox (tcp-filter) over one Instance."""

    async def on_data(self, event: DataEvent) -> Verdict:
        instance = self._instance
        return await self.call("on-data", lambda: instance.on_data(event), len(event.data))


def _header_bytes(headers: Sequence[Header]) -> int:
    return sum(len(h.name) + len(h.value) for h in headers)


class HttpRunner(RunnerBase[HttpInstance]):
    """The async sandbox (http-filter) over one HttpInstance: the same order,
    poisoning and release as Runner. A hook of a phase the plugin does not want
    answers continue at once (after the usual checks: a poisoned or closed
    sandbox still raises) without an entry into the instance, so a deferred
    on-open waits for the next wanted hook (or close)."""

    def __init__(self, instance: HttpInstance, tier: str = "unknown") -> None:
        super().__init__(instance, tier)
        self._phases = instance.wanted_phases()

    @property
    def phases(self) -> HttpPhase:
        return self._phases

    async def _hook(self, phase: HttpPhase, fn: Callable[[], HttpDecision], size: int) -> HttpDecision:
        if not self._phases & phase:
            self._check_usable()
            return CONTINUE
        return await self.call(HTTP_HOOKS[phase], fn, size)

    async def request_headers(
        self, headers: Sequence[Header], attributes: Sequence[tuple[str, str]], end_of_stream: bool
    ) -> HttpDecision:
        i = self._instance
        return await self._hook(
            HttpPhase.REQUEST_HEADERS,
            lambda: i.request_headers(headers, attributes, end_of_stream),
            _header_bytes(headers) + sum(len(n) + len(v) for n, v in attributes),
        )

    async def request_body(self, body: bytes, end_of_stream: bool) -> HttpDecision:
        i = self._instance
        return await self._hook(
            HttpPhase.REQUEST_BODY, lambda: i.request_body(body, end_of_stream), len(body)
        )

    async def request_trailers(self, trailers: Sequence[Header]) -> HttpDecision:
        i = self._instance
        return await self._hook(
            HttpPhase.REQUEST_TRAILERS, lambda: i.request_trailers(trailers), _header_bytes(trailers)
        )

    async def response_headers(
        self, headers: Sequence[Header], attributes: Sequence[tuple[str, str]], end_of_stream: bool
    ) -> HttpDecision:
        i = self._instance
        return await self._hook(
            HttpPhase.RESPONSE_HEADERS,
            lambda: i.response_headers(headers, attributes, end_of_stream),
            _header_bytes(headers) + sum(len(n) + len(v) for n, v in attributes),
        )

    async def response_body(self, body: bytes, end_of_stream: bool) -> HttpDecision:
        i = self._instance
        return await self._hook(
            HttpPhase.RESPONSE_BODY, lambda: i.response_body(body, end_of_stream), len(body)
        )

    async def response_trailers(self, trailers: Sequence[Header]) -> HttpDecision:
        i = self._instance
        return await self._hook(
            HttpPhase.RESPONSE_TRAILERS, lambda: i.response_trailers(trailers), _header_bytes(trailers)
        )
