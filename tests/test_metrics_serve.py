"""The Prometheus endpoint and JSON logs of a real `lightcell serve` behind a real Envoy.

Counts are asserted exactly where the traffic fixes them; values that settle in
the background (a VM given back is restored off the critical path, a stream's
gauge drops when Envoy ends the stream) are awaited as conditions, never timed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from extproc.harness import (
    EnvoyProcess,
    LightcellProcess,
    ListenerSpec,
    Upstream,
    lightcell_command,
    render_bootstrap,
    wait_for_unix_socket,
    write_config,
)
from extproc.harness.upstream import free_port

IO_TIMEOUT = 30.0
SETTLE_S = 60.0  # a deadline for background work on 2 busy cores, not a measured time
POOL = 2  # LIGHTCELL_MICROVM_POOL: the pool's initial target
WARM_INSTANCES = 4  # vmm.wasmtime_tier._warm.WARM_INSTANCES


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of `name` over the series whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == f"lightcell_{name}" and want <= ls)


async def until(port: int, check: Callable[[dict[Any, float]], bool], what: str) -> dict[Any, float]:
    """Scrape until `check` holds (background work settles), or fail with the last scrape."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_S
    while True:
        samples = await asyncio.to_thread(scrape, port)
        if check(samples):
            return samples
        if loop.time() > deadline:
            lightcell = {k: v for k, v in samples.items() if k[0].startswith("lightcell_")}
            pytest.fail(f"never: {what}\n{lightcell}")
        await asyncio.sleep(0.1)


async def exchange(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT)
    writer.write(payload)
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), IO_TIMEOUT)
    writer.close()
    return data


def policy(plugin: Path, config: str, tier: str, grants: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "plugin": str(plugin), "config": config, "tier": tier, "failure_mode": "close",
        "grants": list(grants), "limits": {"memory_mb": 16, "event_cpu_ms": 2000},
    }  # fmt: skip


@pytest.mark.envoy
@pytest.mark.kvm
async def test_scrape_after_real_traffic(
    built_plugins: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rw, probe = built_plugins["rewrite"], built_plugins["probe"]
    table = {
        "vm": policy(rw, "read=upper,write=pass", "microvm"),
        "wasm": policy(rw, "read=upper,write=pass", "wasmtime"),
        "denied": policy(probe, "call=kv", "wasmtime"),  # kv not granted: a denied fault
    }
    upstream = await Upstream().start()
    socket_path = tmp_path / "lc.sock"
    specs = [ListenerSpec(n, upstream.port, p, message_timeout="30s") for n, p in table.items()]
    ghost = ListenerSpec("ghost", upstream.port, table["wasm"], lightcell_name="nobody",
                         message_timeout="30s")  # fmt: skip
    config = write_config(render_bootstrap(specs, socket_path), tmp_path / "lightcell.yaml")
    metrics_port = free_port()
    monkeypatch.setenv("LIGHTCELL_MICROVM_POOL", str(POOL))
    lightcell = LightcellProcess(
        config, socket_path, tmp_path / "lightcell.log",
        ["--metrics-address", f"127.0.0.1:{metrics_port}", "--log-format", "json"],
    )  # fmt: skip
    envoy = EnvoyProcess(render_bootstrap([*specs, ghost], socket_path), tmp_path)
    try:
        await lightcell.start()
        await envoy.start()
        idle = {"listener": "vm"}
        await until(
            metrics_port,
            lambda s: value(s, "microvm_pool_idle", **idle) == POOL == value(s, "microvm_pool_live", **idle)
            and value(s, "wasmtime_warm_instances", listener="wasm") == WARM_INSTANCES,
            f"a full pool ({POOL} VMs, {WARM_INSTANCES} wasmtime instances) before any traffic",
        )

        n = 5
        for name in ("vm", "wasm"):
            replies = await asyncio.gather(*(exchange(envoy.ports[name], b"hi %d\n" % i) for i in range(n)))
            assert replies == [b"HI %d\n" % i for i in range(n)]
        assert await exchange(envoy.ports["denied"], b"x\n") == b""  # failure mode close
        assert await exchange(envoy.ports["ghost"], b"x\n") == b""  # unknown listener: refused

        # Each used VM is restored and pooled again, in the background; every stream ends.
        s = await until(
            metrics_port,
            lambda s: value(s, "sandbox_restore_seconds_count", tier="microvm") >= n
            and value(s, "microvm_pool_idle", **idle) == value(s, "microvm_pool_live", **idle)
            and value(s, "connections_active") == 0
            and value(s, "wasmtime_warm_instances", listener="wasm") == WARM_INSTANCES,
            "every VM back in the pool, every connection over",
        )
        assert value(s, "connections_total", listener="vm", tier="microvm") == n
        assert value(s, "connections_total", listener="wasm", tier="wasmtime") == n
        assert value(s, "connections_total", listener="denied", tier="wasmtime") == 1
        assert value(s, "connections_total", tier="microvm") == n  # the tier label is per listener
        assert value(s, "hook_seconds_count", hook="on-data", tier="microvm") >= n
        assert value(s, "hook_seconds_count", hook="on-data", tier="wasmtime") >= n
        assert value(s, "hook_seconds_bucket", hook="on-data", tier="microvm", le="+Inf") >= n
        assert value(s, "hook_seconds_sum", tier="microvm") > 0
        # A burst of 5 on a pool of 2 made VMs (and the first pool fill did too).
        assert value(s, "sandbox_create_seconds_count", tier="microvm") >= POOL
        assert value(s, "sandbox_create_seconds_count", tier="wasmtime") >= WARM_INSTANCES
        assert value(s, "microvm_pool_live", **idle) >= POOL
        assert value(s, "capability_denied_total", listener="denied", plugin="probe", capability="kv") == 1
        assert value(s, "plugin_faults_total", listener="denied", fault="denied", protocol="tcp") == 1
        assert value(s, "plugin_faults_total", listener="vm") == 0
        assert value(s, "streams_refused_total", reason="unknown_listener") == 1
        assert value(s, "internal_errors_total") == 0
        assert value(s, "workers_serving") == 1
        assert value(s, "startup_seconds_count") == 1
        assert not any("connection" in dict(labels) or "peer" in dict(labels) for _, labels in s)
    finally:
        await envoy.stop()
        await lightcell.stop()
        await upstream.stop()

    records = [json.loads(line) for line in lightcell.log().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    fault = next(r for r in records if r["message"].startswith("plugin fault"))
    assert {k: fault[k] for k in ("listener", "plugin", "tier", "fault", "protocol")} == {
        "listener": "denied", "plugin": "probe", "tier": "wasmtime", "fault": "denied", "protocol": "tcp",
    }  # fmt: skip
    assert fault["sandbox"] not in ("", "-") and fault["level"] == "warning"
    denial = next(r for r in records if r["message"].startswith("denied capability"))
    assert (denial["listener"], denial["capability"]) == ("denied", "kv")
    refusal = next(r for r in records if r["message"].startswith("stream refused"))
    assert (refusal["reason"], refusal["protocol"]) == ("unknown_listener", "tcp")
    assert any(r["message"].startswith("metrics on http://127.0.0.1:") for r in records)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.envoy
async def test_two_workers_one_scrape(built_plugins: dict[str, Path], tmp_path: Path) -> None:
    sockets = [tmp_path / "lc.0.sock", tmp_path / "lc.1.sock"]
    upstream = await Upstream().start()
    spec = ListenerSpec("upper", upstream.port, policy(built_plugins["rewrite"], "read=upper", "wasmtime"),
                        message_timeout="30s")  # fmt: skip
    bootstrap = render_bootstrap([spec], sockets)
    config = write_config(bootstrap, tmp_path / "lightcell.yaml")
    log_path = tmp_path / "lightcell.log"
    metrics_port = free_port()
    argv = [
        *lightcell_command(), "serve", "--envoy-config", str(config), "--socket", str(tmp_path / "lc.sock"),
        "--workers", "2", "--metrics-address", f"127.0.0.1:{metrics_port}",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    envoy = EnvoyProcess(bootstrap, tmp_path)
    try:
        for sock in sockets:
            assert await wait_for_unix_socket(sock, 120.0, lambda: proc.poll() is None), log_path.read_text()
        match = re.search(r"metrics: workers write to (\S+)", log_path.read_text())
        assert match, log_path.read_text()
        directory = Path(match.group(1))
        assert directory.is_dir() and directory.stat().st_mode & 0o077 == 0
        await envoy.start()
        n = 20
        replies = await asyncio.gather(*(exchange(envoy.ports["upper"], b"w %d\n" % i) for i in range(n)))
        assert replies == [b"W %d\n" % i for i in range(n)]
        s = await until(
            metrics_port,
            lambda s: value(s, "connections_active") == 0 and value(s, "workers_serving") == 2,
            "both workers serving, every connection over",
        )
        # One scrape, the sum of both workers: every connection counted once.
        assert value(s, "connections_total", listener="upper", tier="wasmtime") == n
        assert value(s, "hook_seconds_count", hook="on-data", tier="wasmtime") >= n
        assert value(s, "wasmtime_warm_instances", listener="upper") == 2 * WARM_INSTANCES
        serving = re.search(r"2 workers serving \(pids (\d+), (\d+)\)", log_path.read_text())
        assert serving, log_path.read_text()
        pids = {int(p) for p in serving.groups()}
        assert len(pids) == 2 and len(list(directory.glob("counter_*.db"))) == 2, sorted(directory.iterdir())

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0, log_path.read_text()
        assert not directory.exists()  # the supervisor removed the workers' files
        assert all(_gone(pid) for pid in pids)
    finally:
        await envoy.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await upstream.stop()
