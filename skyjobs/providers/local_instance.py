"""One simulated instance of the local provider: its "hypervisor" process.

Run as ``python -m skyjobs.providers.local_instance DIR``. It detaches into its own session
(so a ``kill -9`` of the controller does not touch it), writes ``instance.json``, serves an
IMDSv2-style metadata endpoint on loopback and starts the skyjobs agent. A preemption posted
to ``/sim/preempt`` is served as an AWS-format spot ``instance-action`` notice, and when the
notice runs out the whole session (agent and job included) is killed, as a cloud would.

Stdlib only, because it starts once per simulated node and must be cheap.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from skyjobs.fsutil import atomic_write

STATE_FILE = "instance.json"
LAUNCH_FILE = "launch.json"


def write_json_atomic(path: Path, data: dict[str, object]) -> None:
    atomic_write(path, json.dumps(data))


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces; the fields after the last ')' are fixed.
    return raw[raw.rindex(")") + 2:].split()


def process_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Alive and not a zombie; with start_ticks, also not a recycled pid."""
    fields = _proc_stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return start_ticks is None or int(fields[19]) == start_ticks


def start_ticks(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def session_members(*sids: int) -> list[int]:
    """Live processes of the given sessions (one scan of /proc for all of them)."""
    wanted, pids = set(sids), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _proc_stat(int(entry))
        if fields and int(fields[3]) in wanted and fields[0] not in ("Z", "X"):
            pids.append(int(entry))
    return pids


def kill_session(*sids: int, sig: int = signal.SIGKILL) -> None:
    """Signal every process of the given instances, including job process groups."""
    me = os.getpid()
    # Signal ourselves last, or the hypervisor would die before the rest of its VM.
    for pid in sorted(session_members(*sids), key=lambda p: p == me):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class Instance:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.launch = read_json(directory / LAUNCH_FILE) or {}
        self.lock = threading.Lock()
        self.notice: dict[str, str] | None = None
        self.noticed = threading.Event()
        self.tokens: set[str] = set()

    def state(self) -> dict[str, object]:
        return read_json(self.dir / STATE_FILE) or {}

    def update_state(self, **changes: object) -> None:
        with self.lock:
            write_json_atomic(self.dir / STATE_FILE, {**self.state(), **changes})

    def preempt(self, notice_s: float) -> None:
        when = datetime.fromtimestamp(time.time() + notice_s, UTC)
        with self.lock:
            if self.notice is not None:
                return
            self.notice = {"action": "terminate", "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
        self.noticed.set()
        self.update_state(notice_at=time.time(), notice_s=notice_s)
        threading.Timer(max(0.0, notice_s), self.die, args=("preempted",)).start()

    def die(self, reason: str) -> None:
        self.update_state(state="terminated", reason=reason, ended_at=time.time())
        kill_session(os.getsid(0))


def make_handler(inst: Instance) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep the instance log quiet
            return

        def _send(self, code: int, body: str, ctype: str = "text/plain") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:  # noqa: N802 - http.server naming
            if self.path == "/latest/api/token":
                token = secrets.token_urlsafe(24)
                inst.tokens.add(token)
                self._send(200, token)
            else:
                self._send(404, "not found")

        def do_GET(self) -> None:  # noqa: N802
            if self.headers.get("X-aws-ec2-metadata-token") not in inst.tokens:
                self._send(401, "unauthorized")
                return
            url = urlparse(self.path)
            path = url.path
            if path == "/latest/meta-data/spot/instance-action":
                wait = parse_qs(url.query).get("wait", ["0"])[0]
                if inst.notice is None and wait.isdigit():
                    inst.noticed.wait(min(float(wait), 60.0))
                if inst.notice is None:
                    self._send(404, "not found")
                else:
                    self._send(200, json.dumps(inst.notice), "application/json")
            elif path == "/latest/meta-data/instance-id":
                self._send(200, str(inst.launch.get("instance_id", "")))
            elif path == "/latest/meta-data/placement/availability-zone":
                self._send(200, str(inst.launch.get("zone", "")))
            else:
                self._send(404, "not found")

        def do_POST(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            if url.path != "/sim/preempt":
                self._send(404, "not found")
                return
            try:
                notice = float(parse_qs(url.query).get("notice", ["0"])[0])
            except ValueError:
                self._send(400, "notice must be a number of seconds")
                return
            inst.preempt(notice)
            self._send(200, "ok")

    return Handler


def serve(directory: Path, ready_fd: int, lock_fd: int) -> None:
    inst = Instance(directory)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(inst))
    threading.Thread(target=server.serve_forever, daemon=True, name="imds").start()
    port = server.server_address[1]
    home = directory / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, **{k: str(v) for k, v in dict(inst.launch.get("env", {})).items()},
           "HOME": str(home), "SKYJOBS_METADATA_URL": f"http://127.0.0.1:{port}",
           "SKYJOBS_METADATA_LONG_POLL": "1",
           "SKYJOBS_INSTANCE_DIR": str(directory)}
    log = open(directory / "agent.log", "ab")  # noqa: SIM115 - lives as long as the instance
    agent = subprocess.Popen([sys.executable, "-m", "skyjobs.node.agent"], cwd=home, env=env,
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        inst.update_state(state="running", pid=os.getpid(), sid=os.getsid(0),
                          start_ticks=start_ticks(os.getpid()), metadata_port=port,
                          agent_pid=agent.pid, started_at=time.time())
        os.close(lock_fd)
        os.write(ready_fd, b"1")
        os.close(ready_fd)
    except BaseException:
        # A boot that fails once the agent runs must not leave the agent behind: nothing
        # would ever terminate an instance the provider was told did not boot.
        agent.kill()
        agent.wait()
        raise
    agent.wait()
    # A real VM keeps running after its agent exits; so does this one, until the provider
    # terminates it (which kills the whole session) or a preemption timer fires.
    while True:
        time.sleep(3600)


def booted_or_tombstoned(directory: Path) -> bool:
    state = read_json(directory / STATE_FILE)
    if not state:
        return False
    if state.get("state") == "terminated":
        return True
    pid, ticks = state.get("pid"), state.get("start_ticks")
    return isinstance(pid, int) and process_alive(pid, ticks if isinstance(ticks, int) else None)


def main() -> None:
    directory = Path(sys.argv[1]).resolve()
    # The lock serialises boots and terminations of this instance: a launch replayed after a
    # controller crash, or a terminate racing a boot, waits here and then sees the outcome.
    lock_fd = os.open(directory / "launch.lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    if booted_or_tombstoned(directory):
        os._exit(0)
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        # The launcher: wait until the instance says it is up, then leave it orphaned, so
        # it is reaped by init rather than lingering as the controller's zombie.
        os.close(write_end)
        ok = os.read(read_end, 1) == b"1"
        os._exit(0 if ok else 1)
    os.close(read_end)
    # Let go of the launcher's pipes, or whoever waits on them would wait forever.
    log_fd = os.open(directory / "instance.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    try:
        serve(directory, write_end, lock_fd)
    except Exception as err:  # noqa: BLE001 - an instance that cannot boot reports and exits
        (directory / "boot-error.txt").write_text(repr(err))
        os._exit(1)


if __name__ == "__main__":
    main()
