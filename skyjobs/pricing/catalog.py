"""The catalog of offerings: what can be launched where, and its list prices.

Data files live in ``skyjobs/pricing/data/<cloud>.csv``; every row carries the date and the
public source of its prices. Live spot prices (when a poller has them) override ``spot_price``
through :class:`PriceBook`, never by editing the catalog.

A state directory may hold an overlay per cloud, ``<state_dir>/catalog/<cloud>.csv`` (written
by ``skyjobs catalog refresh``): list prices re-read from the cloud's price list. The packaged
file still decides which offerings exist; an overlay row only replaces the prices, date and
source of the packaged row of the same zone and instance type, and marks it
``refreshed_at``. Callers that pass no state directory get the packaged catalog, as before.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from skyjobs.exceptions import ConfigError
from skyjobs.fsutil import atomic_write, private_dir

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
    # Set only on rows from a state-dir overlay: when their list prices were re-read from the
    # cloud's price list (epoch seconds). They stay list prices, never live observations.
    refreshed_at: float | None = None

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


# --- state-dir overlays: refreshed list prices ----------------------------------------------

OVERLAY_DIR = "catalog"
# The source column of a refreshed row ends with this and an ISO 8601 time; it is how the
# refresh time travels in a file with the packaged columns (no extra column to break readers).
REFRESHED_MARK = "refreshed "
_REFRESHED_RE = re.compile(r"refreshed (\S+)\s*$")


def overlay_path(state_dir: Path, cloud: str) -> Path:
    return state_dir / OVERLAY_DIR / f"{cloud}.csv"


def refreshed_source(what: str, at: datetime) -> str:
    """The ``source`` of a refreshed row: ``"<what>, refreshed <ISO time>"``."""
    return f"{what}, {REFRESHED_MARK}{at.astimezone(UTC).isoformat(timespec='seconds')}"


def _refreshed_at(row: Offering) -> float:
    """When an overlay row was refreshed: the time its source names, else its price date."""
    m = _REFRESHED_RE.search(row.source)
    for text in ((m.group(1),) if m else ()) + (row.price_date,):
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            continue
        return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
    raise ValueError(f"neither its source nor its price_date {row.price_date!r} is a time")


def load_overlay(cloud: str, state_dir: Path) -> tuple[Offering, ...]:
    """The rows of the state dir's overlay of one cloud (empty when there is none), each
    with ``refreshed_at`` set. A file that is not a valid catalog is a
    :class:`ConfigError` naming it: prices silently falling back would go unnoticed."""
    path = overlay_path(state_dir, cloud)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the price overlay {path}: {err}") from None
    out = []
    try:
        for n, row in enumerate(parse_catalog_csv(io.StringIO(text)), start=2):
            if row.cloud != cloud:
                raise ValueError(f"line {n}: cloud {row.cloud!r} in the {cloud} overlay")
            # Both prices, always: an overlay row replaces both, and a missing spot price
            # would silently take the offering off the spot market.
            if row.spot_price is None or not all(
                    math.isfinite(p) and p >= 0 for p in (row.ondemand_price, row.spot_price)):
                raise ValueError(f"line {n}: needs finite, non-negative on-demand and spot "
                                 "prices")
            out.append(replace(row, refreshed_at=_refreshed_at(row)))
    except (AttributeError, KeyError, TypeError, ValueError) as err:  # short rows give None
        raise ConfigError(f"the price overlay {path} is not a valid catalog ({err}); run "
                          f"`skyjobs catalog refresh --cloud {cloud}` again or delete it"
                          ) from None
    return tuple(out)


def apply_overlay(base: Iterable[Offering], overlay: Iterable[Offering]) -> tuple[Offering, ...]:
    """``base`` with the prices of ``overlay`` rows of the same (zone, instance type).

    Overlay rows the packaged catalog does not list are ignored: a refresh made before an
    upgrade must not bring back an offering the new package dropped."""
    by_key = {(o.zone, o.instance_type): o for o in overlay}
    out = []
    for o in base:
        new = by_key.get((o.zone, o.instance_type))
        out.append(o if new is None else replace(
            o, ondemand_price=new.ondemand_price, spot_price=new.spot_price,
            price_date=new.price_date, source=new.source, refreshed_at=new.refreshed_at))
    return tuple(out)


def load_offerings(cloud: str, state_dir: Path | None = None) -> tuple[Offering, ...]:
    """The packaged offerings of one cloud, with the state dir's overlay applied when given.

    Not cached (unlike :func:`load_cloud`): a refresh replaces the overlay while processes
    that read it keep running."""
    base = load_cloud(cloud)
    if state_dir is None or not base:
        return base
    return apply_overlay(base, load_overlay(cloud, state_dir))


def write_overlay(state_dir: Path, cloud: str, offerings: Iterable[Offering]) -> Path:
    """Replace the overlay of one cloud atomically: readers see the old file or the new."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for o in offerings:
        writer.writerow({
            "cloud": o.cloud, "region": o.region, "zone": o.zone,
            "instance_type": o.instance_type, "accelerator": o.accelerator or "",
            "accelerator_count": o.accelerator_count, "vcpus": _num_text(o.vcpus),
            "memory_gb": _num_text(o.memory_gb), "ondemand_price": _price_text(o.ondemand_price),
            "spot_price": "" if o.spot_price is None else _price_text(o.spot_price),
            "price_date": o.price_date, "source": o.source})
    path = overlay_path(state_dir, cloud)
    private_dir(path.parent)
    atomic_write(path, buf.getvalue())
    return path


def _num_text(x: float) -> str:
    return str(int(x)) if x.is_integer() else repr(x)  # as the packaged file: 208, not 2e+02


def _price_text(price: float) -> str:
    # Six decimals: the price list gives nanodollars per unit; beyond this it is noise.
    return f"{price:.6f}".rstrip("0").rstrip(".") or "0"


class Catalog:
    """Offerings of the enabled clouds."""

    def __init__(self, offerings: Iterable[Offering]) -> None:
        self.offerings: tuple[Offering, ...] = tuple(offerings)

    @classmethod
    def for_clouds(cls, clouds: Iterable[str], state_dir: Path | None = None) -> Catalog:
        """The packaged offerings of ``clouds``; with ``state_dir``, its refreshed list
        prices (``<state_dir>/catalog/<cloud>.csv``) replace the packaged ones."""
        return cls(o for c in clouds for o in load_offerings(c, state_dir))

    def clouds(self) -> set[str]:
        return {o.cloud for o in self.offerings}

    def accelerators(self) -> set[str]:
        return {o.accelerator for o in self.offerings if o.accelerator}

    def instance_types(self) -> set[str]:
        return {o.instance_type for o in self.offerings}
