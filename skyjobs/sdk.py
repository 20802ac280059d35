"""The Python SDK's shared half: task builders and what each API call sends and returns.

``skyjobs.Task`` and ``skyjobs.Resources`` mirror SkyPilot's ``sky.Task`` and
``sky.Resources`` and produce the very document the equivalent task YAML is, so a task
built in Python and one read from YAML are validated, stored and run identically.

The two clients (``skyjobs.Client``, blocking, in :mod:`skyjobs.client`; and
``skyjobs.AsyncClient``, asyncio, in :mod:`skyjobs.aio`) differ only in how they move bytes:
both take their requests (:class:`Call`), the submit body (:func:`submission`) and the log
walk (:class:`LogCursor`) from here, so they cannot disagree on the API.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from skyjobs import models as m
from skyjobs.exceptions import SpecError
from skyjobs.pipeline import Pipeline, load_pipeline, pipeline_from_documents, task_source
from skyjobs.submission import build_archive, raw_task

R = TypeVar("R")
JobRef = int | m.Job  # a job id, or a Job a call returned
LOG_POLL_S = 0.5  # between log polls of a live job
WAIT_POLL_S = 1.0  # between status polls of wait()


# --- builders ------------------------------------------------------------------------------

def _cloud_name(cloud: Any) -> str | None:
    # SkyPilot takes cloud objects (sky.AWS()) as well as names; their str() is the name.
    return None if cloud is None else str(cloud).strip().lower()


class Resources:
    """Where a task may run, as ``sky.Resources``: every argument is the task YAML's
    ``resources`` key of the same name, and only the ones given are written out.

    >>> Resources(cloud="aws", accelerators="A100:8", use_spot=True,
    ...           job_recovery="FAILOVER").to_yaml_config()
    {'cloud': 'aws', 'accelerators': 'A100:8', 'use_spot': True, 'job_recovery': 'FAILOVER'}
    """

    def __init__(self, cloud: Any = None, instance_type: str | None = None,
                 cpus: int | float | str | None = None, memory: int | float | str | None = None,
                 accelerators: str | Mapping[str, int] | None = None,
                 accelerator_args: Mapping[str, Any] | None = None,
                 use_spot: bool | None = None, job_recovery: str | Mapping[str, Any] | None = None,
                 region: str | None = None, zone: str | None = None,
                 image_id: str | Mapping[str, str] | None = None,
                 disk_size: int | str | None = None, disk_tier: str | None = None,
                 ports: int | str | Iterable[int | str] | None = None,
                 labels: Mapping[str, str] | None = None, infra: str | None = None,
                 autostop: Any = None, network_tier: str | None = None) -> None:
        given = {
            "infra": infra, "cloud": _cloud_name(cloud), "region": region, "zone": zone,
            "instance_type": instance_type, "cpus": cpus, "memory": memory,
            "accelerators": dict(accelerators) if isinstance(accelerators, Mapping)
            else accelerators,
            "accelerator_args": dict(accelerator_args) if accelerator_args is not None
            else None,
            "use_spot": use_spot, "disk_size": disk_size, "disk_tier": disk_tier,
            "ports": ports if ports is None or isinstance(ports, int | str) else list(ports),
            "labels": dict(labels) if labels is not None else None,
            "image_id": dict(image_id) if isinstance(image_id, Mapping) else image_id,
            "autostop": autostop, "network_tier": network_tier,
            "job_recovery": dict(job_recovery) if isinstance(job_recovery, Mapping)
            else job_recovery,
        }
        self._config = {k: v for k, v in given.items() if v is not None}

    def to_yaml_config(self) -> dict[str, Any]:
        """The ``resources`` mapping of the equivalent task YAML."""
        return copy.deepcopy(self._config)

    def copy(self, **override: Any) -> Resources:
        """A copy with some fields replaced (as ``sky.Resources.copy``)."""
        out = Resources()
        out._config = {**self.to_yaml_config(), **{k: v for k, v in override.items()
                                                     if v is not None}}
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Resources) and self._config == other._config

    def __hash__(self) -> int:  # sets of Resources are any_of alternatives, as in SkyPilot
        return hash(json.dumps(self._config, sort_keys=True, default=str))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"Resources({args})"


class Task:
    """A task, as ``sky.Task``: ``run``/``setup`` scripts, ``envs``, ``secrets``, a local
    ``workdir`` (relative paths are from the current directory, as in SkyPilot),
    ``num_nodes``, and resources and file mounts set with the methods below.

    ``to_yaml_config()`` is the task YAML document; submitting a Task is submitting that
    document (tests/unit/test_task_builders.py proves the equivalence key by key).
    """

    def __init__(self, name: str | None = None, *, setup: str | None = None,
                 run: str | None = None, envs: Mapping[str, Any] | None = None,
                 secrets: Mapping[str, Any] | None = None, workdir: str | Path | None = None,
                 num_nodes: int | None = None,
                 file_mounts: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.setup = setup
        self.run = run
        self.envs: dict[str, Any] = dict(envs or {})
        self.secrets: dict[str, Any] = dict(secrets or {})
        self.workdir = None if workdir is None else str(workdir)
        self.num_nodes = num_nodes
        self.file_mounts: dict[str, Any] = {}
        self.resources: Resources | set[Resources] | list[Resources] = Resources()
        # Keys of a document read with from_yaml_config that have no constructor argument
        # (its resources as written, above all), kept verbatim.
        self._extra: dict[str, Any] = {}
        if file_mounts:
            self.set_file_mounts(file_mounts)

    # -- sky.Task's setters, chainable as there ---------------------------------------------

    def set_resources(self, resources: Resources | Iterable[Resources]) -> Task:
        """One Resources; a set of them (any of, cheapest first); or a list (in order of
        preference), as ``sky.Task.set_resources``."""
        if isinstance(resources, Resources):
            self.resources = resources
        elif isinstance(resources, set | frozenset):
            self.resources = set(resources)
        else:
            self.resources = list(resources)
        return self

    def set_file_mounts(self, file_mounts: Mapping[str, Any] | None) -> Task:
        """REMOTE_PATH -> local path, or a bucket mapping ``{"source": "s3://...",
        "mode": "MOUNT" | "COPY"}``; replaces any set before."""
        self.file_mounts = {k: copy.deepcopy(v) for k, v in (file_mounts or {}).items()}
        return self

    def update_file_mounts(self, file_mounts: Mapping[str, Any]) -> Task:
        self.file_mounts.update(copy.deepcopy(dict(file_mounts)))
        return self

    def update_envs(self, envs: Mapping[str, Any]) -> Task:
        self.envs.update(envs)
        return self

    def update_secrets(self, secrets: Mapping[str, Any]) -> Task:
        self.secrets.update(secrets)
        return self

    # -- the YAML document --------------------------------------------------------------------

    def to_yaml_config(self) -> dict[str, Any]:
        """The task YAML document this task is (only the keys that were given)."""
        out: dict[str, Any] = {}
        for key in ("name", "workdir", "num_nodes"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        resources = _resources_config(self.resources)
        if resources:
            out["resources"] = resources
        for key in ("envs", "secrets", "file_mounts"):
            if getattr(self, key):
                out[key] = copy.deepcopy(getattr(self, key))
        for key in ("setup", "run"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_yaml_config(cls, config: Mapping[str, Any]) -> Task:
        """A Task from a task document (a loaded YAML mapping)."""
        data = copy.deepcopy(dict(config))
        task = cls(name=data.pop("name", None), setup=data.pop("setup", None),
                   run=data.pop("run", None), envs=data.pop("envs", None),
                   secrets=data.pop("secrets", None), workdir=data.pop("workdir", None),
                   num_nodes=data.pop("num_nodes", None),
                   file_mounts=data.pop("file_mounts", None))
        task._extra = data  # resources and anything else, kept verbatim
        return task

    @classmethod
    def from_yaml(cls, path: str | Path) -> Task:
        """A Task from a one-task YAML file (relative paths resolved from its directory)."""
        pipeline = load_pipeline(path)
        if pipeline.is_pipeline:
            raise SpecError(f"{path}: has {len(pipeline.tasks)} tasks; submit the file itself "
                            "to run it as a pipeline")
        task = cls.from_yaml_config(pipeline.documents[0])
        spec = pipeline.tasks[0]
        task.workdir = spec.workdir  # resolved against the YAML's directory
        task.file_mounts = {k: (spec.file_mounts[k] if isinstance(v, str) else v)
                            for k, v in task.file_mounts.items()}
        return task

    def __repr__(self) -> str:
        return f"Task({self.to_yaml_config()!r})"


def _resources_config(resources: Any) -> dict[str, Any]:
    if isinstance(resources, Resources):
        return resources.to_yaml_config()
    options = [r.to_yaml_config() for r in (
        sorted(resources, key=repr) if isinstance(resources, set) else resources)]
    if not options:
        return {}
    # job_recovery is one setting for the whole job: written once, at the resources level.
    recoveries = {json.dumps(o.pop("job_recovery", None), sort_keys=True) for o in options}
    out: dict[str, Any] = {}
    if len(recoveries) > 1:
        raise SpecError("resources: alternatives give different job_recovery settings; "
                        "give one (it applies to the whole job)")
    recovery = json.loads(recoveries.pop())
    if recovery is not None:
        out["job_recovery"] = recovery
    if len(options) == 1:
        return {**options[0], **out}
    out["ordered" if isinstance(resources, list) else "any_of"] = options
    return out


def _task_document(task: Task) -> dict[str, Any]:
    doc = task.to_yaml_config()
    if task._extra:  # from_yaml_config: the document's resources and other keys as read
        doc = {**copy.deepcopy(task._extra), **doc}
        if "resources" in task._extra and not _resources_config(task.resources):
            doc["resources"] = copy.deepcopy(task._extra["resources"])
    return doc


# --- what a submit sends --------------------------------------------------------------------

TaskLike = Task | str | Path | Mapping[str, Any]


def load(task_or_path: TaskLike) -> tuple[Pipeline, str]:
    """(the validated pipeline of one or more tasks, its source for messages) for a Task,
    a task document, or a YAML file (relative paths: from the file's directory for a file,
    from the current directory otherwise)."""
    if isinstance(task_or_path, str | Path):
        return load_pipeline(task_or_path), str(task_or_path)
    if isinstance(task_or_path, Task):
        doc, source = _task_document(task_or_path), task_or_path.name or "task"
    elif isinstance(task_or_path, Mapping):
        doc, source = copy.deepcopy(dict(task_or_path)), "task"
    else:
        raise SpecError(f"cannot submit a {type(task_or_path).__name__}: give a skyjobs.Task, "
                        "a task mapping or a YAML file's path")
    return pipeline_from_documents([doc], source, Path.cwd()), source


def submission(pipeline: Pipeline, source: str, name: str | None = None,
               env: Mapping[str, str] | None = None, num_jobs: int = 1) -> dict[str, Any]:
    """The body of ``POST /api/v1/jobs`` for a loaded pipeline (or one task): the raw task
    documents, their workdir archives and the env overrides (checked here first, so a bad
    one fails before anything is sent)."""
    overrides = dict(env or {})
    for spec in pipeline.tasks:
        spec.with_env_overrides(overrides)
    archives = [build_archive(spec) for spec in pipeline.tasks]
    documents = [raw_task(copy.deepcopy(d)) for d in pipeline.documents]
    body: dict[str, Any] = {"source": source, "name": name or pipeline.name,
                            "envs": overrides, "num_jobs": num_jobs}
    if pipeline.is_pipeline:
        body.update(tasks=documents, archives=archives)
    else:
        body.update(task=documents[0], archive=archives[0])
    return body


def plan_body(task_or_path: TaskLike) -> dict[str, Any]:
    pipeline, source = load(task_or_path)
    if pipeline.is_pipeline:
        raise SpecError(f"{source}: a pipeline of {len(pipeline.tasks)} tasks; plan its "
                        "tasks one by one")
    return {"task": raw_task(copy.deepcopy(pipeline.documents[0])), "source": source}


def notes(pipeline: Pipeline, source: str) -> list[str]:
    """Deprecation and "ignored" notes of every task, as ``SOURCE: key: note`` lines."""
    return [line for i, spec in enumerate(pipeline.tasks)
            for line in spec.notes(task_source(source, i, len(pipeline.tasks)))]


# --- requests --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Call(Generic[R]):
    """One API request and how to read its reply."""

    method: str
    path: str
    parse: Callable[[Any], R]
    query: dict[str, Any] | None = None
    body: Any = None


def job_id(job: JobRef) -> int:
    if isinstance(job, m.Job):
        return job.id
    if isinstance(job, bool) or not isinstance(job, int):
        raise TypeError(f"a job is its id (int) or a Job, not {type(job).__name__}")
    return job


def _list(field_name: str, model: type[Any]) -> Callable[[Any], list[Any]]:
    return lambda reply: [model.model_validate(x) for x in reply[field_name]]


def call_health() -> Call[m.Health]:
    return Call("GET", "/api/v1/health", m.Health.model_validate)


def call_controllers() -> Call[m.Controllers]:
    return Call("GET", "/api/v1/controllers", m.Controllers.model_validate)


def call_get(job: JobRef) -> Call[m.Job]:
    return Call("GET", f"/api/v1/jobs/{job_id(job)}", m.Job.model_validate)


def call_queue(status: str | Iterable[str] | None = None, name: str | None = None,
               limit: int | None = None, offset: int | None = None,
               array: int | None = None) -> Call[list[m.Job]]:
    statuses = status if status is None or isinstance(status, str) else ",".join(status)
    return Call("GET", "/api/v1/jobs", _list("jobs", m.Job),
                query={"status": statuses, "name": name, "limit": limit, "offset": offset,
                       "array": array})


def call_events(job: JobRef, after: int = 0) -> Call[list[m.Event]]:
    return Call("GET", f"/api/v1/jobs/{job_id(job)}/events", _list("events", m.Event),
                query={"after": after or None})


def call_log_chunk(job: JobRef, attempt: int, rank: int, offset: int) -> Call[m.LogChunk]:
    return Call("GET", f"/api/v1/jobs/{job_id(job)}/logs", m.LogChunk.model_validate,
                query={"attempt": attempt, "rank": rank, "offset": offset})


def call_submit(body: dict[str, Any]) -> Call[m.Submitted]:
    return Call("POST", "/api/v1/jobs", m.Submitted.model_validate, body=body)


def call_cancel(jobs: JobRef | Iterable[JobRef] | None = None, *, name: str | None = None,
                array: int | None = None, all: bool = False) -> Call[m.CancelReply]:
    if jobs is not None and (isinstance(jobs, int | m.Job)):
        jobs = [jobs]
    body: dict[str, Any] = (
        {"all": True} if all else {"name": name} if name is not None
        else {"array": array} if array is not None
        else {"ids": [job_id(j) for j in jobs or ()]})
    return Call("POST", "/api/v1/cancel", m.CancelReply.model_validate, body=body)


def call_plan(body: dict[str, Any]) -> Call[m.Plan]:
    return Call("POST", "/api/v1/plan", m.Plan.model_validate, body=body)


def call_preempt(job: JobRef, notice: float = 120.0) -> Call[m.Preempted]:
    return Call("POST", f"/api/v1/jobs/{job_id(job)}/preempt", m.Preempted.model_validate,
                body={"notice": notice})


def call_clouds() -> Call[m.Clouds]:
    return Call("GET", "/api/v1/clouds", m.Clouds.model_validate)


def call_prices(accelerator: str | None = None, cloud: str | None = None) -> Call[m.Prices]:
    return Call("GET", "/api/v1/prices", m.Prices.model_validate,
                query={"accelerator": accelerator, "cloud": cloud})


def call_capacity(zone: str, spot: bool) -> Call[m.CapacityReply]:
    return Call("POST", "/api/v1/local/capacity", m.CapacityReply.model_validate,
                body={"zone": zone, "spot": spot})


def call_webhook_test(name: str) -> Call[m.WebhookTestReply]:
    return Call("POST", "/api/v1/webhooks/test", m.WebhookTestReply.model_validate,
                body={"name": name})


def call_gc(older_than_days: float | None, dry_run: bool) -> Call[m.GcReply]:
    body: dict[str, Any] = {"dry_run": dry_run}
    if older_than_days is not None:
        body["older_than_days"] = older_than_days
    return Call("POST", "/api/v1/gc", m.GcReply.model_validate, body=body)


def query_items(query: Mapping[str, Any] | None) -> dict[str, str]:
    """A query's given values as text (None and "" mean "not given")."""
    return {k: str(v) for k, v in (query or {}).items() if v is not None and v != ""}


# --- reading logs ------------------------------------------------------------------------------

@dataclass
class LogCursor:
    """Where a log walk is: which attempt, which byte offset. ``attempt=None`` walks every
    attempt in order (moving on when one is exhausted and a later one exists). Byte
    offsets end to end: the controller says where the next chunk starts, and a chunk never
    ends inside a UTF-8 character of a live job."""

    job: int
    attempt: int | None
    rank: int = 0
    follow: bool = False
    current: int = field(init=False)
    offset: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.current = self.attempt or 1

    def call(self) -> Call[m.LogChunk]:
        return call_log_chunk(self.job, self.current, self.rank, self.offset)

    def advance(self, chunk: m.LogChunk) -> str:
        """After a reply: "data" (yield it, ask again), "next" (ask again now), "wait"
        (nothing new yet: ask again after LOG_POLL_S) or "done"."""
        if chunk.data:
            self.offset = chunk.next_offset
            return "data"
        if self.attempt is None and self.current < chunk.attempts:
            self.current, self.offset = self.current + 1, 0
            return "next"
        if not self.follow or chunk.status in m.TERMINAL_STATES:
            return "done"
        return "wait"
