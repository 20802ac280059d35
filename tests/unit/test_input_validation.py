"""Bad input is refused once, at the boundary, with one clear line (issue 8, item 5).

Spec parser, HTTP API (in-process controller on the fake provider) and the log offsets.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest

from skyjobs import cli
from skyjobs.client import Client
from skyjobs.exceptions import SpecError
from skyjobs.spec import TaskSpec, load_task, parse_task
from tests.unit.harness import TASK, Harness, until

# --- spec ----------------------------------------------------------------------------------


def _load(tmp_path: Path, text: str) -> SpecError:
    path = tmp_path / "task.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        load_task(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return err.value


@pytest.mark.parametrize(("text", "fragment"), [
    ("a: " + "[" * 10_000 + "]" * 10_000, "nested more than 32 levels deep"),
    ("{a: " * 10_000 + "1" + "}" * 10_000, "nested more than 32 levels deep"),
    ("num_nodes: " + "9" * 5000, "num_nodes (line 1): a 5000-digit number is too long"),
    ("num_nodes: 513", "num_nodes: Input should be less than or equal to 512"),
    ("resources: {accelerators: 'V100:inf'}", "resources.accelerators: V100:inf: count must"),
    ("resources: {accelerators: {V100: .inf}}", "resources.accelerators: V100:inf: count"),
    ("resources: {accelerators: 'V100:1e9'}", "count must be a whole number"),
    ("resources: {cpus: 1e999}", "resources.cpus: "),
    ("resources: {memory: '" + "9" * 400 + "+'}", "resources.memory: "),
    ("resources: {job_recovery: {deadline_hours: .inf, expected_runtime_hours: 1}}",
     "resources.job_recovery.deadline_hours"),
    ("resources: {job_recovery: {max_restarts_on_errors: 99999999999}}",
     "max_restarts_on_errors"),
    ("resources: {job_recovery: {recover_on_exit_codes: [99999999999999999999]}}",
     "recover_on_exit_codes.0"),
    ('run: "echo \\0"', "run: contains a NUL byte"),
    ('setup: "echo \\0"', "setup: contains a NUL byte"),
    ('envs: {"A\\0": x}', "envs.'A\\x00': the key contains a NUL byte"),
    ('envs: {A: "x\\0"}', "envs.A: contains a NUL byte"),
    ('workdir: "./src\\0"', "workdir: contains a NUL byte"),
    ('file_mounts: {"/a\\0": /tmp}', "the key contains a NUL byte"),
    ('file_mounts: {/a: "/tmp\\0"}', "file_mounts./a: contains a NUL byte"),
    ("envs: {A: !!binary AAAA}", "envs.A: binary values are not supported"),
    ("envs: {A: " + "9" * 40 + "}", "envs: A: value must be a string or a (short) number"),
    ('envs: {"A\\n": x}', "is not a valid environment variable name"),
    ("name: 2024-13-45", "name (line 1): cannot read '2024-13-45'"),
    ("workdir: ~nosuchuser_xyz/src", "workdir: '~nosuchuser_xyz/src'"),
    ("42", "the task must be a YAML mapping"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c]\n"
     "resources: {accelerators: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d]}\n",
     "more than 100000 values"),
])
def test_bad_yaml_is_one_spec_error_naming_file_and_key(tmp_path: Path, text: str,
                                                         fragment: str) -> None:
    assert fragment in str(_load(tmp_path, text))


def test_unreadable_and_oversized_files_are_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_task(tmp_path)  # a directory
    with pytest.raises(SpecError, match="cannot read"):
        load_task(tmp_path / "a\0b.yaml")
    big = tmp_path / "big.yaml"
    big.write_text("run: '" + "x" * (2 << 20) + "'\n")
    with pytest.raises(SpecError, match="larger than 1 MiB"):
        load_task(big)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"run: \xff\xfe\n")
    with pytest.raises(SpecError, match="not a UTF-8 text file"):
        load_task(binary)


@pytest.mark.parametrize("overrides", [
    {"1X": "5"}, {"A=B": "x"}, {"": "x"}, {"A": "x\0"}, {"A\n": "x"}, {"A": "\ud800"},
    {"A": 5}, ["A"],
])
def test_env_overrides_are_validated_like_the_task_s_own(overrides: Any) -> None:
    spec = parse_task({"run": "x", "envs": {"OK": "1"}})
    with pytest.raises(SpecError) as err:
        spec.with_env_overrides(overrides)
    assert str(err.value).startswith("--env: ") and "\n" not in str(err.value)


def test_env_overrides_round_trip_through_the_store_form() -> None:
    spec = parse_task({"run": "x", "envs": {"A": "1"}, "secrets": {"TOKEN": None}})
    done = spec.with_env_overrides({"TOKEN": "s", "B": "é"})
    assert (done.envs, done.secrets) == ({"A": "1", "B": "é"}, {"TOKEN": "s"})
    assert TaskSpec.model_validate(done.stored()) == done


@pytest.mark.parametrize("cpus", [1_000_000, 0.1234567, "4.5+", 1e-07, 0])
def test_quantities_are_stored_exactly(cpus: Any) -> None:
    # ``4.1234567`` used to be stored as "4.12346" and 1e6 as "1e+06", which the runner's
    # re-validation refused: the job's runner then crashed for ever.
    spec = parse_task({"run": "x", "resources": {"cpus": cpus, "memory": cpus}})
    assert TaskSpec.model_validate(spec.stored()) == spec


# --- HTTP API ------------------------------------------------------------------------------


async def raw(h: Harness, method: str, path: str, data: bytes | str = b"",
              token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {h.ctl.token if token is None else token}",
               "Content-Type": "application/json"}
    async with h.http.request(method, f"{h.ctl.url}{path}", data=data,
                              headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def submit(h: Harness, task: dict[str, Any] | None = None) -> int:
    status, body = await h.api("POST", "/api/v1/jobs", {"task": task or TASK})
    assert status == 201, body
    return int(body["id"])


@pytest.mark.parametrize("attempt", ["²", "١", "1_0", " 1", "+", "9" * 30, "0", "-1"])
async def test_agent_urls_with_a_non_integer_attempt_are_refused(h: Harness,
                                                                 attempt: str) -> None:
    for method, what in [("GET", "task"), ("GET", "archive"), ("POST", "heartbeat"),
                         ("POST", "events"), ("POST", "logs")]:
        status, _ = await raw(h, method, f"/agent/v1/attempts/{attempt}/{what}", token="")
        assert status == 401, (method, what)


POSTS = ["/api/v1/jobs", "/api/v1/cancel", "/api/v1/plan", "/api/v1/local/capacity",
         "/api/v1/webhooks/test", "/api/v1/jobs/1/preempt"]


async def test_deeply_nested_json_is_a_400_on_every_post(h: Harness) -> None:
    job_id = await submit(h)
    aid = await until("an attempt", lambda: h.ctl.store.sync.get_job(job_id).current_attempt)
    deep = "[" * 100_000 + "]" * 100_000
    deep_object = '{"task": ' + '{"a": ' * 50 + "1" + "}" * 50 + "}"
    for path in POSTS:
        for body in (deep, deep_object, '{"a": NaN}', '{"a": ' + "9" * 5000 + "}", "\xff"):
            status, reply = await raw(h, "POST", path, body.encode("latin-1"))
            assert status == 400, (path, reply)
    for what in ("heartbeat", "events"):
        status, _ = await raw(h, "POST", f"/agent/v1/attempts/{aid}/{what}", deep,
                              token=h.ctl.sessions.agent_token(aid))
        assert status == 400


@pytest.mark.parametrize("query", [
    "/api/v1/jobs/{big}", "/api/v1/jobs/{big}/events", "/api/v1/jobs/{big}/logs",
    "/api/v1/jobs/1/events?after={big}", "/api/v1/jobs/1/logs?offset={big}",
    "/api/v1/jobs/1/logs?attempt={big}", "/api/v1/jobs/1/logs?rank={big}",
    "/api/v1/jobs?limit={big}", "/api/v1/jobs?offset={big}", "/api/v1/jobs/²",
    "/api/v1/jobs?limit=١",
])
async def test_huge_ids_and_offsets_are_a_400(h: Harness, query: str) -> None:
    await submit(h)
    status, _ = await h.api("GET", query.format(big=10**20))
    assert status == 400


async def test_cancel_with_one_bad_id_changes_nothing(h: Harness) -> None:
    job_id = await submit(h)
    await h.wait_status(job_id, "PROVISIONING")
    for ids in ([job_id, 10**20], [job_id, True], [job_id, -1], [job_id, 1.5]):
        status, reply = await h.api("POST", "/api/v1/cancel", {"ids": ids})
        assert status == 400, reply
    for body in ({"all": "no"}, {"all": True, "ids": [job_id]}, {"ids": []}):
        status, _ = await h.api("POST", "/api/v1/cancel", body)
        assert status == 400
    assert (await h.job(job_id))["status"] == "PROVISIONING"
    status, reply = await h.api("POST", "/api/v1/cancel", {"ids": [job_id, job_id, 99]})
    assert status == 200 and reply["cancelled"] == [job_id]


@pytest.mark.parametrize("zone", [["local-a"], {"z": 1}, 5, None])
async def test_capacity_with_a_zone_that_is_not_a_string_is_a_400(h: Harness,
                                                                  zone: Any) -> None:
    h.fake.set_spot_capacity = lambda zone, ok: []  # type: ignore[attr-defined]
    status, _ = await h.api("POST", "/api/v1/local/capacity", {"zone": zone, "spot": False})
    assert status == 400


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/plan"])
@pytest.mark.parametrize("task", [
    {"run": "x", "resources": {"accelerators": "V100:inf"}},
    {"run": "x", "num_nodes": int("9" * 4000)},
    {"run": "x", "resources": {"cpus": 10**400}},
    {"run": "x\0"},
    {"run": "\ud800"},
])
async def test_bad_tasks_are_a_400_on_submit_and_plan(h: Harness, path: str,
                                                     task: dict[str, Any]) -> None:
    status, reply = await h.api("POST", path, {"task": task})
    assert status == 400, reply
    assert (await h.ctl.store.call(h.ctl.store.sync.count_jobs)) in ({}, {"PENDING": 0})


@pytest.mark.parametrize(("envs", "fragment"), [
    ({"A=B": "x"}, "envs: 'A=B' is not a valid environment variable name"),
    ({"1X": "5"}, "envs: '1X' is not a valid"),
    ({"A": "x\0"}, "contains a NUL byte"),
    ({"A": 1}, "envs: must be a mapping of NAME to string"),
    ("A=B", "envs: must be a mapping of NAME to string"),
])
async def test_bad_env_overrides_are_a_400_and_store_nothing(h: Harness, envs: Any,
                                                             fragment: str) -> None:
    status, reply = await h.api("POST", "/api/v1/jobs", {"task": TASK, "envs": envs})
    assert status == 400 and fragment in reply["error"], reply
    status, reply = await h.api("GET", "/api/v1/jobs")
    assert reply["jobs"] == []


async def test_an_empty_token_never_authorizes(h: Harness) -> None:
    h.ctl.services.token = ""
    for token in ("", " "):
        status, _ = await h.api("GET", "/api/v1/jobs", token=token)
        assert status == 401
    async with h.http.get(f"{h.ctl.url}/api/v1/jobs") as resp:
        assert resp.status == 401
    async with h.http.get(f"{h.ctl.url}/api/v1/jobs",
                          headers={"Authorization": "Bearer \xe9"}) as resp:
        assert resp.status == 401


async def test_concurrent_submits_of_one_workdir_both_succeed(h: Harness) -> None:
    archive = base64.b64encode(b"not really a tarball" * 20_000).decode()
    body = {"task": TASK, "archive": archive}
    replies = await asyncio.gather(*[h.api("POST", "/api/v1/jobs", body) for _ in range(6)])
    assert [status for status, _ in replies] == [201] * 6
    if h.ctl.config.database_url is not None:  # shared store: one row, no file
        rows = await h.ctl.store.call(h.ctl.store.sync.archive_rows_before, float("inf"), ())
        assert len(rows) == 1
        assert list((h.ctl.state_dir / "archives").iterdir()) == []
        return
    archives = list((h.ctl.state_dir / "archives").iterdir())
    assert len(archives) == 1 and archives[0].stat().st_mode & 0o077 == 0


async def test_agent_rejects_change_nothing_and_are_not_liveness(h: Harness) -> None:
    job_id = await submit(h)
    aid = await until("an attempt", lambda: h.ctl.store.sync.get_job(job_id).current_attempt)
    h.ctl.sessions.last_seen.clear()
    for event in ({"kind": "exit", "exit_code": 10**20, "rank": 0},
                  {"kind": "exit", "exit_code": True, "rank": 0},
                  {"kind": "phase", "phase": "nope", "rank": 0},
                  {"kind": "exit", "exit_code": 0, "rank": 10**30},
                  {"kind": "bogus", "rank": 0}):
        status, _ = await h.agent(aid, event)
        assert status == 400, event
    for beat in ({"rank": 10**30}, {"rank": True}, {"rank": 0, "wait_go": "x"},
                 {"rank": 0, "wait_go": -1}):
        status, _ = await h.api("POST", f"/agent/v1/attempts/{aid}/heartbeat", beat,
                                token=h.ctl.sessions.agent_token(aid))
        assert status == 400, beat
    assert h.ctl.sessions.last_seen == {}
    status, _ = await raw(h, "POST", f"/agent/v1/attempts/{aid}/logs?rank=0&offset=-5", b"x",
                          token=h.ctl.sessions.agent_token(aid))
    assert status == 400
    # A huge wait is capped (float(10**400) used to overflow); the wait ends at the go.
    beat = asyncio.create_task(h.api("POST", f"/agent/v1/attempts/{aid}/heartbeat",
                                     {"rank": 0, "wait_go": 10**400},
                                     token=h.ctl.sessions.agent_token(aid)))
    await asyncio.sleep(0.2)
    h.ctl.sessions.grant_go(aid)
    status, reply = await asyncio.wait_for(beat, 35)
    assert status == 200


async def test_a_notice_with_odd_advisory_fields_is_still_recorded(h: Harness) -> None:
    job_id = await submit(h)
    aid = await h.run_to_running(job_id)
    notice = {"action": ["x"], "time": "0001-01-01T00:00:00"}
    status, _ = await h.agent(aid, {"kind": "notice", "notice": notice, "rank": 0,
                                    "seen_at": 10**400})
    assert status == 200
    await until("recovery", lambda: h.ctl.store.sync.get_job(job_id).recovery_count == 1)


# --- logs: byte offsets end to end ---------------------------------------------------------


async def test_log_chunks_never_split_a_character(h: Harness) -> None:
    job_id = await submit(h)
    await h.wait_status(job_id, "PROVISIONING")
    # A 3-byte character straddles the 1 MiB chunk boundary; more follow.
    text = "a" * ((1 << 20) - 1) + "€" + "ünïcödé ✓ 日本語\n" * 1000
    await h.write_log(job_id, text.encode())
    got, offset = [], 0
    while True:
        status, reply = await h.api("GET", f"/api/v1/jobs/{job_id}/logs?offset={offset}")
        assert status == 200
        if reply["next_offset"] == offset:
            break
        got.append(reply["data"])
        offset = reply["next_offset"]
    assert "".join(got) == text


async def test_a_live_log_ending_mid_character_waits_for_the_rest(h: Harness) -> None:
    job_id = await submit(h)
    await h.wait_status(job_id, "PROVISIONING")
    await h.write_log(job_id, "x€".encode()[:-1])  # a chunk ending mid-character
    _, reply = await h.api("GET", f"/api/v1/jobs/{job_id}/logs")
    assert (reply["data"], reply["next_offset"]) == ("x", 1)
    await h.write_log(job_id, "x€y".encode(), offset=0)
    _, reply = await h.api("GET", f"/api/v1/jobs/{job_id}/logs?offset=1")
    assert (reply["data"], reply["next_offset"]) == ("€y", 5)


class _FakeClient(Client):
    """The real client with its one HTTP call replaced: the log walk is the client's."""

    def __init__(self, text: str, chunk: int) -> None:
        super().__init__("http://fake", "token")
        self.raw, self.chunk = text.encode(), chunk

    def _send(self, method: str, path: str, query: Any = None, body: Any = None) -> Any:
        offset = int(query["offset"])
        data = self.raw[offset:offset + self.chunk]
        while data and len(data) < len(self.raw) - offset:
            try:
                data.decode()
                break
            except UnicodeDecodeError:
                data = data[:-1]
        return {"data": data.decode(), "next_offset": offset + len(data), "attempts": 1,
                "status": "SUCCEEDED", "attempt": 1, "rank": 0, "offset": offset,
                "bytes": len(data), "size": len(self.raw)}


def test_follow_logs_advances_by_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    text = "héllo wörld → ✓ 日本語 " * 50
    cli._follow_logs(_FakeClient(text, 7), 1, 1, follow=False)
    assert capsys.readouterr().out == text
