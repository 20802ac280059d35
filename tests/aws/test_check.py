"""`skyjobs check` against moto: credentials found (never shown), the default image
resolvable or the one-line refusal, and a task's s3 buckets reachable or not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("moto")

from skyjobs.pricing.catalog import load_cloud  # noqa: E402
from tests.aws.conftest import AMI  # noqa: E402
from tests.aws.test_images import publish  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

SECRET = "fake-secret-key-never-printed-9f3c"
REGIONS = sorted({o.region for o in load_cloud("aws")})


def check(moto: Any, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "SKYJOBS_"))}
    full.update({"AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE", "AWS_SECRET_ACCESS_KEY": SECRET,
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                 "SKYJOBS_AWS_ENDPOINT_URL": moto.url, "SKYJOBS_CLOUDS": "aws,local",
                 "SKYJOBS_STATE_DIR": str(tmp_path / "state"), **env})
    r = subprocess.run([sys.executable, "-m", "skyjobs", "check", *args], capture_output=True,
                       text=True, env=full, timeout=90, cwd=ROOT)
    assert SECRET not in r.stdout + r.stderr and "AKIAFAKE" not in r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return r


def test_explicit_image_and_credentials_from_the_environment(moto: Any, tmp_path: Path) -> None:
    r = check(moto, tmp_path, SKYJOBS_AWS_IMAGE_ID=AMI)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert "aws: enabled in this machine's config" in lines
    assert "aws: credentials: found (env)" in lines
    assert f"aws: endpoint: {moto.url} (SKYJOBS_AWS_ENDPOINT_URL)" in lines
    for region in REGIONS:
        assert f"aws: image {region}: {AMI} (SKYJOBS_AWS_IMAGE_ID)" in lines
    assert "FAIL" not in r.stdout


def test_default_image_from_ssm_or_the_refusal_line(moto: Any, tmp_path: Path) -> None:
    r = check(moto, tmp_path)  # moto ships no public DLAMI parameter
    assert r.returncode == 1
    refusal = [line for line in r.stdout.splitlines() if line.startswith("aws: FAIL: images: ")]
    assert len(refusal) == 1, r.stdout
    assert "clouds: aws: no image for " in refusal[0] and "SKYJOBS_AWS_IMAGE_ID" in refusal[0]

    for i, region in enumerate(REGIONS):
        publish(region, f"ami-0d1a0000000000{i:02d}")
    r = check(moto, tmp_path)
    assert r.returncode == 0, r.stdout
    for i, region in enumerate(REGIONS):
        assert f"aws: image {region}: ami-0d1a0000000000{i:02d} (ssm:/aws/service/" in r.stdout


def test_task_buckets_reachable_or_not(moto: Any, tmp_path: Path) -> None:
    import boto3

    boto3.client("s3", region_name="us-east-1", endpoint_url=moto.url).create_bucket(
        Bucket="ckpt-ok")
    task = tmp_path / "t.yaml"
    task.write_text("resources: {cloud: aws, instance_type: m6i.large}\nfile_mounts:\n"
                    "  /a: {source: 's3://ckpt-ok/run1', mode: COPY}\n"
                    "  /b: {source: 's3://no-such-bucket'}\nrun: x\n")
    r = check(moto, tmp_path, str(task), SKYJOBS_AWS_IMAGE_ID=AMI)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert f"bucket: {task}: file_mounts./a: s3://ckpt-ok/run1: reachable (listed, wrote and " \
           "deleted a probe object with this machine's credentials)" in lines
    assert any(line.startswith(f"bucket: FAIL: {task}: file_mounts./b: s3://no-such-bucket: ")
               and "does not exist" in line for line in lines)
