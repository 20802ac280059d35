"""The price poller matches each live job's task once, and polls only what live jobs use."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from skyjobs.controller import store as st
from skyjobs.controller.prices import PricePoller
from skyjobs.pricing.catalog import Catalog
from skyjobs.pricing.prices import PriceBook
from skyjobs.providers.local import LocalProvider
from skyjobs.spec import parse_task


def task(resources: dict[str, object]) -> dict[str, object]:
    return {"spec": parse_task({"resources": resources, "run": "x"}).stored(),
            "archive": None, "local_mounts": []}


async def test_each_task_is_matched_once_and_ended_jobs_drop_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_target: Path | str) -> None:
    store = st.Store(store_target)
    provider = LocalProvider(tmp_path / "cloud")
    try:
        catalog = Catalog.for_clouds(["local"])
        book = PriceBook(3600)
        poller = PricePoller(store, catalog, {"local": provider}, book)
        matched: list[int] = []
        real = poller._offerings_of

        def counting(job: st.Job) -> frozenset:  # type: ignore[type-arg]
            matched.append(job.id)
            return real(job)

        monkeypatch.setattr(poller, "_offerings_of", counting)
        cpu = await store.call(store.sync.create_job, "a", task({"cloud": "local", "cpus": 2,
                                                                  "use_spot": True}), False, "t")
        gpu = await store.call(store.sync.create_job, "b", task({"cloud": "local",
                                                                  "accelerators": "V100:1"}),
                               False, "t")
        await poller.poll()
        await poller.poll()
        assert sorted(matched) == [cpu, gpu]  # once each, not once per poll
        types = {o.instance_type for o in (await poller.offerings_in_use())["local"]}
        assert {"local.cpu2", "local.v100"} <= types
        assert any(book.quote(o, True, time.time()).status == "live"
                   for o in catalog.offerings if o.instance_type == "local.v100")
        await store.call(store.sync.transition, gpu, st.CANCELLED, "test")
        types = {o.instance_type for o in (await poller.offerings_in_use())["local"]}
        assert "local.v100" not in types and "local.cpu2" in types
        assert sorted(matched) == [cpu, gpu]
    finally:
        await provider.close()
        store.close()
