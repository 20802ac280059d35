"""More failures of several controllers on one PostgreSQL, with real controller processes,
real agents and the local provider's instances shared by all (as in test_controllers.py).

- Many jobs spread over three controllers, preemptions injected through random controllers,
  and a kill -9 of the busiest controller mid-run: every job succeeds, nothing is launched
  twice, nothing is left running, every job's transitions follow the state machine, and
  every transition's webhook deliveries are queued once per hook and all arrive.
- A kill -9 of the controller holding the singleton duties: the duties move to the
  survivors (webhook deliveries keep flowing; a planted orphan instance is swept).
- An agent whose first controller is dead reaches the next one: a preemption notice heard
  by the survivor moves the job to RECOVERING before anyone took its lease over, and the
  job recovers on a new attempt. (A redirect to an owner that had just died once stranded
  the agent on it: the answering controller now stays in the list.)
- An agent adopted in a takeover is judged silent from the takeover, not from the new
  owner's start: its live job is re-attached, not relaunched.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from skyjobs.controller.webhooks import verify_signature
from skyjobs.providers.local_instance import read_json, session_members
from skyjobs.states import TRANSITIONS, JobStatus
from tests import pg
from tests.conftest import ControllerProc, wait_for
from tests.ha.test_controllers import LEASE, Cluster, full_log, member_of

HOOK_SECRET = "ha-webhook-secret-0123456789"
HOOKS = ("ops", "audit")  # two hooks: each transition is queued (and delivered) once per hook
DUTIES = ("sweep_orphans", "poll_prices", "retention", "webhooks")
DUTY_INTERVAL = 2.0  # test 2's controllers run their singleton duties this often


def run_script(first: int, later: int = 2) -> str:
    """A job that runs ``first`` seconds on its first attempt and ``later`` on the others
    (a recovered job has nothing to redo here: no checkpoint needed)."""
    return (f'if [ "$SKYJOBS_ATTEMPT" = 1 ]; then n={first}; else n={later}; fi; '
            'for i in $(seq 1 $n); do sleep 1; done; echo finished')


def story(events: list[dict[str, Any]]) -> str:
    """A job's events, one line each, for failure messages."""
    return "\n" + "\n".join(
        f"{e['id']:>5} {e['at']:.2f} {e['kind']:<10} {e.get('from_status') or '-'} -> "
        f"{e.get('to_status') or '-'} {e.get('reason') or ''}" for e in events)


def small_task(run: str, name: str) -> dict[str, Any]:
    return {"name": name, "resources": {"cloud": "local", "cpus": 2, "use_spot": True},
            "run": run}


# --- a webhook receiver ----------------------------------------------------------------------

class HookReceiver:
    """A real HTTP endpoint on 127.0.0.1 that acknowledges everything and records each
    delivery's id (X-Skyjobs-Delivery) and whether its signature verified."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                ok = verify_signature(HOOK_SECRET, self.headers.get("X-Skyjobs-Timestamp", ""),
                                      body, self.headers.get("X-Skyjobs-Signature", ""))
                with owner.lock:
                    owner.seen.append({"path": self.path, "signed": ok,
                                       "delivery": self.headers.get("X-Skyjobs-Delivery"),
                                       "at": time.time()})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def env(self) -> dict[str, str]:
        """SKYJOBS_WEBHOOKS for every controller (each queues deliveries for its hooks)."""
        return {"SKYJOBS_WEBHOOKS": json.dumps([
            {"name": h, "url": f"http://127.0.0.1:{self.port}/{h}", "secret": HOOK_SECRET,
             "events": ["all"]} for h in HOOKS])}

    def deliveries(self) -> set[str]:
        with self.lock:
            return {str(r["delivery"]) for r in self.seen}

    def unsigned(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.seen if not r["signed"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[HookReceiver]:
    r = HookReceiver()
    yield r
    r.close()


# --- a cluster with extra settings -----------------------------------------------------------

# The orphan sweep (daemon.ORPHAN_SWEEP_INTERVAL, 300 s) and the retention sweep
# (retention.SWEEP_INTERVAL, 3600 s) are constants no setting shortens: a controller that
# did not hold the duty at its start tries again only that much later. Test 2's controllers
# run the real daemon with both constants shortened, so the hand-over is seen in seconds.
SHORT_DUTIES_BOOT = """
import os, runpy, sys
from skyjobs.controller import daemon, retention
daemon.ORPHAN_SWEEP_INTERVAL = float(os.environ["HA_TEST_DUTY_INTERVAL"])
retention.SWEEP_INTERVAL = float(os.environ["HA_TEST_DUTY_INTERVAL"])
sys.argv = ["skyjobs", *sys.argv[1:]]
runpy.run_module("skyjobs", run_name="__main__")
"""


class ShortDutiesProc(ControllerProc):
    """ControllerProc.start, with the daemon's sweep intervals shortened (see above)."""

    def start(self) -> ControllerProc:
        (self.state_dir / "controller.json").unlink(missing_ok=True)
        log = open(self.state_dir.parent / f"{self.state_dir.name}-controller.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SHORT_DUTIES_BOOT, "--state-dir", str(self.state_dir),
             "controller", "--port", "0"],
            env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        self._client = wait_for("controller to come up", self._try_client, timeout=30)
        return self


class HaCluster(Cluster):
    def start_with(self, n: int, extra: dict[str, str],
                   proc_cls: type[ControllerProc] = ControllerProc,
                   lease: float = LEASE) -> list[ControllerProc]:
        for i in range(n):
            env = {"SKYJOBS_DATABASE_URL": self.url, "SKYJOBS_LOCAL_CLOUD_DIR": str(self.cloud),
                   "SKYJOBS_LEASE_SECONDS": str(lease),
                   "SKYJOBS_HEARTBEAT_TIMEOUT": "10", "SKYJOBS_SILENT_WINDOW": "30", **extra}
            self.procs.append(proc_cls(self.tmp / f"c{i}", env).start())
        wait_for("every controller registered", lambda: len(self.procs[0].query(
            "SELECT id FROM controllers WHERE stopped_at IS NULL")) == n, timeout=20)
        time.sleep(lease / 3 + 0.5)  # each learns its peers at its next renewal
        return self.procs

    def running_instances(self) -> list[str]:
        """Instances whose processes are really alive, whatever the files say."""
        return [name for name, state in self.instances().items()
                if isinstance(state.get("sid"), int) and session_members(state["sid"])]


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[HaCluster]:
    with pg.fresh_schema("ha") as url:
        c = HaCluster(tmp_path, url)
        try:
            yield c
        finally:
            c.cleanup()


# --- what the database says ------------------------------------------------------------------

def statuses(c: ControllerProc, jobs: list[int]) -> dict[int, str]:
    return {j: s for j, s in c.query("SELECT id, status FROM jobs") if j in jobs}


def wait_all_ended(c: ControllerProc, jobs: list[int], timeout: float) -> dict[int, str]:
    ended = {str(s) for s in JobStatus if s not in {JobStatus.PENDING, JobStatus.PROVISIONING,
                                                     JobStatus.RUNNING, JobStatus.RECOVERING,
                                                     JobStatus.CANCELLING}}

    def check() -> dict[int, str] | None:
        s = statuses(c, jobs)
        return s if s and all(v in ended for v in s.values()) else None

    return wait_for("every job to end", check, timeout=timeout, interval=0.5)


def launched_ids(c: ControllerProc) -> list[str]:
    return [i for (row,) in c.query("SELECT instance_ids FROM attempts") for i in json.loads(row)]


def transitions(c: ControllerProc) -> dict[int, list[tuple[int, str | None, str]]]:
    out: dict[int, list[tuple[int, str | None, str]]] = {}
    for eid, job, frm, to in c.query("SELECT id, job_id, from_status, to_status FROM events"
                                     " WHERE kind='transition' ORDER BY id"):
        out.setdefault(job, []).append((eid, frm, to))
    return out


def assert_paths_allowed(c: ControllerProc, jobs: list[int]) -> None:
    """Per job, the transition events in id order chain from None through TRANSITIONS to
    SUCCEEDED, each leaving the state the previous one entered."""
    by_job = transitions(c)
    for j in jobs:
        path = by_job.get(j, [])
        assert path, f"job {j} has no transition events"
        state: str | None = None
        last_id = 0
        for eid, frm, to in path:
            assert eid > last_id
            assert frm == state, (j, path)
            allowed = TRANSITIONS[JobStatus(frm) if frm is not None else None]
            assert JobStatus(to) in allowed, (j, f"{frm} -> {to} not allowed", path)
            state, last_id = to, eid
        assert state == "SUCCEEDED", (j, path)


def assert_outbox_complete(c: ControllerProc, receiver: HookReceiver,
                           timeout: float = 60) -> set[str]:
    """One outbox row per (transition event, hook), every one delivered and seen by the
    receiver (at least once), with a valid signature. Returns the delivery ids."""
    wait_for("every webhook delivery acknowledged", lambda: c.query(
        "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL")[0][0] == 0,
        timeout=timeout, interval=0.5)
    events = {eid for (eid,) in c.query("SELECT id FROM events WHERE kind='transition'")}
    rows = c.query("SELECT event_id, hook, payload FROM outbox")
    queued = [(eid, hook) for eid, hook, _ in rows]
    assert len(queued) == len(set(queued)), "an event was queued twice for one hook"
    assert set(queued) == {(e, h) for e in events for h in HOOKS}
    assert len(rows) == len(events) * len(HOOKS)
    keys = {json.loads(p)["idempotency_key"] for _, _, p in rows}
    missing = keys - receiver.deliveries()
    assert not missing, f"{len(missing)} deliveries never reached the receiver: " \
                        f"{sorted(missing)[:5]}"
    assert not receiver.unsigned()
    return keys


def assert_nothing_left(ha: HaCluster, c: ControllerProc) -> None:
    ids = launched_ids(c)
    assert len(ids) == len(set(ids)), "an instance id was launched twice"
    wait_for("every instance released", lambda: c.query(
        "SELECT COUNT(*) FROM attempts WHERE released=0")[0][0] == 0, timeout=60, interval=0.5)
    wait_for("no instance left running", lambda: not ha.running_instances(), timeout=30,
             interval=0.5)
    # Every instance the cloud ever saw belongs to exactly one attempt.
    assert set(ha.instances()) <= set(ids)


# --- who holds the singleton duties ----------------------------------------------------------

def _socket_ports(pid: int) -> set[int]:
    """Local TCP ports of a process's sockets (its end of its PostgreSQL connections)."""
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return set()
    for fd in fds:
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def holders_when(ha: HaCluster, ok: Any) -> dict[str, int | None] | None:
    """duty_holders(ha) when ``ok(holder)`` holds for every duty's holder, else None."""
    h = duty_holders(ha)
    return h if all(ok(v) for v in h.values()) else None


def duty_holders(ha: HaCluster) -> dict[str, int | None]:
    """{duty: index in ha.procs of the controller whose store session holds its advisory
    lock (pg_locks), or None}. The lock's backend is matched to a controller process by its
    client port, which is the local port of one of that process's sockets."""
    probe = ha.procs[0]
    keys = dict(probe.query(
        "SELECT d, hashtext('skyjobs-duty:' || current_schema() || d)::bigint FROM"
        " unnest(?::text[]) AS d", (list(DUTIES),)))
    held = probe.query(
        "SELECT l.classid::bigint, l.objid::bigint, a.client_port FROM pg_locks l JOIN"
        " pg_stat_activity a ON a.pid = l.pid WHERE l.locktype='advisory' AND l.granted"
        " AND l.objsubid=1")
    ports = {i: _socket_ports(p.proc.pid) for i, p in enumerate(ha.procs)
             if p.proc is not None and p.proc.poll() is None}
    out: dict[str, int | None] = dict.fromkeys(DUTIES)
    for duty, key in keys.items():
        for classid, objid, port in held:
            if classid == (key >> 32) & 0xFFFFFFFF and objid == key & 0xFFFFFFFF:
                out[duty] = next((i for i, ps in ports.items() if port in ps), None)
    return out


# --- 1 -----------------------------------------------------------------------------------------

# The 50 jobs (submitted 17, 17 and 16 to the three controllers; the store spreads
# their leases): about a minute on a 2-core machine.
JOBS_PER_CONTROLLER = (17, 17, 16)
PREEMPTED_PER_GROUP = 3  # of the victim's jobs, and of the others'


def test_many_jobs_preemptions_and_a_killed_busiest_controller(
        ha: HaCluster, receiver: HookReceiver) -> None:
    rng = random.Random(20240611)
    procs = ha.start_with(3, receiver.env())
    jobs: list[int] = []
    for i, n in enumerate(JOBS_PER_CONTROLLER):
        jobs += [procs[i].submit(small_task(run_script(24), f"m{i}-{k}")) for k in range(n)]
    wait_for("every job RUNNING", lambda: set(statuses(procs[0], jobs).values()) == {"RUNNING"},
             timeout=120, interval=0.5)

    # The busiest controller: the one holding the most leases of live jobs.
    load: dict[str, list[int]] = {}
    for j, owner in procs[0].query("SELECT job_id, owner FROM job_leases"):
        if j in jobs:
            load.setdefault(owner, []).append(j)
    busiest = max(load, key=lambda o: len(load[o]))
    victim = next(p for p in procs if member_of(p) == busiest)
    survivors = [p for p in procs if p is not victim]
    watcher = survivors[0]
    assert len(load[busiest]) * 3 >= len(jobs), load

    # Preemptions injected through random controllers (the owner or not), on jobs of the
    # victim and of the others; then the kill, while those recoveries are under way.
    theirs = rng.sample(load[busiest], PREEMPTED_PER_GROUP)
    others = rng.sample([j for j in jobs if j not in load[busiest]], PREEMPTED_PER_GROUP)
    preempted = theirs + others
    for j in preempted:
        via = rng.choice(procs)
        via.client.post(f"/api/v1/jobs/{j}/preempt", {"notice": 2})
    wait_for("every preempted job to move to RECOVERING", lambda: set(preempted) <= {
        j for (j,) in watcher.query("SELECT DISTINCT job_id FROM events WHERE"
                                    " to_status='RECOVERING'")}, timeout=20, interval=0.2)
    victim.kill9()

    done = wait_all_ended(watcher, jobs, timeout=150)
    failed = {j: s for j, s in done.items() if s != "SUCCEEDED"}
    assert not failed, {j: story(watcher.events(j)) for j in failed}

    for j in preempted:
        job = watcher.job(j)
        assert job["recoveries"] >= 1, watcher.events(j)
        assert len(job["attempt_list"]) >= 2, watcher.events(j)
    for j in load[busiest]:  # every job of the victim's was taken over by a survivor
        reasons = [e.get("reason") or "" for e in watcher.events(j)]
        assert any("took the job over" in r for r in reasons), (j, reasons)
    for j in set(load[busiest]) - set(theirs):  # re-attached, not relaunched
        assert len(watcher.job(j)["attempt_list"]) == 1, story(watcher.events(j))

    assert_paths_allowed(watcher, jobs)
    assert_nothing_left(ha, watcher)
    assert_outbox_complete(survivors[0], receiver)


# --- 2 -----------------------------------------------------------------------------------------

def plant_orphans(ha: HaCluster, prefix: str) -> tuple[str, str]:
    """Boot an instance named like the deployment's own (``<prefix>-...``) that no attempt
    owns, and one of somebody else's, straight through the local provider."""
    from skyjobs.pricing.catalog import Placement, load_cloud
    from skyjobs.providers.base import LaunchRequest
    from skyjobs.providers.local import LocalProvider

    orphan, stranger = f"{prefix}-999-1-0", "someone-else-999-1-0"
    provider = LocalProvider(ha.cloud)
    offering = load_cloud("local")[0]

    async def boot() -> None:
        try:
            for name in (orphan, stranger):
                await provider.launch(LaunchRequest(
                    job_id=999, attempt_id=999, placement=Placement(offering, False, 0.1),
                    instance_ids=[name], agent_env=[{
                        "SKYJOBS_CONTROLLER_URL": "http://127.0.0.1:9",
                        "SKYJOBS_ATTEMPT_ID": "999", "SKYJOBS_AGENT_TOKEN": "x"}]))
        finally:
            await provider.close()

    asyncio.run(boot())
    return orphan, stranger


def test_singleton_duties_move_when_their_holder_is_killed(
        ha: HaCluster, receiver: HookReceiver) -> None:
    procs = ha.start_with(3, {**receiver.env(), "HA_TEST_DUTY_INTERVAL": str(DUTY_INTERVAL),
                              "SKYJOBS_PRICE_POLL_INTERVAL": str(DUTY_INTERVAL)},
                          proc_cls=ShortDutiesProc)
    holders = wait_for("every duty held", lambda: holders_when(
        ha, lambda v: v is not None), timeout=20)
    # The first controller takes every duty as it starts (before the next one exists).
    victim_i = holders["webhooks"]
    assert victim_i is not None and set(holders.values()) == {victim_i}, holders
    victim = procs[victim_i]
    survivors = [p for p in procs if p is not victim]
    # Jobs on every controller, still running when the holder dies: their later transitions
    # (the victim's after a takeover) must still reach the receiver.
    jobs = [p.submit(small_task(run_script(14), f"d{i}")) for i, p in enumerate(procs)]
    for j in jobs:
        survivors[0].wait_status(j, "RUNNING", timeout=60)
    wait_for("the deliveries so far", lambda: survivors[0].query(
        "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL")[0][0] == 0, timeout=30)
    before = receiver.deliveries()
    victim.kill9()
    killed_at = time.time()

    moved = wait_for("every duty held by a survivor", lambda: holders_when(
        ha, lambda v: v is not None and v != victim_i), timeout=4 * DUTY_INTERVAL + 10)
    assert set(moved.values()) <= {i for i, p in enumerate(procs) if p is not victim}

    # The orphan sweep runs on a survivor: a planted instance of this deployment that no
    # attempt owns is terminated; somebody else's is left alone.
    cid = survivors[0].query("SELECT value FROM meta WHERE key='controller_id'")[0][0]
    orphan, stranger = plant_orphans(ha, f"sj{cid}")
    assert {orphan, stranger} <= set(ha.running_instances())
    wait_for("the orphan to be terminated by a survivor",
             lambda: orphan not in ha.running_instances(), timeout=4 * DUTY_INTERVAL + 15)
    assert stranger in ha.running_instances()
    sweeper_i = moved["sweep_orphans"]
    assert sweeper_i is not None
    sweeper = procs[sweeper_i]
    assert "terminating orphan instances" in full_log(sweeper)
    assert "terminating orphan instances" not in full_log(victim)

    # Webhook deliveries keep flowing: every job ends after the kill, and each of those
    # transitions (queued by a survivor) is delivered by the survivor now holding the duty.
    done = wait_all_ended(survivors[0], jobs, timeout=90)
    assert set(done.values()) == {"SUCCEEDED"}, {j: survivors[0].events(j) for j in jobs}
    keys = assert_outbox_complete(survivors[0], receiver)
    late = {json.loads(p)["idempotency_key"] for p, at in survivors[0].query(
        "SELECT o.payload, e.at FROM outbox o JOIN events e ON e.id = o.event_id") if
        at > killed_at}
    assert late and late <= keys and not late & before
    assert_paths_allowed(survivors[0], jobs)
    # (the stranger is killed by the fixture's cleanup)
    assert_nothing_left_but(ha, survivors[0], {stranger})


def assert_nothing_left_but(ha: HaCluster, c: ControllerProc, allowed: set[str]) -> None:
    ids = launched_ids(c)
    assert len(ids) == len(set(ids)), "an instance id was launched twice"
    wait_for("every instance released", lambda: c.query(
        "SELECT COUNT(*) FROM attempts WHERE released=0")[0][0] == 0, timeout=60, interval=0.5)
    wait_for("no instance left running", lambda: set(ha.running_instances()) <= allowed,
             timeout=30, interval=0.5)


# --- 3 -----------------------------------------------------------------------------------------

def test_an_agent_whose_first_controller_is_dead_reaches_the_next(ha: HaCluster) -> None:
    lease = 12.0  # renewed every 4 s: A's lease runs 8-12 s past its death
    a, b = ha.start_with(2, {}, lease=lease)
    job = a.submit(small_task(run_script(60), "failover"))
    b.wait_status(job, "RUNNING", timeout=60)
    (first,) = b.job(job)["attempt_list"]
    (instance,) = json.loads(b.query("SELECT instance_ids FROM attempts WHERE job_id=?",
                                     (job,))[0][0])
    env = (read_json(ha.cloud / "instances" / instance / "launch.json") or {})["env"]
    urls = env["SKYJOBS_CONTROLLER_URLS"].split(",")
    assert urls[0] == a.client.url and b.client.url in urls, urls  # A first, then B

    a.kill9()
    # The agent heartbeats every 0.5 s: by now its requests to A were refused and it has
    # been talking to B (and taking B's answers) for a while. A's lease still runs at least
    # 8 s after the kill, so B does not own the job yet.
    time.sleep(2.0)
    b.client.post(f"/api/v1/jobs/{job}/preempt", {"notice": 20})
    # The instance lives 20 s more: only the agent's report, heard by B, records the notice
    # now (and moves the job to RECOVERING in the same transaction).
    wait_for("the agent's notice report to reach B", lambda: any(
        "preemption notice" in (e.get("reason") or "") for e in b.events(job)),
        timeout=lease / 2)
    done = b.wait_status(job, "SUCCEEDED", "FAILED", "CANCELLED", timeout=120)
    events = b.events(job)
    assert done["status"] == "SUCCEEDED", events
    attempts = done["attempt_list"]
    assert len(attempts) == 2 and attempts[0]["n"] == first["n"], events
    assert attempts[0]["end_reason"] == "preempted", attempts
    assert done["recoveries"] == 1, events

    ids = [e["id"] for e in events]
    assert ids == sorted(ids)
    moves = [(e["from_status"], e["to_status"]) for e in events if e["kind"] == "transition"]
    assert moves[-4:] == [("RUNNING", "RECOVERING"), ("RECOVERING", "PROVISIONING"),
                          ("PROVISIONING", "RUNNING"), ("RUNNING", "SUCCEEDED")], moves
    notices = [e for e in events if "preemption notice" in (e.get("reason") or "")]
    assert notices, story(events)
    notice = notices[0]
    recovering = next(e for e in events if e["kind"] == "transition"
                      and e["to_status"] == "RECOVERING")
    takeover = next(e for e in events if "took the job over" in (e.get("reason") or ""))
    assert member_of(b) in takeover["reason"] and member_of(a) in takeover["reason"]
    # The notice reached B through the agent (its instance outlives the notice window by far
    # more than the takeover takes), before B held the lease: A was the owner and dead.
    assert notice["id"] < takeover["id"] and recovering["id"] < takeover["id"], events
    assert_nothing_left(ha, b)


# --- 4 -----------------------------------------------------------------------------------------

def test_an_adopted_agent_is_judged_silent_from_the_takeover(ha: HaCluster) -> None:
    """A controller that takes a job over long after it started gives the adopted agent a
    heartbeat timeout from the takeover (it judged it silent since its own start, and
    relaunched the live job as agent lost, before 207af0c)."""
    timeout, window = 4.0, 8.0
    procs = ha.start_with(3, {"SKYJOBS_HEARTBEAT_TIMEOUT": str(timeout),
                              "SKYJOBS_SILENT_WINDOW": str(window)})
    up_since = time.monotonic()  # every controller started before this
    job = procs[0].submit(small_task(run_script(30), "adopted"))
    procs[0].wait_status(job, "RUNNING", timeout=60)
    (owner,) = [o for j, o in procs[0].query("SELECT job_id, owner FROM job_leases") if j == job]
    victim = next(p for p in procs if member_of(p) == owner)
    survivor = next(p for p in procs if p is not victim)
    (instance,) = json.loads(survivor.query("SELECT instance_ids FROM attempts WHERE job_id=?",
                                            (job,))[0][0])
    agent_pid = int((read_json(ha.cloud / "instances" / instance / "instance.json") or {})
                    ["agent_pid"])
    # The survivors have been up longer than a heartbeat timeout plus the silent window.
    time.sleep(max(0.0, timeout + window + 2 - (time.monotonic() - up_since)))

    # The agent is not heard around the takeover (as with a 5 s heartbeat, the default, it
    # mostly would not be in the new owner's first instance poll) and speaks again 1 s after
    # it: well within a heartbeat timeout of the takeover.
    os.kill(agent_pid, signal.SIGSTOP)
    try:
        victim.kill9()
        wait_for("the takeover", lambda: any("took the job over" in (e.get("reason") or "")
                                             for e in survivor.events(job)), timeout=20)
        time.sleep(1.0)
    finally:
        os.kill(agent_pid, signal.SIGCONT)
    done = survivor.wait_status(job, "SUCCEEDED", "FAILED", "CANCELLED", timeout=90)
    events = survivor.events(job)
    assert done["status"] == "SUCCEEDED", story(events)
    assert not [e for e in events if "silent" in (e.get("reason") or "")], story(events)
    assert len(done["attempt_list"]) == 1, story(events)  # re-attached, not relaunched
    assert_nothing_left(ha, survivor)
