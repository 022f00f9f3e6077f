"""The HTTP API of a runtime: JSON endpoints and live progress over Server-Sent Events.

``create_app(runtime)`` returns a Starlette app; serve it on its own or mount
it in a Starlette or FastAPI app. See docs/http-api.md.
"""

from .app import GROUPS, create_app
from .auth import Forbidden, JobTokenPrincipal, JobTokens, Unauthorized
from .errors import ApiError
from .login import TokenPrincipal
from .routing import Api, Endpoint, EndpointGroup, Param, Reply, Settings

__all__ = [
    "GROUPS",
    "Api",
    "ApiError",
    "Endpoint",
    "EndpointGroup",
    "Forbidden",
    "JobTokenPrincipal",
    "JobTokens",
    "Param",
    "Reply",
    "Settings",
    "TokenPrincipal",
    "Unauthorized",
    "create_app",
]
