"""``ProcessRun.start_viewer`` when the run ends around it: a clean ``RunEnded``, never a RuntimeError."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from dragonfork.process.progress import LogRing, ProgressParser
from dragonfork.process.runner import ProcessRun, RunEnded


async def answer_after(
    delay: float, stream: object, offer: str, *, task_status: trio.TaskStatus[str]
) -> None:
    await trio.sleep(delay)
    task_status.started(f"answer to {offer}")
    await trio.sleep_forever()


def new_run(nursery: trio.Nursery) -> ProcessRun:
    return ProcessRun(nursery=nursery, parser=ProgressParser(), log=LogRing(10))


async def test_a_viewer_starts_in_a_live_run() -> None:
    async with trio.open_nursery() as nursery:
        assert await new_run(nursery).start_viewer(partial(answer_after, 0), "offer") == "answer to offer"
        nursery.cancel_scope.cancel()


async def test_a_run_that_is_ending_refuses_new_viewers() -> None:
    async with trio.open_nursery() as nursery:
        run = new_run(nursery)
        nursery.cancel_scope.cancel()
        with pytest.raises(RunEnded):
            await run.start_viewer(partial(answer_after, 0), "offer")


async def test_a_run_that_ends_while_the_viewer_starts_raises_run_ended() -> None:
    async with trio.open_nursery() as outer, trio.open_nursery() as run_nursery:
        run = new_run(run_nursery)
        outer.start_soon(_cancel_soon, run_nursery.cancel_scope)
        with pytest.raises(RunEnded):
            await run.start_viewer(partial(answer_after, 1), "offer")


async def _cancel_soon(scope: trio.CancelScope) -> None:
    await trio.sleep(0.05)
    scope.cancel()
