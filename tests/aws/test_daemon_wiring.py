"""The daemon builds the AWS provider from SKYJOBS_AWS_* and checks s3 buckets at submit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from skyjobs.config import load_config
from skyjobs.controller.daemon import Controller
from skyjobs.providers.aws import AwsProvider
from tests.aws.conftest import AMI


async def test_aws_from_env_and_bucket_check_at_submit(moto: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.setenv("SKYJOBS_AWS_IMAGE_ID", AMI)
    monkeypatch.setenv("SKYJOBS_AWS_ENDPOINT_URL", moto.url)
    boto3.client("s3", region_name="us-east-1", endpoint_url=moto.url).create_bucket(
        Bucket="ckpt-ok")
    ctl = Controller(load_config(state_dir=tmp_path / "state", port=0, clouds="aws,local"))
    await ctl.start()
    try:
        assert isinstance(ctl.providers["aws"].inner, AwsProvider)
        headers = {"Authorization": f"Bearer {ctl.token}"}

        async def submit(bucket: str) -> tuple[int, Any]:
            task = {"resources": {"cloud": "aws", "instance_type": "p3.2xlarge",
                                  "use_spot": True},
                    "file_mounts": {"/ckpt": {"source": f"s3://{bucket}", "mode": "COPY"}},
                    "run": "true"}
            async with aiohttp.ClientSession() as http, http.post(
                    f"{ctl.url}/api/v1/jobs", json={"task": task}, headers=headers) as resp:
                return resp.status, await resp.json()

        status, body = await submit("no-such-bucket")
        assert status == 400 and "file_mounts./ckpt" in body["error"], body
        assert ctl.store.sync.list_jobs() == []
        status, body = await submit("ckpt-ok")
        assert status == 201, body
        await ctl.store.call(ctl.store.sync.transition, body["id"], "CANCELLING", "test")
    finally:
        await ctl.shutdown()


async def test_aws_without_any_image_is_refused_at_start_with_one_line(
        moto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No SKYJOBS_AWS_IMAGE_ID and no public SSM image (moto has none): the controller does
    not start with aws enabled, rather than failing every job at launch."""
    from skyjobs.exceptions import ConfigError

    monkeypatch.delenv("SKYJOBS_AWS_IMAGE_ID", raising=False)
    monkeypatch.setenv("SKYJOBS_AWS_ENDPOINT_URL", moto.url)
    ctl = Controller(load_config(state_dir=tmp_path / "state", port=0, clouds="aws,local"))
    with pytest.raises(ConfigError) as err:
        await ctl.start()
    await ctl.shutdown()
    message = str(err.value)
    assert message.startswith("clouds: aws: no image for ") and "\n" not in message
    assert "SKYJOBS_AWS_IMAGE_ID" in message
    assert not (tmp_path / "state" / "controller.json").exists()
