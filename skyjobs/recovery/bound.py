"""The omniscient lower bound on a replayed job's cost.

Model (what an all-knowing scheduler may do, at the trace's resolution): in each trace step
it runs on on-demand, on spot in a zone that has capacity for all nodes, or idles. Every
start of an instance (also a switch between zones or to/from on-demand) loses ``restart_s``
of progress while paying; it leaves a zone before the capacity drops, so it never loses work
to a preemption and never wastes time on a failed launch. It must reach ``job`` seconds of
progress within the deadline.

That is a shortest path with a side constraint (progress >= job). We relax the constraint
with a Lagrange multiplier ``mu`` ($ per second of progress): for any mu,
``mu * job + min over schedules of (cost - mu * progress)`` is at most the optimum (weak
duality), and a dynamic program over (step, mode) computes the inner minimum exactly. We
bisect mu on the progress of the minimising schedule and keep the best value found, so the
result is a true lower bound, tight up to one step of fractional work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BoundInput:
    gap_s: float
    steps: int  # steps before the deadline
    job_s: float
    restart_s: float
    ondemand_cost_per_step: float
    spot_cost_per_step: Sequence[Sequence[float | None]]  # [zone][step], None = no capacity


def _inner(inp: BoundInput, mu: float) -> tuple[float, float]:
    """min over schedules of (cost - mu * progress), and that schedule's progress."""
    modes = [[inp.ondemand_cost_per_step] * inp.steps, *inp.spot_cost_per_step]
    vals = [0.0] + [math.inf] * len(modes)  # index 0 is idle
    prog = [0.0] * len(vals)
    gain = mu * inp.gap_s
    for i in range(inp.steps):
        best = min(range(len(vals)), key=vals.__getitem__)
        launch_v, launch_p = vals[best] + mu * inp.restart_s, prog[best] - inp.restart_s
        new_vals, new_prog = [vals[best]], [prog[best]]
        for m, costs in enumerate(modes, start=1):
            c = costs[i]
            if c is None:
                new_vals.append(math.inf)
                new_prog.append(0.0)
            elif vals[m] <= launch_v:
                new_vals.append(vals[m] + c - gain)
                new_prog.append(prog[m] + inp.gap_s)
            else:
                new_vals.append(launch_v + c - gain)
                new_prog.append(launch_p + inp.gap_s)
        vals, prog = new_vals, new_prog
    best = min(range(len(vals)), key=vals.__getitem__)
    return vals[best], prog[best]


def lower_bound(inp: BoundInput, iterations: int = 24) -> float | None:
    """The bound in dollars, or None when even on-demand cannot make the deadline."""
    if inp.steps * inp.gap_s < inp.job_s + inp.restart_s:
        return None
    # Above this price of progress, running on-demand every step is the minimiser.
    hi = 4 * inp.ondemand_cost_per_step / max(inp.gap_s - inp.restart_s, inp.gap_s / 4) + 1e-9
    lo = 0.0
    best = 0.0
    for _ in range(iterations):
        mu = (lo + hi) / 2
        value, progress = _inner(inp, mu)
        best = max(best, value + mu * inp.job_s)
        if progress >= inp.job_s:
            hi = mu
        else:
            lo = mu
    value, _ = _inner(inp, hi)
    return max(best, value + hi * inp.job_s)
