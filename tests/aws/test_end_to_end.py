"""Jobs end to end through real EC2 API calls (moto): a controller in this event loop, agents
booted from their user-data as real processes, checkpoints in moto S3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aioboto3", reason="the AWS tests need aioboto3 (extra: aws)")
pytest.importorskip("moto.server", reason="the AWS tests need moto[server] (extra: test)")

import boto3  # noqa: E402
import yaml  # noqa: E402

from skyjobs.spec import load_task  # noqa: E402
from skyjobs.submission import build_archive, raw_task  # noqa: E402
from tests.aws.aws_harness import ROOT  # noqa: E402
from tests.aws.conftest import until  # noqa: E402

BUCKET = "ckpt-bucket"


def train_task(tmp_path: Path, steps: int = 40, nodes: int = 1) -> dict[str, Any]:
    doc = {
        "name": "train",
        "resources": {"cloud": "aws", "instance_type": "m5.large", "use_spot": True},
        "num_nodes": nodes,
        "workdir": str(ROOT / "examples" / "train"),
        "file_mounts": {"~/ckpt": {"source": f"s3://{BUCKET}/run1", "mode": "COPY"}},
        "run": f"python3 train.py --steps {steps} --step-seconds 0.1 --ckpt-every 5 "
               "--ckpt-dir ~/ckpt/node-$SKYPILOT_NODE_RANK",
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(doc))
    spec = load_task(path)
    return {"task": raw_task(path), "source": str(path), "archive": build_archive(spec)}


def make_bucket() -> Any:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    return s3


def checkpoint_step(s3: Any, node: int = 0) -> int:
    try:
        body = s3.get_object(Bucket=BUCKET, Key=f"run1/node-{node}/state.json")["Body"]
    except s3.exceptions.NoSuchKey:
        return 0
    return int(yaml.safe_load(body.read())["step"])


async def submit(api: Any, payload: dict[str, Any]) -> int:
    return int((await api.call("POST", "/api/v1/jobs", payload))["id"])


def zones(job: dict[str, Any]) -> list[str]:
    return [a["placement"].split("/")[1] for a in job["attempt_list"]]


async def test_notice_driven_recovery_resumes_elsewhere_from_s3(
        controller: Any, fleet: Any, moto: Any, tmp_path: Path) -> None:
    s3 = make_bucket()
    job_id = await submit(controller, train_task(tmp_path))
    await controller.wait_status(job_id, "RUNNING")
    first = (await controller.job(job_id))["attempt_list"][0]
    assert first["placement"] == "aws/us-east-1a/m5.large/spot"
    node = await until("the first instance to boot", lambda: fleet.node(first["instances"][0]))
    inst = moto.by_tag("us-east-1", first["instances"][0])[0]
    assert inst.lifecycle == "spot"  # launched through InstanceMarketOptions
    await until("a checkpoint in S3", lambda: checkpoint_step(s3) >= 10)

    launches_before = len(moto.run_calls)
    fleet.preempt(node, notice_s=5)
    done = await controller.wait_status(job_id, "SUCCEEDED", "FAILED", within=120)

    assert done["status"] == "SUCCEEDED", done
    assert done["recoveries"] == 1
    assert len(moto.run_calls) == launches_before + 1  # exactly one replacement
    assert zones(done) == ["us-east-1a", "us-east-1b"]  # the preempted zone cools down
    second = await controller.logs(job_id, 2)
    resumed = int(second.split("resumed from checkpoint at step ")[1].split()[0])
    assert resumed >= 10
    assert checkpoint_step(s3) == 40
    # AWS's own record of the reclaim, which the poll maps to PREEMPTED.
    assert inst.state_reason.code == "Server.SpotInstanceTermination"
    await until("every instance released", lambda: not fleet.alive())


async def test_reclaim_without_notice_is_seen_by_the_batched_poll(
        controller: Any, fleet: Any, moto: Any, provider: Any, tmp_path: Path) -> None:
    make_bucket()
    job_id = await submit(controller, train_task(tmp_path, steps=60))
    await controller.wait_status(job_id, "RUNNING")
    our_id = (await controller.job(job_id))["attempt_list"][0]["instances"][0]
    await until("the instance to boot", lambda: fleet.node(our_id))
    # No notice at all: AWS takes the instance; only EC2's state tells.
    moto.spot_terminate(moto.by_tag("us-east-1", our_id)[0])
    await controller.wait_status(job_id, "RECOVERING", "PROVISIONING", within=30)
    info = (await provider.status([our_id]))[our_id]
    assert (info.state, info.reason) == ("gone", "preempted")
    events = await controller.events(job_id)
    assert any(f"instance {our_id} is gone (preempted)" in (e.get("reason") or "")
               for e in events), events
    done = await controller.wait_status(job_id, "SUCCEEDED", "FAILED", within=120)
    assert done["status"] == "SUCCEEDED"
    assert done["recoveries"] == 1


async def test_capacity_error_moves_the_job_to_the_next_candidate(
        controller: Any, fleet: Any, moto: Any, tmp_path: Path) -> None:
    make_bucket()
    moto.failing["us-east-1a"] = "InsufficientInstanceCapacity"
    job_id = await submit(controller, train_task(tmp_path, steps=5))
    done = await controller.wait_status(job_id, "SUCCEEDED", "FAILED", within=90)
    assert done["status"] == "SUCCEEDED"
    assert [a["end_reason"] for a in done["attempt_list"]] == ["no_capacity", "succeeded"]
    assert zones(done) == ["us-east-1a", "us-east-1b"]
    assert [z for _, z in moto.run_calls] == ["us-east-1a", "us-east-1b"]
    assert not moto.by_tag("us-east-1", done["attempt_list"][0]["instances"][0])


async def test_cancel_leaves_no_instance_running(
        controller: Any, fleet: Any, moto: Any, provider: Any, tmp_path: Path) -> None:
    make_bucket()
    job_id = await submit(controller, train_task(tmp_path, steps=400, nodes=2))
    await controller.wait_status(job_id, "RUNNING")
    ctl_tag = controller.ctl.services.instance_prefix
    assert len(await provider.list_owned(ctl_tag)) == 2
    await controller.call("POST", "/api/v1/cancel", {"ids": [job_id]})
    await controller.wait_status(job_id, "CANCELLED", within=30)
    assert await provider.list_owned(ctl_tag) == []
    states = {i._state.name for r in REGIONS_OF_TEST for i in moto.instances(r)}
    assert states == {"terminated"}
    await until("agents to die with their instances", lambda: not fleet.alive())


REGIONS_OF_TEST = ["us-east-1", "us-west-2"]
