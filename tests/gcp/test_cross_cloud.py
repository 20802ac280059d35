"""An ``ordered:`` task that prefers AWS and falls back to GCP, on one controller with both
providers: EC2 through moto, Compute Engine through the fake, agents booted on the VM."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aioboto3", reason="the AWS half needs aioboto3 (extra: aws)")
pytest.importorskip("moto.server", reason="the AWS half needs moto[server] (extra: test)")

from tests.aws.conftest import AMI, REGIONS, Api, first_sweep_done, until  # noqa: E402
from tests.aws.conftest import OFFERINGS as AWS_OFFERINGS  # noqa: E402
from tests.gcp.conftest import FAST, MACHINE, OFFERINGS, PROJECT  # noqa: E402


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Any:
    from tests.aws.aws_harness import Moto

    server = Moto()
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    yield server
    server.stop()


@pytest.fixture
async def both(moto: Any, gce: Any, gcs: Any, fleet: Any,
               tmp_path: Path) -> AsyncIterator[Api]:
    from skyjobs.config import load_config
    from skyjobs.controller.daemon import Controller
    from skyjobs.pricing.catalog import Catalog, Offering
    from skyjobs.providers.aws import AwsConfig, AwsProvider
    from skyjobs.providers.gcp.compute import GcpProvider
    from skyjobs.providers.gcp.config import GcpConfig

    aws = AwsProvider(AwsConfig(image_ids={"": [AMI]}, endpoint_url=moto.url), regions=REGIONS)
    gcp = GcpProvider(GcpConfig(endpoint_url=gce.url, anonymous=True, project=PROJECT))
    for _region, zone, price in AWS_OFFERINGS:
        moto.prices[(zone, "m5.large")] = (price, time.time())
    config = load_config(state_dir=tmp_path / "state", port=0, clouds=["aws", "gcp"], **FAST)
    ctl = Controller(config, providers={"aws": aws, "gcp": gcp})
    ctl.catalog = Catalog([
        *(Offering("aws", r, z, "m5.large", None, 0, 2, 8, 0.096, p, "2026-11-01", "test")
          for r, z, p in AWS_OFFERINGS),
        # GCP is cheaper here: only the task's order can put AWS first.
        *(Offering("gcp", r, z, MACHINE, None, 0, 4, 16, 0.19, p / 2, "2026-11-01", "test")
          for r, z, p in OFFERINGS)])
    await ctl.start()
    await until("the startup orphan sweep", lambda: first_sweep_done(ctl), 30)
    api = Api(ctl)
    try:
        yield api
    finally:
        await api.close()
        await ctl.shutdown()
        await aws.close()


async def test_ordered_falls_back_from_aws_to_gcp(both: Api, moto: Any, gce: Any) -> None:
    for _region, zone, _price in AWS_OFFERINGS:
        moto.failing[zone] = "InsufficientInstanceCapacity"  # no m5.large anywhere
    task = {"name": "fallback",
            "resources": {"use_spot": True, "ordered": [
                {"cloud": "aws", "instance_type": "m5.large"},
                {"cloud": "gcp", "instance_type": MACHINE}]},
            "run": "echo ran on $SKYPILOT_NUM_NODES node"}
    job_id = await both.submit(task)
    done = await both.wait_status(job_id, "SUCCEEDED", "FAILED", within=120)
    assert done["status"] == "SUCCEEDED", done
    clouds = [a["placement"].split("/")[0] for a in done["attempt_list"]]
    # Every AWS zone first, in the order's preference, then GCP.
    assert clouds[:-1] == ["aws"] * (len(clouds) - 1) and clouds[-1] == "gcp", clouds
    assert [z for _, z in moto.run_calls] == [z for _r, z, _p in AWS_OFFERINGS]
    assert len(gce.inserts) == 1
    assert "ran on 1 node" in await both.logs(job_id, len(clouds))
