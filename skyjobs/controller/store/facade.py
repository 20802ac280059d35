"""The store's async face: every call runs on the store's own thread."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from skyjobs.controller.store.sync import SyncStore

T = TypeVar("T")
P = ParamSpec("P")


class Store:
    """Async facade: every call runs on the store's one thread, in submission order.

    Calls made in the same turn of the event loop go to the thread together, and their
    results come back together: at thousands of agents, one thread hand-off per call (a
    future, a lock, a wake-up of the loop, and the GIL going back and forth) cost more than
    the SQL. Each call is still its own transaction; a call whose caller was cancelled
    before it started is skipped."""

    BATCH = 64  # calls per hand-off: bounds how long the first caller of a batch waits

    def __init__(self, target: Path | str, hooks: dict[str, frozenset[str]] | None = None,
                 idle_timeout_s: float | None = None) -> None:
        """``target``: the SQLite file, or a ``postgresql://`` URL (one connection, owned
        by the same one thread: a call's round trips on loopback or a LAN cost less than
        the hand-off, and per-caller order stays as on SQLite)."""
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skyjobs-store")
        self.sync = self._pool.submit(SyncStore, target, hooks, idle_timeout_s).result()
        self._queued: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._handoff_loop: asyncio.AbstractEventLoop | None = None  # a hand-off is due there
        self.handoffs = 0  # batches handed to the thread (tests and benchmarks read it)

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one SyncStore method on the store's thread; typed like the method itself."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        # In the caller's context: a runner's fence (store.leases.FENCE) goes with its calls.
        ctx = contextvars.copy_context()
        self._queued.append((lambda: ctx.run(fn, *args, **kwargs), fut))
        if self._handoff_loop is not loop:  # (another loop's: one that stopped, in tests)
            self._handoff_loop = loop
            loop.call_soon(self._hand_off, loop)
        return await fut

    def _hand_off(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handoff_loop = None
        queued, self._queued = self._queued, []
        for i in range(0, len(queued), self.BATCH):
            self.handoffs += 1
            self._pool.submit(self._run, loop, queued[i:i + self.BATCH], self.sync.d.run)

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop,
             batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]],
             run: Callable[[Callable[[], Any]], Any]) -> None:
        done: list[tuple[asyncio.Future[Any], bool, Any]] = []
        for work, fut in batch:
            if fut.cancelled():  # read from this thread: at worst the call runs anyway
                continue
            try:
                done.append((fut, True, run(work)))
            except BaseException as err:  # noqa: BLE001 - handed to the caller, as raised
                done.append((fut, False, err))
        try:
            loop.call_soon_threadsafe(Store._deliver, done)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    @staticmethod
    def _deliver(done: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
        for fut, ok, value in done:
            if fut.done():
                continue
            try:
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
            except RuntimeError:
                pass  # a future of a loop that is closed

    def close(self) -> None:
        self._pool.submit(self.sync.close).result()
        self._pool.shutdown(wait=True)
