"""Same behaviour, proven: the example plugins, fed the same seeded byte streams
through the wasmtime tier and the micro-VM tier, must give identical verdicts
and output bytes per event, identical fault kinds at the same event, identical
host calls (method and arguments, in order; results too except clock/random
values), and leave identical kv contents, metadata and datagrams.

Streams (tests/_differential.py): chunks of 0..64 KiB in both directions,
random bytes, ASCII and non-ASCII UTF-8 (cut mid-character too), planted
!close/!reset, end-of-stream per direction. Each connection stops at a
close/reset verdict or a fault, as a session does.

Known differences between the tiers found by the security review (the
micro-VM guest decodes an invalid UTF-8 log message with replacement where
wasmtime faults ABI; it truncates an egress port to u16 before the allow-list
check where wasmtime faults ABI) cannot arise from these plugins: probe logs
a constant ASCII message and refuses ports over 65535 in on-open itself, and
wasi-log's lines are formatted ASCII. They are covered by the hostile-plugin
fuzzers (test_fuzz_*_boundary.py), not here.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import wasmtime
from _differential import (
    MAX_CHUNK,
    Masks,
    ObservedKv,
    RecordingHost,
    Trace,
    byte_stream,
    describe,
    first_difference,
    run_connection,
    show_step,
)
from _host_fakes import Sent

from vmm import wasmtime_tier
from vmm.contract import MAX_OUTPUT_BYTES, DataEvent, Direction
from vmm.metrics import Metrics
from vmm.microvm import tier as microvm_tier
from vmm.policy import CAPABILITIES, EgressTarget, Grants, Limits, SandboxSpec
from vmm.sandbox import FaultKind, PluginFault, SandboxFactory

pytestmark = pytest.mark.kvm

LISTENER = "diff"
ALLOWED = EgressTarget("127.0.0.1", 9125)
SEEDS = (11, 2026, 7)
TIERS = ("wasmtime", "microvm")

# Generous budgets where no loop is meant (a shared 2-core machine must not
# turn a busy moment into a BUDGET fault in one tier only); 20 ms for loops.
LIMITS = {
    "rewrite": Limits(event_cpu_ms=2000),
    "probe": Limits(event_cpu_ms=2000),
    "faulty": Limits(memory_bytes=4 << 20, event_cpu_ms=2000),
    "faulty-loop": Limits(memory_bytes=4 << 20, event_cpu_ms=20),
    "faulty-big": Limits(memory_bytes=16 << 20, event_cpu_ms=5000),  # room for MAX_OUTPUT_BYTES
    "wasi-log": Limits(event_cpu_ms=2000),
    # componentize-py (CPython): compiled whole for the micro-VM (component_glue)
    "counter": Limits(event_cpu_ms=5000),
}

# What a session hands a connection's sandbox (extproc/tcp_protocol.attributes_of): sorted,
# UTF-8 text, empty values too; probe call=attributes lists them.
ATTRIBUTES = (
    ("connection.requested_server_name", ""),
    ("destination.address", "[::1]:10000"),
    ("source.address", "127.0.0.1:41732"),
    ("xds.filter_chain_name", "chaîne €𝄞 " + "x" * 2000),
)

CLOCK: Masks = ((re.compile(r"clock=\d+"), "clock=N"),)
RANDOM: Masks = ((re.compile(r"random=[0-9a-f]{16}"), "random=X"),)
WASI_T: Masks = ((re.compile(r" t=\d+"), " t=N"),)
TOUCH: Masks = ((re.compile(r"touch=[0-9a-f]+"), "touch=X"),)


@dataclass(frozen=True)
class Case:
    plugin: str  # a key of LIMITS: which loaded factory
    config: str
    grants: frozenset[str] = frozenset()
    fault: FaultKind | None = None  # what both tiers must show (so agreement is not vacuous)
    masks: Masks = field(default=(), compare=False)
    unrecorded: frozenset[str] = field(default=frozenset(), compare=False)
    """Host calls left out of both traces: see the touch=monotonic case."""

    @property
    def id(self) -> str:
        g = "+".join(sorted(self.grants)) or "none"
        return f"{self.plugin}[{self.config or 'default'}|{g}]"


OPS = ("pass", "upper", "lower", "rot13", "drop", "number")
CASES: list[Case] = [
    # every op in each direction; markers give close/reset verdicts
    *(Case("rewrite", f"read={OPS[i]},write={OPS[(i + 2) % 6]}") for i in range(6)),
    Case("rewrite", ""),
    Case("rewrite", "read=number"),
    Case("rewrite", "read=shout", fault=FaultKind.TRAP),  # bad config traps in on-open
    # each capability granted alone, and denied with all the others granted
    *(Case("probe", f"call={cap}", frozenset({cap}),
           masks={"clock": CLOCK, "random": RANDOM}.get(cap, ()))
      for cap in sorted(CAPABILITIES)),
    *(Case("probe", f"call={cap}", CAPABILITIES - {cap}, fault=FaultKind.DENIED)
      for cap in sorted(CAPABILITIES)),
    Case("probe", "call=egress:127.0.0.1:9999", frozenset({"egress"})),  # not allow-listed: err0
    Case("probe", "call=none"),
    Case("probe", "call=teleport", fault=FaultKind.TRAP),
    Case("probe", "call=egress:127.0.0.1:70000", frozenset({"egress"}), fault=FaultKind.TRAP),
    Case("faulty", "mode=ok"),
    Case("faulty", "mode=trap", fault=FaultKind.TRAP),
    Case("faulty", "mode=trap;after=3", fault=FaultKind.TRAP),
    Case("faulty", "mode=grow;after=2", fault=FaultKind.MEMORY),  # the cap, then unreachable
    Case("faulty", "mode=explode", fault=FaultKind.TRAP),
    Case("faulty-loop", "mode=loop;after=2", fault=FaultKind.BUDGET),
    Case("wasi-log", "", frozenset({"log", "clock"}), masks=WASI_T),
    Case("wasi-log", "", frozenset({"log"}), fault=FaultKind.DENIED),
    Case("wasi-log", "", frozenset({"clock"}), fault=FaultKind.DENIED),
    Case("wasi-log", "", frozenset(), fault=FaultKind.DENIED),
    # Python: kv at open, per-connection state in module globals, WASI 0.2 by grant
    Case("counter", "", frozenset({"kv"})),
    Case("counter", "", frozenset(), fault=FaultKind.DENIED),
    # granted WASI 0.2 reads reach the host's clock/random in both tiers (and are recorded);
    # with `random` CPython's start-up reseed of `random` is real randomness, recorded too
    Case("counter", "touch=clock", frozenset({"kv", "clock"}), masks=TOUCH),
    Case("counter", "touch=random", frozenset({"kv", "random"}), masks=TOUCH),
    # wasmtime serves a granted monotonic clock itself (vmm/wasmtime_tier/_component_wasi.py:
    # wasmtime-py cannot shadow an interface with pollables), so only the micro-VM's host sees it
    Case("counter", "touch=monotonic", frozenset({"kv", "clock"}), masks=TOUCH,
         unrecorded=frozenset({"monotonic_now"})),
    Case("counter", "touch=clock", frozenset({"kv"}), fault=FaultKind.DENIED),
    Case("counter", "touch=monotonic", frozenset({"kv"}), fault=FaultKind.DENIED),
    Case("counter", "touch=random", frozenset({"kv"}), fault=FaultKind.DENIED),
    Case("counter", "touch=teleport", frozenset({"kv"}), fault=FaultKind.TRAP),  # a Python exception
]


@dataclass
class TierRun:
    """One tier's loaded plugins and the state its connections share."""

    factories: dict[str, SandboxFactory]
    kv: ObservedKv = field(default_factory=lambda: ObservedKv(1000, 64 * 1024))
    sent: Sent = field(default_factory=Sent)


async def _load(tier: str, name: str, path: Path) -> SandboxFactory:
    # plugin_config "" (a benign config): the micro-VM pool rehearses on-open
    # and a first chunk with it while warming VMs.
    spec = SandboxSpec(LISTENER, str(path), Grants(CAPABILITIES, frozenset({ALLOWED})), LIMITS[name], "")
    if tier == "wasmtime":
        return await wasmtime_tier.load(spec)
    return await microvm_tier.load(spec, pool_size=2)


@pytest.fixture(scope="module")
async def runs(built_plugins: dict[str, Path]) -> AsyncIterator[dict[str, TierRun]]:
    out: dict[str, TierRun] = {}
    try:
        for tier in TIERS:
            out[tier] = TierRun({})
            for name in LIMITS:
                plugin = name.removesuffix("-loop").removesuffix("-big")
                out[tier].factories[name] = await _load(tier, name, built_plugins[plugin])
        yield out
    finally:
        for run in out.values():
            for f in run.factories.values():
                await f.aclose()


def _events(case: Case, seed: int) -> list[DataEvent]:
    """The case's own stream for `seed` (each case sees different streams)."""
    return byte_stream(zlib.crc32(case.id.encode()) ^ seed, markers=case.plugin == "rewrite")


async def _trace(run: TierRun, case: Case, seed: int) -> Trace:
    limits = LIMITS[case.plugin]
    host = RecordingHost(LISTENER, case.plugin, Grants(case.grants, frozenset({ALLOWED})), limits,
                         run.kv, run.sent, attributes=ATTRIBUTES)
    events = _events(case, seed)
    trace = await run_connection(run.factories[case.plugin], host, LISTENER, case.config, events,
                                 case.masks)
    for step in trace.steps:
        step.calls = [c for c in step.calls if c[0] not in case.unrecorded]
    return trace


def test_the_streams_cover_what_they_claim() -> None:
    """Guards the inputs' coverage if seeds or generator change."""
    events = [e for c in CASES for s in SEEDS for e in _events(c, s)]
    rewrite = [e.data for c in CASES if c.plugin == "rewrite" for s in SEEDS for e in _events(c, s)]
    assert any(b"!close" in d for d in rewrite) and any(b"!reset" in d for d in rewrite)
    sizes = [len(e.data) for e in events]
    assert 0 in sizes and MAX_CHUNK in sizes and any(1400 < n < MAX_CHUNK for n in sizes)
    assert any(e.end_of_stream and e.data for e in events)
    assert any(e.end_of_stream and not e.data for e in events)
    assert {e.direction for e in events} == set(Direction)
    assert any(ord(c) > 127 for e in events for c in e.data.decode("utf-8", "ignore"))
    assert any(not _is_utf8(e.data) for e in events)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


async def test_both_tiers_report_the_same_imports(runs: dict[str, TierRun]) -> None:
    for name in LIMITS:
        assert runs["wasmtime"].factories[name].imports == runs["microvm"].factories[name].imports, name
        assert runs["microvm"].factories[name].tier == "microvm"
        assert runs["wasmtime"].factories[name].tier == "wasmtime"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_same_behaviour(runs: dict[str, TierRun], case: Case) -> None:
    for seed in SEEDS:
        traces = {tier: await _trace(runs[tier], case, seed) for tier in TIERS}
        a, b = traces["wasmtime"], traces["microvm"]
        at = first_difference(a, b)
        where = f"{case.id} seed={seed}"
        if at is not None:
            events = _events(case, seed)
            pytest.fail(
                f"{where}: tiers differ at step {at} (step 0 = on-open + event 0)\n"
                f"  wasmtime: {show_step(a, at)}\n  microvm:  {show_step(b, at)}\n"
                f"events:\n{describe(events, at)}"
            )
        assert a.metadata == b.metadata, where
        for tier, trace in traces.items():
            fault = trace.fault()
            assert (fault[1] if fault else None) is case.fault, f"{where} {tier}: {fault}"
            assert trace.steps[-1].outcome[0] == "closed"
        if case.fault is None:  # the stream was really exercised, not cut short
            assert len(a.steps) > 2, where
    # shared per tier across every connection so far
    assert runs["wasmtime"].kv.contents() == runs["microvm"].kv.contents(), case.id
    assert runs["wasmtime"].sent.datagrams == runs["microvm"].sent.datagrams, case.id


@pytest.mark.parametrize(("touch", "grant", "call"), [
    ("clock", "clock", ("wall_now", (), "-")),
    ("random", "random", ("random_bytes", (8,), "-")),
    ("monotonic", "clock", ("monotonic_now", (), "-")),
])  # fmt: skip
async def test_a_granted_wasi_read_is_a_host_call(runs: dict[str, TierRun], touch: str, grant: str,
                                                  call: tuple[object, ...]) -> None:
    """What the differential agrees on is there: a Python plugin's WASI 0.2 read under its
    grant reaches the host once per read (os.urandom(8) one random_bytes(8)), in both tiers
    but for the monotonic clock, which wasmtime serves itself."""
    for tier in TIERS:
        host = RecordingHost(LISTENER, "counter", Grants(frozenset({"kv", grant})), LIMITS["counter"],
                             runs[tier].kv)
        events = [DataEvent(Direction.WRITE, b"x", False)] * 2
        factory = runs[tier].factories["counter"]
        trace = await run_connection(factory, host, LISTENER, f"touch={touch}", events)
        expected = [] if (tier, touch) == ("wasmtime", "monotonic") else [call]
        assert [c for c in trace.steps[1].calls if c[0] == call[0]] == expected, tier
        assert trace.steps[1].outcome[2].startswith(b"touch="), tier


@pytest.mark.parametrize("attributes", [ATTRIBUTES, ()], ids=["some", "none"])
async def test_probe_lists_the_connection_attributes_in_both_tiers(
    runs: dict[str, TierRun], attributes: tuple[tuple[str, str], ...]
) -> None:
    """The differential shows the tiers agree; this shows what they agree on is right."""
    expected = f"attributes={len(attributes)}\n" + "".join(f"{n}={v}\n" for n, v in attributes)
    for tier in TIERS:
        for call in ("attributes", "connection"):
            host = RecordingHost(LISTENER, "probe", Grants(frozenset({"connection"})), LIMITS["probe"],
                                 runs[tier].kv, attributes=attributes)
            trace = await run_connection(runs[tier].factories["probe"], host, LISTENER, f"call={call}",
                                         [DataEvent(Direction.READ, b"x", False)] * 2)
            for step in trace.steps[:2]:  # the same list on every call
                assert step.outcome == ("verdict", "REPLACE", expected.encode()), (tier, call)
                assert step.calls == [("connection_attributes", (), attributes)], (tier, call)


async def test_the_comparison_sees_a_difference(runs: dict[str, TierRun]) -> None:
    """The trace comparison is not blind: one op apart is a difference."""
    run = runs["wasmtime"]
    upper, lower = Case("rewrite", "read=upper"), Case("rewrite", "read=lower,write=pass")
    a = await run_connection(run.factories["rewrite"], RecordingHost(
        LISTENER, "rewrite", Grants(), LIMITS["rewrite"], run.kv), LISTENER, upper.config, _events(upper, 1))
    b = await run_connection(run.factories["rewrite"], RecordingHost(
        LISTENER, "rewrite", Grants(), LIMITS["rewrite"], run.kv), LISTENER, lower.config, _events(upper, 1))
    assert first_difference(a, b) is not None


async def test_the_output_cap_is_one_and_the_same_fault_in_both_tiers(runs: dict[str, TierRun]) -> None:
    """A replacement of exactly MAX_OUTPUT_BYTES is forwarded; one byte more is an
    ABI fault in both tiers, named as such, and none of it comes back (issue 6)."""
    event = DataEvent(Direction.READ, b"chunk", False)
    for size, fault in ((MAX_OUTPUT_BYTES, None), (MAX_OUTPUT_BYTES + 1, FaultKind.ABI)):
        config = f"mode=replace;size={size}"
        traces = {}
        for tier in TIERS:
            host = RecordingHost(LISTENER, "faulty", Grants(), LIMITS["faulty-big"], runs[tier].kv)
            traces[tier] = await run_connection(runs[tier].factories["faulty-big"], host, LISTENER,
                                                config, [event])
        a, b = traces["wasmtime"], traces["microvm"]
        assert first_difference(a, b) is None, (size, show_step(a, 0), show_step(b, 0))
        if fault is None:
            assert a.steps[0].outcome == ("verdict", "REPLACE", b"x" * size)
        else:
            assert a.fault() == (0, fault)
    for tier in TIERS:  # the message says what was broken
        host = RecordingHost(LISTENER, "faulty", Grants(), LIMITS["faulty-big"], runs[tier].kv)
        sandbox = await runs[tier].factories["faulty-big"].new_sandbox(host)
        await sandbox.open(LISTENER, f"mode=replace;size={MAX_OUTPUT_BYTES + 1}")
        with pytest.raises(PluginFault) as info:
            await sandbox.on_data(event)
        await sandbox.close()
        assert info.value.kind is FaultKind.ABI
        assert f"maximum output per event of {MAX_OUTPUT_BYTES} bytes" in info.value.message, tier


WASI_WAT = Path(__file__).resolve().parent / "wat" / "wasi.wat"


@pytest.fixture(scope="module")
async def wasi_wat(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, SandboxFactory]]:
    path = tmp_path_factory.mktemp("wasi-wat") / "wasi.wasm"
    path.write_bytes(wasmtime.wat2wasm(WASI_WAT.read_text()))
    factories: dict[str, SandboxFactory] = {}
    try:
        for tier in TIERS:
            factories[tier] = await _load(tier, "wasi-log", path)
        yield factories
    finally:
        for f in factories.values():
            await f.aclose()


@pytest.mark.parametrize(
    ("config", "grants", "outcome"),
    [
        # no `log`: denied whatever fd_write is passed (a bad fd and pointers; zero iovecs)
        ("3", frozenset(), ("fault", FaultKind.DENIED, b"")),
        ("0", frozenset(), ("fault", FaultKind.DENIED, b"")),
        ("3", frozenset({"clock", "random"}), ("fault", FaultKind.DENIED, b"")),
        # with it: the fd is refused (EBADF, 8) before the pointers are looked at
        ("3", frozenset({"log"}), ("verdict", "REPLACE", b"\x08")),
        ("0", frozenset({"log"}), ("verdict", "REPLACE", b"\x00")),
        # random_get: the grant before the buffer
        ("R", frozenset({"log"}), ("fault", FaultKind.DENIED, b"")),
        ("R", frozenset({"log", "random"}), ("fault", FaultKind.ABI, b"")),
    ],
)
async def test_wasi_grant_is_checked_before_the_arguments(
    wasi_wat: dict[str, SandboxFactory], config: str, grants: frozenset[str], outcome: tuple[object, ...]
) -> None:
    """THREAT_MODEL "grant first" for WASI preview1 (issue 6): the same answer in both
    tiers, and a denial is counted like any other (capability_denied_total)."""
    event = DataEvent(Direction.READ, b"chunk", False)
    denied = "random" if config == "R" else "log"
    traces = {}
    for tier in TIERS:
        metrics = Metrics()
        host = RecordingHost(LISTENER, "wasi", Grants(grants), LIMITS["wasi-log"], ObservedKv(10, 64),
                             metrics=metrics)
        traces[tier] = await run_connection(wasi_wat[tier], host, LISTENER, config, [event])
        assert traces[tier].steps[0].outcome == outcome, tier
        counted = metrics.get("capability_denied_total", listener=LISTENER, plugin="wasi", capability=denied)
        assert counted == (1 if outcome[1] is FaultKind.DENIED else 0), tier
    a, b = traces["wasmtime"], traces["microvm"]
    if outcome[1] is not FaultKind.ABI:  # the micro-VM draws random bytes before it finds the buffer bad
        assert first_difference(a, b) is None, (show_step(a, 0), show_step(b, 0))
