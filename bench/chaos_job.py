"""The chaos benchmark's training job: resumable, checkpointing, and audited.

Run by every node of every chaos job (stdlib only: it runs on the instance). It loads its
step from ``<ckpt-dir>/state.json`` (a ``local://`` bucket, MOUNT or COPY), advances one step
every ``--step-seconds``, checkpoints atomically every ``--ckpt-every`` steps (rank 0 only)
and on SIGTERM (then exits 143), and appends one JSON line per event to the audit file named
by ``$CHAOS_AUDIT`` (absolute, shared by every job of the run):

    start       job, attempt, node, pid, t, step (loaded)
    tick        step, t (every step)
    checkpoint  step, t
    stop        step, t, reason (done | sigterm)

Each line is a single ``write`` on an ``O_APPEND`` descriptor, so lines from concurrent
processes never interleave; times are wall-clock (``time.time()``) so lines from different
processes on one host compare directly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any


class Audit:
    def __init__(self, path: str, base: dict[str, Any]) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.base = base

    def write(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"kind": kind, **self.base, **fields, "t": time.time()}) + "\n"
        os.write(self.fd, line.encode())  # one write per line; O_APPEND keeps it whole


def load(ckpt: Path) -> int:
    try:
        return int(json.loads((ckpt / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def save(ckpt: Path, step: int) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    tmp = ckpt / f".state.json.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps({"step": step, "t": time.time()}))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt / "state.json")  # atomic: a kill never leaves half a checkpoint


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--ckpt-dir", type=Path, required=True)
    parser.add_argument("--ckpt-every", type=int, default=5)
    parser.add_argument("--step-seconds", type=float, default=0.2)
    args = parser.parse_args()

    rank = int(os.environ.get("SKYPILOT_NODE_RANK", "0"))
    audit = Audit(os.environ["CHAOS_AUDIT"], {
        "job": int(os.environ.get("SKYJOBS_JOB_ID", "0")),
        "attempt": int(os.environ.get("SKYJOBS_ATTEMPT", "0")),
        "node": rank, "pid": os.getpid(),
    })
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    step = load(args.ckpt_dir)
    audit.write("start", step=step, mode=os.environ.get("CHAOS_MODE", "?"))
    print(f"node {rank} attempt {os.environ.get('SKYJOBS_ATTEMPT')} starts at step {step}",
          flush=True)
    while step < args.steps:
        if stop["now"]:
            if rank == 0:
                save(args.ckpt_dir, step)
                audit.write("checkpoint", step=step, why="sigterm")
            audit.write("stop", step=step, reason="sigterm")
            print(f"SIGTERM: stopped at step {step}", flush=True)
            return 143
        time.sleep(args.step_seconds)
        step += 1
        audit.write("tick", step=step)
        if rank == 0 and step % args.ckpt_every == 0 and step < args.steps:
            save(args.ckpt_dir, step)
            audit.write("checkpoint", step=step, why="periodic")
    if rank == 0:
        save(args.ckpt_dir, step)
        audit.write("checkpoint", step=step, why="final")
    audit.write("stop", step=step, reason="done")
    print(f"done at step {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
