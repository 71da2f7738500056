"""Per-connection egress limits: the policy's `egress_limits`, the token buckets in
vmm.capabilities, and each connection's share of the process's one egress queue.

Rates are tested with a still clock (a test never depends on how fast it runs);
the queue share with a real UdpEgress and a real UDP socket receiving.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncio_dgram
import pytest
from _host_fakes import Sent

from extproc.config import ConfigError, load_config
from extproc.harness import ListenerSpec, render_bootstrap, write_config
from vmm.capabilities import HostCapabilities
from vmm.contract import DataEvent, Direction, SendError
from vmm.egress import MAX_PENDING, UdpEgress
from vmm.egress_meter import EgressMeter
from vmm.kvstore import KvStore
from vmm.metrics import Metrics
from vmm.policy import EgressLimits, EgressTarget, Grants, Limits, SandboxSpec

IO_TIMEOUT = 30.0
TARGET = EgressTarget("127.0.0.1", 9125)


class StillClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def host(
    name: str, egress: Any, limits: EgressLimits, clock: StillClock, metrics: Metrics,
    target: EgressTarget = TARGET,
) -> HostCapabilities:  # fmt: skip
    return HostCapabilities(
        name, "probe", Grants(frozenset({"egress"}), frozenset({target})), Limits(egress=limits),
        KvStore(1, 1), egress, metrics, clock=clock,
    )  # fmt: skip


# ----------------------------------------------------------------------------- the policy


def _config(tmp_path: Path, plugin: Path, **policy: Any) -> Path:
    base: dict[str, Any] = {"plugin": str(plugin), "grants": ["egress"], "egress_allow": ["127.0.0.1:9125"]}
    spec = ListenerSpec("edge", 9, {**base, **policy})
    return write_config(render_bootstrap([spec], tmp_path / "lc.sock"), tmp_path / "envoy.yaml")


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    path = tmp_path / "p.wasm"
    path.write_bytes(b"\0asm\1\0\0\0")  # the config reads the path only
    return path


def test_defaults_and_values(tmp_path: Path, plugin: Path) -> None:
    default = load_config(_config(tmp_path, plugin)).listeners["edge"].spec.limits.egress
    assert default == EgressLimits()
    given = {"datagrams_per_second": 5, "bytes_per_second": 2000, "max_queued": 3}
    limits = load_config(_config(tmp_path, plugin, egress_limits=given)).listeners["edge"].spec.limits
    assert limits.egress == EgressLimits(5, 2000, 3)
    partial = load_config(_config(tmp_path, plugin, egress_limits={"max_queued": 7})).listeners["edge"]
    assert partial.spec.limits.egress == EgressLimits(max_queued=7)


BAD: dict[str, tuple[dict[str, Any], list[str]]] = {
    "not_a_mapping": ({"egress_limits": 5}, ["egress_limits", "expected a mapping"]),
    "unknown_key": ({"egress_limits": {"dps": 5}}, ["egress_limits", "unknown key 'dps'", "known:"]),
    "zero_rate": (
        {"egress_limits": {"datagrams_per_second": 0}},
        ["egress_limits.datagrams_per_second", "from 1 to 100000", "got 0"],
    ),
    "bytes_under_one_datagram": (
        {"egress_limits": {"bytes_per_second": 1399}},
        ["egress_limits.bytes_per_second", "from 1400"],
    ),
    "bool": ({"egress_limits": {"max_queued": True}}, ["egress_limits.max_queued", "got True"]),
    "over_the_queue": (
        {"egress_limits": {"max_queued": MAX_PENDING + 1}},
        ["egress_limits.max_queued", f"from 1 to {MAX_PENDING}"],
    ),
    "without_grant": (
        {"grants": [], "egress_allow": [], "egress_limits": {"max_queued": 2}},
        ["egress_limits", "grants does not include egress"],
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_egress_limits_name_listener_and_field(tmp_path: Path, plugin: Path, case: str) -> None:
    changes, fragments = BAD[case]
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, plugin, **changes))
    message = str(info.value)
    assert "listener 'edge'" in message and "metadata.filter_metadata.lightcell." in message
    for fragment in fragments:
        assert fragment in message, message


# ----------------------------------------------------------------------------- the rate


def test_meter_buckets_hold_one_second() -> None:
    clock = StillClock()
    meter = EgressMeter(EgressLimits(datagrams_per_second=3, bytes_per_second=2000), clock)
    assert [meter.allow(10) for _ in range(4)] == [True, True, True, False]
    clock.now += 1 / 3  # one datagram's worth
    assert meter.allow(10) and not meter.allow(10)
    clock.now += 10.0  # refills to one second's worth, no more
    assert [meter.allow(1) for _ in range(4)] == [True, True, True, False]
    clock.now += 10.0
    assert meter.allow(1400) and not meter.allow(601)  # bytes: 2000 - 1400 left
    assert meter.allow(600)


def test_one_connection_at_its_rate_does_not_affect_another() -> None:
    clock, metrics, sent = StillClock(), Metrics(), Sent()
    limits = EgressLimits(datagrams_per_second=2, bytes_per_second=4096)
    busy, quiet = host("busy", sent, limits, clock, metrics), host("quiet", sent, limits, clock, metrics)
    assert [busy.send_datagram("127.0.0.1", 9125, b"b") for _ in range(5)] == [None, None] + [
        SendError.UNREACHABLE
    ] * 3
    assert busy.egress_dropped == 3
    assert metrics.get("egress_dropped_total", listener="busy", reason="rate") == 3
    # The other connection still has its whole second's worth.
    assert [quiet.send_datagram("127.0.0.1", 9125, b"q") for _ in range(2)] == [None, None]
    assert metrics.get("egress_dropped_total", listener="quiet") == 0
    assert [p for _, p in sent.datagrams] == [b"b", b"b", b"q", b"q"]
    assert metrics.get("egress_datagrams_total", listener="busy") == 2


def test_bytes_per_second_limits_too() -> None:
    clock, metrics, sent = StillClock(), Metrics(), Sent()
    h = host("big", sent, EgressLimits(datagrams_per_second=100, bytes_per_second=3000), clock, metrics)
    results = [h.send_datagram("127.0.0.1", 9125, b"x" * 1400) for _ in range(3)]
    assert results == [None, None, SendError.UNREACHABLE]
    assert h.send_datagram("127.0.0.1", 9125, b"x" * 200) is None  # what is left still goes
    # Refused checks come first and cost nothing: not allowed, too large.
    assert h.send_datagram("127.0.0.1", 9999, b"x") is SendError.DENIED
    assert h.send_datagram("127.0.0.1", 9125, b"x" * 1401) is SendError.TOO_LARGE
    assert metrics.get("egress_dropped_total", reason="rate") == 1


# ----------------------------------------------------------------------------- the queue share


@pytest.fixture
async def sink() -> AsyncIterator[asyncio_dgram.aio.DatagramServer]:
    server = await asyncio_dgram.bind(("127.0.0.1", 0))
    yield server
    server.close()


async def test_a_full_share_does_not_block_another_connection(
    sink: asyncio_dgram.aio.DatagramServer,
) -> None:
    target = EgressTarget("127.0.0.1", int(sink.sockname[1]))
    clock, metrics = StillClock(), Metrics()
    egress = UdpEgress(max_pending=8)
    await egress.start()
    try:
        limits = EgressLimits(max_queued=3)
        flood = host("flood", egress, limits, clock, metrics, target)
        calm = host("calm", egress, limits, clock, metrics, target)
        # No await in between: the loop cannot drain, so the queue only fills.
        flooded = [flood.send_datagram(target.host, target.port, b"f%d" % i) for i in range(6)]
        assert flooded == [None] * 3 + [SendError.UNREACHABLE] * 3
        assert metrics.get("egress_dropped_total", listener="flood", reason="queue") == 3
        assert [calm.send_datagram(target.host, target.port, b"c%d" % i) for i in range(3)] == [None] * 3
        got = {(await asyncio.wait_for(sink.recv(), IO_TIMEOUT))[0] for _ in range(6)}
        assert got == {b"f0", b"f1", b"f2", b"c0", b"c1", b"c2"}
        # Sent datagrams give their places back: the flooding connection may send again.
        assert flood.send_datagram(target.host, target.port, b"again") is None
        assert (await asyncio.wait_for(sink.recv(), IO_TIMEOUT))[0] == b"again"
    finally:
        await egress.aclose()


async def test_the_global_queue_still_bounds_everyone(sink: asyncio_dgram.aio.DatagramServer) -> None:
    target = EgressTarget("127.0.0.1", int(sink.sockname[1]))
    clock, metrics = StillClock(), Metrics()
    egress = UdpEgress(max_pending=4)
    await egress.start()
    try:
        hosts = [host(f"c{i}", egress, EgressLimits(max_queued=3), clock, metrics, target) for i in range(3)]
        results = [h.send_datagram(target.host, target.port, b"x") for h in hosts for _ in range(2)]
        assert results.count(None) == 4 and results.count(SendError.UNREACHABLE) == 2
        share = egress.share(2)
        await egress.aclose()  # queued datagrams never sent give their places back
        assert share.queued == 0 and all(h._egress_sender.queued == 0 for h in hosts)  # type: ignore[union-attr]
    finally:
        await egress.aclose()


# ----------------------------------------------------------------------------- through the tiers


def _probe_spec(plugin: Path, port: int) -> SandboxSpec:
    target = EgressTarget("127.0.0.1", port)
    return SandboxSpec(
        "edge", str(plugin), Grants(frozenset({"egress"}), frozenset({target})),
        Limits(egress=EgressLimits(datagrams_per_second=2)), plugin_config=f"call=egress:127.0.0.1:{port}",
    )  # fmt: skip


@pytest.mark.parametrize("tier", ["wasmtime", pytest.param("microvm", marks=pytest.mark.kvm)])
async def test_the_plugin_sees_unreachable_over_its_rate(
    tier: str, built_plugins: dict[str, Path], tmp_path: Path
) -> None:
    spec = _probe_spec(built_plugins["probe"], 9125)
    if tier == "wasmtime":
        from vmm import wasmtime_tier

        factory: Any = await wasmtime_tier.load(spec, tmp_path / "cache")
    else:
        from vmm.microvm import tier as microvm

        factory = await microvm.load(spec, pool_size=2)
    try:
        clock, metrics, sent = StillClock(), Metrics(), Sent()
        replies = []
        for name in ("first", "second"):
            h = HostCapabilities(
                name, "probe", spec.grants, spec.limits, KvStore(1, 1), sent, metrics, clock=clock
            )
            sandbox = await factory.new_sandbox(h)
            await sandbox.open("edge", spec.plugin_config)
            for _ in range(3):
                replies.append((await sandbox.on_data(DataEvent(Direction.READ, b"d", False))).data)
            await sandbox.close()
        # err2: `unreachable`. Each connection has its own two a second.
        assert replies == [b"egress=ok\n", b"egress=ok\n", b"egress=err2\n"] * 2
        assert metrics.get("egress_dropped_total", reason="rate") == 2
        assert len(sent.datagrams) == 4
    finally:
        await factory.aclose()
