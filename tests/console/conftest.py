"""Fixtures for the console's browser tests: Debian's Chromium driven by Playwright.

`browser` is one headless Chromium for the session; `page` is a fresh context (its own
localStorage) per test. Playwright's own browser download cannot work on these machines, so the
system's /usr/bin/chromium is launched (`scripts/ensure-chromium` installs it); without it the
tests are skipped with the one line that says how to get it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]
#: The size of the page in the screenshots.
VIEWPORT = {"width": 1360, "height": 820}
#: The README's screenshots (docs/img/console-*.png) are rewritten only when this names a folder,
#: e.g. `CONSOLE_SCREENSHOTS=docs/img`; otherwise they go to the test's temporary folder, so a
#: test run leaves the repository as it was.
SCREENSHOTS_ENV = "CONSOLE_SCREENSHOTS"


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get(SCREENSHOTS_ENV)
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/ensure-chromium "
                    "(apt-get install -y chromium)")
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    p = await context.new_page()
    # What the page did wrong: script errors and console errors (a CSP refusal among them). A
    # failed request is the service's answer, not the page's fault, and logs "Failed to load
    # resource": kept apart in `p.failed_loads`, since the page shows those answers itself.
    problems: list[str] = []
    failed_loads: list[str] = []

    def on_console(message: Any) -> None:
        if message.type != "error":
            return
        text = f"console error: {message.text}"
        (failed_loads if "Failed to load resource" in message.text else problems).append(text)

    p.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    p.on("console", on_console)
    p.problems = problems
    p.failed_loads = failed_loads
    try:
        yield p
    finally:
        await context.close()


def service_root(api_url: str) -> str:
    """The service's root URL from the API's base URL (ROUTE_PREFIX removed)."""
    from urllib.parse import urlsplit

    parts = urlsplit(api_url)
    return f"{parts.scheme}://{parts.netloc}"
