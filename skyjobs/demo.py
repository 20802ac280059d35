"""The demo: one spot training job on the local provider, preempted and recovered.

Starts a controller on a fresh state directory, submits ``examples/train.yaml``, preempts
the job with a notice once it has made progress, and waits until the recovered job
resumes from its checkpoint and succeeds. Exits nonzero if any of that does not happen.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from skyjobs.client import Client, connect, wait_until
from skyjobs.models import Job
from skyjobs.render import event_line

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train.yaml"
FAST = {"SKYJOBS_INSTANCE_POLL_INTERVAL": "1", "SKYJOBS_NOTICE_POLL_INTERVAL": "0.25",
        "SKYJOBS_HEARTBEAT_INTERVAL": "1", "SKYJOBS_LAUNCH_BACKOFF_INITIAL": "1"}


def say(msg: str) -> None:
    click.echo(f"[demo {time.strftime('%H:%M:%S')}] {msg}")


def wait_for(what: str, check: Any, limit_s: float) -> Any:
    try:
        return wait_until(what, check, limit_s)
    except TimeoutError as err:
        raise click.ClickException(f"demo: {err}") from None


def all_logs(client: Client, job_id: int) -> str:
    return "".join(client.logs(job_id))  # every attempt's log, in order


def run_demo(task_file: Path, state_dir: Path, notice: float) -> None:

    os.environ.update({k: v for k, v in FAST.items() if k not in os.environ})
    say(f"starting a controller on {state_dir}")
    client = connect(state_dir, None, autostart=True)
    job_id = client.submit(task_file).id
    say(f"submitted {task_file.name} as job {job_id}")

    def status() -> Job:
        return client.get(job_id)

    first = wait_for("the job to run", lambda: (s := status()).status == "RUNNING" and s, 60)
    say(f"job {job_id} RUNNING on {first.placement}")
    wait_for("a checkpoint", lambda: "step 20 " in all_logs(client, job_id), 60)
    say(f"preempting it with a {notice:g}s notice (the job checkpoints on SIGTERM)")
    client.preempt(job_id, notice)
    wait_for("RECOVERING", lambda: status().recoveries >= 1, 30)
    say("job RECOVERING: relaunching on the next-cheapest placement")
    final = wait_for("the job to finish",
                     lambda: (s := status()).done and s, 90)
    logs = all_logs(client, job_id)
    click.echo("\n--- job logs (every attempt) ---\n" + logs.rstrip())
    click.echo("\n--- events ---")
    for e in client.events(job_id):
        click.echo(f"  {event_line(e.model_dump(), detail=False)}")
    say(f"job {job_id} {final.status} after {final.recoveries} recovery(ies), "
        f"{final.attempts} attempts, cost ${final.cost:.4f} vs ${final.on_demand_cost:.4f} "
        "on-demand")
    if final.status != "SUCCEEDED" or "resumed from checkpoint at step" not in logs:
        raise click.ClickException("demo: the job did not resume from its checkpoint and succeed")
    say("success: preempted, resumed from its checkpoint, SUCCEEDED")


def cancel_everything(state_dir: Path) -> None:
    """A failed demo must not leave simulated instances behind."""
    try:
        client = connect(state_dir, None)
        client.cancel(all=True)
        wait_for("cancel", lambda: not client.queue(status="CANCELLING"), 15)
    except Exception as err:  # noqa: BLE001 - best effort on the way out
        say(f"could not cancel the demo's jobs: {err}")


def stop_controller(state_dir: Path) -> None:
    try:
        pid = int(__import__("json").loads((state_dir / "controller.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while (state_dir / "controller.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


@click.command()
@click.option("--task", "task_file", type=click.Path(dir_okay=False, path_type=Path),
              default=EXAMPLE, show_default=True, help="Task YAML to run.")
@click.option("--notice", type=click.FloatRange(0, 120), default=5.0, show_default=True,
              help="Seconds of preemption notice.")
@click.option("--keep", is_flag=True, help="Leave the controller running afterwards.")
def demo(task_file: Path, notice: float, keep: bool) -> None:
    """Run the local demo: a spot job is preempted, resumes from its checkpoint, succeeds."""
    state_dir = Path(tempfile.mkdtemp(prefix="skyjobs-demo-"))
    try:
        run_demo(task_file, state_dir, notice)
    except BaseException:
        cancel_everything(state_dir)
        raise
    finally:
        if not keep:
            stop_controller(state_dir)
        say(f"state directory kept for inspection: {state_dir}")
