"""The HTTP session and service (issue 8) with real http-filter plugins in the wasmtime tier:
HttpSession fed xds-protos messages directly, HttpProcessor over a real grpc.aio channel."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import vmm.wasmtime_tier as wt
from extproc import http_protocol as hp
from extproc import http_service, plugins
from extproc.config import LightcellConfig
from extproc.http_policy import FilterMode, HttpOptions
from extproc.http_session import HttpSession, StreamReset, _body_decision
from extproc.listener import FailureMode, HttpListener, ListenerPolicy, Protocol, TierChoice
from extproc.server import LightcellServer
from vmm.contract import MAX_EVENT_BYTES, MAX_OUTPUT_BYTES, DecisionKind
from vmm.http_abi import Header, HeaderMutation, HttpDecision
from vmm.kvstore import KvStore
from vmm.metrics import Metrics
from vmm.policy import Grants, Limits, SandboxSpec, Tier
from vmm.sandbox import FaultKind, PluginFault

HERE = Path(__file__).resolve().parent
STREAMED, BUFFERED = 1, 2


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lightcell-http-session-cache")


Load = Callable[..., Awaitable[HttpListener]]


@pytest.fixture
async def load(cache: Path) -> AsyncIterator[Load]:
    opened: list[HttpListener] = []

    async def _load(
        plugin: Path,
        config: str = "",
        failure: FailureMode = FailureMode.CLOSE,
        grants: frozenset[str] = frozenset(),
        name: str = "web",
        http: HttpOptions | None = None,
    ) -> HttpListener:
        spec = SandboxSpec(name, str(plugin), Grants(grants), Limits(), plugin_config=config)
        factory = await wt.load_http(spec, cache)
        policy = ListenerPolicy(
            name, spec, Tier.WASMTIME, failure, Protocol.HTTP, "test", http or HttpOptions()
        )
        listener = HttpListener(policy, factory, KvStore(8, 64), TierChoice(Tier.WASMTIME, "test"))
        opened.append(listener)
        return listener

    yield _load
    for listener in opened:
        await listener.factory.aclose()


# --- messages ----------------------------------------------------------------------------------


def _map(pairs: list[tuple[str, bytes]]) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v) for k, v in pairs])


def req_headers(
    pairs: list[tuple[str, bytes]] | None = None,
    eos: bool = False,
    path: str = "/x",
    modes: tuple[int, int] = (STREAMED, BUFFERED),
) -> pb.ProcessingRequest:
    r = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(headers=_map(pairs or [(":path", path.encode())]), end_of_stream=eos),
        protocol_config=pb.ProtocolConfiguration(request_body_mode=modes[0], response_body_mode=modes[1]),
    )
    r.attributes["envoy.filters.http.ext_proc"].fields["request.path"].string_value = path
    return r


def resp_headers(length: int | None = None) -> pb.ProcessingRequest:
    pairs = [(":status", b"200")] + ([("content-length", str(length).encode())] if length is not None else [])
    return pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=_map(pairs)))


def req_body(data: bytes, eos: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=data, end_of_stream=eos))


def resp_body(data: bytes, eos: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=data, end_of_stream=eos))


def set_headers(mutation: pb.HeaderMutation) -> dict[str, bytes]:
    return {o.header.key: o.header.raw_value for o in mutation.set_headers}


async def reply(session: HttpSession, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
    out = await session.handle(request)
    assert out is not None
    return out


# --- the session -------------------------------------------------------------------------------


async def test_redact_masks_streamed_request_chunks_and_a_buffered_response(
    load: Load, built_plugins: dict[str, Path]
) -> None:
    metrics = Metrics()
    session = HttpSession(await load(built_plugins["redact"], "pattern=secret"), metrics=metrics)
    r = await reply(session, req_headers())
    assert r.request_headers.response.status == pb.CommonResponse.CONTINUE
    assert not r.request_headers.response.HasField("body_mutation")
    # The pattern split across two STREAMED chunks: the first chunk's tail is held back.
    r = await reply(session, req_body(b"a sec"))
    assert r.request_body.response.body_mutation.body == b"a "
    r = await reply(session, req_body(b"ret b", eos=True))
    assert r.request_body.response.body_mutation.body == b"****** b"
    await reply(session, resp_headers(length=9))
    r = await reply(session, resp_body(b"my secret", eos=True))
    common = r.response_body.response
    assert common.body_mutation.body == b"my ******"
    # BUFFERED after headers SEND: the plugin's header lands, and content-length is kept right.
    assert set_headers(common.header_mutation) == {"x-lightcell-redacted": b"2", "content-length": b"9"}
    await session.aclose()
    assert metrics.get("http_requests_total", listener="web") == 1
    assert metrics.get("plugin_faults_total") == 0


async def test_header_changes_a_streamed_body_hook_cannot_make_are_dropped(
    load: Load, built_plugins: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    session = HttpSession(await load(built_plugins["redact"], "pattern=secret"))
    await reply(session, req_headers(eos=True, modes=(STREAMED, STREAMED)))
    await reply(session, resp_headers())
    with caplog.at_level(logging.WARNING, "lightcell.http_session"):
        r = await reply(session, resp_body(b"secret", eos=True))
    assert r.response_body.response.body_mutation.body == b"******"
    assert not r.response_body.response.header_mutation.set_headers
    assert "on-response-body changed the response headers after they went on" in caplog.text
    assert session.state == "filtering"
    await session.aclose()


async def test_a_body_over_the_event_size_goes_in_pieces(load: Load, built_plugins: dict[str, Path]) -> None:
    session = HttpSession(await load(built_plugins["redact"], "pattern=secret"))
    await reply(session, req_headers(eos=True))
    data = b"x" * (MAX_EVENT_BYTES - 3) + b"secret" + b"y" * MAX_EVENT_BYTES  # across the piece boundary
    await reply(session, resp_headers(length=len(data)))
    r = await reply(session, resp_body(data, eos=True))
    assert r.response_body.response.body_mutation.body == data.replace(b"secret", b"******")
    await session.aclose()


async def test_an_immediate_response_with_metadata_ends_the_replies(load: Load, answer: Path) -> None:
    session = HttpSession(await load(answer, grants=frozenset({"metadata"})))
    r = await reply(session, req_headers(path="/blocked", eos=True))
    assert r.immediate_response.status.code == 403 and r.immediate_response.body == b"blocked\n"
    assert r.dynamic_metadata.fields["lightcell"].struct_value.fields["blocked"].string_value == "yes"
    assert await session.handle(resp_headers()) is None  # Envoy expects nothing more
    await session.aclose()


async def test_continue_with_header_ops_and_fresh_state_per_request(load: Load, answer: Path) -> None:
    listener = await load(answer)
    for _ in range(2):  # the counter starts at 1 in every request's sandbox
        session = HttpSession(listener)
        r = await reply(session, req_headers([(":path", b"/"), ("x-echo", b"v\xff")], eos=True))
        got = [
            (o.header.key, o.header.raw_value, o.append.value)
            for o in r.request_headers.response.header_mutation.set_headers
        ]
        assert got == [("x-hooks-run", b"1", False), ("x-echoed", b"v\xff", True)]  # set, then append
        r = await reply(session, resp_headers())
        assert set_headers(r.response_headers.response.header_mutation) == {"x-hooks-run": b"2"}
        await session.aclose()


@pytest.mark.parametrize("mode", list(FailureMode))
async def test_a_fault_under_each_failure_mode(
    load: Load, built_plugins: dict[str, Path], mode: FailureMode, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    session = HttpSession(await load(built_plugins["redact"], "", mode), metrics=metrics)  # on-open traps
    await reply(session, req_headers())  # not a wanted phase: on-open still deferred
    if mode is FailureMode.RESET:
        with pytest.raises(StreamReset):
            await session.handle(req_body(b"secret"))
        with pytest.raises(StreamReset):
            await session.handle(req_body(b"more", eos=True))
    elif mode is FailureMode.CLOSE:
        r = await reply(session, req_body(b"secret"))
        assert r.immediate_response.status.code == 500 and r.immediate_response.body == b""
        assert r.immediate_response.details == "lightcell_plugin_fault"
        assert await session.handle(req_body(b"more", eos=True)) is None
    else:
        r = await reply(session, req_body(b"secret"))
        assert r.request_body.response.status == pb.CommonResponse.CONTINUE
        assert not r.request_body.response.HasField("body_mutation")  # unchanged
        r = await reply(session, req_body(b"more", eos=True))
        assert not r.request_body.response.HasField("body_mutation")
    await session.aclose()
    assert metrics.get("plugin_faults_total", listener="web", fault="trap", protocol="http") == 1
    assert caplog.text.count("plugin fault protocol=http") == 1


async def test_a_bad_header_is_refused_before_envoy_sees_it(load: Load, answer: Path) -> None:
    metrics = Metrics()
    session = HttpSession(await load(answer), metrics=metrics)
    r = await reply(session, req_headers([(":path", b"/"), ("x-echo", b"a\r\nb")], eos=True))
    assert r.immediate_response.status.code == 500
    assert metrics.get("plugin_faults_total", fault="abi", protocol="http") == 1
    await session.aclose()


async def test_failure_mode_close_answers_the_policys_close_status(
    load: Load, built_plugins: dict[str, Path]
) -> None:
    listener = await load(built_plugins["redact"], "", http=HttpOptions(close_status=451))  # on-open traps
    session = HttpSession(listener)
    r = await reply(session, req_body(b"secret", eos=True))
    assert r.immediate_response.status.code == 451
    assert r.immediate_response.body == b"" and not r.HasField("request_body")  # nothing forwarded
    assert await session.handle(resp_headers()) is None  # Envoy asks nothing more
    await session.aclose()


async def test_unwanted_phases_continue_without_entering_the_sandbox(
    load: Load, built_plugins: dict[str, Path]
) -> None:
    """redact wants the bodies only; without a pattern its on-open traps at the first entry.
    Headers (request and response) continue unchanged and fault nothing: nothing ran."""
    metrics = Metrics()
    session = HttpSession(await load(built_plugins["redact"], ""), metrics=metrics)
    for request in (req_headers(), resp_headers()):
        r = await reply(session, request)
        which = r.WhichOneof("response")
        assert which in ("request_headers", "response_headers")
        common = getattr(r, which).response
        assert common.status == pb.CommonResponse.CONTINUE and not common.HasField("header_mutation")
    assert session.state == "filtering" and metrics.get("plugin_faults_total", listener="web") == 0
    r = await reply(session, resp_body(b"x", eos=True))  # the first wanted hook: on-open runs and traps
    assert r.immediate_response.status.code == 500
    await session.aclose()


BODIES_ONLY = FilterMode(response_headers=False, request_body=hp.BodyMode.STREAMED,
                         response_body=hp.BodyMode.STREAMED)  # fmt: skip
ALL_SEND = FilterMode(request_body=hp.BodyMode.STREAMED, response_body=hp.BodyMode.STREAMED,
                      request_trailers=True, response_trailers=True)  # fmt: skip


@pytest.mark.parametrize(
    ("options", "config", "override"),
    [
        # redact wants the bodies: skip the response headers and both trailers, keep the bodies.
        (HttpOptions(modes=(ALL_SEND,), mode_override=True), None, (2, 1, 1, 2, 2)),
        # BUFFERED response: its headers stay (the body hook may change them).
        (HttpOptions(modes=(ALL_SEND,), mode_override=True), (STREAMED, BUFFERED), (1, 1, 2, 2, 2)),
        # Bodies Envoy does not send are asked for, STREAMED.
        (HttpOptions(modes=(FilterMode(),), mode_override=True), (0, 0), (2, 1, 1, 2, 2)),
        # Nothing to change under the policy's one mode: no override.
        (HttpOptions(modes=(BODIES_ONLY,), mode_override=True), None, None),
        (HttpOptions(modes=(ALL_SEND,), mode_override=False), None, None),  # Envoy would ignore it
        (HttpOptions(modes=(ALL_SEND,), mode_override=True), (4, 4), None),  # full duplex: never
    ],
)  # fmt: skip
async def test_the_request_headers_reply_asks_envoy_for_the_plugins_phases(
    load: Load,
    built_plugins: dict[str, Path],
    options: HttpOptions,
    config: tuple[int, int] | None,
    override: tuple[int, int, int, int, int] | None,
) -> None:
    session = HttpSession(await load(built_plugins["redact"], "pattern=secret", http=options))
    r = await reply(session, req_headers(modes=config or (STREAMED, STREAMED)))
    if override is None:
        assert not r.HasField("mode_override")
    else:
        m = r.mode_override
        got = (m.response_header_mode, m.request_body_mode, m.response_body_mode,
               m.request_trailer_mode, m.response_trailer_mode)  # fmt: skip
        assert got == override
        assert m.request_header_mode == 0
    await session.aclose()


async def test_without_protocol_config_the_policys_one_mode_gives_the_body_modes(
    load: Load, built_plugins: dict[str, Path]
) -> None:
    buffered = FilterMode(
        request_body=hp.BodyMode.BUFFERED, response_body=hp.BodyMode.BUFFERED, response_trailers=True
    )
    for modes, override in (((buffered,), (1, 2, 2, 2, 2)), ((buffered, ALL_SEND), None)):
        options = HttpOptions(modes=modes, mode_override=True)
        session = HttpSession(await load(built_plugins["redact"], "pattern=secret", http=options))
        request = req_headers()
        request.ClearField("protocol_config")
        r = await reply(session, request)
        if override is None:  # which mode applies is unknown: no override that could drop a body
            assert not r.HasField("mode_override")
        else:
            m = r.mode_override
            got = (m.response_header_mode, m.request_body_mode, m.response_body_mode,
                   m.request_trailer_mode, m.response_trailer_mode)  # fmt: skip
            assert got == override
        await session.aclose()


async def test_no_override_when_envoy_sends_bodies_without_waiting(
    load: Load, built_plugins: dict[str, Path]
) -> None:
    options = HttpOptions(modes=(ALL_SEND,), mode_override=True)
    session = HttpSession(await load(built_plugins["redact"], "pattern=secret", http=options))
    request = req_headers()
    request.protocol_config.send_body_without_waiting_for_header_response = True
    r = await reply(session, request)
    assert not r.HasField("mode_override")
    await session.aclose()


# --- the service over gRPC -------------------------------------------------------------------------


@pytest.fixture
async def served(
    load: Load, built_plugins: dict[str, Path], tmp_path: Path
) -> AsyncIterator[tuple[LightcellServer, grpc.aio.Channel]]:
    redact = built_plugins["redact"]
    http = plugins.HttpLoaded(
        {
            "web": await load(redact, "pattern=secret"),
            "broken": await load(redact, "", FailureMode.RESET, name="broken"),  # on-open traps
        },
        {"web/api": await load(redact, "pattern=token", name="web/api")},
    )
    server = await LightcellServer.start(
        LightcellConfig(tmp_path / "x.yaml", {}),
        socket_path=tmp_path / "lc.sock",
        loaded={},
        http_loaded=http,
        max_connections=2,
    )
    channel = grpc.aio.insecure_channel(f"unix:{tmp_path / 'lc.sock'}")
    try:
        yield server, channel
    finally:
        await channel.close()
        await server.stop(0)


def _metadata(listener: str | None, route: str | None = None) -> list[tuple[str, str]]:
    md = [] if listener is None else [("x-lightcell-listener", listener)]
    return md + ([("x-lightcell-route", route)] if route is not None else [])


async def test_the_service_picks_the_listener_or_route_policy(
    served: tuple[LightcellServer, grpc.aio.Channel],
) -> None:
    _, channel = served
    stub = pb_grpc.ExternalProcessorStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    check = await health.Check(health_pb2.HealthCheckRequest(service=http_service.SERVICE_NAME))
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    for route, expect in ((None, b"token ******"), ("api", b"***** secret")):
        call = stub.Process(metadata=_metadata("web", route))
        await call.write(req_headers())
        await call.read()
        await call.write(req_body(b"token secret", eos=True))
        r = await call.read()
        assert r.request_body.response.body_mutation.body == expect
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("listener", "route", "code"),
    [
        (None, None, grpc.StatusCode.PERMISSION_DENIED),
        ("nope", None, grpc.StatusCode.NOT_FOUND),
        ("web", "nope", grpc.StatusCode.NOT_FOUND),
    ],
)
async def test_the_service_refuses_unknown_names(
    served: tuple[LightcellServer, grpc.aio.Channel],
    listener: str | None,
    route: str | None,
    code: grpc.StatusCode,
) -> None:
    _, channel = served
    call = pb_grpc.ExternalProcessorStub(channel).Process(metadata=_metadata(listener, route))
    with contextlib.suppress(grpc.aio.AioRpcError):  # the refusal may beat the write
        await call.write(req_headers())
    assert await call.code() == code


async def test_messages_out_of_turn_end_the_stream_non_ok(
    served: tuple[LightcellServer, grpc.aio.Channel],
) -> None:
    """A peer that is not Envoy 1.40 (request headers twice, a message with no phase): the
    stream ends INVALID_ARGUMENT, never OK (which would let the request through), and no
    reply is sent for the message out of turn."""
    _, channel = served
    stub = pb_grpc.ExternalProcessorStub(channel)
    again = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=_map([(":path", b"/x")])))
    for second, why in ((again, "request headers out of order"), (pb.ProcessingRequest(), "no phase")):
        call = stub.Process(metadata=_metadata("web"))
        await call.write(req_headers())
        first = await call.read()
        assert first.HasField("request_headers")
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call.write(second)
        with pytest.raises(grpc.aio.AioRpcError):  # no reply to it: the stream ends
            await call.read()
        assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert why in (await call.details() or "")


async def test_a_fault_under_failure_mode_reset_ends_the_stream_non_ok(
    served: tuple[LightcellServer, grpc.aio.Channel],
) -> None:
    _, channel = served
    call = pb_grpc.ExternalProcessorStub(channel).Process(metadata=_metadata("broken"))
    await call.write(req_headers())
    await call.read()
    await call.write(req_body(b"secret", eos=True))
    assert await call.code() == grpc.StatusCode.ABORTED
    assert "failure_mode reset" in (await call.details() or "")


async def test_the_service_counts_streams_against_max_connections(
    served: tuple[LightcellServer, grpc.aio.Channel],
) -> None:
    _, channel = served
    stub = pb_grpc.ExternalProcessorStub(channel)
    open_calls = []
    for _ in range(2):  # --max-connections 2
        call = stub.Process(metadata=_metadata("web"))
        await call.write(req_headers())
        await call.read()
        open_calls.append(call)
    third = stub.Process(metadata=_metadata("web"))
    await third.write(req_headers())
    assert await third.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for call in open_calls:
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK


# --- a body in pieces: how the pieces' decisions combine ------------------------------------


def _scripted_hook(decisions: list[HttpDecision]) -> Callable[[bytes, bool], Awaitable[HttpDecision]]:
    script = iter(decisions)

    async def hook(body: bytes, end_of_stream: bool) -> HttpDecision:
        return next(script)

    return hook


def _big_body() -> hp.BodyEvent:
    return hp.BodyEvent(hp.Side.REQUEST, b"b" * (MAX_EVENT_BYTES + 10), True)


async def test_a_later_pieces_header_change_wins() -> None:
    clean = HeaderMutation(set=(Header("x-verdict", b"clean"),))
    set_clean = HttpDecision(DecisionKind.MODIFY, headers=clean)
    remove_it = HttpDecision(DecisionKind.MODIFY, headers=HeaderMutation(remove=("X-Verdict",)))
    combined = await _body_decision(_scripted_hook([set_clean, remove_it]), _big_body())
    assert combined.headers.set == () and combined.headers.remove == ("X-Verdict",)  # removed, as last said
    combined = await _body_decision(_scripted_hook([remove_it, set_clean]), _big_body())
    assert combined.headers.set == (Header("x-verdict", b"clean"),)  # remove, then set: the set stands


async def test_pieces_output_is_refused_as_soon_as_it_passes_the_cap() -> None:
    seen = []
    huge = HttpDecision(DecisionKind.MODIFY, body=b"y" * (MAX_OUTPUT_BYTES // 2 + 1))

    async def hook(body: bytes, end_of_stream: bool) -> HttpDecision:
        seen.append(len(body))
        return huge

    event = hp.BodyEvent(hp.Side.REQUEST, b"b" * (3 * MAX_EVENT_BYTES), True)
    with pytest.raises(PluginFault) as fault:
        await _body_decision(hook, event)
    assert fault.value.kind is FaultKind.ABI and len(seen) == 2  # the third piece never ran


async def test_a_request_the_plugin_never_sees_gets_no_sandbox(
    load: Load, built_plugins: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """redact wants only bodies: a bodiless request never leases a sandbox, so neither on-open
    nor on-close runs for it (nor a VM restore in the micro-VM tier); the first body does."""
    listener = await load(built_plugins["redact"], "pattern=secret")
    made: list[object] = []
    real = listener.factory.new_sandbox

    async def counted(host: object) -> object:
        made.append(host)
        return await real(host)  # type: ignore[arg-type]

    monkeypatch.setattr(listener.factory, "new_sandbox", counted)
    metrics = Metrics()
    bodiless = HttpSession(listener, metrics=metrics)
    r = await reply(bodiless, req_headers(eos=True))
    assert r.request_headers.response.status == pb.CommonResponse.CONTINUE
    await reply(bodiless, resp_headers())
    await bodiless.aclose()
    assert made == [] and metrics.get("http_requests_total", listener="web") == 1
    with_body = HttpSession(listener, metrics=metrics)
    await reply(with_body, req_headers())
    assert made == []
    r = await reply(with_body, req_body(b"a secret", eos=True))
    assert len(made) == 1 and r.request_body.response.body_mutation.body == b"a ******"
    await with_body.aclose()
