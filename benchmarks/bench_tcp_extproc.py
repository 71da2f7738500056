"""Benchmark Lightcell over the real gRPC stream, and end to end through real Envoy. Prints; asserts nothing.

    python benchmarks/bench_tcp_extproc.py [--tier wasmtime] [--events 2000] [--conns 300]
                                           [--hold 200] [--rounds 5]

Part 1, a gRPC client talking straight to `lightcell serve`'s Unix socket (no Envoy),
rewrite plugin (read=upper), 1 KiB chunks:
- per-event latency p50/p99 on one stream (request written -> reply read), next to the
  same client against a bare grpc.aio servicer in its own process (no sandbox: the
  gRPC hop alone, benchmarks/_bare_extproc.py) measured in the same run;
- connections (streams, each with a fresh sandbox) set up per second: sequential, and
  with 32 in flight; a "connection" is open stream + one 1 KiB chunk + both end-of-streams;
- memory per open connection: Lightcell's RSS growth over --hold streams held open
  (each has processed one chunk, so its sandbox exists) divided by --hold.

Part 2, end to end on loopback, real Envoy (`--concurrency 1`) in front of an echo
server, interleaved rounds, medians over rounds:
- Envoy tcp_proxy alone (baseline) vs Envoy + ext_proc -> Lightcell -> rewrite plugin;
- 1 KiB ping-pong on one connection (p50/p99), and connection churn (conn/s);
- memory per open connection: RSS growth of Envoy (+ Lightcell) over --hold open
  connections that have each carried one 1 KiB round trip.
A ping-pong through Lightcell crosses the gRPC hop twice (read and write direction).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from envoy.service.network_ext_proc.v3 import network_external_processor_pb2 as pb
from envoy.service.network_ext_proc.v3 import network_external_processor_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from extproc.harness import (  # noqa: E402
    LISTENER_METADATA_KEY,
    EnvoyProcess,
    LightcellProcess,
    ListenerSpec,
    Upstream,
    render_bootstrap,
    write_config,
)
from plugins import build as plugin_build  # noqa: E402

CHUNK = b"x" * 1024
GRPC_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def pct(samples: Sequence[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# ----------------------------------------------------------------------------- part 1: gRPC direct


class Stream:
    """One network ext_proc stream, as Envoy would open it for one downstream connection."""

    def __init__(self, stub: pb_grpc.NetworkExternalProcessorStub, listener: str) -> None:
        self.call = stub.Process(metadata=((LISTENER_METADATA_KEY, listener),))

    async def event(self, data: bytes, eos: bool = False, write: bool = False) -> pb.ProcessingResponse:
        d = pb.Data(data=data, end_of_stream=eos)
        await self.call.write(
            pb.ProcessingRequest(write_data=d) if write else pb.ProcessingRequest(read_data=d)
        )
        resp = await self.call.read()
        if resp is grpc.aio.EOF:
            raise RuntimeError("stream ended early")
        assert isinstance(resp, pb.ProcessingResponse)
        return resp

    async def finish(self) -> None:
        await self.event(b"", eos=True)
        await self.event(b"", eos=True, write=True)
        await self.call.done_writing()
        while await self.call.read() is not grpc.aio.EOF:
            pass


async def event_latencies(socket_path: Path, events: int) -> list[float]:
    """Per-event round trips of 1 KiB read chunks on one stream (after 100 warm-up events)."""
    async with grpc.aio.insecure_channel(f"unix:{socket_path}", options=GRPC_OPTIONS) as channel:
        s = Stream(pb_grpc.NetworkExternalProcessorStub(channel), "lightcell")
        reply = await s.event(CHUNK)
        assert reply.read_data.data == CHUNK.upper(), reply
        for _ in range(100):
            await s.event(CHUNK)
        lat = []
        for _ in range(events):
            t = time.perf_counter()
            await s.event(CHUNK)
            lat.append(time.perf_counter() - t)
        await s.finish()
        return lat


async def bare_latencies(workdir: Path, events: int) -> list[float]:
    """The same measurement against a bare servicer (no sandbox) in its own process."""
    sock = workdir / "bare.sock"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("_bare_extproc.py")), str(sock)
    )
    try:
        for _ in range(200):  # ready when it accepts, not when the file appears
            try:
                _, w = await asyncio.open_unix_connection(str(sock))
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        return await event_latencies(sock, events)
    finally:
        proc.terminate()
        await proc.wait()


async def bench_grpc(socket_path: Path, pid: int, events: int, conns: int, hold: int) -> None:
    rounds = 3  # interleaved, medians: one round in several runs slow across the board here
    ours: list[list[float]] = []
    bare: list[list[float]] = []
    for _ in range(rounds):
        ours.append(await event_latencies(socket_path, events))
        bare.append(await bare_latencies(socket_path.parent, events))
    for label, runs in (("Lightcell, rewrite plugin", ours), ("bare grpc.aio servicer (baseline)", bare)):
        print(
            f"  per-event latency, 1 KiB, {label:34s} p50 "
            f"{statistics.median(pct(r, 50) for r in runs) * 1e6:7.1f} us   "
            f"p99 {statistics.median(pct(r, 99) for r in runs) * 1e6:7.1f} us   (n={events} x {rounds})"
        )
    p50_ours = statistics.median(pct(r, 50) for r in ours)
    p50_bare = statistics.median(pct(r, 50) for r in bare)
    print(f"  sandbox + policy cost over the bare hop: {(p50_ours - p50_bare) * 1e6:+.1f} us p50 "
          f"(ratio {p50_ours / p50_bare:.2f}x)")
    async with grpc.aio.insecure_channel(f"unix:{socket_path}", options=GRPC_OPTIONS) as channel:
        stub = pb_grpc.NetworkExternalProcessorStub(channel)

        async def one_conn() -> None:
            st = Stream(stub, "lightcell")
            await st.event(CHUNK)
            await st.finish()

        async def limited(sem: asyncio.Semaphore) -> None:
            async with sem:
                await one_conn()

        for inflight in (1, 32):
            sem = asyncio.Semaphore(inflight)
            t = time.perf_counter()
            await asyncio.gather(*(limited(sem) for _ in range(conns)))
            dt = time.perf_counter() - t
            print(
                f"  connections set up per second, {inflight:2d} in flight  "
                f"{conns / dt:8.0f} conn/s   (n={conns})"
            )

        await asyncio.sleep(0.5)
        before = rss_bytes(pid)
        streams = [Stream(stub, "lightcell") for _ in range(hold)]
        await asyncio.gather(*(st.event(CHUNK) for st in streams))
        await asyncio.sleep(0.5)
        after = rss_bytes(pid)
        print(
            f"  memory per open connection              {(after - before) / hold / 1024:8.1f} KiB   "
            f"(RSS {before >> 20} -> {after >> 20} MiB over {hold} open streams)"
        )
        await asyncio.gather(*(st.finish() for st in streams))


# ----------------------------------------------------------------------------- part 2: through Envoy


async def ping_pong(port: int, n: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    for i in range(n + 20):
        t = time.perf_counter()
        writer.write(CHUNK)
        await reader.readexactly(len(CHUNK))
        if i >= 20:
            out.append(time.perf_counter() - t)
    writer.close()
    return out


async def churn(port: int, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(CHUNK)
        await reader.readexactly(len(CHUNK))
        writer.close()
        await writer.wait_closed()
    return n / (time.perf_counter() - t)


async def memory_per_connection(port: int, pids: Sequence[int], hold: int) -> float:
    """RSS growth (summed over `pids`) per open, active downstream connection, in bytes."""
    await asyncio.sleep(0.5)
    before = sum(rss_bytes(p) for p in pids)
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(hold)]
    for _, writer in conns:
        writer.write(CHUNK)
    for reader, _ in conns:
        await reader.readexactly(len(CHUNK))
    await asyncio.sleep(0.5)
    after = sum(rss_bytes(p) for p in pids)
    for _, writer in conns:
        writer.close()
    await asyncio.sleep(0.5)
    return (after - before) / hold


async def bench_envoy(
    envoy: EnvoyProcess, lightcell_pid: int, rounds: int, events: int, conns: int, hold: int
) -> None:
    names = {"plain": "Envoy tcp_proxy alone", "lightcell": "Envoy + Lightcell (rewrite read=upper)"}
    p50: dict[str, list[float]] = {k: [] for k in names}
    p99: dict[str, list[float]] = {k: [] for k in names}
    cps: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(rounds):
        for name in names:  # interleaved: a slow round hits both configurations
            lat = await ping_pong(envoy.ports[name], events)
            p50[name].append(pct(lat, 50))
            p99[name].append(pct(lat, 99))
            cps[name].append(await churn(envoy.ports[name], conns))
    assert envoy.pid is not None
    pids = {"plain": [envoy.pid], "lightcell": [envoy.pid, lightcell_pid]}
    for name, label in names.items():
        mem = await memory_per_connection(envoy.ports[name], pids[name], hold)
        print(
            f"  {label:40s} p50 {statistics.median(p50[name]) * 1e6:8.1f} us   "
            f"p99 {statistics.median(p99[name]) * 1e6:8.1f} us   "
            f"{statistics.median(cps[name]):7.0f} conn/s   {mem / 1024:6.1f} KiB/conn"
        )


# ----------------------------------------------------------------------------- main


async def main_async(opts: argparse.Namespace) -> None:
    rewrite = plugin_build.build("rewrite")
    with tempfile.TemporaryDirectory(prefix="bench-extproc-") as tmp:
        workdir = Path(tmp)
        socket_path = workdir / "lightcell.sock"
        async with Upstream() as echo:
            policy = {
                "plugin": str(rewrite),
                "config": "read=upper,write=pass",
                "tier": opts.tier,
                "failure_mode": "close",
                "grants": [],
            }
            specs = [ListenerSpec("lightcell", echo.port, policy), ListenerSpec("plain", echo.port)]
            config = write_config(render_bootstrap(specs, socket_path), workdir / "envoy.yaml")
            lightcell = LightcellProcess(config, socket_path, workdir / "lightcell.log")
            envoy = EnvoyProcess(config, workdir)
            try:
                await lightcell.start()
                await envoy.start()
                assert lightcell.pid is not None
                print(f"tier {opts.tier}, 1 KiB chunks, loopback, Envoy --concurrency 1")
                print("1. gRPC client -> Lightcell socket (no Envoy)")
                await bench_grpc(socket_path, lightcell.pid, opts.events, opts.conns, opts.hold)
                print(f"2. end to end through Envoy (medians of {opts.rounds} interleaved rounds)")
                await bench_envoy(
                    envoy, lightcell.pid, opts.rounds, opts.events // 4, opts.conns // 3, opts.hold
                )
            finally:
                await envoy.stop()
                await lightcell.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", default="wasmtime", choices=["wasmtime", "microvm", "auto"])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--conns", type=int, default=300)
    parser.add_argument("--hold", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main_async(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
