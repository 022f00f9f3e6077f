"""A stream's options are checked where they are given: a bad buffer, filter or id is
the caller's ``InvalidOption``, and never reaches the broker, where it would fail
every later publish (and with it, other callers' jobs)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from core_support import Gate, collect, make_rt

from taskrt import EventType, InvalidOption, JobContext, JobNotFound, JobStatus, Runtime
from taskrt.events import MAX_BUFFER, Broker

BAD_BUFFERS = ["5", -1, 0, 1.5, True, 10**9, MAX_BUFFER + 1]
NOT_NAMES = [5, ["a"], "", b"a"]
NOT_IDS = [True, "1", 1.0]


def with_steps(rt: Runtime) -> Any:
    """A task that reports progress (a full buffer conflates it) and succeeds."""

    @rt.task
    async def steps(job: JobContext, n: int = 3) -> int:
        for i in range(1, n + 1):
            await job.progress(i, n, f"step {i}")
        return n

    return steps


@pytest.mark.parametrize("buffer", BAD_BUFFERS, ids=repr)
async def test_a_bad_buffer_is_refused_at_subscribe(tmp_path: Path, buffer: Any) -> None:
    rt = make_rt(tmp_path)
    steps = with_steps(rt)
    pool = rt.pool("default")
    pool.pause()
    async with rt:
        job_id = await pool.add(steps)
        for call in (
            lambda: rt.subscribe(buffer=buffer),
            lambda: rt.subscribe(job_id, buffer=buffer),
            lambda: rt.subscribe(pool="default", buffer=buffer),
            lambda: rt.subscribe_workflow(job_id, buffer=buffer),
        ):
            with pytest.raises(InvalidOption) as caught:
                call()
            assert caught.value.field == "buffer"
            assert "expected an integer from 1 to 1000000" in str(caught.value)
        assert rt.broker.subscribers == 0


@pytest.mark.parametrize("field", ["pool", "task"])
@pytest.mark.parametrize("value", NOT_NAMES, ids=repr)
async def test_a_filter_that_is_not_a_name_is_refused(
    tmp_path: Path, field: str, value: Any
) -> None:
    rt = make_rt(tmp_path)
    async with rt:
        with pytest.raises(InvalidOption) as caught:
            rt.subscribe(**{field: value})
        assert caught.value.field == field
        assert "expected a non-empty string or None" in str(caught.value)
        assert rt.broker.subscribers == 0


@pytest.mark.parametrize("job_id", NOT_IDS, ids=repr)
async def test_an_id_that_is_not_an_integer_is_refused(tmp_path: Path, job_id: Any) -> None:
    rt = make_rt(tmp_path)
    async with rt:
        with pytest.raises(InvalidOption) as caught:
            rt.subscribe(job_id)
        assert caught.value.field == "job_id"
        with pytest.raises(InvalidOption) as caught:
            rt.subscribe_workflow(job_id)
        assert caught.value.field == "workflow_id"
        with pytest.raises(InvalidOption) as caught:
            rt.subscribe_workflow(None)  # type: ignore[arg-type]
        assert caught.value.field == "workflow_id"
        assert rt.broker.subscribers == 0


@pytest.mark.parametrize("ident", [2**70, -(2**70), 2**63], ids=repr)
async def test_an_id_beyond_64_bits_is_an_unknown_job(tmp_path: Path, ident: int) -> None:
    rt = make_rt(tmp_path)
    async with rt:
        with pytest.raises(JobNotFound):
            await collect(rt.subscribe(ident))
        with pytest.raises(JobNotFound):
            await collect(rt.subscribe_workflow(ident))
        assert rt.broker.subscribers == 0


# -- the harm: one subscriber's bad value must not break anyone's jobs ----------------


@pytest.mark.parametrize("buffer", BAD_BUFFERS, ids=repr)
async def test_jobs_still_run_and_finish_after_refused_subscribes(
    tmp_path: Path, buffer: Any
) -> None:
    """Refused while a job runs (its next progress would reach the buffer), for that
    job and for every job: the running job and the jobs added after still succeed."""
    rt = make_rt(tmp_path)
    gate = Gate()

    @rt.task
    async def steps(job: JobContext, n: int = 3) -> int:
        await gate()
        for i in range(1, n + 1):
            await job.progress(i, n, f"step {i}")
        return n

    pool = rt.pool("default")
    async with rt:
        running = await pool.add(steps)
        await gate.wait_entered(1)
        with contextlib.suppress(InvalidOption):
            rt.subscribe(running, buffer=buffer)
        with contextlib.suppress(InvalidOption):
            rt.subscribe(buffer=buffer)
        with contextlib.suppress(InvalidOption):
            rt.subscribe(task="steps", buffer=buffer)
        gate.open()
        later = await pool.add(steps, 2)
        for job_id, n in ((running, 3), (later, 2)):
            info = await rt.wait(job_id, timeout=5)
            assert (info.status, info.result, info.current) == (JobStatus.SUCCESS, n, n)


@pytest.mark.parametrize("buffer", ["5", -1], ids=repr)
async def test_a_workflow_still_runs_after_a_refused_subscribe_to_it(
    tmp_path: Path, buffer: Any
) -> None:
    rt = make_rt(tmp_path)
    steps = with_steps(rt)
    gate = Gate()

    @rt.task
    async def first(job: JobContext) -> int:
        await gate()
        await job.progress(1, 1)
        return 3  # the next step's ``n``

    async with rt:
        flow = await rt.chain(first.s(), steps.s())
        await gate.wait_entered(1)
        follower = None
        with contextlib.suppress(InvalidOption):
            stream = rt.subscribe_workflow(flow.id, buffer=buffer)
            follower = asyncio.create_task(collect(stream, timeout=5))
            await asyncio.sleep(0.05)  # a cancellation target: the stream subscribes
        gate.open()
        try:
            info = await rt.wait(flow.jobs[-1], timeout=5)
        finally:
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(BaseException):
                    await follower
        assert (info.status, info.result) == (JobStatus.SUCCESS, 3)
        assert (await rt.workflow(flow.id)).status is JobStatus.SUCCESS


# -- good values still work ------------------------------------------------------------


@pytest.mark.parametrize("buffer", [None, 1, 4, MAX_BUFFER], ids=repr)
async def test_a_good_buffer_streams_a_job_to_its_end(tmp_path: Path, buffer: int | None) -> None:
    rt = make_rt(tmp_path)
    steps = with_steps(rt)
    pool = rt.pool("default")
    pool.pause()
    async with rt:
        job_id = await pool.add(steps)
        stream = rt.subscribe(job_id, buffer=buffer)
        wide = rt.subscribe(pool="default", task="steps", buffer=buffer)
        assert stream.subscription.maxsize == (buffer or rt.broker.buffer)
        assert (await anext(stream)).type is EventType.SNAPSHOT
        pool.resume()
        events = await collect(stream)
        wide.close()
        seen = await collect(wide)
    assert events[-1].type is EventType.SUCCESS
    assert events[-1].data["result"] == 3
    assert seen[-1].type is EventType.SUCCESS
    assert {e.job_id for e in seen} == {job_id}


async def test_a_good_buffer_streams_a_workflow_to_its_end(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    steps = with_steps(rt)
    async with rt:
        flow = await rt.chain(steps.s(2), steps.s())
        events = await collect(rt.subscribe_workflow(flow.id, buffer=1))
    assert events[0].type is EventType.SNAPSHOT
    last = events[-1]
    if last.type is EventType.SNAPSHOT:  # the flow ended before (or while) it was read
        assert last.data["workflow"]["status"] == "SUCCESS"
    else:
        assert (last.job_id, last.type) == (flow.jobs[-1], EventType.SUCCESS)


# -- the broker refuses a bad buffer itself (defence in depth) -------------------------


@pytest.mark.parametrize("maxsize", BAD_BUFFERS, ids=repr)
async def test_the_broker_refuses_a_bad_buffer_and_registers_nothing(maxsize: Any) -> None:
    broker = Broker()
    for job_id in (None, 1):
        with pytest.raises(InvalidOption) as caught:
            broker.subscribe(job_id, maxsize=maxsize)
        assert caught.value.field == "maxsize"
    assert broker.subscribers == 0
    assert broker.followed_jobs() == []
    assert not broker.has_wide()
    with pytest.raises(InvalidOption) as caught:
        Broker(buffer=maxsize)
    assert caught.value.field == "buffer"


async def test_the_broker_takes_a_good_buffer() -> None:
    broker = Broker(buffer=3)
    assert broker.subscribe(1).maxsize == 3
    assert broker.subscribe(1, maxsize=1).maxsize == 1
    assert broker.subscribe(maxsize=MAX_BUFFER).maxsize == MAX_BUFFER
    assert broker.subscribers == 3


def test_the_buffer_bound_is_the_runtime_setting_bound() -> None:
    Runtime(":memory:", subscriber_buffer=MAX_BUFFER, replay=MAX_BUFFER)  # the largest taken
    with pytest.raises(InvalidOption):
        Runtime(":memory:", subscriber_buffer=MAX_BUFFER + 1)
