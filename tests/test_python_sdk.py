"""The Python SDK's host functions (plugins/sdk/python/lightcell_sdk/host.py) called from a
real componentize-py plugin (tests/http_plugins/sdk_probe_py, built here from source) in both
tiers: every helper reaches its capability, a refused datagram comes back as the SDK's error
string (not a crash), an ungranted call faults the request as DENIED, and the micro-VM and
wasmtime agree on every decision, host call, kv entry and datagram."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _differential import ObservedKv, RecordingHost, http_in_both_tiers
from _host_fakes import Sent

from plugins import build as plugin_build
from vmm.contract import DecisionKind, LogLevel
from vmm.http_abi import Header, HttpDecision
from vmm.policy import CAPABILITIES, EgressTarget, Grants, Limits, SandboxSpec
from vmm.sandbox import FaultKind, PluginFault

pytestmark = pytest.mark.kvm

HERE = Path(__file__).resolve().parent
LISTENER = "sdk-listener"
LIMITS = Limits(event_cpu_ms=5000)  # CPython's first calls; no loop is meant here
ALLOWED = EgressTarget("127.0.0.1", 9125)
EVERY_CALL = "log;clock;random;kv;metadata;send=127.0.0.1:9125;send=127.0.0.1:9126;send=127.0.0.1:9125:2000"


@pytest.fixture(scope="module")
async def probe(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[tuple[str, str], Any]]:
    out = tmp_path_factory.mktemp("sdk-probe-py") / "sdk_probe_py.wasm"
    plugin_build.componentize_python(HERE / "http_plugins" / "sdk_probe_py", "app", "http-filter", out)
    spec = SandboxSpec(LISTENER, str(out), Grants(CAPABILITIES, frozenset({ALLOWED})), LIMITS)
    async with http_in_both_tiers({"probe": spec}) as loaded:
        yield loaded


def _request(factory: Any, config: str, grants: frozenset[str]) -> tuple[Any, RecordingHost, ObservedKv]:
    """One request's headers hook on a fresh instance (on its worker): the decision or the
    fault, the host (its calls and datagrams) and the kv store."""
    kv = ObservedKv(100, 1024)
    host = RecordingHost(LISTENER, "probe", Grants(grants, frozenset({ALLOWED})), LIMITS, kv, Sent())
    instance = factory.new_instance(host)
    try:
        instance.submit(lambda: instance.open(LISTENER, config)).result()
        headers = [Header(":path", b"/"), Header(":method", b"GET")]
        try:
            outcome: Any = instance.submit(lambda: instance.request_headers(headers, [], True)).result()
        except PluginFault as e:
            outcome = ("fault", e.kind, e.message)
    finally:
        instance.release()
    return outcome, host, kv


def _set(decision: HttpDecision) -> dict[str, str]:
    assert decision.kind is DecisionKind.MODIFY, decision
    return {h.name: h.value.decode() for h in decision.headers.set}


async def test_every_host_function_of_the_sdk_reaches_its_capability(
    probe: dict[tuple[str, str], Any],
) -> None:
    seen = {}
    for tier in ("microvm", "wasmtime"):
        decision, host, kv = _request(probe[tier, "probe"], EVERY_CALL, frozenset(CAPABILITIES))
        seen[tier] = (decision, host.calls, kv.contents(), host.egress.datagrams)  # type: ignore[union-attr]
    assert seen["microvm"] == seen["wasmtime"]
    decision, calls, kv, datagrams = seen["microvm"]
    assert _set(decision) == {
        "x-log": "ok", "x-clock": "ok", "x-random": "ok", "x-kv": "1|2|none", "x-metadata": "ok",
        "x-send-127.0.0.1-9125": "too-large",  # the last of the two sends to the allowed target
        "x-send-127.0.0.1-9126": "denied",
    }  # fmt: skip
    assert decision.metadata == {"probe": "yes"}
    assert ("log", (int(LogLevel.WARN), "probe says hi"), None) in calls
    assert kv == {"n": (2).to_bytes(8, "little", signed=True)}
    assert datagrams == [(ALLOWED, b"ppppp")]


@pytest.mark.parametrize("config, grants, fault", [
    ("log", frozenset(), FaultKind.DENIED),
    ("send=127.0.0.1:9125", frozenset({"log"}), FaultKind.DENIED),
    ("badlevel", frozenset({"log"}), FaultKind.TRAP),
])  # fmt: skip
async def test_an_ungranted_or_bad_call_faults_the_request_alike(
    probe: dict[tuple[str, str], Any], config: str, grants: frozenset[str], fault: FaultKind
) -> None:
    seen = {tier: _request(probe[tier, "probe"], config, grants) for tier in ("microvm", "wasmtime")}
    (mv, mv_host, _), (wt, wt_host, _) = seen["microvm"], seen["wasmtime"]
    assert mv == wt and mv[:2] == ("fault", fault)
    assert mv_host.calls == wt_host.calls
