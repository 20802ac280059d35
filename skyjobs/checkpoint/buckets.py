"""Checkpoint buckets as a task names them: ``local://NAME[/PATH]``, ``s3://BUCKET[/PREFIX]``.

What both sides agree on: how a source is parsed and where a ``local://`` bucket lives under
the controller's state directory. Mounting and syncing on a node is in
:mod:`skyjobs.node.buckets`; the submit-time check that a cloud bucket is usable is the
provider's (``BucketChecker``).
"""

from __future__ import annotations

from pathlib import Path


def parse_bucket(source: str) -> tuple[str, str, str]:
    """``scheme://name/path`` -> (scheme, name, path)."""
    scheme, _, rest = source.partition("://")
    name, _, path = rest.partition("/")
    return scheme, name, path.strip("/")


def local_bucket_dir(source: str, buckets_root: Path) -> Path:
    scheme, name, path = parse_bucket(source)
    if scheme != "local":
        raise ValueError(f"{source} is not a local:// bucket")
    if name in ("", ".", "..") or ".." in Path(path).parts:
        raise ValueError(f"{source}: invalid bucket name or path")
    return buckets_root / name / path if path else buckets_root / name
