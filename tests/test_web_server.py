"""A real server: uvicorn on 127.0.0.1 and real SSE clients (httpx-sse, raw sockets)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from taskrt import JobContext, Runtime
from taskrt.web import Api, create_app

pytestmark = pytest.mark.server

Serve = Callable[..., AbstractAsyncContextManager[str]]


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


class Steps:
    """Lets a job take one step per token: the test decides when each step happens."""

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue[None]] = {}

    def __getitem__(self, key: str) -> asyncio.Queue[None]:
        return self.queues.setdefault(key, asyncio.Queue())

    def allow(self, key: str, n: int = 1) -> None:
        for _ in range(n):
            self[key].put_nowait(None)


@pytest.fixture
def steps() -> Steps:
    return Steps()


@pytest.fixture
async def rt(db_path: Path, steps: Steps) -> AsyncIterator[Runtime]:
    runtime = Runtime(str(db_path))
    runtime.pool("web", concurrency=200)

    @runtime.task(pool="web")
    async def lockstep(job: JobContext, n: int, key: str) -> int:
        for i in range(n):
            await steps[key].get()
            await job.progress(i + 1, n, f"step {i + 1}")
        await steps[key].get()
        return n

    @runtime.task(pool="web")
    async def flood(job: JobContext, n: int, size: int, key: str) -> int:
        await steps[key].get()
        blob = "x" * size
        for i in range(n):
            await job.progress(i + 1, n, blob)
            await asyncio.sleep(0.001)
        return n

    async with runtime:
        yield runtime
        for queue in steps.queues.values():
            for _ in range(1000):
                queue.put_nowait(None)


def api_of(app: Any) -> Api:
    api: Api = app.state.taskrt
    return api


async def read(events: AsyncIterator[ServerSentEvent], n: int) -> list[ServerSentEvent]:
    out = []
    async for event in events:
        out.append(event)
        if len(out) == n:
            break
    return out


async def test_live_progress_arrives_as_it_happens(
    rt: Runtime, steps: Steps, server: Serve
) -> None:
    app = create_app(rt)
    async with server(app) as base, httpx.AsyncClient(base_url=base) as client:
        job_id = await rt.add("lockstep", 3, "live")
        async with aconnect_sse(client, "GET", f"/jobs/{job_id}/events") as source:
            assert source.response.headers["cache-control"] == "no-store"
            assert source.response.headers["x-accel-buffering"] == "no"
            events = source.aiter_sse()
            (snapshot,) = await read(events, 1)
            assert snapshot.event == "snapshot" and snapshot.json()["job"]["status"] == "RUNNING"
            for i in range(1, 4):
                steps.allow("live")  # the job takes step i only now
                (event,) = await read(events, 1)
                assert event.event == "progress" and event.json()["current"] == i
            steps.allow("live")
            (final,) = await read(events, 1)
            assert final.event == "success" and final.json()["result"] == 3
            assert [e async for e in events] == []  # the server closed the stream
    assert rt.broker.subscribers == 0


async def test_a_dropped_stream_resumes_with_last_event_id_without_gap_or_duplicate(
    rt: Runtime, steps: Steps, server: Serve
) -> None:
    async with server(create_app(rt)) as base, httpx.AsyncClient(base_url=base) as client:
        job_id = await rt.add("lockstep", 8, "drop")
        url = f"/jobs/{job_id}/events"
        async with aconnect_sse(client, "GET", url) as source:
            events = source.aiter_sse()
            seen = await read(events, 1)
            steps.allow("drop", 2)
            seen += await read(events, 2)
            await events.aclose()
        # The connection is gone: the server must notice and let go.
        await wait_until(lambda: rt.broker.subscribers == 0)
        steps.allow("drop", 3)  # three steps happen while no one listens
        async with asyncio.timeout(5):
            while (await rt.get(job_id)).current != 5:
                await asyncio.sleep(0.005)
        assert seen[-1].id is not None
        async with aconnect_sse(
            client, "GET", url, headers={"Last-Event-ID": seen[-1].id}
        ) as again:
            events = again.aiter_sse()
            rest = await read(events, 3)
            steps.allow("drop", 4)
            rest += [e async for e in events]
    ids = [int(e.id) for e in seen + rest]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # no gap, no duplicate
    kinds = [e.event for e in seen + rest]
    assert kinds == ["snapshot"] + ["progress"] * 8 + ["success"]
    assert [e.json()["current"] for e in (seen + rest)[1:-1]] == list(range(1, 9))


async def test_a_hundred_concurrent_streams(rt: Runtime, steps: Steps, server: Serve) -> None:
    app = create_app(rt)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with server(app) as base, httpx.AsyncClient(base_url=base, limits=limits) as client:
        job_ids = [await rt.add("lockstep", 5, f"j{i % 10}") for i in range(10)]

        async def follow(job_id: int) -> list[ServerSentEvent]:
            async with aconnect_sse(client, "GET", f"/jobs/{job_id}/events") as source:
                return [e async for e in source.aiter_sse()]

        readers = [asyncio.create_task(follow(job_ids[i % 10])) for i in range(100)]
        await wait_until(lambda: rt.broker.subscribers == 100)
        assert api_of(app).streams.active == 100
        for i in range(10):
            steps.allow(f"j{i}", 6)
        results = await asyncio.wait_for(asyncio.gather(*readers), 20)
    for events in results:
        assert [e.event for e in events] == ["snapshot"] + ["progress"] * 5 + ["success"]
        ids = [int(e.id) for e in events]
        assert ids == list(range(ids[0], ids[0] + 7))
    assert rt.broker.subscribers == 0 and api_of(app).streams.active == 0


async def test_a_client_that_stops_reading_is_disconnected(
    rt: Runtime, steps: Steps, server: Serve
) -> None:
    app = create_app(rt, send_timeout=0.3, heartbeat=0)
    async with server(app) as base:
        job_id = await rt.add("flood", 500, 32_000, "stall")
        port = int(base.rsplit(":", 1)[1])
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            request = f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
            await loop.sock_sendall(sock, request.encode())
            await wait_until(lambda: rt.broker.subscribers == 1)
            started = time.monotonic()
            steps.allow("stall")  # the job floods; the client never reads
            await wait_until(lambda: rt.broker.subscribers == 0, timeout=15)
            assert api_of(app).streams.active == 0
            assert time.monotonic() - started < 10
            assert (await rt.wait(job_id, timeout=30)).result == 500
        finally:
            sock.close()


async def test_shutdown_ends_open_streams_and_idle_streams_get_heartbeats(
    rt: Runtime, steps: Steps, server: Serve
) -> None:
    app = create_app(rt, heartbeat=0.05)
    lines: list[str] = []
    async with httpx.AsyncClient() as client:
        async with server(app) as base:
            job_id = await rt.add("lockstep", 1, "forever")

            async def listen() -> None:
                url = f"{base}/jobs/{job_id}/events"
                async with client.stream("GET", url) as response:
                    async for line in response.aiter_lines():
                        lines.append(line)

            reader = asyncio.create_task(listen())
            await wait_until(lambda: lines.count(": heartbeat") >= 2)
            stopping = time.monotonic()
        # Leaving ``server`` shut uvicorn down with the stream still open: the
        # stream ends cleanly (no broken read) and promptly.
        assert time.monotonic() - stopping < 3
        await asyncio.wait_for(reader, 5)
    assert lines[0] == "retry: 1000" and "event: snapshot" in lines
    assert rt.broker.subscribers == 0
