"""Several controllers on one PostgreSQL: real controller processes, real agents, the local
provider's instances shared by all (as a cloud account would be), and a fresh schema.

kill -9 of a controller: its jobs are taken over and finish, nothing booted twice, nothing
left running. SIGSTOP past the lease: another controller takes over, and the stopped one,
once resumed, writes nothing more for those jobs and stands down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skyjobs.providers.local_instance import kill_session, read_json
from tests import pg
from tests.conftest import ControllerProc, task, wait_for

LEASE = 6.0


class Cluster:
    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp, self.url = tmp, url
        self.cloud = tmp / "cloud"
        self.procs: list[ControllerProc] = []

    def start(self, n: int, **extra: str) -> list[ControllerProc]:
        for i in range(n):
            env = {"SKYJOBS_DATABASE_URL": self.url, "SKYJOBS_LOCAL_CLOUD_DIR": str(self.cloud),
                   "SKYJOBS_LEASE_SECONDS": str(LEASE),
                   # Silence is judged by the owner alone; give failed-over agents time.
                   "SKYJOBS_HEARTBEAT_TIMEOUT": "10", "SKYJOBS_SILENT_WINDOW": "30", **extra}
            self.procs.append(ControllerProc(self.tmp / f"c{i}", env).start())
        # Each learns its peers at its next lease renewal (launches carry the list).
        wait_for("every controller registered", lambda: len(self.procs[0].query(
            "SELECT id FROM controllers WHERE stopped_at IS NULL")) == n, timeout=20)
        time.sleep(LEASE / 3 + 0.5)
        return self.procs

    def instances(self) -> dict[str, dict[str, Any]]:
        root = self.cloud / "instances"
        if not root.exists():
            return {}
        return {p.name: read_json(p / "instance.json") or {} for p in sorted(root.iterdir())}

    def cleanup(self) -> None:
        for p in self.procs:
            if p.proc is not None and p.proc.poll() is None:
                try:
                    os.kill(p.proc.pid, signal.SIGCONT)
                except OSError:
                    pass
                p.stop()
        for state in self.instances().values():
            if isinstance(state.get("sid"), int):
                kill_session(state["sid"])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with pg.fresh_schema("ha") as url:
        c = Cluster(tmp_path, url)
        try:
            yield c
        finally:
            c.cleanup()


def owners(c: ControllerProc, job_ids: list[int]) -> dict[int, str]:
    rows = c.query("SELECT job_id, owner FROM job_leases")
    return {j: o for j, o in rows if j in job_ids}


def full_log(c: ControllerProc) -> str:
    return (c.state_dir.parent / f"{c.state_dir.name}-controller.log").read_text(
        errors="replace")


def member_of(c: ControllerProc) -> str:
    return (c.state_dir / "member").read_text().strip()


def test_a_killed_controllers_jobs_are_taken_over_and_finish(cluster: Cluster) -> None:
    # A silent window shorter than the survivors' uptime at the takeover: an adopted agent
    # must get it from the adoption (it has to find its new owner first), not from the
    # owner's own start, or healthy jobs would be relaunched.
    procs = cluster.start(3, SKYJOBS_SILENT_WINDOW="12", SKYJOBS_HEARTBEAT_TIMEOUT="4")
    run = "for i in $(seq 1 25); do sleep 1; done; echo finished"
    jobs = [procs[i % 3].submit(task(run, name=f"j{i}")) for i in range(9)]
    for j in jobs:
        procs[1].wait_status(j, "RUNNING", timeout=60)
    victim = procs[0]
    before = owners(procs[1], jobs)
    theirs = [j for j, o in before.items() if o == member_of(victim)]
    assert len(theirs) >= 2, before  # (new jobs are spread: fewest leases first)
    attempts_before = {j: len(procs[1].job(j)["attempt_list"]) for j in jobs}
    victim.kill9()

    for j in jobs:
        done = procs[1].wait_status(j, "SUCCEEDED", "FAILED", "CANCELLED", timeout=120)
        assert done["status"] == "SUCCEEDED", (j, procs[1].events(j))
    after = owners(procs[1], jobs)  # (leases of finished, released jobs are dropped)
    assert all(o != member_of(victim) for o in after.values())
    for j in theirs:
        reasons = [e.get("reason") or "" for e in procs[1].events(j)]
        assert any("took the job over" in r for r in reasons), reasons
        # Re-attached, not relaunched: the instances outlived their controller.
        assert len(procs[1].job(j)["attempt_list"]) == attempts_before[j], procs[1].events(j)
    launched = procs[1].query("SELECT instance_ids FROM attempts")
    ids = [i for (row,) in launched for i in json.loads(row)]
    assert len(ids) == len(set(ids))  # no instance id launched twice
    wait_for("every instance released", lambda: procs[1].query(
        "SELECT COUNT(*) FROM attempts WHERE released=0")[0][0] == 0, timeout=60)

    # What an operator sees: the dead controller is no longer live; duties moved on.
    out = subprocess.run([sys.executable, "-m", "skyjobs", "--state-dir", str(procs[1].state_dir),
                          "status", "--controllers", "--json"], capture_output=True, text=True,
                         timeout=60, env=procs[1].env)
    assert out.returncode == 0, out.stderr
    seen = {c["id"]: c for c in json.loads(out.stdout)["controllers"]}
    assert not seen[member_of(victim)]["live"]
    assert all(seen[member_of(p)]["live"] for p in procs[1:])
    duties = [set(p.client.controllers().duties) for p in procs[1:]]
    assert not duties[0] & duties[1]  # each duty held by one controller


def test_a_paused_owner_is_fenced_off_and_stands_down(cluster: Cluster) -> None:
    procs = cluster.start(2)
    stale, other = procs
    run = "for i in $(seq 1 30); do sleep 1; done; echo finished"
    submitted = [stale.submit(task(run, name=f"p{i}")) for i in range(4)]
    for j in submitted:
        other.wait_status(j, "RUNNING", timeout=60)
    jobs = [j for j, o in owners(other, submitted).items() if o == member_of(stale)]
    assert len(jobs) == 2  # spread: two each
    token_before = dict(other.query("SELECT job_id, token FROM job_leases"))
    assert stale.proc is not None
    os.kill(stale.proc.pid, signal.SIGSTOP)
    try:
        wait_for("the other controller owns the jobs", lambda: set(
            owners(other, jobs).values()) == {member_of(other)}, timeout=4 * LEASE)
    finally:
        os.kill(stale.proc.pid, signal.SIGCONT)
    tokens = dict(other.query("SELECT job_id, token FROM job_leases"))
    assert all(tokens[j] > token_before[j] for j in jobs)
    wait_for("the resumed controller stands down", lambda: "standing down" in full_log(stale)
             or "lease lost" in full_log(stale), timeout=3 * LEASE)
    for j in jobs:
        done = other.wait_status(j, "SUCCEEDED", "FAILED", "CANCELLED", timeout=120)
        assert done["status"] == "SUCCEEDED", (j, other.events(j))
        assert len(done["attempt_list"]) == 1, other.events(j)  # nobody relaunched it
    assert owners(other, jobs) == {} or set(owners(other, jobs).values()) == {member_of(other)}


def test_every_controller_stops_when_a_newer_schema_appears(cluster: Cluster) -> None:
    procs = cluster.start(2)
    import psycopg

    from skyjobs.controller.store import MIGRATIONS

    with psycopg.connect(cluster.url, autocommit=True) as conn:  # a newer skyjobs migrated
        conn.execute("INSERT INTO schema_migrations(version, applied_at) VALUES (%s, 0)",
                     (len(MIGRATIONS) + 1,))
    for p in procs:
        assert p.proc is not None
        code = wait_for("the controller to stop", lambda p=p: p.proc.poll() is not None,
                        timeout=30)
        assert code and p.proc.returncode != 0  # systemd restarts it, on the new code
        assert "newer than this skyjobs knows" in full_log(p)
