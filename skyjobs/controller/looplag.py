"""Event-loop lag: how late the loop runs what is due, sampled all the time.

Everything the controller does for its jobs (heartbeats, notices, runners) shares one event
loop, so work that holds the loop (a scan over every job, a big JSON document) delays all of
it at once. The monitor sleeps ``interval`` seconds and measures how much later than asked
it woke up: that delay is what any timer, reply or runner step would have waited at that
moment. A loop blocked for B seconds shows up as one sample between B - interval and B, so
the interval bounds how much of a block can go unseen (50 ms by default: 20 wake-ups a
second, a negligible cost).

Samples feed a Prometheus histogram (for rates and quantiles over any range) and a ring of
the last ``window`` seconds, from which the max and p99 gauges are computed at scrape time
(a scrape never resets them, so two scrapers see the same figures).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable

DEFAULT_INTERVAL = 0.05
DEFAULT_WINDOW = 60.0


class LoopLagMonitor:
    def __init__(self, interval: float = DEFAULT_INTERVAL, window: float = DEFAULT_WINDOW,
                 on_sample: Callable[[float], None] | None = None) -> None:
        if interval <= 0 or window < interval:
            raise ValueError("need 0 < interval <= window")
        self.interval = interval
        self.window = window
        self._sinks: list[Callable[[float], None]] = [on_sample] if on_sample else []
        # A fixed number of samples, not a time-stamped list: a loop that is so blocked it
        # takes fewer samples keeps them for longer, which only makes its max stickier.
        self._ring: deque[float] = deque(maxlen=max(1, math.ceil(window / interval)))
        self.samples = 0
        self.task: asyncio.Task[None] | None = None

    def add_sink(self, sink: Callable[[float], None]) -> None:
        """Also hand every sample to ``sink`` (a histogram's observe)."""
        self._sinks.append(sink)

    def start(self) -> asyncio.Task[None]:
        """Run as a named task (the daemon watches it: it never ends on its own)."""
        self.task = asyncio.create_task(self.run(), name="loop-lag")
        return self.task

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(self.interval)
            self.observe(max(0.0, loop.time() - asked - self.interval))

    def observe(self, lag: float) -> None:
        self._ring.append(lag)
        self.samples += 1
        for sink in self._sinks:
            sink(lag)

    # --- the trailing window --------------------------------------------------------------

    def max(self) -> float:
        return max(self._ring, default=0.0)

    def quantile(self, q: float) -> float:
        """The q-quantile (0..1) of the samples in the window, nearest rank."""
        if not self._ring:
            return 0.0
        ordered = sorted(self._ring)
        rank = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
        return ordered[rank]
