"""Pool endpoints: list, inspect, create, and change at run time."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import PoolNotFound
from ..models import PoolStatistics
from .inputs import field_of, invalid, json_object, read_json, refuse_unknown
from .routing import Api, EndpointGroup, Param, Reply
from .schemas import POOL_NAME_PATTERN, array_of, ref

group = EndpointGroup("pools", "Worker pools: concurrency, capacity, pause and resume.")

NAME = Param(
    "name",
    "path",
    required=True,
    description="the pool's name; one declared in code may hold `/` (sent as is, or as `%2F`)",
)
# ``path``, not ``str``: a pool declared in code may have a ``/`` in its name
# (``rt.pool("team/mail")``), and the path arrives decoded, ``%2F`` as ``/``.
# Nothing else lives under /pools/, so this shadows no route.
POOL_PATH = "/pools/{name:path}"
POOL_NAME = re.compile(POOL_NAME_PATTERN)
CHANGE_FIELDS = frozenset({"concurrency", "capacity", "paused", "rate"})


async def _name(api: Api, request: Request) -> str:
    """A pool this process or the owner knows (one created through another process)."""
    name: str = request.path_params["name"]
    if name not in api.runtime.pools:
        if not any(p.name == name for p in await api.runtime.pool_statistics()):
            raise PoolNotFound(name)
        api.runtime.pool(name)
    return name


def _limits(body: dict[str, Any]) -> tuple[int | None, int | None, bool, bool | None]:
    """Validated ``concurrency``, ``capacity`` (and whether it was given), ``paused``."""
    concurrency = field_of(body, "concurrency", int, "a positive integer")
    if concurrency is not None and concurrency < 1:
        raise invalid("concurrency", f"expected a positive integer, found {concurrency}")
    capacity = field_of(body, "capacity", int, "a positive integer or null")
    if capacity is not None and capacity < 1:
        raise invalid("capacity", f"expected a positive integer or null, found {capacity}")
    paused = field_of(body, "paused", bool, "true or false")
    return concurrency, capacity, "capacity" in body, paused


async def _apply(
    api: Api, name: str, body: dict[str, Any], *, create: bool, exists_ok: bool = True
) -> PoolStatistics:
    """Change the pool where its jobs run (the owner; ``rt.change_pool`` forwards)."""
    concurrency, capacity, capacity_given, paused = _limits(body)
    optional: dict[str, Any] = {}
    if capacity_given:
        optional["capacity"] = capacity
    if "rate" in body:
        optional["rate"] = field_of(body, "rate", str, "a rate like '10/s', or null")
    return await api.runtime.change_pool(
        name, concurrency=concurrency, paused=paused, create=create, exists_ok=exists_ok, **optional
    )


async def _statistics(api: Api, name: str) -> PoolStatistics:
    for stats in await api.runtime.pool_statistics():
        if stats.name == name:
            return stats
    return api.runtime.pool(name).statistics()  # declared here, not yet known to the owner


@group.get(
    "/pools",
    summary="Every pool's statistics",
    replies={
        200: Reply("the pools", {"type": "object", "properties": {"pools": array_of("Pool")}})
    },
    needs_runtime=False,
)
async def list_pools(api: Api, request: Request) -> Response:
    pools = await api.runtime.pool_statistics()
    return JSONResponse({"pools": [p.to_dict() for p in pools]})


@group.get(
    POOL_PATH,
    summary="One pool's statistics",
    name="get_pool",
    params=[NAME],
    replies={
        200: Reply("concurrency, capacity, waiting, running", ref("Pool")),
        404: Reply("no such pool", ref("Error")),
    },
    needs_runtime=False,
)
async def get_pool(api: Api, request: Request) -> Response:
    return JSONResponse((await _statistics(api, await _name(api, request))).to_dict())


@group.post(
    "/pools",
    summary="Create a pool",
    body=ref("NewPool"),
    replies={
        201: Reply("the new pool", ref("Pool")),
        409: Reply("a pool of that name exists", ref("Error")),
    },
    needs_runtime=False,
)
async def create_pool(api: Api, request: Request) -> Response:
    body = json_object(await read_json(request, api.settings.max_body))
    refuse_unknown(body, CHANGE_FIELDS | {"name"})
    name = body.get("name")
    if not isinstance(name, str) or not POOL_NAME.fullmatch(name):
        raise invalid(
            "name", "expected 1 to 100 letters, digits or _ . : -, other than '.' and '..'"
        )
    # The owner says whether it exists (a pool created through another process).
    stats = await _apply(api, name, body, create=True, exists_ok=False)
    return JSONResponse(
        stats.to_dict(),
        status_code=201,
        headers={"Location": f"{request.scope.get('root_path', '')}/pools/{name}"},
    )


@group.patch(
    POOL_PATH,
    summary="Change a pool's concurrency, capacity or rate, or pause or resume it",
    params=[NAME],
    body=ref("PoolChange"),
    replies={
        200: Reply("the pool after the change", ref("Pool")),
        404: Reply("no such pool", ref("Error")),
    },
    needs_runtime=False,
)
async def change_pool(api: Api, request: Request) -> Response:
    """Raising concurrency starts waiting jobs at once; lowering it lets running
    jobs finish. A paused pool still accepts jobs but starts none. Any process
    may answer: the change is made by the process that runs the jobs, and a
    pause is recorded in the database (it outlives restarts and takeovers)."""
    name = await _name(api, request)
    body = json_object(await read_json(request, api.settings.max_body))
    refuse_unknown(body, CHANGE_FIELDS)
    return JSONResponse((await _apply(api, name, body, create=False)).to_dict())


__all__ = ["group"]
