"""Checkpoint buckets on a node: MOUNT (live view of the bucket) and COPY (synced copy).

Runs inside the agent, so stdlib only (an ``s3://`` bucket imports its module, and boto3,
only when a task uses one). ``local://NAME[/PATH]`` buckets are directories under the
controller's ``buckets/`` folder, shared by every local instance, which is what makes the
next attempt see what the last one saved. COPY mode downloads at start and uploads
periodically, on a preemption notice and when the job exits; each file is replaced
atomically in the bucket, so a preemption mid-upload never leaves a torn checkpoint.
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from skyjobs.checkpoint.buckets import local_bucket_dir, parse_bucket
from skyjobs.fsutil import TMP_SUFFIX, atomic_copy


def node_path(target: str, fs_root: Path | None) -> Path:
    """Where a task's target path lives on this node.

    On a real VM the path is used as written. A local instance shares the host's file system
    with its siblings, so absolute targets are placed under the instance's own root.
    """
    if target.startswith("~/"):
        return Path.home() / target[2:]
    if fs_root is None:
        return Path(target)
    return fs_root / target.lstrip("/")


def _copy_file_atomic(src: Path, dst: Path) -> tuple[int, int]:
    # Durable before the next step trusts it: a checkpoint that vanishes in a crash after
    # its upload was reported would send the next attempt back in time.
    dst.parent.mkdir(parents=True, exist_ok=True)
    return atomic_copy(src, dst)


def _changed(src: Path, dst: Path) -> bool:
    try:
        a, b = src.stat(), dst.stat()
    except FileNotFoundError:
        return True
    # Nanoseconds, not seconds: a checkpoint rewritten within the second at the same size
    # (step 10 -> step 11) must still count as changed, or a resume goes back in time.
    return a.st_size != b.st_size or a.st_mtime_ns != b.st_mtime_ns


Seen = dict[str, tuple[int, int]]  # relative path -> (size, mtime_ns) as last synced


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def sync_tree(src: Path, dst: Path, seen: Seen | None = None, *, only_changed: bool = False
              ) -> int:
    """Copy new and changed files from src to dst; returns how many were copied.

    ``seen`` records what each file was when last synced; with ``only_changed`` a file is
    copied only if it changed in src since then. That is what uploads need: a node that
    never writes a checkpoint (rank 1 of a job whose rank 0 saves) must not push its stale
    copy over the one rank 0 just uploaded. Deletions are not propagated: losing a
    checkpoint is worse than keeping a stale file.
    """
    copied = 0
    if not src.exists():
        return 0
    for dirpath, _dirs, files in os.walk(src):
        for name in files:
            if name.endswith(TMP_SUFFIX):
                continue
            s = Path(dirpath) / name
            rel = s.relative_to(src).as_posix()
            try:
                now = _stamp(s)
            except FileNotFoundError:
                continue  # replaced between listing and now; the next round has it
            if only_changed and seen is not None and seen.get(rel) == now:
                continue
            d = dst / rel
            if _changed(s, d):
                # What was really copied: the file may have been replaced since `now`.
                now = _copy_file_atomic(s, d)
                copied += 1
            if seen is not None:
                seen[rel] = now  # the copy keeps the mtime: both sides look like this now
    return copied


@dataclass
class MountedBucket:
    target: Path
    bucket: Path
    mode: str  # "MOUNT" or "COPY"
    _seen: Seen = field(default_factory=dict)

    def prepare(self) -> None:
        self.bucket.mkdir(parents=True, exist_ok=True)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        if self.mode == "MOUNT":
            if self.target.is_symlink() or self.target.is_file():
                self.target.unlink()
            elif self.target.is_dir():
                shutil.rmtree(self.target)
            self.target.symlink_to(self.bucket, target_is_directory=True)
        else:
            self.target.mkdir(parents=True, exist_ok=True)
            sync_tree(self.bucket, self.target, self._seen)

    def upload(self) -> int:
        """COPY: push what this node changed since it last synced, nothing else."""
        if self.mode != "COPY":
            return 0
        return sync_tree(self.target, self.bucket, self._seen, only_changed=True)


class BucketSet:
    """All buckets of a node, with one lock so periodic and notice uploads never overlap."""

    def __init__(self, buckets: list[Any]) -> None:
        self.buckets = buckets
        self._lock = threading.Lock()

    def prepare(self) -> None:
        for b in self.buckets:
            b.prepare()

    def refresh_copies(self) -> None:
        """Download again what changed in COPY buckets (MOUNT views are live already)."""
        with self._lock:
            for b in self.buckets:
                if b.mode == "COPY":
                    b.prepare()

    def upload(self) -> int:
        with self._lock:
            return sum(b.upload() for b in self.buckets)

    @property
    def has_copy(self) -> bool:
        return any(b.mode == "COPY" for b in self.buckets)


class Bucket(Protocol):
    mode: str

    def prepare(self) -> None:
        """Mount, or download the bucket into the target (COPY)."""

    def upload(self) -> int:
        """COPY mode: push new and changed files; returns how many."""


def make_bucket(entry: dict[str, Any], fs_root: Path | None) -> Bucket:
    """entry: {"target", "source", "mode", ...} as the controller sends it to the agent."""
    target = node_path(entry["target"], fs_root)
    scheme, _, _ = parse_bucket(entry["source"])
    if scheme == "local":
        return MountedBucket(target, local_bucket_dir(entry["source"],
                                                      Path(entry["buckets_root"])),
                             entry["mode"])
    if scheme == "s3":
        from skyjobs.node.s3 import S3Bucket  # type: ignore[import-not-found,unused-ignore]

        return S3Bucket(target, entry["source"], entry["mode"])  # type: ignore[no-any-return,unused-ignore]
    if scheme == "gs":
        from skyjobs.node.gcs import GcsBucket  # stdlib only, but most nodes never need it

        return GcsBucket(target, entry["source"], entry["mode"])
    raise ValueError(f"{entry['source']}: buckets of scheme {scheme}:// are not supported here")
