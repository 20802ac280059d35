#!/usr/bin/env python3
"""Fleet benchmark: one real controller against N live simulated agents, over HTTP.

For each N in ``--jobs`` it starts the load generator (``bench/fleet_cloud.py``: a simulated
cloud and its agents, one coroutine each) and a real controller process whose ``local``
cloud is that generator (``SKYJOBS_LOCAL_BACKEND``), submits N spot jobs and plays:

1. ramp: every job launched, its agent fetching its task and reaching RUNNING;
2. steady state for ``--steady`` seconds: every agent heartbeating at the interval the
   controller asks for and shipping a log line every ``--log-every`` seconds;
3. reclaim: ``--reclaim`` instances of one zone (default min(1000, N)) get their notice in
   the same instant; each reports it, exits 143 two seconds later, and is gone at the
   deadline; the zone has no spot capacity left, so replacements go elsewhere;
4. restart: the controller is killed with SIGKILL under that load and started again on the
   same state directory; every agent must reconnect and nothing may be lost.

It prints one JSON document per N with the figures docs/fleet.md records: controller CPU
seconds per minute and RSS (from /proc), event-loop lag p99 and max (the controller's own
gauges in /metrics), heartbeat round trip p99 (timed by the generator), notice -> RECOVERING
recorded and notice -> replacement launch requested p50/p99, webhook delivery lag, store
transitions per second, restart -> every job re-attached. Events are read from the store's
SQLite file, read-only (the same rows ``GET /jobs/{id}/events`` serves, without thousands of
API calls while measuring). ``--profile DIR`` runs the controller under pyinstrument and
writes one profile of its event loop per phase.

    nice -n 10 .venv/bin/python bench/fleet.py --jobs 1000,5000,10000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOOK_SECRET = "fleet-bench-webhook-secret"
TASK = {"name": "fleet", "resources": {"cloud": "local", "cpus": 2, "use_spot": True},
        "run": "python train.py  # simulated by bench/fleet_cloud.py"}
ARRAY_MAX = 1000  # jobs per submit (the API's num_jobs limit)
SCRAPE_EVERY = 15.0  # as a Prometheus server would (its default scrape interval)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 4)


def http(method: str, url: str, body: Any = None, token: str | None = None,
         timeout: float = 60.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()


def wait(what: str, check: Callable[[], Any], limit_s: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            value = check()
        except (OSError, urllib.error.URLError, ValueError):
            value = None
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"timed out after {limit_s:.0f}s waiting for {what}")


# --- /proc ----------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return (round(int(fields["VmRSS"].split()[0]) / 1024, 1),
            round(int(fields["VmHWM"].split()[0]) / 1024, 1))


def runqueue_wait(pid: int) -> float:
    """Seconds the process's main thread (the event loop) has spent runnable but waiting
    for a CPU: lag that is the host's load, not the controller's own work."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9


class Meter:
    """CPU of a process over a phase, and its loop thread's wait for a CPU, in seconds per
    wall-clock minute."""

    def __init__(self, pid: int) -> None:
        self.pid, self.cpu0, self.t0 = pid, cpu_seconds(pid), time.monotonic()
        self.wait0 = runqueue_wait(pid)

    def per_minute(self) -> float:
        return round((cpu_seconds(self.pid) - self.cpu0) / (time.monotonic() - self.t0) * 60, 2)

    def waited_per_minute(self) -> float:
        return round((runqueue_wait(self.pid) - self.wait0) / (time.monotonic() - self.t0) * 60,
                     2)


# --- the two processes -----------------------------------------------------------------------

class Run:
    def __init__(self, n: int, args: argparse.Namespace) -> None:
        self.n, self.args = n, args
        self.dir = Path(tempfile.mkdtemp(prefix=f"skyjobs-fleet-{n}-"))
        self.state = self.dir / "state"
        self.state.mkdir(mode=0o700)
        self.gen_proc: subprocess.Popen[bytes] | None = None
        self.ctl: subprocess.Popen[bytes] | None = None
        self.gen_url = self.ctl_url = self.token = ""
        self.profiles = 0

    def start_generator(self) -> None:
        port_file = self.dir / "fleet.port"
        log = open(self.dir / "fleet_cloud.log", "ab")  # noqa: SIM115
        self.gen_proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "fleet_cloud.py"), "--port-file",
             str(port_file), "--log-every", str(self.args.log_every), "--boot-delay",
             str(self.args.boot_delay)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        port = wait("the load generator", lambda: port_file.exists() and port_file.read_text(),
                    30)
        self.gen_url = f"http://127.0.0.1:{port}"
        # Webhooks go to the generator's receiver, for every default event.
        (self.state / "config.yaml").write_text(json.dumps({"webhooks": [{
            "name": "fleet", "url": f"{self.gen_url}/hook", "secret": HOOK_SECRET}]}))

    def start_controller(self) -> float:
        """Start (or restart) the controller; returns when it was started (wall clock)."""
        env = {**os.environ, "SKYJOBS_LOCAL_BACKEND": self.gen_url,
               "SKYJOBS_LOG_FORMAT": "json", "SKYJOBS_PROVISION_TIMEOUT": "3600"}
        if self.args.profile:
            cmd = [sys.executable, str(Path(__file__).resolve()), "_profiled_controller",
                   str(self.state), str(self.args.profile)]
        else:
            cmd = [sys.executable, "-m", "skyjobs", "--state-dir", str(self.state),
                   "controller", "--port", "0"]
        log = open(self.dir / "controller.log", "ab")  # noqa: SIM115
        started = time.time()
        self.ctl = subprocess.Popen(cmd, env=env, stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL, cwd=ROOT)
        log.close()
        wait("the controller", self._healthy, 120, every=0.1)
        return started

    def _healthy(self) -> bool:
        assert self.ctl is not None
        if self.ctl.poll() is not None:
            raise SystemExit(f"controller exited with {self.ctl.returncode}; see "
                             f"{self.dir / 'controller.log'}")
        port = (self.state / "port").read_text().strip()
        self.ctl_url = f"http://127.0.0.1:{port}"
        self.token = (self.state / "token").read_text().strip()
        return bool(self.api("GET", "/api/v1/health", timeout=5)["ok"])

    def api(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> Any:
        return http(method, f"{self.ctl_url}{path}", body, self.token, timeout)

    def gen(self, method: str, path: str, body: Any = None) -> Any:
        return http(method, f"{self.gen_url}{path}", body, timeout=60)

    def profile(self, phase: str, start: bool) -> None:
        """Start or stop the controller's profiler (SIGUSR1 / SIGUSR2 name the phase)."""
        if not self.args.profile or self.ctl is None:
            return
        if start:
            (Path(self.args.profile) / "phase").write_text(f"{self.n}-{phase}")
        self.ctl.send_signal(signal.SIGUSR1 if start else signal.SIGUSR2)

    def stop(self) -> None:
        for proc, sig in ((self.ctl, signal.SIGTERM), (self.gen_proc, signal.SIGTERM)):
            if proc is not None and proc.poll() is None:
                proc.send_signal(sig)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- measurements ----------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        return dict(self.api("GET", "/api/v1/health", timeout=30)["jobs"])

    def lag(self) -> dict[str, float]:
        """The controller's event-loop lag gauges (trailing 60 s) from one scrape."""
        text = self.api("GET", "/metrics", timeout=60)
        out = {}
        for line in text.splitlines():
            for name in ("skyjobs_event_loop_lag_max_seconds",
                         "skyjobs_event_loop_lag_p99_seconds"):
                if line.startswith(name + " "):
                    out[name.split("_lag_")[1].split("_")[0]] = float(line.split()[1])
        return out

    def lag_histogram(self) -> dict[float, float]:
        """Cumulative counts of skyjobs_event_loop_lag_seconds by bucket bound (le)."""
        out = {}
        for line in self.api("GET", "/metrics", timeout=60).splitlines():
            if line.startswith("skyjobs_event_loop_lag_seconds_bucket{"):
                le = line.split('le="')[1].split('"')[0]
                out[math.inf if le == "+Inf" else float(le)] = float(line.split()[-1])
        return out

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.state / 'skyjobs.db'}?mode=ro", uri=True,
                               timeout=30)
        conn.row_factory = sqlite3.Row
        return conn

    def transitions(self, since: float, until: float) -> int:
        with self.db() as c:
            return int(c.execute("SELECT COUNT(*) FROM events WHERE to_status IS NOT NULL"
                                 " AND at >= ? AND at < ?", (since, until)).fetchone()[0])

    def watch(self, seconds: float, done: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Scrape as Prometheus would until `seconds` pass (or `done`); worst lag seen."""
        worst = {"max": 0.0, "p99": 0.0}
        end = time.monotonic() + seconds
        scrape_at = 0.0
        while True:
            finished = time.monotonic() >= end or (done is not None and done())
            if finished or time.monotonic() >= scrape_at:
                for k, v in self.lag().items():
                    worst[k] = max(worst[k], v)
                scrape_at = time.monotonic() + SCRAPE_EVERY
            if finished:
                return {"lag_max_s": round(worst["max"], 4),
                        "lag_p99_s_worst_60s_window": round(worst["p99"], 4)}
            time.sleep(max(0.0, min(1.0, end - time.monotonic())))


# --- the scenarios -------------------------------------------------------------------------

def ramp(run: Run) -> dict[str, Any]:
    n, t0 = run.n, time.time()
    run.profile("ramp", True)
    meter = Meter(run.ctl.pid)  # type: ignore[union-attr]
    left = n
    while left:
        k = min(ARRAY_MAX, left)
        run.api("POST", "/api/v1/jobs", {"task": TASK, "num_jobs": k}, timeout=300)
        left -= k
    submitted = time.time()
    wait("every job RUNNING", lambda: run.counts().get("RUNNING", 0) == n,
         run.args.time_limit, every=2.0)
    wait("every agent heartbeating", lambda: run.gen("GET", "/ctl/stats")["running_agents"] == n,
         120, every=1.0)
    t1 = time.time()
    run.profile("ramp", False)
    return {"submit_s": round(submitted - t0, 1), "all_running_s": round(t1 - t0, 1),
            "transitions_per_s": round(run.transitions(t0, t1) / (t1 - t0), 1),
            "controller_cpu_s_per_min": meter.per_minute()}


def window_lag(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """Event-loop lag over exactly this window, from the histogram's deltas (the gauges'
    trailing 60 s reach back into the phase before): the bucket bound holding the p99, and
    the share of samples later than 100 ms."""
    delta = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in sorted(after)}
    total = delta.get(math.inf, 0.0)
    if not total:
        return {}
    p99 = next(le for le, n in delta.items() if n >= 0.99 * total)
    return {"lag_p99_s_window_bucket": p99 if p99 != math.inf else None,
            "lag_samples_over_100ms_pct": round(100 * (total - delta.get(0.1, 0.0)) / total,
                                                2)}


def steady(run: Run) -> dict[str, Any]:
    pid = run.ctl.pid  # type: ignore[union-attr]
    time.sleep(run.args.settle)
    run.gen("GET", "/ctl/stats?reset=1")
    gen_meter = Meter(run.gen_proc.pid)  # type: ignore[union-attr]
    run.profile("steady", True)
    meter, t0 = Meter(pid), time.time()
    before = run.lag_histogram()
    lag = run.watch(run.args.steady)
    lag.update(window_lag(before, run.lag_histogram()))
    t1 = time.time()
    cpu, waited = meter.per_minute(), meter.waited_per_minute()
    run.profile("steady", False)
    gen = run.gen("GET", "/ctl/stats?reset=1")
    rss, peak = rss_mb(pid)
    hb = gen["heartbeats"]
    return {"seconds": round(t1 - t0, 1), "controller_cpu_s_per_min": cpu,
            "controller_loop_runqueue_wait_s_per_min": waited,
            "controller_rss_mb": rss, "controller_rss_peak_mb": peak, **lag,
            "heartbeats_per_s": round(hb / (t1 - t0), 1),
            "hb_rtt_p50_s": round(gen["hb_rtt_p50_s"] or 0, 4),
            "hb_rtt_p99_s": round(gen["hb_rtt_p99_s"] or 0, 4),
            "hb_rtt_max_s": round(gen["hb_rtt_max_s"] or 0, 4),
            "hb_errors": gen["counts"].get("hb_errors", 0),
            "host_load_avg_1m": round(os.getloadavg()[0], 2),
            "log_posts_per_s": round(gen["counts"].get("log_posts", 0) / (t1 - t0), 1),
            "transitions_per_s": round(run.transitions(t0, t1) / (t1 - t0), 2),
            "generator_cpu_s_per_min": gen_meter.per_minute(),
            "generator_lag_p99_s": gen["generator_lag_p99_s"],
            "generator_lag_max_s": gen["generator_lag_max_s"]}


def reclaim(run: Run) -> dict[str, Any]:
    n, count = run.n, min(run.args.reclaim or 1000, run.n)
    meter = Meter(run.ctl.pid)  # type: ignore[union-attr]
    run.profile("reclaim", True)
    shot = run.gen("POST", "/ctl/reclaim", {"count": count, "notice_s": run.args.notice,
                                            "checkpoint_s": 2.0, "outage": True})
    issued, victims = float(shot["issued_at"]), shot["victims"]
    jobs = {int(v[1]): int(v[2]) for v in victims}  # job -> reclaimed attempt id

    def replaced() -> bool:
        with run.db() as c:
            rows = c.execute("SELECT COUNT(DISTINCT job_id) FROM events WHERE at > ? AND"
                             " to_status = 'RUNNING'", (issued,)).fetchone()
        return int(rows[0]) >= len(jobs)

    lag = run.watch(run.args.time_limit, done=replaced)
    t_done = time.time()
    run.profile("reclaim", False)
    cpu, waited = meter.per_minute(), meter.waited_per_minute()
    with run.db() as c:
        rows = c.execute("SELECT job_id, MIN(at) AS at, to_status FROM events WHERE at >= ?"
                         " AND to_status IN ('RECOVERING', 'RUNNING') GROUP BY job_id,"
                         " to_status", (issued - 1,)).fetchall()
    recovering = {r["job_id"]: r["at"] - issued for r in rows if r["to_status"] == "RECOVERING"}
    running = {r["job_id"]: r["at"] - issued for r in rows if r["to_status"] == "RUNNING"}
    launches = run.gen("GET", "/ctl/launches")["launches"]
    first_launch: dict[int, float] = {}
    for at, job_id, attempt_id, *_ in launches:
        if job_id in jobs and attempt_id != jobs[job_id] and at >= issued:
            first_launch[job_id] = min(first_launch.get(job_id, math.inf), at - issued)
    hooks = run.gen("GET", "/ctl/hooks")["hooks"]
    hook_lag = [got - at for got, event, job_id, at in hooks
                if event == "recovering" and job_id in jobs and at is not None and at >= issued]
    hook_e2e = [got - issued for got, event, job_id, _ in hooks
                if event == "recovering" and job_id in jobs and got >= issued]
    rec, lau, rr = list(recovering.values()), list(first_launch.values()), list(running.values())
    return {
        "notices": len(jobs), "zone": shot["zone"], "of_jobs": n,
        "notice_to_recovering_p50_s": pct(rec, 0.5), "notice_to_recovering_p99_s": pct(rec, 0.99),
        "notice_to_recovering_max_s": pct(rec, 1.0), "recovering_recorded": len(rec),
        "notice_to_launch_p50_s": pct(lau, 0.5), "notice_to_launch_p99_s": pct(lau, 0.99),
        "notice_to_launch_max_s": pct(lau, 1.0),
        "launches_requested_within_30s": sum(1 for x in lau if x <= 30.0),
        "notice_to_replacement_running_p50_s": pct(rr, 0.5),
        "notice_to_replacement_running_p99_s": pct(rr, 0.99),
        "webhook_enqueue_lag_s": 0.0,  # queued in the transition's own transaction
        "webhook_delivery_lag_p50_s": pct(hook_lag, 0.5),
        "webhook_delivery_lag_p99_s": pct(hook_lag, 0.99),
        "notice_to_webhook_received_p99_s": pct(hook_e2e, 0.99),
        "webhooks_received": len(hook_lag),
        "phase_s": round(t_done - issued, 1),
        "transitions_per_s": round(run.transitions(issued, t_done) / (t_done - issued), 1),
        "controller_cpu_s_per_min": cpu, "controller_loop_runqueue_wait_s_per_min": waited,
        **lag, "controller_rss_mb": rss_mb(run.ctl.pid)[0],  # type: ignore[union-attr]
    }


def restart(run: Run) -> dict[str, Any]:
    n = run.n
    # Let the reclaimed instances reach their deadline first: a clean steady state again.
    time.sleep(run.args.settle)
    before = run.counts()
    with run.db() as c:
        attempts_before = int(c.execute("SELECT COUNT(*) FROM attempts").fetchone()[0])
    run.gen("POST", "/ctl/mark")
    killed = time.time()
    assert run.ctl is not None
    run.ctl.send_signal(signal.SIGKILL)  # under load: every agent is heartbeating
    run.ctl.wait(timeout=30)
    time.sleep(run.args.down)
    started = run.start_controller()
    healthy = time.time()
    run.profile("restart", True)
    wait("every job's runner", lambda: run.api("GET", "/api/v1/health", timeout=30)[
        "live_runners"] == n, run.args.time_limit, every=0.5)
    runners = time.time()
    stats = wait("every agent re-attached", lambda: (s := run.gen("GET", "/ctl/stats"))[
        "reattached"] >= s["running_agents"] == n and s, run.args.time_limit, every=0.5)
    attached = time.time()
    run.profile("restart", False)
    # Nothing lost: every job still RUNNING on the attempt it had, no recovery started.
    time.sleep(run.args.settle)
    after = run.counts()
    with run.db() as c:
        attempts_after = int(c.execute("SELECT COUNT(*) FROM attempts").fetchone()[0])
        recoveries = int(c.execute("SELECT COUNT(*) FROM events WHERE at >= ? AND"
                                   " to_status = 'RECOVERING'", (killed,)).fetchone()[0])
    return {
        "down_s": run.args.down,
        "start_to_healthy_s": round(healthy - started, 2),
        "start_to_all_runners_s": round(runners - started, 2),
        "start_to_all_agents_reattached_s": round(attached - started, 2),
        "last_agent_reattached_after_start_s": round(stats["reattached_last_at"] - started, 2),
        "jobs_before": before, "jobs_after": after,
        "lost": n - after.get("RUNNING", 0), "recoveries_started": recoveries,
        "new_attempts": attempts_after - attempts_before,
        "controller_rss_mb_after": rss_mb(run.ctl.pid)[0],
    }


def stuck(run: Run) -> dict[str, Any]:
    """Where a phase that timed out stood: jobs by state, the controller's CPU and memory,
    and the generator's counters since its last reset."""
    out: dict[str, Any] = {}
    with run.db() as c:
        out["jobs"] = dict(c.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")
                           .fetchall())
    if run.ctl is not None and run.ctl.poll() is None:
        meter = Meter(run.ctl.pid)
        time.sleep(10)
        out.update(controller_cpu_s_per_min=meter.per_minute(),
                   controller_loop_runqueue_wait_s_per_min=meter.waited_per_minute(),
                   controller_rss_mb=rss_mb(run.ctl.pid)[0])
    try:
        out["generator"] = run.gen("GET", "/ctl/stats")
    except (OSError, urllib.error.URLError) as err:
        out["generator"] = str(err)
    return out


def one(n: int, args: argparse.Namespace) -> dict[str, Any]:
    run = Run(n, args)
    result: dict[str, Any] = {"jobs": n, "cores": os.cpu_count(),
                              "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
                              "dir": str(run.dir)}
    try:
        run.start_generator()
        run.start_controller()
        for name, phase in (("ramp", ramp), ("steady", steady), ("reclaim", reclaim),
                            ("restart", restart)):
            if name in args.skip:
                continue
            try:
                result[name] = phase(run)
            except SystemExit as err:
                run.profile(name, False)  # keep what the profiler saw of the stuck phase
                # A phase that does not finish in time is a figure too: say where it stood.
                result[name] = {"did_not_finish": str(err), **stuck(run)}
                print(json.dumps({"jobs": n, name: result[name]}), flush=True)
                break
            print(json.dumps({"jobs": n, name: result[name]}), flush=True)
        result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    finally:
        run.stop()
    return result


# --- the controller under pyinstrument -------------------------------------------------------

def profiled_controller(state: str, out_dir: str) -> None:
    """``skyjobs controller``, with the event loop's thread and the store's thread profiled
    between SIGUSR1 and SIGUSR2 (a text and an HTML profile of each per phase, named by the
    driver). pyinstrument samples wall-clock stacks of the thread that starts it, so the
    store's profiler is started and stopped on the store's own thread."""
    import asyncio

    from pyinstrument import Profiler

    sys.path.insert(0, str(ROOT))
    from skyjobs.config import load_config
    from skyjobs.controller.daemon import Controller
    from skyjobs.logsetup import setup_logging

    cfg = load_config(state_dir=Path(state), port=0)
    setup_logging(cfg.log_format)
    out = Path(out_dir)
    ctl = Controller(cfg)
    holder: dict[str, Profiler] = {}

    def store_pool() -> Any:
        return ctl._store._pool if ctl._store is not None else None  # noqa: SLF001 - bench

    def begin() -> None:
        if holder:
            return
        holder["loop"] = Profiler(interval=0.001, async_mode="disabled")
        holder["loop"].start()
        if (pool := store_pool()) is not None:
            holder["store"] = Profiler(interval=0.001, async_mode="disabled")
            pool.submit(holder["store"].start).result()

    def end() -> None:
        name = (out / "phase").read_text().strip()
        for thread, prof in list(holder.items()):
            if thread == "store" and (pool := store_pool()) is not None:
                pool.submit(prof.stop).result()
            elif thread == "loop":
                prof.stop()
            # The raw session only: rendering a minute of samples here would itself hold
            # the loop for seconds. The driver renders it afterwards (render_profiles).
            assert prof.last_session is not None
            prof.last_session.save(out / f"{name}-{thread}.pyisession")
        holder.clear()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, begin)
        loop.add_signal_handler(signal.SIGUSR2, end)
        await ctl.serve()

    asyncio.run(main())


def render_profiles(out: Path) -> None:
    """Text and HTML of every saved session, outside the measured processes."""
    from pyinstrument.renderers import ConsoleRenderer, HTMLRenderer
    from pyinstrument.session import Session

    for path in sorted(out.glob("*.pyisession")):
        session = Session.load(path)
        path.with_suffix(".txt").write_text(ConsoleRenderer(
            unicode=True, color=False, show_all=False).render(session))
        path.with_suffix(".html").write_text(HTMLRenderer().render(session))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "_profiled_controller":
        profiled_controller(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default="1000", help="comma-separated fleet sizes")
    ap.add_argument("--steady", type=float, default=60.0, help="steady-state window, seconds")
    ap.add_argument("--settle", type=float, default=10.0, help="pause between phases")
    ap.add_argument("--reclaim", type=int, default=1000, help="notices at once (<= jobs)")
    ap.add_argument("--notice", type=float, default=30.0, help="notice deadline, seconds")
    ap.add_argument("--down", type=float, default=2.0, help="seconds the controller stays dead")
    ap.add_argument("--log-every", type=float, default=10.0)
    ap.add_argument("--boot-delay", type=float, default=1.0)
    ap.add_argument("--time-limit", type=float, default=900.0, help="bound on each wait")
    ap.add_argument("--skip", default="", help="phases to skip: steady,reclaim,restart")
    ap.add_argument("--profile", default=None, help="write pyinstrument profiles here")
    ap.add_argument("--keep", action="store_true", help="keep the state dirs and logs")
    args = ap.parse_args()
    args.skip = {s for s in args.skip.split(",") if s}
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    results = [one(int(n), args) for n in args.jobs.split(",")]
    if args.profile:
        render_profiles(Path(args.profile))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
