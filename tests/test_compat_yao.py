"""The Yao example app, unchanged, on a real runtime; and Yao's add/progress/get processes."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from core_support import until

from taskrt import EventType, FakeClock, InvalidOption, JobNotFound, JobStatus, Runtime
from taskrt.compat.yao import YaoTasks
from taskrt.errors import InvalidTransition

YAO_TASKS = Path(__file__).parent / "fixtures" / "yao_app" / "tasks"


@pytest.fixture
def script() -> ModuleType:
    Runtime().load(YAO_TASKS)  # puts the app's root on sys.path
    module = importlib.import_module("scripts.task")
    module.reset()
    return module


@pytest.fixture
async def app(tmp_path: Path, script: ModuleType) -> AsyncIterator[tuple[Runtime, YaoTasks]]:
    rt = Runtime(str(tmp_path / "app.db"), tasks=YAO_TASKS)
    yao = YaoTasks(rt)
    script.YAO = yao
    async with rt:
        yield rt, yao


async def _started(rt: Runtime, job_id: int) -> None:
    async with rt.subscribe(job_id) as stream:
        async for event in stream:
            if event.type is EventType.STARTED or event.status is JobStatus.RUNNING:
                return


def _calls_of(script: ModuleType, job_id: int) -> list[tuple[Any, ...]]:
    return [c for c in script.CALLS if c[0] != "next" and c[1] == job_id]


async def test_ids_come_from_next_id_and_every_hook_is_called(
    app: tuple[Runtime, YaoTasks], script: ModuleType
) -> None:
    rt, yao = app
    first = await yao.add("test", "task-1")
    second = await yao.process("tasks.test.add", "task-2")
    assert (first, second) == (1025, 1026)
    for job_id in (first, second):
        assert (await rt.wait(job_id, timeout=10)).status is JobStatus.SUCCESS
    assert [c for c in script.CALLS if c[0] == "next"] == [("next", 1025), ("next", 1026)]
    # The sync hooks run in the task's own thread, in the order they were called:
    # beside the handler (which may start before the add hook has run) and after
    # the transition that called them (the success hook, after the wait).
    await until(lambda: len(_calls_of(script, 1025)) == len(_calls_of(script, 1026)) == 4)
    calls = _calls_of(script, 1025)
    assert [c for c in calls if c[0] != "send"] == [
        ("add", 1025),
        ("progress", 1025, 1, 100, "Progress 1/100"),
        ("success", 1025, {"message": "ok"}),
    ]
    send = ("send", 1025, ("task-1",))
    assert calls.index(send) < calls.index(("progress", 1025, 1, 100, "Progress 1/100"))
    assert ("send", 1026, ("task-2",)) in _calls_of(script, 1026)
    assert await yao.get(1025) == {
        "id": 1025,
        "status": "SUCCESS",
        "current": 1,
        "total": 100,
        "message": "Progress 1/100",
        "response": {"message": "ok"},
    }
    assert await yao.process("tasks.test.get", 1026) == {
        "id": 1026,
        "status": "SUCCESS",
        "current": 1,
        "total": 100,
        "message": "Progress 1/100",
        "response": {"message": "ok"},
    }


async def test_a_failing_job_uses_its_attempts_then_calls_the_error_hook_once(
    app: tuple[Runtime, YaoTasks], script: ModuleType
) -> None:
    rt, yao = app
    job_id = await yao.add("test", "boom")
    info = await rt.wait(job_id, timeout=10)
    assert (info.status, info.attempts) == (JobStatus.FAILURE, 3)
    error = "RuntimeError: cannot send boom"
    await until(lambda: _calls_of(script, job_id)[-1:] == [("error", job_id, error)])
    calls = _calls_of(script, job_id)
    assert [c[0] for c in calls if c[0] != "send"] == ["add"] + ["progress"] * 3 + ["error"]
    assert [c[0] for c in calls].count("send") == 3
    assert await yao.get(job_id) == {
        "id": job_id,
        "status": "FAILURE",
        "current": 1,
        "total": 100,
        "message": "Progress 1/100",
        "response": "RuntimeError: cannot send boom",
    }


async def test_attempt_after_spaces_the_attempts(tmp_path: Path, script: ModuleType) -> None:
    clock = FakeClock()
    rt = Runtime(str(tmp_path / "app.db"), tasks=YAO_TASKS, clock=clock)
    async with rt:
        start = clock.now()
        job_id = await YaoTasks(rt).add("flaky")
        retries: list[float] = []
        async with rt.subscribe(job_id) as stream:
            async for event in stream:
                if event.type is EventType.RETRYING:
                    retries.append(event.data["run_at"] - clock.now())
                    await clock.advance(0.2)
        info = await rt.get(job_id)
    assert retries == [pytest.approx(0.2), pytest.approx(0.2)]
    assert (info.status, info.attempts, info.result) == (
        JobStatus.SUCCESS,
        3,
        "done after 3 attempts",
    )
    assert clock.now() == pytest.approx(start + 0.4)
    assert len(script.FLAKY_RUNS) == 3
    assert ("success", job_id, "done after 3 attempts") in script.CALLS


async def test_add_returns_0_when_it_cannot_add(
    app: tuple[Runtime, YaoTasks], script: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    rt, yao = app
    taken = await yao.add("test", "first")
    assert taken == 1025
    await rt.wait(taken, timeout=10)
    script.GATE = asyncio.Event()
    # 'plain': 2 workers, room for 2 waiting jobs.
    running = [await yao.add("plain") for _ in range(2)]
    for job_id in running:
        await _started(rt, job_id)
    waiting = [await yao.add("plain") for _ in range(2)]
    assert 0 not in running + waiting
    assert await yao.add("plain") == 0  # queue full
    assert await yao.add("strict", 42) == 0  # name must be a string
    assert await yao.add("strict") == 0  # name is missing
    assert await yao.add("nope", 1) == 0  # no such task
    script._last_id = 1024  # NextID hands out 1025 again: an id that is taken
    assert await yao.add("test", "again") == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "taskrt.compat.yao"]
    assert messages == [
        "tasks.plain.add: not added (queue_full): pool 'plain' is full: 2 jobs are waiting",
        "tasks.strict.add: not added (validation_error): task 'strict' parameter 'name': "
        "42 is not of type 'string'",
        "tasks.strict.add: not added (validation_error): task 'strict' parameter 'name': "
        "missing a required argument: 'name'",
        "tasks.nope.add: not added (task_not_found): no task named 'nope'",
        messages[-1],
    ]
    assert messages[-1].startswith("tasks.test.add: not added (duplicate_job_id): job id 1025")
    greet = await yao.add("strict", "ann", 2)
    assert (await rt.wait(greet, timeout=10)).result == "hello ann hello ann"
    script.GATE.set()
    for job_id in running + waiting:
        assert (await rt.wait(job_id, timeout=10)).status is JobStatus.SUCCESS


async def test_a_cancelled_job_reads_as_failure(
    app: tuple[Runtime, YaoTasks], script: ModuleType
) -> None:
    rt, yao = app
    script.GATE = asyncio.Event()
    busy = [await yao.add("plain") for _ in range(2)]
    for job_id in busy:
        await _started(rt, job_id)
    queued = await yao.add("plain")
    assert (await yao.get(queued))["status"] == "WAITING"
    await _started(rt, busy[0])
    assert (await yao.get(busy[0]))["status"] == "RUNNING"
    await rt.cancel(queued)
    got = await yao.get(queued)
    assert got["status"] == "FAILURE"
    assert isinstance(got["response"], str) and got["response"]
    script.GATE.set()


async def test_ids_always_increase_without_next_id(tmp_path: Path, script: ModuleType) -> None:
    db = str(tmp_path / "app.db")
    ids: list[int] = []
    async with Runtime(db, tasks=YAO_TASKS) as rt:
        yao = YaoTasks(rt)
        script.YAO = yao
        ids.append(await yao.add("test", "a"))  # 1025, from NextID
        ids.append(await yao.add("plain"))
        ids.append(await yao.add("plain"))
        for job_id in ids:
            await rt.wait(job_id, timeout=10)
        assert await rt.cleanup(older_than=0) == 3  # the rows are gone; their ids stay used
    async with Runtime(db, tasks=YAO_TASKS) as rt:
        yao = YaoTasks(rt)
        ids.append(await yao.add("plain"))
        ids.append(await yao.add("plain"))
    assert ids[0] == 1025
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert 0 not in ids


async def test_progress_and_get_refuse_what_yao_refused(app: tuple[Runtime, YaoTasks]) -> None:
    rt, yao = app
    with pytest.raises(JobNotFound):
        await yao.get(999)
    job_id = await yao.add("strict", "ann")
    await rt.wait(job_id, timeout=10)
    with pytest.raises(InvalidTransition):
        await yao.progress(job_id, 1, 2, "too late")
    with pytest.raises(InvalidOption):
        await yao.process("models.user.find", 1)
    with pytest.raises(InvalidOption):
        await yao.process("tasks.test.remove", 1)
    # Arguments that do not fit the process: a raw AttributeError or TypeError before.
    for call in (
        yao.process(None),  # type: ignore[arg-type]
        yao.process(5),  # type: ignore[arg-type]
        yao.process("tasks.test.progress"),
        yao.process("tasks.test.progress", job_id),
        yao.process("tasks.test.get"),
        yao.process("tasks.test.get", job_id, 5),
    ):
        with pytest.raises(InvalidOption, match="process"):
            await call


def test_a_task_name_defined_twice_is_refused_never_replaced_silently(
    tmp_path: Path, script: ModuleType
) -> None:
    # Before, the last definition won without a word: a decorator's task, then a task
    # file of the same id, then another folder's, each replaced the one before.
    copy = tmp_path / "tasks"
    copy.mkdir()
    (copy / "test.yao").write_text((YAO_TASKS / "test.yao").read_text())
    rt = Runtime()
    rt.load(YAO_TASKS)
    rt.load(YAO_TASKS)  # the same files again: each task replaces itself
    name = "test"
    first = rt.tasks[name]
    with pytest.raises(InvalidOption) as caught:
        rt.load(copy)  # the same id in another file
    assert caught.value.field == "name" and repr(name) in str(caught.value)
    assert caught.value.source is not None and str(copy) in caught.value.source
    assert str(YAO_TASKS) in str(caught.value)  # where the first one is

    # A load that a clash refuses registers none of its tasks (all or nothing): the
    # copy's folder with a new task beside the clash, in a file read before it.
    (copy / "a_new.yao").write_text('{"process": "scripts.task.Send", "worker_nums": 3}')
    with pytest.raises(InvalidOption, match="registered already"):
        rt.load(copy)
    assert "a_new" not in rt.tasks and "a_new" not in rt.pools

    async def other() -> None: ...

    with pytest.raises(InvalidOption, match="registered already"):
        rt.task(name=name)(other)
    assert rt.tasks[name] is first  # kept
    # The same handler registered again (changed options) replaces itself.
    again = rt.register(dataclasses.replace(first, priority=first.priority + 1))
    assert again.spec.priority == rt.tasks[name].priority == first.priority + 1


async def test_a_sync_handler_reports_progress_as_yaos_do(tmp_path: Path) -> None:
    """Yao's handlers are synchronous and call tasks.<id>.progress: the report was a
    coroutine never awaited, lost with a RuntimeWarning."""
    rt = Runtime(str(tmp_path / "app.db"))
    yao = YaoTasks(rt)

    @rt.task(call="id")
    def send_own(job_id: int) -> str:
        yao.progress(job_id, 3, 10, "three")
        return "sent"

    async with rt:
        job = await yao.add("send_own")
        info = await rt.wait(job, timeout=10)
        assert info.status is JobStatus.SUCCESS, info.error
        assert (await yao.get(job))["current"] == 3
        assert (await yao.get(job))["message"] == "three"


async def test_get_of_a_task_finds_only_its_own_jobs(app: tuple[Runtime, YaoTasks]) -> None:
    """Each of Yao's tasks has its own queue: tasks.<id>.get of another task's job
    found it."""
    rt, yao = app
    job_id = await yao.add("plain")
    assert job_id != 0
    await rt.wait(job_id, timeout=10)
    assert (await yao.process("tasks.plain.get", job_id))["id"] == job_id
    with pytest.raises(JobNotFound, match="of task 'test'"):
        await yao.process("tasks.test.get", job_id)


async def test_a_sync_handler_gets_the_errors_an_awaited_progress_raises(tmp_path: Path) -> None:
    """From a worker thread, progress for a job not running here was handed to the
    loop and dropped with a log line: the handler saw nothing raised where the
    awaited call raises JobNotFound or InvalidTransition."""
    rt = Runtime(str(tmp_path / "app.db"))
    rt.pool("held", concurrency=1)
    yao = YaoTasks(rt)
    started, gate = asyncio.Event(), asyncio.Event()

    @rt.task(pool="held")
    async def held() -> None:
        started.set()
        await gate.wait()

    @rt.task(call="id")
    def report(job_id: int, other: int) -> str:
        try:
            yao.progress(other, 1, 2, "from a thread")
        except (JobNotFound, InvalidTransition) as exc:
            return type(exc).__name__
        return "reported"

    async def reported(other: int) -> Any:
        info = await rt.wait(await yao.add("report", other), timeout=10)
        assert info.status is JobStatus.SUCCESS, info.error
        return info.result

    async with rt:
        running = await yao.add("held")
        await started.wait()
        waiting = await yao.add("held")  # behind it in a pool of one
        ended = await yao.add("report", 999999)
        await rt.wait(ended, timeout=10)
        for job_id, error in (
            (999999, JobNotFound),
            (waiting, InvalidTransition),
            (ended, InvalidTransition),
        ):
            with pytest.raises(error):
                await yao.progress(job_id, 1, 2, "awaited")
            assert await reported(job_id) == error.__name__
        assert (await yao.get(waiting))["message"] == ""
        assert await reported(running) == "reported"  # a running job, another's
        assert (await yao.get(running))["message"] == "from a thread"
        gate.set()


async def test_progress_of_a_task_finds_only_its_own_jobs(tmp_path: Path) -> None:
    """tasks.<id>.progress updated a running job of another task, where
    tasks.<id>.get of that job raises JobNotFound."""
    rt = Runtime(str(tmp_path / "app.db"))
    yao = YaoTasks(rt)
    started, gate = asyncio.Event(), asyncio.Event()

    @rt.task
    async def held() -> None:
        started.set()
        await gate.wait()

    @rt.task
    async def other() -> None: ...

    async with rt:
        job_id = await yao.add("held")
        await started.wait()
        with pytest.raises(JobNotFound, match="of task 'other'"):
            await yao.process("tasks.other.progress", job_id, 5, 10, "not its job")
        assert (await yao.get(job_id))["message"] == ""
        await yao.process("tasks.held.progress", job_id, 5, 10, "its own")
        assert (await yao.get(job_id))["message"] == "its own"
        gate.set()
        assert (await rt.wait(job_id, timeout=10)).status is JobStatus.SUCCESS
