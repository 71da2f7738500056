"""`lightcell run COMPONENT.wasm`: run a wasi:cli/command component in a micro-VM.

    lightcell run udp-echo.wasm --grant egress --grant log \\
        --udp-bind 127.0.0.1:8080 [--allow HOST:PORT] -- ARGS...

The command is compiled ahead of time (vmm/microvm/command.py), booted in its
own VM, and its `run` is the VM's one call; there is no per-event budget (a
command runs until it returns, exits, or the process is stopped) but memory
is capped (--memory-mib). Capabilities are deny-by-default as for plugins:
`log` (stdout/stderr become log lines on stderr; dropped without it),
`clock`, `random`, `egress` (wasi:sockets UDP: bind only where --udp-bind
says; send only to --allow destinations or back to a peer the socket heard
from: vmm/microvm/udp_service.py). The arguments after `--` are the
program's (wasi:cli/environment.get-arguments); the environment is empty.

Exit status: the command's (run's result: 0 ok, 1 err; or the code given to
wasi:cli/exit); FAULT_STATUS when Lightcell stopped it (a trap, a capability
not granted, a broken ABI rule), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from vmm.capabilities import HostCapabilities
from vmm.kvm import KvmError, System
from vmm.kvstore import KvStore
from vmm.microvm import abi
from vmm.microvm.command import compile_command
from vmm.microvm.compile import CompileError
from vmm.microvm.image import ImageError, load_image
from vmm.microvm.layout import Layout
from vmm.microvm.machine import LayoutError, build_template
from vmm.microvm.udp_service import UdpSockets
from vmm.microvm.vm import FaultReason, MicroVm, VmFault
from vmm.microvm.wasip2_host import UdpService
from vmm.policy import EgressTarget, Grants, Limits

__all__ = ["FAULT_STATUS", "RunCapabilities", "main", "run_command"]

FAULT_STATUS = 125
"""Exit status when Lightcell stopped the command (as `docker run` uses it)."""
RUN_GRANTS = ("log", "clock", "random", "egress")
LOG = logging.getLogger("lightcell.run")


@dataclass
class RunCapabilities(HostCapabilities):
    """A command's host: HostCapabilities plus its arguments and UDP sockets
    (vmm/microvm/wasip2_host.py reads both)."""

    arguments: tuple[str, ...] = ()
    udp: UdpService | None = None


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: want HOST:PORT")
    return host, int(port)


def _vm_call(image: Path, memory_bytes: int, host: RunCapabilities) -> int:
    """Boot the command's VM and run it (on this thread); its exit status."""
    template = build_template(load_image(image), Layout.for_memory_limit(memory_bytes))
    try:
        with System() as system:
            vm = MicroVm(system, template)
            try:
                vm.boot()
                vm.call(abi.Op.OPEN, 0, 0, b"", host=host)
                return 0  # a command's bind.c always ends with EXIT; kept for safety
            except VmFault as fault:
                if fault.reason is FaultReason.GUEST_STATUS and fault.status == abi.Status.EXIT:
                    return fault.detail & 0xFF
                why = f" (capability {host.denied!r} not granted)" if host.denied else ""
                print(f"lightcell run: stopped: {fault}{why}", file=sys.stderr)
                return FAULT_STATUS
            finally:
                vm.close()
    finally:
        template.close()


async def run_command(image: Path, name: str, arguments: tuple[str, ...], grants: Grants,
                      binds: frozenset[tuple[str, int]], memory_bytes: int = 64 << 20) -> int:
    """Run the compiled command `image` (log lines name it `name`); its exit status."""
    limits = Limits(memory_bytes=memory_bytes)
    udp = UdpSockets(asyncio.get_running_loop(), binds, grants.egress_allow, limits.max_datagram_bytes)
    kv = KvStore(limits.kv_max_keys, limits.kv_max_value_bytes)
    host = RunCapabilities("run", name, grants, limits, kv, arguments=arguments, udp=udp)
    try:
        return await asyncio.to_thread(_vm_call, image, memory_bytes, host)
    finally:
        await udp.aclose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lightcell run", description=__doc__.splitlines()[0],
                                 usage="%(prog)s COMPONENT [options] [-- ARGS...]")
    ap.add_argument("component", type=Path)
    ap.add_argument("--grant", action="append", choices=RUN_GRANTS, default=[],
                    help="a capability to grant (repeatable); none by default")
    ap.add_argument("--udp-bind", action="append", type=_address, default=[], metavar="IP:PORT",
                    help="an address the command may bind a UDP socket to (needs --grant egress)")
    ap.add_argument("--allow", action="append", type=_address, default=[], metavar="HOST:PORT",
                    help="a destination the command may send datagrams to (needs --grant egress)")
    ap.add_argument("--memory-mib", type=int, default=64, help="wasm memory cap (default 64)")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    ns = ap.parse_args(argv[:split])  # what follows `--` is the command's
    ns.args = argv[split + 1:]
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        image = compile_command(ns.component)
    except CompileError as e:
        print(f"lightcell run: {e}", file=sys.stderr)
        return FAULT_STATUS
    grants = Grants(frozenset(ns.grant), frozenset(EgressTarget(h, p) for h, p in ns.allow))
    try:
        return asyncio.run(run_command(image, ns.component.name, tuple(ns.args), grants,
                                       frozenset(ns.udp_bind), ns.memory_mib << 20))
    except (ImageError, LayoutError, KvmError, OSError) as e:
        print(f"lightcell run: {e}", file=sys.stderr)
        return FAULT_STATUS


if __name__ == "__main__":
    raise SystemExit(main())
