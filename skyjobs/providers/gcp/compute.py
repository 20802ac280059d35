"""The GCP provider: Compute Engine Spot and standard VMs through google-cloud-compute.

That client library is blocking and slow to import, so it is imported on first use and
every call runs in this provider's own bounded thread pool, never on the event loop (the
loop's default executor is shared and small). Each HTTP call carries a timeout, so a hung
call ties up one pool thread for at most ``call_timeout`` seconds.

Names: a GCE instance is named by our deterministic id (``sjab12cd-7-2-0``); names are
unique per zone and the attempt's placement fixes the zone, so our id is all the store
keeps. Inserts carry a ``requestId`` derived from that id: an insert replayed after a
controller crash returns the first request's operation instead of creating anything, and
once GCE has forgotten the request id, the name clash (HTTP 409) says the same.

Watching costs one ``instances.aggregatedList`` per status poll for every zone at once,
filtered by our controller label. A vanished or stopping instance counts as preempted only
when GCE says so: a ``compute.instances.preempted`` system operation naming it (one
``globalOperations.aggregatedList``, asked only while some instance is unexplained).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from skyjobs.exceptions import ConfigError, FatalProviderError, ProviderError, SpecError
from skyjobs.providers import base
from skyjobs.providers.base import InstanceInfo, LaunchRequest
from skyjobs.providers.gcp import errors, startup
from skyjobs.providers.gcp.config import GcpConfig

T = TypeVar("T")

LABEL_CONTROLLER = "skyjobs-controller"
PREEMPTED_OP = "compute.instances.preempted"
# A fixed namespace, so every controller derives the same request id for one instance.
REQUEST_NAMESPACE = uuid.UUID("6c1f3a52-4f0e-4b7e-9d2a-5b8f3e0c9a11")
PAGE_SIZE = 500  # the largest page aggregatedList gives
RETRIES = 3  # for idempotent calls that failed transiently (429, 5xx, timeouts)
RETRY_BASE_S = 0.5
WAIT_SLICE_S = 30.0  # one zoneOperations.wait holds at most this long (GCE: up to 2 min)

# GPU names in our catalog -> GCE accelerator types, for N1 machines that attach them.
# A2, A3 and G2 machine types carry their GPUs; asking for guest accelerators there fails.
ACCELERATOR_TYPES = {
    "V100": "nvidia-tesla-v100", "T4": "nvidia-tesla-t4", "P100": "nvidia-tesla-p100",
    "P4": "nvidia-tesla-p4", "K80": "nvidia-tesla-k80", "A100": "nvidia-tesla-a100",
    "L4": "nvidia-l4", "H100": "nvidia-h100-80gb",
}
BUILTIN_GPU_FAMILIES = ("a2-", "a3-", "a4-", "g2-")
# disk_tier -> persistent disk type (SkyPilot's mapping, so a YAML gets the same disk).
DISK_TYPES = {"low": "pd-standard", "medium": "pd-balanced", "high": "pd-ssd",
              "ultra": "pd-extreme", "best": "pd-extreme"}
DEFAULT_DISK_TYPE = "pd-balanced"

STATUS_PENDING = frozenset({"PROVISIONING", "STAGING", "REPAIRING"})
STATUS_STOPPING = frozenset({"STOPPING", "SUSPENDING"})


def request_id(instance_id: str, action: str = "insert") -> str:
    """The same UUID for every replay of one action on one instance (GCE wants a UUID)."""
    return str(uuid.uuid5(REQUEST_NAMESPACE, f"{action}:{instance_id}"))


def controller_of(instance_id: str) -> str:
    """The controller label of one of our ids (``{prefix}-{job}-{attempt}-{rank}``)."""
    return instance_id.rsplit("-", 3)[0]


def label_filter(controller: str) -> str:
    return f'labels.{LABEL_CONTROLLER} = "{controller}"'


def zone_of(url: str) -> str:
    """``.../zones/us-central1-a`` or ``zones/us-central1-a/...`` -> ``us-central1-a``."""
    parts = url.split("/")
    return parts[parts.index("zones") + 1] if "zones" in parts else url


def instance_info(instance_id: str, inst: Any, preempted: bool) -> InstanceInfo:
    """GCE's view of one instance (None when it does not exist) as state and reason."""
    if inst is None:
        return InstanceInfo(instance_id, base.GONE,
                            base.PREEMPTED if preempted else base.NOT_FOUND)
    status = str(inst.status)
    if status in STATUS_PENDING:
        return InstanceInfo(instance_id, base.PENDING)
    if status == "RUNNING":
        nics = list(inst.network_interfaces)
        return InstanceInfo(instance_id, base.RUNNING, ip=(nics[0].network_i_p or None)
                            if nics else None)
    state = base.STOPPING if status in STATUS_STOPPING else base.GONE
    # TERMINATED/STOPPED/SUSPENDED without a preemption operation: someone stopped it.
    return InstanceInfo(instance_id, state, base.PREEMPTED if preempted else base.TERMINATED)


def _first_page(client: Any, request: Any, timeout: float) -> Any:
    """One page of an aggregated list: the pager would fetch the next pages inside one
    call, uncounted; we page ourselves. ``retry=None`` everywhere: the library would retry
    a 503 for up to 10 minutes, and our calls must stay bounded (``_call`` retries)."""
    return next(iter(client.aggregated_list(request=request, timeout=timeout,
                                            retry=None).pages))


class GcpProvider:
    name = "gcp"

    def __init__(self, config: GcpConfig | None = None, zones: Iterable[str] = (),
                 credentials: Any = None) -> None:
        self.config = config or GcpConfig.from_env()
        self._pool = ThreadPoolExecutor(max_workers=self.config.threads,
                                        thread_name_prefix="skyjobs-gcp")
        self._credentials = credentials
        self._project = self.config.project or None
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()  # clients and credentials, built in pool threads
        self._zones = set(zones)
        self._where: dict[str, str] = {}  # our id -> zone, learnt on the way
        self._preempted: set[tuple[str, str]] = set()  # (zone, name) GCE preempted
        self.calls: Counter[str] = Counter()  # API calls by method, for metrics and bench
        self.call_hooks: list[Callable[[str, str], None]] = []  # (zone or scope, method)
        self._closed = False

    # --- plumbing (pool threads) -----------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def _auth(self) -> tuple[Any, str]:
        with self._lock:
            if self._credentials is None:
                if self.config.anonymous:
                    from google.auth.credentials import AnonymousCredentials

                    self._credentials = AnonymousCredentials()
                else:
                    import google.auth
                    from google.auth.exceptions import DefaultCredentialsError

                    try:
                        creds, project = google.auth.default(scopes=list(self.config.scopes))
                    except DefaultCredentialsError as err:
                        raise FatalProviderError(
                            "no Google credentials found (GOOGLE_APPLICATION_CREDENTIALS, "
                            "gcloud auth application-default login, or the VM's service "
                            f"account): {type(err).__name__}") from None
                    self._credentials = creds
                    self._project = self._project or project
            if not self._project:
                raise FatalProviderError("no GCP project: set SKYJOBS_GCP_PROJECT (the "
                                         "credentials do not name one)")
            return self._credentials, self._project

    def _client(self, kind: str) -> Any:
        creds, _ = self._auth()
        with self._lock:
            if kind not in self._clients:
                from google.cloud import compute_v1

                cls = {"instances": compute_v1.InstancesClient,
                       "zone_operations": compute_v1.ZoneOperationsClient,
                       "global_operations": compute_v1.GlobalOperationsClient}[kind]
                options = ({"api_endpoint": self.config.endpoint_url}
                           if self.config.endpoint_url else None)
                self._clients[kind] = cls(credentials=creds, transport="rest",
                                          client_options=options)
            return self._clients[kind]

    def _call(self, method: str, where: str, fn: Callable[[], T], retry: bool = True) -> T:
        """One API call, retried on transient failures (every call we make is idempotent:
        reads, and writes carrying a request id); failures leave as ProviderError."""
        import requests
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as aexc

        for attempt in range(RETRIES if retry else 1):
            self.calls[method] += 1
            for hook in self.call_hooks:
                hook(where, method)
            try:
                return fn()
            except gexc.GoogleAPICallError as err:
                mapped = errors.from_api_error(err, f"{method} in {where}")
            except (gexc.RetryError, aexc.TransportError, requests.RequestException,
                    TimeoutError, ConnectionError, OSError) as err:
                # The REST transport lets requests' own errors (ReadTimeout...) through.
                mapped = ProviderError(f"{method} in {where}: {type(err).__name__}: {err}")
            except aexc.RefreshError as err:
                raise FatalProviderError(f"{method} in {where}: Google credentials could "
                                         f"not be refreshed: {type(err).__name__}") from None
            if type(mapped) is not ProviderError or attempt == RETRIES - 1 or not retry:
                raise mapped
            time.sleep(RETRY_BASE_S * 2 ** attempt)
        raise AssertionError("unreachable")

    # --- Provider interface ----------------------------------------------------------------

    async def prepare(self) -> None:
        """At controller start: credentials and a project, or one line saying what is
        missing (NeedsPreparation). No API call: the first launch shows permissions."""
        try:
            await self._run(self._auth)
        except FatalProviderError as err:
            raise ConfigError(f"clouds: gcp: {err}") from None

    async def launch(self, req: LaunchRequest) -> list[InstanceInfo]:
        zone = req.placement.zone
        self._zones.add(zone)
        for iid in req.instance_ids:
            self._where[iid] = zone
        nodes = zip(req.instance_ids, req.agent_env, strict=True)
        results = await asyncio.gather(
            *(self._run(self._launch_one, req, rank, iid, env)
              for rank, (iid, env) in enumerate(nodes)), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            # The most decisive error wins: a fatal one fails the job, capacity moves on.
            failed.sort(key=lambda e: 0 if isinstance(e, FatalProviderError) else 1)
            raise failed[0]
        return [r for r in results if isinstance(r, InstanceInfo)]

    def _launch_one(self, req: LaunchRequest, rank: int, iid: str,
                    env: dict[str, str]) -> InstanceInfo:
        from google.cloud import compute_v1

        _, project = self._auth()
        zone = req.placement.zone
        resource = self.instance_resource(req, rank, iid, env)
        client = self._client("instances")
        try:
            op = self._call("insert", zone, functools.partial(
                client.insert_unary, request=compute_v1.InsertInstanceRequest(
                    project=project, zone=zone, instance_resource=resource,
                    request_id=request_id(iid)),
                timeout=self.config.call_timeout, retry=None))
        except ProviderError as err:
            if errors.is_status(err, 409):  # the name exists: a replay past the request id
                return self._info_one(project, zone, iid)
            raise
        op = self._wait(project, zone, op, f"insert {iid} in {zone}")
        failure = errors.from_operation(op, f"insert {iid} in {zone}")
        if failure is not None:
            if "RESOURCE_ALREADY_EXISTS" in getattr(failure, "gcp_codes", ()):
                return self._info_one(project, zone, iid)
            raise failure
        return InstanceInfo(iid, base.PENDING)

    def _wait(self, project: str, zone: str, op: Any, what: str) -> Any:
        """The operation once DONE (zoneOperations.wait, in slices), within the timeout."""
        deadline = time.monotonic() + self.config.operation_timeout
        ops = self._client("zone_operations")
        # Operation.status is an enum (str() gives its number); Instance.status a string.
        while getattr(op.status, "name", op.status) != "DONE":
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProviderError(f"{what}: operation {op.name} not done after "
                                    f"{self.config.operation_timeout:g}s")
            op = self._call("operations.wait", zone, functools.partial(
                ops.wait, project=project, zone=zone, operation=op.name,
                timeout=min(WAIT_SLICE_S, left) + 5, retry=None))
        return op

    def _info_one(self, project: str, zone: str, iid: str) -> InstanceInfo:
        client = self._client("instances")
        try:
            inst = self._call("get", zone, functools.partial(
                client.get, project=project, zone=zone, instance=iid,
                timeout=self.config.call_timeout, retry=None))
        except ProviderError as err:
            if errors.is_status(err, 404):
                return instance_info(iid, None, (zone, iid) in self._preempted)
            raise
        return instance_info(iid, inst, (zone, iid) in self._preempted)

    def instance_resource(self, req: LaunchRequest, rank: int, iid: str,
                          env: dict[str, str]) -> Any:
        """The ``compute_v1.Instance`` one node is inserted with."""
        from google.cloud import compute_v1

        cfg, p = self.config, req.placement
        zone, itype = p.zone, p.instance_type
        gpus = p.offering.accelerator_count if p.offering.accelerator else 0
        # Our labels win a clash with the user's: they find, fence and sweep instances.
        labels = {**req.labels, **req.tags, "skyjobs-instance": iid,
                  "skyjobs-rank": str(rank), "skyjobs-attempt-id": str(req.attempt_id)}
        image = req.image_id or (cfg.gpu_image if gpus else cfg.image)
        disk_type = DISK_TYPES.get(req.disk_tier or "", DEFAULT_DISK_TYPE)
        if req.disk_tier is not None and req.disk_tier not in DISK_TYPES:
            raise FatalProviderError(f"resources.disk_tier: {req.disk_tier!r} is not one of "
                                     f"{', '.join(DISK_TYPES)}")
        disk = compute_v1.AttachedDisk(
            boot=True, auto_delete=True, type_="PERSISTENT",
            initialize_params=compute_v1.AttachedDiskInitializeParams(
                source_image=image, disk_type=f"zones/{zone}/diskTypes/{disk_type}",
                labels=labels, **({"disk_size_gb": req.disk_size_gb}
                                  if req.disk_size_gb else {})))
        nic = compute_v1.NetworkInterface(network=cfg.network)
        subnet = cfg.subnetwork_for(p.region)
        if subnet:
            nic.subnetwork = subnet
        if cfg.external_ip:
            nic.access_configs = [compute_v1.AccessConfig(name="External NAT",
                                                          type_="ONE_TO_ONE_NAT")]
        items = [compute_v1.Items(key="startup-script", value=startup.render(
            env, package_spec=cfg.package_spec, agent_user=cfg.agent_user))]
        if gpus:
            # Deep Learning VM images install the NVIDIA driver at first boot when asked.
            items.append(compute_v1.Items(key="install-nvidia-driver", value="True"))
        scheduling = compute_v1.Scheduling(
            # Spot VMs must not restart on their own; GPUs cannot live-migrate.
            on_host_maintenance="TERMINATE" if (p.use_spot or gpus) else "MIGRATE",
            automatic_restart=not p.use_spot)
        if p.use_spot:
            scheduling.provisioning_model = "SPOT"
            scheduling.instance_termination_action = "DELETE"
        else:
            scheduling.provisioning_model = "STANDARD"
        instance = compute_v1.Instance(
            name=iid, machine_type=f"zones/{zone}/machineTypes/{itype}", labels=labels,
            disks=[disk], network_interfaces=[nic], scheduling=scheduling,
            metadata=compute_v1.Metadata(items=items),
            service_accounts=[compute_v1.ServiceAccount(
                email=cfg.service_account or "default", scopes=list(cfg.scopes))])
        if gpus and not itype.startswith(BUILTIN_GPU_FAMILIES):
            accel = ACCELERATOR_TYPES.get(str(p.offering.accelerator))
            if accel is None:
                raise FatalProviderError(f"accelerators: {p.offering.accelerator} has no GCE "
                                         "accelerator type known to skyjobs")
            instance.guest_accelerators = [compute_v1.AcceleratorConfig(
                accelerator_type=f"zones/{zone}/acceleratorTypes/{accel}",
                accelerator_count=gpus)]
        if req.ports and not cfg.network_tags:
            raise FatalProviderError(
                f"ports: opening ports ({', '.join(req.ports)}) needs network tags whose "
                "firewall rules admit them; set SKYJOBS_GCP_NETWORK_TAGS (skyjobs does not "
                "change firewall rules)")
        if cfg.network_tags:
            instance.tags = compute_v1.Tags(items=list(cfg.network_tags))
        return instance

    def _aggregated(self, kind: str, method: str, request: Any) -> Iterator[tuple[str, Any]]:
        """(scope, scoped list) of every page of an aggregated list, one counted and
        retried call per page (GCE gives at most PAGE_SIZE items a page)."""
        client = self._client(kind)
        while True:
            page = self._call(method, "all zones", functools.partial(
                _first_page, client, request, self.config.call_timeout))
            yield from page.items.items()
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def _listed(self, controllers: Iterable[str]) -> dict[str, tuple[str, Any]]:
        """Our id -> (zone, instance) for every instance labelled with these controllers:
        one aggregatedList per controller label (one in practice), every page."""
        from google.cloud import compute_v1

        _, project = self._auth()
        out: dict[str, tuple[str, Any]] = {}
        for controller in sorted(set(controllers)):
            request = compute_v1.AggregatedListInstancesRequest(
                project=project, filter=label_filter(controller), max_results=PAGE_SIZE)
            for scope, scoped in self._aggregated("instances", "aggregatedList", request):
                for inst in scoped.instances:
                    zone = zone_of(scope)
                    out[inst.name] = (zone, inst)
                    self._where[inst.name] = zone
        return out

    def _refresh_preempted(self) -> None:
        """Learn every instance GCE preempted (system operations, all zones, one call)."""
        from google.cloud import compute_v1

        _, project = self._auth()
        request = compute_v1.AggregatedListGlobalOperationsRequest(
            project=project, filter=f'operationType = "{PREEMPTED_OP}"',
            max_results=PAGE_SIZE)
        for _scope, scoped in self._aggregated("global_operations",
                                               "operations.aggregatedList", request):
            for op in scoped.operations:
                name = op.target_link.rsplit("/", 1)[-1]
                self._preempted.add((zone_of(op.zone or op.target_link), name))

    def _status(self, ids: list[str]) -> dict[str, InstanceInfo]:
        listed = self._listed(controller_of(i) for i in ids)

        def explained(i: str) -> bool:
            hit = listed.get(i)
            if hit is not None and str(hit[1].status) not in (STATUS_STOPPING | {
                    "TERMINATED", "STOPPED", "SUSPENDED"}):
                return True  # alive: nothing to explain
            return (self._where.get(i, ""), i) in self._preempted

        if not all(explained(i) for i in ids):
            self._refresh_preempted()
        out = {}
        for i in ids:
            zone, inst = listed.get(i, (self._where.get(i, ""), None))
            out[i] = instance_info(i, inst, (zone, i) in self._preempted)
        return out

    def forget(self, instance_ids: list[str]) -> None:
        # Called on the loop while a pool thread may be in _status: single dict and set
        # operations are atomic under the GIL, and a forgotten id is never asked about.
        for i in instance_ids:
            zone = self._where.pop(i, None)
            if zone is not None:
                self._preempted.discard((zone, i))

    async def status(self, instance_ids: list[str]) -> dict[str, InstanceInfo]:
        if not instance_ids:
            return {}
        return await self._run(self._status, list(instance_ids))

    def _terminate(self, ids: list[str]) -> None:
        from google.cloud import compute_v1

        _, project = self._auth()
        listed = self._listed(controller_of(i) for i in ids)
        client = self._client("instances")
        for iid in sorted(ids):
            if iid not in listed:
                continue  # never created, or already deleted
            zone = listed[iid][0]
            try:
                self._call("delete", zone, functools.partial(
                    client.delete_unary, request=compute_v1.DeleteInstanceRequest(
                        project=project, zone=zone, instance=iid,
                        request_id=request_id(iid, "delete")),
                    timeout=self.config.call_timeout, retry=None))
            except ProviderError as err:
                if not errors.is_status(err, 404):
                    raise

    async def terminate(self, instance_ids: list[str]) -> None:
        if instance_ids:
            await self._run(self._terminate, list(instance_ids))

    async def list_owned(self, prefix: str) -> list[str]:
        """Every instance of this controller that still exists, in any zone (OwnedLister);
        a stopped (TERMINATED) one still holds its disk, so it counts."""
        return sorted(await self._run(self._listed, [prefix]))

    async def check_bucket(self, source: str) -> None:
        """gs:// bucket exists and can be listed, written and deleted (BucketChecker)."""
        from skyjobs.providers.gcp import storage

        def check() -> None:
            creds, project = self._storage_auth()
            storage.check_bucket(source, project=project, credentials=creds, endpoint=None)

        try:
            await self._run(check)
        except SpecError:
            raise
        except FatalProviderError as err:
            raise SpecError(f"{source}: {err}") from None

    def _storage_auth(self) -> tuple[Any, str | None]:
        # GCS needs no project for bucket calls; anonymous mode (tests) talks to the fake
        # that STORAGE_EMULATOR_HOST names.
        if self.config.anonymous:
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials(), self._project
        return self._auth()

    async def close(self) -> None:
        """Idempotent: the controller closes its providers, and so may whoever made them."""
        if self._closed:
            return
        self._closed = True
        clients = list(self._clients.values())
        self._clients.clear()

        def shut() -> None:
            for client in clients:
                client.transport.close()

        await self._run(shut)
        self._pool.shutdown(wait=False, cancel_futures=True)
