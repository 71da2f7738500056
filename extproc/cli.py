"""The `lightcell` command.

    lightcell serve --envoy-config FILE [--socket PATH] [--port N] [--grace S]
                    [--max-connections N] [--log-level LEVEL] [--workers N] [--watch]
                    [--log-format text|json] [--metrics-address HOST:PORT [--metrics-public]]
    lightcell check --envoy-config FILE
    lightcell demo [--once]            (extproc.demo)
    lightcell compile ...              (vmm.microvm.compile)
    lightcell run COMPONENT.wasm ...   (vmm.microvm.run)

Configuration problems print one clear message per problem and exit 1,
without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO, cast

from extproc.config import ConfigError, LightcellConfig, load_config

if TYPE_CHECKING:
    from extproc.listener import ListenerPolicy, TierChoice
    from extproc.metrics_http import MetricsAddress
    from extproc.server import DefaultSocket

__all__ = ["main"]

LOG = logging.getLogger("lightcell.cli")

# Subcommands implemented elsewhere: their arguments are passed through untouched.
_DELEGATED = {
    "demo": ("extproc.demo", "run the demo: Envoy + Lightcell + example plugins on loopback"),
    "compile": ("vmm.microvm.compile", "compile a plugin for the micro-VM tier"),
    "run": ("vmm.microvm.run", "run a wasi:cli/command component in a micro-VM (UDP: --udp-bind)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in _DELEGATED:
        return _delegate(args[0], args[1:])
    parsed = _parser().parse_args(args)
    command = cast(Callable[[argparse.Namespace], int], parsed.func)
    return command(parsed)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightcell",
        description="Run untrusted Envoy network filters as WebAssembly plugins, "
        "each connection in its own sandbox.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve Envoy's network and HTTP ext_proc streams")
    _config_arg(serve)
    serve.add_argument(
        "--socket", type=Path, default=None, metavar="PATH",
        help="Unix socket to listen on, created mode 0600 (default: $LIGHTCELL_SOCKET, else "
        "$XDG_RUNTIME_DIR/lightcell/lightcell.sock, else /run/lightcell/lightcell.sock as root, "
        "else ~/.cache/lightcell/run/lightcell.sock; that directory is created 0700 and must be "
        "ours and not group/other-writable)",
    )  # fmt: skip
    serve.add_argument(
        "--no-socket", action="store_true", help="do not listen on a Unix socket (needs --port)"
    )
    serve.add_argument("--port", type=int, metavar="N", help="also listen on 127.0.0.1:N (0: any free port)")
    serve.add_argument(
        "--grace", type=float, default=3.0, metavar="S",
        help="on SIGTERM/SIGINT, give open connections S seconds (default: %(default)s)",
    )  # fmt: skip
    serve.add_argument(
        "--max-connections", type=int, default=4096, metavar="N",
        help="serve at most N connections and HTTP requests at once (one count); more are refused "
        "and Envoy closes them or answers an error (default: %(default)s)",
    )  # fmt: skip
    serve.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="(default: %(default)s)",
    )  # fmt: skip
    serve.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="run N worker processes under this one, an unconfined supervisor that handles SIGHUP "
        "and --watch (default: %(default)s, which listens on PATH itself): with more, worker i "
        "listens on PATH with .i inserted before a .sock suffix (else appended), and on port N+i; list "
        "one endpoint per worker socket in Envoy's lightcell cluster. Limits like --max-connections "
        "apply per worker. Nothing is restarted: if a serving worker dies, all stop",
    )  # fmt: skip
    _observability_args(serve)
    serve.add_argument(
        "--no-seccomp", action="store_true",
        help="do not confine the workers (for debugging; also $LIGHTCELL_NO_SECCOMP=1). By default, "
        "once loaded and bound, each worker sets no-new-privileges and a seccomp filter that allows "
        "only the system calls serving needs (x86_64 Linux); reloads work either way",
    )  # fmt: skip
    serve.add_argument(
        "--watch", action="store_true",
        help="re-read the Envoy config when the file changes (checked every second), as on SIGHUP: "
        "new workers load it and take new connections and requests, the old ones finish their open "
        "ones and exit; a file check refuses is logged and changes nothing",
    )  # fmt: skip
    # How the supervisor starts each worker: serve in this process, report on this pipe.
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--control-fd", type=int, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)

    check = sub.add_parser("check", help="validate a configuration and report each listener's plugin")
    _config_arg(check)
    check.set_defaults(func=_check)

    for name, (_, help_text) in _DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _observability_args(serve: argparse.ArgumentParser) -> None:
    from extproc.logsetup import FORMATS

    serve.add_argument(
        "--log-format", default="text", choices=FORMATS,
        help="text lines, or one JSON object per line with listener, plugin, tier, sandbox and "
        "fault fields where known (default: %(default)s)",
    )  # fmt: skip
    serve.add_argument(
        "--metrics-address", metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off); HOST must be "
        "loopback unless --metrics-public. The supervisor serves the sum over its workers, "
        "old and new across reloads",
    )  # fmt: skip
    serve.add_argument(
        "--metrics-public",
        action="store_true",
        help="allow a non-loopback --metrics-address (it names listeners, plugins and capabilities)",
    )


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--envoy-config", type=Path, required=True, metavar="FILE",
        help="the Envoy bootstrap YAML (listeners carry metadata.filter_metadata.lightcell)",
    )  # fmt: skip


def _fail(message: str) -> int:
    print(f"lightcell: error: {message}", file=sys.stderr)
    return 1


def _serve(args: argparse.Namespace) -> int:
    from extproc.logsetup import configure
    from extproc.metrics_http import parse_address
    from extproc.server import DEFAULT_SOCKET

    configure(args.log_level, args.log_format)
    metrics: MetricsAddress | None = None
    if args.metrics_address is not None:
        try:
            metrics = parse_address(args.metrics_address, args.metrics_public)
        except ConfigError as e:
            return _fail(str(e))
    elif args.metrics_public:
        return _fail("--metrics-public needs --metrics-address")
    if args.no_socket and args.port is None:
        return _fail("--no-socket needs --port")
    if args.max_connections < 1:
        return _fail("--max-connections must be at least 1")
    if args.workers < 1:
        return _fail("--workers must be at least 1")
    socket_path: Path | DefaultSocket | None = (
        None if args.no_socket else DEFAULT_SOCKET if args.socket is None else args.socket
    )
    if args.worker:
        return _serve_here(args, socket_path)
    return _supervise(args, socket_path, metrics)


def _serve_here(args: argparse.Namespace, socket_path: Path | DefaultSocket | None) -> int:
    """One worker: load, bind, confine, serve (extproc.server.serve)."""
    from extproc import server
    from extproc.control import ControlWriter

    control = None if args.control_fd is None else ControlWriter(args.control_fd)
    try:
        config = load_config(args.envoy_config)
        run = server.serve(
            config,
            socket_path=socket_path,
            port=args.port,
            grace=args.grace,
            max_connections=args.max_connections,
            seccomp=_seccomp_wanted(args),
            control=control,
        )
        asyncio.run(run)
    except ConfigError as e:
        if control is None:
            return _fail(str(e))
        control.send("error", message=str(e))  # the supervisor reports it (or refuses a reload)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C while draining
        return 130
    return 0


def _supervise(
    args: argparse.Namespace, socket_path: Path | DefaultSocket | None, metrics: MetricsAddress | None
) -> int:
    """The supervisor (extproc.workers): workers serve, it reloads and stops them."""
    from extproc import workers
    from extproc.background_compile import BackgroundBuild, job_command
    from extproc.metrics_http import Multiprocess
    from extproc.server import DefaultSocket
    from extproc.socket_path import prepare_default_socket

    if args.port == 0 and args.workers > 1:
        return _fail("--port 0 cannot be combined with --workers: give a fixed first port")
    try:
        base = prepare_default_socket() if isinstance(socket_path, DefaultSocket) else socket_path
    except ConfigError as e:
        return _fail(str(e))
    slots = []
    for i in range(args.workers):
        sock = None if base is None else base if args.workers == 1 else workers.worker_socket(base, i)
        slots.append(workers.Slot(i, sock, None if args.port is None else args.port + i))
    command = workers.worker_command(
        args.envoy_config, grace=args.grace, max_connections=args.max_connections,
        log_level=args.log_level, log_format=args.log_format, seccomp=_seccomp_wanted(args),
    )  # fmt: skip
    builds = BackgroundBuild(job_command(args.envoy_config, args.log_level, args.log_format))
    supervisor = workers.Supervisor(args.envoy_config, slots, command, watch=args.watch, builds=builds)
    if metrics is None:
        return supervisor.run()
    try:
        summed = Multiprocess(metrics)
    except OSError as e:
        return _fail(f"--metrics-address {args.metrics_address}: {e.strerror or e}")
    try:
        supervisor.env, supervisor.metrics_dir = summed.env(), summed.directory
        supervisor.on_reload = summed.count_reload
        return supervisor.run()
    finally:
        summed.close()


def _seccomp_wanted(args: argparse.Namespace) -> bool:
    from vmm.confine import DISABLE_ENV

    return not args.no_seccomp and os.environ.get(DISABLE_ENV, "") in ("", "0")


def _check(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lightcell.microvm").setLevel(logging.INFO)  # a micro-VM build: minutes, said
    try:
        config = load_config(args.envoy_config)
        notes: list[str] = []
        loaded = asyncio.run(_load_and_close(config, notes))
    except ConfigError as e:
        return _fail(str(e))
    _report(config, loaded, sys.stdout, notes)
    return 0


async def _load_and_close(
    config: LightcellConfig, notes: list[str] | None = None
) -> dict[str, tuple[frozenset[str], TierChoice]]:
    """Load every plugin as serve would (which checks it against the contract and chooses
    its tier); each listener's (HTTP listener's, route policy's) imports and tier. The load's
    warnings (HTTP phases against Envoy's modes) go to `notes`."""
    from extproc import plugins

    loaded = await plugins.load_all(config)
    try:
        http = await plugins.load_http_all(config)
    finally:
        await plugins.close_all(loaded.values())
    if notes is not None:
        notes.extend(http.warnings)
    try:
        found = {name: (listener.factory.imports, listener.tier) for name, listener in loaded.items()}
        found.update({item.name: (item.factory.imports, item.tier) for item in http.all()})
        return found
    finally:
        await plugins.close_http(http)


def _report(
    config: LightcellConfig,
    loaded: dict[str, tuple[frozenset[str], TierChoice]],
    out: TextIO,
    notes: Sequence[str] = (),
) -> None:
    if config.http_listeners:
        print(
            f"{config.path}: OK, {len(config.listeners)} TCP listener(s), {len(config.http_listeners)} "
            f"HTTP listener(s) and {len(config.routes)} route policy(ies)",
            file=out,
        )
    else:
        print(f"{config.path}: OK, {len(config.listeners)} listener(s)", file=out)
    for warning in [*config.warnings, *notes]:
        print(f"warning: {warning}", file=out)
    for name, policy in config.listeners.items():
        print(f"\nlistener {name}", file=out)
        _report_policy(policy, loaded[name], out)
    for name, policy in config.http_listeners.items():
        print(f"\nhttp listener {name}", file=out)
        print(f"  from          {policy.source}", file=out)
        _report_policy(policy, loaded[name], out, "request")
        # A route policy is "<listener>/<route>"; route names carry no '/'.
        routes = [key for key in config.routes if key.rpartition("/")[0] == name]
        print(f"  route policies {', '.join(routes) or 'none'}; every other route runs this one", file=out)
    for key, policy in config.routes.items():
        print(f"\nroute {key}", file=out)
        print(f"  from          {policy.source}", file=out)
        _report_policy(policy, loaded[key], out, "request")
        for where in config.route_selections.get(key, ()):
            print(f"  selected by   {where}", file=out)


def _report_policy(
    policy: ListenerPolicy,
    loaded: tuple[frozenset[str], TierChoice],
    out: TextIO,
    unit: str = "connection",
) -> None:
    spec = policy.spec
    granted = spec.grants.capabilities
    used, choice = loaded
    missing = sorted(used - granted)
    print(f"  plugin        {spec.plugin_path}", file=out)
    if spec.plugin_config:
        print(f"  config        {spec.plugin_config!r}", file=out)
    print(f"  tier          {choice.describe()}", file=out)
    print(f"  failure_mode  {policy.failure_mode.value}", file=out)
    imports_text = ", ".join(f"{cap} (needs grant {cap})" for cap in sorted(used)) or "none"
    print(f"  imports       {imports_text}", file=out)
    print(f"  grants        {', '.join(sorted(granted)) or 'none'}", file=out)
    if spec.grants.egress_allow:
        print(f"  egress_allow  {', '.join(sorted(map(str, spec.grants.egress_allow)))}", file=out)
    if "egress" in granted:
        e = spec.limits.egress
        print(
            f"  egress_limits {e.datagrams_per_second} datagrams/s, {e.bytes_per_second} bytes/s, "
            f"{e.max_queued} queued, per {unit}",
            file=out,
        )
    if missing:
        print(
            f"  missing       {', '.join(missing)}: imported but not granted; allowed, "
            f"but every call will be denied at runtime (a fault for the {unit})",
            file=out,
        )
    else:
        print("  missing       none", file=out)
    unused = sorted(granted - used)
    if unused:
        print(f"  unused        {', '.join(unused)}: granted but never imported", file=out)


def _delegate(command: str, argv: list[str]) -> int:
    module_name, _ = _DELEGATED[command]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        return _fail(f"`lightcell {command}` is not available in this build ({module_name}: {e})")
    entry = getattr(module, "main", None)
    if entry is None:
        return _fail(f"`lightcell {command}` is not available yet ({module_name} has no main())")
    result = entry(argv)
    return int(result) if result is not None else 0


def entry() -> NoReturn:
    """The `lightcell` console script and `python -m extproc.cli`: main(), then the exit
    (extproc.child.exit_without_finalizing: wasmtime's threads may still call back)."""
    from extproc.child import exit_without_finalizing

    try:
        code = main()
    except SystemExit as e:  # argparse's usage errors and --help; sys.exit(text) as Python would
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # what Python would print and exit 1 with, without its finalization
        traceback.print_exc()
        code = 1
    exit_without_finalizing(code)


if __name__ == "__main__":
    entry()
