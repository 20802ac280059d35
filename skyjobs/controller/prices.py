"""The price poller: live spot prices of the offerings that live jobs can use."""

from __future__ import annotations

import asyncio

import structlog

from skyjobs.controller import store as st
from skyjobs.exceptions import ProviderError
from skyjobs.pricing.catalog import Catalog, Offering
from skyjobs.pricing.prices import PriceBook
from skyjobs.providers.base import PriceSource, Provider, ability
from skyjobs.recovery.placement import match
from skyjobs.spec import TaskSpec

log = structlog.get_logger("skyjobs.prices")


class PricePoller:
    def __init__(self, store: st.Store, catalog: Catalog, providers: dict[str, Provider],
                 price_book: PriceBook) -> None:
        self.store = store
        self.catalog = catalog
        self.providers = providers
        self.price_book = price_book
        self._per_task: dict[tuple[int, int], frozenset[Offering]] = {}

    async def offerings_in_use(self) -> dict[str, set[Offering]]:
        """Spot offerings any live job could be placed on, by cloud.

        A job's task never changes, so its offerings are matched once and cached; a poll
        costs a set union per live job, not a validation and a catalog match each (at
        10,000 jobs that was seconds of frozen event loop per poll)."""
        keys = set(await self.store.call(self.store.sync.live_task_keys))
        for gone in [k for k in self._per_task if k not in keys]:
            del self._per_task[gone]
        new = sorted({job_id for job_id, _ in keys - self._per_task.keys()})
        if new:
            # The jobs of one array share their task: matched once for all of them.
            shared: dict[tuple[int, int], frozenset[Offering]] = {}
            for job in await self.store.call(self.store.sync.jobs_by_id, new):
                key = (job.array_id or job.id, job.task_index)
                if key not in shared:
                    shared[key] = self._offerings_of(job)
                    await asyncio.sleep(0)  # a burst of new jobs must not freeze the loop
                self._per_task[(job.id, job.task_index)] = shared[key]
        out: dict[str, set[Offering]] = {}
        for offerings in self._per_task.values():
            for o in offerings:
                out.setdefault(o.cloud, set()).add(o)
        return out

    def _offerings_of(self, job: st.Job) -> frozenset[Offering]:
        spec = TaskSpec.model_validate(job.task_entry()["spec"])
        return frozenset(c.placement.offering
                         for c in match(spec, self.catalog, with_on_demand_twins=True)
                         if c.placement.use_spot or c.placement.offering.spot_price is not None)

    async def reload(self) -> None:
        """Take the prices another controller polled (several share the store; one polls)."""
        for cloud, region, zone, itype, price, at in await self.store.call(
                self.store.sync.load_prices):
            self.price_book.observe((cloud, region, zone, itype), price, at)

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
