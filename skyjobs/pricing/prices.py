"""Live spot prices over the catalog's list prices.

Pure and in-memory: the controller's price poller calls :meth:`PriceBook.observe`; placement
asks :meth:`PriceBook.quote`. A live price is trusted only while it is fresh, because spot
prices move and a price read a day ago is no better a guess than the dated list price.

Some clouds set spot prices per region and change them at most monthly (GCP): nothing polls
them; an operator refreshes the list (``skyjobs catalog refresh``) and the catalog marks those
rows ``refreshed_at``. Such a price is a list price with a known refresh time, quoted as
``list`` with ``refreshed_at``, never as live or stale, and no observation replaces it: a
polled price of another market under the same key must not mix with the price list.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
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
    # A list price re-read from the cloud's price list at this time (epoch seconds); only
    # with status "list". observed_at stays the time of a live reading, and only that.
    refreshed_at: float | None = None

    def status_text(self) -> str:
        """``live``, ``stale``, ``list``, or ``list, refreshed 2026-07-01`` (UTC date)."""
        if self.refreshed_at is None:
            return self.status
        day = datetime.fromtimestamp(self.refreshed_at, UTC).date().isoformat()
        return f"{self.status}, refreshed {day}"

    def label(self) -> str:
        if self.price is None:
            return "no price"
        return f"${self.price:.3f}/h ({self.status_text()})"


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
        if offering.refreshed_at is not None:
            # A refreshed price list is the truth for both markets until the next refresh;
            # its age is shown, never judged against max_age_s (it is not a poll).
            return Quote(listed, "list", refreshed_at=offering.refreshed_at)
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
