"""The instance monitor: what the clouds say about live instances, in batches.

One status call per provider for every live attempt: an instance that is gone (on cloud
evidence: a just-launched instance the cloud does not list yet is not gone) is reported to
its runner; an attempt whose instances are all up gets its agents' silence checked. The
orphan sweep terminates instances this controller launched that no attempt owns.
"""

from __future__ import annotations

import asyncio

import structlog

from skyjobs.controller import store as st
from skyjobs.controller.messages import Message
from skyjobs.controller.services import Services
from skyjobs.exceptions import ProviderError
from skyjobs.providers import base
from skyjobs.providers.base import OwnedLister, ability
from skyjobs.states import AttemptStatus, MessageKind

log = structlog.get_logger("skyjobs.monitor")

YIELD_EVERY = 128
SLICE = 1000  # attempts per slice of an instance poll round


class InstanceMonitor:
    def __init__(self, services: Services) -> None:
        self.sv = services

    async def poll(self) -> None:
        sv = self.sv
        # Statuses from the store, launch facts from memory: a round decodes no rows but
        # those of attempts launched by an earlier controller (once).
        states = {i: AttemptStatus(s)
                  for i, s in await sv.store.call(sv.store.sync.live_attempt_states, sv.member)
                  if s in (AttemptStatus.PROVISIONING, AttemptStatus.RUNNING)}
        attempts = [a for a in await sv.sessions.attempts(list(states))
                    if a.job_id in sv.runners]
        # Past SLICE attempts the round goes in slices spread over most of the interval:
        # 10,000 statuses parsed and checked at once held the loop for a large fraction of
        # a second every round (docs/fleet.md). The cloud calls are the same: providers
        # chunk their describe calls by about as many ids anyway.
        slices = [attempts[i:i + SLICE] for i in range(0, len(attempts), SLICE)]
        pause = 0.8 * sv.config.instance_poll_interval / max(1, len(slices))
        for n, part in enumerate(slices):
            if n:
                await asyncio.sleep(pause)
            await self._poll_slice(part, states)

    async def _poll_slice(self, attempts: list[st.Attempt],
                          states: dict[int, AttemptStatus]) -> None:
        sv = self.sv
        by_cloud: dict[str, list[str]] = {}
        for a in attempts:
            by_cloud.setdefault(a.cloud, []).extend(a.instance_ids)
        infos: dict[str, base.InstanceInfo] = {}
        for cloud, ids in by_cloud.items():
            try:
                infos.update(await sv.providers[cloud].status(ids))
            except ProviderError as err:
                log.warning("instance poll failed", cloud=cloud, error=str(err))
        sv.sessions.note_ips(infos.values())
        for k, a in enumerate(attempts):
            if k % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)  # let requests in between
            if a.job_id not in sv.runners or not sv.sessions.knows(a.id):
                continue  # the job ended, or the attempt was released, during the round
            gone = [infos[i] for i in a.instance_ids if i in infos
                    and infos[i].state in base.ENDING and not self._too_new(a, infos[i])]
            if gone:
                sv.runners.post(a.job_id, Message(MessageKind.GONE, a.id, detail=gone[0]))
            elif (states[a.id] == AttemptStatus.RUNNING or sv.sessions.heard_any(a.id)) and all(
                    i in infos for i in a.instance_ids):
                await sv.sessions.check_silence(a)

    def _too_new(self, a: st.Attempt, info: base.InstanceInfo) -> bool:
        """A just-launched instance the cloud does not list yet (EC2 is eventually
        consistent) is not gone; only past the grace does "not found" count."""
        # Whatever the attempt's state: a fast boot can report "running" before the cloud's
        # listing shows the instance (seen in the chaos bench as phantom recoveries).
        if info.reason != base.NOT_FOUND:
            return False
        return self.sv.sessions.since_launch(a.id) < self.sv.config.launch_visibility_grace

    async def sweep_orphans(self) -> None:
        """Terminate instances this controller launched that no unreleased attempt owns.

        Attempts are recorded before any launch, so an orphan means someone else's mistake
        (or a bug); each one is logged."""
        sv = self.sv
        for cloud, any_provider in sv.providers.items():
            provider = ability(any_provider, OwnedLister)
            if provider is None:
                continue
            try:
                listed = await provider.list_owned(sv.instance_prefix)
                # Read the owners after listing: an attempt is recorded before its launch, so
                # every instance listed already has its row (the other order races a launch).
                owned = {i for a in await sv.store.call(sv.store.sync.unreleased_attempts)
                         for i in a.instance_ids}
                orphans = [i for i in listed if i not in owned]
                if orphans:
                    log.warning("terminating orphan instances", cloud=cloud, ids=orphans)
                    await any_provider.terminate(orphans)
            except ProviderError as err:
                log.warning("orphan sweep failed", cloud=cloud, error=str(err))
