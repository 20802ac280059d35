"""Pure pieces of the GCP provider: error classes by code, the instance it inserts, ids and
settings. No network."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from google.api_core import exceptions as gexc

from skyjobs.exceptions import CapacityError, FatalProviderError, ProviderError
from skyjobs.pricing.catalog import Offering, Placement
from skyjobs.providers import base
from skyjobs.providers.base import LaunchRequest
from skyjobs.providers.gcp import compute, errors
from skyjobs.providers.gcp.config import GcpConfig


def _op(*codes: str, status: int = 0) -> Any:
    errs = [SimpleNamespace(code=c, message="the zone does not have enough resources")
            for c in codes]
    return SimpleNamespace(error=SimpleNamespace(errors=errs), http_error_status_code=status)


@pytest.mark.parametrize(("codes", "status", "cls"), [
    (("ZONE_RESOURCE_POOL_EXHAUSTED",), 503, CapacityError),
    (("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",), 503, CapacityError),
    (("UNSUPPORTED_OPERATION",), 400, CapacityError),
    (("QUOTA_EXCEEDED",), 403, CapacityError),
    (("RESOURCE_OPERATION_RATE_EXCEEDED",), 403, ProviderError),
    (("PERMISSIONS_ERROR",), 403, FatalProviderError),
    (("SOMETHING_NEW",), 500, ProviderError),
    (("SOMETHING_NEW",), 400, FatalProviderError),
])
def test_operation_errors_are_classified_by_code(codes: tuple[str, ...], status: int,
                                                 cls: type[Exception]) -> None:
    err = errors.from_operation(_op(*codes, status=status), "insert x in z")
    assert type(err) is cls
    assert err is not None and err.gcp_codes == codes  # type: ignore[attr-defined]


def test_a_finished_operation_without_errors_is_no_error() -> None:
    assert errors.from_operation(SimpleNamespace(error=None), "insert") is None
    assert errors.from_operation(_op(), "insert") is None


@pytest.mark.parametrize(("exc", "cls"), [
    (gexc.Forbidden("no", errors=[{"reason": "forbidden"}]), FatalProviderError),
    (gexc.Forbidden("no", errors=[{"reason": "rateLimitExceeded"}]), ProviderError),
    (gexc.Forbidden("no", errors=[{"reason": "quotaExceeded"}]), CapacityError),
    (gexc.Unauthorized("no"), FatalProviderError),
    (gexc.BadRequest("bad", errors=[{"reason": "invalid"}]), FatalProviderError),
    (gexc.NotFound("gone"), FatalProviderError),
    (gexc.TooManyRequests("slow down"), ProviderError),
    (gexc.ServiceUnavailable("later"), ProviderError),
    (gexc.InternalServerError("oops"), ProviderError),
])
def test_http_errors_are_classified_by_status_and_reason(exc: Exception,
                                                         cls: type[Exception]) -> None:
    # The messages say nothing useful on purpose: only status and reason decide.
    err = errors.from_api_error(exc, "insert x")
    assert type(err) is cls


def test_permission_errors_say_what_to_grant() -> None:
    err = errors.from_api_error(gexc.Forbidden("no", errors=[{"reason": "forbidden"}]), "insert")
    assert "roles/compute.instanceAdmin.v1" in str(err)


def test_request_ids_are_uuids_stable_per_instance_and_action() -> None:
    a = compute.request_id("sjab12cd-7-2-0")
    assert a == compute.request_id("sjab12cd-7-2-0")
    assert a != compute.request_id("sjab12cd-7-2-1")
    assert a != compute.request_id("sjab12cd-7-2-0", "delete")
    assert len(a) == 36 and a.count("-") == 4


def test_controller_label_is_read_from_our_ids() -> None:
    assert compute.controller_of("sjab12cd-7-2-0") == "sjab12cd"
    assert compute.zone_of("https://x/compute/v1/projects/p/zones/us-east1-b") == "us-east1-b"
    assert compute.zone_of("zones/europe-west4-a/instances/i") == "europe-west4-a"


def _req(itype: str = "n2-standard-4", accel: str | None = None, count: int = 0,
         spot: bool = True, **extra: Any) -> LaunchRequest:
    offering = Offering("gcp", "us-central1", "us-central1-a", itype, accel, count, 4, 16,
                        1.0, 0.3, "2026-11-01", "test")
    return LaunchRequest(job_id=7, attempt_id=12, placement=Placement(offering, spot, 0.3),
                         instance_ids=["sjab12cd-7-2-0"],
                         agent_env=[{"SKYJOBS_CONTROLLER_URL": "http://10.0.0.2:8765",
                                     "SKYJOBS_ATTEMPT_ID": "12", "SKYJOBS_AGENT_TOKEN": "t",
                                     "SKYJOBS_NODE_RANK": "0"}],
                         tags={"skyjobs-controller": "sjab12cd", "skyjobs-job": "7"}, **extra)


@pytest.fixture
def provider() -> Any:
    return compute.GcpProvider(GcpConfig(project="p", endpoint_url="http://127.0.0.1:9",
                                         anonymous=True))


def _metadata(inst: Any) -> dict[str, str]:
    return {i.key: i.value for i in inst.metadata.items}


def test_spot_instance_is_spot_deleted_on_preemption_and_labelled(provider: Any) -> None:
    req = _req(labels={"team": "ml", "skyjobs-job": "forged"})
    inst = provider.instance_resource(req, 0, "sjab12cd-7-2-0", req.agent_env[0])
    assert inst.name == "sjab12cd-7-2-0"
    assert inst.machine_type == "zones/us-central1-a/machineTypes/n2-standard-4"
    assert inst.scheduling.provisioning_model == "SPOT"
    assert inst.scheduling.instance_termination_action == "DELETE"
    assert inst.scheduling.on_host_maintenance == "TERMINATE"
    assert inst.scheduling.automatic_restart is False
    assert inst.labels["skyjobs-controller"] == "sjab12cd"
    assert inst.labels["skyjobs-job"] == "7"  # ours win over the user's
    assert inst.labels["team"] == "ml"
    assert inst.labels["skyjobs-rank"] == "0"
    assert not inst.guest_accelerators
    script = _metadata(inst)["startup-script"]
    assert "SKYJOBS_CLOUD=gcp" in script and "SKYJOBS_AGENT_TOKEN=t" in script
    assert "install-nvidia-driver" not in _metadata(inst)


def test_on_demand_with_attached_gpus(provider: Any) -> None:
    req = _req("n1-standard-8", "V100", 1, spot=False, disk_size_gb=200, disk_tier="high")
    inst = provider.instance_resource(req, 0, "sjab12cd-7-2-0", req.agent_env[0])
    assert inst.scheduling.provisioning_model == "STANDARD"
    assert inst.scheduling.on_host_maintenance == "TERMINATE"  # GPUs cannot live-migrate
    (accel,) = inst.guest_accelerators
    assert accel.accelerator_type == "zones/us-central1-a/acceleratorTypes/nvidia-tesla-v100"
    assert accel.accelerator_count == 1
    disk = inst.disks[0].initialize_params
    assert disk.disk_size_gb == 200 and disk.disk_type.endswith("/pd-ssd")
    assert "deeplearning-platform-release" in disk.source_image
    assert _metadata(inst)["install-nvidia-driver"] == "True"


def test_machines_that_carry_their_gpus_get_no_guest_accelerators(provider: Any) -> None:
    for itype, accel in (("a2-highgpu-1g", "A100"), ("g2-standard-4", "L4")):
        req = _req(itype, accel, 1)
        inst = provider.instance_resource(req, 0, "sjab12cd-7-2-0", req.agent_env[0])
        assert not inst.guest_accelerators


def test_ports_need_network_tags() -> None:
    bare = compute.GcpProvider(GcpConfig(project="p"))
    req = _req(ports=("8080",))
    with pytest.raises(FatalProviderError, match="SKYJOBS_GCP_NETWORK_TAGS"):
        bare.instance_resource(req, 0, "sjab12cd-7-2-0", req.agent_env[0])
    tagged = compute.GcpProvider(GcpConfig(project="p", network_tags=("skyjobs-web",)))
    inst = tagged.instance_resource(req, 0, "sjab12cd-7-2-0", req.agent_env[0])
    assert list(inst.tags.items) == ["skyjobs-web"]


def test_anonymous_credentials_only_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYJOBS_GCP_ANONYMOUS", "1")
    monkeypatch.setenv("SKYJOBS_GCP_ENDPOINT_URL", "https://compute.googleapis.com")
    with pytest.raises(FatalProviderError, match="loopback"):
        GcpConfig.from_env()
    monkeypatch.setenv("SKYJOBS_GCP_ENDPOINT_URL", "http://127.0.0.1:8080")
    monkeypatch.setenv("SKYJOBS_GCP_NETWORK_TAGS", "a, b")
    monkeypatch.setenv("SKYJOBS_GCP_SUBNETWORKS", "us-central1=regions/us-central1/"
                       "subnetworks/x")
    cfg = GcpConfig.from_env()
    assert cfg.anonymous and cfg.network_tags == ("a", "b")
    assert cfg.subnetwork_for("us-central1") == "regions/us-central1/subnetworks/x"
    assert cfg.subnetwork_for("europe-west4") is None


def _inst(status: str, ip: str = "10.0.0.9") -> Any:
    return SimpleNamespace(status=status, network_interfaces=[SimpleNamespace(network_i_p=ip)])


def test_states_and_reasons() -> None:
    info = compute.instance_info
    assert info("i", _inst("PROVISIONING"), False).state == base.PENDING
    assert info("i", _inst("RUNNING"), False) == base.InstanceInfo("i", base.RUNNING,
                                                                  ip="10.0.0.9")
    # Stopping is not gone: its processes may still run (fencing waits for gone).
    assert info("i", _inst("STOPPING"), True) == base.InstanceInfo("i", base.STOPPING,
                                                                  base.PREEMPTED)
    assert info("i", _inst("TERMINATED"), False) == base.InstanceInfo("i", base.GONE,
                                                                     base.TERMINATED)
    # Gone without cloud evidence is "not found", never a preemption.
    assert info("i", None, False) == base.InstanceInfo("i", base.GONE, base.NOT_FOUND)
    assert info("i", None, True) == base.InstanceInfo("i", base.GONE, base.PREEMPTED)
