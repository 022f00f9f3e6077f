"""The files taskrt keeps beside a SQLite database."""

from __future__ import annotations

import os


def lock_path_of(path: str) -> str:
    """The ownership lock's file of the database at ``path``: named after its real
    path, so every name that opens the file (a symbolic link, a relative path)
    finds the same lock (``taskrt.ownership`` note 7)."""
    return os.path.realpath(path) + ".lock"
