"""The SQLite store: the embedded default (see the ``taskrt.store`` notes)."""

from ..protocol import InsertResult, NewJob
from ..rows import dumps
from .connection import Connection
from .files import check_path, lock_path_of, path_problem
from .look import FileLook, look
from .schema import MIGRATIONS, SCHEMA_VERSION
from .store import Store, Synchronous

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Connection",
    "FileLook",
    "InsertResult",
    "NewJob",
    "Store",
    "Synchronous",
    "check_path",
    "dumps",
    "lock_path_of",
    "look",
    "path_problem",
]
