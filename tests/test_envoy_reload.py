"""Live reload end to end: real Envoy 1.40 -> real `lightcell serve` -> the rewrite plugin.

A listener's plugin config is rewritten (read=upper -> read=lower) while a
connection is open, with the workers confined (seccomp, the default): the
supervisor starts a new worker, which takes new connections (lower-casing), while
the open connection keeps upper-casing on the old worker, which exits once that
connection ends. Then a broken edit is refused and traffic goes on under the last
good policy. Once through SIGHUP, once through `serve --watch`. Envoy itself is
not reloaded (it read its own copy of the file once): Lightcell re-reads only
the policies in the listeners' metadata. Assertions are on bytes; the waits for
a log line are bounded only to fail instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from extproc.harness import (
    EnvoyProcess,
    LightcellProcess,
    ListenerSpec,
    Upstream,
    UpstreamMode,
    render_bootstrap,
    write_config,
)

pytestmark = [pytest.mark.envoy]
IO_TIMEOUT = 30.0
LIMITS = {"memory_mb": 16, "event_cpu_ms": 2000}


def _policy(plugin: Path, read_op: str) -> dict[str, object]:
    return {"plugin": str(plugin), "config": f"read={read_op}", "tier": "wasmtime", "limits": LIMITS}


@dataclass
class Stack:
    envoy: EnvoyProcess
    lightcell: LightcellProcess
    config: Path
    specs: list[ListenerSpec]
    plugin: Path

    def write(self, read_op: str) -> None:
        """Rewrite Lightcell's copy of the config with the listener's plugin config changed."""
        policy = _policy(self.plugin, read_op)
        specs = [ListenerSpec(s.name, s.upstream_port, policy, message_timeout="30s") for s in self.specs]
        bootstrap = render_bootstrap(specs, self.lightcell.socket_path)
        # Written whole and renamed: the watcher never sees half a file.
        write_config(bootstrap, self.config.with_suffix(".tmp")).replace(self.config)

    async def wait_for_log(self, text: str, count: int) -> None:
        deadline = time.monotonic() + IO_TIMEOUT
        while self.lightcell.log().count(text) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"no {count}x {text!r} in lightcell's log:\n{self.lightcell.log()[-3000:]}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _stack(
    workdir: Path, plugin: Path, upstream: Upstream, extra_args: list[str]
) -> AsyncIterator[Stack]:
    socket_path = workdir / "lightcell.sock"
    specs = [ListenerSpec("edge", upstream.port, _policy(plugin, "upper"), message_timeout="30s")]
    config = write_config(render_bootstrap(specs, socket_path), workdir / "lightcell.yaml")
    lightcell = LightcellProcess(config, socket_path, workdir / "lightcell.log", extra_args)
    envoy = EnvoyProcess(render_bootstrap(specs, socket_path), workdir)
    try:
        await lightcell.start()
        await envoy.start()
        yield Stack(envoy, lightcell, config, specs, plugin)
    finally:
        await envoy.stop()
        await lightcell.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream(UpstreamMode.ECHO).start()
    yield up
    await up.stop()


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(*await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT))

    async def echo(self, data: bytes) -> bytes:
        """What comes back through the plugin and the echoing upstream."""
        self.writer.write(data)
        await self.writer.drain()
        return await asyncio.wait_for(self.reader.readexactly(len(data)), IO_TIMEOUT)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest.mark.parametrize("how", ["sighup", "watch"])
async def test_open_connection_keeps_the_old_policy_new_ones_get_the_new(
    how: str, built_plugins: dict[str, Path], upstream: Upstream, tmp_path: Path
) -> None:
    extra = ["--watch"] if how == "watch" else []
    async with _stack(tmp_path, built_plugins["rewrite"], upstream, extra) as stack:
        pid = stack.lightcell.pid
        assert pid is not None

        async def reload(expect: str, count: int) -> None:
            if how == "sighup":
                os.kill(pid, signal.SIGHUP)
            await stack.wait_for_log(expect, count)

        port = stack.envoy.ports["edge"]
        before = await Client.connect(port)
        assert await before.echo(b"Hello") == b"HELLO"

        stack.write("lower")
        await reload("reload applied", 1)
        assert "reload: listener edge: changed" in stack.lightcell.log()
        assert stack.lightcell.log().count("seccomp filter installed on every thread") == 2
        assert await before.echo(b"World") == b"WORLD"  # its sandbox: the old plugin config
        after = await Client.connect(port)
        assert await after.echo(b"World") == b"world"

        # A broken edit: refused (check's message in the log), nothing changes.
        stack.config.write_text(stack.config.read_text().replace("tier: wasmtime", "tier: quantum"))
        await reload("reload refused", 1)
        assert "'quantum' is not one of auto | microvm | wasmtime" in stack.lightcell.log()
        third = await Client.connect(port)
        assert await third.echo(b"MiXed") == b"mixed"
        assert await before.echo(b"still") == b"STILL"
        assert "finished its open streams" not in stack.lightcell.log()
        await before.close()  # the old worker's last connection: it exits
        await stack.wait_for_log("finished its open streams", 1)
        assert await third.echo(b"Again") == b"again"
        for client in (after, third):
            await client.close()
        assert stack.lightcell.running
