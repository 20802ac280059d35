"""plan across every cloud (rows marked enabled), the plan-only path mode of the spec
parser, and GET /api/v1/clouds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from skyjobs.config import load_config
from skyjobs.controller import views
from skyjobs.exceptions import SpecError
from skyjobs.pricing.catalog import Catalog
from skyjobs.pricing.prices import PriceBook, price_key
from skyjobs.recovery.memory import PreemptionMemory
from skyjobs.spec import load_task_document, parse_task
from tests.unit.harness import Harness


@pytest.mark.parametrize("resources", [
    {"cloud": "aws", "accelerators": "V100:1", "use_spot": True},
    {"cpus": "2+", "ordered": [{"zone": "local-b"}, {"use_spot": False}]},
    {"cloud": "local", "job_recovery": {"strategy": "DEADLINE_AWARE", "deadline_hours": 10,
                                        "expected_runtime_hours": 5}},
])
def test_fresh_context_is_a_job_with_no_history(
        tmp_path: Path, resources: dict[str, Any]) -> None:
    """`plan` ranks with the runner's own context code, for a job with no attempts."""
    cfg = load_config(state_dir=tmp_path, restart_estimate=77, checkpoint_interval_estimate=99)
    spec = parse_task({"resources": resources, "run": "x"})
    memory, prices, now = PreemptionMemory(), PriceBook(), time.time()
    ctx = views.fresh_ranking_context(cfg, spec, memory, prices, now)
    assert (ctx.last, ctx.last_end, ctx.cooldown, ctx.progress_s) == (None, None, {}, 0.0)
    assert (ctx.restart_s, ctx.checkpoint_interval_s) == (77, 99)
    assert ctx.memory is memory and ctx.prices is prices and ctx.submitted_at == now
    rec = spec.resources.job_recovery
    assert ctx.deadline_at == (now + rec.deadline_hours * 3600 if rec.deadline_hours
                               else None)
    assert ctx.strategy == spec.resources.strategy


def test_plan_ranks_every_cloud_marks_enabled_and_picks_among_enabled(tmp_path: Path) -> None:
    cfg = load_config(state_dir=tmp_path)
    spec = parse_task({"resources": {"cpus": "2+", "use_spot": True}, "run": "x"})
    prices = PriceBook()
    catalog = views.plan_catalog(Catalog.for_clouds(["local"]))
    assert catalog.clouds() == {"aws", "gcp", "local"}
    # A live price (the controller's) wins over the list price of its row.
    cheapest_aws = min((o for o in catalog.offerings if o.cloud == "aws" and o.spot_price
                        and not o.accelerator and o.vcpus >= 2), key=lambda o: o.spot_price or 0)
    now = time.time()
    prices.observe(price_key(cheapest_aws), 0.0001, now)
    ctx = views.fresh_ranking_context(cfg, spec, PreemptionMemory(), prices, now)
    reply = views.plan_reply(spec, catalog, {"local"}, ctx, tmp_path / "buckets")
    rows = reply["candidates"]
    assert {r["cloud"] for r in rows} == {"aws", "gcp", "local"}
    assert all(r["enabled"] == (r["cloud"] == "local") for r in rows)
    top = rows[0]
    assert (top["cloud"], top["zone"], top["instance_type"]) == (
        "aws", cheapest_aws.zone, cheapest_aws.instance_type)
    assert (top["price_per_hour"], top["price_status"]) == (0.0001, "live")
    assert reply["pick"]["cloud"] == "local" and reply["enabled"] == ["local"]


def test_plan_bucket_problems_are_warnings(tmp_path: Path) -> None:
    cfg = load_config(state_dir=tmp_path)
    spec = parse_task({"resources": {"cloud": "aws", "instance_type": "m6i.large"},
                       "file_mounts": {"/a": {"source": "s3://b"},
                                       "/l": {"source": "local://ok"}}, "run": "x"})
    ctx = views.fresh_ranking_context(cfg, spec, PreemptionMemory(), PriceBook(), time.time())
    reply = views.plan_reply(spec, views.plan_catalog(Catalog.for_clouds(["local"])),
                             {"local"}, ctx, tmp_path / "buckets")
    assert reply["warnings"] == [
        "file_mounts./a: s3:// buckets need the aws provider, which is not enabled",
        "file_mounts./l: local:// buckets work only on the local provider; set "
        "resources.cloud: local"]


def test_plan_refuses_a_cloud_no_catalog_knows(tmp_path: Path) -> None:
    spec = parse_task({"resources": {"cloud": "azure"}, "run": "x"})
    ctx = views.fresh_ranking_context(load_config(state_dir=tmp_path), spec,
                                      PreemptionMemory(), PriceBook(), time.time())
    with pytest.raises(SpecError, match="'azure' is not a cloud skyjobs knows"):
        views.plan_reply(spec, views.plan_catalog(Catalog([])), set(), ctx, tmp_path)


def test_path_problems_are_noted_for_plan_and_refused_otherwise(tmp_path: Path) -> None:
    task = tmp_path / "t.yaml"
    task.write_text("workdir: ./gone\nfile_mounts: {/cfg.json: ./cfg.json}\nrun: x\n")
    problems: list[str] = []
    spec, _ = load_task_document(task, path_problems=problems)
    assert problems == [f"{task}: workdir: './gone' is not a directory",
                        f"{task}: file_mounts./cfg.json: './cfg.json' does not exist"]
    assert spec.workdir == str(tmp_path / "gone")
    with pytest.raises(SpecError, match="workdir: './gone' is not a directory"):
        load_task_document(task)


async def test_plan_endpoint_ranks_clouds_the_controller_does_not_enable(h: Harness) -> None:
    task = {"resources": {"cloud": "aws", "accelerators": "V100:1", "use_spot": True},
            "file_mounts": {"/c": {"source": "s3://b"}}, "run": "x"}
    status, reply = await h.api("POST", "/api/v1/plan", {"task": task, "source": "t.yaml"})
    assert status == 200, reply
    assert reply["enabled"] == ["local"] and reply["pick"] is None
    assert reply["candidates"] and not any(c["enabled"] for c in reply["candidates"])
    assert reply["warnings"] == [
        "file_mounts./c: s3:// buckets need the aws provider, which is not enabled"]
    status, reply = await h.api("POST", "/api/v1/plan", {"task": task, "source": 5})
    assert status == 400 and "source must be a string" in reply["error"]


async def test_clouds_endpoint_is_authenticated_and_lists_enabled_clouds(h: Harness) -> None:
    status, reply = await h.api("GET", "/api/v1/clouds", token="wrong")
    assert (status, reply) == (401, {"error": "unauthorized"})
    status, reply = await h.api("GET", "/api/v1/clouds")
    assert status == 200
    assert reply["enabled"] == ["local"] and reply["url"] == h.ctl.url
    [local] = reply["clouds"]
    assert local["cloud"] == "local" and local["ready"] and local["offerings"] > 0


