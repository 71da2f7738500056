"""How soon `lightcell serve` serves a Python plugin on an empty compile cache. Prints; asserts nothing.

    .venv/bin/python benchmarks/bench_cold_start.py [--plugin counter] [--cache DIR] [--keep]

One TCP listener, `tier: auto`, the plugin built from source (plugins/build.py), an
empty micro-VM compile cache of its own (or --cache DIR; --keep leaves a temporary one):

- serving: from starting `lightcell serve` until its socket accepts (the worker has
  loaded the plugin, in wasmtime: its micro-VM build runs in the background);
- micro-VM: until the supervisor's reload after the background build is applied (new
  connections run in the micro-VM from then on);
- the build job's own duration, as it logs it: what `serve` waited before serving
  when tier auto compiled first (the baseline of the same run), and the ratio.

The build competes with nothing but the idle worker (it runs at nice 10).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from extproc.harness import LightcellProcess, ListenerSpec, render_bootstrap, write_config  # noqa: E402
from plugins import build as plugin_build  # noqa: E402

BUILD_DONE = re.compile(r"background micro-VM build done in (\d+) s")


async def _wait_for(lightcell: LightcellProcess, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in lightcell.log():
        if time.monotonic() > deadline:
            raise SystemExit(f"no {text!r} after {timeout:.0f} s:\n{lightcell.log()[-3000:]}")
        await asyncio.sleep(0.2)


async def run(plugin: Path, cache: Path, workdir: Path) -> None:
    policy = {"plugin": str(plugin), "tier": "auto", "grants": ["kv"],
              "limits": {"memory_mb": 64, "event_cpu_ms": 2000}}  # fmt: skip
    socket_path = workdir / "lightcell.sock"
    bootstrap = render_bootstrap([ListenerSpec("edge", 1, policy)], socket_path)
    config = write_config(bootstrap, workdir / "c.yaml")
    env = {**os.environ, "LIGHTCELL_AOT_CACHE": str(cache)}
    lightcell = LightcellProcess(config, socket_path, workdir / "lightcell.log", env=env)
    t0 = time.monotonic()
    try:
        await lightcell.start(timeout_s=3600)
        serving = time.monotonic() - t0
        tier = lightcell.tiers().get("edge")
        print(f"serving after          {serving:8.2f} s   (tier: {tier})", flush=True)
        await _wait_for(lightcell, "reload applied", 3600)
        microvm = time.monotonic() - t0
    finally:
        await lightcell.stop()
    built = BUILD_DONE.search(lightcell.log())
    print(f"micro-VM after         {microvm:8.2f} s   (tier: {lightcell.tiers().get('edge')})")
    if built:
        job = float(built[1])
        print(f"build job              {job:8.0f} s   (what serve waited before serving, building first)")
        print(f"time to serve          {serving / job:8.4f} x the blocking start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plugin", default="counter", help="an example plugin (default: counter)")
    ap.add_argument("--cache", type=Path, help="the compile cache to use (default: an empty temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary cache")
    args = ap.parse_args()
    plugin = plugin_build.build(args.plugin)
    with tempfile.TemporaryDirectory(prefix="lc-cold-") as tmp:
        workdir = Path(tmp)
        cache = args.cache or Path(tempfile.mkdtemp(prefix="lc-cold-aot-"))
        cache.mkdir(mode=0o700, exist_ok=True)
        print(f"plugin {plugin.name}, cache {cache}, {os.cpu_count()} CPUs", flush=True)
        asyncio.run(run(plugin, cache, workdir))
        if args.cache is None and not args.keep:
            import shutil

            shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
