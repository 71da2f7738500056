"""guard: an http-filter plugin in Python, written with lightcell_sdk.

Request headers: a path (`:path`, query included) starting with one of the
`block` prefixes is answered at once with 403 and the body
"guard: <path> is blocked\n"; any other request goes on with the header
`x-guard: checked` set and `x-guard-debug` removed (the upstream never sees a
client's x-guard-debug).
Response headers: sets `x-guard: on` and `x-guard-hooks: N`, N the hooks this
filter object has run (2 for every request: state never crosses requests).

Config, `;`-separated `key=value` items (on-open raises on a bad one, a trap):
  block=/admin,/private   path prefixes to refuse (each must start with '/')
  count=on                kv.increment("requests") per request, sent upstream
                          as `x-guard-count: n` (grant `kv`)
  stamp=on                time.time_ns() (WASI 0.2 wall clock, grant `clock`)
                          sent upstream as `x-guard-time: ns`
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from lightcell_sdk import Decision, Filter, Headers, Modify, Respond, serve
from lightcell_sdk.host import kv_increment

_FLAGS = ("count", "stamp")


class Guard(Filter):
    def on_open(self, listener: str, config: str) -> None:
        self.block: tuple[str, ...] = ()
        self.flags: set[str] = set()
        self.hooks = 0
        for item in filter(None, (part.strip() for part in config.split(";"))):
            key, _, value = item.partition("=")
            if key == "block":
                self.block = tuple(p for p in value.split(",") if p)
                bad = [p for p in self.block if not p.startswith("/")]
                if bad:
                    raise ValueError(f"guard: block prefixes must start with '/': {bad}")
            elif key in _FLAGS and value == "on":
                self.flags.add(key)
            else:
                raise ValueError(f"guard: unknown config item {item!r}")

    def on_request_headers(
        self, headers: Headers, attributes: Mapping[str, str], end_of_stream: bool
    ) -> Decision:
        self.hooks += 1
        path = headers.text(":path")
        if any(path.startswith(prefix) for prefix in self.block):
            return Respond(
                403,
                {"content-type": "text/plain", "x-guard": "blocked"},
                f"guard: {path} is blocked\n",
            )
        added = {"x-guard": "checked"}
        if "count" in self.flags:
            added["x-guard-count"] = str(kv_increment("requests"))
        if "stamp" in self.flags:
            added["x-guard-time"] = str(time.time_ns())
        return Modify(set=added, remove=["x-guard-debug"])

    def on_response_headers(
        self, headers: Headers, attributes: Mapping[str, str], end_of_stream: bool
    ) -> Decision:
        self.hooks += 1
        return Modify(set={"x-guard": "on", "x-guard-hooks": str(self.hooks)})


WitWorld = serve(Guard)
