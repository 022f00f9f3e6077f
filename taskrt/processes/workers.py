"""The worker processes of one pool, seen from the parent (``taskrt.processes``)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import multiprocessing.util  # its exit handler first: ours (registered after) runs before it
import os
import signal
import socket
import weakref
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from typing import TYPE_CHECKING, Any

from ..limits import Limits
from .child import PARENT_DECIDES, child_main
from .crossing import LENGTH, WorkerDied, encode_frame, rebuilt, reference

if TYPE_CHECKING:
    from ..context import JobState

log = logging.getLogger("taskrt")

KILL_GRACE = 0.5
"""Seconds a cancelled child may take to return before it is killed (note 6)."""

_CONTEXT = multiprocessing.get_context("spawn")  # never fork (note 2)
_REAP_EVERY = 0.005  # seconds between looks at a child whose sentinel fired (note 4)

Report = Callable[["JobState", float, "float | None", "str | None", "str | None"], None]


class _Channel:
    """The parent's end of a child's socket pair, on the event loop (note 4)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        on_message: Callable[[dict[str, Any]], None],
        on_eof: Callable[[], None],
    ) -> None:
        sock.setblocking(False)
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._on_message = on_message
        self._on_eof = on_eof
        self._in = bytearray()
        self._out = bytearray()
        self.open = True
        loop.add_reader(self._fd, self._readable)

    def send(self, message: dict[str, Any] | bytes) -> None:
        """Send a message (or a frame made already); never blocks."""
        if not self.open:
            return  # the child is gone: its sentinel tells (note 7)
        frame = message if isinstance(message, bytes) else encode_frame(message)
        if self._out:
            self._out += frame
            return
        try:
            sent = self._sock.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return
        if sent < len(frame):
            self._out += frame[sent:]
            self._loop.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        try:
            sent = self._sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            sent = len(self._out)
        del self._out[:sent]
        if not self._out:
            self._loop.remove_writer(self._fd)

    def _readable(self) -> None:
        try:
            data = self._sock.recv(1 << 18)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            self._on_eof()
            return
        buf = self._in
        buf += data
        while len(buf) >= LENGTH.size:
            (size,) = LENGTH.unpack_from(buf)
            end = LENGTH.size + size
            if len(buf) < end:
                break
            body = bytes(buf[LENGTH.size : end])
            del buf[:end]
            self._on_message(json.loads(body))
            if not self.open:
                return

    def close(self) -> None:
        if not self.open:
            return
        self.open = False
        self._loop.remove_reader(self._fd)
        if self._out:
            self._loop.remove_writer(self._fd)
            self._out.clear()
        self._sock.close()


# -- one child, seen from the parent -----------------------------------------------------


class _Run:
    """The attempt a child runs now."""

    __slots__ = ("done", "number", "state")

    def __init__(self, state: JobState, number: int, done: asyncio.Future[Any]) -> None:
        self.state = state
        self.number = number
        self.done = done


class _Worker:
    """One child process, its channel and its sentinel (notes 4, 7)."""

    def __init__(self, owner: Workers, loop: asyncio.AbstractEventLoop) -> None:
        self._owner = owner
        self._loop = loop
        mine, theirs = socket.socketpair()
        try:
            self.process = _CONTEXT.Process(
                target=child_main,
                args=(theirs, os.getpid()),
                name=f"taskrt-{owner.pool}",
                # Not daemonic, so that a handler may start processes of its own;
                # _kill_at_exit stands in for the kill daemonic children get (note 8).
                daemon=False,
            )
            with _signals_held():
                self.process.start()
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self.pid: int | None = self.process.pid
        self.alive = True
        self.doomed = False  # killed or dismissed: never given another job
        self.run: _Run | None = None
        self._runs = 0
        self._sentinel = self.process.sentinel
        self._channel = _Channel(loop, mine, self._received, self._eof)
        loop.add_reader(self._sentinel, self._exited)
        _LIVE.add(self)

    def start(self, state: JobState, ref: tuple[str, str], limits: Limits) -> _Run:
        frame = encode_frame(
            {
                "op": "run",
                "run": self._runs + 1,
                "module": ref[0],
                "name": ref[1],
                "call": state.spec.call,
                "limits": dataclasses.asdict(limits),
                "job": {
                    "id": state.id,
                    "task": state.task,
                    "pool": state.pool,
                    "attempt": state.attempts,
                    "max_attempts": state.max_attempts,
                    "args": state.args,
                    "kwargs": state.kwargs,
                    "metadata": state.metadata,
                },
            }
        )
        self._runs += 1
        run = self.run = _Run(state, self._runs, self._loop.create_future())
        self._channel.send(frame)
        return run

    def cancel(self, run: _Run) -> None:
        self._channel.send({"op": "cancel", "run": run.number})

    def kill(self) -> None:
        self.doomed = True
        if self.alive:
            self.process.kill()  # SIGKILL; a child that is gone already is no error

    def dismiss(self) -> None:
        """Close the channel: an idle child reads end-of-file and exits (note 8)."""
        self.doomed = True
        self._channel.close()

    def _received(self, message: dict[str, Any]) -> None:
        run = self.run
        if run is None or message.get("run") != run.number:
            return  # a late frame of a run that ended (a progress after the kill's decision)
        op = message["op"]
        if op == "progress":
            self._owner.report(
                run.state, message["current"], message["total"], message["message"], message["step"]
            )
            return
        self.run = None
        if op == "result":
            run.done.set_result(message["value"])
        else:
            run.done.set_exception(rebuilt(message))

    def _eof(self) -> None:
        # The child closed its end: it is exiting. One that did not (it closed
        # the descriptor itself) could never be reached again.
        self.kill()

    def _exited(self) -> None:
        """The sentinel fired: reap the child without blocking (note 4)."""
        self._loop.remove_reader(self._sentinel)
        self._reap()

    def _reap(self) -> None:
        if not self.alive:
            return  # reaped by reap_now meanwhile
        code = self.process.exitcode  # waitpid(WNOHANG)
        if code is None:
            # The sentinel closes a moment before the child can be reaped.
            self._loop.call_later(_REAP_EVERY, self._reap)
            return
        self._ended(code)

    def _ended(self, code: int | None) -> None:
        if not self.alive:
            return
        self.alive = False
        self.doomed = True
        self._channel.close()
        self._loop.remove_reader(self._sentinel)  # before close() closes it
        if code is not None:
            self.process.close()
        run, self.run = self.run, None
        if run is not None and not run.done.done():
            run.done.set_exception(WorkerDied(run.state.id, code, self.pid))
        _LIVE.discard(self)
        self._owner.dropped(self)

    def kill_now(self) -> None:
        """Kill the child; ``reap_now`` then waits for it (shutdown, note 8)."""
        if self.alive:
            self._loop.remove_reader(self._sentinel)
            self.kill()

    def reap_now(self) -> None:
        if not self.alive:
            return
        self.process.join(2.0)
        code = self.process.exitcode
        if code is None:
            log.error("worker process %s of pool %r did not die", self.pid, self._owner.pool)
        self._ended(code)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread while it starts a child (note 8). The
    child inherits the mask across fork and exec, so that a Ctrl-C or a SIGTERM
    reaching it while it imports stays pending until ``child_main`` has set its
    handlers; this thread gets its own mask back, whatever happens."""
    # Process.start starts multiprocessing's resource tracker with the first child,
    # and that unblocks both signals: started first, outside our mask.
    resource_tracker.ensure_running()
    before = signal.pthread_sigmask(signal.SIG_BLOCK, PARENT_DECIDES)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


_LIVE: weakref.WeakSet[_Worker] = weakref.WeakSet()


@atexit.register
def _kill_at_exit() -> None:
    """An interpreter that exits with a runtime never stopped kills its children
    (multiprocessing would wait for them: they are not daemonic)."""
    for worker in list(_LIVE):
        if worker.alive:
            worker.process.kill()
            worker.process.join(1.0)


# -- the children of one pool ------------------------------------------------------------


class Workers:
    """Up to ``size`` worker processes of one pool, started lazily (note 1)."""

    def __init__(
        self, pool: str, size: int, report: Report, limits: Limits, abandon_after: float
    ) -> None:
        self.pool = pool
        self.size = size
        self.report = report
        self.limits = limits
        self.grace = min(KILL_GRACE, abandon_after / 2)
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()

    @property
    def pids(self) -> list[int]:
        return sorted(w.pid for w in self._all if w.pid is not None)

    def resize(self, size: int) -> None:
        """Keep up to ``size`` children: idle ones beyond it go now, busy ones when done."""
        self.size = size
        while self._idle and self._kept() > size:
            self._idle.pop().dismiss()

    async def run(self, state: JobState) -> Any:
        """Run one attempt of ``state`` in a child; its result, or what it raised (notes 4-7)."""
        ref = reference(state.task, state.spec.handler)
        worker = self._idle_worker() or self._start()
        try:
            run = worker.start(state, ref, self.limits)
        except BaseException:  # arguments that do not encode: the child is still idle
            self._release(worker)
            raise
        try:
            try:
                # Shielded: cancelling the task must not cancel the run's future,
                # which only the child's answer or its death resolves.
                return await asyncio.shield(run.done)
            except asyncio.CancelledError:
                await self._stop(worker, run)
                raise
        finally:
            if run.done.done() and not run.done.cancelled():
                run.done.exception()  # retrieved: a late answer is not "never retrieved"
            self._release(worker)

    async def _stop(self, worker: _Worker, run: _Run) -> None:
        """Cancelled (a cancel, a timeout, a shutdown): tell the child, then kill it
        if it has not returned within the grace (note 6). Returns once the child
        is idle or dead, even if cancelled again meanwhile."""
        worker.cancel(run)
        killer = asyncio.get_running_loop().call_later(self.grace, worker.kill)
        try:
            while not run.done.done():
                try:
                    await asyncio.shield(run.done)
                except asyncio.CancelledError:
                    if not run.done.done():
                        worker.kill()  # cancelled again (a shutdown after a cancel): no more grace
                except Exception:
                    pass
        finally:
            killer.cancel()

    def _idle_worker(self) -> _Worker | None:
        while self._idle:
            worker = self._idle.pop()
            if not worker.doomed:
                return worker
        return None

    def _start(self) -> _Worker:
        worker = _Worker(self, asyncio.get_running_loop())
        self._all.add(worker)
        return worker

    def _kept(self) -> int:
        """Children that may run another job (not killed or dismissed, not dead)."""
        return sum(1 for w in self._all if not w.doomed)

    def _release(self, worker: _Worker) -> None:
        if worker.doomed or worker.run is not None:
            return  # dying: dropped once reaped (note 7)
        if self._kept() > self.size:
            worker.dismiss()
        else:
            self._idle.append(worker)

    def dropped(self, worker: _Worker) -> None:
        """A child is dead (reaped): forget it."""
        self._all.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)

    def close(self) -> None:
        """Kill and reap every child (note 8); new ones start if jobs come again."""
        workers = list(self._all)
        for worker in workers:
            worker.kill_now()  # all at once: they die together
        for worker in workers:
            worker.reap_now()
        self._idle.clear()
        self._all.clear()
