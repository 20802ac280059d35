#!/usr/bin/env python3
"""The fleet load generator: a simulated cloud and all of its agents, in one asyncio process.

A real controller reaches it through :class:`skyjobs.providers.remote.RemoteProvider`
(``SKYJOBS_LOCAL_BACKEND=http://127.0.0.1:PORT``): ``/cloud/v1/...`` launches, lists and
terminates instances, idempotent per instance id. Each launched instance "boots" after
``--boot-delay`` and runs a simulated node agent: one coroutine, not a process, speaking the
real agent protocol (``skyjobs/node/agent.py``) to the controller over HTTP through one shared
aiohttp connection pool: fetch the task, report ``ready``, hold a heartbeat until the go,
report ``running``, then heartbeat at the interval the controller asks for and ship the
job's log, which gains a line every ``--log-every`` seconds, once per that or the log
interval the controller asks for, whichever is longer. Requests the controller does not
answer (a restart) are retried as the real agent retries them.

Several controllers (docs/ha.md): an agent knows ``SKYJOBS_CONTROLLER_URLS`` (owner first)
and fails over as ``skyjobs/node/client.py`` does: one pass over the list from the
controller that answered last, moving on at a connection error, a timeout or a 502/503/504;
each heartbeat answer's ``controllers`` replaces the list, and the current controller stays
current while listed. ``--agents-follow-owner`` instead moves to the answer's first entry
(the owner), as docs/ha.md describes.

The driver (``bench/fleet.py``) plays the scenarios through ``/ctl/...``:

    GET  /ctl/stats[?reset=1]   counts, heartbeat round trips (since the last reset),
                                re-attachment after a mark, this process's own loop lag
    POST /ctl/mark              from now on, note each agent's first accepted heartbeat
    POST /ctl/reclaim           {"count", "zone"?, "notice_s", "checkpoint_s", "outage"}: a
                                zone reclaimed at once; every picked agent sees its notice
                                in the same loop turn, reports it, exits 143 after
                                checkpoint_s, and its instance is gone at the deadline
    POST /ctl/exit              {"count", "code"}: running agents end their job
    GET  /ctl/launches          every launch call: [at, job, attempt, zone, spot, ids]
    GET  /ctl/hooks             webhook deliveries received on POST /hook
    GET  /ctl/heard             per instance, heartbeats answered since the mark (at most
                                HEARD_MAX each): {iid: [job, attempt, [[at, url that
                                answered, first of its "controllers"], ...]]}

Loopback only, bounded by what the controller launches; it never starts a process.

    python bench/fleet_cloud.py --port 0 --port-file /tmp/port
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from skyjobs.controller.heap import HeapKeeper  # noqa: E402
from skyjobs.controller.looplag import LoopLagMonitor  # noqa: E402
from skyjobs.pricing.catalog import load_cloud  # noqa: E402

GO_WAIT = 20.0  # as the real agent: a heartbeat held until the go, at most this long
REPORT_BUDGET = 3600.0
RETRY_MAX = 5.0
LOG_LINE = b"step %d loss 0.%04d lr 3e-4 tokens/s 123456 (simulated job output)\n"
IMDS_FMT = "%Y-%m-%dT%H:%M:%SZ"
ROTATE_STATUSES = frozenset({502, 503, 504})  # as skyjobs/node/client.py: try the next one
HEARD_MAX = 200  # heartbeats kept per instance after a mark (/ctl/heard)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class Gone(Exception):
    """The controller says this attempt is not its (404/401): the agent gives up."""


@dataclass
class Instance:
    iid: str
    job_id: int
    attempt_id: int
    zone: str
    use_spot: bool
    env: dict[str, str]
    launched_at: float
    state: str = "pending"
    reason: str | None = None
    phase: str = "booting"  # booting, task, waiting_go, running, exiting, done
    notice_at: float | None = None
    notice_deadline: float | None = None
    checkpoint_s: float = 2.0
    exit_code: int | None = None  # the scenario asks the job to end with this
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    reattached_at: float | None = None
    heard: list[list[Any]] = field(default_factory=list)  # after a mark: [at, url, first]

    def info(self) -> dict[str, Any]:
        return {"instance_id": self.iid, "state": self.state, "reason": self.reason,
                "ip": "127.0.0.1" if self.state == "running" else None}


class FleetCloud:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.instances: dict[str, Instance] = {}
        self.no_spot: set[str] = set()
        self.launches: list[list[Any]] = []
        self.hooks: list[list[Any]] = []
        self.counts: Counter[str] = Counter()
        self.hb_rtts: list[float] = []
        self.mark_at: float | None = None
        self.lag = LoopLagMonitor()
        self.http: aiohttp.ClientSession | None = None
        self.listed = {(o.region, o.zone, o.instance_type): o.spot_price
                       for o in load_cloud("local") if o.spot_price is not None}

    # --- the cloud API (what RemoteProvider calls) -------------------------------------------

    async def launch(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.counts["launch_calls"] += 1
        zone, spot = str(body["zone"]), bool(body["use_spot"])
        ids, envs = list(body["instance_ids"]), list(body["agent_env"])
        self.launches.append([time.time(), int(body["job_id"]), int(body["attempt_id"]),
                              zone, spot, ids])
        known = [self.instances[i] for i in ids if i in self.instances]
        if len(known) == len(ids):  # a replay: the same instances, whatever their state
            return web.json_response({"instances": [i.info() for i in known]})
        if spot and zone in self.no_spot:
            self.counts["launch_no_capacity"] += 1
            return web.json_response({"error": f"no spot capacity in {zone}"}, status=409)
        for iid, env in zip(ids, envs, strict=True):
            if iid in self.instances:
                continue
            inst = Instance(iid, int(body["job_id"]), int(body["attempt_id"]), zone, spot, env,
                            time.time())
            self.instances[iid] = inst
            inst.task = asyncio.create_task(self._boot_and_run(inst), name=f"agent-{iid}")
        return web.json_response({"instances": [self.instances[i].info() for i in ids]})

    async def status(self, request: web.Request) -> web.Response:
        ids = (await request.json())["ids"]
        self.counts["status_calls"] += 1
        return web.json_response({"instances": {i: self.instances[i].info() for i in ids
                                                if i in self.instances}})

    async def terminate(self, request: web.Request) -> web.Response:
        ids = (await request.json())["ids"]
        self.counts["terminate_calls"] += 1
        for i in ids:
            inst = self.instances.get(i)
            if inst is not None and inst.state != "gone":
                self._end(inst, "terminated")
        return web.json_response({"ok": True})

    async def owned(self, request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "") + "-"
        return web.json_response({"ids": sorted(i for i, inst in self.instances.items()
                                                if i.startswith(prefix) and inst.state != "gone")})

    async def prices(self, request: web.Request) -> web.Response:
        # The local provider's simulated market: catalog price drifting +-10% over a day.
        now, out = time.time(), []
        for key in (await request.json())["keys"]:
            price = self.listed.get(tuple(key))  # type: ignore[arg-type]
            if price is None:
                continue
            phase = zlib.crc32("/".join(key).encode()) % 1000 / 1000 * 2 * math.pi
            out.append([*key, round(price * (1 + 0.1 * math.sin(
                2 * math.pi * now / 86400 + phase)), 4), now])
        return web.json_response({"prices": out})

    def _end(self, inst: Instance, reason: str) -> None:
        inst.state, inst.reason = "gone", reason
        if inst.task is not None and not inst.task.done():
            inst.task.cancel()  # the machine is off: its agent stops mid-sentence

    # --- one simulated agent -----------------------------------------------------------------

    async def _boot_and_run(self, inst: Instance) -> None:
        await asyncio.sleep(self.args.boot_delay * random.uniform(0.5, 1.5))
        if inst.state != "pending":
            return
        inst.state = "running"
        try:
            await Agent(self, inst).run()
        except Gone:
            self.counts["agents_refused"] += 1
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - one agent's surprise must not stop the rest
            self.counts["agent_crashes"] += 1
            print(f"agent {inst.iid} crashed: {type(err).__name__}: {err}", flush=True)
        finally:
            if inst.phase != "done":
                inst.phase = "done"

    # --- the scenario controls ---------------------------------------------------------------

    async def ctl_stats(self, request: web.Request) -> web.Response:
        running = [i for i in self.instances.values() if i.state == "running"]
        phases = Counter(i.phase for i in running)
        hb = self.hb_rtts
        live_agents = [i for i in running if i.phase == "running"]
        reattached = [i.reattached_at for i in live_agents if i.reattached_at is not None]
        out = {
            "pid": os.getpid(), "at": time.time(),
            "instances": dict(Counter(i.state for i in self.instances.values())),
            "agent_phases": dict(phases), "counts": dict(self.counts),
            "heartbeats": len(hb),
            "hb_rtt_p50_s": pct(hb, 0.5), "hb_rtt_p99_s": pct(hb, 0.99),
            "hb_rtt_max_s": max(hb, default=None),
            "mark_at": self.mark_at, "running_agents": len(live_agents),
            "reattached": len(reattached), "reattached_last_at": max(reattached, default=None),
            "generator_lag_max_s": round(self.lag.max(), 4),
            "generator_lag_p99_s": round(self.lag.quantile(0.99), 4),
        }
        if request.query.get("reset"):
            self.hb_rtts = []
            self.counts = Counter()
        return web.json_response(out)

    async def ctl_mark(self, request: web.Request) -> web.Response:
        self.mark_at = time.time()
        for inst in self.instances.values():
            inst.reattached_at = None
            inst.heard = []
        return web.json_response({"mark_at": self.mark_at})

    async def ctl_reclaim(self, request: web.Request) -> web.Response:
        body = await request.json()
        count, notice_s = int(body.get("count", 1000)), float(body.get("notice_s", 30.0))
        candidates = [i for i in self.instances.values()
                      if i.state == "running" and i.phase == "running" and i.use_spot
                      and i.notice_at is None]
        zone = body.get("zone") or (Counter(i.zone for i in candidates).most_common(1)
                                    or [("", 0)])[0][0]
        victims = [i for i in candidates if i.zone == zone][:count]
        if body.get("outage", True):
            self.no_spot.add(zone)  # the zone has no spot capacity to give back either
        now = time.time()
        for inst in victims:  # one loop turn: every notice is out within the same instant
            inst.notice_at, inst.notice_deadline = now, now + notice_s
            inst.checkpoint_s = float(body.get("checkpoint_s", 2.0))
            inst.wake.set()
        asyncio.get_running_loop().call_later(notice_s, self._reclaimed, victims)
        return web.json_response({"zone": zone, "notice_s": notice_s, "issued_at": now,
                                  "victims": [[i.iid, i.job_id, i.attempt_id]
                                              for i in victims]})

    def _reclaimed(self, victims: list[Instance]) -> None:
        for inst in victims:
            if inst.state != "gone":
                self._end(inst, "preempted")

    async def ctl_exit(self, request: web.Request) -> web.Response:
        body = await request.json()
        picked = [i for i in self.instances.values()
                  if i.state == "running" and i.phase == "running" and i.exit_code is None
                  ][:int(body.get("count", 1))]
        for inst in picked:
            inst.exit_code = int(body.get("code", 0))
            inst.wake.set()
        return web.json_response({"exiting": [i.iid for i in picked]})

    async def ctl_launches(self, request: web.Request) -> web.Response:
        return web.json_response({"launches": self.launches})

    async def ctl_hooks(self, request: web.Request) -> web.Response:
        return web.json_response({"hooks": self.hooks})

    async def ctl_heard(self, request: web.Request) -> web.Response:
        return web.json_response({"heard": {i.iid: [i.job_id, i.attempt_id, i.heard]
                                            for i in self.instances.values() if i.heard}})

    async def hook(self, request: web.Request) -> web.Response:
        # A webhook receiver: what arrived when (signatures are the webhook tests' business).
        body = await request.json()
        self.hooks.append([time.time(), body.get("event"), (body.get("job") or {}).get("id"),
                           body.get("at")])
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.add_routes([
            web.post("/cloud/v1/launch", self.launch),
            web.post("/cloud/v1/status", self.status),
            web.post("/cloud/v1/terminate", self.terminate),
            web.get("/cloud/v1/owned", self.owned),
            web.post("/cloud/v1/prices", self.prices),
            web.get("/ctl/stats", self.ctl_stats),
            web.post("/ctl/mark", self.ctl_mark),
            web.post("/ctl/reclaim", self.ctl_reclaim),
            web.post("/ctl/exit", self.ctl_exit),
            web.get("/ctl/launches", self.ctl_launches),
            web.get("/ctl/hooks", self.ctl_hooks),
            web.get("/ctl/heard", self.ctl_heard),
            web.post("/hook", self.hook),
        ])
        return app


class Agent:
    """skyjobs/node/agent.py's conversation with the controller, as a coroutine."""

    def __init__(self, cloud: FleetCloud, inst: Instance) -> None:
        self.cloud, self.inst = cloud, inst
        env = inst.env
        self.rank = int(env.get("SKYJOBS_NODE_RANK", "0"))
        many = [u.strip().rstrip("/") for u in env.get("SKYJOBS_CONTROLLER_URLS", "").split(",")
                if u.strip()]
        self.urls = list(dict.fromkeys(many)) or [env["SKYJOBS_CONTROLLER_URL"].rstrip("/")]
        self.current = self.urls[0]  # the controller that answered last
        self.answered = self.current
        self.moved = False  # the last heartbeat answer sent it to another controller
        self.rebeat = False  # the last heartbeat was an immediate one after such a move
        self.path = f"/agent/v1/attempts/{env['SKYJOBS_ATTEMPT_ID']}"
        self.headers = {"Authorization": f"Bearer {env['SKYJOBS_AGENT_TOKEN']}"}
        self.interval = 5.0
        self.log_interval = 1.0  # the controller's; a post carries what was written since
        self.shipped = 0
        self.lines = 0

    async def _request(self, method: str, path: str, *, payload: Any = None,
                       data: bytes | None = None, limit_s: float = 10.0) -> Any:
        """One pass over the controllers from the current one (ControllerClient.request)."""
        assert self.cloud.http is not None
        i = self.urls.index(self.current) if self.current in self.urls else 0
        failure: Exception = TimeoutError("no controller")
        for url in self.urls[i:] + self.urls[:i]:
            try:
                async with self.cloud.http.request(
                        method, f"{url}{self.path}{path}", json=payload, data=data,
                        headers=self.headers, timeout=aiohttp.ClientTimeout(total=limit_s)
                ) as resp:
                    body, status, info = await resp.read(), resp.status, resp.request_info
            except (aiohttp.ClientConnectionError, TimeoutError) as err:
                self.cloud.counts[f"agent_moved_on_{type(err).__name__}"] += 1
                failure = err
                continue
            if status in ROTATE_STATUSES:
                self.cloud.counts[f"agent_moved_on_{status}"] += 1
                failure = aiohttp.ClientResponseError(info, (), status=status)
                continue
            if url != self.current:
                self.cloud.counts["agent_failovers"] += 1
                self.current = url
            self.answered = url
            if status in (401, 404):
                raise Gone(f"{path}: HTTP {status}")
            if status >= 400:
                raise aiohttp.ClientResponseError(info, (), status=status)
            return json.loads(body or b"null")
        raise failure

    def set_controllers(self, urls: Any, move_to_first: bool = False) -> None:
        """A heartbeat answer's list, owner first (ControllerClient.set_controllers: the
        current controller stays current while listed; --agents-follow-owner: the first)."""
        if not isinstance(urls, list):
            return
        clean = list(dict.fromkeys(u.rstrip("/") for u in urls
                                   if isinstance(u, str) and u.startswith("http")))
        if not clean:
            return
        self.urls = clean
        if self.current not in clean or move_to_first or self.cloud.args.agents_follow_owner:
            self.current = clean[0]

    async def _retrying(self, what: str, method: str, path: str, **kw: Any) -> Any:
        """As ControllerClient.retrying: transient failures back off 0.2 s doubling to 5 s."""
        deadline, delay = time.monotonic() + REPORT_BUDGET, 0.2
        while True:
            try:
                return await self._request(method, path, **kw)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                self.cloud.counts[f"retry_{what}"] += 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: gave up")
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def report(self, event: dict[str, Any]) -> Any:
        return await self._retrying(str(event["kind"]), "POST", "/events",
                                    payload={**event, "rank": self.rank})

    async def heartbeat(self, wait_go: float = 0.0) -> dict[str, Any] | None:
        """One heartbeat; None when the controller did not take it (the caller retries)."""
        inst = self.inst
        t0 = time.perf_counter()
        try:
            reply = await self._request("POST", "/heartbeat",
                                        payload={"rank": self.rank, "wait_go": wait_go},
                                        limit_s=wait_go + 10)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            self.cloud.counts["hb_errors"] += 1
            return None
        if not wait_go:
            self.cloud.hb_rtts.append(time.perf_counter() - t0)
        if self.cloud.mark_at is not None and inst.reattached_at is None:
            inst.reattached_at = time.time()
        reply = reply if isinstance(reply, dict) else {}
        listed = reply.get("controllers")
        if self.cloud.mark_at is not None and len(inst.heard) < HEARD_MAX:
            first = listed[0] if isinstance(listed, list) and listed else None
            inst.heard.append([time.time(), self.answered, first])
        before = self.answered
        self.set_controllers(listed, move_to_first=reply.get("redirect") is True)
        self.moved = self.current != before  # sent to the owner: heartbeat there at once
        # The controller may choose the interval (in the answer) or only the task may say.
        for key in ("heartbeat_interval", "interval"):
            if isinstance(reply.get(key), int | float) and reply[key] > 0:
                self.interval = float(reply[key])
        if isinstance(reply.get("log_interval"), int | float) and reply["log_interval"] > 0:
            self.log_interval = float(reply["log_interval"])
        return reply

    async def ship_log(self) -> None:
        self.lines += 1
        chunk = LOG_LINE % (self.lines, random.randrange(10000))
        try:
            reply = await self._request(
                "POST", f"/logs?rank={self.rank}&offset={self.shipped}", data=chunk)
            self.shipped = int(reply["size"])
            self.cloud.counts["log_posts"] += 1
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            self.cloud.counts["log_errors"] += 1  # shipped again with the next line

    async def run(self) -> None:
        inst, cloud = self.inst, self.cloud
        inst.phase = "task"
        task = await self._retrying("task", "GET", f"/task?rank={self.rank}")
        self.interval = float(task.get("heartbeat_interval", 5.0))
        self.log_interval = float(task.get("log_interval", 1.0))
        await self.report({"kind": "phase", "phase": "ready"})
        inst.phase = "waiting_go"
        while True:
            if inst.notice_at is not None:  # reclaimed before it ever ran
                await self._noticed(ran=False)
                return
            reply = await self.heartbeat(wait_go=GO_WAIT)
            if reply and reply.get("go"):
                break
            if reply is None:
                await asyncio.sleep(1.0)
        await self.report({"kind": "phase", "phase": "running"})
        inst.phase = "running"
        cloud.counts["agents_running"] += 1
        loop = asyncio.get_running_loop()
        # Spread over the interval, as agents started at different moments would be.
        next_hb = loop.time() + random.uniform(0, self.interval)
        next_log = loop.time() + random.uniform(0, cloud.args.log_every)
        while True:
            wait = min(next_hb, next_log) - loop.time()
            if wait > 0 and not inst.wake.is_set():
                try:
                    await asyncio.wait_for(inst.wake.wait(), wait)
                except TimeoutError:
                    pass
            inst.wake.clear()
            if inst.notice_at is not None:
                await self._noticed(ran=True)
                return
            if inst.exit_code is not None:
                inst.phase = "exiting"
                await self.ship_log()
                await self.report({"kind": "exit", "exit_code": inst.exit_code, "phase": "run",
                                   "noticed": False, "seen_at": None})
                inst.phase = "done"
                return
            now = loop.time()
            if now >= next_hb:
                reply = await self.heartbeat()
                # A failed heartbeat is retried after 1 s, as the real agent does; one that
                # sent the agent to its job's owner is sent there at once, as it does too.
                # (Once per beat: an owner that has just died sends it straight back.)
                rebeat = reply is not None and self.moved and not self.rebeat
                self.rebeat = rebeat
                next_hb = loop.time() + (0.0 if rebeat else
                                         self.interval if reply is not None else 1.0)
                if reply and reply.get("drain"):
                    inst.exit_code = 143
            if now >= next_log:
                await self.ship_log()
                # The job writes a line every log_every; the agent ships what is new once
                # per log_interval (the real agent's loop), so the slower of the two.
                next_log = loop.time() + max(cloud.args.log_every, self.log_interval)

    async def _noticed(self, ran: bool) -> None:
        """The notice: report it at once (the job checkpoints meanwhile), then the job exits
        143 after checkpoint_s and the exit is reported; the machine dies at the deadline."""
        inst = self.inst
        seen = inst.notice_at or time.time()
        deadline = inst.notice_deadline or seen + 30.0
        notice = {"action": "terminate",
                  "time": datetime.fromtimestamp(deadline, UTC).strftime(IMDS_FMT)}
        inst.phase = "exiting"
        checkpoint = asyncio.create_task(asyncio.sleep(inst.checkpoint_s))
        await self.report({"kind": "notice", "notice": notice, "seen_at": seen})
        self.cloud.counts["notices_reported"] += 1
        await checkpoint
        await self.ship_log()
        await self.report({"kind": "exit", "exit_code": 143, "phase": "run" if ran else "setup",
                           "noticed": True, "seen_at": seen})
        self.cloud.counts["exits_reported"] += 1
        inst.phase = "done"


def write_port(path: Path, port: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(path)  # whoever waits for the file never reads half of it


async def main(args: argparse.Namespace) -> None:
    cloud = FleetCloud(args)
    cloud.lag.start()
    # 10,000 agents' coroutines are a large heap too: without this the generator's own full
    # collections (0.6-0.7 s each) showed up in the heartbeat round trips it measures.
    heap = HeapKeeper().start()
    # One pool for every agent: connections are kept alive and shared, as one per agent
    # would be on real nodes, without 10,000 idle sockets on this side.
    cloud.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.pool))
    runner = web.AppRunner(cloud.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, reuse_address=True)
    await site.start()
    port = runner.addresses[0][1]
    if args.port_file:
        write_port(Path(args.port_file), port)
    print(f"fleet cloud on http://127.0.0.1:{port} (pid {os.getpid()})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        heap.cancel()
        await cloud.http.close()
        await runner.cleanup()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", default=None, help="write the port here once serving")
    ap.add_argument("--boot-delay", type=float, default=1.0,
                    help="seconds from launch to a running instance (0.5x-1.5x, at random)")
    ap.add_argument("--log-every", type=float, default=10.0,
                    help="each running agent ships one log line this often")
    ap.add_argument("--pool", type=int, default=4096, help="connections to the controller")
    ap.add_argument("--agents-follow-owner", action="store_true",
                    help="agents move to the first controller a heartbeat answer lists")
    try:
        asyncio.run(main(ap.parse_args()))
    except KeyboardInterrupt:
        pass
