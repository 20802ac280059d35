import pytest

from skyjobs.exceptions import SkyjobsError
from skyjobs.recovery.memory import MemoryConfig, PreemptionMemory

A = ("aws", "us-east-1", "us-east-1a", "p3.2xlarge", True)
B = ("aws", "us-east-1", "us-east-1b", "p3.2xlarge", True)
W = ("aws", "us-west-2", "us-west-2a", "p3.2xlarge", True)
H = 3600.0


def test_unseen_zone_gets_the_prior():
    cfg = MemoryConfig()
    mem = PreemptionMemory(cfg)
    assert mem.hazard_per_hour(A, 0.0) == pytest.approx(cfg.prior_hazard_per_hour)
    assert mem.p_no_capacity(A, 0.0) == pytest.approx(cfg.prior_no_capacity)
    assert 0 < mem.p_no_capacity(A, 0.0) < 1


def test_preemption_raises_hazard_and_long_runs_lower_it():
    mem = PreemptionMemory()
    mem.record(A, "run_seconds", H, 0.5 * H)
    mem.record(A, "preemption", H)
    mem.record(W, "run_seconds", 10 * H, 10 * H)
    prior = PreemptionMemory().hazard_per_hour(A, H)
    assert mem.hazard_per_hour(A, H) > prior
    assert mem.hazard_per_hour(W, 10 * H) < prior


def test_evidence_fades_with_half_life():
    cfg = MemoryConfig(capacity_half_life_s=H, region_weight=0.0)
    mem = PreemptionMemory(cfg)
    mem.record(A, "no_capacity", 0.0)
    fresh = mem.p_no_capacity(A, 0.0)
    # long run (12 h half-life, prior 0.3 worth 2): (0.6 + 1) / 3; now (1 h half-life, on
    # the long run worth 1): (long + 1) / 2
    assert mem.long_run_no_capacity(A, 0.0) == pytest.approx(1.6 / 3)
    assert fresh == pytest.approx((1.6 / 3 + 1) / 2)
    slow = 0.5 ** (1 / 12)  # the failure's long-run weight after one hour
    long_1h = (0.6 + slow) / (2 + slow)
    assert mem.p_no_capacity(A, H) == pytest.approx((long_1h + 0.5) / 1.5)
    assert mem.p_no_capacity(A, 100 * H) == pytest.approx(cfg.prior_no_capacity, abs=1e-2)


def test_launch_ok_lowers_no_capacity():
    mem = PreemptionMemory()
    mem.record(A, "launch_ok", 0.0)
    assert mem.p_no_capacity(A, 0.0) < PreemptionMemory().p_no_capacity(A, 0.0)


def test_preemption_is_also_capacity_evidence():
    mem = PreemptionMemory()
    mem.record(A, "preemption", 0.0)
    assert mem.p_no_capacity(A, 0.0) > PreemptionMemory().p_no_capacity(A, 0.0)


def test_sibling_zone_lends_some_evidence():
    mem = PreemptionMemory()
    for i in range(5):
        mem.record(A, "no_capacity", float(i))
    prior = PreemptionMemory().p_no_capacity(B, 5.0)
    assert prior < mem.p_no_capacity(B, 5.0) < mem.p_no_capacity(A, 5.0)
    assert mem.p_no_capacity(W, 5.0) == pytest.approx(prior)


def test_on_demand_is_never_preempted():
    mem = PreemptionMemory()
    od = A[:4] + (False,)
    mem.record(od, "preemption", 0.0)
    assert mem.hazard_per_hour(od, 0.0) == 0.0
    assert mem.p_no_capacity(od, 0.0) == 0.0


def test_rebuild_from_records_gives_same_estimates():
    mem = PreemptionMemory()
    records = [(A, "launch_ok", 10.0, 1.0), (A, "run_seconds", 4000.0, 3990.0),
               (A, "preemption", 4000.0, 1.0), (B, "no_capacity", 4100.0, 1.0),
               (A, "no_capacity", 50.0, 1.0)]  # the last one late, out of order
    for key, kind, t, value in records:
        mem.record(key, kind, t, value)
    # What the controller does at start: the store's zone events, replayed.
    again = PreemptionMemory.from_records(records)
    assert mem.recorded == again.recorded == 5
    for key in (A, B, W):
        assert again.estimate(key, 9000.0) == mem.estimate(key, 9000.0)
    assert again.last(A, "preemption") == 4000.0


def test_unknown_kind_and_bad_value_raise():
    mem = PreemptionMemory()
    with pytest.raises(SkyjobsError):
        mem.record(A, "exploded", 0.0)
    with pytest.raises(SkyjobsError):
        mem.record(A, "run_seconds", 0.0, -5.0)


def test_a_zone_that_kept_failing_stays_unlikely_after_the_outage_evidence_fades():
    cfg = MemoryConfig(region_weight=0.0)
    mem = PreemptionMemory(cfg)
    for i in range(6):
        mem.record(A, "no_capacity", i * 200.0)
    later = 1000.0 + 5 * H  # the short-lived evidence is down to 1/32
    assert mem.p_no_capacity(A, later) > 0.5 > cfg.prior_no_capacity
    # long run: 6 failures at weight ~0.75 on a prior of 0.3 worth 2 launches
    w = sum(0.5 ** ((later - i * 200.0) / (12 * H)) for i in range(6))
    assert mem.long_run_no_capacity(A, later) == pytest.approx((0.6 + w) / (2 + w))
    # successes pull it back
    for i in range(6):
        mem.record(A, "launch_ok", later + i)
    assert mem.long_run_no_capacity(A, later + 10) < 0.5
    assert mem.estimate(A, later).long_run_no_capacity == mem.long_run_no_capacity(A, later)


def test_estimate_is_memoised_but_never_stale():
    mem = PreemptionMemory()
    before = mem.estimate(A, 5 * H)
    assert mem.estimate(A, 5 * H) is before  # same time, no new record: the cached value
    mem.record(A, "no_capacity", 5 * H)
    after = mem.estimate(A, 5 * H)
    assert after.p_no_capacity > before.p_no_capacity
    assert after.p_no_capacity == pytest.approx(mem.p_no_capacity(A, 5 * H))
    assert after.long_run_no_capacity == pytest.approx(mem.long_run_no_capacity(A, 5 * H))
    assert after.hazard_per_hour == pytest.approx(mem.hazard_per_hour(A, 5 * H))


def test_a_running_stint_counts_as_exposure_before_it_is_recorded():
    cfg = MemoryConfig(region_weight=0.0)
    mem = PreemptionMemory(cfg)
    prior = mem.hazard_per_hour(A, 0.0)
    ran = mem.hazard_per_hour(A, 0.0, running_s=10 * H)
    # Gamma prior 0.1/h worth 2 h: 0.2 events over 2 + 10 hours
    assert ran == pytest.approx(0.2 / 12)
    assert ran < prior == pytest.approx(cfg.prior_hazard_per_hour)
