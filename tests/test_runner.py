"""vmm/runner.py, the one async edge, with a scripted instance: where steps run,
how an Offload moves the rest of an entry, and what poisons a sandbox."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import pytest

from vmm.contract import DataEvent, Direction, Verdict
from vmm.runner import Offload, Runner
from vmm.sandbox import FaultKind, PluginFault

T = TypeVar("T")
WORKER = ThreadPoolExecutor(1, thread_name_prefix="runner-test")


class Scripted:
    """An Instance whose hooks do what the test says, recording where they ran."""

    def __init__(self, inline: bool = True) -> None:
        self.inline = inline
        self.ran: list[tuple[str, str]] = []  # (hook, thread name)
        self.open_does: Callable[[], None] = lambda: None
        self.data_does: Callable[[], Verdict] = Verdict.pass_
        self.close_does: Callable[[], None] = lambda: None
        self.releases = 0

    @property
    def identity(self) -> str:
        return "scripted"

    def runs_inline(self, size: int) -> bool:
        return self.inline

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        return WORKER.submit(fn)

    def _note(self, hook: str) -> None:
        self.ran.append((hook, threading.current_thread().name))

    def open(self, listener: str, config: str) -> None:
        self._note("open")
        self.open_does()

    def on_data(self, event: DataEvent) -> Verdict:
        self._note("data")
        return self.data_does()

    def close(self) -> None:
        self._note("close")
        self.close_does()

    def release(self) -> Future[None] | None:
        self.releases += 1
        return None


def _offload_once(hook: str, instance: Scripted) -> Callable[[], None]:
    """A step that runs out of its slice wherever it is not yet on the worker."""

    def step() -> None:
        if not threading.current_thread().name.startswith("runner-test"):
            raise Offload(lambda: instance._note(f"{hook}-resumed"))
        instance._note(f"{hook}-on-worker")

    return step


EVENT = DataEvent(Direction.READ, b"x", False)


async def test_short_steps_run_inline_and_open_is_folded_into_the_first_entry() -> None:
    instance = Scripted()
    runner = Runner(instance)
    await runner.open("l", "c")
    assert instance.ran == []  # deferred
    await runner.on_data(EVENT)
    main = threading.current_thread().name
    assert instance.ran == [("open", main), ("data", main)]
    assert runner.offloads == 0


async def test_an_offload_moves_the_rest_of_the_entry_and_a_second_one_stays_on_the_worker() -> None:
    instance = Scripted()
    instance.open_does = _offload_once("open", instance)

    def data() -> Verdict:  # runs out of a slice even on the worker (a tier that re-arms one)
        raise Offload(lambda: (instance._note("data-resumed"), Verdict.replace(b"done"))[1])

    instance.data_does = data
    runner = Runner(instance)
    await runner.open("l", "c")
    assert (await runner.on_data(EVENT)).data == b"done"
    hooks = [h for h, _ in instance.ran]
    # open paused inline, resumed on the worker; data then ran on the worker, and its
    # Offload did not escape the runner: it was resumed where it was.
    assert hooks == ["open", "open-resumed", "data", "data-resumed"]
    assert instance.ran[1][1].startswith("runner-test") and runner.offloads == 1
    assert runner.fault is None


async def test_an_unexpected_error_poisons_the_sandbox_as_an_internal_fault() -> None:
    instance = Scripted()

    def broken() -> Verdict:
        raise OSError("KVM_RUN: bad file descriptor")

    instance.data_does = broken
    runner = Runner(instance)
    with pytest.raises(PluginFault) as fault:
        await runner.on_data(EVENT)
    assert fault.value.kind is FaultKind.INTERNAL and "OSError" in fault.value.message
    with pytest.raises(PluginFault) as again:
        await runner.on_data(EVENT)
    assert "poisoned" in again.value.message
    assert await runner.close() is None and instance.releases == 1  # no on-close after a fault


async def test_cancellation_poisons_and_close_still_releases_once() -> None:
    instance = Scripted(inline=False)
    started, stop = threading.Event(), threading.Event()

    def slow() -> Verdict:
        started.set()
        stop.wait(5)
        return Verdict.pass_()

    instance.data_does = slow
    runner = Runner(instance)
    task = asyncio.create_task(runner.on_data(EVENT))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stop.set()
    assert runner.fault is not None and runner.fault.kind is FaultKind.INTERNAL
    assert await runner.close() is None
    assert await runner.close() is None
    assert instance.releases == 1
    assert [h for h, _ in instance.ran] == ["data"]  # on-close skipped


async def test_close_reports_an_on_close_fault_instead_of_raising_it() -> None:
    instance = Scripted()

    def failing_close() -> None:
        raise PluginFault(FaultKind.TRAP, "on-close: unreachable")

    instance.close_does = failing_close
    runner = Runner(instance)
    await runner.open("l", "c")
    await runner.on_data(EVENT)
    fault = await runner.close()
    assert fault is not None and fault.kind is FaultKind.TRAP
    assert instance.releases == 1
