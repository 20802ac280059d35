"""Watching the cloud's preemption notice from the node, as early as the cloud allows.

The IMDSv2 spot ``instance-action`` endpoint (AWS; the local provider serves the same
format): 404 until a notice, then ``{"action": ..., "time": ...}`` about two minutes ahead.
Stdlib only.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from typing import Any

LONG_POLL_SECONDS = 30


class NoticeWatcher(threading.Thread):
    """Polls the IMDSv2-style spot instance-action endpoint and fires once."""

    def __init__(self, metadata_url: str, interval: float, on_notice: Any) -> None:
        super().__init__(daemon=True, name="notice")
        self.url = metadata_url.rstrip("/")
        self.interval = interval
        self.on_notice = on_notice
        self.long_poll = os.environ.get("SKYJOBS_METADATA_LONG_POLL") == "1"
        self._token: str | None = None

    def _token_header(self) -> dict[str, str]:
        if self._token is None:
            req = urllib.request.Request(f"{self.url}/latest/api/token", method="PUT")
            req.add_header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
            with urllib.request.urlopen(req, timeout=2) as resp:
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
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as err:
            if err.code == 401:
                self._token = None  # the token expired: fetch a new one next time
            return None

    def run(self) -> None:
        while True:
            try:
                notice = self.poll()
            except (OSError, ValueError):
                notice = None
            if notice is not None:
                self.on_notice(notice)
                return
            if not self.long_poll:
                time.sleep(self.interval)
