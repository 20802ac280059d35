"""What the API shows: jobs, attempts, costs and the agent's task. Secrets never leave here
except in the agent's own task payload."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skyjobs.checkpoint.buckets import local_bucket_dir
from skyjobs.config import ControllerConfig
from skyjobs.controller import store as st
from skyjobs.controller.logwriter import LogKey
from skyjobs.controller.runner import policy_context
from skyjobs.exceptions import SpecError
from skyjobs.pricing.catalog import Catalog, Offering, Placement, load_cloud, shipped_clouds
from skyjobs.pricing.prices import PriceBook, Quote
from skyjobs.providers import base
from skyjobs.recovery.memory import PreemptionMemory
from skyjobs.recovery.placement import explain_no_match, match
from skyjobs.recovery.policy import Ranked, RankingContext, rank
from skyjobs.spec import TaskSpec

if TYPE_CHECKING:
    from skyjobs.controller.services import Services

REDACTED = "<redacted>"


def log_path(ctl: Services, job_id: int, attempt_n: int, rank: int) -> Path:
    return ctl.state_dir / "logs" / str(job_id) / f"attempt-{attempt_n}-node-{rank}.log"


def log_target(ctl: Services, job_id: int, attempt_n: int, rank: int) -> Path | LogKey:
    """Where a node's log is written: a file, or rows of the shared store."""
    if ctl.config.database_url is not None:
        return (job_id, attempt_n, rank)
    return log_path(ctl, job_id, attempt_n, rank)


async def read_log(ctl: Services, job_id: int, attempt_n: int, rank: int, offset: int | None,
                   limit: int, tail: int = 0) -> tuple[bytes, int, int]:
    """(data, size, start): up to ``limit`` bytes of a node's log from ``offset``, or from
    ``tail`` bytes before its end when ``offset`` is None; empty when there is none."""
    target = log_target(ctl, job_id, attempt_n, rank)
    if not isinstance(target, Path):
        return await ctl.store.call(ctl.store.sync.read_log, *target, offset, limit, tail)

    def read() -> tuple[bytes, int, int]:
        try:
            with open(target, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                start = max(0, size - tail) if offset is None else min(offset, size)
                fh.seek(start)
                return fh.read(limit), size, start
        except FileNotFoundError:
            return b"", 0, 0

    return await asyncio.to_thread(read)


def costs(ctl: Services, attempts: list[st.Attempt], now: float) -> tuple[float, float]:
    """(cost so far, what the same hours would have cost on-demand)."""
    return (sum(a.cost(now) for a in attempts), sum(a.on_demand_cost(now) for a in attempts))


def job_summary(ctl: Services, job: st.Job, attempts: list[st.Attempt],
                now: float) -> dict[str, Any]:
    current = next((a for a in attempts if a.id == job.current_attempt), None)
    cost, on_demand = costs(ctl, attempts, now)
    end = job.ended_at if job.ended_at is not None else now
    return {
        "id": job.id, "name": job.name, "status": job.status,
        "placement": current.placement_label() if current else None,
        "recoveries": job.recovery_count, "restarts": job.restart_count,
        "attempts": job.attempt_count,
        "submitted_at": job.submitted_at, "ended_at": job.ended_at,
        "duration_s": round(end - job.submitted_at, 3),
        "cost": round(cost, 6), "on_demand_cost": round(on_demand, 6),
        "saving": round(on_demand - cost, 6),
        "exit_code": job.exit_code, "reason": job.reason,
        "array_id": job.array_id, "array_rank": job.array_rank,
        "current_task": job.task_index + 1, "tasks": job.task_count,
    }


def redacted_spec(spec: dict[str, Any]) -> dict[str, Any]:
    secrets = spec.get("secrets") or {}
    return {**spec, "secrets": {k: REDACTED for k in secrets}}


def job_detail(ctl: Services, job: st.Job, attempts: list[st.Attempt],
               now: float) -> dict[str, Any]:
    out = job_summary(ctl, job, attempts, now)
    out["task_id"] = job.task_id
    out["task"] = redacted_spec(job.task_entry()["spec"])
    if job.task_count > 1:
        out["tasks_specs"] = [redacted_spec(job.task_entry(i)["spec"])
                              for i in range(job.task_count)]
    out["attempt_list"] = [attempt_view(a, now) for a in attempts]
    return out


def attempt_view(a: st.Attempt, now: float) -> dict[str, Any]:
    return {
        "n": a.n, "status": a.status, "placement": a.placement_label(),
        "region": a.region, "price_per_hour": a.price_per_hour, "num_nodes": a.num_nodes,
        "instances": a.instance_ids, "created_at": a.created_at, "running_at": a.running_at,
        "ended_at": a.ended_at, "end_reason": a.end_reason, "exit_code": a.exit_code,
        "notice_at": a.notice_at, "cost": round(a.cost(now), 6), "released": a.released,
        "task": a.task_index + 1,
    }


def ranked_row(r: Ranked) -> dict[str, Any]:
    p = r.candidate.placement
    o = p.offering
    return {"cloud": p.cloud, "region": p.region, "zone": p.zone,
            "instance_type": p.instance_type, "spot": p.use_spot,
            "accelerator": f"{o.accelerator}:{o.accelerator_count}" if o.accelerator else None,
            "vcpus": o.vcpus, "memory_gb": o.memory_gb, "price_per_hour": p.price_per_hour,
            "score": r.score, "reason": r.reason}


def price_row(o: Offering, quote: Quote) -> dict[str, Any]:
    return {"cloud": o.cloud, "region": o.region, "zone": o.zone,
            "instance_type": o.instance_type,
            "accelerator": f"{o.accelerator}:{o.accelerator_count}" if o.accelerator else None,
            "ondemand_price": o.ondemand_price, "list_spot_price": o.spot_price,
            "spot_price": quote.price, "status": quote.status,
            "observed_at": quote.observed_at, "refreshed_at": quote.refreshed_at,
            "price_date": o.price_date, "source": o.source}


def agent_task(ctl: Services, job: st.Job, attempt: st.Attempt,
               node_ips: list[str]) -> dict[str, Any]:
    """What an agent runs: the task, its node's peers' addresses ("" while unknown) and
    the intervals it starts with (heartbeat answers may lengthen them at scale)."""
    entry = job.task_entry(attempt.task_index)
    spec = entry["spec"]
    offering = ctl.offering_of(attempt.cloud, attempt.zone, attempt.instance_type)
    cfg = ctl.config
    buckets = [{"target": target, "source": m["source"], "mode": m["mode"],
                "buckets_root": str(ctl.state_dir / "buckets")}
               for target, m in spec["file_mounts"].items() if isinstance(m, dict)]
    return {
        "job_id": job.id, "attempt": attempt.n, "task_id": job.task_id,
        "job_rank": job.array_rank or 0, "array_id": job.array_id,
        "recovery_count": job.recovery_count, "num_nodes": attempt.num_nodes,
        "node_ips": node_ips,
        "gpus_per_node": offering.accelerator_count if offering else 0,
        "envs": {**spec["envs"], **spec["secrets"]},
        "setup": spec.get("setup"), "run": spec.get("run"),
        "has_archive": bool(entry.get("archive")),
        "local_mounts": entry.get("local_mounts", []),
        "buckets": buckets,
        "heartbeat_interval": ctl.sessions.heartbeat_interval(),
        "log_interval": ctl.sessions.log_interval(),
        "notice_poll_interval": cfg.notice_poll_interval,
        "notice_signal": cfg.notice_signal,
        "copy_sync_interval": cfg.copy_sync_interval,
    }


# --- plan: every cloud of the catalog, enabled or not ----------------------------------------

BUCKET_CLOUDS = {"local": "local", "s3": "aws", "gs": "gcp"}


def plan_catalog(enabled: Catalog) -> Catalog:
    """The offerings a plan ranks: the controller's own (what its runners use), and the
    shipped offerings of every cloud it does not serve."""
    have = enabled.clouds()
    return Catalog([*enabled.offerings, *(o for cloud in shipped_clouds() if cloud not in have
                                          for o in load_cloud(cloud))])


def fresh_ranking_context(config: ControllerConfig, spec: TaskSpec, memory: PreemptionMemory,
                          prices: PriceBook, now: float) -> RankingContext:
    """What the placement policy knows about a job not yet submitted (the runner's own
    context with no job and no attempts), from a config alone so the CLI can plan with no
    controller."""
    def no_attempts(_: st.Attempt) -> Placement:
        raise AssertionError("a job not yet submitted has no attempts")

    return policy_context(config, memory, prices, no_attempts, spec, None, [], now)


def bucket_problems(spec: TaskSpec, enabled: set[str], buckets_root: Path,
                    clouds_used: set[str]) -> list[str]:
    """What submit would refuse about the task's buckets without asking any cloud, one
    ``file_mounts.TARGET: ...`` line each (plan shows them as warnings)."""
    out = []
    for target, mount in spec.buckets().items():
        scheme = mount.source.split("://", 1)[0]
        cloud = BUCKET_CLOUDS.get(scheme, scheme)
        where = f"file_mounts.{target}"
        if cloud not in enabled:
            out.append(f"{where}: {scheme}:// buckets need the {cloud} provider, which is "
                       "not enabled")
        if cloud == "local":
            try:
                local_bucket_dir(mount.source, buckets_root)
            except ValueError as err:
                out.append(f"{where}: {err}")
            if clouds_used - {"local"}:
                out.append(f"{where}: local:// buckets work only on the local provider; "
                           "set resources.cloud: local")
    return out


def plan_reply(spec: TaskSpec, catalog: Catalog, enabled: set[str], ctx: RankingContext,
               buckets_root: Path) -> dict[str, Any]:
    """The ranking of every offering that can run the task, each row marked enabled or
    not, the placement the controller would launch first (``pick``: the ranking of the
    enabled rows alone), and bucket problems as ``warnings``."""
    deadline = spec.resources.job_recovery.deadline_hours is not None
    candidates = match(spec, catalog, with_on_demand_twins=deadline)
    if not candidates:
        cloud = spec.resources.choices()[0].cloud
        if cloud and cloud not in catalog.clouds():
            known = ", ".join(sorted(catalog.clouds()))
            raise SpecError(f"resources.cloud: {cloud!r} is not a cloud skyjobs knows "
                            f"(known: {known})")
        raise SpecError(explain_no_match(spec, catalog))
    rows = []
    for r in rank(candidates, ctx):
        row = ranked_row(r)
        placement = r.candidate.placement
        quote = ctx.prices.quote(placement.offering, placement.use_spot, ctx.now) \
            if ctx.prices is not None else Quote(placement.price_per_hour, "list")
        if quote.price is not None:
            row["price_per_hour"] = quote.price
        row.update(price_status=quote.status, enabled=placement.cloud in enabled)
        rows.append(row)
    usable = [c for c in candidates if c.placement.cloud in enabled]
    pick = ranked_row(rank(usable, ctx)[0]) if usable else None
    # Submit refuses a local:// bucket for a task the controller could place elsewhere.
    clouds_used = {c.placement.cloud for c in usable or candidates}
    return {"strategy": spec.resources.strategy, "num_nodes": spec.num_nodes,
            "enabled": sorted(enabled), "clouds": sorted(catalog.clouds()),
            "candidates": rows, "pick": pick,
            "warnings": bucket_problems(spec, enabled, buckets_root, clouds_used)}


def cloud_readiness(name: str, provider: base.Provider, offerings: int) -> dict[str, Any]:
    """One enabled cloud as ``GET /api/v1/clouds`` shows it. A provider that cannot launch
    at all is refused at start (``NeedsPreparation``), so an enabled cloud passed that."""
    prepared = base.ability(provider, base.NeedsPreparation) is not None
    notes = []
    if prepared:
        notes.append("start-time checks passed (aws: an image for every region; gcp: "
                     "credentials and a project)")
    if base.ability(provider, base.PriceSource) is not None:
        notes.append("live spot prices")
    if base.ability(provider, base.BucketChecker) is not None:
        notes.append("checks buckets at submit")
    if base.ability(provider, base.SimulatedMarket) is not None:
        notes.append("simulated market")
    ready = offerings > 0
    if not ready:
        notes.insert(0, "no offerings in the catalog: no job can be placed here")
    return {"cloud": name, "ready": ready, "offerings": offerings, "notes": notes}
