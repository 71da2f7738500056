"""Process-wide counters, labelled, thread-safe (tiers call from worker threads)."""

from __future__ import annotations

import threading
from collections import Counter

Labels = tuple[tuple[str, str], ...]


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, Labels]] = Counter()

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counts[key] += amount

    def get(self, name: str, **labels: str) -> int:
        """Sum of `name` over every series whose labels include `labels`."""
        want = set(labels.items())
        with self._lock:
            return sum(v for (n, ls), v in self._counts.items() if n == name and want <= set(ls))

    def snapshot(self) -> dict[tuple[str, Labels], int]:
        with self._lock:
            return dict(self._counts)

    def render(self) -> str:
        """Prometheus text format."""
        lines = []
        for (name, labels), value in sorted(self.snapshot().items()):
            body = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"lightcell_{name}{{{body}}} {value}")
        return "\n".join(lines) + "\n"


METRICS = Metrics()
