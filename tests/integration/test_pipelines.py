"""Pipelines with real processes: tasks run in order, each recovered on its own; a failed
task stops the chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import wait_for

PIPELINE = """\
name: train-eval
---
name: prep
resources: {{cloud: local, cpus: 2, use_spot: true}}
run: echo prep >> {marks}/prep; echo prepared
---
name: train
resources: {{cloud: local, cpus: 2, use_spot: true}}
run: echo "train $SKYJOBS_ATTEMPT" >> {marks}/train; {train}
"""


def submit_file(ctl: Any, path: Path) -> int:
    from skyjobs.pipeline import load_pipeline
    from skyjobs.submission import raw_task

    p = load_pipeline(path)
    body: dict[str, Any] = {"source": str(path), "name": p.name}
    if p.is_pipeline:
        body["tasks"] = [raw_task(d) for d in p.documents]
    else:
        body["task"] = raw_task(p.documents[0])
    return int(ctl.client.post("/api/v1/jobs", body)["id"])


def test_a_pipeline_runs_in_order_and_recovers_each_task_alone(controller: Any,
                                                               tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    path = tmp_path / "pipe.yaml"
    path.write_text(PIPELINE.format(marks=marks, train="sleep 4; echo trained"))
    ctl = controller()
    job_id = submit_file(ctl, path)
    j = ctl.job(job_id)
    assert (j["name"], j["tasks"]) == ("train-eval", 2)
    wait_for("task 2 running", lambda: (x := ctl.job(job_id))["current_task"] == 2
             and x["status"] == "RUNNING", timeout=60)
    # RUNNING means the agent started the task: on a loaded machine its first line may not
    # have run yet, and a preemption before it would leave no mark of that attempt.
    wait_for("task 2's first line ran", lambda: (marks / "train").exists(), timeout=30)
    ctl.client.post(f"/api/v1/jobs/{job_id}/preempt", {"notice": 1})
    done = ctl.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=90)
    assert done["status"] == "SUCCEEDED", done
    assert (marks / "prep").read_text().splitlines() == ["prep"]  # task 1 never ran again
    assert len((marks / "train").read_text().splitlines()) == 2  # task 2 ran, recovered once
    tasks = [a["task"] for a in done["attempt_list"]]
    assert tasks == [1, 2, 2] and done["recoveries"] == 1
    ends = [a["end_reason"] for a in done["attempt_list"]]
    assert ends == ["succeeded", "preempted", "succeeded"]
    reasons = [e["reason"] or "" for e in ctl.events(job_id)]
    assert any(r.startswith("task 1/2 succeeded; starting task 2") for r in reasons)
    assert done["reason"].startswith("task 2/2: ")
    wait_for("every attempt released", lambda: all(
        a["released"] for a in ctl.job(job_id)["attempt_list"]))


def test_a_failed_task_fails_the_pipeline_and_skips_the_rest(controller: Any,
                                                             tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    path = tmp_path / "pipe.yaml"
    text = PIPELINE.format(marks=marks, train="echo never").replace(
        "echo prepared", "exit 3")
    path.write_text(text)
    ctl = controller()
    job_id = submit_file(ctl, path)
    done = ctl.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=60)
    assert done["status"] == "FAILED" and done["reason"].startswith("task 1/2: ")
    assert done["exit_code"] == 3
    assert [a["task"] for a in done["attempt_list"]] == [1]
    assert not (marks / "train").exists()
    # The store says which task, for tools reading events or the job.
    assert done["current_task"] == 1 and done["tasks"] == 2
