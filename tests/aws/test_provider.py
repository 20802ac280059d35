"""AwsProvider against moto: launch, idempotency, status mapping and batching, errors,
termination, the orphan sweep and live spot prices."""

from __future__ import annotations

import time
from typing import Any

import pytest

pytest.importorskip("aioboto3", reason="the AWS tests need aioboto3 (extra: aws)")
pytest.importorskip("moto.server", reason="the AWS tests need moto[server] (extra: test)")

from moto.ec2.models.instances import StateReason  # noqa: E402

from skyjobs.exceptions import CapacityError, FatalProviderError, ProviderError  # noqa: E402
from skyjobs.pricing.catalog import Offering, Placement  # noqa: E402
from skyjobs.providers import base  # noqa: E402
from skyjobs.providers.aws import AwsConfig, AwsProvider, client_token  # noqa: E402
from skyjobs.providers.aws_userdata import parse_agent_env  # noqa: E402
from skyjobs.providers.base import LaunchRequest  # noqa: E402
from tests.aws.conftest import AMI, REGIONS  # noqa: E402


def request(zone: str = "us-east-1a", nodes: int = 2, job: int = 7, attempt: int = 2,
            spot: bool = True, ctl: str = "sjab12cd", url: str = "http://10.0.0.5:8765",
            itype: str = "m5.large") -> LaunchRequest:
    region = zone[:-1]
    offering = Offering("aws", region, zone, itype, None, 0, 2, 8, 0.096, 0.03, "", "")
    ids = [f"{ctl}-{job}-{attempt}-{r}" for r in range(nodes)]
    env = [{"SKYJOBS_CONTROLLER_URL": url, "SKYJOBS_ATTEMPT_ID": "31",
            "SKYJOBS_AGENT_TOKEN": "tok", "SKYJOBS_NODE_RANK": str(r)} for r in range(nodes)]
    return LaunchRequest(job, 31, Placement(offering, spot, 0.03), ids, env,
                         {"skyjobs-controller": ctl, "skyjobs-job": str(job),
                          "skyjobs-attempt": str(attempt)})


def tags(inst: Any) -> dict[str, str]:
    return {t["key"]: t["value"] for t in inst.get_tags()}


async def test_launch_tags_token_userdata_and_market(provider: Any, moto: Any) -> None:
    req = request(nodes=2)
    infos = await provider.launch(req)
    assert [i.instance_id for i in infos] == req.instance_ids
    for rank, our_id in enumerate(req.instance_ids):
        [inst] = moto.by_tag("us-east-1", our_id)
        assert tags(inst) == {**req.tags, "skyjobs-instance": our_id, "skyjobs-rank": str(rank),
                              "Name": our_id, "skyjobs-attempt-id": "31"}
        assert inst.client_token == client_token(our_id)
        assert inst.availability_zone == "us-east-1a"
        assert inst.image_id == AMI
        assert inst.lifecycle == "spot"
        assert inst.metadata_options.http_tokens == "required"  # IMDSv2 only
        env = parse_agent_env(inst.user_data.decode())
        assert env == {**req.agent_env[rank], "SKYJOBS_METADATA_URL": "http://169.254.169.254"}
        assert "/opt/skyjobs/agent.pyz" in inst.user_data.decode()  # served, not pip
    on_demand = request(nodes=1, job=8, spot=False)
    await provider.launch(on_demand)
    assert moto.by_tag("us-east-1", on_demand.instance_ids[0])[0].lifecycle is None


async def test_replayed_launch_makes_one_instance_per_node(provider: Any, moto: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    req = request(nodes=2)
    await provider.launch(req)
    # The controller died between the API call and its store write: the launch is replayed.
    again = await provider.launch(req)
    assert [i.state for i in again] == [base.RUNNING, base.RUNNING]
    # Describe may not show a fresh instance yet (EC2 is eventually consistent): the
    # ClientToken alone must then prevent a second instance, even when a restarted
    # controller sends other parameters (a new URL in the agent env).
    real_find = provider._find
    hidden = {"calls": 0}

    async def stale_find(region: str, ids: list[str]) -> dict[str, Any]:
        hidden["calls"] += 1
        return {} if hidden["calls"] == 1 else await real_find(region, ids)

    monkeypatch.setattr(provider, "_find", stale_find)
    assert provider.calls["run_instances"] == 2
    await provider.launch(req)
    assert provider.calls["run_instances"] == 4  # sent again, answered by the token
    hidden["calls"] = 0
    moved = request(nodes=2, url="http://10.0.0.6:9999")
    infos = await provider.launch(moved)  # IdempotentParameterMismatch, then found
    assert provider.calls["run_instances"] == 6
    assert {i.instance_id for i in infos} == set(req.instance_ids)
    for our_id in req.instance_ids:
        assert len(moto.by_tag("us-east-1", our_id)) == 1


async def test_status_maps_ec2_states_and_reasons(provider: Any, moto: Any) -> None:
    req = request(nodes=4)
    await provider.launch(req)
    ids = req.instance_ids
    insts = [moto.by_tag("us-east-1", i)[0] for i in ids]
    moto.spot_terminate(insts[1])
    await provider.terminate([ids[2]])
    insts[3].terminate()
    insts[3].state_reason = StateReason("Client.InstanceInitiatedShutdown: shutdown",
                                        "Client.InstanceInitiatedShutdown")
    got = await provider.status([*ids, "sjab12cd-99-1-0"])
    assert got[ids[0]].state == base.RUNNING and got[ids[0]].ip == insts[0].private_ip
    assert (got[ids[1]].state, got[ids[1]].reason) == (base.GONE, base.PREEMPTED)
    assert (got[ids[2]].state, got[ids[2]].reason) == (base.GONE, base.TERMINATED)
    assert (got[ids[3]].state, got[ids[3]].reason) == (base.GONE, base.LOST)
    assert got["sjab12cd-99-1-0"] == base.InstanceInfo("sjab12cd-99-1-0", base.GONE,
                                                       base.NOT_FOUND)


async def test_status_is_batched_per_region(moto: Any, provider: Any) -> None:
    east, west = request(nodes=3), request(zone="us-west-2a", nodes=2, job=9)
    await provider.launch(east)
    await provider.launch(west)
    # A restarted controller: a fresh provider that has never seen these instances.
    fresh = AwsProvider(AwsConfig(image_ids={"": [AMI]}, endpoint_url=moto.url),
                        regions=REGIONS)
    try:
        ids = [*east.instance_ids, *west.instance_ids]
        got = await fresh.status(ids)
        assert all(got[i].state == base.RUNNING for i in ids)
        assert fresh.calls["describe_instances"] == len(REGIONS)
        # Where each id lives is learnt: the next poll asks only those regions.
        fresh.calls.clear()
        await fresh.status(east.instance_ids)
        assert fresh.calls["describe_instances"] == 1
        # Many jobs: ids go 200 to a filter, not one call per job.
        fresh.calls.clear()
        many = [f"sjab12cd-{n}-1-0" for n in range(1000, 1450)]
        got = await fresh.status(many)
        assert {i.reason for i in got.values()} == {base.NOT_FOUND}
        assert fresh.calls["describe_instances"] == 3 * len(REGIONS)
    finally:
        await fresh.close()


@pytest.mark.parametrize(("code", "error"), [
    ("InsufficientInstanceCapacity", CapacityError),
    ("SpotMaxPriceTooLow", CapacityError),
    ("MaxSpotInstanceCountExceeded", CapacityError),
    ("InsufficientFreeAddressesInSubnet", CapacityError),
    ("UnauthorizedOperation", FatalProviderError),
    ("InvalidAMIID.NotFound", FatalProviderError),
    ("VcpuLimitExceeded", FatalProviderError),
    ("InternalError", ProviderError),
])
async def test_launch_errors_are_classified_by_code(provider: Any, moto: Any, code: str,
                                                    error: type[Exception]) -> None:
    moto.failing["us-east-1b"] = code
    with pytest.raises(error) as caught:
        await provider.launch(request(zone="us-east-1b", nodes=1))
    assert type(caught.value) is error
    assert code in str(caught.value)
    assert not moto.instances("us-east-1")


async def test_missing_credentials_are_fatal(moto: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask a real IMDS
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    p = AwsProvider(AwsConfig(image_ids={"": [AMI]}), regions=REGIONS)
    try:
        with pytest.raises(FatalProviderError, match="credentials"):
            await p.launch(request(nodes=1))
    finally:
        await p.close()


async def test_missing_image_is_fatal_before_any_launch(moto: Any) -> None:
    p = AwsProvider(AwsConfig(image_ids={"us-west-2": [AMI]}), regions=REGIONS)
    try:
        with pytest.raises(FatalProviderError, match="SKYJOBS_AWS_IMAGE_ID"):
            await p.launch(request(nodes=1))
        assert p.calls["run_instances"] == 0
    finally:
        await p.close()


async def test_terminate_is_idempotent(provider: Any, moto: Any) -> None:
    req = request(nodes=2)
    await provider.launch(req)
    unknown = "sjab12cd-404-1-0"
    await provider.terminate([*req.instance_ids, unknown])
    await provider.terminate([*req.instance_ids, unknown])
    await provider.terminate([])
    assert {i._state.name for i in moto.instances("us-east-1")} == {"terminated"}
    assert provider.calls["terminate_instances"] == 1  # nothing left to kill the 2nd time


async def test_list_owned_finds_live_instances_of_one_controller(provider: Any) -> None:
    mine = request(nodes=2)
    west = request(zone="us-west-2a", nodes=1, job=9)
    other = request(nodes=1, ctl="sjffffff")
    for req in (mine, west, other):
        await provider.launch(req)
    await provider.terminate([mine.instance_ids[1]])
    owned = await provider.list_owned("sjab12cd")
    assert owned == sorted([mine.instance_ids[0], west.instance_ids[0]])


async def test_spot_prices_latest_per_key(provider: Any, moto: Any) -> None:
    now = time.time()
    moto.prices[("us-east-1a", "m5.large")] = (0.0312, now - 30)
    moto.prices[("us-east-1b", "m5.large")] = (0.0401, now - 10)
    moto.prices[("us-west-2a", "m5.large")] = (0.0287, now - 5)
    moto.prices[("us-west-2a", "c5.large")] = (0.0222, now - 5)  # not asked for
    keys = [("us-east-1", "us-east-1a", "m5.large"), ("us-west-2", "us-west-2a", "m5.large"),
            ("us-east-1", "us-east-1c", "m5.large")]
    rows = await provider.spot_prices(keys)
    assert [(r[:4]) for r in rows] == [("us-east-1", "us-east-1a", "m5.large", 0.0312),
                                       ("us-west-2", "us-west-2a", "m5.large", 0.0287)]
    assert abs(rows[0][4] - (now - 30)) < 1.5
    assert provider.calls["describe_spot_price_history"] == 2  # one per region


async def test_preempt_is_not_an_aws_operation(provider: Any) -> None:
    # Spot interruptions come from AWS (tests/aws simulates them in the moto harness).
    assert not isinstance(provider, base.SimulatedMarket)
    assert isinstance(provider, base.PriceSource) and isinstance(provider, base.OwnedLister)
