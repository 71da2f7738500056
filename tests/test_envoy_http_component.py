"""End to end over HTTP with a Python component: real Envoy 1.40 (HTTP ext_proc) -> real
`lightcell serve` -> the guard example (componentize-py, written with lightcell_sdk) -> a real
HTTP/1.1 upstream on loopback (the helpers of test_envoy_http.py). Twice: policy `tier: auto`,
which puts it in a KVM micro-VM per request (CPython compiled for the guest ahead, cached), and
`tier: wasmtime`.

Listener `web` runs guard with `block=/admin,/private`: other requests reach the upstream with
`x-guard: checked` (and without the client's `x-guard-debug`), responses come back with
`x-guard: on` and `x-guard-hooks: 2`; blocked paths get guard's own 403.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from email.message import Message

import pytest
from test_envoy_http import IO_TIMEOUT, REPLY_PREFIX, HttpUpstream, Stack, _bootstrap, _listener, _policy

from extproc.harness import EnvoyProcess, LightcellProcess, write_config
from plugins import build as plugin_build
from vmm.microvm.compile import compile_plugin

pytestmark = [pytest.mark.envoy, pytest.mark.kvm]

# guard's CPython needs more than the 16 MiB of test_envoy_http's plugins; its first calls
# (on-open per request) more than their 2 ms a hook on a busy 2-core machine.
GUARD_LIMITS = {"memory_mb": 64, "event_cpu_ms": 2000}


@pytest.fixture(scope="module", params=["auto", "wasmtime"])
async def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[Stack]:
    workdir = tmp_path_factory.mktemp("envoy_http_component")
    socket = workdir / "lightcell.sock"
    guard = await asyncio.to_thread(plugin_build.build, "guard")
    if request.param == "auto":
        # Built ahead, as a deployment would (`lightcell compile`): serve then picks the micro-VM
        # at once instead of serving wasmtime while it builds (tests/test_background_compile.py).
        await asyncio.to_thread(compile_plugin, guard, world=None)
    upstreams = {"web": await HttpUpstream().start()}
    policy = {**_policy(guard, "block=/admin,/private"), "tier": request.param, "limits": GUARD_LIMITS}
    web = _listener("web", upstreams["web"].port, policy)
    bootstrap = _bootstrap([web], upstreams, socket)
    lightcell = LightcellProcess(
        write_config(bootstrap, workdir / "lightcell.yaml"), socket, workdir / "lightcell.log"
    )
    envoy = EnvoyProcess(bootstrap, workdir)
    try:
        await lightcell.start()
        await envoy.start()
        yield Stack(envoy, lightcell, upstreams)
    finally:
        await envoy.stop()
        await lightcell.stop()
        await upstreams["web"].stop()


def _fetch(url: str, headers: dict[str, str]) -> tuple[int, bytes, Message]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=IO_TIMEOUT) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


async def fetch(stack: Stack, path: str) -> tuple[int, bytes, Message]:
    return await asyncio.to_thread(_fetch, stack.url("web", path), {"x-guard-debug": "leak"})


async def test_a_normal_path_gets_headers_both_ways(stack: Stack) -> None:
    up = stack.upstreams["web"]
    for i in range(3):  # every request's filter starts fresh: always its own two hooks
        status, body, headers = await fetch(stack, f"/shop/{i}")
        assert status == 200, stack.diagnose()
        assert body == REPLY_PREFIX
        assert (headers["x-guard"], headers["x-guard-hooks"]) == ("on", "2")
        assert up.requests[-1] == (f"/shop/{i}", b"")
    raw = bytes(up.raw).lower()
    assert raw.count(b"x-guard: checked\r\n") == 3
    assert b"x-guard-debug" not in raw
    log = stack.lightcell.log()
    # exactly one: auto must have picked the micro-VM (KVM works wherever this suite runs)
    assert ("tier auto -> microvm (/dev/kvm works" in log) != ("tier wasmtime (asked for" in log), log
    assert "only one wall is up" not in log


@pytest.mark.parametrize("path", ["/admin", "/private/notes?x=1"])
async def test_a_blocked_path_gets_the_plugins_403(stack: Stack, path: str) -> None:
    up = stack.upstreams["web"]
    seen = len(up.requests)
    status, body, headers = await fetch(stack, path)
    assert status == 403, stack.diagnose()
    assert body == f"guard: {path} is blocked\n".encode()
    assert (headers["x-guard"], headers["content-type"]) == ("blocked", "text/plain")
    assert len(up.requests) == seen  # nothing reached the upstream


async def test_a_python_trap_with_log_granted_does_not_crash_the_worker_at_exit(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """In wasmtime, a component's stdout/stderr reach the log through a Python callback that
    wasmtime calls from its own (tokio) threads. After a Python plugin raised with `log`
    granted (its traceback on stderr), such a thread could still be writing when the worker
    exited: a native thread that needs the GIL once Python is finalizing is ended with
    pthread_exit, Rust cannot unwind through that, and the worker aborted ("panic in a function
    that cannot unwind"; SIGABRT after a reload, exit status 1 from serve). A worker exits
    without finalizing, after flushing its logs."""
    workdir = tmp_path_factory.mktemp("envoy_http_python_trap")
    socket = workdir / "lightcell.sock"
    guard = await asyncio.to_thread(plugin_build.build, "guard")
    upstreams = {"web": await HttpUpstream().start()}
    policy = {**_policy(guard, "block=admin"), "tier": "wasmtime", "grants": ["log"], "limits": GUARD_LIMITS}
    bootstrap = _bootstrap([_listener("web", upstreams["web"].port, policy)], upstreams, socket)
    lightcell = LightcellProcess(write_config(bootstrap, workdir / "lightcell.yaml"), socket,
                                 workdir / "lightcell.log")  # fmt: skip
    envoy = EnvoyProcess(bootstrap, workdir)
    try:
        await lightcell.start()
        await envoy.start()
        stack = Stack(envoy, lightcell, upstreams)
        for i in range(3):  # on-open raises: "block prefixes must start with '/'"
            status, _, _ = await fetch(stack, f"/shop/{i}")
            assert status == 500, stack.diagnose()
        assert "block prefixes must start with" in lightcell.log()  # its stderr, as log lines
    finally:
        await envoy.stop()
        code = await lightcell.stop()
        await upstreams["web"].stop()
    log = lightcell.log()
    # (the plugin's own stderr says "panicked": componentize-py's runtime, on the exception)
    assert "tokio-rt-worker" not in log and "cannot unwind" not in log, log[-3000:]
    assert code == 0, log[-3000:]
