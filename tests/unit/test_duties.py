"""Periodic duties: failures and skips are visible, shutdown stops and awaits every run."""

from __future__ import annotations

import asyncio
import logging

import pytest

from skyjobs.controller.duties import Duties
from skyjobs.controller.metrics import Metrics


def runs(metrics: Metrics, duty: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value("skyjobs_duty_runs_total",
                                              {"duty": duty, "outcome": outcome})
    return value or 0.0


async def test_a_failing_duty_is_logged_counted_and_runs_again(
        caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    duties = Duties(metrics)
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the cloud said no")

    duties.add("flaky", flaky, 0.05, now=True)
    duties.start()
    try:
        for _ in range(200):
            if duties.stats["flaky"].runs >= 3:
                break
            await asyncio.sleep(0.02)
    finally:
        await duties.stop()
    stats = duties.stats["flaky"]
    assert stats.runs >= 3 and stats.failures == 1
    assert runs(metrics, "flaky", "failed") == 1 and runs(metrics, "flaky", "ok") >= 2


async def test_shutdown_cancels_and_awaits_a_running_duty_quietly(
        caplog: pytest.LogCaptureFixture) -> None:
    duties = Duties(Metrics())
    started, finished = asyncio.Event(), asyncio.Event()

    async def slow() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            finished.set()

    duties.add("slow", slow, 3600, now=True)
    with caplog.at_level(logging.DEBUG):
        duties.start()
        await asyncio.wait_for(started.wait(), 5)
        await duties.stop(grace_s=5)
        assert finished.is_set()  # cancelled and awaited, not left running
        await asyncio.sleep(0.05)  # APScheduler's own callbacks run now, if any
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]


async def test_a_second_stop_request_forces(tmp_path: object) -> None:
    from pathlib import Path

    from skyjobs.config import load_config
    from skyjobs.controller.daemon import Controller
    from skyjobs.providers.fake import FakeProvider

    assert isinstance(tmp_path, Path)
    ctl = Controller(load_config(state_dir=tmp_path / "state", port=0),
                     providers={"local": FakeProvider()})
    await ctl.start()
    ctl.request_stop()
    assert not ctl._forced  # noqa: SLF001 - the flag is the behaviour under test
    ctl.request_stop()
    assert ctl._forced  # noqa: SLF001
    await ctl.shutdown()
