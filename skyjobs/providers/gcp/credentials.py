"""Where Application Default Credentials come from, told without revealing them.

``skyjobs check`` and the docs need "found, from a service-account key" or "not found, and
where we looked"; never a key, a token or a refresh token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from skyjobs.providers.gcp.config import GcpConfig

WHERE_WE_LOOK = ("GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth application-default login`, "
                 "or the service account of the GCE VM this runs on")


@dataclass(frozen=True)
class FoundCredentials:
    ok: bool
    how: str
    project: str | None
    project_source: str


def _kind(creds: object) -> str:
    module = type(creds).__module__
    email = getattr(creds, "service_account_email", None)
    who = f" {email}" if isinstance(email, str) and "@" in email else ""
    if module.startswith("google.oauth2.service_account"):
        via = " (GOOGLE_APPLICATION_CREDENTIALS)" if os.environ.get(
            "GOOGLE_APPLICATION_CREDENTIALS") else ""
        return f"found: service-account key{who}{via}"
    if module.startswith("google.auth.compute_engine"):
        return "found: the VM's service account (metadata server)"
    if module.startswith("google.oauth2.credentials"):
        return "found: user credentials (gcloud auth application-default login)"
    if module.startswith("google.auth.impersonated_credentials"):
        return "found: impersonated service account"
    if module.startswith(("google.auth.external_account", "google.auth.identity_pool",
                          "google.auth.aws")):
        return "found: workload identity federation"
    return f"found: {type(creds).__name__}"


def describe_credentials(config: GcpConfig) -> FoundCredentials:
    """How ADC resolves on this machine (the same lookup the provider makes)."""
    if config.anonymous:
        return FoundCredentials(True, f"anonymous, for the loopback endpoint "
                                f"{config.endpoint_url}", config.project or None,
                                "SKYJOBS_GCP_PROJECT")
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError

    try:
        creds, project = google.auth.default(scopes=list(config.scopes))
    except DefaultCredentialsError as err:
        key_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        if key_file:
            # Named but unusable (missing, not JSON, a malformed key): say which file; its
            # content and the library's message (which may quote it) stay out.
            return FoundCredentials(False, f"cannot be read from GOOGLE_APPLICATION_CREDENTIALS"
                                    f"={key_file} ({type(err).__name__})",
                                    config.project or None, "SKYJOBS_GCP_PROJECT")
        return FoundCredentials(False, f"not found ({WHERE_WE_LOOK})", config.project or None,
                                "SKYJOBS_GCP_PROJECT")
    except GoogleAuthError as err:
        return FoundCredentials(False, f"cannot be read: {type(err).__name__}",
                                config.project or None, "SKYJOBS_GCP_PROJECT")
    if config.project:
        return FoundCredentials(True, _kind(creds), config.project, "SKYJOBS_GCP_PROJECT")
    return FoundCredentials(True, _kind(creds), project, "from the credentials")
