"""Workflows over HTTP: add chains and groups, read, cancel, follow; ``after`` on POST /jobs.

In process (httpx's ASGI transport) for what ends: a workflow's stream closes
once every job of it has finished. The live stream is also read from a real
server (uvicorn on 127.0.0.1), step by step, as a browser would.
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

from taskrt import JobContext, Runtime
from taskrt.web import Api, create_app

Gates = dict[str, asyncio.Event]
Serve = Callable[..., AbstractAsyncContextManager[str]]


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def make_runtime(path: Path, gates: Gates, steps: dict[str, asyncio.Queue[None]]) -> Runtime:
    rt = Runtime(str(path))

    @rt.task()
    async def fetch(url: str) -> str:
        return f"<{url}>"

    @rt.task()
    async def parse(html: str, extra: str = "") -> str:
        return html.upper() + extra

    @rt.task()
    async def album(results: list[str], title: str) -> dict[str, Any]:
        return {"title": title, "photos": results}

    @rt.task()
    async def gated(job: JobContext, key: str) -> str:
        await job.progress(1, 2, "at the gate")
        await gates.setdefault(key, asyncio.Event()).wait()
        return key

    @rt.task()
    async def stepper(job: JobContext, key: str, n: int) -> str:
        queue = steps.setdefault(key, asyncio.Queue())
        for i in range(n):
            await queue.get()
            await job.progress(i + 1, n, f"step {i + 1}")
        return key

    @rt.task(attempts=1)
    async def boom() -> None:
        raise RuntimeError("boom")

    return rt


@pytest.fixture
def gates() -> Gates:
    return {}


@pytest.fixture
def steps() -> dict[str, asyncio.Queue[None]]:
    return {}


@pytest.fixture
async def rt(
    db_path: Path, gates: Gates, steps: dict[str, asyncio.Queue[None]]
) -> AsyncIterator[Runtime]:
    runtime = make_runtime(db_path, gates, steps)
    async with runtime:
        yield runtime
        for gate in gates.values():
            gate.set()
        for queue in steps.values():
            for _ in range(100):
                queue.put_nowait(None)


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.fixture
async def client(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_app(rt)) as c:
        yield c


def api_of(app: Any) -> Api:
    api: Api = app.state.taskrt
    return api


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    return error


async def gate_key(gates: Gates, key: str) -> asyncio.Event:
    await wait_until(lambda: key in gates)
    return gates[key]


@dataclass
class Frame:
    id: str | None
    event: str | None
    data: dict[str, Any]


def parse_sse(text: str) -> list[Frame]:
    frames = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        if "data" in fields:
            frames.append(Frame(fields.get("id"), fields.get("event"), json.loads(fields["data"])))
    return frames


async def all_jobs(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = (await client.get("/jobs")).json()["jobs"]
    return jobs


# -- adding and reading ---------------------------------------------------------------------


async def test_a_chain_runs_in_order_each_step_taking_the_result_before(
    rt: Runtime, client: httpx.AsyncClient
) -> None:
    r = await client.post(
        "/workflows",
        json={
            "chain": [
                {"task": "fetch", "args": ["a.html"]},
                {"task": "parse", "kwargs": {"extra": "!"}, "options": {"priority": 5}},
                {"task": "parse", "options": None},
            ]
        },
    )
    assert r.status_code == 201, r.text
    created = r.json()
    first, second, third = created["jobs"]
    assert created["id"] == first
    assert created["url"] == f"/workflows/{first}" == r.headers["location"]
    await rt.wait(third, timeout=5)

    workflow = (await client.get(created["url"])).json()
    assert workflow["id"] == first and workflow["status"] == "SUCCESS"
    assert workflow["progress"] == 1.0 and workflow["counts"] == {"SUCCESS": 3}
    assert [j["id"] for j in workflow["jobs"]] == [first, second, third]
    assert [j["result"] for j in workflow["jobs"]] == ["<a.html>", "<A.HTML>!", "<A.HTML>!"]
    assert sorted(map(tuple, workflow["edges"])) == [(second, first), (third, second)]
    job = (await client.get(f"/jobs/{second}")).json()
    assert job["workflow"] == first and job["priority"] == 5


async def test_a_group_then_a_callback_that_gets_the_list_of_results(
    rt: Runtime, client: httpx.AsyncClient
) -> None:
    r = await client.post(
        "/workflows",
        json={
            "group": [{"task": "fetch", "args": [f"p{i}.jpg"]} for i in range(3)],
            "then": {"task": "album", "kwargs": {"title": "Trip"}},
        },
    )
    assert r.status_code == 201, r.text
    ids = r.json()["jobs"]
    assert len(ids) == 4
    callback = await rt.wait(ids[-1], timeout=5)
    assert callback.result == {"title": "Trip", "photos": ["<p0.jpg>", "<p1.jpg>", "<p2.jpg>"]}
    workflow = (await client.get(f"/workflows/{ids[0]}")).json()
    assert workflow["status"] == "SUCCESS"
    assert sorted(map(tuple, workflow["edges"])) == [(ids[3], parent) for parent in ids[:3]]

    alone = await client.post(
        "/workflows", json={"group": [{"task": "fetch", "args": ["x"]}], "then": None}
    )
    assert alone.status_code == 201 and len(alone.json()["jobs"]) == 1


async def test_unknown_workflows_are_404_and_a_plain_job_is_no_workflow(
    rt: Runtime, client: httpx.AsyncClient
) -> None:
    plain = await client.post("/jobs", json={"task": "fetch", "args": ["x"]})
    for path in ("/workflows/999", f"/workflows/{plain.json()['id']}", "/workflows/999/events"):
        r = await client.get(path)
        assert r.status_code == 404, (path, r.text)
        assert error_of(r)["code"] == "workflow_not_found"
    r = await client.post("/workflows/999/cancel")
    assert r.status_code == 404 and error_of(r)["workflow_id"] == 999
    assert rt.broker.subscribers == 0  # a 404 leaves no subscription behind


async def test_cancel_a_workflow_stops_the_running_job_and_the_ones_waiting(
    rt: Runtime, client: httpx.AsyncClient, gates: Gates
) -> None:
    r = await client.post(
        "/workflows",
        json={"chain": [{"task": "gated", "args": ["c"]}, {"task": "parse"}, {"task": "parse"}]},
    )
    ids = r.json()["jobs"]
    await gate_key(gates, "c")  # the first job runs, the others are blocked
    blocked = (await client.get(f"/jobs/{ids[1]}")).json()
    assert blocked["status"] == "WAITING" and blocked["waiting_reason"] == "blocked"

    r = await client.post(f"/workflows/{ids[0]}/cancel")
    assert r.status_code == 200, r.text
    after = r.json()
    assert [j["status"] for j in after["jobs"][1:]] == ["CANCELLED", "CANCELLED"]
    assert (await rt.wait(ids[0], timeout=5)).status.value == "CANCELLED"
    final = (await client.get(f"/workflows/{ids[0]}")).json()
    assert final["status"] == "CANCELLED" and final["counts"] == {"CANCELLED": 3}
    again = await client.post(f"/workflows/{ids[0]}/cancel")  # finished: answered as it is
    assert again.status_code == 200 and again.json()["counts"] == {"CANCELLED": 3}


# -- the event stream ---------------------------------------------------------------------------


async def test_the_stream_is_a_snapshot_then_every_jobs_events_then_it_ends(
    rt: Runtime, gates: Gates, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(rt)
    async with client_for(app) as client:
        r = await client.post(
            "/workflows",
            json={"chain": [{"task": "gated", "args": ["s"]}, {"task": "parse"}]},
        )
        first, second = r.json()["jobs"]
        gate = await gate_key(gates, "s")
        reads = reads_of(rt, "workflow", monkeypatch)
        request = asyncio.create_task(client.get(f"/workflows/{first}/events"))
        await wait_until(lambda: rt.broker.subscribers == 1 and reads == [first])
        gate.set()
        response = await request
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = parse_sse(response.text)

        snapshot = frames[0]
        assert snapshot.event == "snapshot" and snapshot.id == f"{first}:0"
        assert snapshot.data["workflow"]["id"] == first
        assert snapshot.data["workflow"]["status"] == "RUNNING"
        assert [j["status"] for j in snapshot.data["workflow"]["jobs"]] == ["RUNNING", "WAITING"]
        events = [(f.data["job_id"], f.event) for f in frames[1:]]
        assert events[0] == (first, "success")
        assert (second, "started") in events and events[-1] == (second, "success")
        assert frames[-1].data["result"] == "S"
        # Ids are "<job>:<seq>", but the frame after which the workflow is done is "end".
        assert [f.id for f in frames[1:-1]] == [
            f"{f.data['job_id']}:{f.data['seq']}" for f in frames[1:-1]
        ]
        assert frames[-1].id == "end"

        # A reconnect that saw the end: 204 (browsers stop); any other: the final snapshot.
        seen = await client.get(f"/workflows/{first}/events", headers={"Last-Event-ID": "end"})
        assert seen.status_code == 204
        missed = await client.get(f"/workflows/{first}/events?last_event_id={first}:0")
        (final,) = parse_sse(missed.text)
        assert final.event == "snapshot" and final.id == "end"
        assert final.data["workflow"]["status"] == "SUCCESS"
    assert rt.broker.subscribers == 0 and api_of(app).streams.active == 0


async def test_a_workflow_stream_counts_against_the_cap_on_streams(
    rt: Runtime, gates: Gates, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(rt, max_streams=1, retry_after=3)
    async with client_for(app) as client:
        r = await client.post("/workflows", json={"chain": [{"task": "gated", "args": ["cap"]}]})
        workflow_id = r.json()["id"]
        gate = await gate_key(gates, "cap")
        reads = reads_of(rt, "workflow", monkeypatch)
        open_stream = asyncio.create_task(client.get(f"/workflows/{workflow_id}/events"))
        await wait_until(lambda: api_of(app).streams.active == 1 and reads == [workflow_id])
        refused = await client.get(f"/workflows/{workflow_id}/events")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "3"
        assert error_of(refused)["code"] == "too_many_streams"
        gate.set()
        assert [f.event for f in parse_sse((await open_stream).text)][-1] == "success"
    assert api_of(app).streams.active == 0


async def test_head_answers_headers_and_leaves_nothing_open(rt: Runtime, gates: Gates) -> None:
    app = create_app(rt)
    async with client_for(app) as client:
        r = await client.post("/workflows", json={"chain": [{"task": "gated", "args": ["h"]}]})
        await gate_key(gates, "h")
        head = await client.head(f"/workflows/{r.json()['id']}/events")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-type"].startswith("text/event-stream")
    assert rt.broker.subscribers == 0 and api_of(app).streams.active == 0


async def read(events: AsyncIterator[ServerSentEvent], n: int) -> list[ServerSentEvent]:
    out = []
    async for event in events:
        out.append(event)
        if len(out) == n:
            break
    return out


@pytest.mark.server
async def test_live_events_arrive_as_the_workflow_runs_on_a_real_server(
    rt: Runtime, steps: dict[str, asyncio.Queue[None]], server: Serve
) -> None:
    app = create_app(rt)
    async with server(app) as base, httpx.AsyncClient(base_url=base) as client:
        r = await client.post(
            "/workflows",
            json={"chain": [{"task": "stepper", "args": ["live", 2]}, {"task": "parse"}]},
        )
        first, second = r.json()["jobs"]
        async with aconnect_sse(client, "GET", f"/workflows/{first}/events") as source:
            events = source.aiter_sse()
            (snapshot,) = await read(events, 1)
            assert snapshot.event == "snapshot"
            assert snapshot.json()["workflow"]["jobs"][1]["waiting_reason"] == "blocked"
            await wait_until(lambda: "live" in steps)
            for i in (1, 2):
                steps["live"].put_nowait(None)  # the job takes step i only now
                event = (await read(events, 1))[0]
                while event.event != "progress":  # "started" comes once, before step 1
                    event = (await read(events, 1))[0]
                assert (event.json()["job_id"], event.json()["current"]) == (first, i)
            rest = [e async for e in events]  # until the server ends the stream
        assert [(e.json()["job_id"], e.event) for e in rest] == [
            (first, "success"),
            (second, "started"),
            (second, "success"),
        ]
        assert rest[-1].id == "end" and rest[-1].json()["result"] == "LIVE"

        # A client that goes away mid-stream leaves nothing behind.
        r = await client.post(
            "/workflows", json={"chain": [{"task": "stepper", "args": ["gone", 1]}]}
        )
        async with aconnect_sse(client, "GET", f"/workflows/{r.json()['id']}/events") as source:
            assert (await read(source.aiter_sse(), 1))[0].event == "snapshot"
        await wait_until(lambda: rt.broker.subscribers == 0 and api_of(app).streams.active == 0)


# -- POST /jobs with parents -----------------------------------------------------------------


async def test_a_job_added_after_another_waits_blocked_then_runs(
    rt: Runtime, client: httpx.AsyncClient, gates: Gates
) -> None:
    parent = (await client.post("/jobs", json={"task": "gated", "args": ["p"]})).json()["id"]
    gate = await gate_key(gates, "p")
    r = await client.post("/jobs", json={"task": "fetch", "args": ["x"], "after": [parent]})
    assert r.status_code == 201, r.text
    child = r.json()
    assert child["status"] == "WAITING" and child["waiting_reason"] == "blocked"
    await asyncio.sleep(0.05)  # as a cancellation target: nothing may start it meanwhile
    assert (await client.get(f"/jobs/{child['id']}")).json()["status"] == "WAITING"
    gate.set()
    done = await rt.wait(child["id"], timeout=5)
    assert done.status.value == "SUCCESS" and done.result == "<x>"


async def test_a_failed_parent_cancels_its_child_unless_it_runs_anyway(
    rt: Runtime, client: httpx.AsyncClient
) -> None:
    parent = (await client.post("/jobs", json={"task": "boom"})).json()["id"]
    cancelled = await client.post("/jobs", json={"task": "fetch", "args": ["a"], "after": [parent]})
    anyway = await client.post(
        "/jobs",
        json={"task": "fetch", "args": ["b"], "after": [parent], "on_parent_failure": "run"},
    )
    assert cancelled.status_code == anyway.status_code == 201
    one = await rt.wait(cancelled.json()["id"], timeout=5)
    assert one.status.value == "CANCELLED" and one.error == f"parent job {parent} failed"
    two = await rt.wait(anyway.json()["id"], timeout=5)
    assert two.status.value == "SUCCESS" and two.result == "<b>"


@pytest.mark.parametrize(
    ("extra", "status", "code"),
    [
        ({"after": [999]}, 404, "job_not_found"),
        ({"after": []}, 422, "invalid_option"),
        ({"after": [0]}, 422, "invalid_request"),
        ({"after": ["1"]}, 422, "invalid_request"),
        ({"after": 1}, 422, "invalid_request"),
        ({"after": [True]}, 422, "invalid_request"),
        ({"on_parent_failure": "maybe"}, 422, "invalid_option"),
        ({"on_parent_failure": 1}, 422, "invalid_request"),
    ],
)
async def test_post_jobs_refuses_bad_parents(
    client: httpx.AsyncClient, extra: dict[str, Any], status: int, code: str
) -> None:
    r = await client.post("/jobs", json={"task": "fetch", "args": ["x"], **extra})
    assert r.status_code == status, r.text
    error = error_of(r)
    assert error["code"] == code
    if status == 422:
        assert error["field"] == next(iter(extra))
    assert await all_jobs(client) == []  # nothing stored


# -- bad bodies -------------------------------------------------------------------------------

STEP = {"task": "fetch", "args": ["u"]}


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({}, 422, "invalid_request", "chain"),
        ({"chain": []}, 422, "invalid_request", "chain"),
        ({"chain": None}, 422, "invalid_request", "chain"),
        ({"chain": "fetch"}, 422, "invalid_request", "chain"),
        ({"chain": [STEP], "group": [STEP]}, 422, "invalid_request", "group"),
        ({"chain": [STEP], "then": STEP}, 422, "invalid_request", "then"),
        ({"chain": [STEP], "extra": 1}, 422, "invalid_request", "extra"),
        ({"chain": [STEP, {"task": 5}]}, 422, "invalid_request", "chain[1].task"),
        ({"chain": [STEP, {"args": []}]}, 422, "invalid_request", "chain[1].task"),
        ({"chain": [STEP, "parse"]}, 422, "invalid_request", "chain[1]"),
        ({"chain": [{**STEP, "queue": "q"}]}, 422, "invalid_request", "chain[0].queue"),
        ({"group": [{"task": "fetch", "args": {"a": 1}}]}, 422, "invalid_request", "group[0].args"),
        ({"group": [{"task": "fetch", "kwargs": [1]}]}, 422, "invalid_request", "group[0].kwargs"),
        ({"group": [{**STEP, "options": []}]}, 422, "invalid_request", "group[0].options"),
        (
            {"group": [{**STEP, "options": {"pool": "x"}}]},
            422,
            "invalid_request",
            "group[0].options.pool",
        ),
        (
            {"group": [{**STEP, "options": {"priority": "high"}}]},
            422,
            "invalid_request",
            "group[0].options.priority",
        ),
        (
            {"group": [STEP, {**STEP, "options": {"delay": "soon"}}]},
            422,
            "invalid_option",
            "group[1].options.delay",
        ),
        (
            {"group": [STEP], "then": {"task": "album", "options": {"after": [0]}}},
            422,
            "invalid_request",
            "then.options.after",
        ),
        ({"group": [STEP], "then": "album"}, 422, "invalid_request", "then"),
        (
            {"chain": [STEP, {**STEP, "options": {"unique_key": "k"}}] * 2},
            422,
            "invalid_option",
            "chain[3].options.unique_key",
        ),
        (
            {
                "group": [{**STEP, "options": {"unique_key": "k"}}],
                "then": {"task": "album", "options": {"unique_key": "k"}},
            },
            422,
            "invalid_option",
            "then.options.unique_key",
        ),
        # Shape first, then tasks (404), then options (note 1 of taskrt/web/workflows.py).
        (
            {"chain": [{"task": "nope"}, {"task": "fetch", "args": 1}]},
            422,
            "invalid_request",
            "chain[1].args",
        ),
        (
            {"chain": [STEP, {"task": "nope", "options": {"delay": "soon"}}]},
            404,
            "task_not_found",
            None,
        ),
        # The runtime's checks, all steps or none.
        (
            {"chain": [{"task": "fetch", "args": ["u", "v"]}, {"task": "parse"}]},
            422,
            "validation_error",
            None,
        ),
        # (the second step takes the first's result, so it has no argument of its own)
        (
            {"chain": [STEP, {"task": "parse", "options": {"after": [999]}}]},
            404,
            "job_not_found",
            None,
        ),
    ],
)
async def test_bad_bodies_are_refused_naming_the_field_and_add_nothing(
    client: httpx.AsyncClient, body: Any, status: int, code: str, field: str | None
) -> None:
    r = await client.post("/workflows", json=body)
    assert r.status_code == status, r.text
    error = error_of(r)
    assert error["code"] == code, error
    assert error.get("field") == field
    if field is not None:
        assert error["message"].startswith(f"{field}: ")
    assert await all_jobs(client) == []


async def test_the_openapi_document_describes_workflows(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    assert schemas["Job"]["properties"]["workflow"]["type"] == ["integer", "null"]
    assert {"after", "on_parent_failure"} <= set(schemas["NewJob"]["properties"])
    step_options = schemas["WorkflowStep"]["properties"]["options"]["properties"]
    assert set(step_options) == set(schemas["NewJob"]["properties"]) - {
        "task",
        "args",
        "kwargs",
        "pool",
    }
    paths = doc["paths"]
    assert set(paths["/workflows"]) == {"post"}
    assert paths["/workflows/{workflow_id}"]["get"]["responses"]["200"]["content"][
        "application/json"
    ]["schema"] == {"$ref": "#/components/schemas/Workflow"}
    events = paths["/workflows/{workflow_id}/events"]["get"]["responses"]
    assert "text/event-stream" in events["200"]["content"] and "204" in events
