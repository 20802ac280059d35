"""Preemption memory: what past attempts say about a zone's spot market.

Pure and in-memory. The controller calls :meth:`PreemptionMemory.record` for every event it
sees and persists the same ``(key, kind, t, value)`` tuples, so after a restart
:meth:`PreemptionMemory.from_records` rebuilds exactly the same estimates.

Evidence fades exponentially: an event ``a`` seconds old weighs ``0.5 ** (a / half_life)``.
Two clocks, because the two things change at different speeds:

* capacity (``no_capacity`` vs ``launch_ok``; a preemption also says capacity just vanished)
  is a short-lived state: outages last tens of minutes to hours, so its half-life is 1 hour;
* the preemption hazard (``preemption`` events per ``run_seconds`` of exposure) is a trait of
  a zone's market that drifts over a day, so its half-life is 12 hours;
* so is a zone's long-run availability (the share of launches that find capacity, 12 hours):
  it is what the short-lived capacity estimate relaxes to once its evidence has faded. A
  zone that keeps failing therefore stays expensive after its last failure has aged, instead
  of looking like an unseen zone again an hour later.

Both estimates are Bayesian with a weak prior (Gamma-Poisson for the hazard, Beta-Bernoulli
for capacity), so an unseen zone is neither perfect nor hopeless, and zones of the same
region lend each other some evidence (their spot pools are correlated).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from skyjobs.exceptions import SkyjobsError

MemoryKey = tuple[str, str, str, str, bool]  # (cloud, region, zone, instance_type, use_spot)
RegionKey = tuple[str, str, str, bool]  # (cloud, region, instance_type, use_spot)
MemoryRecord = tuple[MemoryKey, str, float, float]  # (key, kind, t, value)

KINDS = ("preemption", "no_capacity", "launch_ok", "run_seconds")


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    hazard_half_life_s: float = 12 * 3600.0
    capacity_half_life_s: float = 3600.0
    prior_hazard_per_hour: float = 0.1  # one preemption per 10 running hours
    prior_exposure_hours: float = 2.0  # ... worth two hours of observation
    availability_half_life_s: float = 12 * 3600.0
    prior_no_capacity: float = 0.3  # long-run share of launches that find no capacity
    prior_launches: float = 2.0  # ... worth two launch attempts
    prior_attempts: float = 1.0  # the long-run share is worth one attempt to the current state
    region_weight: float = 0.25  # how much a sibling zone's evidence counts


class _Decaying:
    """A sum of values, each decaying with the half-life, kept as (value at t_ref, t_ref)."""

    __slots__ = ("value", "t_ref")

    def __init__(self) -> None:
        self.value = 0.0
        self.t_ref = -math.inf

    def add(self, v: float, t: float, half_life: float) -> None:
        if t >= self.t_ref:
            self.value = self.value * _fade(t - self.t_ref, half_life) + v
            self.t_ref = t
        else:  # late record: fade it to t_ref instead
            self.value += v * _fade(self.t_ref - t, half_life)

    def at(self, now: float, half_life: float) -> float:
        if self.value == 0.0:
            return 0.0
        return self.value * _fade(max(0.0, now - self.t_ref), half_life)


def _fade(age_s: float, half_life: float) -> float:
    if math.isinf(age_s):
        return 0.0
    return 0.5 ** (age_s / half_life)


# Which decaying channel each kind feeds, and with which half-life attribute.
_CHANNELS: dict[str, tuple[tuple[str, str], ...]] = {
    "preemption": (("preemptions", "hazard_half_life_s"), ("failures", "capacity_half_life_s")),
    "run_seconds": (("exposure_s", "hazard_half_life_s"),),
    "no_capacity": (("failures", "capacity_half_life_s"),
                    ("failures_lr", "availability_half_life_s")),
    "launch_ok": (("successes", "capacity_half_life_s"),
                  ("successes_lr", "availability_half_life_s")),
}


@dataclass(frozen=True, slots=True)
class ZoneEstimate:
    hazard_per_hour: float
    p_no_capacity: float  # now
    long_run_no_capacity: float = 0.0  # what p_no_capacity relaxes to

    def describe(self) -> str:
        return f"~{self.hazard_per_hour:.2f} preemptions/h, {self.p_no_capacity:.0%} no-capacity"


class PreemptionMemory:
    def __init__(self, config: MemoryConfig | None = None) -> None:
        self.config = config or MemoryConfig()
        self._zones: dict[MemoryKey, dict[str, _Decaying]] = {}
        self._regions: dict[RegionKey, dict[str, _Decaying]] = {}
        self._last: dict[tuple[MemoryKey, str], float] = {}
        # Records are folded into the decaying sums above and not kept: a controller that
        # runs for months must not hold every launch and preemption it ever saw.
        self.recorded = 0
        # Estimates asked again at the same time with no new record in between (a ranking
        # asks for each candidate several times): the replay simulator's hot path.
        self._cache: dict[tuple[MemoryKey, float], ZoneEstimate] = {}

    @classmethod
    def from_records(cls, records: Iterable[MemoryRecord],
                     config: MemoryConfig | None = None) -> PreemptionMemory:
        mem = cls(config)
        for key, kind, t, value in records:
            mem.record(key, kind, t, value)
        return mem

    def record(self, key: MemoryKey, kind: str, t: float, value: float = 1.0) -> None:
        """``value`` is a count (1 by default), or seconds for ``run_seconds``."""
        if kind not in _CHANNELS:
            raise SkyjobsError(f"unknown memory record kind {kind!r} (known: {', '.join(KINDS)})")
        if value < 0 or not math.isfinite(value) or not math.isfinite(t):
            raise SkyjobsError(f"memory record {kind} needs a finite value >= 0, got {value}")
        key = _norm(key)
        self._cache.clear()
        for store in (self._zones.setdefault(key, {}),
                      self._regions.setdefault(_region(key), {})):
            for channel, half_life_attr in _CHANNELS[kind]:
                store.setdefault(channel, _Decaying()).add(
                    value, t, getattr(self.config, half_life_attr))
        self._last[(key, kind)] = max(t, self._last.get((key, kind), -math.inf))
        self.recorded += 1

    def last(self, key: MemoryKey, kind: str) -> float | None:
        return self._last.get((_norm(key), kind))

    def _evidence(self, key: MemoryKey, channel: str, half_life: float, now: float) -> float:
        key = _norm(key)
        own = _get(self._zones.get(key), channel, now, half_life)
        region = _get(self._regions.get(_region(key)), channel, now, half_life)
        return own + self.config.region_weight * max(0.0, region - own)

    def hazard_per_hour(self, key: MemoryKey, now: float, running_s: float = 0.0) -> float:
        """Expected preemptions per running hour (0 for on-demand). ``running_s``: seconds an
        instance there has been running up to ``now`` without a preemption, not yet recorded
        as ``run_seconds`` (the caller records them when the stint ends); they count as
        exposure, so a zone the job has run in for hours is not judged on the prior alone."""
        if not key[4]:
            return 0.0
        c, hl = self.config, self.config.hazard_half_life_s
        events = self._evidence(key, "preemptions", hl, now)
        hours = (self._evidence(key, "exposure_s", hl, now) + max(0.0, running_s)) / 3600.0
        prior_events = c.prior_hazard_per_hour * c.prior_exposure_hours
        return (prior_events + events) / (c.prior_exposure_hours + hours)

    def long_run_no_capacity(self, key: MemoryKey, now: float) -> float:
        """The zone's long-run share of launches that find no capacity (0 for on-demand):
        ``no_capacity`` vs ``launch_ok`` with the 12 h half-life, on a Beta prior."""
        if not key[4]:
            return 0.0
        c, hl = self.config, self.config.availability_half_life_s
        fails = self._evidence(key, "failures_lr", hl, now)
        oks = self._evidence(key, "successes_lr", hl, now)
        return (c.prior_no_capacity * c.prior_launches + fails) / (c.prior_launches + fails + oks)

    def p_no_capacity(self, key: MemoryKey, now: float) -> float:
        """Probability that a launch there fails for lack of capacity now (0 for on-demand):
        the recent evidence (1 h half-life) on a prior worth ``prior_attempts`` whose mean is
        the zone's long-run share (:meth:`long_run_no_capacity`)."""
        if not key[4]:
            return 0.0
        c, hl = self.config, self.config.capacity_half_life_s
        fails = self._evidence(key, "failures", hl, now)
        oks = self._evidence(key, "successes", hl, now)
        base = self.long_run_no_capacity(key, now)
        return (base * c.prior_attempts + fails) / (c.prior_attempts + fails + oks)

    def estimate(self, key: MemoryKey, now: float) -> ZoneEstimate:
        """All three estimates at once (what :meth:`hazard_per_hour`,
        :meth:`p_no_capacity` and :meth:`long_run_no_capacity` return), memoised until the
        next record."""
        cached = self._cache.get((key, now))
        if cached is not None:
            return cached
        if len(self._cache) > 4096:
            self._cache.clear()
        if not key[4]:
            est = ZoneEstimate(0.0, 0.0, 0.0)
        else:
            c = self.config
            ev = self._evidence
            hl, cap_hl, lr_hl = (c.hazard_half_life_s, c.capacity_half_life_s,
                                 c.availability_half_life_s)
            events = ev(key, "preemptions", hl, now)
            hours = ev(key, "exposure_s", hl, now) / 3600.0
            hazard = ((c.prior_hazard_per_hour * c.prior_exposure_hours + events)
                      / (c.prior_exposure_hours + hours))
            fails_lr = ev(key, "failures_lr", lr_hl, now)
            oks_lr = ev(key, "successes_lr", lr_hl, now)
            base = ((c.prior_no_capacity * c.prior_launches + fails_lr)
                    / (c.prior_launches + fails_lr + oks_lr))
            fails = ev(key, "failures", cap_hl, now)
            oks = ev(key, "successes", cap_hl, now)
            now_q = (base * c.prior_attempts + fails) / (c.prior_attempts + fails + oks)
            est = ZoneEstimate(hazard, now_q, base)
        self._cache[(key, now)] = est
        return est


def _norm(key: MemoryKey) -> MemoryKey:
    cloud, region, zone, itype, spot = key
    return (cloud, region, zone, itype, bool(spot))


def _region(key: MemoryKey) -> RegionKey:
    return (key[0], key[1], key[3], key[4])


def _get(store: dict[str, _Decaying] | None, channel: str, now: float, half_life: float) -> float:
    if store is None or channel not in store:
        return 0.0
    return store[channel].at(now, half_life)
