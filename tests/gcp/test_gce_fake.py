"""The GCE fake answers the REAL google-cloud-compute REST client as Compute Engine does.

Each test drives the fake through ``compute_v1`` (or raw HTTP where the wire format itself
is the point) and pins what the client sends and how it surfaces GCE's answers, so the GCP
provider can rely on both.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from skyjobs.providers.aws_userdata import ENV_END
from tests.gcp.gce_fake import GceFake, GceMetadata
from tests.gcp.gce_harness import Fleet

PROJECT = "skyjobs-test"
ZONE = "us-central1-a"


@pytest.fixture
def fake() -> Iterator[GceFake]:
    with GceFake() as f:
        yield f


@pytest.fixture
def instances(fake: GceFake) -> Iterator[compute_v1.InstancesClient]:
    with compute_v1.InstancesClient(transport="rest", credentials=AnonymousCredentials(),
                                    client_options=fake.client_options) as client:
        yield client


@pytest.fixture
def operations(fake: GceFake) -> Iterator[compute_v1.ZoneOperationsClient]:
    with compute_v1.ZoneOperationsClient(transport="rest", credentials=AnonymousCredentials(),
                                         client_options=fake.client_options) as client:
        yield client


def env_script(env: dict[str, str]) -> str:
    """A startup script with the agent env block our bootstrap writes."""
    lines = "\n".join(f"{k}='{v}'" for k, v in sorted(env.items()))
    return f"#!/bin/bash\ncat > /etc/skyjobs/agent.env <<'{ENV_END}'\n{lines}\n{ENV_END}\n"


def body(name: str, zone: str = ZONE, *, labels: dict[str, str] | None = None,
         script: str = "#!/bin/bash\ntrue\n", action: str = "DELETE",
         **scheduling: Any) -> compute_v1.Instance:
    return compute_v1.Instance(
        name=name, machine_type=f"zones/{zone}/machineTypes/n1-standard-4",
        labels=labels if labels is not None else {"skyjobs-job": "j1"},
        metadata=compute_v1.Metadata(items=[compute_v1.Items(key="startup-script",
                                                             value=script)]),
        scheduling=compute_v1.Scheduling(provisioning_model="SPOT",
                                         instance_termination_action=action, **scheduling),
        disks=[compute_v1.AttachedDisk(
            boot=True, auto_delete=True, initialize_params=compute_v1.AttachedDiskInitializeParams(
                disk_size_gb=50, source_image="projects/debian-cloud/global/images/family/"
                                              "debian-12"))],
        network_interfaces=[compute_v1.NetworkInterface(network="global/networks/default")])


def insert(client: compute_v1.InstancesClient, name: str, zone: str = ZONE,
           request_id: str | None = None, **kw: Any) -> Any:
    req = compute_v1.InsertInstanceRequest(project=PROJECT, zone=zone,
                                           instance_resource=body(name, zone, **kw))
    if request_id is not None:
        req.request_id = request_id
    return client.insert(request=req)


def raw(fake: GceFake, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{fake.url}/compute/v1/projects/{PROJECT}/{path}",
                                timeout=5) as resp:
        return dict(json.loads(resp.read()))


def wait_until(check: Any, timeout: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"not true within {timeout}s")


# --- the client's wire format ----------------------------------------------------------------


def test_client_keeps_http_scheme_and_polls_operations_elsewhere(
        fake: GceFake, instances: compute_v1.InstancesClient) -> None:
    assert instances.transport._host == fake.url  # the http:// of api_endpoint is kept
    op = insert(instances, "n1", request_id="r-1")
    assert fake.inserts[-1][1:] == (ZONE, "n1", "r-1")  # requestId arrived as a query param
    # The ExtendedOperation polls through a ZoneOperationsClient built without our
    # client_options: a RUNNING operation's result() would go to Google, not to the fake.
    ops_client = instances.transport._zone_operations_client
    assert ops_client.transport._host == "https://compute.googleapis.com"
    assert op.done()  # the fake's default operation is DONE: nothing to poll
    with compute_v1.InstancesClient(
            transport="rest", credentials=AnonymousCredentials(),
            client_options={"api_endpoint": fake.url.removeprefix("http://")}) as no_scheme:
        with pytest.raises(requests.exceptions.SSLError):  # no scheme: https:// is assumed
            no_scheme.get(project=PROJECT, zone=ZONE, instance="n1", timeout=2)


def test_instance_resource_as_gce_returns_it(fake: GceFake,
                                             instances: compute_v1.InstancesClient) -> None:
    insert(instances, "n1", labels={"skyjobs-job": "j1", "skyjobs-rank": "0"})
    insert(instances, "n2")
    data = raw(fake, f"zones/{ZONE}/instances/n1")
    assert isinstance(data["id"], str) and data["id"].isdigit()  # int64 as a string
    assert data["zone"].endswith(f"/projects/{PROJECT}/zones/{ZONE}")
    assert data["machineType"] == ("https://www.googleapis.com/compute/v1/projects/"
                                   f"{PROJECT}/zones/{ZONE}/machineTypes/n1-standard-4")
    assert data["disks"][0]["diskSizeGb"] == "50"
    assert data["scheduling"] == {"provisioningModel": "SPOT",
                                  "instanceTerminationAction": "DELETE",
                                  "onHostMaintenance": "TERMINATE", "automaticRestart": False,
                                  "preemptible": True}
    assert data["metadata"]["fingerprint"] and data["metadata"]["items"][0]["key"] \
        == "startup-script"
    assert data["creationTimestamp"].endswith("-07:00")
    inst = instances.get(project=PROJECT, zone=ZONE, instance="n1")
    other = instances.get(project=PROJECT, zone=ZONE, instance="n2")
    assert inst.status == "RUNNING" and inst.labels["skyjobs-rank"] == "0"
    assert inst.network_interfaces[0].network_i_p.startswith("10.")
    assert inst.network_interfaces[0].network_i_p != other.network_interfaces[0].network_i_p
    assert inst.last_start_timestamp and not inst.last_stop_timestamp
    with pytest.raises(gexc.NotFound) as err:
        instances.get(project=PROJECT, zone=ZONE, instance="missing")
    assert err.value.errors[0]["reason"] == "notFound"


def test_status_goes_provisioning_staging_running() -> None:
    with GceFake(boot_delay=0.4) as fake, compute_v1.InstancesClient(
            transport="rest", credentials=AnonymousCredentials(),
            client_options=fake.client_options) as client:
        insert(client, "n1")
        seen: list[str] = []
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and seen[-1:] != ["RUNNING"]:
            status = client.get(project=PROJECT, zone=ZONE, instance="n1").status
            if seen[-1:] != [status]:
                seen.append(status)
            time.sleep(0.02)
        assert seen == ["PROVISIONING", "STAGING", "RUNNING"]


# --- insert ----------------------------------------------------------------------------------


def test_request_id_replay_returns_same_operation_and_one_instance(
        fake: GceFake, instances: compute_v1.InstancesClient) -> None:
    first = insert(instances, "n1", request_id="11111111-1111-4111-8111-111111111111")
    again = insert(instances, "n1", request_id="11111111-1111-4111-8111-111111111111")
    assert again.name == first.name and again.id == first.id
    assert first.operation_type == "insert" and first.target_link.endswith("/instances/n1")
    assert [i["name"] for i in fake.instances()] == ["n1"]
    assert fake.calls["insert"] == 2 and len(fake.inserts) == 2  # replays are counted


def test_name_clash_with_another_request_id_is_409(fake: GceFake,
                                                   instances: compute_v1.InstancesClient) -> None:
    insert(instances, "n1", request_id="r-1")
    with pytest.raises(gexc.Conflict) as err:
        insert(instances, "n1", request_id="r-2")
    assert err.value.code == 409
    assert err.value.errors == [{
        "message": f"The resource 'projects/{PROJECT}/zones/{ZONE}/instances/n1' already exists",
        "domain": "global", "reason": "alreadyExists"}]
    insert(instances, "n1", zone="us-central1-b", request_id="r-3")  # names are per zone
    assert len(fake.instances()) == 2


def test_timed_out_insert_is_replayed_with_its_request_id(
        fake: GceFake, instances: compute_v1.InstancesClient) -> None:
    # GCE did the insert but the answer came too late: the client sees a plain requests
    # timeout (insert has no retry), and the replay must not create a second VM.
    fake.stall("insert", 0.5, after=True)
    req = compute_v1.InsertInstanceRequest(project=PROJECT, zone=ZONE,
                                           instance_resource=body("n1"), request_id="r-1")
    with pytest.raises(requests.exceptions.ReadTimeout):
        instances.insert(request=req, timeout=0.2)
    fake.stall("insert", 0)
    op = instances.insert(request=req)
    assert op.error_code == 0 and len(fake.instances()) == 1


@pytest.mark.parametrize("code", ["ZONE_RESOURCE_POOL_EXHAUSTED",
                                  "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"])
def test_capacity_error_ends_the_operation(fake: GceFake, instances: compute_v1.InstancesClient,
                                           operations: compute_v1.ZoneOperationsClient,
                                           code: str) -> None:
    fake.fail_zone(ZONE, code)
    op = insert(instances, "n1", request_id="r-1")  # the HTTP call succeeds
    assert op.done()
    assert op.error_code == 503 and op.error_message == "SERVICE UNAVAILABLE"
    assert op.error.errors[0].code == code
    exc = op.exception()
    assert isinstance(exc, gexc.ServiceUnavailable) and exc.errors[0].code == code
    with pytest.raises(gexc.ServiceUnavailable):
        op.result()
    polled = operations.get(project=PROJECT, zone=ZONE, operation=op.name)
    assert polled.http_error_status_code == 503 and polled.error.errors[0].code == code
    assert fake.instances() == []
    fake.fail_zone(ZONE, None)
    assert insert(instances, "n1", request_id="r-2").error_code == 0


@pytest.mark.parametrize("code,exc_type", [("QUOTA_EXCEEDED", gexc.Forbidden),
                                           ("UNSUPPORTED_OPERATION", gexc.BadRequest)])
def test_other_operation_errors(fake: GceFake, instances: compute_v1.InstancesClient,
                                code: str, exc_type: type[Exception]) -> None:
    fake.fail_zone(ZONE, code, times=1)
    op = insert(instances, "n1")
    assert isinstance(op.exception(), exc_type) and op.error.errors[0].code == code
    assert insert(instances, "n1").error_code == 0  # times=1: the zone recovered


def test_running_operation_is_waited_with_the_fakes_operations_client() -> None:
    with GceFake(op_delay=0.3) as fake, compute_v1.InstancesClient(
            transport="rest", credentials=AnonymousCredentials(),
            client_options=fake.client_options) as client, compute_v1.ZoneOperationsClient(
            transport="rest", credentials=AnonymousCredentials(),
            client_options=fake.client_options) as ops:
        fake.fail_zone(ZONE, "ZONE_RESOURCE_POOL_EXHAUSTED")
        op = client.insert(project=PROJECT, zone=ZONE, instance_resource=body("n1"))
        assert op.status == compute_v1.Operation.Status.RUNNING and not op.error.errors
        started = time.monotonic()
        done = ops.wait(project=PROJECT, zone=ZONE, operation=op.name)  # held until DONE
        assert 0.1 < time.monotonic() - started < 1.0
        assert done.status == compute_v1.Operation.Status.DONE
        assert done.error.errors[0].code == "ZONE_RESOURCE_POOL_EXHAUSTED"
        assert fake.calls["operations.wait"] == 1 and fake.calls["operations.get"] == 0


def test_http_errors_raise_api_core_exceptions(fake: GceFake,
                                               instances: compute_v1.InstancesClient) -> None:
    fake.fail_zone(ZONE, "forbidden")
    with pytest.raises(gexc.Forbidden) as forbidden:
        insert(instances, "n1")
    assert forbidden.value.errors[0]["reason"] == "forbidden"
    assert "compute.instances.create" in forbidden.value.message
    fake.fail_zone(ZONE, "QUOTA_EXCEEDED", via="http")
    with pytest.raises(gexc.Forbidden) as quota:
        insert(instances, "n1")
    assert quota.value.errors[0]["reason"] == "quotaExceeded"
    fake.fail_zone(ZONE, "rateLimitExceeded")
    with pytest.raises(gexc.TooManyRequests) as limited:
        insert(instances, "n1")
    assert limited.value.code == 429 and limited.value.errors[0]["reason"] == "rateLimitExceeded"
    fake.fail_zone(ZONE, None)
    fake.fail_next("insert", 503)
    with pytest.raises(gexc.ServiceUnavailable) as unavailable:  # insert is not retried
        insert(instances, "n1")
    assert unavailable.value.errors[0]["reason"] == "backendError"
    assert fake.instances() == []
    assert fake.calls["insert"] == 4


def test_get_and_list_retry_503_by_default(fake: GceFake,
                                           instances: compute_v1.InstancesClient) -> None:
    insert(instances, "n1")
    fake.fail_next("get", 503, 2)
    assert instances.get(project=PROJECT, zone=ZONE, instance="n1").name == "n1"
    assert fake.calls["get"] == 3
    fake.fail_next("get", 503, 1)
    with pytest.raises(gexc.ServiceUnavailable):
        instances.get(project=PROJECT, zone=ZONE, instance="n1", retry=None)
    fake.fail_next("aggregatedList", 503, 1)
    assert list(instances.aggregated_list(project=PROJECT))
    assert fake.calls["aggregatedList"] == 2


def test_insert_is_validated_like_gce(fake: GceFake,
                                      instances: compute_v1.InstancesClient) -> None:
    bad: list[dict[str, Any]] = [
        dict(name="Bad_Name"),
        dict(name="n1", labels={"skyjobs-job": "Has Upper"}),
        dict(name="n1", automatic_restart=True),  # a Spot VM cannot restart itself
    ]
    for kw in bad:
        with pytest.raises(gexc.BadRequest) as err:
            insert(instances, **kw)
        assert err.value.errors[0]["reason"] == "invalid"
    other_zone = body("n1", "us-east1-b")
    with pytest.raises(gexc.BadRequest):
        instances.insert(project=PROJECT, zone=ZONE, instance_resource=other_zone)
    gpu = body("n1")
    gpu.scheduling = compute_v1.Scheduling(provisioning_model="STANDARD")
    gpu.guest_accelerators = [compute_v1.AcceleratorConfig(
        accelerator_count=1, accelerator_type=f"zones/{ZONE}/acceleratorTypes/nvidia-l4")]
    with pytest.raises(gexc.BadRequest, match="live migration"):
        instances.insert(project=PROJECT, zone=ZONE, instance_resource=gpu)
    assert fake.instances() == []


# --- lists -----------------------------------------------------------------------------------


def test_aggregated_list_filters_by_label_across_zones_and_pages(
        fake: GceFake, instances: compute_v1.InstancesClient) -> None:
    for zone, name in [("us-central1-a", "a1"), ("us-central1-a", "a2"),
                       ("us-central1-b", "b1"), ("us-east1-c", "c1"), ("us-east1-c", "c2")]:
        insert(instances, name, zone, labels={"skyjobs-job": "j7"})
    insert(instances, "other", labels={"skyjobs-job": "j8"})
    for flt in ['labels.skyjobs-job = "j7"', "labels.skyjobs-job=j7",
                '(labels.skyjobs-job = "j7") AND (status != TERMINATED)',
                '(labels.skyjobs-job = "j7") (name != "other")']:
        pager = instances.aggregated_list(request=compute_v1.AggregatedListInstancesRequest(
            project=PROJECT, filter=flt, max_results=2))
        pages = list(pager.pages)
        assert len(pages) == 3 and all(sum(len(s.instances) for s in p.items.values()) <= 2
                                       for p in pages)
        found = sorted((zone, i.name) for p in pages for zone, scoped in p.items.items()
                       for i in scoped.instances)
        assert found == [("zones/us-central1-a", "a1"), ("zones/us-central1-a", "a2"),
                         ("zones/us-central1-b", "b1"), ("zones/us-east1-c", "c1"),
                         ("zones/us-east1-c", "c2")]
    first = raw(fake, "aggregated/instances?maxResults=2&returnPartialSuccess=true&filter="
                      "labels.skyjobs-job%20%3D%20%22j7%22")
    assert first["nextPageToken"]
    assert first["items"]["zones/europe-west4-a"]["warning"]["code"] == "NO_RESULTS_ON_PAGE"
    listed = instances.list(request=compute_v1.ListInstancesRequest(
        project=PROJECT, zone="us-east1-c", filter='name = "c2"'))
    assert [i.name for i in listed] == ["c2"]


@pytest.mark.parametrize("flt", ["labels.a > 1", "name = a OR name = b", "NOT name = a",
                                 "(name = a", "name =", "nosuchfield = 1", "labels.a:*"])
def test_unknown_filter_syntax_is_400(fake: GceFake, instances: compute_v1.InstancesClient,
                                      flt: str) -> None:
    insert(instances, "n1")
    with pytest.raises(gexc.BadRequest):
        list(instances.aggregated_list(request=compute_v1.AggregatedListInstancesRequest(
            project=PROJECT, filter=flt)))


# --- preemption and delete -------------------------------------------------------------------


def test_preempt_records_a_system_operation_and_deletes(
        fake: GceFake, instances: compute_v1.InstancesClient,
        operations: compute_v1.ZoneOperationsClient) -> None:
    insert(instances, "n1")
    insert(instances, "n2", zone="us-east1-b")
    inst_id = fake.instance("n1")["id"]  # type: ignore[index]
    fake.preempt("n1", notice_s=0.2)
    assert fake.instance("n1")["status"] == "RUNNING"  # type: ignore[index]
    flt = 'operationType="compute.instances.preempted"'
    req = compute_v1.ListZoneOperationsRequest(project=PROJECT, zone=ZONE, filter=flt)
    assert list(operations.list(request=req)) == []  # not before the stop
    wait_until(lambda: fake.instance("n1")["status"] == "STOPPING")  # type: ignore[index]
    for f in (flt, 'operationType = "compute.instances.preempted"'):
        ops = list(operations.list(request=compute_v1.ListZoneOperationsRequest(
            project=PROJECT, zone=ZONE, filter=f)))
        assert len(ops) == 1
        op = ops[0]
        assert op.operation_type == "compute.instances.preempted" and op.user == "system"
        assert op.status == compute_v1.Operation.Status.DONE
        assert op.target_link.endswith(f"/zones/{ZONE}/instances/n1")
        assert str(op.target_id) == inst_id and op.insert_time.endswith("-07:00")
    with compute_v1.GlobalOperationsClient(transport="rest", credentials=AnonymousCredentials(),
                                           client_options=fake.client_options) as global_ops:
        agg = global_ops.aggregated_list(request=compute_v1.AggregatedListGlobalOperationsRequest(
            project=PROJECT, filter=flt))
        assert [(zone, o.target_link.rsplit("/", 1)[-1]) for zone, scoped in agg
                for o in scoped.operations] == [(f"zones/{ZONE}", "n1")]
    wait_until(lambda: fake.instance("n1") is None)  # DELETE: gone after delete_delay
    assert fake.instance("n2") is not None
    with pytest.raises(gexc.NotFound):
        instances.get(project=PROJECT, zone=ZONE, instance="n1")


def test_preempt_with_stop_action_leaves_terminated(fake: GceFake,
                                                    instances: compute_v1.InstancesClient) -> None:
    insert(instances, "n1", action="STOP")
    fake.reclaim("n1")  # no notice at all
    assert fake.instance("n1")["status"] == "STOPPING"  # type: ignore[index]
    wait_until(lambda: fake.instance("n1")["status"] == "TERMINATED")  # type: ignore[index]
    inst = instances.get(project=PROJECT, zone=ZONE, instance="n1")
    assert inst.status == "TERMINATED" and inst.last_stop_timestamp
    listed = instances.aggregated_list(request=compute_v1.AggregatedListInstancesRequest(
        project=PROJECT, filter="status != TERMINATED"))
    assert [i for _, s in listed for i in s.instances] == []


def test_delete_is_idempotent_by_request_id(fake: GceFake,
                                            instances: compute_v1.InstancesClient) -> None:
    insert(instances, "n1")
    req = compute_v1.DeleteInstanceRequest(project=PROJECT, zone=ZONE, instance="n1",
                                           request_id="d-1")
    first = instances.delete(request=req)
    assert first.operation_type == "delete" and first.error_code == 0
    assert fake.instance("n1")["status"] == "STOPPING"  # type: ignore[index]
    assert instances.delete(request=req).name == first.name
    wait_until(lambda: fake.instance("n1") is None)
    assert instances.delete(request=req).name == first.name  # even once it is gone
    with pytest.raises(gexc.NotFound):
        instances.delete(project=PROJECT, zone=ZONE, instance="n1")
    assert fake.calls["delete"] == 4


# --- the metadata server ---------------------------------------------------------------------


async def test_metadata_long_poll_sees_preemption(fake: GceFake) -> None:
    with compute_v1.InstancesClient(transport="rest", credentials=AnonymousCredentials(),
                                    client_options=fake.client_options) as client:
        insert(client, "n1")
    md = fake.metadata_for("n1")
    url = f"{md.url}/computeMetadata/v1/instance/preempted"
    flavor = {"Metadata-Flavor": "Google"}
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert resp.status == 403  # no Metadata-Flavor header
        async with session.get(url, headers=flavor) as resp:
            assert resp.status == 200 and await resp.text() == "FALSE"
            assert resp.headers["Metadata-Flavor"] == "Google"
            etag = resp.headers["ETag"]
        started = time.monotonic()
        async with session.get(url, headers=flavor,
                               params={"wait_for_change": "true", "timeout_sec": "0.2"}) as resp:
            assert await resp.text() == "FALSE"  # timeout_sec: the current value
        assert 0.15 < time.monotonic() - started < 1.0

        threading.Timer(0.3, fake.preempt, args=("n1", 5.0)).start()
        started = time.monotonic()
        async with session.get(url, headers=flavor,
                               params={"wait_for_change": "true", "last_etag": etag}) as resp:
            assert await resp.text() == "TRUE"
            assert resp.headers["ETag"] != etag
        assert 0.25 < time.monotonic() - started < 0.8  # within ~0.5 s of preempt()
        async with session.get(url, headers=flavor,  # a stale etag answers at once
                               params={"wait_for_change": "true", "last_etag": etag}) as resp:
            assert await resp.text() == "TRUE"
        async with session.get(f"{md.url}/computeMetadata/v1/instance/service-accounts/"
                               "default/token", headers=flavor) as resp:
            assert await resp.json() == {"access_token": "fake-token", "expires_in": 3599,
                                         "token_type": "Bearer"}
        for path, want in [("instance/name", "n1"), ("project/project-id", PROJECT),
                           ("instance/attributes/startup-script", "#!/bin/bash\ntrue\n")]:
            async with session.get(f"{md.url}/computeMetadata/v1/{path}",
                                   headers=flavor) as resp:
                assert await resp.text() == want
        async with session.get(f"{md.url}/computeMetadata/v1/instance/zone",
                               headers=flavor) as resp:
            assert (await resp.text()).endswith(f"/zones/{ZONE}")
    assert md.served == 3 and md.preempted  # the three wait_for_change requests


def test_standalone_metadata_server_flips_for_a_waiting_thread() -> None:
    md = GceMetadata(name="vm", zone=ZONE, project=PROJECT)  # its own loop thread
    try:
        answers: list[str] = []

        def wait() -> None:
            req = urllib.request.Request(
                f"{md.url}/computeMetadata/v1/instance/preempted?wait_for_change=true",
                headers={"Metadata-Flavor": "Google"})
            with urllib.request.urlopen(req, timeout=5) as resp:
                answers.append(resp.read().decode())

        waiter = threading.Thread(target=wait)
        waiter.start()
        wait_until(lambda: md.served == 0 and waiter.is_alive())
        time.sleep(0.1)
        assert answers == []  # held: nothing changed yet
        md.set_preempted(True)
        waiter.join(timeout=2)
        assert answers == ["TRUE"] and md.served == 1
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{md.url}/computeMetadata/v1/instance/name", timeout=2)
        assert err.value.code == 403
        err.value.close()
    finally:
        md.close()


# --- the fleet -------------------------------------------------------------------------------


def test_fleet_boots_an_agent_and_kills_it_with_the_vm(
        fake: GceFake, instances: compute_v1.InstancesClient, tmp_path: Path) -> None:
    script = env_script({"SKYJOBS_CONTROLLER_URL": "http://127.0.0.1:9",
                         "SKYJOBS_ATTEMPT_ID": "a1", "SKYJOBS_AGENT_TOKEN": "t",
                         "SKYJOBS_NODE_RANK": "0"})
    with Fleet(fake, tmp_path, extra_env={"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"}) \
            as fleet:
        insert(instances, "n1", script=script)
        insert(instances, "plain")  # no env block: not a skyjobs node, never booted
        node = wait_until(lambda: fleet.node("n1"))
        environ = dict(line.split("=", 1) for line in Path(
            f"/proc/{node.proc.pid}/environ").read_bytes().decode().split("\0") if "=" in line)
        assert environ["SKYJOBS_CLOUD"] == "gcp"
        assert environ["SKYJOBS_METADATA_URL"] == fake.metadata_for("n1").url
        assert environ["SKYJOBS_ATTEMPT_ID"] == "a1"
        assert environ["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:9"
        assert os.getpgid(node.proc.pid) == node.proc.pid  # its own process group
        started = time.monotonic()
        fleet.preempt("n1", notice_s=0.3)
        wait_until(lambda: node.proc.poll() is not None)
        assert time.monotonic() - started >= 0.25  # it lived through its notice
        assert fleet.alive() == [] and fleet.node("plain") is None
        assert any("plain" in e for e in fleet.errors)
