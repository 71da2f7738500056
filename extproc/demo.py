"""`lightcell demo [--once]`: the whole thing on loopback, with sample traffic.

Builds the example plugins, starts a TCP echo server and an HTTP echo server
(the "protected upstreams"), `lightcell serve` and the real Envoy with
envoy-config/demo.yaml, sends sample traffic through every demo listener (TCP
connections, and an HTTP request through the HTTP listener) and prints what
each plugin did. With --once it then shuts everything down; otherwise it keeps
running (try `nc 127.0.0.1 <port>`, or `curl -d ... http://127.0.0.1:<port>/`
for the HTTP listener) until Ctrl-C.

demo.yaml stays a readable, working example; the demo renders a copy with a
temporary socket path, the echo servers' real ports, absolute plugin paths and
(if the file's ports are taken) free listener ports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from extproc import background_compile
from extproc.harness import (
    POLICY_NAMESPACE,
    SIDECAR_CLUSTER,
    EnvoyProcess,
    LightcellProcess,
    Upstream,
    write_config,
)
from extproc.harness.http_upstream import HttpEcho

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "envoy-config" / "demo.yaml"
ECHO_CLUSTER = "echo"
HTTP_ECHO_CLUSTER = "http_echo"
HTTP_LISTENERS = ("redact",)
"""The demo's HTTP listeners (the others are TCP): printed with a curl line."""
IO_TIMEOUT = 20.0


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def render_demo_config(
    source: Path, socket_path: Path, echo_port: int, any_port: bool = False, http_echo_port: int | None = None
) -> dict[str, Any]:
    """demo.yaml with the runtime's socket, echo ports, absolute plugin paths, free ports.

    The listeners keep the file's ports unless `any_port` or one of them is taken.
    """
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = 0
    listeners = config["static_resources"]["listeners"]
    ports = [lst["address"]["socket_address"]["port_value"] for lst in listeners]
    keep_ports = not any_port and all(_port_free(p) for p in ports)
    if not keep_ports and not any_port:
        print(f"some of the ports in {source.name} are taken; using free ports instead", flush=True)
    for lst in listeners:
        if not keep_ports:
            lst["address"]["socket_address"]["port_value"] = 0
        policy = lst.get("metadata", {}).get("filter_metadata", {}).get(POLICY_NAMESPACE)
        if policy is not None:
            policy["plugin"] = str((source.parent / policy["plugin"]).resolve())
    for cluster in config["static_resources"]["clusters"]:
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        if cluster["name"] == SIDECAR_CLUSTER:
            endpoint["address"] = {"pipe": {"path": str(socket_path)}}
        elif cluster["name"] == ECHO_CLUSTER:
            endpoint["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": echo_port}}
        elif cluster["name"] == HTTP_ECHO_CLUSTER and http_echo_port is not None:
            endpoint["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": http_echo_port}}
    return config


def _describe(config: dict[str, Any], tiers: dict[str, str]) -> dict[str, str]:
    """listener -> "plugin.wasm config ... tier" for the printout (the tier serve chose)."""
    out = {}
    for lst in config["static_resources"]["listeners"]:
        policy = lst.get("metadata", {}).get("filter_metadata", {}).get(POLICY_NAMESPACE, {})
        grants = ",".join(policy.get("grants", [])) or "none"
        out[lst["name"]] = (
            f"{Path(policy.get('plugin', '?')).name} config={policy.get('config', '')!r} "
            f"grants={grants} failure_mode={policy.get('failure_mode', 'close')} "
            f"tier={tiers.get(lst['name'], '?')}"
        )
    return out


# ----------------------------------------------------------------------------- sample traffic


class Client:
    """One demo connection that remembers how it ended."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Client:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT)
        return cls(r, w)

    async def send(self, data: bytes, expect: int) -> bytes:
        self.writer.write(data)
        return await asyncio.wait_for(self.reader.readexactly(expect), IO_TIMEOUT)

    async def send_until_end(self, data: bytes) -> tuple[bytes, str]:
        with contextlib.suppress(ConnectionError):
            self.writer.write(data)
        got = bytearray()
        try:
            while chunk := await asyncio.wait_for(self.reader.read(65536), IO_TIMEOUT):
                got += chunk
        except ConnectionResetError:
            return bytes(got), "connection reset (RST)"
        finally:
            self.writer.close()
        return bytes(got), "connection closed (FIN)"


@dataclass(frozen=True)
class Upstreams:
    """The protected upstreams the scenarios check: what reached them."""

    echo: Upstream
    http: HttpEcho


def _line(label: str, value: object) -> None:
    print(f"    {label:<22} {value!r}" if isinstance(value, bytes) else f"    {label:<22} {value}")


async def _upstream_saw(echo: Upstream, index: int) -> bytes:
    await asyncio.wait_for(echo.wait_closed(index), IO_TIMEOUT)
    return bytes(echo.received[index])


async def demo_rewrite(port: int, ups: Upstreams) -> bool:
    echo = ups.echo
    index = len(echo.received)
    c = await Client.open(port)
    sent = b"hello from the client\n"
    got = await c.send(sent, len(sent))
    ended = await c.send_until_end(b"now please !close\n")
    saw = await _upstream_saw(echo, index)
    _line("client sent", sent)
    _line("upstream received", saw)
    _line("client got back", got)
    _line('then "!close"', ended[1])
    return (
        saw == sent.upper()
        and got == b"URYYB SEBZ GUR PYVRAG\n"
        and ended == (b"", "connection closed (FIN)")
    )


async def demo_counter(port: int, ups: Upstreams) -> bool:
    replies = []
    for i in range(3):
        c = await Client.open(port)
        first = await c.send(f"ping {i}\n".encode(), len(b"[conn N chunk 1] ping 0\n"))
        replies.append(first)
        c.writer.close()
    for r in replies:
        _line("client got back", r)
    numbers = {r.split()[1] for r in replies}
    return len(numbers) == 3 and all(b"chunk 1]" in r for r in replies)


async def demo_fail_closed(port: int, ups: Upstreams) -> bool:
    echo = ups.echo
    index = len(echo.received)
    c = await Client.open(port)
    first = await c.send(b"chunk one\n", len(b"chunk one\n"))
    ended = await c.send_until_end(b"chunk two (the plugin traps here)\n")
    saw = await _upstream_saw(echo, index)
    _line("chunk one came back", first)
    _line("chunk two", ended[1])
    _line("upstream received", saw)
    return saw == b"chunk one\n" and ended == (b"", "connection closed (FIN)")


async def demo_denied(port: int, ups: Upstreams) -> bool:
    echo = ups.echo
    index = len(echo.received)
    c = await Client.open(port)
    ended = await c.send_until_end(b"probe wants kv\n")
    saw = await _upstream_saw(echo, index) if len(echo.received) > index else b""
    _line("kv call without grant", ended[1])
    _line("upstream received", saw)
    return saw == b"" and ended == (b"", "connection reset (RST)")


def _post(url: str, body: bytes) -> tuple[int, bytes, str | None]:
    """(status, body, x-lightcell-redacted) of one POST (a 5xx is an answer too)."""
    request = urllib.request.Request(url, data=body, method="POST", headers={"content-type": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=IO_TIMEOUT) as reply:
            return reply.status, reply.read(), reply.headers.get("x-lightcell-redacted")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("x-lightcell-redacted")


REDACT_SENT = b"my secret is secret, keep it secret\n"
REDACT_MASKED = b"my ****** is ******, keep it ******\n"


async def demo_redact(port: int, ups: Upstreams) -> bool:
    index = len(ups.http.requests)
    status, got, redacted = await asyncio.to_thread(_post, f"http://127.0.0.1:{port}/demo", REDACT_SENT)
    saw = ups.http.requests[index][2] if len(ups.http.requests) > index else None
    _line("client sent (POST)", REDACT_SENT)
    _line("upstream received", saw)
    _line("client got back", f"HTTP {status} {got!r}")
    _line("x-lightcell-redacted", redacted)
    return saw == REDACT_MASKED and (status, got, redacted) == (200, REDACT_MASKED, "3")


SCENARIOS: dict[str, Callable[[int, Upstreams], Awaitable[bool]]] = {
    "rewrite": demo_rewrite,
    "counter": demo_counter,
    "fail_closed": demo_fail_closed,
    "denied": demo_denied,
    "redact": demo_redact,
}


# ----------------------------------------------------------------------------- main


def _parse(args: Sequence[str] | argparse.Namespace | None) -> argparse.Namespace:
    if isinstance(args, argparse.Namespace):
        return args
    parser = argparse.ArgumentParser(prog="lightcell demo", description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="send the sample traffic, then exit")
    parser.add_argument(
        "--config", type=Path, default=DEMO_CONFIG, help="Envoy config with Lightcell policies"
    )
    parser.add_argument(
        "--any-port", action="store_true", help="listen on free ports instead of the config's ports"
    )
    return parser.parse_args(list(args) if args is not None else None)


async def _wait_for_ctrl_c() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def run(once: bool, source: Path, any_port: bool = False) -> int:
    from plugins import build as plugin_build  # the demo builds the examples from source

    print("building example plugins (cached) ...", flush=True)
    await asyncio.to_thread(plugin_build.build_all)
    with tempfile.TemporaryDirectory(prefix="lightcell-demo-") as tmp:
        workdir = Path(tmp)
        socket_path = workdir / "lightcell.sock"
        async with Upstream() as echo, HttpEcho() as http_echo:
            config = render_demo_config(source, socket_path, echo.port, any_port, http_echo.port)
            config_path = write_config(config, workdir / "demo.yaml")
            print("starting lightcell serve and envoy ...", flush=True)
            lightcell = LightcellProcess(config_path, socket_path, workdir / "lightcell.log")
            envoy = EnvoyProcess(config_path, workdir)
            try:
                await lightcell.start()
                await envoy.start()
                ok = await _traffic(envoy, Upstreams(echo, http_echo), _describe(config, lightcell.tiers()))
                if not ok:
                    print("\nlightcell log (tail):\n" + "\n".join(lightcell.log().splitlines()[-20:]))
                if background_compile.STARTED in lightcell.log():
                    print("\nnote: a plugin ran in wasmtime (one wall) because its micro-VM build is not "
                          "cached yet;\n      lightcell serve builds it in the background, then reloads it "
                          "into the micro-VM.", flush=True)  # fmt: skip
                if once:
                    return 0 if ok else 1
                tcp = ", ".join(
                    f"{n}=127.0.0.1:{p}" for n, p in envoy.ports.items() if n not in HTTP_LISTENERS
                )
                print(f"\nrunning: TCP {tcp} (echo upstream)", flush=True)
                for name in HTTP_LISTENERS:
                    if name in envoy.ports:
                        url = f"http://127.0.0.1:{envoy.ports[name]}/"
                        print(f"         HTTP {name}={url} (HTTP echo upstream): curl -d 'a secret' {url}")
                print("Ctrl-C to stop.", flush=True)
                await _wait_for_ctrl_c()
                return 0
            finally:
                await envoy.stop()
                await lightcell.stop()
                print("stopped envoy, lightcell and the echo upstreams.")


async def _traffic(envoy: EnvoyProcess, ups: Upstreams, described: dict[str, str]) -> bool:
    all_ok = True
    for name, scenario in SCENARIOS.items():
        if name not in envoy.ports:
            continue
        print(f"\n[{name}] 127.0.0.1:{envoy.ports[name]}  {described.get(name, '')}")
        try:
            ok = await scenario(envoy.ports[name], ups)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            _line("error", f"{type(exc).__name__}: {exc}")
            ok = False
        print(f"    -> {'as expected' if ok else 'UNEXPECTED'}")
        all_ok = all_ok and ok
    return all_ok


def main(args: Sequence[str] | argparse.Namespace | None = None) -> int:
    opts = _parse(args)
    try:
        source = Path(getattr(opts, "config", DEMO_CONFIG))
        return asyncio.run(run(bool(opts.once), source, bool(getattr(opts, "any_port", False))))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
