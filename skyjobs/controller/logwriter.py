"""Job log appends from agents, grouped: one hop to a thread per batch, not per post.

Every agent ships its job's log in chunks (``POST .../logs?offset=``); at thousands of
agents one thread hop per post was the largest item of the controller's profile (the
hand-off and the GIL going back and forth, not the writes). Posts that arrive while a
batch is being written wait for the next one, so a batch grows with the load and the
number of hops does not. Appends stay idempotent by offset: a replayed chunk writes
nothing twice.

With a shared store (several controllers on PostgreSQL) the chunks go to the database instead
(store.blobs), one transaction per batch, so any controller can serve any node's log.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from skyjobs.controller.store import Store

log = structlog.get_logger("skyjobs.logwriter")

MAX_BATCH = 512  # posts per hop; a bound on how long one batch holds the thread
LogKey = tuple[int, int, int]  # (job id, attempt n, rank): a node's log in the store
_Item = tuple[Any, int, bytes, "asyncio.Future[int]"]


def append_at(path: Path, offset: int, data: bytes) -> int:
    """Append the part of data past what the file already has; returns the file's size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        size = fh.tell()
        if offset <= size < offset + len(data):
            fh.write(data[size - offset:])
            size = fh.tell()
    return size


def _write_batch(items: list[tuple[Path, int, bytes]]) -> list[int | OSError]:
    out: list[int | OSError] = []
    for path, offset, data in items:
        try:
            out.append(append_at(path, offset, data))
        except OSError as err:  # one full disk or bad path fails its own post only
            out.append(err)
    return out


class LogWriter:
    """The one writer of job logs; ``start()`` returns its task for the daemon to watch."""

    def __init__(self, store: Store | None = None) -> None:
        """``store``: write to the shared store (targets are LogKeys), not to files."""
        self.store = store
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.batches = 0  # hops made (tests and the bench read it)

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self._run(), name="log-writer")
        return self.task

    async def append(self, target: Path | LogKey, offset: int, data: bytes) -> int:
        """Append a chunk at offset (see append_at) to a file, or to a node's log in the
        shared store; raises OSError if it could not be."""
        if self.task is None or self.task.done():
            (result,) = await self._write([(target, offset, data)])
            if isinstance(result, OSError):
                raise result
            return result
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((target, offset, data, fut))
        return await fut

    async def _write(self, items: list[tuple[Any, int, bytes]]) -> list[int | OSError]:
        if self.store is None:
            return await asyncio.to_thread(_write_batch, items)
        try:
            sizes = await self.store.call(self.store.sync.append_logs,
                                          [(*key, offset, data) for key, offset, data in items])
        except Exception as err:  # noqa: BLE001 - each post gets the error, none hangs
            failure = OSError(f"log append failed: {type(err).__name__}: {err}")
            return [failure] * len(items)
        return list(sizes)

    async def _run(self) -> None:
        batch: list[_Item] = []
        try:
            while True:
                batch = [await self._queue.get()]
                while len(batch) < MAX_BATCH and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                results = await self._write([(p, o, d) for p, o, d, _ in batch])
                self.batches += 1
                for (_, _, _, fut), result in zip(batch, results, strict=True):
                    if fut.done():  # the request went away
                        continue
                    if isinstance(result, OSError):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)
                batch = []
        finally:
            # Shutdown: whoever still waits gets an error, never a hang.
            pending = [*batch, *(self._queue.get_nowait() for _ in range(self._queue.qsize()))]
            for *_, fut in pending:
                if not fut.done():
                    fut.set_exception(OSError("the controller is shutting down"))
