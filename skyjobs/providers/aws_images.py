"""Which AMI a node boots in each region, when the operator has not named one.

Order per region: ``SKYJOBS_AWS_IMAGE_ID`` (region-keyed, else global) wins and costs no
call; otherwise the value of a public SSM parameter that AWS keeps pointing at the current
release of an image, by default the Deep Learning Base OSS Nvidia Driver GPU AMI
(Ubuntu 24.04, x86_64): NVIDIA driver, CUDA and Docker preinstalled, python 3.12 (skyjobs
needs 3.11+, which rules out the Ubuntu 22.04 variant and its python 3.10).

The controller resolves every region it may launch in once at start
(:meth:`ImageResolver.resolve`) and refuses to enable aws with one line when a region gets
no image, instead of failing each job at launch. A resolved id is cached per region and
re-read after ``ttl`` seconds, so a long-lived controller follows AWS's image releases; a
failed re-read keeps the previous id (a launch never fails because a refresh did).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog

from skyjobs.exceptions import ConfigError, FatalProviderError, ProviderError

log = structlog.get_logger("skyjobs.aws.images")

# AWS's naming rule for DLAMI parameters: /aws/service/deeplearning/ami/<arch>/<AMI name
# without "deep", "learning" and "ami">/latest/ami-id.
DEFAULT_IMAGE_PARAMETER = ("/aws/service/deeplearning/ami/x86_64/"
                           "base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id")
DEFAULT_TTL = 24 * 3600.0
# A start that cannot reach SSM says so instead of hanging (botocore retries inside this).
RESOLVE_TIMEOUT = 60.0
SETTINGS_HINT = ("set SKYJOBS_AWS_IMAGE_ID (ami-... or REGION=ami-...) or "
                 "SKYJOBS_AWS_IMAGE_SSM_PARAMETER")
# Answers that a retry cannot change: the launch fails at once instead of being retried.
FINAL_CODES = frozenset({"ParameterNotFound", "ParameterVersionNotFound",
                         "AccessDeniedException", "AccessDenied", "UnauthorizedOperation",
                         "ValidationException"})

GetParameter = Callable[[str, str], Awaitable[Any]]  # (region, name) -> get_parameter reply


class NoImage(Exception):
    """No image for a region; ``final`` when a retry cannot help."""

    def __init__(self, reason: str, final: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.final = final


class ImageResolver:
    """Explicit image, else the SSM default, per region; cached with a TTL."""

    def __init__(self, explicit: Callable[[str], str | None], parameter: str,
                 get_parameter: GetParameter, ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._explicit = explicit
        self.parameter = parameter.strip()
        self._get = get_parameter
        self.ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[str, float]] = {}  # region -> (ami, when read)
        self._locks: dict[str, asyncio.Lock] = {}

    def source(self, region: str) -> str:
        """Where this region's image comes from, for logs and ``skyjobs check``."""
        if self._explicit(region):
            return "SKYJOBS_AWS_IMAGE_ID"
        return f"ssm:{self.parameter}" if self.parameter else "none"

    def cached(self, region: str) -> str | None:
        """The image a launch would use now, without any call (explicit or cached)."""
        explicit = self._explicit(region)
        if explicit:
            return explicit
        hit = self._cache.get(region)
        return hit[0] if hit else None

    async def resolve(self, regions: Iterable[str]) -> dict[str, str]:
        """Every region's image, SSM lookups in parallel; ConfigError (one line) naming
        each region that gets none. For the controller's start."""
        wanted = sorted(set(regions))
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                found = await asyncio.gather(*(self._try(r) for r in wanted))
        except TimeoutError:
            found = [self.cached(r) or NoImage(
                f"SSM did not answer within {RESOLVE_TIMEOUT:.0f}s", final=False)
                for r in wanted]
        images: dict[str, str] = {}
        failed: dict[str, list[str]] = {}  # reason -> regions
        for region, got in zip(wanted, found, strict=True):
            if isinstance(got, NoImage):
                failed.setdefault(got.reason, []).append(region)
            else:
                images[region] = got
        if failed:
            raise ConfigError(_refusal(failed))
        for region in wanted:
            log.info("aws image", region=region, image=images[region],
                     source=self.source(region))
        return images

    async def image_for(self, region: str) -> str:
        """The image of a launch: FatalProviderError when none can exist, ProviderError
        (retried later) when SSM could not be asked right now."""
        try:
            return await self._image(region)
        except NoImage as err:
            text = f"no AMI for {region}: {SETTINGS_HINT} ({err.reason})"
            raise (FatalProviderError(text) if err.final else ProviderError(text)) from None

    async def _try(self, region: str) -> str | NoImage:
        try:
            return await self._image(region)
        except NoImage as err:
            return err

    async def _image(self, region: str) -> str:
        explicit = self._explicit(region)
        if explicit:
            return explicit
        if not self._fresh(region):
            lock = self._locks.setdefault(region, asyncio.Lock())
            async with lock:  # one SSM call per region, however many launches wait
                if not self._fresh(region):
                    await self._refresh(region)
        return self._cache[region][0]

    def _fresh(self, region: str) -> bool:
        hit = self._cache.get(region)
        return hit is not None and (self.ttl <= 0 or self._clock() - hit[1] < self.ttl)

    async def _refresh(self, region: str) -> None:
        try:
            self._cache[region] = (await self._read(region), self._clock())
        except NoImage as err:
            if region not in self._cache:
                raise
            # Keep launching the image we had: AWS still serves it by id.
            log.warning("aws image refresh failed; keeping the cached image", region=region,
                        image=self._cache[region][0], reason=err.reason)
            self._cache[region] = (self._cache[region][0], self._clock())

    async def _read(self, region: str) -> str:
        name = self.parameter
        if not name:
            raise NoImage("SKYJOBS_AWS_IMAGE_SSM_PARAMETER is empty: no default image",
                          final=True)
        try:
            reply = await self._get(region, name)
        except ProviderError as err:
            code = getattr(err, "aws_code", None)
            if code in ("ParameterNotFound", "ParameterVersionNotFound"):
                raise NoImage(f"SSM parameter {name} not found in {region}",
                              final=True) from None
            if code and "AccessDenied" in code:
                raise NoImage(f"cannot read SSM parameter {name} (needs ssm:GetParameter): "
                              f"{_one_line(err)}", final=True) from None
            # Credentials and other configuration errors cannot heal by themselves.
            final = isinstance(err, FatalProviderError) or code in FINAL_CODES
            raise NoImage(f"SSM parameter {name}: {_one_line(err)}", final=final) from None
        value = str(reply.get("Parameter", {}).get("Value", "")).strip()
        if not value.startswith("ami-"):
            raise NoImage(f"SSM parameter {name} holds {value[:60]!r}, not an AMI id",
                          final=True)
        return value


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _refusal(failed: dict[str, list[str]]) -> str:
    regions = sorted(r for rs in failed.values() for r in rs)
    if len(failed) == 1:
        reasons = next(iter(failed))
    else:
        reasons = "; ".join(f"{', '.join(rs)}: {reason}" for reason, rs in
                            sorted(failed.items(), key=lambda kv: kv[1]))
    return f"clouds: aws: no image for {', '.join(regions)}: {SETTINGS_HINT} ({reasons})"
