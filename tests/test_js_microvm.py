"""JavaScript (componentize-js) http-filter plugins in the micro-VM tier: the jsonpatch and
tagjson examples, built from source, compiled for the guest (SpiderMonkey's core module in
cached pieces, vmm/microvm/component_compile.split_object) and run in real /dev/kvm micro-VMs
against the wasmtime tier over the same requests: identical decisions, faults, host calls and
kv.

The compile is shared per session and cached in the user's AOT cache: cold it takes minutes
(benchmarks/measure_aot_compile.py measures it); the second example reuses all but a few
pieces."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from _differential import ObservedKv, RecordingHost, http_in_both_tiers
from _host_fakes import Sent

from plugins import build as plugin_build
from vmm.contract import DecisionKind, HttpPhase
from vmm.http_abi import HttpDecision
from vmm.policy import CAPABILITIES, Grants, Limits, SandboxSpec
from vmm.sandbox import FaultKind, PluginFault

pytestmark = pytest.mark.kvm

LISTENER = "js-listener"
LIMITS = Limits(memory_bytes=64 << 20, event_cpu_ms=5000)  # SpiderMonkey starts at ~9 MiB
CONTINUE = HttpDecision(DecisionKind.CONTINUE)
Outcome = tuple[Any, ...]


@pytest.fixture(scope="module")  # closed after this module: a wasmtime factory holds the epoch ticker
async def js_http() -> AsyncIterator[dict[tuple[str, str], Any]]:
    """jsonpatch and tagjson loaded once per tier (every grant in the spec; each request's host
    carries its case's grants, as a listener's would)."""
    specs = {p: SandboxSpec(LISTENER, str(plugin_build.build(p)), Grants(CAPABILITIES), LIMITS)
             for p in ("jsonpatch", "tagjson")}  # fmt: skip
    async with http_in_both_tiers(specs) as loaded:
        yield loaded


def _outcome(step: Callable[[], HttpDecision | None]) -> Outcome:
    try:
        return ("decision", step() or CONTINUE)
    except PluginFault as e:
        return ("fault", e.kind, e.message)


def _request(factory: Any, kv: ObservedKv, plugin: str, grants: frozenset[str],
             steps: list[tuple[str, tuple[Any, ...]]]) -> tuple[list[Outcome], list[Any]]:
    """One request's steps on a fresh instance (on its worker thread) until a fault, then
    on-close; what each step decided and the host calls made."""
    host = RecordingHost(LISTENER, plugin, Grants(grants), LIMITS, kv, Sent())
    instance = factory.new_instance(host)
    out = []
    try:
        for name, args in [*steps, ("close", ())]:
            method = getattr(instance, name)
            o = _outcome(lambda m=method, a=args: instance.submit(lambda: m(*a)).result())  # type: ignore[misc]
            out.append(o)
            if o[0] == "fault":
                break
    finally:
        instance.release()
    return out, host.calls


BODY = json.dumps({"b": 2, "c": "x", "meta": {"keep": True}}).encode()
BIG = json.dumps({"items": ["x" * 1000] * 200, "drop": 1}).encode()
CASES: list[tuple[str, str, frozenset[str], list[tuple[str, tuple[Any, ...]]]]] = [
    # (plugin, config, the request's grants, steps after on-open)
    ("jsonpatch", 'set=a:1,meta.src:lc,s:"two words";drop=b,nope.x', frozenset(),
     [("request_body", (BODY, True))]),
    ("jsonpatch", "", frozenset(), [("request_body", (BODY, True))]),
    ("jsonpatch", "drop=drop;set=n:3;max=700000", frozenset(),
     [("request_body", (BIG[:10], False)), ("request_body", (BIG[10:], True))]),
    ("jsonpatch", "set=a:1;log=on", frozenset({"log"}), [("request_body", (b"not json", True))]),
    ("jsonpatch", "set=a:1;log=on", frozenset(), [("request_body", (b"[1,2]", True))]),  # log denied
    ("jsonpatch", "max=10", frozenset(), [("request_body", (b'{"a":', False)),
                                          ("request_body", (b'"0123456789"}', True))]),
    ("jsonpatch", "bogus=1", frozenset(), [("request_body", (BODY, True))]),  # on-open throws
    ("tagjson", "", frozenset(), [("request_body", (BODY[:7], False)), ("request_body", (BODY[7:], True))]),
    ("tagjson", "", frozenset(), [("request_body", (b"[]", True))]),
]  # fmt: skip


def _open_steps(config: str, steps: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[str, tuple[Any, ...]]]:
    return [("open", (LISTENER, config)), *steps]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}[{c[1]}|{'+'.join(sorted(c[2]))}]" for c in CASES])
async def test_js_plugins_agree_across_tiers(js_http: dict[tuple[str, str], Any],
                                             case: tuple[Any, ...]) -> None:
    plugin, config, grants, steps = case
    seen = {}
    for tier in ("microvm", "wasmtime"):
        factory = js_http[tier, plugin]
        assert factory.tier == tier
        kv = ObservedKv(100, 1024)
        # two requests: the second shows a fresh instance (jsonpatch's held pieces)
        requests = [_request(factory, kv, plugin, grants, _open_steps(config, steps)) for _ in range(2)]
        seen[tier] = (requests, kv.contents())
    assert seen["microvm"] == seen["wasmtime"]
    outcomes, calls = seen["microvm"][0][0]
    decisions = [o[1] for o in outcomes if o[0] == "decision"]
    if config.startswith("bogus"):
        assert outcomes[-1][:2] == ("fault", FaultKind.TRAP), outcomes
    elif config.startswith("set=a:1,meta"):
        assert decisions[1].body == b'{"c":"x","meta":{"keep":true,"src":"lc"},"a":1,"s":"two words"}'
    elif config.startswith("drop=drop"):
        assert decisions[1].body == b"" and json.loads(decisions[2].body) == {
            "items": ["x" * 1000] * 200, "n": 3}
    elif config == "set=a:1;log=on" and grants:
        assert (decisions[1].kind, decisions[1].status) == (DecisionKind.RESPOND, 400)
        assert calls[0][0] == "log", calls
    elif config == "set=a:1;log=on":  # logging without the grant
        assert outcomes[-1][:2] == ("fault", FaultKind.DENIED) and calls[0][0] == "denied", (outcomes, calls)
    elif plugin == "tagjson" and len(steps) == 2:
        assert json.loads(decisions[2].body) == {**json.loads(BODY), "tagged": True}
    elif config == "max=10":
        assert (decisions[2].kind, decisions[2].status) == (DecisionKind.RESPOND, 413)


async def test_the_phases_are_read_in_the_vm(js_http: dict[tuple[str, str], Any]) -> None:
    assert js_http["microvm", "jsonpatch"].phases == HttpPhase.REQUEST_BODY
    assert js_http["microvm", "tagjson"].phases == HttpPhase.REQUEST_BODY

