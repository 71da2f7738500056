"""The README's three complete HTTP plugins (C, Python, JavaScript) are real: each README block is
the example file verbatim, built from source here, and does what the README says in the tier that
`tier: auto` gives it (and the C one in both tiers)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _host_fakes import Sent

import vmm.microvm.tier as microvm
import vmm.wasmtime_tier as wt
from plugins import build as plugin_build
from vmm.capabilities import HostCapabilities
from vmm.contract import DecisionKind
from vmm.http_abi import Header, HttpDecision
from vmm.kvstore import KvStore
from vmm.policy import Limits, SandboxSpec, Tier
from vmm.runner import HttpRunner

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
EXAMPLES = ROOT / "plugins" / "examples"
FILES = {
    "addheader": EXAMPLES / "addheader" / "addheader.c",
    "blockpath": EXAMPLES / "blockpath" / "app.py",
    "tagjson": EXAMPLES / "tagjson" / "tag.js",
}
GET = [Header(":method", b"GET"), Header(":path", b"/shop"), Header("x-debug", b"1")]


def _fenced_blocks(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^```[a-z]*\n(.*?)^```$", text, re.M | re.S)]


@pytest.mark.parametrize("name", sorted(FILES))
def test_the_readme_shows_each_example_verbatim(name: str) -> None:
    source = FILES[name]
    assert source.read_text() in _fenced_blocks(README), f"README's {name} block differs from {source}"


async def _runner(name: str, tier: Tier, config: str, tmp: Path) -> AsyncIterator[HttpRunner]:
    spec = SandboxSpec("readme", str(plugin_build.build(name)), limits=Limits(memory_bytes=64 << 20))
    factory = await (microvm.load_http(spec) if tier is Tier.MICROVM else wt.load_http(spec, tmp))
    try:
        host = HostCapabilities("readme", name, spec.grants, spec.limits, KvStore(10, 100), Sent())
        runner = await factory.new_sandbox(host)
        await runner.open("readme", config)
        yield runner
        await runner.close()
    finally:
        await factory.aclose()


def _set(d: HttpDecision) -> dict[str, bytes]:
    return {h.name: h.value for h in d.headers.set}


@pytest.mark.kvm
@pytest.mark.parametrize("tier", [Tier.MICROVM, Tier.WASMTIME], ids=["microvm", "wasmtime"])
async def test_addheader_in_c(tier: Tier, tmp_path: Path) -> None:
    async for r in _runner("addheader", tier, "x-team=payments", tmp_path):
        d = await r.request_headers(GET, [], True)
        assert d.kind is DecisionKind.MODIFY and _set(d) == {"x-team": b"payments"}


async def test_blockpath_in_python(tmp_path: Path) -> None:
    async for r in _runner("blockpath", Tier.WASMTIME, "", tmp_path):
        d = await r.request_headers(GET, [("request.path", "/shop")], True)
        assert d.kind is DecisionKind.MODIFY and _set(d) == {"x-checked-by": b"blockpath"}
        assert d.headers.remove == ("x-debug",)
    async for r in _runner("blockpath", Tier.WASMTIME, "", tmp_path):
        d = await r.request_headers(GET, [("request.path", "/admin/users")], True)
        assert (d.kind, d.status, d.body) == (DecisionKind.RESPOND, 403, b"/admin/users is blocked\n")


async def test_tagjson_in_javascript(tmp_path: Path) -> None:
    async for r in _runner("tagjson", Tier.WASMTIME, "", tmp_path):
        first = await r.request_body(b'{"order": ', False)
        assert first.body == b""  # held back until the last piece
        d = await r.request_body(b"42}", True)
        assert json.loads(d.body or b"") == {"order": 42, "tagged": True}
    async for r in _runner("tagjson", Tier.WASMTIME, "", tmp_path):
        d = await r.request_body(b"[1, 2]", True)
        assert (d.kind, d.status) == (DecisionKind.RESPOND, 400)
