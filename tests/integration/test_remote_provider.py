"""The remote provider against the real fleet load generator (bench/fleet_cloud.py), at tiny
scale: the provider contract over HTTP, then a controller process whose `local` cloud is the
generator: jobs run to SUCCEEDED, a reclaimed instance is recovered, a kill -9 loses
nothing and every simulated agent re-attaches."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from skyjobs.exceptions import CapacityError
from skyjobs.pricing.catalog import Catalog, Placement
from skyjobs.providers import base
from skyjobs.providers.base import LaunchRequest
from skyjobs.providers.remote import RemoteProvider
from tests.conftest import ROOT, ControllerProc, task, wait_for

JOBS = 5


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[str]:
    port_file = tmp_path / "fleet.port"
    log = open(tmp_path / "fleet.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fleet_cloud.py"), "--port", "0",
         "--port-file", str(port_file), "--boot-delay", "0.2", "--log-every", "0.5"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    try:
        port = wait_for("the fleet cloud", lambda: port_file.exists() and port_file.read_text(),
                        timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def ctl_call(url: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}{path}", data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def request(zone: str, ids: list[str], spot: bool = True) -> LaunchRequest:
    offering = next(o for o in Catalog.for_clouds(["local"]).offerings
                    if o.zone == zone and o.instance_type == "local.cpu2")
    # No controller at this URL: the simulated agents retry quietly until terminated.
    env = {"SKYJOBS_CONTROLLER_URL": "http://127.0.0.1:9", "SKYJOBS_ATTEMPT_ID": "1",
           "SKYJOBS_AGENT_TOKEN": "x"}
    return LaunchRequest(job_id=1, attempt_id=1,
                         placement=Placement(offering, spot, offering.ondemand_price),
                         instance_ids=ids,
                         agent_env=[{**env, "SKYJOBS_NODE_RANK": str(r)} for r in range(len(ids))])


async def test_the_provider_contract_over_http(cloud: str) -> None:
    p = RemoteProvider(cloud)
    try:
        first = await p.launch(request("local-a", ["sjt-1-1-0", "sjt-1-1-1"]))
        again = await p.launch(request("local-a", ["sjt-1-1-0", "sjt-1-1-1"]))
        assert [i.instance_id for i in first] == [i.instance_id for i in again]
        assert {i.state for i in again} <= {base.PENDING, base.RUNNING}
        assert await p.list_owned("sjt") == ["sjt-1-1-0", "sjt-1-1-1"]
        assert await p.list_owned("sjx") == []
        got = await p.status(["sjt-1-1-0", "nope"])
        assert got["nope"] == base.InstanceInfo("nope", base.GONE, base.NOT_FOUND)
        await p.terminate(["sjt-1-1-0", "never-made"])
        assert (await p.status(["sjt-1-1-0"]))["sjt-1-1-0"].state == base.GONE
        assert (await p.status(["sjt-1-1-0"]))["sjt-1-1-0"].reason == base.TERMINATED
        # A replayed launch finds the terminated instance instead of making a new one.
        assert (await p.launch(request("local-a", ["sjt-1-1-0"])))[0].state == base.GONE
        ctl_call(cloud, "/ctl/reclaim", {"count": 0, "zone": "local-b", "outage": True})
        with pytest.raises(CapacityError):
            await p.launch(request("local-b", ["sjt-2-1-0"]))
        await p.launch(request("local-b", ["sjt-3-1-0"], spot=False))  # on-demand still fits
        prices = await p.spot_prices([("local", "local-a", "local.cpu2"), ("x", "y", "z")])
        assert [r[:3] for r in prices] == [("local", "local-a", "local.cpu2")]
    finally:
        await p.terminate(["sjt-1-1-1", "sjt-3-1-0"])
        await p.close()


def statuses(ctl: ControllerProc) -> dict[int, dict[str, Any]]:
    return {j["id"]: j for j in ctl.client.get("/api/v1/jobs", limit=100)["jobs"]}


def all_jobs(ctl: ControllerProc, check: Callable[[dict[str, Any]], bool]) -> bool:
    jobs = statuses(ctl)
    return len(jobs) == JOBS and all(check(j) for j in jobs.values())


def test_a_controller_on_the_generator_recovers_restarts_and_finishes(
        controller: Any, cloud: str) -> None:
    ctl = controller(skyjobs_local_backend=cloud)
    body = ctl.client.post("/api/v1/jobs", {"task": task("sleep 3600"), "num_jobs": JOBS})
    assert len(body["ids"]) == JOBS
    wait_for("every job RUNNING", lambda: all_jobs(ctl, lambda j: j["status"] == "RUNNING"))
    wait_for("every agent past its running report",
             lambda: ctl_call(cloud, "/ctl/stats")["running_agents"] == JOBS)

    # One instance reclaimed: the notice recovers its job onto a replacement.
    victims = ctl_call(cloud, "/ctl/reclaim", {"count": 1, "notice_s": 3, "checkpoint_s": 0.3,
                                               "outage": False})["victims"]
    assert len(victims) == 1
    victim_job = victims[0][1]
    wait_for("the reclaimed job RUNNING again on attempt 2", lambda: (
        j := ctl.job(victim_job))["status"] == "RUNNING" and j["recoveries"] == 1)
    events = ctl.events(victim_job)
    assert any(e["to_status"] == "RECOVERING" for e in events)

    # kill -9 under load: nothing recovers, and every agent heartbeats the new controller.
    before = statuses(ctl)
    ctl_call(cloud, "/ctl/mark", {})
    ctl.kill9()
    ctl.start()
    wait_for("every agent re-attached", lambda: (
        s := ctl_call(cloud, "/ctl/stats"))["running_agents"] == JOBS
        and s["reattached"] == JOBS)
    after = statuses(ctl)
    assert {i: (j["status"], j["attempts"]) for i, j in after.items()} == {
        i: (j["status"], j["attempts"]) for i, j in before.items()}

    # Every job ends with exit 0: SUCCEEDED, with the log lines its agent shipped.
    ctl_call(cloud, "/ctl/exit", {"count": JOBS, "code": 0})
    wait_for("every job SUCCEEDED", lambda: all_jobs(ctl, lambda j: j["status"] == "SUCCEEDED"))
    assert "simulated job output" in ctl.logs(victim_job, 2)
    wait_for("every instance released", lambda: ctl_call(cloud, "/ctl/stats")[
        "instances"].get("running", 0) == 0)
