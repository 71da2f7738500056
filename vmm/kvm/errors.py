"""One error type for the KVM layer: names the ioctl (or libc call) and errno."""

from __future__ import annotations

import errno as _errno
import os


class KvmError(OSError):
    def __init__(self, call: str, err: int, detail: str = "") -> None:
        name = _errno.errorcode.get(err, str(err))
        msg = f"{call} failed: {name} ({os.strerror(err)})"
        super().__init__(err, msg + (f": {detail}" if detail else ""))
        self.call = call
