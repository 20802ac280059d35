"""A small fake of the Cloud Billing Catalog REST API: ``GET /v1/services/{id}/skus``.

An aiohttp app on 127.0.0.1 (port 0) served from a background thread with its own event loop,
so in-process tests and subprocesses (the CLI) can both use it. Point the real client at it::

    CloudCatalogClient(transport="rest", credentials=AnonymousCredentials(),
                       client_options={"api_endpoint": fake.url})

or set ``SKYJOBS_GCP_BILLING_ENDPOINT=fake.url`` for ``skyjobs catalog refresh``.

What google-cloud-billing 1.21's REST client sends (found by pointing it at a recording
server): ``GET /v1/services/6F81-5844-456A/skus?pageSize=N&currencyCode=USD
&%24alt=json%3Benum-encoding%3Dint``, then the same with ``&pageToken=T`` while the previous
page's ``nextPageToken`` is not empty; header ``x-goog-request-params: parent=services/...``;
no ``Authorization`` with AnonymousCredentials. Answers are camelCase JSON, int64 ``units``
as strings; errors are Google's JSON error shape, mapped by HTTP status by google-api-core
(403 -> ``PermissionDenied``, a ``Forbidden``).

The SKUs below are realistic in shape and description (the patterns Compute Engine uses;
prices illustrative): on-demand VM parts per multi-region ("running in Americas"), Spot per
region ("Spot Preemptible ... running in Iowa"), and the SKUs a refresh must skip
(commitments, custom and extended shapes, sole tenancy, N2D, A100 80GB, H100 Mega, virtual
workstations, DWS, disks, egress). Two deliberate gaps: no Spot H100 in europe-west4, and
two disagreeing Spot T4 SKUs in us-east1.

Hooks (thread-safe): ``fail(status, after_pages=0)``, ``requests``, ``max_page_size``,
``skus``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
from collections.abc import Iterable
from typing import Any

from aiohttp import web

SERVICE = "6F81-5844-456A"
SERVICE_NAME = f"services/{SERVICE}"
AMERICAS = ("us-central1", "us-east1", "us-west1")
REGION_NAMES = {"us-central1": "Iowa", "us-east1": "South Carolina", "us-west1": "Oregon",
                "europe-west4": "Netherlands"}
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                503: "UNAVAILABLE"}

# $ per vCPU-hour ("Core") and per GiB-hour ("Ram") of each family, on-demand, by location.
FAMILIES = {"n1": "N1 Predefined Instance", "n2": "N2 Instance", "a2": "A2 Instance",
            "a3": "A3 Instance", "g2": "G2 Instance"}
ONDEMAND_VM = {  # family: {location: (core, ram)}
    "n1": {"Americas": (0.031611, 0.004237), "Netherlands": (0.034773, 0.004661)},
    "n2": {"Americas": (0.031611, 0.004237), "Netherlands": (0.034773, 0.004661)},
    "a2": {"Americas": (0.031611, 0.004237), "Netherlands": (0.034773, 0.004661)},
    "a3": {"Americas": (0.029722, 0.002603), "Netherlands": (0.032694, 0.002863)},
    "g2": {"Americas": (0.024989, 0.002928), "Netherlands": (0.027488, 0.003221)},
}
GPUS = {"V100": "Nvidia Tesla V100", "T4": "Nvidia Tesla T4", "A100": "Nvidia Tesla A100",
        "L4": "Nvidia L4", "H100": "Nvidia H100 80GB"}
ONDEMAND_GPU = {  # accelerator: {location: $ per GPU-hour}
    "V100": {"Americas": 2.48, "Netherlands": 2.55},
    "T4": {"Americas": 0.35, "Netherlands": 0.41},
    "A100": {"Americas": 2.933908, "Netherlands": 3.226608},
    "L4": {"Americas": 0.56, "Netherlands": 0.616},
    "H100": {"Americas": 9.649376, "Netherlands": 10.614314},
}
# Spot: per region, a base price times the region's factor.
SPOT_VM = {"n1": (0.00698, 0.000935), "n2": (0.00765, 0.001025), "a2": (0.009483, 0.001271),
           "a3": (0.00981, 0.000859), "g2": (0.009996, 0.001171)}
SPOT_GPU = {"V100": 0.744, "T4": 0.11, "A100": 0.880172, "L4": 0.224, "H100": 3.1}
SPOT_FACTOR = {"us-central1": 1.0, "us-east1": 1.03, "us-west1": 0.97, "europe-west4": 1.1}
MISSING_SPOT_GPU = {("H100", "europe-west4")}
T4_SPOT_US_EAST1_TWIN = 0.115  # a second Spot T4 SKU in us-east1 with another price


def spot_vm(family: str, region: str) -> tuple[float, float]:
    core, ram = SPOT_VM[family]
    f = SPOT_FACTOR[region]
    return round(core * f, 9), round(ram * f, 9)


def spot_gpu(accelerator: str, region: str) -> float:
    return round(SPOT_GPU[accelerator] * SPOT_FACTOR[region], 9)


def location_regions(location: str) -> tuple[str, ...]:
    return AMERICAS if location == "Americas" else ("europe-west4",)


def usd(price: float) -> dict[str, Any]:
    units = int(price)
    # int64 units travel as a JSON string, nanos (int32) as a number, as the real API.
    return {"currencyCode": "USD", "units": str(units), "nanos": round((price - units) * 1e9)}


def sku(description: str, group: str, usage: str, regions: Iterable[str], unit: str,
        price: float, family: str = "Compute", tiers: list[float] | None = None
        ) -> dict[str, Any]:
    """One SKU in the API's JSON shape."""
    sku_id = hashlib.sha1(f"{description}/{usage}/{price}".encode()).hexdigest().upper()
    sku_id = f"{sku_id[:4]}-{sku_id[4:8]}-{sku_id[8:12]}"
    regions = list(regions)
    unit_desc = {"h": ("hour", "s", "second", 3600),
                 "GiBy.h": ("gibibyte hour", "By.s", "byte second", 3865470566400)}.get(
        unit, ("month", "By.s", "byte second", 2.8759101014016e15))
    rates = [{"startUsageAmount": i * 100, "unitPrice": usd(p)}
             for i, p in enumerate(tiers or [price])]
    return {
        "name": f"{SERVICE_NAME}/skus/{sku_id}",
        "skuId": sku_id,
        "description": description,
        "category": {"serviceDisplayName": "Compute Engine", "resourceFamily": family,
                     "resourceGroup": group, "usageType": usage},
        "serviceRegions": regions,
        "pricingInfo": [{
            "summary": "",
            "pricingExpression": {
                "usageUnit": unit, "displayQuantity": 1, "tieredRates": rates,
                "usageUnitDescription": unit_desc[0], "baseUnit": unit_desc[1],
                "baseUnitDescription": unit_desc[2], "baseUnitConversionFactor": unit_desc[3],
            },
            "currencyConversionRate": 1,
            "effectiveTime": "2026-06-01T07:00:00.000Z",
        }],
        "serviceProviderName": "Google",
        "geoTaxonomy": {"type": "MULTI_REGIONAL" if len(regions) > 1 else "REGIONAL",
                        "regions": regions},
    }


def realistic_skus() -> list[dict[str, Any]]:
    """VM parts first, then noise, then GPUs last: pricing a GPU row needs every page."""
    out = []
    for fam, name in FAMILIES.items():
        # N1 bills both parts under the N1Standard group; newer families use CPU and RAM.
        core_group, ram_group = ("N1Standard", "N1Standard") if fam == "n1" else ("CPU", "RAM")
        for loc, (core, ram) in ONDEMAND_VM[fam].items():
            out.append(sku(f"{name} Core running in {loc}", core_group, "OnDemand",
                           location_regions(loc), "h", core))
            out.append(sku(f"{name} Ram running in {loc}", ram_group, "OnDemand",
                           location_regions(loc), "GiBy.h", ram))
        for region, where in REGION_NAMES.items():
            core, ram = spot_vm(fam, region)
            out.append(sku(f"Spot Preemptible {name} Core running in {where}", core_group,
                           "Preemptible", [region], "h", core))
            out.append(sku(f"Spot Preemptible {name} Ram running in {where}", ram_group,
                           "Preemptible", [region], "GiBy.h", ram))
    out += noise_skus()
    for acc, name in GPUS.items():
        for loc, price in ONDEMAND_GPU[acc].items():
            out.append(sku(f"{name} GPU running in {loc}", "GPU", "OnDemand",
                           location_regions(loc), "h", price))
        for region, where in REGION_NAMES.items():
            if (acc, region) in MISSING_SPOT_GPU:
                continue
            out.append(sku(f"Spot Preemptible {name} GPU running in {where}", "GPU",
                           "Preemptible", [region], "h", spot_gpu(acc, region)))
    out.append(sku("Spot Preemptible Nvidia Tesla T4 GPU running in South Carolina", "GPU",
                   "Preemptible", ["us-east1"], "h", T4_SPOT_US_EAST1_TWIN))
    return out


def noise_skus() -> list[dict[str, Any]]:
    """SKUs that must never price a catalog row (each would, if matched, change a price)."""
    am = AMERICAS
    return [
        sku("Commitment v1: N1 Predefined Instance Core in Americas for 1 Year",
            "N1Standard", "Commit1Yr", am, "h", 0.019915),
        sku("Commitment v1: Nvidia Tesla V100 GPU in Americas for 3 Year", "GPU",
            "Commit3Yr", am, "h", 1.116),
        sku("N2 Custom Instance Core running in Americas", "CPU", "OnDemand", am, "h",
            0.033191),
        sku("N2 Custom Extended Instance Ram running in Americas", "RAM", "OnDemand", am,
            "GiBy.h", 0.009550),
        sku("N2 Sole Tenancy Instance Core running in Americas", "CPU", "OnDemand", am, "h",
            0.034773),
        sku("N2D AMD Instance Core running in Americas", "CPU", "OnDemand", am, "h",
            0.027502),
        sku("Reserved A2 Instance Core running in Americas", "CPU", "OnDemand", am, "h",
            0.021),
        sku("DWS Defined Duration Nvidia H100 80GB GPU running in Americas", "GPU",
            "OnDemand", am, "h", 5.5),
        sku("Nvidia A100 80GB GPU running in Americas", "GPU", "OnDemand", am, "h", 3.92),
        sku("Nvidia H100 80GB Mega GPU running in Americas", "GPU", "OnDemand", am, "h",
            11.06),
        sku("Nvidia Tesla T4 Virtual Workstation GPU running in Americas", "GPU",
            "OnDemand", am, "h", 0.55),
        # A SKU priced per GB-month would be memory at the wrong unit: skipped, not mixed.
        sku("G2 Instance Ram running in Americas (monthly)", "RAM", "OnDemand", am,
            "GiBy.mo", 2.1),
        sku("Storage PD Capacity", "PDStandard", "OnDemand", am, "GiBy.mo", 0.04,
            family="Storage"),
        sku("Network Internet Egress from Americas to Americas", "PremiumInternetEgress",
            "OnDemand", am, "GiBy", 0.12, family="Network", tiers=[0.0, 0.12, 0.11]),
        sku("Licensing Fee for Ubuntu Pro on VM with 8 VCPU", "License", "OnDemand", am,
            "h", 0.0014, family="License"),
    ]


def error_body(status: int, message: str, reason: str | None = None) -> dict[str, Any]:
    """Google's JSON error shape (google.rpc.Status with an ErrorInfo detail)."""
    body: dict[str, Any] = {"code": status, "message": message,
                            "status": STATUS_NAMES.get(status, "UNKNOWN")}
    if reason:
        body["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": reason, "domain": "googleapis.com",
                            "metadata": {"service": "cloudbilling.googleapis.com",
                                         "consumer": "projects/123456789"}}]
    return {"error": body}


FAIL_TEXT = {
    401: ("Request had invalid authentication credentials.", "ACCESS_TOKEN_TYPE_UNSUPPORTED"),
    403: ("Cloud Billing API has not been used in project 123456789 before or it is "
          "disabled.", "SERVICE_DISABLED"),
}


class BillingFake:
    """The fake server; ``start()`` binds it, ``url`` is its endpoint."""

    def __init__(self, skus: list[dict[str, Any]] | None = None,
                 max_page_size: int = 10) -> None:
        self.skus = realistic_skus() if skus is None else skus
        # The real API pages at up to 5000; a small page makes the tests follow tokens.
        self.max_page_size = max_page_size
        self.requests: list[dict[str, Any]] = []
        self._fail: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="billing-fake")
        self._runner: web.AppRunner | None = None
        self.url = ""

    # --- hooks -----------------------------------------------------------------------------

    def fail(self, status: int | None, after_pages: int = 0) -> None:
        """Answer every SKU request after the first ``after_pages`` with this HTTP error
        (None: answer normally again)."""
        with self._lock:
            self._fail = None if status is None else (status, after_pages)

    def sku_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["path"].endswith("/skus")]

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> BillingFake:
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_get("/v1/services/{service}/skus", self._skus)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return int(self._runner.addresses[0][1])

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # --- the API ---------------------------------------------------------------------------

    async def _skus(self, request: web.Request) -> web.Response:
        q = request.query
        with self._lock:
            served = sum(1 for r in self.requests if r["path"].endswith("/skus"))
            self.requests.append({"path": request.path, "query": dict(q),
                                  "headers": dict(request.headers)})
            fail = self._fail
        if fail is not None and served >= fail[1]:
            status = fail[0]
            message, reason = FAIL_TEXT.get(status, ("The service is unavailable.", None))
            return _json(error_body(status, message, reason), status)
        if request.match_info["service"] != SERVICE:
            return _json(error_body(404, "Service not found."), 404)
        if q.get("currencyCode", "USD") != "USD":
            return _json(error_body(400, "This fake prices in USD only."), 400)
        try:
            size = int(q.get("pageSize", "5000"))
            start = _offset(q.get("pageToken", ""))
        except ValueError:
            return _json(error_body(400, "Invalid page size or page token."), 400)
        if size < 0 or not 0 <= start <= len(self.skus):
            return _json(error_body(400, "Invalid page size or page token."), 400)
        size = min(size or 5000, 5000, self.max_page_size)
        page = self.skus[start:start + size]
        end = start + len(page)
        return _json({"skus": page,
                      "nextPageToken": _token(end) if end < len(self.skus) else ""})


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _offset(token: str) -> int:
    if not token:
        return 0
    try:
        kind, _, n = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        raise ValueError(token) from None
    if kind != "offset":
        raise ValueError(token)
    return int(n)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body),
                        content_type="application/json", charset="UTF-8")
