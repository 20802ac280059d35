"""The reaper's retry bookkeeping against races with its own sweep (a real Reaper, a store
stand-in whose read can be held open, the in-memory fake provider)."""

from __future__ import annotations

import asyncio
from typing import Any

from skyjobs.controller import store as st
from skyjobs.controller.reaper import Reaper
from skyjobs.providers.fake import FakeProvider
from skyjobs.states import AttemptStatus, EndReason


def attempt(attempt_id: int = 1) -> st.Attempt:
    return st.Attempt(
        id=attempt_id, job_id=1, n=1, status=AttemptStatus.ENDED, cloud="local",
        region="local", zone="local-a", instance_type="local.cpu2", use_spot=True,
        price_per_hour=0.03, num_nodes=1, instance_ids=[f"sjx-1-{attempt_id}-0"],
        created_at=0.0, running_at=None, ended_at=1.0, end_reason=EndReason.LAUNCH_ERROR,
        exit_code=None, notice_at=None, notice_deadline=None, released=False,
        ondemand_price=None, task_index=0)


class HeldStore:
    """``attempts_to_release`` answers what ``rows`` held when the read began, but only once
    ``let_go`` is set: a read that started before the attempt ended."""

    def __init__(self) -> None:
        self.rows: list[st.Attempt] = []
        self.reading = asyncio.Event()
        self.let_go = asyncio.Event()
        self.sync = self

    def attempts_to_release(self) -> list[st.Attempt]:
        return list(self.rows)

    async def call(self, fn: Any, *args: Any) -> Any:
        snapshot = fn(*args)
        self.reading.set()
        await self.let_go.wait()
        return snapshot


async def test_a_retry_scheduled_during_a_sweep_is_not_forgotten() -> None:
    store = HeldStore()
    reaper = Reaper(store, {"local": FakeProvider()}, on_released=lambda a: None)  # type: ignore[arg-type]
    sweep = asyncio.create_task(reaper.sweep())
    await store.reading.wait()  # the sweep read the store: attempt 1 had not ended yet
    # The runner ends attempt 1 and its direct release fails: a retry is scheduled.
    reaper._failed(attempt(1), "terminate failed")
    store.let_go.set()
    await sweep
    # The stale read must not count as "released by someone else".
    assert reaper.pending == 1


async def test_a_retry_for_an_attempt_released_elsewhere_is_dropped() -> None:
    store = HeldStore()
    store.let_go.set()
    reaper = Reaper(store, {"local": FakeProvider()}, on_released=lambda a: None)  # type: ignore[arg-type]
    reaper._failed(attempt(1), "terminate failed")
    await reaper.sweep()  # the store no longer lists it: someone else released it
    assert reaper.pending == 0


async def test_a_wake_during_a_sweep_starts_another_at_once() -> None:
    store = HeldStore()
    reaper = Reaper(store, {"local": FakeProvider()}, on_released=lambda a: None)  # type: ignore[arg-type]
    task = reaper.start()
    try:
        await store.reading.wait()  # the first sweep is under way
        store.reading.clear()
        reaper.wake()  # an attempt just ended
        store.let_go.set()
        # Without the wake surviving the sweep this would wait SCAN_INTERVAL (30 s).
        await asyncio.wait_for(store.reading.wait(), 2.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
