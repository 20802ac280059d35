"""The controller's lifecycle: start (resume from the store), serve, shut down.

One process, one event loop. Start takes the state directory's lock, opens the store, makes
the providers, rebuilds the evidence (preemption memory, prices), wires the duties together
(:class:`~skyjobs.controller.services.Services`), serves the HTTP API and resumes every
unfinished job. Side tasks (the reaper, the webhook dispatcher, the store probe, the
watchdog) are named and watched: if one dies the daemon stops loudly instead of limping.
Shutdown never touches instances (the next start re-attaches to them): the first SIGTERM or
SIGINT stops within a bound, a second one skips the waiting; the signal handlers are
restored on the way out.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import secrets
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from skyjobs.config import ControllerConfig
from skyjobs.controller import agent_dist, retention, sdnotify
from skyjobs.controller import store as st
from skyjobs.controller.duties import Duties
from skyjobs.controller.heap import HeapKeeper
from skyjobs.controller.leases import LeaseKeeper
from skyjobs.controller.logwriter import LogWriter
from skyjobs.controller.looplag import LoopLagMonitor
from skyjobs.controller.messages import Message
from skyjobs.controller.metrics import InstrumentedProvider, Metrics
from skyjobs.controller.monitor import InstanceMonitor
from skyjobs.controller.prices import PricePoller
from skyjobs.controller.reaper import Reaper
from skyjobs.controller.runners import Runners
from skyjobs.controller.services import MEMORY_HORIZON, Services
from skyjobs.controller.sessions import AgentSessions
from skyjobs.controller.webhooks import WebhookDispatcher, store_hooks
from skyjobs.exceptions import ConfigError, SkyjobsError
from skyjobs.fsutil import atomic_write, private_dir, private_umask
from skyjobs.pricing.catalog import Catalog
from skyjobs.pricing.prices import PriceBook
from skyjobs.providers.base import KeepsInstanceState, NeedsPreparation, Provider, ability
from skyjobs.providers.local import LocalProvider
from skyjobs.providers.remote import RemoteProvider
from skyjobs.recovery.memory import PreemptionMemory
from skyjobs.states import MessageKind

log = structlog.get_logger("skyjobs.controller")

ORPHAN_SWEEP_INTERVAL = 300.0
# The store must answer a probe this often, or the systemd watchdog stops being fed.
HEALTH_PROBE_INTERVAL = 5.0
HEALTH_STALE_AFTER = 20.0
SHUTDOWN_GRACE = 10.0  # the first signal's bound on waiting for runners and deliveries


def read_or_create_secret(path: Path) -> str:
    """The secret in ``path``, made on first use. An empty file is never a valid secret
    (it would authorize ``Bearer `` with nothing after it): it gets a fresh one."""
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if not value:
        if path.exists():
            log.warning("secret file is empty; writing a new secret", path=str(path))
        atomic_write(path, secrets.token_urlsafe(32))
        value = path.read_text().strip()
    return value


class Controller:
    def __init__(self, config: ControllerConfig,
                 providers: dict[str, Provider] | None = None) -> None:
        self.config = config
        self.state_dir = config.state_dir
        # Packaged offerings, with prices refreshed into the state dir (`catalog refresh`);
        # tests may swap it before start().
        self.catalog = Catalog.for_clouds(config.clouds, state_dir=config.state_dir)
        self.providers: dict[str, Provider] = providers or {}
        self.metrics = Metrics(hooks=[w.name for w in config.webhooks])
        self.loop_lag = LoopLagMonitor()
        self.heap = HeapKeeper()
        self.metrics.watch_loop(self.loop_lag)
        self._services: Services | None = None
        self._stop = asyncio.Event()
        self._forced = False
        self._lock_fd: int | None = None
        self._http: web.AppRunner | None = None
        self._duties: Duties | None = None
        self._keeper: LeaseKeeper | None = None
        self._lease_store: st.Store | None = None  # the keeper's own session (PostgreSQL)
        self._died: str | None = None  # the side task whose death stopped the daemon
        self._side_tasks: list[asyncio.Task[Any]] = []
        self._store: st.Store | None = None
        self._store_ok_at = 0.0

    # --- what the rest of the process (CLI, tests, benchmarks) may look at -------------------

    @property
    def services(self) -> Services:
        assert self._services is not None, "the controller is not started"
        return self._services

    @property
    def store(self) -> st.Store:
        return self.services.store

    @property
    def sessions(self) -> AgentSessions:
        return self.services.sessions

    @property
    def runners(self) -> Runners:
        return self.services.runners

    @property
    def duties(self) -> Duties:
        assert self._duties is not None, "the controller is not started"
        return self._duties

    @property
    def url(self) -> str:
        return self.services.url

    @property
    def token(self) -> str:
        return self.services.token

    # --- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        # Task secrets, tokens and logs live here: nothing is created readable by others,
        # not even for an instant (SQLite's WAL and SHM files only honour the umask).
        private_umask()
        private_dir(self.state_dir)
        self._take_lock()
        for sub in ("logs", "archives", "buckets"):
            private_dir(self.state_dir / sub)
        # The lease keeper uses the store every third of a lease: a session idle past the
        # lease belongs to a frozen controller, whose duty locks must go free.
        store = self._store = st.Store(self.config.store_target,
                                       store_hooks(self.config.webhooks),
                                       idle_timeout_s=self.config.lease_seconds * 1.5)
        if self.config.database_url is None:
            os.chmod(self.config.db_path, 0o600)  # an older version's, under another umask
        token, secret = await self._secrets(store)
        # 64 bits: the orphan sweep terminates instances by this prefix, so two controllers
        # in one account must never share it (a state dir keeps the id it was given).
        cid = await store.call(store.sync.get_or_set_meta, "controller_id",
                               secrets.token_hex(8))
        self._make_providers()
        await self._prepare_providers()
        memory, prices = await self._load_evidence(store)
        # The node agent this process serves, and whose hash its launches announce: file
        # reads, so in a thread, and before anything can launch or ask for it.
        dist = await agent_dist.load_async()
        self._services = sv = self._wire(store, token, secret, f"sj{cid}", memory, prices, dist)
        # Before the jobs resume: re-attaching thousands of them is event-loop work too.
        self._watch(self.loop_lag.start())
        self._watch(sv.logs.start())
        await self._serve_http(sv)
        # Until each agent has heard this controller's interval, silence is judged by the
        # one a fleet this size was sent.
        live = await store.call(store.sync.unreleased_attempts)
        sv.sessions.assume_fleet(sum(a.num_nodes for a in live))
        # Resume: the jobs whose leases are ours, and a share of those nobody holds (on
        # SQLite: every unfinished job), each re-attached as _adopt says.
        if self.config.database_url is not None:
            self._lease_store = st.Store(self.config.database_url,
                                         idle_timeout_s=self.config.lease_seconds * 1.5)
        self._keeper = keeper = LeaseKeeper(sv, self._adopt, sv.runners.stand_down,
                                            self._lease_store)
        sv.forward = keeper.forward
        await keeper.start()
        for task in keeper.tasks:
            self._watch(task)
        # Long-lived job state out of the cyclic collector's full walks (heap.py).
        self._watch(self.heap.start())
        # The reaper finishes what a crash interrupted: attempts that ended in the store
        # before their instances were terminated.
        self._watch(sv.reaper.start())
        self._start_duties(sv)
        self._store_ok_at = time.time()  # it just answered every resume query
        await sv.webhooks.start()
        self._watch(sv.webhooks.task)
        self._watch(asyncio.create_task(self._probe_store(), name="health-probe"))
        if sdnotify.watchdog_interval() is not None:  # systemd asked for pings
            self._watch(asyncio.create_task(
                sdnotify.watchdog_loop(self.healthy, self.status_line), name="watchdog"))
        atomic_write(self.state_dir / "controller.json",
                     json.dumps({"url": sv.url, "pid": os.getpid()}))
        log.info("controller started", url=sv.url, state_dir=str(self.state_dir),
                 live_jobs=len(sv.runners))

    def _member_id(self) -> str:
        """This controller's name among those sharing a store: kept in the state dir (which
        one process at a time holds), so a restart finds its own leases still its own and
        resumes at once instead of waiting them out."""
        path = self.state_dir / "member"
        try:
            member = path.read_text().strip()
        except FileNotFoundError:
            member = ""
        if not member:
            host = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-.")[:24]
            member = f"{host or 'controller'}-{secrets.token_hex(3)}"
            atomic_write(path, member)
        return member

    async def _secrets(self, store: st.Store) -> tuple[str, bytes]:
        """The API token and the agents' signing secret. Controllers sharing a database
        share both (any of them serves any agent and any user), kept in the store and
        mirrored into the state dir for the CLI on this machine."""
        token_file, secret_file = self.state_dir / "token", self.state_dir / "agent-secret"
        if self.config.database_url is None:
            return read_or_create_secret(token_file), \
                read_or_create_secret(secret_file).encode()
        token = await store.call(store.sync.get_or_set_meta, "api_token",
                                 secrets.token_urlsafe(32))
        secret = await store.call(store.sync.get_or_set_meta, "agent_secret",
                                  secrets.token_urlsafe(32))
        for path, value in ((token_file, token), (secret_file, secret)):
            if not path.exists() or path.read_text().strip() != value:
                atomic_write(path, value)
        return token, secret.encode()

    async def _adopt(self, job_ids: list[int]) -> None:
        """Run jobs whose leases just became ours: a restart's resume, a takeover, a job
        assigned here. The agents' requests need their attempts' launch facts: read them
        here, once, not once per agent as thousands re-attach."""
        sv = self.services
        store = sv.store
        for attempt in await store.call(store.sync.unreleased_attempts, job_ids):
            sv.sessions.remember(attempt)
            sv.sessions.adopted(attempt.id)
        for job in sorted(await store.call(store.sync.jobs_by_id, job_ids), key=lambda j: j.id):
            if job.status in st.LIVE:
                sv.runners.start(job.id)  # re-attach, or recover what vanished meanwhile
        sv.reaper.wake()  # ended ones with instances left: the reaper's

    def _wire(self, store: st.Store, token: str, secret: bytes, prefix: str,
              memory: PreemptionMemory, prices: PriceBook,
              dist: agent_dist.AgentDist) -> Services:
        """Make the duties and hand each one only what it needs."""
        runners = Runners()
        webhooks = WebhookDispatcher(store, self.config.webhooks, metrics=self.metrics)
        holder: list[Services] = []  # sessions and reaper call back into the services
        sessions = AgentSessions(
            self.config, store, self.metrics, secret, memory, post=runners.post,
            placement_of=lambda a: holder[0].placement_of(a), wake_webhooks=webhooks.wake)

        def released(attempt: st.Attempt) -> None:
            # The instances are confirmed gone: a replacement waiting at the go gate may start.
            sessions.forget(attempt.id, attempt.instance_ids)
            keeper = ability(self.providers.get(attempt.cloud), KeepsInstanceState)
            if keeper is not None:
                keeper.forget(attempt.instance_ids)
            runners.post(attempt.job_id, Message(MessageKind.WAKE))

        member = self._member_id()
        reaper = Reaper(store, self.providers, on_released=released,
                        on_failure=self.metrics.release_failure, member=member)
        sv = Services(config=self.config, store=store, catalog=self.catalog,
                      logs=LogWriter(store if self.config.database_url else None),
                      providers=self.providers, memory=memory, price_book=prices,
                      metrics=self.metrics, sessions=sessions, reaper=reaper, runners=runners,
                      webhooks=webhooks, token=token, instance_prefix=prefix,
                      agent_dist=dist, member=member, host=socket.gethostname(),
                      pid=os.getpid())
        holder.append(sv)
        runners.attach(sv)
        self.metrics.watch_sizes(lambda: {
            **sessions.sizes(), "runners": len(runners), "reaper_retries": reaper.pending,
            "archives_in_flight": len(+sv.archives_in_flight)})
        return sv

    async def _serve_http(self, sv: Services) -> None:
        # the HTTP layer sits above the rest
        from skyjobs.controller.api import MAX_REQUEST_LINE, make_app

        # Held long-polls must not hold up a shutdown for aiohttp's default minute.
        self._http = web.AppRunner(make_app(sv), access_log=None, handle_signals=False,
                                   shutdown_timeout=2.0, max_line_size=MAX_REQUEST_LINE)
        await self._http.setup()
        site = web.TCPSite(self._http, self.config.host, self._port(),
                           ssl_context=self._ssl_context(), reuse_address=True)
        await site.start()
        port = self._http.addresses[0][1]
        atomic_write(self.state_dir / "port", str(port))
        scheme = "https" if self.config.tls_cert else "http"
        sv.url = f"{scheme}://{self._url_host()}:{port}"

    def _start_duties(self, sv: Services) -> None:
        monitor = InstanceMonitor(sv)
        poller = PricePoller(sv.store, sv.catalog, sv.providers, sv.price_book)
        self._duties = duties = Duties(self.metrics)
        duties.add("poll_instances", monitor.poll, self.config.instance_poll_interval)
        def leading(name: str) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:  # one controller at a time runs it (store.leases)
                return await sv.store.call(sv.store.sync.hold_duty, name)
            return check

        duties.add("sweep_orphans", monitor.sweep_orphans, ORPHAN_SWEEP_INTERVAL, now=True,
                   only_if=leading("sweep_orphans"))
        is_poller = leading("poll_prices")

        async def prices() -> None:  # the poller polls; the others read what it saved
            await (poller.poll() if await is_poller() else poller.reload())
        duties.add("poll_prices", prices, self.config.price_poll_interval, now=True)
        if self.config.retention_days > 0:
            async def collect() -> None:
                await sv.collect_garbage()
            duties.add("retention", collect, retention.SWEEP_INTERVAL, now=True,
                       only_if=leading("retention"))
        duties.start()

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.config.tls_cert is None or self.config.tls_key is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"tls_cert/tls_key: cannot load: {err}") from None
        return ctx

    def _port(self) -> int:
        """Port 0 picks a free port once and keeps it: agents of running jobs carry the
        controller URL, and must find the controller again after a restart."""
        if self.config.port:
            return self.config.port
        try:
            return int((self.state_dir / "port").read_text())
        except (OSError, ValueError):
            return 0

    def _url_host(self) -> str:
        return "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host

    def _take_lock(self) -> None:
        fd = os.open(self.state_dir / "controller.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"another controller is running on {self.state_dir}") from None
        self._lock_fd = fd

    def _make_providers(self) -> None:
        for cloud in self.config.clouds:
            if cloud in self.providers:
                continue
            if cloud == "local" and self.config.local_backend:
                # The local cloud's offerings, served by a simulated cloud over HTTP (the
                # fleet load generator, bench/fleet_cloud.py) instead of local processes.
                self.providers[cloud] = RemoteProvider(self.config.local_backend)
            elif cloud == "local":
                self.providers[cloud] = LocalProvider(self.config.local_cloud_dir or
                                                      self.state_dir / "local-cloud",
                                                      self.config.local_no_spot_zones)
            elif cloud == "aws":
                self.providers[cloud] = self._make_aws()
            elif cloud == "gcp":
                self.providers[cloud] = self._make_gcp()
            else:
                raise ConfigError(f"clouds: provider {cloud!r} is not available in this build")
        # Every cloud call is timed and counted; abilities (spot prices...) pass through.
        for cloud, provider in list(self.providers.items()):
            if not isinstance(provider, InstrumentedProvider):
                self.providers[cloud] = InstrumentedProvider(provider, self.metrics)

    async def _prepare_providers(self) -> None:
        """A cloud that cannot launch at all is refused now, with one line, not at every
        job's launch hours later."""
        for provider in self.providers.values():
            ready = ability(provider, NeedsPreparation)
            if ready is not None:
                await ready.prepare()

    def _make_aws(self) -> Provider:
        try:
            from skyjobs.providers.aws import AwsConfig, AwsProvider
        except ImportError as err:
            raise ConfigError("clouds: aws needs the aws extra (pip install "
                              f"'skyjobs[aws]'): {err}") from None
        # Where status polls and the orphan sweep look for instances after a restart.
        regions = {o.region for o in self.catalog.offerings if o.cloud == "aws"}
        return AwsProvider(AwsConfig.from_env(), regions=regions)

    def _make_gcp(self) -> Provider:
        try:
            from skyjobs.providers.gcp.compute import GcpProvider
            from skyjobs.providers.gcp.config import GcpConfig
        except ImportError as err:
            raise ConfigError("clouds: gcp needs the gcp extra (pip install "
                              f"'skyjobs[gcp]'): {err}") from None
        zones = {o.zone for o in self.catalog.offerings if o.cloud == "gcp"}
        return GcpProvider(GcpConfig.from_env(), zones=zones)

    async def _load_evidence(self, store: st.Store) -> tuple[PreemptionMemory, PriceBook]:
        """The preemption memory and the price book, rebuilt from the store."""
        rows = await store.call(store.sync.zone_events_since, time.time() - MEMORY_HORIZON)
        memory = PreemptionMemory.from_records(
            ((r["cloud"], r["region"], r["zone"], r["instance_type"], bool(r["use_spot"])),
             r["kind"], r["at"], r["value"] if r["value"] is not None else 1.0) for r in rows)
        prices = PriceBook(self.config.price_max_age)
        for cloud, region, zone, itype, price, at in await store.call(store.sync.load_prices):
            prices.observe((cloud, region, zone, itype), price, at)
        return memory, prices

    def _watch(self, task: asyncio.Task[Any] | None) -> None:
        """A side task that ends on its own is a bug: stop loudly rather than limp."""
        if task is None:
            return
        self._side_tasks.append(task)

        def done(t: asyncio.Task[Any]) -> None:
            if t.cancelled() or self._stop.is_set():
                return
            log.error("side task died; stopping", task=t.get_name(),
                      error=repr(t.exception()) if t.exception() else None)
            self._died = self._died or t.get_name()
            self._stop.set()

        task.add_done_callback(done)

    # --- health ------------------------------------------------------------------------------

    async def _probe_store(self) -> None:
        """Is the store there (for the watchdog)? And is its schema still one this code
        knows: another controller of a newer version may have migrated it, and this one
        would misread what it added, so it stops (systemd restarts it on the new code)."""
        store = self.services.store
        while True:
            try:
                version = await store.call(store.sync.schema_version)
            except SkyjobsError as err:  # away for now: the watchdog judges how long
                log.warning("store probe failed", error=str(err))
            else:
                if version > len(st.MIGRATIONS):
                    raise ConfigError(f"the store's schema rose to version {version}, newer "
                                      f"than this skyjobs knows ({len(st.MIGRATIONS)}): "
                                      "stopping; upgrade skyjobs to run on it")
                self._store_ok_at = time.time()
            await asyncio.sleep(HEALTH_PROBE_INTERVAL)

    def healthy(self) -> bool:
        """For the systemd watchdog: the loop runs (we are called) and the store answers."""
        return time.time() - self._store_ok_at < HEALTH_STALE_AFTER

    def status_line(self) -> str:
        return f"{len(self.services.runners)} live jobs"

    # --- serve and shut down ---------------------------------------------------------------

    def request_stop(self) -> None:
        """First signal: stop within SHUTDOWN_GRACE. Second: stop without waiting."""
        if self._stop.is_set():
            log.warning("second stop signal: not waiting any longer")
            self._forced = True
        self._stop.set()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            sdnotify.notify("READY=1\nSTATUS=controller running")
            await self._stop.wait()
        finally:
            sdnotify.notify("STOPPING=1")
            try:
                await self.shutdown()
            finally:
                for sig in signals:
                    loop.remove_signal_handler(sig)
        if self._died:  # not asked to stop: exit non-zero so systemd restarts it
            raise SystemExit(f"skyjobs controller: {self._died} stopped working; exiting")

    async def shutdown(self, grace_s: float = SHUTDOWN_GRACE) -> None:
        """Stop taking work and exit; instances are left alone for the next start."""
        self._stop.set()
        grace = 0.0 if self._forced else grace_s
        if self._duties is not None:
            await self._duties.stop(grace)
        sv = self._services
        if sv is not None:
            sv.sessions.release_waiters()  # agents retry against the next start
        if self._http is not None:
            await self._http.cleanup()
        for side in self._side_tasks:
            side.cancel()
        if self._side_tasks:
            await asyncio.wait(self._side_tasks, timeout=max(grace, 0.1))
        if sv is not None:
            # Before the store closes; what is not delivered stays queued for the next start.
            await sv.webhooks.stop(grace=min(2.0, grace))
            await sv.runners.stop(grace)
            if self._keeper is not None:
                await self._keeper.stop()  # after the runners: no write follows the hand-back
        for provider in self.providers.values():
            await provider.close()
        if self._lease_store is not None:
            self._lease_store.close()
            self._lease_store = None
        if self._store is not None:
            self._store.close()
            self._store = None
        (self.state_dir / "controller.json").unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("controller stopped")
