"""The http-filter world (issue 8, first piece): the WIT parses and leaves
tcp-filter untouched, the redact example builds from source and passes the
http contract check, malformed modules are refused with a clear message, and
plugins run at the canonical-ABI level decode exactly as plugins/wit/README.md
lays the decision out (checked against wasmtime's own component lifting).
"""

from __future__ import annotations

import shlex
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from wasmtime import component as cm

from plugins import build as plugin_build
from vmm.contract import (
    DECISION_AREA_SIZE,
    HTTP_HOOKS,
    HTTP_WORLD,
    IMPORT_MODULE,
    MAX_OUTPUT_BYTES,
    TCP_WORLD,
    DecisionKind,
    HttpPhase,
)
from vmm.http_abi import Header, HttpDecision, lift_decision, lower_attributes, lower_headers
from vmm.sandbox import FaultKind, PluginFault
from vmm.wasm_module import (
    CONTRACT_IMPORTS,
    HTTP_OPTIONAL_EXPORTS,
    HTTP_REQUIRED_EXPORTS,
    OPTIONAL_EXPORTS,
    REQUIRED_EXPORTS,
    ContractError,
    CoreContract,
    CoreHttpContract,
    FuncSig,
    check_contract,
    check_http_contract,
    check_world_contract,
    constant_i32_export,
    parse_core,
    unwrap_core,
)

ROOT = Path(__file__).resolve().parents[1]
TCP_C_PLUGINS = ("rewrite", "probe", "faulty", "wasi-log")


def _wasm_tools(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*plugin_build._wasm_tools(), *args], capture_output=True, text=True, check=False, cwd=cwd
    )


def _dummy(world: str, tmp: Path) -> bytes:
    """The world's core view as wit-component derives it (legacy names)."""
    out = tmp / f"{world}.wasm"
    proc = _wasm_tools(
        "component",
        "embed",
        "--dummy-names",
        "legacy",
        str(plugin_build.WIT_DIR),
        "--world",
        world,
        "-o",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    return out.read_bytes()


@pytest.fixture(scope="module")
def redact() -> Path:
    return plugin_build.build("redact")


# --- the WIT ------------------------------------------------------------------------


def test_the_wit_parses_with_both_worlds() -> None:
    proc = _wasm_tools("component", "wit", str(plugin_build.WIT_DIR))
    assert proc.returncode == 0, proc.stderr
    assert "world tcp-filter {" in proc.stdout and "world http-filter {" in proc.stdout
    for line in (
        "export wanted-phases: func() -> phases;",
        "export on-request-headers: func(headers: list<header>, attributes: list<attribute>, "
        "end-of-stream: bool) -> decision;",
        "export on-response-body: func(body: list<u8>, end-of-stream: bool) -> decision;",
        "export on-request-trailers: func(trailers: list<header>) -> decision;",
    ):
        assert line in proc.stdout


def test_tcp_filter_core_view_is_unchanged(tmp_path: Path) -> None:
    """wit-component's tcp-filter view is exactly the tcp tables, and its embedded
    component type knows nothing of the http types (tcp components are unchanged)."""
    dummy = _dummy(TCP_WORLD, tmp_path)
    info = parse_core(dummy)
    funcs = {e.name: e.sig for e in info.exports if e.kind == "func"}
    assert funcs == {**REQUIRED_EXPORTS, **OPTIONAL_EXPORTS}
    assert {(i.module, i.name): i.sig for i in info.imports} == CONTRACT_IMPORTS
    assert b"http-types" not in dummy and b"decision" not in dummy
    assert isinstance(check_world_contract(dummy), CoreContract)


def test_http_filter_core_view_matches_the_tables(tmp_path: Path) -> None:
    """The README's (and vmm.wasm_module's) signatures are wit-component's own."""
    dummy = _dummy(HTTP_WORLD, tmp_path)
    info = parse_core(dummy)
    funcs = {e.name: e.sig for e in info.exports if e.kind == "func"}
    assert funcs == {**HTTP_REQUIRED_EXPORTS, **HTTP_OPTIONAL_EXPORTS}
    tcp_only = {(IMPORT_MODULE["connection"], "attributes")}  # the tcp-filter world's own import
    shared = {k: v for k, v in CONTRACT_IMPORTS.items() if k not in tcp_only}
    assert {(i.module, i.name): i.sig for i in info.imports} == shared  # same capabilities
    contract = check_http_contract(dummy)
    assert contract.capabilities == frozenset(IMPORT_MODULE) - {"connection"}
    assert contract.phases is None  # its wanted-phases is `unreachable`: the host would call it
    assert contract.post_returns >= set(HTTP_HOOKS.values())
    assert check_world_contract(dummy) == contract


# --- the redact example -----------------------------------------------------------------


def test_redact_builds_and_passes_the_http_check(redact: Path) -> None:
    assert _wasm_tools("validate", str(redact)).returncode == 0
    proc = _wasm_tools("component", "wit", str(redact))
    assert proc.returncode == 0, proc.stderr
    assert "export on-request-body: func(body: list<u8>, end-of-stream: bool) -> decision;" in proc.stdout
    core = plugin_build.build_core("redact").read_bytes()
    main = unwrap_core(redact.read_bytes())
    assert main is not None and parse_core(main).exports == parse_core(core).exports
    contract = check_http_contract(core)
    assert contract.world == HTTP_WORLD
    assert contract.phases == HttpPhase.REQUEST_BODY | HttpPhase.RESPONSE_BODY  # read, not run
    assert contract.capabilities == frozenset()
    assert check_world_contract(core) == contract
    with pytest.raises(ContractError, match="implements the http-filter world, not tcp-filter"):
        check_contract(core)


@pytest.mark.parametrize("name", TCP_C_PLUGINS)
def test_tcp_examples_still_pass_the_tcp_check(name: str) -> None:
    core = plugin_build.build_core(name).read_bytes()
    contract = check_world_contract(core)
    assert isinstance(contract, CoreContract) and contract.world == TCP_WORLD
    assert contract == check_contract(core)
    with pytest.raises(ContractError, match="implements the tcp-filter world, not http-filter"):
        check_http_contract(core)


# --- malformed modules ------------------------------------------------------------------------


def _module(exports: dict[str, FuncSig], bodies: dict[str, str] | None = None) -> bytes:
    """A core module exporting `exports` (bodies `unreachable` unless given) and a memory."""
    lines = ['(module (memory (export "memory") 1)']
    for i, (name, sig) in enumerate(exports.items()):
        params = f" (param {' '.join(sig.params)})" if sig.params else ""
        results = f" (result {' '.join(sig.results)})" if sig.results else ""
        body = (bodies or {}).get(name, "unreachable")
        lines.append(f'  (func $f{i} (export "{name}"){params}{results} {body})')
    lines.append(")")
    return wasmtime.wat2wasm("\n".join(lines))


def test_a_minimal_http_module_passes() -> None:
    contract = check_http_contract(_module(HTTP_REQUIRED_EXPORTS, {"wanted-phases": "i32.const 9"}))
    assert contract.phases == HttpPhase.REQUEST_HEADERS | HttpPhase.RESPONSE_HEADERS
    assert contract.capabilities == frozenset() and contract.post_returns == frozenset()


def test_wrong_signature_is_refused() -> None:
    exports = dict(HTTP_REQUIRED_EXPORTS)
    exports["on-request-body"] = FuncSig(("i32", "i32"), ("i32",))  # end-of-stream missing
    with pytest.raises(ContractError) as e:
        check_http_contract(_module(exports))
    assert str(e.value) == (
        "export 'on-request-body': signature (i32 i32) -> (i32), contract says (i32 i32 i32) -> (i32)"
    )


def test_missing_export_is_refused() -> None:
    exports = {k: v for k, v in HTTP_REQUIRED_EXPORTS.items() if k != "on-response-trailers"}
    with pytest.raises(
        ContractError, match=r"^missing export 'on-response-trailers' \(function \(i32 i32\) -> \(i32\)\)$"
    ):
        check_world_contract(_module(exports))


def test_wrong_post_return_is_refused() -> None:
    exports = {**HTTP_REQUIRED_EXPORTS, "cabi_post_on-request-headers": FuncSig((), ())}
    with pytest.raises(ContractError, match="export 'cabi_post_on-request-headers': signature"):
        check_http_contract(_module(exports))


def test_a_module_of_both_worlds_is_refused() -> None:
    both = _module({**HTTP_REQUIRED_EXPORTS, **REQUIRED_EXPORTS})
    message = "exports hooks of both worlds (tcp-filter: 'on-data'; http-filter: 'wanted-phases', "
    for check in (check_world_contract, check_http_contract, check_contract):
        with pytest.raises(ContractError) as e:
            check(both)
        assert message in str(e.value) and "a plugin implements exactly one world" in str(e.value)


def test_phases_outside_the_flags_are_refused() -> None:
    core = _module(HTTP_REQUIRED_EXPORTS, {"wanted-phases": "i32.const 64"})
    with pytest.raises(ContractError, match="returns 0x40, which has bits outside the phases flags"):
        check_http_contract(core)


@pytest.mark.parametrize(
    ("body", "expected"),
    [("i32.const 0", 0), ("i32.const 63", 63), ("i32.const -1", -1),
     ("i32.const 1 i32.const 2 i32.add", None), ("(local i32) i32.const 1", None), ("unreachable", None)],
)  # fmt: skip
def test_constant_phases_are_read_only_from_a_constant_body(body: str, expected: int | None) -> None:
    core = _module({"wanted-phases": FuncSig((), ("i32",))}, {"wanted-phases": body})
    assert constant_i32_export(core, "wanted-phases") == expected


# --- running the core modules at the canonical-ABI level ------------------------------------------


class HttpCore:
    """An http-filter plugin's core module driven as the README documents (no imports needed)."""

    def __init__(self, core: bytes) -> None:
        self.store = wasmtime.Store(wasmtime.Engine())
        module = wasmtime.Module(self.store.engine, core)
        self.instance = wasmtime.Linker(self.store.engine).instantiate(self.store, module)
        self.ex = self.instance.exports(self.store)
        self.memory: wasmtime.Memory = self.ex["memory"]  # type: ignore[assignment]

    def call(self, name: str, *args: int) -> Any:
        return self.ex[name](self.store, *args)  # type: ignore[operator]

    def realloc(self, align: int, size: int) -> int:
        ptr: int = self.call("cabi_realloc", 0, 0, align, size)
        assert ptr % align == 0
        return ptr

    def write(self, ptr: int, data: bytes) -> None:
        self.memory.write(self.store, data, ptr)

    def put(self, data: bytes) -> tuple[int, int]:
        if not data:
            return 0, 0
        ptr = self.realloc(1, len(data))
        self.write(ptr, data)
        return ptr, len(data)

    def open(self, config: str) -> None:
        self.call("on-open", *self.put(b"listener"), *self.put(config.encode()))

    def decide(self, hook: str, *args: int) -> HttpDecision:
        retptr = self.call(hook, *args)
        decision = lift_decision(self.memory.read(self.store, 0, self.memory.data_len(self.store)), retptr)
        self.call(f"cabi_post_{hook}", retptr)
        return decision

    def body(self, hook: str, chunk: bytes, eos: bool = False) -> HttpDecision:
        return self.decide(hook, *self.put(chunk), int(eos))

    def headers(
        self, hook: str, headers: list[Header], attributes: list[tuple[str, str]], eos: bool
    ) -> HttpDecision:
        hs = lower_headers(headers, self.realloc, self.write)
        attrs = lower_attributes(attributes, self.realloc, self.write)
        return self.decide(hook, *hs, *attrs, int(eos))


def _forwarded(d: HttpDecision, chunk: bytes) -> bytes:
    if d.kind is DecisionKind.CONTINUE:
        return chunk
    assert d.kind is DecisionKind.MODIFY and d.body is not None
    return d.body


def test_redact_masks_bodies_across_chunk_boundaries(redact: Path) -> None:
    p = HttpCore(plugin_build.build_core("redact").read_bytes())
    assert p.call("wanted-phases") == HttpPhase.REQUEST_BODY | HttpPhase.RESPONSE_BODY
    p.open("pattern=secret")
    chunks = [b"no match here", b"a secret, a sec", b"ret and se", b"cre", b"t!", b" sec"]
    out = b""
    for i, chunk in enumerate(chunks):
        d = p.body("on-request-body", chunk, eos=i == len(chunks) - 1)
        assert not d.headers
        out += _forwarded(d, chunk)
    assert out == b"no match herea ******, a ****** and ******! sec"
    assert p.body("on-request-body", b"no match", eos=True) == HttpDecision(DecisionKind.CONTINUE)
    # The response: masked in place, and the count (3 + 1) as a response header at its end.
    d = p.body("on-response-body", b"secret", eos=False)
    assert d == HttpDecision(DecisionKind.MODIFY, body=b"******")
    d = p.body("on-response-body", b"", eos=True)
    assert d.kind is DecisionKind.MODIFY and d.body is None
    assert d.headers.set == (Header("x-lightcell-redacted", b"4"),)
    assert d.headers.append == () and d.headers.remove == ()
    p.call("on-close")


def test_redact_refuses_a_missing_pattern() -> None:
    p = HttpCore(plugin_build.build_core("redact").read_bytes())
    with pytest.raises(wasmtime.Trap):
        p.open("")


def test_redact_memory_stays_flat_over_a_long_body() -> None:
    p = HttpCore(plugin_build.build_core("redact").read_bytes())
    p.open("pattern=secret")
    chunk = b"x" * 4000 + b"sec"  # every chunk carries a held tail: a temporary buffer per chunk
    for _ in range(300):
        p.body("on-request-body", chunk)
    assert p.memory.size(p.store) <= 3


def _http_headers_c() -> str:
    return r"""
#define LC_HTTP_PHASES (LC_PHASE_REQUEST_HEADERS | LC_PHASE_REQUEST_TRAILERS)
#include "lightcell_http.h"

void lc_on_open(lc_bytes listener, lc_bytes config) { (void)listener; (void)config; }
void lc_on_close(void) {}

lc_decision lc_on_request_headers(lc_headers headers, lc_attributes attributes, bool eos) {
    lc_bytes v;
    if (lc_header_get(headers, "X-Block", &v)) {
        lc_respond_header("x-why", v);
        lc_respond_header("content-type", lc_cstr("text/plain"));
        return lc_respond_cstr(403, eos ? "blocked, no body\n" : "blocked\n");
    }
    if (lc_header_get(attributes, "request.path", &v)) lc_set_header("x-path", v);
    lc_append_header("x-seen", lc_cstr("1"));
    lc_remove_header("x-secret");
    return lc_continue();
}

lc_decision lc_on_request_trailers(lc_headers trailers) {
    uint8_t *n = lc_temp_alloc(24);
    lc_set_header("x-trailers", (lc_bytes){n, lc_fmt_i64(n, (int64_t)trailers.len)});
    return lc_modify();
}
"""


def _sdk_build_lines() -> list[str]:
    header = (ROOT / "plugins" / "sdk" / "c" / "lightcell_http.h").read_text()
    block = header.split(" * Build", 1)[1].split(" *\n", 1)[0]
    lines = [line.removeprefix(" *").strip() for line in block.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("python -m "))
    out: list[str] = []
    for line in lines[start:]:
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1].rstrip() + " " + line
        else:
            out.append(line)
    return out


@pytest.fixture(scope="module")
def headers_plugin(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    """A headers plugin built with lightcell_http.h's build lines, run verbatim."""
    tmp = tmp_path_factory.mktemp("http-sdk")
    (tmp / "plugins").symlink_to(ROOT / "plugins")
    (tmp / "plugin.c").write_text(_http_headers_c())
    lines = _sdk_build_lines()
    assert len(lines) == 4 and "--world http-filter" in lines[2], lines
    for line in lines:
        argv = shlex.split(line)
        argv[0] = {"python": sys.executable, "wasm-tools": plugin_build._wasm_tools()[0]}[argv[0]]
        proc = subprocess.run(argv, cwd=tmp, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{line}\n{proc.stdout}{proc.stderr}"
    component = tmp / "plugin.wasm"
    core = unwrap_core(component.read_bytes())
    assert core is not None
    return core, component


def test_sdk_header_mutations_and_immediate_response(headers_plugin: tuple[bytes, Path]) -> None:
    core, _ = headers_plugin
    contract = check_world_contract(core)
    assert isinstance(contract, CoreHttpContract)
    assert contract.phases == HttpPhase.REQUEST_HEADERS | HttpPhase.REQUEST_TRAILERS
    p = HttpCore(core)
    p.open("")
    hs = [Header(":path", b"/a"), Header("x-secret", b"\xff\x00raw")]
    d = p.headers("on-request-headers", hs, [("request.path", "/a"), ("source.address", "10.0.0.1:5")], False)
    assert d.kind is DecisionKind.MODIFY and d.body is None
    assert d.headers.set == (Header("x-path", b"/a"),)
    assert d.headers.append == (Header("x-seen", b"1"),)
    assert d.headers.remove == ("x-secret",)
    d = p.headers("on-request-headers", [Header("x-block", b"because")], [], True)
    assert d == HttpDecision(
        DecisionKind.RESPOND,
        body=b"blocked, no body\n",
        status=403,
        response_headers=(Header("x-why", b"because"), Header("content-type", b"text/plain")),
    )
    d = p.decide(
        "on-request-trailers", *lower_headers([Header("a", b"1"), Header("b", b"")], p.realloc, p.write)
    )
    assert d.headers.set == (Header("x-trailers", b"2"),)
    # Unwanted phases answer continue without reaching the plugin.
    assert p.body("on-response-body", b"x", eos=True) == HttpDecision(DecisionKind.CONTINUE)
    assert (
        p.headers("on-response-headers", [Header(":status", b"200")], [], True).kind is DecisionKind.CONTINUE
    )
    for _ in range(200):  # inputs and temporaries are freed: memory stays flat
        p.headers("on-request-headers", hs * 8, [("request.path", "/" + "p" * 500)], False)
        p.decide("on-request-trailers", *lower_headers(hs, p.realloc, p.write))
    assert p.memory.size(p.store) <= 3
    p.call("on-close")


def _rec(**fields: Any) -> cm.Record:
    r = cm.Record()
    for k, v in fields.items():
        setattr(r, k, v)
    return r


def _pairs(records: list[Any]) -> list[tuple[str, bytes]]:
    return [(r.name, r.value) for r in records]


def test_wasmtime_component_lifting_agrees_with_the_readme(headers_plugin: tuple[bytes, Path]) -> None:
    """The same calls through wasmtime's component API: the canonical ABI as
    wasmtime implements it reads the SDK's return areas as lift_decision does."""
    _, component_path = headers_plugin
    engine = wasmtime.Engine()
    component = cm.Component.from_file(engine, str(component_path))
    store = wasmtime.Store(engine)
    instance = cm.Linker(engine).instantiate(store, component)

    def call(name: str, *args: Any) -> Any:
        f = instance.get_func(store, name)
        assert f is not None
        result = f(store, *args)
        f.post_return(store)
        return result

    assert call("wanted-phases") == {"request-headers", "request-trailers"}
    call("on-open", "l", "")
    hs = [_rec(name=":path", value=b"/a"), _rec(name="x-secret", value=b"raw")]
    v = call("on-request-headers", hs, [_rec(name="request.path", value="/a")], False)
    assert v.tag == "modify" and v.payload.body is None
    m = v.payload.headers
    assert (_pairs(m.set), _pairs(m.append), m.remove) == (
        [("x-path", b"/a")],
        [("x-seen", b"1")],
        ["x-secret"],
    )
    v = call("on-request-headers", [_rec(name="x-block", value=b"because")], [], True)
    assert v.tag == "respond" and v.payload.status == 403 and v.payload.body == b"blocked, no body\n"
    assert _pairs(v.payload.headers) == [("x-why", b"because"), ("content-type", b"text/plain")]
    v = call("on-response-body", b"x", True)
    assert v.tag == "continue"


def test_redact_through_the_component_api(redact: Path) -> None:
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    instance = cm.Linker(engine).instantiate(store, cm.Component.from_file(engine, str(redact)))

    def call(name: str, *args: Any) -> Any:
        f = instance.get_func(store, name)
        assert f is not None
        result = f(store, *args)
        f.post_return(store)
        return result

    call("on-open", "l", "pattern=ab")
    v = call("on-response-body", b"xxa", False)
    assert (v.tag, v.payload.body) == ("modify", b"xx")
    v = call("on-response-body", b"bab", True)
    assert (v.tag, v.payload.body) == ("modify", b"****")
    assert _pairs(v.payload.headers.set) == [("x-lightcell-redacted", b"2")]


# --- lift_decision's checks --------------------------------------------------------------------


def _area(tag: int, rest: bytes = b"") -> bytearray:
    mem = bytearray(256)
    mem[64] = tag
    mem[68 : 68 + len(rest)] = rest
    return mem


@pytest.mark.parametrize(
    ("mem", "retptr", "match"),
    [
        (_area(3), 64, "decision tag 3"),
        (_area(0), 66, "not aligned to 4"),
        (_area(0), 228, "decision return area .* outside"),
        (_area(2, struct.pack("<HxxIIII", 199, 0, 0, 0, 0)), 64, "status 199 is outside 200..599"),
        (_area(2, struct.pack("<HxxIIII", 600, 0, 0, 0, 0)), 64, "status 600"),
        (_area(1, struct.pack("<IIIIII", 2, 1, 0, 0, 0, 0)), 64, "set array at 0x2 is not aligned"),
        (_area(1, struct.pack("<IIIIII", 0, 1000, 0, 0, 0, 0)), 64, "set at 0x0.* outside"),
        (_area(1, struct.pack("<IIIIII", 0, 1 << 28, 0, 0, 0, 0)), 64, "set: 268435456 entries, more than"),
        (_area(1, struct.pack("<IIIIIIBxxxII", 0, 0, 0, 0, 0, 0, 2, 0, 0)), 64, "body option tag 2"),
        (_area(1, struct.pack("<IIIIIIBxxxII", 0, 0, 0, 0, 0, 0, 1, 0, MAX_OUTPUT_BYTES + 1)), 64,
         "over the maximum output"),
        (_area(1, struct.pack("<IIIIIIBxxxII", 0, 0, 0, 0, 0, 0, 1, 0xFFFFFFF0, 32)), 64,
         "body at .* outside"),
    ],
)  # fmt: skip
def test_lift_decision_refuses_contract_violations(mem: bytearray, retptr: int, match: str) -> None:
    with pytest.raises(PluginFault, match=match) as e:
        lift_decision(mem, retptr)
    assert e.value.kind is FaultKind.ABI


def test_lift_decision_reads_names_as_utf8() -> None:
    mem = _area(1, struct.pack("<IIIIII", 0, 0, 0, 0, 128, 1))
    mem[128:136] = struct.pack("<II", 160, 2)
    mem[160:162] = b"\xff\xfe"
    with pytest.raises(PluginFault, match=r"remove\[0\] is not UTF-8"):
        lift_decision(mem, 64)
    mem[160:162] = b"ok"
    assert lift_decision(mem, 64).headers.remove == ("ok",)
    assert DECISION_AREA_SIZE == 40


def test_lift_decision_bounds_the_copies_of_aliased_headers() -> None:
    """Every entry may point at the same region: the host copies at most a bounded
    number of header bytes per decision, whatever the count times the length."""
    from vmm.http_abi import MAX_DECISION_HEADER_BYTES, MAX_DECISION_HEADERS

    region = 128 * 1024
    count = 100  # 100 x 128 KiB = 12.5 MiB of copies from a 0.4 MiB memory
    mem = bytearray(4096 + HEADER_TABLE * count + region)
    table = 4096
    mem[64] = 1  # modify
    mem[68:76] = struct.pack("<II", table, count)  # set
    value_at = table + HEADER_TABLE * count
    mem[value_at : value_at + 1] = b"n"
    for i in range(count):
        mem[table + HEADER_TABLE * i : table + HEADER_TABLE * (i + 1)] = struct.pack(
            "<IIII", value_at, 1, value_at, region
        )
    with pytest.raises(PluginFault, match=f"exceed {MAX_DECISION_HEADER_BYTES} bytes") as e:
        lift_decision(mem, 64)
    assert e.value.kind is FaultKind.ABI
    mem[68:76] = struct.pack("<II", table, MAX_DECISION_HEADERS + 1)
    with pytest.raises(PluginFault, match="more than"):
        lift_decision(mem, 64)


HEADER_TABLE = 16  # bytes per list<header> element (README)
