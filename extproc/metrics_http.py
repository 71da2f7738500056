"""`lightcell serve --metrics-address HOST:PORT`: the Prometheus endpoint (GET /metrics).

Off by default. The address must be loopback (127.0.0.0/8, ::1, localhost) unless
the operator adds `--metrics-public`: the counters name listeners, plugins and
capabilities, which is reconnaissance for whoever can reach the port.

`lightcell serve` runs its workers under a supervisor (also with `--workers 1`,
and a reload replaces them), so the supervisor serves the endpoint: it makes a
private directory (mode 0700, fresh at start, removed at exit) and hands it to
the workers as PROMETHEUS_MULTIPROC_DIR; their collectors write per-process
files there and the supervisor's endpoint sums them (gauges such as active
connections and pool depth are `livesum`: they add up the live workers' current
values; counters and histograms of exited workers stay in the sum). The
supervisor marks each exited worker dead (prometheus-client's
mark_process_dead) and counts its own reloads (`lightcell_reloads_total`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, multiprocess, start_http_server

from extproc.config import ConfigError
from extproc.reload import ReloadResult

__all__ = ["MULTIPROC_ENV", "MetricsAddress", "MetricsServer", "parse_address"]

LOG = logging.getLogger("lightcell.metrics")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class MetricsAddress:
    host: str
    port: int


def parse_address(text: str, public: bool = False) -> MetricsAddress:
    """HOST:PORT ([V6]:PORT); a non-loopback host only when `public`. Raises ConfigError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"--metrics-address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host != "localhost":
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            why = "HOST must be an IP address or localhost"
            raise ConfigError(f"--metrics-address {text!r}: {why}") from None
        if not ip.is_loopback and not public:
            raise ConfigError(
                f"--metrics-address {text!r} is not a loopback address: metrics name listeners, plugins "
                "and capabilities; add --metrics-public to serve them there anyway"
            )
    return MetricsAddress(host, int(port_text))


class MetricsServer:
    """The /metrics endpoint on a daemon thread; `registry` None: this process's collectors."""

    def __init__(self, address: MetricsAddress, registry: CollectorRegistry | None = None) -> None:
        from vmm.metrics import EXPORTED

        self._server: WSGIServer
        self._server, _ = start_http_server(
            address.port, address.host, registry if registry is not None else EXPORTED.registry
        )
        self.port = int(self._server.server_address[1])
        LOG.info("metrics on http://%s:%d/metrics", _url_host(address.host), self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Multiprocess:
    """The supervisor's side of `--workers N`: the private directory, the summing endpoint."""

    def __init__(self, address: MetricsAddress) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="lightcell-metrics-"))  # 0700, empty, $TMPDIR
        LOG.info("metrics: workers write to %s (removed at exit)", self.directory)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.directory))  # type: ignore[no-untyped-call]
        # The supervisor's own series: it reloads (the workers' files are summed beside it).
        self._reloads = Counter("lightcell_reloads_total", "live reloads (SIGHUP, --watch)", ["result"],
                                registry=registry)  # fmt: skip
        try:
            self.server = MetricsServer(address, registry)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def count_reload(self, result: ReloadResult) -> None:
        self._reloads.labels("applied" if result.applied else "refused").inc()

    def env(self) -> dict[str, str]:
        """The workers' environment."""
        return {**os.environ, MULTIPROC_ENV: str(self.directory)}

    def close(self) -> None:
        self.server.close()
        shutil.rmtree(self.directory, ignore_errors=True)
