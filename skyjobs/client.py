"""``skyjobs.Client``: the blocking Python client of the controller API (the CLI's too).

Typed: jobs, attempts, events and plans come back as the pydantic models of
:mod:`skyjobs.models`; every failure is a skyjobs exception (:class:`ApiError` and its
subclasses for an HTTP error, e.g. ``ApiNotFoundError`` (also a ``NotFoundError``) for an
unknown job; :class:`ControllerUnavailableError` when the controller cannot be reached or
does not answer like one), never an ``http.client`` or ``urllib`` internal.

The standard library moves the bytes (urllib), so the CLI starts fast; the async twin is
:class:`skyjobs.aio.AsyncClient`. Both take their requests from :mod:`skyjobs.sdk`.

Finding the controller (:func:`discover`): an explicit URL (token from ``SKYJOBS_TOKEN``
or the state dir), else ``SKYJOBS_CONTROLLER``, else the controller running on the state
dir (``SKYJOBS_STATE_DIR``, default ``~/.skyjobs``: its ``controller.json`` and ``token``).
An https controller is verified against ``SKYJOBS_CA_FILE`` (or ``ca_file=``) when given.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, overload

from skyjobs import models as m
from skyjobs import sdk
from skyjobs.config import default_state_dir
from skyjobs.exceptions import ApiError, ControllerUnavailableError, api_error

AUTOSTART_WAIT = 30.0
R = TypeVar("R")


def discover(state_dir: Path | None = None, url: str | None = None) -> tuple[str, str]:
    """(URL, token) of the controller to talk to; ControllerUnavailableError if none."""
    state_dir = _state_dir(state_dir)
    url = url or os.environ.get("SKYJOBS_CONTROLLER") or None
    if url:
        token = os.environ.get("SKYJOBS_TOKEN")
        if token is None:
            try:
                token = (state_dir / "token").read_text().strip()
            except OSError:
                raise ControllerUnavailableError(
                    "no token: set SKYJOBS_TOKEN (the controller's <state-dir>/token)") from None
        return url, token
    found = _local(state_dir)
    if found is None:
        raise ControllerUnavailableError(
            f"no controller is running on {state_dir} (start one with `skyjobs controller`, "
            "or submit a job to start one in the background)")
    return found


def endpoint(url: str | None, token: str | None, state_dir: Path | str | None,
             ca_file: str | None) -> tuple[str, str, str | None]:
    """(url, token, CA file) a client talks to: what it was given, the rest found as the CLI
    finds it (:func:`discover`); the sync and async clients share this."""
    if url is None or token is None:
        found_url, found_token = discover(_state_dir(state_dir), url)
        url, token = url or found_url, token if token is not None else found_token
    return url.rstrip("/"), token, ca_file or os.environ.get("SKYJOBS_CA_FILE") or None


def _state_dir(state_dir: Path | str | None) -> Path:
    if state_dir is None:
        env = os.environ.get("SKYJOBS_STATE_DIR")
        state_dir = Path(env) if env else default_state_dir()
    return Path(state_dir).expanduser()


def _local(state_dir: Path) -> tuple[str, str] | None:
    try:
        info = json.loads((state_dir / "controller.json").read_text())
        token = (state_dir / "token").read_text().strip()
        return str(info["url"]), token
    except (OSError, ValueError, KeyError, TypeError):
        return None


def error_text(status: int, raw: bytes) -> str:
    """The controller's one-line ``error``, or a line naming the status."""
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        return f"controller answered HTTP {status}"


class Client:
    """A blocking client of one controller.

    ``Client()`` finds the controller as the CLI does (see :func:`discover`);
    ``Client(url, token)`` talks to the given one. Jobs are given as ids or as the
    :class:`~skyjobs.models.Job` objects the client returned.
    """

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0,
                 *, state_dir: Path | str | None = None, ca_file: str | None = None) -> None:
        self.url, self.token, self.ca_file = endpoint(url, token, state_dir, ca_file)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    @classmethod
    def connect(cls, state_dir: Path | str | None = None, url: str | None = None,
                autostart: bool = False) -> Client:
        """The controller on state_dir (or at url), checked to answer; with autostart, a
        controller is started on state_dir when none runs (as ``skyjobs submit`` does)."""
        return connect(_state_dir(state_dir), url, autostart)

    # --- transport -------------------------------------------------------------------------

    def _send(self, method: str, path: str, query: Mapping[str, Any] | None = None,
              body: Any = None) -> Any:
        """One request; the reply's JSON. The only place this client touches HTTP."""
        url = f"{self.url}{path}"
        items = sdk.query_items(query)
        if items:
            url += "?" + urllib.parse.urlencode(items)
        data = None if body is None else json.dumps(body).encode()
        try:
            req = urllib.request.Request(url, data=data, method=method)
        except ValueError as err:  # not an http(s) URL
            raise ControllerUnavailableError(f"bad controller URL {self.url!r}: {err}") from None
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file) \
                if url.startswith("https:") else None
            with urllib.request.urlopen(req, timeout=self.timeout, context=ctx) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            try:
                text = error_text(err.code, err.read())
            except (OSError, http.client.HTTPException):
                text = f"controller answered HTTP {err.code}"
            raise api_error(err.code, text) from None
        except (OSError, http.client.HTTPException, ValueError) as err:
            # URLError, refused, reset, timeouts, a garbled HTTP answer, a bad header value,
            # an unreadable CA file.
            reason = getattr(err, "reason", err)
            raise ControllerUnavailableError(
                f"cannot reach the controller at {self.url}: {reason}") from None
        try:
            return json.loads(raw or b"null")
        except ValueError:
            raise ControllerUnavailableError(
                f"{self.url} did not answer like a skyjobs controller (not JSON)") from None

    def _call(self, call: sdk.Call[R]) -> R:
        reply = self._send(call.method, call.path, call.query, call.body)
        try:
            return call.parse(reply)
        except (ValueError, KeyError, TypeError) as err:  # pydantic's ValidationError too
            raise ControllerUnavailableError(
                f"{self.url} answered {call.method} {call.path} with an unexpected reply: "
                f"{' '.join(str(err).split())[:200]}") from None

    # --- raw JSON (scripts and tests; typed methods below are the API) ---------------------

    @overload
    def get(self, job: sdk.JobRef) -> m.Job: ...

    @overload
    def get(self, job: str, **query: Any) -> Any: ...

    def get(self, job: sdk.JobRef | str, **query: Any) -> Any:
        """The job (an id or a Job) as a :class:`~skyjobs.models.Job`, with its attempts.

        Given a path instead (a string starting with ``/``), the raw JSON of ``GET path``:
        the escape hatch for scripts, e.g. ``client.get("/api/v1/jobs", limit=5)``."""
        if isinstance(job, str):
            if not job.startswith("/"):
                raise TypeError("a job is its id (int) or a Job; a string is an API path")
            return self._send("GET", job, query or None)
        return self._call(sdk.call_get(job))

    def post(self, path: str, body: Any) -> Any:
        """The raw JSON reply of ``POST path`` with a JSON body (the escape hatch)."""
        return self._send("POST", path, None, body)

    # --- jobs ----------------------------------------------------------------------------------

    def submit(self, task_or_path: sdk.TaskLike, name: str | None = None,
               env: Mapping[str, str] | None = None, *, num_jobs: int = 1) -> m.Job:
        """Submit a :class:`~skyjobs.sdk.Task`, a task mapping, or a task YAML file (a
        file of several tasks is a pipeline). ``env`` overrides the task's envs (a name the
        task declares a secret stays secret). The workdir and local file mounts are packed
        and sent along. Returns the job (the first one of a job array: ``num_jobs`` > 1)."""
        pipeline, source = sdk.load(task_or_path)
        reply = self.submit_body(sdk.submission(pipeline, source, name, env, num_jobs))
        return self.get(reply.id)

    def submit_body(self, body: dict[str, Any]) -> m.Submitted:
        """Send a prepared ``POST /api/v1/jobs`` body (:func:`skyjobs.sdk.submission`)."""
        return self._call(sdk.call_submit(body))

    def queue(self, status: str | Iterable[str] | None = None, name: str | None = None,
              limit: int | None = None, offset: int | None = None,
              array: int | None = None) -> list[m.Job]:
        """Jobs, newest first; ``status``: a state or several (e.g. ``["RUNNING",
        "RECOVERING"]``), ``name``: only jobs of that name, ``array``: one job array."""
        return self._call(sdk.call_queue(status, name, limit, offset, array))

    def events(self, job: sdk.JobRef, after: int = 0) -> list[m.Event]:
        """The job's transitions and notes, oldest first (``after``: only newer event ids)."""
        return self._call(sdk.call_events(job, after))

    def log_chunks(self, job: sdk.JobRef, attempt: int | None = None, follow: bool = False,
                   rank: int = 0,
                   on_idle: Callable[[], None] | None = None) -> Iterator[m.LogChunk]:
        """The log as the controller sends it: chunks, each saying its attempt. With
        ``follow``, waits for more until the job ends; ``on_idle`` runs at each wait."""
        cursor = sdk.LogCursor(sdk.job_id(job), attempt, rank, follow)
        while True:
            chunk = self._call(cursor.call())
            step = cursor.advance(chunk)
            if step == "data":
                yield chunk
            elif step == "done":
                return
            elif step == "wait":
                if on_idle is not None:
                    on_idle()
                time.sleep(sdk.LOG_POLL_S)

    def logs(self, job: sdk.JobRef, attempt: int | None = None, follow: bool = False,
             rank: int = 0) -> Iterator[str]:
        """The job's log text of node ``rank``: one attempt, or every attempt in order
        (``attempt=None``); with ``follow``, until the job ends."""
        return (c.data for c in self.log_chunks(job, attempt, follow, rank))

    def cancel(self, jobs: sdk.JobRef | Iterable[sdk.JobRef] | None = None, *,
               name: str | None = None, array: int | None = None,
               all: bool = False) -> m.CancelReply:
        """Cancel jobs (ids or Jobs), or the unfinished jobs of a name or an array, or
        all of them; ``skipped`` says why a job was not (already ended, unknown)."""
        return self._call(sdk.call_cancel(jobs, name=name, array=array, all=all))

    def wait(self, job: sdk.JobRef, timeout: float | None = None,
             poll: float = sdk.WAIT_POLL_S) -> m.Job:
        """Block until the job ends; the job as it ended. TimeoutError after ``timeout``
        seconds (the job keeps running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self.get(sdk.job_id(job))
            if current.done:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {current.id} is still {current.status} after "
                                   f"{timeout:g}s")
            left = poll if deadline is None else max(0.0, min(poll,
                                                              deadline - time.monotonic()))
            time.sleep(left)

    def plan(self, task_or_path: sdk.TaskLike) -> m.Plan:
        """Where the task would run: every offering ranked (``candidates``) and the one the
        controller would launch first (``pick``). Launches nothing."""
        return self.plan_body(sdk.plan_body(task_or_path))

    def plan_body(self, body: dict[str, Any]) -> m.Plan:
        return self._call(sdk.call_plan(body))

    def preempt(self, job: sdk.JobRef, notice: float = 120.0) -> m.Preempted:
        """Preempt the job's instances (simulated markets: the local provider)."""
        return self._call(sdk.call_preempt(job, notice))

    # --- the controller ------------------------------------------------------------------------

    def health(self) -> m.Health:
        return self._call(sdk.call_health())

    def controllers(self) -> m.Controllers:
        """The controllers sharing the store (one, on SQLite) and what each runs."""
        return self._call(sdk.call_controllers())

    def healthy(self) -> bool:
        try:
            self._send("GET", "/api/v1/health")
            return True
        except (ControllerUnavailableError, ApiError):
            return False

    def clouds(self) -> m.Clouds:
        return self._call(sdk.call_clouds())

    def prices(self, accelerator: str | None = None, cloud: str | None = None) -> m.Prices:
        return self._call(sdk.call_prices(accelerator, cloud))

    def set_capacity(self, zone: str, spot: bool) -> m.CapacityReply:
        """Give a local zone spot capacity, or take it away (simulated market)."""
        return self._call(sdk.call_capacity(zone, spot))

    def test_webhook(self, name: str) -> m.WebhookTestReply:
        return self._call(sdk.call_webhook_test(name))

    def gc(self, older_than_days: float | None = None, dry_run: bool = False) -> m.GcReply:
        """Run the retention sweep now (see docs/operations.md, Retention)."""
        return self._call(sdk.call_gc(older_than_days, dry_run))


def wait_until(what: str, check: Callable[[], Any], limit_s: float,
               interval: float = 0.25) -> Any:
    """Poll check() until it returns something truthy; TimeoutError naming `what` after
    limit_s (for scripts driving a controller: the demo and the benchmarks)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {limit_s:.0f}s waiting for {what}")


def local_client(state_dir: Path) -> Client | None:
    """The client for the controller running on state_dir, if one has started there."""
    found = _local(state_dir)
    return None if found is None else Client(*found)


def connect(state_dir: Path, url: str | None, autostart: bool = False) -> Client:
    """Find the controller: an explicit URL (token from SKYJOBS_TOKEN or the state dir),
    else the one running on state_dir, else (with autostart) start one there."""
    if url:
        return Client(*discover(state_dir, url))
    client = local_client(state_dir)
    if client is not None and client.healthy():
        return client
    if not autostart:
        raise ControllerUnavailableError(
            f"no controller is running on {state_dir} (start one with `skyjobs controller`, "
            "or submit a job to start one in the background)")
    (state_dir / "controller.json").unlink(missing_ok=True)
    start_local_controller(state_dir)
    deadline = time.monotonic() + AUTOSTART_WAIT
    while time.monotonic() < deadline:
        client = local_client(state_dir)
        if client is not None and client.healthy():
            return client
        time.sleep(0.2)
    raise ControllerUnavailableError(
        f"started a controller on {state_dir} but it did not come up; see "
        f"{state_dir / 'controller.log'}")


def start_local_controller(state_dir: Path) -> None:
    """Start a controller for state_dir in the background, logging to controller.log."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log = open(state_dir / "controller.log", "ab")  # noqa: SIM115 - handed to the child
    env = {**os.environ, "SKYJOBS_LOG_FORMAT": os.environ.get("SKYJOBS_LOG_FORMAT", "json")}
    port = os.environ.get("SKYJOBS_PORT", "0")
    subprocess.Popen([sys.executable, "-m", "skyjobs", "--state-dir", str(state_dir),
                      "controller", "--port", port], stdout=log, stderr=log,
                     stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    log.close()
