"""What the dashboard pages show, built from the store and the same view functions as the API
(``views.job_summary``, ``views.job_detail``, ``views.cloud_readiness``...), so a page and
``GET /api/v1/...`` never disagree. Read-only: nothing here changes state."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import yaml

import skyjobs
from skyjobs.controller import store as st
from skyjobs.controller import views
from skyjobs.controller.store.dialect import redact_url
from skyjobs.states import EndReason

if TYPE_CHECKING:
    from skyjobs.controller.services import Services

PAGE_SIZES = (25, 50, 100)
LOG_CHUNK = 1 << 20  # as the API's log endpoint
LOG_TAIL = 256 * 1024  # a log opened in the page starts this far from its end
MEMORY_WINDOW_S = 14 * 24 * 3600.0  # the zone evidence the controller keeps (daemon.py)
ZONE_KINDS = ("preemption", "no_capacity", "launch_ok", "run_seconds")


async def _db(ctl: Services, fn: Any, *args: Any) -> Any:
    return await ctl.store.call(fn, *args)


# --- jobs ---------------------------------------------------------------------------------

async def jobs_page(ctl: Services, statuses: list[str], name: str, page: int,
                    per_page: int) -> dict[str, Any]:
    s = ctl.store.sync
    jobs, total = await _db(ctl, s.jobs_page, statuses or None, name or None, per_page,
                            (page - 1) * per_page)
    attempts = await _db(ctl, s.attempts_for_jobs, [j.id for j in jobs])
    now = time.time()
    rows = [views.job_summary(ctl, j, attempts[j.id], now) for j in jobs]
    pages = max(1, -(-total // per_page))
    return {"rows": rows, "total": total, "page": page, "pages": pages, "per_page": per_page,
            "counts": await _db(ctl, s.count_jobs)}


async def job_detail(ctl: Services, job_id: int) -> dict[str, Any]:
    s = ctl.store.sync
    job = await _db(ctl, s.get_job, job_id)
    attempts = await _db(ctl, s.attempts_of, job.id)
    detail = views.job_detail(ctl, job, attempts, time.time())
    detail["live"] = job.status not in st.TERMINAL
    detail["cancellable"] = job.status in st.LIVE - {st.CANCELLING}
    detail["saving_pct"] = (100.0 * detail["saving"] / detail["on_demand_cost"]
                            if detail["on_demand_cost"] > 0 else None)
    return detail


def task_yaml(detail: dict[str, Any]) -> str:
    """The task as submitted, with its secrets' values replaced by views.redacted_spec (the
    API's own redaction: the page never sees a secret's value)."""
    specs = detail.get("tasks_specs") or [detail["task"]]
    return "---\n".join(yaml.safe_dump(_plain(s), sort_keys=False, allow_unicode=True)
                        for s in specs)


def _plain(value: Any) -> Any:
    """The stored spec carries every field with its default; dropping the empty ones makes
    the YAML read like what the user wrote. ``secrets`` is kept whole (its names, values
    redacted), so the page shows which secrets the task has."""
    if isinstance(value, dict):
        out = {k: (v if k == "secrets" else _plain(v)) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, {}, [], "")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


async def events(ctl: Services, job_id: int) -> list[dict[str, Any]]:
    s = ctl.store.sync
    rows: list[dict[str, Any]] = await _db(ctl, s.events, job_id, 0)
    attempts = await _db(ctl, s.attempts_of, job_id)
    for e in rows:  # as GET /api/v1/jobs/{id}/events does
        e["cost_so_far"] = sum(a.cost(e["at"]) for a in attempts if a.created_at <= e["at"])
    return rows


async def timeline(ctl: Services, job_id: int) -> dict[str, Any]:
    """The job's story for the timeline chart: one bar per attempt on its zone's row (its
    provisioning part and its running part), the job's state over time on a row of its own
    (so provisioning and recovery gaps show), and every notice and preemption as a mark."""
    s = ctl.store.sync
    job = await _db(ctl, s.get_job, job_id)
    attempts: list[st.Attempt] = await _db(ctl, s.attempts_of, job_id)
    evs = await _db(ctl, s.events, job_id, 0)
    now = time.time()
    end = job.ended_at if job.ended_at is not None else now
    rows: list[str] = []
    bars, marks = [], []
    for a in attempts:
        row = f"{a.cloud}/{a.zone}"
        if row not in rows:
            rows.append(row)
        stop = a.ended_at if a.ended_at is not None else end
        bars.append({
            "n": a.n, "row": row, "start": a.created_at, "running_at": a.running_at,
            "end": stop, "open": a.ended_at is None, "spot": a.use_spot,
            "placement": a.placement_label(), "instance_type": a.instance_type,
            "end_reason": a.end_reason, "exit_code": a.exit_code,
            "price_per_hour": a.price_per_hour, "cost": round(a.cost(now), 6),
            "nodes": a.num_nodes, "task": a.task_index + 1, "tasks": job.task_count})
        if a.notice_at is not None:
            marks.append({"kind": "notice", "at": a.notice_at, "row": row, "n": a.n,
                          "deadline": a.notice_deadline})
        if a.end_reason == EndReason.PREEMPTED and a.ended_at is not None:
            marks.append({"kind": "preemption", "at": a.ended_at, "row": row, "n": a.n})
    states = []
    transitions = [e for e in evs if e["kind"] == "transition" and e["to_status"]]
    for i, e in enumerate(transitions):
        stop = transitions[i + 1]["at"] if i + 1 < len(transitions) else end
        states.append({"state": e["to_status"], "start": e["at"], "end": max(stop, e["at"]),
                       "reason": e["reason"]})
    return {"job": job.id, "status": job.status, "live": job.status not in st.TERMINAL,
            "now": now, "start": job.submitted_at, "end": end, "rows": rows, "bars": bars,
            "marks": marks, "states": states}


def _complete_utf8(data: bytes) -> int:
    """Length of data without a trailing, possibly incomplete UTF-8 sequence, so a character
    split across two reads is neither lost nor garbled (as the API's log reader does)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if byte >= 0xC0:
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if back >= need else len(data) - back
    return len(data)


async def read_log(ctl: Services, job: st.Job, attempt_n: int, rank: int,
                   offset: int | None) -> dict[str, Any]:
    """A chunk of one node's log from ``offset`` (None: the last LOG_TAIL bytes)."""
    data, size, start = await views.read_log(ctl, job.id, attempt_n, rank, offset, LOG_CHUNK,
                                             LOG_TAIL)
    if job.status not in st.TERMINAL or start + len(data) < size:
        data = data[:_complete_utf8(data)]
    if offset is None and start > 0:
        # Started mid-file: skip to the next line so the first one shown is whole.
        cut = data.find(b"\n")
        if 0 <= cut < len(data) - 1:
            data, start = data[cut + 1:], start + cut + 1
    return {"attempt": attempt_n, "rank": rank, "offset": start,
            "next_offset": start + len(data), "size": size, "truncated": start > 0,
            "data": data.decode(errors="replace"), "status": job.status,
            "live": job.status not in st.TERMINAL}


# --- zones --------------------------------------------------------------------------------

async def zones(ctl: Services) -> dict[str, Any]:
    """Per zone and instance type of the enabled clouds: what the controller has learnt (the
    preemption memory's estimates, as the placement policy reads them, and the raw counts of
    the last two weeks) and the price it would pay now."""
    now = time.time()
    totals = await _db(ctl, ctl.store.sync.zone_event_totals, now - MEMORY_WINDOW_S)
    counts: dict[tuple[str, str, str, str, bool], dict[str, Any]] = {}
    for t in totals:
        key = (t["cloud"], t["region"], t["zone"], t["instance_type"], bool(t["use_spot"]))
        entry = counts.setdefault(key, {})
        entry[t["kind"]] = t["total"] if t["kind"] == "run_seconds" else t["n"]
        entry["last_at"] = max(entry.get("last_at") or 0, t["last_at"])
    rows = []
    for o in ctl.catalog.offerings:
        if o.cloud not in ctl.providers:
            continue  # the evidence of clouds this controller does not run is empty
        key = (o.cloud, o.region, o.zone, o.instance_type, True)
        est = ctl.memory.estimate(key, now)
        seen = counts.get(key, {})
        od_seen = counts.get((*key[:4], False), {})
        quote = ctl.price_book.quote(o, True, now)
        rows.append({
            "cloud": o.cloud, "region": o.region, "zone": o.zone,
            "instance_type": o.instance_type,
            "accelerator": f"{o.accelerator}:{o.accelerator_count}" if o.accelerator else None,
            "hazard_per_hour": est.hazard_per_hour, "p_no_capacity": est.p_no_capacity,
            "long_run_no_capacity": est.long_run_no_capacity,
            "preemptions": seen.get("preemption", 0),
            "capacity_failures": seen.get("no_capacity", 0) + od_seen.get("no_capacity", 0),
            "launches": seen.get("launch_ok", 0) + od_seen.get("launch_ok", 0),
            "spot_hours": (seen.get("run_seconds") or 0) / 3600.0,
            "last_at": max(seen.get("last_at") or 0, od_seen.get("last_at") or 0) or None,
            "spot_price": quote.price, "price_status": quote.status_text(),
            "ondemand_price": o.ondemand_price,
        })
    rows.sort(key=lambda r: (r["last_at"] is None, r["cloud"], r["instance_type"],
                             r["zone"]))
    return {"rows": rows, "now": now,
            "window_days": MEMORY_WINDOW_S / 86400}


# --- controller ---------------------------------------------------------------------------

def _store_label(ctl: Services) -> str:
    url = ctl.config.database_url
    return redact_url(url) if url else str(ctl.config.db_path)


async def controller(ctl: Services) -> dict[str, Any]:
    s = ctl.store.sync
    t0 = time.perf_counter()
    schema = await _db(ctl, s.schema_version)
    probe_ms = (time.perf_counter() - t0) * 1000
    counts = await _db(ctl, s.count_jobs)
    outbox = await _db(ctl, s.outbox_stats)
    db = ctl.config.db_path  # (absent under PostgreSQL: sizes are then None)

    def size(path: os.PathLike[str] | str) -> int | None:
        try:
            return os.path.getsize(path)
        except OSError:
            return None

    clouds = [views.cloud_readiness(name, ctl.providers[name],
                                    sum(1 for o in ctl.catalog.offerings if o.cloud == name))
              for name in sorted(ctl.providers)]
    live = {k: v for k, v in counts.items() if k in st.LIVE}
    return {
        "version": skyjobs.__version__, "url": ctl.url, "started_at": ctl.started_at,
        "uptime_s": time.time() - ctl.started_at, "state_dir": str(ctl.state_dir),
        "counts": counts, "states": [str(x) for x in st.JobStatus],
        "live": live, "live_total": sum(live.values()), "total": sum(counts.values()),
        "live_runners": len(ctl.runners),
        "webhooks": [h.name for h in ctl.config.webhooks], "outbox": outbox,
        "store": {"path": _store_label(ctl), "schema": schema, "probe_ms": probe_ms,
                  "ok": probe_ms < 1000, "size": size(db), "wal_size": size(f"{db}-wal")},
        "clouds": clouds, "offerings": len(ctl.catalog.offerings),
        "memory_records": ctl.memory.recorded,
    }
