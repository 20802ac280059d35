"""Browser tests: Playwright for Python driving Debian's Chromium against a real controller.

Playwright's own browser download is not used (it cannot be reached from CI); the tests run
the system Chromium at /usr/bin/chromium (or $SKYJOBS_CHROMIUM). Without it, or without the
playwright package, every test here is skipped with one reason line (``pytest -rs``).
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import ControllerProc

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

CHROMIUM = Path(os.environ.get("SKYJOBS_CHROMIUM", "/usr/bin/chromium"))
HOW_TO_ENABLE = (f"browser tests need Chromium at {CHROMIUM} and the playwright package: "
                 "apt-get install chromium && pip install -e '.[test]' (.ci/run does both)")


def browser_missing() -> bool:
    return not CHROMIUM.exists() or importlib.util.find_spec("playwright") is None


# Module-scoped, not session-scoped: while Playwright's sync API runs, its event loop is the
# thread's running loop, which would break every asyncio test that runs after this module.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if browser_missing():
        pytest.skip(HOW_TO_ENABLE)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def dash(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProc]:
    """One controller for all browser tests (each test makes its own jobs)."""
    ctl = ControllerProc(tmp_path_factory.mktemp("dashboard") / "state").start()
    yield ctl
    ctl.cleanup()


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each page's screenshot goes (printed, so a person can look at them)."""
    path = tmp_path_factory.mktemp("screenshots")
    print(f"\ndashboard screenshots: {path}")
    return path


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx.set_default_timeout(20_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    """A fresh page whose script errors fail the test."""
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda err: errors.append(f"page error: {err}"))

    def console(msg: Any) -> None:
        # A 401 while logged out is the point of some tests; anything else is a bug.
        if msg.type == "error" and "401" not in msg.text:
            errors.append(f"console: {msg.text}")

    pg.on("console", console)
    yield pg
    assert not errors, "\n".join(errors)


def base_url(ctl: ControllerProc) -> str:
    return f"http://127.0.0.1:{(ctl.state_dir / 'port').read_text().strip()}"


def token(ctl: ControllerProc) -> str:
    return (ctl.state_dir / "token").read_text().strip()


def login(page: Page, ctl: ControllerProc, path: str = "/ui/") -> None:
    page.goto(base_url(ctl) + path)
    page.wait_for_url(re.compile(r"/ui/login\?next="))
    page.fill("#token", token(ctl))
    page.click("button[type=submit]")
    page.wait_for_url(f"**{path}")
