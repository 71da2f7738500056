"""Baseline for bench_envoy_http.py: a bare grpc.aio HTTP ext_proc servicer.

No sandbox, no policy: to each request-headers message it replies, inline,
with one header mutation (`x-bench: lightcell`, in raw_value as Envoy 1.40
wants); anything else continues unchanged. Run as its own process (like
`lightcell serve`), so the benchmark measures the gRPC hop alone:
    python benchmarks/_bare_http_extproc.py SOCKET
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

ADD = pb.HeaderMutation(
    set_headers=[
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="x-bench", raw_value=b"lightcell"))
    ]
)
_CONTINUE = {
    "response_headers": pb.ProcessingResponse(response_headers=pb.HeadersResponse()),
    "request_body": pb.ProcessingResponse(request_body=pb.BodyResponse()),
    "response_body": pb.ProcessingResponse(response_body=pb.BodyResponse()),
    "request_trailers": pb.ProcessingResponse(request_trailers=pb.TrailersResponse()),
    "response_trailers": pb.ProcessingResponse(response_trailers=pb.TrailersResponse()),
}
ADDED = pb.ProcessingResponse(
    request_headers=pb.HeadersResponse(response=pb.CommonResponse(header_mutation=ADD))
)


class Bare(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    async def Process(
        self, requests: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        async for req in requests:
            phase = req.WhichOneof("request")
            yield ADDED if phase == "request_headers" else _CONTINUE[phase]


async def main(socket_path: str) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(Bare(), server)
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
