"""A fake of the GCS JSON API, enough for our stdlib node client and for google-cloud-storage.

Served by aiohttp on 127.0.0.1 from a background thread with its own event loop, so blocking
clients (urllib, requests) can call it from the test's thread. Point the real library at it
with ``client_options={"api_endpoint": fake.url}`` (or ``STORAGE_EMULATOR_HOST``) and
``AnonymousCredentials``.

What google-cloud-storage sends, and so what is served here:
- ``GET /storage/v1/b/{b}`` (bucket get/exists), ``GET /storage/v1/b/{b}/o`` (list: prefix,
  delimiter, maxResults, pageToken, projection), ``GET|DELETE /storage/v1/b/{b}/o/{name}``;
  object names are one path segment with '/' escaped as %2F; ``prettyPrint``, ``fields``
  and ``projection`` are accepted and ignored.
- downloads at ``/download/storage/v1/b/{b}/o/{name}?alt=media`` (the node client uses the
  plain path with ``alt=media``); the library checks the body against ``x-goog-hash``.
- uploads at ``/upload/storage/v1/b/{b}/o``: ``uploadType=multipart`` (multipart/related:
  a JSON part with name and crc32c/md5Hash checksums, then the media) for small blobs,
  ``uploadType=resumable`` (POST starts a session answered by a Location header, PUTs with
  ``Content-Range`` carry chunks, 308 + ``Range`` until the last) for large ones, and
  ``uploadType=media`` from the node client.
- preconditions ``ifGenerationMatch`` (0: must not exist) / ``ifGenerationNotMatch`` -> 412.
An object becomes visible only when its upload completes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from aiohttp import web

try:
    import google_crc32c  # installed with google-cloud-storage

    def crc32c(data: bytes) -> int:
        return int(google_crc32c.value(data))
except ImportError:  # pragma: no cover - a slow but correct fallback
    _TABLE = []
    for _i in range(256):
        _c = _i
        for _ in range(8):
            _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
        _TABLE.append(_c)

    def crc32c(data: bytes) -> int:
        c = 0xFFFFFFFF
        for b in data:
            c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
        return c ^ 0xFFFFFFFF


READ_OPS = ("bucket_get", "list", "get", "download")
WRITE_OPS = ("upload", "delete")


def b64_crc32c(data: bytes) -> str:
    return base64.b64encode(crc32c(data).to_bytes(4, "big")).decode()


def b64_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def rfc3339(epoch: float) -> str:
    dt = datetime.fromtimestamp(epoch, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


@dataclass
class StoredObject:
    name: str
    data: bytes
    generation: int
    content_type: str = "application/octet-stream"
    metadata: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)


@dataclass
class _Session:
    bucket: str
    name: str
    content_type: str
    metadata: dict[str, str]
    preconditions: dict[str, str]
    received: bytearray = field(default_factory=bytearray)
    done: dict[str, Any] | None = None


class GcsError(Exception):
    def __init__(self, status: int, message: str, reason: str = "error") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class FakeGcs:
    """Start with ``start()`` or ``with FakeGcs() as gcs:``; ``url`` is its endpoint."""

    def __init__(self) -> None:
        self.url = ""
        self.calls: Counter[str] = Counter()  # op -> how many requests asked for it
        self.requests: list[tuple[str, str]] = []  # (method, path and query) as received
        self.authorization: list[str | None] = []  # each request's Authorization header
        self._lock = threading.Lock()
        self._buckets: dict[str, dict[str, StoredObject]] = {}
        self._denied: set[tuple[str, str]] = set()
        self._failures: list[list[Any]] = []  # [status, times left, op or None]
        self._sessions: dict[str, _Session] = {}
        self._last_generation = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeGcs:
        ready = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start_site())
            except BaseException as err:  # noqa: BLE001 - handed to start()
                errors.append(err)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._cleanup())
                loop.close()

        self._thread = threading.Thread(target=serve, daemon=True, name="fake-gcs")
        self._thread.start()
        if not ready.wait(10) or errors:
            raise RuntimeError(f"the fake GCS did not start: {errors}")
        return self

    async def _start_site(self) -> None:
        # Resumable chunks and media uploads are bigger than aiohttp's 1 MiB default.
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> FakeGcs:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- hooks -----------------------------------------------------------------------------

    def create_bucket(self, name: str) -> None:
        with self._lock:
            self._buckets.setdefault(name, {})

    def deny(self, bucket: str, op: str) -> None:
        """Answer 403 to ``read`` (bucket get, list, get, download) or ``write`` (upload,
        delete) requests on this bucket, or to one op by name."""
        ops = {"read": READ_OPS, "write": WRITE_OPS}.get(op, (op,))
        with self._lock:
            self._denied.update((bucket, o) for o in ops)

    def fail(self, status: int = 503, times: int = 1, op: str | None = None) -> None:
        """Answer the next ``times`` requests (of ``op``, or any) with ``status``."""
        with self._lock:
            self._failures.append([status, times, op])

    def put(self, bucket: str, name: str, data: bytes) -> int:
        """Store an object directly; returns its generation."""
        with self._lock:
            obj = StoredObject(name, data, self._next_generation())
            self._buckets[bucket][name] = obj
            return obj.generation

    def objects(self, bucket: str) -> dict[str, bytes]:
        with self._lock:
            return {n: o.data for n, o in sorted(self._buckets[bucket].items())}

    def generation(self, bucket: str, name: str) -> int:
        with self._lock:
            return self._buckets[bucket][name].generation

    def _next_generation(self) -> int:
        # Microseconds, like GCS, and strictly increasing even within one microsecond.
        self._last_generation = max(self._last_generation + 1, int(time.time() * 1e6))
        return self._last_generation

    # --- HTTP ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw_path, _, raw_query = request.raw_path.partition("?")
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(raw_query,
                                                             keep_blank_values=True).items()}
        body = await request.read()
        with self._lock:
            self.requests.append((request.method, request.raw_path))
            self.authorization.append(request.headers.get("Authorization"))
            try:
                return self._dispatch(request, raw_path, query, body)
            except GcsError as err:
                return _error(err.status, str(err), err.reason)

    def _dispatch(self, request: web.Request, raw_path: str, query: dict[str, str],
                  body: bytes) -> web.StreamResponse:
        method = request.method
        mode = ""
        path = raw_path
        for special in ("/download", "/upload"):
            if path.startswith(special + "/storage/"):
                mode, path = special[1:], path[len(special):]
        if not path.startswith("/storage/v1/b"):
            raise GcsError(404, f"no such API: {raw_path}", "notFound")
        parts = path[len("/storage/v1/b"):].lstrip("/").split("/", 2)
        bucket = urllib.parse.unquote(parts[0]) if parts[0] else ""
        name = urllib.parse.unquote(parts[2]) if len(parts) == 3 else None
        if len(parts) >= 2 and parts[1] != "o":
            raise GcsError(404, f"no such API: {raw_path}", "notFound")

        if mode == "upload":
            if method == "PUT" and "upload_id" in query:
                return self._resumable_put(request, query["upload_id"], body)
            if method == "POST" and name is None and bucket:
                return self._upload(request, bucket, query, body)
        elif not bucket:
            if method == "POST":  # buckets.insert, for tests that create through the library
                return self._insert_bucket(body)
        elif len(parts) == 1 and method == "GET" and not mode:
            self._op("bucket_get", bucket)
            return web.json_response(self._bucket_resource(bucket))
        elif len(parts) == 2 and method == "GET" and not mode:
            self._op("list", bucket)
            return self._list(bucket, query)
        elif name is not None and method == "GET":
            media = mode == "download" or query.get("alt") == "media"
            self._op("download" if media else "get", bucket)
            obj = self._object(bucket, name, query)
            if media:
                return self._media(request, obj)
            return web.json_response(self._resource(bucket, obj))
        elif name is not None and method == "DELETE" and not mode:
            self._op("delete", bucket)
            obj = self._object(bucket, name, query)
            del self._buckets[bucket][obj.name]
            return web.Response(status=204)
        raise GcsError(405, f"{method} {raw_path} is not supported by the fake", "invalid")

    def _op(self, op: str, bucket: str) -> None:
        self.calls[op] += 1
        for failure in self._failures:
            status, left, only = failure
            if left > 0 and only in (None, op):
                failure[1] -= 1
                raise GcsError(status, f"injected {status}", "backendError")
        if bucket not in self._buckets:
            raise GcsError(404, "The specified bucket does not exist.", "notFound")
        if (bucket, op) in self._denied:
            raise GcsError(403, f"anonymous caller does not have storage access to {bucket}",
                           "forbidden")

    def _object(self, bucket: str, name: str, query: dict[str, str]) -> StoredObject:
        obj = self._buckets[bucket].get(name)
        if obj is None or ("generation" in query and int(query["generation"]) != obj.generation):
            raise GcsError(404, f"No such object: {bucket}/{name}", "notFound")
        _check_preconditions(obj, query)
        return obj

    # --- reads -----------------------------------------------------------------------------

    def _list(self, bucket: str, query: dict[str, str]) -> web.Response:
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        limit = min(int(query.get("maxResults") or 1000), 1000)
        # The page token is opaque to clients: here, the name after which the page starts.
        after = _untoken(query["pageToken"]) if query.get("pageToken") else ""
        items: list[dict[str, Any]] = []
        prefixes: list[str] = []
        last, more = after, False
        # One page is `limit` entries, objects and prefixes together, in name order.
        for name in sorted(self._buckets[bucket]):
            if not name.startswith(prefix) or (after and name <= after):
                continue
            cut = name.find(delimiter, len(prefix)) if delimiter else -1
            common = name[:cut + len(delimiter)] if cut >= 0 else None
            if common is not None and prefixes and prefixes[-1] == common:
                continue
            if len(items) + len(prefixes) >= limit:
                more = True
                break
            if common is not None:
                prefixes.append(common)
                last = common + "\U0010ffff"  # the next page starts past the whole group
            else:
                items.append(self._resource(bucket, self._buckets[bucket][name]))
                last = name
        page: dict[str, Any] = {"kind": "storage#objects"}
        if items:
            page["items"] = items
        if prefixes:
            page["prefixes"] = prefixes
        if more:
            page["nextPageToken"] = _token(last)
        return web.json_response(page)

    def _media(self, request: web.Request, obj: StoredObject) -> web.Response:
        data = obj.data
        headers = {"x-goog-generation": str(obj.generation), "x-goog-metageneration": "1",
                   "x-goog-hash": f"crc32c={b64_crc32c(data)},md5={b64_md5(data)}",
                   "x-goog-stored-content-length": str(len(data)),
                   "x-goog-stored-content-encoding": "identity",
                   "ETag": f'"{obj.generation}"', "Content-Type": obj.content_type}
        wanted = request.headers.get("Range")
        if wanted and wanted.startswith("bytes="):
            first, _, last = wanted[len("bytes="):].partition("-")
            start = int(first or 0)
            end = min(int(last), len(data) - 1) if last else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return web.Response(status=206, body=data[start:end + 1], headers=headers)
        return web.Response(body=data, headers=headers)

    # --- writes ----------------------------------------------------------------------------

    def _upload(self, request: web.Request, bucket: str, query: dict[str, str],
                body: bytes) -> web.Response:
        kind = query.get("uploadType", "media")
        self._op("upload", bucket)
        content_type = request.headers.get("Content-Type", "application/octet-stream")
        if kind == "media":
            name = query.get("name", "")
            return self._finish(bucket, name, body, content_type, {}, query, {})
        if kind == "multipart":
            meta, media, media_type = _parse_multipart(content_type, body)
            name = str(meta.get("name") or query.get("name", ""))
            return self._finish(bucket, name, media, media_type, meta.get("metadata") or {},
                                query, meta)
        if kind == "resumable":
            meta = json.loads(body) if body.strip() else {}
            name = str(meta.get("name") or query.get("name", ""))
            if not name:
                raise GcsError(400, "Required: object name", "required")
            upload_id = secrets.token_hex(8)
            self._sessions[upload_id] = _Session(
                bucket, name,
                str(meta.get("contentType") or request.headers.get("X-Upload-Content-Type")
                    or "application/octet-stream"),
                dict(meta.get("metadata") or {}), _precondition_args(query))
            location = (f"{self.url}/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}"
                        f"/o?uploadType=resumable&upload_id={upload_id}")
            return web.Response(status=200, headers={"Location": location,
                                                     "X-GUploader-UploadID": upload_id})
        raise GcsError(400, f"unknown uploadType {kind}", "invalid")

    def _resumable_put(self, request: web.Request, upload_id: str,
                       body: bytes) -> web.Response:
        session = self._sessions.get(upload_id)
        if session is None:
            raise GcsError(404, "No such upload session", "notFound")
        self.calls["upload_chunk"] += 1
        for failure in self._failures:
            status, left, only = failure
            if left > 0 and only in (None, "upload_chunk"):
                failure[1] -= 1
                raise GcsError(status, f"injected {status}", "backendError")
        if session.done is not None:
            return web.json_response(session.done)
        spec = request.headers.get("Content-Range", "")
        total: int | None = None
        if spec:
            unit, _, rest = spec.partition(" ")
            span, _, size = rest.partition("/")
            if unit != "bytes" or not size:
                raise GcsError(400, f"bad Content-Range {spec!r}", "invalid")
            total = None if size == "*" else int(size)
            if span != "*":
                first = int(span.partition("-")[0])
                if first > len(session.received):
                    raise GcsError(400, "chunk starts past what was received", "invalid")
                # Bytes sent again after a lost answer replace what was kept.
                del session.received[first:]
                session.received += body
        else:  # one PUT with the whole content
            session.received = bytearray(body)
            total = len(body)
        if total is not None and len(session.received) >= total:
            response = self._finish(session.bucket, session.name,
                                    bytes(session.received[:total]), session.content_type,
                                    session.metadata, session.preconditions, {},
                                    hash_header=request.headers.get("X-Goog-Hash"))
            session.done = json.loads(response.text or "{}")
            return response
        headers = {"Range": f"bytes=0-{len(session.received) - 1}"} if session.received else {}
        return web.Response(status=308, headers=headers)

    def _finish(self, bucket: str, name: str, data: bytes, content_type: str,
                metadata: dict[str, str], query: dict[str, str], meta: dict[str, Any],
                hash_header: str | None = None) -> web.Response:
        if not name:
            raise GcsError(400, "Required: object name", "required")
        if meta.get("crc32c") and meta["crc32c"] != b64_crc32c(data):
            raise GcsError(400, "Provided CRC32C does not match the data", "invalid")
        if meta.get("md5Hash") and meta["md5Hash"] != b64_md5(data):
            raise GcsError(400, "Provided MD5 hash does not match the data", "invalid")
        for part in (hash_header or "").split(","):
            key, _, value = part.strip().partition("=")
            expected = {"crc32c": b64_crc32c, "md5": b64_md5}.get(key)
            if expected and value and value != expected(data):
                raise GcsError(400, f"Provided {key} does not match the data", "invalid")
        _check_preconditions(self._buckets[bucket].get(name), query)
        obj = StoredObject(name, data, self._next_generation(), content_type, dict(metadata))
        self._buckets[bucket][name] = obj  # visible only now, all at once
        return web.json_response(self._resource(bucket, obj))

    def _insert_bucket(self, body: bytes) -> web.Response:
        self.calls["bucket_insert"] += 1
        name = str(json.loads(body or b"{}").get("name", ""))
        if not name:
            raise GcsError(400, "Required: bucket name", "required")
        if name in self._buckets:
            raise GcsError(409, "Your previous request to create the named bucket succeeded "
                           "and you already own it.", "conflict")
        self._buckets[name] = {}
        return web.json_response(self._bucket_resource(name))

    # --- resources -------------------------------------------------------------------------

    def _bucket_resource(self, bucket: str) -> dict[str, Any]:
        return {"kind": "storage#bucket", "id": bucket, "name": bucket,
                "selfLink": f"{self.url}/storage/v1/b/{bucket}", "projectNumber": "0",
                "metageneration": "1", "location": "US", "storageClass": "STANDARD",
                "etag": "CAE=", "timeCreated": rfc3339(0), "updated": rfc3339(0),
                "iamConfiguration": {"uniformBucketLevelAccess": {"enabled": True}}}

    def _resource(self, bucket: str, obj: StoredObject) -> dict[str, Any]:
        qb, qn = urllib.parse.quote(bucket, safe=""), urllib.parse.quote(obj.name, safe="")
        updated = obj.generation / 1e6
        resource: dict[str, Any] = {
            "kind": "storage#object", "id": f"{bucket}/{obj.name}/{obj.generation}",
            "selfLink": f"{self.url}/storage/v1/b/{qb}/o/{qn}",
            "mediaLink": (f"{self.url}/download/storage/v1/b/{qb}/o/{qn}"
                          f"?generation={obj.generation}&alt=media"),
            "name": obj.name, "bucket": bucket, "generation": str(obj.generation),
            "metageneration": "1", "contentType": obj.content_type,
            "storageClass": "STANDARD", "size": str(len(obj.data)),
            "md5Hash": b64_md5(obj.data), "crc32c": b64_crc32c(obj.data),
            "etag": base64.b64encode(str(obj.generation).encode()).decode(),
            "timeCreated": rfc3339(updated), "updated": rfc3339(updated),
            "timeStorageClassUpdated": rfc3339(updated)}
        if obj.metadata:
            resource["metadata"] = dict(obj.metadata)
        return resource


def _token(after: str) -> str:
    return base64.urlsafe_b64encode(after.encode()).decode()


def _untoken(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except ValueError:
        raise GcsError(400, f"invalid pageToken {token!r}", "invalid") from None


def _error(status: int, message: str, reason: str) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message,
                                        "errors": [{"message": message, "domain": "global",
                                                    "reason": reason}]}}, status=status)


def _precondition_args(query: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in query.items() if k in ("ifGenerationMatch", "ifGenerationNotMatch")}


def _check_preconditions(obj: StoredObject | None, query: dict[str, str]) -> None:
    current = obj.generation if obj is not None else 0
    if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != current:
        raise GcsError(412, "At least one of the pre-conditions you specified did not hold.",
                       "conditionNotMet")
    if "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == current:
        raise GcsError(304 if obj is not None else 412, "Not modified", "notModified")


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes, str]:
    """multipart/related with two parts: the JSON metadata, then the media."""
    boundary = ""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not content_type.lower().startswith("multipart/related") or not boundary:
        raise GcsError(400, f"not multipart/related: {content_type}", "invalid")
    delimiter = b"--" + boundary.encode()
    sections = body.split(delimiter)
    # [preamble, part1, part2, "--" epilogue]
    parts = [s for s in sections[1:] if not s.startswith(b"--")]
    if len(parts) != 2:
        raise GcsError(400, f"multipart upload with {len(parts)} parts", "invalid")
    decoded: list[tuple[dict[str, str], bytes]] = []
    for part in parts:
        part = part[2:] if part.startswith(b"\r\n") else part
        head, _, content = part.partition(b"\r\n\r\n")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        headers = {}
        for line in head.decode().split("\r\n"):
            key, _, value = line.partition(":")
            if key:
                headers[key.strip().lower()] = value.strip()
        decoded.append((headers, content))
    meta = json.loads(decoded[0][1])
    media_type = decoded[1][0].get("content-type") or str(meta.get("contentType") or
                                                         "application/octet-stream")
    return dict(meta), decoded[1][1], media_type
