"""The task spec: SkyPilot-style task YAML, validated with pydantic.

Everything a user can write is modelled here with ``extra="forbid"`` so that a misspelt or
unsupported key is rejected at submit with the key's path, never ignored. :func:`load_task`
turns any problem into one :class:`SpecError` line naming the file and the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from skyjobs.exceptions import SpecError

STRATEGIES = ("COST_AWARE", "EAGER_NEXT_REGION", "FAILOVER", "DEADLINE_AWARE")
DEFAULT_STRATEGY = "COST_AWARE"
BUCKET_SCHEMES = ("local://", "s3://", "gs://")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(\+?)\s*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Quantity(_Strict):
    """``4`` means exactly 4, ``4+`` at least 4 (SkyPilot semantics)."""

    value: float
    at_least: bool

    def admits(self, have: float) -> bool:
        return have >= self.value if self.at_least else abs(have - self.value) < 1e-9

    def __str__(self) -> str:
        return f"{self.value:g}{'+' if self.at_least else ''}"


def _parse_quantity(raw: Any) -> Quantity | None:
    if raw is None or isinstance(raw, Quantity):
        return raw
    if isinstance(raw, bool):
        raise ValueError("must be a number like 4 or 4+")
    if isinstance(raw, int | float):
        return Quantity(value=float(raw), at_least=False)
    match = _QUANTITY.match(str(raw))
    if not match:
        raise ValueError(f"{raw!r} is not a number like 4 or 4+")
    return Quantity(value=float(match.group(1)), at_least=bool(match.group(2)))


class Accelerator(_Strict):
    name: str
    count: int = Field(gt=0)

    def __str__(self) -> str:
        return f"{self.name}:{self.count}"


def _parse_accelerators(raw: Any) -> tuple[Accelerator, ...]:
    """``V100``, ``V100:2``, ``{V100: 2}`` or a list/set of those (any one of them will do)."""
    if raw is None:
        return ()
    if isinstance(raw, dict):
        return tuple(_one_accelerator(f"{k}:{v if v is not None else 1}") for k, v in raw.items())
    if isinstance(raw, list | tuple | set):
        out: list[Accelerator] = []
        for item in raw:
            out.extend(_parse_accelerators(item))
        return tuple(out)
    if isinstance(raw, Accelerator):
        return (raw,)
    return (_one_accelerator(str(raw)),)


def _one_accelerator(text: str) -> Accelerator:
    name, _, count = text.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"{text!r} is not an accelerator like V100 or V100:2")
    try:
        n = float(count) if count.strip() else 1.0
    except ValueError:
        raise ValueError(f"{text!r}: count must be a whole number") from None
    if n <= 0 or n != int(n):
        raise ValueError(f"{text!r}: count must be a whole number above zero")
    return Accelerator(name=name, count=int(n))


class JobRecovery(_Strict):
    """``resources.job_recovery``: a strategy name, or a mapping with these keys.

    ``deadline_hours`` (hours after submit) and ``expected_runtime_hours`` feed the
    DEADLINE_AWARE strategy; ``max_restarts_on_errors`` and ``recover_on_exit_codes`` bound
    restarts after user failures (exit codes in the list do not use up the budget).
    """

    strategy: str | None = None
    max_restarts_on_errors: int = Field(default=0, ge=0)
    recover_on_exit_codes: tuple[int, ...] = ()
    deadline_hours: float | None = Field(default=None, gt=0)
    expected_runtime_hours: float | None = Field(default=None, gt=0)

    @field_validator("strategy", mode="before")
    @classmethod
    def _known_strategy(cls, v: Any) -> Any:
        if v is None:
            return None
        name = str(v).strip().upper()
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {v!r} (known: {', '.join(STRATEGIES)})")
        return name

    @field_validator("recover_on_exit_codes", mode="before")
    @classmethod
    def _codes(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return (v,)
        return v

    @model_validator(mode="after")
    def _deadline_needs_runtime(self) -> JobRecovery:
        if self.strategy == "DEADLINE_AWARE" and (
            self.deadline_hours is None or self.expected_runtime_hours is None
        ):
            raise ValueError("DEADLINE_AWARE needs deadline_hours and expected_runtime_hours")
        if (
            self.deadline_hours is not None
            and self.expected_runtime_hours is not None
            and self.expected_runtime_hours > self.deadline_hours
        ):
            raise ValueError("expected_runtime_hours is longer than deadline_hours")
        return self


class ResourceChoice(_Strict):
    """One set of resource requirements (the top level, or one entry of any_of / ordered)."""

    cloud: str | None = None
    region: str | None = None
    zone: str | None = None
    infra: str | None = None
    accelerators: tuple[Accelerator, ...] = ()
    cpus: Quantity | None = None
    memory: Quantity | None = None
    instance_type: str | None = None
    use_spot: bool | None = None

    @field_validator("accelerators", mode="before")
    @classmethod
    def _acc(cls, v: Any) -> Any:
        return _parse_accelerators(v)

    @field_validator("cpus", "memory", mode="before")
    @classmethod
    def _qty(cls, v: Any) -> Any:
        return _parse_quantity(v)

    @field_validator("cloud", "region", "zone", "instance_type", mode="before")
    @classmethod
    def _lower_str(cls, v: Any) -> Any:
        if v is None:
            return None
        if not isinstance(v, str) or not v.strip():
            raise ValueError("must be a non-empty string")
        return v.strip()

    @model_validator(mode="after")
    def _expand_infra(self) -> ResourceChoice:
        # SkyPilot's newer ``infra: aws/us-east-1/us-east-1a`` shorthand.
        if self.infra is None:
            return self
        parts = [p for p in self.infra.split("/") if p]
        if not 1 <= len(parts) <= 3 or parts[0] == "*":
            raise ValueError(f"infra {self.infra!r} is not cloud[/region[/zone]]")
        keys = ("cloud", "region", "zone")
        updates = dict(zip(keys, parts, strict=False))
        for key, value in updates.items():
            mine = getattr(self, key)
            if mine is not None and mine != value:
                raise ValueError(f"infra says {key} {value!r} but {key} is {mine!r}")
        return self.model_copy(update={**updates, "infra": None})

    @field_serializer("accelerators")
    def _ser_acc(self, v: tuple[Accelerator, ...]) -> list[str]:
        return [str(a) for a in v]

    @field_serializer("cpus", "memory")
    def _ser_qty(self, v: Quantity | None) -> str | None:
        return None if v is None else str(v)

    def set_fields(self) -> dict[str, Any]:
        """The requirements this choice actually states (unset ones are None or empty)."""
        return {k: getattr(self, k) for k in _CHOICE_KEYS if getattr(self, k) not in (None, ())}

    def merged(self, override: ResourceChoice) -> ResourceChoice:
        """This choice with every field the override states replaced (any_of/ordered entries)."""
        return ResourceChoice.model_validate({**self.set_fields(), **override.set_fields()})


_CHOICE_KEYS = ("cloud", "region", "zone", "accelerators", "cpus", "memory", "instance_type",
                "use_spot")


class Resources(ResourceChoice):
    job_recovery: JobRecovery = JobRecovery()
    any_of: tuple[ResourceChoice, ...] = ()
    ordered: tuple[ResourceChoice, ...] = ()

    @field_validator("job_recovery", mode="before")
    @classmethod
    def _recovery(cls, v: Any) -> Any:
        if v is None:
            return JobRecovery()
        if isinstance(v, str):
            return JobRecovery(strategy=v)
        return v

    @model_validator(mode="after")
    def _one_list(self) -> Resources:
        if self.any_of and self.ordered:
            raise ValueError("use any_of or ordered, not both")
        return self

    def choices(self) -> list[ResourceChoice]:
        """The concrete alternatives, in the user's order (meaningful only for ordered)."""
        base = ResourceChoice.model_validate(self.set_fields())
        alternatives = self.ordered or self.any_of
        if not alternatives:
            return [base]
        return [base.merged(alt) for alt in alternatives]

    @property
    def is_ordered(self) -> bool:
        return bool(self.ordered)

    @property
    def strategy(self) -> str:
        """The strategy that runs: the named one, else DEADLINE_AWARE for a job with a
        deadline and an expected runtime, else COST_AWARE."""
        jr = self.job_recovery
        if jr.strategy:
            return jr.strategy
        if jr.deadline_hours is not None and jr.expected_runtime_hours is not None:
            return "DEADLINE_AWARE"
        return DEFAULT_STRATEGY


class BucketMount(_Strict):
    source: str
    mode: Literal["MOUNT", "COPY"] = "MOUNT"

    @field_validator("mode", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return str(v).upper() if v is not None else "MOUNT"

    @field_validator("source")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(BUCKET_SCHEMES):
            raise ValueError(
                f"source {v!r} must start with one of {', '.join(BUCKET_SCHEMES)}")
        if not v.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError(f"source {v!r} has no bucket name")
        return v.rstrip("/")


class TaskSpec(_Strict):
    """A validated task. Relative paths are already resolved against the YAML's directory."""

    name: str | None = None
    resources: Resources = Resources()
    num_nodes: int = Field(default=1, ge=1, le=512)
    workdir: str | None = None
    file_mounts: dict[str, str | BucketMount] = {}
    setup: str | None = None
    run: str | None = None
    envs: dict[str, str | None] = {}
    secrets: dict[str, str | None] = {}

    @field_validator("envs", "secrets", mode="before")
    @classmethod
    def _env_values(cls, v: Any) -> Any:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError("must be a mapping of NAME: value")
        out: dict[str, str | None] = {}
        for key, value in v.items():
            if not isinstance(key, str) or not _ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if isinstance(value, dict | list):
                raise ValueError(f"{key}: value must be a string or number")
            out[key] = None if value is None else (
                str(value).lower() if isinstance(value, bool) else str(value))
        return out

    @field_validator("file_mounts", mode="before")
    @classmethod
    def _mounts(cls, v: Any) -> Any:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError("must be a mapping of REMOTE_PATH: source")
        for target in v:
            if not isinstance(target, str) or not target.startswith(("/", "~/")):
                raise ValueError(f"target {target!r} must be an absolute path or start with ~/")
        return v

    @field_validator("run", "setup", mode="before")
    @classmethod
    def _script(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, str):
            raise ValueError("must be a shell script (a string)")
        return v

    def buckets(self) -> dict[str, BucketMount]:
        return {t: m for t, m in self.file_mounts.items() if isinstance(m, BucketMount)}

    def local_mounts(self) -> dict[str, str]:
        return {t: m for t, m in self.file_mounts.items() if isinstance(m, str)}

    def with_env_overrides(self, overrides: dict[str, str]) -> TaskSpec:
        """Apply ``--env K=V``: a key goes to secrets if the task declares it a secret."""
        envs, secrets = dict(self.envs), dict(self.secrets)
        for key, value in overrides.items():
            (secrets if key in secrets else envs)[key] = value
        return self.model_copy(update={"envs": envs, "secrets": secrets})

    def missing_values(self) -> list[str]:
        return [k for k, v in {**self.envs, **self.secrets}.items() if v is None]


_UNION_TAGS = {"str", "BucketMount"}


def format_validation_error(err: ValidationError) -> str:
    errors = err.errors()
    # For ``str | BucketMount`` pydantic reports both branches; the mapping branch is the
    # one a user who wrote a mapping meant.
    preferred = [e for e in errors if e["loc"][-1:] != ("str",)] or errors
    first = preferred[0]
    loc = ".".join(str(p) for p in first["loc"]
                   if not str(p).startswith("function-") and str(p) not in _UNION_TAGS)
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "is not a supported key"
    more = f" (and {len(preferred) - 1} more problem(s))" if len(preferred) > 1 else ""
    return f"{loc or 'task'}: {msg}{more}"


def parse_task(data: Any, source: str = "task", base_dir: Path | None = None) -> TaskSpec:
    """Validate an already-loaded YAML document. Raises SpecError naming source and key."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the task must be a YAML mapping")
    try:
        spec = TaskSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(f"{source}: {format_validation_error(err)}") from None
    if base_dir is not None:
        spec = _resolve_paths(spec, base_dir, source)
    return spec


def _resolve_paths(spec: TaskSpec, base: Path, source: str) -> TaskSpec:
    updates: dict[str, Any] = {}
    if spec.workdir is not None:
        wd = (base / Path(spec.workdir).expanduser()).resolve()
        if not wd.is_dir():
            raise SpecError(f"{source}: workdir: {spec.workdir!r} is not a directory")
        updates["workdir"] = str(wd)
    mounts: dict[str, str | BucketMount] = {}
    for target, src in spec.file_mounts.items():
        if isinstance(src, str):
            path = (base / Path(src).expanduser()).resolve()
            if not path.exists():
                raise SpecError(f"{source}: file_mounts.{target}: {src!r} does not exist")
            mounts[target] = str(path)
        else:
            mounts[target] = src
    updates["file_mounts"] = mounts
    return spec.model_copy(update=updates)


def load_task(path: str | Path) -> TaskSpec:
    """Read and validate a task YAML file; every problem becomes one SpecError line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise SpecError(f"{p}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{p}: not a UTF-8 text file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "malformed YAML"
        raise SpecError(f"{p}: invalid YAML{where}: {problem}") from None
    return parse_task(data, source=str(p), base_dir=p.resolve().parent)
