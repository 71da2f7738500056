"""Benchmark the wasmtime tier. Prints numbers; asserts nothing.

    .venv/bin/python benchmarks/bench_wasmtime_tier.py [--events N] [--sandboxes N]

- per-event latency (p50/p99) of the rewrite plugin (read=upper) on the core
  path at 1 KiB and 64 KiB: through the async Sandbox API (worker-thread hop)
  and inline (the same synchronous call on the event-loop thread), so the cost
  of the hop is visible;
- the counter component (component API) at 1 KiB, for comparison;
- sandbox creation (new_sandbox + open) p50/p99;
- resident memory per open sandbox;
- guest-code cost of the CPU-budget mechanism: none vs epoch vs fuel.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import wasmtime

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from plugins import build as plugin_build  # noqa: E402
from vmm import wasmtime_tier as wt  # noqa: E402
from vmm.capabilities import HostCapabilities  # noqa: E402
from vmm.contract import DataEvent, Direction  # noqa: E402
from vmm.kvstore import KvStore  # noqa: E402
from vmm.policy import Grants, SandboxSpec  # noqa: E402


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def show(name: str, samples_s: list[float]) -> None:
    us = [x * 1e6 for x in samples_s]
    print(f"{name:48s} p50 {pct(us, 50):9.1f} us   p99 {pct(us, 99):9.1f} us   (n={len(us)})")


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def host(spec: SandboxSpec, kv: KvStore) -> HostCapabilities:
    return HostCapabilities(spec.listener, Path(spec.plugin_path).stem, spec.grants, spec.limits, kv)


async def bench_events(factory: wt.WasmtimeFactory, spec: SandboxSpec, events: int, label: str) -> None:
    kv = KvStore(100, 1024)
    sb = await factory.new_sandbox(host(spec, kv))
    await sb.open(spec.listener, spec.plugin_config)
    for size in (1024, 65536):
        ev = DataEvent(Direction.READ, b"a" * size, False)
        for _ in range(20):
            await sb.on_data(ev)
        hop = []
        for _ in range(events):
            t = time.perf_counter()
            await sb.on_data(ev)
            hop.append(time.perf_counter() - t)
        show(f"{label} {size // 1024} KiB, async (thread hop)", hop)
        inline = []
        for _ in range(events):
            t = time.perf_counter()
            sb._data_sync(ev)  # the same call without the hop
            inline.append(time.perf_counter() - t)
        show(f"{label} {size // 1024} KiB, inline", inline)
    await sb.close()


async def bench_component(path: Path, events: int, cache: Path) -> None:
    spec = SandboxSpec("bench", str(path), Grants(frozenset({"kv"})))
    factory = await wt.load(spec, cache)
    sb = await factory.new_sandbox(host(spec, KvStore(100, 1024)))
    await sb.open("bench", "")
    for size in (1024, 65536):
        ev = DataEvent(Direction.WRITE, b"a" * size, False)
        samples = []
        for _ in range(max(20, events // 5)):
            t = time.perf_counter()
            await sb.on_data(ev)
            samples.append(time.perf_counter() - t)
        show(f"counter component {size // 1024} KiB, async", samples)
    await sb.close()
    await factory.aclose()


async def bench_creation(factory: wt.WasmtimeFactory, spec: SandboxSpec, n: int) -> None:
    kv = KvStore(100, 1024)
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        sb = await factory.new_sandbox(host(spec, kv))
        await sb.open(spec.listener, spec.plugin_config)
        samples.append(time.perf_counter() - t)
        await sb.close()
    show("sandbox creation (new_sandbox + open)", samples)


async def bench_memory(factory: wt.WasmtimeFactory, spec: SandboxSpec, n: int) -> None:
    kv = KvStore(100, 1024)
    ev = DataEvent(Direction.READ, b"a" * 1024, False)
    warm = [await factory.new_sandbox(host(spec, kv)) for _ in range(10)]
    for sb in warm:
        await sb.close()
    before = rss_bytes()
    open_ = []
    for _ in range(n):
        sb = await factory.new_sandbox(host(spec, kv))
        await sb.open(spec.listener, spec.plugin_config)
        await sb.on_data(ev)
        open_.append(sb)
    after = rss_bytes()
    print(f"{'memory per open sandbox (RSS delta / n)':48s} {(after - before) / n / 1024:9.1f} KiB   (n={n})")
    for sb in open_:
        await sb.close()


def bench_budget_mechanisms(wat: Path, calls: int) -> None:
    """The same CPU-bound guest loop (upper-casing 1 MiB) under each mechanism.

    Calls are interleaved round-robin so a change in machine load hits all three alike.
    """
    wasm = bytes(wasmtime.wat2wasm(wat.read_text()))
    data = b"a" * (1 << 20)  # large enough that the guest loop dominates the call overhead
    runs: dict[str, tuple[wasmtime.Store, wasmtime.Func, int, list[float]]] = {}
    for mech in ("none", "epoch", "fuel"):
        cfg = wasmtime.Config()
        cfg.epoch_interruption = mech == "epoch"
        cfg.consume_fuel = mech == "fuel"
        engine = wasmtime.Engine(cfg)
        module = wasmtime.Module(engine, wasm)
        linker = wasmtime.Linker(engine)
        linker.define_unknown_imports_as_traps(module)
        store = wasmtime.Store(engine)
        if mech == "epoch":
            store.set_epoch_deadline(1 << 40)
        if mech == "fuel":
            store.set_fuel(1 << 62)
        ex = linker.instantiate(store, module).exports(store)
        realloc, on_data, mem = ex["cabi_realloc"], ex["on-data"], ex["memory"]
        assert isinstance(realloc, wasmtime.Func) and isinstance(on_data, wasmtime.Func)
        assert isinstance(mem, wasmtime.Memory)
        ptr = realloc(store, 0, 0, 1, len(data))
        mem.write(store, data, ptr)
        runs[mech] = (store, on_data, ptr, [])
    for _ in range(calls):
        for store, on_data, ptr, samples in runs.values():
            t = time.perf_counter()
            on_data(store, 0, ptr, len(data), 0)  # upper-cases in place: same work every call
            samples.append(time.perf_counter() - t)
    for mech, (_, _, _, samples) in runs.items():
        show(f"guest loop 1 MiB, budget by {mech}", samples)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--sandboxes", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        rewrite = plugin_build.build("rewrite")
        spec = SandboxSpec("bench", str(rewrite), plugin_config="read=upper,write=pass")
        t = time.perf_counter()
        factory = await wt.load(spec, cache)
        print(f"{'load rewrite (compile, cold cache)':48s} {(time.perf_counter() - t) * 1e3:9.1f} ms")
        t = time.perf_counter()
        again = await wt.load(spec, cache)
        print(f"{'load rewrite (warm cache)':48s} {(time.perf_counter() - t) * 1e3:9.1f} ms")
        await again.aclose()
        await bench_events(factory, spec, args.events, "rewrite core path")
        await bench_creation(factory, spec, args.sandboxes)
        await bench_memory(factory, spec, args.sandboxes)
        await factory.aclose()
        await bench_component(plugin_build.build("counter"), args.events, cache)
        bench_budget_mechanisms(ROOT / "tests" / "wat" / "multi.wat", args.events)


if __name__ == "__main__":
    asyncio.run(main())
