"""One connection's egress rate: token buckets for datagrams and bytes a second.

Each bucket holds one second's worth (a connection may burst that much) and
refills continuously. A datagram needs a token of each; when either bucket is
short nothing is taken and the datagram is refused. Not thread-safe: one
connection's host calls come one at a time (one sandbox, one call at a time).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from vmm.policy import EgressLimits

__all__ = ["EgressMeter", "TokenBucket"]

Clock = Callable[[], float]


class TokenBucket:
    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = rate
        self.tokens = rate
        self._stamp = now

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._stamp)  # a clock never goes back, but be sure
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self._stamp = now


class EgressMeter:
    """Whether one connection may send one more datagram of a given size now."""

    def __init__(self, limits: EgressLimits, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        now = clock()
        self._datagrams = TokenBucket(float(limits.datagrams_per_second), now)
        self._bytes = TokenBucket(float(limits.bytes_per_second), now)

    def allow(self, size: int) -> bool:
        now = self._clock()
        self._datagrams.refill(now)
        self._bytes.refill(now)
        if self._datagrams.tokens < 1.0 or self._bytes.tokens < size:
            return False
        self._datagrams.tokens -= 1.0
        self._bytes.tokens -= size
        return True
