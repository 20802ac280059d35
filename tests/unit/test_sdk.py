"""The Python SDK against an in-process controller (fake provider; tests play the agents).

The blocking client runs in a worker thread (the controller is on the test's loop).
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

import skyjobs
from skyjobs import models, spec
from skyjobs.cli import _LiveStatus
from skyjobs.exceptions import (
    ApiError,
    ApiNotFoundError,
    BadRequestError,
    ConflictError,
    ControllerUnavailableError,
    NotFoundError,
    ProviderError,
    SpecError,
    UnauthorizedError,
)
from tests.conftest import FAST_ENV, ROOT, ControllerProc
from tests.unit.harness import Harness

T = TypeVar("T")
TASK = skyjobs.Task("sdk-job", run="x").set_resources(
    skyjobs.Resources(cloud="local", cpus=2, use_spot=True))


async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


def client(h: Harness, **kw: Any) -> skyjobs.Client:
    return skyjobs.Client(h.ctl.url, h.ctl.token, **kw)


async def test_submit_get_queue_events_cancel_are_typed(h: Harness) -> None:
    c = client(h)
    job = await blocking(c.submit, TASK, name="typed", env={"A": "1"})
    assert isinstance(job, skyjobs.Job) and job.name == "typed"
    assert job.status in ("PENDING", "PROVISIONING")
    assert job.task is not None and job.task["envs"] == {"A": "1"}
    aid = await h.run_to_running(job.id)
    got = await blocking(c.get, job)
    assert got.status == "RUNNING" and not got.done
    attempt = got.attempt_list[0]
    assert isinstance(attempt, skyjobs.Attempt) and attempt.placement.startswith("local/")
    assert [j.id for j in await blocking(c.queue, status=["running"], name="typed")] == [job.id]
    assert await blocking(c.queue, status="SUCCEEDED") == []
    events = await blocking(c.events, job.id)
    assert all(isinstance(e, skyjobs.Event) for e in events)
    assert [e.to_status for e in events][:3] == ["PENDING", "PROVISIONING", "RUNNING"]
    assert await blocking(c.events, job, after=events[-1].id) == []
    reply = await blocking(c.cancel, [job, 10**6])
    assert reply.cancelled == [job.id] and reply.skipped[0].id == 10**6
    assert aid


async def test_wait_returns_the_ended_job_or_times_out(h: Harness) -> None:
    c = client(h)
    job = await blocking(c.submit, TASK)
    aid = await h.run_to_running(job.id)
    with pytest.raises(TimeoutError, match="still RUNNING"):
        await blocking(c.wait, job, timeout=0.3, poll=0.1)
    waiter = asyncio.create_task(blocking(c.wait, job.id, timeout=30, poll=0.1))
    await h.agent(aid, {"kind": "exit", "exit_code": 0, "rank": 0})
    ended = await waiter
    assert ended.succeeded and ended.done and ended.exit_code == 0


async def test_logs_iterate_every_attempt_and_follow_to_the_end(h: Harness) -> None:
    c = client(h)
    job = await blocking(c.submit, TASK)
    aid = await h.run_to_running(job.id)
    await h.write_log(job.id, "héllo\n".encode())
    assert "".join(await blocking(lambda: list(c.logs(job)))) == "héllo\n"
    chunks: list[str] = []

    def follow() -> None:
        for text in c.logs(job.id, attempt=1, follow=True):
            chunks.append(text)

    follower = asyncio.create_task(blocking(follow))
    await asyncio.sleep(0.3)
    await h.write_log(job.id, "wörld\n".encode())
    await h.agent(aid, {"kind": "exit", "exit_code": 0, "rank": 0})
    await asyncio.wait_for(follower, 30)
    assert "".join(chunks) == "héllo\nwörld\n"


async def test_plan_ranks_placements(h: Harness) -> None:
    plan = await blocking(client(h).plan, TASK)
    assert isinstance(plan, skyjobs.Plan) and plan.pick is not None
    assert isinstance(plan.candidates[0], skyjobs.Placement)
    assert plan.pick.label().startswith("local/") and plan.pick.enabled is None


async def test_errors_are_skyjobs_exceptions(h: Harness, tmp_path: Path) -> None:
    c = client(h)
    with pytest.raises(ApiNotFoundError) as missing:
        await blocking(c.get, 4242)
    assert isinstance(missing.value, NotFoundError) and missing.value.status == 404
    with pytest.raises(SpecError, match="count must be"):  # refused here, nothing sent
        await blocking(c.submit, {"run": "x", "resources": {"accelerators": "V100:inf"}})
    with pytest.raises(BadRequestError, match="aws"):  # refused by the controller
        await blocking(c.submit, {"run": "x", "resources": {"cloud": "aws"}})
    with pytest.raises(UnauthorizedError):
        await blocking(skyjobs.Client(h.ctl.url, "wrong").queue)
    with pytest.raises(ControllerUnavailableError, match="cannot reach"):
        await blocking(skyjobs.Client("http://127.0.0.1:9", "t", timeout=2).queue)
    with pytest.raises(ControllerUnavailableError, match="no controller is running"):
        skyjobs.Client(state_dir=tmp_path / "none")
    with pytest.raises(TypeError):
        await blocking(c.get, "12")  # a string is an API path, not a job


def test_a_server_that_is_not_a_controller_is_unavailable() -> None:
    class NotJson(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = b"<html>hi</html>" if self.path.startswith("/html") else b'{"jobs": 5}'
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), NotJson)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(ControllerUnavailableError, match="unexpected reply"):
            skyjobs.Client(url, "t").queue()
        with pytest.raises(ControllerUnavailableError, match="not JSON"):
            skyjobs.Client(f"{url}/html", "t").queue()
    finally:
        server.shutdown()
        server.server_close()


def test_client_finds_the_controller_as_the_cli_does(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "controller.json").write_text(json.dumps({"url": "http://127.0.0.1:1/"}))
    (tmp_path / "token").write_text("tok\n")
    found = skyjobs.Client(state_dir=tmp_path)
    assert (found.url, found.token) == ("http://127.0.0.1:1", "tok")
    monkeypatch.setenv("SKYJOBS_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("SKYJOBS_CONTROLLER", "https://ctl.example:8765")
    monkeypatch.setenv("SKYJOBS_TOKEN", "from-env")
    monkeypatch.setenv("SKYJOBS_CA_FILE", "/etc/ca.pem")
    env = skyjobs.AsyncClient()
    assert (env.url, env.token, env.ca_file) == ("https://ctl.example:8765", "from-env",
                                                 "/etc/ca.pem")


async def test_async_client_mirrors_the_blocking_one(h: Harness) -> None:
    async with skyjobs.AsyncClient(h.ctl.url, h.ctl.token) as c:
        assert (await c.health()).ok
        job = await c.submit(TASK, env={"A": "2"})
        aid = await h.run_to_running(job.id)
        assert (await c.get(job)).status == "RUNNING"
        assert [j.id for j in await c.queue(status="RUNNING")] == [job.id]
        await h.write_log(job.id, b"line\n")
        waiting = asyncio.create_task(c.wait(job, timeout=30, poll=0.1))
        await h.agent(aid, {"kind": "exit", "exit_code": 3, "rank": 0})
        ended = await waiting
        assert ended.status == "FAILED" and ended.exit_code == 3
        assert [t async for t in c.logs(job, follow=True)] == ["line\n"]
        assert (await c.events(job))[-1].to_status == "FAILED"
        assert (await c.plan(TASK)).pick is not None
        with pytest.raises(ApiNotFoundError):
            await c.get(4242)
        with pytest.raises(ApiError, match="give exactly one"):
            await c._send("POST", "/api/v1/cancel", body={})
    async with skyjobs.AsyncClient("http://127.0.0.1:9", "t", timeout=2) as down:
        with pytest.raises(ControllerUnavailableError):
            await down.queue()
        assert not await down.healthy()


def test_import_skyjobs_loads_only_the_standard_library() -> None:
    # The node agent's zipapp ships skyjobs/__init__.py: the SDK must load on first use only.
    code = ("import sys, skyjobs; bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pydantic', 'aiohttp', 'yaml', 'click') or m.startswith('skyjobs.')); "
            "print(bad); assert not bad; assert skyjobs.Client.__module__ == 'skyjobs.client'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
    assert set(skyjobs.__all__) <= set(dir(skyjobs))
    with pytest.raises(AttributeError):
        _ = skyjobs.NoSuchThing


def test_the_models_limits_are_the_specs() -> None:
    assert (models.MAX_NAME_CHARS, models.MAX_NODES) == (spec.MAX_NAME_CHARS, spec.MAX_NODES)
    from skyjobs.states import ALL_STATES, TERMINAL

    assert set(models.JOB_STATES) == ALL_STATES and models.TERMINAL_STATES == TERMINAL


def test_the_follow_status_line_says_state_placement_recoveries_and_cost() -> None:
    job = models.Job(id=7, name="n", status="RECOVERING", placement="local/local-a/x/spot",
                     recoveries=1, submitted_at=0, duration_s=3723, cost=0.5, saving=1.25)
    line = _LiveStatus.line(None, job)  # type: ignore[arg-type]
    assert line == ("job 7 | RECOVERING | local/local-a/x/spot | 1 recovery | $0.5000 so far"
                    " | saving $1.2500 | 1h02m03s")


def _follow(state: Path, task: Path, tty: bool) -> tuple[int, str]:
    """``skyjobs submit --follow`` as a person at a terminal runs it (a pty for stdout and
    stderr), or as a script does (pipes); (exit code, everything it wrote)."""
    cmd = [sys.executable, "-m", "skyjobs", "--state-dir", str(state), "submit", str(task),
           "--follow"]
    env = {**os.environ, **FAST_ENV, "COLUMNS": "200"}
    if not tty:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120,
                              cwd=ROOT)
        return done.returncode, done.stdout + done.stderr
    main, child = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=child, stderr=child,
                            env=env, cwd=ROOT)
    os.close(child)
    out = b""
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        out += data
    os.close(main)
    return proc.wait(timeout=60), out.decode(errors="replace")


def test_submit_follow_keeps_a_live_status_line_on_a_terminal_only(
        controller: Callable[..., ControllerProc], tmp_path: Path) -> None:
    ctl = controller()
    task = tmp_path / "count.yaml"
    task.write_text("name: count\nresources: {cloud: local, cpus: 2, use_spot: true}\n"
                    "run: for i in 1 2 3 4; do echo line $i; sleep 1; done\n")
    code, out = _follow(ctl.state_dir, task, tty=True)
    assert code == 0, out
    assert "line 4" in out and "\x1b[K" in out
    assert re.search(r"job 1 \| RUNNING \| local/\S+/spot \| 0 recoveries \| \$[0-9.]+ so far",
                     out), out
    code, out = _follow(ctl.state_dir, task, tty=False)
    assert code == 0 and "line 4" in out and "\x1b" not in out and " | RUNNING | " not in out


async def test_preempting_an_instance_already_going_is_a_conflict(h: Harness) -> None:
    # Found by schemathesis: a second preempt while the first is under way was a 502.
    c = client(h)
    job = await blocking(c.submit, TASK)
    await h.run_to_running(job.id)

    async def gone(instance_ids: list[str], notice_s: float) -> None:
        raise ProviderError(f"instance {instance_ids[0]} is not running")

    h.fake.preempt = gone  # type: ignore[method-assign]
    h.fake.set_spot_capacity = lambda zone, ok: []  # type: ignore[attr-defined]  # a market
    with pytest.raises(ConflictError, match="cannot be preempted now") as refused:
        await blocking(c.preempt, job, notice=1)
    assert refused.value.status == 409
    assert (await blocking(c.get, job)).status == "RUNNING"
