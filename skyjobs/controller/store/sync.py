"""The SQL itself: the only code that speaks SQL to the controller's database.

Every state change is one transaction that compare-and-sets the job's status and writes its
event (and its webhook deliveries), so a ``kill -9`` between any two statements leaves either
the old state or the new one, never half of each. Each statement is written once for SQLite
and PostgreSQL alike; :mod:`.dialect` holds what differs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from skyjobs.controller import payloads
from skyjobs.controller.store.blobs import BlobSql
from skyjobs.controller.store.dialect import dialect_for
from skyjobs.controller.store.leases import FENCE, LeaseSql
from skyjobs.controller.store.models import (
    Attempt,
    GcBatch,
    Job,
    Notice,
    Snapshot,
    ZoneEvent,
    _archives,
    _attempt,
    _job,
    check_transition,
    node_hours,
)
from skyjobs.exceptions import IllegalTransitionError, NotFoundError, SkyjobsError
from skyjobs.pricing.catalog import Placement
from skyjobs.states import LIVE, TERMINAL, EndReason, JobStatus, NodePhase

# The states by the names the store's SQL code reads best with.
PENDING, PROVISIONING, RUNNING = JobStatus.PENDING, JobStatus.PROVISIONING, JobStatus.RUNNING
RECOVERING = JobStatus.RECOVERING
Conn = Any  # Conn or dialect.PostgresConnection: the same face


class SyncStore(LeaseSql, BlobSql):
    """The SQL itself. Not thread-safe by design: use it only through :class:`Store`."""

    def __init__(self, target: Path | str, hooks: dict[str, frozenset[str]] | None = None,
                 idle_timeout_s: float | None = None) -> None:
        """``target``: the SQLite file, or a ``postgresql://`` URL (whose server ends the
        session after ``idle_timeout_s`` idle, when given)."""
        # Webhook name -> the event names it wants; deliveries are queued per transition.
        self.hooks = hooks or {}
        self.d = dialect_for(target, idle_timeout_s)
        self.conn: Conn = self.d.connect()
        try:
            self.d.migrate(self.conn)
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _tx(self) -> Iterator[Conn]:
        self.conn.execute(self.d.begin)
        try:
            fence = FENCE.get()
            if fence is not None:  # a runner's write: only while its lease is still its own
                self._check_fence(self.conn, fence)
            yield self.conn
        except BaseException:
            try:
                self.conn.execute("ROLLBACK")
            except Exception:  # noqa: BLE001 - the connection died: the server rolled back
                pass
            raise
        self.conn.execute("COMMIT")

    def schema_version(self) -> int:
        return self.d.schema_version(self.conn)

    # --- meta ------------------------------------------------------------------------------

    def get_or_set_meta(self, key: str, default: str) -> str:
        with self._tx() as c:
            # (Two controllers may set it at once: the first to commit wins for both.)
            c.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
                      (key, default))
            return str(c.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

    # --- jobs ------------------------------------------------------------------------------

    def create_job(self, name: str, task: dict[str, Any], has_archive: bool,
                   task_id_prefix: str) -> int:
        return self.create_jobs(name, task, has_archive, task_id_prefix, 1)[0]

    def create_jobs(self, name: str, task: dict[str, Any], has_archive: bool,
                    task_id_prefix: str, count: int, task_count: int = 1) -> list[int]:
        """One job, or a job array of ``count`` (ranks 0..count-1, all or none stored),
        each with a lease any controller may claim."""
        return [job_id for job_id, _ in self.create_leased_jobs(
            name, task, has_archive, task_id_prefix, count, task_count)]

    def create_leased_jobs(self, name: str, task: dict[str, Any], has_archive: bool,
                           task_id_prefix: str, count: int, task_count: int = 1,
                           member: str | None = None,
                           lease_s: float = 30.0) -> list[tuple[int, str | None]]:
        """create_jobs, with each job leased to a live controller (see assign_new_jobs;
        ``member``: the one taking the submit). Returns (job id, owner) pairs."""
        now = time.time()
        ids: list[int] = []
        with self._tx() as c:
            for rank in range(count):
                cur = c.execute(
                    "INSERT INTO jobs(name, status, task_json, task_id, submitted_at,"
                    " updated_at, has_archive) VALUES (?, ?, ?, '', ?, ?, ?) RETURNING id",
                    (name, PENDING, json.dumps(task), now, now, int(has_archive)))
                job_id = int(cur.fetchone()[0])
                ids.append(job_id)
                array = (ids[0], rank) if count > 1 else (None, None)
                c.execute("UPDATE jobs SET task_id=?, array_id=?, array_rank=?, task_count=?"
                          " WHERE id=?", (f"{task_id_prefix}-{job_id}", *array, task_count,
                                          job_id))
                reason = f"submitted (array {ids[0]}, rank {rank})" if count > 1 \
                    else "submitted"
                self._event(c, job_id, "transition", None, PENDING, reason, now=now)
            owners = self.assign_new_jobs(c, ids, member, lease_s)
        return list(zip(ids, owners, strict=True))

    def get_job(self, job_id: int) -> Job:
        row = self.conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"job {job_id} does not exist")
        return _job(row)

    def list_jobs(self, statuses: list[str] | None = None, limit: int = 1000, offset: int = 0,
                  name: str | None = None, array_id: int | None = None) -> list[Job]:
        where: list[str] = []
        args: list[Any] = []
        if array_id is not None:
            where.append("array_id = ?")
            args.append(array_id)
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args.extend(statuses)
        if name:
            where.append("name = ?")
            args.append(name)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.conn.execute(
            f"SELECT * FROM jobs {clause} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset)).fetchall()
        return [_job(r) for r in rows]

    def count_jobs(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {r[0]: r[1] for r in rows}

    def live_task_keys(self) -> list[tuple[int, int]]:
        """(job id, task index) of every live job: what the price poller's cache is keyed
        on (a job's task never changes, so its offerings are matched once)."""
        marks = ",".join("?" * len(LIVE))
        rows = self.conn.execute(f"SELECT id, task_index FROM jobs WHERE status IN ({marks})",
                                 tuple(LIVE)).fetchall()
        return [(r[0], r[1]) for r in rows]

    def jobs_by_id(self, job_ids: list[int]) -> list[Job]:
        out: list[Job] = []
        for chunk in range(0, len(job_ids), 500):
            ids = job_ids[chunk:chunk + 500]
            rows = self.conn.execute(
                f"SELECT * FROM jobs WHERE id IN ({','.join('?' * len(ids))})", ids).fetchall()
            out.extend(_job(r) for r in rows)
        return out

    def live_job_ids(self) -> list[int]:
        marks = ",".join("?" * len(LIVE))
        rows = self.conn.execute(f"SELECT id FROM jobs WHERE status IN ({marks}) ORDER BY id",
                                 tuple(LIVE)).fetchall()
        return [r[0] for r in rows]

    def _event(self, c: Conn, job_id: int, kind: str, frm: str | None,
               to: str | None, reason: str | None, exit_code: int | None = None,
               attempt: int | None = None, placement: str | None = None,
               now: float | None = None) -> None:
        at = now or time.time()
        cur = c.execute(
            "INSERT INTO events(job_id, at, kind, from_status, to_status, reason, exit_code,"
            " attempt, placement) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (job_id, at, kind, frm, to, reason, exit_code, attempt, placement))
        event_id = int(cur.fetchone()[0])
        if kind == "transition" and self.hooks:
            self._enqueue(c, event_id, job_id, frm, to, reason, exit_code,
                          attempt, placement, at)

    def _enqueue(self, c: Conn, event_id: int, job_id: int, frm: str | None,
                 to: str | None, reason: str | None, exit_code: int | None,
                 attempt: int | None, placement: str | None, at: float) -> None:
        """Queue webhook deliveries in the transition's own transaction: a transition is
        never recorded without its notifications, nor notified without being recorded."""
        job = c.execute("SELECT name, task_id, recovery_count, task_index, task_count"
                        " FROM jobs WHERE id=?", (job_id,)).fetchone()
        name = payloads.event_name(frm, to, job["recovery_count"])
        cost, on_demand = c.execute(
            "SELECT COALESCE(SUM(h * price_per_hour), 0),"
            " COALESCE(SUM(h * COALESCE(ondemand_price, price_per_hour)), 0) FROM"
            " (SELECT node_hours(created_at, ended_at, num_nodes, ?) AS h, price_per_hour,"
            " ondemand_price FROM attempts WHERE job_id=?) AS spent", (at, job_id)).fetchone()
        if placement is None:
            row = c.execute("SELECT cloud, zone, instance_type, use_spot, n FROM attempts"
                            " WHERE job_id=? ORDER BY n DESC LIMIT 1", (job_id,)).fetchone()
            if row is not None:
                kind = "spot" if row["use_spot"] else "on-demand"
                placement = f"{row['cloud']}/{row['zone']}/{row['instance_type']}/{kind}"
                attempt = attempt or row["n"]
        for hook, wanted in self.hooks.items():
            if "all" not in wanted and name not in wanted:
                continue
            body = payloads.event_payload(
                event_id=event_id, hook=hook, name=name, job_id=job_id, job_name=job["name"],
                task_id=job["task_id"], frm=frm, to=to, reason=reason, exit_code=exit_code,
                attempt=attempt, placement=placement, recovery_count=job["recovery_count"],
                cost=cost, saving=on_demand - cost, at=at,
                # task_done names the task that finished, whose index has just moved on.
                task=job["task_index"] + (0 if name == "task_done" else 1),
                tasks=job["task_count"])
            c.execute("INSERT INTO outbox(job_id, event_id, hook, payload, next_at, created_at)"
                      " VALUES (?, ?, ?, ?, ?, ?)", (job_id, event_id, hook, json.dumps(body),
                                                     at, at))

    # --- webhook outbox --------------------------------------------------------------------

    def due_deliveries(self, now: float, limit: int = 100) -> list[dict[str, Any]]:
        """The oldest undelivered item of each (job, hook) whose retry time has come: later
        items wait, so each receiver hears a job's events in order."""
        rows = self.conn.execute(
            "SELECT o.* FROM outbox o WHERE o.delivered_at IS NULL AND o.next_at <= ? AND"
            " o.id = (SELECT MIN(id) FROM outbox p WHERE p.job_id = o.job_id AND"
            " p.hook = o.hook AND p.delivered_at IS NULL) ORDER BY o.id LIMIT ?",
            (now, limit)).fetchall()
        return [dict(r) for r in rows]

    def mark_delivered(self, outbox_id: int) -> None:
        with self._tx() as c:
            c.execute("UPDATE outbox SET delivered_at=?, attempts=attempts+1 WHERE id=?",
                      (time.time(), outbox_id))

    def mark_retry(self, outbox_id: int, next_at: float, error: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE outbox SET attempts=attempts+1, next_at=?, last_error=?"
                      " WHERE id=?", (next_at, error[:500], outbox_id))

    def usage_by_offering(self, now: float) -> list[dict[str, Any]]:
        """Node-hours and cost of every attempt ever, summed per offering (for metrics): the
        running totals of ended attempts plus the attempts still open."""
        rows = self.conn.execute(
            "SELECT cloud, zone, instance_type, use_spot, SUM(node_hours) AS node_hours,"
            " SUM(cost) AS cost FROM (SELECT cloud, zone, instance_type, use_spot, node_hours,"
            " cost FROM usage_totals UNION ALL SELECT cloud, zone, instance_type, use_spot, h,"
            " h * price_per_hour FROM (SELECT cloud, zone, instance_type, use_spot,"
            " price_per_hour, node_hours(created_at, ended_at, num_nodes, ?) AS h"
            " FROM attempts WHERE status IN ('launching', 'provisioning', 'running'))"
            " AS open_attempts) AS offerings"
            " GROUP BY cloud, zone, instance_type, use_spot", (now,)).fetchall()
        return [dict(r) for r in rows]

    def outbox_stats(self) -> dict[str, int]:
        row = self.conn.execute(
            "SELECT COUNT(*) AS backlog, COALESCE(SUM(CASE WHEN attempts > 0"
            " THEN 1 ELSE 0 END), 0) AS retrying"
            " FROM outbox WHERE delivered_at IS NULL").fetchone()
        return {"backlog": int(row["backlog"]), "retrying": int(row["retrying"])}

    def _cas(self, c: Conn, job_id: int, target: str, expect: frozenset[str] | None,
             updates: dict[str, Any], now: float) -> str:
        # The job's row stays locked to commit: writers of one job take turns (PostgreSQL;
        # SQLite has one writer anyway), so its events' ids follow commit order.
        row = c.execute("SELECT status FROM jobs WHERE id=?" + self.d.for_update,
                        (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"job {job_id} does not exist")
        current = row[0]
        if expect is not None and current not in expect:
            raise IllegalTransitionError(job_id, current, target)
        check_transition(job_id, current, target)
        fields = {"status": target, "updated_at": now, **updates}
        if target in TERMINAL:
            fields["ended_at"] = now
        sets = ", ".join(f"{k}=?" for k in fields)
        cur = c.execute(f"UPDATE jobs SET {sets} WHERE id=? AND status=?",
                        (*fields.values(), job_id, current))
        if cur.rowcount != 1:
            raise IllegalTransitionError(job_id, current, target)
        return str(current)

    def transition(self, job_id: int, target: str, reason: str, *,
                   expect: frozenset[str] | None = None, exit_code: int | None = None,
                   end_attempt: tuple[int, str] | None = None,
                   running_attempt: int | None = None,
                   zone_events: list[ZoneEvent] | None = None,
                   job_updates: dict[str, Any] | None = None) -> str:
        """Compare-and-set the job's status and write its event, in one transaction with
        the attempt and preemption-memory changes that go with it.

        Returns the previous status. Raises IllegalTransitionError when the move is not in
        the state machine or the status is not one of ``expect``.
        """
        now = time.time()
        with self._tx() as c:
            if running_attempt is not None:
                c.execute("UPDATE attempts SET status='running', running_at=COALESCE("
                          "running_at, ?) WHERE id=? AND status!='ended'",
                          (now, running_attempt))
            for event in zone_events or ():
                self._zone_event(c, *event, now=now)
            updates = {"reason": reason, **(job_updates or {})}
            if exit_code is not None:
                updates.setdefault("exit_code", exit_code)
            previous = self._cas(c, job_id, target, expect, updates, now)
            attempt_n, placement = None, None
            if end_attempt is not None:
                attempt_n, placement = self._end_attempt(c, job_id, end_attempt[0],
                                                         end_attempt[1], exit_code, now)
            self._event(c, job_id, "transition", previous, target, reason, exit_code,
                        attempt_n, placement, now)
        return previous

    def begin_attempt(self, job_id: int, placement: Placement, num_nodes: int,
                      id_prefix: str, reason: str) -> Attempt:
        """Record the intent to launch before any cloud call, so a crash leaks nothing.

        Moves the job to PROVISIONING if it is not there yet, in the same transaction.
        """
        now = time.time()
        with self._tx() as c:
            job = c.execute("SELECT status, attempt_count, task_index FROM jobs WHERE id=?"
                            + self.d.for_update, (job_id,)).fetchone()
            if job is None:
                raise NotFoundError(f"job {job_id} does not exist")
            n = job["attempt_count"] + 1
            ids = [f"{id_prefix}-{job_id}-{n}-{rank}" for rank in range(num_nodes)]
            cur = c.execute(
                "INSERT INTO attempts(job_id, n, status, cloud, region, zone, instance_type,"
                " use_spot, price_per_hour, num_nodes, instance_ids, created_at, ondemand_price,"
                " task_index) VALUES (?, ?, 'launching', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " RETURNING id",
                (job_id, n, placement.cloud, placement.region, placement.zone,
                 placement.instance_type, int(placement.use_spot), placement.price_per_hour,
                 num_nodes, json.dumps(ids), now, placement.offering.ondemand_price,
                 job["task_index"]))
            attempt_id = int(cur.fetchone()[0])
            updates = {"attempt_count": n, "current_attempt": attempt_id}
            if job["status"] == PROVISIONING:
                c.execute("UPDATE jobs SET attempt_count=?, current_attempt=?, updated_at=?"
                          " WHERE id=? AND status=?", (n, attempt_id, now, job_id, PROVISIONING))
                self._event(c, job_id, "info", None, None, f"launching attempt {n}: {reason}",
                            attempt=n, placement=placement.label(), now=now)
            else:
                previous = self._cas(c, job_id, PROVISIONING, None, updates, now)
                self._event(c, job_id, "transition", previous, PROVISIONING,
                            f"launching attempt {n}: {reason}", attempt=n,
                            placement=placement.label(), now=now)
            row = c.execute("SELECT * FROM attempts WHERE id=?", (attempt_id,)).fetchone()
        return _attempt(row)

    @staticmethod
    def _attempt_row(c: Conn, job_id: int, attempt_id: int) -> Any:
        """The attempt, which must be one of this job's: a write through the wrong job's
        id would move one job on another's instances."""
        row = c.execute("SELECT * FROM attempts WHERE id=?", (attempt_id,)).fetchone()
        if row is None or row["job_id"] != job_id:
            raise NotFoundError(f"job {job_id} has no attempt {attempt_id}")
        return row

    def _require_job(self, c: Conn, job_id: int) -> Any:
        row = c.execute("SELECT * FROM jobs WHERE id=?" + self.d.for_update,
                        (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"job {job_id} does not exist")
        return row

    def _end_attempt(self, c: Conn, job_id: int, attempt_id: int,
                     end_reason: str, exit_code: int | None, now: float) -> tuple[int, str]:
        row = self._attempt_row(c, job_id, attempt_id)
        end_reason = EndReason(end_reason)  # a reason outside the enum is a bug: fail here
        a = _attempt(row)
        if row["status"] != "ended":
            c.execute("UPDATE attempts SET status='ended', ended_at=?, end_reason=?, exit_code=?"
                      " WHERE id=?", (now, end_reason, exit_code, attempt_id))
            hours = node_hours(a.created_at, now, a.num_nodes, now)
            c.execute("INSERT INTO usage_totals(cloud, zone, instance_type, use_spot,"
                      " node_hours, cost) VALUES (?, ?, ?, ?, ?, ?)"
                      " ON CONFLICT(cloud, zone, instance_type, use_spot) DO UPDATE SET"
                      " node_hours = usage_totals.node_hours + excluded.node_hours,"
                      " cost = usage_totals.cost + excluded.cost",
                      (a.cloud, a.zone, a.instance_type, int(a.use_spot), hours,
                       hours * a.price_per_hour))
        return a.n, a.placement_label()

    def end_attempt(self, job_id: int, attempt_id: int, end_reason: str,
                    exit_code: int | None, info: str,
                    zone_events: list[ZoneEvent] | None = None) -> None:
        """End an attempt without a job transition (e.g. a launch that found no capacity).
        Ending an attempt that has already ended changes nothing and records nothing."""
        now = time.time()
        with self._tx() as c:
            if self._attempt_row(c, job_id, attempt_id)["status"] == "ended":
                return
            for event in zone_events or ():
                self._zone_event(c, *event, now=now)
            n, label = self._end_attempt(c, job_id, attempt_id, end_reason, exit_code, now)
            self._event(c, job_id, "info", None, None, info, exit_code, n, label, now)

    def set_attempt_status(self, attempt_id: int, status: str, *, running: bool = False,
                           zone_events: list[ZoneEvent] | None = None) -> None:
        with self._tx() as c:
            for event in zone_events or ():
                self._zone_event(c, *event, now=time.time())
            if running:
                c.execute("UPDATE attempts SET status=?, running_at=COALESCE(running_at, ?)"
                          " WHERE id=? AND status!='ended'", (status, time.time(), attempt_id))
            else:
                c.execute("UPDATE attempts SET status=? WHERE id=? AND status!='ended'",
                          (status, attempt_id))

    def notice_and_recover(self, job_id: int, attempt_id: int, at: float, deadline: float,
                           info: str, zone_event: ZoneEvent) -> bool:
        """A preemption notice: record it and, when it is for the job's current attempt,
        move the job to RECOVERING in the same transaction, so the controller acts the
        moment it hears. Returns True when the job moved."""
        with self._tx() as c:
            return self._notice(c, job_id, attempt_id, at, deadline, info, zone_event)

    def notices_and_recover(self, notices: list[Notice]) -> list[bool | SkyjobsError]:
        """Many notices (a zone reclaimed at once) in one transaction, each as
        notice_and_recover would record it; one that fails (an unknown attempt) is rolled
        back alone and its error returned in its place."""
        out: list[bool | SkyjobsError] = []
        with self._tx() as c:
            for notice in notices:
                c.execute("SAVEPOINT notice")
                try:
                    out.append(self._notice(c, *notice))
                except SkyjobsError as err:
                    c.execute("ROLLBACK TO notice")
                    out.append(err)
                c.execute("RELEASE notice")
        return out

    def _notice(self, c: Conn, job_id: int, attempt_id: int, at: float,
                deadline: float, info: str, zone_event: ZoneEvent) -> bool:
        self._attempt_row(c, job_id, attempt_id)
        cur = c.execute("UPDATE attempts SET notice_at=?, notice_deadline=? WHERE id=?"
                        " AND notice_at IS NULL", (at, deadline, attempt_id))
        if cur.rowcount == 0:
            return False
        n = c.execute("SELECT n FROM attempts WHERE id=?", (attempt_id,)).fetchone()[0]
        self._event(c, job_id, "info", None, None, info, attempt=n, now=at)
        job = c.execute("SELECT status, current_attempt, recovery_count FROM jobs"
                        " WHERE id=?", (job_id,)).fetchone()
        if job["current_attempt"] != attempt_id or job["status"] not in (RUNNING,
                                                                         PROVISIONING):
            return False
        self._zone_event(c, *zone_event, now=at)
        previous = self._cas(c, job_id, RECOVERING, None,
                             {"recovery_count": job["recovery_count"] + 1,
                              "reason": "preemption notice"}, at)
        self._event(c, job_id, "transition", previous, RECOVERING, "preemption notice",
                    attempt=n, now=at)
        return True

    def begin_migration(self, job_id: int, attempt_id: int, reason: str) -> None:
        """Leave a running attempt for a better placement: RUNNING -> RECOVERING while the
        old attempt keeps running until its replacement is ready (no recovery is counted)."""
        with self._tx() as c:
            job = self._require_job(c, job_id)
            if job["current_attempt"] != attempt_id:
                raise IllegalTransitionError(job_id, job["status"], RECOVERING)
            previous = self._cas(c, job_id, RECOVERING, frozenset({RUNNING}),
                                 {"reason": reason}, time.time())
            n = c.execute("SELECT n FROM attempts WHERE id=?", (attempt_id,)).fetchone()[0]
            self._event(c, job_id, "transition", previous, RECOVERING, reason, attempt=n)

    def abort_migration(self, job_id: int, source_id: int, reason: str) -> None:
        """No better placement came up: the job goes on where it still runs."""
        with self._tx() as c:
            source = self._attempt_row(c, job_id, source_id)
            if source["status"] == "ended":  # it exited meanwhile: there is nothing to stay on
                raise IllegalTransitionError(job_id, self._require_job(c, job_id)["status"],
                                             RUNNING)
            previous = self._cas(c, job_id, RUNNING, frozenset({PROVISIONING, RECOVERING}),
                                 {"current_attempt": source_id, "reason": reason}, time.time())
            c.execute("UPDATE attempts SET notice_deadline=NULL WHERE id=?", (source_id,))
            n = c.execute("SELECT n FROM attempts WHERE id=?", (source_id,)).fetchone()[0]
            self._event(c, job_id, "transition", previous, RUNNING, reason, attempt=n)

    def next_task(self, job_id: int, attempt_id: int, reason: str,
                  zone_events: list[ZoneEvent] | None = None) -> None:
        """A pipeline's task succeeded on this attempt: end the attempt and move the job on
        to its next task (PROVISIONING, launched next), in one transaction. Per-task
        budgets (restarts on errors, no-capacity rounds) start over; recoveries add up."""
        now = time.time()
        with self._tx() as c:
            job = self._require_job(c, job_id)
            if job["task_index"] + 1 >= job["task_count"]:
                raise IllegalTransitionError(job_id, job["status"], PROVISIONING)
            for event in zone_events or ():
                self._zone_event(c, *event, now=now)
            n, label = self._end_attempt(c, job_id, attempt_id, EndReason.SUCCEEDED, 0, now)
            # Any other attempt of the finished task (a migration's replacement) ends with it,
            # in this transaction: left open past a crash, it would block the next task's go.
            for row in c.execute("SELECT id FROM attempts WHERE job_id=? AND task_index=? AND"
                                 " status!='ended' AND id!=?",
                                 (job_id, job["task_index"], attempt_id)).fetchall():
                self._end_attempt(c, job_id, row["id"], EndReason.SUPERSEDED, None, now)
            updates = {"task_index": job["task_index"] + 1, "restart_count": 0,
                       "launch_rounds": 0, "reason": reason}
            if job["status"] == PROVISIONING:  # it finished while moving (a migration)
                sets = ", ".join(f"{k}=?" for k in updates)
                c.execute(f"UPDATE jobs SET {sets}, updated_at=? WHERE id=?",
                          (*updates.values(), now, job_id))
                self._event(c, job_id, "info", None, None, reason, 0, n, label, now)
                return
            previous = self._cas(c, job_id, PROVISIONING,
                                 frozenset({RUNNING, RECOVERING}), updates, now)
            self._event(c, job_id, "transition", previous, PROVISIONING, reason, 0, n, label,
                        now)

    def set_drain_deadline(self, attempt_id: int, deadline: float) -> None:
        with self._tx() as c:
            c.execute("UPDATE attempts SET notice_deadline=? WHERE id=? AND notice_deadline IS"
                      " NULL", (deadline, attempt_id))

    def mark_released(self, attempt_id: int) -> None:
        with self._tx() as c:
            c.execute("UPDATE attempts SET released=1 WHERE id=?", (attempt_id,))

    def get_attempt(self, attempt_id: int) -> Attempt:
        row = self.conn.execute("SELECT * FROM attempts WHERE id=?", (attempt_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"attempt {attempt_id} does not exist")
        return _attempt(row)

    def attempts_of(self, job_id: int) -> list[Attempt]:
        rows = self.conn.execute("SELECT * FROM attempts WHERE job_id=? ORDER BY n",
                                 (job_id,)).fetchall()
        return [_attempt(r) for r in rows]

    def attempts_for_jobs(self, job_ids: list[int]) -> dict[int, list[Attempt]]:
        out: dict[int, list[Attempt]] = {j: [] for j in job_ids}
        for chunk in range(0, len(job_ids), 500):
            ids = job_ids[chunk:chunk + 500]
            rows = self.conn.execute(
                f"SELECT * FROM attempts WHERE job_id IN ({','.join('?' * len(ids))})"
                " ORDER BY job_id, n", ids).fetchall()
            for r in rows:
                out[r["job_id"]].append(_attempt(r))
        return out

    def unreleased_attempts(self, job_ids: list[int] | None = None) -> list[Attempt]:
        """Every attempt whose instances may be up (of these jobs only, when given)."""
        if job_ids is None:
            return [_attempt(r) for r in self.conn.execute(
                "SELECT * FROM attempts WHERE released=0 ORDER BY id").fetchall()]
        out: list[Attempt] = []
        for chunk in range(0, len(job_ids), 500):
            ids = job_ids[chunk:chunk + 500]
            out.extend(_attempt(r) for r in self.conn.execute(
                "SELECT * FROM attempts WHERE released=0 AND job_id IN"
                f" ({','.join('?' * len(ids))}) ORDER BY id", ids))
        return out

    # --- retention ---------------------------------------------------------------------------

    def gc_jobs(self, ended_before: float, limit: int, dry_run: bool = False) -> GcBatch:
        """Remove up to ``limit`` jobs that ended before ``ended_before`` and whose instances
        are all released, with their attempts, nodes, events and webhook deliveries (one
        transaction). Returns their ids and the workdir archives they referenced (files the
        caller removes once nothing else references them). Usage totals are kept: a
        removed job's cost stays in the metrics."""
        marks = ",".join("?" * len(TERMINAL))
        with self._tx() as c:
            rows = c.execute(
                f"SELECT id, task_json, has_archive FROM jobs WHERE status IN ({marks}) AND"
                " ended_at < ? AND NOT EXISTS (SELECT 1 FROM attempts a WHERE"
                " a.job_id = jobs.id AND a.released = 0) ORDER BY id LIMIT ?",
                (*TERMINAL, ended_before, limit)).fetchall()
            ids = [r["id"] for r in rows]
            digests = {d for r in rows if r["has_archive"]
                       for d in _archives(json.loads(r["task_json"]))}
            counts = dict.fromkeys(("jobs", "attempts", "nodes", "events", "outbox"), 0)
            if not ids or dry_run:
                counts["jobs"] = len(ids)
                return GcBatch(ids, digests, counts)
            q = ",".join("?" * len(ids))
            attempts = f"SELECT id FROM attempts WHERE job_id IN ({q})"
            for table, where in (("outbox", f"job_id IN ({q})"),
                                 ("log_chunks", f"job_id IN ({q})"),
                                 ("job_leases", f"job_id IN ({q})"),
                                 ("wakeups", f"job_id IN ({q})"),
                                 ("events", f"job_id IN ({q})"),
                                 ("nodes", f"attempt_id IN ({attempts})"),
                                 ("attempts", f"job_id IN ({q})"),
                                 ("jobs", f"id IN ({q})")):
                removed = c.execute(f"DELETE FROM {table} WHERE {where}", ids).rowcount
                if table in counts or (table == "log_chunks" and removed):
                    counts[table] = removed  # (lease and wake-up rows are bookkeeping)
        return GcBatch(ids, digests, counts)

    def gc_history(self, delivered_before: float, zone_events_before: float,
                   dry_run: bool = False) -> dict[str, int]:
        """Delivered webhook rows of jobs still kept, and zone events older than the
        preemption memory reads (its evidence has faded)."""
        with self._tx() as c:
            if dry_run:
                return {
                    "outbox": c.execute("SELECT COUNT(*) FROM outbox WHERE delivered_at < ?",
                                        (delivered_before,)).fetchone()[0],
                    "zone_events": c.execute("SELECT COUNT(*) FROM zone_events WHERE at < ?",
                                             (zone_events_before,)).fetchone()[0]}
            return {
                "outbox": c.execute("DELETE FROM outbox WHERE delivered_at < ?",
                                    (delivered_before,)).rowcount,
                "zone_events": c.execute("DELETE FROM zone_events WHERE at < ?",
                                         (zone_events_before,)).rowcount}

    def archives_in_use(self, except_jobs: Collection[int] = ()) -> set[str]:
        """Every workdir archive a job references, but for ``except_jobs`` (a scan of jobs
        with archives: the retention sweep's, run rarely and on the store's thread)."""
        skip = set(except_jobs)
        return {d for job_id, task_json in self.conn.execute(
            "SELECT id, task_json FROM jobs WHERE has_archive=1") if job_id not in skip
            for d in _archives(json.loads(task_json))}

    def live_attempt_states(self, member: str | None = None) -> list[tuple[int, str]]:
        """(id, status) of every unreleased attempt (of the jobs ``member`` owns, when
        given): the instance poll's one read per round, without decoding rows whose launch
        facts the caller keeps in memory."""
        if member is None:
            return [(r[0], r[1]) for r in self.conn.execute(
                "SELECT id, status FROM attempts WHERE released=0 ORDER BY id")]
        return [(r[0], r[1]) for r in self.conn.execute(
            "SELECT a.id, a.status FROM attempts a JOIN job_leases l ON l.job_id = a.job_id"
            " WHERE a.released=0 AND l.owner=? ORDER BY a.id", (member,))]

    def attempts_by_id(self, attempt_ids: list[int]) -> list[Attempt]:
        out: list[Attempt] = []
        for chunk in range(0, len(attempt_ids), 500):
            ids = attempt_ids[chunk:chunk + 500]
            out.extend(_attempt(r) for r in self.conn.execute(
                f"SELECT * FROM attempts WHERE id IN ({','.join('?' * len(ids))})", ids))
        return out

    def attempts_to_release(self, member: str | None = None) -> list[Attempt]:
        """Attempts whose instances must go (of the jobs ``member`` owns, when given):
        ended ones not yet released, and every unreleased attempt of a job that has ended
        (whoever ended it)."""
        marks = ",".join("?" * len(TERMINAL))
        owned = " JOIN job_leases l ON l.job_id = a.job_id AND l.owner=?" if member else ""
        rows = self.conn.execute(
            f"SELECT a.* FROM attempts a JOIN jobs j ON j.id = a.job_id{owned} WHERE"
            f" a.released=0 AND (a.status='ended' OR j.status IN ({marks})) ORDER BY a.id",
            (*([member] if member else []), *TERMINAL)).fetchall()
        return [_attempt(r) for r in rows]

    def no_capacity_round(self, job_id: int) -> int:
        """Count one more round in which every candidate lacked capacity; returns the count
        (durable, so a restarted controller does not start FAILED_NO_RESOURCE over)."""
        with self._tx() as c:
            self._require_job(c, job_id)
            c.execute("UPDATE jobs SET launch_rounds=launch_rounds+1 WHERE id=?", (job_id,))
            return int(c.execute("SELECT launch_rounds FROM jobs WHERE id=?",
                                 (job_id,)).fetchone()[0])

    def add_info_event(self, job_id: int, info: str, attempt_n: int | None = None) -> None:
        with self._tx() as c:
            self._event(c, job_id, "info", None, None, info, attempt=attempt_n)

    def events(self, job_id: int, after_id: int = 0) -> list[dict[str, Any]]:
        self.get_job(job_id)
        rows = self.conn.execute("SELECT * FROM events WHERE job_id=? AND id>? ORDER BY id",
                                 (job_id, after_id)).fetchall()
        return [dict(r) for r in rows]

    # --- nodes -----------------------------------------------------------------------------

    def set_node_phase(self, attempt_id: int, rank: int, phase: str,
                       exit_code: int | None = None) -> bool:
        """Upsert one node's phase; False when nothing changed (a replayed report)."""
        with self._tx() as c:
            row = c.execute("SELECT phase, exit_code FROM nodes WHERE attempt_id=? AND rank=?",
                            (attempt_id, rank)).fetchone()
            if row is not None and (row["phase"] in ("exited", "setup_failed") or
                                    (row["phase"], row["exit_code"]) == (phase, exit_code)):
                return False
            c.execute("INSERT INTO nodes(attempt_id, rank, phase, exit_code, updated_at)"
                      " VALUES (?, ?, ?, ?, ?) ON CONFLICT(attempt_id, rank) DO UPDATE SET"
                      " phase=excluded.phase, exit_code=excluded.exit_code,"
                      " updated_at=excluded.updated_at",
                      (attempt_id, rank, phase, exit_code, time.time()))
            return True

    def nodes_of(self, attempt_id: int) -> dict[int, tuple[NodePhase, int | None]]:
        rows = self.conn.execute("SELECT rank, phase, exit_code FROM nodes WHERE attempt_id=?",
                                 (attempt_id,)).fetchall()
        return {r["rank"]: (NodePhase(r["phase"]), r["exit_code"]) for r in rows}

    # --- preemption memory -----------------------------------------------------------------

    @staticmethod
    def _zone_event(c: Conn, p: Placement, kind: str, value: float,
                    now: float) -> None:
        c.execute("INSERT INTO zone_events(cloud, region, zone, instance_type, use_spot,"
                  " kind, at, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  (p.cloud, p.region, p.zone, p.instance_type, int(p.use_spot), kind, now,
                   value))

    def save_prices(self, rows: list[tuple[str, str, str, str, float, float]]) -> None:
        with self._tx() as c:
            c.executemany("INSERT INTO prices(cloud, region, zone, instance_type, price,"
                          " observed_at) VALUES (?, ?, ?, ?, ?, ?)"
                          " ON CONFLICT(cloud, region, zone, instance_type) DO UPDATE SET"
                          " price=excluded.price, observed_at=excluded.observed_at"
                          " WHERE excluded.observed_at >= prices.observed_at", rows)

    def load_prices(self) -> list[tuple[str, str, str, str, float, float]]:
        rows = self.conn.execute("SELECT cloud, region, zone, instance_type, price, observed_at"
                                 " FROM prices").fetchall()
        return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def snapshot(self, job_id: int) -> Snapshot:
        """Everything a job runner reads per step, in one round trip to the store thread."""
        job = self.get_job(job_id)
        attempts = self.attempts_of(job_id)
        current = next((a for a in attempts if a.id == job.current_attempt), None)
        nodes = self.nodes_of(current.id) if current is not None else {}
        return Snapshot(job, attempts, current, nodes)

    def zone_events_since(self, since: float) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM zone_events WHERE at>=? ORDER BY id",
                                 (since,)).fetchall()
        return [dict(r) for r in rows]

    # --- dashboard reads (read-only) -------------------------------------------------------

    def jobs_page(self, statuses: list[str] | None, name_contains: str | None, limit: int,
                  offset: int) -> tuple[list[Job], int]:
        """One page of jobs, newest first, and how many match in all: the dashboard pages in
        SQL so a store of 10,000 jobs never loads more than a page. ``name_contains`` is a
        case-insensitive substring (LIKE, with its wildcards escaped)."""
        where: list[str] = []
        args: list[Any] = []
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args.extend(statuses)
        if name_contains:
            escaped = (name_contains.replace("\\", "\\\\").replace("%", "\\%")
                       .replace("_", "\\_"))
            where.append(f"name {self.d.like_ci} ? ESCAPE '\\'")
            args.append(f"%{escaped}%")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total = int(self.conn.execute(f"SELECT COUNT(*) FROM jobs {clause}",
                                      args).fetchone()[0])
        rows = self.conn.execute(
            f"SELECT * FROM jobs {clause} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset)).fetchall()
        return [_job(r) for r in rows], total

    def zone_event_totals(self, since: float) -> list[dict[str, Any]]:
        """Per (cloud, region, zone, instance type, spot) and kind: how many zone events
        since ``since``, their summed value and the latest one (the Zones page's counts)."""
        rows = self.conn.execute(
            "SELECT cloud, region, zone, instance_type, use_spot, kind, COUNT(*) AS n,"
            " SUM(value) AS total, MAX(at) AS last_at FROM zone_events WHERE at>=?"
            " GROUP BY cloud, region, zone, instance_type, use_spot, kind", (since,)).fetchall()
        return [dict(r) for r in rows]

