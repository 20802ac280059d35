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
import tempfile
import time
from pathlib import Path

from cloud_bench import FOREVER, World, say, steady_line, steady_state, wait

from skyjobs.pricing.catalog import Offering
from skyjobs.providers.gcp.compute import GcpProvider
from skyjobs.providers.gcp.config import GcpConfig
from tests.gcp.gce_fake import GceFake
from tests.gcp.gce_harness import Fleet

REGION = "us-central1"
MACHINE = "n2-standard-4"
ZONES = [("us-central1-a", 0.030), ("us-central1-b", 0.034), ("us-central1-c", 0.036)]
NOTICE_S = 30.0  # what GCE gives a Spot VM
TASK = {"name": "bench", "resources": {"cloud": "gcp", "instance_type": MACHINE,
                                       "use_spot": True}, "run": FOREVER}


def world(gce: GceFake, root: Path, boot: bool) -> World:
    """A fresh fake GCE and a controller with the GCP provider."""
    gce.reset()
    fleet = Fleet(gce, root / "fleet", max_nodes=16)
    fleet.hold = not boot
    provider = GcpProvider(GcpConfig(endpoint_url=gce.url, anonymous=True, project="bench"),
                           zones=[z for z, _ in ZONES])
    offerings = [Offering("gcp", REGION, z, MACHINE, None, 0, 4, 16, 0.19, p, "2026-11-01",
                          "bench") for z, p in ZONES]
    return World("gcp", provider, offerings, root, fleet)


async def notice_trial(w: World, gce: GceFake) -> float:
    job_id = int((await w.call("POST", "/api/v1/jobs", {"task": TASK}))["id"])
    await wait("RUNNING", lambda: w.status_is(job_id, "RUNNING"), 60)
    our_id = (await w.job(job_id))["attempt_list"][0]["instances"][0]
    await wait("the node", lambda: w.fleet.node(our_id), 30)
    # The agent must be watching: the attempt runs once every node has started run.
    await wait("the job's run", lambda: w.first_attempt_running(job_id), 30)
    t0 = time.time()
    w.fleet.preempt(our_id, notice_s=NOTICE_S)
    t1 = await wait("the replacement insert",
                    lambda: next((t for t, *_ in gce.inserts if t > t0), None), 60)
    await wait("the replacement to run", lambda: w.running_attempts(job_id, 2), 60)
    await w.call("POST", "/api/v1/cancel", {"ids": [job_id]})
    await wait("CANCELLED", lambda: w.status_is(job_id, "CANCELLED"), 30)
    return t1 - t0


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
        async with world(gce, root / "notice", boot=True) as w:
            lat = [await notice_trial(w, gce) for _ in range(args.trials)]
        say(f"notice -> replacement insert: median {statistics.median(lat):.2f}s, "
            f"min {min(lat):.2f}s, max {max(lat):.2f}s over {len(lat)} trials "
            f"({NOTICE_S:g} s notice, metadata long-poll)")
        for n in (int(s) for s in args.sizes.split(",")):
            async with world(gce, root / f"steady-{n}", boot=False) as w:
                r = await steady_state(w, TASK, n, args.window, "insert", "aggregatedList")
            say(steady_line(r, "3 zones", "Compute", "aggregatedList pages"))


if __name__ == "__main__":
    asyncio.run(main())
