"""vCPU threads: each VM is pinned to one for life.

Running a vCPU from a different thread than last time costs 40-60 us on
these machines, and KVM_RUN releases the GIL, so a few threads run many VMs:
each VM's boot, calls and restores are queued to the thread it was given.
Calls go before background work (restores, refills) in the queue.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
URGENT, BACKGROUND = 0, 1
_STOP = object()


class VcpuThread:
    def __init__(self, name: str) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    def submit(self, fn: Callable[[], T], priority: int = URGENT) -> Future[T]:
        if self._closed:
            raise RuntimeError("vCPU thread is closed")
        fut: Future[T] = Future()
        self._queue.put((priority, next(self._seq), (fn, fut)))
        return fut

    def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on this thread and wait (runs inline if already on it)."""
        if threading.get_ident() == self._thread.ident:
            return fn()
        return self.submit(fn).result()

    def _loop(self) -> None:
        while True:
            _, _, item = self._queue.get()
            if item is _STOP:
                return
            fn, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:  # handed to the waiter, never lost
                fut.set_exception(e)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put((BACKGROUND + 1, next(self._seq), _STOP))
            if threading.get_ident() != self._thread.ident:
                self._thread.join(timeout=30)


class ThreadSet:
    """A fixed set of vCPU threads; VMs are spread over them round robin."""

    def __init__(self, count: int, name: str = "lightcell-vcpu") -> None:
        self.threads = [VcpuThread(f"{name}-{i}") for i in range(count)]
        self._next = itertools.cycle(self.threads)
        self._lock = threading.Lock()

    def pick(self) -> VcpuThread:
        with self._lock:
            return next(self._next)

    def close(self) -> None:
        for t in self.threads:
            t.close()
