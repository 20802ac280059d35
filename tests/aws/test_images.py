"""The default AMI: explicit image first, else a public SSM parameter, resolved per region at
controller start, cached, refreshed after a TTL; one-line refusal when none resolves."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("aioboto3", reason="the AWS tests need aioboto3 (extra: aws)")
pytest.importorskip("moto.server", reason="the AWS tests need moto[server] (extra: test)")

from moto.backends import get_backend  # noqa: E402
from moto.core.models import DEFAULT_ACCOUNT_ID  # noqa: E402
from moto.core.utils import utcnow  # noqa: E402
from moto.ssm.models import Parameter  # noqa: E402

from skyjobs.exceptions import ConfigError, FatalProviderError, ProviderError  # noqa: E402
from skyjobs.providers import aws_images  # noqa: E402
from skyjobs.providers.aws import AwsConfig, AwsProvider  # noqa: E402
from skyjobs.providers.aws_images import DEFAULT_IMAGE_PARAMETER, ImageResolver  # noqa: E402
from tests.aws.conftest import AMI, REGIONS  # noqa: E402
from tests.aws.test_provider import request  # noqa: E402

DLAMI = {"us-east-1": "ami-0d1a00000000east", "us-west-2": "ami-0d1a00000000west"}


def publish(region: str, value: str, name: str = DEFAULT_IMAGE_PARAMETER) -> None:
    """What AWS does for its public parameters: moto refuses put_parameter under /aws and
    ships none of the deeplearning ones, so write into its backend (same process)."""
    params = get_backend("ssm")[DEFAULT_ACCOUNT_ID][region]._parameters
    params[name].append(Parameter(
        account_id=DEFAULT_ACCOUNT_ID, name=name, value=value, parameter_type="String",
        description=None, allowed_pattern=None, keyid=None, last_modified_date=utcnow(),
        version=len(params[name]) + 1, data_type="aws:ec2:image"))


def unpublish(region: str, name: str = DEFAULT_IMAGE_PARAMETER) -> None:
    get_backend("ssm")[DEFAULT_ACCOUNT_ID][region]._parameters.pop(name, None)


@pytest.fixture
async def bare(moto: Any) -> Any:
    """A provider with no image id configured (the SSM default applies)."""
    p = AwsProvider(AwsConfig(endpoint_url=moto.url), regions=REGIONS)
    yield p
    await p.close()


async def test_moto_ships_no_dlami_parameter(bare: Any) -> None:
    # Checked, not assumed: without publish() the default parameter does not exist.
    with pytest.raises(ConfigError, match="not found"):
        await bare.resolve_images()


async def test_explicit_image_wins_without_any_ssm_call(moto: Any) -> None:
    for region, ami in DLAMI.items():
        publish(region, ami)
    everywhere = AwsProvider(AwsConfig(image_ids={"": [AMI]}, endpoint_url=moto.url),
                             regions=REGIONS)
    keyed = AwsProvider(AwsConfig(image_ids={"us-east-1": ["ami-0e000000000000001"]},
                                  endpoint_url=moto.url), regions=REGIONS)
    try:
        assert await everywhere.resolve_images() == {r: AMI for r in REGIONS}
        assert everywhere.calls["get_parameter"] == 0
        # Region-keyed: that region is explicit, the other one takes the SSM default.
        assert await keyed.resolve_images() == {"us-east-1": "ami-0e000000000000001",
                                                "us-west-2": DLAMI["us-west-2"]}
        assert keyed.calls["get_parameter"] == 1
        assert keyed.images.source("us-east-1") == "SKYJOBS_AWS_IMAGE_ID"
        assert keyed.images.source("us-west-2") == f"ssm:{DEFAULT_IMAGE_PARAMETER}"
    finally:
        await everywhere.close()
        await keyed.close()


async def test_ssm_default_is_resolved_per_region_and_cached(bare: Any, moto: Any) -> None:
    for region, ami in DLAMI.items():
        publish(region, ami)
    assert await bare.resolve_images() == DLAMI
    assert bare.calls["get_parameter"] == len(REGIONS)  # one per region, no more
    assert await bare.resolve_images() == DLAMI
    assert await bare.image_for("us-east-1") == DLAMI["us-east-1"]
    # Many launches at once in a region not resolved yet: one SSM call between them.
    publish("us-east-2", "ami-0d1a000000000ohio")
    got = await asyncio.gather(*(bare.image_for("us-east-2") for _ in range(8)))
    assert set(got) == {"ami-0d1a000000000ohio"}
    assert bare.calls["get_parameter"] == len(REGIONS) + 1


async def test_launch_boots_the_resolved_image(bare: Any, moto: Any) -> None:
    for region, ami in DLAMI.items():
        publish(region, ami)
    await bare.resolve_images()
    east, west = request(nodes=2), request(zone="us-west-2a", nodes=1, job=9)
    await bare.launch(east)
    await bare.launch(west)
    assert bare.calls["get_parameter"] == len(REGIONS)  # launches read the cache
    for req, region in ((east, "us-east-1"), (west, "us-west-2")):
        for our_id in req.instance_ids:
            [inst] = moto.by_tag(region, our_id)
            assert inst.image_id == DLAMI[region]
    # And through the EC2 API, as an operator would look.
    import boto3

    ec2 = boto3.client("ec2", region_name="us-west-2", endpoint_url=moto.url)
    reply = ec2.describe_instances(Filters=[{"Name": "tag:skyjobs-instance",
                                             "Values": west.instance_ids}])
    [inst] = [i for r in reply["Reservations"] for i in r["Instances"]]
    assert inst["ImageId"] == DLAMI["us-west-2"]


async def test_launch_resolves_on_first_use_without_the_start_hook(bare: Any,
                                                                   moto: Any) -> None:
    publish("us-east-1", DLAMI["us-east-1"])
    req = request(nodes=1)
    await bare.launch(req)
    assert moto.by_tag("us-east-1", req.instance_ids[0])[0].image_id == DLAMI["us-east-1"]
    assert bare.calls["get_parameter"] == 1


async def test_no_image_refuses_with_one_line(bare: Any, moto: Any) -> None:
    publish("us-west-2", DLAMI["us-west-2"])  # only one of the two regions has it
    with pytest.raises(ConfigError) as caught:
        await bare.resolve_images()
    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith("clouds: aws: no image for us-east-1: set SKYJOBS_AWS_IMAGE_ID")
    assert "us-west-2" not in line
    assert f"SSM parameter {DEFAULT_IMAGE_PARAMETER} not found in us-east-1" in line
    assert "SKYJOBS_AWS_IMAGE_SSM_PARAMETER" in line
    # A job reaching a launch anyway fails at once (nothing to retry), before RunInstances.
    with pytest.raises(FatalProviderError, match="no AMI for us-east-1"):
        await bare.launch(request(nodes=1))
    assert bare.calls["run_instances"] == 0


async def test_no_image_anywhere_names_every_region(bare: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        await bare.resolve_images(["us-west-2", "us-east-1"])
    assert str(caught.value).startswith("clouds: aws: no image for us-east-1, us-west-2: ")


async def test_parameter_is_overridable_from_env(moto: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    name = "/team/images/skyjobs-node"  # e.g. the team's own baked image, kept current
    for region in REGIONS:
        boto3.client("ssm", region_name=region, endpoint_url=moto.url).put_parameter(
            Name=name, Value=f"ami-0feed{region.replace('-', '')}", Type="String",
            DataType="aws:ec2:image")
    monkeypatch.setenv("SKYJOBS_AWS_IMAGE_SSM_PARAMETER", name)
    monkeypatch.setenv("SKYJOBS_AWS_ENDPOINT_URL", moto.url)
    p = AwsProvider(AwsConfig.from_env(), regions=REGIONS)
    try:
        assert p.config.image_ssm_parameter == name
        assert await p.resolve_images() == {r: f"ami-0feed{r.replace('-', '')}"
                                            for r in REGIONS}
    finally:
        await p.close()
    # Empty turns the default off: an image id is then required.
    monkeypatch.setenv("SKYJOBS_AWS_IMAGE_SSM_PARAMETER", "")
    p = AwsProvider(AwsConfig.from_env(), regions=REGIONS)
    try:
        with pytest.raises(ConfigError, match="SSM_PARAMETER is empty: no default image"):
            await p.resolve_images()
        assert p.calls["get_parameter"] == 0
    finally:
        await p.close()


async def test_a_parameter_that_is_not_an_ami_is_refused(moto: Any) -> None:
    import boto3

    boto3.client("ssm", region_name="us-east-1", endpoint_url=moto.url).put_parameter(
        Name="/team/not-an-image", Value="ubuntu-24.04", Type="String")
    p = AwsProvider(AwsConfig(endpoint_url=moto.url, image_ssm_parameter="/team/not-an-image"),
                    regions=["us-east-1"])
    try:
        with pytest.raises(ConfigError, match="holds 'ubuntu-24.04', not an AMI id"):
            await p.resolve_images()
    finally:
        await p.close()


async def test_cache_refreshes_after_ttl_and_survives_a_failed_refresh(moto: Any) -> None:
    publish("us-east-1", "ami-0000000000000old1")
    p = AwsProvider(AwsConfig(endpoint_url=moto.url, image_ssm_ttl=3600),
                    regions=["us-east-1"])
    now = [1000.0]
    p.images._clock = lambda: now[0]
    try:
        assert await p.resolve_images() == {"us-east-1": "ami-0000000000000old1"}
        publish("us-east-1", "ami-0000000000000new1")  # AWS released a new image
        now[0] += 3599
        assert await p.image_for("us-east-1") == "ami-0000000000000old1"
        assert p.calls["get_parameter"] == 1
        now[0] += 2
        assert await p.image_for("us-east-1") == "ami-0000000000000new1"
        assert p.calls["get_parameter"] == 2
        unpublish("us-east-1")  # a refresh that fails keeps the image we had
        now[0] += 3601
        assert await p.image_for("us-east-1") == "ami-0000000000000new1"
        assert p.calls["get_parameter"] == 3
    finally:
        await p.close()


# --- the resolver alone, with a fake SSM -----------------------------------------------------


async def test_transient_ssm_errors_are_retried_at_launch_but_refused_at_start() -> None:
    async def throttled(region: str, name: str) -> Any:
        err = ProviderError(f"get_parameter in {region}: ThrottlingException: slow down")
        err.aws_code = "ThrottlingException"  # type: ignore[attr-defined]
        raise err

    resolver = ImageResolver(lambda region: None, DEFAULT_IMAGE_PARAMETER, throttled)
    with pytest.raises(ProviderError) as caught:
        await resolver.image_for("us-east-1")
    assert type(caught.value) is ProviderError  # the runner retries later
    with pytest.raises(ConfigError, match="ThrottlingException"):
        await resolver.resolve(["us-east-1"])


async def test_access_denied_names_the_permission() -> None:
    async def denied(region: str, name: str) -> Any:
        raise FatalProviderError(f"get_parameter in {region}: AccessDeniedException: no")

    resolver = ImageResolver(lambda region: None, DEFAULT_IMAGE_PARAMETER, denied)
    with pytest.raises(FatalProviderError, match="AccessDeniedException"):
        await resolver.image_for("us-east-1")

    async def denied_code(region: str, name: str) -> Any:
        err = ProviderError("get_parameter: AccessDeniedException: no")
        err.aws_code = "AccessDeniedException"  # type: ignore[attr-defined]
        raise err

    resolver = ImageResolver(lambda region: None, DEFAULT_IMAGE_PARAMETER, denied_code)
    with pytest.raises(ConfigError, match="needs ssm:GetParameter"):
        await resolver.resolve(["us-east-1"])


async def test_a_start_that_cannot_reach_ssm_does_not_hang(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aws_images, "RESOLVE_TIMEOUT", 0.05)

    async def hangs(region: str, name: str) -> Any:
        await asyncio.sleep(30)

    resolver = ImageResolver(lambda region: "ami-0e1" if region == "us-east-1" else None,
                             DEFAULT_IMAGE_PARAMETER, hangs)
    with pytest.raises(ConfigError) as caught:
        await resolver.resolve(["us-east-1", "us-west-2"])
    assert str(caught.value).startswith("clouds: aws: no image for us-west-2: ")
    assert "did not answer" in str(caught.value)
