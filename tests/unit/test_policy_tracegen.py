"""The seeded synthetic trace regimes the policy bench judges the default on."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import tracegen  # noqa: E402


@pytest.mark.parametrize("regime", sorted(tracegen.REGIMES))
def test_regimes_are_deterministic_in_the_seed(regime: str) -> None:
    gen = tracegen.REGIMES[regime]
    a, pa = gen(1, days=2.0)
    b, pb = gen(1, days=2.0)
    c, _ = gen(2, days=2.0)
    assert a == b and pa == pb
    assert a != c


def test_flicker_drops_every_zone_at_once_for_minutes() -> None:
    ts, prices = tracegen.flicker(1, days=4.0)
    assert prices == {} and ts.gap_s == 30.0 and len(ts.zones) == 4
    n = len(ts.zones[0].capacity)
    all_down = [i for i in range(n) if all(z.capacity[i] == 0 for z in ts.zones)]
    assert len(all_down) > 0  # common shocks exist
    # and they are short: no all-zone outage longer than an hour
    run = longest = 0
    for i in range(n):
        run = run + 1 if all(z.capacity[i] == 0 for z in ts.zones) else 0
        longest = max(longest, run)
    assert longest * ts.gap_s < 3600


def test_outage_puts_long_outages_in_the_cheapest_zone() -> None:
    ts, prices = tracegen.outage(1)
    cheapest = min(prices, key=prices.__getitem__)
    avail = {z.zone: sum(z.capacity) / len(z.capacity) for z in ts.zones}
    assert avail[cheapest] == min(avail.values())


def test_priced_traces_carry_their_own_prices_and_multinode_counts_nodes() -> None:
    ts, prices = tracegen.priced(1, days=2.0)
    assert prices == {}
    assert all(z.prices is not None and len(z.prices) == len(z.capacity) for z in ts.zones)
    mn, _ = tracegen.multinode(1, days=2.0, size=16)
    assert mn.max_capacity <= 16 and any(0 < c < 16 for z in mn.zones for c in z.capacity)
