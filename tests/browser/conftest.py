"""Browser fixtures: Debian's Chromium driven by Playwright's *sync* API.

The Playwright driver is module-scoped on purpose: a session-scoped sync Playwright keeps an
asyncio loop attached to the main thread and breaks the asyncio tests that run after it.

=============  ========  ==========================================================
fixture        scope     what it gives
=============  ========  ==========================================================
``browser``    module    a headless Chromium (``/usr/bin/chromium``)
``context``    function  a fresh browser context (own cookies); on a failing test
                         every open page is screenshotted under
                         ``artifacts/screenshots/`` before it is closed
=============  ========  ==========================================================
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Playwright, expect, sync_playwright

from tests.support.waiting import scaled

from .demo import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, screenshot_path

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    expect.set_options(timeout=scaled(10) * 1000)
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run infra/ensure-system-packages.sh")
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=scaled(30) * 1000)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def context(browser: Browser, request: pytest.FixtureRequest) -> Iterator[BrowserContext]:
    for stale in SCREENSHOTS.glob(f"{Path(screenshot_path(request.node.name, 'failure')).stem}-*.png"):
        stale.unlink(missing_ok=True)  # a failure picture of an earlier run would mislead
    ctx = browser.new_context(viewport={"width": 1100, "height": 800})
    ctx.set_default_timeout(scaled(15) * 1000)
    try:
        yield ctx
    finally:
        call = request.node.stash.get(_REPORTS, {}).get("call")
        if call is not None and call.failed:
            for i, page in enumerate(ctx.pages):
                try:
                    page.screenshot(path=screenshot_path(request.node.name, f"failure-page{i}"), full_page=True)
                except Exception as exc:  # the page may be gone; the test failure is what matters
                    print(f"failure screenshot of page {i} not taken: {exc}")
        ctx.close()
