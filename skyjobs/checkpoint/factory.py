"""Build a node's bucket mounts from the task payload, by URL scheme.

Cloud-specific modules are imported only when a task uses them, so the agent stays
stdlib-only for local buckets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from skyjobs.checkpoint.buckets import MountedBucket, local_bucket_dir, node_path, parse_bucket


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
        from skyjobs.checkpoint.s3 import S3Bucket  # type: ignore[import-not-found,unused-ignore]

        return S3Bucket(target, entry["source"], entry["mode"])  # type: ignore[no-any-return,unused-ignore]
    raise ValueError(f"{entry['source']}: buckets of scheme {scheme}:// are not supported here")
