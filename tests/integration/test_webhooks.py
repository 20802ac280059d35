"""Webhook delivery end to end: a real SQLite outbox, real aiohttp receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from skyjobs.config import WebhookConfig, load_config
from skyjobs.controller import store as st
from skyjobs.controller import webhooks
from skyjobs.controller.daemon import Controller
from skyjobs.controller.metrics import Metrics
from skyjobs.controller.store import Store
from skyjobs.controller.webhooks import WebhookDispatcher, store_hooks, verify_signature
from skyjobs.exceptions import NotFoundError
from skyjobs.providers.fake import FakeProvider

SECRET = "s3cret-s3cret-s3cret"
FAST: dict[str, Any] = {"backoff_initial": 0.01, "backoff_max": 0.05, "poll_interval": 0.05}
# The transitions driven after create_job (which itself queues None -> PENDING).
LIFE = [st.PROVISIONING, st.RUNNING, st.RECOVERING, st.PROVISIONING, st.RUNNING, st.SUCCEEDED]
EVERY = [st.PENDING, *LIFE]


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    @property
    def key(self) -> str:
        return self.headers["X-Skyjobs-Delivery"]


class Receiver:
    """A webhook endpoint that records every request; tests decide its answers."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.acked: list[Received] = []
        self.status: Callable[[Received], int] = lambda r: 200
        self.hold: Callable[[Received], Awaitable[None]] | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        got = Received(dict(request.headers), await request.read())
        self.requests.append(got)
        if self.hold is not None:
            await self.hold(got)
        status = self.status(got)
        if 200 <= status < 300:
            self.acked.append(got)
        return web.Response(status=status, text="ok" if status < 300 else "receiver says no")

    def acked_for(self, job_id: int) -> list[Received]:
        return [r for r in self.acked if r.payload["job"]["id"] == job_id]


async def until(what: str, check: Callable[[], Any], within: float = 15.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


def hook(name: str, receiver: Receiver | str, **kw: Any) -> WebhookConfig:
    url = receiver if isinstance(receiver, str) else receiver.url
    return WebhookConfig(name=name, url=url, secret=SECRET, **{"events": ["all"], **kw})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


class World:
    """A store with hooks and the dispatchers started on it; cleans both up."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self.store: Store | None = None
        self.dispatchers: list[WebhookDispatcher] = []

    def open(self, hooks: list[WebhookConfig]) -> Store:
        self.store = Store(self.path, hooks=store_hooks(hooks))
        return self.store

    async def dispatcher(self, hooks: list[WebhookConfig], **kw: Any) -> WebhookDispatcher:
        assert self.store is not None
        d = WebhookDispatcher(self.store, hooks, **{**FAST, **kw})
        self.dispatchers.append(d)
        await d.start()
        return d

    async def close(self) -> None:
        for d in self.dispatchers:
            await d.stop(grace=1.0)
        self.dispatchers.clear()
        if self.store is not None:
            self.store.close()
            self.store = None


@pytest.fixture
async def world(store_target: Path | str) -> AsyncIterator[World]:
    w = World(store_target)
    yield w
    await w.close()


async def new_job(store: Store, name: str = "train") -> int:
    return await store.call(store.sync.create_job, name, {}, False, "sky")


async def drive(store: Store, job_id: int, targets: list[str]) -> None:
    for target in targets:
        await store.call(store.sync.transition, job_id, target, f"to {target}")


async def backlog(store: Store) -> int:
    return (await store.call(store.sync.outbox_stats))["backlog"]


def verified(r: Received, secret: str = SECRET) -> bool:
    return verify_signature(secret, r.headers["X-Skyjobs-Timestamp"], r.body,
                            r.headers["X-Skyjobs-Signature"])


# --- tests ---------------------------------------------------------------------------------

async def test_signed_payloads_arrive_with_their_fields(world: World, receiver: Receiver) -> None:
    hooks = [hook("ops", receiver)]
    store = world.open(hooks)
    job_id = await new_job(store, "bert")
    await drive(store, job_id, [st.PROVISIONING, st.RUNNING])
    await world.dispatcher(hooks)
    await until("3 deliveries", lambda: len(receiver.acked) == 3)

    job = store.sync.get_job(job_id)
    first = receiver.acked[0]
    assert verified(first)
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["X-Skyjobs-Attempt"] == "1"
    assert first.headers["X-Skyjobs-Signature"].startswith("sha256=")
    p = first.payload
    assert p["schema"] == "skyjobs.event/v1"
    assert p["idempotency_key"] == first.key and p["idempotency_key"].endswith("-ops")
    assert p["job"] == {"id": job_id, "name": "bert", "task_id": job.task_id}
    assert (p["from"], p["to"], p["event"]) == (None, "PENDING", "transition")
    assert first.headers["X-Skyjobs-Event"] == "transition"
    assert p["time"].endswith("Z") and isinstance(p["at"], float)
    assert [(r.payload["from"], r.payload["to"]) for r in receiver.acked] == [
        (None, "PENDING"), ("PENDING", "PROVISIONING"), ("PROVISIONING", "RUNNING")]
    assert len({r.key for r in receiver.acked}) == 3
    # The signature covers timestamp and body: change either, or the secret, and it fails.
    ts, sig = first.headers["X-Skyjobs-Timestamp"], first.headers["X-Skyjobs-Signature"]
    assert not verify_signature(SECRET, ts, first.body + b" ", sig)
    assert not verify_signature(SECRET, str(int(ts) + 1), first.body, sig)
    assert not verified(first, secret="another-secret-of-16")
    assert not verify_signature(SECRET, ts, first.body, sig, now=int(ts) + 3600)
    await until("an empty outbox", lambda: store.sync.outbox_stats()["backlog"] == 0)


async def test_each_job_is_heard_in_order(world: World, receiver: Receiver) -> None:
    hooks = [hook("ops", receiver)]
    store = world.open(hooks)
    jobs = [await new_job(store, f"j{i}") for i in range(4)]
    for target in LIFE:  # interleaved across jobs, as real runners do
        for job_id in jobs:
            await drive(store, job_id, [target])
    in_flight, most = 0, 0

    async def slow_and_uneven(r: Received) -> None:
        # Uneven service times: a dispatcher that sent one job's events concurrently
        # would see them overtake each other.
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.002 * (r.payload["job"]["id"] % 3 + r.payload["at"] % 1 * 3))
        in_flight -= 1

    receiver.hold = slow_and_uneven
    await world.dispatcher(hooks)
    await until("all deliveries", lambda: len(receiver.acked) == len(jobs) * len(EVERY))
    for job_id in jobs:
        assert [r.payload["to"] for r in receiver.acked_for(job_id)] == EVERY
    assert most > 1  # different jobs did go concurrently


async def test_failing_receiver_gets_everything_in_order_with_stable_keys(
        world: World, receiver: Receiver) -> None:
    hooks = [hook("ops", receiver)]
    store = world.open(hooks)
    job_id = await new_job(store)
    await drive(store, job_id, LIFE)
    receiver.status = lambda r: 500 if len(receiver.requests) <= 5 else 200
    metrics = Metrics(hooks=["ops"])
    d = await world.dispatcher(hooks, metrics=metrics)
    await until("all deliveries", lambda: len(receiver.acked) == len(EVERY))
    # The receiver answers before the dispatcher records the delivery: wait for that too.
    await until("the last delivery recorded", lambda: d.stats["ops"].delivered == len(EVERY))

    assert [r.payload["to"] for r in receiver.acked] == EVERY
    first_key = receiver.acked[0].key
    tries = [r for r in receiver.requests if r.key == first_key]
    # The first event took the 5 failures (nothing later may overtake it), same key each time.
    assert len(tries) == 6
    assert [r.headers["X-Skyjobs-Attempt"] for r in tries] == ["1", "2", "3", "4", "5", "6"]
    assert all(verified(r) for r in tries)
    assert (d.stats["ops"].failed, d.stats["ops"].delivered) == (5, len(EVERY))
    assert d.stats["ops"].last_error == "HTTP 500: receiver says no"
    body, _ = metrics.render({}, await backlog(store), 0.0, 0.0)
    assert 'skyjobs_webhook_failures_total{hook="ops"} 5.0' in body.decode()
    assert f'skyjobs_webhook_deliveries_total{{hook="ops"}} {len(EVERY)}.0' in body.decode()
    assert "skyjobs_webhook_backlog 0.0" in body.decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_receiver_down_then_up(world: World) -> None:
    port = free_port()
    hooks = [hook("ops", f"http://127.0.0.1:{port}/hook")]
    store = world.open(hooks)
    job_id = await new_job(store)
    await drive(store, job_id, LIFE)
    d = await world.dispatcher(hooks)
    await until("refused connections", lambda: d.stats["ops"].failed >= 3)
    assert "Connect" in (d.stats["ops"].last_error or "")
    late = await Receiver().start(port)
    try:
        await until("all deliveries", lambda: len(late.acked) == len(EVERY))
        assert [r.payload["to"] for r in late.acked] == EVERY
        assert int(late.acked[0].headers["X-Skyjobs-Attempt"]) > 3
    finally:
        await late.stop()


async def test_a_slow_job_does_not_delay_other_jobs(world: World, receiver: Receiver) -> None:
    hooks = [hook("ops", receiver)]
    store = world.open(hooks)
    slow, fast = await new_job(store, "slow"), await new_job(store, "fast")
    for job_id in (slow, fast):
        await drive(store, job_id, LIFE)
    release = asyncio.Event()

    async def stall_slow_job(r: Received) -> None:
        if r.payload["job"]["id"] == slow:
            await release.wait()

    receiver.hold = stall_slow_job
    await world.dispatcher(hooks, timeout=60.0)
    await until("the fast job's events", lambda: len(receiver.acked_for(fast)) == len(EVERY))
    # ...all while the slow job's first event is still stuck at the receiver.
    assert [r.payload["job"]["id"] for r in receiver.requests].count(slow) == 1
    assert receiver.acked_for(slow) == []
    release.set()
    await until("the slow job's events", lambda: len(receiver.acked_for(slow)) == len(EVERY))
    assert [r.payload["to"] for r in receiver.acked_for(slow)] == EVERY


async def test_a_stuck_receiver_does_not_delay_another_hook(world: World,
                                                            receiver: Receiver) -> None:
    stuck = await Receiver().start()
    release = asyncio.Event()

    async def hang(r: Received) -> None:
        await release.wait()

    stuck.hold = hang
    try:
        hooks = [hook("stuck", stuck), hook("fast", receiver)]
        store = world.open(hooks)
        jobs = [await new_job(store, f"j{i}") for i in range(3)]
        for job_id in jobs:
            await drive(store, job_id, LIFE)
        await world.dispatcher(hooks, timeout=60.0)
        await until("every event at the fast hook",
                    lambda: len(receiver.acked) == len(jobs) * len(EVERY))
        # The stuck hook holds one request per job (order forbids more), none answered.
        await until("one stuck request per job", lambda: len(stuck.requests) == len(jobs))
        assert sorted(r.payload["job"]["id"] for r in stuck.requests) == jobs
        release.set()
        await until("the stuck hook catching up",
                    lambda: len(stuck.acked) == len(jobs) * len(EVERY))
        for job_id in jobs:
            assert [r.payload["to"] for r in stuck.acked_for(job_id)] == EVERY
    finally:
        release.set()
        await world.close()
        await stuck.stop()


async def test_pending_deliveries_survive_a_restart(world: World, receiver: Receiver) -> None:
    hooks = [hook("ops", receiver)]
    store = world.open(hooks)
    job_id = await new_job(store)
    await drive(store, job_id, LIFE)
    receiver.status = lambda r: 503
    first = await world.dispatcher(hooks)
    await until("failed attempts", lambda: first.stats["ops"].failed >= 2)
    await world.close()  # stops the dispatcher, closes the store: a controller restart

    receiver.status = lambda r: 200
    store = world.open(hooks)
    assert await backlog(store) == len(EVERY)
    await world.dispatcher(hooks)
    await until("all deliveries", lambda: len(receiver.acked) == len(EVERY))
    assert [r.payload["to"] for r in receiver.acked] == EVERY
    refused_key = receiver.requests[0].key
    assert receiver.acked[0].key == refused_key  # the same delivery, retried
    # The attempt count lives in the outbox, so it carried over the restart.
    assert int(receiver.acked[0].headers["X-Skyjobs-Attempt"]) >= 3
    await until("an empty outbox", lambda: store.sync.outbox_stats()["backlog"] == 0)


async def test_slack_format(world: World, receiver: Receiver) -> None:
    hooks = [hook("chat", receiver, format="slack", events=["recovering"])]
    store = world.open(hooks)
    job_id = await new_job(store, "llama<7b>")
    await drive(store, job_id, LIFE)
    await world.dispatcher(hooks)
    await until("the recovering event", lambda: len(receiver.acked) == 1)
    got = receiver.acked[0]
    assert verified(got)  # the Slack body itself is what is signed
    assert got.headers["X-Skyjobs-Event"] == "recovering"
    body = got.payload
    assert f"job {job_id} (llama&lt;7b&gt;) recovering: RUNNING \u2192 RECOVERING" in body["text"]
    assert body["blocks"][0]["text"]["text"] == body["text"]
    assert "schema" not in body
    await until("an empty outbox", lambda: store.sync.outbox_stats()["backlog"] == 0)
    assert len(receiver.requests) == 1  # only the event it asked for


async def test_send_test(world: World, receiver: Receiver) -> None:
    refusing = await Receiver().start()
    refusing.status = lambda r: 401
    try:
        hooks = [hook("ops", receiver), hook("bad", refusing)]
        store = world.open(hooks)
        d = WebhookDispatcher(store, hooks)  # works without start()
        reply = await d.send_test("ops")
        assert (reply["ok"], reply["status"], reply["error"]) == (True, 200, None)
        got = receiver.acked[0]
        assert verified(got)
        assert got.payload["event"] == "test" and got.key == reply["delivery"]
        reply = await d.send_test("bad")
        assert (reply["ok"], reply["status"]) == (False, 401)
        assert "401" in reply["error"]
        with pytest.raises(NotFoundError):
            await d.send_test("nope")
        assert await backlog(store) == 0  # tests bypass the outbox
    finally:
        await refusing.stop()


# --- the controller in-process -------------------------------------------------------------

TASK = {"resources": {"cloud": "local", "cpus": 2, "use_spot": True}, "run": "x"}


class Agents:
    """Plays the agents of a FakeProvider's instances through the controller's agent API."""

    def __init__(self, ctl: Controller, http: aiohttp.ClientSession) -> None:
        self.ctl, self.http = ctl, http

    async def call(self, method: str, path: str, body: Any, token: str) -> Any:
        async with self.http.request(method, f"{self.ctl.url}{path}", json=body,
                                     headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()

    async def event(self, attempt_id: int, body: dict[str, Any]) -> None:
        await self.call("POST", f"/agent/v1/attempts/{attempt_id}/events", {**body, "rank": 0},
                        self.ctl.sessions.agent_token(attempt_id))

    async def attempt(self, job_id: int, n: int) -> int:
        job = await until(f"attempt {n}",
                          lambda: (j := self.ctl.store.sync.get_job(job_id)).attempt_count == n
                          and j.current_attempt and j)
        return int(job.current_attempt)

    async def run(self, job_id: int, attempt_id: int) -> None:
        await self.event(attempt_id, {"kind": "phase", "phase": "ready"})
        await until("go", lambda: attempt_id in self.ctl.sessions.go)
        await self.event(attempt_id, {"kind": "phase", "phase": "running"})
        await until("RUNNING", lambda: self.ctl.store.sync.get_job(job_id).status == st.RUNNING)


async def test_a_controller_job_life_reaches_the_receiver(tmp_path: Path,
                                                          receiver: Receiver) -> None:
    hooks = [hook("ops", receiver, events=["recovering", "recovered", "succeeded"])]
    ctl = Controller(load_config(state_dir=tmp_path / "state", port=0, webhooks=hooks),
                     providers={"local": FakeProvider()})
    await ctl.start()
    # The controller runs its own dispatcher (a second one here delivered rows twice).
    assert ctl.services.webhooks is not None
    try:
        async with aiohttp.ClientSession() as http:
            agents = Agents(ctl, http)
            reply = await agents.call("POST", "/api/v1/jobs", {"task": TASK}, ctl.token)
            job_id = reply["id"]
            first = await agents.attempt(job_id, 1)
            await agents.run(job_id, first)
            notice = {"action": "terminate", "time": "2099-01-01T00:00:00Z"}
            await agents.event(first, {"kind": "notice", "notice": notice})
            await until("recovering delivered", lambda: len(receiver.acked) == 1)
            second = await agents.attempt(job_id, 2)
            await agents.event(first, {"kind": "exit", "exit_code": 143, "noticed": True})
            await agents.run(job_id, second)
            await agents.event(second, {"kind": "exit", "exit_code": 0})
            await until("three deliveries", lambda: len(receiver.acked) == 3)
    finally:
        await ctl.shutdown()
    events = [r.payload for r in receiver.acked]
    assert [e["event"] for e in events] == ["recovering", "recovered", "succeeded"]
    assert [e["to"] for e in events] == ["RECOVERING", "RUNNING", "SUCCEEDED"]
    assert all(e["job"]["id"] == job_id for e in events)
    assert events[0]["recovery_count"] == 1 and events[0]["placement"]
    assert events[2]["exit_code"] == 0 and events[2]["cost_so_far"] >= 0
    assert all(verified(r) for r in receiver.acked)


# --- the dispatcher's own crashes ----------------------------------------------------------

class Flaky:
    """Wraps one SyncStore method: counts calls and raises while ``broken``."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.broken = True
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.broken:
            raise sqlite3.OperationalError("disk I/O error")
        return self.real(*args, **kwargs)


class Log:
    """Stands in for the module's structlog logger and keeps what was logged."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        return lambda event, **kw: self.lines.append((level, event, kw))

    def events(self, level: str) -> list[dict[str, Any]]:
        return [kw for lvl, _, kw in self.lines if lvl == level]


def crashes(metrics: Metrics, site: str) -> float:
    value = metrics.registry.get_sample_value("skyjobs_webhook_dispatcher_crashes_total",
                                              {"site": site})
    return value or 0.0


CRASH = {"crash_backoff_initial": 0.02, "crash_backoff_max": 0.2}


def test_crash_delay_doubles_up_to_the_cap() -> None:
    d = WebhookDispatcher.__new__(WebhookDispatcher)
    d.crash_backoff_initial, d.crash_backoff_max = 0.5, 8.0
    assert [d.crash_delay(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 8, 8]
    assert d.crash_delay(10**6) == 8.0


async def test_a_store_failure_in_the_loop_backs_off_and_recovers(
        world: World, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    hooks = [hook("ops", receiver)]
    store = world.open(hooks)
    flaky = Flaky(store.sync.due_deliveries)
    monkeypatch.setattr(store.sync, "due_deliveries", flaky)
    logged = Log()
    monkeypatch.setattr(webhooks, "log", logged)
    metrics = Metrics(hooks=["ops"])
    assert crashes(metrics, "loop") == 0.0  # exported before anything happens
    d = await world.dispatcher(hooks, metrics=metrics, **CRASH)
    job = await new_job(store)
    # ~1.5 s of a broken store, with a wake-up every 5 ms as busy runners would send.
    # Pauses of 0.02, 0.04, ... 0.2 s make about 10 tries; a retry with no pause would make
    # thousands. A wake-up must not cut a pause short.
    for _ in range(300):
        d.wake()
        await asyncio.sleep(0.005)
    assert d.task is not None and not d.task.done(), "the loop must survive the crash"
    assert 3 <= flaky.calls <= 40, flaky.calls
    assert d.crash_streak == flaky.calls or d.crash_streak == flaky.calls - 1
    assert crashes(metrics, "loop") >= flaky.calls - 1
    errors = logged.events("error")
    assert len(errors) in (flaky.calls, flaky.calls - 1)  # one line per crash, no more
    assert all("disk I/O error" in e["error"] for e in errors)
    assert [e["exc_info"] for e in errors[:2]] == [True, False]  # one traceback per streak
    assert max(e["retry_in"] for e in errors) == 0.2  # the cap

    flaky.broken = False
    await until("the delivery after the store came back", lambda: receiver.acked_for(job))
    await until("a clean round", lambda: d.crash_streak == 0)
    assert any(event == "webhook dispatcher recovered" for _, event, _ in logged.lines)

    # A clean round starts the backoff over: the next crash pauses the initial 0.02 s.
    logged.lines.clear()
    flaky.broken = True
    await until("a new crash", lambda: logged.events("error"))
    assert logged.events("error")[0]["crashes"] == 1
    assert logged.events("error")[0]["retry_in"] == 0.02
    flaky.broken = False
    await drive(store, job, [st.PROVISIONING])
    await until("the next event", lambda: len(receiver.acked_for(job)) == 2)


async def test_a_delivery_whose_outcome_cannot_be_recorded_is_not_resent_in_a_loop(
        world: World, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    hooks = [hook("ops", receiver)]
    store = world.open(hooks)
    flaky = Flaky(store.sync.mark_delivered)
    monkeypatch.setattr(store.sync, "mark_delivered", flaky)
    monkeypatch.setattr(webhooks, "log", Log())
    metrics = Metrics(hooks=["ops"])
    d = await world.dispatcher(hooks, metrics=metrics, **CRASH)
    job = await new_job(store)
    for _ in range(300):  # ~1.5 s, as above
        d.wake()
        await asyncio.sleep(0.005)
    # The receiver acks every POST but the store cannot record it: the row is sent again,
    # after a growing pause (about 10 times here), never back to back.
    assert 2 <= len(receiver.requests) <= 40, len(receiver.requests)
    assert len({r.key for r in receiver.requests}) == 1  # the same delivery each time
    assert crashes(metrics, "delivery") >= len(receiver.requests) - 1
    assert d.task is not None and not d.task.done()
    flaky.broken = False
    await until("the outbox to drain", lambda: store.sync.outbox_stats()["backlog"] == 0)
    sent = len(receiver.requests)
    await drive(store, job, [st.PROVISIONING])
    await until("the next event", lambda: len(receiver.acked_for(job)) == sent + 1)
    assert [r.payload["to"] for r in receiver.acked_for(job)][-2:] == [st.PENDING,
                                                                       st.PROVISIONING]
