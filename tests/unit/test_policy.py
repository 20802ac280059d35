from typing import Any

import pytest

from skyjobs.pricing.catalog import Catalog, Offering, Placement
from skyjobs.pricing.prices import PriceBook, price_key
from skyjobs.recovery.memory import PreemptionMemory
from skyjobs.recovery.placement import Candidate, match
from skyjobs.recovery.policy import (
    RankingContext,
    bridge_s,
    deadline_decision,
    effective_strategy,
    expected_cost_per_hour,
    expected_loss_h,
    future_loss_h,
    future_loss_var_h2,
    job_loss_rate_h,
    launch_wait_s,
    memory_key,
    move_decision,
    rank,
    safety_reserve_s,
    slack_needed_s,
    slack_rate_h,
    slack_value_per_hour,
    still_down_p,
    wait_now_h,
    zone_estimate,
    zone_key,
)
from skyjobs.spec import JobRecovery, TaskSpec

H = 3600.0


def off(zone: str, spot: float, od: float = 3.06) -> Offering:
    region = zone[:-1]
    return Offering("aws", region, zone, "p3.2xlarge", "V100", 1, 8, 61, od, spot, "d", "s")


CATALOG = Catalog([off("us-east-1a", 0.90), off("us-east-1b", 0.95), off("us-west-2a", 0.99)])


def spot_task(**resources: object) -> TaskSpec:
    return TaskSpec.model_validate(
        {"resources": {"accelerators": "V100:1", "use_spot": True, **resources}})


def cands(twins: bool = False) -> list[Candidate]:
    return match(spot_task(), CATALOG, with_on_demand_twins=twins)


def zones(ranked: list) -> list[str]:
    return [r.candidate.placement.zone for r in ranked]


def ctx(strategy: str = "COST_AWARE", **kw: Any) -> RankingContext:
    return RankingContext(strategy=strategy, ordered=False, now=kw.pop("now", 10 * H), **kw)


def place(zone: str, spot: bool = True) -> Placement:
    o = next(o for o in CATALOG.offerings if o.zone == zone)
    return Placement(o, spot, o.price(spot) or 0.0)


def test_cost_aware_without_history_is_cheapest_first_with_reasons():
    ranked = rank(cands(), ctx())
    assert zones(ranked) == ["us-east-1a", "us-east-1b", "us-west-2a"]
    assert "$0.900/h" in ranked[0].reason
    assert all(r.candidate.placement.use_spot for r in ranked)


def test_cost_aware_avoids_zone_that_just_preempted_and_failed():
    mem = PreemptionMemory()
    key = memory_key(place("us-east-1a"))
    mem.record(key, "run_seconds", 10 * H, 600)
    mem.record(key, "preemption", 10 * H)
    mem.record(key, "no_capacity", 10 * H + 60)
    ranked = rank(cands(), ctx(memory=mem, now=10 * H + 120))
    assert zones(ranked)[0] != "us-east-1a"
    assert zones(ranked)[-1] == "us-east-1a"


def test_live_price_changes_the_order():
    book = PriceBook()
    o = place("us-west-2a").offering
    book.observe(price_key(o), 0.50, t=10 * H - 60)
    ranked = rank(cands(), ctx(prices=book))
    assert zones(ranked)[0] == "us-west-2a"
    assert "live" in ranked[0].reason


def test_cooling_zone_goes_last_but_stays():
    cool = {zone_key(place("us-east-1a")): 11 * H}
    ranked = rank(cands(), ctx(cooldown=cool))
    assert zones(ranked) == ["us-east-1b", "us-west-2a", "us-east-1a"]
    assert "cooling" in ranked[-1].reason


def test_deadline_aware_prices_a_cooling_zone_through_its_memory_instead():
    # The controller's cooldown is a hard rule for the other strategies; DEADLINE_AWARE
    # weighs the preemption through its memory (docs/policy.md, the priced sets).
    cool = {zone_key(place("us-east-1a")): 11 * H}
    ranked = rank(cands(), deadline_ctx("DEADLINE_AWARE", 10.0, cooldown=cool))
    assert zones(ranked)[0] == "us-east-1a"


def test_failover_retries_where_it_ran_then_its_region():
    last = place("us-east-1b")
    ranked = rank(cands(), ctx("FAILOVER", last=last, last_end="preempted"))
    assert zones(ranked) == ["us-east-1b", "us-east-1a", "us-west-2a"]


def test_eager_next_region_leaves_the_preempted_region_for_good():
    pre = place("us-east-1a")
    ranked = rank(cands(), ctx("EAGER_NEXT_REGION", last=pre, last_end="preempted"))
    assert zones(ranked)[0] == "us-west-2a"
    # After a failed try elsewhere it still stays away from the preempted region.
    ranked = rank(cands(), ctx("EAGER_NEXT_REGION", last=place("us-west-2a"),
                               last_end="no_capacity", last_preempted=pre))
    assert zones(ranked)[0] == "us-west-2a"


def test_ordered_keeps_the_users_order_any_of_does_not():
    task = spot_task(ordered=[{"zone": "us-west-2a"}, {"zone": "us-east-1a"}])
    c = match(task, CATALOG)
    assert zones(rank(c, RankingContext("COST_AWARE", True, 0.0))) == ["us-west-2a",
                                                                     "us-east-1a"]
    task = spot_task(any_of=[{"zone": "us-west-2a"}, {"zone": "us-east-1a"}])
    c = match(task, CATALOG)
    assert zones(rank(c, RankingContext("COST_AWARE", False, 0.0))) == ["us-east-1a",
                                                                      "us-west-2a"]


def test_on_demand_twins_hidden_without_deadline():
    ranked = rank(cands(twins=True), ctx())
    assert all(r.candidate.requested for r in ranked)


def deadline_ctx(strategy: str, slack_h: float, **kw: Any) -> RankingContext:
    return ctx(strategy, deadline_at=10 * H + (10 + slack_h) * H, expected_runtime_s=20 * H,
               progress_s=10 * H, submitted_at=0.0, notice_s=120.0, **kw)


def test_guard_forces_on_demand_at_the_reserve_for_every_strategy():
    for strategy in ("COST_AWARE", "FAILOVER", "EAGER_NEXT_REGION", "DEADLINE_AWARE"):
        c = deadline_ctx(strategy, 0.0)
        c.deadline_at = (c.deadline_at or 0) + safety_reserve_s(c) - 1
        assert not deadline_decision(c).use_spot
        ranked = rank(cands(twins=True), c)
        assert not ranked[0].candidate.placement.use_spot
        assert not ranked[0].candidate.requested
        assert "safety reserve" in ranked[0].reason


def test_plenty_of_slack_means_spot():
    assert deadline_decision(deadline_ctx("DEADLINE_AWARE", 10.0)).use_spot
    assert deadline_decision(deadline_ctx("COST_AWARE", 10.0)).use_spot


def test_deadline_aware_uses_on_demand_when_spot_fails_and_slack_is_short():
    spot = place("us-east-1a")
    # need = reserve 0.1 h + the wait for this start (0.3/0.7 x 60 s)
    #        + 10 h left x 0.1 preemptions/h x (180 s + 0.3/0.7 x 60 s) = 0.164 h
    tight = deadline_ctx("DEADLINE_AWARE", 0.15, last=spot, last_end="no_capacity")
    wait = 60 * 3 / 7
    assert slack_needed_s(tight, cands()) / H == pytest.approx(0.1 + (wait + 180 + wait) / H)
    assert not deadline_decision(tight, cands()).use_spot
    # The same situation with an explicit COST_AWARE (greedy) keeps trying spot.
    greedy = deadline_ctx("COST_AWARE", 0.15, last=spot, last_end="no_capacity")
    assert deadline_decision(greedy, cands()).use_spot


def test_pacing_line_counts_the_capacity_now_once_and_the_long_run_for_future_starts():
    # Five failed launches in a row in the only zone: the capacity now is bad (a 29-failure
    # wait), but that is the current outage, not what every later start will see.
    mem = PreemptionMemory()
    key = memory_key(place("us-east-1a"))
    for _ in range(5):
        mem.record(key, "no_capacity", 40 * H)
    only_1a = [c for c in cands() if c.placement.zone == "us-east-1a"]
    c = deadline_ctx("DEADLINE_AWARE", 5.0, memory=mem, now=40 * H, launch_fail_s=60.0)
    c.expected_runtime_s = c.progress_s + 40 * H  # 40 h of work left
    c.deadline_at = c.now + 45 * H
    long_run = (0.3 * 2 + 5) / (2 + 5)  # 0.8
    # The line takes the memory's own capacity-now estimate, not still_down_p (which is 1
    # at this instant and decides only where to launch): seventh pass.
    now_q = (long_run + 5) / (1 + 5)
    assert still_down_p(mem, key, c.now, long_run) == 1.0 > now_q
    assert launch_wait_s(now_q, c) == pytest.approx(now_q / (1 - now_q) * 60)
    expect = 0.1 * H + launch_wait_s(now_q, c) + 40 * 0.1 * (180 + long_run / 0.2 * 60)
    assert slack_needed_s(c, only_1a) == pytest.approx(expect, rel=1e-3)
    # Extrapolating the capacity now over all 4 expected preemptions (the old line) would
    # ask for about twice the slack.
    old = 0.1 * H + 40 * 0.1 * (180 + launch_wait_s(now_q, c))
    assert old > 1.9 * expect


def test_pacing_line_caps_each_later_outage_at_the_slack_of_bridging_it():
    # Twenty failed launches: the long-run share is 0.936, a wait of 14.7 failed launches
    # (880 s) per later start, more than bridging the outage costs in slack (a failed try
    # and a restart onto on-demand: 240 s). The line reserves the bridge for each.
    mem = PreemptionMemory()
    key = memory_key(place("us-east-1a"))
    for _ in range(20):
        mem.record(key, "no_capacity", 40 * H)
    only_1a = [c for c in cands() if c.placement.zone == "us-east-1a"]
    c = deadline_ctx("DEADLINE_AWARE", 5.0, memory=mem, now=40 * H, launch_fail_s=60.0)
    c.expected_runtime_s = c.progress_s + 40 * H
    c.deadline_at = c.now + 45 * H
    long_run = (0.3 * 2 + 20) / (2 + 20)
    now_q = (long_run + 20) / (1 + 20)
    assert launch_wait_s(long_run, c) > bridge_s(c) == 240
    expect = 0.1 * H + launch_wait_s(now_q, c) + 40 * 0.1 * (180 + 240)
    assert slack_needed_s(c, only_1a) == pytest.approx(expect, rel=1e-3)


def test_deadline_aware_goes_back_to_spot_once_the_slack_covers_the_switch():
    od = place("us-east-1a", spot=False)
    # reserve 0.1 h + a restart (180 s) + a failed try (60 s) = 0.167 h
    roomy = deadline_ctx("DEADLINE_AWARE", 0.2, last=od, running=True)
    assert deadline_decision(roomy, cands()).use_spot
    tight = deadline_ctx("DEADLINE_AWARE", 0.15, last=od, running=True)
    assert not deadline_decision(tight, cands()).use_spot


def test_effective_strategy_default_with_and_without_deadline():
    assert effective_strategy(JobRecovery()) == "COST_AWARE"
    assert effective_strategy(JobRecovery(deadline_hours=10,
                                          expected_runtime_hours=8)) == "DEADLINE_AWARE"
    assert effective_strategy(JobRecovery(strategy="FAILOVER", deadline_hours=10,
                                          expected_runtime_hours=8)) == "FAILOVER"


def test_slack_value_is_the_on_demand_premium_times_markovs_bound():
    c = deadline_ctx("DEADLINE_AWARE", 2.0)  # 10 h of work left, reserve 0.1 h: 1.9 h spare
    # expected loss 10 h x 0.05 = 0.5 h; P(loss > 1.9 h) <= 0.5 / 1.9
    assert slack_value_per_hour(0.90, 3.06, 0.05, c) == pytest.approx(2.16 * 0.5 / 1.9)
    # the job's own loss rate counts when it is the larger
    assert slack_value_per_hour(0.90, 3.06, 0.05, c, 0.19) == pytest.approx(2.16)
    # no spare slack: the full premium; no deadline: time is worth the price
    assert slack_value_per_hour(0.90, 3.06, 0.05, deadline_ctx("DEADLINE_AWARE", 0.05)) == 2.16
    assert slack_value_per_hour(0.90, 3.06, 0.05, ctx()) == 0.90


def test_slack_value_uses_the_expected_loss_of_the_rest_of_the_job():
    c = deadline_ctx("DEADLINE_AWARE", 2.0)  # 10 h left, 1.9 h spare
    # prior zone: wait now 0.3/0.7 x 60 s, then 10 h x 0.1/h x (180 s + 0.3/0.7 x 60 s)
    wait = 60 * 3 / 7
    loss = expected_loss_h(place("us-east-1a"), c)
    assert loss == pytest.approx((wait + 10 * 0.1 * (180 + wait)) / H)
    assert slack_value_per_hour(0.90, 3.06, 0.05, c, loss_h=loss) == pytest.approx(
        2.16 * loss / 1.9)


def test_slack_value_takes_the_wait_now_off_the_spare_slack():
    c = deadline_ctx("DEADLINE_AWARE", 2.0)  # 1.9 h spare
    # 0.4 h of waiting now: Markov's bound on the rest (0.5 h) against 1.5 h
    assert slack_value_per_hour(0.90, 3.06, 0.05, c, loss_h=0.5, wait_h=0.4) == pytest.approx(
        2.16 * 0.5 / 1.5)
    # a wait that uses up the spare slack: the full premium
    assert slack_value_per_hour(0.90, 3.06, 0.05, c, loss_h=0.5, wait_h=2.0) == 2.16
    # the split of the expected loss: the wait for this start, then the rest of the job
    p = place("us-east-1a")
    assert expected_loss_h(p, c) == pytest.approx(wait_now_h(p, c) + future_loss_h(p, c))
    assert wait_now_h(p, c) == pytest.approx(60 * 3 / 7 / H)


def test_slack_value_takes_cantellis_bound_when_it_is_tighter():
    c = deadline_ctx("DEADLINE_AWARE", 10.1)  # 10 h spare
    # mean loss 1 h, variance 0.5 h^2: Markov 1/10, Cantelli 0.5 / (0.5 + 81)
    v = slack_value_per_hour(0.90, 3.06, 0.05, c, loss_h=1.0, loss_var_h2=0.5)
    assert v == pytest.approx(2.16 * 0.5 / 81.5)
    # near the deadline (spare below the mean loss) only Markov's bound applies
    tight = deadline_ctx("DEADLINE_AWARE", 0.6)  # 0.5 h spare
    assert slack_value_per_hour(0.90, 3.06, 0.05, tight, loss_h=1.0,
                                loss_var_h2=0.5) == pytest.approx(2.16)
    # the variance of the compound Poisson loss: prior zone, 10 h left, 0.1 preemptions/h,
    # each a 180 s restart plus an exponential wait of 0.3/0.7 x 60 s on average
    cw, w = (180 + 60 * 3 / 7) / H, 60 * 3 / 7 / H
    assert future_loss_var_h2(place("us-east-1a"), c) == pytest.approx(
        10 * 0.1 * (cw ** 2 + w ** 2))


def test_job_loss_rate_is_its_own_lost_time_per_progress_on_a_prior():
    c = ctx(submitted_at=0.0, now=6 * H, progress_s=4 * H)  # lost 2 h in 4 h of progress
    # prior: 0.01 h/h worth the memory's prior exposure (2 h)
    assert job_loss_rate_h(c, 0.01) == pytest.approx((2 + 0.02) / (4 + 2))
    assert job_loss_rate_h(ctx(), 0.01) == 0.01  # no submit time: the model's rate


def test_slack_rate_counts_restarts_and_failed_launches():
    c = deadline_ctx("DEADLINE_AWARE", 2.0, launch_fail_s=195.0)
    # prior: 0.1 preemptions/h x 180 s, and 0.1 starts/h x 0.3/0.7 failures x 195 s
    expect = (0.1 * 180 + 0.1 * 3 / 7 * 195) / H
    assert slack_rate_h(place("us-east-1a"), c) == pytest.approx(expect)
    assert slack_rate_h(place("us-east-1a", spot=False), c) == 0.0


def failing(zone: str, n: int, t: float) -> PreemptionMemory:
    mem = PreemptionMemory()
    for i in range(n):
        mem.record(memory_key(place(zone)), "no_capacity", t - 200.0 * (n - i))
    return mem


def test_a_zone_that_keeps_failing_gets_expensive_under_a_tight_deadline():
    # 1a is $0.09/h cheaper than 2a; after three failures in a row, with 1 h of slack for
    # 10 h of work, its expected lost time at the on-demand premium outweighs that.
    mem = failing("us-east-1a", 3, 10 * H)
    tight = deadline_ctx("DEADLINE_AWARE", 1.0, memory=mem, launch_fail_s=195.0)
    assert zones(rank(cands(), tight))[:2] == ["us-east-1b", "us-west-2a"]
    assert zones(rank(cands(), tight))[-1] == "us-east-1a"
    cost_1a, label = expected_cost_per_hour(place("us-east-1a"), tight)
    assert cost_1a > 0.99 and "min/h at $" in label
    # Without the failures, price wins.
    fresh = deadline_ctx("DEADLINE_AWARE", 1.0, launch_fail_s=195.0)
    assert zones(rank(cands(), fresh))[0] == "us-east-1a"


def test_ample_slack_keeps_the_cheap_zone_despite_failures():
    mem = failing("us-east-1a", 3, 10 * H)
    roomy = deadline_ctx("DEADLINE_AWARE", 30.0, memory=mem, launch_fail_s=195.0)
    assert zones(rank(cands(), roomy))[0] == "us-east-1a"


def running(zone: str, slack_h: float, strategy: str = "DEADLINE_AWARE",
            **kw: Any) -> RankingContext:
    return deadline_ctx(strategy, slack_h, last=place(zone), running=True, **kw)


def test_a_running_spot_job_moves_to_a_cheaper_zone_when_the_saving_pays_the_restart():
    move = move_decision(cands(), running("us-west-2a", 10.0), 2 * H)
    assert move.target is not None and move.target.zone == "us-east-1a"
    assert "saves" in move.reason


def test_no_move_when_the_saving_over_the_overlap_is_less_than_a_restart():
    c = running("us-west-2a", 10.0)
    c.progress_s = 20 * H - 300  # five minutes of work left: the move cannot pay for itself
    c.deadline_at = c.now + 300 + 10 * H
    move = move_decision(cands(), c, 2 * H)
    assert move.target is None and "less than" in move.reason


def test_no_move_without_slack_for_the_restart_or_for_other_jobs():
    c = running("us-west-2a", 0.0)
    c.deadline_at = (c.deadline_at or 0) + safety_reserve_s(c) + c.restart_s - 1
    assert move_decision(cands(), c, 2 * H).target is None
    assert move_decision(cands(), running("us-west-2a", 10.0, "COST_AWARE"), 2 * H).target \
        is None
    assert move_decision(cands(), running("us-east-1a", 10.0), 2 * H).target is None  # cheapest
    idle = running("us-west-2a", 10.0)
    idle.running = False
    assert move_decision(cands(), idle, 2 * H).target is None


def test_a_move_prices_the_target_through_its_memory():
    mem = failing("us-east-1a", 8, 10 * H - 600)
    move = move_decision(cands(), running("us-west-2a", 1.0, memory=mem), 2 * H)
    assert move.target is None or move.target.zone == "us-east-1b"


def test_a_zone_whose_latest_evidence_is_a_failure_is_taken_as_still_down():
    # Seventh pass: capacity is a state; the chance the zone is still down fades from 1 at
    # the failure to the long-run share b at the capacity half-life (1 h).
    mem = PreemptionMemory()
    key = memory_key(place("us-east-1a"))
    assert still_down_p(mem, key, 10 * H, 0.3) == 0.0  # no evidence
    mem.record(key, "launch_ok", 9 * H)
    assert still_down_p(mem, key, 10 * H, 0.3) == 0.0  # latest evidence: a start
    mem.record(key, "preemption", 9.5 * H)
    assert still_down_p(mem, key, 9.5 * H, 0.3) == 1.0
    assert still_down_p(mem, key, 10.5 * H, 0.3) == pytest.approx(0.3 + 0.7 / 2)
    assert still_down_p(mem, key, 30 * H, 0.3) == pytest.approx(0.3, abs=1e-5)
    mem.record(key, "no_capacity", 10 * H)  # a failed launch counts the same
    assert still_down_p(mem, key, 11 * H, 0.3) == pytest.approx(0.65)
    mem.record(key, "launch_ok", 10.2 * H)
    assert still_down_p(mem, key, 10.2 * H, 0.3) == 0.0


def test_deadline_aware_does_not_retry_the_zone_it_was_just_preempted_in():
    # A stint that started 30 minutes ago and was preempted now: the memory pools one
    # success and one failure (below 0.7 no-capacity); DEADLINE_AWARE takes the zone as
    # still down and, with a tight deadline, starts elsewhere. COST_AWARE keeps the
    # memory's estimate (it keeps to the controller's cooldown instead).
    mem = PreemptionMemory()
    a = place("us-east-1a")
    key = memory_key(a)
    mem.record(key, "launch_ok", 10 * H - 1800)
    mem.record(key, "run_seconds", 10 * H, 1800)
    mem.record(key, "preemption", 10 * H)
    kw = dict(memory=mem, last=a, last_end="preempted", launch_fail_s=300.0)
    da = deadline_ctx("DEADLINE_AWARE", 0.5, **kw)
    ca = deadline_ctx("COST_AWARE", 0.5, **kw)
    assert mem.estimate(key, da.now).p_no_capacity < 0.7
    assert zone_estimate(a, da).p_no_capacity == 1.0
    assert zone_estimate(a, ca) == mem.estimate(key, ca.now)
    assert zones(rank(cands(), da))[0] != "us-east-1a"


def test_pacing_line_takes_the_spot_candidate_that_needs_the_least_slack():
    # us-east-1a has the lowest long-run rate (nine hours of clean running) but has just
    # failed five times; us-east-1b is unseen. The line takes the candidate whose own wait
    # now and remaining use need the least slack (1b), not the lowest rate's wait (1a's),
    # and the memory's estimates (not still_down_p).
    mem = PreemptionMemory()
    a, b = place("us-east-1a"), place("us-east-1b")
    mem.record(memory_key(a), "launch_ok", 0.0)
    mem.record(memory_key(a), "run_seconds", 9 * H, 9 * H)
    for _ in range(5):
        mem.record(memory_key(a), "no_capacity", 10 * H)
    two = [c for c in cands() if c.placement.zone in ("us-east-1a", "us-east-1b")]
    c = deadline_ctx("DEADLINE_AWARE", 1.0, memory=mem, last=a, last_end="no_capacity",
                     launch_fail_s=300.0)
    est_a, est_b = mem.estimate(memory_key(a), c.now), mem.estimate(memory_key(b), c.now)
    assert est_a.hazard_per_hour < est_b.hazard_per_hour
    assert est_a.p_no_capacity > est_b.p_no_capacity

    def need(est):
        later = min(launch_wait_s(est.long_run_no_capacity, c), bridge_s(c))
        return (safety_reserve_s(c) + launch_wait_s(est.p_no_capacity, c)
                + 10 * est.hazard_per_hour * (180 + later))

    assert need(est_b) < need(est_a)
    assert slack_needed_s(c, two) == pytest.approx(need(est_b), rel=1e-6)
