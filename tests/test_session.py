"""The per-connection session with a fake sandbox: verdicts, faults and failure modes."""

from __future__ import annotations

import logging
import random

import pytest
from _extproc_fakes import FakeFactory, fake_listener, fault_on, passing, upper
from envoy.service.network_ext_proc.v3 import network_external_processor_pb2 as pb

from extproc.listener import FailureMode
from extproc.session import Session
from vmm.capabilities import HostCapabilities
from vmm.contract import MAX_EVENT_BYTES, MAX_OUTPUT_BYTES, DataEvent, Verdict, VerdictKind
from vmm.metrics import Metrics
from vmm.sandbox import FaultKind, PluginFault

CLOSE = pb.ProcessingResponse.CLOSE
CLOSE_RST = pb.ProcessingResponse.CLOSE_RST


def read(data: bytes, eos: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(read_data=pb.Data(data=data, end_of_stream=eos))


def write(data: bytes, eos: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(write_data=pb.Data(data=data, end_of_stream=eos))


def carries_data(reply: pb.ProcessingResponse) -> bool:
    return bool(reply.HasField("read_data") or reply.HasField("write_data"))


def random_requests(rng: random.Random, n: int) -> list[pb.ProcessingRequest]:
    return [
        (read if rng.random() < 0.5 else write)(rng.randbytes(rng.randint(0, 64)), rng.random() < 0.2)
        for _ in range(n)
    ]


async def test_sandbox_is_created_lazily_and_opened_with_listener_and_config() -> None:
    factory = FakeFactory(upper)
    session = Session(fake_listener("edge", factory, config="read=upper"))
    assert factory.sandboxes == []  # no message, no sandbox (1.40 has no open event)
    await session.handle(read(b"x"))
    await session.handle(write(b"y"))
    assert len(factory.sandboxes) == 1
    assert factory.sandboxes[0].opened == ("edge", "read=upper")
    await session.aclose()
    await session.aclose()
    assert factory.sandboxes[0].close_calls == 1


async def test_closing_an_unused_session_creates_nothing() -> None:
    factory = FakeFactory()
    await Session(fake_listener(factory=factory)).aclose()
    assert factory.sandboxes == []


async def test_each_session_gets_its_own_sandbox_and_shares_the_kv_store() -> None:
    factory = FakeFactory()
    listener = fake_listener(factory=factory, grants=frozenset({"kv"}))
    for _ in range(3):
        session = Session(listener)
        await session.handle(read(b"a"))
        await session.aclose()
    identities = {s.identity for s in factory.sandboxes}
    assert len(identities) == 3
    assert all(s.host.kv is listener.kv for s in factory.sandboxes)
    assert all(s.host.grants.allows("kv") and not s.host.grants.allows("log") for s in factory.sandboxes)


async def test_pass_forwards_the_original_bytes_in_order() -> None:
    factory = FakeFactory(passing)
    session = Session(fake_listener(factory=factory))
    requests = [read(b"one"), write(b"two"), read(b"three"), read(b"", eos=True), write(b"", eos=True)]
    replies = [await session.handle(r) for r in requests]
    assert [(r.read_data.data, r.read_data.end_of_stream) for r in replies if r.HasField("read_data")] == [
        (b"one", False), (b"three", False), (b"", True),
    ]  # fmt: skip
    assert [(r.write_data.data, r.write_data.end_of_stream) for r in replies if r.HasField("write_data")] == [
        (b"two", False), (b"", True),
    ]  # fmt: skip
    # Every message, the empty end-of-stream ones too, reached the plugin once, in order.
    assert [(e.data, e.end_of_stream) for e in factory.sandboxes[0].events] == [
        (b"one", False), (b"two", False), (b"three", False), (b"", True), (b"", True),
    ]  # fmt: skip


async def test_replace_forwards_the_plugins_bytes() -> None:
    session = Session(fake_listener(factory=FakeFactory(upper)))
    reply = await session.handle(write(b"abc", eos=True))
    assert (reply.write_data.data, reply.write_data.end_of_stream) == (b"ABC", True)


async def test_a_chunk_over_the_event_limit_reaches_the_plugin_in_pieces() -> None:
    factory = FakeFactory(upper)
    session = Session(fake_listener(factory=factory))
    data = bytes(range(97, 123)) * (MAX_EVENT_BYTES // 10)  # about 2.6 pieces
    reply = await session.handle(read(data, eos=True))
    assert reply.read_data.data == data.upper() and reply.read_data.end_of_stream
    events = factory.sandboxes[0].events
    rest = len(data) - 2 * MAX_EVENT_BYTES
    assert [len(e.data) for e in events] == [MAX_EVENT_BYTES, MAX_EVENT_BYTES, rest]
    assert [e.end_of_stream for e in events] == [False, False, True]


async def test_a_close_verdict_on_any_piece_forwards_nothing_of_the_chunk() -> None:
    async def close_on_second(event: DataEvent, host: HostCapabilities) -> Verdict:
        return Verdict(VerdictKind.CLOSE) if event.data.startswith(b"2") else Verdict.pass_()

    session = Session(fake_listener(factory=FakeFactory(close_on_second)))
    data = b"1" * MAX_EVENT_BYTES + b"2" * MAX_EVENT_BYTES + b"3"
    reply = await session.handle(read(data))
    assert not carries_data(reply) and reply.connection_status == CLOSE


@pytest.mark.parametrize("pieces", [1, 2])
async def test_output_over_the_cap_is_a_fault_under_the_failure_mode(
    pieces: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Too much output is the plugin's fault (reset here), never a reply too big for gRPC.
    With `pieces` = 2 each piece stays under the cap and only the joined output is over."""
    each = MAX_OUTPUT_BYTES // pieces + 1

    async def flood(event: DataEvent, host: HostCapabilities) -> Verdict:
        return Verdict.replace(b"x" * each)

    metrics = Metrics()
    factory = FakeFactory(flood)
    session = Session(fake_listener("edge", factory, failure_mode=FailureMode.RESET), metrics=metrics)
    with caplog.at_level(logging.WARNING, logger="lightcell.session"):
        reply = await session.handle(read(b"y" * (MAX_EVENT_BYTES * (pieces - 1) + 1)))
    assert reply.connection_status == CLOSE_RST and not carries_data(reply)
    assert len(factory.sandboxes[0].events) == pieces
    [line] = [r.getMessage() for r in caplog.records if r.name == "lightcell.session"]
    assert "fault=abi" in line and "maximum output per event" in line
    assert metrics.get("plugin_faults_total", listener="edge", plugin="edge-plugin", fault="abi") == 1
    assert (await session.handle(write(b"later"))).connection_status == CLOSE_RST


async def test_output_at_the_cap_or_no_larger_than_the_message_is_forwarded() -> None:
    async def exact(event: DataEvent, host: HostCapabilities) -> Verdict:
        return Verdict.replace(b"x" * MAX_OUTPUT_BYTES)

    reply = await Session(fake_listener(factory=FakeFactory(exact))).handle(read(b"y"))
    assert len(reply.read_data.data) == MAX_OUTPUT_BYTES
    # A message bigger than the cap (Envoy does not send one, gRPC would allow it),
    # changed in place: the joined output is over the cap but no larger than the message.
    data = b"z" * (MAX_OUTPUT_BYTES + 1)
    reply = await Session(fake_listener(factory=FakeFactory(upper))).handle(read(data))
    assert reply.read_data.data == data.upper()


@pytest.mark.parametrize(
    ("verdict", "status"), [(Verdict(VerdictKind.CLOSE), CLOSE), (Verdict(VerdictKind.RESET), CLOSE_RST)]
)
async def test_close_and_reset_verdicts_end_the_connection(verdict: Verdict, status: int) -> None:
    async def behave(event: DataEvent, host: HostCapabilities) -> Verdict:
        return verdict if b"bye" in event.data else Verdict.pass_()

    factory = FakeFactory(behave)
    session = Session(fake_listener(factory=factory))
    assert (await session.handle(read(b"hello"))).read_data.data == b"hello"
    reply = await session.handle(read(b"bye now"))
    assert reply.connection_status == status and not carries_data(reply)
    # Whatever is still in flight gets the same answer, and the plugin is not asked again.
    for later in random_requests(random.Random(1), 20):
        again = await session.handle(later)
        assert again.connection_status == status and not carries_data(again)
    assert len(factory.sandboxes[0].events) == 2


@pytest.mark.parametrize(("mode", "status"), [(FailureMode.CLOSE, CLOSE), (FailureMode.RESET, CLOSE_RST)])
@pytest.mark.parametrize("kind", list(FaultKind))
async def test_fault_fails_closed_and_never_forwards_another_byte(
    mode: FailureMode, status: int, kind: FaultKind, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    factory = FakeFactory(fault_on(b"BOOM", kind))
    session = Session(fake_listener("edge", factory, failure_mode=mode), metrics=metrics)
    assert (await session.handle(read(b"fine"))).read_data.data == b"FINE"
    with caplog.at_level(logging.WARNING, logger="lightcell.session"):
        reply = await session.handle(write(b"xBOOMx"))
    assert reply.connection_status == status
    assert not carries_data(reply)
    # The log line and the counter name the listener, the plugin and the fault.
    [line] = [r.getMessage() for r in caplog.records if r.name == "lightcell.session"]
    assert "listener=edge" in line and "plugin=edge-plugin" in line and f"fault={kind.value}" in line
    assert metrics.get("plugin_faults_total", listener="edge", plugin="edge-plugin", fault=kind.value) == 1
    # The sandbox is released at once.
    assert factory.sandboxes[0].close_calls == 1
    # Nothing after the fault is ever forwarded, in either direction, eos or not.
    for later in random_requests(random.Random(kind.value), 50):
        again = await session.handle(later)
        assert again.connection_status == status
        assert not carries_data(again)
    assert len(factory.sandboxes[0].events) == 2
    await session.aclose()
    assert factory.sandboxes[0].close_calls == 1


async def test_fault_with_allow_drops_the_plugin_and_passes_everything_through() -> None:
    metrics = Metrics()
    factory = FakeFactory(fault_on(b"BOOM"))
    session = Session(fake_listener("edge", factory, failure_mode=FailureMode.ALLOW), metrics=metrics)
    assert (await session.handle(read(b"up"))).read_data.data == b"UP"
    faulted = await session.handle(read(b"a BOOM"))
    # The chunk the plugin faulted on passes unchanged.
    assert faulted.connection_status == pb.ProcessingResponse.CONTINUE
    assert faulted.read_data.data == b"a BOOM"
    for later in random_requests(random.Random(3), 30):
        reply = await session.handle(later)
        side = later.read_data if later.HasField("read_data") else later.write_data
        got = reply.read_data if later.HasField("read_data") else reply.write_data
        assert (got.data, got.end_of_stream) == (side.data, side.end_of_stream)
        assert reply.connection_status == pb.ProcessingResponse.CONTINUE
    assert len(factory.sandboxes[0].events) == 2  # the plugin never saw the rest
    assert factory.sandboxes[0].close_calls == 1
    assert metrics.get("plugin_faults_total", listener="edge") == 1


@pytest.mark.parametrize("where", ["open", "new_sandbox"])
async def test_fault_before_the_first_chunk_applies_the_failure_mode(where: str) -> None:
    fault = PluginFault(FaultKind.MEMORY, "initial memory over the cap")

    def faulting() -> FakeFactory:
        if where == "open":
            return FakeFactory(upper, open_fault=fault)
        return FakeFactory(upper, new_fault=fault)

    factory = faulting()
    session = Session(fake_listener(factory=factory, failure_mode=FailureMode.RESET))
    reply = await session.handle(read(b"first"))
    assert reply.connection_status == CLOSE_RST and not carries_data(reply)
    if where == "open":
        assert factory.sandboxes[0].events == []
        assert factory.sandboxes[0].close_calls == 1

    session = Session(fake_listener(factory=faulting(), failure_mode=FailureMode.ALLOW))
    assert (await session.handle(read(b"first"))).read_data.data == b"first"


async def test_other_exceptions_propagate_to_the_service() -> None:
    async def broken(event: DataEvent, host: HostCapabilities) -> Verdict:
        raise RuntimeError("bug in a tier")

    session = Session(fake_listener(factory=FakeFactory(broken), failure_mode=FailureMode.ALLOW))
    with pytest.raises(RuntimeError, match="bug in a tier"):
        await session.handle(read(b"x"))


async def test_plugin_metadata_is_sent_with_the_reply() -> None:
    async def tagging(event: DataEvent, host: HostCapabilities) -> Verdict:
        host.metadata_set("seen", str(len(event.data)))
        return Verdict.pass_()

    session = Session(fake_listener(factory=FakeFactory(tagging), grants=frozenset({"metadata"})))
    first = await session.handle(read(b"abcd"))
    fields = first.dynamic_metadata.fields["lightcell"].struct_value.fields
    assert fields["seen"].string_value == "4"


async def test_metadata_without_grant_is_a_denied_fault() -> None:
    async def tagging(event: DataEvent, host: HostCapabilities) -> Verdict:
        try:
            host.check("metadata")  # a tier's grant check, before the method
            host.metadata_set("k", "v")
        except Exception as e:  # what a tier does with CapabilityDenied
            raise PluginFault(FaultKind.DENIED, str(e)) from e
        return Verdict.pass_()

    session = Session(fake_listener(factory=FakeFactory(tagging)))
    reply = await session.handle(read(b"x"))
    assert reply.connection_status == CLOSE and not carries_data(reply)


async def test_metadata_of_every_piece_of_a_large_chunk_reaches_the_reply() -> None:
    async def tagging(event: DataEvent, host: HostCapabilities) -> Verdict:
        host.check("metadata")
        host.metadata_set(f"piece{len(event.data)}", "seen")
        return Verdict.pass_()

    session = Session(fake_listener(factory=FakeFactory(tagging), grants=frozenset({"metadata"})))
    data = b"x" * (MAX_EVENT_BYTES + 10)
    reply = await session.handle(pb.ProcessingRequest(read_data=pb.Data(data=data)))
    fields = reply.dynamic_metadata.fields["lightcell"].struct_value.fields
    assert set(fields) == {f"piece{MAX_EVENT_BYTES}", "piece10"}
    assert reply.read_data.data == data


async def test_metadata_over_the_reply_cap_across_pieces_is_a_fault() -> None:
    async def tagging(event: DataEvent, host: HostCapabilities) -> Verdict:
        host.check("metadata")
        for i in range(40):  # 40 per piece: each piece alone is under the cap of 64
            host.metadata_set(f"{len(event.data)}-{i}", "v")
        return Verdict.pass_()

    session = Session(fake_listener(factory=FakeFactory(tagging), grants=frozenset({"metadata"}),
                                    failure_mode=FailureMode.RESET))
    data = b"x" * (MAX_EVENT_BYTES + 10)
    reply = await session.handle(pb.ProcessingRequest(read_data=pb.Data(data=data)))
    assert reply.connection_status == pb.ProcessingResponse.CLOSE_RST
    assert not reply.HasField("read_data")  # nothing of the chunk forwarded
