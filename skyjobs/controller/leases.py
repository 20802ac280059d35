"""The lease keeper: which jobs this controller runs, when several share one database.

Every job that needs a runner has a lease (store.leases). The keeper renews all of this
controller's leases in one statement every third of the lease, claims its share of leases
nobody holds (new jobs left unowned, jobs of a controller that died or stopped), adopts
what it claims exactly as a restarted controller resumes (re-attach to live instances,
recover vanished ones), and stands a runner down the moment its lease is no longer its own.
On SQLite there is one controller and the same code runs: at start it claims every job,
which is today's resume.

It also drains the wake-ups other controllers left for this one's jobs (an agent's report
heard there), and holds the singleton duties (price polls, orphan sweep, retention, webhook
delivery) under PostgreSQL advisory locks, so one controller at a time runs each.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

from skyjobs.controller import store as st
from skyjobs.controller.messages import Message
from skyjobs.controller.store import doorbell
from skyjobs.controller.store.leases import Wakeup
from skyjobs.exceptions import SkyjobsError
from skyjobs.states import MessageKind

if TYPE_CHECKING:
    from skyjobs.controller.services import Services

log = structlog.get_logger("skyjobs.leases")

WAKEUP_POLL = 5.0  # drains without a ring (PostgreSQL): the doorbell's safety net
WAKEUP_MAX_AGE = 3600.0  # wake-ups nobody took (their job ended) are dropped after this


class LeaseKeeper:
    def __init__(self, sv: Services, adopt: Callable[[list[int]], Awaitable[None]],
                 stand_down: Callable[[int], None], store: st.Store | None = None) -> None:
        """``store``: a store of the keeper's own (its own thread and session), so that
        renewals never wait behind the jobs' store calls on a busy controller."""
        self.sv = sv
        self.store = store or sv.store
        self.member = sv.member
        self.lease_s = sv.config.lease_seconds
        self._adopt = adopt
        self._stand_down = stand_down
        self.owned: dict[int, int] = {}  # job id -> the lease token of the last claim/renew
        self.valid_until = 0.0  # monotonic: past this, the leases may be someone else's
        self.lost = 0
        self._forward: list[Wakeup] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._rung = asyncio.Event()  # the doorbell rang: drain wake-ups now
        self._claim_rung = asyncio.Event()  # a new job was leased to us: adopt it now

    @property
    def shared(self) -> bool:
        """Several controllers may share this store (PostgreSQL)."""
        return self.sv.config.database_url is not None

    def valid(self) -> bool:
        return time.monotonic() < self.valid_until

    async def start(self) -> None:
        """Register, then resume: adopt the leases still ours and claim what is free."""
        store = self.store
        await store.call(store.sync.register_member, self.member, self.sv.url,
                         self.sv.agent_url, self.sv.host, self.sv.pid)
        await self.renew()
        await self.claim()
        self._tasks.append(asyncio.create_task(self._renew_loop(), name="lease-renew"))
        if self.shared:
            self._tasks.append(asyncio.create_task(self._wakeup_loop(), name="lease-wakeups"))
            url = self.sv.config.database_url
            assert url is not None
            self._tasks.append(asyncio.create_task(
                doorbell.listen(url, self.member, self._ring), name="lease-doorbell"))

    def _ring(self, payload: str) -> None:
        if payload == "claim":
            self._claim_rung.set()
        else:
            self._rung.set()

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._tasks)

    async def renew(self) -> None:
        sent = time.monotonic()
        store = self.store
        _, owned = await store.call(store.sync.renew_leases, self.member, self.lease_s)
        # A margin under the lease: our clock and the database's may disagree a little.
        self.valid_until = sent + self.lease_s * 0.8
        # Only runners of leases we held at the last renewal: one a submit started since
        # (its lease came with the job) is not in either set yet, and is not lost.
        for job_id in [j for j in self.sv.runners.jobs if j in self.owned and j not in owned]:
            self.lost += 1
            log.warning("lease lost: standing the job's runner down", job_id=job_id)
            self._stand_down(job_id)
        # Ours but not running here: assigned to us, ours before a restart, or a runner
        # that could not start (adopt starts live ones and lets the reaper see the rest).
        idle = [j for j in owned if j not in self.sv.runners.jobs]
        self.owned = owned
        if self.shared:
            members = await store.call(store.sync.members, self.lease_s)
            self.sv.peer_urls = [m["agent_url"] for m in members
                                 if m["live"] and m["id"] != self.member and m["agent_url"]]
        if idle:
            await self._adopt(idle)

    async def claim(self) -> None:
        store = self.store
        claimed = await store.call(store.sync.claim_leases, self.member, self.lease_s)
        if not claimed:
            return
        for job_id, token, previous in claimed:
            self.owned[job_id] = token
            if previous is not None and previous != self.member:
                log.info("took a job over", job_id=job_id, previous_owner=previous,
                         token=token)
        await self._adopt([job_id for job_id, _, _ in claimed])

    async def _renew_loop(self) -> None:
        """Renew every third of a lease; scan for free leases twice as often (a dead
        peer's jobs wait at most a sixth of a lease past their expiry; a scan that finds
        nothing is one cheap read)."""
        scan = self.lease_s / 6
        renewed = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(scan):
                    await self._claim_rung.wait()  # a new job for us: at once
            rung = self._claim_rung.is_set()
            self._claim_rung.clear()
            try:
                if rung or time.monotonic() - renewed >= self.lease_s / 3 - scan / 2:
                    renewed = time.monotonic()
                    await self.renew()
                await self.claim()
            except SkyjobsError as err:  # the store is away: leases lapse, runners stand down
                log.warning("lease renewal failed", error=str(err))
                if not self.valid():
                    for job_id in list(self.sv.runners.jobs):
                        self._stand_down(job_id)
                    self.owned.clear()

    # --- wake-ups ----------------------------------------------------------------------------

    def forward(self, job_id: int, msg: Message) -> None:
        """A report for a job another controller runs: leave it a wake-up (batched)."""
        if not self.shared:
            return
        first = not self._forward
        self._forward.append(Wakeup(job_id, msg.attempt_id, msg.rank, str(msg.kind)))
        if first:
            # In a context of its own: called from a runner standing down, the runner's
            # fence (store.leases.FENCE) would refuse the write that hands its reports on.
            asyncio.get_running_loop().call_soon(
                lambda: asyncio.ensure_future(self._flush()), context=contextvars.Context())

    async def _flush(self) -> None:
        batch, self._forward = self._forward, []
        if batch:
            try:
                await self.sv.store.call(self.sv.store.sync.add_wakeups, batch)
            except SkyjobsError as err:
                log.warning("could not leave wake-ups for other controllers", error=str(err),
                            count=len(batch))

    async def _wakeup_loop(self) -> None:
        store = self.sv.store
        last_expiry = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAKEUP_POLL):
                    await self._rung.wait()
            self._rung.clear()
            try:
                for w in await store.call(store.sync.drain_wakeups, self.member):
                    self.sv.runners.post(w.job_id, Message(MessageKind(w.kind), w.attempt_id,
                                                           w.rank))
                if time.monotonic() - last_expiry > WAKEUP_MAX_AGE / 4:
                    last_expiry = time.monotonic()
                    await store.call(store.sync.expire_wakeups, time.time() - WAKEUP_MAX_AGE)
            except SkyjobsError as err:
                log.warning("could not drain wake-ups", error=str(err))

    async def stop(self) -> None:
        """A graceful stop: hand the leases back so peers take the jobs at once."""
        for t in self._tasks:
            t.cancel()
        try:
            n = await self.store.call(self.store.sync.stop_member, self.member)
            log.info("leases handed back", count=n)
        except SkyjobsError as err:
            log.warning("could not hand the leases back; they expire", error=str(err))
