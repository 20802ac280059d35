"""The event-loop lag monitor: a blocked loop shows in its samples, its gauges and /metrics."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from skyjobs.controller.looplag import LoopLagMonitor
from skyjobs.controller.metrics import Metrics
from tests.unit.harness import Harness, until

BLOCK_S = 0.2


def samples(body: bytes) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, s.labels.get("le", ""))] = s.value
    return out


def lag_over(got: dict[tuple[str, str], float], seconds: str) -> float:
    """Samples above a bucket bound: the total count less that bucket's cumulative count."""
    return (got[("skyjobs_event_loop_lag_seconds_count", "")]
            - got[("skyjobs_event_loop_lag_seconds_bucket", seconds)])


async def test_a_blocked_loop_moves_the_max_p99_and_histogram() -> None:
    metrics = Metrics()
    monitor = LoopLagMonitor(interval=0.02, window=2.0)
    metrics.watch_loop(monitor)
    task = monitor.start()
    try:
        await until("samples", lambda: monitor.samples >= 10)
        before = samples(metrics.render({}, 0, 0.0, 0.0)[0])
        time.sleep(BLOCK_S)  # noqa: ASYNC251 - the point: hold the event loop
        await until("the sample after the block", lambda: monitor.max() > 0)
        seen = monitor.samples
        await until("a few more samples", lambda: monitor.samples >= seen + 3)
        after = samples(metrics.render({}, 0, 0.0, 0.0)[0])
    finally:
        task.cancel()
    # The block is seen whole, less at most one sampling interval.
    assert monitor.max() >= BLOCK_S - 0.02 - 0.005
    assert monitor.quantile(0.99) >= BLOCK_S - 0.025  # few samples in the window: p99 = max
    assert after[("skyjobs_event_loop_lag_max_seconds", "")] >= BLOCK_S - 0.025
    assert after[("skyjobs_event_loop_lag_p99_seconds", "")] >= BLOCK_S - 0.025
    assert lag_over(after, "0.1") >= lag_over(before, "0.1") + 1
    assert after[("skyjobs_event_loop_lag_seconds_count", "")] > before[
        ("skyjobs_event_loop_lag_seconds_count", "")]


async def test_the_window_forgets_an_old_block() -> None:
    monitor = LoopLagMonitor(interval=0.01, window=0.05)  # a ring of 5 samples
    monitor.observe(0.5)
    assert monitor.max() == 0.5
    for _ in range(5):
        monitor.observe(0.001)
    assert monitor.max() == 0.001
    assert monitor.quantile(0.5) == 0.001


def test_nearest_rank_quantiles() -> None:
    monitor = LoopLagMonitor(interval=1.0, window=100.0)
    for i in range(1, 101):
        monitor.observe(i / 1000)
    assert monitor.quantile(0.99) == pytest.approx(0.099)
    assert monitor.quantile(0.5) == pytest.approx(0.050)
    assert LoopLagMonitor().quantile(0.99) == 0.0


async def test_the_controller_serves_the_gauge_and_watches_the_task(h: Harness) -> None:
    task = h.ctl.loop_lag.task
    assert task is not None and task.get_name() == "loop-lag" and not task.done()
    await until("samples", lambda: h.ctl.loop_lag.samples >= 3)
    async with h.http.get(f"{h.ctl.url}/metrics",
                          headers={"Authorization": f"Bearer {h.ctl.token}"}) as resp:
        body = await resp.read()
    got = samples(body)
    assert got[("skyjobs_event_loop_lag_seconds_count", "")] >= 3
    assert ("skyjobs_event_loop_lag_max_seconds", "") in got
    assert ("skyjobs_event_loop_lag_p99_seconds", "") in got
    await asyncio.sleep(0)
