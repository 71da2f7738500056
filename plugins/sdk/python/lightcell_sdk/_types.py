"""What a filter sees and decides, in plain Python (no generated bindings):
usable, and testable, outside a component too."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

__all__ = ["Continue", "Decision", "HeaderPairs", "HeaderValue", "Headers", "Modify", "Respond"]

HeaderValue = bytes | str
"""A header value to send: bytes as they are, str encoded as UTF-8."""
HeaderPairs = Mapping[str, HeaderValue] | Iterable[tuple[str, HeaderValue]]
"""Headers to send: a mapping, or (name, value) pairs (a name may repeat)."""


def _value(value: HeaderValue) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def pairs(headers: HeaderPairs) -> list[tuple[str, bytes]]:
    """(lower-case name, bytes value) pairs, in order."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(name.lower(), _value(value)) for name, value in items]


class Headers:
    """The headers (or trailers) a hook got, read-only: names matched
    case-insensitively, values as bytes (Envoy's raw values, not
    necessarily UTF-8). HTTP/2 pseudo-headers (`:path`, `:method`,
    `:status`, ...) are included."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, bytes]] = ()) -> None:
        self._items = tuple((name.lower(), bytes(value)) for name, value in items)

    def get(self, name: str, default: bytes | None = None) -> bytes | None:
        """The first value of `name`, or `default`."""
        key = name.lower()
        return next((v for n, v in self._items if n == key), default)

    def get_all(self, name: str) -> list[bytes]:
        """Every value of `name`, in order."""
        key = name.lower()
        return [v for n, v in self._items if n == key]

    def text(self, name: str, default: str = "") -> str:
        """The first value of `name` decoded as UTF-8 (bad bytes replaced), or `default`."""
        value = self.get(name)
        return default if value is None else value.decode("utf-8", "replace")

    def __getitem__(self, name: str) -> bytes:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"


@dataclass(frozen=True)
class Continue:
    """Forward what the hook got, unchanged."""


@dataclass(frozen=True)
class Modify:
    """Forward it with changes, applied as if in the order remove, set, append.

    `set` replaces every value of a header (adds it if missing), `append`
    adds a value, `remove` drops a header. In headers and trailers hooks they
    change what the hook got; in body hooks, the same direction's headers
    (only while Envoy still holds them: BUFFERED body modes). `body` (body
    hooks only) replaces the chunk: b"" drops it, None leaves it unchanged.
    componentize-py 0.25.1 does not free the bytes a hook returns until the
    request ends (about three times their size stays in the plugin's memory):
    return Continue() for a chunk that is unchanged.
    """

    set: HeaderPairs = ()
    append: HeaderPairs = ()
    remove: Iterable[str] = ()
    body: bytes | str | None = None


@dataclass(frozen=True)
class Respond:
    """Answer the client now with this response (status 200..599); nothing
    more of the request or of the upstream's response is forwarded."""

    status: int
    headers: HeaderPairs = field(default=())
    body: bytes | str = b""


Decision = Continue | Modify | Respond
