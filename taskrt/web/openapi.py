"""The OpenAPI 3.1 document, generated from the route table (``routing``).

Nothing here is written by hand per route: an endpoint's method, path,
parameters, body and replies are declared where the endpoint is, and every
endpoint an app serves appears here, including ones added later through
``create_app(endpoints=...)``.

The error responses every endpoint can give because of what it is are added
here, not declared per route (``standard_errors``):

- 422 everywhere: every endpoint refuses query parameters it does not
  declare (``routing.Endpoint.bind``), and checks those it does and its body;
- 400 everywhere: ``invalid_host``, a ``Host`` header the server does not
  answer (``hosts.HostCheck``, before any route);
- 400, 413, 415 for a JSON body (``inputs.read_json``);
- 404 for a path with parameters: a value the route cannot take (a job id
  that is not a number, a name with a ``/``) matches no route;
- 401, 403 unless the endpoint is public (``auth.authenticate``); the 403
  of a state-changing method (``auth.UNSAFE_METHODS``) includes
  ``cross_site``, a browser's request from another site (auth note 3);
- 503 when it ``needs_runtime`` and the runtime is not started.

An endpoint's own reply for one of these statuses replaces the standard one
(its 400 is told about ``invalid_host`` too).
``tests/test_web_openapi_conformance.py`` checks the document against the
served API with Schemathesis.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import __version__
from .auth import UNSAFE_METHODS
from .routing import Api, Endpoint, EndpointGroup, Param, Reply
from .schemas import COMPONENTS, Schema, ref

group = EndpointGroup("meta", "The API's own description.")

_ERROR = ref("Error")
_STANDARD: dict[int, str] = {
    400: "malformed JSON, an empty body, or a bad Content-Length",
    401: "authentication required, or a bad or expired token",
    403: "`forbidden`: the application's `auth` refused",
    404: "the path names nothing: no route takes this value",
    413: "the body is larger than the limit",
    415: "the body is not application/json (UTF-8)",
    503: "the runtime is not started (`not_started`)",
}


def _parameter(param: Param) -> dict[str, Any]:
    out: dict[str, Any] = {"name": param.name, "in": param.where, "schema": param.schema}
    if param.description:
        out["description"] = param.description
    if param.required or param.where == "path":
        out["required"] = True
    if param.allow_empty and param.where == "query":
        out["allowEmptyValue"] = True
    return out


def _reply(reply: Reply) -> dict[str, Any]:
    out: dict[str, Any] = {"description": reply.description}
    if reply.schema is not None:
        out["content"] = {media: {"schema": reply.schema} for media in reply.media_types}
    return out


def _invalid(endpoint: Endpoint) -> str:
    """What a 422 of ``endpoint`` can be about."""
    reasons = []
    if endpoint.body is not None:
        reasons.append("a body field of the wrong type or value, unknown or missing")
    if any(p.where != "path" for p in endpoint.params) or endpoint.access == "token":
        reasons.append("a bad parameter value")
    reasons.append("an unknown query parameter")
    return "invalid request: " + "; ".join(reasons)


_INVALID_HOST = (
    "`invalid_host`: a Host header this server does not answer (on a loopback "
    "address only loopback names, unless allowed_hosts says otherwise)"
)
_CROSS_SITE = "`cross_site`: a browser's request from another site (another Origin)"
_TOKEN_SCOPE = "`token_scope`: a per-job token for another job"


def _refused(endpoint: Endpoint) -> str:
    """What a 403 of ``endpoint`` can be about."""
    reasons = [_STANDARD[403]]
    if endpoint.method in UNSAFE_METHODS:
        reasons.insert(0, _CROSS_SITE)
    if endpoint.access == "token":
        reasons.append(_TOKEN_SCOPE)
    return "; ".join(reasons)


def standard_errors(endpoint: Endpoint) -> dict[int, str]:
    """The error statuses ``endpoint`` can answer whatever its handler does (module doc)."""
    out = {422: _invalid(endpoint), 400: _INVALID_HOST}
    if endpoint.body is not None:
        out |= {status: _STANDARD[status] for status in (413, 415)}
        out[400] = f"{_STANDARD[400]}; or {_INVALID_HOST}"
    if any(p.where == "path" for p in endpoint.params):
        out[404] = _STANDARD[404]
    if endpoint.access != "public":
        out |= {401: _STANDARD[401], 403: _refused(endpoint)}
    if endpoint.needs_runtime:
        out[503] = _STANDARD[503]
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
    replies = dict(endpoint.replies)
    own_400 = replies.get(400)
    if own_400 is not None and "invalid_host" not in own_400.description:
        # The Host check answers before any route, whatever the route says.
        replies[400] = replace(own_400, description=f"{own_400.description}; or {_INVALID_HOST}")
    for status, description in standard_errors(endpoint).items():
        replies.setdefault(status, Reply(description, _ERROR))
    op["responses"] = {str(status): _reply(reply) for status, reply in sorted(replies.items())}
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
                "application's own `auth`, or the built-in token (`TASKRT_TOKEN`: "
                "`Authorization: Bearer`, the HTTP Basic password, or the cookie of "
                "the /login form), or both; every route but /health goes through it. "
                "A per-job token (`?token=`) grants one job's state and events. "
                "A Host header the server does not answer is refused (400 "
                "`invalid_host`), and so is a browser's state change from another "
                "site (403 `cross_site`)."
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
    needs_runtime=False,
)
async def openapi(api: Api, request: Request) -> Response:
    doc = api.openapi_cache
    if doc is None:
        doc = api.openapi_cache = document(api, api.components)
    root = request.scope.get("root_path", "")
    return JSONResponse({**doc, "servers": [{"url": root or "/"}]})


__all__ = ["document", "group", "operation", "standard_errors"]
