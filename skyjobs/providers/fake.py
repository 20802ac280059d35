"""An in-memory provider for unit tests: records every call and can inject capacity
errors, fatal errors, slowness and preemptions. Instances never run anything; tests play
the agents through the controller's agent API."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from skyjobs.exceptions import CapacityError, FatalProviderError, ProviderError
from skyjobs.providers import base
from skyjobs.providers.base import InstanceInfo, LaunchRequest


@dataclass
class FakeProvider:
    name: str = "local"
    instances: dict[str, InstanceInfo] = field(default_factory=dict)
    requests: dict[str, LaunchRequest] = field(default_factory=dict)
    calls: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    no_capacity: set[str] = field(default_factory=set)  # zones
    fatal: str | None = None
    transient_failures: int = 0
    launch_delay: float = 0.0

    async def launch(self, req: LaunchRequest) -> list[InstanceInfo]:
        self.calls.append(("launch", tuple(req.instance_ids)))
        if self.launch_delay:
            await asyncio.sleep(self.launch_delay)
        if self.fatal:
            raise FatalProviderError(self.fatal)
        if self.transient_failures > 0:
            self.transient_failures -= 1
            raise ProviderError("injected transient error")
        if req.placement.zone in self.no_capacity:
            raise CapacityError(f"no capacity in {req.placement.zone}")
        out = []
        for i in req.instance_ids:
            # Idempotent like a ClientToken: a replayed launch returns the same instance.
            info = self.instances.setdefault(i, InstanceInfo(i, base.RUNNING, ip="127.0.0.1"))
            self.requests[i] = req
            out.append(info)
        return out

    async def status(self, instance_ids: list[str]) -> dict[str, InstanceInfo]:
        self.calls.append(("status", tuple(instance_ids)))
        return {i: self.instances.get(i, InstanceInfo(i, base.GONE, base.NOT_FOUND))
                for i in instance_ids}

    async def terminate(self, instance_ids: list[str]) -> None:
        self.calls.append(("terminate", tuple(instance_ids)))
        for i in instance_ids:
            if i in self.instances and self.instances[i].state != base.GONE:
                self.instances[i] = InstanceInfo(i, base.GONE, base.TERMINATED)

    async def preempt(self, instance_ids: list[str], notice_s: float) -> None:
        self.calls.append(("preempt", tuple(instance_ids)))
        for i in instance_ids:
            self.instances[i] = InstanceInfo(i, base.GONE, base.PREEMPTED)

    async def close(self) -> None:
        return None

    def alive(self) -> list[str]:
        return [i for i, info in self.instances.items() if info.state != base.GONE]
