from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skyjobs.controller import store as st
from skyjobs.controller.store.dialect import dialect_for
from skyjobs.exceptions import ConfigError, IllegalTransitionError, NotFoundError
from skyjobs.pricing.catalog import Placement, load_cloud


@pytest.fixture
def db(store_target: Path | str) -> Iterator[st.SyncStore]:
    store = st.SyncStore(store_target)
    yield store
    store.close()


def table_names(db: st.SyncStore) -> set[str]:
    if db.d.name == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE type='table'"
    else:
        sql = ("SELECT table_name FROM information_schema.tables"
               " WHERE table_schema = current_schema()")
    return {r[0] for r in db.conn.execute(sql)}


def set_schema_version(db: st.SyncStore, version: int) -> None:
    """Pretend the store was migrated to ``version`` (older or newer than the code)."""
    if db.d.name == "sqlite":
        db.conn.execute(f"PRAGMA user_version = {version}")
        return
    db.conn.execute("DELETE FROM schema_migrations WHERE version > ?", (version,))
    db.conn.execute("INSERT INTO schema_migrations(version, applied_at)"
                    " SELECT v, 0 FROM generate_series(1, ?) AS v ON CONFLICT DO NOTHING",
                    (version,))


def placement() -> Placement:
    o = load_cloud("local")[0]
    return Placement(o, True, o.spot_price or 0.0)


def transitions(db: st.SyncStore, job_id: int) -> list[tuple[str | None, str | None]]:
    return [(e["from_status"], e["to_status"]) for e in db.events(job_id)
            if e["kind"] == "transition"]


def test_happy_path_with_a_recovery_writes_one_event_per_transition(db: st.SyncStore) -> None:
    job = db.create_job("j", {"spec": {}}, False, "sky")
    a1 = db.begin_attempt(job, placement(), 2, "sjx", "first")
    assert a1.instance_ids == [f"sjx-{job}-1-0", f"sjx-{job}-1-1"]
    db.transition(job, st.RUNNING, "running")
    db.transition(job, st.RECOVERING, "notice", end_attempt=(a1.id, "preempted"),
                  job_updates={"recovery_count": 1})
    a2 = db.begin_attempt(job, placement(), 2, "sjx", "recovery")
    db.transition(job, st.RUNNING, "running")
    db.transition(job, st.SUCCEEDED, "done", exit_code=0, end_attempt=(a2.id, "succeeded"))
    assert transitions(db, job) == [
        (None, "PENDING"), ("PENDING", "PROVISIONING"), ("PROVISIONING", "RUNNING"),
        ("RUNNING", "RECOVERING"), ("RECOVERING", "PROVISIONING"),
        ("PROVISIONING", "RUNNING"), ("RUNNING", "SUCCEEDED")]
    j = db.get_job(job)
    assert (j.status, j.recovery_count, j.exit_code, j.reason) == ("SUCCEEDED", 1, 0, "done")
    assert j.ended_at is not None
    assert [a.end_reason for a in db.attempts_of(job)] == ["preempted", "succeeded"]


@pytest.mark.parametrize(("path", "illegal"), [
    ([], st.RUNNING),
    ([], st.SUCCEEDED),
    ([st.CANCELLING], st.RUNNING),
    ([st.CANCELLING, st.CANCELLED], st.PENDING),
    ([st.FAILED], st.RECOVERING),
])
def test_illegal_transitions_raise_and_change_nothing(db: st.SyncStore, path: list[str],
                                                      illegal: str) -> None:
    job = db.create_job("j", {"spec": {}}, False, "sky")
    for state in path:
        db.transition(job, state, "step")
    before = (db.get_job(job).status, len(db.events(job)))
    with pytest.raises(IllegalTransitionError):
        db.transition(job, illegal, "nope")
    assert (db.get_job(job).status, len(db.events(job))) == before


def test_compare_and_set_loses_to_a_concurrent_cancel(db: st.SyncStore) -> None:
    job = db.create_job("j", {"spec": {}}, False, "sky")
    db.begin_attempt(job, placement(), 1, "sjx", "first")
    db.transition(job, st.CANCELLING, "cancel")  # the API got there first
    with pytest.raises(IllegalTransitionError):
        db.transition(job, st.RUNNING, "running", expect=frozenset({st.PROVISIONING}))
    assert db.get_job(job).status == st.CANCELLING


def test_a_failing_transaction_leaves_no_half_write(db: st.SyncStore) -> None:
    job = db.create_job("j", {"spec": {}}, False, "sky")
    a = db.begin_attempt(job, placement(), 1, "sjx", "first")
    db.transition(job, st.RUNNING, "running")
    events = len(db.events(job))
    with pytest.raises(NotFoundError):
        # The attempt id is wrong: the job update and event must roll back with it.
        db.transition(job, st.RECOVERING, "x", end_attempt=(a.id + 99, "preempted"))
    assert db.get_job(job).status == st.RUNNING
    assert len(db.events(job)) == events


def test_node_phase_reports_are_idempotent_and_exit_is_final(db: st.SyncStore) -> None:
    job = db.create_job("j", {"spec": {}}, False, "sky")
    a = db.begin_attempt(job, placement(), 1, "sjx", "first")
    assert db.set_node_phase(a.id, 0, "running")
    assert not db.set_node_phase(a.id, 0, "running")
    assert db.set_node_phase(a.id, 0, "exited", 3)
    assert not db.set_node_phase(a.id, 0, "running")
    assert db.nodes_of(a.id) == {0: ("exited", 3)}


def test_notice_moves_to_recovering_once_in_one_transaction(db: st.SyncStore) -> None:
    job = db.create_job("j", {"spec": {}}, False, "sky")
    a = db.begin_attempt(job, placement(), 1, "sjx", "first")
    db.transition(job, st.RUNNING, "running")
    event = (placement(), "preemption", 1.0)
    assert db.notice_and_recover(job, a.id, 10.0, 130.0, "notice", event)
    assert not db.notice_and_recover(job, a.id, 11.0, 131.0, "notice again", event)
    got = db.get_attempt(a.id)
    assert (got.notice_at, got.notice_deadline) == (10.0, 130.0)
    assert got.status != "ended"  # the old attempt keeps running to checkpoint
    j = db.get_job(job)
    assert (j.status, j.recovery_count) == (st.RECOVERING, 1)
    assert transitions(db, job)[-1] == ("RUNNING", "RECOVERING")
    assert [e["kind"] for e in db.zone_events_since(0)] == ["preemption"]


def test_notice_for_a_cancelling_job_is_recorded_but_does_not_move_it(db: st.SyncStore) -> None:
    job = db.create_job("j", {"spec": {}}, False, "sky")
    a = db.begin_attempt(job, placement(), 1, "sjx", "first")
    db.transition(job, st.CANCELLING, "cancel")
    assert not db.notice_and_recover(job, a.id, 10.0, 130.0, "notice",
                                     (placement(), "preemption", 1.0))
    assert db.get_job(job).status == st.CANCELLING
    assert db.get_attempt(a.id).notice_at == 10.0


def test_migrations_build_the_schema_from_scratch_and_reopen(store_target: Path | str) -> None:
    path = store_target
    first = st.SyncStore(path)
    assert first.schema_version() == len(st.MIGRATIONS)
    job = first.create_job("j", {"spec": {"a": 1}}, False, "sky")
    first.close()
    again = st.SyncStore(path)  # reopening runs no migration twice and keeps the data
    assert again.get_job(job).task == {"spec": {"a": 1}}
    assert {"jobs", "events", "attempts", "nodes", "zone_events", "meta"} <= table_names(again)
    again.close()


def test_every_live_state_can_reach_cancelled() -> None:
    for state in st.LIVE - {st.CANCELLING}:
        assert st.CANCELLING in st.TRANSITIONS[state]
    assert st.TRANSITIONS[st.CANCELLING] == {st.CANCELLED}
    for state in st.TERMINAL:
        assert st.TRANSITIONS[state] == frozenset()


def test_cost_and_saving_come_from_the_attempt_prices(store_target: Path | str) -> None:
    db = st.SyncStore(store_target, hooks={"ops": frozenset({"all"})})
    job = db.create_job("j", {"spec": {}}, False, "sky")
    p = placement()  # local.cpu2 in local-a: spot $0.030/h, on-demand $0.10/h
    a = db.begin_attempt(job, p, 2, "sjx", "first")
    hour_later = a.created_at + 3600
    assert a.cost(hour_later) == pytest.approx(2 * 0.030)
    assert a.on_demand_cost(hour_later) == pytest.approx(2 * 0.10)
    db.transition(job, st.RUNNING, "running")
    payload = json.loads(db.conn.execute("SELECT payload FROM outbox ORDER BY id DESC"
                                         " LIMIT 1").fetchone()[0])
    assert payload["to"] == "RUNNING" and payload["cost_so_far"] >= 0
    assert payload["saving_so_far"] >= 0 and payload["placement"] == p.label()
    db.close()


def test_no_capacity_rounds_count_until_the_job_really_runs(db: st.SyncStore) -> None:
    job = db.create_job("j", {"spec": {}}, False, "sky")
    assert [db.no_capacity_round(job) for _ in range(3)] == [1, 2, 3]
    a = db.begin_attempt(job, placement(), 1, "sjx", "first")
    db.set_attempt_status(a.id, "provisioning")
    # A launch that went through is not progress: its agent may never start.
    assert db.get_job(job).launch_rounds == 3
    db.transition(job, st.RUNNING, "running", running_attempt=a.id,
                  job_updates={"launch_rounds": 0})
    assert db.get_job(job).launch_rounds == 0


def test_usage_totals_match_a_scan_of_every_attempt(db: st.SyncStore) -> None:
    """The metrics' running totals (kept as attempts end) equal summing every attempt."""
    job = db.create_job("j", {"spec": {}}, False, "sky")
    ended = []
    for _ in range(3):
        a = db.begin_attempt(job, placement(), 2, "sjx", "try")
        time.sleep(0.01)
        db.end_attempt(job, a.id, "no_capacity", None, "no capacity")
        ended.append(a.id)
    live = db.begin_attempt(job, placement(), 2, "sjx", "try")
    now = time.time() + 1.0
    usage = db.usage_by_offering(now)
    attempts = db.attempts_of(job)
    assert len(usage) == 1
    assert usage[0]["node_hours"] == pytest.approx(sum(a.node_hours(now) for a in attempts))
    assert usage[0]["cost"] == pytest.approx(sum(a.cost(now) for a in attempts))
    db.end_attempt(job, ended[0], "no_capacity", None, "again")  # ending twice adds nothing
    assert db.usage_by_offering(now)[0]["cost"] == pytest.approx(usage[0]["cost"])
    assert live.status == "launching"


def test_the_usage_migration_backfills_ended_attempts(store_target: Path | str) -> None:
    path = store_target
    old = st.SyncStore(path)
    job = old.create_job("j", {"spec": {}}, False, "sky")
    a = old.begin_attempt(job, placement(), 1, "sjx", "try")
    old.end_attempt(job, a.id, "no_capacity", None, "no capacity")
    expected = old.usage_by_offering(time.time())
    # Back to the schema before the totals existed, keeping the attempt.
    old.conn.execute("DROP TABLE usage_totals")
    old.conn.execute("DROP INDEX attempts_status")
    old.conn.execute("DROP INDEX jobs_ended")  # and the retention migration after it
    old.conn.execute("DROP INDEX outbox_job")
    # and the leases' and the shared logs' migrations
    for table in ("job_leases", "wakeups", "controllers", "log_chunks", "archives"):
        old.conn.execute(f"DROP TABLE {table}")
    set_schema_version(old, 7)
    old.close()
    reopened = st.SyncStore(path)
    try:
        assert reopened.schema_version() == len(st.MIGRATIONS)
        got = reopened.usage_by_offering(time.time())
        assert got[0]["cost"] == pytest.approx(expected[0]["cost"])
    finally:
        reopened.close()


def test_next_task_ends_the_finished_tasks_other_attempts_in_the_same_transaction(
        db: st.SyncStore) -> None:
    """A pipeline task that finished while a migration's replacement was up: both end in
    the one commit that moves the job on, so a crash right after leaves nothing open that
    would hold the next task's go gate shut."""
    job = db.create_jobs("p", {"spec": {}}, False, "sky", 1, task_count=2)[0]
    done = db.begin_attempt(job, placement(), 1, "sjx", "task 1")
    db.transition(job, st.RUNNING, "running", running_attempt=done.id)
    db.transition(job, st.RECOVERING, "moving")
    spare = db.begin_attempt(job, placement(), 1, "sjx", "replacement")
    db.next_task(job, done.id, "task 1/2 succeeded; starting task 2")
    by_id = {a.id: a for a in db.attempts_of(job)}
    assert (by_id[done.id].end_reason, by_id[spare.id].end_reason) == ("succeeded",
                                                                        "superseded")
    j = db.get_job(job)
    assert (j.task_index, j.status) == (1, st.PROVISIONING)
    assert {a.id for a in db.attempts_to_release()} == {done.id, spare.id}


def test_a_store_from_a_newer_skyjobs_is_refused_untouched(store_target: Path | str) -> None:
    newer = st.SyncStore(store_target)
    set_schema_version(newer, len(st.MIGRATIONS) + 1)
    newer.close()
    with pytest.raises(ConfigError, match="newer than this skyjobs knows"):
        st.SyncStore(store_target)
    check = st.SyncStore.__new__(st.SyncStore)  # read the version without migrating
    check.d = dialect_for(store_target)
    check.conn = check.d.connect()
    assert check.schema_version() == len(st.MIGRATIONS) + 1
    check.close()
