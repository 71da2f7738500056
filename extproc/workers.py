"""`lightcell serve --workers N`: N complete `lightcell serve` processes, one supervisor.

Why: every KVM micro-VM registers an MMU notifier on its process's address
space, so each madvise/munmap/copy-on-write fault in a process walks all of
its VMs' notifiers (shared/notes/kvm-here.md, "Scaling trap"). Beyond about
100-200 live VMs per process that cost grows; several independent worker
processes, each with its own socket, keep every address space small. Envoy
balances across them when its `lightcell` cluster lists one endpoint per
worker socket (see `extproc.harness.lightcell_cluster`).

Each worker is a full `lightcell serve` with the same configuration and
options, and its own listening address:

- `--socket PATH`: worker i listens on `worker_socket(PATH, i)`: `.i` goes
  before a `.sock` suffix (`lc.sock` -> `lc.0.sock`, `lc.1.sock`, ...), and is
  appended to any other name (`lc` -> `lc.0`, `lc.1`, ...);
- `--port P`: worker i listens on 127.0.0.1:P+i (P must not be 0).

The supervisor starts worker 0 first and waits until it serves (so a bad
configuration is reported once, by that worker, and nothing else starts),
then the others. If any worker fails to start, the started ones are stopped
and the supervisor exits non-zero. SIGTERM/SIGINT are forwarded to every
worker, which drain gracefully (`--grace`); the supervisor waits for all.
SIGHUP is forwarded to every worker once all serve (earlier ones wait for
that): each re-reads the configuration itself (extproc/reload.py).
It restarts nothing: if a worker dies, the others are stopped and the
supervisor exits non-zero, so the orchestrator (systemd, Kubernetes,
compose) restarts the whole set.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

__all__ = ["Worker", "run_workers", "worker_command", "worker_socket"]

LOG = logging.getLogger("lightcell.workers")
POLL_S = 0.05


def worker_socket(path: Path, index: int) -> Path:
    """Worker `index`'s socket: `.index` before a `.sock` suffix, else appended."""
    if path.suffix == ".sock":
        return path.with_name(f"{path.stem}.{index}.sock")
    return path.with_name(f"{path.name}.{index}")


@dataclass(frozen=True)
class Worker:
    """One worker to start: its command line and where it listens."""

    index: int
    argv: Sequence[str]
    socket_path: Path | None
    port: int | None
    env: Mapping[str, str] | None = None
    """The worker's environment (None: ours); `--metrics-address` adds PROMETHEUS_MULTIPROC_DIR."""


def worker_command(
    envoy_config: Path,
    *,
    socket_path: Path | None,
    port: int | None,
    grace: float,
    max_connections: int,
    log_level: str,
    seccomp: bool = True,
) -> list[str]:
    """A single-process `lightcell serve` command line (this Python, this package)."""
    argv = [sys.executable, "-m", "extproc.cli", "serve", "--envoy-config", str(envoy_config)]
    argv += ["--no-socket"] if socket_path is None else ["--socket", str(socket_path)]
    if port is not None:
        argv += ["--port", str(port)]
    argv += ["--grace", str(grace), "--max-connections", str(max_connections), "--log-level", log_level]
    if not seccomp:
        argv.append("--no-seccomp")
    return argv


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the supervisor dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _accepts(worker: Worker) -> bool:
    """True once the worker's socket (or, without one, its TCP port) accepts a connection."""
    try:
        if worker.socket_path is not None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1.0)
                s.connect(str(worker.socket_path))
        else:
            assert worker.port is not None
            with socket.create_connection(("127.0.0.1", worker.port), timeout=1.0):
                pass
    except OSError:
        return False
    return True


def run_workers(
    workers: Sequence[Worker], spawn: Callable[[Worker], subprocess.Popen[bytes]] | None = None
) -> int:
    """Start the workers, serve until SIGTERM/SIGINT or until one exits; the exit code."""
    spawn = spawn or _spawn
    signalled: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        signalled.append(signum)

    hups: list[int] = []

    def on_hup(signum: int, _frame: FrameType | None) -> None:
        hups.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # Worker 0 alone first: a bad configuration fails it, reported once.
        for batch in (workers[:1], workers[1:]):
            started = [(w, spawn(w)) for w in batch]
            procs += [p for _, p in started]
            pending = list(started)
            while pending:
                if signalled:
                    return _stop(procs, signalled[0])
                for w, p in list(pending):
                    if p.poll() is not None:
                        LOG.error("worker %d exited with %s before serving; stopping the others", w.index,
                                  p.returncode)  # fmt: skip
                        _stop(procs, signal.SIGTERM)
                        return p.returncode if p.returncode > 0 else 1
                    if _accepts(w):
                        pending.remove((w, p))
                time.sleep(POLL_S)
        LOG.info("%d workers serving (pids %s)", len(procs), ", ".join(str(p.pid) for p in procs))
        while not signalled:
            if hups:
                hups.clear()
                _forward(procs, signal.SIGHUP)
            for w, p in zip(workers, procs, strict=True):
                if p.poll() is not None:
                    LOG.error("worker %d exited with %s; stopping the others (nothing is restarted)",
                              w.index, p.returncode)  # fmt: skip
                    _stop(procs, signal.SIGTERM)
                    return p.returncode if p.returncode > 0 else 1
            time.sleep(POLL_S * 4)
        return _stop(procs, signalled[0])
    finally:
        for proc in procs:  # only on an unexpected error: _stop has reaped the rest
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for s, handler in old.items():
            signal.signal(s, handler)


def _forward(procs: Sequence[subprocess.Popen[bytes]], signum: int) -> None:
    LOG.info("forwarding %s to %d worker(s)", signal.Signals(signum).name, len(procs))
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)


def _spawn(worker: Worker) -> subprocess.Popen[bytes]:
    LOG.info("starting worker %d on %s", worker.index, _where(worker))
    # Own session: a terminal's Ctrl-C reaches the supervisor only, which forwards it
    # once (a second SIGINT would cut a worker's graceful drain short).
    return subprocess.Popen(
        list(worker.argv), stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
        env=None if worker.env is None else dict(worker.env),
    )


def _where(worker: Worker) -> str:
    where = [str(worker.socket_path)] if worker.socket_path is not None else []
    if worker.port is not None:
        where.append(f"127.0.0.1:{worker.port}")
    return " and ".join(where)


def _stop(procs: Sequence[subprocess.Popen[bytes]], signum: int) -> int:
    """Send `signum` to every live worker, wait for all; 0 if all exited 0."""
    LOG.info("stopping %d worker(s) (%s)", len(procs), signal.Signals(signum).name)
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)
    codes = [proc.wait() for proc in procs]
    return next((code if code > 0 else 1 for code in codes if code != 0), 0)
