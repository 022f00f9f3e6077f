"""The dashboard: served files and their headers in process, then the page itself in
Debian's headless Chromium (Playwright) against a real uvicorn server.

Jobs here move one step per token the test hands out (``Steps``), so every
"the bar shows 50 %" is a fact the test caused, not a race against a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

from taskrt import Batch, JobContext, JobStatus, Runtime
from taskrt.web import create_app
from taskrt.web.dashboard import CSP

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
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
SESSION = "s3cret-operator-session"

Serve = Callable[..., AbstractAsyncContextManager[str]]


class Steps:
    """Lets a job take one step per token: the test decides when each step happens."""

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue[None]] = {}

    def __getitem__(self, key: str) -> asyncio.Queue[None]:
        return self.queues.setdefault(key, asyncio.Queue())

    def allow(self, key: str, n: int = 1) -> None:
        for _ in range(n):
            self[key].put_nowait(None)


def make_runtime(path: Path, steps: Steps) -> Runtime:
    rt = Runtime(str(path))
    rt.pool("main", concurrency=2)
    rt.pool("batch", concurrency=4)

    @rt.task(pool="main")
    async def stepped(job: JobContext, n: int = 4, key: str = "a") -> dict[str, int]:
        """Takes one step per token the test hands out."""
        for i in range(n):
            await steps[key].get()
            await job.progress(i + 1, n, f"step {i + 1} of {n}", step=f"part {i + 1}")
        return {"steps": n}

    @rt.task(pool="batch", attempts=1)
    async def boom(job: JobContext, path: str = "/var/data") -> None:
        raise RuntimeError(f"boom: the disk holding {path} is full")

    @rt.task(pool="batch")
    async def hop(job: JobContext, previous: Any = None, key: str = "") -> Any:
        """A step of a workflow; with a ``key``, held halfway until the test allows it."""
        if key:
            await job.progress(1, 2, "at the gate")
            await steps[key].get()
        return [previous, key]

    @rt.task(pool="main", attempts=2, retry=0)
    async def greet(job: JobContext, to: str, times: int = 1) -> str:
        """Greets ``to`` (the ``times`` given)."""
        if job.attempt == 1 and to == "twice":
            raise RuntimeError("first attempt fails")
        await steps[to].get()
        return f"hello {to}"

    rt.schedule("nightly", "stepped", "0 3 * * *", kwargs={"n": 1, "key": "nightly"})
    return rt


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def operator(request: Request) -> str | None:
    """Cookie authentication, the way a browser-facing app does it."""
    return "operator" if request.cookies.get("session") == SESSION else None


@pytest.fixture
def steps() -> Steps:
    return Steps()


@pytest.fixture
async def rt(db_path: Path, steps: Steps) -> AsyncIterator[Runtime]:
    runtime = make_runtime(db_path, steps)
    async with runtime:
        yield runtime


# -- served files, in process --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def client_for(app: Any, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", **options) as client:
        yield client


async def test_the_page_and_its_assets_are_served_with_the_root_path_and_a_strict_csp(
    rt: Runtime,
) -> None:
    host = Starlette(routes=[Mount("/ops", app=create_app(rt))])
    async with client_for(host) as client:
        page = await client.get("/ops/dashboard")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"] == CSP
        assert 'data-root="/ops"' in page.text
        assert 'src="/ops/dashboard/static/dashboard.js"' in page.text
        assert "{{root}}" not in page.text
        job_page = await client.get("/ops/dashboard/jobs/123?")
        assert job_page.status_code == 200 and job_page.text == page.text
        for impossible in ("0", str(2**63), "x"):  # ids no job can have
            gone = await client.get(f"/ops/dashboard/jobs/{impossible}")
            assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"

        script = await client.get("/ops/dashboard/static/dashboard.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert "new EventSource" in script.text
        etag = script.headers["etag"]
        again = await client.get(
            "/ops/dashboard/static/dashboard.js", headers={"If-None-Match": etag}
        )
        assert again.status_code == 304 and again.content == b""
        style = await client.get("/ops/dashboard/static/dashboard.css")
        assert style.headers["content-type"].startswith("text/css")
        missing = await client.get("/ops/dashboard/static/secrets.py")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        # The page keeps its own filters in the query; anything else is refused.
        assert (await client.get("/ops/dashboard?status=RUNNING&q=a%3Db")).status_code == 200
        assert (await client.get("/ops/dashboard?bogus=1")).status_code == 422


async def test_a_root_path_cannot_inject_markup(rt: Runtime) -> None:
    host = Starlette(routes=[Mount('/x"><script>', app=create_app(rt))])
    async with client_for(host) as client:
        page = await client.get('/x"><script>/dashboard')
    assert page.status_code == 200
    assert '<script>"' not in page.text and "&quot;&gt;&lt;script&gt;" in page.text


async def test_the_page_goes_through_the_apps_auth(rt: Runtime) -> None:
    app = create_app(rt, auth=operator)
    async with client_for(app) as client:
        assert (await client.get("/dashboard")).status_code == 401
        assert (await client.get("/dashboard/static/dashboard.js")).status_code == 401
    async with client_for(app, cookies={"session": SESSION}) as client:
        assert (await client.get("/dashboard")).status_code == 200


async def test_tracebacks_are_for_operators_never_for_per_job_tokens(rt: Runtime) -> None:
    job_id = await rt.add("boom")
    await rt.wait(job_id, timeout=5)

    async def traceback_seen(client: httpx.AsyncClient, query: str = "") -> Any:
        reply = await client.get(f"/jobs/{job_id}/attempts{query}")
        assert reply.status_code == 200, reply.text
        attempt = reply.json()["attempts"][0]
        assert "the disk holding /var/data is full" in attempt["error"]
        return attempt["traceback"]

    app = create_app(rt, auth=operator)
    async with client_for(app, cookies={"session": SESSION}) as client:
        assert "RuntimeError: boom" in await traceback_seen(client)
        token = (await client.post(f"/jobs/{job_id}/token")).json()["token"]
    async with client_for(app) as client:
        assert await traceback_seen(client, f"?token={token}") is None
        assert (await client.get(f"/jobs/{job_id}/attempts")).status_code == 401
    # Without auth, anyone who can reach the app is nobody in particular.
    async with client_for(create_app(rt)) as client:
        assert await traceback_seen(client) is None
    async with client_for(create_app(rt, expose_tracebacks=True)) as client:
        assert "RuntimeError: boom" in await traceback_seen(client)


# -- in the browser ------------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def in_browser(test: F) -> F:
    """Marks a test that drives Chromium against a real server."""
    for mark in (
        pytest.mark.browser,
        pytest.mark.server,
        pytest.mark.skipif(
            not os.access(CHROMIUM, os.X_OK) and not os.environ.get("CI"),
            reason="Chromium is not installed (make browser-deps)",
        ),
    ):
        test = mark(test)
    return test


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


def expect(target: Any) -> Any:
    from playwright.async_api import expect as playwright_expect

    return playwright_expect(target)


@contextlib.asynccontextmanager
async def dashboard(
    browser: Any,
    url: str,
    *,
    cookies: list[dict[str, str]] | None = None,
    width: int = 1440,
    prepare: Callable[[Any], Any] | None = None,
) -> AsyncIterator[Any]:
    """A page on ``url``, once it is live and loaded; closed (stream and all) on exit.

    ``prepare(page)``, awaited before the page opens, may hold some of its
    requests back (``page.route``): then the page is only waited on to be live.
    """
    context = await browser.new_context(viewport={"width": width, "height": 1000})
    if cookies:
        await context.add_cookies(cookies)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        if prepare is not None:
            await prepare(page)
        await page.goto(url)
        loaded = "[data-ready=true]" if prepare is None else ""
        await page.locator(f"body{loaded}[data-live=true]").wait_for(timeout=10_000)
        yield page
        assert errors == []
    finally:
        await context.close()


def row(page: Any, job_id: int) -> Any:
    return page.locator(f'#jobs tr.job[data-id="{job_id}"]')


def pool_row(page: Any, name: str) -> Any:
    return page.locator(f'#pools tr[data-pool="{name}"]')


@in_browser
async def test_a_job_added_from_the_form_moves_its_bar_to_100_percent(
    rt: Runtime, steps: Steps, server: Serve, browser: Any
) -> None:
    async with server(create_app(rt)) as base, dashboard(browser, f"{base}/dashboard") as page:
        await page.get_by_role("button", name="New job").click()
        dialog = page.get_by_role("dialog")
        await dialog.get_by_label("Task").select_option("stepped")
        await dialog.get_by_label("n", exact=True).fill("4")
        await dialog.get_by_label("key", exact=True).fill("form")
        await dialog.get_by_text("Options").click()
        await dialog.get_by_label("Metadata (JSON object)").fill('{"tenant": "acme"}')
        await dialog.get_by_role("button", name="Add job").click()
        await expect(dialog).to_be_hidden()

        job = page.locator("#jobs tr.job", has_text="stepped")
        await expect(job).to_have_count(1)
        job_id = int(await job.get_attribute("data-id"))
        info = await rt.get(job_id)
        assert info.kwargs == {"n": 4, "key": "form"} and info.metadata == {"tenant": "acme"}
        bar = job.get_by_role("progressbar")
        await expect(job.locator(".status")).to_have_text("RUNNING")
        for percent in (25, 50, 75, 100):
            steps.allow("form")
            await expect(bar).to_have_attribute("aria-valuenow", str(percent))
        await expect(job.locator(".status")).to_have_text("SUCCESS")
        await expect(job.locator(".percent")).to_have_text("100 %")
        await expect(page.locator("#count-SUCCESS")).to_have_text("1")
        await expect(page.locator("#count-all")).to_have_text("1")

        # A fuller picture for the screenshot: a failure, a cancel, waiting and
        # running jobs mid-way, and throughput in the sparklines.
        done = await rt.pool("batch").add_many("boom", [{"path": f"/srv/{i}"} for i in range(3)])
        for job_id in done:
            await rt.wait(job_id, timeout=5)
        moving = [await rt.add("stepped", n=4, key=f"m{i}") for i in range(2)]
        cancelled = await rt.add("stepped", n=4, key="never")
        await rt.cancel(cancelled)
        for i in range(2):
            steps.allow(f"m{i}", 1 + i)
        for i, job_id in enumerate(moving):
            await expect(row(page, job_id).get_by_role("progressbar")).to_have_attribute(
                "aria-valuenow", str(25 * (1 + i))
            )
        await expect(row(page, cancelled).locator(".status")).to_have_text("CANCELLED")
        await expect(page.locator("#count-FAILURE")).to_have_text("3")
        await expect(page.locator("#count-RUNNING")).to_have_text("2")
        await expect(page.locator("#count-CANCELLED")).to_have_text("1")
        # Pool figures follow the events (re-read at most once a second).
        await expect(pool_row(page, "batch").locator('[data-role="done"]')).to_have_text("0 / 3")
        await expect(pool_row(page, "main").locator('[data-role="running"]')).to_have_text("2 / 2")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(
            path=str(ARTIFACTS / "dashboard.png"), full_page=True, animations="disabled"
        )
        for i in range(2):
            steps.allow(f"m{i}", 4)
    assert rt.broker.subscribers == 0


@in_browser
async def test_cancel_and_retry_from_the_page(
    rt: Runtime, steps: Steps, server: Serve, browser: Any
) -> None:
    async with server(create_app(rt)) as base, dashboard(browser, f"{base}/dashboard") as page:
        job_id = await rt.add("stepped", n=1, key="c")
        job = row(page, job_id)
        await expect(job.locator(".status")).to_have_text("RUNNING")
        await page.get_by_role("button", name=f"Cancel job {job_id}").click()
        await expect(job.locator(".status")).to_have_text("CANCELLED")
        assert (await rt.get(job_id)).status == "CANCELLED"
        await expect(page.locator("#count-CANCELLED")).to_have_text("1")

        await page.get_by_role("button", name=f"Retry job {job_id}").click()
        await expect(job.locator(".status")).to_have_text("RUNNING")
        steps.allow("c")
        await expect(job.locator(".status")).to_have_text("SUCCESS")
        info = await rt.get(job_id)
        assert info.status == "SUCCESS" and info.attempts == 2
        await expect(page.locator("#count-CANCELLED")).to_have_text("0")
        await expect(page.locator("#count-SUCCESS")).to_have_text("1")


@in_browser
async def test_pools_pause_resume_and_change_concurrency_from_the_page(
    rt: Runtime, steps: Steps, server: Serve, browser: Any
) -> None:
    async with server(create_app(rt)) as base, dashboard(browser, f"{base}/dashboard") as page:
        main = pool_row(page, "main")
        await page.get_by_role("button", name="Pause pool main").click()
        await expect(main.locator(".badge")).to_have_text("paused")
        assert rt.pools["main"].paused

        job_id = await rt.add("stepped", n=1, key="p")
        await expect(row(page, job_id).locator(".status")).to_have_text("WAITING")
        await expect(main.locator('[data-role="waiting"]')).to_have_text("1")
        assert (await rt.get(job_id)).status == "WAITING"

        await page.get_by_role("button", name="Resume pool main").click()
        await expect(main.locator(".badge")).to_have_text("active")
        await expect(row(page, job_id).locator(".status")).to_have_text("RUNNING")
        await expect(main.locator('[data-role="running"]')).to_have_text("1 / 2")

        await page.get_by_label("Concurrency of main").fill("5")
        await main.get_by_role("button", name="Set").click()
        await expect(main.locator('[data-role="running"]')).to_have_text("1 / 5")
        assert rt.pools["main"].concurrency == 5
        steps.allow("p")
        await expect(row(page, job_id).locator(".status")).to_have_text("SUCCESS")


@in_browser
async def test_a_pool_paused_elsewhere_shows_within_the_pools_reread(
    rt: Runtime, server: Serve, browser: Any
) -> None:
    """A pause that sends no event (here the pool's own, as a node applies one an
    operator recorded elsewhere) shows once the page reads the pools again, every
    10 s while it is in view; before, only at the next event of a job."""

    async def fake_timers(page: Any) -> None:
        await page.clock.install()

    async with server(create_app(rt)) as base:
        async with dashboard(browser, f"{base}/dashboard", prepare=fake_timers) as page:
            main = pool_row(page, "main")
            await expect(main.locator(".badge")).to_have_text("active")
            rt.pools["main"].pause()
            await page.clock.run_for(3_000)
            await expect(main.locator(".badge")).to_have_text("active")  # no event, no read
            await page.clock.run_for(8_000)
            await expect(main.locator(".badge")).to_have_text("paused")
            rt.pools["main"].resume()
            await page.clock.run_for(11_000)
            await expect(main.locator(".badge")).to_have_text("active")


@in_browser
async def test_a_page_served_by_a_standby_is_live_and_acts_on_the_owner(
    rt: Runtime, steps: Steps, db_path: Path, server: Serve, browser: Any
) -> None:
    """uvicorn --workers N: the page may come from a process that runs no jobs."""
    standby = make_runtime(db_path, steps)
    async with standby:
        assert standby.role == "standby"
        async with server(create_app(standby)) as base:
            async with dashboard(browser, f"{base}/dashboard") as page:
                owner = rt.ownership.owner
                host, pid = owner.split(":")[:2]
                await expect(page.locator("#owner")).to_have_text(
                    f"owner {host} pid {pid} · via standby"
                )
                job_id = await rt.add("stepped", n=2, key="s")
                await expect(row(page, job_id).locator(".status")).to_have_text("RUNNING")
                steps.allow("s")
                bar = row(page, job_id).get_by_role("progressbar")
                await expect(bar).to_have_attribute("aria-valuenow", "50")
                main = pool_row(page, "main")
                await expect(main.locator('[data-role="running"]')).to_have_text("1 / 2")
                await page.get_by_role("button", name="Pause pool main").click()
                await expect(main.locator(".badge")).to_have_text("paused")
                assert rt.pools["main"].paused  # the owner's pool, not the standby's
                steps.allow("s")
                await expect(row(page, job_id).locator(".status")).to_have_text("SUCCESS")


@in_browser
async def test_the_form_checks_the_schema_and_renders_docstring_literals(
    rt: Runtime, steps: Steps, server: Serve, browser: Any
) -> None:
    async with server(create_app(rt)) as base, dashboard(browser, f"{base}/dashboard") as page:
        await page.get_by_role("button", name="New job").click()
        dialog = page.get_by_role("dialog")
        await dialog.get_by_label("Task").select_option("greet")
        info = dialog.locator("#form-task-info")
        await expect(info.locator("code")).to_have_text(["to", "times"])
        assert "``" not in (await info.inner_text())
        await dialog.get_by_role("button", name="Add job").click()  # "to" left empty
        await expect(dialog.locator("#form-error")).to_have_text("to: required")
        await expect(dialog.locator("#param-to")).to_have_attribute("aria-invalid", "true")
        await expect(dialog).to_be_visible()
        assert (await rt.jobs()).jobs == []  # nothing was added
        await dialog.locator("#param-to").fill("ann")
        await dialog.get_by_role("button", name="Add job").click()
        await expect(dialog).to_be_hidden()
        [job] = (await rt.jobs()).jobs
        assert job.kwargs == {"to": "ann"}
        steps.allow("ann")


@in_browser
async def test_the_form_counts_a_strings_length_in_characters_as_the_schema_does(
    db_path: Path, steps: Steps, server: Serve, browser: Any
) -> None:
    """JSON Schema's ``maxLength`` counts characters (code points); the browser's
    ``maxlength`` counts UTF-16 units, so three emoji (six units) were cut to one
    and refused. The form checks the schema's lengths itself."""
    rt = make_runtime(db_path, steps)
    label = {"type": "string", "minLength": 2, "maxLength": 3}
    schema = {"type": "object", "properties": {"label": label}, "required": ["label"]}

    @rt.task(pool="batch", parameters=schema)
    async def tag(job: JobContext, label: str) -> str:
        return label

    async with rt, server(create_app(rt)) as base:
        async with dashboard(browser, f"{base}/dashboard") as page:
            await page.get_by_role("button", name="New job").click()
            dialog = page.get_by_role("dialog")
            await dialog.get_by_label("Task").select_option("tag")
            field = dialog.locator("#param-label")
            add = dialog.get_by_role("button", name="Add job")
            for text, error in (("🙂", "at least 2"), ("🙂🙂🙂🙂", "at most 3")):
                await field.fill(text)
                await add.click()
                await expect(dialog.locator("#form-error")).to_have_text(
                    f"label: {error} characters"
                )
            assert (await rt.jobs()).jobs == []
            await field.fill("🙂🙂🙂")
            await expect(field).to_have_value("🙂🙂🙂")
            await add.click()
            await expect(dialog).to_be_hidden()
            [job] = (await rt.jobs()).jobs
            assert job.kwargs == {"label": "🙂🙂🙂"}


@in_browser
async def test_the_form_refuses_an_integer_it_cannot_send_exactly(
    db_path: Path, steps: Steps, server: Serve, browser: Any
) -> None:
    """A browser's numbers hold integers exactly up to 2**53 - 1: the form rounded a
    bigger one (9007199254740993 was added as ...992) without a word. It refuses
    it, in an integer field and in JSON, and sends the largest exact one as typed."""
    rt = make_runtime(db_path, steps)
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "extra": {"type": "object"}},
        "required": ["n"],
    }

    @rt.task(pool="batch", parameters=schema)
    async def count(job: JobContext, n: int, extra: dict[str, Any] | None = None) -> int:
        return n

    async with rt, server(create_app(rt)) as base:
        async with dashboard(browser, f"{base}/dashboard") as page:
            await page.get_by_role("button", name="New job").click()
            dialog = page.get_by_role("dialog")
            await dialog.get_by_label("Task").select_option("count")
            add = dialog.get_by_role("button", name="Add job")
            error = dialog.locator("#form-error")
            await dialog.locator("#param-n").fill("9007199254740993")
            await add.click()
            await expect(error).to_have_text(re.compile(r"^n: beyond the integers a browser"))
            await dialog.locator("#param-n").fill("9007199254740991")
            await dialog.locator("#param-extra").fill('{"id": 9007199254740993}')
            await add.click()
            await expect(error).to_have_text(
                re.compile(r"^extra: 9007199254740993 is beyond the integers")
            )
            assert (await rt.jobs()).jobs == []
            await dialog.locator("#param-extra").fill('{"id": 9007199254740991}')
            await add.click()
            await expect(dialog).to_be_hidden()
            [job] = (await rt.jobs()).jobs
            assert job.kwargs == {"n": 9007199254740991, "extra": {"id": 9007199254740991}}


@in_browser
async def test_rows_say_why_jobs_wait_and_show_only_their_own_errors(
    rt: Runtime, steps: Steps, server: Serve, browser: Any
) -> None:
    async with server(create_app(rt)) as base, dashboard(browser, f"{base}/dashboard") as page:
        delayed = await rt.enqueue("stepped", kwargs={"n": 1, "key": "d"}, delay=600)
        await expect(row(page, delayed).locator(".when")).to_have_text(
            re.compile(r"runs in (9|10) min")
        )
        # Attempt 1 failed; attempt 2 runs: the row shows no error of attempt 1.
        twice = await rt.add("greet", to="twice")
        await expect(row(page, twice).locator(".status")).to_have_text("RUNNING")
        await wait_until(lambda: rt.live.states[twice].attempts == 2)
        await expect(row(page, twice).locator(".sub")).to_have_count(0)
        # A cancelled job's bar is not drawn in the running colour.
        moving = await rt.add("stepped", n=4, key="m")
        steps.allow("m")
        await expect(row(page, moving).get_by_role("progressbar")).to_have_attribute(
            "aria-valuenow", "25"
        )
        await page.get_by_role("button", name=f"Cancel job {moving}").click()
        bar = row(page, moving).get_by_role("progressbar")
        await expect(bar).to_have_class(re.compile(r"\bcancelled\b"))
        # The toast of that action is clear of the Duration column.
        toast = page.locator(".toast").first
        await expect(toast).to_be_visible()
        tbox = await toast.bounding_box()
        dbox = await page.locator("#jobs thead th").nth(7).bounding_box()
        assert tbox is not None and dbox is not None
        assert (
            tbox["x"] + tbox["width"] <= dbox["x"]
            or tbox["x"] >= dbox["x"] + dbox["width"]
            or (tbox["y"] + tbox["height"] <= dbox["y"])
        )
        steps.allow("twice")
        await rt.wait(twice, timeout=5)


@in_browser
async def test_rows_say_what_holds_a_job_back_and_pools_show_their_rate(
    rt: Runtime, steps: Steps, server: Serve, browser: Any
) -> None:
    holder = await rt.pool("main").add(_with(rt, "stepped", lock="acct:9"), n=1, key="h")
    await wait_until(lambda: holder in rt.live.states and rt.live.states[holder].attempts == 1)
    held = await rt.pool("main").add(_with(rt, "stepped", lock="acct:9"), n=1, key="h2")
    await wait_until(lambda: rt.live.states[held].waiting_reason == "locked")
    await rt.change_pool("batch", rate="2/m")
    await rt.pool("batch").add("boom")  # the burst: one
    limited = await rt.pool("batch").add("boom")
    await wait_until(lambda: rt.live.states[limited].waiting_reason == "rate_limited")
    async with server(create_app(rt)) as base, dashboard(browser, f"{base}/dashboard") as page:
        await expect(row(page, held).locator(".held")).to_have_text("locked: acct:9")
        await expect(pool_row(page, "batch").locator('[data-role="rate-limit"]')).to_have_text(
            "≤ 2/m"
        )
        await expect(row(page, limited).locator(".held")).to_have_text(
            re.compile(r"^rate limited, next slot in \d+\.\d s$")
        )
        await page.locator(f'#jobs a[href$="/dashboard/jobs/{held}"]').click()
        await expect(page.locator("#job-facts")).to_contain_text("Waits for")
        await expect(page.locator("#job-facts")).to_contain_text("locked: acct:9")
    steps.allow("h")
    steps.allow("h2")
    assert (await rt.wait(held, timeout=5)).status.value == "SUCCESS"


def _with(rt: Runtime, task: str, **options: Any) -> Any:
    from taskrt.definitions import TaskCall, checked_options

    return TaskCall(rt.tasks[task], checked_options(options))


@in_browser
async def test_a_jobs_timeline_is_what_happened_in_one_clock_format(
    rt: Runtime, steps: Steps, server: Serve, browser: Any
) -> None:
    twice = await rt.add("greet", to="twice")  # attempt 1 fails, retried by policy
    steps.allow("twice")
    await rt.wait(twice, timeout=5)
    failed = await rt.add("boom")
    await rt.wait(failed, timeout=5)
    async with server(create_app(rt)) as base:
        async with dashboard(browser, f"{base}/dashboard/jobs/{twice}") as page:
            timeline = page.locator("#job-timeline li")
            await expect(timeline.locator(".kind")).to_have_text(
                ["added", "started", "error", "retrying", "started", "success", "success"]
            )
            await expect(timeline.nth(3)).to_contain_text("next attempt at")
            for text in await timeline.locator("time").all_inner_texts():
                assert re.fullmatch(r"\d{2}:\d{2}:\d{2}\.\d{3}", text), text
            for title in await timeline.locator("time").evaluate_all("ts => ts.map(t => t.title)"):
                assert "AM" not in title and "PM" not in title, title
        async with dashboard(browser, f"{base}/dashboard/jobs/{failed}") as page:
            await page.get_by_role("button", name=f"Retry job {failed}").click()
            kinds = page.locator("#job-timeline .kind")
            await expect(kinds).to_contain_text(["retrying"])
            await expect(page.locator("#job-timeline")).to_contain_text("retry requested")
            assert "delayed" not in await kinds.all_inner_texts()
            await expect(page.locator("#job-status")).to_have_text("FAILURE")
            await page.reload()
            await page.locator("body[data-ready=true]").wait_for()
            await expect(page.locator("#job-timeline")).to_contain_text("retry requested")


@in_browser
async def test_retry_every_filtered_failure_and_run_a_delayed_job_now(
    rt: Runtime, steps: Steps, server: Serve, browser: Any
) -> None:
    failed = [await rt.pool("batch").add("boom", path=f"/srv/{i}") for i in range(3)]
    for job_id in failed:
        await rt.wait(job_id, timeout=5)
    async with server(create_app(rt)) as base, dashboard(browser, f"{base}/dashboard") as page:
        await page.locator("#filters [name=status]").select_option("FAILURE")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.locator("#jobs tr.job")).to_have_count(3)
        asked: list[str] = []

        async def accept(dialog: Any) -> None:
            asked.append(dialog.message)
            await dialog.accept()

        page.on("dialog", accept)
        await page.get_by_role("button", name="Retry all…").click()
        await expect(page.locator(".toast", has_text="3 jobs queued again")).to_be_visible()
        assert asked == ["Retry 3 jobs matching status FAILURE?"]
        for job_id in failed:
            assert (await rt.wait(job_id, timeout=5)).attempts == 2  # boom fails again

        await page.get_by_role("button", name="Clear").click()
        delayed = await rt.enqueue("stepped", kwargs={"n": 1, "key": "now"}, delay=600)
        await page.locator("#filters [name=status]").select_option("SCHEDULED")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.locator("#jobs tr.job")).to_have_count(1)
        await page.get_by_role("button", name=f"Run job {delayed} now").click()
        await wait_until(lambda: rt.live.states[delayed].status == "RUNNING")
        steps.allow("now")
        assert (await rt.wait(delayed, timeout=5)).status == "SUCCESS"


@in_browser
async def test_the_api_page_renders_the_document_and_tries_operations_offline(
    rt: Runtime, steps: Steps, server: Serve, browser: Any
) -> None:
    async with server(create_app(rt)) as base:
        async with dashboard(browser, f"{base}/dashboard") as page:
            await page.get_by_role("link", name="API", exact=True).click()
            await page.locator("body[data-ready=true]").wait_for()
            asked: list[str] = []
            page.on("request", lambda request: asked.append(request.url))
            await expect(page.locator("#api-title")).to_have_text("taskrt")
            pools = page.locator("details#list_pools")
            await pools.locator("summary").click()
            await pools.get_by_role("button", name="Send").click()
            await expect(pools.get_by_role("status")).to_have_text("200 OK")
            await expect(pools.locator("pre.code")).to_contain_text('"name": "main"')
            add = page.locator("details#add_job")
            await add.locator("summary").click()
            body = add.get_by_label("Body of POST /jobs")
            await body.fill('{"task": "stepped", "kwargs": {"n": 1, "key": "api"}}')
            await add.get_by_role("button", name="Send").click()
            await expect(add.get_by_role("status")).to_have_text("201 Created")
            [added] = (await rt.jobs()).jobs
            job = page.locator("details#get_job")
            await job.locator("summary").click()
            await job.get_by_label("job_id of GET /jobs/{job_id}").fill(str(added.id))
            await job.get_by_role("button", name="Send").click()
            await expect(job.get_by_role("status")).to_have_text("200 OK")
            await expect(job.locator("pre.code")).to_contain_text('"task": "stepped"')
            steps.allow("api")
            assert all(url.startswith(base) for url in asked), asked  # nothing from elsewhere


@in_browser
async def test_the_history_chart_survives_a_restart(
    rt: Runtime, steps: Steps, db_path: Path, server: Serve, browser: Any
) -> None:
    for key in ("h1", "h2"):
        steps.allow(key)
        await rt.wait(await rt.add("stepped", n=1, key=key), timeout=5)
    for _ in range(3):
        await rt.wait(await rt.pool("batch").add("boom"), timeout=5)
    await rt.stop()  # a restart: what the chart shows comes from the database
    again = make_runtime(db_path, steps)
    async with again, server(create_app(again)) as base:
        async with dashboard(browser, f"{base}/dashboard") as page:
            chart = page.locator("#history")
            await expect(chart).to_have_attribute("data-succeeded", "2")
            await expect(chart).to_have_attribute("data-failed", "3")
            await expect(chart.locator("rect")).not_to_have_count(0)
            await expect(page.locator("#history-totals")).to_have_text("2 succeeded · 3 failed")
            await page.get_by_role("button", name="Last 7 days").click()
            await expect(page.get_by_role("button", name="Last 7 days")).to_have_attribute(
                "aria-pressed", "true"
            )
            await expect(chart).to_have_attribute("data-failed", "3")


@in_browser
async def test_a_finished_job_is_deleted_from_its_page_and_from_the_counts(
    rt: Runtime, server: Serve, browser: Any
) -> None:
    failed = await rt.pool("batch").add("boom")
    await rt.wait(failed, timeout=5)
    async with server(create_app(rt)) as base:
        async with dashboard(browser, f"{base}/dashboard/jobs/{failed}") as page:
            await expect(page.locator("#count-FAILURE")).to_have_text("1")
            page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
            await page.get_by_role("button", name=f"Delete job {failed}").click()
            await expect(page.locator(".toast", has_text=f"Job #{failed} deleted")).to_be_visible()
            await expect(page).to_have_url(f"{base}/dashboard")
            assert await rt.count() == 0
            # A purge sends no event: the page reads the counts again.
            await expect(page.locator("#count-FAILURE")).to_have_text("0")
            await expect(page.locator("#count-all")).to_have_text("0")


@in_browser
async def test_a_missing_job_has_a_plain_page(rt: Runtime, server: Serve, browser: Any) -> None:
    async with server(create_app(rt)) as base:
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await page.goto(f"{base}/dashboard/jobs/999")  # the page's own 404 fetch is expected
            await expect(page.locator("#job-facts")).to_contain_text("There is no job #999")
            await expect(page.locator("#job-body")).to_be_hidden()
        finally:
            await context.close()


@in_browser
async def test_at_390_px_the_actions_stay_on_screen(
    rt: Runtime, steps: Steps, server: Serve, browser: Any
) -> None:
    async with server(create_app(rt)) as base:
        async with dashboard(browser, f"{base}/dashboard", width=390) as page:
            job_id = await rt.add("stepped", n=1, key="narrow")
            cancel = page.get_by_role("button", name=f"Cancel job {job_id}")
            pause = page.get_by_role("button", name="Pause pool main")
            for button in (cancel, pause):
                await expect(button).to_be_visible()
                box = await button.bounding_box()
                assert box is not None and box["x"] + box["width"] <= 390, box
            steps.allow("narrow")


@in_browser
async def test_schedules_run_now_pause_and_resume_from_the_page(
    rt: Runtime, steps: Steps, server: Serve, browser: Any
) -> None:
    async with server(create_app(rt)) as base, dashboard(browser, f"{base}/dashboard") as page:
        nightly = page.locator('#schedules tr[data-schedule="nightly"]')
        await expect(nightly.locator(".next-fire")).to_contain_text("in ")

        await page.get_by_role("button", name="Run schedule nightly now").click()
        job = page.locator("#jobs tr.job", has_text="stepped")
        await expect(job).to_have_count(1)
        steps.allow("nightly")
        await expect(job.locator(".status")).to_have_text("SUCCESS")
        job_id = int(await job.get_attribute("data-id"))
        assert (await rt.get(job_id)).metadata["schedule"] == "nightly"

        await page.get_by_role("button", name="Pause schedule nightly").click()
        await expect(nightly.locator(".badge")).to_have_text("paused")
        assert (await rt.schedules.get("nightly")).paused
        await page.get_by_role("button", name="Resume schedule nightly").click()
        await expect(nightly.locator(".next-fire")).to_contain_text("in ")
        assert not (await rt.schedules.get("nightly")).paused

        # The schedule's "jobs" link filters on its metadata.
        await nightly.get_by_role("link", name="jobs").click()
        await expect(page.locator("#filters [name=q]")).to_have_value("schedule=nightly")
        await expect(page.locator("#jobs tr.job")).to_have_count(1)


@in_browser
async def test_the_job_page_shows_arguments_attempts_tracebacks_and_a_live_timeline(
    rt: Runtime, steps: Steps, server: Serve, browser: Any
) -> None:
    failed = await rt.add("boom", path="/srv/reports")
    await rt.wait(failed, timeout=5)
    running = await rt.add("stepped", n=2, key="t")
    app = create_app(rt, auth=operator)
    async with server(app) as base:
        cookie = [{"name": "session", "value": SESSION, "url": base}]
        async with dashboard(browser, f"{base}/dashboard/jobs/{failed}", cookies=cookie) as page:
            await expect(page.locator("#job-status")).to_have_text("FAILURE")
            await expect(page.locator("#job-args")).to_contain_text('"path": "/srv/reports"')
            await expect(page.locator("#job-outcome")).to_contain_text("disk holding /srv/reports")
            attempt = page.locator("#job-attempts tr.attempt")
            await expect(attempt).to_have_count(1)
            await attempt.locator("summary", has_text="Traceback").click()
            await expect(attempt.locator("pre.traceback")).to_contain_text("RuntimeError: boom")
            await expect(page.locator("#tracebacks-note")).to_be_hidden()
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(
                path=str(ARTIFACTS / "dashboard-job.png"), full_page=True, animations="disabled"
            )

            # Another job, through the page's own links: its timeline moves live.
            await page.get_by_role("link", name="← All jobs").click()
            await page.locator(f'#jobs a[href$="/dashboard/jobs/{running}"]').click()
            await expect(page).to_have_url(f"{base}/dashboard/jobs/{running}")
            await expect(page.locator("#job-status")).to_have_text("RUNNING")
            timeline = page.locator("#job-timeline")
            steps.allow("t")
            await expect(timeline).to_contain_text("[part 1] 1 / 2 · step 1 of 2")
            steps.allow("t")
            await expect(page.locator("#job-status")).to_have_text("SUCCESS")
            await expect(timeline.locator(".kind.success")).to_have_count(1)
            await expect(page.locator("#job-outcome")).to_contain_text('"steps": 2')
            await expect(page.locator("#job-attempts .badge.success")).to_have_count(1)

        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/dashboard")).status_code == 401
            assert (await client.get("/events")).status_code == 401


@in_browser
async def test_mounted_under_a_prefix_every_request_carries_it(
    db_path: Path, steps: Steps, server: Serve, browser: Any
) -> None:
    rt = make_runtime(db_path, steps)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with rt:
            yield

    host = Starlette(routes=[Mount("/ops", app=create_app(rt))], lifespan=lifespan)
    async with server(host) as base, dashboard(browser, f"{base}/ops/dashboard") as page:
        seen: list[str] = []
        page.on("request", lambda request: seen.append(request.url))
        await page.get_by_role("button", name="Pause pool batch").click()
        await expect(pool_row(page, "batch").locator(".badge")).to_have_text("paused")
        job_id = await rt.add("stepped", n=1, key="m")
        await page.locator(f'#jobs a[href="/ops/dashboard/jobs/{job_id}"]').click()
        await expect(page.locator("#job-status")).to_have_text("RUNNING")
        steps.allow("m")
        await expect(page.locator("#job-status")).to_have_text("SUCCESS")
        assert seen and all(url.startswith(f"{base}/ops/") for url in seen), seen


@in_browser
async def test_with_the_token_a_page_whose_cookie_is_gone_goes_to_the_login_form(
    rt: Runtime, server: Serve, browser: Any
) -> None:
    """Sign in through the form, lose the cookie (it expired), and the next
    request sends the page to the form, under the mount's prefix (dashboard.js
    note 5), instead of a page full of 401s."""
    token = "dashboard-token-0123456789"
    host = Starlette(routes=[Mount("/ops", app=create_app(rt, token=token))])
    async with server(host) as base:
        context = await browser.new_context(viewport={"width": 1200, "height": 900})
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            await page.goto(f"{base}/ops/dashboard")
            await expect(page).to_have_url(f"{base}/ops/login")
            await page.get_by_label("Access token").fill(token)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page).to_have_url(f"{base}/ops/dashboard")
            await page.locator("body[data-ready=true][data-live=true]").wait_for(timeout=10_000)
            await expect(page.locator("#banner")).to_be_hidden()

            await context.clear_cookies()  # as if it had expired
            await page.locator('a.count[data-status="FAILURE"]').click()  # GET /jobs: 401
            await expect(page).to_have_url(f"{base}/ops/login")
            await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
            assert errors == []
        finally:
            await context.close()


async def seed(rt: Runtime, n: int) -> float:
    """``n`` finished jobs straight into the table, in one transaction; returns seconds."""
    began = time.perf_counter()
    now = time.time() - n
    statuses = ["SUCCESS"] * 7 + ["FAILURE"] * 2 + ["CANCELLED"]
    rows = [
        (
            ("stepped", "boom")[i % 2],
            ("main", "batch")[i % 2],
            statuses[i % 10],
            json.dumps({"tenant": f"t{i % 100}"}),
            now + i,
            now + i,
            now + i,
            now + i + 0.25,
        )
        for i in range(n)
    ]
    async with rt.transaction() as tx:
        await tx.executemany(
            "INSERT INTO jobs (task, pool, status, metadata, created_at, run_at, started_at, "
            "finished_at, attempts, max_attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, 1)",
            rows,
        )
        # Rows written behind taskrt's back: its live counts by status are set to match.
        await tx.execute(
            "INSERT INTO job_counts (pool, status, n) "
            "SELECT pool, status, count(*) FROM jobs GROUP BY pool, status "
            "ON CONFLICT (pool, status) DO UPDATE SET n = excluded.n"
        )
    return time.perf_counter() - began


@in_browser
async def test_100k_jobs_list_in_pages_fast_and_the_page_renders_quickly(
    rt: Runtime, server: Serve, browser: Any
) -> None:
    seconds = await seed(rt, 100_000)
    assert seconds < 10
    figures: dict[str, Any] = {"seed_100k_s": round(seconds, 2)}
    async with server(create_app(rt)) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            # (query, bound in seconds). Without a status, a pool filter sorts all of
            # the pool's jobs (the index is pool, status, id): looser, and reported.
            for query, bound in (
                ("status=SUCCESS", 0.2),
                ("status=FAILURE", 0.2),
                ("status=CANCELLED", 0.2),
                ("pool=batch&status=FAILURE", 0.2),
                ("task=boom&status=FAILURE", 0.2),
                ("metadata.tenant=t7", 0.2),
                ("", 0.2),
                ("pool=batch", 1.0),
            ):
                cursor: str | None = None
                times = []
                for _ in range(5):  # the first five pages, following the cursor
                    url = f"/jobs?{query}&limit=50" + (f"&cursor={cursor}" if cursor else "")
                    # Each page is timed as the best of three fetches: a slow query is
                    # slow every time, while one stall of a shared machine (a collection,
                    # another process) is not the listing's.
                    tries = []
                    for _ in range(3):
                        began = time.perf_counter()
                        reply = await client.get(url)
                        tries.append(time.perf_counter() - began)
                        assert reply.status_code == 200, reply.text
                    times.append(min(tries))
                    page_ = reply.json()
                    assert len(page_["jobs"]) == 50
                    cursor = page_["cursor"]
                figures[f"GET /jobs?{query or 'all'} (ms, worst of 5 pages, each best of 3)"] = (
                    round(1000 * max(times), 1)
                )
                assert max(times) < bound, (query, times)
            stats = (await client.get("/stats")).json()
            assert stats["total"] == 100_000

        for path in ("/dashboard", "/dashboard?status=FAILURE"):
            async with dashboard(browser, f"{base}{path}") as page:
                await expect(page.locator("#count-all")).to_have_text("100,000")
                await expect(page.locator("#jobs tr.job")).to_have_count(50)
                first_render = await page.evaluate("window.taskrtDashboard.firstRenderMs")
                list_ms = await page.evaluate("window.taskrtDashboard.lastListMs")
                figures[f"browser {path}: first render (ms from navigation)"] = round(first_render)
                figures[f"browser {path}: listing fetch+render (ms)"] = round(list_ms, 1)
                assert first_render < 2000
                await page.get_by_role("button", name="Older ›").click()
                await expect(page.locator("#page-info")).to_have_text("page 2")
                await expect(page.locator("#jobs tr.job")).to_have_count(50)
                list_ms = await page.evaluate("window.taskrtDashboard.lastListMs")
                figures[f"browser {path}: next page, fetch+render (ms)"] = round(list_ms, 1)
                assert list_ms < 1000
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "dashboard-perf.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


@in_browser
async def test_where_every_node_runs_jobs_the_page_names_the_nodes_and_a_jobs_node(
    tmp_path: Path, server: Serve, browser: Any
) -> None:
    import pg_server

    url = f"{pg_server.require()}?schema={pg_server.fresh_schema(tmp_path)}"
    rt = Runtime(url)  # mode "nodes", PostgreSQL's default

    @rt.task
    async def hello(job: JobContext) -> str:
        return "hi"

    async with rt:
        assert rt.nodes is not None
        job_id = await rt.pool("default").add(hello)
        info = await rt.wait(job_id, timeout=10)
        assert info.node == rt.nodes.node  # which node ran it, in the API too
        async with (
            server(create_app(rt)) as base,
            dashboard(browser, f"{base}/dashboard/jobs/{job_id}") as page,
        ):
            owner = page.locator("#owner")
            await expect(owner).to_have_text("1 node runs the jobs")
            await expect(owner).to_have_attribute("title", re.compile(re.escape(rt.nodes.node)))
            await expect(page.locator("#job-facts")).to_contain_text(rt.nodes.node)
            async with httpx.AsyncClient(base_url=base) as client:
                assert (await client.get(f"/jobs/{job_id}")).json()["node"] == rt.nodes.node


# -- workflows ------------------------------------------------------------------------------------


def sig(rt: Runtime, task: str, *args: Any, **kwargs: Any) -> Any:
    """``task.s(*args, **kwargs)`` for a task of ``make_runtime``."""
    return _with(rt, task).s(*args, **kwargs)


def box(page: Any, job_id: int) -> Any:
    return page.locator(f'#wf-graph .wf-job[data-id="{job_id}"]')


async def bounds(locator: Any) -> list[dict[str, float]]:
    found = []
    for item in await locator.all():
        rect = await item.bounding_box()
        assert rect is not None
        found.append(rect)
    return found


@in_browser
async def test_a_chain_is_a_row_of_boxes_that_moves_live_from_the_workflows_stream(
    rt: Runtime, steps: Steps, server: Serve, browser: Any
) -> None:
    flow = await rt.chain(sig(rt, "hop"), sig(rt, "hop", key="mid"), sig(rt, "hop"))
    first, middle, last = flow.jobs
    async with server(create_app(rt)) as base:
        async with dashboard(browser, f"{base}/dashboard/workflows/{flow.id}") as page:
            boxes = page.locator("#wf-graph .wf-job")
            await expect(boxes).to_have_count(3)
            ids = await boxes.evaluate_all("bs => bs.map(b => Number(b.dataset.id))")
            assert ids == [first, middle, last]
            await expect(boxes.locator(".status")).to_have_text(["SUCCESS", "RUNNING", "WAITING"])
            await expect(box(page, middle).get_by_role("progressbar")).to_have_attribute(
                "aria-valuenow", "50"
            )
            await expect(box(page, last).locator(".wf-note")).to_have_text("waits for its parents")
            await expect(box(page, first).get_by_role("progressbar")).to_be_hidden()
            # A row: one height, left to right, and a line from each step to the next.
            rects = await bounds(boxes)
            assert len({round(r["y"]) for r in rects}) == 1, rects
            assert rects[0]["x"] + rects[0]["width"] < rects[1]["x"], rects
            assert rects[1]["x"] + rects[1]["width"] < rects[2]["x"], rects
            lines = await page.locator("#wf-graph path").evaluate_all(
                "ps => ps.map(p => [+p.dataset.to, +p.dataset.from, p.getAttribute('class')])"
            )
            assert sorted(lines) == [[middle, first, "done"], [last, middle, ""]]
            # The header: status, progress (1 finished + half of one, of 3) and counts.
            await expect(page.locator("#wf-title")).to_have_text(f"Workflow #{flow.id}")
            await expect(page.locator("#wf-status")).to_have_text("RUNNING")
            overall = page.get_by_role("progressbar", name=f"Progress of workflow {flow.id}")
            await expect(overall).to_have_attribute("aria-valuenow", "50")
            await expect(page.locator("#wf-counts .badge")).to_have_text(
                ["1 WAITING", "1 RUNNING", "1 SUCCESS"]
            )
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(
                path=str(ARTIFACTS / "dashboard-workflow.png"), animations="disabled"
            )
            probe = "window.taskrtDashboard"
            draws = await page.evaluate(f"{probe}.workflowDraws")

            steps.allow("mid")  # the gate opens: the rest moves with the stream's events
            await expect(boxes.locator(".status")).to_have_text(["SUCCESS"] * 3)
            await expect(page.locator("#wf-status")).to_have_text("SUCCESS")
            await expect(overall).to_have_attribute("aria-valuenow", "100")
            await expect(page.locator("#wf-counts .badge")).to_have_text(["3 SUCCESS"])
            await expect(page.locator(f'#wf-graph path[data-from="{middle}"]')).to_have_class(
                "done"
            )
            await expect(page.locator("#wf-note")).to_have_text("finished")  # frame id "end"
            assert await page.evaluate(f"{probe}.workflowDraws") == draws  # not redrawn
            assert await page.evaluate(f"{probe}.loads") == 1  # nor reloaded
    assert rt.broker.subscribers == 0


@in_browser
async def test_a_groups_members_stand_in_one_column_and_its_callback_after_them(
    rt: Runtime, steps: Steps, server: Serve, browser: Any
) -> None:
    flow = await rt.group([sig(rt, "hop", key="g") for _ in range(3)]).then(sig(rt, "hop"))
    *members, callback = flow.jobs
    async with server(create_app(rt)) as base:
        # The dashboard's own hash form of the address, as for a job.
        async with dashboard(browser, f"{base}/dashboard#/workflows/{flow.id}") as page:
            await expect(page).to_have_url(f"{base}/dashboard/workflows/{flow.id}")
            boxes = page.locator("#wf-graph .wf-job")
            await expect(boxes).to_have_count(4)
            for job_id in members:
                await expect(box(page, job_id).locator(".status")).to_have_text("RUNNING")
            await expect(box(page, callback).locator(".wf-note")).to_have_text(
                "waits for its parents"
            )
            places = await boxes.evaluate_all(
                "bs => bs.map(b => [Number(b.dataset.id), b.dataset.col, b.dataset.row])"
            )
            assert places == [
                *([job_id, "0", str(row)] for row, job_id in enumerate(members)),
                [callback, "1", "0"],
            ]
            column = await bounds(page.locator("#wf-graph .wf-job[data-col='0']"))
            [after] = await bounds(box(page, callback))
            assert len({round(r["x"]) for r in column}) == 1, column
            assert sorted(r["y"] for r in column) == [r["y"] for r in column]
            assert column[0]["y"] < after["y"] < column[-1]["y"]  # centred on the column
            assert after["x"] > column[0]["x"] + column[0]["width"]
            await expect(page.locator("#wf-graph path")).to_have_count(3)

            # Cancel it from its page: every box turns CANCELLED with the events.
            page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
            await page.get_by_role("button", name=f"Cancel workflow {flow.id}").click()
            await expect(boxes.locator(".status")).to_have_text(["CANCELLED"] * 4)
            await expect(page.locator("#wf-status")).to_have_text("CANCELLED")
            await expect(
                page.get_by_role("button", name=f"Cancel workflow {flow.id}")
            ).to_have_count(0)
    assert {(await rt.get(job_id)).status.value for job_id in flow.jobs} == {"CANCELLED"}


@in_browser
async def test_a_workflow_jobs_page_links_to_the_workflow_and_its_boxes_link_back(
    rt: Runtime, steps: Steps, server: Serve, browser: Any
) -> None:
    flow = await rt.chain(sig(rt, "hop"), sig(rt, "hop"))
    await rt.wait(flow.jobs[-1], timeout=5)
    plain = await rt.add("hop")
    await rt.wait(plain, timeout=5)
    async with server(create_app(rt)) as base:
        async with dashboard(browser, f"{base}/dashboard/jobs/{flow.jobs[1]}") as page:
            facts = page.locator("#job-facts")
            await facts.get_by_role("link", name=f"workflow {flow.id}").click()
            await expect(page).to_have_url(f"{base}/dashboard/workflows/{flow.id}")
            await expect(page.locator("#workflow-view")).to_be_visible()
            await expect(page.locator("#job-view")).to_be_hidden()
            await expect(page.locator("#wf-graph .wf-job .status")).to_have_text(["SUCCESS"] * 2)
            await expect(page.locator("#wf-note")).to_have_text("finished")
            await box(page, flow.jobs[0]).click()
            await expect(page).to_have_url(f"{base}/dashboard/jobs/{flow.jobs[0]}")
            await expect(page.locator("#job-title")).to_have_text(f"Job #{flow.jobs[0]} · hop")
            await expect(facts.get_by_role("link", name=f"workflow {flow.id}")).to_be_visible()
            await page.go_back()
            await expect(page.locator("#wf-graph .wf-job")).to_have_count(2)
            await page.goto(f"{base}/dashboard/jobs/{plain}")
            await page.locator("body[data-ready=true]").wait_for()
            await expect(page.locator("#job-title")).to_have_text(f"Job #{plain} · hop")
            await expect(facts).not_to_contain_text("Workflow")
        # A job that is no workflow: the page says so (its stream's 404 is expected).
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await page.goto(f"{base}/dashboard/workflows/{plain}")
            await expect(page.locator("#wf-counts")).to_contain_text(
                f"There is no workflow #{plain}"
            )
            await expect(page.locator("#wf-panel")).to_be_hidden()
        finally:
            await context.close()
        async with httpx.AsyncClient(base_url=base) as client:
            for impossible in ("0", str(2**63)):
                assert (await client.get(f"/dashboard/workflows/{impossible}")).status_code == 404


@in_browser
async def test_a_job_held_for_its_parents_says_so_instead_of_a_time_in_year_9999(
    rt: Runtime, steps: Steps, server: Serve, browser: Any
) -> None:
    # Its run_at is the placeholder BLOCKED_AT (9999-12-31T23:59:59Z), no time it runs at.
    flow = await rt.chain(sig(rt, "hop", key="held"), sig(rt, "hop"))
    child = flow.jobs[1]
    async with server(create_app(rt)) as base:
        async with dashboard(browser, f"{base}/dashboard/jobs/{child}") as page:
            runs_at = page.locator("#job-facts div", has_text="Runs at").locator("dd")
            await expect(runs_at).to_have_text("waits for its parents")
            await expect(page.locator("#job-timeline .kind")).to_have_text(["added"])
            await expect(page.locator("#job-view")).not_to_contain_text("9999")
        steps.allow("held")
        assert (await rt.wait(child, timeout=5)).status is JobStatus.SUCCESS


@in_browser
async def test_after_a_reconnect_the_workflow_is_redrawn_from_its_new_snapshot(
    rt: Runtime, steps: Steps, server: Serve, browser: Any
) -> None:
    """The server goes away mid-workflow; what happened meanwhile arrives as the
    snapshot that starts the reconnected stream (workflows note 3: no resume)."""
    flow = await rt.chain(sig(rt, "hop", key="r"), sig(rt, "hop"))
    app = create_app(rt)
    context = await browser.new_context()
    errors: list[str] = []
    try:
        page = await context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        async with server(app) as base:
            await page.goto(f"{base}/dashboard/workflows/{flow.id}")
            await page.locator("body[data-ready=true][data-live=true]").wait_for()
            await expect(box(page, flow.jobs[0]).locator(".status")).to_have_text("RUNNING")
            await expect(page.locator("#wf-note")).to_have_text("live")
        # Refused while the server is down (the browser keeps trying): the jobs move on.
        await expect(page.locator("#wf-note")).to_have_text("reconnecting…")
        steps.allow("r")
        await rt.wait(flow.jobs[-1], timeout=5)
        async with server(app):
            statuses = page.locator("#wf-graph .wf-job .status")
            await expect(statuses).to_have_text(["SUCCESS", "SUCCESS"], timeout=10_000)
            await expect(page.locator("#wf-note")).to_have_text("finished")
            assert await page.evaluate("window.taskrtDashboard.workflowDraws") == 2
        assert errors == []
    finally:
        await context.close()


@in_browser
async def test_a_group_of_1000_draws_200_boxes_and_a_count_and_keeps_up_with_the_events(
    rt: Runtime, server: Serve, browser: Any
) -> None:
    await rt.change_pool("batch", paused=True)
    flow = await rt.group([sig(rt, "hop", i) for i in range(1000)]).then(sig(rt, "hop"))
    async with server(create_app(rt)) as base:
        async with dashboard(browser, f"{base}/dashboard/workflows/{flow.id}") as page:
            await expect(page.locator("#wf-graph .wf-job[data-col='0']")).to_have_count(200)
            await expect(page.locator("#wf-graph .wf-more")).to_have_text("+800 more")
            await expect(box(page, flow.jobs[-1])).to_have_attribute("data-col", "1")
            await expect(page.locator("#wf-counts .badge")).to_have_text(["1,001 WAITING"])
            assert await page.evaluate("window.taskrtDashboard.lastWorkflowDrawMs") < 1000
            await rt.change_pool("batch", paused=False)
            # 2,000 events later: every job finished, the drawn ones and the others.
            await expect(page.locator("#wf-status")).to_have_text("SUCCESS", timeout=15_000)
            await expect(page.locator("#wf-counts .badge")).to_have_text(["1,001 SUCCESS"])
            await expect(page.locator("#wf-graph .wf-job .status")).to_have_text(["SUCCESS"] * 201)
            assert await page.evaluate("window.taskrtDashboard.workflowDraws") == 1


@in_browser
async def test_rows_say_a_job_gathers_its_batch_or_waits_in_one_with_a_link(
    db_path: Path, steps: Steps, server: Serve, browser: Any
) -> None:
    rt = make_runtime(db_path, steps)

    @rt.task(pool="main", batch=Batch(max_size=2, max_wait=60))
    async def digest(job: JobContext, items: list[int]) -> int:
        await steps["digest"].get()
        return sum(items)

    async with rt:
        pool = rt.pool("main")
        leader, member, late = [await pool.add(digest.options(batch_key="k"), n) for n in range(3)]
        await wait_until(
            lambda: leader in rt.live.states and rt.live.states[leader].status == "RUNNING"
        )
        async with server(create_app(rt)) as base:
            async with dashboard(browser, f"{base}/dashboard") as page:
                await expect(row(page, late).locator(".held")).to_have_text("gathering its batch")
                held = row(page, member).locator(".held")
                await expect(held).to_have_text(f"in batch {leader}")
                await held.get_by_role("link", name=f"batch {leader}").click()
                await expect(page).to_have_url(f"{base}/dashboard/jobs/{leader}")
                await expect(page.locator("#job-status")).to_have_text("RUNNING")
                await expect(page.locator("#job-facts")).to_contain_text("Batch key")
                steps.allow("digest")
                await expect(page.locator("#job-status")).to_have_text("SUCCESS")
        assert (await rt.wait(member, timeout=5)).result == 1


@in_browser
async def test_the_counts_keep_the_jobs_added_while_they_are_read(
    rt: Runtime, server: Serve, browser: Any
) -> None:
    """GET /stats does not say which events it reflects: jobs added while its answer
    is on the way (here held back by the test) are counted, once."""
    counted = asyncio.Event()
    gate = asyncio.Event()

    async def slow_answer(route: Any) -> None:
        answer = await route.fetch()  # the server counts now...
        counted.set()
        await gate.wait()  # ...and the page gets its answer later
        await route.fulfill(response=answer)

    async def hold_the_stats(page: Any) -> None:
        await page.route(lambda url: url.endswith("/stats"), slow_answer)

    async with (
        server(create_app(rt)) as base,
        dashboard(browser, f"{base}/dashboard", prepare=hold_the_stats) as page,
    ):
        async with asyncio.timeout(10):
            await counted.wait()
        added = [
            await rt.enqueue("stepped", kwargs={"n": 1, "key": "later"}, delay=600)
            for _ in range(3)
        ]
        for job_id in added:  # the page has their events
            await expect(row(page, job_id)).to_have_count(1)
        gate.set()
        await page.locator("body[data-ready=true]").wait_for()
        await expect(page.locator("#count-WAITING")).to_have_text("3")
        await expect(page.locator("#count-all")).to_have_text("3")


@in_browser
async def test_a_waiting_job_that_passes_its_deadline_moves_the_counts_from_waiting(
    rt: Runtime, server: Serve, browser: Any
) -> None:
    """A job that fails at its deadline while it waits: the page took every failure
    for an attempt's (from RUNNING) and kept counting it WAITING for good."""
    rt.pool("batch").pause()
    async with (
        server(create_app(rt)) as base,
        dashboard(browser, f"{base}/dashboard") as page,
    ):
        late = await rt.pool("batch").add(_with(rt, "boom", deadline=time.time() + 1.0))
        await expect(row(page, late)).to_have_count(1)
        await expect(page.locator("#count-WAITING")).to_have_text("1")
        assert (await rt.wait(late, timeout=5)).status is JobStatus.FAILURE
        await expect(page.locator("#count-FAILURE")).to_have_text("1")
        await expect(page.locator("#count-WAITING")).to_have_text("0", timeout=2_000)
        await expect(page.locator("#count-all")).to_have_text("1")


@in_browser
async def test_the_counts_follow_a_purge_made_by_another_client(
    rt: Runtime, server: Serve, browser: Any
) -> None:
    """A purge sends no event: the page reads the counts every 10 s."""
    failed = await rt.pool("batch").add("boom")
    await rt.wait(failed, timeout=5)
    async with (
        server(create_app(rt)) as base,
        dashboard(browser, f"{base}/dashboard") as page,
    ):
        await expect(page.locator("#count-FAILURE")).to_have_text("1")
        assert (await rt.bulk("purge", status=JobStatus.FAILURE)).done == 1
        await expect(page.locator("#count-FAILURE")).to_have_text("0", timeout=15_000)
        await expect(page.locator("#count-all")).to_have_text("0")


@in_browser
async def test_the_live_first_page_fills_up_again_when_its_rows_fade_out(
    rt: Runtime, server: Serve, browser: Any
) -> None:
    delayed = await rt.enqueue("stepped", kwargs={"n": 1, "key": "d"}, delay=600)
    async with (
        server(create_app(rt)) as base,
        dashboard(browser, f"{base}/dashboard?status=WAITING") as page,
    ):
        await expect(row(page, delayed)).to_have_count(1)
        await rt.pool("batch").add_many(_with(rt, "hop", delay=600), [{}] * 55)
        await expect(page.locator("#jobs tr.job")).to_have_count(50)
        await expect(row(page, delayed)).to_have_count(0)  # pushed to the next page
        await rt.bulk("cancel", task="hop")  # they fade out of this view
        await expect(row(page, delayed)).to_have_count(1, timeout=10_000)
        await expect(page.locator("#jobs tr.job")).to_have_count(1)
        await expect(page.locator("#next-page")).to_be_disabled()


@in_browser
async def test_pool_paused_is_said_while_it_holds_a_job_and_only_then(
    db_path: Path, steps: Steps, server: Serve, browser: Any
) -> None:
    rt = make_runtime(db_path, steps)

    @rt.task(pool="main", attempts=2, retry=600)
    async def flaky(job: JobContext) -> None:
        raise ConnectionError("the mail server is down")

    async with rt, server(create_app(rt)) as base:
        await rt.change_pool("main", paused=True)
        async with dashboard(browser, f"{base}/dashboard") as page:
            job_id = await rt.add("flaky")  # the page sees it added to a paused pool
            await expect(row(page, job_id).locator(".held")).to_have_text("pool paused")
            async with dashboard(browser, f"{base}/dashboard/jobs/{job_id}") as job_page:
                facts = job_page.locator("#job-facts")
                await expect(facts).to_contain_text("pool paused")
                await rt.change_pool("main", paused=False)  # it runs, fails, waits to retry
                await expect(job_page.locator("#job-timeline .kind")).to_contain_text(["retrying"])
                await expect(facts).not_to_contain_text("Waits for")
            await expect(row(page, job_id).locator(".when")).to_have_text(
                re.compile(r"runs in (9|10) min")
            )
            await expect(row(page, job_id).locator(".held")).to_have_count(0)

            # Paused and resumed from the page: a job waiting for a slot says so, then not.
            running = [await rt.add("stepped", n=1, key=f"r{i}") for i in range(2)]
            for one in running:
                await expect(row(page, one).locator(".status")).to_have_text("RUNNING")
            queued = await rt.add("stepped", n=1, key="q")
            await expect(row(page, queued).locator(".status")).to_have_text("WAITING")
            await page.get_by_role("button", name="Pause pool main").click()
            await expect(row(page, queued).locator(".held")).to_have_text("pool paused")
            await page.get_by_role("button", name="Resume pool main").click()
            await expect(row(page, queued).locator(".held")).to_have_count(0)
            for key in ("r0", "r1", "q"):
                steps.allow(key)
            await rt.wait(queued, timeout=5)


@in_browser
async def test_a_schedules_jobs_link_quotes_its_name_and_a_bad_search_lists_nothing(
    db_path: Path, steps: Steps, server: Serve, browser: Any
) -> None:
    rt = make_runtime(db_path, steps)
    rt.schedule("nightly report", "stepped", "0 3 * * *", kwargs={"n": 1, "key": "r"})
    async with rt, server(create_app(rt)) as base:
        ours = await rt.enqueue(
            "stepped", kwargs={"n": 1}, delay=600, metadata={"schedule": "nightly report"}
        )
        await rt.enqueue("stepped", kwargs={"n": 1}, delay=600, metadata={"schedule": "nightly"})
        async with dashboard(browser, f"{base}/dashboard") as page:
            await expect(page.locator("#jobs tr.job")).to_have_count(2)
            report = page.locator('#schedules tr[data-schedule="nightly report"]')
            await report.get_by_role("link", name="jobs").click()
            search = page.locator("#filters [name=q]")
            await expect(search).to_have_value('schedule="nightly report"')
            await expect(page.locator("#jobs tr.job")).to_have_count(1)
            await expect(row(page, ours)).to_have_count(1)

            # The link as it was: a search the page cannot read lists nothing, and says why.
            await page.goto(f"{base}/dashboard?q=schedule%3Dnightly+report")
            await expect(page.locator("#jobs-empty")).to_have_text(
                'Search: expected key=value or key="a value", found "report".'
            )
            await expect(page.locator("#jobs tr.job")).to_have_count(0)


@in_browser
async def test_a_pool_with_a_slash_in_its_name_is_paused_and_resumed_from_the_page(
    rt: Runtime, server: Serve, browser: Any
) -> None:
    rt.pool("team/mail", concurrency=1)
    async with server(create_app(rt)) as base, dashboard(browser, f"{base}/dashboard") as page:
        mail = pool_row(page, "team/mail")
        await page.get_by_role("button", name="Pause pool team/mail").click()
        await expect(mail.locator(".badge")).to_have_text("paused")
        assert rt.pools["team/mail"].paused
        await page.get_by_role("button", name="Resume pool team/mail").click()
        await expect(mail.locator(".badge")).to_have_text("active")
        assert not rt.pools["team/mail"].paused


@in_browser
async def test_a_double_click_on_older_turns_one_page_and_newer_comes_back(
    rt: Runtime, server: Serve, browser: Any
) -> None:
    ids = await rt.pool("main").add_many(_with(rt, "stepped", delay=600), [{"n": 1}] * 120)
    async with server(create_app(rt)) as base, dashboard(browser, f"{base}/dashboard") as page:

        async def slow_link(route: Any) -> None:
            await asyncio.sleep(0.3)
            await route.continue_()

        await page.route(lambda url: "/jobs?" in url and "cursor=" in url, slow_link)
        jobs = page.locator("#jobs tr.job")
        await page.locator("#next-page").dblclick()
        await expect(page.locator("#page-info")).to_have_text("page 2")
        await expect(jobs.first).to_have_attribute("data-id", str(ids[-51]))
        await page.locator("#prev-page").click()
        await expect(page.locator("#page-info")).to_have_text("page 1 · live")
        await expect(jobs.first).to_have_attribute("data-id", str(ids[-1]))
        await expect(page.locator("#prev-page")).to_be_disabled()


@in_browser
async def test_shortened_text_never_cuts_an_emoji_in_half(
    rt: Runtime, steps: Steps, server: Serve, browser: Any
) -> None:
    # "RuntimeError: boom: the disk holding " is 37 characters: the emoji comes 47th.
    failed = await rt.pool("batch").add("boom", path="x" * 9 + "🧨 here")
    await rt.wait(failed, timeout=5)
    to = "x" * 71 + "🧨" + "z" * 10  # the result, '"hello x…', has it 79th
    done = await rt.add("greet", to=to)
    steps.allow(to)
    await rt.wait(done, timeout=5)
    async with server(create_app(rt)) as base:
        async with dashboard(browser, f"{base}/dashboard") as page:
            await expect(row(page, failed).locator(".sub")).to_have_text(
                "RuntimeError: boom: the disk holding " + "x" * 9 + "🧨…"
            )
        async with dashboard(browser, f"{base}/dashboard/jobs/{done}") as page:
            await expect(page.locator("#job-timeline .detail").last).to_have_text(
                '"hello ' + "x" * 71 + "🧨…"
            )
