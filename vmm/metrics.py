"""Process-wide metrics, labelled, thread-safe (tiers call from worker threads).

`Metrics` is the one place code records into. Every instance keeps its counters
in memory (`get`, which tests and private per-sandbox instances use); the
process-wide `METRICS` also mirrors every record into prometheus-client
collectors (`EXPORTED`), which `extproc.metrics_http` serves. Under
`serve --metrics-address` the supervisor sets PROMETHEUS_MULTIPROC_DIR before it
starts any worker (also those a reload starts), so their collectors write to
per-process files the supervisor's one endpoint sums (prometheus-client's
multiprocess mode; an exited worker is marked dead).

Label cardinality stays bounded: labels are listener and route names from the
configuration, plugin names, tiers, hooks, fault kinds, capabilities and reasons;
never a connection, sandbox or peer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter as _Counter
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

__all__ = ["EXPORTED", "METRICS", "PREFIX", "Metrics"]

LOG = logging.getLogger("lightcell.metrics")
Labels = tuple[tuple[str, str], ...]
PREFIX = "lightcell_"

# Seconds. A hook runs in ~10 us inline to the per-event CPU budget (up to seconds).
HOOK_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0, 2.5, 10.0)  # fmt: skip
# A VM restore is ~50-500 us, a fresh VM or wasmtime instance ~0.5-5 ms.
SANDBOX_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass(frozen=True)
class _Spec:
    kind: str  # counter, gauge, histogram
    doc: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: nothing uses them

# A label a call site leaves out: the network service's streams carry no protocol label.
DEFAULTS = {"protocol": "tcp"}
_TIER = ("listener", "tier")
SCHEMA: dict[str, _Spec] = {
    # Streams: one TCP connection or one HTTP request each.
    "connections_total": _Spec("counter", "TCP connections given a sandbox", _TIER),
    "connections_active": _Spec("gauge", "TCP connections being served", _TIER),
    "http_requests_total": _Spec("counter", "HTTP requests (listener or listener/route policy)", _TIER),
    "http_requests_active": _Spec("gauge", "HTTP requests being served", _TIER),
    "streams_refused_total": _Spec("counter", "ext_proc streams refused", ("reason", "protocol")),
    "internal_errors_total": _Spec("counter", "streams ended by a Lightcell bug", ("listener", "protocol")),
    # Plugins.
    "plugin_faults_total": _Spec(
        "counter",
        "plugin faults (trap, budget, memory, denied, abi, internal)",
        ("listener", "plugin", "fault", "protocol"),
    ),
    "capability_denied_total": _Spec(
        "counter", "calls to a capability the policy does not grant", ("listener", "plugin", "capability")
    ),
    "plugin_verdict_close_total": _Spec("counter", "connections a plugin closed", ("listener", "reset")),
    "plugin_immediate_total": _Spec(
        "counter", "HTTP requests a plugin answered, by status class (2xx-5xx)", ("listener", "status")
    ),
    "log_dropped_total": _Spec("counter", "plugin log lines over the rate limit", ("listener", "plugin")),
    "egress_datagrams_total": _Spec("counter", "egress datagrams queued to send", ("listener", "plugin")),
    "egress_refused_total": _Spec("counter", "egress datagrams refused", ("listener", "plugin")),
    "egress_dropped_total": _Spec(
        "counter", "egress datagrams dropped (rate: over egress_limits, queue: queue share full)",
        ("listener", "plugin", "reason"),
    ),
    # Latency and sandboxes.
    "hook_seconds": _Spec("histogram", "one plugin hook call", ("hook", "tier"), HOOK_BUCKETS),
    "sandbox_create_seconds": _Spec(
        "histogram", "making a sandbox: a fresh micro-VM, a wasmtime instance", ("tier",), SANDBOX_BUCKETS
    ),
    "sandbox_restore_seconds": _Spec(
        "histogram", "restoring a used micro-VM from its snapshot", ("tier",), SANDBOX_BUCKETS
    ),
    "microvm_pool_idle": _Spec("gauge", "micro-VMs ready in a listener's pool", ("listener",)),
    "microvm_pool_live": _Spec(
        "gauge", "micro-VMs alive for a listener (idle, leased, restoring)", ("listener",)
    ),
    "wasmtime_warm_instances": _Spec("gauge", "wasmtime instances made ahead, ready", ("listener",)),
    # Unlabelled, so each process opens its multiprocess files at import (before any
    # system-call filter), and so a scrape shows how many workers serve.
    "workers_serving": _Spec("gauge", "server processes serving", ()),
    "serve_starts_total": _Spec("counter", "server processes started serving", ()),
    "startup_seconds": _Spec("histogram", "loading every plugin at start", (), (*SANDBOX_BUCKETS, 10, 60)),
}


class _Exporter:
    """prometheus-client collectors for SCHEMA, plus counters made on first use for
    names not in it (their label names are those of that first use)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._metrics: dict[str, tuple[Counter | Gauge | Histogram, tuple[str, ...]]] = {}
        self._warned: set[tuple[str, str]] = set()
        # (name, labels as given) -> child: skips prometheus-client's labels() on the hot path
        # (a hook's latency is observed on every call). Bounded like the label values.
        self._children: dict[tuple[object, ...], Counter | Gauge | Histogram | None] = {}
        for name, spec in SCHEMA.items():
            self._make(name, spec)

    def _make(self, name: str, spec: _Spec) -> tuple[Counter | Gauge | Histogram, tuple[str, ...]]:
        full, reg = PREFIX + name, self.registry
        metric: Counter | Gauge | Histogram
        if spec.kind == "counter":
            metric = Counter(full, spec.doc, spec.labels, registry=reg)
        elif spec.kind == "gauge":
            # livesum: a worker that exits stops counting (the supervisor marks it dead).
            metric = Gauge(full, spec.doc, spec.labels, registry=reg, multiprocess_mode="livesum")
        else:
            metric = Histogram(full, spec.doc, spec.labels, registry=reg, buckets=spec.buckets)
        self._metrics[name] = (metric, spec.labels)
        return self._metrics[name]

    def child(self, name: str, kind: str, labels: dict[str, str]) -> Counter | Gauge | Histogram | None:
        key = (name, *labels.items())
        try:
            return self._children[key]
        except KeyError:
            pass
        child = self._child(name, kind, labels)
        self._children[key] = child
        return child

    def _child(self, name: str, kind: str, labels: dict[str, str]) -> Counter | Gauge | Histogram | None:
        found = self._metrics.get(name)
        if found is None:
            if kind != "counter":
                self._warn(name, "not declared")
                return None
            with self._lock:
                found = self._metrics.get(name) or self._make(
                    name, _Spec("counter", name.replace("_", " "), tuple(sorted(labels)))
                )
        metric, names = found
        for extra in labels.keys() - set(names):
            self._warn(name, f"label {extra} not declared: not exported")
        if not names:
            return metric
        return metric.labels(*(str(labels.get(n, DEFAULTS.get(n, ""))) for n in names))

    def _warn(self, name: str, why: str) -> None:
        if (name, why) not in self._warned:
            self._warned.add((name, why))
            LOG.warning("metric %s: %s", name, why)


EXPORTED = _Exporter()


class Metrics:
    def __init__(self, export: bool = False) -> None:
        self._lock = threading.Lock()
        self._counts: _Counter[tuple[str, Labels]] = _Counter()
        self._export = export

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counts[key] += amount
        if self._export:
            child = EXPORTED.child(name, "counter", labels)
            if isinstance(child, Counter):
                child.inc(amount)

    def get(self, name: str, **labels: str) -> int:
        """Sum of `name` over every series whose labels include `labels`."""
        want = set(labels.items())
        with self._lock:
            return sum(v for (n, ls), v in self._counts.items() if n == name and want <= set(ls))

    def snapshot(self) -> dict[tuple[str, Labels], int]:
        with self._lock:
            return dict(self._counts)

    # Gauges and histograms are exported only (nothing reads them back in process).
    def add(self, name: str, delta: float, **labels: str) -> None:
        """Move a gauge by `delta`."""
        if self._export:
            child = EXPORTED.child(name, "gauge", labels)
            if isinstance(child, Gauge):
                child.inc(delta)

    def set(self, name: str, value: float, **labels: str) -> None:
        if self._export:
            child = EXPORTED.child(name, "gauge", labels)
            if isinstance(child, Gauge):
                child.set(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        if self._export:
            child = EXPORTED.child(name, "histogram", labels)
            if isinstance(child, Histogram):
                child.observe(value)

    @contextlib.contextmanager
    def timed(self, name: str, **labels: str) -> Iterator[None]:
        """Observe the block's duration in histogram `name` (also when it raises)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe(name, time.perf_counter() - start, **labels)

    @contextlib.contextmanager
    def active(self, name: str, **labels: str) -> Iterator[None]:
        """Gauge `name` counts the block while it runs."""
        self.add(name, 1, **labels)
        try:
            yield
        finally:
            self.add(name, -1, **labels)


METRICS = Metrics(export=True)
