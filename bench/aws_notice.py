"""Bench: the AWS provider under the moto harness (tests/aws/aws_harness.py).

1. Notice -> replacement: a job runs on a booted instance (real agent process, IMDS
   emulator); the harness serves the spot notice; we time until moto sees the replacement's
   RunInstances. Controller settings are the defaults (notice_poll_interval 1 s).
2. Steady-state EC2 API load at N live jobs: N jobs launched through the controller, then
   every EC2 call the provider makes is counted over a window. The agents are not booted
   (1000 agent processes do not fit this machine), so the jobs stay PROVISIONING; the
   controller polls provisioning and running attempts with the same batched call, so the
   EC2 load is the same as for N running jobs (the agents talk only to the controller).

Run: .venv/bin/python bench/aws_notice.py [--sizes 100,1000] [--window 60] [--trials 3]
Network: only the moto server on 127.0.0.1.
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
from skyjobs.providers.aws import AwsConfig, AwsProvider  # noqa: E402
from tests.aws.aws_harness import Fleet, Moto  # noqa: E402
from tests.aws.conftest import first_sweep_done  # noqa: E402

REGION = "us-east-1"
ZONES = [("us-east-1a", 0.030), ("us-east-1b", 0.034), ("us-east-1c", 0.036)]
TASK = {"name": "bench", "resources": {"cloud": "aws", "instance_type": "m5.large",
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
    """A fresh moto state, a controller with the AWS provider, and its HTTP client."""

    def __init__(self, moto: Moto, root: Path, boot: bool) -> None:
        moto.reset()
        self.moto = moto
        self.fleet = Fleet(moto, root / "fleet", [REGION])
        self.fleet.hold = not boot
        self.provider = AwsProvider(AwsConfig(image_ids={"": ["ami-12345678"]},
                                              endpoint_url=moto.url), regions=[REGION])
        config = load_config(state_dir=root / "state", port=0, clouds=["aws"],
                             log_format="json")
        self.ctl = Controller(config, providers={"aws": self.provider})
        self.ctl.catalog = Catalog(
            Offering("aws", REGION, z, "m5.large", None, 0, 2, 8, 0.096, p, "2026-11-01",
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
    node = await wait("the node", lambda: w.fleet.node(our_id), 30)
    t0 = time.time()
    w.fleet.preempt(node, notice_s=120)
    t1 = await wait("the replacement RunInstances",
                    lambda: next((t for t, _ in w.moto.run_calls if t > t0), None), 60)
    await wait("the replacement to run",
               lambda: _attempts_running(w, job_id, 2), 60)
    await w.call("POST", "/api/v1/cancel", {"ids": [job_id]})
    await wait("CANCELLED", lambda: _status_is(w, job_id, "CANCELLED"), 30)
    return t1 - t0


async def _status_is(w: World, job_id: int, status: str) -> bool:
    return (await w.job(job_id))["status"] == status


async def _attempts_running(w: World, job_id: int, n: int) -> bool:
    j = await w.job(job_id)
    return j["status"] == "RUNNING" and len(j["attempt_list"]) >= n


async def steady_state(w: World, n: int, window: float) -> dict[str, Any]:
    for _ in range(n):
        await w.call("POST", "/api/v1/jobs", {"task": TASK})
    await wait(f"{n} launches", lambda: w.provider.calls["run_instances"] >= n, 900)
    await wait("every attempt provisioning", lambda: _all_provisioning(w, n), 300)
    polls0, calls0, busy0 = w.polls, sum(w.provider.calls.values()), w.poll_seconds
    describes0 = w.provider.calls["describe_instances"]
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
            # Every DescribeInstances in the window comes from the polls (nothing else
            # describes instances while the jobs just run).
            "calls_per_poll": (w.provider.calls["describe_instances"] - describes0)
            / max(polls, 1),
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
    moto = Moto()
    os.environ.update(moto.env())
    try:
        with tempfile.TemporaryDirectory(prefix="skyjobs-bench-") as tmp:
            root = Path(tmp)
            async with World(moto, root / "notice", boot=True) as w:
                lat = [await notice_trial(w) for _ in range(args.trials)]
            say(f"notice -> replacement RunInstances: median {statistics.median(lat):.2f}s, "
                f"min {min(lat):.2f}s, max {max(lat):.2f}s over {len(lat)} trials "
                f"(notice_poll_interval 1 s)")
            for n in (int(s) for s in args.sizes.split(",")):
                async with World(moto, root / f"steady-{n}", boot=False) as w:
                    r = await steady_state(w, n, args.window)
                say(f"{n} live jobs, 1 region, instance_poll_interval 10 s: {r['polls']} polls "
                    f"in {r['window_s']:.0f}s taking {r['poll_s']:.2f}s each, "
                    f"{r['calls']} EC2 calls "
                    f"({r['calls_per_poll']:g} DescribeInstances per poll), "
                    f"{r['calls_per_min']:.1f} calls/min, "
                    f"{r['calls_per_job_per_min']:.4f} calls per job per minute; "
                    f"by operation {r['by_op']}")
    finally:
        moto.stop()


if __name__ == "__main__":
    asyncio.run(main())
