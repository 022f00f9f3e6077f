"""The OpenAPI 3.1 document, generated from the route table (``routing``).

Nothing here is written by hand per route: an endpoint's method, path,
parameters, body and replies are declared where the endpoint is, and every
endpoint an app serves appears here, including ones added later through
``create_app(endpoints=...)``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import __version__
from .routing import Api, Endpoint, EndpointGroup, Param, Reply
from .schemas import COMPONENTS, Schema, ref

group = EndpointGroup("meta", "The API's own description.")

_ERROR = ref("Error")
_STANDARD: dict[int, str] = {
    400: "malformed JSON",
    401: "authentication required, or a bad token",
    403: "refused: cross-site, forbidden, or a token for another job",
    413: "the body is larger than the limit",
    415: "the body is not application/json",
    422: "invalid arguments or query parameters",
}


def _parameter(param: Param) -> dict[str, Any]:
    out: dict[str, Any] = {"name": param.name, "in": param.where, "schema": param.schema}
    if param.description:
        out["description"] = param.description
    if param.required or param.where == "path":
        out["required"] = True
    return out


def _reply(reply: Reply) -> dict[str, Any]:
    out: dict[str, Any] = {"description": reply.description}
    if reply.schema is not None:
        out["content"] = {reply.media: {"schema": reply.schema}}
    return out


def operation(endpoint: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": endpoint.name,
        "summary": endpoint.summary,
        "tags": [endpoint.tag],
    }
    notes = [endpoint.description] if endpoint.description else []
    params = []
    for param in endpoint.params:
        if "{" in param.name:  # an open-ended family, e.g. metadata.{key}
            notes.append(f"`{param.name}`: {param.description}")
        else:
            params.append(_parameter(param))
    if endpoint.access == "token":
        params.append(
            _parameter(Param("token", description="a token from POST /jobs/{job_id}/token"))
        )
        op["security"] = [{}, {"jobToken": []}]
    elif endpoint.access == "public":
        op["security"] = []
    if notes:
        op["description"] = "\n\n".join(notes)
    if params:
        op["parameters"] = params
    if endpoint.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": endpoint.body}},
        }
    replies = {str(status): _reply(reply) for status, reply in sorted(endpoint.replies.items())}
    wanted = set()
    if endpoint.body is not None:
        wanted |= {400, 413, 415, 422}
    if any(p.where == "query" for p in endpoint.params):
        wanted.add(422)
    if endpoint.access != "public":
        wanted |= {401, 403}
    for status in sorted(wanted):
        replies.setdefault(
            str(status),
            {"description": _STANDARD[status], "content": {"application/json": {"schema": _ERROR}}},
        )
    op["responses"] = replies
    return op


def document(api: Api, components: dict[str, Schema]) -> dict[str, Any]:
    """The OpenAPI document of every endpoint ``api`` serves."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in api.endpoints:
        paths.setdefault(endpoint.openapi_path, {})[endpoint.method.lower()] = operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": api.settings.title,
            "version": __version__,
            "description": (
                "Background jobs over HTTP: add, inspect, cancel and retry jobs, and "
                "follow their progress live with Server-Sent Events. Errors are "
                '`{"error": {"code", "message", ...}}`. Authentication is the '
                "application's own (every route but /health goes through it); a "
                "per-job token (`?token=`) grants one job's state and events."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": {**COMPONENTS, **components},
            "securitySchemes": {
                "jobToken": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
    }


@group.get(
    "/openapi.json",
    summary="This document",
    replies={200: Reply("an OpenAPI 3.1 document", {"type": "object"})},
)
async def openapi(api: Api, request: Request) -> Response:
    doc = api.openapi_cache
    if doc is None:
        doc = api.openapi_cache = document(api, api.components)
    root = request.scope.get("root_path", "")
    return JSONResponse({**doc, "servers": [{"url": root or "/"}]})


__all__ = ["document", "group", "operation"]
