"""The HTTP API's requests and replies as pydantic models: one definition for three users.

- The controller's handlers validate every query string and JSON body with the request
  models here (``parse_request``), so what they accept is what these models say.
- ``skyjobs.openapi`` builds the OpenAPI document from the same models, so the contract
  published at ``/api/v1/openapi.json`` cannot drift from the checks.
- The SDK (``skyjobs.Client`` / ``skyjobs.AsyncClient``) parses replies into the reply
  models, so programs get typed ``Job``, ``Attempt``, ``Event`` and ``Placement`` objects.

Request models keep the controller's historical error messages: each field is checked by a
``before`` validator that raises the message a user already knows (``source must be a
string of at most 4096 characters``), and the annotation under it is what the schema shows.
Integers are never coerced from JSON booleans or floats (a bool is not a job id).

Reply models ignore unknown fields (``extra="ignore"``): a newer controller may add fields
without breaking an older SDK. Layer 0: only pydantic and the standard library.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

# Every integer from a request fits SQLite's signed 64-bit integer and a file offset.
INT64_MAX = 2**63 - 1
MAX_TEXT = 4096
MAX_NAME_CHARS = 256  # as skyjobs.spec (kept equal by tests/unit/test_sdk.py)
MAX_CANCEL_IDS = 10_000
MAX_ARRAY_JOBS = 1000
MAX_PIPELINE_TASKS = 64
MAX_NODES = 512
EXIT_CODE_RANGE = (-(2**31), 2**31 - 1)
JOB_STATES = ("PENDING", "PROVISIONING", "RUNNING", "RECOVERING", "CANCELLING", "SUCCEEDED",
              "FAILED", "FAILED_NO_RESOURCE", "CANCELLED")
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "FAILED_NO_RESOURCE", "CANCELLED"})
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}", re.ASCII)
M = TypeVar("M", bound=BaseModel)


class RequestError(ValueError):
    """A request the models refuse: ``str()`` is the one line the 400 reply carries."""


# --- helpers shared by the request models ----------------------------------------------------

def parse_int_text(value: str | None, lo: int, hi: int) -> int | None:
    """ASCII digits only (``int()`` takes '١' and '1_0'), within [lo, hi]; else None."""
    if value is None or not _INTEGER.fullmatch(value):
        return None
    n = int(value)
    return n if lo <= n <= hi else None


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _query_int(value: Any, name: str, default: int | None, lo: int, hi: int) -> int:
    """A query-string integer (the text as sent) within [lo, hi]."""
    if _is_int(value):  # a model built in Python rather than from a query string
        value = str(value)
    if value is None or value == "":
        if default is None:
            raise ValueError(f"{name} is required")
        return default
    n = parse_int_text(value, lo, hi) if isinstance(value, str) else None
    if n is None:
        raise ValueError(f"{name} must be an integer from {lo} to {hi}, not {_short(value)}")
    return n


def _text(value: Any, name: str) -> str | None:
    """An optional short string field of a request body ("" means not given)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ValueError(f"{name} must be a string of at most {MAX_TEXT} characters")
    return value


def _int_schema(lo: int, hi: int, **extra: Any) -> WithJsonSchema:
    return WithJsonSchema({"type": "integer", "minimum": lo, "maximum": hi, **extra})


def _first_error(err: ValidationError) -> str:
    first = err.errors(include_url=False)[0]
    msg = " ".join(str(first["msg"]).removeprefix("Value error, ").split())
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "value_error" or not loc:
        return msg  # our own messages name their field already
    if first["type"] == "missing":
        return f"{loc} is required"
    if first["type"] == "extra_forbidden":
        return f"unknown query parameter {_short(loc)}"
    return f"{loc}: {msg[:1].lower()}{msg[1:]}"


def parse_request(model: type[M], data: Any) -> M:
    """Validate a query (a mapping of text) or a JSON body; RequestError with one line."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise RequestError(_first_error(err)) from None


class _Request(BaseModel):
    # Unknown body keys are ignored, as the controller always did (older clients send
    # extras).
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Query(BaseModel):
    # A misspelt query parameter (``?limt=5``) is refused rather than silently ignored: the
    # reply would otherwise look like an answer to the question the caller asked.
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- user API: requests ------------------------------------------------------------------------

TaskDocument = Annotated[dict[str, Any], WithJsonSchema({
    "type": "object",
    "description": "A task as its YAML reads (docs/task-spec.md): name, resources, run, "
                   "setup, envs, secrets, num_nodes, file_mounts... The controller checks "
                   "it in full and names the first bad key in its 400.",
})]
Base64Archive = Annotated[str, WithJsonSchema({
    "type": "string", "contentEncoding": "base64",
    "description": "The workdir and local file mounts as a base64 tar.gz "
                   "(skyjobs.submission.build_archive).",
})]


class SubmitRequest(_Request):
    """``POST /api/v1/jobs``: one task (``task`` + ``archive``) or a pipeline (``tasks`` +
    ``archives``); ``envs`` override the task's envs (a declared secret stays secret)."""

    task: TaskDocument | None = None
    archive: Base64Archive | None = None
    tasks: Annotated[list[TaskDocument] | None,
                     Field(min_length=1, max_length=MAX_PIPELINE_TASKS)] = None
    archives: list[Base64Archive | None] | None = None
    source: Annotated[str | None, Field(max_length=MAX_TEXT)] = Field(
        default=None, description="Where the task came from (a file name), for messages.")
    name: Annotated[str | None, Field(max_length=MAX_NAME_CHARS)] = Field(
        default=None, description="The job's name (default: the task's name).")
    envs: dict[str, str] | None = None
    num_jobs: Annotated[int, Field(ge=1, le=MAX_ARRAY_JOBS)] = Field(
        default=1, description="A job array: this many jobs of the task.")

    @field_validator("source", "name", mode="before")
    @classmethod
    def _texts(cls, v: Any, info: Any) -> Any:
        v = _text(v, info.field_name)
        if info.field_name == "name" and v is not None and len(v) > MAX_NAME_CHARS:
            raise ValueError(f"name must be at most {MAX_NAME_CHARS} characters")
        return v

    @field_validator("task", "tasks", "envs", mode="wrap")
    @classmethod
    def _documents(cls, v: Any, handler: Any) -> Any:
        # The task documents and envs are checked by the task spec (skyjobs.spec), which
        # names the bad key inside them; the model only carries them there unchanged.
        return v

    @field_validator("archive", mode="before")
    @classmethod
    def _archive(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, str):
            raise ValueError("archive must be base64 text")
        return v or None

    @field_validator("archives", mode="before")
    @classmethod
    def _archives(cls, v: Any) -> Any:
        if v is not None and (not isinstance(v, list) or not all(
                a is None or isinstance(a, str) for a in v)):
            raise ValueError("archives must be a list with one entry (or null) per task")
        return v

    @field_validator("num_jobs", mode="before")
    @classmethod
    def _num_jobs(cls, v: Any) -> Any:
        if not _is_int(v) or not 1 <= v <= MAX_ARRAY_JOBS:
            raise ValueError(f"num_jobs must be a whole number from 1 to {MAX_ARRAY_JOBS}")
        return v

    @model_validator(mode="after")
    def _one_shape(self) -> SubmitRequest:
        if "tasks" in self.model_fields_set:
            if "task" in self.model_fields_set or "archive" in self.model_fields_set:
                raise ValueError("give task (one task) or tasks (a pipeline), not both")
            if not isinstance(self.tasks, list) or not 1 <= len(self.tasks) <= \
                    MAX_PIPELINE_TASKS:
                raise ValueError(f"tasks must be a list of 1 to {MAX_PIPELINE_TASKS} tasks")
            if self.archives is not None and len(self.archives) != len(self.tasks):
                raise ValueError("archives must be a list with one entry (or null) per task")
        return self

    def documents(self) -> tuple[list[Any], list[str | None]]:
        """(task documents, their archives), one entry each per task."""
        if "tasks" in self.model_fields_set:
            tasks = list(self.tasks or [])
            return tasks, list(self.archives or [None] * len(tasks))
        return [self.task], [self.archive]


class PlanRequest(_Request):
    """``POST /api/v1/plan``: rank every offering for a task, launching nothing."""

    task: TaskDocument
    source: Annotated[str | None, Field(max_length=MAX_TEXT)] = None

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, v: Any) -> Any:
        return _text(v, "source")

    @field_validator("task", mode="wrap")
    @classmethod
    def _document(cls, v: Any, handler: Any) -> Any:
        return v  # the task spec checks it (and says "the task must be a YAML mapping")

    @model_validator(mode="before")
    @classmethod
    def _task_present(cls, data: Any) -> Any:
        if isinstance(data, dict) and "task" not in data:
            return {**data, "task": None}  # refused by the spec with its own message
        return data


JobIds = Annotated[list[Annotated[int, Field(ge=1, le=INT64_MAX)]],
                   Field(min_length=1, max_length=MAX_CANCEL_IDS)]


class CancelRequest(_Request):
    """``POST /api/v1/cancel``: exactly one of ``ids``, ``name``, ``array`` or
    ``all: true``. Every id is checked before any job is touched."""

    ids: JobIds | None = None
    name: Annotated[str | None, Field(min_length=1, max_length=MAX_TEXT)] = None
    array: Annotated[int | None, Field(ge=1, le=INT64_MAX)] = None
    all: bool = False

    @field_validator("all", mode="before")
    @classmethod
    def _all(cls, v: Any) -> Any:
        if not isinstance(v, bool):
            raise ValueError("all must be true or false")
        return v

    @field_validator("ids", mode="before")
    @classmethod
    def _ids(cls, v: Any) -> Any:
        if v is not None and (not isinstance(v, list) or not 0 < len(v) <= MAX_CANCEL_IDS
                              or not all(_is_int(i) and 0 < i <= INT64_MAX for i in v)):
            raise ValueError(f"ids must be a list of 1 to {MAX_CANCEL_IDS} job ids "
                             "(or all: true)")
        return v

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: Any) -> Any:
        if v is not None and (not isinstance(v, str) or not 0 < len(v) <= MAX_TEXT):
            raise ValueError("name must be a job name")
        return v

    @field_validator("array", mode="before")
    @classmethod
    def _array(cls, v: Any) -> Any:
        if v is not None and (not _is_int(v) or not 0 < v <= INT64_MAX):
            raise ValueError("array must be a job array's id")
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> CancelRequest:
        given = (self.all, self.ids is not None, self.name is not None, self.array is not None)
        if sum(given) != 1:
            raise ValueError("give exactly one of ids, name, array or all: true")
        return self


class PreemptRequest(_Request):
    """``POST /api/v1/jobs/{job}/preempt`` (simulated markets only)."""

    notice: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=120, description="Seconds of notice before the instance dies.")

    @field_validator("notice", mode="before")
    @classmethod
    def _notice(cls, v: Any) -> Any:
        if not _is_number(v) or not 0 <= v <= 3600:
            raise ValueError("notice must be a number of seconds between 0 and 3600")
        return v


class GcRequest(_Request):
    """``POST /api/v1/gc``: run the retention sweep now."""

    older_than_days: Annotated[float | None, Field(ge=0, le=36500)] = Field(
        default=None, description="Remove jobs that ended longer ago than this "
                                  "(default: the controller's retention_days).")
    dry_run: bool = Field(default=False, description="Count, remove nothing.")

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        if isinstance(data, dict):
            days = data.get("older_than_days")
            if days is not None and (not _is_number(days) or not 0 <= days <= 36500):
                raise ValueError("older_than_days must be a number of days between 0 and "
                                 "36500")
            if not isinstance(data.get("dry_run", False), bool):
                raise ValueError("dry_run must be true or false")
        return data


class CapacityRequest(_Request):
    """``POST /api/v1/local/capacity``: take a local zone's spot capacity away or back."""

    zone: Annotated[str, Field(description="A zone of the local provider (local-a...).")]
    spot: bool

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if not isinstance(data.get("zone"), str):
                raise ValueError(f"zone must be a local zone's name, not "
                                 f"{_short(data.get('zone'))}")
            if not isinstance(data.get("spot"), bool):
                raise ValueError("spot must be true or false")
        return data


class WebhookTestRequest(_Request):
    """``POST /api/v1/webhooks/test``: send a sample event to one configured webhook."""

    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        name = data.get("name") if isinstance(data, dict) else None
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
            raise ValueError("name must be the name of a configured webhook")
        return data


class JobsQuery(_Query):
    """``GET /api/v1/jobs``: newest first; ``limit`` is clamped to 1..10000."""

    status: Annotated[str | None, Field(max_length=MAX_TEXT)] = Field(
        default=None, description=f"Comma-separated states ({', '.join(JOB_STATES)}), any "
                                  "case.")
    name: Annotated[str | None, Field(max_length=MAX_TEXT)] = None
    limit: Annotated[int, _int_schema(-INT64_MAX, INT64_MAX, default=1000)] = 1000
    offset: Annotated[int, _int_schema(-INT64_MAX, INT64_MAX, default=0)] = 0
    array: Annotated[int | None, _int_schema(0, INT64_MAX)] = Field(
        default=None, description="Only the jobs of this job array (its first job's id).")

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, v: Any) -> Any:
        statuses = [s.strip().upper() for s in (v or "").split(",") if s.strip()]
        unknown = [s for s in statuses if s not in JOB_STATES]
        if unknown:
            raise ValueError(f"unknown status {unknown[0]!r}")
        return ",".join(statuses) or None

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: Any) -> Any:
        if v is not None and len(v) > MAX_TEXT:
            raise ValueError("name is too long")
        return v or None

    @field_validator("limit", mode="before")
    @classmethod
    def _limit(cls, v: Any) -> Any:
        return min(max(_query_int(v, "limit", 1000, -INT64_MAX, INT64_MAX), 1), 10000)

    @field_validator("offset", mode="before")
    @classmethod
    def _offset(cls, v: Any) -> Any:
        return max(_query_int(v, "offset", 0, -INT64_MAX, INT64_MAX), 0)

    @field_validator("array", mode="before")
    @classmethod
    def _array(cls, v: Any) -> Any:
        return _query_int(v, "array", 0, 0, INT64_MAX) or None

    def statuses(self) -> list[str]:
        return self.status.split(",") if self.status else []


class EventsQuery(_Query):
    after: Annotated[int, _int_schema(-INT64_MAX, INT64_MAX, default=0)] = Field(
        default=0, description="Only events with a larger id (to poll for new ones).")

    @field_validator("after", mode="before")
    @classmethod
    def _after(cls, v: Any) -> Any:
        return _query_int(v, "after", 0, -INT64_MAX, INT64_MAX)


class LogsQuery(_Query):
    attempt: Annotated[int | None, _int_schema(-INT64_MAX, INT64_MAX)] = Field(
        default=None, description="Attempt number (default: the latest).")
    rank: Annotated[int, _int_schema(-INT64_MAX, INT64_MAX, default=0)] = Field(
        default=0, description="Node rank.")
    offset: Annotated[int, _int_schema(0, INT64_MAX, default=0)] = Field(
        default=0, description="Byte offset to read from (the last reply's next_offset).")

    @field_validator("attempt", mode="before")
    @classmethod
    def _attempt(cls, v: Any) -> Any:
        return None if v in (None, "") else _query_int(v, "attempt", None, -INT64_MAX,
                                                       INT64_MAX)

    @field_validator("rank", mode="before")
    @classmethod
    def _rank(cls, v: Any) -> Any:
        return _query_int(v, "rank", 0, -INT64_MAX, INT64_MAX)

    @field_validator("offset", mode="before")
    @classmethod
    def _offset(cls, v: Any) -> Any:
        return _query_int(v, "offset", 0, 0, INT64_MAX)


class PricesQuery(_Query):
    accelerator: str | None = Field(default=None, description="e.g. A100 (any case).")
    cloud: str | None = None


# --- agent API: requests -----------------------------------------------------------------------

def _rank_value(v: Any) -> int:
    """A node rank from a query string or a JSON body (range checked by the handler)."""
    if isinstance(v, str) or v is None:
        return _query_int(v, "rank", None, -INT64_MAX, INT64_MAX)
    if _is_int(v):
        return int(v)
    raise ValueError("rank must be an integer")


class AgentRankQuery(_Query):
    rank: Annotated[int, _int_schema(0, MAX_NODES - 1)]

    @field_validator("rank", mode="before")
    @classmethod
    def _rank(cls, v: Any) -> Any:
        return _rank_value(v)

    @model_validator(mode="before")
    @classmethod
    def _present(cls, data: Any) -> Any:
        return {"rank": None, **data} if isinstance(data, dict) else data


class AgentLogsQuery(AgentRankQuery):
    offset: Annotated[int, _int_schema(0, INT64_MAX)]

    @field_validator("offset", mode="before")
    @classmethod
    def _offset(cls, v: Any) -> Any:
        return _query_int(v, "offset", None, 0, INT64_MAX)

    @model_validator(mode="before")
    @classmethod
    def _present(cls, data: Any) -> Any:
        return {"rank": None, "offset": None, **data} if isinstance(data, dict) else data


class HeartbeatRequest(_Request):
    """An agent's heartbeat; ``wait_go`` > 0 holds the reply until the go (at most 30 s)."""

    rank: Annotated[int, Field(ge=0, le=MAX_NODES - 1)]
    wait_go: Annotated[float | None, Field(ge=0)] = None

    @field_validator("rank", mode="before")
    @classmethod
    def _rank(cls, v: Any) -> Any:
        return _rank_value(v)

    @field_validator("wait_go", mode="before")
    @classmethod
    def _wait(cls, v: Any) -> Any:
        v = 0 if v is None else v
        if not _is_number(v) or v < 0:
            raise ValueError("wait_go must be a number of seconds")
        return float(min(v, 30))  # the wait is capped; 10**400 must not overflow a float

    @model_validator(mode="before")
    @classmethod
    def _present(cls, data: Any) -> Any:
        return {"rank": None, **data} if isinstance(data, dict) else data


PHASES = ("setup", "ready", "running")


class AgentEventRequest(_Request):
    """What a node's agent reports: a preemption ``notice``, a ``phase`` reached, or the
    ``exit`` of the task's process (its ``phase``: ``setup`` or ``run``, and ``noticed``:
    whether a notice came first). ``notice``, ``seen_at`` and ``error`` are advisory: any
    value is accepted and only a plausible one is used."""

    kind: Literal["notice", "phase", "exit"]
    rank: Annotated[int, _int_schema(0, INT64_MAX)]
    phase: Literal["setup", "ready", "running", "run"] | None = None
    exit_code: Annotated[int | None, Field(ge=EXIT_CODE_RANGE[0], le=EXIT_CODE_RANGE[1])] = None
    noticed: Any = None
    notice: Any = None
    seen_at: Any = None
    error: Any = None

    @field_validator("rank", mode="before")
    @classmethod
    def _rank(cls, v: Any) -> Any:
        return _rank_value(v)

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        kind, phase, code = data.get("kind"), data.get("phase"), data.get("exit_code")
        if kind not in ("notice", "phase", "exit"):
            raise ValueError(f"unknown event kind {_short(kind)}")
        if (kind == "phase" or phase is not None) and phase not in (
                PHASES if kind == "phase" else (*PHASES, "run")):
            raise ValueError(f"unknown phase {_short(phase)}")
        if (kind == "exit" or code is not None) and not (
                isinstance(code, int) and not isinstance(code, bool)
                and EXIT_CODE_RANGE[0] <= code <= EXIT_CODE_RANGE[1]):
            raise ValueError("exit_code must be a 32-bit integer")
        return {"rank": None, **data}


# --- replies -------------------------------------------------------------------------------------

class _Reply(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ErrorReply(_Reply):
    """Every error: one line saying what was wrong (4xx), or that the controller failed (5xx)."""

    error: Annotated[str, Field(min_length=1)]


class Health(_Reply):
    ok: bool
    url: str | None = None
    jobs: dict[str, int] = {}
    live_runners: int = 0


class ControllerInfo(_Reply):
    """One controller registered on the store (several share a PostgreSQL database)."""

    id: str
    url: str | None = None
    agent_url: str | None = None
    host: str | None = None
    pid: int | None = None
    live: bool
    jobs: int  # leases it holds now
    heartbeat_age: float  # seconds since it last renewed its leases
    started_at: float
    stopped_at: float | None = None


class Controllers(_Reply):
    """Every controller on the store, and which one answered with the singleton duties it
    holds (price polls, orphan sweep, retention, webhooks)."""

    this: str
    duties: list[str]
    controllers: list[ControllerInfo]


class Submitted(_Reply):
    """The reply to a submit: the job's id (a job array: every id, the first is the
    array's id)."""

    id: int
    name: str
    status: str
    tasks: int = 1
    ids: list[int] | None = None
    array_id: int | None = None


class Attempt(_Reply):
    """One launch of a job's task on one placement (a recovery makes a new attempt)."""

    n: int
    status: str
    placement: str = Field(description="cloud/zone/instance_type/spot|on-demand")
    region: str
    price_per_hour: float | None = None
    num_nodes: int = 1
    instances: list[str] = []
    created_at: float
    running_at: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None
    exit_code: int | None = None
    notice_at: float | None = None
    cost: float = 0.0
    released: bool = False
    task: int = 1

    @property
    def preempted(self) -> bool:
        return self.notice_at is not None


class Job(_Reply):
    """A managed job. The queue gives the summary; ``get`` adds ``task_id``, the stored
    task (secrets redacted) and ``attempt_list``."""

    id: int
    name: str
    status: str
    placement: str | None = None
    recoveries: int = 0
    restarts: int = 0
    attempts: int = 0
    submitted_at: float
    ended_at: float | None = None
    duration_s: float = 0.0
    cost: float = 0.0
    on_demand_cost: float = 0.0
    saving: float = 0.0
    exit_code: int | None = None
    reason: str | None = None
    array_id: int | None = None
    array_rank: int | None = None
    current_task: int = 1
    tasks: int = 1
    # Only in GET /api/v1/jobs/{job}:
    task_id: str | None = None
    task: dict[str, Any] | None = None
    tasks_specs: list[dict[str, Any]] | None = None
    attempt_list: list[Attempt] = []

    @property
    def done(self) -> bool:
        """True once the job has ended (succeeded, failed or cancelled)."""
        return self.status in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"


class JobList(_Reply):
    jobs: list[Job]
    limit: int
    offset: int


class Event(_Reply):
    """A state transition (``kind: transition``) or another note on the job (``info``)."""

    id: int
    job_id: int
    at: float
    kind: str
    from_status: str | None = None
    to_status: str | None = None
    reason: str | None = None
    exit_code: int | None = None
    attempt: int | None = None
    placement: str | None = None
    cost_so_far: float = 0.0


class EventList(_Reply):
    events: list[Event]


class LogChunk(_Reply):
    """A chunk of one node's log; ask again from ``next_offset`` (a byte offset)."""

    attempt: int
    rank: int
    offset: int
    next_offset: int
    bytes: int
    size: int
    data: str
    attempts: int = Field(description="How many attempts the job has now.")
    status: str = Field(description="The job's status now.")


class Skipped(_Reply):
    id: int
    why: str


class CancelReply(_Reply):
    cancelled: list[int]
    skipped: list[Skipped]


class Preempted(_Reply):
    job: int
    attempt: int
    notice: float
    issued_at: float


class Placement(_Reply):
    """Where a job can run: one ranked row of a plan (``price_status`` and ``enabled`` are
    the plan's; ``pick`` has neither)."""

    cloud: str
    region: str
    zone: str
    instance_type: str
    spot: bool
    accelerator: str | None = None
    vcpus: float | None = None
    memory_gb: float | None = None
    price_per_hour: float | None = None
    score: float | None = None
    reason: str = ""
    price_status: str | None = None
    enabled: bool | None = None

    def label(self) -> str:
        """As jobs and attempts name their placement: cloud/zone/type/spot|on-demand."""
        kind = "spot" if self.spot else "on-demand"
        return f"{self.cloud}/{self.zone}/{self.instance_type}/{kind}"


class Plan(_Reply):
    strategy: str
    num_nodes: int
    enabled: list[str]
    clouds: list[str]
    candidates: list[Placement]
    pick: Placement | None = None
    warnings: list[str] = []
    controller: str | None = None


class CloudReadiness(_Reply):
    cloud: str
    ready: bool
    offerings: int
    notes: list[str]


class Clouds(_Reply):
    enabled: list[str]
    clouds: list[CloudReadiness]
    url: str | None = None


class Price(_Reply):
    cloud: str
    region: str
    zone: str
    instance_type: str
    accelerator: str | None = None
    ondemand_price: float
    list_spot_price: float | None = None
    spot_price: float | None = None
    status: str
    observed_at: float | None = None
    refreshed_at: float | None = None
    price_date: str | None = None
    source: str | None = None


class Prices(_Reply):
    prices: list[Price]
    max_age_s: float


class CapacityReply(_Reply):
    no_spot_zones: list[str]


class WebhookTestReply(_Reply):
    hook: str
    ok: bool
    status: int | None = None
    error: str | None = None
    delivery: str


class GcReply(_Reply):
    """What the sweep removed (or, for a dry run, would remove), per kind."""

    dry_run: bool
    older_than_days: float
    removed: dict[str, int]


class AgentTask(_Reply):
    """What a node's agent runs (its own attempt's; carries the task's secrets)."""

    job_id: int
    attempt: int
    task_id: str
    job_rank: int
    array_id: int | None = None
    recovery_count: int
    num_nodes: int
    node_ips: list[str]
    gpus_per_node: int
    envs: dict[str, str | None]
    setup: str | None = None
    run: str | None = None
    has_archive: bool
    local_mounts: list[str]
    buckets: list[dict[str, str]]
    heartbeat_interval: float
    log_interval: float = 1.0
    notice_poll_interval: float
    notice_signal: str
    copy_sync_interval: float


class HeartbeatReply(_Reply):
    """The go gate and the drain flag; and how often to heartbeat and ship logs from now on
    (longer as the controller's fleet grows). A heartbeat of an attempt whose instances
    are already released gets only ``go: false, drain: true``. ``controllers``: the
    controllers' agent URLs, the job's owner first (several controllers on one database):
    an agent that reached another one is sent to the owner this way (``redirect``)."""

    go: bool
    drain: bool
    heartbeat_interval: float | None = None
    log_interval: float | None = None
    controllers: list[str] | None = None
    redirect: bool | None = None  # go to ``controllers[0]`` (the owner) now


class Ok(_Reply):
    ok: bool


class LogAppended(_Reply):
    size: int
