"""Fixtures for the GCP tests: one fake Compute API and one fake GCS per session (reset
before every test), a GcpProvider pointed at them through the real client libraries, a
Fleet booting agents from startup scripts, and a real controller in this event loop."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.aws.conftest import Api, first_sweep_done, until

PROJECT = "skyjobs-test"
# Spot list prices: us-central1-a is the cheapest, then -b, then us-east1-b.
OFFERINGS = [("us-central1", "us-central1-a", 0.030), ("us-central1", "us-central1-b", 0.034),
             ("us-east1", "us-east1-b", 0.038)]
MACHINE = "n2-standard-4"
FAST = {"instance_poll_interval": 0.5, "notice_poll_interval": 0.2, "heartbeat_interval": 0.5,
        "heartbeat_timeout": 5.0, "silent_window": 30.0, "launch_backoff_initial": 0.5,
        "launch_backoff_max": 1.0, "max_launch_rounds": 3, "provision_timeout": 60.0,
        "copy_sync_interval": 0.5, "log_format": "json"}


@pytest.fixture(scope="session")
def gce_server() -> Iterator[Any]:
    from skyjobs.pricing.catalog import load_cloud
    from tests.gcp.gce_fake import DEFAULT_ZONES, GceFake

    # Every zone of the packaged catalog exists, so a controller ranking it can go anywhere.
    zones = tuple(sorted({*DEFAULT_ZONES, *(o.zone for o in load_cloud("gcp"))}))
    with GceFake(zones=zones) as fake:
        yield fake


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[Any]:
    from tests.gcp.gcs_fake import FakeGcs

    fake = FakeGcs().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def gce(gce_server: Any) -> Any:
    gce_server.reset()
    return gce_server


@pytest.fixture
def gcs(gcs_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    # google-cloud-storage on the controller and our node code both honour this variable.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)
    return gcs_server


def gcp_env(gce: Any) -> dict[str, str]:
    return {"SKYJOBS_GCP_ENDPOINT_URL": gce.url, "SKYJOBS_GCP_ANONYMOUS": "1",
            "SKYJOBS_GCP_PROJECT": PROJECT}


@pytest.fixture
async def provider(gce: Any, gcs: Any) -> AsyncIterator[Any]:
    from skyjobs.providers.gcp.compute import GcpProvider
    from skyjobs.providers.gcp.config import GcpConfig

    p = GcpProvider(GcpConfig(endpoint_url=gce.url, anonymous=True, project=PROJECT,
                              call_timeout=10, operation_timeout=20))
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
def fleet(gce: Any, gcs: Any, tmp_path: Path) -> Iterator[Any]:
    from tests.gcp.gce_harness import Fleet

    with Fleet(gce, tmp_path / "nodes", extra_env={"STORAGE_EMULATOR_HOST": gcs.url}) as f:
        yield f


def catalog(machine: str = MACHINE) -> Any:
    from skyjobs.pricing.catalog import Catalog, Offering

    return Catalog(Offering("gcp", region, zone, machine, None, 0, 4, 16, 0.19, price,
                            "2026-11-01", "test offerings") for region, zone, price in OFFERINGS)


@pytest.fixture
async def controller(provider: Any, fleet: Any, tmp_path: Path) -> AsyncIterator[Any]:
    """A real controller in this event loop, whose gcp provider talks to the fake."""
    from skyjobs.config import load_config
    from skyjobs.controller.daemon import Controller

    config = load_config(state_dir=tmp_path / "state", port=0, clouds=["gcp"], **FAST)
    ctl = Controller(config, providers={"gcp": provider})
    ctl.catalog = catalog()
    await ctl.start()
    await until("the startup orphan sweep", lambda: first_sweep_done(ctl), 30)
    api = Api(ctl)
    try:
        yield api
    finally:
        await api.close()
        await ctl.shutdown()


def wait_for(what: str, check: Any, within: float = 30.0) -> Any:
    """The sync twin of ``until`` for tests without an event loop."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    pytest.fail(f"timed out after {within:.0f}s waiting for {what}")
