"""The fault-injecting provider wrapper (test and chaos-bench code) against the fake."""

from __future__ import annotations

import pytest

from skyjobs.exceptions import ProviderError
from skyjobs.pricing.catalog import load_cloud
from skyjobs.providers import base
from skyjobs.providers.base import LaunchRequest
from skyjobs.providers.fake import FakeProvider
from skyjobs.providers.faulty import FaultPlan, FaultyProvider, Scripted


class Crashed(Exception):
    """Stands in for os._exit(137) so the test process survives the 'crash'."""


def crash() -> None:
    raise Crashed


def request(ids: list[str]) -> LaunchRequest:
    offering = next(o for o in load_cloud("local") if o.spot_price is not None)
    from skyjobs.pricing.catalog import Placement

    placement = Placement(offering, True, float(offering.spot_price or 0))
    return LaunchRequest(job_id=1, attempt_id=1, placement=placement, instance_ids=ids,
                         agent_env=[{} for _ in ids])


def wrapped(plan: FaultPlan | None = None) -> tuple[FaultyProvider, FakeProvider]:
    fake = FakeProvider()
    return FaultyProvider(fake, plan or FaultPlan(), crash=crash), fake


async def test_scripted_fault_fires_exactly_once() -> None:
    p, fake = wrapped()
    p.inject("launch", "before")
    with pytest.raises(ProviderError, match="before acting"):
        await p.launch(request(["i-1"]))
    assert fake.instances == {}  # the cloud never saw it
    await p.launch(request(["i-1"]))  # the next call is clean
    assert fake.alive() == ["i-1"]
    assert [(op, mode) for op, mode, _ in p.injected] == [("launch", "before")]


async def test_before_does_not_act_after_acts() -> None:
    p, fake = wrapped()
    await p.launch(request(["i-1", "i-2"]))
    p.inject("terminate", "before")
    with pytest.raises(ProviderError):
        await p.terminate(["i-1"])
    assert sorted(fake.alive()) == ["i-1", "i-2"]
    p.inject("terminate", "after")
    with pytest.raises(ProviderError, match="acted, then failed"):
        await p.terminate(["i-1"])
    assert fake.alive() == ["i-2"]  # it happened; only the answer was lost


async def test_launch_after_boots_instances_then_raises() -> None:
    p, fake = wrapped()
    p.inject("launch", "after")
    with pytest.raises(ProviderError):
        await p.launch(request(["i-9"]))
    assert fake.alive() == ["i-9"]


async def test_scripted_faults_only_match_their_op_and_respect_skip() -> None:
    p, fake = wrapped()
    p.inject("terminate", "before", skip=1)
    await p.launch(request(["i-1", "i-2"]))  # not a terminate: passes
    await p.terminate(["i-1"])  # skipped once
    with pytest.raises(ProviderError):
        await p.terminate(["i-2"])
    await p.terminate(["i-2"])
    assert fake.alive() == []
    assert p.scripted == []


async def test_crash_before_and_after() -> None:
    p, fake = wrapped()
    p.inject("launch", "crash_before")
    with pytest.raises(Crashed):
        await p.launch(request(["i-1"]))
    assert fake.instances == {}
    p.inject("terminate", "crash_after")
    await p.launch(request(["i-1"]))
    with pytest.raises(Crashed):
        await p.terminate(["i-1"])
    assert fake.alive() == []  # the cloud acted before the process died


async def test_invisible_window_hides_fresh_instances() -> None:
    p, fake = wrapped(FaultPlan(invisible_s=60.0))
    await p.launch(request(["i-1"]))
    seen = await p.status(["i-1"])
    assert seen["i-1"].state == base.GONE and seen["i-1"].reason == base.NOT_FOUND
    assert fake.instances["i-1"].state == base.RUNNING
    p.plan.invisible_s = 0.0
    assert (await p.status(["i-1"]))["i-1"].state == base.RUNNING


async def test_random_shares_are_seeded_and_scoped_to_ops() -> None:
    plan = FaultPlan(fail_before=0.5, ops=frozenset({"status"}), seed=7)
    p, _ = wrapped(plan)
    await p.launch(request(["i-1"]))  # launch is not in ops: never fails
    outcomes = []
    for _ in range(40):
        try:
            await p.status(["i-1"])
            outcomes.append(True)
        except ProviderError:
            outcomes.append(False)
    assert 5 < outcomes.count(False) < 35
    q, _ = wrapped(FaultPlan(fail_before=0.5, ops=frozenset({"status"}), seed=7))
    again = []
    for _ in range(40):
        try:
            await q.status(["i-1"])
            again.append(True)
        except ProviderError:
            again.append(False)
    assert again == outcomes


async def test_stall_delays_then_acts() -> None:
    p, fake = wrapped(FaultPlan(stall_s=0.05))
    p.inject("launch", "stall")
    await p.launch(request(["i-1"]))
    assert fake.alive() == ["i-1"]
    assert p.injected[0][:2] == ("launch", "stall")


def test_extra_methods_and_attributes_pass_through() -> None:
    p, fake = wrapped()
    assert p.name == "local"
    assert p.alive() == []  # FakeProvider.alive, not part of the Provider interface
    p.no_capacity.add("local-a")  # reads return the inner object itself
    assert fake.no_capacity == {"local-a"}
    with pytest.raises(AttributeError):
        _ = p.no_such_method


def test_plan_from_json_dict() -> None:
    plan = FaultPlan.from_dict({"fail_after": 0.1, "ops": ["terminate"],
                                "script": [["launch", "crash_before", 2], ["terminate", "after"]]})
    assert plan.ops == frozenset({"terminate"})
    assert plan.script == [Scripted("launch", "crash_before", 2), Scripted("terminate", "after")]
    p, _ = wrapped(plan)
    assert [(s.op, s.mode, s.skip) for s in p.scripted] == [
        ("launch", "crash_before", 2), ("terminate", "after", 0)]
    for bad in ({"nope": 1}, {"ops": ["reboot"]}, {"script": [["launch", "explode"]]},
                {"fail_before": 0.8, "fail_after": 0.8}):
        with pytest.raises(ValueError):
            FaultPlan.from_dict(bad)
