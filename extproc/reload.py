"""Live reload (SIGHUP, `serve --watch`): what changed, and noticing that the file did.

A serving worker never reloads itself: it is confined (seccomp), so it can no longer open
files or map new code. The unconfined supervisor (extproc/workers.py) reloads instead:

1. it re-reads the file with `load_config`: a file `lightcell check` refuses is refused with
   the same message and the running workers go on untouched;
2. it starts a new generation of workers on the file, worker 0 alone first (it compiles the
   new plugins, large tier-auto ones in the background (extproc/background_compile.py),
   warming the compile cache for the others, and a plugin `check` would refuse
   fails it: refused again, nothing changes), then the others;
3. it hands every listening address over without a gap: a Unix socket is bound at a
   temporary path beside the real one and renamed over it (atomic: every connect finds a
   listener), a TCP port is bound alongside the old one (SO_REUSEPORT, gRPC's default);
4. it retires the old workers: they stop taking streams (gRPC's GOAWAY sends Envoy's next
   stream to a new connection, hence to a new worker) and exit when their last open stream
   ends. Open connections keep their sandbox and plugin until then.

Every reload replaces every worker, so per-listener state (kv stores, warm pools) starts
afresh in the new workers. This module holds the parts without processes: which policies
changed (for the log) and the file watch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from extproc.config import LightcellConfig
from extproc.listener import ListenerPolicy

__all__ = ["WATCH_INTERVAL_S", "FileWatch", "Prints", "ReloadResult", "changes", "fingerprints"]

LOG = logging.getLogger("lightcell.reload")

WATCH_INTERVAL_S = 1.0
"""How often `serve --watch` looks at the config file (a stat, and a read when it moved)."""


@dataclass(frozen=True)
class ReloadResult:
    """What one reload did (also logged: one line per change, then a summary)."""

    applied: bool
    error: str | None = None
    """Why the new file was refused (check's messages), when it was."""
    changes: tuple[str, ...] = ()
    """One line per added, changed or removed policy."""
    unchanged: int = 0


_Fingerprint = tuple[ListenerPolicy, str | None]
Prints = dict[tuple[str, str], _Fingerprint]
"""(kind, name) -> what makes that policy the same; kind: listener, http listener, route."""


def fingerprints(config: LightcellConfig) -> Prints:
    """Every policy of `config`, fingerprinted (plugin files are read and hashed)."""
    digests: dict[str, str | None] = {}
    kinds: Mapping[str, Mapping[str, ListenerPolicy]] = {
        "listener": config.listeners, "http listener": config.http_listeners, "route": config.routes,
    }  # fmt: skip
    return {
        (kind, name): _fingerprint(policy, digests)
        for kind, policies in kinds.items()
        for name, policy in policies.items()
    }


def changes(old: Prints | None, new: Prints) -> tuple[list[str], int]:
    """One line per added, changed or removed policy from `old` to `new`, and how many are the
    same (`old` None: every policy is new)."""
    old = old or {}
    lines = [f"{kind} {name}: {'changed' if (kind, name) in old else 'added'}"
             for (kind, name), fp in new.items() if old.get((kind, name)) != fp]  # fmt: skip
    lines += [f"{kind} {name}: removed" for (kind, name) in old if (kind, name) not in new]
    return lines, sum(1 for key, fp in new.items() if old.get(key) == fp)


def _fingerprint(policy: ListenerPolicy, digests: dict[str, str | None]) -> _Fingerprint:
    """What makes a policy the same: every value of it but where it sits in the file, and its
    plugin's bytes (a rebuilt plugin at the same path is a change)."""
    path = policy.spec.plugin_path
    if path not in digests:
        try:
            digests[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            digests[path] = None
    return dataclasses.replace(policy, source=""), digests[path]


class FileWatch:
    """`serve --watch`: `changed()` is true once per change of the file's content (polled: no
    extra dependency, any filesystem, editors that replace the file)."""

    def __init__(self, path: Path, interval: float = WATCH_INTERVAL_S) -> None:
        self.path = path
        self.interval = interval
        self._seen = _content_hash(path)
        self._stamp: tuple[int, int, int, int] | None = None
        with contextlib.suppress(OSError):
            self._stamp = _stamp(path)
        self._next = time.monotonic() + interval
        self._problem: str | None = None

    def changed(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.interval
        try:
            stamp = _stamp(self.path)
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            digest = _content_hash(self.path)
        except OSError as e:
            if str(e) != self._problem:  # once per distinct problem, not every second
                self._problem = str(e)
                LOG.warning("watching %s: %s", self.path, e)
            return False
        self._problem = None
        if digest == self._seen:
            return False
        self._seen = digest
        LOG.info("%s changed: reloading", self.path)
        return True


def _stamp(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _content_hash(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
