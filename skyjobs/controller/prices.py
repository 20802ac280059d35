"""Which offerings the price poller should refresh: only those live jobs can use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from skyjobs.controller.store import LIVE
from skyjobs.pricing.catalog import Offering
from skyjobs.recovery.placement import match
from skyjobs.spec import TaskSpec

if TYPE_CHECKING:
    from skyjobs.controller.daemon import Controller


async def offerings_in_use(ctl: Controller) -> dict[str, set[Offering]]:
    """Spot offerings any live job could be placed on, by cloud."""
    store = ctl.store
    out: dict[str, set[Offering]] = {}
    jobs = await store.call(store.sync.list_jobs, sorted(LIVE), 1_000_000, 0)
    for job in jobs:
        spec = TaskSpec.model_validate(job.task["spec"])
        for cand in match(spec, ctl.catalog, with_on_demand_twins=True):
            if cand.placement.use_spot or cand.placement.offering.spot_price is not None:
                out.setdefault(cand.placement.cloud, set()).add(cand.placement.offering)
    return out
