"""Child processes of the harness: spawned with their output in a log file,
killed with this process (atexit, and PR_SET_PDEATHSIG if Python cleanup never
runs), terminated with a grace period."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from extproc.child import die_with_parent

__all__ = ["spawn", "tail", "terminate"]


_LIVE: set[int] = set()  # pids the harness started and has not reaped yet


def _kill_leftovers() -> None:
    for pid in list(_LIVE):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


atexit.register(_kill_leftovers)


async def spawn(
    argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            preexec_fn=die_with_parent,
        )
    _LIVE.add(proc.pid)
    return proc


async def terminate(proc: asyncio.subprocess.Process, grace_s: float = 5.0) -> int:
    """SIGTERM, then SIGKILL after `grace_s`; returns the exit code."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    _LIVE.discard(proc.pid)
    assert proc.returncode is not None
    return proc.returncode


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
