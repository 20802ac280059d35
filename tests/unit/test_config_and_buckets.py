from __future__ import annotations

import os
from pathlib import Path

import pytest

from skyjobs.checkpoint.buckets import local_bucket_dir
from skyjobs.config import load_config
from skyjobs.exceptions import ConfigError
from skyjobs.node.buckets import BucketSet, MountedBucket, node_path


def test_config_precedence_flag_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.yaml").write_text("port: 9000\nheartbeat_timeout: 7\nzone_cooldown: 5\n")
    monkeypatch.setenv("SKYJOBS_HEARTBEAT_TIMEOUT", "9")
    cfg = load_config(state_dir=tmp_path, port=None, host="0.0.0.0")
    assert cfg.port == 9000  # from the file
    assert cfg.heartbeat_timeout == 9  # env beats the file
    assert cfg.host == "0.0.0.0"  # the flag
    assert cfg.zone_cooldown == 5
    assert load_config(state_dir=tmp_path, port=1234).port == 1234


@pytest.mark.parametrize("text", ["port: -1\n", "no_such_option: 1\n", "[1, 2]\n", "a: [\n"])
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError):
        load_config(state_dir=tmp_path)


def test_local_bucket_paths_are_confined(tmp_path: Path) -> None:
    assert local_bucket_dir("local://b/x/y", tmp_path) == tmp_path / "b" / "x" / "y"
    for bad in ("local://../etc", "local://b/../../etc", "s3://b"):
        with pytest.raises(ValueError):
            local_bucket_dir(bad, tmp_path)
    assert node_path("/ckpt", tmp_path / "root") == tmp_path / "root" / "ckpt"
    assert node_path("/ckpt", None) == Path("/ckpt")
    assert node_path("~/c", None) == Path(os.path.expanduser("~/c"))


def test_mount_mode_is_a_live_view(tmp_path: Path) -> None:
    bucket, target = tmp_path / "bucket", tmp_path / "node" / "ckpt"
    MountedBucket(target, bucket, "MOUNT").prepare()
    (target / "a.txt").write_text("1")
    assert (bucket / "a.txt").read_text() == "1"


def test_copy_mode_downloads_then_uploads_changes_only(tmp_path: Path) -> None:
    bucket, target = tmp_path / "bucket", tmp_path / "node" / "ckpt"
    (bucket / "sub").mkdir(parents=True)
    (bucket / "sub" / "old.txt").write_text("old")
    buckets = BucketSet([MountedBucket(target, bucket, "COPY")])
    buckets.prepare()
    assert (target / "sub" / "old.txt").read_text() == "old"
    assert buckets.upload() == 0
    (target / "new.txt").write_text("new")
    assert buckets.upload() == 1
    assert (bucket / "new.txt").read_text() == "new"
    assert not list(bucket.rglob("*.skyjobs-tmp"))


def test_refresh_fetches_a_checkpoint_uploaded_after_the_first_download(tmp_path: Path) -> None:
    bucket, target = tmp_path / "bucket", tmp_path / "node" / "ckpt"
    bucket.mkdir()
    (bucket / "state.json").write_text('{"step": 10}')
    buckets = BucketSet([MountedBucket(target, bucket, "COPY")])
    buckets.prepare()
    (bucket / "state.json").write_text('{"step": 42}')  # the old attempt's notice upload
    os.utime(bucket / "state.json", (0, 10**9 + 5))
    buckets.refresh_copies()
    assert (target / "state.json").read_text() == '{"step": 42}'
