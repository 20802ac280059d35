"""The provider interface: the small surface every cloud implements.

All calls are idempotent per instance id (the controller derives ids from job, attempt and
node rank and records them before launching), so a launch replayed after a controller crash
finds the instances of the first try instead of creating new ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from skyjobs.pricing.catalog import Placement

# Instance states as the controller sees them.
PENDING = "pending"
RUNNING = "running"
# Terminated (by anyone) but still shutting down: its processes may run for a while yet.
# For recovery it is as good as gone; for fencing (may a replacement start?) it is not.
STOPPING = "stopping"
GONE = "gone"
ENDING = frozenset({STOPPING, GONE})

# Why an instance is gone.
PREEMPTED = "preempted"
TERMINATED = "terminated"
NOT_FOUND = "not_found"
LOST = "lost"


@dataclass(frozen=True)
class InstanceInfo:
    instance_id: str
    state: str
    reason: str | None = None
    ip: str | None = None


@dataclass(frozen=True)
class LaunchRequest:
    """Everything a provider needs to start the nodes of one attempt."""

    job_id: int
    attempt_id: int
    placement: Placement
    instance_ids: list[str]
    # Per-node environment for the agent (controller URL, attempt credential, node rank).
    agent_env: list[dict[str, str]]
    tags: dict[str, str] = field(default_factory=dict)


class Provider(Protocol):
    name: str

    async def launch(self, req: LaunchRequest) -> list[InstanceInfo]:
        """Start (or find already started) every node; raise CapacityError when none fit."""

    async def status(self, instance_ids: list[str]) -> dict[str, InstanceInfo]:
        """One batch lookup; an unknown id comes back GONE with reason NOT_FOUND."""

    async def terminate(self, instance_ids: list[str]) -> None:
        """Terminate; ids already gone or never created are fine."""

    async def preempt(self, instance_ids: list[str], notice_s: float) -> None:
        """Simulate a spot preemption (only simulated markets support this)."""

    async def close(self) -> None:
        """Release clients and thread pools."""
