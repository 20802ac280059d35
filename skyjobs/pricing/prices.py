"""Live spot prices over the catalog's list prices.

Pure and in-memory: the controller's price poller calls :meth:`PriceBook.observe`; placement
asks :meth:`PriceBook.quote`. A live price is trusted only while it is fresh, because spot
prices move and a price read a day ago is no better a guess than the dated list price.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from skyjobs.exceptions import ConfigError
from skyjobs.pricing.catalog import Offering

PriceKey = tuple[str, str, str, str]  # (cloud, region, zone, instance_type)
PriceStatus = Literal["live", "stale", "list"]
DEFAULT_MAX_AGE_S = 3600.0


def price_key(o: Offering) -> PriceKey:
    return (o.cloud, o.region, o.zone, o.instance_type)


@dataclass(frozen=True, slots=True)
class Observation:
    price: float
    observed_at: float


@dataclass(frozen=True, slots=True)
class Quote:
    """The price to use and where it came from (``skyjobs plan`` shows ``status``)."""

    price: float | None
    status: PriceStatus
    observed_at: float | None = None

    def label(self) -> str:
        if self.price is None:
            return "no price"
        return f"${self.price:.3f}/h ({self.status})"


class PriceBook:
    """The latest spot observation per (cloud, region, zone, instance_type)."""

    def __init__(self, max_age_s: float = DEFAULT_MAX_AGE_S) -> None:
        if max_age_s <= 0:
            raise ConfigError(f"price max age must be positive, got {max_age_s}")
        self.max_age_s = max_age_s
        self._live: dict[PriceKey, Observation] = {}

    def observe(self, key: PriceKey, price: float, t: float) -> None:
        """Record a spot price read at time ``t``; an older reading never replaces a newer."""
        if price < 0:
            raise ConfigError(f"negative spot price {price} for {'/'.join(key)}")
        old = self._live.get(key)
        if old is None or t >= old.observed_at:
            self._live[key] = Observation(price, t)

    def latest(self, key: PriceKey) -> Observation | None:
        return self._live.get(key)

    def quote(self, offering: Offering, use_spot: bool, now: float) -> Quote:
        listed = offering.price(use_spot)
        if not use_spot:
            # On-demand prices change a few times a year: the dated catalog is the truth.
            return Quote(listed, "list")
        obs = self._live.get(price_key(offering))
        if obs is None:
            return Quote(listed, "list")
        if now - obs.observed_at <= self.max_age_s:
            return Quote(obs.price, "live", obs.observed_at)
        # Too old to trust; fall back to the list price, or to the old reading if there is none.
        return Quote(listed if listed is not None else obs.price, "stale", obs.observed_at)

    def price(self, offering: Offering, use_spot: bool, now: float) -> float | None:
        return self.quote(offering, use_spot, now).price
