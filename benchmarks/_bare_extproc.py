"""Baseline for bench_tcp_extproc.py: a bare grpc.aio network ext_proc servicer.

No sandbox, no policy: it upper-cases each chunk inline and replies. Run as a
separate process (like `lightcell serve`) so the benchmark's client measures
the gRPC hop alone:  python benchmarks/_bare_extproc.py SOCKET
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc
from envoy.service.network_ext_proc.v3 import network_external_processor_pb2 as pb
from envoy.service.network_ext_proc.v3 import network_external_processor_pb2_grpc as pb_grpc


class Bare(pb_grpc.NetworkExternalProcessorServicer):  # type: ignore[misc]
    async def Process(
        self, requests: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        async for req in requests:
            if req.HasField("read_data"):
                d = req.read_data
                out = pb.Data(data=d.data.upper(), end_of_stream=d.end_of_stream)
                yield pb.ProcessingResponse(read_data=out)
            else:
                d = req.write_data
                yield pb.ProcessingResponse(write_data=pb.Data(data=d.data, end_of_stream=d.end_of_stream))


async def main(socket_path: str) -> None:
    server = grpc.aio.server()
    pb_grpc.add_NetworkExternalProcessorServicer_to_server(Bare(), server)
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
