"""Leases and fencing in the store, on both databases (store.leases)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skyjobs.controller import store as st
from skyjobs.controller.store.leases import FENCE, Fence, Wakeup
from skyjobs.exceptions import LeaseLostError
from skyjobs.pricing.catalog import Placement, load_cloud


@pytest.fixture
def db(store_target: Path | str) -> Iterator[st.SyncStore]:
    store = st.SyncStore(store_target)
    yield store
    store.close()


def placement() -> Placement:
    o = load_cloud("local")[0]
    return Placement(o, True, o.spot_price or 0.0)


def dump(db: st.SyncStore, job: int) -> object:
    return (db.get_job(job), db.events(job), db.attempts_of(job), db.outbox_stats())


def test_survivors_split_a_dead_members_leases_in_one_round(db: st.SyncStore) -> None:
    for m in ("a", "b", "dead"):
        db.register_member(m, f"http://{m}", f"http://{m}", "h", 1)
    jobs = [db.create_job("j", {"spec": {}}, False, "sky") for _ in range(6)]
    assert {j for j, _, _ in db.claim_leases("dead", 30)} == set(jobs)  # unowned: anyone's
    db.conn.execute("UPDATE controllers SET heartbeat_at = 0 WHERE id = 'dead'")
    db.conn.execute("UPDATE job_leases SET expires_at = ?", (time.time() - 1,))  # just now
    first = db.claim_leases("a", 30)
    second = db.claim_leases("b", 30)
    assert len(first) == 3 and len(second) == 3  # each its part, in one scan
    assert {j for j, _, _ in first} | {j for j, _, _ in second} == set(jobs)
    assert all(token == 2 and previous == "dead" for _, token, previous in first + second)
    assert db.claim_leases("a", 30) == []  # nothing free is left


def test_a_part_nobody_took_goes_to_whoever_scans_next(db: st.SyncStore) -> None:
    for m in ("a", "b"):
        db.register_member(m, f"http://{m}", f"http://{m}", "h", 1)
    jobs = [db.create_job("j", {"spec": {}}, False, "sky") for _ in range(4)]
    db.claim_leases("a", 30)
    db.conn.execute("UPDATE job_leases SET expires_at = ?", (time.time() - 1,))
    assert len(db.claim_leases("a", 30)) == 2  # b's part waits for b...
    db.conn.execute("UPDATE job_leases SET expires_at = ? WHERE owner = 'a' AND token = 1",
                    (time.time() - 20,))  # ...until it stayed free past half a lease
    assert {j for j, _, _ in db.claim_leases("a", 30)} | {
        j for j, o in db.conn.execute("SELECT job_id, owner FROM job_leases")
        if o == "a"} == set(jobs)


def test_a_lapsed_lease_is_not_renewed_but_claimed_again_with_a_new_token(
        db: st.SyncStore) -> None:
    db.register_member("a", "u", "u", "h", 1)
    db.register_member("b", "u", "u", "h", 1)
    job = db.create_job("j", {"spec": {}}, False, "sky")
    db.claim_leases("a", 30)
    db.conn.execute("UPDATE job_leases SET expires_at = 0")  # a lapsed away (paused)
    assert db.renew_leases("a", 30)[1] == {}
    ((got, token, previous),) = db.claim_leases("b", 30)
    assert (got, token, previous) == (job, 2, "a")
    assert any("took the job over from a" in (e["reason"] or "") for e in db.events(job))


def test_a_stale_runner_write_is_refused_and_changes_nothing(db: st.SyncStore) -> None:
    db.register_member("a", "u", "u", "h", 1)
    db.register_member("b", "u", "u", "h", 1)
    ((job, owner),) = db.create_leased_jobs("j", {"spec": {}}, False, "sky", 1, member="a",
                                            lease_s=30)
    assert owner == "a"  # both have no jobs: the one taking the submit keeps it
    fence = db.own_job("a", job)
    reset = FENCE.set(fence)
    try:
        db.begin_attempt(job, placement(), 1, "sjx", "first")  # the owner's write goes in
        db.conn.execute("UPDATE job_leases SET expires_at = 0")
        db.claim_leases("b", 30)  # b takes the job over
        before = dump(db, job)
        with pytest.raises(LeaseLostError):
            db.transition(job, st.RUNNING, "stale")
        with pytest.raises(LeaseLostError):
            db.add_info_event(job, "stale")
        assert dump(db, job) == before
    finally:
        FENCE.reset(reset)
    with pytest.raises(LeaseLostError):
        db.own_job("a", job)  # nor can it start a new runner on it
    assert db.own_job("b", job).token > fence.token


def test_wakeups_go_to_the_owner_once(db: st.SyncStore) -> None:
    db.register_member("a", "u", "u", "h", 1)
    ((job, _),) = db.create_leased_jobs("j", {"spec": {}}, False, "sky", 1, member="a",
                                        lease_s=30)
    assert db.add_wakeups([Wakeup(job, 7, 0, "exit")]) == ["a"]
    assert db.drain_wakeups("b") == []
    assert db.drain_wakeups("a") == [Wakeup(job, 7, 0, "exit")]
    assert db.drain_wakeups("a") == []


def test_one_member_at_a_time_holds_a_singleton_duty(store_target: Path | str) -> None:
    a, b = st.SyncStore(store_target), st.SyncStore(store_target)
    try:
        assert a.hold_duty("webhooks") and a.hold_duty("webhooks")
        if a.d.name == "sqlite":
            return  # one controller per SQLite store: it always holds every duty
        assert not b.hold_duty("webhooks")
        assert b.hold_duty("poll_prices")
        a.close()  # its session ends (as on kill -9): the lock goes free
        deadline = time.monotonic() + 5  # (once the server's backend has exited)
        while not b.hold_duty("webhooks") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert b.hold_duty("webhooks")
    finally:
        a.close()
        b.close()


async def test_a_standing_down_runners_reports_still_reach_the_owner(
        store_target: Path | str) -> None:
    """A runner that lost its lease hands its inbox on as wake-ups: that write must not
    carry the runner's (now refused) fence."""
    from types import SimpleNamespace

    from skyjobs.controller.leases import LeaseKeeper
    from skyjobs.controller.messages import Message
    from skyjobs.states import MessageKind

    store = st.Store(store_target)
    try:
        s = store.sync
        await store.call(s.register_member, "new", "u", "u", "h", 1)
        ((job, _),) = await store.call(s.create_leased_jobs, "j", {"spec": {}}, False, "sky",
                                       1, 1, "new", 30.0)
        sv = SimpleNamespace(member="old", store=store, config=SimpleNamespace(
            lease_seconds=30.0, database_url="postgresql://x"))
        keeper = LeaseKeeper(sv, adopt=None, stand_down=None)  # type: ignore[arg-type]
        reset = FENCE.set(Fence(job, "old", 1))  # the stood-down runner's own context
        try:
            keeper.forward(job, Message(MessageKind.EXIT, 7, 0))
        finally:
            FENCE.reset(reset)
        for _ in range(100):
            await asyncio.sleep(0.02)
            got = await store.call(s.drain_wakeups, "new")
            if got:
                break
        assert got == [Wakeup(job, 7, 0, "exit")]
    finally:
        store.close()
