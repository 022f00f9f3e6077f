"""The files taskrt keeps beside a SQLite database, and the names that open one.

Design note: **a path names a file.** Python's ``sqlite3`` (and so
``aiosqlite``) hands a name to SQLite as it is, and a SQLite built to read
URIs (Debian's, and most others) reads a name that starts with ``file:`` as a
URI even without ``uri=True``: ``file:app.db`` opens ``app.db``. Everything
else taskrt does with the path treats it as the file it names: the ownership
lock (``lock_path_of``), the relay's socket, the CLI's look at the file. So
``Runtime("app.db")`` and ``Runtime("file:app.db")`` opened one database
with two locks, and both owned it: each recovered the other's running jobs
and ran them again. ``check_path`` refuses such a name (``path_problem`` says why), and the empty one
(SQLite's private temporary database, a new one per connection), where the
store is made; ``:memory:`` is the one special name taskrt opens.
"""

from __future__ import annotations

import os
import urllib.parse

from ...errors import InvalidOption


def check_path(path: str) -> None:
    """Refuse (``InvalidOption``) a name SQLite would not open as the file it names."""
    problem = path_problem(path)
    if problem is not None:
        raise InvalidOption("path", problem)


def path_problem(path: str) -> str | None:
    """Why SQLite would not open ``path`` as the file it names (module docstring):
    it starts with ``file:`` (a URI), or it is empty; None for a file's path."""
    if not path:
        return (
            "expected a SQLite file's path, ':memory:' or a postgresql:// URL; found an "
            "empty name (SQLite opens a private temporary database for each connection)"
        )
    if path.startswith("file:"):
        named = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        instead = f"{named!r}, the path it names" if named else "the file's path"
        return (
            f"{path!r} is a SQLite URI, and taskrt opens a path as a file name: write "
            f"{instead} (or {'./' + path!r} for a file whose name starts with 'file:')"
        )
    return None


def lock_path_of(path: str) -> str:
    """The ownership lock's file of the database at ``path``: named after its real
    path, so every name that opens the file (a symbolic link, a relative path)
    finds the same lock (``taskrt.ownership`` note 7)."""
    return os.path.realpath(path) + ".lock"
