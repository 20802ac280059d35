"""The webhook payload (schema ``skyjobs.event/v1``), built from a transition.

Fields: ``schema``, ``idempotency_key`` (stable across retries: receivers deduplicate on it),
``event`` (recovering, recovered, succeeded, failed, cancelled, or transition), ``job``
(``id``, ``name``, ``task_id``), ``from``, ``to``, ``reason``, ``exit_code``, ``placement``,
``attempt``, ``recovery_count``, ``cost_so_far`` and ``saving_so_far`` (USD, against the same
node-hours on-demand), ``task`` (a pipeline's task, 1-based, and ``tasks``, how many; 1 and 1
for a plain job), ``time`` (ISO 8601 UTC) and ``at`` (epoch seconds). Secrets are never part
of it. The event ``task_done``: a pipeline's task succeeded and the next one starts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

SCHEMA = "skyjobs.event/v1"


def event_name(frm: str | None, to: str | None, recovery_count: int) -> str:
    if to == "RECOVERING":
        return "recovering"
    if to == "RUNNING" and recovery_count > 0:
        return "recovered"
    if to == "SUCCEEDED":
        return "succeeded"
    if to in ("FAILED", "FAILED_NO_RESOURCE"):
        return "failed"
    if to == "CANCELLED":
        return "cancelled"
    if frm == "RUNNING" and to == "PROVISIONING":
        return "task_done"
    return "transition"


def event_payload(*, event_id: int, hook: str, name: str, job_id: int, job_name: str,
                  task_id: str, frm: str | None, to: str | None, reason: str | None,
                  exit_code: int | None, attempt: int | None, placement: str | None,
                  recovery_count: int, cost: float, saving: float,
                  at: float, task: int = 1, tasks: int = 1) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "idempotency_key": f"skyjobs-{task_id}-event-{event_id}-{hook}",
        "event": name,
        "job": {"id": job_id, "name": job_name, "task_id": task_id},
        "from": frm, "to": to, "reason": reason, "exit_code": exit_code,
        "placement": placement, "attempt": attempt, "recovery_count": recovery_count,
        "task": task, "tasks": tasks,
        "cost_so_far": round(cost, 6),
        "saving_so_far": round(saving, 6),
        "time": datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z"),
        "at": at,
    }
