"""How a node's agent talks to the controller: its own attempt's agent API, over HTTP(S).

Stdlib only: it runs on every node, before anything else is installed.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import ssl
import threading
import time
import urllib.error
import urllib.parse
from typing import Any

REPORT_RETRY_SECONDS = 3600.0  # how long an exit report is retried while the controller is away


class ControllerClient:
    """HTTP to the controller over one kept-alive connection per thread (thousands of agents
    reconnecting for every heartbeat would cost the controller more than the requests)."""

    def __init__(self, url: str, attempt_id: str, token: str, rank: int) -> None:
        parts = urllib.parse.urlsplit(url)
        self.https = parts.scheme == "https"
        self.netloc = parts.netloc
        self.base = f"{parts.path.rstrip('/')}/agent/v1/attempts/{attempt_id}"
        self.token = token
        self.rank = rank
        self._local = threading.local()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self.https:
                ctx = ssl.create_default_context(cafile=os.environ.get("SKYJOBS_CA_FILE"))
                conn = http.client.HTTPSConnection(self.netloc, timeout=timeout, context=ctx)
            else:
                conn = http.client.HTTPConnection(self.netloc, timeout=timeout)
            self._local.conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def request(self, method: str, path: str, body: bytes | None = None,
                ctype: str = "application/json", timeout: float = 10.0) -> bytes:
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            headers["Content-Type"] = ctype
        for retry in (False, True):
            conn = self._connection(timeout)
            try:
                conn.request(method, f"{self.base}{path}", body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.HTTPException, OSError):
                self._drop()
                if retry:
                    raise
                continue  # a kept-alive connection the server had closed: reconnect once
            if resp.status >= 400:
                raise urllib.error.HTTPError(f"{self.netloc}{path}", resp.status, resp.reason,
                                             resp.headers, io.BytesIO(data))
            return data
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, payload: Any = None, timeout: float = 10.0) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        return json.loads(self.request(method, path, body, timeout=timeout) or b"null")

    def retrying(self, fn: Any, budget: float, what: str) -> Any:
        """Retry transient failures (controller down, 5xx) with backoff; 4xx is final."""
        deadline, delay = time.monotonic() + budget, 0.2
        while True:
            try:
                return fn()
            except urllib.error.HTTPError as err:
                if 400 <= err.code < 500:
                    raise
                problem = f"HTTP {err.code}"
            except (OSError, ValueError, http.client.HTTPException) as err:
                problem = str(err)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: gave up: {problem}")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def report(self, event: dict[str, Any], budget: float = REPORT_RETRY_SECONDS) -> Any:
        event = {**event, "rank": self.rank}
        return self.retrying(lambda: self.call("POST", "/events", event), budget,
                             f"report {event.get('kind')}")
