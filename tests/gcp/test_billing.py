"""``skyjobs catalog refresh --cloud gcp`` against a fake Cloud Billing Catalog API.

The CLI runs as users run it (a subprocess of ``python -m skyjobs``), with the real
google-cloud-billing REST client pointed at ``tests/gcp/billing_fake.py``. Expected prices are
written out from the fake's SKU prices by hand (vCPUs x core + GiB x RAM + GPUs x GPU), so a
wrong formula or a wrong SKU match shows as a wrong number, not as the same mistake twice.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("google.cloud.billing_v1")

from skyjobs.exceptions import ConfigError  # noqa: E402
from skyjobs.pricing.catalog import (  # noqa: E402
    Catalog,
    load_cloud,
    load_offerings,
    load_overlay,
    overlay_path,
)
from skyjobs.pricing.prices import PriceBook, price_key  # noqa: E402
from skyjobs.providers.gcp import billing  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.gcp.billing_fake import BillingFake, noise_skus, realistic_skus  # noqa: E402

ROWS = 143  # rows of the packaged gcp.csv
KEPT = {("us-east1", "n1-standard-4"): "2 Spot T4 GPU SKUs in us-east1 disagree",
        ("europe-west4", "a3-highgpu-8g"): "no Spot H100 80GB GPU SKU in europe-west4"}
KEPT_ROWS = 6  # three zones each


@pytest.fixture
def fake() -> Iterator[BillingFake]:
    server = BillingFake().start()
    yield server
    server.stop()


def refresh(fake: BillingFake | None, state_dir: Path, *args: str,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``skyjobs catalog refresh --cloud gcp --state-dir DIR`` (the option after the
    subcommand, as sky users type it), as a user runs it."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SKYJOBS_", "GOOGLE_", "CLOUDSDK_"))}
    if fake is not None:
        base["SKYJOBS_GCP_BILLING_ENDPOINT"] = fake.url
    return subprocess.run(
        [sys.executable, "-m", "skyjobs", "catalog", "refresh", "--cloud", "gcp",
         "--state-dir", str(state_dir), *args],
        cwd=ROOT, env={**base, **(env or {})}, capture_output=True, text=True, timeout=120)


def row(offerings: Any, zone: str, itype: str) -> Any:
    return next(o for o in offerings if o.zone == zone and o.instance_type == itype)


def packaged_digest() -> str:
    data = resources.files("skyjobs.pricing").joinpath("data", "gcp.csv").read_bytes()
    return hashlib.sha256(data).hexdigest()


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    return lines[0]


# --- the refresh through the CLI --------------------------------------------------------------

def test_refresh_prices_rows_from_skus_into_an_overlay(fake: BillingFake, tmp_path: Path):
    before = packaged_digest()
    started = time.time()
    r = refresh(fake, tmp_path / "state")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    path = overlay_path(tmp_path / "state", "gcp")
    assert path == tmp_path / "state" / "catalog" / "gcp.csv"
    overlay = load_overlay("gcp", tmp_path / "state")
    assert len(overlay) == ROWS - KEPT_ROWS

    # n1 + an attached V100, Americas on-demand and Iowa Spot SKUs.
    n1 = row(overlay, "us-central1-a", "n1-standard-8")
    assert n1.ondemand_price == pytest.approx(8 * 0.031611 + 30 * 0.004237 + 2.48, abs=1e-6)
    assert n1.spot_price == pytest.approx(8 * 0.00698 + 30 * 0.000935 + 0.744, abs=1e-6)
    # g2 and its built-in L4: G2 Core/Ram SKUs plus the L4 GPU SKU.
    g2 = row(overlay, "us-central1-b", "g2-standard-4")
    assert g2.ondemand_price == pytest.approx(4 * 0.024989 + 16 * 0.002928 + 0.56, abs=1e-6)
    assert g2.spot_price == pytest.approx(4 * 0.009996 + 16 * 0.001171 + 0.224, abs=1e-6)
    # a2 with eight A100s, in the Netherlands (its own SKUs, Spot 1.1x Iowa's).
    a2 = row(overlay, "europe-west4-a", "a2-highgpu-8g")
    assert a2.ondemand_price == pytest.approx(
        96 * 0.034773 + 680 * 0.004661 + 8 * 3.226608, abs=1e-6)
    assert a2.spot_price == pytest.approx(
        1.1 * (96 * 0.009483 + 680 * 0.001271 + 8 * 0.880172), abs=1e-6)
    # Spot is priced per region (Oregon's SKUs for us-west1), the same in each of its zones.
    (west,) = {o.spot_price for o in overlay
               if o.instance_type == "n1-standard-8" and o.region == "us-west1"}
    assert west == pytest.approx(0.97 * (8 * 0.00698 + 30 * 0.000935 + 0.744), abs=1e-6)

    today = datetime.now(UTC).date().isoformat()
    for o in overlay:
        assert o.cloud == "gcp" and o.price_date == today
        assert o.source.startswith("Cloud Billing Catalog API, refreshed ")
        assert o.refreshed_at is not None and started - 1 <= o.refreshed_at <= time.time()
        assert o.spot_price is not None and 0 < o.spot_price < o.ondemand_price
    # Same columns as the packaged file, and the packaged file untouched.
    packaged = resources.files("skyjobs.pricing").joinpath("data", "gcp.csv")
    header = packaged.read_text().splitlines()[0]
    assert path.read_text().splitlines()[0] == header
    assert packaged_digest() == before
    assert load_cloud("gcp") == load_offerings("gcp")
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert not [p for p in path.parent.iterdir() if p.name != "gcp.csv"]  # no temporaries

    out = r.stdout
    assert f"gcp: priced {ROWS - KEPT_ROWS} of {ROWS} rows from Cloud Billing Catalog API" in out
    assert f"kept {KEPT_ROWS} rows at their packaged prices:" in out
    assert "biggest changes against the packaged catalog" in out
    assert f"wrote {path}" in out


def test_unpriceable_rows_keep_packaged_prices_and_are_reported(fake: BillingFake,
                                                                tmp_path: Path):
    r = refresh(fake, tmp_path)
    assert r.returncode == 0, r.stderr
    for (region, itype), why in KEPT.items():
        assert f"  {region} {itype} (3 zones): {why}" in r.stdout
    overlay_keys = {(o.region, o.instance_type) for o in load_overlay("gcp", tmp_path)}
    assert not overlay_keys & KEPT.keys()
    loaded = Catalog.for_clouds(["gcp"], state_dir=tmp_path).offerings
    packaged = load_cloud("gcp")
    assert len(loaded) == len(packaged) == ROWS
    for new, old in zip(loaded, packaged, strict=True):
        if (old.region, old.instance_type) in KEPT:
            assert new == old and new.refreshed_at is None
        else:
            assert new.refreshed_at is not None
            assert (new.zone, new.instance_type, new.vcpus) == (old.zone, old.instance_type,
                                                                old.vcpus)


def test_pagination_is_followed(fake: BillingFake, tmp_path: Path):
    r = refresh(fake, tmp_path)
    assert r.returncode == 0, r.stderr
    calls = fake.sku_requests()
    pages = math.ceil(len(fake.skus) / fake.max_page_size)
    assert len(calls) == pages > 1
    assert "pageToken" not in calls[0]["query"]
    assert all(c["query"].get("pageToken") for c in calls[1:])
    assert all(c["path"] == "/v1/services/6F81-5844-456A/skus" for c in calls)
    assert all(c["query"]["currencyCode"] == "USD" for c in calls)
    assert all("Authorization" not in c["headers"] for c in calls)  # anonymous on loopback
    # The GPU SKUs are on the last pages: GPU rows are priced only if every page was read.
    assert row(load_overlay("gcp", tmp_path), "us-west1-a", "a3-highgpu-8g").refreshed_at


@pytest.mark.parametrize("after_pages", [0, 3])
def test_permission_denied_is_one_line_and_leaves_the_overlay(fake: BillingFake,
                                                              tmp_path: Path,
                                                              after_pages: int):
    assert refresh(fake, tmp_path).returncode == 0
    path = overlay_path(tmp_path, "gcp")
    before = path.read_bytes()
    fake.fail(403, after_pages=after_pages)
    line = one_error_line(refresh(fake, tmp_path))
    assert "HTTP 403, SERVICE_DISABLED" in line
    assert "cloudbilling.googleapis.com" in line
    assert path.read_bytes() == before


def test_first_refresh_denied_writes_nothing(fake: BillingFake, tmp_path: Path):
    fake.fail(403)
    one_error_line(refresh(fake, tmp_path))
    assert not overlay_path(tmp_path, "gcp").exists()


@pytest.mark.parametrize("status", [401, 503])
def test_other_api_errors_are_one_line(fake: BillingFake, tmp_path: Path, status: int):
    fake.fail(status)
    line = one_error_line(refresh(fake, tmp_path))
    assert f"HTTP {status}" in line


def test_no_credentials_is_one_line_and_prints_no_secret(tmp_path: Path):
    r = refresh(None, tmp_path, env={"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "no")})
    assert "no Google credentials found" in one_error_line(r)


def test_unreachable_endpoint_is_one_line(tmp_path: Path):
    fake = BillingFake().start()
    fake.stop()  # a port nobody listens on any more
    assert "cannot reach" in one_error_line(refresh(fake, tmp_path))


def test_no_priceable_row_keeps_the_old_overlay(tmp_path: Path):
    good = BillingFake().start()
    try:
        assert refresh(good, tmp_path).returncode == 0
    finally:
        good.stop()
    before = overlay_path(tmp_path, "gcp").read_bytes()
    empty = BillingFake(skus=noise_skus()).start()
    try:
        line = one_error_line(refresh(empty, tmp_path))
    finally:
        empty.stop()
    assert f"none of the {ROWS} catalog rows could be priced" in line
    assert overlay_path(tmp_path, "gcp").read_bytes() == before


def test_state_dir_before_the_subcommand_and_from_the_environment(fake: BillingFake,
                                                                 tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYJOBS_", "GOOGLE_"))}
    env["SKYJOBS_GCP_BILLING_ENDPOINT"] = fake.url
    for args, extra in ((["--state-dir", str(tmp_path / "a")], {}),
                        ([], {"SKYJOBS_STATE_DIR": str(tmp_path / "b")})):
        r = subprocess.run([sys.executable, "-m", "skyjobs", *args, "catalog", "refresh",
                            "--cloud", "gcp"], cwd=ROOT, env={**env, **extra},
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    assert overlay_path(tmp_path / "a", "gcp").is_file()
    assert overlay_path(tmp_path / "b", "gcp").is_file()


# --- the overlay in the catalog and the price book --------------------------------------------

def test_overlay_prices_are_list_prices_with_their_refresh_time(fake: BillingFake,
                                                                tmp_path: Path):
    assert refresh(fake, tmp_path).returncode == 0
    catalog = Catalog.for_clouds(["gcp", "local"], state_dir=tmp_path)
    o = row(catalog.offerings, "us-central1-a", "n1-standard-8")
    assert o.refreshed_at is not None
    book = PriceBook(max_age_s=60)
    # Even a polled price under the same key (none should exist for gcp) neither replaces
    # the refreshed list nor turns it "live" or, hours later, "stale".
    book.observe(price_key(o), 0.01, t=o.refreshed_at)
    for use_spot in (True, False):
        q = book.quote(o, use_spot, now=o.refreshed_at + 40 * 86400)
        assert (q.price, q.status, q.refreshed_at, q.observed_at) == (
            o.price(use_spot), "list", o.refreshed_at, None)
        day = datetime.fromtimestamp(o.refreshed_at, UTC).date().isoformat()
        assert q.label() == f"${o.price(use_spot):.3f}/h (list, refreshed {day})"
    # The packaged rows and other clouds behave as before.
    local = next(x for x in catalog.offerings if x.cloud == "local")
    assert local.refreshed_at is None and book.quote(local, True, 0.0).status == "list"
    assert book.quote(local, True, 0.0).label() == f"${local.spot_price:.3f}/h (list)"
    assert all(x.refreshed_at is None for x in Catalog.for_clouds(["gcp"]).offerings)


def test_overlay_rows_of_offerings_no_longer_packaged_are_ignored(tmp_path: Path):
    path = overlay_path(tmp_path, "gcp")
    path.parent.mkdir(parents=True)
    header = "cloud,region,zone,instance_type,accelerator,accelerator_count,vcpus,memory_gb," \
             "ondemand_price,spot_price,price_date,source\n"
    path.write_text(header + "gcp,us-central1,us-central1-a,n9-gone-8,,0,8,32,1.0,0.2,"
                    "2026-07-01,\"Cloud Billing Catalog API, refreshed 2026-07-01T10:00:00"
                    "+00:00\"\n")
    assert load_offerings("gcp", tmp_path) == load_cloud("gcp")
    (gone,) = load_overlay("gcp", tmp_path)
    assert gone.refreshed_at == datetime(2026, 7, 1, 10, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("body", [
    "cloud,region\ngcp,us-central1\n",
    "cloud,region,zone,instance_type,accelerator,accelerator_count,vcpus,memory_gb,"
    "ondemand_price,spot_price,price_date,source\n"
    "gcp,us-central1,us-central1-a,n1-standard-8,V100,1,8,30,2.86,,2026-07-01,x\n",
    "cloud,region,zone,instance_type,accelerator,accelerator_count,vcpus,memory_gb,"
    "ondemand_price,spot_price,price_date,source\n"
    "aws,us-central1,us-central1-a,n1-standard-8,V100,1,8,30,2.86,0.8,2026-07-01,x\n",
    "cloud,region,zone,instance_type,accelerator,accelerator_count,vcpus,memory_gb,"
    "ondemand_price,spot_price,price_date,source\n"
    "gcp,us-central1,us-central1-a,n1-standard-8,V100,1,8,30,nan,0.8,2026-07-01,x\n",
    "cloud,region,zone,instance_type,accelerator,accelerator_count,vcpus,memory_gb,"
    "ondemand_price,spot_price,price_date,source\n"
    "gcp,us-central1,us-central1-a,n1-standard-8,V100,1,8,30,2.86,0.8,someday,x\n",
])
def test_a_broken_overlay_is_a_config_error_naming_it(tmp_path: Path, body: str):
    path = overlay_path(tmp_path, "gcp")
    path.parent.mkdir(parents=True)
    path.write_text(body)
    with pytest.raises(ConfigError, match="catalog refresh --cloud gcp"):
        Catalog.for_clouds(["gcp"], state_dir=tmp_path)


def test_plain_http_endpoints_only_on_loopback():
    assert billing._endpoint("http://127.0.0.1:1") == ("http://127.0.0.1:1", True)
    assert billing._endpoint("https://billing.example") == ("https://billing.example", False)
    assert billing._endpoint("") == (None, False)
    with pytest.raises(ConfigError):
        billing._endpoint("http://billing.example:80")


# --- SKU parsing ---------------------------------------------------------------------------

def test_every_noise_sku_is_skipped_and_every_vm_part_parsed():
    parsed_noise = {s["description"]: billing.parse_sku(s) for s in noise_skus()}
    # The 80 GB A100 is a GPU of its own, never the 40 GB "A100" of a2-highgpu rows.
    a100_80 = parsed_noise.pop("Nvidia A100 80GB GPU running in Americas")
    assert a100_80 is not None and a100_80.name == "A100-80GB"
    assert {d: p for d, p in parsed_noise.items() if p is not None} == {}
    parsed = [billing.parse_sku(s) for s in realistic_skus()]
    vm_parts = len(realistic_skus()) - len(noise_skus())
    assert sum(p is not None for p in parsed) == vm_parts + 1  # and the A100 80GB
    v100 = next(p for p in parsed if p and p.description.startswith("Nvidia Tesla V100"))
    assert (v100.part, v100.name, v100.spot, v100.price) == ("gpu", "V100", False, 2.48)
    assert v100.regions == {"us-central1", "us-east1", "us-west1"}


def test_a_sku_of_the_region_alone_beats_a_multi_region_one():
    from tests.gcp.billing_fake import sku

    def gpu(regions: list[str], price: float, desc: str = "running in Americas") -> Any:
        return billing.parse_sku(sku(f"Nvidia L4 GPU {desc}", "GPU", "OnDemand", regions,
                                     "h", price))

    prices = billing.PriceList([gpu(["us-east1", "us-west1"], 0.56),
                                gpu(["us-west1"], 0.58, "running in Oregon")])
    assert prices.unit_price("gpu", "L4", False, "us-west1") == 0.58
    assert prices.unit_price("gpu", "L4", False, "us-east1") == 0.56
    with pytest.raises(billing.Unpriced, match="no Spot L4 GPU SKU in us-east1"):
        prices.unit_price("gpu", "L4", True, "us-east1")


def test_the_last_tier_prices_and_int64_units_may_be_strings():
    from tests.gcp.billing_fake import sku

    tiered = sku("N2 Instance Core running in Americas", "CPU", "OnDemand", ["us-east1"], "h",
                 0, tiers=[0.0, 0.031611])
    parsed = billing.parse_sku(tiered)
    assert parsed is not None and parsed.price == pytest.approx(0.031611)
    big = sku("Nvidia H100 80GB GPU running in Americas", "GPU", "OnDemand", ["us-east1"],
              "h", 12.25)
    assert big["pricingInfo"][0]["pricingExpression"]["tieredRates"][0]["unitPrice"] == {
        "currencyCode": "USD", "units": "12", "nanos": 250000000}
    parsed_big = billing.parse_sku(big)
    assert parsed_big is not None and parsed_big.price == 12.25


DESCRIPTIONS = st.builds(
    lambda pre, name, part, tail: f"{pre}{name}{part}{tail}",
    st.sampled_from(["", "Spot Preemptible ", "Preemptible ", "Commitment v1: ", "DWS "]),
    st.sampled_from([*billing.FAMILY_SKU_NAMES.values(), "Nvidia Tesla V100", "Nvidia L4",
                     "Nvidia H100 80GB", "Nvidia A100 80GB", "N2D AMD Instance", "X"]),
    st.sampled_from([" Core", " Ram", " GPU", "", " Custom Core"]),
    st.sampled_from([" running in Americas", "", " running in Iowa"]))
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=8)


def either(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(s, s, s, JSON)  # mostly well-typed, sometimes anything at all


UNIT_PRICE = st.fixed_dictionaries({}, optional={
    "currencyCode": either(st.sampled_from(["USD", "EUR", ""])),
    "units": either(st.integers(-3, 10**20).map(str) | st.integers(-3, 50) | st.just("1e3")),
    "nanos": either(st.integers(-2 * 10**9, 2 * 10**9))})
EXPRESSION = st.fixed_dictionaries({}, optional={
    "usageUnit": either(st.sampled_from(["h", "GiBy.h", "GiBy.mo", "GBy.h"])),
    "tieredRates": either(st.lists(st.fixed_dictionaries(
        {}, optional={"startUsageAmount": JSON, "unitPrice": either(UNIT_PRICE)}),
        max_size=3))})
SKUISH = st.fixed_dictionaries({}, optional={
    "skuId": either(st.text(max_size=14)),
    "description": either(DESCRIPTIONS),
    "category": either(st.fixed_dictionaries({}, optional={
        "resourceFamily": either(st.sampled_from(["Compute", "Storage"])),
        "resourceGroup": either(st.sampled_from(["CPU", "RAM", "N1Standard", "GPU", "Other"])),
        "usageType": either(st.sampled_from(["OnDemand", "Preemptible", "Commit1Yr"]))})),
    "serviceRegions": either(st.lists(st.sampled_from(["us-central1", "europe-west4"])
                                      | st.text(max_size=4) | JSON, max_size=3)),
    "pricingInfo": either(st.lists(st.fixed_dictionaries(
        {}, optional={"pricingExpression": either(EXPRESSION)}), max_size=2)),
}) | JSON


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SKUISH)
def test_any_sku_is_a_price_or_a_skip(sku: Any):
    parsed = billing.parse_sku(sku)
    if parsed is None:
        return
    assert math.isfinite(parsed.price) and parsed.price > 0
    assert parsed.regions and all(isinstance(r, str) and r for r in parsed.regions)
    assert parsed.part in ("cpu", "ram", "gpu")
    names = billing.GPU_SKU_NAMES if parsed.part == "gpu" else billing.FAMILY_SKU_NAMES
    assert parsed.name in names


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(SKUISH, max_size=25))
def test_any_sku_list_prices_or_keeps_every_row(skus: list[Any]):
    rows = load_cloud("gcp")[::7]
    result = billing.reprice(rows, skus + realistic_skus()[:20], datetime.now(UTC))
    assert len(result.priced) + len(result.kept) == len(rows)
    for _, new in result.priced:
        assert new.spot_price is not None and 0 < new.spot_price < new.ondemand_price
