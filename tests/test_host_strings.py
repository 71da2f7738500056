"""What a plugin's strings can do on the host side of a capability call: no more than
the call's limits allow, and never before they are checked.

A guest can hand a host call megabytes (the micro-VM's OUT buffer holds 16 MiB). A host
call is charged at most a millisecond of the guest's budget (vmm/microvm/vm.py), so the
host must not decode more of a log line or metadata entry (UTF-8 bytes) than their caps
before refusing it. A refused egress target is the plugin's text in a host log record:
escaped, cut short and logged once a connection, as a plugin's own log lines are.

`Tripwire` is bytes that fail the test when decoded whole: the host calls must decode
only a slice of it.
"""

from __future__ import annotations

import logging

import pytest
from _host_fakes import Sent

from vmm.capabilities import (
    MAX_LOG_MESSAGE,
    MAX_METADATA_BYTES,
    CapabilityMisuse,
    HostCapabilities,
)
from vmm.contract import SendError
from vmm.kvstore import KvStore
from vmm.metrics import Metrics
from vmm.microvm import hostcalls
from vmm.microvm.abi import HostcallStatus, HostFn
from vmm.policy import EgressTarget, Grants, Limits

ALLOWED = EgressTarget("127.0.0.1", 9125)
FORGED = "x\n2026-12-02 10:00:00,000 ERROR lightcell.session: FORGED RECORD"


class Tripwire(bytes):
    """A blob that must never be decoded whole (a slice of it is plain bytes)."""

    def decode(self, *args: object, **kwargs: object) -> str:
        raise AssertionError(f"{len(self)} bytes decoded whole")


def new_host(*grants: str) -> HostCapabilities:
    limits = Limits()
    return HostCapabilities(
        "edge", "hostile", Grants(frozenset(grants), frozenset({ALLOWED})), limits,
        KvStore(limits.kv_max_keys, limits.kv_max_value_bytes), Sent(), metrics=Metrics(),
    )  # fmt: skip


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "egress refused" in r.getMessage()]


def test_a_refused_egress_host_is_escaped_and_logged_once_a_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = new_host("egress")
    with caplog.at_level(logging.WARNING, logger="lightcell.capabilities"):
        results = [host.send_datagram(FORGED, 9125, b"d") for _ in range(3)]
        again = new_host("egress")  # the next connection: its first refusal is logged
        again.send_datagram("10.0.0.1", 53, b"d")
    assert results == [SendError.DENIED] * 3 and host.egress_refused == 3
    assert host.metrics.get("egress_refused_total", listener="edge", plugin="hostile") == 3
    lines = refusals(caplog)
    assert len(lines) == 2 and "10.0.0.1:53" in lines[1]
    assert "\n" not in lines[0] and "x\\x0a2026-12-02" in lines[0]
    assert host.egress.datagrams == []  # type: ignore[union-attr]


def test_an_overlong_egress_host_is_refused_and_logged_short(caplog: pytest.LogCaptureFixture) -> None:
    """Through the micro-VM's host-call table: 200 kB of host is `denied` like any other
    target outside the list (a host that is not UTF-8 is misuse, as wasmtime's lifting
    refuses it), and the log shows 80 characters of it and its length."""
    host = new_host("egress")
    with caplog.at_level(logging.WARNING, logger="lightcell.capabilities"):
        r = hostcalls.dispatch(host, HostFn.EGRESS_SEND, 9125, b"a" * 200_000, b"payload")
        assert (r.status, r.value) == (HostcallStatus.OK, 1 + SendError.DENIED)
        r = hostcalls.dispatch(host, HostFn.EGRESS_SEND, 9125, b"\xff" * 200_000, b"payload")
        assert r.status is HostcallStatus.MISUSE
    (line,) = refusals(caplog)
    assert len(line) < 400 and "a" * 80 + "... (200000 characters)" in line
    r = hostcalls.dispatch(host, HostFn.EGRESS_SEND, 9125, b"127.0.0.1", b"p")
    assert (r.status, r.value) == (HostcallStatus.OK, 0)
    assert host.egress.datagrams == [(ALLOWED, b"p")]  # type: ignore[union-attr]


def test_a_log_call_decodes_only_what_the_line_shows(caplog: pytest.LogCaptureFixture) -> None:
    host = new_host("log")
    with caplog.at_level(logging.INFO, logger="lightcell.plugin"):
        r = hostcalls.dispatch(host, HostFn.LOG, 2, Tripwire("é".encode() * 1_000_000), b"")
    assert r.status is HostcallStatus.OK
    (record,) = [r for r in caplog.records if r.name == "lightcell.plugin"]
    assert record.getMessage() == "[edge/hostile] " + "é" * MAX_LOG_MESSAGE


def test_a_metadata_entry_is_bounded_in_utf8_bytes() -> None:
    host = new_host("metadata")
    host.metadata_set("k", "a" * (MAX_METADATA_BYTES - 1))  # 4096 bytes with its key
    with pytest.raises(CapabilityMisuse, match="over 4096 bytes"):
        host.metadata_set("k", "\N{GRINNING FACE}" * 1100)  # 1,101 characters, 4,401 bytes
    # The micro-VM refuses an oversized entry before decoding it.
    r = hostcalls.dispatch(host, HostFn.METADATA_SET, 0, b"k", Tripwire(b"v" * 1_000_000))
    assert r.status is HostcallStatus.MISUSE
    r = hostcalls.dispatch(host, HostFn.METADATA_SET, 0, b"k", "\N{GRINNING FACE}".encode() * 1024)
    assert r.status is HostcallStatus.MISUSE  # 4,097 bytes
    assert host.take_metadata() == {"k": "a" * (MAX_METADATA_BYTES - 1)}
