"""The garbage collector and a heap of thousands of live jobs.

CPython's cyclic collector walks every tracked object on a full (generation 2) collection.
With 10,000 live jobs (their runners, launch facts, sessions and connections) that walk
took 1.1 to 2.1 s, and while the heap grew it ran every few seconds (bench/fleet.py with a
GC probe, docs/fleet.md): each run holds the event loop, so heartbeats, notices and runner
steps all wait. Objects that survived a while are nearly always live job state, so the
keeper moves them out of the collector's sight (``gc.freeze``) every minute, after a
young-generation collection; the automatic collections then only walk what was made since.
Garbage cycles among frozen objects (a job's state that ends in a cycle) are freed by one
full collection of everything every ``full_every`` seconds (an hour): the only long pause
left, and a bounded wait for that memory.
"""

from __future__ import annotations

import asyncio
import gc
import time

import structlog

log = structlog.get_logger("skyjobs.heap")

FREEZE_EVERY = 60.0
FULL_EVERY = 3600.0


class HeapKeeper:
    def __init__(self, freeze_every: float = FREEZE_EVERY,
                 full_every: float = FULL_EVERY) -> None:
        self.freeze_every = freeze_every
        self.full_every = full_every
        self.full_runs = 0
        self.last_full_s = 0.0  # how long the last full collection held the loop
        self.task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        """Run as a named task (the daemon watches it: it never ends on its own)."""
        self.task = asyncio.create_task(self.run(), name="heap-keeper")
        return self.task

    @staticmethod
    def freeze() -> None:
        gc.collect(1)  # young garbage first: only survivors are frozen
        gc.freeze()

    def full(self) -> None:
        started = time.perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.full_runs += 1
        self.last_full_s = time.perf_counter() - started
        log.info("full garbage collection", seconds=round(self.last_full_s, 3),
                 frozen=gc.get_freeze_count())

    async def run(self) -> None:
        next_full = time.monotonic() + self.full_every
        try:
            while True:
                await asyncio.sleep(self.freeze_every)
                if time.monotonic() >= next_full:
                    self.full()
                    next_full = time.monotonic() + self.full_every
                else:
                    self.freeze()
        finally:
            # A stopped controller (tests start many in one process) gives everything back.
            gc.unfreeze()
