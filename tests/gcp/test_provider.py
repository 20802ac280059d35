"""The GCP provider through the real google-cloud-compute client against the fake Compute
REST API on 127.0.0.1: launches, replays, error classes, status, terminate, sweep."""

from __future__ import annotations

from typing import Any

import pytest

from skyjobs.exceptions import CapacityError, FatalProviderError, ProviderError, SpecError
from skyjobs.pricing.catalog import Offering, Placement
from skyjobs.providers import base
from skyjobs.providers.base import LaunchRequest
from skyjobs.providers.gcp import compute
from tests.gcp.conftest import MACHINE

PREFIX = "sjtest01"


def request(nodes: int = 1, zone: str = "us-central1-a", spot: bool = True, job: int = 7,
            attempt: int = 1, url: str = "http://10.0.0.5:8765") -> LaunchRequest:
    offering = Offering("gcp", zone.rsplit("-", 1)[0], zone, MACHINE, None, 0, 4, 16, 0.19,
                        0.03, "2026-11-01", "test")
    ids = [f"{PREFIX}-{job}-{attempt}-{r}" for r in range(nodes)]
    env = [{"SKYJOBS_CONTROLLER_URL": url, "SKYJOBS_ATTEMPT_ID": str(attempt),
            "SKYJOBS_AGENT_TOKEN": "tok", "SKYJOBS_NODE_RANK": str(r)} for r in range(nodes)]
    return LaunchRequest(job_id=job, attempt_id=attempt, placement=Placement(offering, spot, 0.03),
                         instance_ids=ids, agent_env=env,
                         tags={"skyjobs-controller": PREFIX, "skyjobs-job": str(job)})


async def test_launch_inserts_one_spot_vm_per_node_with_its_request_id(provider: Any,
                                                                       gce: Any) -> None:
    req = request(nodes=2)
    infos = await provider.launch(req)
    assert [i.instance_id for i in infos] == req.instance_ids
    assert gce.calls["insert"] == 2
    assert sorted(r for *_, r in gce.inserts) == sorted(compute.request_id(i)
                                                          for i in req.instance_ids)
    inst = gce.instance(req.instance_ids[1])
    assert inst["scheduling"]["provisioningModel"] == "SPOT"
    assert inst["scheduling"]["instanceTerminationAction"] == "DELETE"
    assert inst["labels"]["skyjobs-controller"] == PREFIX
    assert inst["labels"]["skyjobs-rank"] == "1"
    status = await provider.status(req.instance_ids)
    assert {s.state for s in status.values()} == {base.RUNNING}
    ips = [s.ip for s in status.values()]
    assert all(ips) and len(set(ips)) == 2  # SKYPILOT_NODE_IPS comes from these
    assert {zone for _, zone, *_ in gce.inserts} == {"us-central1-a"}  # one zone per job


async def test_replayed_launch_makes_one_instance_per_node(provider: Any, gce: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    req = request(nodes=2)
    await provider.launch(req)
    # The controller died between the insert and its store write: the launch is replayed,
    # by a restarted controller with another URL in the agent env.
    again = await provider.launch(request(nodes=2, url="http://10.0.0.6:9999"))
    assert [i.instance_id for i in again] == req.instance_ids
    assert gce.calls["insert"] == 4  # sent again, answered by the request id
    # Long after, GCE has forgotten the request id: the name clash (409) says the same.
    monkeypatch.setattr(compute, "request_id", lambda iid, action="insert": "0" * 8 + iid[-4:])
    later = await provider.launch(req)
    assert [i.state for i in later] == [base.RUNNING, base.RUNNING]
    assert len(gce.instances()) == 2


async def test_a_replay_after_a_timed_out_insert_finds_the_first_one(gce: Any) -> None:
    from skyjobs.providers.gcp.config import GcpConfig
    from tests.gcp.conftest import PROJECT

    impatient = compute.GcpProvider(GcpConfig(endpoint_url=gce.url, anonymous=True,
                                              project=PROJECT, call_timeout=0.5))
    try:
        # GCE carries each insert out but its answer comes too late: every try times out
        # (each retry a replay with the same request id), then the launch is retried.
        gce.stall("insert", 1.0, after=True)
        req = request()
        with pytest.raises(ProviderError):
            await impatient.launch(req)
        assert gce.calls["insert"] == compute.RETRIES
        gce.stall("insert", 0)
        await impatient.launch(req)
        assert len(gce.instances()) == 1
    finally:
        await impatient.close()


async def test_running_operations_are_waited_for_with_our_endpoint(provider: Any,
                                                                   gce: Any) -> None:
    gce.op_delay = 1.0  # GCE answers RUNNING at first, as it usually does
    try:
        await provider.launch(request())
    finally:
        gce.op_delay = 0.0
    assert gce.calls["operations.wait"] >= 1


@pytest.mark.parametrize(("code", "via", "cls"), [
    ("ZONE_RESOURCE_POOL_EXHAUSTED", "operation", CapacityError),
    ("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "operation", CapacityError),
    ("UNSUPPORTED_OPERATION", "operation", CapacityError),
    ("QUOTA_EXCEEDED", "operation", CapacityError),
    ("quotaExceeded", "http", CapacityError),
    ("forbidden", "http", FatalProviderError),
])
async def test_launch_errors_are_classified_by_code(provider: Any, gce: Any, code: str,
                                                    via: str, cls: type[Exception]) -> None:
    gce.fail_zone("us-central1-a", code, via=via)
    with pytest.raises(cls) as err:
        await provider.launch(request())
    assert type(err.value) is cls
    assert gce.instances() == []


async def test_transient_errors_are_retried_with_backoff(provider: Any, gce: Any) -> None:
    gce.fail_next("insert", 503, 2)
    await provider.launch(request())
    assert gce.calls["insert"] == 3
    gce.fail_next("aggregatedList", 429, 5)
    with pytest.raises(ProviderError) as err:
        await provider.status(request().instance_ids)
    assert type(err.value) is ProviderError  # retry later, never fatal


async def test_status_tells_preemption_from_a_user_delete(provider: Any, gce: Any) -> None:
    req = request(nodes=3)
    await provider.launch(req)
    a, b, c = req.instance_ids
    gce.preempt(a, notice_s=0)
    gce.user_delete(b)
    gce.reclaim(c)  # no notice at all
    await _until_gone(provider, req.instance_ids)
    status = await provider.status(req.instance_ids)
    assert status[a] == base.InstanceInfo(a, base.GONE, base.PREEMPTED)
    assert status[c] == base.InstanceInfo(c, base.GONE, base.PREEMPTED)
    # Deleted by a person: gone, but nothing of the cloud took it away.
    assert status[b] == base.InstanceInfo(b, base.GONE, base.NOT_FOUND)


async def _until_gone(provider: Any, ids: list[str], within: float = 10.0) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status = await provider.status(ids)
        if all(s.state == base.GONE for s in status.values()):
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"not all gone: {status}")


async def test_a_stopping_instance_is_not_gone_yet(provider: Any, gce: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    req = request()
    iid = req.instance_ids[0]
    await provider.launch(req)
    monkeypatch.setattr(gce, "delete_delay", 3.0)  # a VM takes a while to shut down
    gce.preempt(iid, notice_s=1.0)  # the 30 s window, shortened
    assert (await provider.status([iid]))[iid].state == base.RUNNING  # through its notice
    await _until(provider, iid, lambda s: s.state != base.RUNNING)
    # Fencing: a replacement may not start while the old VM is still stopping.
    assert (await provider.status([iid]))[iid] == base.InstanceInfo(iid, base.STOPPING,
                                                                   base.PREEMPTED)
    await _until(provider, iid, lambda s: s.state == base.GONE)
    assert (await provider.status([iid]))[iid].reason == base.PREEMPTED


async def _until(provider: Any, iid: str, check: Any, within: float = 10.0) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check((await provider.status([iid]))[iid]):
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"{iid}: condition not met within {within}s")


async def test_status_is_one_call_for_every_zone(provider: Any, gce: Any) -> None:
    reqs = [request(zone=z, job=j) for j, z in enumerate(
        ("us-central1-a", "us-central1-b", "us-east1-b"), start=1)]
    for req in reqs:
        await provider.launch(req)
    ids = [i for r in reqs for i in r.instance_ids]
    before = sum(gce.calls.values())
    status = await provider.status(ids)
    assert {s.state for s in status.values()} == {base.RUNNING}
    assert sum(gce.calls.values()) - before == 1  # one aggregatedList, nothing else


async def test_terminate_is_idempotent_and_the_sweep_sees_only_ours(provider: Any,
                                                                    gce: Any) -> None:
    req = request(nodes=2)
    await provider.launch(req)
    other = request(job=9)
    other = LaunchRequest(**{**other.__dict__, "instance_ids": ["sjother1-9-1-0"],
                             "tags": {"skyjobs-controller": "sjother1"}})
    await provider.launch(other)
    assert await provider.list_owned(PREFIX) == sorted(req.instance_ids)
    await provider.terminate(req.instance_ids)
    await provider.terminate(req.instance_ids)  # again: fine
    await provider.terminate([f"{PREFIX}-99-1-0"])  # never created: fine
    await _until_gone(provider, req.instance_ids)
    assert await provider.list_owned(PREFIX) == []
    assert await provider.list_owned("sjother1") == ["sjother1-9-1-0"]


async def test_buckets_are_checked_through_the_storage_api(provider: Any, gcs: Any) -> None:
    gcs.create_bucket("ckpt-ok")
    await provider.check_bucket("gs://ckpt-ok/run1")
    assert gcs.objects("ckpt-ok") == {}  # the probe object is gone again
    with pytest.raises(SpecError, match="does not exist"):
        await provider.check_bucket("gs://no-such-bucket/x")
    gcs.create_bucket("ckpt-ro")
    gcs.deny("ckpt-ro", "write")
    with pytest.raises(SpecError, match="cannot read and write"):
        await provider.check_bucket("gs://ckpt-ro")


async def test_no_credentials_is_one_line_at_start(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Any) -> None:
    from skyjobs.exceptions import ConfigError
    from skyjobs.providers.gcp.config import GcpConfig

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    p = compute.GcpProvider(GcpConfig(project="p"))
    try:
        with pytest.raises(ConfigError, match="gcp: .*credentials"):
            await p.prepare()
    finally:
        await p.close()


async def test_status_follows_every_page(provider: Any, gce: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    req = request(nodes=5)
    await provider.launch(req)
    monkeypatch.setattr(compute, "PAGE_SIZE", 2)  # GCE's is 500: five VMs make three pages
    before = gce.calls["aggregatedList"]
    status = await provider.status(req.instance_ids)
    assert {s.state for s in status.values()} == {base.RUNNING}
    assert gce.calls["aggregatedList"] - before == 3
