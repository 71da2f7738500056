"""Shared helpers for the ahead-of-time (wasm2c) tests: build real plugins,
compile them for the host-native harness, give them host capabilities."""

from __future__ import annotations

from pathlib import Path

import wasmtime
from _host_fakes import Sent

from plugins import build as plugin_build
from vmm.capabilities import HostCapabilities
from vmm.kvstore import KvStore
from vmm.microvm.compile import CompiledPlugin, compile_plugin
from vmm.policy import EgressTarget, Grants, Limits

WAT_DIR = Path(__file__).resolve().parent / "wat"

ALL_GRANTS = frozenset({"log", "clock", "random", "kv", "metadata", "egress"})


def host(grants: frozenset[str] = ALL_GRANTS, egress: frozenset[EgressTarget] = frozenset(),
         kv: KvStore | None = None, sent: Sent | None = None) -> HostCapabilities:
    limits = Limits()
    return HostCapabilities(
        "test-listener", "plugin", Grants(grants, egress), limits,
        kv or KvStore(limits.kv_max_keys, limits.kv_max_value_bytes), sent or Sent(),
    )


class Compiler:
    """Compiles plugins (by example name, WAT fixture or WAT text) once per session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._done: dict[tuple[str, str], CompiledPlugin] = {}

    def wasm_of_wat(self, name: str, text: str | None = None) -> Path:
        path = self.root / f"{name}.wasm"
        if not path.exists():
            src = text if text is not None else (WAT_DIR / f"{name}.wat").read_text()
            path.write_bytes(wasmtime.wat2wasm(src))
        return path

    def example(self, name: str, *, core: bool = False) -> Path:
        return plugin_build.build_core(name) if core else plugin_build.build(name)

    def native(self, wasm: Path) -> CompiledPlugin:
        key = (str(wasm), "native")
        if key not in self._done:
            self._done[key] = compile_plugin(wasm, target="native", root=self.root / "cache")
        return self._done[key]
