"""Rows in and out: what an insert carries, JSON text, and rows read back as values."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ..limits import EXACT_FLOAT_BOUND
from ..models import JobInfo, JobStatus, ScheduleInfo
from .protocol import CancelledChild

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def dumps(value: Any) -> str:
    """Compact JSON; raises TypeError/ValueError for what JSON cannot hold."""
    if not value and (value == () or value == [] or value == {}):
        return "{}" if isinstance(value, dict) else "[]"
    return _encode(value)


def json_path(key: str) -> str:
    """SQLite's JSON path to member ``key``: only for a key with nothing to escape
    (``sqlite.store._PLAIN_KEY``); SQLite reads no escape in a path's label."""
    return f'$."{key}"'


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


_STATUS = {s.value: s for s in JobStatus}


def _array(text: str) -> tuple[Any, ...]:
    return () if text == "[]" else tuple(json.loads(text))


def _object(text: str) -> dict[str, Any]:
    return {} if text == "{}" else json.loads(text)


# Each JobInfo field's slot setter, in the fields' order (``_job_info``).
_PUT_FIELDS = tuple(getattr(JobInfo, name).__set__ for name in JobInfo.__dataclass_fields__)


def _job_info(values: tuple[Any, ...]) -> JobInfo:
    """A ``JobInfo`` of every field's value, in order, set slot by slot: a frozen
    dataclass's ``__init__`` looks ``object.__setattr__`` up again for each of its
    33 fields (7.6 µs a job; this, 3.9)."""
    info: JobInfo = object.__new__(JobInfo)
    for put, value in zip(_PUT_FIELDS, values, strict=True):
        put(info, value)
    return info


def _number(value: float) -> float:
    """A progress figure as reported: both backends store it as a float, so a whole
    one (0.0, 3.0) is read back as the integer the job's state in memory holds. One
    from 2**53 on stays a float: the runtime makes such an integer a float at once
    (``taskrt.limits`` note 1)."""
    if value.__class__ is float and value.is_integer() and -_EXACT < value < _EXACT:
        return int(value)
    return value


_EXACT = float(EXACT_FLOAT_BOUND)  # below it, every whole float is exactly one integer


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
    return _job_info(
        (
            id_,
            task,
            pool,
            _STATUS[status],
            _array(args),
            _object(kwargs),
            attempts,
            max_attempts,
            _number(current),
            _number(total),
            message,
            _loads(result),
            error,
            priority,
            _object(metadata),
            unique_key,
            created_at,
            run_at,
            started_at,
            finished_at,
            timeout,
            recoveries,
            seq,
            _loads(retry),
            deadline,
            step,
            () if steps is None else tuple(json.loads(steps)),
            lock_key,
            waiting_reason,
            node,
            workflow,
            batch_key,
            batch,
        )
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


def recovered_ends(rows: list[Any]) -> list[CancelledChild]:
    """The jobs a recovery ended (``queries.RETURNING_ENDED``), among the rows a
    script returned: orphaned (FAILURE), or CANCELLED as a cancel asked."""
    return [
        CancelledChild(
            job_id=int(r["ended_id"]),
            task=str(r["task"]),
            pool=str(r["pool"]),
            seq=int(r["ended_seq"]),
            finished_at=float(r["finished_at"]),
            error=r["error"],
            status=str(r["status"]),
        )
        for r in rows
        if "ended_id" in r.keys()
    ]


def kept_orphans(rows: list[Any]) -> list[JobInfo]:
    """The orphans a recovery left RUNNING (store note 22: ``kept_orphan`` rows, which
    start with ``JOB_COLUMNS``), among the rows a script returned."""
    return [row_to_job(r) for r in rows if "kept_orphan" in r.keys()]
