"""A small synchronous HTTP client for the controller API (used by the CLI and scripts)."""

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skyjobs.exceptions import ApiError, ControllerUnavailableError

AUTOSTART_WAIT = 30.0


class Client:
    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None,
                 query: dict[str, Any] | None = None) -> Any:
        url = f"{self.url}{path}"
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = None if body is None else json.dumps(body).encode()
        try:
            req = urllib.request.Request(url, data=data, method=method)
        except ValueError as err:  # not an http(s) URL
            raise ControllerUnavailableError(f"bad controller URL {self.url!r}: {err}") from None
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        ctx = ssl.create_default_context(cafile=os.environ.get("SKYJOBS_CA_FILE")) \
            if url.startswith("https:") else None
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=ctx) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raise ApiError(err.code, _error_text(err)) from None
        except (OSError, http.client.HTTPException, ValueError) as err:
            # URLError, refused, reset, timeouts, a garbled HTTP answer, a bad header value.
            reason = getattr(err, "reason", err)
            raise ControllerUnavailableError(
                f"cannot reach the controller at {self.url}: {reason}") from None
        try:
            return json.loads(raw or b"null")
        except ValueError:
            raise ControllerUnavailableError(
                f"{self.url} did not answer like a skyjobs controller (not JSON)") from None

    def get(self, path: str, **query: Any) -> Any:
        return self._request("GET", path, query=query or None)

    def post(self, path: str, body: Any) -> Any:
        return self._request("POST", path, body)

    def healthy(self) -> bool:
        try:
            self.get("/api/v1/health")
            return True
        except (ControllerUnavailableError, ApiError):
            return False


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


def _error_text(err: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(err.read())["error"])
    except (ValueError, KeyError, TypeError, OSError):
        return f"controller answered HTTP {err.code}"


def local_client(state_dir: Path) -> Client | None:
    """The client for the controller running on state_dir, if one has started there."""
    try:
        info = json.loads((state_dir / "controller.json").read_text())
        token = (state_dir / "token").read_text().strip()
    except (OSError, ValueError):
        return None
    return Client(str(info["url"]), token)


def connect(state_dir: Path, url: str | None, autostart: bool = False) -> Client:
    """Find the controller: an explicit URL (token from SKYJOBS_TOKEN or the state dir),
    else the one running on state_dir, else (with autostart) start one there."""
    if url:
        token = os.environ.get("SKYJOBS_TOKEN")
        if token is None:
            try:
                token = (state_dir / "token").read_text().strip()
            except OSError:
                raise ControllerUnavailableError(
                    "no token: set SKYJOBS_TOKEN (the controller's <state-dir>/token)") from None
        return Client(url, token)
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
