"""`sky jobs` habits that work unchanged: env and secret flags, resource overrides, detach,
job arrays, name and array filters, global options after the subcommand."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAST_ENV, ROOT, wait_for


def cli(state: Path, *args: str, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **FAST_ENV, **(env or {})}
    full.pop("SKYJOBS_STATE_DIR", None)
    full.pop("SKYJOBS_CONTROLLER", None)
    # --state-dir after the subcommand, as sky users type their options.
    return subprocess.run([sys.executable, "-m", "skyjobs", *args, "--state-dir", str(state)],
                          capture_output=True, text=True, env=full, timeout=120, cwd=ROOT)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    yield state
    info = state / "controller.json"
    if info.exists():
        cli(state, "cancel", "--all")
        os.kill(json.loads(info.read_text())["pid"], signal.SIGTERM)
        wait_for("controller to stop", lambda: not info.exists(), timeout=20)


def jobs(state: Path, *args: str) -> list[dict[str, object]]:
    r = cli(state, "queue", "--json", *args)
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout))


def wait_done(state: Path, job_id: str) -> dict[str, object]:
    def done() -> dict[str, object] | None:
        j = json.loads(cli(state, "status", job_id, "--json").stdout)
        return j if j["status"] in ("SUCCEEDED", "FAILED", "FAILED_NO_RESOURCE") else None
    return wait_for(f"job {job_id} to end", done, timeout=90)


def test_env_secret_and_resource_overrides(state: Path, tmp_path: Path) -> None:
    task = tmp_path / "t.yaml"
    task.write_text("name: habits\nresources: {cloud: local, cpus: 2, use_spot: true}\n"
                    "run: echo \"$FROM_SHELL $FROM_FILE $OVERRIDE $TOKEN\"\n")
    (tmp_path / ".env").write_text("FROM_FILE=filed\nOVERRIDE=from-file\n")
    r = cli(state, "submit", str(task), "-d", "-y", "--env", "FROM_SHELL",
            "--env-file", str(tmp_path / ".env"), "--env", "OVERRIDE=flag",
            "--secret", "TOKEN=hunter2", "--no-use-spot",
            env={"FROM_SHELL": "shelled"})
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    done = wait_done(state, job_id)
    assert done["status"] == "SUCCEEDED"
    assert str(done["placement"]).endswith("/on-demand")
    log = cli(state, "logs", job_id, "--no-follow").stdout
    assert "shelled filed flag hunter2" in log
    shown = cli(state, "status", job_id, "--json").stdout + cli(state, "events", job_id).stdout
    assert "hunter2" not in shown and "TOKEN" in shown  # the secret's name, never its value


def test_env_from_an_unset_variable_is_one_clear_error(state: Path, tmp_path: Path) -> None:
    task = tmp_path / "t.yaml"
    task.write_text("resources: {cloud: local, cpus: 2}\nrun: 'true'\n")
    r = cli(state, "submit", str(task), "--env", "NOT_SET_ANYWHERE_123")
    assert r.returncode == 2 and "NOT_SET_ANYWHERE_123 is not set" in r.stderr
    assert "Traceback" not in r.stderr and not (state / "controller.json").exists()


def test_job_arrays_ranks_filters_and_cancel(state: Path, tmp_path: Path) -> None:
    task = tmp_path / "a.yaml"
    task.write_text("name: sweep\nresources: {cloud: local, cpus: 2}\n"
                    "run: echo rank=$SKYPILOT_JOB_RANK array=$SKYJOBS_ARRAY_ID\n")
    r = cli(state, "submit", str(task), "--num-jobs", "3")
    assert r.returncode == 0, r.stderr
    ids = r.stdout.split()
    assert len(ids) == 3 and f"job array {ids[0]}: 3 jobs" in r.stderr
    for rank, job_id in enumerate(ids):
        assert wait_done(state, job_id)["status"] == "SUCCEEDED"
        assert f"rank={rank} array={ids[0]}" in cli(state, "logs", job_id).stdout
    assert sorted(str(j["id"]) for j in jobs(state, "--array", ids[0])) == sorted(ids)
    assert {j["array_rank"] for j in jobs(state, "--array", ids[0])} == {0, 1, 2}
    # A second array of long jobs, cancelled as a group; the first array is untouched.
    task.write_text("name: long\nresources: {cloud: local, cpus: 2}\nrun: sleep 300\n")
    second = cli(state, "submit", str(task), "--num-jobs", "2").stdout.split()
    wait_for("the long array to start", lambda: all(
        j["status"] in ("PROVISIONING", "RUNNING") for j in jobs(state, "--array", second[0])),
        timeout=60)
    c = cli(state, "cancel", "--array", second[0])
    assert c.returncode == 0 and c.stdout.count("cancelling job") == 2, c.stderr
    wait_for("the long array to be cancelled", lambda: all(
        j["status"] == "CANCELLED" for j in jobs(state, "--array", second[0])), timeout=60)
    assert all(j["status"] == "SUCCEEDED" for j in jobs(state, "--array", ids[0]))


def test_cancel_and_queue_by_name(state: Path, tmp_path: Path) -> None:
    task = tmp_path / "n.yaml"
    task.write_text("resources: {cloud: local, cpus: 2}\nrun: sleep 300\n")
    keep = cli(state, "submit", str(task), "--name", "keep").stdout.strip()
    drop = cli(state, "submit", str(task), "-n", "drop").stdout.strip()
    assert [str(j["id"]) for j in jobs(state, "-n", "drop")] == [drop]
    c = cli(state, "cancel", "-n", "drop")
    assert c.returncode == 0 and f"cancelling job {drop}" in c.stdout
    wait_for("drop cancelled", lambda: jobs(state, "-n", "drop")[0]["status"] == "CANCELLED",
             timeout=60)
    assert jobs(state, "-n", "keep")[0]["status"] != "CANCELLED"
    assert str(jobs(state, "-s", "CANCELLED")[0]["id"]) == drop and keep != drop
    usage = cli(state, "cancel", "1", "--name", "x")
    assert usage.returncode == 2 and "one of them" in usage.stderr


def test_a_pipeline_file_from_the_cli(state: Path, tmp_path: Path) -> None:
    path = tmp_path / "pipe.yaml"
    path.write_text("name: two-steps\n---\nresources: {cloud: local, cpus: 2}\n"
                    "run: echo first-step\n---\nresources: {cloud: local, cpus: 2}\n"
                    "run: echo second-step\n")
    r = cli(state, "submit", str(path))
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    done = wait_done(state, job_id)
    assert done["status"] == "SUCCEEDED" and done["name"] == "two-steps"
    assert "pipeline:    task 2 of 2" in cli(state, "status", job_id).stdout
    first = cli(state, "logs", job_id, "--task", "1").stdout
    assert "first-step" in first and "second-step" not in first
    assert "second-step" in cli(state, "logs", job_id, "--task", "2").stdout
    bad = cli(state, "logs", job_id, "--task", "3")
    assert bad.returncode == 2 and "has 2 task(s)" in bad.stderr
    events = cli(state, "events", job_id).stdout
    assert "task 1/2 succeeded; starting task 2" in events


def test_gpus_and_cloud_overrides_reach_placement(state: Path, tmp_path: Path) -> None:
    task = tmp_path / "g.yaml"
    task.write_text("resources: {cloud: aws, cpus: 2+, use_spot: true}\n"
                    "run: echo gpus=$SKYPILOT_NUM_GPUS_PER_NODE\n")
    r = cli(state, "submit", str(task), "--cloud", "local", "--gpus", "V100:1")
    assert r.returncode == 0, r.stderr
    done = wait_done(state, r.stdout.strip())
    assert done["status"] == "SUCCEEDED"
    assert str(done["placement"]).startswith("local/") and "v100" in str(done["placement"])
    assert "gpus=1" in cli(state, "logs", r.stdout.strip()).stdout


def test_plan_and_check_a_pipeline_file(state: Path, tmp_path: Path) -> None:
    path = tmp_path / "pipe.yaml"
    path.write_text("name: p\n---\nresources: {cloud: local, cpus: 2}\nrun: 'true'\n---\n"
                    "resources: {cloud: local, cpus: 2+, use_spot: false}\nrun: 'true'\n")
    r = cli(state, "plan", str(path), "--json")
    assert r.returncode == 0, r.stderr
    tasks = json.loads(r.stdout)["tasks"]
    assert len(tasks) == 2 and not tasks[1]["pick"]["spot"]
    text = cli(state, "plan", str(path)).stdout
    assert "=== task 1 of 2 ===" in text and "=== task 2 of 2 ===" in text
    assert cli(state, "check", str(path)).returncode == 0
    assert not (state / "controller.json").exists()
