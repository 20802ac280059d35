"""A moto-backed EC2 + S3 world in which launched instances really boot.

- :class:`Moto`: a moto server on 127.0.0.1 in this process (``ThreadedMotoServer``), so
  the harness can reach into moto's backends to do what the EC2 API cannot: preempt a spot
  instance (state reason ``Server.SpotInstanceTermination``), inject capacity errors for a
  zone, and serve chosen spot prices.
- :class:`Imds`: an IMDSv2 emulator per booted instance (token, then
  ``/latest/meta-data/spot/instance-action``: 404 until a notice is served).
- :class:`Fleet`: watches moto for running instances, decodes each one's user-data into its
  agent environment and runs ``python -m skyjobs agent`` as a real subprocess pointed at that
  instance's IMDS emulator and at moto; an instance that moto terminates dies with it.

Used by the tests in this folder and by ``bench/aws_notice.py``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from moto.backends import get_backend
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.models.instances import InstanceBackend, StateReason
from moto.ec2.responses.spot_instances import SpotInstances
from moto.server import ThreadedMotoServer

from skyjobs.providers.aws_userdata import parse_agent_env

ROOT = Path(__file__).resolve().parents[2]
SPOT_REASON = "Server.SpotInstanceTermination"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class Moto:
    """A moto server on 127.0.0.1 with hooks into its in-process backends."""

    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self.failing: dict[str, str] = {}  # zone -> EC2 error code for run_instances
        self.prices: dict[tuple[str, str], tuple[float, float]] = {}  # (zone, type) -> p, t
        self.run_calls: list[tuple[float, str | None]] = []  # (when, zone)
        self._patch()

    def env(self) -> dict[str, str]:
        return {**AWS_ENV, "AWS_ENDPOINT_URL": self.url}

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass
        self.failing.clear()
        self.prices.clear()
        self.run_calls.clear()

    def stop(self) -> None:
        setattr(InstanceBackend, "run_instances", self._orig_run)  # noqa: B010
        setattr(SpotInstances, "describe_spot_price_history", self._orig_prices)  # noqa: B010
        setattr(TaggedEC2Resource, "get_tags", self._orig_tags)  # noqa: B010
        self.server.stop()

    # --- reaching into moto ----------------------------------------------------------------

    def ec2(self, region: str) -> Any:
        return get_backend("ec2")[DEFAULT_ACCOUNT_ID][region]

    def instances(self, region: str) -> list[Any]:
        return [i for r in list(self.ec2(region).reservations.values()) for i in r.instances]

    def by_tag(self, region: str, our_id: str) -> list[Any]:
        return [i for i in self.instances(region) if _tag(i, "skyjobs-instance") == our_id]

    def spot_terminate(self, instance: Any) -> None:
        """What AWS does when it reclaims spot capacity (moto cannot do it by itself)."""
        instance.terminate()
        instance.state_reason = StateReason(f"{SPOT_REASON}: Spot instance termination",
                                            SPOT_REASON)

    def _patch(self) -> None:
        moto_self = self
        self._orig_run = orig_run = InstanceBackend.run_instances
        self._orig_prices = orig_prices = SpotInstances.describe_spot_price_history

        def run_instances(backend: Any, *args: Any, **kwargs: Any) -> Any:
            zone = kwargs.get("placement")
            moto_self.run_calls.append((time.time(), zone))
            code = moto_self.failing.get(zone or "")
            if code:
                raise EC2ClientError(code, f"injected by the test harness for {zone}")
            replay = _same_token(backend, kwargs.get("client_token"), args[2], zone)
            return replay if replay is not None else orig_run(backend, *args, **kwargs)

        def describe_spot_price_history(response: Any) -> Any:
            if not moto_self.prices:
                return orig_prices(response)
            from moto.core.responses import ActionResult

            types = response._get_param("InstanceTypes", [])
            rows = [{"InstanceType": t, "ProductDescription": "Linux/UNIX",
                     "SpotPrice": f"{p:.6f}", "AvailabilityZone": z,
                     "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(at))}
                    for (z, t), (p, at) in sorted(moto_self.prices.items())
                    if not types or t in types]
            return ActionResult({"SpotPriceHistory": rows})

        # moto finds a resource's tags by scanning every tag of the region with regexes, so a
        # tag-filtered describe is quadratic: 1000 instances take minutes. Same answer, by key.
        self._orig_tags = TaggedEC2Resource.get_tags

        def get_tags(resource: Any) -> list[dict[str, str]]:
            rid = getattr(resource, "id", None)
            if not rid:
                return []
            tags = resource.ec2_backend.tags.get(rid, {})
            return [{"resource_id": rid, "key": k, "value": v, "resource_type": ""}
                    for k, v in tags.items()]

        # setattr: these replace moto's methods for the whole process, on purpose.
        setattr(InstanceBackend, "run_instances", run_instances)  # noqa: B010
        setattr(TaggedEC2Resource, "get_tags", get_tags)  # noqa: B010
        setattr(SpotInstances, "describe_spot_price_history",  # noqa: B010
                describe_spot_price_history)


def _same_token(backend: Any, token: str | None, user_data: Any, zone: str | None) -> Any:
    """EC2's ClientToken contract, which moto lacks: the same token returns the first
    reservation, or IdempotentParameterMismatch when the parameters differ."""
    if not token:
        return None
    for reservation in list(backend.reservations.values()):
        for inst in reservation.instances:
            if inst.client_token != token:
                continue
            same_data = (getattr(inst.user_data, "_encoded_string", None)
                         == getattr(user_data, "_encoded_string", None))
            same = same_data and inst.availability_zone == zone
            if not same:
                raise EC2ClientError("IdempotentParameterMismatch",
                                     f"client token {token} was used with other parameters")
            return reservation
    return None


def _tag(instance: Any, key: str) -> str | None:
    return next((t["value"] for t in instance.get_tags() if t["key"] == key), None)


class Imds:
    """An IMDSv2 emulator for one instance: the agent's notice watcher polls it."""

    def __init__(self) -> None:
        self.notice: dict[str, str] | None = None
        self.token = os.urandom(8).hex()
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: bytes = b"") -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
                if self.path == "/latest/api/token":
                    self._reply(200, imds.token.encode())
                else:
                    self._reply(404)

            def do_GET(self) -> None:  # noqa: N802
                if self.headers.get("X-aws-ec2-metadata-token") != imds.token:
                    self._reply(401)
                elif self.path == "/latest/meta-data/spot/instance-action" and imds.notice:
                    self._reply(200, json.dumps(imds.notice).encode())
                else:
                    self._reply(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True, name="imds").start()

    def serve_notice(self, in_seconds: float) -> None:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + in_seconds))
        self.notice = {"action": "terminate", "time": at}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Node:
    """One booted instance: its IMDS emulator and its agent process."""

    def __init__(self, ec2_id: str, our_id: str, region: str, imds: Imds,
                 proc: subprocess.Popen[bytes], log: Path) -> None:
        self.ec2_id, self.our_id, self.region = ec2_id, our_id, region
        self.imds, self.proc, self.log = imds, proc, log

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)


class Fleet:
    """Boots every running moto instance of the watched regions, as EC2 would."""

    def __init__(self, moto: Moto, root: Path, regions: list[str]) -> None:
        self.moto, self.root, self.regions = moto, root, regions
        self.nodes: dict[str, Node] = {}  # by EC2 id
        self.boot_hooks: list[Callable[[Node], None]] = []
        self.hold = False  # when set, running instances wait unbooted (as a slow boot would)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="fleet")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            for region in self.regions:
                for inst in self.moto.instances(region):
                    self._reconcile(region, inst)

    def _reconcile(self, region: str, inst: Any) -> None:
        state = inst._state.name
        booted = None
        with self._lock:
            node = self.nodes.get(inst.id)
            if node is None and state == "running" and not self.hold:
                booted = self._boot(region, inst)
                if booted is not None:
                    self.nodes[inst.id] = booted
            elif node is not None and state in ("shutting-down", "terminated", "stopped"):
                node.kill()  # the VM is gone, and its processes with it
        if booted is not None:
            for hook in self.boot_hooks:
                hook(booted)

    def _boot(self, region: str, inst: Any) -> Node | None:
        if inst.user_data is None:
            return None
        env = parse_agent_env(inst.user_data.decode())
        home = self.root / inst.id
        home.mkdir(parents=True, exist_ok=True)
        imds = Imds()
        env.update(self.moto.env())
        env.update(HOME=str(home), SKYJOBS_METADATA_URL=imds.url, PYTHONPATH=str(ROOT),
                   PATH=os.environ.get("PATH", "/usr/bin:/bin"))
        log = home / "agent.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "skyjobs", "agent"], env=env,
                                    cwd=home, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        return Node(inst.id, _tag(inst, "skyjobs-instance") or "", region, imds, proc, log)

    def node(self, our_id: str) -> Node | None:
        with self._lock:
            return next((n for n in self.nodes.values() if n.our_id == our_id), None)

    def preempt(self, node: Node, notice_s: float) -> threading.Thread:
        """Serve the notice, then reclaim the instance when the notice runs out (or once
        its agent has exited, whichever comes first), as AWS would."""
        node.imds.serve_notice(notice_s)

        def reclaim() -> None:
            try:
                node.proc.wait(timeout=notice_s)
            except subprocess.TimeoutExpired:
                pass
            inst = self.moto.ec2(node.region).get_instance_by_id(node.ec2_id)
            if inst is not None:
                self.moto.spot_terminate(inst)
            node.kill()

        t = threading.Thread(target=reclaim, daemon=True, name=f"reclaim-{node.ec2_id}")
        t.start()
        return t

    def alive(self) -> list[Node]:
        with self._lock:
            return [n for n in self.nodes.values() if n.proc.poll() is None]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            for node in self.nodes.values():
                node.kill()
                node.imds.stop()
