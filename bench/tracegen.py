"""Seeded synthetic spot-capacity traces for the regimes the real sets lack.

Every generator is deterministic in its seed and returns ``(TraceSet, spot_prices)``, the
second being a ``SimConfig.spot_prices`` table (empty when the trace carries its own
per-sample prices). The regimes (docs/policy.md, "Benchmark"):

* ``flicker``: 4 zones in 2 regions at 30 s samples; many times a day capacity drops in
  every zone at once for a few minutes (a common shock), on top of rarer independent
  outages per zone. Equal prices.
* ``outage``: 4 zones in 2 regions at 300 s; the cheapest zone has long outages (half a day
  to two days), the others are ordinary up/down chains. Regional prices.
* ``priced``: 3 zones of one region at 300 s whose trace carries its own spot price per
  sample: a different base per zone, a slow random walk and occasional spikes; capacity
  drops are short and mostly independent. (A memory-optimised CPU instance: cheap spot,
  on-demand about 3x.)
* ``multinode``: 3 zones in 2 regions at 300 s, capacity counted in nodes (0-16): a
  birth-death process around a zone-specific mean, so an 8-node job fits more often than a
  16-node job.

Nothing here is fitted to a real trace; the ranges are broad on purpose and each regime is
run with several seeds.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skyjobs.recovery.sim.traces import TraceSet, ZoneTrace, region_of  # noqa: E402

Generated = tuple[TraceSet, dict[str, float]]


def _markov(rng: random.Random, n: int, gap_s: float, up_h: float, down_h: float) -> list[int]:
    """An up/down chain with exponential sojourns of the given means (1 = up)."""
    state = rng.random() < up_h / (up_h + down_h)
    out = []
    p_up_end, p_down_end = gap_s / 3600 / up_h, gap_s / 3600 / down_h
    for _ in range(n):
        out.append(1 if state else 0)
        if rng.random() < (p_up_end if state else p_down_end):
            state = not state
    return out


def _zone(name: str, gap_s: float, data: list[int], gpu: str = "v100",
          prices: list[float] | None = None) -> ZoneTrace:
    return ZoneTrace(name, region_of(name), gpu, gap_s, tuple(data),
                     tuple(prices) if prices is not None else None)


def flicker(seed: int, days: float = 16.0) -> Generated:
    rng = random.Random(seed)
    gap = 30.0
    n = int(days * 86400 / gap)
    names = ["us-east-1a", "us-east-1b", "us-west-2a", "us-west-2b"]
    shocks_per_day = rng.uniform(6, 24)
    shock_min = rng.uniform(2, 8)  # mean minutes every zone is down in a shock
    common = [1] * n
    i = 0
    while True:
        i += max(1, int(rng.expovariate(shocks_per_day / 86400) / gap))
        if i >= n:
            break
        length = max(1, int(rng.expovariate(1 / (shock_min * 60)) / gap))
        for j in range(i, min(n, i + length)):
            common[j] = 0
    zones = []
    for name in names:
        own = _markov(rng, n, gap, rng.uniform(8, 48), rng.uniform(0.2, 2))
        # Each shock hits this zone with probability 0.9, for the whole shock.
        hit = _shock_mask(rng, common, 0.9)
        zones.append(_zone(name, gap, [a & b for a, b in zip(own, hit, strict=True)]))
    return TraceSet(f"synthetic-flicker-seed{seed}", tuple(zones)), {}


def _shock_mask(rng: random.Random, common: list[int], p_hit: float) -> list[int]:
    out, hit = [], True
    for k, v in enumerate(common):
        if v == 0 and (k == 0 or common[k - 1] == 1):
            hit = rng.random() < p_hit
        out.append(0 if v == 0 and hit else 1)
    return out


def outage(seed: int, days: float = 20.0) -> Generated:
    rng = random.Random(seed)
    gap = 300.0
    n = int(days * 86400 / gap)
    names = ["us-east-1a", "us-east-1b", "us-west-2a", "us-west-2b"]
    bad = rng.choice(names)
    zones = []
    for name in names:
        if name == bad:
            data = _markov(rng, n, gap, rng.uniform(6, 36), rng.uniform(12, 48))
        else:
            data = _markov(rng, n, gap, rng.uniform(1, 12), rng.uniform(0.2, 2))
        zones.append(_zone(name, gap, data))
    prices = {name: round(rng.uniform(0.95, 1.15), 2) for name in names}
    prices[bad] = round(min(prices.values()) - rng.uniform(0.05, 0.2), 2)
    return TraceSet(f"synthetic-outage-seed{seed}", tuple(zones)), prices


def priced(seed: int, days: float = 16.0) -> Generated:
    rng = random.Random(seed)
    gap = 300.0
    n = int(days * 86400 / gap)
    zones = []
    for name in ["us-east-1a", "us-east-1b", "us-east-1c"]:
        base = rng.uniform(0.22, 0.36)
        level, series = base, []
        spike_left = 0
        for _ in range(n):
            level += rng.gauss(0, 0.002) + 0.01 * (base - level)
            if spike_left == 0 and rng.random() < gap / 86400 / 2:  # about two a day
                spike_left = rng.randint(3, 24)
            mult = 1.6 if spike_left else 1.0
            spike_left = max(0, spike_left - 1)
            series.append(round(max(0.05, level * mult), 4))
        data = _markov(rng, n, gap, rng.uniform(2, 16), rng.uniform(0.1, 1.0))
        zones.append(ZoneTrace(name, region_of(name), "r5", gap, tuple(data), tuple(series)))
    return TraceSet(f"synthetic-priced-seed{seed}", tuple(zones)), {}


def multinode(seed: int, days: float = 20.0, size: int = 16) -> Generated:
    rng = random.Random(seed)
    gap = 300.0
    n = int(days * 86400 / gap)
    zones = []
    pool = size * 3 // 2  # the zone's free nodes; a trace reports at most ``size``
    for name in ["us-east-2a", "us-west-2a", "us-west-2c"]:
        mean = rng.uniform(0.7, 1.3) * size  # mean free nodes
        speed = rng.uniform(1.0, 6.0)  # node arrivals/departures per hour at the mean
        free = int(mean)
        data = []
        for _ in range(n):
            data.append(min(size, free))
            # Birth-death steps pull toward the mean; a rare crash empties the zone.
            up = speed * gap / 3600 * max(0.0, 1 + (mean - free) / size * 4)
            down = speed * gap / 3600 * max(0.0, 1 + (free - mean) / size * 4)
            if rng.random() < gap / 86400:
                free = 0
            elif rng.random() < up / (1 + up):
                free = min(pool, free + 1)
            elif rng.random() < down / (1 + down):
                free = max(0, free - 1)
        zones.append(_zone(name, gap, data))
    prices = {"us-east-2": 0.95, "us-west-2": 1.0}
    return TraceSet(f"synthetic-multinode{size}-seed{seed}", tuple(zones)), prices


REGIMES = {"flicker": flicker, "outage": outage, "priced": priced, "multinode": multinode}


def describe(traces: TraceSet, nodes: int) -> str:
    """Per-zone availability (for ``nodes`` nodes) and mean outage length, one line."""
    parts = []
    for z in traces.zones:
        ok = [c >= nodes for c in z.capacity]
        avail = sum(ok) / len(ok)
        downs = sum(1 for i in range(1, len(ok)) if ok[i - 1] and not ok[i])
        mean_down = (len(ok) - sum(ok)) * z.gap_s / 3600 / max(1, downs)
        parts.append(f"{z.zone} {avail:.0%} up, {downs} drops, {mean_down:.2g} h each")
    return "; ".join(parts)


if __name__ == "__main__":
    for regime, fn in REGIMES.items():
        for s in (1, 2):
            ts, pr = fn(s)
            nodes = 16 if regime == "multinode" else 1
            print(ts.name, pr or "(own prices)" if regime == "priced" else pr)
            print("   ", describe(ts, nodes))
            if regime == "multinode":
                print("    8 nodes:", describe(ts, 8))
