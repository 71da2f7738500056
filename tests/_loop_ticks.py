"""Counts how often the event loop got to run a task: proof that nothing held it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass
class Ticks:
    count: int = 0


@contextlib.asynccontextmanager
async def loop_ticks(period: float = 0.005) -> AsyncIterator[Ticks]:
    """A task that ticks every `period` seconds while the block runs."""
    ticks = Ticks()

    async def tick() -> None:
        while True:
            await asyncio.sleep(period)
            ticks.count += 1

    task = asyncio.create_task(tick())
    try:
        yield ticks
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
