"""Replay benchmark: the default policy against every baseline and the omniscient bound.

    nice -n 19 .venv/bin/python bench/policy_replay.py [--cases 9zone,flicker] [--no-bound]
        [--factors 1.08,1.25,1.5] [--full] [--shift-hours 0] [--no-move-running-spot]

Cases (``bench/policy_cases.py``): the real sets in /work/shared/traces (9 zones with equal
and with regional spot prices, 4-node, 16-node) and seeded synthetic regimes
(``bench/tracegen.py``: independent Markov zones, short drops in every zone at once, a
long outage in the cheapest zone, zones with their own spot price series, 8- and 16-node
jobs). Deadlines: job + 8%, + 25%, + 50%. 3-minute restarts, 30-minute checkpoints, 120 s
notice, on-demand $3.06/h per node ($1/h for the priced CPU sets).

One row per case and deadline: the bound's mean cost, then every policy's mean cost as a
percentage over the bound (``!N`` = N missed deadlines), then the default against the best
baseline that missed no deadline (``vs best``; <= +1% passes). ``--full`` also prints the
per-policy tables of ``skyjobs simulate``. ``--shift-hours H`` submits every job H hours
later: another sample of starts from the same traces, to tell a systematic loss from the
luck of where the starts fall (docs/policy.md, "Fourth pass"). The default moves a running
spot job to a cheaper zone when ``policy.move_decision`` says so, as the controller does;
``--no-move-running-spot`` replays it without (docs/policy.md, "Fifth pass"). Nothing is
tuned per case:
every policy runs with the controller's defaults.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from policy_cases import CASES, FACTORS, case_config  # noqa: E402

from skyjobs.recovery.sim.simulator import Report, evaluate  # noqa: E402
from skyjobs.simulate_cli import format_report  # noqa: E402

DEFAULT = "DEADLINE_AWARE"  # what a job with a deadline runs (policy.effective_strategy)
BASELINES = ["COST_AWARE", "EAGER_NEXT_REGION", "FAILOVER", "skypilot", "single-zone-greedy"]
SHORT = {"DEADLINE_AWARE": "default", "COST_AWARE": "cost", "EAGER_NEXT_REGION": "eager",
         "FAILOVER": "failover", "skypilot": "skypilot", "single-zone-greedy": "1zone",
         "on-demand": "od"}


def _evaluate(args: tuple[str, float, bool, float, bool]) -> Report:
    name, factor, with_bound, shift, move = args
    case = next(c for c in CASES if c.name == name)
    traces, cfg = case_config(case, factor, shift, move)
    return evaluate(traces, cfg, [DEFAULT, *BASELINES], with_bound=with_bound)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="", help="comma-separated case name prefixes")
    ap.add_argument("--factors", default=",".join(str(f) for f in FACTORS),
                    help="deadlines as multiples of the job")
    ap.add_argument("--no-bound", action="store_true")
    ap.add_argument("--full", action="store_true", help="also the per-policy tables")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (rows in parallel)")
    ap.add_argument("--shift-hours", type=float, default=0.0,
                    help="submit every job this much later (another sample of starts)")
    ap.add_argument("--no-move-running-spot", dest="move_running_spot",
                    action="store_false",
                    help="replay the default without moves of running spot jobs to a "
                         "cheaper zone (the controller before it made them)")
    args = ap.parse_args()
    wanted = [w for w in args.cases.split(",") if w]
    factors = [float(f) for f in args.factors.split(",")]
    names = [DEFAULT, *BASELINES]
    cols = [SHORT[n] for n in names]
    head = (f"{'case':<22}{'dl':>6}{'bound $':>10}" + "".join(f"{c:>11}" for c in cols)
            + f"{'vs best':>9}  best")
    print(head)
    print("-" * len(head), flush=True)
    t0 = time.time()
    verdicts: list[float] = []
    vs_bound: list[float] = []
    misses = 0
    rows = [(case.name, factor, not args.no_bound, args.shift_hours, args.move_running_spot)
            for case in CASES
            if not wanted or any(case.name.startswith(w) for w in wanted) for factor in factors]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        reports = pool.map(_evaluate, rows)
        for (name, factor, *_), report in zip(rows, reports, strict=True):
            deadline = round(next(c for c in CASES if c.name == name).job_hours * factor, 2)
            by = {p.name: p for p in report.policies}
            ref = report.bound_cost or report.ondemand_cost
            cells = []
            for n in names:
                p = by[n]
                cell = f"{p.mean_cost / ref - 1:+.1%}" + (f"!{p.misses}" if p.misses else "")
                cells.append(f"{cell:>11}")
            ok = [(by[n].mean_cost, SHORT[n]) for n in BASELINES if by[n].misses == 0]
            best_cost, best_name = min([*ok, (report.ondemand_cost, "od")])
            d = by[DEFAULT]
            misses += d.misses
            verdict = d.mean_cost / best_cost - 1
            verdicts.append(verdict)
            if report.bound_cost:
                vs_bound.append(d.mean_cost / report.bound_cost - 1)
            flag = "" if verdict <= 0.01 else "  LOSES"
            bound = f"{report.bound_cost:.2f}" if report.bound_cost else "-"
            print(f"{name:<22}{deadline:>5g}h{bound:>10}{''.join(cells)}"
                  f"{verdict:>+9.1%}  {best_name}"
                  f"{flag}", flush=True)
            if args.full:
                print(format_report(report) + "\n", flush=True)
    print("-" * len(head))
    n = len(verdicts)
    worst = max(verdicts, default=0.0)
    print(f"{n} case x deadline rows; default misses {misses} deadlines; rows where it loses"
          f" to the best baseline by > 1%: {sum(v > 0.01 for v in verdicts)};"
          f" worst {worst:+.1%}")
    if vs_bound:
        print(f"default vs bound: mean {sum(vs_bound) / len(vs_bound):+.1%},"
              f" max {max(vs_bound):+.1%}")
    print(f"runtime {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
