"""Retention: what the sweep removes, what it keeps, and that it is all-or-nothing."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skyjobs.controller import retention
from skyjobs.controller import store as st
from skyjobs.pricing.catalog import Placement, load_cloud

DAY = 86400.0


def placement() -> Placement:
    o = load_cloud("local")[0]
    return Placement(o, True, o.spot_price or 0.0)


def ended_job(db: st.SyncStore, archive: str | None = None, released: bool = True,
              status: str = st.SUCCEEDED) -> int:
    job = db.create_job("j", {"spec": {}, "archive": archive}, archive is not None, "sky")
    a = db.begin_attempt(job, placement(), 1, "sjx", "first")
    db.set_node_phase(a.id, 0, "running")
    db.transition(job, st.RUNNING, "running")
    db.add_info_event(job, "a line")
    db.transition(job, status, "done", exit_code=0, end_attempt=(a.id, "succeeded"))
    if released:
        db.mark_released(a.id)
    return job


def age(db: st.SyncStore, job: int, days: float) -> None:
    db.conn.execute("UPDATE jobs SET ended_at = ? WHERE id = ?", (time.time() - days * DAY, job))


def rows(db: st.SyncStore) -> dict[str, int]:
    return {t: db.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("jobs", "attempts", "nodes", "events", "outbox", "usage_totals")}


@pytest.fixture
def db(store_target: Path | str) -> Iterator[st.SyncStore]:
    store = st.SyncStore(store_target, hooks={"h": frozenset({"succeeded"})})
    yield store
    store.close()


def test_only_old_ended_released_jobs_go_and_the_cost_totals_stay(db: st.SyncStore) -> None:
    old, recent = ended_job(db), ended_job(db)
    unreleased = ended_job(db, released=False)  # its instances may still be up: kept
    live = db.create_job("live", {"spec": {}}, False, "sky")
    for job in (old, unreleased, live):
        age(db, job, 40)
    db.conn.execute("UPDATE jobs SET ended_at = NULL WHERE id = ?", (live,))
    totals = db.usage_by_offering(time.time())
    assert db.conn.execute("SELECT COUNT(*) FROM outbox WHERE job_id=?", (old,)).fetchone()[0]

    batch = db.gc_jobs(time.time() - 30 * DAY, limit=100)

    assert batch.job_ids == [old]
    assert batch.counts == {"jobs": 1, "attempts": 1, "nodes": 1, "events": 5, "outbox": 1}
    left = {r[0] for r in db.conn.execute("SELECT id FROM jobs")}
    assert left == {recent, unreleased, live}
    for table in ("attempts", "events", "outbox"):
        assert not db.conn.execute(f"SELECT 1 FROM {table} WHERE job_id=?", (old,)).fetchall()
    assert db.usage_by_offering(time.time())[0]["cost"] == pytest.approx(totals[0]["cost"])


def test_dry_run_counts_and_changes_nothing(db: st.SyncStore) -> None:
    for _ in range(3):
        age(db, ended_job(db), 40)
    before = rows(db)
    assert len(db.gc_jobs(time.time() - 30 * DAY, limit=10**9, dry_run=True).job_ids) == 3
    assert db.gc_history(time.time(), time.time(), dry_run=True)["outbox"] == 0
    assert rows(db) == before


def test_a_failure_inside_the_sweep_rolls_the_whole_batch_back(db: st.SyncStore) -> None:
    jobs = [ended_job(db) for _ in range(3)]
    for job in jobs:
        age(db, job, 40)
    before = rows(db)
    # A trigger makes the last delete fail, as a crash at that point would: nothing is gone.
    if db.d.name == "sqlite":
        db.conn.execute("CREATE TEMP TRIGGER boom BEFORE DELETE ON jobs BEGIN "
                        "SELECT RAISE(ABORT, 'boom'); END")
    else:
        db.conn.execute("CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS"
                        " $$ BEGIN RAISE EXCEPTION 'boom'; END $$;"
                        " CREATE TRIGGER boom BEFORE DELETE ON jobs"
                        " FOR EACH ROW EXECUTE FUNCTION boom()")
    with pytest.raises(Exception, match="boom"):
        db.gc_jobs(time.time() - 30 * DAY, limit=100)
    assert rows(db) == before
    db.conn.execute("DROP TRIGGER boom" + ("" if db.d.name == "sqlite" else " ON jobs"))
    assert db.gc_jobs(time.time() - 30 * DAY, limit=100).job_ids == jobs


def test_delivered_webhook_rows_and_faded_zone_events_go(db: st.SyncStore) -> None:
    job = ended_job(db)
    (row,) = db.conn.execute("SELECT id FROM outbox").fetchall()
    db.mark_delivered(row[0])
    db.conn.execute("UPDATE outbox SET delivered_at = ?", (time.time() - 40 * DAY,))
    for days in (40, 1):
        db.conn.execute("INSERT INTO zone_events(cloud, region, zone, instance_type, use_spot,"
                        " kind, at, value) VALUES ('local', 'r', 'z', 't', 1, 'preemption', ?,"
                        " 1)", (time.time() - days * DAY,))
    out = db.gc_history(time.time() - 30 * DAY, time.time() - 30 * DAY)
    assert out == {"outbox": 1, "zone_events": 1}
    assert db.get_job(job).status == st.SUCCEEDED  # the job itself is recent: kept


def test_sweep_removes_logs_and_archives_nothing_else_uses(tmp_path: Path,
                                                           store_target: Path | str) -> None:
    state = tmp_path / "state"
    (state / "archives").mkdir(parents=True)
    store = st.Store(store_target)
    s = store.sync
    shared, alone, orphan, fresh_orphan, pending = "a" * 64, "b" * 64, "c" * 64, "d" * 64, \
        "e" * 64
    old_shared, old_alone = ended_job(s, shared), ended_job(s, alone)
    kept = ended_job(s, shared)  # recent: keeps the shared archive
    for job in (old_shared, old_alone):
        age(s, job, 40)
        (state / "logs" / str(job)).mkdir(parents=True)
        (state / "logs" / str(job) / "attempt-1-node-0.log").write_text("x")
    for digest in (shared, alone, orphan, fresh_orphan, pending):
        (state / "archives" / f"{digest}.tar.gz").write_bytes(b"tar")
    stale = time.time() - 40 * DAY
    for digest in (orphan, pending):  # left by submits that crashed / one still going
        os.utime(state / "archives" / f"{digest}.tar.gz", (stale, stale))
    try:
        dry = asyncio.run(retention.sweep(store, state, 30 * DAY, keep_zone_events_s=14 * DAY,
                                          in_flight={pending}, dry_run=True))
        assert (dry["jobs"], dry["archives"]) == (2, 2)
        assert (state / "logs" / str(old_alone)).exists()
        out = asyncio.run(retention.sweep(store, state, 30 * DAY, keep_zone_events_s=14 * DAY,
                                          in_flight={pending}))
    finally:
        store.close()
    assert (out["jobs"], out["logs"], out["archives"]) == (2, 2, 2)
    assert sorted(p.name[:1] for p in (state / "archives").iterdir()) == ["a", "d", "e"]
    assert not (state / "logs" / str(old_alone)).exists()
    assert kept


def test_batches_are_bounded(db: st.SyncStore) -> None:
    jobs = [ended_job(db) for _ in range(5)]
    for job in jobs:
        age(db, job, 40)
    assert db.gc_jobs(time.time() - 30 * DAY, limit=2).job_ids == jobs[:2]
    assert db.gc_jobs(time.time() - 30 * DAY, limit=2).job_ids == jobs[2:4]
    assert db.gc_jobs(time.time() - 30 * DAY, limit=2).job_ids == jobs[4:]
