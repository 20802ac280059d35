"""A provider whose cloud is another process, reached over HTTP: the simulated cloud of the
fleet load generator (``bench/fleet_cloud.py``).

It stands in for the ``local`` cloud (config ``local_backend``, ``SKYJOBS_LOCAL_BACKEND``):
same catalog, same placement, but instances are whatever the server behind the URL makes of
a launch (for the load generator, an asyncio coroutine playing the node's agent against
this controller's real agent API). The controller cannot tell the difference from a real
cloud: every call crosses the network boundary, can fail, and is idempotent per instance id
as :mod:`skyjobs.providers.base` requires (the server keys everything by instance id).

The wire protocol, all JSON, under ``<base>/cloud/v1``::

    POST launch     {"instance_ids", "agent_env", "zone", "region", "instance_type",
                     "use_spot", "job_id", "attempt_id", "tags"}
                    -> {"instances": [InstanceInfo...]}; 409 {"error"} is no capacity
    POST status     {"ids": [...]}  -> {"instances": {id: InstanceInfo}}  (unknown: gone)
    POST terminate  {"ids": [...]}  -> {"ok": true}  (unknown or gone ids are fine)
    GET  owned?prefix=P            -> {"ids": [...]}  (live instances with that id prefix)
    POST prices     {"keys": [[region, zone, type]...]} -> {"prices": [[r, z, t, $/h, at]...]}

with InstanceInfo as ``{"instance_id", "state", "reason", "ip"}`` (``base`` state names).
"""

from __future__ import annotations

from typing import Any

import aiohttp

from skyjobs.exceptions import CapacityError, FatalProviderError, ProviderError
from skyjobs.providers import base
from skyjobs.providers.base import InstanceInfo, LaunchRequest, PriceRow

# A launch of many nodes may take the server a while; a status of thousands of ids too.
CALL_TIMEOUT = 60.0
STATES = frozenset({base.PENDING, base.RUNNING, base.STOPPING, base.GONE})


class RemoteProvider:
    def __init__(self, base_url: str, name: str = "local") -> None:
        self.name = name
        self.base_url = base_url.rstrip("/") + "/cloud/v1"
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop (a session is bound to its loop).
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
                connector=aiohttp.TCPConnector(limit=64))
        return self._http

    async def _call(self, method: str, path: str, payload: Any = None,
                    params: dict[str, str] | None = None) -> Any:
        url = f"{self.base_url}/{path}"
        try:
            async with self._session().request(method, url, json=payload,
                                               params=params) as resp:
                body = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            # Down, refused, timed out or garbled: transient as far as anyone can tell.
            raise ProviderError(f"{self.name} backend {method} {path}: "
                                f"{type(err).__name__}: {err}") from None
        message = body.get("error", "") if isinstance(body, dict) else ""
        if status == 409:
            raise CapacityError(message or "no capacity")
        if status == 400:
            raise FatalProviderError(f"{self.name} backend refused {path}: {message}")
        if status >= 300:
            raise ProviderError(f"{self.name} backend {path}: HTTP {status} {message}")
        return body

    @staticmethod
    def _info(raw: Any, instance_id: str) -> InstanceInfo:
        if not isinstance(raw, dict) or raw.get("state") not in STATES:
            raise ProviderError(f"backend answered nonsense for {instance_id}: {raw!r:.200}")
        return InstanceInfo(instance_id, raw["state"], raw.get("reason"), raw.get("ip"))

    # --- Provider interface ------------------------------------------------------------------

    async def launch(self, req: LaunchRequest) -> list[InstanceInfo]:
        p = req.placement
        body = await self._call("POST", "launch", {
            "instance_ids": req.instance_ids, "agent_env": req.agent_env,
            "zone": p.zone, "region": p.region, "instance_type": p.instance_type,
            "use_spot": p.use_spot, "job_id": req.job_id, "attempt_id": req.attempt_id,
            "tags": req.tags})
        raw = body.get("instances") if isinstance(body, dict) else None
        if not isinstance(raw, list) or len(raw) != len(req.instance_ids):
            raise ProviderError(f"backend launch answered {len(raw or [])} instances for "
                                f"{len(req.instance_ids)}")
        return [self._info(r, i) for r, i in zip(raw, req.instance_ids, strict=True)]

    async def status(self, instance_ids: list[str]) -> dict[str, InstanceInfo]:
        if not instance_ids:
            return {}
        body = await self._call("POST", "status", {"ids": instance_ids})
        raw = body.get("instances") if isinstance(body, dict) else None
        if not isinstance(raw, dict):
            raise ProviderError("backend status answered no instances map")
        # An id the answer leaves out is one the cloud does not know: gone, not found.
        return {i: self._info(raw[i], i) if i in raw
                else InstanceInfo(i, base.GONE, base.NOT_FOUND) for i in instance_ids}

    async def terminate(self, instance_ids: list[str]) -> None:
        if instance_ids:
            await self._call("POST", "terminate", {"ids": instance_ids})

    async def list_owned(self, prefix: str) -> list[str]:
        body = await self._call("GET", "owned", params={"prefix": prefix})
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list):
            raise ProviderError("backend owned answered no ids")
        return [str(i) for i in ids]

    async def spot_prices(self, keys: list[tuple[str, str, str]]) -> list[PriceRow]:
        body = await self._call("POST", "prices", {"keys": [list(k) for k in keys]})
        rows = body.get("prices") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise ProviderError("backend prices answered no rows")
        return [(str(r[0]), str(r[1]), str(r[2]), float(r[3]), float(r[4])) for r in rows]

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
