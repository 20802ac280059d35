from __future__ import annotations

import pytest

from skyjobs.recovery import decide
from skyjobs.spec import JobRecovery


def out(nodes: dict[int, tuple[str, int | None]], n: int = 1,
        noticed: bool = False) -> decide.Outcome | None:
    return decide.attempt_outcome(nodes, n, noticed)


def test_attempt_is_over_when_any_node_fails_or_all_finish() -> None:
    assert out({0: ("running", None)}) is None
    assert out({0: ("exited", 0)}, n=2) is None
    both = out({0: ("exited", 0), 1: ("exited", 0)}, n=2)
    assert both is not None and both.exit_code == 0
    failed = out({0: ("running", None), 1: ("exited", 5)}, n=2)
    assert failed is not None and (failed.exit_code, failed.rank) == (5, 1)
    setup = out({0: ("setup_failed", 2)})
    assert setup is not None and setup.setup_failed


@pytest.mark.parametrize(("code", "noticed", "policy", "used", "action", "budget"), [
    (0, False, JobRecovery(), 0, decide.SUCCEED, False),
    (143, True, JobRecovery(), 0, decide.PREEMPTED, False),
    (0, True, JobRecovery(), 0, decide.PREEMPTED, False),
    (1, False, JobRecovery(), 0, decide.FAIL, False),
    (1, False, JobRecovery(max_restarts_on_errors=2), 1, decide.RESTART, True),
    (1, False, JobRecovery(max_restarts_on_errors=2), 2, decide.FAIL, False),
    (42, False, JobRecovery(recover_on_exit_codes=(42,)), 0, decide.RESTART, False),
    (42, False, JobRecovery(recover_on_exit_codes=(42,), max_restarts_on_errors=1), 5,
     decide.RESTART, False),
])
def test_recovery_decision(code: int, noticed: bool, policy: JobRecovery, used: int,
                           action: str, budget: bool) -> None:
    outcome = decide.Outcome(code, 0, False, noticed)
    verdict = decide.after_exit(outcome, policy, used)
    assert (verdict.action, verdict.uses_budget) == (action, budget)


def test_setup_failure_is_never_restarted() -> None:
    outcome = decide.Outcome(2, 0, True, False)
    verdict = decide.after_exit(outcome, JobRecovery(max_restarts_on_errors=5), 0)
    assert verdict.action == decide.FAIL and "setup failed" in verdict.reason
