"""Benchmark http-filter components (componentize-py) in the wasmtime tier. Prints
medians; asserts nothing.

    .venv/bin/python benchmarks/bench_http_component.py [--rounds N]

- the request-headers hook of the guard example (lightcell_sdk) with 12 request
  headers: through the tier's direct C-value lowering and lifting, and, for
  comparison, the same call through wasmtime-py's generic value conversion;
- a 1 KiB and a 64 KiB request-body hook of tests/http_plugins/misbehave_py (it
  echoes the chunk: the bytes cross both ways);
- a request's first entry: a fresh instance (Store + instantiate), on-open and
  the request-headers hook.
All calls are the synchronous instance's, on this thread (no worker hop).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from plugins import build as plugin_build  # noqa: E402
from vmm import wasmtime_tier as wt  # noqa: E402
from vmm.capabilities import HostCapabilities  # noqa: E402
from vmm.http_abi import Header  # noqa: E402
from vmm.kvstore import KvStore  # noqa: E402
from vmm.policy import Grants, Limits, SandboxSpec  # noqa: E402
from vmm.wasmtime_tier._component_bytes import post_return  # noqa: E402
from vmm.wasmtime_tier._http_component import HttpComponentInstance  # noqa: E402

HEADERS = [
    Header(":method", b"GET"),
    Header(":scheme", b"http"),
    Header(":authority", b"shop.example.com"),
    Header(":path", b"/catalog/items?page=2&sort=price"),
    Header("user-agent", b"Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0"),
    Header("accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    Header("accept-language", b"en-US,en;q=0.5"),
    Header("accept-encoding", b"gzip, deflate, br"),
    Header("cookie", b"session=3f2a9c0d8e7b6a5f4e3d2c1b0a998877; theme=dark"),
    Header("x-request-id", b"6b1f0f9e-2f4c-4a7e-9b1d-3c2e1f0a9b8c"),
    Header("x-forwarded-for", b"203.0.113.7"),
    Header("x-guard-debug", b"1"),
]
ATTRIBUTES = [("request.path", "/catalog/items"), ("source.address", "203.0.113.7:51234")]


@dataclass
class _GenericHeader:  # what wasmtime-py's generic record conversion reads (getattr)
    name: str
    value: bytes


def median_us(fn: Callable[[], object], rounds: int) -> float:
    fn()  # warm
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    rounds = args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        guard = plugin_build.build("guard")
        misbehave = plugin_build.componentize_python(
            ROOT / "tests" / "http_plugins" / "misbehave_py", "app", "http-filter", work / "misbehave.wasm"
        )
        # componentize-py 0.25.1 keeps every list<u8> a plugin returns until the request ends
        # (~3x the bytes): room for all the rounds of the echo benchmark.
        limits = Limits(event_cpu_ms=1000, memory_bytes=1 << 30)
        factories = {
            name: wt.load_http_sync(SandboxSpec("bench", str(path), Grants(), limits), work / "cache")
            for name, path in (("guard", guard), ("misbehave", misbehave))
        }

        def instance(name: str) -> HttpComponentInstance:
            host = HostCapabilities("bench", name, Grants(), limits, KvStore(16, 1024))
            i = factories[name].new_instance(host)
            assert isinstance(i, HttpComponentInstance)
            return i

        g = instance("guard")
        g.open("bench", "block=/admin")
        line = "request-headers hook, 12 headers (guard)"
        print(f"{line:<58} {median_us(lambda: g.request_headers(HEADERS, ATTRIBUTES, True), rounds):9.0f} us")

        hook, store = g._hooks["on-request-headers"], g._live_store()
        generic = [_GenericHeader(h.name, h.value) for h in HEADERS]
        attrs = [_GenericHeader(n, v) for n, v in ATTRIBUTES]

        def through_generic() -> None:
            hook(store, generic, attrs, True)
            post_return(hook, store)

        line = "  the same call, wasmtime-py generic conversion"
        print(f"{line:<58} {median_us(lambda: g._guest_call('h', through_generic), rounds):9.0f} us")
        g.release()

        m = instance("misbehave")
        m.open("bench", "")
        for size in (1024, 64 * 1024):
            body = bytes(range(256)) * (size // 256)
            line = f"request-body hook, {size // 1024} KiB echoed (misbehave_py)"
            print(f"{line:<58} {median_us(lambda b=body: m.request_body(b, False), rounds):9.0f} us")
        m.release()

        def first_entry() -> None:
            i = instance("guard")
            i.open("bench", "block=/admin")
            i.request_headers(HEADERS, ATTRIBUTES, True)
            i.release()

        line = "new instance + on-open + request-headers (guard)"
        print(f"{line:<58} {median_us(first_entry, max(20, rounds // 10)):9.0f} us")
        for f in factories.values():
            asyncio.run(f.aclose())


if __name__ == "__main__":
    main()
