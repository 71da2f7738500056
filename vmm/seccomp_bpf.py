"""A small generator of classic-BPF seccomp programs for x86_64 (no libseccomp needed).

A program is an allow list: each rule matches one system call number, optionally
with conditions on its arguments, and returns an action; anything else gets the
default action. Layout (every jump is short, so no 255-instruction limit bites):

    ld arch; jeq AUDIT_ARCH_X86_64 else KILL_PROCESS
    ld nr;   jge X32_SYSCALL_BIT   then KILL_PROCESS     (the x32 ABI aliases numbers)
    per rule:  jeq nr, 0, len(body); body (ends in a ret)
    ret default

`install` sets no-new-privileges, then loads the program with seccomp(2) and
SECCOMP_FILTER_FLAG_TSYNC: prctl(PR_SET_SECCOMP) would confine only the calling
thread, and the server's threads (gRPC, vCPU, watchdog) already exist.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "ALLOW", "KILL_PROCESS", "AllowIfAll", "Rule", "SeccompError", "errno_action", "install", "program",
]  # fmt: skip

# linux/filter.h, linux/bpf_common.h
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K, _JGE_K, _JSET_K = 0x15, 0x35, 0x45  # BPF_JMP | op | BPF_K
_RET_K = 0x06
# linux/seccomp.h, linux/audit.h
KILL_PROCESS = 0x8000_0000
ALLOW = 0x7FFF_0000
_RET_ERRNO = 0x0005_0000
AUDIT_ARCH_X86_64 = 0xC000_003E
X32_SYSCALL_BIT = 0x4000_0000
# struct seccomp_data: nr @0, arch @4, instruction_pointer @8, args[6] @16 (u64 each)
_NR, _ARCH = 0, 4
MAX_INSNS = 4096  # BPF_MAXINSNS


def errno_action(errno: int) -> int:
    return _RET_ERRNO | (errno & 0xFFFF)


def _arg_lo(i: int) -> int:
    return 16 + 8 * i


def _arg_hi(i: int) -> int:
    return 16 + 8 * i + 4


Insn = tuple[int, int, int, int]  # code, jt, jf, k


@dataclass(frozen=True)
class AllowIfAll:
    """Argument conditions, all of which must hold for ALLOW:
    `equal`: (arg, values): the 64-bit argument is one of the values;
    `low_equal`: (arg, values): its low 32 bits are (for `unsigned int` parameters such as
      ioctl's request, which the kernel truncates);
    `has_bits`: (arg, bits): all these bits are set; `lacks_bits`: (arg, bits): none is set.
    If one fails, the rule's `otherwise` action."""

    equal: Sequence[tuple[int, frozenset[int]]] = ()
    low_equal: Sequence[tuple[int, frozenset[int]]] = ()
    has_bits: Sequence[tuple[int, int]] = ()
    lacks_bits: Sequence[tuple[int, int]] = ()


@dataclass(frozen=True)
class Rule:
    nr: int
    action: int = ALLOW
    conditions: AllowIfAll | None = None
    otherwise: int = KILL_PROCESS
    name: str = field(default="", compare=False)


def _body(rule: Rule) -> list[Insn]:
    """Instructions for one rule after its `jeq nr`: the conditions, `ret action`, `ret otherwise`."""
    c = rule.conditions
    if c is None:
        return [(_RET_K, 0, 0, rule.action)]
    fail = -1  # placeholder jump target, patched below
    code: list[tuple[int, int, int, int]] = []
    for arg, values in c.equal:
        his = {v >> 32 for v in values}
        if len(his) != 1:
            raise ValueError("values of one `equal` condition must share their high 32 bits")
        code += [(_LD_W_ABS, 0, 0, _arg_hi(arg)), (_JEQ_K, 0, fail, his.pop())]
        code += _one_of(_arg_lo(arg), [v & 0xFFFF_FFFF for v in values], fail)
    for arg, values in c.low_equal:
        code += _one_of(_arg_lo(arg), sorted(values), fail)
    for arg, bits in c.has_bits:
        for bit in _bits(bits):  # jset tests "any": one bit at a time means "all"
            code += [(_LD_W_ABS, 0, 0, _arg_lo(arg)), (_JSET_K, 0, fail, bit)]
    for arg, bits in c.lacks_bits:
        code += [(_LD_W_ABS, 0, 0, _arg_lo(arg)), (_JSET_K, fail, 0, bits)]
    code += [(_RET_K, 0, 0, rule.action)]
    fail_at = len(code)
    code += [(_RET_K, 0, 0, rule.otherwise)]
    out: list[Insn] = []
    for pc, (op, jt, jf, k) in enumerate(code):
        jt = fail_at - pc - 1 if jt == fail else jt
        jf = fail_at - pc - 1 if jf == fail else jf
        out.append((op, jt, jf, k))
    return out


def _one_of(offset: int, values: Sequence[int], fail: int) -> list[tuple[int, int, int, int]]:
    """A = word at offset; go on past the list if A is one of values, else to FAIL."""
    if not values:
        raise ValueError("an empty value list never matches")
    if any(not 0 <= v <= 0xFFFF_FFFF for v in values):
        raise ValueError("a 32-bit comparison value is out of range")
    code: list[tuple[int, int, int, int]] = [(_LD_W_ABS, 0, 0, offset)]
    n = len(values)
    for i, v in enumerate(values):
        last = i == n - 1
        # jt: skip the rest of the list; jf: next comparison, or FAIL after the last one.
        code.append((_JEQ_K, n - i - 1, fail if last else 0, v))
    return code


def _bits(mask: int) -> list[int]:
    return [1 << i for i in range(32) if mask >> i & 1]


def program(rules: Iterable[Rule], default: int) -> bytes:
    """The packed `struct sock_filter` array."""
    insns: list[Insn] = [
        (_LD_W_ABS, 0, 0, _ARCH),
        (_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (_RET_K, 0, 0, KILL_PROCESS),
        (_LD_W_ABS, 0, 0, _NR),
        (_JGE_K, 0, 1, X32_SYSCALL_BIT),
        (_RET_K, 0, 0, KILL_PROCESS),
    ]
    seen: set[int] = set()
    for rule in rules:
        if rule.nr in seen:
            raise ValueError(f"two rules for system call {rule.nr}")
        seen.add(rule.nr)
        body = _body(rule)
        if len(body) > 255:
            raise ValueError(f"rule for system call {rule.nr} is too long for a short jump")
        # The body may reload A; each rule re-tests the number only after its own body
        # returned, so A is reloaded before the next comparison.
        insns += [(_LD_W_ABS, 0, 0, _NR), (_JEQ_K, 0, len(body), rule.nr), *body]
    insns.append((_RET_K, 0, 0, default))
    if len(insns) > MAX_INSNS:
        raise ValueError(f"{len(insns)} instructions, the kernel takes {MAX_INSNS}")
    for op, jt, jf, _ in insns:
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise AssertionError(f"jump out of range in {op:#x}")
    return b"".join(struct.pack("<HBBI", *insn) for insn in insns)


class SeccompError(OSError):
    pass


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_SYS_SECCOMP = 317
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1
_PR_SET_NO_NEW_PRIVS = 38


def install(prog: bytes) -> None:
    """no-new-privileges, then the filter on every thread of the process (TSYNC)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SeccompError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(ctypes.c_long(_SYS_SECCOMP), ctypes.c_long(_SECCOMP_SET_MODE_FILTER),
                      ctypes.c_long(_SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(fprog))  # fmt: skip
    if rc < 0:
        raise SeccompError(ctypes.get_errno(), "seccomp(SECCOMP_SET_MODE_FILTER, TSYNC)")
    if rc > 0:  # the id of a thread that could not be synchronised
        raise SeccompError(0, f"seccomp TSYNC: thread {rc} could not take the filter")
