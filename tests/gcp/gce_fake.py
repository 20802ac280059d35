"""A small, faithful fake of the Compute Engine REST API and of the GCE metadata server.

There is no GCE emulator, so the GCP provider is tested against this fake at the network
boundary: an aiohttp app on 127.0.0.1 (port 0) served from a background thread with its own
event loop, so sync tests, async tests on another loop, benchmarks and subprocesses can all
use it. Point the real client at it::

    InstancesClient(transport="rest", credentials=AnonymousCredentials(),
                    client_options={"api_endpoint": fake.url})

What the real google-cloud-compute 1.57 REST client sends and expects (found by running it
against a recording server; ``test_gce_fake.py`` pins each point):

- ``api_endpoint`` keeps its scheme: ``"http://127.0.0.1:PORT"`` is used as is. Without a
  scheme the client prepends ``https://`` (an SSLError against a plain-HTTP server).
- Paths carry the ``/compute/v1`` prefix: ``POST /compute/v1/projects/P/zones/Z/instances
  ?requestId=R``, ``GET|DELETE .../instances/NAME[?requestId=R]``, ``GET
  /compute/v1/projects/P/aggregated/instances?maxResults=N&filter=...&pageToken=T``, ``GET
  .../zones/Z/operations[/OP]``, ``POST .../zones/Z/operations/OP/wait``. Bodies are camelCase
  JSON; int64 fields travel as strings (``"diskSizeGb": "50"``), int32 as numbers
  (``acceleratorCount``). 1.57 has no ``return_partial_success`` field on
  ``AggregatedListInstancesRequest`` any more (the fake still accepts the query parameter).
  ``filter`` is sent form-encoded (``labels.a+%3D+%22b%22``). No ``$alt`` parameter.
- ``InstancesClient.insert()/delete()`` return an ``ExtendedOperation``. When the returned
  Operation is already DONE, nothing more is sent: ``result()`` raises at once, ``done()`` is
  True. When it is RUNNING, ``result()``/``done()`` poll ``GET .../operations/OP`` (never
  ``/wait``) through a ``ZoneOperationsClient`` the transport builds WITHOUT the caller's
  ``client_options``: it talks to https://compute.googleapis.com whatever ``api_endpoint``
  says (here: ``requests.exceptions.ConnectionError`` at once). So wait for an operation
  with your own ``ZoneOperationsClient`` (same ``client_options``) and ``.wait()`` (``POST
  .../wait``, held by GCE up to 2 min) or ``.get()``, never ``ExtendedOperation.result()`` on
  a RUNNING operation in tests. The fake's ``op_delay`` (default 0: operations come back
  DONE) makes them RUNNING for that long, as GCE's usually are.
- An operation error (capacity, quota, unsupported configuration) arrives in a successful
  HTTP response: the Operation is DONE with ``error.errors[].code`` (e.g.
  ``ZONE_RESOURCE_POOL_EXHAUSTED``), ``httpErrorStatusCode`` and ``httpErrorMessage``. On the
  client object: ``op.error_code`` is ``httpErrorStatusCode`` (503), ``op.error_message`` is
  ``httpErrorMessage``, ``op.error.errors[0].code`` is the GCE code;
  ``op.exception()``/``op.result()`` give ``api_core.exceptions.from_http_status(503, ...)``,
  i.e. ``ServiceUnavailable`` (``Forbidden`` for QUOTA_EXCEEDED, ``BadRequest`` for
  UNSUPPORTED_OPERATION: the fake's statuses, taken from public GCE operation dumps, see
  ``OPERATION_ERRORS``; ``fail_zone(http_status=)`` overrides) whose ``.errors`` are the
  same ``compute.Errors`` protos (read ``exc.errors[0].code``, not the exception type).
  ``ZoneOperationsClient.get()/wait()`` return the plain ``compute.Operation``
  (``.http_error_status_code``, ``.error.errors[0].code``).
- HTTP errors raise ``google.api_core.exceptions`` by status: 400 BadRequest, 403 Forbidden,
  404 NotFound, 409 Conflict, 429 TooManyRequests, 503 ServiceUnavailable; ``exc.errors`` is
  the list of ``{"message", "domain", "reason"}`` dicts from the JSON body (read
  ``exc.errors[0]["reason"]``; ``exc.reason`` stays None without an ErrorInfo detail). The
  default retry of ``get``, ``list``, ``aggregated_list`` and ``ZoneOperations.get/list``
  retries 503 (and DeadlineExceeded) with backoff, up to 600 s; ``insert``, ``delete`` and
  ``ZoneOperations.wait`` are never retried. Pass ``retry=None`` to see the first 503. A
  client-side ``timeout=`` that runs out raises ``requests.exceptions.ReadTimeout``, not an
  api_core exception: GCE may still have done the work, hence ``requestId``.

Real-GCE behaviour copied here, so the provider meets it in tests:

- ``requestId`` makes a mutation idempotent: the same id replayed returns the first
  Operation and changes nothing; an insert whose name already exists in the zone under
  another id is HTTP 409 ``alreadyExists``. Error bodies have GCE's JSON shape.
- Instances go PROVISIONING -> STAGING -> RUNNING (``boot_delay``), STOPPING -> gone
  (``delete_delay``) on delete; a preempted Spot VM sees ``instance/preempted`` TRUE on its
  metadata server, then stops: it is deleted or left TERMINATED according to
  ``scheduling.instanceTerminationAction`` (GCE's default for SPOT is STOP), and a system
  Operation ``compute.instances.preempted`` (user "system") is recorded when it stops.
- Insert is validated like GCE does: RFC 1035 names, label syntax, a machine type and
  accelerators of the request's zone, at least one boot disk and one network interface, no
  live migration for Spot or GPU VMs.
- Lists omit ``items`` when empty; aggregated lists key scopes ``zones/Z`` and give empty
  scopes a ``NO_RESULTS_ON_PAGE`` warning; ``maxResults``/``pageToken`` paginate. Filters
  support ``field = "v"``, ``field != v``, ``labels.K = V``, parentheses, ``AND`` and
  implicit AND; anything else is HTTP 400, so a wrong filter fails loudly instead of
  silently matching everything.
- Links use https://www.googleapis.com/compute/v1/...; ids are int64 strings; timestamps are
  RFC 3339 with a -07:00 offset, as GCE writes them.

Test hooks (thread-safe, callable from any thread but the fake's own): ``fail_zone``,
``fail_next``, ``stall``, ``preempt``, ``reclaim``, ``user_delete``, ``instances``,
``instance``, ``operations``, ``metadata_for``, ``calls``, ``inserts``, ``reset``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import json
import random
import re
import threading
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")
API = "https://www.googleapis.com/compute/v1"  # the host GCE writes in every link
GCE_TZ = timezone(timedelta(hours=-7))  # GCE timestamps carry a Pacific offset, not Z
NAME_RE = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
ZONE_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
DEFAULT_ZONES = ("us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f",
                 "us-east1-b", "us-east1-c", "us-east1-d", "europe-west4-a")
MAX_RESULTS = 500  # GCE's cap and default for list calls
OP_WAIT_MAX = 120.0  # zoneOperations.wait returns after 2 minutes at most, as on GCE
EMPTY_LABEL_FINGERPRINT = "42WmSpB8rSM="  # what GCE reports for an empty label set

# GCE codes that fail an insert inside its Operation: (httpErrorStatusCode, message).
OPERATION_ERRORS: dict[str, tuple[int, str]] = {
    "ZONE_RESOURCE_POOL_EXHAUSTED": (
        503, "The zone '{scope}' does not have enough resources available to fulfill the "
             "request.  Try a different zone, or try again later."),
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS": (
        503, "The zone '{scope}' does not have enough resources available to fulfill the "
             "request.  '(resource type:compute)'."),
    "UNSUPPORTED_OPERATION": (
        400, "The selected machine type and accelerator are not supported in zone "
             "'{scope}'."),
    "QUOTA_EXCEEDED": (403, "Quota 'CPUS' exceeded.  Limit: 8.0 in region {region}."),
}
HTTP_REASONS: dict[int, str] = {  # errors[].reason GCE sends with each status
    400: "invalid", 403: "forbidden", 404: "notFound", 409: "alreadyExists",
    412: "conditionNotMet", 429: "rateLimitExceeded", 500: "backendError",
    503: "backendError",
}
REASON_STATUS: dict[str, int] = {  # the status of an HTTP error given by its reason
    "forbidden": 403, "quotaExceeded": 403, "rateLimitExceeded": 429,
    "userRateLimitExceeded": 429, "backendError": 503, "notFound": 404,
    "alreadyExists": 409, "invalid": 400, "resourceNotReady": 400,
}
STATUS_TEXT = {400: "BAD REQUEST", 403: "FORBIDDEN", 404: "NOT FOUND", 409: "CONFLICT",
               412: "PRECONDITION FAILED", 429: "TOO MANY REQUESTS",
               500: "INTERNAL SERVER ERROR", 503: "SERVICE UNAVAILABLE"}
INSTANCE_FIELDS = {"name", "status", "labels", "id", "zone", "machineType", "scheduling",
                   "creationTimestamp", "description", "selfLink", "cpuPlatform",
                   "statusMessage", "canIpForward", "deletionProtection", "hostname"}
OPERATION_FIELDS = {"name", "status", "operationType", "targetLink", "targetId", "user",
                    "zone", "insertTime", "startTime", "endTime", "progress", "id",
                    "statusMessage", "httpErrorStatusCode", "selfLink"}


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, GCE_TZ).isoformat(timespec="milliseconds")


def _int64() -> str:
    return str(random.randrange(10**18, 9 * 10**18))  # int64 ids travel as strings


def _hex(n: int) -> str:
    return "".join(random.choice("0123456789abcdef") for _ in range(n))


def _op_name(prefix: str = "operation") -> str:
    # GCE names: operation-1536679018444-57599f70734e0-984d5118-84d4d0cd; system events
    # (preemptions, host maintenance) are named systemevent-....
    return f"{prefix}-{int(time.time() * 1000)}-{_hex(13)}-{_hex(8)}-{_hex(8)}"


def project_number(project: str) -> str:
    """A stable 12-digit project number for a project id (the metadata server uses it)."""
    return str(100_000_000_000 + zlib.crc32(project.encode()) % 900_000_000_000)


def error_body(status: int, reason: str, message: str) -> dict[str, Any]:
    """GCE's JSON error shape."""
    return {"error": {"code": status, "message": message,
                      "errors": [{"message": message, "domain": "global", "reason": reason}]}}


class ApiError(Exception):
    """An HTTP error response, in GCE's shape."""

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.reason = reason or HTTP_REASONS.get(status, "backendError")

    def response(self) -> web.Response:
        return _json(error_body(self.status, self.reason, self.message), self.status)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body),
                        content_type="application/json", charset="UTF-8")


# --- the background event loop ---------------------------------------------------------------


class LoopThread:
    """An event loop running in its own daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._started = False

    def start(self) -> LoopThread:
        self._thread.start()
        self._started = True
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a coroutine on the loop and wait for its result (never from the loop)."""
        if self.in_loop():
            coro.close()
            raise RuntimeError("LoopThread.run called from its own loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self._started and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    # A short shutdown_timeout: held long-polls must not keep stop() waiting for a minute.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


# --- the metadata server ---------------------------------------------------------------------


class GceMetadata:
    """The metadata server of one instance, on its own 127.0.0.1 port.

    Like GCE's: every request needs ``Metadata-Flavor: Google`` (else 403), answers carry
    ``Metadata-Flavor: Google`` and an ``ETag``, and ``?wait_for_change=true`` holds the
    request until the value changes from ``last_etag`` (or from the value at request time),
    or until ``timeout_sec``, then answers with the current value.
    """

    def __init__(self, *, name: str, zone: str, project: str, instance_id: str = "0",
                 network_ip: str = "10.128.0.2", attributes: dict[str, str] | None = None,
                 loop: LoopThread | None = None) -> None:
        self.name, self.zone, self.project = name, zone, project
        self.instance_id, self.network_ip = instance_id, network_ip
        self.attributes = dict(attributes or {})
        self.preempted = False  # the value of instance/preempted
        self.served = 0  # long-polls answered
        self._etag = _hex(16)
        self._own_loop = loop is None
        self._loop = loop if loop is not None else LoopThread(f"gce-metadata-{name}").start()
        self._changed: asyncio.Event | None = None
        self._closed = False
        self._runner, port = self._loop.run(self._start())
        self.url = f"http://127.0.0.1:{port}"

    async def _start(self) -> tuple[web.AppRunner, int]:
        self._changed = asyncio.Event()
        app = web.Application()
        app.router.add_get("/computeMetadata/v1/{path:.*}", self._handle)
        return await _serve(app)

    def set_preempted(self, value: bool = True) -> None:
        """Flip ``instance/preempted`` (what GCE does when it starts to reclaim a Spot VM).
        Done on the server's loop, so value, ETag and the wake-up of held long-polls change
        together; returns once they have."""
        if self._loop.in_loop():
            self._apply(value)
        else:
            self._loop.loop.call_soon_threadsafe(self._apply, value)
            self._loop.run(asyncio.sleep(0))  # the loop has run _apply once this returns

    def _apply(self, value: bool) -> None:
        if value != self.preempted:
            self.preempted = value
            self._etag = _hex(16)
            self._wake()

    def _wake(self) -> None:
        assert self._changed is not None
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def shutdown() -> None:
            self._wake()  # release held long-polls first
            await self._runner.cleanup()

        try:
            if self._loop.in_loop():
                self._loop.loop.create_task(shutdown())
            else:
                self._loop.run(shutdown())
        finally:
            if self._own_loop:
                self._loop.stop()

    def _text(self, body: str, etag: str | None = None) -> web.Response:
        # GCE answers values as application/text (no charset), with an ETag that changes
        # with the value.
        return web.Response(body=body.encode(), headers={
            "Content-Type": "application/text", "Metadata-Flavor": "Google",
            "ETag": etag or f"{zlib.crc32(body.encode()):016x}"})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        # GCE refuses requests without the header, and proxied ones (X-Forwarded-For).
        if (request.headers.get("Metadata-Flavor") != "Google"
                or "X-Forwarded-For" in request.headers):
            return web.Response(status=403, text="Missing required header: Metadata-Flavor\n",
                                headers={"Metadata-Flavor": "Google"})
        path = request.match_info["path"].rstrip("/")
        if path == "instance/preempted":
            return await self._preempted(request)
        if path == "instance/service-accounts/default/token":
            resp = _json({"access_token": "fake-token", "expires_in": 3599,
                          "token_type": "Bearer"})
            resp.headers["Metadata-Flavor"] = "Google"
            return resp
        number = project_number(self.project)
        values = {
            "instance/name": self.name,
            "instance/id": self.instance_id,
            "instance/zone": f"projects/{number}/zones/{self.zone}",
            "instance/hostname": f"{self.name}.{self.zone}.c.{self.project}.internal",
            "instance/network-interfaces/0/ip": self.network_ip,
            "instance/maintenance-event": "NONE",
            "instance/service-accounts/default/email":
                f"{number}-compute@developer.gserviceaccount.com",
            "project/project-id": self.project,
            "project/numeric-project-id": number,
        }
        if path.startswith("instance/attributes/"):
            key = path.removeprefix("instance/attributes/")
            if key in self.attributes:
                return self._text(self.attributes[key])
        elif path in values:
            return self._text(values[path])
        return web.Response(status=404, text="Not Found\n", headers={"Metadata-Flavor": "Google"})

    async def _preempted(self, request: web.Request) -> web.Response:
        if request.query.get("wait_for_change", "").lower() == "true":
            baseline = request.query.get("last_etag") or self._etag
            try:
                timeout = float(request.query["timeout_sec"]) \
                    if "timeout_sec" in request.query else None
            except ValueError:
                return web.Response(status=400, text="invalid timeout_sec\n",
                                    headers={"Metadata-Flavor": "Google"})
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._etag == baseline and not self._closed:
                assert self._changed is not None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    break
            self.served += 1
        return self._text("TRUE" if self.preempted else "FALSE", self._etag)


# --- the Compute Engine state ----------------------------------------------------------------


@dataclass
class _Instance:
    project: str
    zone: str
    name: str
    id: str
    body: dict[str, Any]  # the insert body, normalized (camelCase, full URLs)
    created: float
    running_at: float
    network_ip: str
    nat_ip: str | None
    fingerprint: str
    stop_at: float | None = None  # STOPPING from then on
    end_at: float | None = None  # gone (DELETE) or TERMINATED (STOP) from then on
    end_action: str = "DELETE"
    preempt_at: float | None = None  # a compute.instances.preempted op is due then

    @property
    def link(self) -> str:
        return f"{API}/projects/{self.project}/zones/{self.zone}/instances/{self.name}"

    def status(self, now: float) -> str:
        if self.end_at is not None and now >= self.end_at:
            return "TERMINATED"
        if self.stop_at is not None and now >= self.stop_at:
            return "STOPPING"
        if now >= self.running_at:
            return "RUNNING"
        return "STAGING" if now >= (self.created + self.running_at) / 2 else "PROVISIONING"

    def render(self, now: float) -> dict[str, Any]:
        status = self.status(now)
        zone_url = f"{API}/projects/{self.project}/zones/{self.zone}"
        nics = copy.deepcopy(self.body["networkInterfaces"])
        nics[0]["networkIP"] = self.network_ip
        for nic in nics:
            for ac in nic.get("accessConfigs", []):
                if self.nat_ip and status != "TERMINATED":
                    ac["natIP"] = self.nat_ip  # an ephemeral external IP goes with a stop
        out: dict[str, Any] = {
            "kind": "compute#instance",
            "id": self.id,
            "creationTimestamp": rfc3339(self.created),
            "name": self.name,
            "machineType": self.body["machineType"],
            "status": status,
            "zone": zone_url,
            "canIpForward": False,
            "networkInterfaces": nics,
            "disks": copy.deepcopy(self.body["disks"]),
            "metadata": {"kind": "compute#metadata", "fingerprint": self.fingerprint,
                         **({"items": copy.deepcopy(self.body["metadata"]["items"])}
                            if self.body["metadata"].get("items") else {})},
            "selfLink": self.link,
            "scheduling": dict(self.body["scheduling"]),
            "cpuPlatform": "Intel Cascade Lake" if status == "RUNNING"
            else "Unknown CPU Platform",
            "labelFingerprint": EMPTY_LABEL_FINGERPRINT if not self.body.get("labels")
            else base64.b64encode(zlib.crc32(json.dumps(self.body["labels"], sort_keys=True)
                                             .encode()).to_bytes(8, "big")).decode(),
            "startRestricted": False,
            "deletionProtection": False,
            "fingerprint": self.fingerprint,
        }
        for key in ("labels", "guestAccelerators", "serviceAccounts", "description", "tags"):
            if self.body.get(key):
                out[key] = copy.deepcopy(self.body[key])
        if now >= self.running_at:
            out["lastStartTimestamp"] = rfc3339(self.running_at)
        if self.stop_at is not None and now >= self.stop_at:
            out["lastStopTimestamp"] = rfc3339(self.stop_at)
        return out


@dataclass
class _Operation:
    project: str
    zone: str
    name: str
    id: str
    op_type: str
    target_link: str
    target_id: str
    user: str
    inserted: float
    done_at: float
    error_code: str | None = None  # a GCE code: the operation ends with error
    http_status: int = 0
    message: str = ""
    status_message: str | None = None

    def render(self, now: float) -> dict[str, Any]:
        done = now >= self.done_at
        out: dict[str, Any] = {
            "kind": "compute#operation",
            "id": self.id,
            "name": self.name,
            "zone": f"{API}/projects/{self.project}/zones/{self.zone}",
            "operationType": self.op_type,
            "targetLink": self.target_link,
            "targetId": self.target_id,
            "status": "DONE" if done else "RUNNING",
            "user": self.user,
            "progress": 100 if done else 0,
            "insertTime": rfc3339(self.inserted),
            "startTime": rfc3339(self.inserted),
            "selfLink": f"{API}/projects/{self.project}/zones/{self.zone}/operations/"
                        f"{self.name}",
        }
        if self.status_message:
            out["statusMessage"] = self.status_message
        if done:
            out["endTime"] = rfc3339(self.done_at)
            if self.error_code:
                out["error"] = {"errors": [{"code": self.error_code, "message": self.message}]}
                out["httpErrorStatusCode"] = self.http_status
                out["httpErrorMessage"] = STATUS_TEXT.get(self.http_status, "ERROR")
        return out


@dataclass
class _ZoneFailure:
    code: str
    via: str  # "operation" or "http"
    http_status: int
    times: int | None  # None: until cleared


@dataclass
class _Injected:
    status: int
    left: int
    reason: str | None = None


@dataclass
class _Stall:
    seconds: float
    after: bool  # True: apply the effect, then answer late (a client timeout that "worked")


# --- filters ---------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|!=|=|[^\s()"=!]+|\S)')
_FIELD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*$")
Predicate = Callable[[dict[str, Any]], bool]


def parse_filter(text: str, fields: set[str]) -> Predicate:
    """GCE's list filter, the subset we use: ``field = "v"``, ``field != v``, parentheses,
    ``AND`` and implicit AND. Anything else raises ApiError(400)."""
    tokens = [m.group(1) for m in _TOKEN_RE.finditer(text.strip())] if text.strip() else []
    pos = 0

    def bad(why: str) -> ApiError:
        return ApiError(400, f"Invalid value for field 'filter': '{text}'. {why}", "invalid")

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise bad("Unexpected end of filter.")
        pos += 1
        return tokens[pos - 1]

    def term() -> Predicate:
        tok = take()
        if tok == "(":
            inner = expr()
            if take() != ")":
                raise bad("Unbalanced parentheses.")
            return inner
        if tok.upper() in ("AND", "OR", "NOT") or not _FIELD_RE.match(tok):
            raise bad(f"Unexpected token {tok!r} (the fake knows = and != comparisons).")
        if tok.split(".")[0] not in fields:
            raise bad(f"Invalid field name {tok!r}.")
        op = take()
        if op not in ("=", "!="):
            raise bad(f"Unsupported operator {op!r}.")
        raw = take()
        if raw in ("(", ")", "=", "!="):
            raise bad(f"Missing value after {tok} {op}.")
        value = json.loads(raw) if raw.startswith('"') else raw
        path = tok.split(".")

        def match(resource: dict[str, Any]) -> bool:
            got: Any = resource
            for part in path:
                got = got.get(part) if isinstance(got, dict) else None
            if isinstance(got, bool):
                got = "true" if got else "false"
            equal = got is not None and str(got) == value
            return equal if op == "=" else not equal

        return match

    def expr() -> Predicate:
        terms = [term()]
        while peek() not in (None, ")"):
            if peek() == "OR":
                raise bad("OR is not implemented by the fake.")
            if peek() == "AND":
                take()
            terms.append(term())
        return lambda r: all(t(r) for t in terms)

    if not tokens:
        return lambda r: True
    pred = expr()
    if pos != len(tokens):
        raise bad(f"Unexpected {tokens[pos]!r}.")
    return pred


def _page(items: list[Any], query: Any) -> tuple[list[Any], str | None]:
    try:
        size = int(query.get("maxResults") or MAX_RESULTS)
    except ValueError:
        raise ApiError(400, "Invalid value for field 'maxResults'.", "invalid") from None
    if not 0 <= size <= MAX_RESULTS:
        raise ApiError(400, f"Invalid value for field 'maxResults': '{size}'. Must be less "
                            f"than or equal to 500", "invalid")
    size = size or MAX_RESULTS
    offset = 0
    if query.get("pageToken"):
        try:
            offset = int(json.loads(base64.urlsafe_b64decode(query["pageToken"]))["o"])
        except (ValueError, KeyError, TypeError):
            raise ApiError(400, "Invalid value for field 'pageToken'.", "invalid") from None
    page = items[offset:offset + size]
    more = offset + size < len(items)
    token = base64.urlsafe_b64encode(json.dumps({"o": offset + size}).encode()).decode() \
        if more else None
    return page, token


# --- the fake --------------------------------------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class GceFake:
    """The Compute Engine REST API (instances and zone operations), for any project."""

    def __init__(self, *, boot_delay: float = 0.0, delete_delay: float = 0.2,
                 op_delay: float = 0.0, zones: tuple[str, ...] = DEFAULT_ZONES,
                 user: str = "skyjobs@fake-project.iam.gserviceaccount.com") -> None:
        self.boot_delay, self.delete_delay, self.op_delay = boot_delay, delete_delay, op_delay
        self.user = user
        self.url = ""
        self.calls: Counter[str] = Counter()
        self.inserts: list[tuple[float, str, str, str | None]] = []
        self._zones = list(zones)
        self._lock = threading.RLock()
        self._instances: dict[tuple[str, str, str], _Instance] = {}  # (project, zone, name)
        self._ops: dict[tuple[str, str, str], _Operation] = {}  # (project, zone, op name)
        self._requests: dict[tuple[str, str], _Operation] = {}  # (project, requestId)
        self._failing: dict[str, _ZoneFailure] = {}
        self._injected: dict[str, _Injected] = {}
        self._stalls: dict[str, _Stall] = {}
        self._metadata: dict[str, GceMetadata] = {}  # by instance id
        self._ips = itertools.count(0)
        self._loop: LoopThread | None = None
        self._runner: web.AppRunner | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> GceFake:
        self._loop = LoopThread("gce-fake").start()
        self._runner, port = self._loop.run(self._start())
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        with self._lock:
            metadata = list(self._metadata.values())
            self._metadata.clear()
        for md in metadata:
            md.close()
        if self._runner is not None:
            self._loop.run(self._runner.cleanup())
        self._loop.stop()
        self._loop = None

    def __enter__(self) -> GceFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def client_options(self) -> dict[str, str]:
        return {"api_endpoint": self.url}

    async def _start(self) -> tuple[web.AppRunner, int]:
        app = web.Application(middlewares=[self._errors])
        base = "/compute/v1/projects/{project}"
        zone = base + "/zones/{zone}"
        app.router.add_post(zone + "/instances", self._insert)
        app.router.add_get(zone + "/instances", self._list)
        app.router.add_get(zone + "/instances/{name}", self._get)
        app.router.add_delete(zone + "/instances/{name}", self._delete)
        app.router.add_get(base + "/aggregated/instances", self._aggregated_list)
        app.router.add_get(zone + "/operations", self._ops_list)
        app.router.add_get(zone + "/operations/{op}", self._ops_get)
        app.router.add_post(zone + "/operations/{op}/wait", self._ops_wait)
        app.router.add_get(base + "/aggregated/operations", self._ops_aggregated_list)
        return await _serve(app)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as err:
            return err.response()
        except web.HTTPNotFound:
            return ApiError(404, f"The requested URL {request.path} was not found",
                            "notFound").response()
        except web.HTTPMethodNotAllowed:
            return ApiError(405, f"Method {request.method} not allowed", "badRequest").response()

    # --- test hooks --------------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            metadata = list(self._metadata.values())
            self._metadata.clear()
            self._instances.clear()
            self._ops.clear()
            self._requests.clear()
            self._failing.clear()
            self._injected.clear()
            self._stalls.clear()
            self.calls.clear()
            self.inserts.clear()
        for md in metadata:
            md.close()

    def fail_zone(self, zone: str, code: str | None, *, via: str | None = None,
                  http_status: int | None = None, times: int | None = None) -> None:
        """Make inserts in ``zone`` fail (``code=None`` clears it).

        GCE codes (ZONE_RESOURCE_POOL_EXHAUSTED[_WITH_DETAILS], UNSUPPORTED_OPERATION,
        QUOTA_EXCEEDED) fail inside the Operation by default, as GCE reports them; HTTP
        reasons (forbidden, rateLimitExceeded, quotaExceeded, ...) fail the insert call.
        ``times``: fail that many inserts, then succeed again (None: until cleared)."""
        with self._lock:
            if code is None:
                self._failing.pop(zone, None)
                return
            if via is None:
                via = "operation" if code in OPERATION_ERRORS else "http"
            if via not in ("operation", "http"):
                raise ValueError(f"via must be 'operation' or 'http', not {via!r}")
            if via == "operation" and code not in OPERATION_ERRORS:
                raise ValueError(f"{code} is not a GCE operation error code")
            status = http_status or (OPERATION_ERRORS[code][0] if code in OPERATION_ERRORS
                                     else REASON_STATUS.get(code, 400))
            self._failing[zone] = _ZoneFailure(code, via, status, times)

    def fail_next(self, method: str, status: int, n: int = 1, *,
                  reason: str | None = None) -> None:
        """The next ``n`` calls of ``method`` ("insert", "get", "delete", "list",
        "aggregatedList", "operations.get", ...) answer HTTP ``status`` and do nothing."""
        with self._lock:
            self._injected[method] = _Injected(status, n, reason)

    def stall(self, method: str, seconds: float, *, after: bool = False) -> None:
        """Delay every call of ``method`` (0 clears). ``after=True``: do the work first and
        answer late, as when a client times out on a request GCE did carry out."""
        with self._lock:
            if seconds <= 0:
                self._stalls.pop(method, None)
            else:
                self._stalls[method] = _Stall(seconds, after)

    def instances(self, zone: str | None = None) -> list[dict[str, Any]]:
        """A snapshot of every instance (as ``instances.get`` renders it)."""
        now = time.time()
        with self._lock:
            self._tick(now)
            return [i.render(now) for i in self._instances.values()
                    if zone is None or i.zone == zone]

    def instance(self, name: str, zone: str | None = None) -> dict[str, Any] | None:
        now = time.time()
        with self._lock:
            self._tick(now)
            inst = self._find(name, zone)
            return inst.render(now) if inst is not None else None

    def operations(self, zone: str | None = None) -> list[dict[str, Any]]:
        now = time.time()
        with self._lock:
            self._tick(now)
            return [o.render(now) for o in self._ops.values() if zone is None or o.zone == zone]

    def metadata_for(self, name: str, zone: str | None = None) -> GceMetadata:
        """The metadata server of the instance called ``name`` (created on first use)."""
        with self._lock:
            inst = self._find(name, zone)
            if inst is None:
                raise KeyError(f"no instance {name!r}")
        return self._metadata_of(inst)

    def _metadata_of(self, inst: _Instance) -> GceMetadata:
        # Keyed by instance id: a new VM under an old name gets a fresh metadata server.
        with self._lock:
            md = self._metadata.get(inst.id)
        if md is not None:
            return md
        assert self._loop is not None, "the fake is not started"
        attributes = {i["key"]: i.get("value", "") for i in inst.body["metadata"]["items"]}
        md = GceMetadata(name=inst.name, zone=inst.zone, project=inst.project,
                         instance_id=inst.id, network_ip=inst.network_ip,
                         attributes=attributes, loop=self._loop)
        with self._lock:
            existing = self._metadata.setdefault(inst.id, md)
        if existing is not md:
            md.close()  # another thread made one meanwhile
        return existing

    def preempt(self, name: str, notice_s: float = 0.0, zone: str | None = None) -> None:
        """Reclaim a Spot VM as GCE does: ``instance/preempted`` turns TRUE now; after
        ``notice_s`` the instance goes STOPPING, a ``compute.instances.preempted`` operation
        is recorded, and ``delete_delay`` later it is deleted or TERMINATED according to its
        ``instanceTerminationAction``."""
        self._preempt(name, notice_s, zone, notice=True)

    def reclaim(self, name: str, zone: str | None = None) -> None:
        """A preemption without any notice: STOPPING at once."""
        self._preempt(name, 0.0, zone, notice=False)

    def _preempt(self, name: str, notice_s: float, zone: str | None, notice: bool) -> None:
        now = time.time()
        with self._lock:
            self._tick(now)
            inst = self._find(name, zone)
            if inst is None:
                raise KeyError(f"no instance {name!r}")
            if inst.stop_at is not None:
                raise ValueError(f"instance {name!r} is already stopping")
            inst.stop_at = now + notice_s
            inst.end_at = inst.stop_at + self.delete_delay
            inst.end_action = inst.body["scheduling"].get("instanceTerminationAction", "STOP")
            inst.preempt_at = inst.stop_at
        if notice:
            self._metadata_of(inst).set_preempted(True)

    def user_delete(self, name: str, zone: str | None = None) -> None:
        """Someone deletes the instance outside skyjobs (console, gcloud)."""
        now = time.time()
        with self._lock:
            self._tick(now)
            inst = self._find(name, zone)
            if inst is None:
                raise KeyError(f"no instance {name!r}")
            self._start_delete(inst, now)
            self._add_op(inst.project, inst.zone, "delete", inst, now, user="someone@example.com")

    # --- state (call with the lock held) -----------------------------------------------------

    def _find(self, name: str, zone: str | None) -> _Instance | None:
        found = [i for i in self._instances.values()
                 if i.name == name and (zone is None or i.zone == zone)]
        if len(found) > 1:
            raise ValueError(f"instance name {name!r} is in several zones: pass zone=")
        return found[0] if found else None

    def _tick(self, now: float) -> None:
        """Bring timed transitions up to ``now``: record due preemption operations, remove
        deleted instances whose STOPPING phase is over."""
        for key, inst in list(self._instances.items()):
            if inst.preempt_at is not None and now >= inst.preempt_at:
                op = self._add_op(inst.project, inst.zone, "compute.instances.preempted", inst,
                                  inst.preempt_at, user="system", prefix="systemevent")
                op.status_message = "Instance was preempted."
                inst.preempt_at = None
            if inst.end_at is not None and now >= inst.end_at and inst.end_action == "DELETE":
                del self._instances[key]

    def _start_delete(self, inst: _Instance, now: float) -> None:
        going = inst.end_action == "DELETE" and inst.end_at is not None
        if going and inst.stop_at is not None and inst.stop_at <= now:
            return  # already STOPPING on its way out
        if inst.stop_at is None or inst.stop_at > now:
            inst.stop_at = now
            inst.preempt_at = None  # deleted before a pending preemption fell due
        inst.end_at = now + self.delete_delay
        inst.end_action = "DELETE"

    def _add_op(self, project: str, zone: str, op_type: str, inst: _Instance | None,
                now: float, *, user: str | None = None, name: str = "",
                prefix: str = "operation", done_at: float | None = None) -> _Operation:
        target = inst.link if inst is not None else \
            f"{API}/projects/{project}/zones/{zone}/instances/{name}"
        op = _Operation(project, zone, _op_name(prefix), _int64(), op_type, target,
                        inst.id if inst is not None else _int64(), user or self.user, now,
                        now if done_at is None else done_at)
        self._ops[(project, zone, op.name)] = op
        return op

    def _next_ip(self, base: int) -> str:
        n = next(self._ips)
        return f"{base}.{128 + (n // (253 * 256)) % 128}.{(n // 253) % 256}.{n % 253 + 2}"

    # --- request plumbing --------------------------------------------------------------------

    async def _inject(self, method: str) -> _Stall | None:
        """Count the call, apply stalls and injected failures. Returns a stall to apply
        after the work (``stall(after=True)``)."""
        with self._lock:
            self.calls[method] += 1
            stall = self._stalls.get(method)
            injected = self._injected.get(method)
            if injected is not None:
                injected.left -= 1
                if injected.left <= 0:
                    del self._injected[method]
        if stall is not None and not stall.after:
            await asyncio.sleep(stall.seconds)
        if injected is not None:
            messages = {429: "Rate Limit Exceeded",
                        503: "Internal error. Please try again or contact Google Support. "
                             "(Code: 'fake-injected')"}
            raise ApiError(injected.status,
                           messages.get(injected.status, f"Injected error {injected.status}"),
                           injected.reason)
        return stall if stall is not None and stall.after else None

    @staticmethod
    async def _late(stall: _Stall | None) -> None:
        if stall is not None:
            await asyncio.sleep(stall.seconds)

    def _zone(self, request: web.Request) -> tuple[str, str]:
        project, zone = request.match_info["project"], request.match_info["zone"]
        if not ZONE_RE.match(zone):
            raise ApiError(400, f"Invalid value for field 'zone': '{zone}'. Unknown zone.",
                           "invalid")
        with self._lock:
            if zone not in self._zones:
                self._zones.append(zone)
        return project, zone

    # --- instances ---------------------------------------------------------------------------

    async def _insert(self, request: web.Request) -> web.Response:
        project, zone = request.match_info["project"], request.match_info["zone"]
        request_id = request.query.get("requestId")
        try:
            body = await request.json()
        except ValueError:
            body = None
        name = body.get("name", "") if isinstance(body, dict) else ""
        with self._lock:
            self.inserts.append((time.time(), zone, name, request_id))
        late = await self._inject("insert")
        project, zone = self._zone(request)
        if not isinstance(body, dict):
            raise ApiError(400, "Invalid JSON payload received.", "parseError")
        now = time.time()
        with self._lock:
            self._tick(now)
            replay = self._requests.get((project, request_id)) if request_id else None
            if replay is not None:
                result = replay.render(now)
            else:
                result = self._do_insert(project, zone, body, request_id, now)
        await self._late(late)
        return _json(result)

    def _do_insert(self, project: str, zone: str, body: dict[str, Any],
                   request_id: str | None, now: float) -> dict[str, Any]:
        spec = _validate_instance(project, zone, body)
        name = spec["name"]
        link = f"{API}/projects/{project}/zones/{zone}/instances/{name}"
        # The name clash is checked synchronously (HTTP 409); capacity only later, inside
        # the operation.
        if (project, zone, name) in self._instances:
            raise ApiError(409, f"The resource 'projects/{project}/zones/{zone}/instances/"
                                f"{name}' already exists", "alreadyExists")
        failure = self._failing.get(zone)
        if failure is not None:
            if failure.times is not None:
                failure.times -= 1
                if failure.times <= 0:
                    del self._failing[zone]
            scope = f"projects/{project}/zones/{zone}"
            if failure.via == "http":
                reason = "quotaExceeded" if failure.code == "QUOTA_EXCEEDED" else failure.code
                message = (OPERATION_ERRORS[failure.code][1] if failure.code in OPERATION_ERRORS
                           else f"Injected {failure.code} for {scope}")
                if failure.code == "forbidden":  # GCE's wording for a missing IAM permission
                    target = link.removeprefix(API + "/")
                    message = f"Required 'compute.instances.create' permission for '{target}'"
                raise ApiError(failure.http_status,
                               message.format(scope=scope, region=zone.rsplit("-", 1)[0]),
                               reason)
            op = self._add_op(project, zone, "insert", None, now, name=name,
                              done_at=now + self.op_delay)
            op.error_code = failure.code
            op.http_status = failure.http_status
            op.message = OPERATION_ERRORS[failure.code][1].format(
                scope=scope, region=zone.rsplit("-", 1)[0])
        else:
            accesses = [ac for nic in spec["networkInterfaces"]
                        for ac in nic.get("accessConfigs", [])]
            inst = _Instance(project, zone, name, _int64(), spec, now, now + self.boot_delay,
                             self._next_ip(10), self._next_ip(34) if accesses else None,
                             base64.b64encode(random.randbytes(8)).decode())
            self._instances[(project, zone, name)] = inst
            op = self._add_op(project, zone, "insert", inst, now, done_at=now + self.op_delay)
        if request_id:
            self._requests[(project, request_id)] = op
        return op.render(now)

    async def _get(self, request: web.Request) -> web.Response:
        late = await self._inject("get")
        project, zone = self._zone(request)
        name = request.match_info["name"]
        now = time.time()
        with self._lock:
            self._tick(now)
            inst = self._instances.get((project, zone, name))
            if inst is None:
                raise _not_found(project, zone, name)
            result = inst.render(now)
        await self._late(late)
        return _json(result)

    async def _delete(self, request: web.Request) -> web.Response:
        late = await self._inject("delete")
        project, zone = self._zone(request)
        name = request.match_info["name"]
        request_id = request.query.get("requestId")
        now = time.time()
        with self._lock:
            self._tick(now)
            replay = self._requests.get((project, request_id)) if request_id else None
            if replay is not None:
                result = replay.render(now)
            else:
                inst = self._instances.get((project, zone, name))
                if inst is None:
                    raise _not_found(project, zone, name)
                self._start_delete(inst, now)
                op = self._add_op(project, zone, "delete", inst, now,
                                  done_at=now + self.op_delay)
                if request_id:
                    self._requests[(project, request_id)] = op
                result = op.render(now)
        await self._late(late)
        return _json(result)

    async def _list(self, request: web.Request) -> web.Response:
        late = await self._inject("list")
        project, zone = self._zone(request)
        pred = parse_filter(request.query.get("filter", ""), INSTANCE_FIELDS)
        now = time.time()
        with self._lock:
            self._tick(now)
            rows = [i.render(now) for (p, z, _), i in sorted(self._instances.items())
                    if p == project and z == zone]
        page, token = _page([r for r in rows if pred(r)], request.query)
        result: dict[str, Any] = {
            "kind": "compute#instanceList", "id": f"projects/{project}/zones/{zone}/instances",
            "selfLink": f"{API}/projects/{project}/zones/{zone}/instances"}
        if page:
            result["items"] = page
        if token:
            result["nextPageToken"] = token
        await self._late(late)
        return _json(result)

    async def _aggregated_list(self, request: web.Request) -> web.Response:
        late = await self._inject("aggregatedList")
        project = request.match_info["project"]
        pred = parse_filter(request.query.get("filter", ""), INSTANCE_FIELDS)
        now = time.time()
        with self._lock:
            self._tick(now)
            rows = [(z, i.render(now)) for (p, z, _), i in sorted(self._instances.items())
                    if p == project]
            zones = sorted(self._zones)
        page, token = _page([(z, r) for z, r in rows if pred(r)], request.query)
        result = {"kind": "compute#instanceAggregatedList",
                  "id": f"projects/{project}/aggregated/instances",
                  "items": _scoped(zones, page, "instances"),
                  "selfLink": f"{API}/projects/{project}/aggregated/instances"}
        if token:
            result["nextPageToken"] = token
        await self._late(late)
        return _json(result)

    # --- zone operations ---------------------------------------------------------------------

    def _op(self, request: web.Request) -> _Operation:
        project, zone = self._zone(request)
        name = request.match_info["op"]
        with self._lock:
            self._tick(time.time())
            op = self._ops.get((project, zone, name))
        if op is None:
            raise ApiError(404, f"The resource 'projects/{project}/zones/{zone}/operations/"
                                f"{name}' was not found", "notFound")
        return op

    async def _ops_get(self, request: web.Request) -> web.Response:
        late = await self._inject("operations.get")
        op = self._op(request)
        await self._late(late)
        return _json(op.render(time.time()))

    async def _ops_wait(self, request: web.Request) -> web.Response:
        """GCE holds zoneOperations.wait until the operation is DONE or 2 minutes pass."""
        late = await self._inject("operations.wait")
        op = self._op(request)
        # An operation's end is fixed when it starts, so one sleep covers the hold.
        await asyncio.sleep(max(0.0, min(op.done_at - time.time(), OP_WAIT_MAX)))
        await self._late(late)
        return _json(op.render(time.time()))

    async def _ops_list(self, request: web.Request) -> web.Response:
        late = await self._inject("operations.list")
        project, zone = self._zone(request)
        pred = parse_filter(request.query.get("filter", ""), OPERATION_FIELDS)
        now = time.time()
        with self._lock:
            self._tick(now)
            rows = [o.render(now) for o in sorted(self._ops.values(), key=lambda o: o.inserted)
                    if o.project == project and o.zone == zone]
        page, token = _page([r for r in rows if pred(r)], request.query)
        result: dict[str, Any] = {
            "kind": "compute#operationList",
            "id": f"projects/{project}/zones/{zone}/operations",
            "selfLink": f"{API}/projects/{project}/zones/{zone}/operations"}
        if page:
            result["items"] = page
        if token:
            result["nextPageToken"] = token
        await self._late(late)
        return _json(result)

    async def _ops_aggregated_list(self, request: web.Request) -> web.Response:
        late = await self._inject("operations.aggregatedList")
        project = request.match_info["project"]
        pred = parse_filter(request.query.get("filter", ""), OPERATION_FIELDS)
        now = time.time()
        with self._lock:
            self._tick(now)
            rows = [(o.zone, o.render(now))
                    for o in sorted(self._ops.values(), key=lambda o: (o.zone, o.inserted))
                    if o.project == project]
            zones = sorted(self._zones)
        page, token = _page([(z, r) for z, r in rows if pred(r)], request.query)
        result = {"kind": "compute#operationAggregatedList",
                  "id": f"projects/{project}/aggregated/operations",
                  "items": _scoped(zones, page, "operations"),
                  "selfLink": f"{API}/projects/{project}/aggregated/operations"}
        if token:
            result["nextPageToken"] = token
        await self._late(late)
        return _json(result)


def _scoped(zones: list[str], page: list[tuple[str, dict[str, Any]]],
            key: str) -> dict[str, Any]:
    """Aggregated-list ``items``: every scope, with its resources or GCE's empty warning."""
    by_zone: dict[str, list[dict[str, Any]]] = {}
    for zone, row in page:
        by_zone.setdefault(zone, []).append(row)
    items: dict[str, Any] = {}
    for zone in sorted(set(zones) | set(by_zone)):
        scope = f"zones/{zone}"
        if zone in by_zone:
            items[scope] = {key: by_zone[zone]}
        else:
            items[scope] = {"warning": {
                "code": "NO_RESULTS_ON_PAGE",
                "message": f"There are no results for scope '{scope}' on this page.",
                "data": [{"key": "scope", "value": scope}]}}
    return items


def _not_found(project: str, zone: str, name: str) -> ApiError:
    return ApiError(404, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' "
                         f"was not found", "notFound")


def _invalid(field_name: str, value: Any, why: str) -> ApiError:
    return ApiError(400, f"Invalid value for field '{field_name}': '{value}'. {why}", "invalid")


def _zonal_url(project: str, zone: str, value: str, collection: str, field_name: str) -> str:
    """A partial or full URL of a zonal resource, checked to be in ``zone``, made full."""
    m = re.search(rf"(?:projects/([^/]+)/)?zones/([^/]+)/{collection}/([^/]+)$", value or "")
    if m is None:
        raise _invalid(field_name, value, f"Must be a URL of a {collection} resource.")
    if m.group(2) != zone:
        raise _invalid(field_name, value,
                       f"The {collection} must be in the instance's zone '{zone}'.")
    return f"{API}/projects/{m.group(1) or project}/zones/{zone}/{collection}/{m.group(3)}"


def _validate_instance(project: str, zone: str, body: dict[str, Any]) -> dict[str, Any]:
    """The insert body checked as GCE checks it, normalized to what GCE stores."""
    spec = copy.deepcopy(body)
    name = spec.get("name", "")
    if not NAME_RE.match(name):
        raise _invalid("resource.name", name,
                       "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
    spec["machineType"] = _zonal_url(project, zone, spec.get("machineType", ""),
                                     "machineTypes", "resource.machineType")
    labels = spec.get("labels") or {}
    if len(labels) > 64:
        raise _invalid("resource.labels", len(labels), "At most 64 labels.")
    for key, value in labels.items():
        if not LABEL_KEY_RE.match(key):
            raise _invalid("resource.labels", key, "Label keys must start with a lowercase "
                           "letter and contain only lowercase letters, digits, _ and -.")
        if not isinstance(value, str) or not LABEL_VALUE_RE.match(value):
            raise _invalid(f"resource.labels.{key}", value, "Label values may contain only "
                           "lowercase letters, digits, _ and -, at most 63 characters.")
    metadata = spec.get("metadata") or {}
    items = metadata.get("items") or []
    size = sum(len(i.get("key", "")) + len(i.get("value", "")) for i in items)
    if size > 512 * 1024:
        raise _invalid("resource.metadata", size, "Metadata is over 512 KB.")
    if len({i.get("key") for i in items}) != len(items):
        raise _invalid("resource.metadata", "items", "Duplicate metadata keys.")
    spec["metadata"] = {"items": items}
    disks = spec.get("disks") or []
    if not any(d.get("boot") for d in disks):
        raise _invalid("resource.disks", "", "No boot disk is specified.")
    for index, disk in enumerate(disks):
        disk.setdefault("deviceName", f"{name}" if index == 0 else f"persistent-disk-{index}")
        disk.update(kind="compute#attachedDisk", index=index,
                    type=disk.get("type", "PERSISTENT"), mode=disk.get("mode", "READ_WRITE"),
                    source=f"{API}/projects/{project}/zones/{zone}/disks/"
                           f"{name if index == 0 else f'{name}-{index}'}")
        size_gb = (disk.pop("initializeParams", None) or {}).get("diskSizeGb", "10")
        disk["diskSizeGb"] = str(size_gb)  # int64: a string, as GCE sends it
    nics = spec.get("networkInterfaces") or []
    if not nics:
        raise _invalid("resource.networkInterfaces", "", "At least one network interface "
                       "is required.")
    for index, nic in enumerate(nics):
        nic["kind"] = "compute#networkInterface"
        nic["name"] = f"nic{index}"
        network = nic.get("network") or "global/networks/default"
        nic["network"] = network if network.startswith("https://") else \
            f"{API}/projects/{project}/{network.split('projects/' + project + '/')[-1]}"
        for ac in nic.get("accessConfigs", []):
            ac.setdefault("kind", "compute#accessConfig")
            ac.setdefault("type", "ONE_TO_ONE_NAT")
            ac.setdefault("name", "External NAT")
            ac.setdefault("networkTier", "PREMIUM")
    accelerators = spec.get("guestAccelerators") or []
    for index, acc in enumerate(accelerators):
        acc["acceleratorType"] = _zonal_url(
            project, zone, acc.get("acceleratorType", ""), "acceleratorTypes",
            f"resource.guestAccelerators[{index}].acceleratorType")
        if int(acc.get("acceleratorCount", 0)) < 1:
            raise _invalid(f"resource.guestAccelerators[{index}].acceleratorCount",
                           acc.get("acceleratorCount"), "Must be at least 1.")
    sched = dict(spec.get("scheduling") or {})
    model = sched.get("provisioningModel", "SPOT" if sched.get("preemptible") else "STANDARD")
    if model not in ("SPOT", "STANDARD"):
        raise _invalid("resource.scheduling.provisioningModel", model, "Unknown value.")
    spot = model == "SPOT"
    # GCE's defaults: Spot VMs cannot live-migrate or restart and stop when preempted.
    host = sched.get("onHostMaintenance", "TERMINATE" if spot else "MIGRATE")
    restart = sched.get("automaticRestart", not spot)
    if spot and (host != "TERMINATE" or restart):
        raise _invalid("resource.scheduling", model, "Spot VMs must have onHostMaintenance "
                       "TERMINATE and automaticRestart false.")
    if accelerators and host != "TERMINATE":
        raise _invalid("resource.scheduling.onHostMaintenance", host,
                       "Instances with guest accelerators do not support live migration.")
    action = sched.get("instanceTerminationAction")
    if action is not None and action not in ("DELETE", "STOP"):
        raise _invalid("resource.scheduling.instanceTerminationAction", action,
                       "Must be DELETE or STOP.")
    if action is not None and not spot:
        raise _invalid("resource.scheduling.instanceTerminationAction", action,
                       "Only Spot VMs take a termination action.")
    sched.update(provisioningModel=model, onHostMaintenance=host, automaticRestart=restart,
                 preemptible=spot)
    if spot:
        sched["instanceTerminationAction"] = action or "STOP"
    spec["scheduling"] = sched
    spec["networkInterfaces"] = nics
    spec["disks"] = disks
    return spec
