"""Micro-VM builds that tier auto does not wait for, run beside the supervisor.

A Python or JavaScript plugin's first micro-VM build takes minutes (CPython, SpiderMonkey
through wasm2c and zig). Rather than serve nothing meanwhile, a supervised worker serves such
a plugin in wasmtime (extproc.plugins, `awaiting_compile`) and says so in its serving
message. The supervisor then starts one build job, `python -m extproc.background_compile`:
a child process at low priority in its own process group (zig's compilers die with it) that
reads the configuration, compiles every plugin still waiting (extproc.plugins.compile_pending)
and exits 0 if it built any. Then the supervisor reloads: the new workers find the images
cached and run those plugins in the micro-VM, with no gap for Envoy (extproc/workers.py).

The supervisor itself parses no plugin and opens no /dev/kvm for this: the job does, as a
worker does before it confines itself. The worker's word is only a hint (plugins run there):
what is built is what the job's own reading of the file says. One job per configuration
(policies and plugin bytes): a build that failed is logged, its plugin stays in wasmtime
(one wall, warned about), and it is tried again only once the configuration or a plugin changes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from extproc.child import die_with_parent

__all__ = ["NOTHING_BUILT", "STARTED", "BackgroundBuild", "build_pending", "job_command", "main"]

LOG = logging.getLogger("lightcell.compile")
NICENESS = 10
"""Builds yield the CPU to the workers serving traffic."""
STOP_GRACE_S = 5.0
STARTED = "building the micro-VM images tier auto waits for, in the background"
"""Logged as a job starts (the demo looks for it)."""
NOTHING_BUILT = 3
"""The job's exit code when there was nothing to build, or every build failed."""


@dataclass
class BackgroundBuild:
    """The supervisor's side: at most one job at a time, at most one per configuration."""

    command: Callable[[], list[str]]
    """The job's command line (the supervisor's config path, log level and format)."""
    env: Mapping[str, str] | None = None
    _proc: subprocess.Popen[bytes] | None = None
    _started: float = 0.0
    _tried: set[Hashable] = field(default_factory=set)

    @property
    def busy(self) -> bool:
        return self._proc is not None

    def start(self, configuration: Hashable) -> bool:
        """Start a job for this configuration unless one runs or this one was tried."""
        if self._proc is not None or configuration in self._tried:
            return False
        self._tried.add(configuration)
        try:
            self._proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_child_setup, env=None if self.env is None else dict(self.env),
            )  # fmt: skip
        except OSError as e:
            LOG.error("cannot start the background micro-VM build: %s", e)
            return False
        self._started = time.monotonic()
        LOG.info("%s (pid %d)", STARTED, self._proc.pid)
        return True

    def poll(self) -> bool:
        """True once, when a job has ended having built something: time to reload."""
        proc = self._proc
        if proc is None or proc.poll() is None:
            return False
        self._proc = None
        seconds = time.monotonic() - self._started
        if proc.returncode == 0:
            LOG.info("background micro-VM build done in %.0f s", seconds)
            return True
        if proc.returncode != NOTHING_BUILT:
            LOG.error("background micro-VM build exited with %s after %.0f s", proc.returncode, seconds)
        return False

    def stop(self) -> None:
        """Cut a running job short: its whole process group, waited for."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        group = proc.pid  # its own session: the group outlives the job until zig has exited
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while _group_alive(group) and time.monotonic() < deadline:
            proc.poll()
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        proc.wait()
        while _group_alive(group):  # SIGKILLed: gone within moments
            time.sleep(0.02)
        LOG.info("stopped the background micro-VM build (pid %d)", proc.pid)


def job_command(envoy_config: Path, log_level: str, log_format: str) -> Callable[[], list[str]]:
    def command() -> list[str]:
        return [sys.executable, "-m", "extproc.background_compile", "--envoy-config", str(envoy_config),
                "--log-level", log_level, "--log-format", log_format]  # fmt: skip

    return command


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _child_setup() -> None:
    """In the job before exec: killed with the supervisor, and at low priority."""
    die_with_parent()
    os.nice(NICENESS)


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
        except CompileError as e:
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
    return build_pending(args.envoy_config)


if __name__ == "__main__":
    raise SystemExit(main())
