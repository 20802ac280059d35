"""The short chaos run (bench/chaos.py): real controller processes killed with SIGKILL, also
between a store commit and its cloud call, preemptions with notices and injected cloud-API
faults; then every promise is audited. The long run is the benchmark (docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent.parent


def load_bench(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


chaos = load_bench("chaos")


def test_short_chaos_run_keeps_every_promise(tmp_path: Path) -> None:
    settings = chaos.Settings(
        jobs=4, multinode_every=4, kills=3, preemptions=4, steps=150, concurrency=4,
        # Small shares of launch/terminate failures, before and after the cloud acted, and
        # freshly launched instances invisible to status for a second (EC2's eventual
        # consistency): none of it may cost a job, run it twice or recover it for nothing.
        faults={"fail_before": 0.05, "fail_after": 0.05, "ops": ["launch", "terminate"],
                "invisible_s": 1.0, "seed": 3},
        kill_kinds=("after_notice", "crash_before:terminate", "crash_after:launch"),
        seed=3, time_limit=110.0, state_dir=tmp_path / "state", quiet=True)
    result, _ = chaos.run_chaos(settings)
    report = result.render()
    assert result.ok(), report
    assert result.submitted == 4 and result.succeeded == 4, report
    assert result.stats["kills"] >= 2, report  # the chaos happened
    assert result.stats["preemptions"] >= 2, report
    assert result.stats["audit_lines"] > 0, report


def test_audit_analysis_flags_overlaps_regressions_and_false_successes() -> None:
    def line(kind: str, job: int, attempt: int, t: float, step: int, node: int = 0,
             **extra: object) -> dict[str, object]:
        return {"kind": kind, "job": job, "attempt": attempt, "node": node, "t": t,
                "step": step, **extra}

    audit = [
        line("start", 1, 1, 0.0, 0), line("checkpoint", 1, 1, 1.0, 5, why="periodic"),
        line("tick", 1, 1, 3.0, 15),
        # attempt 2 starts while attempt 1 still ticks, and from before step 5
        line("start", 1, 2, 2.0, 0), line("tick", 1, 2, 4.0, 10),
        line("stop", 1, 2, 5.0, 20, reason="done"),
    ]
    dups = chaos.find_duplicates(audit)
    assert len(dups) == 1 and "overlap by 1.00s" in dups[0]
    regressions = chaos.find_regressions(audit, {1: "MOUNT"}, set(), 1.0)
    assert len(regressions) == 1 and "started at step 0" in regressions[0]
    # In COPY mode a checkpoint the node did not outlive by a sync is not promised.
    assert chaos.find_regressions(audit, {1: "COPY"}, set(), 5.0) == []
    jobs = {1: {"status": "SUCCEEDED"}, 2: {"status": "SUCCEEDED"}}
    assert chaos.find_false_successes(audit, jobs, 20) == [
        "job 2: SUCCEEDED but no node-0 run reached step 20"]
    assert chaos.find_duplicates([a for a in audit if a["attempt"] == 1]) == []


def test_phantom_recoveries_are_recoveries_nobody_asked_for() -> None:
    events = [
        {"kind": "transition", "from_status": "RUNNING", "to_status": "RECOVERING",
         "attempt": 1, "at": 1.0, "reason": "preemption notice"},
        {"kind": "transition", "from_status": "RUNNING", "to_status": "RECOVERING",
         "attempt": 2, "at": 2.0, "reason": "instance i-2 is gone (not_found)"},
    ]
    found = chaos.find_phantom_recoveries({7: {"events": events}}, {(7, 1)})
    assert found == ["job 7: attempt 2 RUNNING -> RECOVERING at 2.00: "
                     "instance i-2 is gone (not_found)"]
