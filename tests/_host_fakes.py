"""Fakes for the host side of the capability boundary, shared by the tier tests."""

from __future__ import annotations

from vmm.policy import EgressTarget


class Sent:
    """A DatagramSender that records what it was asked to send."""

    def __init__(self) -> None:
        self.datagrams: list[tuple[EgressTarget, bytes]] = []

    def send(self, target: EgressTarget, payload: bytes) -> bool:
        self.datagrams.append((target, payload))
        return True
