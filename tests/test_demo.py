"""`lightcell demo`'s pieces without Envoy: the rendered config and the HTTP echo upstream.
The demo end to end (real Envoy, both upstreams) is test_envoy_tcp.py's demo test."""

from __future__ import annotations

import asyncio
from pathlib import Path

from extproc import demo
from extproc.harness.http_upstream import MAX_BODY, HttpEcho


def test_render_points_both_echo_clusters_and_the_socket_at_the_runtime_ones(tmp_path: Path) -> None:
    config = demo.render_demo_config(demo.DEMO_CONFIG, tmp_path / "s.sock", 1111, True, 2222)
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    address = {
        name: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        for name, c in clusters.items()
    }
    assert address["lightcell"] == {"pipe": {"path": str(tmp_path / "s.sock")}}
    assert address["echo"]["socket_address"]["port_value"] == 1111
    assert address["http_echo"]["socket_address"]["port_value"] == 2222
    listeners = {lst["name"]: lst for lst in config["static_resources"]["listeners"]}
    assert set(demo.SCENARIOS) == set(listeners)  # every listener has its scenario
    assert set(demo.HTTP_LISTENERS) < set(listeners)
    for lst in listeners.values():
        assert lst["address"]["socket_address"]["port_value"] == 0  # any_port
        plugin = Path(lst["metadata"]["filter_metadata"]["lightcell"]["plugin"])
        assert plugin.is_absolute() and plugin.parent.name == "build"


async def _exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    writer.write_eof()
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return reply


async def test_http_echo_answers_each_body_content_length_or_chunked() -> None:
    async with HttpEcho() as echo:
        reply = await _exchange(
            echo.port,
            b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello"
            b"POST /b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n"
            b"GET /c HTTP/1.1\r\nhost: x\r\n\r\n",
        )
    assert echo.requests == [("POST", "/a", b"hello"), ("POST", "/b", b"abcde"), ("GET", "/c", b"")]
    assert reply.count(b"HTTP/1.1 200 OK") == 3
    assert reply.endswith(b"content-length: 0\r\n\r\n")
    assert b"content-length: 5\r\n\r\nhello" in reply and b"content-length: 5\r\n\r\nabcde" in reply


async def test_http_echo_refuses_a_body_over_its_limit() -> None:
    async with HttpEcho() as echo:
        big = f"POST / HTTP/1.1\r\ncontent-length: {MAX_BODY + 1}\r\n\r\n".encode()
        reply = await _exchange(echo.port, big)
    assert reply.startswith(b"HTTP/1.1 413 ") and echo.requests == []
