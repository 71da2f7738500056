"""Tier auto does not wait minutes for a micro-VM build under `lightcell serve`.

A plugin whose build is slow (LIGHTCELL_BACKGROUND_COMPILE_BYTES of code; 0 here, so a C
plugin stands in for CPython and the test takes seconds) and not cached is served in
wasmtime at once; the supervisor compiles it in the background (extproc/background_compile.py)
and reloads, and new connections then run in the micro-VM while open ones go on. Real
parts: the real Envoy, `lightcell serve` with its confined workers, `lightcell compile`,
/dev/kvm, an empty compile cache of the test's own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from extproc.background_compile import NOTHING_BUILT, BackgroundBuild, JobEnd, build_pending, job_command
from extproc.config import load_config
from extproc.harness import (
    EnvoyProcess,
    LightcellProcess,
    ListenerSpec,
    Upstream,
    UpstreamMode,
    lightcell_command,
    render_bootstrap,
    tiers_in_log,
    write_config,
)
from extproc.plugins import BACKGROUND_COMPILE_ENV, choose_tier, compile_pending
from extproc.reload import fingerprints
from extproc.workers import Supervisor
from plugins import build as plugin_build
from vmm.microvm import compile as compile_module
from vmm.microvm.compile import CompiledPlugin, CompileError, compile_plugin, image_path, is_compiled
from vmm.policy import Limits, SandboxSpec, Tier
from vmm.sandbox import PluginLoadError

pytestmark = [pytest.mark.kvm]
IO_TIMEOUT = 30.0
BUILD_TIMEOUT = 180.0
LIMITS = {"memory_mb": 16, "event_cpu_ms": 2000}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty compile cache, this test's only."""
    root = tmp_path / "aot"
    root.mkdir(mode=0o700)
    monkeypatch.setenv("LIGHTCELL_AOT_CACHE", str(root))
    return root


def _spec(path: Path) -> SandboxSpec:
    return SandboxSpec(listener="l", plugin_path=str(path), limits=Limits(memory_bytes=16 << 20))


# ----------------------------------------------------------------------------- the cache key


def test_image_path_is_where_compile_puts_the_image(built_plugins: dict[str, Path], cache: Path) -> None:
    plugin = built_plugins["rewrite"]
    expected = image_path(plugin)
    assert expected.parent == cache and not is_compiled(plugin)
    assert compile_plugin(plugin, world=None).image == expected
    assert is_compiled(plugin)


def test_an_unreadable_or_foreign_file_is_not_compiled(tmp_path: Path, cache: Path) -> None:
    junk = tmp_path / "junk.wasm"
    junk.write_bytes(b"\0asm\1\0\0\0\x99")
    assert not is_compiled(junk) and not is_compiled(tmp_path / "missing.wasm")


# ----------------------------------------------------------------------------- the tier choice


def test_auto_waits_for_a_fast_build_and_defers_a_slow_one(
    built_plugins: dict[str, Path], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(built_plugins["rewrite"])
    # Not in the background (check, tests, a worker without a supervisor): the micro-VM.
    assert choose_tier(spec, Tier.AUTO).tier is Tier.MICROVM
    # A C plugin is under the default threshold: compiled before serving, as before.
    assert choose_tier(spec, Tier.AUTO, background_compile=True).tier is Tier.MICROVM
    monkeypatch.setenv(BACKGROUND_COMPILE_ENV, "0")
    deferred = choose_tier(spec, Tier.AUTO, background_compile=True)
    assert deferred.tier is Tier.WASMTIME and deferred.awaiting_compile and deferred.fell_back
    assert "in the background" in deferred.reason
    # A tier asked for by name is never moved.
    assert choose_tier(spec, Tier.MICROVM, background_compile=True).tier is Tier.MICROVM
    compile_plugin(Path(spec.plugin_path), world=None)
    assert choose_tier(spec, Tier.AUTO, background_compile=True).tier is Tier.MICROVM


def test_pending_lists_each_auto_plugin_once(
    built_plugins: dict[str, Path], cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BACKGROUND_COMPILE_ENV, "0")
    rewrite, faulty = built_plugins["rewrite"], built_plugins["faulty"]

    def policy(plugin: Path, tier: str) -> dict[str, object]:
        return {"plugin": str(plugin), "tier": tier, "limits": LIMITS}

    specs = [
        ListenerSpec("a", 1, policy(rewrite, "auto")),
        ListenerSpec("b", 1, policy(rewrite, "auto")),
        ListenerSpec("c", 1, policy(faulty, "wasmtime")),
        ListenerSpec("d", 1, policy(faulty, "microvm")),
    ]
    config = load_config(write_config(render_bootstrap(specs, tmp_path / "s.sock"), tmp_path / "c.yaml"))
    assert compile_pending(config) == [rewrite]
    compile_plugin(rewrite, world=None)
    assert compile_pending(config) == []


# ----------------------------------------------------------------------------- the build job


def _config(tmp_path: Path, plugins: dict[str, tuple[Path, str]]) -> Path:
    specs = [
        ListenerSpec(name, 1, {"plugin": str(plugin), "tier": tier, "limits": LIMITS})
        for name, (plugin, tier) in plugins.items()
    ]
    return write_config(render_bootstrap(specs, tmp_path / "s.sock"), tmp_path / "c.yaml")


def test_the_job_builds_what_waits_and_then_nothing(
    built_plugins: dict[str, Path], cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BACKGROUND_COMPILE_ENV, "0")
    config = _config(tmp_path, {"a": (built_plugins["rewrite"], "auto")})
    assert build_pending(config) == 0 and is_compiled(built_plugins["rewrite"])
    assert build_pending(config) == NOTHING_BUILT


def test_a_failed_build_is_logged_and_the_others_go_on(
    built_plugins: dict[str, Path],
    cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """wasm2c refusing a module is the boundary faked here (the real refusals are in test_aot_compile)."""
    monkeypatch.setenv(BACKGROUND_COMPILE_ENV, "0")
    rewrite, faulty = built_plugins["rewrite"], built_plugins["faulty"]
    real = compile_module.compile_plugin

    def refuse_faulty(path: Path, **kw: Any) -> CompiledPlugin:
        if path == faulty:
            raise CompileError(f"{path.name}: wasm2c refused it")
        return real(path, **kw)

    monkeypatch.setattr(compile_module, "compile_plugin", refuse_faulty)
    config = _config(tmp_path, {"f": (faulty, "auto"), "r": (rewrite, "auto")})
    with caplog.at_level(logging.INFO, "lightcell.compile"):
        assert build_pending(config) == 0
    assert f"micro-VM build of {faulty} failed" in caplog.text and "wasm2c refused it" in caplog.text
    assert is_compiled(rewrite) and not is_compiled(faulty)
    (cache / image_path(rewrite).name).unlink()
    monkeypatch.setattr(compile_module, "compile_plugin", lambda path, **kw: refuse_faulty(faulty))
    assert build_pending(config) == NOTHING_BUILT


def _wait_poll(build: BackgroundBuild, timeout: float = BUILD_TIMEOUT) -> list[JobEnd]:
    """poll() until the job has ended: the ends it reported (one)."""
    ends = []
    deadline = time.monotonic() + timeout
    while build.busy:
        assert time.monotonic() < deadline, "the background build did not end"
        if (end := build.poll()) is not None:
            ends.append(end)
        time.sleep(0.05)
    return ends


def test_a_job_asks_for_one_reload_once_per_configuration(
    built_plugins: dict[str, Path], cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BACKGROUND_COMPILE_ENV, "0")
    config = _config(tmp_path, {"a": (built_plugins["rewrite"], "auto")})
    build = BackgroundBuild(job_command(config, "info", "text"))
    assert build.start("one")
    assert not build.start("two")  # one job at a time
    assert _wait_poll(build) == [JobEnd.BUILT]
    assert build.poll() is None  # told once
    assert is_compiled(built_plugins["rewrite"])
    assert not build.start("one")  # tried
    assert build.start("two")  # nothing left to build: no reload
    assert _wait_poll(build) == [JobEnd.NOTHING]
    build.forget()  # an operator's reload
    assert build.start("one")
    assert _wait_poll(build) == [JobEnd.NOTHING]


def test_stop_ends_the_build_and_removes_its_files(
    built_plugins: dict[str, Path], cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPython build (minutes on an empty cache) stopped early: its compilers end with it and
    its temporary build directories (hundreds of MB) are removed."""
    monkeypatch.setenv(BACKGROUND_COMPILE_ENV, "0")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    config = _config(tmp_path, {"c": (built_plugins["counter"], "auto")})
    build = BackgroundBuild(job_command(config, "info", "text"), env={**os.environ, "TMPDIR": str(scratch)})
    assert build.start("cold")
    proc = build._proc
    assert proc is not None
    deadline = time.monotonic() + 60
    while not any(scratch.iterdir()):  # wasm2c and zig under way
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    build.stop()
    assert proc.returncode == 128 + signal.SIGTERM and not build.busy
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # the whole group is gone
    assert list(scratch.iterdir()) == []
    assert not is_compiled(built_plugins["counter"])


STOP_AS_SUBREAPER = """
import ctypes, sys, time
sys.path.insert(0, sys.argv[1])
from extproc.background_compile import BackgroundBuild
ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans come to us, as to PID 1
script = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
build = BackgroundBuild(lambda: [sys.executable, "-c", script])
build.start("x")
time.sleep(1.0)
build.stop()
print("stopped")
"""


def test_stop_ends_as_pid_one_would_see_it(tmp_path: Path) -> None:
    """The supervisor as a container's PID 1 (or a subreaper) inherits the job's children as
    zombies when the job dies first: stop reaps them instead of waiting for ever."""
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", STOP_AS_SUBREAPER, str(repo)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0 and "stopped" in result.stdout, result.stderr


def test_an_unusable_cache_is_not_a_reason_to_wait_in_wasmtime(
    built_plugins: dict[str, Path], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache others can write is refused by the loader with its reason (fail closed), not
    turned into a life in one wall."""
    monkeypatch.setenv(BACKGROUND_COMPILE_ENV, "0")
    spec = _spec(built_plugins["rewrite"])
    cache.chmod(0o770)
    assert choose_tier(spec, Tier.AUTO, background_compile=True).tier is Tier.MICROVM
    with pytest.raises(CompileError, match="not a directory private"):
        compile_plugin(built_plugins["rewrite"], world=None)


def test_a_bad_threshold_is_refused_by_name(
    built_plugins: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BACKGROUND_COMPILE_ENV, "1MiB")
    with pytest.raises(PluginLoadError, match=BACKGROUND_COMPILE_ENV):
        choose_tier(_spec(built_plugins["rewrite"]), Tier.AUTO, background_compile=True)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream(UpstreamMode.ECHO).start()
    yield up
    await up.stop()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), IO_TIMEOUT)


async def _wait_for_log(lightcell: LightcellProcess, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in lightcell.log():
        if time.monotonic() > deadline:
            pytest.fail(f"no {text!r} in lightcell's log:\n{lightcell.log()[-4000:]}")
        await asyncio.sleep(0.1)


async def test_serve_starts_in_wasmtime_and_reloads_into_the_micro_vm(
    built_plugins: dict[str, Path], upstream: Upstream, tmp_path: Path, cache: Path
) -> None:
    plugin = built_plugins["rewrite"]
    policy = {"plugin": str(plugin), "config": "read=upper", "tier": "auto", "limits": LIMITS}
    socket_path = tmp_path / "lightcell.sock"
    specs = [ListenerSpec("edge", upstream.port, policy, message_timeout="30s")]
    config = write_config(render_bootstrap(specs, socket_path), tmp_path / "lightcell.yaml")
    env = {**os.environ, BACKGROUND_COMPILE_ENV: "0"}
    lightcell = LightcellProcess(config, socket_path, tmp_path / "lightcell.log", env=env)
    envoy = EnvoyProcess(render_bootstrap(specs, socket_path), tmp_path)
    try:
        await lightcell.start()
        await envoy.start()
        assert tiers_in_log(lightcell.log()) == {"edge": "wasmtime"}
        assert "until the supervisor has compiled it in the background" in lightcell.log()
        port = envoy.ports["edge"]
        before = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT)
        assert await _echo(*before, b"Hello") == b"HELLO"

        await _wait_for_log(lightcell, "reload applied", BUILD_TIMEOUT)
        log = lightcell.log()
        assert f"micro-VM build of {plugin} done" in log and "background micro-VM build done" in log
        assert tiers_in_log(log) == {"edge": "microvm"}  # the new worker's line comes last
        assert log.count("seccomp filter installed on every thread") == 2  # both workers confined
        assert is_compiled(plugin)
        after = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT)
        assert await _echo(*after, b"World") == b"WORLD"
        assert await _echo(*before, b"again") == b"AGAIN"  # still on the old worker, in wasmtime
        for _, writer in (before, after):
            writer.close()
        # One build, one reload: the new worker had nothing left to wait for.
        await _wait_for_log(lightcell, "finished its open streams", IO_TIMEOUT)
        log = lightcell.log()
        assert log.count("in the background (pid") == 1 and log.count("reload applied") == 1
        assert log.count(f"compiling {plugin} for the micro-VM") == 1
        pid = lightcell.pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
    finally:
        await envoy.stop()
        code = await lightcell.stop()
    assert code == 0, lightcell.log()[-3000:]


def test_the_first_demo_does_not_wait_for_cpython(cache: Path) -> None:
    """`lightcell demo` on an empty cache: counter (componentize-py, tier auto) is served in
    wasmtime at once instead of after minutes of compiling, and says so; the C plugins are
    built first (seconds) and run in the micro-VM."""
    result = subprocess.run(
        [*lightcell_command(), "demo", "--once", "--any-port"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert out.count("-> as expected") == 5, out
    counter = next(line for line in out.splitlines() if line.startswith("[counter]"))
    assert "tier=wasmtime" in counter, out
    assert "[rewrite]" in out and "tier=microvm" in out
    assert "lightcell serve builds it in the background" in out
    assert not is_compiled(plugin_build.DEFAULT_OUT / "counter.wasm")  # the build stopped with the demo


def test_a_build_never_applies_an_edit_the_operator_has_not(
    built_plugins: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The reload after a build reloads the file as applied; an edit made since then waits
    for the operator's reload (SIGHUP or --watch)."""
    config = _config(tmp_path, {"a": (built_plugins["rewrite"], "auto")})
    supervisor = Supervisor(config, [], lambda *_: [])
    supervisor._prints = fingerprints(load_config(config))
    assert supervisor._file_unchanged()
    _config(tmp_path, {"a": (built_plugins["rewrite"], "wasmtime")})  # rewritten, not applied
    with caplog.at_level(logging.WARNING, "lightcell.workers"):
        assert not supervisor._file_unchanged()
    assert "changed since it was applied" in caplog.text
