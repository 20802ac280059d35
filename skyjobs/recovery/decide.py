"""Pure decisions about an attempt: is it over, and was that a preemption or the user's code?

A nonzero exit on a healthy instance is the user's failure; a job that exits after its
instance got a preemption notice was preempted, whatever its exit code. Restarts after user
failures are bounded by ``max_restarts_on_errors``; exit codes listed in
``recover_on_exit_codes`` restart without using up that budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from skyjobs.spec import JobRecovery
from skyjobs.states import EXITED_PHASES, NodePhase


class Action(StrEnum):
    SUCCEED = "succeed"
    FAIL = "fail"
    PREEMPTED = "preempted"
    RESTART = "restart"


SUCCEED, FAIL, PREEMPTED, RESTART = Action.SUCCEED, Action.FAIL, Action.PREEMPTED, Action.RESTART

NodePhases = Mapping[int, tuple[NodePhase, int | None]]


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    rank: int
    setup_failed: bool
    noticed: bool


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str
    uses_budget: bool = False


def all_in(nodes: NodePhases, num_nodes: int, *phases: NodePhase) -> bool:
    return len(nodes) >= num_nodes and all(p in phases for p, _ in nodes.values())


def attempt_outcome(nodes: NodePhases, num_nodes: int, noticed: bool) -> Outcome | None:
    """The attempt's result once it is decided: any node failing, or every node done."""
    exited = {r: (p, c) for r, (p, c) in nodes.items() if p in EXITED_PHASES}
    failed = sorted((r, p, c) for r, (p, c) in exited.items() if c != 0)
    if failed:
        rank, phase, code = failed[0]
        return Outcome(int(code if code is not None else 1), rank,
                       phase == NodePhase.SETUP_FAILED,
                       noticed)
    if len(exited) >= num_nodes:
        return Outcome(0, 0, False, noticed)
    return None


def after_exit(outcome: Outcome, policy: JobRecovery, restarts_used: int) -> Verdict:
    code = outcome.exit_code
    if outcome.noticed:
        return Verdict(PREEMPTED, f"preempted (job exited with {code} after the notice)")
    if code == 0:
        return Verdict(SUCCEED, "all nodes exited with 0")
    where = f"node {outcome.rank}" if outcome.rank else "the job"
    if outcome.setup_failed:
        return Verdict(FAIL, f"setup failed on node {outcome.rank} with exit code {code}")
    if code in policy.recover_on_exit_codes:
        return Verdict(RESTART, f"{where} exited with {code}, listed in recover_on_exit_codes")
    budget = policy.max_restarts_on_errors
    if restarts_used < budget:
        return Verdict(RESTART, f"{where} exited with {code}; restart {restarts_used + 1} of "
                                f"{budget}", uses_budget=True)
    suffix = f" (all {budget} restarts used)" if budget else ""
    return Verdict(FAIL, f"{where} exited with {code}{suffix}")
