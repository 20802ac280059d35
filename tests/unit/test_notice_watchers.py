"""The node's preemption-notice watcher against small real metadata servers on 127.0.0.1.

GCE: ``instance/preempted`` long-polled with ``wait_for_change``; AWS: IMDSv2 polled (or
long-polled, as the local provider serves it). The servers are stdlib ``http.server`` in a
thread, strict about headers the way the real ones are.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from skyjobs.node import notice
from skyjobs.node.notice import GceNotice, ImdsNotice, NoticeWatcher, make_source


class MetadataServer:
    """A metadata server; ``answer`` decides each response. Holds requests on ``changed``."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.statuses: list[int] = []
        self.closing = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                with outer.lock:
                    outer.requests.append((self.command, self.path, dict(self.headers)))
                status, headers, body = outer.answer(self.command, self.path, self.headers)
                with outer.lock:
                    outer.statuses.append(status)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, method: str, path: str, headers: Any) -> tuple[int, dict[str, str], bytes]:
        raise NotImplementedError

    def wait(self, seconds: float) -> None:
        """Hold the calling request until something changes (or the server closes)."""
        with self.lock:
            if not self.closing:
                self.lock.wait(seconds)

    def notify(self) -> None:
        with self.lock:
            self.lock.notify_all()

    def count(self, path_part: str) -> int:
        with self.lock:
            return sum(path_part in p for _, p, _ in self.requests)

    def close(self) -> None:
        with self.lock:
            self.closing = True
            self.lock.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()


class GceMetadata(MetadataServer):
    """``instance/preempted`` as GCE serves it: FALSE/TRUE, an ETag per value, 403 without
    ``Metadata-Flavor: Google``, ``wait_for_change`` held until the value differs from
    ``last_etag`` or ``timeout_sec`` passes."""

    def __init__(self, max_hold: float = 60.0) -> None:
        super().__init__()
        self.preempted = False
        self.max_hold = max_hold
        self.fail_next = 0  # answer this many requests with 500
        self.always_forbidden = False

    def etag(self) -> str:
        return "etag-true" if self.preempted else "etag-false"

    def flip(self) -> None:
        with self.lock:
            self.preempted = True
            self.lock.notify_all()

    def answer(self, method: str, path: str, headers: Any) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(path)
        if url.path != "/computeMetadata/v1/instance/preempted":
            return 404, {}, b"not found"
        if headers.get("Metadata-Flavor") != "Google" or self.always_forbidden:
            return 403, {}, b"Missing Metadata-Flavor:Google header."
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return 500, {}, b"internal error"
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if query.get("wait_for_change") == "true":
            hold = min(float(query.get("timeout_sec", "300")), self.max_hold)
            deadline = time.monotonic() + hold
            with self.lock:
                while (query.get("last_etag") in (None, self.etag()) and not self.closing
                       and time.monotonic() < deadline):
                    self.lock.wait(deadline - time.monotonic())
        with self.lock:
            body = b"TRUE" if self.preempted else b"FALSE"
            return 200, {"ETag": self.etag(), "Metadata-Flavor": "Google"}, body


class Imds(MetadataServer):
    """IMDSv2: a token from PUT /latest/api/token, 401 without a valid one, 404 until a
    notice; ``?wait=`` held like the local provider's service."""

    def __init__(self) -> None:
        super().__init__()
        self.notice: dict[str, Any] | None = None
        self.tokens = 0
        self.valid_token = ""

    def expire_token(self) -> None:
        with self.lock:
            self.valid_token = "expired-for-good"

    def give(self, body: dict[str, Any]) -> None:
        with self.lock:
            self.notice = body
            self.lock.notify_all()

    def answer(self, method: str, path: str, headers: Any) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(path)
        if method == "PUT" and url.path == "/latest/api/token":
            with self.lock:
                self.tokens += 1
                self.valid_token = f"token-{self.tokens}"
                return 200, {}, self.valid_token.encode()
        if url.path != "/latest/meta-data/spot/instance-action":
            return 404, {}, b""
        with self.lock:
            if headers.get("X-aws-ec2-metadata-token") != self.valid_token:
                return 401, {}, b""
        wait = parse_qs(url.query).get("wait", ["0"])[0]
        if self.notice is None and float(wait) > 0:
            deadline = time.monotonic() + float(wait)
            with self.lock:
                while self.notice is None and not self.closing and time.monotonic() < deadline:
                    self.lock.wait(deadline - time.monotonic())
        with self.lock:
            if self.notice is None:
                return 404, {}, b""
            return 200, {}, json.dumps(self.notice).encode()


class Fired:
    def __init__(self) -> None:
        self.notices: list[dict[str, Any]] = []
        self.at: float | None = None
        self.event = threading.Event()

    def __call__(self, body: dict[str, Any]) -> None:
        self.notices.append(body)
        self.at = time.monotonic()
        self.event.set()


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notice, "ERROR_BACKOFF_INITIAL", 0.2)
    monkeypatch.setattr(notice, "ERROR_BACKOFF_MAX", 0.4)


@pytest.fixture
def gce() -> Iterator[GceMetadata]:
    server = GceMetadata()
    server.thread.start()
    yield server
    server.close()


@pytest.fixture
def imds() -> Iterator[Imds]:
    server = Imds()
    server.thread.start()
    yield server
    server.close()


def watch(url: str, cloud: str | None, interval: float = 0.05) -> tuple[NoticeWatcher, Fired]:
    fired = Fired()
    watcher = NoticeWatcher(url, interval, fired, cloud=cloud)
    watcher.start()
    return watcher, fired


def finish(watcher: NoticeWatcher, server: MetadataServer) -> None:
    watcher.stop()
    server.notify()  # release a held request so the thread sees the stop
    watcher.join(5)
    assert not watcher.is_alive()


# --- GCE ----------------------------------------------------------------------------------


def test_gce_fires_once_soon_after_the_flip_and_long_polls_meanwhile(gce: GceMetadata) -> None:
    watcher, fired = watch(gce.url, "gcp")
    time.sleep(1.5)  # quiet: the watcher must be waiting inside one held request
    assert not fired.event.is_set()
    waiting_requests = gce.count("/preempted")
    assert 1 <= waiting_requests <= 3, gce.requests
    flipped = time.monotonic()
    gce.flip()
    assert fired.event.wait(5), "the notice never fired"
    assert fired.at is not None and fired.at - flipped < 5.0
    watcher.join(5)
    assert not watcher.is_alive()  # fired once, then done
    assert len(fired.notices) == 1
    body = fired.notices[0]
    assert body["action"] == "terminate" and body["cloud"] == "gcp"
    deadline = datetime.strptime(body["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert 20 <= (deadline - datetime.now(UTC)).total_seconds() <= 40
    # Every request carried the header (none was refused) and the waits sent the ETag.
    assert 403 not in gce.statuses
    waits = [p for _, p, _ in gce.requests if "wait_for_change=true" in p]
    assert waits and all("last_etag=etag-false" in p for p in waits)
    assert all("timeout_sec=60" in p for p in waits)


def test_gce_already_preempted_at_start_fires_at_once(gce: GceMetadata) -> None:
    gce.flip()
    watcher, fired = watch(gce.url, "gcp")
    assert fired.event.wait(5)
    watcher.join(5)
    assert gce.count("/preempted") == 1


def test_gce_hold_running_out_reissues_with_the_etag(gce: GceMetadata) -> None:
    gce.max_hold = 0.2  # the server's timeout_sec runs out quickly: FALSE, same ETag
    watcher, fired = watch(gce.url, "gcp")
    time.sleep(1.2)
    # Re-asked after each hold, no faster than the hold (or the minimum spacing).
    assert 2 <= gce.count("/preempted") <= 8
    gce.flip()
    assert fired.event.wait(5)
    watcher.join(5)
    assert len(fired.notices) == 1


def test_gce_refused_without_the_header_backs_off_and_never_fires(
        gce: GceMetadata, fast_backoff: None) -> None:
    gce.always_forbidden = True  # e.g. a proxy that strips Metadata-Flavor
    watcher, fired = watch(gce.url, "gcp")
    time.sleep(1.5)
    assert not fired.event.is_set()
    # 0.2, 0.4, 0.4 ... s apart: a handful, not a spin.
    assert 2 <= gce.count("/preempted") <= 6, len(gce.requests)
    assert set(gce.statuses) == {403}
    finish(watcher, gce)


def test_gce_server_errors_back_off_then_the_notice_still_arrives(
        gce: GceMetadata, fast_backoff: None) -> None:
    gce.fail_next = 3
    watcher, fired = watch(gce.url, "gcp")
    time.sleep(1.5)  # 0.2 + 0.4 + 0.4 of back-off, then a held request
    assert not fired.event.is_set()
    assert gce.statuses.count(500) == 3
    assert gce.count("/preempted") <= 6
    gce.flip()
    assert fired.event.wait(5)
    watcher.join(5)
    assert len(fired.notices) == 1


def test_gce_nothing_listening_backs_off(fast_backoff: None) -> None:
    server = GceMetadata()  # bound but never serving: connections hang until timeout
    url = server.url
    server.httpd.server_close()  # now refused
    watcher, fired = watch(url, "gcp")
    time.sleep(0.8)
    assert not fired.event.is_set()
    watcher.stop()
    watcher.join(5)
    assert not watcher.is_alive()


# --- AWS ----------------------------------------------------------------------------------


def test_aws_polls_instance_action_and_fires_with_its_body(imds: Imds) -> None:
    watcher, fired = watch(imds.url, "aws", interval=0.05)
    time.sleep(0.3)
    assert not fired.event.is_set()
    imds.give({"action": "terminate", "time": "2030-01-01T00:00:00Z"})
    assert fired.event.wait(5)
    watcher.join(5)
    assert fired.notices == [{"action": "terminate", "time": "2030-01-01T00:00:00Z"}]
    assert imds.tokens == 1  # one token for all the polls


def test_aws_refreshes_the_token_after_a_401(imds: Imds) -> None:
    watcher, fired = watch(imds.url, None, interval=0.05)  # unset: the AWS format
    deadline = time.monotonic() + 5
    while imds.tokens < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    imds.expire_token()
    while imds.tokens < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert imds.tokens == 2 and 401 in imds.statuses
    imds.give({"action": "stop", "time": "2030-01-01T00:00:00Z"})
    assert fired.event.wait(5)
    watcher.join(5)
    assert fired.notices[0]["action"] == "stop"


def test_aws_long_poll_mode_holds_requests(imds: Imds, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYJOBS_METADATA_LONG_POLL", "1")
    watcher, fired = watch(imds.url, "local", interval=5.0)
    time.sleep(1.0)
    assert imds.count("instance-action") == 1
    assert all("wait=30" in p for _, p, _ in imds.requests if "instance-action" in p)
    flipped = time.monotonic()
    imds.give({"action": "terminate", "time": "2030-01-01T00:00:00Z"})
    assert fired.event.wait(5)
    assert fired.at is not None and fired.at - flipped < 5.0
    watcher.join(5)


# --- choosing the source -------------------------------------------------------------------


def test_the_cloud_comes_from_skyjobs_cloud(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SKYJOBS_CLOUD", raising=False)
    assert isinstance(NoticeWatcher("http://x", 1, print).source, ImdsNotice)
    monkeypatch.setenv("SKYJOBS_CLOUD", "gcp")
    assert isinstance(NoticeWatcher("http://x", 1, print).source, GceNotice)
    monkeypatch.setenv("SKYJOBS_CLOUD", "aws")
    assert isinstance(NoticeWatcher("http://x", 1, print).source, ImdsNotice)
    assert isinstance(make_source("local", "http://x"), ImdsNotice)
    assert isinstance(NoticeWatcher("http://x", 1, print, cloud="GCP").source, GceNotice)
    with pytest.raises(ValueError, match="azure"):
        make_source("azure", "http://x")
