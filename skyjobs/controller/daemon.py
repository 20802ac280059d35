"""The controller daemon: startup (resume from the store), main loop, shutdown.

One process, one event loop. A runner task per live job; named side tasks (the HTTP API and
the scheduler's periodic instance poll) are watched, and if one dies the daemon stops loudly
instead of limping. Shutdown never touches instances: the next start re-attaches to them.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import signal
import ssl
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from skyjobs.config import ControllerConfig
from skyjobs.controller import sdnotify
from skyjobs.controller import store as st
from skyjobs.controller.metrics import InstrumentedProvider, Metrics
from skyjobs.controller.reaper import Reaper
from skyjobs.controller.runner import JobRunner, Message
from skyjobs.controller.webhooks import WebhookDispatcher, store_hooks
from skyjobs.exceptions import ConfigError, IllegalTransitionError, ProviderError
from skyjobs.fsutil import atomic_write, private_dir, private_umask
from skyjobs.pricing.catalog import Catalog, Offering, Placement
from skyjobs.pricing.prices import PriceBook
from skyjobs.providers import base
from skyjobs.providers.base import LaunchRequest, Provider
from skyjobs.providers.local import LocalProvider
from skyjobs.recovery.memory import PreemptionMemory

log = structlog.get_logger("skyjobs.controller")

RUNNER_RESTART_DELAY = 5.0
RUNNER_MAX_DELAY = 60.0
# A runner that crashes this many times in a row (each within RUNNER_STABLE_AFTER of its
# restart) hits a deterministic bug: the job fails with the error instead of looping.
RUNNER_CRASH_BUDGET = 5
RUNNER_STABLE_AFTER = 600.0
ORPHAN_SWEEP_INTERVAL = 300.0
# The store must answer a probe this often, or the systemd watchdog stops being fed.
HEALTH_PROBE_INTERVAL = 5.0
HEALTH_STALE_AFTER = 20.0
MEMORY_HORIZON = 14 * 24 * 3600.0  # preemption evidence older than this has faded away


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
    def __init__(self, config: ControllerConfig, providers: dict[str, Provider] | None = None):
        self.config = config
        self.state_dir = config.state_dir
        self.catalog = Catalog.for_clouds(config.clouds)
        self._offering_index: tuple[Catalog | None, dict[tuple[str, str, str], Offering]] = (
            None, {})
        self.providers: dict[str, Provider] = providers or {}
        self.runners: dict[int, JobRunner] = {}
        self.runner_tasks: dict[int, asyncio.Task[None]] = {}
        self.go: set[int] = set()  # attempts whose agents may start run
        self.drain: set[int] = set()  # attempts asked to checkpoint and exit (migration)
        self._go_waiters: dict[int, asyncio.Event] = {}
        # Liveness runs on the monotonic clock: a wall-clock step must not recover every job.
        self.last_seen: dict[tuple[int, int], float] = {}
        self.silent_since: dict[int, float] = {}
        self._launched_at: dict[int, float] = {}
        self.started_mono = time.monotonic()
        self.launch_slots = asyncio.Semaphore(config.max_concurrent_launches)
        self.metrics = Metrics(hooks=[w.name for w in config.webhooks])
        self.webhooks: WebhookDispatcher | None = None
        self._store_ok_at = 0.0
        self.memory = PreemptionMemory()
        self.price_book = PriceBook(config.price_max_age)
        self.url = ""
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._lock_fd: int | None = None
        self._http: web.AppRunner | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._side_tasks: list[asyncio.Task[Any]] = []

    # --- startup ---------------------------------------------------------------------------

    async def start(self) -> None:
        # Task secrets, tokens and logs live here: nothing is created readable by others,
        # not even for an instant (SQLite's WAL and SHM files only honour the umask).
        private_umask()
        private_dir(self.state_dir)
        self._take_lock()
        for sub in ("logs", "archives", "buckets"):
            private_dir(self.state_dir / sub)
        self.token = read_or_create_secret(self.state_dir / "token")
        self.secret = read_or_create_secret(self.state_dir / "agent-secret").encode()
        self.store = st.Store(self.config.db_path, store_hooks(self.config.webhooks))
        os.chmod(self.config.db_path, 0o600)  # made by an older version under another umask
        # 64 bits: the orphan sweep terminates instances by this prefix, so two controllers
        # in one account must never share it (a state dir keeps the id it was given).
        cid = await self.store.call(self.store.sync.get_or_set_meta, "controller_id",
                                    secrets.token_hex(8))
        self.instance_prefix = f"sj{cid}"
        self._make_providers()
        self.reaper = Reaper(self.store, self.providers, on_released=self._released,
                             on_failure=self.metrics.release_failure)
        self.webhooks = WebhookDispatcher(self.store, self.config.webhooks, metrics=self.metrics)
        from skyjobs.controller.api import make_app  # late: api imports this module

        # Held long-polls must not hold up a shutdown for aiohttp's default minute.
        self._http = web.AppRunner(make_app(self), access_log=None, handle_signals=False,
                                   shutdown_timeout=2.0)
        await self._http.setup()
        site = web.TCPSite(self._http, self.config.host, self._port(),
                           ssl_context=self._ssl_context(), reuse_address=True)
        await site.start()
        port = self._http.addresses[0][1]
        atomic_write(self.state_dir / "port", str(port))
        scheme = "https" if self.config.tls_cert else "http"
        self.url = f"{scheme}://{self._url_host()}:{port}"
        await self._resume()
        self._watch(self.reaper.start())
        self._start_scheduler()
        self._store_ok_at = time.time()  # it just answered every resume query
        await self.webhooks.start()
        self._watch(self.webhooks.task)
        self._watch(asyncio.create_task(self._probe_store(), name="health-probe"))
        if sdnotify.watchdog_interval() is not None:  # systemd asked for pings
            self._watch(asyncio.create_task(
                sdnotify.watchdog_loop(self.healthy, self.status_line), name="watchdog"))
        atomic_write(self.state_dir / "controller.json",
                     json.dumps({"url": self.url, "pid": os.getpid()}))
        log.info("controller started", url=self.url, state_dir=str(self.state_dir),
                 live_jobs=len(self.runners))

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
            if cloud == "local":
                self.providers[cloud] = LocalProvider(self.state_dir / "local-cloud",
                                                      self.config.local_no_spot_zones)
            elif cloud == "aws":
                self.providers[cloud] = self._make_aws()
            else:
                raise ConfigError(f"clouds: provider {cloud!r} is not available in this build")
        # Every cloud call is timed and counted; extras (set_spot_capacity) pass through.
        self.providers = {c: p if isinstance(p, InstrumentedProvider)
                          else InstrumentedProvider(p, self.metrics)
                          for c, p in self.providers.items()}

    def _make_aws(self) -> Provider:
        try:
            from skyjobs.providers.aws import AwsConfig, AwsProvider
        except ImportError as err:
            raise ConfigError("clouds: aws needs the aws extra (pip install "
                              f"'skyjobs[aws]'): {err}") from None
        # Where status polls and the orphan sweep look for instances after a restart.
        regions = {o.region for o in self.catalog.offerings if o.cloud == "aws"}
        return AwsProvider(AwsConfig.from_env(), regions=regions)

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
            self._stop.set()

        task.add_done_callback(done)

    async def _load_evidence(self) -> None:
        """Rebuild the preemption memory and the price book from the store."""
        since = time.time() - MEMORY_HORIZON
        rows = await self.store.call(self.store.sync.zone_events_since, since)
        self.memory = PreemptionMemory.from_records(
            ((r["cloud"], r["region"], r["zone"], r["instance_type"], bool(r["use_spot"])),
             r["kind"], r["at"], r["value"] if r["value"] is not None else 1.0) for r in rows)
        for cloud, region, zone, itype, price, at in await self.store.call(
                self.store.sync.load_prices):
            self.price_book.observe((cloud, region, zone, itype), price, at)

    async def _resume(self) -> None:
        """Re-attach to every unfinished job; the reaper, started next, finishes cleaning
        up after every attempt that ended (a crash may have come before its terminate)."""
        await self._load_evidence()
        job_ids = await self.store.call(self.store.sync.live_job_ids)
        for job_id in job_ids:
            self.start_runner(job_id)

    def _released(self, attempt: st.Attempt) -> None:
        """The reaper confirmed an attempt's instances gone: its job may go on (the go gate
        of a replacement waits for exactly this)."""
        self.forget_attempt(attempt.id)
        self.post(attempt.job_id, Message("wake"))

    def _start_scheduler(self) -> None:
        self._scheduler = AsyncIOScheduler()
        self._scheduler.add_job(self.poll_instances, "interval", id="poll_instances",
                                seconds=self.config.instance_poll_interval,
                                max_instances=1, coalesce=True)
        self._scheduler.add_job(self.sweep_orphans, "interval", id="sweep_orphans",
                                seconds=ORPHAN_SWEEP_INTERVAL, next_run_time=datetime.now(UTC),
                                max_instances=1, coalesce=True)
        self._scheduler.add_job(self.poll_prices, "interval", id="poll_prices",
                                seconds=self.config.price_poll_interval,
                                next_run_time=datetime.now(UTC),
                                max_instances=1, coalesce=True)
        self._scheduler.start()

    # --- runners ---------------------------------------------------------------------------

    def start_runner(self, job_id: int) -> None:
        if job_id in self.runners:
            return
        runner = JobRunner(self, job_id)
        self.runners[job_id] = runner
        self.runner_tasks[job_id] = asyncio.create_task(self._run_job(runner),
                                                        name=f"job-{job_id}")

    async def _run_job(self, runner: JobRunner) -> None:
        """Run a job's runner; restart it after a cloud error (with backoff, for ever: an
        outage is not the job's fault) or a crash (up to RUNNER_CRASH_BUDGET in a row, then
        the job fails with the error: a deterministic bug must not loop for ever)."""
        crashes = provider_errors = 0
        try:
            while True:
                started = time.monotonic()
                try:
                    await runner.run()
                    return
                except ProviderError as err:
                    stable = time.monotonic() - started > RUNNER_STABLE_AFTER
                    provider_errors = 1 if stable else provider_errors + 1
                    runner.log.warning("provider call failed; retrying", error=str(err))
                except Exception as err:  # noqa: BLE001 - one job's bug must not stop the others
                    stable = time.monotonic() - started > RUNNER_STABLE_AFTER
                    crashes = 1 if stable else crashes + 1
                    runner.log.exception("job runner crashed", crashes=crashes)
                    if crashes >= RUNNER_CRASH_BUDGET:
                        await self._fail_crashed_job(runner.job_id, err, crashes)
                        return
                delay = min(RUNNER_MAX_DELAY,
                            RUNNER_RESTART_DELAY * 2 ** max(0, provider_errors + crashes - 1))
                await asyncio.sleep(delay)
        finally:
            self.runners.pop(runner.job_id, None)
            self.runner_tasks.pop(runner.job_id, None)

    async def _fail_crashed_job(self, job_id: int, err: Exception, crashes: int) -> None:
        """End a job whose runner keeps crashing; the reaper releases its instances."""
        first_line = (str(err).splitlines() or [""])[0][:300]
        reason = (f"controller error while managing this job ({crashes} crashes in a row): "
                  f"{type(err).__name__}: {first_line}")
        job = await self.store.call(self.store.sync.get_job, job_id)
        target = st.CANCELLED if job.status == st.CANCELLING else st.FAILED
        try:
            await self.store.call(self.store.sync.transition, job_id, target, reason)
        except IllegalTransitionError:
            return  # it ended meanwhile
        log.error("job failed: its runner kept crashing", job_id=job_id, error=reason)
        self.wake_webhooks()
        self.reaper.wake()

    def grant_go(self, attempt_id: int) -> None:
        self.go.add(attempt_id)
        waiter = self._go_waiters.pop(attempt_id, None)
        if waiter is not None:
            waiter.set()

    async def wait_go(self, attempt_id: int, wait_s: float) -> None:
        """Hold an agent's heartbeat until its attempt may start (or wait_s passes)."""
        waiter = self._go_waiters.setdefault(attempt_id, asyncio.Event())
        try:
            await asyncio.wait_for(waiter.wait(), wait_s)
        except TimeoutError:
            pass

    def heard(self, attempt_id: int, rank: int) -> None:
        """An agent of this attempt spoke (any request): it is alive."""
        self.last_seen[(attempt_id, rank)] = time.monotonic()

    def heard_any(self, attempt_id: int) -> bool:
        return any(k[0] == attempt_id for k in self.last_seen)

    def launched(self, attempt_id: int) -> None:
        """The cloud accepted this attempt's launch (instances may not be visible yet)."""
        self._launched_at[attempt_id] = time.monotonic()

    def post(self, job_id: int, msg: Message) -> None:
        runner = self.runners.get(job_id)
        if runner is not None:
            runner.post(msg)

    # --- helpers for runners and the API ---------------------------------------------------

    def offering_of(self, cloud: str, zone: str, instance_type: str) -> Offering | None:
        # Indexed per catalog object (tests swap the catalog before start()).
        catalog, index = self._offering_index
        if catalog is not self.catalog:
            index = {(o.cloud, o.zone, o.instance_type): o for o in self.catalog.offerings}
            self._offering_index = (self.catalog, index)
        return index.get((cloud, zone, instance_type))

    def placement_of(self, a: st.Attempt) -> Placement:
        offering = self.offering_of(a.cloud, a.zone, a.instance_type) or Offering(
            a.cloud, a.region, a.zone, a.instance_type, None, 0, 0, 0, a.price_per_hour,
            a.price_per_hour if a.use_spot else None, "", "attempt record")
        return Placement(offering, a.use_spot, a.price_per_hour)

    def agent_token(self, attempt_id: int) -> str:
        return hmac.new(self.secret, f"attempt:{attempt_id}".encode(), hashlib.sha256).hexdigest()

    def launch_request(self, job: st.Job, attempt: st.Attempt) -> LaunchRequest:
        url = self.config.advertise_url or self.url
        env = {"SKYJOBS_CONTROLLER_URL": url, "SKYJOBS_ATTEMPT_ID": str(attempt.id),
               "SKYJOBS_AGENT_TOKEN": self.agent_token(attempt.id)}
        return LaunchRequest(
            job_id=job.id, attempt_id=attempt.id, placement=self.placement_of(attempt),
            instance_ids=attempt.instance_ids,
            agent_env=[{**env, "SKYJOBS_NODE_RANK": str(r)} for r in range(attempt.num_nodes)],
            tags={"skyjobs-controller": self.instance_prefix, "skyjobs-job": str(job.id),
                  "skyjobs-attempt": str(attempt.n)})

    def on_recovery(self, cause: str, attempt: st.Attempt) -> None:
        """Count a recovery by its cause (a closed set: see Metrics.RECOVERY_CAUSES)."""
        self.metrics.recovery(cause)
        if attempt.notice_at is not None:
            self.metrics.notice_latency(time.time() - attempt.notice_at)

    def wake_webhooks(self) -> None:
        """Called after a transition: deliver its webhooks now, not at the next poll."""
        if self.webhooks is not None:
            self.webhooks.wake()

    # --- health and metrics ----------------------------------------------------------------

    async def _probe_store(self) -> None:
        while True:
            await self.store.call(self.store.sync.schema_version)
            self._store_ok_at = time.time()
            await asyncio.sleep(HEALTH_PROBE_INTERVAL)

    def healthy(self) -> bool:
        """For the systemd watchdog: the loop runs (we are called) and the store answers."""
        return time.time() - self._store_ok_at < HEALTH_STALE_AFTER

    def status_line(self) -> str:
        return f"{len(self.runners)} live jobs"

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

    def forget_attempt(self, attempt_id: int) -> None:
        """Drop in-memory bookkeeping of an attempt whose instances are gone."""
        self.go.discard(attempt_id)
        self.drain.discard(attempt_id)
        waiter = self._go_waiters.pop(attempt_id, None)
        if waiter is not None:
            waiter.set()  # answer a held heartbeat of an attempt that is over
        self.silent_since.pop(attempt_id, None)
        self._launched_at.pop(attempt_id, None)
        for key in [k for k in self.last_seen if k[0] == attempt_id]:
            del self.last_seen[key]

    # --- live prices -----------------------------------------------------------------------

    async def poll_prices(self) -> None:
        """Refresh spot prices of the offerings that live jobs can use, per provider."""
        from skyjobs.controller.prices import offerings_in_use

        wanted = await offerings_in_use(self)
        rows: list[tuple[str, str, str, str, float, float]] = []
        for cloud, offerings in wanted.items():
            source = getattr(self.providers.get(cloud), "spot_prices", None)
            if source is None or not offerings:
                continue
            keys = sorted({(o.region, o.zone, o.instance_type) for o in offerings})
            try:
                for region, zone, itype, price, at in await source(keys):
                    self.price_book.observe((cloud, region, zone, itype), price, at)
                    rows.append((cloud, region, zone, itype, price, at))
            except ProviderError as err:
                log.warning("price poll failed", cloud=cloud, error=str(err))
        if rows:
            await self.store.call(self.store.sync.save_prices, rows)

    # --- periodic instance poll ------------------------------------------------------------

    async def poll_instances(self) -> None:
        """One batch status call per provider for every live attempt; report what is gone
        and which agents have gone silent on a running instance."""
        attempts = [a for a in await self.store.call(self.store.sync.unreleased_attempts)
                    if a.status in ("provisioning", "running") and a.job_id in self.runners]
        by_cloud: dict[str, list[str]] = {}
        for a in attempts:
            by_cloud.setdefault(a.cloud, []).extend(a.instance_ids)
        infos: dict[str, base.InstanceInfo] = {}
        for cloud, ids in by_cloud.items():
            try:
                infos.update(await self.providers[cloud].status(ids))
            except ProviderError as err:
                log.warning("instance poll failed", cloud=cloud, error=str(err))
        now = time.monotonic()
        for a in attempts:
            gone = [infos[i] for i in a.instance_ids if i in infos
                    and infos[i].state in base.ENDING and not self._too_new(a, infos[i])]
            if gone:
                self.post(a.job_id, Message("gone", a.id, detail=gone[0]))
            elif (a.status == "running" or self.heard_any(a.id)) and all(
                    i in infos for i in a.instance_ids):
                await self._check_silence(a, now)

    def _too_new(self, a: st.Attempt, info: base.InstanceInfo) -> bool:
        """A just-launched instance the cloud does not list yet (EC2 is eventually
        consistent) is not gone; only past the grace does "not found" count."""
        if info.reason != base.NOT_FOUND or a.status == "running":
            return False
        since = self._launched_at.get(a.id, self.started_mono)
        return time.monotonic() - since < self.config.launch_visibility_grace

    async def sweep_orphans(self) -> None:
        """Terminate instances this controller launched that no unreleased attempt owns.

        Attempts are recorded before any launch, so an orphan means someone else's mistake
        (or a bug); each one is logged."""
        for cloud, provider in self.providers.items():
            lister = getattr(provider, "list_owned", None)
            if lister is None:
                continue
            try:
                listed = await lister(self.instance_prefix)
                # Read the owners after listing: an attempt is recorded before its launch, so
                # every instance listed already has its row (the other order races a launch).
                owned = {i for a in await self.store.call(self.store.sync.unreleased_attempts)
                         for i in a.instance_ids}
                orphans = [i for i in listed if i not in owned]
                if orphans:
                    log.warning("terminating orphan instances", cloud=cloud, ids=orphans)
                    await provider.terminate(orphans)
            except ProviderError as err:
                log.warning("orphan sweep failed", cloud=cloud, error=str(err))

    def _last_heard(self, a: st.Attempt, ranks: Iterable[int], now: float) -> float:
        # A node not heard yet is measured from its launch (or from this controller's start
        # for an attempt launched by an earlier one).
        never = max(self.started_mono, self._launched_at.get(a.id, self.started_mono))
        return min((self.last_seen.get((a.id, r), never) for r in ranks), default=now)

    async def _check_silence(self, a: st.Attempt, now: float) -> None:
        """``now`` is monotonic. Silence and its end are recorded as events (and counted),
        so a person can see an agent that went quiet before anything is recovered."""
        timeout = self.config.heartbeat_timeout
        # Heartbeats are in memory: the store is asked only about an attempt that went quiet
        # (its nodes that exited are allowed to be quiet).
        if now - self._last_heard(a, range(a.num_nodes), now) < timeout:
            await self._not_silent(a, now)
            return
        nodes = await self.store.call(self.store.sync.nodes_of, a.id)
        ranks = [r for r in range(a.num_nodes) if nodes.get(r, ("", None))[0] != "exited"]
        last = self._last_heard(a, ranks, now)
        if now - last < timeout:
            await self._not_silent(a, now)
            return
        if a.id not in self.silent_since:
            self.silent_since[a.id] = last
            self.metrics.agent_silence("silent")
            quiet = [r for r in ranks if now - self.last_seen.get((a.id, r), 0.0) >= timeout]
            await self.store.call(
                self.store.sync.add_info_event, a.job_id,
                f"agent on node {', '.join(map(str, quiet)) or '?'} silent for {now - last:.0f}s"
                f" (recovered as agent lost after silent_window "
                f"{self.config.silent_window:g}s)", a.n)
        since = self.silent_since[a.id]
        if now - since >= self.config.silent_window:
            self.post(a.job_id, Message(
                "silent", a.id, detail=f"agent silent for {now - since:.0f}s on a running "
                                       f"instance (silent_window {self.config.silent_window:g}s)"))

    async def _not_silent(self, a: st.Attempt, now: float) -> None:
        since = self.silent_since.pop(a.id, None)
        if since is not None:
            self.metrics.agent_silence("back")
            await self.store.call(self.store.sync.add_info_event, a.job_id,
                                  f"agent is back after {now - since:.0f}s of silence", a.n)

    # --- main loop and shutdown ------------------------------------------------------------

    def request_stop(self) -> None:
        if self._stop.is_set():
            log.warning("second stop signal: exiting now")
            os._exit(1)
        self._stop.set()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        sdnotify.notify("READY=1\nSTATUS=controller running")
        try:
            await self._stop.wait()
        finally:
            sdnotify.notify("STOPPING=1")
            await self.shutdown()

    async def shutdown(self, grace_s: float = 10.0) -> None:
        """Stop taking work and exit; instances are left alone for the next start."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        for waiter in self._go_waiters.values():
            waiter.set()  # answer held heartbeats now; agents retry against the next start
        if self._http is not None:
            await self._http.cleanup()
        for side in self._side_tasks:
            side.cancel()
        if self.webhooks is not None:
            # Before the store closes; what is not delivered stays queued for the next start.
            await self.webhooks.stop(grace=2.0)
        tasks = list(self.runner_tasks.values())
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        for provider in self.providers.values():
            await provider.close()
        if hasattr(self, "store"):
            self.store.close()
        (self.state_dir / "controller.json").unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("controller stopped")

