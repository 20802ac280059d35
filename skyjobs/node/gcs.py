"""``gs://BUCKET[/PATH]`` checkpoint buckets on a node (runs inside the agent's threads).

The same contract as :mod:`skyjobs.node.s3`: COPY mode downloads everything under the prefix
at ``prepare()`` and uploads new and changed files on ``upload()``; MOUNT mode mounts the
prefix through FUSE with gcsfuse (or rclone) when the node image has one.

COPY talks to the GCS JSON API with urllib, because nodes get no pip: list, media download,
media upload (resumable above ``RESUMABLE_THRESHOLD``). A GCS object becomes visible only
when its upload completes, whatever the upload type, so a preemption mid-upload never leaves
a torn checkpoint. Downloads go to a temporary file that is renamed into place.

Environment: ``STORAGE_EMULATOR_HOST`` (the endpoint, the convention of Google's own
libraries; default https://storage.googleapis.com) and ``SKYJOBS_METADATA_URL`` (the GCE
metadata server, default http://metadata.google.internal), which hands out the VM service
account's access token. With an emulator and no metadata server, requests carry no token.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from email.message import Message
from pathlib import Path
from typing import Any, TypeVar

from skyjobs.checkpoint.buckets import parse_bucket
from skyjobs.exceptions import SkyjobsError
from skyjobs.fsutil import TMP_SUFFIX

T = TypeVar("T")

DEFAULT_ENDPOINT = "https://storage.googleapis.com"
DEFAULT_METADATA = "http://metadata.google.internal"
TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
SKIP_SUFFIXES = (TMP_SUFFIX,)
PROBE_PREFIX = ".skyjobs-probe"  # the controller's write check; never a checkpoint

RESUMABLE_THRESHOLD = 8 * 1024 * 1024
# Resumable chunks must be multiples of 256 KiB (all but the last).
CHUNK_SIZE = 32 * 256 * 1024
COPY_BUFFER = 1024 * 1024
LIST_PAGE_SIZE = 1000  # the API's maximum
REQUEST_TIMEOUT = 60.0  # per socket operation, not per object
# Bounded retries of 429, 5xx and broken connections: 0.5+1+2+4+8 s between six tries.
RETRIES = 6
RETRY_BASE = 0.5
RETRY_MAX = 8.0
# Refresh the access token this long before the metadata server says it expires.
TOKEN_MARGIN = 60.0
# urllib labels any body form-encoded unless told otherwise.
OCTETS = {"Content-Type": "application/octet-stream"}


class GcsBucketError(SkyjobsError, OSError):
    """A GCS bucket could not be synced or mounted (an OSError, as the agent expects)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status that refused the request, if one did


class _Transient(Exception):
    """A failure worth another try (a truncated body, a digest mismatch)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A resumable upload answers 308 "keep going", which is not a redirect: let it surface
    # as an HTTPError instead of urllib chasing a Location that is not there.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())
# The metadata server is link-local: never through an HTTP proxy.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def endpoint() -> str:
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").strip()
    if not host:
        return DEFAULT_ENDPOINT
    # Google's Python library wants a scheme in it, its Go library takes host:port.
    return (host if "://" in host else f"http://{host}").rstrip("/")


def quote_name(name: str) -> str:
    """An object name as one path segment: GCS wants every '/' in it escaped."""
    return urllib.parse.quote(name, safe="")


def rfc3339_ns(stamp: str) -> int:
    """GCS's ``updated`` (``2024-05-01T12:00:00.123Z``) as nanoseconds since the epoch."""
    dt = datetime.fromisoformat(stamp.replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"{stamp!r}: no time zone")
    whole = int(dt.replace(microsecond=0).timestamp())
    return whole * 1_000_000_000 + dt.microsecond * 1000


def range_end(header: str | None) -> int:
    """How many bytes a resumable session holds, from its ``Range: bytes=0-N`` (or none)."""
    if not header or not header.strip():
        return 0
    match = re.fullmatch(r"bytes=0-([0-9]+)", header.strip())
    if match is None:
        raise ValueError(f"unexpected Range header {header!r}")
    return int(match.group(1)) + 1


def md5_of(hash_header: str | None) -> str | None:
    """The base64 MD5 from ``x-goog-hash: crc32c=...,md5=...`` (composite objects have none)."""
    for part in (hash_header or "").split(","):
        key, sep, value = part.strip().partition("=")
        if sep and key.strip().lower() == "md5":
            return value.strip()
    return None


def relative_name(name: str, prefix: str) -> str | None:
    """Where an object of the listing goes under the target, or None if it is not ours.

    Skipped: folder placeholders, the controller's probes, temporaries, and names that
    would escape the target (``..``, absolute, empty segments) or are not under the prefix.
    """
    if prefix:
        if not name.startswith(prefix + "/"):
            return None
        name = name[len(prefix) + 1:]
    if not name or name.endswith("/") or name.startswith("/"):
        return None
    parts = name.split("/")
    if any(p in ("", ".", "..") or "\x00" in p for p in parts):
        return None
    if parts[-1].startswith(PROBE_PREFIX) or parts[-1].endswith(SKIP_SUFFIXES):
        return None
    return name


class GcsApi:
    """Just enough of the GCS JSON API for checkpoint sync, over urllib, with retries."""

    def __init__(self, source: str, bucket: str) -> None:
        self.source = source
        self.bucket = bucket
        self.endpoint = endpoint()
        self.emulated = "STORAGE_EMULATOR_HOST" in os.environ
        self.metadata_url = (os.environ.get("SKYJOBS_METADATA_URL")
                             or DEFAULT_METADATA).rstrip("/")
        self._token: str | None = None
        self._token_expiry = 0.0
        self._anonymous = False  # an emulator without a metadata server: send no token

    # --- plumbing --------------------------------------------------------------------------

    def _bucket_path(self) -> str:
        return f"/storage/v1/b/{quote_name(self.bucket)}/o"

    def _auth(self) -> dict[str, str]:
        if self._anonymous:
            return {}
        if self._token is None or time.monotonic() >= self._token_expiry:
            self._fetch_token()
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _fetch_token(self) -> None:
        req = urllib.request.Request(self.metadata_url + TOKEN_PATH,
                                     headers={"Metadata-Flavor": "Google"})
        try:
            with _DIRECT.open(req, timeout=2 if self.emulated else 10) as resp:
                data = json.loads(resp.read())
            token = str(data["access_token"])
            expires_in = float(data.get("expires_in", 0))
        except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException) as err:
            if isinstance(err, urllib.error.HTTPError):
                err.close()
            if self.emulated:
                self._anonymous = True  # tests and emulators: no metadata server, no auth
                return
            if isinstance(err, urllib.error.HTTPError) and err.code < 500:
                raise GcsBucketError(
                    f"{self.source}: no access token from the metadata server at "
                    f"{self.metadata_url} (HTTP {err.code}); a gs:// bucket needs a GCE VM "
                    "with a service account", err.code) from None
            raise _Transient(f"access token: {err}") from None
        self._token = token
        self._token_expiry = time.monotonic() + max(expires_in - TOKEN_MARGIN, 0.0)

    def _send(self, method: str, url: str, data: bytes | None = None,
              headers: dict[str, str] | None = None, ok: tuple[int, ...] = (200,),
              ) -> tuple[int, Message, bytes]:
        """One request; statuses in ``ok`` are answers, others raise HTTPError."""
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={**self._auth(), **(headers or {})})
        try:
            with _OPENER.open(req, timeout=REQUEST_TIMEOUT) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            if err.code not in ok:
                raise
            try:
                return err.code, err.headers, err.read()
            finally:
                err.close()

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        delay = RETRY_BASE
        last = ""
        refreshed = False
        for n in range(RETRIES):
            if n:
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
            try:
                return attempt()
            except urllib.error.HTTPError as err:
                detail = _error_detail(err)
                if err.code == 401 and not refreshed and not self._anonymous:
                    refreshed = True  # revoked or expired early: one fresh token
                    self._token = None
                    last = f"HTTP 401: {detail}"
                    continue
                if err.code in (408, 429) or err.code >= 500:
                    last = f"HTTP {err.code}: {detail}"
                    continue
                raise self._refused(what, err.code, detail) from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                    TimeoutError, _Transient, ValueError) as err:
                # ValueError: an answer we could not parse (JSON, Range), as a cut-off body
                # or a meddling proxy gives; worth another try, and never a crash.
                last = str(getattr(err, "reason", None) or err) or type(err).__name__
        raise GcsBucketError(f"{self.source}: {what}: gave up after {RETRIES} tries ({last})")

    def _refused(self, what: str, status: int, detail: str) -> GcsBucketError:
        b = self.bucket
        if status in (401, 403):
            return GcsBucketError(
                f"{self.source}: {what}: no access to bucket {b} (HTTP {status}: {detail}); "
                "the node's service account needs to read and write objects in it", status)
        if status == 404 and what == "list":
            return GcsBucketError(f"{self.source}: bucket {b} does not exist (HTTP 404)", 404)
        if status == 404:
            return GcsBucketError(f"{self.source}: {what}: not found in bucket {b}", 404)
        return GcsBucketError(f"{self.source}: {what}: HTTP {status}: {detail}", status)

    # --- operations ------------------------------------------------------------------------

    def list(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Every object whose name starts with ``prefix``, page by page."""
        page_token = ""
        while True:
            query = {"prefix": prefix, "maxResults": str(LIST_PAGE_SIZE),
                     "fields": "items(name,size,generation,updated),nextPageToken"}
            if page_token:
                query["pageToken"] = page_token
            url = f"{self.endpoint}{self._bucket_path()}?{urllib.parse.urlencode(query)}"
            page = self._retrying("list", functools.partial(self._get_json, url))
            yield from page.get("items", [])
            page_token = page.get("nextPageToken") or ""
            if not page_token:
                return

    def _get_json(self, url: str) -> dict[str, Any]:
        return dict(json.loads(self._send("GET", url)[2]))

    def download(self, name: str, dst: Path) -> str:
        """Write the object to ``dst`` (fsynced); returns the generation downloaded."""
        url = f"{self.endpoint}{self._bucket_path()}/{quote_name(name)}?alt=media"

        def attempt() -> str:
            req = urllib.request.Request(url, headers=self._auth())
            digest = hashlib.md5(usedforsecurity=False)
            with _OPENER.open(req, timeout=REQUEST_TIMEOUT) as resp, open(dst, "wb") as out:
                while chunk := resp.read(COPY_BUFFER):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
                expected = md5_of(resp.headers.get("x-goog-hash"))
                generation = resp.headers.get("x-goog-generation", "")
            if expected and base64.b64encode(digest.digest()).decode() != expected:
                raise _Transient(f"{name}: MD5 mismatch")
            return generation

        return self._retrying(f"download {name}", attempt)

    def upload(self, name: str, path: Path) -> dict[str, Any]:
        """Upload a file as object ``name``; returns the object resource."""
        size = path.stat().st_size
        if size > RESUMABLE_THRESHOLD:
            return self._upload_resumable(name, path, size)
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        url = f"{self.endpoint}/upload{self._bucket_path()}?{query}"

        def attempt() -> dict[str, Any]:
            data = path.read_bytes()  # at most RESUMABLE_THRESHOLD
            _, _, body = self._send("POST", url, data, OCTETS)
            return dict(json.loads(body))

        return self._retrying(f"upload {name}", attempt)

    def _upload_resumable(self, name: str, path: Path, size: int) -> dict[str, Any]:
        query = urllib.parse.urlencode({"uploadType": "resumable", "name": name})
        start = f"{self.endpoint}/upload{self._bucket_path()}?{query}"
        metadata = json.dumps({"name": name}).encode()
        _, headers, _ = self._retrying(f"upload {name}", lambda: self._send(
            "POST", start, metadata, {"Content-Type": "application/json; charset=UTF-8",
                                      "X-Upload-Content-Type": "application/octet-stream",
                                      "X-Upload-Content-Length": str(size)}))
        session = headers.get("Location")
        if not session:
            raise GcsBucketError(f"{self.source}: upload {name}: no resumable session URL")
        offset = 0
        unsure = False  # after a failed chunk, ask the session what it holds first
        result: dict[str, Any] | None = None

        with open(path, "rb") as fh:
            def step() -> dict[str, Any] | None:
                nonlocal offset, unsure
                if unsure:
                    status, hdrs, body = self._send("PUT", session, b"",
                                                    {"Content-Range": f"bytes */{size}",
                                                     **OCTETS}, ok=(200, 201, 308))
                    if status != 308:
                        return dict(json.loads(body))
                    offset = range_end(hdrs.get("Range"))
                    unsure = False
                if offset >= size:  # it holds every byte yet did not finish: ask again
                    unsure = True
                    raise _Transient("the session has all bytes but no object")
                fh.seek(offset)
                chunk = fh.read(CHUNK_SIZE)
                if offset + len(chunk) < size and len(chunk) < CHUNK_SIZE:
                    raise GcsBucketError(f"{self.source}: upload {name}: the file shrank "
                                         "while uploading; it is tried again next round")
                last = offset + len(chunk) - 1
                unsure = True
                status, hdrs, body = self._send(
                    "PUT", session, chunk,
                    {"Content-Range": f"bytes {offset}-{last}/{size}", **OCTETS},
                    ok=(200, 201, 308))
                unsure = False
                if status != 308:
                    return dict(json.loads(body))
                before, offset = offset, range_end(hdrs.get("Range"))
                if offset <= before:  # no progress: counted against the retries
                    raise _Transient(f"the session kept {offset} of {size} bytes")
                return None

            while result is None:
                result = self._retrying(f"upload {name}", step)
        return result

    def delete(self, name: str) -> None:
        url = f"{self.endpoint}{self._bucket_path()}/{quote_name(name)}"
        self._retrying(f"delete {name}", lambda: self._send("DELETE", url, ok=(200, 204)))


def _error_detail(err: urllib.error.HTTPError) -> str:
    """GCS's own message from an error answer (its JSON ``error.message``), short."""
    try:
        raw = err.read()
    except (OSError, http.client.HTTPException):
        raw = b""
    finally:
        err.close()
    try:
        message = str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = raw.decode(errors="replace").strip() or str(err.reason)
    return message[:200]


class GcsBucket:
    def __init__(self, target: Path, source: str, mode: str) -> None:
        scheme, name, prefix = parse_bucket(source)
        if scheme != "gs" or not name:
            raise ValueError(f"{source}: not a gs://BUCKET[/PATH] source")
        if mode not in ("MOUNT", "COPY"):
            raise ValueError(f"{source}: unknown mode {mode!r}")
        self.target = target
        self.source = source
        self.mode = mode
        self.bucket = name
        self.prefix = prefix
        # rel path -> (size, mtime_ns) of the local file when it last matched the bucket.
        self._synced: dict[str, tuple[int, int]] = {}
        # rel path -> generation of the object the local file matches.
        self._generations: dict[str, str] = {}
        self._api: GcsApi | None = None

    # --- common ----------------------------------------------------------------------------

    def prepare(self) -> None:
        if self.mode == "COPY":
            self._download_all()
        else:
            self._mount()

    def upload(self) -> int:
        return self._upload_changed() if self.mode == "COPY" else 0

    def api(self) -> GcsApi:
        if self._api is None:  # made on first use, when the agent's environment is final
            self._api = GcsApi(self.source, self.bucket)
        return self._api

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    # --- COPY ------------------------------------------------------------------------------

    def _download_all(self) -> None:
        self.target.mkdir(parents=True, exist_ok=True)
        listed = list(self.api().list(f"{self.prefix}/" if self.prefix else ""))
        for obj in listed:
            rel = relative_name(str(obj.get("name", "")), self.prefix)
            if rel is not None:
                self._download_one(rel, obj)

    def _download_one(self, rel: str, obj: dict[str, Any]) -> None:
        dst = self.target / rel
        generation = str(obj.get("generation", ""))
        size = int(obj.get("size", 0))
        try:
            mtime_ns: int | None = rfc3339_ns(str(obj["updated"]))
        except (KeyError, ValueError):
            mtime_ns = None  # then only the generation tells whether the file is current
        try:
            now = _stamp(dst)
        except (FileNotFoundError, NotADirectoryError):
            now = None
        if now is not None:
            # The bucket still holds the generation this node last synced: nothing new to
            # fetch, and a local change since then is newer (the next upload sends it).
            if generation and self._generations.get(rel) == generation:
                return
            # An earlier start of the agent downloaded it (same size and time, and no
            # generation known to say otherwise).
            if (rel not in self._generations and mtime_ns is not None
                    and now == (size, mtime_ns)):
                self._synced[rel] = now
                return
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}{TMP_SUFFIX}")
        try:
            got = self.api().download(self._key(rel), tmp)
        except GcsBucketError as err:
            tmp.unlink(missing_ok=True)
            if err.status == 404:
                return  # deleted between the listing and now: nothing to resume from
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if mtime_ns is not None:
            # The bucket's time, so a later start of the agent can tell the file is current.
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, dst)
        self._synced[rel] = _stamp(dst)
        self._generations[rel] = got or generation

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
                if not _utf8(rel):
                    continue  # GCS names are UTF-8: this one cannot be an object
                try:
                    seen = _stamp(path)
                except FileNotFoundError:
                    continue  # replaced between listing and now; the next round has it
                if self._synced.get(rel) == seen:
                    continue
                try:
                    resource = self.api().upload(self._key(rel), path)
                except FileNotFoundError:
                    continue
                # The stat from before the upload: a change during it is uploaded next time.
                self._synced[rel] = seen
                self._generations[rel] = str(resource.get("generation", ""))
                copied += 1
        return copied

    # --- MOUNT -----------------------------------------------------------------------------

    def _mount(self) -> None:
        self.target.mkdir(parents=True, exist_ok=True)
        if os.path.ismount(self.target):
            return  # mounted by an earlier start of this agent
        command = self._mount_command()
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=120)
        except subprocess.CalledProcessError as err:
            detail = (err.stderr or err.stdout or b"").decode(errors="replace")[-300:]
            raise GcsBucketError(f"{self.source}: {command[0]} mount failed: {detail}") from None
        except subprocess.TimeoutExpired:
            raise GcsBucketError(f"{self.source}: {command[0]} mount timed out") from None

    def _mount_command(self) -> list[str]:
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        if shutil.which("gcsfuse"):
            # gcsfuse goes to the background once the mount is up; --implicit-dirs shows
            # directories that exist only as prefixes of object names.
            cmd = ["gcsfuse", "--implicit-dirs"]
            if self.prefix:
                cmd += ["--only-dir", self.prefix]
            if emulator:
                cmd += ["--custom-endpoint", endpoint(), "--anonymous-access"]
            return cmd + [self.bucket, str(self.target)]
        if shutil.which("rclone"):
            remote = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
            cmd = ["rclone", "mount", f":gcs:{remote}", str(self.target), "--daemon",
                   # The VM's service account from the metadata server; uniform bucket-level
                   # access refuses the per-object ACLs rclone would otherwise set.
                   "--gcs-env-auth", "--gcs-bucket-policy-only",
                   # Write back soon after close: a GCE notice leaves about 30 s.
                   "--vfs-cache-mode", "writes", "--vfs-write-back", "1s"]
            if emulator:
                cmd += ["--gcs-endpoint", endpoint(), "--gcs-anonymous"]
            return cmd
        raise GcsBucketError(f"{self.source}: mode MOUNT needs gcsfuse or rclone on the node "
                             "image (with FUSE); install one, or use mode: COPY")


def _utf8(name: str) -> bool:
    try:
        name.encode()
    except UnicodeEncodeError:  # a file name in another encoding (surrogate escapes)
        return False
    return True


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns
