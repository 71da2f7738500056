"""The one wasmtime Engine of this process, its epoch ticker and worker pool.

CPU budget: epoch interruption. A ticker thread bumps the engine's epoch every
TICK_SECONDS while any plugin is loaded; each hook call sets its deadline to
ceil(event_cpu_ms / tick) + 1 ticks (the +1 covers a partial first tick). At
the deadline _budget.py checks the CPU time the call actually used (its
thread's, less garbage-collector passes on it) and either moves the deadline
on (a starved call) or ends the call.

Epoch or fuel, measured (`python benchmarks/bench_wasmtime_tier.py`, 2 shared
cores, p50): a tight guest loop over 1 MiB takes 1.07 ms with no budget,
2.07 ms with epoch checks, 1.74 ms with fuel. Fuel is cheaper on such loops
but counts instructions, not time: a plugin spinning on host calls (kv.get,
log) burns almost no fuel while holding a worker for as long as it likes, and
instructions per ms differ per machine. The policy's budget is time, and the
epoch deadline also covers time spent in host calls, so epoch it is. On real
plugins the guest loop is a small part of an event (rewrite, 64 KiB: ~280 µs
per event inline, most of it host-side copying and calls). The ticker itself
costs nothing measurable on the per-event path (thread-hop p50 183 µs with
it, 196 µs without: noise).

Compiled artefacts depend on the Engine's configuration, so the cache key
includes CONFIG_TAG.
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import threading

import wasmtime

__all__ = ["CONFIG_TAG", "EXECUTOR", "TICK_SECONDS", "deadline_ticks", "engine", "ticker"]

TICK_SECONDS = 0.001
CONFIG_TAG = f"wasmtime-{importlib.metadata.version('wasmtime')}-epoch-opt2"

# Plugin calls run here, off the event loop (see _runner.py for the numbers).
# Sized for a few connections stuck in a looping plugin (each holds a worker
# for at most one budget) while others keep being served.
EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="lightcell-wasm")

_lock = threading.Lock()
_engine: wasmtime.Engine | None = None


def engine() -> wasmtime.Engine:
    global _engine
    with _lock:
        if _engine is None:
            cfg = wasmtime.Config()
            cfg.epoch_interruption = True
            cfg.wasm_component_model = True
            cfg.cranelift_opt_level = "speed"
            _engine = wasmtime.Engine(cfg)
        return _engine


def deadline_ticks(event_cpu_ms: int) -> int:
    ticks = -(-event_cpu_ms * 1000 // int(TICK_SECONDS * 1_000_000))
    return max(1, ticks) + 1


class _Ticker:
    """Increments the epoch while at least one user holds it (refcounted)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._thread is None:
                stop = threading.Event()
                eng = engine()
                self._stop = stop
                self._thread = threading.Thread(
                    target=_tick, args=(eng, stop), name="lightcell-epoch", daemon=True
                )
                self._thread.start()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._thread is None or self._stop is None:
                return
            self._stop.set()
            thread, self._thread, self._stop = self._thread, None, None
        thread.join()

    @property
    def running(self) -> bool:
        return self._thread is not None


def _tick(eng: wasmtime.Engine, stop: threading.Event) -> None:
    # Event.wait(timeout) sleeps without holding the GIL; increment_epoch is
    # one atomic add in wasmtime (ctypes drops the GIL around it).
    while not stop.wait(TICK_SECONDS):
        eng.increment_epoch()


ticker = _Ticker()
