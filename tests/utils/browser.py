"""Headless Debian Chromium through Playwright, as the page tests drive it; screenshots go to
`artifacts/` (kept by CI as test artifacts)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000


@contextmanager
def chromium_page() -> Iterator[Page]:
    """A fresh page in a throw-away browser profile, 1280 × 900, default timeout set."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            context.close()


def sign_in(page: Page, token: str) -> str:
    """Sign in on the clinician page; what it then says of the caller."""
    page.fill("#token", token)
    page.click("#signin")
    page.wait_for_function(
        "() => /Signed in as|Not signed in:/.test(document.getElementById('whoami').textContent)",
        timeout=TIMEOUT_MS,
    )
    return str(page.text_content("#whoami"))


def look_up(page: Page, resident_id: str, purpose: str, page_size: int = 50, reason: str = "") -> None:
    """A lookup on the clinician page, until it shows results or an error."""
    page.fill("#resident-id", resident_id)
    page.select_option("#purpose", purpose)
    if purpose == "emergency":
        page.fill("#reason", reason)
    page.select_option("#page-size", str(page_size))
    page.click("#lookup")
    page.wait_for_selector("#results:not([hidden]), #error:not([hidden])", timeout=TIMEOUT_MS)
