"""What an HTTP policy knows of the Envoy filters that serve it, and what follows for phases.

`HttpOptions` rides on an HTTP `ListenerPolicy`: the policy's own HTTP keys
(`close_status`, `max_header_bytes`) and, read from the Envoy file by
extproc.config, every `processing_mode` the policy can be served under (the
filter's, or a route's ExtProcPerRoute override) and whether Lightcell may
send `mode_override`.

Phases (a plugin's `wanted-phases`, read at load) against those modes:
`phase_problems` gives the warnings (Envoy sends phases the plugin ignores;
Lightcell answers them unchanged without entering the sandbox) and the errors
(the plugin wants a phase Envoy never sends and Lightcell cannot ask for it).
`override_for` is the `mode_override` sent in the reply to the request
headers so that Envoy sends exactly the phases the plugin wants.

Envoy 1.40 facts used (shared/notes/envoy-ext-proc.md): `mode_override` is read
only with `allow_mode_override`, never with
`send_body_without_waiting_for_header_response`, and with a non-empty
`allowed_override_modes` only if it matches one entry (Lightcell then sends
none); `request_header_mode` cannot be overridden; switching to or from
FULL_DUPLEX_STREAMED hangs (envoy#44202), so no override is sent on a stream
with a full-duplex body; header and trailer modes are sent explicitly (SEND or
SKIP), never DEFAULT (in an override DEFAULT is not "unchanged": Envoy replaces
the whole mode, and reads DEFAULT as headers SEND, trailers SKIP).

Headers a plugin does not want are still sent where its body hook may change
them: a BUFFERED or BUFFERED_PARTIAL body reply can change the headers only
if Envoy sent them (http_protocol.HttpStream.headers_held).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from extproc.http_protocol import DEFAULT_MAX_HEADER_BYTES, BodyMode, HeaderMode, ModeOverride
from vmm.contract import HttpPhase

__all__ = [
    "DEFAULT_CLOSE_STATUS",
    "DEFAULT_MAX_HEADER_BYTES",
    "FilterMode",
    "HttpOptions",
    "override_for",
    "parse_mode",
    "phase_problems",
    "sent_phases",
]

DEFAULT_CLOSE_STATUS = 500
"""What failure mode close answers by default (Envoy's own status_on_error default)."""

_HEADER_NAMES = {"DEFAULT": HeaderMode.DEFAULT, "SEND": HeaderMode.SEND, "SKIP": HeaderMode.SKIP}


@dataclass(frozen=True, slots=True)
class FilterMode:
    """One processing_mode as Envoy applies it (DEFAULT resolved: headers sent, trailers not)."""

    request_headers: bool = True
    response_headers: bool = True
    request_body: BodyMode = BodyMode.NONE
    response_body: BodyMode = BodyMode.NONE
    request_trailers: bool = False
    response_trailers: bool = False

    @property
    def duplex(self) -> bool:
        return BodyMode.FULL_DUPLEX_STREAMED in (self.request_body, self.response_body)


@dataclass(frozen=True, slots=True)
class HttpOptions:
    close_status: int = DEFAULT_CLOSE_STATUS
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    modes: tuple[FilterMode, ...] = ()
    """Every processing_mode a stream of this policy may arrive under (empty: not read)."""
    mode_override: bool = False
    """Every filter serving the policy has allow_mode_override, no allowed_override_modes and no
    send_body_without_waiting_for_header_response: Envoy would apply a mode_override."""


def _header_mode(value: Any) -> HeaderMode | None:
    if isinstance(value, str):
        return _HEADER_NAMES.get(value)
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1, 2):
        return HeaderMode(value)
    return HeaderMode.DEFAULT if value is None else None


def _body_mode(value: Any) -> BodyMode | None:
    if value is None:
        return BodyMode.NONE
    if isinstance(value, str):
        return BodyMode.__members__.get(value)
    if isinstance(value, int) and not isinstance(value, bool) and value in {m.value for m in BodyMode}:
        return BodyMode(value)
    return None


def parse_mode(mode: Any) -> FilterMode | None:
    """An Envoy processing_mode mapping (proto or JSON names) -> FilterMode; None if unreadable
    (Envoy's own validation reports it)."""
    if mode is None:
        return FilterMode()
    if not isinstance(mode, Mapping):
        return None

    def get(name: str) -> Any:
        camel = name.split("_")[0] + "".join(p.title() for p in name.split("_")[1:])
        return mode.get(name, mode.get(camel))

    headers = [_header_mode(get(f"{d}_header_mode")) for d in ("request", "response")]
    trailers = [_header_mode(get(f"{d}_trailer_mode")) for d in ("request", "response")]
    bodies = [_body_mode(get(f"{d}_body_mode")) for d in ("request", "response")]
    if None in headers or None in trailers or None in bodies:
        return None
    return FilterMode(
        request_headers=headers[0] is not HeaderMode.SKIP,
        response_headers=headers[1] is not HeaderMode.SKIP,
        request_body=bodies[0] or BodyMode.NONE,
        response_body=bodies[1] or BodyMode.NONE,
        request_trailers=trailers[0] is HeaderMode.SEND,
        response_trailers=trailers[1] is HeaderMode.SEND,
    )


def sent_phases(mode: FilterMode) -> HttpPhase:
    """The phases Envoy sends under `mode`."""
    sent = HttpPhase(0)
    for on, phase in (
        (mode.request_headers, HttpPhase.REQUEST_HEADERS),
        (mode.response_headers, HttpPhase.RESPONSE_HEADERS),
        (mode.request_body is not BodyMode.NONE, HttpPhase.REQUEST_BODY),
        (mode.response_body is not BodyMode.NONE, HttpPhase.RESPONSE_BODY),
        (mode.request_trailers, HttpPhase.REQUEST_TRAILERS),
        (mode.response_trailers, HttpPhase.RESPONSE_TRAILERS),
    ):
        if on:
            sent |= phase
    return sent


def _names(phases: HttpPhase) -> str:
    return ", ".join(p.name.lower().replace("_", " ") for p in HttpPhase if p & phases and p.name)


_HELD = (BodyMode.BUFFERED, BodyMode.BUFFERED_PARTIAL)


def _needed(wanted: HttpPhase, request_body: BodyMode, response_body: BodyMode) -> HttpPhase:
    """`wanted` plus the headers a wanted body hook needs sent to be able to change them."""
    if wanted & HttpPhase.REQUEST_BODY and request_body in _HELD:
        wanted |= HttpPhase.REQUEST_HEADERS
    if wanted & HttpPhase.RESPONSE_BODY and response_body in _HELD:
        wanted |= HttpPhase.RESPONSE_HEADERS
    return wanted


def can_override(options: HttpOptions, mode: FilterMode) -> bool:
    """Whether Lightcell sends (and Envoy applies) a mode_override on a stream under `mode`."""
    return options.mode_override and mode.request_headers and not mode.duplex


def phase_problems(options: HttpOptions, wanted: HttpPhase) -> tuple[list[str], list[str]]:
    """(warnings, errors) for a plugin wanting `wanted` under every mode of `options`."""
    warnings: list[str] = []
    errors: list[str] = []
    for mode in options.modes:
        sent = sent_phases(mode)
        if can_override(options, mode):
            # Everything but the request headers can be asked for or skipped; a full-duplex
            # body never reaches here.
            missing = wanted & HttpPhase.REQUEST_HEADERS & ~sent
            ignored = HttpPhase(0)
        else:
            missing = wanted & ~sent
            ignored = sent & ~_needed(wanted, mode.request_body, mode.response_body)
        if missing:
            errors.append(
                f"the plugin wants {_names(missing)}, which Envoy never sends under {_describe(mode)} "
                "and Lightcell cannot ask for (allow_mode_override false, request headers skipped, "
                "or a FULL_DUPLEX_STREAMED body): change the filter's processing_mode"
            )
        if ignored:
            warnings.append(
                f"Envoy sends {_names(ignored)} under {_describe(mode)}, which the plugin does not "
                "want: Lightcell answers them unchanged (set them to SKIP/NONE, or allow_mode_override: "
                "true so Lightcell skips them)"
            )
    return list(dict.fromkeys(warnings)), list(dict.fromkeys(errors))


def _describe(mode: FilterMode) -> str:
    h = {True: "SEND", False: "SKIP"}
    return (
        f"processing_mode {{request_header_mode: {h[mode.request_headers]}, response_header_mode: "
        f"{h[mode.response_headers]}, request_body_mode: {mode.request_body.name}, response_body_mode: "
        f"{mode.response_body.name}, request_trailer_mode: {h[mode.request_trailers]}, "
        f"response_trailer_mode: {h[mode.response_trailers]}}}"
    )


def _header(on: bool) -> HeaderMode:
    return HeaderMode.SEND if on else HeaderMode.SKIP


def _body(wanted: bool, current: BodyMode) -> BodyMode:
    if not wanted:
        return BodyMode.NONE
    return current if current is not BodyMode.NONE else BodyMode.STREAMED


def override_for(
    options: HttpOptions, wanted: HttpPhase, request_body: BodyMode, response_body: BodyMode
) -> ModeOverride | None:
    """The mode_override for the reply to the request headers: the phases after them exactly as
    the plugin wants them (a wanted body Envoy does not send is asked for STREAMED; a body Envoy
    sends keeps its mode). None when no override may be sent, or when it would change nothing
    under the policy's one known mode. `request_body`/`response_body`: the stream's modes now."""
    if not options.mode_override or BodyMode.FULL_DUPLEX_STREAMED in (request_body, response_body):
        return None
    request_after = _body(bool(wanted & HttpPhase.REQUEST_BODY), request_body)
    response_after = _body(bool(wanted & HttpPhase.RESPONSE_BODY), response_body)
    needed = _needed(wanted, request_after, response_after)
    override = ModeOverride(
        response_header_mode=_header(bool(needed & HttpPhase.RESPONSE_HEADERS)),
        request_body_mode=request_after,
        response_body_mode=response_after,
        request_trailer_mode=_header(bool(wanted & HttpPhase.REQUEST_TRAILERS)),
        response_trailer_mode=_header(bool(wanted & HttpPhase.RESPONSE_TRAILERS)),
    )
    if len(options.modes) == 1:
        mode = options.modes[0]
        now = FilterMode(
            request_headers=True,
            response_headers=mode.response_headers,
            request_body=request_body,
            response_body=response_body,
            request_trailers=mode.request_trailers,
            response_trailers=mode.response_trailers,
        )
        after = FilterMode(
            request_headers=True,
            response_headers=override.response_header_mode is HeaderMode.SEND,
            request_body=override.request_body_mode,
            response_body=override.response_body_mode,
            request_trailers=override.request_trailer_mode is HeaderMode.SEND,
            response_trailers=override.response_trailer_mode is HeaderMode.SEND,
        )
        if now == after:
            return None
    return override
