"""The demo page in a real browser: Debian's headless Chromium, driven by Playwright.

Playwright cannot download its own browser here, so the test drives
``/usr/bin/chromium`` (``scripts/browser-deps.sh`` installs it). The page
follows each job with a plain ``EventSource``; the test watches the progress
bar move to 100 % and the final statuses, and saves a screenshot to
``artifacts/``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # ``pytest`` (not ``python -m pytest``) leaves the root out
    sys.path.insert(0, str(ROOT))

from demo.app import build_app, build_runtime  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.server,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK) and not os.environ.get("CI"),
        reason="Chromium is not installed (make browser-deps)",
    ),
]

Serve = Callable[..., AbstractAsyncContextManager[str]]


async def expect_lines(card: Any, starts: list[str]) -> None:
    """The card's log is exactly these lines (each given by how it starts)."""
    log = card.locator(".log li")
    async with asyncio.timeout(10):
        while True:
            lines = await log.all_inner_texts()
            if len(lines) == len(starts) and all(
                line.startswith(start) for line, start in zip(lines, starts, strict=True)
            ):
                return
            await asyncio.sleep(0.05)


async def test_the_demo_page_shows_live_progress_retries_and_failures(
    db_path: Path, server: Serve
) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")
    rt = build_runtime(db_path, speed=0.2)
    async with server(build_app(rt)) as base, playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 900, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            asked: list[str] = []
            page.on("request", lambda request: asked.append(request.url))
            await page.goto(base)

            await page.get_by_role("button", name="Resize image").click()
            image = page.locator("article.job", has_text="Resize image")
            await image.locator(".status", has_text="SUCCESS").wait_for(timeout=15_000)
            bar = image.get_by_role("progressbar")
            assert await bar.get_attribute("aria-valuenow") == "100"
            assert await image.locator(".percent").inner_text() == "100 %"
            log: list[dict[str, Any]] = await page.evaluate("window.demoLog")
            seen = [e["percent"] for e in log if e["type"] == "progress"]
            assert len(set(seen)) >= 10  # the bar moved step by step, live
            assert seen == sorted(seen) and seen[-1] == 100

            await page.get_by_role("button", name="Send e-mail").click()
            await page.get_by_role("button", name="Build report (times out)").click()
            email = page.locator("article.job", has_text="Send e-mail")
            report = page.locator("article.job", has_text="Build report")
            await email.locator(".status", has_text="SUCCESS").wait_for(timeout=15_000)
            await report.locator(".status", has_text="FAILURE").wait_for(timeout=15_000)
            retries = email.locator(".log li", has_text="retrying in")
            assert await retries.count() == 2
            assert "SMTP server busy" in await retries.first.inner_text()
            assert "timed out" in await report.locator(".outcome").inner_text()
            # Each attempt's start is in the log, the first one included.
            email_log = await email.locator(".log li").all_inner_texts()
            assert [line.split(":")[0] for line in email_log] == [
                "attempt 1 started",
                "attempt 1 failed",
                "attempt 2 started",
                "attempt 2 failed",
                "attempt 3 started",
                "succeeded",
            ], email_log

            # A retry by hand: said once, then the new attempt; no line twice.
            await report.get_by_role("button", name="Retry").click()
            await report.locator(".log li", has_text="attempt 2 started").wait_for(timeout=15_000)
            await report.locator(".status", has_text="FAILURE").wait_for(timeout=15_000)
            await expect_lines(
                report,
                ["attempt 1 started", "failed", "retry requested", "attempt 2 started", "failed"],
            )

            # A reload keeps every card's history (read from the jobs' attempts).
            await page.reload()
            report = page.locator("article.job", has_text="Build report")
            await expect_lines(
                report,
                ["attempt 1 started", "failed", "retry requested", "attempt 2 started", "failed"],
            )
            email = page.locator("article.job", has_text="Send e-mail")
            await email.locator(".log li", has_text="succeeded").wait_for(timeout=5_000)
            assert await email.locator(".log li").all_inner_texts() == email_log

            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
            assert errors == []
            assert not [url for url in asked if url.endswith("/favicon.ico")]  # none to miss
        finally:
            await browser.close()
    assert rt.broker.subscribers == 0
