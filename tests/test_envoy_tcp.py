"""End to end: real Envoy 1.40 -> real `lightcell serve` -> real plugins, on real loopback sockets.

One Envoy + one Lightcell serve the whole module: every scenario has its own
listener (and, where a test inspects what reached the upstream, its own
upstream server). Assertions are on bytes and on how a connection ended
(FIN vs RST), never on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from extproc.harness import (
    EnvoyProcess,
    LightcellProcess,
    ListenerSpec,
    Upstream,
    UpstreamMode,
    lightcell_command,
    render_bootstrap,
    write_config,
)

pytestmark = [pytest.mark.envoy]
T = TypeVar("T")

# Every scenario runs once per tier listed here (the componentize-py counter too: the
# micro-VM compiles whole components).
TIERS = ("wasmtime", "microvm")
IO_TIMEOUT = 30.0  # generous: 2 shared cores; content is asserted, never timing
FAULTS = ("trap", "loop", "grow")
MODES = ("close", "reset", "allow")
# The CPU budget is wall-clock: 200 sandboxes at once on 2 shared cores can stall a
# well-behaved event past 50 ms. Well-behaved listeners get room; the faulty ones keep
# a tight budget so a loop is caught quickly.
WELL_BEHAVED = {"memory_mb": 16, "event_cpu_ms": 2000}
TIGHT = {"memory_mb": 16, "event_cpu_ms": 50}
# Envoy's per-message timeout: generous, so a burst of 200 sandbox set-ups is not a failure.
MESSAGE_TIMEOUT = "30s"


def make_policy(
    plugin: Path,
    config: str = "",
    *,
    failure: str = "close",
    grants: tuple[str, ...] = (),
    limits: Mapping[str, int] | None = None,
    tier: str = "wasmtime",
) -> dict[str, Any]:
    return {
        "plugin": str(plugin),
        "config": config,
        "tier": tier,
        "failure_mode": failure,
        "grants": list(grants),
        "limits": dict(limits or WELL_BEHAVED),
    }


@dataclass
class Stack:
    envoy: EnvoyProcess
    lightcell: LightcellProcess
    upstreams: dict[str, Upstream]
    workdir: Path
    lightcell_config: Path

    def port(self, listener: str) -> int:
        return self.envoy.ports[listener]

    def diagnose(self, listener: str) -> str:
        """Envoy's ext_proc counters for a listener and Lightcell's log tail, for failure messages."""
        stats = self.envoy.stats(f"network_ext_proc.{listener}.")
        log = "\n".join(self.lightcell.log().splitlines()[-15:])
        return f"envoy: {stats}\nlightcell log tail:\n{log}"


async def gather_or_fail(stack: Stack, listener: str, aws: list[Awaitable[T]]) -> list[T]:
    """Run all; if any failed, fail with how many, the first error and the diagnostics."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        diag = await asyncio.to_thread(stack.diagnose, listener)
        pytest.fail(f"{len(errors)}/{len(results)} failed, first: {errors[0]!r}\n{diag}")
    return [r for r in results if not isinstance(r, BaseException)]


def _listeners(plugins: dict[str, Path], tier: str) -> dict[str, tuple[dict[str, Any] | None, UpstreamMode]]:
    """listener name -> (policy, upstream mode). Every listener gets its own upstream."""
    rw, faulty, probe = plugins["rewrite"], plugins["faulty"], plugins["probe"]
    echo = UpstreamMode.ECHO

    def policy(plugin: Path, config: str = "", **kw: Any) -> dict[str, Any]:
        return make_policy(plugin, config, tier=tier, **kw)

    table: dict[str, tuple[dict[str, Any] | None, UpstreamMode]] = {
        "xform": (policy(rw, "read=upper,write=rot13", grants=("log",)), echo),
        "passthru": (policy(rw, "read=pass,write=pass"), echo),
        "number": (policy(rw, "read=pass,write=number"), echo),
        "counter": (  # componentize-py: CPython compiled whole for the micro-VM (component_glue)
            policy(plugins["counter"], grants=("kv",), limits={"memory_mb": 128, "event_cpu_ms": 2000}),
            echo,
        ),
        "greet": (policy(rw, "read=upper,write=rot13"), UpstreamMode.GREET_CLOSE),
        "denied": (policy(probe, "call=kv"), echo),
        "granted": (policy(probe, "call=kv", grants=("kv",)), echo),
        # probe sets dynamic metadata lightcell.probe=ok; only the first filter lets Envoy take it.
        "metadata_received": (policy(probe, "call=metadata", grants=("metadata",)), echo),
        "metadata_dropped": (policy(probe, "call=metadata", grants=("metadata",)), echo),
        # The filter sends connection_attributes (CONNECTION_ATTRIBUTES); probe writes them upstream.
        "attributes": (policy(probe, "call=attributes", grants=("connection",)), UpstreamMode.RECORD),
        "ghost": (policy(rw, "read=pass,write=pass"), echo),
        "killme": (policy(rw, "read=pass,write=pass"), echo),
    }
    for fault in FAULTS:
        for mode in MODES:
            table[f"{fault}_{mode}"] = (
                policy(faulty, f"mode={fault};after=3", failure=mode, limits=TIGHT),
                echo,
            )
        # A recording upstream never answers, so only client chunks count: fault on the 2nd.
        table[f"{fault}_record"] = (
            policy(faulty, f"mode={fault};after=2", limits=TIGHT),
            UpstreamMode.RECORD,
        )
    return table


CONNECTION_ATTRIBUTES = ("source.address", "destination.address", "connection.requested_server_name")


def ask_for_attributes(bootstrap: dict[str, Any], listener: str, attributes: tuple[str, ...]) -> None:
    """Set the network ext_proc filter's connection_attributes on one listener of a bootstrap."""
    (found,) = (lst for lst in bootstrap["static_resources"]["listeners"] if lst["name"] == listener)
    ext_proc = found["filter_chains"][0]["filters"][0]
    assert ext_proc["name"] == "envoy.filters.network.ext_proc"
    ext_proc["typed_config"]["connection_attributes"] = list(attributes)


@pytest.fixture(scope="module", params=TIERS)
async def stack(
    request: pytest.FixtureRequest, built_plugins: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    workdir = tmp_path_factory.mktemp(f"envoy_tcp_{request.param}")
    socket_path = workdir / "lightcell.sock"
    table = _listeners(built_plugins, request.param)
    upstreams = {name: await Upstream(mode).start() for name, (_, mode) in table.items()}
    specs = [
        ListenerSpec(
            name,
            upstreams[name].port,
            pol,
            # "ghost" names a listener Lightcell does not know.
            lightcell_name="no-such-listener" if name == "ghost" else None,
            message_timeout=MESSAGE_TIMEOUT,
            # Without metadata_options.receiving_namespaces Envoy drops the plugin's metadata.
            receive_metadata=name != "metadata_dropped",
            access_log=(workdir / f"{name}.access.log", ACCESS_LOG_FORMAT) if "metadata" in name else None,
        )
        for name, (pol, _) in table.items()
    ]
    # Lightcell gets only the listeners it should know; Envoy gets them all.
    # Both read connection_attributes (Lightcell's config check must accept the 1.40 field).
    lightcell_bootstrap = render_bootstrap([s for s in specs if s.name != "ghost"], socket_path)
    ask_for_attributes(lightcell_bootstrap, "attributes", CONNECTION_ATTRIBUTES)
    lightcell_config = write_config(lightcell_bootstrap, workdir / "lightcell.yaml")
    lightcell = LightcellProcess(lightcell_config, socket_path, workdir / "lightcell.log")
    envoy_config = render_bootstrap(specs, socket_path)
    ask_for_attributes(envoy_config, "attributes", CONNECTION_ATTRIBUTES)
    envoy = EnvoyProcess(envoy_config, workdir)
    try:
        await lightcell.start()
        await envoy.start()
        yield Stack(envoy, lightcell, upstreams, workdir, lightcell_config)
    finally:
        await envoy.stop()
        await lightcell.stop()
        for up in upstreams.values():
            await up.stop()


# ----------------------------------------------------------------------------- client helpers


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT)


async def read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(n), IO_TIMEOUT)


async def read_to_end(reader: asyncio.StreamReader) -> tuple[bytes, str]:
    """Everything until the connection ends, and how it ended: "eof" (FIN) or "reset" (RST)."""
    data = bytearray()
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), IO_TIMEOUT):
            data += chunk
    except (ConnectionResetError, BrokenPipeError):  # BrokenPipe: our own write met the peer's RST
        return bytes(data), "reset"
    return bytes(data), "eof"


async def exchange(port: int, payload: bytes) -> bytes:
    """Send, half-close, read the whole reply until FIN."""
    reader, writer = await connect(port)
    writer.write(payload)
    writer.write_eof()
    data, how = await read_to_end(reader)
    writer.close()
    assert how == "eof"
    return data


def try_write(writer: asyncio.StreamWriter, data: bytes) -> None:
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        writer.write(data)


async def upstream_done(up: Upstream, index: int = 0) -> bytes:
    """What upstream connection `index` received, once Envoy has closed it."""
    await asyncio.wait_for(up.wait_closed(index), IO_TIMEOUT)
    return bytes(up.received[index])


ROT13 = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    b"NOPQRSTUVWXYZABCDEFGHIJKLMnopqrstuvwxyzabcdefghijklm",
)


# ----------------------------------------------------------------------------- transformation


async def test_transforms_both_directions(stack: Stack) -> None:
    # read=upper on the way in, the echo sends "HELLO WORLD", write=rot13 on the way out.
    assert await exchange(stack.port("xform"), b"hello world\n") == b"URYYB JBEYQ\n"
    assert bytes(stack.upstreams["xform"].received[-1]) == b"HELLO WORLD\n"


async def test_pass_through(stack: Stack) -> None:
    payload = bytes(range(256)) * 4
    assert await exchange(stack.port("passthru"), payload) == payload


async def test_close_verdict_sends_fin(stack: Stack) -> None:
    reader, writer = await connect(stack.port("xform"))
    writer.write(b"ok\n")
    assert await read_exactly(reader, 3) == b"BX\n"
    writer.write(b"please !close now\n")
    data, how = await read_to_end(reader)
    writer.close()
    assert (data, how) == (b"", "eof")


async def test_reset_verdict_sends_rst(stack: Stack) -> None:
    reader, writer = await connect(stack.port("xform"))
    writer.write(b"please !reset now\n")
    data, how = await read_to_end(reader)
    writer.close()
    assert (data, how) == (b"", "reset")


# ----------------------------------------------------------------------------- stream edges


async def test_client_half_close_still_reads_reply(stack: Stack) -> None:
    reader, writer = await connect(stack.port("xform"))
    writer.write(b"abc")
    writer.write_eof()  # our side is done; the reply must still arrive
    data, how = await read_to_end(reader)
    writer.close()
    assert (data, how) == (b"NOP", "eof")


async def test_upstream_closes_first(stack: Stack) -> None:
    up = stack.upstreams["greet"]
    index = len(up.received)
    reader, writer = await connect(stack.port("greet"))
    writer.write(b"hi")  # the ext_proc stream opens on the first data
    greeting = await read_exactly(reader, len(up.greeting))
    assert greeting == up.greeting.translate(ROT13)
    assert await asyncio.wait_for(reader.read(1), IO_TIMEOUT) == b""  # upstream's FIN reached us
    writer.write(b" after upstream fin")  # our direction is still open
    writer.write_eof()
    assert await upstream_done(up, index) == b"HI AFTER UPSTREAM FIN"
    writer.close()


async def test_connect_and_close_without_data(stack: Stack) -> None:
    reader, writer = await connect(stack.port("xform"))
    writer.write_eof()
    data, how = await read_to_end(reader)
    writer.close()
    assert (data, how) == (b"", "eof")


@pytest.mark.parametrize("listener", ["passthru", "xform"])
async def test_one_mib_in_random_writes(stack: Stack, listener: str) -> None:
    rng = random.Random(7)
    payload = rng.randbytes(1 << 20)
    expected = payload if listener == "passthru" else payload.upper().translate(ROT13)
    reader, writer = await connect(stack.port(listener))

    async def send() -> None:
        pos = 0
        while pos < len(payload):
            n = rng.randint(1, 64 * 1024)
            writer.write(payload[pos : pos + n])
            await writer.drain()
            pos += n
        writer.write_eof()

    sender = asyncio.create_task(send())
    data, how = await read_to_end(reader)
    await sender
    writer.close()
    assert how == "eof"
    assert len(data) == len(expected)
    assert data == expected


# ----------------------------------------------------------------------------- one instance per connection


async def test_200_concurrent_connections_each_get_a_fresh_instance(stack: Stack) -> None:
    conns = await gather_or_fail(stack, "number", [connect(stack.port("number")) for _ in range(200)])
    for i, (_, writer) in enumerate(conns):
        writer.write(f"conn {i}\n".encode())
    replies = await gather_or_fail(
        stack, "number", [read_exactly(reader, len(f"1:conn {i}\n")) for i, (reader, _) in enumerate(conns)]
    )
    for _, writer in conns:
        writer.close()
    # A reused instance would have counted earlier chunks: every first chunk must be number 1.
    assert replies == [f"1:conn {i}\n".encode() for i in range(200)]


async def test_counter_python_plugin_numbers_200_connections(stack: Stack) -> None:
    async def one(i: int) -> int:
        reader, writer = await connect(stack.port("counter"))
        writer.write(f"c{i}".encode())
        head = await asyncio.wait_for(reader.readuntil(b"] "), IO_TIMEOUT)
        rest = await read_exactly(reader, len(f"c{i}"))
        writer.close()
        assert rest == f"c{i}".encode()
        assert head.startswith(b"[conn ") and head.endswith(b" chunk 1] ")
        return int(head.split()[1])

    numbers = await gather_or_fail(stack, "counter", [one(i) for i in range(200)])
    assert len(set(numbers)) == 200


# ----------------------------------------------------------------------------- plugin failures


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", FAULTS)
async def test_plugin_fault_gives_failure_mode(stack: Stack, fault: str, mode: str) -> None:
    name = f"{fault}_{mode}"
    up = stack.upstreams[name]
    index = len(up.received)
    reader, writer = await connect(stack.port(name))
    writer.write(b"first\n")  # chunks 1 (read) and 2 (its echo) pass; faulty misbehaves from chunk 3
    assert await read_exactly(reader, 6) == b"first\n"
    writer.write(b"second\n")  # the plugin faults on this one
    if mode == "allow":
        # Fail open: the connection lives on and data passes unmodified.
        assert await read_exactly(reader, 7) == b"second\n"
        writer.write(b"third\n")
        assert await read_exactly(reader, 6) == b"third\n"
        writer.write_eof()
        assert await read_to_end(reader) == (b"", "eof")
        writer.close()
        assert await upstream_done(up, index) == b"first\nsecond\nthird\n"
        return
    data, how = await read_to_end(reader)
    assert (data, how) == (b"", "eof" if mode == "close" else "reset")
    try_write(writer, b"third\n")
    writer.close()
    # Fail closed: not one byte after the fault reached the upstream.
    assert await upstream_done(up, index) == b"first\n"


async def wait_received(up: Upstream, index: int, expected: bytes) -> None:
    """Until upstream connection `index` has received `expected` (content, not a sleep)."""

    async def poll() -> None:
        while len(up.received) <= index or bytes(up.received[index]) != expected:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), IO_TIMEOUT)


@pytest.mark.parametrize("fault", FAULTS)
async def test_fail_closed_no_unfiltered_byte_reaches_recording_upstream(stack: Stack, fault: str) -> None:
    up = stack.upstreams[f"{fault}_record"]
    index = len(up.received)
    reader, writer = await connect(stack.port(f"{fault}_record"))
    writer.write(b"first\n")
    await wait_received(up, index, b"first\n")
    # The faulting chunk and a burst right behind it, before any verdict can come back.
    writer.write(b"second\n" + b"more\n" * 100)
    for _ in range(50):
        try_write(writer, b"and more\n")
    data, how = await read_to_end(reader)
    writer.close()
    # Envoy closes (FIN); but closing a socket with our burst still unread makes the kernel
    # send RST instead, so either may reach us. What matters is the upstream side.
    assert data == b"" and how in ("eof", "reset")
    assert await upstream_done(up, index) == b"first\n"


async def test_ungranted_capability_is_denied(stack: Stack) -> None:
    up = stack.upstreams["denied"]
    index = len(up.received)
    reader, writer = await connect(stack.port("denied"))
    writer.write(b"what is in kv?\n")
    data, how = await read_to_end(reader)
    writer.close()
    assert (data, how) == (b"", "eof")
    assert await upstream_done(up, index) == b""


async def test_granted_capability_works(stack: Stack) -> None:
    reader, writer = await connect(stack.port("granted"))
    writer.write(b"what is in kv?\n")
    reply = await asyncio.wait_for(reader.readuntil(b"\n"), IO_TIMEOUT)
    writer.close()
    # read chunk -> "kv=<n>\n" to the upstream, echoed, write chunk -> "kv=<m>\n" back.
    assert reply.startswith(b"kv=")
    assert int(reply[3:-1]) >= 1
    assert bytes(stack.upstreams["granted"].received[-1]).startswith(b"kv=")


async def test_plugin_sees_its_connections_addresses(stack: Stack) -> None:
    """connection_attributes -> ProcessingRequest.attributes -> connection.attributes():
    probe replaces the client's chunk with what it got, and the upstream records that."""
    up = stack.upstreams["attributes"]
    index = len(up.received)
    reader, writer = await connect(stack.port("attributes"))
    client_port = writer.get_extra_info("sockname")[1]
    writer.write(b"who am i?")
    writer.write_eof()
    await read_to_end(reader)
    writer.close()
    seen = (await upstream_done(up, index)).decode()
    assert seen == (
        "attributes=3\n"
        "connection.requested_server_name=\n"  # plain TCP: no TLS, no SNI
        f"destination.address=127.0.0.1:{stack.port('attributes')}\n"
        f"source.address=127.0.0.1:{client_port}\n"
    ), await asyncio.to_thread(stack.diagnose, "attributes")


async def test_stream_for_unknown_listener_is_refused(stack: Stack) -> None:
    up = stack.upstreams["ghost"]
    index = len(up.received)
    reader, writer = await connect(stack.port("ghost"))
    writer.write(b"let me through\n")
    data, how = await read_to_end(reader)
    writer.close()
    assert data == b"" and how in ("eof", "reset")
    if len(up.received) > index:  # tcp_proxy may have connected before the refusal
        assert await upstream_done(up, index) == b""


# ----------------------------------------------------------------------------- dynamic metadata

# One line per connection, written by Envoy when the connection closes.
ACCESS_LOG_FORMAT = "client_port=%DOWNSTREAM_REMOTE_PORT% probe=%DYNAMIC_METADATA(lightcell:probe)%\n"


async def access_log_line(path: Path, client_port: int) -> str:
    """The access log line of the connection from `client_port`, once Envoy has written it."""
    prefix = f"client_port={client_port} "

    async def poll() -> str:
        while True:
            text = path.read_text() if path.exists() else ""
            for line in text.splitlines():
                if line.startswith(prefix):
                    return line
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), IO_TIMEOUT)


@pytest.mark.parametrize(("listener", "logged"), [("metadata_received", "ok"), ("metadata_dropped", "-")])
async def test_plugin_metadata_reaches_the_envoy_access_log(stack: Stack, listener: str, logged: str) -> None:
    reader, writer = await connect(stack.port(listener))
    client_port = writer.get_extra_info("sockname")[1]
    writer.write(b"tag this connection\n")
    writer.write_eof()
    data, how = await read_to_end(reader)
    writer.close()
    # The plugin ran and called metadata.set("probe", "ok") on every chunk (granted: no fault).
    assert how == "eof" and data.startswith(b"metadata=ok\n"), (data, how)
    line = await access_log_line(stack.workdir / f"{listener}.access.log", client_port)
    # With metadata_options.receiving_namespaces.untyped: [lightcell] Envoy applies it; without,
    # Envoy 1.40 silently drops it ("-"), which is what `lightcell serve` warned about at start-up.
    assert line == f"client_port={client_port} probe={logged}"
    warned = [
        ln for ln in (stack.workdir / "lightcell.log").read_text().splitlines()
        if "receiving_namespaces.untyped does not include 'lightcell'" in ln
    ]  # fmt: skip
    assert len(warned) == 1 and "'metadata_dropped'" in warned[0], warned


# ----------------------------------------------------------------------------- bad configs


def _bad_configs(plugins: dict[str, Path], tmp: Path) -> dict[str, tuple[str, list[str]]]:
    """case -> (config file text, words the error message must contain)."""

    def bootstrap(pol: dict[str, Any]) -> str:
        spec = ListenerSpec("bad_listener", 9, pol)
        return yaml.safe_dump(render_bootstrap([spec], tmp / "unused.sock"))

    good = make_policy(plugins["rewrite"])
    return {
        "missing_plugin": (
            bootstrap({**good, "plugin": str(tmp / "nope.wasm")}),
            ["bad_listener", "nope.wasm"],
        ),
        "unknown_grant": (
            bootstrap({**good, "grants": ["log", "teleport"]}),
            ["bad_listener", "grants", "teleport"],
        ),
        "bad_failure_mode": (bootstrap({**good, "failure_mode": "maybe"}), ["bad_listener", "failure_mode"]),
        "bad_tier": (bootstrap({**good, "tier": "quantum"}), ["bad_listener", "tier"]),
        "not_wasm": (
            bootstrap({**good, "plugin": str(Path(__file__))}),
            ["bad_listener", Path(__file__).name],
        ),
        "bad_limit": (bootstrap({**good, "limits": {"memory_mb": 0}}), ["bad_listener", "memory_mb"]),
        "yaml_syntax": ("static_resources: {listeners: [\n", []),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing_plugin",
        "unknown_grant",
        "bad_failure_mode",
        "bad_tier",
        "not_wasm",
        "bad_limit",
        "yaml_syntax",
    ],
)
def test_bad_config_rejected_with_clear_message(
    built_plugins: dict[str, Path], tmp_path: Path, case: str
) -> None:
    text, words = _bad_configs(built_plugins, tmp_path)[case]
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    result = subprocess.run(
        [*lightcell_command(), "serve", "--envoy-config", str(config), "--socket", str(tmp_path / "s.sock")],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    message = result.stdout + result.stderr
    assert result.returncode != 0, message
    for word in [str(config), *words]:  # always the file, then listener and field
        assert word in message, f"{word!r} not in: {message}"
    assert "Traceback" not in message, message  # a clear message, not a crash


# ----------------------------------------------------------------------------- the demo


def test_demo_once_runs_every_scenario() -> None:
    """`lightcell demo --once`: its own Envoy + Lightcell + TCP and HTTP echo servers; exits 0 only
    if every scenario behaved."""
    result = subprocess.run(
        [*lightcell_command(), "demo", "--once", "--any-port"],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert out.count("-> as expected") == 5, out  # four TCP listeners and the HTTP one
    assert "URYYB SEBZ GUR PYVRAG" in out
    # The HTTP listener: redact masked the request body, the echo sent it back, and the
    # plugin's response header counted the three.
    assert "upstream received      b'my ****** is ******, keep it ******\\n'" in out, out
    assert "x-lightcell-redacted   3" in out
    assert "stopped envoy, lightcell and the echo upstreams." in out
    # Each listener's line shows the tier serve chose, never the policy's "auto".
    assert "tier=auto" not in out and "tier=?" not in out
    # counter (componentize-py): the micro-VM once its build is cached, wasmtime meanwhile
    # (tests/test_background_compile.py runs the demo on an empty cache)
    assert "counter.wasm" in out
    assert "rewrite.wasm" in out and "tier=microvm" in out  # a C plugin, /dev/kvm here


# ----------------------------------------------------------------------------- Lightcell dies (runs last)


async def test_lightcell_killed_mid_connection_then_restarted(stack: Stack) -> None:
    up = stack.upstreams["killme"]
    index = len(up.received)
    reader, writer = await connect(stack.port("killme"))
    writer.write(b"one\n")
    assert await read_exactly(reader, 4) == b"one\n"

    stack.lightcell.kill()
    await stack.lightcell.stop()
    try_write(writer, b"two\n")
    data, how = await read_to_end(reader)
    writer.close()
    # failure_mode_allow is false: Envoy ends the connection, nothing unfiltered gets through.
    assert data == b"" and how in ("eof", "reset")
    assert await upstream_done(up, index) == b"one\n"

    restarted = LightcellProcess(
        stack.lightcell_config, stack.lightcell.socket_path, stack.workdir / "lightcell-restarted.log"
    )
    stack.lightcell = restarted  # the fixture stops whichever is current
    await restarted.start()
    assert await exchange(stack.port("killme"), b"back again\n") == b"back again\n"
    assert await exchange(stack.port("xform"), b"and here\n") == b"NAQ URER\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
