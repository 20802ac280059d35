"""The task spec: SkyPilot-style task YAML, validated with pydantic.

Everything a user can write is modelled here with ``extra="forbid"`` so that a misspelt or
unsupported key is rejected at submit with the key's path, never ignored. :func:`load_task`
turns any problem into one :class:`SpecError` line naming the file and the key; an unknown
key gets a "did you mean ...?" from the keys allowed at that level.

SkyPilot compatibility (every key ``sky jobs launch`` takes is accepted with SkyPilot's
meaning, accepted and ignored where it means nothing for a managed job, or refused with one
line saying why and what to use instead):

- task: ``name``, ``workdir`` (a local directory; a git ``{url, ref}`` is refused),
  ``num_nodes``, ``resources``, ``envs``, ``secrets`` (a mapping; the list form of managed
  secret names is refused), ``file_mounts``, ``setup``, ``run``. ``config``: SkyPilot's
  per-task config overrides; the ``kubernetes`` and ``ssh`` sections are ignored (skyjobs never
  places a job there, so they cannot change what it does), every other section is refused
  naming the section. ``volumes``: empty is accepted, any volume is refused (use a bucket).
  ``inputs``/``outputs`` (SkyPilot's egress hints) are ignored. ``event_callback``,
  ``service``, ``pool``, ``managed_secrets``, ``api_server_access`` and SkyPilot's internal
  keys are refused.
- resources (and each ``any_of``/``ordered`` alternative): ``cloud``, ``region``, ``zone``,
  ``infra``, ``accelerators`` (``gpus`` is its short form), ``cpus``, ``memory``,
  ``instance_type``, ``use_spot``, ``disk_size`` (GB), ``disk_tier``, ``ports``, ``labels``
  (instance tags / labels), ``image_id`` (one id, or region -> id with ``cloud`` given),
  ``accelerator_args`` (TPU only), ``autostop`` (ignored: a managed job's instances end with
  it), ``network_tier`` (``standard`` only). At the resources level only: ``job_recovery``
  (``spot_recovery`` is its old name), ``any_of``, ``ordered``.

Deprecation and "ignored" notes: :attr:`TaskSpec.warnings` holds one ``key.path: note`` line
per note (stored under ``_warnings``, so it survives ``model_dump``/``stored()`` and reads
back equal); :meth:`TaskSpec.notes` gives them as ``FILE: key.path: note`` lines to print.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from skyjobs.exceptions import SpecError

STRATEGIES = ("COST_AWARE", "EAGER_NEXT_REGION", "FAILOVER", "DEADLINE_AWARE")
DEFAULT_STRATEGY = "COST_AWARE"
BUCKET_SCHEMES = ("local://", "s3://", "gs://")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_QUANTITY = re.compile(r"\s*(\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)\s*(\+?)\s*", re.ASCII)
_COUNT = re.compile(r"\s*(\d{1,9})(?:\.0*)?\s*", re.ASCII)

# Upper bounds: far beyond any real task, low enough that every number fits a float, an
# SQLite integer and Python's int/str conversion, and stays exact through a JSON round trip.
MAX_NODES = 512
MAX_ACCELERATORS = 1024
MAX_QUANTITY = 1_000_000.0
MAX_HOURS = 24 * 366 * 10
MAX_RESTARTS = 10_000
MAX_EXIT_CODES = 256
MAX_NAME_CHARS = 256
# The document itself: a task is a few dozen values a handful of levels deep.
MAX_TASK_BYTES = 1 << 20
MAX_PIPELINE_DOCUMENTS = 65  # a pipeline's tasks, plus its optional name document
MAX_DEPTH = 32
MAX_VALUES = 100_000
MAX_DISK_GB = 64 * 1024  # the largest single boot disk AWS or GCP offer (64 TiB)
MAX_PORT_ENTRIES = 100
MAX_LABELS = 32  # AWS allows 50 tags per instance; skyjobs adds its own (skyjobs-*)
DISK_TIERS = ("low", "medium", "high", "ultra", "best")
# labels: the rules an AWS tag and a GCP label both satisfy.
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}", re.ASCII)
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}", re.ASCII)
_RESERVED_LABELS = ("skyjobs", "goog")
_PORT = re.compile(r"\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?", re.ASCII)
_DISK = re.compile(r"\s*(\d{1,9})\s*(?:([gt])(?:i?b)?)?\s*", re.ASCII | re.IGNORECASE)


def _show(value: Any, limit: int = 60) -> str:
    """A short printable form of a user's value for an error message (one line, bounded)."""
    if isinstance(value, bool | float) or value is None:
        text = repr(value)
    elif isinstance(value, int):
        text = str(value) if abs(value) < 10**limit else f"a {value.bit_length()}-bit number"
    elif isinstance(value, str):
        text = repr(value[: limit + 1])
    else:
        text = type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _label(part: Any) -> str:
    """One element of a key path: plain when printable, quoted otherwise."""
    if isinstance(part, str) and part and part.isprintable() and len(part) <= 60:
        return part
    return _show(part)


def _path(parts: tuple[Any, ...]) -> str:
    return ".".join(_label(p) for p in parts) or "task"


def _text_problem(text: str) -> str | None:
    if "\0" in text:
        return "contains a NUL byte"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 text"
    return None


def check_document(data: Any, source: str = "task") -> None:
    """Refuse what no field may hold, anywhere in the document, before the model sees it.

    NUL bytes and unpaired surrogates cannot reach a process's argv, environment or a path
    (the agent would fail to start the task on every attempt); nesting and size are bounded
    so validation and serialisation never recurse or loop without limit (YAML aliases can
    make a small file describe an exponentially large structure).
    """
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    count = 0
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_DEPTH:
            raise SpecError(f"{source}: {_path(path[:MAX_DEPTH])}: nested more than "
                            f"{MAX_DEPTH} levels deep")
        if isinstance(value, str):
            problem = _text_problem(value)
            if problem:
                raise SpecError(f"{source}: {_path(path)}: {problem}")
        elif isinstance(value, bytes | bytearray):
            raise SpecError(f"{source}: {_path(path)}: binary values are not supported")
        elif isinstance(value, Unreadable):
            raise SpecError(f"{source}: {_path(path)} (line {value.line}): {value.problem}")
        elif isinstance(value, float) and not math.isfinite(value):
            continue  # allowed here; each field says whether it takes inf or nan
        elif isinstance(value, dict):
            count += len(value)
            if count > MAX_VALUES:
                raise SpecError(f"{source}: more than {MAX_VALUES} values")
            for key, item in value.items():
                problem = _text_problem(key) if isinstance(key, str) else None
                if isinstance(key, Unreadable):
                    problem = key.problem
                if problem:
                    raise SpecError(f"{source}: {_path((*path, key))}: the key {problem}")
                stack.append((item, (*path, key)))
        elif isinstance(value, list | tuple | set | frozenset):
            count += len(value)
            if count > MAX_VALUES:
                raise SpecError(f"{source}: more than {MAX_VALUES} values")
            stack.extend((item, (*path, i)) for i, item in enumerate(value))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_KEY_ERROR = "skyjobs_key"


def _key_error(path: tuple[Any, ...], reason: str) -> PydanticCustomError:
    """A problem with the key at ``path`` below the model being validated (reported as
    ``model.path: reason`` by :func:`format_validation_error`)."""
    return PydanticCustomError(_KEY_ERROR, "{reason}", {"path": path, "reason": reason})


_INTERNAL = "is internal to SkyPilot, not part of a task; remove it"


class _Keys(_Strict):
    """A mapping level of the task: every key is known, accepted-and-normalised, or refused
    with its reason; an unknown one gets a suggestion from the keys accepted here."""

    # Keys accepted at this level that are not fields (normalised away by ``_prepare``).
    _also: ClassVar[tuple[str, ...]] = ()
    # Keys SkyPilot accepts here that skyjobs refuses: key -> why, and what to use instead.
    _refused: ClassVar[dict[str, str]] = {}

    @classmethod
    def _accepted(cls) -> list[str]:
        names = [f.alias or name for name, f in cls.model_fields.items()]
        return [*names, *cls._also]

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        accepted = cls._accepted()
        for key in data:
            if key in accepted:
                continue
            if isinstance(key, str) and key in cls._refused:
                raise _key_error((key,), cls._refused[key])
            if isinstance(key, str) and key.startswith("_"):
                raise _key_error((key,), _INTERNAL)
            raise _key_error((key,), "is not a supported key" + _suggest(key, accepted))
        return cls._prepare(dict(data))

    @classmethod
    def _prepare(cls, data: dict[Any, Any]) -> dict[Any, Any]:
        """Turn accepted non-field keys into fields (or drop them); the keys are known."""
        return data


def _suggest(key: Any, accepted: list[str]) -> str:
    if not isinstance(key, str):
        return ""
    public = {k.lower(): k for k in accepted if not k.startswith("_")}
    close = difflib.get_close_matches(key.strip().lower(), list(public), n=1, cutoff=0.6)
    return f"; did you mean {public[close[0]]}?" if close else ""


def _nested(path: tuple[Any, ...], err: ValidationError) -> PydanticCustomError:
    """A nested model's validation error, re-raised at ``path`` below the current model."""
    loc, msg, _ = _first_problem(err)
    return _key_error((*path, *loc), msg)


class Quantity(_Strict):
    """``4`` means exactly 4, ``4+`` at least 4 (SkyPilot semantics)."""

    value: float
    at_least: bool

    def admits(self, have: float) -> bool:
        return have >= self.value if self.at_least else abs(have - self.value) < 1e-9

    def __str__(self) -> str:
        return f"{self.value:g}{'+' if self.at_least else ''}"

    def canonical(self) -> str:
        """The stored form: parses back to exactly this quantity (``__str__`` rounds)."""
        number = str(int(self.value)) if self.value.is_integer() else repr(self.value)
        return f"{number}{'+' if self.at_least else ''}"


def _parse_quantity(raw: Any) -> Quantity | None:
    if raw is None or isinstance(raw, Quantity):
        return raw
    at_least = False
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ValueError("must be a number like 4 or 4+")
    if isinstance(raw, str):
        match = _QUANTITY.fullmatch(raw)
        if not match:
            raise ValueError(f"{_show(raw)} is not a number like 4 or 4+")
        raw, at_least = float(match.group(1)), bool(match.group(2))
    if not 0 <= raw <= MAX_QUANTITY:  # also refuses nan
        raise ValueError(f"{_show(raw)} is not a number from 0 to {MAX_QUANTITY:g}")
    return Quantity(value=float(raw), at_least=at_least)


class Accelerator(_Strict):
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    count: int = Field(gt=0, le=MAX_ACCELERATORS)

    def __str__(self) -> str:
        return f"{self.name}:{self.count}"


def _parse_accelerators(raw: Any) -> tuple[Accelerator, ...]:
    """``V100``, ``V100:2``, ``{V100: 2}`` or a list/set of those (any one of them will do)."""
    if raw is None:
        return ()
    if isinstance(raw, dict):
        return tuple(_one_accelerator(k, v) for k, v in raw.items())
    if isinstance(raw, list | tuple | set):
        out: list[Accelerator] = []
        for item in raw:
            out.extend(_parse_accelerators(item))
        return tuple(out)
    if isinstance(raw, Accelerator):
        return (raw,)
    if not isinstance(raw, str):
        raise ValueError(f"{_show(raw)} is not an accelerator like V100 or V100:2")
    name, sep, count = raw.partition(":")
    return (_one_accelerator(name, count if sep else None),)


def _one_accelerator(name: Any, count: Any) -> Accelerator:
    if not isinstance(name, str) or not name.strip() or ":" in name:
        raise ValueError(f"{_show(name)} is not an accelerator like V100 or V100:2")
    name = name.strip()
    n: Any = count
    if count is None or (isinstance(count, str) and not count.strip()):
        n = 1
    elif isinstance(count, str):
        match = _COUNT.fullmatch(count)
        n = int(match.group(1)) if match else None
    elif isinstance(count, float) and count.is_integer():
        n = int(count)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_ACCELERATORS:
        shown = _label(count) if isinstance(count, str) else _show(count)
        raise ValueError(f"{_label(name)}:{shown}: count must be a whole number above zero "
                         f"(at most {MAX_ACCELERATORS})")
    return Accelerator(name=name, count=n)


class JobRecovery(_Keys):
    """``resources.job_recovery`` (old name ``spot_recovery``): a strategy name, or a mapping.

    ``strategy``: one of STRATEGIES, any case; ``auto`` (seen in published YAMLs) or none
    means the default choice (see :attr:`Resources.strategy`). ``deadline_hours`` (hours after
    submit) and ``expected_runtime_hours`` feed the DEADLINE_AWARE strategy;
    ``max_restarts_on_errors`` and ``recover_on_exit_codes`` bound restarts after user
    failures (exit codes in the list do not use up the budget).

    ``max_duration_hours``: a cap on the job's running time (the runner fails a job that has
    run longer than this, across all its attempts), so a hung or runaway job cannot spend
    without bound. It cannot be shorter than ``expected_runtime_hours``.
    """

    strategy: str | None = None
    max_restarts_on_errors: int = Field(default=0, ge=0, le=MAX_RESTARTS)
    recover_on_exit_codes: tuple[Annotated[int, Field(ge=-255, le=255)], ...] = Field(
        default=(), max_length=MAX_EXIT_CODES)
    deadline_hours: float | None = Field(default=None, gt=0, le=MAX_HOURS)
    expected_runtime_hours: float | None = Field(default=None, gt=0, le=MAX_HOURS)
    max_duration_hours: float | None = Field(default=None, gt=0, le=MAX_HOURS)

    @field_validator("strategy", mode="before")
    @classmethod
    def _known_strategy(cls, v: Any) -> Any:
        if v is None:
            return None
        name = v.strip().upper() if isinstance(v, str) else None
        if name == "AUTO":
            return None
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {_show(v)} (known: {', '.join(STRATEGIES)})")
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
        if (
            self.max_duration_hours is not None
            and self.expected_runtime_hours is not None
            and self.expected_runtime_hours > self.max_duration_hours
        ):
            raise ValueError("expected_runtime_hours is longer than max_duration_hours")
        return self


def _as_recovery(v: Any) -> Any:
    if v is None:
        return JobRecovery()
    if isinstance(v, str):
        return {"strategy": v}
    return v


class AcceleratorArgs(_Keys):
    """``resources.accelerator_args``: SkyPilot's TPU settings (meaningful only on TPUs)."""

    runtime_version: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_CHARS)
    tpu_name: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_CHARS)
    tpu_vm: bool | None = None
    gcp_queued_resource: bool | None = None


def _parse_disk_size(raw: Any) -> int | None:
    """``500``, ``"500"``, ``"500GB"``, ``"1TB"`` (binary units, as SkyPilot) -> whole GB."""
    if raw is None:
        return None
    size: Any = raw
    if isinstance(raw, float) and raw.is_integer():
        size = int(raw)
    elif isinstance(raw, str):
        match = _DISK.fullmatch(raw)
        if not match:
            raise ValueError(f"{_show(raw)} is not a size like 500 (GB), 500GB or 1TB")
        unit = (match.group(2) or "g").lower()
        size = int(match.group(1)) * (1024 if unit == "t" else 1)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_DISK_GB:
        raise ValueError(f"{_show(raw)} is not a whole number of GB from 1 to {MAX_DISK_GB}")
    return size


def _parse_ports(raw: Any) -> tuple[str, ...]:
    """``8080``, ``"8080"``, ``"10000-10010"`` or a list of those -> canonical strings."""
    if raw is None:
        return ()
    items = list(raw) if isinstance(raw, list | tuple) else [raw]
    if len(items) > MAX_PORT_ENTRIES:
        raise ValueError(f"more than {MAX_PORT_ENTRIES} ports or ranges")
    out: list[str] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            low = high = item
        elif isinstance(item, str) and (match := _PORT.fullmatch(item)):
            low = int(match.group(1))
            high = int(match.group(2)) if match.group(2) else low
        else:
            raise ValueError(f"{_show(item)} is not a port like 8080 or a range like "
                             "10000-10010")
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"{_show(item)}: ports are 1 to 65535, a range low-high")
        text = str(low) if low == high else f"{low}-{high}"
        if text not in out:
            out.append(text)
    return tuple(out)


def _parse_labels(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("must be a mapping of key: value")
    if len(raw) > MAX_LABELS:
        raise ValueError(f"more than {MAX_LABELS} labels")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise _key_error((key,), "a label key must be 1-63 lowercase letters, digits, "
                                     "'_' or '-', starting with a letter (valid as an AWS tag "
                                     "and a GCP label)")
        if key.startswith(_RESERVED_LABELS):
            raise _key_error((key,), "keys starting with skyjobs or goog are reserved")
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**63:
            value = str(value)
        if not isinstance(value, str) or not _LABEL_VALUE.fullmatch(value):
            raise _key_error((key,), "a label value must be at most 63 lowercase letters, "
                                     "digits, '_' or '-' (valid as an AWS tag and a GCP label)")
        out[key] = value
    return out


def _one_image(raw: Any, where: str = "") -> str:
    if not isinstance(raw, str) or not raw.strip() or len(raw) > MAX_NAME_CHARS or any(
            c.isspace() for c in raw.strip()):
        raise ValueError(f"{where}{_show(raw)} is not an image id (like ami-0123456789abcdef0)")
    image = raw.strip()
    if image.lower().startswith("docker:"):
        raise ValueError(f"{where}docker images are not supported: skyjobs runs the task on "
                         "the VM; install what it needs in setup")
    if image.lower().startswith("skypilot:"):
        raise ValueError(f"{where}SkyPilot image tags are not supported; give the cloud's "
                         "image id (ami-... on AWS) or leave image_id out for the default")
    return image


def _parse_image_id(raw: Any) -> str | dict[str, str] | None:
    """One image id for every region, or ``{region: image id}`` (SkyPilot's form)."""
    if raw is None or isinstance(raw, str):
        return None if raw is None else _one_image(raw)
    if not isinstance(raw, dict) or not raw:
        raise ValueError("must be an image id, or a mapping of region: image id")
    out: dict[str, str] = {}
    for region, image in raw.items():
        if not isinstance(region, str) or not region.strip() or len(region) > MAX_NAME_CHARS:
            raise ValueError(f"{_show(region)} is not a region name")
        out[region.strip()] = _one_image(image, f"{region.strip()}: ")
    return out


_LIST_HINT = ("a list is not supported here; give alternatives under any_of, "
              "e.g. any_of: [{cloud: aws}, {cloud: gcp}]")
_AT_TOP = "applies to the whole job; give it once, at the resources level"
_CHOICE_REFUSED = {
    "volumes": "disk volumes are not supported; use disk_size for the boot disk, or a bucket "
               "in file_mounts",
    "ephemeral_storage": "is Kubernetes only; use disk_size",
    "local_disk": "is not supported; choose an instance_type that has local NVMe disks",
    "max_hourly_cost": "is not supported; narrow the choice with accelerators, instance_type "
                       "or any_of",
    "priority": "job priorities are not supported; skyjobs places jobs as they come",
    "priority_class": "job priorities are not supported; skyjobs places jobs as they come",
}


class ResourceChoice(_Keys):
    """One set of resource requirements (the top level, or one entry of any_of / ordered).

    Beyond placement (cloud, region, zone, accelerators, cpus, memory, instance_type,
    use_spot), a choice carries what its instances are launched with: ``disk_size`` (boot
    disk, whole GB), ``disk_tier``, ``ports`` (opened to the world, canonical "8080" or
    "10000-10010" strings), ``labels`` (instance tags on AWS, labels on GCP), ``image_id``
    (see :meth:`image_for`) and ``accelerator_args`` (TPU settings). ``gpus`` is read as
    ``accelerators``; ``autostop`` is accepted and ignored (a managed job's instances are
    terminated when it ends); ``network_tier`` may only be ``standard`` (the default).
    """

    _also: ClassVar[tuple[str, ...]] = ("gpus", "autostop", "network_tier")
    _refused = {**_CHOICE_REFUSED, "job_recovery": _AT_TOP, "spot_recovery": _AT_TOP,
                "any_of": "alternatives cannot be nested; list them all in one any_of",
                "ordered": "alternatives cannot be nested; list them all in one ordered"}

    cloud: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    region: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    zone: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    infra: str | None = Field(default=None, max_length=3 * MAX_NAME_CHARS)
    accelerators: tuple[Accelerator, ...] = ()
    cpus: Quantity | None = None
    memory: Quantity | None = None
    instance_type: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    use_spot: bool | None = None
    disk_size: int | None = Field(default=None, ge=1, le=MAX_DISK_GB)
    disk_tier: Literal["low", "medium", "high", "ultra", "best"] | None = None
    ports: tuple[str, ...] = ()
    labels: dict[str, str] = {}
    image_id: str | dict[str, str] | None = None
    accelerator_args: AcceleratorArgs | None = None

    @classmethod
    def _prepare(cls, data: dict[Any, Any]) -> dict[Any, Any]:
        if "gpus" in data:
            if "accelerators" in data:
                raise _key_error(("gpus",), "is the short form of accelerators; give one of "
                                            "them, not both")
            try:
                data["accelerators"] = _parse_accelerators(data.pop("gpus"))
            except ValueError as err:
                raise _key_error(("gpus",), str(err)) from None
        autostop = data.pop("autostop", None)
        if not (autostop is None or isinstance(autostop, bool | int | str) or (
                isinstance(autostop, dict) and all(
                    k in ("idle_minutes", "down", "wait_for", "hook", "hook_timeout")
                    for k in autostop))):
            raise _key_error(("autostop",), "must be true/false, idle minutes, or a mapping "
                                            "of idle_minutes/down (ignored for a managed job)")
        tier = data.pop("network_tier", None)
        name = tier.strip().lower() if isinstance(tier, str) else tier
        if name == "best":
            raise _key_error(("network_tier",), "best is not supported: skyjobs does not set "
                                                "up high-bandwidth networking (EFA, "
                                                "GPUDirect); use standard or leave it out")
        if name not in (None, "standard"):
            raise _key_error(("network_tier",), "must be standard or best")
        return data

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
        if isinstance(v, list | tuple):
            raise ValueError(_LIST_HINT)
        if not isinstance(v, str) or not v.strip():
            raise ValueError("must be a non-empty string")
        return v.strip()

    @field_validator("disk_size", mode="before")
    @classmethod
    def _disk(cls, v: Any) -> Any:
        return _parse_disk_size(v)

    @field_validator("disk_tier", mode="before")
    @classmethod
    def _tier(cls, v: Any) -> Any:
        name = v.strip().lower() if isinstance(v, str) else v
        if name is not None and name not in DISK_TIERS:
            raise ValueError(f"{_show(v)} is not a disk tier ({', '.join(DISK_TIERS)})")
        return name

    @field_validator("ports", mode="before")
    @classmethod
    def _ports(cls, v: Any) -> Any:
        return _parse_ports(v)

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, v: Any) -> Any:
        return _parse_labels(v)

    @field_validator("image_id", mode="before")
    @classmethod
    def _image(cls, v: Any) -> Any:
        return _parse_image_id(v)

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
        return None if v is None else v.canonical()

    def set_fields(self) -> dict[str, Any]:
        """The requirements this choice actually states (unset ones are None or empty)."""
        return {k: v for k in _CHOICE_KEYS
                if not ((v := getattr(self, k)) is None or v == () or v == {})}

    def merged(self, override: ResourceChoice) -> ResourceChoice:
        """This choice with every field the override states replaced (any_of/ordered entries)."""
        return ResourceChoice.model_validate({**self.set_fields(), **override.set_fields()})

    def image_for(self, region: str) -> str | None:
        """The user's image for an instance in ``region``: the one id, or the region's entry
        of a region -> id mapping (a mapping also limits placement to its regions); None when
        the user gave none (the provider's default image)."""
        if isinstance(self.image_id, dict):
            return self.image_id.get(region)
        return self.image_id


_CHOICE_KEYS = ("cloud", "region", "zone", "accelerators", "cpus", "memory", "instance_type",
                "use_spot", "disk_size", "disk_tier", "ports", "labels", "image_id",
                "accelerator_args")


class Resources(ResourceChoice):
    """``resources``: one choice, its job-wide recovery settings, and its alternatives.

    ``spot_recovery`` is read as ``job_recovery`` (its old name) and noted as deprecated.
    """

    _also = (*ResourceChoice._also, "spot_recovery")
    _refused = _CHOICE_REFUSED

    job_recovery: JobRecovery = JobRecovery()
    any_of: tuple[ResourceChoice, ...] = ()
    ordered: tuple[ResourceChoice, ...] = ()

    @classmethod
    def _prepare(cls, data: dict[Any, Any]) -> dict[Any, Any]:
        data = super()._prepare(data)
        if "spot_recovery" in data:
            if "job_recovery" in data:
                raise _key_error(("spot_recovery",), "is the old name of job_recovery; give "
                                                     "only job_recovery")
            try:
                data["job_recovery"] = JobRecovery.model_validate(
                    _as_recovery(data.pop("spot_recovery")))
            except ValidationError as err:
                raise _nested(("spot_recovery",), err) from None
        return data

    @field_validator("job_recovery", mode="before")
    @classmethod
    def _recovery(cls, v: Any) -> Any:
        return _as_recovery(v)

    @model_validator(mode="after")
    def _one_list(self) -> Resources:
        if self.any_of and self.ordered:
            raise ValueError("use any_of or ordered, not both")
        kind = "ordered" if self.ordered else "any_of"
        alternatives = self.ordered or self.any_of
        for index, choice in enumerate(self._merged_choices(kind)):
            # Name the alternative when it gave the image, else the resources level.
            where: tuple[Any, ...] = (
                (kind, index) if alternatives and alternatives[index].image_id is not None
                else ())
            if isinstance(choice.image_id, dict):
                if choice.cloud is None:
                    raise _key_error((*where, "image_id"), "a region -> image id mapping needs "
                                     "cloud (image ids differ per cloud)")
                if choice.region is not None and choice.region not in choice.image_id:
                    raise _key_error((*where, "image_id"),
                                     f"has no image for region {choice.region!r}")
        return self

    def _merged_choices(self, kind: str) -> list[ResourceChoice]:
        base = ResourceChoice.model_validate(self.set_fields())
        out = []
        for index, alt in enumerate(self.ordered or self.any_of):
            try:
                out.append(base.merged(alt))
            except ValidationError as err:
                raise _nested((kind, index), err) from None
        return out or [base]

    def choices(self) -> list[ResourceChoice]:
        """The concrete alternatives, in the user's order (meaningful only for ordered)."""
        return self._merged_choices("ordered" if self.ordered else "any_of")

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


class BucketMount(_Keys):
    """A bucket at a path on the node: ``source`` is its URL; MOUNT (default) or COPY."""

    _refused = {
        "name": "creating a bucket from a local source is not supported; give source: "
                "s3://BUCKET[/PATH] (or gs://, local://)",
        "store": "is implied by the source's scheme (s3://, gs://); remove it",
        "persistent": "is not supported: skyjobs never deletes buckets; remove it",
        "mount_options": "is not supported; remove it",
        "config": "is not supported; remove it",
    }

    source: str
    mode: Literal["MOUNT", "COPY"] = "MOUNT"

    @field_validator("mode", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        if v is None:
            return "MOUNT"
        return v.upper() if isinstance(v, str) else v

    @field_validator("source")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(BUCKET_SCHEMES):
            raise ValueError(
                f"source {v!r} must start with one of {', '.join(BUCKET_SCHEMES)}")
        if not v.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError(f"source {v!r} has no bucket name")
        return v.rstrip("/")


_CONFIG_IGNORED = {
    "kubernetes": "ignored: skyjobs does not place jobs on Kubernetes",
    "ssh": "ignored: skyjobs does not place jobs on SSH node pools",
}
_CONFIG_REFUSED = {
    "docker": "is not supported: skyjobs runs the task on the VM, not in a container",
    "nvidia_gpus": "is not supported: skyjobs does not change GPU settings; do it in setup",
    "hooks": "lifecycle hooks are not supported; handle SIGTERM in run, or use webhooks "
             "(docs/operations.md)",
    "jobs": "controller settings belong to the controller's configuration, not the task",
}
_CLOUD_CONFIG = ("per-task cloud settings are not supported; set them in the controller's "
                 "configuration (docs/operations.md)")


class TaskSpec(_Keys):
    """A validated task. Relative paths are already resolved against the YAML's directory.

    ``warnings``: notes about keys that were accepted but deprecated or ignored, one
    ``key.path: note`` line each (e.g. ``resources.spot_recovery: deprecated, use
    job_recovery``). Stored under ``_warnings`` (an internal key a task file may not give),
    so it survives ``model_dump``/:meth:`stored` and reads back equal; :meth:`notes` gives
    the lines prefixed with the task file's name, ready to print.
    """

    model_config = ConfigDict(serialize_by_alias=True)
    _also = ("config", "volumes", "inputs", "outputs")
    _refused = {
        "event_callback": "not supported: it would run user shell on the controller; use "
                          "webhooks (docs/operations.md)",
        "service": "serving is not a managed job; use SkyServe",
        "pool": "worker pools are not supported; submit managed jobs (--num-jobs for many)",
        "managed_secrets": "is not supported; give secrets: {NAME: null} and pass the value "
                           "at submit (--env NAME)",
        "api_server_access": "is not supported: a skyjobs task gets no API server "
                             "credentials; remove it",
        "file_mounts_mapping": _INTERNAL,
        "volume_mounts": _INTERNAL,
    }

    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    resources: Resources = Resources()
    num_nodes: int = Field(default=1, ge=1, le=MAX_NODES)
    workdir: str | None = None
    file_mounts: dict[str, str | BucketMount] = {}
    setup: str | None = None
    run: str | None = None
    envs: dict[str, str | None] = {}
    secrets: dict[str, str | None] = {}
    warnings: tuple[Annotated[str, Field(max_length=1000)], ...] = Field(
        default=(), alias="_warnings", max_length=100)

    @classmethod
    def _prepare(cls, data: dict[Any, Any]) -> dict[Any, Any]:
        notes: list[str] = []
        resources = data.get("resources")
        if isinstance(resources, dict):
            if "spot_recovery" in resources:
                notes.append("resources.spot_recovery: deprecated, use job_recovery")
            levels = [("resources", resources)]
            for kind in ("any_of", "ordered"):
                alts = resources.get(kind)
                if isinstance(alts, list | tuple):
                    levels += [(f"resources.{kind}.{i}", a) for i, a in enumerate(alts)
                               if isinstance(a, dict)]
            stops = [where for where, level in levels if "autostop" in level]
            if stops:  # one note, however many alternatives say it
                notes.append(f"{stops[0]}.autostop: ignored: a managed job's instances are "
                             "terminated when it ends")
        config = data.pop("config", None)
        if config is not None and not isinstance(config, dict):
            raise _key_error(("config",), "must be a mapping of SkyPilot config overrides")
        for key in config or {}:
            if key in _CONFIG_IGNORED:
                notes.append(f"config.{key}: {_CONFIG_IGNORED[key]}")
                continue
            if key in _CONFIG_REFUSED:
                reason = _CONFIG_REFUSED[key]
            elif key in ("aws", "gcp", "azure", "oci", "lambda", "runpod", "nebius", "ibm"):
                reason = _CLOUD_CONFIG
            else:
                reason = "is not a per-task override skyjobs honours; remove it"
            raise _key_error(("config", key), reason)
        if data.pop("volumes", None) not in (None, {}):
            raise _key_error(("volumes",), "not supported: skyjobs has no persistent volumes; "
                                           "use a bucket in file_mounts (source: s3://..., "
                                           "mode: MOUNT or COPY)")
        for key in ("inputs", "outputs"):
            if data.pop(key, None) is not None:
                notes.append(f"{key}: ignored: it is a hint for SkyPilot's optimizer")
        if notes:
            old = data.get("_warnings")
            data["_warnings"] = (*(old if isinstance(old, list | tuple) else ()), *notes)
        return data

    @model_validator(mode="after")
    def _more_notes(self) -> TaskSpec:
        r = self.resources
        args = r.accelerator_args is not None or any(
            c.accelerator_args is not None for c in (*r.any_of, *r.ordered))
        tpu = any(a.name.lower().startswith("tpu") for c in (r, *r.any_of, *r.ordered)
                  for a in c.accelerators)
        notes = list(self.warnings)
        if args and not tpu:
            notes.append("resources.accelerator_args: ignored: it is meaningful only for TPUs")
        notes = list(dict.fromkeys(notes))
        if tuple(notes) == self.warnings:
            return self
        return self.model_copy(update={"warnings": tuple(notes)})

    def notes(self, source: str = "task") -> list[str]:
        """The notes about deprecated or ignored keys, as ``SOURCE: key.path: note`` lines."""
        return [f"{_one_line(source) or 'task'}: {w}" for w in self.warnings]

    @field_validator("workdir", mode="before")
    @classmethod
    def _workdir(cls, v: Any) -> Any:
        if isinstance(v, dict):
            raise ValueError("a git repository (url/ref) is not supported; give a local "
                             "directory, or clone the repository in setup")
        return v

    @field_validator("envs", "secrets", mode="before")
    @classmethod
    def _env_values(cls, v: Any, info: ValidationInfo) -> Any:
        if info.field_name == "secrets" and isinstance(v, list | tuple):
            raise ValueError("a list of managed secret names is not supported; give a "
                             "mapping NAME: value (null: pass it at submit with --env NAME)")
        return _env_mapping(v)

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

    def with_env_overrides(self, overrides: Any, source: str = "--env") -> TaskSpec:
        """Apply ``--env K=V``: a key goes to secrets if the task declares it a secret.

        The overrides pass the same checks as the task's own ``envs``, and the result is
        validated as a whole, so what is stored is what the runner accepts later.
        """
        if not isinstance(overrides, Mapping) or not all(
                isinstance(v, str) for v in overrides.values()):
            raise SpecError(f"{source}: must be a mapping of NAME to string")
        try:
            checked = _env_mapping(dict(overrides))
        except ValueError as err:
            raise SpecError(f"{source}: {err}") from None
        envs, secrets = dict(self.envs), dict(self.secrets)
        for key, value in checked.items():
            (secrets if key in secrets else envs)[key] = value
        data = self.model_dump(mode="json")
        data.pop("_warnings", None)
        data.update(envs=envs, secrets=secrets)
        done = parse_task(data, source=source)
        notes = tuple(dict.fromkeys((*self.warnings, *done.warnings)))
        return done if notes == done.warnings else done.model_copy(update={"warnings": notes})

    def stored(self) -> dict[str, Any]:
        """The JSON form kept in the store; refuses a spec the runner could not read back."""
        data = self.model_dump(mode="json")
        try:
            again = TaskSpec.model_validate(data)
        except ValidationError as err:
            raise SpecError(f"task cannot be stored: {format_validation_error(err)}") from None
        if again != self:
            raise SpecError("task cannot be stored: it does not read back the same")
        return data

    def missing_values(self) -> list[str]:
        return [k for k, v in {**self.envs, **self.secrets}.items() if v is None]


def _env_mapping(v: Any) -> dict[str, str | None]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ValueError("must be a mapping of NAME: value")
    out: dict[str, str | None] = {}
    for key, value in v.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            raise ValueError(f"{_show(key)} is not a valid environment variable name")
        if value is None or isinstance(value, str):
            out[key] = value
        elif isinstance(value, bool):
            out[key] = str(value).lower()
        elif isinstance(value, int | float) and abs(value) < 10**30:
            out[key] = str(value)
        else:
            raise ValueError(f"{key}: value must be a string or a (short) number")
    return out


_UNION_TAGS = {"str", "BucketMount"}


def _first_problem(err: ValidationError) -> tuple[tuple[Any, ...], str, int]:
    """The first problem's key path and message, and how many more there are."""
    errors = err.errors()
    # For ``str | BucketMount`` pydantic reports both branches; the mapping branch is the
    # one a user who wrote a mapping meant.
    preferred = [e for e in errors if e["loc"][-1:] != ("str",)] or errors
    first = preferred[0]
    loc = tuple(p for p in first["loc"]
                if not str(p).startswith("function-") and str(p) not in _UNION_TAGS)
    msg = " ".join(first["msg"].removeprefix("Value error, ").split())
    if first["type"] == _KEY_ERROR:
        ctx = first.get("ctx") or {}
        loc = (*loc, *ctx.get("path", ()))
        msg = " ".join(str(ctx.get("reason", msg)).split())
    elif first["type"] == "extra_forbidden":
        msg = "is not a supported key"
    return loc, msg, len(preferred) - 1


def format_validation_error(err: ValidationError) -> str:
    loc, msg, more = _first_problem(err)
    tail = f" (and {more} more problem(s))" if more else ""
    return f"{_path(loc)}: {msg}{tail}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def parse_task(data: Any, source: str = "task", base_dir: Path | None = None,
               path_problems: list[str] | None = None) -> TaskSpec:
    """Validate an already-loaded YAML document. Raises SpecError naming source and key.

    With ``path_problems`` (a list), a missing workdir or local file_mounts source is
    appended to it as one line instead of refused (``skyjobs plan``: placement does not
    depend on them; submit still refuses them)."""
    source = _one_line(source) or "task"
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the task must be a YAML mapping")
    check_document(data, source)
    if "_warnings" in data:
        raise SpecError(f"{source}: _warnings: is internal to skyjobs; remove it")
    try:
        spec = TaskSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(f"{source}: {format_validation_error(err)}") from None
    if base_dir is not None:
        spec = _resolve_paths(spec, base_dir, source, path_problems)
    return spec


def _local_path(base: Path, raw: str, where: str, source: str) -> Path:
    try:
        return (base / Path(raw).expanduser()).resolve()
    except (OSError, RuntimeError, ValueError) as err:  # no such ~user, a symlink loop
        raise SpecError(f"{source}: {where}: {_show(raw)}: {_one_line(str(err))}") from None


def _resolve_paths(spec: TaskSpec, base: Path, source: str,
                   problems: list[str] | None = None) -> TaskSpec:
    def problem(error: SpecError) -> None:
        if problems is None:
            raise error
        problems.append(str(error))

    updates: dict[str, Any] = {}
    if spec.workdir is not None:
        try:
            wd = _local_path(base, spec.workdir, "workdir", source)
            if not _exists(wd, directory=True):
                problem(SpecError(f"{source}: workdir: {spec.workdir!r} is not a directory"))
            updates["workdir"] = str(wd)
        except SpecError as err:
            problem(err)
    mounts: dict[str, str | BucketMount] = {}
    for target, src in spec.file_mounts.items():
        if isinstance(src, str):
            where = f"file_mounts.{_label(target)}"
            try:
                path = _local_path(base, src, where, source)
            except SpecError as err:
                problem(err)
                mounts[target] = src
                continue
            if not _exists(path):
                problem(SpecError(f"{source}: {where}: {src!r} does not exist"))
            mounts[target] = str(path)
        else:
            mounts[target] = src
    updates["file_mounts"] = mounts
    return spec.model_copy(update=updates)


def _exists(path: Path, directory: bool = False) -> bool:
    try:
        return path.is_dir() if directory else path.exists()
    except OSError:  # a name too long, no permission on a parent
        return False


class _TaskLoader(yaml.SafeLoader):
    """PyYAML's safe loader, bounded: nesting deeper than MAX_DEPTH is refused while
    composing (the composer recurses per level), and a scalar that cannot be built (a
    5000-digit integer, a timestamp out of range) is a YAML error with its line."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH + 1:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError, AttributeError, LookupError) as err:
            # PyYAML's scalar constructors raise these for malformed values
            # (``!!timestamp`` with no value is an AttributeError).
            # Left in place so check_document can name the key it belongs to.
            self.recursive_objects.pop(node, None)
            value = Unreadable(node, err)
            self.constructed_objects[node] = value
            return value


class Unreadable:
    """A YAML scalar PyYAML could not turn into a value (refused by check_document)."""

    def __init__(self, node: Any, err: Exception) -> None:
        text = str(getattr(node, "value", ""))
        if text.strip().lstrip("+-").replace("_", "").isdigit() and len(text) > 30:
            self.problem = f"a {len(text)}-digit number is too long"
        else:
            self.problem = f"cannot read {_show(text)}: {_one_line(str(err))[:120]}"
        self.line = node.start_mark.line + 1


def parse_yaml(text: str, source: str = "task") -> Any:
    """The YAML document in text; any problem becomes one SpecError line with its place."""
    try:
        return yaml.load(text, Loader=_TaskLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "malformed YAML"
        raise SpecError(f"{source}: invalid YAML{where}: {_one_line(problem)}") from None
    except (ValueError, TypeError, OverflowError, AttributeError, LookupError,
            RecursionError) as err:
        # Raised by PyYAML outside construct_object (e.g. while filling a mapping).
        raise SpecError(f"{source}: invalid YAML: {_one_line(str(err))[:200]}") from None


def parse_yaml_documents(text: str, source: str = "task") -> list[Any]:
    """Every YAML document in text (a pipeline: documents separated by ``---``); problems
    are one SpecError line, as in parse_yaml."""
    try:
        docs = []
        for doc in yaml.load_all(text, Loader=_TaskLoader):  # noqa: S506 - a SafeLoader
            docs.append(doc)
            if len(docs) > MAX_PIPELINE_DOCUMENTS:
                raise SpecError(f"{source}: more than {MAX_PIPELINE_DOCUMENTS - 1} tasks")
        return docs
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "malformed YAML"
        raise SpecError(f"{source}: invalid YAML{where}: {_one_line(problem)}") from None
    except (ValueError, TypeError, OverflowError, AttributeError, LookupError,
            RecursionError) as err:
        raise SpecError(f"{source}: invalid YAML: {_one_line(str(err))[:200]}") from None


def read_task_text(path: str | Path) -> str:
    """A task file's text: bounded in size, UTF-8, one clear line when unreadable."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            raw = fh.read(MAX_TASK_BYTES + 1)
    except OSError as err:
        raise SpecError(f"{p}: cannot read: {err.strerror or err}") from None
    except ValueError as err:  # a NUL in the path
        raise SpecError(f"{_show(str(p))}: cannot read: {err}") from None
    if len(raw) > MAX_TASK_BYTES:
        raise SpecError(f"{p}: larger than {MAX_TASK_BYTES >> 20} MiB; not a task file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{p}: not a UTF-8 text file") from None


def read_task_document(path: str | Path) -> Any:
    """Read a task file and parse its YAML (not yet validated as a task)."""
    return parse_yaml(read_task_text(path), str(Path(path)))


def load_task(path: str | Path) -> TaskSpec:
    """Read and validate a task YAML file; every problem becomes one SpecError line."""
    return load_task_document(path)[0]


def load_task_document(path: str | Path,
                       path_problems: list[str] | None = None) -> tuple[TaskSpec, Any]:
    """The validated task and the YAML document it came from (read once). With
    ``path_problems``, missing local paths are noted there, not refused (see parse_task)."""
    p = Path(path)
    data = read_task_document(p)
    try:
        base_dir = p.resolve().parent
    except (OSError, RuntimeError) as err:
        raise SpecError(f"{p}: cannot resolve its directory: {err}") from None
    return parse_task(data, source=str(p), base_dir=base_dir,
                      path_problems=path_problems), data
