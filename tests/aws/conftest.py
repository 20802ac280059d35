"""Fixtures for the AWS tests: one moto server per session, reset before every test.

moto and aioboto3 are imported lazily: without them the test modules skip themselves
(``pytest.importorskip`` at their top) and this file stays importable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

REGIONS = ["us-east-1", "us-west-2"]
AMI = "ami-12345678"
# Spot list prices: us-east-1a is the cheapest, then 1b, then us-west-2a.
OFFERINGS = [("us-east-1", "us-east-1a", 0.030), ("us-east-1", "us-east-1b", 0.034),
             ("us-west-2", "us-west-2a", 0.038)]
FAST = {"instance_poll_interval": 0.5, "notice_poll_interval": 0.2, "heartbeat_interval": 0.5,
        "heartbeat_timeout": 5.0, "silent_window": 30.0, "launch_backoff_initial": 0.5,
        "launch_backoff_max": 1.0, "max_launch_rounds": 3, "provision_timeout": 60.0,
        "copy_sync_interval": 0.5, "log_format": "json"}
# botocore and moto raise a few deprecation warnings of their own; nothing of ours is hidden.
THIRD_PARTY_WARNINGS = [
    "ignore:datetime.datetime.utcnow:DeprecationWarning:botocore",
    "ignore:datetime.datetime.utcnow:DeprecationWarning:moto",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            for spec in THIRD_PARTY_WARNINGS:
                item.add_marker(pytest.mark.filterwarnings(spec))


async def until(what: str, check: Callable[[], Awaitable[T | None] | T | None],
                within: float = 60.0, interval: float = 0.1) -> T:
    """Poll check() (sync or async) until truthy; fail with `what` after `within` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    pytest.fail(f"timed out after {within:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Any]:
    from tests.aws.aws_harness import Moto

    server = Moto()
    yield server
    server.stop()


@pytest.fixture
def moto(moto_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A clean moto, and an environment whose only AWS endpoint is it."""
    moto_server.reset()
    for key, value in moto_server.env().items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_CA_BUNDLE", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_EC2"):
        monkeypatch.delenv(key, raising=False)
    return moto_server


@pytest.fixture
async def provider(moto: Any) -> AsyncIterator[Any]:
    from skyjobs.providers.aws import AwsConfig, AwsProvider

    p = AwsProvider(AwsConfig(image_ids={"": [AMI]}, endpoint_url=moto.url), regions=REGIONS)
    yield p
    await p.close()


@pytest.fixture
def fleet(moto: Any, tmp_path: Path) -> Iterator[Any]:
    from tests.aws.aws_harness import Fleet

    f = Fleet(moto, tmp_path / "fleet", REGIONS)
    yield f
    f.close()


def catalog(instance_type: str = "m5.large") -> Any:
    from skyjobs.pricing.catalog import Catalog, Offering

    return Catalog(Offering("aws", region, zone, instance_type, None, 0, 2, 8, 0.096, price,
                            "2026-11-01", "test offerings") for region, zone, price in OFFERINGS)


class Api:
    """The controller's user API over aiohttp (the controller shares this event loop)."""

    def __init__(self, ctl: Any) -> None:
        import aiohttp

        self.ctl = ctl
        self.session = aiohttp.ClientSession(
            base_url=ctl.url, headers={"Authorization": f"Bearer {ctl.token}"})

    async def call(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        async with self.session.request(method, path, json=body, params=query or None) as r:
            data = await r.json()
            assert r.status < 300, f"{method} {path}: {r.status} {data}"
            return data

    async def submit(self, task: dict[str, Any], **extra: Any) -> int:
        return int((await self.call("POST", "/api/v1/jobs", {"task": task, **extra}))["id"])

    async def job(self, job_id: int) -> dict[str, Any]:
        return dict(await self.call("GET", f"/api/v1/jobs/{job_id}"))

    async def wait_status(self, job_id: int, *statuses: str, within: float = 90) -> Any:
        async def check() -> Any:
            j = await self.job(job_id)
            return j if j["status"] in statuses else None

        return await until(f"job {job_id} to reach {statuses}", check, within, 0.2)

    async def logs(self, job_id: int, attempt: int, rank: int = 0) -> str:
        reply = await self.call("GET", f"/api/v1/jobs/{job_id}/logs", attempt=attempt,
                                rank=rank)
        return str(reply["data"])

    async def events(self, job_id: int) -> list[dict[str, Any]]:
        return list((await self.call("GET", f"/api/v1/jobs/{job_id}/events"))["events"])

    async def close(self) -> None:
        await self.session.close()


def first_sweep_done(ctl: Any) -> bool:
    """True once the started controller's first orphan sweep has run: tests submit only
    after it (a sweep racing a launch is its own test)."""
    return ctl.duties.stats["sweep_orphans"].runs >= 1


@pytest.fixture
async def controller(provider: Any, fleet: Any, moto: Any,
                     tmp_path: Path) -> AsyncIterator[Any]:
    """A real controller in this event loop, whose aws provider talks to moto."""
    from skyjobs.config import load_config
    from skyjobs.controller.daemon import Controller

    # The price poller reads live spot prices: moto's placeholder would make every zone
    # cost the same, so serve the list prices as the live ones.
    for _region, zone, price in OFFERINGS:
        moto.prices[(zone, "m5.large")] = (price, time.time())
    config = load_config(state_dir=tmp_path / "state", port=0, clouds=["aws"], **FAST)
    ctl = Controller(config, providers={"aws": provider})
    ctl.catalog = catalog()
    await ctl.start()
    # The daemon's startup orphan sweep reads the store before it lists the cloud, so a
    # launch in between would count as an orphan: submit only once it is over.
    await until("the startup orphan sweep", lambda: first_sweep_done(ctl), 30)
    api = Api(ctl)
    try:
        yield api
    finally:
        await api.close()
        await ctl.shutdown()
