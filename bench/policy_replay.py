"""Replay benchmark: every placement policy over the real spot-capacity traces.

    .venv/bin/python bench/policy_replay.py [--traces-root /work/shared/traces] [--quick]
        [--synthetic]

Main set: aws-p3-9zones-2023-02, a 48 h job with 52 h and 70 h deadlines, 3-minute
restarts, spot $0.97/h, on-demand $3.06/h, a job submitted every 6 hours; then the same
with spot prices differing by region, then the two multi-node sets (checked, not tuned on),
then (``--synthetic``) four synthetic Markov trace sets with random regional prices.
Nothing here is tuned to these traces: the policies use the defaults the controller uses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skyjobs.recovery.simulator import SimConfig, evaluate  # noqa: E402
from skyjobs.recovery.traces import TraceSet, load_traces, synthetic_markov  # noqa: E402
from skyjobs.simulate_cli import format_report  # noqa: E402

POLICIES = ["DEADLINE_AWARE", "COST_AWARE", "FAILOVER", "EAGER_NEXT_REGION", "skypilot",
            "single-zone-greedy"]
# Spot differing by region (illustrative, within the paper period's $0.92-0.97 range and a
# pricier us-west-2), to check that placement follows prices as well as capacity.
REGIONAL = {"us-east-1": 0.92, "us-east-2": 0.95, "us-west-2": 1.10}


def run(root: Path, folder: str, deadline: float, prices: dict[str, float],
        traces: TraceSet | None = None, every: float = 6) -> None:
    cfg = SimConfig(job_hours=48, deadline_hours=deadline, restart_s=180, spot_price=0.97,
                    ondemand_price=3.06, spot_prices=prices, start_every_hours=every)
    report = evaluate(traces or load_traces(root / folder), cfg, POLICIES)
    label = "regional spot prices " + str(prices) if prices else "spot $0.97/h everywhere"
    print(f"\n== {folder}, 48 h job, {deadline:g} h deadline, {label}")
    print(format_report(report), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces-root", default="/work/shared/traces")
    ap.add_argument("--quick", action="store_true", help="main set, 52 h deadline only")
    ap.add_argument("--synthetic", action="store_true",
                    help="only the synthetic Markov sets (seeds 1-4, a job every 12 h)")
    args = ap.parse_args()
    root = Path(args.traces_root)
    if args.synthetic:
        for seed in (1, 2, 3, 4):
            traces, prices = synthetic_markov(seed)
            for deadline in (52, 70):
                run(root, traces.name, deadline, prices, traces, every=12)
        return
    run(root, "aws-p3-9zones-2023-02", 52, {})
    if args.quick:
        return
    run(root, "aws-p3-9zones-2023-02", 70, {})
    run(root, "aws-p3-9zones-2023-02", 52, REGIONAL)
    run(root, "aws-p3-9zones-2023-02", 70, REGIONAL)
    for folder in ("aws-p3-4node-preemption-2023-08", "aws-p3-16node-2023-08"):
        for deadline in (52, 70):
            run(root, folder, deadline, {})


if __name__ == "__main__":
    main()
