"""Rows in and out: what an insert carries, JSON text, and rows read back as values."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ...models import JobInfo, JobStatus, ScheduleInfo

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


def row_to_job(row: sqlite3.Row) -> JobInfo:
    return JobInfo(
        id=row["id"],
        task=row["task"],
        pool=row["pool"],
        status=JobStatus(row["status"]),
        args=tuple(json.loads(row["args"])),
        kwargs=json.loads(row["kwargs"]),
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        current=row["current"],
        total=row["total"],
        message=row["message"],
        result=_loads(row["result"]),
        error=row["error"],
        priority=row["priority"],
        metadata=json.loads(row["metadata"]),
        unique_key=row["unique_key"],
        created_at=row["created_at"],
        run_at=row["run_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        timeout=row["timeout"],
        recoveries=row["recoveries"],
        seq=row["seq"],
        retry_policy=_loads(row["retry"]),
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
