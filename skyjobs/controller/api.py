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
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from skyjobs.checkpoint.buckets import local_bucket_dir
from skyjobs.controller import store as st
from skyjobs.controller import views
from skyjobs.controller.runner import Message, ranked_candidates, ranking_context
from skyjobs.exceptions import (
    IllegalTransitionError,
    NotFoundError,
    ProviderError,
    SkyjobsError,
    SpecError,
)
from skyjobs.recovery.placement import match, require_candidates
from skyjobs.recovery.policy import memory_key
from skyjobs.spec import TaskSpec, parse_task

if TYPE_CHECKING:
    from skyjobs.controller.daemon import Controller

log = structlog.get_logger("skyjobs.api")

MAX_ARCHIVE_BYTES = 100 * 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CTL: web.AppKey[Controller] = web.AppKey("controller")


class BadRequest(SkyjobsError):
    pass


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctl = request.app[CTL]
    path = request.path
    if path.startswith("/api/") or (path == "/metrics" and not ctl.config.metrics_public):
        if not _bearer_ok(request, ctl.token):
            return _error(401, "unauthorized")
    elif path.startswith("/agent/"):
        attempt = request.match_info.get("attempt", "")
        if not attempt.isdigit() or not _bearer_ok(request, ctl.agent_token(int(attempt))):
            return _error(401, "unauthorized")
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except (BadRequest, SpecError) as err:
        return _error(400, str(err))
    except NotFoundError as err:
        return _error(404, str(err))
    except IllegalTransitionError as err:
        return _error(409, str(err))
    except ProviderError as err:
        return _error(502, f"provider error: {err}")
    except ConnectionError:
        # The peer went away mid-request (an agent killed by its preemption): nothing to do.
        return _error(400, "connection lost")
    except Exception:  # noqa: BLE001 - a bug must not kill the server or leak a traceback
        log.exception("request failed", path=path)
        return _error(500, "internal error (see the controller log)")


def _bearer_ok(request: web.Request, expected: str) -> bool:
    got = request.headers.get("Authorization", "")
    return got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), expected.encode())


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _int(value: str | None, name: str, default: int | None = None) -> int:
    if value is None or value == "":
        if default is None:
            raise BadRequest(f"{name} is required")
        return default
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {value!r}") from None


def _job_id(request: web.Request) -> int:
    return _int(request.match_info["job"], "job id")


async def _db(ctl: Controller, fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await ctl.store.call(fn, *args, **kwargs)


# --- user API ------------------------------------------------------------------------------

async def submit(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    body = await _json(request)
    source = str(body.get("source") or "task")
    spec = parse_task(body.get("task"), source=source)
    envs = body.get("envs") or {}
    if not isinstance(envs, dict) or not all(isinstance(v, str) for v in envs.values()):
        raise BadRequest("envs must be a mapping of NAME to string")
    spec = spec.with_env_overrides(envs)
    missing = spec.missing_values()
    if missing:
        raise SpecError(f"{source}: envs.{missing[0]}: needs a value (pass --env {missing[0]}=...)")
    try:
        require_candidates(spec, ctl.catalog)
    except SpecError as err:
        raise SpecError(f"{source}: {err}") from None
    await _check_buckets(ctl, spec, source)
    archive = await _save_archive(ctl, body.get("archive"))
    name = str(body.get("name") or spec.name or Path(source).stem or "job")
    task = {"spec": spec.model_dump(mode="json"), "archive": archive,
            "local_mounts": list(spec.local_mounts())}
    job_id = await _db(ctl, ctl.store.sync.create_job, name, task, archive is not None, "sky")
    ctl.wake_webhooks()
    ctl.start_runner(job_id)
    log.info("job submitted", job_id=job_id, name=name)
    return web.json_response({"id": job_id, "name": name, "status": st.PENDING}, status=201)


async def _check_buckets(ctl: Controller, spec: TaskSpec, source: str) -> None:
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
        check = getattr(ctl.providers[cloud], "check_bucket", None)
        if check is not None:
            # Fail now, not at the first recovery hours later: exists, readable, writable.
            try:
                await check(mount.source)
            except SpecError as err:
                raise SpecError(f"{source}: file_mounts.{target}: {err}") from None


async def _save_archive(ctl: Controller, encoded: Any) -> str | None:
    if not encoded:
        return None
    if not isinstance(encoded, str):
        raise BadRequest("archive must be base64 text")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("archive is not valid base64") from None
    if len(data) > MAX_ARCHIVE_BYTES:
        raise BadRequest(f"workdir archive is larger than {MAX_ARCHIVE_BYTES >> 20} MiB")
    digest = hashlib.sha256(data).hexdigest()
    path = ctl.state_dir / "archives" / f"{digest}.tar.gz"

    def write() -> None:
        # Content-addressed and written before the job row exists: a crash in between
        # leaves an unused archive, never a job without its files.
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)

    await asyncio.to_thread(write)
    return digest


async def list_jobs(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    q = request.query
    statuses = [s.strip().upper() for s in q.get("status", "").split(",") if s.strip()]
    unknown = [s for s in statuses if s not in st.ALL_STATES]
    if unknown:
        raise BadRequest(f"unknown status {unknown[0]!r}")
    limit = min(max(_int(q.get("limit"), "limit", 1000), 1), 10000)
    offset = max(_int(q.get("offset"), "offset", 0), 0)
    jobs = await _db(ctl, ctl.store.sync.list_jobs, statuses or None, limit, offset,
                     q.get("name") or None)
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
    after = _int(request.query.get("after"), "after", 0)
    job_id = _job_id(request)
    events = await _db(ctl, ctl.store.sync.events, job_id, after)
    attempts = await _db(ctl, ctl.store.sync.attempts_of, job_id)
    for e in events:
        e["cost_so_far"] = round(sum(a.cost(e["at"]) for a in attempts
                                     if a.created_at <= e["at"]), 6)
    return web.json_response({"events": events})


async def job_logs(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    job = await _db(ctl, ctl.store.sync.get_job, _job_id(request))
    q = request.query
    attempt_n = _int(q.get("attempt"), "attempt", job.attempt_count)
    rank_ = _int(q.get("rank"), "rank", 0)
    offset = max(_int(q.get("offset"), "offset", 0), 0)
    path = views.log_path(ctl, job.id, attempt_n, rank_)

    def read() -> tuple[bytes, int]:
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                return fh.read(1 << 20), path.stat().st_size
        except FileNotFoundError:
            return b"", 0

    data, size = await asyncio.to_thread(read)
    return web.json_response({"attempt": attempt_n, "rank": rank_, "offset": offset,
                              "size": size, "data": data.decode(errors="replace"),
                              "attempts": job.attempt_count, "status": job.status})


async def cancel(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    body = await _json(request)
    if body.get("all"):
        ids = await _db(ctl, ctl.store.sync.live_job_ids)
    else:
        ids = body.get("ids")
        if not isinstance(ids, list) or not ids or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise BadRequest("ids must be a non-empty list of job ids (or all: true)")
    done, skipped = [], []
    cancellable = frozenset(st.LIVE - {st.CANCELLING})
    for job_id in ids:
        try:
            await _db(ctl, ctl.store.sync.transition, job_id, st.CANCELLING,
                      "cancel requested", expect=cancellable)
            done.append(job_id)
            ctl.wake_webhooks()
            ctl.start_runner(job_id)
            ctl.post(job_id, Message("cancel"))
        except (NotFoundError, IllegalTransitionError) as err:
            skipped.append({"id": job_id, "why": str(err)})
    return web.json_response({"cancelled": done, "skipped": skipped})


async def preempt(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    body = await _json(request)
    notice = body.get("notice", 120)
    if isinstance(notice, bool) or not isinstance(notice, int | float) or not 0 <= notice <= 3600:
        raise BadRequest("notice must be a number of seconds between 0 and 3600")
    job = await _db(ctl, ctl.store.sync.get_job, _job_id(request))
    if job.status not in (st.RUNNING, st.PROVISIONING) or job.current_attempt is None:
        raise BadRequest(f"job {job.id} is {job.status}; only a running job can be preempted")
    attempt = await _db(ctl, ctl.store.sync.get_attempt, job.current_attempt)
    provider = ctl.providers[attempt.cloud]
    if not hasattr(provider, "set_spot_capacity"):
        raise BadRequest(f"{attempt.cloud} instances can only be preempted by the cloud")
    issued_at = time.time()
    await provider.preempt(attempt.instance_ids, float(notice))
    return web.json_response({"job": job.id, "attempt": attempt.n, "notice": notice,
                              "issued_at": issued_at})


async def plan(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    body = await _json(request)
    source = str(body.get("source") or "task")
    spec = parse_task(body.get("task"), source=source)
    try:
        require_candidates(spec, ctl.catalog)
    except SpecError as err:
        raise SpecError(f"{source}: {err}") from None
    ctx = ranking_context(ctl, spec, None, [], time.time())
    ranked = ranked_candidates(ctl, spec, ctx)
    return web.json_response({"strategy": spec.resources.strategy, "num_nodes": spec.num_nodes,
                              "candidates": [views.ranked_row(r) for r in ranked]})


async def prices(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    q = request.query
    accel, cloud = q.get("accelerator"), q.get("cloud")
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
    body = await _json(request)
    zone, available = body.get("zone"), body.get("spot")
    provider = ctl.providers.get("local")
    if provider is None or not hasattr(provider, "set_spot_capacity"):
        raise BadRequest("the local provider is not enabled")
    zones = {o.zone for o in ctl.catalog.offerings if o.cloud == "local"}
    if zone not in zones:
        raise BadRequest(f"unknown local zone {zone!r} (zones: {', '.join(sorted(zones))})")
    if not isinstance(available, bool):
        raise BadRequest("spot must be true or false")
    no_spot = await asyncio.to_thread(provider.set_spot_capacity, zone, available)
    return web.json_response({"no_spot_zones": no_spot})


async def health(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    counts = await _db(ctl, ctl.store.sync.count_jobs)
    return web.json_response({"ok": True, "url": ctl.url, "jobs": counts,
                              "live_runners": len(ctl.runners)})


async def metrics(request: web.Request) -> web.Response:
    body, content_type = await request.app[CTL].render_metrics()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def webhook_test(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    name = (await _json(request)).get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("name must be the name of a configured webhook")
    if ctl.webhooks is None:
        raise NotFoundError("webhooks are not running")
    return web.json_response(await ctl.webhooks.send_test(name))


# --- agent API -----------------------------------------------------------------------------

async def _attempt(request: web.Request) -> st.Attempt:
    ctl = request.app[CTL]
    attempt: st.Attempt = await _db(ctl, ctl.store.sync.get_attempt,
                                    int(request.match_info["attempt"]))
    return attempt


def _rank(request: web.Request, attempt: st.Attempt, value: Any) -> int:
    rank_ = _int(str(value) if value is not None else None, "rank")
    if not 0 <= rank_ < attempt.num_nodes:
        raise BadRequest(f"rank {rank_} is not a node of this attempt")
    return rank_


async def agent_task(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    attempt = await _attempt(request)
    _rank(request, attempt, request.query.get("rank"))
    job = await _db(ctl, ctl.store.sync.get_job, attempt.job_id)
    infos = await ctl.providers[attempt.cloud].status(attempt.instance_ids)
    return web.json_response(views.agent_task(ctl, job, attempt, infos))


async def agent_archive(request: web.Request) -> web.StreamResponse:
    ctl = request.app[CTL]
    attempt = await _attempt(request)
    job = await _db(ctl, ctl.store.sync.get_job, attempt.job_id)
    digest = job.task.get("archive")
    if not digest:
        raise NotFoundError("this job has no workdir archive")
    return web.FileResponse(ctl.state_dir / "archives" / f"{digest}.tar.gz")


async def agent_heartbeat(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    attempt_id = int(request.match_info["attempt"])
    body = await _json(request)
    rank_ = body.get("rank")
    if not isinstance(rank_, int):
        raise BadRequest("rank must be an integer")
    ctl.last_seen[(attempt_id, rank_)] = time.time()
    wait = body.get("wait_go") or 0
    if isinstance(wait, int | float) and wait > 0 and attempt_id not in ctl.go:
        await ctl.wait_go(attempt_id, min(float(wait), 30.0))
    return web.json_response({"go": attempt_id in ctl.go, "drain": attempt_id in ctl.drain})


async def agent_event(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    attempt = await _attempt(request)
    body = await _json(request)
    rank_ = _rank(request, attempt, body.get("rank"))
    kind = body.get("kind")
    s = ctl.store.sync
    ctl.last_seen[(attempt.id, rank_)] = time.time()
    if kind == "notice" or (kind == "exit" and body.get("noticed")):
        await _record_notice(ctl, attempt, rank_, body.get("notice"), body.get("seen_at"))
    if kind == "phase":
        phase = body.get("phase")
        if phase not in ("setup", "ready", "running"):
            raise BadRequest(f"unknown phase {phase!r}")
        if await _db(ctl, s.set_node_phase, attempt.id, rank_, phase):
            ctl.post(attempt.job_id, Message("phase", attempt.id, rank_))
    elif kind == "exit":
        code = body.get("exit_code")
        if not isinstance(code, int):
            raise BadRequest("exit_code must be an integer")
        phase = "setup_failed" if body.get("phase") == "setup" and code != 0 else "exited"
        if await _db(ctl, s.set_node_phase, attempt.id, rank_, phase, code):
            ctl.post(attempt.job_id, Message("exit", attempt.id, rank_))
    elif kind != "notice":
        raise BadRequest(f"unknown event kind {kind!r}")
    return web.json_response({"ok": True})


async def _record_notice(ctl: Controller, attempt: st.Attempt, rank_: int, notice: Any,
                         seen_at: Any = None) -> None:
    now = time.time()
    deadline = now + 120.0
    if isinstance(notice, dict) and isinstance(notice.get("time"), str):
        try:
            deadline = datetime.fromisoformat(notice["time"].replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    action = notice.get("action", "terminate") if isinstance(notice, dict) else "terminate"
    info = (f"preemption notice on node {rank_}: {action} in {max(0.0, deadline - now):.0f}s")
    placement = ctl.placement_of(attempt)
    moved = await _db(ctl, ctl.store.sync.notice_and_recover, attempt.job_id, attempt.id, now,
                      deadline, info, (placement, "preemption", 1.0))
    if moved:
        ctl.memory.record(memory_key(placement), "preemption", now)
        ctl.on_recovery("preemption notice", attempt)
        ctl.wake_webhooks()
        if isinstance(seen_at, int | float) and 0 <= time.time() - seen_at < 3600:
            # From the agent seeing the notice to RECOVERING recorded (clocks may differ
            # a little between hosts; NTP keeps that well under the latencies of interest).
            ctl.metrics.notice_latency(time.time() - seen_at)
    ctl.post(attempt.job_id, Message("notice", attempt.id, rank_))


async def agent_logs(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    attempt = await _attempt(request)
    rank_ = _rank(request, attempt, request.query.get("rank"))
    offset = _int(request.query.get("offset"), "offset")
    data = await request.read()
    path = views.log_path(ctl, attempt.job_id, attempt.n, rank_)
    size = await asyncio.to_thread(_append_at, path, offset, data)
    return web.json_response({"size": size})


def _append_at(path: Path, offset: int, data: bytes) -> int:
    """Append the part of data past what we already have; replays are harmless."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        size = fh.tell()
        if offset <= size < offset + len(data):
            fh.write(data[size - offset:])
            size = fh.tell()
    return size


def make_app(ctl: Controller) -> web.Application:
    app = web.Application(middlewares=[errors_and_auth], client_max_size=MAX_ARCHIVE_BYTES * 2)
    app[CTL] = ctl
    app.add_routes([
        web.get("/api/v1/health", health),
        web.post("/api/v1/jobs", submit),
        web.get("/api/v1/jobs", list_jobs),
        web.get("/api/v1/jobs/{job}", get_job),
        web.get("/api/v1/jobs/{job}/events", job_events),
        web.get("/api/v1/jobs/{job}/logs", job_logs),
        web.post("/api/v1/jobs/{job}/preempt", preempt),
        web.post("/api/v1/cancel", cancel),
        web.post("/api/v1/plan", plan),
        web.get("/api/v1/prices", prices),
        web.post("/api/v1/local/capacity", capacity),
        web.post("/api/v1/webhooks/test", webhook_test),
        web.get("/metrics", metrics),
        web.get("/agent/v1/attempts/{attempt}/task", agent_task),
        web.get("/agent/v1/attempts/{attempt}/archive", agent_archive),
        web.post("/agent/v1/attempts/{attempt}/heartbeat", agent_heartbeat),
        web.post("/agent/v1/attempts/{attempt}/events", agent_event),
        web.post("/agent/v1/attempts/{attempt}/logs", agent_logs),
    ])
    return app
