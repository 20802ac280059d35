"""The task spec: SkyPilot-style task YAML, validated with pydantic.

Everything a user can write is modelled here with ``extra="forbid"`` so that a misspelt or
unsupported key is rejected at submit with the key's path, never ignored. :func:`load_task`
turns any problem into one :class:`SpecError` line naming the file and the key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

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
MAX_DEPTH = 32
MAX_VALUES = 100_000


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


class JobRecovery(_Strict):
    """``resources.job_recovery``: a strategy name, or a mapping with these keys.

    ``deadline_hours`` (hours after submit) and ``expected_runtime_hours`` feed the
    DEADLINE_AWARE strategy; ``max_restarts_on_errors`` and ``recover_on_exit_codes`` bound
    restarts after user failures (exit codes in the list do not use up the budget).
    """

    strategy: str | None = None
    max_restarts_on_errors: int = Field(default=0, ge=0, le=MAX_RESTARTS)
    recover_on_exit_codes: tuple[Annotated[int, Field(ge=-255, le=255)], ...] = Field(
        default=(), max_length=MAX_EXIT_CODES)
    deadline_hours: float | None = Field(default=None, gt=0, le=MAX_HOURS)
    expected_runtime_hours: float | None = Field(default=None, gt=0, le=MAX_HOURS)

    @field_validator("strategy", mode="before")
    @classmethod
    def _known_strategy(cls, v: Any) -> Any:
        if v is None:
            return None
        name = v.strip().upper() if isinstance(v, str) else None
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
        return self


class ResourceChoice(_Strict):
    """One set of resource requirements (the top level, or one entry of any_of / ordered)."""

    cloud: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    region: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    zone: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    infra: str | None = Field(default=None, max_length=3 * MAX_NAME_CHARS)
    accelerators: tuple[Accelerator, ...] = ()
    cpus: Quantity | None = None
    memory: Quantity | None = None
    instance_type: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
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
        return None if v is None else v.canonical()

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


class TaskSpec(_Strict):
    """A validated task. Relative paths are already resolved against the YAML's directory."""

    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    resources: Resources = Resources()
    num_nodes: int = Field(default=1, ge=1, le=MAX_NODES)
    workdir: str | None = None
    file_mounts: dict[str, str | BucketMount] = {}
    setup: str | None = None
    run: str | None = None
    envs: dict[str, str | None] = {}
    secrets: dict[str, str | None] = {}

    @field_validator("envs", "secrets", mode="before")
    @classmethod
    def _env_values(cls, v: Any) -> Any:
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
        data.update(envs=envs, secrets=secrets)
        return parse_task(data, source=source)

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


def format_validation_error(err: ValidationError) -> str:
    errors = err.errors()
    # For ``str | BucketMount`` pydantic reports both branches; the mapping branch is the
    # one a user who wrote a mapping meant.
    preferred = [e for e in errors if e["loc"][-1:] != ("str",)] or errors
    first = preferred[0]
    loc = _path(tuple(p for p in first["loc"]
                      if not str(p).startswith("function-") and str(p) not in _UNION_TAGS))
    msg = " ".join(first["msg"].removeprefix("Value error, ").split())
    if first["type"] == "extra_forbidden":
        msg = "is not a supported key"
    more = f" (and {len(preferred) - 1} more problem(s))" if len(preferred) > 1 else ""
    return f"{loc}: {msg}{more}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def parse_task(data: Any, source: str = "task", base_dir: Path | None = None) -> TaskSpec:
    """Validate an already-loaded YAML document. Raises SpecError naming source and key."""
    source = _one_line(source) or "task"
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the task must be a YAML mapping")
    check_document(data, source)
    try:
        spec = TaskSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(f"{source}: {format_validation_error(err)}") from None
    if base_dir is not None:
        spec = _resolve_paths(spec, base_dir, source)
    return spec


def _local_path(base: Path, raw: str, where: str, source: str) -> Path:
    try:
        return (base / Path(raw).expanduser()).resolve()
    except (OSError, RuntimeError, ValueError) as err:  # no such ~user, a symlink loop
        raise SpecError(f"{source}: {where}: {_show(raw)}: {_one_line(str(err))}") from None


def _resolve_paths(spec: TaskSpec, base: Path, source: str) -> TaskSpec:
    updates: dict[str, Any] = {}
    if spec.workdir is not None:
        wd = _local_path(base, spec.workdir, "workdir", source)
        if not _exists(wd, directory=True):
            raise SpecError(f"{source}: workdir: {spec.workdir!r} is not a directory")
        updates["workdir"] = str(wd)
    mounts: dict[str, str | BucketMount] = {}
    for target, src in spec.file_mounts.items():
        if isinstance(src, str):
            where = f"file_mounts.{_label(target)}"
            path = _local_path(base, src, where, source)
            if not _exists(path):
                raise SpecError(f"{source}: {where}: {src!r} does not exist")
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


def read_task_document(path: str | Path) -> Any:
    """Read a task file and parse its YAML (not yet validated as a task)."""
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
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{p}: not a UTF-8 text file") from None
    return parse_yaml(text, str(p))


def load_task(path: str | Path) -> TaskSpec:
    """Read and validate a task YAML file; every problem becomes one SpecError line."""
    return load_task_document(path)[0]


def load_task_document(path: str | Path) -> tuple[TaskSpec, Any]:
    """The validated task and the YAML document it came from (read once)."""
    p = Path(path)
    data = read_task_document(p)
    try:
        base_dir = p.resolve().parent
    except (OSError, RuntimeError) as err:
        raise SpecError(f"{p}: cannot resolve its directory: {err}") from None
    return parse_task(data, source=str(p), base_dir=base_dir), data
