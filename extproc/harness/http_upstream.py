"""An HTTP/1.1 echo server on loopback: the demo's (and compose's) protected HTTP upstream.

Answers every request 200 with the request body as its body (content-length set),
and records (method, path, body) per request. Request bodies may come with a
content-length or chunked (Envoy re-frames a body that ext_proc streamed).
`python -m extproc.harness.http_upstream [--host H] [--port P]` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["HttpEcho"]

MAX_BODY = 1 << 20
"""Bodies beyond this are refused (413): a demo server, not a sink for anything sent."""


@dataclass
class HttpEcho:
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)
    _server: asyncio.Server | None = None

    async def start(self) -> HttpEcho:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> HttpEcho:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A client that goes away, or sends what is not HTTP/1.1: that connection ends.
        broken = (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError)
        with contextlib.suppress(*broken):
            while True:  # keep-alive: one request after another
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, path, _ = head[0].split(" ", 2)
                fields = (h.partition(":") for h in head[1:] if h)
                headers = {k.strip().lower(): v.strip() for k, _, v in fields}
                body = await _body(reader, headers)
                if body is None:
                    writer.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                    break
                self.requests.append((method, path, body))
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        writer.close()


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes | None:
    """The request body (None: over MAX_BODY)."""
    if "content-length" in headers:
        length = int(headers["content-length"])
        return None if length > MAX_BODY else await reader.readexactly(length)
    if headers.get("transfer-encoding", "").lower() != "chunked":
        return b""
    body = bytearray()
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        if len(body) + size > MAX_BODY:
            return None
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
        pass
    return bytes(body)


async def _serve_forever(host: str, port: int) -> None:
    async with HttpEcho(host, port) as echo:
        print(f"HTTP echo upstream on {host}:{echo.port}", flush=True)
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m extproc.harness.http_upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9080)
    opts = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(opts.host, opts.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
