"""Why does the default lose? Read the replayed controller's own decisions.

    nice -n 19 .venv/bin/python bench/policy_diagnose.py [--cases flicker,outage,...]

For each case (a trace set, a deadline, a node count) the default (DEADLINE_AWARE) is
replayed with a decision hook (``simulator.simulate_run(..., hook=)``). Every launch the
controller makes is classified by the term of the policy that chose it:

* on-demand because of the hard guard (slack at the safety reserve);
* on-demand because of the pacing line (``slack <= need`` after a failed spot launch), with
  the line split into its terms: the reserve, the remaining work x the preemption hazard x
  the restart, and the remaining work x the hazard x the expected failed launches per start
  (``q/(1-q) x launch_fail_s``), the last at the capacity-now estimate ``q`` (what the line
  used before issue 13) and at the zone's long-run share (what it used after the first
  pass; the line now caps each later wait at the slack of bridging it, ``policy.bridge_s``).

It prints the on-demand hours per run by cause and the mean size of each term at the moment
the pacing line sent the job to on-demand.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policy_cases import CASES, Case, case_config  # noqa: E402

from skyjobs.pricing.catalog import Placement  # noqa: E402
from skyjobs.recovery import policy  # noqa: E402
from skyjobs.recovery.sim.simulator import (  # noqa: E402
    POLICIES,
    RankingContext,
    build_candidates,
    simulate_run,
    start_times,
)


def diagnose(case: Case, factor: float) -> None:
    traces, cfg = case_config(case, factor)
    spec = POLICIES["DEADLINE_AWARE"]
    cands = build_candidates(cfg, traces, spec)
    starts = start_times(cfg, traces)
    od_launch: dict[str, int] = defaultdict(int)
    terms: dict[str, float] = defaultdict(float)
    n_pacing = 0
    od_hours = cost = 0.0
    pending: list[tuple[str, float]] = []  # cause of the current on-demand stint

    def hook(event: str, ctx: RankingContext, p: Placement, reason: str) -> None:
        nonlocal n_pacing
        if event == "launch" and not p.use_spot:
            cause = "guard" if "safety reserve" in reason else "pacing"
            od_launch[cause] += 1
            pending.append((cause, ctx.now))
            if cause == "pacing":
                n_pacing += 1
                spot = [c for c in cands if c.placement.use_spot]
                mem = ctx.memory or policy._PRIOR
                best = min(spot, key=lambda c: policy.slack_rate_h(c.placement, ctx))
                est = mem.estimate(policy.memory_key(best.placement), ctx.now)
                rem_h = max(0.0, (ctx.expected_runtime_s or 0) - ctx.progress_s) / 3600
                q, q_lr = min(est.p_no_capacity, 0.99), min(est.long_run_no_capacity, 0.99)
                terms["slack h"] += (policy.slack_s(ctx) or 0) / 3600
                terms["reserve h"] += policy.safety_reserve_s(ctx) / 3600
                terms["hazard/h"] += est.hazard_per_hour
                terms["q now"] += q
                terms["q long-run"] += q_lr
                terms["restart term h"] += rem_h * est.hazard_per_hour * ctx.restart_s / 3600
                terms["fail term (q now) h"] += (rem_h * est.hazard_per_hour * q / (1 - q)
                                                 * ctx.launch_fail_s / 3600)
                terms["fail term (q long-run) h"] += (rem_h * est.hazard_per_hour * q_lr
                                                      / (1 - q_lr) * ctx.launch_fail_s / 3600)

    for s in starts:
        pending.clear()
        r = simulate_run(traces, cfg, spec, s, hook)
        od_hours += r.ondemand_hours
        cost += r.cost
    n = len(starts)
    print(f"{case.name} x{factor}: {n} runs, mean ${cost / n:.2f}, on-demand {od_hours / n:.2f}"
          f" h/run; on-demand launches per run: guard {od_launch['guard'] / n:.2f},"
          f" pacing {od_launch['pacing'] / n:.2f}")
    if n_pacing:
        print("   at a pacing switch (means): " + ", ".join(
            f"{k} {v / n_pacing:.2f}" for k, v in terms.items()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="", help="comma-separated case name prefixes")
    ap.add_argument("--factors", default="1.08,1.25,1.5")
    args = ap.parse_args()
    wanted = [w for w in args.cases.split(",") if w]
    for case in CASES:
        if wanted and not any(case.name.startswith(w) for w in wanted):
            continue
        for f in (float(x) for x in args.factors.split(",")):
            diagnose(case, f)


if __name__ == "__main__":
    main()
