"""The controller's hot paths at scale (issue 11): what agents' requests cost, and that the
shortcuts taken for it keep every guarantee (no store read per request, intervals that grow
with the fleet, batched notices and log appends, state dropped when an attempt is over)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from skyjobs.config import load_config
from skyjobs.controller import store as st
from skyjobs.controller.logwriter import LogWriter
from skyjobs.controller.metrics import Metrics
from skyjobs.controller.sessions import AgentSessions
from skyjobs.exceptions import SkyjobsError
from skyjobs.node.agent import Agent
from skyjobs.pricing.catalog import Placement, load_cloud
from skyjobs.recovery.memory import PreemptionMemory
from tests.unit.harness import Harness, submit, until


def _sessions(tmp_path: Path, **cfg: float) -> AgentSessions:
    config = load_config(state_dir=tmp_path / "state", **cfg)
    store = st.Store(tmp_path / "s.db")
    return AgentSessions(config, store, Metrics(), b"k", PreemptionMemory(),
                         post=lambda *_: None, placement_of=lambda a: _placement(),
                         wake_webhooks=lambda: None)


def _placement() -> Placement:
    o = load_cloud("local")[0]
    return Placement(o, True, o.spot_price or 0.0)


def test_intervals_grow_with_the_fleet_and_the_silence_timeout_with_them(
        tmp_path: Path) -> None:
    s = _sessions(tmp_path, heartbeat_interval=5, heartbeat_timeout=30,
                  max_heartbeat_rate=100, max_log_post_rate=50)
    try:
        assert (s.heartbeat_interval(), s.log_interval(), s.heartbeat_timeout) == (5, 1, 30)
        for attempt in range(2000):
            s.heard(attempt, 0)
            s.heard(attempt, 0)  # the same agent again is not a second one
        assert s.agents == 2000
        # 2000 agents at most 100 heartbeats/s: every 20 s; logs at most 50 posts/s: 40 s.
        assert (s.heartbeat_interval(), s.log_interval()) == (20, 40)
        assert s.heartbeat_timeout == 120  # six intervals, as 30 s is six of 5 s
        for attempt in range(2000):
            s.forget(attempt)
        assert s.agents == 0 and s.heartbeat_interval() == 5
        # Agents may still be on the 20 s interval until their next heartbeat.
        assert s.heartbeat_timeout == 120
    finally:
        s.store.close()


def test_a_restarted_controller_assumes_the_interval_its_fleet_was_sent(
        tmp_path: Path) -> None:
    s = _sessions(tmp_path, heartbeat_interval=5, heartbeat_timeout=30,
                  max_heartbeat_rate=100)
    try:
        s.assume_fleet(5000)
        assert s.heartbeat_timeout == 300 and s.heartbeat_interval() == 5
    finally:
        s.store.close()


def test_notices_arriving_together_share_a_transaction_and_each_moves_its_job(
        tmp_path: Path) -> None:
    s = _sessions(tmp_path)
    sync = s.store.sync

    async def run() -> tuple[list[bool], int]:
        jobs = [s.store.sync.create_job("j", {"spec": {}}, False, "sky") for _ in range(40)]
        attempts = [sync.begin_attempt(j, _placement(), 1, "sjx", "first") for j in jobs]
        for j in jobs:
            sync.transition(j, st.RUNNING, "running")
        calls = 0
        real = sync.notices_and_recover

        def counting(notices: list[st.Notice]) -> list[bool | SkyjobsError]:
            nonlocal calls
            calls += 1
            return real(notices)

        sync.notices_and_recover = counting  # type: ignore[method-assign]
        now = time.time()
        notice = {"action": "terminate"}
        results = await asyncio.gather(*(s.record_notice(a, 0, notice, now) for a in attempts))
        return [sync.get_job(a.job_id).status == st.RECOVERING for a in attempts], calls \
            if results else -1

    try:
        moved, calls = asyncio.run(run())
    finally:
        s.store.close()
    assert all(moved)
    assert 1 <= calls < 40


def test_one_bad_notice_in_a_batch_is_refused_alone(store_target: Path | str) -> None:
    db = st.SyncStore(store_target)
    job = db.create_job("j", {"spec": {}}, False, "sky")
    a = db.begin_attempt(job, _placement(), 1, "sjx", "first")
    db.transition(job, st.RUNNING, "running")
    now = time.time()
    out = db.notices_and_recover([(job, 999, now, now + 30, "bad", (_placement(), "x", 1.0)),
                                  (job, a.id, now, now + 30, "good",
                                   (_placement(), "preemption", 1.0))])
    assert isinstance(out[0], Exception) and out[1] is True
    assert db.get_job(job).status == st.RECOVERING
    db.close()


def test_log_appends_are_batched_idempotent_and_fail_alone(tmp_path: Path) -> None:
    async def run() -> tuple[list[int | BaseException], int, int]:
        writer = LogWriter()
        task = writer.start()
        try:
            paths = [tmp_path / "logs" / f"{i}.log" for i in range(50)]
            first = await asyncio.gather(*(writer.append(p, 0, b"hello\n") for p in paths))
            # A replay of the same chunk writes nothing twice; a bad path fails only itself.
            blocked = tmp_path / "file"
            blocked.write_text("")
            again = await asyncio.gather(
                writer.append(paths[0], 0, b"hello\n"),
                writer.append(blocked / "x.log", 0, b"nope"),
                writer.append(paths[1], 6, b"more\n"), return_exceptions=True)
            return [*first, *again], writer.batches, len(paths[1].read_bytes())
        finally:
            task.cancel()

    results, batches, size = asyncio.run(run())
    assert results[:50] == [6] * 50
    assert results[50] == 6 and isinstance(results[51], OSError) and results[52] == 11
    assert size == 11
    assert batches < 50  # one hop per batch, not per post


def test_the_agent_takes_the_intervals_its_controller_sends() -> None:
    agent = Agent.__new__(Agent)
    agent.task = {"heartbeat_interval": 5.0}
    agent._take_intervals({"heartbeat_interval": 40, "log_interval": 20.0})
    assert agent.task == {"heartbeat_interval": 40.0, "log_interval": 20.0}
    for bad in (0, -1, 1e9, True, "5", None, float("nan")):
        agent._take_intervals({"heartbeat_interval": bad})
        assert agent.task["heartbeat_interval"] == 40.0


async def test_agent_requests_read_no_store_and_a_released_attempt_leaves_nothing(
        h: Harness) -> None:
    job_id = await submit(h)
    aid = await h.run_to_running(job_id)
    store = h.ctl.store
    calls: list[str] = []
    real = store.call

    async def counting(fn, *args, **kwargs):
        calls.append(fn.__name__)
        return await real(fn, *args, **kwargs)

    store.call = counting  # type: ignore[method-assign]
    tok = h.ctl.sessions.agent_token(aid)
    for _ in range(3):
        status, body = await h.api("POST", f"/agent/v1/attempts/{aid}/heartbeat",
                                   {"rank": 0, "wait_go": 0}, tok)
        assert status == 200 and body["go"] is True
        assert body["heartbeat_interval"] >= 5 and body["log_interval"] >= 1
    async with h.http.post(f"{h.ctl.url}/agent/v1/attempts/{aid}/logs?rank=0&offset=0",
                           data=b"line\n", headers={"Authorization": f"Bearer {tok}"}) as r:
        assert r.status == 200
    assert "get_attempt" not in calls and "get_job" not in calls
    store.call = real  # type: ignore[method-assign]

    await h.api("POST", "/api/v1/cancel", {"ids": [job_id]})
    await h.wait_status(job_id, "CANCELLED")
    sizes = await until("the attempt forgotten", lambda: (
        s := h.ctl.sessions.sizes()) and not any(s.values()) and s)
    # A straggler's heartbeat after the release is answered, and tracked nowhere.
    status, body = await h.api("POST", f"/agent/v1/attempts/{aid}/heartbeat",
                               {"rank": 0}, tok)
    assert status == 200 and body == {"go": False, "drain": True}
    status, _ = await h.agent(aid, {"kind": "phase", "phase": "running", "rank": 0})
    assert status == 200
    assert h.ctl.sessions.sizes() == sizes


@pytest.mark.parametrize("body", [{"rank": 1}, {"rank": -1}, {"rank": True},
                                  {"rank": 0, "wait_go": -1}, {"rank": "0", "x": 1}])
async def test_heartbeat_shapes_off_the_fast_path_read_as_before(h: Harness,
                                                                 body: dict[str, object]
                                                                 ) -> None:
    job_id = await submit(h)
    aid = await h.run_to_running(job_id)
    status, reply = await h.api("POST", f"/agent/v1/attempts/{aid}/heartbeat", body,
                                h.ctl.sessions.agent_token(aid))
    if body == {"rank": "0", "x": 1}:
        assert status == 200  # a numeric string and an unknown key were always accepted
    else:
        assert status == 400 and "\n" not in reply["error"]


async def test_an_instance_poll_round_goes_in_slices_and_misses_nobody(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from skyjobs.controller import monitor as mon
    monkeypatch.setattr(mon, "SLICE", 1)
    jobs = [await submit(h) for _ in range(3)]
    attempts = [await h.run_to_running(j) for j in jobs]
    sv = h.ctl.services
    sv.config.instance_poll_interval = 0.2
    last = await h.ctl.store.call(h.ctl.store.sync.get_attempt, attempts[-1])
    await h.fake.preempt(last.instance_ids, 0)
    h.fake.calls.clear()
    await mon.InstanceMonitor(sv).poll()
    statuses = [ids for op, ids in h.fake.calls if op == "status"]
    assert len(statuses) == 3 and all(len(ids) == 1 for ids in statuses)  # one per slice
    # The preempted one, in the last slice, is found all the same.
    await h.wait_status(jobs[-1], "RECOVERING", "PROVISIONING")
    assert [(await h.job(j))["status"] for j in jobs[:2]] == ["RUNNING", "RUNNING"]


def test_a_store_read_that_races_a_release_does_not_cache_the_attempt(
        tmp_path: Path) -> None:
    s = _sessions(tmp_path)
    sync = s.store.sync
    job = sync.create_job("j", {"spec": {}}, False, "sky")
    a = sync.begin_attempt(job, _placement(), 1, "sjx", "first")
    real = sync.get_attempt

    def released_meanwhile(attempt_id: int) -> st.Attempt:
        got = real(attempt_id)
        s.forget(attempt_id)  # the reaper confirmed the release while the read ran
        return got

    sync.get_attempt = released_meanwhile  # type: ignore[method-assign]
    try:
        assert asyncio.run(s.attempt(a.id)).id == a.id
        assert not s.knows(a.id)  # cached now, it would never be dropped
        sync.get_attempt = real  # type: ignore[method-assign]
        asyncio.run(s.attempt(a.id))
        assert s.knows(a.id)
    finally:
        s.store.close()
