"""Generic fixtures: a database file per test, a free port, an in-process server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn


@pytest.fixture(params=["sqlite", "postgres-owner", "postgres-nodes"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """A database and the runtime's options: a SQLite file; PostgreSQL where one owner
    runs the jobs; PostgreSQL where every process claims them (a schema of its own)."""
    if request.param == "sqlite":
        return str(tmp_path / "app.db"), {}
    import pg_server

    url = f"{pg_server.require()}?schema={pg_server.fresh_schema(tmp_path)}"
    return url, {"mode": request.param.removeprefix("postgres-")}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh SQLite file for this test."""
    return tmp_path / "jobs.db"


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def serve(app: Any, port: int, **config: Any) -> AsyncIterator[str]:
    """Run ``app`` on uvicorn in this event loop; yields its base URL.

    Waits on ``server.started`` (a fact), not on a sleep. On exit the server
    shuts down gracefully; streams still open after a second are cancelled.
    """
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "log_config": None,
        "log_level": "warning",
        "lifespan": "on",
        "timeout_graceful_shutdown": 1,
        **config,
    }
    server = uvicorn.Server(uvicorn.Config(app, **options))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
def server(free_port: int) -> Callable[..., contextlib.AbstractAsyncContextManager[str]]:
    """``async with server(app) as base_url:`` serves ``app`` on 127.0.0.1."""

    def start(app: Any, **config: Any) -> contextlib.AbstractAsyncContextManager[str]:
        return serve(app, free_port, **config)

    return start
