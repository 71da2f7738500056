"""Helpers for the tier differential test (test_differential.py).

A connection is run through one tier and turned into a Trace: per step the
verdict (kind and bytes) or the fault kind, and the host calls the plugin
made during that step, as a RecordingHost saw them. Two tiers agree when
their traces, their kv contents, metadata and sent datagrams are equal.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vmm.capabilities import HostCapabilities
from vmm.contract import DataEvent, Direction, SendError
from vmm.kvstore import KvStore
from vmm.policy import SandboxSpec
from vmm.sandbox import FaultKind, PluginFault, SandboxFactory


@contextlib.asynccontextmanager
async def http_in_both_tiers(specs: Mapping[str, SandboxSpec]) -> AsyncIterator[dict[tuple[str, str], Any]]:
    """Each named http-filter plugin loaded once per tier: {(tier, name): factory}, all closed
    at the end (also when a later load fails)."""
    import vmm.wasmtime_tier as wt
    from vmm.microvm.tier import load_http

    out: dict[tuple[str, str], Any] = {}
    try:
        for name, spec in specs.items():
            out["microvm", name] = await load_http(spec, pool_size=1)
            out["wasmtime", name] = await wt.load_http(spec)
        yield out
    finally:
        for factory in out.values():
            await factory.aclose()


HostCall = tuple[str, tuple[object, ...], object]
"""(method, arguments, result). Clock and random results are not kept: their
values differ between any two runs by nature, only the calls are compared."""

_NO_RESULT = "-"


class ObservedKv(KvStore):
    """A KvStore whose whole contents a test can read back."""

    def contents(self) -> dict[str, bytes]:
        with self._lock:
            return dict(self._data)


@dataclass
class RecordingHost(HostCapabilities):
    """HostCapabilities that logs each capability call before delegating.

    A granted call is logged as (method, args, result); a refused one as
    ("denied", (capability,), "-") by check(), which every tier calls once
    per host call before the method (the methods do not check): a method
    called without its grant is a tier bug and fails the test.
    """

    calls: list[HostCall] = field(default_factory=list)

    def check(self, capability: str) -> None:
        if not self.grants.allows(capability):
            self.calls.append(("denied", (capability,), _NO_RESULT))
        super().check(capability)

    def _call(self, capability: str, method: str, args: tuple[object, ...],
              run: Callable[[], object], keep_result: bool = True) -> object:
        if not self.grants.allows(capability):
            raise AssertionError(f"{method} called without the {capability!r} grant")
        self.calls.append((method, args, _NO_RESULT))  # logged before the host acts
        index = len(self.calls) - 1
        result = run()
        if keep_result:
            self.calls[index] = (method, args, result)
        return result

    def log(self, level: int, message: str) -> None:
        self._call("log", "log", (level, message), lambda: super(RecordingHost, self).log(level, message))

    def wall_now(self) -> int:
        r = self._call("clock", "wall_now", (), super().wall_now, keep_result=False)
        assert isinstance(r, int)
        return r

    def monotonic_now(self) -> int:
        r = self._call("clock", "monotonic_now", (), super().monotonic_now, keep_result=False)
        assert isinstance(r, int)
        return r

    def random_u64(self) -> int:
        r = self._call("random", "random_u64", (), super().random_u64, keep_result=False)
        assert isinstance(r, int)
        return r

    def random_bytes(self, n: int) -> bytes:
        r = self._call("random", "random_bytes", (n,), lambda: super(RecordingHost, self).random_bytes(n),
                       keep_result=False)
        assert isinstance(r, bytes)
        return r

    def kv_get(self, key: str) -> bytes | None:
        r = self._call("kv", "kv_get", (key,), lambda: super(RecordingHost, self).kv_get(key))
        assert r is None or isinstance(r, bytes)
        return r

    def kv_set(self, key: str, value: bytes) -> None:
        self._call("kv", "kv_set", (key, bytes(value)),
                   lambda: super(RecordingHost, self).kv_set(key, value))

    def kv_delete(self, key: str) -> None:
        self._call("kv", "kv_delete", (key,), lambda: super(RecordingHost, self).kv_delete(key))

    def kv_increment(self, key: str, delta: int) -> int:
        r = self._call("kv", "kv_increment", (key, delta),
                       lambda: super(RecordingHost, self).kv_increment(key, delta))
        assert isinstance(r, int)
        return r

    def metadata_set(self, key: str, value: str) -> None:
        self._call("metadata", "metadata_set", (key, value),
                   lambda: super(RecordingHost, self).metadata_set(key, value))

    def send_datagram(self, host: str, port: int, payload: bytes) -> SendError | None:
        r = self._call("egress", "send_datagram", (host, port, bytes(payload)),
                       lambda: super(RecordingHost, self).send_datagram(host, port, payload))
        assert r is None or isinstance(r, SendError)
        return r

    def connection_attributes(self) -> tuple[tuple[str, str], ...]:
        r = self._call("connection", "connection_attributes", (), super().connection_attributes)
        assert isinstance(r, tuple)
        return r


# --- byte streams ---------------------------------------------------------------

MAX_CHUNK = 64 * 1024
MARKERS = (b"!close", b"!reset")


def _chunk_size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.1:
        return 0
    if roll < 0.15:
        return MAX_CHUNK
    if roll < 0.6:
        return rng.randint(1, 2048)  # around the datagram limit (1400) too
    return rng.randint(1, MAX_CHUNK)


def _chunk_bytes(rng: random.Random, n: int, markers: bool) -> bytes:
    style = rng.randrange(3)
    if style == 0:  # any bytes at all
        data = bytearray(rng.randbytes(n))
    elif style == 1:  # ASCII letters and punctuation (the text ops change them)
        data = bytearray(rng.choice(b"abcXYZ !?-09\n\r\t") for _ in range(n))
    else:  # UTF-8 with non-ASCII text, cut at n bytes (maybe mid-character)
        text = "".join(rng.choice("aZé€𝄞ßЖ中 \n!") for _ in range(n))
        data = bytearray(text.encode()[:n])
    if markers and n >= 8 and rng.random() < 0.08:
        marker = rng.choice(MARKERS)
        at = rng.randrange(n - len(marker) + 1)
        data[at:at + len(marker)] = marker
    return bytes(data)


def byte_stream(seed: int, events: int = 14, markers: bool = True) -> list[DataEvent]:
    """A seeded connection: chunks of 0..64 KiB in both directions, each
    direction ending with an end-of-stream event (empty or not) and carrying
    nothing after it. `markers` sometimes plants !close / !reset."""
    rng = random.Random(seed)
    out: list[DataEvent] = []
    open_dirs = [Direction.READ, Direction.WRITE]
    for i in range(events):
        if not open_dirs:
            break
        direction = rng.choice(open_dirs)
        left = events - i
        # a direction may end early, but the last one open runs to the end
        eos = left <= len(open_dirs) or (len(open_dirs) == 2 and i >= 2 and rng.random() < 0.05)
        n = 0 if eos and rng.random() < 0.5 else _chunk_size(rng)
        # no marker in the first chunks: a connection closed at once tests little
        out.append(DataEvent(direction, _chunk_bytes(rng, n, markers and i >= 3), eos))
        if eos:
            open_dirs.remove(direction)
    return out


def describe(events: list[DataEvent], upto: int) -> str:
    """The events up to index `upto` in a line each (a reproduction recipe)."""
    lines = []
    for i, e in enumerate(events[:upto + 1]):
        lines.append(f"  [{i}] {e.direction.name} len={len(e.data)} eos={e.end_of_stream} "
                     f"data[:40]={e.data[:40]!r}")
    return "\n".join(lines)


# --- running one connection ----------------------------------------------------

Outcome = tuple[str, object, bytes]
"""("verdict", VerdictKind name, bytes) / ("fault", FaultKind, b"") / ("closed", None, b"")."""


@dataclass
class Step:
    outcome: Outcome
    calls: list[HostCall]


@dataclass
class Trace:
    steps: list[Step]
    metadata: dict[str, str]

    def fault(self) -> tuple[int, FaultKind] | None:
        for i, s in enumerate(self.steps):
            if s.outcome[0] == "fault":
                kind = s.outcome[1]
                assert isinstance(kind, FaultKind)
                return i, kind
        return None


Masks = tuple[tuple[re.Pattern[str], str], ...]


def _mask_text(text: str, masks: Masks) -> str:
    for pattern, repl in masks:
        text = pattern.sub(repl, text)
    return text


def _mask_call(call: HostCall, masks: Masks) -> HostCall:
    method, args, result = call
    if not masks:
        return call
    return method, tuple(_mask_text(a, masks) if isinstance(a, str) else a for a in args), result


def _mask_bytes(data: bytes, masks: Masks) -> bytes:
    if not masks:
        return data
    return _mask_text(data.decode("latin-1"), masks).encode("latin-1")


async def run_connection(factory: SandboxFactory, host: RecordingHost, listener: str, config: str,
                         events: list[DataEvent], masks: Masks = ()) -> Trace:
    """Open, feed `events` until the first close/reset verdict or fault, close.

    Step 0 is on-open together with the first event: the micro-VM tier runs a
    deferred on-open in the same hop as the next call and raises its fault
    there (vmm/microvm/tier.py), which the session handles the same way, so
    "the same event" for an on-open fault means this first step. The last
    step is close().
    """
    steps: list[Step] = []
    sandbox = await factory.new_sandbox(host)

    def done(outcome: Outcome) -> None:
        calls = [_mask_call(c, masks) for c in host.calls]
        host.calls.clear()
        steps.append(Step(outcome, calls))

    try:
        try:
            await sandbox.open(listener, config)
            for event in events:
                verdict = await sandbox.on_data(event)
                done(("verdict", verdict.kind.name, _mask_bytes(verdict.data, masks)))
                if verdict.kind.name in ("CLOSE", "RESET"):
                    break
        except PluginFault as fault:
            done(("fault", fault.kind, b""))
    finally:
        await sandbox.close()
    done(("closed", None, b""))
    return Trace(steps, host.take_metadata())


def first_difference(a: Trace, b: Trace) -> int | None:
    for i in range(max(len(a.steps), len(b.steps))):
        sa = a.steps[i] if i < len(a.steps) else None
        sb = b.steps[i] if i < len(b.steps) else None
        if sa != sb:
            return i
    return None


def show_step(trace: Trace, i: int) -> str:
    if i >= len(trace.steps):
        return "(no such step)"
    s = trace.steps[i]
    kind, what, data = s.outcome
    return f"{kind} {what} len={len(data)} data[:60]={data[:60]!r} calls={s.calls[:6]!r}"
