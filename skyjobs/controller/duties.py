"""Periodic duties (instance poll, orphan sweep, price poll) on APScheduler, watched.

APScheduler coalesces missed runs and never runs one duty twice at once, which is what a
poll wants. Around it: every run is a tracked task, so shutdown stops the scheduler and then
cancels and awaits what is still running (nothing outlives the controller, no traceback
escapes through stdlib logging); a run that fails, and a run skipped because the last one is
still going or was missed, is logged through structlog and counted, never silently dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from skyjobs.controller.metrics import Metrics

log = structlog.get_logger("skyjobs.duties")

Duty = Callable[[], Awaitable[None]]


@dataclass
class DutyStats:
    """What a duty did so far (also what tests and benchmarks wait on)."""

    runs: int = 0  # completed, successfully or not
    failures: int = 0
    skipped: int = 0
    seconds: float = 0.0  # total time in completed runs
    done: asyncio.Event | None = None  # set after each completed run

    def __post_init__(self) -> None:
        self.done = asyncio.Event()


def _quiet_logger() -> logging.Logger:
    # What APScheduler would log itself (skips, misfires) is reported below through
    # structlog and metrics; its own stdlib lines would only duplicate them unformatted.
    quiet = logging.getLogger("skyjobs.apscheduler")
    quiet.propagate = False
    if not quiet.handlers:  # one per process, however many controllers a test starts
        quiet.addHandler(logging.NullHandler())
    return quiet


class Duties:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._scheduler = AsyncIOScheduler(logger=_quiet_logger())
        self._running: set[asyncio.Task[None]] = set()
        self.stats: dict[str, DutyStats] = {}
        self._scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)

    def add(self, name: str, duty: Duty, every_s: float, *, now: bool = False,
            only_if: Callable[[], Awaitable[bool]] | None = None) -> None:
        """``only_if``: asked before each run (a singleton duty's leadership); a run it
        refuses is skipped, not failed."""
        if only_if is not None:
            inner, check = duty, only_if

            async def duty() -> None:
                if await check():
                    await inner()
        self._scheduler.add_job(
            self._wrap(name, duty), "interval", id=name, name=name, seconds=every_s,
            max_instances=1, coalesce=True,
            misfire_grace_time=max(1, int(every_s)),
            **({"next_run_time": datetime.now(UTC)} if now else {}))
        self.metrics.duty_outcome(name, "ok", count=0)
        self.stats[name] = DutyStats()

    def _wrap(self, name: str, duty: Duty) -> Duty:
        async def run() -> None:
            task = asyncio.current_task()
            assert task is not None
            self._running.add(task)
            stats, started = self.stats[name], time.monotonic()
            try:
                await duty()
                self.metrics.duty_outcome(name, "ok")
            except asyncio.CancelledError:
                return  # shutdown: the outermost frame of this run, nothing to clean up
            except Exception as err:  # noqa: BLE001 - the next run retries; make it visible
                stats.failures += 1
                self.metrics.duty_outcome(name, "failed")
                log.error("periodic duty failed", duty=name, error=f"{type(err).__name__}: "
                          f"{err}", exc_info=True)
            finally:
                self._running.discard(task)
            stats.runs += 1
            stats.seconds += time.monotonic() - started
            assert stats.done is not None
            stats.done.set()
        return run

    def _skipped(self, event: JobExecutionEvent) -> None:
        why = "missed" if event.code == EVENT_JOB_MISSED else "still_running"
        self.stats[event.job_id].skipped += 1
        self.metrics.duty_outcome(event.job_id, why)
        log.warning("periodic duty skipped", duty=event.job_id, why=why)

    def start(self) -> None:
        self._scheduler.start()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop scheduling, then cancel and await the runs still going."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        running = list(self._running)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=grace_s)
