"""A resumable "training" job in pure Python: the shape of a real spot training script.

It restores the newest checkpoint from --ckpt-dir, prints the step it resumed from, trains,
checkpoints every --ckpt-every steps, and on SIGTERM (the preemption notice skyjobs passes
on) checkpoints at once and exits, so a recovery loses no work.
"""

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path


def save(ckpt_dir: Path, step: int, loss: float) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / "state.json.tmp"
    tmp.write_text(json.dumps({"step": step, "loss": loss}))
    os.replace(tmp, ckpt_dir / "state.json")  # atomic: a kill never leaves half a checkpoint


def load(ckpt_dir: Path) -> tuple[int, float]:
    try:
        state = json.loads((ckpt_dir / "state.json").read_text())
        return int(state["step"]), float(state["loss"])
    except (OSError, ValueError, KeyError):
        return 0, 10.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--ckpt-dir", type=Path, required=True)
    parser.add_argument("--ckpt-every", type=int, default=5)
    parser.add_argument("--step-seconds", type=float, default=0.2)
    args = parser.parse_args()

    step, loss = load(args.ckpt_dir)
    if step:
        print(f"resumed from checkpoint at step {step} (loss {loss:.4f})", flush=True)
    else:
        print("no checkpoint found: starting from step 0", flush=True)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    node = os.environ.get("SKYPILOT_NODE_RANK", "0")
    print(f"task {os.environ.get('SKYPILOT_TASK_ID')} node {node} attempt "
          f"{os.environ.get('SKYJOBS_ATTEMPT')} recoveries "
          f"{os.environ.get('SKYJOBS_RECOVERY_COUNT')}", flush=True)
    while step < args.steps:
        if stop["now"]:
            save(args.ckpt_dir, step, loss)
            print(f"preemption notice: checkpointed at step {step}, exiting", flush=True)
            return 143
        time.sleep(args.step_seconds)
        step += 1
        loss = loss * 0.97 + 0.01 * math.sin(step)
        if step % args.ckpt_every == 0:
            save(args.ckpt_dir, step, loss)
            print(f"step {step} loss {loss:.4f} (checkpoint saved)", flush=True)
    save(args.ckpt_dir, step, loss)
    print(f"training finished at step {step}, final loss {loss:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
