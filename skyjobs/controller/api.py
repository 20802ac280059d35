"""The controller's HTTP API (aiohttp).

``/api/v1/...`` is for users and needs the controller token; ``/agent/v1/attempts/<id>/...``
is for agents and needs that attempt's own credential, so an agent can only report for its
own attempt. Every error is a JSON ``{"error": "..."}`` with a 4xx (or 500 for a bug), and a
rejected request changes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel

from skyjobs import models as m
from skyjobs import openapi
from skyjobs.checkpoint.buckets import local_bucket_dir
from skyjobs.controller import store as st
from skyjobs.controller import views
from skyjobs.controller.messages import Message
from skyjobs.controller.services import Services
from skyjobs.controller.sessions import MAX_GO_WAIT
from skyjobs.exceptions import (
    IllegalTransitionError,
    NotFoundError,
    ProviderError,
    SkyjobsError,
    SpecError,
)
from skyjobs.fsutil import atomic_write
from skyjobs.pipeline import task_source
from skyjobs.providers import base
from skyjobs.providers.base import BucketChecker, SimulatedMarket, ability
from skyjobs.recovery.placement import match, require_candidates
from skyjobs.spec import MAX_NAME_CHARS, MAX_NODES, TaskSpec, check_document, parse_task
from skyjobs.states import MessageKind, NodePhase

log = structlog.get_logger("skyjobs.api")

MAX_ARCHIVE_BYTES = 100 * 1024 * 1024
MAX_LOG_CHUNK = 1 << 20
# The longest request line served: every query the OpenAPI document allows (two 4096-char
# texts, each up to 12 bytes a character once percent-encoded) must reach the handlers, which
# answer with a JSON error; aiohttp's default (8190) answered a plain-text 400 before them.
MAX_REQUEST_LINE = 128 * 1024
MAX_CANCEL_IDS = m.MAX_CANCEL_IDS
# Every integer from a request fits SQLite's signed 64-bit integer and a file offset.
INT64_MAX = m.INT64_MAX
# Served without a token: it is the same for every installation of this version and says
# nothing about this controller, and tools (codegen, schemathesis) read it before they
# hold a token (skyjobs/openapi.py).
PUBLIC_PATHS = frozenset({"/api/v1/openapi.json"})
API_PREFIXES = ("/api/", "/agent/", "/metrics")
P = ParamSpec("P")
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CTL: web.AppKey[Services] = web.AppKey("services")


class BadRequest(SkyjobsError):
    pass


class Conflict(SkyjobsError):
    """The request is well-formed but the job's state does not allow it right now (409)."""


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctl = request.app[CTL]
    path = request.path
    if path in PUBLIC_PATHS:
        pass
    elif path.startswith("/api/") or (path == "/metrics" and not ctl.config.metrics_public):
        if not _bearer_ok(request, ctl.token):
            return _error(401, "unauthorized")
    elif path.startswith("/agent/"):
        attempt = _parse_int(request.match_info.get("attempt"), 1, INT64_MAX)
        if attempt is None or not _bearer_ok(request, ctl.sessions.agent_token(attempt)):
            return _error(401, "unauthorized")
    try:
        return await handler(request)
    except web.HTTPException as err:
        if err.status >= 400 and path.startswith(API_PREFIXES):
            return _http_error(request, err)
        raise
    except (BadRequest, SpecError, m.RequestError) as err:
        return _error(400, str(err))
    except NotFoundError as err:
        return _error(404, str(err))
    except (IllegalTransitionError, Conflict) as err:
        return _error(409, str(err))
    except ProviderError as err:
        return _error(502, f"provider error: {err}")
    except ConnectionError:
        # The peer went away mid-request (an agent killed by its preemption): nothing to do.
        return _error(400, "connection lost")
    except Exception:  # noqa: BLE001 - a bug must not kill the server or leak a traceback
        log.exception("request failed", path=path)
        return _error(500, "internal error (see the controller log)")


def _http_error(request: web.Request, err: web.HTTPException) -> web.Response:
    """aiohttp's own refusals (no such path, a method the path does not take, a body too
    large) in the API's shape: one JSON error line, as every other refusal."""
    if isinstance(err, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(err.allowed_methods))
        method = request.method if request.method.isalpha() and len(request.method) <= 20 \
            else _short(request.method)
        reply = _error(405, f"{method} is not allowed here (allowed: {allowed})")
        reply.headers["Allow"] = ",".join(sorted(err.allowed_methods))
        return reply
    if isinstance(err, web.HTTPNotFound):
        return _error(404, f"no such endpoint: {_short(request.path)}")
    return _error(err.status, (err.reason or f"HTTP {err.status}").lower())


def _bearer_ok(request: web.Request, expected: str) -> bool:
    if not expected:
        return False  # an empty token file must never authorize "Bearer "
    got = request.headers.get("Authorization", "")
    if not got.startswith("Bearer "):
        return False
    # Header values arrive decoded with surrogateescape; compare the bytes as sent.
    sent = got[7:].encode("utf-8", "surrogateescape")
    return hmac.compare_digest(sent, expected.encode())


async def _body(request: web.Request, model: type[M]) -> M:
    """The JSON body, validated with its model from skyjobs.models (as the OpenAPI
    document describes it)."""
    return m.parse_request(model, await _json(request))


def _query(request: web.Request, model: type[M]) -> M:
    query = request.query
    if len(query) != len(set(query)):
        # ``?limit=5&limit=0``: which one did the caller mean? Refuse rather than guess.
        twice = next(k for k in query if len(query.getall(k)) > 1)
        raise BadRequest(f"query parameter {_short(twice)} is given more than once")
    return m.parse_request(model, dict(query))


async def _json(request: web.Request) -> dict[str, Any]:
    # JSON is UTF-8 (RFC 8259) whatever charset the Content-Type claims.
    raw = await request.read()
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError):  # includes JSONDecodeError, 5000-digit ints
        raise BadRequest("request body is not valid JSON") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    check_document(body, "request body")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


_parse_int = m.parse_int_text


def _int(value: str | None, name: str, default: int | None = None, lo: int = -INT64_MAX,
         hi: int = INT64_MAX) -> int:
    if value is None or value == "":
        if default is None:
            raise BadRequest(f"{name} is required")
        return default
    n = _parse_int(value, lo, hi)
    if n is None:
        raise BadRequest(f"{name} must be an integer from {lo} to {hi}, not {_short(value)}")
    return n


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _job_id(request: web.Request) -> int:
    return _int(request.match_info["job"], "job id")


async def _db(ctl: Services, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return await ctl.store.call(fn, *args, **kwargs)


# --- user API ------------------------------------------------------------------------------

async def submit(request: web.Request) -> web.Response:
    """One job, a job array (num_jobs), or a pipeline (tasks: its tasks in order, with
    archives: each task's workdir archive). Everything is checked before anything is
    stored."""
    ctl = request.app[CTL]
    body = await _body(request, m.SubmitRequest)
    source = body.source or "task"
    docs, encoded = body.documents()
    specs = [_checked_task(ctl, doc, body.envs, task_source(source, i, len(docs)))
             for i, doc in enumerate(docs)]
    name = body.name or specs[0].name or Path(source).stem or "job"
    if len(name) > MAX_NAME_CHARS:
        raise BadRequest(f"name must be at most {MAX_NAME_CHARS} characters")
    num_jobs = body.num_jobs
    stored = [spec.stored() for spec in specs]  # exactly what the runner validates again
    for i, spec in enumerate(specs):
        await _check_buckets(ctl, spec, task_source(source, i, len(specs)))
    saved: list[str] = []  # archives written but not in a job yet: retention keeps them
    try:
        entries = [{"spec": st_spec, "archive": await _save_archive(ctl, archive, saved),
                    "local_mounts": list(spec.local_mounts())}
                   for spec, st_spec, archive in zip(specs, stored, encoded, strict=True)]
        task = {**entries[0], "tasks": entries} if len(entries) > 1 else entries[0]
        has_archive = any(e["archive"] for e in entries)
        # Each job is leased to a live controller (fewest jobs first), which runs it.
        leased = await _db(ctl, ctl.store.sync.create_leased_jobs, name, task, has_archive,
                           "sky", num_jobs, len(entries), ctl.member,
                           ctl.config.lease_seconds)
        ids = [job_id for job_id, _ in leased]
    finally:
        ctl.archives_in_flight.subtract(saved)
    ctl.wake_webhooks()
    for job_id, owner in leased:
        if owner == ctl.member:  # (the others' doorbells rang)
            ctl.runners.start(job_id)
    log.info("job submitted", job_id=ids[0], name=name, num_jobs=num_jobs, tasks=len(entries))
    reply: dict[str, Any] = {"id": ids[0], "name": name, "status": st.PENDING,
                             "tasks": len(entries)}
    if num_jobs > 1:
        reply.update(ids=ids, array_id=ids[0])
    return web.json_response(reply, status=201)


def _checked_task(ctl: Services, doc: Any, envs: Any, source: str) -> TaskSpec:
    spec = parse_task(doc, source=source)
    if envs is not None:
        spec = spec.with_env_overrides(envs, source="envs")
    missing = spec.missing_values()
    if missing:
        raise SpecError(f"{source}: envs.{missing[0]}: needs a value (pass --env {missing[0]}=...)")
    try:
        require_candidates(spec, ctl.catalog)
    except SpecError as err:
        raise SpecError(f"{source}: {err}") from None
    return spec


async def _check_buckets(ctl: Services, spec: TaskSpec, source: str) -> None:
    for target, mount in spec.buckets().items():
        scheme = mount.source.split("://", 1)[0]
        cloud = {"local": "local", "s3": "aws", "gs": "gcp"}[scheme]
        if cloud not in ctl.providers:
            raise SpecError(f"{source}: file_mounts.{target}: {scheme}:// buckets need the "
                            f"{cloud} provider, which this controller does not enable")
        if cloud == "local":
            try:
                local_bucket_dir(mount.source, ctl.state_dir / "buckets")
            except ValueError as err:
                raise SpecError(f"{source}: file_mounts.{target}: {err}") from None
        if cloud == "local" and any(c.placement.cloud != "local"
                                    for c in match(spec, ctl.catalog)):
            raise SpecError(f"{source}: file_mounts.{target}: local:// buckets work only on "
                            "the local provider; set resources.cloud: local")
        checker = ability(ctl.providers[cloud], BucketChecker)
        if checker is not None:
            # Fail now, not at the first recovery hours later: exists, readable, writable.
            try:
                await checker.check_bucket(mount.source)
            except SpecError as err:
                raise SpecError(f"{source}: file_mounts.{target}: {err}") from None


async def _save_archive(ctl: Services, encoded: str | None, saved: list[str]) -> str | None:
    if not encoded:
        return None
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("archive is not valid base64") from None
    if len(data) > MAX_ARCHIVE_BYTES:
        raise BadRequest(f"workdir archive is larger than {MAX_ARCHIVE_BYTES >> 20} MiB")
    digest = hashlib.sha256(data).hexdigest()
    path = ctl.state_dir / "archives" / f"{digest}.tar.gz"
    saved.append(digest)
    ctl.archives_in_flight[digest] += 1

    def write() -> None:
        # Content-addressed and written before the job row exists: a crash in between
        # leaves an unused archive, never a job without its files. Two submits of one
        # workdir may both write it: each has its own temporary file, the last rename wins.
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)

    if ctl.config.database_url is not None:  # shared: stored where every controller reads
        await _db(ctl, ctl.store.sync.save_archive, digest, data)
    else:
        await asyncio.to_thread(write)
    return digest


async def list_jobs(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    q = _query(request, m.JobsQuery)
    limit, offset = q.limit, q.offset
    jobs = await _db(ctl, ctl.store.sync.list_jobs, q.statuses() or None, limit, offset,
                     q.name, q.array)
    attempts = await _db(ctl, ctl.store.sync.attempts_for_jobs, [j.id for j in jobs])
    now = time.time()
    rows = [views.job_summary(ctl, j, attempts[j.id], now) for j in jobs]
    return web.json_response({"jobs": rows, "limit": limit, "offset": offset})


async def get_job(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    job = await _db(ctl, ctl.store.sync.get_job, _job_id(request))
    attempts = await _db(ctl, ctl.store.sync.attempts_of, job.id)
    return web.json_response(views.job_detail(ctl, job, attempts, time.time()))


async def job_events(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    job_id = _job_id(request)
    after = _query(request, m.EventsQuery).after
    events = await _db(ctl, ctl.store.sync.events, job_id, after)
    attempts = await _db(ctl, ctl.store.sync.attempts_of, job_id)
    for e in events:
        e["cost_so_far"] = round(sum(a.cost(e["at"]) for a in attempts
                                     if a.created_at <= e["at"]), 6)
    return web.json_response({"events": events})


async def job_logs(request: web.Request) -> web.Response:
    """A chunk of one node's log from a byte offset. ``next_offset`` is the byte offset to
    ask for next: the chunk never ends inside a UTF-8 character while the job may still
    write the rest of it, so a character split across chunks is neither lost nor garbled."""
    ctl = request.app[CTL]
    job_id = _job_id(request)
    q = _query(request, m.LogsQuery)
    job = await _db(ctl, ctl.store.sync.get_job, job_id)
    attempt_n = job.attempt_count if q.attempt is None else q.attempt
    rank_, offset = q.rank, q.offset
    final = job.status in st.TERMINAL
    data, size, _ = await views.read_log(ctl, job.id, attempt_n, rank_, offset, MAX_LOG_CHUNK)
    if not final or offset + len(data) < size:
        data = data[:_complete_utf8(data)]
    return web.json_response({"attempt": attempt_n, "rank": rank_, "offset": offset,
                              "next_offset": offset + len(data), "bytes": len(data),
                              "size": size, "data": data.decode(errors="replace"),
                              "attempts": job.attempt_count, "status": job.status})


def _complete_utf8(data: bytes) -> int:
    """Length of data without a trailing, possibly incomplete UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)  # ASCII: nothing pending
        if byte >= 0xC0:  # a lead byte: complete if all its continuation bytes are here
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if back >= need else len(data) - back
    return len(data)  # only continuation bytes (invalid anyway): pass them on


async def cancel(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    # Every id is checked (by the model) before any job is touched: a rejected request
    # changes nothing.
    body = await _body(request, m.CancelRequest)
    if body.name is not None or body.array is not None:
        live = await _db(ctl, ctl.store.sync.list_jobs, sorted(st.LIVE), MAX_CANCEL_IDS, 0,
                         body.name, body.array)
        targets = [j.id for j in live]
    elif body.ids is not None:
        targets = list(dict.fromkeys(body.ids))
    else:
        targets = await _db(ctl, ctl.store.sync.live_job_ids)
    done, skipped = [], []
    for job_id in targets:
        try:
            await ctl.cancel(job_id, "cancel requested")
            done.append(job_id)
        except (NotFoundError, IllegalTransitionError) as err:
            skipped.append({"id": job_id, "why": str(err)})
    return web.json_response({"cancelled": done, "skipped": skipped})


async def preempt(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    notice = (await _body(request, m.PreemptRequest)).notice
    job = await _db(ctl, ctl.store.sync.get_job, _job_id(request))
    if job.status not in (st.RUNNING, st.PROVISIONING) or job.current_attempt is None:
        raise BadRequest(f"job {job.id} is {job.status}; only a running job can be preempted")
    attempt = await _db(ctl, ctl.store.sync.get_attempt, job.current_attempt)
    provider = ability(ctl.providers.get(attempt.cloud), SimulatedMarket)
    if provider is None:
        raise BadRequest(f"{attempt.cloud} instances can only be preempted by the cloud")
    issued_at = time.time()
    try:
        await provider.preempt(attempt.instance_ids, float(notice))
    except ProviderError as err:
        # The job's row still says RUNNING while its instance is already going (an earlier
        # preemption, an exit): nothing to preempt now. A state race, not a cloud failure.
        raise Conflict(f"job {job.id}: attempt {attempt.n} cannot be preempted now: {err} "
                       "(a preemption or an exit is under way)") from None
    return web.json_response({"job": job.id, "attempt": attempt.n, "notice": notice,
                              "issued_at": issued_at})


async def plan(request: web.Request) -> web.Response:
    """The ranking across every cloud of the catalog, each row marked enabled or not here;
    this controller's live prices and preemption memory. Bucket problems are warnings."""
    ctl = request.app[CTL]
    body = await _body(request, m.PlanRequest)
    source = body.source or "task"
    spec = parse_task(body.task, source=source)
    ctx = views.fresh_ranking_context(ctl.config, spec, ctl.memory, ctl.price_book, time.time())
    try:
        reply = views.plan_reply(spec, views.plan_catalog(ctl.catalog), set(ctl.providers),
                                 ctx, ctl.state_dir / "buckets")
    except SpecError as err:
        raise SpecError(f"{source}: {err}") from None
    reply["controller"] = ctl.url
    return web.json_response(reply)


async def clouds(request: web.Request) -> web.Response:
    """The clouds this controller has enabled, and for each whether it can launch now."""
    ctl = request.app[CTL]
    out = []
    for name in sorted(ctl.providers):
        provider = ctl.providers[name]
        offerings = sum(1 for o in ctl.catalog.offerings if o.cloud == name)
        out.append(views.cloud_readiness(name, provider, offerings))
    return web.json_response({"enabled": sorted(ctl.providers), "clouds": out,
                              "url": ctl.url})


async def prices(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    q = _query(request, m.PricesQuery)
    accel, cloud = q.accelerator, q.cloud
    now = time.time()
    rows = []
    for o in ctl.catalog.offerings:
        if cloud and o.cloud != cloud:
            continue
        if accel and (o.accelerator or "").lower() != accel.lower():
            continue
        rows.append(views.price_row(o, ctl.price_book.quote(o, True, now)))
    rows.sort(key=lambda r: (r["accelerator"] or "", r["spot_price"] or 1e9))
    return web.json_response({"prices": rows, "max_age_s": ctl.price_book.max_age_s})


async def capacity(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    body = await _body(request, m.CapacityRequest)
    zone, available = body.zone, body.spot
    provider = ability(ctl.providers.get("local"), SimulatedMarket)
    if provider is None:
        raise BadRequest("the local provider is not enabled")
    zones = {o.zone for o in ctl.catalog.offerings if o.cloud == "local"}
    if zone not in zones:
        raise BadRequest(f"unknown local zone {zone!r} (zones: {', '.join(sorted(zones))})")
    no_spot = await asyncio.to_thread(provider.set_spot_capacity, zone, available)
    return web.json_response({"no_spot_zones": no_spot})


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi.document())


async def health(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    counts = await _db(ctl, ctl.store.sync.count_jobs)
    return web.json_response({"ok": True, "url": ctl.url, "jobs": counts,
                              "live_runners": len(ctl.runners)})


async def controllers(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    members = await _db(ctl, ctl.store.sync.members, ctl.config.lease_seconds)
    duties = await _db(ctl, ctl.store.sync.held_duties)
    keys = ("id", "url", "agent_url", "host", "pid", "live", "jobs", "heartbeat_age",
            "started_at", "stopped_at")
    return web.json_response({"this": ctl.member, "duties": duties,
                              "controllers": [{k: m[k] for k in keys} for m in members]})


async def metrics(request: web.Request) -> web.Response:
    body, content_type = await request.app[CTL].render_metrics()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def webhook_test(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    name = (await _body(request, m.WebhookTestRequest)).name
    return web.json_response(await ctl.webhooks.send_test(name))


async def gc(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    body = await _body(request, m.GcRequest)
    days = ctl.config.retention_days if body.older_than_days is None else body.older_than_days
    if days == 0 and body.older_than_days is None:
        raise BadRequest("retention is off (retention_days: 0); say how old with "
                         "older_than_days")
    removed = await ctl.collect_garbage(days * 86400.0, body.dry_run)
    return web.json_response({"dry_run": body.dry_run, "older_than_days": days,
                              "removed": removed})


# --- agent API -----------------------------------------------------------------------------

def _attempt_id(request: web.Request) -> int:
    # Checked by the middleware already (no valid id, no credential).
    return int(request.match_info["attempt"])


async def _attempt(request: web.Request) -> st.Attempt:
    """The attempt an agent request names: its launch facts, kept in memory while it is
    live (no store read per request); 404 for one the store does not know."""
    return await request.app[CTL].sessions.attempt(_attempt_id(request))


def _rank(value: Any, num_nodes: int) -> int:
    """A node rank from a query string or a JSON body."""
    if isinstance(value, str) or value is None:
        rank_ = _int(value, "rank")
    elif isinstance(value, int) and not isinstance(value, bool):
        rank_ = value
    else:
        raise BadRequest("rank must be an integer")
    if not 0 <= rank_ < num_nodes:
        raise BadRequest(f"rank {_short_int(rank_)} is not a node of this attempt")
    return rank_


def _short_int(n: int) -> str:
    return str(n) if abs(n) < 10**20 else "(huge)"


async def agent_task(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    attempt = await _attempt(request)
    _rank(_query(request, m.AgentRankQuery).rank, attempt.num_nodes)
    job = await _db(ctl, ctl.store.sync.get_job, attempt.job_id)
    ips = ctl.sessions.ips_of(attempt.instance_ids)
    if ips is None:
        # Some node's address is not known yet: ask the cloud (once per address: an
        # instance keeps it for life), as a just-booted node may be the first to know.
        provider = ctl.providers.get(attempt.cloud)
        if provider is None:
            raise NotFoundError(f"attempt {attempt.id} runs on {attempt.cloud}, "
                                "not enabled here")
        infos = await provider.status(attempt.instance_ids)
        ctl.sessions.note_ips(infos.values())
        ips = [(infos.get(i) or base.InstanceInfo(i, base.PENDING)).ip or ""
               for i in attempt.instance_ids]
    return web.json_response(views.agent_task(ctl, job, attempt, ips))


async def agent_archive(request: web.Request) -> web.StreamResponse:
    ctl = request.app[CTL]
    attempt = await _attempt(request)
    job = await _db(ctl, ctl.store.sync.get_job, attempt.job_id)
    digest = job.task_entry(attempt.task_index).get("archive")
    if not digest:
        raise NotFoundError("this job has no workdir archive")
    if ctl.config.database_url is not None:  # shared: any controller serves it
        data = await _db(ctl, ctl.store.sync.read_archive, digest)
        if data is None:
            raise NotFoundError("this job's workdir archive is gone")
        return web.Response(body=data, content_type="application/gzip")
    return web.FileResponse(ctl.state_dir / "archives" / f"{digest}.tar.gz")


async def agent_zipapp(request: web.Request) -> web.Response:
    """The node agent as one zipapp, for the boot script (docs/bootstrap.md). The node trusts
    the sha256 its launch carried, not this header: the header is for people and caches."""
    ctl = request.app[CTL]
    await _attempt(request)  # an attempt the store does not know: 404, as for the task
    dist = ctl.agent_dist
    return web.Response(body=dist.data, content_type="application/zip",
                        headers={"X-Skyjobs-Sha256": dist.sha256})


async def agent_heartbeat(request: web.Request) -> web.Response:
    """Liveness, the go gate (a held heartbeat) and the drain flag; the answer also says
    how often to heartbeat and ship logs, which grows with the fleet (sessions)."""
    ctl = request.app[CTL]
    sessions = ctl.sessions
    attempt = await _attempt(request)
    rank_, wait = await _heartbeat_body(request)
    rank_ = _rank(rank_, attempt.num_nodes)
    if attempt.released:
        # A straggler of an attempt whose instances are gone: nothing to track (its entry
        # would never be dropped), and a held heartbeat is never granted.
        await asyncio.sleep(min(wait, MAX_GO_WAIT))
        return web.json_response({"go": False, "drain": True})
    redirect = await _owner_elsewhere(request.app[CTL], attempt)
    if redirect is not None:
        return web.json_response(redirect)
    sessions.heard(attempt.id, rank_)
    if wait > 0 and attempt.id not in sessions.go:
        await sessions.wait_go(attempt.id, wait)
    return web.json_response({"go": attempt.id in sessions.go,
                              "drain": attempt.id in sessions.drain,
                              "heartbeat_interval": sessions.heartbeat_interval(),
                              "log_interval": sessions.log_interval(),
                              "controllers": [ctl.agent_url, *ctl.peer_urls]})


async def _owner_elsewhere(ctl: Services, attempt: st.Attempt) -> dict[str, Any] | None:
    """A heartbeat for a job another controller runs (the agent failed over here, or its
    job was taken over): the answer sends the agent to the owner, which alone holds the go
    gate and judges silence. Reports (events, logs) are taken here and forwarded. While no
    live controller holds the job (its owner just died), the agent is answered and kept
    here, untracked (this controller may never run it), until one takes it over."""
    if ctl.config.database_url is None or attempt.job_id in ctl.runners:
        return None
    owner, url = await _db(ctl, ctl.store.sync.owner_of, attempt.job_id,
                           ctl.config.lease_seconds)
    if owner == ctl.member:
        return None  # ours, its runner starting: answer as usual
    here = [ctl.agent_url, *ctl.peer_urls]
    reply: dict[str, Any] = {"go": False, "drain": False,
                             "heartbeat_interval": ctl.sessions.heartbeat_interval(),
                             "log_interval": ctl.sessions.log_interval(), "controllers": here}
    if owner and url:
        # To the owner, with every other controller (this one included) behind it: if the
        # owner has just died, the agent fails over back here instead of being stranded.
        reply.update(redirect=True, controllers=[url, *(u for u in here if u != url)])
    return reply


async def _heartbeat_body(request: web.Request) -> tuple[int, float]:
    """(rank, wait_go) of the two-field body every agent sends every few seconds. The
    common shape is read without the general validation (a third of its cost: the
    heartbeat route was the profile's second-largest item at 5,000 agents); anything else
    goes through it, so refusals read the same."""
    raw = await request.read()
    try:
        doc = json.loads(raw) if len(raw) < 200 else None
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.keys() <= {"rank", "wait_go"}:
        rank_, wait = doc.get("rank"), doc.get("wait_go", 0)
        if type(rank_) is int and 0 <= rank_ < MAX_NODES and type(wait) in (int, float) \
                and 0 <= wait <= 3600:
            return rank_, float(min(wait, MAX_GO_WAIT))
    body = await _body(request, m.HeartbeatRequest)
    return body.rank, body.wait_go or 0.0


async def agent_event(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    attempt = await _attempt(request)
    body = await _body(request, m.AgentEventRequest)
    rank_ = _rank(body.rank, attempt.num_nodes)
    kind, phase, code = body.kind, body.phase, body.exit_code
    s = ctl.store.sync
    if not attempt.released and (ctl.config.database_url is None
                                 or attempt.job_id in ctl.runners):
        # (A straggler's report, or one for a job another controller runs, is recorded
        # but tracked nowhere here: nothing would ever drop it.)
        ctl.sessions.heard(attempt.id, rank_)
    if kind == "notice" or (kind == "exit" and body.noticed):
        await ctl.sessions.record_notice(attempt, rank_, body.notice,
                                         _timestamp(body.seen_at))
    if kind == "phase":
        if await _db(ctl, s.set_node_phase, attempt.id, rank_, NodePhase(str(phase))):
            ctl.runners.post(attempt.job_id, Message(MessageKind.PHASE, attempt.id, rank_))
    elif kind == "exit":
        ended = NodePhase.SETUP_FAILED if phase == "setup" and code != 0 else NodePhase.EXITED
        error = body.error
        if await _db(ctl, s.set_node_phase, attempt.id, rank_, ended, code):
            if isinstance(error, str) and error.strip():
                # What broke the agent itself (an archive it could not unpack...): an event
                # on the job, so the failure's reason is one `skyjobs events` away.
                await _db(ctl, s.add_info_event, attempt.job_id,
                          f"node {rank_}: agent error: {' '.join(error.split())[:300]}",
                          attempt.n)
            ctl.runners.post(attempt.job_id, Message(MessageKind.EXIT, attempt.id, rank_))
    return web.json_response({"ok": True})


def _timestamp(value: Any) -> float | None:
    """An advisory time from an agent or a cloud's notice; None unless plausible."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 <= value < 1e11 else None


async def agent_logs(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    attempt = await _attempt(request)
    q = _query(request, m.AgentLogsQuery)
    rank_, offset = _rank(q.rank, attempt.num_nodes), q.offset
    data = await request.read()
    target = views.log_target(ctl, attempt.job_id, attempt.n, rank_)
    size = await ctl.logs.append(target, offset, data)
    return web.json_response({"size": size})


def make_app(ctl: Services) -> web.Application:
    app = web.Application(middlewares=[errors_and_auth], client_max_size=MAX_ARCHIVE_BYTES * 2)
    app[CTL] = ctl
    app.add_routes([
        web.get("/api/v1/openapi.json", openapi_document),
        web.get("/api/v1/health", health),
        web.get("/api/v1/controllers", controllers),
        web.post("/api/v1/jobs", submit),
        web.get("/api/v1/jobs", list_jobs),
        web.get("/api/v1/jobs/{job}", get_job),
        web.get("/api/v1/jobs/{job}/events", job_events),
        web.get("/api/v1/jobs/{job}/logs", job_logs),
        web.post("/api/v1/jobs/{job}/preempt", preempt),
        web.post("/api/v1/cancel", cancel),
        web.post("/api/v1/plan", plan),
        web.get("/api/v1/clouds", clouds),
        web.get("/api/v1/prices", prices),
        web.post("/api/v1/local/capacity", capacity),
        web.post("/api/v1/webhooks/test", webhook_test),
        web.post("/api/v1/gc", gc),
        web.get("/metrics", metrics),
        web.get("/agent/v1/attempts/{attempt}/task", agent_task),
        web.get("/agent/v1/attempts/{attempt}/archive", agent_archive),
        web.get("/agent/v1/attempts/{attempt}/agent.pyz", agent_zipapp),
        web.post("/agent/v1/attempts/{attempt}/heartbeat", agent_heartbeat),
        web.post("/agent/v1/attempts/{attempt}/events", agent_event),
        web.post("/agent/v1/attempts/{attempt}/logs", agent_logs),
    ])
    __import__("skyjobs.controller.dashboard", fromlist=["setup"]).setup(app, ctl)
    return app
