"""``GET /metrics``: the runtime's Prometheus metrics (``taskrt.metrics``).

Authenticated like every route but ``/health`` (a scraper sends the same
``Authorization`` header as any client). The body is Prometheus text, or
OpenMetrics when the scraper's ``Accept`` asks for it. Each app has its own
registry, and counts the event streams of its own stream slots.
"""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response

from ..metrics import exposition, registry
from .routing import Api, EndpointGroup, Reply

group = EndpointGroup("metrics", "Prometheus metrics.")

_REGISTRIES: weakref.WeakKeyDictionary[Api, CollectorRegistry] = weakref.WeakKeyDictionary()


def _registry(api: Api) -> CollectorRegistry:
    reg = _REGISTRIES.get(api)
    if reg is None:
        streams = api.streams
        reg = _REGISTRIES[api] = registry(api.runtime, streams_open=lambda: streams.active)
    return reg


@group.get(
    "/metrics",
    summary="Prometheus metrics: jobs, attempts, pools, streams, schedules",
    replies={
        200: Reply(
            "Prometheus text exposition format (OpenMetrics when `Accept` asks for it)",
            {"type": "string"},
            media=("text/plain", "application/openmetrics-text"),
        )
    },
    needs_runtime=False,
)
async def metrics(api: Api, request: Request) -> Response:
    if api.runtime is not None:
        await api.runtime.read_latencies()  # due jobs outside memory (pool note 10)
    body, content_type = exposition(_registry(api), request.headers.get("accept", ""))
    return Response(body, headers={"Content-Type": content_type})


__all__ = ["group"]
