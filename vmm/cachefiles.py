"""On-disk caches of build artefacts: private directories, locks, atomic publication.

Shared by the wasmtime tier's compiled-code cache, the micro-VM tier's
ahead-of-time images and the example plugin builder. A cached artefact is
code this process will run (natively for wasmtime, inside a micro-VM for the
AOT images), so an entry is used only from a directory and a file that are
owned by us, not symlinks, and writable by nobody else.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["locked", "private_dir", "publish", "trusted"]


def trusted(path: Path, kind: int = stat.S_IFREG) -> bool:
    """Owned by us, of the expected type (no symlink), writable by nobody else."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return (
        stat.S_IFMT(st.st_mode) == kind
        and st.st_uid == os.geteuid()
        and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def private_dir(path: Path) -> bool:
    """Create `path` (0700) if missing; True if it is a directory only we can write."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return trusted(path, stat.S_IFDIR)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if missing) across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def publish(data: bytes | bytearray, dst: Path, mode: int = 0o600) -> None:
    """Write `dst` atomically: an unpredictable temp file beside it, then os.replace."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
