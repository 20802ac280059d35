#!/usr/bin/env python3
"""Chaos: N resumable jobs on the local provider under preemptions, controller kill -9s and
injected cloud-API faults, then an audit of the promises.

Each job runs ``bench/chaos_job.py`` (checkpoints in a ``local://`` bucket, MOUNT or COPY;
every node appends start/tick/checkpoint/stop lines to one audit file). While they run, the
bench preempts random running jobs with a notice, kills the controller with SIGKILL at random
moments (plain, right after a preemption notice, and through the fault injector's
``crash_before``/``crash_after`` modes, i.e. between a store commit and its cloud call), and
restarts it on the same state directory. The controller runs through
``bench/chaos_controller.py``, which wraps the local provider in the fault injector
(``--faults`` adds random launch/status/terminate failures).

When every job is terminal (or --time-limit passed) it prints, and exits nonzero if any is
nonzero: jobs lost (not SUCCEEDED, or stuck), false successes (SUCCEEDED without the job
finishing its steps), duplicate runs (two attempts of one job whose audit intervals
overlap), checkpoint regressions, leaked instances (also processes outside any recorded
instance session), unreleased attempts, missing events, phantom recoveries (an attempt
recovered although nobody preempted it) and controller crashes we did not cause.

    .venv/bin/python bench/chaos.py --jobs 40 --kills 20 --preemptions 30 --seed 1
    .venv/bin/python bench/chaos.py --jobs 10 --kills 5 --faults '{"fail_before": 0.1}'

Loopback only; everything it started (controller, instance sessions) is killed on exit,
Ctrl-C included. The state directory is removed unless --keep (or a violation was found).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from skyjobs.client import Client  # noqa: E402
from skyjobs.exceptions import ApiError, ControllerUnavailableError  # noqa: E402
from skyjobs.providers.local_instance import (  # noqa: E402
    kill_session,
    read_json,
    session_members,
)

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "FAILED_NO_RESOURCE", "CANCELLED"})

# Short intervals (like tests/conftest.py FAST_ENV), a little more patient about silence:
# two shared cores run a controller plus three processes per simulated node.
CHAOS_ENV = {
    "SKYJOBS_HOST": "127.0.0.1",
    "SKYJOBS_INSTANCE_POLL_INTERVAL": "0.5",
    "SKYJOBS_NOTICE_POLL_INTERVAL": "0.2",
    "SKYJOBS_HEARTBEAT_INTERVAL": "0.5",
    "SKYJOBS_HEARTBEAT_TIMEOUT": "5",
    "SKYJOBS_SILENT_WINDOW": "10",
    "SKYJOBS_LAUNCH_BACKOFF_INITIAL": "0.5",
    "SKYJOBS_LAUNCH_BACKOFF_MAX": "1",
    "SKYJOBS_MAX_LAUNCH_ROUNDS": "10",
    "SKYJOBS_PROVISION_TIMEOUT": "60",
    "SKYJOBS_COPY_SYNC_INTERVAL": "1",
    "SKYJOBS_LOG_FORMAT": "json",
}

KILL_KINDS = ("random", "after_notice", "crash_before:terminate", "crash_after:launch",
              "crash_before:launch", "crash_after:terminate")
DUPLICATE_SLACK_S = 0.05  # one host, one wall clock: the go gate orders stop before start
ARM_PATIENCE_S = 20.0  # an armed crash that has not fired by then is replaced by a SIGKILL
SETTLE_S = 20.0  # after the last job ended: time for instances to go and attempts to release


@dataclass
class Settings:
    jobs: int = 40
    kills: int = 20
    preemptions: int = 30
    faults: dict[str, Any] = field(default_factory=dict)
    seed: int = 1
    time_limit: float = 900.0
    state_dir: Path | None = None
    keep: bool = False
    steps: int = 150
    step_s: float = 0.2
    ckpt_every: int = 5
    multinode_every: int = 4  # every Nth job has two nodes
    copy_every: int = 2  # every Nth single-node job uses a COPY bucket (others MOUNT)
    multinode_copy: bool = False  # multi-node jobs in COPY mode too (only rank 0 writes)
    concurrency: int = 8  # live jobs at a time
    notice_s: tuple[float, float] = (2.0, 6.0)
    kill_kinds: tuple[str, ...] = KILL_KINDS  # cycled, then shuffled, to plan the kills
    quiet: bool = False


# --- the controller process ----------------------------------------------------------------

class ChaosController:
    """bench/chaos_controller.py in its own session, on one state directory, restartable."""

    def __init__(self, state_dir: Path, log_path: Path, faults: dict[str, Any]) -> None:
        self.state_dir = state_dir
        self.log_path = log_path
        self.faults = faults
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Client | None = None
        self.armed: str | None = None
        self.arm_file = log_path.parent / "chaos-arm.json"
        self.starts = 0

    def start(self, limit_s: float = 40.0) -> bool:
        """Start; False when it died before answering (an armed crash fired in resume)."""
        (self.state_dir / "controller.json").unlink(missing_ok=True)
        plan = {**self.faults, "arm_file": str(self.arm_file)}
        if plan.get("seed") is not None:
            plan["seed"] = int(plan["seed"]) + self.starts
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKYJOBS_")}
        env.update(CHAOS_ENV)
        env["SKYJOBS_CHAOS_FAULTS"] = json.dumps(plan)
        # Instances and agents import the same skyjobs as this checkout's controller.
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        with open(self.log_path, "ab") as log:
            log.write(f'{{"event": "chaos: controller start {self.starts}", '
                      f'"at": {time.time()}}}\n'.encode())
            self.proc = subprocess.Popen(
                [sys.executable, str(BENCH / "chaos_controller.py"), "--state-dir",
                 str(self.state_dir), "--port", "0"], env=env, stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(ROOT))
        self.starts += 1
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            client = self._client()
            if client is not None and client.healthy():
                self.client = client
                return True
            time.sleep(0.1)
        raise RuntimeError(f"controller did not come up in {limit_s:.0f}s: {self.log_tail()}")

    def arm(self, kind: str, skip: int) -> None:
        """Arm a one-shot crash in the running controller: kind is "crash_before:terminate"."""
        mode, op = kind.split(":")
        tmp = self.arm_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"script": [[op, mode, skip]]}))
        os.replace(tmp, self.arm_file)
        self.armed = kind

    def disarm(self) -> None:
        for path in (self.arm_file, Path(f"{self.arm_file}.taken")):
            path.unlink(missing_ok=True)
        self.armed = None

    def _client(self) -> Client | None:
        try:
            info = json.loads((self.state_dir / "controller.json").read_text())
            token = (self.state_dir / "token").read_text().strip()
        except (OSError, ValueError):
            return None
        return Client(str(info["url"]), token, timeout=10.0)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill9()

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def api(self) -> Client:
        if self.client is None:
            raise ControllerUnavailableError("controller not started")
        return self.client


def instance_states(state_dir: Path) -> dict[str, dict[str, Any]]:
    root = state_dir / "local-cloud" / "instances"
    if not root.exists():
        return {}
    return {p.name: read_json(p / "instance.json") or {} for p in sorted(root.iterdir())}


def noticed_attempts(state_dir: Path) -> set[tuple[int, int]]:
    """(job, attempt n) of every instance that got a simulated preemption notice; ids are
    PREFIX-JOB-ATTEMPT-RANK."""
    out = set()
    for name, state in instance_states(state_dir).items():
        parts = name.rsplit("-", 3)
        if state.get("notice_at") is not None and len(parts) == 4:
            out.add((int(parts[1]), int(parts[2])))
    return out


def running_instances(state_dir: Path) -> list[str]:
    """Instances whose processes are really alive, whatever the files say."""
    alive = []
    for name, state in instance_states(state_dir).items():
        sid = state.get("sid")
        if isinstance(sid, int) and session_members(sid):
            alive.append(name)
    return alive


def stray_processes(state_dir: Path) -> dict[int, str]:
    """Live processes of any simulated instance under state_dir, found from /proc rather
    than from what instance.json recorded: an agent whose instance failed to boot, or a
    second boot of one instance, is not in any recorded session. pid -> instance name."""
    root = str(state_dir / "local-cloud" / "instances") + os.sep
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    continue
        except OSError:
            continue  # gone, or not ours to read
        places = [cwd] + [v.decode(errors="replace").split("=", 1)[1] for v in env
                          if v.startswith((b"HOME=", b"SKYJOBS_INSTANCE_DIR="))]
        for place in places:
            if place.startswith(root):
                out[int(entry)] = place[len(root):].split(os.sep, 1)[0]
                break
    return out


def leaked_instances(state_dir: Path) -> list[str]:
    recorded = set(running_instances(state_dir))
    strays = stray_processes(state_dir)
    out = [f"{name} (its recorded session is alive)" for name in sorted(recorded)]
    for name in sorted(set(strays.values()) - recorded):
        pids = sorted(p for p, n in strays.items() if n == name)
        out.append(f"{name} (processes {pids} outside its recorded session)")
    return out


def kill_instances(state_dir: Path) -> None:
    sids = [s["sid"] for s in instance_states(state_dir).values() if isinstance(s.get("sid"), int)]
    if sids:
        kill_session(*sids)
    for pid in stray_processes(state_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- the jobs --------------------------------------------------------------------------------

def job_task(index: int, s: Settings, audit: Path) -> dict[str, Any]:
    nodes = 2 if s.multinode_every and index % s.multinode_every == s.multinode_every - 1 else 1
    if nodes > 1:
        mode = "COPY" if s.multinode_copy else "MOUNT"
    else:
        mode = "COPY" if s.copy_every and index % s.copy_every == 1 else "MOUNT"
    run = (f"exec {sys.executable} {BENCH / 'chaos_job.py'} --ckpt-dir ~/ckpt "
           f"--steps {s.steps} --step-seconds {s.step_s} --ckpt-every {s.ckpt_every}")
    return {
        "name": f"chaos-{index}",
        "resources": {"cloud": "local", "cpus": 2, "use_spot": True},
        "num_nodes": nodes,
        "file_mounts": {"~/ckpt": {"source": f"local://chaos/chaos-{index}", "mode": mode}},
        "envs": {"CHAOS_AUDIT": str(audit), "CHAOS_MODE": mode},
        "run": run,
    }


@dataclass
class Preemption:
    job: int
    attempt: int
    at: float
    notice: float
    why: str = ""


@dataclass
class Kill:
    kind: str
    at: float
    detail: str = ""


@dataclass
class RunLog:
    """What the chaos driver did, for the report and the analysis."""

    names: dict[str, int] = field(default_factory=dict)  # job name -> id
    modes: dict[int, str] = field(default_factory=dict)  # job id -> MOUNT/COPY
    nodes: dict[int, int] = field(default_factory=dict)
    preemptions: list[Preemption] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    foreign_exits: list[str] = field(default_factory=list)  # controller deaths we did not cause
    timed_out: bool = False
    elapsed: float = 0.0
    settle_s: float = 0.0


class Chaos:
    def __init__(self, s: Settings, state_dir: Path) -> None:
        self.s = s
        self.rng = random.Random(s.seed)
        self.state_dir = state_dir
        self.work = state_dir.parent
        self.audit = self.work / "audit.jsonl"
        self.ctl = ChaosController(state_dir, self.work / "controller.log", s.faults)
        self.log = RunLog()
        self.tasks = {f"chaos-{i}": job_task(i, s, self.audit) for i in range(s.jobs)}
        self.status: dict[int, str] = {}
        kinds = [s.kill_kinds[i % len(s.kill_kinds)] for i in range(s.kills)]
        self.rng.shuffle(kinds)
        self.kill_plan = kinds
        self.armed_at = 0.0

    def say(self, msg: str) -> None:
        if not self.s.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # --- driving -------------------------------------------------------------------------

    def horizon(self) -> float:
        waves = math.ceil(self.s.jobs / max(1, self.s.concurrency))
        return waves * (self.s.steps * self.s.step_s + 8.0)

    def gap(self, count: int) -> float:
        # Recoveries make the run longer than the horizon, kills and restarts shorter
        # runs of work: aim the planned chaos at the first 55% of it.
        mean = 0.55 * self.horizon() / (count + 1)
        return max(3.0, self.rng.uniform(0.5, 1.5) * mean)

    def start_controller(self) -> None:
        while not self.ctl.start():
            self.on_death()  # died during startup: an armed crash fired in resume

    def on_death(self) -> None:
        """The controller died on its own: an armed crash, or a crash we did not cause."""
        code = self.ctl.returncode()
        armed = self.ctl.armed
        if code == 137 and armed is not None:
            self.log.kills.append(Kill(armed, time.time(), "fired"))
            self.say(f"kill {len(self.log.kills)}: injected {armed} fired")
        else:
            self.log.foreign_exits.append(f"controller exited with {code} (armed {armed}): "
                                          f"{self.ctl.log_tail(800)}")
            self.say(f"controller exited by itself with {code}!")
        self.ctl.disarm()
        time.sleep(self.rng.uniform(0.2, 1.5))

    def kill(self, kind: str, detail: str = "") -> None:
        self.ctl.kill9()
        self.ctl.disarm()
        self.log.kills.append(Kill(kind, time.time(), detail))
        self.say(f"kill {len(self.log.kills)}: {kind} {detail}".rstrip())
        time.sleep(self.rng.uniform(0.2, 2.0))
        self.start_controller()

    def refresh(self) -> None:
        try:
            rows = self.ctl.api().get("/api/v1/jobs", limit=10000)["jobs"]
        except (ControllerUnavailableError, ApiError):
            return
        for row in rows:
            if row["name"] in self.tasks:
                self.log.names[row["name"]] = row["id"]
                self.status[row["id"]] = row["status"]

    def submit_more(self) -> None:
        live = sum(1 for st in self.status.values() if st not in TERMINAL)
        for index, (name, task) in enumerate(self.tasks.items()):
            if live >= self.s.concurrency:
                return
            if name in self.log.names:
                continue
            try:
                job_id = int(self.ctl.api().post("/api/v1/jobs", {"task": task})["id"])
            except ControllerUnavailableError:
                return  # a commit may have happened: refresh() finds it by name
            except ApiError as err:
                self.say(f"submit of {name} rejected: {err} (retrying)")
                return
            self.log.names[name] = job_id
            self.log.modes[job_id] = task["file_mounts"]["~/ckpt"]["mode"]
            self.log.nodes[job_id] = task["num_nodes"]
            self.status[job_id] = "PENDING"
            live += 1
            self.say(f"submitted job {job_id} ({name}, {task['num_nodes']} node(s), "
                     f"{self.log.modes[job_id]}) [{index + 1}/{self.s.jobs}]")

    def preempt(self, reason: str = "") -> bool:
        running = [j for j, st in self.status.items() if st == "RUNNING"]
        self.rng.shuffle(running)
        for job_id in running[:3]:
            notice = round(self.rng.uniform(*self.s.notice_s), 1)
            try:
                reply = self.ctl.api().post(f"/api/v1/jobs/{job_id}/preempt", {"notice": notice})
            except ApiError:
                continue  # it moved on since the last refresh
            except ControllerUnavailableError:
                return False
            self.log.preemptions.append(Preemption(job_id, int(reply["attempt"]),
                                                   float(reply["issued_at"]), notice, reason))
            self.say(f"preempted job {job_id} attempt {reply['attempt']} (notice {notice}s) "
                     f"{reason}".rstrip())
            return True
        return False

    def chaos_kill(self) -> bool:
        """Do the next planned kill; False when it has to wait (an armed crash pending)."""
        kind = self.kill_plan[len(self.log.kills)]
        if kind.startswith("crash"):
            if self.ctl.armed is None:
                skip = self.rng.randint(0, 1)
                self.ctl.arm(kind, skip)
                self.armed_at = time.monotonic()
                self.say(f"armed {kind} (after {skip} clean call(s))")
                # A recovery commits, then launches the replacement and terminates the old
                # attempt: the seams the armed crash is meant to hit.
                self.preempt(reason="to hit the armed crash")
                return False
            if time.monotonic() - self.armed_at < ARM_PATIENCE_S:
                return False
            self.kill("random", f"(armed {kind} did not fire in {ARM_PATIENCE_S:.0f}s)")
        elif kind == "after_notice":
            if not self.preempt(reason="before a kill"):
                self.kill("random", "(no running job to preempt)")
                return True
            time.sleep(self.rng.uniform(0.0, 0.5))
            self.kill("after_notice")
        else:
            self.kill("random")
        return True

    def all_done(self) -> bool:
        return (len(self.log.names) == self.s.jobs
                and all(self.status.get(j) in TERMINAL for j in self.log.names.values()))

    def drive(self) -> None:
        start = time.monotonic()
        self.start_controller()
        next_kill = start + self.gap(self.s.kills)
        next_preempt = start + self.gap(self.s.preemptions)
        last_refresh = 0.0
        while True:
            now = time.monotonic()
            if now - start > self.s.time_limit:
                self.log.timed_out = True
                self.say("time limit reached")
                break
            if not self.ctl.alive():
                self.on_death()
                self.start_controller()
                next_kill = max(next_kill, time.monotonic() + self.gap(self.s.kills))
                continue
            if now - last_refresh >= 0.5:
                self.refresh()
                last_refresh = now
                self.submit_more()
                if self.all_done():
                    break
            random_ones = sum(1 for p in self.log.preemptions if not p.why)
            if random_ones < self.s.preemptions and now >= next_preempt:
                self.preempt()
                next_preempt = now + self.gap(self.s.preemptions)
            if len(self.log.kills) < self.s.kills and now >= next_kill:
                if self.chaos_kill():
                    next_kill = time.monotonic() + self.gap(self.s.kills)
            time.sleep(0.1)
        self.log.elapsed = time.monotonic() - start

    def settle(self) -> None:
        """Give the controller a bounded moment to finish its cleanup after the last job."""
        start = time.monotonic()
        self.ctl.disarm()
        while time.monotonic() - start < SETTLE_S:
            if not self.ctl.alive():
                self.on_death()
                self.start_controller()
            if not leaked_instances(self.state_dir) and not self.unreleased():
                break
            time.sleep(0.5)
        self.log.settle_s = time.monotonic() - start

    def unreleased(self) -> list[str]:
        out = []
        for job_id in self.log.names.values():
            try:
                job = self.ctl.api().get(f"/api/v1/jobs/{job_id}")
            except (ControllerUnavailableError, ApiError):
                return ["controller unavailable"]
            if job["status"] in TERMINAL:
                out += [f"job {job_id} attempt {a['n']}" for a in job["attempt_list"]
                        if not a["released"]]
        return out

    def collect(self) -> dict[int, dict[str, Any]]:
        api = self.ctl.api()
        out = {}
        for job_id in sorted(self.log.names.values()):
            detail = dict(api.get(f"/api/v1/jobs/{job_id}"))
            detail["events"] = api.get(f"/api/v1/jobs/{job_id}/events")["events"]
            out[job_id] = detail
        return out

    def cleanup(self) -> None:
        try:
            self.ctl.stop()
        finally:
            kill_instances(self.state_dir)


# --- the analysis ----------------------------------------------------------------------------

def load_audit(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"kind": "torn", "raw": line[:200]})
    return out


def attempt_intervals(audit: list[dict[str, Any]]) -> dict[tuple[int, int], tuple[float, float]]:
    """(job, attempt) -> [first start, last line] over all of its nodes."""
    spans: dict[tuple[int, int], list[float]] = {}
    for a in audit:
        if "job" not in a:
            continue
        key = (a["job"], a["attempt"])
        span = spans.setdefault(key, [math.inf, -math.inf])
        if a["kind"] == "start":
            span[0] = min(span[0], a["t"])
        span[1] = max(span[1], a["t"])
    return {k: (v[0], v[1]) for k, v in spans.items()}


def find_duplicates(audit: list[dict[str, Any]], slack: float = DUPLICATE_SLACK_S) -> list[str]:
    out = []
    by_job: dict[int, list[tuple[int, float, float]]] = defaultdict(list)
    for (job, attempt), (t0, t1) in attempt_intervals(audit).items():
        by_job[job].append((attempt, t0, t1))
    for job, spans in sorted(by_job.items()):
        spans.sort()
        for i, (a, a0, a1) in enumerate(spans):
            for b, b0, b1 in spans[i + 1:]:
                overlap = min(a1, b1) - max(a0, b0)
                if overlap > slack:
                    out.append(f"job {job}: attempts {a} [{a0:.2f}, {a1:.2f}] and {b} "
                               f"[{b0:.2f}, {b1:.2f}] overlap by {overlap:.2f}s")
    starts = Counter((a["job"], a["attempt"], a["node"]) for a in audit if a["kind"] == "start")
    for (job, attempt, node), n in sorted(starts.items()):
        if n > 1:
            out.append(f"job {job}: attempt {attempt} node {node} started run {n} times")
    return out


def durable_checkpoints(audit: list[dict[str, Any]], modes: dict[int, str],
                        preempted: set[tuple[int, int]], sync_s: float
                        ) -> dict[int, list[tuple[float, int, int]]]:
    """job -> [(t, step, attempt)] of checkpoints the product promised to keep.

    MOUNT writes go straight to the bucket. A COPY checkpoint is kept once the node lived
    through a sync after it (a later line of the same node sync_s + 1 s after it), or when
    it was the job's last act before exiting on a preemption notice (the agent uploads at
    exit), or at the end.
    """
    last_seen: dict[tuple[int, int, int], float] = {}
    for a in audit:
        if "job" in a:
            key = (a["job"], a["attempt"], a["node"])
            last_seen[key] = max(last_seen.get(key, 0.0), a["t"])
    out: dict[int, list[tuple[float, int, int]]] = defaultdict(list)
    for a in audit:
        if a.get("kind") != "checkpoint":
            continue
        job, attempt = a["job"], a["attempt"]
        if modes.get(job, "MOUNT") == "COPY":
            lived = last_seen[(job, attempt, a["node"])] >= a["t"] + sync_s + 1.0
            noticed = a.get("why") == "sigterm" and (job, attempt) in preempted
            if not (lived or noticed or a.get("why") == "final"):
                continue
        out[job].append((a["t"], a["step"], attempt))
    return out


def find_regressions(audit: list[dict[str, Any]], modes: dict[int, str],
                     preempted: set[tuple[int, int]], sync_s: float) -> list[str]:
    kept = durable_checkpoints(audit, modes, preempted, sync_s)
    out = []
    for a in audit:
        if a.get("kind") != "start":
            continue
        before = [(step, attempt, t) for t, step, attempt in kept.get(a["job"], [])
                  if t < a["t"] and attempt != a["attempt"]]
        if not before:
            continue
        best = max(before)
        if a["step"] < best[0]:
            out.append(f"job {a['job']}: attempt {a['attempt']} node {a['node']} started at "
                       f"step {a['step']} ({modes.get(a['job'])}), but attempt {best[1]} had "
                       f"checkpointed step {best[0]} at {best[2]:.2f}, {a['t'] - best[2]:.2f}s "
                       "before")
    return out


def find_false_successes(audit: list[dict[str, Any]], jobs: dict[int, dict[str, Any]],
                         steps: int) -> list[str]:
    finished = {a["job"] for a in audit
                if a.get("kind") == "stop" and a.get("reason") == "done" and a["node"] == 0
                and a["step"] >= steps}
    return [f"job {j}: SUCCEEDED but no node-0 run reached step {steps}"
            for j, d in sorted(jobs.items()) if d["status"] == "SUCCEEDED" and j not in finished]


def find_missing_events(jobs: dict[int, dict[str, Any]],
                        audit: list[dict[str, Any]]) -> list[str]:
    out = []
    audited = defaultdict(set)
    for a in audit:
        if "job" in a:
            audited[a["job"]].add(a["attempt"])
    for job_id, d in sorted(jobs.items()):
        events = d["events"]
        for att in d["attempt_list"]:
            n = att["n"]
            if not any(e.get("attempt") == n and f"launching attempt {n}" in (e.get("reason") or "")
                       for e in events):
                out.append(f"job {job_id}: no launching event for attempt {n}")
        known = {att["n"] for att in d["attempt_list"]}
        for n in sorted(audited[job_id] - known):
            out.append(f"job {job_id}: attempt {n} ran (audit) but is not in attempt_list")
        transitions = [e for e in events if e.get("kind") == "transition"]
        previous = None
        for e in transitions:
            if e.get("from_status") != previous:
                out.append(f"job {job_id}: transition {e.get('from_status')} -> "
                           f"{e.get('to_status')} follows {previous}")
            previous = e.get("to_status")
        if previous != d["status"]:
            out.append(f"job {job_id}: status {d['status']} but the last transition event "
                       f"is to {previous}")
    return out


def find_phantom_recoveries(jobs: dict[int, dict[str, Any]],
                            preempted: set[tuple[int, int]]) -> list[str]:
    """Recoveries of attempts nobody preempted: no notice was issued and the instance was
    not taken by the (simulated) cloud, so nothing but a misreading moved the job."""
    out = []
    for job_id, d in sorted(jobs.items()):
        for e in d["events"]:
            if e.get("kind") == "transition" and e.get("to_status") == "RECOVERING" and (
                    job_id, e.get("attempt")) not in preempted:
                out.append(f"job {job_id}: attempt {e.get('attempt')} {e.get('from_status')} "
                           f"-> RECOVERING at {e.get('at', 0):.2f}: {e.get('reason')}")
    return out


@dataclass
class Result:
    submitted: int
    succeeded: int
    lost: list[str]
    false_successes: list[str]
    duplicates: list[str]
    regressions: list[str]
    leaked: list[str]
    unreleased: list[str]
    missing_events: list[str]
    phantom_recoveries: list[str]
    foreign_exits: list[str]
    stats: dict[str, Any]

    def violations(self) -> dict[str, list[str]]:
        return {"jobs lost": self.lost, "false successes": self.false_successes,
                "duplicate runs": self.duplicates, "checkpoint regressions": self.regressions,
                "leaked instances": self.leaked, "unreleased attempts": self.unreleased,
                "missing events": self.missing_events,
                "phantom recoveries": self.phantom_recoveries,
                "controller crashes not injected": self.foreign_exits}

    def ok(self) -> bool:
        return not any(self.violations().values())

    def render(self) -> str:
        st = self.stats
        lines = [
            f"elapsed {st['elapsed']:.0f}s (+{st['settle']:.0f}s settle); "
            f"kills {st['kills']}/{st['kills_planned']} ({st['kill_kinds']}); "
            f"preemptions {st['preemptions']} ({st['preemptions_random']}/"
            f"{st['preemptions_planned']} random, the rest with kills); "
            f"controller starts {st['starts']}",
            f"attempts {st['attempts']}, recoveries {st['recoveries']}, "
            f"audit lines {st['audit_lines']}; injected faults: {st['injected'] or 'none'}",
            f"{'jobs submitted':<33}{self.submitted}",
            f"{'jobs succeeded':<33}{self.succeeded}",
        ]
        for name, items in self.violations().items():
            note = f" (overlap > {DUPLICATE_SLACK_S}s)" if name == "duplicate runs" else ""
            lines.append(f"{name:<33}{len(items)}{note}")
        for name, items in self.violations().items():
            for item in items[:20]:
                lines.append(f"  {name}: {item}")
            if len(items) > 20:
                lines.append(f"  {name}: ... {len(items) - 20} more")
        return "\n".join(lines)


def injected_faults(log_path: Path) -> dict[str, int]:
    counts: Counter[str] = Counter()
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return {}
    for line in text.splitlines():
        if "chaos: injected fault" not in line:
            continue
        try:
            rec = json.loads(line)
            counts[f"{rec['op']}/{rec['mode']}"] += 1
        except (ValueError, KeyError):
            counts["?"] += 1
    return dict(sorted(counts.items()))


def analyze(chaos: Chaos, jobs: dict[int, dict[str, Any]], leaked: list[str],
            unreleased: list[str]) -> Result:
    audit = load_audit(chaos.audit)
    log = chaos.log
    preempted = {(p.job, p.attempt) for p in log.preemptions}
    # The simulated cloud's own record wins over the bench's: a preempt request whose reply
    # was lost (the controller died right after sending the notice) still preempted.
    preempted |= noticed_attempts(chaos.state_dir)
    sync_s = float(CHAOS_ENV["SKYJOBS_COPY_SYNC_INTERVAL"])
    lost = [f"job {j} ({d['name']}): {d['status']} ({d.get('reason')})"
            for j, d in sorted(jobs.items()) if d["status"] != "SUCCEEDED"]
    never = sorted(set(chaos.tasks) - set(log.names))
    lost += [f"{name}: never submitted (time limit)" for name in never]
    torn = [a["raw"] for a in audit if a["kind"] == "torn"]
    stats = {
        "elapsed": log.elapsed, "settle": log.settle_s, "kills": len(log.kills),
        "kill_kinds": ", ".join(f"{k} {n}" for k, n in
                                sorted(Counter(k.kind for k in log.kills).items())),
        "preemptions": len(log.preemptions), "starts": chaos.ctl.starts,
        "preemptions_random": sum(1 for p in log.preemptions if not p.why),
        "kills_planned": chaos.s.kills, "preemptions_planned": chaos.s.preemptions,
        "attempts": sum(len(d["attempt_list"]) for d in jobs.values()),
        "recoveries": sum(int(d.get("recoveries") or 0) for d in jobs.values()),
        "audit_lines": len(audit), "injected": injected_faults(chaos.ctl.log_path),
    }
    return Result(
        submitted=len(log.names),
        succeeded=sum(1 for d in jobs.values() if d["status"] == "SUCCEEDED"),
        lost=lost, false_successes=find_false_successes(audit, jobs, chaos.s.steps),
        duplicates=find_duplicates(audit),
        regressions=find_regressions(audit, log.modes, preempted, sync_s),
        leaked=leaked, unreleased=unreleased,
        missing_events=find_missing_events(jobs, audit) + [f"torn audit line: {t}"
                                                            for t in torn],
        phantom_recoveries=find_phantom_recoveries(jobs, preempted),
        foreign_exits=log.foreign_exits, stats=stats)


# --- entry points ----------------------------------------------------------------------------

def run_chaos(s: Settings) -> tuple[Result, Path]:
    """Run one chaos round; returns the result and the run directory (state dir's parent)."""
    if s.state_dir is None:
        work = Path(tempfile.mkdtemp(prefix="skyjobs-chaos-"))
        state_dir = work / "state"
    else:
        state_dir = s.state_dir.resolve()
        work = state_dir.parent
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    chaos = Chaos(s, state_dir)
    try:
        chaos.drive()
        chaos.settle()
        jobs = chaos.collect()
        result = analyze(chaos, jobs, leaked_instances(state_dir), chaos.unreleased())
    finally:
        chaos.cleanup()
    (work / "result.txt").write_text(result.render() + "\n")
    return result, work


def parse_args(argv: list[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=40)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--preemptions", type=int, default=30)
    p.add_argument("--faults", type=json.loads, default={},
                   help='FaultPlan JSON, e.g. \'{"fail_before": 0.05, "fail_after": 0.05, '
                        '"ops": ["launch", "terminate"]}\'')
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--time-limit", type=float, default=900.0)
    p.add_argument("--state-dir", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the state directory")
    p.add_argument("--steps", type=int, default=150, help="steps per job (0.2 s each)")
    p.add_argument("--concurrency", type=int, default=8, help="live jobs at a time")
    p.add_argument("--multinode-every", type=int, default=4,
                   help="every Nth job has two nodes (0: none)")
    p.add_argument("--multinode-copy", action="store_true",
                   help="multi-node jobs use COPY buckets (default MOUNT)")
    p.add_argument("--database-url", default=None,
                   help="run the controller on this PostgreSQL database (an empty one: "
                        "the run leaves its rows) instead of SQLite in the state dir")
    a = p.parse_args(argv)
    if a.database_url:
        CHAOS_ENV["SKYJOBS_DATABASE_URL"] = a.database_url
    faults = dict(a.faults)
    faults.setdefault("seed", a.seed)
    from skyjobs.providers.faulty import FaultPlan

    try:
        FaultPlan.from_dict(faults)
    except (ValueError, TypeError) as err:
        p.error(f"--faults: {err}")
    return Settings(jobs=a.jobs, kills=a.kills, preemptions=a.preemptions, faults=faults,
                    seed=a.seed, time_limit=a.time_limit, state_dir=a.state_dir, keep=a.keep,
                    steps=a.steps, concurrency=a.concurrency, multinode_every=a.multinode_every,
                    multinode_copy=a.multinode_copy)


def main(argv: list[str] | None = None) -> int:
    s = parse_args(argv)

    def on_term(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    print(f"chaos: {s.jobs} jobs (every {s.multinode_every}th with 2 nodes"
          f"{', COPY' if s.multinode_copy else ''}), {s.kills} kills, "
          f"{s.preemptions} preemptions, faults {json.dumps(s.faults)}, seed {s.seed}",
          flush=True)
    try:
        result, work = run_chaos(s)
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    print(result.render())
    if s.keep or not result.ok():
        print(f"run directory kept: {work} (audit.jsonl, controller.log, state/)")
    elif s.state_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if result.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
