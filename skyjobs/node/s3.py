"""``s3://BUCKET[/PATH]`` checkpoint buckets on a node (runs inside the agent's threads).

COPY mode goes through the S3 API with boto3's blocking client: download everything under
the prefix at ``prepare()``, upload new and changed files on ``upload()``. An S3 object only
appears once its upload completes (multipart included), so a preemption mid-upload never
leaves a torn checkpoint in the bucket. MOUNT mode mounts the prefix with rclone (or s3fs)
through FUSE, when the node image has one of them.

Credentials come from the node's standard chain: on EC2 the instance profile; boto3, rclone
and s3fs all honour ``AWS_ENDPOINT_URL``-style overrides for tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from skyjobs.checkpoint.buckets import parse_bucket
from skyjobs.exceptions import SkyjobsError

SKIP_SUFFIXES = (".skyjobs-tmp",)


class S3BucketError(SkyjobsError, OSError):
    """An S3 bucket could not be synced or mounted (an OSError, as the agent expects)."""


def _region() -> str:
    # S3 redirects to a bucket's own region; a region is needed only to sign the first call.
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


class S3Bucket:
    def __init__(self, target: Path, source: str, mode: str) -> None:
        scheme, name, prefix = parse_bucket(source)
        if scheme != "s3" or not name:
            raise ValueError(f"{source}: not an s3://BUCKET[/PATH] source")
        if mode not in ("MOUNT", "COPY"):
            raise ValueError(f"{source}: unknown mode {mode!r}")
        self.target = target
        self.source = source
        self.mode = mode
        self.bucket = name
        self.prefix = prefix
        # rel path -> (size, mtime_ns) of what the bucket holds, as far as we know.
        self._synced: dict[str, tuple[int, int]] = {}
        self._etags: dict[str, str] = {}  # rel path -> ETag of the version we downloaded
        self._client: Any = None

    # --- common ----------------------------------------------------------------------------

    def prepare(self) -> None:
        if self.mode == "COPY":
            self._download_all()
        else:
            self._mount()

    def upload(self) -> int:
        return self._upload_changed() if self.mode == "COPY" else 0

    def _s3(self) -> Any:
        if self._client is None:
            import boto3  # only nodes with s3:// buckets need boto3

            self._client = boto3.client("s3", region_name=_region())
        return self._client

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "?")
            raise S3BucketError(f"{self.source}: {what}: {code}") from None
        except (BotoCoreError, Boto3Error) as err:  # Boto3Error: the transfer manager's
            raise S3BucketError(f"{self.source}: {what}: {err}") from None

    # --- COPY ------------------------------------------------------------------------------

    def _download_all(self) -> None:
        self.target.mkdir(parents=True, exist_ok=True)
        pages = self._s3().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else "")
        for page in self._guard("list", list, pages):
            for obj in page.get("Contents", []):
                self._download_one(obj)

    def _download_one(self, obj: dict[str, Any]) -> None:
        key = str(obj["Key"])
        rel = key[len(self.prefix) + 1:] if self.prefix else key
        if not rel or rel.endswith("/") or rel.rsplit("/", 1)[-1].startswith(".skyjobs-probe"):
            return
        if ".." in Path(rel).parts or rel.startswith("/"):
            return  # a key that would escape the target is not ours to write
        dst = self.target / rel
        mtime_ns = int(obj["LastModified"].timestamp()) * 1_000_000_000
        size = int(obj["Size"])
        etag = str(obj.get("ETag", ""))
        try:
            st = dst.stat()
            # LastModified has whole seconds: an object rewritten within the second at the
            # same size looks unchanged by size and time; its ETag tells (when we know it).
            known = self._etags.get(rel)
            if (st.st_size, st.st_mtime_ns) == (size, mtime_ns) and known in (None, etag):
                self._synced[rel] = (size, mtime_ns)
                return
        except FileNotFoundError:
            pass
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.skyjobs-tmp")
        self._guard(f"download {key}", self._s3().download_file, self.bucket, key, str(tmp))
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, dst)
        self._synced[rel] = (size, mtime_ns)
        self._etags[rel] = etag

    def _upload_changed(self) -> int:
        copied = 0
        if not self.target.is_dir():
            return 0
        for dirpath, _dirs, files in os.walk(self.target):
            for name in files:
                if name.endswith(SKIP_SUFFIXES):
                    continue
                path = Path(dirpath) / name
                rel = path.relative_to(self.target).as_posix()
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue  # replaced between listing and now; the next round has it
                seen = (st.st_size, st.st_mtime_ns)
                if self._synced.get(rel) == seen:
                    continue
                try:
                    self._guard(f"upload {rel}", self._s3().upload_file, str(path),
                                self.bucket, self._key(rel))
                except FileNotFoundError:
                    continue
                # The stat from before the upload: a change during it is uploaded next time.
                self._synced[rel] = seen
                copied += 1
        return copied

    # --- MOUNT -----------------------------------------------------------------------------

    def _mount(self) -> None:
        self.target.mkdir(parents=True, exist_ok=True)
        if os.path.ismount(self.target):
            return  # mounted by an earlier start of this agent
        command = self._mount_command()
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # breaks rclone
        try:
            subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)
        except subprocess.CalledProcessError as err:
            detail = err.stderr.decode(errors="replace")[-300:]
            raise S3BucketError(f"{self.source}: {command[0]} mount failed: {detail}") from None
        except subprocess.TimeoutExpired:
            raise S3BucketError(f"{self.source}: {command[0]} mount timed out") from None

    def _mount_command(self) -> list[str]:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        remote = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        if shutil.which("rclone"):
            cmd = ["rclone", "mount", f":s3:{remote}", str(self.target), "--daemon",
                   "--s3-provider", "AWS", "--s3-env-auth", "--s3-region", _region(),
                   # Write back soon after close: a notice leaves two minutes at most.
                   "--vfs-cache-mode", "writes", "--vfs-write-back", "1s"]
            return cmd + (["--s3-endpoint", endpoint] if endpoint else [])
        if shutil.which("s3fs"):
            opts = ["iam_role=auto"] if "AWS_ACCESS_KEY_ID" not in os.environ else []
            if endpoint:
                opts += [f"url={endpoint}", "use_path_request_style"]
            bucket = f"{self.bucket}:/{self.prefix}" if self.prefix else self.bucket
            return ["s3fs", bucket, str(self.target)] + (["-o", ",".join(opts)] if opts else [])
        raise S3BucketError(f"{self.source}: mode MOUNT needs rclone or s3fs on the node "
                            "image (with FUSE); install one, or use mode: COPY")
