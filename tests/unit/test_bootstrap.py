"""Node bootstrap without pip (docs/bootstrap.md): the controller serves its own node code as
a zipapp, the launch carries its sha256, and the shared boot script downloads, checks and
runs it. The boot test runs the real script against a real controller, with systemd-run
replaced by a stub and the script's /etc and /opt pointed into a temporary directory."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from skyjobs.controller import agent_dist
from skyjobs.providers import bootstrap
from tests.test_architecture import NODE_MAY_IMPORT, PACKAGE
from tests.unit.harness import TASK, Harness, submit, until

SHA = "ab" * 32


def plain_pythons() -> list[list[str]]:
    """Interpreters that cannot see this checkout or the venv's packages: this one without
    site (-S) and isolated (-I), and the system python3 when it is 3.11+."""
    out = [[sys.executable, "-I", "-S"]]
    system = Path("/usr/bin/python3")
    if system.exists() and subprocess.run(
            [str(system), "-I", "-c", "import sys; sys.exit(sys.version_info < (3, 11))"],
            check=False, timeout=30).returncode == 0:
        out.append([str(system), "-I"])
    return out


@pytest.fixture(scope="module")
def dist() -> agent_dist.AgentDist:
    return agent_dist.build()


@pytest.fixture
def pyz(tmp_path: Path, dist: agent_dist.AgentDist) -> Path:
    path = tmp_path / "agent.pyz"
    path.write_bytes(dist.data)
    return path


# --- the zipapp --------------------------------------------------------------------------


def test_zipapp_is_deterministic(dist: agent_dist.AgentDist) -> None:
    again = agent_dist.build()
    assert again.data == dist.data and again.sha256 == dist.sha256
    assert dist.sha256 == hashlib.sha256(dist.data).hexdigest()
    assert agent_dist.load() is agent_dist.load()  # built once per process


def test_zipapp_holds_exactly_the_node_side_modules(dist: agent_dist.AgentDist) -> None:
    allowed = tuple(m.replace(".", "/") for m in NODE_MAY_IMPORT)
    with zipfile.ZipFile(io.BytesIO(dist.data)) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert names == sorted(names) == list(dist.files)
    assert {i.date_time for i in infos} == {agent_dist.FIXED_TIME}
    stray = [n for n in names if n not in ("__main__.py", "skyjobs/__init__.py")
             and not n.startswith(allowed)]
    assert not stray, stray
    node = {p.relative_to(PACKAGE.parent).as_posix() for p in (PACKAGE / "node").rglob("*.py")}
    assert node <= set(names)  # every node module, whatever gets added later
    assert not any("__pycache__" in n or "controller" in n or "providers" in n for n in names)


@pytest.mark.parametrize("python", plain_pythons(), ids=lambda p: " ".join(p[1:]) + " " + p[0])
def test_zipapp_starts_the_agent_outside_the_venv(python: list[str], pyz: Path,
                                                  tmp_path: Path) -> None:
    # No SKYJOBS_* variables: the agent imports everything, then stops with its usage line.
    out = subprocess.run([*python, str(pyz)], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out.stderr
    assert "missing environment variable 'SKYJOBS_CONTROLLER_URL'" in out.stdout
    assert "Traceback" not in out.stderr


def test_zipapp_imports_nothing_but_itself_and_the_standard_library(
        pyz: Path, dist: agent_dist.AgentDist, tmp_path: Path) -> None:
    modules = [n[:-3].replace("/", ".").removesuffix(".__init__") for n in dist.files
               if n.startswith("skyjobs/")]
    probe = (f"import json, sys\nsys.path.insert(0, {str(pyz)!r})\n"
             f"for m in {modules!r}:\n    __import__(m)\n"
             "print(json.dumps({k: getattr(v, '__file__', None) or ''"
             " for k, v in sys.modules.items()}))\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", probe], cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                         timeout=60, check=True)
    loaded: dict[str, str] = json.loads(out.stdout)
    ours = {k: v for k, v in loaded.items() if k == "skyjobs" or k.startswith("skyjobs.")}
    assert set(modules) <= set(ours)
    assert all(v.startswith(str(pyz)) for v in ours.values()), ours
    foreign = {k for k in loaded if k.split(".")[0] not in sys.stdlib_module_names
               and k not in ours and k != "__main__"}
    assert not foreign, foreign


# --- the route ---------------------------------------------------------------------------


async def launched(h: Harness) -> tuple[int, int, dict[str, str]]:
    job_id = await submit(h, TASK)
    await until("a launch", lambda: h.fake.requests)
    aid = await h.current_attempt(job_id)
    [req] = {id(r): r for r in h.fake.requests.values()}.values()
    return job_id, aid, req.agent_env[0]


async def test_route_serves_the_zipapp_to_its_attempt_only(h: Harness) -> None:
    _, aid, env = await launched(h)
    dist = h.ctl.services.agent_dist
    assert env["SKYJOBS_AGENT_SHA256"] == dist.sha256  # what the node will check
    assert bootstrap.MODULES_KEY not in env  # no s3:// COPY bucket, no boto3 to install
    url = f"{h.ctl.url}/agent/v1/attempts/{aid}/agent.pyz"

    async def get(token: str | None, path: str = url) -> tuple[int, bytes, dict[str, str]]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with h.http.get(path, headers=headers) as resp:
            return resp.status, await resp.read(), dict(resp.headers)

    status, body, headers = await get(env["SKYJOBS_AGENT_TOKEN"])
    assert status == 200
    assert body == dist.data
    assert headers["Content-Type"] == "application/zip"
    assert headers["X-Skyjobs-Sha256"] == hashlib.sha256(body).hexdigest() == dist.sha256
    assert (await get(None))[0] == 401
    assert (await get("not-the-token"))[0] == 401
    assert (await get(h.ctl.token))[0] == 401  # the user token is not an agent's
    assert (await get(h.ctl.sessions.agent_token(aid + 1)))[0] == 401  # another attempt's
    other = url.replace(f"/attempts/{aid}/", f"/attempts/{aid + 1000}/")
    status, body, _ = await get(h.ctl.sessions.agent_token(aid + 1000), other)
    assert status == 404 and b"does not exist" in body  # no such attempt


async def test_launch_asks_for_boto3_only_with_s3_copy_buckets(h: Harness) -> None:
    job_id, aid, _ = await launched(h)
    store = h.ctl.store
    job = await store.call(store.sync.get_job, job_id)
    attempt = await store.call(store.sync.get_attempt, aid)

    def env_with(mounts: dict[str, object]) -> dict[str, str]:
        spec = {**job.task["spec"], "file_mounts": mounts}
        req = h.ctl.services.launch_request(
            dataclasses.replace(job, task={**job.task, "spec": spec}), attempt)
        return req.agent_env[0]

    assert env_with({"/c": {"source": "s3://b/p", "mode": "COPY"}})[
        bootstrap.MODULES_KEY] == "boto3"
    assert bootstrap.MODULES_KEY not in env_with({"/c": {"source": "s3://b/p"}})  # MOUNT


# --- the script --------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"agent_user": "ubuntu"}, {"package_spec": "x==1 y"}])
def test_rendered_script_is_valid_bash(kw: dict[str, str], tmp_path: Path) -> None:
    env = {"SKYJOBS_AGENT_SHA256": SHA, bootstrap.MODULES_KEY: "boto3 yaml",
           "SKYJOBS_AGENT_TOKEN": "a'b\"c $(reboot) `x`"}
    for etc in ("/etc/skyjobs", str(tmp_path / "a dir with spaces")):
        script = bootstrap.render(env, metadata_url="http://m", max_bytes=16 * 1024,
                                  etc_dir=etc, **kw)
        subprocess.run(["bash", "-n"], input=script, text=True, check=True, timeout=30)
        assert bootstrap.parse_agent_env(script) == {**env, "SKYJOBS_METADATA_URL": "http://m"}


def test_render_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(ValueError, match="not a module name"):
        bootstrap.render({bootstrap.MODULES_KEY: "boto3;reboot"}, metadata_url="http://m",
                         max_bytes=None)
    with pytest.raises(ValueError, match="plain NAME=value"):
        bootstrap.render({"1KEY": "x"}, metadata_url="http://m", max_bytes=None)
    with pytest.raises(ValueError, match="1 KiB limit"):
        bootstrap.render({}, metadata_url="http://m", max_bytes=1024)
    # No limit: GCE's metadata value limit is far beyond any script.
    assert bootstrap.render({"K": "x" * 20000}, metadata_url="http://m", max_bytes=None)


STUB = """#!/bin/bash
# systemd-run, as far as the boot script uses it: record the arguments, then run the command
# in the background in its own session with the unit's EnvironmentFile.
printf '%s\\n' "$@" > "$STUB_DIR/systemd-run.args"
envfile=
while [ $# -gt 0 ]; do
  case "$1" in
    --property=EnvironmentFile=*) envfile=${1#--property=EnvironmentFile=} ;;
    --*) ;;
    *) break ;;
  esac
  shift
done
set -a; . "$envfile"; set +a
cd "$STUB_HOME"
HOME="$STUB_HOME" setsid "$@" > "$STUB_DIR/agent.log" 2>&1 < /dev/null &
echo $! > "$STUB_DIR/agent.pid"
"""


class Node:
    """A sandbox for the boot script: its /etc and /opt, a bin directory first on PATH with
    the systemd-run stub, a systemctl that knows no units and a python3 without the venv."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.etc, self.opt, self.bin, self.home = (root / d for d in ("etc", "opt", "bin",
                                                                       "home"))
        for d in (self.bin, self.home):
            d.mkdir(parents=True)
        (self.bin / "systemd-run").write_text(STUB)
        (self.bin / "systemctl").write_text("#!/bin/sh\nexit 3\n")  # "inactive"
        system = next((p for p in plain_pythons() if p[0] != sys.executable), None)
        python = system[0] if system else f"{sys.executable} -S"
        (self.bin / "python3").write_text(f'#!/bin/sh\nexec {python} "$@"\n')
        for name in ("systemd-run", "systemctl", "python3"):
            (self.bin / name).chmod(0o755)

    def render(self, env: dict[str, str], fetch_seconds: int = 20) -> str:
        return bootstrap.render(env, metadata_url="http://127.0.0.1:9", max_bytes=16 * 1024,
                                etc_dir=str(self.etc), opt_dir=str(self.opt),
                                fetch_seconds=fetch_seconds)

    async def boot(self, env: dict[str, str]) -> tuple[int, str]:
        script = self.root / "boot.sh"
        script.write_text(self.render(env))
        proc = await asyncio.create_subprocess_exec(
            "bash", str(script), cwd=self.root, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={"PATH": f"{self.bin}:/usr/bin:/bin", "STUB_DIR": str(self.root),
                 "STUB_HOME": str(self.home)})
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace")

    def stop_agent(self) -> None:
        pid_file = self.root / "agent.pid"
        if pid_file.exists():
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)  # its own session
            except ProcessLookupError:
                pass


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path / "node")
    yield n
    n.stop_agent()


async def test_boot_downloads_checks_and_runs_the_served_agent(h: Harness, node: Node) -> None:
    job_id = await submit(h, {**TASK, "run": "sleep 1; echo hello from the zipapp"})
    await until("a launch", lambda: h.fake.requests)
    [req] = {id(r): r for r in h.fake.requests.values()}.values()
    code, out = await node.boot(req.agent_env[0])
    assert code == 0, out
    pyz = node.opt / "agent.pyz"
    assert hashlib.sha256(pyz.read_bytes()).hexdigest() == h.ctl.services.agent_dist.sha256
    assert stat.S_IMODE(pyz.stat().st_mode) == 0o644
    assert stat.S_IMODE((node.etc / "agent.env").stat().st_mode) == 0o600
    args = (node.root / "systemd-run.args").read_text().splitlines()
    assert args[:2] == ["--unit=skyjobs-agent", "--uid=root"]
    assert f"--property=EnvironmentFile={node.etc}/agent.env" in args
    assert args[-2:] == ["-I", str(pyz)] and args[-3].startswith(str(node.bin))
    # The downloaded agent fetches its task, reports in, runs it and reports its exit.
    await h.wait_status(job_id, "RUNNING", "SUCCEEDED", "FAILED")
    aid = await h.current_attempt(job_id)
    assert (aid, 0) in h.ctl.sessions.last_seen
    done = await h.wait_status(job_id, "SUCCEEDED", "FAILED")
    agent_log = (node.root / "agent.log").read_text()
    assert done["status"] == "SUCCEEDED", agent_log
    assert f"agent: attempt {aid} of job {job_id}, node 0" in agent_log
    status, logs = await h.api("GET", f"/api/v1/jobs/{job_id}/logs?attempt=1")
    assert status == 200 and "hello from the zipapp" in logs["data"]


async def test_boot_refuses_an_agent_whose_hash_differs(h: Harness, node: Node) -> None:
    _, _, env = await launched(h)
    code, out = await node.boot({**env, "SKYJOBS_AGENT_SHA256": "0" * 64})
    assert code != 0
    assert "the launch announced " + "0" * 64 + ": not running it" in out
    assert not (node.opt / "agent.pyz").exists()
    assert not (node.root / "systemd-run.args").exists()
    assert env["SKYJOBS_AGENT_TOKEN"] not in out


async def test_boot_without_a_hash_or_with_a_wrong_token_stops_at_once(h: Harness,
                                                                       node: Node) -> None:
    _, _, env = await launched(h)
    code, out = await node.boot({k: v for k, v in env.items() if k != "SKYJOBS_AGENT_SHA256"})
    assert code != 0 and "no SKYJOBS_AGENT_SHA256" in out
    code, out = await node.boot({**env, "SKYJOBS_AGENT_TOKEN": "stolen?"})
    assert code != 0 and "HTTP 401: giving up" in out
    assert not (node.root / "systemd-run.args").exists()


def test_boot_retries_an_absent_controller_then_gives_up(node: Node) -> None:
    env = {"SKYJOBS_CONTROLLER_URL": "http://127.0.0.1:9", "SKYJOBS_ATTEMPT_ID": "1",
           "SKYJOBS_AGENT_TOKEN": "t", "SKYJOBS_AGENT_SHA256": SHA}
    (node.root / "boot.sh").write_text(node.render(env, fetch_seconds=2))
    out = subprocess.run(["bash", str(node.root / "boot.sh")], capture_output=True, text=True,
                         env={"PATH": f"{node.bin}:/usr/bin:/bin"}, timeout=60, check=False)
    assert out.returncode != 0
    assert "retrying in 1s" in out.stderr and "gave up after 2s" in out.stderr
