"""The dashboard: an operator's live page, served with the API at ``/dashboard``.

Plain HTML, CSS and JavaScript shipped in the package (``taskrt/static``): no
build step, no CDN, nothing fetched from elsewhere, so it works offline. The
page is a client of the JSON API and of the multiplexed event stream; it has
no API of its own. See docs/dashboard.md.

Design notes (cited where they apply):

1. **Relative to the mount.** The page is served with the app's root path
   written into it (``data-root`` and the asset URLs), and the script builds
   every URL from it, so ``Mount("/tasks", app=create_app(rt))`` serves a
   working ``/tasks/dashboard``.
2. **Authenticated like every route.** The page and its assets go through the
   app's ``auth`` (auth note 1). The page's own requests, including its
   ``EventSource`` (which cannot set headers), carry the browser's credentials:
   cookies or HTTP Basic. An operator so authenticated also sees tracebacks
   (``jobs.may_see_tracebacks``). With the built-in token, a browser that is
   not signed in is sent to ``/login``, whose cookie then serves the page, its
   requests and its stream (login note 5).
3. **Live, not polled.** One ``EventSource`` on ``GET /events`` moves the job
   rows, the status counts, the throughput sparklines and the job page's
   timeline. Pool and schedule figures are re-read from their JSON routes when
   an event says they changed, at most once a second; a schedule is re-read
   once its next fire time has passed. After a reconnect the page re-reads
   everything (streams note 4: the multiplexed stream does not resume). A
   workflow's page also follows ``GET /workflows/{id}/events``, whose every
   (re)connect starts with a snapshot that the page redraws from.
4. **Assets are revalidated, not guessed.** Each asset has an ``ETag`` (a hash
   of its bytes) and ``Cache-Control: no-cache``: a browser keeps its copy and
   asks, so an upgraded package is picked up on the next load.
5. **A strict Content-Security-Policy.** Scripts, styles and connections come
   from this origin only; nothing is inlined, so the page runs under
   ``script-src 'self'`` and a job's arguments rendered into it cannot run.
"""

from __future__ import annotations

import functools
import hashlib
import html
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from .errors import ApiError
from .routing import Api, EndpointGroup, Param, Reply
from .schemas import MAX_INT64, integer, ref

group = EndpointGroup(
    "dashboard", "The operator's dashboard: a page, its stylesheet and its script."
)

#: The files the page is made of, with their media types (documented without
#: the charset: OpenAPI media types name the type only).
ASSETS: dict[str, str] = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
}
_PAGE = "dashboard.html"
_ROOT_MARK = "{{root}}"

# Note 5. ``style-src 'self'`` still lets the script set ``element.style``
# (the width of a progress bar): the CSSOM is not an inline style attribute.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'self'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

_HTML = Reply("the page", {"type": "string"}, media="text/html")
_PAGE_PARAMS = (
    Param(
        "status", description="show jobs of this status (the page's own filter)", allow_empty=True
    ),
    Param("pool", description="show jobs of this pool", allow_empty=True),
    Param("task", description="show jobs of this task", allow_empty=True),
    Param("q", description="metadata filters, `key=value` separated by spaces", allow_empty=True),
)


@functools.cache
def _read(name: str) -> bytes:
    """A file of ``taskrt/static`` (read once per process)."""
    return resources.files("taskrt").joinpath("static", name).read_bytes()


@functools.cache
def _etag(name: str) -> str:
    return '"' + hashlib.sha256(_read(name)).hexdigest()[:20] + '"'


def page(request: Request, name: str = _PAGE) -> Response:
    """A page, with the app's root path written into it (note 1)."""
    root = html.escape(request.scope.get("root_path", "").rstrip("/"), quote=True)
    body = _read(name).decode("utf-8").replace(_ROOT_MARK, root)
    return Response(
        body,
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-store", **_SECURITY_HEADERS},
    )


@group.get(
    "/dashboard",
    summary="The dashboard (HTML)",
    params=_PAGE_PARAMS,
    replies={200: _HTML},
    needs_runtime=False,
)
async def dashboard(api: Api, request: Request) -> Response:
    """Jobs by status with live progress, pools, schedules and their actions."""
    return page(request)


@group.get(
    "/dashboard/jobs/{job_id:int}",
    summary="A job's page in the dashboard (HTML)",
    name="dashboard_job",
    params=[Param("job_id", "path", integer(1), required=True)],
    replies={200: _HTML, 404: Reply("not a job id: no job can have it", ref("Error"))},
    needs_runtime=False,
)
async def dashboard_job(api: Api, request: Request) -> Response:
    """Arguments, result or error, every attempt and the live event timeline.
    The page itself says when there is no such job; an id no job can have
    (0, or beyond 2**63 - 1) is 404."""
    job_id: int = request.path_params["job_id"]
    if not 1 <= job_id <= MAX_INT64:
        raise ApiError(404, "not_found", f"no job can have the id {job_id}")
    return page(request)


@group.get(
    "/dashboard/workflows/{workflow_id:int}",
    summary="A workflow's page in the dashboard: its jobs as a live graph (HTML)",
    name="dashboard_workflow",
    params=[Param("workflow_id", "path", integer(1), required=True)],
    replies={200: _HTML, 404: Reply("not a workflow id: no job can have it", ref("Error"))},
    needs_runtime=False,
)
async def dashboard_workflow(api: Api, request: Request) -> Response:
    """Status, progress and counts, and each job as a box in columns by depth,
    moving with the workflow's event stream. The page itself says when there is no
    such workflow; an id no job can have (0, or beyond 2**63 - 1) is 404."""
    workflow_id: int = request.path_params["workflow_id"]
    if not 1 <= workflow_id <= MAX_INT64:
        raise ApiError(404, "not_found", f"no workflow can have the id {workflow_id}")
    return page(request)


@group.get(
    "/dashboard/api",
    summary="The API, rendered from its OpenAPI document, with a form to try each operation (HTML)",
    replies={200: _HTML},
    needs_runtime=False,
)
async def api_page(api: Api, request: Request) -> Response:
    """Offline, like the dashboard: no CDN; requests go with the browser's session."""
    return page(request, "api.html")


@group.get(
    "/dashboard/static/{name}",
    summary="The dashboard's stylesheet and script",
    name="dashboard_asset",
    params=[Param("name", "path", {"enum": sorted(ASSETS)}, required=True)],
    replies={
        200: Reply(
            "the file",
            {"type": "string"},
            media=tuple(sorted({media.partition(";")[0] for media in ASSETS.values()})),
        ),
        304: Reply("the client's copy is current (`If-None-Match`)", None),
        404: Reply("no such file", ref("Error")),
    },
    needs_runtime=False,
)
async def asset(api: Api, request: Request) -> Response:
    name: str = request.path_params["name"]
    media = ASSETS.get(name)
    if media is None:
        raise ApiError(404, "not_found", f"the dashboard has no file {name!r}")
    etag = _etag(name)
    headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)  # note 4
    return Response(_read(name), media_type=media, headers=headers)


__all__ = ["ASSETS", "CSP", "group", "page"]
