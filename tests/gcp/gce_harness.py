"""A GCE world in which launched instances really boot (the GCP twin of ``aws_harness``).

:class:`Fleet` watches a :class:`~tests.gcp.gce_fake.GceFake` for RUNNING instances; for each
one it reads the ``startup-script`` metadata item, takes the node's agent environment out of
it (the same env block as EC2 user-data: ``parse_agent_env``) and runs ``python -m skyjobs
agent`` as a real subprocess, pointed at that instance's own :class:`GceMetadata` server. An
instance the fake stops or deletes dies with its processes (SIGKILL to the process group),
as a VM does.

Everything is bounded: at most ``max_nodes`` agents, a 0.05 s watch loop, waits of seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skyjobs.providers.aws_userdata import parse_agent_env
from tests.gcp.gce_fake import GceFake, GceMetadata

ROOT = Path(__file__).resolve().parents[2]
WATCH_INTERVAL = 0.05
GONE = ("STOPPING", "STOPPED", "SUSPENDING", "SUSPENDED", "TERMINATED")


class Node:
    """One booted instance: its metadata server and its agent process."""

    def __init__(self, name: str, instance_id: str, zone: str, metadata: GceMetadata,
                 proc: subprocess.Popen[bytes], home: Path) -> None:
        self.name, self.instance_id, self.zone = name, instance_id, zone
        self.metadata, self.proc, self.home = metadata, proc, home
        self.log = home / "agent.log"

    def kill(self) -> None:
        """The VM is gone: so is every process it ran."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class Fleet:
    """Boots every RUNNING instance of the fake, as GCE runs a startup script."""

    def __init__(self, fake: GceFake, root: Path, *, extra_env: dict[str, str] | None = None,
                 max_nodes: int = 32) -> None:
        self.fake, self.root = fake, root
        self.extra_env = dict(extra_env or {})
        self.max_nodes = max_nodes
        self.nodes: dict[str, Node] = {}  # by instance id: a reused name is a new VM
        self.boot_hooks: list[Callable[[Node], None]] = []
        self.errors: list[str] = []  # instances that could not boot, and why
        self.hold = False  # when set, RUNNING instances wait unbooted (a slow boot)
        self._skipped: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="gce-fleet")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL):
            try:
                self._reconcile(self.fake.instances())
            except Exception as err:  # noqa: BLE001 - a watcher must outlive one bad pass
                self.errors.append(f"fleet watch: {type(err).__name__}: {err}")
                del self.errors[:-100]  # bounded

    def _reconcile(self, instances: list[dict[str, Any]]) -> None:
        by_id = {i["id"]: i for i in instances}
        booted: list[Node] = []
        with self._lock:
            for inst_id, node in self.nodes.items():
                inst = by_id.get(inst_id)
                if inst is None or inst["status"] in GONE:
                    node.kill()  # the VM is gone, and its processes with it
            for inst_id, inst in by_id.items():
                if (inst["status"] != "RUNNING" or inst_id in self.nodes
                        or inst_id in self._skipped or self.hold):
                    continue
                new = self._boot(inst)
                if new is not None:
                    self.nodes[inst_id] = new
                    booted.append(new)
        for node in booted:
            for hook in self.boot_hooks:
                hook(node)

    def _boot(self, inst: dict[str, Any]) -> Node | None:
        name, zone = inst["name"], inst["zone"].rsplit("/", 1)[-1]
        items = {i["key"]: i.get("value", "") for i in inst["metadata"].get("items", [])}
        try:
            env = parse_agent_env(items.get("startup-script", ""))
        except ValueError as err:  # not a skyjobs node (or a broken script): never boot it
            self._skip(inst["id"], f"{name}: {err}")
            return None
        if len(self.nodes) >= self.max_nodes:
            self._skip(inst["id"], f"{name}: over max_nodes={self.max_nodes}")
            return None
        home = self.root / f"{name}-{inst['id']}"
        home.mkdir(parents=True, exist_ok=True)
        metadata = self.fake.metadata_for(name, zone)
        env.update(self.extra_env)
        env.update(HOME=str(home), SKYJOBS_METADATA_URL=metadata.url, SKYJOBS_CLOUD="gcp",
                   PYTHONPATH=str(ROOT), PATH=os.environ.get("PATH", "/usr/bin:/bin"))
        with open(home / "agent.log", "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "skyjobs", "agent"], env=env,
                                    cwd=home, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        return Node(name, inst["id"], zone, metadata, proc, home)

    def _skip(self, inst_id: str, why: str) -> None:
        self._skipped.add(inst_id)
        self.errors.append(why)

    # --- for tests ---------------------------------------------------------------------------

    def node(self, name: str) -> Node | None:
        """The latest node booted under instance name ``name``."""
        with self._lock:
            found = [n for n in self.nodes.values() if n.name == name]
            return found[-1] if found else None

    def preempt(self, name: str, notice_s: float, zone: str | None = None) -> None:
        """GCE preempts the instance: TRUE on its metadata server now, stopped after
        ``notice_s`` (its agent is killed when the fake shows it STOPPING)."""
        self.fake.preempt(name, notice_s, zone)

    def alive(self) -> list[Node]:
        with self._lock:
            return [n for n in self.nodes.values() if n.proc.poll() is None]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            for node in self.nodes.values():
                node.kill()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
