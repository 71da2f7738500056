"""What the services look policies up in: a swappable table, and the leases that keep a
replaced plugin open until the last stream using it ends. `lightcell serve` never swaps a
running worker's tables (a reload replaces whole worker processes: extproc/workers.py);
`replace` is for a program that embeds LightcellServer unconfined.

A stream takes a Lease on the factory of the policy it was served (synchronously, with the
lookup); a `replace` retires every factory no longer served, and a retired factory is closed
(its micro-VM pool, its wasmtime ticker released) when its last lease ends, or at once if none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Generic, Protocol, TypeVar

__all__ = ["Lease", "PolicyTable", "as_table"]

LOG = logging.getLogger("lightcell.reload")


class _Closable(Protocol):
    async def aclose(self) -> None: ...


class _HasFactory(Protocol):
    @property
    def factory(self) -> _Closable: ...


T = TypeVar("T", bound=_HasFactory)


class Lease:
    """One stream's hold on the plugin factory it was served from."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release = release
        self._bound = False
        self._done = False

    def after(self, release: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """`release` (the session's), then the lease's end: the factory outlives the last
        sandbox made from it. Once this is called the lease ends with it, not with the block."""

        def both() -> Awaitable[None]:
            self._bound = True  # at call time: serve_requests calls it inside its finally
            return self._end_after(release())

        return both

    async def _end_after(self, release: Awaitable[None]) -> None:
        try:
            await release
        finally:
            self.end()

    @property
    def handed(self) -> bool:
        """The stream's release (Lease.after) ends the lease, not the block."""
        return self._bound

    def end(self) -> None:
        if not self._done:
            self._done = True
            self._release()


class PolicyTable(Mapping[str, T], Generic[T]):
    """The policies served now, by name: a Mapping the services read, swapped by `replace`."""

    def __init__(self, items: Mapping[str, T]) -> None:
        self._items = items  # by reference: a caller's dict stays live until a replace
        self._leases: dict[int, int] = {}
        self._retired: dict[int, _Closable] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def leases(self, item: T) -> int:
        """Streams holding `item`'s factory now."""
        return self._leases.get(id(item.factory), 0)

    @contextlib.contextmanager
    def lease(self, item: T) -> Iterator[Lease]:
        """Hold `item`'s factory for a stream: counted now, ended with the block unless handed to
        the stream's release (Lease.after). Synchronous: no await between lookup and count."""
        factory = item.factory
        key = id(factory)
        self._leases[key] = self._leases.get(key, 0) + 1
        lease = Lease(lambda: self._end(key))
        try:
            yield lease
        finally:
            if not lease.handed:
                lease.end()

    def _end(self, key: int) -> None:
        left = self._leases[key] - 1
        if left:
            self._leases[key] = left
            return
        del self._leases[key]
        retired = self._retired.pop(key, None)
        if retired is not None:
            self._close_later(retired)

    def replace(self, items: Mapping[str, T]) -> int:
        """Serve `items` from now on; close every factory no longer served once no stream holds it.
        Returns how many factories were retired."""
        old = {id(i.factory): i.factory for i in self._items.values()}
        self._items = dict(items)
        kept = {id(i.factory) for i in self._items.values()}
        retired = 0
        for key, factory in old.items():
            if key in kept or key in self._retired:
                continue
            retired += 1
            if self._leases.get(key):
                self._retired[key] = factory  # closed by the last lease's end
            else:
                self._close_later(factory)
        return retired

    @property
    def retired(self) -> int:
        """Factories replaced or removed but still held by open streams."""
        return len(self._retired)

    def _close_later(self, factory: _Closable) -> None:
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(_close(factory), name="lightcell-retire")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def settled(self) -> None:
        """Wait until every factory already due to close is closed."""
        while self._closing:
            closing = list(self._closing)
            await asyncio.gather(*closing)
            # Not left to the tasks' done callbacks: on Python 3.12+ a gather of tasks that are
            # all done already returns without yielding, so those callbacks would never run.
            self._closing.difference_update(closing)

    async def aclose(self) -> None:
        """Close every factory, served or retired (the server is stopping)."""
        await self.settled()
        self._closed = True
        factories = {id(i.factory): i.factory for i in self._items.values()} | self._retired
        self._retired = {}
        for factory in factories.values():
            await _close(factory)


async def _close(factory: _Closable) -> None:
    try:
        await factory.aclose()
    except Exception:  # one plugin's teardown must not stop the others'
        LOG.exception("closing a retired plugin failed")


def as_table(items: Mapping[str, T]) -> PolicyTable[T]:
    """`items` as a PolicyTable (a plain mapping: one no reload swaps; tests hand those in)."""
    return items if isinstance(items, PolicyTable) else PolicyTable(items)
