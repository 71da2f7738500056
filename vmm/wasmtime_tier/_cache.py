"""Compile once per (plugin bytes, wasmtime version, engine config), on disk.

Trust: a serialized artefact is native code that wasmtime maps and runs
without re-validating it, so the cache directory must be as trusted as this
process (it is created 0700 and entries are written atomically 0600). The
plugin itself is untrusted; its bytes only pick the file name (a SHA-256).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import wasmtime
from wasmtime.component import Component

from vmm.cachefiles import private_dir, publish, trusted
from vmm.wasmtime_tier._engine import CONFIG_TAG

__all__ = ["cache_dir", "compile_component", "compile_module"]

T = TypeVar("T", wasmtime.Module, Component)
LOG = logging.getLogger("lightcell.wasmtime")


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """$LIGHTCELL_CACHE, else ~/.cache/lightcell; `override` wins."""
    if override is not None:
        return Path(override)
    env = os.environ.get("LIGHTCELL_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "lightcell"


def _key(kind: str, wasm: bytes) -> str:
    h = hashlib.sha256()
    h.update(f"{CONFIG_TAG}\0{kind}\0".encode())
    h.update(wasm)
    return h.hexdigest()


def _cached(
    kind: str,
    wasm: bytes,
    directory: Path,
    compile_: Callable[[], T],
    deserialize: Callable[[str], T],
) -> T:
    path = directory / f"{_key(kind, wasm)}.{kind}.cwasm"
    if not private_dir(directory):
        LOG.warning("compile cache %s is not private to this user: not used", directory)
        return compile_()
    if trusted(path):
        try:
            return deserialize(str(path))
        except wasmtime.WasmtimeError:
            path.unlink(missing_ok=True)  # stale or truncated: recompile
    elif path.exists() or path.is_symlink():
        LOG.warning("compile cache entry %s is not private to this user: replaced", path)
    compiled = compile_()
    publish(compiled.serialize(), path)
    return compiled


def compile_module(engine: wasmtime.Engine, wasm: bytes, directory: Path) -> wasmtime.Module:
    return _cached(
        "module",
        wasm,
        directory,
        lambda: wasmtime.Module(engine, wasm),
        lambda p: wasmtime.Module.deserialize_file(engine, p),
    )


def compile_component(engine: wasmtime.Engine, wasm: bytes, directory: Path) -> Component:
    return _cached(
        "component",
        wasm,
        directory,
        lambda: Component(engine, wasm),
        lambda p: Component.deserialize_file(engine, p),
    )
