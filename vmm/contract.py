"""The plugin contract (plugins/wit/lightcell.wit) as plain Python values,
plus its canonical-ABI (core module) view shared by every tier.

The core view is documented in plugins/wit/README.md; the constants here are
the single source both tiers use to call a plugin and to lay out results.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

WIT_PACKAGE = "lightcell:filter@0.1.0"
TCP_WORLD = "tcp-filter"


class Direction(enum.IntEnum):
    """Canonical-ABI discriminants of `types.direction`."""

    READ = 0  # client -> upstream
    WRITE = 1  # upstream -> client


class VerdictKind(enum.IntEnum):
    """Canonical-ABI discriminants of `types.verdict`."""

    PASS = 0
    REPLACE = 1
    CLOSE = 2
    RESET = 3


class LogLevel(enum.IntEnum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


class SendError(enum.IntEnum):
    """Canonical-ABI discriminants of `egress.send-error`."""

    DENIED = 0
    TOO_LARGE = 1
    UNREACHABLE = 2


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the plugin decided for one chunk."""

    kind: VerdictKind
    data: bytes = b""

    @staticmethod
    def pass_() -> Verdict:
        return _PASS

    @staticmethod
    def replace(data: bytes) -> Verdict:
        return Verdict(VerdictKind.REPLACE, bytes(data))

    def output(self, original: bytes) -> bytes:
        """The bytes to forward for a PASS or REPLACE verdict."""
        return original if self.kind is VerdictKind.PASS else self.data


_PASS = Verdict(VerdictKind.PASS)


MAX_EVENT_BYTES = 256 * 1024
"""Most bytes one on-data call receives. Envoy hands over up to ~1 MiB per
message; bigger chunks reach the plugin in pieces of this size (TCP chunk
boundaries carry no meaning), so every tier can size its buffers for it."""

MAX_OUTPUT_BYTES = 8 * 1024 * 1024
"""Most bytes one on-data call may return (a `replace` verdict's data), in
every tier; more is a plugin fault (FaultKind.ABI) under the listener's
failure mode, raised before the bytes are copied out of the plugin. The same
cap holds for the joined output of one Envoy message handed over in pieces.
It fits the micro-VM's 16 MiB OUT buffer with its header, and a reply
carrying it fits a gRPC message (extproc/tcp_service.py MAX_MESSAGE_BYTES,
64 MiB) with room to spare; it is 32x MAX_EVENT_BYTES."""


def output_too_large(length: int | None = None) -> str:
    """The fault message for a replacement over MAX_OUTPUT_BYTES (`length` if known)."""
    size = "a replacement" if length is None else f"a replacement of {length} bytes"
    return f"{size} is over the maximum output per event of {MAX_OUTPUT_BYTES} bytes"


@dataclass(frozen=True, slots=True)
class DataEvent:
    """One chunk of a TCP stream, in order per direction."""

    direction: Direction
    data: bytes
    end_of_stream: bool


# --- Core-module view (legacy wit-bindgen names, as `wasm-tools component
# embed --dummy-names legacy` prints them). -------------------------------

EXPORT_MEMORY = "memory"
EXPORT_REALLOC = "cabi_realloc"
EXPORT_INITIALIZE = "_initialize"
EXPORT_ON_OPEN = "on-open"  # (i32 i32 i32 i32) -> ()
EXPORT_ON_DATA = "on-data"  # (i32 dir, i32 ptr, i32 len, i32 eos) -> i32 retptr
EXPORT_ON_CLOSE = "on-close"  # () -> ()
EXPORT_POST_PREFIX = "cabi_post_"  # optional, e.g. cabi_post_on-data (i32)

# on-data's return area: u8 discriminant @0, list ptr u32 @4, list len u32 @8.
VERDICT_AREA_SIZE = 12
VERDICT_AREA_ALIGN = 4

# kv.get's return area (option<list<u8>>): u8 tag @0, ptr @4, len @8.
OPTION_LIST_AREA_SIZE = 12
# egress.send-datagram's return area (result<_, send-error>): u8 tag @0, u8 err @1.
RESULT_ENUM_AREA_SIZE = 2

IMPORT_MODULE = {
    "log": "lightcell:filter/log@0.1.0",
    "clock": "lightcell:filter/clock@0.1.0",
    "random": "lightcell:filter/random@0.1.0",
    "kv": "lightcell:filter/kv@0.1.0",
    "metadata": "lightcell:filter/metadata@0.1.0",
    "egress": "lightcell:filter/egress@0.1.0",
}
"""Capability name (the grant) -> core import module."""

CAPABILITY_OF_MODULE = {module: cap for cap, module in IMPORT_MODULE.items()}

# WASI preview1 functions (module wasi_snapshot_preview1) and the grant each needs.
# None: always available but inert (empty args/environ, proc_exit ends the call).
WASI_P1_GRANTS: dict[str, str | None] = {
    "fd_write": "log",  # stdout/stderr become log lines
    "clock_time_get": "clock",
    "clock_res_get": "clock",
    "random_get": "random",
    "args_sizes_get": None,
    "args_get": None,
    "environ_sizes_get": None,
    "environ_get": None,
    "proc_exit": None,
}
