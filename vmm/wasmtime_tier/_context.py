"""What a host function needs to know about the hook call it serves.

wasmtime-py host functions are defined once per linker, not per sandbox, so
the running call is found through a thread-local: a sandbox's hook runs on
exactly one worker thread from start to end (see _runner.py).

Host functions record why they failed (a refusal, proc_exit, a nested trap,
a bug) here before the exception traps the plugin. wasmtime-py also stashes
that exception in a process-global slot, which another thread's failed call
could pick up first; the record here is per call, and classification
(_faults.classify_failure) reads only it (our calls into plugin code never
read the slot: _fastcall.py).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import wasmtime

from vmm.capabilities import HostCapabilities
from vmm.contract import LogLevel

if TYPE_CHECKING:
    from vmm.wasmtime_tier._budget import CallBudget

__all__ = ["CallContext", "LineBuffer", "current", "current_or_none", "enter", "leave"]

MAX_PENDING_LINE = 4096


class LineBuffer:
    """Turns stdout/stderr writes into log lines (partial lines wait)."""

    def __init__(self, host: HostCapabilities, level: LogLevel) -> None:
        self._host = host
        self._level = level
        self._pending = bytearray()

    def write(self, data: bytes) -> None:
        self._pending += data
        *lines, rest = self._pending.split(b"\n")
        for line in lines:
            self._emit(bytes(line))
        self._pending = bytearray(rest)
        if len(self._pending) >= MAX_PENDING_LINE:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            line, self._pending = bytes(self._pending), bytearray()
            self._emit(line)

    def _emit(self, line: bytes) -> None:
        self._host.log(self._level, line.decode("utf-8", errors="replace"))


@dataclass
class CallContext:
    host: HostCapabilities
    memory: wasmtime.Memory | None = None
    realloc: Callable[..., int | None] | None = None
    """The guest's cabi_realloc (kv.get allocates its result with it)."""
    error: BaseException | None = None
    """Why a host function failed in this call (the first one; set before it traps)."""
    budget: CallBudget | None = None
    """The running hook call's CPU budget (_budget.py reads it at epoch deadlines)."""

    def record(self, error: BaseException) -> None:
        """Keep the first failure of the call (a nested one re-raised outward stays the cause)."""
        if self.error is None:
            self.error = error
    outputs: dict[int, LineBuffer] = field(default_factory=dict)

    def output(self, fd: int) -> LineBuffer:
        buf = self.outputs.get(fd)
        if buf is None:
            level = LogLevel.INFO if fd == 1 else LogLevel.WARN
            buf = self.outputs[fd] = LineBuffer(self.host, level)
        return buf

    def flush_outputs(self) -> None:
        for buf in self.outputs.values():
            # The grant was checked when the bytes were written.
            with contextlib.suppress(Exception):
                buf.flush()


_local = threading.local()


def enter(ctx: CallContext) -> None:
    ctx.error = None
    _local.ctx = ctx


def leave() -> None:
    _local.ctx = None


def current_or_none() -> CallContext | None:
    ctx: CallContext | None = getattr(_local, "ctx", None)
    return ctx


def current() -> CallContext:
    ctx: CallContext | None = getattr(_local, "ctx", None)
    if ctx is None:
        raise RuntimeError("host function called outside a hook call")
    return ctx
