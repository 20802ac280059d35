"""The in-process harness: a controller on the in-memory provider, tests play the agents."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from skyjobs.controller.daemon import Controller
from skyjobs.providers.fake import FakeProvider


async def until(what: str, check: Callable[[], Any], limit_s: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + limit_s
    while asyncio.get_running_loop().time() < deadline:
        value = await check() if asyncio.iscoroutinefunction(check) else check()
        if value:
            return value
        await asyncio.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


class Harness:
    def __init__(self, ctl: Controller, fake: FakeProvider, http: aiohttp.ClientSession):
        self.ctl, self.fake, self.http = ctl, fake, http

    async def api(self, method: str, path: str, body: Any = None,
                  token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token if token is not None else self.ctl.token}"}
        async with self.http.request(method, f"{self.ctl.url}{path}", json=body,
                                     headers=headers) as resp:
            return resp.status, await resp.json()

    async def agent(self, attempt_id: int, event: dict[str, Any],
                    token: str | None = None) -> tuple[int, Any]:
        tok = token if token is not None else self.ctl.sessions.agent_token(attempt_id)
        return await self.api("POST", f"/agent/v1/attempts/{attempt_id}/events", event, tok)

    async def write_log(self, job_id: int, data: bytes, *, rank: int = 0, n: int = 1,
                        offset: int | None = None) -> None:
        """Put bytes into a node's log where the controller keeps it (a file, or rows of a
        shared store), at ``offset`` (default: its end), as an agent's post would."""
        from skyjobs.controller import views

        sv = self.ctl.services
        if offset is None:
            _, offset, _ = await views.read_log(sv, job_id, n, rank, None, 0)
        await sv.logs.append(views.log_target(sv, job_id, n, rank), offset, data)

    async def job(self, job_id: int) -> dict[str, Any]:
        status, body = await self.api("GET", f"/api/v1/jobs/{job_id}")
        assert status == 200, body
        return dict(body)

    async def wait_status(self, job_id: int, *statuses: str) -> dict[str, Any]:
        async def check() -> Any:
            j = await self.job(job_id)
            return j if j["status"] in statuses else None
        return dict(await until(f"{statuses}", check))

    async def current_attempt(self, job_id: int) -> int:
        j = await self.ctl.store.call(self.ctl.store.sync.get_job, job_id)
        assert j.current_attempt is not None
        return j.current_attempt

    async def run_to_running(self, job_id: int) -> int:
        await self.wait_status(job_id, "PROVISIONING")
        await until("a launched attempt", lambda: self.fake.alive())
        aid = await self.current_attempt(job_id)
        assert (await self.agent(aid, {"kind": "phase", "phase": "ready", "rank": 0}))[0] == 200
        await until("go", lambda: aid in self.ctl.sessions.go)
        await self.agent(aid, {"kind": "phase", "phase": "running", "rank": 0})
        await self.wait_status(job_id, "RUNNING")
        return aid


TASK = {"resources": {"cloud": "local", "cpus": 2, "use_spot": True}, "run": "x"}


async def submit(h: Harness, task: dict[str, Any] | None = None) -> int:
    status, body = await h.api("POST", "/api/v1/jobs", {"task": task or TASK})
    assert status == 201, body
    return int(body["id"])
