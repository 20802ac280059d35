"""The OpenAPI document against the controller that serves it.

schemathesis takes the document (``skyjobs.openapi``, which the controller serves at
``/api/v1/openapi.json``: a test below compares them) and sends every operation of a live
controller (a real process on the local provider, as the other integration tests start it)
schema-valid and schema-violating requests. Each must answer without a 5xx, with a status
the document lists, a body that matches the documented schema, and (when malformed) a 4xx
whose body is one ``{"error": "..."}`` line.

Bounded and deterministic: few examples per operation, derandomized; the controller's
own job runs ``sleep`` so the agent endpoints have a real attempt to speak for.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openapi_spec_validator
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CheckContext
from schemathesis.specs.openapi import checks as openapi_checks

from skyjobs import openapi
from tests.conftest import ControllerProc, task

MAX_EXAMPLES = 25
CHECKS = [openapi_checks.status_code_conformance, openapi_checks.content_type_conformance,
          openapi_checks.response_schema_conformance, openapi_checks.negative_data_rejection,
          schemathesis.checks.not_a_server_error]


class Live:
    def __init__(self, proc: ControllerProc, attempt: int) -> None:
        self.proc, self.attempt = proc, attempt
        secret = (proc.state_dir / "agent-secret").read_text().strip().encode()
        self.agent_token = hmac.new(secret, f"attempt:{attempt}".encode(),
                                    hashlib.sha256).hexdigest()

    @property
    def url(self) -> str:
        return self.proc.client.url


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    state = tmp_path_factory.mktemp("openapi") / "state"
    state.mkdir()
    # Keep the job's attempt alive through whatever the fuzzer sends its agent endpoints.
    proc = ControllerProc(state, {"SKYJOBS_HEARTBEAT_TIMEOUT": "3600",
                                  "SKYJOBS_SILENT_WINDOW": "3600"}).start()
    try:
        job_id = proc.submit(task("sleep 600"))
        proc.wait_status(job_id, "RUNNING")
        attempt = proc.client.get(f"/api/v1/jobs/{job_id}")["attempt_list"][0]
        assert _attempt_id(proc, job_id, attempt["n"]) == AGENT_ATTEMPT
        yield Live(proc, AGENT_ATTEMPT)
    finally:
        proc.cleanup()


def _attempt_id(proc: ControllerProc, job_id: int, n: int) -> int:
    """The agent API names attempts by their store id (what a node's env carries)."""
    return int(proc.query("SELECT id FROM attempts WHERE job_id=? AND n=?", (job_id, n))[0][0])


# The document as this checkout generates it; test_the_document_is_served_without_a_token
# proves the live controller serves exactly this. (schemathesis's lazy fixture loader does
# not work with this pytest.) A fresh store's first attempt has id 1: the fixture checks.
AGENT_ATTEMPT = 1
schema = schemathesis.openapi.from_dict(openapi.document())
schema.config.update(parameters={"path.attempt": AGENT_ATTEMPT})


def map_body(context: Any, body: Any) -> Any:
    """Keep each example short and small: a heartbeat waits at most a moment for the go,
    and a job array is at most two jobs (real processes on this machine)."""
    if isinstance(body, dict):
        wait = body.get("wait_go")
        if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0.05:
            body["wait_go"] = 0.05
        jobs = body.get("num_jobs")
        if isinstance(jobs, int) and not isinstance(jobs, bool) and 2 < jobs <= 1000:
            body["num_jobs"] = 2
    return body


schema.hook(map_body)
PLACEHOLDERS = {"user": "Bearer <controller-token>", "agent": "Bearer <attempt-token>"}


@schema.auth()
class Tokens:
    """The controller token for /api and /metrics, the attempt's credential for /agent;
    schemathesis leaves it out where it tests a request without one. Cases may be built
    before the controller runs (at collection): a placeholder now, the token when sent."""

    def get(self, case: Any, context: Any) -> dict[str, str]:
        return PLACEHOLDERS

    def set(self, case: Any, data: dict[str, str], context: Any) -> None:
        kind = "agent" if case.path.startswith("/agent/") else "user"
        case.headers = {**(case.headers or {}), "Authorization": data[kind]}


def one_error_line(ctx: CheckContext, response: Any, case: Any) -> bool | None:
    """A 4xx says what was wrong in one line of JSON (the response schema checks the
    shape of documented statuses; this holds for every 4xx, documented or not: a method
    the path does not take too)."""
    if 400 <= response.status_code < 500:
        try:
            body = json.loads(response.content)
        except ValueError:
            raise AssertionError(f"a {response.status_code} that is not JSON: "
                                 f"{response.content[:200]!r}") from None
        error = body.get("error") if isinstance(body, dict) else None
        assert isinstance(error, str) and error.strip(), body
        assert "\n" not in error, error
    return None


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_its_contract(case: Any, live: Live) -> None:
    tokens = {PLACEHOLDERS["user"]: f"Bearer {live.proc.client.token}",
              PLACEHOLDERS["agent"]: f"Bearer {live.agent_token}"}
    sent = (case.headers or {}).get("Authorization")
    if sent in tokens:
        case.headers["Authorization"] = tokens[sent]
    case.call_and_validate(base_url=live.url, checks=CHECKS,
                           additional_checks=[one_error_line], timeout=60)


async def test_the_document_describes_every_route_the_controller_serves(
        tmp_path: Path) -> None:
    from skyjobs.config import load_config
    from skyjobs.controller.daemon import Controller
    from skyjobs.providers.fake import FakeProvider

    ctl = Controller(load_config(state_dir=tmp_path / "state", port=0),
                     providers={"local": FakeProvider()})
    await ctl.start()
    try:
        assert ctl._http is not None
        routes = list(ctl._http.app.router.routes())
    finally:
        await ctl.shutdown()
    served = {(r.method.lower(), r.resource.canonical) for r in routes
              if r.method not in ("HEAD", "*") and r.resource is not None}
    documented = {(op.method, op.path) for op in openapi.OPERATIONS}
    # The dashboard's pages are HTML for people, not part of the HTTP API.
    missing = {r for r in served - documented
               if r[1].startswith(("/api/", "/agent/", "/metrics"))}
    assert not missing, f"routes without an operation in skyjobs/openapi.py: {missing}"
    assert not documented - served, f"operations not served: {documented - served}"


def test_the_document_is_served_without_a_token(live: Live) -> None:
    with urllib.request.urlopen(f"{live.url}/api/v1/openapi.json", timeout=10) as resp:
        document = json.loads(resp.read())
    assert document["openapi"] == "3.1.0" and document == openapi.document()
    openapi_spec_validator.validate(document)  # a valid OpenAPI 3.1 document
    secured = [op.id for op in openapi.OPERATIONS if not op.auth]
    assert secured == ["openapi"]  # everything else needs a token


@pytest.mark.parametrize(("method", "path", "status", "fragment"), [
    ("DELETE", "/api/v1/jobs", 405, "DELETE is not allowed here (allowed: GET, HEAD, POST)"),
    ("GET", "/api/v1/no-such-thing", 404, "no such endpoint"),
    ("GET", "/api/v1/jobs?limt=5", 400, "unknown query parameter 'limt'"),
    ("GET", "/api/v1/jobs?limit=5&limit=0", 400, "'limit' is given more than once"),
])
def test_refusals_outside_the_handlers_are_one_json_line(live: Live, method: str, path: str,
                                                          status: int, fragment: str) -> None:
    req = urllib.request.Request(f"{live.url}{path}", method=method, headers={
        "Authorization": f"Bearer {live.proc.client.token}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    body = json.loads(refused.value.read())
    assert refused.value.code == status and fragment in body["error"], body
