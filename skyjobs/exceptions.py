"""One exception root for skyjobs; each subclass tells the caller what to do.

Policy code decides by class, never by message text.
"""

from __future__ import annotations


class SkyjobsError(Exception):
    """Root of every error skyjobs raises on purpose."""


class SpecError(SkyjobsError):
    """The task YAML is invalid: reject the submit, store nothing."""


class ConfigError(SkyjobsError):
    """The controller or CLI configuration is invalid."""


class NotFoundError(SkyjobsError):
    """A job, attempt or log that does not exist."""


class IllegalTransitionError(SkyjobsError):
    """A state change the state machine forbids, or lost a compare-and-set race."""

    def __init__(self, job_id: int, current: str | None, target: str) -> None:
        super().__init__(f"job {job_id}: cannot go from {current} to {target}")
        self.job_id = job_id
        self.current = current
        self.target = target


class ProviderError(SkyjobsError):
    """A cloud call failed in a way that is not about capacity: retry later."""


class CapacityError(ProviderError):
    """No capacity for this placement right now: try the next candidate."""


class FatalProviderError(ProviderError):
    """Auth, quota or configuration: retrying will not help, fail the launch fast."""


class ControllerUnavailableError(SkyjobsError):
    """The CLI could not reach the controller."""


class ApiError(SkyjobsError):
    """The controller answered a request with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
