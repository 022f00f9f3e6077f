"""Event streams in process: streams that end, resume, 204, caps, slow and gone clients.

Streams read through httpx's ASGI transport must end (the transport returns
the body when the app is done), so these follow jobs to their terminal event,
or stop the runtime. Clients that stall or vanish are driven through the ASGI
interface directly, with a ``send`` or ``receive`` the test controls.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from core_support import reads_of
from httpx_sse import ServerSentEvent, aconnect_sse
from starlette.types import Message

from taskrt import JobContext, Runtime
from taskrt.web import Api, create_app

Gates = dict[str, asyncio.Event]


@dataclass
class Frame:
    id: str | None
    event: str | None
    data: dict[str, Any] | None
    retry: int | None = None


def parse_sse(text: str) -> list[Frame]:
    frames = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "data" in fields:
            frames.append(
                Frame(
                    fields.get("id"),
                    fields.get("event"),
                    json.loads(fields["data"]),
                    int(fields["retry"]) if "retry" in fields else None,
                )
            )
    return frames


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def make_runtime(path: Path, gates: Gates, **options: Any) -> Runtime:
    rt = Runtime(str(path), **options)

    @rt.task(pool="a")
    async def steps(job: JobContext, n: int, key: str = "") -> int:
        if key:
            await gates.setdefault(key, asyncio.Event()).wait()
        for i in range(n):
            await job.progress(i + 1, n, f"step {i + 1}")
            await asyncio.sleep(0)
        return n

    @rt.task(pool="a")
    async def burst_then_wait(job: JobContext, n: int, key: str) -> str:
        for i in range(n):
            await job.progress(i + 1, n + 1)
        await gates.setdefault(key, asyncio.Event()).wait()
        await job.progress(n + 1, n + 1, "done")
        return key

    @rt.task(pool="b", attempts=10)
    async def stubborn(job: JobContext, failures: int) -> int:
        if job.attempt <= failures:
            raise RuntimeError(f"failure {job.attempt}")
        return job.attempt

    @rt.task(pool="b", attempts=3)
    async def flaky(job: JobContext) -> str:
        if job.attempt < 2:
            raise RuntimeError("first try fails")
        return "ok"

    return rt


@pytest.fixture
def gates() -> Gates:
    return {}


@pytest.fixture
async def rt(db_path: Path, gates: Gates) -> AsyncIterator[Runtime]:
    runtime = make_runtime(db_path, gates)
    async with runtime:
        yield runtime
        for gate in gates.values():
            gate.set()


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def api_of(app: Any) -> Api:
    api: Api = app.state.taskrt
    return api


async def gate_key(gates: Gates, key: str) -> asyncio.Event:
    await wait_until(lambda: key in gates)
    return gates[key]


# -- one job's stream ---------------------------------------------------------------------


async def test_snapshot_first_then_every_event_with_ids_then_close(
    rt: Runtime, gates: Gates
) -> None:
    app = create_app(rt)
    async with client_for(app) as client:
        job_id = await rt.add("steps", 3, "go")
        gate = await gate_key(gates, "go")
        request = asyncio.create_task(client.get(f"/jobs/{job_id}/events"))
        await wait_until(lambda: rt.broker.subscribers == 1)
        gate.set()
        r = await request
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-accel-buffering"] == "no"
    frames = parse_sse(r.text)
    assert frames[0].event == "snapshot" and frames[0].retry == 1000
    assert frames[0].data is not None and frames[0].data["job"]["status"] == "RUNNING"
    assert [f.event for f in frames[1:]] == ["progress", "progress", "progress", "success"]
    seqs = [int(f.id or 0) for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(frames)))
    assert [f.data and f.data.get("current") for f in frames[1:4]] == [1, 2, 3]
    assert frames[-1].data is not None and frames[-1].data["result"] == 3
    assert rt.broker.subscribers == 0 and api_of(app).streams.active == 0


async def test_retries_are_streamed_with_their_error(rt: Runtime) -> None:
    rt.pools["b"].pause()
    async with client_for(create_app(rt)) as client:
        job_id = await rt.add("flaky")
        request = asyncio.create_task(client.get(f"/jobs/{job_id}/events"))
        await wait_until(lambda: rt.broker.subscribers == 1)
        rt.pools["b"].resume()
        frames = parse_sse((await request).text)
    assert [f.event for f in frames] == ["snapshot", "started", "retrying", "started", "success"]
    assert frames[2].data is not None and frames[2].data["error"] == "RuntimeError: first try fails"


async def stream_to_the_end(client: httpx.AsyncClient, rt: Runtime, gates: Gates, key: str) -> int:
    """Follow a gated job's whole life from its snapshot; returns its id."""
    job_id = await rt.add("steps", 5, key)
    gate = await gate_key(gates, key)
    request = asyncio.create_task(client.get(f"/jobs/{job_id}/events"))
    await wait_until(lambda: rt.broker.subscribers == 1)
    gate.set()
    await request
    return job_id


async def test_resume_after_any_event_has_no_gap_and_no_duplicate(
    rt: Runtime, gates: Gates
) -> None:
    async with client_for(create_app(rt)) as client:
        job_id = await stream_to_the_end(client, rt, gates, "resume")
        info = await rt.get(job_id)
        history = rt.broker.replay_after(job_id, 0)
        assert history is None  # the window starts with the first subscriber
        first = info.seq - 6  # the snapshot's seq: 5 progress and a success followed it
        for last in range(first, info.seq):
            r = await client.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": str(last)})
            frames = parse_sse(r.text)
            assert [int(f.id or 0) for f in frames] == list(range(last + 1, info.seq + 1))
            assert frames[-1].event == "success"
            assert all(f.event == "progress" for f in frames[:-1])
        via_query = await client.get(
            f"/jobs/{job_id}/events", params={"last_event_id": str(first + 2)}
        )
        assert next(int(f.id or 0) for f in parse_sse(via_query.text)) == first + 3


async def test_a_finished_job_gives_its_terminal_event_once_then_204(rt: Runtime) -> None:
    job_id = await rt.add("steps", 2)
    final = await rt.wait(job_id, timeout=5)
    async with client_for(create_app(rt)) as client:
        fresh = parse_sse((await client.get(f"/jobs/{job_id}/events")).text)
        assert len(fresh) == 1 and fresh[0].event == "snapshot"
        assert fresh[0].data is not None and fresh[0].data["job"]["status"] == "SUCCESS"
        assert fresh[0].id == str(final.seq)

        missed = await client.get(
            f"/jobs/{job_id}/events", headers={"Last-Event-ID": str(final.seq - 1)}
        )
        frames = parse_sse(missed.text)
        assert [(f.id, f.event) for f in frames] == [(str(final.seq), "success")]

        done = await client.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": str(final.seq)})
        assert done.status_code == 204 and done.content == b""


async def test_beyond_the_replay_window_a_fresh_state_is_sent(db_path: Path, gates: Gates) -> None:
    rt = make_runtime(db_path, gates, replay=4)
    async with rt, client_for(create_app(rt)) as client:
        finished = await stream_to_the_end(client, rt, gates, "done")
        info = await rt.get(finished)
        r = await client.get(f"/jobs/{finished}/events", headers={"Last-Event-ID": "2"})
        frames = parse_sse(r.text)
        assert [(f.id, f.event) for f in frames] == [(str(info.seq), "success")]
        assert frames[0].data is not None and frames[0].data["job"]["status"] == "SUCCESS"
        assert frames[0].data["result"] == 5

        running = await rt.add("burst_then_wait", 10, "later")
        gate = await gate_key(gates, "later")
        first = asyncio.create_task(client.get(f"/jobs/{running}/events"))
        await wait_until(lambda: rt.broker.subscribers == 1)
        second = asyncio.create_task(
            client.get(f"/jobs/{running}/events", headers={"Last-Event-ID": "2"})
        )
        await wait_until(lambda: rt.broker.subscribers == 2)
        gate.set()
        frames = parse_sse((await second).text)
        assert [f.event for f in frames] == ["snapshot", "progress", "success"]
        assert frames[0].data is not None and frames[0].data["job"]["current"] == 10
        assert int(frames[1].id or 0) == int(frames[0].id or 0) + 1
        await first


async def test_a_cancelled_job_ends_its_stream(rt: Runtime, gates: Gates) -> None:
    async with client_for(create_app(rt)) as client:
        job_id = await rt.add("steps", 1, "never")
        await gate_key(gates, "never")
        request = asyncio.create_task(client.get(f"/jobs/{job_id}/events"))
        await wait_until(lambda: rt.broker.subscribers == 1)
        assert (await client.delete(f"/jobs/{job_id}")).status_code == 200
        frames = parse_sse((await request).text)
        assert [f.event for f in frames] == ["snapshot", "cancelled"]


async def test_the_cap_on_streams_answers_503_and_frees_on_close(rt: Runtime, gates: Gates) -> None:
    app = create_app(rt, max_streams=1, retry_after=3)
    async with client_for(app) as client:
        job_id = await rt.add("steps", 1, "cap")
        gate = await gate_key(gates, "cap")
        first = asyncio.create_task(client.get(f"/jobs/{job_id}/events"))
        await wait_until(lambda: api_of(app).streams.active == 1)
        for path in (f"/jobs/{job_id}/events", "/events"):
            r = await client.get(path)
            assert r.status_code == 503 and r.headers["retry-after"] == "3"
            assert r.json()["error"]["code"] == "too_many_streams"
        gate.set()
        assert (await first).status_code == 200
        assert api_of(app).streams.active == 0
        assert (await client.get(f"/jobs/{job_id}/events")).status_code == 200
    assert rt.broker.subscribers == 0


async def test_unknown_jobs_pools_and_tasks_are_404_and_leave_nothing(rt: Runtime) -> None:
    app = create_app(rt)
    async with client_for(app) as client:
        for path in ("/jobs/404/events", "/events?pool=nope", "/events?task=nope"):
            r = await client.get(path)
            assert r.status_code == 404, path
    assert rt.broker.subscribers == 0 and api_of(app).streams.active == 0
    assert not rt.broker.wants(404)  # a probe leaves no replay window behind


async def test_a_client_runtime_streams_the_owners_jobs_through_its_relay(
    db_path: Path, gates: Gates, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = make_runtime(db_path, gates)
    reader = make_runtime(db_path, gates, workers=False)
    async with owner, reader, client_for(create_app(reader)) as client:
        r = await client.post("/jobs", json={"task": "steps", "args": [3], "kwargs": {"key": "k"}})
        assert r.status_code == 201
        job_id = r.json()["id"]
        reads = reads_of(reader, "get", monkeypatch)
        request = asyncio.create_task(client.get(f"/jobs/{job_id}/events"))
        # The stream reads the job, subscribes, and reads it again for its snapshot
        # (over the relay: it waits): opened sooner, the job could end before that
        # read, and the stream would rightly be the finished job's snapshot alone.
        await wait_until(lambda: len(reads) == 2)
        gates.setdefault("k", asyncio.Event()).set()
        frames = parse_sse((await request).text)
        # Every event, with the owner's numbers: nothing is lost to a poll.
        assert [f.event for f in frames] == ["snapshot", *["progress"] * 3, "success"]
        assert [int(f.id or 0) for f in frames] == sorted(int(f.id or 0) for f in frames)
        last = frames[-1].id or ""
        again = await client.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": last})
        assert again.status_code == 204


async def test_a_client_that_cannot_reach_the_owner_streams_by_polling(
    db_path: Path, gates: Gates
) -> None:
    owner = make_runtime(db_path, gates)
    reader = make_runtime(db_path, gates, workers=False)
    async with owner, reader, client_for(create_app(reader)) as client:
        assert owner.relay_server is not None
        await owner.relay_server.close()  # the owner's relay is gone: no events reach the reader
        await wait_until(lambda: not reader.relayed)
        r = await client.post("/jobs", json={"task": "steps", "args": [3], "kwargs": {"key": "p"}})
        assert r.status_code == 201  # durable through the database
        job_id = r.json()["id"]
        request = asyncio.create_task(client.get(f"/jobs/{job_id}/events"))
        await asyncio.sleep(0.1)
        gates.setdefault("p", asyncio.Event()).set()
        frames = parse_sse((await request).text)
        assert frames[0].event == "snapshot" and frames[-1].event == "success"
        health = (await client.get("/health")).json()
        assert health["status"] == "degraded" and not health["ownership"]["reachable"]


# -- the multiplexed stream -------------------------------------------------------------------


async def test_all_events_of_one_pool_with_job_scoped_ids(db_path: Path, gates: Gates) -> None:
    rt = make_runtime(db_path, gates)
    async with rt, client_for(create_app(rt)) as client:
        request = asyncio.create_task(client.get("/events", params={"pool": "a"}))
        await wait_until(lambda: rt.broker.subscribers == 1)
        in_a = [await rt.add("steps", 2), await rt.add("steps", 1)]
        in_b = await rt.add("flaky")
        for job_id in (*in_a, in_b):
            await rt.wait(job_id, timeout=5)
        await rt.stop()  # ends the stream: it has no terminal event of its own
        r = await request
    frames = parse_sse(r.text)
    assert frames and all(f.data is not None and f.data["pool"] == "a" for f in frames)
    seen = {(f.data or {})["job_id"] for f in frames}
    assert seen == set(in_a)
    for f in frames:
        job, seq = (f.id or "").split(":")
        assert f.data is not None and (int(job), int(seq)) == (f.data["job_id"], f.data["seq"])
    first = [f.event for f in frames if (f.data or {})["job_id"] == in_a[0]]
    assert first == ["added", "started", "progress", "progress", "success"]


@pytest.mark.server
async def test_all_events_of_one_pool_on_a_standby(
    db_path: Path, gates: Gates, server: Callable[..., AbstractAsyncContextManager[str]]
) -> None:
    """``GET /events?pool=`` served by a standby (uvicorn on 127.0.0.1) carries the
    owner's events of the pool's jobs, whichever process added them, with the
    owner's numbers."""
    owner = make_runtime(db_path, gates)
    standby = make_runtime(db_path, gates)
    async with (
        owner,
        server(create_app(standby)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        assert not standby.owning
        async with aconnect_sse(client, "GET", "/events", params={"pool": "a"}) as source:
            await wait_until(lambda: standby.broker.subscribers == 1)
            in_a = [await standby.add("steps", 2), await owner.add("steps", 1)]
            in_b = await standby.add("flaky")
            frames: list[ServerSentEvent] = []
            ended: set[int] = set()
            async with asyncio.timeout(10):
                async for frame in source.aiter_sse():
                    if not frame.data:
                        continue  # a keep-alive
                    frames.append(frame)
                    if frame.event == "success":
                        ended.add(frame.json()["job_id"])
                    if ended >= set(in_a):
                        break
        await owner.wait(in_b, timeout=5)
    assert {f.json()["job_id"] for f in frames} == set(in_a)  # none of pool b's
    for job_id in in_a:
        ids = [f.id for f in frames if f.json()["job_id"] == job_id]
        seqs = [int(i.split(":")[1]) for i in ids]
        assert seqs == sorted(seqs) and ids == [f"{job_id}:{q}" for q in seqs]
    first = [f.event for f in frames if f.json()["job_id"] == in_a[0]]
    assert first == ["added", "started", "progress", "progress", "success"]


# -- clients that stall, vanish or only ask for headers -----------------------------------------


def scope_for(
    path: str, method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


class FakeClient:
    """The client side of one ASGI request, under the test's control."""

    def __init__(self, *, block_after: int | None = None) -> None:
        self.messages: list[Message] = []
        self.gone = asyncio.Event()
        self.unblock = asyncio.Event()
        self.block_after = block_after
        self.bodies = 0

    async def receive(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            self.bodies += 1
            if self.block_after is not None and self.bodies > self.block_after:
                await self.unblock.wait()  # a client that stopped reading
        self.messages.append(message)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages)


async def test_a_client_that_disconnects_leaves_no_subscriber(rt: Runtime, gates: Gates) -> None:
    app = create_app(rt)
    job_id = await rt.add("steps", 1, "hold")
    await gate_key(gates, "hold")
    fake = FakeClient()
    call = asyncio.create_task(app(scope_for(f"/jobs/{job_id}/events"), fake.receive, fake.send))
    await wait_until(lambda: b"event: snapshot" in fake.body)
    assert rt.broker.subscribers == 1 and api_of(app).streams.active == 1
    fake.gone.set()
    await asyncio.wait_for(call, 5)
    assert rt.broker.subscribers == 0 and api_of(app).streams.active == 0
    assert (await rt.get(job_id)).status.value == "RUNNING"  # the job goes on


async def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout(
    rt: Runtime, gates: Gates
) -> None:
    app = create_app(rt, send_timeout=0.2, heartbeat=0)
    job_id = await rt.add("steps", 50, "stall")
    gate = await gate_key(gates, "stall")
    fake = FakeClient(block_after=1)
    call = asyncio.create_task(app(scope_for(f"/jobs/{job_id}/events"), fake.receive, fake.send))
    await wait_until(lambda: rt.broker.subscribers == 1)
    gate.set()
    await asyncio.wait_for(call, 5)  # returns: the send timed out
    assert fake.bodies == 2 and b"event: snapshot" in fake.body
    assert rt.broker.subscribers == 0 and api_of(app).streams.active == 0
    assert (await rt.wait(job_id, timeout=5)).result == 50


async def test_a_stalled_stream_conflates_progress_but_keeps_the_terminal_event(
    rt: Runtime, gates: Gates
) -> None:
    app = create_app(rt, stream_buffer=4, send_timeout=None, heartbeat=0)
    job_id = await rt.add("steps", 100, "flood")
    gate = await gate_key(gates, "flood")
    fake = FakeClient(block_after=1)
    call = asyncio.create_task(app(scope_for(f"/jobs/{job_id}/events"), fake.receive, fake.send))
    await wait_until(lambda: fake.bodies == 1)  # the snapshot went out
    gate.set()
    await rt.wait(job_id, timeout=5)  # meanwhile, the stream is stuck on the first progress
    assert fake.bodies == 2
    fake.unblock.set()
    await asyncio.wait_for(call, 5)
    frames = parse_sse(fake.body.decode())
    seqs = [int(f.id or 0) for f in frames]
    assert seqs == sorted(set(seqs))
    progress = [f for f in frames if f.event == "progress"]
    assert len(progress) < 20
    assert progress[-1].data is not None and progress[-1].data["current"] == 100
    assert frames[-1].event == "success"
    assert rt.broker.subscribers == 0


async def test_an_overflowing_subscription_goes_on_from_a_snapshot_in_the_same_stream(
    rt: Runtime,
) -> None:
    """Lifecycle events are never conflated: a client too slow even for those loses
    its subscription, and the stream goes on from a fresh state (note 5) in the same
    response, up to the terminal event, its ids still increasing."""
    app = create_app(rt, stream_buffer=1, send_timeout=None, heartbeat=0)
    rt.pools["b"].pause()
    job_id = await rt.add("stubborn", 6)
    fake = FakeClient(block_after=1)
    call = asyncio.create_task(app(scope_for(f"/jobs/{job_id}/events"), fake.receive, fake.send))
    await wait_until(lambda: fake.bodies == 1)  # the snapshot went out
    rt.pools["b"].resume()
    await wait_until(lambda: fake.bodies == 2)  # stuck on "started"
    await rt.wait(job_id, timeout=5)
    fake.unblock.set()
    await asyncio.wait_for(call, 5)
    frames = parse_sse(fake.body.decode())
    seqs = [int(f.id or 0) for f in frames]
    assert seqs == sorted(set(seqs))
    assert [f.event for f in frames][:2] == ["snapshot", "started"]
    end = frames[-1]
    assert end.event == "success" and end.data is not None and end.data["result"] == 7
    assert end.data["job"]["status"] == "SUCCESS"  # rebuilt from the row: it was missed
    assert seqs[-1] == (await rt.get(job_id)).seq
    assert rt.broker.subscribers == 0


async def test_a_stream_goes_on_after_its_events_were_interrupted(
    rt: Runtime, gates: Gates
) -> None:
    """When events may have been missed here (``broker.interrupt``: a PostgreSQL
    node's listener dropped, a standby's owner changed) an open stream subscribes
    again and goes on live; it does not end."""
    app = create_app(rt, heartbeat=0)
    job_id = await rt.add("burst_then_wait", 1, "cut")
    gate = await gate_key(gates, "cut")
    fake = FakeClient()
    call = asyncio.create_task(app(scope_for(f"/jobs/{job_id}/events"), fake.receive, fake.send))
    await wait_until(lambda: b"event: snapshot" in fake.body and rt.broker.subscribers == 1)
    rt.broker.interrupt()
    assert rt.broker.subscribers == 0
    await wait_until(lambda: rt.broker.subscribers == 1)  # subscribed again
    assert not call.done()
    gate.set()  # its last progress and its end come live
    await asyncio.wait_for(call, 5)
    frames = parse_sse(fake.body.decode())
    seqs = [int(f.id or 0) for f in frames]
    assert seqs == sorted(set(seqs))
    assert [f.event for f in frames].count("snapshot") == 1  # nothing was missed
    last_progress = [f for f in frames if f.event == "progress"][-1]
    assert last_progress.data is not None and last_progress.data["message"] == "done"
    assert frames[-1].event == "success"
    assert rt.broker.subscribers == 0 and api_of(app).streams.active == 0


async def test_idle_streams_carry_heartbeat_comments(rt: Runtime, gates: Gates) -> None:
    app = create_app(rt, heartbeat=0.05)
    job_id = await rt.add("steps", 1, "idle")
    await gate_key(gates, "idle")
    fake = FakeClient()
    call = asyncio.create_task(app(scope_for(f"/jobs/{job_id}/events"), fake.receive, fake.send))
    await wait_until(lambda: fake.body.count(b": heartbeat\n\n") >= 2)
    fake.gone.set()
    await asyncio.wait_for(call, 5)
    assert rt.broker.subscribers == 0


async def test_head_answers_headers_without_opening_a_stream(rt: Runtime, gates: Gates) -> None:
    app = create_app(rt)
    job_id = await rt.add("steps", 1, "head")
    await gate_key(gates, "head")
    fake = FakeClient()
    await asyncio.wait_for(
        app(scope_for(f"/jobs/{job_id}/events", method="HEAD"), fake.receive, fake.send), 5
    )
    assert fake.messages[0]["status"] == 200 and fake.body == b""
    assert rt.broker.subscribers == 0 and api_of(app).streams.active == 0


# -- design notes of taskrt.web.sse, pinned ----------------------------------------------------


def test_a_frame_is_one_data_line_whatever_the_message() -> None:
    """Note 2: JSON escapes newlines, so a frame never splits its data."""
    from taskrt.models import Event, EventType, JobStatus
    from taskrt.web.sse import frame

    event = Event(
        1, 4, EventType.PROGRESS, "t", "p", JobStatus.RUNNING, 0.0, {"message": "a\nb\r\nc"}
    )
    text = frame(event, "4").decode()
    assert text.endswith("\n\n") and text.count("\n") == 4
    (parsed,) = parse_sse(text)
    assert parsed.data is not None and parsed.data["message"] == "a\nb\r\nc"
    assert frame(event, "4") == frame(event, "4")  # encoded once, the same bytes


def test_the_send_timeout_override_is_the_one_sse_starlette_calls() -> None:
    """Note 5: ``EventStream`` replaces sse-starlette's per-send timeout; if a
    new sse-starlette renames the method, this fails and the note needs a look."""
    from sse_starlette import EventSourceResponse

    from taskrt.web.sse import EventStream

    assert "_send_with_timeout" in vars(EventSourceResponse)
    assert "_send_with_timeout" in vars(EventStream)
