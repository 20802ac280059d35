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
