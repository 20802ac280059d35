import pytest

from skyjobs.pricing.catalog import load_cloud, shipped_clouds

WANTED = {
    "aws": {"p5.48xlarge": ("H100", 8), "p4d.24xlarge": ("A100", 8), "g6.xlarge": ("L4", 1),
            "g6.12xlarge": ("L4", 4), "p3.2xlarge": ("V100", 1), "p3.8xlarge": ("V100", 4),
            "p3.16xlarge": ("V100", 8), "g4dn.xlarge": ("T4", 1), "g4dn.12xlarge": ("T4", 4),
            "m6i.xlarge": (None, 0), "c6i.xlarge": (None, 0)},
    "gcp": {"a3-highgpu-8g": ("H100", 8), "a2-highgpu-1g": ("A100", 1),
            "a2-highgpu-8g": ("A100", 8), "g2-standard-4": ("L4", 1),
            "g2-standard-48": ("L4", 4), "n1-standard-8": ("V100", 1),
            "n1-standard-4": ("T4", 1), "n2-standard-8": (None, 0)},
}
REGIONS = {"aws": {"us-east-1", "us-east-2", "us-west-2"},
           "gcp": {"us-central1", "us-east1", "us-west1", "europe-west4"}}


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_cloud_data_covers_types_regions_and_zones(cloud):
    assert cloud in shipped_clouds()
    offers = load_cloud(cloud)
    by_type = {o.instance_type: o for o in offers}
    for itype, (acc, count) in WANTED[cloud].items():
        assert itype in by_type, itype
        assert (by_type[itype].accelerator, by_type[itype].accelerator_count) == (acc, count)
    assert REGIONS[cloud] <= {o.region for o in offers}
    for region in REGIONS[cloud]:
        assert len({o.zone for o in offers if o.region == region}) >= 3


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_every_row_is_priced_dated_sourced_and_unique(cloud):
    offers = load_cloud(cloud)
    keys = [(o.zone, o.instance_type) for o in offers]
    assert len(keys) == len(set(keys))  # prices and memory are keyed by zone and type
    for o in offers:
        assert o.zone.startswith(o.region)
        assert o.spot_price is not None and 0 < o.spot_price < o.ondemand_price
        assert len(o.price_date) == 10 and o.price_date.startswith("20")
        assert "approximate" in o.source and cloud.upper() in o.source.upper()


def test_aws_spot_varies_by_zone():
    p3 = [o.spot_price for o in load_cloud("aws") if o.instance_type == "p3.2xlarge"]
    assert len(set(p3)) > 1
