"""Spot-capacity traces (the NSDI'24 "Can't Be Late" format) for offline replays.

One JSON file per zone, ``<zone>_<gpu>_<count>.json``::

    {"metadata": {"gap_seconds": 195}, "data": [0, 1, 1, ...], "prices": [0.95, ...]}

``data[i]`` is how many spot instances could be had at sample ``i``; ``prices`` (optional)
is the spot $/hour per sample. Every problem is a :class:`ConfigError` naming the file.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from skyjobs.exceptions import ConfigError

_AWS_ZONE = re.compile(r"^([a-z]+-[a-z]+-\d+)[a-z]$")
_GCP_ZONE = re.compile(r"^([a-z]+-[a-z]+\d+)-[a-z]$")


def region_of(zone: str) -> str:
    """``us-east-1a`` -> ``us-east-1``, ``us-central1-b`` -> ``us-central1``; else the zone."""
    for pattern in (_AWS_ZONE, _GCP_ZONE):
        m = pattern.match(zone)
        if m:
            return m.group(1)
    return zone


@dataclass(frozen=True)
class ZoneTrace:
    zone: str
    region: str
    gpu: str
    gap_s: float
    capacity: tuple[int, ...]
    prices: tuple[float, ...] | None = None

    @property
    def span_s(self) -> float:
        return len(self.capacity) * self.gap_s

    def index(self, t: float) -> int:
        return int(t // self.gap_s)

    def capacity_at(self, t: float) -> int:
        """Capacity at trace time ``t``; none before the start or after the end."""
        i = self.index(t)
        return self.capacity[i] if 0 <= i < len(self.capacity) else 0

    def price_at(self, t: float) -> float | None:
        if self.prices is None:
            return None
        i = min(max(self.index(t), 0), len(self.prices) - 1)
        return self.prices[i]


@dataclass(frozen=True)
class TraceSet:
    name: str
    zones: tuple[ZoneTrace, ...]

    @property
    def span_s(self) -> float:
        """The time every zone has data for."""
        return min(z.span_s for z in self.zones)

    @property
    def gap_s(self) -> float:
        return min(z.gap_s for z in self.zones)

    @cached_property
    def max_capacity(self) -> int:
        return max(max(z.capacity, default=0) for z in self.zones)


def parse_zone_trace(name: str, doc: object) -> ZoneTrace:
    """One zone from its file name (``<zone>_<gpu>_<count>.json``) and decoded JSON."""
    stem = name.removesuffix(".json")
    parts = stem.split("_")
    if not isinstance(doc, dict) or len(parts) < 2:
        raise ConfigError(f"{name}: not a trace file (<zone>_<gpu>_<count>.json with an object)")
    gap = (doc.get("metadata") or {}).get("gap_seconds")
    data = doc.get("data")
    if not isinstance(gap, int | float) or isinstance(gap, bool) or gap <= 0:
        raise ConfigError(f"{name}: metadata.gap_seconds must be a positive number")
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{name}: data must be a non-empty list of capacities")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in data):
        raise ConfigError(f"{name}: data must hold whole numbers >= 0")
    prices = doc.get("prices")
    if prices is not None:
        ok = isinstance(prices, list) and len(prices) == len(data) and all(
            isinstance(p, int | float) and not isinstance(p, bool) and p >= 0 for p in prices)
        if not ok:
            raise ConfigError(f"{name}: prices must be one number >= 0 per data sample")
    zone = parts[0]
    return ZoneTrace(zone=zone, region=region_of(zone), gpu=parts[1], gap_s=float(gap),
                     capacity=tuple(data),
                     prices=tuple(float(p) for p in prices) if prices is not None else None)


def load_traces(directory: str | Path) -> TraceSet:
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a directory of trace files")
    files = sorted(root.glob("*.json"))
    if not files:
        raise ConfigError(f"{root}: no *.json trace files")
    zones = []
    for f in files:
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{f}: cannot read trace: {err}") from None
        zones.append(parse_zone_trace(f.name, doc))
    if len({z.zone for z in zones}) != len(zones):
        raise ConfigError(f"{root}: two files describe the same zone")
    return TraceSet(name=root.name, zones=tuple(zones))


def synthetic_markov(seed: int, days: float = 20.0, gap_s: float = 300.0,
                     regions: tuple[str, ...] = ("us-east-1", "us-east-2", "us-west-2"),
                     zones_per_region: int = 3) -> tuple[TraceSet, dict[str, float]]:
    """A synthetic single-node trace set for checks on data no policy was tuned on: each zone
    an independent up/down Markov chain with mean up time uniform in 0.5-8 h and mean down
    time in 0.3-3 h, and a spot price per region uniform in $0.85-1.15/h (returned as the
    ``SimConfig.spot_prices`` table). Deterministic in ``seed``."""
    rng = random.Random(seed)
    n = int(days * 86400 / gap_s)
    zones = []
    for region in regions:
        for z in range(zones_per_region):
            up_h, down_h = rng.uniform(0.5, 8.0), rng.uniform(0.3, 3.0)
            state = rng.random() < up_h / (up_h + down_h)
            data = []
            for _ in range(n):
                data.append(1 if state else 0)
                if rng.random() < gap_s / 3600 / (up_h if state else down_h):
                    state = not state
            name = f"{region}{chr(ord('a') + z)}"
            zones.append(ZoneTrace(name, region, "v100", gap_s, tuple(data)))
    prices = {r: round(rng.uniform(0.85, 1.15), 2) for r in regions}
    return TraceSet(f"synthetic-markov-seed{seed}", tuple(zones)), prices
