"""The catalog of offerings: what can be launched where, and its list prices.

Data files live in ``skyjobs/pricing/data/<cloud>.csv``; every row carries the date and the
public source of its prices. Live spot prices (when a poller has them) override ``spot_price``
through :class:`PriceBook`, never by editing the catalog.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

CSV_FIELDS = (
    "cloud", "region", "zone", "instance_type", "accelerator", "accelerator_count", "vcpus",
    "memory_gb", "ondemand_price", "spot_price", "price_date", "source",
)


@dataclass(frozen=True, slots=True)
class Offering:
    """One instance type in one zone, with its list prices in $/hour."""

    cloud: str
    region: str
    zone: str
    instance_type: str
    accelerator: str | None
    accelerator_count: int
    vcpus: float
    memory_gb: float
    ondemand_price: float
    spot_price: float | None
    price_date: str
    source: str

    def price(self, use_spot: bool) -> float | None:
        return self.spot_price if use_spot else self.ondemand_price


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one attempt runs: an offering, spot or on-demand, and the price used to pick it."""

    offering: Offering
    use_spot: bool
    price_per_hour: float

    @property
    def cloud(self) -> str:
        return self.offering.cloud

    @property
    def region(self) -> str:
        return self.offering.region

    @property
    def zone(self) -> str:
        return self.offering.zone

    @property
    def instance_type(self) -> str:
        return self.offering.instance_type

    def label(self) -> str:
        kind = "spot" if self.use_spot else "on-demand"
        return f"{self.cloud}/{self.zone}/{self.instance_type}/{kind}"


def _row_to_offering(row: dict[str, str]) -> Offering:
    spot = row["spot_price"].strip()
    return Offering(
        cloud=row["cloud"].strip(),
        region=row["region"].strip(),
        zone=row["zone"].strip(),
        instance_type=row["instance_type"].strip(),
        accelerator=row["accelerator"].strip() or None,
        accelerator_count=int(row["accelerator_count"] or 0),
        vcpus=float(row["vcpus"]),
        memory_gb=float(row["memory_gb"]),
        ondemand_price=float(row["ondemand_price"]),
        spot_price=float(spot) if spot else None,
        price_date=row["price_date"].strip(),
        source=row["source"].strip(),
    )


def parse_catalog_csv(lines: Iterable[str]) -> list[Offering]:
    return [_row_to_offering(row) for row in csv.DictReader(lines)]


@functools.cache
def load_cloud(cloud: str) -> tuple[Offering, ...]:
    """The shipped offerings of one cloud (empty when the package ships none)."""
    path = resources.files("skyjobs.pricing").joinpath("data", f"{cloud}.csv")
    if not path.is_file():
        return ()
    with path.open(encoding="utf-8") as fh:
        return tuple(parse_catalog_csv(fh))


def shipped_clouds() -> list[str]:
    data = resources.files("skyjobs.pricing").joinpath("data")
    return sorted(p.name[:-4] for p in data.iterdir() if p.name.endswith(".csv"))


class Catalog:
    """Offerings of the enabled clouds."""

    def __init__(self, offerings: Iterable[Offering]) -> None:
        self.offerings: tuple[Offering, ...] = tuple(offerings)

    @classmethod
    def for_clouds(cls, clouds: Iterable[str]) -> Catalog:
        return cls(o for c in clouds for o in load_cloud(c))

    def clouds(self) -> set[str]:
        return {o.cloud for o in self.offerings}

    def accelerators(self) -> set[str]:
        return {o.accelerator for o in self.offerings if o.accelerator}

    def instance_types(self) -> set[str]:
        return {o.instance_type for o in self.offerings}
