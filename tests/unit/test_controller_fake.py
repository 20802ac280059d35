"""The controller in-process against the in-memory provider; tests play the agents."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.harness import TASK, Harness, submit, until


async def test_capacity_error_moves_to_the_next_cheapest_zone(h: Harness) -> None:
    h.fake.no_capacity = {"local-a"}
    job_id = await submit(h)
    await h.run_to_running(job_id)
    j = await h.job(job_id)
    assert j["placement"] == "local/local-b/local.cpu2/spot"
    assert [a["end_reason"] for a in j["attempt_list"]] == ["no_capacity", None]
    launched = [c for c in h.fake.calls if c[0] == "launch"]
    assert len(launched) == 2


async def test_fatal_provider_error_fails_the_job_fast(h: Harness) -> None:
    h.fake.fatal = "UnauthorizedOperation: no permission to run instances"
    job_id = await submit(h)
    j = await h.wait_status(job_id, "FAILED")
    assert "UnauthorizedOperation" in j["reason"]
    assert len([c for c in h.fake.calls if c[0] == "launch"]) == 1


async def test_no_capacity_anywhere_backs_off_then_fails_no_resource(h: Harness) -> None:
    h.fake.no_capacity = {"local-a", "local-b", "local-c"}
    job_id = await submit(h)
    j = await h.wait_status(job_id, "FAILED_NO_RESOURCE")
    launches = [c for c in h.fake.calls if c[0] == "launch"]
    assert len(launches) == 6  # 3 zones x 2 rounds, then give up
    assert "after 2 rounds" in j["reason"]


async def test_notice_moves_to_recovering_then_old_attempt_drains(h: Harness) -> None:
    job_id = await submit(h)
    aid = await h.run_to_running(job_id)
    notice = {"action": "terminate", "time": "2099-01-01T00:00:00Z"}
    await h.agent(aid, {"kind": "notice", "notice": notice, "rank": 0})
    await until("recovery", lambda: h.ctl.store.sync.get_job(job_id).recovery_count == 1)
    # The replacement is launched during the notice, but may not start run until the old
    # attempt is over (it is still writing its last checkpoint).
    await until("second attempt", lambda: h.ctl.store.sync.get_job(job_id).attempt_count == 2)
    new = await h.current_attempt(job_id)
    await h.agent(new, {"kind": "phase", "phase": "ready", "rank": 0})
    # Absence cannot be waited for: give the runner time to act on "ready", then check it
    # did not let the replacement start while the old attempt is still checkpointing.
    await asyncio.sleep(0.3)
    assert new not in h.ctl.sessions.go
    await h.agent(aid, {"kind": "exit", "exit_code": 143, "noticed": True, "rank": 0})
    await until("go for the new attempt", lambda: new in h.ctl.sessions.go)
    old = h.ctl.store.sync.get_attempt(aid)
    assert (old.end_reason, old.released) == ("preempted", True)
    assert old.instance_ids[0] not in h.fake.alive()


async def test_agent_credentials_are_per_attempt(h: Harness) -> None:
    job_id = await submit(h)
    await h.wait_status(job_id, "PROVISIONING")
    aid = await h.current_attempt(job_id)
    wrong = h.ctl.sessions.agent_token(aid + 1)
    status, _ = await h.agent(aid, {"kind": "phase", "phase": "ready", "rank": 0}, token=wrong)
    assert status == 401
    status, body = await h.agent(aid, {"kind": "phase", "phase": "ready", "rank": 5})
    assert status == 400 and "rank 5" in body["error"]
    status, _ = await h.api("GET", "/api/v1/jobs", token=h.ctl.sessions.agent_token(aid))
    assert status == 401


@pytest.mark.parametrize(("body", "fragment"), [
    ({"task": {"run": 1}}, "run: must be a shell script"),
    ({"task": {"resources": {"accelerators": "B200:8"}}}, "resources.accelerators"),
    ({"task": {"resources": {"cloud": "azure"}}}, "resources.cloud: 'azure' is not offered"),
    ({"task": {"envs": {"K": None}, "run": "x"}}, "envs.K: needs a value"),
    ({"task": TASK, "archive": "***"}, "archive is not valid base64"),
    ({"task": {"run": "x", "resources": {"cloud": "local", "cpus": 2},
               "file_mounts": {"/c": {"source": "s3://b"}}}}, "s3:// buckets need the aws"),
])
async def test_bad_submit_is_a_400_and_stores_nothing(h: Harness, body: dict[str, Any],
                                                      fragment: str) -> None:
    status, reply = await h.api("POST", "/api/v1/jobs", body)
    assert status == 400
    assert fragment in reply["error"]
    assert h.ctl.store.sync.list_jobs() == []


async def test_unauthenticated_and_malformed_requests(h: Harness) -> None:
    status, body = await h.api("GET", "/api/v1/jobs", token="wrong")
    assert (status, body) == (401, {"error": "unauthorized"})
    async with h.http.post(f"{h.ctl.url}/api/v1/jobs", data=b"{not json",
                           headers={"Authorization": f"Bearer {h.ctl.token}"}) as resp:
        assert resp.status == 400
        assert "not valid JSON" in (await resp.json())["error"]
    status, body = await h.api("GET", "/api/v1/jobs/999")
    assert status == 404
    status, body = await h.api("GET", "/api/v1/jobs?status=BOGUS")
    assert status == 400
    status, body = await h.api("POST", "/api/v1/cancel", {"ids": "all"})
    assert status == 400


async def test_secrets_never_appear_in_job_views(h: Harness) -> None:
    task = {**TASK, "secrets": {"API_KEY": "hunter2"}, "envs": {"PLAIN": "visible"}}
    job_id = await submit(h, task)
    await h.wait_status(job_id, "PROVISIONING")
    for path in (f"/api/v1/jobs/{job_id}", "/api/v1/jobs", f"/api/v1/jobs/{job_id}/events"):
        status, body = await h.api("GET", path)
        assert status == 200 and "hunter2" not in str(body)
    aid = await h.current_attempt(job_id)
    headers = {"Authorization": f"Bearer {h.ctl.sessions.agent_token(aid)}"}
    async with h.http.get(f"{h.ctl.url}/agent/v1/attempts/{aid}/task?rank=0",
                          headers=headers) as resp:
        assert (await resp.json())["envs"]["API_KEY"] == "hunter2"  # only the agent gets it


async def test_log_shipping_is_idempotent(h: Harness) -> None:
    job_id = await submit(h)
    await h.wait_status(job_id, "PROVISIONING")
    aid = await h.current_attempt(job_id)
    headers = {"Authorization": f"Bearer {h.ctl.sessions.agent_token(aid)}"}
    url = f"{h.ctl.url}/agent/v1/attempts/{aid}/logs?rank=0"
    for offset, chunk in ((0, b"hello "), (0, b"hello "), (6, b"world\n"), (3, b"lo world\n")):
        async with h.http.post(f"{url}&offset={offset}", data=chunk, headers=headers) as resp:
            size = (await resp.json())["size"]
    assert size == 12
    _, body = await h.api("GET", f"/api/v1/jobs/{job_id}/logs?attempt=1")
    assert body["data"] == "hello world\n"


async def test_a_local_bucket_escaping_its_root_is_rejected(h: Harness) -> None:
    task = {**TASK, "file_mounts": {"/c": {"source": "local://b/../../etc"}}}
    status, reply = await h.api("POST", "/api/v1/jobs", {"task": task})
    assert status == 400 and "invalid bucket name or path" in reply["error"]


DEADLINE_TASK = {"resources": {"cloud": "local", "cpus": 2, "use_spot": True,
                               "job_recovery": {"deadline_hours": 1.0,
                                                "expected_runtime_hours": 0.98}},
                 "run": "x"}


@pytest.fixture
def spot_again(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """Switch: once on, the slack allows spot again (the decision itself is the policy's,
    tested in test_policy). Requested before `h`, so the controller checks every 0.1 s."""
    from skyjobs.controller import runner
    from skyjobs.recovery.policy import Decision

    switch = {"on": False}
    monkeypatch.setenv("SKYJOBS_DEADLINE_CHECK_INTERVAL", "0.1")
    monkeypatch.setattr(runner, "deadline_decision", lambda ctx, candidates=None: Decision(
        switch["on"], "slack allows spot" if switch["on"] else "stay"))
    return switch


async def start_on_demand(h: Harness) -> tuple[int, int]:
    job_id = await submit(h, DEADLINE_TASK)
    old = await h.run_to_running(job_id)
    j = await h.job(job_id)
    assert j["placement"].endswith("/on-demand"), j  # too little slack for spot at first
    return job_id, old


async def test_deadline_job_moves_back_to_spot_without_losing_its_run(
        spot_again: dict[str, bool], h: Harness) -> None:
    ctl, fake = h.ctl, h.fake
    job_id, old = await start_on_demand(h)
    spot_again["on"] = True
    await until("a spot replacement", lambda: ctl.store.sync.get_job(
        job_id).current_attempt != old)
    new = await h.current_attempt(job_id)
    assert ctl.store.sync.get_attempt(new).use_spot
    await h.agent(new, {"kind": "phase", "phase": "ready", "rank": 0})
    await until("the old attempt asked to drain", lambda: old in ctl.sessions.drain)
    assert new not in ctl.sessions.go  # not before the old attempt has checkpointed
    await h.agent(old, {"kind": "exit", "exit_code": 143, "rank": 0})
    await until("go", lambda: new in ctl.sessions.go)
    await h.agent(new, {"kind": "phase", "phase": "running", "rank": 0})
    j = await h.wait_status(job_id, "RUNNING")
    assert [a["end_reason"] for a in j["attempt_list"]] == ["migrated", None]
    assert j["recoveries"] == 0 and j["placement"].endswith("/spot")
    assert ctl.store.sync.get_attempt(old).instance_ids[0] not in fake.alive()
    reasons = [e["reason"] for e in ctl.store.sync.events(job_id)]
    assert any(r and r.startswith("moving back to spot") for r in reasons)


async def test_migration_without_spot_capacity_stays_on_demand(
        spot_again: dict[str, bool], h: Harness) -> None:
    job_id, old = await start_on_demand(h)
    h.fake.no_capacity = {"local-a", "local-b", "local-c"}
    spot_again["on"] = True
    await until("a migration attempt", lambda: any(
        (e["reason"] or "").startswith("no spot capacity to move to")
        for e in h.ctl.store.sync.events(job_id)))
    j = await h.wait_status(job_id, "RUNNING", "FAILED_NO_RESOURCE")
    assert j["status"] == "RUNNING"
    assert h.ctl.store.sync.get_job(job_id).current_attempt == old
    assert old not in h.ctl.sessions.drain and h.fake.alive() == h.ctl.store.sync.get_attempt(
        old).instance_ids


async def test_job_that_finishes_while_moving_succeeds(spot_again: dict[str, bool],
                                                      h: Harness) -> None:
    job_id, old = await start_on_demand(h)
    spot_again["on"] = True
    await until("a spot replacement", lambda: h.ctl.store.sync.get_job(
        job_id).current_attempt != old)
    await h.agent(old, {"kind": "exit", "exit_code": 0, "rank": 0})
    await h.wait_status(job_id, "SUCCEEDED")
    await until("nothing left running", lambda: not h.fake.alive())
    await until("every attempt released", lambda: all(
        a.released for a in h.ctl.store.sync.attempts_of(job_id)))
    ends = [a["end_reason"] for a in (await h.job(job_id))["attempt_list"]]
    assert ends[0] == "succeeded" and ends[1] in ("superseded", "no_capacity")


SLACK_TASK = {"resources": {"cloud": "local", "cpus": 2, "use_spot": True,
                            "job_recovery": {"deadline_hours": 10.0,
                                             "expected_runtime_hours": 2.0}},
              "run": "x"}


@pytest.fixture
def cheaper_zone(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Switch: once set to a zone, the policy says a running spot job should move there
    (the decision itself is move_decision's, tested in test_policy)."""
    from skyjobs.controller import runner
    from skyjobs.recovery.policy import Move

    switch: dict[str, Any] = {"zone": None}
    monkeypatch.setenv("SKYJOBS_DEADLINE_CHECK_INTERVAL", "0.1")

    def decide(candidates: Any, ctx: Any, running_s: float) -> Move:
        assert ctx.running and ctx.last is not None and ctx.last.use_spot
        for c in candidates:
            if c.placement.use_spot and c.placement.zone == switch["zone"]:
                return Move(c.placement, f"{switch['zone']} is cheaper")
        return Move(None, "stay")

    monkeypatch.setattr(runner, "move_decision", decide)
    return switch


async def test_a_running_spot_job_moves_to_a_cheaper_zone_without_losing_its_run(
        cheaper_zone: dict[str, Any], h: Harness) -> None:
    ctl = h.ctl
    job_id = await submit(h, SLACK_TASK)
    old = await h.run_to_running(job_id)
    assert (await h.job(job_id))["placement"] == "local/local-a/local.cpu2/spot"
    cheaper_zone["zone"] = "local-c"  # not the ranking's next pick (local-b): the policy's
    await until("a replacement", lambda: ctl.store.sync.get_job(job_id).current_attempt != old)
    new = await h.current_attempt(job_id)
    assert ctl.store.sync.get_attempt(new).zone == "local-c"
    cheaper_zone["zone"] = None
    await h.agent(new, {"kind": "phase", "phase": "ready", "rank": 0})
    await until("the old attempt asked to drain", lambda: old in ctl.sessions.drain)
    assert new not in ctl.sessions.go  # two attempts never run at once
    await h.agent(old, {"kind": "exit", "exit_code": 143, "rank": 0})
    await until("go", lambda: new in ctl.sessions.go)
    await h.agent(new, {"kind": "phase", "phase": "running", "rank": 0})
    j = await h.wait_status(job_id, "RUNNING")
    assert [a["end_reason"] for a in j["attempt_list"]] == ["migrated", None]
    assert j["recoveries"] == 0 and j["placement"] == "local/local-c/local.cpu2/spot"
    assert any((e["reason"] or "").startswith("moving to a cheaper zone: local-c is cheaper")
               for e in ctl.store.sync.events(job_id))


async def test_a_move_to_a_zone_without_capacity_stays_put(
        cheaper_zone: dict[str, Any], h: Harness) -> None:
    job_id = await submit(h, SLACK_TASK)
    old = await h.run_to_running(job_id)
    h.fake.no_capacity = {"local-c"}
    cheaper_zone["zone"] = "local-c"
    await until("the move given up", lambda: any(
        (e["reason"] or "").startswith("the cheaper zone has no capacity now")
        for e in h.ctl.store.sync.events(job_id)))
    cheaper_zone["zone"] = None
    j = await h.wait_status(job_id, "RUNNING")
    assert h.ctl.store.sync.get_job(job_id).current_attempt == old
    assert j["placement"] == "local/local-a/local.cpu2/spot"
    # It never tried the ranking's other zones instead.
    assert {a["placement"] for a in j["attempt_list"]} <= {
        "local/local-a/local.cpu2/spot", "local/local-c/local.cpu2/spot"}
    assert old not in h.ctl.sessions.drain
