"""`lightcell run`'s UDP sockets (vmm.microvm.wasip2_host.UdpService) on asyncio-dgram.

The rules, checked here on every call from the guest:
- bind: only to an address listed with --udp-bind (exact IPv4 address and
  port; at most MAX_SOCKETS sockets); anything else is `access-denied`.
- send from a bound socket: to a destination in the --allow list, or to the
  address and port a datagram on that socket came from (the MAX_PEERS most
  recent senders the program has received from: an echo server may answer
  its clients); anything else is `access-denied`. Datagrams larger than
  the limit are `datagram-too-large`.
- receive: at most MAX_QUEUED datagrams wait per socket; more are dropped
  (UDP may drop), so a flood cannot fill the host's memory.
The guest's calls come from the VM's thread; the sockets live on the
asyncio loop, reached with run_coroutine_threadsafe.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import asyncio_dgram

from vmm.microvm.wasip2_host import ErrorCode
from vmm.policy import EgressTarget

__all__ = ["MAX_PEERS", "MAX_QUEUED", "MAX_SOCKETS", "UdpSockets"]

LOG = logging.getLogger("lightcell.run")
MAX_SOCKETS = 16
MAX_QUEUED = 256
MAX_PEERS = 1024
_IO_TIMEOUT_S = 5.0


@dataclass
class _Socket:
    server: asyncio_dgram.aio.DatagramServer
    queue: deque[tuple[str, int, bytes]] = field(default_factory=deque)
    peers: OrderedDict[tuple[str, int], None] = field(default_factory=OrderedDict)
    reader: asyncio.Task[None] | None = None
    dropped: int = 0


class UdpSockets:
    def __init__(self, loop: asyncio.AbstractEventLoop, binds: frozenset[tuple[str, int]],
                 allow: frozenset[EgressTarget], max_datagram_bytes: int) -> None:
        self._loop = loop
        self._binds = binds
        self._allow = allow
        self._max_datagram = max_datagram_bytes
        self._socks: dict[int, _Socket] = {}
        self._ready = threading.Condition()

    # -- called from the VM's thread -------------------------------------
    def bind(self, ip: str, port: int) -> int | ErrorCode:
        if (ip, port) not in self._binds:
            LOG.warning("bind to %s:%d refused: not allowed by --udp-bind", ip, port)
            return ErrorCode.ACCESS_DENIED
        if len(self._socks) >= MAX_SOCKETS:
            return ErrorCode.ACCESS_DENIED
        try:
            sock = asyncio.run_coroutine_threadsafe(self._bind(ip, port), self._loop).result(_IO_TIMEOUT_S)
        except OSError as e:
            LOG.warning("bind to %s:%d failed: %s", ip, port, e)
            return ErrorCode.ADDRESS_IN_USE if e.errno == errno.EADDRINUSE else ErrorCode.ADDRESS_NOT_BINDABLE
        sock_id = len(self._socks) + 1
        self._socks[sock_id] = sock
        return sock_id

    def recv(self, sock_id: int) -> tuple[str, int, bytes] | None:
        sock = self._get(sock_id)
        with self._ready:
            if not sock.queue:
                return None
            ip, port, data = sock.queue.popleft()
        sock.peers[(ip, port)] = None
        sock.peers.move_to_end((ip, port))
        while len(sock.peers) > MAX_PEERS:
            sock.peers.popitem(last=False)
        return ip, port, data

    def pending(self, sock_id: int) -> bool:
        sock = self._get(sock_id)
        with self._ready:
            return bool(sock.queue)

    def send(self, sock_id: int, ip: str, port: int, data: bytes) -> ErrorCode | None:
        sock = self._get(sock_id)
        if EgressTarget(ip, port) not in self._allow and (ip, port) not in sock.peers:
            LOG.warning("datagram to %s:%d refused: not a peer nor in --allow", ip, port)
            return ErrorCode.ACCESS_DENIED
        if len(data) > self._max_datagram:
            return ErrorCode.DATAGRAM_TOO_LARGE
        try:
            if not data:  # asyncio's transports skip empty datagrams: send it on a dup of the socket
                with socket.fromfd(sock.server.socket.fileno(), socket.AF_INET, socket.SOCK_DGRAM) as raw:
                    raw.sendto(b"", (ip, port))
                return None
            sent = asyncio.run_coroutine_threadsafe(sock.server.send(data, (ip, port)), self._loop)
            sent.result(_IO_TIMEOUT_S)
        except (OSError, asyncio_dgram.TransportClosed) as e:
            LOG.warning("datagram to %s:%d failed: %s", ip, port, e)
            return ErrorCode.REMOTE_UNREACHABLE
        return None

    def wait(self, socks: list[int], timeout_s: float) -> bool:
        queues = [self._get(s).queue for s in socks]
        with self._ready:
            return self._ready.wait_for(lambda: any(queues), timeout_s)

    def _get(self, sock_id: int) -> _Socket:
        sock = self._socks.get(sock_id)
        if sock is None:
            from vmm.capabilities import CapabilityMisuse

            raise CapabilityMisuse(f"no UDP socket {sock_id}")
        return sock

    # -- on the loop -------------------------------------------------------
    async def _bind(self, ip: str, port: int) -> _Socket:
        sock = _Socket(await asyncio_dgram.bind((ip, port)))
        sock.reader = asyncio.create_task(self._read(sock), name=f"lightcell-run-udp-{ip}:{port}")
        return sock

    async def _read(self, sock: _Socket) -> None:
        with contextlib.suppress(asyncio_dgram.TransportClosed, OSError):
            while True:
                data, addr = await sock.server.recv()
                assert isinstance(addr, tuple)  # an AF_INET socket's (ip, port)
                with self._ready:
                    if len(sock.queue) >= MAX_QUEUED:
                        sock.dropped += 1
                        continue
                    sock.queue.append((str(addr[0]), int(addr[1]), bytes(data)))
                    self._ready.notify_all()

    async def aclose(self) -> None:
        for sock in self._socks.values():
            if sock.reader is not None:
                sock.reader.cancel()
            sock.server.close()
        self._socks.clear()
