"""What the cloud benches share (bench/aws_notice.py, bench/gcp_notice.py): a controller in
this event loop with one cloud provider pointed at a local stand-in of that cloud, its HTTP
API, bounded waits, and the steady-state API-load measurement."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from skyjobs.config import load_config  # noqa: E402
from skyjobs.controller.daemon import Controller  # noqa: E402
from skyjobs.pricing.catalog import Catalog, Offering  # noqa: E402
from tests.aws.conftest import first_sweep_done  # noqa: E402

# A job that runs until it is stopped, and exits at once on SIGTERM.
FOREVER = "trap 'exit 143' TERM; while true; do sleep 0.2; done"


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
    """A controller whose only cloud is ``provider``, over ``offerings``, and its client.
    ``fleet`` (the stand-in's booter of agents) is closed with it."""

    def __init__(self, cloud: str, provider: Any, offerings: list[Offering], root: Path,
                 fleet: Any) -> None:
        self.provider, self.fleet = provider, fleet
        config = load_config(state_dir=root / "state", port=0, clouds=[cloud],
                             log_format="json")
        self.ctl = Controller(config, providers={cloud: provider})
        self.ctl.catalog = Catalog(offerings)

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

    async def status_is(self, job_id: int, status: str) -> bool:
        return (await self.job(job_id))["status"] == status

    async def running_attempts(self, job_id: int, n: int) -> bool:
        j = await self.job(job_id)
        return j["status"] == "RUNNING" and len(j["attempt_list"]) >= n

    async def first_attempt_running(self, job_id: int) -> bool:
        j = await self.job(job_id)
        return bool(j["attempt_list"]) and j["attempt_list"][0].get("status") == "running"


async def steady_state(w: World, task: dict[str, Any], n: int, window: float,
                       launch_op: str, poll_op: str) -> dict[str, Any]:
    """Launch ``n`` jobs (agents held back, so they stay PROVISIONING: the controller polls
    provisioning and running attempts alike), then count the provider's API calls over
    ``window`` seconds. ``launch_op``/``poll_op``: the provider's call names."""
    for _ in range(n):
        await w.call("POST", "/api/v1/jobs", {"task": task})
    await wait(f"{n} launches", lambda: w.provider.calls[launch_op] >= n, 900)
    await wait("every attempt provisioning", lambda: _all_provisioning(w, n), 300)
    polls0, calls0, busy0 = w.polls, sum(w.provider.calls.values()), w.poll_seconds
    listed0 = w.provider.calls[poll_op]
    ops0 = dict(w.provider.calls)
    t0 = time.monotonic()
    await asyncio.sleep(window)  # the measurement window itself, not a wait for a condition
    elapsed = time.monotonic() - t0
    calls = sum(w.provider.calls.values()) - calls0
    by_op = {op: c - ops0.get(op, 0) for op, c in w.provider.calls.items()
             if c - ops0.get(op, 0)}
    polls = w.polls - polls0
    per_min = calls * 60 / elapsed
    return {"jobs": n, "window_s": elapsed, "polls": polls, "calls": calls, "by_op": by_op,
            "poll_s": (w.poll_seconds - busy0) / max(polls, 1),
            # Every listing call in the window comes from the polls (and the orphan sweep);
            # nothing else lists instances while the jobs just wait.
            "calls_per_poll": (w.provider.calls[poll_op] - listed0) / max(polls, 1),
            "calls_per_min": per_min, "calls_per_job_per_min": per_min / n,
            "interval": w.ctl.config.instance_poll_interval}


async def _all_provisioning(w: World, n: int) -> bool:
    jobs = (await w.call("GET", f"/api/v1/jobs?limit={n}&status=PROVISIONING"))["jobs"]
    return len(jobs) >= n


def steady_line(r: dict[str, Any], where: str, api: str, poll_call: str) -> str:
    return (f"{r['jobs']} live jobs, {where}, instance_poll_interval {r['interval']:g} s: "
            f"{r['polls']} polls in {r['window_s']:.0f}s taking {r['poll_s']:.2f}s each, "
            f"{r['calls']} {api} calls ({r['calls_per_poll']:g} {poll_call} per poll), "
            f"{r['calls_per_min']:.1f} calls/min, "
            f"{r['calls_per_job_per_min']:.4f} calls per job per minute; "
            f"by operation {r['by_op']}")
