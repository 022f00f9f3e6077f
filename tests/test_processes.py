"""Process pools: sync handlers in worker processes (``rt.pool(..., processes=True)``).

The handlers live in ``tests/fixtures/proc_tasks.py``: a worker process finds
a handler by module and name, so it must be a module-level function. Each
child costs a spawn (0.1 to 0.3 s); the tests keep the pools small.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
from core_support import collect, make_rt, until
from fixtures import proc_tasks

from taskrt import EventType, InvalidOption, JobStatus, Runtime
from taskrt.processes import HandlerNotImportable, reference
from taskrt.processes.child import child_main

TESTS = Path(__file__).resolve().parent


def rt_for(tmp_path: Path) -> Runtime:
    # abandon_after 0.4: a cancelled child gets 0.2 s to return before the kill.
    return make_rt(tmp_path, abandon_after=0.4)


def alive(pid: int) -> bool:
    """Whether a process with that id exists (a zombie counts: not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def running(pid: int) -> bool:
    """Whether a process with that id runs (Linux: a zombie does not; an orphan's
    may never be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_a_sync_handler_runs_in_another_process_with_its_args(tmp_path: Path) -> None:
    rt = rt_for(tmp_path)
    pool = rt.pool("cpu", concurrency=1, processes=True)
    where = rt.task(pool="cpu")(proc_tasks.where)
    with_id = rt.task(pool="cpu")(proc_tasks.job_id_first)
    reports = rt.task(pool="cpu", attempts=3)(proc_tasks.reports)
    decorated = rt.register(proc_tasks.decorated.spec)  # declared with @app.task

    @rt.task(pool="cpu")
    async def on_the_loop() -> int:  # async: on the event loop, a closure is fine
        return os.getpid()

    async with rt:
        loop_info = await rt.wait(await pool.add(on_the_loop), timeout=10)
        first = await rt.wait(await pool.add(where, 1, "two", [3], k={"v": None}), timeout=10)
        second = await rt.wait(await pool.add(with_id, 7), timeout=10)
        job_id = await pool.add(reports.options(metadata={"who": "me"}), 2)
        third = await rt.wait(job_id, timeout=10)
        fourth = await rt.wait(await pool.add(where), timeout=10)
        fifth = await rt.wait(await pool.add(decorated, 4), timeout=10)
    assert loop_info.result == os.getpid()
    assert first.status is JobStatus.SUCCESS
    assert first.result["pid"] != os.getpid()
    assert first.result == {
        "pid": first.result["pid"],
        "args": [1, "two", [3]],
        "kwargs": {"k": {"v": None}},
    }
    assert second.result == [second.id, 7, first.result["pid"]]  # the child is reused
    assert fourth.result["pid"] == first.result["pid"]
    assert fifth.result == [5, first.result["pid"]]
    assert third.result == {
        "id": job_id,
        "task": "reports",
        "pool": "cpu",
        "attempt": 1,
        "max_attempts": 3,
        "args": [2],
        "metadata": {"who": "me"},
        "cancelled": False,
    }


async def test_two_cpu_bound_handlers_run_at_the_same_time(tmp_path: Path) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: two processes cannot run at the same time")
    rt = rt_for(tmp_path)
    pool = rt.pool("cpu", concurrency=2, processes=True)
    burn = rt.task(pool="cpu")(proc_tasks.burn)
    pid = rt.task(pool="cpu")(proc_tasks.pid)

    async with rt:
        # Both children started first, so that neither burn waits for a spawn.
        warm = await pool.add_many(pid, [(), ()])
        assert len({(await rt.wait(i, timeout=10)).result for i in warm}) == 2
        ids = await pool.add_many(burn, [(0.4,), (0.4,)])
        a, b = [(await rt.wait(i, timeout=20)).result for i in ids]
    assert a["pid"] != b["pid"]
    # Each burned 0.4 s of CPU; the intervals overlap only if both ran at once.
    assert max(a["start"], b["start"]) < min(a["end"], b["end"])


async def test_progress_from_the_child_reaches_the_parent(tmp_path: Path) -> None:
    rt = rt_for(tmp_path)
    pool = rt.pool("cpu", concurrency=1, processes=True)
    reports = rt.task(pool="cpu")(proc_tasks.reports)

    async with rt:
        pool.pause()
        job_id = await pool.add(reports, 3)
        stream = rt.subscribe(job_id)
        await anext(stream)
        pool.resume()
        events = await collect(stream, timeout=10)
        info = await rt.get(job_id)
    assert [
        (e.data["current"], e.data["total"], e.data["message"])
        for e in events
        if e.type is EventType.PROGRESS
    ] == [
        (1, 3, "step 1"),
        (2, 3, "step 2"),
        (3, 3, "step 3"),
    ]
    assert (info.status, info.current, info.total, info.message, info.step) == (
        JobStatus.SUCCESS,
        3,
        3,
        "step 3",
        "count",
    )
    assert info.steps == ({"name": "count", "current": 3, "total": 3},)


async def test_cancel_sets_the_flag_then_kills_the_child(tmp_path: Path) -> None:
    rt = rt_for(tmp_path)
    pool = rt.pool("cpu", concurrency=1, processes=True)
    stubborn = rt.task(pool="cpu")(proc_tasks.until_cancelled)
    pid = rt.task(pool="cpu")(proc_tasks.pid)
    marker = tmp_path / "marker"

    async with rt:
        job_id = await pool.add(stubborn, str(marker))
        following = await pool.add(pid)
        async with asyncio.timeout(10):
            while (await rt.get(job_id)).current != 1:
                await asyncio.sleep(0.005)
        child = int((await rt.get(job_id)).message.split()[1])
        started = time.perf_counter()
        info = await rt.cancel(job_id)
        took = time.perf_counter() - started
        assert info.status is JobStatus.CANCELLED
        assert took < 2.0
        # The child saw job.cancelled, ignored it, and was killed after the grace.
        assert marker.read_text() == "cancelled=True"
        assert not alive(child)
        after = await rt.wait(following, timeout=10)
    assert after.status is JobStatus.SUCCESS
    assert after.result != child  # a fresh child


async def test_a_timeout_kills_the_child_and_the_next_job_gets_a_new_one(
    tmp_path: Path,
) -> None:
    rt = rt_for(tmp_path)
    pool = rt.pool("cpu", concurrency=1, processes=True)
    sleeps = rt.task(pool="cpu", timeout=0.5)(proc_tasks.sleeps)
    pid = rt.task(pool="cpu")(proc_tasks.pid)

    async with rt:
        warm = await rt.wait(await pool.add(pid), timeout=10)  # the child exists
        job_id = await pool.add(sleeps, 30)
        following = await pool.add(pid)
        started = time.perf_counter()
        info = await rt.wait(job_id, timeout=10)
        took = time.perf_counter() - started
        assert (info.status, info.error) == (
            JobStatus.FAILURE,
            f"job {job_id} timed out after 0.5s",
        )
        assert took < 2.0
        child = int(info.message.split()[1])
        assert child == warm.result
        assert not alive(child)
        after = await rt.wait(following, timeout=10)
    assert after.status is JobStatus.SUCCESS
    assert after.result != child


async def test_a_child_that_dies_fails_the_attempt_and_the_retry_runs_in_a_fresh_one(
    tmp_path: Path,
) -> None:
    rt = rt_for(tmp_path)
    pool = rt.pool("cpu", concurrency=2, processes=True)
    dies = rt.task(pool="cpu", attempts=2)(proc_tasks.dies_first)
    burn = rt.task(pool="cpu")(proc_tasks.burn)

    pid_file = tmp_path / "dead.pid"

    async with rt:
        other = await pool.add(burn, 0.3)
        job_id = await pool.add(dies, str(pid_file))
        info = await rt.wait(job_id, timeout=10)
        attempts = await rt.attempts(job_id)
        other_info = await rt.wait(other, timeout=10)
        dead = int(pid_file.read_text())
        assert not alive(dead)
    assert (info.status, info.attempts) == (JobStatus.SUCCESS, 2)
    assert info.result != dead  # the retry ran in another child
    assert [a.outcome.value for a in attempts] == ["error", "success"]
    assert attempts[0].error == f"worker process died (exit code 3) while running job {job_id}"
    assert other_info.status is JobStatus.SUCCESS  # the pool's other job was not disturbed


async def test_a_handler_not_importable_by_reference_fails_clearly(tmp_path: Path) -> None:
    rt = rt_for(tmp_path)
    pool = rt.pool("cpu", concurrency=1, processes=True)
    factor = 3

    def closure(x: int) -> int:
        return x * factor

    task = rt.task(pool="cpu", name="closure")(closure)
    lam = rt.task(pool="cpu", name="lam", call="plain")(lambda: 1)

    async with rt:
        info = await rt.wait(await pool.add(task, 2), timeout=10)
        lam_info = await rt.wait(await pool.add(lam), timeout=10)
    assert info.status is JobStatus.FAILURE
    assert info.error == (
        "task 'closure': its handler test_processes."
        "test_a_handler_not_importable_by_reference_fails_clearly.<locals>.closure cannot be "
        "sent to a worker process by reference: it is defined inside a function (a closure "
        "or a local function); process pools need module-level functions"
    )
    assert lam_info.status is JobStatus.FAILURE
    assert "it is a lambda; process pools need module-level functions" in (lam_info.error or "")


async def test_a_result_that_is_not_json_fails_clearly(tmp_path: Path) -> None:
    rt = rt_for(tmp_path)
    pool = rt.pool("cpu", concurrency=1, processes=True)
    bad = rt.task(pool="cpu")(proc_tasks.unserialisable)
    pid = rt.task(pool="cpu")(proc_tasks.pid)

    async with rt:
        info = await rt.wait(await pool.add(bad), timeout=10)
        after = await rt.wait(await pool.add(pid), timeout=10)
    assert info.status is JobStatus.FAILURE
    assert info.error == (
        "the result is not JSON-serialisable: Object of type set is not JSON serializable"
    )
    assert after.status is JobStatus.SUCCESS  # the same child goes on


async def test_a_result_whose_keys_collide_in_json_is_refused_as_in_a_thread(
    tmp_path: Path,
) -> None:
    """Keys JSON writes as one name (1 and "1"): the child's frame kept one of them
    silently, and the job succeeded with half its result; a thread's result is
    refused (limits note 3). The child refuses it the same way."""
    rt = rt_for(tmp_path)
    pool = rt.pool("cpu", concurrency=1, processes=True)
    bad = rt.task(pool="cpu")(proc_tasks.colliding)

    async with rt:
        info = await rt.wait(await pool.add(bad), timeout=10)
    assert info.status is JobStatus.FAILURE
    assert info.error == (
        "the result is not JSON-serialisable: the keys 1 and '1' are both written as the "
        "name '1' in JSON, and one would be lost"
    )


async def test_an_exception_in_the_child_keeps_its_type_message_and_traceback(
    tmp_path: Path,
) -> None:
    rt = rt_for(tmp_path)
    pool = rt.pool("cpu", concurrency=1, processes=True)
    raises = rt.task(pool="cpu", attempts=2)(proc_tasks.raises)
    fatal = rt.task(pool="cpu", attempts=5)(proc_tasks.fatal)

    async with rt:
        job_id = await pool.add(raises, "bad input")
        info = await rt.wait(job_id, timeout=10)
        attempts = await rt.attempts(job_id)
        fatal_info = await rt.wait(await pool.add(fatal, "no way"), timeout=10)
    assert (info.status, info.error, info.attempts) == (
        JobStatus.FAILURE,
        "ValueError: bad input",
        2,
    )
    tb = attempts[-1].traceback or ""
    assert 'proc_tasks.py", line' in tb
    assert "raise ValueError(message)" in tb
    assert tb.rstrip().endswith("ValueError: bad input")
    # Fatal keeps its meaning: no further attempt.
    assert (fatal_info.status, fatal_info.error, fatal_info.attempts) == (
        JobStatus.FAILURE,
        "no way",
        1,
    )


async def test_no_child_outlives_the_runtime(tmp_path: Path) -> None:
    rt = make_rt(tmp_path, abandon_after=0.4, grace=0.2)  # the stop waits 0.2 s for jobs
    pool = rt.pool("cpu", concurrency=2, processes=True)
    pid = rt.task(pool="cpu")(proc_tasks.pid)
    sleeps = rt.task(pool="cpu")(proc_tasks.sleeps)

    async with rt:
        idle = (await rt.wait(await pool.add(pid), timeout=10)).result
        busy_id = await pool.add(sleeps, 30)  # still running at the exit
        async with asyncio.timeout(10):
            while not (await rt.get(busy_id)).message:
                await asyncio.sleep(0.005)
        busy = int((await rt.get(busy_id)).message.split()[1])
        assert alive(idle) and alive(busy)
    assert not alive(idle)
    assert not alive(busy)
    assert multiprocessing.active_children() == []


async def test_shrinking_the_pool_stops_idle_children(tmp_path: Path) -> None:
    rt = rt_for(tmp_path)
    pool = rt.pool("cpu", concurrency=2, processes=True)
    burn = rt.task(pool="cpu")(proc_tasks.burn)
    pid = rt.task(pool="cpu")(proc_tasks.pid)

    async with rt:
        ids = await pool.add_many(burn, [(0.2,), (0.2,)])
        pids = {(await rt.wait(i, timeout=10)).result["pid"] for i in ids}
        assert len(pids) == 2
        rt.pool("cpu", concurrency=1)
        await until(lambda: sum(alive(p) for p in pids) == 1, timeout=5)
        rt.pool("cpu", processes=False)  # back to threads: the last child goes too
        await until(lambda: not any(alive(p) for p in pids), timeout=5)
        info = await rt.wait(await pool.add(pid), timeout=10)
    assert info.result == os.getpid()  # in a thread of this process


def test_processes_must_be_a_bool(tmp_path: Path) -> None:
    rt = rt_for(tmp_path)
    with pytest.raises(InvalidOption) as raised:
        rt.pool("cpu", processes="yes")  # type: ignore[arg-type]
    assert raised.value.field == "processes"
    assert "cpu" not in rt.pools
    pool = rt.pool("cpu")
    with pytest.raises(InvalidOption) as again:
        rt.pool("cpu", processes=1)  # type: ignore[arg-type]
    assert again.value.field == "processes"
    assert pool.processes is False
    assert rt.pool("cpu", processes=True).processes is True


async def test_the_parent_decides_about_sigterm_and_a_job_may_start_processes(
    tmp_path: Path,
) -> None:
    rt = rt_for(tmp_path)
    pool = rt.pool("cpu", concurrency=1, processes=True)
    naps = rt.task(pool="cpu")(proc_tasks.naps)
    nested = rt.task(pool="cpu")(proc_tasks.nested_pool)

    async with rt:
        job_id = await pool.add(naps, 0.3)
        async with asyncio.timeout(10):
            while not (await rt.get(job_id)).message:
                await asyncio.sleep(0.005)
        child = int((await rt.get(job_id)).message.split()[1])
        # A service manager's SIGTERM (or a Ctrl-C) reaches the whole group: the
        # child goes on, and the runtime decides what happens to the job.
        os.kill(child, signal.SIGTERM)
        os.kill(child, signal.SIGINT)
        info = await rt.wait(job_id, timeout=10)
        assert (info.status, info.result) == (JobStatus.SUCCESS, child)
        nested_info = await rt.wait(await pool.add(nested, 4), timeout=20)
    assert (nested_info.status, nested_info.result) == (JobStatus.SUCCESS, [0, 1, 4, 9])


async def test_a_child_still_starting_leaves_sigint_and_sigterm_to_the_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C or a SIGTERM to the process group while a child still imports (the
    parent's main script, taskrt): it used to die of it (exit code 1 with a
    KeyboardInterrupt, or killed by SIGTERM) and the attempt failed with
    ``worker process died``; now they wait, blocked, for the child's handlers."""
    slow_main = types.ModuleType("__main__")  # the script the child imports as __mp_main__
    slow_main.__file__ = str(Path(proc_tasks.__file__).with_name("slow_main.py"))
    monkeypatch.setitem(sys.modules, "__main__", slow_main)
    starting = tmp_path / "starting"
    monkeypatch.setenv("TASKRT_TEST_STARTING", str(starting))
    rt = rt_for(tmp_path)
    pool = rt.pool("cpu", concurrency=1, processes=True)
    naps = rt.task(pool="cpu", attempts=1)(proc_tasks.naps)

    async with rt:
        job_id = await pool.add(naps, 0)
        await until(lambda: starting.exists() and starting.read_text() != "", timeout=20)
        child = int(starting.read_text())
        # Started: this thread has its own mask back.
        assert not {signal.SIGINT, signal.SIGTERM} & signal.pthread_sigmask(signal.SIG_BLOCK, [])
        os.kill(child, signal.SIGINT)  # while the child is still importing
        os.kill(child, signal.SIGTERM)
        starting.unlink()
        info = await rt.wait(job_id, timeout=20)
    assert (info.status, info.result, info.attempts) == (JobStatus.SUCCESS, child, 1)


# A parent that the test kills with SIGKILL while its child holds the GIL.
PARENT = textwrap.dedent(
    """\
    import asyncio
    import sys


    async def main() -> None:
        from fixtures import proc_tasks
        from taskrt import Runtime

        rt = Runtime(sys.argv[1])
        pool = rt.pool("cpu", concurrency=1, processes=True)
        holds = rt.task(pool="cpu")(proc_tasks.holds_the_gil)
        async with rt:
            job_id = await pool.add(holds)
            while not (await rt.get(job_id)).message:
                await asyncio.sleep(0.005)
            print((await rt.get(job_id)).message, flush=True)
            await asyncio.sleep(60)


    if __name__ == "__main__":
        asyncio.run(main())
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="the kernel's parent-death signal is Linux's")
async def test_a_child_holding_the_gil_dies_with_its_parent(tmp_path: Path) -> None:
    """The parent is killed: its child goes at once, even in a long C call that
    holds the GIL. It used to run on (its reader thread never saw the
    end-of-file), and after a restart its job ran twice at once."""
    script, out = tmp_path / "parent.py", tmp_path / "out"
    script.write_text(PARENT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "jobs.db")], env=env, stdout=stdout
        )
    child = None
    try:
        await until(lambda: out.read_text().endswith("\n"), timeout=30)
        child = int(out.read_text().split()[1])  # in holds_the_gil
        proc.kill()
        await until(lambda: not running(child), timeout=5)
    finally:
        proc.kill()
        proc.wait()
        if child is not None and running(child):
            os.kill(child, signal.SIGKILL)


def test_a_child_whose_parent_died_while_it_started_exits(tmp_path: Path) -> None:
    """A child whose parent died before it asked the kernel to kill it with the
    parent is another process's child by then: it exits at once, though its
    channel is still open here."""
    mine, theirs = socket.socketpair()
    with mine:
        with theirs:
            child = multiprocessing.get_context("spawn").Process(
                target=child_main,
                args=(theirs, os.getppid()),  # not the child's parent
            )
            child.start()
        child.join(30)
        assert child.exitcode == 0
        mine.settimeout(5)
        assert mine.recv(1) == b""  # the child closed its end, and sent nothing


def test_a_handler_of_an_interactive_session_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    session = types.ModuleType("__main__")  # what the REPL's __main__ is: no __file__

    def typed_in(x: int) -> int:
        return x

    typed_in.__module__, typed_in.__qualname__ = "__main__", "typed_in"
    session.typed_in = typed_in  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "__main__", session)
    with pytest.raises(HandlerNotImportable) as refused:
        reference("typed", typed_in)
    assert str(refused.value) == (
        "task 'typed': its handler __main__.typed_in cannot be sent to a worker process by "
        "reference: it is defined in __main__ of an interactive session; process pools "
        "need module-level functions"
    )
    assert reference("where", proc_tasks.where) == ("fixtures.proc_tasks", "where")
