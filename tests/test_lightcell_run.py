"""`lightcell run` (vmm/microvm/run.py): the udp-echo example (plugins/examples/
udp-echo, a wasi:cli/command component in C against WASI 0.2.9 sockets) in a
real micro-VM, driven through the CLI as a user would.

Datagrams come back from the address it was told to bind; it cannot bind
anywhere --udp-bind does not list, nor send anywhere but back to its peers or
to --allow destinations (the same forward succeeds once allowed), and
without --grant egress it gets no network at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from plugins import build as plugin_build
from vmm.microvm.command import command_core
from vmm.microvm.compile import CompileError
from vmm.microvm.run import FAULT_STATUS

pytestmark = pytest.mark.kvm

WAIT_S = 120.0  # a guard against hanging only (the first run compiles the image)


@pytest.fixture(scope="module")
def echo() -> Path:
    return plugin_build.build("udp-echo")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Run:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def line_with(self, text: str) -> str:
        """Read stderr until a line containing `text` (log lines and errors go there)."""
        assert self.proc.stderr is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stderr.readline(), WAIT_S)
            if not raw:
                raise AssertionError(f"exited without {text!r}: {self.lines}")
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            if text in self.lines[-1]:
                return self.lines[-1]

    async def status(self) -> int:
        assert self.proc.stderr is not None
        rest = await asyncio.wait_for(self.proc.stderr.read(), WAIT_S)
        self.lines += rest.decode(errors="replace").splitlines()
        return await asyncio.wait_for(self.proc.wait(), WAIT_S)


@contextlib.asynccontextmanager
async def lightcell_run(*argv: str) -> AsyncIterator[Run]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "extproc.cli", "run", *argv,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield Run(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


class Client:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)

    async def ask(self, payload: bytes, port: int) -> tuple[bytes, int]:
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(self.sock, payload, ("127.0.0.1", port))
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65536), WAIT_S)
        return data, int(addr[1])


async def test_echo_returns_every_datagram_from_the_bound_address(echo: Path) -> None:
    port = _free_port()
    async with lightcell_run(str(echo), "--grant", "egress", "--grant", "log",
                             "--udp-bind", f"127.0.0.1:{port}", "--", f"127.0.0.1:{port}") as run:
        await run.line_with(f"listening on 127.0.0.1:{port}")
        client = Client()
        for payload in (b"hello", b"", bytes(range(256)) * 5, b"x" * 1400):
            assert await client.ask(payload, port) == (payload, port)
        second = Client()  # another peer: answered too
        assert await second.ask(b"me too", port) == (b"me too", port)
        await asyncio.get_running_loop().sock_sendto(client.sock, b"quit", ("127.0.0.1", port))
        assert await run.status() == 0
        assert sum("echo " in line for line in run.lines) == 5


async def test_bind_outside_udp_bind_fails(echo: Path) -> None:
    allowed, other = _free_port(), _free_port()
    async with lightcell_run(str(echo), "--grant", "egress", "--grant", "log",
                             "--udp-bind", f"127.0.0.1:{allowed}", "--", f"127.0.0.1:{other}") as run:
        assert await run.status() == 1  # run() returned err after the refused bind
    refused = f"bind 127.0.0.1:{other} failed: error 1"  # 1: access-denied
    assert any(refused in line for line in run.lines), run.lines
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", other))  # nobody holds it


async def test_send_only_to_peers_and_allowed_destinations(echo: Path) -> None:
    port = _free_port()
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target.bind(("127.0.0.1", 0))
    target.setblocking(False)
    forward = f"127.0.0.1:{target.getsockname()[1]}"
    bind = ("--udp-bind", f"127.0.0.1:{port}", "--", f"127.0.0.1:{port}", forward)
    loop = asyncio.get_running_loop()
    with target:
        async with lightcell_run(str(echo), "--grant", "egress", "--grant", "log", *bind) as run:
            await run.line_with("listening on")
            assert await Client().ask(b"secret", port) == (b"secret", port)
            await run.line_with("forward failed: error 1")  # access-denied: not a peer, not allowed
            with pytest.raises(BlockingIOError):
                target.recvfrom(100)  # the refusal came before any send: nothing can still arrive
        # The same forward, allowed: it arrives (so the refusal above was the rule, not a bug).
        async with lightcell_run(str(echo), "--grant", "egress", "--grant", "log", "--allow", forward,
                                 *bind) as run:
            await run.line_with("listening on")
            assert await Client().ask(b"public", port) == (b"public", port)
            data = await asyncio.wait_for(loop.sock_recv(target, 100), WAIT_S)
            assert data == b"public"
            await run.line_with("forward ok")


async def test_without_egress_there_is_no_network(echo: Path) -> None:
    port = _free_port()
    async with lightcell_run(str(echo), "--grant", "log", "--udp-bind", f"127.0.0.1:{port}",
                             "--", f"127.0.0.1:{port}") as run:
        assert await run.status() == FAULT_STATUS
    assert any("capability 'egress' not granted" in line for line in run.lines), run.lines


def test_a_filter_plugin_is_not_a_command(built_plugins: dict[str, Path]) -> None:
    with pytest.raises(CompileError, match="not a wasi:cli/command"):
        command_core(built_plugins["probe"].read_bytes(), "probe.wasm")
