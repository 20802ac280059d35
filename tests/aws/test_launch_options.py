"""What a task's resources alternative starts its EC2 instances with: image_id, labels as
tags, the root volume's size and tier, and the ports decision (against moto)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("aioboto3", reason="the AWS tests need aioboto3 (extra: aws)")
pytest.importorskip("moto.server", reason="the AWS tests need moto[server] (extra: test)")

import boto3  # noqa: E402

from skyjobs.exceptions import FatalProviderError  # noqa: E402
from skyjobs.pricing.catalog import Offering, Placement  # noqa: E402
from skyjobs.providers.aws import (  # noqa: E402
    DISK_TIERS,
    AwsConfig,
    AwsProvider,
    RootDevice,
    root_block_devices,
)
from skyjobs.providers.base import LaunchRequest  # noqa: E402
from tests.aws.conftest import AMI, REGIONS, until  # noqa: E402

MOTO_AMI_GB = 15  # the root volume size moto gives every image it registers


def request(zone: str = "us-east-1a", nodes: int = 1, job: int = 7, **extra: Any
            ) -> LaunchRequest:
    region = zone[:-1]
    offering = Offering("aws", region, zone, "m5.large", None, 0, 2, 8, 0.096, 0.03, "", "")
    ids = [f"sjab12cd-{job}-1-{r}" for r in range(nodes)]
    env = [{"SKYJOBS_CONTROLLER_URL": "http://10.0.0.5:8765", "SKYJOBS_ATTEMPT_ID": "31",
            "SKYJOBS_AGENT_TOKEN": "tok", "SKYJOBS_NODE_RANK": str(r)} for r in range(nodes)]
    return LaunchRequest(job, 31, Placement(offering, True, 0.03), ids, env,
                         {"skyjobs-controller": "sjab12cd", "skyjobs-job": str(job),
                          "skyjobs-attempt": "1"}, **extra)


def ec2(region: str = "us-east-1") -> Any:
    return boto3.client("ec2", region_name=region)


def register_image(moto: Any, region: str = "us-east-1", root: str = "/dev/xvda") -> str:
    """An image whose root device is not moto's default /dev/sda1, so a mapping that does
    not read it from the image would add a second volume instead of sizing the root."""
    image = ec2(region).register_image(Name=f"test-{root}", RootDeviceName=root)["ImageId"]
    moto.ec2(region).amis[image].root_device_name = root
    return str(image)


def tags_of(resource: Any) -> dict[str, str]:
    return {t["key"]: t["value"] for t in resource.get_tags()}


def volumes(moto: Any, inst: Any) -> dict[str, Any]:
    """Device name -> moto volume of an instance."""
    backend = moto.ec2(inst.region_name)
    return {name: backend.get_volume(dev.volume_id)
            for name, dev in inst.block_device_mapping.items()}


def record_run_params(provider: AwsProvider, monkeypatch: pytest.MonkeyPatch
                      ) -> list[dict[str, Any]]:
    """The RunInstances parameters as sent (moto keeps no IOPS or throughput)."""
    sent: list[dict[str, Any]] = []
    real = provider._call

    async def call(service: str, region: str, op: str, **kwargs: Any) -> Any:
        if op == "run_instances":
            sent.append(kwargs)
        return await real(service, region, op, **kwargs)

    monkeypatch.setattr(provider, "_call", call)
    return sent


async def test_image_and_labels_of_the_task(provider: AwsProvider, moto: Any) -> None:
    image = register_image(moto)
    req = request(nodes=2, image_id=image, labels={"team": "ml", "cost-center": "42",
                                                   "skyjobs-job": "not-ours"})
    await provider.launch(req)
    for rank, our_id in enumerate(req.instance_ids):
        [inst] = moto.by_tag("us-east-1", our_id)
        assert inst.image_id == image  # the task's, not SKYJOBS_AWS_IMAGE_ID's
        tags = tags_of(inst)
        assert tags == {"team": "ml", "cost-center": "42", **req.tags,
                        "skyjobs-instance": our_id, "skyjobs-rank": str(rank),
                        "Name": our_id, "skyjobs-attempt-id": "31"}
        assert tags["skyjobs-job"] == "7"  # ours win a clash
        [root] = volumes(moto, inst).values()
        assert tags_of(root)["team"] == "ml"  # the volume carries them too
    # No disk keys: nothing was described, and the image's own root volume boots.
    assert provider.calls["describe_images"] == 0
    assert list(volumes(moto, inst)) == ["/dev/sda1"]


async def test_without_task_keys_the_launch_is_as_before(provider: AwsProvider, moto: Any,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    sent = record_run_params(provider, monkeypatch)
    await provider.launch(request())
    [params] = sent
    assert params["ImageId"] == AMI
    assert "BlockDeviceMappings" not in params
    assert not {"describe_images", "describe_security_groups"} & set(provider.calls)


async def test_disk_size_and_tier_size_the_root_device_of_the_image(
        provider: AwsProvider, moto: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    image = register_image(moto, root="/dev/xvda")
    sent = record_run_params(provider, monkeypatch)
    req = request(nodes=2, image_id=image, disk_size_gb=100, disk_tier="high")
    await provider.launch(req)
    for our_id in req.instance_ids:
        [inst] = moto.by_tag("us-east-1", our_id)
        vols = volumes(moto, inst)
        assert list(vols) == ["/dev/xvda"]  # the root itself, no extra volume
        assert (vols["/dev/xvda"].size, vols["/dev/xvda"].volume_type) == (100, "gp3")
    assert sent[0]["BlockDeviceMappings"] == [{"DeviceName": "/dev/xvda", "Ebs": {
        "DeleteOnTermination": True, "VolumeSize": 100, "VolumeType": "gp3", "Iops": 7000,
        "Throughput": 437}}]
    # The image is described once, however many nodes and launches use it.
    await provider.launch(request(job=8, image_id=image, disk_size_gb=120, disk_tier="low"))
    assert provider.calls["describe_images"] == 1
    assert sent[-1]["BlockDeviceMappings"][0]["Ebs"] == {
        "DeleteOnTermination": True, "VolumeSize": 120, "VolumeType": "gp3", "Iops": 3000,
        "Throughput": 125}


async def test_disk_tier_alone_keeps_the_image_size_and_default_image(
        moto: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The default (operator's) image, described like a task's.
    image = register_image(moto, root="/dev/sda1")
    p = AwsProvider(AwsConfig(image_ids={"": [image]}, endpoint_url=moto.url),
                    regions=REGIONS)
    try:
        sent = record_run_params(p, monkeypatch)
        # (moto cannot launch an io2 root: it drops the mapping's Iops, which io2 needs;
        # the io2 tiers are checked on the parameters in test_disk_tier_mapping.)
        req = request(disk_tier="medium")
        await p.launch(req)
        [inst] = moto.by_tag("us-east-1", req.instance_ids[0])
        root = volumes(moto, inst)["/dev/sda1"]
        assert (inst.image_id, root.size, root.volume_type) == (image, MOTO_AMI_GB, "gp3")
        assert sent[0]["BlockDeviceMappings"] == [{"DeviceName": "/dev/sda1", "Ebs": {
            "DeleteOnTermination": True, "VolumeSize": MOTO_AMI_GB, "VolumeType": "gp3",
            "Iops": 3500, "Throughput": 218}}]
    finally:
        await p.close()


async def test_disk_smaller_than_the_image_fails_before_any_launch(
        provider: AwsProvider, moto: Any) -> None:
    image = register_image(moto)
    with pytest.raises(FatalProviderError, match=r"resources.disk_size: 10 GB is smaller "
                                                 r"than the 15 GB root volume"):
        await provider.launch(request(image_id=image, disk_size_gb=10))
    assert provider.calls["run_instances"] == 0


async def test_a_task_image_that_does_not_exist_names_the_key(provider: AwsProvider,
                                                              moto: Any) -> None:
    with pytest.raises(FatalProviderError, match=r"resources.image_id: ami-0000000000000dead"):
        await provider.launch(request(image_id="ami-0000000000000dead", disk_size_gb=50))
    assert provider.calls["run_instances"] == 0


def test_disk_tier_mapping() -> None:
    root = RootDevice("/dev/sda1", 8)

    def ebs(**kw: Any) -> dict[str, Any]:
        return dict(root_block_devices(request(**kw), root)[0]["Ebs"])

    big = 1000
    assert {t: (e := ebs(disk_size_gb=big, disk_tier=t))["VolumeType"] + f"/{e['Iops']}"
            for t in DISK_TIERS} == {"low": "gp3/3000", "medium": "gp3/3500",
                                     "high": "gp3/7000", "ultra": "io2/20000",
                                     "best": "io2/20000"}
    assert ebs(disk_size_gb=big, disk_tier="medium")["Throughput"] == 218
    # Small volumes: IOPS within 500 per GiB, gp3 never below its free baseline.
    assert ebs(disk_size_gb=10, disk_tier="high")["Iops"] == 5000
    assert ebs(disk_size_gb=4, disk_tier="high")["Iops"] == 3000
    # io2 at 500 IOPS per GiB of the image's 8 GB, not the tier's 20000; no throughput.
    assert ebs(disk_tier="ultra") == {"DeleteOnTermination": True, "VolumeSize": 8,
                                      "VolumeType": "io2", "Iops": 4000}
    assert ebs(disk_size_gb=64) == {"DeleteOnTermination": True, "VolumeSize": 64}
    assert root_block_devices(request(), None) == []


def security_group(region: str, rules: list[tuple[str, int, int]]) -> str:
    client = ec2(region)
    group = client.create_security_group(GroupName=f"g{len(rules)}-{rules}",
                                         Description="test")["GroupId"]
    if rules:
        client.authorize_security_group_ingress(GroupId=group, IpPermissions=[
            {"IpProtocol": proto, "FromPort": low, "ToPort": high,
             "IpRanges": [{"CidrIp": "10.0.0.0/8"}]} for proto, low, high in rules])
    return str(group)


async def test_ports_without_configured_groups_are_refused(provider: AwsProvider,
                                                           moto: Any) -> None:
    with pytest.raises(FatalProviderError) as err:
        await provider.launch(request(ports=("8080",)))
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith("ports: opening ports (8080) needs a security group that allows "
                           "them; set SKYJOBS_AWS_SECURITY_GROUP_IDS")
    assert provider.calls["run_instances"] == 0


async def test_ports_are_checked_against_the_configured_groups(moto: Any) -> None:
    # Two groups: the union of their rules counts, a range may span two rules.
    web = security_group("us-east-1", [("tcp", 8080, 8080), ("tcp", 10000, 10004)])
    more = security_group("us-east-1", [("tcp", 10005, 10010), ("udp", 9000, 9000)])
    cfg = AwsConfig(image_ids={"": [AMI]}, endpoint_url=moto.url,
                    security_group_ids={"us-east-1": [web], "": [more]})
    p = AwsProvider(cfg, regions=REGIONS)
    try:
        req = request(ports=("8080", "10000-10010"))
        await p.launch(req)
        [inst] = moto.by_tag("us-east-1", req.instance_ids[0])
        assert {g.id for g in inst.security_groups} == {web, more}
        with pytest.raises(FatalProviderError, match=r"do not allow TCP 9000, 8081-8082; "):
            await p.launch(request(job=8, ports=("8080", "9000", "8081-8082")))
        assert p.calls["run_instances"] == 1
    finally:
        await p.close()
    everything = security_group("us-west-2", [("-1", -1, -1)])
    p = AwsProvider(AwsConfig(image_ids={"": [AMI]}, endpoint_url=moto.url,
                              security_group_ids={"us-west-2": [everything]}),
                    regions=REGIONS)
    try:
        await p.launch(request("us-west-2a", job=9, ports=("1-65535",)))
    finally:
        await p.close()


async def test_controller_launches_with_the_task_keys(controller: Any, moto: Any,
                                                      fleet: Any) -> None:
    """Through the controller: the stored spec's alternative reaches EC2."""
    image = register_image(moto, root="/dev/xvda")
    task = {"name": "keys", "run": "sleep 600", "resources": {
        "cloud": "aws", "instance_type": "m5.large", "use_spot": True,
        "labels": {"team": "ml"}, "any_of": [
            {"region": "us-east-1", "image_id": image, "disk_size": 64, "disk_tier": "medium",
             "labels": {"team": "ml", "where": "east"}},
            {"region": "us-west-2"}]}}
    job_id = await controller.submit(task)
    job = await controller.wait_status(job_id, "PROVISIONING", "RUNNING")
    our_id = job["attempt_list"][0]["instances"][0]
    [inst] = await until("the instance", lambda: moto.by_tag("us-east-1", our_id))
    assert inst.image_id == image
    tags = tags_of(inst)
    assert (tags["team"], tags["where"], tags["skyjobs-job"]) == ("ml", "east", str(job_id))
    root = volumes(moto, inst)["/dev/xvda"]
    assert (root.size, root.volume_type) == (64, "gp3")
    await controller.call("POST", "/api/v1/cancel", {"ids": [job_id]})
    await controller.wait_status(job_id, "CANCELLED", within=30)
