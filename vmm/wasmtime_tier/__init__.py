"""The wasmtime tier: each connection's plugin in a fresh wasmtime Store.

    factory = await vmm.wasmtime_tier.load(spec)        # SandboxFactory
    sandbox = await factory.new_sandbox(host)           # Sandbox
    await sandbox.open(listener, config); await sandbox.on_data(event); await sandbox.close()
    await factory.aclose()

A plugin that is a core module, or a component wrapping one core module (C
plugins), runs on the fast core path (_core.py); any other component
(componentize-py) runs through the component API (_component.py).

http-filter plugins (one sandbox per HTTP request), on the core path
(_http_core.py) or, for any other component, the component path
(_http_component.py):

    factory = await vmm.wasmtime_tier.load_http(spec)   # HttpFactory
    sandbox = await factory.new_sandbox(host)           # vmm.runner.HttpRunner
    await sandbox.open(listener, config)
    decision = await sandbox.request_headers(headers, attributes, end_of_stream)  # HttpDecision
    ... request_body / request_trailers / response_* ...; await sandbox.close()
    factory.new_instance(host)                          # the synchronous HttpInstance
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from vmm.policy import SandboxSpec
from vmm.wasmtime_tier._cache import cache_dir
from vmm.wasmtime_tier._factory import HttpFactory, WasmtimeFactory, load_http_sync, load_sync

__all__ = ["HttpFactory", "WasmtimeFactory", "cache_dir", "load", "load_http", "load_http_sync", "load_sync"]


async def load(spec: SandboxSpec, cache: str | os.PathLike[str] | None = None) -> WasmtimeFactory:
    """Load, check and compile (or fetch from the cache) the plugin of `spec`.

    Raises vmm.sandbox.PluginLoadError for a missing, malformed or
    contract-breaking plugin. Compiling runs on a worker thread.
    """
    return await asyncio.to_thread(load_sync, spec, Path(cache) if cache is not None else None)


async def load_http(spec: SandboxSpec, cache: str | os.PathLike[str] | None = None) -> HttpFactory:
    """Load, check and compile an http-filter plugin (core module or component)
    and read its wanted phases. Raises PluginLoadError."""
    return await asyncio.to_thread(load_http_sync, spec, Path(cache) if cache is not None else None)
