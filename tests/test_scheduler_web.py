"""The schedules API over HTTP (in-process ASGI): the same Runtime, the same errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from core_support import db_file, make_rt, sqlite_only_write

from taskrt import FakeClock, InvalidOption, JobContext, PoolNotFound, Runtime
from taskrt.web import create_app

T0 = 1_800_000_000.0


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Runtime, FakeClock, httpx.AsyncClient]]:
    clock = FakeClock(T0)
    rt = make_rt(tmp_path, clock=clock)

    @rt.task
    async def report(job: JobContext, kind: str = "daily") -> str:
        return kind

    rt.schedule("nightly", report, "0 0 2 * * *", kwargs={"kind": "nightly"})
    app = create_app(rt)
    async with rt:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield rt, clock, client


def error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


async def test_create_read_list_and_idempotent_post(api: Any) -> None:
    rt, _, client = api
    new = {"name": "often", "task": "report", "expression": "*/5 * * * * *", "args": ["hourly"]}
    created = await client.post("/schedules", json=new)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/schedules/often"
    body = created.json()
    assert (body["name"], body["task"], body["args"], body["next_run_at"]) == (
        "often",
        "report",
        ["hourly"],
        T0 + 5,
    )
    assert (body["tz"], body["misfire"], body["paused"], body["fires"]) == (
        "UTC",
        "latest",
        False,
        0,
    )
    again = await client.post("/schedules", json=new)
    assert (again.status_code, again.json()) == (200, body)
    other = await client.post("/schedules", json={**new, "expression": "* * * * * *"})
    assert other.status_code == 409 and error(other)["code"] == "schedule_exists"
    listed = await client.get("/schedules")
    assert [s["name"] for s in listed.json()["schedules"]] == ["nightly", "often"]
    one = await client.get("/schedules/nightly")
    assert (one.status_code, one.json()["kwargs"]) == (200, {"kind": "nightly"})
    assert (await rt.schedules.get("often")).to_dict() == body


async def test_a_schedule_names_a_declared_pool_or_is_refused(api: Any) -> None:
    """As ``POST /jobs``: a pool declared in the serving process, else 404. Before,
    any string was stored, and each fire created a pool of that name (a review's
    ``"pool": "61 * * * *"`` made one, with the default concurrency, at its first
    slot)."""
    rt, _, client = api
    body = {"name": "x", "task": "report", "expression": "* * * * * *", "pool": "61 * * * *"}
    refused = await client.post("/schedules", json=body)
    assert (refused.status_code, error(refused)["code"]) == (404, "pool_not_found")
    assert error(refused)["message"] == "no pool named '61 * * * *'"
    assert (await client.get("/schedules/x")).status_code == 404  # nothing stored
    moved = await client.put("/schedules/nightly", json={"pool": "nope"})
    assert (moved.status_code, error(moved)["code"]) == (404, "pool_not_found")
    assert (await rt.schedules.get("nightly")).pool is None  # unchanged
    with pytest.raises(PoolNotFound):
        await rt.schedules.create("y", "report", "* * * * * *", pool="nope")
    assert set(rt.pools) == {"default"}  # the refusals declared none
    rt.pool("reports")
    made = await client.post("/schedules", json={**body, "pool": "reports"})
    assert made.status_code == 201, made.text
    put = await client.put("/schedules/nightly", json={"pool": "reports"})
    assert (put.status_code, put.json()["pool"]) == (200, "reports")


async def test_a_schedule_declared_in_code_declares_its_pool(tmp_path: Path) -> None:
    """``rt.schedule(..., pool=...)`` declares the pool, as ``@rt.task(pool=...)`` does,
    so that the schedule can be changed over HTTP (which wants a declared pool)."""
    rt = make_rt(tmp_path, clock=FakeClock(T0))

    @rt.task
    async def report(job: JobContext, kind: str = "daily") -> str:
        return kind

    rt.schedule("nightly", report, "0 0 2 * * *", pool="cron")
    assert "cron" in rt.pools
    async with rt:
        transport = httpx.ASGITransport(app=create_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            put = await client.put("/schedules/nightly", json={"kwargs": {"kind": "weekly"}})
            assert (put.status_code, put.json()["pool"]) == (200, "cron"), put.text


async def test_errors(api: Any) -> None:
    _, _, client = api
    bad = await client.post(
        "/schedules", json={"name": "x", "task": "report", "expression": "0 61 * * * *"}
    )
    assert bad.status_code == 422
    assert (error(bad)["code"], error(bad)["field"]) == ("invalid_cron", "minute")
    zone = await client.post(
        "/schedules",
        json={"name": "x", "task": "report", "expression": "* * * * *", "tz": "Nowhere/City"},
    )
    assert (zone.status_code, error(zone)["field"]) == (422, "tz")  # the body's name
    no_task = await client.post(
        "/schedules", json={"name": "x", "task": "nope", "expression": "* * * * *"}
    )
    assert (no_task.status_code, error(no_task)["code"]) == (404, "task_not_found")
    # The task is looked up before the expression is read, as in POST /jobs.
    no_task = await client.post(
        "/schedules", json={"name": "x", "task": "nope", "expression": "0 61 * * * *"}
    )
    assert (no_task.status_code, error(no_task)["code"]) == (404, "task_not_found")
    blank = await client.post(
        "/schedules", json={"name": " \u3000", "task": "report", "expression": "* * * * *"}
    )
    assert (blank.status_code, error(blank)["field"]) == (422, "name")
    bad_args = await client.post(
        "/schedules",
        json={"name": "x", "task": "report", "expression": "* * * * *", "kwargs": {"k": 1}},
    )
    assert (bad_args.status_code, error(bad_args)["code"]) == (422, "validation_error")
    missing = await client.post("/schedules", json={"name": "x", "task": "report"})
    assert (missing.status_code, error(missing)["field"]) == (422, "expression")
    unknown = await client.post(
        "/schedules", json={"name": "x", "task": "report", "expression": "* * * * *", "cron": 1}
    )
    assert (unknown.status_code, error(unknown)["field"]) == (422, "cron")
    policy = await client.put("/schedules/nightly", json={"misfire": "sometimes"})
    assert (policy.status_code, error(policy)["field"]) == (422, "misfire")
    malformed = await client.post(
        "/schedules", content=b"{", headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400
    for method, path in [
        ("GET", "/schedules/ghost"),
        ("PUT", "/schedules/ghost"),
        ("DELETE", "/schedules/ghost"),
        ("POST", "/schedules/ghost/pause"),
        ("POST", "/schedules/ghost/resume"),
        ("POST", "/schedules/ghost/run"),
    ]:
        kwargs: dict[str, Any] = {"json": {}} if method == "PUT" else {}
        answer = await client.request(method, path, **kwargs)
        assert answer.status_code == 404, (method, path)
        assert error(answer) == {
            "code": "schedule_not_found",
            "message": "no schedule named 'ghost'",
            "schedule": "ghost",
        }


async def test_arguments_the_task_refuses_are_a_422_naming_the_schedule(api: Any) -> None:
    """As the Python API and a declaration say it (scheduler note 8). Before, the
    message named the task only ("task 'report': too many positional arguments")."""
    _, _, client = api
    post = await client.post(
        "/schedules",
        json={"name": "x", "task": "report", "expression": "* * * * *", "args": [1, 2]},
    )
    assert (post.status_code, error(post)) == (
        422,
        {
            "code": "validation_error",
            "message": "task 'report': schedule 'x' would add its jobs with arguments the "
            "task refuses (args (1, 2), kwargs {}): too many positional arguments",
            "task": "report",
            "parameter": None,
        },
    )
    put = await client.put("/schedules/nightly", json={"kwargs": {"k": 1}})
    assert (put.status_code, error(put)["code"]) == (422, "validation_error"), put.text
    assert error(put)["message"] == (
        "task 'report' parameter 'k': schedule 'nightly' would add its jobs with arguments "
        "the task refuses (args (), kwargs {'k': 1}): got an unexpected keyword argument 'k'"
    )
    listed = (await client.get("/schedules")).json()["schedules"]
    assert [(s["name"], s["kwargs"]) for s in listed] == [("nightly", {"kind": "nightly"})]


async def test_a_name_a_url_or_a_header_cannot_carry_is_refused_and_nothing_stored(
    api: Any,
) -> None:
    rt, _, client = api
    for name in ("a/b", "a\r\nSet-Cookie: x=1", "tab\there"):
        r = await client.post(
            "/schedules", json={"name": name, "task": "report", "expression": "* * * * *"}
        )
        assert (r.status_code, error(r)["field"]) == (422, "name"), r.text
    with pytest.raises(InvalidOption, match="name"):
        rt.schedule("x/y", "report", "* * * * *")
    listed = (await client.get("/schedules")).json()["schedules"]
    assert [s["name"] for s in listed] == ["nightly"]
    # Others (not latin-1, '?', '#') are fine; their Location is quoted.
    for name, location in (
        ("日本", "/schedules/%E6%97%A5%E6%9C%AC"),
        ("a?b#c", "/schedules/a%3Fb%23c"),
    ):
        await _created_at(client, name, location)


async def test_dot_segment_names_are_refused_as_no_url_reaches_them(api: Any) -> None:
    # Clients drop "." and ".." segments: /schedules/.. is sent as /.
    _, _, client = api
    for name in (".", ".."):
        r = await client.post(
            "/schedules", json={"name": name, "task": "report", "expression": "* * * * *"}
        )
        assert (r.status_code, error(r)["field"]) == (422, "name"), r.text
        assert repr(name) in error(r)["message"]
    listed = (await client.get("/schedules")).json()["schedules"]
    assert [s["name"] for s in listed] == ["nightly"]
    # Dots with anything else are names like others.
    for name, location in (("...", "/schedules/..."), (".x", "/schedules/.x")):
        await _created_at(client, name, location)


async def _created_at(client: Any, name: str, location: str) -> None:
    """POST a schedule named ``name``: 201 with ``location``, which reads it back."""
    r = await client.post(
        "/schedules", json={"name": name, "task": "report", "expression": "* * * * *"}
    )
    assert (r.status_code, r.headers["location"]) == (201, location), r.text
    assert (await client.get(location)).json()["name"] == name


async def test_a_time_zone_that_depends_on_the_host_is_422(api: Any) -> None:
    _, _, client = api
    for tz in ("localtime", "Factory", "posixrules", "posix/Europe/Berlin", "right/UTC"):
        r = await client.post(
            "/schedules",
            json={"name": "x", "task": "report", "expression": "* * * * *", "tz": tz},
        )
        assert (r.status_code, error(r)["code"], error(r)["field"]) == (422, "invalid_cron", "tz")
        assert "IANA" in error(r)["message"], r.text
        changed = await client.put("/schedules/nightly", json={"tz": tz})
        assert (changed.status_code, error(changed)["field"]) == (422, "tz")
    assert (await client.get("/schedules/nightly")).json()["tz"] == "UTC"


async def test_the_order_of_kwargs_does_not_make_another_schedule(tmp_path: Path) -> None:
    clock = FakeClock(T0)

    def runtime(kwargs: dict[str, str]) -> Runtime:
        rt = make_rt(tmp_path, clock=clock)

        @rt.task
        async def mail(job: JobContext, to: str = "", subject: str = "") -> None:
            return None

        rt.schedule("digest", mail, "@hourly", kwargs=kwargs)
        return rt

    async with runtime({"to": "ann", "subject": "news"}) as rt:
        transport = httpx.ASGITransport(app=create_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            new = {"name": "k", "task": "mail", "expression": "@hourly"}
            first = await client.post(
                "/schedules", json={**new, "kwargs": {"to": "a", "subject": "s"}}
            )
            again = await client.post(
                "/schedules", json={**new, "kwargs": {"subject": "s", "to": "a"}}
            )
        assert (first.status_code, again.status_code) == (201, 200), again.text
        assert again.json() == first.json()
        declared = await rt.schedules.get("digest")
    # A row stored before keys were sorted holds them in the order they were given.
    sqlite_only_write(
        db_file(tmp_path),
        "UPDATE schedules SET kwargs = ? WHERE name = 'digest'",
        ('{"to":"ann","subject":"news"}',),
    )
    await clock.advance(60)
    # Declared again at the next start, in another order: the same schedule, not updated.
    async with runtime({"subject": "news", "to": "ann"}) as rt:
        info = await rt.schedules.get("digest")
    assert (info.kwargs, info.updated_at) == (declared.kwargs, T0)


async def test_update_pause_resume_run_and_delete(api: Any) -> None:
    rt, clock, client = api
    changed = await client.put(
        "/schedules/nightly", json={"expression": "*/10 * * * * *", "tz": "Europe/Berlin"}
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["expression"], changed.json()["tz"]) == (
        "*/10 * * * * *",
        "Europe/Berlin",
    )
    assert changed.json()["next_run_at"] == T0 + 10
    bad = await client.put("/schedules/nightly", json={"expression": "* * *"})
    assert (bad.status_code, error(bad)["field"]) == (422, "expression")

    paused = await client.post("/schedules/nightly/pause")
    assert (paused.status_code, paused.json()["paused"], paused.json()["next_run_at"]) == (
        200,
        True,
        None,
    )
    await clock.advance(10)
    await rt.schedules.wait_idle()
    assert (await rt.schedules.get("nightly")).fires == 0
    resumed = await client.post("/schedules/nightly/resume")
    assert (resumed.json()["paused"], resumed.json()["next_run_at"]) == (False, T0 + 20)

    run = await client.post("/schedules/nightly/run")
    assert run.status_code == 201, run.text
    job = run.json()
    assert (job["task"], job["kwargs"], job["metadata"]) == (
        "report",
        {"kind": "nightly"},
        {"schedule": "nightly", "slot": None},
    )
    assert run.headers["location"] == f"/jobs/{job['id']}"
    assert (await client.get("/schedules/nightly")).json()["last_job_id"] == job["id"]

    deleted = await client.delete("/schedules/nightly")
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert (await client.get("/schedules/nightly")).status_code == 404
    assert (await client.get("/schedules")).json() == {"schedules": []}


async def test_openapi_documents_the_schedule_routes(api: Any) -> None:
    _, _, client = api
    doc = (await client.get("/openapi.json")).json()
    paths = doc["paths"]
    assert set(paths["/schedules"]) == {"get", "post"}
    assert set(paths["/schedules/{name}"]) == {"get", "put", "delete"}
    for action in ("pause", "resume", "run"):
        assert set(paths[f"/schedules/{{name}}/{action}"]) == {"post"}
    schemas = doc["components"]["schemas"]
    assert {"Schedule", "NewSchedule", "ScheduleChange"} <= set(schemas)
    assert schemas["NewSchedule"]["required"] == ["name", "task", "expression"]
    assert "422" in paths["/schedules"]["post"]["responses"]
    assert "409" in paths["/schedules"]["post"]["responses"]
