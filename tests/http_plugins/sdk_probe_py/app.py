"""sdk_probe_py: a test plugin for the Python SDK's host functions (lightcell_sdk.host),
each called as a plugin author would and its result answered back in a request header
(tests/test_python_sdk.py), so both tiers can be compared call by call.

Config: `;`-separated calls, run in order on the request headers:
  log           host.log("probe says hi", "warn")          -> x-log: ok
  badlevel      host.log("x", "loud")                      -> raises ValueError (a trap)
  clock         wall_now() after 2023, monotonic_now() >= 0 -> x-clock: ok
  random        random_u64() in 0..2**64-1                 -> x-random: ok
  kv            kv_set("a", b"1"), kv_get("a"), kv_increment("n", 2), kv_delete("a"),
                kv_get("a")                                 -> x-kv: 1|2|none
  metadata      set_metadata("probe", "yes")               -> x-metadata: ok
  send=H:P[:N]  send_datagram(H, P, N bytes "p")            -> x-send-H-P: sent, or the
                error: denied, too-large, unreachable (N: default 5)
"""

from __future__ import annotations

from collections.abc import Mapping

from lightcell_sdk import Decision, Filter, Headers, Modify, host, serve


def _call(name: str) -> tuple[str, str]:
    """(header, value) for one configured call."""
    if name == "log":
        host.log("probe says hi", "warn")
        return "x-log", "ok"
    if name == "badlevel":
        host.log("x", "loud")
    if name == "clock":
        ok = host.wall_now() > 1_700_000_000 * 10**9 and host.monotonic_now() >= 0
        return "x-clock", "ok" if ok else "bad"
    if name == "random":
        return "x-random", "ok" if 0 <= host.random_u64() < 2**64 else "bad"
    if name == "kv":
        host.kv_set("a", b"1")
        got = host.kv_get("a")
        n = host.kv_increment("n", 2)
        host.kv_delete("a")
        gone = host.kv_get("a")
        return "x-kv", f"{got.decode() if got else 'none'}|{n}|{gone or 'none'}"
    if name == "metadata":
        host.set_metadata("probe", "yes")
        return "x-metadata", "ok"
    if name.startswith("send="):
        hostname, port, size = [*name[5:].split(":"), "5"][:3]
        error = host.send_datagram(hostname, int(port), b"p" * int(size))
        return f"x-send-{hostname}-{port}", error or "sent"
    raise ValueError(f"sdk_probe_py: unknown call {name!r}")


class Probe(Filter):
    def on_open(self, listener: str, config: str) -> None:
        self.calls = [c for c in (part.strip() for part in config.split(";")) if c]

    def on_request_headers(
        self, headers: Headers, attributes: Mapping[str, str], end_of_stream: bool
    ) -> Decision:
        return Modify(set=dict(_call(c) for c in self.calls))


WitWorld = serve(Probe)
