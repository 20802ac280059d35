"""Shared fixtures: a real controller process on a temporary state directory."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from skyjobs.client import Client, local_client
from skyjobs.providers.local_instance import kill_session, read_json, session_members
from tests import pg

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
# Google's credential lookup would otherwise probe a GCE metadata server off loopback.
os.environ.setdefault("NO_GCE_CHECK", "True")

FAST_ENV = {
    "SKYJOBS_INSTANCE_POLL_INTERVAL": "0.5",
    "SKYJOBS_NOTICE_POLL_INTERVAL": "0.2",
    "SKYJOBS_HEARTBEAT_INTERVAL": "0.5",
    "SKYJOBS_HEARTBEAT_TIMEOUT": "3",
    "SKYJOBS_SILENT_WINDOW": "4",
    "SKYJOBS_LAUNCH_BACKOFF_INITIAL": "0.5",
    "SKYJOBS_LAUNCH_BACKOFF_MAX": "1",
    "SKYJOBS_MAX_LAUNCH_ROUNDS": "3",
    "SKYJOBS_PROVISION_TIMEOUT": "60",
    "SKYJOBS_COPY_SYNC_INTERVAL": "1",
    "SKYJOBS_LOG_FORMAT": "json",
}


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30.0,
             interval: float = 0.1) -> T:
    """Poll until check() is truthy; fail the test with `what` after timeout (bounded)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class ControllerProc:
    """A controller daemon in its own process, as systemd or `skyjobs submit` would run it."""

    def __init__(self, state_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.env = {**os.environ, **FAST_ENV, **(extra_env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: Client | None = None

    def start(self) -> ControllerProc:
        (self.state_dir / "controller.json").unlink(missing_ok=True)
        log = open(self.state_dir.parent / f"{self.state_dir.name}-controller.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "skyjobs", "--state-dir", str(self.state_dir), "controller",
             "--port", "0"], env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        self._client = wait_for("controller to come up", self._try_client, timeout=30)
        return self

    def _try_client(self) -> Client | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"controller exited with {self.proc.returncode}: {self.log_tail()}")
        client = local_client(self.state_dir)
        return client if client is not None and client.healthy() else None

    def log_tail(self) -> str:
        path = self.state_dir.parent / f"{self.state_dir.name}-controller.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    @property
    def client(self) -> Client:
        assert self._client is not None
        return self._client

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read of this controller's store (SQLite file or PostgreSQL), from
        outside the process, as an operator would look; ``?`` placeholders."""
        url = self.env.get("SKYJOBS_DATABASE_URL")
        if url:
            with psycopg.connect(url, autocommit=True) as conn:
                return [tuple(r) for r in conn.execute(sql.replace("?", "%s"), params)]
        db = sqlite3.connect(f"file:{self.state_dir / 'skyjobs.db'}?mode=ro", uri=True)
        try:
            return [tuple(r) for r in db.execute(sql, params)]
        finally:
            db.close()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)

    # --- convenience ---------------------------------------------------------------------

    def submit(self, task: dict[str, Any], **extra: Any) -> int:
        return int(self.client.post("/api/v1/jobs", {"task": task, **extra})["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        return dict(self.client.get(f"/api/v1/jobs/{job_id}"))

    def wait_status(self, job_id: int, *statuses: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(f"job {job_id} to reach {statuses}",
                        lambda: (j := self.job(job_id))["status"] in statuses and j,
                        timeout=timeout)

    def events(self, job_id: int) -> list[dict[str, Any]]:
        return list(self.client.get(f"/api/v1/jobs/{job_id}/events")["events"])

    def logs(self, job_id: int, attempt: int, rank: int = 0) -> str:
        return str(self.client.get(f"/api/v1/jobs/{job_id}/logs", attempt=attempt,
                                   rank=rank)["data"])

    def instances(self) -> dict[str, dict[str, Any]]:
        root = self.state_dir / "local-cloud" / "instances"
        if not root.exists():
            return {}
        return {p.name: read_json(p / "instance.json") or {} for p in sorted(root.iterdir())}

    def running_instances(self) -> list[str]:
        """Instances whose processes are really alive, whatever the files say."""
        alive = []
        for name, state in self.instances().items():
            sid = state.get("sid")
            if isinstance(sid, int) and session_members(sid):
                alive.append(name)
        return alive

    def cleanup(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.client.post("/api/v1/cancel", {"all": True})
                wait_for("jobs to be cancelled", lambda: not self.client.get(
                    "/api/v1/jobs", status="CANCELLING")["jobs"], timeout=20)
        except Exception:  # noqa: BLE001 - best effort; the kill below is the safety net
            pass
        self.stop()
        for state in self.instances().values():
            if isinstance(state.get("sid"), int):
                kill_session(state["sid"])


@pytest.fixture(params=["sqlite", "postgres"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    """What a store opens, once per database: a SQLite file, or a PostgreSQL URL naming a
    fresh schema on the real server (dropped after the test)."""
    if request.param == "sqlite":
        yield tmp_path / "store.db"
        return
    with pg.fresh_schema() as url:
        yield url


@pytest.fixture
def database_env(store_target: Path | str) -> dict[str, str]:
    """The environment that points a controller process at ``store_target``."""
    return {"SKYJOBS_DATABASE_URL": store_target} if isinstance(store_target, str) else {}


@pytest.fixture
def controller(tmp_path: Path,
               database_env: dict[str, str]) -> Iterator[Callable[..., ControllerProc]]:
    """Factory: controller(**env) starts a controller process (on SQLite and on
    PostgreSQL: the fixture runs each test on both); all are cleaned up."""
    made: list[ControllerProc] = []

    def start(**env: str) -> ControllerProc:
        c = ControllerProc(tmp_path / "state",
                           {**database_env, **{k.upper(): v for k, v in env.items()}})
        made.append(c)
        return c.start()

    yield start
    for c in made:
        c.cleanup()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if pg.SKIPPED:
        terminalreporter.write_line(pg.HOW_TO_ENABLE.format(url=pg.base_url()))


def task(run: str, **fields: Any) -> dict[str, Any]:
    """A small local task dict."""
    base: dict[str, Any] = {"name": "t", "resources": {"cloud": "local", "cpus": 2,
                                                       "use_spot": True}, "run": run}
    base.update(fields)
    return base


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
