"""One lightweight asyncio task per live job: drives the job's state machine.

The runner keeps nothing that matters in memory: every decision reads the store and every
change is a compare-and-set transition, so a runner can be cancelled anywhere (shutdown) or
killed with its process, and the next controller resumes from the store. Agents and the
instance poller talk to a runner through its inbox; the API persists a report before posting
it, so a message lost with a crash is re-read from the store on resume.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from skyjobs.controller import store as st
from skyjobs.exceptions import (
    CapacityError,
    FatalProviderError,
    IllegalTransitionError,
    ProviderError,
)
from skyjobs.pricing.catalog import Placement
from skyjobs.providers import base
from skyjobs.recovery import decide
from skyjobs.recovery.placement import Candidate, match
from skyjobs.recovery.policy import RankingContext, rank
from skyjobs.spec import TaskSpec

if TYPE_CHECKING:
    from skyjobs.controller.daemon import Controller

log = structlog.get_logger("skyjobs.runner")

DRAIN_GRACE = 15.0  # seconds past a notice's deadline before an old attempt is forced out


@dataclass(frozen=True)
class Message:
    kind: str  # phase, exit, notice, gone, cancel, silent, wake
    attempt_id: int | None = None
    rank: int | None = None
    detail: Any = None


class JobRunner:
    def __init__(self, ctl: Controller, job_id: int) -> None:
        self.ctl = ctl
        self.job_id = job_id
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.log = log.bind(job_id=job_id)
        self.tried: set[tuple[str, str, str, bool]] = set()
        self.rounds = 0

    def post(self, msg: Message) -> None:
        self.inbox.put_nowait(msg)

    async def _db(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await self.ctl.store.call(fn, *args, **kwargs)

    # --- main loop -------------------------------------------------------------------------

    async def run(self) -> None:
        s = self.ctl.store.sync
        while True:
            job: st.Job = await self._db(s.get_job, self.job_id)
            if job.status in st.TERMINAL:
                await self._release_all()
                return
            try:
                await self._step(job)
            except IllegalTransitionError as err:
                # Someone else (a cancel) moved the job first; re-read and act on that.
                self.log.info("transition lost a race", detail=str(err))

    async def _step(self, job: st.Job) -> None:
        if job.status == st.CANCELLING:
            await self._cancel(job)
        elif job.status in (st.PENDING, st.RECOVERING):
            await self._provision(job)
        elif job.status == st.PROVISIONING:
            attempt = await self._current(job)
            if attempt is None or attempt.status == "ended":
                await self._provision(job)
            else:
                await self._watch(job, attempt)
        elif job.status == st.RUNNING:
            attempt = await self._current(job)
            assert attempt is not None, "a RUNNING job always has an attempt"
            await self._watch(job, attempt)

    async def _current(self, job: st.Job) -> st.Attempt | None:
        if job.current_attempt is None:
            return None
        attempt: st.Attempt = await self._db(self.ctl.store.sync.get_attempt, job.current_attempt)
        return attempt

    # --- provisioning ----------------------------------------------------------------------

    def _spec(self, job: st.Job) -> TaskSpec:
        return TaskSpec.model_validate(job.task["spec"])

    async def _ranking(self, job: st.Job, spec: TaskSpec) -> list[Candidate]:
        attempts: list[st.Attempt] = await self._db(self.ctl.store.sync.attempts_of, job.id)
        now = time.time()
        cooldown: dict[tuple[str, str, str], float] = {}
        for a in attempts:
            hit = a.notice_at or (a.ended_at if a.end_reason in ("preempted", "lost") else None)
            if hit is not None:
                key = (a.cloud, a.zone, a.instance_type)
                cooldown[key] = max(cooldown.get(key, 0.0), hit + self.ctl.config.zone_cooldown)
        last = next((a for a in reversed(attempts) if a.end_reason != "no_capacity"), None)
        last_end = None
        if last is not None:
            last_end = "preempted" if last.notice_at else last.end_reason
        rec = spec.resources.job_recovery
        ctx = RankingContext(
            strategy=spec.resources.strategy, ordered=spec.resources.is_ordered, now=now,
            last=self.ctl.placement_of(last) if last else None,
            last_end=last_end, cooldown=cooldown,
            deadline_at=(job.submitted_at + rec.deadline_hours * 3600
                         if rec.deadline_hours else None),
            expected_runtime_s=(rec.expected_runtime_hours * 3600
                                if rec.expected_runtime_hours else None),
            progress_s=sum((a.ended_at or now) - a.running_at for a in attempts if a.running_at),
        )
        candidates = match(spec, self.ctl.catalog,
                           with_on_demand_twins=spec.resources.strategy == "DEADLINE_AWARE")
        return [r.candidate for r in rank(candidates, ctx)]

    async def _provision(self, job: st.Job) -> None:
        spec = self._spec(job)
        ranked = await self._ranking(job, spec)
        fresh = [c for c in ranked if self._key(c.placement) not in self.tried]
        if not fresh:
            await self._no_capacity_round(job)
            return
        cand = fresh[0]
        reason = "first launch" if job.attempt_count == 0 else "next candidate"
        if job.status == st.RECOVERING:
            reason = "recovery"
        attempt: st.Attempt = await self._db(
            self.ctl.store.sync.begin_attempt, job.id, cand.placement, spec.num_nodes,
            self.ctl.instance_prefix, f"{reason} on {cand.placement.label()}")
        self.log.info("launching", attempt=attempt.n, placement=cand.placement.label())
        await self._launch(job, attempt)

    @staticmethod
    def _key(p: Placement) -> tuple[str, str, str, bool]:
        return (p.cloud, p.zone, p.instance_type, p.use_spot)

    async def _launch(self, job: st.Job, attempt: st.Attempt) -> bool:
        """Launch (or find) the attempt's instances; False when it had to be given up."""
        s = self.ctl.store.sync
        provider = self.ctl.providers[attempt.cloud]
        placement = self.ctl.placement_of(attempt)
        try:
            await provider.launch(self.ctl.launch_request(job, attempt))
        except CapacityError as err:
            self.tried.add(self._key(placement))
            await self._db(s.record_zone_event, placement, "no_capacity")
            await self._give_up_attempt(job, attempt, "no_capacity", f"no capacity: {err}")
            return False
        except FatalProviderError as err:
            await self._give_up_attempt(job, attempt, "launch_error", f"launch failed: {err}")
            await self._db(s.transition, job.id, st.FAILED, f"launch failed: {err}",
                           expect=frozenset({st.PROVISIONING}))
            return False
        except ProviderError as err:
            self.tried.add(self._key(placement))
            await self._give_up_attempt(job, attempt, "launch_error", f"launch failed: {err}")
            return False
        await self._db(s.set_attempt_status, attempt.id, "provisioning")
        self.tried.clear()
        self.rounds = 0
        return True

    async def _give_up_attempt(self, job: st.Job, attempt: st.Attempt, reason: str,
                               info: str) -> None:
        await self._terminate(attempt)
        await self._db(self.ctl.store.sync.end_attempt, job.id, attempt.id, reason, None, info)
        await self._db(self.ctl.store.sync.mark_released, attempt.id)

    async def _no_capacity_round(self, job: st.Job) -> None:
        cfg = self.ctl.config
        self.rounds += 1
        self.tried.clear()
        if self.rounds >= cfg.max_launch_rounds:
            await self._db(self.ctl.store.sync.transition, job.id, st.FAILED_NO_RESOURCE,
                           f"no capacity in any candidate after {self.rounds} rounds",
                           expect=frozenset({st.PROVISIONING, st.RECOVERING, st.PENDING}))
            return
        delay = min(cfg.launch_backoff_max,
                    cfg.launch_backoff_initial * cfg.launch_backoff_factor ** (self.rounds - 1))
        await self._db(self.ctl.store.sync.add_info_event, job.id,
                       f"no capacity in any candidate (round {self.rounds}); retrying in {delay:.0f}s")
        await self._sleep_or_message(delay)

    async def _sleep_or_message(self, delay: float) -> Message | None:
        try:
            return await asyncio.wait_for(self.inbox.get(), timeout=delay)
        except TimeoutError:
            return None

    # --- watching a launched attempt -------------------------------------------------------

    async def _watch(self, job: st.Job, attempt: st.Attempt) -> None:
        """Wait for the next thing that moves this job, and move it."""
        s = self.ctl.store.sync
        if attempt.status == "launching" and not await self._launch(job, attempt):
            return
        drain_wait = await self._drain_old(job, attempt)
        nodes: dict[int, tuple[str, int | None]] = await self._db(s.nodes_of, attempt.id)
        if await self._evaluate(job, attempt, nodes):
            return
        waits = [3600.0, drain_wait]
        if job.status == st.PROVISIONING:
            remaining = self._provision_deadline(attempt)
            if remaining <= 0:
                self.tried.add(self._key(self.ctl.placement_of(attempt)))
                await self._db(s.record_zone_event, self.ctl.placement_of(attempt),
                               "launch_timeout")
                await self._give_up_attempt(job, attempt, "provision_timeout",
                                            "agents did not start before provision_timeout")
                return
            waits.append(remaining)
        msg = await self._sleep_or_message(min(waits))
        if msg is not None:
            await self._handle(job, attempt, msg)

    def _provision_deadline(self, attempt: st.Attempt) -> float:
        return max(0.0, attempt.created_at + self.ctl.config.provision_timeout - time.time())

    async def _handle(self, job: st.Job, attempt: st.Attempt, msg: Message) -> None:
        if msg.attempt_id is not None and msg.attempt_id != attempt.id:
            await self._old_attempt_message(job, msg)
            return
        if msg.kind == "notice":
            await self._recover(job, attempt, None, "preemption notice", keep_running=True)
        elif msg.kind == "gone":
            info: base.InstanceInfo = msg.detail
            why = "preempted" if info.reason in (base.PREEMPTED, base.LOST) else "lost"
            await self._recover(job, attempt, why,
                                f"instance {info.instance_id} is gone ({info.reason})")
        elif msg.kind == "silent":
            await self._recover(job, attempt, "lost", str(msg.detail))
        # phase, exit, wake and cancel: the next _watch/_step re-reads the store and acts.

    async def _evaluate(self, job: st.Job, attempt: st.Attempt,
                        nodes: dict[int, tuple[str, int | None]]) -> bool:
        """Act on the node reports in the store; True when the job moved."""
        s = self.ctl.store.sync
        outcome = decide.attempt_outcome(nodes, attempt.num_nodes, attempt.notice_at is not None)
        if outcome is None:
            if job.status == st.PROVISIONING and decide.all_in(nodes, attempt.num_nodes, "running"):
                await self._db(s.set_attempt_status, attempt.id, "running", running=True)
                await self._db(s.transition, job.id, st.RUNNING,
                               f"running on {attempt.placement_label()}",
                               expect=frozenset({st.PROVISIONING}))
                return True
            if decide.all_in(nodes, attempt.num_nodes, "ready", "running"):
                await self._maybe_go(job, attempt)
            return False
        spec = self._spec(job)
        verdict = decide.after_exit(outcome, spec.resources.job_recovery, job.restart_count)
        if verdict.action == decide.SUCCEED:
            await self._finish(job, attempt, st.SUCCEEDED, "succeeded", verdict.reason, 0)
        elif verdict.action == decide.FAIL:
            await self._finish(job, attempt, st.FAILED, "failed", verdict.reason,
                               outcome.exit_code)
        elif verdict.action == decide.PREEMPTED:
            await self._recover(job, attempt, "preempted", verdict.reason)
        else:
            await self._recover(job, attempt, "failed", verdict.reason,
                                exit_code=outcome.exit_code, restart=verdict.uses_budget)
        return True

    async def _maybe_go(self, job: st.Job, attempt: st.Attempt) -> None:
        """Let run start only once the previous attempt is fully over (it may still be
        writing its last checkpoint during its notice)."""
        if attempt.id in self.ctl.go:
            return
        attempts: list[st.Attempt] = await self._db(self.ctl.store.sync.attempts_of, job.id)
        if all(a.status == "ended" for a in attempts if a.id != attempt.id):
            self.ctl.grant_go(attempt.id)

    async def _finish(self, job: st.Job, attempt: st.Attempt, target: str, end_reason: str,
                      reason: str, exit_code: int | None) -> None:
        await self._db(self.ctl.store.sync.transition, job.id, target, reason,
                       exit_code=exit_code, end_attempt=(attempt.id, end_reason),
                       expect=frozenset({st.RUNNING, st.PROVISIONING}))
        await self._release(attempt)

    async def _recover(self, job: st.Job, attempt: st.Attempt, end_reason: str | None,
                       reason: str, *, keep_running: bool = False, exit_code: int | None = None,
                       restart: bool = False) -> None:
        """Move to RECOVERING. With keep_running (a notice), the old attempt keeps its
        instances until its job exits or the notice runs out, so it can checkpoint."""
        s = self.ctl.store.sync
        updates: dict[str, Any] = {}
        if end_reason in ("preempted", "lost", None):
            updates["recovery_count"] = job.recovery_count + 1
        if restart:
            updates["restart_count"] = job.restart_count + 1
        end = None if keep_running or end_reason is None else (attempt.id, end_reason)
        await self._db(s.transition, job.id, st.RECOVERING, reason, exit_code=exit_code,
                       end_attempt=end, job_updates=updates,
                       expect=frozenset({st.RUNNING, st.PROVISIONING}))
        self.ctl.metrics_recovery(job.id, reason)
        if end_reason in ("preempted", "lost") or keep_running:
            await self._db(s.record_zone_event, self.ctl.placement_of(attempt), "preemption")
        if end is not None:
            await self._release(attempt)
        self.log.info("recovering", attempt=attempt.n, reason=reason)

    async def _drain_old(self, job: st.Job, current: st.Attempt) -> float:
        """Force out old attempts whose notice has run out without an exit report.

        Returns how long until the next old attempt's deadline (inf when none is left).
        """
        attempts: list[st.Attempt] = await self._db(self.ctl.store.sync.attempts_of, job.id)
        now, next_wait = time.time(), float("inf")
        for a in attempts:
            if a.id == current.id or a.status == "ended":
                continue
            limit = (a.notice_deadline or time.time()) + DRAIN_GRACE
            if now >= limit:
                await self._end_old(job, a, "preempted", "notice ran out")
            else:
                next_wait = min(next_wait, limit - now)
        return next_wait

    async def _old_attempt_message(self, job: st.Job, msg: Message) -> None:
        assert msg.attempt_id is not None
        a: st.Attempt = await self._db(self.ctl.store.sync.get_attempt, msg.attempt_id)
        if a.status == "ended":
            return
        if msg.kind == "exit":
            nodes = await self._db(self.ctl.store.sync.nodes_of, a.id)
            if decide.attempt_outcome(nodes, a.num_nodes, True) is not None:
                await self._end_old(job, a, "preempted", "old attempt exited after its notice")
        elif msg.kind in ("gone", "silent"):
            await self._end_old(job, a, "preempted", "old attempt's instance is gone")

    async def _end_old(self, job: st.Job, a: st.Attempt, reason: str, info: str) -> None:
        await self._db(self.ctl.store.sync.end_attempt, job.id, a.id, reason, None, info)
        await self._release(a)

    # --- cancel and cleanup ----------------------------------------------------------------

    async def _cancel(self, job: st.Job) -> None:
        s = self.ctl.store.sync
        attempts: list[st.Attempt] = await self._db(s.attempts_of, job.id)
        for a in attempts:
            if a.status != "ended":
                await self._db(s.end_attempt, job.id, a.id, "cancelled", None, "cancelled")
        await self._release_all()
        await self._db(s.transition, job.id, st.CANCELLED, "cancelled by user",
                       expect=frozenset({st.CANCELLING}))

    async def _terminate(self, attempt: st.Attempt) -> None:
        await self.ctl.providers[attempt.cloud].terminate(attempt.instance_ids)

    async def _release(self, attempt: st.Attempt) -> None:
        """Terminate an ended attempt's instances, then remember that they are gone."""
        await self._terminate(attempt)
        await self._db(self.ctl.store.sync.mark_released, attempt.id)
        self.ctl.go.discard(attempt.id)

    async def _release_all(self) -> None:
        attempts: list[st.Attempt] = await self._db(self.ctl.store.sync.attempts_of, self.job_id)
        for a in attempts:
            if not a.released:
                await self._release(a)

