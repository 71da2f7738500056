"""The pipe from each worker to its supervisor (extproc/workers.py), one JSON object a line.

The worker says when it serves (after its plugins are loaded, its socket bound and its
seccomp filter installed; with the TCP port it bound), when a configuration error stopped
it (the message `lightcell check` prints), and when, told to retire, it has stopped taking
new streams. Readiness through a pipe rather than a connect probe: the supervisor learns the
error text and the port, and a worker that dies closes the pipe.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from typing import Any

__all__ = ["RETIRE_SIGNAL", "ControlReader", "ControlWriter"]

RETIRE_SIGNAL = signal.SIGUSR2
"""Supervisor to worker: stop taking streams, finish the open ones however long they last, exit.
SIGTERM afterwards cuts that short to `--grace`."""


class ControlWriter:
    """The worker's end."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def send(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"kind": kind, **fields}) + "\n"
        with contextlib.suppress(OSError):  # a supervisor gone: nothing to tell
            os.write(self._fd, line.encode())


MAX_LINE = 64 * 1024
"""A worker's message is at most this long: the supervisor treats workers as untrusted (a
plugin runs in them), so a longer line ends the pipe instead of growing a buffer."""


_READS_PER_CALL = 16


class ControlReader:
    """The supervisor's end: non-blocking, whole lines only, each at most MAX_LINE bytes."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._buffer = b""
        self.closed = False

    def messages(self) -> list[dict[str, Any]]:
        """The whole messages that arrived since the last call (a bounded read per call: a
        worker flooding its pipe cannot hold the supervisor here)."""
        lines: list[bytes] = []
        for _ in range(_READS_PER_CALL):
            if self.closed:
                break
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self.close()
                break
            *whole, self._buffer = (self._buffer + chunk).split(b"\n")
            lines += whole
            if len(self._buffer) > MAX_LINE:
                self.close()
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                message = json.loads(line) if len(line) <= MAX_LINE else None
                if isinstance(message, dict):
                    out.append(message)
        return out

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd)
