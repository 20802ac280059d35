"""Bench: the GCP provider against the fake Compute API (tests/gcp/gce_fake.py), through
the real google-cloud-compute client.

1. Notice -> replacement insert: a job runs on a booted VM (real agent process, its own
   fake metadata server); the fake flips ``instance/preempted`` to TRUE (a 30 s notice, as
   GCE gives); we time until the fake receives the replacement's ``instances.insert``. The
   agent long-polls the metadata server, so no poll interval adds to this.
2. Steady-state Compute API load at N live jobs: N jobs launched through the controller,
   then every Compute call the provider makes is counted over a window. The agents are not
   booted (1000 agent processes do not fit this machine), so the jobs stay PROVISIONING; the
   controller polls provisioning and running attempts with the same aggregated call, so the
   API load is the same as for N running jobs (the agents talk only to the controller).

Run: .venv/bin/python bench/gcp_notice.py [--sizes 100,1000] [--window 60] [--trials 3]
Network: only the fakes on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from skyjobs.config import load_config  # noqa: E402
from skyjobs.controller.daemon import Controller  # noqa: E402
from skyjobs.pricing.catalog import Catalog, Offering  # noqa: E402
from skyjobs.providers.gcp.compute import GcpProvider  # noqa: E402
from skyjobs.providers.gcp.config import GcpConfig  # noqa: E402
from tests.aws.conftest import first_sweep_done  # noqa: E402
from tests.gcp.gce_fake import GceFake  # noqa: E402
from tests.gcp.gce_harness import Fleet  # noqa: E402

REGION = "us-central1"
MACHINE = "n2-standard-4"
ZONES = [("us-central1-a", 0.030), ("us-central1-b", 0.034), ("us-central1-c", 0.036)]
NOTICE_S = 30.0  # what GCE gives a Spot VM
TASK = {"name": "bench", "resources": {"cloud": "gcp", "instance_type": MACHINE,
                                       "use_spot": True},
        "run": "trap 'exit 143' TERM; while true; do sleep 0.2; done"}


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def wait(what: str, check: Callable[[], Awaitable[Any] | Any], within: float) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.05)
    raise SystemExit(f"bench: timed out after {within:.0f}s waiting for {what}")


class World:
    """A fresh fake GCE, a controller with the GCP provider, and its HTTP client."""

    def __init__(self, gce: GceFake, root: Path, boot: bool) -> None:
        gce.reset()
        self.gce = gce
        self.fleet = Fleet(gce, root / "fleet", max_nodes=16)
        self.fleet.hold = not boot
        self.provider = GcpProvider(GcpConfig(endpoint_url=gce.url, anonymous=True,
                                              project="bench"), zones=[z for z, _ in ZONES])
        config = load_config(state_dir=root / "state", port=0, clouds=["gcp"],
                             log_format="json")
        self.ctl = Controller(config, providers={"gcp": self.provider})
        self.ctl.catalog = Catalog(
            Offering("gcp", REGION, z, MACHINE, None, 0, 4, 16, 0.19, p, "2026-11-01",
                     "bench") for z, p in ZONES)

    @property
    def polls(self) -> int:
        return int(self.ctl.duties.stats["poll_instances"].runs)

    @property
    def poll_seconds(self) -> float:
        return float(self.ctl.duties.stats["poll_instances"].seconds)

    async def __aenter__(self) -> World:
        import aiohttp

        await self.ctl.start()
        await wait("the startup orphan sweep", lambda: first_sweep_done(self.ctl), 30)
        self.http = aiohttp.ClientSession(
            base_url=self.ctl.url, headers={"Authorization": f"Bearer {self.ctl.token}"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()
        await self.ctl.shutdown()
        self.fleet.close()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, path, json=body) as r:
            data = await r.json()
            if r.status >= 300:
                raise SystemExit(f"bench: {method} {path}: {r.status} {data}")
            return data

    async def job(self, job_id: int) -> dict[str, Any]:
        return dict(await self.call("GET", f"/api/v1/jobs/{job_id}"))


async def notice_trial(w: World) -> float:
    job_id = int((await w.call("POST", "/api/v1/jobs", {"task": TASK}))["id"])
    await wait("RUNNING", lambda: _status_is(w, job_id, "RUNNING"), 60)
    our_id = (await w.job(job_id))["attempt_list"][0]["instances"][0]
    await wait("the node", lambda: w.fleet.node(our_id), 30)
    # The agent must be watching: the job's first log line means run has started.
    await wait("the job's run", lambda: _ran(w, job_id), 30)
    t0 = time.time()
    w.fleet.preempt(our_id, notice_s=NOTICE_S)
    t1 = await wait("the replacement insert",
                    lambda: next((t for t, *_ in w.gce.inserts if t > t0), None), 60)
    await wait("the replacement to run",
               lambda: _attempts_running(w, job_id, 2), 60)
    await w.call("POST", "/api/v1/cancel", {"ids": [job_id]})
    await wait("CANCELLED", lambda: _status_is(w, job_id, "CANCELLED"), 30)
    return t1 - t0


async def _ran(w: World, job_id: int) -> bool:
    j = await w.job(job_id)
    return bool(j["attempt_list"]) and j["attempt_list"][0].get("status") == "running"


async def _status_is(w: World, job_id: int, status: str) -> bool:
    return (await w.job(job_id))["status"] == status


async def _attempts_running(w: World, job_id: int, n: int) -> bool:
    j = await w.job(job_id)
    return j["status"] == "RUNNING" and len(j["attempt_list"]) >= n


async def steady_state(w: World, n: int, window: float) -> dict[str, Any]:
    for _ in range(n):
        await w.call("POST", "/api/v1/jobs", {"task": TASK})
    await wait(f"{n} launches", lambda: w.provider.calls["insert"] >= n, 900)
    await wait("every attempt provisioning", lambda: _all_provisioning(w, n), 300)
    polls0, calls0, busy0 = w.polls, sum(w.provider.calls.values()), w.poll_seconds
    lists0 = w.provider.calls["aggregatedList"]
    ops0 = dict(w.provider.calls)
    t0 = time.monotonic()
    await asyncio.sleep(window)  # the measurement window itself, not a wait for a condition
    elapsed = time.monotonic() - t0
    calls = sum(w.provider.calls.values()) - calls0
    by_op = {op: n - ops0.get(op, 0) for op, n in w.provider.calls.items()
             if n - ops0.get(op, 0)}
    polls = w.polls - polls0
    per_min = calls * 60 / elapsed
    return {"jobs": n, "window_s": elapsed, "polls": polls, "calls": calls, "by_op": by_op,
            "poll_s": (w.poll_seconds - busy0) / max(polls, 1),
            # Every aggregatedList in the window comes from the polls (and the orphan
            # sweep, once a minute); nothing else lists instances while the jobs just run.
            "calls_per_poll": (w.provider.calls["aggregatedList"] - lists0) / max(polls, 1),
            "calls_per_min": per_min,
            "calls_per_job_per_min": per_min / n}


async def _all_provisioning(w: World, n: int) -> bool:
    jobs = (await w.call("GET", f"/api/v1/jobs?limit={n}&status=PROVISIONING"))["jobs"]
    return len(jobs) >= n


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.WARNING)
    os.environ.setdefault("NO_GCE_CHECK", "True")  # never probe a real metadata server
    with GceFake() as gce, tempfile.TemporaryDirectory(prefix="skyjobs-bench-") as tmp:
        root = Path(tmp)
        async with World(gce, root / "notice", boot=True) as w:
            lat = [await notice_trial(w) for _ in range(args.trials)]
        say(f"notice -> replacement insert: median {statistics.median(lat):.2f}s, "
            f"min {min(lat):.2f}s, max {max(lat):.2f}s over {len(lat)} trials "
            f"({NOTICE_S:g} s notice, metadata long-poll)")
        for n in (int(s) for s in args.sizes.split(",")):
            async with World(gce, root / f"steady-{n}", boot=False) as w:
                r = await steady_state(w, n, args.window)
                interval = w.ctl.config.instance_poll_interval
            say(f"{n} live jobs, 3 zones, instance_poll_interval {interval:g} s: "
                f"{r['polls']} polls in {r['window_s']:.0f}s taking {r['poll_s']:.2f}s each, "
                f"{r['calls']} Compute calls ({r['calls_per_poll']:g} aggregatedList pages "
                f"per poll), {r['calls_per_min']:.1f} calls/min, "
                f"{r['calls_per_job_per_min']:.4f} calls per job per minute; "
                f"by method {r['by_op']}")


if __name__ == "__main__":
    asyncio.run(main())
