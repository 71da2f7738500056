"""The wasmtime tier: each connection's plugin in a fresh wasmtime Store.

    factory = await vmm.wasmtime_tier.load(spec)        # SandboxFactory
    sandbox = await factory.new_sandbox(host)           # Sandbox
    await sandbox.open(listener, config); await sandbox.on_data(event); await sandbox.close()
    await factory.aclose()

A plugin that is a core module, or a component wrapping one core module (C
plugins), runs on the fast core path (_core.py); any other component
(componentize-py) runs through the component API (_component.py).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from vmm.policy import SandboxSpec
from vmm.wasmtime_tier._cache import cache_dir
from vmm.wasmtime_tier._factory import WasmtimeFactory, load_sync

__all__ = ["WasmtimeFactory", "cache_dir", "load", "load_sync"]


async def load(spec: SandboxSpec, cache: str | os.PathLike[str] | None = None) -> WasmtimeFactory:
    """Load, check and compile (or fetch from the cache) the plugin of `spec`.

    Raises vmm.sandbox.PluginLoadError for a missing, malformed or
    contract-breaking plugin. Compiling runs on a worker thread.
    """
    return await asyncio.to_thread(load_sync, spec, Path(cache) if cache is not None else None)
