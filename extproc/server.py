"""The Lightcell gRPC server: network ext_proc, HTTP ext_proc and health, on a Unix socket (and
optionally loopback TCP).

In-process use (tests, the demo):

    config = load_config("envoy.yaml")
    server = await LightcellServer.start(config, socket_path=Path("/tmp/lc.sock"))
    ...
    await server.stop(grace=3.0)

Order of start-up: the configuration is validated and every plugin loaded
(all or nothing) *before* anything binds, so a socket that accepts
connections is a server ready to filter. The health service then reports
SERVING; on shutdown it reports NOT_SERVING while open streams drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from extproc import http_service, plugins, reuseport, stream_edge, tcp_service
from extproc.config import ConfigError, LightcellConfig
from extproc.control import RETIRE_SIGNAL, ControlWriter
from extproc.listener import HttpListener, Listener
from extproc.policy_table import PolicyTable
from extproc.socket_path import prepare_default_socket
from vmm import confine
from vmm.egress import UdpEgress
from vmm.metrics import METRICS

__all__ = ["DEFAULT_GRACE_S", "DEFAULT_SOCKET", "DefaultSocket", "LightcellServer", "Served", "serve"]

LOG = logging.getLogger("lightcell.server")

DEFAULT_GRACE_S = 3.0
_SERVICES = ("", tcp_service.SERVICE_NAME, http_service.SERVICE_NAME)
"""Health reports SERVING for the server as a whole and for each ext_proc service."""


class DefaultSocket:
    """Stands for the default socket path, resolved (and its directory made
    private) only when the server starts: see extproc/socket_path.py."""

    def __repr__(self) -> str:
        return "DEFAULT_SOCKET"


DEFAULT_SOCKET = DefaultSocket()

DRAIN_UNBOUNDED_S = 100 * 365 * 86400.0
"""A retiring worker's grace: its open connections last as long as they last."""

CONNECTION_AGE_S = 1.0
"""A supervised worker ends each HTTP/2 connection this long after it opened (gRPC's
max_connection_age: a GOAWAY, then Envoy's next stream opens a new connection; streams open
on the old one go on). This is how a retiring worker hands Envoy over without failing a
stream: a server that shuts down fails streams Envoy sends before it has read the shutdown's
GOAWAY, while a connection that ages out accepts them (gRPC's two-step GOAWAY)."""
_AGED_OUT_S = CONNECTION_AGE_S * 1.1 + 1.0
"""Retiring: by then every connection has aged out (gRPC adds up to 10% jitter) and Envoy has
read its GOAWAY (a second's margin); only then does the worker shut down."""


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


class LightcellServer:
    """A running server. Create with `await LightcellServer.start(...)`."""

    def __init__(
        self,
        server: grpc.aio.Server,
        health: HealthServicer,
        served: Served,
        egress: UdpEgress,
        socket_path: Path | None,
        port: int | None,
        own_socket: bool = True,
    ) -> None:
        self._server = server
        self.health = health
        self.served = served
        """What is served now: the tables the services read."""
        self._egress = egress
        self.socket_path = socket_path
        self.port = port
        """The bound loopback TCP port (the real one when 0 was asked for), or None."""
        self.own_socket = own_socket
        """Remove the socket file when stopping (not a supervisor's worker: the supervisor owns
        the path, which a newer worker's socket may have been renamed over)."""
        self._stopping: asyncio.Task[None] | None = None
        self.refusing = asyncio.Event()
        """Set once stopping has begun: no new stream is taken from then on."""
        self.socket_dir_fd: int | None = None
        """Set once confined: the socket's directory, the one place unlinkat is allowed."""

    @classmethod
    async def start(
        cls,
        config: LightcellConfig,
        *,
        socket_path: Path | DefaultSocket | None = DEFAULT_SOCKET,
        port: int | None = None,
        loaded: Mapping[str, Listener] | None = None,
        http_loaded: plugins.HttpLoaded | None = None,
        max_connections: int = stream_edge.DEFAULT_MAX_CONNECTIONS,
        own_socket: bool = True,
        connection_age: float | None = None,
        background_compile: bool = False,
    ) -> LightcellServer:
        """Load every plugin, bind, start serving. Raises ConfigError (nothing left running).

        `loaded` skips plugin loading (tests hand in listeners with fake factories); then the
        HTTP policies are `http_loaded` (none if not given), also the caller's to close.
        `background_compile`: tier auto serves a plugin in wasmtime rather than wait minutes
        for its micro-VM build (a supervisor compiles it, then reloads).
        """
        if socket_path is None and port is None:
            raise ConfigError("nothing to listen on: give a Unix socket path or a TCP port")
        started = time.perf_counter()
        if max_connections < 1:
            raise ConfigError(f"max connections must be at least 1, not {max_connections}")
        if isinstance(socket_path, DefaultSocket):
            socket_path = prepare_default_socket()
        if socket_path is not None:
            _remove_stale_socket(socket_path)
        if loaded is not None:
            listeners = dict(loaded)
            http = http_loaded if http_loaded is not None else plugins.HttpLoaded()
        else:
            listeners = await plugins.load_all(config, background_compile)
            try:
                http = await plugins.load_http_all(config, background_compile)
            except BaseException:
                await plugins.close_all(listeners.values())
                raise
        _warn_ungranted_imports([*listeners.values(), *http.all()])
        served = Served(PolicyTable(listeners), PolicyTable(http.listeners), PolicyTable(http.routes))
        egress = UdpEgress()
        options = tcp_service.grpc_options()
        if connection_age is not None:  # existing streams may last for ever on an aged connection
            options += [("grpc.max_connection_age_ms", int(connection_age * 1000)),
                        ("grpc.max_connection_age_grace_ms", 2**31 - 1)]  # fmt: skip
        server = grpc.aio.server(options=options)
        health = HealthServicer()
        try:
            await egress.start()
            slots = stream_edge.StreamSlots(max_connections)
            processor = tcp_service.NetworkProcessor(served.tcp, egress, slots=slots)
            tcp_service.add_to_server(processor, server)
            http_processor = http_service.HttpProcessor(served.http, served.routes, egress, slots=slots)
            http_service.add_to_server(http_processor, server)
            health_pb2_grpc.add_HealthServicer_to_server(health, server)
            for service in _SERVICES:
                await health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
            bound_port = _bind(server, socket_path, port)
            await server.start()
            if socket_path is not None:
                os.chmod(socket_path, 0o600)  # already created 0600 under the umask; belt and braces
        except BaseException:
            await server.stop(None)
            await egress.aclose()
            if loaded is None:
                await plugins.close_all(listeners.values())
                await plugins.close_http(http)
            raise
        for service in _SERVICES:
            await health.set(service, health_pb2.HealthCheckResponse.SERVING)
        METRICS.observe("startup_seconds", time.perf_counter() - started)
        METRICS.set("workers_serving", 1)
        METRICS.inc("serve_starts_total")
        where = [str(socket_path)] if socket_path is not None else []
        if bound_port is not None:
            where.append(f"127.0.0.1:{bound_port}")
        LOG.info(
            "serving %d listener(s) [%s] on %s", len(listeners), ", ".join(listeners), " and ".join(where)
        )
        if http.listeners:
            LOG.info(
                "serving %d HTTP listener(s) [%s] and %d route policy(ies) [%s]",
                len(http.listeners), ", ".join(http.listeners), len(http.routes), ", ".join(http.routes),
            )  # fmt: skip
        return cls(server, health, served, egress, socket_path, bound_port, own_socket)

    @property
    def listeners(self) -> Mapping[str, Listener]:
        """The TCP listeners served now."""
        return self.served.tcp

    @property
    def http(self) -> plugins.HttpLoaded:
        """The HTTP listener and route policies served now (loaded http-filter plugins)."""
        return self.served.loaded_http()

    async def stop(self, grace: float | None = DEFAULT_GRACE_S) -> None:
        """Stop accepting streams, give open ones `grace` seconds, then release everything. A
        second call while a stop is under way shortens its grace (gRPC keeps the smaller one)."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop(grace), name="lightcell-stop")
        else:
            await self._server.stop(grace)
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float | None) -> None:
        await self.health.enter_graceful_shutdown()
        METRICS.set("workers_serving", 0)
        # Streams still open after the grace are cancelled: Envoy sees a
        # non-OK status and (failure_mode_allow: false) closes the connection.
        grpc_stop = asyncio.get_running_loop().create_task(self._server.stop(grace))
        await asyncio.sleep(0)  # the task's first step starts gRPC's shutdown: GOAWAY, no new streams
        self.refusing.set()
        await grpc_stop
        await self._egress.aclose()
        await self.served.aclose()
        if self.socket_path is not None and self.own_socket:
            with contextlib.suppress(FileNotFoundError):
                if self.socket_dir_fd is None:
                    self.socket_path.unlink()
                else:  # confined: only unlinkat in this directory is allowed
                    os.unlink(self.socket_path.name, dir_fd=self.socket_dir_fd)
        if self.socket_dir_fd is not None:
            os.close(self.socket_dir_fd)
            self.socket_dir_fd = None
        LOG.info("stopped")

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


def _bind(server: grpc.aio.Server, socket_path: Path | None, port: int | None) -> int | None:
    if socket_path is not None:
        _remove_stale_socket(socket_path)  # again: plugin loading may have taken a while
        # The socket file is created by the bind: a umask of 0177 makes it 0600
        # from the first instant (chmod afterwards would leave a window).
        old = os.umask(0o177)
        try:
            server.add_insecure_port(f"unix:{socket_path}")
        except RuntimeError as e:
            raise ConfigError(f"{socket_path}: cannot listen on this socket: {e}") from e
        finally:
            os.umask(old)
    if port is None:
        return None
    try:
        bound: int = server.add_insecure_port(f"127.0.0.1:{port}")
    except RuntimeError as e:
        raise ConfigError(f"cannot listen on 127.0.0.1:{port}: {e}") from e
    if bound == 0:
        raise ConfigError(f"cannot bind 127.0.0.1:{port}")
    return bound


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket file left by a server that died; refuse anything else."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{path}: exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)  # a live server with a full backlog would block connect()
        try:
            probe.connect(str(path))
        except TimeoutError:
            raise ConfigError(f"{path}: a server holds this socket (connect timed out)") from None
        except ConnectionRefusedError:
            path.unlink()  # nobody listens: stale
            LOG.info("removed stale socket %s", path)
            return
        except FileNotFoundError:
            return
    raise ConfigError(f"{path}: another server is listening on this socket")


def _confine(server: LightcellServer) -> None:
    """From here on only the system calls serving needs (vmm/confine.py). The socket's
    directory stays open so that stop() can still remove the socket (unlinkat in it)."""
    if not confine.supported():
        LOG.warning("seccomp: not supported on this platform (x86_64 Linux only): not confined")
        return
    if server.socket_path is not None and server.own_socket:
        server.socket_dir_fd = os.open(server.socket_path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    LOG.info("%s", confine.confine(unlink_dir_fd=server.socket_dir_fd))


def _warn_ungranted_imports(listeners: list[Listener | HttpListener]) -> None:
    for listener in listeners:
        missing = sorted(listener.factory.imports - listener.policy.spec.grants.capabilities)
        if missing:
            LOG.warning(
                "listener %s: plugin %s imports %s without a grant: those calls will be denied",
                listener.name, listener.policy.plugin, ", ".join(missing),
            )  # fmt: skip


async def serve(
    config: LightcellConfig,
    *,
    socket_path: Path | DefaultSocket | None = DEFAULT_SOCKET,
    port: int | None = None,
    grace: float = DEFAULT_GRACE_S,
    max_connections: int = stream_edge.DEFAULT_MAX_CONNECTIONS,
    seccomp: bool = True,
    control: ControlWriter | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain gracefully; on RETIRE_SIGNAL (a supervisor's
    reload started a newer worker) drain with no time limit. Raises ConfigError before serving.

    `seccomp`: once loaded and bound, confine this process (vmm/confine.py). `control`: the
    pipe to the supervisor (extproc/control.py), which then owns the socket file."""
    loop = asyncio.get_running_loop()
    # Handled from the start: a SIGHUP while plugins load must not kill the process (its
    # default action). Reloads are the supervisor's: it starts new workers on the new file.
    loop.add_signal_handler(signal.SIGHUP, _hup_is_the_supervisors)
    server = await LightcellServer.start(
        config, socket_path=socket_path, port=port, max_connections=max_connections,
        own_socket=control is None, connection_age=None if control is None else CONNECTION_AGE_S,
        background_compile=control is not None,
    )  # fmt: skip
    stop, retire = asyncio.Event(), asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(RETIRE_SIGNAL, retire.set)
    if control is not None and server.port is not None:
        reuseport.steer_to_newest(server.port)  # a reload's new worker takes every new connection
    if seccomp:
        _confine(server)
    else:
        LOG.warning("seccomp: off (--no-seccomp or $%s): this process is not confined", confine.DISABLE_ENV)
    if control is not None:
        awaiting = [p for p in [*server.listeners.values(), *server.http.all()] if p.tier.awaiting_compile]
        control.send("serving", port=server.port, pid=os.getpid(), awaiting_compile=bool(awaiting))
    retired = False
    try:
        await _first(stop, retire)
        if retire.is_set() and not stop.is_set():
            retired = await _retire(server, stop, control)
        LOG.info("shutting down (grace %.1fs)", grace)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, RETIRE_SIGNAL):
            loop.remove_signal_handler(signum)
        if retired:  # nothing left to cut short: a late SIGTERM must not turn exit 0 into -15
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        await server.stop(grace)


async def _retire(server: LightcellServer, stop: asyncio.Event, control: ControlWriter | None) -> bool:
    """Hand new streams over, then drain: the newer worker owns the address already, Envoy's
    connections to this one age out (each a GOAWAY Envoy answers by connecting anew, to the
    newer worker), and only then does this one stop taking streams; the open ones end when
    their connections do. Returns early on SIGTERM; True once every stream ended."""
    LOG.info("retiring: a newer worker takes new connections; open streams finish here, however long")
    await server.health.enter_graceful_shutdown()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), _AGED_OUT_S)
    if stop.is_set():
        return False
    draining = asyncio.get_running_loop().create_task(server.stop(DRAIN_UNBOUNDED_S))
    await server.refusing.wait()
    if control is not None:
        control.send("draining")
    stopped = asyncio.get_running_loop().create_task(stop.wait())
    await asyncio.wait({draining, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if draining.done():
        LOG.info("retired: every open stream ended")
    return draining.done()


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.get_running_loop().create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()


def _hup_is_the_supervisors() -> None:
    LOG.warning("SIGHUP ignored by a worker: send it to the supervisor (the `lightcell serve` process)")
