"""The demo's runtime and app: three tasks that show progress, retries and failures.

- ``send_email`` fails twice (the SMTP server is "busy"), then succeeds: the page
  shows each retry with its error.
- ``resize_image`` reports progress step by step (20 steps of 0.15 s).
- ``build_report`` reports a page at a time; with ``stall_at`` it hangs on that
  page and its timeout (3 s) fails it.

``speed`` scales every delay (the browser test runs the demo at 0.2).
``uvicorn demo.app:app`` serves the module-level ``app`` on ``demo.db``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from taskrt import JobContext, Runtime
from taskrt.web import create_app

PAGE = Path(__file__).with_name("static") / "index.html"


def build_runtime(path: str | os.PathLike[str] = "demo.db", *, speed: float = 1.0) -> Runtime:
    """The demo runtime on the SQLite file ``path``; nothing starts until it is entered."""
    rt = Runtime(str(path))
    rt.pool("email", concurrency=4)
    rt.pool("images", concurrency=2)
    rt.pool("reports", concurrency=2)

    @rt.task(pool="email", attempts=3, retry=f"{max(1, round(500 * speed))}ms")
    async def send_email(job: JobContext, to: str, subject: str = "Welcome!") -> dict[str, str]:
        """Render and send an e-mail; the first two attempts meet a busy server."""
        await job.progress(0, 3, f"rendering {subject!r}")
        await asyncio.sleep(0.3 * speed)
        await job.progress(1, 3, f"connecting to smtp.example (attempt {job.attempt})")
        await asyncio.sleep(0.3 * speed)
        if job.attempt < 3:
            raise ConnectionError(f"SMTP server busy (attempt {job.attempt} of 3)")
        await job.progress(2, 3, f"sending to {to}")
        await asyncio.sleep(0.2 * speed)
        await job.progress(3, 3, "sent")
        return {"to": to, "message_id": f"<{job.id}@demo.taskrt>"}

    @rt.task(pool="images")
    async def resize_image(
        job: JobContext, name: str = "photo.jpg", steps: int = 20
    ) -> dict[str, object]:
        """Resize an image tile by tile."""
        for i in range(steps):
            await asyncio.sleep(0.15 * speed)
            await job.progress(i + 1, steps, f"{name}: tile {i + 1} of {steps}")
        return {"name": name, "width": 800, "height": 600}

    @rt.task(pool="reports", timeout=3 * speed)
    async def build_report(
        job: JobContext, pages: int = 10, stall_at: int | None = None
    ) -> dict[str, int]:
        """Build a report page by page; ``stall_at`` makes it hang there until its timeout."""
        for page in range(1, pages + 1):
            if page == stall_at:
                await job.progress(page - 1, pages, f"page {page}: waiting for the database...")
                await asyncio.sleep(3600)
            await asyncio.sleep(0.2 * speed)
            await job.progress(page, pages, f"page {page} of {pages}")
        return {"pages": pages}

    return rt


async def index(request: Request) -> Response:
    return FileResponse(PAGE, headers={"Cache-Control": "no-store"})


def build_app(rt: Runtime) -> Starlette:
    """The API of ``rt`` plus the demo page at ``/``."""
    return create_app(rt, routes=[Route("/", index)], title="taskrt demo")


rt = build_runtime(os.environ.get("TASKRT_DEMO_DB", "demo.db"))
app = build_app(rt)
