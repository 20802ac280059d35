"""One lightweight asyncio task per live job: drives the job's state machine.

The runner keeps nothing that matters in memory: each step reads one snapshot from the store
and every change is a compare-and-set transition, so a runner can be cancelled anywhere
(shutdown) or killed with its process, and the next controller resumes from the store.
Agents and the instance poller talk to a runner through its inbox; the API persists a report
before posting it, so a message lost with a crash is re-read from the store on resume.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import structlog

from skyjobs.config import ControllerConfig
from skyjobs.controller import store as st
from skyjobs.controller.messages import Message
from skyjobs.exceptions import (
    CapacityError,
    FatalProviderError,
    IllegalTransitionError,
    ProviderError,
)
from skyjobs.pricing.catalog import Placement
from skyjobs.pricing.prices import PriceBook
from skyjobs.providers import base
from skyjobs.recovery import decide
from skyjobs.recovery.memory import PreemptionMemory
from skyjobs.recovery.placement import Candidate, match
from skyjobs.recovery.policy import (
    Ranked,
    RankingContext,
    deadline_decision,
    memory_key,
    move_decision,
    rank,
)
from skyjobs.spec import TaskSpec
from skyjobs.states import (
    LAUNCH_ENDS,
    PREEMPTED_ENDS,
    RECOVERED_ENDS,
    TERMINAL,
    AttemptStatus,
    EndReason,
    JobStatus,
    MessageKind,
    NodePhase,
    RecoveryCause,
)

if TYPE_CHECKING:
    from skyjobs.controller.services import Services

P = ParamSpec("P")
T = TypeVar("T")

log = structlog.get_logger("skyjobs.runner")

DRAIN_GRACE = 15.0  # seconds past a notice's deadline before an old attempt is forced out
NOTICE_SECONDS = {"aws": 120.0, "gcp": 30.0, "local": 30.0}
# Attempts in a row whose agent never reported on an instance that was up: the agent cannot
# start there (a bad image, no route to the controller), and no other zone will fix that.
MAX_AGENT_FAILURES = 3


def ranking_context(sv: Services, spec: TaskSpec, job: st.Job | None,
                    attempts: list[st.Attempt], now: float) -> RankingContext:
    """What the placement policy may know about this job (its task's attempts so far)."""
    return policy_context(sv.config, sv.memory, sv.price_book, sv.placement_of, spec, job,
                          attempts, now)


def policy_context(cfg: ControllerConfig, memory: PreemptionMemory, prices: PriceBook,
                   placement_of: Callable[[st.Attempt], Placement], spec: TaskSpec,
                   job: st.Job | None, attempts: list[st.Attempt],
                   now: float) -> RankingContext:
    """The ranking inputs, from parts: also what `skyjobs plan` uses for a job not yet
    submitted (no job, no attempts), with or without a controller."""
    rec = spec.resources.job_recovery
    cooldown: dict[tuple[str, str, str], float] = {}
    last_preempted = None
    for a in attempts:
        hit = a.notice_at or (a.ended_at if a.end_reason in PREEMPTED_ENDS else None)
        if hit is not None:
            key = (a.cloud, a.zone, a.instance_type)
            cooldown[key] = max(cooldown.get(key, 0.0), hit + cfg.zone_cooldown)
            last_preempted = a
    last = next((a for a in reversed(attempts) if a.end_reason != EndReason.NO_CAPACITY), None)
    last_end = (EndReason.PREEMPTED if last.notice_at else last.end_reason) if last else None
    # Restore time is not progress: each restart's first minutes redo or reload work.
    progress = sum(max(0.0, (a.ended_at or now) - a.running_at
                       - (cfg.restart_estimate if i > 0 else 0.0))
                   for i, a in enumerate(attempts) if a.running_at)
    clouds = spec.resources.choices()[0].cloud
    return RankingContext(
        strategy=spec.resources.strategy, ordered=spec.resources.is_ordered, now=now,
        last=placement_of(last) if last else None, last_end=last_end, cooldown=cooldown,
        deadline_at=(job.submitted_at if job else now) + rec.deadline_hours * 3600
        if rec.deadline_hours else None,
        expected_runtime_s=rec.expected_runtime_hours * 3600
        if rec.expected_runtime_hours else None,
        progress_s=progress, memory=memory, prices=prices,
        restart_s=cfg.restart_estimate, checkpoint_interval_s=cfg.checkpoint_interval_estimate,
        notice_s=NOTICE_SECONDS.get(clouds or "local", 30.0),
        submitted_at=job.submitted_at if job else now,
        last_preempted=placement_of(last_preempted) if last_preempted else None,
    )


def migration_source(snap: st.Snapshot) -> st.Attempt | None:
    """The attempt a migration is leaving: older than the current one, still running, and
    not preempted (derived from the store, so a restarted controller carries on)."""
    current = snap.job.current_attempt
    # Before the replacement is launched the job is RECOVERING and the attempt being left is
    # still the current one; a recovery proper always has a notice or an ended attempt.
    return next((a for a in snap.task_attempts if a.status != AttemptStatus.ENDED
                 and a.notice_at is None
                 and (a.id != current or snap.job.status == JobStatus.RECOVERING)), None)


def ranked_candidates(sv: Services, spec: TaskSpec, ctx: RankingContext) -> list[Ranked]:
    deadline = spec.resources.job_recovery.deadline_hours is not None
    candidates: list[Candidate] = match(spec, sv.catalog, with_on_demand_twins=deadline)
    return rank(candidates, ctx)


class JobRunner:
    def __init__(self, services: Services, job_id: int) -> None:
        self.sv = services
        self.job_id = job_id
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.log = log.bind(job_id=job_id)
        self.tried: set[tuple[str, str, str, bool]] = set()
        self._last_deadline_check = time.time()
        self._task_spec: tuple[int, TaskSpec] | None = None  # (task index, its spec)
        # Where a move of a running spot attempt goes (move_decision's target). In memory
        # only: a controller restarted before the replacement launched stays put.
        self._move_target: tuple[str, str, str, bool] | None = None

    def post(self, msg: Message) -> None:
        self.inbox.put_nowait(msg)

    async def _db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        result = await self.sv.store.call(fn, *args, **kwargs)
        if fn in (self.s.transition, self.s.begin_attempt, self.s.begin_migration,
                  self.s.abort_migration):
            self.sv.wake_webhooks()  # a transition may have queued deliveries
        return result

    @property
    def s(self) -> st.SyncStore:
        return self.sv.store.sync

    # --- main loop -------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            snap: st.Snapshot = await self._db(self.s.snapshot, self.job_id)
            if snap.job.status in TERMINAL:
                for a in snap.attempts:
                    # e.g. a replacement launched during a migration
                    if a.status != AttemptStatus.ENDED:
                        await self._db(self.s.end_attempt, snap.job.id, a.id,
                                       EndReason.SUPERSEDED,
                                       None, "the job ended on another attempt")
                # Whatever cannot be released now stays with the reaper, which retries.
                await self._release_all(snap.attempts)
                return
            try:
                await self._step(snap)
            except IllegalTransitionError as err:
                # Someone else (a cancel) moved the job first; re-read and act on that.
                self.log.info("transition lost a race", detail=str(err))

    async def _step(self, snap: st.Snapshot) -> None:
        status, current = snap.job.status, snap.current
        if status == JobStatus.CANCELLING:
            await self._cancel(snap)
        elif status in (JobStatus.PENDING, JobStatus.RECOVERING):
            await self._provision(snap)
        elif current is None or current.status == AttemptStatus.ENDED:
            await self._provision(snap)
        else:
            await self._watch(snap, current)

    # --- provisioning ----------------------------------------------------------------------

    def _spec(self, job: st.Job) -> TaskSpec:
        # A job's task never changes: validate it once per runner, not on every step.
        if self._task_spec is None or self._task_spec[0] != job.task_index:
            spec = TaskSpec.model_validate(job.task_entry()["spec"])
            self._task_spec = (job.task_index, spec)
        return self._task_spec[1]

    async def _provision(self, snap: st.Snapshot) -> None:
        job = snap.job
        spec = self._spec(job)
        ctx = ranking_context(self.sv, spec, job, snap.task_attempts, time.time())
        source = migration_source(snap)
        fresh = [r for r in ranked_candidates(self.sv, spec, ctx)
                 if self._key(r.candidate.placement) not in self.tried
                 and (source is None or r.candidate.placement.use_spot)]
        if source is not None and source.use_spot:
            # A move between spot zones goes where move_decision said, or nowhere: the
            # best-ranked zone may well be the one the job already runs in.
            fresh = [r for r in fresh if self._key(r.candidate.placement) == self._move_target]
            if not fresh:
                self.tried.clear()
                self._move_target = None
                await self._db(self.s.abort_migration, job.id, source.id,
                               f"the cheaper zone has no capacity now; staying on "
                               f"{source.placement_label()}")
                return
        if not fresh and source is not None:
            # No spot capacity after all: stay where the job runs.
            self.tried.clear()
            await self._db(self.s.abort_migration, job.id, source.id,
                           f"no spot capacity to move to; staying on {source.placement_label()}")
            return
        if not fresh:
            await self._no_capacity_round(job)
            return
        choice = fresh[0]
        placement = choice.candidate.placement
        reason = {JobStatus.PENDING: "first launch", JobStatus.RECOVERING: "recovery"}.get(
            job.status, "next candidate")
        if job.task_count > 1 and not snap.task_attempts:
            reason = f"task {job.task_index + 1}/{job.task_count}"
        if source is not None and job.status == JobStatus.RECOVERING:
            reason = "migration"
        attempt: st.Attempt = await self._db(
            self.s.begin_attempt, job.id, placement, spec.num_nodes,
            self.sv.instance_prefix, f"{reason} on {placement.label()} ({choice.reason})")
        self.log.info("launching", attempt=attempt.n, placement=placement.label())
        await self._launch(job, attempt)

    @staticmethod
    def _key(p: Placement) -> tuple[str, str, str, bool]:
        return (p.cloud, p.zone, p.instance_type, p.use_spot)

    def _remember(self, p: Placement, kind: str, value: float = 1.0) -> st.ZoneEvent:
        """Feed the preemption memory; the caller persists the returned event in its
        transaction, so the memory rebuilt after a restart is the same."""
        self.sv.memory.record(memory_key(p), kind, time.time(), value)
        return (p, kind, value)

    async def _launch(self, job: st.Job, attempt: st.Attempt) -> bool:
        """Launch (or find) the attempt's instances; False when it had to be given up."""
        provider = self.sv.providers[attempt.cloud]
        placement = self.sv.placement_of(attempt)
        spec = self._spec(job) if attempt.task_index == job.task_index else None
        try:
            async with self.sv.launch_slots:
                infos = await provider.launch(self.sv.launch_request(job, attempt, spec))
        except CapacityError as err:
            self.tried.add(self._key(placement))
            await self._give_up_attempt(job, attempt, EndReason.NO_CAPACITY,
                                        f"no capacity: {err}",
                                        [self._remember(placement, "no_capacity")])
            return False
        except FatalProviderError as err:
            await self._give_up_attempt(job, attempt, EndReason.LAUNCH_ERROR,
                                        f"launch failed: {err}")
            await self._db(self.s.transition, job.id, JobStatus.FAILED, f"launch failed: {err}",
                           expect=frozenset({JobStatus.PROVISIONING}))
            return False
        except ProviderError as err:
            self.tried.add(self._key(placement))
            await self._give_up_attempt(job, attempt, EndReason.LAUNCH_ERROR,
                                        f"launch failed: {err}")
            return False
        dead = [i for i in infos if i.state in base.ENDING]
        if dead:
            # A replayed launch found instances that are already over (we terminated them
            # after an earlier error): ids are per attempt, so this attempt cannot run.
            await self._give_up_attempt(
                job, attempt, EndReason.LAUNCH_ERROR,
                f"launch found instance {dead[0].instance_id} already gone ({dead[0].reason})")
            return False
        self.sv.sessions.launched(attempt.id)
        self.sv.sessions.remember(attempt)
        self.sv.sessions.note_ips(infos)
        await self._db(self.s.set_attempt_status, attempt.id, AttemptStatus.PROVISIONING,
                       zone_events=[self._remember(placement, "launch_ok")])
        return True

    async def _give_up_attempt(self, job: st.Job, attempt: st.Attempt, reason: EndReason,
                               info: str, zone_events: list[st.ZoneEvent] | None = None) -> None:
        # Ended first, released second: a terminate that fails (or a crash in between) leaves
        # an ended attempt for the reaper, never a half-dead one that a replay relaunches.
        await self._db(self.s.end_attempt, job.id, attempt.id, reason, None, info, zone_events)
        await self._release(attempt)

    async def _no_capacity_round(self, job: st.Job) -> None:
        cfg = self.sv.config
        rounds: int = await self._db(self.s.no_capacity_round, job.id)
        self.tried.clear()
        if rounds >= cfg.max_launch_rounds:
            await self._db(self.s.transition, job.id, JobStatus.FAILED_NO_RESOURCE,
                           f"no capacity in any candidate after {rounds} rounds",
                           expect=frozenset({JobStatus.PROVISIONING, JobStatus.RECOVERING,
                                             JobStatus.PENDING}))
            return
        delay = min(cfg.launch_backoff_max,
                    cfg.launch_backoff_initial * cfg.launch_backoff_factor ** (rounds - 1))
        await self._db(self.s.add_info_event, job.id, "no capacity in any candidate (round "
                       f"{rounds}); retrying in {delay:.0f}s")
        await self._next_message(delay)

    async def _next_message(self, wait_s: float) -> Message | None:
        try:
            return await asyncio.wait_for(self.inbox.get(), timeout=wait_s)
        except TimeoutError:
            return None

    # --- watching a launched attempt -------------------------------------------------------

    async def _watch(self, snap: st.Snapshot, attempt: st.Attempt) -> None:
        """Act on what the store says, else wait for the next thing that moves this job."""
        job = snap.job
        if attempt.status == AttemptStatus.LAUNCHING:
            await self._launch(job, attempt)
            return
        drain_wait = await self._drain_old(snap)
        if await self._evaluate(snap, attempt):
            return
        waits = [3600.0, drain_wait]
        cap = self._spec(job).resources.job_recovery.max_duration_hours
        if cap is not None and job.status == JobStatus.RUNNING:
            left = cap * 3600 - running_seconds(snap.attempts, time.time())
            if left <= 0:
                await self._finish(job, attempt, JobStatus.FAILED, EndReason.MAX_DURATION,
                                   f"ran longer than max_duration_hours ({cap:g} h, counted "
                                   "over every attempt's running time)", None)
                return
            waits.append(left)
        if job.status == JobStatus.RUNNING and self._watches_deadline(job, attempt):
            next_check = self._last_deadline_check + self.sv.config.deadline_check_interval
            if time.time() >= next_check:
                self._last_deadline_check = time.time()
                if await self._maybe_migrate(snap, attempt):
                    return
            waits.append(max(0.0, next_check - time.time()))
        if job.status == JobStatus.PROVISIONING and not snap.nodes \
                and not self.sv.sessions.heard_any(attempt.id):
            # Once an agent has spoken, setup may take as long as it takes (its silence is
            # watched like a running job's); before that, the launch has a deadline. After a
            # controller restart, agents get a couple of heartbeats' time to be heard again.
            cfg = self.sv.config
            deadline = attempt.created_at + cfg.provision_timeout
            if attempt.created_at < self.sv.started_at:
                deadline = max(deadline, self.sv.started_at
                               + 2 * self.sv.sessions.heartbeat_timeout)
            remaining = deadline - time.time()
            if remaining <= 0:
                await self._provision_timed_out(snap, attempt)
                return
            waits.append(remaining)
        msg = await self._next_message(min(waits))
        if msg is not None:
            await self._handle(snap, attempt, msg)

    async def _provision_timed_out(self, snap: st.Snapshot, attempt: st.Attempt) -> None:
        """No agent spoke before provision_timeout. Instances that never came up mean no
        capacity; instances that are up with a silent agent mean the agent cannot start
        there, which is not the zone's fault and must not loop for ever."""
        job, placement = snap.job, self.sv.placement_of(attempt)
        provider = self.sv.providers[attempt.cloud]
        infos = await provider.status(attempt.instance_ids)
        up = [i for i in attempt.instance_ids
              if (infos.get(i) or base.InstanceInfo(i, base.PENDING)).state == base.RUNNING]
        self.tried.add(self._key(placement))
        if len(up) < attempt.num_nodes:
            await self._give_up_attempt(job, attempt, EndReason.PROVISION_TIMEOUT,
                                        "instances did not come up before provision_timeout",
                                        [self._remember(placement, "no_capacity")])
            return
        failures = 1 + agent_failure_streak(snap.task_attempts, attempt.id)
        info = (f"the agent never reported on running instance {up[0]} within "
                f"provision_timeout ({self.sv.config.provision_timeout:g}s)")
        await self._give_up_attempt(job, attempt, EndReason.AGENT_FAILED, info)
        if failures >= MAX_AGENT_FAILURES:
            await self._db(self.s.transition, job.id, JobStatus.FAILED,
                           f"{info}, on {failures} attempts in a row; see the instance's "
                           "console or boot log", expect=frozenset({JobStatus.PROVISIONING}))

    async def _handle(self, snap: st.Snapshot, attempt: st.Attempt, msg: Message) -> None:
        if msg.attempt_id is not None and msg.attempt_id != attempt.id:
            await self._old_attempt_message(snap, msg)
        elif msg.kind == MessageKind.NOTICE and snap.job.status in (JobStatus.RUNNING,
                                                                    JobStatus.PROVISIONING):
            # The API moves the job to RECOVERING when it hears the notice; this covers a
            # notice it recorded while the job was not the attempt's (a race with a retry).
            fresh: st.Snapshot = await self._db(self.s.snapshot, self.job_id)
            still = fresh.job.status in (JobStatus.RUNNING, JobStatus.PROVISIONING)
            if still and fresh.current is not None and fresh.current.id == attempt.id:
                await self._recover(fresh.job, attempt, None, "preemption notice",
                                    keep_running=True)
        elif msg.kind == MessageKind.GONE:
            info: base.InstanceInfo = msg.detail
            why = GONE_ENDS.get(info.reason or "", EndReason.LOST)
            await self._recover(snap.job, attempt, why,
                                f"instance {info.instance_id} is gone ({info.reason})")
        elif msg.kind == MessageKind.SILENT:
            await self._recover(snap.job, attempt, EndReason.AGENT_LOST, str(msg.detail))
        # phase, exit, wake and cancel: the next step re-reads the store and acts.

    async def _evaluate(self, snap: st.Snapshot, attempt: st.Attempt) -> bool:
        """Act on the node reports in the store; True when the job moved."""
        job, nodes = snap.job, snap.nodes
        outcome = decide.attempt_outcome(nodes, attempt.num_nodes, attempt.notice_at is not None)
        if outcome is None:
            if job.status == JobStatus.PROVISIONING and decide.all_in(nodes, attempt.num_nodes,
                                                               NodePhase.RUNNING):
                # Real progress: only now do the no-capacity rounds and tried zones start over.
                await self._db(self.s.transition, job.id, JobStatus.RUNNING,
                               f"running on {attempt.placement_label()}",
                               running_attempt=attempt.id, job_updates={"launch_rounds": 0},
                               expect=frozenset({JobStatus.PROVISIONING}))
                self.tried.clear()
                return True
            if decide.all_in(nodes, attempt.num_nodes, NodePhase.READY, NodePhase.RUNNING):
                await self._drain_source(snap)
                self._maybe_go(snap, attempt)
            return False
        spec = self._spec(job)
        verdict = decide.after_exit(outcome, spec.resources.job_recovery, job.restart_count)
        if verdict.action == decide.SUCCEED and job.task_index + 1 < job.task_count:
            await self._next_task(snap, attempt)
        elif verdict.action == decide.SUCCEED:
            await self._finish(job, attempt, JobStatus.SUCCEEDED, EndReason.SUCCEEDED,
                               self._in_task(job, verdict.reason), 0)
        elif verdict.action == decide.FAIL:
            # A failed task fails its pipeline: the tasks after it never start.
            await self._finish(job, attempt, JobStatus.FAILED, EndReason.FAILED,
                               self._in_task(job, verdict.reason), outcome.exit_code)
        elif verdict.action == decide.PREEMPTED:
            await self._recover(job, attempt, EndReason.PREEMPTED, verdict.reason)
        else:
            await self._recover(job, attempt, EndReason.FAILED, verdict.reason,
                                exit_code=outcome.exit_code, restart=verdict.uses_budget)
        return True

    @staticmethod
    def _in_task(job: st.Job, reason: str) -> str:
        """A reason, with the task it is about when the job is a pipeline."""
        return f"task {job.task_index + 1}/{job.task_count}: {reason}" \
            if job.task_count > 1 else reason

    async def _next_task(self, snap: st.Snapshot, attempt: st.Attempt) -> None:
        """A pipeline's task succeeded: end its attempts (one transaction) and start the next
        task; their instances are released now, or by the reaper after a crash."""
        job = snap.job
        await self._db(self.s.next_task, job.id, attempt.id,
                       f"task {job.task_index + 1}/{job.task_count} succeeded; starting task "
                       f"{job.task_index + 2}", self._exposure(attempt))
        self.sv.wake_webhooks()
        fresh: st.Snapshot = await self._db(self.s.snapshot, self.job_id)
        await self._release_all(fresh.attempts)
        self.tried.clear()

    # --- migration back to spot (deadline-aware jobs on on-demand) -----------------------------

    def _watches_deadline(self, job: st.Job, attempt: st.Attempt) -> bool:
        rec = self._spec(job).resources.job_recovery
        return rec.deadline_hours is not None and rec.expected_runtime_hours is not None

    async def _maybe_migrate(self, snap: st.Snapshot, attempt: st.Attempt) -> bool:
        """Ask the same policy the simulator replays whether to move: an on-demand attempt
        back to spot once the slack allows it, a spot attempt to a cheaper spot zone when
        the saving beats a restart (docs/policy.md, "Fifth pass"). Either way the running
        attempt goes on until its replacement is ready."""
        spec = self._spec(snap.job)
        ctx = ranking_context(self.sv, spec, snap.job, snap.task_attempts, time.time())
        ctx.running = True
        candidates = match(spec, self.sv.catalog, with_on_demand_twins=True)
        if attempt.use_spot:
            running_s = time.time() - attempt.running_at if attempt.running_at else 0.0
            move = move_decision(candidates, ctx, running_s)
            if move.target is None:
                return False
            self._move_target = self._key(move.target)
            await self._db(self.s.begin_migration, snap.job.id, attempt.id,
                           f"moving to a cheaper zone: {move.reason}")
            self.log.info("moving to a cheaper zone", attempt=attempt.n, reason=move.reason)
            return True
        spot = [c for c in candidates if c.placement.use_spot]
        decision = deadline_decision(ctx, candidates)
        if not spot or not decision.use_spot:
            return False
        await self._db(self.s.begin_migration, snap.job.id, attempt.id,
                       f"moving back to spot: {decision.reason}")
        self.log.info("migrating to spot", attempt=attempt.n, reason=decision.reason)
        return True

    async def _drain_source(self, snap: st.Snapshot) -> None:
        """The replacement is ready: ask the attempt being left to checkpoint and exit."""
        source = migration_source(snap)
        if source is None or source.id in self.sv.sessions.drain:
            return
        await self._db(self.s.set_drain_deadline, source.id,
                       time.time() + self.sv.config.migration_drain)
        self.sv.sessions.ask_to_drain(source.id)

    def _maybe_go(self, snap: st.Snapshot, attempt: st.Attempt) -> None:
        """Let run start only once every earlier attempt is over and its instances are
        confirmed gone (one may still be writing its last checkpoint during its notice, and
        a terminate may have failed): the fence that keeps two attempts from running."""
        if attempt.id not in self.sv.sessions.go and all(
                a.status == AttemptStatus.ENDED and a.released
                for a in snap.attempts if a.id != attempt.id):
            self.sv.sessions.grant_go(attempt.id)

    def _exposure(self, attempt: st.Attempt) -> list[st.ZoneEvent]:
        """Running time at a placement: the denominator of its preemption hazard."""
        if attempt.running_at is None:
            return []
        seconds = max(0.0, time.time() - attempt.running_at)
        return [self._remember(self.sv.placement_of(attempt), "run_seconds", seconds)]

    async def _finish(self, job: st.Job, attempt: st.Attempt, target: JobStatus,
                      end_reason: EndReason,
                      reason: str, exit_code: int | None) -> None:
        await self._db(self.s.transition, job.id, target, reason, exit_code=exit_code,
                       end_attempt=(attempt.id, end_reason),
                       zone_events=self._exposure(attempt),
                       expect=frozenset({JobStatus.RUNNING, JobStatus.PROVISIONING}))
        await self._release(attempt)

    async def _recover(self, job: st.Job, attempt: st.Attempt, end_reason: EndReason | None,
                       reason: str, *, keep_running: bool = False, exit_code: int | None = None,
                       restart: bool = False) -> None:
        """Move to RECOVERING. With keep_running (a notice), the old attempt keeps its
        instances until its job exits or the notice runs out, so it can checkpoint."""
        updates: dict[str, Any] = {}
        preempted = keep_running or end_reason in PREEMPTED_ENDS
        if keep_running or end_reason in RECOVERED_ENDS:
            updates["recovery_count"] = job.recovery_count + 1
        if restart:
            updates["restart_count"] = job.restart_count + 1
        end = None if keep_running or end_reason is None else (attempt.id, end_reason)
        events = []
        if preempted:
            events.append(self._remember(self.sv.placement_of(attempt), "preemption"))
        if end is not None:
            events += self._exposure(attempt)
        await self._db(self.s.transition, job.id, JobStatus.RECOVERING, reason, exit_code=exit_code,
                       end_attempt=end, job_updates=updates, zone_events=events,
                       expect=frozenset({JobStatus.RUNNING, JobStatus.PROVISIONING}))
        self.sv.on_recovery(recovery_cause(end_reason, keep_running), attempt)
        if end is not None:
            await self._release(attempt)
        self.log.info("recovering", attempt=attempt.n, reason=reason)

    async def _drain_old(self, snap: st.Snapshot) -> float:
        """Force out old attempts whose notice has run out without an exit report.

        Returns how long until the next old attempt's deadline (inf when none is left).
        """
        now, next_wait = time.time(), float("inf")
        for a in snap.attempts:
            if a.id == snap.job.current_attempt or a.status == AttemptStatus.ENDED:
                continue
            limit = (a.notice_deadline or now) + DRAIN_GRACE
            if now >= limit:
                await self._end_old(snap.job, a, "notice ran out")
            else:
                next_wait = min(next_wait, limit - now)
        return next_wait

    async def _old_attempt_message(self, snap: st.Snapshot, msg: Message) -> None:
        if msg.attempt_id is None or not any(a.id == msg.attempt_id for a in snap.attempts):
            return
        # Fresh, not from the snapshot: this step may itself have asked it to drain.
        a: st.Attempt = await self._db(self.s.get_attempt, msg.attempt_id)
        if a.status == AttemptStatus.ENDED:
            return
        if msg.kind == MessageKind.EXIT:
            nodes = await self._db(self.s.nodes_of, a.id)
            outcome = decide.attempt_outcome(nodes, a.num_nodes, False)
            if outcome is None:
                return
            # A drain was asked for (recorded before the agent could hear it) and the job
            # exited: it checkpointed and left, whatever its exit code. Only an exit 0 that
            # no drain can have caused means the job really finished on the old placement.
            drained = a.notice_deadline is not None
            if a.notice_at is None and outcome.exit_code == 0 and not drained:
                await self._source_finished(snap, a)
            elif a.notice_at is None:
                await self._end_old(snap.job, a, "left for a spot placement", EndReason.MIGRATED)
            else:
                await self._end_old(snap.job, a, "old attempt exited after its notice")
        elif msg.kind in (MessageKind.GONE, MessageKind.SILENT):
            await self._end_old(snap.job, a, "old attempt's instance is gone")

    async def _source_finished(self, snap: st.Snapshot, a: st.Attempt) -> None:
        """The job completed on the placement it was leaving: it succeeded there."""
        if snap.job.task_index + 1 < snap.job.task_count:
            await self._next_task(snap, a)
            return
        await self._db(self.s.transition, snap.job.id, JobStatus.SUCCEEDED,
                       "all nodes exited with 0 (before the move finished)", exit_code=0,
                       end_attempt=(a.id, EndReason.SUCCEEDED), zone_events=self._exposure(a),
                       expect=frozenset({JobStatus.PROVISIONING, JobStatus.RECOVERING}))
        await self._release(a)

    async def _end_old(self, job: st.Job, a: st.Attempt, info: str,
                       reason: EndReason = EndReason.PREEMPTED) -> None:
        await self._db(self.s.end_attempt, job.id, a.id, reason, None, info,
                       self._exposure(a))
        await self._release(a)

    # --- cancel and cleanup ----------------------------------------------------------------

    async def _cancel(self, snap: st.Snapshot) -> None:
        for a in snap.attempts:
            if a.status != AttemptStatus.ENDED:
                await self._db(self.s.end_attempt, snap.job.id, a.id, EndReason.CANCELLED,
                               None, "cancelled")
        if not await self._release_all(snap.attempts):
            # CANCELLED means nothing is left running: stay CANCELLING until the reaper
            # has confirmed every instance gone (it wakes this runner when it has).
            await self._next_message(RELEASE_WAIT)
            return
        await self._db(self.s.transition, snap.job.id, JobStatus.CANCELLED, "cancelled by user",
                       expect=frozenset({JobStatus.CANCELLING}))

    async def _release(self, attempt: st.Attempt) -> bool:
        """Terminate an ended attempt's instances and confirm them gone; on failure the
        reaper keeps retrying (the go gate waits for it)."""
        return await self.sv.reaper.release(attempt)

    async def _release_all(self, attempts: list[st.Attempt]) -> bool:
        done = True
        for a in attempts:
            if not a.released:
                done = await self._release(a) and done
        return done


# How the cloud's word on a vanished instance is recorded (see RECOVERED_ENDS).
GONE_ENDS = {base.PREEMPTED: EndReason.PREEMPTED, base.LOST: EndReason.LOST,
             base.NOT_FOUND: EndReason.LOST, base.TERMINATED: EndReason.TERMINATED}
RELEASE_WAIT = 30.0  # a runner waiting on the reaper looks again at least this often


def running_seconds(attempts: list[st.Attempt], now: float) -> float:
    """How long the job has run, over all its attempts (provisioning and recovery gaps do
    not count): what max_duration_hours caps."""
    return sum(max(0.0, (a.ended_at or now) - a.running_at) for a in attempts
               if a.running_at is not None)


def agent_failure_streak(attempts: list[st.Attempt], before_id: int) -> int:
    """Attempts in a row, up to ``before_id``, that ended because their agent never
    reported; counted from the store, so a restarted controller carries the count on."""
    streak = 0
    for a in reversed([a for a in attempts if a.id < before_id]):
        if a.end_reason == EndReason.AGENT_FAILED:
            streak += 1
        elif a.running_at is not None or a.end_reason not in LAUNCH_ENDS:
            break
    return streak


def recovery_cause(end_reason: EndReason | None, noticed: bool) -> RecoveryCause:
    if noticed:
        return RecoveryCause.NOTICE
    if end_reason == EndReason.FAILED:
        return RecoveryCause.USER_ERROR
    try:
        return RecoveryCause(str(end_reason))
    except ValueError:
        return RecoveryCause.OTHER
