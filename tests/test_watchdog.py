"""The loop-stall watchdog against a really blocked event loop.

Each stall is a real ``time.sleep`` on the loop thread (what a careless
handler does); the threshold is small so the file stays fast. asyncio's debug
mode logs its own "Executing <Task ...> took 0.3 seconds" for those sleeps
under the ``asyncio`` logger; the assertions read only ``taskrt`` records.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from taskrt.errors import InvalidOption
from taskrt.watchdog import THREAD_NAME, LoopStallStatistics, LoopWatchdog, describe_jobs

THRESHOLD = 0.1
BLOCK = THRESHOLD * 3
DURING = "the event loop has been blocked for"
AFTER = "the event loop was blocked for"


def taskrt_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "taskrt"]


def messages(caplog: pytest.LogCaptureFixture, part: str) -> list[str]:
    return [r.getMessage() for r in taskrt_records(caplog) if part in r.getMessage()]


def watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


async def until(fact: Callable[[], bool], timeout: float = 2.0) -> None:
    """Let the loop run until ``fact()`` holds; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not fact():
            await asyncio.sleep(0.005)


async def stall(dog: LoopWatchdog, seconds: float = BLOCK) -> None:
    """Block the loop thread for ``seconds``, then wait until the stall is counted."""
    before = dog.statistics().stalls
    time.sleep(seconds)
    await until(lambda: dog.statistics().stalls == before + 1)


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.WARNING, logger="taskrt")
    yield
    assert watchdog_threads() == [], "a test left a watchdog thread running"


async def test_a_blocked_loop_is_reported_while_blocked_and_once_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dog = LoopWatchdog(THRESHOLD, describe=lambda: [(4, "resize"), (7, "email")])
    dog.start()
    try:
        await asyncio.sleep(0)
        time.sleep(BLOCK)
        # Still on the blocked loop thread: the thread has already spoken, once.
        during = messages(caplog, DURING)
        blocked_now = dog.statistics().blocked_now
        assert messages(caplog, AFTER) == []
        await until(lambda: dog.statistics().stalls == 1)
    finally:
        dog.stop()

    assert len(during) == 1, during
    assert during[0].startswith("the event loop has been blocked for ")
    assert during[0].endswith("s; running: job 4 (resize), job 7 (email)")
    (warning,) = [r for r in taskrt_records(caplog) if DURING in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert warning.job_ids == [4, 7]
    assert warning.stall_seconds > THRESHOLD
    assert blocked_now >= BLOCK

    (after,) = [r for r in taskrt_records(caplog) if AFTER in r.getMessage()]
    assert after.levelno == logging.WARNING
    assert after.getMessage() == f"the event loop was blocked for {after.stall_seconds:.1f}s"
    stats = dog.statistics()
    assert stats.stalls == 1
    assert stats.longest >= BLOCK
    assert stats.longest < BLOCK + 1.0
    assert stats.total == stats.longest == after.stall_seconds
    assert stats.blocked_now == 0.0


async def test_a_loop_that_keeps_running_logs_nothing_and_counts_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dog = LoopWatchdog(THRESHOLD, describe=lambda: [(1, "busy")])
    dog.start()
    try:
        await asyncio.sleep(BLOCK)  # the loop is idle, not blocked: heartbeats run
        stats = dog.statistics()
    finally:
        dog.stop()
    assert taskrt_records(caplog) == []
    assert stats == LoopStallStatistics(stalls=0, longest=0.0, total=0.0, blocked_now=0.0)


async def test_each_stall_is_counted_and_totalled(caplog: pytest.LogCaptureFixture) -> None:
    dog = LoopWatchdog(THRESHOLD)
    dog.start()
    try:
        await stall(dog, THRESHOLD * 2)
        await stall(dog, THRESHOLD * 2)
    finally:
        dog.stop()
    stats = dog.statistics()
    assert stats.stalls == 2
    assert stats.longest >= THRESHOLD * 2
    assert stats.total >= THRESHOLD * 4
    assert stats.total > stats.longest
    assert len(messages(caplog, AFTER)) == 2
    assert all(m.endswith("running: no job running") for m in messages(caplog, DURING))


async def test_stop_ends_the_thread_and_is_idempotent() -> None:
    dog = LoopWatchdog(THRESHOLD)
    assert watchdog_threads() == []  # the constructor starts nothing
    dog.start()
    (thread,) = watchdog_threads()
    assert thread.daemon
    started = time.monotonic()
    dog.stop()
    assert time.monotonic() - started < THRESHOLD  # Event.wait, not a sleep
    assert not thread.is_alive()
    assert watchdog_threads() == []
    dog.stop()
    assert not dog.running


async def test_start_twice_is_refused() -> None:
    dog = LoopWatchdog(THRESHOLD)
    dog.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            dog.start()
    finally:
        dog.stop()


def test_start_after_stop_watches_a_new_loop(caplog: pytest.LogCaptureFixture) -> None:
    dog = LoopWatchdog(THRESHOLD)

    async def watch(stalls: int) -> None:
        dog.start()
        try:
            await asyncio.sleep(0)
            for _ in range(stalls):
                await stall(dog)
        finally:
            dog.stop()

    with asyncio.Runner(debug=True) as runner:
        runner.run(watch(stalls=0))
    with asyncio.Runner(debug=True) as runner:
        runner.run(watch(stalls=1))
    assert dog.statistics().stalls == 1
    assert len(messages(caplog, DURING)) == 1


async def test_describe_racing_a_mutation_is_retried_and_never_kills_the_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    def describe() -> list[tuple[int, str]]:
        nonlocal calls
        calls += 1
        if calls <= 4:  # every attempt of the first stall, the first of the second
            raise RuntimeError("dictionary changed size during iteration")
        return [(9, "resize")]

    dog = LoopWatchdog(THRESHOLD, describe=describe)
    dog.start()
    try:
        await stall(dog)
        (thread,) = watchdog_threads()
        await stall(dog)
        assert thread.is_alive()
    finally:
        dog.stop()
    first, second = messages(caplog, DURING)
    assert first.endswith("running: no job running")
    assert second.endswith("running: job 9 (resize)")
    assert calls == 5


async def test_describe_failing_otherwise_is_logged_and_the_warning_still_goes_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def describe() -> list[tuple[int, str]]:
        raise KeyError("pools")

    dog = LoopWatchdog(THRESHOLD, describe=describe)
    dog.start()
    try:
        await stall(dog)
        assert len(watchdog_threads()) == 1
    finally:
        dog.stop()
    (failure,) = [r for r in taskrt_records(caplog) if r.exc_info is not None]
    assert "describe() failed" in failure.getMessage()
    (during,) = messages(caplog, DURING)
    assert during.endswith("running: no job running")


@pytest.mark.parametrize("threshold", [0, -1.0, math.nan])
def test_a_threshold_that_is_not_positive_is_refused(threshold: float) -> None:
    with pytest.raises(InvalidOption) as caught:
        LoopWatchdog(threshold)
    assert caught.value.field == "threshold"


def test_a_long_job_list_is_cut_short() -> None:
    jobs = [(i, "t") for i in range(13)]
    text = describe_jobs(jobs)
    assert text.startswith("job 0 (t), job 1 (t)")
    assert text.endswith("job 9 (t) and 3 more")
    assert describe_jobs([]) == "no job running"
