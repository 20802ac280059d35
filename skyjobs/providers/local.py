"""The local provider: instances are local process sessions, with a simulated spot market.

Each instance lives in ``<state-dir>/local-cloud/instances/<id>/`` and is run by
:mod:`skyjobs.providers.local_instance`, which survives the controller, serves an IMDS-style
notice endpoint and dies when a simulated preemption's notice runs out. A zone can be set out
of spot capacity (``market.json``, config ``local_no_spot_zones`` or ``skyjobs capacity``).
"""

from __future__ import annotations

import asyncio
import fcntl
import math
import os
import signal
import sys
import time
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skyjobs.exceptions import CapacityError, ProviderError
from skyjobs.pricing.catalog import load_cloud
from skyjobs.providers import base
from skyjobs.providers.base import InstanceInfo, LaunchRequest
from skyjobs.providers.local_instance import (
    LAUNCH_FILE,
    STATE_FILE,
    kill_session,
    process_alive,
    read_json,
    write_json_atomic,
)

JOB_GROUPS_FILE = "job-groups.json"  # written by the agent: process groups of its scripts


@dataclass(frozen=True)
class _Victim:
    sid: int
    pid: int
    ticks: int | None
    job_groups: tuple[int, ...]


class LocalProvider:
    name = "local"

    def __init__(self, root: Path, no_spot_zones: list[str] | None = None) -> None:
        self.root = root
        self.instances = root / "instances"
        self.instances.mkdir(parents=True, exist_ok=True)
        self._static_no_spot = set(no_spot_zones or [])
        # Blocking file and /proc work stays off the event loop.
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="skyjobs-local")
        self._sweep_sids: set[int] = set()
        self._sweep_done: asyncio.Future[None] | None = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # --- the simulated market ----------------------------------------------------------------

    def _market_path(self) -> Path:
        return self.root / "market.json"

    def no_spot_zones(self) -> set[str]:
        market = read_json(self._market_path()) or {}
        return self._static_no_spot | set(market.get("no_spot_zones", []))

    def set_spot_capacity(self, zone: str, available: bool) -> list[str]:
        market = read_json(self._market_path()) or {}
        zones = set(market.get("no_spot_zones", []))
        (zones.discard if available else zones.add)(zone)
        write_json_atomic(self._market_path(), {**market, "no_spot_zones": sorted(zones)})
        return sorted(self.no_spot_zones())

    # --- Provider interface ------------------------------------------------------------------

    async def launch(self, req: LaunchRequest) -> list[InstanceInfo]:
        if req.placement.use_spot and req.placement.zone in self.no_spot_zones():
            raise CapacityError(f"local zone {req.placement.zone} has no spot capacity")
        infos = []
        for instance_id, env in zip(req.instance_ids, req.agent_env, strict=True):
            directory = self.instances / instance_id
            # What the task asked its instances be started with, for visibility only: a
            # local instance is a process session, with no image, disk or ports to set.
            launch = {"instance_id": instance_id, "zone": req.placement.zone,
                      "use_spot": req.placement.use_spot, "env": env, "tags": req.tags,
                      "labels": req.labels, "image_id": req.image_id,
                      "disk_size_gb": req.disk_size_gb, "disk_tier": req.disk_tier,
                      "ports": list(req.ports)}
            await self._run(self._prepare, directory, launch)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "skyjobs.providers.local_instance", str(directory),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
            _, err = await proc.communicate()
            if proc.returncode != 0:
                detail = (directory / "boot-error.txt")
                why = detail.read_text() if detail.exists() else err.decode(errors="replace")
                raise ProviderError(f"local instance {instance_id} failed to boot: {why[-300:]}")
            infos.append(await self._run(self._info, instance_id))
        return infos

    @staticmethod
    def _prepare(directory: Path, launch: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / LAUNCH_FILE).exists():
            write_json_atomic(directory / LAUNCH_FILE, launch)

    async def status(self, instance_ids: list[str]) -> dict[str, InstanceInfo]:
        infos = await self._run(lambda: [self._info(i) for i in instance_ids])
        return {i.instance_id: i for i in infos}

    def _info(self, instance_id: str) -> InstanceInfo:
        directory = self.instances / instance_id
        state = read_json(directory / STATE_FILE)
        if state is None:
            if (directory / LAUNCH_FILE).exists() and not (directory / "boot-error.txt").exists():
                return InstanceInfo(instance_id, base.PENDING)
            return InstanceInfo(instance_id, base.GONE, base.NOT_FOUND)
        if state.get("state") == "terminated":
            return InstanceInfo(instance_id, base.GONE, str(state.get("reason") or base.LOST))
        pid, ticks = state.get("pid"), state.get("start_ticks")
        if isinstance(pid, int) and process_alive(pid, ticks if isinstance(ticks, int) else None):
            return InstanceInfo(instance_id, base.RUNNING, ip="127.0.0.1")
        # The process vanished without the hypervisor recording why: the host lost it.
        return InstanceInfo(instance_id, base.GONE, base.LOST)

    async def terminate(self, instance_ids: list[str]) -> None:
        found = await self._run(lambda: [self._tombstone(i) for i in instance_ids])
        live = [f for f in found if f is not None]
        if not live:
            return
        # The hypervisor's group (it leads its session) and the job's group get a SIGTERM
        # first, like a VM's shutdown; whatever is left is swept from /proc.
        await self._run(self._signal_groups, live, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and await self._run(  # noqa: ASYNC110 - /proc poll
                lambda: any(process_alive(v.pid, v.ticks) for v in live)):
            await asyncio.sleep(0.1)
        await self._sweep([v.sid for v in live])

    @staticmethod
    def _signal_groups(live: list[_Victim], sig: int) -> None:
        for victim in live:
            for group in (victim.sid, *victim.job_groups):
                try:
                    os.killpg(group, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    async def _sweep(self, sids: list[int]) -> None:
        """SIGKILL what is left of these sessions. Scanning /proc is the costly part, so
        concurrent terminations share one scan."""
        self._sweep_sids.update(sids)
        if self._sweep_done is None:
            self._sweep_done = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(0.05, self._start_sweep)
        await asyncio.shield(self._sweep_done)

    def _start_sweep(self) -> None:
        done, sids = self._sweep_done, sorted(self._sweep_sids)
        self._sweep_done, self._sweep_sids = None, set()
        assert done is not None
        future = asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: kill_session(*sids, sig=signal.SIGKILL))
        future.add_done_callback(lambda f: done.set_exception(e) if (
            e := f.exception()) else done.set_result(None))

    def _tombstone(self, instance_id: str) -> _Victim | None:
        """Mark the instance terminated (under the boot lock); return what to kill."""
        directory = self.instances / instance_id
        if not directory.exists():
            return None
        lock_fd = os.open(directory / "launch.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            # Waits for a boot in flight, then leaves a tombstone no later boot will pass.
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            state = read_json(directory / STATE_FILE) or {}
            if state.get("state") != "terminated":
                write_json_atomic(directory / STATE_FILE, {
                    **state, "state": "terminated", "reason": base.TERMINATED,
                    "ended_at": time.time()})
            sid, pid, ticks = state.get("sid"), state.get("pid"), state.get("start_ticks")
            if not (isinstance(sid, int) and isinstance(pid, int)):
                return None
            groups = (read_json(directory / JOB_GROUPS_FILE) or {}).get("pgids", [])
            return _Victim(sid, pid, ticks if isinstance(ticks, int) else None,
                           tuple(g for g in groups if isinstance(g, int)))
        finally:
            os.close(lock_fd)

    async def preempt(self, instance_ids: list[str], notice_s: float) -> None:
        for instance_id in instance_ids:
            state = await self._run(read_json, self.instances / instance_id / STATE_FILE)
            port = (state or {}).get("metadata_port")
            if not state or state.get("state") != "running" or not isinstance(port, int):
                raise ProviderError(f"instance {instance_id} is not running")
            url = f"http://127.0.0.1:{port}/sim/preempt?notice={notice_s}"
            await self._run(self._post, url)

    @staticmethod
    def _post(url: str) -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5):
                pass
        except OSError as err:
            raise ProviderError(f"metadata endpoint did not answer: {err}") from None

    async def spot_prices(self, keys: list[tuple[str, str, str]]
                          ) -> list[tuple[str, str, str, float, float]]:
        """The simulated market's current spot prices: the catalog price drifting +-10%
        over a day, each zone on its own phase."""
        now = time.time()
        listed = {(o.region, o.zone, o.instance_type): o.spot_price
                  for o in load_cloud("local") if o.spot_price is not None}
        out = []
        for key in keys:
            base_price = listed.get(key)
            if base_price is None:
                continue
            phase = zlib.crc32("/".join(key).encode()) % 1000 / 1000 * 2 * math.pi
            drift = 1 + 0.1 * math.sin(2 * math.pi * now / 86400 + phase)
            out.append((*key, round(base_price * drift, 4), now))
        return out

    async def list_owned(self, prefix: str) -> list[str]:
        """Instances launched by the controller with this id prefix that are not terminated."""
        def scan() -> list[str]:
            return sorted(p.name for p in self.instances.iterdir()
                          if p.name.startswith(f"{prefix}-")
                          and (read_json(p / STATE_FILE) or {}).get("state") != "terminated")
        result: list[str] = await self._run(scan)
        return result

    async def close(self) -> None:
        self._pool.shutdown(wait=False)

