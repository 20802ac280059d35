"""Submit the training example from Python, watch it through a preemption, and print what
it cost: the SDK's tour, on the local provider.

    .venv/bin/python examples/sdk_submit.py [--state-dir DIR]

Talks to the controller running on the state dir (``SKYJOBS_STATE_DIR``, default
``~/.skyjobs``) and starts one in the background when none runs, as ``skyjobs submit``
does. The task is examples/train.yaml written with the builders: submitting the YAML file
itself (``client.submit("examples/train.yaml")``) is the same job.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import skyjobs

HERE = Path(__file__).resolve().parent


def training_task() -> skyjobs.Task:
    task = skyjobs.Task(
        name="sdk-train",
        workdir=str(HERE / "train"),
        envs={"TOTAL_STEPS": 40},
        run="python3 train.py --steps $TOTAL_STEPS --ckpt-dir ~/checkpoints/$SKYPILOT_TASK_ID",
    )
    task.set_file_mounts({"~/checkpoints": {"source": "local://sdk-checkpoints",
                                            "mode": "MOUNT"}})
    return task.set_resources(skyjobs.Resources(cloud="local", accelerators="V100:1",
                                                use_spot=True, job_recovery="COST_AWARE"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--no-preempt", action="store_true",
                        help="Let the job run to the end undisturbed.")
    args = parser.parse_args()

    client = skyjobs.Client.connect(args.state_dir, autostart=True)
    task = training_task()

    plan = client.plan(task)
    if plan.pick is not None:
        print(f"would launch on {plan.pick.label()} at ${plan.pick.price_per_hour:.3f}/h")

    job = client.submit(task, env={"TOTAL_STEPS": "60"})
    print(f"submitted job {job.id} ({job.name}): {job.status}")

    # Stream every attempt's log; once the job has checkpointed, play the cloud and take
    # its spot instance away with a 5-second notice (the job checkpoints on the notice).
    preempted = args.no_preempt
    for text in client.logs(job, follow=True):
        print(text, end="", flush=True)
        if not preempted and "step 20 " in text:
            notice = client.preempt(job, notice=5)
            print(f"[sdk_submit] preempting attempt {notice.attempt} with a 5s notice")
            preempted = True

    done = client.wait(job, timeout=600)
    print(f"\njob {done.id} {done.status} after {done.recoveries} recovery(ies): "
          f"${done.cost:.4f}, ${done.saving:.4f} less than on-demand")
    for attempt in done.attempt_list:
        print(f"  attempt {attempt.n}: {attempt.placement} "
              f"({attempt.end_reason or attempt.status}), ${attempt.cost:.4f}")
    for event in client.events(job):
        if event.kind == "transition":
            print(f"  {event.from_status or '-':>12} -> {event.to_status:<12} {event.reason or ''}")


if __name__ == "__main__":
    main()
