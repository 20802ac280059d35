import pytest

from skyjobs.exceptions import ConfigError
from skyjobs.pricing.catalog import Offering
from skyjobs.pricing.prices import PriceBook, price_key

OFF = Offering("aws", "us-east-1", "us-east-1a", "p3.2xlarge", "V100", 1, 8, 61, 3.06, 0.97,
               "2025-06-30", "test")


def test_no_observation_gives_list_price():
    book = PriceBook()
    q = book.quote(OFF, True, now=100.0)
    assert (q.price, q.status) == (0.97, "list")


def test_fresh_observation_is_live_then_stale():
    book = PriceBook(max_age_s=600)
    book.observe(price_key(OFF), 0.80, t=1000.0)
    assert book.quote(OFF, True, now=1500.0).status == "live"
    assert book.price(OFF, True, now=1500.0) == 0.80
    stale = book.quote(OFF, True, now=1700.0)
    assert stale.status == "stale"
    assert stale.price == 0.97  # falls back to the list price
    assert stale.observed_at == 1000.0


def test_on_demand_is_always_list():
    book = PriceBook()
    book.observe(price_key(OFF), 0.5, t=0.0)
    assert book.quote(OFF, False, now=0.0).price == 3.06
    assert book.quote(OFF, False, now=0.0).status == "list"


def test_older_reading_never_replaces_newer():
    book = PriceBook()
    book.observe(price_key(OFF), 0.9, t=200.0)
    book.observe(price_key(OFF), 0.5, t=100.0)
    assert book.price(OFF, True, now=250.0) == 0.9


def test_stale_without_list_price_uses_old_reading():
    off = Offering("aws", "r", "z", "t", None, 0, 2, 4, 1.0, None, "d", "s")
    book = PriceBook(max_age_s=10)
    book.observe(price_key(off), 0.3, t=0.0)
    assert book.quote(off, True, now=100.0).price == 0.3


def test_bad_inputs_raise_config_error():
    with pytest.raises(ConfigError):
        PriceBook(max_age_s=0)
    with pytest.raises(ConfigError):
        PriceBook().observe(price_key(OFF), -1.0, t=0.0)
