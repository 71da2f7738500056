"""Set-up that runs in a child process between fork and exec."""

from __future__ import annotations

import ctypes
import signal

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """Send `signum` (SIGKILL: nothing to clean up) to this child process when the thread
    that started it dies, so a killed parent leaves nothing running (a preexec_fn)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)
