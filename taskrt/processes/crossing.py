"""What crosses between a pool and its worker processes (``taskrt.processes`` notes 3, 4).

Frames of JSON (a 4-byte big-endian length, then the body), the errors a
child's ``error`` frame becomes in the parent, and the (module, qualified
name) a child finds a handler by.
"""

from __future__ import annotations

import json
import signal
import struct
import sys
import weakref
from collections.abc import Callable
from typing import Any

from ..definitions import Task
from ..errors import Fatal, Retry, SerializationError, TaskrtError

LENGTH = struct.Struct("!I")


def encode_frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()  # ASCII: \u escapes
    return LENGTH.pack(len(body)) + body


# -- what crosses back as an error (note 4) ---------------------------------------------


class Crossed:
    """Mixin of the exceptions that stand for what happened in a worker process.

    ``remote_traceback``: the child's traceback text (``None`` when there is
    none, as for a child that died); the pool stores it as the attempt's.
    """

    remote_traceback: str | None = None


class WorkerError(Crossed, TaskrtError):
    """An attempt in a worker process failed (its message says how)."""

    code = "worker_error"

    def __init__(self, message: str, remote_traceback: str | None = None) -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


class HandlerError(WorkerError):
    """The handler raised in its worker process: ``"ValueError: bad input"``."""

    code = "handler_error"


class HandlerNotImportable(WorkerError):
    """The handler cannot be sent to a worker process by reference (note 3)."""

    code = "handler_not_importable"


class WorkerDied(WorkerError):
    """The worker process died while it ran the job (note 7)."""

    code = "worker_died"

    def __init__(self, job_id: int, exitcode: int | None, pid: int | None = None) -> None:
        self.job_id = job_id
        self.exitcode = exitcode
        self.pid = pid
        super().__init__(f"worker process died ({how(exitcode)}) while running job {job_id}")


class _CrossedFatal(Crossed, Fatal):
    def __init__(self, message: str, remote_traceback: str | None) -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


class _CrossedRetry(Crossed, Retry):
    def __init__(
        self, message: str, delay: float | None, record_error: bool, remote_traceback: str | None
    ) -> None:
        super().__init__(message, delay=delay, record_error=record_error)
        self.remote_traceback = remote_traceback


class _CrossedSerialization(Crossed, SerializationError):
    pass


def how(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode >= 0:
        return f"exit code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    if exitcode == -signal.SIGKILL:
        return f"killed by {name}: out of memory, or killed from outside"
    return f"killed by {name}"


def rebuilt(message: dict[str, Any]) -> BaseException:
    """The parent's exception for a child's ``error`` frame."""
    kind = message["kind"]
    text: str = message["text"]
    tb: str | None = message.get("traceback")
    if kind == "fatal":
        return _CrossedFatal(text, tb)
    if kind == "retry":
        return _CrossedRetry(text, message.get("delay"), bool(message.get("record_error")), tb)
    if kind == "result":
        return _CrossedSerialization("the result", text)
    if kind == "load":
        return HandlerNotImportable(text, tb)
    return HandlerError(text, tb)


# -- handlers by reference (note 3) -----------------------------------------------------

_REFERENCES: weakref.WeakKeyDictionary[Any, tuple[str, str]] = weakref.WeakKeyDictionary()


def reference(task: str, handler: Callable[..., Any]) -> tuple[str, str]:
    """The (module, qualified name) the child finds ``handler`` by; raises
    ``HandlerNotImportable`` saying why there is none."""
    try:
        return _REFERENCES[handler]
    except (KeyError, TypeError):
        pass
    module = getattr(handler, "__module__", None)
    name = getattr(handler, "__qualname__", None)

    def refuse(why: str) -> HandlerNotImportable:
        shown = f"{module}.{name}" if module and name else repr(handler)
        return HandlerNotImportable(
            f"task {task!r}: its handler {shown} cannot be sent to a worker process by "
            f"reference: {why}; process pools need module-level functions"
        )

    if not isinstance(module, str) or not isinstance(name, str):
        raise refuse("it has no module and qualified name (a partial or a callable object?)")
    if "<lambda>" in name:
        raise refuse("it is a lambda")
    if "<locals>" in name:
        raise refuse("it is defined inside a function (a closure or a local function)")
    found: Any = sys.modules.get(module)
    if module == "__main__" and getattr(found, "__file__", None) is None:
        raise refuse("it is defined in __main__ of an interactive session")
    for part in name.split("."):
        found = getattr(found, part, None)
    if isinstance(found, Task):
        found = found.spec.handler
    if found is not handler:
        raise refuse(f"{module}.{name} does not name it (a bound method, or a name reused?)")
    ref = (module, name)
    try:
        _REFERENCES[handler] = ref
    except TypeError:  # not weakly referable: checked each time
        pass
    return ref
