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
    """min over schedules of (cost - mu * progress), and that schedule's progress.

    Mode 0 is idle, mode 1 on-demand, modes 2.. the spot zones. Written for speed (the
    bench calls it about 20 times per replayed job): flat lists, no per-step allocation
    beyond two lists, ``inf`` for a zone without capacity.
    """
    inf = math.inf
    rows = [[inp.ondemand_cost_per_step] * inp.steps,
            *([inf if c is None else c for c in row] for row in inp.spot_cost_per_step)]
    n_modes = len(rows) + 1
    vals = [0.0] + [inf] * (n_modes - 1)
    prog = [0.0] * n_modes
    gain, gap = mu * inp.gap_s, inp.gap_s
    launch_cost, restart = mu * inp.restart_s, inp.restart_s
    modes = range(1, n_modes)
    for i in range(inp.steps):
        best_v = min(vals)
        best_p = prog[vals.index(best_v)]
        launch_v, launch_p = best_v + launch_cost, best_p - restart
        new_vals, new_prog = [best_v], [best_p]
        for m in modes:
            c = rows[m - 1][i]
            if c == inf:
                new_vals.append(inf)
                new_prog.append(0.0)
            elif vals[m] <= launch_v:
                new_vals.append(vals[m] + c - gain)
                new_prog.append(prog[m] + gap)
            else:
                new_vals.append(launch_v + c - gain)
                new_prog.append(launch_p + gap)
        vals, prog = new_vals, new_prog
    best_v = min(vals)
    return best_v, prog[vals.index(best_v)]


def lower_bound(inp: BoundInput, iterations: int = 24, rel_tol: float = 1e-3) -> float | None:
    """The bound in dollars, or None when even on-demand cannot make the deadline."""
    return lower_bound_hinted(inp, None, iterations, rel_tol)[0]


def lower_bound_hinted(inp: BoundInput, mu_hint: float | None, iterations: int = 24,
                       rel_tol: float = 1e-3) -> tuple[float | None, float | None]:
    """:func:`lower_bound` and the multiplier it ended at. ``mu_hint`` (the multiplier of a
    similar job, e.g. the previous submit time) narrows the bisection when it brackets.

    Bisection stops early once the best lower bound found is provably within ``rel_tol`` of
    the best the relaxation can give (or of a feasible schedule's cost). The value returned
    is always a valid lower bound; stopping early only leaves it up to ``rel_tol`` lower.
    Every multiplier tried gives a valid lower bound, so the hint changes only the speed."""
    if inp.steps * inp.gap_s < inp.job_s + inp.restart_s:
        return None, None
    # Above this price of progress, running on-demand every step is the minimiser.
    hi = 4 * inp.ondemand_cost_per_step / max(inp.gap_s - inp.restart_s, inp.gap_s / 4) + 1e-9
    lo = 0.0
    best = 0.0
    feasible = math.inf  # cost of the cheapest schedule seen that does the whole job

    def close() -> bool:
        # The dual is concave with slope (job - progress), at most job_s in size, and its
        # maximum lies in [lo, hi]: it exceeds ``best`` by at most (hi - lo) x job_s. A
        # feasible schedule's cost is an upper bound on the optimum.
        return (hi - lo) * inp.job_s <= rel_tol * best or (
            feasible < math.inf and feasible - best <= rel_tol * feasible)

    def probe(mu: float) -> bool:
        nonlocal best, feasible
        value, progress = _inner(inp, mu)
        best = max(best, value + mu * inp.job_s)
        if progress >= inp.job_s:
            feasible = min(feasible, value + mu * progress)
            return True
        return False

    if mu_hint is not None and lo < mu_hint < hi:
        for lo_try, hi_try in ((mu_hint * 0.97, mu_hint * 1.03), (mu_hint / 1.5, mu_hint * 1.5)):
            lo_try, hi_try = max(lo, lo_try), min(hi, hi_try)
            if probe(hi_try):
                hi = hi_try
                if not probe(lo_try):
                    lo = lo_try
                    break
                hi = lo_try
            else:
                lo = hi_try
                break
            if close():
                return best, hi
    for _ in range(iterations):
        if close():
            return best, hi
        mu = (lo + hi) / 2
        if probe(mu):
            hi = mu
        else:
            lo = mu
    value, _ = _inner(inp, hi)
    return max(best, value + hi * inp.job_s), hi
