"""The garbage collector and a heap of thousands of live jobs.

CPython's cyclic collector walks every tracked object on a full (generation 2) collection,
and runs one whenever the objects that survived the young collections grew by a quarter
since the last. With 10,000 live jobs (their runners, launch facts, sessions, connections)
such a walk took 1.1 to 2.1 s, and while the heap grew (a ramp, a reclaim) it ran every
few seconds (bench/fleet.py with a GC probe, docs/fleet.md); each one holds the event loop,
so heartbeats, notices and runner steps all wait. Freezing the survivors every minute
(``gc.freeze``) made it worse during a ramp: the quarter is then of the unfrozen objects
only, so the walks came more often.

So the keeper turns the automatic full collections off and runs one itself every
``full_every`` seconds (an hour): the only long pause left, and a bounded wait for the
memory of garbage cycles among long-lived objects, which are few (the full collections
measured in steady state freed 5 to 12 objects each). Young collections, which free nearly
all cyclic garbage, run as before.
"""

from __future__ import annotations

import asyncio
import gc
import time

import structlog

log = structlog.get_logger("skyjobs.heap")

FULL_EVERY = 3600.0
NEVER = 2**31 - 1  # generation 2's threshold: young collections never escalate to a full one


class HeapKeeper:
    def __init__(self, full_every: float = FULL_EVERY) -> None:
        self.full_every = full_every
        self.full_runs = 0
        self.last_full_s = 0.0  # how long the last full collection held the loop
        self.task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        """Run as a named task (the daemon watches it: it never ends on its own)."""
        self.task = asyncio.create_task(self.run(), name="heap-keeper")
        return self.task

    def full(self) -> None:
        started = time.perf_counter()
        freed = gc.collect()
        self.full_runs += 1
        self.last_full_s = time.perf_counter() - started
        log.info("full garbage collection", seconds=round(self.last_full_s, 3), freed=freed)

    async def run(self) -> None:
        _hold()
        try:
            while True:
                await asyncio.sleep(self.full_every)
                self.full()
        finally:
            _release()


# Keepers running in this process (tests start several controllers in one): the first
# turns the automatic full collections off, the last one to stop turns them back on.
_keepers = 0
_saved = gc.get_threshold()


def _hold() -> None:
    global _keepers, _saved
    if _keepers == 0:
        _saved = gc.get_threshold()
        gc.set_threshold(_saved[0], _saved[1], NEVER)
    _keepers += 1


def _release() -> None:
    global _keepers
    _keepers -= 1
    if _keepers == 0:
        gc.set_threshold(*_saved)
