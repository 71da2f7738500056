"""Loading a listener's plugin into the tier its policy asks for.

The only place the Envoy-facing side names a tier. Each tier module exposes
`async load(spec: SandboxSpec) -> SandboxFactory`; tiers are imported lazily so
a missing or broken tier only matters to listeners that ask for it.

Tier `auto` prefers the micro-VM tier (two walls: wasm sandbox + KVM) where
/dev/kvm works and the plugin is a core module, or a component wrapping one;
otherwise it falls back to wasmtime (one wall) with a start-up warning.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import cast

from extproc.config import POLICY_NAMESPACE, ConfigError, LightcellConfig
from extproc.listener import Listener, ListenerPolicy, TierChoice
from vmm.kvstore import KvStore
from vmm.policy import SandboxSpec, Tier
from vmm.sandbox import PluginLoadError, SandboxFactory

__all__ = [
    "TierChoice",
    "TierUnavailable",
    "choose_tier",
    "close_all",
    "load_all",
    "load_listener",
    "load_listeners",
]

LOG = logging.getLogger("lightcell.plugins")

Loader = Callable[[SandboxSpec], Awaitable[SandboxFactory]]

_TIER_MODULES = {
    Tier.WASMTIME: "vmm.wasmtime_tier",
    Tier.MICROVM: "vmm.microvm.tier",
}


class TierUnavailable(PluginLoadError):
    """The requested tier is not part of this build (or cannot load)."""


def choose_tier(spec: SandboxSpec, requested: Tier) -> TierChoice:
    """The concrete tier a policy's `tier` runs in, and why.

    Called once per listener, by load_listener; `check`, the start-up log and
    the demo all report that one choice (Listener.tier).
    """
    if requested is not Tier.AUTO:
        return TierChoice(requested, "asked for by the listener policy", requested)
    from vmm.microvm.layout import MAX_MEMORY_BYTES
    from vmm.microvm.tier import kvm_available

    if not kvm_available():
        return TierChoice(Tier.WASMTIME, "/dev/kvm is not usable here: only the wasm wall is up")
    if spec.limits.memory_bytes > MAX_MEMORY_BYTES:
        return TierChoice(
            Tier.WASMTIME,
            f"limits.memory_mb {spec.limits.memory_bytes >> 20} is over the micro-VM's limit of "
            f"{MAX_MEMORY_BYTES >> 20}: only the wasm wall is up",
        )
    if not _runs_in_microvm(Path(spec.plugin_path)):
        return TierChoice(
            Tier.WASMTIME,
            "the plugin is a component the micro-VM cannot run (e.g. it needs WASI 0.2): "
            "only the wasm wall is up",
        )
    return TierChoice(Tier.MICROVM, "/dev/kvm works: the wasm sandbox runs inside a KVM micro-VM")


def _runs_in_microvm(path: Path) -> bool:
    from vmm.wasm_module import WasmFormatError, unwrap_core

    try:
        return unwrap_core(path.read_bytes()) is not None
    except (OSError, WasmFormatError):
        return True  # let the micro-VM tier's loader report the real problem


def _loader(tier: Tier) -> Loader:
    module_name = _TIER_MODULES[tier]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TierUnavailable(
            f"tier {tier.value!r} is not available: cannot import {module_name}: {e}"
        ) from e
    load = getattr(module, "load", None)
    if load is None:
        raise TierUnavailable(
            f"tier {tier.value!r} is not available in this build ({module_name} has no load()); "
            f"use tier: wasmtime or auto"
        )
    return cast(Loader, load)


async def load_listener(policy: ListenerPolicy) -> Listener:
    """Load (and check) the plugin of one listener. Raises PluginLoadError."""
    choice = choose_tier(policy.spec, policy.tier)
    factory = await _loader(choice.tier)(policy.spec)
    limits = policy.spec.limits
    return Listener(policy, factory, KvStore(limits.kv_max_keys, limits.kv_max_value_bytes), choice)


async def load_listeners(policies: Iterable[ListenerPolicy]) -> dict[str, Listener | PluginLoadError]:
    """Load every listener's plugin concurrently; each result is a Listener or its load error.

    Successfully loaded factories are the caller's to close (also when another failed).
    """
    policies = list(policies)

    async def one(policy: ListenerPolicy) -> Listener | PluginLoadError:
        try:
            return await load_listener(policy)
        except PluginLoadError as e:
            return e

    results = await asyncio.gather(*(one(p) for p in policies))
    return {p.name: r for p, r in zip(policies, results, strict=True)}


async def load_all(config: LightcellConfig) -> dict[str, Listener]:
    """Every listener of `config` loaded, or ConfigError naming each plugin that failed.

    All or nothing: on any failure the plugins that did load are closed again.
    """
    results = await load_listeners(config.listeners.values())
    errors = [
        f"{config.path}: listener {name!r}: metadata.filter_metadata.{POLICY_NAMESPACE}.plugin: {result}"
        for name, result in results.items()
        if isinstance(result, PluginLoadError)
    ]
    loaded = {name: r for name, r in results.items() if isinstance(r, Listener)}
    if errors:
        await close_all(loaded.values())
        raise ConfigError("\n".join(errors))
    # The tier choice was made (and the plugin read) once, in load_listener.
    for name, listener in loaded.items():
        LOG.info("listener %s: plugin %s, tier %s", name, listener.policy.plugin, listener.tier.describe())
    one_wall = sorted((n, li.one_wall_reason) for n, li in loaded.items() if li.one_wall_reason)
    if one_wall:
        LOG.warning(
            "only one wall is up (wasm sandbox, no micro-VM) for listener(s) %s",
            "; ".join(f"{name}: {reason}" for name, reason in one_wall),
        )
    return loaded


async def close_all(listeners: Iterable[Listener]) -> None:
    for listener in listeners:
        await listener.factory.aclose()
