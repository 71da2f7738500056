"""Confine a serving process once it has started: no-new-privileges and a seccomp allow list.

Each `lightcell serve` worker calls `confine()` after its listeners are loaded (plugins
compiled, pools booted, sockets bound). From then on the process, every thread of it, may
make only the system calls serving needs; it can never load another configuration, so a
reload is the unconfined supervisor's (extproc/workers.py): it starts new workers, which
load and then confine themselves, and retires the old ones. The supervisor runs no plugin
code, touches no guest memory and runs no VM.

- unlisted calls fail with EPERM: a path the list missed costs one event or connection
  (Python raises PermissionError, the sandbox faults), not the whole sidecar;
- calls only an exploited monitor makes (execve, ptrace, fork, mount, bpf, ...) kill the
  process (SIGSYS): nothing to retry or probe with;
- ioctl only with the KVM requests the monitor uses and FIONBIO/FIOCLEX; clone only for
  threads (CLONE_THREAD); clone3 answers ENOSYS so that glibc falls back to clone, whose
  flags a filter can see; socket only AF_UNIX/AF_INET/AF_INET6, stream or datagram
  (no raw socket); mmap/mprotect never
  with PROT_EXEC (code is mapped at load); tgkill only inside this process (the
  watchdog's pthread_kill);
- no listening socket can be made (bind, listen: EPERM); stat by name answers EPERM,
  but `newfstatat` with AT_EMPTY_PATH is glibc's fstat(fd) and stays allowed, and the
  filter cannot see its path: an exploited monitor can still learn a path's metadata
  (not its content: nothing can be opened);
- no file can be opened (open/openat/openat2 answer EPERM), nor created, renamed or
  removed (a server outside a supervisor may keep unlinkat in its socket's directory fd,
  to remove its socket; a supervisor's workers leave their sockets to the supervisor):
  the files serving needs are open already (/dev/kvm, sockets, memfds).

The set was found by tracing a server under the Envoy tests (strace -f) in both tiers;
`prepare()` imports what Python would otherwise import lazily at run time.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys

from vmm import seccomp_bpf as bpf
from vmm.kvm import ioctls

__all__ = ["DISABLE_ENV", "KILLED", "SYSCALLS", "confine", "prepare", "rules", "supported"]

DISABLE_ENV = "LIGHTCELL_NO_SECCOMP"
"""Set (to anything but "" or "0") to skip confinement, like `serve --no-seccomp`."""

# x86_64 numbers (arch/x86/entry/syscalls/syscall_64.tbl); checked against libseccomp in tests.
SYSCALLS = {
    "read": 0, "write": 1, "open": 2, "close": 3, "fstat": 5, "poll": 7, "lseek": 8, "mmap": 9,
    "mprotect": 10, "munmap": 11, "brk": 12, "rt_sigaction": 13, "rt_sigprocmask": 14,
    "rt_sigreturn": 15, "ioctl": 16, "pread64": 17, "readv": 19, "writev": 20, "sched_yield": 24,
    "mremap": 25, "madvise": 28, "dup": 32, "nanosleep": 35, "getpid": 39, "socket": 41,
    "connect": 42, "accept": 43, "sendto": 44, "recvfrom": 45, "sendmsg": 46, "recvmsg": 47,
    "shutdown": 48, "bind": 49, "listen": 50, "getsockname": 51, "getpeername": 52, "socketpair": 53,
    "setsockopt": 54, "getsockopt": 55, "clone": 56, "fork": 57, "vfork": 58, "execve": 59,
    "exit": 60, "wait4": 61, "kill": 62, "uname": 63, "fcntl": 72, "ftruncate": 77,
    "rename": 82, "mkdir": 83, "rmdir": 84, "creat": 85, "link": 86, "unlink": 87, "symlink": 88,
    "chmod": 90, "fchmod": 91, "chown": 92, "fchown": 93, "umask": 95, "getrusage": 98,
    "sysinfo": 99, "ptrace": 101, "getuid": 102, "setuid": 105, "setgid": 106, "setreuid": 113,
    "setregid": 114, "setgroups": 116, "setresuid": 117, "setresgid": 119, "capset": 126,
    "sigaltstack": 131, "mknod": 133, "personality": 135, "iopl": 172, "ioperm": 173,
    "prctl": 157, "chroot": 161, "mount": 165, "umount2": 166, "swapon": 167, "reboot": 169,
    "init_module": 175, "delete_module": 176, "gettid": 186, "tkill": 200, "futex": 202,
    "sched_getaffinity": 204, "sched_getparam": 143, "sched_getscheduler": 145,
    "getdents64": 217, "set_tid_address": 218, "restart_syscall": 219,
    "clock_gettime": 228, "clock_getres": 229, "clock_nanosleep": 230, "exit_group": 231,
    "epoll_wait": 232, "epoll_ctl": 233, "tgkill": 234, "kexec_load": 246, "add_key": 248,
    "request_key": 249, "keyctl": 250, "openat": 257, "mkdirat": 258, "mknodat": 259,
    "newfstatat": 262, "unlinkat": 263, "renameat": 264, "linkat": 265, "symlinkat": 266,
    "fchmodat": 268, "ppoll": 271, "unshare": 272, "set_robust_list": 273, "epoll_pwait": 281,
    "fallocate": 285, "accept4": 288, "eventfd2": 290, "epoll_create1": 291, "dup3": 292,
    "pipe2": 293, "perf_event_open": 298, "prlimit64": 302, "open_by_handle_at": 304,
    "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311, "finit_module": 313,
    "renameat2": 316, "seccomp": 317, "getrandom": 318, "memfd_create": 319,
    "kexec_file_load": 320, "bpf": 321, "execveat": 322, "userfaultfd": 323, "membarrier": 324,
    "statx": 332, "rseq": 334, "pidfd_send_signal": 424, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsmount": 432, "pidfd_open": 434, "clone3": 435, "close_range": 436,
    "openat2": 437, "pidfd_getfd": 438, "epoll_pwait2": 441, "memfd_secret": 447,
}  # fmt: skip

# Serving: memory, threads and their synchronisation, time, the event loop and sockets,
# KVM memory (memfds for new VMs' RAM, hole punching and SEEK_DATA on restore), signals.
_ALLOWED = (
    "read", "write", "close", "fstat", "poll", "ppoll", "lseek", "munmap", "mremap", "madvise",
    "brk", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "writev",
    "sched_yield", "dup", "dup3", "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres",
    "getpid", "gettid", "sched_getaffinity", "connect", "accept4", "sendto", "recvfrom", "sendmsg",
    "recvmsg", "shutdown", "getsockname", "getpeername", "socketpair", "setsockopt", "getsockopt",
    "fcntl", "ftruncate", "fallocate", "memfd_create", "futex", "set_robust_list", "rseq",
    "set_tid_address", "exit", "exit_group", "restart_syscall", "epoll_wait", "epoll_pwait",
    "epoll_ctl", "epoll_create1", "eventfd2", "pipe2", "getrandom", "sched_getparam",
    "sched_getscheduler",
)  # fmt: skip

_HOT = ("futex", "epoll_wait", "clock_gettime", "write", "recvfrom", "read", "getpid", "recvmsg",
        "sendmsg", "sendto", "lseek", "close", "munmap")  # fmt: skip

# Only an exploited monitor makes these: kill the process rather than answer.
KILLED = (
    "execve", "execveat", "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev",
    "kill", "tkill", "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "setuid", "setgid",
    "setreuid", "setregid", "setresuid", "setresgid", "setgroups", "capset", "personality",
    "iopl", "ioperm", "chroot", "mount", "umount2", "open_tree", "move_mount", "fsopen",
    "fsmount", "unshare", "setns", "swapon", "reboot", "init_module", "finit_module",
    "delete_module", "kexec_load", "kexec_file_load", "bpf", "perf_event_open", "userfaultfd",
    "keyctl", "add_key", "request_key", "seccomp", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "open_by_handle_at", "memfd_secret",
)  # fmt: skip

AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
PROT_EXEC = 4
AT_EMPTY_PATH = 0x1000
CLONE_THREAD = 0x10000
FIONBIO, FIOCLEX = 0x5421, 0x5451
SOCK_STREAM, SOCK_DGRAM, SOCK_NONBLOCK, SOCK_CLOEXEC = 1, 2, 0x800, 0x80000
SOCKET_TYPES = frozenset(
    kind | flags
    for kind in (SOCK_STREAM, SOCK_DGRAM)
    for flags in (0, SOCK_NONBLOCK, SOCK_CLOEXEC, SOCK_NONBLOCK | SOCK_CLOEXEC)
)
"""socket(2)'s type argument: streams and datagrams with either flag; no raw socket
(root in a container has CAP_NET_RAW by default), no packet or seqpacket socket."""
# Imported lazily by code that runs while serving (asyncio's default executor, hostname
# encoding, tracebacks in logs, a connection's attributes).
_PREIMPORT = (
    "concurrent.futures.thread", "encodings.idna", "encodings.ascii", "json", "traceback", "linecache",
    "tokenize", "extproc.http_protocol",
)  # fmt: skip


def supported() -> bool:
    return sys.platform == "linux" and os.uname().machine == "x86_64"


def _kvm_requests() -> frozenset[int]:
    return frozenset(ioctls.NAMES)


def rules() -> list[bpf.Rule]:
    """The allow list; the program tests rules in this order, so the hottest calls
    (KVM_RUN, futex, epoll, socket I/O: strace counts under load) come first."""
    eperm = bpf.errno_action(errno.EPERM)
    allowed = sorted(_ALLOWED, key=lambda name: name not in _HOT)
    out = [
        bpf.Rule(SYSCALLS["ioctl"], name="ioctl", otherwise=eperm, conditions=bpf.AllowIfAll(
            low_equal=[(1, _kvm_requests() | {FIONBIO, FIOCLEX})])),
        bpf.Rule(SYSCALLS["mmap"], name="mmap", conditions=bpf.AllowIfAll(lacks_bits=[(2, PROT_EXEC)]),
                 otherwise=eperm),
        bpf.Rule(SYSCALLS["mprotect"], name="mprotect", otherwise=eperm,
                 conditions=bpf.AllowIfAll(lacks_bits=[(2, PROT_EXEC)])),
        *(bpf.Rule(SYSCALLS[n], name=n) for n in allowed),
        *(bpf.Rule(SYSCALLS[n], bpf.KILL_PROCESS, name=n) for n in KILLED),
        bpf.Rule(SYSCALLS["clone"], conditions=bpf.AllowIfAll(has_bits=[(0, CLONE_THREAD)]), name="clone"),
        bpf.Rule(SYSCALLS["clone3"], bpf.errno_action(errno.ENOSYS), name="clone3"),
        bpf.Rule(SYSCALLS["socket"], name="socket", otherwise=eperm, conditions=bpf.AllowIfAll(
            equal=[(0, frozenset({AF_UNIX, AF_INET, AF_INET6}))], low_equal=[(1, SOCKET_TYPES)])),
        bpf.Rule(SYSCALLS["newfstatat"], name="newfstatat", otherwise=eperm,  # fstat(fd), not stat(path)
                 conditions=bpf.AllowIfAll(has_bits=[(3, AT_EMPTY_PATH)])),
        bpf.Rule(SYSCALLS["tgkill"], name="tgkill", conditions=bpf.AllowIfAll(
            equal=[(0, frozenset({os.getpid()}))])),
        bpf.Rule(SYSCALLS["prctl"], name="prctl", otherwise=eperm, conditions=bpf.AllowIfAll(
            equal=[(0, frozenset({15, 16}))])),  # PR_SET_NAME, PR_GET_NAME (thread names)
    ]  # fmt: skip
    return out


def prepare() -> None:
    """Import now what would otherwise be imported (opened) lazily after confinement."""
    for name in _PREIMPORT:
        importlib.import_module(name)


def confine(unlink_dir_fd: int | None = None) -> str:
    """Install the filter on every thread of this process; a one-line description to log.

    `unlink_dir_fd`: a directory fd in which unlinkat stays allowed (the server's socket
    directory, so that it can remove its socket when it stops); no other file is removable."""
    prepare()
    rule_list = rules()
    if unlink_dir_fd is not None:
        only_there = bpf.AllowIfAll(low_equal=[(0, frozenset({unlink_dir_fd}))], equal=[(2, frozenset({0}))])
        rule_list.append(bpf.Rule(SYSCALLS["unlinkat"], name="unlinkat", conditions=only_there,
                                  otherwise=bpf.errno_action(errno.EPERM)))  # fmt: skip
    prog = bpf.program(rule_list, bpf.errno_action(errno.EPERM))
    bpf.install(prog)
    allowed = sum(1 for r in rule_list if r.action == bpf.ALLOW)
    return (f"seccomp filter installed on every thread, no-new-privileges set: {allowed} system calls "
            f"allowed ({len(prog) // 8} BPF instructions), {len(KILLED)} kill the process, "
            f"any other fails with EPERM")  # fmt: skip
