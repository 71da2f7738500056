"""Chart of a bench_envoy.py run: p50/p99 ping-pong latency and bulk echo MB/s per row.

    .venv/bin/python benchmarks/bench_envoy.py --json bench.json
    .venv/bin/python benchmarks/plot_bench.py bench.json [-o docs/bench.png]

Reads the JSON that `bench_envoy.py --json` writes and draws two horizontal bar
charts side by side, one bar per configuration (medians over rounds; latency on a
log scale, with the p99 as a thin bar behind the p50). Needs matplotlib (dev extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
SHORT = {
    "tcp_proxy": "Envoy tcp_proxy alone",
    "v8": "+ proxy-wasm filter, V8 (in-process)",
    "bare": "+ ext_proc, bare grpc.aio (no sandbox)",
    "wasmtime": "+ Lightcell, wasmtime tier",
    "microvm": "+ Lightcell, micro-VM tier",
}
COLORS = {
    "tcp_proxy": "#9e9e9e",
    "v8": "#6a8caf",
    "bare": "#c9a227",
    "wasmtime": "#2e8b57",
    "microvm": "#8b3a62",
}


def plot(doc: dict[str, Any], out: Path) -> None:
    rows = [r for r in doc["rows"] if r.get("median")]
    labels = [f"{r.get('name', r['number'])}. {SHORT.get(r['key'], r['label'])}" for r in rows]
    colors = [COLORS.get(r["key"].split("_w")[0], "#555555") for r in rows]  # wasmtime_w2: as wasmtime
    y = list(range(len(rows)))[::-1]

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(12, 0.55 * len(rows) + 2.2), sharey=True)
    p50 = [r["median"].get("p50_us", 0.0) for r in rows]
    p99 = [r["median"].get("p99_us", 0.0) for r in rows]
    lat.barh(y, p99, color=colors, alpha=0.3, height=0.7, label="p99")
    lat.barh(y, p50, color=colors, height=0.45, label="p50")
    for yi, a, b in zip(y, p50, p99, strict=True):
        if a:
            lat.text(a * 1.05, yi, f"{a:,.0f}", va="center", fontsize=8)
        if b:
            lat.text(b * 1.05, yi + 0.25, f"p99 {b:,.0f}", va="center", fontsize=7, color="#555555")
    lat.set_xscale("log")
    lat.set_xlim(right=max(p99 + p50, default=1) * 2.5)  # room for the labels
    lat.set_xlabel("1 KiB ping-pong round trip, µs (log scale; lower is better)")
    lat.set_yticks(y, labels)
    lat.legend(loc="lower right", fontsize=8)

    mbs = [r["median"].get("mb_s", 0.0) for r in rows]
    thr.barh(y, mbs, color=colors, height=0.45)
    for yi, v in zip(y, mbs, strict=True):
        thr.text(v + max(mbs, default=1) * 0.01, yi, f"{v:,.0f}" if v else "n/a", va="center", fontsize=8)
    thr.set_xlim(0, max(mbs, default=1) * 1.15)
    thr.set_xlabel("bulk echo, MB/s (higher is better)")

    s = doc.get("settings", {})
    m = doc.get("machine", {})
    envoy = str(m.get("envoy", "")).split("/")[1] if "/" in str(m.get("envoy", "")) else m.get("envoy", "")
    fig.suptitle(
        f"Through Envoy {envoy} (--concurrency 1), loopback; medians of {s.get('rounds', '?')} "
        f"interleaved rounds; {m.get('nproc', '?')} CPUs, {m.get('cpu', '')}",
        fontsize=10,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("json", type=Path, help="the file bench_envoy.py --json wrote")
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "bench.png")
    opts = parser.parse_args(argv)
    plot(json.loads(opts.json.read_text()), opts.out)
    print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
