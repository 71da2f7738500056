"""Connections through a real Envoy while `lightcell serve` reloads: does any fail?

    python -m devtools.reload_stress [--tier wasmtime|microvm] [--tcp] [--reloads 6] [--clients 4]

Clients open connection after connection (send 3 bytes, read them back through the rewrite
plugin and an echo upstream) while the config flips read=upper/read=lower and the supervisor
gets SIGHUP; each reload waits for its "reload applied" line. Prints the count of connections
that failed, and how many each policy served. `--tcp`: Envoy reaches Lightcell on a loopback
port (SO_REUSEPORT hand-over) instead of the Unix socket (rename hand-over).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from extproc.harness import (
    SIDECAR_CLUSTER,
    EnvoyProcess,
    LightcellProcess,
    ListenerSpec,
    Upstream,
    UpstreamMode,
    render_bootstrap,
    write_config,
)
from extproc.harness.upstream import free_port

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "plugins" / "examples" / "build" / "rewrite.wasm"
IO_TIMEOUT = 30.0


def _bootstrap(op: str, tier: str, upstream: int, sock: Path, tcp_port: int | None) -> dict[str, Any]:
    policy = {"plugin": str(PLUGIN), "config": f"read={op}", "tier": tier,
              "limits": {"memory_mb": 16, "event_cpu_ms": 2000}}  # fmt: skip
    boot = render_bootstrap([ListenerSpec("edge", upstream, policy, message_timeout="30s")], sock)
    if tcp_port is not None:
        for cluster in boot["static_resources"]["clusters"]:
            if cluster["name"] == SIDECAR_CLUSTER:
                endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                endpoint["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": tcp_port}}
    return boot


async def _client(port: int, counts: Counter[str], running: asyncio.Event) -> None:
    while running.is_set():
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT)
            writer.write(b"abc")
            got = await asyncio.wait_for(reader.readexactly(3), IO_TIMEOUT)
            counts["upper" if got == b"ABC" else "lower"] += 1
            writer.close()
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
            counts["failed"] += 1
            print(f"failed: {type(e).__name__}: {e}", file=sys.stderr)


async def run(tier: str, tcp: bool, reloads: int, clients: int, work: Path) -> Counter[str]:
    upstream = await Upstream(UpstreamMode.ECHO).start()
    sock, tcp_port = work / "lc.sock", free_port() if tcp else None
    config = work / "lightcell.yaml"
    write_config(_bootstrap("upper", tier, upstream.port, sock, tcp_port), config)
    extra = [] if tcp_port is None else ["--port", str(tcp_port)]
    lightcell = LightcellProcess(config, sock, work / "lightcell.log", extra)
    envoy = EnvoyProcess(_bootstrap("upper", tier, upstream.port, sock, tcp_port), work)
    counts: Counter[str] = Counter()
    running = asyncio.Event()
    try:
        await lightcell.start(timeout_s=300)
        await envoy.start()
        running.set()
        tasks = [asyncio.create_task(_client(envoy.ports["edge"], counts, running)) for _ in range(clients)]
        assert lightcell.pid is not None
        for i in range(reloads):
            await asyncio.sleep(2)
            op = "lower" if i % 2 == 0 else "upper"
            boot = _bootstrap(op, tier, upstream.port, sock, tcp_port)
            write_config(boot, work / "next.yaml").replace(config)  # whole, renamed
            os.kill(lightcell.pid, signal.SIGHUP)
            while lightcell.log().count("reload applied") < i + 1:
                await asyncio.sleep(0.05)
            print(f"reload {i + 1}: {dict(counts)}")
        await asyncio.sleep(2)
        running.clear()
        await asyncio.gather(*tasks)
    finally:
        await envoy.stop()
        await lightcell.stop()
        await upstream.stop()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.reload_stress", description=__doc__)
    parser.add_argument("--tier", default="wasmtime", choices=["wasmtime", "microvm"])
    parser.add_argument("--tcp", action="store_true", help="Envoy reaches Lightcell on a loopback port")
    parser.add_argument("--reloads", type=int, default=6)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)
    if not PLUGIN.is_file():
        print(f"{PLUGIN} missing: build the example plugins first (tests do)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lightcell-reload-stress-") as work:
        counts = asyncio.run(run(args.tier, args.tcp, args.reloads, args.clients, Path(work)))
    total = counts["upper"] + counts["lower"] + counts["failed"]
    print(f"{total} connections over {args.reloads} reloads: {counts['failed']} failed "
          f"({counts['upper']} upper, {counts['lower']} lower)")  # fmt: skip
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
