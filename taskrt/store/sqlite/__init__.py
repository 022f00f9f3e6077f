"""The SQLite store: the embedded default (see the ``taskrt.store`` notes)."""

from .connection import Connection
from .rows import InsertResult, NewJob, dumps
from .schema import MIGRATIONS, SCHEMA_VERSION
from .store import Store, Synchronous

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Connection",
    "InsertResult",
    "NewJob",
    "Store",
    "Synchronous",
    "dumps",
]
