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


class BadRequestError(ApiError):
    """The controller refused the request as malformed (HTTP 400); the message says why."""


class UnauthorizedError(ApiError):
    """The controller refused the token (HTTP 401): check SKYJOBS_TOKEN or the state dir."""


class ApiNotFoundError(ApiError, NotFoundError):
    """The controller has no such job, attempt or log (HTTP 404)."""


class ConflictError(ApiError):
    """The request lost a race with the job's state machine (HTTP 409)."""


def api_error(status: int, message: str) -> ApiError:
    """The ApiError subclass for an HTTP error status (any ApiError for others)."""
    kind = {400: BadRequestError, 401: UnauthorizedError, 404: ApiNotFoundError,
            409: ConflictError}.get(status, ApiError)
    return kind(status, message)


class StoreUnavailableError(SkyjobsError):
    """The database could not be reached or dropped the connection mid-call: the call's
    outcome is unknown; retry later from a fresh read (every write is compare-and-set)."""


class LeaseLostError(SkyjobsError):
    """This controller no longer owns the job (its lease expired and another controller
    took it, or it was handed back): stand down without touching the job again."""

    def __init__(self, job_id: int, owner: str | None = None) -> None:
        held = f"held by {owner}" if owner else "not held"
        super().__init__(f"job {job_id}: lease lost (now {held})")
        self.job_id = job_id
        self.owner = owner
