"""The key-value store shared by all connections of one plugin on one listener."""

from __future__ import annotations

import threading

MAX_KEY_BYTES = 1024
"""Keys are names, not data: without a cap a plugin could store 10,000 keys of
(up to its whole linear memory) each, whatever the value limit says."""
MAX_TOTAL_BYTES = 64 * 1024 * 1024
"""All keys and values of one store together (max_keys x max_value_bytes alone
would allow 10,000 x 64 KiB = 640 MiB per listener)."""


class KvFull(Exception):
    pass


class KvStore:
    def __init__(
        self,
        max_keys: int,
        max_value_bytes: int,
        max_key_bytes: int = MAX_KEY_BYTES,
        max_total_bytes: int = MAX_TOTAL_BYTES,
    ) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, bytes] = {}
        self._max_keys = max_keys
        self._max_value_bytes = max_value_bytes
        self._max_key_bytes = max_key_bytes
        self._max_total_bytes = max_total_bytes
        self._total = 0  # sum of len(key as UTF-8) + len(value) over the store

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._data.get(key)

    def set(self, key: str, value: bytes) -> None:
        if len(value) > self._max_value_bytes:
            raise KvFull(f"value of {len(value)} bytes exceeds {self._max_value_bytes}")
        with self._lock:
            self._store(key, bytes(value))

    def delete(self, key: str) -> None:
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._total -= _key_bytes(key) + len(old)

    def increment(self, key: str, delta: int) -> int:
        """Wrapping signed 64-bit add, atomic across connections."""
        with self._lock:
            raw = self._data.get(key)
            current = int.from_bytes(raw, "little", signed=True) if raw and len(raw) == 8 else 0
            value = (current + delta + 2**63) % 2**64 - 2**63
            self._store(key, value.to_bytes(8, "little", signed=True))
            return value

    def _store(self, key: str, value: bytes) -> None:
        """Insert or replace under every limit. Caller holds the lock."""
        klen = _key_bytes(key)
        if klen > self._max_key_bytes:
            raise KvFull(f"key of {klen} bytes exceeds {self._max_key_bytes}")
        old = self._data.get(key)
        if old is None and len(self._data) >= self._max_keys:
            raise KvFull(f"store holds {self._max_keys} keys already")
        total = self._total + len(value) - (len(old) if old is not None else -klen)
        if total > self._max_total_bytes:
            raise KvFull(f"store would hold {total} bytes, over {self._max_total_bytes}")
        self._data[key] = value
        self._total = total


def _key_bytes(key: str) -> int:
    return len(key.encode("utf-8", "surrogatepass"))
