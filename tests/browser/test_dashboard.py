"""The dashboard in a real browser: log in, watch a job recover live, read its timeline and
logs, cancel a job from its page, and be refused without the token. Each page is saved as a
screenshot (the path is printed with ``-s``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from skyjobs.controller.dashboard.auth import COOKIE
from tests.browser.conftest import HOW_TO_ENABLE, base_url, browser_missing, login, token
from tests.conftest import ControllerProc, task

if browser_missing():
    # One skip for the whole module: one line in `pytest -rs` saying how to enable it.
    pytest.skip(HOW_TO_ENABLE, allow_module_level=True)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

STEPS = 'for i in $(seq 1 40); do echo "step $i of 40"; sleep 0.1; done'
# Records every state the page's badge shows, as htmx swaps the summary in.
WATCH_STATES = """() => {
  window.__states = [];
  const seen = () => {
    const el = document.getElementById('job-state');
    const text = el && el.textContent.trim();
    if (text && window.__states[window.__states.length - 1] !== text) window.__states.push(text);
  };
  seen();
  new MutationObserver(seen).observe(document.body, {subtree: true, childList: true,
                                                     characterData: true});
}"""


def _expect() -> Any:
    # Imported when a test runs: without playwright the module must still be collected, so
    # that the browser fixture can skip with its one line saying how to enable the tests.
    from playwright.sync_api import expect

    return expect


def _transitions(page: Page) -> list[tuple[str, str]]:
    rows = page.locator("#job-events table.events tbody tr").all_inner_texts()
    return [(m.group(1), m.group(2)) for r in rows
            if (m := re.search(r"([A-Z_]+)\s*→\s*([A-Z_]+)", r))]


def _in_order(wanted: list[tuple[str, str]], got: list[tuple[str, str]]) -> bool:
    it = iter(got)
    return all(any(w == g for g in it) for w in wanted)


def test_refused_without_the_token(browser: Browser, context: BrowserContext, page: Page,
                                   dash: ControllerProc, shots: Path) -> None:
    expect = _expect()
    base = base_url(dash)
    page.goto(base + "/ui/jobs")
    page.wait_for_url(re.compile(r"/ui/login\?next=(/|%2F)ui(/|%2F)jobs$"))
    page.screenshot(path=str(shots / "login.png"))
    page.fill("#token", "not-the-token")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("not this controller's token")
    assert context.request.get(base + "/api/v1/jobs").status == 401
    assert context.request.get(base + "/ui/zones.json").status == 401

    page.fill("#token", token(dash))
    page.click("button[type=submit]")
    page.wait_for_url("**/ui/jobs")
    cookie = next(c for c in context.cookies() if c["name"] == COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert token(dash) not in cookie["value"]
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it
    # The session is the dashboard's: the API still wants its bearer token.
    assert context.request.get(base + "/api/v1/jobs").status == 401
    job_id = dash.submit(task("sleep 300", name="browser-csrf"))
    refused = context.request.post(f"{base}/ui/jobs/{job_id}/cancel", form={"csrf": "x"})
    assert refused.status == 403
    assert dash.job(job_id)["status"] not in ("CANCELLING", "CANCELLED")

    page.click("header .logout button")
    page.wait_for_url("**/ui/login")
    later = browser.new_context()
    try:
        later.add_cookies([cookie])  # a copy of the logged-out session is worth nothing
        other = later.new_page()
        other.goto(base + "/ui/controller")
        other.wait_for_url(re.compile(r"/ui/login\?next="))
    finally:
        later.close()


def test_job_recovers_live_with_its_timeline_and_logs(page: Page, dash: ControllerProc,
                                                       shots: Path) -> None:
    expect = _expect()
    login(page, dash)
    job_id = dash.submit(task(STEPS, name="browser-recovery"))
    page.goto(f"{base_url(dash)}/ui/jobs/{job_id}")
    page.evaluate("window.__sameDocument = 'yes'")
    page.evaluate(WATCH_STATES)
    state = page.locator("#job-state")
    expect(state).to_have_text("RUNNING", timeout=30_000)
    expect(page.locator("#log-text")).to_contain_text("step 5 of 40", timeout=20_000)

    dash.client.post(f"/api/v1/jobs/{job_id}/preempt", {"notice": 1})
    expect(page.locator("#job-events")).to_contain_text("RECOVERING", timeout=20_000)
    expect(state).to_have_text("SUCCEEDED", timeout=60_000)
    assert page.evaluate("window.__sameDocument") == "yes", "the page was reloaded"

    # What the page showed, as it happened: the badge went from RUNNING to SUCCEEDED (the
    # local provider's RECOVERING lasts milliseconds: the live event list shows it).
    states = page.evaluate("window.__states")
    assert "RUNNING" in states and states[-1] == "SUCCEEDED", states
    # The badge and the event list refresh separately: the list may be a poll behind.
    expect(page.locator("#job-events")).to_contain_text("SUCCEEDED", timeout=10_000)
    assert _in_order([("RUNNING", "RECOVERING"), ("RECOVERING", "PROVISIONING"),
                      ("PROVISIONING", "RUNNING"), ("RUNNING", "SUCCEEDED")],
                     _transitions(page)), _transitions(page)
    expect(page.locator("#job-summary")).to_contain_text("2 attempts")

    # The timeline: two attempts on two zones' rows, the notice and the preemption marked.
    timeline = page.locator("#timeline")
    expect(timeline).to_have_attribute("data-status", "SUCCEEDED")
    expect(timeline).to_have_attribute("data-loaded", "2")
    feed = page.request.get(f"{base_url(dash)}/ui/jobs/{job_id}/timeline.json").json()
    assert [b["end_reason"] for b in feed["bars"]] == ["preempted", "succeeded"]
    assert {m["kind"] for m in feed["marks"]} == {"notice", "preemption"}
    assert len(feed["rows"]) == 2
    assert [s["state"] for s in feed["states"]][-1] == "SUCCEEDED"
    timeline.scroll_into_view_if_needed()
    box = timeline.bounding_box()
    assert box is not None and box["height"] > 150
    page.screenshot(path=str(shots / "job.png"), full_page=True)

    # Logs per attempt: the first attempt's, then the second's, to its last line.
    log = page.locator("#log-text")
    page.select_option("#log-attempt", "1")
    expect(log).to_have_attribute("data-attempt", "1")
    expect(log).to_contain_text("step 1 of 40")
    page.select_option("#log-attempt", "2")
    expect(log).to_have_attribute("data-attempt", "2")
    expect(log).to_contain_text("step 40 of 40")
    log.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "job-logs.png"))

    page.goto(f"{base_url(dash)}/ui/jobs?name=browser-recovery")
    row = page.locator(f'tr[data-job="{job_id}"]')
    expect(row.locator("[data-state]")).to_have_text("SUCCEEDED")
    expect(row.locator("td").nth(4)).to_have_text("1")  # recoveries


def test_cancel_a_job_from_its_page(page: Page, dash: ControllerProc, shots: Path) -> None:
    expect = _expect()
    login(page, dash)
    job_id = dash.submit(task("sleep 300", name="browser-cancel"))
    page.goto(f"{base_url(dash)}/ui/jobs/{job_id}")
    expect(page.locator("#job-state")).to_have_text(re.compile("PROVISIONING|RUNNING"))
    asked: list[str] = []
    page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    page.click("#cancel-job")
    page.wait_for_timeout(300)  # a dismissed confirmation sends nothing
    assert asked and f"Cancel job {job_id}" in asked[0]
    assert dash.job(job_id)["status"] in ("PROVISIONING", "RUNNING")
    page.once("dialog", lambda d: d.accept())
    page.click("#cancel-job")
    expect(page.locator("#job-state")).to_have_text("CANCELLED", timeout=30_000)
    expect(page.locator("#cancel-job")).to_have_count(0)
    assert dash.job(job_id)["status"] == "CANCELLED"
    page.screenshot(path=str(shots / "job-cancelled.png"), full_page=True)


def test_jobs_list_is_live_and_filters(page: Page, dash: ControllerProc, shots: Path) -> None:
    expect = _expect()
    login(page, dash)
    page.evaluate("window.__sameDocument = 'yes'")
    job_id = dash.submit(task("echo hello", name="browser-list-one"))
    row = page.locator(f'tr[data-job="{job_id}"]')
    expect(row).to_be_visible(timeout=15_000)  # appeared without a reload
    expect(row.locator("[data-state]")).to_have_text("SUCCEEDED", timeout=30_000)
    page.screenshot(path=str(shots / "jobs.png"), full_page=True)
    page.fill("input[name=name]", "list-one")
    expect(page.locator("tr[data-job]")).to_have_count(1)
    assert "name=list-one" in page.url
    page.select_option("select[name=status]", "FAILED")
    expect(page.locator("td.empty")).to_be_visible()
    page.select_option("select[name=status]", "SUCCEEDED")
    expect(page.locator("tr[data-job]")).to_have_count(1)
    assert page.evaluate("window.__sameDocument") == "yes"


def test_zones_and_controller_pages(page: Page, dash: ControllerProc, shots: Path) -> None:
    expect = _expect()
    login(page, dash, "/ui/zones")
    heat = page.locator("#heatmap")
    expect(heat).to_have_attribute("data-cells", re.compile(r"^[1-9]\d*$"))
    expect(page.locator("table.zones tbody tr").first).to_contain_text("local")
    page.screenshot(path=str(shots / "zones.png"), full_page=True)
    page.click("#heat-metric button[data-metric=p_no_capacity]")
    expect(page.locator("#heat-metric button.on")).to_have_text("No-capacity chance")

    page.goto(f"{base_url(dash)}/ui/controller")
    expect(page.locator("#store-health")).to_have_text("healthy")
    expect(page.locator("#webhook-backlog")).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator("table.clouds")).to_contain_text("local")
    expect(page.locator("#controller-live")).to_contain_text("skyjobs 0.")
    page.screenshot(path=str(shots / "controller.png"), full_page=True)
