"""End to end over HTTP in the micro-VM tier: real Envoy 1.40 (HTTP ext_proc) -> real
`lightcell serve` -> http-filter plugins, each HTTP request in its own KVM micro-VM
(policy `tier: microvm`), with real HTTP/1.1 upstreams on loopback (the helpers of
test_envoy_http.py).

Listener `web` runs redact (masks "secret"); `count` runs tests/http_plugins/answer.c,
which sets `x-hooks-run: N` counting the hooks its instance ran, so a request that
shared a VM with another would see more than its own two; `fault_close` runs redact
without a pattern (on-open traps) under failure mode close.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_envoy_http import IO_TIMEOUT, REPLY_PREFIX, HttpUpstream, Stack, _bootstrap, _listener, _policy

from extproc.harness import EnvoyProcess, LightcellProcess, write_config

pytestmark = [pytest.mark.envoy, pytest.mark.kvm]

CONCURRENT = 200


def _microvm(policy: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**policy, "tier": "microvm", **extra}


@pytest.fixture(scope="module")
async def stack(
    built_plugins: dict[str, Path], answer: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    workdir = tmp_path_factory.mktemp("envoy_http_microvm")
    socket = workdir / "lightcell.sock"
    redact = built_plugins["redact"]
    upstreams = {name: await HttpUpstream().start() for name in ("web", "count", "fault_close")}
    listeners = [
        _listener("web", upstreams["web"].port, _microvm(_policy(redact, "pattern=secret"))),
        _listener("count", upstreams["count"].port, _microvm(_policy(answer, ""))),
        _listener("fault_close", upstreams["fault_close"].port, _microvm(_policy(redact, "", "close"))),
    ]
    config = write_config(_bootstrap(listeners, upstreams, socket), workdir / "lightcell.yaml")
    lightcell = LightcellProcess(config, socket, workdir / "lightcell.log", ["--log-level", "debug"])
    envoy = EnvoyProcess(_bootstrap(listeners, upstreams, socket), workdir)
    try:
        await lightcell.start()
        await envoy.start()
        yield Stack(envoy, lightcell, upstreams)
    finally:
        await envoy.stop()
        await lightcell.stop()
        for up in upstreams.values():
            await up.stop()


async def request(stack: Stack, listener: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 POST on its own connection: (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.envoy.ports[listener])
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {len(body)}\r\n"
                     "connection: close\r\n\r\n".encode() + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), IO_TIMEOUT)
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body_out = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body_out, rest = body_out + rest[:size], rest[size + 2:]
        rest = body_out
    return int(lines[0].split(" ")[1]), headers, rest


async def test_the_plugins_are_served_from_micro_vms(stack: Stack) -> None:
    log = stack.lightcell.log()
    for name in ("web", "count", "fault_close"):
        assert f"http listener {name}: plugin " in log and f"{name}: plugin" in log
    assert log.count("tier microvm (asked for by the policy)") >= 3, stack.diagnose()
    assert "only one wall is up" not in log
    status, headers, body = await request(stack, "web", "/x", b"a secret here")
    assert status == 200, stack.diagnose()
    assert stack.upstreams["web"].requests[-1] == ("/x", b"a ****** here")
    assert body == REPLY_PREFIX.replace(b"secret", b"******") + b"a ****** here"
    assert headers["x-lightcell-redacted"] == "2"


async def test_many_concurrent_requests_each_in_its_own_vm(stack: Stack) -> None:
    async def one(n: int) -> tuple[int, dict[str, str], bytes]:
        listener = "web" if n % 2 else "count"
        return await request(stack, listener, f"/r{n}", f"req {n} secret".encode())

    results = await asyncio.gather(*(one(n) for n in range(CONCURRENT)))
    for n, (status, headers, body) in enumerate(results):
        assert status == 200, (n, stack.diagnose())
        if n % 2:  # redact: each request's own body, masked
            assert body.endswith(f"got: req {n} ******".encode()), (n, body)
        else:  # answer.c: the request and the response hook of this request, and nothing else
            assert headers["x-hooks-run"] == "2", (n, headers)
            assert body.endswith(f"got: req {n} secret".encode()), (n, body)
    counted = [p for p, _ in stack.upstreams["count"].requests]
    assert sorted(counted) == sorted(f"/r{n}" for n in range(0, CONCURRENT, 2))
    assert "plugin fault" not in stack.lightcell.log()


async def test_a_trapping_plugin_fails_closed(stack: Stack) -> None:
    up = stack.upstreams["fault_close"]
    status, _, body = await request(stack, "fault_close", "/x", b"token and secret")
    assert status == 500, stack.diagnose()
    assert b"secret" not in body and up.requests == [] and b"secret" not in up.raw
    log = stack.lightcell.log()
    assert log.count("plugin fault protocol=http listener=fault_close ") == 1
    assert "fault=trap failure_mode=close" in log
    # The VM was given back and restored: the next request faults the same way, on its own.
    status, _, _ = await request(stack, "fault_close", "/y", b"more")
    assert status == 500
    status, _, body = await request(stack, "web", "/after", b"secret")  # others are unaffected
    assert status == 200 and body.endswith(b"got: ******")
