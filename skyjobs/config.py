"""Controller configuration in one typed place.

Precedence: command-line flags, then ``SKYJOBS_*`` environment variables, then
``<state-dir>/config.yaml``, then the defaults below. Every field is also an environment
variable: ``heartbeat_timeout`` is ``SKYJOBS_HEARTBEAT_TIMEOUT``.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError

from skyjobs.exceptions import ConfigError

DEFAULT_STATE_DIR = "~/.skyjobs"


def default_state_dir() -> Path:
    return Path(os.environ.get("SKYJOBS_STATE_DIR", DEFAULT_STATE_DIR)).expanduser()


WEBHOOK_EVENTS = ("recovering", "recovered", "succeeded", "failed", "cancelled", "task_done",
                  "all")


class WebhookConfig(BaseModel):
    """One webhook receiver. ``events`` picks what it hears; ``all`` is every transition."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: str = Field(pattern=r"^https?://")
    secret: str = Field(min_length=16)
    events: list[str] = ["recovering", "recovered", "succeeded", "failed", "cancelled"]
    format: str = Field(default="json", pattern="^(json|slack)$")

    @field_validator("events")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [e for e in v if e not in WEBHOOK_EVENTS]
        if unknown:
            raise ValueError(f"unknown event {unknown[0]!r} (known: {', '.join(WEBHOOK_EVENTS)})")
        return v


class ControllerConfig(BaseSettings):
    """Settings of the controller daemon (and of the local provider it embeds)."""

    model_config = SettingsConfigDict(env_prefix="SKYJOBS_", extra="forbid")

    state_dir: Path = Field(default_factory=default_state_dir)
    # PostgreSQL instead of the SQLite file in the state dir (postgresql://user@host/db):
    # the store several controllers share (docs/ha.md). Unset: SQLite, as always.
    database_url: str | None = Field(default=None, pattern=r"^postgres(ql)?://")
    # Each job is run by one controller holding its lease, renewed every third of this;
    # a controller that stops renewing loses its jobs to the others after it.
    lease_seconds: float = Field(default=30.0, ge=3)
    host: str = "127.0.0.1"
    # The URL agents on other machines use to reach this controller (for example
    # https://10.0.0.5:8765 on a controller VM); default: the address the API binds.
    advertise_url: str | None = Field(default=None, pattern=r"^https?://")
    port: int = Field(default=8765, ge=0, le=65535)
    clouds: Annotated[list[str], NoDecode] = ["local"]
    # Agents heartbeat this often; a silent agent is suspect after heartbeat_timeout and is
    # recovered only when the provider says its instance is gone or silent_window passes.
    heartbeat_interval: float = Field(default=5.0, gt=0)
    heartbeat_timeout: float = Field(default=30.0, gt=0)
    silent_window: float = Field(default=300.0, gt=0)
    # At most this many heartbeats (and log posts) per second from the whole fleet: past
    # heartbeat_interval x this many agents, the controller lengthens the interval it sends
    # in each heartbeat answer (and heartbeat_timeout with it). Notices and exits are
    # reported at once whatever the interval.
    max_heartbeat_rate: float = Field(default=200.0, gt=0)
    max_log_post_rate: float = Field(default=200.0, gt=0)
    # Ended jobs (their events, webhook deliveries, logs, workdir archives) are removed
    # this long after they ended (`skyjobs gc` runs the sweep by hand); 0 keeps them.
    retention_days: float = Field(default=30.0, ge=0)
    # How often the controller asks providers about all live instances (one batch call).
    instance_poll_interval: float = Field(default=10.0, gt=0)
    # An attempt whose agents have not all started running by then is given up.
    provision_timeout: float = Field(default=900.0, gt=0)
    # A just-launched instance the cloud does not list yet is not gone before this (EC2's
    # describe calls are eventually consistent).
    launch_visibility_grace: float = Field(default=60.0, ge=0)
    # No capacity anywhere: back off between rounds of trying every candidate.
    launch_backoff_initial: float = Field(default=30.0, ge=0)
    launch_backoff_factor: float = Field(default=1.6, ge=1)
    launch_backoff_max: float = Field(default=300.0, ge=0)
    max_launch_rounds: int = Field(default=20, ge=1)
    # Launch calls in flight at once, across jobs: clouds throttle bursts of launch calls,
    # and a mass preemption should not starve the controller of everything else. 64 lets a
    # reclaim of 1,000 instances request every replacement within 30 s at launch calls of up
    # to about 2 s (16 took 150 s in bench/fleet.py); EC2's RunInstances token bucket holds
    # 1,000 calls, and both providers retry a throttled call.
    max_concurrent_launches: int = Field(default=64, ge=1)
    # A zone that just preempted a job is ranked last for this long.
    zone_cooldown: float = Field(default=1800.0, ge=0)
    # Placement's cost model: seconds from launch to useful work (boot, setup, checkpoint
    # restore) and the typical checkpoint interval of jobs (work lost without a notice).
    restart_estimate: float = Field(default=180.0, ge=0)
    checkpoint_interval_estimate: float = Field(default=1800.0, gt=0)
    # A job with a deadline running on on-demand asks this often whether its slack allows
    # going back to spot (DEADLINE_AWARE), and migrates when it does.
    deadline_check_interval: float = Field(default=300.0, gt=0)
    # A migrated-from attempt gets this long to checkpoint and exit once its replacement is
    # ready, before it is terminated.
    migration_drain: float = Field(default=120.0, gt=0)
    # Live spot prices are refreshed this often for offerings live jobs can use.
    price_poll_interval: float = Field(default=300.0, gt=0)
    price_max_age: float = Field(default=3600.0, gt=0)
    # Preemption notice: how often agents poll the metadata endpoint, what the job gets.
    notice_poll_interval: float = Field(default=0.5, gt=0)
    notice_signal: str = "SIGTERM"
    # Seconds between COPY-mode checkpoint uploads.
    copy_sync_interval: float = Field(default=60.0, gt=0)
    # Local provider: zones currently without spot capacity.
    local_no_spot_zones: Annotated[list[str], NoDecode] = []
    # Local provider: where its instances live (default <state_dir>/local-cloud).
    # Controllers sharing a database share it, as they would share a cloud account.
    local_cloud_dir: Path | None = None
    # The local cloud served by a simulated cloud over HTTP (bench/fleet_cloud.py, the fleet
    # load generator) instead of local processes: its base URL, e.g. http://127.0.0.1:9000.
    local_backend: str | None = Field(default=None, pattern=r"^https?://")
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    # TLS for the API: both or neither.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    webhooks: list[WebhookConfig] = []
    # GET /metrics needs the API token unless this is set (a port only Prometheus reaches).
    metrics_public: bool = False
    # systemd watchdog: the daemon pings at half of WATCHDOG_USEC when systemd asks.

    @model_validator(mode="after")
    def _tls_pair(self) -> ControllerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        names = [w.name for w in self.webhooks]
        if len(names) != len(set(names)):
            raise ValueError("webhook names must be unique")
        return self

    @field_validator("state_dir", mode="after")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @field_validator("clouds", "local_no_spot_zones", mode="before")
    @classmethod
    def _csv(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @property
    def db_path(self) -> Path:
        return self.state_dir / "skyjobs.db"

    @property
    def store_target(self) -> Path | str:
        """What the store opens: the PostgreSQL URL when set, else the SQLite file."""
        return self.database_url or self.db_path

    @classmethod
    def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, ConfigFileSource(settings_cls)


class ConfigFileSource(PydanticBaseSettingsSource):
    """``<state-dir>/config.yaml`` as a pydantic-settings source, below the environment.

    The file's place depends on the state directory, itself a setting: load_config decides
    it first and hands it over through a context variable (settings sources are made by
    the class, with no per-call arguments)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        path = _CONFIG_FILE.get()
        return _read_config_file(path) if path is not None else {}


_CONFIG_FILE: ContextVar[Path | None] = ContextVar("skyjobs_config_file", default=None)


def load_config(**overrides: Any) -> ControllerConfig:
    """Build the config; ``overrides`` are command-line values (None means not given).
    Precedence: these, then ``SKYJOBS_*`` variables, then the state dir's config.yaml."""
    given = {k: v for k, v in overrides.items() if v is not None}
    state_dir = Path(given.get("state_dir") or default_state_dir()).expanduser()
    given["state_dir"] = state_dir
    token = _CONFIG_FILE.set(state_dir / "config.yaml")
    try:
        return ControllerConfig(**given)
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(p) for p in e["loc"]) or "config"
        raise ConfigError(f"config: {key}: {e['msg']}") from None
    except SettingsError as err:
        raise ConfigError(f"config: {err}") from None
    finally:
        _CONFIG_FILE.reset(token)


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a YAML mapping")
    return data
