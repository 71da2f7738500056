"""A loopback TCP upstream: echo, record, or greet and close first.

    python -m extproc.harness echo [--host H] [--port P]

runs the demo's echo upstream alone (docker-compose.yml's `echo` service).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Upstream", "UpstreamMode", "free_port", "main"]


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
    """`python -m extproc.harness echo [--host H] [--port P]`: the demo's echo upstream alone."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m extproc.harness")
    parser.add_argument("command", choices=["echo"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    opts = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_echo(opts.host, opts.port))
    return 0
