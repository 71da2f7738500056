"""Adversarial tests: the real gRPC server on a Unix socket, real plugins in the
wasmtime tier (plugins/build.py) and the hostile WAT plugin of
tests/test_fuzz_wasm_boundary.py, attacked from both sides.

Malicious traffic (the gRPC peer): bytes that are no ProcessingRequest, both or
neither direction, floods, streams that vanish mid-connection, messages larger
than the plugin's memory. Malicious plugin: forged verdict pointers, forged
capability pointers, huge kv keys and values, metadata and log floods, egress
to targets outside the allow list. Every failure must fail closed (CLOSE with no
bytes, or a non-OK status), and no sandbox may leak: a counting wrapper around
the real factories proves every sandbox opened is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncio_dgram
import grpc
import pytest
import wasmtime
from envoy.service.network_ext_proc.v3 import network_external_processor_pb2 as pb
from envoy.service.network_ext_proc.v3 import network_external_processor_pb2_grpc as pb_grpc
from test_fuzz_wasm_boundary import MEMORY_BYTES, command, hostile_wasm, read_memory

import vmm.wasmtime_tier as wt
from extproc.config import ConfigError, LightcellConfig
from extproc.listener import FailureMode, Listener, ListenerPolicy, TierChoice
from extproc.server import LightcellServer
from extproc.tcp_service import SERVICE_NAME
from vmm.capabilities import LOG_BURST_LINES, LOG_LINES_PER_SECOND, HostCapabilities
from vmm.contract import DataEvent, Verdict
from vmm.kvstore import KvStore
from vmm.metrics import METRICS
from vmm.policy import CAPABILITIES, EgressTarget, Grants, Limits, SandboxSpec, Tier
from vmm.sandbox import PluginFault, PluginLoadError
from vmm.wasmtime_tier import _factory

IO_TIMEOUT = 30.0
METHOD = f"/{SERVICE_NAME}/Process"
Stream = Any  # grpc.aio.StreamStreamCall (grpc ships no type stubs)
CLOSE = pb.ProcessingResponse.CLOSE
HOST_AT, KEY_AT, RET_AT = 1024, 1100, 700


# ----------------------------------------------------------------------------- counting factory


class CountedSandbox:
    """Delegates to a real sandbox; tells its factory when it is closed (once)."""

    def __init__(self, inner: Any, factory: CountingFactory) -> None:
        self._inner = inner
        self._factory = factory
        self._closed = False

    @property
    def identity(self) -> str:
        return str(self._inner.identity)

    async def open(self, listener: str, config: str) -> None:
        await self._inner.open(listener, config)

    async def on_data(self, event: DataEvent) -> Verdict:
        result: Verdict = await self._inner.on_data(event)
        return result

    async def close(self) -> PluginFault | None:
        try:
            fault: PluginFault | None = await self._inner.close()
            return fault
        finally:
            if not self._closed:
                self._closed = True
                self._factory.open -= 1


class CountingFactory:
    """A real SandboxFactory, wrapped to count live sandboxes."""

    def __init__(self, inner: wt.WasmtimeFactory) -> None:
        self.inner = inner
        self.created = 0
        self.open = 0

    @property
    def tier(self) -> str:
        return self.inner.tier

    @property
    def imports(self) -> frozenset[str]:
        return self.inner.imports

    async def new_sandbox(self, host: HostCapabilities) -> CountedSandbox:
        sandbox = await self.inner.new_sandbox(host)
        self.created += 1
        self.open += 1
        return CountedSandbox(sandbox, self)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Rig:
    def __init__(self, server: LightcellServer, factories: dict[str, CountingFactory],
                 kv: dict[str, KvStore], sink: asyncio_dgram.aio.DatagramServer) -> None:  # fmt: skip
        self.server, self.factories, self.kv, self.sink = server, factories, kv, sink

    @property
    def sink_port(self) -> int:
        return int(self.sink.sockname[1])

    async def all_closed(self) -> None:
        """Wait (bounded) until every sandbox any stream opened is closed again."""
        deadline = time.monotonic() + IO_TIMEOUT
        while any(f.open for f in self.factories.values()):
            assert time.monotonic() < deadline, {n: f.open for n, f in self.factories.items()}
            await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
async def rig(
    built_plugins: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rig]:
    work = tmp_path_factory.mktemp("adversarial")
    sink = await asyncio_dgram.bind(("127.0.0.1", 0))
    port = int(sink.sockname[1])
    allow = frozenset({EgressTarget("127.0.0.1", port)})
    specs = {
        "rewrite": SandboxSpec(
            "rewrite", str(built_plugins["rewrite"]), plugin_config="read=upper,write=pass"
        ),
        "small": SandboxSpec("small", str(built_plugins["rewrite"]), limits=Limits(memory_bytes=2 << 20)),
        "probe-wrong-port": SandboxSpec(
            "probe-wrong-port", str(built_plugins["probe"]), Grants(frozenset({"egress"}), allow),
            plugin_config=f"call=egress:127.0.0.1:{port + 1}",
        ),
        "hostile": SandboxSpec(
            "hostile", str(hostile_wasm(work)), Grants(CAPABILITIES, allow),
            Limits(event_cpu_ms=5000, kv_max_keys=50, kv_max_value_bytes=4096),
        ),
    }  # fmt: skip
    factories: dict[str, CountingFactory] = {}
    kv: dict[str, KvStore] = {}
    listeners: dict[str, Listener] = {}
    for name, spec in specs.items():
        factories[name] = CountingFactory(await wt.load(spec, work / "cache"))
        kv[name] = KvStore(spec.limits.kv_max_keys, spec.limits.kv_max_value_bytes)
        policy = ListenerPolicy(name, spec, Tier.WASMTIME, FailureMode.CLOSE)
        tier = TierChoice(Tier.WASMTIME, "asked for by the test", Tier.WASMTIME)
        listeners[name] = Listener(policy, factories[name], kv[name], tier)
    server = await LightcellServer.start(
        LightcellConfig(work / "unused.yaml", {}), socket_path=work / "lc.sock", loaded=listeners
    )
    try:
        yield Rig(server, factories, kv, sink)
    finally:
        await server.stop(grace=0.5)
        for f in factories.values():
            await f.aclose()
        sink.close()


@contextlib.asynccontextmanager
async def channel(rig: Rig) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"unix:{rig.server.socket_path}") as ch:
        yield ch


def open_stream(ch: grpc.aio.Channel, listener: str) -> Stream:
    return pb_grpc.NetworkExternalProcessorStub(ch).Process(metadata=[("x-lightcell-listener", listener)])


def read(data: bytes, eos: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(read_data=pb.Data(data=data, end_of_stream=eos))


async def roundtrip(stream: Stream, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
    await stream.write(request)
    reply = await asyncio.wait_for(stream.read(), IO_TIMEOUT)
    assert isinstance(reply, pb.ProcessingResponse), reply
    return reply


async def finish(stream: Stream) -> grpc.StatusCode:
    await stream.done_writing()
    assert await asyncio.wait_for(stream.read(), IO_TIMEOUT) is grpc.aio.EOF
    code: grpc.StatusCode = await stream.code()
    return code


def closed_without_bytes(reply: pb.ProcessingResponse) -> bool:
    carries_bytes = reply.HasField("read_data") or reply.HasField("write_data")
    return reply.connection_status == CLOSE and not carries_bytes


async def hostile_run(rig: Rig, *chunks: bytes) -> list[pb.ProcessingResponse]:
    """One connection on the hostile listener: each chunk in turn, then half-close (OK)."""
    async with channel(rig) as ch:
        stream = open_stream(ch, "hostile")
        replies = [await roundtrip(stream, read(c)) for c in chunks]
        assert await finish(stream) is grpc.StatusCode.OK
    return replies


def place(at: int, data: bytes) -> bytes:
    return command(13, at, payload=data)


# ----------------------------------------------------------------------------- malformed gRPC


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\xff\xff\xff\xff\xff", id="not-protobuf"),
        pytest.param(b"\x0a\x10\x0a\x02", id="truncated"),
        pytest.param(b"", id="neither-direction"),
        pytest.param(b"\x1a\x00", id="metadata-only"),
        pytest.param(
            read(b"r").SerializeToString() + pb.ProcessingRequest(write_data=pb.Data()).SerializeToString(),
            id="both-directions",
        ),
    ],
)
async def test_raw_bytes_that_are_no_request_end_the_stream_non_ok(rig: Rig, raw: bytes) -> None:
    """Mid-connection garbage: a non-OK status (Envoy closes), never OK, and the sandbox is closed."""
    async with channel(rig) as ch:
        call = ch.stream_stream(
            METHOD, request_serializer=lambda b: b, response_deserializer=pb.ProcessingResponse.FromString
        )(metadata=[("x-lightcell-listener", "rewrite")])
        await call.write(read(b"fine so far").SerializeToString())
        first = await asyncio.wait_for(call.read(), IO_TIMEOUT)
        assert first.read_data.data == b"FINE SO FAR"
        await call.write(raw)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call.read(), IO_TIMEOUT)
        # Undecodable bytes surface as INTERNAL, bad requests as INVALID_ARGUMENT: never OK.
        assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL)
    await rig.all_closed()


async def test_a_flood_of_pipelined_messages_is_answered_in_order(rig: Rig) -> None:
    n = 1000
    async with channel(rig) as ch:
        stream = open_stream(ch, "rewrite")
        for i in range(n):
            await stream.write(read(b"m%d;" % i))
        for i in range(n):
            reply = await asyncio.wait_for(stream.read(), IO_TIMEOUT)
            assert reply.read_data.data == b"M%d;" % i
        assert await finish(stream) is grpc.StatusCode.OK
    await rig.all_closed()


async def test_message_larger_than_the_plugin_memory_reaches_it_in_pieces(rig: Rig) -> None:
    # The session hands a plugin at most MAX_EVENT_BYTES per call, so a 3 MiB
    # message neither overruns a 2 MiB plugin nor skips it: every byte is filtered.
    async with channel(rig) as ch:
        stream = open_stream(ch, "small")  # 2 MiB memory cap
        assert (await roundtrip(stream, read(b"ok"))).read_data.data == b"OK"
        big = bytes(range(97, 123)) * ((3 << 20) // 26)
        assert (await roundtrip(stream, read(big))).read_data.data == big.upper()
        assert (await roundtrip(stream, read(b"later bytes"))).read_data.data == b"LATER BYTES"
        assert await finish(stream) is grpc.StatusCode.OK
    await rig.all_closed()


# ----------------------------------------------------------------------------- vanishing streams


async def test_streams_vanishing_mid_connection_leak_no_sandbox(rig: Rig) -> None:
    factory = rig.factories["rewrite"]
    before = factory.created
    async with channel(rig) as ch:
        streams = [open_stream(ch, "rewrite") for _ in range(40)]
        for i, stream in enumerate(streams):
            for _ in range(1 + i % 3):
                await stream.write(read(b"abc"))
        for i, stream in enumerate(streams):
            assert (await asyncio.wait_for(stream.read(), IO_TIMEOUT)).read_data.data == b"ABC"
            if i % 2:
                stream.cancel()  # Envoy resets the side stream
        # The rest vanish with the channel (the sidecar's peer goes away).
    await rig.all_closed()
    assert factory.created - before == 40


async def test_stream_cancelled_while_the_plugin_runs_releases_the_sandbox(rig: Rig) -> None:
    factory = rig.factories["hostile"]
    async with channel(rig) as ch:
        stream = open_stream(ch, "hostile")
        await roundtrip(stream, read(place(KEY_AT, b"k")))
        await stream.write(read(command(14, 200_000, 2, KEY_AT, 1)))  # a long log flood
        await asyncio.sleep(0.05)
        stream.cancel()
    await rig.all_closed()
    assert factory.open == 0


# ----------------------------------------------------------------------------- malicious plugin


@pytest.mark.parametrize(
    "chunk",
    [
        pytest.param(command(11, 1, 0xFFFFFFF0, 0x20), id="replace-ptr-wraps-u32"),
        pytest.param(command(11, 1, MEMORY_BYTES - 4, 5), id="replace-one-past-end"),
        pytest.param(command(11, 1, 16, 0xFFFFFFF8), id="replace-len-wraps-u32"),
        pytest.param(command(10, 0xFFFFFFFC), id="return-area-beyond-memory"),
        pytest.param(command(10, 514), id="return-area-unaligned"),
        pytest.param(command(11, 9), id="unknown-verdict-tag"),
        pytest.param(command(3, 0xFFFFFFFF, 2, 0, 1), id="kv-key-ptr-wraps"),
        pytest.param(command(2, 0, 1, MEMORY_BYTES - 8), id="kv-get-retptr-beyond-memory"),
        pytest.param(command(6, 0, 1, 0x80000000, 0x80000000), id="metadata-value-len-overflows"),
        pytest.param(command(7, 0xFFFFFFFF, 0xFFFFFFFF, 9, 0, 0, 0), id="egress-host-ptr-and-len-max"),
        pytest.param(command(1, 2, MEMORY_BYTES, 1), id="log-at-end-of-memory"),
        pytest.param(command(8, 1, MEMORY_BYTES - 4, 1, 0), id="fd-write-iovec-beyond-memory"),
        pytest.param(command(9, 0xFFFFFF00, 0x200), id="random-get-wraps"),
        pytest.param(command(12, 0xFFFFFFF0) + b"-", id="forged-cabi-realloc"),
    ],
)
async def test_forged_pointers_fail_closed(rig: Rig, chunk: bytes) -> None:
    faults = METRICS.get("plugin_faults_total", listener="hostile")
    replies = await hostile_run(rig, b"hello", chunk, b"next chunk", b"and another")
    assert replies[0].read_data.data == b"hello"
    if chunk.startswith(bytes([12])):  # the forged allocator bites on the next input
        assert replies[1].read_data.data == chunk
        replies = replies[1:]
    assert all(closed_without_bytes(r) for r in replies[1:]), replies
    assert METRICS.get("plugin_faults_total", listener="hostile") > faults
    await rig.all_closed()


async def test_huge_kv_keys_and_values_are_refused(rig: Rig) -> None:
    store = rig.kv["hostile"]
    # A 2000-byte key (over the 1 KiB cap), then a value over the listener's 4 KiB.
    replies = await hostile_run(rig, place(4096, b"K" * 2000), command(3, 4096, 2000, 4096, 1))
    assert closed_without_bytes(replies[1])
    replies = await hostile_run(rig, place(KEY_AT, b"k"), command(3, KEY_AT, 1, 8192, 4097))
    assert closed_without_bytes(replies[1])
    assert store.get("k") is None and store.get("K" * 2000) is None
    # Key-count flood: the listener allows 50 keys; the 51st faults the connection.
    replies = await hostile_run(rig, place(KEY_AT, b"v"), command(16, 80, 4096, KEY_AT, 1))
    assert closed_without_bytes(replies[1])
    assert len(store._data) == 50
    await rig.all_closed()


async def test_metadata_flood_is_bounded(rig: Rig) -> None:
    replies = await hostile_run(rig, place(KEY_AT, b"v"), command(15, 64, 4096, KEY_AT, 1))
    fields = replies[1].dynamic_metadata.fields["lightcell"].struct_value.fields
    assert len(fields) == 64 and replies[1].read_data.data.startswith(bytes([15]))
    replies = await hostile_run(rig, place(KEY_AT, b"v"), command(15, 65, 4096, KEY_AT, 1))
    assert closed_without_bytes(replies[1])
    assert not replies[1].HasField("dynamic_metadata") or not replies[1].dynamic_metadata.fields
    # One entry over 4 KiB.
    replies = await hostile_run(
        rig, place(KEY_AT, b"k"), place(16384, b"v" * 5000), command(6, KEY_AT, 1, 16384, 5000)
    )
    assert closed_without_bytes(replies[2])
    await rig.all_closed()


async def test_log_flood_is_rate_limited(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    dropped = METRICS.get("log_dropped_total", listener="hostile")
    lines = 20_000
    with caplog.at_level(logging.INFO, logger="lightcell.plugin"):
        started = time.monotonic()
        replies = await hostile_run(rig, place(KEY_AT, b"!"), command(14, lines, 2, KEY_AT, 1))
        elapsed = time.monotonic() - started
    assert replies[1].read_data.data.startswith(bytes([14]))  # the plugin was not punished
    logged = sum(1 for r in caplog.records if r.name == "lightcell.plugin")
    assert logged <= LOG_BURST_LINES + LOG_LINES_PER_SECOND * elapsed + 1
    assert METRICS.get("log_dropped_total", listener="hostile") - dropped == lines - logged
    await rig.all_closed()


async def test_fd_write_takes_at_most_64_kib_per_call(rig: Rig) -> None:
    iovec = struct.pack("<II", 16384, 200_000)  # one iovec of 200 KB (inside memory)
    replies = await hostile_run(
        rig, place(2048, iovec), command(8, 1, 2048, 1, 2056), read_memory(2056, 4), read_memory(600, 4)
    )
    assert struct.unpack("<I", replies[2].read_data.data)[0] == 65536  # a short write
    assert struct.unpack("<I", replies[3].read_data.data)[0] == 0  # errno: success
    await rig.all_closed()


async def test_egress_outside_the_allow_list_is_denied(rig: Rig) -> None:
    port = rig.sink_port
    refused = METRICS.get("egress_refused_total", listener="hostile")
    chunks = []
    for host, p in (("127.0.0.1", port + 1), ("localhost", port), ("127.0.0.2", port),
                    ("127.0.0.1 ", port), ("127.0.0.1", port + 65536)):  # fmt: skip
        chunks += [place(HOST_AT, host.encode()), command(7, HOST_AT, len(host), p, KEY_AT, 3, RET_AT),
                   read_memory(RET_AT, 2)]  # fmt: skip
    chunks[:0] = [place(KEY_AT, b"bad")]
    replies = await hostile_run(rig, *chunks[:-3])  # the last (port over u16) faults: below
    results = [r.read_data.data for r in replies[3::3]]
    assert results == [b"\x01\x00"] * 4  # err, DENIED
    assert METRICS.get("egress_refused_total", listener="hostile") - refused == 4
    # A port that is no u16 is an ABI fault, not a wrap-around to the allowed port.
    replies = await hostile_run(rig, *chunks[-3:-1])
    assert closed_without_bytes(replies[1])
    # Positive control: the allowed target gets exactly the good datagram, first.
    replies = await hostile_run(
        rig, place(KEY_AT, b"good"), place(HOST_AT, b"127.0.0.1"),
        command(7, HOST_AT, 9, port, KEY_AT, 4, RET_AT), read_memory(RET_AT, 1),
    )  # fmt: skip
    assert replies[3].read_data.data == b"\x00"
    data, _ = await asyncio.wait_for(rig.sink.recv(), IO_TIMEOUT)
    assert data == b"good"
    # The real probe plugin aimed at the wrong port gets `denied` (error 0) too.
    async with channel(rig) as ch:
        stream = open_stream(ch, "probe-wrong-port")
        assert (await roundtrip(stream, read(b"x"))).read_data.data == b"egress=err0\n"
        assert await finish(stream) is grpc.StatusCode.OK
    await rig.all_closed()


# ----------------------------------------------------------------------------- the socket


async def test_socket_path_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("not a socket")
    link = tmp_path / "lc.sock"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="not a socket"):
        await LightcellServer.start(LightcellConfig(tmp_path / "x.yaml", {}), socket_path=link, loaded={})
    assert target.read_text() == "not a socket"



async def test_plugin_log_lines_cannot_forge_host_records(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    forged = b"ok\n2026-01-01 ERROR lightcell.session: forged\r\x1b[2K"
    with caplog.at_level(logging.INFO, logger="lightcell.plugin"):
        await hostile_run(rig, place(4096, forged), command(1, 2, 4096, len(forged)))
    lines = [r.getMessage() for r in caplog.records if r.name == "lightcell.plugin"]
    assert lines == ["[hostile/hostile] ok\\x0a2026-01-01 ERROR lightcell.session: forged\\x0d\\x1b[2K"]


SPINNING_COMPONENT = r"""
(component
  (core module $m (func $spin (loop $l (br $l))) (start $spin))
  (core module $n)
  (core instance $j (instantiate $n))
  (core instance $i (instantiate $m))
)
"""


async def test_component_that_spins_at_start_is_a_load_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Load runs the component's start code: bounded, so start-up cannot hang."""
    monkeypatch.setattr(_factory, "LOAD_BUDGET_MS", 100)
    path = tmp_path / "spin.wasm"
    path.write_bytes(wasmtime.wat2wasm(SPINNING_COMPONENT))
    with pytest.raises(PluginLoadError, match="interrupt"):
        await asyncio.wait_for(wt.load(SandboxSpec("spin", str(path)), tmp_path / "cache"), IO_TIMEOUT)
