"""``skyjobs catalog``: the offerings catalog, and refreshing its list prices.

``skyjobs catalog refresh --cloud gcp`` re-reads GCP's list prices (on-demand and Spot) from
the Cloud Billing Catalog API and writes them to ``<state_dir>/catalog/gcp.csv``, an overlay
of the packaged catalog (docs/gcp_prices.md). GCP changes Spot prices at most monthly, so
an operator runs this now and then (a monthly timer is plenty) instead of a poller.

Registered by ``skyjobs.cli``; it reads the state directory from the root command's context
object (``--state-dir`` before or after the subcommand, ``SKYJOBS_STATE_DIR``), never by
importing ``skyjobs.cli`` (which imports this module).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from skyjobs.config import default_state_dir
from skyjobs.exceptions import SkyjobsError

if TYPE_CHECKING:
    from skyjobs.providers.gcp.billing import Repriced

TOP_CHANGES = 5


@click.group()
def catalog() -> None:
    """The offerings catalog: refresh list prices from a cloud's price list."""


@catalog.command()
@click.option("--cloud", type=click.Choice(["gcp"]), required=True,
              help="The cloud whose list prices to refresh.")
@click.pass_context
def refresh(ctx: click.Context, cloud: str) -> None:
    """Re-read list prices (on-demand and Spot) into STATE_DIR/catalog/CLOUD.csv.

    The packaged catalog is never edited; rows that cannot be priced keep their packaged
    prices and are listed. Credentials: Application Default Credentials (never printed).
    A running controller uses the new prices after its next restart.
    """
    from skyjobs.pricing.catalog import load_cloud, overlay_path, write_overlay
    from skyjobs.providers.gcp import billing

    state_dir = _state_dir(ctx)
    now = datetime.now(UTC)
    skus = billing.fetch_skus()
    result = billing.reprice(load_cloud(cloud), skus, now)
    total = len(result.priced) + len(result.kept)
    if not result.priced:
        # Never replace a good overlay with an empty one: no priced row means the SKUs did
        # not look as expected, which a human must see.
        raise SkyjobsError(f"{cloud}: none of the {total} catalog rows could be priced from "
                           f"{result.skus_used} usable of {result.skus_read} SKUs read; "
                           f"{overlay_path(state_dir, cloud)} left unchanged")
    path = write_overlay(state_dir, cloud, result.offerings())
    click.echo(f"{cloud}: priced {len(result.priced)} of {total} rows from {billing.SOURCE} "
               f"({result.skus_used} of {result.skus_read} VM-part SKUs usable) at "
               f"{result.at.isoformat(timespec='seconds')}")
    for line in _kept_lines(result):
        click.echo(line)
    for line in _change_lines(result):
        click.echo(line)
    click.echo(f"wrote {path} (a running controller uses it after its next restart)")


def _state_dir(ctx: click.Context) -> Path:
    obj = ctx.find_root().obj
    state_dir = getattr(obj, "state_dir", None)
    return state_dir if isinstance(state_dir, Path) else default_state_dir().resolve()


def _kept_lines(result: Repriced) -> list[str]:
    """Kept rows, one line per (region, instance type, reason): the zones of a region share
    their prices, and so their reasons."""
    if not result.kept:
        return []
    groups: dict[tuple[str, str, str], list[str]] = {}
    for o, why in result.kept:
        groups.setdefault((o.region, o.instance_type, why), []).append(o.zone)
    out = [f"kept {len(result.kept)} rows at their packaged prices:"]
    for (region, itype, why), zones in sorted(groups.items()):
        out.append(f"  {region} {itype} ({len(zones)} zone{'s' * (len(zones) > 1)}): {why}")
    return out


def _change_lines(result: Repriced) -> list[str]:
    """The biggest relative changes against the packaged prices, one line per region and
    instance type (its zones share their prices)."""
    by_type: dict[tuple[str, str], tuple[float, str]] = {}
    for old, new in result.priced:
        key = (old.region, old.instance_type)
        if key in by_type:
            continue
        parts, worst = [], 0.0
        for kind, a, b in (("on-demand", old.ondemand_price, new.ondemand_price),
                           ("spot", old.spot_price, new.spot_price)):
            if a is None or b is None:
                continue
            rel = (b - a) / a if a else 0.0
            worst = max(worst, abs(rel))
            parts.append(f"{kind} ${a:.4f} -> ${b:.4f} ({rel:+.1%})" if abs(rel) >= 5e-4
                         else f"{kind} ${b:.4f} (unchanged)")
        by_type[key] = (worst, f"  {old.region} {old.instance_type}: {', '.join(parts)}")
    changed = sorted((c for c in by_type.values() if c[0] > 0), key=lambda c: -c[0])
    if not changed:
        return ["no price changed against the packaged catalog"]
    return [f"biggest changes against the packaged catalog ({len(changed)} types changed):",
            *(line for _, line in changed[:TOP_CHANGES])]
