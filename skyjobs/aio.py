"""``skyjobs.AsyncClient``: the asyncio twin of :class:`skyjobs.Client` (aiohttp).

Same methods, same arguments, same typed results and the same exceptions, awaited; its
requests come from :mod:`skyjobs.sdk` as the blocking client's do. Use it as an async
context manager (or call :meth:`AsyncClient.close`) so its connection pool is released::

    async with skyjobs.AsyncClient() as client:
        job = await client.submit(task)
        async for text in client.logs(job, follow=True):
            print(text, end="")
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp

from skyjobs import models as m
from skyjobs import sdk
from skyjobs.client import endpoint, error_text
from skyjobs.exceptions import ApiError, ControllerUnavailableError, api_error

R = TypeVar("R")


class AsyncClient:
    """An asyncio client of one controller; see :class:`skyjobs.Client` for the methods."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0,
                 *, state_dir: Path | str | None = None, ca_file: str | None = None) -> None:
        self.url, self.token, self.ca_file = endpoint(url, token, state_dir, ca_file)
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"AsyncClient({self.url!r})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, err: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- transport -------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ssl_ctx: ssl.SSLContext | bool = True
            if self.url.startswith("https:"):
                try:
                    ssl_ctx = ssl.create_default_context(cafile=self.ca_file)
                except (OSError, ValueError) as err:
                    raise ControllerUnavailableError(
                        f"cannot reach the controller at {self.url}: CA file: {err}") from None
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(ssl=ssl_ctx),
                headers={"Authorization": f"Bearer {self.token}"})
        return self._session

    async def _send(self, method: str, path: str, query: Mapping[str, Any] | None = None,
                    body: Any = None) -> Any:
        """One request; the reply's JSON. The only place this client touches HTTP."""
        try:
            async with self._http().request(method, f"{self.url}{path}",
                                            params=sdk.query_items(query) or None,
                                            json=body) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
            # Refused, reset, timed out, TLS refused, a garbled answer, a bad URL.
            reason = " ".join(str(err).split()) or type(err).__name__
            raise ControllerUnavailableError(
                f"cannot reach the controller at {self.url}: {reason}") from None
        if status >= 400:
            raise api_error(status, error_text(status, raw))
        try:
            return json.loads(raw or b"null")
        except ValueError:
            raise ControllerUnavailableError(
                f"{self.url} did not answer like a skyjobs controller (not JSON)") from None

    async def _call(self, call: sdk.Call[R]) -> R:
        reply = await self._send(call.method, call.path, call.query, call.body)
        try:
            return call.parse(reply)
        except (ValueError, KeyError, TypeError) as err:
            raise ControllerUnavailableError(
                f"{self.url} answered {call.method} {call.path} with an unexpected reply: "
                f"{' '.join(str(err).split())[:200]}") from None

    # --- jobs ----------------------------------------------------------------------------------

    async def submit(self, task_or_path: sdk.TaskLike, name: str | None = None,
                     env: Mapping[str, str] | None = None, *, num_jobs: int = 1) -> m.Job:
        # Reading the YAML and packing the workdir are blocking file work: off the loop.
        body = await asyncio.to_thread(_submission, task_or_path, name, env, num_jobs)
        reply = await self._call(sdk.call_submit(body))
        return await self.get(reply.id)

    async def get(self, job: sdk.JobRef) -> m.Job:
        return await self._call(sdk.call_get(job))

    async def queue(self, status: str | Iterable[str] | None = None, name: str | None = None,
                    limit: int | None = None, offset: int | None = None,
                    array: int | None = None) -> list[m.Job]:
        return await self._call(sdk.call_queue(status, name, limit, offset, array))

    async def events(self, job: sdk.JobRef, after: int = 0) -> list[m.Event]:
        return await self._call(sdk.call_events(job, after))

    async def log_chunks(self, job: sdk.JobRef, attempt: int | None = None,
                         follow: bool = False, rank: int = 0,
                         on_idle: Callable[[], None] | None = None
                         ) -> AsyncIterator[m.LogChunk]:
        cursor = sdk.LogCursor(sdk.job_id(job), attempt, rank, follow)
        while True:
            chunk = await self._call(cursor.call())
            step = cursor.advance(chunk)
            if step == "data":
                yield chunk
            elif step == "done":
                return
            elif step == "wait":
                if on_idle is not None:
                    on_idle()
                await asyncio.sleep(sdk.LOG_POLL_S)

    async def logs(self, job: sdk.JobRef, attempt: int | None = None, follow: bool = False,
                   rank: int = 0) -> AsyncIterator[str]:
        async for chunk in self.log_chunks(job, attempt, follow, rank):
            yield chunk.data

    async def cancel(self, jobs: sdk.JobRef | Iterable[sdk.JobRef] | None = None, *,
                     name: str | None = None, array: int | None = None,
                     all: bool = False) -> m.CancelReply:
        return await self._call(sdk.call_cancel(jobs, name=name, array=array, all=all))

    # timeout= as Client.wait has it: one signature for both clients.
    async def wait(self, job: sdk.JobRef, timeout: float | None = None,  # noqa: ASYNC109
                   poll: float = sdk.WAIT_POLL_S) -> m.Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = await self.get(sdk.job_id(job))
            if current.done:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {current.id} is still {current.status} after "
                                   f"{timeout:g}s")
            left = poll if deadline is None else max(0.0, min(poll,
                                                              deadline - time.monotonic()))
            await asyncio.sleep(left)

    async def plan(self, task_or_path: sdk.TaskLike) -> m.Plan:
        body = await asyncio.to_thread(sdk.plan_body, task_or_path)
        return await self._call(sdk.call_plan(body))

    async def preempt(self, job: sdk.JobRef, notice: float = 120.0) -> m.Preempted:
        return await self._call(sdk.call_preempt(job, notice))

    # --- the controller ------------------------------------------------------------------------

    async def health(self) -> m.Health:
        return await self._call(sdk.call_health())

    async def controllers(self) -> m.Controllers:
        return await self._call(sdk.call_controllers())

    async def healthy(self) -> bool:
        try:
            await self._send("GET", "/api/v1/health")
            return True
        except (ControllerUnavailableError, ApiError):
            return False

    async def clouds(self) -> m.Clouds:
        return await self._call(sdk.call_clouds())

    async def prices(self, accelerator: str | None = None,
                     cloud: str | None = None) -> m.Prices:
        return await self._call(sdk.call_prices(accelerator, cloud))

    async def set_capacity(self, zone: str, spot: bool) -> m.CapacityReply:
        return await self._call(sdk.call_capacity(zone, spot))

    async def test_webhook(self, name: str) -> m.WebhookTestReply:
        return await self._call(sdk.call_webhook_test(name))

    async def gc(self, older_than_days: float | None = None,
                 dry_run: bool = False) -> m.GcReply:
        return await self._call(sdk.call_gc(older_than_days, dry_run))


def _submission(task_or_path: sdk.TaskLike, name: str | None, env: Mapping[str, str] | None,
                num_jobs: int) -> dict[str, Any]:
    pipeline, source = sdk.load(task_or_path)
    return sdk.submission(pipeline, source, name, env, num_jobs)
