"""GCP list prices from the Cloud Billing Catalog API, for ``skyjobs catalog refresh``.

GCP sets Spot prices per region and changes them at most once a month, so nothing polls
them: an operator refreshes the price list now and then, and this module turns Compute
Engine's SKUs into the $/h of every row of the packaged catalog.

Compute Engine bills a VM by its parts, each a SKU per region and market:

* vCPUs and memory of its machine family: "N1 Predefined Instance Core running in Americas"
  ($ per vCPU-hour, unit ``h``) and "... Ram ..." ($ per GiB-hour, unit ``GiBy.h``); the
  resource group is ``CPU``/``RAM``, or ``N1Standard`` for both parts of N1;
* attached GPUs: resource group ``GPU``, "Nvidia Tesla V100 GPU running in ..." ($ per
  GPU-hour). A2, A3 and G2 carry their GPUs built in, yet bill them the same way: their
  family SKUs price only vCPUs and memory, and the GPUs are the A100, H100 80GB and L4 GPU
  SKUs.

Spot SKUs have usage type ``Preemptible`` (descriptions "Spot Preemptible ..."), on-demand
ones ``OnDemand``; commitments and the rest are skipped. The rules were checked against
the SKU descriptions public fetchers rely on (SkyPilot's ``fetch_gcp.py``); docs/gcp_prices.md
lists them and their limits.

Google libraries are imported only by :func:`fetch_skus`; parsing works on the REST JSON
shape (camelCase dicts) so any input is a price or a skip, never an exception.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from skyjobs.exceptions import ConfigError, FatalProviderError, ProviderError
from skyjobs.pricing.catalog import Offering, refreshed_source

COMPUTE_ENGINE = "services/6F81-5844-456A"  # Compute Engine's service id in the catalog
ENDPOINT_ENV = "SKYJOBS_GCP_BILLING_ENDPOINT"
SOURCE = "Cloud Billing Catalog API"
PAGE_SIZE = 5000  # the API's largest page: all of Compute Engine's SKUs in a few calls
CALL_TIMEOUT_S = 60.0
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
WHERE_WE_LOOK = ("GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth application-default login`, "
                 "or the service account of the GCE VM this runs on")

# How the vCPU and memory SKUs of a machine family name it. A family missing here is not
# guessed at: its rows keep their packaged prices and the refresh says so.
FAMILY_SKU_NAMES = {
    "n1": "N1 Predefined Instance",
    "n2": "N2 Instance",
    "a2": "A2 Instance",
    "a3": "A3 Instance",
    "g2": "G2 Instance",
}
# How GPU SKUs name the catalog's accelerators: "<name> GPU". The 40 GB A100 is plain
# "A100"; the H100 of a3-highgpu is "H100 80GB" (a3-mega's is "H100 80GB Mega"/"Plus").
GPU_SKU_NAMES = {
    "T4": "T4",
    "V100": "V100",
    "P100": "P100",
    "P4": "P4",
    "A100": "A100",
    "A100-80GB": "A100 80GB",
    "L4": "L4",
    "H100": "H100 80GB",
}
# Words of SKUs that bill something other than a plain VM of the family (custom shapes,
# extended memory, sole-tenant nodes, reservations and commitments, DWS/flex/calendar
# capacity, virtual-workstation GPU licences, premiums).
EXCLUDED_WORDS = ("custom", "extended", "sole tenancy", "reserved", "reservation",
                  "commitment", "dws", "flex", "calendar", "virtual workstation", "premium")
SPOT_USAGE = {"OnDemand": False, "Preemptible": True}
PART_GROUPS = {"CPU": "cpu", "RAM": "ram", "N1Standard": None, "GPU": "gpu"}
UNITS = {"cpu": "h", "ram": "GiBy.h", "gpu": "h"}

Part = Literal["cpu", "ram", "gpu"]

_FAMILY_RES = {fam: re.compile(rf"(?<![\w-]){re.escape(name)} (Core|Ram)\b")
               for fam, name in FAMILY_SKU_NAMES.items()}
_GPU_RES = {acc: re.compile(rf"(?<![\w-]){re.escape(name)} GPU\b")
            for acc, name in GPU_SKU_NAMES.items()}
_INT64 = re.compile(r"-?\d{1,19}")


# --- errors: classified by exception type and HTTP status, never by message text -------------

class BillingError(ProviderError):
    """The price list could not be read (unreachable, 5xx, a malformed answer): retry later."""


class BillingCredentialsError(FatalProviderError):
    """No usable Application Default Credentials, or the API rejected them (HTTP 401)."""


class BillingPermissionError(FatalProviderError):
    """The credentials may not read the catalog, or its API is not enabled (HTTP 403)."""


# --- SKUs -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SkuPrice:
    """One SKU that prices a part of a VM: $ per vCPU-hour, GiB-hour or GPU-hour."""

    sku_id: str
    description: str
    part: Part
    name: str  # machine family ("n1") for cpu/ram, catalog accelerator ("V100") for gpu
    spot: bool
    regions: frozenset[str]
    price: float


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> Sequence[Any]:
    return value if isinstance(value, Sequence) and not isinstance(value, str) else ()


def _money(unit_price: Mapping[str, Any]) -> float | None:
    """``units`` (int64, a string in JSON) + ``nanos`` / 1e9, in USD; None if not that."""
    if _str(unit_price.get("currencyCode")) not in (None, "", "USD"):
        return None  # asked for USD; a price in anything else is not comparable
    units, nanos = unit_price.get("units", 0), unit_price.get("nanos", 0)
    if isinstance(units, str) and _INT64.fullmatch(units):
        units = int(units)
    if type(units) is not int or type(nanos) is not int or abs(nanos) > 999_999_999:
        return None  # bool is an int too: type() keeps it out
    price = units + nanos / 1e9
    return price if math.isfinite(price) else None


def _part_and_name(group: str, description: str) -> tuple[Part, str] | None:
    part = PART_GROUPS.get(group, "none")
    if part == "gpu":
        found = [acc for acc, rx in _GPU_RES.items() if rx.search(description)]
        return ("gpu", found[0]) if len(found) == 1 else None
    if part == "none":
        return None
    for family, rx in _FAMILY_RES.items():
        m = rx.search(description)
        if m is None:
            continue
        named: Part = "cpu" if m.group(1) == "Core" else "ram"
        # CPU and RAM groups must agree with the description; N1Standard holds both.
        return (named, family) if part in (None, named) else None
    return None


def parse_sku(sku: Any) -> SkuPrice | None:
    """The price of a part of a VM that a SKU (REST JSON shape) bills, or None to skip it.

    Never raises: the catalog holds tens of thousands of SKUs of every shape, and one odd
    SKU must cost its rows a price, not the refresh."""
    if not isinstance(sku, Mapping):
        return None
    category = _map(sku.get("category"))
    spot = SPOT_USAGE.get(_str(category.get("usageType")) or "")
    group, description = _str(category.get("resourceGroup")), _str(sku.get("description"))
    if category.get("resourceFamily") != "Compute" or spot is None or group is None \
            or description is None:
        return None
    if any(word in description.lower() for word in EXCLUDED_WORDS):
        return None
    what = _part_and_name(group, description)
    if what is None:
        return None
    part, name = what
    regions = frozenset(r for r in _list(sku.get("serviceRegions")) if isinstance(r, str) and r)
    # The current price is the first pricing info (the API gives only the current one
    # unless asked for history).
    infos = _list(sku.get("pricingInfo"))
    pricing = _map(_map(infos[0] if infos else None).get("pricingExpression"))
    if not regions or _str(pricing.get("usageUnit")) != UNITS[part]:
        return None  # e.g. memory priced per GB, not GiB: never silently mixed
    # The last tier is the rate at volume; a VM SKU has one tier, and a free first tier
    # must never price a VM at $0.
    tiers = _list(pricing.get("tieredRates"))
    price = _money(_map(_map(tiers[-1] if tiers else None).get("unitPrice")))
    if price is None or price <= 0:
        return None
    return SkuPrice(_str(sku.get("skuId")) or "", description, part, name, spot, regions,
                    price)


class Unpriced(Exception):
    """Why one row cannot be priced from the SKUs (it keeps its packaged price)."""


class PriceList:
    """The parsed SKUs, by (part, family or accelerator, spot)."""

    def __init__(self, skus: Iterable[SkuPrice]) -> None:
        self._by: dict[tuple[str, str, bool], list[SkuPrice]] = defaultdict(list)
        for s in skus:
            self._by[(s.part, s.name, s.spot)].append(s)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by.values())

    def unit_price(self, part: Part, name: str, spot: bool, region: str) -> float:
        found = [s for s in self._by.get((part, name, spot), ()) if region in s.regions]
        what = _what(part, name, spot)
        if not found:
            raise Unpriced(f"no {what} SKU in {region}")
        # A SKU of this region alone beats one of a multi-region ("Americas") list.
        narrowest = min(len(s.regions) for s in found)
        prices = {s.price for s in found if len(s.regions) == narrowest}
        if len(prices) > 1:
            ids = ", ".join(sorted({s.sku_id for s in found if len(s.regions) == narrowest}))
            raise Unpriced(f"{len(prices)} {what} SKUs in {region} disagree ({ids})")
        return prices.pop()


def _what(part: Part, name: str, spot: bool) -> str:
    market = "Spot" if spot else "on-demand"
    if part == "gpu":
        return f"{market} {GPU_SKU_NAMES.get(name, name)} GPU"
    return f"{market} {FAMILY_SKU_NAMES.get(name, name)} {'Core' if part == 'cpu' else 'Ram'}"


def price_offering(o: Offering, prices: PriceList) -> tuple[float, float]:
    """(on-demand, spot) $/h of one catalog row, or :class:`Unpriced`."""
    family = o.instance_type.split("-", 1)[0]
    if family not in FAMILY_SKU_NAMES:
        raise Unpriced(f"machine family {family!r} has no SKU mapping")
    if o.accelerator and o.accelerator not in GPU_SKU_NAMES:
        raise Unpriced(f"accelerator {o.accelerator!r} has no SKU mapping")
    out = []
    for spot in (False, True):
        total = (o.vcpus * prices.unit_price("cpu", family, spot, o.region)
                 + o.memory_gb * prices.unit_price("ram", family, spot, o.region))
        if o.accelerator and o.accelerator_count:
            total += o.accelerator_count * prices.unit_price("gpu", o.accelerator, spot,
                                                             o.region)
        out.append(round(total, 6))
    ondemand, spot_price = out
    if not 0 < spot_price < ondemand:
        raise Unpriced(f"Spot ${spot_price:.4f}/h is not below on-demand ${ondemand:.4f}/h")
    return ondemand, spot_price


@dataclass
class Repriced:
    """What a refresh found: rows priced anew (with their packaged twin), rows kept."""

    at: datetime
    priced: list[tuple[Offering, Offering]] = field(default_factory=list)
    kept: list[tuple[Offering, str]] = field(default_factory=list)
    skus_read: int = 0
    skus_used: int = 0

    def offerings(self) -> list[Offering]:
        return [new for _, new in self.priced]


def reprice(offerings: Iterable[Offering], skus: Iterable[Any], at: datetime) -> Repriced:
    """Price every row from the SKUs; a row that cannot be priced is kept with its reason."""
    skus = list(skus)
    parsed = [p for p in map(parse_sku, skus) if p is not None]
    prices = PriceList(parsed)
    out = Repriced(at.astimezone(UTC), skus_read=len(skus), skus_used=len(parsed))
    source = refreshed_source(SOURCE, out.at)
    for o in offerings:
        try:
            ondemand, spot = price_offering(o, prices)
        except Unpriced as why:
            out.kept.append((o, str(why)))
            continue
        out.priced.append((o, replace(o, ondemand_price=ondemand, spot_price=spot,
                                      price_date=out.at.date().isoformat(), source=source,
                                      refreshed_at=out.at.timestamp())))
    return out


# --- the API ---------------------------------------------------------------------------------

def _endpoint(endpoint: str | None) -> tuple[str | None, bool]:
    """(endpoint, anonymous). Plain HTTP is for a fake on loopback only, and gets no
    credentials: a bearer token must never cross a network in clear text."""
    endpoint = (endpoint if endpoint is not None else os.environ.get(ENDPOINT_ENV, "")).strip()
    if not endpoint:
        return None, False
    parts = urlsplit(endpoint)
    if parts.scheme == "http":
        if parts.hostname not in LOOPBACK:
            raise ConfigError(f"{ENDPOINT_ENV}: plain http only on loopback (a test fake); "
                              f"use https for {parts.hostname}")
        return endpoint, True
    if parts.scheme not in ("https", ""):
        raise ConfigError(f"{ENDPOINT_ENV}: {endpoint!r} is not an http(s) URL")
    return endpoint, False


def fetch_skus(endpoint: str | None = None) -> list[dict[str, Any]]:
    """Every Compute Engine SKU that may price a VM part, as REST JSON dicts.

    Credentials come from Application Default Credentials and are never printed. Errors are
    :class:`BillingCredentialsError`, :class:`BillingPermissionError` or
    :class:`BillingError`, each with a one-line message."""
    url, anonymous = _endpoint(endpoint)
    try:
        import google.auth
        import requests
        from google.api_core import exceptions as api
        from google.api_core.client_options import ClientOptions
        from google.auth import exceptions as auth
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import billing_v1
        from google.protobuf import json_format
    except ImportError as err:
        raise BillingError(f"the gcp extra is not installed (pip install 'skyjobs[gcp]'): "
                           f"{err}") from None
    where = url or "cloudbilling.googleapis.com"
    try:
        if anonymous:
            credentials: Any = AnonymousCredentials()
        else:
            credentials, _project = google.auth.default(scopes=list(SCOPES))
        # REST, also in production: the transport the tests' fake speaks is the one used.
        client = billing_v1.CloudCatalogClient(
            credentials=credentials, transport="rest",
            client_options=ClientOptions(api_endpoint=url) if url else None)
        with client:
            pages = client.list_skus(request={"parent": COMPUTE_ENGINE, "page_size": PAGE_SIZE,
                                              "currency_code": "USD"},
                                     timeout=CALL_TIMEOUT_S)
            return [billing_v1.Sku.to_dict(s, preserving_proto_field_name=False)
                    for s in pages if _may_price(s)]
    except auth.InvalidOperation:
        # The session refreshes credentials on HTTP 401 and anonymous ones cannot be: only
        # a plain-HTTP loopback endpoint (which gets no credentials) ends here.
        raise BillingCredentialsError(f"{where} answered HTTP 401: it wants credentials, and "
                                      "a plain-HTTP loopback endpoint is sent none") from None
    except auth.DefaultCredentialsError:
        raise BillingCredentialsError(f"no Google credentials found ({WHERE_WE_LOOK})"
                                      ) from None
    except auth.RefreshError:
        raise BillingCredentialsError("the Google credentials could not be refreshed (expired"
                                      " or revoked? `gcloud auth application-default login`)"
                                      ) from None
    except auth.TransportError as err:
        raise BillingCredentialsError(f"cannot reach Google's token service "
                                      f"({type(err).__name__})") from None
    except api.Unauthorized as err:  # 401
        raise BillingCredentialsError(f"{where} rejected the credentials (HTTP {err.code}"
                                      f"{_detail(err)})") from None
    except api.Forbidden as err:  # 403: no permission, or the API is not enabled
        raise BillingPermissionError(
            f"{where} refused to list Compute Engine SKUs (HTTP {err.code}{_detail(err)}); "
            "enable the Cloud Billing API (cloudbilling.googleapis.com) in the credentials' "
            "project") from None
    except api.GoogleAPIError as err:
        code = getattr(err, "code", None)
        raise BillingError(f"{where} failed (HTTP {code}{_detail(err)})" if code else
                           f"{where} failed ({type(err).__name__})") from None
    except requests.RequestException as err:
        raise BillingError(f"cannot reach {where} ({type(err).__name__})") from None
    except json_format.Error:
        raise BillingError(f"{where} answered something that is not a SKU list") from None


def _may_price(sku: Any) -> bool:
    # A cheap look before the proto-to-dict conversion: most SKUs are disks, network,
    # licences and commitments.
    c = sku.category
    return (c.resource_family == "Compute" and c.usage_type in SPOT_USAGE
            and c.resource_group in PART_GROUPS)


def _detail(err: Any) -> str:
    """``, REASON`` from the error's ErrorInfo (SERVICE_DISABLED, IAM_PERMISSION_DENIED...):
    structured, short and enough to act on; the message repeats the URL and free text."""
    reason = getattr(err, "reason", None)
    return f", {reason}" if isinstance(reason, str) and reason else ""
