"""Yao's task processes for ported apps: ``tasks.<id>.add``, ``.progress`` and ``.get``.

``YaoTasks(rt)`` binds them to a runtime::

    yao = YaoTasks(rt)
    job_id = await yao.add("test", "task-1")        # 0 when it could not add
    await yao.progress(job_id, 1, 100, "Progress 1/100")
    await yao.get(job_id)  # {"id", "status", "current", "total", "message", "response"}
    await yao.process("tasks.test.add", "task-2")    # Yao's process names work too

Differences from Yao, on purpose:

- ``add`` returns 0 and logs why (a full queue, arguments the task refuses, an
  unknown task, ...) where Yao returned 0 for a full queue only.
- Ids always increase, with or without ``event.next``: the runtime's store
  hands them out (Yao's own counter could repeat ids without ``event.next``).
- Ids are one sequence for the whole database, every task's, kept across
  restarts: an ``event.next`` that starts again at the same number after a
  restart, or mixes a random part into a timestamp, hands out used ids, and
  those adds return 0.
- ``get`` works for finished jobs too (Yao forgot a job once it ended).
  Statuses are Yao's four: a ``CANCELLED`` job reads as ``FAILURE``. The
  ``response`` is the handler's result after ``SUCCESS``, the error message
  after ``FAILURE`` (as in Yao), ``None`` before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from ..errors import InvalidOption, JobNotFound, TaskrtError
from ..limits import shown
from ..models import JobInfo, JobStatus

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ["YAO_STATUS", "YaoTasks"]

log = logging.getLogger("taskrt.compat.yao")

YAO_STATUS: dict[JobStatus, str] = {
    JobStatus.WAITING: "WAITING",
    JobStatus.RUNNING: "RUNNING",
    JobStatus.SUCCESS: "SUCCESS",
    JobStatus.FAILURE: "FAILURE",
    JobStatus.CANCELLED: "FAILURE",
}


class YaoTasks:
    """Yao's ``tasks.<id>.*`` processes, bound to one runtime."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def add(self, task_id: str, *args: Any) -> int:
        """Add a job of task ``task_id``; its id, or 0 when it could not be added."""
        try:
            return await self.rt.add(task_id, *args)
        except TaskrtError as exc:
            log.warning("tasks.%s.add: not added (%s): %s", task_id, exc.code, exc)
            return 0

    def progress(
        self, job_id: int, current: float, total: float, message: str = ""
    ) -> Awaitable[None]:
        """Report the progress of a running job (calls the task's ``event.progress``).
        ``await`` it from a coroutine; a sync handler (Yao's own are) calls it as it
        is, from its worker thread (``Runtime.progress``). Raises ``InvalidTransition``
        for a job that is not running, ``JobNotFound`` for an unknown id, in the
        thread that calls it too."""
        return self.rt.progress(job_id, current, total, message)

    async def get(self, job_id: int, *, task_id: str | None = None) -> dict[str, Any]:
        """The job in Yao's shape; raises ``JobNotFound`` for an unknown id, and for
        a job of another task than ``task_id`` (``tasks.<id>.get``: each of Yao's
        tasks has its own queue)."""
        return yao_job(await self._job(job_id, task_id))

    async def _job(self, job_id: int, task_id: str | None) -> JobInfo:
        """The job; ``JobNotFound`` when there is none, or it is another task's."""
        info = await self.rt.get(job_id)
        if task_id is not None and info.task != task_id:
            error = JobNotFound(job_id)
            error.args = (f"no job with id {job_id} of task {task_id!r}",)
            raise error
        return info

    async def process(self, name: str, *args: Any) -> Any:
        """Run a Yao process by name: ``tasks.<id>.add``, ``.progress`` or ``.get``.
        Arguments that do not fit the process raise ``InvalidOption``; ``.progress``
        and ``.get`` raise ``JobNotFound`` for a job of another task than ``<id>``."""
        if not isinstance(name, str):
            raise InvalidOption(
                "process", f"expected 'tasks.<id>.add|progress|get', found {shown(name)}"
            )
        head, _, rest = name.partition(".")
        task_id, _, method = rest.rpartition(".")
        if head.lower() != "tasks" or not task_id:
            raise InvalidOption(
                "process", f"expected 'tasks.<id>.add|progress|get', found {name!r}"
            )
        method = method.lower()
        if method == "add":
            return await self.add(task_id, *args)
        if method == "progress":
            if not 3 <= len(args) <= 4:
                raise InvalidOption(
                    "process",
                    f"{name} takes (id, current, total[, message]), found {len(args)} arguments",
                )
            # another task's job is not found, as by tasks.<id>.get (nothing awaited
            # in between for a job running here: it is read from memory)
            await self._job(args[0], task_id)
            await self.progress(*args)
            return None
        if method == "get":
            if len(args) != 1:
                raise InvalidOption("process", f"{name} takes (id), found {len(args)} arguments")
            return await self.get(*args, task_id=task_id)
        raise InvalidOption(
            "process", f"unknown task process {method!r}: expected add, progress or get"
        )


def yao_job(info: JobInfo) -> dict[str, Any]:
    """``info`` as Yao's ``tasks.<id>.get`` returns it."""
    response: Any = None
    if info.status is JobStatus.SUCCESS:
        response = info.result
    elif info.status in (JobStatus.FAILURE, JobStatus.CANCELLED):
        response = info.error or info.status.value.lower()
    return {
        "id": info.id,
        "status": YAO_STATUS[info.status],
        "current": _number(info.current),
        "total": _number(info.total),
        "message": info.message,
        "response": response,
    }


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value
