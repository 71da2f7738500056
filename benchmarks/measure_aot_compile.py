"""Where the micro-VM's ahead-of-time compile of a big core module spends time and memory.

    nice -n 10 .venv/bin/python benchmarks/measure_aot_compile.py jsonpatch \
        [--pieces 24] [--jobs 2] [--flags="-g0 -Xclang -O1"] [--only 3,7] [--top 20]

Builds the example plugin (plugins/build.py), takes its largest core module,
runs wasm2c --num-outputs PIECES on it, and compiles every piece with the
micro-VM's zig cc flags plus --flags (JOBS at once, biggest first, outside
any cache). Prints per piece: C bytes, its longest function (lines), user CPU
seconds and peak RSS; then the totals and the longest functions of the module.
No assertions; nothing is cached or kept.

zig cc maps -O1/-O2/-O3 all to its ReleaseFast (clang -O2) and adds -g: a
lower level must reach clang as `-Xclang -O1`, and `-g0` drops debug info.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from plugins import build as plugin_build  # noqa: E402
from vmm.microvm import compile as aot  # noqa: E402
from vmm.microvm import component_compile as cc  # noqa: E402
from vmm.microvm.component_parse import parse_component  # noqa: E402
from vmm.wasm_module import unwrap_core  # noqa: E402

_DEFINITION = re.compile(rb"^(?:static )?[a-z0-9_]+\*? (w2c_\w+)\(.*\{$", re.M)


@dataclass
class Piece:
    path: Path
    c_bytes: int
    longest: int
    user_s: float = 0.0
    sys_s: float = 0.0
    rss_mb: float = 0.0
    text_bytes: int = 0


def functions(c_file: Path) -> list[tuple[int, str]]:
    """(lines, name) of every function defined in a wasm2c C file."""
    text = c_file.read_bytes()
    found = list(_DEFINITION.finditer(text))
    ends = [m.start() for m in found[1:]] + [len(text)]
    pairs = zip(found, ends, strict=True)
    return [(text.count(b"\n", m.start(), end), m.group(1).decode()) for m, end in pairs]


def largest_core(data: bytes) -> bytes:
    core = unwrap_core(data, wasip2=True)
    if core is not None:
        return core
    comp = parse_component(data)
    return max(comp.modules, key=len)


def compile_all(pieces: list[Piece], flags: list[str], jobs: int, work: Path) -> float:
    base = [*aot._zig_cc(), *aot._TARGET_FLAGS["guest"], *aot._COMMON_FLAGS, *aot._GENERATED_FLAGS,
            *aot._include_flags(), *flags]
    env = {**os.environ, "ZIG_GLOBAL_CACHE_DIR": str(work / "zig-cache")}  # cold: zig caches objects
    todo = sorted(pieces, key=lambda p: -p.c_bytes)
    running: dict[int, Piece] = {}
    t0 = time.monotonic()
    while todo or running:
        while todo and len(running) < jobs:
            p = todo.pop(0)
            proc = subprocess.Popen([*base, "-c", str(p.path), "-o", str(p.path.with_suffix(".o"))], env=env)
            running[proc.pid] = p
        pid, status, usage = os.wait4(-1, 0)
        p = running.pop(pid)
        if status != 0:
            raise SystemExit(f"{p.path.name}: compile failed ({status})")
        p.user_s, p.sys_s, p.rss_mb = usage.ru_utime, usage.ru_stime, usage.ru_maxrss / 1024
        size = subprocess.run(["size", str(p.path.with_suffix(".o"))], capture_output=True, text=True).stdout
        p.text_bytes = int(size.splitlines()[-1].split()[0])
        print(f"  {p.path.name:>16} {p.c_bytes / 1e6:7.1f} MB C  longest {p.longest:6} lines  "
              f"{p.user_s:7.1f} s user  {p.rss_mb:7.0f} MB RSS  text {p.text_bytes / 1e6:.2f} MB", flush=True)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plugin", help="an example plugin (plugins/build.py), e.g. jsonpatch")
    ap.add_argument("--pieces", type=int, default=24)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--flags", default="-g0", help="extra zig cc flags (after the micro-VM's): --flags=-g0")
    ap.add_argument("--only", default="", help="compile only these piece numbers (comma separated)")
    ap.add_argument("--top", type=int, default=15, help="list the longest functions")
    args = ap.parse_args()
    core = cc.strip_custom(largest_core(plugin_build.build(args.plugin).read_bytes()))
    with tempfile.TemporaryDirectory(prefix="lc-measure-") as tmp:
        work = Path(tmp)
        (work / "m.wasm").write_bytes(core)
        t0 = time.monotonic()
        c_files, _ = cc._wasm2c(work / "m.wasm", work, "m", args.pieces)
        print(f"{args.plugin}: core module {len(core) / 1e6:.1f} MB -> {args.pieces} C files, "
              f"{sum(c.stat().st_size for c in c_files) / 1e6:.0f} MB, wasm2c {time.monotonic() - t0:.1f} s")
        every = {c: functions(c) for c in c_files}
        pieces = [Piece(c, c.stat().st_size, max((n for n, _ in every[c]), default=0)) for c in c_files]
        if args.only:
            keep = {int(i) for i in args.only.split(",")}
            pieces = [p for i, p in enumerate(pieces) if i in keep]
        print(f"flags: {shlex.join(args.flags.split())}; {args.jobs} jobs")
        wall = compile_all(pieces, args.flags.split(), args.jobs, work)
        print(f"total: {wall:.0f} s wall, {sum(p.user_s + p.sys_s for p in pieces):.0f} s CPU, "
              f"peak RSS of one compile {max(p.rss_mb for p in pieces):.0f} MB, "
              f"text {sum(p.text_bytes for p in pieces) / 1e6:.1f} MB")
        longest = sorted(itertools.chain.from_iterable(
            ((n, f, c.name) for n, f in fs) for c, fs in every.items()), reverse=True)
        print(f"longest functions of {sum(len(fs) for fs in every.values())}:")
        for n, f, c in longest[: args.top]:
            print(f"  {n:7} lines  {f}  ({c})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
