"""`lightcell serve` as a child process, and waiting for its socket.

`LightcellProcess` runs `lightcell serve` as a subprocess (so a test can kill
it mid-connection) and waits until its socket accepts connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from extproc.harness._proc import spawn, tail, terminate

__all__ = ["LightcellError", "LightcellProcess", "lightcell_command", "tiers_in_log", "wait_for_unix_socket"]


class LightcellError(RuntimeError):
    """`lightcell serve` exited or never opened its socket."""


def lightcell_command() -> list[str]:
    """How to run the `lightcell` CLI of this environment (console script, else the module)."""
    script = Path(sys.executable).parent / "lightcell"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "extproc.cli"]


async def wait_for_unix_socket(
    path: Path, timeout_s: float, alive: Callable[[], bool] = lambda: True
) -> bool:
    """True once `path` accepts a connection (existence alone is not enough)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        if await accepts(path):
            return True
        await asyncio.sleep(0.05)
    return False


async def accepts(path: Path) -> bool:
    """Whether a Unix socket at `path` accepts a connection now."""
    try:
        _, writer = await asyncio.open_unix_connection(str(path))
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


# extproc.plugins.load_all logs one such line per listener ("auto -> microvm (why)").
_TIER_LINE = re.compile(r"listener (\S+): plugin \S+, tier (?:\w+ -> )?(\w+)", re.M)


def tiers_in_log(log: str) -> dict[str, str]:
    """listener -> tier, from the lines `lightcell serve` logs as it loads each plugin."""
    return {m[1]: m[2] for m in _TIER_LINE.finditer(log)}


class LightcellProcess:
    """`lightcell serve --envoy-config CONFIG --socket SOCKET` as a subprocess."""

    def __init__(
        self,
        config_path: Path,
        socket_path: Path,
        log_path: Path,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config_path = config_path
        self.socket_path = socket_path
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.env = env
        """The process's whole environment (None: this one's)."""
        self._proc: asyncio.subprocess.Process | None = None
        self._killed: list[int] = []

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tiers(self) -> dict[str, str]:
        """listener -> the tier serve loaded its plugin in (from serve's start-up log)."""
        return tiers_in_log(self.log())

    async def start(self, timeout_s: float = 60.0) -> None:
        argv = [
            *lightcell_command(), "serve",
            "--envoy-config", str(self.config_path),
            "--socket", str(self.socket_path),
            *self.extra_args,
        ]  # fmt: skip
        # Readiness is "the socket accepts": a server still holding the path would pass for ours.
        if await accepts(self.socket_path):
            raise LightcellError(f"{self.socket_path} already accepts connections: another server holds it")
        self._proc = await spawn(argv, self.log_path, self.env)
        if not await wait_for_unix_socket(self.socket_path, timeout_s, lambda: self.running):
            code = self._proc.returncode
            await self.stop()
            state = f"exited with {code}" if code is not None else f"no socket after {timeout_s}s"
            raise LightcellError(f"lightcell serve {state}:\n{tail(self.log_path)}")

    def kill(self) -> None:
        """SIGKILL, as a crash would: no graceful stream shutdown (the supervisor's workers die
        with it, by PR_SET_PDEATHSIG; `stop` then waits until they are gone too)."""
        if self._proc is not None and self._proc.returncode is None:
            self._killed += _children(self._proc.pid)
            self._proc.kill()

    async def stop(self) -> int | None:
        if self._proc is None:
            return None
        code = await terminate(self._proc)
        # A killed worker's sockets close only once its exit completes (after its VMs' memory
        # is torn down): until then its socket still accepts connections.
        while self._killed:
            self._killed = [pid for pid in self._killed if _alive(pid)]
            await asyncio.sleep(0.05)
        return code

    async def __aenter__(self) -> LightcellProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Running or exiting; a zombie (its exit done, its files closed) is not. Every thread
    counts: a killed process's main thread can be a zombie while another thread still
    holds the process's files (its listening socket among them)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    return any(_task_running(task) for task in tasks)


def _task_running(task: Path) -> bool:
    try:
        state = (task / "stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
