"""WASI 0.2 in the micro-VM guest (guest/runtime/wasip2*.c) against the wasmtime tier.

tests/wasip2_plugins/wasip2_probe.c is a tcp-filter component wrapping ONE
core module that imports `wasi:*@0.2.9` functions at the canonical-ABI level,
so the micro-VM path compiles it (bind.py forwards them to lc_wasip2_*). Each
case runs the same chunks under the same grants in both tiers; verdicts,
fault kinds and log lines (stdout/stderr) must be equal.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _host_fakes import Sent

from plugins.build import compile_c
from vmm import wasmtime_tier
from vmm.capabilities import HostCapabilities
from vmm.contract import DataEvent, Direction
from vmm.kvstore import KvStore
from vmm.metrics import Metrics
from vmm.microvm import tier as microvm_tier
from vmm.microvm.wasip2_gen import write_wit_dir
from vmm.policy import CAPABILITIES, EgressTarget, Grants, Limits, SandboxSpec
from vmm.sandbox import FaultKind, PluginFault, SandboxFactory

pytestmark = pytest.mark.kvm

LISTENER = "wasip2"
LIMITS = Limits(event_cpu_ms=2000)
SRC = Path(__file__).parent / "wasip2_plugins" / "wasip2_probe.c"
WORLD = """package lightcell:wasip2-probe;

world probe {
  include lightcell:filter/tcp-filter@0.1.0;
  include wasi:cli/imports@0.2.9;
}
"""


def _wasm_tools(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).with_name("wasm-tools")), *args], check=True)


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wasip2-probe")
    core = compile_c(SRC, tmp / "core.wasm")
    wit = write_wit_dir(tmp / "wit", WORLD)
    _wasm_tools("component", "embed", str(wit), "--world", "probe", str(core), "-o", str(tmp / "e.wasm"))
    _wasm_tools("component", "new", str(tmp / "e.wasm"), "-o", str(tmp / "probe.wasm"))
    return tmp / "probe.wasm"


@pytest.fixture(scope="module")
async def factories(probe: Path) -> AsyncIterator[dict[str, SandboxFactory]]:
    spec = SandboxSpec(LISTENER, str(probe), Grants(CAPABILITIES), LIMITS, "")
    out: dict[str, SandboxFactory] = {
        "wasmtime": await wasmtime_tier.load(spec),
        "microvm": await microvm_tier.load(spec, pool_size=1),
    }
    try:
        yield out
    finally:
        for f in out.values():
            await f.aclose()


@dataclass
class LogHost(HostCapabilities):
    """Keeps log lines, and the granted wall-clock and random reads (as
    ("wall_now",) etc.: both tiers serve those through the host; a granted
    monotonic clock only the micro-VM's, see vmm/wasmtime_tier/_component_wasi.py)."""

    lines: list[tuple[object, ...]] = field(default_factory=list)

    def log(self, level: int, message: str) -> None:
        self.lines.append((level, message))

    def wall_now(self) -> int:
        self.lines.append(("wall_now",))
        return super().wall_now()

    def random_u64(self) -> int:
        self.lines.append(("random_u64",))
        return super().random_u64()

    def random_bytes(self, n: int) -> bytes:
        self.lines.append(("random_bytes", n))
        return super().random_bytes(n)


Outcome = tuple[str, object]


async def _run(factory: SandboxFactory, grants: frozenset[str], config: str,
               chunks: list[bytes]) -> tuple[list[Outcome], list[tuple[object, ...]]]:
    host = LogHost(LISTENER, "probe", Grants(grants), LIMITS, KvStore(10, 1024), None, Metrics())
    sandbox = await factory.new_sandbox(host)
    outcomes: list[Outcome] = []
    try:
        await sandbox.open(LISTENER, config)
        for chunk in chunks:
            verdict = await sandbox.on_data(DataEvent(Direction.READ, chunk, False))
            outcomes.append((verdict.kind.name, verdict.data))
    except PluginFault as fault:
        outcomes.append(("fault", fault.kind))
    finally:
        await sandbox.close()
    return outcomes, host.lines


@dataclass(frozen=True)
class Case:
    chunks: tuple[bytes, ...]
    grants: frozenset[str] = frozenset()
    config: str = ""
    want: tuple[Outcome, ...] = ()  # what both tiers must give

    @property
    def id(self) -> str:
        return f"{b'+'.join(self.chunks).decode()}|{'+'.join(sorted(self.grants)) or 'none'}|{self.config}"


def _ok(text: str) -> Outcome:
    return ("REPLACE", text.encode())


LOG = frozenset({"log"})
CASES = [
    Case((b"w",), LOG, want=(_ok("w=ok"),)),
    Case((b"w",), want=(_ok("w=ok"),)),  # stdout without `log`: dropped, not denied
    Case((b"c",), frozenset({"clock"}), want=(_ok("c=ok"),)),
    Case((b"c",), CAPABILITIES - {"clock"}, want=(("fault", FaultKind.DENIED),)),
    Case((b"r", b"u"), frozenset({"random"}), want=(_ok("r=16"), _ok("u=ok"))),
    Case((b"r",), want=(("fault", FaultKind.DENIED),)),  # zeros only during on-open
    Case((b"u",), want=(("fault", FaultKind.DENIED),)),
    Case((b"s",), config="seed=2496", want=(_ok("s=1"),)),  # STARTUP_RANDOM_BYTES of zeros
    Case((b"s",), frozenset({"random"}), config="seed=2496", want=(_ok("s=0"),)),
    Case((b"s",), config="seed=2497", want=(("fault", FaultKind.DENIED),)),
    Case((b"f", b"e", b"i", b"t"), want=(_ok("f=0"), _ok("e=0 0 0"), _ok("i=closed"), _ok("t=0"))),
    Case((b"x",), want=(("fault", FaultKind.TRAP),)),  # exit(err) ends the connection
    Case((b"n",), CAPABILITIES - {"egress"}, want=(("fault", FaultKind.DENIED),)),
    Case((b"z", b"w"), LOG, want=(("PASS", b""), _ok("w=ok"))),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_both_tiers_agree(factories: dict[str, SandboxFactory], case: Case) -> None:
    runs = {t: await _run(f, case.grants, case.config, list(case.chunks)) for t, f in factories.items()}
    assert runs["microvm"] == runs["wasmtime"]
    outcomes, lines = runs["microvm"]
    assert tuple(outcomes) == case.want
    if "log" in case.grants and case.config == "":
        opened = [(2, "hello from wasip2"), (2, "open-partial")]
        written = [(2, "w1"), (3, "e1"), (2, "w2")] if b"w" in case.chunks else []
        assert lines == opened + written
    else:
        assert lines == READS.get(case.id, [])


READS: dict[str, list[tuple[object, ...]]] = {
    "c|clock|": [("wall_now",)],
    "r+u|random|": [("random_bytes", 16), ("random_u64",)],
    # the start-up reseed under the grant: real randomness, read in 256-byte pieces
    "s|random|seed=2496": [*[("random_bytes", 256)] * 9, ("random_bytes", 192)],
}
"""The granted reads each case makes (after the on-open the others share)."""


async def test_guest_traps_on_a_bad_handle_and_an_empty_poll(factories: dict[str, SandboxFactory]) -> None:
    """A handle the guest never made, an empty poll list: the connection faults in both tiers."""
    for chunk in (b"h", b"p"):
        for tier, factory in factories.items():
            outcomes, _ = await _run(factory, LOG, "", [chunk])
            assert outcomes[-1][0] == "fault", (tier, chunk)
            if tier == "microvm":
                assert outcomes[-1][1] is FaultKind.ABI  # LC_ABI_BAD_HANDLE / LC_ABI_WASI_UNUSABLE
    host = LogHost(LISTENER, "probe", Grants(LOG), LIMITS, KvStore(10, 1024), None, Metrics())
    sandbox = await factories["microvm"].new_sandbox(host)
    try:
        await sandbox.open(LISTENER, "")
        with pytest.raises(PluginFault, match="resource handle of the wrong type"):
            await sandbox.on_data(DataEvent(Direction.READ, b"h", False))
    finally:
        await sandbox.close()


async def test_a_denial_is_worded_alike(factories: dict[str, SandboxFactory]) -> None:
    for factory in factories.values():
        host = LogHost(LISTENER, "probe", Grants(frozenset()), LIMITS, KvStore(10, 1024), None, Metrics())
        sandbox = await factory.new_sandbox(host)
        try:
            await sandbox.open(LISTENER, "")
            with pytest.raises(PluginFault, match="capability 'clock' not granted"):
                await sandbox.on_data(DataEvent(Direction.READ, b"c", False))
        finally:
            await sandbox.close()


async def test_guest_udp_follows_the_egress_allow_list(factories: dict[str, SandboxFactory]) -> None:
    """An unbound wasi:sockets UDP socket in a plugin sends as egress.send-datagram does:
    allow-listed destinations only (else access-denied, 1), through the listener's sender."""
    sent = Sent()
    allow = frozenset({EgressTarget("127.0.0.1", 9125)})
    host = LogHost(LISTENER, "probe", Grants(frozenset({"egress"}), allow), LIMITS, KvStore(10, 1024), sent,
                   Metrics())
    sandbox = await factories["microvm"].new_sandbox(host)
    try:
        await sandbox.open(LISTENER, "")
        verdicts = [await sandbox.on_data(DataEvent(Direction.READ, c, False)) for c in (b"g", b"G")]
    finally:
        await sandbox.close()
    assert [v.data for v in verdicts] == [b"g=ok", b"g=err1"]
    assert sent.datagrams == [(EgressTarget("127.0.0.1", 9125), b"dgram")]


async def test_guest_network_needs_only_egress(factories: dict[str, SandboxFactory]) -> None:
    """With `egress` the guest hands out a network (its UDP follows the allow list);
    the wasmtime tier never grants wasi:sockets (a documented difference)."""
    outcomes, _ = await _run(factories["microvm"], frozenset({"egress"}), "", [b"n"])
    assert outcomes == [_ok("n=ok")]
    outcomes, _ = await _run(factories["wasmtime"], frozenset({"egress"}), "", [b"n"])
    assert outcomes == [("fault", FaultKind.DENIED)]


def test_both_tiers_read_randomness_in_the_same_pieces() -> None:
    """The guest's RANDOM_CHUNK and MAX_RANDOM_BYTES are the wasmtime tier's (a recording
    host sees the same random_bytes calls for a large read, the same refusal past the cap)."""
    import re

    from vmm.microvm.hostcalls import MAX_RANDOM_BYTES
    from vmm.wasmtime_tier._component_wasi import MAX_RANDOM_LIST, WASI_RANDOM_CHUNK

    src = (Path(__file__).parents[1] / "guest" / "runtime" / "wasip2.c").read_text()
    chunk = re.search(r"#define RANDOM_CHUNK (\d+)u", src)
    cap = re.search(r"#define MAX_RANDOM_BYTES \((\d+)u \* 1024u \* 1024u\)", src)
    assert chunk and cap
    assert int(chunk[1]) == WASI_RANDOM_CHUNK == MAX_RANDOM_BYTES
    assert int(cap[1]) << 20 == MAX_RANDOM_LIST
