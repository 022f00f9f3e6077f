"""Worker processes for the sync handlers of a pool declared with ``processes=True``.

The parent's side is ``workers`` (``Workers``: the children of one pool), the
child's is ``child``; what crosses between them (frames, errors, handler
references) is ``crossing``.

Design notes:

1. **A worker class of our own, on ``multiprocessing``.** A process pool must
   send progress and a cancel flag *during* a call, and kill one child without
   disturbing the others. ``concurrent.futures.ProcessPoolExecutor`` has no
   channel during a call, cannot stop a call once it runs, and marks the whole
   executor broken when any child dies. anyio's ``to_process`` kills the worker
   on cancellation but has no channel either, and its workers belong to the
   event loop under one limiter, not to a pool with its own bound. So ``Workers`` keeps up to the
   pool's ``concurrency`` children, started lazily and reused across jobs;
   each ``_Worker`` is one child with a socket pair and its exit sentinel.
2. **Spawn, never fork.** The parent has threads (the store's, the thread
   pools) and an event loop: a forked child could inherit a lock held by
   another thread. The ``spawn`` start method starts a fresh interpreter,
   which imports taskrt and the handler's module (0.1 to 0.3 s, once per
   child). It gets the parent's ``sys.path`` and re-imports the parent's main
   script as ``__mp_main__``, so a script's entry point must sit behind
   ``if __name__ == "__main__"``. Starting one (``Process.start``: fork and
   exec of a fresh interpreter, a few milliseconds) happens on the loop; the
   imports happen in the child.
3. **Handlers by reference.** The child is sent the handler's module and
   qualified name, imports the one and looks up the other (a task made by
   ``@rt.task`` gives its handler). The parent checks first that the name
   leads back to the handler: a lambda, a function defined inside another (a
   closure), one of an interactive ``__main__``, or a bound method fails the
   attempt with ``HandlerNotImportable`` naming the task and saying why. A
   module that cannot be imported in the child fails the attempt the same way,
   with the child's traceback.
4. **JSON in frames, never blocking the loop.** Every message is a JSON object
   in a frame (a 4-byte big-endian length, then the body). The parent reads
   its end of the socket pair with ``loop.add_reader`` and writes what the
   socket does not take at once with ``loop.add_writer``; a child's exit is
   seen on its sentinel with ``add_reader`` and reaped with ``WNOHANG``. The
   child reads in a thread of its own (so that a cancel arrives while the
   handler runs) and writes under a lock. Arguments cross as JSON (they are
   JSON already); the result is encoded in the child (``json.dumps``: one that
   is not JSON-serialisable fails there) and the parent's usual checks (size,
   depth, NaN) then apply to it as to a thread's. An exception comes back as
   its type's name, its message and the child's traceback (``Crossed``);
   ``Fatal`` and ``Retry`` keep their meaning.
5. **Progress and cancel during the run.** ``job.progress`` in the child
   checks its values (``check_progress``, with the pool's
   limits) and sends a frame; the parent applies it with the host's ``report``, the call
   ``JobContext.progress`` makes. A cancel, a timeout or a shutdown sends a
   cancel frame for that run: ``job.cancelled`` turns true in the child.
6. **Killed after a short grace.** A child that has not returned ``grace``
   seconds after the cancel frame (at most 0.5 s, and half the runtime's
   ``abandon_after``, so it comes before the pool's abandon) is killed with
   SIGKILL, which it cannot catch or ignore, and dropped; the next job starts
   a fresh child. Why a grace: a handler that polls ``job.cancelled`` may stop
   cleanly (its ``with`` blocks close, its temporary files go), and its child
   is kept, which saves a spawn. Why a short one: the attempt's outcome is
   fixed already (a timeout or cancelled, whatever the handler returns), and
   the slot stays taken until the child is idle or dead. Unlike a thread's
   (``taskrt.pool`` note 4), the slot is free as soon as the child is dead.
7. **A child that dies** (a segfault, ``os._exit``, the OOM killer) fails the
   attempt it was running with ``WorkerDied`` naming the exit code or the
   signal; the normal retry policy applies, and the next job gets a fresh
   child. One that dies idle is dropped.
8. **Nothing outlives the pool.** ``close`` kills every child and reaps it (a
   killed process is reaped within milliseconds: the loop waits that long, at
   shutdown only). A child reads end-of-file when the parent closes its end or
   dies, and exits at once, even in the middle of a handler; shrinking the pool
   closes idle children that way. That reader is a thread, which needs the
   GIL: a handler in a long C call that holds it (a regular expression) would
   outlive a dead parent. So on Linux a child also asks the kernel to kill it
   with SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), first thing in
   ``child_main``, then checks that its parent is still the process that
   started it (it may have died during the imports) and exits if not. The
   kernel's "parent" is the thread that started the child: that is the
   loop's (note 2), which the pool closes its children on before it ends; a
   loop whose thread ends without closing the runtime loses its children with
   it. Children ignore SIGINT and SIGTERM: a Ctrl-C
   or a service manager's SIGTERM reaches the whole process group, and the
   parent decides (a shutdown puts running jobs back to waiting, then kills
   the children). From their start: the thread that starts a child blocks
   both meanwhile (the child inherits the mask across fork and exec), so one
   that comes while the child imports stays pending until ``child_main`` has
   set its handlers and unblocks them (``multiprocessing``'s resource
   tracker, which unblocks them as it starts, is started before). They
   ignore them with a handler that does nothing, not SIG_IGN, so that
   processes a job starts get the usual signals (exec resets a handler;
   ``os.register_at_fork`` resets them in a fork). Children are not
   daemonic, so a handler may start processes of its own (``multiprocessing``
   refuses that to a daemonic one); an interpreter that exits without
   stopping the runtime kills them at exit, before ``multiprocessing`` would
   wait for them.
"""

from __future__ import annotations

from .child import ChildContext
from .crossing import (
    Crossed,
    HandlerError,
    HandlerNotImportable,
    WorkerDied,
    WorkerError,
    reference,
)
from .workers import KILL_GRACE, Workers

__all__ = [
    "KILL_GRACE",
    "ChildContext",
    "Crossed",
    "HandlerError",
    "HandlerNotImportable",
    "WorkerDied",
    "WorkerError",
    "Workers",
    "reference",
]
