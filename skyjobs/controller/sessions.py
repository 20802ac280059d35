"""Agent sessions: what the controller knows of each attempt's agents, in memory.

Credentials (one per attempt, derived from the controller's secret), the go gate (an agent
may start ``run`` only when its runner says so) and the drain flag, liveness on the
monotonic clock (a wall-clock step must not recover every job), silence and its end as
events, and the preemption notice, recorded the moment an agent reports it. None of this
needs to survive a restart: agents heartbeat again within seconds, and everything that
matters is in the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
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
        self.silent_since: dict[int, float] = {}
        self._launched_at: dict[int, float] = {}
        self.started_mono = time.monotonic()

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
        self._ranks.setdefault(attempt_id, set()).add(rank)

    def heard_any(self, attempt_id: int) -> bool:
        return attempt_id in self._ranks

    def launched(self, attempt_id: int) -> None:
        """The cloud accepted this attempt's launch (instances may not be visible yet)."""
        self._launched_at[attempt_id] = time.monotonic()

    def since_launch(self, attempt_id: int) -> float:
        """Seconds since the launch went through (or since this controller started, for an
        attempt an earlier controller launched)."""
        return time.monotonic() - self._launched_at.get(attempt_id, self.started_mono)

    def forget(self, attempt_id: int) -> None:
        """Drop what is known of an attempt whose instances are gone."""
        self.go.discard(attempt_id)
        self.drain.discard(attempt_id)
        waiter = self._go_waiters.pop(attempt_id, None)
        if waiter is not None:
            waiter.set()  # answer a held heartbeat of an attempt that is over
        self.silent_since.pop(attempt_id, None)
        self._launched_at.pop(attempt_id, None)
        for rank in self._ranks.pop(attempt_id, ()):
            self.last_seen.pop((attempt_id, rank), None)

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
        now, timeout = time.monotonic(), self.config.heartbeat_timeout
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
        moved = await self.store.call(self.store.sync.notice_and_recover, attempt.job_id,
                                      attempt.id, now, deadline, info,
                                      (placement, "preemption", 1.0))
        if moved:
            self.memory.record(memory_key(placement), "preemption", now)
            self.metrics.recovery(RecoveryCause.NOTICE)
            self._wake_webhooks()
            if seen_at is not None and 0 <= time.time() - seen_at < 3600:
                # From the agent seeing the notice to RECOVERING recorded (clocks may differ
                # a little between hosts; NTP keeps that well under the latencies of interest).
                self.metrics.notice_latency(time.time() - seen_at)
        self._post(attempt.job_id, Message(MessageKind.NOTICE, attempt.id, rank))


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
