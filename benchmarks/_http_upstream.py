"""HTTP/1.1 upstream for bench_envoy_http.py: one asyncio process, N ports on 127.0.0.1.

    python benchmarks/_http_upstream.py N

Prints the bound ports as one JSON line once all listen. Every request (GET, no
body: the benchmark sends nothing else) gets `200` with the value of its
`x-bench` request header as the body (`-` when absent), on a keep-alive
connection, so the client can check that a row's filter added the header. A
Protocol with a minimal parser, and it runs in its own process, so the
upstream costs each row the same and little.
"""

from __future__ import annotations

import asyncio
import json
import sys

HEADER = b"\r\nx-bench:"


class Upstream(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head, self.buf = self.buf[: end + 2], self.buf[end + 4 :]
            at = head.lower().find(HEADER)
            seen = head[at + len(HEADER) : head.index(b"\r\n", at + 2)].strip() if at >= 0 else b"-"
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(seen), seen))


async def main(count: int) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(Upstream, "127.0.0.1", 0, backlog=4096) for _ in range(count)]
    print(json.dumps([s.sockets[0].getsockname()[1] for s in servers]), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
