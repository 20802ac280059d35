"""The price poller: live spot prices of the offerings that live jobs can use."""

from __future__ import annotations

import structlog

from skyjobs.controller import store as st
from skyjobs.exceptions import ProviderError
from skyjobs.pricing.catalog import Catalog, Offering
from skyjobs.pricing.prices import PriceBook
from skyjobs.providers.base import PriceSource, Provider, ability
from skyjobs.recovery.placement import match
from skyjobs.spec import TaskSpec
from skyjobs.states import LIVE

log = structlog.get_logger("skyjobs.prices")


class PricePoller:
    def __init__(self, store: st.Store, catalog: Catalog, providers: dict[str, Provider],
                 price_book: PriceBook) -> None:
        self.store = store
        self.catalog = catalog
        self.providers = providers
        self.price_book = price_book

    async def offerings_in_use(self) -> dict[str, set[Offering]]:
        """Spot offerings any live job could be placed on, by cloud."""
        out: dict[str, set[Offering]] = {}
        jobs = await self.store.call(self.store.sync.list_jobs, sorted(LIVE), 1_000_000, 0)
        for job in jobs:
            spec = TaskSpec.model_validate(job.task_entry()["spec"])
            for cand in match(spec, self.catalog, with_on_demand_twins=True):
                if cand.placement.use_spot or cand.placement.offering.spot_price is not None:
                    out.setdefault(cand.placement.cloud, set()).add(cand.placement.offering)
        return out

    async def poll(self) -> None:
        """Refresh spot prices of the offerings live jobs can use, per provider."""
        wanted = await self.offerings_in_use()
        rows: list[tuple[str, str, str, str, float, float]] = []
        for cloud, offerings in wanted.items():
            source = ability(self.providers.get(cloud), PriceSource)
            if source is None or not offerings:
                continue
            keys = sorted({(o.region, o.zone, o.instance_type) for o in offerings})
            try:
                for region, zone, itype, price, at in await source.spot_prices(keys):
                    self.price_book.observe((cloud, region, zone, itype), price, at)
                    rows.append((cloud, region, zone, itype, price, at))
            except ProviderError as err:
                log.warning("price poll failed", cloud=cloud, error=str(err))
        if rows:
            await self.store.call(self.store.sync.save_prices, rows)
