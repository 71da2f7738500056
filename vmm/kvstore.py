"""The key-value store shared by all connections of one plugin on one listener."""

from __future__ import annotations

import threading


class KvFull(Exception):
    pass


class KvStore:
    def __init__(self, max_keys: int, max_value_bytes: int) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, bytes] = {}
        self._max_keys = max_keys
        self._max_value_bytes = max_value_bytes

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._data.get(key)

    def set(self, key: str, value: bytes) -> None:
        if len(value) > self._max_value_bytes:
            raise KvFull(f"value of {len(value)} bytes exceeds {self._max_value_bytes}")
        with self._lock:
            if key not in self._data and len(self._data) >= self._max_keys:
                raise KvFull(f"store holds {self._max_keys} keys already")
            self._data[key] = bytes(value)

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def increment(self, key: str, delta: int) -> int:
        """Wrapping signed 64-bit add, atomic across connections."""
        with self._lock:
            raw = self._data.get(key)
            current = int.from_bytes(raw, "little", signed=True) if raw and len(raw) == 8 else 0
            value = (current + delta + 2**63) % 2**64 - 2**63
            if key not in self._data and len(self._data) >= self._max_keys:
                raise KvFull(f"store holds {self._max_keys} keys already")
            self._data[key] = value.to_bytes(8, "little", signed=True)
            return value
