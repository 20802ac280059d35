"""choice_for: which resources alternative a placement came from, and what the launch
request then carries (image, boot disk, ports, labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from skyjobs.pricing.catalog import Offering, Placement
from skyjobs.providers.base import LaunchRequest
from skyjobs.providers.local import LocalProvider
from skyjobs.providers.local_instance import LAUNCH_FILE, read_json
from skyjobs.recovery.choice import choice_for
from skyjobs.spec import parse_task
from tests.unit.harness import Harness, submit, until


def place(zone: str = "us-east-1a", itype: str = "m5.large", spot: bool = True,
          cloud: str = "aws", acc: str | None = None, count: int = 0,
          vcpus: float = 2, memory: float = 8) -> Placement:
    region = zone[:-1] if cloud == "aws" else cloud
    o = Offering(cloud, region, zone, itype, acc, count, vcpus, memory, 0.1, 0.03, "", "t")
    return Placement(o, spot, 0.03 if spot else 0.1)


def spec(resources: dict[str, Any]) -> Any:
    return parse_task({"resources": resources, "run": "x"})


def test_single_choice_carries_its_launch_keys() -> None:
    s = spec({"cloud": "aws", "instance_type": "m5.large", "use_spot": True,
              "disk_size": "1TB", "disk_tier": "high", "ports": [8080, "9000-9010"],
              "labels": {"team": "ml"}, "image_id": "ami-0123456789abcdef0"})
    c = choice_for(s, place())
    assert (c.disk_size, c.disk_tier, c.ports) == (1024, "high", ("8080", "9000-9010"))
    assert c.labels == {"team": "ml"}
    assert c.image_for("us-east-1") == "ami-0123456789abcdef0"


def test_any_of_picks_the_alternative_that_admits_the_placement() -> None:
    s = spec({"cloud": "aws", "use_spot": True, "labels": {"team": "ml"}, "disk_size": 100,
              "any_of": [
                  {"instance_type": "p3.2xlarge", "image_id": "ami-00000000000000001",
                   "labels": {"gpu": "v100"}},
                  {"instance_type": "m5.large", "disk_size": 200, "disk_tier": "low",
                   "labels": {"gpu": "none"}},
              ]})
    first = choice_for(s, place(itype="p3.2xlarge", acc="V100", count=1))
    second = choice_for(s, place(itype="m5.large"))
    assert first.image_id == "ami-00000000000000001" and second.image_id is None
    # An alternative's keys replace the resources level's, as SkyPilot merges them.
    assert first.labels == {"gpu": "v100"} and second.labels == {"gpu": "none"}
    assert (first.disk_size, first.disk_tier) == (100, None)
    assert (second.disk_size, second.disk_tier) == (200, "low")


def test_ordered_returns_the_first_admitting_entry() -> None:
    # Both entries admit us-east-1a/m5.large: the first in the user's order wins.
    s = spec({"cloud": "aws", "instance_type": "m5.large", "use_spot": True, "ordered": [
        {"region": "us-west-2", "labels": {"where": "west"}, "disk_size": 50},
        {"zone": "us-east-1a", "labels": {"where": "east-a"}, "disk_size": 60},
        {"region": "us-east-1", "labels": {"where": "east"}, "disk_size": 70},
    ]})
    assert choice_for(s, place("us-east-1a")).labels == {"where": "east-a"}
    assert choice_for(s, place("us-east-1b")).disk_size == 70
    assert choice_for(s, place("us-west-2a")).labels == {"where": "west"}


def test_region_image_mappings_pick_the_alternative_with_the_region() -> None:
    s = spec({"cloud": "aws", "instance_type": "m5.large", "any_of": [
        {"image_id": {"us-west-2": "ami-0000000000000west"}},
        {"image_id": {"us-east-1": "ami-0000000000000east"}, "labels": {"r": "east"}},
    ]})
    c = choice_for(s, place("us-east-1b", spot=False))
    assert c.image_for("us-east-1") == "ami-0000000000000east" and c.labels == {"r": "east"}
    assert choice_for(s, place("us-west-2a", spot=False)).image_for(
        "us-west-2") == "ami-0000000000000west"


def test_market_decides_between_spot_and_on_demand_alternatives() -> None:
    s = spec({"cloud": "aws", "instance_type": "m5.large", "any_of": [
        {"use_spot": True, "labels": {"market": "spot"}},
        {"use_spot": False, "labels": {"market": "od"}},
    ]})
    assert choice_for(s, place(spot=True)).labels == {"market": "spot"}
    assert choice_for(s, place(spot=False)).labels == {"market": "od"}
    # The on-demand twin of a spot-only request (DEADLINE_AWARE) is still that request.
    only_spot = spec({"cloud": "aws", "instance_type": "m5.large", "use_spot": True,
                      "labels": {"market": "spot"}})
    assert choice_for(only_spot, place(spot=False)).labels == {"market": "spot"}


def test_offering_rebuilt_from_an_attempt_record_matches_by_location() -> None:
    # The catalog no longer lists it: hardware unknown (no accelerator, 0 cpus).
    s = spec({"cloud": "aws", "use_spot": True, "any_of": [
        {"accelerators": "A10G:1", "instance_type": "g5.xlarge", "labels": {"k": "g5"}},
        {"accelerators": "T4:1", "instance_type": "g4dn.xlarge", "labels": {"k": "g4"}},
    ]})
    record = place(itype="g4dn.xlarge", vcpus=0, memory=0)
    assert choice_for(s, record).labels == {"k": "g4"}


def test_nothing_admits_falls_back_to_the_first_choice() -> None:
    s = spec({"cloud": "aws", "any_of": [{"instance_type": "m5.large", "labels": {"a": "1"}},
                                         {"instance_type": "c5.large", "labels": {"a": "2"}}]})
    assert choice_for(s, place(cloud="local", zone="local-a", itype="local.cpu2")).labels == {
        "a": "1"}


async def test_launch_request_carries_the_alternative_of_each_attempt(h: Harness) -> None:
    # local-a has no spot capacity: the job moves to local-b, whose alternative differs.
    h.fake.no_capacity = {"local-a"}
    seen: list[LaunchRequest] = []
    real_launch = h.fake.launch

    async def launch(req: LaunchRequest) -> Any:
        seen.append(req)  # the fake records only launches that succeed
        return await real_launch(req)

    h.fake.launch = launch  # type: ignore[method-assign]
    task = {"resources": {"cloud": "local", "cpus": 2, "use_spot": True,
                          "labels": {"team": "ml"}, "any_of": [
                              {"zone": "local-a", "disk_size": 100, "labels": {"z": "a"}},
                              {"zone": "local-b", "disk_size": 200, "disk_tier": "ultra",
                               "ports": 8888, "image_id": "img-b", "labels": {"z": "b"}}]},
            "run": "x"}
    job_id = await submit(h, task)
    await h.run_to_running(job_id)
    await until("two launches", lambda: len(seen) >= 2)
    by_zone = {r.placement.zone: r for r in seen}
    a, b = by_zone["local-a"], by_zone["local-b"]
    assert (a.disk_size_gb, a.disk_tier, a.ports, a.image_id) == (100, None, (), None)
    assert a.labels == {"z": "a"}
    assert (b.disk_size_gb, b.disk_tier, b.ports, b.image_id) == (200, "ultra", ("8888",),
                                                                  "img-b")
    assert b.labels == {"z": "b"}
    assert b.tags["skyjobs-job"] == str(job_id)


async def test_local_instance_records_the_launch_keys(tmp_path: Path) -> None:
    """The local provider has no image, disk or ports to set: launch.json shows them."""
    provider = LocalProvider(tmp_path / "cloud")
    offering = Offering("local", "local", "local-a", "local.cpu2", None, 0, 2, 4, 0.1, 0.03,
                        "", "t")
    req = LaunchRequest(1, 1, Placement(offering, False, 0.1), ["sjtest-1-1-0"],
                        [{"SKYJOBS_CONTROLLER_URL": "http://127.0.0.1:9"}],
                        {"skyjobs-job": "1"}, image_id="img-1", disk_size_gb=100,
                        disk_tier="high", ports=("8080",), labels={"team": "ml"})
    try:
        await provider.launch(req)
        launch = read_json(tmp_path / "cloud" / "instances" / "sjtest-1-1-0" / LAUNCH_FILE)
        assert launch is not None
        assert {k: launch[k] for k in ("labels", "image_id", "disk_size_gb", "disk_tier",
                                       "ports", "tags")} == {
            "labels": {"team": "ml"}, "image_id": "img-1", "disk_size_gb": 100,
            "disk_tier": "high", "ports": ["8080"], "tags": {"skyjobs-job": "1"}}
    finally:
        await provider.terminate(req.instance_ids)
        await provider.close()
