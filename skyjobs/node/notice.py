"""Watching the cloud's preemption notice from the node, as early as the cloud allows.

One thread (:class:`NoticeWatcher`) with a source per cloud, chosen by ``SKYJOBS_CLOUD``:

- ``aws`` (and ``local``, or unset): the IMDSv2 spot ``instance-action`` endpoint; 404 until a
  notice, then ``{"action": ..., "time": ...}`` about two minutes ahead. Polled every
  ``interval`` seconds, or long-polled (``?wait=``) when ``SKYJOBS_METADATA_LONG_POLL=1``,
  which the local provider's metadata service supports.
- ``gcp``: the GCE metadata server's ``instance/preempted``, ``FALSE`` until the VM is
  preempted, then ``TRUE`` about 30 s before it stops. Long-polled with
  ``wait_for_change``/``last_etag``, so the flip is seen at once without polling.

Stdlib only.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Protocol

LONG_POLL_SECONDS = 30
# GCE holds a wait_for_change request up to timeout_sec; the socket must outlast that hold,
# or every quiet minute would look like an error.
GCE_HOLD_SECONDS = 60
GCE_READ_TIMEOUT = GCE_HOLD_SECONDS + 10
# GCE gives no time with its notice; a Spot VM gets about 30 s between TRUE and the stop.
GCE_NOTICE_SECONDS = 30
DEFAULT_GCE_METADATA = "http://metadata.google.internal"

# A long-poll source re-asks at once after an answer, so errors (a metadata server that is
# restarting, refusing, answering 5xx) must slow it down instead of turning it into a spin.
ERROR_BACKOFF_INITIAL = 1.0
ERROR_BACKOFF_MAX = 10.0
# And a long-poll server that answers at once without holding (a real IMDS ignores ?wait)
# is asked at most this often.
LONG_POLL_MIN_SPACING = 0.5

# The metadata server is link-local: never send its requests through an HTTP proxy.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class NoticeSource(Protocol):
    long_poll: bool  # whether poll() holds until something changes

    def poll(self) -> dict[str, Any] | None:
        """The notice, or None while there is none; OSError/ValueError on failure."""


class ImdsNotice:
    """AWS IMDSv2 (and the local provider's metadata service, which speaks the same)."""

    def __init__(self, metadata_url: str, long_poll: bool) -> None:
        self.url = metadata_url.rstrip("/")
        self.long_poll = long_poll
        self._token: str | None = None

    def _token_header(self) -> dict[str, str]:
        if self._token is None:
            req = urllib.request.Request(f"{self.url}/latest/api/token", method="PUT")
            req.add_header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
            with _DIRECT.open(req, timeout=2) as resp:
                self._token = resp.read().decode()
        return {"X-aws-ec2-metadata-token": self._token}

    def poll(self) -> dict[str, Any] | None:
        # The local provider's metadata service can hold the request until a notice (like
        # GCE's wait_for_change); real IMDS is polled.
        query, timeout = (f"?wait={LONG_POLL_SECONDS}", LONG_POLL_SECONDS + 5) \
            if self.long_poll else ("", 2)
        req = urllib.request.Request(
            f"{self.url}/latest/meta-data/spot/instance-action{query}",
            headers=self._token_header())
        try:
            with _DIRECT.open(req, timeout=timeout) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 401:
                self._token = None  # the token expired: fetch a new one next time
            return None


class GceNotice:
    """GCE: ``instance/preempted``, long-polled until it says TRUE."""

    long_poll = True

    def __init__(self, metadata_url: str) -> None:
        self.url = metadata_url.rstrip("/")
        self._etag: str | None = None

    def poll(self) -> dict[str, Any] | None:
        # The first request reads the value as it is now (a VM may start watching after its
        # preemption began); later ones wait for a change from the ETag last seen, which
        # the server answers at once if the value changed in between.
        query: dict[str, str] = {}
        if self._etag is not None:
            query = {"wait_for_change": "true", "last_etag": self._etag,
                     "timeout_sec": str(GCE_HOLD_SECONDS)}
        url = f"{self.url}/computeMetadata/v1/instance/preempted"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        req = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
        try:
            with _DIRECT.open(req, timeout=GCE_READ_TIMEOUT) as resp:
                body = resp.read().decode(errors="replace").strip().upper()
                etag = resp.headers.get("ETag")
        except urllib.error.HTTPError as err:
            err.close()  # 403 (a proxy that drops Metadata-Flavor), 5xx: the caller backs off
            raise
        if body == "TRUE":
            deadline = time.gmtime(time.time() + GCE_NOTICE_SECONDS)
            return {"action": "terminate", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", deadline),
                    "cloud": "gcp"}
        if body != "FALSE":
            raise ValueError(f"instance/preempted answered {body[:40]!r}")
        # Without an ETag, waiting would have nothing to compare with: ask plainly again
        # (spaced by the watcher), which still never spins.
        self._etag = etag or None
        return None


def make_source(cloud: str, metadata_url: str) -> NoticeSource:
    if cloud == "gcp":
        return GceNotice(metadata_url)
    if cloud in ("", "aws", "local"):
        return ImdsNotice(metadata_url, os.environ.get("SKYJOBS_METADATA_LONG_POLL") == "1")
    raise ValueError(f"SKYJOBS_CLOUD={cloud!r}: no preemption notice source for this cloud")


class NoticeWatcher(threading.Thread):
    """Watches the cloud's preemption notice and calls ``on_notice(dict)`` once.

    ``cloud`` defaults to ``SKYJOBS_CLOUD`` from the environment (absent: the AWS format).
    """

    def __init__(self, metadata_url: str, interval: float, on_notice: Any,
                 cloud: str | None = None) -> None:
        super().__init__(daemon=True, name="notice")
        self.interval = interval
        self.on_notice = on_notice
        if cloud is None:
            cloud = os.environ.get("SKYJOBS_CLOUD", "")
        self.source = make_source(cloud.strip().lower(), metadata_url)
        self._stop_event = threading.Event()

    def stop(self) -> None:
        """Stop between requests (tests; the agent lets the daemon thread die with it)."""
        self._stop_event.set()

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when the watcher should go on."""
        return not self._stop_event.wait(seconds)

    def run(self) -> None:
        backoff = ERROR_BACKOFF_INITIAL
        while not self._stop_event.is_set():
            started = time.monotonic()
            try:
                notice = self.source.poll()
            except (OSError, ValueError):
                # Polling keeps its cadence (a slower one would see the notice later);
                # a long poll backs off, since it would otherwise re-ask at once.
                pause = backoff if self.source.long_poll else self.interval
                backoff = min(backoff * 2, ERROR_BACKOFF_MAX)
                if not self._sleep(pause):
                    return
                continue
            backoff = ERROR_BACKOFF_INITIAL
            if notice is not None:
                self.on_notice(notice)
                return
            if self.source.long_poll:
                pause = LONG_POLL_MIN_SPACING - (time.monotonic() - started)
            else:
                pause = self.interval
            if pause > 0 and not self._sleep(pause):
                return
