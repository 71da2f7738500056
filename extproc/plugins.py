"""Loading a listener's plugin into the tier its policy asks for.

The only place the Envoy-facing side names a tier. Each tier module exposes
`async load(spec: SandboxSpec) -> SandboxFactory`; tiers are imported lazily so
a missing or broken tier only matters to listeners that ask for it.

Tier `auto` prefers the micro-VM tier (two walls: wasm sandbox + KVM) where
/dev/kvm works and the plugin is a core module or a component it compiles
(componentize-py ones of both worlds included; JavaScript components not
yet); otherwise it falls back to wasmtime (one wall) with a start-up warning.
Under a supervisor (`background_compile`), a plugin whose micro-VM build is
not cached and would take minutes is served in wasmtime meanwhile
(extproc/background_compile.py builds it, then the supervisor reloads).

HTTP policies (listeners and routes, issue 8) load http-filter plugins with
the tier's `load_http` (vmm.microvm.tier, vmm.wasmtime_tier), the tier
chosen as for TCP (choose_tier): `auto` is the micro-VM where /dev/kvm works
and the plugin is a core module or a component it compiles (not JavaScript
yet), else wasmtime (warned about).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from extproc.config import POLICY_NAMESPACE, ConfigError, LightcellConfig
from extproc.http_policy import phase_problems
from extproc.listener import HttpListener, HttpSandboxFactory, Listener, ListenerPolicy, TierChoice
from vmm.kvstore import KvStore
from vmm.policy import SandboxSpec, Tier
from vmm.sandbox import PluginLoadError, SandboxFactory

__all__ = [
    "HttpLoaded",
    "TierChoice",
    "TierUnavailable",
    "choose_http_tier",
    "choose_tier",
    "close_all",
    "close_http",
    "compile_pending",
    "load_all",
    "load_http_all",
    "load_http_policy",
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


def choose_tier(spec: SandboxSpec, requested: Tier, background_compile: bool = False) -> TierChoice:
    """The concrete tier a policy's `tier` runs in, and why.

    Called once per listener, by load_listener; `check`, the start-up log and
    the demo all report that one choice (Listener.tier). `background_compile`:
    a supervisor compiles what tier auto would wait minutes for (compile_pending).
    """
    if requested is not Tier.AUTO:
        return TierChoice(requested, "asked for by the listener policy", requested)
    return _auto_tier(spec, background_compile)


def _auto_tier(spec: SandboxSpec, background_compile: bool = False) -> TierChoice:
    """What `tier: auto` resolves to for this plugin, and why (either world)."""
    choice = _auto_tier_now(spec)
    if background_compile and choice.tier is Tier.MICROVM and _slow_and_uncompiled(spec):
        return TierChoice(
            Tier.WASMTIME,
            "its micro-VM build is not cached yet and takes minutes: served here until the "
            "supervisor has compiled it in the background, then a reload moves it to the micro-VM",
            awaiting_compile=True,
        )
    return choice


def _auto_tier_now(spec: SandboxSpec) -> TierChoice:
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
    refusal = _microvm_refusal(Path(spec.plugin_path))
    if refusal is not None:
        return TierChoice(Tier.WASMTIME, f"{refusal}: only the wasm wall is up")
    return TierChoice(Tier.MICROVM, "/dev/kvm works: the wasm sandbox runs inside a KVM micro-VM")


AUTO_MICROVM_MAX_CODE_BYTES = 16 << 20
"""The most code one core module may have for tier auto to pick the micro-VM.
Its ahead-of-time compile (wasm2c, then zig -O2 in pieces, each cached) grows
with the code: the 9 MiB of SpiderMonkey inside a componentize-js plugin take
about 17 CPU-minutes (under 9 minutes on 2 idle cores, under 1 GB of RAM; a
later JS plugin reuses all but a few pieces), CPython's core module about 11
minutes; past this a first start would compile for far longer than anyone
expects of tier auto."""


BACKGROUND_COMPILE_ENV = "LIGHTCELL_BACKGROUND_COMPILE_BYTES"
BACKGROUND_COMPILE_BYTES = 1 << 20
"""Under `lightcell serve`, tier auto does not wait for the micro-VM build of a plugin with
a core module of at least this much code (CPython, SpiderMonkey: minutes): it serves the
plugin in wasmtime while the supervisor compiles it, then reloads. A smaller one (a C
plugin: about a second) compiles before serving. BACKGROUND_COMPILE_ENV overrides it."""


def _background_threshold() -> int:
    """BACKGROUND_COMPILE_BYTES, or the environment's; PluginLoadError naming a bad value."""
    text = os.environ.get(BACKGROUND_COMPILE_ENV)
    if text is None:
        return BACKGROUND_COMPILE_BYTES
    if not text.strip().isdigit():
        raise PluginLoadError(f"${BACKGROUND_COMPILE_ENV}={text!r}: expected a whole number of bytes")
    return int(text)


def _slow_and_uncompiled(spec: SandboxSpec) -> bool:
    """Whether the plugin's micro-VM build is missing and slow, and could be built in the
    background. Not when the cache is unusable (not private to us, or not writable): then
    the micro-VM tier's loader fails the load with the reason, as it always has, rather than
    leave the plugin in one wall for the process's life."""
    from vmm.cachefiles import private_dir
    from vmm.microvm.compile import cache_dir, is_compiled
    from vmm.wasm_module import WasmFormatError, largest_code_section

    threshold = _background_threshold()
    path = Path(spec.plugin_path)
    try:
        data = path.read_bytes()
        code = largest_code_section(data)
        cache = cache_dir()
        usable = private_dir(cache) and os.access(cache, os.W_OK | os.X_OK)
    except (OSError, WasmFormatError):
        return False  # the micro-VM tier's loader reports the real problem
    return usable and code >= threshold and not is_compiled(path, data=data)


def compile_pending(config: LightcellConfig) -> list[Path]:
    """The plugins tier auto serves in wasmtime under a supervisor until they are compiled
    for the micro-VM (choose_tier's background_compile), each once, in the config's order."""
    policies = [*config.listeners.values(), *config.http_listeners.values(), *config.routes.values()]
    pending: dict[Path, None] = {}
    for policy in policies:
        auto = policy.tier is Tier.AUTO and _auto_tier_now(policy.spec).tier is Tier.MICROVM
        if auto and _slow_and_uncompiled(policy.spec):
            pending[Path(policy.spec.plugin_path)] = None
    return list(pending)


def _microvm_refusal(path: Path) -> str | None:
    """Why the micro-VM cannot run this plugin, or None: core modules and
    components of either world (all their core modules, with generated glue) it
    can, and componentize-js plugins built without WASI (one core module); not
    yet JavaScript components with WASI."""
    from vmm.microvm.component_parse import ComponentFormatError, parse_component
    from vmm.wasm_module import WasmFormatError, largest_code_section, unwrap_core

    try:
        data = path.read_bytes()
        if (code := largest_code_section(data)) > AUTO_MICROVM_MAX_CODE_BYTES:
            return (
                f"the plugin has a core module with {code >> 20} MiB of code, over the "
                f"{AUTO_MICROVM_MAX_CODE_BYTES >> 20} MiB tier auto compiles for the micro-VM "
                "(ask for tier: microvm to compile it anyway)"
            )
        if unwrap_core(data) is not None:
            return None
        component = parse_component(data)
    except (OSError, WasmFormatError):
        return None  # let the micro-VM tier's loader report the real problem
    except ComponentFormatError as e:
        return f"the plugin is a component the micro-VM cannot run ({e})"
    if "JavaScript" in component.producers.get("language", []):
        return "the plugin is a JavaScript component with WASI, not compiled for the micro-VM yet"
    return None


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


async def load_listener(policy: ListenerPolicy, background_compile: bool = False) -> Listener:
    """Load (and check) the plugin of one listener. Raises PluginLoadError."""
    choice = choose_tier(policy.spec, policy.tier, background_compile)
    factory = await _loader(choice.tier)(policy.spec)
    limits = policy.spec.limits
    return Listener(policy, factory, KvStore(limits.kv_max_keys, limits.kv_max_value_bytes), choice)


async def load_listeners(
    policies: Iterable[ListenerPolicy], background_compile: bool = False
) -> dict[str, Listener | PluginLoadError]:
    """Load every listener's plugin concurrently; each result is a Listener or its load error.

    Successfully loaded factories are the caller's to close (also when another failed).
    """
    policies = list(policies)

    async def one(policy: ListenerPolicy) -> Listener | PluginLoadError:
        try:
            return await load_listener(policy, background_compile)
        except PluginLoadError as e:
            return e

    results = await asyncio.gather(*(one(p) for p in policies))
    return {p.name: r for p, r in zip(policies, results, strict=True)}


async def load_all(config: LightcellConfig, background_compile: bool = False) -> dict[str, Listener]:
    """Every listener of `config` loaded, or ConfigError naming each plugin that failed.

    All or nothing: on any failure the plugins that did load are closed again.
    """
    results = await load_listeners(config.listeners.values(), background_compile)
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


# --- HTTP policies (listeners and routes) --------------------------------------------------------

@dataclass(frozen=True)
class HttpLoaded:
    """Every HTTP policy of a config, loaded: listeners by name, routes by "<listener>/<route>"."""

    listeners: Mapping[str, HttpListener] = field(default_factory=dict)
    routes: Mapping[str, HttpListener] = field(default_factory=dict)
    warnings: Sequence[str] = ()
    """The load's warnings (a plugin's phases against Envoy's processing modes)."""

    def all(self) -> list[HttpListener]:
        return [*self.listeners.values(), *self.routes.values()]


def choose_http_tier(policy: ListenerPolicy, background_compile: bool = False) -> TierChoice:
    """The tier an HTTP policy's plugin runs in: the one it names, or for `auto` as for a TCP
    listener (_auto_tier)."""
    if policy.tier is not Tier.AUTO:
        return TierChoice(policy.tier, "asked for by the policy", policy.tier)
    return _auto_tier(policy.spec, background_compile)


async def load_http_policy(policy: ListenerPolicy, background_compile: bool = False) -> HttpListener:
    """Load (and check) the http-filter plugin of one HTTP listener or route. Raises PluginLoadError."""
    choice = choose_http_tier(policy, background_compile)
    module_name = _TIER_MODULES[choice.tier]
    try:
        load_http = importlib.import_module(module_name).load_http
    except (ImportError, AttributeError) as e:
        raise TierUnavailable(f"tier {choice.tier.value!r} is not available: {module_name}: {e}") from e
    factory: HttpSandboxFactory = await load_http(policy.spec)
    limits = policy.spec.limits
    return HttpListener(policy, factory, KvStore(limits.kv_max_keys, limits.kv_max_value_bytes), choice)


async def load_http_all(config: LightcellConfig, background_compile: bool = False) -> HttpLoaded:
    """Every HTTP listener and route policy of `config` loaded, or ConfigError naming each plugin
    that failed (all or nothing, as load_all)."""
    policies = [*config.http_listeners.values(), *config.routes.values()]

    async def one(policy: ListenerPolicy) -> HttpListener | PluginLoadError:
        try:
            return await load_http_policy(policy, background_compile)
        except PluginLoadError as e:
            return e

    results = await asyncio.gather(*(one(p) for p in policies))
    errors = [
        f"{config.path}: {p.source or p.name}.plugin: {r}"
        for p, r in zip(policies, results, strict=True)
        if isinstance(r, PluginLoadError)
    ]
    loaded = [r for r in results if isinstance(r, HttpListener)]
    warnings: list[str] = []
    for item in loaded:  # the plugin's wanted phases against the Envoy modes that serve it
        notes, refused = phase_problems(item.policy.http, item.factory.phases)
        where = f"{config.path}: {item.policy.source or item.name}"
        errors += [f"{where}: {text}" for text in refused]
        for text in notes:
            warnings.append(f"{where}: {text}")
            LOG.warning("%s: %s", where, text)
    if errors:
        for item in loaded:
            await item.factory.aclose()
        raise ConfigError("\n".join(errors))
    listeners = {r.name: r for r in loaded if r.name in config.http_listeners}
    routes = {r.name: r for r in loaded if r.name in config.routes}
    for item in loaded:
        kind = "route" if item.name in routes else "http listener"
        LOG.info("%s %s: plugin %s, tier %s", kind, item.name, item.policy.plugin, item.tier.describe())
    one_wall = sorted((item.name, item.one_wall_reason) for item in loaded if item.one_wall_reason)
    if one_wall:
        LOG.warning(
            "only one wall is up (wasm sandbox, no micro-VM) for HTTP policy(ies) %s",
            "; ".join(f"{name}: {reason}" for name, reason in one_wall),
        )
    return HttpLoaded(listeners, routes, tuple(warnings))


async def close_http(loaded: HttpLoaded) -> None:
    for item in loaded.all():
        await item.factory.aclose()
