"""The app served on its own (its lifespan runs the runtime) and mounted in a host app.

Mounted, the host's lifespan runs the runtime: Starlette runs no mounted app's
lifespan. FastAPI is tested when it is installed (the dev extra has it).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from taskrt import JobContext, Runtime
from taskrt.web import create_app

pytestmark = pytest.mark.server

Serve = Callable[..., AbstractAsyncContextManager[str]]


def make_runtime(path: Path) -> Runtime:
    rt = Runtime(str(path))

    @rt.task(pool="host")
    async def count(job: JobContext, n: int) -> int:
        for i in range(n):
            await job.progress(i + 1, n)
        return n

    return rt


async def exercise(client: httpx.AsyncClient, rt: Runtime, prefix: str) -> None:
    """What a user of the mounted API does, checking that every URL carries the prefix."""
    paused = await client.patch(f"{prefix}/pools/host", json={"paused": True})
    assert paused.json()["paused"] is True
    r = await client.post(f"{prefix}/jobs", json={"task": "count", "kwargs": {"n": 3}})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    assert r.headers["location"] == f"{prefix}/jobs/{job_id}"

    async def follow() -> list[str]:
        async with aconnect_sse(client, "GET", f"{prefix}/jobs/{job_id}/events") as source:
            return [e.event async for e in source.aiter_sse()]

    reader = asyncio.create_task(follow())
    async with asyncio.timeout(5):
        while rt.broker.subscribers == 0:
            await asyncio.sleep(0.005)
    await client.patch(f"{prefix}/pools/host", json={"paused": False})
    events = await asyncio.wait_for(reader, 5)
    assert events == ["snapshot", "started", "progress", "progress", "progress", "success"]
    assert (await client.get(r.headers["location"])).json()["status"] == "SUCCESS"
    token = (await client.post(f"{prefix}/jobs/{job_id}/token")).json()
    assert token["events"].startswith(f"{prefix}/jobs/{job_id}/events?token=")
    doc = (await client.get(f"{prefix}/openapi.json")).json()
    assert doc["servers"] == [{"url": prefix or "/"}]
    missing = await client.get(f"{prefix}/jobs/999")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"


async def test_served_on_its_own_the_lifespan_runs_the_runtime(
    db_path: Path, server: Serve
) -> None:
    rt = make_runtime(db_path)
    app = create_app(rt)
    assert not rt.started
    async with server(app) as base, httpx.AsyncClient(base_url=base) as client:
        assert rt.started
        health = (await client.get("/health")).json()
        assert health["status"] == "ok"
        assert health["ownership"]["role"] == "owner"
        await exercise(client, rt, "")
    assert not rt.started


def host_app(rt: Runtime) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with rt:
            yield

    async def home(request: Request) -> Response:
        return JSONResponse({"host": True})

    return Starlette(
        routes=[Route("/", home), Mount("/tasks", app=create_app(rt))], lifespan=lifespan
    )


async def test_mounted_in_starlette_the_host_lifespan_runs_the_runtime(
    db_path: Path, server: Serve
) -> None:
    rt = make_runtime(db_path)
    async with server(host_app(rt)) as base, httpx.AsyncClient(base_url=base) as client:
        assert rt.started
        assert (await client.get("/")).json() == {"host": True}
        await exercise(client, rt, "/tasks")
        assert (await client.get("/tasks/health")).status_code == 200
    assert not rt.started


async def test_mounted_without_a_running_runtime_answers_503_not_500(db_path: Path) -> None:
    rt = make_runtime(db_path)
    host = Starlette(routes=[Mount("/tasks", app=create_app(rt))])
    transport = httpx.ASGITransport(app=host)
    async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
        r = await client.post("/tasks/jobs", json={"task": "count", "kwargs": {"n": 1}})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "not_started"


@pytest.mark.skipif(importlib.util.find_spec("fastapi") is None, reason="fastapi is not installed")
async def test_mounted_in_fastapi(db_path: Path, server: Serve) -> None:
    from fastapi import FastAPI

    rt = make_runtime(db_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with rt:
            yield

    api = FastAPI(lifespan=lifespan)

    @api.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    api.mount("/tasks", create_app(rt))
    async with server(api) as base, httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/hello")).json() == {"hello": "world"}
        await exercise(client, rt, "/tasks")
    assert not rt.started
