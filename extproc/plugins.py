"""Loading a listener's plugin into the tier its policy asks for.

The only place the Envoy-facing side names a tier. Each tier module exposes
`async load(spec: SandboxSpec) -> SandboxFactory`; tiers are imported lazily so
a missing or broken tier only matters to listeners that ask for it.

Tier `auto` resolves to wasmtime for now. When the micro-VM tier exposes
`vmm.microvm.load`, `resolve_tier` is where `auto` should start preferring it
(where /dev/kvm works and the plugin is a core module).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Iterable
from typing import cast

from extproc.config import POLICY_NAMESPACE, ConfigError, LightcellConfig
from extproc.listener import Listener, ListenerPolicy
from vmm.kvstore import KvStore
from vmm.policy import SandboxSpec, Tier
from vmm.sandbox import PluginLoadError, SandboxFactory

__all__ = ["TierUnavailable", "close_all", "load_all", "load_listener", "load_listeners", "resolve_tier"]

Loader = Callable[[SandboxSpec], Awaitable[SandboxFactory]]

_TIER_MODULES = {
    Tier.WASMTIME: "vmm.wasmtime_tier",
    Tier.MICROVM: "vmm.microvm",
}


class TierUnavailable(PluginLoadError):
    """The requested tier is not part of this build (or cannot load)."""


def resolve_tier(requested: Tier) -> Tier:
    """The concrete tier a policy's `tier` runs in."""
    if requested is Tier.AUTO:
        return Tier.WASMTIME  # the micro-VM tier is not wired in yet (see module doc)
    return requested


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
    factory = await _loader(resolve_tier(policy.tier))(policy.spec)
    limits = policy.spec.limits
    return Listener(policy, factory, KvStore(limits.kv_max_keys, limits.kv_max_value_bytes))


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
    return loaded


async def close_all(listeners: Iterable[Listener]) -> None:
    for listener in listeners:
        await listener.factory.aclose()
