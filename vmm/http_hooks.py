"""The six http-filter hooks of vmm.runner.HttpInstance, each naming its phase once.

Every tier's HTTP instance has the same three shapes of hook (headers with
attributes, a body chunk, trailers); it implements those and inherits the six
public hooks from here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from vmm.contract import HttpPhase
from vmm.http_abi import Header, HttpDecision

__all__ = ["Attributes", "PhaseHooks"]

Attributes = Sequence[tuple[str, str]]


class PhaseHooks(ABC):
    @abstractmethod
    def _headers(
        self, phase: HttpPhase, headers: Sequence[Header], attributes: Attributes, eos: bool
    ) -> HttpDecision: ...

    @abstractmethod
    def _body(self, phase: HttpPhase, body: bytes, eos: bool) -> HttpDecision: ...

    @abstractmethod
    def _trailers(self, phase: HttpPhase, trailers: Sequence[Header]) -> HttpDecision: ...

    def request_headers(
        self, headers: Sequence[Header], attributes: Attributes, end_of_stream: bool
    ) -> HttpDecision:
        return self._headers(HttpPhase.REQUEST_HEADERS, headers, attributes, end_of_stream)

    def request_body(self, body: bytes, end_of_stream: bool) -> HttpDecision:
        return self._body(HttpPhase.REQUEST_BODY, body, end_of_stream)

    def request_trailers(self, trailers: Sequence[Header]) -> HttpDecision:
        return self._trailers(HttpPhase.REQUEST_TRAILERS, trailers)

    def response_headers(
        self, headers: Sequence[Header], attributes: Attributes, end_of_stream: bool
    ) -> HttpDecision:
        return self._headers(HttpPhase.RESPONSE_HEADERS, headers, attributes, end_of_stream)

    def response_body(self, body: bytes, end_of_stream: bool) -> HttpDecision:
        return self._body(HttpPhase.RESPONSE_BODY, body, end_of_stream)

    def response_trailers(self, trailers: Sequence[Header]) -> HttpDecision:
        return self._trailers(HttpPhase.RESPONSE_TRAILERS, trailers)
