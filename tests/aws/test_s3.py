"""S3 checkpoint buckets against moto: the node side (S3Bucket) and the submit-time check."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aioboto3", reason="the AWS tests need aioboto3 (extra: aws)")
pytest.importorskip("moto.server", reason="the AWS tests need moto[server] (extra: test)")

import boto3  # noqa: E402
from moto.s3.exceptions import S3ClientError  # noqa: E402
from moto.s3.models import S3Backend  # noqa: E402

from skyjobs.exceptions import SpecError  # noqa: E402
from skyjobs.node.buckets import make_bucket  # noqa: E402
from skyjobs.node.s3 import S3Bucket, S3BucketError  # noqa: E402
from skyjobs.providers.aws import check_bucket  # noqa: E402


@pytest.fixture
def s3(moto: Any) -> Any:
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket="ckpt")
    return client


def keys(s3: Any) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket="ckpt").get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket="ckpt", Key=o["Key"])["Body"].read() for o in listed}


def test_copy_mode_downloads_then_uploads_only_what_changed(s3: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket="ckpt", Key="run/old/state.json", Body=b'{"step": 5}')
    s3.put_object(Bucket="ckpt", Key="elsewhere.txt", Body=b"not under the prefix")
    node = make_bucket({"target": str(tmp_path / "a"), "source": "s3://ckpt/run",
                        "mode": "COPY"}, None)
    assert isinstance(node, S3Bucket)
    node.prepare()
    assert (tmp_path / "a" / "old" / "state.json").read_bytes() == b'{"step": 5}'
    assert not (tmp_path / "a" / "elsewhere.txt").exists()
    assert node.upload() == 0  # what was just downloaded is not sent back

    (tmp_path / "a" / "new.bin").write_bytes(b"x" * 10)
    (tmp_path / "a" / "old" / "state.json").write_bytes(b'{"step": 10}')
    (tmp_path / "a" / ".partial.skyjobs-tmp").write_bytes(b"half")
    assert node.upload() == 2
    assert node.upload() == 0
    assert keys(s3) == {"run/old/state.json": b'{"step": 10}', "run/new.bin": b"x" * 10,
                        "elsewhere.txt": b"not under the prefix"}

    # The next attempt, on another node, starts from what the last one uploaded.
    other = S3Bucket(tmp_path / "b", "s3://ckpt/run", "COPY")
    other.prepare()
    assert (tmp_path / "b" / "old" / "state.json").read_bytes() == b'{"step": 10}'
    assert (tmp_path / "b" / "new.bin").stat().st_size == 10


def test_copy_mode_errors_are_oserrors_with_the_source(moto: Any, tmp_path: Path) -> None:
    node = S3Bucket(tmp_path / "a", "s3://no-such-bucket/x", "COPY")
    with pytest.raises(S3BucketError, match="s3://no-such-bucket/x.*NoSuchBucket") as caught:
        node.prepare()
    assert isinstance(caught.value, OSError)  # the agent's upload loop catches OSError
    (tmp_path / "a" / "f").write_text("data")
    with pytest.raises(OSError, match="NoSuchBucket"):
        node.upload()


def test_mount_mode_without_rclone_or_s3fs_says_so(moto: Any, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    node = S3Bucket(tmp_path / "m", "s3://ckpt/run", "MOUNT")
    with pytest.raises(S3BucketError, match="rclone or s3fs"):
        node.prepare()
    assert node.upload() == 0


def test_mount_mode_runs_rclone_against_the_endpoint(moto: Any, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in rclone that records its arguments: the FUSE mount itself is rclone's job.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "args"
    fake = bin_dir / "rclone"
    fake.write_text(f'#!/bin/sh\necho "$@" > {record}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/ssl/x.pem")
    S3Bucket(tmp_path / "m", "s3://ckpt/run", "MOUNT").prepare()
    args = record.read_text().split()
    assert args[:4] == ["mount", ":s3:ckpt/run", str(tmp_path / "m"), "--daemon"]
    assert args[args.index("--s3-endpoint") + 1] == moto.url
    assert "--s3-env-auth" in args


async def test_check_bucket_accepts_a_writable_bucket_and_leaves_no_probe(s3: Any) -> None:
    await check_bucket("s3://ckpt/run1")
    await check_bucket("s3://ckpt")
    assert keys(s3) == {}


async def test_check_bucket_rejects_a_missing_bucket(moto: Any) -> None:
    with pytest.raises(SpecError, match="bucket nope does not exist"):
        await check_bucket("s3://nope/run1")


async def test_check_bucket_rejects_a_read_only_bucket(s3: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args: Any, **kwargs: Any) -> Any:
        raise S3ClientError("AccessDenied", "Access Denied")

    monkeypatch.setattr(S3Backend, "put_object", denied)
    with pytest.raises(SpecError, match="cannot read and write bucket ckpt"):
        await check_bucket("s3://ckpt/run1")


async def test_check_bucket_rejects_a_malformed_source(moto: Any) -> None:
    with pytest.raises(SpecError, match="not an s3://"):
        await check_bucket("gs://ckpt/run1")
