"""The heap keeper: no automatic full collection while it runs (young ones go on), its own
periodic full collection frees cycles among long-lived objects, and the collector's settings
come back when the last keeper stops."""

from __future__ import annotations

import asyncio
import gc
import weakref

from skyjobs.controller.heap import NEVER, HeapKeeper


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


async def test_full_collections_are_the_keepers_own_and_settings_come_back() -> None:
    before = gc.get_threshold()
    first, second = HeapKeeper(full_every=0.3), HeapKeeper(full_every=3600)
    tasks = [first.start(), second.start()]
    try:
        await asyncio.sleep(0.05)
        assert gc.get_threshold()[2] == NEVER
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: only the cyclic collector can free it
        alive = weakref.ref(a)
        gc.collect(1)  # survives the young collections into the oldest generation
        del a, b
        gc.collect(1)
        assert alive() is not None  # young collections do not look at it any more
        for _ in range(40):
            await asyncio.sleep(0.05)
            if first.full_runs:
                break
        assert first.full_runs >= 1 and alive() is None
    finally:
        tasks[0].cancel()
        await asyncio.gather(tasks[0], return_exceptions=True)
        assert gc.get_threshold()[2] == NEVER  # the other keeper still runs
        tasks[1].cancel()
        await asyncio.gather(tasks[1], return_exceptions=True)
    assert gc.get_threshold() == before
