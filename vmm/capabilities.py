"""Host capabilities, written once and shared by every tier.

The grant is checked once per host call, by `check`, in the tier's one
dispatch point (the wasmtime tier's host-function wrappers, the micro-VM's
`hostcalls.dispatch`), driven by vmm.contract.IMPORT_CAPABILITY and before
any argument is looked at; the capability methods below do not check again.
A denied call records the denial (log line + counter naming listener,
plugin and capability) and raises CapabilityDenied, which the tier turns
into a trap for that connection only. Methods are synchronous: tiers call
them from inside a running plugin, possibly on a worker thread.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from vmm.contract import LogLevel, SendError
from vmm.egress_meter import EgressMeter
from vmm.kvstore import KvFull, KvStore
from vmm.metrics import METRICS, Metrics
from vmm.policy import EgressTarget, Grants, Limits

PLUGIN_LOG = logging.getLogger("lightcell.plugin")
LOG = logging.getLogger("lightcell.capabilities")

MAX_LOG_MESSAGE = 4096
MAX_METADATA_ENTRIES = 64
MAX_METADATA_BYTES = 4096
"""Per entry: the UTF-8 bytes of key and value together."""
MAX_EGRESS_HOST_BYTES = 253
"""The longest DNS name: the longest host `egress_allow` takes (extproc/config.py)."""
SHOWN_HOST_CHARS = 80
"""How much of a refused egress host the log shows (escaped)."""
LOG_BURST_LINES = 200
LOG_LINES_PER_SECOND = 100.0
"""Per connection: a plugin may log a burst, then this many lines a second;
the rest are dropped and counted (log_dropped_total), so a plugin cannot
flood the log pipeline or burn the host's CPU in logging."""

# Control characters in a plugin's log line are escaped: a message with a
# newline must not be able to forge a second, host-looking log record, and a
# terminal escape, C1 control or bidi override must not repaint what an
# operator reads (U+2028/2029 end a line for some log viewers).
_ESCAPED_CODEPOINTS = (
    *(c for c in range(0x20) if c != 0x09), 0x7F, *range(0x80, 0xA0),
    0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A),
)
_ESCAPE_CONTROLS = str.maketrans(
    {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _ESCAPED_CODEPOINTS}
)

_LEVELS = {
    LogLevel.TRACE: logging.DEBUG,
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARN: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
}


class CapabilityDenied(Exception):
    def __init__(self, capability: str) -> None:
        super().__init__(f"capability {capability!r} not granted")
        self.capability = capability


class CapabilityMisuse(Exception):
    """A granted capability was called with values the host refuses."""


class DatagramSender(Protocol):
    def send(self, target: EgressTarget, payload: bytes) -> bool:
        """Queue a datagram; False if it cannot be queued. Thread-safe."""
        ...


@runtime_checkable
class SharedQueue(Protocol):
    """A sender whose queue is shared by every connection (vmm.egress.UdpEgress): each
    connection sends through its own share of it."""

    def share(self, max_queued: int) -> DatagramSender: ...


@dataclass
class HostCapabilities:
    """The capabilities one connection's sandbox may call."""

    listener: str
    plugin: str
    grants: Grants
    limits: Limits
    kv: KvStore
    egress: DatagramSender | None = None
    metrics: Metrics = METRICS
    metadata: dict[str, str] = field(default_factory=dict)
    attributes: tuple[tuple[str, str], ...] = ()
    """The connection's attributes (name, value as text) that Envoy sent with
    its first message; set by the session before the plugin's first hook."""
    denied: str | None = None
    """The first capability refused on this connection, if any."""
    log_dropped: int = 0
    """Log lines dropped by the per-connection rate limit."""
    egress_dropped: int = 0
    """Datagrams refused over the connection's egress limits or queue share."""
    egress_refused: int = 0
    """Datagrams refused for a target outside the allow list."""
    clock: Callable[[], float] = time.monotonic
    """The egress rate limit's clock (tests pass a still one)."""
    _log_tokens: float = field(default=LOG_BURST_LINES, init=False, repr=False)
    _log_stamp: float | None = field(default=None, init=False, repr=False)
    _egress_meter: EgressMeter | None = field(default=None, init=False, repr=False)
    _egress_sender: DatagramSender | None = field(default=None, init=False, repr=False)

    def check(self, capability: str) -> None:
        """The grant check: once per host call, before the call's arguments."""
        if self.grants.allows(capability):
            return
        if self.denied is None:
            self.denied = capability
        LOG.warning(
            "denied capability listener=%s plugin=%s capability=%s",
            self.listener, self.plugin, capability,
            extra={"listener": self.listener, "plugin": self.plugin, "capability": capability},
        )
        self.metrics.inc(
            "capability_denied_total",
            listener=self.listener, plugin=self.plugin, capability=capability,
        )
        raise CapabilityDenied(capability)

    # The capability methods: called only after check() passed for this call.

    # log -------------------------------------------------------------------
    def log(self, level: int, message: str) -> None:
        try:
            lvl = _LEVELS[LogLevel(level)]
        except ValueError:
            lvl = logging.INFO
        if not self._log_allowed():
            return
        text = message[:MAX_LOG_MESSAGE].translate(_ESCAPE_CONTROLS)
        where = {"listener": self.listener, "plugin": self.plugin}
        PLUGIN_LOG.log(lvl, "[%s/%s] %s", self.listener, self.plugin, text, extra=where)

    def _log_allowed(self) -> bool:
        """Token bucket: LOG_BURST_LINES, refilled at LOG_LINES_PER_SECOND."""
        now = time.monotonic()
        if self._log_stamp is not None:
            refill = (now - self._log_stamp) * LOG_LINES_PER_SECOND
            self._log_tokens = min(float(LOG_BURST_LINES), self._log_tokens + refill)
        self._log_stamp = now
        if self._log_tokens >= 1.0:
            self._log_tokens -= 1.0
            return True
        if self.log_dropped == 0:
            LOG.warning(
                "log rate limit hit listener=%s plugin=%s: dropping lines",
                self.listener, self.plugin,
            )
        self.log_dropped += 1
        self.metrics.inc("log_dropped_total", listener=self.listener, plugin=self.plugin)
        return False

    # clock -----------------------------------------------------------------
    def wall_now(self) -> int:
        return time.time_ns()

    def monotonic_now(self) -> int:
        return time.monotonic_ns()

    # random ----------------------------------------------------------------
    def random_u64(self) -> int:
        return int.from_bytes(os.urandom(8), "little")

    def random_bytes(self, n: int) -> bytes:
        return os.urandom(n)

    # kv --------------------------------------------------------------------
    def kv_get(self, key: str) -> bytes | None:
        return self.kv.get(key)

    def kv_set(self, key: str, value: bytes) -> None:
        try:
            self.kv.set(key, value)
        except KvFull as e:
            raise CapabilityMisuse(f"kv.set: {e}") from e

    def kv_delete(self, key: str) -> None:
        self.kv.delete(key)

    def kv_increment(self, key: str, delta: int) -> int:
        try:
            return self.kv.increment(key, delta)
        except KvFull as e:
            raise CapabilityMisuse(f"kv.increment: {e}") from e

    # metadata --------------------------------------------------------------
    def metadata_set(self, key: str, value: str) -> None:
        if key not in self.metadata and len(self.metadata) >= MAX_METADATA_ENTRIES:
            raise CapabilityMisuse(f"more than {MAX_METADATA_ENTRIES} metadata keys")
        # Characters first (never more than the bytes): a huge value is refused unencoded.
        if len(key) + len(value) > MAX_METADATA_BYTES or metadata_bytes(key, value) > MAX_METADATA_BYTES:
            raise CapabilityMisuse(f"metadata entry over {MAX_METADATA_BYTES} bytes")
        self.metadata[key] = value

    def take_metadata(self) -> dict[str, str]:
        """Metadata set since the last call (the session sends it to Envoy)."""
        taken, self.metadata = self.metadata, {}
        return taken

    # connection ------------------------------------------------------------
    def connection_attributes(self) -> tuple[tuple[str, str], ...]:
        return self.attributes

    # egress ----------------------------------------------------------------
    def send_datagram(self, host: str, port: int, payload: bytes) -> SendError | None:
        target = EgressTarget(host, port)
        if target not in self.grants.egress_allow:  # its hosts are at most MAX_EGRESS_HOST_BYTES
            return self._egress_refused(host, port)
        if len(payload) > self.limits.max_datagram_bytes:
            return SendError.TOO_LARGE
        if self.egress is None:
            return SendError.UNREACHABLE
        if self._egress_meter is None:
            self._egress_meter = EgressMeter(self.limits.egress, self.clock)
            share = self.egress.share if isinstance(self.egress, SharedQueue) else None
            self._egress_sender = self.egress if share is None else share(self.limits.egress.max_queued)
        if not self._egress_meter.allow(len(payload)):
            return self._egress_drop("rate", "over its egress_limits")
        assert self._egress_sender is not None
        if not self._egress_sender.send(target, payload):
            return self._egress_drop("queue", "its share of the egress queue (or the queue) is full")
        self.metrics.inc("egress_datagrams_total", listener=self.listener, plugin=self.plugin)
        return None

    def _egress_refused(self, host: str, port: int) -> SendError:
        """Outside the allow list: `denied` to the plugin; logged once a connection, with
        the host escaped and cut short (it is the plugin's text: it must neither forge a
        log record nor flood the log), always counted."""
        if self.egress_refused == 0:
            shown = host[:SHOWN_HOST_CHARS].translate(_ESCAPE_CONTROLS)
            more = f"... ({len(host)} characters)" if len(host) > SHOWN_HOST_CHARS else ""
            LOG.warning(
                "egress refused listener=%s plugin=%s target=%s%s:%d (not in allow list; "
                "further refusals only counted)",
                self.listener, self.plugin, shown, more, port,
            )
        self.egress_refused += 1
        self.metrics.inc("egress_refused_total", listener=self.listener, plugin=self.plugin)
        return SendError.DENIED

    def _egress_drop(self, reason: str, why: str) -> SendError:
        """Refused by a limit: `unreachable` to the plugin, like a lost datagram; logged once a
        connection (a plugin in a loop must not flood the log), always counted."""
        if self.egress_dropped == 0:
            LOG.warning(
                "egress dropped listener=%s plugin=%s: %s (further drops only counted)",
                self.listener, self.plugin, why,
            )
        self.egress_dropped += 1
        self.metrics.inc("egress_dropped_total", listener=self.listener, plugin=self.plugin, reason=reason)
        return SendError.UNREACHABLE


def metadata_bytes(key: str, value: str) -> int:
    """What a metadata entry counts against MAX_METADATA_BYTES: its UTF-8 bytes."""
    return len(key.encode("utf-8", "surrogatepass")) + len(value.encode("utf-8", "surrogatepass"))
