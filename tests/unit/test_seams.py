"""The seams where the promise broke: one test per way a cloud call or the controller can
fail between two steps. The controller runs in-process against the in-memory provider
wrapped in the fault injector; tests play the agents through the real agent API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from skyjobs.config import load_config
from skyjobs.controller import runner, runners
from skyjobs.controller.daemon import Controller
from skyjobs.providers import base
from skyjobs.providers.fake import FakeProvider
from skyjobs.providers.faulty import FaultPlan, FaultyProvider
from tests.unit.test_controller_fake import DEADLINE_TASK, Harness, submit, until

FAST = {"SKYJOBS_LAUNCH_BACKOFF_INITIAL": "0.05", "SKYJOBS_LAUNCH_BACKOFF_MAX": "0.1",
        "SKYJOBS_MAX_LAUNCH_ROUNDS": "2", "SKYJOBS_INSTANCE_POLL_INTERVAL": "0.1",
        "SKYJOBS_HEARTBEAT_TIMEOUT": "30", "SKYJOBS_SILENT_WINDOW": "30"}
QUIET = {"SKYJOBS_HEARTBEAT_TIMEOUT": "0.4", "SKYJOBS_SILENT_WINDOW": "0.4"}


class Seams(Harness):
    faulty: FaultyProvider
    background: list[asyncio.Task[None]]

    async def restart(self) -> None:
        """Stop this controller (as a crash would leave things: nothing cleaned up) and
        start a new one on the same state dir and the same cloud."""
        await self.ctl.shutdown()
        self.ctl = Controller(load_config(state_dir=self.ctl.state_dir, port=0),
                              providers={"local": self.faulty})
        await self.ctl.start()

    def attempt(self, attempt_id: int) -> Any:
        return self.ctl.store.sync.get_attempt(attempt_id)

    def zone_kinds(self) -> list[str]:
        return [r["kind"] for r in self.ctl.store.sync.zone_events_since(0)]

    async def heartbeat(self, attempt_id: int) -> None:
        headers = {"Authorization": f"Bearer {self.ctl.sessions.agent_token(attempt_id)}"}
        async with self.http.post(f"{self.ctl.url}/agent/v1/attempts/{attempt_id}/heartbeat",
                                  json={"rank": 0}, headers=headers) as resp:
            assert resp.status == 200, await resp.text()


@pytest.fixture
async def seams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> AsyncIterator[Callable[..., Any]]:
    made: list[Seams] = []

    async def make(plan: FaultPlan | None = None, **env: str) -> Seams:
        for k, v in {**FAST, **env}.items():
            monkeypatch.setenv(k, v)
        faulty = FaultyProvider(FakeProvider(), plan or FaultPlan())
        ctl = Controller(load_config(state_dir=tmp_path / "state", port=0),
                         providers={"local": faulty})
        await ctl.start()
        http = aiohttp.ClientSession()
        h = Seams(ctl, faulty.inner, http)  # type: ignore[arg-type]
        h.faulty, h.background = faulty, []
        made.append(h)
        return h

    yield make
    for h in made:
        for t in h.background:
            t.cancel()
        await asyncio.gather(*h.background, return_exceptions=True)
        await h.http.close()
        await h.ctl.shutdown()


async def go_ready(h: Seams, attempt_id: int) -> None:
    """The replacement's agent reports ready and, like a real one, keeps heartbeating."""
    await h.agent(attempt_id, {"kind": "phase", "phase": "ready", "rank": 0})

    async def beat() -> None:
        while True:
            await h.heartbeat(attempt_id)
            await asyncio.sleep(0.1)

    h.background.append(asyncio.create_task(beat()))


async def next_attempt(h: Seams, job_id: int, after: int) -> int:
    await until("a replacement attempt", lambda: (
        (j := h.ctl.store.sync.get_job(job_id)).current_attempt != after
        and h.ctl.store.sync.get_attempt(j.current_attempt).status == "provisioning"))
    return await h.current_attempt(job_id)


async def test_a_failed_terminate_never_lets_two_attempts_run(seams: Any) -> None:
    """Agent goes silent -> recovery -> the old instance's terminate fails once: the
    replacement must not start run before the old instance is confirmed gone."""
    h: Seams = await seams(**QUIET)
    job_id = await submit(h)
    old = await h.run_to_running(job_id)
    old_ids = h.attempt(old).instance_ids
    h.faulty.inject("terminate", "before")
    await h.heartbeat(old)  # then silence: the agent is SIGSTOPped
    new = await next_attempt(h, job_id, old)
    await go_ready(h, new)
    assert h.attempt(old).status == "ended"
    # The reaper retries after a second; until the old instance is gone, no go.
    while not h.attempt(old).released:
        assert new not in h.ctl.sessions.go
        assert old_ids[0] in h.fake.alive()
        await asyncio.sleep(0.02)
    await until("go for the replacement", lambda: new in h.ctl.sessions.go)
    assert old_ids[0] not in h.fake.alive()
    assert ("terminate", "before") in [(op, mode) for op, mode, _ in h.faulty.injected]


async def test_silence_is_agent_lost_not_a_zone_preemption(seams: Any) -> None:
    h: Seams = await seams(**QUIET)
    job_id = await submit(h)
    old = await h.run_to_running(job_id)
    await h.heartbeat(old)
    await next_attempt(h, job_id, old)
    j = await h.job(job_id)
    assert j["attempt_list"][0]["end_reason"] == "agent_lost"
    assert j["recoveries"] == 1
    assert "preemption" not in h.zone_kinds()
    reasons = [e["reason"] or "" for e in h.ctl.store.sync.events(job_id)]
    assert any("silent for" in r for r in reasons)


async def test_an_agent_that_comes_back_is_recorded(seams: Any) -> None:
    h: Seams = await seams(SKYJOBS_HEARTBEAT_TIMEOUT="0.4")
    job_id = await submit(h)
    aid = await h.run_to_running(job_id)
    await h.heartbeat(aid)
    await until("a silence event", lambda: any(
        "silent for" in (e["reason"] or "") for e in h.ctl.store.sync.events(job_id)))
    await h.heartbeat(aid)
    await until("a back event", lambda: any(
        "is back after" in (e["reason"] or "") for e in h.ctl.store.sync.events(job_id)))
    assert (await h.job(job_id))["status"] == "RUNNING"


async def test_killed_between_commit_and_terminate_the_next_start_releases(
        seams: Any) -> None:
    """The controller dies after "attempt ended" is committed and before the terminate:
    the next controller's reaper terminates it, and the replacement waits for that."""
    h: Seams = await seams(SKYJOBS_HEARTBEAT_TIMEOUT="0.4", SKYJOBS_SILENT_WINDOW="0.2")
    h.faulty.plan.stall_s = 3600.0
    job_id = await submit(h)
    old = await h.run_to_running(job_id)
    old_ids = h.attempt(old).instance_ids
    h.faulty.inject("terminate", "stall")
    await h.heartbeat(old)
    await until("the old attempt ended", lambda: h.attempt(old).status == "ended")
    await asyncio.sleep(0.1)  # the terminate is now hanging
    assert old_ids[0] in h.fake.alive() and not h.attempt(old).released
    await h.restart()
    await until("the old attempt released", lambda: h.attempt(old).released)
    assert old_ids[0] not in h.fake.alive()
    new = await next_attempt(h, job_id, old)
    await go_ready(h, new)
    await until("go for the replacement", lambda: new in h.ctl.sessions.go)


@pytest.mark.parametrize("cleanup", ["before", "after"])
async def test_launch_error_after_boot_then_failed_cleanup_is_no_preemption(
        seams: Any, cleanup: str) -> None:
    h: Seams = await seams()
    h.faulty.inject("launch", "after")  # the instance booted, the answer was lost
    h.faulty.inject("terminate", cleanup)
    job_id = await submit(h)
    aid = await h.run_to_running(job_id)
    first = h.ctl.store.sync.attempts_of(job_id)[0].id
    assert aid != first
    await until("attempt 1 released", lambda: h.attempt(first).released)
    assert h.attempt(first).instance_ids[0] not in h.fake.alive()
    await asyncio.sleep(0.5)  # several polls: nothing about attempt 1 may count
    j = await h.job(job_id)
    assert j["status"] == "RUNNING" and j["recoveries"] == 0
    assert j["attempt_list"][0]["end_reason"] == "launch_error"
    assert "preemption" not in h.zone_kinds()


async def test_a_replayed_launch_onto_a_terminated_instance_gives_the_attempt_up(
        seams: Any) -> None:
    h: Seams = await seams()
    h.fake.launch_delay = 0.3
    job_id = await submit(h)
    first = await until("attempt 1", lambda: h.ctl.store.sync.get_job(job_id).current_attempt)
    ids = h.attempt(first).instance_ids
    # Someone (an earlier cleanup) terminated the id before the launch replays onto it.
    h.fake.instances[ids[0]] = base.InstanceInfo(ids[0], base.GONE, base.TERMINATED)
    aid = await h.run_to_running(job_id)
    assert aid != first
    j = await h.job(job_id)
    assert j["attempt_list"][0]["end_reason"] == "launch_error"
    assert j["recoveries"] == 0 and "preemption" not in h.zone_kinds()


async def test_an_instance_not_yet_visible_after_launch_is_not_gone(seams: Any) -> None:
    h: Seams = await seams(plan=FaultPlan(invisible_s=1.0))
    job_id = await submit(h)
    await h.wait_status(job_id, "PROVISIONING")
    await until("launched", lambda: h.fake.alive())
    await asyncio.sleep(1.2)  # about ten polls that see "not found"
    aid = await h.run_to_running(job_id)
    j = await h.job(job_id)
    assert j["attempts"] == 1 and j["recoveries"] == 0
    assert h.attempt(aid).n == 1


async def test_an_instance_terminated_outside_skyjobs_is_not_a_zone_preemption(
        seams: Any) -> None:
    h: Seams = await seams()
    job_id = await submit(h)
    aid = await h.run_to_running(job_id)
    iid = h.attempt(aid).instance_ids[0]
    h.fake.instances[iid] = base.InstanceInfo(iid, base.GONE, base.TERMINATED)
    await next_attempt(h, job_id, aid)
    j = await h.job(job_id)
    assert j["attempt_list"][0]["end_reason"] == "terminated" and j["recoveries"] == 1
    assert "preemption" not in h.zone_kinds()


async def test_a_real_preemption_is_remembered_against_the_zone(seams: Any) -> None:
    h: Seams = await seams()
    job_id = await submit(h)
    aid = await h.run_to_running(job_id)
    await h.fake.preempt(h.attempt(aid).instance_ids, 0)
    await next_attempt(h, job_id, aid)
    j = await h.job(job_id)
    assert j["attempt_list"][0]["end_reason"] == "preempted" and j["recoveries"] == 1
    assert h.zone_kinds().count("preemption") == 1


@pytest.fixture
def spot_again(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    from skyjobs.recovery.policy import Decision

    switch = {"on": False}
    monkeypatch.setenv("SKYJOBS_DEADLINE_CHECK_INTERVAL", "0.1")
    monkeypatch.setattr(runner, "deadline_decision", lambda ctx, candidates=None: Decision(
        switch["on"], "slack allows spot" if switch["on"] else "stay"))
    return switch


async def test_a_drained_job_that_exits_0_is_moved_not_succeeded(
        spot_again: dict[str, bool], seams: Any) -> None:
    """SIGTERM on a drain, the job checkpoints and exits 0: it did not finish."""
    h: Seams = await seams()
    job_id = await submit(h, DEADLINE_TASK)
    old = await h.run_to_running(job_id)
    spot_again["on"] = True
    new = await next_attempt(h, job_id, old)
    await go_ready(h, new)
    await until("the old attempt asked to drain", lambda: old in h.ctl.sessions.drain)
    await h.agent(old, {"kind": "exit", "exit_code": 0, "rank": 0})

    await until("go for the spot attempt", lambda: new in h.ctl.sessions.go)
    await h.agent(new, {"kind": "phase", "phase": "running", "rank": 0})
    j = await h.wait_status(job_id, "RUNNING", "SUCCEEDED")
    assert j["status"] == "RUNNING"
    assert [a["end_reason"] for a in j["attempt_list"]] == ["migrated", None]
    assert h.attempt(new).instance_ids[0] in h.fake.alive()


async def test_an_agent_that_never_reports_fails_the_job_instead_of_looping(
        seams: Any) -> None:
    """Instances come up but their agent never speaks (a bad image, a workdir it cannot
    unpack before it reports): a few attempts, then FAILED with the reason."""
    h: Seams = await seams(SKYJOBS_PROVISION_TIMEOUT="0.3")
    job_id = await submit(h)
    j = await h.wait_status(job_id, "FAILED")
    assert "agent never reported" in j["reason"] and "3 attempts in a row" in j["reason"]
    assert [a["end_reason"] for a in j["attempt_list"]] == ["agent_failed"] * 3
    assert j["recoveries"] == 0
    assert "no_capacity" not in h.zone_kinds()
    await until("nothing left running", lambda: not h.fake.alive())


async def test_a_runner_that_keeps_crashing_fails_its_job(
        seams: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runners, "RUNNER_RESTART_DELAY", 0.01)

    async def broken(self: runner.JobRunner, snap: Any) -> None:
        raise RuntimeError("a deterministic bug\nwith a second line")

    monkeypatch.setattr(runner.JobRunner, "_provision", broken)
    h: Seams = await seams()
    job_id = await submit(h)
    j = await h.wait_status(job_id, "FAILED")
    assert j["reason"].startswith("controller error while managing this job (5 crashes")
    assert "RuntimeError: a deterministic bug" in j["reason"] and "second" not in j["reason"]
    assert job_id not in h.ctl.runners


async def test_max_duration_fails_a_job_that_ran_too_long(seams: Any) -> None:
    h: Seams = await seams()
    task = {"resources": {"cloud": "local", "cpus": 2, "use_spot": True,
                          "job_recovery": {"max_duration_hours": 0.0003}},  # about 1 s
            "run": "x"}
    job_id = await submit(h, task)
    aid = await h.run_to_running(job_id)
    j = await h.wait_status(job_id, "FAILED")
    assert "ran longer than max_duration_hours" in j["reason"]
    assert j["attempt_list"][0]["end_reason"] == "max_duration"
    await until("its instance terminated", lambda: h.attempt(aid).released)
    assert not h.fake.alive()
