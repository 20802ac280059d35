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
import tempfile
import time
from pathlib import Path

from cloud_bench import FOREVER, World, say, steady_line, steady_state, wait

from skyjobs.pricing.catalog import Offering
from skyjobs.providers.aws import AwsConfig, AwsProvider
from tests.aws.aws_harness import Fleet, Moto

REGION = "us-east-1"
ZONES = [("us-east-1a", 0.030), ("us-east-1b", 0.034), ("us-east-1c", 0.036)]
TASK = {"name": "bench", "resources": {"cloud": "aws", "instance_type": "m5.large",
                                       "use_spot": True}, "run": FOREVER}


def world(moto: Moto, root: Path, boot: bool) -> World:
    """A fresh moto state and a controller with the AWS provider."""
    moto.reset()
    fleet = Fleet(moto, root / "fleet", [REGION])
    fleet.hold = not boot
    provider = AwsProvider(AwsConfig(image_ids={"": ["ami-12345678"]}, endpoint_url=moto.url),
                           regions=[REGION])
    offerings = [Offering("aws", REGION, z, "m5.large", None, 0, 2, 8, 0.096, p, "2026-11-01",
                          "bench") for z, p in ZONES]
    return World("aws", provider, offerings, root, fleet)


async def notice_trial(w: World, moto: Moto) -> float:
    job_id = int((await w.call("POST", "/api/v1/jobs", {"task": TASK}))["id"])
    await wait("RUNNING", lambda: w.status_is(job_id, "RUNNING"), 60)
    our_id = (await w.job(job_id))["attempt_list"][0]["instances"][0]
    node = await wait("the node", lambda: w.fleet.node(our_id), 30)
    t0 = time.time()
    w.fleet.preempt(node, notice_s=120)
    t1 = await wait("the replacement RunInstances",
                    lambda: next((t for t, _ in moto.run_calls if t > t0), None), 60)
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
    moto = Moto()
    os.environ.update(moto.env())
    try:
        with tempfile.TemporaryDirectory(prefix="skyjobs-bench-") as tmp:
            root = Path(tmp)
            async with world(moto, root / "notice", boot=True) as w:
                lat = [await notice_trial(w, moto) for _ in range(args.trials)]
            say(f"notice -> replacement RunInstances: median {statistics.median(lat):.2f}s, "
                f"min {min(lat):.2f}s, max {max(lat):.2f}s over {len(lat)} trials "
                f"(notice_poll_interval 1 s)")
            for n in (int(s) for s in args.sizes.split(",")):
                async with world(moto, root / f"steady-{n}", boot=False) as w:
                    r = await steady_state(w, TASK, n, args.window, "run_instances",
                                           "describe_instances")
                say(steady_line(r, "1 region", "EC2", "DescribeInstances"))
    finally:
        moto.stop()


if __name__ == "__main__":
    asyncio.run(main())
