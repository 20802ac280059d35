#!/usr/bin/env python3
"""HA failover benchmark: several real controllers on one PostgreSQL, N live simulated agents.

Two clusters, each on a fresh schema of the local PostgreSQL server (dropped at the end) and
its own load generator (``bench/fleet_cloud.py``: the simulated cloud and its agents, which
fail over between controllers as ``skyjobs/node/client.py`` does), loopback only:

1. *single*: one controller. Ramp N jobs to RUNNING, then a zone reclaim of ``--notices``
   of them (every notice in the same instant, 10 s deadline): notice -> RECOVERING.
2. *ha*: ``--controllers`` controllers. N jobs submitted spread evenly over them (a job runs
   where it was submitted), the same reclaim, then, once every job is RUNNING on one live
   attempt again, ``kill -9`` of the controller owning the most jobs. For each of its jobs:
   - **re-owned**: the ``at`` of the takeover info event ("controller B took the job over
     from A (lease token N)", written in the claim's transaction) minus the kill time;
   - **re-attached**: the first heartbeat of the job's agent answered by the new owner as
     owner (the request went to B's agent URL, at or after the takeover event, and the
     answer's ``controllers`` list starts with B, i.e. not a redirect), minus the kill time.
     From then on the owner's liveness judgement (``AgentSessions.heard``) includes the
     agent. Timed by the generator when the answer arrives.
   - **lost**: a job of the victim that, ``--settle`` seconds after the last job was
     re-attached (or when ``--failover-wait`` ran out), is not RUNNING, or is not leased to
     a live controller, or was moved to RECOVERING or given a new attempt after the kill
     (its instances were not re-attached but relaunched). Must be 0.

Notice -> RECOVERING is the first ``RECOVERING`` transition event of each reclaimed job minus
the instant the generator issued the notices, as bench/fleet.py measures it.

    nice -n 10 .venv/bin/python bench/ha_failover.py --jobs 1000 --controllers 3 --lease 30

Prints one JSON line per phase as it ends, then the whole summary. Targets (issue): every
job re-owned and re-attached within lease + 10 s; notice p99 with three controllers within
1.5x of one controller's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from fleet import http  # (bench/ is on the path: this file runs as a script beside it)

ROOT = Path(__file__).resolve().parent.parent
BASE_URL = os.environ.get("SKYJOBS_BENCH_DATABASE_URL",
                          "postgresql://postgres@127.0.0.1:5432/postgres")
TASK = {"name": "ha", "resources": {"cloud": "local", "cpus": 2, "use_spot": True},
        "run": "python train.py  # simulated by bench/fleet_cloud.py"}
ARRAY_MAX = 1000  # jobs per submit (the API's num_jobs limit)
TAKEOVER = "took the job over from"


class Deadline:
    """The run's overall bound (--time-limit): every wait takes the smaller of its own."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, want: float) -> float:
        return max(0.0, min(want, self.end - time.monotonic()))


DEADLINE = Deadline(3600.0)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 3)


def dist(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_s": pct(values, 0.5), "p99_s": pct(values, 0.99),
            "max_s": pct(values, 1.0)}


def wait(what: str, check: Callable[[], Any], limit_s: float, every: float = 0.5) -> Any:
    """Poll ``check`` until truthy, at most ``limit_s`` (and the run's deadline)."""
    deadline = time.monotonic() + DEADLINE.left(limit_s)
    while True:
        try:
            value = check()
        except (OSError, urllib.error.URLError, ValueError, psycopg.Error):
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {limit_s:.0f}s waiting for {what}")
        time.sleep(every)


# --- a fresh schema ---------------------------------------------------------------------------

def schema_url(schema: str) -> str:
    sep = "&" if "?" in BASE_URL else "?"
    return (f"{BASE_URL}{sep}options={quote(f'-csearch_path={schema}')}"
            f"&application_name={schema}")


def create_schema(prefix: str) -> str:
    schema = f"{prefix}_{secrets.token_hex(5)}"
    with psycopg.connect(BASE_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return schema


def drop_schema(schema: str) -> None:
    with psycopg.connect(BASE_URL, autocommit=True, connect_timeout=5) as conn:
        # Sessions of a killed controller would hold locks the DROP waits on.
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE application_name = %s AND pid <> pg_backend_pid()", (schema,))
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# --- one cluster: a generator and its controllers ---------------------------------------------

class Controller:
    def __init__(self, state: Path, env: dict[str, str]) -> None:
        self.state, self.env = state, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = self.token = self.member = ""

    def start(self) -> None:
        self.state.mkdir(mode=0o700, exist_ok=True)
        log = open(self.state.parent / f"{self.state.name}-controller.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "skyjobs", "--state-dir", str(self.state), "controller",
             "--port", "0"], env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            cwd=ROOT)
        log.close()
        wait(f"controller {self.state.name}", self._healthy, 120, every=0.2)
        self.member = (self.state / "member").read_text().strip()

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise SystemExit(f"controller exited with {self.proc.returncode}; see "
                             f"{self.state.parent / (self.state.name + '-controller.log')}")
        self.url = f"http://127.0.0.1:{(self.state / 'port').read_text().strip()}"
        self.token = (self.state / "token").read_text().strip()
        return bool(self.api("GET", "/api/v1/health", timeout=5)["ok"])

    def api(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> Any:
        return http(method, f"{self.url}{path}", body, self.token, timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class Cluster:
    def __init__(self, name: str, n_ctl: int, args: argparse.Namespace) -> None:
        self.name, self.n_ctl, self.args = name, n_ctl, args
        self.dir = Path(tempfile.mkdtemp(prefix=f"skyjobs-ha-{name}-"))
        self.schema = create_schema(f"bench_ha_{name}")
        self.db_url = schema_url(self.schema)
        self.gen_proc: subprocess.Popen[bytes] | None = None
        self.gen_url = ""
        self.ctls: list[Controller] = []

    def start(self) -> None:
        port_file = self.dir / "fleet.port"
        log = open(self.dir / "fleet_cloud.log", "ab")  # noqa: SIM115
        cmd = [sys.executable, str(ROOT / "bench" / "fleet_cloud.py"), "--port-file",
               str(port_file), "--log-every", str(self.args.log_every), "--boot-delay",
               str(self.args.boot_delay)]
        if self.args.agents_follow_owner:
            cmd.append("--agents-follow-owner")
        self.gen_proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        port = wait("the load generator", lambda: port_file.exists() and port_file.read_text(),
                    30)
        self.gen_url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "SKYJOBS_LOCAL_BACKEND": self.gen_url,
               "SKYJOBS_DATABASE_URL": self.db_url, "SKYJOBS_LEASE_SECONDS": str(self.args.lease),
               "SKYJOBS_LOG_FORMAT": "json", "SKYJOBS_PROVISION_TIMEOUT": "3600",
               **dict(kv.split("=", 1) for kv in self.args.env)}
        for i in range(self.n_ctl):
            c = Controller(self.dir / f"c{i}", env)
            c.start()  # one at a time: the first migrates the schema
            self.ctls.append(c)
        wait("every controller registered", lambda: self.scalar(
            "SELECT COUNT(*) FROM controllers WHERE stopped_at IS NULL") == self.n_ctl, 30)
        # Each learns its peers at its next renewal (a third of a lease); launches carry them.
        if self.n_ctl > 1:
            time.sleep(DEADLINE.left(self.args.lease / 3 + 1.0))

    def stop(self) -> None:
        for c in self.ctls:
            c.stop()
        if self.gen_proc is not None and self.gen_proc.poll() is None:
            self.gen_proc.send_signal(signal.SIGTERM)
            try:
                self.gen_proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.gen_proc.kill()
        try:
            drop_schema(self.schema)
        except psycopg.Error as err:
            print(f"could not drop schema {self.schema}: {err}", file=sys.stderr)
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- reads ---------------------------------------------------------------------------------

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db_url, autocommit=True, connect_timeout=5) as conn:
            return [tuple(r) for r in conn.execute(sql, params)]

    def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.rows(sql, params)[0][0]

    def counts(self) -> dict[str, int]:
        return dict(self.rows("SELECT status, COUNT(*) FROM jobs GROUP BY status"))

    def gen(self, method: str, path: str, body: Any = None) -> Any:
        return http(method, f"{self.gen_url}{path}", body, timeout=60)

    def steady(self, n: int, limit_s: float) -> None:
        """Every job RUNNING on exactly one unreleased attempt, every agent heartbeating."""
        wait("every job RUNNING on one live attempt", lambda: self.counts().get("RUNNING", 0)
             == n and self.scalar("SELECT COUNT(*) FROM attempts WHERE released = 0") == n,
             limit_s, every=1.0)
        wait("every agent heartbeating", lambda: self.gen("GET", "/ctl/stats")[
            "running_agents"] == n, limit_s, every=1.0)


# --- phases ----------------------------------------------------------------------------------

def ramp(cl: Cluster, n: int) -> dict[str, Any]:
    t0 = time.time()
    for i, c in enumerate(cl.ctls):  # spread evenly: a job runs where it was submitted
        left = n // len(cl.ctls) + (1 if i < n % len(cl.ctls) else 0)
        while left:
            k = min(ARRAY_MAX, left)
            c.api("POST", "/api/v1/jobs", {"task": TASK, "num_jobs": k}, timeout=300)
            left -= k
    submitted = time.time()
    cl.steady(n, cl.args.phase_limit)
    owners = dict(cl.rows("SELECT owner, COUNT(*) FROM job_leases GROUP BY owner"))
    return {"submit_s": round(submitted - t0, 1), "all_running_s": round(time.time() - t0, 1),
            "jobs_by_owner": owners, "takeovers_so_far": takeovers(cl)}


def takeovers(cl: Cluster) -> int:
    """Takeover events so far: with every controller alive there should be none (a lease
    that lapsed under load moves its job to another controller)."""
    return int(cl.scalar("SELECT COUNT(*) FROM events WHERE kind = 'info' AND reason LIKE %s",
                         (f"%{TAKEOVER}%",)))


def notices(cl: Cluster, n: int) -> dict[str, Any]:
    """A zone reclaim of --notices running jobs at one instant: notice -> RECOVERING."""
    time.sleep(DEADLINE.left(cl.args.settle))
    shot = cl.gen("POST", "/ctl/reclaim", {"count": min(cl.args.notices, n), "notice_s": 10.0,
                                           "checkpoint_s": 2.0, "outage": False})
    issued = float(shot["issued_at"])
    jobs = sorted({int(v[1]) for v in shot["victims"]})
    owner = dict(cl.rows("SELECT job_id, owner FROM job_leases WHERE job_id = ANY(%s)",
                         (jobs,)))

    def recovering() -> dict[int, float]:
        rows = cl.rows("SELECT job_id, MIN(at) FROM events WHERE at >= %s AND to_status ="
                       " 'RECOVERING' AND job_id = ANY(%s) GROUP BY job_id", (issued - 1, jobs))
        return {int(j): float(at) - issued for j, at in rows}

    try:
        wait("every notice recorded as RECOVERING", lambda: len(recovering()) == len(jobs),
             60, every=0.5)
    except TimeoutError:
        pass  # the figure says how many
    rec = recovering()
    by_owner: dict[str, list[float]] = {}
    for j, dt in rec.items():
        by_owner.setdefault(str(owner.get(j)), []).append(dt)
    out = {"notices": len(jobs), "zone": shot["zone"], "recovering_recorded": len(rec),
           "notice_to_recovering": dist(list(rec.values())),
           "notice_to_recovering_p99_s_by_owner": {o: pct(v, 0.99)
                                                   for o, v in sorted(by_owner.items())}}
    # Back to a steady fleet (replacements RUNNING, the reclaimed attempts released).
    t0 = time.time()
    cl.steady(n, cl.args.phase_limit)
    out["back_to_steady_s"] = round(time.time() - t0, 1)
    out["takeovers_so_far"] = takeovers(cl)
    return out


def failover(cl: Cluster, n: int) -> dict[str, Any]:
    args = cl.args
    time.sleep(DEADLINE.left(args.settle))
    by_member = {c.member: c for c in cl.ctls}
    leases = cl.rows("SELECT l.job_id, l.owner FROM job_leases l JOIN jobs j ON j.id = l.job_id"
                     " WHERE j.status = 'RUNNING'")
    per_owner: dict[str, list[int]] = {}
    for j, o in leases:
        per_owner.setdefault(str(o), []).append(int(j))
    victim_member = max(per_owner, key=lambda o: len(per_owner[o]))
    victim = by_member[victim_member]
    theirs = sorted(per_owner[victim_member])
    attempts_before = dict(cl.rows("SELECT job_id, COUNT(*) FROM attempts GROUP BY job_id"))
    launches_before = len(cl.gen("GET", "/ctl/launches")["launches"])
    agent_urls = {m: str(u).rstrip("/") for m, u in cl.rows("SELECT id, agent_url FROM"
                                                            " controllers")}
    cl.gen("POST", "/ctl/mark")  # the generator notes every heartbeat answer from now on
    killed = time.time()
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(timeout=30)

    def taken() -> dict[int, tuple[float, str]]:
        rows = cl.rows("SELECT job_id, at, reason FROM events WHERE kind = 'info' AND at >= %s"
                       " AND reason LIKE %s AND job_id = ANY(%s) ORDER BY at",
                       (killed - 1, f"%{TAKEOVER} {victim_member} %", theirs))
        out: dict[int, tuple[float, str]] = {}
        for j, at, reason in rows:  # the first takeover of each job
            out.setdefault(int(j), (float(at), str(reason).split()[1]))
        return out

    live_attempt = dict(cl.rows("SELECT id, job_id FROM attempts WHERE released = 0"
                                " AND job_id = ANY(%s)", (theirs,)))

    def attached(owned: dict[int, tuple[float, str]]) -> dict[int, float]:
        out: dict[int, float] = {}
        for _iid, (job, attempt, heard) in cl.gen("GET", "/ctl/heard")["heard"].items():
            if live_attempt.get(attempt) != job or job not in owned:
                continue
            at_owned, owner = owned[job]
            url = agent_urls.get(owner)
            for at, answered, first in heard:
                if at >= at_owned and answered == url and (first or "").rstrip("/") == url:
                    out[job] = min(out.get(job, math.inf), at)
                    break
        return out

    state: dict[str, Any] = {}

    def done() -> bool:
        state["owned"] = owned = taken()
        state["attached"] = got = attached(owned)
        return len(owned) == len(theirs) and len(got) == len(theirs)

    finished = True
    try:
        wait("every job of the killed controller re-owned and re-attached", done,
             args.failover_wait, every=1.0)
    except TimeoutError:
        finished = False
    waited = time.time() - killed
    owned, got = state.get("owned", {}), state.get("attached", {})
    if args.keep:  # the raw evidence, for a person to read
        (cl.dir / "failover.json").write_text(json.dumps({
            "killed": killed, "victim": victim_member, "agent_urls": agent_urls,
            "owned": owned, "heard": cl.gen("GET", "/ctl/heard")["heard"]}))
    time.sleep(DEADLINE.left(args.settle))
    # Nothing lost: each job still RUNNING, leased to a live controller, on the attempt it
    # had, with no move to RECOVERING since the kill.
    live_members = [m for m, c in by_member.items() if c.alive()]
    rows = cl.rows("SELECT j.id, j.status, l.owner, l.expires_at > EXTRACT(EPOCH FROM"
                   " clock_timestamp()) FROM jobs j LEFT JOIN job_leases l ON l.job_id = j.id"
                   " WHERE j.id = ANY(%s)", (theirs,))
    not_running = {int(r[0]) for r in rows if r[1] != "RUNNING"}
    not_owned = {int(r[0]) for r in rows if r[2] not in live_members or not r[3]}
    attempts_after = dict(cl.rows("SELECT job_id, COUNT(*) FROM attempts GROUP BY job_id"))
    relaunched = {j for j in theirs if attempts_after.get(j, 0) != attempts_before.get(j, 0)}
    recovered = {int(r[0]) for r in cl.rows(
        "SELECT DISTINCT job_id FROM events WHERE at >= %s AND to_status = 'RECOVERING'"
        " AND job_id = ANY(%s)", (killed, theirs))}
    silent = cl.scalar("SELECT COUNT(DISTINCT job_id) FROM events WHERE at >= %s AND kind ="
                       " 'info' AND reason LIKE 'agent on node %%silent%%' AND job_id = ANY(%s)",
                       (killed, theirs))
    silent_sample = [f"job {j}: {r}" for j, r in cl.rows(
        "SELECT job_id, reason FROM events WHERE at >= %s AND kind = 'info' AND reason LIKE"
        " 'agent%%silent%%' AND job_id = ANY(%s) ORDER BY at LIMIT 2", (killed, theirs))]
    others_recovered = cl.scalar(
        "SELECT COUNT(DISTINCT job_id) FROM events WHERE at >= %s AND to_status = 'RECOVERING'"
        " AND NOT job_id = ANY(%s)", (killed, theirs))
    lost = not_running | not_owned | relaunched | recovered
    new_owners: dict[str, int] = {}
    for _, o in owned.values():
        new_owners[o] = new_owners.get(o, 0) + 1
    stats = cl.gen("GET", "/ctl/stats")
    re_owned = [at - killed for at, _ in owned.values()]
    # The claims that took the jobs over: [s after the kill, new owner, jobs] (events of one
    # owner less than 1 s apart are one claim transaction).
    claims: list[list[Any]] = []
    for at, o in sorted(owned.values()):
        if claims and claims[-1][1] == o and at - claims[-1][3] < 1.0:
            claims[-1][2] += 1
            claims[-1][3] = at
        else:
            claims.append([round(at - killed, 1), o, 1, at])
    re_attached = [at - killed for at in got.values()]
    last = max([*re_owned, *re_attached], default=None)
    return {
        "victim": victim_member, "victim_jobs": len(theirs), "of_jobs": n,
        "re_owned": dist(re_owned), "re_attached": dist(re_attached),
        "re_owned_jobs": len(owned), "re_attached_jobs": len(got),
        "not_re_attached_by_new_owner": sorted(set(owned) - set(got))[:20],
        "all_within_lease_plus_10s": bool(finished and last is not None
                                          and last <= args.lease + 10),
        "finished_within_wait": finished, "waited_s": round(waited, 1),
        "new_owners": new_owners, "claims": [c[:3] for c in claims],
        "jobs_lost": len(lost),
        "lost_detail": {"not_running": len(not_running), "not_leased_to_live": len(not_owned),
                        "new_attempt": len(relaunched), "recovering_since_kill": len(recovered)},
        "jobs_with_silence_event": silent, "silence_events_sample": silent_sample,
        "other_jobs_recovering_since_kill": others_recovered,
        "launch_calls_since_kill": len(cl.gen("GET", "/ctl/launches")["launches"])
        - launches_before,
        "agent_failovers": stats["counts"].get("agent_failovers", 0),
        "agent_moved_on": {k.removeprefix("agent_moved_on_"): v for k, v in
                           stats["counts"].items() if k.startswith("agent_moved_on_")},
    }


def run_cluster(name: str, n_ctl: int, args: argparse.Namespace,
                phases: list[tuple[str, Callable[[Cluster, int], dict[str, Any]]]]
                ) -> dict[str, Any]:
    result: dict[str, Any] = {"controllers": n_ctl}
    cl = Cluster(name, n_ctl, args)
    result.update(schema=cl.schema, dir=str(cl.dir))
    try:
        cl.start()
        for phase, fn in phases:
            try:
                result[phase] = fn(cl, args.jobs)
            except TimeoutError as err:  # a phase that does not finish in time is a figure too
                result[phase] = {"did_not_finish": str(err), "jobs": cl.counts()}
                print(json.dumps({"cluster": name, phase: result[phase]}), flush=True)
                break
            print(json.dumps({"cluster": name, phase: result[phase]}), flush=True)
    finally:
        cl.stop()
    return result


def main() -> None:
    global DEADLINE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--controllers", type=int, default=3)
    ap.add_argument("--lease", type=float, default=30.0, help="SKYJOBS_LEASE_SECONDS")
    ap.add_argument("--notices", type=int, default=200, help="jobs reclaimed at one instant")
    ap.add_argument("--settle", type=float, default=10.0, help="pause before/after phases")
    ap.add_argument("--failover-wait", type=float, default=None,
                    help="bound on the wait for re-owned and re-attached (3 leases + 60 s)")
    ap.add_argument("--phase-limit", type=float, default=600.0, help="bound on other waits")
    ap.add_argument("--time-limit", type=float, default=1800.0, help="bound on the whole run")
    ap.add_argument("--log-every", type=float, default=10.0)
    ap.add_argument("--boot-delay", type=float, default=1.0)
    ap.add_argument("--skip-single", action="store_true", help="no one-controller cluster")
    ap.add_argument("--agents-follow-owner", action="store_true",
                    help="simulated agents move to the owner a heartbeat answer names first")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra controller environment (repeatable)")
    ap.add_argument("--keep", action="store_true", help="keep the state dirs and logs")
    args = ap.parse_args()
    if args.failover_wait is None:
        args.failover_wait = 3 * args.lease + 60
    DEADLINE = Deadline(args.time_limit)
    t0 = time.time()
    summary: dict[str, Any] = {
        "jobs": args.jobs, "controllers": args.controllers, "lease_s": args.lease,
        "notices": args.notices, "cores": os.cpu_count(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}
    if not args.skip_single:
        summary["single"] = run_cluster("one", 1, args, [("ramp", ramp), ("notice", notices)])
    summary["ha"] = run_cluster("ha", args.controllers, args, [
        ("ramp", ramp), ("notice", notices), ("failover", failover)])
    one = (summary.get("single", {}).get("notice") or {}).get("notice_to_recovering", {})
    ha = (summary["ha"].get("notice") or {}).get("notice_to_recovering", {})
    if one.get("p99_s") and ha.get("p99_s"):
        summary["notice_p99_ratio_ha_over_single"] = round(ha["p99_s"] / one["p99_s"], 2)
        summary["notice_within_1_5x"] = ha["p99_s"] <= 1.5 * one["p99_s"]
    summary["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    summary["elapsed_s"] = round(time.time() - t0, 1)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
