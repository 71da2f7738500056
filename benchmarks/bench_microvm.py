"""Micro-VM tier benchmark: prints p50/p99 per step (no assertions).

    .venv/bin/python benchmarks/bench_microvm.py [--n 300] [--vms 1000]
    .venv/bin/python benchmarks/bench_microvm.py --http [--n 300]
    .venv/bin/python benchmarks/bench_microvm.py --component counter [--n 300]
    .venv/bin/python benchmarks/bench_microvm.py --js jsonpatch [--n 100]


Steps: cold boot to ready; a VM taken from the warm pool; a new connection's
first 1 KiB event (new_sandbox + open + on_data, through the async tier); one
event round trip at 1 KiB and 64 KiB (tier, and on the vCPU thread without
the asyncio hop); one host call; one bare exit; restore (off the hot path);
interrupting a looping guest; memory per live VM and the live-VM count.

--component NAME (e.g. counter, a componentize-py component, CPython inside):
the same connection steps for that component with the kv grant (write
direction, which counter rewrites), the pages a connection dirties against
the snapshot, and the snapshot's resident bytes (each live VM holds them).

--http: an HTTP request with one request-headers hook (the addheader
example, a typical header set), through HttpRunner, in a fresh sandbox per
request: a micro-VM from the warm pool, and the same through the wasmtime
tier, in the same run.

--js NAME (e.g. jsonpatch, componentize-js): a fresh sandbox's open and first
~1 KiB JSON body event (rewritten), then a second body event's round trip,
in the micro-VM and in the wasmtime tier.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from _kvm_helpers import host, make_test_template  # noqa: E402

from plugins import build as plugin_build  # noqa: E402
from vmm.contract import DataEvent, Direction  # noqa: E402
from vmm.kvm import System  # noqa: E402
from vmm.microvm import abi, tier  # noqa: E402
from vmm.microvm.snapshot import Snapshot, warm_up  # noqa: E402
from vmm.microvm.vm import MicroVm, VmFault  # noqa: E402
from vmm.microvm.watchdog import Watchdog  # noqa: E402
from vmm.policy import SandboxSpec  # noqa: E402
from vmm.wasmtime_tier import load_http as load_http_wasmtime  # noqa: E402


def report(name: str, samples_us: list[float]) -> None:
    xs = sorted(samples_us)
    p50 = xs[len(xs) // 2]
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    print(f"{name:<48} p50 {p50:9.1f} us   p99 {p99:9.1f} us   (n={len(xs)})", flush=True)


def timed(fn: Callable[[], object], n: int, between: Callable[[], object] | None = None) -> list[float]:
    out = []
    for _ in range(n):
        if between is not None:
            between()
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable")


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def tier_steps(n: int) -> None:
    spec = SandboxSpec("bench", str(plugin_build.build_core("rewrite")), plugin_config="")
    t0 = time.perf_counter()
    f = await tier.load(spec, pool_size=8)
    print(f"load (compile cached, boot, snapshot, pool of 8): {(time.perf_counter() - t0) * 1e3:.1f} ms")
    one_k, sixty_four_k = b"x" * 1024, b"y" * 65536
    take, first, rt1, rt64 = [], [], [], []
    for _ in range(n):
        await asyncio.sleep(0.002)  # let the background restore/refill finish
        t0 = time.perf_counter()
        s = await f.new_sandbox(host())
        t1 = time.perf_counter()
        await s.open("bench", "")
        await s.on_data(DataEvent(Direction.READ, one_k, False))
        t2 = time.perf_counter()
        await s.on_data(DataEvent(Direction.READ, one_k, False))
        t3 = time.perf_counter()
        await s.on_data(DataEvent(Direction.READ, sixty_four_k, False))
        t4 = time.perf_counter()
        await s.close()
        take.append((t1 - t0) * 1e6)
        first.append((t2 - t0) * 1e6)
        rt1.append((t3 - t2) * 1e6)
        rt64.append((t4 - t3) * 1e6)
    report("tier: VM from the warm pool ready", take)
    report("tier: new connection, first 1 KiB event answered", first)
    report("tier: 1 KiB event round trip", rt1)
    report("tier: 64 KiB event round trip", rt64)
    # the same on the vCPU thread, without the asyncio hop
    lease = f.pool.take()
    vm = lease.vm
    report(
        "vCPU thread: 1 KiB call (rewrite plugin)",
        lease.thread.run(lambda: timed(lambda: vm.call(abi.Op.DATA, 0, 0, one_k), n)),
    )
    report(
        "vCPU thread: 64 KiB call (rewrite plugin)",
        lease.thread.run(lambda: timed(lambda: vm.call(abi.Op.DATA, 0, 0, sixty_four_k), n)),
    )
    snap = f.pool.snapshot
    assert snap is not None

    def fresh_first() -> list[float]:
        out = []
        for _ in range(n):
            snap.restore(vm)
            t0 = time.perf_counter()
            vm.call(abi.Op.OPEN, 5, 0, b"bench")
            vm.call(abi.Op.DATA, 0, 0, one_k)
            out.append((time.perf_counter() - t0) * 1e6)
        return out

    report("vCPU thread: restored VM, open + first 1 KiB", lease.thread.run(fresh_first))
    report("restore (off the hot path)", lease.thread.run(lambda: timed(lambda: snap.restore(vm), n)))
    f.pool.give_back(lease).result()
    await f.aclose()


def dirtied(vm: MicroVm, snap: Snapshot) -> tuple[int, int]:
    """(pages that differ from the snapshot, pages touched beyond it)."""
    changed = 0
    for off, length, src in snap.content:
        live = vm.mem.view[off : off + length]
        saved = memoryview(snap.blob).cast("B")[src : src + length]
        changed += sum(1 for p in range(0, length, 4096) if live[p : p + 4096] != saved[p : p + 4096])
    covered = snap.covered
    extra = 0
    for lo, hi in vm.mem.data_ranges(0, vm.mem.size):
        extra += sum(1 for p in range(lo, hi, 4096) if not any(a <= p < b for a, b in covered))
    return changed, extra


async def component_steps(name: str, n: int) -> None:
    from vmm.policy import Grants, Limits

    path = plugin_build.build(name)
    spec = SandboxSpec("bench", str(path), Grants(frozenset({"kv"})), Limits(event_cpu_ms=5000), "")
    t0 = time.perf_counter()
    f = await tier.load(spec, pool_size=4)
    ms = (time.perf_counter() - t0) * 1e3
    print(f"{name}: load (compile or cache, boot, snapshot, pool of 4): {ms:.1f} ms")
    one_k = b"x" * 1024
    first, rt1 = [], []
    for _ in range(n):
        await asyncio.sleep(0.01)  # let the background restore/refill finish
        t0 = time.perf_counter()
        s = await f.new_sandbox(host("kv"))
        await s.open("bench", "")
        await s.on_data(DataEvent(Direction.WRITE, one_k, False))
        t1 = time.perf_counter()
        await s.on_data(DataEvent(Direction.WRITE, one_k, False))
        t2 = time.perf_counter()
        await s.close()
        first.append((t1 - t0) * 1e6)
        rt1.append((t2 - t1) * 1e6)
    report(f"{name}: new connection, first 1 KiB event answered", first)
    report(f"{name}: 1 KiB event round trip", rt1)
    snap = f.pool.snapshot
    assert snap is not None
    lease = f.pool.take()
    vm = lease.vm

    caps = host("kv")

    def one_connection() -> tuple[int, int]:
        snap.restore(vm)
        if f.pool.opened_with is None:
            vm.call(abi.Op.OPEN, 5, 0, b"bench", host=caps)
        vm.call(abi.Op.DATA, 1, 0, one_k, host=caps)
        vm.call(abi.Op.DATA, 1, 0, one_k, host=caps)
        vm.call(abi.Op.CLOSE, host=caps)
        return dirtied(vm, snap)

    changed, extra = lease.thread.run(one_connection)
    print(f"{name}: one connection (open, 2 x 1 KiB, close) dirties {changed} snapshot pages "
          f"({changed * 4} KiB) and touches {extra} pages beyond it; snapshot resident "
          f"{snap.resident_bytes / 2**20:.1f} MiB per VM", flush=True)
    restores = lease.thread.run(lambda: timed(lambda: snap.restore(vm), 50))
    report(f"{name}: restore (off the hot path)", restores)
    f.pool.give_back(lease).result()
    await f.aclose()


def raw_steps(n: int, vms: int) -> None:
    system = System()
    template = make_test_template()
    boot = []
    for _ in range(max(n // 10, 10)):
        t0 = time.perf_counter()
        vm = MicroVm(system, template)
        vm.boot()
        boot.append((time.perf_counter() - t0) * 1e6)
        vm.close()
    report("cold VM boot to ready (test guest)", boot)
    vm = MicroVm(system, template)
    vm.boot()
    report("one exit (empty call)", timed(lambda: vm.call(abi.Op.DATA), n))
    h = host("kv")
    with_call = timed(lambda: vm.call(abi.Op.DATA, payload=b"!kv", host=h), n)
    report("call making one host call (kv.increment)", with_call)
    dog = Watchdog()
    snap = Snapshot.take(vm)
    interrupt = []
    for _ in range(max(n // 10, 20)):
        snap.restore(vm)
        t0 = time.perf_counter()
        with contextlib.suppress(VmFault):
            dog.run(vm, 0.005, lambda: vm.call(abi.Op.DATA, payload=b"!loop"))
        interrupt.append((time.perf_counter() - t0) * 1e6 - 5000)
    report("interrupt a looping guest (after a 5 ms deadline)", interrupt)
    dog.close()
    vm.close()

    # live VMs: each from the snapshot, warmed and restored, as the pool keeps them
    gc.collect()
    before_avail, before_rss = mem_available(), rss()
    live: list[MicroVm] = []
    t0 = time.perf_counter()
    try:
        for _ in range(vms):
            v = MicroVm(system, template)
            snap.restore(v)
            warm_up(v)
            snap.restore(v)
            live.append(v)
    except OSError as e:
        print(f"stopped at {len(live)} live VMs: {e}")
    took = time.perf_counter() - t0
    used = before_avail - mem_available()
    print(
        f"live VMs reached: {len(live)} in {took:.1f} s "
        f"({took / max(len(live), 1) * 1e3:.2f} ms each, one process)"
    )
    print(
        f"memory per live VM: {used / max(len(live), 1) / 1024:.0f} KiB system-wide "
        f"({(rss() - before_rss) / max(len(live), 1) / 1024:.0f} KiB RSS); "
        f"total {used / 2**20:.0f} MiB for {len(live)}"
    )
    probe = live[len(live) // 2]
    report(
        f"1 KiB call with {len(live)} live VMs",
        timed(lambda: probe.call(abi.Op.DATA, payload=b"z" * 1024), n),
    )
    report(f"restore with {len(live)} live VMs", timed(lambda: snap.restore(probe), n))
    for v in live:
        v.close()
    template.close()
    system.close()


HTTP_HEADERS = [(":method", b"GET"), (":path", b"/api/items?page=2"), (":authority", b"example.com"),
                (":scheme", b"http"), ("user-agent", b"bench/1.0"), ("accept", b"*/*"),
                ("x-request-id", b"5f0c6b1e-2d7a-4c1e-9a53-0b1d2e3f4a5b"), ("content-length", b"0")]


async def http_steps(n: int) -> None:
    from vmm.http_abi import Header
    from vmm.microvm.tier import load_http
    spec = SandboxSpec("bench", str(plugin_build.build("addheader")), plugin_config="x-bench=1")
    headers = [Header(k, v) for k, v in HTTP_HEADERS]
    attributes = [("request.path", "/api/items"), ("source.address", "127.0.0.1:5555")]
    for name, load in (("microvm", lambda: load_http(spec, pool_size=8)),
                       ("wasmtime", lambda: load_http_wasmtime(spec))):
        t0 = time.perf_counter()
        f = await load()
        print(f"{name}: load {(time.perf_counter() - t0) * 1e3:.1f} ms")
        hook, whole = [], []
        for _ in range(n):
            await asyncio.sleep(0.002)  # let the background restore/refill finish
            t0 = time.perf_counter()
            s = await f.new_sandbox(host())
            await s.open("bench", "x-bench=1")
            decision = await s.request_headers(headers, attributes, True)
            t1 = time.perf_counter()
            await s.close()
            t2 = time.perf_counter()
            assert decision.headers.set, decision
            hook.append((t1 - t0) * 1e6)
            whole.append((t2 - t0) * 1e6)
        report(f"{name}: fresh sandbox, request-headers decision", hook)
        report(f"{name}: ... and on-close, sandbox released", whole)
        await f.aclose()


async def js_steps(name: str, n: int) -> None:
    """A componentize-js http-filter plugin (SpiderMonkey inside) in both tiers."""
    from vmm.policy import Limits

    spec = SandboxSpec("bench", str(plugin_build.build(name)), limits=Limits(64 << 20, event_cpu_ms=5000))
    body = b'{"user":"u1","items":[' + b",".join(b'{"id":%d,"qty":1}' % i for i in range(54)) + b"]}"
    config = "set=meta.src:bench;drop=user"
    for label, load in (("microvm", lambda: tier.load_http(spec, pool_size=4)),
                        ("wasmtime", lambda: load_http_wasmtime(spec))):
        t0 = time.perf_counter()
        f = await load()
        print(f"{name} {label}: load (compile or cache, boot, snapshot, pool) "
              f"{(time.perf_counter() - t0) * 1e3:.1f} ms", flush=True)
        first, rt = [], []
        for _ in range(n):
            await asyncio.sleep(0.01)  # let the background restore/refill finish
            t0 = time.perf_counter()
            s = await f.new_sandbox(host())
            await s.open("bench", config)
            d = await s.request_body(body, True)
            t1 = time.perf_counter()
            await s.request_body(body, True)
            t2 = time.perf_counter()
            await s.close()
            assert d.body is not None and b'"src":"bench"' in d.body, d
            first.append((t1 - t0) * 1e6)
            rt.append((t2 - t1) * 1e6)
        report(f"{name} {label}: new request, first {len(body)} B body event", first)
        report(f"{name} {label}: body event round trip", rt)
        await f.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--http", action="store_true", help="the HTTP request-headers figures only")
    parser.add_argument("--component", metavar="NAME", help="an example component's figures only (counter)")
    parser.add_argument("--js", metavar="NAME", help="a JavaScript http-filter's figures only (jsonpatch)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    if args.component:
        asyncio.run(component_steps(args.component, args.n))
        return
    if args.js:
        asyncio.run(js_steps(args.js, args.n))
        return
    if args.http:
        asyncio.run(http_steps(args.n))
        return
    asyncio.run(tier_steps(args.n))
    raw_steps(args.n, args.vms)


if __name__ == "__main__":
    main()
