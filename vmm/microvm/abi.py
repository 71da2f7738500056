"""Python mirror of guest/include/lightcell_abi.h and lc_guest.h.

tests/test_kvm_abi.py parses the headers and checks every value here.
"""

from __future__ import annotations

import enum
import struct

# lightcell_abi.h ---------------------------------------------------------
LC_ABI_VERSION = 4
LC_IMAGE_MAGIC = 0x4C4C4543
LC_VECTOR_STUB_SIZE = 16

LC_PORT_READY = 0x100
LC_PORT_DONE = 0x104
LC_PORT_HOSTCALL = 0x108
LC_PORT_FAULT = 0x1F0

LC_PAGE_TABLES = 0x00001000
LC_GDT = 0x00080000
LC_IDT = 0x00081000
LC_TSS = 0x00082000
LC_IMAGE_BASE = 0x00100000
LC_RO_LIMIT = 0x40000000

LC_RW_BASE = 0x40000000
LC_KSTACK = 0x40000000
LC_KSTACK_SIZE = 0x4000
LC_DATA_BASE = 0x40010000
LC_DATA_LIMIT = 0x400F0000
LC_STACK_BASE = 0x40100000
LC_STACK_SIZE = 0x100000
LC_IN_BASE = 0x40200000
LC_IN_SIZE = 0x1000000
LC_OUT_BASE = 0x41200000
LC_OUT_SIZE = 0x1000000
LC_HEAP_BASE = 0x42200000

LC_SEL_KCODE = 0x08
LC_SEL_KDATA = 0x10
LC_SEL_UDATA = 0x1B
LC_SEL_UCODE = 0x23
LC_SEL_TSS = 0x28

IMAGE_HEADER = struct.Struct("<IIQ")  # struct lc_image_header

# lc_guest.h --------------------------------------------------------------


class Op(enum.IntEnum):
    OPEN = 1
    DATA = 2
    CLOSE = 3
    WARMUP = 4
    HTTP = 5
    PHASES = 6


class Status(enum.IntEnum):
    OK = 0
    TRAP = 1
    MEMORY = 2
    DENIED = 3
    ABI = 4
    EXIT = 5


class Trap(enum.IntEnum):
    UNREACHABLE = 1
    OOB = 2
    INT_OVERFLOW = 3
    DIV_BY_ZERO = 4
    INVALID_CONVERSION = 5
    CALL_INDIRECT = 6
    EXHAUSTION = 7
    OTHER = 8


class HostFn(enum.IntEnum):
    LOG = 1
    WALL_NOW = 2
    MONOTONIC_NOW = 3
    RANDOM_U64 = 4
    RANDOM_BYTES = 5
    KV_GET = 6
    KV_SET = 7
    KV_DELETE = 8
    KV_INCREMENT = 9
    METADATA_SET = 10
    EGRESS_SEND = 11
    CONNECTION_ATTRIBUTES = 12
    # WASI 0.2 (guest/runtime/wasip2*.c, vmm/microvm/wasip2_host.py)
    GRANTED = 13
    ARGUMENTS = 14
    UDP_BIND = 15
    UDP_RECV = 16
    UDP_SEND = 17
    POLL = 18


ABI_DETAILS = {
    1: "a pointer and length outside linear memory",
    2: "an unknown verdict tag",
    3: "a malformed request from the host",
    4: "output over the maximum",
    5: "an enum argument out of range",
    6: "arguments the host refused",
    7: "an import called from cabi_realloc or a post-return function",
    8: "a return area not aligned as the ABI requires",
    # WASI 0.2 (guest/runtime/wasip2_rt.h)
    9: "a resource handle of the wrong type, dropped, or never made",
    10: "a WASI call with nothing to act on (an empty poll list)",
    11: "a list result but no cabi_realloc to allocate it",
    12: "the resource handle table is full",
}
"""LC_STATUS_ABI details (guest/runtime/lc_rt.h enum lc_abi_detail, wasip2_rt.h),
worded for fault messages."""


class HostcallStatus(enum.IntEnum):
    OK = 0
    DENIED = 1
    MISUSE = 2


REQUEST = struct.Struct("<IIII")  # struct lc_request: op, arg0, arg1, len
RESPONSE = struct.Struct("<IIII")  # struct lc_response: status, detail, reserved, len
HOSTCALL = struct.Struct("<IIIIQ")  # struct lc_hostcall: fn, len0, len1, reserved, a0
HOSTCALL_RESULT = struct.Struct("<IIQ")  # struct lc_hostcall_result: status, len, value
HTTP_RESULT = struct.Struct("<QQII")  # struct lc_http_result: memory_base, memory_size, retptr, reserved

# The payload room behind each header in its buffer.
MAX_REQUEST_PAYLOAD = LC_IN_SIZE - REQUEST.size
MAX_RESPONSE_PAYLOAD = LC_OUT_SIZE - RESPONSE.size
