"""GCP launch settings, from ``SKYJOBS_GCP_*`` environment variables (docs/gcp.md).

Credentials are not a setting: Application Default Credentials find them (a service-account
key in ``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default login``, or the
controller VM's metadata server). ``anonymous`` exists for the tests' fake Compute API on
loopback and is refused anywhere else.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from skyjobs.exceptions import FatalProviderError

# Ubuntu for CPU-only machines; Google's Deep Learning VM image (CUDA, the NVIDIA driver
# installed at first boot when asked through metadata) for machines with GPUs.
DEFAULT_IMAGE = "projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64"
DEFAULT_GPU_IMAGE = ("projects/deeplearning-platform-release/global/images/family/"
                     "common-cu128-ubuntu-2204-nvidia-570")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _keyed(value: str) -> dict[str, str]:
    """``a`` or ``region=a,region2=b`` -> {"" or region: value} (as the AWS settings)."""
    out: dict[str, str] = {}
    for item in (p.strip() for p in value.split(",")):
        if item:
            key, sep, val = item.rpartition("=")
            out[key if sep else ""] = val.strip()
    return out


class GcpConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SKYJOBS_GCP_", frozen=True, extra="forbid",
                                      populate_by_name=True)

    project: str = ""  # empty: the project of the credentials
    endpoint_url: str | None = None  # Compute API root (tests: a fake on 127.0.0.1)
    anonymous: bool = False  # no credentials at all: only for a loopback endpoint
    image: str = DEFAULT_IMAGE
    gpu_image: str = DEFAULT_GPU_IMAGE
    network: str = "global/networks/default"
    subnetworks: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)  # region
    external_ip: bool = True  # the agent must reach the controller; off with Cloud NAT/VPN
    network_tags: Annotated[tuple[str, ...], NoDecode] = ()  # firewall rules select these
    service_account: str = ""  # email; empty: the project's default compute account
    scopes: Annotated[tuple[str, ...], NoDecode] = (
        "https://www.googleapis.com/auth/cloud-platform",)
    package_spec: str = ""  # empty: the agent the controller serves (docs/bootstrap.md)
    agent_user: str = ""
    threads: int = Field(default=16, ge=1, le=256)  # the blocking client's own pool
    call_timeout: float = Field(default=30.0, gt=0)  # per HTTP call
    operation_timeout: float = Field(default=180.0, gt=0)  # an insert's operation, at most

    @field_validator("subnetworks", mode="before")
    @classmethod
    def _keyed_values(cls, v: Any) -> Any:
        return _keyed(v) if isinstance(v, str) else v

    @field_validator("network_tags", "scopes", mode="before")
    @classmethod
    def _list(cls, v: Any) -> Any:
        return tuple(p.strip() for p in v.split(",") if p.strip()) if isinstance(v, str) else v

    @field_validator("endpoint_url", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _anonymous_only_on_loopback(self) -> GcpConfig:
        if self.anonymous and urlsplit(self.endpoint_url or "").hostname not in LOOPBACK:
            raise ValueError("anonymous credentials are only for a Compute API endpoint on "
                             "loopback (SKYJOBS_GCP_ENDPOINT_URL=http://127.0.0.1:PORT)")
        return self

    @classmethod
    def from_env(cls) -> GcpConfig:
        try:
            return cls()
        except (ValidationError, SettingsError) as err:
            raise FatalProviderError(f"SKYJOBS_GCP_* settings: {err}") from None

    def subnetwork_for(self, region: str) -> str | None:
        return self.subnetworks.get(region) or None
