"""Replay placement policies over spot-capacity traces.

The simulated job runs the controller's own code: candidates come from
:func:`skyjobs.recovery.placement.match` over a catalog built from the trace zones, each
attempt goes to the first of :func:`skyjobs.recovery.policy.rank`, and the job's
:class:`PreemptionMemory` holds only what the job itself saw. The model (docs/policy.md):

* a launch in a zone whose capacity (at that sample) is below the node count fails and costs
  ``launch_fail_s`` of wall time (one trace gap by default), and nothing else;
* every (re)start pays ``restart_s`` before work resumes; on-demand is always available;
* a running spot instance is preempted at the first sample where capacity drops below the
  node count; it loses the work since the last checkpoint unless the notice is long enough
  to checkpoint (``notice_s >= checkpoint_save_s``);
* DEADLINE_AWARE on on-demand re-asks :func:`deadline_decision` at every check (the
  controller's ``deadline_check_interval``, ``SimConfig.check_interval_s``); a switch to
  spot launches spot first (a failed try costs nothing while on-demand runs), then pays a
  restart like any launch; on spot it asks :func:`move_decision` at the same checks;
* a preempted zone cools down for ``zone_cooldown_s`` (the controller's ``zone_cooldown``),
  as the controller's ranking context does;
* money: spot at the trace's own per-sample prices where it has them (else the configured
  table), on-demand at list price, per node, for the time an instance is up.

``simulate_run(..., hook=)`` hands every decision to a callback (docs/policy.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from skyjobs.exceptions import ConfigError
from skyjobs.pricing.catalog import Catalog, Offering, Placement
from skyjobs.pricing.prices import PriceBook
from skyjobs.recovery.memory import PreemptionMemory
from skyjobs.recovery.placement import Candidate, match
from skyjobs.recovery.policy import (
    RankingContext,
    ZoneKey,
    deadline_decision,
    memory_key,
    move_decision,
    rank,
    zone_key,
)
from skyjobs.recovery.sim.bound import BoundInput, lower_bound_hinted
from skyjobs.recovery.sim.traces import TraceSet, ZoneTrace
from skyjobs.spec import TaskSpec


@dataclass(frozen=True)
class SimConfig:
    job_hours: float
    deadline_hours: float | None = None
    restart_s: float = 180.0
    checkpoint_interval_s: float = 1800.0
    checkpoint_save_s: float = 30.0
    notice_s: float = 120.0  # AWS gives two minutes
    launch_fail_s: float | None = None  # None: one trace gap
    spot_price: float = 0.97
    ondemand_price: float = 3.06
    spot_prices: dict[str, float] = field(default_factory=dict)  # zone or region -> $/h
    nodes: int | None = None  # None: the largest capacity in the traces
    start_every_hours: float = 6.0
    # The first submit time (the others follow every ``start_every_hours``). Shifting it
    # draws another sample of starts from the same traces: the bench uses it to tell a
    # systematic loss from the luck of where the starts fall (docs/policy.md).
    first_start_hours: float = 0.0
    # The controller's zone cooldown after a preemption (config.zone_cooldown): the zone is
    # ranked last for this long. 0 turns it off.
    zone_cooldown_s: float = 1800.0
    # DEADLINE_AWARE moves a running spot job to a cheaper spot zone when
    # policy.move_decision says so, as the controller does (docs/policy.md, "Fifth pass");
    # False replays the controller before it did.
    move_running_spot: bool = True
    # How often a running DEADLINE_AWARE job asks whether to leave on-demand for spot or
    # to move to a cheaper spot zone: the controller's ``deadline_check_interval``. The
    # replay asks at the first trace sample after the restart, then every
    # ``max(check_interval_s, gap)`` (before, at every sample: 30 s to 195 s).
    check_interval_s: float = 300.0
    cloud: str = "aws"
    instance_type: str = "p3.2xlarge"

    def validate(self) -> None:
        if self.job_hours <= 0:
            raise ConfigError("job hours must be positive")
        if self.deadline_hours is not None and self.deadline_hours < self.job_hours:
            raise ConfigError("the deadline is shorter than the job")
        for name in ("restart_s", "checkpoint_interval_s", "checkpoint_save_s", "notice_s",
                     "zone_cooldown_s", "check_interval_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        if self.first_start_hours < 0:
            raise ConfigError("the first start must not be negative")
        if self.checkpoint_interval_s <= 0 or self.start_every_hours <= 0:
            raise ConfigError("checkpoint interval and start spacing must be positive")
        if min([self.spot_price, self.ondemand_price, *self.spot_prices.values()]) < 0:
            raise ConfigError("prices must not be negative")


@dataclass(frozen=True)
class PolicySpec:
    """A simulated policy: a controller strategy and which of its aids it may use."""

    name: str
    strategy: str
    memory: bool = True
    deadline_guard: bool = True
    zones: tuple[str, ...] | None = None
    on_demand_only: bool = False
    rotate_failed: bool = False  # retry a zone that failed only after trying all the others


POLICIES: dict[str, PolicySpec] = {
    "COST_AWARE": PolicySpec("COST_AWARE", "COST_AWARE"),
    "DEADLINE_AWARE": PolicySpec("DEADLINE_AWARE", "DEADLINE_AWARE"),
    "FAILOVER": PolicySpec("FAILOVER", "FAILOVER"),
    "EAGER_NEXT_REGION": PolicySpec("EAGER_NEXT_REGION", "EAGER_NEXT_REGION"),
    # SkyPilot today: leaves the preempted region, no memory, no deadline.
    # SkyPilot today: leaves the preempted region, fails over across zones within a launch,
    # keeps no memory and knows no deadline.
    "skypilot": PolicySpec("skypilot", "EAGER_NEXT_REGION", memory=False, deadline_guard=False,
                           rotate_failed=True),
    "on-demand": PolicySpec("on-demand", "COST_AWARE", on_demand_only=True),
}


@dataclass
class RunResult:
    start_h: float
    cost: float = 0.0
    hours: float = 0.0  # submit to finish
    missed: bool = False
    preemptions: int = 0
    zone_changes: int = 0
    launches: int = 0
    failed_launches: int = 0
    spot_hours: float = 0.0
    ondemand_hours: float = 0.0
    truncated: bool = False  # the trace ended first; finished on on-demand


# A decision the replayed controller made: (event, context it saw, placement, reason).
# Events: "launch" (rank()[0] tried), "no_capacity", "preempted", "to_spot" (left on-demand),
# "move" (left a running spot placement for a cheaper one, with move_running_spot).
DecisionHook = Callable[[str, RankingContext, Placement, str], None]


def spot_price_for(cfg: SimConfig, zone: ZoneTrace) -> float:
    return cfg.spot_prices.get(zone.zone, cfg.spot_prices.get(zone.region, cfg.spot_price))


def node_count(cfg: SimConfig, traces: TraceSet) -> int:
    return cfg.nodes if cfg.nodes is not None else max(1, traces.max_capacity)


def build_catalog(cfg: SimConfig, traces: TraceSet) -> Catalog:
    return Catalog(
        Offering(cfg.cloud, z.region, z.zone, cfg.instance_type, z.gpu.upper(), 1, 8, 61,
                 cfg.ondemand_price, spot_price_for(cfg, z), "trace", f"replay of {traces.name}")
        for z in traces.zones)


def build_candidates(cfg: SimConfig, traces: TraceSet, spec: PolicySpec) -> list[Candidate]:
    gpu = traces.zones[0].gpu.upper()
    task = TaskSpec.model_validate({"resources": {"accelerators": f"{gpu}:1",
                                                  "use_spot": not spec.on_demand_only},
                                    "num_nodes": node_count(cfg, traces)})
    cands = match(task, build_catalog(cfg, traces), with_on_demand_twins=True)
    if spec.zones is not None:
        cands = [c for c in cands if c.placement.zone in spec.zones]
    return cands


def start_times(cfg: SimConfig, traces: TraceSet) -> list[float]:
    """Submit times every ``start_every_hours`` from ``first_start_hours`` that leave the job
    its whole window."""
    window = 3600 * (cfg.deadline_hours if cfg.deadline_hours else 2 * cfg.job_hours)
    step = 3600 * cfg.start_every_hours
    first = 3600 * cfg.first_start_hours
    n = int((traces.span_s - window - first) // step) + 1 if traces.span_s >= window + first else 0
    return [first + i * step for i in range(max(0, n))]


class _Job:
    """One replayed job: the controller loop in miniature."""

    def __init__(self, traces: TraceSet, cfg: SimConfig, spec: PolicySpec,
                 cands: list[Candidate], start: float,
                 hook: DecisionHook | None = None) -> None:
        self.traces, self.cfg, self.spec, self.cands = traces, cfg, spec, cands
        self.hook = hook
        self.zones = {z.zone: z for z in traces.zones}
        self.nodes = node_count(cfg, traces)
        self.work = cfg.job_hours * 3600
        self.start = start
        self.deadline = start + 3600 * cfg.deadline_hours if cfg.deadline_hours else None
        self.fail_s = cfg.launch_fail_s if cfg.launch_fail_s is not None else traces.gap_s
        self.memory = PreemptionMemory() if spec.memory else None
        self.prices = PriceBook() if any(z.prices for z in traces.zones) else None
        self.r = RunResult(start_h=start / 3600)
        self.progress = 0.0
        self.last: Placement | None = None
        self.last_end: str | None = None
        self.last_preempted: Placement | None = None
        self.prev_zone: str | None = None
        self.cooldown: dict[ZoneKey, float] = {}

    # -- context ----------------------------------------------------------------------------

    def ctx(self, t: float, running: bool, progress: float | None = None) -> RankingContext:
        cfg = self.cfg
        if self.prices is not None:
            for z in self.traces.zones:
                price = z.price_at(t)
                if price is not None:
                    self.prices.observe((cfg.cloud, z.region, z.zone, cfg.instance_type),
                                        price, t)
        return RankingContext(
            strategy=self.spec.strategy, ordered=False, now=t, last=self.last,
            last_end=self.last_end, cooldown=self.cooldown, deadline_at=self.deadline,
            expected_runtime_s=self.work if self.deadline is not None else None,
            progress_s=self.progress if progress is None else progress,
            memory=self.memory, prices=self.prices, restart_s=cfg.restart_s,
            checkpoint_interval_s=cfg.checkpoint_interval_s,
            checkpoint_save_s=cfg.checkpoint_save_s, notice_s=cfg.notice_s,
            launch_fail_s=self.fail_s, submitted_at=self.start, running=running,
            last_preempted=self.last_preempted, deadline_guard=self.spec.deadline_guard)

    def record(self, p: Placement, kind: str, t: float, value: float = 1.0) -> None:
        if self.memory is not None:
            self.memory.record(memory_key(p), kind, t, value)

    # -- trace -------------------------------------------------------------------------------

    def has_capacity(self, p: Placement, t: float) -> bool:
        return not p.use_spot or self.zones[p.zone].capacity_at(t) >= self.nodes

    def drop_time(self, p: Placement, t: float) -> float:
        """When a spot instance launched at ``t`` loses its capacity."""
        if not p.use_spot:
            return math.inf
        z = self.zones[p.zone]
        i = z.index(t) + 1
        while i < len(z.capacity) and z.capacity[i] >= self.nodes:
            i += 1
        return i * z.gap_s  # past the end of the trace counts as no capacity

    def pay(self, p: Placement, a: float, b: float) -> None:
        if b <= a:
            return
        hours = (b - a) / 3600
        if p.use_spot:
            self.r.spot_hours += hours
        else:
            self.r.ondemand_hours += hours
        z = self.zones[p.zone]
        if p.use_spot and z.prices is not None:
            t, cost = a, 0.0
            while t < b:
                nxt = min(b, (z.index(t) + 1) * z.gap_s)
                cost += (z.price_at(t) or 0.0) * (nxt - t) / 3600
                t = nxt
        else:
            cost = p.price_per_hour * hours
        self.r.cost += cost * self.nodes

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> RunResult:
        t = self.start
        end = self.traces.span_s
        pending: Placement | None = None
        while self.progress < self.work - 1e-6:
            if t >= end:
                self.finish_on_demand(t)
                return self.r
            if pending is None:
                ctx = self.ctx(t, running=False)
                top = rank(self.cands, ctx)[0]
                p = top.candidate.placement
                if self.hook is not None:
                    self.hook("launch", ctx, p, top.reason)
            else:
                p, pending = pending, None
            if not self.has_capacity(p, t):
                if self.hook is not None:
                    self.hook("no_capacity", self.ctx(t, running=False), p, "")
                self.record(p, "no_capacity", t)
                self.r.failed_launches += 1
                self.last, self.last_end = p, "no_capacity"
                if self.spec.rotate_failed:
                    self.cooldown[zone_key(p)] = t + len(self.zones) * self.fail_s
                t += self.fail_s
                continue
            t, pending = self.stint(p, t)
        self.r.hours = (t - self.start) / 3600
        self.r.missed = self.deadline is not None and t > self.deadline + 1e-6
        return self.r

    def stint(self, p: Placement, t0: float) -> tuple[float, Placement | None]:
        """Run ``p`` from ``t0`` until it finishes, is preempted or is switched away from."""
        self.r.launches += 1
        if self.prev_zone is not None and p.zone != self.prev_zone:
            self.r.zone_changes += 1
        self.prev_zone = p.zone
        self.record(p, "launch_ok", t0)
        self.last, self.last_end = p, None
        useful_from = t0 + self.cfg.restart_s
        finish = useful_from + (self.work - self.progress)
        drop = self.drop_time(p, t0)
        if not p.use_spot and self.spec.strategy == "DEADLINE_AWARE":
            switch = self.watch_on_demand(p, useful_from, finish)
            if switch is not None:
                t, nxt = switch
                self.end_stint(p, t0, t, max(0.0, t - useful_from))
                return t, nxt
        if p.use_spot and self.cfg.move_running_spot and self.spec.strategy == "DEADLINE_AWARE":
            move = self.watch_spot(p, t0, useful_from, min(finish, drop))
            if move is not None:
                t, nxt = move
                self.end_stint(p, t0, t, max(0.0, t - useful_from))
                return t, nxt
        if finish <= drop:
            self.end_stint(p, t0, finish, self.work - self.progress)
            return finish, None
        useful = max(0.0, drop - useful_from)
        if self.cfg.notice_s < self.cfg.checkpoint_save_s:
            useful = self.cfg.checkpoint_interval_s * (useful // self.cfg.checkpoint_interval_s)
        self.end_stint(p, t0, drop, useful)
        self.r.preemptions += 1
        if self.spec.memory and self.cfg.zone_cooldown_s > 0:  # what the controller does
            key = zone_key(p)
            self.cooldown[key] = max(self.cooldown.get(key, 0.0),
                                     drop + self.cfg.zone_cooldown_s)
        if self.hook is not None:
            self.hook("preempted", self.ctx(drop, running=True), p, "")
        self.record(p, "preemption", drop)
        self.last_end, self.last_preempted = "preempted", p
        return drop, None

    def end_stint(self, p: Placement, t0: float, t1: float, gained: float) -> None:
        self.pay(p, t0, t1)
        self.progress = min(self.work, self.progress + gained)
        self.record(p, "run_seconds", t1, t1 - t0)

    def watch_on_demand(self, p: Placement, useful_from: float,
                        finish: float) -> tuple[float, Placement] | None:
        """On on-demand, ask at every check (:meth:`check_step`) whether to go back to
        spot, and try it."""
        gap, step = self.traces.gap_s, self.check_step()
        t = (math.floor(useful_from / gap) + 1) * gap
        while t < finish and t < self.traces.span_s:
            progress = self.progress + (t - useful_from)
            ctx = self.ctx(t, running=True, progress=progress)
            if deadline_decision(ctx, self.cands).use_spot:
                ranked = rank(self.cands, self.ctx(t, running=True, progress=progress))
                spot = next((r.candidate.placement for r in ranked
                             if r.candidate.placement.use_spot), None)
                if spot is not None and self.has_capacity(spot, t):
                    if self.hook is not None:
                        self.hook("to_spot", ctx, spot, "")
                    return t, spot
                if spot is not None:
                    self.record(spot, "no_capacity", t)
            t += step
        return None

    def watch_spot(self, p: Placement, t0: float, useful_from: float,
                   end: float) -> tuple[float, Placement] | None:
        """On spot (with ``move_running_spot``), ask at every check (:meth:`check_step`)
        whether to move to a cheaper spot zone, and try it: a failed try costs nothing
        while ``p`` runs (the controller would launch the replacement first); a move costs
        a restart."""
        gap, step = self.traces.gap_s, self.check_step()
        t = (math.floor(useful_from / gap) + 1) * gap
        while t < end:
            progress = self.progress + (t - useful_from)
            ctx = self.ctx(t, running=True, progress=progress)
            move = move_decision(self.cands, ctx, t - t0)
            if move.target is not None:
                if self.has_capacity(move.target, t):
                    if self.hook is not None:
                        self.hook("move", ctx, move.target, move.reason)
                    return t, move.target
                self.record(move.target, "no_capacity", t)
            t += step
        return None

    def check_step(self) -> float:
        """Seconds between two checks of a running job: the controller's
        ``deadline_check_interval``, at least one trace sample."""
        return max(self.cfg.check_interval_s, self.traces.gap_s)

    def finish_on_demand(self, t: float) -> None:
        od = next(c.placement for c in self.cands if not c.placement.use_spot)
        rest = self.work - self.progress + self.cfg.restart_s
        self.pay(od, t, t + rest)
        self.r.truncated = True
        self.r.hours = (t + rest - self.start) / 3600
        self.r.missed = self.deadline is not None and t + rest > self.deadline + 1e-6


def simulate_run(traces: TraceSet, cfg: SimConfig, spec: PolicySpec, start: float,
                 hook: DecisionHook | None = None) -> RunResult:
    """One job submitted at ``start``; ``hook`` (optional) sees every decision it makes."""
    cands = build_candidates(cfg, traces, spec)
    if not cands:
        raise ConfigError(f"policy {spec.name}: no candidate placement in the traces")
    return _Job(traces, cfg, spec, cands, start, hook).run()


def bound_run(traces: TraceSet, cfg: SimConfig, start: float) -> float | None:
    """The omniscient lower bound for a job submitted at ``start`` (see bound.py)."""
    return _bound_hinted(traces, cfg, start, None)[0]


Progress = Callable[[str, int], None]  # (what, runs just done)


def _no_progress(what: str, done: int) -> None:
    return None


def bound_runs(traces: TraceSet, cfg: SimConfig, starts: list[float],
               progress: Progress = _no_progress) -> list[float | None]:
    """:func:`bound_run` for every start, each bisection seeded with the previous one's
    multiplier (the same values, faster)."""
    out: list[float | None] = []
    mu: float | None = None
    for s in starts:
        value, next_mu = _bound_hinted(traces, cfg, s, mu)
        out.append(value)
        mu = next_mu if next_mu is not None else mu
        progress("bound", 1)
    return out


def _bound_input(traces: TraceSet, cfg: SimConfig, start: float) -> BoundInput:
    gap = traces.gap_s
    window = 3600 * (cfg.deadline_hours or 2 * cfg.job_hours)
    steps = math.ceil(window / gap)
    nodes = node_count(cfg, traces)
    first = int(start // gap)
    spot: list[list[float | None]] = []
    for z in traces.zones:
        row: list[float | None] = []
        for i in range(first, first + steps):
            ok = i < len(z.capacity) and z.capacity[i] >= nodes
            price = z.prices[i] if z.prices is not None and ok else spot_price_for(cfg, z)
            row.append(price * nodes * gap / 3600 if ok else None)
        spot.append(row)
    return BoundInput(gap, steps, cfg.job_hours * 3600, cfg.restart_s,
                      cfg.ondemand_price * nodes * gap / 3600, spot)


def _bound_hinted(traces: TraceSet, cfg: SimConfig, start: float,
                  mu_hint: float | None) -> tuple[float | None, float | None]:
    return lower_bound_hinted(_bound_input(traces, cfg, start), mu_hint)


@dataclass(frozen=True)
class PolicySummary:
    name: str
    runs: int
    mean_cost: float
    savings: float  # vs all on-demand, fraction
    misses: int
    preemptions: float  # mean per run
    zone_changes: float
    mean_hours: float
    vs_bound: float | None  # mean cost / mean bound - 1

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def summarize(name: str, runs: list[RunResult], od_cost: float,
              bound_cost: float | None) -> PolicySummary:
    n = max(1, len(runs))
    mean_cost = sum(r.cost for r in runs) / n
    return PolicySummary(
        name=name, runs=len(runs), mean_cost=mean_cost,
        savings=1 - mean_cost / od_cost if od_cost > 0 else 0.0,
        misses=sum(r.missed for r in runs),
        preemptions=sum(r.preemptions for r in runs) / n,
        zone_changes=sum(r.zone_changes for r in runs) / n,
        mean_hours=sum(r.hours for r in runs) / n,
        vs_bound=mean_cost / bound_cost - 1 if bound_cost else None)


SINGLE_ZONE = "single-zone-greedy"
BOUND = "omniscient"
BUILTIN_NAMES = (*POLICIES, SINGLE_ZONE)


def policy_specs(traces: TraceSet, name: str) -> list[PolicySpec]:
    """What one policy name replays: ``single-zone-greedy`` is one spec per zone."""
    if name == SINGLE_ZONE:
        return [PolicySpec(f"{SINGLE_ZONE}:{z.zone}", "FAILOVER", zones=(z.zone,))
                for z in traces.zones]
    if name in POLICIES:
        return [POLICIES[name]]
    raise ConfigError(f"unknown policy {name!r} (known: {', '.join(BUILTIN_NAMES)})")


def run_policy(traces: TraceSet, cfg: SimConfig, name: str, starts: list[float],
               progress: Progress = _no_progress) -> list[RunResult]:
    """Every start of one policy; ``single-zone-greedy`` runs each zone on its own (greedy
    spot in that zone, on-demand once the deadline needs it) and returns all those runs."""
    out = []
    for spec in policy_specs(traces, name):
        for s in starts:
            out.append(simulate_run(traces, cfg, spec, s))
            progress(name, 1)
    return out


@dataclass(frozen=True)
class Report:
    traces: str
    starts: int
    nodes: int
    ondemand_cost: float
    bound_cost: float | None
    policies: tuple[PolicySummary, ...]

    def as_dict(self) -> dict[str, object]:
        return {"traces": self.traces, "starts": self.starts, "nodes": self.nodes,
                "ondemand_cost": self.ondemand_cost, "bound_cost": self.bound_cost,
                "policies": [p.as_dict() for p in self.policies]}


def total_runs(traces: TraceSet, cfg: SimConfig, names: list[str],
               with_bound: bool = True) -> int:
    """How many runs :func:`evaluate` makes (for a progress bar): on-demand, the bound and
    every policy, each over every start."""
    starts = len(start_times(cfg, traces))
    specs = 1 + sum(len(policy_specs(traces, n)) for n in names)
    return starts * (specs + (1 if with_bound else 0))


def evaluate(traces: TraceSet, cfg: SimConfig, names: list[str],
             with_bound: bool = True, progress: Progress = _no_progress) -> Report:
    """Replay ``names`` over every start; ``progress(what, n)`` hears of every finished run
    (``total_runs`` says how many there will be)."""
    cfg.validate()
    starts = start_times(cfg, traces)
    if not starts:
        raise ConfigError(f"{traces.name}: the traces are shorter than one job window")
    od_runs = run_policy(traces, cfg, "on-demand", starts, progress)
    od_cost = sum(r.cost for r in od_runs) / len(od_runs)
    bound: float | None = None
    if with_bound:
        values = bound_runs(traces, cfg, starts, progress)
        bound = sum(v for v in values if v is not None) / len(values)
    summaries = [summarize(n, run_policy(traces, cfg, n, starts, progress), od_cost, bound)
                 for n in names]
    if bound is not None:
        summaries.append(PolicySummary(BOUND, len(starts), bound, 1 - bound / od_cost, 0,
                                       0.0, 0.0, 0.0, 0.0))
    return Report(traces.name, len(starts), node_count(cfg, traces), od_cost, bound,
                  tuple(summaries))
