"""UDP egress for plugins: a vmm.capabilities.DatagramSender on an asyncio loop.

HostCapabilities has already checked the grant, the allow list and the size;
this only delivers. `send()` may be called from any thread (tiers run plugins
on worker threads): it queues the datagram on the loop and returns at once.
Delivery is best-effort like UDP itself; a full queue refuses the datagram
(the plugin sees `unreachable`) instead of blocking the plugin.

The queue is one per process, MAX_PENDING datagrams. Each connection (or HTTP
request) sends through its own `share(max_queued)`, which may hold at most
that many of those places at once, so one connection cannot fill the queue for
everyone (its rate is limited before that, in vmm.capabilities).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable

import asyncio_dgram

from vmm.policy import EgressTarget

__all__ = ["MAX_PENDING", "EgressShare", "UdpEgress"]

LOG = logging.getLogger("lightcell.egress")

MAX_PENDING = 1024
"""Datagrams queued (not yet handed to the kernel) in the whole process."""

_Done = Callable[[], None]


class UdpEgress:
    """Sends plugin datagrams, one connected UDP socket per destination address.

    A connected socket only accepts datagrams from its peer, and a reader task
    discards those, so nobody can fill our memory by sending to our port.
    """

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[EgressTarget, bytes, _Done | None]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._sockets: dict[tuple[object, ...], asyncio_dgram.aio.DatagramClient] = {}
        self._readers: list[asyncio.Task[None]] = []
        self.sent = 0
        self.failed = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._drain(), name="lightcell-egress")

    def share(self, max_queued: int) -> EgressShare:
        """A sender for one connection: at most `max_queued` of its datagrams queued at once."""
        return EgressShare(self, max_queued)

    def send(self, target: EgressTarget, payload: bytes, done: _Done | None = None) -> bool:
        """Queue a datagram (False: refused, and `done` is never called). `done` runs on the
        loop once the datagram left the queue (sent, failed, or dropped at close)."""
        loop, queue = self._loop, self._queue
        if loop is None or queue is None or loop.is_closed():
            return False
        with self._lock:
            if self._pending >= self._max_pending:
                return False
            self._pending += 1
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (target, bytes(payload), done))
        except RuntimeError:  # the loop closed meanwhile
            with self._lock:
                self._pending -= 1
            return False
        return True

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue is not None:  # what was never sent gives its share back
            while not self._queue.empty():
                _, _, done = self._queue.get_nowait()
                if done is not None:
                    done()
        for reader in self._readers:
            reader.cancel()
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        self._readers.clear()
        self._loop = None

    async def _drain(self) -> None:
        assert self._queue is not None
        while True:
            target, payload, done = await self._queue.get()
            with self._lock:
                self._pending -= 1
            try:
                await self._send_one(target, payload)
                self.sent += 1
            except (OSError, asyncio_dgram.TransportClosed) as e:
                self.failed += 1
                LOG.warning("egress datagram to %s failed: %s", target, e)
            finally:
                if done is not None:
                    done()

    async def _send_one(self, target: EgressTarget, payload: bytes) -> None:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_DGRAM)
        if not infos:
            raise OSError(f"cannot resolve {target.host}")
        address = tuple(infos[0][4])
        sock = self._sockets.get(address)
        if sock is None:
            sock = await asyncio_dgram.connect(address[:2])
            self._sockets[address] = sock
            self._readers.append(asyncio.create_task(_discard(sock), name=f"lightcell-egress-{target}"))
        await sock.send(payload)


class EgressShare:
    """One connection's place in the shared queue: a DatagramSender refusing past `max_queued`
    of its own datagrams waiting. Thread-safe (the plugin's thread sends, the loop releases)."""

    def __init__(self, egress: UdpEgress, max_queued: int) -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, not {max_queued}")
        self._egress = egress
        self.max_queued = max_queued
        self._queued = 0
        self._lock = threading.Lock()

    @property
    def queued(self) -> int:
        return self._queued

    def send(self, target: EgressTarget, payload: bytes) -> bool:
        with self._lock:
            if self._queued >= self.max_queued:
                return False
            self._queued += 1
        if self._egress.send(target, payload, self._release):
            return True
        self._release()
        return False

    def _release(self) -> None:
        with self._lock:
            self._queued -= 1


async def _discard(sock: asyncio_dgram.aio.DatagramClient) -> None:
    """Read and drop whatever the peer sends back (plugins cannot receive)."""
    with contextlib.suppress(asyncio_dgram.TransportClosed, OSError):
        while True:
            await sock.recv()
