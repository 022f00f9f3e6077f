"""Planned rows inserted by ``insert_rows`` (store note 17): a run of jobs alike but
for their arguments goes in as one statement reading them from JSON, the rest with
``executemany``; either way every column holds what ``INSERT_JOB`` would store, in
value and in type, and the id sequence follows."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from taskrt.store.sqlite import batch
from taskrt.store.sqlite.schema import migrate
from taskrt.store.sqlite.sql import INSERT_JOB

# Arguments JSON must carry through untouched: quotes, backslashes, an escaped NUL,
# text beyond ASCII and beyond the BMP, nesting, floats that print long.
TRICKY = [
    json.dumps(["plain"]),
    json.dumps(['say "hi"', "back\\slash", "tab\tnew\nline"]),
    json.dumps(["nul \u0000 inside", "é ü 漢字 🎉"], ensure_ascii=False),
    json.dumps([{"deep": [1, [2, [3, {"x": None}]]]}, 0.1 + 0.2, 1e300, -0.0]),
    "[]",
    json.dumps([12345678901234567890]),
]


def _row(job_id: int, args: str, kwargs: str = "{}", **changes: object) -> tuple[object, ...]:
    row: dict[str, object] = {
        "id": job_id,
        "task": "send",
        "pool": "mail",
        "args": args,
        "kwargs": kwargs,
        "max_attempts": 3,
        "priority": 0,
        "metadata": '{"tenant":"a"}',
        "unique_key": None,
        "created_at": 1000.25,
        "run_at": 1000.25,
        "timeout": 30.0,
        "retry": None,
        "external": 0,
        "deadline": None,
        "lock_key": None,
    }
    row.update(changes)
    return tuple(row.values())


def _db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, str(path))
    return conn


def _stored(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    columns = [r[1] for r in conn.execute("PRAGMA table_info(jobs)")]
    typed = ", ".join(f"{c}, typeof({c})" for c in columns)
    return conn.execute(f"SELECT {typed} FROM jobs ORDER BY id").fetchall()


def _inserted(path: Path, rows: list[tuple[object, ...]]) -> tuple[sqlite3.Connection, list[str]]:
    """A new database with ``rows`` inserted by ``insert_rows``, and the statements run."""
    conn = _db(path)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    conn.execute("BEGIN")
    batch.insert_rows(conn, rows)
    conn.execute("COMMIT")
    conn.set_trace_callback(None)
    return conn, statements


ROWS = [
    # A run of an add_many: alike but for the arguments, ids following each other.
    *(_row(1 + i, args, json.dumps({"n": i})) for i, args in enumerate(TRICKY)),
    # Another task's jobs, each unlike the next: executemany.
    _row(7, "[1]", task="other", created_at=1001.0),
    _row(8, "[2]", task="other", created_at=1002.0),
    # A run with a deadline and a lock key, broken by a gap in the ids (a next_id hook).
    *(_row(9 + i, f"[{i}]", deadline=2000.5, lock_key="k", priority=-2) for i in range(5)),
    *(_row(20 + i, f"[{i}]", deadline=2000.5, lock_key="k", priority=-2) for i in range(4)),
    # Alike but for the pool: two runs.
    *(_row(24 + i, "[]", pool="a") for i in range(4)),
    *(_row(28 + i, "[]", pool="b") for i in range(4)),
]


def test_rows_go_in_as_insert_job_stores_them(tmp_path: Path) -> None:
    expected = _db(tmp_path / "reference.db")
    expected.execute("BEGIN")
    expected.executemany(INSERT_JOB, ROWS)
    expected.execute("COMMIT")

    conn, statements = _inserted(tmp_path / "runs.db", ROWS)
    assert _stored(conn) == _stored(expected)
    sequence = "SELECT seq FROM sqlite_sequence WHERE name = 'jobs'"
    assert conn.execute(sequence).fetchone() == (31,)
    # The runs of 6, 5, 4, 4 and 4 rows each went in as one statement; the two
    # rows of the other task with executemany.
    from_json = [s for s in statements if "json_each" in s]
    assert len(from_json) == 5
    assert (
        sum(1 for s in statements if s.startswith("INSERT INTO jobs") and "json_each" not in s) == 2
    )


def test_a_run_of_big_arguments_is_cut_into_several_statements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch, "JSON_RUN_CHARS", 1000)
    rows = [_row(1 + i, json.dumps(["x" * 300])) for i in range(12)]
    conn, statements = _inserted(tmp_path / "big.db", rows)
    # Each run ends once it carries 1,000 characters: 4 rows of 300 (and "{}").
    assert sum(1 for s in statements if "json_each" in s) == 3
    stored = conn.execute("SELECT id, args FROM jobs ORDER BY id").fetchall()
    assert stored == [(1 + i, json.dumps(["x" * 300])) for i in range(12)]
