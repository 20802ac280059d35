"""Agent sessions: what the controller knows of each attempt's agents, in memory.

Credentials (one per attempt, derived from the controller's secret), the go gate (an agent
may start ``run`` only when its runner says so) and the drain flag, liveness on the
monotonic clock (a wall-clock step must not recover every job), silence and its end as
events, and the preemption notice, recorded the moment an agent reports it. None of this
needs to survive a restart: agents heartbeat again within seconds, and everything that
matters is in the store.

At scale (issue 11) the agents' requests are most of the controller's work, so what they
need is kept here rather than read from the store per request: each live attempt's launch
facts and its nodes' addresses. The heartbeat interval (and the log shipping interval)
grows with the fleet so that the request rate stays bounded; the silence timeout grows
with it. Everything keyed by attempt is dropped when the attempt's instances are released.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import structlog

from skyjobs.config import ControllerConfig
from skyjobs.controller import store as st
from skyjobs.controller.messages import Message
from skyjobs.controller.metrics import Metrics
from skyjobs.pricing.catalog import Placement
from skyjobs.recovery.memory import PreemptionMemory
from skyjobs.recovery.policy import memory_key
from skyjobs.states import MessageKind, NodePhase, RecoveryCause

log = structlog.get_logger("skyjobs.sessions")

MAX_GO_WAIT = 30.0  # a held heartbeat is answered after this long at most
DEFAULT_NOTICE = 120.0  # a notice without a parsable time: AWS's two minutes


class AgentSessions:
    def __init__(self, config: ControllerConfig, store: st.Store, metrics: Metrics,
                 secret: bytes, memory: PreemptionMemory, *,
                 post: Callable[[int, Message], None],
                 placement_of: Callable[[st.Attempt], Placement],
                 wake_webhooks: Callable[[], None]) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self._secret = secret
        self.memory = memory
        self._post = post
        self._placement_of = placement_of
        self._wake_webhooks = wake_webhooks
        self.go: set[int] = set()  # attempts whose agents may start run
        self.drain: set[int] = set()  # attempts asked to checkpoint and exit (migration)
        self._go_waiters: dict[int, asyncio.Event] = {}
        self.last_seen: dict[tuple[int, int], float] = {}
        # Ranks heard per attempt: heard_any and forget look up one attempt, not every agent
        # (the monitor asks about each provisioning attempt on every poll).
        self._ranks: dict[int, set[int]] = {}
        self._agents = 0  # agents heard, over every attempt (the sum of _ranks' sizes)
        self.silent_since: dict[int, float] = {}
        self._launched_at: dict[int, float] = {}
        self.started_mono = time.monotonic()
        # Launch-time facts of unreleased attempts (see attempt()), and node addresses.
        self._attempts: dict[int, st.Attempt] = {}
        self._ips: dict[str, str] = {}
        # Bumped by forget(): a store read that raced a release must not cache its attempt
        # again (it would never be dropped).
        self._forgets = 0
        # The longest heartbeat interval sent lately, and since when: agents keep an
        # interval until their next heartbeat, so silence is judged by the longest recent one.
        self._interval_high = config.heartbeat_interval
        self._interval_high_at = self.started_mono
        # Notices waiting for the next batch, and the task writing batches.
        self._notices: list[tuple[st.Notice, asyncio.Future[bool]]] = []
        self._notice_writer: asyncio.Task[None] | None = None

    # --- launch facts, without a store read per agent request -------------------------------

    async def attempt(self, attempt_id: int) -> st.Attempt:
        """The attempt an agent request names. Only its launch-time facts may be used (job,
        n, placement, nodes, instance ids, task index): a cached record's status, end and
        notice fields are those of when it was read. Raises NotFoundError."""
        known = self._attempts.get(attempt_id)
        if known is not None:
            return known
        forgets = self._forgets
        attempt = await self.store.call(self.store.sync.get_attempt, attempt_id)
        if forgets == self._forgets:  # released meanwhile: never cache it again
            self.remember(attempt)
        return attempt

    async def attempts(self, attempt_ids: list[int]) -> list[st.Attempt]:
        """Launch facts of many attempts (same caveat as attempt()), one store read for
        those not in memory; unknown ids are left out."""
        missing = [i for i in attempt_ids if i not in self._attempts]
        read: dict[int, st.Attempt] = {}
        if missing:
            forgets = self._forgets
            read = {a.id: a for a in await self.store.call(self.store.sync.attempts_by_id,
                                                           missing)}
            if forgets == self._forgets:  # as in attempt()
                for attempt in read.values():
                    self.remember(attempt)
        return [a for i in attempt_ids if (a := self._attempts.get(i) or read.get(i))]

    def knows(self, attempt_id: int) -> bool:
        """Whether the attempt's launch facts are held (until its instances are released)."""
        return attempt_id in self._attempts

    def remember(self, attempt: st.Attempt) -> None:
        """Keep an attempt's launch facts until its instances are released."""
        if not attempt.released:
            self._attempts[attempt.id] = attempt

    def note_ips(self, infos: Iterable[Any]) -> None:
        """Addresses the cloud reported (at launch or in a poll); an instance keeps its
        address for life, so they are asked for once."""
        for info in infos:
            if info.ip:
                self._ips[info.instance_id] = info.ip

    def ips_of(self, instance_ids: list[str]) -> list[str] | None:
        """Every node's address, or None while any is unknown."""
        ips = [self._ips.get(i) for i in instance_ids]
        return None if None in ips else [ip for ip in ips if ip is not None]

    # --- how often agents report -----------------------------------------------------------

    @property
    def agents(self) -> int:
        return self._agents

    def heartbeat_interval(self) -> float:
        """The interval each heartbeat answer asks for: the configured one, lengthened (in
        whole seconds) so the fleet sends at most max_heartbeat_rate heartbeats a second."""
        cfg = self.config
        interval = max(cfg.heartbeat_interval, float(math.ceil(self._agents /
                                                               cfg.max_heartbeat_rate)))
        now = time.monotonic()
        if interval >= self._interval_high or \
                now - self._interval_high_at > self._timeout_for(self._interval_high):
            self._interval_high, self._interval_high_at = interval, now
        return interval

    def assume_fleet(self, agents: int) -> None:
        """After a restart: agents still use the interval the last controller sent them
        (for a fleet of about this size) until their next heartbeat."""
        cfg = self.config
        self._interval_high = max(cfg.heartbeat_interval,
                                  float(math.ceil(agents / cfg.max_heartbeat_rate)))
        self._interval_high_at = time.monotonic()

    def log_interval(self) -> float:
        """Seconds between an agent's log posts: 1, or longer past max_log_post_rate."""
        return max(1.0, float(math.ceil(self._agents / self.config.max_log_post_rate)))

    def _timeout_for(self, interval: float) -> float:
        cfg = self.config
        return cfg.heartbeat_timeout * max(1.0, interval / cfg.heartbeat_interval)

    @property
    def heartbeat_timeout(self) -> float:
        """Silence past this is suspect: heartbeat_timeout, scaled by the longest interval
        agents may still be using over the configured one."""
        return self._timeout_for(self._interval_high)

    # --- credentials -----------------------------------------------------------------------

    def agent_token(self, attempt_id: int) -> str:
        return hmac.new(self._secret, f"attempt:{attempt_id}".encode(),
                        hashlib.sha256).hexdigest()

    # --- the go gate and the drain flag ----------------------------------------------------

    def grant_go(self, attempt_id: int) -> None:
        self.go.add(attempt_id)
        waiter = self._go_waiters.pop(attempt_id, None)
        if waiter is not None:
            waiter.set()

    async def wait_go(self, attempt_id: int, wait_s: float) -> None:
        """Hold an agent's heartbeat until its attempt may start (or wait_s passes)."""
        waiter = self._go_waiters.setdefault(attempt_id, asyncio.Event())
        try:
            await asyncio.wait_for(waiter.wait(), min(wait_s, MAX_GO_WAIT))
        except TimeoutError:
            pass

    def ask_to_drain(self, attempt_id: int) -> None:
        self.drain.add(attempt_id)

    def release_waiters(self) -> None:
        """Answer every held heartbeat now (shutdown); agents retry against the next start."""
        for waiter in self._go_waiters.values():
            waiter.set()

    # --- liveness ---------------------------------------------------------------------------

    def heard(self, attempt_id: int, rank: int) -> None:
        """An agent of this attempt spoke (any request): it is alive."""
        self.last_seen[(attempt_id, rank)] = time.monotonic()
        ranks = self._ranks.setdefault(attempt_id, set())
        if rank not in ranks:
            ranks.add(rank)
            self._agents += 1

    def heard_any(self, attempt_id: int) -> bool:
        return attempt_id in self._ranks

    def launched(self, attempt_id: int) -> None:
        """The cloud accepted this attempt's launch (instances may not be visible yet)."""
        self._launched_at[attempt_id] = time.monotonic()

    def adopted(self, attempt_id: int) -> None:
        """This controller took over an attempt another one launched (a restart, or a
        takeover): its agents need time to find this controller (a redirect, a failover),
        so silence counts from now, as after a launch, not from this process's start."""
        self._launched_at.setdefault(attempt_id, time.monotonic())

    def since_launch(self, attempt_id: int) -> float:
        """Seconds since the launch went through (or since this controller started, for an
        attempt an earlier controller launched)."""
        return time.monotonic() - self._launched_at.get(attempt_id, self.started_mono)

    def forget(self, attempt_id: int, instance_ids: Iterable[str] = ()) -> None:
        """Drop what is known of an attempt whose instances are gone."""
        self._forgets += 1
        known = self._attempts.pop(attempt_id, None)
        for i in {*instance_ids, *(known.instance_ids if known else ())}:
            self._ips.pop(i, None)
        self.go.discard(attempt_id)
        self.drain.discard(attempt_id)
        waiter = self._go_waiters.pop(attempt_id, None)
        if waiter is not None:
            waiter.set()  # answer a held heartbeat of an attempt that is over
        self.silent_since.pop(attempt_id, None)
        self._launched_at.pop(attempt_id, None)
        ranks = self._ranks.pop(attempt_id, set())
        self._agents -= len(ranks)
        for rank in ranks:
            self.last_seen.pop((attempt_id, rank), None)

    def forget_job(self, job_id: int) -> None:
        """Another controller took the job over: what this one knew of its attempts goes
        (the new owner tracks them; kept here, they would never be dropped)."""
        for attempt in [a for a in self._attempts.values() if a.job_id == job_id]:
            self.forget(attempt.id)

    def sizes(self) -> dict[str, int]:
        """How many entries each map holds (the retention test's and /metrics' view)."""
        return {"attempts": len(self._attempts), "ips": len(self._ips),
                "last_seen": len(self.last_seen), "ranks": len(self._ranks),
                "go": len(self.go), "drain": len(self.drain),
                "go_waiters": len(self._go_waiters), "silent": len(self.silent_since),
                "launched": len(self._launched_at)}

    def _last_heard(self, a: st.Attempt, ranks: Iterable[int], now: float) -> float:
        # A node not heard yet is measured from its launch (or from this controller's start
        # for an attempt launched by an earlier one).
        never = max(self.started_mono, self._launched_at.get(a.id, self.started_mono))
        return min((self.last_seen.get((a.id, r), never) for r in ranks), default=now)

    async def check_silence(self, a: st.Attempt) -> None:
        """Called by the instance monitor for an attempt whose instances are all up. Silence
        and its end are recorded as events (and counted), so a person can see an agent
        that went quiet before anything is recovered; past silent_window, the runner is
        told."""
        now, timeout = time.monotonic(), self.heartbeat_timeout
        # Heartbeats are in memory: the store is asked only about an attempt that went quiet
        # (its nodes that exited are allowed to be quiet).
        if now - self._last_heard(a, range(a.num_nodes), now) < timeout:
            await self._not_silent(a, now)
            return
        nodes = await self.store.call(self.store.sync.nodes_of, a.id)
        ranks = [r for r in range(a.num_nodes)
                 if nodes.get(r, (NodePhase.SETUP, None))[0] != NodePhase.EXITED]
        last = self._last_heard(a, ranks, now)
        if now - last < timeout:
            await self._not_silent(a, now)
            return
        if a.id not in self.silent_since:
            self.silent_since[a.id] = last
            self.metrics.agent_silence("silent")
            quiet = [r for r in ranks if now - self.last_seen.get((a.id, r), 0.0) >= timeout]
            await self.store.call(
                self.store.sync.add_info_event, a.job_id,
                f"agent on node {', '.join(map(str, quiet)) or '?'} silent for {now - last:.0f}s"
                f" (recovered as agent lost after silent_window "
                f"{self.config.silent_window:g}s)", a.n)
        since = self.silent_since[a.id]
        if now - since >= self.config.silent_window:
            self._post(a.job_id, Message(
                MessageKind.SILENT, a.id,
                detail=f"agent silent for {now - since:.0f}s on a running instance "
                       f"(silent_window {self.config.silent_window:g}s)"))

    async def _not_silent(self, a: st.Attempt, now: float) -> None:
        since = self.silent_since.pop(a.id, None)
        if since is not None:
            self.metrics.agent_silence("back")
            await self.store.call(self.store.sync.add_info_event, a.job_id,
                                  f"agent is back after {now - since:.0f}s of silence", a.n)

    # --- the preemption notice -----------------------------------------------------------

    async def record_notice(self, attempt: st.Attempt, rank: int, notice: Any,
                            seen_at: float | None) -> None:
        """An agent saw its instance's preemption notice: record it and, for the job's
        current attempt, move the job to RECOVERING in the same transaction, so the
        replacement is launched while the old attempt still checkpoints."""
        now = time.time()
        deadline = notice_deadline(notice, now)
        action = notice.get("action") if isinstance(notice, dict) else None
        if not isinstance(action, str) or not action.isprintable() or len(action) > 40:
            action = "terminate"
        info = f"preemption notice on node {rank}: {action} in {max(0.0, deadline - now):.0f}s"
        placement = self._placement_of(attempt)
        moved = await self._record((attempt.job_id, attempt.id, now, deadline, info,
                                    (placement, "preemption", 1.0)))
        if moved:
            self.memory.record(memory_key(placement), "preemption", now)
            self.metrics.recovery(RecoveryCause.NOTICE)
            self._wake_webhooks()
            if seen_at is not None and 0 <= time.time() - seen_at < 3600:
                # From the agent seeing the notice to RECOVERING recorded (clocks may differ
                # a little between hosts; NTP keeps that well under the latencies of interest).
                self.metrics.notice_latency(time.time() - seen_at)
        self._post(attempt.job_id, Message(MessageKind.NOTICE, attempt.id, rank))


    async def _record(self, notice: st.Notice) -> bool:
        """Record one notice in the next batch: the notices that arrive while a batch is
        being written go in one transaction together (a zone reclaimed at once is a
        thousand notices in a second), each still all-or-nothing on its own."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._notices.append((notice, fut))
        if self._notice_writer is None or self._notice_writer.done():
            self._notice_writer = asyncio.create_task(self._write_notices(),
                                                      name="notice-writer")
        return await fut

    async def _write_notices(self) -> None:
        while self._notices:
            batch, self._notices = self._notices, []
            try:
                results = await self.store.call(self.store.sync.notices_and_recover,
                                                [n for n, _ in batch])
            except BaseException as err:  # the store failed: every waiter hears it
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err if isinstance(err, Exception)
                                          else RuntimeError("notice batch cancelled"))
                if not isinstance(err, Exception):
                    raise
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)


def notice_deadline(notice: Any, now: float) -> float:
    """When the instance goes, from an IMDS-style notice ``{"time": "...Z"}``."""
    if isinstance(notice, dict) and isinstance(notice.get("time"), str) \
            and len(notice["time"]) <= 64:
        try:
            at = datetime.fromisoformat(notice["time"].replace("Z", "+00:00")).timestamp()
        except (ValueError, OverflowError, OSError):
            return now + DEFAULT_NOTICE
        if 0 < at < 1e11:
            return at
    return now + DEFAULT_NOTICE
