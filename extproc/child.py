"""How Lightcell's processes start and end: set-up between fork and exec, and the exit.

`exit_without_finalizing`: the end of every `lightcell` command. wasmtime runs threads of
its own (a tokio runtime) that call back into Python, e.g. to write a component's stderr
to the log. One that needs the GIL once Python is finalizing is ended by CPython with
pthread_exit, which Rust cannot unwind through: the process aborts ("panic in a function
that cannot unwind"), a crash for a supervisor or an orchestrator after a clean stop. So
the process runs its exit handlers (logging's flush among them), flushes stdio, and exits
without finalizing: threads still running are not waited for (a command has stopped what it
started by then; asyncio.run has shut its executor down).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import sys
from typing import NoReturn

__all__ = ["die_with_parent", "exit_without_finalizing"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """Send `signum` (SIGKILL: nothing to clean up) to this child process when the thread
    that started it dies, so a killed parent leaves nothing running (a preexec_fn)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)


def exit_without_finalizing(code: int) -> NoReturn:
    """End the process with `code` after its exit handlers and flushed logs and stdio, but
    without Python's finalization (see the module docstring)."""
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()  # logging.shutdown() is one
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
