"""The gRPC service over a real grpc.aio channel on a Unix socket: real plugins and a fake factory.

A client here plays Envoy: one bidi stream per connection, the listener named in
`x-lightcell-listener` metadata, replies matched first-in-first-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncio_dgram
import grpc
import pytest
import yaml
from _extproc_fakes import FakeFactory, fake_listener, fault_on, upper
from envoy.service.network_ext_proc.v3 import network_external_processor_pb2 as pb
from envoy.service.network_ext_proc.v3 import network_external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.config import ConfigError, LightcellConfig, load_config
from extproc.listener import FailureMode
from extproc.server import LightcellServer
from extproc.tcp_service import SERVICE_NAME
from vmm.capabilities import HostCapabilities
from vmm.contract import DataEvent, Verdict

IO_TIMEOUT = 30.0
EXT_PROC = "type.googleapis.com/envoy.extensions.filters.network.ext_proc.v3.NetworkExternalProcessor"
ROT13 = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    b"NOPQRSTUVWXYZABCDEFGHIJKLMnopqrstuvwxyzabcdefghijklm",
)
Stream = Any  # grpc.aio.StreamStreamCall (grpc ships no type stubs)


def read(data: bytes, eos: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(read_data=pb.Data(data=data, end_of_stream=eos))


def write(data: bytes, eos: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(write_data=pb.Data(data=data, end_of_stream=eos))


def _listener(name: str, policy: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "metadata": {"filter_metadata": {"lightcell": policy}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.ext_proc",
                        "typed_config": {
                            "@type": EXT_PROC,
                            "stat_prefix": name,
                            "grpc_service": {
                                "envoy_grpc": {"cluster_name": "lightcell"},
                                "initial_metadata": [{"key": "x-lightcell-listener", "value": name}],
                            },
                        },
                    }
                ]
            }
        ],
    }


@contextlib.asynccontextmanager
async def channel(server: LightcellServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"unix:{server.socket_path}") as ch:
        yield ch


def open_stream(ch: grpc.aio.Channel, listener: str | None) -> Stream:
    metadata = [("x-lightcell-listener", listener)] if listener is not None else []
    stub = pb_grpc.NetworkExternalProcessorStub(ch)
    return stub.Process(metadata=metadata)


async def roundtrip(stream: Stream, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
    await stream.write(request)
    reply = await asyncio.wait_for(stream.read(), IO_TIMEOUT)
    assert isinstance(reply, pb.ProcessingResponse), reply
    return reply


async def finish(stream: Stream) -> grpc.StatusCode:
    """Half-close our side (Envoy's connection ended) and return the final status."""
    await stream.done_writing()
    assert await asyncio.wait_for(stream.read(), IO_TIMEOUT) is grpc.aio.EOF
    return await stream.code()


# ----------------------------------------------------------------------------- real plugins


@pytest.fixture(scope="module")
async def udp_sink() -> AsyncIterator[asyncio_dgram.aio.DatagramServer]:
    sink = await asyncio_dgram.bind(("127.0.0.1", 0))
    yield sink
    sink.close()


@pytest.fixture(scope="module")
async def real(
    built_plugins: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    udp_sink: asyncio_dgram.aio.DatagramServer,
) -> AsyncIterator[LightcellServer]:
    workdir = tmp_path_factory.mktemp("service")
    sink_port = udp_sink.sockname[1]
    listeners = [
        _listener("rewrite", {"plugin": str(built_plugins["rewrite"]), "config": "read=upper,write=rot13"}),
        _listener(
            "faulty",
            {"plugin": str(built_plugins["faulty"]), "config": "mode=trap;after=3", "failure_mode": "close"},
        ),
        _listener(
            "egress",
            {
                "plugin": str(built_plugins["probe"]),
                "config": f"call=egress:127.0.0.1:{sink_port}",
                "grants": ["egress"],
                "egress_allow": [f"127.0.0.1:{sink_port}"],
            },
        ),
        _listener(
            "denied", {"plugin": str(built_plugins["probe"]), "config": "call=kv", "failure_mode": "reset"}
        ),
        _listener(  # issue 6: 70,000 KiB, over MAX_OUTPUT_BYTES and over a gRPC message
            "flood",
            {
                "plugin": str(built_plugins["faulty"]),
                "config": f"mode=replace;size={70_000 * 1024}",
                "tier": "wasmtime",
                "failure_mode": "reset",
                "limits": {"memory_mb": 80, "event_cpu_ms": 10_000},
            },
        ),
    ]
    path = workdir / "envoy.yaml"
    path.write_text(yaml.safe_dump({"static_resources": {"listeners": listeners}}))
    server = await LightcellServer.start(load_config(path), socket_path=workdir / "lc.sock")
    yield server
    await server.stop(grace=1.0)


async def test_real_plugin_transforms_in_order(real: LightcellServer) -> None:
    async with channel(real) as ch:
        stream = open_stream(ch, "rewrite")
        chunks = [(read if i % 3 else write)(f"chunk {i} of many;".encode()) for i in range(30)]
        # Pipeline: send everything first, then read; replies must come back in order.
        for request in chunks:
            await stream.write(request)
        for request in chunks:
            reply = await asyncio.wait_for(stream.read(), IO_TIMEOUT)
            if request.HasField("read_data"):
                assert reply.read_data.data == request.read_data.data.upper()
            else:
                assert reply.write_data.data == request.write_data.data.translate(ROT13)
        # Empty end-of-stream messages, one per direction, each answered.
        eos_read = await roundtrip(stream, read(b"", eos=True))
        assert eos_read.HasField("read_data") and eos_read.read_data.end_of_stream
        eos_write = await roundtrip(stream, write(b"", eos=True))
        assert eos_write.HasField("write_data") and eos_write.write_data.end_of_stream
        assert await finish(stream) is grpc.StatusCode.OK


async def test_one_mib_message(real: LightcellServer) -> None:
    payload = os.urandom(1 << 20).translate(bytes.maketrans(b"\n", b" "))
    async with channel(real) as ch:
        stream = open_stream(ch, "rewrite")
        reply = await roundtrip(stream, read(payload))
        assert reply.read_data.data == payload.upper()
        assert await finish(stream) is grpc.StatusCode.OK


async def test_real_close_verdict(real: LightcellServer) -> None:
    async with channel(real) as ch:
        stream = open_stream(ch, "rewrite")
        assert (await roundtrip(stream, read(b"hi"))).read_data.data == b"HI"
        closing = await roundtrip(stream, read(b"please !reset"))
        assert closing.connection_status == pb.ProcessingResponse.CLOSE_RST
        late = await roundtrip(stream, write(b"late bytes"))
        assert late.connection_status == pb.ProcessingResponse.CLOSE_RST
        assert not late.HasField("write_data")
        assert await finish(stream) is grpc.StatusCode.OK


async def test_real_fault_fails_closed(real: LightcellServer) -> None:
    async with channel(real) as ch:
        stream = open_stream(ch, "faulty")
        # faulty counts non-empty chunks of both directions; after=3 traps on the third.
        assert (await roundtrip(stream, read(b"one"))).read_data.data == b"one"
        assert (await roundtrip(stream, write(b"two"))).write_data.data == b"two"
        trapped = await roundtrip(stream, read(b"three"))
        assert trapped.connection_status == pb.ProcessingResponse.CLOSE
        assert not trapped.HasField("read_data")
        for request in (read(b"four"), write(b"five"), read(b"", eos=True)):
            reply = await roundtrip(stream, request)
            assert reply.connection_status == pb.ProcessingResponse.CLOSE
            assert not (reply.HasField("read_data") or reply.HasField("write_data"))
        assert await finish(stream) is grpc.StatusCode.OK


async def test_real_ungranted_capability_is_denied(real: LightcellServer) -> None:
    async with channel(real) as ch:
        stream = open_stream(ch, "denied")
        reply = await roundtrip(stream, read(b"what is in kv?"))
        assert reply.connection_status == pb.ProcessingResponse.CLOSE_RST
        assert not reply.HasField("read_data")
        await stream.done_writing()


async def test_real_replacement_over_the_output_cap_resets_the_connection(
    real: LightcellServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply too big for gRPC is never attempted: the plugin faults, the stream
    answers CLOSE_RST (failure mode reset) and ends OK, not with a gRPC error."""
    with caplog.at_level(logging.WARNING, logger="lightcell.session"):
        async with channel(real) as ch:
            stream = open_stream(ch, "flood")
            reply = await roundtrip(stream, read(b"make it big"))
            assert reply.connection_status == pb.ProcessingResponse.CLOSE_RST
            assert not reply.HasField("read_data")
            late = await roundtrip(stream, write(b"late"))
            assert late.connection_status == pb.ProcessingResponse.CLOSE_RST
            assert await finish(stream) is grpc.StatusCode.OK
    assert any("plugin fault listener=flood" in r.getMessage() and "fault=abi" in r.getMessage()
               for r in caplog.records)


async def test_real_egress_reaches_the_allowed_target(
    real: LightcellServer, udp_sink: asyncio_dgram.aio.DatagramServer
) -> None:
    async with channel(real) as ch:
        stream = open_stream(ch, "egress")
        reply = await roundtrip(stream, read(b"datagram payload"))
        assert reply.read_data.data == b"egress=ok\n"
        data, _ = await asyncio.wait_for(udp_sink.recv(), IO_TIMEOUT)
        assert data == b"datagram payload"
        assert await finish(stream) is grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("listener", "code"),
    [(None, grpc.StatusCode.PERMISSION_DENIED), ("nobody", grpc.StatusCode.NOT_FOUND)],
)
async def test_unknown_or_missing_listener_is_refused(
    real: LightcellServer, listener: str | None, code: grpc.StatusCode, caplog: pytest.LogCaptureFixture
) -> None:
    async with channel(real) as ch:
        stream = open_stream(ch, listener)
        # The refusal may arrive while the write is still in flight: either call raises it.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.write(read(b"let me through"))
            await asyncio.wait_for(stream.read(), IO_TIMEOUT)
        assert info.value.code() is code
    assert any("stream refused" in r.getMessage() for r in caplog.records)


async def test_health_serving_after_load(real: LightcellServer) -> None:
    async with channel(real) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for service in ("", SERVICE_NAME):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=IO_TIMEOUT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_socket_is_private(real: LightcellServer) -> None:
    assert real.socket_path is not None
    mode = real.socket_path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


# ----------------------------------------------------------------------------- fake factory


@contextlib.asynccontextmanager
async def fake_server(tmp_path: Path, factory: FakeFactory, mode: FailureMode = FailureMode.CLOSE,
                      **kwargs: Any) -> AsyncIterator[LightcellServer]:  # fmt: skip
    listener = fake_listener("fake", factory, failure_mode=mode)
    config = LightcellConfig(tmp_path / "unused.yaml", {})
    server = await LightcellServer.start(
        config, socket_path=tmp_path / "fake.sock", loaded={"fake": listener}, **kwargs
    )
    try:
        yield server
    finally:
        await server.stop(grace=0.5)


async def test_order_is_kept_when_the_plugin_is_slow_on_some_chunks(tmp_path: Path) -> None:
    async def jittery(event: DataEvent, host: HostCapabilities) -> Verdict:
        await asyncio.sleep(0.01 if int(event.data.split(b":")[0]) % 4 == 0 else 0)
        return Verdict.replace(event.data + b"!")

    factory = FakeFactory(jittery)
    async with fake_server(tmp_path, factory) as server, channel(server) as ch:
        stream = open_stream(ch, "fake")
        requests = [(read if i % 2 else write)(f"{i}:x".encode()) for i in range(40)]
        for request in requests:
            await stream.write(request)
        got = []
        for _ in requests:
            reply = await asyncio.wait_for(stream.read(), IO_TIMEOUT)
            got.append(reply.read_data.data if reply.HasField("read_data") else reply.write_data.data)
        assert got == [f"{i}:x!".encode() for i in range(40)]
        assert await finish(stream) is grpc.StatusCode.OK
    [sandbox] = factory.sandboxes
    assert [e.data for e in sandbox.events] == [f"{i}:x".encode() for i in range(40)]
    assert sandbox.close_calls == 1


async def test_each_stream_gets_a_fresh_sandbox(tmp_path: Path) -> None:
    factory = FakeFactory(upper)
    async with fake_server(tmp_path, factory) as server, channel(server) as ch:
        streams = [open_stream(ch, "fake") for _ in range(10)]
        for i, stream in enumerate(streams):
            assert (await roundtrip(stream, read(f"s{i}".encode()))).read_data.data == f"S{i}".encode()
        for stream in streams:
            assert await finish(stream) is grpc.StatusCode.OK
    assert len({s.identity for s in factory.sandboxes}) == 10
    assert all(s.close_calls == 1 for s in factory.sandboxes)


@pytest.mark.parametrize("mode", list(FailureMode))
async def test_fault_modes_over_grpc(tmp_path: Path, mode: FailureMode) -> None:
    factory = FakeFactory(fault_on(b"BOOM"))
    async with fake_server(tmp_path, factory, mode) as server, channel(server) as ch:
        stream = open_stream(ch, "fake")
        assert (await roundtrip(stream, read(b"ok"))).read_data.data == b"OK"
        faulted = await roundtrip(stream, write(b"BOOM"))
        after = await roundtrip(stream, read(b"after"))
        if mode is FailureMode.ALLOW:
            assert faulted.write_data.data == b"BOOM" and after.read_data.data == b"after"
        else:
            status = (
                pb.ProcessingResponse.CLOSE if mode is FailureMode.CLOSE else pb.ProcessingResponse.CLOSE_RST
            )
            for reply in (faulted, after):
                assert reply.connection_status == status
                assert not (reply.HasField("read_data") or reply.HasField("write_data"))
        assert await finish(stream) is grpc.StatusCode.OK


async def test_internal_error_aborts_with_a_non_ok_status(tmp_path: Path) -> None:
    async def broken(event: DataEvent, host: HostCapabilities) -> Verdict:
        raise RuntimeError("a bug")

    # Even under failure mode allow, an internal error must not end the stream OK (Envoy would fail open).
    async with fake_server(tmp_path, FakeFactory(broken), FailureMode.ALLOW) as server, channel(server) as ch:
        stream = open_stream(ch, "fake")
        await stream.write(read(b"x"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(stream.read(), IO_TIMEOUT)
        assert info.value.code() is grpc.StatusCode.INTERNAL


async def test_malformed_request_aborts(tmp_path: Path) -> None:
    async with fake_server(tmp_path, FakeFactory()) as server, channel(server) as ch:
        stream = open_stream(ch, "fake")
        await stream.write(pb.ProcessingRequest())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(stream.read(), IO_TIMEOUT)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_cancelled_stream_releases_the_sandbox(tmp_path: Path) -> None:
    factory = FakeFactory(upper)
    async with fake_server(tmp_path, factory) as server, channel(server) as ch:
        stream = open_stream(ch, "fake")
        await roundtrip(stream, read(b"x"))
        stream.cancel()  # what Envoy does when it resets the side stream
        await asyncio.wait_for(factory.sandboxes[0].closed.wait(), IO_TIMEOUT)
        assert factory.sandboxes[0].close_calls == 1


async def test_shutdown_drains_then_never_ends_a_live_stream_ok(tmp_path: Path) -> None:
    factory = FakeFactory(upper)
    async with fake_server(tmp_path, factory) as server, channel(server) as ch:
        stream = open_stream(ch, "fake")
        await roundtrip(stream, read(b"x"))
        stopping = asyncio.create_task(server.stop(grace=0.5))
        # The open stream is cut after the grace: never with OK (Envoy would fail open).
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(stream.read(), IO_TIMEOUT)
        assert info.value.code() is not grpc.StatusCode.OK
        await stopping
        assert factory.sandboxes[0].close_calls == 1
        assert server.socket_path is not None and not server.socket_path.exists()
        assert factory.closed


async def test_health_not_serving_while_draining(tmp_path: Path) -> None:
    async with fake_server(tmp_path, FakeFactory()) as server, channel(server) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        ok = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=IO_TIMEOUT)
        assert ok.status == health_pb2.HealthCheckResponse.SERVING
        await server.health.enter_graceful_shutdown()
        draining = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=IO_TIMEOUT)
        assert draining.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_tcp_port_on_loopback(tmp_path: Path) -> None:
    async with fake_server(tmp_path, FakeFactory(upper), port=0) as server:
        assert server.port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stream = open_stream(ch, "fake")
            assert (await roundtrip(stream, read(b"tcp"))).read_data.data == b"TCP"
            assert await finish(stream) is grpc.StatusCode.OK


# ----------------------------------------------------------------------------- the socket file


async def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    stale = tmp_path / "fake.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(stale))  # bound, never listening, then closed: a crashed server's leftover
    assert stale.exists()
    factory = FakeFactory(upper)
    async with fake_server(tmp_path, factory) as server, channel(server) as ch:
        assert (await roundtrip(open_stream(ch, "fake"), read(b"a"))).read_data.data == b"A"


async def test_live_socket_is_not_stolen(tmp_path: Path) -> None:
    async with fake_server(tmp_path, FakeFactory()):
        with pytest.raises(ConfigError, match="another server is listening"):
            async with fake_server(tmp_path, FakeFactory()):
                pass


async def test_regular_file_is_not_removed(tmp_path: Path) -> None:
    precious = tmp_path / "fake.sock"
    precious.write_text("not a socket")
    with pytest.raises(ConfigError, match="not a socket"):
        async with fake_server(tmp_path, FakeFactory()):
            pass
    assert precious.read_text() == "not a socket"


# ----------------------------------------------------------------------------- UDP egress


async def test_egress_from_worker_threads_and_a_full_queue(
    udp_sink: asyncio_dgram.aio.DatagramServer,
) -> None:
    from vmm.egress import UdpEgress
    from vmm.policy import EgressTarget

    target = EgressTarget("127.0.0.1", udp_sink.sockname[1])
    egress = UdpEgress(max_pending=4)
    assert not egress.send(target, b"before start")  # no loop yet: refused, not lost silently
    await egress.start()
    try:
        # Tiers call from worker threads: queued on the loop, delivered in order.
        results = await asyncio.to_thread(lambda: [egress.send(target, f"t{i}".encode()) for i in range(3)])
        assert results == [True, True, True]
        got = [(await asyncio.wait_for(udp_sink.recv(), IO_TIMEOUT))[0] for _ in range(3)]
        assert got == [b"t0", b"t1", b"t2"]
        # Nothing drains while we hold the loop: the fifth datagram finds the queue full.
        assert [egress.send(target, b"x") for _ in range(5)] == [True] * 4 + [False]
        for _ in range(4):
            assert (await asyncio.wait_for(udp_sink.recv(), IO_TIMEOUT))[0] == b"x"
    finally:
        await egress.aclose()
    assert not egress.send(target, b"after close")


# ----------------------------------------------------------------------------- admission and socket path


async def test_streams_past_max_connections_are_refused_resource_exhausted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from vmm.metrics import METRICS

    factory = FakeFactory(upper)
    before = METRICS.get("streams_refused_total", reason="max_connections")
    async with fake_server(tmp_path, factory, max_connections=2) as server, channel(server) as ch:
        held = [open_stream(ch, "fake") for _ in range(2)]
        for stream in held:
            assert (await roundtrip(stream, read(b"x"))).read_data.data == b"X"
        extra = open_stream(ch, "fake")
        with pytest.raises(grpc.aio.AioRpcError) as info:  # the refusal may beat the write
            await extra.write(read(b"y"))
            await asyncio.wait_for(extra.read(), IO_TIMEOUT)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # never OK: Envoy closes it
        assert len(factory.sandboxes) == 2  # no sandbox for the refused stream
        assert METRICS.get("streams_refused_total", reason="max_connections") == before + 1
        assert any("max-connections" in r.getMessage() for r in caplog.records)
        # A finished connection frees its slot.
        assert await finish(held[0]) is grpc.StatusCode.OK
        again = open_stream(ch, "fake")
        assert (await roundtrip(again, read(b"z"))).read_data.data == b"Z"
        for stream in (held[1], again):
            assert await finish(stream) is grpc.StatusCode.OK
    assert all(s.close_calls == 1 for s in factory.sandboxes)


def test_default_socket_path_order() -> None:
    from extproc.socket_path import default_socket_path

    both = {"LIGHTCELL_SOCKET": "/srv/x.sock", "XDG_RUNTIME_DIR": "/run/user/7"}
    assert default_socket_path(both, 7) == Path("/srv/x.sock")
    assert default_socket_path({"XDG_RUNTIME_DIR": "/run/user/7"}, 0) == Path(
        "/run/user/7/lightcell/lightcell.sock"
    )
    assert default_socket_path({}, 0) == Path("/run/lightcell/lightcell.sock")
    # Never a shared directory such as /tmp: the user's own cache directory.
    home = default_socket_path({}, 1000)
    assert home == Path.home() / ".cache" / "lightcell" / "run" / "lightcell.sock"


async def test_default_socket_directory_is_created_private_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIGHTCELL_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    listener = fake_listener("fake", FakeFactory(upper))
    config = LightcellConfig(tmp_path / "unused.yaml", {})
    server = await LightcellServer.start(config, loaded={"fake": listener})  # the default path
    try:
        expected = tmp_path / "xdg" / "lightcell" / "lightcell.sock"
        assert server.socket_path == expected
        assert stat.S_IMODE(expected.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(expected.stat().st_mode) == 0o600
    finally:
        await server.stop(grace=0.5)
    # A directory others can write is refused, not used.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("LIGHTCELL_SOCKET", str(shared / "lc.sock"))
    with pytest.raises(ConfigError, match="writable by group or others"):
        await LightcellServer.start(config, loaded={"fake": listener})
    assert not (shared / "lc.sock").exists()
    if os.geteuid() == 0:  # true on the CI machine: chown to another user works
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        monkeypatch.setenv("LIGHTCELL_SOCKET", str(theirs / "lc.sock"))
        with pytest.raises(ConfigError, match="owned by uid 65534"):
            await LightcellServer.start(config, loaded={"fake": listener})
    # A symlink in place of the directory is refused too.
    (tmp_path / "link").symlink_to(tmp_path / "xdg" / "lightcell")
    monkeypatch.setenv("LIGHTCELL_SOCKET", str(tmp_path / "link" / "lc.sock"))
    with pytest.raises(ConfigError, match="not a directory"):
        await LightcellServer.start(config, loaded={"fake": listener})
