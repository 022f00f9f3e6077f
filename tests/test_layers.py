"""The storage boundary: only the SQLite store imports a database driver or holds SQL.

Everything above the store talks to it through its operations (add, start,
succeed, recover, schedules, ...), so a second backend plugs in at one place.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "taskrt"
STORE = "store/sqlite/"  # the SQLite implementation: the one place for a driver and SQL
DRIVERS = {"sqlite3", "aiosqlite", "asyncpg"}
SQL = re.compile(
    r"\b(SELECT\s+.+\s+FROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM"
    r"|CREATE\s+(TABLE|INDEX|UNIQUE)|SAVEPOINT|ROLLBACK|PRAGMA|BEGIN\s+IMMEDIATE)\b",
    re.DOTALL,  # upper case, as SQL is written here: prose may say 'select ... from'
)


def offences(source: str) -> list[str]:
    """Driver imports and SQL string literals in one module's source."""
    found: list[str] = []
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in DRIVERS]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in DRIVERS:
                found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in docstrings:  # prose about the store may name its SQL
                continue
            match = SQL.search(node.value)
            if match:
                found.append(f"SQL {match.group(0)[:40]!r} (line {node.lineno})")
    return found


def modules() -> list[Path]:
    return sorted(
        p for p in PACKAGE.rglob("*.py") if not p.relative_to(PACKAGE).as_posix().startswith(STORE)
    )


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_only_the_store_holds_sql_or_imports_a_driver(path: Path) -> None:
    assert offences(path.read_text(encoding="utf-8")) == []


def test_the_check_finds_what_it_looks_for() -> None:
    source = (
        '"""Notes may say PRAGMA user_version."""\n'
        "import sqlite3\n"
        "from aiosqlite import connect\n"
        'Q = "SELECT id FROM jobs WHERE x = ?"\n'
        'U = "UPDATE jobs SET a = 1"\n'
        'ok = "DELETE"  # an HTTP method, not SQL\n'
        'fine = "select a pool from the list"\n'
    )
    assert offences(source) == [
        "import sqlite3",
        "from aiosqlite import ...",
        "SQL 'SELECT id FROM' (line 4)",
        "SQL 'UPDATE jobs SET' (line 5)",
    ]
