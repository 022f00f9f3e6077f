"""A handler's odd result or exception: whatever it returns or raises, its job ends.

``taskrt.pool`` note 12: the job ends (SUCCESS if its result can be stored,
else FAILURE saying why), its slot is freed, nothing hangs and the runtime
runs on. Each test here was a hang or a crash before:

- a result whose truth test raises (a numpy array, a DataFrame) left its job
  RUNNING for good, with no log line (``limits.encode`` tested ``not value``
  outside its ``try``, after the job had left the pool's running set);
- a sync handler's StopIteration, which asyncio refuses to put in a future,
  left its job RUNNING holding its slot, and again after every restart;
- an exception whose ``str()`` raised SystemExit stopped the event loop;
- in a worker process, one whose ``str()`` raised killed the worker;
- ``job.progress`` from a thread that outlived its runtime raised
  ``RuntimeError: Event loop is closed`` in the handler.

Process-pool handlers must be importable by module and name: the worker
process imports this module to find them (``taskrt.processes`` note 3).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from core_support import committed_jobs, make_rt, until

from taskrt import JobContext, JobStatus, Runtime, SerializationError
from taskrt.limits import encode

UNREADABLE = "(its message could not be read: str() raised)"
UNSTORABLE = "the result is not JSON-serialisable: "


# -- values and exceptions whose own code raises ----------------------------------------------


class Ambiguous:
    """As a numpy array or a DataFrame: its truth value is ambiguous."""

    def __bool__(self) -> bool:
        raise ValueError("the truth value of an array with more than one element is ambiguous")


class Unsized:
    """Its truth test asks ``__len__``, which raises."""

    def __len__(self) -> int:
        raise TypeError("len() of unsized object")


class ItemsRefused(dict[str, Any]):
    """A dict whose ``items`` (what the JSON encoder asks of a dict subclass) raises."""

    def items(self) -> Any:
        raise LookupError("items refused")


def no_class(message: str = "") -> Exception:
    """An exception that ``isinstance`` cannot classify: its ``__class__`` raises. (Its
    class is made here, not at module level, where pytest's collection would ask.)"""

    class NoClass(Exception):
        @property  # type: ignore[misc]
        def __class__(self) -> type:
            raise RuntimeError("no class for you")

    return NoClass(message)


class ExitingStr(Exception):
    def __str__(self) -> str:
        raise SystemExit("from __str__")


class InterruptingStr(Exception):
    def __str__(self) -> str:
        raise KeyboardInterrupt


class StrRaises(Exception):
    def __str__(self) -> str:
        raise ValueError("no message")


# -- handlers for a process pool (module level: the worker imports them) ---------------------


def raises_unreadable() -> None:
    raise StrRaises()


def raises_exiting_str() -> None:
    raise ExitingStr()


def returns_items_refused() -> dict[str, Any]:
    return {"inner": ItemsRefused(a=1)}


def worker_pid() -> int:
    return os.getpid()


# -- 1. results whose truth test raises -------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        Ambiguous,
        Unsized,
        lambda: [Ambiguous()],
        lambda: {"k": Unsized()},
        lambda: ItemsRefused(a=1),
        no_class,
    ],
    ids=["bool", "len", "nested-bool", "nested-len", "items", "class"],
)
def test_encode_refuses_a_value_whose_own_code_raises_with_a_serialization_error(
    make: Callable[[], Any],
) -> None:
    with pytest.raises(SerializationError, match="the result is not JSON-serialisable"):
        encode(make(), "the result", max_bytes=1 << 20, max_depth=32)


def test_encode_keeps_empty_containers_and_subclasses_as_json_has_them() -> None:
    for value, text in [([], "[]"), ((), "[]"), ({}, "{}"), (ItemsRefused(), "{}")]:
        assert encode(value, "the result", max_bytes=100, max_depth=32) == text


@pytest.mark.parametrize("in_thread", [False, True], ids=["async", "sync"])
async def test_a_result_whose_truth_test_raises_fails_its_job_as_unstorable(
    tmp_path: Path, in_thread: bool
) -> None:
    rt = make_rt(tmp_path)
    pool = rt.pool("default", concurrency=1)
    returned = [Ambiguous(), Unsized(), ItemsRefused(a=1)]

    if in_thread:

        @rt.task
        def odd(job: JobContext, which: int) -> Any:
            return returned[which]

    else:

        @rt.task
        async def odd(job: JobContext, which: int) -> Any:
            return returned[which]

    @rt.task
    async def fine(job: JobContext) -> str:
        return "fine"

    async with rt:
        ids = [await rt.add(odd, which) for which in range(len(returned))]
        infos = [await rt.wait(job_id, timeout=5) for job_id in ids]
        after = await rt.wait(await rt.add(fine), timeout=5)  # its one slot is free
        counted = (pool.processed, pool.failed)
    assert [i.status for i in infos] == [JobStatus.FAILURE] * 3
    assert [i.error for i in infos] == [
        UNSTORABLE + "Object of type Ambiguous is not JSON serializable",
        UNSTORABLE + "Object of type Unsized is not JSON serializable",
        UNSTORABLE + "LookupError: items refused",
    ]
    assert after.result == "fine"
    assert counted == (1, 3)
    stored = {j.id: j.status for j in await committed_jobs(tmp_path)}
    assert [stored[i] for i in ids] == [JobStatus.FAILURE] * 3


# -- 2. a sync handler's StopIteration --------------------------------------------------------


async def test_a_sync_handler_that_raises_stop_iteration_fails_and_frees_its_slot(
    tmp_path: Path,
) -> None:
    """Python refuses a StopIteration through a future: it becomes a RuntimeError
    raised from it (as PEP 479 does for a generator), with the handler's traceback."""
    rt = make_rt(tmp_path)
    pool = rt.pool("default", concurrency=1)

    @rt.task
    def first(job: JobContext, items: list[int]) -> int:
        return next(iter(items))

    @rt.task
    def closes(job: JobContext) -> None:
        raise GeneratorExit("closed")

    async with rt:
        job_id = await rt.add(first, [])
        info = await rt.wait(job_id, timeout=5)
        closed = await rt.wait(await rt.add(closes), timeout=5)
        after = await rt.wait(await rt.add(first, [7]), timeout=5)  # the one slot is free
        attempts = await rt.attempts(job_id)
        counted = (pool.processed, pool.failed, pool.running)
    assert info.status is JobStatus.FAILURE
    assert info.error == "RuntimeError: the handler raised StopIteration"
    assert closed.error == "RuntimeError: the handler raised GeneratorExit"
    assert after.result == 7
    assert counted == (1, 2, 0)
    tb = attempts[-1].traceback or ""
    assert "StopIteration" in tb and "next(iter(items))" in tb
    stored = {j.id: j for j in await committed_jobs(tmp_path)}
    assert (stored[job_id].status, stored[job_id].attempts) == (JobStatus.FAILURE, 1)


# -- 3. an exception whose str() raises SystemExit or KeyboardInterrupt -----------------------


async def _unreadable_errors(tmp_path: Path) -> tuple[list[Any], Any, tuple[int, int]]:
    rt = make_rt(tmp_path)
    pool = rt.pool("default", concurrency=2)

    @rt.task
    async def exits(job: JobContext) -> None:
        raise ExitingStr()

    @rt.task
    def exits_in_a_thread(job: JobContext) -> None:
        raise ExitingStr()

    @rt.task
    async def interrupts(job: JobContext) -> None:
        raise InterruptingStr()

    @rt.task
    def interrupts_in_a_thread(job: JobContext) -> None:
        raise InterruptingStr()

    @rt.task
    async def fine(job: JobContext) -> str:
        return "fine"

    failing = (exits, exits_in_a_thread, interrupts, interrupts_in_a_thread)
    async with rt:
        ids = [await rt.add(task) for task in failing]
        infos = [await rt.wait(job_id, timeout=5) for job_id in ids]
        after = await rt.wait(await rt.add(fine), timeout=5)  # the runtime runs on
        counted = (pool.processed, pool.failed)
    return infos, after, counted


def test_an_exception_whose_str_raises_system_exit_fails_its_job_not_the_runtime(
    tmp_path: Path,
) -> None:
    """On a loop of its own: before, the SystemExit (or KeyboardInterrupt) left the
    loop, and would have stopped the test session's."""
    try:
        infos, after, counted = asyncio.run(_unreadable_errors(tmp_path), debug=True)
    except (SystemExit, KeyboardInterrupt) as exc:
        pytest.fail(f"the runtime's event loop stopped: {exc!r}")
    assert [i.status for i in infos] == [JobStatus.FAILURE] * 4
    assert [i.error for i in infos] == [
        f"ExitingStr: {UNREADABLE}",
        f"ExitingStr: {UNREADABLE}",
        f"InterruptingStr: {UNREADABLE}",
        f"InterruptingStr: {UNREADABLE}",
    ]
    assert after.result == "fine"
    assert counted == (1, 4)


# -- 4. what raises while an attempt is ended -------------------------------------------------


@pytest.mark.parametrize("in_thread", [False, True], ids=["async", "sync"])
async def test_an_error_that_raises_while_its_attempt_ends_still_fails_its_job(
    tmp_path: Path, in_thread: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """``isinstance`` of an exception whose ``__class__`` raises fails inside the end
    of its attempt, after the job left the pool's running set: the job fails naming
    what went wrong (and it is logged) instead of staying RUNNING."""
    rt = make_rt(tmp_path)
    pool = rt.pool("default", concurrency=1)

    if in_thread:

        @rt.task
        def unclassifiable(job: JobContext) -> None:
            raise no_class("boo")

    else:

        @rt.task
        async def unclassifiable(job: JobContext) -> None:
            raise no_class("boo")

    @rt.task
    async def fine(job: JobContext) -> str:
        return "fine"

    with caplog.at_level(logging.ERROR, logger="taskrt"):
        async with rt:
            job_id = await rt.add(unclassifiable)
            info = await rt.wait(job_id, timeout=5)
            after = await rt.wait(await rt.add(fine), timeout=5)
            counted = (pool.processed, pool.failed)
    why = "the attempt could not be ended: RuntimeError: no class for you"
    assert (info.status, info.error) == (JobStatus.FAILURE, why)
    assert after.result == "fine"
    assert counted == (1, 1)
    assert any(why in r.getMessage() for r in caplog.records)
    stored = {j.id: j for j in await committed_jobs(tmp_path)}
    assert (stored[job_id].status, stored[job_id].error) == (JobStatus.FAILURE, why)


# -- 5. in a worker process -------------------------------------------------------------------


async def test_in_a_worker_process_an_unreadable_error_fails_its_job_and_keeps_the_worker(
    tmp_path: Path,
) -> None:
    """The child describes it as the thread path does; before, it died (exit code 1)
    and the job failed as ``worker process died``."""
    rt = make_rt(tmp_path, abandon_after=0.4)
    pool = rt.pool("cpu", concurrency=1, processes=True)
    unreadable = rt.task(pool="cpu")(raises_unreadable)
    exiting = rt.task(pool="cpu")(raises_exiting_str)
    refused = rt.task(pool="cpu")(returns_items_refused)
    pid = rt.task(pool="cpu")(worker_pid)

    async with rt:
        before = (await rt.wait(await pool.add(pid), timeout=20)).result
        infos = [await rt.wait(await pool.add(t), timeout=10) for t in (unreadable, exiting)]
        result = await rt.wait(await pool.add(refused), timeout=10)
        after = (await rt.wait(await pool.add(pid), timeout=20)).result
    assert [(i.status, i.error) for i in infos] == [
        (JobStatus.FAILURE, f"StrRaises: {UNREADABLE}"),
        (JobStatus.FAILURE, f"ExitingStr: {UNREADABLE}"),
    ]
    assert (result.status, result.error) == (
        JobStatus.FAILURE,
        UNSTORABLE + "LookupError: items refused",
    )
    assert after == before  # the same worker: none of them killed it


# -- 6. progress from a thread that outlived its runtime --------------------------------------


def test_progress_from_a_thread_after_its_runtime_stopped_is_dropped(tmp_path: Path) -> None:
    """The runtime stops (its grace elapses) while a sync handler still runs; the
    loop closes; the handler reports progress: dropped, as a report for an ended
    attempt is, rather than ``RuntimeError: Event loop is closed`` in the handler."""
    inside = threading.Event()
    release = threading.Event()
    reported = threading.Event()
    raised: list[BaseException] = []
    rt: Runtime = make_rt(tmp_path, grace=0.05)

    @rt.task
    def lingers(job: JobContext) -> None:
        inside.set()
        release.wait(10)
        try:
            job.progress(1, 2, "after the stop")
            rt.progress(job.id, 2, 2, "and through the runtime")  # its Yao-style twin
        except BaseException as exc:
            raised.append(exc)
        finally:
            reported.set()

    async def main() -> None:
        async with rt:
            await rt.add(lingers)
            await until(inside.is_set, timeout=5)

    asyncio.run(main(), debug=True)  # the loop is closed now; the thread runs on
    release.set()
    assert reported.wait(5)
    assert raised == []
