"""Controller crashes, cancels and failure budgets, with real processes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.conftest import ControllerProc, task, wait_for

COUNTER_RUN = """
n=$(cat {path} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {path}
echo "run number $n"
{body}
"""


def alive_count(ctl: ControllerProc) -> int:
    return len(ctl.running_instances())


def test_kill9_mid_run_resumes_and_completes_without_extra_instance(controller: Any,
                                                                     tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    ctl = controller()
    job_id = ctl.submit(task(COUNTER_RUN.format(path=marker, body="sleep 4; echo done")))
    ctl.wait_status(job_id, "RUNNING")
    ctl.kill9()
    # The job goes on without its controller, finishes, and its agent keeps retrying the
    # exit report until a controller is back.
    wait_for("the run to finish", lambda: "done" in "".join(
        p.read_text() for p in (ctl.state_dir / "local-cloud").rglob("skyjobs-job.log")))
    ctl.start()
    done = ctl.wait_status(job_id, "SUCCEEDED", "FAILED")
    assert done["status"] == "SUCCEEDED"
    assert done["attempts"] == 1 and done["recoveries"] == 0
    assert marker.read_text().strip() == "1"  # the job ran exactly once
    assert list(ctl.instances()) == [f"{ctl.job(job_id)['attempt_list'][0]['instances'][0]}"]
    wait_for("no instance left running", lambda: alive_count(ctl) == 0)


def test_kill9_while_provisioning_does_not_launch_twice(controller: Any) -> None:
    ctl = controller()
    job_id = ctl.submit(task("sleep 3", setup="sleep 2"))
    wait_for("the instance to boot", lambda: ctl.instances())
    ctl.kill9()
    ctl.start()
    done = ctl.wait_status(job_id, "SUCCEEDED", "FAILED")
    assert done["status"] == "SUCCEEDED"
    assert len(ctl.instances()) == 1
    wait_for("no instance left running", lambda: alive_count(ctl) == 0)


def test_controller_restart_while_preempted_recovers(controller: Any) -> None:
    ctl = controller()
    job_id = ctl.submit(task("sleep 300"))
    ctl.wait_status(job_id, "RUNNING")
    ctl.client.post(f"/api/v1/jobs/{job_id}/preempt", {"notice": 1})
    ctl.kill9()  # dies before (or while) hearing about the notice
    wait_for("the preempted instance to die", lambda: alive_count(ctl) == 0)
    ctl.start()
    try:
        wait_for("recovery after restart", lambda: ctl.job(job_id)["recoveries"] == 1)
        running = ctl.wait_status(job_id, "RUNNING")
    except BaseException:
        # This has timed out twice in full-suite runs under load and never alone: keep
        # what is needed to tell why next time.
        print("job:", ctl.job(job_id), "\nevents:", ctl.events(job_id),
              "\ncontroller log:", ctl.log_tail())
        raise
    assert running["attempts"] == 2
    assert alive_count(ctl) == 1


def test_sigterm_leaves_instances_alone_and_restart_reattaches(controller: Any) -> None:
    ctl = controller()
    job_id = ctl.submit(task("sleep 5"))
    ctl.wait_status(job_id, "RUNNING")
    assert ctl.stop() == 0
    assert alive_count(ctl) == 1  # shutdown never touches instances
    ctl.start()
    done = ctl.wait_status(job_id, "SUCCEEDED", "FAILED")
    assert done["status"] == "SUCCEEDED" and done["attempts"] == 1


def test_a_second_signal_stops_at_once_and_still_cleanly(controller: Any) -> None:
    """uvicorn's pattern: the first SIGTERM stops gracefully within a bound, a second stops
    without waiting; either way the exit is clean (no os._exit, no traceback) and the
    instances are left for the next start."""
    import signal

    ctl = controller()
    job_id = ctl.submit(task("sleep 30"))
    ctl.wait_status(job_id, "RUNNING")
    assert ctl.proc is not None
    ctl.proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)  # two signals sent at once may arrive as one
    if ctl.proc.poll() is None:
        ctl.proc.send_signal(signal.SIGTERM)
    # 0, or killed by the second SIGTERM if it came once shutdown had restored the default
    # handlers (systemd counts both as a clean stop).
    assert ctl.proc.wait(timeout=20) in (0, -signal.SIGTERM)
    assert "Traceback" not in ctl.log_tail()
    assert not (ctl.state_dir / "controller.json").exists()
    assert alive_count(ctl) == 1
    ctl.start()
    assert ctl.wait_status(job_id, "RUNNING")["attempts"] == 1  # re-attached, not relaunched


def test_cancel_during_recovering_leaks_no_instance(controller: Any) -> None:
    ctl = controller(SKYJOBS_MAX_LAUNCH_ROUNDS="1000", SKYJOBS_LAUNCH_BACKOFF_MAX="0.5")
    job_id = ctl.submit(task("sleep 300"))
    ctl.wait_status(job_id, "RUNNING")
    for zone in ("local-a", "local-b", "local-c"):
        ctl.client.post("/api/v1/local/capacity", {"zone": zone, "spot": False})
    ctl.client.post(f"/api/v1/jobs/{job_id}/preempt", {"notice": 0})
    wait_for("the job to be recovering", lambda: ctl.job(job_id)["recoveries"] == 1)
    wait_for("a failed launch round", lambda: any(
        "no capacity in any candidate" in (e["reason"] or "") for e in ctl.events(job_id)))
    reply = ctl.client.post("/api/v1/cancel", {"ids": [job_id]})
    assert reply["cancelled"] == [job_id]
    ctl.wait_status(job_id, "CANCELLED")
    # CANCELLED is written only after every attempt's instances are terminated.
    assert all(a["released"] for a in ctl.job(job_id)["attempt_list"])
    wait_for("no instance left running", lambda: alive_count(ctl) == 0)
    statuses = {s.get("state") for s in ctl.instances().values()}
    assert statuses <= {"terminated", None}


def test_cancel_running_job_terminates_its_instances(controller: Any) -> None:
    ctl = controller()
    ids = [ctl.submit(task("sleep 300")) for _ in range(3)]
    for job_id in ids:
        ctl.wait_status(job_id, "RUNNING")
    assert alive_count(ctl) == 3
    reply = ctl.client.post("/api/v1/cancel", {"all": True})
    assert sorted(reply["cancelled"]) == sorted(ids)
    for job_id in ids:
        ctl.wait_status(job_id, "CANCELLED")
    wait_for("no instance left running", lambda: alive_count(ctl) == 0)
    again = ctl.client.post("/api/v1/cancel", {"ids": [ids[0]]})
    assert again["cancelled"] == [] and again["skipped"][0]["id"] == ids[0]


def test_user_failure_is_not_retried_beyond_its_budget(controller: Any, tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    ctl = controller()
    job_id = ctl.submit(task(COUNTER_RUN.format(path=marker, body="exit 3"),
                             resources={"cloud": "local", "cpus": 2, "use_spot": True,
                                        "job_recovery": {"max_restarts_on_errors": 1}}))
    done = ctl.wait_status(job_id, "FAILED", "SUCCEEDED")
    assert done["status"] == "FAILED"
    assert done["exit_code"] == 3
    assert done["restarts"] == 1 and done["recoveries"] == 0
    assert marker.read_text().strip() == "2"  # the first run and one restart, no more
    assert "all 1 restarts used" in done["reason"]
    wait_for("no instance left running", lambda: alive_count(ctl) == 0)


def test_recover_on_exit_codes_does_not_use_the_budget(controller: Any, tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    body = 'if [ "$n" -lt 3 ]; then exit 42; fi; echo ok'
    ctl = controller()
    job_id = ctl.submit(task(COUNTER_RUN.format(path=marker, body=body),
                             resources={"cloud": "local", "cpus": 2, "use_spot": True,
                                        "job_recovery": {"recover_on_exit_codes": [42]}}))
    done = ctl.wait_status(job_id, "SUCCEEDED", "FAILED")
    assert done["status"] == "SUCCEEDED"
    assert marker.read_text().strip() == "3"
    assert done["restarts"] == 0 and done["attempts"] == 3


def test_setup_failure_fails_without_retry(controller: Any) -> None:
    ctl = controller()
    job_id = ctl.submit(task("echo never", setup="echo broken; exit 7",
                             resources={"cloud": "local", "cpus": 2, "use_spot": True,
                                        "job_recovery": {"max_restarts_on_errors": 3}}))
    done = ctl.wait_status(job_id, "FAILED", "SUCCEEDED")
    assert done["status"] == "FAILED" and done["exit_code"] == 7
    assert "setup failed" in done["reason"]
    assert done["attempts"] == 1
    assert "broken" in ctl.logs(job_id, 1)


def test_no_capacity_anywhere_ends_failed_no_resource(controller: Any) -> None:
    ctl = controller(SKYJOBS_LOCAL_NO_SPOT_ZONES="local-a,local-b,local-c")
    job_id = ctl.submit(task("echo hi"))
    done = ctl.wait_status(job_id, "FAILED_NO_RESOURCE", "SUCCEEDED", "FAILED")
    assert done["status"] == "FAILED_NO_RESOURCE"
    assert "3 rounds" in done["reason"]
    assert ctl.instances() == {}
    ends = {a["end_reason"] for a in done["attempt_list"]}
    assert ends == {"no_capacity"}


def test_failover_to_a_zone_with_capacity(controller: Any) -> None:
    ctl = controller(SKYJOBS_LOCAL_NO_SPOT_ZONES="local-a")
    job_id = ctl.submit(task("echo hi"))
    done = ctl.wait_status(job_id, "SUCCEEDED", "FAILED", "FAILED_NO_RESOURCE")
    assert done["status"] == "SUCCEEDED"
    places = [a["placement"] for a in done["attempt_list"]]
    assert places[0].startswith("local/local-a/") and places[-1].startswith("local/local-b/")


def test_orphan_instances_of_this_controller_are_terminated_at_start(controller: Any) -> None:
    import asyncio

    from skyjobs.pricing.catalog import Placement, load_cloud
    from skyjobs.providers.base import LaunchRequest
    from skyjobs.providers.local import LocalProvider

    ctl = controller()
    assert ctl.stop() == 0
    cid = ctl.query("SELECT value FROM meta WHERE key='controller_id'")[0][0]
    offering = load_cloud("local")[0]
    orphan, stranger = f"sj{cid}-999-1-0", "someone-else-1"
    provider = LocalProvider(ctl.state_dir / "local-cloud")

    async def boot() -> None:
        for name in (orphan, stranger):
            await provider.launch(LaunchRequest(
                job_id=999, attempt_id=999, placement=Placement(offering, False, 0.1),
                instance_ids=[name], agent_env=[{"SKYJOBS_CONTROLLER_URL": "http://127.0.0.1:9",
                                                 "SKYJOBS_ATTEMPT_ID": "999",
                                                 "SKYJOBS_AGENT_TOKEN": "x"}]))
        await provider.close()

    asyncio.run(boot())
    assert set(ctl.running_instances()) == {orphan, stranger}
    ctl.start()
    wait_for("the orphan to be terminated", lambda: ctl.running_instances() == [stranger])
    assert "terminating orphan instances" in ctl.log_tail()


def test_a_bucket_that_cannot_be_prepared_fails_setup_cleanly(controller: Any,
                                                             tmp_path: Path) -> None:
    from tests.integration.test_recovery import submit_yaml

    workdir = tmp_path / "wd"
    workdir.mkdir()
    (workdir / "f").write_text("a file where the mount wants a directory")
    spec = tmp_path / "t.yaml"
    spec.write_text(
        "resources: {cloud: local, cpus: 2, use_spot: true}\n"
        f"workdir: {workdir}\n"
        "file_mounts: {~/sky_workdir/f/ckpt: {source: 'local://b', mode: MOUNT}}\n"
        "run: echo never\n")
    ctl = controller()
    job_id = submit_yaml(ctl, spec)
    done = ctl.wait_status(job_id, "FAILED", "SUCCEEDED")
    assert done["status"] == "FAILED" and "setup failed" in done["reason"]
    assert "preparing files failed" in ctl.logs(job_id, 1)
    wait_for("no instance left running", lambda: alive_count(ctl) == 0)


def test_no_capacity_rounds_survive_a_controller_kill(controller: Any) -> None:
    env = {"SKYJOBS_LOCAL_NO_SPOT_ZONES": "local-a,local-b,local-c",
           "SKYJOBS_MAX_LAUNCH_ROUNDS": "4", "SKYJOBS_LAUNCH_BACKOFF_INITIAL": "1",
           "SKYJOBS_LAUNCH_BACKOFF_MAX": "1"}
    ctl = controller(**env)
    job_id = ctl.submit(task("echo hi"))

    def rounds() -> list[str]:
        return [e["reason"] for e in ctl.events(job_id)
                if (e["reason"] or "").startswith("no capacity in any candidate (round")]

    wait_for("two failed rounds", lambda: len(rounds()) >= 2)
    ctl.kill9()
    ctl.start()
    done = ctl.wait_status(job_id, "FAILED_NO_RESOURCE", "SUCCEEDED", "FAILED")
    assert done["status"] == "FAILED_NO_RESOURCE"
    assert "after 4 rounds" in done["reason"]
    numbers = [int(r.split("(round ")[1].split(")")[0]) for r in rounds()]
    assert numbers == sorted(set(numbers)) and numbers[-1] == 3  # counted on, not restarted
