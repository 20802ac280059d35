"""Metrics: what a scrape shows, and the provider wrapper's timing and outcome counting."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from skyjobs.controller.metrics import InstrumentedProvider, Metrics
from skyjobs.exceptions import CapacityError, ProviderError
from skyjobs.pricing.catalog import Catalog, Placement
from skyjobs.providers import base
from skyjobs.providers.base import LaunchRequest
from skyjobs.providers.fake import FakeProvider

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(m: Metrics, counts: dict[str, int] | None = None, backlog: int = 0,
           cost: float = 0.0, savings: float = 0.0) -> Samples:
    body, content_type = m.render(counts or {}, backlog, cost, savings)
    assert content_type.startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_store_backed_gauges_are_set_at_scrape_time() -> None:
    m = Metrics()
    got = scrape(m, {"RUNNING": 3, "PENDING": 1}, backlog=7, cost=12.5, savings=30.25)
    assert got[("skyjobs_jobs", (("state", "RUNNING"),))] == 3
    assert got[("skyjobs_jobs", (("state", "PENDING"),))] == 1
    assert got[("skyjobs_jobs", (("state", "SUCCEEDED"),))] == 0
    assert got[("skyjobs_webhook_backlog", ())] == 7
    assert got[("skyjobs_cost_dollars_total", ())] == 12.5
    assert got[("skyjobs_savings_dollars_total", ())] == 30.25
    # A state that empties reads 0 at the next scrape, not its stale value.
    got = scrape(m, {"PENDING": 1})
    assert got[("skyjobs_jobs", (("state", "RUNNING"),))] == 0


def test_counters_and_histograms() -> None:
    m = Metrics(hooks=["ops", "slack"])
    got = scrape(m)
    assert got[("skyjobs_webhook_deliveries_total", (("hook", "ops"),))] == 0
    assert got[("skyjobs_webhook_failures_total", (("hook", "slack"),))] == 0
    m.recovery("preempted")
    m.recovery("preempted")
    m.recovery("lost")
    m.notice_latency(0.2)
    m.notice_latency(3.0)
    m.webhook_delivered("ops")
    m.webhook_failed("slack")
    m.webhook_failed("slack")
    got = scrape(m)
    assert got[("skyjobs_recoveries_total", (("cause", "preempted"),))] == 2
    assert got[("skyjobs_recoveries_total", (("cause", "lost"),))] == 1
    assert got[("skyjobs_notice_to_recovering_seconds_count", ())] == 2
    assert got[("skyjobs_notice_to_recovering_seconds_bucket", (("le", "0.25"),))] == 1
    assert got[("skyjobs_notice_to_recovering_seconds_bucket", (("le", "5.0"),))] == 2
    assert got[("skyjobs_webhook_deliveries_total", (("hook", "ops"),))] == 1
    assert got[("skyjobs_webhook_failures_total", (("hook", "slack"),))] == 2


def test_registry_is_private() -> None:
    a, b = Metrics(), Metrics()
    a.recovery("preempted")
    assert scrape(a)[("skyjobs_recoveries_total", (("cause", "preempted"),))] == 1
    assert scrape(b)[("skyjobs_recoveries_total", (("cause", "preempted"),))] == 0
    assert REGISTRY.get_sample_value("skyjobs_recoveries_total", {"cause": "preempted"}) is None


def request(ids: list[str], zone: str = "local-a") -> LaunchRequest:
    offering = next(o for o in Catalog.for_clouds(["local"]).offerings if o.zone == zone)
    placement = Placement(offering, False, offering.ondemand_price)
    return LaunchRequest(job_id=1, attempt_id=1, placement=placement, instance_ids=ids,
                         agent_env=[{} for _ in ids])


async def test_instrumented_provider_counts_outcomes() -> None:
    m = Metrics()
    fake = FakeProvider()
    p = InstrumentedProvider(fake, m)
    assert p.name == "local"
    await p.launch(request(["i-1"]))
    assert (await p.status(["i-1"]))["i-1"].state == base.RUNNING
    fake.no_capacity = {"local-a"}
    with pytest.raises(CapacityError):
        await p.launch(request(["i-2"]))
    fake.no_capacity = set()
    fake.transient_failures = 1
    with pytest.raises(ProviderError):
        await p.launch(request(["i-3"]))
    await p.terminate(["i-1"])
    await p.close()
    got = scrape(m)

    def calls(op: str, outcome: str) -> float:
        key = (("cloud", "local"), ("op", op), ("outcome", outcome))
        return got.get(("skyjobs_provider_api_calls_total", key), 0)

    assert (calls("launch", "ok"), calls("launch", "capacity"), calls("launch", "error")) == (
        1, 1, 1)
    assert calls("status", "ok") == 1 and calls("terminate", "ok") == 1
    count = got[("skyjobs_provider_api_seconds_count", (("cloud", "local"), ("op", "launch")))]
    assert count == 3
    assert [c[0] for c in fake.calls] == ["launch", "status", "launch", "launch", "terminate"]


def test_instrumented_provider_passes_attributes_through() -> None:
    fake = FakeProvider()
    p = InstrumentedProvider(fake, Metrics())
    p.no_capacity = {"local-b"}  # written to the fake
    assert fake.no_capacity == {"local-b"}
    assert p.alive() == []
    assert p.inner is fake
    assert not hasattr(p, "set_spot_capacity")  # the API probes for this extra
