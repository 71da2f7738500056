"""extproc/http_policy.py: a plugin's phases against the Envoy modes that serve it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from extproc import cli, plugins
from extproc.config import ConfigError, LightcellConfig
from extproc.http_policy import FilterMode, HttpOptions, override_for, parse_mode, phase_problems, sent_phases
from extproc.http_protocol import BodyMode, HeaderMode
from extproc.listener import FailureMode, ListenerPolicy, Protocol
from vmm.contract import HTTP_PHASES_ALL, HttpPhase
from vmm.policy import Grants, Limits, SandboxSpec, Tier

P = HttpPhase
BODIES = P.REQUEST_BODY | P.RESPONSE_BODY
HEADERS = P.REQUEST_HEADERS | P.RESPONSE_HEADERS
STREAMED, BUFFERED, DUPLEX = BodyMode.STREAMED, BodyMode.BUFFERED, BodyMode.FULL_DUPLEX_STREAMED
ALL_SEND = FilterMode(
    request_body=STREAMED, response_body=STREAMED, request_trailers=True, response_trailers=True
)


def test_parse_mode_resolves_envoys_defaults() -> None:
    assert parse_mode(None) == FilterMode()  # headers sent, no bodies, no trailers
    assert sent_phases(FilterMode()) == HEADERS
    mode = parse_mode(
        {"requestHeaderMode": "SKIP", "response_body_mode": 2, "request_trailer_mode": "SEND",
         "response_trailer_mode": "DEFAULT"}
    )  # fmt: skip
    assert mode == FilterMode(request_headers=False, response_body=BUFFERED, request_trailers=True)
    assert sent_phases(ALL_SEND) == HTTP_PHASES_ALL
    for bad in (
        {"request_body_mode": "GRPC"},
        {"request_header_mode": 7},
        {"response_body_mode": True},
        "SEND",
    ):
        assert parse_mode(bad) is None


@pytest.mark.parametrize(
    ("options", "wanted", "warned", "refused"),
    [
        # Envoy sends the headers and trailers, the plugin wants the bodies: a warning.
        (HttpOptions(modes=(ALL_SEND,)), BODIES, "request headers, request trailers, response headers, "
         "response trailers", None),
        # ... that Lightcell skips by mode_override: nothing to say.
        (HttpOptions(modes=(ALL_SEND,), mode_override=True), BODIES, None, None),
        # A wanted body Envoy never sends: refused; with mode_override it is asked for.
        (HttpOptions(modes=(FilterMode(),)), P.RESPONSE_BODY, "request headers, response headers",
         "response body"),
        (HttpOptions(modes=(FilterMode(),), mode_override=True), P.RESPONSE_BODY, None, None),
        # The request headers can never be asked for.
        (HttpOptions(modes=(FilterMode(request_headers=False),), mode_override=True), P.REQUEST_HEADERS,
         "response headers", "request headers"),
        # A full-duplex body: no override, so wanted trailers are refused.
        (HttpOptions(modes=(FilterMode(request_body=DUPLEX, request_trailers=True),), mode_override=True),
         P.REQUEST_BODY | P.RESPONSE_TRAILERS, "request headers, request trailers, response headers",
         "response trailers"),
        # A BUFFERED body hook may change the headers: sending them is not a waste.
        (HttpOptions(modes=(FilterMode(request_body=BUFFERED, response_body=BUFFERED),)), BODIES, None, None),
        # Every mode counts (a route's override): the second one lacks the body.
        (HttpOptions(modes=(FilterMode(response_body=STREAMED), FilterMode())), P.RESPONSE_HEADERS
         | P.RESPONSE_BODY, "request headers", "response body"),
    ],
)  # fmt: skip
def test_phase_problems(
    options: HttpOptions, wanted: HttpPhase, warned: str | None, refused: str | None
) -> None:
    warnings, errors = phase_problems(options, wanted)
    if warned is None:
        assert warnings == []
    else:
        assert warnings and f"Envoy sends {warned} under" in warnings[0], warnings  # one per mode
    if refused is None:
        assert errors == []
    else:
        assert len(errors) == 1 and f"the plugin wants {refused}, which Envoy never sends" in errors[0], (
            errors
        )


def test_override_for_sets_every_field_explicitly() -> None:
    options = HttpOptions(modes=(ALL_SEND,), mode_override=True)
    o = override_for(options, P.REQUEST_BODY | P.RESPONSE_TRAILERS, STREAMED, STREAMED)
    assert o is not None
    assert (o.response_header_mode, o.request_body_mode, o.response_body_mode) == (
        HeaderMode.SKIP,
        STREAMED,
        0,
    )
    assert (o.request_trailer_mode, o.response_trailer_mode) == (HeaderMode.SKIP, HeaderMode.SEND)
    # Unknown which of several modes applies: sent even if it may change nothing.
    several = HttpOptions(modes=(ALL_SEND, FilterMode()), mode_override=True)
    assert override_for(several, HTTP_PHASES_ALL, STREAMED, STREAMED) is not None
    assert override_for(options, HTTP_PHASES_ALL, STREAMED, STREAMED) is None  # nothing to change
    assert override_for(options, BODIES, DUPLEX, NONE_) is None
    assert override_for(HttpOptions(modes=(ALL_SEND,)), BODIES, STREAMED, STREAMED) is None


NONE_ = BodyMode.NONE


async def test_load_refuses_a_wanted_phase_envoy_never_sends_and_warns_for_ignored_ones(
    built_plugins: dict[str, Path], tmp_path: Path
) -> None:
    """redact wants the bodies; under headers-only processing the policy cannot work."""

    def policy(name: str, modes: tuple[FilterMode, ...]) -> ListenerPolicy:
        spec = SandboxSpec(
            name, str(built_plugins["redact"]), Grants(frozenset()), Limits(), plugin_config="pattern=x"
        )
        return ListenerPolicy(
            name,
            spec,
            Tier.WASMTIME,
            FailureMode.CLOSE,
            Protocol.HTTP,
            f"listener {name!r}",
            HttpOptions(modes=modes),
        )

    ok = LightcellConfig(tmp_path / "envoy.yaml", {}, http_listeners={"web": policy("web", (ALL_SEND,))})
    loaded = await plugins.load_http_all(ok)
    try:
        (warning,) = loaded.warnings
        assert "listener 'web'" in warning and "request headers, request trailers" in warning
    finally:
        await plugins.close_http(loaded)
    bad = LightcellConfig(tmp_path / "envoy.yaml", {}, http_listeners={"web": policy("web", (FilterMode(),))})
    with pytest.raises(ConfigError, match="listener 'web': the plugin wants request body, response body"):
        await plugins.load_http_all(bad)


def _example(tmp_path: Path, built_plugins: dict[str, Path], edit: dict[str, str]) -> Path:
    """envoy-config/http.yaml copied with its plugin beside it, some lines replaced."""
    text = (Path(__file__).resolve().parent.parent / "envoy-config" / "http.yaml").read_text()
    for old, new in edit.items():
        assert old in text, old
        text = text.replace(old, new)
    (tmp_path / "plugins" / "examples" / "build").mkdir(parents=True)
    shutil.copy(built_plugins["redact"], tmp_path / "plugins" / "examples" / "build" / "redact.wasm")
    (tmp_path / "envoy-config").mkdir()
    path = tmp_path / "envoy-config" / "http.yaml"
    path.write_text(text)
    return path


def test_check_prints_phase_warnings_and_refuses_missing_phases(
    tmp_path: Path, built_plugins: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    def check(where: str, edit: dict[str, str]) -> int:
        return cli.main(["check", "--envoy-config", str(_example(tmp_path / where, built_plugins, edit))])

    no_override = {"allow_mode_override: true": "allow_mode_override: false"}
    assert check("a", {}) == 0
    assert "warning:" not in capsys.readouterr().out  # Lightcell skips what redact does not want
    assert check("b", no_override) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("Envoy sends request headers under" in w for w in warnings), warnings
    no_bodies = {**no_override, "request_body_mode: STREAMED": "request_body_mode: NONE"}
    assert check("c", no_bodies) == 1
    assert "the plugin wants request body, which Envoy never sends" in capsys.readouterr().err
