"""What the controller writes to disk: private from the first byte, atomic, durable."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from skyjobs.config import load_config
from skyjobs.controller.daemon import Controller, read_or_create_secret
from skyjobs.fsutil import TMP_SUFFIX, atomic_write
from skyjobs.node.buckets import sync_tree
from skyjobs.providers.fake import FakeProvider
from tests.unit.harness import TASK, Harness, submit


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_state_dir_and_everything_in_it_is_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    old_umask = os.umask(0o022)
    ctl = Controller(load_config(state_dir=state, port=0), providers={"local": FakeProvider()})
    try:
        await ctl.start()
        import aiohttp

        async with aiohttp.ClientSession() as http:
            await submit(Harness(ctl, FakeProvider(), http), TASK)
        loose = [p for p in [state, *state.rglob("*")]
                 if mode(p) & 0o077 and not p.name.startswith("controller.lock")]
        assert not loose, [(str(p), oct(mode(p))) for p in loose]
        assert (state / "state.db-wal").exists() or any(state.glob("*-wal"))
    finally:
        await ctl.shutdown()
        os.umask(old_umask)


def test_an_empty_secret_file_gets_a_fresh_secret(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("\n")
    value = read_or_create_secret(token)
    assert len(value) >= 32 and token.read_text().strip() == value
    assert read_or_create_secret(token) == value  # stable once written


def test_atomic_write_is_private_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "f"
    atomic_write(path, "one")
    atomic_write(path, b"two")
    assert path.read_text() == "two" and mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_a_checkpoint_rewritten_within_the_second_at_the_same_size_is_synced(
        tmp_path: Path) -> None:
    src, dst = tmp_path / "job", tmp_path / "bucket"
    src.mkdir()
    ckpt = src / "step.txt"
    ckpt.write_text("step 10")
    assert sync_tree(src, dst) == 1
    stamp = int(time.time())
    os.utime(ckpt, ns=(stamp * 10**9 + 1000, stamp * 10**9 + 1000))
    assert sync_tree(src, dst) == 1
    ckpt.write_text("step 11")  # same size, same second
    os.utime(ckpt, ns=(stamp * 10**9 + 2000, stamp * 10**9 + 2000))
    assert sync_tree(src, dst) == 1
    assert (dst / "step.txt").read_text() == "step 11"
    (src / f".x{TMP_SUFFIX}").write_text("half")
    assert sync_tree(src, dst) == 0  # a writer's temporary is never copied on


def test_a_node_that_never_writes_does_not_upload_its_stale_copy(tmp_path: Path) -> None:
    """Two nodes COPY one bucket; rank 0 checkpoints, rank 1 only read it at start."""
    from skyjobs.node.buckets import MountedBucket

    bucket = tmp_path / "bucket"
    bucket.mkdir()
    (bucket / "state.json").write_text('{"step": 10}')
    rank0 = MountedBucket(tmp_path / "n0", bucket, "COPY")
    rank1 = MountedBucket(tmp_path / "n1", bucket, "COPY")
    rank0.prepare()
    rank1.prepare()
    (tmp_path / "n0" / "state.json").write_text('{"step": 49}')
    assert rank0.upload() == 1
    assert rank1.upload() == 0  # periodic and exit uploads of the node that never wrote
    assert (bucket / "state.json").read_text() == '{"step": 49}'
    (tmp_path / "n1" / "own.txt").write_text("rank 1's own file")
    assert rank1.upload() == 1 and (bucket / "own.txt").exists()


def test_a_checkpoint_replaced_during_its_upload_is_uploaded_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job replaces its checkpoint while the notice upload copies it: the bucket must
    not end up with the old content under the new file's time (it would look current for
    ever, and the next attempt would resume behind)."""
    import shutil

    from skyjobs.node.buckets import MountedBucket

    bucket, target = tmp_path / "bucket", tmp_path / "node"
    bucket.mkdir()
    node = MountedBucket(target, bucket, "COPY")
    node.prepare()
    ckpt = target / "state.json"
    ckpt.write_text('{"step": 140}')
    real = shutil.copyfileobj

    def copy_then_replace(fin, fout, length=0):  # type: ignore[no-untyped-def]
        real(fin, fout, length)
        fresh = target / ".fresh"
        fresh.write_text('{"step": 143}')
        os.utime(fresh, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        os.replace(fresh, ckpt)  # the job's atomic checkpoint, mid-upload

    monkeypatch.setattr(shutil, "copyfileobj", copy_then_replace)
    assert node.upload() == 1
    monkeypatch.setattr(shutil, "copyfileobj", real)
    assert (bucket / "state.json").read_text() == '{"step": 140}'
    assert node.upload() == 1  # the exit upload sees the replaced file as changed
    assert (bucket / "state.json").read_text() == '{"step": 143}'
