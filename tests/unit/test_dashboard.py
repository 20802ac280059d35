"""The dashboard's access rules and its paging, over HTTP against an in-process controller
(no browser: tests/browser drives the pages in Chromium)."""

from __future__ import annotations

import re
import time
from typing import Any

from skyjobs.controller.dashboard.auth import COOKIE
from tests.unit.harness import TASK, Harness, submit


async def _get(h: Harness, path: str, cookie: str | None = None,
               **headers: str) -> tuple[int, str, Any]:
    if cookie:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    async with h.http.get(f"{h.ctl.url}{path}", headers=headers,
                          allow_redirects=False) as resp:
        return resp.status, await resp.text(), resp.headers


async def _post(h: Harness, path: str, form: dict[str, str], cookie: str | None = None,
                **headers: str) -> tuple[int, str, Any]:
    if cookie:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    async with h.http.post(f"{h.ctl.url}{path}", data=form, headers=headers,
                           allow_redirects=False) as resp:
        return resp.status, await resp.text(), resp.headers


async def login(h: Harness) -> tuple[str, str]:
    """(session cookie value, CSRF token) after logging in with the API token."""
    status, _, headers = await _post(h, "/ui/login", {"token": h.ctl.token, "next": "/ui/"})
    assert status == 303 and headers["Location"] == "/ui/"
    set_cookie = headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    cookie = re.search(rf"{COOKIE}=([^;]+)", set_cookie)
    assert cookie is not None
    status, page, _ = await _get(h, "/ui/", cookie.group(1))
    assert status == 200
    csrf = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page)
    assert csrf is not None
    return cookie.group(1), csrf.group(1)


async def test_nothing_but_the_login_page_without_a_session(h: Harness) -> None:
    job_id = await submit(h)
    for path in ("/", "/ui/", "/ui/jobs", f"/ui/jobs/{job_id}", "/ui/zones", "/ui/controller",
                 "/ui/jobs/table", "/ui/controller/panel"):
        status, _, headers = await _get(h, path)
        assert status == 303 and headers["Location"].startswith("/ui/login?next="), path
    for path in (f"/ui/jobs/{job_id}/timeline.json", f"/ui/jobs/{job_id}/logs.json",
                 "/ui/zones.json"):
        assert (await _get(h, path))[0] == 401, path
    # A live fragment whose session ended sends htmx to the login page.
    status, _, headers = await _get(h, "/ui/jobs/table", **{"HX-Request": "true"})
    assert status == 401 and headers["HX-Redirect"].startswith("/ui/login")
    assert (await _get(h, "/ui/login"))[0] == 200
    assert (await _get(h, "/ui/static/dashboard.css"))[0] == 200
    assert (await _post(h, f"/ui/jobs/{job_id}/cancel", {}))[0] == 401
    assert (await _get(h, "/ui/", "forged.9999999999.00"))[0] == 303


async def test_wrong_token_is_refused_and_the_cookie_never_holds_the_token(h: Harness) -> None:
    status, page, headers = await _post(h, "/ui/login", {"token": "nope", "next": "/ui/"})
    assert status == 401 and "Set-Cookie" not in headers
    assert "not this controller" in page
    assert (await _post(h, "/ui/login", {"token": "", "next": "/ui/"}))[0] == 401
    cookie, _ = await login(h)
    assert h.ctl.token not in cookie
    # Only a dashboard path is a place to go after login: no open redirect.
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        _, _, headers = await _post(h, "/ui/login", {"token": h.ctl.token, "next": target})
        assert headers["Location"] == "/ui/"


async def test_state_changes_need_the_session_csrf_token(h: Harness) -> None:
    job_id = await submit(h)
    cookie, csrf = await login(h)
    path = f"/ui/jobs/{job_id}/cancel"
    assert (await _post(h, path, {}, cookie))[0] == 403
    assert (await _post(h, path, {"csrf": "0" * 64}, cookie))[0] == 403
    # From another site: refused even with the right token (belt and braces with SameSite).
    assert (await _post(h, path, {"csrf": csrf}, cookie, Origin="https://evil.example"))[0] \
        == 403
    assert (await h.job(job_id))["status"] not in ("CANCELLING", "CANCELLED")
    status, _, headers = await _post(h, path, {"csrf": csrf}, cookie)
    assert status == 303 and headers["Location"] == f"/ui/jobs/{job_id}"
    await h.wait_status(job_id, "CANCELLING", "CANCELLED")
    events = (await h.api("GET", f"/api/v1/jobs/{job_id}/events"))[1]["events"]
    assert any(e["reason"] == "cancel requested (dashboard)" for e in events)
    # Cancelling it again says why, as a page.
    status, page, _ = await _post(h, path, {"csrf": csrf}, cookie)
    assert status == 409 and "Not cancelled" in page


async def test_logout_ends_the_session(h: Harness) -> None:
    cookie, csrf = await login(h)
    status, _, headers = await _post(h, "/ui/logout", {"csrf": csrf}, cookie)
    assert status == 303 and headers["Location"] == "/ui/login"
    assert (await _get(h, "/ui/", cookie))[0] == 303


async def test_secrets_are_never_rendered(h: Harness) -> None:
    task = {**TASK, "secrets": {"HF_TOKEN": "hf_s3cr3t_value"}, "envs": {"EPOCHS": "3"}}
    job_id = await submit(h, task)
    cookie, _ = await login(h)
    status, page, headers = await _get(h, f"/ui/jobs/{job_id}", cookie)
    assert status == 200
    assert "hf_s3cr3t_value" not in page
    assert "HF_TOKEN: &lt;redacted&gt;" in page and "EPOCHS:" in page
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["Cache-Control"] == "no-store"


async def test_jobs_page_in_sql_at_ten_thousand_jobs(h: Harness) -> None:
    s = h.ctl.store.sync
    def park(i: int) -> None:  # jobs no controller here runs: rows for the page to page
        ids = s.create_jobs(f"sweep-{i}", {"spec": TASK}, False, "sky", 1000)
        s.conn.execute("UPDATE job_leases SET owner='elsewhere', expires_at=1e12 WHERE"
                       f" job_id BETWEEN {ids[0]} AND {ids[-1]}")

    for i in range(10):  # (one store call each: no lease claim can come in between)
        await h.ctl.store.call(park, i)
    await h.ctl.store.call(s.create_job, "the_odd_one%", {"spec": TASK}, False, "sky")
    cookie, _ = await login(h)
    t0 = time.monotonic()
    status, page, _ = await _get(h, "/ui/jobs?page=150&per=50&name=sweep-3", cookie)
    elapsed = time.monotonic() - t0
    assert status == 200
    assert "1000 jobs match" in page and "Page 20 of 20" in page  # clamped to the last page
    assert page.count('<tr data-job="') == 50
    assert elapsed < 2.0, f"a page of 10,000 jobs took {elapsed:.2f}s"
    jobs, total = await h.ctl.store.call(s.jobs_page, None, None, 25, 9990)
    assert (len(jobs), total) == (11, 10001)
    # The name filter is a substring, its LIKE wildcards taken literally.
    jobs, total = await h.ctl.store.call(s.jobs_page, None, "odd_one%", 50, 0)
    assert total == 1 and jobs[0].name == "the_odd_one%"
    assert (await h.ctl.store.call(s.jobs_page, None, "%", 50, 0))[1] == 1
    jobs, total = await h.ctl.store.call(s.jobs_page, ["PENDING"], "SWEEP-9", 10, 0)
    assert total == 1000 and [j.id for j in jobs] == sorted((j.id for j in jobs), reverse=True)


async def test_pages_render(h: Harness) -> None:
    job_id = await submit(h)
    await h.run_to_running(job_id)
    cookie, _ = await login(h)
    for path in ("/ui/", "/ui/zones", "/ui/controller", f"/ui/jobs/{job_id}",
                 f"/ui/jobs/{job_id}/summary", f"/ui/jobs/{job_id}/events",
                 "/ui/controller/panel", "/ui/jobs?status=LIVE&name=x&per=25"):
        status, _, _ = await _get(h, path, cookie)
        assert status == 200, path
    status, body, _ = await _get(h, f"/ui/jobs/{job_id}/timeline.json", cookie)
    assert status == 200 and '"bars"' in body
    assert (await _get(h, "/ui/jobs/12345", cookie))[0] == 404
    assert (await _get(h, "/ui/jobs/abc", cookie))[0] == 404
