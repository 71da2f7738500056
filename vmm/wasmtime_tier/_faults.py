"""Turning what went wrong inside a hook call into one PluginFault: the one
place the wasmtime tier classifies faults (core and component paths).

It relies only on the call's own context: when a host function trapped the
plugin, the reason is the exception the host-function wrapper recorded on
that call's CallContext (`error`, the first one of the call), never the
Python exception wasmtime-py re-raises from its process-global slot, which a
host function on another thread (another sandbox) may have overwritten
between this call's trap and its classification. The calls into plugin code
(_fastcall.py, _component_bytes.py) raise this call's own trap or error for
the same reason. So the exception classified is either the recorded cause,
or this thread's own: the trap, or a refusal raised by host code outside a
host function (the verdict's return area, cabi_realloc's result).

Precedence, first match wins:
1. the host refused or rejected something the plugin asked for: DENIED / ABI;
2. the plugin called proc_exit: TRAP;
3. the epoch deadline interrupted it: BUDGET;
4. its memory is at the cap (a refused memory.grow returns -1 to the guest,
   which then aborts or faults; wasmtime-py cannot report the refusal itself,
   so the store's size is compared to the cap): MEMORY;
5. any other trap: TRAP;
6. anything else (a bug in a host function): INTERNAL.
"""

from __future__ import annotations

import re

import wasmtime

from vmm.capabilities import CapabilityDenied, CapabilityMisuse
from vmm.sandbox import FaultKind, PluginFault
from vmm.wasmtime_tier._budget import BudgetExceeded
from vmm.wasmtime_tier._context import CallContext

__all__ = ["AbiViolation", "ProcExit", "classify_failure", "near_memory_cap"]


class AbiViolation(Exception):
    """The plugin broke the canonical ABI (bad pointer, bad tag, bad UTF-8)."""


class ProcExit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"plugin called proc_exit({code})")
        self.code = code


# A failed memory.grow means the request did not fit under the cap, but the
# guest only sees -1 and wasmtime-py cannot report the refusal. So, after a
# fault, the cap counts as hit when the headroom left is either tiny (below
# the slack: C allocators ask for what they need, rounded to pages) or
# smaller than what this very call already grew by (a plugin growing in big
# steps whose next step cannot fit).
MEMORY_SLACK_BYTES = 1 << 20


def near_memory_cap(before: int, after: int, cap: int) -> bool:
    headroom = cap - after
    slack = min(MEMORY_SLACK_BYTES, max(65536, cap // 8))
    return headroom < slack or (after > before and headroom < after - before)


def classify_failure(
    hook: str,
    error: BaseException,
    ctx: CallContext,
    memory: tuple[int, int] | None,
    cap: int,
) -> PluginFault:
    """`error`: what the call raised in this thread; `ctx`: the call's own
    context; `memory`: linear memory size (before, after) the call, if known."""
    cause = ctx.error if ctx.error is not None else error
    if isinstance(cause, PluginFault):
        return cause
    if isinstance(cause, CapabilityDenied):
        return PluginFault(FaultKind.DENIED, f"{hook}: {cause}")
    if isinstance(cause, AbiViolation | CapabilityMisuse):
        return PluginFault(FaultKind.ABI, f"{hook}: {cause}")
    if isinstance(cause, ProcExit):
        return PluginFault(FaultKind.TRAP, f"{hook}: {cause}")
    if isinstance(cause, BudgetExceeded):
        return PluginFault(FaultKind.BUDGET, f"{hook}: {cause}")
    if isinstance(cause, wasmtime.Trap) and cause.trap_code is wasmtime.TrapCode.INTERRUPT:
        return PluginFault(FaultKind.BUDGET, f"{hook}: CPU budget exhausted")
    if memory is not None and near_memory_cap(memory[0], memory[1], cap):
        return PluginFault(
            FaultKind.MEMORY,
            f"{hook}: memory cap of {cap} bytes hit ({memory[1]} in use): {_first_line(cause)}",
        )
    if isinstance(cause, wasmtime.Trap | wasmtime.WasmtimeError):
        if "interrupt" in str(cause):
            return PluginFault(FaultKind.BUDGET, f"{hook}: CPU budget exhausted")
        return PluginFault(FaultKind.TRAP, f"{hook}: {_first_line(cause)}")
    return PluginFault(FaultKind.INTERNAL, f"{hook}: {type(cause).__name__}: {cause}")


# wasmtime's own wording of a trap (its `Trap` Display), for errors that carry no trap code
# (a component's call): the trap code's name, as for a core module's trap.
_TRAP_TEXT = {
    "wasm `unreachable` instruction executed": wasmtime.TrapCode.UNREACHABLE,
    "out of bounds memory access": wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS,
    "call stack exhausted": wasmtime.TrapCode.STACK_OVERFLOW,
    "integer overflow": wasmtime.TrapCode.INTEGER_OVERFLOW,
    "integer divide by zero": wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO,
    "invalid conversion to integer": wasmtime.TrapCode.BAD_CONVERSION_TO_INTEGER,
    "indirect call type mismatch": wasmtime.TrapCode.BAD_SIGNATURE,
    "undefined element: out of bounds table access": wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS,
    "uninitialized element": wasmtime.TrapCode.INDIRECT_CALL_TO_NULL,
}


def _trap_words(code: wasmtime.TrapCode) -> str:
    return f"wasm trap: {code.name.lower().replace('_', ' ')}"


def _first_line(error: BaseException) -> str:
    """What went wrong, in one line: the trap code's name; for an error with a backtrace
    (a component's trap: "error while executing at wasm backtrace: ..."), its cause."""
    if isinstance(error, wasmtime.Trap) and error.trap_code is not None:
        return _trap_words(error.trap_code)
    lines = [line.strip() for line in str(error).strip().splitlines()]
    if "Caused by:" in lines:
        cause = next((line for line in lines[lines.index("Caused by:") + 1:] if line), "")
        cause = re.sub(r"^\d+: ", "", cause)  # several causes are numbered
        text = cause.removeprefix("wasm trap: ")
        return _trap_words(_TRAP_TEXT[text]) if text in _TRAP_TEXT else cause or lines[0]
    return lines[0] if lines and lines[0] else type(error).__name__
