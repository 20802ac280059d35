"""The heap keeper: survivors frozen out of the collector's walks, cycles among them still
freed by the periodic full collection, and everything given back when it stops."""

from __future__ import annotations

import asyncio
import gc
import weakref

from skyjobs.controller.heap import HeapKeeper


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


async def test_frozen_cycles_are_freed_by_the_full_pass_and_stop_unfreezes() -> None:
    keeper = HeapKeeper(freeze_every=0.05, full_every=0.4)
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the cyclic collector can free it
    alive = weakref.ref(a)
    task = keeper.start()
    try:
        await asyncio.sleep(0.15)
        assert gc.get_freeze_count() > 0  # the cycle, among the rest, is out of sight
        del a, b
        gc.collect()  # an ordinary full collection does not see frozen objects
        assert alive() is not None
        for _ in range(40):
            await asyncio.sleep(0.05)
            if keeper.full_runs:
                break
        assert keeper.full_runs >= 1
        gc.collect(0)
        assert alive() is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert gc.get_freeze_count() == 0
