"""The web dashboard, served by the controller itself under ``/ui/`` (docs/dashboard.md).

Server-rendered Jinja2 pages with small live parts: htmx re-fetches a page's live fragment
every few seconds, and the job page's timeline and log follower poll a small JSON endpoint.
The JavaScript and CSS libraries (htmx, Apache ECharts) are vendored under ``static/`` at
pinned versions with their licences: no build step, no CDN.

Access is the API token's: the login form exchanges it for a session cookie (auth.py).
Nothing under ``/ui/`` except the login page and the static files answers without a session,
and every POST needs the session's CSRF token.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp_jinja2
import jinja2
from aiohttp import web

from skyjobs.controller.dashboard import routes
from skyjobs.controller.dashboard.auth import Sessions

if TYPE_CHECKING:
    from skyjobs.controller.services import Services

HERE = Path(__file__).resolve().parent


def setup(app: web.Application, ctl: Services) -> None:
    """Mount the dashboard on the controller's app (called at the end of api.make_app)."""
    app[routes.CTL] = ctl
    app[routes.SESSIONS] = Sessions(ctl.token, ctl.state_dir)
    env = aiohttp_jinja2.setup(app, app_key=routes.JINJA,
                               loader=jinja2.FileSystemLoader(HERE / "templates"),
                               autoescape=jinja2.select_autoescape(["html"], default=True),
                               undefined=jinja2.StrictUndefined, default_helpers=False)
    routes.add_filters(env)
    app.middlewares.append(routes.dashboard_guard)
    app.router.add_static("/ui/static/", HERE / "static", name=routes.STATIC,
                          append_version=True)
    app.add_routes(routes.ROUTES)
