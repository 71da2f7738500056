"""The plugin contract (plugins/wit/lightcell.wit) as plain Python values,
plus its canonical-ABI (core module) view shared by every tier.

The core view is documented in plugins/wit/README.md; the constants here are
the single source both tiers use to call a plugin and to lay out results.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

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


_NO_METADATA: Mapping[str, str] = MappingProxyType({})  # shared, read-only


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the plugin decided for one chunk."""

    kind: VerdictKind
    data: bytes = b""
    metadata: Mapping[str, str] = field(default_factory=lambda: _NO_METADATA)
    """Dynamic metadata the plugin set during this hook (and a deferred on-open)."""

    @staticmethod
    def pass_() -> Verdict:
        return _PASS

    def with_metadata(self, metadata: Mapping[str, str]) -> Verdict:
        """This verdict carrying `metadata` (itself when there is none)."""
        return dataclasses.replace(self, metadata=MappingProxyType(dict(metadata))) if metadata else self

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
failure mode, raised before the bytes are copied out of the plugin. The joined
output of one Envoy message handed over in pieces may be as large as the larger
of this and the message itself (which fitted a gRPC message already).
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
# connection.attributes' return area (list<attribute>): array ptr u32 @0, count u32 @4.
LIST_AREA_SIZE = 8

MAX_CONNECTION_ATTRIBUTES = 64
MAX_CONNECTION_ATTRIBUTE_BYTES = 16 * 1024
"""Most attributes one connection carries, and most bytes of their names and
values together (UTF-8). Envoy sends what the filter's `connection_attributes`
lists, some of it client-controlled (SNI); more is refused before a plugin
sees any (extproc/tcp_protocol.py). Small enough for the micro-VM guest's
64 KiB host-call scratch buffer with the per-entry lengths."""

IMPORT_MODULE = {
    "log": "lightcell:filter/log@0.1.0",
    "clock": "lightcell:filter/clock@0.1.0",
    "random": "lightcell:filter/random@0.1.0",
    "kv": "lightcell:filter/kv@0.1.0",
    "metadata": "lightcell:filter/metadata@0.1.0",
    "egress": "lightcell:filter/egress@0.1.0",
    "connection": "lightcell:filter/connection@0.1.0",
}
"""Capability name (the grant) -> core import module (component interface)."""

CAPABILITY_OF_MODULE = {module: cap for cap, module in IMPORT_MODULE.items()}

WASI_P1_MODULE = "wasi_snapshot_preview1"

_M = IMPORT_MODULE

IMPORT_CAPABILITY: dict[tuple[str, str], str | None] = {
    (_M["log"], "log"): "log",
    (_M["clock"], "wall-now"): "clock",
    (_M["clock"], "monotonic-now"): "clock",
    (_M["random"], "get-u64"): "random",
    (_M["kv"], "get"): "kv",
    (_M["kv"], "set"): "kv",
    (_M["kv"], "delete"): "kv",
    (_M["kv"], "increment"): "kv",
    (_M["metadata"], "set"): "metadata",
    (_M["egress"], "send-datagram"): "egress",
    (_M["connection"], "attributes"): "connection",  # tcp-filter only
    # WASI preview1 (core modules): the subset plugins may import.
    (WASI_P1_MODULE, "fd_write"): "log",  # stdout/stderr become log lines
    (WASI_P1_MODULE, "clock_time_get"): "clock",
    (WASI_P1_MODULE, "clock_res_get"): "clock",
    (WASI_P1_MODULE, "random_get"): "random",
    (WASI_P1_MODULE, "args_sizes_get"): None,
    (WASI_P1_MODULE, "args_get"): None,
    (WASI_P1_MODULE, "environ_sizes_get"): None,
    (WASI_P1_MODULE, "environ_get"): None,
    (WASI_P1_MODULE, "proc_exit"): None,
}
"""Every function a plugin may import, (module, name) -> the grant a call to
it needs (None: always available but inert: empty args/environ, proc_exit
ends the call). The one table of imports and capabilities: the core view
(lightcell:filter/* core modules, the same names as the component
interfaces' functions) and the WASI p1 subset. `check_contract` reports a
module's capabilities from it; the wasmtime tier's host functions
(core and component) and the micro-VM's host-call dispatcher each run
HostCapabilities.check(capability) from it exactly once per call, before
looking at any argument; the capability methods themselves do not check."""

WASI_P2_CAPABILITY: dict[str, str] = {
    "wasi:clocks/wall-clock": "clock",
    "wasi:clocks/monotonic-clock": "clock",
    "wasi:random/random": "random",
    "wasi:random/insecure": "random",
    "wasi:random/insecure-seed": "random",
    "wasi:sockets/tcp-create-socket": "sockets",
    "wasi:sockets/udp-create-socket": "sockets",
    "wasi:sockets/instance-network": "sockets",
}
"""WASI 0.2 interfaces of components (name without version) and the grant
every function in them needs; "sockets" is never granted. The component
path shadows these with denying functions unless the grant is given."""

NEVER_GRANTED = "sockets"


def import_capability(module: str, name: str) -> str | None:
    """The grant a call to import `module`.`name` needs (KeyError: not importable)."""
    return IMPORT_CAPABILITY[(module, name)]


WASI_P1_FUNCTIONS = tuple(name for module, name in IMPORT_CAPABILITY if module == WASI_P1_MODULE)


# --- http-filter world (plugins/wit/README.md, "The http-filter world") ------

HTTP_WORLD = "http-filter"


class HttpPhase(enum.IntFlag):
    """Bits of `http-types.phases`, as `wanted-phases` returns them."""

    REQUEST_HEADERS = 1 << 0
    REQUEST_BODY = 1 << 1
    REQUEST_TRAILERS = 1 << 2
    RESPONSE_HEADERS = 1 << 3
    RESPONSE_BODY = 1 << 4
    RESPONSE_TRAILERS = 1 << 5


HTTP_PHASES_ALL = HttpPhase(0x3F)


class DecisionKind(enum.IntEnum):
    """Canonical-ABI discriminants of `http-types.decision`."""

    CONTINUE = 0
    MODIFY = 1
    RESPOND = 2


# Core export names (legacy wit-bindgen names) and their core signatures.
EXPORT_WANTED_PHASES = "wanted-phases"  # () -> i32 flags
EXPORT_ON_REQUEST_HEADERS = "on-request-headers"  # (i32 hp, i32 hn, i32 ap, i32 an, i32 eos) -> i32 retptr
EXPORT_ON_REQUEST_BODY = "on-request-body"  # (i32 ptr, i32 len, i32 eos) -> i32 retptr
EXPORT_ON_REQUEST_TRAILERS = "on-request-trailers"  # (i32 ptr, i32 count) -> i32 retptr
EXPORT_ON_RESPONSE_HEADERS = "on-response-headers"
EXPORT_ON_RESPONSE_BODY = "on-response-body"
EXPORT_ON_RESPONSE_TRAILERS = "on-response-trailers"

HTTP_HOOKS: dict[HttpPhase, str] = {
    HttpPhase.REQUEST_HEADERS: EXPORT_ON_REQUEST_HEADERS,
    HttpPhase.REQUEST_BODY: EXPORT_ON_REQUEST_BODY,
    HttpPhase.REQUEST_TRAILERS: EXPORT_ON_REQUEST_TRAILERS,
    HttpPhase.RESPONSE_HEADERS: EXPORT_ON_RESPONSE_HEADERS,
    HttpPhase.RESPONSE_BODY: EXPORT_ON_RESPONSE_BODY,
    HttpPhase.RESPONSE_TRAILERS: EXPORT_ON_RESPONSE_TRAILERS,
}
"""Each phase's hook (core export name); every one returns a decision area."""

# `header` / `attribute` element of a list in memory: name ptr @0, name len @4,
# value ptr @8, value len @12; a `string` element (header-mutation.remove): ptr @0, len @4.
HEADER_SIZE = 16
HEADER_ALIGN = 4
STRING_SIZE = 8

# The decision return area (40 bytes, align 4): u8 tag @0, then
#   modify:  set (ptr, count) @4/@8, append @12/@16, remove @20/@24,
#            body option tag u8 @28, body ptr @32, body len @36;
#   respond: status u16 @4, headers (ptr, count) @8/@12, body (ptr, len) @16/@20.
DECISION_AREA_SIZE = 40
DECISION_AREA_ALIGN = 4
DECISION_MODIFY_SET = 4
DECISION_MODIFY_APPEND = 12
DECISION_MODIFY_REMOVE = 20
DECISION_MODIFY_BODY_TAG = 28
DECISION_MODIFY_BODY = 32
DECISION_RESPOND_STATUS = 4
DECISION_RESPOND_HEADERS = 8
DECISION_RESPOND_BODY = 16

IMMEDIATE_STATUS_MIN = 200
IMMEDIATE_STATUS_MAX = 599
