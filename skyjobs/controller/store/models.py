"""The store's records: what a row of jobs or attempts means to the rest of the controller,
and the one cost formula (node-hours) that Python and SQL share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from skyjobs.exceptions import IllegalTransitionError
from skyjobs.pricing.catalog import Placement
from skyjobs.states import TRANSITIONS, AttemptStatus, EndReason, JobStatus, NodePhase


def check_transition(job_id: int, current: str | None, target: str) -> None:
    allowed = TRANSITIONS.get(JobStatus(current) if current is not None else None, frozenset())
    if target not in allowed:
        raise IllegalTransitionError(job_id, current, target)


@dataclass(frozen=True)
class Job:
    id: int
    name: str
    status: JobStatus
    task: dict[str, Any]
    task_id: str
    submitted_at: float
    updated_at: float
    ended_at: float | None
    recovery_count: int
    restart_count: int
    attempt_count: int
    current_attempt: int | None
    exit_code: int | None
    reason: str | None
    has_archive: bool
    launch_rounds: int  # rounds in a row in which no candidate had capacity
    array_id: int | None  # a job array (submit --num-jobs): the id of its first job
    array_rank: int | None  # this job's SKYPILOT_JOB_RANK in the array
    task_index: int  # a pipeline's task now running (0-based); 0 for a one-task job
    task_count: int


    def task_entry(self, index: int | None = None) -> dict[str, Any]:
        """One task of the job as stored: {"spec", "archive", "local_mounts"}. A pipeline
        keeps one per task under "tasks"; a one-task job is its own entry."""
        tasks = self.task.get("tasks")
        if not tasks:
            return self.task
        return dict(tasks[self.task_index if index is None else index])


@dataclass(frozen=True)
class Attempt:
    id: int
    job_id: int
    n: int
    status: AttemptStatus
    cloud: str
    region: str
    zone: str
    instance_type: str
    use_spot: bool
    price_per_hour: float
    num_nodes: int
    instance_ids: list[str]
    created_at: float
    running_at: float | None
    ended_at: float | None
    end_reason: EndReason | None
    exit_code: int | None
    notice_at: float | None
    notice_deadline: float | None
    released: bool
    ondemand_price: float | None  # what the same node-hours cost on-demand, for the saving
    task_index: int  # which of its pipeline's tasks this attempt runs

    def node_hours(self, until: float) -> float:
        return node_hours(self.created_at, self.ended_at, self.num_nodes, until)

    def cost(self, until: float) -> float:
        """Paid from launch to end (or ``until``): clouds bill from the launch request."""
        return self.node_hours(until) * self.price_per_hour

    def on_demand_cost(self, until: float) -> float:
        return self.node_hours(until) * (self.ondemand_price or self.price_per_hour)

    def placement_label(self) -> str:
        kind = "spot" if self.use_spot else "on-demand"
        return f"{self.cloud}/{self.zone}/{self.instance_type}/{kind}"


def node_hours(created_at: float, ended_at: float | None, num_nodes: int,
               until: float) -> float:
    """Node-hours billed from launch to end (or ``until``): clouds bill from the launch
    request. The one cost formula: Python callers and the store's SQL (as the SQL function
    ``node_hours``) both use it."""
    end = ended_at if ended_at is not None else until
    return max(0.0, min(end, until) - created_at) / 3600.0 * num_nodes


@dataclass(frozen=True)
class Snapshot:
    job: Job
    attempts: list[Attempt]
    current: Attempt | None
    nodes: dict[int, tuple[NodePhase, int | None]]

    @property
    def task_attempts(self) -> list[Attempt]:
        """The attempts of the task now running (a pipeline's earlier tasks are done)."""
        return [a for a in self.attempts if a.task_index == self.job.task_index]


ZoneEvent = tuple[Placement, str, float]  # (placement, kind, value) for preemption memory
# notice_and_recover's arguments: (job_id, attempt_id, at, deadline, info, zone_event)
Notice = tuple[int, int, float, float, str, ZoneEvent]


@dataclass(frozen=True)
class GcBatch:
    job_ids: list[int]
    archives: set[str]  # digests the removed jobs referenced
    counts: dict[str, int]  # rows removed per table


def _archives(task: dict[str, Any]) -> list[str]:
    """The archive digests a stored task references (one per pipeline task)."""
    entries = task.get("tasks") or [task]
    return [e["archive"] for e in entries if isinstance(e, dict) and e.get("archive")]


def _job(row: Any) -> Job:
    d = dict(row)
    d["task"] = json.loads(d.pop("task_json"))
    d["has_archive"] = bool(d["has_archive"])
    d["status"] = JobStatus(d["status"])
    return Job(**d)


def _attempt(row: Any) -> Attempt:
    d = dict(row)
    d["instance_ids"] = json.loads(d["instance_ids"])
    d["use_spot"] = bool(d["use_spot"])
    d["released"] = bool(d["released"])
    d["status"] = AttemptStatus(d["status"])
    d["end_reason"] = EndReason(d["end_reason"]) if d["end_reason"] is not None else None
    return Attempt(**d)
