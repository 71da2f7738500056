"""Live reload by the supervisor, with the workers confined (seccomp, the default): a real
`lightcell serve`, real plugins, a gRPC client playing Envoy.

A reload starts new workers on the new file and retires the old ones: new streams get the
new policies (a new and a changed listener served, a removed one refused), open streams
keep the plugin they started with on the old worker, which exits once they end; a file
`check` refuses (the YAML, a field, a plugin only the new worker's loader rejects) changes
nothing and is logged with check's very message; metrics sum across the swap; a worker that
dies after a reload still stops the supervisor. The Envoy end-to-end test is
tests/test_envoy_reload.py; the leases that keep a plugin open are tested at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.network_ext_proc.v3 import network_external_processor_pb2 as pb
from envoy.service.network_ext_proc.v3 import network_external_processor_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from extproc import cli
from extproc.harness import (
    LightcellProcess,
    ListenerSpec,
    lightcell_command,
    render_bootstrap,
    wait_for_unix_socket,
    write_config,
)
from extproc.harness.upstream import free_port
from extproc.policy_table import PolicyTable
from extproc.reuseport import steer_to_newest
from extproc.workers import temporary_socket, worker_socket

IO_TIMEOUT = 30.0
Stream = Any  # grpc.aio.StreamStreamCall (grpc ships no type stubs)
LIMITS = {"memory_mb": 16, "event_cpu_ms": 2000}  # room on 2 busy cores; nothing here is timed
REFUSED = "reload refused, still serving the previous configuration:\n"


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


async def refused(stream: Stream) -> tuple[grpc.StatusCode, str]:
    """The status of a stream the server ends at its start (no write: one racing the server's
    end fails on the client as INTERNAL)."""
    code = await asyncio.wait_for(stream.code(), IO_TIMEOUT)
    return code, await stream.details()


async def through(sock: Path, listener: str, data: bytes) -> bytes:
    """One stream on a fresh connection (to whichever worker the path leads to now)."""
    async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
        stream = open_stream(ch, listener)
        got = await send(stream, data)
        assert await finish(stream) is grpc.StatusCode.OK
        return got


def write(path: Path, plugin: Path, tier: str, listeners: dict[str, str]) -> Path:
    """An Envoy config: one rewrite listener per name, with that plugin config."""
    specs = [
        ListenerSpec(name, 9, {"plugin": str(plugin), "config": conf, "tier": tier, "limits": LIMITS})
        for name, conf in listeners.items()
    ]
    return write_config(render_bootstrap(specs, path.parent / "envoy.sock"), path)


def workers_of(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def until(check: Callable[[], bool], what: str, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + IO_TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen; lightcell's log:\n{log()[-4000:]}")
        await asyncio.sleep(0.05)


@dataclass
class Served:
    lightcell: LightcellProcess
    sock: Path
    reloads: int = 0
    refusals: int = 0
    pids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.lightcell.pid is not None
        return self.lightcell.pid

    async def reload(self, applied: bool = True) -> None:
        """SIGHUP, and wait until the supervisor logged the outcome."""
        os.kill(self.pid, signal.SIGHUP)
        if applied:
            self.reloads += 1
            await until(lambda: self.lightcell.log().count("reload applied") == self.reloads, "a reload",
                        self.lightcell.log)  # fmt: skip
        else:
            self.refusals += 1
            await until(lambda: self.lightcell.log().count("reload refused") == self.refusals, "a refusal",
                        self.lightcell.log)  # fmt: skip


@contextlib.asynccontextmanager
async def serving(config: Path, tmp_path: Path, *extra: str) -> AsyncIterator[Served]:
    sock = tmp_path / "lc.sock"
    lightcell = LightcellProcess(config, sock, tmp_path / "lightcell.log", extra)
    await lightcell.start(timeout_s=120)
    try:
        yield Served(lightcell, sock)
    except BaseException:
        await lightcell.stop()
        raise
    assert await lightcell.stop() == 0, lightcell.log()[-3000:]
    assert not sock.exists() and not temporary_socket(sock).exists()


@pytest.mark.parametrize("tier", ["wasmtime", pytest.param("microvm", marks=pytest.mark.kvm)])
async def test_a_reload_serves_new_streams_and_lets_open_ones_finish(
    tier: str, built_plugins: dict[str, Path], tmp_path: Path
) -> None:
    rw, path = built_plugins["rewrite"], tmp_path / "envoy.yaml"
    write(path, rw, tier, {"edge": "read=upper", "steady": "read=rot13", "gone": "read=pass"})
    async with serving(path, tmp_path) as served:
        [old_worker] = workers_of(served.pid)
        async with grpc.aio.insecure_channel(f"unix:{served.sock}") as ch:
            before = open_stream(ch, "edge")
            assert await send(before, b"Hello") == b"HELLO"
            leaving = open_stream(ch, "gone")
            assert await send(leaving, b"Bye") == b"Bye"

            write(path, rw, tier, {"edge": "read=lower", "steady": "read=rot13", "fresh": "read=number"})
            await served.reload()
            log = served.lightcell.log()
            for line in ("listener edge: changed", "listener fresh: added", "listener gone: removed"):
                assert f"reload: {line}" in log
            assert "3 change(s), 1 policy(ies) unchanged" in log
            [new_worker] = [p for p in workers_of(served.pid) if p != old_worker]
            assert f"worker 0 (pid {new_worker}) now serves on {served.sock}" in log

            # The open streams keep their sandbox and behaviour on the old worker ...
            assert await send(before, b"World") == b"WORLD"
            assert await send(leaving, b"Still") == b"Still"
            # ... new connections reach the new worker and its policies.
            assert await through(served.sock, "edge", b"World") == b"world"
            assert await through(served.sock, "fresh", b"a") == b"1:a"
            assert await through(served.sock, "steady", b"abc") == b"nop"
            async with grpc.aio.insecure_channel(f"unix:{served.sock}") as fresh_ch:
                code, details = await refused(open_stream(fresh_ch, "gone"))
                assert code is grpc.StatusCode.NOT_FOUND, details

            # The old worker exits once its last stream ended (releasing its pools), not before.
            assert await finish(before) is grpc.StatusCode.OK
            assert not gone(old_worker)
            assert await finish(leaving) is grpc.StatusCode.OK
        await until(lambda: gone(old_worker), "the old worker's exit", served.lightcell.log)
        # The supervisor logs the exit just after reaping it (which is when it is gone).
        said = f"retired worker pid {old_worker} finished its open streams (exit code 0)"
        await until(lambda: said in served.lightcell.log(), "the supervisor's word", served.lightcell.log)
        assert workers_of(served.pid) == [new_worker]


async def test_sighup_with_a_bad_file_keeps_the_running_config(
    built_plugins: dict[str, Path], tmp_path: Path
) -> None:
    rw, path = built_plugins["rewrite"], tmp_path / "envoy.yaml"
    write(path, rw, "wasmtime", {"edge": "read=upper"})
    bad_plugin = tmp_path / "broken.wasm"
    bad_plugin.write_bytes(b"\0asm\1\0\0\0\xff")  # a truncated section: only a loader sees it
    broken: dict[str, Callable[[], object]] = {
        "yaml": lambda: path.write_text("static_resources: [unclosed"),
        "field": lambda: path.write_text(path.read_text().replace("tier: wasmtime", "tier: quantum")),
        "plugin": lambda: write(path, bad_plugin, "wasmtime", {"edge": "read=lower"}),
    }
    async with serving(path, tmp_path) as served:
        [worker] = workers_of(served.pid)
        for name, breaks in broken.items():
            breaks()
            await served.reload(applied=False)
            # The very message `lightcell check` prints for this file.
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                assert await asyncio.to_thread(cli.main, ["check", "--envoy-config", str(path)]) == 1
            message = err.getvalue().strip().removeprefix("lightcell: error: ")
            assert f"{REFUSED}{message}" in served.lightcell.log(), name
            # The same worker serves the running policy; a refused worker left no socket behind.
            assert workers_of(served.pid) == [worker], name
            assert await through(served.sock, "edge", b"ok") == b"OK", name
            assert not temporary_socket(served.sock).exists(), name
        write(path, rw, "wasmtime", {"edge": "read=lower"})  # fixed: applies
        await served.reload()
        assert await through(served.sock, "edge", b"OK") == b"ok"


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == f"lightcell_{name}" and want <= ls)


async def test_metrics_sum_across_a_reload_and_sigterm_cuts_a_drain_short(
    built_plugins: dict[str, Path], tmp_path: Path
) -> None:
    rw, path = built_plugins["rewrite"], tmp_path / "envoy.yaml"
    write(path, rw, "wasmtime", {"edge": "read=upper"})
    port, sock, log_path = free_port(), tmp_path / "lc.sock", tmp_path / "lightcell.log"
    argv = [*lightcell_command(), "serve", "--envoy-config", str(path), "--socket", str(sock)]
    argv += ["--metrics-address", f"127.0.0.1:{port}", "--grace", "1"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert await wait_for_unix_socket(sock, 120, lambda: proc.poll() is None), log_path.read_text()
        [old_worker] = workers_of(proc.pid)
        async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
            held = open_stream(ch, "edge")
            assert await send(held, b"one") == b"ONE"
            write(path, rw, "wasmtime", {"edge": "read=lower"})
            proc.send_signal(signal.SIGHUP)
            await until(lambda: "reload applied" in log_path.read_text(), "a reload", log_path.read_text)
            assert await through(sock, "edge", b"TWO") == b"two"

            def summed(s: dict[Any, float]) -> bool:
                return (
                    value(s, "connections_total", listener="edge") == 2  # one per worker, both kept
                    and value(s, "connections_active", listener="edge") == 1  # the held one
                    and value(s, "workers_serving") == 1  # the retiring worker counts no more
                )

            await until(lambda: summed(scrape(port)), "one scrape of both workers", log_path.read_text)
            assert value(scrape(port), "reloads_total", result="applied") == 1
            # SIGTERM while the old worker drains: --grace bounds it, everyone exits cleanly.
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 60) == 0, log_path.read_text()[-3000:]
            assert gone(old_worker)
            assert await held.code() is not grpc.StatusCode.OK  # cut after the grace
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not sock.exists()


async def test_every_worker_reloads_and_a_dead_one_still_stops_the_supervisor(
    built_plugins: dict[str, Path], tmp_path: Path
) -> None:
    rw, path = built_plugins["rewrite"], tmp_path / "envoy.yaml"
    write(path, rw, "wasmtime", {"edge": "read=upper"})
    base, log_path = tmp_path / "lc.sock", tmp_path / "supervisor.log"
    sockets = [worker_socket(base, i) for i in range(2)]
    argv = [*lightcell_command(), "serve", "--envoy-config", str(path), "--socket", str(base)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen([*argv, "--workers", "2"], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        for sock in sockets:
            assert await wait_for_unix_socket(sock, 120, lambda: proc.poll() is None), log_path.read_text()
        assert [await through(s, "edge", b"Hi") for s in sockets] == [b"HI", b"HI"]
        old = set(workers_of(proc.pid))
        write(path, rw, "wasmtime", {"edge": "read=lower"})
        proc.send_signal(signal.SIGHUP)
        await until(lambda: "reload applied" in log_path.read_text(), "a reload", log_path.read_text)
        assert [await through(s, "edge", b"Hi") for s in sockets] == [b"hi", b"hi"]
        await until(lambda: all(gone(p) for p in old), "the old workers' exit", log_path.read_text)
        new = workers_of(proc.pid)
        assert len(new) == 2 and not old & set(new)
        os.kill(new[0], signal.SIGKILL)  # a crash after the reload: handled as before it
        assert await asyncio.to_thread(proc.wait, 60) == 1, log_path.read_text()
        assert "exited with -9; stopping the others" in log_path.read_text()
        assert gone(new[1]) and not any(s.exists() for s in sockets)
    finally:
        if proc.poll() is None:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 60)


def test_a_reuseport_group_sends_new_connections_to_the_newest_listener() -> None:
    def listener(port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)  # as gRPC: v4-mapped on AF_INET6
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("::ffff:127.0.0.1", port))
        s.listen(64)
        s.setblocking(False)
        return s

    old = listener(0)
    port = old.getsockname()[1]
    try:
        assert steer_to_newest(port)  # as the first worker does at start
        with listener(port) as new:  # a reload's worker binds beside it
            clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
            for _ in clients:
                new.accept()[0].close()  # every one is queued at the newest listener ...
            with pytest.raises(BlockingIOError):
                old.accept()  # ... none at the old one, whose close would reset them
            for c in clients:
                c.close()
        with socket.create_connection(("127.0.0.1", port)):  # one listener: the kernel's hash
            old.accept()[0].close()
    finally:
        old.close()


# ----------------------------------------------------------------------------- the leases


@dataclass
class Closable:
    closed: int = 0

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
