"""Placement strategies: rank the candidates for the next attempt of a job.

Pure code. The controller and the replay simulator (``skyjobs.recovery.sim.simulator``) call the
same :func:`rank` and :func:`deadline_decision`; see docs/policy.md for the model.

Contract with the caller: launch the first :class:`Ranked`; on a capacity error record
``no_capacity`` in the memory, advance ``now`` and call :func:`rank` again, so every retry
sees the newest evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from skyjobs.pricing.catalog import Placement
from skyjobs.pricing.prices import PriceBook
from skyjobs.recovery.memory import MemoryConfig, MemoryKey, PreemptionMemory, ZoneEstimate
from skyjobs.recovery.placement import Candidate
from skyjobs.spec import JobRecovery

ZoneKey = tuple[str, str, str]  # (cloud, zone, instance_type)

_PRIOR = PreemptionMemory(MemoryConfig())  # an empty memory answers with the prior


def zone_key(p: Placement) -> ZoneKey:
    return (p.cloud, p.zone, p.instance_type)


def memory_key(p: Placement) -> MemoryKey:
    return (p.cloud, p.region, p.zone, p.instance_type, p.use_spot)


@dataclass
class RankingContext:
    """What a strategy may know when it ranks: the job's history and the clock (seconds)."""

    strategy: str
    ordered: bool
    now: float
    last: Placement | None = None
    last_end: str | None = None  # "preempted", "no_capacity", "failed" or None
    cooldown: dict[ZoneKey, float] = field(default_factory=dict)  # key -> cooling until
    deadline_at: float | None = None
    expected_runtime_s: float | None = None
    progress_s: float = 0.0
    memory: PreemptionMemory | None = None
    prices: PriceBook | None = None
    restart_s: float = 180.0  # launch to useful work, including checkpoint restore
    checkpoint_interval_s: float = 1800.0
    checkpoint_save_s: float = 30.0  # a notice at least this long lets the job checkpoint
    notice_s: float = 0.0  # preemption notice the cloud gives (AWS 120, GCP 30)
    launch_fail_s: float = 60.0  # wall time a failed launch attempt costs
    submitted_at: float | None = None  # start of the uniform-progress line
    running: bool = False  # ``last`` is up and making progress right now
    last_preempted: Placement | None = None  # most recent preemption of this job
    deadline_guard: bool = True  # any strategy falls back to on-demand to meet a deadline
    # The job's own slack loss per hour of progress (job_loss_rate_h()). Kept for callers;
    # the ranking no longer uses it (docs/policy.md, "What made the default lose").
    job_loss_rate_h: float = 0.0


@dataclass(frozen=True)
class Ranked:
    candidate: Candidate
    score: float
    reason: str


@dataclass(frozen=True)
class Decision:
    use_spot: bool
    reason: str


@dataclass(frozen=True)
class Move:
    """Whether a running spot job should move to another spot placement (``target``)."""

    target: Placement | None
    reason: str


def effective_strategy(recovery: JobRecovery) -> str:
    """The strategy a job runs: the named one, else DEADLINE_AWARE when the job has a deadline
    and an expected runtime, else COST_AWARE."""
    if recovery.strategy:
        return recovery.strategy
    if recovery.deadline_hours is not None and recovery.expected_runtime_hours is not None:
        return "DEADLINE_AWARE"
    return "COST_AWARE"


# ---------------------------------------------------------------------------------------------
# Deadline: when to use on-demand


def lost_work_s(ctx: RankingContext) -> float:
    """Worst-case work a preemption destroys: none when the notice leaves time to checkpoint."""
    return 0.0 if ctx.notice_s >= ctx.checkpoint_save_s else ctx.checkpoint_interval_s


def slack_s(ctx: RankingContext) -> float | None:
    """Time to spare: time left to the deadline minus the work left."""
    if ctx.deadline_at is None or ctx.expected_runtime_s is None:
        return None
    remaining = max(0.0, ctx.expected_runtime_s - ctx.progress_s)
    return (ctx.deadline_at - ctx.now) - remaining


def safety_reserve_s(ctx: RankingContext) -> float:
    """Slack that must stay unspent: one more spot mishap (a failed launch, or a launch that is
    preempted at once) and then the restart onto on-demand."""
    mishap = max(ctx.launch_fail_s, ctx.restart_s + lost_work_s(ctx))
    return ctx.restart_s + mishap


def launch_wait_s(q: float, ctx: RankingContext) -> float:
    """Expected wall time lost to failed launches before one start, when each launch finds
    no capacity with probability ``q``: ``q/(1-q)`` failures of ``launch_fail_s`` each."""
    q = min(q, 0.99)
    return q / (1 - q) * ctx.launch_fail_s


def bridge_s(ctx: RankingContext) -> float:
    """Slack an outage costs a job that bridges it with on-demand: the failed try that finds
    it and the restart onto on-demand (going back to spot is taken only when the slack
    covers it, see :func:`deadline_decision`)."""
    return ctx.launch_fail_s + ctx.restart_s


def future_wait_s(q_long_run: float, ctx: RankingContext) -> float:
    """Slack a later start is expected to lose to a lack of capacity: the wait at the
    zone's long-run no-capacity share, or, if less, the slack of bridging the outage with
    on-demand (:func:`bridge_s`), which the job does once its slack is short."""
    return min(launch_wait_s(q_long_run, ctx), bridge_s(ctx))


def spot_slack_rate(ctx: RankingContext, candidates: list[Candidate] | None = None) -> float:
    """Seconds of slack one hour of spot work is expected to use up from now on: each
    preemption costs a restart, the unsaved work and the failed launches before the next
    start, those at the zone's *long-run* no-capacity share but at most the slack of
    bridging the outage (:func:`future_wait_s`). At the best spot candidate
    (:func:`_best_spot`), since that is where the job will run."""
    return _best_spot(ctx, candidates)[0]


def _best_spot(ctx: RankingContext,
               candidates: list[Candidate] | None) -> tuple[float, float]:
    """(slack per hour of spot work, expected wait for the next start) at the spot candidate
    that needs the least slack for the rest of the job: its wait now plus the remaining work
    times its rate. (Before the seventh pass: the candidate with the lowest rate, and *its*
    wait now, which after a failure there was the wait at a zone the job would not launch
    in next; docs/policy.md, "Seventh pass".)

    The estimates are the memory's own (:meth:`PreemptionMemory.estimate`), not
    :func:`zone_estimate`: :func:`still_down_p` says whether a zone is down at this instant,
    which decides where to launch; it is not a wait. Through ``q/(1-q)`` it would read a
    zone seen down a minute ago as 99 failed launches away, and the line would bridge with
    on-demand whenever every zone had just failed, also far from the deadline (on the
    16-node sets at job + 50%; "Seventh pass")."""
    memory = ctx.memory or _PRIOR
    keys = [memory_key(c.placement) for c in candidates or () if c.placement.use_spot]
    if not keys and ctx.last is not None and ctx.last.use_spot:
        keys = [memory_key(ctx.last)]
    ests = [memory.estimate(key, ctx.now) for key in keys or [("", "", "", "", True)]]
    remaining_h = max(0.0, (ctx.expected_runtime_s or 0.0) - ctx.progress_s) / 3600
    best: tuple[float, float, float] | None = None
    for est in ests:
        per_event = (ctx.restart_s + lost_work_s(ctx) / 2
                     + future_wait_s(est.long_run_no_capacity, ctx))
        rate = est.hazard_per_hour * per_event
        wait = launch_wait_s(est.p_no_capacity, ctx)
        if best is None or wait + remaining_h * rate < best[0]:
            best = (wait + remaining_h * rate, rate, wait)
    assert best is not None
    return best[1], best[2]


def slack_needed_s(ctx: RankingContext, candidates: list[Candidate] | None = None) -> float:
    """The slack to keep for the rest of the job: the safety reserve, the expected wait for
    the next start (capacity now, counted once), and the expected use of the remaining spot
    work at the best spot candidate (failed launches at the long-run capacity share, each
    outage at most what bridging it with on-demand costs in slack).

    The capacity-now estimate is a short-lived state (1 h half-life): right after a failed
    launch it is high, and extrapolating it over every future start (as this line did before)
    made the job buy on-demand hours for outages that were over within minutes. A later
    outage costs the slack of waiting it out or, when that is more, of bridging it; reserving
    the whole wait for every expected outage bought on-demand hours for outages the job
    could have bridged if and when they came (docs/policy.md, multinode-s1-16n).

    The best spot candidate is the one whose own wait now and remaining use need the least
    slack: the job starts where it is cheapest to, not necessarily at the zone with the
    lowest long-run rate, which may be the zone that just failed (seventh pass)."""
    assert ctx.expected_runtime_s is not None
    remaining_h = max(0.0, ctx.expected_runtime_s - ctx.progress_s) / 3600
    rate, wait_now = _best_spot(ctx, candidates)
    return safety_reserve_s(ctx) + wait_now + remaining_h * rate


def deadline_decision(ctx: RankingContext,
                      candidates: list[Candidate] | None = None) -> Decision:
    """Spot or on-demand for the job's next step (a launch, or staying where it runs).

    Every strategy with ``deadline_guard`` commits to on-demand once the slack is down to the
    safety reserve (the "greedy" policy of Wu et al., NSDI'24). DEADLINE_AWARE also bridges
    spot outages with on-demand when its slack is short: after a launch that found no spot
    capacity, it goes on-demand if the slack is at or below the line the rest of the job is
    expected to need (:func:`slack_needed_s`), since waiting out the outage would spend slack
    the rest of the job needs, while on-demand keeps it. On on-demand it goes back to spot as
    soon as the slack covers the switch (a restart and a failed try) above the reserve: the
    caller launches spot only where there is capacity, and any later shortfall is met by
    the same bridge or, at the reserve, by the guard. Above the line, spare slack is spent
    waiting for spot.
    """
    slack = slack_s(ctx)
    if slack is None:
        return Decision(True, "no deadline")
    reserve = safety_reserve_s(ctx)
    on_od = ctx.last is not None and not ctx.last.use_spot and ctx.running
    if ctx.deadline_guard and slack <= reserve + (ctx.restart_s if on_od else 0.0):
        return Decision(False, f"slack {slack / 3600:.2f} h at the safety reserve: on-demand")
    if ctx.strategy != "DEADLINE_AWARE":
        return Decision(True, f"slack {slack / 3600:.2f} h")
    if on_od:
        floor = reserve + ctx.restart_s + ctx.launch_fail_s
        if slack < floor:
            return Decision(False, f"slack {slack / 3600:.2f} h does not cover a switch back"
                                   f" ({floor / 3600:.2f} h): stay on-demand")
        return Decision(True, f"slack {slack / 3600:.2f} h covers a switch back: spot where"
                              " there is capacity")
    spot_just_failed = (ctx.last_end == "no_capacity" and ctx.last is not None
                        and ctx.last.use_spot)
    if spot_just_failed:
        need = slack_needed_s(ctx, candidates)
        if slack <= need:
            return Decision(False, f"no spot capacity and slack {slack / 3600:.2f} h is at or"
                                   f" below the {need / 3600:.2f} h needed: on-demand")
    return Decision(True, f"slack {slack / 3600:.2f} h, spot")


# ---------------------------------------------------------------------------------------------
# Cost model


def _price(p: Placement, ctx: RankingContext) -> tuple[float, str]:
    if ctx.prices is None:
        return p.price_per_hour, f"${p.price_per_hour:.3f}/h"
    quote = ctx.prices.quote(p.offering, p.use_spot, ctx.now)
    price = quote.price if quote.price is not None else p.price_per_hour
    return price, quote.label()


def still_down_p(memory: PreemptionMemory, key: MemoryKey, now: float,
                 long_run: float) -> float:
    """Probability that a zone whose latest capacity evidence is a failure (a launch that
    found no capacity, or a preemption) still has none now; 0 if its latest evidence is a
    successful launch, or there is none.

    Capacity is a state that persists: what the zone did last says more than the mix of
    what it did over the last hour, which is all :meth:`PreemptionMemory.p_no_capacity`
    pools (a stint's successful launch half an hour ago and its preemption now read as one
    success and one failure, 0.43-0.65 no-capacity). Taken as a two-state chain relaxing to
    the zone's long-run share ``b`` at the capacity evidence's own half-life
    (``capacity_half_life_s``, 1 h), the chance it is still down ``a`` seconds after the
    failure is ``b + (1 - b) x 0.5 ** (a / half_life)``: 1 at once (relaunched right after
    its preemption, the zone had no capacity in all 1,520 such launches replayed on nine
    trace sets, where the memory said 0.6-0.9), ``b`` after some hours. No new constant
    (docs/policy.md, "Seventh pass")."""
    failed = max(memory.last(key, "no_capacity") or -math.inf,
                 memory.last(key, "preemption") or -math.inf)
    ok = memory.last(key, "launch_ok")
    if failed == -math.inf or (ok is not None and ok >= failed):
        return 0.0
    age = max(0.0, now - failed)
    return long_run + (1 - long_run) * 0.5 ** (age / memory.config.capacity_half_life_s)


def zone_estimate(p: Placement, ctx: RankingContext) -> ZoneEstimate:
    """The memory's estimate for ``p`` now, as the ranking and the cost model see it. For
    DEADLINE_AWARE, which does not keep to the controller's zone cooldown and prices a
    preempted zone through its memory instead, the capacity now is at least
    :func:`still_down_p`: a zone that just failed is taken as still down, fading to its
    long-run share. (The other strategies rank a preempted zone last for the cooldown;
    their estimate is the memory's. The pacing line keeps the memory's, :func:`_best_spot`.)"""
    memory = ctx.memory or _PRIOR
    key = memory_key(p)
    est = memory.estimate(key, ctx.now)
    if ctx.strategy != "DEADLINE_AWARE" or not p.use_spot:
        return est
    q = still_down_p(memory, key, ctx.now, est.long_run_no_capacity)
    if q <= est.p_no_capacity:
        return est
    return ZoneEstimate(est.hazard_per_hour, q, est.long_run_no_capacity)


def _estimate(p: Placement, ctx: RankingContext, est: ZoneEstimate | None) -> ZoneEstimate:
    """The estimate for ``p`` now (:func:`zone_estimate`), unless the caller has it."""
    return est if est is not None else zone_estimate(p, ctx)


def slack_rate_h(p: Placement, ctx: RankingContext, est: ZoneEstimate | None = None) -> float:
    """Hours of wall time lost (not spent on progress) per hour of useful progress at this
    spot placement: each preemption costs a restart and, without a usable notice, half a
    checkpoint interval of work; the start now costs the launches that fail before it
    (:func:`launch_wait_s` at the capacity-now estimate), a one-off spread over the stint it
    buys: until the next preemption (``1/hazard``), or the end of the work."""
    if not p.use_spot:
        return 0.0
    est = _estimate(p, ctx, est)
    hazard = est.hazard_per_hour
    remaining_h = _remaining_h(ctx)
    starts_per_hour = max(hazard, 1 / remaining_h) if remaining_h else hazard
    per_preemption = ctx.restart_s + lost_work_s(ctx) / 2
    return (hazard * per_preemption
            + starts_per_hour * launch_wait_s(est.p_no_capacity, ctx)) / 3600


def job_loss_rate_h(ctx: RankingContext, model_rate_h: float) -> float:
    """Hours of wall time the job has lost per hour of progress so far (restarts, lost work,
    failed launches, waiting), on a prior of ``model_rate_h`` worth the memory's prior
    exposure. It is the job's own evidence of how fast spot eats its slack here.

    Not used by :func:`rank` any more: early in a job one outage dominates it, and
    extrapolated over the rest of the job it overstated the value of slack (docs)."""
    if ctx.submitted_at is None:
        return model_rate_h
    lost_h = max(0.0, ctx.now - ctx.submitted_at - ctx.progress_s) / 3600
    weight_h = ((ctx.memory or _PRIOR).config.prior_exposure_hours)
    return (lost_h + model_rate_h * weight_h) / (ctx.progress_s / 3600 + weight_h)


def future_loss_h(p: Placement, ctx: RankingContext, est: ZoneEstimate | None = None) -> float:
    """Hours of slack the rest of the job is expected to lose *after* this start: per
    expected preemption a restart, half a checkpoint interval without a usable notice, and
    the wait for the next start at the zone's *long-run* no-capacity share."""
    est = _estimate(p, ctx, est)
    remaining_h = _remaining_h(ctx) or 0.0
    per_preemption = (ctx.restart_s + lost_work_s(ctx) / 2
                      + launch_wait_s(est.long_run_no_capacity, ctx))
    return remaining_h * est.hazard_per_hour * per_preemption / 3600


def future_loss_var_h2(p: Placement, ctx: RankingContext,
                       est: ZoneEstimate | None = None) -> float:
    """Variance (h^2) of :func:`future_loss_h` under its own model: preemptions arrive as a
    Poisson process (mean ``remaining_h x hazard``), each losing a fixed ``c`` (restart and
    half a checkpoint interval) plus a wait for capacity taken as exponential with the mean
    ``w`` of :func:`launch_wait_s` at the long-run share. A compound Poisson sum has variance
    ``mean count x E[X^2]``, here ``E[X^2] = (c + w)^2 + w^2``."""
    est = _estimate(p, ctx, est)
    remaining_h = _remaining_h(ctx) or 0.0
    c = (ctx.restart_s + lost_work_s(ctx) / 2) / 3600
    w = launch_wait_s(est.long_run_no_capacity, ctx) / 3600
    return remaining_h * est.hazard_per_hour * ((c + w) ** 2 + w ** 2)


def wait_now_h(p: Placement, ctx: RankingContext, est: ZoneEstimate | None = None) -> float:
    """Hours this start is expected to wait for capacity (the capacity-now estimate)."""
    est = _estimate(p, ctx, est)
    return launch_wait_s(est.p_no_capacity, ctx) / 3600


def expected_loss_h(p: Placement, ctx: RankingContext) -> float:
    """Hours of slack the rest of the job is expected to lose if it starts at this spot
    placement now: the wait for this start (capacity now), then per expected preemption a
    restart, half a checkpoint interval without a usable notice, and the wait for the next
    start at the zone's *long-run* no-capacity share. The capacity-now estimate is a
    short-lived state and is counted once, not extrapolated over every future start."""
    return wait_now_h(p, ctx) + future_loss_h(p, ctx)


def slack_value_per_hour(price: float, ondemand_price: float, rate_h: float,
                         ctx: RankingContext, job_rate_h: float = 0.0,
                         loss_h: float | None = None, wait_h: float = 0.0,
                         loss_var_h2: float | None = None) -> float:
    """Dollars one hour of lost wall time is expected to cost a job with a deadline.

    Time lost is bought back on on-demand, at ``ondemand_price - price`` per hour, only if
    the job runs out of slack. Its expected loss over the rest of the job is
    ``remaining_h x rate``, with ``rate`` the larger of the placement's (``rate_h``) and
    the job's own so far (``job_rate_h``); given ``loss_h`` (:func:`expected_loss_h`), the
    larger of it and ``remaining_h x job_rate_h``. The chance that it exceeds the spare slack
    (above the safety reserve) is taken at Markov's bound, ``min(1, expected_loss /
    spare)``: the worst case for any loss distribution with that mean, since bursts of
    preemptions and outages make the real one heavy-tailed and unknown. A zone that keeps
    failing has a large expected loss, so its time is charged at the full premium quickly;
    a job with ample slack charges little and takes the cheapest zone.

    ``wait_h``: the wait this start is expected to spend now. It is not a risk to bound but
    slack spent first, so it comes off the spare slack and the bound applies to the rest
    of the loss (``loss_h`` then excludes it, :func:`future_loss_h`):
    ``min(1, loss / (spare - wait))``.

    ``loss_var_h2``: the variance of the loss (:func:`future_loss_var_h2`). Given it, the
    chance is also bounded by Cantelli's one-sided inequality, ``var / (var + (spare -
    loss)^2)`` when the spare slack exceeds the expected loss: the worst case for any
    distribution with that mean and variance. Both are upper bounds; the smaller counts.
    Far from the deadline Markov's bound alone charged a job with 10 h to spare about a
    tenth of the premium for every hour it waited (docs/policy.md, multinode rows)."""
    slack = slack_s(ctx)
    remaining_h = _remaining_h(ctx)
    if slack is None or remaining_h is None:
        return price
    premium = max(0.0, ondemand_price - price)
    spare_h = max(0.0, slack - safety_reserve_s(ctx)) / 3600 - wait_h
    if loss_h is None:
        loss_h = remaining_h * rate_h
    loss_h = max(loss_h, remaining_h * job_rate_h)
    if spare_h <= 0.0:
        return premium
    if loss_h <= 0.0:
        return 0.0
    chance = min(1.0, loss_h / spare_h)
    if loss_var_h2 is not None and spare_h > loss_h:
        chance = min(chance, loss_var_h2 / (loss_var_h2 + (spare_h - loss_h) ** 2))
    return premium * chance


def expected_cost_per_hour(p: Placement, ctx: RankingContext) -> tuple[float, str]:
    """Expected dollars per hour of useful progress at this placement.

    The money: each preemption costs a paid restart plus the work lost since the last
    checkpoint. The time (:func:`slack_rate_h`): restarts, lost work and failed launches, at
    :func:`slack_value_per_hour` under a deadline, with the wait for this start taken off the
    spare slack (:func:`wait_now_h`) and the rest of the job's expected loss and its variance
    from :func:`future_loss_h` and :func:`future_loss_var_h2`; without one, failed launches
    are valued at the placement's price (restarts are already paid for).
    """
    price, price_label = _price(p, ctx)
    if not p.use_spot:
        return price, f"{price_label}, on-demand"
    est = zone_estimate(p, ctx)
    hazard = est.hazard_per_hour
    loss_h = (ctx.restart_s + lost_work_s(ctx) / 2) / 3600.0
    money = price * (1 + hazard * loss_h)
    rate_h = slack_rate_h(p, ctx, est)
    if ctx.deadline_at is None or ctx.expected_runtime_s is None:
        cost = money + price * (rate_h - hazard * loss_h)
        return cost, f"{price_label}, {est.describe()}"
    value = slack_value_per_hour(price, p.offering.ondemand_price, rate_h, ctx,
                                 loss_h=future_loss_h(p, ctx, est),
                                 wait_h=wait_now_h(p, ctx, est),
                                 loss_var_h2=future_loss_var_h2(p, ctx, est))
    cost = money + value * rate_h
    return cost, (f"{price_label}, {est.describe()}, loses {rate_h * 60:.1f} min/h"
                  f" at ${value:.2f}/h")


def _remaining_h(ctx: RankingContext) -> float | None:
    if ctx.expected_runtime_s is None:
        return None
    return max(ctx.expected_runtime_s - ctx.progress_s, 60.0) / 3600


# ---------------------------------------------------------------------------------------------
# Moving a running spot job to a cheaper zone


def running_cost_per_hour(p: Placement, ctx: RankingContext,
                          running_s: float) -> tuple[float, float]:
    """(expected dollars per hour of progress, preemption hazard per hour) of staying on the
    spot placement ``p`` that has run ``running_s`` seconds so far: its price with the paid
    restarts and lost work of its preemptions; no wait, since it is up. The stint so far
    counts as exposure in the hazard (:meth:`PreemptionMemory.hazard_per_hour`)."""
    price, _ = _price(p, ctx)
    hazard = (ctx.memory or _PRIOR).hazard_per_hour(memory_key(p), ctx.now, running_s)
    loss_h = (ctx.restart_s + lost_work_s(ctx) / 2) / 3600.0
    return price * (1 + hazard * loss_h), hazard


def move_decision(candidates: list[Candidate], ctx: RankingContext,
                  running_s: float) -> Move:
    """Should a DEADLINE_AWARE job running on spot at ``ctx.last`` (for ``running_s``
    seconds) move to a cheaper spot placement now?

    The gain is the difference between staying (:func:`running_cost_per_hour`) and
    starting at the best other spot candidate (:func:`expected_cost_per_hour`, its wait and
    preemptions included), earned while both would have kept running: the expected overlap
    of two exponential lifetimes, ``1 / (hazard_here + hazard_there)``, at most the work
    left. The move costs a restart: its price and its wall time, the latter valued at
    :func:`slack_value_per_hour` under Markov's bound alone (a move is optional, so its
    slack is priced at the worst case for the expected loss, not at the model's own
    variance). It is taken only above the safety reserve plus that restart. The caller
    launches the target first and releases the running instance once it is up; if the
    target has no capacity it records ``no_capacity`` and stays (docs/policy.md, "Fifth
    pass")."""
    here = ctx.last
    if (ctx.strategy != "DEADLINE_AWARE" or here is None or not here.use_spot
            or not ctx.running):
        return Move(None, "not a deadline-aware job running on spot")
    slack = slack_s(ctx)
    if slack is None or slack <= safety_reserve_s(ctx) + ctx.restart_s:
        return Move(None, "no slack for a move")
    cost_here, hazard_here = running_cost_per_hour(here, ctx, running_s)
    best: tuple[float, Placement] | None = None
    for cand in candidates:
        p = cand.placement
        if not cand.requested or not p.use_spot or zone_key(p) == zone_key(here):
            continue
        if _price(p, ctx)[0] >= cost_here:  # its cost is at least its price: no gain
            continue
        cost, _ = expected_cost_per_hour(p, ctx)
        if best is None or cost < best[0]:
            best = (cost, p)
    if best is None or best[0] >= cost_here:
        return Move(None, "no cheaper spot placement")
    cost, target = best
    remaining_h = _remaining_h(ctx) or 0.0
    hazard_there = (ctx.memory or _PRIOR).estimate(memory_key(target), ctx.now).hazard_per_hour
    horizon_h = min(remaining_h, 1 / max(hazard_here + hazard_there, 1e-9))
    price_there, _ = _price(target, ctx)
    value = slack_value_per_hour(price_there, target.offering.ondemand_price, 0.0, ctx,
                                 loss_h=future_loss_h(target, ctx))
    switch = ctx.restart_s / 3600 * (price_there + value)
    gain = (cost_here - cost) * horizon_h
    if gain <= switch:
        return Move(None, f"moving to {target.zone} would save ${gain:.3f}, less than the"
                          f" ${switch:.3f} restart")
    return Move(target, f"{target.zone} saves ${cost_here - cost:.3f}/h over"
                        f" {horizon_h:.1f} h, more than the ${switch:.3f} restart")


# ---------------------------------------------------------------------------------------------
# Ranking


def _cooling(ctx: RankingContext, p: Placement) -> bool:
    return ctx.cooldown.get(zone_key(p), 0.0) > ctx.now


def _preempted_region(ctx: RankingContext) -> str | None:
    if ctx.last_end == "preempted" and ctx.last is not None:
        return ctx.last.region
    return ctx.last_preempted.region if ctx.last_preempted is not None else None


def _strategy_key(p: Placement, ctx: RankingContext, reasons: list[str]) -> tuple[float, ...]:
    last = ctx.last
    if ctx.strategy == "FAILOVER" and last is not None:
        # Like SkyPilot: go back where the job ran, then its region, then anywhere.
        same_zone = zone_key(p) == zone_key(last)
        same_region = p.region == last.region
        if same_zone:
            reasons.append("where the job last ran")
        return (float(not same_zone), float(not same_region))
    if ctx.strategy == "EAGER_NEXT_REGION":
        region = _preempted_region(ctx)
        if region is not None and p.region == region:
            reasons.append("region recently preempted")
            return (1.0,)
        return (0.0,)
    return ()


def _sort_key(cand: Candidate, ctx: RankingContext, spot_first: bool,
              reasons: list[str]) -> tuple[tuple[float | str, ...], float]:
    p = cand.placement
    cost, cost_label = expected_cost_per_hour(p, ctx)
    reasons.append(cost_label)
    key: list[float | str] = []
    if ctx.ordered:
        key.append(float(cand.choice_index))
        reasons.insert(0, f"ordered choice {cand.choice_index + 1}")
    key.append(float(p.use_spot != spot_first))
    if ctx.strategy not in ("FAILOVER", "DEADLINE_AWARE"):
        cooling = _cooling(ctx, p)
        key.append(float(cooling))
        if cooling:
            reasons.append("zone cooling down after a preemption")
    key.extend(_strategy_key(p, ctx, reasons))
    key.extend((cost, p.price_per_hour, p.label()))
    return tuple(key), cost


def rank(candidates: list[Candidate], ctx: RankingContext) -> list[Ranked]:
    """Best first. Cooling zones go last, never away; on-demand twins of a spot request
    (``requested=False``) appear only when the deadline calls for on-demand."""
    decision = deadline_decision(ctx, candidates)
    any_on_demand_twin = not decision.use_spot
    out: list[tuple[tuple[float | str, ...], Ranked]] = []
    for cand in candidates:
        if not cand.requested and not any_on_demand_twin:
            continue
        reasons: list[str] = []
        key, cost = _sort_key(cand, ctx, decision.use_spot, reasons)
        if not cand.requested:
            reasons.append(decision.reason)
        out.append((key, Ranked(cand, cost, ", ".join(reasons))))
    out.sort(key=lambda item: item[0])
    return [r for _, r in out]
