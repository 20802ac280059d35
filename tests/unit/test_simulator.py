import json

import pytest
from click.testing import CliRunner

from skyjobs.exceptions import ConfigError
from skyjobs.recovery import policy
from skyjobs.recovery.sim import simulator
from skyjobs.recovery.sim.bound import BoundInput, lower_bound
from skyjobs.recovery.sim.simulator import (
    POLICIES,
    SimConfig,
    bound_run,
    evaluate,
    simulate_run,
)
from skyjobs.recovery.sim.traces import TraceSet, ZoneTrace, load_traces, parse_zone_trace
from skyjobs.simulate_cli import simulate

GAP = 600.0
N = 60  # ten hours of samples


def zone(name: str, data: list[int]) -> ZoneTrace:
    return ZoneTrace(name, name[:-1], "v100", GAP, tuple(data))


def traces(*zones: ZoneTrace) -> TraceSet:
    return TraceSet("test", zones)


def cfg(**kw: object) -> SimConfig:
    base: dict[str, object] = dict(job_hours=2.0, deadline_hours=4.0, restart_s=180.0,
                                   spot_price=0.97, ondemand_price=3.06, notice_s=120.0)
    base.update(kw)
    return SimConfig(**base)  # type: ignore[arg-type]


def test_zone_always_up_costs_job_plus_one_restart_on_spot():
    ts = traces(zone("us-east-1a", [1] * N))
    for name in ("COST_AWARE", "DEADLINE_AWARE", "FAILOVER", "EAGER_NEXT_REGION"):
        r = simulate_run(ts, cfg(), POLICIES[name], 0.0)
        assert r.cost == pytest.approx((2 + 0.05) * 0.97)
        assert (r.preemptions, r.missed, r.failed_launches, r.ondemand_hours) == (0, False, 0, 0)
    bound = bound_run(ts, cfg(), 0.0)
    assert bound is not None and 0.97 * 2.05 * 0.98 <= bound <= 0.97 * 2.05 + 1e-9


def test_no_spot_capacity_deadline_forces_on_demand_in_time():
    ts = traces(zone("us-east-1a", [0] * N))
    r = simulate_run(ts, cfg(), POLICIES["COST_AWARE"], 0.0)
    assert r.cost == pytest.approx((2 + 0.05) * 3.06)
    assert not r.missed
    assert r.failed_launches >= 1
    assert r.hours <= 4.0


def test_preemption_without_notice_loses_work_since_checkpoint():
    data = [1] * 6 + [0] * (N - 6)  # up for the first hour only
    ts = traces(zone("us-east-1a", data))
    lossy = simulate_run(ts, cfg(notice_s=0.0, checkpoint_interval_s=1800.0),
                         POLICIES["COST_AWARE"], 0.0)
    # 3420 s of work, checkpoint at 1800 s: 5400 s left, on-demand from 7200 s (see docs).
    assert lossy.preemptions == 1
    assert lossy.cost == pytest.approx(0.97 + 5580 / 3600 * 3.06)
    saved = simulate_run(ts, cfg(), POLICIES["COST_AWARE"], 0.0)
    assert saved.cost < lossy.cost
    assert not lossy.missed and not saved.missed


def test_preempted_job_moves_to_the_other_zone():
    ts = traces(zone("us-east-1a", [1] * 6 + [0] * (N - 6)), zone("us-west-2a", [1] * N))
    c = cfg(spot_prices={"us-east-1": 0.90})  # 1a is cheaper, so it goes first
    r = simulate_run(ts, c, POLICIES["COST_AWARE"], 0.0)
    assert (r.preemptions, r.zone_changes, r.ondemand_hours) == (1, 1, 0)
    assert r.cost == pytest.approx(0.90 * 1 + 0.97 * (3600 + 180 + 3780 - 3600) / 3600)


def test_multi_node_job_needs_capacity_for_all_nodes():
    ts = traces(zone("us-east-1a", [3] * N), zone("us-west-2a", [4] * N))
    c = cfg(spot_prices={"us-east-1": 0.5})
    r = simulate_run(ts, c, POLICIES["COST_AWARE"], 0.0)
    # The cheap zone has only 3 of 4: after a few failures the job runs all 4 nodes in 2a.
    assert 1 <= r.failed_launches <= 3
    assert (r.ondemand_hours, r.missed) == (0, False)
    assert r.cost == pytest.approx(4 * 0.97 * 2.05)


def test_simulator_calls_the_controllers_rank(monkeypatch: pytest.MonkeyPatch):
    calls = []

    def spy(cands, ctx):
        calls.append(ctx.strategy)
        return policy.rank(cands, ctx)

    monkeypatch.setattr(simulator, "rank", spy)
    simulate_run(traces(zone("us-east-1a", [1] * N)), cfg(), POLICIES["DEADLINE_AWARE"], 0.0)
    assert calls == ["DEADLINE_AWARE"]


def test_bound_by_hand():
    g = 3600.0
    five_then_none = [0.97] * 5 + [None] * 6
    inp = BoundInput(g, 11, 10 * g, 180.0, 3.06, [five_then_none])
    b = lower_bound(inp)
    assert b is not None and 20.0 < b <= 0.97 * 5 + 3.06 * (5 + 0.1)
    assert lower_bound(BoundInput(g, 10, 10 * g, 180.0, 3.06, [])) is None


def test_evaluate_reports_every_policy_and_bound():
    ts = traces(zone("us-east-1a", [1, 1, 0] * 20), zone("us-west-2a", [0, 1, 1] * 20))
    report = evaluate(ts, cfg(start_every_hours=2.0),
                      ["DEADLINE_AWARE", "skypilot", "single-zone-greedy"])
    names = [p.name for p in report.policies]
    assert names == ["DEADLINE_AWARE", "skypilot", "single-zone-greedy", "omniscient"]
    assert report.starts == 4
    dl = report.policies[0]
    assert dl.misses == 0
    assert report.bound_cost is not None and dl.mean_cost >= report.bound_cost - 1e-9
    assert report.policies[2].runs == 8  # each zone on its own


def test_trace_parsing_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="gap_seconds"):
        parse_zone_trace("us-east-1a_v100_1.json", {"metadata": {}, "data": [1]})
    with pytest.raises(ConfigError, match="prices"):
        parse_zone_trace("z_v100_1.json", {"metadata": {"gap_seconds": 1}, "data": [1],
                                           "prices": [1, 2]})
    (tmp_path / "bad_v100_1.json").write_text("{")
    with pytest.raises(ConfigError, match="bad_v100_1.json"):
        load_traces(tmp_path)


def write_traces(tmp_path, zones: dict[str, list[int]]):
    for name, data in zones.items():
        doc = {"metadata": {"gap_seconds": GAP}, "data": data}
        (tmp_path / f"{name}_v100_1.json").write_text(json.dumps(doc))
    return str(tmp_path)


def test_cli_json_and_errors(tmp_path):
    d = write_traces(tmp_path, {"us-east-1a": [1] * N, "us-west-2a": [1, 0] * (N // 2)})
    runner = CliRunner()
    res = runner.invoke(simulate, ["--traces", d, "--job-hours", "2", "--deadline-hours", "4",
                                   "--policy", "default", "--policy", "on-demand", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert [p["name"] for p in doc["policies"]] == ["DEADLINE_AWARE", "on-demand",
                                                    "omniscient"]
    res = runner.invoke(simulate, ["--traces", d, "--job-hours", "2", "--spot-price", "1",
                                   "--prices", "x.json"])
    assert res.exit_code == 2 and "not both" in res.output
    res = runner.invoke(simulate, ["--traces", str(tmp_path / "nope"), "--job-hours", "2"])
    assert res.exit_code == 1 and "not a directory" in res.output
    bad = tmp_path / "p.json"
    bad.write_text('{"us-east-1": "cheap"}')
    res = runner.invoke(simulate, ["--traces", d, "--job-hours", "2", "--prices", str(bad)])
    assert res.exit_code == 2 and "must be a number" in res.output
    assert "Traceback" not in res.output


def test_cli_prices_file_changes_costs(tmp_path):
    d = write_traces(tmp_path, {"us-east-1a": [1] * N})
    prices = tmp_path.parent / f"{tmp_path.name}-prices.json"
    prices.write_text('{"us-east-1": 0.5}')
    res = CliRunner().invoke(simulate, ["--traces", d, "--job-hours", "2", "--deadline-hours",
                                        "4", "--policy", "COST_AWARE", "--prices",
                                        str(prices), "--json", "--no-bound"])
    assert res.exit_code == 0, res.output
    cost = json.loads(res.output)["policies"][0]["mean_cost"]
    assert cost == pytest.approx(0.5 * 2.05)


def test_bound_early_stop_and_seeded_runs_match_the_full_bisection():
    ts = traces(zone("us-east-1a", [1, 1, 0, 1, 0, 0] * 10), zone("us-west-2a", [0, 1, 1] * 20))
    c = cfg(start_every_hours=1.0)
    starts = simulator.start_times(c, ts)
    full = []
    for s in starts:
        inp = simulator._bound_input(ts, c, s)
        full.append(lower_bound(inp, rel_tol=0.0))
    fast = simulator.bound_runs(ts, c, starts)
    assert [bound_run(ts, c, s) for s in starts] == pytest.approx(fast, rel=1e-3)
    for f, b in zip(full, fast, strict=True):
        assert f is not None and b is not None
        assert b <= f + 1e-9  # stopping early never overstates the bound
        assert b == pytest.approx(f, rel=1e-3)


def test_decision_hook_sees_launches_failures_and_preemptions():
    ts = traces(zone("us-east-1a", [1] * 3 + [0] * 57), zone("us-west-2a", [0] * 2 + [1] * 58))
    seen: list[tuple[str, str, bool]] = []

    def hook(event: str, ctx: policy.RankingContext, p: object, reason: str) -> None:
        seen.append((event, p.zone, p.use_spot))  # type: ignore[attr-defined]
        if event == "launch":
            assert reason  # rank()'s own explanation

    r = simulate_run(ts, cfg(), POLICIES["DEADLINE_AWARE"], 0.0, hook)
    assert seen[0] == ("launch", "us-east-1a", True)
    assert ("preempted", "us-east-1a", True) in seen
    assert seen[-1] == ("launch", "us-west-2a", True)
    assert r.preemptions == 1 and not r.missed


def test_preempted_zone_cools_down_as_in_the_controller():
    ts = traces(zone("us-east-1a", [1] * 3 + [0] + [1] * 56), zone("us-west-2a", [1] * N))
    cooling: list[dict[tuple[str, str, str], float]] = []

    def hook(event: str, ctx: policy.RankingContext, p: object, reason: str) -> None:
        if event == "launch":
            cooling.append(dict(ctx.cooldown))

    simulate_run(ts, cfg(), POLICIES["COST_AWARE"], 0.0, hook)
    key = ("aws", "us-east-1a", "p3.2xlarge")
    assert cooling[0] == {} and cooling[1] == {key: 3 * GAP + 1800.0}
    cooling.clear()
    simulate_run(ts, cfg(zone_cooldown_s=0.0), POLICIES["COST_AWARE"], 0.0, hook)
    assert all(c == {} for c in cooling)


def test_first_start_shifts_every_submit_and_keeps_the_window():
    ts = traces(zone("us-east-1a", [1] * N))  # ten hours of ten-minute samples
    c = cfg(start_every_hours=1.0)
    base = simulator.start_times(c, ts)
    shifted = simulator.start_times(cfg(start_every_hours=1.0, first_start_hours=0.5), ts)
    assert shifted and shifted[0] == 1800.0
    assert all(b - a == 3600.0 for a, b in zip(shifted, shifted[1:], strict=False))
    window = 3600 * (c.deadline_hours or 2 * c.job_hours)
    assert all(s + window <= ts.span_s for s in base + shifted)
    assert len(shifted) <= len(base)
    with pytest.raises(ConfigError):
        cfg(first_start_hours=-1.0).validate()


def test_move_running_spot_returns_to_the_cheap_zone_once_it_is_back():
    ts = traces(zone("us-east-1a", [0] * 6 + [1] * (N - 6)), zone("us-west-2a", [1] * N))
    prices = {"us-east-1": 0.5, "us-west-2": 1.0}
    events: list[tuple[str, str]] = []

    def hook(event: str, ctx: policy.RankingContext, p: object, reason: str) -> None:
        events.append((event, p.zone))  # type: ignore[attr-defined]

    stay = simulate_run(ts, cfg(spot_prices=prices, move_running_spot=False),
                        POLICIES["DEADLINE_AWARE"], 0.0)
    moved = simulate_run(ts, cfg(spot_prices=prices), POLICIES["DEADLINE_AWARE"], 0.0, hook)
    assert ("move", "us-east-1a") in events
    assert moved.zone_changes == 1 and not moved.missed
    assert moved.cost < stay.cost
    # On by default (the controller moves running spot jobs too); off, it stays; and only
    # the default strategy moves.
    assert stay.zone_changes == 0
    other = simulate_run(ts, cfg(spot_prices=prices, move_running_spot=True),
                         POLICIES["COST_AWARE"], 0.0)
    assert other.zone_changes == 0


def test_running_job_is_checked_at_the_controllers_interval(monkeypatch: pytest.MonkeyPatch):
    # One-minute samples; the controller asks every deadline_check_interval (300 s).
    ts = TraceSet("test", (ZoneTrace("us-east-1a", "us-east-1", "v100", 60.0, (1,) * 600),
                           ZoneTrace("us-west-2a", "us-west-2", "v100", 60.0, (1,) * 600)))
    asked: list[float] = []
    real = simulator.move_decision

    def counting(cands, ctx, running_s):  # type: ignore[no-untyped-def]
        asked.append(ctx.now)
        return real(cands, ctx, running_s)

    monkeypatch.setattr(simulator, "move_decision", counting)
    c = cfg(job_hours=1.0, deadline_hours=2.0)
    simulate_run(ts, c, POLICIES["DEADLINE_AWARE"], 0.0)
    assert len(asked) == 12 and all(b - a == 300.0 for a, b in zip(asked, asked[1:],
                                                                     strict=False))
    asked.clear()
    simulate_run(ts, cfg(job_hours=1.0, deadline_hours=2.0, check_interval_s=0.0),
                 POLICIES["DEADLINE_AWARE"], 0.0)
    assert len(asked) > 50  # every sample
