"""Echo upstream for bench_envoy.py: one asyncio process, N listening ports on 127.0.0.1.

    python benchmarks/_echo_upstream.py N

Prints the bound ports as one JSON line (`[p1, p2, ...]`) once all listen, then echoes
every byte back until killed; a connection closes (after flushing) when the peer's FIN
arrives. A Protocol, not streams, and nothing is recorded, so that a 16 MiB bulk echo
costs the upstream as little as possible. It runs in its own process so that the
benchmark's client and the upstream do not share a GIL.
"""

from __future__ import annotations

import asyncio
import json
import sys


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def main(count: int) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(Echo, "127.0.0.1", 0, backlog=4096) for _ in range(count)]
    print(json.dumps([s.sockets[0].getsockname()[1] for s in servers]), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
