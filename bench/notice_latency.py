#!/usr/bin/env python3
"""Notice latency: N concurrent spot jobs on the local provider, each preempted with a notice.

Prints p50/p99 of notice -> RECOVERING recorded and notice -> replacement RUNNING, and the
controller's resident memory. Uses the controller's default settings. The notices are
served by each simulated instance's metadata endpoint at (nearly) the same moment, as a
cloud reclaiming a whole zone would; the clock starts when each endpoint began serving.

    .venv/bin/python bench/notice_latency.py --jobs 100 --notice 20
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from skyjobs.client import Client, local_client, wait_until  # noqa: E402
from skyjobs.providers.local_instance import kill_session, read_json  # noqa: E402

RUN = "trap 'echo checkpointing; exit 143' TERM; sleep 3600 & wait"


def wait(what: str, check: Any, limit_s: float) -> Any:
    try:
        return wait_until(what, check, limit_s)
    except TimeoutError as err:
        raise SystemExit(str(err)) from None


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def metadata_ports(client: Client, state: Path, ids: list[int]) -> dict[int, int]:
    out = {}
    for job_id in ids:
        instance = client.get(f"/api/v1/jobs/{job_id}")["attempt_list"][0]["instances"][0]
        info = read_json(state / "local-cloud" / "instances" / instance / "instance.json")
        out[job_id] = int((info or {})["metadata_port"])
    return out


def notice_times(client: Client, state: Path, ids: list[int]) -> dict[int, float]:
    """When each first attempt's metadata endpoint began serving the notice."""
    out = {}
    for job_id in ids:
        instance = client.get(f"/api/v1/jobs/{job_id}")["attempt_list"][0]["instances"][0]
        info = read_json(state / "local-cloud" / "instances" / instance / "instance.json")
        out[job_id] = float((info or {})["notice_at"])  # type: ignore[arg-type]
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def statuses(client: Client) -> dict[int, str]:
    return {j["id"]: j["status"] for j in client.get("/api/v1/jobs", limit=10000)["jobs"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--notice", type=float, default=20.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()

    state = Path(tempfile.mkdtemp(prefix="skyjobs-bench-"))
    log = open(state.parent / f"{state.name}.log", "wb")  # noqa: SIM115
    ctl = subprocess.Popen([sys.executable, "-m", "skyjobs", "--state-dir", str(state),
                            "controller", "--port", "0"], stdout=log, stderr=log,
                           env={**os.environ, "SKYJOBS_LOG_FORMAT": "json"})
    try:
        client = wait("controller", lambda: (c := local_client(state)) and c.healthy() and c, 30)
        task = {"name": "bench", "resources": {"cloud": "local", "cpus": 2, "use_spot": True},
                "run": RUN}
        t0 = time.monotonic()
        ids = [client.post("/api/v1/jobs", {"task": task})["id"] for _ in range(args.jobs)]
        wait("all RUNNING", lambda: list(statuses(client).values()).count("RUNNING")
             == args.jobs, args.timeout)
        print(f"{args.jobs} jobs RUNNING in {time.monotonic() - t0:.1f}s")
        rss_before = rss_mb(ctl.pid)
        cpu_before, wall_before = cpu_seconds(ctl.pid), time.monotonic()

        ports = metadata_ports(client, state, ids)

        def preempt(job_id: int) -> None:
            # The cloud preempts, not the controller: post straight to each instance's
            # simulated metadata service, as `skyjobs preempt` does through the provider.
            url = f"http://127.0.0.1:{ports[job_id]}/sim/preempt?notice={args.notice}"
            with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10):
                pass

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(preempt, ids))
        issued = notice_times(client, state, ids)

        def recovered() -> bool:
            jobs = client.get("/api/v1/jobs", limit=10000)["jobs"]
            return all(j["status"] == "RUNNING" and j["attempts"] == 2 for j in jobs)

        wait("every replacement RUNNING", recovered, args.timeout)
        cpu_used = cpu_seconds(ctl.pid) - cpu_before
        wall = time.monotonic() - wall_before
        to_recovering, to_running, to_heard = [], [], []
        for job_id in ids:
            events = client.get(f"/api/v1/jobs/{job_id}/events")["events"]
            heard = next(e["at"] for e in events if "preemption notice on" in (e["reason"] or ""))
            to_heard.append(heard - issued[job_id])
            rec = next(e["at"] for e in events if e["to_status"] == "RECOVERING")
            run2 = [e["at"] for e in events if e["to_status"] == "RUNNING"][1]
            to_recovering.append(rec - issued[job_id])
            to_running.append(run2 - issued[job_id])
        rss_now, rss_peak = rss_mb(ctl.pid)
        result = {
            "jobs": args.jobs, "notice_s": args.notice,
            "notice_to_controller_heard_p50_s": round(statistics.median(to_heard), 3),
            "notice_to_controller_heard_p99_s": round(pct(to_heard, 99), 3),
            "notice_to_recovering_p50_s": round(statistics.median(to_recovering), 3),
            "notice_to_recovering_p99_s": round(pct(to_recovering, 99), 3),
            "notice_to_recovering_max_s": round(max(to_recovering), 3),
            "notice_to_replacement_running_p50_s": round(statistics.median(to_running), 3),
            "notice_to_replacement_running_p99_s": round(pct(to_running, 99), 3),
            "recovery_phase_wall_s": round(wall, 1),
            "controller_cpu_s_in_recovery_phase": round(cpu_used, 2),
            "host_load_avg_1m": os.getloadavg()[0],
            "controller_rss_mb_before_preemption": round(rss_before[0], 1),
            "controller_rss_mb_after": round(rss_now, 1),
            "controller_rss_mb_peak": round(rss_peak, 1),
        }
        print(json.dumps(result, indent=2))
        client.post("/api/v1/cancel", {"all": True})
        wait("cancel", lambda: set(statuses(client).values()) == {"CANCELLED"}, 120)
    finally:
        ctl.send_signal(signal.SIGTERM)
        ctl.wait(timeout=30)
        for d in (state / "local-cloud" / "instances").glob("*"):
            sid = (read_json(d / "instance.json") or {}).get("sid")
            if isinstance(sid, int):
                kill_session(sid)


if __name__ == "__main__":
    main()
