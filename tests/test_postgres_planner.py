"""taskrt keeps PostgreSQL's statistics of ``jobs`` current (``taskrt.store.postgres.planner``).

A queue table changes faster than the planner's statistics: jobs added in bulk
are, until the next ``ANALYZE``, a table it believes empty, and the dashboard's
page of the newest waiting jobs of a pool is then planned as a sort of every
one of them. The first tests check the decision (pure); the others run it on a
real server: the page's plan once the store has analyzed, one process at a
time, and not again before its gap.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from pathlib import Path
from typing import Any

import asyncpg
import pg_server
import pytest

from taskrt import JobContext, JobStatus, Runtime
from taskrt.store.postgres import PgStore, planner
from taskrt.store.postgres.planner import Column, Picture, mismatch, picture_of

W, R, S = JobStatus.WAITING, JobStatus.RUNNING, JobStatus.SUCCESS


def test_a_table_never_analyzed_is_analyzed_once_it_holds_enough_jobs() -> None:
    none = Picture(None, {})
    assert mismatch(none, {"p": {W: planner.MIN_ROWS - 1}}) is None
    why = mismatch(none, {"p": {W: 600}, "q": {S: 600}})
    assert why == "no statistics for 1,200 jobs"


def test_a_value_the_planner_does_not_know_of_is_a_mismatch() -> None:
    # Analyzed when every job had succeeded in pool p: WAITING is not among its values.
    seen = Picture(10_000.0, {"status": Column({"SUCCESS": 1.0}, 1), "pool": Column({"p": 1.0}, 1)})
    assert mismatch(seen, {"p": {S: 10_000, R: 10}}) is None
    assert mismatch(seen, {"p": {S: 10_000, W: 999}}) is None  # too few to matter
    assert mismatch(seen, {"p": {S: 10_000, W: 5_000}}) == (
        "status 'WAITING': 5,000 jobs, the planner expects 0"
    )
    # A new pool, however the statuses stand.
    assert mismatch(seen, {"p": {S: 5_000}, "bulk": {S: 5_000}}) == (
        "pool 'bulk': 5,000 jobs, the planner expects 0"
    )


def test_an_estimate_off_by_less_than_the_factor_is_left_alone() -> None:
    seen = Picture(
        100_000.0,
        {"status": Column({"SUCCESS": 0.6, "WAITING": 0.4}, 2), "pool": Column({"p": 1.0}, 1)},
    )
    assert mismatch(seen, {"p": {S: 60_000, W: 79_000}}) is None  # 40,000 expected: < 2x
    assert mismatch(seen, {"p": {S: 60_000, W: 81_000}}) is not None
    assert mismatch(seen, {"p": {S: 60_000, W: 19_000}}) is not None  # fewer than half
    # Values the planner expects and the table no longer holds count too.
    assert mismatch(seen, {"p": {W: 40_000}}) == (
        "status 'SUCCESS': 0 jobs, the planner expects 60,000"
    )


def test_values_outside_the_most_common_share_what_those_leave() -> None:
    # 100 pools, 10 of them common: the others share the rest of the rows evenly.
    common = {f"p{i}": 0.05 for i in range(10)}
    column = Column(common, 100)
    assert column.rows("p0", 1_000_000) == pytest.approx(50_000)
    assert column.rows("p50", 1_000_000) == pytest.approx(500_000 / 90)
    # n_distinct negative: a fraction of the rows.
    assert Column({}, -0.5).rows("x", 1_000) == pytest.approx(1_000 / 500)
    assert Column({"a": 1.0}, 1).rows("b", 1_000) == 0.0


def test_the_picture_scales_the_rows_to_the_pages_the_table_has_now() -> None:
    rows = [
        (1_000.0, 10.0, 30.0, "status", ["WAITING"], [1.0], 1.0),
        (1_000.0, 10.0, 30.0, "pool", ["p"], [1.0], 1.0),
    ]
    picture = picture_of(rows)
    assert picture.rows == 3_000.0
    assert picture.columns["status"].common == {"WAITING": 1.0}
    # Never analyzed (-1), or analyzed empty and holding pages since: no picture.
    assert picture_of([(-1.0, 0.0, 0.0, None, None, None, None)]).rows is None
    assert picture_of([(0.0, 0.0, 12.0, None, None, None, None)]).rows is None
    assert picture_of([(0.0, 0.0, 0.0, None, None, None, None)]).rows == 0.0


# -- on a real server ---------------------------------------------------------------------------


@pytest.fixture
def url(tmp_path: Path) -> str:
    base = pg_server.require()
    return f"{base}?schema={pg_server.fresh_schema(tmp_path)}"


def client(url: str) -> Runtime:
    rt = Runtime(url, workers=False)
    rt.pool("bulk")
    rt.pool("other")

    @rt.task(name="noop", pool="bulk")
    async def noop(job: JobContext) -> None:
        return None

    @rt.task(name="other", pool="other")
    async def other(job: JobContext) -> None:
        return None

    return rt


async def page_plan(url: str) -> dict[str, Any]:
    """The plan of the newest WAITING jobs of pool ``bulk`` (``rt.jobs``' query)."""
    schema = url.rsplit("schema=", 1)[1]
    conn = await asyncpg.connect(url.split("?")[0], server_settings={"search_path": schema})
    try:
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) SELECT id FROM jobs WHERE status IN ($1) AND pool = $2 "
            "ORDER BY id DESC LIMIT $3",
            "WAITING",
            "bulk",
            50,
        )
    finally:
        await conn.close()
    root: dict[str, Any] = json.loads(plan)[0]["Plan"]
    return root


def node_types(plan: dict[str, Any]) -> list[str]:
    return [plan["Node Type"]] + [t for child in plan.get("Plans", []) for t in node_types(child)]


async def test_jobs_added_in_bulk_are_analyzed_and_a_page_of_them_reads_no_more(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(planner, "CHECK_INTERVAL", 0.05)
    async with client(url) as rt:
        store = rt.store
        assert isinstance(store, PgStore)
        await rt.pool("bulk").add_many("noop", [()] * 20_000)
        async with asyncio.timeout(10):
            while store.analyzer.analyzed == 0:
                await asyncio.sleep(0.02)
        page = await rt.jobs(status="WAITING", pool="bulk", limit=50)
        assert len(page.jobs) == 50
        # Analyzed once: the picture is right now, and stays so.
        assert await store.analyzer.check() is None
    plan = await page_plan(url)
    assert "Sort" not in node_types(plan), plan  # read newest first, stop at 50
    assert plan["Plan Rows"] == 50


async def test_a_page_is_sorted_whole_where_nothing_analyzed_the_table(url: str) -> None:
    """What the store spares: the same page on a table never analyzed reads and
    sorts every waiting job of the pool (checked so the test above can fail)."""
    rt = client(url)
    async with rt:
        store = rt.store
        assert isinstance(store, PgStore)
        await store.analyzer.stop()  # nothing analyzes this schema
        await rt.pool("bulk").add_many("noop", [()] * 20_000)
    assert "Sort" in node_types(await page_plan(url))


async def test_one_process_of_a_schema_analyzes_at_a_time_and_each_waits_its_gap(
    url: str,
) -> None:
    async with client(url) as rt:
        store = rt.store
        assert isinstance(store, PgStore)
        await store.analyzer.stop()  # only the checks of this test run
        await rt.pool("bulk").add_many("noop", [()] * 5_000)
        schema = url.rsplit("schema=", 1)[1]
        other = await asyncpg.connect(url.split("?")[0])
        try:
            key = f"taskrt.{schema}.analyze"
            await other.execute("SELECT pg_advisory_lock(hashtext($1))", key)
            assert await store.analyzer.check() is None  # another process is at it
            assert store.analyzer.analyzed == 0
            await other.execute("SELECT pg_advisory_unlock(hashtext($1))", key)
            assert await store.analyzer.check() == "no statistics for 5,000 jobs"
            reltuples = await other.fetchval(
                "SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)", f"{schema}.jobs"
            )
            assert reltuples == 5_000
            # A new pool the planner does not know of: wrong again, but within the gap.
            await rt.pool("other").add_many("other", [()] * 5_000)
            assert await store.analyzer.check() is None
            assert store.analyzer.analyzed == 1
        finally:
            await other.close()


async def test_a_role_that_may_not_analyze_leaves_it_to_autovacuum_and_says_so(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL skips ``ANALYZE`` of a table the role does not own (a warning,
    no error): the analyzer asks once, says why in the log, and does not try."""
    async with client(url) as rt:
        await rt.pool("bulk").add_many("noop", [()] * 2_000)
    schema = url.rsplit("schema=", 1)[1]
    role = f"{schema}_reader"
    admin = await asyncpg.connect(url.split("?")[0])
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        await admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
        parts = urllib.parse.urlsplit(url.split("?")[0])
        server = parts._replace(netloc=f"{role}@{parts.netloc.rsplit('@', 1)[-1]}").geturl()
        pool = await asyncpg.create_pool(server, min_size=1, max_size=2)
        try:

            async def counts() -> dict[str, dict[JobStatus, int]]:
                return {"bulk": {W: 2_000}}

            analyzer = planner.Analyzer(schema, pool.acquire, counts)
            with caplog.at_level("WARNING", logger="taskrt.store"):
                assert await analyzer.check() is None
                assert await analyzer.check() is None
            assert analyzer.analyzed == 0
            said = [r.getMessage() for r in caplog.records if "may not analyze" in r.getMessage()]
            assert len(said) == 1, said  # once, not at every look
            assert "no statistics for 2,000 jobs" in said[0]
        finally:
            await pool.close()
        # As the role that made the table, the same look analyzes it.
        pool = await asyncpg.create_pool(url.split("?")[0], min_size=1, max_size=2)
        try:
            owner = planner.Analyzer(schema, pool.acquire, counts)
            assert await owner.check() == "no statistics for 2,000 jobs"
        finally:
            await pool.close()
    finally:
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()
