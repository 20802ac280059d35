"""Prometheus metrics of one controller, on a registry of its own.

A private registry (not prometheus_client's global one) so that two controllers in one
process (tests) never share or clash over counters. Gauges that mirror the store (jobs by
state, webhook backlog, cost) are set at scrape time from values the caller reads from the
store, so they can never drift from it; counters and histograms are fed as things happen.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from skyjobs.controller.looplag import LoopLagMonitor
from skyjobs.controller.store import ALL_STATES
from skyjobs.exceptions import CapacityError
from skyjobs.providers.base import InstanceInfo, LaunchRequest, Provider

T = TypeVar("T")

# The classic text format every Prometheus version reads. generate_latest emits exactly it
# for legacy-valid names like ours; newer clients label it 1.0.0, which old servers reject.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# From "the notice reached the controller" to "the job is RECOVERING": sub-second is the goal.
NOTICE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Cloud API calls: fast describes to slow multi-node launches.
PROVIDER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Event-loop lag: a healthy loop stays in the first buckets; 100 ms is the p99 target.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0)


# Label values are a closed set: free text in a label makes an unbounded number of series.
RECOVERY_CAUSES = ("notice", "preempted", "lost", "terminated", "agent_lost", "user_error",
                   "other")


class Metrics:
    def __init__(self, hooks: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._sizes: Callable[[], dict[str, int]] | None = None
        self.jobs = Gauge("skyjobs_jobs", "Jobs by state.", ["state"], registry=r)
        self.recoveries = Counter("skyjobs_recoveries_total", "Recoveries started, by cause.",
                                  ["cause"], registry=r)
        for cause in RECOVERY_CAUSES:
            self.recoveries.labels(cause=cause)
        self.release_failures = Counter(
            "skyjobs_release_failures_total",
            "Failed tries to terminate and confirm gone the instances of an ended attempt "
            "(each is retried by the reaper).", registry=r)
        self.agent_silences = Counter(
            "skyjobs_agent_silence_total",
            "Agents that went silent on a live instance (silent) and that came back (back).",
            ["change"], registry=r)
        for change in ("silent", "back"):
            self.agent_silences.labels(change=change)
        self.notice_to_recovering = Histogram(
            "skyjobs_notice_to_recovering_seconds",
            "Seconds from a preemption notice reaching the controller to RECOVERING.",
            buckets=NOTICE_BUCKETS, registry=r)
        self.provider_calls = Counter(
            "skyjobs_provider_api_calls_total",
            "Provider calls by cloud, operation and outcome (ok, capacity, error).",
            ["cloud", "op", "outcome"], registry=r)
        self.provider_seconds = Histogram(
            "skyjobs_provider_api_seconds", "Provider call duration.", ["cloud", "op"],
            buckets=PROVIDER_BUCKETS, registry=r)
        self.webhook_backlog = Gauge("skyjobs_webhook_backlog",
                                     "Webhook deliveries not yet acknowledged.", registry=r)
        self.webhook_failures = Counter("skyjobs_webhook_failures_total",
                                        "Failed webhook delivery attempts (each is retried).",
                                        ["hook"], registry=r)
        self.webhook_deliveries = Counter("skyjobs_webhook_deliveries_total",
                                          "Webhook deliveries acknowledged with a 2xx.",
                                          ["hook"], registry=r)
        self.duty_runs = Counter(
            "skyjobs_duty_runs_total",
            "Runs of periodic duties (instance poll, orphan sweep, price poll) by outcome: "
            "ok, failed, still_running (skipped: the last run is not done), missed.",
            ["duty", "outcome"], registry=r)
        self.dispatcher_crashes = Counter(
            "skyjobs_webhook_dispatcher_crashes_total",
            "Unexpected errors in the webhook dispatcher, by where they struck (each is "
            "retried after a capped exponential backoff).", ["site"], registry=r)
        for site in ("loop", "delivery"):
            self.dispatcher_crashes.labels(site=site)
        self.cost = Gauge("skyjobs_cost_dollars_total",
                          "Cost so far of every job, in USD (at the prices paid).", registry=r)
        self.savings = Gauge("skyjobs_savings_dollars_total",
                             "Savings so far against on-demand prices, in USD.", registry=r)
        for hook in hooks:
            # Present from the first scrape, so rate() and alerts see a 0 rather than nothing.
            self.webhook_failures.labels(hook=hook)
            self.webhook_deliveries.labels(hook=hook)

    def watch_loop(self, monitor: LoopLagMonitor) -> None:
        """Export an event-loop lag monitor: every sample into a histogram, and the max and
        p99 of its trailing window as gauges computed at scrape time."""
        r = self.registry
        lag = Histogram("skyjobs_event_loop_lag_seconds",
                        "How late the event loop ran a timer that was due (sampled every "
                        f"{monitor.interval:g}s).", buckets=LOOP_LAG_BUCKETS, registry=r)
        Gauge("skyjobs_event_loop_lag_max_seconds",
              f"Largest event-loop lag of the last {monitor.window:g}s.",
              registry=r).set_function(monitor.max)
        Gauge("skyjobs_event_loop_lag_p99_seconds",
              f"99th percentile of the event-loop lag over the last {monitor.window:g}s.",
              registry=r).set_function(lambda: monitor.quantile(0.99))
        monitor.add_sink(lag.observe)

    # --- events, fed as they happen ------------------------------------------------------

    def recovery(self, cause: str) -> None:
        self.recoveries.labels(cause=cause if cause in RECOVERY_CAUSES else "other").inc()

    def watch_sizes(self, sizes: Callable[[], dict[str, int]]) -> None:
        """Export the entries of the controller's in-memory maps (read at scrape time): each
        is bounded by live work and must return to its baseline when the jobs have ended."""
        self._sizes = sizes
        self.memory_entries = Gauge("skyjobs_memory_entries",
                                    "Entries in the controller's in-memory maps, by map.",
                                    ["map"], registry=self.registry)

    def release_failure(self) -> None:
        self.release_failures.inc()

    def agent_silence(self, change: str) -> None:
        self.agent_silences.labels(change=change).inc()

    def notice_latency(self, seconds: float) -> None:
        self.notice_to_recovering.observe(max(0.0, seconds))

    def provider_call(self, cloud: str, op: str, seconds: float, ok: bool, *,
                      outcome: str | None = None) -> None:
        self.provider_calls.labels(cloud=cloud, op=op,
                                   outcome=outcome or ("ok" if ok else "error")).inc()
        self.provider_seconds.labels(cloud=cloud, op=op).observe(max(0.0, seconds))

    def webhook_delivered(self, hook: str) -> None:
        self.webhook_deliveries.labels(hook=hook).inc()

    def duty_outcome(self, duty: str, outcome: str, count: int = 1) -> None:
        self.duty_runs.labels(duty=duty, outcome=outcome).inc(count)

    def webhook_dispatcher_crash(self, site: str) -> None:
        self.dispatcher_crashes.labels(site=site).inc()

    def webhook_failed(self, hook: str) -> None:
        self.webhook_failures.labels(hook=hook).inc()

    # --- scrape --------------------------------------------------------------------------

    def render(self, job_counts: dict[str, int], webhook_backlog: int, cost: float,
               savings: float) -> tuple[bytes, str]:
        """The exposition body and its content type, with store-backed gauges set first."""
        if self._sizes is not None:
            for name, n in self._sizes().items():
                self.memory_entries.labels(map=name).set(n)
        # Every known state gets a sample, so a state that empties drops to 0 instead of
        # keeping its last value.
        for state in sorted(ALL_STATES | set(job_counts)):
            self.jobs.labels(state=state).set(job_counts.get(state, 0))
        self.webhook_backlog.set(webhook_backlog)
        self.cost.set(cost)
        self.savings.set(savings)
        return generate_latest(self.registry), CONTENT_TYPE


class InstrumentedProvider:
    """A Provider that times every cloud call and counts its outcome into Metrics.

    Anything else (``set_spot_capacity`` of the local provider, a fake's knobs) passes
    through to the wrapped provider, reads and writes alike, so code and tests that poke
    the provider see no difference.
    """

    _OWN = frozenset({"_inner", "_metrics", "name"})

    def __init__(self, inner: Provider, metrics: Metrics) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_metrics", metrics)
        object.__setattr__(self, "name", inner.name)

    @property
    def inner(self) -> Provider:
        return self._inner

    async def launch(self, req: LaunchRequest) -> list[InstanceInfo]:
        return await self._timed("launch", self._inner.launch(req))

    async def status(self, instance_ids: list[str]) -> dict[str, InstanceInfo]:
        return await self._timed("status", self._inner.status(instance_ids))

    async def terminate(self, instance_ids: list[str]) -> None:
        await self._timed("terminate", self._inner.terminate(instance_ids))

    async def close(self) -> None:
        # Not a cloud API call: nothing to time.
        await self._inner.close()

    async def _timed(self, op: str, call: Awaitable[T]) -> T:
        start = time.perf_counter()
        try:
            result = await call
        except CapacityError:
            # An expected answer, not a fault: kept apart so error-rate alerts stay quiet.
            self._record(op, start, "capacity")
            raise
        except Exception:
            self._record(op, start, "error")
            raise
        self._record(op, start, "ok")
        return result

    def _record(self, op: str, start: float, outcome: str) -> None:
        self._metrics.provider_call(self.name, op, time.perf_counter() - start,
                                    outcome == "ok", outcome=outcome)

    def __getattr__(self, attr: str) -> Any:
        if attr in self._OWN:  # not set yet (copy, unpickling): never recurse
            raise AttributeError(attr)
        return getattr(self._inner, attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        if attr in self._OWN:
            object.__setattr__(self, attr, value)
        else:
            setattr(self._inner, attr, value)
