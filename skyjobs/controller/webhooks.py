"""Signed webhook delivery from the store's outbox.

Each job transition queues one outbox row per interested hook in the transition's own
transaction (see ``SyncStore._enqueue``); this dispatcher only delivers them. So a delivery
is never lost to a crash or a restart: it stays in the outbox until a receiver acknowledges
it, and the next controller picks it up. Delivery is at least once: receivers deduplicate on
``X-Skyjobs-Delivery`` (the payload's ``idempotency_key``), which is the same on every retry.

The request::

    POST <url>
    Content-Type: application/json
    X-Skyjobs-Event: recovering              (the payload's "event")
    X-Skyjobs-Delivery: skyjobs-sky-7-event-42-ops
    X-Skyjobs-Timestamp: 1767225600          (epoch seconds of this attempt)
    X-Skyjobs-Attempt: 1                     (1 on the first try, then 2, 3, ...)
    X-Skyjobs-Signature: sha256=<hex>

    <body: the skyjobs.event/v1 payload, or a Slack message for format: slack>

The signature is the hex HMAC-SHA256, keyed with the hook's ``secret`` (UTF-8), of the
bytes ``<timestamp> + "." + <body>``: the X-Skyjobs-Timestamp value exactly as sent, a dot,
then the raw request body exactly as received (verify before parsing the JSON). Every
attempt is signed afresh with its own timestamp, so receivers may reject stale timestamps
(replays) without rejecting a legitimately late retry. :func:`verify_signature` does all of
this.

Responses: any 2xx acknowledges. Everything else is retried: 5xx, 408, 429, timeouts and
refused connections, and also the other 4xx and 3xx (redirects are not followed). Dropping
a delivery would also break the per-job order for that receiver, and a 4xx is most often a
receiver misconfiguration (a wrong secret, a moved URL) that an operator fixes; once fixed,
every queued event arrives, in order. Retries back off exponentially with full jitter
(uniform in ``[0, min(backoff_max, backoff_initial * 2**attempts))``) and never give up;
``skyjobs_webhook_backlog`` and ``skyjobs_webhook_failures_total`` show a stuck receiver.

Crashes: an unexpected error in the dispatcher itself (the store raising, say, on a full
disk) is not a receiver's failure and has no outbox row to park. The loop survives it, logs
it, counts it in ``skyjobs_webhook_dispatcher_crashes_total`` and pauses dispatching for an
exponentially growing, capped while (``crash_backoff_initial`` doubling up to
``crash_backoff_max``; wake-ups do not cut the pause short), starting over after the next
clean round. A delivery that crashes after its POST (its outcome could not be recorded) holds
its row back in memory the same way, so a broken store never turns into a stream of resends.

Ordering: ``due_deliveries`` returns only the oldest undelivered row of each (job, hook), so
a receiver hears one job's events in order; different jobs go concurrently, at most
``concurrency`` requests in flight per hook, so a slow or dead receiver can neither stall
another hook nor, being its own task with its own HTTP session, slow the job runners.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from skyjobs.config import WebhookConfig
from skyjobs.controller import payloads
from skyjobs.exceptions import NotFoundError

if TYPE_CHECKING:
    from skyjobs.controller.metrics import Metrics
    from skyjobs.controller.store import Store, SyncStore

log = structlog.get_logger("skyjobs.webhooks")

SIGNATURE_HEADER = "X-Skyjobs-Signature"
TIMESTAMP_HEADER = "X-Skyjobs-Timestamp"
DELIVERY_HEADER = "X-Skyjobs-Delivery"
EVENT_HEADER = "X-Skyjobs-Event"
ATTEMPT_HEADER = "X-Skyjobs-Attempt"
# Receivers should refuse timestamps further than this from their clock (replay window).
DEFAULT_MAX_AGE = 300.0
# How much of a receiver's reply we read: enough for an error message, never a flood.
MAX_REPLY_BYTES = 4096


def store_hooks(hooks: Iterable[WebhookConfig]) -> dict[str, frozenset[str]]:
    """The ``hooks`` argument of :class:`Store`: which events each hook wants queued."""
    return {h.name: frozenset(h.events) for h in hooks}


# --- signing -------------------------------------------------------------------------------

def sign(secret: str, timestamp: str | int, body: bytes) -> str:
    """The X-Skyjobs-Signature value: ``sha256=`` + hex HMAC of ``"<timestamp>." + body``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_signature(secret: str, timestamp: str | int, body: bytes | str, header: str, *,
                     max_age: float | None = DEFAULT_MAX_AGE, now: float | None = None) -> bool:
    """True if ``header`` (X-Skyjobs-Signature) signs ``body`` at ``timestamp``
    (X-Skyjobs-Timestamp) with ``secret``, and the timestamp is within ``max_age`` seconds
    of ``now`` (None skips that check). Pass the raw body, before any JSON parsing."""
    ts = str(timestamp).strip()
    if not ts.isdigit():
        return False
    if max_age is not None and abs((time.time() if now is None else now) - int(ts)) > max_age:
        return False
    raw = body.encode() if isinstance(body, str) else body
    return hmac.compare_digest(sign(secret, ts, raw).encode(), header.strip().encode())


# --- bodies --------------------------------------------------------------------------------

_SLACK_EMOJI = {"recovering": ":warning:", "recovered": ":white_check_mark:",
                "succeeded": ":tada:", "failed": ":x:", "cancelled": ":no_entry_sign:"}


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn reserves exactly these three characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(payload: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message (``text`` plus blocks) for one event payload."""
    job = payload.get("job") or {}
    event = str(payload.get("event", "transition"))
    emoji = _SLACK_EMOJI.get(event, ":information_source:")
    moved = f"{payload.get('from') or '-'} \u2192 {payload.get('to') or '-'}"
    head = f"job {job.get('id')} ({_slack_escape(str(job.get('name')))}) {event}: {moved}"
    reason = payload.get("reason")
    text = f"{emoji} skyjobs {head}" + (f": {_slack_escape(str(reason))}" if reason else "")
    details = [f"attempt {payload.get('attempt')}" if payload.get("attempt") else None,
               payload.get("placement"), f"recoveries {payload.get('recovery_count', 0)}",
               f"cost so far ${float(payload.get('cost_so_far') or 0):.2f}",
               payload.get("time")]
    context = " | ".join(_slack_escape(str(d)) for d in details if d)
    return {"text": text, "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
    ]}


def request_body(hook: WebhookConfig, stored: str) -> bytes:
    """What goes on the wire: the stored payload as is, or its Slack rendering."""
    if hook.format == "slack":
        return json.dumps(slack_body(json.loads(stored))).encode()
    return stored.encode()


def sample_payload(hook: str) -> dict[str, Any]:
    """A realistic but fake event for ``send_test``; its key never collides with real ones."""
    token = secrets.token_hex(4)
    return payloads.event_payload(
        event_id=0, hook=hook, name="test", job_id=0, job_name="webhook-test",
        task_id=f"test-{token}", frm="RUNNING", to="RECOVERING",
        reason="test delivery (skyjobs webhooks test)", exit_code=None, attempt=1,
        placement="local/local-a/local.cpu2/spot", recovery_count=0, cost=0.0, saving=0.0,
        at=time.time())


# --- delivery ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Result:
    status: int | None  # HTTP status, None when no response came back
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class HookStats:
    delivered: int = 0
    failed: int = 0  # failed attempts; each is retried
    last_error: str | None = None
    last_error_at: float | None = None
    last_delivered_at: float | None = None


def _park(sync: SyncStore, ids: list[int], next_at: float, error: str) -> None:
    # Runs on the store thread: one executor hop for the whole batch.
    for outbox_id in ids:
        sync.mark_retry(outbox_id, next_at, error)


class WebhookDispatcher:
    def __init__(self, store: Store, hooks: list[WebhookConfig], *, concurrency: int = 16,
                 timeout: float = 10.0, backoff_initial: float = 2.0,
                 backoff_max: float = 600.0, poll_interval: float = 1.0, batch: int = 100,
                 metrics: Metrics | None = None, crash_backoff_initial: float = 1.0,
                 crash_backoff_max: float = 60.0) -> None:
        self.store = store
        self.hooks = {h.name: h for h in hooks}
        self.concurrency = concurrency  # per hook
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.poll_interval = poll_interval
        self.batch = batch
        self.metrics = metrics
        self.crash_backoff_initial = crash_backoff_initial
        self.crash_backoff_max = crash_backoff_max
        self._crash_streak = 0  # loop rounds in a row that crashed
        # Rows whose delivery crashed: consecutive crashes, and when they may go again.
        self._row_crashes: dict[int, int] = {}
        self._held: dict[int, float] = {}
        self.stats = {name: HookStats() for name in self.hooks}
        self._wake = asyncio.Event()
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._busy: dict[str, int] = dict.fromkeys(self.hooks, 0)
        self._timers: set[asyncio.TimerHandle] = set()
        self._warned_orphans: set[str] = set()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._session = self._new_session()
        if self.hooks:  # no hooks, no outbox rows: spare the store its polls
            self._task = asyncio.create_task(self._run(), name="webhooks")

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The dispatch loop, for the daemon to watch: it ends only by stop() or a bug."""
        return self._task

    async def stop(self, grace: float = 5.0) -> None:
        """Stop within about ``grace`` seconds; unfinished deliveries stay in the outbox."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        tasks = list(self._inflight.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def crash_streak(self) -> int:
        """Dispatch rounds in a row that crashed; 0 when the dispatcher is healthy."""
        return self._crash_streak

    def wake(self) -> None:
        """Look at the outbox now (after a transition) rather than at the next poll."""
        self._wake.set()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(s) for name, s in self.stats.items()}

    async def send_test(self, name: str) -> dict[str, Any]:
        """POST a sample event to one hook right now, bypassing the outbox and its filter."""
        hook = self.hooks.get(name)
        if hook is None:
            raise NotFoundError(f"no webhook named {name!r}")
        payload = sample_payload(name)
        session = self._session or self._new_session()
        try:
            result = await self._post(session, hook, json.dumps(payload), 1)
        finally:
            if session is not self._session:
                await session.close()
        return {"hook": name, "ok": result.ok, "status": result.status, "error": result.error,
                "delivery": payload["idempotency_key"]}

    def _new_session(self) -> aiohttp.ClientSession:
        # Own session and connection pool: the runners' and providers' HTTP never waits
        # behind a stuck receiver. A total timeout bounds each attempt end to end.
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"User-Agent": "skyjobs-webhooks/1"})

    # --- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._dispatch_due()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - the outbox keeps the work; retry later
                # Sleep, not the wake event: every transition wakes us, and a broken store
                # must not be hammered once per transition.
                await asyncio.sleep(self._loop_crashed(err))
                continue
            if self._crash_streak:
                log.info("webhook dispatcher recovered", crashes=self._crash_streak)
                self._crash_streak = 0
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
            # races with the wake-up, and stop() would then wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()

    async def _dispatch_due(self) -> None:
        # Several controllers on one database: one of them delivers (a singleton duty).
        # (SQLite has one controller: no store round trip on every wake-up for it.)
        if self.store.sync.d.name != "sqlite" and \
                not await self.store.call(self.store.sync.hold_duty, "webhooks"):
            return
        # Ask for more than is in flight, or rows already being sent would hide the rest.
        limit = self.batch + len(self._inflight)
        rows = await self.store.call(self.store.sync.due_deliveries, time.time(), limit)
        orphans: dict[str, list[int]] = {}
        now = time.monotonic()
        for row in rows:
            if row["id"] in self._inflight or self._held.get(row["id"], 0.0) > now:
                continue
            hook = self.hooks.get(row["hook"])
            if hook is None:
                orphans.setdefault(row["hook"], []).append(row["id"])
            elif self._busy[hook.name] < self.concurrency:
                self._spawn(hook, row)
        for name, ids in orphans.items():
            await self._park_orphans(name, ids)

    async def _park_orphans(self, name: str, ids: list[int]) -> None:
        """Rows for a hook removed from the config: keep them (the hook may come back) but
        out of the way, or they would fill every batch and starve the configured hooks."""
        if name not in self._warned_orphans:
            self._warned_orphans.add(name)
            log.warning("deliveries queued for a webhook that is no longer configured",
                        hook=name, count=len(ids))
        await self.store.call(_park, self.store.sync, ids, time.time() + self.backoff_max,
                              f"webhook {name!r} is not configured")

    def _spawn(self, hook: WebhookConfig, row: dict[str, Any]) -> None:
        self._busy[hook.name] += 1
        task = asyncio.create_task(self._deliver(hook, row),
                                   name=f"webhook-{hook.name}-{row['id']}")
        self._inflight[row["id"]] = task

    async def _deliver(self, hook: WebhookConfig, row: dict[str, Any]) -> None:
        try:
            assert self._session is not None
            result = await self._post(self._session, hook, row["payload"], row["attempts"] + 1)
            if result.ok:
                await self.store.call(self.store.sync.mark_delivered, row["id"])
                self._delivered(hook.name)
            else:
                await self._failed(hook.name, row, result.error or "failed")
            self._row_crashes.pop(row["id"], None)
            self._held.pop(row["id"], None)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - one bad row must not stop the dispatcher
            self._delivery_crashed(hook.name, row["id"], err)
        finally:
            # Only now, after the mark, may the loop see this (job, hook) again: earlier it
            # would send the same row twice.
            self._inflight.pop(row["id"], None)
            self._busy[hook.name] -= 1
            self.wake()  # the job's next event, or a freed slot

    async def _post(self, session: aiohttp.ClientSession, hook: WebhookConfig, stored: str,
                    attempt: int) -> Result:
        body = request_body(hook, stored)
        meta = json.loads(stored)
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: str(meta.get("event", "")),
            DELIVERY_HEADER: str(meta.get("idempotency_key", "")),
            TIMESTAMP_HEADER: timestamp,
            ATTEMPT_HEADER: str(attempt),
            SIGNATURE_HEADER: sign(hook.secret, timestamp, body),
        }
        try:
            async with session.post(hook.url, data=body, headers=headers,
                                    allow_redirects=False) as resp:
                # Read a little so the connection can be reused, and for the error text.
                reply = await resp.content.read(MAX_REPLY_BYTES)
                if 200 <= resp.status < 300:
                    return Result(resp.status, None)
                text = reply[:200].decode(errors="replace").strip()
                return Result(resp.status, f"HTTP {resp.status}" + (f": {text}" if text else ""))
        except TimeoutError:
            return Result(None, f"timed out after {self.timeout:g}s")
        except (aiohttp.ClientError, OSError) as err:
            return Result(None, f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)

    # --- bookkeeping ---------------------------------------------------------------------

    def _delivered(self, hook: str) -> None:
        stats = self.stats[hook]
        stats.delivered += 1
        stats.last_delivered_at = time.time()
        if self.metrics is not None:
            self.metrics.webhook_delivered(hook)

    async def _failed(self, hook: str, row: dict[str, Any], error: str) -> None:
        delay = self.backoff(row["attempts"])
        await self.store.call(self.store.sync.mark_retry, row["id"], time.time() + delay, error)
        stats = self.stats[hook]
        stats.failed += 1
        stats.last_error, stats.last_error_at = error, time.time()
        if self.metrics is not None:
            self.metrics.webhook_failed(hook)
        log.warning("webhook delivery failed; will retry", hook=hook, outbox_id=row["id"],
                    job_id=row["job_id"], attempt=row["attempts"] + 1, error=error,
                    retry_in=round(delay, 3))
        if delay < self.poll_interval:
            # Sooner than the next poll: wake up for it instead of waiting.
            self._wake_later(delay)

    def _wake_later(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(timer)
            self.wake()

        timer = loop.call_later(delay, fire)
        self._timers.add(timer)

    def _count_crash(self, site: str) -> None:
        if self.metrics is not None:
            self.metrics.webhook_dispatcher_crash(site)

    def _loop_crashed(self, err: Exception) -> float:
        """Record one crash of the dispatch loop; returns how long to pause."""
        self._crash_streak += 1
        delay = self.crash_delay(self._crash_streak)
        self._count_crash("loop")
        # The traceback once per streak; the repeats say only what and how often.
        log.error("webhook dispatcher crashed; retrying after a pause",
                  error=f"{type(err).__name__}: {err}", crashes=self._crash_streak,
                  retry_in=round(delay, 3), exc_info=self._crash_streak == 1)
        return delay

    def _delivery_crashed(self, hook: str, outbox_id: int, err: Exception) -> None:
        """Hold a row whose delivery crashed (its outcome may be unrecorded) out of the
        next rounds for a while, or the loop would send it again at once, for ever."""
        crashes = self._row_crashes[outbox_id] = self._row_crashes.get(outbox_id, 0) + 1
        delay = self.crash_delay(crashes)
        self._held[outbox_id] = time.monotonic() + delay
        self._count_crash("delivery")
        log.error("webhook delivery crashed; will retry", hook=hook, outbox_id=outbox_id,
                  error=f"{type(err).__name__}: {err}", crashes=crashes,
                  retry_in=round(delay, 3), exc_info=crashes == 1)
        self._wake_later(delay)

    def crash_delay(self, crashes: int) -> float:
        """The pause after the ``crashes``-th crash in a row: doubling from the initial
        value, capped (no jitter: one dispatcher, nothing to spread out)."""
        exponent = min(max(crashes, 1) - 1, 60)
        return min(self.crash_backoff_max, self.crash_backoff_initial * 2.0 ** exponent)

    def backoff(self, attempts: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2**attempts))."""
        ceiling = min(self.backoff_max, self.backoff_initial * 2.0 ** min(attempts, 60))
        return random.uniform(0.0, ceiling)
