"""`lightcell serve`: an unconfined supervisor and N confined worker processes.

The process the operator starts supervises; every worker is a child that loads the plugins,
binds, confines itself (seccomp) and serves. Why two kinds of process:

- confinement: a confined process can no longer open files or compile plugins, so it can
  never apply a new configuration. The supervisor, which runs no plugin code, never touches
  guest memory and never runs a VM, stays unconfined and reloads by starting new workers
  (extproc/reload.py says how; SIGHUP and `--watch` reach only the supervisor);
- scale: every KVM micro-VM registers an MMU notifier on its process's address space, so
  each madvise/munmap/copy-on-write fault walks all of its VMs' notifiers
  (shared/notes/kvm-here.md, "Scaling trap"); several workers keep every address space small.
  Envoy balances across them when its `lightcell` cluster lists one endpoint per worker
  socket (see `extproc.harness.lightcell_cluster`).

Each worker is a full `lightcell serve --worker` with the same configuration and options,
and its own listening address:

- `--socket PATH`: with one worker, PATH itself; with N, worker i listens on
  `worker_socket(PATH, i)`: `.i` goes before a `.sock` suffix (`lc.sock` -> `lc.0.sock`, ...),
  and is appended to any other name (`lc` -> `lc.0`, `lc.1`, ...);
- `--port P`: worker i listens on 127.0.0.1:P+i (P may be 0 only with one worker: the port it
  got is kept across reloads).

The supervisor starts worker 0 first and waits until it serves (so a bad configuration is
reported once, by that worker, and nothing else starts), then the others. If any fails to
start, the started ones are stopped and the supervisor exits non-zero. SIGTERM/SIGINT are
forwarded to every worker, which drain gracefully (`--grace`); the supervisor waits for all
and removes the socket files (it owns them: a reload renames a newer worker's over them). It
restarts nothing: if a serving worker dies, the others are stopped and the supervisor exits
non-zero, so the orchestrator (systemd, Kubernetes, compose) restarts the whole set. If the
supervisor is killed, its workers are killed with it.

When a worker serves a tier-auto plugin in wasmtime because its micro-VM build would take
minutes, the supervisor runs that build in the background and reloads once it is done
(extproc/background_compile.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from extproc.background_compile import BackgroundBuild, JobEnd
from extproc.child import die_with_parent
from extproc.control import RETIRE_SIGNAL, ControlReader
from extproc.reload import FileWatch, Prints, ReloadResult, changes, fingerprints

__all__ = ["Slot", "Supervisor", "temporary_socket", "worker_command", "worker_socket"]

LOG = logging.getLogger("lightcell.workers")
POLL_S = 0.05
ACK_TIMEOUT_S = 30.0
"""How long a retiring worker may take to confirm it takes no new streams (about two seconds:
extproc.server's connection age and margin; past this the reload is logged anyway, with a
warning)."""


def worker_socket(path: Path, index: int) -> Path:
    """Worker `index`'s socket: `.index` before a `.sock` suffix, else appended."""
    if path.suffix == ".sock":
        return path.with_name(f"{path.stem}.{index}.sock")
    return path.with_name(f"{path.name}.{index}")


def temporary_socket(path: Path) -> Path:
    """Where a reload's new worker binds before its socket is renamed over `path`: the same
    directory (rename is atomic only there), a hidden name no worker socket can have."""
    return path.with_name(f".{path.name}.new")


@dataclass(frozen=True)
class Slot:
    """One worker's place: where it listens, whichever generation fills it."""

    index: int
    socket_path: Path | None
    port: int | None


Command = Callable[[Slot, "Path | None", "int | None"], list[str]]
"""A worker's command line for a slot, the socket path it binds and the port."""


def worker_command(
    envoy_config: Path,
    *,
    grace: float,
    max_connections: int,
    log_level: str,
    log_format: str = "text",
    seccomp: bool = True,
) -> Command:
    """The workers' `lightcell serve --worker` command lines (this Python, this package)."""

    def command(_slot: Slot, socket_path: Path | None, port: int | None) -> list[str]:
        argv = [sys.executable, "-m", "extproc.cli", "serve", "--worker", "--envoy-config", str(envoy_config)]
        argv += ["--no-socket"] if socket_path is None else ["--socket", str(socket_path)]
        if port is not None:
            argv += ["--port", str(port)]
        argv += ["--grace", str(grace), "--max-connections", str(max_connections), "--log-level", log_level]
        argv += ["--log-format", log_format]
        if not seccomp:
            argv.append("--no-seccomp")
        return argv

    return command


@dataclass
class _Running:
    """One worker process and what it told us (untrusted: plugins ran in it; its messages are
    bounded, checked, and only ever logged or used as the port it was given)."""

    slot: Slot
    proc: subprocess.Popen[bytes]
    control: ControlReader
    bound: Path | None
    """The socket path it bound (a temporary one until the handover renames it)."""
    serving: bool = False
    awaiting_compile: bool = False
    """It serves a plugin in wasmtime until its micro-VM build exists (a hint only)."""
    draining: bool = False
    port: int | None = None
    error: str | None = None

    def read(self) -> None:
        for message in self.control.messages():
            kind = message.get("kind")
            if kind == "serving":
                self.serving = True
                self.awaiting_compile = message.get("awaiting_compile") is True
                port = message.get("port")  # kept only if sane: the next generation binds it
                if isinstance(port, int) and 0 < port < 65536 and self.slot.port in (0, port):
                    self.port = port
            elif kind == "draining":
                self.draining = True
            elif kind == "error":
                self.error = str(message.get("message"))


class _Aborted(Exception):
    """SIGTERM/SIGINT while a generation was starting."""


@dataclass
class Supervisor:
    """Starts the workers, reloads on SIGHUP (and with `watch` when the file changes), stops
    them on SIGTERM/SIGINT. `run` returns the exit code."""

    config_path: Path
    slots: Sequence[Slot]
    command: Command
    env: Mapping[str, str] | None = None
    """The workers' environment (None: ours); `--metrics-address` adds PROMETHEUS_MULTIPROC_DIR."""
    watch: bool = False
    metrics_dir: Path | None = None
    """Where the workers' metrics files are: a dead worker's are marked so (prometheus-client)."""
    on_reload: Callable[[ReloadResult], None] = lambda _: None
    current: list[_Running] = field(default_factory=list)
    retiring: list[_Running] = field(default_factory=list)
    _signalled: list[int] = field(default_factory=list)
    _hups: list[int] = field(default_factory=list)
    _prints: Prints | None = None
    _ports: dict[int, int] = field(default_factory=dict)
    builds: BackgroundBuild | None = None
    """Runs the micro-VM builds a worker's tier auto did not wait for (None: none are run)."""
    _served: bool = False
    """A worker served: the socket paths are ours to remove at the end (not before: a start
    refused because another server listens there must leave that server's socket alone)."""

    def run(self) -> int:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda s, _f: self._hups.append(s))
        if self.builds is not None:
            self.builds.env = self.env
        try:
            return self._run()
        finally:
            for proc in self._everyone():  # only on an unexpected error: the rest were reaped
                if proc.proc.poll() is None:
                    proc.proc.kill()
                    proc.proc.wait()
            if self.builds is not None:
                self.builds.stop()
            for s, handler in old.items():
                signal.signal(s, handler)
            self._remove_sockets()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signalled.append(signum)

    def _run(self) -> int:
        # Before the workers read the file: a change from here on is one they may have missed.
        watch = FileWatch(self.config_path) if self.watch else None
        try:
            started = self._start_generation(handover=False, meanwhile=self._read_prints)
        except _Aborted:
            return self._stop(self._signalled[0])
        except _Refused as e:
            if e.from_worker:  # a configuration error: reported once, like `lightcell check` does
                print(f"lightcell: error: {e}", file=sys.stderr)
            else:
                LOG.error("%s; stopping the others", e)
            return e.code
        self.current = started
        LOG.info("%d workers serving (pids %s)", len(started), _pids(started))
        self._compile_awaited()
        while not self._signalled:
            if self._hups or (watch is not None and watch.changed()):
                self._hups.clear()
                if self.builds is not None:
                    self.builds.forget()  # the operator's reload: a failed build may be retried
                self._reload()
                continue
            if self.builds is not None and (ended := self.builds.poll()) is not None:
                if ended is JobEnd.BUILT and self._file_unchanged():
                    LOG.info("reloading, so that new streams run the plugins just built in the micro-VM")
                    self._reload()
                else:  # a change applied meanwhile may await another build
                    self._compile_awaited()
                continue
            crashed = next((w for w in self.current if w.proc.poll() is not None), None)
            if crashed is not None:
                LOG.error("worker %d (pid %d) exited with %s; stopping the others (nothing is restarted)",
                          crashed.slot.index, crashed.proc.pid, crashed.proc.returncode)  # fmt: skip
                self._reap(crashed)
                self._stop(signal.SIGTERM)
                return crashed.proc.returncode if crashed.proc.returncode > 0 else 1
            self._reap_retired()
            time.sleep(POLL_S)
        return self._stop(self._signalled[0])

    # ------------------------------------------------------------------ generations

    def _start_generation(
        self, handover: bool, meanwhile: Callable[[], None] = lambda: None
    ) -> list[_Running]:
        """Start one worker per slot, worker 0 alone first (it compiles what the cache lacks but
        large tier-auto plugins, and fails first on a bad file), and wait until all serve. A
        failure stops the ones started and raises _Refused (`meanwhile` runs while worker 0
        starts)."""
        started: list[_Running] = []
        for batch in (self.slots[:1], self.slots[1:]):
            fresh = [self._spawn(slot, handover) for slot in batch]
            started += fresh
            if len(started) == len(fresh):
                meanwhile()
            failed = self._wait_serving(fresh, started)
            if failed is not None:
                self._stop_these(started, signal.SIGTERM)
                code = failed.proc.returncode
                if failed.error is not None:
                    raise _Refused(failed.error, code, from_worker=True)
                raise _Refused(f"worker {failed.slot.index} exited with {code} before serving", code)
        for worker in started:
            if worker.port is not None:
                self._ports.setdefault(worker.slot.index, worker.port)
        return started

    def _wait_serving(self, batch: list[_Running], started: list[_Running]) -> _Running | None:
        pending = list(batch)
        while pending:
            for worker in list(pending):
                worker.read()
                if worker.serving:
                    pending.remove(worker)
                    self._served = True
                elif self._signalled:
                    continue
                elif worker.proc.poll() is not None:
                    worker.read()  # its last words: the error
                    self._reap(worker)
                    return worker
            # Read before giving up: a SIGTERM right after a worker served must still
            # find _served set, or its socket would be left behind.
            if self._signalled:
                self._stop_these(started, self._signalled[0])
                raise _Aborted
            time.sleep(POLL_S)
        return None

    def _spawn(self, slot: Slot, handover: bool) -> _Running:
        bind = slot.socket_path
        if bind is not None and handover:
            bind = temporary_socket(bind)
        port = self._ports.get(slot.index, slot.port)
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        argv = [*self.command(slot, bind, port), "--control-fd", str(write_fd)]
        # At start-up each worker logs where it serves; a bad file's message comes first.
        LOG.log(
            logging.INFO if handover else logging.DEBUG,
            "starting worker %d on %s",
            slot.index,
            _where(bind, port),
        )
        try:
            # Own session: a terminal's Ctrl-C reaches the supervisor only, which forwards it
            # once (a second SIGINT would cut a worker's graceful drain short).
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent,
                env=None if self.env is None else dict(self.env), pass_fds=(write_fd,),
            )  # fmt: skip
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        return _Running(slot, proc, ControlReader(read_fd), bind)

    # ------------------------------------------------------------------ reload

    def _reload(self) -> None:
        from extproc.config import ConfigError, load_config

        LOG.info("reloading %s", self.config_path)
        try:
            with _quiet("lightcell.config"):  # the new workers log the file's warnings
                prints = fingerprints(load_config(self.config_path))
            fresh = self._start_generation(handover=True)
        except (ConfigError, _Refused) as e:
            self._refused(str(e))
            return
        except _Aborted:
            return
        except Exception as e:  # the parser's unexpected error: refuse, keep serving what runs
            LOG.exception("reload failed")
            self._refused(f"{self.config_path}: {type(e).__name__}: {e}")
            return
        try:
            self._take_addresses(fresh)
        except OSError as e:
            self._stop_these(fresh, signal.SIGTERM)
            self._refused(f"handing the socket over: {e}")
            return
        old = self._retire(fresh)
        lines, unchanged = changes(self._prints, prints)
        self._prints = prints
        for line in lines:
            LOG.info("reload: %s", line)
        LOG.info(
            "reload applied from %s: %d change(s), %d policy(ies) unchanged; new streams go to the "
            "new workers (pids %s), open ones finish on the old (pids %s), which then exit",
            self.config_path, len(lines), unchanged, _pids(fresh), _pids(old),
        )  # fmt: skip
        self.on_reload(ReloadResult(True, None, tuple(lines), unchanged))
        self._compile_awaited()

    def _file_unchanged(self) -> bool:
        """Whether the file still says what was applied last: a build's reload must not also
        apply an edit the operator has not asked for yet (SIGHUP applies both)."""
        from extproc.config import ConfigError, load_config

        try:
            with _quiet("lightcell.config"):
                unchanged = fingerprints(load_config(self.config_path)) == self._prints
        except (ConfigError, OSError):
            unchanged = False
        if not unchanged:
            LOG.warning("micro-VM images built, but %s changed since it was applied: a reload "
                        "(SIGHUP, or --watch) applies the change and the new images",
                        self.config_path)  # fmt: skip
        return unchanged

    def _compile_awaited(self) -> None:
        """If a worker serves a plugin in wasmtime until its micro-VM build exists, start the
        build job (extproc/background_compile.py): once per configuration, so a build that
        failed is not retried until a policy or plugin changes."""
        if self.builds is None or not any(worker.awaiting_compile for worker in self.current):
            return
        self.builds.start(repr(sorted(self._prints.items())) if self._prints is not None else "")

    @staticmethod
    def _take_addresses(fresh: list[_Running]) -> None:
        """Each new worker's socket renamed over its slot's path: atomic, so every connect finds
        a listener, the old one until this instant and the new one from it. (A TCP port is
        shared already: the new worker bound it beside the old, SO_REUSEPORT.)"""
        for worker in fresh:
            final = worker.slot.socket_path
            if final is not None and worker.bound is not None and worker.bound != final:
                os.rename(worker.bound, final)
                # The worker logged the temporary name it bound: say where it serves now.
                LOG.info("worker %d (pid %d) now serves on %s", worker.slot.index, worker.proc.pid, final)
                worker.bound = final

    def _retire(self, fresh: list[_Running]) -> list[_Running]:
        """The new workers serve; the old ones hand Envoy over (their connections age out), stop
        taking streams, and exit when their open streams have ended."""
        old, self.current = self.current, fresh
        for worker in old:
            _signal(worker, RETIRE_SIGNAL)
        deadline = time.monotonic() + ACK_TIMEOUT_S
        for worker in old:  # its connections aged out: Envoy's streams go to the new workers
            while not worker.draining and worker.proc.poll() is None and time.monotonic() < deadline:
                worker.read()
                time.sleep(POLL_S / 5)
            if not worker.draining and worker.proc.poll() is None:
                LOG.warning("worker pid %d has not confirmed it stopped taking streams", worker.proc.pid)
        self.retiring += old
        return old

    def _refused(self, error: str) -> None:
        LOG.error("reload refused, still serving the previous configuration:\n%s", error)
        self.on_reload(ReloadResult(False, error))

    def _read_prints(self) -> None:
        """What the first workers serve, to name the first reload's changes: read while worker 0
        starts (it reads the file after its imports, later; a change in between makes only those
        lines approximate: every reload restarts every worker on the whole file)."""
        from extproc.config import ConfigError, load_config

        with contextlib.suppress(ConfigError, OSError), _quiet("lightcell.config"):
            self._prints = fingerprints(load_config(self.config_path))

    # ------------------------------------------------------------------ ends

    def _reap_retired(self) -> None:
        for worker in list(self.retiring):
            if worker.proc.poll() is not None:
                self.retiring.remove(worker)
                self._reap(worker)
                code = worker.proc.returncode
                how = "finished its open streams" if code == 0 else "exited"
                LOG.info("retired worker pid %d %s (exit code %s)", worker.proc.pid, how, code)

    def _reap(self, worker: _Running) -> None:
        """After a worker's exit: its pipe closed, its live gauges dropped from the sum."""
        worker.control.close()
        if self.metrics_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.proc.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]

    def _everyone(self) -> list[_Running]:
        return [*self.current, *self.retiring]

    def _stop(self, signum: int) -> int:
        """Send `signum` to every worker (serving and retiring), wait for all; 0 if the serving
        ones exited 0."""
        LOG.info("stopping %d worker(s) (%s)", len(self._everyone()), signal.Signals(signum).name)
        retiring = list(self.retiring)
        self._stop_these(self._everyone(), signum)
        self.retiring = []
        if self.builds is not None:
            self.builds.stop()
        codes = [w.proc.returncode for w in self.current]
        for worker in retiring:
            if worker.proc.returncode != 0:
                LOG.warning("retiring worker pid %d exited with %s", worker.proc.pid, worker.proc.returncode)
        return next((code if code > 0 else 1 for code in codes if code != 0), 0)

    def _stop_these(self, workers: Sequence[_Running], signum: int) -> None:
        for worker in workers:
            _signal(worker, signum)
        for worker in workers:
            worker.proc.wait()
            self._reap(worker)
        for worker in workers:  # a temporary socket of a refused reload: no one will rename it
            if worker.bound is not None and worker.bound != worker.slot.socket_path:
                _remove_socket(worker.bound)

    def _remove_sockets(self) -> None:
        if self._served and all(w.proc.poll() is not None for w in self._everyone()):
            for slot in self.slots:
                if slot.socket_path is not None:
                    _remove_socket(slot.socket_path)


class _Refused(Exception):
    """A worker did not start: why (check's message when it sent one), and its exit code."""

    def __init__(self, message: str, code: int, from_worker: bool = False) -> None:
        super().__init__(message)
        self.code = code if code > 0 else 1
        self.from_worker = from_worker


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Without `logger`'s warnings: the workers log them (once each, not twice)."""
    log = logging.getLogger(logger)
    was, log.disabled = log.disabled, True
    try:
        yield
    finally:
        log.disabled = was


def _signal(worker: _Running, signum: int) -> None:
    if worker.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.proc.pid, signum)


def _remove_socket(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()


def _pids(workers: Sequence[_Running]) -> str:
    return ", ".join(str(w.proc.pid) for w in workers)


def _where(socket_path: Path | None, port: int | None) -> str:
    where = [str(socket_path)] if socket_path is not None else []
    if port is not None:
        where.append(f"127.0.0.1:{port}")
    return " and ".join(where)
