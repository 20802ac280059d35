"""The job runners: one asyncio task per live job, restarted when it fails.

A runner that fails on a cloud error is restarted with backoff, for ever (an outage is not
the job's fault); one that crashes on a bug RUNNER_CRASH_BUDGET times in a row (each within
RUNNER_STABLE_AFTER of its restart) fails its job with the error instead of looping. The
reaper then releases whatever the job still had.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog

from skyjobs.controller.messages import Message
from skyjobs.controller.runner import JobRunner
from skyjobs.controller.store.leases import FENCE
from skyjobs.exceptions import (
    IllegalTransitionError,
    LeaseLostError,
    ProviderError,
    StoreUnavailableError,
)
from skyjobs.states import JobStatus

if TYPE_CHECKING:
    from skyjobs.controller.services import Services

log = structlog.get_logger("skyjobs.runners")

RUNNER_RESTART_DELAY = 5.0
RUNNER_MAX_DELAY = 60.0
RUNNER_CRASH_BUDGET = 5
RUNNER_STABLE_AFTER = 600.0


class Runners:
    def __init__(self) -> None:
        self.jobs: dict[int, JobRunner] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self._services: Services | None = None

    def attach(self, services: Services) -> None:
        self._services = services

    def __len__(self) -> int:
        return len(self.jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.jobs

    def start(self, job_id: int) -> None:
        if job_id in self.jobs:
            return
        assert self._services is not None, "attach() first"
        runner = JobRunner(self._services, job_id)
        self.jobs[job_id] = runner
        self.tasks[job_id] = asyncio.create_task(self._run(runner), name=f"job-{job_id}")

    def post(self, job_id: int, msg: Message) -> None:
        runner = self.jobs.get(job_id)
        if runner is not None:
            runner.post(msg)
        elif self._services is not None:  # another controller runs it (or none: dropped)
            self._services.forward(job_id, msg)

    def stand_down(self, job_id: int) -> None:
        """This controller no longer holds the job's lease: stop its runner without
        touching the job (its state is in the store, for the new owner)."""
        task = self.tasks.get(job_id)
        if task is not None:
            task.cancel()
        if self._services is not None:
            self._services.sessions.forget_job(job_id)

    async def _run(self, runner: JobRunner) -> None:
        crashes = provider_errors = 0
        sv = self._services
        assert sv is not None
        try:
            try:
                # A token of its own for this runner: every write it makes is fenced by it,
                # so it never overwrites a controller that took the job over (store.leases).
                FENCE.set(await sv.store.call(sv.store.sync.own_job, sv.member,
                                              runner.job_id))
            except (LeaseLostError, StoreUnavailableError) as err:
                self._hand_over(runner, err)  # (the lease keeper retries an idle lease)
                return
            while True:
                started = time.monotonic()
                try:
                    await runner.run()
                    return
                except LeaseLostError as err:
                    self._hand_over(runner, err)
                    return
                except StoreUnavailableError as err:
                    stable = time.monotonic() - started > RUNNER_STABLE_AFTER
                    provider_errors = 1 if stable else provider_errors + 1
                    runner.log.warning("store unavailable; retrying", error=str(err))
                except ProviderError as err:
                    stable = time.monotonic() - started > RUNNER_STABLE_AFTER
                    provider_errors = 1 if stable else provider_errors + 1
                    runner.log.warning("provider call failed; retrying", error=str(err))
                except Exception as err:  # noqa: BLE001 - one job's bug must not stop the others
                    stable = time.monotonic() - started > RUNNER_STABLE_AFTER
                    crashes = 1 if stable else crashes + 1
                    runner.log.exception("job runner crashed", crashes=crashes)
                    if crashes >= RUNNER_CRASH_BUDGET:
                        await self._fail_crashed_job(runner.job_id, err, crashes)
                        return
                delay = min(RUNNER_MAX_DELAY,
                            RUNNER_RESTART_DELAY * 2 ** max(0, provider_errors + crashes - 1))
                await asyncio.sleep(delay)
        finally:
            self.jobs.pop(runner.job_id, None)
            self.tasks.pop(runner.job_id, None)

    def _hand_over(self, runner: JobRunner, err: Exception) -> None:
        """Stand down: what was still in the inbox goes to the job's owner."""
        runner.log.warning("not this controller's job (any more): standing down",
                           error=str(err))
        self.jobs.pop(runner.job_id, None)
        if isinstance(err, LeaseLostError) and self._services is not None:
            self._services.sessions.forget_job(runner.job_id)
        while not runner.inbox.empty():
            self.post(runner.job_id, runner.inbox.get_nowait())

    async def _fail_crashed_job(self, job_id: int, err: Exception, crashes: int) -> None:
        """End a job whose runner keeps crashing; the reaper releases its instances."""
        sv = self._services
        assert sv is not None
        first_line = (str(err).splitlines() or [""])[0][:300]
        reason = (f"controller error while managing this job ({crashes} crashes in a row): "
                  f"{type(err).__name__}: {first_line}")
        job = await sv.store.call(sv.store.sync.get_job, job_id)
        target = JobStatus.CANCELLED if job.status == JobStatus.CANCELLING else JobStatus.FAILED
        try:
            await sv.store.call(sv.store.sync.transition, job_id, target, reason)
        except IllegalTransitionError:
            return  # it ended meanwhile
        log.error("job failed: its runner kept crashing", job_id=job_id, error=reason)
        sv.wake_webhooks()
        sv.reaper.wake()

    async def stop(self, grace_s: float) -> None:
        """Cancel every runner (their state is in the store) and wait up to grace_s."""
        tasks = list(self.tasks.values())
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
