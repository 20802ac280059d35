"""What the API shows: jobs, attempts, costs and the agent's task. Secrets never leave here
except in the agent's own task payload."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from skyjobs.controller import store as st
from skyjobs.pricing.catalog import Offering
from skyjobs.pricing.prices import Quote
from skyjobs.providers import base
from skyjobs.recovery.policy import Ranked

if TYPE_CHECKING:
    from skyjobs.controller.services import Services

REDACTED = "<redacted>"


def log_path(ctl: Services, job_id: int, attempt_n: int, rank: int) -> Path:
    return ctl.state_dir / "logs" / str(job_id) / f"attempt-{attempt_n}-node-{rank}.log"


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
    }


def redacted_spec(spec: dict[str, Any]) -> dict[str, Any]:
    secrets = spec.get("secrets") or {}
    return {**spec, "secrets": {k: REDACTED for k in secrets}}


def job_detail(ctl: Services, job: st.Job, attempts: list[st.Attempt],
               now: float) -> dict[str, Any]:
    out = job_summary(ctl, job, attempts, now)
    out["task_id"] = job.task_id
    out["task"] = redacted_spec(job.task["spec"])
    out["attempt_list"] = [attempt_view(a, now) for a in attempts]
    return out


def attempt_view(a: st.Attempt, now: float) -> dict[str, Any]:
    return {
        "n": a.n, "status": a.status, "placement": a.placement_label(),
        "region": a.region, "price_per_hour": a.price_per_hour, "num_nodes": a.num_nodes,
        "instances": a.instance_ids, "created_at": a.created_at, "running_at": a.running_at,
        "ended_at": a.ended_at, "end_reason": a.end_reason, "exit_code": a.exit_code,
        "notice_at": a.notice_at, "cost": round(a.cost(now), 6), "released": a.released,
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
            "observed_at": quote.observed_at, "price_date": o.price_date, "source": o.source}


def agent_task(ctl: Services, job: st.Job, attempt: st.Attempt,
               infos: dict[str, base.InstanceInfo]) -> dict[str, Any]:
    spec = job.task["spec"]
    offering = ctl.offering_of(attempt.cloud, attempt.zone, attempt.instance_type)
    cfg = ctl.config
    buckets = [{"target": target, "source": m["source"], "mode": m["mode"],
                "buckets_root": str(ctl.state_dir / "buckets")}
               for target, m in spec["file_mounts"].items() if isinstance(m, dict)]
    return {
        "job_id": job.id, "attempt": attempt.n, "task_id": job.task_id,
        "job_rank": job.array_rank or 0, "array_id": job.array_id,
        "recovery_count": job.recovery_count, "num_nodes": attempt.num_nodes,
        "node_ips": [(infos.get(i) or base.InstanceInfo(i, base.PENDING)).ip or ""
                     for i in attempt.instance_ids],
        "gpus_per_node": offering.accelerator_count if offering else 0,
        "envs": {**spec["envs"], **spec["secrets"]},
        "setup": spec.get("setup"), "run": spec.get("run"),
        "has_archive": bool(job.task.get("archive")),
        "local_mounts": job.task.get("local_mounts", []),
        "buckets": buckets,
        "heartbeat_interval": cfg.heartbeat_interval,
        "notice_poll_interval": cfg.notice_poll_interval,
        "notice_signal": cfg.notice_signal,
        "copy_sync_interval": cfg.copy_sync_interval,
    }
