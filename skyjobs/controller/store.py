"""The store: the only module that speaks SQL.

Every state change is one transaction that compare-and-sets the job's status and writes its
event, so a ``kill -9`` between any two statements leaves either the old state or the new
one, never half of each. The connection has one owner: :class:`Store` runs every call on a
single dedicated thread, so the event loop never blocks on SQLite and no two threads ever
share the connection.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import sqlite_utils

from skyjobs.controller import payloads
from skyjobs.exceptions import (
    ConfigError,
    IllegalTransitionError,
    NotFoundError,
    SkyjobsError,
)
from skyjobs.pricing.catalog import Placement
from skyjobs.states import (
    ALL_STATES,
    LIVE,
    TERMINAL,
    TRANSITIONS,
    AttemptStatus,
    EndReason,
    JobStatus,
    NodePhase,
)

T = TypeVar("T")
P = ParamSpec("P")
__all__ = ["ALL_STATES", "LIVE", "TERMINAL", "TRANSITIONS", "Attempt", "Job", "Snapshot",
           "Store", "SyncStore"]

# The states and the state machine live in states.py; these names are the store's own API.
PENDING, PROVISIONING, RUNNING = JobStatus.PENDING, JobStatus.PROVISIONING, JobStatus.RUNNING
RECOVERING, CANCELLING = JobStatus.RECOVERING, JobStatus.CANCELLING
SUCCEEDED, FAILED, CANCELLED = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED
FAILED_NO_RESOURCE = JobStatus.FAILED_NO_RESOURCE


def check_transition(job_id: int, current: str | None, target: str) -> None:
    allowed = TRANSITIONS.get(JobStatus(current) if current is not None else None, frozenset())
    if target not in allowed:
        raise IllegalTransitionError(job_id, current, target)


# Numbered migrations; a new one is appended, never edited (tests rebuild from scratch).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        task_json TEXT NOT NULL,
        task_id TEXT NOT NULL,
        submitted_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        ended_at REAL,
        recovery_count INTEGER NOT NULL DEFAULT 0,
        restart_count INTEGER NOT NULL DEFAULT 0,
        attempt_count INTEGER NOT NULL DEFAULT 0,
        current_attempt INTEGER,
        exit_code INTEGER,
        reason TEXT,
        has_archive INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_status ON jobs(status);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        from_status TEXT,
        to_status TEXT,
        reason TEXT,
        exit_code INTEGER,
        attempt INTEGER,
        placement TEXT
    );
    CREATE INDEX events_job ON events(job_id, id);
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        n INTEGER NOT NULL,
        status TEXT NOT NULL,
        cloud TEXT NOT NULL,
        region TEXT NOT NULL,
        zone TEXT NOT NULL,
        instance_type TEXT NOT NULL,
        use_spot INTEGER NOT NULL,
        price_per_hour REAL NOT NULL,
        num_nodes INTEGER NOT NULL,
        instance_ids TEXT NOT NULL,
        created_at REAL NOT NULL,
        running_at REAL,
        ended_at REAL,
        end_reason TEXT,
        exit_code INTEGER,
        notice_at REAL,
        notice_deadline REAL,
        released INTEGER NOT NULL DEFAULT 0,
        UNIQUE(job_id, n)
    );
    CREATE INDEX attempts_unreleased ON attempts(released, status);
    CREATE TABLE nodes (
        attempt_id INTEGER NOT NULL REFERENCES attempts(id),
        rank INTEGER NOT NULL,
        phase TEXT NOT NULL,
        exit_code INTEGER,
        updated_at REAL NOT NULL,
        PRIMARY KEY (attempt_id, rank)
    );
    CREATE TABLE zone_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        cloud TEXT NOT NULL,
        region TEXT NOT NULL,
        zone TEXT NOT NULL,
        instance_type TEXT NOT NULL,
        use_spot INTEGER NOT NULL,
        kind TEXT NOT NULL,
        at REAL NOT NULL,
        value REAL
    );
    CREATE INDEX zone_events_at ON zone_events(at);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        event_id INTEGER NOT NULL REFERENCES events(id),
        hook TEXT NOT NULL,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        delivered_at REAL,
        last_error TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX outbox_pending ON outbox(delivered_at, job_id, hook, id);
    """,
    """
    CREATE TABLE prices (
        cloud TEXT NOT NULL,
        region TEXT NOT NULL,
        zone TEXT NOT NULL,
        instance_type TEXT NOT NULL,
        price REAL NOT NULL,
        observed_at REAL NOT NULL,
        PRIMARY KEY (cloud, region, zone, instance_type)
    );
    """,
    """
    ALTER TABLE attempts ADD COLUMN ondemand_price REAL;
    """,
    """
    ALTER TABLE jobs ADD COLUMN launch_rounds INTEGER NOT NULL DEFAULT 0;
    """,
    """
    ALTER TABLE jobs ADD COLUMN array_id INTEGER;
    ALTER TABLE jobs ADD COLUMN array_rank INTEGER;
    CREATE INDEX jobs_array ON jobs(array_id);
    """,
    """
    ALTER TABLE jobs ADD COLUMN task_index INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN task_count INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE attempts ADD COLUMN task_index INTEGER NOT NULL DEFAULT 0;
    """,
    # Node-hours and cost of ended attempts, kept up to date as each attempt ends (in its
    # transaction), so a metrics scrape reads a few rows instead of every attempt ever.
    """
    CREATE TABLE usage_totals (
        cloud TEXT NOT NULL,
        zone TEXT NOT NULL,
        instance_type TEXT NOT NULL,
        use_spot INTEGER NOT NULL,
        node_hours REAL NOT NULL,
        cost REAL NOT NULL,
        PRIMARY KEY (cloud, zone, instance_type, use_spot)
    );
    INSERT INTO usage_totals
        SELECT cloud, zone, instance_type, use_spot, SUM(h), SUM(h * price_per_hour)
        FROM (SELECT cloud, zone, instance_type, use_spot, price_per_hour,
                     node_hours(created_at, ended_at, num_nodes, ended_at) AS h
              FROM attempts WHERE status = 'ended')
        GROUP BY cloud, zone, instance_type, use_spot;
    CREATE INDEX attempts_status ON attempts(status);
    """,
    # The retention sweep finds ended jobs by when they ended, and their webhook rows.
    """
    CREATE INDEX jobs_ended ON jobs(ended_at);
    CREATE INDEX outbox_job ON outbox(job_id);
    """,
]


@dataclass(frozen=True)
class Job:
    id: int
    name: str
    status: JobStatus
    task: dict[str, Any]
    task_id: str
    submitted_at: float
    updated_at: float
    ended_at: float | None
    recovery_count: int
    restart_count: int
    attempt_count: int
    current_attempt: int | None
    exit_code: int | None
    reason: str | None
    has_archive: bool
    launch_rounds: int  # rounds in a row in which no candidate had capacity
    array_id: int | None  # a job array (submit --num-jobs): the id of its first job
    array_rank: int | None  # this job's SKYPILOT_JOB_RANK in the array
    task_index: int  # a pipeline's task now running (0-based); 0 for a one-task job
    task_count: int


    def task_entry(self, index: int | None = None) -> dict[str, Any]:
        """One task of the job as stored: {"spec", "archive", "local_mounts"}. A pipeline
        keeps one per task under "tasks"; a one-task job is its own entry."""
        tasks = self.task.get("tasks")
        if not tasks:
            return self.task
        return dict(tasks[self.task_index if index is None else index])


@dataclass(frozen=True)
class Attempt:
    id: int
    job_id: int
    n: int
    status: AttemptStatus
    cloud: str
    region: str
    zone: str
    instance_type: str
    use_spot: bool
    price_per_hour: float
    num_nodes: int
    instance_ids: list[str]
    created_at: float
    running_at: float | None
    ended_at: float | None
    end_reason: EndReason | None
    exit_code: int | None
    notice_at: float | None
    notice_deadline: float | None
    released: bool
    ondemand_price: float | None  # what the same node-hours cost on-demand, for the saving
    task_index: int  # which of its pipeline's tasks this attempt runs

    def node_hours(self, until: float) -> float:
        return node_hours(self.created_at, self.ended_at, self.num_nodes, until)

    def cost(self, until: float) -> float:
        """Paid from launch to end (or ``until``): clouds bill from the launch request."""
        return self.node_hours(until) * self.price_per_hour

    def on_demand_cost(self, until: float) -> float:
        return self.node_hours(until) * (self.ondemand_price or self.price_per_hour)

    def placement_label(self) -> str:
        kind = "spot" if self.use_spot else "on-demand"
        return f"{self.cloud}/{self.zone}/{self.instance_type}/{kind}"


def node_hours(created_at: float, ended_at: float | None, num_nodes: int,
               until: float) -> float:
    """Node-hours billed from launch to end (or ``until``): clouds bill from the launch
    request. The one cost formula: Python callers and the store's SQL (as the SQL function
    ``node_hours``) both use it."""
    end = ended_at if ended_at is not None else until
    return max(0.0, min(end, until) - created_at) / 3600.0 * num_nodes


@dataclass(frozen=True)
class Snapshot:
    job: Job
    attempts: list[Attempt]
    current: Attempt | None
    nodes: dict[int, tuple[NodePhase, int | None]]

    @property
    def task_attempts(self) -> list[Attempt]:
        """The attempts of the task now running (a pipeline's earlier tasks are done)."""
        return [a for a in self.attempts if a.task_index == self.job.task_index]


ZoneEvent = tuple[Placement, str, float]  # (placement, kind, value) for preemption memory
# notice_and_recover's arguments: (job_id, attempt_id, at, deadline, info, zone_event)
Notice = tuple[int, int, float, float, str, ZoneEvent]


@dataclass(frozen=True)
class GcBatch:
    job_ids: list[int]
    archives: set[str]  # digests the removed jobs referenced
    counts: dict[str, int]  # rows removed per table


def _archives(task: dict[str, Any]) -> list[str]:
    """The archive digests a stored task references (one per pipeline task)."""
    entries = task.get("tasks") or [task]
    return [e["archive"] for e in entries if isinstance(e, dict) and e.get("archive")]


def _job(row: sqlite3.Row) -> Job:
    d = dict(row)
    d["task"] = json.loads(d.pop("task_json"))
    d["has_archive"] = bool(d["has_archive"])
    d["status"] = JobStatus(d["status"])
    return Job(**d)


def _attempt(row: sqlite3.Row) -> Attempt:
    d = dict(row)
    d["instance_ids"] = json.loads(d["instance_ids"])
    d["use_spot"] = bool(d["use_spot"])
    d["released"] = bool(d["released"])
    d["status"] = AttemptStatus(d["status"])
    d["end_reason"] = EndReason(d["end_reason"]) if d["end_reason"] is not None else None
    return Attempt(**d)


class SyncStore:
    """The SQL itself. Not thread-safe by design: use it only through :class:`Store`."""

    def __init__(self, path: Path, hooks: dict[str, frozenset[str]] | None = None) -> None:
        # Webhook name -> the event names it wants; deliveries are queued per transition.
        self.hooks = hooks or {}
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.create_function("node_hours", 4, node_hours, deterministic=True)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            # A newer skyjobs migrated this store: this code would misread what it added.
            self.conn.close()
            raise ConfigError(f"the store's schema is version {version}, newer than this "
                              f"skyjobs knows ({len(MIGRATIONS)}): upgrade skyjobs to run "
                              "on it")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            # executescript commits on its own, so the version bump rides inside the script.
            self.conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    # --- meta ------------------------------------------------------------------------------

    def get_or_set_meta(self, key: str, default: str) -> str:
        with self._tx() as c:
            row = c.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            if row:
                return str(row[0])
            c.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (key, default))
            return default

    # --- jobs ------------------------------------------------------------------------------

    def create_job(self, name: str, task: dict[str, Any], has_archive: bool,
                   task_id_prefix: str) -> int:
        return self.create_jobs(name, task, has_archive, task_id_prefix, 1)[0]

    def create_jobs(self, name: str, task: dict[str, Any], has_archive: bool,
                    task_id_prefix: str, count: int, task_count: int = 1) -> list[int]:
        """One job, or a job array of ``count`` (ranks 0..count-1, all or none stored)."""
        now = time.time()
        ids: list[int] = []
        with self._tx() as c:
            for rank in range(count):
                cur = c.execute(
                    "INSERT INTO jobs(name, status, task_json, task_id, submitted_at,"
                    " updated_at, has_archive) VALUES (?, ?, ?, '', ?, ?, ?)",
                    (name, PENDING, json.dumps(task), now, now, int(has_archive)))
                job_id = int(cur.lastrowid or 0)
                ids.append(job_id)
                array = (ids[0], rank) if count > 1 else (None, None)
                c.execute("UPDATE jobs SET task_id=?, array_id=?, array_rank=?, task_count=?"
                          " WHERE id=?", (f"{task_id_prefix}-{job_id}", *array, task_count,
                                          job_id))
                reason = f"submitted (array {ids[0]}, rank {rank})" if count > 1 \
                    else "submitted"
                self._event(c, job_id, "transition", None, PENDING, reason, now=now)
        return ids

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

    def _event(self, c: sqlite3.Connection, job_id: int, kind: str, frm: str | None,
               to: str | None, reason: str | None, exit_code: int | None = None,
               attempt: int | None = None, placement: str | None = None,
               now: float | None = None) -> None:
        at = now or time.time()
        cur = c.execute(
            "INSERT INTO events(job_id, at, kind, from_status, to_status, reason, exit_code,"
            " attempt, placement) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, at, kind, frm, to, reason, exit_code, attempt, placement))
        if kind == "transition" and self.hooks:
            self._enqueue(c, int(cur.lastrowid or 0), job_id, frm, to, reason, exit_code,
                          attempt, placement, at)

    def _enqueue(self, c: sqlite3.Connection, event_id: int, job_id: int, frm: str | None,
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
            " ondemand_price FROM attempts WHERE job_id=?)", (at, job_id)).fetchone()
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
            " FROM attempts WHERE status IN ('launching', 'provisioning', 'running')))"
            " GROUP BY cloud, zone, instance_type, use_spot", (now,)).fetchall()
        return [dict(r) for r in rows]

    def outbox_stats(self) -> dict[str, int]:
        row = self.conn.execute(
            "SELECT COUNT(*) AS backlog, COALESCE(SUM(attempts > 0), 0) AS retrying"
            " FROM outbox WHERE delivered_at IS NULL").fetchone()
        return {"backlog": int(row["backlog"]), "retrying": int(row["retrying"])}

    def _cas(self, c: sqlite3.Connection, job_id: int, target: str, expect: frozenset[str] | None,
             updates: dict[str, Any], now: float) -> str:
        row = c.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone()
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
            job = c.execute("SELECT status, attempt_count, task_index FROM jobs WHERE id=?",
                            (job_id,)).fetchone()
            if job is None:
                raise NotFoundError(f"job {job_id} does not exist")
            n = job["attempt_count"] + 1
            ids = [f"{id_prefix}-{job_id}-{n}-{rank}" for rank in range(num_nodes)]
            cur = c.execute(
                "INSERT INTO attempts(job_id, n, status, cloud, region, zone, instance_type,"
                " use_spot, price_per_hour, num_nodes, instance_ids, created_at, ondemand_price,"
                " task_index) VALUES (?, ?, 'launching', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, n, placement.cloud, placement.region, placement.zone,
                 placement.instance_type, int(placement.use_spot), placement.price_per_hour,
                 num_nodes, json.dumps(ids), now, placement.offering.ondemand_price,
                 job["task_index"]))
            attempt_id = int(cur.lastrowid or 0)
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
    def _attempt_row(c: sqlite3.Connection, job_id: int, attempt_id: int) -> sqlite3.Row:
        """The attempt, which must be one of this job's: a write through the wrong job's
        id would move one job on another's instances."""
        row = c.execute("SELECT * FROM attempts WHERE id=?", (attempt_id,)).fetchone()
        if row is None or row["job_id"] != job_id:
            raise NotFoundError(f"job {job_id} has no attempt {attempt_id}")
        return row

    @staticmethod
    def _require_job(c: sqlite3.Connection, job_id: int) -> sqlite3.Row:
        row = c.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"job {job_id} does not exist")
        return row

    def _end_attempt(self, c: sqlite3.Connection, job_id: int, attempt_id: int,
                     end_reason: str, exit_code: int | None, now: float) -> tuple[int, str]:
        row = self._attempt_row(c, job_id, attempt_id)
        end_reason = EndReason(end_reason)  # a reason outside the enum is a bug: fail here
        a = _attempt(row)
        if row["status"] != "ended":
            c.execute("UPDATE attempts SET status='ended', ended_at=?, end_reason=?, exit_code=?"
                      " WHERE id=?", (now, end_reason, exit_code, attempt_id))
            hours = node_hours(a.created_at, now, a.num_nodes, now)
            c.execute("INSERT INTO usage_totals(cloud, zone, instance_type, use_spot,"
                      " node_hours, cost) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
                      " node_hours = node_hours + excluded.node_hours,"
                      " cost = cost + excluded.cost",
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

    def _notice(self, c: sqlite3.Connection, job_id: int, attempt_id: int, at: float,
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

    def unreleased_attempts(self) -> list[Attempt]:
        rows = self.conn.execute("SELECT * FROM attempts WHERE released=0 ORDER BY id").fetchall()
        return [_attempt(r) for r in rows]

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
                                 ("events", f"job_id IN ({q})"),
                                 ("nodes", f"attempt_id IN ({attempts})"),
                                 ("attempts", f"job_id IN ({q})"),
                                 ("jobs", f"id IN ({q})")):
                counts[table] = c.execute(f"DELETE FROM {table} WHERE {where}", ids).rowcount
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

    def live_attempt_states(self) -> list[tuple[int, str]]:
        """(id, status) of every unreleased attempt: the instance poll's one read per round,
        without decoding rows whose launch facts the caller keeps in memory."""
        return [(r[0], r[1]) for r in self.conn.execute(
            "SELECT id, status FROM attempts WHERE released=0 ORDER BY id")]

    def attempts_by_id(self, attempt_ids: list[int]) -> list[Attempt]:
        out: list[Attempt] = []
        for chunk in range(0, len(attempt_ids), 500):
            ids = attempt_ids[chunk:chunk + 500]
            out.extend(_attempt(r) for r in self.conn.execute(
                f"SELECT * FROM attempts WHERE id IN ({','.join('?' * len(ids))})", ids))
        return out

    def attempts_to_release(self) -> list[Attempt]:
        """Attempts whose instances must go: ended ones not yet released, and every
        unreleased attempt of a job that has ended (whoever ended it)."""
        marks = ",".join("?" * len(TERMINAL))
        rows = self.conn.execute(
            "SELECT a.* FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.released=0"
            f" AND (a.status='ended' OR j.status IN ({marks})) ORDER BY a.id",
            tuple(TERMINAL)).fetchall()
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
    def _zone_event(c: sqlite3.Connection, p: Placement, kind: str, value: float,
                    now: float) -> None:
        c.execute("INSERT INTO zone_events(cloud, region, zone, instance_type, use_spot,"
                  " kind, at, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  (p.cloud, p.region, p.zone, p.instance_type, int(p.use_spot), kind, now,
                   value))

    def save_prices(self, rows: list[tuple[str, str, str, str, float, float]]) -> None:
        with self._tx() as c:
            c.executemany("INSERT INTO prices(cloud, region, zone, instance_type, price,"
                          " observed_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
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
            where.append("name LIKE ? ESCAPE '\\'")
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


# --- inspection (skyjobs db): read-only, through sqlite-utils ---------------------------------
#
# sqlite-utils is the tool for looking at a SQLite file (tables, counts, rows as dicts); the
# controller's own reads and writes stay plain SQL above, which is also what the PostgreSQL
# store will share with this one.

SECRET_MARK = "<redacted>"


def open_readonly(path: Path) -> sqlite_utils.Database:
    """The store's file, read-only: safe next to a running controller (WAL readers never
    block its writer)."""
    if not path.exists():
        raise NotFoundError(f"{path} does not exist (no controller has used this state dir)")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    return sqlite_utils.Database(conn)


def table_counts(db: sqlite_utils.Database) -> dict[str, int]:
    return {name: db.table(name).count for name in db.table_names()}


def table_rows(db: sqlite_utils.Database, table: str, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` rows of a table, task secrets redacted."""
    if table not in db.table_names():
        raise NotFoundError(f"no table {table!r} (tables: {', '.join(db.table_names())})")
    rows = list(db.table(table).rows_where(order_by="rowid DESC", limit=limit))
    if table == "jobs":
        for row in rows:
            row["task_json"] = json.dumps(_redact(json.loads(row["task_json"])))
    return rows


def _redact(task: dict[str, Any]) -> dict[str, Any]:
    spec = task.get("spec") or {}
    secrets = spec.get("secrets") or {}
    return {**task, "spec": {**spec, "secrets": {k: SECRET_MARK for k in secrets}}}


class Store:
    """Async facade: every call runs on the store's one thread, in submission order.

    Calls made in the same turn of the event loop go to the thread together, and their
    results come back together: at thousands of agents, one thread hand-off per call (a
    future, a lock, a wake-up of the loop, and the GIL going back and forth) cost more than
    the SQL. Each call is still its own transaction; a call whose caller was cancelled
    before it started is skipped."""

    BATCH = 64  # calls per hand-off: bounds how long the first caller of a batch waits

    def __init__(self, path: Path, hooks: dict[str, frozenset[str]] | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skyjobs-store")
        self.sync = self._pool.submit(SyncStore, path, hooks).result()
        self._queued: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._handoff_loop: asyncio.AbstractEventLoop | None = None  # a hand-off is due there
        self.handoffs = 0  # batches handed to the thread (tests and benchmarks read it)

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one SyncStore method on the store's thread; typed like the method itself."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queued.append((lambda: fn(*args, **kwargs), fut))
        if self._handoff_loop is not loop:  # (another loop's: one that stopped, in tests)
            self._handoff_loop = loop
            loop.call_soon(self._hand_off, loop)
        return await fut

    def _hand_off(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handoff_loop = None
        queued, self._queued = self._queued, []
        for i in range(0, len(queued), self.BATCH):
            self.handoffs += 1
            self._pool.submit(self._run, loop, queued[i:i + self.BATCH])

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop,
             batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]]) -> None:
        done: list[tuple[asyncio.Future[Any], bool, Any]] = []
        for work, fut in batch:
            if fut.cancelled():  # read from this thread: at worst the call runs anyway
                continue
            try:
                done.append((fut, True, work()))
            except BaseException as err:  # noqa: BLE001 - handed to the caller, as raised
                done.append((fut, False, err))
        try:
            loop.call_soon_threadsafe(Store._deliver, done)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    @staticmethod
    def _deliver(done: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
        for fut, ok, value in done:
            if fut.done():
                continue
            try:
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
            except RuntimeError:
                pass  # a future of a loop that is closed

    def close(self) -> None:
        self._pool.submit(self.sync.close).result()
        self._pool.shutdown(wait=True)
