"""Retention: what an ended job leaves behind is removed some time after it ended.

A controller that runs for months must not grow without bound: a job that ended more than
``retention_days`` ago (default 30) is removed with its attempts, nodes, events, webhook
deliveries, logs and (once no kept job references it) its workdir archive. Delivered webhook
rows of kept jobs go after the same time, and zone events once the preemption memory no
longer reads them. Cost totals are kept (``usage_totals``), so /metrics' spend survives.

The sweep runs hourly as a duty and on demand (``POST /api/v1/gc``, ``skyjobs gc``). Jobs
go in batches, each one store transaction, so the store's one writer is never held for
long; files go in a worker thread.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Collection
from pathlib import Path

import structlog

from skyjobs.controller import store as st

log = structlog.get_logger("skyjobs.retention")

BATCH = 200  # jobs per transaction
SWEEP_INTERVAL = 3600.0
DAY = 86400.0


async def sweep(store: st.Store, state_dir: Path, older_than_s: float, *,
                keep_zone_events_s: float, in_flight: Collection[str] = (),
                dry_run: bool = False, now: float | None = None,
                shared: bool = False) -> dict[str, int]:
    """Remove what ended more than ``older_than_s`` ago; returns what was (or, with
    ``dry_run``, would be) removed. ``in_flight``: archive digests a submit has written
    but not yet recorded in a job (never removed). ``shared``: logs and archives are rows of
    the store (several controllers on PostgreSQL), not files in ``state_dir``."""
    now = time.time() if now is None else now
    before = now - older_than_s
    totals = dict.fromkeys(("jobs", "attempts", "nodes", "events", "outbox", "zone_events",
                            "logs", "archives"), 0)
    dropped: set[str] = set()
    removed: list[int] = []  # a dry run's would-be removals, which still reference archives
    while True:
        batch = await store.call(store.sync.gc_jobs, before, 10**9 if dry_run else BATCH,
                                 dry_run)
        for table, n in batch.counts.items():
            totals[table] = totals.get(table, 0) + n
        dropped |= batch.archives
        if dry_run:
            removed = batch.job_ids
        else:
            totals["logs"] += await asyncio.to_thread(_remove_logs, state_dir, batch.job_ids)
        if dry_run or len(batch.job_ids) < BATCH:
            break
    history = await store.call(store.sync.gc_history, before,
                               now - max(older_than_s, keep_zone_events_s), dry_run)
    for table, n in history.items():
        totals[table] += n
    if shared:
        totals["archives"] = await _sweep_archive_rows(store, before, dropped, in_flight,
                                                       removed, dry_run)
        candidates = []
    else:
        candidates = [p for p in await asyncio.to_thread(
            _archive_candidates, state_dir / "archives", dropped, before)
            if _digest(p) not in in_flight]
    if candidates:  # the scan of every job's archives only when some file may go
        in_use = await store.call(store.sync.archives_in_use, removed)
        totals["archives"] = await asyncio.to_thread(
            _remove_archives, [p for p in candidates if _digest(p) not in in_use], dry_run)
    if any(totals.values()) and not dry_run:
        log.info("retention sweep", older_than_days=round(older_than_s / DAY, 3), **totals)
    return totals


async def _sweep_archive_rows(store: st.Store, before: float, dropped: set[str],
                             in_flight: Collection[str], removed: list[int],
                             dry_run: bool) -> int:
    """The shared store's archive rows that no kept job references (as for files)."""
    candidates = [d for d in await store.call(store.sync.archive_rows_before, before, dropped)
                  if d not in in_flight]
    if not candidates:
        return 0
    in_use = await store.call(store.sync.archives_in_use, removed)
    gone = [d for d in candidates if d not in in_use]
    if dry_run:
        return len(gone)
    return await store.call(store.sync.delete_archive_rows, gone)


def _remove_logs(state_dir: Path, job_ids: list[int]) -> int:
    removed = 0
    for job_id in job_ids:
        path = state_dir / "logs" / str(job_id)
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def _digest(path: Path) -> str:
    return path.name.removesuffix(".tar.gz")


def _archive_candidates(folder: Path, dropped: set[str], before: float) -> list[Path]:
    """Archives that may go once no kept job references them: those the removed jobs
    used, and any older than the cut-off (left by a submit that crashed before its job
    was recorded)."""
    out = []
    try:
        files = list(folder.glob("*.tar.gz"))
    except OSError:
        return []
    for path in files:
        try:
            if _digest(path) in dropped or path.stat().st_mtime < before:
                out.append(path)
        except FileNotFoundError:
            continue
    return out


def _remove_archives(paths: list[Path], dry_run: bool) -> int:
    if not dry_run:
        for path in paths:
            path.unlink(missing_ok=True)
    return len(paths)
