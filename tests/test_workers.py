"""`lightcell serve --workers N`: real Envoy balancing over N real worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc import cli
from extproc.control import MAX_LINE, ControlReader, ControlWriter
from extproc.harness import (
    EnvoyProcess,
    ListenerSpec,
    Upstream,
    lightcell_command,
    render_bootstrap,
    wait_for_unix_socket,
    write_config,
)
from extproc.workers import worker_socket

IO_TIMEOUT = 30.0
CONNECTIONS = 20


def test_worker_socket_naming() -> None:
    assert worker_socket(Path("/run/lc/lightcell.sock"), 0) == Path("/run/lc/lightcell.0.sock")
    assert worker_socket(Path("/run/lc/lightcell.sock"), 3) == Path("/run/lc/lightcell.3.sock")
    assert worker_socket(Path("/run/lc/grpc"), 1) == Path("/run/lc/grpc.1")


def test_workers_option_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(tmp_path / "unused.yaml")
    assert cli.main(["serve", "--envoy-config", config, "--workers", "0"]) == 1
    assert "--workers must be at least 1" in capsys.readouterr().err
    argv = ["serve", "--envoy-config", config, "--workers", "2", "--no-socket", "--port", "0"]
    assert cli.main(argv) == 1
    assert "--port 0 cannot be combined with --workers" in capsys.readouterr().err


def _per_host_requests(admin_url: str) -> dict[str, int]:
    """rq_total per endpoint of Envoy's `lightcell` cluster, keyed by socket path."""
    with urllib.request.urlopen(f"{admin_url}/clusters?format=json", timeout=5) as r:
        body = json.load(r)
    cluster = next(c for c in body["cluster_statuses"] if c["name"] == "lightcell")
    counts: dict[str, int] = {}
    for host in cluster["host_statuses"]:
        stats = {s["name"]: int(s.get("value", 0)) for s in host.get("stats", [])}
        counts[host["address"]["pipe"]["path"]] = stats.get("rq_total", 0)
    return counts


async def _exchange(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT)
    writer.write(payload)
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), IO_TIMEOUT)
    writer.close()
    return data


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.envoy
async def test_envoy_balances_over_two_workers(built_plugins: dict[str, Path], tmp_path: Path) -> None:
    base = tmp_path / "lc.sock"
    sockets = [tmp_path / "lc.0.sock", tmp_path / "lc.1.sock"]
    upstream = await Upstream().start()
    policy: dict[str, Any] = {
        "plugin": str(built_plugins["rewrite"]),
        "config": "read=upper,write=pass",
        "tier": "wasmtime",
        "failure_mode": "close",
        "limits": {"memory_mb": 16, "event_cpu_ms": 2000},
    }
    spec = ListenerSpec("upper", upstream.port, policy, message_timeout="30s")
    bootstrap = render_bootstrap([spec], sockets)
    endpoints = bootstrap["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
    assert [e["endpoint"]["address"]["pipe"]["path"] for e in endpoints["lb_endpoints"]] == [
        str(s) for s in sockets
    ]
    config = write_config(bootstrap, tmp_path / "lightcell.yaml")
    log_path = tmp_path / "lightcell.log"
    argv = [*lightcell_command(), "serve", "--envoy-config", str(config), "--socket", str(base)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*argv, "--workers", "2"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    envoy = EnvoyProcess(bootstrap, tmp_path)
    try:
        for sock in sockets:
            assert await wait_for_unix_socket(sock, 120.0, lambda: proc.poll() is None), log_path.read_text()
        await envoy.start()
        port = envoy.ports["upper"]
        replies = await asyncio.gather(*(_exchange(port, b"hello %d\n" % i) for i in range(CONNECTIONS)))
        assert replies == [b"HELLO %d\n" % i for i in range(CONNECTIONS)]
        counts = await asyncio.to_thread(_per_host_requests, envoy.admin_url)
        assert set(counts) == {str(s) for s in sockets}
        assert sum(counts.values()) == CONNECTIONS, counts
        assert all(n > 0 for n in counts.values()), counts  # both workers served streams

        log_text = log_path.read_text()
        for sock in sockets:
            assert f"on {sock}" in log_text  # each worker logs the socket it serves
        match = re.search(r"2 workers serving \(pids (\d+), (\d+)\)", log_text)
        assert match, log_text
        pids = [int(p) for p in match.groups()]

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0, log_path.read_text()
        assert all(_gone(pid) for pid in pids)
        assert not any(s.exists() for s in sockets)  # each worker removed its socket
        assert log_path.read_text().count("INFO lightcell.server: stopped") == 2
    finally:
        await envoy.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await upstream.stop()


def test_bad_config_fails_once(built_plugins: dict[str, Path], tmp_path: Path) -> None:
    # failure_mode_allow on a fail-closed listener: a configuration error.
    spec = ListenerSpec("edge", 9, {"plugin": str(built_plugins["rewrite"])}, failure_mode_allow=True)
    config = tmp_path / "envoy.yaml"
    config.write_text(yaml.safe_dump(render_bootstrap([spec], tmp_path / "x.sock")))
    base = tmp_path / "lc.sock"
    argv = [*lightcell_command(), "serve", "--envoy-config", str(config), "--socket", str(base)]
    result = subprocess.run(
        [*argv, "--workers", "2"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("lightcell: error: ") == 1, result.stderr
    assert "'edge'" in result.stderr and "failure_mode_allow" in result.stderr
    with contextlib.suppress(FileNotFoundError):
        assert not list(tmp_path.glob("lc.*.sock"))


def test_the_control_pipe_takes_whole_bounded_json_objects_only() -> None:
    read_fd, write_fd = os.pipe()
    reader, writer = ControlReader(read_fd), ControlWriter(write_fd)
    try:
        writer.send("serving", port=7)
        os.write(write_fd, b'not json\n[1, 2]\n{"kind": "drain')  # garbage, a list, half a line
        assert reader.messages() == [{"kind": "serving", "port": 7}]
        os.write(write_fd, b'ing"}\n')
        assert reader.messages() == [{"kind": "draining"}]
        for _ in range(2):  # a line longer than MAX_LINE (in two writes: a pipe holds 64 KiB)
            os.write(write_fd, b"x" * (MAX_LINE // 2 + 1))
            assert reader.messages() == []
        assert reader.closed  # a worker flooding the supervisor is cut off
    finally:
        reader.close()
        os.close(write_fd)
