"""The AWS provider: EC2 spot and on-demand instances through aioboto3.

Every instance carries our deterministic id (``sjab12cd-7-2-0``) in its ``skyjobs-instance``
tag and is found by that tag, never by an EC2 id we would have to remember: the store keeps
only our ids, so a controller that restarts finds its instances again. Launches pass a
``ClientToken`` derived from our id, so a launch replayed after a crash between the EC2 call
and the store write gets the first instance back instead of a second one.

Credentials come from the standard AWS chain (environment, profile, instance role) and are
never read, logged or stored here. One client per region, created on first use and reused.
``SKYJOBS_AWS_ENDPOINT_URL`` (or botocore's own ``AWS_ENDPOINT_URL``) points every client
at another endpoint: the tests use a moto server on 127.0.0.1.

Images: the task's ``image_id`` for the region when it gives one, else
``SKYJOBS_AWS_IMAGE_ID`` when set, else a public SSM parameter's current AMI
(``skyjobs/providers/aws_images.py``), resolved for every region by
:meth:`AwsProvider.resolve_images` when the controller starts.

What the task's chosen alternative asks for (docs/aws.md, "Task keys at launch"): ``labels``
become instance and volume tags under ours; ``disk_size``/``disk_tier`` override the root
volume of the image (its device name and size read once per image with DescribeImages, in
parallel with the launch's own lookup); ``ports`` are checked against the configured security
groups (DescribeSecurityGroups), never opened by us.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, cast

import aioboto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from skyjobs.checkpoint.buckets import parse_bucket
from skyjobs.exceptions import FatalProviderError, ProviderError, SpecError
from skyjobs.providers import aws_userdata, base
from skyjobs.providers.aws_errors import from_client_error
from skyjobs.providers.aws_images import DEFAULT_IMAGE_PARAMETER, DEFAULT_TTL, ImageResolver
from skyjobs.providers.base import InstanceInfo, LaunchRequest

TAG_INSTANCE = "skyjobs-instance"
TAG_CONTROLLER = "skyjobs-controller"
TAG_RANK = "skyjobs-rank"
# EC2 takes at most 200 values in one filter.
FILTER_CHUNK = 200
# Spot capacity reclaimed by AWS, whether the instance was terminated or stopped.
SPOT_REASONS = frozenset({"Server.SpotInstanceTermination", "Server.SpotInstanceShutdown"})
LIVE_STATES = ("pending", "running", "stopping", "stopped")
# When one tag matches several instances (someone launched by hand), report the liveliest.
STATE_RANK = {"running": 0, "pending": 1, "stopping": 2, "stopped": 3, "shutting-down": 4,
              "terminated": 5}

# disk_tier -> (root VolumeType, IOPS, gp3 throughput MiB/s). medium, high and ultra are
# SkyPilot's figures (a YAML gets the same disk); low is gp3 at its free baseline rather than
# SkyPilot's magnetic "standard" (previous generation: ~100 IOPS, at most 1 TiB, billed per
# I/O); best is the highest tier, as in SkyPilot. Without disk_tier the image's own volume
# type is kept. See docs/aws.md.
DISK_TIERS: dict[str, tuple[str, int, int | None]] = {
    "low": ("gp3", 3000, 125),
    "medium": ("gp3", 3500, 218),
    "high": ("gp3", 7000, 437),
    "ultra": ("io2", 20000, None),
    "best": ("io2", 20000, None),
}
GP3_BASELINE_IOPS = 3000
# EBS allows at most 500 provisioned IOPS per GiB on gp3 (and io2 on instances without
# Block Express); a small volume gets fewer IOPS instead of a refused launch.
MAX_IOPS_PER_GB = 500
MIN_IO2_IOPS = 100

PriceKey = tuple[str, str, str]  # region, zone, instance type
PriceRow = tuple[str, str, str, float, float]  # ... plus price $/h and when it was observed


def _keyed(value: str) -> dict[str, list[str]]:
    """``a,b`` or ``key=a,key2=b`` -> {"" or key: [values]}: one syntax for every setting
    that may differ per region (images, security groups) or zone (subnets)."""
    out: dict[str, list[str]] = {}
    for item in (p.strip() for p in value.split(",")):
        if item:
            key, sep, val = item.rpartition("=")
            out.setdefault(key if sep else "", []).append(val.strip())
    return out


class AwsConfig(BaseSettings):
    """Launch settings, from ``SKYJOBS_AWS_*`` environment variables (see docs/aws.md).

    Per-region and per-zone values share one syntax: ``a,b`` or ``key=a,key2=b``."""

    model_config = SettingsConfigDict(env_prefix="SKYJOBS_AWS_", frozen=True,
                                      extra="forbid", populate_by_name=True)

    image_ids: Annotated[dict[str, list[str]], NoDecode] = Field(  # region -> AMI
        # An alias replaces the prefixed env name, so the variable is spelt out in full.
        default_factory=dict, validation_alias=AliasChoices(
            "image_ids", "skyjobs_aws_image_id", "skyjobs_aws_image_ids"))
    security_group_ids: Annotated[dict[str, list[str]], NoDecode] = Field(default_factory=dict)
    subnets: Annotated[dict[str, list[str]], NoDecode] = Field(default_factory=dict)  # by zone
    instance_profile: str = ""  # name or ARN
    key_name: str = ""
    package_spec: str = ""  # empty: the agent the controller serves (docs/bootstrap.md)
    agent_user: str = ""  # empty: the agent runs as root
    # Where status and orphan sweeps look besides launch regions.
    regions: Annotated[tuple[str, ...], NoDecode] = ()
    endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    # Without an image id: the public SSM parameter naming the current default AMI ("" for
    # none), re-read after image_ssm_ttl seconds (0: never).
    image_ssm_parameter: str = DEFAULT_IMAGE_PARAMETER
    image_ssm_ttl: float = DEFAULT_TTL

    @field_validator("image_ids", "security_group_ids", "subnets", mode="before")
    @classmethod
    def _keyed_values(cls, v: Any) -> Any:
        return _keyed(v) if isinstance(v, str) else v

    @field_validator("regions", mode="before")
    @classmethod
    def _region_list(cls, v: Any) -> Any:
        return tuple(_keyed(v).get("", [])) if isinstance(v, str) else v

    @field_validator("endpoint_url", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @classmethod
    def from_env(cls) -> AwsConfig:
        """The settings in this process's environment (pydantic-settings reads them)."""
        try:
            return cls()
        except (ValidationError, SettingsError) as err:
            raise FatalProviderError(f"SKYJOBS_AWS_* settings: {err}") from None

    def explicit_image(self, region: str) -> str | None:
        """The operator's image for this region (region-keyed, else global), if any."""
        images = self.image_ids.get(region) or self.image_ids.get("")
        return images[0] if images else None

    def image_for(self, region: str) -> str:
        image = self.explicit_image(region)
        if not image:
            raise FatalProviderError(f"no AMI for {region}: set SKYJOBS_AWS_IMAGE_ID "
                                     f"(ami-... or {region}=ami-...,...)")
        return image

    def groups_for(self, region: str) -> list[str]:
        return [*self.security_group_ids.get(region, []), *self.security_group_ids.get("", [])]

    def subnet_for(self, zone: str) -> str | None:
        subnets = self.subnets.get(zone)
        return subnets[0] if subnets else None


def client_token(instance_id: str) -> str:
    """At most 64 ASCII characters, the same for every replay of one node's launch."""
    token = f"skyjobs-{instance_id}"
    return token if len(token) <= 64 else hashlib.sha256(token.encode()).hexdigest()


def tag_value(instance: Mapping[str, Any], key: str) -> str | None:
    for tag in instance.get("Tags", []):
        if tag.get("Key") == key:
            return str(tag.get("Value"))
    return None


def instance_info(instance_id: str, inst: Mapping[str, Any] | None) -> InstanceInfo:
    """EC2's view of one instance as the controller's state and reason."""
    if inst is None:
        return InstanceInfo(instance_id, base.GONE, base.NOT_FOUND)
    state = inst.get("State", {}).get("Name", "")
    if state == "pending":
        return InstanceInfo(instance_id, base.PENDING)
    if state == "running":
        ip = inst.get("PrivateIpAddress") or inst.get("PublicIpAddress")
        return InstanceInfo(instance_id, base.RUNNING, ip=ip)
    code = inst.get("StateReason", {}).get("Code", "")
    # shutting-down/stopping: the OS is still stopping the job's processes.
    state_now = base.STOPPING if state in ("shutting-down", "stopping") else base.GONE
    if code in SPOT_REASONS:
        return InstanceInfo(instance_id, state_now, base.PREEMPTED)
    if code == "Client.UserInitiatedShutdown":
        # A terminate (or stop) through the API: ours, or a person's in the console; EC2
        # does not say whose, and either way nothing of the cloud took it away.
        return InstanceInfo(instance_id, state_now, base.TERMINATED)
    # The OS shut itself down, a host failure, a failed launch: nobody asked for this.
    return InstanceInfo(instance_id, state_now, base.LOST)


@dataclass(frozen=True)
class RootDevice:
    """An image's root volume: its device name, and its size when the image says."""

    name: str
    size_gb: int | None


def root_block_devices(req: LaunchRequest, root: RootDevice | None) -> list[dict[str, Any]]:
    """BlockDeviceMappings for the root volume the task asks for ([] when it asks for
    nothing: the image's own volume, as before these keys existed)."""
    if req.disk_size_gb is None and req.disk_tier is None:
        return []
    if root is None:
        raise ProviderError("root device of the image unknown (launch() reads it first)")
    size = req.disk_size_gb or root.size_gb
    ebs: dict[str, Any] = {"DeleteOnTermination": True}
    if size:
        ebs["VolumeSize"] = size
    if req.disk_tier is not None:
        if req.disk_tier not in DISK_TIERS:
            raise FatalProviderError(f"resources.disk_tier: {req.disk_tier!r} is not one of "
                                     f"{', '.join(DISK_TIERS)}")
        volume_type, iops, throughput = DISK_TIERS[req.disk_tier]
        if size:
            iops = min(iops, MAX_IOPS_PER_GB * size)
        iops = max(iops, GP3_BASELINE_IOPS if volume_type == "gp3" else MIN_IO2_IOPS)
        ebs["VolumeType"] = volume_type
        ebs["Iops"] = iops
        if throughput is not None:
            ebs["Throughput"] = min(throughput, iops // 4)  # gp3: at most 0.25 MiB/s per IOPS
    return [{"DeviceName": root.name, "Ebs": ebs}]


def _port_range(port: str) -> tuple[int, int]:
    low, _, high = port.partition("-")
    return int(low), int(high or low)


def _covered(want: tuple[int, int], ranges: list[tuple[int, int]]) -> bool:
    """Whether the union of ``ranges`` (inclusive) holds every port of ``want``."""
    nxt, last = want
    for low, high in sorted(ranges):
        if low > nxt:
            break
        nxt = max(nxt, high + 1)
        if nxt > last:
            return True
    return nxt > last


def open_tcp_ranges(groups: list[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """The TCP port ranges some inbound rule of these groups admits, from any source (a
    CIDR, a prefix list or another group: the operator's choice of who may connect)."""
    out: list[tuple[int, int]] = []
    for group in groups:
        for perm in group.get("IpPermissions", []):
            proto = str(perm.get("IpProtocol", ""))
            if proto == "-1":
                out.append((0, 65535))
            elif proto in ("tcp", "6"):
                out.append((int(perm.get("FromPort", 0)), int(perm.get("ToPort", 65535))))
    return out


class AwsProvider:
    name = "aws"

    def __init__(self, config: AwsConfig | None = None, regions: Iterable[str] = (),
                 session: Any = None) -> None:
        self.config = config or AwsConfig.from_env()
        self._session = session or aioboto3.Session()
        self._stack = AsyncExitStack()
        self._clients: dict[tuple[str, str], Any] = {}
        self._client_lock = asyncio.Lock()
        self._launch_regions = set(regions)  # the catalog's: where jobs may launch
        self._regions = {*self.config.regions, *regions}
        self._where: dict[str, str] = {}  # our instance id -> region, learnt on the way
        self.calls: Counter[str] = Counter()  # API calls by operation, for metrics and bench
        self.call_hooks: list[Callable[[str, str], None]] = []  # (region, operation)
        self._boto_config = BotoConfig(retries={"mode": "standard", "max_attempts": 3},
                                       connect_timeout=5, read_timeout=30)
        self.images = ImageResolver(self.config.explicit_image,
                                    self.config.image_ssm_parameter, self._get_parameter,
                                    ttl=self.config.image_ssm_ttl)
        # (region, image) -> its root volume; an AMI id's block devices never change.
        self._roots: dict[tuple[str, str], RootDevice] = {}
        self._root_locks: dict[tuple[str, str], asyncio.Lock] = {}

    # --- plumbing --------------------------------------------------------------------------

    async def _client(self, service: str, region: str) -> Any:
        key = (service, region)
        if key not in self._clients:
            async with self._client_lock:
                if key not in self._clients:
                    self._clients[key] = await self._stack.enter_async_context(
                        self._session.client(service, region_name=region,
                                             endpoint_url=self.config.endpoint_url,
                                             config=self._boto_config))
        return self._clients[key]

    async def _call(self, service: str, region: str, op: str, **kwargs: Any) -> Any:
        """One API call; every failure leaves as a ProviderError subclass."""
        client = await self._client(service, region)
        self.calls[op] += 1
        for hook in self.call_hooks:
            hook(region, op)
        try:
            return await getattr(client, op)(**kwargs)
        except ClientError as err:
            raise from_client_error(err, f"{op} in {region}") from None
        except NoCredentialsError:
            raise FatalProviderError("no AWS credentials found (environment, profile or "
                                     "instance role)") from None
        except BotoCoreError as err:
            raise ProviderError(f"{op} in {region}: {type(err).__name__}: {err}") from None

    async def _describe(self, region: str, filters: list[dict[str, Any]]) -> list[Any]:
        out: list[Any] = []
        token: str | None = None
        while True:
            extra = {"NextToken": token} if token else {}
            page = await self._call("ec2", region, "describe_instances", Filters=filters,
                                    MaxResults=1000, **extra)
            for reservation in page.get("Reservations", []):
                out.extend(reservation.get("Instances", []))
            token = page.get("NextToken")
            if not token:
                return out

    async def _find(self, region: str, ids: list[str]) -> dict[str, Any]:
        """Our id -> the EC2 instance carrying it in ``region`` (chunked tag filters)."""
        found: dict[str, Any] = {}
        for i in range(0, len(ids), FILTER_CHUNK):
            chunk = ids[i:i + FILTER_CHUNK]
            for inst in await self._describe(region, [{"Name": f"tag:{TAG_INSTANCE}",
                                                       "Values": chunk}]):
                ours = tag_value(inst, TAG_INSTANCE)
                if ours is None:
                    continue
                best = found.get(ours)
                if best is None or _rank(inst) < _rank(best):
                    found[ours] = inst
                self._where[ours] = region
        return found

    async def _locate(self, ids: list[str]) -> dict[str, tuple[str, Any]]:
        """Our id -> (region, instance), asking each region that may hold any of them."""
        unknown = [i for i in ids if i not in self._where]
        asks: dict[str, list[str]] = {}
        for i in ids:
            if i in self._where:
                asks.setdefault(self._where[i], []).append(i)
        if unknown:
            if not self._regions:
                raise ProviderError("AWS: no region to look in; set SKYJOBS_AWS_REGIONS")
            for region in self._regions:
                asks.setdefault(region, []).extend(unknown)
        regions = sorted(asks)
        # All or nothing: an id missing because one region's call failed is not NOT_FOUND.
        results = await asyncio.gather(*(self._find(r, sorted(set(asks[r]))) for r in regions))
        located: dict[str, tuple[str, Any]] = {}
        for region, found in zip(regions, results, strict=True):
            for ours, inst in found.items():
                if ours not in located or _rank(inst) < _rank(located[ours][1]):
                    located[ours] = (region, inst)
        return located

    async def _get_parameter(self, region: str, name: str) -> Any:
        return await self._call("ssm", region, "get_parameter", Name=name)

    # --- images ----------------------------------------------------------------------------

    async def prepare(self) -> None:
        """At controller start: every region with offerings has an image (NeedsPreparation)."""
        await self.resolve_images()

    async def resolve_images(self, regions: Iterable[str] | None = None) -> dict[str, str]:
        """Region -> AMI for every region jobs may launch in (default: the ``regions`` this
        provider was made with), before the controller serves. A configured image costs no
        call; the others read the SSM parameter once per region (in parallel) and cache it.
        Raises ConfigError, one line naming each region without an image and why."""
        wanted = set(self._launch_regions if regions is None else regions)
        return await self.images.resolve(wanted)

    async def image_for(self, region: str) -> str:
        """The AMI a launch in ``region`` uses now (cached; see ``resolve_images``)."""
        return await self.images.image_for(region)

    async def root_device(self, region: str, image: str, user_image: bool = False) -> RootDevice:
        """The image's root volume (DescribeImages once per image; concurrent launches share
        the call). ``user_image``: the id came from the task, and a wrong one says so."""
        key = (region, image)
        if key in self._roots:
            return self._roots[key]
        async with self._root_locks.setdefault(key, asyncio.Lock()):
            if key not in self._roots:
                try:
                    reply = await self._call("ec2", region, "describe_images",
                                             ImageIds=[image])
                except ProviderError as err:
                    if user_image and str(getattr(err, "aws_code", "")).startswith(
                            "InvalidAMIID."):
                        raise _bad_user_image(image, region, err) from None
                    raise
                images = reply.get("Images", [])
                if not images:
                    where = "resources.image_id" if user_image else "image"
                    raise FatalProviderError(f"{where}: {image} is not an image of {region}")
                self._roots[key] = _root_of(images[0], image)
        return self._roots[key]

    async def check_ports(self, region: str, ports: tuple[str, ...]) -> None:
        """Fail fast unless the security groups a launch in ``region`` gets admit TCP on
        every port: skyjobs never changes security groups, and without configured groups
        (the VPC's default group, which admits only itself) nothing can be verified."""
        if not ports:
            return
        wanted = ", ".join(ports)
        groups = self.config.groups_for(region)
        if not groups:
            raise FatalProviderError(
                f"ports: opening ports ({wanted}) needs a security group that allows them; "
                f"set SKYJOBS_AWS_SECURITY_GROUP_IDS (sg-... or {region}=sg-...) to groups "
                f"admitting TCP {wanted} (skyjobs does not change security groups)")
        reply = await self._call("ec2", region, "describe_security_groups",
                                 GroupIds=sorted(set(groups)))
        ranges = open_tcp_ranges(reply.get("SecurityGroups", []))
        missing = [p for p in ports if not _covered(_port_range(p), ranges)]
        if missing:
            raise FatalProviderError(
                f"ports: security groups {', '.join(sorted(set(groups)))} in {region} do not "
                f"allow TCP {', '.join(missing)}; add inbound rules for them or point "
                "SKYJOBS_AWS_SECURITY_GROUP_IDS at groups that do (skyjobs does not change "
                "security groups)")

    # --- Provider interface ----------------------------------------------------------------

    async def launch(self, req: LaunchRequest) -> list[InstanceInfo]:
        region = req.placement.region
        self._regions.add(region)
        # The task's image for this region, else ours (resolved before any EC2 call).
        image = req.image_id or await self.images.image_for(region)
        # A replay finds the first try's instances; ClientToken covers what describe's
        # eventual consistency may still hide. The image's root volume (only when the task
        # sizes the disk, once per image) and the ports check run alongside that lookup,
        # so they add no round trip in series.
        needs_root = req.disk_size_gb is not None or req.disk_tier is not None
        # return_exceptions: a refused ports check must not leave the lookup running
        # unawaited behind the error (it would outlive the launch call).
        results = await asyncio.gather(
            self._find(region, list(req.instance_ids)),
            self.root_device(region, image, bool(req.image_id)) if needs_root else _none(),
            self.check_ports(region, req.ports), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        existing, root = cast(dict[str, Any], results[0]), cast(RootDevice | None, results[1])
        if root is not None and req.disk_size_gb is not None and root.size_gb is not None \
                and req.disk_size_gb < root.size_gb:
            raise FatalProviderError(
                f"resources.disk_size: {req.disk_size_gb} GB is smaller than the "
                f"{root.size_gb} GB root volume of image {image} in {region}; ask for at "
                f"least {root.size_gb}")
        jobs = [self._launch_one(req, rank, iid, env, existing.get(iid), image, root)
                for rank, (iid, env) in enumerate(zip(req.instance_ids, req.agent_env,
                                                      strict=True))]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return [r for r in results if isinstance(r, InstanceInfo)]

    async def _launch_one(self, req: LaunchRequest, rank: int, iid: str, env: dict[str, str],
                          existing: Any, image: str, root: RootDevice | None) -> InstanceInfo:
        if existing is not None:
            return instance_info(iid, existing)
        region = req.placement.region
        try:
            reply = await self._call("ec2", region, "run_instances",
                                     **self.run_params(req, rank, iid, env, image, root))
        except ProviderError as err:
            if req.image_id and str(getattr(err, "aws_code", "")).startswith("InvalidAMIID."):
                raise _bad_user_image(image, region, err) from None
            if not _is_code(err, "IdempotentParameterMismatch"):
                raise
            # Same token, other parameters (a restarted controller's new URL): launched.
            found = await self._find(region, [iid])
            if iid not in found:
                raise
            return instance_info(iid, found[iid])
        self._where[iid] = region
        return instance_info(iid, reply["Instances"][0])

    def run_params(self, req: LaunchRequest, rank: int, iid: str, env: dict[str, str],
                   image: str | None = None, root: RootDevice | None = None) -> dict[str, Any]:
        p, cfg = req.placement, self.config
        image = (image or req.image_id or self.images.cached(p.region)
                 or cfg.image_for(p.region))
        # The user's labels first: our own tags (which find, fence and sweep instances)
        # always win a clash.
        tags = {**req.labels, **req.tags, TAG_INSTANCE: iid, TAG_RANK: str(rank), "Name": iid,
                "skyjobs-job": str(req.job_id), "skyjobs-attempt-id": str(req.attempt_id)}
        tag_list = [{"Key": k, "Value": v} for k, v in sorted(tags.items())]
        params: dict[str, Any] = {
            "ImageId": image, "InstanceType": p.instance_type,
            "MinCount": 1, "MaxCount": 1, "ClientToken": client_token(iid),
            "UserData": aws_userdata.render(env, package_spec=cfg.package_spec,
                                            agent_user=cfg.agent_user),
            "Placement": {"AvailabilityZone": p.zone},
            "InstanceInitiatedShutdownBehavior": "terminate",
            # IMDSv2 only; hop limit 2 so a container on the node still reaches it.
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled",
                                "HttpPutResponseHopLimit": 2},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tag_list},
                                  {"ResourceType": "volume", "Tags": tag_list}],
        }
        devices = root_block_devices(req, root or self._roots.get((p.region, image)))
        if devices:
            params["BlockDeviceMappings"] = devices
        if p.use_spot:
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        subnet = cfg.subnet_for(p.zone)
        if subnet:
            params["SubnetId"] = subnet
        groups = cfg.groups_for(p.region)
        if groups:
            params["SecurityGroupIds"] = groups
        if cfg.key_name:
            params["KeyName"] = cfg.key_name
        if cfg.instance_profile:
            key = "Arn" if cfg.instance_profile.startswith("arn:") else "Name"
            params["IamInstanceProfile"] = {key: cfg.instance_profile}
        return params

    async def status(self, instance_ids: list[str]) -> dict[str, InstanceInfo]:
        if not instance_ids:
            return {}
        located = await self._locate(list(instance_ids))
        return {i: instance_info(i, located.get(i, (None, None))[1]) for i in instance_ids}

    async def terminate(self, instance_ids: list[str]) -> None:
        if not instance_ids:
            return
        located = await self._locate(list(instance_ids))
        by_region: dict[str, list[str]] = {}
        for region, inst in located.values():
            if inst.get("State", {}).get("Name") != "terminated":
                by_region.setdefault(region, []).append(inst["InstanceId"])
        for region, ec2_ids in sorted(by_region.items()):
            try:
                await self._call("ec2", region, "terminate_instances", InstanceIds=ec2_ids)
            except ProviderError as err:
                if not _is_code(err, "InvalidInstanceID.NotFound"):
                    raise

    def forget(self, instance_ids: list[str]) -> None:
        for i in instance_ids:
            self._where.pop(i, None)

    async def list_owned(self, controller_tag: str) -> list[str]:
        """Our ids of every non-terminated instance tagged with this controller."""
        filters = [{"Name": f"tag:{TAG_CONTROLLER}", "Values": [controller_tag]},
                   {"Name": "instance-state-name", "Values": list(LIVE_STATES)}]
        regions = sorted(self._regions)
        results = await asyncio.gather(*(self._describe(r, filters) for r in regions))
        owned = set()
        for region, instances in zip(regions, results, strict=True):
            for inst in instances:
                ours = tag_value(inst, TAG_INSTANCE)
                if ours:
                    owned.add(ours)
                    self._where[ours] = region
        return sorted(owned)

    async def spot_prices(self, keys: list[PriceKey]) -> list[PriceRow]:
        """The latest spot price of each (region, zone, type) that AWS reports."""
        by_region: dict[str, list[PriceKey]] = {}
        for key in keys:
            by_region.setdefault(key[0], []).append(key)
        regions = sorted(by_region)
        found = await asyncio.gather(*(self._prices_in(r, by_region[r]) for r in regions))
        latest: dict[PriceKey, PriceRow] = {}
        for rows in found:
            for row in rows:
                key = row[:3]
                if key not in latest or row[4] > latest[key][4]:
                    latest[key] = row
        return [latest[k] for k in keys if k in latest]

    async def _prices_in(self, region: str, keys: list[PriceKey]) -> list[PriceRow]:
        wanted = set(keys)
        types = sorted({k[2] for k in keys})
        zones = sorted({k[1] for k in keys})
        rows: list[PriceRow] = []
        token: str | None = None
        while True:
            extra = {"NextToken": token} if token else {}
            # StartTime=now asks for the price in force now, one row per zone and type.
            page = await self._call(
                "ec2", region, "describe_spot_price_history", InstanceTypes=types,
                ProductDescriptions=["Linux/UNIX"], StartTime=datetime.now(UTC),
                Filters=[{"Name": "availability-zone", "Values": zones}], **extra)
            for h in page.get("SpotPriceHistory", []):
                key = (region, h.get("AvailabilityZone", ""), h.get("InstanceType", ""))
                if key in wanted:
                    stamp = h.get("Timestamp")
                    seen = stamp.timestamp() if isinstance(stamp, datetime) else time.time()
                    rows.append((*key, float(h["SpotPrice"]), seen))
            token = page.get("NextToken")
            if not token:
                return rows

    async def check_bucket(self, source: str) -> None:
        """Fail a submit early unless the bucket exists and these credentials can list,
        write and delete in it (a probe object under the task's prefix)."""
        scheme, name, prefix = parse_bucket(source)
        if scheme != "s3" or not name:
            raise SpecError(f"{source}: not an s3://BUCKET[/PATH] source")
        region = self.config.s3_region
        try:
            await self._call("s3", region, "head_bucket", Bucket=name)
            await self._call("s3", region, "list_objects_v2", Bucket=name,
                             Prefix=f"{prefix}/" if prefix else "", MaxKeys=1)
            key = f"{prefix}/" if prefix else ""
            key += f".skyjobs-probe-{secrets.token_hex(6)}"
            await self._call("s3", region, "put_object", Bucket=name, Key=key, Body=b"probe")
            await self._call("s3", region, "delete_object", Bucket=name, Key=key)
        except ProviderError as err:
            if _is_code(err, "404", "NoSuchBucket"):
                raise SpecError(f"{source}: bucket {name} does not exist") from None
            if _is_code(err, "403", "AccessDenied", "AllAccessDisabled"):
                raise SpecError(f"{source}: the controller's AWS credentials cannot read and "
                                f"write bucket {name} ({err})") from None
            raise

    async def close(self) -> None:
        await self._stack.aclose()
        self._clients.clear()


async def _none() -> None:
    return None


def _root_of(image: Mapping[str, Any], image_id: str) -> RootDevice:
    """The root volume from a DescribeImages entry (RootDeviceName, its mapping's size)."""
    if image.get("RootDeviceType") == "instance-store":
        raise FatalProviderError(f"disk_size/disk_tier: image {image_id} boots from instance "
                                 "store, not EBS; its root disk cannot be sized")
    name = image.get("RootDeviceName")
    if not name:
        raise FatalProviderError(f"disk_size/disk_tier: image {image_id} names no root device")
    size = None
    for mapping in image.get("BlockDeviceMappings", []):
        if mapping.get("DeviceName") == name:
            size = mapping.get("Ebs", {}).get("VolumeSize")
    return RootDevice(str(name), int(size) if size else None)


def _bad_user_image(image: str, region: str, err: ProviderError) -> FatalProviderError:
    code = getattr(err, "aws_code", "InvalidAMIID")
    bad = FatalProviderError(f"resources.image_id: {image} is not an image this account can "
                             f"launch in {region} ({code})")
    bad.aws_code = code  # type: ignore[attr-defined]
    return bad


def _rank(inst: Mapping[str, Any]) -> int:
    return STATE_RANK.get(inst.get("State", {}).get("Name", ""), 9)


def _is_code(err: Exception, *codes: str) -> bool:
    """Whether a ProviderError came from one of these AWS error codes."""
    return getattr(err, "aws_code", None) in codes


async def check_bucket(source: str, config: AwsConfig | None = None) -> None:
    """Submit-time bucket check for callers without a provider at hand."""
    provider = AwsProvider(config)
    try:
        await provider.check_bucket(source)
    finally:
        await provider.close()
