"""Retention end to end: a controller whose jobs have all ended, once swept, is back at its
baseline memory (every in-memory map) and disk (store rows, logs, archives)."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from skyjobs.spec import load_task
from skyjobs.submission import build_archive
from tests.conftest import ControllerProc, task, wait_for

TABLES = ("jobs", "attempts", "nodes", "events", "outbox")


def metrics(ctl: ControllerProc) -> str:
    url = json.loads((ctl.state_dir / "controller.json").read_text())["url"]
    req = urllib.request.Request(f"{url}/metrics", headers={
        "Authorization": f"Bearer {(ctl.state_dir / 'token').read_text().strip()}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(resp.read().decode())


def map_sizes(ctl: ControllerProc) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(
        r'^skyjobs_memory_entries\{map="([^"]+)"\} (\S+)$', metrics(ctl), re.M)}


def disk(ctl: ControllerProc) -> dict[str, Any]:
    rows = {t: ctl.query(f"SELECT COUNT(*) FROM {t}")[0][0] for t in TABLES}
    if "SKYJOBS_DATABASE_URL" in ctl.env:  # shared store: logs and archives are rows
        return {**rows, "logs": [str(r[0]) for r in ctl.query(
                    "SELECT DISTINCT job_id FROM log_chunks ORDER BY job_id")],
                "archives": [r[0] for r in ctl.query("SELECT digest FROM archives")]}
    return {**rows, "logs": sorted(p.name for p in (ctl.state_dir / "logs").iterdir()),
            "archives": sorted(p.name for p in (ctl.state_dir / "archives").iterdir())}


def test_ended_jobs_swept_leave_the_baseline_memory_and_disk(controller: Any,
                                                             tmp_path: Path) -> None:
    ctl = controller()
    baseline_maps, baseline_disk = map_sizes(ctl), disk(ctl)
    assert baseline_maps and set(baseline_maps.values()) == {0.0}
    assert baseline_disk == {**dict.fromkeys(TABLES, 0), "logs": [], "archives": []}

    work = tmp_path / "work"
    work.mkdir()
    (work / "data.txt").write_text("from the workdir\n")
    doc = task("cat data.txt; sleep 2; echo done", workdir=str(work))
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(doc))
    body = {"task": doc, "source": str(path), "archive": build_archive(load_task(path))}
    jobs = [int(ctl.client.post("/api/v1/jobs", body)["id"]) for _ in range(2)]
    jobs.append(ctl.submit(task("sleep 30")))
    ctl.wait_status(jobs[2], "RUNNING")
    ctl.client.post(f"/api/v1/jobs/{jobs[2]}/preempt", {"notice": 1})  # a second attempt
    wait_for("the recovery", lambda: ctl.job(jobs[2])["attempts"] == 2
             and ctl.job(jobs[2])["status"] == "RUNNING", timeout=60)
    during = map_sizes(ctl)
    assert during["attempts"] >= 1 and during["last_seen"] >= 1
    ctl.client.post("/api/v1/cancel", {"ids": [jobs[2]]})
    for job_id in jobs:
        ctl.wait_status(job_id, "SUCCEEDED", "CANCELLED", timeout=60)
    # Every attempt's instances released: nothing of them is kept in memory.
    wait_for("in-memory maps back to baseline", lambda: map_sizes(ctl) == baseline_maps,
             timeout=60)
    assert disk(ctl)["logs"] and disk(ctl)["archives"]

    # The default retention (30 days) keeps jobs that just ended.
    kept = ctl.client.post("/api/v1/gc", {})
    assert kept["older_than_days"] == 30 and kept["removed"]["jobs"] == 0
    dry = ctl.client.post("/api/v1/gc", {"older_than_days": 0, "dry_run": True})
    assert dry["removed"]["jobs"] == 3 and disk(ctl)["jobs"] == 3
    swept = ctl.client.post("/api/v1/gc", {"older_than_days": 0})
    assert swept["removed"]["jobs"] == 3 and swept["removed"]["archives"] == 1

    assert disk(ctl) == baseline_disk
    assert map_sizes(ctl) == baseline_maps
    # The spend survives the jobs it was spent on.
    cost = re.search(r"^skyjobs_cost_dollars_total (\S+)$", metrics(ctl), re.M)
    assert cost is not None and float(cost[1]) > 0
    assert ctl.client.get("/api/v1/jobs")["jobs"] == []
