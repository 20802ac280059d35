"""Pure pieces of the AWS provider: error classes by code, user-data, settings, states."""

from __future__ import annotations

import os

import pytest

from skyjobs.exceptions import CapacityError, FatalProviderError, ProviderError
from skyjobs.providers import aws_errors, aws_userdata, base


@pytest.mark.parametrize(("code", "cls"), [
    ("InsufficientInstanceCapacity", CapacityError),
    ("Unsupported", CapacityError),
    ("AuthFailure", FatalProviderError),
    ("InvalidAMIID.Malformed", FatalProviderError),
    ("InvalidSubnetID.NotFound", FatalProviderError),
    ("InstanceLimitExceeded", FatalProviderError),
    ("RequestLimitExceeded", ProviderError),
    ("ServiceUnavailable", ProviderError),
    ("SomethingNewTomorrow", ProviderError),
])
def test_errors_are_classified_by_code_alone(code: str, cls: type[Exception]) -> None:
    # The message says "capacity" for a fatal code: only the code may decide.
    err = aws_errors.classify(code, "insufficient capacity, try later", "run_instances")
    assert type(err) is cls
    assert err.aws_code == code  # type: ignore[attr-defined]


def test_fatal_errors_name_the_setting_to_fix() -> None:
    err = aws_errors.classify("InvalidAMIID.NotFound", "not found", "run_instances in x")
    assert "SKYJOBS_AWS_IMAGE_ID" in str(err)


SHA = "ab" * 32


def test_user_data_round_trips_the_agent_env() -> None:
    env = {"SKYJOBS_CONTROLLER_URL": "http://10.0.0.5:8765", "SKYJOBS_ATTEMPT_ID": "3",
           "SKYJOBS_AGENT_TOKEN": "a'b\"c $HOME", "SKYJOBS_NODE_RANK": "1",
           "SKYJOBS_AGENT_SHA256": SHA}
    script = aws_userdata.render(env, agent_user="ubuntu")
    assert script.startswith("#!/bin/bash\n")
    assert aws_userdata.ENV_BEGIN in script.splitlines()  # the marker harnesses look for
    assert "--uid=ubuntu" in script
    assert aws_userdata.parse_agent_env(script) == {
        **env, "SKYJOBS_METADATA_URL": "http://169.254.169.254"}


def test_user_data_by_default_runs_the_served_agent_without_pip() -> None:
    script = aws_userdata.render({"SKYJOBS_AGENT_SHA256": SHA})
    assert "/agent.pyz" in script and "SKYJOBS_AGENT_SHA256" in script
    assert "pip install" not in script and "skyjobs[aws]" not in script
    assert '"$py" -I /opt/skyjobs/agent.pyz' in script


def test_user_data_with_a_package_spec_pip_installs_it() -> None:
    script = aws_userdata.render({}, "skyjobs[aws]==0.1.0", agent_user="ubuntu")
    assert "pip install --quiet 'skyjobs[aws]==0.1.0'" in script
    assert "/opt/skyjobs/venv/bin/python -m skyjobs agent" in script
    assert "agent.pyz" not in script


def test_user_data_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(ValueError, match="plain NAME=value"):
        aws_userdata.render({"BAD KEY": "x"})
    with pytest.raises(ValueError, match="plain NAME=value"):
        aws_userdata.render({"K": "two\nlines"})
    with pytest.raises(ValueError, match="plain NAME=value"):
        aws_userdata.render({"K": "carriage\rreturn"})  # a line break to splitlines
    with pytest.raises(ValueError, match="16 KiB"):
        aws_userdata.render({"K": "x" * 17000})
    with pytest.raises(ValueError, match="no skyjobs agent environment"):
        aws_userdata.parse_agent_env("#!/bin/bash\necho hi\n")


aws = pytest.importorskip("skyjobs.providers.aws",
                          reason="the AWS provider needs aioboto3 (extra: aws)")


def test_config_runs_the_served_agent_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SKYJOBS_AWS_PACKAGE_SPEC", raising=False)
    assert aws.AwsConfig.from_env().package_spec == ""


def test_config_from_env_per_region_and_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "SKYJOBS_AWS_IMAGE_ID": "us-east-1=ami-east,us-west-2=ami-west",
        "SKYJOBS_AWS_SECURITY_GROUP_IDS": "sg-all,us-east-1=sg-east",
        "SKYJOBS_AWS_SUBNETS": "us-east-1a=subnet-a, us-east-1b=subnet-b",
        "SKYJOBS_AWS_INSTANCE_PROFILE": "skyjobs-node",
        "SKYJOBS_AWS_REGIONS": "us-east-1,us-west-2",
        "SKYJOBS_AWS_PACKAGE_SPEC": "skyjobs[aws]==0.1.0",
    }.items():
        monkeypatch.setenv(key, value)
    cfg = aws.AwsConfig.from_env()
    assert cfg.image_for("us-west-2") == "ami-west"
    with pytest.raises(FatalProviderError, match="no AMI for eu-west-1"):
        cfg.image_for("eu-west-1")
    assert cfg.explicit_image("us-east-1") == "ami-east"
    assert cfg.explicit_image("eu-west-1") is None
    assert cfg.image_ssm_parameter == aws.DEFAULT_IMAGE_PARAMETER
    assert cfg.groups_for("us-east-1") == ["sg-east", "sg-all"]
    assert cfg.groups_for("us-west-2") == ["sg-all"]
    assert cfg.subnet_for("us-east-1b") == "subnet-b"
    assert cfg.subnet_for("us-east-1c") is None
    assert cfg.regions == ("us-east-1", "us-west-2")
    assert cfg.package_spec == "skyjobs[aws]==0.1.0"
    for key in [k for k in os.environ if k.startswith("SKYJOBS_AWS_")]:
        monkeypatch.delenv(key)
    assert aws.AwsConfig.from_env().endpoint_url is None
    monkeypatch.setenv("SKYJOBS_AWS_SUBNETZ", "x")  # not a setting: ignored, as before
    monkeypatch.setenv("SKYJOBS_AWS_REGIONS", "")
    assert aws.AwsConfig.from_env().regions == ()


def test_client_token_is_stable_and_short() -> None:
    assert aws.client_token("sjab12cd-7-2-0") == aws.client_token("sjab12cd-7-2-0")
    assert aws.client_token("sjab12cd-7-2-0") != aws.client_token("sjab12cd-7-2-1")
    assert len(aws.client_token("x" * 200)) <= 64


@pytest.mark.parametrize(("state", "code", "expected"), [
    ("pending", "", (base.PENDING, None)),
    ("running", "", (base.RUNNING, None)),
    ("terminated", "Server.SpotInstanceTermination", (base.GONE, base.PREEMPTED)),
    ("shutting-down", "Server.SpotInstanceTermination", (base.STOPPING, base.PREEMPTED)),
    ("stopped", "Server.SpotInstanceShutdown", (base.GONE, base.PREEMPTED)),
    ("terminated", "Client.UserInitiatedShutdown", (base.GONE, base.TERMINATED)),
    ("terminated", "Client.InstanceInitiatedShutdown", (base.GONE, base.LOST)),
    ("terminated", "Server.InternalError", (base.GONE, base.LOST)),
])
def test_instance_states_map_to_controller_states(state: str, code: str,
                                                  expected: tuple[str, str | None]) -> None:
    inst = {"State": {"Name": state}, "StateReason": {"Code": code},
            "PrivateIpAddress": "10.0.0.9"}
    info = aws.instance_info("sjab12cd-1-1-0", inst)
    assert (info.state, info.reason) == expected
    assert info.ip == ("10.0.0.9" if state == "running" else None)


def test_default_image_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # A GPU-ready image with python 3.11+ (skyjobs' floor), by AWS's public parameter.
    assert aws.DEFAULT_IMAGE_PARAMETER == ("/aws/service/deeplearning/ami/x86_64/"
                                           "base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id")
    monkeypatch.setenv("SKYJOBS_AWS_IMAGE_ID", "ami-global,us-west-2=ami-west")
    monkeypatch.setenv("SKYJOBS_AWS_IMAGE_SSM_PARAMETER", " /team/ami ")
    monkeypatch.setenv("SKYJOBS_AWS_IMAGE_SSM_TTL", "600")
    cfg = aws.AwsConfig.from_env()
    assert cfg.explicit_image("us-west-2") == "ami-west"
    assert cfg.explicit_image("eu-west-1") == "ami-global"
    assert cfg.image_ssm_ttl == 600
    assert aws.AwsProvider(cfg).images.parameter == "/team/ami"
    monkeypatch.setenv("SKYJOBS_AWS_IMAGE_SSM_TTL", "soon")
    with pytest.raises(FatalProviderError, match="image_ssm_ttl"):
        aws.AwsConfig.from_env()
