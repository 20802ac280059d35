"""Every state, phase and reason the controller records, as enums, with the state machine.

String enums: a member is its own value in SQL, JSON and logs (``JobStatus.RUNNING ==
"RUNNING"``), so the store, the API and the CLI read the same words as before, and mypy
catches a misspelt one.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    PENDING = "PENDING"
    PROVISIONING = "PROVISIONING"
    RUNNING = "RUNNING"
    RECOVERING = "RECOVERING"
    CANCELLING = "CANCELLING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    FAILED_NO_RESOURCE = "FAILED_NO_RESOURCE"
    CANCELLED = "CANCELLED"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.FAILED_NO_RESOURCE,
                      JobStatus.CANCELLED})
LIVE = frozenset(JobStatus) - TERMINAL
ALL_STATES = frozenset(JobStatus)

_J = JobStatus
# The state machine. Anything not listed raises IllegalTransitionError.
TRANSITIONS: dict[JobStatus | None, frozenset[JobStatus]] = {
    None: frozenset({_J.PENDING}),
    _J.PENDING: frozenset({_J.PROVISIONING, _J.CANCELLING, _J.CANCELLED, _J.FAILED}),
    # PROVISIONING/RECOVERING -> SUCCEEDED: a job that finishes on its old placement while
    # a migration to a better one is under way.
    _J.PROVISIONING: frozenset({_J.RUNNING, _J.RECOVERING, _J.SUCCEEDED, _J.FAILED,
                                _J.FAILED_NO_RESOURCE, _J.CANCELLING}),
    # RUNNING -> PROVISIONING: a pipeline's task succeeded; its next task is launched.
    _J.RUNNING: frozenset({_J.SUCCEEDED, _J.FAILED, _J.RECOVERING, _J.CANCELLING,
                           _J.PROVISIONING}),
    # RECOVERING -> RUNNING: a migration abandoned before any replacement was launched.
    _J.RECOVERING: frozenset({_J.PROVISIONING, _J.RUNNING, _J.SUCCEEDED, _J.FAILED,
                              _J.FAILED_NO_RESOURCE, _J.CANCELLING}),
    _J.CANCELLING: frozenset({_J.CANCELLED}),
    **{t: frozenset() for t in TERMINAL},
}


class AttemptStatus(StrEnum):
    LAUNCHING = "launching"  # recorded, the cloud call may not have happened yet
    PROVISIONING = "provisioning"  # the cloud accepted the launch
    RUNNING = "running"  # every node runs the job
    ENDED = "ended"  # over; its instances may still need releasing (see ``released``)


class NodePhase(StrEnum):
    SETUP = "setup"
    READY = "ready"  # setup done, waiting for the go
    RUNNING = "running"
    EXITED = "exited"
    SETUP_FAILED = "setup_failed"


REPORTED_PHASES = frozenset({NodePhase.SETUP, NodePhase.READY, NodePhase.RUNNING})
EXITED_PHASES = frozenset({NodePhase.EXITED, NodePhase.SETUP_FAILED})


class EndReason(StrEnum):
    """Why an attempt ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the user's code failed (restarted or not)
    PREEMPTED = "preempted"  # the cloud's word: a notice or a spot-termination reason
    LOST = "lost"  # the instance vanished without a preemption reason
    TERMINATED = "terminated"  # someone outside skyjobs terminated it
    AGENT_LOST = "agent_lost"  # the instance looked alive, its agent went silent
    AGENT_FAILED = "agent_failed"  # instances came up, their agent never reported
    NO_CAPACITY = "no_capacity"
    LAUNCH_ERROR = "launch_error"
    PROVISION_TIMEOUT = "provision_timeout"
    MIGRATED = "migrated"  # left for a better placement
    SUPERSEDED = "superseded"  # the job ended on another attempt
    CANCELLED = "cancelled"
    MAX_DURATION = "max_duration"  # ran longer than job_recovery.max_duration_hours


# Only the cloud's own word makes a zone look risky.
PREEMPTED_ENDS = frozenset({EndReason.PREEMPTED})
# Each of these is a recovery (counted in recovery_count); only PREEMPTED is held against
# the zone.
RECOVERED_ENDS = frozenset({EndReason.PREEMPTED, EndReason.LOST, EndReason.TERMINATED,
                            EndReason.AGENT_LOST})
# A launch that never got going: these do not end a streak of agent failures.
LAUNCH_ENDS = frozenset({EndReason.NO_CAPACITY, EndReason.LAUNCH_ERROR,
                         EndReason.PROVISION_TIMEOUT})


class MessageKind(StrEnum):
    """What wakes a job's runner."""

    PHASE = "phase"  # a node reported a phase
    EXIT = "exit"  # a node exited
    NOTICE = "notice"  # a preemption notice was recorded
    GONE = "gone"  # the instance poll found an instance gone
    SILENT = "silent"  # an agent was silent past silent_window
    CANCEL = "cancel"
    WAKE = "wake"  # something else changed: re-read the store


class RecoveryCause(StrEnum):
    """The ``cause`` label of skyjobs_recoveries_total: a closed set."""

    NOTICE = "notice"
    PREEMPTED = "preempted"
    LOST = "lost"
    TERMINATED = "terminated"
    AGENT_LOST = "agent_lost"
    USER_ERROR = "user_error"
    OTHER = "other"
