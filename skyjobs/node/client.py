"""How a node's agent talks to the controllers: its own attempt's agent API, over HTTP(S).

Several controllers may share one database (high availability); any of them serves any
agent. The agent knows their base URLs (``SKYJOBS_CONTROLLER_URLS``, owner first, or the
single ``SKYJOBS_CONTROLLER_URL``; every heartbeat answer refreshes the list) and fails over
between them: see :meth:`ControllerClient.request`.

Stdlib only: it runs on every node, before anything else is installed.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import ssl
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

REPORT_RETRY_SECONDS = 3600.0  # how long an exit report is retried while the controller is away
URLS_VAR = "SKYJOBS_CONTROLLER_URLS"  # comma separated, owner first
URL_VAR = "SKYJOBS_CONTROLLER_URL"  # one controller: what launches carried before HA
# Answers that say "not this controller, not now": a controller that is stopping, or a load
# balancer with no backend. Any other status is the controller's answer, for the caller.
ROTATE_STATUSES = frozenset({502, 503, 504})
# The host and port of a controller URL, lowercased: a DNS name or an IPv4 address, or a
# bracketed IPv6 address (which urlsplit itself checks).
_NETLOC = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?)(:[0-9]*)?")


def controller_url(text: str) -> str:
    """``text`` as a clean controller base URL: http or https, a host, an optional port and
    path prefix, trailing slashes dropped. ValueError for anything else (credentials, query,
    fragment, spaces, control or non-ASCII characters), which no request could carry."""
    url = text.strip()
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError unless a number in range
    except ValueError as err:
        raise ValueError(f"{url!r} is not a controller URL: {err}") from None
    if (parts.scheme not in ("http", "https") or port == 0
            or not _NETLOC.fullmatch(parts.netloc.lower())
            or not (url.isascii() and url.isprintable()) or any(c in url for c in " @?#")):
        raise ValueError(f"{url!r} is not an http(s) controller URL")
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + ("" if port is None else f":{port}")
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def parse_controller_urls(text: str) -> list[str]:
    """A comma-separated list of controller URLs, owner first, each made clean by
    :func:`controller_url`; blank entries are skipped and repeats dropped. ValueError for
    the first bad entry, or when there is no URL at all."""
    urls = _unique(controller_url(entry) for entry in text.split(",") if entry.strip())
    if not urls:
        raise ValueError("no controller URL")
    return urls


def controller_urls(env: Mapping[str, str]) -> list[str]:
    """The controllers an agent starts with: ``SKYJOBS_CONTROLLER_URLS`` when set and not
    blank, else ``SKYJOBS_CONTROLLER_URL``. KeyError (for the latter) when neither is set;
    ValueError, naming the variable, when it holds anything but http(s) URLs."""
    many = env.get(URLS_VAR, "")
    try:
        return parse_controller_urls(many) if many.strip() else [controller_url(env[URL_VAR])]
    except ValueError as err:
        raise ValueError(f"{URLS_VAR if many.strip() else URL_VAR}: {err}") from None


def _unique(urls: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(urls))


class ControllerClient:
    """HTTP to the controllers over one kept-alive connection per thread (thousands of agents
    reconnecting for every heartbeat would cost a controller more than the requests).

    ``urls``: the controllers' base URLs, owner first, or one URL as a string."""

    def __init__(self, urls: str | Sequence[str], attempt_id: str, token: str,
                 rank: int) -> None:
        self._urls = _unique(controller_url(u) for u in ([urls] if isinstance(urls, str)
                                                         else urls))
        if not self._urls:
            raise ValueError("no controller URL")
        self._current = self._urls[0]
        self._lock = threading.Lock()  # guards _urls and _current, shared by the threads
        self.path = f"/agent/v1/attempts/{attempt_id}"
        self.token = token
        self.rank = rank
        self._local = threading.local()

    @property
    def controllers(self) -> list[str]:
        with self._lock:
            return list(self._urls)

    @property
    def current(self) -> str:
        """The controller that answered last: where the next request goes first."""
        with self._lock:
            return self._current

    def set_controllers(self, urls: Sequence[str], move_to_first: bool = False) -> None:
        """Replace the list (a heartbeat answer carries the live controllers, owner first).
        Entries that are not http(s) URLs are skipped; a list without any valid one leaves
        the current list alone, so a bad answer cannot strand the agent. The current
        controller stays current while listed (any controller serves the agent, and moving
        would cost each thread a new connection), unless ``move_to_first``: the answer
        was a redirect to the job's owner."""
        clean = _unique(u for u in map(_valid_url, urls) if u)
        if not clean:
            return
        with self._lock:
            self._urls = clean
            if self._current not in clean or move_to_first:
                self._current = clean[0]

    def _connection(self, url: str, timeout: float) -> http.client.HTTPConnection:
        if getattr(self._local, "url", None) != url:
            self._drop()  # this thread is connected to another controller (or to none)
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme == "https":
                ctx = ssl.create_default_context(cafile=os.environ.get("SKYJOBS_CA_FILE"))
                conn = http.client.HTTPSConnection(parts.netloc, timeout=timeout, context=ctx)
            else:
                conn = http.client.HTTPConnection(parts.netloc, timeout=timeout)
            self._local.conn, self._local.url = conn, url
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def close(self) -> None:
        """Close the calling thread's connection (each thread that made requests has one)."""
        self._drop()

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = self._local.url = None

    def request(self, method: str, path: str, body: bytes | None = None,
                ctype: str = "application/json", timeout: float = 10.0) -> bytes:
        """One pass over the controllers, starting with the one that answered last: a
        connection error, a timeout or a 502/503/504 moves on to the next; the first other
        answer ends the pass and makes its controller the current one. A status >= 400 is
        raised as HTTPError; when every controller failed, the last failure is raised."""
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            headers["Content-Type"] = ctype
        failure: Exception = AssertionError("no controller")  # replaced: the list is never empty
        for url in self._order():
            try:
                resp, data = self._exchange(url, method, path, body, headers, timeout)
            except (http.client.HTTPException, OSError) as err:
                failure = err
                continue
            if resp.status in ROTATE_STATUSES:
                failure = _http_error(url, path, resp, data)
                continue
            self._stick(url)
            if resp.status >= 400:
                raise _http_error(url, path, resp, data)
            return data
        raise failure

    def _order(self) -> list[str]:
        with self._lock:
            urls, i = self._urls, self._urls.index(self._current)
        return urls[i:] + urls[:i]

    def _stick(self, url: str) -> None:
        with self._lock:
            if url in self._urls:  # not if the list was replaced meanwhile without it
                self._current = url

    def _exchange(self, url: str, method: str, path: str, body: bytes | None,
                  headers: dict[str, str], timeout: float
                  ) -> tuple[http.client.HTTPResponse, bytes]:
        """One request to one controller, on this thread's connection to it."""
        conn = self._connection(url, timeout)
        target = f"{urllib.parse.urlsplit(url).path}{self.path}{path}"
        if conn.sock is not None:
            try:
                return _send(conn, method, target, body, headers)
            except TimeoutError:
                self._drop()  # a controller that hangs: waiting again here is no better
                raise
            except (http.client.HTTPException, OSError):
                # A kept-alive connection the server had closed: reconnect once. A fresh
                # connection that fails is the controller's failure, not the connection's.
                self._drop()
                conn = self._connection(url, timeout)
        try:
            return _send(conn, method, target, body, headers)
        except (http.client.HTTPException, OSError):
            self._drop()
            raise

    def call(self, method: str, path: str, payload: Any = None, timeout: float = 10.0) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        return json.loads(self.request(method, path, body, timeout=timeout) or b"null")

    def retrying(self, fn: Any, budget: float, what: str) -> Any:
        """Retry transient failures (controllers down, 5xx) with backoff; 4xx is final.
        A call of ``fn`` is one pass over all the controllers (see :meth:`request`), so
        the budget and the backoff count passes, whatever the number of controllers."""
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


def _valid_url(url: object) -> str | None:
    try:
        return controller_url(url) if isinstance(url, str) else None
    except ValueError:
        return None


def _send(conn: http.client.HTTPConnection, method: str, target: str, body: bytes | None,
          headers: dict[str, str]) -> tuple[http.client.HTTPResponse, bytes]:
    conn.request(method, target, body=body, headers=headers)
    resp = conn.getresponse()
    return resp, resp.read()


def _http_error(url: str, path: str, resp: http.client.HTTPResponse,
                data: bytes) -> urllib.error.HTTPError:
    return urllib.error.HTTPError(f"{urllib.parse.urlsplit(url).netloc}{path}", resp.status,
                                  resp.reason, resp.headers, io.BytesIO(data))
