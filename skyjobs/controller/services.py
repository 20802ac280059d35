"""What job runners and the HTTP layer may use: a narrow set of services, not the daemon.

Built once by the lifecycle (daemon.py) after the store is open, the evidence loaded and
the providers made; nothing here starts or stops anything.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from skyjobs.config import ControllerConfig
from skyjobs.controller import retention
from skyjobs.controller import store as st
from skyjobs.controller.agent_dist import AgentDist
from skyjobs.controller.logwriter import LogWriter
from skyjobs.controller.messages import Message
from skyjobs.controller.metrics import Metrics
from skyjobs.controller.reaper import Reaper
from skyjobs.controller.sessions import AgentSessions
from skyjobs.controller.webhooks import WebhookDispatcher
from skyjobs.exceptions import FatalProviderError
from skyjobs.pricing.catalog import Catalog, Offering, Placement
from skyjobs.pricing.prices import PriceBook
from skyjobs.providers.base import LaunchRequest, Provider
from skyjobs.providers.bootstrap import MODULES_KEY
from skyjobs.recovery.choice import choice_for
from skyjobs.recovery.memory import PreemptionMemory
from skyjobs.spec import TaskSpec
from skyjobs.states import MessageKind, RecoveryCause

MEMORY_HORIZON = 14 * 24 * 3600.0  # preemption evidence older than this has faded away

if TYPE_CHECKING:
    from skyjobs.controller.runners import Runners


@dataclass
class Services:
    config: ControllerConfig
    store: st.Store
    catalog: Catalog
    providers: dict[str, Provider]
    memory: PreemptionMemory
    price_book: PriceBook
    metrics: Metrics
    sessions: AgentSessions
    reaper: Reaper
    runners: Runners
    webhooks: WebhookDispatcher
    token: str  # the user API's bearer token
    instance_prefix: str  # every instance id starts with it; the orphan sweep's key
    # The node agent this controller serves (built off the loop before the first launch):
    # nodes download it and check it against the sha256 their launch carries.
    agent_dist: AgentDist
    url: str = ""  # where this controller serves (set once the HTTP site is up)
    member: str = "local"  # this controller among those sharing the store (its leases' owner)
    host: str = ""
    pid: int = 0
    # Forwards a report for a job this controller does not run to the one that does.
    forward: Callable[[int, Message], None] = field(default=lambda job_id, msg: None)
    # The other live controllers' agent URLs (the lease keeper refreshes them): launches
    # and heartbeat answers give agents the whole list to fail over along.
    peer_urls: list[str] = field(default_factory=list)
    logs: LogWriter = field(default_factory=LogWriter)  # agents' log posts, in batches
    # Workdir archives a submit has written and not yet recorded in its job (retention
    # must not remove them in between).
    archives_in_flight: Counter[str] = field(default_factory=Counter)
    started_at: float = field(default_factory=time.time)
    launch_slots: asyncio.Semaphore = field(init=False)  # max_concurrent_launches
    _offerings: dict[tuple[str, str, str], Offering] = field(init=False)

    def __post_init__(self) -> None:
        self.launch_slots = asyncio.Semaphore(self.config.max_concurrent_launches)
        self._offerings = {(o.cloud, o.zone, o.instance_type): o
                           for o in self.catalog.offerings}

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    def offering_of(self, cloud: str, zone: str, instance_type: str) -> Offering | None:
        return self._offerings.get((cloud, zone, instance_type))

    def placement_of(self, a: st.Attempt) -> Placement:
        """An attempt's placement as the catalog knows it (or as the attempt recorded it,
        for an offering the catalog no longer lists)."""
        offering = self.offering_of(a.cloud, a.zone, a.instance_type) or Offering(
            a.cloud, a.region, a.zone, a.instance_type, None, 0, 0, 0, a.price_per_hour,
            a.price_per_hour if a.use_spot else None, "", "attempt record")
        return Placement(offering, a.use_spot, a.price_per_hour)

    def launch_request(self, job: st.Job, attempt: st.Attempt,
                       spec: TaskSpec | None = None) -> LaunchRequest:
        """What the provider starts the attempt's nodes with: where (the attempt's
        placement), the agents' environments, our tags, and what the task's alternative
        that admits the placement asks for (image, boot disk, ports, labels)."""
        url = self.agent_url
        placement = self.placement_of(attempt)
        try:
            # The runner passes the spec it validated already (once per task, not per launch).
            if spec is None:
                spec = TaskSpec.model_validate(job.task_entry(attempt.task_index)["spec"])
        except (KeyError, TypeError, ValidationError) as err:
            # Stored specs were validated at submit; one that no longer reads cannot say
            # what to launch with, and a retry will not change that.
            raise FatalProviderError(f"job {job.id}: stored task cannot be read: "
                                     f"{type(err).__name__}") from None
        env = {"SKYJOBS_CONTROLLER_URL": url, "SKYJOBS_CONTROLLER_URLS": ",".join(
                   [url, *(u for u in self.peer_urls if u != url)]),
               "SKYJOBS_ATTEMPT_ID": str(attempt.id),
               "SKYJOBS_AGENT_TOKEN": self.sessions.agent_token(attempt.id),
               # The boot script runs the downloaded agent only if its hash is this one.
               "SKYJOBS_AGENT_SHA256": self.agent_dist.sha256}
        # COPY of an s3:// bucket runs boto3 in the agent: a node booted without pip gets
        # it from the distro (docs/bootstrap.md); nodes without such buckets skip that.
        if any(m.source.startswith("s3://") and m.mode == "COPY"
               for m in spec.buckets().values()):
            env[MODULES_KEY] = "boto3"
        choice = choice_for(spec, placement)
        tags = {"skyjobs-controller": self.instance_prefix, "skyjobs-job": str(job.id),
                "skyjobs-attempt": str(attempt.n)}
        return LaunchRequest(
            job_id=job.id, attempt_id=attempt.id, placement=placement,
            instance_ids=attempt.instance_ids,
            agent_env=[{**env, "SKYJOBS_NODE_RANK": str(r)} for r in range(attempt.num_nodes)],
            tags=tags, image_id=choice.image_for(placement.region),
            disk_size_gb=choice.disk_size, disk_tier=choice.disk_tier, ports=choice.ports,
            # Under ours: a label never replaces a skyjobs tag (the spec refuses skyjobs*
            # keys already; this keeps it so whatever a provider merges first).
            labels={k: v for k, v in choice.labels.items() if k not in tags})

    @property
    def agent_url(self) -> str:
        """Where agents reach this controller."""
        return self.config.advertise_url or self.url

    def on_recovery(self, cause: RecoveryCause, attempt: st.Attempt) -> None:
        self.metrics.recovery(cause)
        if attempt.notice_at is not None:
            self.metrics.notice_latency(time.time() - attempt.notice_at)

    def wake_webhooks(self) -> None:
        """Called after a transition: deliver its webhooks now, not at the next poll."""
        self.webhooks.wake()

    async def cancel(self, job_id: int, reason: str) -> None:
        """Ask a live job to stop (the API's and the dashboard's cancel): CANCELLING in one
        compare-and-set, then its runner (started if none is) tears it down. Raises
        NotFoundError or IllegalTransitionError and changes nothing when it cannot."""
        await self.store.call(self.store.sync.transition, job_id, st.CANCELLING, reason,
                              expect=frozenset(st.LIVE - {st.CANCELLING}))
        self.wake_webhooks()
        self.runners.start(job_id)
        self.runners.post(job_id, Message(MessageKind.CANCEL))

    async def collect_garbage(self, older_than_s: float | None = None,
                              dry_run: bool = False) -> dict[str, int]:
        """The retention sweep (the hourly duty, ``POST /api/v1/gc``): ended jobs older
        than retention_days (or ``older_than_s``) and what they left behind."""
        older = self.config.retention_days * retention.DAY if older_than_s is None \
            else older_than_s
        return await retention.sweep(
            self.store, self.state_dir, older, keep_zone_events_s=MEMORY_HORIZON,
            in_flight=+self.archives_in_flight, dry_run=dry_run,
            shared=self.config.database_url is not None)

    async def render_metrics(self) -> tuple[bytes, str]:
        now = time.time()
        counts = await self.store.call(self.store.sync.count_jobs)
        outbox = await self.store.call(self.store.sync.outbox_stats)
        usage = await self.store.call(self.store.sync.usage_by_offering, now)
        cost = on_demand = 0.0
        for u in usage:
            offering = self.offering_of(u["cloud"], u["zone"], u["instance_type"])
            cost += u["cost"]
            on_demand += u["node_hours"] * offering.ondemand_price if offering else u["cost"]
        return self.metrics.render(counts, outbox["backlog"], cost, on_demand - cost)


