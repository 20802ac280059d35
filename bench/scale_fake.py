#!/usr/bin/env python3
"""Scale of one controller: N live jobs against the in-memory provider (no processes).

Submits N jobs through the HTTP API, lets every runner launch its attempt, then reports
submit throughput, the controller's memory, how long one batched instance poll takes, and
how long `queue` takes for the first page and for all jobs. Jobs stay PROVISIONING (no
agents run), which is the same per-job footprint as RUNNING for the controller.

    .venv/bin/python bench/scale_fake.py --jobs 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from skyjobs.config import load_config  # noqa: E402
from skyjobs.controller.daemon import Controller  # noqa: E402
from skyjobs.controller.monitor import InstanceMonitor  # noqa: E402
from skyjobs.providers.fake import FakeProvider  # noqa: E402

TASK = {"resources": {"cloud": "local", "cpus": 2, "use_spot": True}, "run": "sleep 1"}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main(jobs: int) -> None:
    state = Path(tempfile.mkdtemp(prefix="skyjobs-scale-"))
    fake = FakeProvider()
    ctl = Controller(load_config(state_dir=state, port=0, instance_poll_interval=3600,
                                 provision_timeout=86400), providers={"local": fake})
    await ctl.start()
    rss0 = rss_mb()
    headers = {"Authorization": f"Bearer {ctl.token}"}
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            t0 = time.monotonic()
            sem = asyncio.Semaphore(32)

            async def submit() -> None:
                async with sem, http.post(f"{ctl.url}/api/v1/jobs", json={"task": TASK}) as r:
                    assert r.status == 201, await r.text()

            await asyncio.gather(*(submit() for _ in range(jobs)))
            submit_s = time.monotonic() - t0
            deadline = time.monotonic() + 600
            while len(fake.alive()) < jobs and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.5)
            launched_s = time.monotonic() - t0
            t1 = time.monotonic()
            await InstanceMonitor(ctl.services).poll()
            poll_s = time.monotonic() - t1

            async def timed(url: str) -> float:
                t = time.monotonic()
                async with http.get(url) as r:
                    await r.read()
                return time.monotonic() - t

            page = await timed(f"{ctl.url}/api/v1/jobs?limit=50")
            everything = await timed(f"{ctl.url}/api/v1/jobs?limit=10000")
        print(json.dumps({
            "jobs": jobs, "live_runners": len(ctl.runners),
            "instances_launched": len(fake.alive()),
            "submit_per_s": round(jobs / submit_s, 1),
            "all_launched_after_s": round(launched_s, 1),
            "controller_rss_mb_start": round(rss0, 1), "controller_rss_mb": round(rss_mb(), 1),
            "rss_kb_per_job": round((rss_mb() - rss0) * 1024 / jobs, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "one_instance_poll_s": round(poll_s, 3),
            "queue_first_page_s": round(page, 3),
            "queue_all_jobs_s": round(everything, 3),
        }, indent=2))
    finally:
        await ctl.shutdown()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10000)
    asyncio.run(main(ap.parse_args().jobs))
