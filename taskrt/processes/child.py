"""A worker process: what runs in the child (``taskrt.processes`` notes 4, 5, 8)."""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import inspect
import json
import os
import queue
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, cast

from ..context import DONE
from ..definitions import Task
from ..errors import Fatal, Retry, describe_error, format_traceback, is_error, message_of
from ..limits import Limits, check_names, check_progress
from .crossing import LENGTH, encode_frame

PARENT_DECIDES = frozenset({signal.SIGINT, signal.SIGTERM})
"""The signals a worker process leaves to its parent (note 8)."""

_PR_SET_PDEATHSIG = 1  # prctl's option, <linux/prctl.h>

# -- the child ----------------------------------------------------------------------------


class ChildContext:
    """What a ``"context"``-style handler gets in a worker process: ``JobContext``'s
    surface for sync handlers (note 5). ``progress`` returns an awaitable that is
    already done, so awaiting it is optional."""

    __slots__ = (
        "_cancelled",
        "_channel",
        "_limits",
        "_run",
        "args",
        "attempt",
        "id",
        "kwargs",
        "max_attempts",
        "metadata",
        "pool",
        "task",
    )

    def __init__(
        self,
        job: dict[str, Any],
        run: int,
        channel: _ChildChannel,
        cancelled: threading.Event,
        limits: Limits,
    ) -> None:
        self.id: int = job["id"]
        self.task: str = job["task"]
        self.pool: str = job["pool"]
        self.attempt: int = job["attempt"]  # 1-based (at-least-once: it may be > 1)
        self.max_attempts: int | None = job["max_attempts"]
        self.args: tuple[Any, ...] = tuple(job["args"])
        self.kwargs: dict[str, Any] = job["kwargs"]
        self.metadata: dict[str, Any] = job["metadata"]
        self._run = run
        self._channel = channel
        self._cancelled = cancelled
        self._limits = limits

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled or timed out (or the runtime stops): return."""
        return self._cancelled.is_set()

    def progress(
        self,
        current: float,
        total: float | None = None,
        message: str | None = None,
        *,
        step: str | None = None,
    ) -> Awaitable[None]:
        """Report progress to the parent (``step``: the part of the work it is about, as
        for ``JobContext.progress``); a bad value raises ``InvalidOption`` here."""
        current, total, message, step = check_progress(current, total, message, self._limits, step)
        self._channel.send(
            {
                "op": "progress",
                "run": self._run,
                "current": current,
                "total": total,
                "message": message,
                "step": step,
            }
        )
        return DONE

    def __repr__(self) -> str:
        return f"<ChildContext job={self.id} task={self.task!r} attempt={self.attempt}>"


class _ChildChannel:
    """The child's end: blocking reads (one thread), writes under a lock (note 4)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def recv(self) -> dict[str, Any]:
        (size,) = LENGTH.unpack(self._exactly(LENGTH.size))
        message: dict[str, Any] = json.loads(self._exactly(size))
        return message

    def _exactly(self, size: int) -> bytes:
        buf = bytearray()
        while len(buf) < size:
            chunk = self._sock.recv(min(size - len(buf), 1 << 20))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def send(self, message: dict[str, Any]) -> None:
        self.send_frame(encode_frame(message))

    def send_frame(self, frame: bytes) -> None:
        with self._lock:
            self._sock.sendall(frame)


def child_main(sock: socket.socket, parent: int) -> None:
    """A worker process of ``parent`` (its pid): run what the parent sends, one at a
    time, until end-of-file."""
    _die_with(parent)
    for signum in PARENT_DECIDES:  # note 8
        signal.signal(signum, _parent_decides)
    # Blocked since the parent started us (workers._signals_held): one that came
    # during the imports is pending and reaches the handler now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, PARENT_DECIDES)
    os.register_at_fork(after_in_child=_usual_signals)
    channel = _ChildChannel(sock)
    runs: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    flags: dict[int, threading.Event] = {}  # run number -> its cancel flag (GIL-atomic ops)

    def read() -> None:
        while True:
            try:
                message = channel.recv()
            except (EOFError, OSError):
                os._exit(0)  # the parent closed our channel or died: go now (note 8)
            if message["op"] == "run":
                flags[message["run"]] = threading.Event()
                runs.put(message)
            elif message["op"] == "cancel":
                flag = flags.get(message["run"])
                if flag is not None:
                    flag.set()

    threading.Thread(target=read, name="taskrt-worker-reader", daemon=True).start()
    while True:
        message = runs.get()
        try:
            _run_one(channel, message, flags[message["run"]])
        finally:
            flags.pop(message["run"], None)


def _die_with(parent: int) -> None:
    """Die as soon as the parent dies (note 8). On Linux the kernel kills us, even
    in a long C call that holds the GIL; elsewhere the reader thread, which needs
    the GIL, alone sees the parent's end."""
    if sys.platform == "linux":
        prctl = ctypes.CDLL(None).prctl
        prctl.argtypes = (ctypes.c_int, ctypes.c_ulong)
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)  # it died before we asked: we are another process's child now


def _parent_decides(signum: int, frame: Any) -> None:
    """SIGINT and SIGTERM do nothing in a worker process (note 8). A handler, not
    SIG_IGN, which a process the job starts would inherit (and a pool of its own
    could then never terminate its workers): exec resets a handler."""


def _usual_signals() -> None:
    """In a process forked by a job (no exec): the usual SIGINT and SIGTERM."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


_LOADED: dict[tuple[str, str], Callable[..., Any]] = {}


def _load(module: str, name: str) -> Callable[..., Any]:
    handler = _LOADED.get((module, name))
    if handler is None:
        found: Any = importlib.import_module(module)
        for part in name.split("."):
            found = getattr(found, part)
        if isinstance(found, Task):
            found = found.spec.handler
        handler = _LOADED[(module, name)] = found
    return handler


def _run_one(channel: _ChildChannel, message: dict[str, Any], cancelled: threading.Event) -> None:
    run: int = message["run"]
    job: dict[str, Any] = message["job"]
    try:
        handler = _load(message["module"], message["name"])
    except BaseException as exc:
        channel.send(
            {
                "op": "error",
                "run": run,
                "kind": "load",
                "text": f"task {job['task']!r}: cannot load its handler "
                f"{message['module']}.{message['name']} in the worker process: {describe_error(exc)}",
                "traceback": _traceback(exc),
            }
        )
        return
    first: tuple[Any, ...]
    call = message["call"]
    if call == "context":
        first = (ChildContext(job, run, channel, cancelled, Limits(**message["limits"])),)
    elif call == "id":
        first = (job["id"],)
    else:
        first = ()
    try:
        result = handler(*first, *job["args"], **job["kwargs"])
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
    except BaseException as exc:
        channel.send({"op": "error", "run": run, **_error_fields(exc)})
        return
    try:
        # Keys JSON writes as one name (1 and "1") are refused as the parent refuses
        # them in a thread's result: the frame's plain JSON kept one of them silently.
        check_names(result, Limits(**message["limits"]).max_depth)
        frame = encode_frame({"op": "result", "run": run, "value": result})
    except BaseException as exc:  # the result's own code may raise anything (pool note 12)
        if is_error(exc, TypeError | ValueError | RecursionError):
            text = message_of(exc)  # json's own: "Object of type set is not JSON serializable"
        else:
            text = describe_error(exc)
        channel.send({"op": "error", "run": run, "kind": "result", "text": text})
        return
    channel.send_frame(frame)


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _error_fields(exc: BaseException) -> dict[str, Any]:
    fields: dict[str, Any] = {"text": describe_error(exc), "traceback": _traceback(exc)}
    if is_error(exc, Retry):
        retry = cast(Retry, exc)
        fields.update(kind="retry", delay=retry.delay, record_error=retry.record_error)
    elif is_error(exc, Fatal):
        fields["kind"] = "fatal"
    else:
        fields["kind"] = "exception"
    return fields


def _traceback(exc: BaseException) -> str:
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # from the handler's frame on, not ours
    return format_traceback(exc, tb)
