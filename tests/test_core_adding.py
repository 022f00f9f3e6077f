"""Adding jobs: ids, durability of ``add``, unique keys, capacity, priorities, bad input."""

from __future__ import annotations

import asyncio
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
from core_support import (
    Gate,
    committed,
    committed_job,
    committed_jobs,
    db_file,
    make_rt,
    sqlite_only_rows,
    until,
)

import taskrt
from taskrt import (
    DuplicateJobId,
    InvalidOption,
    JobContext,
    JobNotFound,
    JobStatus,
    PoolNotFound,
    QueueFull,
    Runtime,
    RuntimeNotStarted,
    SerializationError,
    TaskNotFound,
    TaskrtError,
    ValidationError,
)


async def test_constructor_does_no_io(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    rt.pool("email", concurrency=3, capacity=10)

    @rt.task(pool="email")
    async def noop(job: JobContext) -> None:
        return None

    assert not os.path.exists(db_file(tmp_path))
    with pytest.raises(RuntimeNotStarted):
        await rt.pool("email").add(noop)
    assert not os.path.exists(db_file(tmp_path))


async def test_add_is_durable_when_it_returns_and_ids_increase(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    email = rt.pool("email", concurrency=1)
    email.pause()

    @rt.task(pool="email", attempts=3)
    async def send(job: JobContext, user_id: int, *, lang: str = "en") -> dict[str, bool]:
        return {"sent": True}

    async with rt:
        ids = []
        for user in (7, 8, 9):
            job_id = await email.add(send, user, lang="de")
            # Committed before acknowledged: another connection sees the row now.
            async with committed(tmp_path) as store:
                stored = await store.get_job(job_id)
            assert stored is not None and stored.status is JobStatus.WAITING
            ids.append(job_id)
        assert ids == [1, 2, 3]
        info = await rt.get(2)
        assert (info.id, info.task, info.pool, info.status) == (
            2,
            "send",
            "email",
            JobStatus.WAITING,
        )
        assert (info.args, info.kwargs) == ((8,), {"lang": "de"})
        assert (info.attempts, info.max_attempts, info.priority) == (0, 3, 0)
        assert info.result is None and info.error is None
        assert info.started_at is None and info.finished_at is None
        assert info.run_at == pytest.approx(info.created_at)


async def test_concurrent_adds_get_distinct_strictly_increasing_ids(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)

    @rt.task
    async def noop(job: JobContext, n: int) -> int:
        return n

    async with rt:
        ids = await asyncio.gather(*(rt.pool("default").add(noop, n) for n in range(50)))
        assert sorted(ids) == list(range(1, 51))
        # Each id belongs to the call that got it.
        for n, job_id in enumerate(ids):
            assert (await rt.wait(job_id, timeout=5)).result == n


async def test_add_many_commits_all_and_passes_args_and_kwargs(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    seen: list[tuple[int, int]] = []

    @rt.task
    async def pair(job: JobContext, a: int, b: int = 0) -> int:
        seen.append((a, b))
        return a + b

    async with rt:
        first = await rt.pool("default").add(pair, 100)
        ids = await rt.pool("default").add_many(pair, [(1, 2), (3,), {"a": 5, "b": 6}])
        assert ids == [first + 1, first + 2, first + 3]
        results = [(await rt.wait(i, timeout=5)).result for i in ids]
        assert results == [3, 3, 11]
        assert sorted(seen) == [(1, 2), (3, 0), (5, 6), (100, 0)]


async def test_ten_jobs_two_workers_exactly_two_run(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    pool = rt.pool("work", concurrency=2)
    gate = Gate()

    @rt.task(pool="work")
    async def held(job: JobContext) -> str:
        await gate()
        return "done"

    async with rt:
        ids = await pool.add_many(held, [()] * 10)
        await gate.wait_entered(2)
        stats = pool.statistics()
        assert (stats.concurrency, stats.running, stats.waiting) == (2, 2, 8)
        assert gate.inside == 2
        statuses = [(await rt.get(i)).status for i in ids]
        assert statuses.count(JobStatus.RUNNING) == 2
        assert statuses.count(JobStatus.WAITING) == 8
        gate.open()
        finals = [await rt.wait(i, timeout=5) for i in ids]
        assert [f.status for f in finals] == [JobStatus.SUCCESS] * 10
        assert gate.max_inside == 2
        stats = pool.statistics()
        assert (stats.running, stats.waiting, stats.processed) == (0, 0, 10)


async def test_unique_key_returns_the_live_job(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    gate = Gate()

    @rt.task
    async def report(job: JobContext, day: str) -> str:
        await gate()
        return day

    async with rt:
        pool = rt.pool("default")
        first = await pool.add(report.options(unique_key="r-1"), "mon")
        again = await pool.add(report.options(unique_key="r-1"), "tue")
        other = await pool.add(report.options(unique_key="r-2"), "wed")
        assert again == first
        assert other == first + 1
        assert len(await committed_jobs(tmp_path)) == 2
        gate.open()
        assert (await rt.wait(first, timeout=5)).result == "mon"
        # Once the job is terminal the key is free again.
        later = await pool.add(report.options(unique_key="r-1"), "thu")
        assert later == other + 1
        assert (await rt.wait(later, timeout=5)).result == "thu"


async def test_a_burst_of_adds_of_one_unique_key_into_a_bounded_pool_all_get_the_holder(
    target: tuple[str, dict[str, Any]],
) -> None:
    """Twenty concurrent adds of one key (a client retrying one request) into a pool
    of capacity 5 that holds nothing else. Before, the adds past the fifth found the
    pool's pending adds (duplicates of the first, not yet committed) filling it,
    looked the key's holder up in the store before its commit, and were refused
    with ``QueueFull``, over HTTP a 503."""
    db, options = target
    rt = Runtime(db, **options)
    rt.pool("p", concurrency=1, capacity=5)
    gate = Gate()

    @rt.task(pool="p")
    async def order(job: JobContext, i: int) -> int:
        await gate()
        return i

    async with rt, asyncio.timeout(10):
        ids = await asyncio.gather(
            *(rt.add(order.options(unique_key="order-42"), i) for i in range(20))
        )
        assert set(ids) == {ids[0]}, ids
        assert (await rt.count()) == 1
        # The pool is still bounded: 5 other jobs fit beside the holder... then no more.
        others = [await rt.add(order, 100 + i) for i in range(5)]
        with pytest.raises(QueueFull):
            await rt.add(order, 200)
        gate.open()
        for job_id in (ids[0], *others):
            assert (await rt.wait(job_id, timeout=5)).status is JobStatus.SUCCESS


async def test_unique_key_cannot_apply_to_add_many(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)

    @rt.task
    async def noop(job: JobContext) -> None:
        return None

    async with rt:
        with pytest.raises(InvalidOption) as err:
            await rt.pool("default").add_many(noop.options(unique_key="k"), [(), ()])
        assert err.value.field == "unique_key"
        assert await committed_jobs(tmp_path) == []


async def test_capacity_full_raises_queue_full_and_stores_nothing(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    pool = rt.pool("small", concurrency=1, capacity=3)
    gate = Gate()

    @rt.task(pool="small")
    async def held(job: JobContext) -> None:
        await gate()

    async with rt:
        running = await pool.add(held)
        await gate.wait_entered(1)
        waiting = [await pool.add(held) for _ in range(3)]
        assert waiting == [running + 1, running + 2, running + 3]
        with pytest.raises(QueueFull) as err:
            await pool.add(held)
        assert (err.value.pool, err.value.capacity) == ("small", 3)
        with pytest.raises(QueueFull):
            await pool.add_many(held, [()])
        assert len(await committed_jobs(tmp_path)) == 4
        assert pool.statistics().waiting == 3
        gate.open()
        await rt.wait(running, timeout=5)
        await until(lambda: pool.statistics().waiting < 3)
        # The failed adds used no id.
        assert await pool.add(held) == running + 4


async def test_priority_higher_first_then_oldest(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    pool = rt.pool("one", concurrency=1)
    gate = Gate()
    order: list[str] = []

    @rt.task(pool="one")
    async def blocker(job: JobContext) -> None:
        await gate()

    @rt.task(pool="one", priority=5)
    async def work(job: JobContext, name: str) -> None:
        order.append(name)

    async with rt:
        first = await pool.add(blocker)
        await gate.wait_entered(1)
        await pool.add(work.options(priority=1), "low")
        await pool.add(work, "default-5-a")
        await pool.add(work.options(priority=9), "high-a")
        await pool.add(work.options(priority=-3), "lowest")
        await pool.add(work.options(priority=9), "high-b")
        last = await pool.add(work, "default-5-b")
        gate.open()
        await rt.wait(first, timeout=5)
        await rt.wait(last, timeout=5)
        await until(lambda: len(order) == 6)
        assert order == ["high-a", "high-b", "default-5-a", "default-5-b", "low", "lowest"]
        assert (await rt.get(last)).priority == 5


async def test_get_unknown_job_raises_job_not_found(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    async with rt:
        with pytest.raises(JobNotFound) as err:
            await rt.get(41)
        assert err.value.job_id == 41
        assert isinstance(err.value, TaskrtError)


# -- bad input: a clear TaskrtError, nothing stored ------------------------------------------


async def test_bad_input_raises_and_stores_nothing(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)

    @rt.task
    async def echo(job: JobContext, value: object) -> object:
        return value

    async with rt:
        pool = rt.pool("default")
        with pytest.raises(TaskNotFound) as nf:
            await pool.add("no_such_task", 1)
        assert nf.value.name == "no_such_task"
        with pytest.raises(SerializationError):
            await pool.add(echo, {1, 2})
        with pytest.raises(SerializationError):
            await pool.add(echo, float("nan"))
        with pytest.raises(SerializationError):
            await pool.add(echo.options(metadata={"when": object()}), 1)
        with pytest.raises(ValidationError):
            await pool.add(echo, 1, 2)
        with pytest.raises(SerializationError):
            await pool.add_many(echo, [(1,), (object(),)])
        assert await committed_jobs(tmp_path) == []
        assert await pool.add(echo, "fine") == 1
        assert (await rt.wait(1, timeout=5)).result == "fine"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"delay": -1}, "delay"),
        ({"delay": "soon"}, "delay"),
        ({"priority": "high"}, "priority"),
        ({"priority": True}, "priority"),
        ({"attempts": 0}, "attempts"),
        ({"attempts": "3"}, "attempts"),
        ({"timeout": 0}, "timeout"),
        ({"retry": "1x"}, "retry"),
        ({"retry": {"base": 1, "factor": 0.5}}, "retry.factor"),
        ({"unique_key": ""}, "unique_key"),
        ({"metadata": [1, 2]}, "metadata"),
        ({"metadata": {"k": 2**63}}, "metadata.k"),  # no filter could find it
        ({"run_at": "tomorrow"}, "run_at"),
    ],
)
async def test_bad_options_raise_invalid_option_naming_the_field(
    tmp_path: Path, options: dict[str, object], field: str
) -> None:
    rt = make_rt(tmp_path)

    @rt.task
    async def noop(job: JobContext) -> None:
        return None

    with pytest.raises(InvalidOption) as err:
        noop.options(**options)
    assert err.value.field == field
    assert field in str(err.value)


async def test_bad_pool_limits_raise_invalid_option(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    with pytest.raises(InvalidOption) as err:
        rt.pool("p", concurrency=0)
    assert err.value.field == "concurrency"
    with pytest.raises(InvalidOption) as err:
        rt.pool("q", capacity=-1)
    assert err.value.field == "capacity"


@pytest.mark.parametrize("concurrency", [10**30, 2**63])
async def test_pool_limits_beyond_64_bits_are_refused(tmp_path: Path, concurrency: int) -> None:
    rt = make_rt(tmp_path)
    with pytest.raises(InvalidOption) as err:
        rt.pool("p", concurrency=concurrency)
    assert err.value.field == "concurrency"
    with pytest.raises(InvalidOption) as err:
        rt.pool("q", capacity=concurrency)
    assert err.value.field == "capacity"
    rt.pool("r", concurrency=2**63 - 1, capacity=2**63 - 1)  # the largest is fine


async def test_a_refused_pool_change_changes_nothing(tmp_path: Path) -> None:
    # Refused calls were half applied: the concurrency before the bad capacity took.
    rt = make_rt(tmp_path)
    rt.pool("x", concurrency=2)
    async with rt:
        with pytest.raises(InvalidOption, match="capacity"):
            rt.pool("x", concurrency=7, capacity=-1)
        with pytest.raises(InvalidOption, match="concurrency"):
            rt.pool("x", rate="5/s", concurrency=0)
        with pytest.raises(InvalidOption, match="capacity"):
            await rt.change_pool("x", concurrency=9, capacity=0)
        for flag in ("paused", "create", "exists_ok"):
            with pytest.raises(InvalidOption) as caught:
                await rt.change_pool("x", **{flag: 1})
            assert caught.value.field == flag
        pool = rt.pools["x"]
        assert (pool.concurrency, pool.capacity, pool.rate, pool.paused) == (2, None, None, False)
        for name in ("p\ud800", "a\x00"):
            with pytest.raises(InvalidOption) as caught:
                rt.pool(name)
            assert caught.value.field == "pool"


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("grace", "5"),  # stop() failed on it, and its threads kept the process alive
        ("grace", None),
        ("grace", -1),
        ("grace", math.nan),
        ("abandon_after", math.inf),
        ("poll_interval", "5"),
        ("poll_interval", 0),
        ("progress_interval", -0.1),
        ("stall_threshold", None),
        ("stall_threshold", 10**30),
        ("busy_timeout", math.nan),
        ("busy_timeout", None),
        ("replay", -1),
        ("replay", "5"),
        ("replay", 10**30),
        ("subscriber_buffer", 0),
        ("default_concurrency", -1),
        ("max_recoveries", 10**30),
        ("workers", 1),
        ("tracing", "yes"),
        ("clock", 5),
        ("tasks", 5),
        ("root", 5),
    ],
)
def test_a_bad_runtime_setting_is_refused_when_the_runtime_is_made(
    tmp_path: Path, setting: str, value: Any
) -> None:
    with pytest.raises(InvalidOption) as err:
        taskrt.Runtime(str(db_file(tmp_path)), **{setting: value})
    assert err.value.field == setting
    assert "expected" in str(err.value)


@pytest.mark.parametrize(
    "hook", ["next_id", "on_add", "on_success", "on_error", "on_progress", "on_failed"]
)
def test_a_hook_that_cannot_be_called_is_refused_when_the_task_is_declared(
    tmp_path: Path, hook: str
) -> None:
    rt = make_rt(tmp_path)
    with pytest.raises(InvalidOption) as err:

        @rt.task(**{hook: 5})
        async def noop(job: JobContext) -> None:
            return None

    assert err.value.field == hook
    assert "noop" not in rt.tasks


async def test_a_parameters_schema_that_loops_is_refused_or_fails_its_adds_clearly(
    tmp_path: Path,
) -> None:
    rt = make_rt(tmp_path)
    # Looping on every value: refused as the task is declared.
    with pytest.raises(InvalidOption) as err:
        rt.task(name="everywhere", parameters={"type": "object", "$ref": "#"})(_kw)
    assert err.value.field == "parameters" and "refers to itself" in str(err.value)
    # Looping only through a property: the adds that give it fail, clearly.
    loop = {"type": "object", "properties": {"x": {"$ref": "#/properties/x"}}}
    rt.task(name="through_x", parameters=loop)(_kw)
    async with rt:
        with pytest.raises(ValidationError, match="refers to itself"):
            await rt.add("through_x", x=1)
        job_id = await rt.add("through_x")  # without x, nothing loops
        assert (await rt.wait(job_id, timeout=10)).status is JobStatus.SUCCESS


async def test_what_is_no_job_id_is_refused_naming_it(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)

    @rt.task
    async def noop(job: JobContext) -> None:
        return None

    async with rt:
        job_id = await rt.add("noop")
        await rt.wait(job_id, timeout=10)
        for bad in (True, 1.0, "1", None):
            for call in (rt.get, rt.cancel, rt.retry, rt.attempts, rt.run_now, rt.wait):
                with pytest.raises(InvalidOption) as err:
                    await call(bad)  # type: ignore[operator]
                assert err.value.field == "job_id", call
            with pytest.raises(InvalidOption, match="workflow_id"):
                await rt.workflow(bad)  # type: ignore[arg-type]
        with pytest.raises(JobNotFound):
            await rt.get(2**70)  # an integer no job has: not found, as any unknown id
        for bad in ("x", True):  # checked in the caller's thread too, not in the loop's
            with pytest.raises(InvalidOption, match="job_id"):
                await asyncio.to_thread(rt.progress, bad, 1)  # type: ignore[arg-type]
            with pytest.raises(InvalidOption, match="job_id"):
                await rt.progress(bad, 1)  # type: ignore[arg-type]
        for timeout in ("1", math.nan, -1):
            with pytest.raises(InvalidOption, match="timeout"):
                await rt.wait(job_id, timeout=timeout)  # type: ignore[arg-type]
        for moment in ("yesterday", math.nan, math.inf, 10**400):
            with pytest.raises(InvalidOption, match="since"):
                await rt.stats(since=moment)  # type: ignore[arg-type]
        assert (await rt.stats(since=0)).counts["SUCCESS"] == 1


async def _kw(job: JobContext, **kwargs: Any) -> None:
    return None


async def test_result_that_is_not_json_fails_the_job_clearly(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)

    @rt.task(attempts=1)
    async def bad(job: JobContext) -> object:
        return {"when": object()}

    @rt.task
    async def good(job: JobContext) -> int:
        return 7

    async with rt:
        job_id = await rt.pool("default").add(bad)
        info = await rt.wait(job_id, timeout=5)
        assert info.status is JobStatus.FAILURE
        assert info.error is not None and "not JSON-serialisable" in info.error
        assert info.result is None
        # The runtime goes on.
        assert (await rt.wait(await rt.pool("default").add(good), timeout=5)).result == 7
    stored = await committed_job(tmp_path, job_id)
    assert stored is not None and (stored.status, stored.result) == (JobStatus.FAILURE, None)


# -- next_id hook ----------------------------------------------------------------------------


async def test_next_id_hook_supplies_ids(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    counter = iter([1000, 1005, 1010])

    @rt.task(next_id=lambda: next(counter))
    async def yao(job_id: int, n: int) -> int:
        return n

    async with rt:
        pool = rt.pool("default")
        assert await pool.add(yao, 1) == 1000
        assert await pool.add_many(yao, [(2,), (3,)]) == [1005, 1010]
        assert [(await rt.wait(i, timeout=5)).result for i in (1000, 1005, 1010)] == [1, 2, 3]


async def test_next_id_duplicate_or_lower_is_refused_without_overwrite(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    ids = iter([10, 10, 5])

    @rt.task(next_id=lambda: next(ids))
    async def yao(job_id: int, n: int) -> int:
        return n

    @rt.task
    async def plain(job: JobContext) -> str:
        return "auto"

    async with rt:
        pool = rt.pool("default")
        assert await pool.add(yao, 1) == 10
        await rt.wait(10, timeout=5)
        with pytest.raises(DuplicateJobId) as err:
            await pool.add(yao, 2)
        assert (err.value.job_id, err.value.last_id) == (10, 10)
        with pytest.raises(DuplicateJobId):
            await pool.add(yao, 3)
        info = await rt.get(10)
        assert (info.args, info.result, info.status) == ((1,), 1, JobStatus.SUCCESS)
        assert [(j.id, j.args) for j in await committed_jobs(tmp_path)] == [(10, (1,))]
        # Ids the store assigns continue above the hook's.
        assert await pool.add(plain) == 11


async def test_add_many_with_a_duplicate_id_stores_nothing(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    ids = iter([20, 20])

    @rt.task(next_id=lambda: next(ids))
    async def yao(job_id: int, n: int) -> int:
        return n

    async with rt:
        with pytest.raises(DuplicateJobId):
            await rt.pool("default").add_many(yao, [(1,), (2,)])
        assert await committed_jobs(tmp_path) == []


@pytest.mark.parametrize("returned", ["seven", 0, 2**63, 2**64])
async def test_next_id_hook_returning_garbage_is_invalid_option(
    tmp_path: Path, returned: object
) -> None:
    # 2**64 went into the write batch, which failed (the int is past SQLite's).
    rt = make_rt(tmp_path)

    @rt.task(next_id=lambda: returned)
    async def yao(job_id: int) -> None:
        return None

    async with rt:
        with pytest.raises(InvalidOption) as err:
            await rt.pool("default").add(yao)
        assert err.value.field == "next_id"
        assert await committed_jobs(tmp_path) == []


# -- the public surface ------------------------------------------------------------------------


def test_all_is_honest() -> None:
    module = taskrt
    namespace: dict[str, object] = {}
    exec("from taskrt import *", namespace)
    for name in module.__all__:
        assert name in namespace, name
    contract = {"Runtime", "JobContext", "JobStatus", "Fatal", "Retry", "QueueFull", "JobNotFound"}
    assert contract <= set(module.__all__)
    assert len(set(module.__all__)) == len(module.__all__)
    assert {s.value for s in taskrt.JobStatus} == {
        "WAITING",
        "RUNNING",
        "SUCCESS",
        "FAILURE",
        "CANCELLED",
    }
    public = {n for n, v in vars(module).items() if not n.startswith("_") and isinstance(v, type)}
    assert public <= set(module.__all__), public - set(module.__all__)
    for name in ("TaskrtError", "JobNotFound", "QueueFull", "TaskNotFound", "InvalidOption"):
        assert issubclass(getattr(module, name), Exception)
    for name in ("JobNotFound", "QueueFull", "TaskNotFound", "InvalidOption", "SerializationError"):
        assert issubclass(getattr(module, name), module.TaskrtError)


async def test_memory_database_works_end_to_end() -> None:
    from taskrt import Runtime

    rt = Runtime(":memory:")

    @rt.task
    async def double(job: JobContext, n: int) -> int:
        await job.progress(1, 1)
        return 2 * n

    async with rt:
        job_id = await rt.pool("default").add(double, 21)
        assert (await rt.wait(job_id, timeout=5)).result == 42
        assert [j.id for j in (await rt.jobs()).jobs] == [job_id]


async def test_handlers_see_the_json_view_of_their_arguments(tmp_path: Path) -> None:
    # What the handler gets on the first run is what it would get after a restart.
    rt = make_rt(tmp_path)
    seen: list[object] = []

    @rt.task
    async def record(job: JobContext, value: object, *, opt: object = None) -> None:
        seen.append((value, opt))

    async with rt:
        job_id = await rt.pool("default").add(record, {"pair": (1, 2), 3: "x"}, opt=(4,))
        await rt.wait(job_id, timeout=5)
        info = await rt.get(job_id)
    assert seen == [({"pair": [1, 2], "3": "x"}, [4])]
    assert (info.args, info.kwargs) == (({"pair": [1, 2], "3": "x"},), {"opt": [4]})


async def test_synchronous_setting_is_validated_and_full_works(tmp_path: Path) -> None:
    from taskrt import Runtime

    with pytest.raises(InvalidOption) as err:
        Runtime(db_file(tmp_path), synchronous="fast")  # type: ignore[arg-type]
    assert err.value.field == "synchronous"
    rt = Runtime(db_file(tmp_path), synchronous="full")

    @rt.task
    async def noop(job: JobContext) -> str:
        return "durable"

    async with rt:
        assert (await rt.wait(await rt.pool("default").add(noop), timeout=5)).result == "durable"
    # SQLite-specific: the journal mode is a PRAGMA.
    assert sqlite_only_rows(db_file(tmp_path), "PRAGMA journal_mode") == [("wal",)]


async def test_enqueue_takes_the_jobs_arguments_apart_from_its_own(tmp_path: Path) -> None:
    """A job keyword named ``tx`` or ``pool`` is the job's; options ride alongside."""
    rt = make_rt(tmp_path)
    rt.pool("other", concurrency=1)

    @rt.task(pool="main")
    async def takes(job: JobContext, tx: str, pool: str, n: int = 0) -> list[Any]:
        return [tx, pool, n, job.pool]

    async with rt:
        job_id = await rt.enqueue(
            takes,
            args=("the tx",),
            kwargs={"pool": "the pool", "n": 2},
            pool="other",
            priority=4,
            metadata={"via": "enqueue"},
        )
        info = await rt.wait(job_id, timeout=5)
        assert info.result == ["the tx", "the pool", 2, "other"]
        assert (info.priority, info.metadata) == (4, {"via": "enqueue"})
        # A call's own options and enqueue's are merged (enqueue's win).
        call = takes.options(priority=1, delay=0)
        merged = await rt.enqueue(call, kwargs={"tx": "a", "pool": "b"}, priority=9)
        assert (await rt.wait(merged, timeout=5)).priority == 9
        async with rt.transaction() as tx:
            in_tx = await rt.enqueue("takes", kwargs={"tx": "t", "pool": "p"}, tx=tx)
        assert (await rt.wait(in_tx, timeout=5)).result == ["t", "p", 0, "main"]
        with pytest.raises(PoolNotFound):
            await rt.enqueue(takes, args=("x", "y"), pool="nowhere")
        with pytest.raises(InvalidOption, match="priority"):
            await rt.enqueue(takes, args=("x", "y"), priority=1.5)
        assert rt.resolve("takes").spec.name == "takes"
        with pytest.raises(TaskNotFound):
            rt.resolve("missing")


async def test_an_unknown_option_is_refused_by_name_as_a_taskrt_error(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)

    @rt.task
    async def send(job: JobContext, to: str) -> None:
        return None

    with pytest.raises(InvalidOption) as call_option:
        send.options(dealy=5)
    assert call_option.value.field == "dealy" and "delay" in str(call_option.value)
    with pytest.raises(InvalidOption) as chained:
        send.options(delay=5).options(priorty=1)
    assert chained.value.field == "priorty"
    with pytest.raises(InvalidOption) as task_option:

        @rt.task(atempts=3)
        async def other(job: JobContext) -> None:
            return None

    assert task_option.value.field == "atempts" and "attempts" in str(task_option.value)
    async with rt:
        with pytest.raises(InvalidOption) as enqueue_option:
            await rt.enqueue(send, kwargs={"to": "a"}, dleay=1)
        assert enqueue_option.value.field == "dleay"
        assert (await rt.jobs()).jobs == []  # nothing was added


async def test_delay_and_run_at_together_are_refused(tmp_path: Path) -> None:
    """Two answers to when a job may run: refused, naming ``delay``, wherever the
    options are given at once. Before, ``delay`` was dropped without a word. A later
    ``.options`` call replaces the earlier one's, as any later option does."""
    rt = make_rt(tmp_path)
    rt.pool("default").pause()

    @rt.task
    async def noop(job: JobContext) -> None:
        return None

    both = "give delay or run_at, not both"
    with pytest.raises(InvalidOption, match=both) as err:
        noop.options(delay=3600, run_at=1.0)
    assert err.value.field == "delay"
    async with rt:
        now = time.time()
        with pytest.raises(InvalidOption, match=both):
            await rt.enqueue(noop, delay=3600, run_at=now + 1)
        with pytest.raises(InvalidOption, match=both):
            await rt.add(noop.options(delay=1).options(delay=3600, run_at=now + 1))
        assert (await rt.jobs()).jobs == []  # nothing was added
        later = await rt.add(noop.options(delay=3600).options(run_at=now + 60))
        assert (await rt.get(later)).run_at == pytest.approx(now + 60)
        sooner = await rt.enqueue(noop.options(run_at=now + 3600), delay=60)
        assert (await rt.get(sooner)).run_at == pytest.approx(now + 60, abs=5)


async def test_unlimited_attempts_survive_more_options(tmp_path: Path) -> None:
    """``attempts=-1`` on a call stays unlimited when more options are added to it."""
    rt = make_rt(tmp_path)
    pool = rt.pool("main", concurrency=1)
    pool.pause()

    @rt.task(pool="main", attempts=3)
    async def sync_account(job: JobContext) -> None:
        return None

    async with rt:
        unlimited = sync_account.options(attempts=-1)
        chained = await pool.add(unlimited.options(priority=5))
        enqueued = await rt.enqueue(unlimited, priority=2)
        overridden = await pool.add(unlimited.options(attempts=2))
        plain = await pool.add(sync_account.options(delay=0).options(priority=1))
        assert [(await rt.get(job_id)).max_attempts for job_id in (chained, enqueued)] == [
            None,
            None,
        ]
        assert (await rt.get(chained)).priority == 5
        assert (await rt.get(enqueued)).priority == 2
        assert (await rt.get(overridden)).max_attempts == 2  # a later option still wins
        assert (await rt.get(plain)).max_attempts == 3  # no attempts given: the task's


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"args": "cat.jpg"}, "args"),
        ({"args": {"a": 1}}, "args"),
        ({"args": None}, "args"),
        ({"args": 5}, "args"),
        ({"kwargs": "ab"}, "kwargs"),
        ({"kwargs": [("k", 1)]}, "kwargs"),
    ],
)
async def test_enqueue_refuses_args_and_kwargs_of_the_wrong_kind(
    tmp_path: Path, given: dict[str, Any], field: str
) -> None:
    """``args="cat.jpg"`` ran the job with seven one-letter arguments, a dict with its
    keys; ``None`` or 5 raised a bare ``TypeError``."""
    rt = make_rt(tmp_path)

    @rt.task
    async def resize(*names: str) -> int:
        return len(names)

    async with rt:
        with pytest.raises(InvalidOption) as refused:
            await rt.enqueue(resize, **given)
        assert refused.value.field == field
        assert await rt.count() == 0
        job_id = await rt.enqueue(resize, args=["cat.jpg"])
        assert (await rt.wait(job_id, timeout=5)).result == 1
