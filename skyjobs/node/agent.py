"""The node agent: runs one node of one attempt and keeps the controller informed.

Started by the provider with ``SKYJOBS_CONTROLLER_URLS`` (the controllers' base URLs, comma
separated, owner first; or the single ``SKYJOBS_CONTROLLER_URL``), ``SKYJOBS_ATTEMPT_ID``,
``SKYJOBS_AGENT_TOKEN`` (this attempt's own credential), ``SKYJOBS_NODE_RANK`` and
``SKYJOBS_METADATA_URL`` (the instance metadata service). It fails over between the
controllers, and each heartbeat answer refreshes their list. It fetches its task, prepares the
checkpoint buckets, runs ``setup`` then ``run``, heartbeats, ships logs, and watches the
preemption notice: on a notice it tells the controller at once, signals the job so it can
checkpoint, and uploads COPY buckets. Reports are retried until the controller takes them,
so a controller restart loses nothing.

Stdlib only: it must start fast and install anywhere.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from skyjobs.fsutil import atomic_write
from skyjobs.node.buckets import BucketSet, make_bucket, node_path
from skyjobs.node.client import ControllerClient, controller_urls
from skyjobs.node.notice import NoticeWatcher

FETCH_RETRY_SECONDS = 600.0
GO_WAIT_SECONDS = 20.0
FINAL_LOG_CHUNKS = 1024  # at exit, ship up to 1 GiB of log that is still unsent


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} agent: {msg}", flush=True)


class Agent:
    def __init__(self, env: dict[str, str]) -> None:
        self.rank = int(env.get("SKYJOBS_NODE_RANK", "0"))
        self.client = ControllerClient(controller_urls(env), env["SKYJOBS_ATTEMPT_ID"],
                                       env["SKYJOBS_AGENT_TOKEN"], self.rank)
        self.metadata_url = env.get("SKYJOBS_METADATA_URL")
        instance_dir = env.get("SKYJOBS_INSTANCE_DIR")
        self.fs_root = Path(instance_dir) / "root" if instance_dir else None
        self.log_path = (Path(instance_dir) if instance_dir else Path.home()) / "skyjobs-job.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.noticed = threading.Event()
        self.draining = threading.Event()
        self.go = threading.Event()
        self.done = threading.Event()
        # Set once run has returned; a notice after that is not the job's (see _on_notice).
        self.run_ended = threading.Event()
        self._end_lock = threading.Lock()
        self.buckets = BucketSet([])
        self.task: dict[str, Any] = {}
        self.phase = "setup"  # what a crash of the agent itself is reported as
        # When this node saw the notice; the exit report carries it too, since the exit
        # may reach the controller before the notice report does.
        self.notice_seen_at: float | None = None

    # --- phases ----------------------------------------------------------------------------

    def main(self) -> int:
        self.task = self._fetch_task()
        try:
            return self._main()
        except Exception as err:  # noqa: BLE001 - reported, never a silent exit
            return self._crashed(err)

    def _crashed(self, err: Exception) -> int:
        """Anything the agent did not expect (an archive it cannot unpack, a script the OS
        will not start) is reported as the failure of the phase it happened in, with its
        reason in the job's log: an agent that dies unreported looks like lost capacity,
        and the job would be relaunched for ever."""
        what = f"{type(err).__name__}: {err}"
        log(f"agent error in {self.phase}: {what}")
        try:
            with open(self.log_path, "ab") as out:
                out.write(f"--- skyjobs: agent error in {self.phase}: {what}\n".encode())
        except OSError:
            pass
        return self._finish(1, self.phase, error=what)

    def _fetch_task(self) -> dict[str, Any]:
        """The task, once every node of the attempt has an address: SKYPILOT_NODE_IPS with
        an empty entry breaks rank-0 launchers and hostfiles."""
        deadline = time.monotonic() + FETCH_RETRY_SECONDS
        while True:
            task: dict[str, Any] = self.client.retrying(
                lambda: self.client.call("GET", f"/task?rank={self.rank}"),
                FETCH_RETRY_SECONDS, "fetch task")
            if all(task.get("node_ips", [])) or time.monotonic() > deadline:
                return task
            time.sleep(1.0)

    def _main(self) -> int:
        log(f"attempt {self.task['attempt']} of job {self.task['job_id']}, node {self.rank}")
        threading.Thread(target=self._heartbeat_loop, daemon=True, name="heartbeat").start()
        threading.Thread(target=self._log_loop, daemon=True, name="logs").start()
        if self.metadata_url:
            NoticeWatcher(self.metadata_url, float(self.task["notice_poll_interval"]),
                          self._on_notice).start()
        try:
            workdir = self._prepare_files()
        except (OSError, ValueError, RuntimeError) as err:
            # A bucket that cannot be mounted or fetched is a setup failure, not a crash.
            log(f"preparing files failed: {err}")
            with open(self.log_path, "ab") as out:
                out.write(f"--- skyjobs: preparing files failed: {err}\n".encode())
            return self._finish(1, "setup")
        if not all(self.task.get("node_ips", [])):
            log("some nodes still have no address; SKYPILOT_NODE_IPS is incomplete")
        env = self._job_env()
        code = 0
        if self.task.get("setup"):
            self.client.report({"kind": "phase", "phase": "setup"})
            code = self._run_script(self.task["setup"], workdir, env, "setup")
            if code != 0:
                return self._finish(code, "setup")
        self.client.report({"kind": "phase", "phase": "ready"})
        while not self.go.wait(timeout=0.2):
            if self.noticed.is_set():
                return self._finish(143, "setup")
        if self.buckets.has_copy:
            # The previous attempt may have uploaded its last checkpoint (on its notice)
            # after this node first downloaded: fetch what changed before run starts.
            self.buckets.refresh_copies()
        self.client.report({"kind": "phase", "phase": "running"})
        self.phase = "run"
        if self.task.get("run"):
            code = self._run_script(self.task["run"], workdir, env, "run")
        with self._end_lock:
            self.run_ended.set()
        return self._finish(code, "run")

    def _finish(self, code: int, phase: str, error: str | None = None) -> int:
        if self.buckets.has_copy:
            self._upload("exit")
        for _ in range(FINAL_LOG_CHUNKS):  # the rest of the log, 1 MiB at a time
            if not self._ship_logs():
                break
        self.done.set()
        self.client.report({"kind": "exit", "exit_code": code, "phase": phase,
                            "noticed": self.noticed.is_set(), "seen_at": self.notice_seen_at,
                            **({"error": error[:500]} if error else {})})
        log(f"{phase} exited with {code}; reported")
        return 0

    def _prepare_files(self) -> Path:
        home = Path.home()
        workdir = home / "sky_workdir"
        workdir.mkdir(parents=True, exist_ok=True)
        if self.task.get("has_archive"):
            data = self.client.retrying(lambda: self.client.request("GET", "/archive"),
                                        FETCH_RETRY_SECONDS, "fetch workdir")
            self._unpack(data, workdir)
        self.buckets = BucketSet([make_bucket(b, self.fs_root)
                                  for b in self.task.get("buckets", [])])
        self.buckets.prepare()
        if self.buckets.has_copy:
            threading.Thread(target=self._copy_loop, daemon=True, name="copy-sync").start()
        return workdir

    def _unpack(self, data: bytes, workdir: Path) -> None:
        archive = Path.home() / ".skyjobs-archive.tar.gz"
        atomic_write(archive, data)
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                top, _, rest = member.name.partition("/")
                if top == "workdir":
                    dest = workdir
                elif top == "mounts":
                    index, _, rest = rest.partition("/")
                    target = self.task["local_mounts"][int(index)]
                    dest = node_path(target, self.fs_root)
                else:
                    continue
                member.name = rest
                if rest:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    tar.extract(member, dest, filter=_workdir_filter)
                elif member.isfile():  # a single-file mount
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(member)
                    if src is not None:
                        dest.write_bytes(src.read())

    def _job_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKYJOBS_")}
        t = self.task
        env.update({
            "SKYPILOT_TASK_ID": t["task_id"],
            "SKYPILOT_NODE_RANK": str(self.rank),
            "SKYPILOT_NODE_IPS": "\n".join(t["node_ips"]),
            "SKYPILOT_NUM_NODES": str(t["num_nodes"]),
            "SKYPILOT_NUM_GPUS_PER_NODE": str(t["gpus_per_node"]),
            "SKYJOBS_JOB_ID": str(t["job_id"]),
            "SKYJOBS_ATTEMPT": str(t["attempt"]),
            "SKYJOBS_RECOVERY_COUNT": str(t["recovery_count"]),
            # Job arrays (submit --num-jobs): this job's rank, as SkyPilot pools name it.
            "SKYPILOT_JOB_RANK": str(t.get("job_rank", 0)),
        })
        if t.get("array_id") is not None:
            env["SKYJOBS_ARRAY_ID"] = str(t["array_id"])
        if self.fs_root is not None:
            env["SKYJOBS_FS_ROOT"] = str(self.fs_root)
        env.update(t.get("envs", {}))
        return env

    def _run_script(self, script: str, cwd: Path, env: dict[str, str], phase: str) -> int:
        with open(self.log_path, "ab") as out:
            out.write(f"--- skyjobs: {phase} (node {self.rank}) ---\n".encode())
            out.flush()
            # From a file, not `bash -c`: one argument may not exceed 128 KiB (E2BIG), and
            # a long generated script is no reason for a job to fail.
            path = Path.home() / f".skyjobs-{phase}.sh"
            atomic_write(path, script)
            # Its own process group, so the notice signal reaches the job and its children.
            self.proc = subprocess.Popen(["/bin/bash", str(path)], cwd=cwd, env=env,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, process_group=0)
            self._note_job_group(self.proc.pid)
            if self.noticed.is_set():
                self._signal_job()
            code = self.proc.wait()
        return code if code >= 0 else 128 - code

    def _note_job_group(self, pgid: int) -> None:
        """On a local instance, tell the hypervisor which process groups are the job's, so
        a termination can signal them without scanning every process."""
        if self.fs_root is None:
            return
        path = self.fs_root.parent / "job-groups.json"
        try:
            known = json.loads(path.read_text()).get("pgids", []) if path.exists() else []
            atomic_write(path, json.dumps({"pgids": [*known, pgid]}))
        except (OSError, ValueError) as err:
            log(f"could not record the job's process group: {err}")

    # --- side threads ----------------------------------------------------------------------

    def _on_notice(self, notice: dict[str, Any]) -> None:
        with self._end_lock:
            if self.run_ended.is_set():
                # The job is done and its exit is being reported: the notice changes nothing
                # (reporting it would turn a finished job into a preempted one, run again).
                log(f"preemption notice after the job finished; not reported: {notice}")
                return
            self.notice_seen_at = time.time()
            self.noticed.set()
        log(f"preemption notice: {notice}")
        # The job checkpoints in parallel with the report: every second of notice counts.
        self._signal_job()
        threading.Thread(target=self._report_notice, args=(notice, time.time()), daemon=True,
                         name="notice-report").start()
        if self.buckets.has_copy:
            self._upload("notice")

    def _on_drain(self) -> None:
        """The controller moves the job elsewhere: checkpoint and exit, as on a notice."""
        if self.draining.is_set():
            return
        self.draining.set()
        log("asked to checkpoint and exit: the job is moving to another placement")
        self._signal_job()
        if self.buckets.has_copy:
            self._upload("migration")

    def _report_notice(self, notice: dict[str, Any], seen_at: float) -> None:
        try:
            self.client.report({"kind": "notice", "notice": notice, "seen_at": seen_at},
                               budget=30.0)
        except (TimeoutError, OSError, urllib.error.HTTPError) as err:
            log(f"could not report the notice: {err}")

    def _signal_job(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        name = str(self.task.get("notice_signal", "SIGTERM"))
        try:
            os.killpg(proc.pid, getattr(signal, name, signal.SIGTERM))
        except ProcessLookupError:
            pass

    def _upload(self, why: str) -> None:
        try:
            n = self.buckets.upload()
            log(f"checkpoint upload ({why}): {n} file(s)")
        except OSError as err:
            log(f"checkpoint upload ({why}) failed: {err}")

    def _copy_loop(self) -> None:
        while not self.done.wait(float(self.task["copy_sync_interval"])):
            self._upload("periodic")

    def _heartbeat_loop(self) -> None:
        rebeat = False  # the last beat was an immediate one after a redirect
        while not self.done.is_set():
            waiting = not self.go.is_set()
            try:
                # While waiting to start, the controller holds the request until it says go.
                body = {"rank": self.rank, "wait_go": GO_WAIT_SECONDS if waiting else 0}
                reply = self.client.call("POST", "/heartbeat", body,
                                         timeout=GO_WAIT_SECONDS + 10 if waiting else 10)
                moved = False
                if reply:
                    self._take_intervals(reply)
                    moved = self._take_controllers(reply)
                if moved and not rebeat:
                    # Sent to the job's owner: be heard there now, not next beat. Once per
                    # beat: an owner that has just died sends it straight back here.
                    rebeat = True
                    continue
                rebeat = False
                if reply and reply.get("drain"):
                    self._on_drain()
                if reply and reply.get("go"):
                    self.go.set()
                    continue
            except (OSError, ValueError, urllib.error.HTTPError):
                # The controller may be restarting; the exit report is what must land.
                self.done.wait(1.0)
                continue
            if not waiting:
                self.done.wait(float(self.task["heartbeat_interval"]))

    def _take_intervals(self, reply: dict[str, Any]) -> None:
        """The controller lengthens the heartbeat and log intervals as its fleet grows;
        notices and exits are reported at once whatever they are."""
        for key in ("heartbeat_interval", "log_interval"):
            value = reply.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) \
                    and 0.5 <= value <= 600:
                self.task[key] = float(value)

    def _take_controllers(self, reply: dict[str, Any]) -> bool:
        """The controllers alive now, owner first: where to fail over to when the current
        one goes away (controllers come and go; the launch's list ages). True when the
        answer moved the agent to another controller (a redirect to its job's owner)."""
        urls = reply.get("controllers")
        if not (isinstance(urls, list) and all(isinstance(u, str) for u in urls)):
            return False
        before = self.client.current
        self.client.set_controllers(urls, move_to_first=reply.get("redirect") is True)
        return self.client.current != before

    def _log_loop(self) -> None:
        while not self.done.wait(float(self.task.get("log_interval", 1.0))):
            self._ship_logs()

    _shipped = 0
    _ship_lock = threading.Lock()

    def _ship_logs(self) -> bool:
        """Ship the next chunk of the job log; True when something was shipped."""
        with self._ship_lock:
            try:
                size = self.log_path.stat().st_size
            except FileNotFoundError:
                return False
            if size <= self._shipped:
                return False
            with open(self.log_path, "rb") as fh:
                fh.seek(self._shipped)
                chunk = fh.read(min(size - self._shipped, 1 << 20))
            try:
                reply = json.loads(self.client.request(
                    "POST", f"/logs?rank={self.rank}&offset={self._shipped}", chunk,
                    "application/octet-stream"))
                before, self._shipped = self._shipped, int(reply["size"])
                return self._shipped > before
            except (OSError, ValueError, KeyError, urllib.error.HTTPError,
                    http.client.HTTPException):
                return False


def _workdir_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's "data" filter, except that a symlink may point anywhere (a workdir's
    ``venv/bin/python -> /usr/bin/python3``, as rsync would copy it). Safe all the same:
    the data filter still refuses any later member whose real path leaves the workdir,
    so nothing is ever written through such a link."""
    if member.issym():
        return tarfile.tar_filter(member, dest)  # checks the link's own path, not its target
    return tarfile.data_filter(member, dest)


def main() -> None:
    try:
        code = Agent(dict(os.environ)).main()
    except KeyError as err:
        log(f"missing environment variable {err}")
        code = 2
    except ValueError as err:  # e.g. SKYJOBS_CONTROLLER_URLS holding something not a URL
        log(f"bad environment: {err}")
        code = 2
    except (TimeoutError, urllib.error.HTTPError) as err:
        log(f"giving up: {err}")
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
