"""The provider interface: the small surface every cloud implements.

All calls are idempotent per instance id (the controller derives ids from job, attempt and
node rank and records them before launching), so a launch replayed after a controller crash
finds the instances of the first try instead of creating new ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, TypeVar, cast, runtime_checkable

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
    # What the chosen resources alternative starts the instances with (see
    # ``skyjobs.recovery.choice.choice_for``); the defaults are "as the provider sees fit".
    image_id: str | None = None  # the user's image for this region, else the provider's
    disk_size_gb: int | None = None  # boot disk size, else the image's
    disk_tier: str | None = None  # low | medium | high | ultra | best, else the image's
    ports: tuple[str, ...] = ()  # "8080" or "10000-10010", TCP, to be reachable
    # The user's instance labels; a provider merges them under ``tags`` (ours win).
    labels: dict[str, str] = field(default_factory=dict)


class Provider(Protocol):
    name: str

    async def launch(self, req: LaunchRequest) -> list[InstanceInfo]:
        """Start (or find already started) every node; raise CapacityError when none fit."""

    async def status(self, instance_ids: list[str]) -> dict[str, InstanceInfo]:
        """One batch lookup; an unknown id comes back GONE with reason NOT_FOUND."""

    async def terminate(self, instance_ids: list[str]) -> None:
        """Terminate; ids already gone or never created are fine."""

    async def close(self) -> None:
        """Release clients and thread pools."""


# Optional abilities: a provider has one when it has the method; callers ask with
# isinstance(provider, Ability), never with hasattr.
PriceRow = tuple[str, str, str, float, float]  # region, zone, type, $/h, observed at


@runtime_checkable
class PriceSource(Protocol):
    async def spot_prices(self, keys: list[tuple[str, str, str]]) -> list[PriceRow]:
        """Live spot prices of (region, zone, instance type) keys it knows."""


@runtime_checkable
class OwnedLister(Protocol):
    async def list_owned(self, prefix: str) -> list[str]:
        """Ids of every live instance launched with this controller's id prefix (or tag)."""


@runtime_checkable
class BucketChecker(Protocol):
    async def check_bucket(self, source: str) -> None:
        """Raise SpecError unless the bucket exists and can be read and written."""


@runtime_checkable
class NeedsPreparation(Protocol):
    async def prepare(self) -> None:
        """Checks and lookups the controller awaits at start, before any job runs (AWS:
        the default image of every region); raise ConfigError with one line when this
        cloud cannot launch at all."""


@runtime_checkable
class SimulatedMarket(Protocol):
    """A market under our control (the local provider): capacity and preemptions on
    request, for demos and tests. Real clouds preempt on their own."""

    def set_spot_capacity(self, zone: str, available: bool) -> list[str]:
        """Put a zone in or out of spot capacity; returns the zones without it."""

    async def preempt(self, instance_ids: list[str], notice_s: float) -> None:
        """Send the instances a preemption notice; they die when it runs out."""


@runtime_checkable
class KeepsInstanceState(Protocol):
    def forget(self, instance_ids: list[str]) -> None:
        """The controller released these instances and will not ask about them again:
        drop what is kept per instance (where each one lives, preemption records), so a
        long-lived controller's memory does not grow with every instance it ever ran."""


A = TypeVar("A")


def ability(provider: object, kind: type[A]) -> A | None:
    """``provider`` as a ``kind`` (PriceSource, OwnedLister, ...) if the cloud behind it has
    that ability, else None. Wrappers (instrumentation, fault injection) expose ``inner``
    and pass calls through, so the check looks at the innermost provider while calls still
    go through every wrapper."""
    core = provider
    while (inner := getattr(core, "inner", None)) is not None:
        core = inner
    return cast(A, provider) if isinstance(core, kind) else None
