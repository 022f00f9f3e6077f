"""JSON Schemas of the API's bodies, for the OpenAPI document (components)."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

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


NUMBER: Schema = {"type": "number"}
ANY: Schema = {}

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
        },
    },
    "NewJob": {
        "type": "object",
        "required": ["task"],
        "additionalProperties": False,
        "properties": {
            "task": {"type": "string", "description": "a registered task's name"},
            "args": {"type": "array", "default": []},
            "kwargs": {"type": "object", "default": {}},
            "pool": {"type": "string", "description": "defaults to the task's pool"},
            "delay": {
                "type": ["number", "string"],
                "description": "seconds, or a duration like '30s', '1h30m'",
            },
            "run_at": {
                "type": ["number", "string"],
                "description": "epoch seconds, or an ISO 8601 date-time with a time zone",
            },
            "priority": {"type": "integer", "description": "higher runs first"},
            "unique_key": {
                "type": "string",
                "description": "while a job with this key is waiting or running, adding returns it",
            },
            "attempts": {"type": "integer", "description": "-1 for unlimited"},
            "timeout": {"type": ["number", "string"]},
            "metadata": {"type": "object"},
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
            "processed": {"type": "integer"},
            "failed": {"type": "integer"},
        },
    },
    "NewPool": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "concurrency": {"type": "integer", "minimum": 1},
            "capacity": {"type": ["integer", "null"], "minimum": 1},
            "paused": {"type": "boolean"},
        },
    },
    "PoolChange": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "concurrency": {"type": "integer", "minimum": 1},
            "capacity": {"type": ["integer", "null"], "minimum": 1},
            "paused": {"type": "boolean"},
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
            "One SSE frame's data. `snapshot` carries `job`; `progress` carries "
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

__all__ = ["COMPONENTS", "Schema", "array_of", "ref"]
