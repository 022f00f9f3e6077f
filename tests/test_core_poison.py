"""Poisoned values: one value that cannot be stored is refused in its own call.

Before the edge checks (``taskrt.limits``), one such value failed the shared
group-commit batch: a handler reporting ``progress(k, 10**400)`` made every
concurrent ``add`` of other producers fail, and left its own job SUCCESS in
memory but RUNNING on disk. Each test here runs the poisoned call beside 50
normal adds on a real SQLite file and checks that only the poisoned call is
refused (with an error naming the field), that every other job finishes, and
that the database agrees with ``rt.get`` afterwards.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from core_support import all_jobs, committed, committed_jobs, make_rt
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from taskrt import (
    InvalidOption,
    JobContext,
    JobInfo,
    JobStatus,
    Limits,
    Runtime,
    SerializationError,
    TaskrtError,
    ValidationError,
)
from taskrt.limits import INT64_MAX
from taskrt.store import JobStore
from taskrt.web import create_app

NORMAL = 50
JSON_HEADERS = {"content-type": "application/json"}
NAN = float("nan")
INF = float("inf")


def nested(depth: int) -> list[Any]:
    """A list ``depth`` containers deep (built without recursion)."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def json_view(value: Any) -> Any:
    """What a value is after a trip through JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value))


def same(a: Any, b: Any) -> bool:
    """Equal with equal types all the way down (``True == 1`` and ``1 == 1.0`` do not count)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


# -- the database agrees with the runtime -----------------------------------------------


async def assert_database_agrees(
    store: JobStore, infos: dict[int, JobInfo], *, finished: bool, every: bool = True
) -> None:
    """Every job's committed row (read through a separate store) says what ``rt.get`` said."""
    stored = {j.id: j for j in await all_jobs(store)}
    if every:
        assert set(stored) == set(infos)
    for job_id, info in infos.items():
        j = stored[job_id]
        on_disk = {
            "status": j.status.value,
            "attempts": j.attempts,
            "result": j.result,
            "error": j.error,
            "current": j.current,
            "total": j.total,
            "message": j.message,
            "args": list(j.args),
            "kwargs": j.kwargs,
            "metadata": j.metadata,
            "priority": j.priority,
            "unique_key": j.unique_key,
            "run_at": j.run_at,
            "timeout": j.timeout,
        }
        in_memory = {
            "status": info.status.value,
            "attempts": info.attempts,
            "result": info.result,
            "error": info.error,
            "current": info.current,
            "total": info.total,
            "message": info.message,
            "args": list(info.args),
            "kwargs": info.kwargs,
            "metadata": info.metadata,
            "priority": info.priority,
            "unique_key": info.unique_key,
            "run_at": info.run_at,
            "timeout": info.timeout,
        }
        assert on_disk == in_memory, f"job {job_id}"
    if finished:
        assert await store.list_jobs(status=[JobStatus.WAITING, JobStatus.RUNNING]) == []


async def beside_normal_adds(
    rt: Runtime, echo: Any, poisoned: Awaitable[Any]
) -> tuple[Any, dict[int, JobInfo]]:
    """Run ``poisoned`` in the middle of 50 concurrent adds of other producers.

    Returns what ``poisoned`` returned (or raised) and the final state of every
    normal job, each of which must be acknowledged and reach SUCCESS.
    """
    pool = rt.pool("default")
    half = NORMAL // 2
    adds = [pool.add(echo, n) for n in range(NORMAL)]
    # The first half is queued for the writer before the poisoned call runs, the
    # second half after it: all of them share write batches with it.
    out = await asyncio.gather(*adds[:half], poisoned, *adds[half:], return_exceptions=True)
    outcome = out[half]
    acks = out[:half] + out[half + 1 :]
    refused = [a for a in acks if isinstance(a, BaseException)]
    assert refused == [], f"{len(refused)} of {NORMAL} normal adds failed: {refused[:3]!r}"
    infos: dict[int, JobInfo] = {}
    for n, job_id in enumerate(acks):
        info = await rt.wait(job_id, timeout=10)
        assert (info.status, info.result, info.attempts) == (JobStatus.SUCCESS, n, 1)
        infos[job_id] = info
    return outcome, infos


def register_echo(rt: Runtime) -> Any:
    @rt.task
    async def echo(job: JobContext, n: int) -> int:
        return n

    return echo


# -- 1. poisons through the Python API -----------------------------------------------------

PROGRESS_POISONS = [
    pytest.param((10**400, None, None), "current", "finite number", id="current=10**400"),
    pytest.param((NAN, None, None), "current", "nan", id="current=nan"),
    pytest.param((INF, None, None), "current", "inf", id="current=inf"),
    pytest.param((-INF, 10, None), "current", "inf", id="current=-inf"),
    pytest.param((1, NAN, None), "total", "nan", id="total=nan"),
    pytest.param((1, 10**400, None), "total", "finite number", id="total=10**400"),
    pytest.param((1, 10, "\ud800"), "message", "surrogate", id="message=lone-surrogate"),
    pytest.param((1, 10, b"bytes"), "message", "string", id="message=bytes"),
    pytest.param((1, 10, "a\x00b"), "message", "nul", id="message=nul"),
]


@pytest.mark.parametrize("via", ["job.progress", "rt.progress"])
@pytest.mark.parametrize(("bad", "field", "detail"), PROGRESS_POISONS)
async def test_a_refused_progress_report_fails_only_the_call(
    tmp_path: Path, via: str, bad: tuple[Any, Any, Any], field: str, detail: str
) -> None:
    rt = make_rt(tmp_path)
    echo = register_echo(rt)
    go = asyncio.Event()
    caught: list[BaseException] = []

    @rt.task
    async def reporter(job: JobContext) -> str:
        await job.progress(1, 10, "before")
        await go.wait()
        report = job.progress if via == "job.progress" else rt.progress
        prefix = () if via == "job.progress" else (job.id,)
        try:
            pending = report(*prefix, *bad)  # type: ignore[operator]
        except TaskrtError as exc:  # raised in the call itself, not when awaited
            caught.append(exc)
        else:
            await pending
        await job.progress(3, 10, "after")
        return "survived"

    async with rt:
        poisoned_id = await rt.pool("default").add(reporter)

        async def release() -> None:
            go.set()

        _, infos = await beside_normal_adds(rt, echo, release())
        info = await rt.wait(poisoned_id, timeout=10)
        assert (info.status, info.result, info.attempts) == (JobStatus.SUCCESS, "survived", 1)
        assert (info.current, info.total, info.message) == (3, 10, "after")
        infos[poisoned_id] = info

    assert len(caught) == 1, "the bad report was not refused in the caller"
    error = caught[0]
    assert isinstance(error, InvalidOption) and error.field == field
    assert str(error).startswith(f"{field}: ") and detail in str(error).lower()
    async with committed(tmp_path) as store:
        await assert_database_agrees(store, infos, finished=True)


RESULT_POISONS = [
    pytest.param(lambda: ["ok", "\ud800"], "lone surrogate", id="lone-surrogate"),
    pytest.param(lambda: {"k": {"deeper": "\udfff"}}, "lone surrogate", id="surrogate-in-dict"),
    pytest.param(lambda: nested(10_000), "nested more than 32 levels", id="nested-10000"),
    pytest.param(lambda: {"x": NAN}, "out of range float", id="nan"),
    pytest.param(lambda: [INF], "out of range float", id="inf"),
    pytest.param(lambda: {"when": object()}, "not json serializable", id="object"),
    pytest.param(lambda: [{1: "a", "1": "b"}], "one would be lost", id="keys=1,'1'"),
]


@pytest.mark.parametrize(("make_result", "detail"), RESULT_POISONS)
async def test_a_result_that_cannot_be_stored_fails_only_its_job(
    tmp_path: Path, make_result: Callable[[], Any], detail: str
) -> None:
    rt = make_rt(tmp_path)
    echo = register_echo(rt)
    go = asyncio.Event()

    @rt.task(attempts=1)
    async def produce(job: JobContext) -> Any:
        await go.wait()
        return make_result()

    async with rt:
        poisoned_id = await rt.pool("default").add(produce)

        async def release() -> None:
            go.set()

        _, infos = await beside_normal_adds(rt, echo, release())
        info = await rt.wait(poisoned_id, timeout=10)  # returns: the job reaches a final state
        assert (info.status, info.attempts, info.result) == (JobStatus.FAILURE, 1, None)
        assert info.error is not None
        assert info.error.startswith("the result is not JSON-serialisable")
        assert detail in info.error.lower()
        attempts = await rt.attempts(poisoned_id)
        assert [(a.number, a.outcome.value) for a in attempts] == [(1, "error")]
        infos[poisoned_id] = info

    async with committed(tmp_path) as store:
        await assert_database_agrees(store, infos, finished=True)


async def test_a_result_that_cannot_be_stored_is_retried_by_policy(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    seen: list[int] = []

    @rt.task(attempts=3)
    async def flaky(job: JobContext) -> Any:
        seen.append(job.attempt)
        return "\ud800" if job.attempt < 3 else "fine"

    async with rt:
        job_id = await rt.pool("default").add(flaky)
        info = await rt.wait(job_id, timeout=10)
        assert (info.status, info.result, info.attempts) == (JobStatus.SUCCESS, "fine", 3)
        outcomes = [(a.number, a.outcome.value) for a in await rt.attempts(job_id)]
        assert outcomes == [(1, "error"), (2, "error"), (3, "success")]
    assert seen == [1, 2, 3]
    async with committed(tmp_path) as store:
        await assert_database_agrees(store, {job_id: info}, finished=True)


OPTION_POISONS = [
    pytest.param({"priority": 10**30}, "priority", id="priority=10**30"),
    pytest.param({"priority": 1.5}, "priority", id="priority=1.5"),
    pytest.param({"delay": NAN}, "delay", id="delay=nan"),
    pytest.param({"delay": INF}, "delay", id="delay=inf"),
    pytest.param({"delay": 10**400}, "delay", id="delay=10**400"),
    pytest.param({"delay": "1e999"}, "delay", id="delay='1e999'"),
    pytest.param({"run_at": NAN}, "run_at", id="run_at=nan"),
    pytest.param({"run_at": INF}, "run_at", id="run_at=inf"),
    pytest.param({"run_at": -1.0}, "run_at", id="run_at=-1"),
    pytest.param({"run_at": 1e300}, "run_at", id="run_at=1e300"),
    pytest.param({"timeout": NAN}, "timeout", id="timeout=nan"),
    pytest.param({"timeout": INF}, "timeout", id="timeout=inf"),
    pytest.param({"unique_key": "\ud800"}, "unique_key", id="unique_key=lone-surrogate"),
    pytest.param({"unique_key": "k" * 2000}, "unique_key", id="unique_key=2000-bytes"),
    pytest.param({"unique_key": "a\x00b"}, "unique_key", id="unique_key=nul"),
    pytest.param({"lock": "a\x00b"}, "lock", id="lock=nul"),
    pytest.param({"metadata": {"k": "\ud800"}}, "metadata", id="metadata=lone-surrogate"),
    pytest.param({"metadata": {"\ud800": 1}}, "metadata", id="metadata-key=lone-surrogate"),
    pytest.param({"metadata": {"k": NAN}}, "metadata", id="metadata=nan"),
    pytest.param({"metadata": {"k": nested(10_000)}}, "metadata", id="metadata=nested-10000"),
    pytest.param({"metadata": ["not", "a", "dict"]}, "metadata", id="metadata=list"),
    # Stored, and found by no filter (filters refuse such names).
    pytest.param({"metadata": {"": 1}}, "metadata", id="metadata-key=empty"),
    pytest.param({"metadata": {"a\x00": 1}}, "metadata", id="metadata-key=nul"),
    # JSON writes both as "1": one would be lost.
    pytest.param({"metadata": {1: "a", "1": "b"}}, "metadata", id="metadata-keys=1,'1'"),
]


@pytest.mark.parametrize(("options", "field"), OPTION_POISONS)
async def test_refused_add_options_fail_only_their_call(
    tmp_path: Path, options: dict[str, Any], field: str
) -> None:
    rt = make_rt(tmp_path)
    echo = register_echo(rt)

    @rt.task
    async def target(job: JobContext) -> str:
        return "should not run"

    async with rt:

        async def poisoned() -> str:
            await asyncio.sleep(0)  # the first half of the normal adds is queued by now
            try:
                call = target.options(**options)
            except TaskrtError as exc:
                return f"options: {type(exc).__name__}: {exc}"
            try:
                await rt.pool("default").add(call)
            except TaskrtError as exc:
                return f"add: {type(exc).__name__}: {exc}"
            return "accepted"

        outcome, infos = await beside_normal_adds(rt, echo, poisoned())

    assert outcome != "accepted"
    assert isinstance(outcome, str), outcome  # a TaskrtError, nothing else
    where, kind, message = outcome.split(": ", 2)
    assert kind in ("InvalidOption", "SerializationError")
    assert field in message, message
    # Options are checked when they are made; a JSON value only when it is encoded.
    assert where == ("add" if kind == "SerializationError" else "options")
    async with committed(tmp_path) as store:
        await assert_database_agrees(store, infos, finished=True)
    assert [j.id for j in await committed_jobs(tmp_path) if j.task == "target"] == []


ARGUMENT_POISONS = [
    pytest.param(("\ud800",), {}, "lone surrogate", id="args=lone-surrogate"),
    pytest.param(({"k": ["\udc80"]},), {}, "lone surrogate", id="args=nested-surrogate"),
    pytest.param((nested(10_000),), {}, "nested more than 32", id="args=nested-10000"),
    pytest.param((), {"x": NAN}, "out of range float", id="kwargs=nan"),
    pytest.param((), {"x": [1, -INF]}, "out of range float", id="kwargs=-inf"),
    pytest.param((), {"\ud800": 1}, "lone surrogate", id="kwargs-key=lone-surrogate"),
    pytest.param((object(),), {}, "not json serializable", id="args=object"),
    pytest.param(({True: 1, "true": 2},), {}, "one would be lost", id="args=keys-True,'true'"),
]


@pytest.mark.parametrize(("args", "kwargs", "detail"), ARGUMENT_POISONS)
async def test_refused_arguments_fail_only_their_call(
    tmp_path: Path, args: tuple[Any, ...], kwargs: dict[str, Any], detail: str
) -> None:
    rt = make_rt(tmp_path)
    echo = register_echo(rt)

    @rt.task
    async def anything(job: JobContext, *args: Any, **kwargs: Any) -> str:
        return "should not run"

    async with rt:

        async def poisoned() -> BaseException | int:
            try:
                return await rt.pool("default").add(anything, *args, **kwargs)
            except TaskrtError as exc:
                return exc

        outcome, infos = await beside_normal_adds(rt, echo, poisoned())

    assert isinstance(outcome, SerializationError), outcome
    assert outcome.what == "the arguments of task 'anything'"
    assert detail in str(outcome).lower()
    async with committed(tmp_path) as store:
        await assert_database_agrees(store, infos, finished=True)
    assert [j.id for j in await committed_jobs(tmp_path) if j.task == "anything"] == []


# -- 2. the same poisons over HTTP -----------------------------------------------------------


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    rt = make_rt(tmp_path)
    register_echo(rt)

    @rt.task
    async def anything(job: JobContext, *args: Any, **kwargs: Any) -> None:
        return None

    @rt.task(attempts=1)
    async def bad_result(job: JobContext) -> Any:
        return {"text": "\ud800"}

    @rt.task
    async def bad_progress(job: JobContext) -> str:
        with pytest.raises(InvalidOption):
            job.progress(10**400)
        await job.progress(1, 2, "fine")
        return "done"

    async with rt:
        transport = httpx.ASGITransport(app=create_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield rt, client


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    assert "Traceback" not in response.text
    return error


def _body(fields: str) -> str:
    return '{"task": "anything", "args": [1]' + (", " + fields if fields else "") + "}"


DEEP = "[" * 10_000 + "]" * 10_000
# (body, status, code, a fragment of the message). Values JSON can carry but the
# store cannot are 422; a body that is not JSON text (the NaN / Infinity tokens
# Python's parser accepts, a lone surrogate escape, nesting Python cannot parse)
# is 400 ``malformed_json`` (taskrt/web/inputs.py, note 2).
HTTP_POISONS = [
    pytest.param(_body('"delay": NaN'), 400, "malformed_json", "nan", id="delay=NaN"),
    pytest.param(_body('"delay": 1e999'), 422, "invalid_request", "delay", id="delay=1e999"),
    pytest.param(_body('"delay": Infinity'), 400, "malformed_json", "infinity", id="delay=Inf"),
    pytest.param(_body('"run_at": NaN'), 400, "malformed_json", "nan", id="run_at=NaN"),
    pytest.param(_body('"run_at": 1e999'), 422, "invalid_request", "run_at", id="run_at=1e999"),
    pytest.param(_body('"run_at": -1e999'), 422, "invalid_request", "run_at", id="run_at=-1e999"),
    pytest.param(_body('"run_at": 1e300'), 422, "invalid_option", "run_at", id="run_at=1e300"),
    pytest.param(_body('"timeout": NaN'), 400, "malformed_json", "nan", id="timeout=NaN"),
    pytest.param(_body('"timeout": 1e999'), 422, "invalid_request", "timeout", id="timeout=1e999"),
    pytest.param(_body('"priority": NaN'), 400, "malformed_json", "nan", id="priority=NaN"),
    pytest.param(
        _body('"priority": 1e999'), 422, "invalid_request", "priority", id="priority=1e999"
    ),
    pytest.param(
        _body(f'"priority": {10**30}'), 422, "invalid_request", "priority", id="priority=10**30"
    ),
    pytest.param(_body('"priority": 1e30'), 422, "invalid_request", "priority", id="priority=1e30"),
    pytest.param(
        _body('"unique_key": "\\ud800"'), 400, "malformed_json", "surrogate", id="unique_key=ud800"
    ),
    pytest.param(
        _body('"metadata": {"k": "\\ud800"}'), 400, "malformed_json", "surrogate", id="meta=ud800"
    ),
    pytest.param(_body('"metadata": {"k": NaN}'), 400, "malformed_json", "nan", id="meta=NaN"),
    pytest.param(
        _body(f'"metadata": {{"k": {2**63}}}'), 422, "invalid_option", "metadata.k", id="meta=2**63"
    ),
    pytest.param(
        _body('"metadata": {"k": 1e999}'), 422, "not_serializable", "metadata", id="meta=1e999"
    ),
    pytest.param(_body('"metadata": {"": 1}'), 422, "invalid_option", "metadata", id="meta-key=''"),
    pytest.param(
        _body('"metadata": {"a\\u0000": 1}'), 422, "invalid_option", "metadata", id="meta-key=nul"
    ),
    pytest.param(
        '{"task": "anything", "args": ["\\ud800"]}',
        400,
        "malformed_json",
        "surrogate",
        id="args=ud800",
    ),
    pytest.param(
        '{"task": "anything", "args": [NaN]}', 400, "malformed_json", "nan", id="args=NaN"
    ),
    pytest.param(
        '{"task": "anything", "args": [1e999]}',
        422,
        "not_serializable",
        "arguments",
        id="args=1e999",
    ),
    pytest.param(
        '{"task": "anything", "args": [' + DEEP + "]}",
        400,
        "malformed_json",
        "too deeply nested",
        id="args=nested-10000",
    ),
    pytest.param(
        '{"task": "anything", "args": [' + "[" * 100 + "]" * 100 + "]}",
        422,
        "not_serializable",
        "nested more than 32",
        id="args=nested-100",
    ),
    pytest.param(
        '{"task": "anything", "kwargs": {"n": NaN}}', 400, "malformed_json", "nan", id="kwargs=NaN"
    ),
    pytest.param(
        '{"task": "anything", "kwargs": {"n": 1e999}}',
        422,
        "not_serializable",
        "arguments",
        id="kwargs=1e999",
    ),
]


@pytest.mark.parametrize(("body", "status", "code", "fragment"), HTTP_POISONS)
async def test_a_poisoned_post_is_refused_and_the_next_one_works(
    api: tuple[Runtime, httpx.AsyncClient], body: str, status: int, code: str, fragment: str
) -> None:
    rt, client = api

    def normal(n: int) -> Awaitable[httpx.Response]:
        return client.post("/jobs", json={"task": "echo", "args": [n]})

    poisoned = client.post("/jobs", content=body.encode(), headers=JSON_HEADERS)
    out = await asyncio.gather(*(normal(n) for n in range(10)), poisoned, normal(10))
    refused = out[10]
    assert refused.status_code == status, refused.text
    error = _error(refused)
    assert error["code"] == code
    assert fragment in error["message"].lower(), error
    if code == "invalid_request":
        assert error["field"] == fragment

    after = await normal(11)  # a following normal POST works
    assert after.status_code == 201, after.text
    for n, response in enumerate([*out[:10], out[11], after]):
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        await rt.wait(job_id, timeout=10)
        got = await client.get(f"/jobs/{job_id}")
        assert got.status_code == 200, got.text
        assert (got.json()["status"], got.json()["result"]) == ("SUCCESS", n)
    listing = await client.get("/jobs", params={"limit": 1000})
    assert listing.status_code == 200 and len(listing.json()["jobs"]) == 12


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-32-be"])
async def test_a_body_in_another_encoding_than_utf8_is_refused_and_adds_nothing(
    api: tuple[Runtime, httpx.AsyncClient], encoding: str
) -> None:
    # Python's parser reads UTF-16 and UTF-32 bytes on its own; the API takes UTF-8
    # only (inputs note 3), so such a body is not read as what it did not declare.
    rt, client = api
    text = json.dumps({"task": "echo", "args": [1]})
    refused = await client.post("/jobs", content=text.encode(encoding), headers=JSON_HEADERS)
    assert refused.status_code == 400, refused.text
    assert _error(refused)["code"] == "malformed_json"
    assert (await client.get("/jobs")).json()["jobs"] == []
    # A UTF-8 byte order mark is ignored, as RFC 8259 lets a parser do.
    added = await client.post(
        "/jobs", content=b"\xef\xbb\xbf" + text.encode(), headers=JSON_HEADERS
    )
    assert added.status_code == 201, added.text
    assert (await rt.wait(added.json()["id"], timeout=10)).result == 1


async def test_jobs_with_poisoned_results_and_progress_read_fine_over_http(
    api: tuple[Runtime, httpx.AsyncClient],
) -> None:
    rt, client = api
    ids = {}
    for task in ("bad_result", "bad_progress", "echo"):
        body: dict[str, Any] = {"task": task, **({"args": [7]} if task == "echo" else {})}
        response = await client.post("/jobs", json=body)
        assert response.status_code == 201, response.text
        ids[task] = response.json()["id"]
    for job_id in ids.values():
        await rt.wait(job_id, timeout=10)
    for path in ("", "/progress", "/result", "/attempts"):
        for job_id in ids.values():
            got = await client.get(f"/jobs/{job_id}{path}")
            assert got.status_code == 200, (path, got.text)
    failed = (await client.get(f"/jobs/{ids['bad_result']}")).json()
    assert failed["status"] == "FAILURE" and "the result" in failed["error"]
    reported = (await client.get(f"/jobs/{ids['bad_progress']}/progress")).json()
    assert (reported["status"], reported["current"], reported["message"]) == (
        "SUCCESS",
        1,
        "fine",
    )


# -- 3. arbitrary values, thrown at every edge ----------------------------------------------

SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\udc80\ud800"])
TEXT = st.text(st.characters(exclude_categories=()), max_size=12) | SURROGATES
# Integers of every size (past 4300 digits hypothesis cannot print them; see
# test_an_int_too_long_to_print_is_still_a_clear_error).
INTEGERS = (
    st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.sampled_from([2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**4000])
)
SCALARS = st.none() | st.booleans() | INTEGERS | st.floats() | TEXT
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(TEXT, children, max_size=4)
    ),
    max_leaves=10,
)
# Values near the valid ones for options (arbitrary values are almost always refused).
NEAR_VALID = (
    st.floats(min_value=-10.0, max_value=1e12)
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.sampled_from(["0.5s", "30s", "1h30m", "200ms", "1d", "0", "-1s", "1e3"])
    | TEXT
)
OPTIONS = ("unique_key", "priority", "delay", "run_at", "timeout")
TARGETS = [
    "args",
    "kwargs",
    "metadata",
    "unique_key",
    "priority",
    "delay",
    "run_at",
    "timeout",
    "progress",
    "result",
]
CLEAR = (InvalidOption, SerializationError, ValidationError)
INT53 = 2**53


class Harness:
    """One runtime for all the examples of a property test (one per example is too slow)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.store: JobStore | None = None  # what is committed (a second store)
        self.anything: Any = None
        self.raw: dict[int, Any] = {}
        self.refused: dict[int, BaseException] = {}
        self.canaries = 0
        self.token = 0


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    rt = make_rt(tmp_path)
    h = Harness(rt)

    @rt.task
    async def anything(job: JobContext, *args: Any, **kwargs: Any) -> None:
        return None

    h.anything = anything

    @rt.task
    async def returns(job: JobContext, token: int) -> Any:
        return h.raw.pop(token)

    @rt.task
    async def reports(job: JobContext, token: int) -> None:
        current, total, message = h.raw.pop(token)
        try:
            job.progress(current, total, message)
        except TaskrtError as exc:
            h.refused[token] = exc

    @rt.task
    async def canary(job: JobContext, n: int) -> int:
        return n

    async with rt, committed(tmp_path) as store:
        h.store = store
        yield h


async def _throw(h: Harness, target: str, value: Any, progress: tuple[Any, Any, Any]) -> str:
    """Throw ``value`` at ``target``: a clear error at the call, or a faithful round trip."""
    rt = h.rt
    pool = rt.pool("default")
    h.token += 1
    token = h.token
    try:
        if target == "args":
            job_id = await pool.add("anything", value)
        elif target == "kwargs":
            kwargs = value if isinstance(value, dict) else {"v": value}
            assume("tx" not in kwargs)  # ``add``'s own keyword
            job_id = await pool.add("anything", **kwargs)
        elif target == "result":
            h.raw[token] = value
            job_id = await pool.add("returns", token)
        elif target == "progress":
            h.raw[token] = progress
            job_id = await pool.add("reports", token)
        else:
            job_id = await pool.add(h.anything.options(**{target: value}))
    except CLEAR as exc:
        assert str(exc), "an error without a message"
        if target in OPTIONS:  # it names the field
            assert isinstance(exc, InvalidOption) and exc.field == target, repr(exc)
        elif target == "metadata":
            assert "metadata" in str(exc), repr(exc)
        elif target in ("args", "kwargs"):
            assert "the arguments of task 'anything'" in str(exc), repr(exc)
        h.raw.pop(token, None)
        return "refused"
    # Accepted: it round-trips through JSON, as it will after a restart.
    if target in ("delay", "run_at"):
        info = await rt.get(job_id)
        created, run_at = info.created_at, info.run_at
        if value is None:  # the default: now
            assert run_at == created
        elif target == "run_at":
            assert run_at == float(value)
        elif isinstance(value, int | float):
            assert run_at == created + float(value)
        else:
            assert run_at >= created
        if run_at > created + 1:
            return "waiting"  # the stored time is what there is to check
    info = await rt.wait(job_id, timeout=10)
    if target == "timeout" and info.status is JobStatus.FAILURE:
        assert info.error is not None and "timed out" in info.error
    elif target == "result" and info.status is JobStatus.FAILURE:
        assert info.error is not None and info.error.startswith("the result is not")
    else:
        assert info.status is JobStatus.SUCCESS, info
    if target == "args":
        assert same(list(info.args), [json_view(value)]), (info.args, value)
    elif target == "kwargs":
        assert same(info.kwargs, json_view(kwargs)), (info.kwargs, value)
    elif target == "metadata":
        expected = {} if value is None else json_view(value)  # None: no metadata
        assert same(info.metadata, expected), (info.metadata, value)
    elif target == "result" and info.status is JobStatus.SUCCESS:
        assert same(info.result, json_view(value)), (info.result, value)
    elif target == "unique_key":
        assert info.unique_key == value
    elif target == "priority":
        assert same(info.priority, 0 if value is None else value)  # None: the task's
    elif target == "timeout" and value is not None and not isinstance(value, str):
        assert info.timeout == float(value)
    elif target == "progress":
        refused = h.refused.pop(token, None)
        if refused is not None:
            event("progress: refused in the handler")
            assert isinstance(refused, InvalidOption) and refused.field in (
                "current",
                "total",
                "message",
            )
            assert (info.current, info.total, info.message) == (0, 0, "")
        else:
            current, total, message = progress
            assert same(info.current, as_stored(current, real=True))
            assert same(info.total, 0 if total is None else as_stored(total, real=True))
            assert info.message == ("" if message is None else message)
    await rt.store.flush()  # the terminal write is committed: the row says the same
    assert h.store is not None
    await assert_database_agrees(h.store, {job_id: info}, finished=False, every=False)
    return info.status.value


def as_stored(number: int | float, *, real: bool = False) -> int | float:
    """limits note 1: an int that does not fit 64 bits (a REAL column: from 2**53 on)
    is a float."""
    if type(number) is int and not (
        -INT53 < number < INT53 if real else -INT64_MAX <= number <= INT64_MAX
    ):
        return float(number)
    return number


@settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    target=st.sampled_from(TARGETS),
    value=VALUES,
    near=st.none() | NEAR_VALID,
    progress=st.tuples(SCALARS | VALUES, st.none() | SCALARS, st.none() | TEXT | SCALARS),
)
async def test_any_value_is_refused_clearly_or_round_trips(
    harness: Harness,
    target: str,
    value: Any,
    near: Any,
    progress: tuple[Any, Any, Any],
) -> None:
    if target in OPTIONS and near is not None:
        value = near
    event(f"{target}: {await _throw(harness, target, value, progress)}")
    # Whatever happened, the next job of another producer is fine.
    harness.canaries += 1
    n = harness.canaries
    job_id = await harness.rt.pool("default").add("canary", n)
    info = await harness.rt.wait(job_id, timeout=10)
    assert (info.status, info.result) == (JobStatus.SUCCESS, n)


# -- 4. the limits are configurable ------------------------------------------------------------

SMALL = Limits(max_args_bytes=100, max_depth=3, max_message_bytes=10)


async def test_configured_limits_refuse_above_and_accept_at_the_limit(tmp_path: Path) -> None:
    rt = make_rt(tmp_path, limits=SMALL)
    refusals: list[str] = []

    @rt.task
    async def echo(job: JobContext, *args: Any, **kwargs: Any) -> Any:
        return list(args) or kwargs

    @rt.task
    async def says(job: JobContext, message: str) -> str:
        try:
            job.progress(1, 2, message)
        except InvalidOption as exc:
            refusals.append(str(exc))
            return "refused"
        return "reported"

    @rt.task
    async def gives(job: JobContext, depth: int) -> Any:
        return nested(depth)

    async with rt:
        pool = rt.pool("default")
        # Arguments are stored as one JSON array: '["' + 96 characters + '"]' is 100 bytes.
        at_limit = await pool.add(echo, "x" * 96)
        assert (await rt.wait(at_limit, timeout=5)).result == ["x" * 96]
        with pytest.raises(SerializationError, match="it is 101 bytes encoded; the limit is 100"):
            await pool.add(echo, "x" * 97)
        # Bytes, not characters: 48 two-byte characters are 96 bytes.
        with pytest.raises(SerializationError, match="the limit is 100"):
            await pool.add(echo, "é" * 49)
        assert (await rt.wait(await pool.add(echo, "é" * 48), timeout=5)).status.value == "SUCCESS"
        # Keyword arguments too: '{"v":"' + 92 + '"}' is 100 bytes.
        assert (await rt.wait(await pool.add(echo, v="y" * 92), timeout=5)).result == {
            "v": "y" * 92
        }
        with pytest.raises(SerializationError, match="the limit is 100"):
            await pool.add(echo, v="y" * 93)

        # Depth: the stored array of arguments is a level of its own.
        assert (await rt.wait(await pool.add(echo, [[]]), timeout=5)).result == [[[]]]
        with pytest.raises(SerializationError, match="nested more than 3 levels deep"):
            await pool.add(echo, [[[]]])
        with pytest.raises(SerializationError, match=r"^metadata .*nested more than 3 levels"):
            await pool.add(echo.options(metadata={"a": {"b": {"c": {}}}}))
        assert (
            await rt.wait(await pool.add(echo.options(metadata={"a": {"b": {}}})), timeout=5)
        ).metadata == {"a": {"b": {}}}

        # Results: three levels are stored, four fail the job and say why.
        three = await rt.wait(await pool.add(gives, 3), timeout=5)
        assert (three.status, three.result) == (JobStatus.SUCCESS, nested(3))
        four = await rt.wait(await pool.add(gives, 4), timeout=5)
        assert four.status is JobStatus.FAILURE and four.error is not None
        assert "nested more than 3 levels deep" in four.error

        # Progress messages: 10 bytes (5 two-byte characters) pass, 11 do not.
        for message, expected in [
            ("0123456789", "reported"),
            ("ééééé", "reported"),
            ("0123456789a", "refused"),
            ("éééééx", "refused"),
        ]:
            info = await rt.wait(await pool.add(says, message), timeout=5)
            assert info.result == expected, message
        assert refusals == [
            "message: expected at most 10 bytes, found 11",
            "message: expected at most 10 bytes, found 11",
        ]

        # The HTTP API applies the same limits.
        transport = httpx.ASGITransport(app=create_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            big = await client.post("/jobs", json={"task": "echo", "args": ["x" * 97]})
            assert big.status_code == 422
            assert "the limit is 100" in _error(big)["message"]
            fits = await client.post("/jobs", json={"task": "echo", "args": ["x" * 96]})
            assert fits.status_code == 201, fits.text


@pytest.mark.parametrize(
    "fields",
    [{"max_depth": 0}, {"max_args_bytes": -1}, {"max_message_bytes": True}, {"max_depth": 2.5}],
)
def test_limits_refuse_what_is_not_a_positive_integer(fields: dict[str, Any]) -> None:
    name = next(iter(fields))
    with pytest.raises(InvalidOption, match=f"^limits.{name}: expected a positive integer"):
        Limits(**fields)


# -- bugs found while writing the above -------------------------------------------------------

HUGE = 10**5000  # more digits than Python will print (sys.get_int_max_str_digits: 4300)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        pytest.param(lambda t: t.options(delay=HUGE), "delay", id="delay=10**5000"),
        pytest.param(lambda t: t.options(timeout=HUGE), "timeout", id="timeout=10**5000"),
        pytest.param(lambda t: t.options(priority=[HUGE]), "priority", id="priority=[10**5000]"),
        pytest.param(lambda t: t.options(run_at=[HUGE]), "run_at", id="run_at=[10**5000]"),
        pytest.param(
            lambda t: t.options(unique_key=[HUGE]), "unique_key", id="unique_key=[10**5000]"
        ),
    ],
)
def test_an_int_too_long_to_print_is_still_a_clear_error(
    tmp_path: Path, call: Callable[[Any], Any], field: str
) -> None:
    rt = make_rt(tmp_path)

    @rt.task
    async def target(job: JobContext) -> None:
        return None

    with pytest.raises(InvalidOption) as info:
        call(target)
    assert info.value.field == field


async def test_a_progress_value_too_long_to_print_is_a_clear_error(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    caught: list[BaseException] = []

    @rt.task
    async def reporter(job: JobContext) -> None:
        try:
            job.progress([HUGE])
        except Exception as exc:
            caught.append(exc)

    async with rt:
        await rt.wait(await rt.pool("default").add(reporter), timeout=5)
    assert len(caught) == 1
    assert isinstance(caught[0], InvalidOption), repr(caught[0])


async def test_what_rt_get_says_of_a_live_job_is_what_the_database_will_say(
    tmp_path: Path,
) -> None:
    rt = make_rt(tmp_path)
    rt.pool("held").pause()

    @rt.task(pool="held")
    async def waits(job: JobContext) -> None:
        return None

    async with rt:
        job_id = await rt.pool("held").add(waits.options(metadata={"pair": (1, 2), 3: "x"}))
        live = await rt.get(job_id)
    # Arguments are given back as JSON reads them (runtime: "what a restart would
    # read back"); metadata should be too: the database has {"pair": [1, 2], "3": "x"}.
    (stored,) = await committed_jobs(tmp_path)
    assert stored.id == job_id
    assert same(stored.metadata, {"pair": [1, 2], "3": "x"})
    assert list(stored.metadata) == ["pair", "3"]
    assert live.metadata == {"pair": [1, 2], "3": "x"}


@pytest.mark.parametrize("value", [2**53, 2**53 + 1, 2**62 + 1, 2**63 - 1])
async def test_a_progress_value_beyond_2_53_reads_the_same_live_and_stored(
    tmp_path: Path, value: int
) -> None:
    rt = make_rt(tmp_path)

    @rt.task
    async def reporter(job: JobContext) -> None:
        await job.progress(value, value)

    async with rt:
        info = await rt.wait(await rt.pool("default").add(reporter), timeout=5)
        # limits note 1: progress columns are REAL, so such an int is rounded at
        # once, and rt.get does not change once the job is read from disk.
        assert (info.current, info.total) == (float(value), float(value))
        assert type(info.current) is float
    stored = [(j.current, j.total) for j in await committed_jobs(tmp_path)]
    assert stored == [(float(value), float(value))]
    assert all(type(v) is float and math.isfinite(v) for v in stored[0])
