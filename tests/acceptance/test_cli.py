"""The CLI as users run it: real processes, clear errors, no tracebacks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST_ENV, ROOT, wait_for


def cli(state: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **FAST_ENV, "SKYJOBS_STATE_DIR": str(state)}
    env.pop("SKYJOBS_CONTROLLER", None)
    return subprocess.run([sys.executable, "-m", "skyjobs", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)


@pytest.fixture
def state(tmp_path: Path):  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    yield state
    info = state / "controller.json"
    if info.exists():
        cli(state, "cancel", "--all")
        pid = json.loads(info.read_text())["pid"]
        os.kill(pid, signal.SIGTERM)
        wait_for("controller to stop", lambda: not info.exists(), timeout=20)


def test_submit_autostarts_a_controller_and_follow_streams_to_success(state: Path,
                                                                        tmp_path: Path) -> None:
    task = tmp_path / "hello.yaml"
    task.write_text("name: hello\nresources: {cloud: local, cpus: 2, use_spot: true}\n"
                    "envs: {WHO: nobody}\nrun: echo hello $WHO from $SKYPILOT_TASK_ID\n")
    r = cli(state, "submit", str(task), "--env", "WHO=world", "--follow")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "1"
    assert "hello world from sky-1" in r.stdout
    assert "SUCCEEDED" in r.stderr
    q = cli(state, "queue", "--json")
    jobs = json.loads(q.stdout)
    assert [(j["id"], j["name"], j["status"]) for j in jobs] == [(1, "hello", "SUCCEEDED")]
    table = cli(state, "queue").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "STATUS", "PLACEMENT", "RECOVERIES", "SUBMITTED",
                                "DURATION", "COST"]
    ev = cli(state, "events", "1").stdout
    assert "RUNNING -> SUCCEEDED" in ev
    st = cli(state, "status", "1")
    assert "SUCCEEDED" in st.stdout and "saving" in st.stdout
    # The store, read-only through `skyjobs db`, next to the running controller.
    tables = dict(line.split() for line in cli(state, "db").stdout.splitlines()[1:])
    assert tables["jobs"] == "1" and int(tables["events"]) >= 4
    rows = [json.loads(line) for line in cli(state, "db", "jobs").stdout.splitlines()]
    assert [r["status"] for r in rows] == ["SUCCEEDED"]
    missing = cli(state, "db", "nope")
    assert missing.returncode == 1 and missing.stderr.startswith("error: no table 'nope'")


def test_db_never_shows_secrets(state: Path, tmp_path: Path) -> None:
    task = tmp_path / "s.yaml"
    task.write_text("resources: {cloud: local, cpus: 2}\nsecrets: {TOKEN: null}\nrun: 'true'\n")
    assert cli(state, "submit", str(task), "--env", "TOKEN=hunter2").returncode == 0
    dump = cli(state, "db", "jobs")
    assert dump.returncode == 0 and "TOKEN" in dump.stdout and "hunter2" not in dump.stdout


def test_bad_yaml_is_one_line_nonzero_and_stores_nothing(state: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("resources:\n  gpuz: 1\nrun: x\n")
    r = cli(state, "submit", str(bad))
    assert r.returncode == 1
    assert r.stderr.strip() == (f"error: {bad}: resources.gpuz: is not a supported key; "
                                "did you mean gpus?")
    assert "Traceback" not in r.stderr
    assert not (state / "skyjobs.db").exists()  # rejected before any controller was needed


def test_impossible_request_is_rejected_by_the_controller(state: Path, tmp_path: Path) -> None:
    t = tmp_path / "big.yaml"
    t.write_text("resources: {cloud: local, accelerators: 'A100:16'}\nrun: x\n")
    r = cli(state, "submit", str(t))
    assert r.returncode == 1
    assert "no offering" in r.stderr and str(t) in r.stderr
    assert json.loads(cli(state, "queue", "--json").stdout) == []


@pytest.mark.parametrize("args", [
    ["status", "1"], ["queue"], ["events", "3"], ["logs", "1"], ["cancel", "--all"],
])
def test_no_controller_is_a_clear_error(state: Path, args: list[str]) -> None:
    r = cli(state, *args)
    assert r.returncode == 3
    assert r.stderr.startswith("error: no controller is running on")
    assert "Traceback" not in r.stderr


def test_usage_errors_are_clean(state: Path) -> None:
    r = cli(state, "cancel")
    assert r.returncode == 2 and "give job ids, --name, --array or --all" in r.stderr
    r = cli(state, "submit", "x.yaml", "--env", "=novalue")
    assert r.returncode == 2 and "is not KEY=VALUE or KEY" in r.stderr
    r = cli(state, "preempt", "1", "--notice", "-5")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_plan_ranks_candidates_and_launches_nothing(state: Path) -> None:
    r = cli(state, "plan", str(ROOT / "examples" / "ordered.yaml"), "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    first = plan["candidates"][0]
    assert (first["zone"], first["spot"]) == ("local-b", True)  # the user's first choice
    assert not (state / "local-cloud" / "instances").exists() or not list(
        (state / "local-cloud" / "instances").iterdir())
    assert not (state / "controller.json").exists()  # plan starts no controller


def test_missing_job_and_unknown_zone_are_clean_errors(state: Path, tmp_path: Path) -> None:
    t = tmp_path / "t.yaml"
    t.write_text("resources: {cloud: local, cpus: 2}\nrun: 'true'\n")
    assert cli(state, "submit", str(t)).returncode == 0
    r = cli(state, "status", "42")
    assert r.returncode == 1 and r.stderr.strip() == "error: job 42 does not exist"
    r = cli(state, "capacity", "mars-1", "--no-spot")
    assert r.returncode == 1 and "unknown local zone 'mars-1'" in r.stderr


def test_the_readme_demo_command_succeeds() -> None:
    r = subprocess.run([sys.executable, "-m", "skyjobs", "demo"], capture_output=True,
                       text=True, timeout=150, cwd=ROOT, env={**os.environ})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resumed from checkpoint at step" in r.stdout
    assert "success: preempted, resumed from its checkpoint, SUCCEEDED" in r.stdout


@pytest.mark.parametrize(("text", "fragment"), [
    ("a: " + "[" * 10_000 + "]" * 10_000, "nested more than 32 levels deep"),
    ("num_nodes: " + "9" * 5000, "num_nodes (line 1): a 5000-digit number is too long"),
    ('workdir: "./src\\0"\nrun: x\n', "workdir: contains a NUL byte"),
    ("resources: {accelerators: 'V100:inf'}\nrun: x\n", "count must be a whole number"),
    ("- just\n- a list\n", "the task must be a YAML mapping"),
    ("42\n", "the task must be a YAML mapping"),
])
def test_bad_input_is_one_error_line_never_a_traceback(state: Path, tmp_path: Path,
                                                       text: str, fragment: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    for args in (["submit", str(bad)], ["plan", str(bad)]):
        r = cli(state, *args)
        assert r.returncode == 1, r.stderr
        assert r.stderr.startswith(f"error: {bad}: ") and fragment in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (state / "skyjobs.db").exists()  # refused before a controller was needed


def test_bad_env_override_and_unreadable_file_are_refused_locally(state: Path,
                                                                   tmp_path: Path) -> None:
    t = tmp_path / "t.yaml"
    t.write_text("resources: {cloud: local, cpus: 2}\nrun: 'true'\n")
    r = cli(state, "submit", str(t), "--env", "1X=5")
    assert r.returncode == 1
    assert r.stderr.strip() == "error: --env: '1X' is not a valid environment variable name"
    r = cli(state, "submit", str(tmp_path / "missing" / "t.yaml"))
    assert r.returncode == 1 and "cannot read" in r.stderr and "Traceback" not in r.stderr
    assert not (state / "skyjobs.db").exists()
