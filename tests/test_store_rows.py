"""A stored row read back as a job, field by field (``taskrt.store.rows``), and a job's
live state built from that record (``taskrt.context.JobState``): both copy every
field by position, so a field out of place would show here first."""

from __future__ import annotations

import dataclasses

import pytest

from taskrt import Runtime
from taskrt.context import JobState
from taskrt.models import JobInfo, JobStatus
from taskrt.store.queries import JOB_COLUMNS
from taskrt.store.rows import row_to_job
from taskrt.transitions import retry_policy_of

# Every column a value of its own, in JOB_COLUMNS' order.
ROW = {
    "id": 7,
    "task": "send",
    "pool": "mail",
    "status": "RUNNING",
    "args": "[1, 2]",
    "kwargs": '{"to": "ada"}',
    "attempts": 2,
    "max_attempts": 5,
    "current": 3.0,
    "total": 9.0,
    "message": "sending",
    "result": '{"ok": true}',
    "error": "boom",
    "priority": 4,
    "metadata": '{"tenant": "x"}',
    "unique_key": "mail:ada",
    "created_at": 10.0,
    "run_at": 11.0,
    "started_at": 12.0,
    "finished_at": 13.0,
    "timeout": 30.0,
    "retry": '{"backoff": "1m"}',
    "recoveries": 1,
    "seq": 6,
    "deadline": 99.0,
    "step": "render",
    "steps": '[{"name": "render", "current": 3, "total": 9}]',
    "lock_key": "ada",
    "waiting_reason": "locked",
    "node": "n1",
    "workflow": 3,
    "batch_key": "k",
    "batch": 5,
}

EXPECTED = JobInfo(
    id=7,
    task="send",
    pool="mail",
    status=JobStatus.RUNNING,
    args=(1, 2),
    kwargs={"to": "ada"},
    attempts=2,
    max_attempts=5,
    current=3.0,
    total=9.0,
    message="sending",
    result={"ok": True},
    error="boom",
    priority=4,
    metadata={"tenant": "x"},
    unique_key="mail:ada",
    created_at=10.0,
    run_at=11.0,
    started_at=12.0,
    finished_at=13.0,
    timeout=30.0,
    recoveries=1,
    seq=6,
    retry_policy={"backoff": "1m"},
    deadline=99.0,
    step="render",
    steps=({"name": "render", "current": 3, "total": 9},),
    lock="ada",
    waiting_reason="locked",
    node="n1",
    workflow=3,
    batch_key="k",
    batch=5,
)


def test_every_column_reads_back_into_its_own_field() -> None:
    assert list(ROW) == JOB_COLUMNS.split(", ")
    info = row_to_job(tuple(ROW.values()))  # type: ignore[arg-type]
    assert info == EXPECTED
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.seq = 8  # type: ignore[misc]  # frozen, as any JobInfo


def test_a_live_state_carries_every_field_of_the_record() -> None:
    rt = Runtime(":memory:")

    @rt.task(name="send")
    async def send() -> None:
        return None

    spec = rt.tasks["send"]
    state = JobState(EXPECTED, spec, retry_policy_of(EXPECTED, spec))
    assert state.info() is EXPECTED  # the record itself, while nothing changed
    state.snapshot = None
    assert state.info() == EXPECTED  # built again from the state's own fields
