"""Live reload: re-read the Envoy config (SIGHUP, `serve --watch`) without dropping a connection.

The services look policies up in PolicyTables, which a reload swaps whole:

- a new or changed policy (anything of it, or its plugin file's bytes) is loaded
  and serves the streams that start after the swap;
- an unchanged one keeps its loaded plugin, pool and kv store (no recompile, no
  reboot);
- a removed name is unknown to new streams (refused as for any unknown name);
- a stream holds a Lease on the plugin it started with until its sandbox is
  released, and a replaced or removed plugin's factory (its micro-VM pool, its
  wasmtime ticker) is closed only when its last lease ends.

A reload is all or nothing: the new file goes through load_config and the same
loaders as `lightcell check` (only for what changed), and any problem leaves the
running policies in place and is logged with check's messages. Envoy is not
reloaded: it reads its own copy of the file, so a brand-new Envoy listener
needs Envoy's own reload (hot restart or xDS); Lightcell only re-reads the
policies in the listeners' metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from extproc import plugins
from extproc.config import ConfigError, LightcellConfig, load_config
from extproc.listener import HttpListener, Listener, ListenerPolicy
from extproc.policy_table import PolicyTable
from vmm.metrics import METRICS

__all__ = [
    "CONFINED",
    "WATCH_INTERVAL_S",
    "ReloadResult",
    "ReloadTrigger",
    "Reloader",
    "Served",
    "confined",
    "watch",
]

LOG = logging.getLogger("lightcell.reload")

WATCH_INTERVAL_S = 1.0
"""How often `serve --watch` looks at the config file (a stat, and a read when it moved)."""


_T = TypeVar("_T", Listener, HttpListener)


@dataclass
class Served:
    """Everything one server serves: TCP listeners, HTTP listeners, route policies."""

    tcp: PolicyTable[Listener]
    http: PolicyTable[HttpListener]
    routes: PolicyTable[HttpListener]

    def loaded_http(self) -> plugins.HttpLoaded:
        return plugins.HttpLoaded(dict(self.http), dict(self.routes))

    async def aclose(self) -> None:
        for table in (self.tcp, self.http, self.routes):
            await table.aclose()


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


@dataclass
class Reloader:
    """Re-reads `path` into `served`, one reload at a time."""

    path: Path
    served: Served
    on_loaded: Callable[[list[Listener | HttpListener]], None] = lambda _: None
    _prints: dict[tuple[str, str], _Fingerprint] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _closed: bool = False

    def __post_init__(self) -> None:
        digests: dict[str, str | None] = {}
        served = self.served
        for kind, table in (("tcp", served.tcp), ("http", served.http), ("routes", served.routes)):
            for name, item in table.items():
                self._prints[kind, name] = _fingerprint(item.policy, digests)

    async def close(self) -> None:
        """No reload after this; waits for one in progress."""
        async with self._lock:
            self._closed = True

    async def reload(self) -> ReloadResult:
        async with self._lock:
            if self._closed:
                return ReloadResult(False, "the server is stopping")
            if confined():
                return self._refused(ReloadResult(False, CONFINED))
            try:
                result = await self._reload()
            except ConfigError as e:
                result = ReloadResult(False, str(e))
            except Exception as e:  # a loader's unexpected error: refuse, keep serving what runs
                LOG.exception("reload failed")
                result = ReloadResult(False, f"{self.path}: {type(e).__name__}: {e}")
        return self._refused(result) if not result.applied else self._applied(result)

    @staticmethod
    def _applied(result: ReloadResult) -> ReloadResult:
        METRICS.inc("reloads_total", result="applied")
        return result

    @staticmethod
    def _refused(result: ReloadResult) -> ReloadResult:
        METRICS.inc("reloads_total", result="refused")
        LOG.error("reload refused, still serving the previous configuration:\n%s", result.error)
        return result

    async def _reload(self) -> ReloadResult:
        config = await asyncio.to_thread(load_config, self.path)
        wanted = {"tcp": config.listeners, "http": config.http_listeners, "routes": config.routes}
        digests: dict[str, str | None] = {}
        prints = {
            (kind, name): await asyncio.to_thread(_fingerprint, policy, digests)
            for kind, policies in wanted.items()
            for name, policy in policies.items()
        }
        load = {kind: {n: p for n, p in ps.items() if self._prints.get((kind, n)) != prints[kind, n]}
                for kind, ps in wanted.items()}  # fmt: skip
        fresh_tcp, fresh_http = await _load(config, load)
        self.on_loaded([*fresh_tcp.values(), *fresh_http.all()])
        changes: list[str] = []
        unchanged = _swap(self.served.tcp, "listener", wanted["tcp"], fresh_tcp, changes)
        unchanged += _swap(self.served.http, "http listener", wanted["http"], fresh_http.listeners, changes)
        unchanged += _swap(self.served.routes, "route", wanted["routes"], fresh_http.routes, changes)
        self._prints = prints
        for line in changes:
            LOG.info("reload: %s", line)
        LOG.info(
            "reload applied from %s: %d change(s), %d policy(ies) unchanged (open connections and "
            "requests keep the plugin they started with)", self.path, len(changes), unchanged,
        )  # fmt: skip
        return ReloadResult(True, None, tuple(changes), unchanged)


def _swap(
    table: PolicyTable[_T], label: str, wanted: Mapping[str, ListenerPolicy], fresh: Mapping[str, _T],
    changes: list[str],
) -> int:  # fmt: skip
    """Serve `wanted` in `table`: the `fresh` items where loaded, the served ones elsewhere (the
    same plugin, pool and kv store; the policy's text may have moved). Unchanged ones, counted."""
    items: dict[str, _T] = {}
    for name, policy in wanted.items():
        if name in fresh:
            items[name] = fresh[name]
            changes.append(f"{label} {name}: {'changed' if name in table else 'added'}")
        else:
            items[name] = dataclasses.replace(table[name], policy=policy)
    changes += [f"{label} {name}: removed" for name in table if name not in items]
    table.replace(items)
    return len(wanted) - len(fresh)


async def _load(
    config: LightcellConfig, load: dict[str, dict[str, ListenerPolicy]]
) -> tuple[dict[str, Listener], plugins.HttpLoaded]:
    """The plugins of the new and changed policies, through check's loaders (its messages); all
    or nothing."""
    tcp = await plugins.load_all(dataclasses.replace(config, listeners=load["tcp"]))
    try:
        subset = dataclasses.replace(config, http_listeners=load["http"], routes=load["routes"])
        http = await plugins.load_http_all(subset)
    except BaseException:
        await plugins.close_all(tcp.values())
        raise
    return tcp, http


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


async def watch(path: Path, changed: Callable[[], None], interval: float = WATCH_INTERVAL_S) -> None:
    """Call `changed` whenever `path`'s content changes (polled: no extra dependency, any
    filesystem, editors that replace the file). Runs until cancelled."""
    seen = await asyncio.to_thread(_content_hash, path)
    stamp: tuple[int, int, int, int] | None = None
    with contextlib.suppress(OSError):
        stamp = await asyncio.to_thread(_stamp, path)
    problem: str | None = None
    while True:
        await asyncio.sleep(interval)
        try:
            now = await asyncio.to_thread(_stamp, path)
            if now == stamp:
                continue
            stamp = now
            digest = await asyncio.to_thread(_content_hash, path)
        except OSError as e:
            if str(e) != problem:  # once per distinct problem, not every second
                problem = str(e)
                LOG.warning("watching %s: %s", path, e)
            continue
        problem = None
        if digest != seen:
            seen = digest
            LOG.info("%s changed: reloading", path)
            changed()


def _stamp(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _content_hash(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


CONFINED = (
    "this process is confined by seccomp (it can no longer open files or map new code, so it "
    "cannot load plugins): restart it to apply the new configuration, or serve with --no-seccomp "
    "to reload live"
)
_PR_GET_SECCOMP = 21


def confined() -> bool:
    """True under a seccomp filter (vmm/confine.py's refuses this prctl; another may answer 2)."""
    libc = ctypes.CDLL(None, use_errno=True)
    mode = libc.prctl(_PR_GET_SECCOMP, 0, 0, 0, 0)
    return bool(mode == 2 or (mode == -1 and ctypes.get_errno() == errno.EPERM))


class ReloadTrigger:
    """What SIGHUP and --watch call: requests while a reload runs are folded into one more, and
    requests before `run` starts (while the server loads) are kept for it."""

    def __init__(self) -> None:
        self._wanted = asyncio.Event()

    def request(self) -> None:
        self._wanted.set()

    async def run(self, reload: Callable[[], Awaitable[object]]) -> None:
        """Reload on each request, until cancelled (a reload under way still completes: shielded,
        and the server's stop waits for it)."""
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            await asyncio.shield(reload())
