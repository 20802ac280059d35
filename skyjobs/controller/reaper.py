"""The reaper: every attempt that is over gets its instances terminated, and confirmed gone.

An attempt is *ended* in the store (one transaction with the job's transition) before its
instances are touched, so a terminate that fails, hangs or dies with the controller leaves
an ended-but-unreleased attempt behind. The reaper owns those: it terminates them, asks the
cloud whether every instance is really gone, and only then marks the attempt released. It
retries with backoff for as long as it takes, and says so loudly (an event on the job, a
log line, a metric) when it cannot. The go gate (a replacement may start ``run`` only once
every earlier attempt is released) rests on this: whatever fails, two attempts of one job
never run at once.

Runners call :meth:`Reaper.release` for the fast path; the reaper's own task picks up
whatever that could not finish, and whatever a crashed or killed controller left behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from skyjobs.controller import store as st
from skyjobs.exceptions import ProviderError
from skyjobs.providers import base
from skyjobs.providers.base import Provider

log = structlog.get_logger("skyjobs.reaper")

FIRST_RETRY = 1.0
MAX_RETRY = 60.0
STILL_STOPPING_RETRY = 2.0  # terminate went through; the instance is on its way out
ALERT_AFTER = 5  # failed tries before the job gets an event and the log an error
CALL_TIMEOUT = 120.0  # a cloud call that hangs longer than this counts as failed
SCAN_INTERVAL = 30.0  # look for work left by others (a crash, a terminal job) this often


@dataclass
class _Backoff:
    failures: int = 0
    next_at: float = 0.0
    alerted: bool = False


class Reaper:
    def __init__(self, store: st.Store, providers: Mapping[str, Provider], *,
                 on_released: Callable[[st.Attempt], None],
                 on_failure: Callable[[], None] | None = None,
                 member: str | None = None) -> None:
        """``member``: release only the attempts of jobs this controller holds leases of
        (the others' reapers release theirs)."""
        self.store = store
        self.member = member
        self.providers = providers
        self.on_released = on_released
        self.on_failure = on_failure or (lambda: None)
        self._backoff: dict[int, _Backoff] = {}
        self._busy: dict[int, asyncio.Future[bool]] = {}
        self._wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self._loop(), name="reaper")
        return self.task

    def wake(self) -> None:
        self._wake.set()

    @property
    def pending(self) -> int:
        """Attempts known to be waiting for a retry (for metrics and the status line)."""
        return len(self._backoff)

    async def release(self, attempt: st.Attempt) -> bool:
        """Terminate an ended attempt's instances and mark it released once the cloud
        confirms they are gone. Never raises for a cloud failure: returns False and leaves
        the attempt to the reaper's retries."""
        running = self._busy.get(attempt.id)
        if running is not None:  # another caller is releasing it right now: share the result
            return await asyncio.shield(running)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._busy[attempt.id] = future
        done = False
        try:
            done = await self._release_once(attempt)
            return done
        finally:
            future.set_result(done)  # a waiter on a release that blew up sees "not yet"
            del self._busy[attempt.id]

    async def _release_once(self, attempt: st.Attempt) -> bool:
        provider = self.providers.get(attempt.cloud)
        if provider is None:
            self._failed(attempt, f"provider {attempt.cloud!r} is not enabled")
            return False
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await provider.terminate(attempt.instance_ids)
                infos = await provider.status(attempt.instance_ids)
        except (ProviderError, TimeoutError) as err:
            self._failed(attempt, str(err) or "timed out")
            return False
        alive = [i for i in attempt.instance_ids
                 if (infos.get(i) or base.InstanceInfo(i, base.RUNNING)).state != base.GONE]
        if alive:
            # Terminated but not yet gone (EC2's shutting-down): its processes may still
            # run, so the replacement keeps waiting; look again soon.
            self._retry_soon(attempt.id)
            return False
        await self.store.call(self.store.sync.mark_released, attempt.id)
        state = self._backoff.pop(attempt.id, None)
        if state is not None and state.alerted:
            await self.store.call(self.store.sync.add_info_event, attempt.job_id,
                                  f"instances of attempt {attempt.n} are released after "
                                  f"{state.failures} failed tries", attempt.n)
        self.on_released(attempt)
        return True

    def _retry_soon(self, attempt_id: int) -> None:
        state = self._backoff.setdefault(attempt_id, _Backoff())
        state.next_at = time.monotonic() + STILL_STOPPING_RETRY
        self._wake.set()

    def _failed(self, attempt: st.Attempt, error: str) -> None:
        state = self._backoff.setdefault(attempt.id, _Backoff())
        state.failures += 1
        delay = min(MAX_RETRY, FIRST_RETRY * 2 ** (state.failures - 1))
        state.next_at = time.monotonic() + delay
        self.on_failure()
        log.warning("could not release instances; will retry", job_id=attempt.job_id,
                    attempt=attempt.n, failures=state.failures, retry_in=delay, error=error)
        self._wake.set()

    async def _alert(self, attempt: st.Attempt, state: _Backoff) -> None:
        state.alerted = True
        log.error("instances of an ended attempt are still not released", job_id=attempt.job_id,
                  attempt=attempt.n, instances=attempt.instance_ids, failures=state.failures)
        await self.store.call(self.store.sync.add_info_event, attempt.job_id,
                              f"could not release the instances of attempt {attempt.n} after "
                              f"{state.failures} tries ({', '.join(attempt.instance_ids)}); "
                              "still retrying", attempt.n)

    async def _loop(self) -> None:
        while True:
            # Cleared before the sweep, not after: a wake-up that comes while it runs (an
            # attempt just ended, a failed release just scheduled) must not be lost.
            self._wake.clear()
            await self.sweep()
            now = time.monotonic()
            waits = [s.next_at - now for s in self._backoff.values()]
            timeout = max(0.05, min([SCAN_INTERVAL, *waits]))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def sweep(self) -> None:
        """One pass over every attempt that is due: end what a terminal job left running,
        then release."""
        now = time.monotonic()
        # Only retries scheduled before the read can be judged by it: one scheduled while
        # it ran (a direct release that failed) is for an attempt the read may not show yet.
        scheduled = set(self._backoff)
        todo = await self.store.call(self.store.sync.attempts_to_release, self.member) \
            if self.member else await self.store.call(self.store.sync.attempts_to_release)
        known = {a.id for a in todo}
        for gone in [i for i in scheduled if i not in known and i in self._backoff]:
            del self._backoff[gone]  # released by someone else meanwhile
        for attempt in todo:
            state = self._backoff.get(attempt.id)
            if state is not None and state.next_at > now:
                continue
            if attempt.status != "ended":
                # The job ended on another attempt (or failed) while this one still ran.
                await self.store.call(self.store.sync.end_attempt, attempt.job_id, attempt.id,
                                      "superseded", None, "the job ended on another attempt")
            await self.release(attempt)
            state = self._backoff.get(attempt.id)
            if state is not None and state.failures >= ALERT_AFTER and not state.alerted:
                await self._alert(attempt, state)
