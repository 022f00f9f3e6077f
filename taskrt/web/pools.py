"""Pool endpoints: list, inspect, create, and change at run time."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import PoolNotFound
from ..pool import Pool
from .errors import ApiError
from .inputs import field_of, invalid, json_object, read_json, refuse_unknown
from .routing import Api, EndpointGroup, Param, Reply
from .schemas import POOL_NAME_PATTERN, array_of, ref

group = EndpointGroup("pools", "Worker pools: concurrency, capacity, pause and resume.")

NAME = Param("name", "path", required=True)
POOL_NAME = re.compile(POOL_NAME_PATTERN)
CHANGE_FIELDS = frozenset({"concurrency", "capacity", "paused"})


def _pool(api: Api, request: Request) -> Pool:
    name: str = request.path_params["name"]
    pool = api.runtime.pools.get(name)
    if pool is None:
        raise PoolNotFound(name)
    return pool


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


def _apply(pool: Pool, body: dict[str, Any]) -> None:
    concurrency, capacity, capacity_given, paused = _limits(body)
    if concurrency is not None:
        pool.set_concurrency(concurrency)
    if capacity_given:
        pool.set_capacity(capacity)
    if paused is True:
        pool.pause()
    elif paused is False:
        pool.resume()


@group.get(
    "/pools",
    summary="Every pool's statistics",
    replies={
        200: Reply("the pools", {"type": "object", "properties": {"pools": array_of("Pool")}})
    },
    needs_runtime=False,
)
async def list_pools(api: Api, request: Request) -> Response:
    pools = sorted(api.runtime.pools.values(), key=lambda p: p.name)
    return JSONResponse({"pools": [p.statistics().to_dict() for p in pools]})


@group.get(
    "/pools/{name}",
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
    return JSONResponse(_pool(api, request).statistics().to_dict())


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
        raise invalid("name", "expected 1 to 100 letters, digits or _ . : -")
    if name in api.runtime.pools:
        raise ApiError(
            409, "pool_exists", f"a pool named {name!r} exists; PATCH it instead", pool=name
        )
    concurrency, capacity, _, paused = _limits(body)
    pool = api.runtime.pool(name, concurrency=concurrency, capacity=capacity)
    if paused:
        pool.pause()
    return JSONResponse(
        pool.statistics().to_dict(),
        status_code=201,
        headers={"Location": f"{request.scope.get('root_path', '')}/pools/{name}"},
    )


@group.patch(
    "/pools/{name}",
    summary="Change a pool's concurrency or capacity, or pause or resume it",
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
    jobs finish. A paused pool still accepts jobs but starts none."""
    pool = _pool(api, request)
    body = json_object(await read_json(request, api.settings.max_body))
    refuse_unknown(body, CHANGE_FIELDS)
    _apply(pool, body)
    return JSONResponse(pool.statistics().to_dict())


__all__ = ["group"]
