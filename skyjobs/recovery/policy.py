"""Placement strategies: rank the candidates for the next attempt of a job.

Pure code. The controller and the replay simulator call the same :func:`rank`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from skyjobs.pricing.catalog import Placement
from skyjobs.recovery.placement import Candidate

ZoneKey = tuple[str, str, str]  # (cloud, zone, instance_type)


def zone_key(p: Placement) -> ZoneKey:
    return (p.cloud, p.zone, p.instance_type)


@dataclass
class RankingContext:
    """What a strategy may know when it ranks: the job's history and the clock."""

    strategy: str
    ordered: bool
    now: float
    last: Placement | None = None
    last_end: str | None = None  # "preempted", "no_capacity", "failed" or None
    cooldown: dict[ZoneKey, float] = field(default_factory=dict)  # key -> cooling until
    deadline_at: float | None = None
    expected_runtime_s: float | None = None
    progress_s: float = 0.0


@dataclass(frozen=True)
class Ranked:
    candidate: Candidate
    score: float
    reason: str


def _cooling(ctx: RankingContext, p: Placement) -> bool:
    return ctx.cooldown.get(zone_key(p), 0.0) > ctx.now


def rank(candidates: list[Candidate], ctx: RankingContext) -> list[Ranked]:
    """Best first. Zones cooling down after a preemption go last, never away entirely."""
    out: list[tuple[tuple[float, ...], Ranked]] = []
    for cand in candidates:
        if not cand.requested:
            continue
        p = cand.placement
        cooling = _cooling(ctx, p)
        same_region = ctx.last is not None and p.region == ctx.last.region
        reasons = [f"${p.price_per_hour:.3f}/h"]
        if cooling:
            reasons.append("zone cooling down after a preemption")
        key: tuple[float, ...]
        if ctx.strategy == "EAGER_NEXT_REGION" and ctx.last_end == "preempted":
            key = (float(cooling), float(same_region), p.price_per_hour)
            if same_region:
                reasons.append("region just preempted")
        elif ctx.strategy == "FAILOVER" and ctx.last is not None:
            key = (float(cooling), float(not same_region), p.price_per_hour)
        else:
            key = (float(cooling), p.price_per_hour)
        if ctx.ordered:
            key = (float(cand.choice_index), *key)
            reasons.insert(0, f"ordered choice {cand.choice_index + 1}")
        out.append((key, Ranked(cand, p.price_per_hour, ", ".join(reasons))))
    out.sort(key=lambda item: item[0])
    return [r for _, r in out]
