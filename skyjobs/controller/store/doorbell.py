"""A controller's doorbell: PostgreSQL LISTEN on its own channel.

Other controllers ring it (``pg_notify``, sent when their transaction commits) when they
leave it a wake-up (an agent's report for one of its jobs) or a new job. The notification
carries nothing but the reason: the work itself is in the tables, so a ring lost while the
listener reconnects costs only latency, and the keeper also drains on a slow timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import structlog

from skyjobs.controller.store.dialect import KEEPALIVES
from skyjobs.controller.store.leases import channel

log = structlog.get_logger("skyjobs.doorbell")

RECONNECT_DELAY = 1.0
LISTEN_TIMEOUT = 10.0  # seconds between checks that the listening session is still there


async def listen(url: str, member: str, ring: Callable[[str], None]) -> None:
    """Call ``ring(payload)`` for every notification on ``member``'s channel, for ever;
    reconnects after any failure (and rings "reconnected": what came meanwhile is in the
    tables)."""
    while True:
        try:
            params: dict[str, Any] = {**KEEPALIVES, "autocommit": True}
            async with await psycopg.AsyncConnection.connect(url, **params) as conn:
                await conn.execute(f'LISTEN "{channel(member)}"')
                ring("reconnected")
                while True:
                    async for note in conn.notifies(timeout=LISTEN_TIMEOUT):
                        ring(note.payload)
                    await conn.execute("SELECT 1")  # a dead session fails here, not never
        except psycopg.Error as err:
            log.warning("doorbell connection failed; reconnecting", error=str(err))
        await asyncio.sleep(RECONNECT_DELAY)
