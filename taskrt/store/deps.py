"""Dependencies between jobs, the same on every backend (``taskrt.workflows`` notes).

A job added with parents (``options(after=...)``, chains, groups) is stored
WAITING with the waiting reason ``blocked`` and ``run_at`` at ``BLOCKED_AT``,
with one ``job_deps`` row per parent (open until that parent's end is
settled) and one ``job_waits`` row (how many parents are still open, what it
does when one fails, what it takes from their results, and the ``run_at`` it
asked for). ``settle`` closes the open rows of finished parents and decides
each dependent they touched; the backends run its statements, in one
transaction, with their own driver. The statements are written with ``?``.

A decided dependent's ``job_waits`` row stays, its ``outcome`` set: ``released``
(its arguments hold its parents' results), ``cancelled`` (it never ran: a
parent failed, or it was cancelled while it waited) or ``followed`` (a batch's
member that ended as the job running its batch did; one cancelled by hand
before that is ``cancelled``). A manual retry of a ``cancelled`` or
``followed`` one blocks it again on its parents (``block_again``), so that it
runs with their results, never without them; a batch's member waits for its
batch again (``batched``), its item still in the batch's arguments.
Rows with no outcome are the blocked jobs; the statements that look for those
say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .protocol import CancelledChild, InsertResult, NewJob

FINISHED = "('SUCCESS', 'FAILURE', 'CANCELLED')"

# The open rows of finished parents among a list (.format(one ? per parent)), closed.
# Each parent is looked up by its id (a subquery of every finished job costs what
# the table holds).
_FINISHED_PARENT = (
    f"EXISTS (SELECT 1 FROM jobs p WHERE p.id = job_deps.parent AND p.status IN {FINISHED})"
)
SQL_CLOSE_OF = (
    f"UPDATE job_deps SET done = 1 WHERE done = 0 AND parent IN ({{}}) AND {_FINISHED_PARENT} "
    "RETURNING child, parent"
)
# The same for every blocked job (a sweep: start-up, and now and then).
SQL_CLOSE_ALL = (
    "UPDATE job_deps SET done = 1 WHERE done = 0 "
    "AND child IN (SELECT child FROM job_waits WHERE outcome IS NULL) "
    f"AND {_FINISHED_PARENT} RETURNING child, parent"
)
SQL_STATUS_OF = "SELECT id, status FROM jobs WHERE id IN ({})"
# (closed, failed parent, its status, child): the dependent's row after it.
SQL_WAIT_COUNT = (
    "UPDATE job_waits SET pending = pending - ?, "
    "failed_parent = coalesce(failed_parent, ?), failed_status = coalesce(failed_status, ?) "
    "WHERE child = ? AND outcome IS NULL RETURNING pending, failed_parent, failed_status, "
    "on_parent_failure, inputs, run_at"
)
# (outcome, child): it waits no more (the module's docstring).
SQL_WAIT_DONE = "UPDATE job_waits SET outcome = ? WHERE child = ?"
_BLOCKED = "id = ? AND status = 'WAITING' AND waiting_reason IN ('blocked', 'batched')"
# (finished_at, error, id)
SQL_CANCEL_CHILD = (
    "UPDATE jobs SET status = 'CANCELLED', finished_at = ?, error = ?, seq = seq + 1, "
    f"waiting_reason = NULL WHERE {_BLOCKED} RETURNING task, pool, seq"
)
SQL_RESULTS_OF = (
    "SELECT p.result FROM job_deps d LEFT JOIN jobs p ON p.id = d.parent "
    "WHERE d.child = ? ORDER BY d.position"
)
SQL_ARGS_OF = f"SELECT args FROM jobs WHERE {_BLOCKED}"
# (args, run_at, id)
SQL_RELEASE = (
    f"UPDATE jobs SET args = ?, run_at = ?, waiting_reason = NULL WHERE {_BLOCKED} RETURNING pool"
)
# A batch's member ends as its leader ended: (status, result, error, attempts,
# started_at, finished_at, id).
SQL_LEADER_END = (
    "SELECT p.status, p.result, p.error, p.attempts, p.started_at, p.finished_at "
    "FROM job_deps d JOIN jobs p ON p.id = d.parent WHERE d.child = ? ORDER BY d.position"
)
SQL_FOLLOW_END = (
    "UPDATE jobs SET status = ?, result = ?, error = ?, attempts = ?, started_at = ?, "
    f"finished_at = ?, seq = seq + 1, waiting_reason = NULL WHERE {_BLOCKED} "
    "RETURNING task, pool, seq"
)
# -- batches (taskrt.batches): (task, key, limit)
SQL_BATCH_MEMBERS = (
    "SELECT id, args, pool, created_at FROM jobs WHERE task = ? AND batch_key = ? "
    "AND waiting_reason = 'batching' AND status = 'WAITING' ORDER BY id LIMIT ?"
)
_BATCHING = "id = ? AND status = 'WAITING' AND waiting_reason = 'batching'"
# (args, run_at, leader, id)
SQL_LEAD = (
    f"UPDATE jobs SET args = ?, run_at = ?, waiting_reason = NULL, batch = ? WHERE {_BATCHING}"
)
SQL_FOLLOW = f"UPDATE jobs SET waiting_reason = 'batched', batch = ? WHERE {_BATCHING}"
SQL_BATCHES_WAITING = (
    "SELECT task, batch_key, count(*), min(created_at), max(id) FROM jobs "
    "WHERE waiting_reason = 'batching' AND status = 'WAITING' {}GROUP BY task, batch_key"
)  # .format("" or "AND task = ? AND batch_key = ? ")
SQL_BATCHING = "UPDATE jobs SET waiting_reason = 'batching', batch_key = ? WHERE id = ?"
# -- adds
SQL_DEP = "INSERT INTO job_deps (child, position, parent, done) VALUES (?, ?, ?, 0)"
SQL_WAIT = (
    "INSERT INTO job_waits (child, pending, on_parent_failure, inputs, run_at) "
    "VALUES (?, ?, ?, ?, ?)"
)
SQL_BLOCK = "UPDATE jobs SET waiting_reason = 'blocked', workflow = ? WHERE id = ?"
SQL_IN_WORKFLOW = "UPDATE jobs SET workflow = ? WHERE id = ?"
SQL_PARENTS_FOUND = "SELECT id FROM jobs WHERE id IN ({})"
# -- reads
SQL_OPEN_PARENTS = (
    "SELECT DISTINCT d.parent FROM job_waits w JOIN job_deps d ON d.child = w.child "
    "WHERE d.done = 0 AND w.outcome IS NULL"
)
# Among its jobs: a step's own ``after`` names parents outside the workflow.
SQL_WORKFLOW_EDGES = (
    "SELECT d.child, d.parent FROM jobs j JOIN job_deps d ON d.child = j.id "
    "JOIN jobs p ON p.id = d.parent AND p.workflow = j.workflow "
    "WHERE j.workflow = ? ORDER BY d.child, d.position"
)
# -- a manual retry of a dependent that never ran (``block_again``)
SQL_HOW_IT_WAITED = (
    "SELECT w.on_parent_failure, w.outcome, j.status FROM job_waits w "
    "JOIN jobs j ON j.id = w.child WHERE w.child = ?"
)
SQL_PARENTS_NOW = (
    "SELECT d.parent, p.status FROM job_deps d LEFT JOIN jobs p ON p.id = d.parent "
    "WHERE d.child = ? ORDER BY d.position"
)
# (waiting_reason, run_at, max_attempts, external, id)
SQL_BLOCK_AGAIN = (
    "UPDATE jobs SET status = 'WAITING', waiting_reason = ?, run_at = ?, "
    "max_attempts = ?, finished_at = NULL, started_at = NULL, seq = seq + 1, "
    "cancel_requested = 0, external = CASE WHEN ? = 1 THEN 1 ELSE external END "
    "WHERE id = ? AND status IN ('FAILURE', 'CANCELLED') RETURNING pool, seq"
)


def _parent_error_sql(parent: str, status: str) -> str:
    """``parent_error`` in SQL, of two columns."""
    return (
        f"('parent job ' || {parent} || CASE WHEN {status} = 'FAILURE' "
        "THEN ' failed' ELSE ' was cancelled' END)"
    )


# (parent, parent): the dependents of a parent that a parent's failure or cancel
# cancelled, still CANCELLED with that error (a cancel by hand before leaves another).
# That parent may be another one: where two failed, the first end cancelled the
# dependent, and a retry of that parent left it to the other (``block_again`` refuses
# it while a parent is FAILURE or CANCELLED, and decides again now). Then the
# members of a batch it ran that ended as it did ('followed').
_CANCELLED_BY_A_PARENT = (
    "w.outcome = 'cancelled' AND j.status = 'CANCELLED' "
    f"AND j.error = {_parent_error_sql('w.failed_parent', 'w.failed_status')}"
)
SQL_CANCELLED_BY = (
    "SELECT w.child FROM job_deps d JOIN job_waits w ON w.child = d.child "
    f"JOIN jobs j ON j.id = d.child WHERE d.parent = ? AND {_CANCELLED_BY_A_PARENT} "
    "UNION ALL SELECT w.child FROM job_deps d "
    "JOIN job_waits w ON w.child = d.child JOIN jobs j ON j.id = d.child "
    "WHERE d.parent = ? AND w.outcome = 'followed' AND j.status IN ('FAILURE', 'CANCELLED') "
    "ORDER BY 1"
)
# -- retention: a finished parent of a job still blocked stays (its result is read when
# that job is released). A child that ended while it waited (cancelled, or failed at
# its deadline) keeps its wait open but waits no more. One that a parent's failure or
# cancel cancelled waits again when that parent is retried (``SQL_CANCELLED_BY``):
# while another of its parents has not succeeded (it failed, was cancelled, or runs
# again), each parent stays, since ``block_again`` refuses the child if one is gone.
# The parent that has not succeeded is not kept for the child by itself; once the child
# is deleted, or all its other parents succeeded, its parents go by their own status
# and age. Each lookup is by an index (a parent's rows, a child's wait and its job, the
# child's parents). .format(the jobs table's alias)
KEEP_PARENTS = (
    "NOT EXISTS (SELECT 1 FROM job_deps d JOIN job_waits w ON w.child = d.child "
    "JOIN jobs j ON j.id = d.child WHERE d.parent = {}.id AND ("
    "(w.outcome IS NULL AND j.status = 'WAITING') "
    f"OR ({_CANCELLED_BY_A_PARENT} AND EXISTS (SELECT 1 FROM job_deps o "
    "JOIN jobs p ON p.id = o.parent WHERE o.child = d.child AND o.parent <> d.parent "
    "AND p.status <> 'SUCCESS'))))"
)
SQL_REOPEN = "UPDATE job_deps SET done = 0 WHERE child = ?"
# (pending, run_at, child)
SQL_WAIT_AGAIN = (
    "UPDATE job_waits SET pending = ?, failed_parent = NULL, failed_status = NULL, "
    "outcome = NULL, run_at = ? WHERE child = ?"
)


def marks(n: int) -> str:
    return ",".join("?" * n)


@dataclass(slots=True)
class Links:
    """The dependency rows of a batch of inserts, once its ids are known."""

    deps: list[tuple[int, int, int]] = field(default_factory=list)  # (child, position, parent)
    waits: list[tuple[int, int, str, str | None, float]] = field(default_factory=list)
    blocked: list[tuple[int | None, int]] = field(default_factory=list)  # (workflow, id)
    members: list[tuple[int, int]] = field(default_factory=list)  # (workflow, id): not blocked
    batching: list[tuple[str, int]] = field(default_factory=list)  # (batch key, id)


def parents_named(groups: Sequence[Sequence[NewJob]]) -> list[int]:
    """Every existing job (a positive id) the jobs of ``groups`` name as a parent."""
    return sorted({p for jobs in groups for job in jobs for p in job.after if p > 0})


def links(
    groups: Sequence[Sequence[NewJob]], results: Sequence[InsertResult | BaseException]
) -> Links:
    """The rows that record the parents and workflows of the jobs that made a row
    (``-k``: the k-th job of the same group)."""
    out = Links()
    at = 0
    for jobs in groups:
        ids: list[int | None] = [
            r.job_id if isinstance(r, InsertResult) else None for r in results[at : at + len(jobs)]
        ]
        made = [isinstance(r, InsertResult) and r.created for r in results[at : at + len(jobs)]]
        at += len(jobs)
        for job, job_id, new in zip(jobs, ids, made, strict=True):
            if job_id is None or not new:
                continue
            if job.batch_key is not None:
                out.batching.append((job.batch_key, job_id))
            if not job.after and job.workflow is None:
                continue
            workflow = _resolve(job.workflow, ids)
            if not job.after:
                out.members.append((workflow or job_id, job_id))
                continue
            parents = [_resolve(p, ids) for p in job.after]
            for position, parent in enumerate(parents):
                out.deps.append((job_id, position, parent or 0))
            out.waits.append((job_id, len(parents), job.on_parent_failure, job.inputs, job.run_at))
            out.blocked.append((workflow, job_id))
    return out


def _resolve(ref: int | None, ids: list[int | None]) -> int | None:
    if ref is None or ref > 0:
        return ref
    return ids[-ref - 1]


def with_inputs(args_json: str, inputs: str | None, results: Sequence[str | None]) -> str:
    """A released job's arguments: its parents' results (JSON texts, in order) put
    first as it asked (``inputs``), the rest as added. ``"results:n"``: the first
    ``n`` parents' only (``NewJob.inputs``)."""
    if inputs is None:
        return args_json
    kind, _, count = inputs.partition(":")
    texts = ["null" if r is None else r for r in results]
    if count:
        texts = texts[: int(count)]
    given = texts[0] if kind == "result" and texts else "[" + ",".join(texts) + "]"
    rest = args_json.strip()[1:-1].strip()
    return "[" + given + ("," + rest if rest else "") + "]"


_ORPHANED = "orphaned: the job was running when its process died "


def orphan_error(times: int) -> str:
    """Why a job its process died running ``times`` times failed (an orphan)."""
    return f"{_ORPHANED}{times} times"


# ``orphan_error`` in SQL, of the job's recoveries so far (its last one not counted).
ORPHAN_ERROR_SQL = f"'{_ORPHANED}' || (recoveries + 1) || ' times'"


def parent_error(parent: int, status: str) -> str:
    """Why a dependent job was cancelled."""
    how = "failed" if status == "FAILURE" else "was cancelled"
    return f"parent job {parent} {how}"


@dataclass(slots=True)
class Decision:
    """What ``settle`` does with one dependent once its rows are counted."""

    child: int
    kind: str  # "release" it, "cancel" it, or "follow" (end as its batch's leader ended)
    inputs: str | None = None
    run_at: float = 0.0
    error: str = ""


def closed_by_child(
    closed: Sequence[tuple[int, int]], statuses: dict[int, str]
) -> dict[int, tuple[int, int | None, str | None]]:
    """Per dependent: (rows closed, its first failed parent, that parent's status)."""
    out: dict[int, tuple[int, int | None, str | None]] = {}
    for child, parent in closed:
        n, failed, how = out.get(child, (0, None, None))
        status = statuses.get(parent)
        if failed is None and status in ("FAILURE", "CANCELLED"):
            failed, how = parent, status
        out[child] = (n + 1, failed, how)
    return out


def decide(child: int, row: Sequence[Any], now: float) -> Decision | None:
    """A dependent's row after its count (``SQL_WAIT_COUNT``): release, cancel, or wait."""
    pending, failed, how, policy, inputs, run_at = row
    if policy == "follow":
        return Decision(child, "follow") if int(pending) <= 0 else None
    if failed is not None and policy != "run":
        return Decision(child, "cancel", error=parent_error(int(failed), str(how)))
    if int(pending) <= 0:
        return Decision(child, "release", inputs=inputs, run_at=max(float(run_at), now))
    return None


def blocked_again(how: Sequence[Any] | None) -> bool:
    """Whether a job's ``SQL_HOW_IT_WAITED`` row makes its manual retry block it again:
    a dependent that ended without being released, or a batch's member."""
    if how is None:
        return False
    _, was, _ = how
    return bool(was != "released")


def waits_again_as(policy: str) -> str:
    """The waiting reason of a job ``block_again`` blocks (its ``on_parent_failure``)."""
    return "batched" if policy == "follow" else "blocked"


def retried_meanwhile(how: Sequence[Any]) -> str | None:
    """The job's status when it is no longer FAILURE or CANCELLED (another retry
    came first), or None."""
    status = str(how[2])
    return None if status in ("FAILURE", "CANCELLED") else status


def refusal(policy: str, parents: Sequence[Sequence[Any]]) -> str | None:
    """Why a dependent that never ran cannot wait for its parents again
    (``SQL_PARENTS_NOW`` rows), or None."""
    for parent, status in parents:
        if policy == "follow":  # a batch's member: its one parent runs the batch
            if status is None:
                return f"job {parent}, which ran its batch, was deleted"
            if status in ("FAILURE", "CANCELLED"):
                return f"it is one item of the batch job {parent} runs: retry that job"
        elif status is None:
            return f"its parent job {parent} was deleted"
        elif status in ("FAILURE", "CANCELLED") and policy != "run":
            return f"its {parent_error(int(parent), str(status))}: retry that job first"
    return None


def cancelled(child: int, row: Sequence[Any], now: float, error: str) -> CancelledChild:
    task, pool, seq = row
    return CancelledChild(child, str(task), str(pool), int(seq), now, error)


def followed(child: int, row: Sequence[Any], leader: Sequence[Any]) -> CancelledChild:
    """A member that ended as its batch's leader (``SQL_LEADER_END``) did."""
    task, pool, seq = row
    status, result, error, _, _, finished_at = leader
    return CancelledChild(
        child, str(task), str(pool), int(seq), float(finished_at), error, str(status), result
    )


def unripe(rows: Sequence[Sequence[Any]], limit: int, ripe_before: float | None) -> bool:
    """Whether the members found (``SQL_BATCH_MEMBERS``) neither fill a batch nor
    have waited long enough: their oldest was added after ``ripe_before`` (None:
    formed whatever its size). Another process may have just formed the batch
    the caller counted on, from the same jobs (``taskrt.batches`` note 3)."""
    if ripe_before is None or len(rows) >= limit:
        return False
    return min(float(r[3]) for r in rows) > ripe_before


def batch_args(rows: Sequence[Sequence[Any]]) -> str:
    """A batch leader's arguments: one, the list of every member's item (each member
    was added with one argument)."""
    items = [str(r[1]).strip()[1:-1].strip() or "null" for r in rows]
    return "[[" + ",".join(items) + "]]"
