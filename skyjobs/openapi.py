"""The OpenAPI 3.1 document of the controller's HTTP API, built from ``skyjobs.models``.

Each operation below names the request models its handler validates with and the reply
models it answers with; :func:`document` turns them into JSON Schema (pydantic's, which is
JSON Schema 2020-12, as OpenAPI 3.1 uses). ``tests/integration/test_openapi.py`` checks that
every route the controller serves is described here and runs schemathesis against a live
controller, so the document and the handlers cannot drift apart.

The document is the same for every installation of one version: it says nothing about the
controller serving it (no URL, no enabled clouds, no jobs). That is why the controller
serves it without a token (see ``skyjobs.controller.api``).
"""

from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from skyjobs import __version__
from skyjobs import models as m

JSON = "application/json"
REF = "#/components/schemas/{model}"
USER_AUTH: list[dict[str, list[str]]] = [{"controllerToken": []}]
AGENT_AUTH: list[dict[str, list[str]]] = [{"attemptToken": []}]

JOB_ID = {"name": "job", "in": "path", "required": True, "description": "A job id.",
          "schema": {"type": "integer", "minimum": -m.INT64_MAX, "maximum": m.INT64_MAX}}
ATTEMPT_ID = {"name": "attempt", "in": "path", "required": True,
              "description": "The attempt's id (its credential is for this attempt only).",
              "schema": {"type": "integer", "minimum": 1, "maximum": m.INT64_MAX}}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    id: str
    summary: str
    tag: str
    auth: list[dict[str, list[str]]] | None = None  # None: no token needed
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    raw_body: str | None = None  # a non-JSON body's media type (the agent's log bytes)
    replies: dict[int, type[BaseModel] | str] = field(default_factory=dict)
    errors: tuple[int, ...] = ()


OPERATIONS: tuple[Operation, ...] = (
    Operation("get", "/api/v1/openapi.json", "openapi", "This document (no token needed)",
              "controller", None, replies={200: "application/json"}),
    Operation("get", "/api/v1/health", "health", "Is the controller up; jobs per state",
              "controller", USER_AUTH, replies={200: m.Health}),
    Operation("get", "/api/v1/controllers", "controllers",
              "The controllers sharing the store: who is live, how many jobs each runs",
              "controller", USER_AUTH, replies={200: m.Controllers}),
    Operation("post", "/api/v1/jobs", "submit", "Submit a job, a job array or a pipeline",
              "jobs", USER_AUTH, body=m.SubmitRequest, replies={201: m.Submitted},
              errors=(400, 502)),
    Operation("get", "/api/v1/jobs", "queue", "List jobs, newest first", "jobs", USER_AUTH,
              query=m.JobsQuery, replies={200: m.JobList}, errors=(400,)),
    Operation("get", "/api/v1/jobs/{job}", "get_job",
              "One job with its attempts and task (secrets redacted)", "jobs", USER_AUTH,
              replies={200: m.Job}, errors=(400, 404)),
    Operation("get", "/api/v1/jobs/{job}/events", "job_events",
              "A job's transitions and notes, each with the cost so far", "jobs", USER_AUTH,
              query=m.EventsQuery, replies={200: m.EventList}, errors=(400, 404)),
    Operation("get", "/api/v1/jobs/{job}/logs", "job_logs",
              "A chunk of one node's log of one attempt, from a byte offset", "jobs",
              USER_AUTH, query=m.LogsQuery, replies={200: m.LogChunk}, errors=(400, 404)),
    Operation("post", "/api/v1/jobs/{job}/preempt", "preempt",
              "Preempt a job's instances (simulated markets only)", "jobs", USER_AUTH,
              body=m.PreemptRequest, replies={200: m.Preempted}, errors=(400, 404, 409)),
    Operation("post", "/api/v1/cancel", "cancel", "Cancel jobs by id, name, array or all",
              "jobs", USER_AUTH, body=m.CancelRequest, replies={200: m.CancelReply},
              errors=(400,)),
    Operation("post", "/api/v1/plan", "plan",
              "Rank every offering of every cloud for a task, launching nothing", "jobs",
              USER_AUTH, body=m.PlanRequest, replies={200: m.Plan}, errors=(400,)),
    Operation("get", "/api/v1/clouds", "clouds", "The enabled clouds and their readiness",
              "controller", USER_AUTH, replies={200: m.Clouds}),
    Operation("get", "/api/v1/prices", "prices", "Spot prices: live, stale or list",
              "controller", USER_AUTH, query=m.PricesQuery, replies={200: m.Prices},
              errors=(400,)),
    Operation("post", "/api/v1/local/capacity", "local_capacity",
              "Take a local zone's spot capacity away or give it back", "controller",
              USER_AUTH, body=m.CapacityRequest, replies={200: m.CapacityReply},
              errors=(400,)),
    Operation("post", "/api/v1/webhooks/test", "webhook_test",
              "Send a sample event to one configured webhook", "controller", USER_AUTH,
              body=m.WebhookTestRequest, replies={200: m.WebhookTestReply},
              errors=(400, 404)),
    Operation("post", "/api/v1/gc", "gc",
              "Run the retention sweep now: ended jobs past the retention time and what "
              "they left behind", "controller", USER_AUTH, body=m.GcRequest,
              replies={200: m.GcReply}, errors=(400,)),
    Operation("get", "/metrics", "metrics",
              "Prometheus metrics (without a token when metrics_public is set)", "controller",
              USER_AUTH, replies={200: "text/plain"}),
    Operation("get", "/agent/v1/attempts/{attempt}/task", "agent_task",
              "The task a node runs (with its secrets)", "agent", AGENT_AUTH,
              query=m.AgentRankQuery, replies={200: m.AgentTask}, errors=(400, 404, 502)),
    Operation("get", "/agent/v1/attempts/{attempt}/archive", "agent_archive",
              "The job's workdir archive (tar.gz)", "agent", AGENT_AUTH,
              replies={200: "application/octet-stream"}, errors=(404,)),
    Operation("get", "/agent/v1/attempts/{attempt}/agent.pyz", "agent_zipapp",
              "The node agent as a zipapp", "agent", AGENT_AUTH,
              replies={200: "application/zip"}, errors=(404,)),
    Operation("post", "/agent/v1/attempts/{attempt}/heartbeat", "agent_heartbeat",
              "A node is alive; optionally wait for the go", "agent", AGENT_AUTH,
              body=m.HeartbeatRequest, replies={200: m.HeartbeatReply}, errors=(400, 404)),
    Operation("post", "/agent/v1/attempts/{attempt}/events", "agent_event",
              "A node's notice, phase or exit", "agent", AGENT_AUTH,
              body=m.AgentEventRequest, replies={200: m.Ok}, errors=(400, 404)),
    Operation("post", "/agent/v1/attempts/{attempt}/logs", "agent_logs",
              "Append a node's log bytes at an offset (replays are harmless)", "agent",
              AGENT_AUTH, query=m.AgentLogsQuery, raw_body="application/octet-stream",
              replies={200: m.LogAppended}, errors=(400, 404)),
)

ERROR_TEXT = {400: "The request is malformed; `error` says what is wrong, in one line.",
              401: "No valid token.", 404: "No such job, attempt or file.",
              409: "The job's state does not allow this now.",
              502: "A cloud call failed; try again."}


def _no_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: a query string has no null (absent means default)."""
    options = schema.get("anyOf")
    if options:
        kept = [o for o in options if o.get("type") != "null"]
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        schema = {**rest, **kept[0]} if len(kept) == 1 else {**rest, "anyOf": kept}
    schema.pop("title", None)
    if schema.get("default", 0) is None:
        del schema["default"]
    return schema


def _parameters(op: Operation, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    if "{job}" in op.path:
        params.append(JOB_ID)
    if "{attempt}" in op.path:
        params.append(ATTEMPT_ID)
    if op.query is not None:
        schema = schemas[op.query.__name__]
        required = set(schema.get("required", ()))
        for name, prop in schema["properties"].items():
            prop = _no_null(copy.deepcopy(prop))
            param = {"name": name, "in": "query", "required": name in required,
                     "schema": prop}
            if "description" in prop:
                param["description"] = prop.pop("description")
            params.append(param)
    return params


def _reply(status: int, reply: type[BaseModel] | str) -> dict[str, Any]:
    if isinstance(reply, str):
        schema: dict[str, Any] = ({"type": "object"} if reply == JSON
                                  else {"type": "string"})
        return {"description": "OK", "content": {reply: {"schema": schema}}}
    doc = inspect.cleandoc(reply.__doc__ or reply.__name__)
    return {"description": " ".join(doc.split("\n\n")[0].split()),
            "content": {JSON: {"schema": {"$ref": REF.format(model=reply.__name__)}}}}


def _error(status: int) -> dict[str, Any]:
    return {"description": ERROR_TEXT[status],
            "content": {JSON: {"schema": {"$ref": REF.format(model="ErrorReply")}}}}


@functools.cache
def _document() -> dict[str, Any]:
    requests = {model for op in OPERATIONS for model in (op.query, op.body) if model}
    replies = {r for op in OPERATIONS for r in op.replies.values() if not isinstance(r, str)}
    pairs: list[tuple[type[BaseModel], Any]] = [
        *((model, "validation") for model in sorted(requests, key=lambda c: c.__name__)),
        *((model, "serialization") for model in sorted(replies | {m.ErrorReply},
                                                       key=lambda c: c.__name__))]
    _, top = models_json_schema(pairs, ref_template=REF)
    schemas: dict[str, Any] = top.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        entry: dict[str, Any] = {"operationId": op.id, "summary": op.summary,
                                 "tags": [op.tag], "security": op.auth or []}
        params = _parameters(op, schemas)
        if params:
            entry["parameters"] = params
        if op.body is not None:
            entry["requestBody"] = {"required": True, "content": {JSON: {"schema": {
                "$ref": REF.format(model=op.body.__name__)}}}}
        elif op.raw_body is not None:
            # Not required: an empty chunk appends nothing and is answered like any other.
            entry["requestBody"] = {"required": False, "content": {op.raw_body: {
                "schema": {"type": "string", "format": "binary"}}}}
        responses = {str(status): _reply(status, reply) for status, reply in op.replies.items()}
        for status in sorted({*op.errors, *((401,) if op.auth else ())}):
            responses[str(status)] = _error(status)
        entry["responses"] = responses
        paths.setdefault(op.path, {})[op.method] = entry
    # Query models are described as parameters, not as schemas of their own.
    for op in OPERATIONS:
        if op.query is not None:
            schemas.pop(op.query.__name__, None)
    return {
        "openapi": "3.1.0",
        "info": {"title": "skyjobs controller API", "version": __version__,
                 "description": "Managed jobs on spot instances. Every error is a JSON "
                                "`{\"error\": \"...\"}` with a 4xx (or 5xx when the "
                                "controller or a cloud failed); a rejected request changes "
                                "nothing."},
        "tags": [{"name": "jobs", "description": "Submit, watch and cancel jobs."},
                 {"name": "controller", "description": "The controller and its market."},
                 {"name": "agent", "description": "For node agents only, each with its "
                                                  "attempt's own credential."}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "controllerToken": {"type": "http", "scheme": "bearer",
                                    "description": "The controller's token "
                                                   "(<state-dir>/token)."},
                "attemptToken": {"type": "http", "scheme": "bearer",
                                 "description": "An attempt's credential, given to its "
                                                "nodes at launch."},
            },
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh copy: callers may change theirs)."""
    return copy.deepcopy(_document())
