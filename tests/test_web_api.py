"""The JSON API, in process (httpx's ASGI transport): every endpoint and every error."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from taskrt import InvalidOption, JobContext, JobStatus, Runtime
from taskrt.web import (
    Api,
    EndpointGroup,
    Forbidden,
    JobTokens,
    Reply,
    Unauthorized,
    create_app,
)
from taskrt.web.errors import ApiError
from taskrt.web.jobs import NEW_JOB_FIELDS

JSON = {"content-type": "application/json"}


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def make_runtime(path: Path, gates: dict[str, asyncio.Event]) -> Runtime:
    rt = Runtime(str(path))
    rt.pool("tiny", concurrency=1, capacity=1)

    @rt.task(pool="main")
    async def echo(job: JobContext, value: Any = None) -> Any:
        return value

    @rt.task(pool="main")
    async def add(job: JobContext, a: int, b: int) -> int:
        return a + b

    @rt.task(pool="main")
    async def gated(job: JobContext, key: str) -> str:
        await job.progress(1, 2, "waiting at the gate")
        await gates.setdefault(key, asyncio.Event()).wait()
        return key

    @rt.task(pool="main", attempts=1)
    async def boom(job: JobContext) -> None:
        raise RuntimeError("boom")

    @rt.task(pool="tiny")
    async def queued(job: JobContext) -> None:
        return None

    @rt.task(pool="main")
    async def takes_tx(job: JobContext, tx: str) -> str:
        return tx

    return rt


@pytest.fixture
def gates() -> dict[str, asyncio.Event]:
    return {}


@pytest.fixture
async def rt(db_path: Path, gates: dict[str, asyncio.Event]) -> AsyncIterator[Runtime]:
    runtime = make_runtime(db_path, gates)
    async with runtime:
        yield runtime
        for gate in gates.values():
            gate.set()


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.fixture
async def client(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_app(rt)) as c:
        yield c


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    assert "Traceback" not in response.text
    return error


# -- adding ----------------------------------------------------------------------------


async def test_add_returns_201_with_the_durable_job(rt: Runtime, client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/jobs", json={"task": "add", "kwargs": {"a": 2, "b": 3}, "metadata": {"user": 42}}
    )
    assert r.status_code == 201
    job = r.json()
    assert r.headers["location"] == f"/jobs/{job['id']}"
    assert job["task"] == "add" and job["pool"] == "main" and job["metadata"] == {"user": 42}
    assert job["status"] in ("WAITING", "RUNNING", "SUCCESS")
    await rt.wait(job["id"], timeout=5)
    done = (await client.get(f"/jobs/{job['id']}")).json()
    assert done["status"] == "SUCCESS" and done["result"] == 5


async def test_add_applies_every_option(rt: Runtime, client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/jobs",
        json={
            "task": "echo",
            "args": ["hi"],
            "delay": "1h",
            "priority": 7,
            "unique_key": "k1",
            "attempts": 4,
            "timeout": 30,
        },
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "WAITING" and job["args"] == ["hi"]
    assert job["priority"] == 7 and job["max_attempts"] == 4 and job["timeout"] == 30
    assert job["run_at"] - job["created_at"] == pytest.approx(3600, abs=1)
    again = await client.post("/jobs", json={"task": "echo", "unique_key": "k1"})
    assert again.json()["id"] == job["id"]
    at = await client.post("/jobs", json={"task": "echo", "run_at": "2100-01-01T00:00:00Z"})
    assert at.json()["run_at"] == 4102444800.0


async def test_a_job_argument_named_tx_reaches_the_handler(
    rt: Runtime, client: httpx.AsyncClient
) -> None:
    r = await client.post("/jobs", json={"task": "takes_tx", "kwargs": {"tx": "mine"}})
    assert r.status_code == 201
    assert (await rt.wait(r.json()["id"], timeout=5)).result == "mine"


async def test_a_whole_float_for_an_int_parameter_is_that_int_everywhere(
    target: tuple[str, dict[str, Any]],
) -> None:
    """``/tasks`` publishes ``n: int`` as ``{"type": "integer"}``, which takes ``3.0``,
    and the body fields take ``5.0`` as ``5``: a job (over HTTP or from Python, a
    schedule's, a workflow's step) stored ``3.0`` as it came and its handler got a
    float (``"ab" * 3.0``: TypeError). Now the job stores the int, and the handler
    gets it; a whole float where a float fits stays one."""
    db, options = target
    rt = Runtime(db, **options)

    @rt.task
    async def repeat(job: JobContext, n: int, ns: list[int] | None = None, x: float = 0) -> str:
        kinds = [type(v).__name__ for v in (n, *(ns or ()), x)]
        return " ".join(kinds) + " " + "ab" * n

    def ints(job: dict[str, Any]) -> tuple[Any, ...]:
        values = (*job["args"], *job["kwargs"].values())
        return tuple((type(v).__name__, v) for v in values)

    async with rt, client_for(create_app(rt)) as client, asyncio.timeout(20):
        r = await client.post("/jobs", json={"task": "repeat", "kwargs": {"n": 3.0, "x": 2.0}})
        assert r.status_code == 201, r.text
        assert ints(r.json()) == (("int", 3), ("float", 2.0))
        assert (await rt.wait(r.json()["id"], timeout=5)).result == "int float ababab"
        r = await client.post("/jobs", json={"task": "repeat", "args": [2.0, [1.0, 2]]})
        assert r.status_code == 201, r.text
        assert r.json()["args"] == [2, [1, 2]] and ints(r.json())[0] == ("int", 2)
        assert (await rt.wait(r.json()["id"], timeout=5)).result == "int int int int abab"
        r = await client.post("/jobs", json={"task": "repeat", "kwargs": {"n": 2.5}})
        assert r.status_code == 422 and error_of(r)["parameter"] == "n"

        job_id = await rt.pool("default").add(repeat, 1.0)
        assert (await rt.wait(job_id, timeout=5)).result == "int int ab"
        assert ints((await client.get(f"/jobs/{job_id}")).json()) == (("int", 1),)

        r = await client.post(
            "/workflows", json={"chain": [{"task": "repeat", "kwargs": {"n": 1.0}}]}
        )
        assert r.status_code == 201, r.text
        [step] = r.json()["jobs"]
        assert (await rt.wait(step, timeout=5)).result == "int int ab"
        assert ints((await client.get(f"/jobs/{step}")).json()) == (("int", 1),)

        schedule = {"name": "s", "task": "repeat", "expression": "0 0 1 1 *"}
        r = await client.post("/schedules", json={**schedule, "kwargs": {"n": 2.0}})
        assert r.status_code == 201, r.text
        assert r.json()["kwargs"] == {"n": 2} and type(r.json()["kwargs"]["n"]) is int
        r = await client.put("/schedules/s", json={"kwargs": {"n": 1.0}})
        assert r.status_code == 200, r.text
        assert type(r.json()["kwargs"]["n"]) is int
        r = await client.post("/schedules/s/run")
        assert r.status_code == 201, r.text
        assert (await rt.wait(r.json()["id"], timeout=5)).result == "int int ab"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"task": "nope"}, 404, "task_not_found"),
        ({"task": "echo", "pool": "nope"}, 404, "pool_not_found"),
        (b'{"task": "echo", "kwargs": {"value": 1e400}}', 422, "not_serializable"),
        ({"task": "add", "kwargs": {"a": "x", "b": 1}}, 422, "validation_error"),
        ({"task": "add", "kwargs": {"a": 1}}, 422, "validation_error"),
        ({"task": "echo", "delay": "soon"}, 422, "invalid_option"),
        ({"task": "echo", "delay": "inf"}, 422, "invalid_option"),
        ({"task": "echo", "timeout": -1}, 422, "invalid_option"),
        ({"task": "echo", "attempts": 0}, 422, "invalid_option"),
        ({"task": "echo", "priority": 2**70}, 422, "invalid_request"),
        ({"task": "echo", "priority": "high"}, 422, "invalid_request"),
        ({"task": "echo", "args": {"a": 1}}, 422, "invalid_request"),
        ({"task": "echo", "kwargs": [1]}, 422, "invalid_request"),
        ({"task": "echo", "run_at": "2030-01-01T00:00:00"}, 422, "invalid_request"),
        ({"task": "echo", "run_at": "tomorrow"}, 422, "invalid_request"),
        ({"task": "echo", "kwarg": {}}, 422, "invalid_request"),
        ({"task": 5}, 422, "invalid_request"),
        ({}, 422, "invalid_request"),
        ([1, 2], 422, "invalid_request"),
        ("task", 422, "invalid_request"),
    ],
)
async def test_add_refuses_bad_input_with_the_right_status(
    client: httpx.AsyncClient, body: Any, status: int, code: str
) -> None:
    if isinstance(body, bytes):
        r = await client.post("/jobs", content=body, headers=JSON)
    else:
        r = await client.post("/jobs", json=body)
    assert r.status_code == status, r.text
    assert error_of(r)["code"] == code


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b"{bad", JSON, 400, "malformed_json"),
        (b"", JSON, 400, "malformed_json"),
        (b'{"task": NaN}', JSON, 400, "malformed_json"),
        (b"\xff\xfe", JSON, 400, "malformed_json"),
        (b"[" * 100_000, JSON, 400, "malformed_json"),
        (b'{"task": "echo"}', {"content-type": "text/plain"}, 415, "unsupported_media_type"),
        (b'{"task": "echo"}', {}, 415, "unsupported_media_type"),
        (
            b'{"task": "echo"}',
            {"content-type": "application/json; charset=latin-1"},
            415,
            "unsupported_media_type",
        ),
        (b'{"task": "echo"}', {**JSON, "content-length": "x"}, 400, "bad_request"),
    ],
)
async def test_add_refuses_bodies_that_are_not_json(
    client: httpx.AsyncClient, content: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    r = await client.post("/jobs", content=content, headers=headers)
    assert r.status_code == status, r.text
    assert error_of(r)["code"] == code


async def test_a_number_of_too_many_digits_is_named_without_pythons_advice(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post(
        "/jobs", content=b'{"task": "echo", "args": [' + b"7" * 5000 + b"]}", headers=JSON
    )
    assert r.status_code == 400 and error_of(r)["code"] == "malformed_json"
    message = error_of(r)["message"]
    assert "a number has more than 4300 digits" in message, message
    assert "sys." not in message


async def test_a_name_given_twice_is_refused_not_read_as_its_last_value(
    client: httpx.AsyncClient,
) -> None:
    """``{"task": "echo", "task": "other"}`` would run ``other`` if the last one won."""
    before = (await client.get("/jobs/count")).json()
    for body in (
        b'{"task": "echo", "args": [1], "task": "missing"}',
        b'{"task": "echo", "metadata": {"k": 1, "k": 2}}',
    ):
        r = await client.post("/jobs", content=body, headers=JSON)
        assert r.status_code == 400, r.text
        assert error_of(r)["code"] == "malformed_json"
        assert "is given twice" in error_of(r)["message"], r.text
    assert (await client.get("/jobs/count")).json() == before
    r = await client.post(
        "/jobs", content=b'{"task": "echo", "metadata": {"k": {"k": 1}}}', headers=JSON
    )
    assert r.status_code == 201, r.text


async def test_a_json_suffix_media_type_is_json(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/jobs",
        content=b'{"task": "echo"}',
        headers={"content-type": "application/vnd.api+json; charset=utf-8"},
    )
    assert r.status_code == 201


async def test_body_over_the_limit_is_413_by_content_length_and_by_counting(rt: Runtime) -> None:
    async with client_for(create_app(rt, max_body=100)) as client:
        big = json.dumps({"task": "echo", "kwargs": {"value": "x" * 200}}).encode()
        r = await client.post("/jobs", content=big, headers=JSON)
        assert r.status_code == 413 and error_of(r)["code"] == "body_too_large"

        streamed = 0

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal streamed
            for _ in range(1000):  # 64 KB, no Content-Length: chunked
                streamed += 1
                yield b" " * 64

        r = await client.post("/jobs", content=chunks(), headers=JSON)
        assert r.status_code == 413 and error_of(r)["code"] == "body_too_large"
        assert "content-length" not in r.request.headers
        small = await client.post("/jobs", json={"task": "echo"})
        assert small.status_code == 201


async def test_a_full_pool_is_503_with_retry_after(rt: Runtime) -> None:
    rt.pools["tiny"].pause()
    async with client_for(create_app(rt, retry_after=7)) as client:
        assert (await client.post("/jobs", json={"task": "queued"})).status_code == 201
        r = await client.post("/jobs", json={"task": "queued"})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "7"
        assert error_of(r) == {
            "code": "queue_full",
            "message": "pool 'tiny' is full: 1 jobs are waiting",
            "pool": "tiny",
            "capacity": 1,
        }


# -- reading ---------------------------------------------------------------------------


async def test_job_parts_progress_result_and_attempts(
    rt: Runtime, client: httpx.AsyncClient, gates: dict[str, asyncio.Event]
) -> None:
    job_id = (await client.post("/jobs", json={"task": "gated", "kwargs": {"key": "g"}})).json()[
        "id"
    ]
    await wait_until(lambda: "g" in gates)
    progress = (await client.get(f"/jobs/{job_id}/progress")).json()
    assert progress == {
        "id": job_id,
        "status": "RUNNING",
        "current": 1,
        "total": 2,
        "message": "waiting at the gate",
        "percent": 50.0,
        "step": None,
        "steps": [],
    }
    assert (await client.get(f"/jobs/{job_id}/result")).json()["result"] is None
    gates["g"].set()
    await rt.wait(job_id, timeout=5)
    result = (await client.get(f"/jobs/{job_id}/result")).json()
    assert result["status"] == "SUCCESS" and result["result"] == "g" and result["error"] is None
    attempts = (await client.get(f"/jobs/{job_id}/attempts")).json()["attempts"]
    assert [(a["number"], a["outcome"]) for a in attempts] == [(1, "success")]


async def test_attempts_withhold_tracebacks_unless_exposed(rt: Runtime) -> None:
    job_id = await rt.add("boom")
    await rt.wait(job_id, timeout=5)
    async with client_for(create_app(rt)) as client:
        attempt = (await client.get(f"/jobs/{job_id}/attempts")).json()["attempts"][0]
        assert attempt["outcome"] == "error" and "boom" in attempt["error"]
        assert attempt["traceback"] is None
        assert "Traceback" not in (await client.get(f"/jobs/{job_id}")).text
    async with client_for(create_app(rt, expose_tracebacks=True)) as client:
        attempt = (await client.get(f"/jobs/{job_id}/attempts")).json()["attempts"][0]
        assert "RuntimeError: boom" in attempt["traceback"]
    # Behind ``auth``, operators see tracebacks; a per-job token never does.
    async with client_for(create_app(rt, auth=bearer)) as client:
        authed = {"authorization": "Bearer s3cret"}
        r = await client.get(f"/jobs/{job_id}/attempts", headers=authed)
        assert "RuntimeError: boom" in r.json()["attempts"][0]["traceback"]
        token = (await client.post(f"/jobs/{job_id}/token", headers=authed)).json()["token"]
        r = await client.get(f"/jobs/{job_id}/attempts", params={"token": token})
        assert r.json()["attempts"][0]["traceback"] is None


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/999",
        "/jobs/999/progress",
        "/jobs/999/result",
        "/jobs/999/attempts",
        "/jobs/99999999999999999999999999",
        "/jobs/99999999999999999999999999/events",
    ],
)
async def test_unknown_jobs_are_404(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 404
    assert error_of(r)["code"] == "job_not_found"


async def test_unknown_routes_and_methods_are_json(client: httpx.AsyncClient) -> None:
    r = await client.get("/nowhere")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    r = await client.get("/jobs/abc")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    r = await client.put("/jobs")
    assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed"
    assert "GET" in r.headers["allow"]


# -- cancel and retry ---------------------------------------------------------------------


async def test_cancel_a_waiting_job_then_409(rt: Runtime, client: httpx.AsyncClient) -> None:
    job_id = (await client.post("/jobs", json={"task": "echo", "delay": 3600})).json()["id"]
    r = await client.delete(f"/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED"
    r = await client.delete(f"/jobs/{job_id}")
    assert r.status_code == 409
    assert error_of(r) | {"message": ""} == {
        "code": "invalid_transition",
        "message": "",
        "job_id": job_id,
        "status": "CANCELLED",
    }


async def test_cancel_a_running_job(
    rt: Runtime, client: httpx.AsyncClient, gates: dict[str, asyncio.Event]
) -> None:
    job_id = (await client.post("/jobs", json={"task": "gated", "kwargs": {"key": "c"}})).json()[
        "id"
    ]
    await wait_until(lambda: "c" in gates)
    r = await client.delete(f"/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED"


async def test_retry_a_failed_job_and_refuse_others(rt: Runtime, client: httpx.AsyncClient) -> None:
    job_id = await rt.add("boom")
    await rt.wait(job_id, timeout=5)
    r = await client.post(f"/jobs/{job_id}/retry")
    assert r.status_code == 200 and r.json()["status"] in ("WAITING", "RUNNING", "FAILURE")
    final = await rt.wait(job_id, timeout=5)
    assert final.attempts == 2
    ok = await rt.add("echo", 1)
    await rt.wait(ok, timeout=5)
    r = await client.post(f"/jobs/{ok}/retry")
    assert r.status_code == 409 and error_of(r)["status"] == "SUCCESS"
    assert (await client.post("/jobs/999/retry")).status_code == 404


async def test_a_refused_retry_of_a_dependent_says_why(
    rt: Runtime, client: httpx.AsyncClient
) -> None:
    parent = await rt.add("boom")
    child = await rt.enqueue("echo", args=[1], after=[parent])
    assert (await rt.wait(child, timeout=5)).status is JobStatus.CANCELLED
    r = await client.post(f"/jobs/{child}/retry")
    assert r.status_code == 409
    error = error_of(r)
    assert (error["code"], error["job_id"], error["status"]) == (
        "invalid_transition",
        child,
        "CANCELLED",
    )
    assert error["reason"] == f"its parent job {parent} failed: retry that job first"
    assert error["message"] == f"cannot retry job {child}: it is CANCELLED and " + error["reason"]


# -- listing and statistics ------------------------------------------------------------------


async def test_list_filters_and_pages_with_a_stable_cursor(
    rt: Runtime, client: httpx.AsyncClient
) -> None:
    ids = []
    for user in (1, 42, 42, 7, 42):
        r = await client.post(
            "/jobs", json={"task": "echo", "delay": 3600, "metadata": {"user": user}}
        )
        ids.append(r.json()["id"])
    other = await client.post("/jobs", json={"task": "add", "kwargs": {"a": 1, "b": 1}})
    await rt.wait(other.json()["id"], timeout=5)

    page = (await client.get("/jobs", params={"metadata.user": "42", "limit": 2})).json()
    assert [j["id"] for j in page["jobs"]] == [ids[4], ids[2]]
    assert page["cursor"] is not None
    await client.post("/jobs", json={"task": "echo", "delay": 3600, "metadata": {"user": 42}})
    rest = (
        await client.get(
            "/jobs", params={"metadata.user": "42", "limit": 2, "cursor": page["cursor"]}
        )
    ).json()
    assert [j["id"] for j in rest["jobs"]] == [ids[1]] and rest["cursor"] is None

    waiting = (await client.get("/jobs?status=WAITING&task=echo")).json()["jobs"]
    assert {j["id"] for j in waiting} >= set(ids)
    both = (await client.get("/jobs?status=waiting,success&pool=main")).json()["jobs"]
    assert other.json()["id"] in {j["id"] for j in both}
    assert (await client.get("/jobs?metadata.user=%2242%22")).json()["jobs"] == []


async def test_a_metadata_filter_takes_every_64_bit_integer(client: httpx.AsyncClient) -> None:
    """-2**63 was sent on as text (``abs(-2**63)`` is beyond 2**63 - 1) and matched no
    job, though POST /jobs stores it and the Python filter finds it."""
    ids = {}
    for n in (-(2**63), -(2**63) + 1, 2**63 - 1):
        r = await client.post("/jobs", json={"task": "echo", "delay": 3600, "metadata": {"n": n}})
        ids[n] = r.json()["id"]
    for n, job_id in ids.items():
        listed = (await client.get("/jobs", params={"metadata.n": str(n)})).json()["jobs"]
        assert [j["id"] for j in listed] == [job_id], n
        counted = (await client.get("/jobs/count", params={"metadata.n": str(n)})).json()
        assert counted["count"] == 1, n


@pytest.mark.parametrize(
    "query",
    [
        "status=DONE",
        "limit=0",
        "limit=5000",
        "limit=ten",
        "cursor=abc",
        "cursor=99999999999999999999999",
        "stauts=WAITING",
        "metadata.=1",
    ],
)
async def test_list_refuses_bad_queries_with_422(client: httpx.AsyncClient, query: str) -> None:
    r = await client.get(f"/jobs?{query}")
    assert r.status_code == 422, r.text
    assert error_of(r)["code"] in ("invalid_request", "invalid_option")


async def test_stats(rt: Runtime, client: httpx.AsyncClient) -> None:
    for job_id in [await rt.add("echo", 1), await rt.add("boom")]:
        await rt.wait(job_id, timeout=5)
    stats = (await client.get("/stats")).json()
    assert stats["counts"]["SUCCESS"] == 1 and stats["counts"]["FAILURE"] == 1
    assert stats["success_rate"] == 0.5 and stats["total"] == 2
    future = (await client.get("/stats", params={"since": "2999-01-01T00:00:00+00:00"})).json()
    assert future["total"] == 0
    assert (await client.get("/stats?since=yesterday")).status_code == 422
    assert (await client.get("/stats?since=10&until=5")).status_code == 422


async def test_tasks_lists_parameters(client: httpx.AsyncClient) -> None:
    tasks = {t["name"]: t for t in (await client.get("/tasks")).json()["tasks"]}
    assert tasks["add"]["pool"] == "main"
    assert tasks["add"]["parameters"]["properties"]["a"]["type"] == "integer"


# -- pools ------------------------------------------------------------------------------------


async def test_pools_list_create_change(rt: Runtime, client: httpx.AsyncClient) -> None:
    names = [p["name"] for p in (await client.get("/pools")).json()["pools"]]
    assert names == sorted(rt.pools)
    assert (await client.get("/pools/main")).json()["concurrency"] == 10
    assert error_of(await client.get("/pools/nope"))["code"] == "pool_not_found"

    r = await client.post("/pools", json={"name": "reports", "concurrency": 2, "capacity": 5})
    assert r.status_code == 201 and r.headers["location"] == "/pools/reports"
    assert r.json() | {"waiting": 0} == {
        "name": "reports",
        "concurrency": 2,
        "capacity": 5,
        "waiting": 0,
        "running": 0,
        "paused": False,
        "processed": 0,
        "failed": 0,
        "latency": 0.0,
        "rate": None,
        "next_slot": 0.0,
    }
    assert rt.pools["reports"].concurrency == 2
    dup = await client.post("/pools", json={"name": "reports"})
    assert dup.status_code == 409 and error_of(dup)["code"] == "pool_exists"

    r = await client.patch("/pools/reports", json={"concurrency": 4, "capacity": None})
    assert r.status_code == 200 and r.json()["concurrency"] == 4 and r.json()["capacity"] is None

    # A rate limit, set and lifted at run time; a bad one changes nothing.
    r = await client.patch("/pools/reports", json={"rate": "5/s", "concurrency": 6})
    assert (r.status_code, r.json()["rate"], r.json()["concurrency"]) == (200, "5/s", 6)
    assert str(rt.pools["reports"].rate) == "5/s"
    bad = await client.patch("/pools/reports", json={"rate": "fast", "concurrency": 7})
    assert bad.status_code == 422 and error_of(bad)["field"] == "rate"
    assert rt.pools["reports"].concurrency == 6
    r = await client.patch("/pools/reports", json={"rate": None})
    assert r.json()["rate"] is None and rt.pools["reports"].rate is None


async def test_pause_and_resume_a_pool_at_run_time(rt: Runtime, client: httpx.AsyncClient) -> None:
    assert (await client.patch("/pools/main", json={"paused": True})).json()["paused"] is True
    job_id = (await client.post("/jobs", json={"task": "echo", "args": [1]})).json()["id"]
    assert (await client.get("/pools/main")).json()["waiting"] == 1
    assert (await rt.get(job_id)).status.value == "WAITING"
    assert (await client.patch("/pools/main", json={"paused": False})).json()["paused"] is False
    assert (await rt.wait(job_id, timeout=5)).result == 1


async def test_a_pause_the_database_refuses_changes_nothing(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write comes first: a failed one left the pool paused (or created, by
    ``POST /pools``) though the answer was an error."""
    from taskrt import StoreError

    async def refused(name: str, paused: bool) -> None:
        raise StoreError("write failed: disk I/O error")

    monkeypatch.setattr(rt.store, "set_pool_paused", refused)
    transport = httpx.ASGITransport(app=create_app(rt), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        r = await client.patch("/pools/main", json={"paused": True, "concurrency": 3})
        assert r.status_code == 500 and error_of(r)["code"] == "store_error"
        assert (rt.pools["main"].paused, rt.pools["main"].concurrency) == (False, 10)
        r = await client.post("/pools", json={"name": "new", "paused": True})
        assert r.status_code == 500 and error_of(r)["code"] == "store_error"
        assert (await client.get("/pools/new")).status_code == 404
    assert "new" not in rt.pools


async def test_a_pool_with_a_slash_in_its_name_is_read_and_changed_at_its_path(
    rt: Runtime, client: httpx.AsyncClient
) -> None:
    rt.pool("team/mail", concurrency=1)  # declared in code: names there may hold a "/"
    for path in ("/pools/team%2Fmail", "/pools/team/mail"):
        r = await client.get(path)
        assert r.status_code == 200 and r.json()["name"] == "team/mail", r.text
    r = await client.patch("/pools/team%2Fmail", json={"paused": True, "concurrency": 3})
    assert r.status_code == 200, r.text
    assert (r.json()["paused"], r.json()["concurrency"]) == (True, 3)
    assert rt.pools["team/mail"].paused and not rt.pools["main"].paused
    r = await client.patch("/pools/team/mail", json={"paused": False})
    assert r.status_code == 200 and not rt.pools["team/mail"].paused
    # A path below a pool is no pool: a 404 that names it, not a route for another pool.
    for path in ("/pools/team", "/pools/team/mail/x", "/pools/"):
        missing = await client.get(path)
        assert missing.status_code == 404 and error_of(missing)["code"] == "pool_not_found"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/pools", {"name": "a/b"}),
        ("POST", "/pools", {"name": ""}),
        ("POST", "/pools", {"name": "."}),  # a URL drops the segment: /pools/.. is /
        ("POST", "/pools", {"name": ".."}),
        ("POST", "/pools", {"name": "x", "concurrency": 0}),
        ("POST", "/pools", {"name": "x", "concurrency": "2"}),
        ("POST", "/pools", {"name": "x", "capacity": -3}),
        ("POST", "/pools", {"name": "x", "workers": 3}),
        ("PATCH", "/pools/main", {"paused": "yes"}),
        ("PATCH", "/pools/main", {"concurrency": True}),
        ("PATCH", "/pools/main", {"size": 3}),
        ("PATCH", "/pools/main", []),
    ],
)
async def test_pool_changes_refuse_bad_input(
    client: httpx.AsyncClient, method: str, path: str, body: Any
) -> None:
    r = await client.request(method, path, json=body)
    assert r.status_code == 422, r.text
    assert error_of(r)["code"] == "invalid_request"


async def test_no_bad_input_gets_a_5xx(client: httpx.AsyncClient) -> None:
    """A sweep of nonsense over every route: only 4xx answers, all JSON errors."""
    bodies: list[bytes] = [
        b"null",
        b"0",
        b'"x"',
        b"[]",
        b"{}",
        b'{"task": null}',
        b'{"task": "echo", "args": null, "kwargs": null}',
        b'{"name": {"a": 1}, "concurrency": 1e308, "capacity": 1.5}',
        b'{"concurrency": -1e999}',
        b'{"task": "echo", "metadata": [], "unique_key": ""}',
        b'{"task": "echo", "run_at": 1e300}',
        b'{"task": "echo", "delay": -5}',
    ]
    paths = ["/jobs", "/pools", "/pools/main", "/jobs/1/retry", "/jobs/1/token", "/jobs/1"]
    for path in paths:
        for method in ("POST", "PATCH", "DELETE", "PUT"):
            for body in bodies:
                r = await client.request(method, path, content=body, headers=JSON)
                assert r.status_code < 500, (method, path, body, r.text)
                if r.status_code >= 400:
                    error_of(r)
    for query in ("limit=-1", "status=", "cursor=-1", "since=nan", "until=inf", "pool=%00"):
        for path in ("/jobs", "/stats", "/pools"):
            r = await client.get(f"{path}?{query}")
            assert r.status_code < 500, (path, query, r.text)


BIG = "9" * 5000  # more digits than int() reads


@pytest.mark.parametrize(
    ("path", "status"),
    [
        # str.isdigit() is true for "²", which int() refuses.
        ("/jobs?cursor=%C2%B2", 422),
        ("/jobs/1?token=v1.%C2%B2.1.x", 401),
        ("/jobs/1/events?last_event_id=%C2%B2", 404),
        ("/jobs?limit=%D9%A3", 422),
        ("/stats?since=1_0", 422),
        (f"/jobs?limit={BIG}", 422),
        (f"/jobs?cursor={BIG}", 422),
        (f"/jobs?cursor={'0' * 5000}1", 200),
        (f"/jobs/1?token=v1.{BIG}.1.x", 401),
        (f"/jobs/{BIG}", 404),
        (f"/jobs/{BIG}/events", 404),
        (f"/dashboard/jobs/{BIG}", 404),
        (f"/stats?since={BIG}", 422),
    ],
)
async def test_numbers_int_cannot_read_are_4xx(
    client: httpx.AsyncClient, path: str, status: int
) -> None:
    r = await client.get(path)
    assert r.status_code == status, r.text
    if status >= 400:
        error_of(r)


@pytest.mark.parametrize("sent", ["100000000000000000000", "-100000000000000000000", "1001"])
async def test_an_integer_out_of_range_is_named_as_sent(
    client: httpx.AsyncClient, sent: str
) -> None:
    """Before, a value past the largest 64-bit integer was named capped at it (a
    client sending 10**20 read that it had sent 9223372036854775808)."""
    r = await client.get(f"/jobs?limit={sent}")
    assert r.status_code == 422
    assert error_of(r)["message"].endswith(f"found '{sent}'"), r.text


async def test_a_huge_content_length_is_413(client: httpx.AsyncClient) -> None:
    r = await client.post("/jobs", content=b"{}", headers={**JSON, "content-length": BIG})
    assert r.status_code == 413 and error_of(r)["code"] == "body_too_large"


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ('/jobs?metadata.k="%5Cud800"', "metadata.k"),  # a lone surrogate, in JSON text
        ('/jobs/count?metadata.k="%5Cud800"', "metadata.k"),
        ("/stats/history?until=1e308", "until"),
        ("/stats/history?until=-1e308", "until"),
        ("/stats/history?since=-1e308&until=1e308", "since"),
        ("/stats/history?since=1e11", "since"),  # after now, until left out
    ],
)
async def test_bad_filters_and_windows_name_their_field(
    client: httpx.AsyncClient, path: str, field: str
) -> None:
    r = await client.get(path)
    assert r.status_code == 422, r.text
    assert error_of(r)["field"] == field


async def test_oversized_metadata_and_arguments_name_their_field(client: httpx.AsyncClient) -> None:
    big = "x" * 100_000
    r = await client.post("/jobs", json={"task": "echo", "metadata": {"k": big}})
    assert (r.status_code, error_of(r)["code"], error_of(r)["field"]) == (
        422,
        "not_serializable",
        "metadata",
    )
    r = await client.post(
        "/jobs", content=b'{"task": "echo", "kwargs": {"value": 1e400}}', headers=JSON
    )
    assert (r.status_code, error_of(r)["field"]) == (422, "kwargs")  # too large for a float
    deep: Any = []
    for _ in range(100):  # deeper than the store keeps (32 levels)
        deep = [deep]
    r = await client.post("/jobs", json={"task": "echo", "kwargs": {"value": deep}})
    assert (r.status_code, error_of(r)["field"]) == (422, "kwargs"), r.text
    r = await client.post("/jobs", json={"task": "echo", "args": [deep]})
    assert (r.status_code, error_of(r)["field"]) == (422, "args"), r.text


async def test_a_lone_surrogate_is_malformed_json(client: httpx.AsyncClient) -> None:
    body = b'{"task": "echo", "kwargs": {"value": "\\ud800"}}'
    r = await client.post("/jobs", content=body, headers=JSON)
    assert r.status_code == 400 and error_of(r)["code"] == "malformed_json"
    pair = b'{"task": "echo", "kwargs": {"value": "\\ud83d\\ude00"}}'
    r = await client.post("/jobs", content=pair, headers=JSON)
    assert r.status_code == 201 and r.json()["kwargs"] == {"value": "\U0001f600"}


async def test_input_is_read_as_the_openapi_document_says(client: httpx.AsyncClient) -> None:
    # null is a field left out; 2.0 is the integer 2.
    r = await client.post("/jobs", json={"task": "echo", "delay": None, "priority": 2.0})
    assert r.status_code == 201 and r.json()["priority"] == 2
    r = await client.patch("/pools/main", json={"capacity": 7.0, "paused": None})
    assert (r.status_code, r.json()["capacity"], r.json()["paused"]) == (200, 7, False)
    # Durations as text: the documented pattern only.
    for delay in ("30", "1.5", "1H30m", "200ms"):
        r = await client.post("/jobs", json={"task": "echo", "delay": delay})
        assert r.status_code == 201, (delay, r.text)
    for delay in ("-5", " 30s", "1e3", "1_0", "1" * 65):
        r = await client.post("/jobs", json={"task": "echo", "delay": delay})
        assert r.status_code == 422 and error_of(r)["field"] == "delay", (delay, r.text)
    r = await client.post("/jobs", json={"task": "echo", "timeout": "0.0s"})
    assert r.status_code == 422 and error_of(r)["field"] == "timeout"
    # Two answers to when it may run: refused, not one of them dropped.
    both = {"delay": 3600, "run_at": "2030-01-01T00:00:00Z"}
    r = await client.post("/jobs", json={"task": "echo", **both})
    assert r.status_code == 422 and error_of(r)["field"] == "delay", r.text
    assert "give delay or run_at, not both" in error_of(r)["message"]
    r = await client.post("/workflows", json={"chain": [{"task": "echo", "options": both}]})
    assert r.status_code == 422 and error_of(r)["field"] == "chain[0].options.delay", r.text
    # Empty query values are parameters left out; statuses in any case.
    assert (await client.get("/stats?since=&until=")).status_code == 200
    assert (await client.get("/jobs?limit=&cursor=&pool=")).status_code == 200
    assert (await client.get("/jobs?status=waiting,%20Running,")).status_code == 200
    assert (await client.get("/jobs?status=WAITINGRUNNING")).status_code == 422
    assert (await client.get("/jobs/1?token=")).status_code == 401


# -- the route table and OpenAPI ------------------------------------------------------------------


async def test_openapi_documents_every_route_including_added_ones(rt: Runtime) -> None:
    extra = EndpointGroup("extras", components={"Ping": {"type": "object"}})

    @extra.get(
        "/ping", summary="Ping", replies={200: Reply("pong", {"$ref": "#/components/schemas/Ping"})}
    )
    async def ping(api: Api, request: Request) -> Response:
        return JSONResponse({"pong": True})

    app = create_app(rt, endpoints=[extra])
    async with client_for(app) as client:
        doc = (await client.get("/openapi.json")).json()
        assert (await client.get("/ping")).json() == {"pong": True}
    assert doc["openapi"].startswith("3.1")
    served = {
        (method, re.sub(r":\w+}", "}", route.path))  # no convertors: /pools/{name}
        for route in app.routes
        for method in getattr(route, "methods", None) or ()
        if method != "HEAD"
    }
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == served
    assert ("POST", "/jobs") in documented and ("GET", "/jobs/{job_id}/events") in documented
    assert ("GET", "/ping") in documented

    refs = set()

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.add(node["$ref"].rsplit("/", 1)[-1])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(doc)
    assert refs <= set(doc["components"]["schemas"])
    events = doc["paths"]["/jobs/{job_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert doc["paths"]["/health"]["get"]["security"] == []


async def test_openapi_documents_the_errors_every_operation_can_give(
    client: httpx.AsyncClient,
) -> None:
    doc = (await client.get("/openapi.json")).json()

    def statuses(method: str, path: str) -> set[int]:
        return {int(s) for s in doc["paths"][path][method]["responses"]}

    for path, operations in doc["paths"].items():
        for method in operations:
            assert 422 in statuses(method, path), (method, path)  # unknown query parameters
    assert {400, 401, 403, 404, 409, 413, 415, 422, 503} <= statuses("post", "/jobs")
    assert {401, 403, 404, 422, 503} <= statuses("get", "/jobs/{job_id}")
    assert 503 not in statuses("get", "/pools") and 503 in statuses("get", "/health")
    assert {401, 403}.isdisjoint(statuses("get", "/health"))
    assert 404 in statuses("get", "/dashboard/jobs/{job_id}")
    asset = doc["paths"]["/dashboard/static/{name}"]["get"]["responses"]["200"]["content"]
    assert set(asset) == {"text/css", "text/javascript"}
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert set(metrics) == {"text/plain", "application/openmetrics-text"}
    params = {p["name"]: p for p in doc["paths"]["/jobs/{job_id}"]["get"]["parameters"]}
    assert params["job_id"]["schema"]["maximum"] == 2**63 - 1
    assert "allowEmptyValue" not in params["token"]
    listing = {p["name"]: p for p in doc["paths"]["/jobs"]["get"]["parameters"]}
    assert listing["limit"]["allowEmptyValue"] is True


# -- authentication, tokens, cross-site ------------------------------------------------------------


def bearer(request: Request) -> str | None:
    if request.headers.get("authorization") == "Bearer s3cret":
        return "alice"
    return None


async def test_auth_guards_every_route_but_health(rt: Runtime) -> None:
    seen: list[Any] = []
    extra = EndpointGroup("extras")

    @extra.get("/whoami", summary="Who am I")
    async def whoami(api: Api, request: Request) -> Response:
        seen.append(request.state.principal)
        return JSONResponse({"principal": request.state.principal})

    app = create_app(rt, auth=bearer, endpoints=[extra])
    async with client_for(app) as client:
        assert (await client.get("/health")).status_code == 200
        for path in ("/jobs", "/jobs/1", "/pools", "/stats", "/openapi.json", "/events", "/whoami"):
            r = await client.get(path)
            assert r.status_code == 401, path
            assert error_of(r)["code"] == "unauthorized"
        r = await client.post("/jobs", json={"task": "echo"})
        assert r.status_code == 401
        authed = {"authorization": "Bearer s3cret"}
        r = await client.get("/whoami", headers=authed)
        assert r.json() == {"principal": "alice"} and seen == ["alice"]
        r = await client.post("/jobs", json={"task": "echo"}, headers=authed)
        assert r.status_code == 201


async def test_async_auth_and_its_refusals(rt: Runtime) -> None:
    async def auth(request: Request) -> str:
        key = request.headers.get("x-key")
        if key == "banned":
            raise Forbidden("banned key")
        if key != "ok":
            raise Unauthorized("need x-key", challenge='ApiKey realm="jobs"')
        return "ok"

    async with client_for(create_app(rt, auth=auth)) as client:
        r = await client.get("/jobs")
        assert r.status_code == 401 and error_of(r)["message"] == "need x-key"
        assert r.headers["www-authenticate"] == 'ApiKey realm="jobs"'
        r = await client.get("/jobs", headers={"x-key": "banned"})
        assert r.status_code == 403 and error_of(r)["code"] == "forbidden"
        assert (await client.get("/jobs", headers={"x-key": "ok"})).status_code == 200


async def test_a_job_token_grants_that_jobs_state_and_nothing_else(rt: Runtime) -> None:
    authed = {"authorization": "Bearer s3cret"}
    async with client_for(create_app(rt, auth=bearer)) as client:
        job_id = (
            await client.post("/jobs", json={"task": "echo", "args": [5]}, headers=authed)
        ).json()["id"]
        other = (await client.post("/jobs", json={"task": "echo"}, headers=authed)).json()["id"]
        await rt.wait(job_id, timeout=5)
        assert (await client.post(f"/jobs/{job_id}/token")).status_code == 401
        r = await client.post(f"/jobs/{job_id}/token", headers=authed)
        assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
        minted = r.json()
        token = minted["token"]
        assert minted["events"] == f"/jobs/{job_id}/events?token={token}"
        q = {"token": token}
        assert (await client.get(f"/jobs/{job_id}", params=q)).json()["result"] == 5
        assert (await client.get(f"/jobs/{job_id}/progress", params=q)).status_code == 200
        assert (await client.get(f"/jobs/{job_id}/result", params=q)).status_code == 200
        events = await client.get(f"/jobs/{job_id}/events", params=q)
        assert events.status_code == 200 and "event: snapshot" in events.text
        r = await client.get(f"/jobs/{other}", params=q)
        assert r.status_code == 403 and error_of(r)["code"] == "token_scope"
        attempts = (await client.get(f"/jobs/{job_id}/attempts", params=q)).json()["attempts"]
        assert [a["outcome"] for a in attempts] == ["success"]
        for method, path in [
            ("DELETE", f"/jobs/{job_id}"),
            ("POST", f"/jobs/{job_id}/retry"),
            ("GET", "/jobs"),
            ("GET", "/stats"),
        ]:
            assert (await client.request(method, path, params=q)).status_code == 401, path
        bad = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        r = await client.get(f"/jobs/{job_id}", params={"token": bad})
        assert r.status_code == 401 and error_of(r)["code"] == "invalid_token"
        r = await client.get(f"/jobs/{job_id}", params={"token": "v1.é.x"})
        assert r.status_code == 401


def test_tokens_expire_and_are_bound_to_their_secret() -> None:
    now = [1000.0]
    tokens = JobTokens("k" * 32, ttl=60, now=lambda: now[0])
    token, expires = tokens.mint(7)
    assert expires >= 1060
    tokens.check(token, 7)
    with pytest.raises(ApiError) as scope:
        tokens.check(token, 8)
    assert scope.value.status == 403
    with pytest.raises(ApiError) as other_secret:
        JobTokens("z" * 32, ttl=60, now=lambda: now[0]).check(token, 7)
    assert other_secret.value.code == "invalid_token"
    now[0] = expires + 1
    with pytest.raises(ApiError) as expired:
        tokens.check(token, 7)
    assert expired.value.status == 401 and expired.value.code == "token_expired"
    with pytest.raises(ValueError):
        JobTokens("short", ttl=60, now=lambda: 0.0)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"cookie": "session=1", "sec-fetch-site": "cross-site"}, 403),
        ({"cookie": "session=1", "origin": "https://evil.example"}, 403),
        ({"cookie": "session=1", "origin": "null"}, 403),
        (
            {"cookie": "session=1", "sec-fetch-site": "same-site", "origin": "http://a.testserver"},
            403,
        ),
        (
            {"cookie": "session=1", "sec-fetch-site": "same-origin", "origin": "http://testserver"},
            201,
        ),
        ({"cookie": "session=1", "origin": "https://app.example"}, 201),  # trusted
        ({"cookie": "session=1"}, 201),  # not a browser's cross-site request
        # Whatever the credentials, or none (auth note 3).
        ({"sec-fetch-site": "cross-site"}, 403),
        ({"cookie": "s=1", "authorization": "Bearer x", "sec-fetch-site": "cross-site"}, 403),
    ],
)
async def test_state_changes_refuse_cross_site_requests(
    rt: Runtime, headers: dict[str, str], status: int
) -> None:
    app = create_app(rt, trusted_origins=["https://app.example"])
    async with client_for(app) as client:
        r = await client.post("/jobs", json={"task": "echo"}, headers=headers)
        assert r.status_code == status, r.text
        if status == 403:
            assert error_of(r)["code"] == "cross_site"
            # Reads are not state changes: the same request may GET.
            assert (await client.get("/jobs", headers=headers)).status_code == 200


# -- the app itself ---------------------------------------------------------------------------------


async def test_a_bug_is_a_logged_json_500_without_a_traceback(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    extra = EndpointGroup("extras")

    @extra.get("/bug", summary="A bug")
    async def bug(api: Api, request: Request) -> Response:
        raise ZeroDivisionError("secret detail")

    async with client_for(create_app(rt, endpoints=[extra])) as client:
        with caplog.at_level(logging.ERROR, logger="taskrt.web"):
            r = await client.get("/bug")
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal_error", "message": "internal server error"}}
    assert "secret detail" not in r.text
    assert any("ZeroDivisionError" in (rec.exc_text or "") for rec in caplog.records)


async def test_a_runtime_that_is_not_started_is_503(db_path: Path) -> None:
    rt = make_runtime(db_path, {})
    async with client_for(create_app(rt)) as client:
        r = await client.get("/jobs/1")
        assert r.status_code == 503 and error_of(r)["code"] == "not_started"
        assert (await client.get("/health")).status_code == 503


@pytest.mark.parametrize(
    "options",
    [
        {"max_body": 0},
        {"heartbeat": -1},
        {"max_streams": 0},
        {"send_timeout": 0},
        {"stream_buffer": 0},
        {"token_secret": "short"},
        {"token_ttl": 0},
    ],
)
def test_create_app_refuses_bad_settings(tmp_path: Path, options: dict[str, Any]) -> None:
    with pytest.raises(InvalidOption):
        create_app(Runtime(str(tmp_path / "x.db")), **options)


# -- property: no body gets a 5xx ------------------------------------------------------------------


class LoopThread:
    """A started runtime and its API on an event loop in a thread, for sync property tests."""

    def __init__(self, path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.rt = make_runtime(path, {})
        self.rt.pools["main"].pause()  # jobs are added and stored, not run
        self.client = client_for(create_app(self.rt))
        self.call(self.rt.start())

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self.call(self.client.aclose())
        self.call(self.rt.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def loop_thread(db_path: Path) -> Iterator[LoopThread]:
    lt = LoopThread(db_path)
    yield lt
    lt.close()


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)
FIELD_VALUES = st.one_of(
    JSON_VALUES,
    st.sampled_from(
        ["echo", "add", "nope", "main", "tiny", "30s", "-1", "2030-01-01T00:00:00Z", ""]
    ),
    st.integers(min_value=-(2**70), max_value=2**70),
)
BODIES = st.one_of(
    st.dictionaries(st.sampled_from([*sorted(NEW_JOB_FIELDS), "x"]), FIELD_VALUES, max_size=6),
    JSON_VALUES,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=BODIES)
def test_no_json_body_gets_a_5xx_from_post_jobs(loop_thread: LoopThread, body: Any) -> None:
    content = json.dumps(body).encode()
    r = loop_thread.call(loop_thread.client.post("/jobs", content=content, headers=JSON))
    assert r.status_code in (201, 404, 422, 503), r.text
    if r.status_code != 201:
        error_of(r)


POOL_BODIES = st.one_of(
    st.dictionaries(
        st.sampled_from(["name", "concurrency", "capacity", "paused", "x"]),
        FIELD_VALUES,
        max_size=4,
    ),
    JSON_VALUES,
)


@pytest.mark.parametrize(("method", "path"), [("POST", "/pools"), ("PATCH", "/pools/tiny")])
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=POOL_BODIES)
def test_no_json_body_gets_a_5xx_from_the_pool_routes(
    loop_thread: LoopThread, method: str, path: str, body: Any
) -> None:
    content = json.dumps(body).encode()
    r = loop_thread.call(loop_thread.client.request(method, path, content=content, headers=JSON))
    assert r.status_code in (200, 201, 409, 422), r.text
    if r.status_code >= 400:
        error_of(r)


def test_two_endpoints_for_one_method_and_path_are_refused(tmp_path: Path) -> None:
    extra = EndpointGroup("extras")

    @extra.get("/jobs", summary="A second GET /jobs")
    async def shadow(api: Api, request: Request) -> Response:
        return JSONResponse({})

    with pytest.raises(InvalidOption, match="two endpoints for GET /jobs"):
        create_app(Runtime(str(tmp_path / "x.db")), endpoints=[extra])


async def test_a_database_failure_is_a_500_without_its_details(
    rt: Runtime, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskrt import StoreError

    async def broken(job_id: int) -> Any:
        raise StoreError("read from '/srv/secret/app.db' failed: disk I/O error")

    monkeypatch.setattr(rt, "get", broken)
    r = await client.get("/jobs/1")
    assert r.status_code == 500
    error = error_of(r)
    assert error["code"] == "store_error"
    assert "/srv/secret" not in r.text


# -- many jobs at once, run now, purge ------------------------------------------------


async def test_bulk_retry_by_filter_after_a_dry_run(client: httpx.AsyncClient, rt: Runtime) -> None:
    failed = [await rt.add("boom") for _ in range(3)]
    ok = await rt.add("echo", 1)
    for job_id in [*failed, ok]:
        await rt.wait(job_id, timeout=5)
    count = await client.get("/jobs/count", params={"status": "FAILURE", "task": "boom"})
    assert count.json() == {"count": 3}
    preview = await client.post("/jobs/retry", json={"status": "FAILURE", "dry_run": True})
    assert preview.json() == {
        "action": "retry",
        "matched": 3,
        "done": 0,
        "skipped": 0,
        "dry_run": True,
    }
    done = await client.post("/jobs/retry", json={"status": ["failure"], "task": "boom"})
    assert (done.status_code, done.json()["done"]) == (200, 3)
    for job_id in failed:
        assert (await rt.wait(job_id, timeout=5)).attempts == 2
    # Purge what failed, twice over: the finished ones go, nothing else.
    # An id may be written 5.0, as everywhere in the API.
    ids = [float(failed[0]), *failed[1:], ok]
    purged = await client.post("/jobs/purge", json={"ids": ids, "status": "FAILURE"})
    assert purged.json()["done"] == 3
    assert (await client.get(f"/jobs/{failed[0]}")).status_code == 404
    assert (await client.get(f"/jobs/{ok}")).status_code == 200


async def test_a_bulk_action_needs_a_filter(client: httpx.AsyncClient) -> None:
    for body in ({}, {"dry_run": True}, {"status": []}, {"metadata": {}}, {"scheduled": False}):
        r = await client.post("/jobs/cancel", json=body)
        assert r.status_code == 422 and error_of(r)["field"] == "filter", body
    r = await client.post("/jobs/purge", json={"status": "DONE"})
    assert r.status_code == 422 and error_of(r)["field"] == "status"
    r = await client.post("/jobs/purge", json={"older_than": "soon"})
    assert r.status_code == 422 and error_of(r)["field"] == "older_than"
    r = await client.post("/jobs/purge", json={"ids": [1], "everything": True})
    assert r.status_code == 422
    for metadata, field in (({"k": [1]}, "metadata.k"), ({"": 1}, "metadata")):
        r = await client.post("/jobs/purge", json={"metadata": metadata})
        assert r.status_code == 422 and error_of(r)["field"] == field, metadata
    for ids in ([0], [1.5], ["1"], [True], [2**63]):
        r = await client.post("/jobs/purge", json={"ids": ids})
        assert r.status_code == 422 and error_of(r)["field"] == "ids", ids


async def test_scheduled_leaves_out_the_jobs_a_workflow_holds_for_their_parents(
    client: httpx.AsyncClient, rt: Runtime
) -> None:
    # A held job's run_at is the placeholder BLOCKED_AT (year 9999), no time to come.
    echo = rt.resolve("echo")
    flow = await rt.chain(echo.options(delay=600).s(1), echo.s(), echo.s())
    later = flow.jobs[0]
    assert (await client.get("/jobs/count", params={"scheduled": "true"})).json() == {"count": 1}
    listed = await client.get("/jobs", params={"scheduled": "true"})
    assert [j["id"] for j in listed.json()["jobs"]] == [later]
    cancelled = await client.post("/jobs/cancel", json={"scheduled": True, "dry_run": True})
    assert cancelled.json()["matched"] == 1
    for child in flow.jobs[1:]:
        held = (await client.get(f"/jobs/{child}")).json()
        assert (held["status"], held["waiting_reason"]) == ("WAITING", "blocked")


async def test_an_age_beyond_a_hundred_years_matches_no_job_on_every_route(
    target: tuple[str, dict[str, Any]],
) -> None:
    """An ``older_than`` beyond the 100 years a duration may have was read by the
    HTTP layer as "no job is that old" (1e15 seconds), which the runtime then
    refused: a 422 naming a number the client never sent. Now every route that
    takes it answers 200 matching nothing, and so does the Python API (ages are 0
    or more, of any length); an age of 0 still matches every job."""
    db, options = target
    rt = Runtime(db, **options)

    @rt.task
    async def quick(job: JobContext) -> None:
        return None

    beyond = [3155760001, 1e308, 2**1100, "36526d", "99999999999d", "9" * 64]
    async with rt, client_for(create_app(rt)) as client, asyncio.timeout(20):
        job_id = await rt.add(quick)
        await rt.wait(job_id, timeout=5)
        r = await client.get("/jobs/count", params={"older_than": 0})
        assert r.json() == {"count": 1}
        for age in beyond:
            if isinstance(age, str) or (isinstance(age, int) and age < 2**64):
                # A query's number is ASCII digits (at most 64): no exponent.
                for path in ("/jobs", "/jobs/count"):
                    r = await client.get(path, params={"older_than": str(age)})
                    assert r.status_code == 200, (path, age, r.text)
                    assert r.json().get("count", 0) == 0 and r.json().get("jobs", []) == []
            for action in ("cancel", "retry", "purge"):
                r = await client.post(f"/jobs/{action}", json={"older_than": age})
                assert r.status_code == 200, (action, age, r.text)
                assert r.json()["matched"] == 0, (action, age)
            if not isinstance(age, str):
                assert await rt.count(older_than=age) == 0
                assert (await rt.jobs(older_than=age)).jobs == []
                assert (await rt.bulk("purge", older_than=age)).matched == 0
            assert await rt.cleanup(older_than=age) == 0
        assert await rt.count(older_than=timedelta.max) == 0
        # What is no age is still refused, naming it.
        for bad in (-1, timedelta(seconds=-1), math.nan, math.inf):
            with pytest.raises(InvalidOption) as caught:
                await rt.count(older_than=bad)
            assert caught.value.field == "older_than", bad
        r = await client.get("/jobs/count", params={"older_than": "-1"})
        assert r.status_code == 422 and error_of(r)["field"] == "older_than"
        assert (await rt.bulk("purge", older_than=0)).done == 1


async def test_run_now_cancel_and_purge_one_job(
    client: httpx.AsyncClient, rt: Runtime, gates: dict[str, asyncio.Event]
) -> None:
    later = (await client.post("/jobs", json={"task": "echo", "args": [5], "delay": 600})).json()
    assert (await client.get("/jobs/count", params={"scheduled": "true"})).json() == {"count": 1}
    listed = await client.get("/jobs", params={"scheduled": "true"})
    assert [j["id"] for j in listed.json()["jobs"]] == [later["id"]]
    ran = await client.post(f"/jobs/{later['id']}/run")
    assert ran.status_code == 200 and ran.json()["run_at"] < later["run_at"]
    assert (await rt.wait(later["id"], timeout=5)).result == 5
    again = await client.post(f"/jobs/{later['id']}/run")
    assert again.status_code == 409  # finished: nothing to run

    held = await rt.add("gated", "h")
    not_yet = await client.post(f"/jobs/{held}/purge")
    assert not_yet.status_code == 409  # a live job is never purged
    cancelled = await client.post(f"/jobs/{held}/cancel")
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "CANCELLED")
    purged = await client.post(f"/jobs/{held}/purge")
    assert (purged.status_code, purged.json()["done"]) == (200, 1)
    assert (await client.get(f"/jobs/{held}")).status_code == 404

    # A finished job that a blocked job waits for stays: 409 saying why, not 200.
    parent = await rt.add("echo", "p")
    await rt.wait(parent, timeout=5)
    blocker = await rt.add("gated", "c")
    added = await client.post("/jobs", json={"task": "echo", "after": [parent, blocker]})
    child = added.json()["id"]
    kept = await client.post(f"/jobs/{parent}/purge")
    assert kept.status_code == 409, kept.text
    assert error_of(kept)["reason"] == "a dependent job needs its result"
    assert (await client.get(f"/jobs/{parent}")).json()["status"] == "SUCCESS"
    assert (await client.get(f"/jobs/{child}")).json()["status"] == "WAITING"


async def test_more_metadata_filters_than_a_statement_takes_are_a_422(
    client: httpx.AsyncClient,
) -> None:
    """500 of them passed SQLite's expression depth: a 500 store_error."""
    many = "&".join(f"metadata.k{n}={n}" for n in range(500))
    for path in ("/jobs", "/jobs/count"):
        r = await client.get(f"{path}?{many}")
        assert r.status_code == 422, (path, r.status_code, r.text)
        assert "at most 64 keys" in r.text
    r = await client.post(
        "/jobs/cancel",
        json={"metadata": {f"k{n}": n for n in range(500)}, "dry_run": True},
    )
    assert r.status_code == 422, r.text
    allowed = "&".join(f"metadata.k{n}={n}" for n in range(64))
    assert (await client.get(f"/jobs/count?{allowed}")).json() == {"count": 0}


async def test_a_listings_filter_given_twice_is_refused_except_status(
    client: httpx.AsyncClient,
) -> None:
    """``pool=p&pool=q`` was read as ``pool=q``, silently (so were a metadata key,
    the limit and the cursor); only ``status`` takes several values."""
    for query in (
        "pool=p&pool=q",
        "task=t&task=u",
        "metadata.user=42&metadata.user=7",
        "limit=1&limit=1000",
        "cursor=5&cursor=9",
    ):
        paged = query.startswith(("limit", "cursor"))
        for route in ("/jobs",) if paged else ("/jobs", "/jobs/count"):
            response = await client.get(f"{route}?{query}")
            assert response.status_code == 422, (route, query)
            error = error_of(response)
            assert error["field"] == query.split("=", 1)[0], query
            assert "given more than once" in error["message"]
    response = await client.get("/jobs?status=WAITING&status=RUNNING")
    assert response.status_code == 200
