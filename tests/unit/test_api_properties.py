"""Property: every HTTP endpoint answers any body, id, query and header with a 4xx or its
success code, never a 5xx, and a rejected request changes nothing.

One controller per test (fake provider, tmp state dir) runs in the test's event loop;
hypothesis drives many requests against it from a worker thread with a blocking client, so
each example can send bytes no well-behaved client library would.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.parse
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from skyjobs.config import load_config
from skyjobs.controller.daemon import Controller
from skyjobs.providers.fake import FakeProvider
from tests.unit.harness import TASK, Harness, until

T = TypeVar("T")
SETTINGS = settings(max_examples=150, deadline=None, derandomize=False,
                    suppress_health_check=list(HealthCheck))

USER = [("GET", "/api/v1/health"), ("POST", "/api/v1/jobs"), ("GET", "/api/v1/jobs"),
        ("GET", "/api/v1/jobs/{job}"), ("GET", "/api/v1/jobs/{job}/events"),
        ("GET", "/api/v1/jobs/{job}/logs"), ("POST", "/api/v1/jobs/{job}/preempt"),
        ("POST", "/api/v1/cancel"), ("POST", "/api/v1/plan"), ("GET", "/api/v1/prices"),
        ("POST", "/api/v1/local/capacity"), ("POST", "/api/v1/webhooks/test"),
        ("GET", "/metrics")]
AGENT = [("GET", "/agent/v1/attempts/{attempt}/task"),
         ("GET", "/agent/v1/attempts/{attempt}/archive"),
         ("POST", "/agent/v1/attempts/{attempt}/heartbeat"),
         ("POST", "/agent/v1/attempts/{attempt}/events"),
         ("POST", "/agent/v1/attempts/{attempt}/logs")]
SUCCESS = {"/api/v1/jobs": {"POST": 201}}

scalars = (hs.none() | hs.booleans() | hs.integers() | hs.floats() | hs.text(max_size=20)
           | hs.sampled_from([10**20, -(10**20), 2**63, 2**63 - 1, 0, -1, 1, "", "\x00",
                              "\ud800", "V100:inf", "local-a", "local", "ready", "exit"]))
json_like = hs.recursive(
    scalars, lambda inner: hs.lists(inner, max_size=4)
    | hs.dictionaries(hs.text(max_size=8) | hs.sampled_from(["rank", "kind", "ids", "task"]),
                      inner, max_size=4), max_leaves=20)
ints_text = hs.sampled_from(["1", "2", "0", "-1", "²", "١", "1_0", " 1", "+1", "9" * 25,
                             str(2**63), str(2**63 - 1), "1e3", "", "%00", "null"])
id_text = ints_text | hs.text(max_size=12)


def _enc(text: str) -> str:
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="")


class Live:
    """The controller in this test's loop; blocking helpers for hypothesis's thread."""

    def __init__(self, h: Harness, loop: asyncio.AbstractEventLoop) -> None:
        self.h, self.loop = h, loop
        self.dirty = True  # a request was accepted: runners may still be acting on it
        url = urllib.parse.urlsplit(h.ctl.url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, Any] | None = None) -> int:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    async def _snapshot(self) -> Any:
        ctl = self.h.ctl

        def tables(sync: Any) -> Any:
            return {t: [tuple(r) for r in sync.conn.execute(f"SELECT * FROM {t} ORDER BY 1")]
                    for t in ("jobs", "events", "attempts", "nodes", "zone_events")}

        rows = await ctl.store.call(tables, ctl.store.sync)
        logs = sorted((str(p), p.stat().st_size)
                      for p in (ctl.state_dir / "logs").rglob("*") if p.is_file())
        return rows, logs, sorted(ctl.sessions.last_seen), sorted(ctl.sessions.go)

    def snapshot(self) -> Any:
        return self.run(self._snapshot())

    def settle(self) -> Any:
        """Wait until the runners have acted on the last accepted request."""
        last, same = self.snapshot(), 0
        if not self.dirty:
            return last
        self.dirty = False
        for _ in range(100):
            self.run(asyncio.sleep(0.03))
            now = self.snapshot()
            same = same + 1 if now == last else 0
            if same >= 3:
                return now
            last = now
        return last

    def check(self, method: str, path: str, body: bytes | None = None,
              headers: dict[str, Any] | None = None) -> int:
        before = self.settle()
        status = self.request(method, path, body, headers)
        assert status < 500, (method, path, body, headers, status)
        if status >= 400:
            assert self.snapshot() == before, (method, path, body, status)
        else:
            self.dirty = self.dirty or method == "POST"
            expected = SUCCESS.get(path.split("?")[0], {}).get(method, 200)
            assert status == expected, (method, path, body, status)
        return status


@pytest.fixture
async def live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Live]:
    for name in ("PROVISION_TIMEOUT", "SILENT_WINDOW", "HEARTBEAT_TIMEOUT"):
        monkeypatch.setenv(f"SKYJOBS_{name}", "3600")
    monkeypatch.setenv("SKYJOBS_LAUNCH_BACKOFF_INITIAL", "0.05")
    monkeypatch.setenv("SKYJOBS_LAUNCH_BACKOFF_MAX", "0.1")
    fake = FakeProvider()
    ctl = Controller(load_config(state_dir=tmp_path / "state", port=0), providers={"local": fake})
    await ctl.start()
    async with aiohttp.ClientSession() as http_session:
        h = Harness(ctl, fake, http_session)
        # A job waiting for its agent (an attempt to speak for) and a cancelled one.
        for _ in range(2):
            status, body = await h.api("POST", "/api/v1/jobs", {"task": TASK})
            assert status == 201, body
        await h.wait_status(1, "PROVISIONING")
        await h.wait_status(2, "PROVISIONING")
        await h.api("POST", "/api/v1/cancel", {"ids": [2]})
        await h.wait_status(2, "CANCELLED")
        await until("attempt", lambda: h.ctl.store.sync.get_job(1).current_attempt)
        yield Live(h, asyncio.get_running_loop())
    await ctl.shutdown()


def _attempt(live: Live) -> int:
    attempt = live.h.ctl.store.sync.get_job(1).current_attempt
    assert attempt is not None
    return attempt


async def _in_thread(fn: Callable[[], None]) -> None:
    await asyncio.to_thread(fn)


bodies = (hs.binary(max_size=64) | json_like.map(lambda v: json.dumps(v).encode())
          | hs.sampled_from([b"[" * 100_000 + b"]" * 100_000, b'{"a": NaN}',
                             b'{"ids": [' + b"9" * 5000 + b"]}", b"\xff\xfe", b"{}"]))


async def test_any_body_on_every_post(live: Live) -> None:
    aid = _attempt(live)

    @SETTINGS
    @given(route=hs.sampled_from([r for r in USER + AGENT if r[0] == "POST"]), body=bodies)
    def prop(route: tuple[str, str], body: bytes) -> None:
        method, template = route
        path = template.format(job=1, attempt=aid)
        token = live.h.ctl.sessions.agent_token(aid) if "/agent/" in path else live.h.ctl.token
        if path.endswith("/logs"):
            path += "?rank=0&offset=0"
        live.check(method, path, body, {"Authorization": f"Bearer {token}",
                                        "Content-Type": "application/json"})

    await _in_thread(prop)


async def test_any_id_query_and_header_on_every_endpoint(live: Live) -> None:
    aid = _attempt(live)

    @SETTINGS
    @given(route=hs.sampled_from(USER + AGENT), ident=id_text | hs.just("{valid}"),
           query=hs.dictionaries(hs.sampled_from(["offset", "limit", "after", "attempt",
                                                  "rank", "status", "name", "accelerator",
                                                  "cloud", "x"]), id_text, max_size=4),
           auth=hs.sampled_from(["valid", "none", "empty", "garbage", "other-attempt",
                                 "binary"]),
           extra=hs.dictionaries(hs.sampled_from(["Content-Type", "Accept", "X-Forwarded-For",
                                                  "Content-Encoding"]),
                                 hs.binary(max_size=20).map(
                                     lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
                                 max_size=2))
    def prop(route: tuple[str, str], ident: str, query: dict[str, str], auth: str,
             extra: dict[str, bytes]) -> None:
        method, template = route
        agent = "/agent/" in template
        valid = str(aid if agent else 1)
        ident = valid if ident == "{valid}" else ident
        path = template.format(job=_enc(ident), attempt=_enc(ident))
        if query:
            path += "?" + "&".join(f"{_enc(k)}={_enc(v)}" for k, v in query.items())
        sessions = live.h.ctl.sessions
        token = {"valid": sessions.agent_token(int(valid)) if agent else live.h.ctl.token,
                 "none": None, "empty": "", "garbage": "x" * 43,
                 "other-attempt": sessions.agent_token(aid + 1)}.get(auth)
        headers: dict[str, Any] = dict(extra)
        if auth == "binary":
            headers["Authorization"] = b"Bearer \xff\xfe"
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        body = b'{"rank": 0}' if method == "POST" else None
        live.check(method, path, body, headers)

    await _in_thread(prop)


submit_tasks = hs.fixed_dictionaries({}, optional={
    "run": hs.text(max_size=10) | scalars, "setup": scalars, "name": scalars,
    "num_nodes": hs.integers() | scalars, "envs": json_like, "secrets": json_like,
    "workdir": scalars, "file_mounts": json_like,
    "resources": hs.fixed_dictionaries({"cloud": hs.just("local")}, optional={
        "cpus": scalars, "memory": scalars, "accelerators": json_like, "zone": scalars,
        "use_spot": scalars, "job_recovery": json_like, "any_of": json_like,
        "infra": scalars})})


async def test_structured_user_bodies(live: Live) -> None:
    @SETTINGS
    @given(endpoint=hs.sampled_from(["/api/v1/jobs", "/api/v1/plan", "/api/v1/cancel",
                                     "/api/v1/local/capacity", "/api/v1/jobs/1/preempt",
                                     "/api/v1/webhooks/test"]),
           task=submit_tasks, extra=hs.dictionaries(
               hs.sampled_from(["envs", "name", "source", "archive", "ids", "all", "zone",
                                "spot", "notice"]), json_like, max_size=3))
    def prop(endpoint: str, task: dict[str, Any], extra: dict[str, Any]) -> None:
        body = json.dumps({"task": task, **extra}).encode()
        live.check("POST", endpoint, body, {"Authorization": f"Bearer {live.h.ctl.token}"})

    await _in_thread(prop)


async def test_structured_agent_bodies(live: Live) -> None:
    aid = _attempt(live)
    events = hs.fixed_dictionaries({}, optional={
        "kind": hs.sampled_from(["phase", "exit", "notice", "bogus"]) | scalars,
        "rank": hs.sampled_from([0, 1, -1, 10**20]) | scalars,
        "phase": hs.sampled_from(["setup", "ready", "running"]) | scalars,
        "exit_code": hs.integers() | scalars, "noticed": scalars,
        "notice": json_like | hs.fixed_dictionaries({"time": hs.text(max_size=30),
                                                     "action": scalars}),
        "seen_at": scalars, "wait_go": hs.sampled_from([0, 0.01, -1, 10**400]) | scalars})

    @SETTINGS
    @given(what=hs.sampled_from(["events", "heartbeat"]), event=events)
    def prop(what: str, event: dict[str, Any]) -> None:
        if what == "heartbeat" and isinstance(event.get("wait_go"), int | float):
            event["wait_go"] = min(event["wait_go"], 0.01)  # keep each example short
        # Only rejected events here: an accepted exit or notice ends the attempt for good.
        if event.get("kind") in ("exit", "notice") and event.get("rank") == 0:
            event["rank"] = 1
        live.check("POST", f"/agent/v1/attempts/{aid}/{what}", json.dumps(event).encode(),
                   {"Authorization": f"Bearer {live.h.ctl.sessions.agent_token(aid)}"})

    await _in_thread(prop)
