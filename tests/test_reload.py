"""Live reload in process: a real server, real plugins, a gRPC client playing Envoy.

What a reload swaps (new and changed policies serve new streams; open streams keep the
plugin they started with; a removed listener refuses new streams; an unchanged policy
keeps its loaded plugin), when a replaced plugin is closed (after its last stream, not
before), and that a file `check` refuses changes nothing and is reported with check's
message. The Envoy end-to-end test is tests/test_envoy_reload.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.network_ext_proc.v3 import network_external_processor_pb2 as pb
from envoy.service.network_ext_proc.v3 import network_external_processor_pb2_grpc as pb_grpc

from extproc import cli
from extproc.config import load_config
from extproc.harness import (
    ListenerSpec,
    lightcell_command,
    render_bootstrap,
    wait_for_unix_socket,
    write_config,
)
from extproc.policy_table import PolicyTable
from extproc.reload import ReloadTrigger
from extproc.server import LightcellServer
from extproc.workers import worker_socket
from vmm.capabilities import HostCapabilities
from vmm.kvstore import KvStore
from vmm.policy import Grants, Limits

IO_TIMEOUT = 30.0
Stream = Any  # grpc.aio.StreamStreamCall (grpc ships no type stubs)
LIMITS = {"memory_mb": 16, "event_cpu_ms": 2000}  # room on 2 busy cores; nothing here is timed


def read(data: bytes) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(read_data=pb.Data(data=data, end_of_stream=False))


def open_stream(ch: grpc.aio.Channel, listener: str) -> Stream:
    return pb_grpc.NetworkExternalProcessorStub(ch).Process(metadata=[("x-lightcell-listener", listener)])


async def send(stream: Stream, data: bytes) -> bytes:
    await stream.write(read(data))
    reply = await asyncio.wait_for(stream.read(), IO_TIMEOUT)
    assert isinstance(reply, pb.ProcessingResponse), reply
    return bytes(reply.read_data.data)


async def finish(stream: Stream) -> grpc.StatusCode:
    await stream.done_writing()
    assert await asyncio.wait_for(stream.read(), IO_TIMEOUT) is grpc.aio.EOF
    return await stream.code()


async def refused(stream: Stream) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:  # the write or the read sees it
        await stream.write(read(b"x"))
        await asyncio.wait_for(stream.read(), IO_TIMEOUT)
    return info.value.code()


def write(path: Path, plugin: Path, tier: str, listeners: dict[str, str]) -> Path:
    """An Envoy config: one rewrite listener per name, with that plugin config."""
    specs = [
        ListenerSpec(name, 9, {"plugin": str(plugin), "config": conf, "tier": tier, "limits": LIMITS})
        for name, conf in listeners.items()
    ]
    return write_config(render_bootstrap(specs, path.parent / "envoy.sock"), path)


def idle_host() -> HostCapabilities:
    return HostCapabilities("l", "p", Grants(), Limits(), KvStore(1, 1))


@contextlib.asynccontextmanager
async def running(config: Path, tmp_path: Path) -> AsyncIterator[tuple[LightcellServer, grpc.aio.Channel]]:
    server = await LightcellServer.start(load_config(config), socket_path=tmp_path / "lc.sock")
    try:
        async with grpc.aio.insecure_channel(f"unix:{server.socket_path}") as ch:
            yield server, ch
    finally:
        await server.stop(grace=1.0)


@pytest.mark.parametrize("tier", ["wasmtime", pytest.param("microvm", marks=pytest.mark.kvm)])
async def test_a_reload_serves_new_streams_and_lets_open_ones_finish(
    tier: str, built_plugins: dict[str, Path], tmp_path: Path
) -> None:
    rw, path = built_plugins["rewrite"], tmp_path / "envoy.yaml"
    write(path, rw, tier, {"edge": "read=upper", "steady": "read=rot13", "gone": "read=pass"})
    async with running(path, tmp_path) as (server, ch):
        steady, old_edge, old_gone = (server.listeners[n].factory for n in ("steady", "edge", "gone"))
        kv = server.listeners["steady"].kv
        before = open_stream(ch, "edge")
        assert await send(before, b"Hello") == b"HELLO"
        leaving = open_stream(ch, "gone")
        assert await send(leaving, b"Bye") == b"Bye"

        write(path, rw, tier, {"edge": "read=lower", "steady": "read=rot13", "fresh": "read=number"})
        result = await server.reload()
        assert result.applied, result.error
        assert sorted(result.changes) == [
            "listener edge: changed", "listener fresh: added", "listener gone: removed",
        ]  # fmt: skip
        assert result.unchanged == 1
        # Unchanged: the same loaded plugin (no recompile, no pool reboot) and kv store.
        assert server.listeners["steady"].factory is steady and server.listeners["steady"].kv is kv

        # The open connection keeps its sandbox and behaviour; a new one gets the new policy.
        assert await send(before, b"World") == b"WORLD"
        after = open_stream(ch, "edge")
        assert await send(after, b"World") == b"world"
        fresh = open_stream(ch, "fresh")
        assert await send(fresh, b"a") == b"1:a"
        # A removed listener: its open stream finishes, a new one is refused as unknown.
        assert await send(leaving, b"Still") == b"Still"
        assert await refused(open_stream(ch, "gone")) is grpc.StatusCode.NOT_FOUND

        # The replaced plugins stay open while a stream holds them ...
        table = server.served.tcp
        assert table.retired == 2 and table.leases(server.listeners["edge"]) == 1
        await table.settled()
        assert (await old_edge.new_sandbox(idle_host())) is not None
        # ... and are closed once their last stream ended (pools and tickers released).
        for stream in (before, leaving, after, fresh):
            assert await finish(stream) is grpc.StatusCode.OK
        await table.settled()
        assert table.retired == 0
        for factory in (old_edge, old_gone):
            with pytest.raises(RuntimeError, match="closed"):
                await factory.new_sandbox(idle_host())
            if tier == "microvm":
                assert factory.pool.live == 0  # type: ignore[attr-defined]
        assert (await steady.new_sandbox(idle_host())) is not None  # still serving


async def test_a_file_check_refuses_changes_nothing(
    built_plugins: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rw, path = built_plugins["rewrite"], tmp_path / "envoy.yaml"
    write(path, rw, "wasmtime", {"edge": "read=upper"})
    async with running(path, tmp_path) as (server, ch):
        factory = server.listeners["edge"].factory
        bad_plugin = tmp_path / "broken.wasm"
        bad_plugin.write_bytes(b"\0asm\1\0\0\0\xff")  # a truncated section: the loader refuses it
        broken: dict[str, Callable[[], object]] = {
            "yaml": lambda: path.write_text("static_resources: [unclosed"),
            "field": lambda: path.write_text(path.read_text().replace("tier: wasmtime", "tier: quantum")),
            "plugin": lambda: write(path, bad_plugin, "wasmtime", {"edge": "read=lower"}),
        }
        for name, breaks in broken.items():
            write(path, rw, "wasmtime", {"edge": "read=upper"})
            breaks()
            with caplog.at_level(logging.ERROR, "lightcell.reload"):
                result = await server.reload()
            assert not result.applied and result.error, name
            # The very message `lightcell check` prints for this file.
            err = io.StringIO()
            with contextlib.redirect_stderr(err):  # check runs its own event loop: another thread
                assert await asyncio.to_thread(cli.main, ["check", "--envoy-config", str(path)]) == 1
            assert err.getvalue().strip() == f"lightcell: error: {result.error}", name
            assert result.error in caplog.text
            # Traffic continues on the running policy.
            assert server.listeners["edge"].factory is factory
            stream = open_stream(ch, "edge")
            assert await send(stream, b"ok") == b"OK"
            assert await finish(stream) is grpc.StatusCode.OK


async def test_reload_of_an_unchanged_file_reloads_a_rebuilt_plugin_only(
    built_plugins: dict[str, Path], tmp_path: Path
) -> None:
    plugin = tmp_path / "rw.wasm"
    plugin.write_bytes(built_plugins["rewrite"].read_bytes())
    path = tmp_path / "envoy.yaml"
    write(path, plugin, "wasmtime", {"edge": "read=upper"})
    async with running(path, tmp_path) as (server, _):
        factory = server.listeners["edge"].factory
        nothing = await server.reload()
        assert nothing.applied and nothing.changes == () and server.listeners["edge"].factory is factory
        plugin.write_bytes(plugin.read_bytes() + b"\0\x04name")  # another file: a custom section more
        rebuilt = await server.reload()
        assert rebuilt.changes == ("listener edge: changed",)
        assert server.listeners["edge"].factory is not factory


# ----------------------------------------------------------------------------- the pieces


@dataclass
class Closable:
    closed: int = 0
    events: list[str] = field(default_factory=list)

    async def aclose(self) -> None:
        self.closed += 1


@dataclass(frozen=True)
class Item:
    factory: Closable


async def test_a_table_closes_a_retired_factory_after_its_last_lease() -> None:
    a, b, c = Closable(), Closable(), Closable()
    table = PolicyTable({"x": Item(a), "y": Item(b)})
    with table.lease(table["x"]), table.lease(table["x"]):
        table.replace({"x": Item(c), "y": table["y"]})
        await table.settled()
        assert a.closed == 0 and b.closed == 0 and table.retired == 1
    await table.settled()
    assert a.closed == 1 and table.retired == 0
    table.replace({})  # no lease: closed at once
    await table.settled()
    assert (b.closed, c.closed) == (1, 1)
    await table.aclose()
    assert (a.closed, b.closed, c.closed) == (1, 1, 1)  # never twice


async def test_a_lease_handed_to_the_release_ends_after_it() -> None:
    a = Closable()
    table = PolicyTable({"x": Item(a)})
    released = asyncio.Event()

    async def session_release() -> None:
        await released.wait()

    with table.lease(table["x"]) as lease:
        # As serve_requests' finally does: the release starts (shielded) before the block ends.
        pending = asyncio.ensure_future(lease.after(session_release)())
    table.replace({})
    await asyncio.sleep(0)
    assert table.retired == 1 and a.closed == 0  # the block ended, the sandbox not yet released
    released.set()
    await pending
    await table.settled()
    assert a.closed == 1


async def test_requests_during_a_reload_fold_into_one_more() -> None:
    trigger, calls, gate = ReloadTrigger(), [], asyncio.Event()

    async def reload() -> None:
        calls.append(1)
        await gate.wait()

    trigger.request()  # before run: kept
    task = asyncio.create_task(trigger.run(reload))
    while not calls:
        await asyncio.sleep(0)
    trigger.request()
    trigger.request()
    gate.set()
    while len(calls) < 2:
        await asyncio.sleep(0)
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(calls) == 2
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_workers_each_reload_on_the_supervisors_sighup(
    built_plugins: dict[str, Path], tmp_path: Path
) -> None:
    rw, path = built_plugins["rewrite"], tmp_path / "envoy.yaml"
    write(path, rw, "wasmtime", {"edge": "read=upper"})
    base, log_path = tmp_path / "lc.sock", tmp_path / "supervisor.log"
    sockets = [worker_socket(base, i) for i in range(2)]
    argv = [*lightcell_command(), "serve", "--envoy-config", str(path), "--socket", str(base)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*argv, "--workers", "2", "--no-seccomp"], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        for sock in sockets:
            ready = await wait_for_unix_socket(sock, 120, lambda: proc.poll() is None)
            assert ready, log_path.read_text()

        async def through(sock: Path, data: bytes) -> bytes:
            async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
                stream = open_stream(ch, "edge")
                got = await send(stream, data)
                assert await finish(stream) is grpc.StatusCode.OK
                return got

        assert [await through(s, b"Hi") for s in sockets] == [b"HI", b"HI"]
        write(path, rw, "wasmtime", {"edge": "read=lower"})
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + IO_TIMEOUT
        while log_path.read_text().count("reload applied") < 2:
            assert time.monotonic() < deadline and proc.poll() is None, log_path.read_text()
            await asyncio.sleep(0.05)
        assert [await through(s, b"Hi") for s in sockets] == [b"hi", b"hi"]
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 60)


def test_watch_without_no_seccomp_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIGHTCELL_NO_SECCOMP", raising=False)
    assert cli.main(["serve", "--envoy-config", str(tmp_path / "any.yaml"), "--watch"]) == 1
    assert "--watch needs --no-seccomp" in capsys.readouterr().err
