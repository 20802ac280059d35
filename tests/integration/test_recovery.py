"""Recovery end to end with real processes: controller, local instances, agents, jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from skyjobs.spec import load_task
from skyjobs.submission import build_archive, raw_task
from tests.conftest import ROOT, ControllerProc, task, wait_for

TRAIN = ROOT / "examples" / "train"


def submit_yaml(ctl: ControllerProc, path: Path) -> int:
    spec = load_task(path)
    return int(ctl.client.post("/api/v1/jobs", {
        "task": raw_task(path), "source": str(path), "archive": build_archive(spec)})["id"])


def train_task(tmp_path: Path, mode: str = "MOUNT", nodes: int = 1, steps: int = 40,
               extra_resources: dict[str, Any] | None = None) -> Path:
    doc = {
        "name": "train",
        "resources": {"cloud": "local", "accelerators": "V100:1", "use_spot": True,
                      **(extra_resources or {})},
        "num_nodes": nodes,
        "workdir": str(TRAIN),
        "file_mounts": {"/checkpoints": {"source": "local://ckpt", "mode": mode}},
        "run": f"python3 train.py --steps {steps} --step-seconds 0.1 --ckpt-every 5 "
               "--ckpt-dir $SKYJOBS_FS_ROOT/checkpoints/node-$SKYPILOT_NODE_RANK",
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def scrape(ctl: ControllerProc) -> str:
    import urllib.request

    req = urllib.request.Request(f"{ctl.client.url}/metrics",
                                 headers={"Authorization": f"Bearer {ctl.client.token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(resp.read().decode())


def logs_contain(ctl: ControllerProc, job_id: int, attempt: int, text: str,
                 rank: int = 0) -> bool:
    return text in ctl.logs(job_id, attempt, rank)


def test_preempted_job_resumes_from_checkpoint_and_succeeds(controller: Any,
                                                            tmp_path: Path) -> None:
    ctl = controller()
    job_id = submit_yaml(ctl, train_task(tmp_path))
    ctl.wait_status(job_id, "RUNNING")
    wait_for("progress", lambda: logs_contain(ctl, job_id, 1, "step 10 "))
    ctl.client.post(f"/api/v1/jobs/{job_id}/preempt", {"notice": 2})
    done = ctl.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=90)
    assert done["status"] == "SUCCEEDED"
    assert done["recoveries"] == 1
    second = ctl.logs(job_id, 2)
    assert "resumed from checkpoint at step" in second
    resumed_at = int(second.split("resumed from checkpoint at step ")[1].split()[0])
    assert resumed_at >= 10
    transitions = [(e["from_status"], e["to_status"]) for e in ctl.events(job_id)
                   if e["kind"] == "transition"]
    assert ("RUNNING", "RECOVERING") in transitions
    assert transitions[-1] == ("RUNNING", "SUCCEEDED")
    attempts = ctl.job(job_id)["attempt_list"]
    assert [a["end_reason"] for a in attempts] == ["preempted", "succeeded"]
    # The zone that just preempted us cools down: the recovery goes elsewhere.
    assert attempts[0]["placement"] != attempts[1]["placement"]
    wait_for("every attempt's instances released", lambda: all(
        a["released"] for a in ctl.job(job_id)["attempt_list"]))
    metrics = scrape(ctl)
    assert 'skyjobs_recoveries_total{cause="notice"} 1.0' in metrics
    assert "skyjobs_notice_to_recovering_seconds_count 1.0" in metrics
    assert 'skyjobs_jobs{state="SUCCEEDED"} 1.0' in metrics
    wait_for("no instance left running", lambda: not ctl.running_instances())


def test_multinode_copy_mode_recovers_every_node(controller: Any, tmp_path: Path) -> None:
    ctl = controller()
    job_id = submit_yaml(ctl, train_task(tmp_path, mode="COPY", nodes=2, steps=30))
    ctl.wait_status(job_id, "RUNNING")
    for rank in (0, 1):
        wait_for(f"node {rank} progress", lambda r=rank: logs_contain(ctl, job_id, 1,
                                                                      "step 10 ", r))
    ctl.client.post(f"/api/v1/jobs/{job_id}/preempt", {"notice": 2})
    done = ctl.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=90)
    assert done["status"] == "SUCCEEDED"
    for rank in (0, 1):
        log = ctl.logs(job_id, 2, rank)
        assert "resumed from checkpoint at step" in log, log
    first = ctl.logs(job_id, 1, 1)
    assert "node 1 attempt 1" in first


def test_instance_lost_without_notice_is_recovered(controller: Any) -> None:
    from skyjobs.providers.local_instance import kill_session

    ctl = controller()
    job_id = ctl.submit(task("sleep 300"))
    ctl.wait_status(job_id, "RUNNING")
    (name, state), = ctl.instances().items()
    kill_session(state["sid"])  # the host vanishes: no notice, no exit report
    wait_for("a recovery", lambda: ctl.job(job_id)["recoveries"] == 1)
    ctl.wait_status(job_id, "RUNNING")
    reasons = [e["reason"] for e in ctl.events(job_id)]
    assert any("is gone (lost)" in (r or "") for r in reasons), reasons
    # Recovered, but not held against the zone: no cloud said "preempted".
    assert ctl.job(job_id)["attempt_list"][0]["end_reason"] == "lost"


def test_silent_agent_on_a_live_instance_is_recovered_after_the_window(controller: Any) -> None:
    import os
    import signal

    ctl = controller()
    job_id = ctl.submit(task("sleep 300"))
    ctl.wait_status(job_id, "RUNNING")
    (name, state), = ctl.instances().items()
    os.kill(state["agent_pid"], signal.SIGSTOP)  # alive but silent, like a hung agent
    try:
        # Not recovered on the first missed heartbeat (timeout 3 s, window 4 s).
        wait_for("a recovery", lambda: ctl.job(job_id)["recoveries"] == 1, timeout=30)
    finally:
        os.kill(state["agent_pid"], signal.SIGCONT)
    reasons = [e["reason"] or "" for e in ctl.events(job_id)]
    assert any("agent silent for" in r for r in reasons), reasons
    silent_at = next(e["at"] for e in ctl.events(job_id) if "agent silent" in (e["reason"] or ""))
    running_at = next(e["at"] for e in ctl.events(job_id) if e["to_status"] == "RUNNING")
    assert silent_at - running_at >= 4.0
    ctl.wait_status(job_id, "RUNNING")
    wait_for("the silent instance to be terminated", lambda: name not in ctl.running_instances())


def test_a_large_log_is_shipped_whole_before_the_exit_report(controller: Any) -> None:
    from tests.conftest import task

    ctl = controller()
    line = "x" * 99
    job_id = ctl.submit(task(f"for i in $(seq 30000); do echo {line}; done; echo the-end"))
    done = ctl.wait_status(job_id, "SUCCEEDED", "FAILED")
    assert done["status"] == "SUCCEEDED"
    reply = ctl.client.get(f"/api/v1/jobs/{job_id}/logs", attempt=1, offset=0)
    assert reply["size"] > 3_000_000  # more than the 1 MiB an agent ships at once
    tail = ctl.client.get(f"/api/v1/jobs/{job_id}/logs", attempt=1,
                          offset=reply["size"] - 100)["data"]
    assert tail.rstrip().endswith("the-end")
