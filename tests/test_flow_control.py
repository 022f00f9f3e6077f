"""Flow control: deadlines and unique windows (docs/flow-control.md).

Each behaviour runs on a real SQLite file and on PostgreSQL (a schema of its
own, every process a node), through the Python API; the HTTP API's fields are
checked on SQLite.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pg_server
import pytest

from taskrt import DuplicateJob, JobContext, JobStatus, Runtime
from taskrt.clock import FakeClock
from taskrt.definitions import Task, TaskCall, checked_options
from taskrt.errors import InvalidOption, InvalidTransition, QueueFull
from taskrt.models import AttemptOutcome
from taskrt.rates import parse_rate
from taskrt.web import create_app


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The test's database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        return str(tmp_path / "app.db")
    return f"{pg_server.require()}?schema={pg_server.fresh_schema(tmp_path)}"


def rows(db: str, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql))


# -- options --------------------------------------------------------------------------


async def test_bad_flow_options_are_refused_naming_the_field(tmp_path: Path) -> None:
    rt = Runtime(str(tmp_path / "app.db"))

    @rt.task
    async def noop() -> None: ...

    cases = [
        ({"deadline": datetime(2030, 1, 1)}, "deadline"),  # naive: which zone?
        ({"deadline": "tomorrow"}, "deadline"),
        ({"deadline": float("nan")}, "deadline"),
        ({"unique_for": 60}, "unique_for"),  # a window of no key
        ({"unique_key": "k", "unique_for": 0}, "unique_for"),
        ({"unique_key": "k", "unique_for": "soon"}, "unique_for"),
        ({"unique_key": "k", "on_conflict": "ignore"}, "on_conflict"),
    ]
    for options, field in cases:
        with pytest.raises(InvalidOption) as caught:
            noop.options(**options)
        assert caught.value.field == field, options
    when = datetime(2030, 1, 1, tzinfo=UTC)
    assert noop.options(deadline=when).opts.deadline == when.timestamp()


# -- deadlines ------------------------------------------------------------------------


async def test_a_waiting_job_ends_at_its_deadline(db: str) -> None:
    rt = Runtime(db)
    failed: list[tuple[int, str | None]] = []
    ran: list[int] = []
    pool = rt.pool("q", concurrency=1)

    async def on_failed(job: Any, tx: Any) -> None:
        failed.append((job.id, job.error))

    @rt.task(pool="q", on_failed=on_failed)
    async def work(job: JobContext) -> None:
        ran.append(job.id)

    async with rt:
        pool.pause()  # nothing starts it: only its deadline ends it
        added = time.time()
        late = await pool.add(work.options(deadline=added + 0.5))
        kept = await pool.add(work.options(deadline=added + 60))
        info = await rt.wait(late, timeout=5)
        ended = time.time()
        assert (info.status, info.error, info.attempts) == (
            JobStatus.FAILURE,
            "deadline passed",
            0,
        )
        assert added + 0.5 <= ended < added + 0.5 + 1.5  # within the sweeper's interval
        assert failed == [(late, "deadline passed")]  # on_failed ran, once
        assert (await rt.get(kept)).status is JobStatus.WAITING
        assert (await rt.get(kept)).deadline == pytest.approx(added + 60)
        pool.resume()
        assert (await rt.wait(kept, timeout=5)).status is JobStatus.SUCCESS
    assert ran == [kept]
    # The deadline is stored: a restart still knows it.
    async with Runtime(db, workers=False) as again:
        assert (await again.get(kept)).deadline == pytest.approx(added + 60)


async def test_a_job_taken_after_its_deadline_never_starts(db: str) -> None:
    rt = Runtime(db)
    ran: list[int] = []

    @rt.task
    async def work(job: JobContext) -> None:
        ran.append(job.id)

    async with rt:
        past = await rt.pool("default").add(work.options(deadline=time.time() - 1))
        info = await rt.wait(past, timeout=5)
    assert (info.status, info.error) == (JobStatus.FAILURE, "deadline passed")
    assert ran == []


async def test_a_retry_by_hand_after_the_deadline_is_refused(db: str) -> None:
    """It would fail again at once, never run. Before, it was taken (200: FAILURE on
    SQLite, WAITING on PostgreSQL) and the job failed again with "deadline passed"."""
    rt = Runtime(db)
    ran: list[int] = []
    pool = rt.pool("default")

    @rt.task(attempts=1)
    async def work(job: JobContext, fail: bool) -> None:
        ran.append(job.id)
        if fail:
            raise ValueError("no")

    async with rt:
        past = await pool.add(work.options(deadline=time.time() - 1), False)
        assert (await rt.wait(past, timeout=5)).error == "deadline passed"
        pool.pause()
        deadline = time.time() + 0.2
        cancelled = await pool.add(work.options(deadline=deadline), False)
        await rt.cancel(cancelled)
        await asyncio.sleep(max(0.0, deadline - time.time()))
        for job_id in (past, cancelled):
            with pytest.raises(InvalidTransition, match="its deadline has passed") as err:
                await rt.retry(job_id)
            assert err.value.reason == "its deadline has passed"
        app = create_app(rt)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.post(f"/jobs/{past}/retry")
            assert r.status_code == 409, r.text
            assert r.json()["error"]["reason"] == "its deadline has passed"
            r = await client.post("/jobs/retry", json={"ids": [past, cancelled]})
            assert (r.json()["done"], r.json()["skipped"]) == (0, 2), r.text
        assert (await rt.get(past)).status is JobStatus.FAILURE
        assert (await rt.get(cancelled)).status is JobStatus.CANCELLED
        # Before its deadline, a retry is taken as any.
        pool.resume()
        ahead = await pool.add(work.options(deadline=time.time() + 60), True)
        assert (await rt.wait(ahead, timeout=5)).status is JobStatus.FAILURE
        await rt.retry(ahead)
        assert (await rt.wait(ahead, timeout=5)).attempts == 2
    assert ran == [ahead, ahead]


async def test_a_waiting_job_the_pool_and_the_sweeper_both_end_ends_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Where one owner holds the waiting jobs, the pool may take a job past its
    deadline and the sweeper find it too. With an ``on_failed`` hook its failure
    waits for its transaction, the job still WAITING in memory: the sweeper ended
    the same state again, its transaction refused ("was not written"). One end."""
    rt = Runtime(str(tmp_path / "app.db"))
    pool = rt.pool("p", concurrency=1)
    failed: list[int] = []

    async def on_failed(job: Any, tx: Any) -> None:
        failed.append(job.id)

    @rt.task(pool="p", on_failed=on_failed)
    async def work() -> None:
        return None

    async with rt:
        pool.pause()
        await rt.deadlines.stop()  # this test plays the sweeper's part
        job_id = await pool.add(work.options(deadline=time.time() - 1))
        state = await rt.adoption.pin(job_id)
        assert state is not None
        pool.remove(state)  # as the pool's take: out of its queue, then ended
        rt.transitions.deadline_passed(state)  # its transaction waits for a flush
        await rt._end_past_deadline(job_id)  # the sweeper reads it WAITING meanwhile
        info = await rt.wait(job_id, timeout=5)
        await asyncio.sleep(0.1)  # a second end's transaction, if any, has run
    assert (info.status, info.error) == (JobStatus.FAILURE, "deadline passed")
    assert failed == [job_id]
    assert "was not written" not in caplog.text


async def test_a_running_attempt_is_cut_at_the_deadline_and_not_retried(db: str) -> None:
    rt = Runtime(db)
    started = asyncio.Event()

    @rt.task(attempts=5, retry="0s", timeout=30)
    async def slow(job: JobContext) -> None:
        started.set()
        await asyncio.sleep(30)

    async with rt:
        t0 = time.time()
        job_id = await rt.pool("default").add(slow.options(deadline=t0 + 0.4))
        info = await rt.wait(job_id, timeout=5)
        took = time.time() - t0
        attempts = await rt.attempts(job_id)
    assert (info.status, info.error, info.attempts) == (JobStatus.FAILURE, "deadline passed", 1)
    assert 0.35 <= took < 2.0
    assert [(a.outcome, a.error) for a in attempts] == [(AttemptOutcome.TIMEOUT, "deadline passed")]


async def test_a_retry_that_would_start_after_the_deadline_ends_the_job_now(db: str) -> None:
    rt = Runtime(db)

    @rt.task(attempts=5, retry="10s")
    async def flaky(job: JobContext) -> None:
        raise RuntimeError(f"attempt {job.attempt} broke")

    @rt.task(attempts=5, retry="0s")
    async def flaky_fast(job: JobContext) -> int:
        if job.attempt < 3:
            raise RuntimeError("not yet")
        return job.attempt

    async with rt:
        t0 = time.time()
        pool = rt.pool("default")
        doomed = await pool.add(flaky.options(deadline=t0 + 3))
        fine = await pool.add(flaky_fast.options(deadline=t0 + 30))
        info = await rt.wait(doomed, timeout=5)
        assert time.time() - t0 < 2.0  # not 10 s later, nor at the deadline
        assert info.status is JobStatus.FAILURE
        assert (
            info.error == "deadline passed before the next attempt: RuntimeError: attempt 1 broke"
        )
        assert info.attempts == 1
        # Retries that come before the deadline still happen.
        done = await rt.wait(fine, timeout=5)
        assert (done.status, done.result) == (JobStatus.SUCCESS, 3)


# -- unique windows -------------------------------------------------------------------


async def test_a_unique_window_holds_the_key_after_the_job_finished(db: str) -> None:
    clock = FakeClock(start=time.time())
    rt = Runtime(db, clock=clock)

    @rt.task
    async def welcome(job: JobContext, user: int) -> int:
        return user

    async with rt:
        pool = rt.pool("default")
        first = await pool.add(welcome.options(unique_key="welcome:7", unique_for=3600), 7)
        assert (await rt.wait(first, timeout=5)).status is JobStatus.SUCCESS
        # Finished, and the key is still taken: the same job comes back.
        again = await pool.add(welcome.options(unique_key="welcome:7", unique_for=3600), 7)
        assert again == first
        plain = await pool.add(welcome.options(unique_key="welcome:7"), 7)  # any add of the key
        assert plain == first
        with pytest.raises(DuplicateJob) as caught:
            await pool.add(welcome.options(unique_key="welcome:7", on_conflict="raise"), 7)
        assert (caught.value.existing_id, caught.value.unique_key) == (first, "welcome:7")
        assert (caught.value.to_dict()["code"], caught.value.to_dict()["existing_id"]) == (
            "duplicate_job",
            first,
        )
        # Other keys are free.
        other = await pool.add(welcome.options(unique_key="welcome:8", unique_for=3600), 8)
        assert other > first
        # Once the window has passed, the key is free again.
        await clock.advance(3601)
        later = await pool.add(welcome.options(unique_key="welcome:7", unique_for=60), 7)
        assert later > other
        assert (await rt.wait(later, timeout=5)).status is JobStatus.SUCCESS


async def test_a_full_pool_answers_a_key_its_window_holds_with_the_holder(
    target: tuple[str, dict[str, Any]],
) -> None:
    # Within a window an add of the key gets its job's id, full pool or not (and
    # on_conflict="raise" its DuplicateJob). Before, a full pool said QueueFull.
    db, options = target
    rt = Runtime(db, **options)
    gate = asyncio.Event()

    @rt.task(pool="full")
    async def welcome(job: JobContext, user: int) -> int:
        return user

    @rt.task(pool="full")
    async def filler(job: JobContext) -> None:
        await gate.wait()

    async with rt:
        pool = rt.pool("full", concurrency=1, capacity=1)
        first = await pool.add(welcome.options(unique_key="welcome:7", unique_for=3600), 7)
        assert (await rt.wait(first, timeout=5)).status is JobStatus.SUCCESS
        busy = await pool.add(filler)
        async with asyncio.timeout(5):
            while (await rt.get(busy)).status is not JobStatus.RUNNING:
                await asyncio.sleep(0.01)
        await pool.add(filler)  # waits: the pool is full now
        with pytest.raises(QueueFull):
            await pool.add(welcome.options(unique_key="welcome:8"), 8)
        again = await pool.add(welcome.options(unique_key="welcome:7", unique_for=3600), 7)
        assert again == first
        with pytest.raises(DuplicateJob) as caught:
            await pool.add(welcome.options(unique_key="welcome:7", on_conflict="raise"), 7)
        assert caught.value.existing_id == first
        gate.set()


async def test_without_a_window_a_finished_job_frees_its_key(db: str) -> None:
    rt = Runtime(db)

    @rt.task
    async def once(job: JobContext) -> None: ...

    async with rt:
        pool = rt.pool("default")
        first = await pool.add(once.options(unique_key="k"))
        await rt.wait(first, timeout=5)
        second = await pool.add(once.options(unique_key="k", on_conflict="raise"))
        assert second > first


async def test_on_conflict_raise_while_the_holder_is_waiting(db: str) -> None:
    rt = Runtime(db)
    pool = rt.pool("q")

    @rt.task(pool="q")
    async def once(job: JobContext) -> None: ...

    async with rt:
        pool.pause()
        first = await pool.add(once.options(unique_key="k"))
        assert await pool.add(once.options(unique_key="k")) == first
        with pytest.raises(DuplicateJob) as caught:
            await pool.add(once.options(unique_key="k", on_conflict="raise"))
        assert caught.value.existing_id == first
        assert [j.id for j in (await rt.jobs(status="WAITING")).jobs] == [first]


async def test_a_window_outlives_its_job_and_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "app.db")
    clock = FakeClock(start=time.time())

    def app() -> tuple[Runtime, Any]:
        rt = Runtime(db, clock=clock)

        @rt.task
        async def once(job: JobContext) -> None: ...

        return rt, once

    rt, once = app()
    async with rt:
        first = await rt.pool("default").add(once.options(unique_key="k", unique_for=600))
        await rt.wait(first, timeout=5)
        await clock.advance(1)
        assert await rt.cleanup(older_than=0) == 1  # the job is gone ...
    assert rows(db, "SELECT count(*) FROM jobs") == [(0,)]
    rt, once = app()
    async with rt:
        pool = rt.pool("default")
        with pytest.raises(DuplicateJob) as caught:  # ... its window is not
            await pool.add(once.options(unique_key="k", on_conflict="raise"))
        assert caught.value.existing_id == first
        # Retention forgets the windows that ended, and only those.
        await clock.advance(600)
        await pool.add(once.options(unique_key="other", unique_for=3600))
        await rt.schedules.retention.prune()
        assert rows(db, "SELECT key FROM unique_keys") == [("other",)]
        fresh = await pool.add(once.options(unique_key="k", on_conflict="raise"))
        assert fresh > first


# -- over HTTP ------------------------------------------------------------------------


async def test_post_jobs_takes_the_flow_options(tmp_path: Path) -> None:
    rt = Runtime(str(tmp_path / "app.db"))
    pool = rt.pool("q")

    @rt.task(pool="q")
    async def once(job: JobContext) -> None: ...

    async with rt:
        pool.pause()
        transport = httpx.ASGITransport(app=create_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            body = {
                "task": "once",
                "unique_key": "k",
                "unique_for": "1h",
                "deadline": "2100-01-01T00:00:00Z",
                "retry": "1m,2m,4m",
                "lock": "account:1",
            }
            made = await client.post("/jobs", json=body)
            assert made.status_code == 201, made.text
            job = made.json()
            assert job["deadline"] == datetime(2100, 1, 1, tzinfo=UTC).timestamp()
            assert job["retry_policy"] is not None
            assert (job["lock"], job["waiting_reason"]) == ("account:1", "paused")
            same = await client.post("/jobs", json=body)
            assert (same.status_code, same.json()["id"]) == (201, job["id"])
            refused = await client.post("/jobs", json={**body, "on_conflict": "raise"})
            assert refused.status_code == 409
            assert refused.json()["error"]["code"] == "duplicate_job"
            assert refused.json()["error"]["existing_id"] == job["id"]
            for field, value in [
                ("on_conflict", "skip"),
                ("unique_for", -5),
                ("deadline", "next week"),
                ("retry", {"base": "1s", "speed": 2}),
                ("lock", ""),
            ]:
                bad = await client.post("/jobs", json={**body, field: value})
                assert 400 <= bad.status_code < 500, (field, bad.text)
                assert field in bad.text, (field, bad.text)
        assert [j.id for j in (await rt.jobs()).jobs] == [job["id"]]


async def test_a_client_process_gets_duplicate_job_and_deadlines_from_the_owner(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "app.db")

    def app(**options: Any) -> Runtime:
        rt = Runtime(db, **options)
        rt.pool("q")

        @rt.task(pool="q")
        async def once(job: JobContext) -> None: ...

        return rt

    owner, client = app(), app(workers=False)
    async with owner, client:
        owner.pools["q"].pause()
        assert client.relayed  # its adds go to the owner over the relay
        call = client.tasks["once"]

        def options(**given: Any) -> TaskCall:
            return TaskCall(call, checked_options(given))

        first = await client.pools["q"].add(options(unique_key="k"))  # forwarded to the owner
        with pytest.raises(DuplicateJob) as caught:
            await client.pools["q"].add(options(unique_key="k", on_conflict="raise"))
        assert caught.value.existing_id == first
        late = await client.pools["q"].add(options(deadline=time.time() + 0.3))
        info = await client.wait(late, timeout=5)
        assert (info.status, info.error) == (JobStatus.FAILURE, "deadline passed")


# -- named steps ----------------------------------------------------------------------


async def test_progress_steps_are_kept_streamed_and_stored(db: str) -> None:
    rt = Runtime(db)
    gate = asyncio.Event()

    @rt.task
    async def album(job: JobContext) -> str:
        await job.progress(1, 3, "fetching", step="download")
        await job.progress(3, 3, step="download")
        await job.progress(2, 5, "resizing", step="resize")
        await job.progress(9, 10)  # the job's own progress: no step changes
        await gate.wait()
        return "done"

    @rt.task
    def report(job: JobContext) -> None:  # from a worker thread
        for i in range(1, 4):
            job.progress(i, 3, step="scan")

    async with rt:
        job_id = await rt.pool("default").add(album)
        seen: list[dict[str, Any]] = []
        async with rt.subscribe(job_id) as stream:
            async for event in stream:
                if event.type.value == "progress":
                    seen.append(event.data)
                    if len(seen) == 4:
                        gate.set()
        info = await rt.get(job_id)
        threaded = await rt.wait(await rt.pool("default").add(report), timeout=5)
    expected = (
        {"name": "download", "current": 3, "total": 3},
        {"name": "resize", "current": 2, "total": 5},
    )
    assert (info.status, info.step, info.steps) == (JobStatus.SUCCESS, "resize", expected)
    assert (info.current, info.total, info.message) == (9, 10, "resizing")
    assert [e.get("step") for e in seen] == ["download", "download", "resize", "resize"]
    assert seen[0]["steps"] == [{"name": "download", "current": 1, "total": 3}]
    assert seen[-1]["steps"] == list(expected)
    assert (threaded.step, threaded.steps) == (
        "scan",
        ({"name": "scan", "current": 3, "total": 3},),
    )
    # Stored: another runtime reads them back.
    async with Runtime(db, workers=False) as again:
        stored = await again.get(job_id)
        assert (stored.step, stored.steps) == ("resize", expected)
        assert (await again.get(threaded.id)).steps == threaded.steps


async def test_progress_figures_read_back_from_the_store_as_reported(db: str) -> None:
    """Both backends store ``current`` and ``total`` as floats: a job read from the
    database said ``0.0`` where the job in memory said ``0`` (on PostgreSQL, every
    job another node ran). Whole figures come back as integers, others as floats."""
    rt = Runtime(db)
    rt.pool("held").pause()

    @rt.task
    async def half(job: JobContext) -> None:
        await job.progress(2.5, 10)

    @rt.task(pool="held")
    async def later() -> None:
        return None

    async with rt:
        done = await rt.wait(await rt.pool("default").add(half), timeout=5)
        waiting = await rt.pool("held").add(later)
    async with Runtime(db, workers=False) as again:
        stored = await again.get(done.id)
        fresh = await again.get(waiting)
    assert (stored.current, stored.total) == (2.5, 10)
    assert type(stored.current) is float and type(stored.total) is int
    assert (fresh.current, fresh.total) == (0, 0)
    assert type(fresh.current) is int and type(fresh.total) is int


async def test_steps_over_http_and_their_bounds(tmp_path: Path) -> None:
    rt = Runtime(str(tmp_path / "app.db"))
    refused: list[str] = []

    @rt.task
    async def many(job: JobContext) -> None:
        for bad in ("", 7):
            try:
                await job.progress(0, step=bad)  # type: ignore[arg-type]
            except InvalidOption as exc:
                refused.append(exc.field)
        for i in range(105):  # at most 100 steps are kept; the others are ignored
            await job.progress(i, 200, step=f"s{i}")

    async with rt:
        job_id = await rt.pool("default").add(many)
        await rt.wait(job_id, timeout=5)
        transport = httpx.ASGITransport(app=create_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            progress = (await client.get(f"/jobs/{job_id}/progress")).json()
    assert refused == ["step", "step"]
    assert len(progress["steps"]) == 100
    assert progress["step"] == "s99"
    assert progress["steps"][99] == {"name": "s99", "current": 99, "total": 200, "percent": 49.5}


# -- rate limits and locks ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "taken"),
    [
        ("10/s", True),
        ("0.5/m", True),
        ("007/h", True),
        ("999999999.99999999999/s", True),  # below 10**9; its float rounds to 10**9
        ("\u0661\u0660/s", False),  # Arabic-Indic digits: \d matched them
        ("\uff11\uff10/s", False),  # fullwidth digits
        ("10 / s", False),
        (" 10/s", False),
        ("10/s ", False),
        ("10/s\n", False),  # the schema's "$" is the end of the text, not a final newline
        ("1e3/s", False),
        ("0/s", False),
        ("1000000000/s", False),
        ("0.000001/h", True),  # the slowest: a start in about 114 years
        ("0.0000001/s", False),  # below it: write it as 0.00036/h
        ("0." + "0" * 320 + "1/s", False),  # a wait for its next token of inf s
    ],
)
async def test_a_rate_is_taken_exactly_when_the_published_pattern_matches_it(
    tmp_path: Path, text: str, taken: bool
) -> None:
    """The Python API and the HTTP API take the rates ``/openapi.json``'s pattern
    allows, and only those: the validator took non-ASCII digits and spaces the
    pattern refuses, and refused a count the pattern allows."""
    rt = Runtime(str(tmp_path / "app.db"))
    rt.pool("q", concurrency=1)
    async with (
        rt,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(rt)), base_url="http://t"
        ) as http,
    ):
        schema = (await http.get("/openapi.json")).json()["components"]["schemas"]
        (pattern,) = {
            s["properties"]["rate"]["pattern"] for s in (schema["PoolChange"], schema["NewPool"])
        }
        # Python's fullmatch reads these ASCII-only patterns as JSON Schema does.
        assert (re.fullmatch(pattern, text) is not None) is taken
        reply = await http.patch("/pools/q", json={"rate": text})
        assert reply.status_code == (200 if taken else 422), reply.text
        if taken:
            assert reply.json()["rate"] == text
            assert str(parse_rate(text)) == text
        else:
            assert reply.json()["error"]["field"] == "rate"
            assert rt.pools["q"].rate is None
            with pytest.raises(InvalidOption) as caught:
                rt.pool("q", rate=text)
            assert caught.value.field == "rate"
            with pytest.raises(InvalidOption):

                @rt.task(rate=text)
                async def limited() -> None: ...


async def test_the_slowest_rate_has_a_finite_next_slot(db: str) -> None:
    """``GET /pools`` answered 500 (``inf`` is not JSON) once a job had taken the
    token of a rate the validator took, ``0.`` and 320 zeros and 1 a second:
    its wait was infinite. The slowest rate now is ``0.000001/h`` (rates note 3)."""
    rt = Runtime(db)
    rt.pool("slow", concurrency=2)

    @rt.task(pool="slow")
    async def noop() -> None: ...

    app = create_app(rt)
    async with (
        rt,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        tiny = await http.patch("/pools/slow", json={"rate": "0." + "0" * 320 + "1/s"})
        assert tiny.status_code == 422 and tiny.json()["error"]["field"] == "rate"
        reply = await http.patch("/pools/slow", json={"rate": "0.000001/h"})
        assert reply.status_code == 200, reply.text
        first = await rt.pool("slow").add(noop)
        assert (await rt.wait(first, timeout=10)).status is JobStatus.SUCCESS
        await rt.pool("slow").add(noop)  # no token left for it
        for path in ("/pools", "/pools/slow"):
            assert (await http.get(path)).status_code == 200
        stats = (await http.get("/pools/slow")).json()
        assert stats["rate"] == "0.000001/h"
        assert 3.5e9 < stats["next_slot"] <= 3.6e9  # a token every 3.6e9 s


async def settle_starts(count: Callable[[], int], quiet: float = 0.2) -> int:
    """The count once it stopped moving for ``quiet`` real seconds (starts commit first)."""
    last, since = count(), time.monotonic()
    async with asyncio.timeout(10):
        while time.monotonic() - since < quiet:
            await asyncio.sleep(0.01)
            if count() != last:
                last, since = count(), time.monotonic()
    return last


async def test_a_pool_rate_limit_starts_its_burst_then_the_rate(
    target: tuple[str, dict[str, Any]],
) -> None:
    db, options = target
    clock = FakeClock(start=time.time())
    rt = Runtime(db, clock=clock, **options)
    pool = rt.pool("mail", concurrency=50, rate="10/s")
    starts: list[float] = []

    @rt.task(pool="mail")
    async def send(job: JobContext) -> None:
        starts.append(clock.now())

    async with rt:
        await pool.add_many(send, [() for _ in range(120)])
        assert await settle_starts(lambda: len(starts)) == 10  # the burst: one second's worth
        blocked = [j for j in (await rt.jobs(status="WAITING", limit=1000)).jobs]
        assert {j.waiting_reason for j in blocked} <= {"rate_limited", None}
        assert any(j.waiting_reason == "rate_limited" for j in blocked)
        assert pool.statistics().rate == "10/s"
        assert 0 < pool.statistics().next_slot <= 0.1
        for _ in range(99):  # 4.95 s, a step at a time, the starts keeping up
            await clock.advance(0.05)
            await asyncio.sleep(0.005)
        total = await settle_starts(lambda: len(starts))
    assert 50 <= total <= 60  # 10 at once, then 10 a second for 4.95 s


async def test_a_task_rate_limit_holds_its_jobs_and_lets_others_pass(
    target: tuple[str, dict[str, Any]],
) -> None:
    db, options = target
    clock = FakeClock(start=time.time())
    rt = Runtime(db, clock=clock, **options)
    ran: list[str] = []

    @rt.task(rate="2/m")
    async def slow(job: JobContext) -> None:
        ran.append("slow")

    @rt.task
    async def fast(job: JobContext) -> None:
        ran.append("fast")

    async with rt:
        pool = rt.pool("default")
        held = [await pool.add(slow) for _ in range(3)]
        others = await pool.add_many(fast, [() for _ in range(5)])
        for job_id in others:
            await rt.wait(job_id, timeout=5)
        await settle_starts(lambda: len(ran))
        assert ran.count("slow") == 1  # 2/m: a burst of one, then one every 30 s
        info = await rt.get(held[1])
        assert (info.status, info.waiting_reason) == (JobStatus.WAITING, "rate_limited")
        for _ in range(30):
            await clock.advance(1)
            await asyncio.sleep(0.005)
        await settle_starts(lambda: len(ran))
        assert ran.count("slow") == 2
        for _ in range(30):
            await clock.advance(1)
            await asyncio.sleep(0.005)
        await rt.wait(held[2], timeout=5)
    assert ran.count("slow") == 3 and ran.count("fast") == 5


async def test_a_lock_runs_one_job_of_a_key_at_a_time_in_order(
    target: tuple[str, dict[str, Any]],
) -> None:
    db, options = target
    rt = Runtime(db, **options)
    pool = rt.pool("q", concurrency=4)
    inside: dict[str, int] = {}
    most: dict[str, int] = {}
    order: list[int] = []
    release = asyncio.Event()

    @rt.task(pool="q", attempts=2, retry="0s")
    async def sync(job: JobContext, account: str, fail: bool = False) -> None:
        inside[account] = inside.get(account, 0) + 1
        most[account] = max(most.get(account, 0), inside[account])
        order.append(job.id)
        try:
            await release.wait()
            if fail and job.attempt == 1:
                raise RuntimeError("first attempt fails: the lock is released for the next")
        finally:
            inside[account] -= 1

    async with rt:
        a = [await pool.add(sync.options(lock="account:42"), "42", fail=(i == 0)) for i in range(3)]
        other = await pool.add(sync.options(lock="account:7"), "7")
        await until_true(lambda: len(order) == 2)  # one of each key, not two of 42
        assert sorted(order) == [a[0], other]
        async with asyncio.timeout(5):  # where every node claims: found by its next look
            while (info := await rt.get(a[1])).waiting_reason is None:
                await asyncio.sleep(0.05)
        assert (info.status, info.waiting_reason, info.lock) == (
            JobStatus.WAITING,
            "locked",
            "account:42",
        )
        release.set()
        for job_id in [*a, other]:
            assert (await rt.wait(job_id, timeout=5)).status is JobStatus.SUCCESS
    assert most == {"42": 1, "7": 1}
    # In line: the retry of the first waits behind those added before it came back.
    assert [i for i in order if i in a] == [a[0], a[1], a[2], a[0]]


async def test_a_job_waiting_behind_an_earlier_job_of_its_lock_key_waits_in_line(
    target: tuple[str, dict[str, Any]],
) -> None:
    # gates note 2: jobs of one lock key start in their queue order, also when the
    # first one waits for its task's rate rather than for the lock.
    db, options = target
    clock = FakeClock(start=time.time())
    rt = Runtime(db, clock=clock, **options)
    ran: list[int] = []

    @rt.task(pool="q", rate="1/h")
    async def rated(job: JobContext) -> None:
        ran.append(job.id)

    @rt.task(pool="q")
    async def plain(job: JobContext) -> None:
        ran.append(job.id)

    async with rt:
        pool = rt.pool("q", concurrency=2)
        spent = await pool.add(rated)  # the hour's token
        await until_true(lambda: ran == [spent])
        first = await pool.add(rated.options(lock="acct"))
        second = await pool.add(plain.options(lock="acct"))
        other = await pool.add(plain.options(lock="other"))
        await rt.wait(other, timeout=5)  # another key passes
        await settle_starts(lambda: len(ran))
        assert ran == [spent, other]
        assert (await rt.get(second)).status is JobStatus.WAITING
        async with asyncio.timeout(5):  # where every node claims: told at a look
            while (await rt.get(second)).waiting_reason != "locked":
                await asyncio.sleep(0.02)
        await clock.advance(3600)
        await rt.wait(second, timeout=10)
    assert ran == [spent, other, first, second]


async def until_true(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


async def test_waiting_reasons_scheduled_and_paused_are_told_when_read(tmp_path: Path) -> None:
    rt = Runtime(str(tmp_path / "app.db"))
    pool = rt.pool("q")

    @rt.task(pool="q")
    async def noop(job: JobContext) -> None: ...

    async with rt:
        later = await pool.add(noop.options(delay=3600))
        pool.pause()
        now = await pool.add(noop)
        assert (await rt.get(later)).waiting_reason == "scheduled"
        assert (await rt.get(now)).waiting_reason == "paused"
        listed = {j.id: j.waiting_reason for j in (await rt.jobs()).jobs}
        assert listed == {later: "scheduled", now: "paused"}
        pool.resume()
        done = await rt.wait(now, timeout=5)
        assert done.waiting_reason is None
        assert (await rt.get(later)).to_dict()["waiting_reason"] == "scheduled"


async def test_paused_is_told_by_a_client_that_reads_the_database_with_no_owner(db: str) -> None:
    """docs/flow-control.md: ``paused`` is told when the job is read, always current,
    ``taskrt ls`` included. A client with no owner to ask (``taskrt ls --db`` on a
    stopped SQLite file; PostgreSQL with one owner) told none: its pools never learnt
    the pauses the database records. A client of PostgreSQL's mode "nodes" applies
    them, so the test runs where one owner runs the jobs."""

    def app(**options: Any) -> tuple[Runtime, Task[..., Any]]:
        rt = Runtime(db, mode="owner", **options)
        rt.pool("q")

        @rt.task(pool="q")
        async def noop(job: JobContext, *previous: Any) -> None: ...

        return rt, noop

    owner, noop = app()
    async with owner:
        await owner.change_pool("q", paused=True)
        waiting = await owner.pool("q").add(noop)
        later = await owner.pool("q").add(noop.options(delay=3600))
        flow = await owner.chain(noop.s(), noop.s())
    (client, _), (other, _) = app(workers=False), app(workers=False)
    async with client, other:
        assert not client.owner_status().reachable
        assert (await client.get(waiting)).waiting_reason == "paused"
        listed = {j.id: j.waiting_reason for j in (await client.jobs()).jobs}
        first, then = flow.jobs
        assert listed == {waiting: "paused", later: "scheduled", first: "paused", then: "blocked"}
        steps = (await client.workflow(flow.id)).jobs
        assert [j.waiting_reason for j in steps] == ["paused", "blocked"]
        await other.change_pool("q", paused=False)  # another process resumes it
        assert (await client.get(waiting)).waiting_reason is None  # current, not kept
        assert {j.id: j.waiting_reason for j in (await client.jobs()).jobs}[waiting] is None


async def test_unique_windows_hold_under_concurrent_adds_on_three_nodes(tmp_path: Path) -> None:
    url = f"{pg_server.require()}?schema={pg_server.fresh_schema(tmp_path)}"

    def node() -> Runtime:
        rt = Runtime(url, mode="nodes", node_ttl=5.0)

        @rt.task
        async def once(job: JobContext, n: int) -> int:
            return n  # ends at once: the window, not a live job, holds the key after

        return rt

    a, b, c = node(), node(), node()
    async with a, b, c:
        for round_ in range(10):
            key = f"k{round_}"
            calls = [
                rt.pool("default").add(_once(rt, unique_key=key, unique_for=600), round_)
                for rt in (a, b, c)
                for _ in range(4)
            ]
            ids = set(await asyncio.gather(*calls))
            assert len(ids) == 1, (key, ids)  # twelve adds, one job
            (job_id,) = ids
            assert (await a.wait(job_id, timeout=5)).status is JobStatus.SUCCESS
            again = await c.pool("default").add(_once(c, unique_key=key), round_)
            assert again == job_id  # finished, and still holding its key


def _once(rt: Runtime, **options: Any) -> TaskCall:
    return TaskCall(rt.tasks["once"], checked_options(options))


async def test_a_lock_is_held_until_a_timed_out_thread_returns(db: str) -> None:
    rt = Runtime(db, abandon_after=0.1)
    rt.pool("q", concurrency=2)
    spans: dict[str, tuple[float, float]] = {}

    @rt.task(pool="q", timeout=0.2)
    def slow(job: JobContext, name: str) -> None:  # a thread: it cannot be interrupted
        begun = time.monotonic()
        time.sleep(0.6 if name == "first" else 0.01)
        spans[name] = (begun, time.monotonic())

    async with rt:
        pool = rt.pool("q")
        first = await pool.add(slow.options(lock="k"), "first")
        second = await pool.add(slow.options(lock="k"), "second")
        assert (await rt.wait(first, timeout=5)).status is JobStatus.FAILURE  # timed out
        assert (await rt.wait(second, timeout=5)).status is JobStatus.SUCCESS
    # The second started only once the first one's thread had returned.
    assert spans["second"][0] >= spans["first"][1]


async def test_a_lock_is_its_attempts_a_retry_waits_while_the_cut_attempt_runs_on(
    db: str,
) -> None:
    # gates note 4. Before, the lock was the job's: the retry started while the timed
    # out attempt's thread still ran under the lock, and when that thread returned it
    # freed the lock the retry held, so another job of the key ran beside the retry.
    rt = Runtime(db)
    rt.pool("p", concurrency=4)
    running: set[str] = set()
    overlaps: list[tuple[str, list[str]]] = []
    guard = threading.Lock()

    def enter(name: str) -> None:
        with guard:
            if running:
                overlaps.append((name, sorted(running)))
            running.add(name)

    def leave(name: str) -> None:
        with guard:
            running.discard(name)

    @rt.task(pool="p", timeout=0.2, attempts=2, retry="0.01s")
    def first(job: JobContext) -> None:
        name = f"first#{job.attempt}"
        enter(name)
        try:
            time.sleep(0.6 if job.attempt == 1 else 0.4)  # the first ignores its timeout
        finally:
            leave(name)

    @rt.task(pool="p")
    def second(job: JobContext) -> None:
        enter("second")
        time.sleep(0.1)
        leave("second")

    async with rt:
        a = await rt.pool("p").add(first.options(lock="k"))
        await asyncio.sleep(0.3)  # the first attempt timed out and runs on
        b = await rt.pool("p").add(second.options(lock="k"))
        await rt.wait(a, timeout=10)
        assert (await rt.wait(b, timeout=10)).status is JobStatus.SUCCESS
    assert overlaps == []


async def test_a_job_added_here_ends_at_its_deadline_not_at_the_next_sweep(db: str) -> None:
    """The sweeper slept its whole interval (1 s) from before the add: a job added
    with a deadline inside that sleep ended at the next tick, up to a second (and
    the sweep's time) late. The add wakes it, and after it ends the first job it
    looks next at the second's deadline (the first's end, still queued, read
    WAITING and passed, had sent it to sleep a whole interval): each job ends at its
    own deadline. Late by well under the interval even in asyncio's debug mode."""
    await check_ends_at_deadlines(db, (0.2, 0.4), late_by=0.5)


async def check_ends_at_deadlines(
    db: str, offsets: tuple[float, ...], *, late_by: float, end_delay: float = 0.0
) -> None:
    """Jobs of a paused pool, with deadlines ``offsets`` seconds away, each end at its
    own deadline, less than ``late_by`` late; ``end_delay``: each end made slower."""
    rt = Runtime(db)
    rt.pool("p", concurrency=1).pause()  # nothing takes the jobs: the sweeper ends them

    @rt.task(pool="p")
    async def late() -> None:
        return None

    async with rt:
        end = rt.deadlines.end

        async def slow_end(job_id: int) -> None:
            await asyncio.sleep(end_delay)
            await end(job_id)

        if end_delay:
            rt.deadlines.end = slow_end
        await asyncio.sleep(0.1)  # the sweeper's first look is done: it sleeps now
        now = time.time()
        deadlines = {await rt.add(late.options(deadline=now + d)): now + d for d in offsets}
        for job_id, deadline in deadlines.items():
            info = await rt.wait(job_id, timeout=5)
            assert (info.status, info.error) == (JobStatus.FAILURE, "deadline passed")
            assert info.finished_at is not None
            assert 0 <= info.finished_at - deadline < late_by, info.finished_at - deadline


async def test_a_sweep_of_more_passed_jobs_than_it_can_end_returns(db: str) -> None:
    """More than a read's worth (500) of passed jobs of a task this process does not
    have: it cannot end them (a process that has the task does), and its sweep read
    the same 500 again and again, for ever, where it should look again later."""
    client = Runtime(db, workers=False)

    @client.task
    async def elsewhere(job: JobContext) -> None:
        return None

    async with client:
        past = time.time() - 1
        await client.pool("default").add_many(elsewhere.options(deadline=past), [()] * 501)
    rt = Runtime(db)  # without the task
    async with rt:
        await asyncio.wait_for(rt.deadlines.sweep(), 10)
        assert await rt.count(status=JobStatus.WAITING) == 501


async def test_a_deadline_that_passes_while_the_sweep_ends_jobs_is_not_missed(db: str) -> None:
    """The sweeper looked next at the earliest deadline after *now*: one that passed
    while its sweep ended the jobs before it (each end slowed here, as a node's
    locked compare-and-set is) was neither swept nor upcoming, and its job ended a
    whole interval (1 s) late. The next look is after the sweep's last read."""
    await check_ends_at_deadlines(db, (0.3, 0.32), late_by=0.6, end_delay=0.1)
