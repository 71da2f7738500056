"""A reload's TCP hand-over: new connections to the newest listener of a SO_REUSEPORT group.

A reload's new worker binds the same 127.0.0.1 port beside the old one (gRPC sets
SO_REUSEPORT). Left alone, the kernel would spread new connections over both by a hash, and
the old worker would keep receiving some until it stops listening; closing a listener resets
the connections still in its accept queue. So each worker attaches a one-instruction classic
BPF program to its port's group that picks socket 1: the group lists its listeners in the
order they started (a leaving one's place is taken by the last), and a reload serves at most
two generations at once, so socket 1 is always the newer one. With a single listener index 1
does not exist and the kernel falls back to its hash, i.e. that one listener.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
import struct

__all__ = ["steer_to_newest"]

LOG = logging.getLogger("lightcell.server")

SO_ATTACH_REUSEPORT_CBPF = 51
_RET_1 = struct.pack("<HBBI", 0x06, 0, 0, 1)  # BPF_RET | BPF_K: return 1


def steer_to_newest(port: int) -> bool:
    """Attach the program to this process's listening TCP socket on `port` (gRPC's, found among
    our open files: before confinement). False if there is none or the kernel refuses."""
    for fd in _fds():
        try:
            copy = os.dup(fd)
        except OSError:  # gone (the listing's own fd)
            continue
        try:
            s = socket.socket(fileno=copy)
        except OSError:  # not a socket
            os.close(copy)
            continue
        with contextlib.suppress(OSError), s:
            # gRPC listens on an AF_INET6 socket bound to ::ffff:127.0.0.1 where it can.
            if s.family not in (socket.AF_INET, socket.AF_INET6) or s.type != socket.SOCK_STREAM:
                continue
            if not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) or s.getsockname()[1] != port:
                continue
            program = ctypes.create_string_buffer(_RET_1, len(_RET_1))
            fprog = struct.pack("<HxxxxxxQ", 1, ctypes.addressof(program))
            s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
            return True
    LOG.warning("port %d: no listening socket found to steer a reload's new connections", port)
    return False


def _fds() -> list[int]:
    try:
        return sorted(int(name) for name in os.listdir("/proc/self/fd"))
    except OSError:
        return []
