"""``skyjobs simulate --plot``: a real figure file from a real replay."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from skyjobs.simulate_cli import simulate


def write_traces(root: Path) -> Path:
    """Three zones, 10-minute samples over four days, capacity dropping at random (seeded):
    enough for every policy to be preempted and some to miss a tight deadline."""
    rng = random.Random(7)
    for zone in ("us-east-1a", "us-east-1b", "us-west-2a"):
        data, up = [], 1
        for _ in range(4 * 24 * 6):
            up = up if rng.random() > 0.04 else 1 - up
            data.append(up)
        (root / f"{zone}_v100_1.json").write_text(json.dumps(
            {"metadata": {"gap_seconds": 600}, "data": data}))
    return root


@pytest.mark.parametrize("suffix", [".svg", ".png"])
def test_plot_draws_cost_against_misses(tmp_path: Path, suffix: str) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs the plot extra (matplotlib)")
    out = tmp_path / f"cost{suffix}"
    traces = write_traces(tmp_path)
    r = CliRunner().invoke(simulate, ["--traces", str(traces), "--job-hours", "12",
                                      "--deadline-hours", "14", "--start-every-hours", "48",
                                      "--no-bound", "--plot", str(out)])
    assert r.exit_code == 0, r.output
    assert f"plot: {out}" in r.output
    data = out.read_bytes()
    if suffix == ".svg":
        assert data.lstrip().startswith(b"<?xml") and b"deadline misses" in data
        assert b"skypilot" in data  # a policy's point is labelled
    else:
        assert data.startswith(b"\x89PNG") and len(data) > 10_000


def test_plot_refuses_other_formats(tmp_path: Path) -> None:
    r = CliRunner().invoke(simulate, ["--traces", str(tmp_path), "--job-hours", "1",
                                      "--plot", str(tmp_path / "x.pdf")])
    assert r.exit_code == 2 and "must end in .svg or .png" in r.output


def test_progress_hears_of_every_run(tmp_path: Path) -> None:
    from skyjobs.recovery.sim.simulator import SimConfig, evaluate, total_runs
    from skyjobs.recovery.sim.traces import load_traces

    traces = load_traces(write_traces(tmp_path))
    cfg = SimConfig(job_hours=12, deadline_hours=14, start_every_hours=24)
    names = ["DEADLINE_AWARE", "skypilot", "single-zone-greedy"]
    heard: dict[str, int] = {}

    def progress(what: str, done: int) -> None:
        heard[what] = heard.get(what, 0) + done

    evaluate(traces, cfg, names, progress=progress)
    assert sum(heard.values()) == total_runs(traces, cfg, names)
    starts = heard["skypilot"]
    assert heard["single-zone-greedy"] == 3 * starts and heard["bound"] == starts


def test_a_terminal_sees_a_progress_bar_a_pipe_does_not(tmp_path: Path) -> None:
    import os
    import pty
    import subprocess
    import sys

    traces = write_traces(tmp_path)
    args = [sys.executable, "-m", "skyjobs", "simulate", "--traces", str(traces),
            "--job-hours", "12", "--deadline-hours", "14", "--start-every-hours", "24"]
    piped = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=follower, timeout=120)
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the pty is drained and closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
    assert proc.returncode == 0
    assert b"replaying" in seen and b"100%" in seen
    assert b"replaying" not in proc.stdout  # the table stays clean
