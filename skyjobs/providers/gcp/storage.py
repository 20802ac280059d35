"""gs:// checkpoint buckets, controller side: the submit-time check that a bucket is usable.

The controller uses google-cloud-storage, Google's official client: it resolves Application
Default Credentials (a key file, ``gcloud auth application-default login``, workload
identity or the VM's service account) and refreshes them, and it retries the errors GCS
documents as retryable, none of which we want to re-implement where a library can be
installed. Nodes cannot count on pip, so the agent speaks the GCS JSON API with urllib
instead (:mod:`skyjobs.node.gcs`) and needs nothing but the VM's metadata server; the two
agree only on the wire format and on what a ``gs://BUCKET[/PATH]`` source means. Everything
here blocks: the controller calls it through its GCP thread pool. The library is imported
inside the functions, since importing it takes about a second.
"""

from __future__ import annotations

import secrets
from typing import Any

from skyjobs.checkpoint.buckets import parse_bucket
from skyjobs.exceptions import FatalProviderError, ProviderError, SpecError

PROBE_PREFIX = ".skyjobs-probe-"
CHECK_DEADLINE = 30.0  # seconds the library may spend retrying one call
REQUEST_TIMEOUT = 20.0  # per HTTP request


def check_bucket(source: str, *, project: str | None, credentials: Any,
                 endpoint: str | None, deadline: float = CHECK_DEADLINE) -> None:
    """Fail a submit early unless the bucket exists and these credentials can list, write
    and delete in it (a probe object under the source's prefix, removed again).

    Raises SpecError for the bucket's own problems (missing, not ours), ProviderError for
    what is worth retrying later (5xx, 429, timeouts), FatalProviderError when there are
    no usable credentials at all. ``credentials=None`` means Application Default
    Credentials; ``endpoint`` points the client elsewhere (an emulator, tests).
    """
    scheme, name, prefix = parse_bucket(source)
    if scheme != "gs" or not name:
        raise SpecError(f"{source}: not a gs://BUCKET[/PATH] source")
    from google.api_core.exceptions import GoogleAPICallError, PreconditionFailed
    from google.api_core.exceptions import RetryError as ApiRetryError
    from google.auth.exceptions import GoogleAuthError
    from google.cloud import storage  # type: ignore[attr-defined]  # no stubs for it
    from google.cloud.storage.retry import DEFAULT_RETRY

    retry = DEFAULT_RETRY.with_timeout(deadline)
    key = (f"{prefix}/" if prefix else "") + PROBE_PREFIX + secrets.token_hex(6)
    client: Any = None
    what = "connect"
    try:
        # project=None is "no project" to this client (bucket and object calls need none);
        # it does not go looking for a default, which probes the metadata server off GCE.
        client = storage.Client(project=project, credentials=credentials,
                                client_options={"api_endpoint": endpoint} if endpoint else None)
        bucket = client.bucket(name)
        what = "list"
        # Listing answers 404 for a missing bucket and needs no storage.buckets.get, which
        # an object-level role (roles/storage.objectAdmin) does not grant.
        list(client.list_blobs(bucket, prefix=f"{prefix}/" if prefix else "", max_results=1,
                               retry=retry, timeout=REQUEST_TIMEOUT))
        what = "write"
        blob = bucket.blob(key)
        try:
            # ifGenerationMatch=0 makes the write safe to retry (the library retries
            # only conditional writes); 412 then means an earlier try of ours landed.
            blob.upload_from_string(b"probe", if_generation_match=0, retry=retry,
                                    timeout=REQUEST_TIMEOUT)
        except PreconditionFailed:
            blob.generation = None
        what = "delete"
        blob.delete(if_generation_match=blob.generation, retry=retry, timeout=REQUEST_TIMEOUT)
    except GoogleAPICallError as err:
        if err.code == 404 and what == "delete":
            return  # the probe is already gone: deleting worked on an earlier try
        raise _classify(source, name, what, err) from None
    except ApiRetryError as err:
        raise ProviderError(f"{source}: checking bucket {name}: {what} kept failing for "
                            f"{deadline:g}s ({_cause(err)})") from None
    except GoogleAuthError as err:
        raise _auth_error(source, name, what, err) from None
    except OSError as err:  # requests' ConnectionError and Timeout are OSErrors too
        raise ProviderError(f"{source}: checking bucket {name}: {what}: "
                            f"{type(err).__name__}: {err}") from None
    finally:
        if client is not None:
            client.close()  # its requests session holds sockets


def _classify(source: str, name: str, what: str, err: Any) -> Exception:
    code = err.code if isinstance(err.code, int) else None
    detail = f"{what}: HTTP {code}: {_api_message(err)[:200]}"
    if code == 404:
        return SpecError(f"{source}: bucket {name} does not exist")
    if code in (401, 403):
        return SpecError(f"{source}: the controller's GCP credentials cannot read and write "
                         f"bucket {name} ({detail})")
    if code is None or code in (408, 429) or code >= 500:
        return ProviderError(f"{source}: checking bucket {name}: {detail}")
    # Any other 4xx (an invalid bucket name, a bucket in a state we cannot use): the same
    # request would be refused again.
    return SpecError(f"{source}: bucket {name} cannot be used ({detail})")


def _api_message(err: Any) -> str:
    """GCS's own words: ``errors[].message`` of an API call, or the JSON body of an upload
    error (whose ``message`` the library fills with the method, URL and raw body)."""
    for entry in getattr(err, "errors", None) or ():
        if isinstance(entry, dict) and entry.get("message"):
            return str(entry["message"])
    response = getattr(err, "response", None)
    try:
        return str(response.json()["error"]["message"])  # type: ignore[union-attr]
    except (AttributeError, ValueError, KeyError, TypeError):
        return str(err.message or type(err).__name__)


def _auth_error(source: str, name: str, what: str, err: Exception) -> ProviderError:
    from google.auth.exceptions import DefaultCredentialsError, TransportError

    if isinstance(err, TransportError):  # the token endpoint could not be reached
        return ProviderError(f"{source}: checking bucket {name}: {what}: getting a GCP "
                             f"access token failed ({type(err).__name__})")
    if isinstance(err, DefaultCredentialsError):
        return FatalProviderError(f"{source}: no GCP credentials to check bucket {name} with "
                                  "(GOOGLE_APPLICATION_CREDENTIALS, gcloud auth "
                                  "application-default login, or a GCE service account)")
    return FatalProviderError(f"{source}: the controller's GCP credentials were refused "
                              f"while checking bucket {name} ({type(err).__name__}: {err})")


def _cause(err: Any) -> str:
    cause = getattr(err, "cause", None) or err.__cause__
    if cause is None:
        return "no answer"
    code = getattr(cause, "code", None)
    return f"HTTP {code}" if isinstance(code, int) else type(cause).__name__

