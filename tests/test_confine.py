"""The confined monitor (vmm/confine.py, vmm/seccomp_bpf.py).

- the generated BPF program, run by a small independent cBPF interpreter, gives
  each system call the intended action (allow, EPERM, kill), arguments included;
- a child process that does serve's start-up (KVM open, a micro-VM template, a
  thread) and then confines itself still makes VMs and threads, but cannot open
  a file (in any thread, old or new), and dies on execve or fork;
- a real `lightcell serve` worker (each of `--workers 2`) runs every thread with
  the filter and no-new-privileges, serves TCP through the real Envoy in both
  tiers, and its socket is gone once it stops; the supervisor that starts the
  workers stays unconfined; the worker a reload starts is confined like the
  first; `--no-seccomp` turns it off.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from extproc.harness import (
    EnvoyProcess,
    LightcellProcess,
    ListenerSpec,
    Upstream,
    UpstreamMode,
    lightcell_command,
    render_bootstrap,
    write_config,
)
from vmm import confine
from vmm import seccomp_bpf as bpf
from vmm.kvm import ioctls

ROOT = Path(__file__).resolve().parent.parent
EPERM = bpf.errno_action(errno.EPERM)
IO_TIMEOUT = 30.0

# ----------------------------------------------------------------------------- the program


def _run_bpf(prog: bytes, nr: int, args: tuple[int, ...] = (), arch: int = bpf.AUDIT_ARCH_X86_64) -> int:
    """Evaluate a classic-BPF seccomp program over one struct seccomp_data (own interpreter)."""
    full = (*args, *(0,) * (6 - len(args)))
    data = struct.pack("<iIQ6Q", nr, arch, 0, *full)
    insns = [struct.unpack_from("<HBBI", prog, i) for i in range(0, len(prog), 8)]
    a, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:  # ld w abs
            a = struct.unpack_from("<I", data, k)[0]
        elif code == 0x06:  # ret k
            return int(k)
        elif code in (0x15, 0x35, 0x45):  # jeq, jge, jset
            hit = a == k if code == 0x15 else a >= k if code == 0x35 else bool(a & k)
            pc += jt if hit else jf
        else:
            raise AssertionError(f"unexpected BPF opcode {code:#x}")


@pytest.fixture(scope="module")
def prog() -> bytes:
    rules = confine.rules()
    rules.append(bpf.Rule(confine.SYSCALLS["unlinkat"], conditions=bpf.AllowIfAll(
        low_equal=[(0, frozenset({7}))], equal=[(2, frozenset({0}))]), otherwise=EPERM))  # fmt: skip
    return bpf.program(rules, EPERM)


def n(name: str) -> int:
    return confine.SYSCALLS[name]


@pytest.mark.parametrize(
    ("call", "args", "want"),
    [
        ("read", (), bpf.ALLOW),
        ("futex", (), bpf.ALLOW),
        ("memfd_create", (), bpf.ALLOW),
        ("openat", (), EPERM),
        ("open", (), EPERM),
        ("rename", (), EPERM),
        ("execve", (), bpf.KILL_PROCESS),
        ("execveat", (), bpf.KILL_PROCESS),
        ("ptrace", (), bpf.KILL_PROCESS),
        ("fork", (), bpf.KILL_PROCESS),
        ("clone", (0x11,), bpf.KILL_PROCESS),  # a fork: SIGCHLD, no CLONE_THREAD
        ("clone", (0x3D0F00,), bpf.ALLOW),  # glibc's pthread_create flags
        ("clone3", (), bpf.errno_action(errno.ENOSYS)),
        ("ioctl", (3, ioctls.KVM_RUN), bpf.ALLOW),
        ("ioctl", (3, ioctls.KVM_CREATE_VM), bpf.ALLOW),
        ("ioctl", (3, ioctls.KVM_SET_CPUID2), bpf.ALLOW),
        ("ioctl", (3, (0xFFFF_FFFF << 32) | ioctls.KVM_RUN), bpf.ALLOW),  # cmd is an unsigned int
        ("ioctl", (3, 0x5401), EPERM),  # TCGETS
        ("ioctl", (3, 0x4004AE99), EPERM),  # another KVM request the monitor never makes
        ("socket", (2, 2 | 0x80000), bpf.ALLOW),  # AF_INET, SOCK_DGRAM | SOCK_CLOEXEC
        ("socket", (10, 1 | 0x800 | 0x80000), bpf.ALLOW),  # AF_INET6 stream, non-blocking
        ("socket", (1, 1), bpf.ALLOW),  # AF_UNIX stream
        ("socket", (2, 3), EPERM),  # SOCK_RAW
        ("socket", (2, 3 | 0x80000), EPERM),
        ("socket", (1, 5), EPERM),  # SOCK_SEQPACKET
        ("socket", (2, 10), EPERM),  # SOCK_PACKET
        ("socket", (16, 2), EPERM),  # AF_NETLINK
        ("socket", ((1 << 32) | 2, 2), EPERM),
        ("mmap", (0, 4096, 3), bpf.ALLOW),
        ("mmap", (0, 4096, 5), EPERM),  # PROT_EXEC
        ("mprotect", (0, 4096, 7), EPERM),
        ("tgkill", (os.getpid(), 1, 34), bpf.ALLOW),
        ("tgkill", (1, 1, 9), bpf.KILL_PROCESS),
        ("prctl", (15,), bpf.ALLOW),  # PR_SET_NAME
        ("prctl", (38,), EPERM),
        ("bind", (), EPERM),  # no new listening sockets once serving
        ("listen", (), EPERM),
        ("newfstatat", (3, 0, 0, 0x1000), bpf.ALLOW),  # fstat(fd): AT_EMPTY_PATH
        ("newfstatat", (-100 & (2**64 - 1), 0, 0, 0), EPERM),  # stat(path)
        ("unlinkat", (7, 0, 0), bpf.ALLOW),
        ("unlinkat", (8, 0, 0), EPERM),
        ("unlinkat", (7, 0, 0x200), EPERM),  # AT_REMOVEDIR
    ],
)
def test_program_decides(prog: bytes, call: str, args: tuple[int, ...], want: int) -> None:
    assert _run_bpf(prog, n(call), args) == want


def test_program_kills_other_architectures_and_x32(prog: bytes) -> None:
    assert _run_bpf(prog, n("read"), arch=0x40000003) == bpf.KILL_PROCESS  # i386
    assert _run_bpf(prog, n("read") | bpf.X32_SYSCALL_BIT) == bpf.KILL_PROCESS
    assert _run_bpf(prog, 1000) == EPERM  # unknown numbers: the default


def test_every_kvm_request_of_the_monitor_is_allowed(prog: bytes) -> None:
    for request in ioctls.NAMES:
        assert _run_bpf(prog, n("ioctl"), (5, request)) == bpf.ALLOW


def test_syscall_numbers_match_libseccomp() -> None:
    found = ctypes.util.find_library("seccomp")
    if found is None:
        pytest.skip("libseccomp is not installed: nothing to cross-check against")
    lib = ctypes.CDLL(found)
    lib.seccomp_syscall_resolve_name_arch.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    for name, number in confine.SYSCALLS.items():
        assert lib.seccomp_syscall_resolve_name_arch(bpf.AUDIT_ARCH_X86_64, name.encode()) == number, name


# ----------------------------------------------------------------------------- a confined child

_CHILD = textwrap.dedent(
    """
    import os, sys, threading
    from vmm import confine
    from vmm.kvm import System
    from vmm.microvm import abi
    from _kvm_helpers import make_test_template
    from vmm.microvm.vm import MicroVm

    import socket
    system, template = System(), make_test_template(1 << 20)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    go, done, seen = threading.Event(), threading.Event(), []

    def old_thread():  # started before the filter: TSYNC must confine it too
        go.wait()
        try:
            open(sys.argv[0])
            seen.append("opened")
        except PermissionError:
            seen.append("EPERM")
        done.set()

    threading.Thread(target=old_thread).start()
    print(confine.confine(), flush=True)
    go.set(); done.wait()
    print("old thread open:", seen[0], flush=True)
    try:
        open(sys.argv[0])
        print("main open: opened", flush=True)
    except PermissionError:
        print("main open: EPERM", flush=True)
    try:
        os.open(".", os.O_WRONLY | os.O_CREAT | os.O_TMPFILE, 0o600)
        print("create: created", flush=True)
    except PermissionError:
        print("create: EPERM", flush=True)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # egress makes these at run time
    udp.connect(sink.getsockname())
    udp.send(b"datagram")
    print("udp:", sink.recv(100).decode(), flush=True)
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
        print("netlink: made", flush=True)
    except PermissionError:
        print("netlink: EPERM", flush=True)
    new = threading.Thread(target=lambda: print("new thread: ran", flush=True)); new.start(); new.join()
    vm = MicroVm(system, template)  # KVM_CREATE_VM, memfd, vCPU, CPUID, MSR filter: at run time
    vm.boot()
    print("vm:", vm.call(abi.Op.DATA, payload=b"still here").payload.decode(), flush=True)
    what = sys.argv[1]
    if what == "exec":
        os.execv("/bin/true", ["true"])
    elif what == "fork":
        os.fork()
    print("survived", what, flush=True)
    """
)


@pytest.mark.kvm
@pytest.mark.parametrize("forbidden", ["exec", "fork"])
def test_confined_child_is_refused_files_and_killed_on_exec_or_fork(forbidden: str, tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    proc = subprocess.run(
        [sys.executable, str(script), forbidden], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
    )  # fmt: skip
    out = proc.stdout
    assert "seccomp filter installed on every thread" in out, proc.stderr
    assert "old thread open: EPERM" in out
    assert "main open: EPERM" in out
    assert "create: EPERM" in out
    assert "new thread: ran" in out
    assert "udp: datagram" in out
    assert "netlink: EPERM" in out
    assert "vm: STILL HERE" in out, proc.stderr
    assert f"survived {forbidden}" not in out
    assert proc.returncode == -signal.SIGSYS, (proc.returncode, proc.stderr)


# ----------------------------------------------------------------------------- the real server


def _thread_status(pid: int) -> list[dict[str, str]]:
    out = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=lambda t: t != str(pid)):  # main first
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        out.append({k: v.strip() for k, v in fields.items()})
    return out


def _workers(supervisor: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()]


async def _assert_confined(pid: int) -> None:
    # The socket accepts a moment before serve() installs the filter: wait for the main thread.
    for _ in range(300):
        if _thread_status(pid)[0]["Seccomp"] == "2":
            break
        await asyncio.sleep(0.1)
    threads = _thread_status(pid)
    assert len(threads) > 3  # gRPC, vCPU and watchdog threads exist: all must carry the filter
    for t in threads:
        assert (t["Seccomp"], t["NoNewPrivs"], t["Seccomp_filters"]) == ("2", "1", "1"), t["Name"]


def _policy(plugin: Path, tier: str) -> dict[str, Any]:
    limits = {"memory_mb": 16, "event_cpu_ms": 2000}
    return {"plugin": str(plugin), "config": "read=upper,write=rot13", "tier": tier,
            "failure_mode": "close", "grants": [], "limits": limits}  # fmt: skip


async def _exchange(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT)
    writer.write(payload)
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), IO_TIMEOUT)
    writer.close()
    return data


@pytest.mark.envoy
@pytest.mark.kvm
async def test_confined_server_serves_tcp_through_envoy_in_both_tiers(
    built_plugins: dict[str, Path], tmp_path: Path
) -> None:
    socket_path = tmp_path / "lc.sock"
    tiers = ("wasmtime", "microvm")
    upstreams = {t: await Upstream(UpstreamMode.ECHO).start() for t in tiers}
    specs = [ListenerSpec(t, upstreams[t].port, _policy(built_plugins["rewrite"], t)) for t in tiers]
    config = write_config(render_bootstrap(specs, socket_path), tmp_path / "lightcell.yaml")
    lightcell = LightcellProcess(config, socket_path, tmp_path / "lightcell.log")
    envoy = EnvoyProcess(render_bootstrap(specs, socket_path), tmp_path)
    try:
        await lightcell.start()
        await envoy.start()
        assert lightcell.pid is not None
        [worker] = _workers(lightcell.pid)
        await _assert_confined(worker)
        assert {t["Seccomp"] for t in _thread_status(lightcell.pid)} == {"0"}  # the supervisor
        for t in tiers:  # many connections: the micro-VM pool makes new VMs while confined
            replies = await asyncio.gather(*(_exchange(envoy.ports[t], b"hello %d\n" % i) for i in range(40)))
            assert replies == [b"URYYB %d\n" % i for i in range(40)], t
        assert lightcell.tiers() == {"wasmtime": "wasmtime", "microvm": "microvm"}
        assert "seccomp filter installed on every thread, no-new-privileges set" in lightcell.log()
    finally:
        await envoy.stop()
        code = await lightcell.stop()
        for up in upstreams.values():
            await up.stop()
    assert code == 0, lightcell.log()[-2000:]
    assert not socket_path.exists()  # removed by the supervisor, which owns the path
    assert "Operation not permitted" not in lightcell.log()


def _serve_argv(config: Path, *extra: str) -> list[str]:
    return [*lightcell_command(), "serve", "--envoy-config", str(config), *extra]


def _wasmtime_config(built_plugins: dict[str, Path], tmp_path: Path, socket_path: Path) -> Path:
    spec = ListenerSpec("w", 9, _policy(built_plugins["rewrite"], "wasmtime"))
    return write_config(render_bootstrap([spec], socket_path), tmp_path / "lightcell.yaml")


async def _wait_socket(path: Path, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise AssertionError(f"lightcell exited with {proc.returncode}")
        try:
            _, w = await asyncio.open_unix_connection(str(path))
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"{path} never accepted")


async def test_each_worker_is_confined(built_plugins: dict[str, Path], tmp_path: Path) -> None:
    base = tmp_path / "lc.sock"
    config = _wasmtime_config(built_plugins, tmp_path, base)
    proc = subprocess.Popen(_serve_argv(config, "--socket", str(base), "--workers", "2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for i in range(2):
            await _wait_socket(tmp_path / f"lc.{i}.sock", proc)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 2
        for child in children:
            await _assert_confined(int(child))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


async def test_no_seccomp_leaves_the_server_unconfined(
    built_plugins: dict[str, Path], tmp_path: Path
) -> None:
    sock = tmp_path / "lc.sock"
    config = _wasmtime_config(built_plugins, tmp_path, sock)
    proc = subprocess.Popen(_serve_argv(config, "--socket", str(sock), "--no-seccomp"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        await _wait_socket(sock, proc)
        [worker] = _workers(proc.pid)
        assert {t["Seccomp"] for t in _thread_status(worker)} == {"0"}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


async def test_the_worker_a_reload_starts_is_confined(built_plugins: dict[str, Path], tmp_path: Path) -> None:
    sock = tmp_path / "lc.sock"
    config = _wasmtime_config(built_plugins, tmp_path, sock)
    log = tmp_path / "lightcell.log"
    with log.open("wb") as out:
        argv = _serve_argv(config, "--socket", str(sock))
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        await _wait_socket(sock, proc)
        [first] = _workers(proc.pid)
        await _assert_confined(first)
        config.write_text(config.read_text().replace("read=upper", "read=lower"))
        proc.send_signal(signal.SIGHUP)  # the supervisor reloads: a new worker, loaded then confined
        for _ in range(600):
            if "reload applied" in log.read_text():
                break
            assert proc.poll() is None, log.read_text()
            await asyncio.sleep(0.1)
        [second] = [w for w in _workers(proc.pid) if w != first]
        await _assert_confined(second)
        assert log.read_text().count("seccomp filter installed on every thread") == 2
        assert {t["Seccomp"] for t in _thread_status(proc.pid)} == {"0"}  # the supervisor
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert "Operation not permitted" not in log.read_text()
