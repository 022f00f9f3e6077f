"""The demo page in a real browser: Debian's headless Chromium, driven by Playwright.

Playwright cannot download its own browser here, so the test drives
``/usr/bin/chromium`` (``scripts/browser-deps.sh`` installs it). The page
follows each job with a plain ``EventSource``; the test watches the progress
bar move to 100 % and the final statuses, and saves a screenshot to
``artifacts/``. The dashboard's own pages are tested in ``test_dashboard.py``;
here, what it does with job ids beyond 2**53, which a JavaScript number cannot
hold (a task's ``next_id`` hook chooses them).
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
from taskrt import JobContext, JobStatus, Runtime  # noqa: E402
from taskrt.web import create_app  # noqa: E402

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


# Ids a JavaScript number rounds: 2**60 + 1 and 2**60 + 2 are both 2**60 to it,
# and 2**63 - 3 to 2**63 - 1 all 2**63.
NEAR_2_60 = [2**60 + 1, 2**60 + 2, 2**60 + 3]
NEAR_2_63 = [2**63 - 3, 2**63 - 2, 2**63 - 1]


def big_ids_runtime(db_path: Path, gate: asyncio.Event) -> tuple[Runtime, Any]:
    """A runtime whose task ``hold`` (returned too) takes its ids from NEAR_2_60,
    then NEAR_2_63, and holds its jobs until ``gate`` opens."""
    rt = Runtime(str(db_path))
    rt.pool("main", concurrency=1)
    ids = iter(NEAR_2_60 + NEAR_2_63)

    @rt.task(pool="main", next_id=lambda: next(ids))
    async def hold(job: JobContext, previous: Any = None) -> str:
        await gate.wait()
        return "done"

    return rt, hold


async def open_dashboard(browser: Any, url: str, errors: list[str]) -> Any:
    page = await browser.new_page(viewport={"width": 1440, "height": 1000})
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.goto(url)
    await page.locator("body[data-ready=true][data-live=true]").wait_for(timeout=10_000)
    return page


async def test_the_dashboard_keeps_job_ids_beyond_2_to_the_53_exact(
    db_path: Path, server: Serve
) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")
    expect = playwright_api.expect
    gate = asyncio.Event()
    rt, _ = big_ids_runtime(db_path, gate)
    async with rt, server(create_app(rt)) as base, playwright_api.async_playwright() as pw:
        first, second, third = [await rt.add("hold") for _ in NEAR_2_60]
        assert [first, second, third] == NEAR_2_60
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            errors: list[str] = []
            page = await open_dashboard(browser, f"{base}/dashboard", errors)
            rows = page.locator("#jobs tr.job")
            links = rows.locator("td:first-child a")
            await expect(rows.locator(".status")).to_have_text(["WAITING", "WAITING", "RUNNING"])
            await expect(links).to_have_text([f"#{i}" for i in reversed(NEAR_2_60)])
            # Added while the page is open: each in its place, from the stream's events.
            near_max = [await rt.add("hold") for _ in range(2)]
            assert near_max == NEAR_2_63[:2]
            shown = list(reversed(NEAR_2_60 + near_max))
            await expect(links).to_have_text([f"#{i}" for i in shown])
            assert await rows.evaluate_all("rs => rs.map(r => r.dataset.id)") == [
                str(i) for i in shown
            ]

            # Cancel from the table cancels that job, and no other.
            await page.get_by_role("button", name=f"Cancel job {second}").click()
            await expect(page.locator(f'#jobs tr.job[data-id="{second}"] .status')).to_have_text(
                "CANCELLED"
            )
            statuses = {job_id: (await rt.get(job_id)).status for job_id in shown}
            assert statuses == {
                near_max[1]: JobStatus.WAITING,
                near_max[0]: JobStatus.WAITING,
                third: JobStatus.WAITING,
                second: JobStatus.CANCELLED,
                first: JobStatus.RUNNING,
            }
            await expect(rows.locator(".status")).to_have_text(
                ["WAITING", "WAITING", "WAITING", "CANCELLED", "RUNNING"]
            )

            # A job's page, opened by its address and by the search.
            await page.goto(f"{base}/dashboard/jobs/{first}")
            await expect(page.locator("#job-title")).to_have_text(f"Job #{first} · hold")
            await expect(page.locator("#job-status")).to_have_text("RUNNING")
            await page.goto(f"{base}/dashboard")
            await page.get_by_label("Search").fill(str(near_max[1]))
            await page.get_by_label("Search").press("Enter")
            await expect(page.locator("#job-title")).to_have_text(f"Job #{near_max[1]} · hold")
            assert page.url == f"{base}/dashboard/jobs/{near_max[1]}"
            await page.get_by_role("button", name=f"Cancel job {near_max[1]}").click()
            await expect(page.locator("#job-status")).to_have_text("CANCELLED")
            assert (await rt.get(near_max[0])).status == JobStatus.WAITING

            # The API page shows an answer's ids as they were sent.
            await page.goto(f"{base}/dashboard/api")
            await page.locator("body[data-ready=true]").wait_for()
            get_job = page.locator("details#get_job")
            await get_job.locator("summary").click()
            await get_job.get_by_label("job_id of GET /jobs/{job_id}").fill(str(near_max[1]))
            await get_job.get_by_role("button", name="Send").click()
            await expect(get_job.get_by_role("status")).to_have_text("200 OK")
            await expect(get_job.locator("pre.code")).to_contain_text(f'"id": {near_max[1]},')
            assert errors == []
        finally:
            gate.set()
            await browser.close()


async def test_a_workflow_of_ids_beyond_2_to_the_53_is_drawn_box_by_box(
    db_path: Path, server: Serve
) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")
    expect = playwright_api.expect
    gate = asyncio.Event()
    rt, hold = big_ids_runtime(db_path, gate)
    async with rt, server(create_app(rt)) as base, playwright_api.async_playwright() as pw:
        for _ in NEAR_2_60:
            await rt.add("hold")  # the chain's ids come next
        flow = await rt.chain(hold.s(), hold.s(), hold.s())
        assert list(flow.jobs) == NEAR_2_63
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            errors: list[str] = []
            url = f"{base}/dashboard/workflows/{flow.id}"
            page = await open_dashboard(browser, url, errors)
            await expect(page.locator("#wf-title")).to_have_text(f"Workflow #{2**63 - 3}")
            boxes = page.locator("#wf-graph .wf-job")
            await expect(boxes.locator(".wf-id")).to_have_text([f"#{i}" for i in NEAR_2_63])
            edges = await page.locator("#wf-graph path").evaluate_all(
                "ps => ps.map(p => [p.dataset.from, p.dataset.to])"
            )
            assert sorted(edges) == [
                [str(NEAR_2_63[0]), str(NEAR_2_63[1])],
                [str(NEAR_2_63[1]), str(NEAR_2_63[2])],
            ]
            await boxes.nth(2).click()
            await expect(page.locator("#job-title")).to_have_text(f"Job #{NEAR_2_63[2]} · hold")
            await expect(page.locator("#job-facts")).to_contain_text(f"workflow {flow.id}")
            gate.set()  # the chain runs: its boxes move with the workflow's stream
            await page.get_by_role("link", name=f"workflow {flow.id}").click()
            await expect(boxes.locator(".status")).to_have_text(["SUCCESS"] * 3)
            assert errors == []
        finally:
            gate.set()
            await browser.close()
