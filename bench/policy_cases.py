"""The cases the policy is judged on: real trace sets and seeded synthetic regimes.

Shared by ``bench/policy_replay.py`` and ``bench/policy_diagnose.py``. Each case is a trace
set, a job size (hours, nodes), a price table and a submit spacing; the deadline is given
as a factor of the job (1.08 = job + 8% ... 1.5 = job + 50%).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tracegen  # noqa: E402

from skyjobs.recovery.sim.simulator import SimConfig  # noqa: E402
from skyjobs.recovery.sim.traces import TraceSet, load_traces, synthetic_markov  # noqa: E402

TRACES_ROOT = Path("/work/shared/traces")
# Spot differing by region (illustrative, within the paper period's $0.92-0.97 range and a
# pricier us-west-2), to check that placement follows prices as well as capacity.
REGIONAL = {"us-east-1": 0.92, "us-east-2": 0.95, "us-west-2": 1.10}
FACTORS = (1.08, 1.25, 1.5)


@dataclass(frozen=True)
class Case:
    name: str
    load: Callable[[], tuple[TraceSet, dict[str, float]]]
    job_hours: float = 48.0
    nodes: int | None = None
    ondemand_price: float = 3.06
    every_hours: float = 6.0
    real: bool = False


def _real(folder: str, prices: dict[str, float] | None = None) -> Callable[[], tuple[
        TraceSet, dict[str, float]]]:
    return lambda: (load_traces(TRACES_ROOT / folder), dict(prices or {}))


CASES: list[Case] = [
    Case("9zone-equal", _real("aws-p3-9zones-2023-02"), real=True),
    Case("9zone-regional", _real("aws-p3-9zones-2023-02", REGIONAL), real=True),
    Case("4node", _real("aws-p3-4node-preemption-2023-08"), nodes=4, real=True),
    Case("16node", _real("aws-p3-16node-2023-08"), nodes=16, real=True),
    *(Case(f"markov-s{s}", lambda s=s: synthetic_markov(s), every_hours=12)
      for s in (1, 2, 3, 4)),
    *(Case(f"flicker-s{s}", lambda s=s: tracegen.flicker(s), every_hours=12) for s in (1, 2)),
    *(Case(f"outage-s{s}", lambda s=s: tracegen.outage(s), every_hours=12) for s in (1, 2)),
    # A memory-optimised CPU instance: the trace's own spot prices ($0.2-0.6/h), on-demand $1.
    *(Case(f"priced-s{s}", lambda s=s: tracegen.priced(s), job_hours=24, ondemand_price=1.0,
           every_hours=8) for s in (1, 2)),
    *(Case(f"multinode-s{s}-{n}n", lambda s=s: tracegen.multinode(s), nodes=n, every_hours=12)
      for s in (1, 2) for n in (16, 8)),
]


@cache
def _load(name: str) -> tuple[TraceSet, dict[str, float]]:
    return next(c for c in CASES if c.name == name).load()


def case_config(case: Case, factor: float, shift_hours: float = 0.0,
                move_running_spot: bool = True) -> tuple[TraceSet, SimConfig]:
    """The case at deadline ``job x factor``; ``shift_hours`` moves every submit time later
    (another sample of starts from the same traces, to tell a systematic difference from
    the luck of where the starts fall); ``move_running_spot`` lets the default move a running
    spot job to a cheaper zone, as the controller does (False: as it did before)."""
    traces, prices = _load(case.name)
    cfg = SimConfig(job_hours=case.job_hours, deadline_hours=round(case.job_hours * factor, 2),
                    restart_s=180, spot_price=0.97, ondemand_price=case.ondemand_price,
                    spot_prices=prices, nodes=case.nodes, start_every_hours=case.every_hours,
                    first_start_hours=shift_hours, move_running_spot=move_running_spot)
    return traces, cfg
