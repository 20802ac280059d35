"""Compute Engine errors mapped onto the skyjobs exception classes, by code only.

GCE reports a failure in one of two places. A request it refuses outright comes back as an
HTTP error (google-api-core raises a ``GoogleAPICallError`` subclass per status, carrying
the body's ``errors[].reason``). A request it accepts and then cannot carry out, which is
how most capacity and many quota failures arrive, ends as an Operation in DONE state whose
``error.errors[].code`` names the problem (``ZONE_RESOURCE_POOL_EXHAUSTED`` ...), with the
HTTP status it would have had in ``httpErrorStatusCode``.

The runner acts on the class: CapacityError moves to the next candidate, FatalProviderError
fails the launch at once, any other ProviderError is retried later. Message texts are free
text GCE may reword; codes and reasons are the documented contract.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from skyjobs.exceptions import CapacityError, FatalProviderError, ProviderError

# Operation error codes: no room for this placement now; another zone or region may have it.
CAPACITY_CODES = frozenset({
    "ZONE_RESOURCE_POOL_EXHAUSTED",
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
    "UNSUPPORTED_OPERATION",  # e.g. this machine type or GPU is not offered in the zone
    # Quotas are per region (CPUS, NVIDIA_V100_GPUS, PREEMPTIBLE_...): another region of the
    # candidate list may still have some.
    "QUOTA_EXCEEDED",
})
# Operation codes worth retrying as they are.
TRANSIENT_CODES = frozenset({
    "RESOURCE_OPERATION_RATE_EXCEEDED",
    "OPERATION_CANCELED_BY_USER",  # cannot happen to our own inserts; retry if it does
    "INTERNAL_ERROR",
    "SERVICE_UNAVAILABLE",
})
# HTTP error reasons (``errors[].reason``) of a refused request.
CAPACITY_REASONS = frozenset({"quotaExceeded", "resourceExhausted", "ZONE_RESOURCE_POOL_EXHAUSTED"})
TRANSIENT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "backendError",
                               "internalError", "serviceUnavailable"})

HINTS = {
    401: "check the controller's Google credentials (Application Default Credentials)",
    403: "the controller's service account lacks a Compute Engine permission "
         "(roles/compute.instanceAdmin.v1 and roles/iam.serviceAccountUser; see docs/gcp.md)",
    404: "a configured image, network, subnetwork or machine type does not exist",
}


def _reasons(errors: Iterable[Any]) -> list[str]:
    out = []
    for e in errors or ():
        reason = e.get("reason") if isinstance(e, dict) else getattr(e, "reason", None)
        if reason:
            out.append(str(reason))
    return out


def from_api_error(err: Exception, what: str) -> ProviderError:
    """Map a google-api-core error (or a lookalike with ``code`` and ``errors``)."""
    status = getattr(err, "code", None)
    status = int(status) if isinstance(status, int) else None
    reasons = _reasons(getattr(err, "errors", None) or ())
    text = f"{what}: HTTP {status}: {getattr(err, 'message', None) or err}"
    if any(r in TRANSIENT_REASONS for r in reasons) or status in (408, 429) \
            or status is None or status >= 500:
        return _tag(ProviderError(text), status, reasons)
    if any(r in CAPACITY_REASONS for r in reasons):
        return _tag(CapacityError(text), status, reasons)
    # Any other 4xx: credentials, permissions, a malformed request or missing resource;
    # the same request will be refused again.
    hint = HINTS.get(status, "")
    return _tag(FatalProviderError(f"{text}{f' ({hint})' if hint else ''}"), status, reasons)


def from_operation(op: Any, what: str) -> ProviderError | None:
    """The error of a finished Operation (a ``compute_v1.Operation``), or None."""
    errors = list(getattr(getattr(op, "error", None), "errors", None) or [])
    if not errors:
        return None
    codes = [str(getattr(e, "code", "") or "") for e in errors]
    messages = "; ".join(f"{c}: {getattr(e, 'message', '')}" for c, e in
                         zip(codes, errors, strict=True))
    status = int(getattr(op, "http_error_status_code", 0) or 0) or None
    text = f"{what}: {messages}"
    if any(c in CAPACITY_CODES for c in codes):
        return _tag(CapacityError(text), status, codes)
    if any(c in TRANSIENT_CODES for c in codes) or status is None or status == 429 \
            or status >= 500:
        return _tag(ProviderError(text), status, codes)
    hint = HINTS.get(status, "")
    return _tag(FatalProviderError(f"{text}{f' ({hint})' if hint else ''}"), status, codes)


def is_status(err: Exception, *statuses: int) -> bool:
    return getattr(err, "gcp_status", None) in statuses


def _tag(err: ProviderError, status: int | None, codes: list[str]) -> ProviderError:
    # Callers (and tests) that need the exact cause read these, never the message.
    err.gcp_status = status  # type: ignore[attr-defined]
    err.gcp_codes = tuple(codes)  # type: ignore[attr-defined]
    return err
