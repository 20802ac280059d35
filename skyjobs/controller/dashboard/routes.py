"""The dashboard's pages, live fragments, JSON feeds and its one guard middleware."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web

from skyjobs.controller import store as st
from skyjobs.controller.dashboard import data
from skyjobs.controller.dashboard.auth import COOKIE, SESSION_TTL_S, Sessions
from skyjobs.exceptions import IllegalTransitionError, NotFoundError

if TYPE_CHECKING:
    from skyjobs.controller.services import Services

log = structlog.get_logger("skyjobs.dashboard")

CTL: web.AppKey[Services] = web.AppKey("dashboard_services")
SESSIONS: web.AppKey[Sessions] = web.AppKey("dashboard_sessions", Sessions)
JINJA: web.AppKey[jinja2.Environment] = web.AppKey("dashboard_jinja", jinja2.Environment)
NONCE: web.RequestKey[str] = web.RequestKey("dashboard_nonce", str)
STATIC = "dashboard-static"
PUBLIC = frozenset({"/ui/login"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_NAME_FILTER = 200
POLL_S = 2  # how often a page's live part is fetched again

# The pages run only our own scripts (no inline script, no eval); ECharts and htmx set
# element styles, hence style-src 'unsafe-inline'. No page may be framed (clickjacking of the
# cancel button).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' "
                               "'unsafe-inline'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _is_dashboard(path: str) -> bool:
    return path == "/" or path == "/ui" or path.startswith("/ui/")


@web.middleware
async def dashboard_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every dashboard request but the login page and static files needs a session; every
    state-changing one its CSRF token. Errors become HTML pages, not the API's JSON."""
    path = request.path
    if not _is_dashboard(path):
        return await handler(request)
    if not (path in PUBLIC or path.startswith("/ui/static/")):
        sessions = request.app[SESSIONS]
        nonce = sessions.check(request.cookies.get(COOKIE))
        if nonce is None:
            return _login_needed(request)
        request[NONCE] = nonce
        if request.method not in ("GET", "HEAD") and not await _csrf_ok(request, nonce):
            return await _page(request, "error.html", {
                "title": "Refused", "message": "This form is stale or did not come from the "
                "dashboard (missing or wrong CSRF token). Reload the page and try again."},
                status=403)
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    except NotFoundError as err:
        resp = await _page(request, "error.html", {"title": "Not found", "message": str(err)},
                           status=404)
    except Exception:  # noqa: BLE001 - a bug shows an error page, never a traceback
        log.exception("dashboard request failed", path=path)
        resp = await _page(request, "error.html", {
            "title": "Error", "message": "Internal error (see the controller log)."}, status=500)
    resp.headers.update(SECURITY_HEADERS)
    if not path.startswith("/ui/static/"):
        # Pages show live state and a CSRF token: never from a cache.
        resp.headers["Cache-Control"] = "no-store"
    elif "v" in request.query:
        # Static URLs carry their content hash (append_version): a new file is a new URL.
        resp.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    return resp


def _login_needed(request: web.Request) -> web.StreamResponse:
    target = request.path_qs if request.method == "GET" else "/ui/"
    login = "/ui/login?" + urlencode({"next": target})
    if request.headers.get("HX-Request"):
        # A live fragment after the session ended: htmx follows HX-Redirect to the login.
        return web.Response(status=401, text="login needed", headers={"HX-Redirect": login,
                                                                      **SECURITY_HEADERS})
    if request.path.endswith(".json"):
        return web.json_response({"error": "login needed"}, status=401,
                                 headers=SECURITY_HEADERS)
    if request.method != "GET":
        return web.Response(status=401, text="login needed", headers=SECURITY_HEADERS)
    raise web.HTTPSeeOther(login, headers=SECURITY_HEADERS)


def _same_origin(request: web.Request) -> bool:
    """A browser names the page a POST came from; when it does, it must be this site."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    return origin == f"{request.scheme}://{request.host}"


async def _csrf_ok(request: web.Request, nonce: str) -> bool:
    if not _same_origin(request):
        return False
    given = request.headers.get("X-CSRF-Token")
    if given is None:
        form = await request.post()
        value = form.get("csrf")
        given = value if isinstance(value, str) else None
    return request.app[SESSIONS].csrf_ok(nonce, given)


def _safe_next(value: str | None) -> str:
    """Only a dashboard path: never an open redirect to another site ("//evil", "/\\evil")."""
    if value and value.startswith("/ui/") and not value.startswith(("//", "/\\")) \
            and "\\" not in value:
        return value
    return "/ui/"


# --- rendering ----------------------------------------------------------------------------

async def _page(request: web.Request, template: str, context: dict[str, Any],
                status: int = 200) -> web.Response:
    nonce = request.get(NONCE)
    base = {"csrf": request.app[SESSIONS].csrf(nonce) if nonce else "",
            "logged_in": nonce is not None, "path": request.path, "poll_s": POLL_S,
            "static": lambda name: str(request.app.router[STATIC].url_for(filename=name))}
    return aiohttp_jinja2.render_template(template, request, {**base, **context},
                                          app_key=JINJA, status=status)


def _ts(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def _money(value: float | None) -> str:
    if value is None:
        return "-"
    sign, v = ("-" if value < 0 else ""), abs(value)
    if v >= 100:
        return f"{sign}${v:,.0f}"
    if v >= 1:
        return f"{sign}${v:,.2f}"
    if v >= 0.01 or v < 1e-8:
        return f"{sign}${v:.4f}"
    # Short jobs cost fractions of a cent: three significant digits, never 2.5e-05.
    return f"{sign}${v:.{2 - math.floor(math.log10(v))}f}"


def _pct(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def _ago(value: float | None) -> str:
    return "-" if value is None else f"{_duration(time.time() - value)} ago"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


def add_filters(env: jinja2.Environment) -> None:
    env.filters.update(ts=_ts, duration=_duration, money=_money, pct=_pct, ago=_ago,
                       bytes=_bytes)
    env.globals["state_class"] = lambda s: f"state-{str(s).lower().replace('_', '-')}"


# --- login --------------------------------------------------------------------------------

async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/")


async def login_form(request: web.Request) -> web.Response:
    return await _page(request, "login.html", {
        "next": _safe_next(request.query.get("next")), "error": None})


async def login(request: web.Request) -> web.StreamResponse:
    sessions = request.app[SESSIONS]
    form = await request.post()
    token, nxt = form.get("token"), _safe_next(str(form.get("next") or ""))
    if not _same_origin(request) or not isinstance(token, str) or not sessions.token_ok(token):
        # Slows down guessing (the token is 256 random bits; this is for the logs' sake).
        await asyncio.sleep(0.5)
        log.warning("dashboard login refused", peer=request.remote)
        return await _page(request, "login.html", {
            "next": nxt, "error": "That is not this controller's token."}, status=401)
    resp = web.HTTPSeeOther(nxt)
    resp.set_cookie(COOKIE, sessions.issue(), max_age=int(SESSION_TTL_S), path="/",
                    httponly=True, samesite="Strict", secure=request.secure)
    raise resp


async def logout(request: web.Request) -> web.StreamResponse:
    cookie = request.cookies.get(COOKIE)
    if cookie:
        request.app[SESSIONS].revoke(cookie)
    resp = web.HTTPSeeOther("/ui/login")
    resp.del_cookie(COOKIE, path="/")
    raise resp


# --- jobs ---------------------------------------------------------------------------------

def _job_filters(request: web.Request) -> dict[str, Any]:
    q = request.query
    raw = q.get("status", "").strip().upper()
    statuses: list[str]
    if raw == "LIVE":
        statuses = sorted(str(s) for s in st.LIVE)
    else:
        statuses = [s for s in (x.strip() for x in raw.split(",")) if s in st.ALL_STATES]
    name = q.get("name", "").strip()[:MAX_NAME_FILTER]
    per_page = _small_int(q.get("per"), 50)
    if per_page not in data.PAGE_SIZES:
        per_page = 50
    page = max(1, _small_int(q.get("page"), 1))
    status_value = "LIVE" if raw == "LIVE" else ",".join(statuses)
    return {"statuses": statuses, "status": status_value, "name": name, "page": page,
            "per_page": per_page}


def _small_int(value: str | None, default: int) -> int:
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 9:
        return default
    return int(value)


async def _jobs_context(request: web.Request) -> dict[str, Any]:
    f = _job_filters(request)
    page = await data.jobs_page(request.app[CTL], f["statuses"], f["name"], f["page"],
                                f["per_page"])
    if f["page"] > page["pages"]:  # filtered down below the page we were on
        f["page"] = page["pages"]
        page = await data.jobs_page(request.app[CTL], f["statuses"], f["name"], f["page"],
                                    f["per_page"])

    def link(**change: Any) -> str:
        params = {"status": f["status"], "name": f["name"], "page": f["page"],
                  "per": f["per_page"], **change}
        return urlencode({k: v for k, v in params.items() if v not in ("", None)})

    return {**page, "filters": f, "link": link, "states": [str(s) for s in st.JobStatus]}


async def jobs(request: web.Request) -> web.Response:
    return await _page(request, "jobs.html", await _jobs_context(request))


async def jobs_table(request: web.Request) -> web.Response:
    return await _page(request, "_jobs_table.html", await _jobs_context(request))


def _job_id(request: web.Request) -> int:
    value = request.match_info["job"]
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise NotFoundError(f"no job {value[:40]!r}")
    return int(value)


async def job(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    detail = await data.job_detail(ctl, _job_id(request))
    return await _page(request, "job.html", {
        "job": detail, "task_yaml": data.task_yaml(detail),
        "events": await data.events(ctl, detail["id"])})


async def job_summary(request: web.Request) -> web.Response:
    detail = await data.job_detail(request.app[CTL], _job_id(request))
    return await _page(request, "_job_summary.html", {"job": detail})


async def job_events(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    detail = await data.job_detail(ctl, _job_id(request))
    return await _page(request, "_job_events.html", {
        "job": detail, "events": await data.events(ctl, detail["id"])})


async def job_timeline(request: web.Request) -> web.Response:
    return web.json_response(await data.timeline(request.app[CTL], _job_id(request)))


async def job_logs(request: web.Request) -> web.Response:
    ctl = request.app[CTL]
    job_ = await ctl.store.call(ctl.store.sync.get_job, _job_id(request))
    q = request.query
    attempt_n = _small_int(q.get("attempt"), job_.attempt_count)
    rank = _small_int(q.get("rank"), 0)
    offset = _small_int(q.get("offset"), -1) if "offset" in q else -1
    chunk = await data.read_log(ctl, job_, attempt_n, rank, None if offset < 0 else offset)
    return web.json_response(chunk)


async def cancel_job(request: web.Request) -> web.StreamResponse:
    """The API's cancel (POST /api/v1/cancel) for one job (``Services.cancel``)."""
    ctl = request.app[CTL]
    job_id = _job_id(request)
    try:
        await ctl.cancel(job_id, "cancel requested (dashboard)")
    except IllegalTransitionError as err:
        return await _page(request, "error.html", {
            "title": "Not cancelled", "message": str(err),
            "back": f"/ui/jobs/{job_id}"}, status=409)
    log.info("job cancel requested from the dashboard", job_id=job_id)
    raise web.HTTPSeeOther(f"/ui/jobs/{job_id}")


# --- zones and controller -----------------------------------------------------------------

async def zones(request: web.Request) -> web.Response:
    return await _page(request, "zones.html", await data.zones(request.app[CTL]))


async def zones_json(request: web.Request) -> web.Response:
    return web.json_response(await data.zones(request.app[CTL]))


async def controller(request: web.Request) -> web.Response:
    return await _page(request, "controller.html", {"c": await data.controller(
        request.app[CTL])})


async def controller_panel(request: web.Request) -> web.Response:
    return await _page(request, "_controller_panel.html", {"c": await data.controller(
        request.app[CTL])})


ROUTES = [
    web.get("/", root),
    web.get("/ui", root),
    web.get("/ui/login", login_form),
    web.post("/ui/login", login),
    web.post("/ui/logout", logout),
    web.get("/ui/", jobs),
    web.get("/ui/jobs", jobs),
    web.get("/ui/jobs/table", jobs_table),
    web.get("/ui/jobs/{job}", job),
    web.get("/ui/jobs/{job}/summary", job_summary),
    web.get("/ui/jobs/{job}/events", job_events),
    web.get("/ui/jobs/{job}/timeline.json", job_timeline),
    web.get("/ui/jobs/{job}/logs.json", job_logs),
    web.post("/ui/jobs/{job}/cancel", cancel_job),
    web.get("/ui/zones", zones),
    web.get("/ui/zones.json", zones_json),
    web.get("/ui/controller", controller),
    web.get("/ui/controller/panel", controller_panel),
]
