"""Where `lightcell serve` listens by default, in a directory only we can write.

Not /tmp: while the sidecar is down, another local user could bind a socket
there first and receive (and wave through) all of Envoy's traffic. The default
lives in a directory owned by the sidecar's user and not writable by anyone
else, created 0700 when missing:

1. `$LIGHTCELL_SOCKET`, if set (the operator chose; the directory is checked);
2. `$XDG_RUNTIME_DIR/lightcell/lightcell.sock`;
3. `/run/lightcell/lightcell.sock` when running as root;
4. `~/.cache/lightcell/run/lightcell.sock` otherwise.

An explicit `--socket PATH` is the operator's choice and is used as given.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from extproc.config import ConfigError

__all__ = ["SOCKET_ENV", "default_socket_path", "prepare_default_socket"]

SOCKET_ENV = "LIGHTCELL_SOCKET"
SOCKET_NAME = "lightcell.sock"


def default_socket_path(env: Mapping[str, str] | None = None, euid: int | None = None) -> Path:
    """The default socket path (nothing created or checked)."""
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    if env.get(SOCKET_ENV):
        return Path(env[SOCKET_ENV])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "lightcell" / SOCKET_NAME
    if euid == 0:
        return Path("/run/lightcell") / SOCKET_NAME
    return Path.home() / ".cache" / "lightcell" / "run" / SOCKET_NAME


def prepare_default_socket(env: Mapping[str, str] | None = None) -> Path:
    """The default socket path, its directory created 0700 and checked private."""
    path = default_socket_path(env)
    ensure_private_dir(path.parent)
    return path


def ensure_private_dir(directory: Path) -> None:
    """Create `directory` 0700 if missing; refuse one we do not own or others can write."""
    old = os.umask(0o077)  # parents we create are private too
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{directory}: cannot create the socket directory: {e}") from e
    finally:
        os.umask(old)
    st = directory.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{directory}: socket directory is not a directory (a symlink?); refusing it")
    if st.st_uid != os.geteuid():
        raise ConfigError(
            f"{directory}: socket directory is owned by uid {st.st_uid}, not us ({os.geteuid()}); refusing it"
        )
    if st.st_mode & 0o022:
        raise ConfigError(
            f"{directory}: socket directory is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing it"
        )
