"""The CPU time a vCPU's guest used: its thread's CPU clock inside KVM_RUN only.

The per-event budget charges this, not the whole thread's CPU time: between
two exits the monitor's thread also runs Python (exit decoding, host-call
dispatch) and, at any allocation, the garbage collector, whose full passes
took 36-80 ms of CPU under load in a serving process. Charged to the guest,
one such pass failed an innocent event as over its budget.

Written by the thread running the vCPU, read by the watchdog's thread, with
no lock: every write is one attribute store, ordered so that a reader that
interleaves can only under-count for a moment (the next look is right), and
`used()` retries until `charged` did not move under it, so a run is never
counted twice.
"""

from __future__ import annotations

import threading
import time

__all__ = ["CpuMeter"]

_IDLE = -1.0
_thread_time = time.thread_time  # two reads per exit: module globals are the cheap lookup
_get_ident = threading.get_ident


class CpuMeter:
    """Seconds of CPU charged to one vCPU; only ever grows (callers diff it)."""

    __slots__ = ("_clock", "_ident", "_start", "charged")

    def __init__(self) -> None:
        self.charged = 0.0
        """CPU of finished runs (and host calls, see charge())."""
        self._start = _IDLE  # thread CPU clock at the current KVM_RUN's entry, or _IDLE
        self._ident = 0
        self._clock = 0

    def enter(self) -> float:
        """On the vCPU's thread, right before KVM_RUN: returns the start to pass to leave()."""
        ident = _get_ident()
        if ident != self._ident:  # the VM moved threads (the loop's, then its vCPU thread's)
            self._clock = time.pthread_getcpuclockid(ident)
            self._ident = ident
        start = _thread_time()  # the same clock as _clock, read as the calling thread
        self._start = start  # published after _clock: a reader that sees it in a run has the clock
        return start

    def leave(self, start: float) -> None:
        """On the vCPU's thread, right after KVM_RUN returned."""
        end = _thread_time()
        self._start = _IDLE  # first: a reader between these two lines under-counts, never doubles
        self.charged += max(end - start, 0.0)

    def charge(self, seconds: float) -> None:
        """Add CPU the monitor spent for the guest outside KVM_RUN (its host calls)."""
        self.charged += max(seconds, 0.0)

    def used(self) -> float:
        """Charged so far, the run in progress included. Any thread."""
        while True:
            before = self.charged
            start = self._start
            clock = self._clock
            if self.charged == before:
                break
        if start == _IDLE:
            return before
        try:
            now = time.clock_gettime(clock)
        except OSError:  # the thread is gone (it had left the run)
            return before
        return before + max(now - start, 0.0)
