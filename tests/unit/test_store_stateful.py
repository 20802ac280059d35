"""A stateful test of the store's state machine against a model of the allowed transitions.

Hypothesis drives a real :class:`SyncStore` (a SQLite file in a temporary directory, with a
webhook configured so every transition also queues an outbox row) through random sequences
of the calls the controller makes: submit, transitions to random targets with random
``expect`` sets, attempts begun, ended, released and noticed, migrations begun and
abandoned, cancels. A small model predicts, from :data:`store.TRANSITIONS` alone, whether
each call succeeds or raises, and what it leaves behind. After every step the store must
agree with the model, and a call that raised must have changed nothing at all.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as hs
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from skyjobs.controller import store as st
from skyjobs.exceptions import IllegalTransitionError, NotFoundError
from skyjobs.pricing.catalog import Placement, load_cloud
from tests import pg

STATES = sorted(st.ALL_STATES)
ATTEMPT_STATUSES = ["launching", "provisioning", "running"]
MISSING_JOB = 10**6  # never created: the test makes far fewer jobs than this
HOOKS = {"audit": frozenset({"all"})}


@dataclass
class ModelAttempt:
    id: int
    n: int
    status: str = "launching"
    notice: bool = False
    released: bool = False

    @property
    def ended(self) -> bool:
        return self.status == "ended"


@dataclass
class ModelJob:
    id: int
    status: str = st.PENDING
    transitions: list[tuple[str | None, str]] = field(
        default_factory=lambda: [(None, st.PENDING)])
    events: int = 1  # all events, transitions and info
    attempts: list[ModelAttempt] = field(default_factory=list)
    current: int | None = None  # the store id of the current attempt
    recovery_count: int = 0

    def move(self, target: str) -> None:
        self.transitions.append((self.status, target))
        self.events += 1
        self.status = target

    def pick(self, index: int) -> ModelAttempt:
        return self.attempts[index % len(self.attempts)]


def allowed(current: str, target: str, expect: frozenset[str] | None = None) -> bool:
    return (expect is None or current in expect) and target in st.TRANSITIONS[current]


def placement(use_spot: bool) -> Placement:
    o = load_cloud("local")[0]
    return Placement(o, use_spot, (o.spot_price or 0.0) if use_spot else o.ondemand_price)


class StoreMachine(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="skyjobs-stateful-"))
        self.schema: str | None = None
        self.db = st.SyncStore(self.target(), hooks=HOOKS)
        self.model: dict[int, ModelJob] = {}
        self.settled: dict[int, str] = {}  # jobs seen terminal, and the state they ended in

    def target(self) -> Path | str:
        return self.dir / "state.db"

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.schema is not None:
            pg.drop_schema(self.schema)

    # --- helpers -------------------------------------------------------------------------

    def dump(self) -> Any:
        """Everything observable through the store's public reads, for 'nothing changed'."""
        jobs = self.db.list_jobs(limit=1_000_000)
        return (jobs, [(self.db.events(j.id), self.db.attempts_of(j.id)) for j in jobs],
                self.db.outbox_stats())

    def refused(self, error: type[Exception], fn: Any, *args: Any, **kwargs: Any) -> None:
        before = self.dump()
        with pytest.raises(error):
            fn(*args, **kwargs)
        assert self.dump() == before, "a refused call changed the store"

    # --- rules ---------------------------------------------------------------------------

    @initialize(target=jobs)
    def first_job(self) -> int:
        return self._new_job()

    @rule(target=jobs)
    def create_job(self) -> int:
        return self._new_job()

    def _new_job(self) -> int:
        job_id = self.db.create_job("job", {"run": "true"}, False, "sky")
        assert job_id not in self.model
        self.model[job_id] = ModelJob(job_id)
        return job_id

    @rule(job=jobs, legal=hs.booleans(), choice=hs.integers(0, 99),
          expect=hs.none() | hs.frozensets(hs.sampled_from(STATES)),
          end=hs.none() | hs.integers(0, 9), exit_code=hs.none() | hs.integers(-9, 3))
    def transition(self, job: int, legal: bool, choice: int, expect: frozenset[str] | None,
                   end: int | None, exit_code: int | None) -> None:
        m = self.model[job]
        # Half the time aim at a move the machine allows, or random targets almost never
        # get a job past PENDING.
        options = sorted(st.TRANSITIONS[m.status]) if legal else STATES
        target = (options or STATES)[choice % len(options or STATES)]
        ending = m.pick(end) if end is not None and m.attempts else None
        kwargs: dict[str, Any] = {"expect": expect, "exit_code": exit_code}
        if ending is not None:
            kwargs["end_attempt"] = (ending.id, "superseded")
        if target == st.RECOVERING:
            kwargs["job_updates"] = {"recovery_count": m.recovery_count + 1}
        if not allowed(m.status, target, expect):
            self.refused(IllegalTransitionError, self.db.transition, job, target, "step",
                         **kwargs)
            return
        assert self.db.transition(job, target, "step", **kwargs) == m.status
        m.move(target)
        if ending is not None:
            ending.status = "ended"
        if target == st.RECOVERING:
            m.recovery_count += 1

    @rule(job=jobs, nodes=hs.integers(1, 3), use_spot=hs.booleans())
    def begin_attempt(self, job: int, nodes: int, use_spot: bool) -> None:
        m = self.model[job]
        if not (m.status == st.PROVISIONING or allowed(m.status, st.PROVISIONING)):
            self.refused(IllegalTransitionError, self.db.begin_attempt, job,
                         placement(use_spot), nodes, "sjx", "launch")
            return
        a = self.db.begin_attempt(job, placement(use_spot), nodes, "sjx", "launch")
        assert (a.job_id, a.n, a.status, a.num_nodes) == (job, len(m.attempts) + 1,
                                                          "launching", nodes)
        assert len(set(a.instance_ids)) == nodes
        if m.status == st.PROVISIONING:
            m.events += 1  # an info event: already provisioning
        else:
            m.move(st.PROVISIONING)
        m.attempts.append(ModelAttempt(a.id, a.n))
        m.current = a.id

    @rule(job=jobs, pick=hs.integers(0, 9), status=hs.sampled_from(ATTEMPT_STATUSES),
          running=hs.booleans())
    def set_attempt_status(self, job: int, pick: int, status: str, running: bool) -> None:
        m = self.model[job]
        if not m.attempts:
            return
        a = m.pick(pick)
        self.db.set_attempt_status(a.id, status, running=running)
        if not a.ended:
            a.status = status

    @rule(job=jobs, pick=hs.integers(0, 9), exit_code=hs.none() | hs.integers(0, 3))
    def end_attempt(self, job: int, pick: int, exit_code: int | None) -> None:
        m = self.model[job]
        if not m.attempts:
            return
        a = m.pick(pick)
        self.db.end_attempt(job, a.id, "no_capacity", exit_code, "attempt ended")
        if not a.ended:  # ending it again is a no-op that records nothing
            m.events += 1
            a.status = "ended"

    @rule(job=jobs, pick=hs.integers(0, 9))
    def mark_released(self, job: int, pick: int) -> None:
        m = self.model[job]
        if not m.attempts:
            return
        a = m.pick(pick)
        self.db.mark_released(a.id)
        a.released = True

    @rule(job=jobs, pick=hs.integers(0, 9))
    def notice(self, job: int, pick: int) -> None:
        m = self.model[job]
        if not m.attempts:
            return
        a = m.pick(pick)
        o = load_cloud("local")[0]
        moved = self.db.notice_and_recover(job, a.id, 1000.0, 1120.0, "preemption notice",
                                           (Placement(o, True, 0.0), "preempted", 1.0))
        if a.notice:  # a replayed notice is ignored
            assert not moved
            return
        a.notice = True
        m.events += 1
        expected = a.id == m.current and m.status in (st.RUNNING, st.PROVISIONING)
        assert moved == expected
        if expected:
            m.move(st.RECOVERING)
            m.recovery_count += 1

    @rule(job=jobs, pick=hs.none() | hs.integers(0, 9))
    def begin_migration(self, job: int, pick: int | None) -> None:
        m = self.model[job]
        if pick is None or not m.attempts:
            attempt_id = m.current if m.current is not None else 0
        else:
            attempt_id = m.pick(pick).id
        if m.current is None or attempt_id != m.current or m.status != st.RUNNING:
            self.refused(IllegalTransitionError, self.db.begin_migration, job, attempt_id,
                         "better placement")
            return
        self.db.begin_migration(job, attempt_id, "better placement")
        m.move(st.RECOVERING)

    @rule(job=jobs, pick=hs.integers(0, 9))
    def abort_migration(self, job: int, pick: int) -> None:
        m = self.model[job]
        if not m.attempts:
            return
        source = m.pick(pick)
        # Staying needs somewhere to stay: an ended source (it exited meanwhile) is refused.
        if m.status not in (st.PROVISIONING, st.RECOVERING) or source.ended:
            self.refused(IllegalTransitionError, self.db.abort_migration, job, source.id,
                         "no better placement")
            return
        self.db.abort_migration(job, source.id, "no better placement")
        m.move(st.RUNNING)
        m.current = source.id

    @rule(job=jobs)
    def cancel_request(self, job: int) -> None:
        # What the API does on `skyjobs cancel`.
        m = self.model[job]
        cancellable = frozenset(st.LIVE - {st.CANCELLING})
        if m.status not in cancellable:
            self.refused(IllegalTransitionError, self.db.transition, job, st.CANCELLING,
                         "cancel requested", expect=cancellable)
            return
        self.db.transition(job, st.CANCELLING, "cancel requested", expect=cancellable)
        m.move(st.CANCELLING)

    @rule(job=jobs)
    def cancel_finish(self, job: int) -> None:
        # What the job's runner does once its instances are gone.
        m = self.model[job]
        expect = frozenset({st.CANCELLING})
        if m.status != st.CANCELLING:
            self.refused(IllegalTransitionError, self.db.transition, job, st.CANCELLED,
                         "cancelled", expect=expect)
            return
        self.db.transition(job, st.CANCELLED, "cancelled", expect=expect)
        m.move(st.CANCELLED)

    @rule(job=jobs)
    def no_capacity_round(self, job: int) -> None:
        before = self.db.get_job(job).launch_rounds
        assert self.db.no_capacity_round(job) == before + 1

    @rule(state=hs.sampled_from(STATES))
    def missing_job(self, state: str) -> None:
        self.refused(NotFoundError, self.db.transition, MISSING_JOB, state, "step")
        self.refused(NotFoundError, self.db.begin_attempt, MISSING_JOB, placement(True), 1,
                     "sjx", "launch")
        self.refused(NotFoundError, self.db.get_job, MISSING_JOB)
        self.refused(NotFoundError, self.db.events, MISSING_JOB)

    # --- invariants ----------------------------------------------------------------------

    @invariant()
    def store_agrees_with_model(self) -> None:
        total_transitions = 0
        for job_id, m in self.model.items():
            job = self.db.get_job(job_id)
            assert job.status == m.status
            assert job.recovery_count == m.recovery_count
            events = self.db.events(job_id)
            assert len(events) == m.events
            moves = [(e["from_status"], e["to_status"]) for e in events
                     if e["kind"] == "transition"]
            # Exactly one event per successful transition, with the right from/to...
            assert moves == m.transitions
            # ...and they chain: each starts where the previous one ended.
            assert all(prev[1] == nxt[0] for prev, nxt in zip(moves, moves[1:], strict=False))
            total_transitions += len(moves)
            assert all(e["from_status"] is None and e["to_status"] is None
                       for e in events if e["kind"] != "transition")
        # Each transition queued its webhook delivery in the same transaction, no more.
        assert self.db.outbox_stats()["backlog"] == total_transitions

    @invariant()
    def terminal_states_never_move(self) -> None:
        for job_id, m in self.model.items():
            job = self.db.get_job(job_id)
            if job_id in self.settled:
                assert job.status == self.settled[job_id]
            elif job.status in st.TERMINAL:
                self.settled[job_id] = job.status
            assert (job.ended_at is not None) == (job.status in st.TERMINAL)
            assert m.status in st.ALL_STATES

    @invariant()
    def attempts_are_numbered_and_current_is_ours(self) -> None:
        for job_id, m in self.model.items():
            job = self.db.get_job(job_id)
            attempts = self.db.attempts_of(job_id)
            assert [a.n for a in attempts] == list(range(1, len(attempts) + 1))
            assert job.attempt_count == len(attempts)
            assert [a.id for a in attempts] == [a.id for a in m.attempts]
            assert job.current_attempt == m.current
            assert job.current_attempt is None or job.current_attempt in {a.id for a in attempts}
            for a, ma in zip(attempts, m.attempts, strict=True):
                assert a.job_id == job_id
                assert a.status == ma.status
                assert (a.ended_at is not None) == ma.ended
                assert (a.notice_at is not None) == ma.notice
                assert a.released == ma.released
            snap = self.db.snapshot(job_id)
            assert (snap.current.id if snap.current else None) == m.current

    @invariant()
    def ended_or_orphaned_attempts_are_due_for_release(self) -> None:
        if not hasattr(self.db, "attempts_to_release"):
            return
        due = {a.id for m in self.model.values() for a in m.attempts
               if not a.released and (a.ended or m.status in st.TERMINAL)}
        assert {a.id for a in self.db.attempts_to_release()} == due


class PostgresStoreMachine(StoreMachine):
    """The same rules on PostgreSQL, each run in a fresh schema."""

    def target(self) -> Path | str:
        pg.require()
        self.schema = f"s_{secrets.token_hex(6)}"
        with psycopg.connect(pg.base_url(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {self.schema}")
        return pg.with_search_path(pg.base_url(), self.schema)


StoreMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow])
TestStoreStateMachine = StoreMachine.TestCase
# Fewer runs on PostgreSQL: each builds a schema on the server (the rules are the same).
PostgresStoreMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=30, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow])
TestPostgresStoreStateMachine = PostgresStoreMachine.TestCase
