"""Leases, fencing and wake-ups: the SQL that lets several controllers share one database.

A job that needs a runner has one ``job_leases`` row: its owner (a controller process, a
*member*), a fencing token and an expiry on the database's clock. The owner renews all its
leases in one statement; a member that stops renewing loses them to the others, which
claim expired leases with a new token. Every write transaction a runner makes checks its
``Fence`` (owner and token) first, with the lease row locked to commit, so a controller that
was paused or cut off past its lease can never overwrite the new owner's work: its first
write raises LeaseLostError and it stands down.

The fence travels in a context variable: a runner's task sets it once, :class:`Store` runs
each call in its caller's context, and ``SyncStore._tx`` checks it. API handlers (facts from
agents, users' intents) carry none and compare-and-set on the job's status as always.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from skyjobs.exceptions import LeaseLostError
from skyjobs.states import LIVE, TERMINAL


@dataclass(frozen=True)
class Fence:
    job_id: int
    owner: str
    token: int


FENCE: ContextVar[Fence | None] = ContextVar("skyjobs_fence", default=None)


@dataclass(frozen=True)
class Wakeup:
    job_id: int
    attempt_id: int | None
    rank: int | None
    kind: str


class LeaseSql:
    """Mixed into SyncStore: ``self.conn``, ``self.d`` and ``self._tx`` are its."""

    conn: Any
    d: Any

    def _tx(self) -> Any:  # (SyncStore's)
        raise NotImplementedError

    def _now(self, c: Any) -> float:
        """The database's clock, for leases: one clock for every controller."""
        if self.d.name == "sqlite":
            return time.time()
        return float(c.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())").fetchone()[0])

    def _check_fence(self, c: Any, fence: Fence) -> None:
        """Inside a write transaction: the lease row, locked to commit, still names this
        owner and token; else LeaseLostError (and the transaction rolls back)."""
        row = c.execute("SELECT owner, token FROM job_leases WHERE job_id=?" + self.d.for_update,
                        (fence.job_id,)).fetchone()
        if row is None or row[0] != fence.owner or row[1] != fence.token:
            raise LeaseLostError(fence.job_id, row[0] if row is not None else None)

    # --- members ---------------------------------------------------------------------------

    def register_member(self, member: str, url: str, agent_url: str, host: str,
                        pid: int) -> None:
        with self._tx() as c:
            now = self._now(c)
            c.execute("INSERT INTO controllers(id, url, agent_url, host, pid, started_at,"
                      " heartbeat_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE"
                      " SET url=excluded.url, agent_url=excluded.agent_url,"
                      " host=excluded.host, pid=excluded.pid, started_at=excluded.started_at,"
                      " heartbeat_at=excluded.heartbeat_at, stopped_at=NULL",
                      (member, url, agent_url, host, pid, now, now))

    def members(self, lease_s: float) -> list[dict[str, Any]]:
        """Every registered member with whether it is live (heartbeat within a lease) and
        how many leases it holds; newest first."""
        with self._tx() as c:
            now = self._now(c)
            rows = c.execute(
                "SELECT m.*, (SELECT COUNT(*) FROM job_leases l WHERE l.owner = m.id AND"
                " l.expires_at > ?) AS jobs FROM controllers m ORDER BY started_at DESC",
                (now,)).fetchall()
        return [{**dict(r), "live": r["stopped_at"] is None and r["heartbeat_at"] > now - lease_s,
                 "heartbeat_age": now - r["heartbeat_at"]} for r in rows]

    def stop_member(self, member: str) -> int:
        """A graceful stop: hand every lease back at once (peers claim them on their next
        scan instead of waiting out the lease). Returns how many."""
        with self._tx() as c:
            now = self._now(c)
            c.execute("UPDATE controllers SET stopped_at=? WHERE id=?", (now, member))
            return int(c.execute("UPDATE job_leases SET expires_at=0 WHERE owner=?",
                                 (member,)).rowcount)

    # --- leases ----------------------------------------------------------------------------

    def renew_leases(self, member: str, lease_s: float) -> tuple[float, dict[int, int]]:
        """Extend every unexpired lease of ``member``; returns the database time and
        {job id: token} of what it still owns. A lease that lapsed is not revived: its job
        goes back through a claim, which bumps the token. Leases of jobs that no longer need
        a runner (ended, every instance released) are dropped here."""
        with self._tx() as c:
            now = self._now(c)
            c.execute("UPDATE controllers SET heartbeat_at=? WHERE id=?", (now, member))
            marks = ",".join("?" * len(TERMINAL))
            c.execute(
                "DELETE FROM job_leases WHERE owner=? AND job_id IN (SELECT id FROM jobs j"
                f" WHERE j.status IN ({marks}) AND NOT EXISTS (SELECT 1 FROM attempts a"
                " WHERE a.job_id = j.id AND a.released = 0))", (member, *TERMINAL))
            rows = c.execute("UPDATE job_leases SET expires_at=? WHERE owner=? AND expires_at>?"
                             " RETURNING job_id, token", (now + lease_s, member, now)).fetchall()
        return now, {r[0]: r[1] for r in rows}

    def claim_leases(self, member: str, lease_s: float,
                     limit: int | None = None) -> list[tuple[int, int, str | None]]:
        """Take unowned and expired leases: this member's part of them (job id modulo the
        live members, so survivors split a dead member's jobs in one round), and any that
        stayed free for more than a scan (a part whose member went too, or unowned ones),
        each with a new token and an info event. Returns (job id, token, previous owner)."""
        with self._tx() as c:
            now = self._now(c)
            live = [r[0] for r in c.execute(
                "SELECT id FROM controllers WHERE stopped_at IS NULL AND heartbeat_at>?"
                " ORDER BY id", (now - lease_s,))]
            parts, mine = (len(live), live.index(member)) if member in live else (1, 0)
            # A lease is renewed every lease/3: one free for longer than half a lease past
            # its expiry was not taken by the member whose part it is.
            stale = now - lease_s / 2
            picked = c.execute(
                "SELECT job_id, owner FROM job_leases WHERE (owner IS NULL OR expires_at<=?)"
                " AND (job_id % ? = ? OR expires_at < ?) ORDER BY job_id LIMIT ?"
                f"{self.d.skip_locked}",
                (now, parts, mine, stale, limit if limit is not None else 1 << 30)).fetchall()
            previous = {r[0]: r[1] for r in picked}
            tokens: dict[int, int] = {}
            ids = sorted(previous)
            for i in range(0, len(ids), 500):  # a dead peer's thousands: few statements
                chunk = ids[i:i + 500]
                tokens.update((r[0], int(r[1])) for r in c.execute(
                    "UPDATE job_leases SET owner=?, token=token+1, expires_at=?, acquired_at=?"
                    f" WHERE job_id IN ({','.join('?' * len(chunk))}) RETURNING job_id, token",
                    (member, now + lease_s, now, *chunk)))
            at = time.time()
            c.executemany("INSERT INTO events(job_id, at, kind, reason) VALUES (?, ?, 'info', ?)",
                          [(j, at, f"controller {member} took the job over from {previous[j]}"
                                   f" (lease token {tokens[j]})")
                           for j in ids if previous[j] is not None and previous[j] != member])
        return [(j, tokens[j], previous[j]) for j in ids]

    def own_job(self, member: str, job_id: int) -> Fence:
        """A runner starts: a new token for it alone (so even a stale task of this same
        process is fenced off). LeaseLostError when the lease is not this member's."""
        with self._tx() as c:
            now = self._now(c)
            row = c.execute("UPDATE job_leases SET token=token+1 WHERE job_id=? AND owner=? AND"
                            " expires_at>? RETURNING token", (job_id, member, now)).fetchone()
            if row is None:
                held = c.execute("SELECT owner FROM job_leases WHERE job_id=?",
                                 (job_id,)).fetchone()
                raise LeaseLostError(job_id, held[0] if held is not None else None)
            return Fence(job_id, member, int(row[0]))

    def assign_new_jobs(self, c: Any, job_ids: list[int], member: str | None,
                        lease_s: float) -> list[str | None]:
        """Inside create_jobs' transaction: the new jobs' leases, spread over the live
        controllers, fewest leases first (an array round-robin), each ringing its owner's
        doorbell; ``member`` (the controller that took the submit) when it is the only one
        live; claimable by any when None. Returns each job's owner."""
        now = self._now(c)
        owners: list[str | None] = [member] * len(job_ids)
        if member is not None and self.d.name == "postgres":
            live = [r[0] for r in c.execute(
                "SELECT m.id FROM controllers m WHERE m.stopped_at IS NULL AND"
                " m.heartbeat_at > ? ORDER BY (SELECT COUNT(*) FROM job_leases l WHERE"
                " l.owner = m.id), m.id = ? DESC, m.id", (now - lease_s, member))]
            if live:
                owners = [live[i % len(live)] for i in range(len(job_ids))]
        for job_id, owner in zip(job_ids, owners, strict=True):
            c.execute("INSERT INTO job_leases(job_id, owner, token, expires_at, acquired_at)"
                      " VALUES (?, ?, 0, ?, ?)",
                      (job_id, owner, now + lease_s if owner else 0, now))
        for owner in sorted({o for o in owners if o and o != member}):
            c.execute("SELECT pg_notify(?, 'claim')", (channel(owner),))
        return owners

    def owner_of(self, job_id: int, lease_s: float = 30.0) -> tuple[str | None, str | None]:
        """(owner member, its agent URL) of a job's unexpired lease whose owner renewed
        within half a lease (a dead owner's lease runs on until it expires: sending agents
        there would bounce them off it), else (None, None)."""
        with self._tx() as c:
            now = self._now(c)
            row = c.execute("SELECT l.owner, m.agent_url FROM job_leases l JOIN"
                            " controllers m ON m.id = l.owner WHERE l.job_id=? AND"
                            " l.expires_at>? AND m.heartbeat_at>?",
                            (job_id, now, now - lease_s / 2)).fetchone()
        return (row[0], row[1]) if row is not None else (None, None)

    def owned_live_jobs(self, member: str) -> list[int]:
        marks = ",".join("?" * len(LIVE))
        return [r[0] for r in self.conn.execute(
            "SELECT j.id FROM jobs j JOIN job_leases l ON l.job_id = j.id WHERE l.owner=?"
            f" AND j.status IN ({marks}) ORDER BY j.id", (member, *LIVE))]

    # --- singleton duties ----------------------------------------------------------------

    def hold_duty(self, name: str) -> bool:
        """Whether this process runs the singleton duty ``name`` now (price polls, orphan
        sweep, retention, webhook delivery). PostgreSQL: a session advisory lock on the
        store's own connection (never pooled), taken when free; it goes with the session
        (kill -9, a dropped connection, or the server ending a frozen process's idle
        session), and a new session has to take it again. SQLite: always (one controller)."""
        if self.d.name == "sqlite":
            return True
        held: dict[str, int] = self.__dict__.setdefault("_duties_held", {})
        if held.get(name) == self.conn.generation and not self.conn.broken:
            return True
        got = bool(self.conn.execute(
            "SELECT pg_try_advisory_lock(hashtext('skyjobs-duty:' || current_schema() || ?))",
            (name,)).fetchone()[0])
        if got:
            held[name] = self.conn.generation
        else:
            held.pop(name, None)
        return got

    def held_duties(self) -> list[str]:
        if self.d.name == "sqlite":
            return ["poll_prices", "retention", "sweep_orphans", "webhooks"]
        held: dict[str, int] = self.__dict__.get("_duties_held", {})
        return sorted(n for n, g in held.items() if g == self.conn.generation)

    # --- wake-ups --------------------------------------------------------------------------

    def add_wakeups(self, wakeups: list[Wakeup]) -> list[str]:
        """Reports a non-owner heard, for their jobs' owners (in one transaction); rings
        each owner's doorbell (PostgreSQL NOTIFY, sent at commit). Returns the owners."""
        owners: set[str] = set()
        with self._tx() as c:
            now = self._now(c)
            for w in wakeups:
                row = c.execute("SELECT owner FROM job_leases WHERE job_id=?",
                                (w.job_id,)).fetchone()
                c.execute("INSERT INTO wakeups(job_id, attempt_id, rank, kind, created_at)"
                          " VALUES (?, ?, ?, ?, ?)", (w.job_id, w.attempt_id, w.rank, w.kind,
                                                      now))
                if row is not None and row[0]:
                    owners.add(str(row[0]))
            if self.d.name == "postgres":
                for owner in sorted(owners):
                    c.execute("SELECT pg_notify(?, 'wake')", (channel(owner),))
        return sorted(owners)

    def drain_wakeups(self, member: str) -> list[Wakeup]:
        """Take the wake-ups for jobs this member owns (each taken once)."""
        with self._tx() as c:
            rows = c.execute(
                "DELETE FROM wakeups WHERE job_id IN (SELECT job_id FROM job_leases WHERE"
                " owner=?) RETURNING job_id, attempt_id, rank, kind", (member,)).fetchall()
        return [Wakeup(r[0], r[1], r[2], r[3]) for r in rows]

    def expire_wakeups(self, older_than: float) -> int:
        """Wake-ups nobody took (the job ended, its lease went): they would pile up."""
        with self._tx() as c:
            return int(c.execute("DELETE FROM wakeups WHERE created_at<?",
                                 (older_than,)).rowcount)


def channel(member: str) -> str:
    """The NOTIFY channel of a member's doorbell."""
    return f"skyjobs_{member}"
