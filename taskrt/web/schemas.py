"""JSON Schemas of the API's bodies, for the OpenAPI document (components).

The request schemas say what the handlers accept, no more and no less. The
bounds (``MAX_INT64``, and ``limits``' ``MAX_DURATION``, ``MAX_TIME`` and
``FAR_TIME``) and patterns (``DURATION_PATTERN``, ``STATUS_LIST_PATTERN``,
``POOL_NAME_PATTERN``, ``NOT_BLANK_PATTERN``, ``rates.RATE_PATTERN``) are the very
ones the handlers check; the rest is held to the code by tests/test_web_openapi_conformance.py.
Patterns use only explicit ASCII classes (or ``\\uXXXX``) and ``^...$``
anchors, so JSON Schema (ECMA-262) and Python's ``re.fullmatch`` read them
alike. A field whose ``null`` means "not given" is declared nullable
(``nullable``): the handlers accept it.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from ..definitions import MAX_PARENTS
from ..limits import FAR_TIME, INT64_MAX, MAX_DURATION, MAX_TIME
from ..models import ON_PARENT_FAILURE, WAITING_REASONS
from ..rates import RATE_PATTERN
from ..workflows import MAX_STEPS

Schema = dict[str, Any]

#: The largest integer SQLite stores; integer fields beyond it are refused.
MAX_INT64 = INT64_MAX

STATUSES = ["WAITING", "RUNNING", "SUCCESS", "FAILURE", "CANCELLED"]
EVENT_TYPES = [
    "snapshot",
    "added",
    "started",
    "progress",
    "retrying",
    "success",
    "failure",
    "cancelled",
]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def array_of(name: str) -> Schema:
    return {"type": "array", "items": ref(name)}


def _nullable(kind: str) -> Schema:
    return {"type": [kind, "null"]}


def nullable(schema: Schema) -> Schema:
    """``schema``, or null (a request field whose null means "not given")."""
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return {**schema, "type": [*kinds, "null"]} if "null" not in kinds else schema
    if "enum" in schema:
        return {**schema, "enum": [*schema["enum"], None]}
    if "anyOf" in schema:
        return {**schema, "anyOf": [*schema["anyOf"], {"type": "null"}]}
    return {"anyOf": [schema, {"type": "null"}]}


def integer(minimum: int = -MAX_INT64, **extra: Any) -> Schema:
    """An integer a request may carry: at least ``minimum``, at most ``MAX_INT64``."""
    return {"type": "integer", "minimum": minimum, "maximum": MAX_INT64, **extra}


def _any_case(word: str) -> str:
    return "".join(f"[{c}{c.lower()}]" for c in word)


NUMBER: Schema = {"type": "number"}
ANY: Schema = {}

#: A duration as text: a plain number of seconds ("30", "1.5"), or numbers with
#: units ms, s, m, h, d ("200ms", "1h30m"); units in any case.
DURATION_PATTERN = (
    r"^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+|(?:[0-9]+(?:\.[0-9]+)?(?:[mM][sS]|[sSmMhHdD]))+)$"
)
#: Long enough for any real duration, short enough that it is always finite.
DURATION_MAX_LENGTH = 64
#: ``?status=``: statuses (any case) separated by commas; empty items are ignored.
_STATUS_WORD = "(?:" + "|".join(_any_case(s) for s in STATUSES) + ")"
STATUS_LIST_PATTERN = rf"^ *(?:{_STATUS_WORD} *)?(?:, *(?:{_STATUS_WORD} *)?)*$"
#: A pool created over HTTP: 1 to 100 letters, digits or ``_ . : -``.
# Not "." or "..": a URL path drops such a segment (RFC 3986), so /pools/.. would
# never reach the pool.
POOL_NAME_PATTERN = r"^(?!\.\.?$)[A-Za-z0-9_.:-]{1,100}$"


def _at_most(bound: int) -> str:
    """A pattern of the decimal numbers from 0 to ``bound`` (leading zeros allowed)."""
    text = str(bound)
    options = [f"[0-9]{{1,{len(text) - 1}}}"] if len(text) > 1 else []
    for i, digit in enumerate(text):
        if digit != "0":
            rest = len(text) - i - 1
            options.append(
                text[:i] + f"[0-{int(digit) - 1}]" + (f"[0-9]{{{rest}}}" if rest else "")
            )
    options.append(text)
    return "0*(?:" + "|".join(options) + ")"


#: ``?cursor=``: a job id (what a page's ``cursor`` is), or empty for the first page.
CURSOR_PATTERN = f"^(?:{_at_most(MAX_INT64)})?$"


def _not_in(codes: list[int]) -> str:
    """A character class of every character but ``codes``, as ``\\uXXXX`` ranges."""
    ranges: list[list[int]] = []
    for code in codes:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    parts = (f"\\u{lo:04X}" if lo == hi else f"\\u{lo:04X}-\\u{hi:04X}" for lo, hi in ranges)
    return "[^" + "".join(parts) + "]"


#: Has a character ``str.strip`` keeps (every whitespace character is in the BMP).
NOT_BLANK_PATTERN = _not_in([c for c in range(0x10000) if chr(c).isspace()])

_CONTROL = [c for c in range(0x10000) if unicodedata.category(chr(c)) == "Cc"]
_IN_NAME = _not_in(sorted({*_CONTROL, ord("/")}))
_SHOWN_IN_NAME = _not_in(
    sorted({*_CONTROL, ord("/"), *(c for c in range(0x10000) if chr(c).isspace())})
)
#: A schedule's name (``scheduler.check_schedule_name``): no ``/``, no control
#: character, not only white space.
SCHEDULE_NAME_PATTERN = f"^{_IN_NAME}*{_SHOWN_IN_NAME}{_IN_NAME}*$"


def duration(
    *, positive: bool = False, description: str = "", longest: float | None = MAX_DURATION
) -> Schema:
    """Seconds (a number), or a duration as text (``DURATION_PATTERN``), at most
    ``longest`` (a hundred years, as ``retry.parse_duration`` reads them; ``None``:
    no bound). A pattern cannot bound the sum a text duration says: the handler
    refuses one beyond ``longest`` all the same, which the description says."""
    text: Schema = {
        "type": "string",
        "pattern": DURATION_PATTERN,
        "maxLength": DURATION_MAX_LENGTH,
    }
    number: Schema = {"type": "number", "minimum": 0}
    if positive:  # a text duration is positive when it has a non-zero digit
        text = {"allOf": [text, {"type": "string", "pattern": "[1-9]"}]}
        number = {"type": "number", "exclusiveMinimum": 0}
    if longest is not None:
        number["maximum"] = longest
        description = f"{description} (at most {longest:.0f} seconds)".lstrip()
    out: Schema = {"anyOf": [number, text]}
    if description:
        out["description"] = description
    return out


#: A date-time written in the years 1970 to 9999 (``format: date-time`` says the rest).
_YEARS_1970_TO_9999 = "^(?:19[7-9][0-9]|[2-9][0-9]{3})-"

#: A job's time (``run_at``, ``deadline``): epoch seconds, or an RFC 3339 date-time
#: (which always has a time zone), between 1970 and the year 9999 (``limits.check_time``).
TIME: Schema = {
    "anyOf": [
        {"type": "number", "minimum": 0, "maximum": MAX_TIME},
        {"type": "string", "format": "date-time", "pattern": _YEARS_1970_TO_9999},
    ],
    "description": (
        "epoch seconds, or an ISO 8601 date-time with a time zone, from "
        "1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z"
    ),
}

#: A statistics window's bound (``GET /stats``): any finite time; one before 1970
#: finds nothing.
ANY_TIME: Schema = {
    "anyOf": [{"type": "number"}, {"type": "string", "format": "date-time"}],
    "description": "epoch seconds, or an ISO 8601 date-time with a time zone",
}

#: A history window's bound (``GET /stats/history``): within ``FAR_TIME`` of 1970
#: either way, which every date-time is.
WINDOW_TIME: Schema = {
    "anyOf": [
        {"type": "number", "minimum": -FAR_TIME, "maximum": FAR_TIME},
        {"type": "string", "format": "date-time"},
    ],
    "description": (
        f"epoch seconds (from {-FAR_TIME:.0f} to {FAR_TIME:.0f}), or an ISO 8601 "
        "date-time with a time zone"
    ),
}

#: The per-call options of a job: fields of ``POST /jobs``, and of a workflow
#: step's ``options`` (``web.jobs.OPTION_FIELDS``). Each may be null: not given.
CALL_OPTIONS: dict[str, Schema] = {
    "delay": nullable(
        duration(description="seconds, or a duration like '30s', '1h30m'; not with run_at")
    ),
    "run_at": nullable(TIME),
    "priority": nullable(integer(description="higher runs first")),
    "unique_key": nullable(
        {
            "type": "string",
            "minLength": 1,
            "description": (
                "while a job with this key is waiting or running (or within "
                "`unique_for` of its add), adding returns it"
            ),
        }
    ),
    "unique_for": nullable(
        duration(
            positive=True,
            description="seconds the unique key stays taken after the add, finished or not",
        )
    ),
    "on_conflict": nullable(
        {
            "enum": ["return", "raise"],
            "description": (
                "when the unique key is taken: return that job (201, the default), "
                "or refuse with 409 `duplicate_job` and its `existing_id`"
            ),
        }
    ),
    "deadline": nullable(TIME),
    "lock": nullable(
        {
            "type": "string",
            "minLength": 1,
            "description": "at most one running job per lock key; the others wait",
        }
    ),
    "retry": nullable(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": MAX_DURATION},
                {"type": "string", "minLength": 1},
                {"type": "array", "items": duration(), "minItems": 1},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "base": duration(),
                        "factor": {"type": "number", "minimum": 1, "maximum": 1000},
                        "cap": duration(),
                        "jitter": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                },
            ],
            "description": (
                "the retry policy of this job: a delay, a list of delays "
                "('1m,2m,4m' as text too), or exponential {base, factor, cap, jitter}"
            ),
        }
    ),
    "attempts": nullable(
        {
            "anyOf": [{"const": -1}, integer(1)],
            "description": "-1 for unlimited",
        }
    ),
    "timeout": nullable(duration(positive=True, description="seconds, or a duration")),
    "metadata": nullable({"type": "object"}),
    "after": nullable(
        {
            "type": "array",
            "items": integer(1),
            "minItems": 1,
            "maxItems": MAX_PARENTS,
            "description": (
                "job ids: the job waits (`waiting_reason` `blocked`) until every one "
                "succeeded; an unknown id is 404"
            ),
        }
    ),
    "batch_key": nullable(
        {
            "type": "string",
            "description": (
                "a batched task's job joins the batch of this key (default: the empty key)"
            ),
        }
    ),
    "on_parent_failure": nullable(
        {
            "enum": list(ON_PARENT_FAILURE),
            "default": "cancel",
            "description": (
                "when a parent fails or is cancelled: `cancel` this job (error "
                "'parent job N failed'), or `run` it anyway"
            ),
        }
    ),
}

COMPONENTS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "examples": ["job_not_found"]},
                    "message": {"type": "string"},
                },
                "additionalProperties": True,
            }
        },
    },
    "Job": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "task": {"type": "string"},
            "pool": {"type": "string"},
            "status": {"enum": STATUSES},
            "args": {"type": "array"},
            "kwargs": {"type": "object"},
            "attempts": {"type": "integer"},
            "max_attempts": _nullable("integer"),
            "current": NUMBER,
            "total": NUMBER,
            "message": {"type": "string"},
            "result": ANY,
            "error": _nullable("string"),
            "priority": {"type": "integer"},
            "metadata": {"type": "object"},
            "unique_key": _nullable("string"),
            "created_at": {"type": "number", "description": "epoch seconds"},
            "run_at": NUMBER,
            "started_at": _nullable("number"),
            "finished_at": _nullable("number"),
            "timeout": _nullable("number"),
            "recoveries": {"type": "integer"},
            "seq": {"type": "integer", "description": "the job's last event sequence number"},
            "retry_policy": {"description": "the retry policy given when it was added, or null"},
            "lock": _nullable("string"),
            "node": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "description": "the node that runs it, or ran its last attempt (mode nodes)",
            },
            "waiting_reason": {
                "anyOf": [
                    {"enum": list(WAITING_REASONS)},
                    {"type": "null"},
                ],
                "description": "why a WAITING job waits; null: it is in line",
            },
            "step": _nullable("string"),
            "steps": {
                "type": "array",
                "description": "named steps: {name, current, total}, in the order first seen",
            },
            "deadline": {
                "anyOf": [{"type": "number"}, {"type": "null"}],
                "description": "epoch seconds: not started after it, a running attempt cut at it",
            },
            "workflow": {
                "type": ["integer", "null"],
                "description": "the workflow it belongs to (its first job's id), or null",
            },
            "batch_key": {
                "type": ["string", "null"],
                "description": "a batched task's job: the key of the batch it joins",
            },
            "batch": {
                "type": ["integer", "null"],
                "description": "the job that runs its batch (its first member), once formed",
            },
        },
    },
    "NewJob": {
        "type": "object",
        "required": ["task"],
        "additionalProperties": False,
        "description": "A field given as null is the same as a field left out.",
        "properties": {
            "task": {"type": "string", "minLength": 1, "description": "a registered task's name"},
            "args": nullable({"type": "array", "default": []}),
            "kwargs": nullable({"type": "object", "default": {}}),
            "pool": nullable(
                {"type": "string", "description": "defaults to the task's pool (also when empty)"}
            ),
            **CALL_OPTIONS,
        },
    },
    "Progress": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "status": {"enum": STATUSES},
            "current": NUMBER,
            "total": NUMBER,
            "message": {"type": "string"},
            "percent": _nullable("number"),
            "step": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "description": "the step reported last (`progress(..., step=...)`), or null",
            },
            "steps": {
                "type": "array",
                "description": "every step the job reported, in the order first seen",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "current": NUMBER,
                        "total": NUMBER,
                        "percent": _nullable("number"),
                    },
                },
            },
        },
    },
    "Result": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "status": {"enum": STATUSES},
            "result": ANY,
            "error": _nullable("string"),
            "finished_at": _nullable("number"),
        },
    },
    "Attempt": {
        "type": "object",
        "properties": {
            "job_id": {"type": "integer"},
            "number": {"type": "integer"},
            "started_at": NUMBER,
            "finished_at": _nullable("number"),
            "outcome": {
                "enum": [
                    "running",
                    "success",
                    "error",
                    "timeout",
                    "cancelled",
                    "retry",
                    "interrupted",
                ]
            },
            "error": _nullable("string"),
            "traceback": {
                "type": ["string", "null"],
                "description": (
                    "only for requests the app's auth let through (never a per-job "
                    "token), or with expose_tracebacks=True in an app without auth"
                ),
            },
            "next": {
                "type": ["string", "null"],
                "enum": ["retry", "retried", None],
                "description": (
                    "what followed: retry (by policy, not before next_at), retried "
                    "(asked for by hand at next_at), null (it ended the job, or runs now)"
                ),
            },
            "next_at": _nullable("number"),
        },
    },
    "Workflow": {
        "type": "object",
        "required": ["id", "status", "progress", "counts", "jobs", "edges"],
        "properties": {
            "id": {"type": "integer", "description": "its first job's id"},
            "status": {
                "enum": ["RUNNING", "SUCCESS", "FAILURE", "CANCELLED"],
                "description": (
                    "RUNNING while a job is WAITING or RUNNING; then FAILURE if a job "
                    "failed, CANCELLED if one was cancelled, else SUCCESS"
                ),
            },
            "progress": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "description": "finished jobs, plus each running job's fraction, over all jobs",
            },
            "counts": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
                "description": "jobs by status",
            },
            "jobs": {**array_of("Job"), "description": "its jobs, by id"},
            "edges": {
                "type": "array",
                "items": {
                    "type": "array",
                    "items": {"type": "integer"},
                    "minItems": 2,
                    "maxItems": 2,
                },
                "description": "[child, parent]: every dependency among its jobs",
            },
        },
    },
    "WorkflowStep": {
        "type": "object",
        "required": ["task"],
        "additionalProperties": False,
        "description": "One job of a workflow. A field given as null is the same as one left out.",
        "properties": {
            "task": {"type": "string", "minLength": 1, "description": "a registered task's name"},
            "args": nullable(
                {
                    "type": "array",
                    "default": [],
                    "description": (
                        "after the first step of a chain, and for a group's callback, the "
                        "parents' results come first, then these"
                    ),
                }
            ),
            "kwargs": nullable({"type": "object", "default": {}}),
            "options": nullable(
                {
                    "type": "object",
                    "additionalProperties": False,
                    "description": "per-call options, as POST /jobs takes them",
                    "properties": CALL_OPTIONS,
                }
            ),
        },
    },
    "NewWorkflow": {
        "description": (
            "A chain (each step after the one before succeeded, with its result first) "
            "or a group (every step at once), with an optional callback `then` that "
            "runs after every member succeeded, with the list of their results first."
        ),
        "oneOf": [
            {
                "type": "object",
                "required": ["chain"],
                "additionalProperties": False,
                "properties": {
                    "chain": {
                        "type": "array",
                        "items": ref("WorkflowStep"),
                        "minItems": 1,
                        "maxItems": MAX_STEPS,
                    }
                },
            },
            {
                "type": "object",
                "required": ["group"],
                "additionalProperties": False,
                "properties": {
                    "group": {
                        "type": "array",
                        "items": ref("WorkflowStep"),
                        "minItems": 1,
                        "maxItems": MAX_STEPS,
                    },
                    "then": nullable(ref("WorkflowStep")),
                },
            },
        ],
    },
    "NewWorkflowReply": {
        "type": "object",
        "required": ["id", "jobs", "url"],
        "properties": {
            "id": {"type": "integer", "description": "the workflow's id: its first job's"},
            "jobs": {
                "type": "array",
                "items": {"type": "integer"},
                "description": "its jobs' ids, in the order of the steps (a callback last)",
            },
            "url": {"type": "string", "description": "the workflow's path, as in Location"},
        },
    },
    "JobPage": {
        "type": "object",
        "properties": {
            "jobs": array_of("Job"),
            "cursor": {
                "type": ["string", "null"],
                "description": "pass as ?cursor= for the next page; null on the last page",
            },
        },
    },
    "Token": {
        "type": "object",
        "properties": {
            "token": {"type": "string"},
            "expires_at": {"type": "integer", "description": "epoch seconds"},
            "job_id": {"type": "integer"},
            "events": {
                "type": "string",
                "description": "the job's event stream URL, with the token",
            },
        },
    },
    "Pool": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "concurrency": {"type": "integer"},
            "capacity": _nullable("integer"),
            "waiting": {"type": "integer"},
            "running": {"type": "integer"},
            "paused": {"type": "boolean"},
            "processed": {
                "type": "integer",
                "description": "attempts that succeeded in this process since it started",
            },
            "failed": {
                "type": "integer",
                "description": "attempts that raised or timed out in this process since it "
                "started (a job that failed twice, then succeeded, counts 2 here, 1 processed)",
            },
            "latency": {
                "type": "number",
                "description": "seconds the oldest runnable job has waited past its run_at",
            },
            "rate": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "description": "at most so many starts per unit of time ('10/s'), or null",
            },
            "next_slot": {
                "type": "number",
                "description": "seconds until the rate limit lets the next job start",
            },
        },
    },
    "JobFilter": {
        "type": "object",
        "additionalProperties": False,
        "description": (
            "Which jobs: `ids`, and the listing's filters. At least one must be given; "
            'for every job say so, e.g. `{"older_than": 0}`.'
        ),
        "anyOf": [
            {"required": ["ids"], "properties": {"ids": {"type": "array"}}},
            {"required": ["status"], "properties": {"status": {"minLength": 1, "minItems": 1}}},
            {"required": ["pool"], "properties": {"pool": {"type": "string"}}},
            {"required": ["task"], "properties": {"task": {"type": "string"}}},
            {"required": ["metadata"], "properties": {"metadata": {"minProperties": 1}}},
            {
                "required": ["older_than"],
                "properties": {"older_than": {"type": ["number", "string"]}},
            },
            {"required": ["scheduled"], "properties": {"scheduled": {"const": True}}},
        ],
        "properties": {
            "ids": nullable({"type": "array", "items": integer(1), "maxItems": 100000}),
            "status": nullable(
                {
                    "anyOf": [
                        {"type": "string", "enum": list(STATUSES)},
                        {"type": "array", "items": {"type": "string", "enum": list(STATUSES)}},
                    ],
                    "description": "WAITING, RUNNING, SUCCESS, FAILURE or CANCELLED",
                }
            ),
            "pool": _nullable("string"),
            "task": _nullable("string"),
            "metadata": nullable(
                {
                    "type": "object",
                    "propertyNames": {"minLength": 1},
                    "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
                    "description": "fields the job's metadata must have",
                }
            ),
            "older_than": nullable(
                duration(
                    longest=None,
                    description=(
                        "created that long ago or more: seconds, or 7d, of any length "
                        "(an age no job reaches matches none)"
                    ),
                )
            ),
            "scheduled": nullable(
                {
                    "type": "boolean",
                    "description": "only jobs waiting for a time still to come, not for other jobs",
                }
            ),
            "dry_run": nullable({"type": "boolean", "description": "count only"}),
        },
    },
    "HistoryPoint": {
        "type": "object",
        "properties": {
            "at": {"type": "number", "description": "the step's start (epoch seconds)"},
            "step": {"type": "number"},
            "succeeded": {"type": "integer"},
            "failed": {"type": "integer"},
            "cancelled": {"type": "integer"},
            "retried": {"type": "integer", "description": "attempts that failed and were retried"},
            "mean_duration": _nullable("number"),
            "p95_duration": {
                "type": ["number", "null"],
                "description": (
                    "of the successes: the upper bound of the histogram bucket holding it "
                    "(null above 600 s)"
                ),
            },
        },
    },
    "BulkResult": {
        "type": "object",
        "required": ["action", "matched", "done", "skipped", "dry_run"],
        "properties": {
            "action": {"type": "string", "enum": ["cancel", "retry", "purge"]},
            "matched": {"type": "integer"},
            "done": {"type": "integer"},
            "skipped": {
                "type": "integer",
                "description": "matched, but not in a status the action applies to",
            },
            "dry_run": {"type": "boolean"},
        },
    },
    "NewPool": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "description": "A field given as null is the same as a field left out.",
        "properties": {
            "name": {"type": "string", "pattern": POOL_NAME_PATTERN},
            "concurrency": nullable(integer(1)),
            "capacity": nullable(integer(1, description="null: no limit")),
            "paused": nullable({"type": "boolean"}),
            "rate": nullable(
                {
                    "type": "string",
                    "pattern": RATE_PATTERN,
                    "description": "at most so many starts per second, minute or hour; null: none",
                }
            ),
        },
    },
    "PoolChange": {
        "type": "object",
        "additionalProperties": False,
        "description": (
            "Only the fields given change; null is the same as leaving a field out, "
            "except for `capacity` and `rate`, where null removes the limit."
        ),
        "properties": {
            "concurrency": nullable(integer(1)),
            "capacity": nullable(integer(1, description="null: no limit")),
            "paused": nullable({"type": "boolean"}),
            "rate": nullable(
                {
                    "type": "string",
                    "pattern": RATE_PATTERN,
                    "description": "at most so many starts per second, minute or hour; null: none",
                }
            ),
        },
    },
    "Stats": {
        "type": "object",
        "properties": {
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "total": {"type": "integer"},
            "success_rate": _nullable("number"),
            "mean_duration": _nullable("number"),
            "p95_duration": _nullable("number"),
            "since": _nullable("number"),
            "until": _nullable("number"),
        },
    },
    "Task": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "pool": {"type": "string"},
            "description": {"type": "string"},
            "attempts": _nullable("integer"),
            "timeout": _nullable("number"),
            "parameters": {"type": ["object", "null"], "description": "JSON Schema"},
        },
    },
    "Event": {
        "type": "object",
        "description": (
            "One SSE frame's data. `snapshot` carries `job` (on a workflow's "
            "stream, `workflow`); `progress` carries "
            "`current`, `total`, `message`; `success` carries `result`; "
            "`failure` and `retrying` carry `error`."
        ),
        "properties": {
            "job_id": {"type": "integer"},
            "seq": {"type": "integer"},
            "type": {"enum": EVENT_TYPES},
            "task": {"type": "string"},
            "pool": {"type": "string"},
            "status": {"enum": STATUSES},
            "at": NUMBER,
        },
        "additionalProperties": True,
    },
}

__all__ = [
    "ANY_TIME",
    "CALL_OPTIONS",
    "COMPONENTS",
    "CURSOR_PATTERN",
    "DURATION_MAX_LENGTH",
    "DURATION_PATTERN",
    "MAX_INT64",
    "NOT_BLANK_PATTERN",
    "POOL_NAME_PATTERN",
    "STATUS_LIST_PATTERN",
    "TIME",
    "WINDOW_TIME",
    "Schema",
    "array_of",
    "duration",
    "integer",
    "nullable",
    "ref",
]
