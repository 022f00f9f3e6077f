"""Helpers shared by the core behaviour tests (``tests/test_core_*.py``).

Not fixtures: plain functions, imported explicitly, so that ``conftest.py``
stays generic.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskrt import Event, Runtime


def db_file(tmp_path: Path) -> str:
    return str(tmp_path / "app.db")


def make_rt(tmp_path: Path, **options: Any) -> Runtime:
    """A runtime on a real SQLite file under ``tmp_path``."""
    return Runtime(db_file(tmp_path), **options)


def rows(path: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the database from a separate, plain sqlite3 connection (what is committed)."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute(sql, params).fetchall())
    finally:
        conn.close()


def write(path: str, sql: str, params: tuple[Any, ...] = ()) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds (checked on every loop turn); fail after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


async def collect(stream: Any, timeout: float = 5.0) -> list[Event]:
    """Every event of a stream that ends (a one-job subscription)."""
    out: list[Event] = []
    async with asyncio.timeout(timeout):
        async for event in stream:
            out.append(event)
    return out


class Gate:
    """Counts handlers inside it and holds them until ``open()``."""

    def __init__(self) -> None:
        self.inside = 0
        self.entered = 0
        self.max_inside = 0
        self._open = asyncio.Event()
        self._changed = asyncio.Event()

    async def __call__(self) -> None:
        self.inside += 1
        self.entered += 1
        self.max_inside = max(self.max_inside, self.inside)
        self._changed.set()
        try:
            await self._open.wait()
        finally:
            self.inside -= 1

    async def wait_entered(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while self.entered < n:
                self._changed.clear()
                await self._changed.wait()

    def open(self) -> None:
        self._open.set()
