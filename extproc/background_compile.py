"""Micro-VM builds that tier auto does not wait for, run beside the supervisor.

A Python or JavaScript plugin's first micro-VM build takes minutes (CPython, SpiderMonkey
through wasm2c and zig). Rather than serve nothing meanwhile, a supervised worker serves such
a plugin in wasmtime (extproc.plugins, `awaiting_compile`) and says so in its serving
message. The supervisor then starts one build job, `python -m extproc.background_compile`:
a child process at low priority, first in line for the OOM killer, in its own process group
(on SIGTERM, also when the supervisor dies, it stops its compilers and removes its temporary
files) that reads the configuration, compiles every plugin still waiting
(extproc.plugins.compile_pending) and exits 0 if it built any. Then the supervisor reloads,
if the file is still the one it applied: the new workers find the images cached and run
those plugins in the micro-VM, with no gap for Envoy (extproc/workers.py).

The supervisor itself parses no plugin and opens no /dev/kvm for this: the job does, as a
worker does before it confines itself. The worker's word is only a hint (plugins run there):
what is built is what the job's own reading of the file says. One job per configuration
(policies and plugin bytes): a build that failed is logged, its plugin stays in wasmtime
(one wall, warned about), and it is tried again after a change or an operator's reload.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from extproc.child import die_with_parent

__all__ = ["NOTHING_BUILT", "STARTED", "BackgroundBuild", "JobEnd", "build_pending", "job_command", "main"]

LOG = logging.getLogger("lightcell.compile")
NICENESS = 10
"""Builds yield the CPU to the workers serving traffic."""
STOP_GRACE_S = 5.0
STARTED = "building the micro-VM images tier auto waits for, in the background"
"""Logged as a job starts (the demo looks for it)."""
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
NOTHING_BUILT = 3
"""The job's exit code when there was nothing to build, or every build failed."""


class JobEnd(enum.Enum):
    """How a build job ended (BackgroundBuild.poll)."""

    BUILT = "built"
    """At least one image built: time to reload."""
    NOTHING = "nothing"
    """Nothing to build, every build failed, or the job itself failed."""


@dataclass
class BackgroundBuild:
    """The supervisor's side: at most one job at a time, at most one per configuration."""

    command: Callable[[], list[str]]
    """The job's command line (the supervisor's config path, log level and format)."""
    env: Mapping[str, str] | None = None
    _proc: subprocess.Popen[bytes] | None = None
    _started: float = 0.0
    _tried: set[str] = field(default_factory=set)
    """Digests of the configurations a job ran for."""

    @property
    def busy(self) -> bool:
        return self._proc is not None

    def start(self, configuration: str) -> bool:
        """Start a job for this configuration (its policies and plugin digests, as text)
        unless one runs or this one was tried."""
        key = hashlib.sha256(configuration.encode()).hexdigest()
        if self._proc is not None or key in self._tried:
            return False
        self._tried.add(key)
        env = dict(os.environ if self.env is None else self.env)
        env.pop(METRICS_DIR_ENV, None)  # the job serves nothing: no metrics files of its own
        try:
            self._proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_child_setup, env=env,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as e:
            LOG.error("cannot start the background micro-VM build: %s", e)
            return False
        self._started = time.monotonic()
        LOG.info("%s (pid %d)", STARTED, self._proc.pid)
        return True

    def forget(self) -> None:
        """An operator's reload: every configuration may be tried again."""
        self._tried.clear()

    def poll(self) -> JobEnd | None:
        """How the job ended, once; None while it runs or when there is none."""
        proc = self._proc
        if proc is None or proc.poll() is None:
            return None
        self._proc = None
        seconds = time.monotonic() - self._started
        if proc.returncode == 0:
            LOG.info("background micro-VM build done in %.0f s", seconds)
            return JobEnd.BUILT
        if proc.returncode != NOTHING_BUILT:
            LOG.error("background micro-VM build exited with %s after %.0f s", proc.returncode, seconds)
        return JobEnd.NOTHING

    def stop(self) -> None:
        """Cut a running job short: SIGTERM to its process group (the job removes its temporary
        files and stops its compilers), SIGKILL after STOP_GRACE_S; each wait is bounded."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        group = proc.pid  # its own session: the group outlives the job until zig has exited
        for signum in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signum)
            if _wait_group(proc, group, STOP_GRACE_S):
                LOG.info("stopped the background micro-VM build (pid %d)", proc.pid)
                return
        LOG.warning("the background micro-VM build (process group %d) did not end", group)


def job_command(envoy_config: Path, log_level: str, log_format: str) -> Callable[[], list[str]]:
    def command() -> list[str]:
        return [sys.executable, "-m", "extproc.background_compile", "--envoy-config", str(envoy_config),
                "--log-level", log_level, "--log-format", log_format]  # fmt: skip

    return command


def _wait_group(proc: subprocess.Popen[bytes], group: int, timeout: float) -> bool:
    """True once the job and every process of its group have ended (within `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()  # reaps the job; its children, if they were handed to us, in _group_running
        if proc.returncode is not None and not _group_running(group):
            return True
        time.sleep(0.02)
    return False


def _group_running(group: int) -> bool:
    """Whether a process of `group` is still running. A zombie is not: it is reaped here if it
    was handed to us (the supervisor as PID 1 or subreaper), else its parent reaps it."""
    running = False
    me = os.getpid()
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        state, ppid, pgrp = fields[0], int(fields[1]), int(fields[2])
        if pgrp != group:
            continue
        if state not in ("Z", "X"):
            running = True
        elif ppid == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(stat_file.parent.name), os.WNOHANG)
    return running


def _child_setup() -> None:
    """In the job before exec: told to stop (SIGTERM) when the supervisor dies, at low
    priority, and the first a memory shortage kills (before any worker)."""
    die_with_parent(signal.SIGTERM)
    os.nice(NICENESS)
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")


# --------------------------------------------------------------------------------- the job


def build_pending(envoy_config: Path) -> int:
    """Compile every plugin of the file that tier auto serves in wasmtime until it is built;
    the exit code (0: built at least one)."""
    from extproc.config import ConfigError, load_config
    from extproc.plugins import compile_pending
    from vmm.microvm.compile import CompileError, compile_plugin

    try:
        pending = compile_pending(load_config(envoy_config))
    except ConfigError as e:
        LOG.error("background micro-VM build: %s", e)
        return NOTHING_BUILT
    built = 0
    for path in pending:
        LOG.info("compiling %s for the micro-VM (served in wasmtime until then)", path)
        try:
            result = compile_plugin(path, world=None)
        except (CompileError, OSError) as e:
            LOG.error("micro-VM build of %s failed: it stays in wasmtime, only the wasm wall up: %s", path, e)
            continue
        built += 1
        LOG.info("micro-VM build of %s done in %.0f s", path, result.seconds)
    return 0 if built else NOTHING_BUILT


def main(argv: list[str] | None = None) -> int:
    from extproc.logsetup import configure

    summary = (__doc__ or "").splitlines()[0]
    ap = argparse.ArgumentParser(prog="python -m extproc.background_compile", description=summary)
    ap.add_argument("--envoy-config", type=Path, required=True)
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--log-format", choices=("text", "json"), default="text")
    args = ap.parse_args(argv)
    configure(args.log_level, args.log_format)
    # Every temporary build directory goes under one of the job's own (a CPython build's hold
    # hundreds of MB), so a stop can remove them all without unwinding the compiler's threads.
    scratch = Path(tempfile.mkdtemp(prefix="lc-build-"))
    tempfile.tempdir = str(scratch)
    signal.signal(signal.SIGTERM, lambda _s, _f: _stop_now(scratch))
    try:
        return build_pending(args.envoy_config)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _stop_now(scratch: Path) -> None:
    """SIGTERM (the supervisor stops, or died): stop every compiler this job started, remove
    its files and exit at once (unwinding would let queued compiles start)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(0, signal.SIGTERM)
    shutil.rmtree(scratch, ignore_errors=True)
    os._exit(128 + signal.SIGTERM)


if __name__ == "__main__":
    raise SystemExit(main())
