"""`skyjobs plan` and `skyjobs check` before any setup: real processes, no controller needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST_ENV, ROOT, ControllerProc

# No AWS anything: no credentials, no profile, no instance metadata to wait for.
NO_AWS = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
          "AWS_CONFIG_FILE": "/nonexistent",
          # Google's ADC: no key file, no gcloud config, and never probe a metadata server.
          "GOOGLE_APPLICATION_CREDENTIALS": "", "CLOUDSDK_CONFIG": "/nonexistent",
          "NO_GCE_CHECK": "True"}
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
            "AWS_ENDPOINT_URL", "SKYJOBS_CLOUDS", "SKYJOBS_CONTROLLER")


def cli(state: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in AWS_VARS}
    full.update({**FAST_ENV, **NO_AWS, "SKYJOBS_STATE_DIR": str(state), **env})
    return subprocess.run([sys.executable, "-m", "skyjobs", *args], capture_output=True,
                          text=True, env=full, timeout=60, cwd=ROOT)


@pytest.fixture
def aws_task(tmp_path: Path) -> Path:
    task = tmp_path / "llama.yaml"
    task.write_text("name: llama\nworkdir: ./no-such-dir\n"
                    "resources:\n  cloud: aws\n  gpus: V100:1\n  use_spot: true\n"
                    "  spot_recovery: auto\n"
                    "file_mounts:\n  /ckpt:\n    source: s3://my-ckpts/llama\n    mode: COPY\n"
                    "run: python train.py\n")
    return task


def test_plan_with_no_controller_and_no_credentials_ranks_aws_and_starts_nothing(
        tmp_path: Path, aws_task: Path) -> None:
    state = tmp_path / "state"
    r = cli(state, "plan", str(aws_task), "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    rows = plan["candidates"]
    assert rows and {c["cloud"] for c in rows} == {"aws"}
    assert not any(c["enabled"] for c in rows) and plan["pick"] is None
    assert all(c["spot"] and c["accelerator"] == "V100:1" for c in rows)
    prices = [c["price_per_hour"] for c in rows]
    assert prices == sorted(prices)  # list prices, cheapest first, no memory
    assert plan["enabled"] == ["local"] and "no controller" in plan["enabled_by"]
    assert not (state / "controller.json").exists() and not (state / "skyjobs.db").exists()
    # Warnings, not refusals: the workdir, and the s3 bucket of a cloud not enabled.
    assert any("workdir: './no-such-dir' is not a directory" in w for w in plan["warnings"])
    assert any("s3:// buckets need the aws provider" in w for w in plan["warnings"])
    assert plan["notes"] == [f"{aws_task}: resources.spot_recovery: deprecated, use job_recovery"]

    table = cli(state, "plan", str(aws_task), "--limit", "3")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("strategy COST_AWARE, 1 node(s); enabled: local")
    assert lines[1].split()[:10] == ["#", "CLOUD", "REGION", "ZONE", "INSTANCE", "ACCEL",
                                     "MARKET", "$/H", "ENABLED", "WHY"]
    assert lines[2].split()[1] == "aws" and lines[2].split()[8] == "no"
    assert any(line.startswith("would launch first: nothing: no enabled cloud") for line in lines)
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(warnings) == 2 and all(w.endswith("(submit refuses this)") for w in warnings)
    assert f"note: {aws_task}: resources.spot_recovery: deprecated, use job_recovery" in lines
    assert not (state / "controller.json").exists()


def test_submit_still_refuses_what_plan_only_warns_about(tmp_path: Path,
                                                         aws_task: Path) -> None:
    state = tmp_path / "state"
    r = cli(state, "submit", str(aws_task))
    assert r.returncode == 1
    assert r.stderr.strip() == f"error: {aws_task}: workdir: './no-such-dir' is not a directory"
    assert not (state / "controller.json").exists()


def test_plan_of_an_unknown_cloud_is_one_line(tmp_path: Path) -> None:
    task = tmp_path / "t.yaml"
    task.write_text("resources: {cloud: azure}\nrun: x\n")
    r = cli(tmp_path / "state", "plan", str(task))
    assert r.returncode == 1
    assert r.stderr.strip() == (f"error: {task}: resources.cloud: 'azure' is not a cloud "
                                "skyjobs knows (known: aws, gcp, local)")


def test_plan_and_check_ask_a_running_controller(tmp_path: Path) -> None:
    state = tmp_path / "state"
    task = tmp_path / "t.yaml"
    task.write_text("resources: {cpus: 2+, use_spot: true}\n"
                    "file_mounts: {/ckpt: {source: local://ckpt}}\nrun: x\n")
    proc = ControllerProc(state, NO_AWS).start()
    try:
        r = cli(state, "plan", str(task), "--json")
        assert r.returncode == 0, r.stderr
        plan = json.loads(r.stdout)
        assert plan["controller"] and plan["enabled"] == ["local"]
        assert "live prices and preemption memory" in plan["enabled_by"]
        clouds = {c["cloud"] for c in plan["candidates"]}
        assert clouds == {"aws", "gcp", "local"}
        assert all(c["enabled"] == (c["cloud"] == "local") for c in plan["candidates"])
        assert plan["pick"]["cloud"] == "local"
        # The task could also run elsewhere, but this controller places it on local.
        assert plan["warnings"] == []

        c = cli(state, "check", str(task))
        assert c.returncode == 0, c.stdout + c.stderr
        lines = c.stdout.splitlines()
        assert lines[0] == f"controller: {plan['controller']} enables local"
        assert any(line.startswith("local: enabled on the controller: ") for line in lines)
        assert any(line.startswith("aws: not enabled") for line in lines)
        assert any(line.startswith("bucket: ") and "local://ckpt: local bucket at "
                   in line for line in lines)
        assert "FAIL" not in c.stdout and "Traceback" not in c.stderr
    finally:
        proc.stop()


def test_check_without_credentials_reports_and_exits_by_what_is_enabled(tmp_path: Path) -> None:
    state = tmp_path / "state"
    r = cli(state, "check")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"controller: none running on {state}; one started here would "
                               "enable local")
    assert "aws: not enabled (SKYJOBS_CLOUDS=aws,local or clouds: [aws, local] in " \
           "config.yaml; see docs/aws.md)" in lines
    assert any(line.startswith("aws: credentials: not found") for line in lines)
    assert "gcp: not enabled (SKYJOBS_CLOUDS=gcp,local or clouds: [gcp, local] in " \
           "config.yaml; see docs/gcp.md)" in lines
    assert any(line.startswith("gcp: credentials: not found") for line in lines)
    assert any(line.startswith("local: enabled: always available") for line in lines)
    assert "FAIL" not in r.stdout and r.stderr == ""

    # aws wanted on this machine with no credentials: it could not launch there.
    r = cli(state, "check", SKYJOBS_CLOUDS="aws,local")
    assert r.returncode == 1
    assert any(line.startswith("aws: FAIL: credentials: not found") for line in
               r.stdout.splitlines())
    r = cli(state, "check", SKYJOBS_CLOUDS="gcp")
    assert r.returncode == 1
    assert any(line.startswith("gcp: FAIL: credentials: not found") for line in
               r.stdout.splitlines()), r.stdout
    assert not (state / "controller.json").exists() and "Traceback" not in r.stderr


def test_check_with_a_task_file_reports_each_problem_on_one_line(tmp_path: Path,
                                                               aws_task: Path) -> None:
    r = cli(tmp_path / "state", "check", str(aws_task))
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert f"task: FAIL: {aws_task}: workdir: './no-such-dir' is not a directory" in lines
    assert f"task: note: {aws_task}: resources.spot_recovery: deprecated, use job_recovery" \
        in lines
    assert any(line.startswith(f"bucket: FAIL: {aws_task}: file_mounts./ckpt: "
                               "s3://my-ckpts/llama: needs the aws provider") for line in lines)
    assert "Traceback" not in r.stderr
