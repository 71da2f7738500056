"""What the conformance runner records: per command an outcome and, for every
command that did not pass, a named cause; and the checks a result must pass.

Outcomes: passed, failed, skipped (not run: text-format modules), refused
(a module the runtime refuses by a feature switch: memory64, exceptions).
Causes are "<category>: <detail>", the categories being CATEGORIES.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from vmm.microvm.abi import Status, Trap

__all__ = ["CATEGORIES", "ENGINE", "FEATURE_OFF", "RUNNER", "TEXT", "WASM2C", "FileResult",
           "encode", "matches", "trap_kinds"]

FEATURE_OFF = "refused proposal"   # a feature switch of the runtime (memory64, exceptions)
WASM2C = "wasm2c limitation"       # wasm2c 1.0.42 cannot translate the module, or accepts an invalid one
RUNNER = "runner limitation"       # the runner cannot pass a value, link, or read something
ENGINE = "engine bug"              # a wrong value, a wrong trap or none: the runtime is wrong
TEXT = "text format"               # a text-format module: Lightcell loads binaries only
CATEGORIES = (FEATURE_OFF, WASM2C, RUNNER, ENGINE, TEXT)

CPU_FAULT = 0x1000
"""Not an lc_status: a CPU exception (or other VM fault) in the guest, never a wasm trap."""


@dataclass
class FileResult:
    name: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    refused: int = 0  # refused by a feature switch of the runtime (counted apart from failed)
    causes: dict[str, int] = field(default_factory=dict)  # cause -> commands that did not pass
    misses: list[list[Any]] = field(default_factory=list)  # [line, outcome, cause] of each non-pass

    def ok(self) -> None:
        self.passed += 1

    def _miss(self, line: int, outcome: str, cause: str) -> None:
        if cause.split(":")[0] not in CATEGORIES:
            raise ValueError(f"cause {cause!r} has no category")
        self.causes[cause] = self.causes.get(cause, 0) + 1
        self.misses.append([line, outcome, cause])

    def fail(self, line: int, why: str, cause: str) -> None:
        self.failed += 1
        self._miss(line, "failed", cause)
        if len(self.failures) < 20:
            self.failures.append(f"{self.name}:{line}: {why} [{cause}]")

    def skip(self, line: int, cause: str) -> None:
        self.skipped += 1
        self._miss(line, "skipped", cause)

    def refuse(self, line: int, cause: str) -> None:
        self.refused += 1
        self._miss(line, "refused", cause)

    def add(self, other: FileResult) -> None:
        self.passed += other.passed
        self.failed += other.failed
        self.skipped += other.skipped
        self.refused += other.refused
        for k, v in other.causes.items():
            self.causes[k] = self.causes.get(k, 0) + v


def causes_by_category(causes: dict[str, int]) -> Counter[str]:
    out: Counter[str] = Counter()
    for cause, n in causes.items():
        out[cause.split(":")[0]] += n
    return out


# --- trap kinds --------------------------------------------------------------

_TRAPS: dict[str, frozenset[int]] = {
    "unreachable": frozenset({Trap.UNREACHABLE}),
    "integer divide by zero": frozenset({Trap.DIV_BY_ZERO}),
    "integer overflow": frozenset({Trap.INT_OVERFLOW}),
    "invalid conversion to integer": frozenset({Trap.INVALID_CONVERSION}),
    "out of bounds memory access": frozenset({Trap.OOB}),
    "out of bounds table access": frozenset({Trap.OOB}),
    "indirect call type mismatch": frozenset({Trap.CALL_INDIRECT}),
    # call_indirect past the table / through a null entry (wasm2c: one trap
    # code for all three); an element segment past its table traps as OOB.
    "undefined element": frozenset({Trap.CALL_INDIRECT, Trap.OOB}),
    "uninitialized element": frozenset({Trap.CALL_INDIRECT}),
    # the runtime folds wasm2c's null-reference trap into OTHER
    "null function reference": frozenset({Trap.OTHER}),
    "null reference": frozenset({Trap.OTHER}),
    "call stack exhausted": frozenset({Trap.EXHAUSTION}),
}


def trap_kinds(text: str) -> frozenset[int] | None:
    """The lc_trap codes that mean the spec's trap message `text` (None: unknown message)."""
    for prefix, kinds in _TRAPS.items():
        if text.startswith(prefix):
            return kinds
    return None


def is_trap(status: int) -> bool:
    """A wasm trap reported by the runtime (after a refused memory.grow: MEMORY), never a CPU fault."""
    return status in (Status.TRAP, Status.MEMORY)


# --- values ------------------------------------------------------------------

_MASK = {"i32": 0xFFFFFFFF, "f32": 0xFFFFFFFF, "i64": (1 << 64) - 1, "f64": (1 << 64) - 1}
_LANES = {"i8": ("B", 16), "i16": ("H", 8), "i32": ("I", 4), "i64": ("Q", 2), "f32": ("I", 4),
          "f64": ("Q", 2)}


def encode(v: dict[str, Any]) -> list[int]:
    """An argument as u64 slots (v128: two); ValueError for a type the glue cannot pass."""
    t = v["type"]
    if t in _MASK:
        return [int(v["value"]) & _MASK[t]]
    if t in ("externref", "funcref", "anyref", "exnref"):
        return [0 if v["value"] == "null" else int(v["value"]) + 1]
    if t == "v128":
        fmt, n = _LANES[v["lane_type"]]
        raw = struct.pack(f"<{n}{fmt}", *[int(x) & ((1 << (128 // n)) - 1) for x in v["value"]])
        return list(struct.unpack("<QQ", raw))
    raise ValueError(f"argument type {t}")


def _nan_ok(bits: int, expect: str, width: int) -> bool:
    if width == 32:
        quiet, exp_mask = 0x7FC00000, 0x7F800000
        mag = bits & 0x7FFFFFFF
    else:
        quiet, exp_mask = 0x7FF8000000000000, 0x7FF0000000000000
        mag = bits & 0x7FFFFFFFFFFFFFFF
    if expect == "nan:canonical":
        return mag == quiet
    return mag & quiet == quiet and mag & exp_mask == exp_mask


def _one(slots: list[int], i: int, e: dict[str, Any]) -> int | None:
    """Check expected value `e` at slot i; the next slot, or None on a mismatch."""
    t = e["type"]
    if t == "v128":
        if i + 2 > len(slots):
            return None
        fmt, n = _LANES[e["lane_type"]]
        lanes = struct.unpack(f"<{n}{fmt}", struct.pack("<QQ", slots[i], slots[i + 1]))
        for got, want in zip(lanes, e["value"], strict=True):
            if isinstance(want, str) and want.startswith("nan:"):
                if not _nan_ok(got, want, 32 if n == 4 else 64):
                    return None
            elif got != int(want) & ((1 << (128 // n)) - 1):
                return None
        return i + 2
    if i >= len(slots):
        return None
    got, value = slots[i], e.get("value")
    if t in ("f32", "f64") and isinstance(value, str) and value.startswith("nan:"):
        ok = _nan_ok(got & _MASK[t], value, 32 if t == "f32" else 64)
    elif t in _MASK:
        ok = value is not None and got & _MASK[t] == int(value) & _MASK[t]
    elif t in ("externref", "funcref", "anyref"):
        if value is None:  # any non-null reference
            ok = got != 0
        elif value == "null":
            ok = got == 0
        else:
            ok = got == int(value) + 1 if t == "externref" else got != 0
    else:
        ok = False
    return i + 1 if ok else None


def matches(slots: list[int], expected: list[dict[str, Any]]) -> bool:
    i: int | None = 0
    for e in expected:
        assert i is not None
        i = _one(slots, i, e)
        if i is None:
            return False
    return i == len(slots)


def expected_types_known(expected: list[dict[str, Any]]) -> bool:
    return all(e["type"] in (*_MASK, "v128", "externref", "funcref", "anyref") for e in expected)
