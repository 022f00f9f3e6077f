"""Rows in and out: what an insert carries, JSON text, and rows read back as values."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ..models import JobInfo, JobStatus, ScheduleInfo

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def dumps(value: Any) -> str:
    """Compact JSON; raises TypeError/ValueError for what JSON cannot hold."""
    if not value and (value == () or value == [] or value == {}):
        return "{}" if isinstance(value, dict) else "[]"
    return _encode(value)


def json_path(key: str) -> str:
    return "$." + '"' + key.replace('"', '\\"') + '"'


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


_STATUS = {s.value: s for s in JobStatus}


def _array(text: str) -> tuple[Any, ...]:
    return () if text == "[]" else tuple(json.loads(text))


def _object(text: str) -> dict[str, Any]:
    return {} if text == "{}" else json.loads(text)


def row_to_job(row: sqlite3.Row) -> JobInfo:
    """A row that starts with ``JOB_COLUMNS``, in their order, as a ``JobInfo``.

    By position, and without the JSON parser for the usual empty arguments and
    metadata: reading the waiting window back costs this per job.
    """
    (
        id_,
        task,
        pool,
        status,
        args,
        kwargs,
        attempts,
        max_attempts,
        current,
        total,
        message,
        result,
        error,
        priority,
        metadata,
        unique_key,
        created_at,
        run_at,
        started_at,
        finished_at,
        timeout,
        retry,
        recoveries,
        seq,
        deadline,
        step,
        steps,
        lock_key,
        waiting_reason,
        node,
        workflow,
        batch_key,
        batch,
    ) = tuple(row)[:33]
    return JobInfo(
        id=id_,
        task=task,
        pool=pool,
        status=_STATUS[status],
        args=_array(args),
        kwargs=_object(kwargs),
        attempts=attempts,
        max_attempts=max_attempts,
        current=current,
        total=total,
        message=message,
        result=_loads(result),
        error=error,
        priority=priority,
        metadata=_object(metadata),
        unique_key=unique_key,
        created_at=created_at,
        run_at=run_at,
        started_at=started_at,
        finished_at=finished_at,
        timeout=timeout,
        recoveries=recoveries,
        seq=seq,
        retry_policy=_loads(retry),
        deadline=deadline,
        step=step,
        steps=() if steps is None else tuple(json.loads(steps)),
        lock=lock_key,
        waiting_reason=waiting_reason,
        node=node,
        workflow=workflow,
        batch_key=batch_key,
        batch=batch,
    )


def row_to_schedule(row: sqlite3.Row) -> ScheduleInfo:
    return ScheduleInfo(
        name=row["name"],
        task=row["task"],
        expression=row["expression"],
        args=tuple(json.loads(row["args"])),
        kwargs=json.loads(row["kwargs"]),
        pool=row["pool"],
        tz=row["tz"],
        misfire=row["misfire"],
        paused=bool(row["paused"]),
        next_run_at=row["next_run_at"],
        last_run_at=row["last_run_at"],
        last_job_id=row["last_job_id"],
        last_error=row["last_error"],
        fires=row["fires"],
        failures=row["failures"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
