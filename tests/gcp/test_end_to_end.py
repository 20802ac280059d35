"""Jobs end to end through the real google-cloud-compute client against the fake Compute
API: a controller (in this event loop, or a real process killed with -9), agents booted
from their startup scripts as real processes, checkpoints in the fake GCS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from skyjobs.spec import load_task
from skyjobs.submission import build_archive, raw_task
from tests.aws.conftest import until
from tests.conftest import ControllerProc, wait_for
from tests.gcp.conftest import MACHINE, gcp_env
from tests.gcp.gce_harness import ROOT

BUCKET = "ckpt-bucket"


def train_task(tmp_path: Path, steps: int = 40, nodes: int = 1,
               bucket: str = BUCKET) -> dict[str, Any]:
    doc = {
        "name": "train",
        "resources": {"cloud": "gcp", "region": "us-central1", "instance_type": MACHINE,
                      "use_spot": True},
        "num_nodes": nodes,
        "workdir": str(ROOT / "examples" / "train"),
        "file_mounts": {"~/ckpt": {"source": f"gs://{bucket}/run1", "mode": "COPY"}},
        "run": f"python3 train.py --steps {steps} --step-seconds 0.1 --ckpt-every 5 "
               "--ckpt-dir ~/ckpt/node-$SKYPILOT_NODE_RANK",
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(doc))
    spec = load_task(path)
    return {"task": raw_task(path), "source": str(path), "archive": build_archive(spec)}


def checkpoint_step(gcs: Any, node: int = 0) -> int:
    data = gcs.objects(BUCKET).get(f"run1/node-{node}/state.json")
    return int(json.loads(data)["step"]) if data else 0


def zones(job: dict[str, Any]) -> list[str]:
    return [a["placement"].split("/")[1] for a in job["attempt_list"]]


def job_instances(gce: Any, job_id: int) -> list[dict[str, Any]]:
    return [i for i in gce.instances() if i["labels"].get("skyjobs-job") == str(job_id)]


async def test_notice_checkpoints_and_resumes_in_another_zone_with_one_insert(
        controller: Any, fleet: Any, gce: Any, gcs: Any, tmp_path: Path) -> None:
    gcs.create_bucket(BUCKET)
    payload = train_task(tmp_path)
    job_id = int((await controller.call("POST", "/api/v1/jobs", payload))["id"])
    await controller.wait_status(job_id, "RUNNING")
    first = (await controller.job(job_id))["attempt_list"][0]
    assert first["placement"] == f"gcp/us-central1-a/{MACHINE}/spot"
    name = first["instances"][0]
    await until("the first VM to boot", lambda: fleet.node(name))
    assert gce.instance(name)["scheduling"]["provisioningModel"] == "SPOT"
    await until("a checkpoint in GCS", lambda: checkpoint_step(gcs) >= 10)

    inserts_before = len(gce.inserts)
    fleet.preempt(name, notice_s=5)  # TRUE on the metadata server now, stopped in 5 s
    done = await controller.wait_status(job_id, "SUCCEEDED", "FAILED", within=120)

    assert done["status"] == "SUCCEEDED", done
    assert done["recoveries"] == 1
    assert len(gce.inserts) == inserts_before + 1  # exactly one replacement insert
    assert zones(done) == ["us-central1-a", "us-central1-b"]  # the preempted zone cools down
    second = await controller.logs(job_id, 2)
    resumed = int(second.split("resumed from checkpoint at step ")[1].split()[0])
    assert resumed >= 10
    assert checkpoint_step(gcs) == 40
    events = await controller.events(job_id)
    assert any("notice" in (e.get("reason") or "") for e in events), events
    # The old VM was deleted by us (released once its attempt ended), within its notice.
    await until("every VM deleted", lambda: not job_instances(gce, job_id))
    await until("every agent gone with its VM", lambda: not fleet.alive())


async def test_reclaim_without_notice_is_caught_by_the_poll(
        controller: Any, fleet: Any, gce: Any, gcs: Any, provider: Any,
        tmp_path: Path) -> None:
    gcs.create_bucket(BUCKET)
    job_id = int((await controller.call("POST", "/api/v1/jobs",
                                        train_task(tmp_path, steps=60)))["id"])
    await controller.wait_status(job_id, "RUNNING")
    name = (await controller.job(job_id))["attempt_list"][0]["instances"][0]
    await until("the VM to boot", lambda: fleet.node(name))
    gce.reclaim(name)  # no notice at all: only GCE's state and operations tell
    await controller.wait_status(job_id, "RECOVERING", "PROVISIONING", within=30)
    events = await controller.events(job_id)
    assert any(f"instance {name} is gone (preempted)" in (e.get("reason") or "")
               for e in events), events
    done = await controller.wait_status(job_id, "SUCCEEDED", "FAILED", within=120)
    assert done["status"] == "SUCCEEDED"
    assert done["recoveries"] == 1


async def test_resource_exhaustion_moves_to_the_next_zone(
        controller: Any, fleet: Any, gce: Any, gcs: Any, tmp_path: Path) -> None:
    gcs.create_bucket(BUCKET)
    gce.fail_zone("us-central1-a", "ZONE_RESOURCE_POOL_EXHAUSTED")
    job_id = int((await controller.call("POST", "/api/v1/jobs",
                                        train_task(tmp_path, steps=5)))["id"])
    done = await controller.wait_status(job_id, "SUCCEEDED", "FAILED", within=90)
    assert done["status"] == "SUCCEEDED", done
    assert [a["end_reason"] for a in done["attempt_list"]] == ["no_capacity", "succeeded"]
    assert zones(done) == ["us-central1-a", "us-central1-b"]
    assert [z for _, z, *_ in gce.inserts] == ["us-central1-a", "us-central1-b"]


async def test_cancel_of_a_two_node_job_leaves_nothing(
        controller: Any, fleet: Any, gce: Any, gcs: Any, provider: Any,
        tmp_path: Path) -> None:
    gcs.create_bucket(BUCKET)
    job_id = int((await controller.call("POST", "/api/v1/jobs",
                                        train_task(tmp_path, steps=400, nodes=2)))["id"])
    await controller.wait_status(job_id, "RUNNING")
    ctl_tag = controller.ctl.services.instance_prefix
    owned = await provider.list_owned(ctl_tag)
    assert len(owned) == 2
    assert len({i["zone"] for i in job_instances(gce, job_id)}) == 1  # one zone per job
    await until("both agents up", lambda: len(fleet.alive()) == 2)
    await controller.call("POST", "/api/v1/cancel", {"ids": [job_id]})
    await controller.wait_status(job_id, "CANCELLED", within=30)
    assert await provider.list_owned(ctl_tag) == []
    assert job_instances(gce, job_id) == []
    await until("agents to die with their VMs", lambda: not fleet.alive())


async def test_a_missing_or_read_only_bucket_fails_the_submit(
        controller: Any, gce: Any, gcs: Any, tmp_path: Path) -> None:
    for bucket, why in (("no-such-bucket", "does not exist"),
                        ("read-only", "cannot read and write")):
        if bucket == "read-only":
            gcs.create_bucket(bucket)
            gcs.deny(bucket, "write")
        async with controller.session.post("/api/v1/jobs",
                                           json=train_task(tmp_path, bucket=bucket)) as r:
            body = await r.json()
        assert r.status == 400, body
        assert "file_mounts.~/ckpt" in body["error"] and why in body["error"], body
    assert gce.calls["insert"] == 0
    async with controller.session.get("/api/v1/jobs") as r:
        assert (await r.json())["jobs"] == []


def test_a_launch_replayed_after_kill9_between_insert_and_store_gives_one_vm_per_node(
        gce: Any, gcs: Any, tmp_path: Path) -> None:
    """A real controller process dies (-9) after GCE carried out its inserts and before
    any answer reached it; the restarted one replays the launch and creates nothing."""
    from tests.gcp.gce_harness import Fleet

    gcs.create_bucket(BUCKET)
    env = {**gcp_env(gce), "SKYJOBS_CLOUDS": "gcp", "STORAGE_EMULATOR_HOST": gcs.url,
           "SKYJOBS_GCP_CALL_TIMEOUT": "30"}
    state = tmp_path / "state"
    state.mkdir()
    with Fleet(gce, tmp_path / "nodes", extra_env={"STORAGE_EMULATOR_HOST": gcs.url}) as fleet:
        ctl = ControllerProc(state, env).start()
        try:
            gce.stall("insert", 20, after=True)  # inserts happen; answers come late
            payload = train_task(tmp_path, steps=10, nodes=2)
            job_id = int(ctl.client.post("/api/v1/jobs", payload)["id"])
            wait_for("both inserts to reach GCE", lambda: len(gce.inserts) >= 2, 30)
            wait_for("both VMs to exist", lambda: len(job_instances(gce, job_id)) == 2, 10)
            ctl.kill9()
            gce.stall("insert", 0)
            ctl = ControllerProc(state, env).start()
            done = ctl.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=120)
            assert done["status"] == "SUCCEEDED", done
            assert len(done["attempt_list"]) == 1
            names = [i["name"] for i in gce.instances()] + [
                n for *_, n, _ in gce.inserts]
            assert sorted(set(names)) == sorted(done["attempt_list"][0]["instances"])
            # Every insert of the replay named the first try's request ids.
            assert len({r for *_, r in gce.inserts}) == 2
            wait_for("the VMs deleted after success",
                     lambda: not job_instances(gce, job_id), 30)
        finally:
            ctl.cleanup()
        assert fleet.errors == [] or all("fleet watch" not in e for e in fleet.errors)


async def test_two_nodes_share_a_zone_and_see_each_others_internal_ips(
        controller: Any, fleet: Any, gce: Any, gcs: Any, tmp_path: Path) -> None:
    booted: dict[str, dict[str, Any]] = {}  # the VMs as GCE showed them at boot
    fleet.boot_hooks.append(lambda node: booted.setdefault(node.name, gce.instance(node.name)))
    task = {"name": "pair", "num_nodes": 2,
            "resources": {"cloud": "gcp", "region": "us-central1", "instance_type": MACHINE,
                          "use_spot": True},
            "run": 'echo "rank=$SKYPILOT_NODE_RANK ips=$(echo $SKYPILOT_NODE_IPS)"'}
    job_id = int((await controller.call("POST", "/api/v1/jobs", {"task": task}))["id"])
    done = await controller.wait_status(job_id, "SUCCEEDED", "FAILED", within=90)
    assert done["status"] == "SUCCEEDED", done
    vms = [booted[name] for name in done["attempt_list"][0]["instances"]]
    assert len({vm["zone"] for vm in vms}) == 1  # one zone per job
    ips = " ".join(vm["networkInterfaces"][0]["networkIP"] for vm in vms)
    for rank in (0, 1):
        assert f"rank={rank} ips={ips}" in await controller.logs(job_id, 1, rank)
