"""Property-based fuzzing of the parsers that read what others wrote: the Envoy config parser
(extproc/config.py), the wasm module reader (vmm/wasm_module.py) and the HTTP decision lifter
(vmm/http_abi.lift_decision).

- Config: the repository's envoy-config/*.yaml, parsed, then mutated (values replaced by other
  types, keys dropped, junk keys added) and written back as YAML, plus raw YAML-ish text. The
  only error is ConfigError, whose message starts with the file's path, and names the listener
  when the mistake is inside one; never another exception.
- Wasm: real plugin binaries (built from source, the small ones: C plugins, core modules and
  their components) with bytes flipped, inserted, deleted, truncated, or LEB128 fields blown up.
  Only WasmFormatError or ContractError; never IndexError, struct.error, RecursionError...
- lift_decision: random linear memories with a decision area pointing anywhere (in and out of
  range, misaligned, huge counts). Only PluginFault(ABI); what it returns stays inside the limits.
"""

from __future__ import annotations

import contextlib
import copy
import struct
from pathlib import Path
from typing import Any

import _fuzz_settings
import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from extproc.config import ConfigError, load_config
from vmm import wasm_module as wm
from vmm.contract import (
    DECISION_AREA_SIZE,
    DECISION_MODIFY_BODY,
    DECISION_MODIFY_BODY_TAG,
    DECISION_MODIFY_SET,
    DECISION_RESPOND_BODY,
    DECISION_RESPOND_HEADERS,
    DECISION_RESPOND_STATUS,
    IMMEDIATE_STATUS_MAX,
    IMMEDIATE_STATUS_MIN,
    MAX_OUTPUT_BYTES,
)
from vmm.http_abi import MAX_DECISION_HEADER_BYTES, MAX_DECISION_HEADERS, lift_decision
from vmm.sandbox import FaultKind, PluginFault

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "envoy-config").glob("*.yaml"))
DOCS = [yaml.safe_load(p.read_text()) for p in CONFIGS]
SMALL_PLUGIN_BYTES = 64 * 1024  # the componentize-py/JS plugins (MBs) would make each example slow


# --- the Envoy config ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conf/ for the mutated file; plugins/examples/build/*.wasm where its relative paths lead
    (empty files: the parser checks that a plugin exists, loading it is not its job)."""
    root = tmp_path_factory.mktemp("fuzz-config")
    (root / "conf").mkdir()
    build = root / "plugins" / "examples" / "build"
    build.mkdir(parents=True)
    for text in (p.read_text() for p in CONFIGS):
        for line in text.splitlines():
            if "plugin: ../plugins/examples/build/" in line:
                (build / line.split("/")[-1].strip()).touch()
    return root / "conf"


junk = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12),
              st.sampled_from(["", "0", "-1", "tcp", "http", "microvm", "wasmtime", "log", "127.0.0.1:1",
                               "../plugins/examples/build/rewrite.wasm", "type.googleapis.com/x.Y"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)  # fmt: skip


def _slots(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every (container path, key) in a parsed YAML document."""
    found: list[tuple[Any, ...]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in items:
        found.append((*path, key))
        found.extend(_slots(child, (*path, key)))
    return found


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


@st.composite
def mutated_config(draw: st.DrawFn) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from(DOCS)))
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(doc)
        if not slots:
            break
        # Policies and filters first: that is where the parser does its own checking.
        interesting = [s for s in slots if "lightcell" in s or "typed_config" in s or "filter_chains" in s]
        *parent, key = draw(st.sampled_from(interesting or slots))
        container = _at(doc, tuple(parent))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "delete":
            del container[key]
        elif action == "add" and isinstance(container, dict):
            container[draw(st.text(min_size=1, max_size=10))] = draw(junk)
        else:
            container[key] = draw(junk)
    return doc


BAD_POLICY = {"static_resources": {"listeners": [
    {"name": "x", "metadata": {"filter_metadata": {"lightcell": 1}}}]}}


def _with_policy(**changes: Any) -> Any:
    """compose.yaml with its first listener's lightcell policy changed."""
    doc = copy.deepcopy(DOCS[CONFIGS.index(ROOT / "envoy-config" / "compose.yaml")])
    doc["static_resources"]["listeners"][0]["metadata"]["filter_metadata"]["lightcell"].update(changes)
    return doc


def _check_config(path: Path, text: str) -> None:
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as e:
        assert str(e).startswith(f"{path}: "), f"the message does not name the file: {e}"
        assert "Traceback" not in str(e)


@example(BAD_POLICY)
@example(_with_policy(grants=[["log"]]))  # found by this test: a TypeError (unhashable), not a ConfigError
@example({"static_resources": {"listeners": "not a list"}})
@given(mutated_config())
@_fuzz_settings.examples(25)
def test_config_mutations(confdir: Path, doc: Any) -> None:
    _check_config(confdir / "envoy.yaml", yaml.safe_dump(doc))


@example("static_resources: {listeners: [{name: a, metadata: {filter_metadata: {lightcell: {plugin: [}}}]}")
@example("{a: *b}")
@example("!!python/object:os.system {}")
@given(st.text(alphabet=st.sampled_from("{}[]:,-'\"!&*#|> \n\tabcxyz01.%@"), max_size=80))
@_fuzz_settings.examples(60)
def test_config_text(confdir: Path, text: str) -> None:
    _check_config(confdir / "text.yaml", text)


def test_a_policy_mistake_names_file_listener_and_field(confdir: Path) -> None:
    doc = copy.deepcopy(DOCS[CONFIGS.index(ROOT / "envoy-config" / "compose.yaml")])
    doc["static_resources"]["listeners"][0]["metadata"]["filter_metadata"]["lightcell"]["limits"] = [1]
    path = confdir / "named.yaml"
    with pytest.raises(ConfigError) as info:
        _check_config(path, yaml.safe_dump(doc))
        load_config(path)
    where = "listener 'rewrite': metadata.filter_metadata.lightcell.limits:"
    assert str(info.value).startswith(f"{path}: {where}")


# --- the wasm module reader ------------------------------------------------------------------


@pytest.fixture(scope="module")
def named_binaries(built_plugins: dict[str, Path]) -> dict[str, bytes]:
    pairs = [(wasm, wasm.parent / f"{wasm.stem}.core.wasm") for wasm in built_plugins.values()]
    files = sorted({f for pair in pairs for f in pair})
    found = {f.name: f.read_bytes() for f in files if f.is_file() and f.stat().st_size <= SMALL_PLUGIN_BYTES}
    kinds = {wm.classify(b) for b in found.values()}
    assert kinds == {wm.BinaryKind.CORE, wm.BinaryKind.COMPONENT} and len(found) >= 8, kinds
    return found


@pytest.fixture(scope="module")
def binaries(named_binaries: dict[str, bytes]) -> list[bytes]:
    return list(named_binaries.values())


mutations = st.lists(st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete", "truncate", "leb"]),
    st.integers(0, 2**20), st.binary(min_size=1, max_size=6),
), min_size=1, max_size=4)  # fmt: skip


def _mutate(data: bytes, steps: list[tuple[str, int, bytes]]) -> bytes:
    buf = bytearray(data)
    for op, where, blob in steps:
        if not buf:
            break
        # Most of a binary is code; the reader's work is in the first bytes and the section heads.
        at = where % min(len(buf), 512) if where & 1 else where % len(buf)
        if op == "flip":
            buf[at] ^= 1 << (blob[0] % 8)
        elif op == "set":
            buf[at : at + len(blob)] = blob
        elif op == "insert":
            buf[at:at] = blob
        elif op == "delete":
            del buf[at : at + blob[0] % 32 + 1]
        elif op == "truncate":
            del buf[at:]
        else:  # a LEB128 length or count that claims far too much
            buf[at : at + 1] = b"\xff\xff\xff\xff\x0f"
    return bytes(buf)


def _read_all(data: bytes) -> None:
    """Everything the loader does with a plugin binary before any engine sees it."""
    kind = wm.classify(data)
    wm.largest_code_section(data)
    for wasip2 in (False, True):
        core = wm.unwrap_core(data, wasip2=wasip2)
    if kind is wm.BinaryKind.COMPONENT and core is not None:  # else core_modules may refuse it
        for module in wm.core_modules(data):
            wm.parse_core(module)
    if core is not None:
        info = wm.parse_core(core)
        assert all(isinstance(i.name, str) for i in info.imports)
        wm.constant_i32_export(core, "wanted-phases")
        wm.check_world_contract(core)


@given(st.data(), mutations)
@_fuzz_settings.examples(120)
def test_wasm_reader_mutations(binaries: list[bytes], data: st.DataObject, steps: list[Any]) -> None:
    seed = binaries[data.draw(st.integers(0, len(binaries) - 1))]
    mutant = _mutate(seed, steps)
    with contextlib.suppress(wm.WasmFormatError, wm.ContractError):
        _read_all(mutant)


def test_unmutated_plugins_read_cleanly(named_binaries: dict[str, bytes]) -> None:
    """The seeds themselves pass (the wasi:cli commands are no filters: their contract check
    refuses them), so the mutations are what the errors come from."""
    refused = set()
    for name, seed in named_binaries.items():
        try:
            _read_all(seed)
        except wm.ContractError:
            refused.add(name.split(".")[0])
    assert refused <= {"udp-echo"}, refused


@example(b"\0asm\x01\0\0\0\x01\xff\xff\xff\xff\x0f")
@example(b"\0asm\x0d\0\x01\0\x01\x05\0asm")
@example(b"\0asm")
@given(st.binary(max_size=64).map(lambda b: b"\0asm" + b))
@_fuzz_settings.examples(100)
def test_wasm_reader_raw_bytes(data: bytes) -> None:
    with contextlib.suppress(wm.WasmFormatError, wm.ContractError):
        _read_all(data)


# --- lift_decision ---------------------------------------------------------------------------

_U32 = 1 << 32


@st.composite
def decision_memory(draw: st.DrawFn) -> tuple[bytearray, int]:
    size = draw(st.sampled_from([0, 40, 64, 256, 1024]))
    memory = bytearray(draw(st.binary(min_size=size, max_size=size)))
    retptr = draw(st.one_of(st.sampled_from([0, 4, 2, size - 40, size - 39, size, _U32 - 4]),
                            st.integers(0, size + 8)))
    if 0 <= retptr <= size - DECISION_AREA_SIZE:
        near = st.one_of(st.integers(0, size + 16), st.sampled_from([_U32 - 1, _U32 - 16, 2**31]))
        counts = st.one_of(st.integers(0, 8), st.sampled_from([MAX_DECISION_HEADERS, MAX_DECISION_HEADERS + 1,
                                                               _U32 - 1, 2**28]))
        memory[retptr] = draw(st.sampled_from([0, 1, 2, 1, 2, 3, 255]))
        struct.pack_into("<H", memory, retptr + DECISION_RESPOND_STATUS,
                         draw(st.sampled_from([199, 200, 404, 599, 600, 0, 65535])))
        for off in (DECISION_MODIFY_SET, DECISION_MODIFY_SET + 8, DECISION_MODIFY_SET + 16,
                    DECISION_MODIFY_BODY, DECISION_RESPOND_HEADERS, DECISION_RESPOND_BODY):
            if draw(st.booleans()):
                struct.pack_into("<II", memory, retptr + off, draw(near), draw(counts))
        memory[retptr + DECISION_MODIFY_BODY_TAG] = draw(st.sampled_from([0, 1, 2]))
        for at in range(0, size - 16, 16):  # header records pointing back into memory
            if draw(st.integers(0, 3)) == 0:
                struct.pack_into("<IIII", memory, at, draw(near), draw(st.integers(0, 40)), draw(near),
                                 draw(st.integers(0, 40)))
    return memory, retptr


@example((bytearray(64), 0))
@example((bytearray(b"\x01" + bytes(39)), 0))
@example((bytearray(b"\x02\0\xc8\0" + bytes(36)), 0))  # 200, no headers, empty body
@given(decision_memory())
@_fuzz_settings.examples(150)
def test_lift_decision(memory_and_ptr: tuple[bytearray, int]) -> None:
    memory, retptr = memory_and_ptr
    try:
        decision = lift_decision(memory, retptr)
    except PluginFault as fault:
        assert fault.kind is FaultKind.ABI, fault
        return
    headers = [*decision.headers.set, *decision.headers.append, *decision.response_headers]
    assert len(headers) <= 3 * MAX_DECISION_HEADERS
    total = sum(len(h.name.encode()) + len(h.value) for h in headers)
    assert total + sum(len(r.encode()) for r in decision.headers.remove) <= MAX_DECISION_HEADER_BYTES
    assert decision.body is None or len(decision.body) <= min(len(memory), MAX_OUTPUT_BYTES)
    if decision.status is not None and decision.kind.name == "RESPOND":
        assert IMMEDIATE_STATUS_MIN <= decision.status <= IMMEDIATE_STATUS_MAX
